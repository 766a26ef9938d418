"""Tests for :mod:`pyrolite_bnn.decay`: which parameters set a scale, and the
optimizer groups that keep weight decay off them."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.infer import SVI
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal
from pyro.nn import PyroModule, PyroParam
from pyro.params.param_store import ParamStoreDict
from torch import nn
from torch.nn.utils import parametrize

import pyrolite_bnn as bnn
from pyrolite_bnn import decay as decay_module
from pyrolite_bnn.decay import (
    decay_groups,
    decay_optim_args,
    is_scale_parameter,
    scale_parameters,
)


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
        ("layer._weight_log_scale", True),
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


def _pickled_before_setup_recorded_scales(net: bnn.VIModule) -> bnn.VIModule:
    """``net`` saved whole and loaded, as a pickle of the code before the guide's
    scales were read from its modules: the names its setup recorded missing."""
    loaded: bnn.VIModule = pickle.loads(pickle.dumps(net))
    for module in loaded.modules():
        vars(module).pop("_positive_names", None)
    return loaded


def test_an_autoguides_scales_are_found_in_a_network_saved_whole() -> None:
    """A network with an AutoNormal guide saved whole (torch.save) before
    setup recorded the guide's scales: none were found, and decay_groups
    decayed them."""
    net = _net()
    net.guide = AutoNormal(net.prior_model, init_loc_fn=net.init_loc_fn)
    loaded = _pickled_before_setup_recorded_scales(net)
    found = [n for n in scale_parameters(loaded) if n.startswith("custom_guide.")]
    assert found == [
        f"custom_guide.inner.scales.{i}.{t}_unconstrained"
        for i in (0, 2)
        for t in ("weight", "bias")
    ]
    decayed, _ = decay_groups(loaded, weight_decay=0.1)
    names = {id(p): n for n, p in loaded.named_parameters()}
    assert not any("scales" in names[id(p)] for p in decayed["params"])


def test_a_pyro_modules_positive_params_anywhere_in_the_network_are_scales() -> None:
    """A layer of one's own with a PyroParam(..., positive), e.g. a learned
    temperature, is read by its constraint, like a guide's."""

    class Tempered(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.temperature = PyroParam(torch.ones(()), constraints.positive)
            self.shift = PyroParam(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x / self.temperature + self.shift

    net = bnn.VISequential(bnn.VILinear(3, 1), Tempered())
    assert [n for n in scale_parameters(net) if n.startswith("1.")] == [
        "1.temperature_unconstrained"
    ]


@pytest.mark.parametrize(
    ("constraint", "scale"),
    [
        (constraints.lower_cholesky, True),
        (constraints.positive_definite, True),
        (constraints.unit_lower_cholesky, False),
        (constraints.real, False),
    ],
)
def test_a_guides_cholesky_factor_is_a_scale(
    constraint: constraints.Constraint, scale: bool
) -> None:
    """Pyro stores a Cholesky factor's (a covariance's) diagonal as its log:
    decay pulls it towards 1 as it pulls a log scale."""
    net = bnn.VILinear(2, 1, bias=False)
    initial = (
        torch.eye(2)
        if constraint is constraints.unit_lower_cholesky
        else (0.1 * torch.eye(2))
    )

    def guide() -> None:
        loc = pyro.param("loc", torch.zeros(1, 2))
        tril = pyro.param("tril", initial, constraint=constraint)
        if constraint is constraints.positive_definite:
            tril = torch.linalg.cholesky(tril)
        weight = dist.MultivariateNormal(loc, scale_tril=torch.tril(tril))
        pyro.sample("weight", weight.to_event(1))

    net.guide = guide
    found = scale_parameters(net)
    assert ("custom_guide.pyro_params.tril_unconstrained" in found) is scale
    assert "custom_guide.pyro_params.loc_unconstrained" not in found


@pytest.mark.parametrize(
    "call",
    [
        lambda net: decay_groups(net.parameters(), weight_decay=0.1),
        lambda net: decay_optim_args(net.parameters(), weight_decay=0.1),
        lambda net: scale_parameters(list(net.parameters())),
    ],
)
def test_parameters_instead_of_the_network_are_refused_saying_what_to_pass(
    call: Callable[[nn.Module], object],
) -> None:
    """The habit of AdamW(model.parameters()) gave an AttributeError
    ('generator' object has no attribute 'named_modules')."""
    with pytest.raises(TypeError, match=r"the network itself.*not model\.parameters"):
        call(_net())


@pytest.mark.parametrize("helper", [decay_groups, decay_optim_args])
def test_a_loss_function_is_refused_saying_to_leave_it_out(
    helper: Callable[..., object],
) -> None:
    with pytest.raises(TypeError, match=r"the function mse_loss.*leave loss_fn out"):
        helper(_net(), F.mse_loss, weight_decay=0.1)
    helper(_net(), nn.MSELoss(), weight_decay=0.1)  # a loss module holds none


def _svi_decays(
    net: bnn.VIModule, loss_fn: bnn.KullbackLeiblerLoss, optim: pyro.optim.PyroOptim
) -> dict[str, float]:
    """Each parameter's weight decay in ``optim`` after two SVI steps, by name."""
    svi = SVI(loss_fn.pyro_model(net), net.guide, optim, bnn.Trace_ELBO())
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    for _ in range(2):
        svi.step(x, y)
    names = {
        id(p): n
        for n, p in [*net.named_parameters(), *loss_fn.named_parameters(prefix="loss")]
    }
    return {
        names[id(p)]: optimizer.param_groups[0]["weight_decay"]
        for p, optimizer in optim.optim_objs.items()
    }


@pytest.mark.parametrize("guide", [None, AutoNormal])
def test_decay_optim_args_keep_pyro_optims_decay_off_the_scales(
    guide: type | None,
) -> None:
    """pyro.optim takes per-parameter arguments, not groups: the same split."""
    net = bnn.VISequential(
        bnn.VILinear(3, 4),
        nn.ReLU(),
        bnn.VILinear(4, 1, prior=bnn.LearnedNormalPrior()),
    )
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=8)
    arguments = decay_optim_args(net, loss_fn, weight_decay=0.1, lr=1e-3)
    if guide is not None:  # assigned after the arguments were made
        net.guide = guide(net.prior_model, init_loc_fn=net.init_loc_fn)
    decays = _svi_decays(net, loss_fn, pyro.optim.Adam(arguments))
    scales = {*scale_parameters(net), *(f"loss.{n}" for n in scale_parameters(loss_fn))}
    assert decays
    assert {n for n, decay in decays.items() if decay == 0.0} == scales & set(decays)
    assert {n for n, decay in decays.items() if decay != 0.0} == set(decays) - scales
    assert all(decay in (0.0, 0.1) for decay in decays.values())
    assert "loss.predictive.raw_scale_unconstrained" in scales & set(decays)
    assert arguments("0.posterior.weight.loc") == {"lr": 1e-3, "weight_decay": 0.1}


def test_decay_optim_args_find_a_guide_assigned_after_the_first_steps() -> None:
    """Warm-up with the generated guide, then an AutoNormal trained by the
    same pyro.optim object: the arguments kept the scales of their first
    lookup, and the new guide's scales got the decay (probe falsepos23b)."""
    net = _net()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=8)
    arguments = decay_optim_args(net, loss_fn, weight_decay=0.1, lr=1e-3)
    optim = pyro.optim.Adam(arguments)
    _svi_decays(net, loss_fn, optim)  # the warm-up
    net.guide = AutoNormal(net.prior_model, init_loc_fn=net.init_loc_fn)
    decays = _svi_decays(net, loss_fn, optim)
    guide = {n: d for n, d in decays.items() if n.startswith("custom_guide.")}
    scales = {n for n in guide if n.startswith("custom_guide.inner.scales.")}
    assert len(scales) == 4  # weight and bias of two layers
    assert {n for n, decay in guide.items() if decay == 0.0} == scales
    assert {n for n, decay in guide.items() if decay == 0.1} == set(guide) - scales


