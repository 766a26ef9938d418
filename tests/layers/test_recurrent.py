"""VILSTM and VIGRU: torch equality per particle, layouts, errors, loss, training."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from _sequence_helpers import (
    accuracy,
    assert_loss_equals_pyro_elbo,
    fixed_weights,
    load_particle,
    run_fixed,
    sign_of_sum,
    signature_matches,
    train_classifier,
)
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import pyrolite_bnn as bnn
from pyrolite_bnn._allocations import AllocationPeak
from pyrolite_bnn.layers.functional_recurrent import recurrent

# torch's reference LSTM (not this library) warns when it has a projection.
pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning"
)
TOL = {"rtol": 1e-5, "atol": 1e-5}
OPTIONS: list[dict[str, Any]] = [
    {},
    {"num_layers": 2},
    {"bidirectional": True},
    {"bias": False, "num_layers": 2},
    {"num_layers": 3, "bidirectional": True},
]
LSTM_ONLY: list[dict[str, Any]] = [
    {"proj_size": 3},
    {"num_layers": 2, "bidirectional": True, "proj_size": 3},
]


def _pair(
    mode: str, options: dict[str, Any], input_size: int = 5, hidden: int = 7
) -> tuple[bnn.VIModule, nn.Module]:
    vi_cls, nn_cls = (bnn.VILSTM, nn.LSTM) if mode == "LSTM" else (bnn.VIGRU, nn.GRU)
    layer = vi_cls(input_size, hidden, batch_first=True, **options)
    return layer, nn_cls(input_size, hidden, batch_first=True, **options)


def _torch_state(state: Any) -> Any:
    """Batch-first states (this library) -> torch's (layers * dirs, B, H)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.transpose(0, 1).contiguous() for s in state)
    return state.transpose(0, 1).contiguous()


def _check_equal(
    mode: str,
    options: dict[str, Any],
    samples: int = 3,
    state: Any = None,
    train: bool = False,
) -> None:
    layer, reference = _pair(mode, options)
    layer.train(train)
    reference.train(train)
    x = torch.randn(4, 6, 5)
    weights = fixed_weights(layer, samples)
    out, final = run_fixed(layer, weights, samples, x, state)
    for s in range(samples):
        load_particle(reference, layer, weights, s)
        with torch.no_grad():
            ref_out, ref_final = reference(x, state)
        torch.testing.assert_close(out[s], ref_out, **TOL)
        # h_n (and c_n): torch's layout with the particle dimension in front.
        if mode == "LSTM":
            torch.testing.assert_close(final[0][s], ref_final[0], **TOL)
            torch.testing.assert_close(final[1][s], ref_final[1], **TOL)
        else:
            torch.testing.assert_close(final[s], ref_final, **TOL)


@pytest.mark.parametrize("options", OPTIONS + LSTM_ONLY, ids=str)
def test_lstm_equals_torch_per_particle(options: dict[str, Any]) -> None:
    _check_equal("LSTM", options)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_gru_equals_torch_per_particle(options: dict[str, Any]) -> None:
    _check_equal("GRU", options)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_one_particle_equals_torch(mode: str) -> None:
    _check_equal(mode, {"num_layers": 2, "bidirectional": True}, samples=1)


def test_initial_states_equal_torch() -> None:
    options = {"num_layers": 2, "bidirectional": True, "proj_size": 3}
    # torch's layout (num_layers * directions, B, H), shared by the particles
    h0, c0 = torch.randn(4, 4, 3), torch.randn(4, 4, 7)
    _check_equal("LSTM", options, state=(h0, c0))
    _check_equal("GRU", {"num_layers": 2}, state=torch.randn(2, 4, 7))


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_dropout_between_layers_in_training_only(mode: str) -> None:
    # dropout=1 zeroes every output of layer 0 in training mode (deterministic);
    # in eval mode dropout is off. Both must match torch.
    _check_equal(mode, {"num_layers": 2, "dropout": 1.0}, train=True)
    _check_equal(mode, {"num_layers": 2, "dropout": 1.0}, train=False)


def test_folded_inputs_and_states_per_particle() -> None:
    # Inside a network, input and initial state are folded (b * S rows):
    # particle s of example i is row i * S + s.
    samples, batch = 3, 2
    reference = nn.LSTM(4, 5, num_layers=2, batch_first=True)
    weights = []
    for layer in range(2):
        w = [torch.randn(samples, *p.shape) * 0.4 for p in reference.parameters()]
        weights.append(w[4 * layer : 4 * layer + 4])
    x = torch.randn(batch * samples, 6, 4)
    h0, c0 = torch.randn(batch * samples, 2, 5), torch.randn(batch * samples, 2, 5)
    packed = [[(w[0], w[1], w[2], w[3], None)] for w in weights]
    out, h_n, c_n = recurrent("LSTM", x, packed, h0, c0, 0.0, False, batch)
    for s in range(samples):
        rows = torch.arange(batch) * samples + s
        with torch.no_grad():
            for p, w in zip(
                reference.parameters(), [t for ws in weights for t in ws], strict=True
            ):
                p.copy_(w[s])
            ref_out, (ref_h, ref_c) = reference(
                x[rows], _torch_state((h0[rows], c0[rows]))
            )
        torch.testing.assert_close(out[rows], ref_out, **TOL)
        torch.testing.assert_close(h_n[rows], ref_h.transpose(0, 1), **TOL)
        torch.testing.assert_close(c_n[rows], ref_c.transpose(0, 1), **TOL)


