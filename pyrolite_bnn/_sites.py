"""Pyro sample sites of a network's random variables, named by module path.

Inside Pyro inference (``SVI``, ``Predictive``, ``MCMC``, or the traced path of
an assigned guide) a layer that reads one of its random variables gets the
value of the Pyro sample site of that variable. The site is named by the
variable's module path from the network that was called (``"body.0.weight"``),
whatever containers, plain ``torch.nn`` ones included, lie in between, and it is
sampled once per call: a layer object used at two positions of the network
reads the same weights at both (weight sharing), and its KL counts once.

A site's value has the shape ``(S, 1, *shape)`` of the particle plate. A value
that a handler supplies (``poutine.condition``, ``poutine.do``, replayed or
posterior samples) may also be one draw, ``shape`` (or ``(1, 1, *shape)``): it
is the same value for every particle and is broadcast to them; any other shape
is refused with a :class:`SiteShapeError` naming the site and both shapes.

Other sample sites sent while the network runs (a ``pyro.sample`` statement
in a ``forward``, a ``PyroSample`` attribute of a module) are Pyro's, with
one exception: with several particles a latent site has one value per
particle, batch shape ``(S, 1)``, which cannot meet the network's activations,
whose particles are folded into the batch dimension (``(B * S, ...)``,
batch-major): torch's size error, or a broadcast pairing the wrong rows,
followed. A site whose value, after every handler has run, holds one draw per
particle is refused with a :class:`LatentSiteError` that says what to do
instead: a latent site (masked ones too: ``poutine.mask``, the unobserved part
of ``obs_mask=``, are drawn all the same), or one that ``poutine.reparam``
computes from auxiliary draws of its own. Left alone: ``pyro.plate``'s
subsample sites (no random variable), observed sites (``obs=``,
``pyro.factor``, ``pyro.deterministic``, a value ``poutine.condition``,
``poutine.do`` or posterior samples give, the same for every particle; the
sites a handler sends for it, as ``poutine.do``'s copy of the site, never
reach the network), parallel-enumerated sites (``TraceEnum_ELBO``: the value
is the support, the same for every particle) and sites of one particle
(``samples=1``, as under MCMC).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyro
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyrolite_bnn import _particles
from pyrolite_bnn._context_values import set_while

if TYPE_CHECKING:
    from types import TracebackType

    from pyro.poutine.runtime import Message

    from pyrolite_bnn.module import VIModule
    from pyrolite_bnn.variables import RandomVariable

__all__ = [
    "LatentSiteError",
    "SiteShapeError",
    "SiteTable",
    "current_sites",
    "sampling_sites",
]


class SiteShapeError(ValueError):
    """A weight site's value has a shape the particle plate cannot use."""


class LatentSiteError(ValueError):
    """A latent site of the user's drawn in a network running several particles."""


class SiteTable:
    """The sample sites of one call of a network under Pyro.

    Args:
        variables: the network's random variables (one per layer and name).
    """

    def __init__(self, variables: list[RandomVariable]) -> None:
        self.variables = {(id(v.module), v.name): v for v in variables}
        self.values: dict[tuple[int, str], Tensor] = {}
        # Whether a weight's site is being drawn: the sites sent meanwhile
        # are the weight's own and its handlers' (poutine.reparam's auxiliary
        # sites), not the user's.
        self.drawing_weight = False

    def any_read(self) -> bool:
        """Whether a layer has read one of its weights in this call yet."""
        return bool(self.values)

    def sample(self, module: VIModule, name: str) -> Tensor:
        """The value of ``module``'s random variable ``name`` (sampled once)."""
        key = (id(module), name)
        value = self.values.get(key)
        if value is None:
            variable = self.variables.get(key)
            if variable is None:
                raise RuntimeError(
                    f"{type(module).__name__}.{name} is not a weight of the network "
                    "being called: a Bayesian layer must be reachable as a submodule "
                    "(an attribute, or inside a torch or bnn container), not kept in "
                    "a plain Python list or dict"
                )
            prior = module.prior_distribution(name)
            self.drawing_weight = True
            try:
                value = pyro.sample(variable.site, prior)
            finally:
                self.drawing_weight = False
            value = _particle_value(variable.site, value, variable.shape)
            self.values[key] = value
        return value


def _particle_value(site: str, value: Tensor, shape: torch.Size) -> Tensor:
    """``value`` of ``site`` as ``(S, 1, *shape)``, one draw broadcast to all ``S``.

    Raises:
        SiteShapeError: if ``value`` is neither ``(S, 1, *shape)`` nor one draw.
    """
    state = _particles.current()
    if state is None:
        return value
    expected = torch.Size((state.samples, 1, *shape))
    if value.shape == expected:
        return value
    leading = value.shape[: value.dim() - len(shape)]
    if (
        value.dim() >= len(shape)
        and value.shape[len(leading) :] == shape
        and len(leading) <= 2
        and all(size == 1 for size in leading)
    ):
        return value.expand(expected)
    hint = ""
    if value.dim() == len(expected) and value.shape[1:] == expected[1:]:
        hint = (
            f". It holds {value.shape[0]} particles: a guide (or trace) drew "
            f"{value.shape[0]} where the network runs {state.samples}; give the "
            "model and the guide the same samples=, e.g. "
            "Predictive(model, guide=net.guide, num_samples=n)(x, samples=k)"
        )
    raise SiteShapeError(
        f"site {site!r} has a value of shape {tuple(value.shape)}, but the network "
        f"runs {state.samples} particle(s) of weights of shape {tuple(shape)}: a "
        f"value set by a Pyro handler (poutine.condition or poutine.do, a "
        f"replayed trace, posterior samples) must have the shape "
        f"{tuple(expected)} (one value per particle) or {tuple(shape)} (the same "
        f"value for every particle; also {(1, *shape)} or {(1, 1, *shape)}){hint}"
    )


