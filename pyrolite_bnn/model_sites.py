"""Sites of your own Pyro model next to a network's particles.

Under Pyro a network call returns ``(S, B, ...)``: one output per particle,
each a complete network drawn from the guide, whose weight sites carry
``1 / S`` each (they average over the particles). An observation of your own
on such an output must do the same: one likelihood term per particle, averaged.
:func:`per_particle` opens that plate. Without it Pyro refuses the ``(S, B)``
log-density of a ``(B,)`` target (``Expected [B], actual [S, B]``), and a plain
``pyro.plate`` over the particles, as that error suggests, counts the data
``S`` times against the weights' KL.
"""

from __future__ import annotations

from contextlib import ExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pyro
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch import Tensor

from pyrolite_bnn._particles import PLATE_NAME
from pyrolite_bnn._validation import check_count

if TYPE_CHECKING:
    from pyro.poutine.runtime import Message

__all__ = ["ParticlePlate", "particle_plate_name", "per_particle"]

# The key of a sample site's ``infer`` dict that names its particle plate.
_PLATE_KEY = "pyrolite_particle_plate"


def per_particle(
    particles: int | Tensor, *, name: str = "particle_sites", dim: int = -2
) -> ParticlePlate:
    """A plate over the network's particles, each weighed ``1 / S``.

    Sample sites inside take one value or observation per particle along
    ``dim`` and count as the particles' average, as the network's weight
    sites do, so the model's log-density is the ELBO's. Open it outside
    ``pyro.plate("data", ...)`` for outputs ``(S, B, ...)`` (the particles at
    ``dim=-2``, the data at ``-1``).

    Create it inside the model, once per run: like ``pyro.plate`` it records
    its plate when created. For several sites, enter the same object more
    than once (``plate = bnn.per_particle(out)``, then ``with plate:`` for
    each), or give each its own ``name``.

    Args:
        particles: the number of particles ``S``, or the network output whose
            leading dimension it is.
        name: the plate's name (not ``"particles"``, the network's own).
        dim: the plate's batch dimension, negative.

    Raises:
        ValueError: for the network's plate name, a count below 1, a
            0-dimensional tensor or a non-negative ``dim``.

    Example:
        >>> import pyro, torch
        >>> import pyro.distributions as dist
        >>> import pyrolite_bnn as bnn
        >>> net = bnn.VILinear(2, 1)
        >>> x, y = torch.randn(8, 2), torch.randn(8)
        >>> def model(x, y=None):
        ...     out = net(x, samples=4).squeeze(-1)  # (S, B)
        ...     sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        ...     with bnn.per_particle(out), pyro.plate("data", len(x)):
        ...         pyro.sample("obs", dist.Normal(out, sigma), obs=y)
        >>> trace = pyro.poutine.trace(model).get_trace(x, y)
        >>> trace.nodes["obs"]["scale"]
        0.25
    """
    if isinstance(particles, Tensor):
        if particles.dim() == 0:
            raise ValueError(
                "per_particle needs the particle count (an int) or the network's "
                "output (S, B, ...), got a 0-dimensional tensor"
            )
        count = particles.shape[0]
    else:
        count = check_count(particles, "particles")
    if name == PLATE_NAME:
        raise ValueError(
            f"per_particle(name={name!r}): that is the network's own plate; "
            "choose another name"
        )
    if dim >= 0:
        raise ValueError(f"per_particle(dim={dim}): give a negative batch dimension")
    return ParticlePlate(pyro.plate(name, count, dim=dim), count)


class ParticlePlate:
    """The plate :func:`per_particle` returns: enter it for each site."""

    def __init__(self, plate: pyro.plate, count: int) -> None:
        self.plate = plate
        self.count = count
        self._stack: list[ExitStack] = []

    def __enter__(self) -> ParticlePlate:
        stack = ExitStack()
        stack.enter_context(self.plate)
        stack.enter_context(poutine.scale(scale=1.0 / self.count))
        stack.enter_context(_MarkedSites(self.plate.name))
        self._stack.append(stack)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stack.pop().__exit__(kind, error, traceback)


class _MarkedSites(Messenger):
    """Names the particle plate in the ``infer`` dict of every site inside."""

    def __init__(self, plate: str) -> None:
        super().__init__()
        self.plate = plate

    def _process_message(self, msg: Message[..., Any]) -> None:
        if msg["type"] == "sample":
            infer: dict[str, Any] = {**(msg["infer"] or {}), _PLATE_KEY: self.plate}
            msg["infer"] = infer  # type: ignore[typeddict-item]


def particle_plate_name(site: Message[..., Any]) -> str | None:
    """The name of the :func:`per_particle` plate a sample site is in, if any.

    Example:
        >>> import pyro, torch
        >>> import pyro.distributions as dist
        >>> def model():
        ...     with per_particle(3, name="mine"):
        ...         pyro.sample("z", dist.Normal(torch.zeros(3, 1), 1.0))
        >>> trace = pyro.poutine.trace(model).get_trace()
        >>> particle_plate_name(trace.nodes["z"])
        'mine'
    """
    name = (site.get("infer") or {}).get(_PLATE_KEY)
    return name if isinstance(name, str) else None
