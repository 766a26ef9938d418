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
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import TYPE_CHECKING

import pyro
import torch
from torch import Tensor

from pyrolite_bnn import _particles
from pyrolite_bnn._context_values import set_while

if TYPE_CHECKING:
    from pyrolite_bnn.module import VIModule
    from pyrolite_bnn.variables import RandomVariable

__all__ = ["SiteShapeError", "SiteTable", "current_sites", "sampling_sites"]


class SiteShapeError(ValueError):
    """A weight site's value has a shape the particle plate cannot use."""


class SiteTable:
    """The sample sites of one call of a network under Pyro.

    Args:
        variables: the network's random variables (one per layer and name).
    """

    def __init__(self, variables: list[RandomVariable]) -> None:
        self.variables = {(id(v.module), v.name): v for v in variables}
        self.values: dict[tuple[int, str], Tensor] = {}

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
            value = pyro.sample(variable.site, module.prior_distribution(name))
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
        f"value for every particle){hint}"
    )


_SITES: ContextVar[SiteTable | None] = ContextVar("pyrolite_sites", default=None)


def current_sites() -> SiteTable | None:
    """The site table of the running call under Pyro (``None`` elsewhere)."""
    return _SITES.get()


def sampling_sites(table: SiteTable) -> AbstractContextManager[None]:
    """Make ``table`` the current site table for the body."""
    return set_while(_SITES, table)
