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

import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from types import TracebackType
from typing import Any

import pyro
from pyro import poutine
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from torch import Tensor
from torch.distributions import Distribution

from pyrolite_bnn._handlers import active_scales
from pyrolite_bnn._particles import PLATE_DIM, PLATE_NAME
from pyrolite_bnn._validation import check_count
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.record import computed_from_a_network

__all__ = [
    "ParticlePlate",
    "PlainParticlePlates",
    "particle_plate_name",
    "per_particle",
    "watching_particle_plates",
]

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
        RuntimeError: for a second block of this ``name`` in one run of the
            model (Pyro's "Multiple sample sites named", with the remedy).

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
    try:
        plate = pyro.plate(name, count, dim=dim)
    except RuntimeError as error:
        if f"Multiple sample sites named '{name}'" not in str(error):
            raise
        raise RuntimeError(
            f"{error}\n(a second bnn.per_particle block named {name!r} in one run "
            "of the model: like pyro.plate, per_particle records its plate, a "
            "site of that name, when created. Create it once and enter the "
            "same object for each site, plate = bnn.per_particle(out), then "
            "'with plate:' around each, or give each block its own name, "
            f"bnn.per_particle(out, name='{name}_2'))"
        ) from error
    return ParticlePlate(plate, count)


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


class PlainParticlePlates(Messenger):
    """Warn about an observed site in a plain plate over a network's particles.

    A user's model that observes a network's ``(S, B)`` output inside
    ``pyro.plate("particles2", S, dim=-2)`` (what Pyro's shape error
    suggests) counts the data ``S`` times against the weights' KL: the
    weight sites weigh ``1 / S`` each, the observations 1. A site is
    reported when it is observed, lies in a plate of the network's particle
    count ``S > 1`` at the particle dimension (``-2``) that is neither the
    network's own nor a :func:`per_particle` plate, and whose scale does not
    compensate the particles: any scale but ``1 / S`` times its plates'
    subsampling (a ``poutine.scale(1 / S)`` of the user's own is left alone,
    as is a data plate at ``-2`` of another size; a minibatch weight of the
    user's own, ``poutine.scale(N / B)``, compensates nothing), and
    whose distribution takes a network output (a site of the model's own in
    a plate that happens to have ``S`` members is left alone; without
    gradients, as in ``RenyiELBO.loss``, that cannot be seen, and nothing is
    said: the training step says it). The count is read from the network's
    particle plate on its weight sites.
    """

    def __init__(self) -> None:
        super().__init__()
        self._particles = 0
        self._weights: list[Tensor] = []  # the values of the networks' weight sites

    def _pyro_post_sample(self, msg: Message[..., Any]) -> None:
        frames = msg["cond_indep_stack"]
        for frame in frames:
            if frame.name == PLATE_NAME:
                self._particles = frame.size
                if not msg["is_observed"] and isinstance(msg["value"], Tensor):
                    self._weights.append(msg["value"])
        if (
            self._particles < 2
            or not msg["is_observed"]
            or particle_plate_name(msg) is not None
        ):
            return
        plate = next(
            (
                frame.name
                for frame in frames
                if frame.dim == PLATE_DIM
                and frame.name != PLATE_NAME
                and frame.size == self._particles
            ),
            None,
        )
        if plate is None or not _from_a_network(msg["fn"], self._weights):
            return  # (a site of the model's own, beside the network)
        scale = msg["scale"]
        if isinstance(scale, Tensor):
            if scale.numel() != 1:  # weights of the user's own
                return
            scale = float(scale)
        count = self._particles
        if _compensated(scale, count, frames):
            return
        warn_at_caller(
            f"the observed site {msg['name']!r} lies in pyro.plate({plate!r}, "
            f"{count}, dim={PLATE_DIM}), over the network's {count} particles, "
            f"which weighs each particle's observations 1, not 1/{count} as the "
            f"network's weight sites: the ELBO counts the data {count} times "
            "against the weights' KL. Observe the network's output in "
            "bnn.per_particle(out) instead (with bnn.per_particle(out), "
            "pyro.plate('data', B): ...), or give the 1/S a poutine.scale of "
            "its own (a minibatch weight with the 1/S in it, one "
            "poutine.scale(N / (B * S)), cannot be told from one without it)",
        )


def watching_particle_plates(model: Callable[..., Any]) -> Callable[..., Any]:
    """``model`` run under :class:`PlainParticlePlates` (the library's ELBOs).

    Example:
        >>> import pyro, torch
        >>> import pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> watched = watching_particle_plates(model)
        >>> sorted(pyro.poutine.trace(watched).get_trace().nodes)
        ['_INPUT', '_RETURN', 'z']
    """

    def watched(*args: Any, **kwargs: Any) -> Any:
        with PlainParticlePlates():
            return model(*args, **kwargs)

    return watched


def _compensated(
    scale: float, count: int, frames: Sequence[CondIndepStackFrame]
) -> bool:
    """Whether a site's ``scale`` holds the ``1 / count`` of a plate over the particles.

    Either in one factor of the user's own (``poutine.scale(1 / S)``, a
    number or a one-element tensor, beside a minibatch weight
    ``poutine.scale(N / B)`` or not), or as the whole scale beyond the
    subsampling of the site's plates. A minibatch weight of the user's own
    with the ``1 / S`` in it, one ``poutine.scale(N / (B * S))``, is not
    read as compensated: ``N`` is no plate's, and the factor cannot be told
    from a minibatch weight ``N' / B`` without it (at ``N = B * S`` it is 1,
    the scale of no handler at all).
    """
    subsampling = math.prod((f.full_size or f.size) / f.size for f in frames)
    if math.isclose(scale * count, subsampling):
        return True
    return any(
        math.isclose(float(factor) * count, 1.0)
        for factor in active_scales()
        if isinstance(factor, (int, float))
        or (isinstance(factor, Tensor) and factor.numel() == 1)
    )


def _from_a_network(fn: object, weights: list[Tensor]) -> bool:
    """Whether a parameter of the distribution ``fn`` comes from a network output.

    Its tensors and those of the distributions it wraps (``Independent``,
    ``MaskedDistribution``...), as stored on the instances.
    """
    pending, seen = [fn], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for value in vars(current).values():
            if isinstance(value, Tensor) and computed_from_a_network(value, weights):
                return True
            if isinstance(value, Distribution):
                pending.append(value)
    return False
