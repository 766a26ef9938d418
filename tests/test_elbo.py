"""``bnn.Trace_ELBO`` / ``bnn.TraceMeanField_ELBO``: Pyro's values, faster."""

from __future__ import annotations

from typing import Any

import pyro
import pytest
import torch
from pyro import poutine
from torch import Tensor, nn

import pyrolite_bnn as bnn
from pyrolite_bnn.elbo import Trace_ELBO, TraceMeanField_ELBO

PAIRS = [
    (Trace_ELBO, pyro.infer.Trace_ELBO),
    (TraceMeanField_ELBO, pyro.infer.TraceMeanField_ELBO),
]


def _net(estimator: str = "reparam") -> bnn.VISequential:
    return bnn.VISequential(
        bnn.VILinear(4, 6, estimator=estimator),
        nn.Tanh(),
        bnn.VILinear(6, 1, estimator=estimator),
    )


def _data() -> tuple[Tensor, Tensor]:
    x = torch.randn(12, 4, dtype=torch.float64)
    return x, x[:, 0] - x[:, 1]


def _run(
    elbo: Any, model: Any, guide: Any, *args: Any, **kwargs: Any
) -> tuple[float, list[str], set[Tensor], dict[int, Tensor]]:
    """One ``loss_and_grads`` from seed 5: value, param sites, params, gradients."""
    torch.manual_seed(5)
    with poutine.trace(param_only=True) as capture:
        value = elbo.loss_and_grads(model, guide, *args, **kwargs)
    sites = capture.trace.nodes.values()
    params = {site["value"].unconstrained() for site in sites}
    grads = {id(p): p.grad.clone() for p in params if p.grad is not None}
    for param in params:
        param.grad = None
    return value, sorted(capture.trace.nodes), params, grads


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_value_gradients_and_parameters_equal_pyros(
    ours: type, theirs: type, reduction: str
) -> None:
    torch.set_default_dtype(torch.float64)
    net = _net()
    # a learned noise scale: a parameter of the likelihood, not of the network
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 50, reduction=reduction)
    model = loss_fn.pyro_model(net)
    x, y = _data()
    fast = _run(ours(), model, net.guide, x, y, samples=3)
    slow = _run(theirs(), model, net.guide, x, y, samples=3)
    # the same draws (same seed, same order): equal up to rounding (float64)
    assert fast[0] == pytest.approx(slow[0], rel=1e-5)
    assert fast[1] == slow[1]  # the same param sites...
    assert fast[2] == slow[2]  # ...for the same parameters
    assert fast[2] == {*net.parameters(), *loss_fn.parameters()}
    for key, grad in slow[3].items():
        torch.testing.assert_close(fast[3][key], grad, rtol=1e-5, atol=1e-8)


def test_fast_path_does_not_trace_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _net()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 50)
    x, y = (t.float() for t in _data())

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the fast path traced the model")

    monkeypatch.setattr(pyro.infer.Trace_ELBO, "_get_traces", refuse)
    for elbo in (Trace_ELBO(), TraceMeanField_ELBO()):
        assert isinstance(elbo.loss(loss_fn.pyro_model(net), net.guide, x, y), float)


def test_svi_trains_with_the_fast_elbo() -> None:
    net = _net()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 12)
    x, y = (t.float() for t in _data())
    svi = pyro.infer.SVI(
        loss_fn.pyro_model(net),
        net.guide,
        pyro.optim.Adam({"lr": 0.05}),
        TraceMeanField_ELBO(),
    )
    before = {k: v.clone() for k, v in net.state_dict().items()}
    losses = [svi.step(x, y, samples=4) for _ in range(60)]
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    # 60 Adam steps on 12 points: the data term falls far more than the
    # Monte-Carlo noise of a 4-particle estimate (a few nats here)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 20


class _Spy(Trace_ELBO):
    """Records whether the parent class computed the loss."""

    parent_calls = 0

    def _get_traces(self, model: Any, guide: Any, args: Any, kwargs: Any) -> Any:
        type(self).parent_calls += 1
        return super()._get_traces(model, guide, args, kwargs)


def _autoguide_net() -> bnn.VISequential:
    net = _net()
    net.guide = pyro.infer.autoguide.AutoNormal(
        net.prior_model, init_loc_fn=net.init_loc_fn
    )
    return net


@pytest.mark.parametrize(
    "case",
    ["autoguide", "heat", "num_particles", "no target", "extra kwarg"],
)
def test_everything_else_falls_back_to_pyro(case: str) -> None:
    x, y = (t.float() for t in _data())
    net = _autoguide_net() if case == "autoguide" else _net()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 50)
    model, guide = loss_fn.pyro_model(net), net.guide
    if case == "heat":
        loss_fn.heat = 0.5
    kwargs: dict[str, Any] = {"samples": 2}
    args: tuple[Any, ...] = (x, y)
    elbo = _Spy(num_particles=2 if case == "num_particles" else 1)
    if case == "no target":
        args = (x,)
    _Spy.parent_calls = 0
    if case == "extra kwarg":
        with pytest.raises(TypeError, match="unexpected keyword"):
            elbo.loss(model, guide, *args, other=1, **kwargs)
    elif case == "no target":  # Pyro's own check of the traces
        with pytest.warns(UserWarning, match="in model but not guide"):
            elbo.loss(model, guide, *args, **kwargs)
    else:
        elbo.loss(model, guide, *args, **kwargs)
    assert _Spy.parent_calls >= 1


def test_are_pyros_classes() -> None:
    assert issubclass(bnn.Trace_ELBO, pyro.infer.Trace_ELBO)
    assert issubclass(bnn.TraceMeanField_ELBO, pyro.infer.TraceMeanField_ELBO)


def test_pyro_model_exposes_its_network_and_loss() -> None:
    net = _net()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 50)
    pyro_model = loss_fn.pyro_model(net)
    assert pyro_model.network is net
    assert pyro_model.loss_fn is loss_fn
