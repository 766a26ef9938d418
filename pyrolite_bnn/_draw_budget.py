"""How much memory weight draws take, and how many of ``predict``'s particles fit.

A weight tensor being drawn takes three times its draw at once (the noise, the
noise times the scale, and their sum with the mean: ``Normal.rsample``'s
arithmetic). :func:`~pyrolite_bnn.predict` either keeps one draw of every
weight for all its chunks, or draws each layer's weights anew in every chunk;
either way the largest tensor is drawn whole for all ``S`` particles at once,
so a single big tensor (a ``VIEmbedding`` table) can exceed the budget whatever
the chunk size. :class:`DrawSizes` says what fits; ``predict`` then runs the
particles in groups that do. :func:`~pyrolite_bnn.draw_networks` keeps every
weight's draw: it checks :meth:`DrawSizes.drawing_bytes` against the host's
free memory first.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pyrolite_bnn._network import collect_variables

__all__ = ["DRAWING_FACTOR", "DrawSizes"]

# Bytes of a tensor being drawn, in units of its draw: noise, scaled noise, sum.
DRAWING_FACTOR = 3


@dataclass(frozen=True)
class DrawSizes:
    """Bytes of one particle's draw of a network's weights.

    Attributes:
        total: all weight tensors.
        largest: the largest weight tensor.
        site: the site name of the largest tensor.

    Example:
        >>> import pyrolite_bnn as bnn
        >>> sizes = DrawSizes.of(bnn.VIEmbedding(1000, 8))  # float32: 4 bytes
        >>> sizes.total, sizes.largest, sizes.site
        (32000, 32000, 'weight')
        >>> sizes.particles_that_fit(100, budget=2**20)  # 100 draws: 3.2 MB
        10
    """

    total: int
    largest: int
    site: str

    @classmethod
    def of(cls, model: nn.Module, device_type: str | None = None) -> DrawSizes:
        """The draw sizes of ``model``'s random variables.

        ``device_type``: only those on devices of this type (``"cpu"``).
        """
        total, largest, site = 0, 0, ""
        for variable in collect_variables(model):
            mean = variable.layer_posterior.mean()
            if device_type is not None and mean.device.type != device_type:
                continue
            size = variable.shape.numel() * mean.element_size()
            total += size
            if size > largest:
                largest, site = size, variable.site
        return cls(total, largest, site)

    def kept_bytes(self, particles: int, budget: int) -> int:
        """Bytes of a draw of every weight kept for all chunks; ``0``: does not fit.

        Kept draws may take half of ``budget`` (the other half is the
        chunks'), and drawing them, the largest tensor at
        :data:`DRAWING_FACTOR` times its size, must fit in ``budget``.
        """
        kept = particles * self.total
        return (
            kept
            if kept <= budget // 2 and self.drawing_bytes(particles) <= budget
            else 0
        )

    def drawing_bytes(self, particles: int) -> int:
        """Peak bytes of drawing every weight for ``particles``, all kept.

        The draws of the tensors drawn before, and the largest one being drawn
        at :data:`DRAWING_FACTOR` times its size.
        """
        return particles * (self.total + (DRAWING_FACTOR - 1) * self.largest)

    def redrawn_bytes(self, particles: int) -> int:
        """Peak bytes of drawing the weights layer by layer inside a chunk."""
        return DRAWING_FACTOR * particles * self.largest

    def particles_that_fit(self, particles: int, budget: int) -> int:
        """The most particles, up to ``particles``, whose draws fit ``budget``.

        Either kept (:meth:`kept_bytes`) or drawn inside each chunk within
        half of ``budget``. ``0`` when not even one particle's draw fits.
        """
        if self.largest == 0:
            return particles
        half = budget // 2
        kept = min(half // self.total, budget // self.drawing_bytes(1))
        redrawn = half // (DRAWING_FACTOR * self.largest)
        return min(particles, max(kept, redrawn))
