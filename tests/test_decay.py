"""Tests for :mod:`pyrolite_bnn.decay`: which parameters set a scale, and the
optimizer groups that keep weight decay off them."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal
from torch import nn
from torch.distributions import constraints
from torch.nn.utils import parametrize

import pyrolite_bnn as bnn
from pyrolite_bnn.decay import decay_groups, is_scale_parameter, scale_parameters


def _net() -> bnn.VISequential:
    return bnn.VISequential(bnn.VILinear(3, 4), nn.ReLU(), bnn.VILinear(4, 1))


@pytest.mark.parametrize(
    ("name", "scale"),
    [
        ("posterior.weight.rho_unconstrained", True),
        ("predictive.raw_scale_unconstrained", True),
        ("prior.weight.log_scale", True),
        ("AutoNormal.scales.0.weight", False),  # by its constraint: below
        ("layer._weight_log_std", True),
        ("layer.log_std", True),
        ("posterior.weight.loc_unconstrained", False),
        ("upscale.posterior.weight.loc_unconstrained", False),
        ("scale.posterior.weight.loc_unconstrained", False),  # a module "scale"
        ("rho.posterior.weight.loc_unconstrained", False),
        ("AutoNormal.locs.0.weight", False),
        ("0.weight", False),
    ],
)
def test_scale_parameters_by_name(name: str, scale: bool) -> None:
    assert is_scale_parameter(name) is scale


class _Clamp(nn.Module):
    def forward(self, rho: torch.Tensor) -> torch.Tensor:
        return rho.clamp(max=3.0)


def test_a_reparametrised_scale_is_recognised_as_the_tensor_it_computes() -> None:
    """A rho clamped with torch.nn.utils.parametrize is the parameter
    '...parametrizations.rho_unconstrained.original': its own name is no
    scale's, and weight decay widened the posterior 3x without a warning."""
    net = _net()
    parametrize.register_parametrization(
        net[0].posterior["weight"], "rho_unconstrained", _Clamp()
    )
    found = scale_parameters(net)
    original = net[0].posterior["weight"].parametrizations["rho_unconstrained"]
    name = "0.posterior.weight.parametrizations.rho_unconstrained.original"
    assert found[name] is original.original
    assert "0.posterior.weight.loc_unconstrained" not in found
    assert len(found) == 4  # the other three rho as before


def test_a_parametrised_mean_is_no_scale() -> None:
    net = _net()
    parametrize.register_parametrization(
        net[0].posterior["weight"], "loc_unconstrained", _Clamp()
    )
    assert not any("loc_unconstrained" in name for name in scale_parameters(net))


@pytest.mark.parametrize(
    ("guide", "expected"),
    [
        (
            AutoNormal,
            [
                f"custom_guide.inner.scales.{i}.{t}_unconstrained"
                for i in (0, 2)
                for t in ("weight", "bias")
            ],
        ),
        (AutoLowRankMultivariateNormal, ["custom_guide.inner.scale_unconstrained"]),
    ],
)
def test_an_autoguides_scales_are_found_by_their_constraint(
    guide: type, expected: list[str]
) -> None:
    net = _net()
    net.guide = guide(net.prior_model, init_loc_fn=net.init_loc_fn)
    found = [n for n in scale_parameters(net) if n.startswith("custom_guide.")]
    assert found == expected  # not AutoLowRank's cov_factor nor the locs


def test_a_hand_written_guides_positive_params_are_scales() -> None:
    net = _net()

    def guide() -> None:
        for variable in net.random_variables():
            shape = variable.shape
            loc = pyro.param(f"{variable.site}.mean", torch.zeros(shape))
            spread = pyro.param(
                f"{variable.site}.spread",
                torch.full(shape, 0.1),
                constraint=constraints.positive,
            )
            pyro.sample(variable.site, dist.Normal(loc, spread).to_event(len(shape)))

    net.guide = guide
    found = [n for n in scale_parameters(net) if n.startswith("custom_guide.")]
    assert len(found) == 4
    assert all(name.endswith("spread_unconstrained") for name in found)


def test_decay_groups_split_every_parameter_once() -> None:
    net = bnn.VISequential(
        bnn.VILinear(3, 4),
        nn.ReLU(),
        bnn.VILinear(4, 1, prior=bnn.LearnedNormalPrior()),
    )
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=10)
    decayed, kept = decay_groups(net, loss_fn, weight_decay=0.1)
    assert decayed["weight_decay"] == 0.1
    assert kept["weight_decay"] == 0.0
    named = {**dict(net.named_parameters()), **dict(loss_fn.named_parameters())}
    names = {id(p): n for n, p in named.items()}
    assert sorted(names[id(p)] for p in kept["params"]) == sorted(
        n
        for n in named
        if n.endswith(("rho_unconstrained", "log_scale", "raw_scale_unconstrained"))
    )
    assert len(decayed["params"]) + len(kept["params"]) == len(named)
    assert {id(p) for p in decayed["params"]}.isdisjoint(map(id, kept["params"]))


def test_decay_groups_of_a_wrapped_network_and_without_a_loss() -> None:
    net = _net()
    compiled = torch.compile(net)
    decayed, kept = decay_groups(compiled, weight_decay=1e-2)
    assert [id(p) for p in kept["params"]] == [
        id(p) for n, p in net.named_parameters() if n.endswith("rho_unconstrained")
    ]
    assert len(decayed["params"]) == 4


def test_decay_groups_refuse_a_negative_decay() -> None:
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        decay_groups(_net(), weight_decay=-0.1)
