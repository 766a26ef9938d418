"""Weight decay on scale parameters is named in one warning per optimizer.

A practitioner's ``AdamW`` (default ``weight_decay=0.01``) on
``model.parameters()`` pulls the posterior's ``rho`` towards 0, i.e. its
standard deviations towards softplus(0) = 0.69: a wider posterior, silently.
"""

from __future__ import annotations

import copy
import pickle
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal
from torch import nn
from torch.nn.utils import parametrize

import pyrolite_bnn as bnn
from pyrolite_bnn import vi
from pyrolite_bnn.decay import scale_parameters

Optimizer = torch.optim.Optimizer


def _train(
    net: nn.Module,
    loss_fn: bnn.KullbackLeiblerLoss,
    make_optimizer: Callable[[], Optimizer],
    steps: int = 4,
) -> list[str]:
    """Messages of the decay warnings of a short PyTorch-style loop."""
    optimizer = make_optimizer()
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            optimizer.zero_grad()
            loss_fn(net(x, samples=2), y).backward()
            optimizer.step()
    return [str(w.message) for w in caught if "weight_decay" in str(w.message)]


def _net() -> bnn.VISequential:
    return bnn.VISequential(bnn.VILinear(3, 4), nn.ReLU(), bnn.VILinear(4, 1))


def _all(*modules: nn.Module) -> Iterable[torch.Tensor]:
    return [p for m in modules for p in m.parameters()]


def test_adamw_defaults_on_all_parameters_warn_once_naming_rho() -> None:
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    messages = _train(net, loss_fn, lambda: torch.optim.AdamW(net.parameters()))
    assert len(messages) == 1
    assert (
        "AdamW applies weight_decay=0.01 to '0.posterior.weight.rho_unconstrained'"
        in (messages[0])
    )
    assert "widens the posterior" in messages[0]


def test_the_warning_points_at_the_users_line() -> None:
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, weight_decay=0.1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            optimizer.zero_grad()
            loss_fn(net(x, samples=2), y).backward()
            optimizer.step()
    (warning,) = [w for w in caught if "weight_decay" in str(w.message)]
    assert warning.filename == __file__


@pytest.mark.parametrize(
    "groups",
    [
        lambda net, loss_fn: [{"params": _all(net, loss_fn)}],  # Adam: no decay
        lambda net, loss_fn: [
            {
                "params": [p for n, p in net.named_parameters() if "rho" not in n],
                "weight_decay": 0.1,
            },
            {
                "params": [p for n, p in net.named_parameters() if "rho" in n],
                "weight_decay": 0.0,
            },
            {"params": list(loss_fn.parameters()), "weight_decay": 0.0},
        ],
    ],
)
def test_no_decay_on_scales_gives_no_warning(
    groups: Callable[[nn.Module, nn.Module], list[dict[str, object]]],
) -> None:
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(), 100)
    messages = _train(net, loss_fn, lambda: torch.optim.Adam(groups(net, loss_fn)))
    assert messages == []


def test_decay_on_the_learned_noise_scale_is_named() -> None:
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(), 100)
    messages = _train(
        net,
        loss_fn,
        lambda: torch.optim.SGD(
            [
                {"params": list(net.parameters())},
                {"params": list(loss_fn.parameters()), "weight_decay": 1e-3},
            ],
            lr=0.01,
        ),
    )
    assert len(messages) == 1
    assert "SGD applies weight_decay=0.001 to 'predictive.raw_scale" in messages[0]


def test_an_autoguides_scales_are_named() -> None:
    net = _net()
    net.guide = AutoNormal(net.prior_model, init_loc_fn=net.init_loc_fn)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    messages = _train(net, loss_fn, lambda: torch.optim.AdamW(net.parameters()))
    assert len(messages) == 1
    assert "scales" in messages[0]


def test_each_optimizer_is_checked_once() -> None:
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    first = _train(net, loss_fn, lambda: torch.optim.AdamW(net.parameters()))
    second = _train(net, loss_fn, lambda: torch.optim.AdamW(net.parameters()))
    assert len(first) == len(second) == 1


