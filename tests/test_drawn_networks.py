"""``bnn.draw_networks``: S networks drawn once, the same in every call.

Per-layer agreement with torch at the drawn weights is in the layer contract
suite (``tests/layers/test_contract.py``); here: rollouts and step-wise
decoding against plain torch, the draws' distribution, whole networks under
the default estimator, assigned guides, plain containers, gradients, Pyro
handlers, indexing and refusals.
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import (
    AutoDelta,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_hook
from torch.nn.utils.rnn import pack_sequence

import pyrolite_bnn as bnn
from pyrolite_bnn import _host_memory, _structures
from pyrolite_bnn._fixed_weights import FixedWeights


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


# ``nets.each`` runs every network in one call mapped over them (torch.vmap);
# each case: a model, per-network inputs (S = 3 rows), keyword inputs.
_EACH_S, _EACH_B = 3, 4


def _rows(value: Any, s: int) -> Any:
    """Network ``s``'s row of every tensor in ``value``."""
    return _structures.map_leaves(
        value, lambda leaf: leaf[s] if isinstance(leaf, Tensor) else leaf
    )


def _without_network_dim(value: Any) -> Any:
    """A one-network output without its leading network dimension."""
    return _structures.map_leaves(
        value, lambda leaf: leaf[0] if isinstance(leaf, Tensor) else leaf
    )


class _HeteroscedasticDynamics(bnn.VIModule):
    """A rollout's dynamics model: mean and raw scale of each state change."""

    def __init__(self, estimator: Any = "auto") -> None:
        super().__init__()
        self.body = bnn.VISequential(
            bnn.VILinear(3, 8, estimator=estimator),
            nn.Tanh(),
            bnn.VILinear(8, 4, estimator=estimator),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).unflatten(-1, (2, 2))


class _MeanAndScale(bnn.VIModule):
    """A heteroscedastic head returning ``(mean, scale)``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = bnn.VILinear(3, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.body(x)
        return out[..., :2], nn.functional.softplus(out[..., 2:])


class _ShiftedWithCount(nn.Module):
    """A plain container with a keyword input and a non-tensor output leaf."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(bnn.VILinear(2, 4), nn.ReLU(), bnn.VILinear(4, 1))

    def forward(self, x: Tensor, *, shift: Tensor) -> dict[str, Any]:
        y = self.body(x)
        return {"y": y + bnn.match_particles(shift, y), "count": 3}


def _with_guide(guide: Any) -> nn.Module:
    net = bnn.VISequential(bnn.VILinear(2, 4), nn.Tanh(), bnn.VILinear(4, 1))
    net.guide = guide(net.prior_model, init_loc_fn=net.init_loc_fn)
    return net


def _states(layers: int, hidden: int) -> Tensor:
    return torch.randn(_EACH_S, layers, _EACH_B, hidden)