def test_decay_optim_args_classify_a_steps_names_in_one_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each name not a scale's rebuilt the modules' parameter list and read
    every scale's name in Pyro's store again: quadratic in the number of
    parameters on the first step (5.3 s for 1600 tensors, probe
    falsepos24a). Now one pass for the step: at most one store read per
    parameter and one search for scales per module, whatever the size."""
    layers = [m for _ in range(19) for m in (bnn.VILinear(3, 3), nn.Tanh())]
    net = bnn.VISequential(*layers, bnn.VILinear(3, 1))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=8)
    arguments = decay_optim_args(net, loss_fn, weight_decay=0.1, lr=1e-3)
    reads = {"store": 0, "scales": 0}
    asking: list[str] = []

    def store_read(store: ParamStoreDict, parameter: torch.Tensor) -> str | None:
        reads["store"] += bool(asking)
        return param_name(store, parameter)

    def scales_found(module: nn.Module) -> dict[str, torch.Tensor]:
        reads["scales"] += bool(asking)
        return find_scales(module)

    def asked(name: str) -> dict[str, object]:
        asking.append(name)
        try:
            return arguments(name)
        finally:
            asking.remove(name)

    param_name, find_scales = ParamStoreDict.param_name, decay_module.scale_parameters
    monkeypatch.setattr(ParamStoreDict, "param_name", store_read)
    monkeypatch.setattr(decay_module, "scale_parameters", scales_found)
    decays = _svi_decays(net, loss_fn, pyro.optim.Adam(asked))
    parameters = len([*net.parameters(), *loss_fn.parameters()])
    assert len(decays) == parameters == 81
    assert reads["store"] <= parameters
    assert reads["scales"] <= 2
    assert sorted(decays.values()).count(0.0) == 41  # every rho, the noise


@pytest.mark.parametrize(
    "decay",
    [
        lambda: np.float32(0.1),
        lambda: torch.tensor(0.1),
        lambda: torch.tensor(0.1, requires_grad=True),
    ],
    ids=["numpy", "tensor", "tensor_requiring_grad"],
)
def test_a_decay_given_as_any_real_number_is_taken(
    decay: Callable[[], object],
) -> None:
    """A tensor that requires gradients was read with a warning from torch."""
    net, expected = _net(), pytest.approx(0.1, rel=1e-6)  # float32's 0.1
    groups = decay_groups(net, weight_decay=decay())
    assert [group["weight_decay"] for group in groups] == [expected, 0.0]
    arguments = decay_optim_args(net, weight_decay=decay())
    assert arguments("0.posterior.weight.loc")["weight_decay"] == expected