def test_a_copied_loss_checks_afresh() -> None:
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    assert len(_train(net, loss_fn, lambda: torch.optim.AdamW(net.parameters()))) == 1
    for copied in (copy.deepcopy(loss_fn), pickle.loads(pickle.dumps(loss_fn))):
        messages = _train(net, copied, lambda: torch.optim.AdamW(net.parameters()))
        assert len(messages) == 1


class _LocScaleHeads(bnn.VIModule):
    """A heteroscedastic network whose heads are modules named loc and scale."""

    def __init__(self) -> None:
        super().__init__()
        self.body = bnn.VILinear(3, 8)
        self.loc = bnn.VILinear(8, 1)
        self.scale = bnn.VILinear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.body(x))
        return torch.cat([self.loc(h), self.scale(h)], -1)


def test_modules_named_scale_are_not_scales() -> None:
    """The name check read every component: the recommended groups (decay on
    everything but rho) warned about 'scale.weight.loc_unconstrained'."""
    net = _LocScaleHeads()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.HeteroscedasticNormal(), 100)
    named = list(net.named_parameters())

    def groups() -> Optimizer:
        return torch.optim.AdamW(
            [
                {"params": [p for n, p in named if "rho" not in n]},
                {"params": [p for n, p in named if "rho" in n], "weight_decay": 0},
            ]
        )

    assert _train(net, loss_fn, groups) == []


def test_only_the_optimizers_of_the_network_are_checked() -> None:
    """One loss, two networks, each with its optimizer: the decay of the
    second's was judged against the first network's parameters (no warning),
    and marked as checked for good."""
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    first, second = _net(), _net()
    plain = torch.optim.Adam(first.parameters())
    decayed = torch.optim.AdamW(second.parameters(), weight_decay=0.1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            for net, optimizer in ((first, plain), (second, decayed)):
                optimizer.zero_grad()
                loss_fn(net(x, samples=2), y).backward()
                optimizer.step()
    messages = [str(w.message) for w in caught if "weight_decay" in str(w.message)]
    assert len(messages) == 1
    assert messages[0].startswith("AdamW applies weight_decay=0.1")


def test_pyro_optims_per_parameter_optimizers_give_one_warning() -> None:
    """pyro.optim keeps one torch optimizer per parameter: the warning came
    once per scale parameter (dozens in a real network)."""
    import pyro
    from pyro.infer import SVI

    net = _net()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 16)
    optimizer = pyro.optim.Adam({"lr": 1e-3, "weight_decay": 1e-2})
    svi = SVI(loss_fn.pyro_model(net), net.guide, optimizer, bnn.Trace_ELBO())
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            svi.step(x, y)
    messages = [str(w.message) for w in caught if "weight_decay" in str(w.message)]
    assert len(messages) == 1
    assert "more), unconstrained parameters of scales" in messages[0]


def test_a_group_added_after_the_first_step_is_checked() -> None:
    """Gradual unfreezing: AdamW over the head without decay, then the body
    added with weight_decay=0.5 widened its posterior 27x, without a warning
    (each optimizer was looked at once, at its first step)."""
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    optimizer = torch.optim.AdamW(net[2].parameters(), weight_decay=0.0)

    def steps() -> list[str]:
        return _train(net, loss_fn, lambda: optimizer, steps=3)

    assert steps() == []
    optimizer.add_param_group(
        {"params": list(net[0].parameters()), "weight_decay": 0.5}
    )
    (message,) = steps()
    assert "weight_decay=0.5 to '0.posterior.weight.rho_unconstrained'" in message


def test_each_decayed_scale_is_named_once_per_optimizer() -> None:
    """A changed decay or a new group warns about scales not named yet only."""
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(), 100)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)

    def steps() -> list[str]:
        return _train(net, loss_fn, lambda: optimizer, steps=2)

    assert steps() == []
    optimizer.param_groups[0]["weight_decay"] = 0.1
    assert len(steps()) == 1
    optimizer.param_groups[0]["weight_decay"] = 0.2  # the same scales again
    assert steps() == []
    optimizer.add_param_group({"params": list(loss_fn.parameters()), "weight_decay": 1})
    (message,) = steps()
    assert "weight_decay=1 to 'predictive.raw_scale_unconstrained'" in message