_S, _B = _EACH_S, _EACH_B
_EACH_CASES: dict[str, Any] = {
    "linear": lambda: (_mlp(), (torch.randn(_S, _B, 2),), {}),
    "conv": lambda: (
        bnn.VISequential(
            bnn.VIConv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), bnn.VILinear(32, 2)
        ),
        (torch.randn(_S, _B, 1, 6, 6),),
        {},
    ),
    "gru-step": lambda: (
        bnn.VIGRU(3, 5, num_layers=2, batch_first=True),
        (torch.randn(_S, _B, 1, 3), _states(2, 5)),
        {},
    ),
    "lstm-step": lambda: (
        bnn.VILSTM(3, 5, num_layers=2, batch_first=True),
        (torch.randn(_S, _B, 1, 3), (_states(2, 5), _states(2, 5))),
        {},
    ),
    "lstm-sequence-first": lambda: (
        bnn.VILSTM(3, 5),
        (torch.randn(_S, 2, _B, 3),),
        {},
    ),
    "heteroscedastic": lambda: (
        _HeteroscedasticDynamics(),
        (torch.randn(_S, _B, 3),),
        {},
    ),
    "mean-and-scale": lambda: (_MeanAndScale(), (torch.randn(_S, _B, 3),), {}),
    "AutoNormal": lambda: (_with_guide(AutoNormal), (torch.randn(_S, _B, 2),), {}),
    "AutoLowRank": lambda: (
        _with_guide(AutoLowRankMultivariateNormal),
        (torch.randn(_S, _B, 2),),
        {},
    ),
    "AutoDelta": lambda: (_with_guide(AutoDelta), (torch.randn(_S, _B, 2),), {}),
    **{
        f"estimator-{estimator}": functools.partial(
            lambda estimator: (
                _HeteroscedasticDynamics(estimator),
                (torch.randn(_S, _B, 3),),
                {},
            ),
            estimator,
        )
        for estimator in ("local", "flipout", "reparam")
    },
    "embedding": lambda: (
        bnn.VISequential(bnn.VIEmbedding(10, 4), bnn.VILinear(4, 2)),
        (torch.randint(0, 10, (_S, _B, 5)),),
        {},
    ),
    "transformer-encoder": lambda: (
        bnn.VITransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
        (torch.randn(_S, _B, 5, 8),),
        {},
    ),
    "keyword-and-count": lambda: (
        _ShiftedWithCount(),
        (torch.randn(_S, _B, 2),),
        {"shift": torch.randn(_S, _B, 1)},
    ),
}