def test_shapes_as_outermost_module() -> None:
    lstm = bnn.VILSTM(3, 8, num_layers=2, bidirectional=True, batch_first=True)
    out, (h_n, c_n) = lstm(torch.randn(5, 7, 3), samples=4)
    assert out.shape == (4, 5, 7, 16)
    assert h_n.shape == c_n.shape == (4, 4, 5, 8)  # torch's, particle first
    gru = bnn.VIGRU(3, 8, batch_first=True)
    out, h_n = gru(torch.randn(5, 7, 3), (torch.zeros(1, 5, 8)), samples=2)
    assert out.shape == (2, 5, 7, 8)
    assert h_n.shape == (2, 1, 5, 8)
    # The last output step of a one-layer forward GRU is its final state.
    torch.testing.assert_close(out[:, :, -1], h_n[:, 0], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_site_names_and_shapes_like_torch(mode: str) -> None:
    options: dict[str, Any] = {"num_layers": 2, "bidirectional": True}
    if mode == "LSTM":
        options["proj_size"] = 3
    layer, reference = _pair(mode, options)
    sites = {v.site: tuple(v.shape) for v in layer.random_variables()}
    assert sites == {n: tuple(p.shape) for n, p in reference.named_parameters()}
    assert list(sites) == [n for n, _ in reference.named_parameters()]


def test_signatures_match_torch() -> None:
    # torch.nn.LSTM/GRU take (*args, **kwargs); their arguments are RNNBase's.
    signature_matches(bnn.VILSTM, nn.RNNBase.__init__)
    signature_matches(bnn.VIGRU, nn.RNNBase.__init__, exclude=("proj_size",))


def test_repr_and_reset() -> None:
    lstm = bnn.VILSTM(3, 8, 2, False, True, 0.5, True, 4)
    assert repr(lstm).startswith(
        "VILSTM(3, 8, proj_size=4, num_layers=2, bias=False, batch_first=True, "
        "dropout=0.5, bidirectional=True)"
    )
    with torch.no_grad():
        for p in lstm.parameters():
            p.fill_(3.0)
    lstm.reset_parameters()
    bound = 1 / 8**0.5  # torch: U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))
    for posterior in lstm.posterior.values():
        loc = posterior.loc.detach()
        assert float(loc.abs().max()) <= bound
        assert float(loc.std()) > bound / 4


def test_errors_say_what_to_do() -> None:
    assert not bnn.VILSTM(3, 4).batch_first  # torch's default
    with pytest.raises(ValueError, match="estimator='auto' or 'reparam'"):
        bnn.VILSTM(3, 4, batch_first=True, estimator="local")
    with pytest.raises(ValueError, match="estimator='auto' or 'reparam'"):
        bnn.VIGRU(3, 4, batch_first=True, estimator="flipout")
    with pytest.raises(ValueError, match="proj_size"):
        bnn.VILSTM(3, 4, batch_first=True, proj_size=4)
    for cls in (bnn.VILSTM, bnn.VIGRU):  # VIGRU's pointed into recurrent.py
        with pytest.warns(UserWarning, match="non-zero dropout expects") as caught:
            cls(3, 4, batch_first=True, dropout=0.5)
        assert caught[0].filename == __file__
    lstm = bnn.VILSTM(3, 4, batch_first=True)
    with pytest.raises(ValueError, match=r"expected batch-first input of shape"):
        lstm(torch.randn(7, 3))
    packed = pack_padded_sequence(torch.randn(2, 5, 2), [5, 3], batch_first=True)
    with pytest.raises(ValueError, match="PackedSequence input must have data"):
        lstm(packed)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"h0 must be in torch's layout"):
        lstm(torch.randn(2, 5, 3), (torch.zeros(2, 1, 4), torch.zeros(2, 1, 4)))


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_an_empty_sequence_is_refused_as_torch_refuses_it(
    mode: str, batch_first: bool
) -> None:
    """VIGRU raised "stack expects a non-empty TensorList", VILSTM returned an
    empty output; torch's GRU and LSTM both raise "Expected sequence length to
    be larger than 0"."""
    x = torch.randn(2, 0, 3) if batch_first else torch.randn(0, 2, 3)
    plain = getattr(nn, mode)(3, 4, batch_first=batch_first)
    with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
        plain(x)
    layer = getattr(bnn, f"VI{mode}")(3, 4, batch_first=batch_first)
    with pytest.raises(ValueError, match=r"sequence length larger than 0 \(as torch"):
        layer(x, samples=2)


