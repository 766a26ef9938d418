"""Pyro sample sites of a network's random variables, named by module path.

Inside Pyro inference (``SVI``, ``Predictive``, ``MCMC``, or the traced path of
an assigned guide) a layer that reads one of its random variables gets the
value of the Pyro sample site of that variable. The site is named by the
variable's module path from the network that was called (``"body.0.weight"``),
whatever containers, plain ``torch.nn`` ones included, lie in between, and it is
sampled once per call: a layer object used at two positions of the network
reads the same weights at both (weight sharing), and its KL counts once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

import pyro
from torch import Tensor

if TYPE_CHECKING:
    from pyrolite_bnn.module import VIModule
    from pyrolite_bnn.variables import RandomVariable

__all__ = ["SiteTable", "current_sites", "sampling_sites"]


class SiteTable:
    """The sample sites of one call of a network under Pyro.

    Args:
        variables: the network's random variables (one per layer and name).
    """

    def __init__(self, variables: list[RandomVariable]) -> None:
        self.variables = {(id(v.module), v.name): v for v in variables}
        self.values: dict[tuple[int, str], Tensor] = {}

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
            self.values[key] = value
        return value


_SITES: ContextVar[SiteTable | None] = ContextVar("pyrolite_sites", default=None)


def current_sites() -> SiteTable | None:
    """The site table of the running call under Pyro (``None`` elsewhere)."""
    return _SITES.get()


@contextmanager
def sampling_sites(table: SiteTable) -> Iterator[None]:
    """Make ``table`` the current site table for the body."""
    token = _SITES.set(table)
    try:
        yield
    finally:
        _SITES.reset(token)