def test_decay_on_a_learned_priors_log_scale_is_named() -> None:
    """Decay pulls log_scale to 0, the prior scale to 1 (a bias of the
    empirical-Bayes objective); only the guide's and the likelihood's
    parameters were looked at."""
    net = bnn.VISequential(
        bnn.VILinear(3, 4, prior=bnn.LearnedNormalPrior()),
        nn.ReLU(),
        bnn.VILinear(4, 1, prior=bnn.LearnedNormalPrior()),
    )
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    named = list(net.named_parameters())
    messages = _train(
        net,
        loss_fn,
        lambda: torch.optim.AdamW(
            [
                {"params": [p for n, p in named if "log_scale" in n]},
                {"params": [p for n, p in named if "log_scale" not in n]},
            ]
        ),
    )
    (message,) = messages
    assert "weight_decay=0.01 to '0.prior.weight.log_scale'" in message
    assert "0.prior.weight.log_scale" in dict(named)


class _PlainRoot(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(bnn.VILinear(3, 4), nn.ReLU())
        self.head = bnn.VILinear(4, 1)

    def forward(self, x: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        return self.head(self.body(x))  # the network's default particles


def _with_autoguide() -> nn.Module:
    net = _net()
    net.guide = AutoNormal(net.prior_model, init_loc_fn=net.init_loc_fn)
    return net


@pytest.mark.parametrize("make", [_net, _PlainRoot, _with_autoguide])
def test_the_warning_names_the_parameter_as_named_parameters_does(
    make: Callable[[], nn.Module],
) -> None:
    """The warning said '0.weight.rho_unconstrained' where named_parameters()
    has '0.posterior.weight.rho_unconstrained': a name copied into a
    parameter group's filter matched nothing."""
    net, loss_fn = make(), bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    (message,) = _train(net, loss_fn, lambda: torch.optim.AdamW(net.parameters()))
    name = message.split("'")[1]
    assert name in dict(net.named_parameters())


def test_the_warning_names_the_decayed_trainable_scales_not_frozen_ones() -> None:
    """With the first layer frozen it named that layer's rho, which decay
    never moves (torch's optimizers skip parameters without gradients), and
    none of the head's, which it widens."""
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    net[0].requires_grad_(False)
    messages = _train(
        net, loss_fn, lambda: torch.optim.AdamW(net.parameters(), weight_decay=0.1)
    )
    assert len(messages) == 1
    assert messages[0].startswith(
        "AdamW applies weight_decay=0.1 to '2.posterior.weight.rho_unconstrained', "
        "'2.posterior.bias.rho_unconstrained', unconstrained parameters of scales"
    )
    assert "'0.posterior" not in messages[0]


def test_decay_of_frozen_scales_alone_says_when_it_acts() -> None:
    """Kept in the optimizer for gradual unfreezing: nothing moves yet."""
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    net[0].requires_grad_(False)
    messages = _train(
        net,
        loss_fn,
        lambda: torch.optim.AdamW(
            [
                {"params": net[0].parameters()},
                {"params": net[2].parameters(), "weight_decay": 0.0},
            ]
        ),
    )
    assert len(messages) == 1
    assert (
        "'0.posterior.weight.rho_unconstrained', '0.posterior.bias.rho_unconstrained' "
        "(frozen now, requires_grad=False: the decay acts once they are unfrozen)"
    ) in messages[0]


def test_every_decayed_scale_is_counted() -> None:
    """Only the first decayed scale of an optimizer was named, and "(and N
    more)" counted optimizers, not scales."""
    net = bnn.VISequential(bnn.VILinear(3, 3), bnn.VILinear(3, 3), bnn.VILinear(3, 1))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    messages = _train(
        net, loss_fn, lambda: torch.optim.AdamW(net.parameters()), steps=2
    )
    assert len(messages) == 1
    assert "'1.posterior.weight.rho_unconstrained' (and 3 more)" in messages[0]


class _Clamp(nn.Module):
    def forward(self, rho: torch.Tensor) -> torch.Tensor:
        return rho.clamp(max=3.0)


def test_decay_on_a_reparametrised_scale_is_named() -> None:
    """A rho clamped with torch.nn.utils.parametrize is the parameter
    '...parametrizations.rho_unconstrained.original': AdamW's decay tripled
    the posterior's standard deviations without a warning."""
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    for layer in (net[0], net[2]):
        parametrize.register_parametrization(
            layer.posterior["weight"], "rho_unconstrained", _Clamp()
        )
    (message,) = _train(
        net,
        loss_fn,
        lambda: torch.optim.AdamW(
            [
                {"params": net[0].posterior["weight"].parameters()},
                {"params": _all(net[0].posterior["bias"], net[2]), "weight_decay": 0},
            ]
        ),
    )
    assert message.startswith(
        "AdamW applies weight_decay=0.01 to "
        "'0.posterior.weight.parametrizations.rho_unconstrained.original', "
        "unconstrained parameters of scales"
    )


def _learned_priors() -> nn.Module:
    prior = bnn.LearnedNormalPrior
    return bnn.VISequential(
        bnn.VILinear(3, 4, prior=prior()), nn.ReLU(), bnn.VILinear(4, 1, prior=prior())
    )


def _low_rank_guide() -> nn.Module:
    net = _net()
    net.guide = AutoLowRankMultivariateNormal(
        net.prior_model, init_loc_fn=net.init_loc_fn, rank=2
    )
    return net


def _scale_names(net: nn.Module, loss_fn: nn.Module) -> set[str]:
    """The scales a case trains, told by what each case is made of.

    The parameters of the drawing guide (the layers' posteriors unless a
    guide is assigned) whose values are scales, the priors' log_scale, the
    likelihood's noise: named without the library's predicate.
    """
    assigned = any(n.startswith("custom_guide.") for n, _ in net.named_parameters())
    names = {
        n
        for n, _ in net.named_parameters()
        if n.endswith("log_scale")
        or (n.endswith("rho_unconstrained") and not assigned)
        or n.startswith("custom_guide.inner.scales.")  # AutoNormal
        or n == "custom_guide.inner.scale_unconstrained"  # AutoLowRank
    }
    return names | {f"loss:{n}" for n, _ in loss_fn.named_parameters()}


@pytest.mark.parametrize(
    ("make", "likelihood"),
    [
        (_net, lambda: bnn.Normal(scale=0.1)),
        (_net, bnn.Normal),  # a learned noise scale
        (_with_autoguide, bnn.Normal),
        (_low_rank_guide, bnn.Normal),
        (_learned_priors, bnn.StudentT),
    ],
    ids=["default", "learned-noise", "AutoNormal", "AutoLowRank", "learned-priors"],
)
def test_following_the_warnings_advice_silences_it(
    make: Callable[[], nn.Module], likelihood: Callable[[], bnn.PredictiveDistribution]
) -> None:
    """The advice, copied from the message and run as it stands, decays no
    scale: the recipe it gave before (groups by the last part of the name)
    missed an autoguide's scales and the loss's noise, and the warning came
    again."""
    net, loss_fn = make(), bnn.KullbackLeiblerLoss(likelihood(), 100)
    (message,) = _train(
        net, loss_fn, lambda: torch.optim.AdamW(_all(net, loss_fn), weight_decay=0.05)
    )
    advice = re.search(r"(\w+)\((bnn\.decay_groups\([^)]*\))", message)
    assert advice is not None, message
    assert advice[1] == "AdamW"
    groups = eval(advice[2], {"bnn": bnn, "model": net, "loss_fn": loss_fn})
    optimizer = torch.optim.AdamW(groups)
    assert _train(net, loss_fn, lambda: optimizer) == []

    named = {id(p): n for n, p in net.named_parameters()}
    named.update((id(p), f"loss:{n}") for n, p in loss_fn.named_parameters())
    undecayed = {
        named[id(p)]
        for group in optimizer.param_groups
        if group["weight_decay"] == 0
        for p in group["params"]
    }
    assert _scale_names(net, loss_fn) <= undecayed
    decayed = {named[id(p)] for p in optimizer.param_groups[0]["params"]}
    assert optimizer.param_groups[0]["weight_decay"] == 0.05
    assert any("loc" in name for name in decayed)  # the means keep their decay


def _vi_student_t_net() -> nn.Module:
    family = vi.distributions.MeanFieldStudentT()
    return vi.VISequential(
        vi.VILinear(3, 4, variational_distribution=family),
        nn.ReLU(),
        vi.VILinear(4, 1, variational_distribution=family),
    )


def test_decay_on_a_vi_student_t_posteriors_log_scale_is_named() -> None:
    """vi.distributions.MeanFieldStudentT's scales ('_weight_log_scale') were
    no scales by their name: AdamW widened the posterior 13 % in 300 steps
    without a warning, and decay_groups decayed them too."""
    net = _vi_student_t_net()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.3), 100)
    (message,) = _train(
        net, loss_fn, lambda: torch.optim.AdamW(net.parameters(), weight_decay=0.1)
    )
    assert "'0._weight_log_scale', '0._bias_log_scale', '2._weight_log_scale'" in (
        message
    )
    groups = bnn.decay_groups(net, loss_fn, weight_decay=0.1)
    assert _train(net, loss_fn, lambda: torch.optim.AdamW(groups)) == []