def test_weights_drawn_once_per_particle_and_sequence() -> None:
    # The record holds one draw per weight tensor: (S, 1, *shape), the same at
    # every time step, so the KL counts each weight once.
    lstm = bnn.VILSTM(2, 3, batch_first=True)
    out, _ = lstm(torch.randn(4, 9, 2), samples=5)
    record = out.bnn_record
    assert record is not None
    sites = [v.site for v in lstm.random_variables()]
    assert sites == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    kl = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 100, kl="analytic")
    kl(out.sum((-1, -2)), torch.zeros(4))
    expected = torch.zeros(())
    for v in lstm.random_variables():
        q = torch.distributions.Normal(v.posterior.loc, v.posterior.scale())
        p = torch.distributions.Normal(0.0, 1.0)
        expected = expected + torch.distributions.kl_divergence(q, p).sum()
    torch.testing.assert_close(
        kl.last_kl * 100, expected.detach(), rtol=1e-5, atol=1e-4
    )


class _Classifier(bnn.VIModule):
    def __init__(self, mode: str, hidden: int = 16) -> None:
        super().__init__()
        cls = bnn.VILSTM if mode == "LSTM" else bnn.VIGRU
        self.rnn = cls(1, hidden, batch_first=True)
        self.head = bnn.VILinear(hidden, 2, estimator="reparam")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rnn(x)[0]
        return self.head(out[:, -1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_loss_equals_pyro_trace_elbo(mode: str) -> None:
    net = _Classifier(mode, hidden=5)
    x, y = torch.randn(6, 4, 1), torch.randint(0, 2, (6,))
    assert_loss_equals_pyro_elbo(net, x, y, dataset_size=50)


def test_lstm_learns_sequence_task() -> None:
    # Is the sum of a noisy sequence positive? The LSTM must integrate over time.
    torch.manual_seed(0)
    x_train, y_train = sign_of_sum(1024)
    x_test, y_test = sign_of_sum(512)
    net = _Classifier("LSTM")
    train_classifier(net, x_train, y_train, steps=150)
    assert accuracy(net, x_test, y_test) >= 0.9


@pytest.mark.parametrize("options", OPTIONS + LSTM_ONLY, ids=str)
@pytest.mark.parametrize("folded", [False, True], ids=["shared", "folded"])
@pytest.mark.parametrize("variable", [False, True], ids=["padded", "lengths"])
def test_lstm_gradients_equal_torch_per_particle(
    options: dict[str, Any], folded: bool, variable: bool
) -> None:
    # The LSTM recurrence has its own backward pass (BPTT by hand): gradients
    # for weights, input and initial states must be torch's autograd ones,
    # also for sequences of different lengths (torch: a PackedSequence).
    samples, batch, length = 3, 4, 6
    lengths = torch.tensor([6, 2, 5, 1]) if variable else None
    reference = nn.LSTM(5, 7, batch_first=True, **options)
    names = [n for n, _ in reference.named_parameters()]
    draws = {
        n: (torch.randn(samples, *p.shape) * 0.4).requires_grad_()
        for n, p in reference.named_parameters()
    }
    dirs = 2 if options.get("bidirectional") else 1
    layers, h_out = options.get("num_layers", 1), options.get("proj_size") or 7
    rows = batch * samples if folded else batch
    x = torch.randn(rows, length, 5, requires_grad=True)
    h0 = torch.randn(rows, layers * dirs, h_out, requires_grad=True)
    c0 = torch.randn(rows, layers * dirs, 7, requires_grad=True)

    def get(layer: int, suffix: str, kind: str) -> torch.Tensor | None:
        name = f"{kind}_l{layer}{suffix}"
        return draws.get(name)

    packed = [
        [
            tuple(get(layer, suffix, k) for k in KINDS)
            for suffix in ["", "_reverse"][:dirs]
        ]
        for layer in range(layers)
    ]
    out, h_n, c_n = recurrent("LSTM", x, packed, h0, c0, 0.0, False, batch, lengths)  # type: ignore[arg-type]
    probe = [torch.randn_like(t) for t in (out, h_n, c_n)]
    if lengths is not None:  # outputs past a sequence's end are not read
        valid = torch.arange(length) < lengths.repeat_interleave(samples)[:, None]
        probe[0] = probe[0] * valid.unsqueeze(-1)
    total = sum((t * p).sum() for t, p in zip((out, h_n, c_n), probe, strict=True))
    ours = torch.autograd.grad(total, [x, h0, c0, *draws.values()])
    theirs = [torch.zeros_like(g) for g in ours]
    for s in range(samples):
        idx = torch.arange(batch) * samples + s if folded else torch.arange(batch)
        ref_rows = torch.arange(batch) * samples + s
        with torch.no_grad():
            for name, p in reference.named_parameters():
                p.copy_(draws[name][s])
        xs, hs, cs = x[idx], h0[idx], c0[idx]
        if lengths is None:
            ref_out, (ref_h, ref_c) = reference(xs, _torch_state((hs, cs)))
        else:
            ref_packed, (ref_h, ref_c) = reference(
                pack_padded_sequence(
                    xs, lengths, batch_first=True, enforce_sorted=False
                ),
                _torch_state((hs, cs)),
            )
            ref_out, _ = pad_packed_sequence(
                ref_packed, batch_first=True, total_length=length
            )
        ref_total = (
            (ref_out * probe[0][ref_rows]).sum()
            + (ref_h.transpose(0, 1) * probe[1][ref_rows]).sum()
            + (ref_c.transpose(0, 1) * probe[2][ref_rows]).sum()
        )
        grads = torch.autograd.grad(
            ref_total, [x, h0, c0, *reference.parameters()], allow_unused=True
        )
        for k in range(3):
            theirs[k] = theirs[k] + grads[k]
        for k in range(len(names)):
            theirs[3 + k][s] = grads[3 + k]
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


class _FinalStates(bnn.VIModule):
    """A recurrent layer inside a network: torch's state layout in and out."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, ...]:
        _, final = self.rnn(x, state)
        states = final if isinstance(final, tuple) else (final,)
        # (layers * D, B * S, H) -> (B * S, layers * D, H): unfolded to (S, B, ...).
        return tuple(s.transpose(0, 1) for s in states)


class _TorchFinalStates(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, ...]:
        _, final = self.rnn(x, state)
        return final if isinstance(final, tuple) else (final,)


@pytest.mark.parametrize("folded", [False, True], ids=["shared", "folded"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_states_in_torch_layout_inside_a_network(mode: str, folded: bool) -> None:
    # Inside a network h0/c0 are torch's (layers * D, B, H) (shared) or
    # (layers * D, B * S, H) (folded: column b * S + s), and h_n/c_n come back
    # as (layers * D, B * S, H): per particle exactly torch's states.
    samples, batch, options = 3, 4, {"num_layers": 2, "bidirectional": True}
    layer, reference = _pair(mode, options)
    net, ref_net = _FinalStates(layer), _TorchFinalStates(reference)
    x = torch.randn(batch, 6, 5)
    rows = batch * samples if folded else batch
    h0, c0 = torch.randn(4, rows, 7), torch.randn(4, rows, 7)
    state = (h0, c0) if mode == "LSTM" else h0
    weights = fixed_weights(net, samples)
    finals = run_fixed(net, weights, samples, x, state)
    assert all(f.shape == (samples, batch, 4, 7) for f in finals)
    for s in range(samples):
        load_particle(ref_net, net, weights, s)
        cols = torch.arange(batch) * samples + s if folded else torch.arange(batch)
        ref_state = (h0[:, cols], c0[:, cols]) if mode == "LSTM" else h0[:, cols]
        with torch.no_grad():
            ref_finals = ref_net(x, ref_state)
        for final, ref_final in zip(finals, ref_finals, strict=True):
            torch.testing.assert_close(final[s], ref_final.transpose(0, 1), **TOL)


def test_last_layer_state_inside_a_network() -> None:
    # The torch idiom h_n[-1] reads the last layer's (backward direction's)
    # final state, folded (B * S, H), as for any activation inside a network.
    class Net(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = bnn.VILSTM(5, 7, num_layers=2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            _, (h_n, c_n) = self.rnn(x)
            assert h_n.shape == c_n.shape == (2, x.shape[0] * 3, 7)
            assert h_n.is_contiguous()
            return h_n[-1]

    net = Net()
    x = torch.randn(4, 6, 5)
    weights = fixed_weights(net, 3)
    last = run_fixed(net, weights, 3, x)
    out, _ = run_fixed(net.rnn, {k[4:]: v for k, v in weights.items()}, 3, x)
    torch.testing.assert_close(last, out[:, :, -1], rtol=0, atol=0)


def test_state_layout_errors_inside_a_network() -> None:
    net = _FinalStates(bnn.VIGRU(3, 4, num_layers=2, batch_first=True))
    message = (
        r"torch.s layout .*= \(2, 5 or 5 \* 3 = 15, 4\), or a final state .*; got "
    )
    with pytest.raises(ValueError, match=message + r"\(5, 2, 4\)"):
        net(torch.randn(5, 6, 3), torch.zeros(5, 2, 4), samples=3)  # batch-first
    wrong_batch = r"\(2, 6, 4\): 6 rows, and this call's batch is 5 \(15 rows folded"
    with pytest.raises(ValueError, match=message + wrong_batch):
        net(torch.randn(5, 6, 3), torch.zeros(2, 6, 4), samples=3)  # wrong batch


@pytest.mark.parametrize("keyword", [False, True], ids=["positional", "keyword"])
def test_torch_layout_inside_a_plain_module_root(keyword: bool) -> None:
    # A plain nn.Module holding two Bayesian layers is the network (its first
    # Bayesian layer opens the call): the LSTM inside it is not the outermost.
    class Net(nn.Module):
        samples = 3

        def __init__(self) -> None:
            super().__init__()
            self.rnn = bnn.VILSTM(5, 7, num_layers=2, batch_first=True)
            self.head = bnn.VILinear(7, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            _, (h_n, _) = self.rnn(x)
            assert h_n.shape == (2, 4 * 3, 7)
            return self.head(h_n[-1])  # type: ignore[no-any-return]

    x = torch.randn(4, 6, 5)
    out = Net()(x=x) if keyword else Net()(x)
    assert out.shape == (3, 4, 2)


@pytest.mark.parametrize("cls", [bnn.VILSTM, bnn.VIGRU])
@pytest.mark.parametrize("batch_first", [True, False])
def test_recurrent_layers_refuse_non_tensor_and_integer_inputs(
    cls: type[bnn.VILSTM], batch_first: bool
) -> None:
    """torch's ``Input dtypes must be the same``/``'list' object has no
    attribute 'dim'`` became an error naming the layer and the input."""
    layer = cls(4, 3, batch_first=batch_first)
    name = cls.__name__
    indices = torch.ones(2, 6, 4, dtype=torch.long)
    with pytest.raises(TypeError, match=rf"{name} expected a floating-point input"):
        layer(indices)
    with pytest.raises(
        TypeError, match=rf"{name} expected a torch.Tensor input, got list"
    ):
        layer(indices.tolist())  # type: ignore[arg-type]
    packed = pack_padded_sequence(indices, torch.tensor([6, 3]), batch_first=True)
    with pytest.raises(TypeError, match="floating-point PackedSequence input"):
        layer(packed)  # type: ignore[arg-type]
    x, state = indices.float(), torch.zeros(1, 2 if batch_first else 6, 3)
    integer = state.long()
    if cls is bnn.VILSTM:
        with pytest.raises(
            TypeError, match=r"floating-point h0, got dtype torch.int64"
        ):
            layer(x, (integer, state))
        with pytest.raises(
            TypeError, match=r"floating-point c0, got dtype torch.int64"
        ):
            layer(x, (state, integer))
    else:
        with pytest.raises(
            TypeError, match=r"floating-point h0, got dtype torch.int64"
        ):
            layer(x, integer)


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("cls", [bnn.VILSTM, bnn.VIGRU])
def test_packed_output_indices_are_torchs(
    cls: type[bnn.VIModule], enforce_sorted: bool
) -> None:
    """A packing without indices (``enforce_sorted=True``) came back with
    identity ``sorted_indices``/``unsorted_indices``; torch keeps ``None``."""
    lengths = torch.tensor([4, 3, 1]) if enforce_sorted else torch.tensor([3, 4, 1])
    x = pack_padded_sequence(
        torch.randn(3, 4, 2), lengths, batch_first=True, enforce_sorted=enforce_sorted
    )
    torch_cls = nn.LSTM if cls is bnn.VILSTM else nn.GRU
    expected, _ = torch_cls(2, 3, 2, batch_first=True, bidirectional=True)(x)
    got, _ = cls(2, 3, 2, batch_first=True, bidirectional=True)(x, samples=2)
    for name in ("sorted_indices", "unsorted_indices"):
        want, have = getattr(expected, name), getattr(got, name)
        if want is None:
            assert have is None, name
        else:
            assert have is not None, name
            assert torch.equal(have, want), name


class _LastStepClassifier(bnn.VIModule):
    def __init__(self, cls: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cls(3, 6, batch_first=True, estimator="reparam")
        self.head = bnn.VILinear(6, 2, estimator="reparam")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@pytest.mark.parametrize("cls", [bnn.VILSTM, bnn.VIGRU])
def test_a_training_step_under_bfloat16_autocast(cls: type[nn.Module]) -> None:
    """VILSTM's backward failed under autocast (bfloat16 and float32 mixed in
    its own recurrence); torch's nn.LSTM trains there. Gradients match the
    float32 step's to bfloat16 precision."""
    x, y = torch.randn(8, 5, 3), torch.randint(0, 2, (8,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 100)

    def gradients(autocast: bool) -> torch.Tensor:
        torch.manual_seed(0)
        net = _LastStepClassifier(cls)
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(net(x), y)
        loss.backward()
        grads = [p.grad for p in net.rnn.parameters()]
        assert all(g is not None and g.dtype == torch.float32 for g in grads)
        return torch.cat([g.flatten() for g in grads if g is not None])

    exact, low = gradients(False), gradients(True)
    assert bool(torch.isfinite(low).all())
    assert float((low - exact).norm() / exact.norm()) < 0.05


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_outputs_without_gradients_equal_those_with(
    mode: str, bidirectional: bool
) -> None:
    """Without gradients the recurrences keep no backward buffers (the LSTM
    reuses one step's, the GRU writes its outputs into one tensor): same
    numbers, padded sequences included."""
    torch.manual_seed(0)
    dirs = 2 if bidirectional else 1
    rows = {"LSTM": 4, "GRU": 3}[mode] * 4  # gates * hidden size 4

    def direction(inputs: int) -> tuple[Tensor | None, ...]:
        shapes = [(rows, inputs), (rows, 4), (rows,), (rows,)]
        drawn = [torch.randn(3, 1, *shape, requires_grad=True) for shape in shapes]
        return (*drawn, None)

    weights: Any = [
        [direction(inputs) for _ in range(dirs)] for inputs in (5, 4 * dirs)
    ]
    x = torch.randn(6, 7, 5)
    lengths = torch.tensor([7, 3])
    args = (mode, x, weights, None, None, 0.0, False, 2, lengths)
    with_grad = recurrent(*args)
    assert with_grad[0].requires_grad
    with torch.no_grad():
        without = recurrent(*args)
    for a, b in zip(with_grad, without, strict=True):
        if a is not None and b is not None:
            torch.testing.assert_close(b, a.detach(), rtol=0.0, atol=0.0)


def test_lstm_without_gradients_holds_no_backward_buffers() -> None:
    """The fused LSTM recurrence filled gate activations, cell states and their
    tanh for every step (6H numbers per position) under ``no_grad`` too, and
    ``predict``'s chunks overshot its memory budget 2-3.7x.

    Counted with :class:`AllocationPeak`: without gradients the call holds
    the shared input once per particle, the input projections (4H), the
    outputs of every step and their batch-first copy (H each), plus a few
    steps' worth of small buffers.
    """
    samples, batch, length, inputs, hidden = 4, 3, 200, 5, 8
    w = (
        torch.randn(samples, 1, 4 * hidden, inputs),
        torch.randn(samples, 1, 4 * hidden, hidden),
        torch.randn(samples, 1, 4 * hidden),
        torch.randn(samples, 1, 4 * hidden),
        None,
    )
    x = torch.randn(batch, length, inputs)
    with torch.no_grad(), AllocationPeak() as memory:
        recurrent("LSTM", x, [[w]], None, None, 0.0, False, batch)
    per_position = inputs + 4 * hidden + 2 * hidden  # input copy, gx, hs, output
    expected = 4 * samples * batch * (length + 1) * per_position
    few_steps = 4 * samples * batch * 4 * hidden * 8
    assert memory.peak <= expected + few_steps


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_lstm_higher_order_gradients_equal_finite_differences(packed: bool) -> None:
    """A gradient penalty ``||d out / dx||^2`` differentiated once more: the
    fused recurrence's backward handed its first-order gradients back as
    constants, so d penalty / dx was 0 everywhere, silently (probe of
    2026-12-02); finite differences of the penalty (float64, one fixed draw)
    are the reference."""
    import pyro

    torch.manual_seed(0)
    lstm = bnn.VILSTM(3, 4, batch_first=True, dtype=torch.float64)
    x0 = torch.randn(2, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([3, 2])

    def penalty(x: Tensor) -> Tensor:
        pyro.set_rng_seed(1)  # the same weights at every evaluation
        inputs: Any = x
        if packed:
            inputs = pack_padded_sequence(x, lengths, batch_first=True)
        _, (h_n, _) = lstm(inputs, samples=2)
        (grad,) = torch.autograd.grad(h_n.sum(), x, create_graph=True)
        return (grad**2).sum()

    x = x0.clone().requires_grad_()
    (ours,) = torch.autograd.grad(penalty(x), x)
    step = 1e-6
    expected = torch.zeros_like(x0)
    for i in range(x0.numel()):
        up, down = x0.clone(), x0.clone()
        up.view(-1)[i] += step
        down.view(-1)[i] -= step
        difference = penalty(up.requires_grad_()) - penalty(down.requires_grad_())
        expected.view(-1)[i] = difference.detach() / (2 * step)
    assert expected.abs().max() > 1e-3  # the penalty does depend on x
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("cls", [bnn.VILSTM, bnn.VIGRU])
def test_final_state_of_a_call_is_the_next_calls_initial_state(
    cls: type[bnn.VIModule], batch_first: bool
) -> None:
    """A language model carries its hidden state to the next batch
    (``repackage_hidden``): the state as a call returns it, ``(S, layers * D,
    B, H)``, was refused as ``h0``, and the reshapes a user would try next
    mixed the particles. Each particle now starts from its own state: equal
    to a call of one particle with its weights and ``h0 = h_n[s]``."""
    samples, batch, length = 3, 2, 4
    layer = cls(3, 5, num_layers=2, bidirectional=True, batch_first=batch_first)
    shape = (batch, length, 3) if batch_first else (length, batch, 3)
    first, second = torch.randn(shape), torch.randn(shape)
    _, state = layer(first, samples=samples)
    state = tuple(s.detach() for s in state) if cls is bnn.VILSTM else state.detach()
    weights = fixed_weights(layer, samples)
    out, _ = run_fixed(layer, weights, samples, second, state)
    for s in range(samples):
        own = {site: value[s : s + 1] for site, value in weights.items()}
        h0 = tuple(t[s] for t in state) if cls is bnn.VILSTM else state[s]
        expected, _ = run_fixed(layer, own, 1, second, h0)
        torch.testing.assert_close(out[s], expected[0], **TOL)


class _CarriedStates(bnn.VIModule):
    """A recurrent layer inside a network, its final states returned as they are."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: Tensor, state: Any = None) -> Any:
        return self.rnn(x, state)[1]


@pytest.mark.parametrize("network", [False, True], ids=["outermost", "in_network"])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (bnn.VILSTM, {}),
        (bnn.VILSTM, {"num_layers": 2, "bidirectional": True, "proj_size": 3}),
        (bnn.VIGRU, {}),
        (bnn.VIGRU, {"num_layers": 2, "bidirectional": True}),
    ],
)
def test_a_final_state_of_another_batch_is_refused(
    cls: type[bnn.VIModule],
    options: dict[str, Any],
    batch_first: bool,
    network: bool,
) -> None:
    """A carried final state ``(S, layers * D, B', H)`` given to a call of
    batch ``B = B' * S`` was folded to ``(layers * D, B' * S, H)`` before its
    batch was checked, then read as torch's shared ``(layers * D, B, H)``:
    example ``b`` started from example ``b // S``'s state under particle
    ``b % S``, silently (probe timeseries f2). Any batch but the call's is
    refused, naming the user's shape and both batches; a smaller last batch
    (truncated BPTT, a loader without ``drop_last``) is told to slice the
    state."""
    samples, batch, length = 3, 2, 4
    layer = cls(3, 5, batch_first=batch_first, **options)
    module = _CarriedStates(layer) if network else layer

    def call(rows: int, state: Any = None) -> Any:
        shape = (rows, length, 3) if batch_first else (length, rows, 3)
        out = module(torch.randn(shape), state, samples=samples)
        return out if network else out[1]

    state = call(batch)
    first = state[0] if isinstance(state, tuple) else state
    assert first.shape[::2] == (samples, batch)
    shape = re.escape(str(tuple(first.shape)))
    for rows in (batch * samples, batch + 1):
        with pytest.raises(
            ValueError,
            match=rf"h0 .*; got {shape}: a final state of a batch of {batch}, "
            rf"and this call's batch is {rows}$",
        ):
            call(rows, state)
    with pytest.raises(
        ValueError,
        match=rf"got {shape}: .* batch is 1 \(a loader's last, smaller batch\? "
        r"slice the state to the call's batch, h0\[:, :, :1\], or give the "
        r"DataLoader drop_last=True\)",
    ):
        call(1, state)
    sliced = tuple(s[:, :, :1] for s in state) if cls is bnn.VILSTM else state[:, :, :1]
    call(1, sliced)  # the remedy runs
    call(batch, state)  # the call's own batch: each particle's state
    with pytest.raises(ValueError, match=r"final state of 3 particles, .* draws 2"):
        module(
            torch.randn((batch, length, 3) if batch_first else (length, batch, 3)),
            state,
            samples=2,
        )


def test_particles_moved_into_the_features_are_named() -> None:
    """torch's tutorial tagger, ``embeds.view(len(sentence), 1, -1)`` after a
    Bayesian embedding: the error told the user to add a batch dimension of
    size 1, which the input had; it now names the reshape that moved the
    particles into the features."""

    class Tagger(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.lstm = bnn.VIEmbedding(9, 6), bnn.VILSTM(6, 4)

        def forward(self, sentence: Tensor) -> Tensor:
            embeds = self.embed(sentence)
            out, _ = self.lstm(embeds.view(len(sentence), 1, -1))
            return out  # type: ignore[no-any-return]

    with pytest.raises(ValueError, match=r"2 particles x 6 features.*x\.shape\[0\]"):
        Tagger()(torch.randint(9, (5,)), samples=2)
    with pytest.raises(ValueError, match="add a batch dimension of size 1"):
        bnn.VILSTM(6, 4)(torch.randn(5, 6), samples=2)


def test_lstm_keeps_its_input_projections_only_for_higher_order_gradients() -> None:
    """The twice-differentiable backward needs the input projections ``gx``
    (``4H`` numbers per position and particle): kept in every training step
    they took 35 % more memory (probe of 2026-12-02). They are kept in a
    call whose inputs require gradients only; elsewhere a backward pass with
    ``create_graph=True`` says so instead of returning wrong gradients."""
    samples, batch, length, hidden = 4, 3, 50, 8
    lstm = bnn.VILSTM(5, hidden, batch_first=True)
    x = torch.randn(batch, length, 5)

    def held_after_forward(inputs: Tensor) -> tuple[int, Tensor]:
        with AllocationPeak() as memory:
            out, _ = lstm(inputs, samples=samples)
        return memory.live, out

    plain, out = held_after_forward(x)
    wanted, _ = held_after_forward(x.clone().requires_grad_())
    projections = 4 * samples * batch * length * 4 * hidden  # float32 bytes
    assert wanted - plain >= 0.9 * projections
    params = [p for p in lstm.parameters() if p.requires_grad]
    with pytest.raises(RuntimeError, match=r"x\.requires_grad_"):
        torch.autograd.grad(out.sum(), params, create_graph=True)


@pytest.mark.parametrize("cell", [bnn.VILSTM, bnn.VIGRU])
def test_torch_func_transforms_differentiate_the_recurrent_layers(
    cell: type[nn.Module],
) -> None:
    """``torch.func.grad`` and ``jacrev`` through VILSTM raised torch's error
    that the fused recurrence's autograd Function needs ``setup_context``
    (meta-learning inner loops, per-example Jacobians). Under the transforms
    the layers take autograd's own ops: the parameter gradient and the input
    Jacobian equal plain autograd's at the same draws (float64, 1e-10)."""
    layer = cell(3, 4, batch_first=True, bidirectional=True).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    params = {n: p.detach() for n, p in layer.named_parameters()}

    def loss(weights: dict[str, Tensor], inputs: Tensor) -> Tensor:
        torch.manual_seed(1)
        out, _ = torch.func.functional_call(layer, weights, (inputs,), {"samples": 3})
        return (out**2).sum()

    transformed = torch.func.grad(loss)(params, x)
    live = dict(layer.named_parameters())
    plain = torch.autograd.grad(loss(live, x), list(live.values()))
    for name, expected in zip(params, plain, strict=True):
        torch.testing.assert_close(transformed[name], expected, rtol=1e-10, atol=1e-10)

    def outputs(inputs: Tensor) -> Tensor:
        torch.manual_seed(1)
        return layer(inputs, samples=3)[0]  # type: ignore[no-any-return]

    jacobian = torch.func.jacrev(outputs)(x)
    expected_jacobian = torch.autograd.functional.jacobian(outputs, x)
    torch.testing.assert_close(jacobian, expected_jacobian, rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings(  # torch's forward AD scripts its decompositions once
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)
def test_forward_mode_ad_runs_through_the_lstm() -> None:
    """A dual tensor of ``torch.autograd.forward_ad`` reached the fused
    recurrence's autograd Function, which has no ``jvp``: torch's
    NotImplementedError. Under forward AD the layer takes autograd's own ops:
    the tangent equals reverse mode's Jacobian-vector product at the same
    draws (float64, 1e-10), the posterior's parameters trainable."""
    layer = bnn.VILSTM(3, 4, batch_first=True, bidirectional=True).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    direction = torch.randn_like(x)

    def outputs(inputs: Tensor) -> Tensor:
        torch.manual_seed(1)
        return layer(inputs, samples=3)[0]  # type: ignore[no-any-return]

    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, direction)
        tangent = torch.autograd.forward_ad.unpack_dual(outputs(dual)).tangent
    _, expected = torch.autograd.functional.jvp(outputs, x, direction)
    torch.testing.assert_close(tangent, expected, rtol=1e-10, atol=1e-10)


class _SubSequences(bnn.VIModule):
    """Runs its recurrence over the ``B * T`` sub-sequences of a ``(B, T, L, F)``
    input, from a state the caller gives for each of them."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor, state: Any) -> Tensor:
        batch, steps, length, features = x.shape
        out: Tensor = self.layer(x.reshape(batch * steps, length, features), state)[0]
        return out


@pytest.mark.parametrize("steps", [3, 2])  # 2: B * T is the folded B * S
@pytest.mark.parametrize("cls", [bnn.VILSTM, bnn.VIGRU])
def test_a_state_of_the_layers_own_batch_is_taken_inside_a_network(
    cls: type[bnn.VIModule], steps: int
) -> None:
    """A recurrent layer inside a network that moves positions into the batch
    (``(B, T, L, F)`` to ``(B * T, L, F)``) refused torch's ``(layers, B * T,
    H)`` state, checked against the outermost call's batch ``B`` (probe
    falsepos16), where ``torch.nn`` takes it. The state's rows are now
    checked against the layer's own input: shared by the particles, it gives
    what each particle's copy of it gives; one of the outermost batch ``B``
    is refused."""
    samples, batch, size = 2, 2, 5
    net = _SubSequences(cls(3, size, num_layers=2, batch_first=True))
    x = torch.randn(batch, steps, 4, 3)
    rows = batch * steps

    def state(*shape: int) -> Any:
        h = torch.randn(*shape, size)
        return (h, torch.randn(*shape, size)) if cls is bnn.VILSTM else h

    def each(s: Any) -> Any:  # every particle's copy of a shared state
        if isinstance(s, tuple):
            return tuple(each(t) for t in s)
        return s.expand(samples, *s.shape).contiguous()

    def run(s: Any) -> Tensor:
        torch.manual_seed(1)
        out: Tensor = net(x, s, samples=samples)
        return out

    shared = state(2, rows)
    out = run(shared)
    assert out.shape == (samples, rows, 4, size)
    torch.testing.assert_close(out, run(each(shared)), rtol=0, atol=0)
    with pytest.raises(ValueError, match=rf"got \(2, {batch}, {size}\): {batch} rows"):
        run(state(2, batch))
