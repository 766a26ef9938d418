"""Weights drawn on first use (``pyrolite_bnn._draws``): same values, less memory."""

from __future__ import annotations

import gc

import pyro
import pytest
import torch
from torch import Tensor, nn

import pyrolite_bnn as bnn
from pyrolite_bnn._draws import LazyDraws, using_fixed_weights
from pyrolite_bnn.record import LayerRecord


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
            ],
        ),
    ],
)
def test_draws_are_the_traced_guides_and_big_ones_are_not_kept(device: str) -> None:
    """Drawn lazily, the weights still equal the traced guide's under one seed.

    A big draw is not held for the loss (only its random state, to replay);
    a small one is kept, which costs less than saving the generator's state.
    """
    x = torch.randn(5, 3, device=device)
    net = bnn.VISequential(
        bnn.VILinear(3, 256, estimator="reparam"),
        nn.ReLU(),
        bnn.VILinear(256, 256, estimator="reparam"),
    ).to(device)
    pyro.set_rng_seed(4)
    record = net(x, samples=3).bnn_record
    assert isinstance(record, LayerRecord)
    big = [3 * variable.shape.numel() > 1 << 16 for variable in record.variables]
    assert big == [False, False, True, False]
    for index, is_big in enumerate(big):
        kept, state = record.draws.values[index], record.draws.states[index]
        assert (kept is None, state is not None) == (is_big, is_big)
    pyro.set_rng_seed(4)
    guide_trace = pyro.poutine.trace(net.guide).get_trace(samples=3)
    for index, variable in enumerate(record.variables):
        replayed = record.draws.value(index)
        assert replayed is not None
        traced = guide_trace.nodes[variable.site]["value"]
        torch.testing.assert_close(replayed.reshape(traced.shape), traced)
    # replaying did not move the random stream: the next call draws as usual
    pyro.set_rng_seed(4)
    net(x, samples=3)
    expected = torch.randn(2, device=device)
    pyro.set_rng_seed(4)
    net(x, samples=3)
    record.draws.value(2)
    assert torch.equal(torch.randn(2, device=device), expected)


class _TwoReads(bnn.VIModule):
    """Reads its weight twice in one forward pass (the second read is replayed)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = bnn.VILinear(3, 2, estimator="reparam")
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen = [self.layer.weight, self.layer.weight]
        out: Tensor = self.layer(x)
        return out


def test_a_second_read_in_one_call_gets_the_same_draw() -> None:
    net = _TwoReads()
    net(torch.randn(4, 3), samples=2)
    first, second = net.seen
    assert torch.equal(first, second)
    assert first.requires_grad


class _CalledTwice(bnn.VIModule):
    """Runs one layer object twice: the first call of the network reruns its
    forward pass with the layer's weights drawn (estimator "auto")."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.out = bnn.VILinear(4, 4), bnn.VILinear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.out(torch.tanh(self.a(torch.tanh(self.a(x)))))
        return out


def test_a_pass_run_again_starts_from_the_same_random_state() -> None:
    """Same seed, same output and random stream, first call or not."""
    x = torch.randn(3, 4)
    torch.manual_seed(0)
    net = _CalledTwice()
    results = []
    for _ in range(3):
        torch.manual_seed(5)
        results.append((net(x), torch.rand(1)))
    for out, after in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=0, atol=0)
        torch.testing.assert_close(after, results[0][1], rtol=0, atol=0)


def test_fixed_weights_are_what_the_calls_of_their_network_read() -> None:
    """Given values replace the draws, and the moments of a layer that samples
    its outputs from them: only in calls of the network they are given for."""
    net = bnn.VISequential(bnn.VILinear(3, 4), nn.ReLU(), bnn.VILinear(4, 2))
    assert net[0].uses_moments()  # "auto": local reparameterisation
    other = bnn.VILinear(3, 2)
    values = {v.site: torch.full((2, 1, *v.shape), 0.5) for v in net.random_variables()}
    x = torch.ones(5, 3)
    with using_fixed_weights(net, values):
        out = net(x, samples=2)
        free = other(x, samples=2)
    # Hidden units 3 * 0.5 + 0.5 = 2, outputs 4 * 0.5 * 2 + 0.5 = 4.5.
    torch.testing.assert_close(out, torch.full((2, 5, 2), 4.5), rtol=0.0, atol=0.0)
    assert free.std(0).min() > 0  # drawn: its particles differ
    with (
        using_fixed_weights(net, values),
        pytest.raises(ValueError, match=r"\(3, 1, 4, 3\)"),
    ):
        net(x, samples=3)