def test_an_autoguides_scales_are_named_in_a_network_saved_whole() -> None:
    """Saved whole (torch.save) before the guide's scales were read from its
    modules, and loaded: the warning the code before gave was gone."""
    net = _net()
    net.guide = AutoNormal(net.prior_model, init_loc_fn=net.init_loc_fn)
    loaded = pickle.loads(pickle.dumps(net))
    for module in loaded.modules():  # as such a pickle holds it
        vars(module).pop("_positive_names", None)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    (message,) = _train(loaded, loss_fn, lambda: torch.optim.AdamW(loaded.parameters()))
    assert "'custom_guide.inner.scales.0.weight_unconstrained'" in message


def _svi_messages(
    net: nn.Module, loss_fn: bnn.KullbackLeiblerLoss, optim: pyro.optim.PyroOptim
) -> list[str]:
    """Messages of the decay warnings of three SVI steps."""
    svi = SVI(loss_fn.pyro_model(net), net.guide, optim, bnn.Trace_ELBO())
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            svi.step(x, y)
    return [str(w.message) for w in caught if "weight_decay" in str(w.message)]


@pytest.mark.parametrize("likelihood", [bnn.Normal, bnn.StudentT])
def test_following_the_advice_for_pyro_optim_silences_it(
    likelihood: Callable[[], bnn.PredictiveDistribution],
) -> None:
    """With SVI the advice was Adam(bnn.decay_groups(...), ...), which
    pyro.optim refuses (it takes per-parameter arguments, not groups). The
    advice now given, copied from the message and run as it stands, decays
    no scale, the means at the decay and learning rate they had."""
    net = _learned_priors()
    loss_fn = bnn.KullbackLeiblerLoss(likelihood(), 16)
    (message,) = _svi_messages(
        net, loss_fn, pyro.optim.Adam({"lr": 1e-3, "weight_decay": 1e-2})
    )
    advice = re.search(r"pyro\.optim\.\w+\(bnn\.decay_optim_args\([^)]*\)\)", message)
    assert advice is not None, message
    optim = eval(
        advice[0], {"pyro": pyro, "bnn": bnn, "model": net, "loss_fn": loss_fn}
    )
    assert optim.pt_optim_constructor is torch.optim.Adam
    assert _svi_messages(net, loss_fn, optim) == []

    named = {id(p): n for n, p in net.named_parameters()}
    named.update((id(p), f"loss:{n}") for n, p in loss_fn.named_parameters())
    groups = {named[id(p)]: o.param_groups[0] for p, o in optim.optim_objs.items()}
    assert {n for n, g in groups.items() if g["weight_decay"] == 0} == _scale_names(
        net, loss_fn
    )
    assert all(
        g["weight_decay"] == 1e-2 and g["lr"] == 1e-3
        for n, g in groups.items()
        if "loc" in n
    )


