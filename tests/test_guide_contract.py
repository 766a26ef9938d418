"""Contract: every Pyro guide trains a network under every Pyro ELBO.

A registry of guide factories (the generated guide and every autoguide of
``pyro.infer.autoguide`` that applies to continuous weights) crossed with a
registry of ELBOs. Each case checks what a user of plain Pyro relies on:
``SVI`` steps give finite losses and move the guide's parameters,
``Predictive`` returns draws of the right shapes, and the PyTorch-style loop
(``loss_fn(model(x), y)``) trains the same guide.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import (
    SVI,
    Predictive,
    RenyiELBO,
    Trace_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoGaussian,
    AutoGuideList,
    AutoHierarchicalNormalMessenger,
    AutoIAFNormal,
    AutoLaplaceApproximation,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalMessenger,
    AutoRegressiveMessenger,
    AutoStructured,
)
from torch import nn

import pyrolite_bnn as bnn

GuideFactory = Callable[[bnn.VIModule], Any]

BATCH = 12
SAMPLES = 3
STEPS = 3


def _net() -> bnn.VISequential:
    return bnn.VISequential(bnn.VILinear(2, 3), nn.Tanh(), bnn.VILinear(3, 2))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(BATCH, 2)
    return x, (x[:, 0] * x[:, 1] > 0).long()


def _guide_list(net: bnn.VIModule) -> AutoGuideList:
    first = ["0.weight", "0.bias"]
    guide = AutoGuideList(net.prior_model)
    guide.append(
        AutoDiagonalNormal(
            poutine.block(net.prior_model, expose=first), init_loc_fn=net.init_loc_fn
        )
    )
    guide.append(
        AutoDelta(
            poutine.block(net.prior_model, hide=first), init_loc_fn=net.init_loc_fn
        )
    )
    return guide


GUIDES: dict[str, GuideFactory | None] = {
    "default": None,
    "AutoNormal": lambda net: AutoNormal(
        net.prior_model, init_loc_fn=net.init_loc_fn, init_scale=0.05
    ),
    "AutoDiagonalNormal": lambda net: AutoDiagonalNormal(
        net.prior_model, init_loc_fn=net.init_loc_fn, init_scale=0.05
    ),
    "AutoMultivariateNormal": lambda net: AutoMultivariateNormal(
        net.prior_model, init_loc_fn=net.init_loc_fn, init_scale=0.05
    ),
    "AutoLowRankMultivariateNormal": lambda net: AutoLowRankMultivariateNormal(
        net.prior_model, init_loc_fn=net.init_loc_fn, init_scale=0.05, rank=2
    ),
    # Hidden sizes must be >= the 17 weights; Pyro ignores init_loc_fn here.
    "AutoIAFNormal": lambda net: AutoIAFNormal(net.prior_model, hidden_dim=[20]),
    "AutoDelta": lambda net: AutoDelta(net.prior_model, init_loc_fn=net.init_loc_fn),
    "AutoLaplaceApproximation": lambda net: AutoLaplaceApproximation(
        net.prior_model, init_loc_fn=net.init_loc_fn
    ),
    "AutoStructured": lambda net: AutoStructured(
        net.prior_model,
        conditionals={
            "0.weight": "mvn",
            "0.bias": "normal",
            "2.weight": "normal",
            "2.bias": "delta",
        },
        dependencies={"2.weight": {"0.weight": "linear"}},
        init_loc_fn=net.init_loc_fn,
    ),
    "AutoGaussian": lambda net: AutoGaussian(
        net.prior_model, init_loc_fn=net.init_loc_fn
    ),
    "AutoGuideList": _guide_list,
    "AutoNormalMessenger": lambda net: AutoNormalMessenger(
        net.prior_model, init_loc_fn=net.init_loc_fn
    ),
    "AutoHierarchicalNormalMessenger": lambda net: AutoHierarchicalNormalMessenger(
        net.prior_model, init_loc_fn=net.init_loc_fn
    ),
    "AutoRegressiveMessenger": lambda net: AutoRegressiveMessenger(
        net.prior_model, init_loc_fn=net.init_loc_fn
    ),
}

ELBOS: dict[str, Callable[[], Any]] = {
    "Trace_ELBO": Trace_ELBO,
    "TraceMeanField_ELBO": TraceMeanField_ELBO,
    "TraceGraph_ELBO": TraceGraph_ELBO,
    "RenyiELBO": lambda: RenyiELBO(alpha=0.5, num_particles=2),
    "bnn.RenyiELBO": lambda: bnn.RenyiELBO(alpha=0.5, num_particles=2),
}


def _guided_net(name: str) -> bnn.VISequential:
    net = _net()
    factory = GUIDES[name]
    if factory is not None:
        warns: AbstractContextManager[Any] = nullcontext()
        if name == "AutoGaussian":  # built on prior_model: no dependencies
            warns = pytest.warns(UserWarning, match="AutoGaussian takes its")
        with warns:
            net.guide = factory(net)
    return net


def _guide_parameters(net: bnn.VIModule) -> list[torch.Tensor]:
    inner = net.guide.inner
    if inner is not None:
        return list(inner.parameters())
    return [p for v in net.random_variables() for p in v.posterior.parameters()]


def _assert_trained(net: bnn.VIModule, before: list[torch.Tensor]) -> None:
    after = [p.detach() for p in _guide_parameters(net)]
    assert after, "the guide has no parameters"
    assert all(bool(torch.isfinite(p).all()) for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def _snapshot(net: bnn.VIModule) -> list[torch.Tensor]:
    return [p.detach().clone() for p in _guide_parameters(net)]


@pytest.mark.parametrize("elbo", ELBOS)
@pytest.mark.parametrize("guide", GUIDES)
def test_svi_trains(guide: str, elbo: str) -> None:
    net = _guided_net(guide)
    x, y = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 100)
    before = _snapshot(net)
    svi = SVI(
        loss_fn.pyro_model(net), net.guide, pyro.optim.Adam({"lr": 0.05}), ELBOS[elbo]()
    )
    warns: AbstractContextManager[Any] = nullcontext()
    if guide == "AutoStructured" and elbo == "TraceMeanField_ELBO":
        # Right: with dependencies between sites the guide is not mean-field.
        warns = pytest.warns(UserWarning, match="mean field restriction")
    with warns:
        losses = [svi.step(x, y, samples=SAMPLES) for _ in range(STEPS)]
    assert all(math.isfinite(loss) for loss in losses)
    _assert_trained(net, before)


@pytest.mark.parametrize("guide", GUIDES)
def test_predictive_shapes(guide: str) -> None:
    net = _guided_net(guide)
    x, _ = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 100)
    draws = Predictive(loss_fn.pyro_model(net), guide=net.guide, num_samples=2)(
        x, samples=SAMPLES
    )
    assert draws["obs"].shape == (2, SAMPLES, BATCH)
    for variable in net.random_variables():
        assert draws[variable.site].shape == (2, SAMPLES, 1, *variable.shape)
        assert bool(torch.isfinite(draws[variable.site]).all())


@pytest.mark.parametrize("guide", GUIDES)
def test_pytorch_loop_trains(guide: str) -> None:
    net = _guided_net(guide)
    x, y = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 100)
    # Built before the first call: the guide's parameters must already exist.
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    before = _snapshot(net)
    for _ in range(STEPS):
        loss = loss_fn(net(x, samples=SAMPLES), y)
        assert bool(torch.isfinite(loss))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _assert_trained(net, before)


@pytest.mark.parametrize("guide", ["default", "AutoDiagonalNormal"])
def test_svi_loss_decreases(guide: str) -> None:
    net = _guided_net(guide)
    x, y = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), len(x))
    svi = SVI(
        loss_fn.pyro_model(net), net.guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO()
    )
    losses = [svi.step(x, y, samples=4) for _ in range(60)]
    # Seeded. Single-step losses scatter with a standard deviation of at most 5
    # nats here, so a mean over 10 steps has a Monte-Carlo standard error of
    # about 1.5 nats; over seeds 0-3 the means drop by 32-44 nats, and the 20 %
    # threshold leaves a margin of more than 10 standard errors.
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])


# Guides whose posterior has no median in Pyro (a flow; a messenger without it).
NO_MEDIAN = {"AutoIAFNormal", "AutoRegressiveMessenger"}


@pytest.mark.parametrize("guide", GUIDES)
def test_median_has_the_weight_shapes_or_says_why_not(guide: str) -> None:
    """``median()`` (``predict(mode="mean")``, ``to_deterministic``) or a clear no."""
    net = _guided_net(guide)
    x, _ = _data()
    if guide in NO_MEDIAN:
        name = type(net.guide.inner).__name__
        with pytest.raises(
            NotImplementedError, match=rf"guide {name} has no .*mode='sample'"
        ):
            bnn.predict(net, x, bnn.Categorical(), mode="mean")
        return
    median = net.guide.median()
    assert {site: value.shape for site, value in median.items()} == {
        v.site: v.shape for v in net.random_variables()
    }
    probs = bnn.predict(net, x, bnn.Categorical(), mode="mean").probs
    assert probs.shape == (BATCH, 2)
    assert bool(torch.isfinite(probs).all())


# Guides without posterior quantiles (Pyro's raise, or have no such method).
NO_QUANTILES = {
    "AutoIAFNormal",
    "AutoStructured",
    "AutoGaussian",
    "AutoNormalMessenger",
    "AutoHierarchicalNormalMessenger",
    "AutoRegressiveMessenger",
}
# Guides whose posterior is a point mass: the value at every quantile.
POINT_MASSES = {"AutoDelta", "AutoLaplaceApproximation"}


@pytest.mark.parametrize("guide", GUIDES)
def test_quantiles_have_the_weight_shapes_or_say_why_not(guide: str) -> None:
    """``quantiles()`` gives a value per quantile of every weight, or names
    the guide. A point-mass posterior gives its value (its median) at every
    quantile: ``AutoLaplaceApproximation``, whose ``median()`` did, raised
    Pyro's ``NotImplementedError`` with an empty message, as did
    ``AutoIAFNormal``."""
    net = _guided_net(guide)
    qs = [0.25, 0.75]
    if guide in NO_QUANTILES:
        name = type(net.guide.inner).__name__
        with pytest.raises(
            NotImplementedError, match=rf"guide {name} has no .*mode='sample'"
        ):
            net.guide.quantiles(qs)
        return
    result = net.guide.quantiles(qs)
    assert {site: value.shape for site, value in result.items()} == {
        v.site: (len(qs), *v.shape) for v in net.random_variables()
    }
    if guide in POINT_MASSES:
        for site, median in net.guide.median().items():
            torch.testing.assert_close(
                result[site], median.expand_as(result[site]), rtol=0, atol=0
            )


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_renyi_elbo_with_one_particle_is_the_renyi_bound(alpha: float) -> None:
    """With ``samples=1`` Pyro's ``RenyiELBO`` over ``K`` guide runs is the
    Rényi bound ``-1/(1-alpha) log mean_k exp((1-alpha) w_k)`` of the whole
    network's log weights. (With more particles it is not: the particle plate
    holds every site, and Pyro takes each particle for an independent copy of
    the model, scaled by ``1/S``: docs/howto.rst says to use ``samples=1``.)"""
    from pyro import poutine

    net = _net()
    x, y = _data()
    model = bnn.KullbackLeiblerLoss(bnn.Categorical(), BATCH).pyro_model(net)
    runs = 4
    pyro.set_rng_seed(0)
    log_weights = []
    for _ in range(runs):
        guide_trace = poutine.trace(net.guide).get_trace(x, y, samples=1)
        replayed = poutine.replay(model, trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(x, y, samples=1)
        log_weights.append(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
    weights = (1 - alpha) * torch.stack(log_weights)
    bound = -(torch.logsumexp(weights, 0) - math.log(runs)) / (1 - alpha)
    pyro.set_rng_seed(0)
    value = RenyiELBO(alpha=alpha, num_particles=runs).loss(
        model, net.guide, x, y, samples=1
    )
    assert value == pytest.approx(float(bound.detach()), rel=1e-5)