def _count_network_calls(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """A list that gets an entry at every call of a network on fixed weights.

    (Not a forward hook: a hook makes ``each`` run the networks in turn.)
    """
    calls: list[None] = []
    run = FixedWeights.run

    def counted(self: FixedWeights, *args: Any, **kwargs: Any) -> Any:
        calls.append(None)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(FixedWeights, "run", counted)
    return calls


@pytest.mark.parametrize("case", list(_EACH_CASES))
def test_each_runs_the_networks_in_one_call_as_each_alone(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``nets.each`` called the network once per network (0.25 ms each: a
    rollout 7-15x slower than plain batched torch; probe "dynamics"). Now one
    call runs them all: the model's forward runs once, and outputs and input
    gradients are those of network s called alone on row s, up to float32
    rounding (batched matrix products add in another order: seen <= 2e-7)."""
    torch.manual_seed(20)
    model, inputs, kwargs = _EACH_CASES[case]()
    nets = bnn.draw_networks(model, samples=_EACH_S)
    first = inputs[0]
    if first.is_floating_point():
        first = first.clone().requires_grad_()
        inputs = (first, *inputs[1:])
    with monkeypatch.context() as patch:
        calls = _count_network_calls(patch)
        out = nets.each(*inputs, **kwargs)
    assert len(calls) == 1
    alone = _structures.stack(
        [
            _without_network_dim(nets[s](*_rows(inputs, s), **_rows(kwargs, s)))
            for s in range(_EACH_S)
        ]
    )
    got, expected = _structures.flatten(out), _structures.flatten(alone)
    assert got[1].matches(expected[1])
    for a, b in zip(got[0], expected[0], strict=True):
        if isinstance(a, Tensor):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert a == b
    if first.requires_grad:
        (grad,) = torch.autograd.grad(
            sum(t.sum() for t in _structures.tensors(out)), first
        )
        (expected_grad,) = torch.autograd.grad(
            sum(t.sum() for t in _structures.tensors(alone)), first
        )
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)


class _Branching(nn.Module):
    """A forward that reads a tensor's value into Python (vmap cannot map it)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = bnn.VILinear(2, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.layer(x)
        return y if bool(y.sum() > 0) else -y


class _TorchLSTMHead(nn.Module):
    """torch's own LSTM (no batching rule in vmap) under a Bayesian head."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, 3, batch_first=True)
        self.head = bnn.VILinear(3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.lstm(x)[0])


_IN_TURN_CASES: dict[str, Any] = {
    "dropout-in-training": lambda: (
        bnn.VISequential(bnn.VILinear(2, 8), nn.Dropout(0.5), bnn.VILinear(8, 1)),
        torch.randn(_S, _B, 2),
    ),
    "batch-norm-in-training": lambda: (
        bnn.VISequential(bnn.VILinear(2, 8), bnn.BatchNorm1d(8), bnn.VILinear(8, 1)),
        torch.randn(_S, _B, 2),
    ),
    "value-read": lambda: (_Branching(), torch.randn(_S, _B, 2)),
    "torch-lstm": lambda: (_TorchLSTMHead().eval(), torch.randn(_S, _B, 5, 2)),
}


@pytest.mark.parametrize("case", list(_IN_TURN_CASES))
def test_each_runs_in_turn_where_vmap_cannot_map_the_network(case: str) -> None:
    """Random numbers (dropout in training mode), values read into Python,
    in-place updates of module state (batch norm's running statistics) and
    operators without a batching rule (torch's LSTM): the networks run one
    after the other, exactly as network s alone on row s, the same random
    numbers drawn in the same order and the same statistics kept."""
    torch.manual_seed(21)
    model, xs = _IN_TURN_CASES[case]()
    nets = bnn.draw_networks(model, samples=_S)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the training-mode warning, said once
        torch.manual_seed(22)
        out = nets.each(xs)
        after = {name: b.clone() for name, b in model.named_buffers()}
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
        torch.manual_seed(22)
        alone = torch.stack([nets[s](xs[s])[0] for s in range(_S)])
    torch.testing.assert_close(out, alone, rtol=0, atol=0)
    for name, b in model.named_buffers():
        torch.testing.assert_close(after[name], b, rtol=0, atol=0)


class _RunningNormaliser(nn.Module):
    """An observation normaliser: running count and mean, updated in forward."""

    count: Tensor
    mean: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(2))
        self.layer = bnn.VILinear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            self.count += x.shape[0]
            self.mean += (x.mean(0) - self.mean) * x.shape[0] / self.count
        return self.layer(x - self.mean)


class _DecayedAverage(nn.Module):
    """A feature monitor: decays an average buffer, then adds the batch mean."""

    average: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("average", torch.ones(8))
        self.hidden = bnn.VILinear(2, 8)
        self.out = bnn.VILinear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.hidden(x))
        with torch.no_grad():
            self.average.mul_(0.5)  # unbatched: vmap runs it
            self.average.add_(0.5 * h.mean(0))  # batched into unbatched: refused
        return self.out(h)


class _CountedCalls(nn.Module):
    calls: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))
        self.layer = bnn.VILinear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.layer(x)


class _ScaledInput(nn.Module):
    """Scales its input in place, then does what vmap refuses (``refusal``)."""

    def __init__(self, refusal: str) -> None:
        super().__init__()
        self.layer = bnn.VILinear(2, 2)
        self.drop = nn.Dropout(0.1) if refusal == "dropout" else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x.mul_(2.0)
        h = self.drop(self.layer(x))
        return h if bool(h.sum() > -1e9) else -h  # a value read into Python


_STATEFUL_CASES: dict[str, Any] = {
    "running normaliser": lambda: _RunningNormaliser().eval(),
    "decayed average": lambda: _DecayedAverage().eval(),
    "counted calls": lambda: _CountedCalls().eval(),
    "input scaled, then dropout": lambda: _ScaledInput("dropout").train(),
    "input scaled, then a value read": lambda: _ScaledInput("value").eval(),
}


@pytest.mark.parametrize("case", list(_STATEFUL_CASES))
def test_each_changes_state_as_the_calls_in_turn(case: str) -> None:
    """``each`` tried vmap and ran the networks in turn where it failed
    (probe falsepos27b): the failed attempt's in-place changes stayed and were
    made again (a normaliser's count 25 instead of 20, an input scaled in
    place 4.0 instead of 2.0 with outputs off by 2.6, an average decayed
    once more), and a successful one made an unbatched change once instead
    of S times (a call counter 1 instead of S). Now such forwards run in
    turn from the start: outputs, buffers and inputs are exactly those of
    network s called alone on row s, for each s in order."""
    torch.manual_seed(25)
    model = _STATEFUL_CASES[case]()
    nets = bnn.draw_networks(model, samples=4)
    xs = torch.randn(4, 5, 2)
    before = {name: b.clone() for name, b in model.named_buffers()}
    inputs, alone_inputs = xs.clone(), xs.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the training-mode warning, said once
        torch.manual_seed(26)
        out = nets.each(inputs)
        after = {name: b.clone() for name, b in model.named_buffers()}
        for name, b in model.named_buffers():
            b.copy_(before[name])
        torch.manual_seed(26)
        alone = torch.stack([nets[s](alone_inputs[s])[0] for s in range(4)])
    torch.testing.assert_close(out, alone, rtol=0, atol=0)
    torch.testing.assert_close(inputs, alone_inputs, rtol=0, atol=0)
    for name, b in model.named_buffers():
        torch.testing.assert_close(after[name], b, rtol=0, atol=0)


class _KeepsLastOutput(nn.Module):
    """Keeps its last hidden state for later code (logging, a feature)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = bnn.VILinear(2, 2)
        self.last: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer(x)
        self.last = h.detach()
        return h


def test_tensors_kept_by_a_forward_or_its_hooks_are_usable_after_each() -> None:
    """A forward storing ``self.last = h.detach()``, a forward hook storing a
    layer's outputs (feature extraction) and a global module hook kept
    ``vmap``'s wrapper after the mapped call: using it later raised torch's
    "your tensor may have escaped from inside a function being vmapped"
    (probe falsepos27b). Now they run in turn and keep each network's own
    tensors."""
    torch.manual_seed(27)
    xs = torch.randn(4, 5, 2)
    model = _KeepsLastOutput().eval()
    nets = bnn.draw_networks(model, samples=4)
    out = nets.each(xs)
    assert model.last is not None
    torch.testing.assert_close(model.last, out[-1], rtol=0, atol=0)

    net = _mlp().eval()
    nets = bnn.draw_networks(net, samples=4)
    features: list[Tensor] = []
    handle = net[2].register_forward_hook(
        lambda module, args, output: features.append(output.detach())
    )
    try:
        out = nets.each(xs)
    finally:
        handle.remove()
    torch.testing.assert_close(torch.stack(features), out, rtol=0, atol=0)

    seen: list[Tensor] = []
    handle = register_module_forward_hook(
        lambda module, args, output: (
            seen.append(output.detach()) if module is net[0] else None
        )
    )
    try:
        nets.each(xs)
    finally:
        handle.remove()
    assert len(seen) == 4
    assert torch.stack(seen).shape == (4, 5, 8)


def _count_mapped_runs(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """A list that gets an entry at every ``torch.vmap`` call."""
    runs: list[None] = []
    vmap = torch.vmap

    def counted(*args: Any, **kwargs: Any) -> Any:
        runs.append(None)
        return vmap(*args, **kwargs)

    monkeypatch.setattr(torch, "vmap", counted)
    return runs


def test_each_tries_a_mapped_call_only_where_it_may_run_and_pay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``each`` tried vmap in every call (probe falsepos27b): one network took
    2.6 times its call (0.59 against 0.22 ms), and networks vmap can never
    run (a value read into Python, torch's LSTM) paid the failed attempt in
    every call, 1.5-3.4 times slower at 1 and 2 networks. Now fewer than 3
    networks run in turn (2 ran 1.0-1.4 times faster in turn than mapped),
    torch's LSTM in turn from the start, and a failed mapped call is not
    tried again for inputs of the same kinds in the same mode."""
    torch.manual_seed(28)
    runs = _count_mapped_runs(monkeypatch)
    mlp = _mlp().eval()
    for samples in (1, 2):
        bnn.draw_networks(mlp, samples).each(torch.randn(samples, 5, 2))
    assert not runs
    bnn.draw_networks(mlp, 3).each(torch.randn(3, 5, 2))
    assert len(runs) == 1
    lstm = bnn.draw_networks(_TorchLSTMHead().eval(), 4)
    lstm.each(torch.randn(4, 5, 3, 2))
    assert len(runs) == 1
    branching = _Branching().eval()
    nets = bnn.draw_networks(branching, 4)
    xs = torch.randn(4, 5, 2)
    alone = torch.stack([nets[s](xs[s])[0] for s in range(4)])
    for _ in range(3):
        torch.testing.assert_close(nets.each(xs), alone, rtol=0, atol=0)
    assert len(runs) == 2  # the first call tried, failed; the others did not
    nets.each(torch.randn(4, 7, 2))  # other sizes: the same kinds of inputs
    assert len(runs) == 2
    branching.train()
    nets.each(xs)  # another mode: tried once more
    assert len(runs) == 3


def test_each_checks_the_inputs_values_as_each_networks_call() -> None:
    """The mapped call cannot read values (its checks count as passed): the
    inputs' and the embedding's index checks still refuse, with their
    messages."""
    nets = bnn.draw_networks(_mlp(), samples=3)
    xs = torch.randn(3, 3, 2)
    xs[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        nets.each(xs)
    embedding = bnn.draw_networks(
        bnn.VISequential(bnn.VIEmbedding(10, 4), bnn.VILinear(4, 2)), samples=3
    )
    indices = torch.randint(0, 10, (3, 3, 5))
    indices[1, 2, 4] = 10  # network 0's table would read network 1's row 0
    with pytest.raises(ValueError, match="got indices from 0 to 10"):
        embedding.each(indices)
    with bnn.validation(False), pytest.raises(IndexError, match="out of range"):
        embedding.each(indices)


def test_a_call_on_the_networks_own_outputs_warns() -> None:
    """``nets(state)`` with a state of one row per network gave every network
    every network's rows, (S, S, B, D), silently (probe "dynamics"); a call
    with the per-network state's shape now warns and names nets.each."""
    torch.manual_seed(23)
    nets = bnn.draw_networks(_mlp(), samples=5)
    x = torch.randn(4, 2)
    state = x + nets(x)
    with pytest.warns(bnn.PerNetworkInputWarning, match=r"call nets\.each"):
        crossed = nets(torch.tanh(state))  # a state computed from the outputs
    assert crossed.shape == (5, 5, 4, 2)
    fresh = bnn.draw_networks(_mlp(), samples=5)
    rolled = fresh.each(x.expand(5, 4, 2))  # a history of each calls only
    with pytest.warns(bnn.PerNetworkInputWarning, match=r"\(5, 4, 2\)"):
        fresh(rolled)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=bnn.PerNetworkInputWarning)
        fresh(rolled)  # silenced by its category


def test_inputs_of_the_networks_count_by_coincidence_do_not_warn() -> None:
    """S networks, a batch of S and S features: the same input again, or a
    first input with S rows, is no per-network state; neither is a recurrent
    state carried into a call, which the layer continues per network."""
    torch.manual_seed(24)
    nets = bnn.draw_networks(bnn.VISequential(bnn.VILinear(4, 4)), samples=4)
    x = torch.randn(4, 4)
    lstm = bnn.draw_networks(bnn.VILSTM(3, 5, num_layers=2, batch_first=True), 3)
    tokens = torch.randn(2, 1, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nets(torch.randn(4, 7, 4))  # first call: a batch of 4 sequences
        nets(x)
        nets(x)
        nets(torch.randn(4, 7, 4))
        _, (h, c) = lstm(tokens)
        lstm(tokens, (h, c))  # (3, 2, 2, 5) states: 2 layers, a batch of 2