def test_the_advice_for_torch_optimizers_under_a_pyro_elbo_is_decay_groups() -> None:
    """A torch optimizer stepping Pyro's ELBO (differentiable_loss) holds
    every parameter: it takes groups."""
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(), 16)
    optimizer = torch.optim.AdamW(_all(net, loss_fn))
    model, elbo = loss_fn.pyro_model(net), bnn.Trace_ELBO()
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            optimizer.zero_grad()
            elbo.differentiable_loss(model, net.guide, x, y).backward()
            optimizer.step()
    (message,) = [str(w.message) for w in caught if "weight_decay" in str(w.message)]
    assert "AdamW(bnn.decay_groups(model, loss_fn, weight_decay=0.01), ...)" in message


def _svi_warnings(
    net: nn.Module,
    loss_fn: bnn.KullbackLeiblerLoss,
    optim: pyro.optim.PyroOptim,
    elbo: pyro.infer.ELBO,
) -> list[warnings.WarningMessage]:
    """The decay warnings of three SVI steps with ``elbo``."""
    svi = SVI(loss_fn.pyro_model(net), net.guide, optim, elbo)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            svi.step(x, y, samples=2)
    return [w for w in caught if "weight_decay" in str(w.message)]


_ELBOS: list[Callable[[], pyro.infer.ELBO]] = [
    lambda: bnn.Trace_ELBO(num_particles=2),
    lambda: bnn.TraceMeanField_ELBO(num_particles=2),
    pyro.infer.Trace_ELBO,
    pyro.infer.TraceMeanField_ELBO,
]


