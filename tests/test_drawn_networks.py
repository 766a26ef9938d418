"""``bnn.draw_networks``: S networks drawn once, the same in every call.

Per-layer agreement with torch at the drawn weights is in the layer contract
suite (``tests/layers/test_contract.py``); here: rollouts and step-wise
decoding against plain torch, the draws' distribution, whole networks under
the default estimator, assigned guides, plain containers, gradients, Pyro
handlers, indexing and refusals.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoMultivariateNormal
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_sequence

import pyrolite_bnn as bnn
from pyrolite_bnn import _host_memory


def _mlp() -> bnn.VISequential:
    net = bnn.VISequential(bnn.VILinear(2, 8), nn.Tanh(), bnn.VILinear(8, 2))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("rho_unconstrained"):
                p.fill_(-1.0)  # posterior std ~0.3: networks visibly different
    return net


def _plain_mlp(weights: dict[str, Tensor], s: int, x: Tensor) -> Tensor:
    h = torch.tanh(x @ weights["0.weight"][s].T + weights["0.bias"][s])
    return h @ weights["2.weight"][s].T + weights["2.bias"][s]


def test_rollout_follows_each_network_in_plain_torch() -> None:
    torch.manual_seed(0)
    nets = bnn.draw_networks(_mlp(), samples=4)
    weights = nets.weights()
    start = torch.randn(3, 2)
    state = start + nets(start)
    paths = [start + _plain_mlp(weights, s, start) for s in range(4)]
    for _ in range(6):
        state = state + nets.each(state)
        paths = [p + _plain_mlp(weights, s, p) for s, p in enumerate(paths)]
    torch.testing.assert_close(state, torch.stack(paths), rtol=1e-5, atol=1e-5)
    # the networks differ from each other: the rollout is not one function
    assert (state[0] - state[1]).abs().max() > 0.1


def test_whole_networks_under_the_default_estimator() -> None:
    """A direct call samples the linear layers' outputs per example
    (estimator="auto"); drawn networks are whole: identical rows, identical
    outputs within a network."""
    torch.manual_seed(1)
    net = _mlp()
    rows = torch.randn(1, 2).expand(6, 2)
    direct = net(rows, samples=4)
    assert (direct - direct[:, :1]).abs().max() > 1e-3  # the premise
    drawn = bnn.draw_networks(net, samples=4)(rows)
    torch.testing.assert_close(drawn, drawn[:, :1].expand_as(drawn), rtol=0, atol=0)


def test_draws_follow_the_posterior() -> None:
    """4000 draws of a mean-field posterior: means within 4 standard errors,
    standard deviations within 5 % (a normal sample's sd has relative error
    1/sqrt(2n) = 1.1 %)."""
    torch.manual_seed(2)
    layer = bnn.VILinear(3, 2)
    with torch.no_grad():
        layer.posterior["weight"].rho_unconstrained.uniform_(-2.0, 0.0)
    draws = bnn.draw_networks(layer, samples=4000).weights()["weight"]
    loc = layer.posterior["weight"].loc.detach()
    scale = layer.posterior["weight"].scale().detach()
    assert ((draws.mean(0) - loc).abs() <= 4 * scale / 4000**0.5).all()
    torch.testing.assert_close(draws.std(0), scale, rtol=0.05, atol=0)


def test_stepwise_lstm_decoding_equals_one_call() -> None:
    """Decoding one step per call, the state fed back with ``each``, equals
    the whole sequence in one call of the same networks."""
    torch.manual_seed(3)
    lstm = bnn.VILSTM(3, 5, num_layers=2, batch_first=True)
    nets = bnn.draw_networks(lstm, samples=3)
    x = torch.randn(2, 4, 3)
    whole, (h_whole, c_whole) = nets(x)
    out, (h, c) = nets(x[:, :1])
    steps = [out]
    for t in range(1, 4):
        token = x[:, t : t + 1].expand(3, *x[:, t : t + 1].shape)
        out, (h, c) = nets.each(token, (h, c))
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 2), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c, c_whole, rtol=1e-5, atol=1e-5)


def test_plain_container_and_keyword_inputs() -> None:
    class Shifted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(bnn.VILinear(2, 4), nn.ReLU(), bnn.VILinear(4, 1))

        def forward(self, x: Tensor, *, shift: Tensor) -> dict[str, Tensor]:
            y = self.body(x)
            return {"y": y + bnn.match_particles(shift, y)}

    torch.manual_seed(4)
    model = Shifted()
    nets = bnn.draw_networks(model, samples=5)
    x, shift = torch.randn(6, 2), torch.randn(6, 1)
    out = nets(x, shift=shift)["y"]
    assert out.shape == (5, 6, 1)
    torch.testing.assert_close(nets(x, shift=shift)["y"], out, rtol=0, atol=0)
    each = nets.each(x.expand(5, 6, 2), shift=shift.expand(5, 6, 1))["y"]
    torch.testing.assert_close(each, out, rtol=1e-6, atol=1e-6)
    weights = nets.weights()
    for s in range(5):
        h = torch.relu(x @ weights["body.0.weight"][s].T + weights["body.0.bias"][s])
        y = h @ weights["body.2.weight"][s].T + weights["body.2.bias"][s] + shift
        torch.testing.assert_close(out[s], y, rtol=1e-5, atol=1e-5)


def test_assigned_guide_draws_from_it() -> None:
    """With an autoguide the networks are its draws: 3000 draws of a
    full-covariance guide have its covariance (entries within 0.1 of
    matrices of scale ~1; the Monte-Carlo error is ~0.03)."""
    torch.manual_seed(5)
    net = bnn.VISequential(bnn.VILinear(2, 1))
    guide = AutoMultivariateNormal(net.prior_model, init_loc_fn=net.init_loc_fn)
    net.guide = guide
    with torch.no_grad():
        guide.scale_tril.copy_(
            torch.tensor([[1.0, 0, 0], [0.5, 0.8, 0], [0.2, -0.3, 0.6]])
        )
        guide.scale.fill_(1.0)
    nets = bnn.draw_networks(net, samples=3000)
    weights = nets.weights()
    flat = torch.cat([weights["0.weight"].reshape(3000, -1), weights["0.bias"]], 1)
    expected = guide.get_posterior().covariance_matrix
    torch.testing.assert_close(flat.T.cov(), expected, rtol=0, atol=0.1)
    x = torch.randn(4, 2)
    plain = x @ weights["0.weight"][:5].transpose(1, 2) + weights["0.bias"][:5, None]
    torch.testing.assert_close(nets[:5](x), plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        nets[:5].each(x.expand(5, 4, 2)), plain, rtol=1e-5, atol=1e-5
    )


def test_a_snapshot_of_the_posterior() -> None:
    """Changing the posterior (training) or the returned weights afterwards
    leaves the drawn networks as they were."""
    torch.manual_seed(6)
    net = _mlp()
    nets = bnn.draw_networks(net, samples=3)
    x = torch.randn(4, 2)
    before = nets(x)
    nets.weights()["0.weight"].zero_()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    torch.testing.assert_close(nets(x), before, rtol=0, atol=0)


def test_gradients_reach_the_inputs_not_the_parameters() -> None:
    torch.manual_seed(7)
    net = _mlp()
    nets = bnn.draw_networks(net, samples=3)
    x = torch.randn(4, 2, requires_grad=True)
    nets(x).sum().backward()
    assert x.grad is not None
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_runs_apart_from_the_callers_pyro_handlers() -> None:
    """Inside a user's Pyro model (a trace), the drawn networks record no
    weight sites and keep their weights (the Pyro path would draw from the
    prior)."""
    torch.manual_seed(8)
    nets = bnn.draw_networks(_mlp(), samples=2)
    x = torch.randn(3, 2)
    outside = nets(x)
    with poutine.trace() as tracer:
        inside = nets(x)
    assert not [n for n in tracer.trace.nodes if "weight" in n or "bias" in n]
    torch.testing.assert_close(inside, outside, rtol=0, atol=0)


def test_indexing() -> None:
    torch.manual_seed(9)
    nets = bnn.draw_networks(_mlp(), samples=5)
    x = torch.randn(3, 2)
    out = nets(x)
    assert len(nets) == 5
    assert repr(nets) == "DrawnNetworks(VISequential, samples=5)"
    torch.testing.assert_close(nets[2](x), out[2:3], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(nets[-1](x), out[4:5], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(nets[1::2](x), out[1::2], rtol=1e-6, atol=1e-6)
    assert nets[1::2].samples == 2
    for integer in (np.int64(2), torch.tensor(2)):  # as samples= takes them
        torch.testing.assert_close(nets[integer](x), out[2:3], rtol=1e-6, atol=1e-6)
    with pytest.raises(IndexError, match="out of range"):
        nets[5]
    with pytest.raises(IndexError, match="selects none"):
        nets[3:3]
    with pytest.raises(TypeError, match="int or a slice"):
        nets[True]


def test_refusals() -> None:
    net = _mlp()
    with pytest.raises(TypeError, match="Bayesian layers"):
        bnn.draw_networks(nn.Linear(2, 2), 3)
    for bad, error in ((0, ValueError), (-2, ValueError), (2.0, TypeError)):
        with pytest.raises(error, match="samples"):
            bnn.draw_networks(net, bad)  # type: ignore[arg-type]
    nets = bnn.draw_networks(net, 4)
    with pytest.raises(ValueError, match=r"one row per network first, \(4, \.\.\.\)"):
        nets.each(torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        nets.each(torch.randn(4, 3, 2), (torch.randn(3, 2),))
    with pytest.raises(TypeError, match="at least one tensor"):
        nets.each("text")


def _point_mass_layers() -> nn.Module:
    return bnn.VISequential(
        bnn.VILinear(2, 4, variational=bnn.PointMass()),
        nn.Tanh(),
        bnn.VILinear(4, 1),
    )


def _auto_delta_guide() -> nn.Module:
    net = bnn.VISequential(bnn.VILinear(2, 4), nn.Tanh(), bnn.VILinear(4, 1))
    net.guide = AutoDelta(net.prior_model, init_loc_fn=net.init_loc_fn)
    return net


@pytest.mark.parametrize("make", [_point_mass_layers, _auto_delta_guide])
def test_point_masses_are_copied_into_the_snapshot(make: Any) -> None:
    """A point mass "draws" its parameter expanded, a view: the drawn networks
    followed in-place changes of it, and an optimizer step made every later
    call fail ("a view ... has been modified inplace")."""
    torch.manual_seed(10)
    net = make()
    nets = bnn.draw_networks(net, samples=3)
    x, y = torch.randn(6, 2), torch.randn(6, 1)
    before = nets(x)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), dataset_size=6)
    for _ in range(2):
        optimizer.zero_grad()
        loss_fn(net(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)
    torch.testing.assert_close(nets(x), before, rtol=0, atol=0)
    point_mass = nets.weights()["0.weight"]  # the same weights in every network
    torch.testing.assert_close(point_mass[0], point_mass[-1], rtol=0, atol=0)


def test_only_the_bayesian_weights_are_kept() -> None:
    """As documented: deterministic parameters are read from the model at each
    call; a deep copy drawn from stays as it was."""
    torch.manual_seed(11)
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), bnn.VILinear(4, 1))
    nets = bnn.draw_networks(net, samples=2)
    frozen = bnn.draw_networks(copy.deepcopy(net), samples=2)
    x = torch.randn(5, 2)
    before, frozen_before = nets(x), frozen(x)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert not torch.allclose(nets(x), before)
    torch.testing.assert_close(frozen(x), frozen_before, rtol=0, atol=0)


@pytest.mark.parametrize("layer", [nn.Dropout(0.5), bnn.BatchNorm1d(8)])
def test_training_mode_warns_once(layer: nn.Module) -> None:
    """In training mode, dropout changed the networks from call to call and
    batch norm moved its running statistics with every call, silently."""
    torch.manual_seed(12)
    net = bnn.VISequential(bnn.VILinear(2, 8), layer, bnn.VILinear(8, 1))
    nets = bnn.draw_networks(net, samples=3)
    x = torch.randn(5, 2)
    name = "dropout" if isinstance(layer, nn.Dropout) else "batch norm"
    with pytest.warns(UserWarning, match=rf"DrawnNetworks: {name} \(1\)"):
        nets(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nets(x)  # once
        net.eval()
        evaluated = bnn.draw_networks(net, samples=3)
        torch.testing.assert_close(evaluated(x), evaluated(x), rtol=0, atol=0)


def test_a_model_moved_after_drawing_is_refused() -> None:
    """model.double() after drawing: the layers refused float32 inputs and
    advised float64, which failed inside torch (the draws stayed float32)."""
    net = _mlp()
    nets = bnn.draw_networks(net, samples=2)
    net.double()
    for x in (torch.randn(3, 2), torch.randn(3, 2, dtype=torch.float64)):
        with pytest.raises(RuntimeError, match=r"float32 on cpu then.*draw again"):
            nets(x)
    assert bnn.draw_networks(net, samples=2)(x).dtype == torch.float64


def test_indexing_edge_cases() -> None:
    torch.manual_seed(13)
    nets = bnn.draw_networks(_mlp(), samples=4)
    x = torch.randn(3, 2)
    out = nets(x)
    torch.testing.assert_close(nets[::-1](x), out.flip(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(nets[-1:0:-2](x), out[[3, 1]], rtol=1e-6, atol=1e-6)
    for bad in (torch.tensor(True), np.True_, torch.tensor(1.0), "1"):
        with pytest.raises(TypeError, match="int or a slice"):
            nets[bad]


def test_misuse_of_calls_is_named() -> None:
    torch.manual_seed(14)
    net = _mlp()
    nets = bnn.draw_networks(net, samples=2)
    with pytest.raises(TypeError, match="samples= is no argument"):
        nets(torch.randn(3, 2), samples=3)
    lstm = bnn.VILSTM(2, 3)
    packed = pack_sequence([torch.randn(4, 2), torch.randn(2, 2)])
    lstm_nets = bnn.draw_networks(lstm, samples=2)
    assert lstm_nets(packed)[0].data.shape == (2, 6, 3)
    with pytest.raises(TypeError, match="cannot split a PackedSequence"):
        lstm_nets.each(packed)
    net.append(bnn.VILinear(2, 2))
    with pytest.raises(RuntimeError, match=r"sites \['3.weight', '3.bias'\].*draw"):
        nets(torch.randn(3, 2))
    fitted = bnn.laplace(
        nn.Sequential(nn.Linear(2, 1)),
        torch.randn(8, 2),
        torch.randn(8, 1),
        bnn.Normal(scale=1.0),
    )
    with pytest.raises(TypeError, match=r"bnn\.laplace result"):
        bnn.draw_networks(fitted, samples=2)


def test_draws_larger_than_the_free_host_memory_are_refused_up_front(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """draw_networks(net, 10**8) allocated every draw at once: an allocator
    error, or on an overcommitting host the kernel's OOM killer. The draws
    (S times every weight, the largest drawn at three times its size: here
    10 * (42 + 2 * 16) floats) are checked against the free memory first,
    as predict checks its outputs."""
    net = _mlp()
    needed = 10 * (42 + 2 * 16) * 4
    monkeypatch.setattr(_host_memory, "available_bytes", lambda: needed - 1)
    with pytest.raises(MemoryError, match=r"draw_networks: .* 10 draws .* GiB, more"):
        bnn.draw_networks(net, 10)
    monkeypatch.setattr(_host_memory, "available_bytes", lambda: needed)
    assert len(bnn.draw_networks(net, 10)) == 10
