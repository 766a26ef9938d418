"""A derivative of a network output by its input finds the call it differentiates.

A physics-informed loss observes ``slopes = torch.autograd.grad(out, x, ...,
create_graph=True)``: its graph reaches the call's weight moments and draws,
not the output's node. The loss refused it with "nor computed from one with
gradients enabled", though it was; ``loss_fn(slopes + 0 * out, dy)`` was
accepted and right.
"""

from __future__ import annotations

import gc

import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from torch import Tensor, nn

import pyrolite_bnn as bnn
from pyrolite_bnn._differentiated_calls import calls_reached
from pyrolite_bnn.record import find_record

S, N = 4, 12


def _net(estimator: str = "auto") -> bnn.VISequential:
    return bnn.VISequential(
        bnn.VILinear(1, 8, estimator=estimator),
        nn.Tanh(),
        bnn.VILinear(8, 1, estimator=estimator),
    )


def _inputs() -> Tensor:
    return torch.linspace(-1, 1, N).unsqueeze(-1).requires_grad_()


def _slopes(out: Tensor, x: Tensor) -> Tensor:
    """``d out[s, b] / d x[b]`` for every particle ``s``, ``(S, B, 1)``."""
    samples = out.shape[0]
    each = torch.eye(samples).view(samples, samples, 1, 1).expand(-1, -1, N, 1)
    (slopes,) = torch.autograd.grad(
        out, x, each, create_graph=True, is_grads_batched=True
    )
    return slopes


def _closed_form_kl(net: nn.Module) -> Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for layer in net.modules():
        if isinstance(layer, bnn.VILinear):
            for name in ("weight", "bias"):
                posterior = layer.posterior[name]
                q = torch.distributions.Normal(posterior.loc, posterior.scale())
                p = torch.distributions.Normal(0.0, 1.0)
                total = total + torch.distributions.kl_divergence(q, p).sum()
    return total


@pytest.mark.parametrize("estimator", ["auto", "reparam", "local"])
def test_loss_takes_a_derivative_of_the_output(estimator: str) -> None:
    """The probe's value: (data term on the slopes + closed-form KL) / N."""
    torch.set_default_dtype(torch.float64)
    net = _net(estimator)
    loss_fn = bnn.KullbackLeiblerLoss(
        bnn.Normal(scale=0.1), dataset_size=N, kl="analytic"
    )
    x = _inputs()
    dy = 3 * torch.cos(3 * x.detach())
    out = net(x, samples=S)
    slopes = _slopes(out, x)
    loss = loss_fn(slopes, dy)
    log_lik = torch.distributions.Normal(slopes, 0.1).log_prob(dy).sum((-2, -1))
    expected = (-log_lik.mean() + _closed_form_kl(net)) / N
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    loss.backward()
    weight = net[0].posterior["weight"].loc_unconstrained
    assert weight.grad is not None
    assert bool(weight.grad.abs().sum() > 0)


def test_second_derivative_finds_the_call() -> None:
    net, x = _net(), _inputs()
    out = net(x, samples=S)
    curvature = _slopes(_slopes(out, x), x)
    assert find_record(curvature) is out.bnn_record


def test_each_derivative_finds_its_own_call() -> None:
    """Interior and boundary calls of one network: two records, told apart."""
    net = _net()
    x_a, x_b = _inputs(), _inputs()
    out_a, out_b = net(x_a, samples=S), net(x_b, samples=S)
    assert find_record(_slopes(out_a, x_a)) is out_a.bnn_record
    assert find_record(_slopes(out_b, x_b)) is out_b.bnn_record


def test_derivative_through_two_calls_is_refused() -> None:
    net, x = _net(), _inputs()
    both = net(x, samples=S) + net(x, samples=S)
    with pytest.raises(ValueError, match="weights of 2 different forward passes"):
        find_record(_slopes(both, x))


def test_second_loss_after_the_first_finds_the_call() -> None:
    """A data term on the output, then a physics term (heat 0) on its derivative.

    The first loss took the call's KL (and dropped its moments): the second
    loss still finds the call, and adds no KL.
    """
    net, x = _net(), _inputs()
    data_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), dataset_size=N)
    physics_fn = bnn.KullbackLeiblerLoss(
        bnn.Normal(scale=0.1), dataset_size=N, heat=0.0
    )
    out = net(x, samples=S)
    data = data_fn(out, torch.zeros(N, 1))
    slopes = _slopes(out, x)
    physics = physics_fn(slopes, torch.ones(N, 1))
    log_lik = torch.distributions.Normal(slopes, 0.1).log_prob(torch.ones(N, 1))
    expected = -log_lik.sum((-2, -1)).mean() / N
    torch.testing.assert_close(physics, expected, rtol=1e-6, atol=1e-6)
    (data + physics).backward()


def test_assigned_pyro_guide_derivative_finds_the_call() -> None:
    net, x = _net(), _inputs()
    net.guide = AutoNormal(net.prior_model, init_loc_fn=net.init_loc_fn)
    out = net(x, samples=S)
    assert find_record(_slopes(out, x)) is out.bnn_record


def test_plain_torch_root_derivative_finds_the_call() -> None:
    net = nn.Sequential(bnn.VILinear(1, 8), nn.Tanh(), bnn.VILinear(8, 1))
    x = _inputs()
    out = net(x)
    assert find_record(_slopes(out, x)) is out.bnn_record


def test_derivative_of_a_dropped_output_says_to_keep_it() -> None:
    """The record lives on the output: once it is gone, the message says so."""
    net, x = _net(), _inputs()
    slopes = _slopes(net(x, samples=S), x)
    gc.collect()
    with pytest.raises(ValueError, match="output out is still referenced"):
        find_record(slopes)


def test_only_calls_with_differentiated_inputs_are_remembered() -> None:
    """The training hot path (inputs without gradients) registers nothing."""
    net = _net()
    plain = net(torch.randn(N, 1), samples=S)
    differentiated = net(_inputs(), samples=S)
    assert calls_reached((2 * plain).grad_fn) == []
    assert calls_reached((2 * differentiated).grad_fn) == [differentiated.bnn_record]
    assert calls_reached(None) == []


def test_a_differentiated_call_drops_its_moments_after_the_kl() -> None:
    """A Bayesian head on a trainable encoder is differentiated on every call.

    Its record kept every posterior scale (a copy the size of the weights)
    for as long as the loss tensor, so a loop keeping its losses held one per
    step (+316 MiB over 60 steps of a 1M-weight head, against +125 MiB
    before; probe falsepos29b). The call keeps only the moments' autograd
    nodes, by which a derivative still finds it.
    """
    encoder = nn.Linear(3, 4)
    head = bnn.VISequential(bnn.VILinear(4, 8), nn.Tanh(), bnn.VILinear(8, 1))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), dataset_size=N)
    out = head(encoder(torch.randn(N, 3)), samples=S)
    loss = loss_fn(out, torch.zeros(N, 1))
    record = find_record(out)
    draws = record.draws  # type: ignore[attr-defined]
    assert all(moments is None for moments in draws.moments)
    assert record.call_nodes()
    loss.backward()