@pytest.mark.parametrize("make_net", [_net, _with_autoguide, _low_rank_guide])
@pytest.mark.parametrize(
    "elbo", _ELBOS, ids=["bnn2", "bnn_meanfield2", "pyro", "pyro_meanfield"]
)
def test_every_svi_path_warns_of_decayed_scales(
    make_net: Callable[[], nn.Module], elbo: Callable[[], pyro.infer.ELBO]
) -> None:
    """pyro.optim.AdamW (weight_decay=0.01 by default) decayed every scale
    under SVI, but only bnn.Trace_ELBO's fast path (one particle, the
    generated guide) warned: with more particles, with Pyro's own ELBOs and
    with an assigned autoguide nothing was said (probe falsepos23b)."""
    net, loss_fn = make_net(), bnn.KullbackLeiblerLoss(bnn.Normal(), 16)
    found = _svi_warnings(net, loss_fn, pyro.optim.AdamW({"lr": 1e-2}), elbo())
    (warning,) = found
    message = str(warning.message)
    assert message.startswith("AdamW applies weight_decay=0.01 to ")
    assert "pyro.optim.AdamW(bnn.decay_optim_args(model, loss_fn" in message
    named = re.findall(r"'([^']+)'", message.split(", unconstrained")[0])
    scales = {name.removeprefix("loss:") for name in _scale_names(net, loss_fn)}
    assert named
    assert set(named) <= scales
    assert warning.filename == __file__  # the line of svi.step, not Pyro's


def test_clipped_adams_decay_under_pyros_elbo_is_named() -> None:
    net, loss_fn = _with_autoguide(), bnn.KullbackLeiblerLoss(bnn.Normal(), 16)
    optim = pyro.optim.ClippedAdam({"lr": 1e-2, "weight_decay": 0.1})
    (warning,) = _svi_warnings(net, loss_fn, optim, pyro.infer.Trace_ELBO())
    assert str(warning.message).startswith("ClippedAdam applies weight_decay=0.1 to")


@pytest.mark.parametrize("make_net", [_net, _with_autoguide])
@pytest.mark.parametrize("decay", ["optim_args", "zero"])
def test_svi_without_decay_on_scales_gives_no_warning(
    make_net: Callable[[], nn.Module], decay: str
) -> None:
    net, loss_fn = make_net(), bnn.KullbackLeiblerLoss(bnn.Normal(), 16)
    optim = pyro.optim.AdamW(
        bnn.decay_optim_args(net, loss_fn, weight_decay=0.1, lr=1e-2)
        if decay == "optim_args"
        else {"lr": 1e-2, "weight_decay": 0.0}
    )
    assert _svi_warnings(net, loss_fn, optim, pyro.infer.Trace_ELBO()) == []


