from __future__ import annotations

from typing import Any

import pyro.distributions as dist
from pyro.nn.module import to_pyro_module_
from torch import nn

import pyrolite_bnn as bnn
from pyrolite_bnn._overrides import keeps_methods


class _WideNormal(bnn.NormalPrior):
    def elementwise(self) -> Any:
        return dist.Normal(self.loc, 3.0 * self.scale)


def test_a_pyro_module_made_of_a_prior_keeps_its_methods() -> None:
    """``to_pyro_module_`` makes a class per prior class (``PyroNormalPrior``,
    with ``PyroPrior`` in its bases): it overrides no method, so closed forms
    written for the prior hold for it; a subclass that overrides the
    distribution does not keep it."""
    net = bnn.VISequential(bnn.VILinear(3, 4), nn.Tanh(), bnn.VILinear(4, 1))
    to_pyro_module_(net)
    prior = net[0].prior["weight"]
    assert type(prior) is not bnn.NormalPrior
    assert keeps_methods(prior, bnn.NormalPrior, ("forward", "elementwise"))
    assert not keeps_methods(_WideNormal(), bnn.NormalPrior, ("elementwise",))
    assert keeps_methods(_WideNormal(), bnn.NormalPrior, ("forward",))
    assert not keeps_methods(bnn.LaplacePrior(), bnn.NormalPrior, ())