_SITES: ContextVar[SiteTable | None] = ContextVar("pyrolite_sites", default=None)


def current_sites() -> SiteTable | None:
    """The site table of the running call under Pyro (``None`` elsewhere)."""
    return _SITES.get()


def sampling_sites(table: SiteTable) -> AbstractContextManager[None]:
    """Make ``table`` the current site table for the body.

    Latent sites other than ``table``'s drawn in the body with several
    particles are refused (see the module documentation).
    """
    return _SitesInForce(table)


class _SitesInForce:
    """The body of :func:`sampling_sites`: the table, and the watch on other sites."""

    __slots__ = ("_table", "_watch")

    def __init__(self, table: SiteTable) -> None:
        self._table = set_while(_SITES, table)
        self._watch = _OtherLatentSites(table)

    def __enter__(self) -> None:
        self._table.__enter__()
        try:
            self._watch.__enter__()
        except BaseException:
            self._table.__exit__(None, None, None)
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._watch.__exit__(kind, error, traceback)
        finally:
            self._table.__exit__(kind, error, traceback)


@dataclass
class _SiteInFlight:
    """A sample message between its processing and its postprocessing."""

    msg: Message[..., Any]
    drew_latent: bool = False
    """Whether a handler drew a latent site of its own for it (``poutine.reparam``)."""


class _OtherLatentSites(Messenger):
    """Refuse a site, not a weight's, whose value holds one draw per particle.

    See the module documentation. A weight's site, and the sites its handlers
    send while it is drawn (``poutine.reparam``'s), are :class:`SiteTable`'s.
    A site is judged after every handler has run (``poutine.condition``
    observes a site, ``poutine.reparam`` computes it from auxiliary draws); a
    site a handler sends while another is in flight (``poutine.do``'s copy,
    ``poutine.reparam``'s auxiliary draws) is judged through that one, the
    site whose value the network's code receives.
    """

    def __init__(self, table: SiteTable) -> None:
        super().__init__()
        self._table = table
        # Innermost last. One left by a message that raised (a handler's
        # error, caught in the forward) is dropped when a message below it
        # ends; until then the messages sent are taken for its handler's.
        self._in_flight: list[_SiteInFlight] = []

    def _process_message(self, msg: Message[..., Any]) -> None:
        if (
            msg["type"] == "sample"
            and not self._table.drawing_weight
            and not site_is_subsample(msg)
        ):
            self._in_flight.append(_SiteInFlight(msg))

    def _postprocess_message(self, msg: Message[..., Any]) -> None:
        site = self._finished(msg)
        if site is None:
            return
        if self._in_flight:
            # A handler's site for the message in flight: its value reaches
            # the network, if at all, through that message's.
            if not msg["is_observed"]:
                self._in_flight[-1].drew_latent = True
            return
        state = _particles.current()
        if (
            (msg["is_observed"] and not site.drew_latent)
            or state is None
            or state.samples == 1
            or not _drawn_per_particle(msg, state.samples)
        ):
            return
        shape = tuple(getattr(msg["value"], "shape", ()))
        raise LatentSiteError(
            f"the latent site {msg['name']!r} is drawn while the network runs "
            f"{state.samples} particles (by a pyro.sample statement or a PyroSample "
            "attribute of a module, in the network's forward): Pyro gives it one "
            f"value per particle (shape {shape}), but the network's activations "
            "hold the particles folded into the batch dimension "
            f"((B * {state.samples}, ...), batch-major), so the two cannot meet "
            "(torch's size error, or a broadcast pairing the wrong rows). Draw it "
            "in a Pyro model around the network, from "
            "the network's (S, B, ...) output (docs/howto.rst, 'Write your own "
            "Pyro model around a network'); make it a random variable of a "
            "Bayesian layer of your own (VIModule.declare_random_variable, "
            "docs/howto.rst, 'Write a custom Bayesian layer'), drawn per particle "
            "in the network's layout and trained by its guide; or run one "
            "particle (samples=1, as under MCMC)"
        )

    def _finished(self, msg: Message[..., Any]) -> _SiteInFlight | None:
        """Take ``msg``'s record off the messages in flight (``None``: none)."""
        for index in range(len(self._in_flight) - 1, -1, -1):
            if self._in_flight[index].msg is msg:
                site = self._in_flight[index]
                del self._in_flight[index:]
                return site
        return None


def _drawn_per_particle(msg: Message[..., Any], samples: int) -> bool:
    """Whether ``msg``'s value holds one draw per particle.

    That is, whether its batch shape has the particle plate's dimension, of
    size ``samples`` (a parallel-enumerated value has size 1 there).
    """
    value = msg["value"]
    if not isinstance(value, Tensor):
        return False
    batch_dims = value.dim() - getattr(msg["fn"], "event_dim", 0)
    return (
        batch_dims >= -_particles.PLATE_DIM
        and value.shape[batch_dims + _particles.PLATE_DIM] == samples
    )