def test_a_pyro_elbo_in_a_torch_loop_names_the_assigned_guides_scales_only() -> None:
    """The layers' own posteriors are unused while an autoguide is assigned:
    no gradient, so torch's optimizers do not decay them either."""
    net, loss_fn = _with_autoguide(), bnn.KullbackLeiblerLoss(bnn.Normal(), 16)
    optimizer = torch.optim.AdamW(_all(net, loss_fn))
    model, elbo = loss_fn.pyro_model(net), pyro.infer.Trace_ELBO()
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            optimizer.zero_grad()
            elbo.differentiable_loss(model, net.guide, x, y, samples=2).backward()
            optimizer.step()
    (message,) = [str(w.message) for w in caught if "weight_decay" in str(w.message)]
    # AutoNormal's four scales and the noise's, not the layers' four rho.
    assert "'custom_guide.inner.scales." in message
    assert "rho_unconstrained" not in message
    assert "(and 2 more)" in message


@pytest.mark.parametrize(
    "decay",
    [
        lambda: np.float32(0.1),
        lambda: torch.tensor(0.1),
        lambda: torch.tensor(0.1, requires_grad=True),
    ],
    ids=["numpy", "tensor", "tensor_requiring_grad"],
)
def test_a_decay_given_as_any_real_number_is_named(
    decay: Callable[[], object],
) -> None:
    """torch applies a NumPy number's or a tensor's decay (a sweep's grid
    value): the warning took only int and float."""
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    messages = _train(
        net,
        loss_fn,
        lambda: torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=decay()),
    )
    (message,) = messages
    assert message.startswith("AdamW applies weight_decay=0.1 to")
    assert "weight_decay=0.1, lr=0.01), ...)" not in message  # groups: no lr
    assert "AdamW(bnn.decay_groups(model, loss_fn, weight_decay=0.1), ...)" in message


def test_a_tensor_decay_switched_on_in_place_is_noticed() -> None:
    """A schedule that writes into a tensor weight_decay: the group's decay
    is its value now."""
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    decay = torch.tensor(0.0)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=decay)
    assert _train(net, loss_fn, lambda: optimizer) == []
    decay.fill_(0.1)
    (message,) = _train(net, loss_fn, lambda: optimizer)
    assert message.startswith("AdamW applies weight_decay=0.1 to")


def test_the_advice_for_pyro_optim_keeps_a_tensor_learning_rate() -> None:
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(), 16)
    optim = pyro.optim.AdamW({"lr": torch.tensor(0.01), "weight_decay": 0.1})
    (warning,) = _svi_warnings(net, loss_fn, optim, bnn.Trace_ELBO())
    assert "weight_decay=0.1, lr=0.01))" in str(warning.message)


def _scheduled_svi_messages(
    net: nn.Module,
    loss_fn: bnn.KullbackLeiblerLoss,
    scheduler: pyro.optim.PyroLRScheduler,
) -> list[str]:
    """Decay warnings of three SVI steps, each followed by a scheduler step
    (given the loss where the scheduler reads one: ReduceLROnPlateau)."""
    svi = SVI(loss_fn.pyro_model(net), net.guide, scheduler, bnn.Trace_ELBO())
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    plateau = (
        scheduler.pt_scheduler_constructor is torch.optim.lr_scheduler.ReduceLROnPlateau
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            loss = svi.step(x, y)
            scheduler.step(loss) if plateau else scheduler.step()
    return [str(w.message) for w in caught if "weight_decay" in str(w.message)]


def test_the_advice_under_a_pyro_scheduler_keeps_it_and_its_first_rate() -> None:
    """Under pyro.optim.ExponentialLR the advice was pyro.optim.AdamW(
    bnn.decay_optim_args(..., lr=0.009)): no scheduler, and the rate it had
    scheduled for the first step taken as the one to start from (probe
    falsepos24a). Now: decay_optim_args as the scheduler's "optim_args" with
    the rate it started from; run as it stands (the scheduler's own entries
    filled in) it decays no scale."""
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(), 16)
    scheduler = pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.AdamW, "optim_args": {"lr": 1e-2}, "gamma": 0.9}
    )
    (message,) = _scheduled_svi_messages(net, loss_fn, scheduler)
    advice = re.search(
        r'\{"optimizer": torch\.optim\.AdamW, "optim_args": '
        r"bnn\.decay_optim_args\(model, loss_fn, weight_decay=0\.01, lr=0\.01\), "
        r"\.\.\.\}",
        message,
    )
    assert advice is not None, message
    assert "pyro.optim.AdamW(" not in message
    arguments = eval(
        advice[0].replace("...", '"gamma": 0.9'),
        {"torch": torch, "bnn": bnn, "model": net, "loss_fn": loss_fn},
    )
    followed = pyro.optim.ExponentialLR(arguments)
    assert _scheduled_svi_messages(net, loss_fn, followed) == []
    scales = {id(p) for m in (net, loss_fn) for p in scale_parameters(m).values()}
    for parameter, scheduled in followed.optim_objs.items():
        group = scheduled.optimizer.param_groups[0]
        assert group["initial_lr"] == 1e-2
        assert group["weight_decay"] == (0.0 if id(parameter) in scales else 0.01)


