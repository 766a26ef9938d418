"""Guides: generated, Pyro autoguides, hand-written; SVI, Predictive and NUTS."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import (
    AutoDelta,
    AutoLowRankMultivariateNormal,
    AutoNormal,
)
from torch import nn

import pyrolite_bnn as bnn


def _problem(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()
    return x, y


def _net() -> bnn.VISequential:
    return bnn.VISequential(bnn.VILinear(2, 16), nn.Tanh(), bnn.VILinear(16, 2))


def _train_pytorch_loop(net: bnn.VIModule, steps: int = 150) -> list[float]:
    x, y = _problem()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), len(x))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    losses = []
    for _ in range(steps):
        loss = loss_fn(net(x, samples=4), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss_fn.last_nll))  # data term: comparable across guides
    return losses


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_default_guide_trains() -> None:
    losses = _train_pytorch_loop(_net())
    assert _mean(losses[-20:]) < 0.8 * _mean(losses[:20])


@pytest.mark.parametrize(
    "make_guide",
    [
        lambda net: AutoNormal(
            net.prior_model, init_loc_fn=net.init_loc_fn, init_scale=1e-3
        ),
        lambda net: AutoLowRankMultivariateNormal(
            net.prior_model, init_loc_fn=net.init_loc_fn, rank=3, init_scale=1e-2
        ),
        lambda net: AutoDelta(net.prior_model, init_loc_fn=net.init_loc_fn),
    ],
    ids=["AutoNormal", "AutoLowRankMultivariateNormal", "AutoDelta"],
)
def test_autoguide_swap_trains_in_pytorch_loop(make_guide) -> None:  # type: ignore[no-untyped-def]
    net = _net()
    net.guide = make_guide(net)
    inner = net.guide.inner
    # Parameters exist before the first forward, so the optimizer sees them.
    guide_params = {id(p) for p in inner.parameters()}
    assert guide_params
    assert guide_params <= {id(p) for p in net.parameters()}
    losses = _train_pytorch_loop(net)
    assert _mean(losses[-20:]) < 0.8 * _mean(losses[:20])
    # Autoguide parameters have one entry per weight, not per particle.
    median = net.guide.median()
    assert median["0.weight"].shape == (16, 2)


def test_assigning_an_autoguide_leaves_the_global_param_store_empty() -> None:
    net = _net()
    net.guide = AutoNormal(net.prior_model, init_loc_fn=net.init_loc_fn)
    net(torch.randn(3, 2)).sum().backward()
    assert list(pyro.get_param_store().keys()) == []


def test_autoguide_loss_equals_trace_elbo() -> None:
    net = _net()
    net.guide = AutoLowRankMultivariateNormal(
        net.prior_model, init_loc_fn=net.init_loc_fn, rank=2
    )
    x, y = _problem(16)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 100, kl="mc")
    pyro.set_rng_seed(7)
    ours = loss_fn(net(x), y)
    pyro.set_rng_seed(7)
    theirs = (
        Trace_ELBO().differentiable_loss(loss_fn.pyro_model(net), net.guide, x, y) / 100
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_analytic_kl_refuses_autoguide_instead_of_silent_mc() -> None:
    net = _net()
    net.guide = AutoNormal(net.prior_model, init_loc_fn=net.init_loc_fn)
    x, y = _problem(8)
    with pytest.raises(ValueError, match=r"kl='analytic' but site '0\.weight'"):
        bnn.KullbackLeiblerLoss(bnn.Categorical(), 100, kl="analytic")(net(x), y)


def test_hand_written_guide() -> None:
    net = bnn.VILinear(2, 1)
    loc_w = nn.Parameter(torch.zeros(1, 2))
    loc_b = nn.Parameter(torch.zeros(1))

    def guide() -> None:
        pyro.sample("weight", dist.Normal(loc_w, 0.1).to_event(2))
        pyro.sample("bias", dist.Normal(loc_b, 0.1).to_event(1))

    net.guide = guide
    out = net(torch.randn(5, 2), samples=3)
    assert out.shape == (3, 5, 1)
    trace = pyro.poutine.trace(net.guide).get_trace(samples=3)
    assert trace.nodes["weight"]["value"].shape == (3, 1, 1, 2)
    net.guide = None
    assert net.guide.inner is None


def test_autoguide_built_on_full_model_gives_clear_error() -> None:
    net = _net()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 100)
    with pytest.raises(
        TypeError, match=r"build autoguides on the network's weight model"
    ):
        net.guide = AutoNormal(loss_fn.pyro_model(net))
    assert net.guide.inner is None  # nothing half-updated
    assert "custom_guide" not in dict(net.named_children())


def test_svi_on_pyro_model_and_guide() -> None:
    net = _net()
    x, y = _problem()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), len(x))
    svi = SVI(
        loss_fn.pyro_model(net), net.guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO()
    )
    losses = [svi.step(x, y, samples=4) for _ in range(150)]
    assert _mean(losses[-20:]) < 0.8 * _mean(losses[:20])
    # module-local parameters: nothing in Pyro's global parameter store
    assert list(pyro.get_param_store().keys()) == []


def test_two_models_never_share_parameters() -> None:
    a, b = _net(), _net()
    x, y = _problem(16)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 100)
    before = [p.detach().clone() for p in b.parameters()]
    svi = SVI(
        loss_fn.pyro_model(a), a.guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO()
    )
    for _ in range(3):
        svi.step(x, y)
    for p, q in zip(b.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)


def test_predictive_runs() -> None:
    net = _net()
    x, _ = _problem(8)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 100)
    samples = Predictive(loss_fn.pyro_model(net), guide=net.guide, num_samples=3)(x)
    assert samples["obs"].shape == (3, 10, 8)
    assert samples["0.weight"].shape == (3, 10, 1, 16, 2)


def test_nuts_on_tiny_network() -> None:
    net = bnn.VILinear(2, 2)
    x, y = _problem(20)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), len(x))
    mcmc = MCMC(
        NUTS(loss_fn.pyro_model(net)),
        num_samples=20,
        warmup_steps=20,
        disable_progbar=True,
    )
    mcmc.run(x, y, samples=1)
    draws = mcmc.get_samples()
    assert draws["weight"].shape == (20, 1, 1, 2, 2)
    assert bool(torch.isfinite(draws["weight"]).all())
    assert float(draws["weight"].std(0).mean()) > 0  # the chain moves