def test_fixed_draws_count_as_read_once_a_layer_reads_them() -> None:
    """A packed sequence asks whether a Bayesian layer ran before it (any_read)."""
    layer = bnn.VILinear(3, 2)
    variables = layer.random_variables()
    draws = LazyDraws.fixed(
        variables, [torch.zeros(1, 1, *v.shape) for v in variables], 1
    )
    assert not draws.any_read()
    value = draws.get((id(layer), "weight"))
    assert isinstance(value, Tensor)
    assert value.shape == (1, 1, 2, 3)
    assert draws.any_read()


def test_a_draw_without_gradients_or_random_state_is_refused_for_a_kl_with_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call under no_grad (use_reentrant=True checkpointing) gets its KL's
    gradients by replaying its draws; where a device's generator state cannot
    be saved (here: made so), the KL would silently miss part of its gradient."""
    from torch.utils.checkpoint import checkpoint

    monkeypatch.setattr("pyrolite_bnn._draws.rng_state", lambda device: None)
    net = bnn.VISequential(bnn.VILinear(3, 2, estimator="reparam"))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 10)
    x, y = torch.randn(4, 3, requires_grad=True), torch.randint(0, 2, (4,))
    out = checkpoint(net, x, use_reentrant=True)
    with pytest.raises(ValueError, match=r"site '0\.weight'.*use_reentrant=False"):
        loss_fn(out, y)
    with torch.no_grad():  # evaluation needs no gradient
        loss_fn(out, y)


def _live_tensors_of_shape(shape: tuple[int, ...]) -> int:
    gc.collect()
    return sum(
        1
        for obj in gc.get_objects()
        if isinstance(obj, torch.Tensor) and obj.shape == shape
    )


def test_a_loss_kept_after_backward_keeps_no_posterior_scales() -> None:
    """losses.append(loss): each kept loss kept its pass's record (on the
    graph) and with it a copy of every posterior scale, softplus(rho), 2.5 MiB
    a step for a 784-512-512-10 network."""
    torch.manual_seed(0)
    net = bnn.VISequential(bnn.VILinear(50, 40), nn.Tanh(), bnn.VILinear(40, 1))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), dataset_size=16)
    x, y = torch.randn(16, 50), torch.randn(16, 1)
    kept = []

    def step() -> None:
        loss = loss_fn(net(x), y)
        loss.backward()
        kept.append(loss)

    step()
    step()  # (the gradients exist from now on)
    before = _live_tensors_of_shape((40, 50))
    for _ in range(4):
        step()
    assert _live_tensors_of_shape((40, 50)) == before


@pytest.mark.parametrize(("kl", "estimator"), [("auto", "auto"), ("mc", "reparam")])
def test_a_second_loss_of_one_output_equals_the_first(kl: str, estimator: str) -> None:
    """The moments dropped after the first KL are computed again, with
    gradients, for a second loss of the same output (the Monte-Carlo KL from
    the replayed draws of the pass)."""
    torch.manual_seed(1)
    net = bnn.VISequential(
        bnn.VILinear(3, 4, estimator=estimator),
        nn.Tanh(),
        bnn.VILinear(4, 1, estimator=estimator),
    )
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), dataset_size=8, kl=kl)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    out = net(x)
    first = loss_fn(out, y)
    grads = torch.autograd.grad(first, list(net.parameters()), retain_graph=True)
    second = loss_fn(out, y)
    again = torch.autograd.grad(second, list(net.parameters()))
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    for a, b in zip(again, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_outputs_kept_from_evaluations_keep_no_posterior_scales() -> None:
    """outs.append(model(x)) under no_grad kept every posterior scale per
    output; a validation loss of such an output is unchanged."""
    torch.manual_seed(2)
    net = bnn.VISequential(bnn.VILinear(50, 40), nn.Tanh(), bnn.VILinear(40, 1))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), dataset_size=16)
    x, y = torch.randn(16, 50), torch.randn(16, 1)
    kept = []
    with torch.no_grad():
        kept.append(net(x))
        before = _live_tensors_of_shape((40, 50))
        for _ in range(4):
            kept.append(net(x))
        assert _live_tensors_of_shape((40, 50)) == before
        torch.manual_seed(3)
        out = net(x)
        value = loss_fn(out, y)
    torch.manual_seed(3)
    torch.testing.assert_close(loss_fn(net(x), y).detach(), value, rtol=1e-6, atol=0)