def test_the_advice_under_reduce_lr_on_plateau_names_the_schedulers_place() -> None:
    """ReduceLROnPlateau records no starting rate on the optimizer: the
    advice was pyro.optim.AdamW(bnn.decay_optim_args(...)) alone, which
    drops the scheduler (probe falsepos26a). It names the scheduler's
    "optim_args" too; followed there, no scale decays and nothing warns."""
    net, loss_fn = _net(), bnn.KullbackLeiblerLoss(bnn.Normal(), 16)
    scheduler = pyro.optim.ReduceLROnPlateau(
        {"optimizer": torch.optim.AdamW, "optim_args": {"lr": 1e-2}}
    )
    (message,) = _scheduled_svi_messages(net, loss_fn, scheduler)
    assert "bnn.decay_optim_args(model, loss_fn, weight_decay=0.01, lr=0.01)" in message
    assert (
        "under a pyro.optim scheduler that records no starting rate "
        '(ReduceLROnPlateau), the same call as the scheduler\'s "optim_args"'
    ) in " ".join(message.split())
    followed = pyro.optim.ReduceLROnPlateau(
        {
            "optimizer": torch.optim.AdamW,
            "optim_args": bnn.decay_optim_args(
                net, loss_fn, weight_decay=0.01, lr=0.01
            ),
        }
    )
    assert _scheduled_svi_messages(net, loss_fn, followed) == []
    scales = {id(p) for m in (net, loss_fn) for p in scale_parameters(m).values()}
    for parameter, scheduled in followed.optim_objs.items():
        group = scheduled.optimizer.param_groups[0]
        assert group["weight_decay"] == (0.0 if id(parameter) in scales else 0.01)


def test_a_pyro_model_of_ones_own_has_no_loss_to_warn_as_the_howto_says() -> None:
    """docs/howto.rst said the loss warns "under Pyro's SVI alike", but a Pyro
    model of one's own around the network runs no loss: AdamW decays every
    rho without a word (probe falsepos24a). The howto says so now, and
    decay_optim_args(net, ...) keeps the decay off the network's scales."""
    x, y = torch.randn(32, 3), torch.randn(32)
    net = _net()

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        out = net(x, samples=4).squeeze(-1)
        with bnn.per_particle(out), pyro.plate("data", len(x)):
            pyro.sample("obs", pyro.distributions.Normal(out, 0.3), obs=y)

    def guide(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        net.guide(samples=4)

    for arguments in [{"lr": 1e-2}, bnn.decay_optim_args(net, weight_decay=0.01)]:
        optim = pyro.optim.AdamW(arguments)
        svi = SVI(model, guide, optim, pyro.infer.Trace_ELBO())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                svi.step(x, y)
        assert not [w for w in caught if "weight_decay" in str(w.message)]
    scales = {id(p) for p in scale_parameters(net).values()}
    decays = {
        id(p): o.param_groups[0]["weight_decay"] for p, o in optim.optim_objs.items()
    }
    assert {p: d for p, d in decays.items() if d == 0.0}.keys() == scales
    howto = (Path(__file__).parents[1] / "docs" / "howto.rst").read_text()
    paragraph = howto[howto.index("**Leave weight decay off.**") :].split("\n\n")[0]
    text = " ".join(paragraph.split())
    assert "under Pyro's ``SVI`` alike" not in text
    assert "``SVI`` with the loss's model, ``loss_fn.pyro_model(net)``" in text
    assert "Pyro model of your own around the network" in text
    assert "runs no loss, so nothing warns there" in text
