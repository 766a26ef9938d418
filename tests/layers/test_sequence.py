"""Sequence-first layouts (``batch_first=False``) of the sequence layers.

At fixed weights every particle equals the torch layer with
``batch_first=False`` (tolerance 1e-5, float32 round-off of the same
arithmetic in another order): as the outermost module (outputs
``(S, L, B, ...)``, attention weights ``(S, B, Lq, Lk)``, states
``(S, layers * D, B, H)``), and inside a sequence-first network whose
activations are folded into the sequence dimension ``(L * S, B, ...)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pytest
import torch
from _sequence_helpers import fixed_weights, run_fixed
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import pyrolite_bnn as bnn
from pyrolite_bnn.layers.functional import current_samples

TOL = {"rtol": 1e-5, "atol": 1e-5}
B, LQ, LK, E, HEADS, SAMPLES = 3, 5, 7, 8, 2, 3
CAUSAL = torch.ones(LQ, LQ, dtype=torch.bool).triu(1)
PADDING = torch.zeros(B, LK, dtype=torch.bool)
PADDING[0, -2:] = True


def _tensors(value: Any) -> list[Tensor]:
    """The tensors of a (nested) output, in order."""
    if isinstance(value, tuple | list):
        return [t for item in value for t in _tensors(item)]
    return [] if value is None else [value]


def _torch_at(layer: bnn.VIModule, weights: dict[str, Tensor], s: int) -> nn.Module:
    """``bnn.to_deterministic(layer)`` with particle ``s``'s weights."""
    plain = bnn.to_deterministic(layer).eval()
    with torch.no_grad():
        for site, value in weights.items():
            plain.get_parameter(site).copy_(value[s, 0])
    return plain


def _check_root(layer: bnn.VIModule, *args: Any, **kwargs: Any) -> list[Tensor]:
    """Outermost call == torch per particle, S particles and one."""
    layer.eval()
    weights = fixed_weights(layer, SAMPLES)
    out = _tensors(run_fixed(layer, weights, SAMPLES, *args, **kwargs))
    for s in range(SAMPLES):
        with torch.no_grad():
            expected = _tensors(_torch_at(layer, weights, s)(*args, **kwargs))
        assert len(out) == len(expected)
        for got, want in zip(out, expected, strict=True):
            torch.testing.assert_close(got[s], want, **TOL)
    one = {k: v[:1] for k, v in weights.items()}
    single = _tensors(run_fixed(layer, one, 1, *args, **kwargs))
    for got, want in zip(single, out, strict=True):
        torch.testing.assert_close(got[0], want[0], **TOL)
    return out


@pytest.mark.parametrize(
    "options",
    [{}, {"add_bias_kv": True, "add_zero_attn": True}, {"kdim": 4, "vdim": 6}],
)
@pytest.mark.parametrize(
    "call",
    [
        {},
        {"key_padding_mask": PADDING, "average_attn_weights": False},
        {"attn_mask": torch.rand(LQ, LK) > 0.8, "key_padding_mask": PADDING},
        {"attn_mask": torch.randn(B * HEADS, LQ, LK), "need_weights": False},
    ],
)
def test_attention_equals_torch(options: dict[str, Any], call: dict[str, Any]) -> None:
    layer = bnn.VIMultiheadAttention(E, HEADS, **options)  # torch's default layout
    assert not layer.batch_first
    query = torch.randn(LQ, B, E)
    key = torch.randn(LK, B, options.get("kdim", E))
    value = torch.randn(LK, B, options.get("vdim", E))
    out = _check_root(layer, query, key, value, **call)
    assert out[0].shape == (SAMPLES, LQ, B, E)
    if call.get("need_weights", True):
        heads = () if call.get("average_attn_weights", True) else (HEADS,)
        extra = int(options.get("add_bias_kv", False)) + int(
            options.get("add_zero_attn", False)
        )
        assert out[1].shape == (SAMPLES, B, *heads, LQ, LK + extra)


def test_causal_self_attention_equals_torch() -> None:
    x = torch.randn(LQ, B, E)
    layer = bnn.VIMultiheadAttention(E, HEADS)
    out = _check_root(
        layer, x, x, x, attn_mask=CAUSAL, is_causal=True, need_weights=False
    )
    assert len(out) == 1  # the fused kernel's causal path; no weights
    out = _check_root(layer, x, x, x, attn_mask=CAUSAL, is_causal=True)
    assert out[1].shape == (SAMPLES, B, LQ, LQ)


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (bnn.VILSTM, {"num_layers": 2, "bidirectional": True, "proj_size": 2}),
        (bnn.VILSTM, {"bias": False}),
        (bnn.VIGRU, {"num_layers": 2, "bidirectional": True}),
    ],
)
@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning")
def test_recurrent_equals_torch_with_states(
    cls: type[bnn.VIModule], options: dict[str, Any], initial: bool
) -> None:
    hidden, length = 5, 6
    layer = cls(3, hidden, **options)
    x = torch.randn(length, B, 3)
    states = options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1)
    h_out = options.get("proj_size") or hidden
    args: tuple[Any, ...] = (x,)
    if initial:
        h0 = torch.randn(states, B, h_out)
        args = (x, (h0, torch.randn(states, B, hidden)) if cls is bnn.VILSTM else h0)
    out = _check_root(layer, *args)
    directions = 2 if options.get("bidirectional") else 1
    assert out[0].shape == (SAMPLES, length, B, directions * h_out)
    assert out[1].shape == (SAMPLES, states, B, h_out)  # torch's, particle first


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_layers_equal_torch(norm_first: bool) -> None:
    src, tgt = torch.randn(LK, B, E), torch.randn(LQ, B, E)
    options = {"dropout": 0.0, "norm_first": norm_first}
    encoder_layer = bnn.VITransformerEncoderLayer(E, HEADS, 16, **options)
    out = _check_root(encoder_layer, src, src_key_padding_mask=PADDING)
    assert out[0].shape == (SAMPLES, LK, B, E)
    decoder_layer = bnn.VITransformerDecoderLayer(E, HEADS, 16, **options)
    out = _check_root(
        decoder_layer,
        tgt,
        src,
        tgt_mask=CAUSAL,
        tgt_is_causal=True,
        memory_key_padding_mask=PADDING,
    )
    assert out[0].shape == (SAMPLES, LQ, B, E)


def test_stacks_and_transformer_equal_torch() -> None:
    src, tgt = torch.randn(LK, B, E), torch.randn(LQ, B, E)

    def encoder_layer() -> bnn.VITransformerEncoderLayer:
        return bnn.VITransformerEncoderLayer(E, HEADS, 16, dropout=0.0)

    def decoder_layer() -> bnn.VITransformerDecoderLayer:
        return bnn.VITransformerDecoderLayer(E, HEADS, 16, dropout=0.0)

    encoder = bnn.VITransformerEncoder(encoder_layer(), 2, nn.LayerNorm(E))
    _check_root(encoder, src, mask=torch.rand(LK, LK) > 0.8)
    decoder = bnn.VITransformerDecoder(decoder_layer(), 2)
    _check_root(decoder, tgt, src, tgt_mask=CAUSAL)
    # Source and target of different lengths (the layers run batch-first).
    model = bnn.VITransformer(E, HEADS, 2, 1, 16, dropout=0.0)
    out = _check_root(model, src, tgt, tgt_mask=CAUSAL, src_key_padding_mask=PADDING)
    assert out[0].shape == (SAMPLES, LQ, B, E)
    with pytest.raises(RuntimeError, match="batch number of src and tgt"):
        model(src, tgt[:, :2])


class _Tagger(bnn.VIModule):
    """A sequence-first network: every activation folded ``(L * S, B, ...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = bnn.VILinear(3, E)
        self.encoder = bnn.VITransformerEncoder(
            bnn.VITransformerEncoderLayer(E, HEADS, 16, dropout=0.0), 1
        )
        self.attention = bnn.VIMultiheadAttention(E, HEADS)
        self.lstm = bnn.VILSTM(E, 4, num_layers=2)
        self.head = bnn.VILinear(4, 2)

    def forward(self, x: Tensor, shared: Tensor) -> Tensor:
        h = self.encoder(self.embed(x))
        # folded query, shared key/value (the raw second input)
        h = h + self.attention(h, shared, shared, need_weights=False)[0]
        zeros = torch.zeros(2, x.shape[1], 4)  # shared initial states
        out, (h_n, _) = self.lstm(h, (zeros, zeros))
        # torch's state layout with the batch folded
        assert h_n.shape == (2, x.shape[1] * current_samples(), 4)
        return self.head(out)  # type: ignore[no-any-return]


def test_inside_a_sequence_first_network() -> None:
    """Each particle equals the same network built from torch layers."""
    net = _Tagger().eval()
    x, shared = torch.randn(LQ, B, 3), torch.randn(LQ, B, E)
    weights = fixed_weights(net, SAMPLES)
    out = run_fixed(net, weights, SAMPLES, x, shared)
    assert out.shape == (SAMPLES, LQ, B, 2)
    for s in range(SAMPLES):

        def plain(name: str, s: int = s) -> nn.Module:
            prefix = name + "."
            mine = {
                k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)
            }
            return _torch_at(getattr(net, name), mine, s)

        with torch.no_grad():
            h = plain("encoder")(plain("embed")(x))
            h = h + plain("attention")(h, shared, shared, need_weights=False)[0]
            zeros = torch.zeros(2, B, 4)
            expected = plain("head")(plain("lstm")(h, (zeros, zeros))[0])
        torch.testing.assert_close(out[s], expected, **TOL)


def test_other_lengths_inside_a_network_are_refused() -> None:
    """Inside a sequence-first network an intermediate sequence of a length no
    input of the network has is ambiguous (folded or shared?) and refused; the
    network's own inputs, and intermediates of their lengths, are shared."""

    class CrossAttention(bnn.VIModule):
        def __init__(self, memory_from_input: str) -> None:
            super().__init__()
            self.embed = nn.Linear(E, E)
            self.memory_from_input = memory_from_input
            self.attention = bnn.VIMultiheadAttention(E, HEADS)

        def forward(self, x: Tensor, memory: Tensor) -> Tensor:
            if self.memory_from_input == "scaled":  # its length: an input's
                memory = memory * 2.0
            elif self.memory_from_input == "cut":  # a length no input has
                memory = memory[:4]
            return self.attention(self.embed(x), memory, memory)[0]  # type: ignore[no-any-return]

    x, memory = torch.randn(LQ, B, E), torch.randn(LK, B, E)
    with pytest.raises(ValueError, match=r"batch_first=True"):
        CrossAttention("cut")(x, memory, samples=2)
    # the same lengths are fine
    net = CrossAttention("scaled")
    assert net(x, torch.randn(LQ, B, E), samples=2).shape == (2, LQ, B, E)
    # a network input of another length (or an intermediate of its length) is
    # shared by the particles: the network computes what its attention layer
    # computes as outermost module
    for how, given in (("input", memory), ("scaled", memory * 2.0)):
        net = CrossAttention(how)
        torch.manual_seed(0)
        out = net(x, memory, samples=3)
        torch.manual_seed(0)
        ref = net.attention(net.embed(x), given, given, samples=3)[0]
        torch.testing.assert_close(out, ref)


def test_wrong_layout_errors_name_the_layout() -> None:
    with pytest.raises(ValueError, match=r"\(sequence, batch, 8\)"):
        bnn.VIMultiheadAttention(E, HEADS)(
            torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
        )
    with pytest.raises(
        ValueError, match=r"batch_first=False\) expected sequence-first input"
    ):
        bnn.VIGRU(3, 4)(torch.randn(5, 3))
    with pytest.raises(ValueError, match="h0 must be in torch's layout"):
        bnn.VIGRU(3, 4)(torch.randn(5, B, 3), torch.randn(B, 1, 4))


def test_plain_encoder_or_decoder_in_a_sequence_first_transformer() -> None:
    """A plain encoder sees the shared source (target of another length); a plain
    decoder after a Bayesian encoder would read the folded memory as one longer
    sequence: refused."""
    src, tgt = torch.randn(LK, B, E), torch.randn(LQ, B, E)
    plain_encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(E, HEADS, 16, dropout=0.0),
        1,
        enable_nested_tensor=False,
    )
    decoder = bnn.VITransformerDecoder(
        bnn.VITransformerDecoderLayer(E, HEADS, 16, dropout=0.0), 1
    )
    model = bnn.VITransformer(
        E, HEADS, custom_encoder=plain_encoder, custom_decoder=decoder
    ).eval()
    weights = fixed_weights(model, SAMPLES)
    out = run_fixed(model, weights, SAMPLES, src, tgt, tgt_mask=CAUSAL)
    assert out.shape == (SAMPLES, LQ, B, E)
    for s in range(SAMPLES):
        plain = _torch_at(model, weights, s)
        with torch.no_grad():
            expected = plain(src, tgt, tgt_mask=CAUSAL)
        torch.testing.assert_close(out[s], expected, **TOL)
    plain_decoder = nn.TransformerDecoder(
        nn.TransformerDecoderLayer(E, HEADS, 16, dropout=0.0), 1
    )
    encoder = bnn.VITransformerEncoder(
        bnn.VITransformerEncoderLayer(E, HEADS, 16, dropout=0.0), 1
    )
    model = bnn.VITransformer(
        E, HEADS, custom_encoder=encoder, custom_decoder=plain_decoder
    )
    with pytest.raises(ValueError, match="attend across particles"):
        model(src, tgt, samples=2)


def test_output_without_the_sequence_dimension_is_refused() -> None:
    """The outermost call of a sequence-first network unfolds dimension 0 as the
    sequence: a classifier on ``h_n[-1]`` (``(B * S, C)``) cannot be unfolded."""

    class LastState(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.head = bnn.VILSTM(3, 4), bnn.VILinear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            _, (h_n, _) = self.lstm(x)
            return self.head(h_n[-1])  # type: ignore[no-any-return]

    with pytest.raises(ValueError, match=r"no sequence dimension.*batch_first=True"):
        LastState()(torch.randn(LQ, B, 3), samples=2)
    # B * S == L: the (B * S, C) output has the leading size of a shared
    # sequence-first output; it is refused all the same, not misread.
    with pytest.raises(ValueError, match=r"no sequence dimension.*batch_first=True"):
        LastState()(torch.randn(6, 3, 3), samples=2)


@pytest.mark.parametrize(
    ("length", "batch", "classes"),
    [(12, 1, 1), (7, 2, 2), (12, 2, 1)],
    ids=["one series", "C == B", "C != B"],
)
def test_head_on_a_pick_of_the_sequence_fold_is_refused(
    length: int, batch: int, classes: int
) -> None:
    """torch's seq-first forecaster ``fc(out[-1])``: ``out[-1]`` is the last
    row of the ``(L * S, B, H)`` fold, one particle's. With ``C == B`` (one
    series, one output) the output passed the check for a sequence
    dimension and every particle ran on the last particle's features,
    silently (probe of 2026-12-02); the head now refuses the pick."""

    class Forecaster(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.fc = bnn.VILSTM(3, 5), bnn.VILinear(5, classes)

        def forward(self, x: Tensor) -> Tensor:
            out, _ = self.lstm(x)
            return self.fc(out[-1])  # type: ignore[no-any-return]

    with pytest.raises(ValueError, match=r"out\[-1\].*batch_first=True"):
        Forecaster()(torch.randn(length, batch, 3), samples=4)


def test_decoder_stepping_through_a_target_names_batch_first() -> None:
    """A teacher-forced decoder step ``emb(tgt[t : t + 1])`` of a
    sequence-first seq2seq: the error named sizes only, calling lengths batch
    sizes (the concepts page says it names ``batch_first=True``)."""

    class Seq2Seq(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.decoder = bnn.VIGRU(3, 4), bnn.VIGRU(3, 4)
            self.project = bnn.VILinear(3, 3)

        def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
            _, h = self.encoder(src)
            steps = []
            for t in range(tgt.shape[0]):
                out, h = self.decoder(self.project(tgt[t : t + 1]), h)
                steps.append(out)
            return torch.cat(steps)

    with pytest.raises(ValueError, match=r"leading size 1.*batch_first=True"):
        Seq2Seq()(torch.randn(5, 3, 3), torch.randn(4, 3, 3), samples=2)


def test_decoder_layer_as_custom_decoder() -> None:
    """A single decoder layer as ``custom_decoder`` gets the model's
    ``tgt_is_causal=None`` (torch's default for the model): read as ``False``."""
    src, tgt = torch.randn(LK, B, E), torch.randn(LQ, B, E)
    decoder = bnn.VITransformerDecoderLayer(E, HEADS, 16, dropout=0.0)
    model = bnn.VITransformer(E, HEADS, 1, 1, 16, 0.0, custom_decoder=decoder)
    assert model(src, tgt, samples=2).shape == (2, LQ, B, E)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True:UserWarning")
def test_converted_sequence_first_transformer_equals_torch_at_the_means() -> None:
    """``bnn.convert`` of torch's default (sequence-first) Transformer: at the
    posterior means (the torch weights) it is the torch module."""
    torch.manual_seed(0)
    reference = nn.Transformer(E, HEADS, 1, 1, 16, dropout=0.0).eval()
    net = bnn.convert(reference)
    assert isinstance(net, bnn.VITransformer)
    assert not net.batch_first
    means = {v.site: v.posterior.loc[None, None] for v in net.random_variables()}
    src, tgt = torch.randn(LK, B, E), torch.randn(LQ, B, E)
    out = run_fixed(net, means, 1, src, tgt, tgt_mask=CAUSAL)
    with torch.no_grad():
        expected = reference(src, tgt, tgt_mask=CAUSAL)
    torch.testing.assert_close(out[0], expected, **TOL)
    back = bnn.to_deterministic(net)
    with torch.no_grad():
        torch.testing.assert_close(back(src, tgt, tgt_mask=CAUSAL), expected, **TOL)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.MultiheadAttention(4, 2),
        lambda: nn.LSTM(4, 4),
        lambda: nn.TransformerEncoderLayer(4, 2, 8, 0.0),
    ],
    ids=["attention", "lstm", "encoder_layer"],
)
def test_plain_sequence_first_layer_after_a_bayesian_one_is_refused(
    make: Callable[[], nn.Module],
) -> None:
    """A plain torch layer that mixes positions would read the particles folded
    into the sequence dimension as one longer sequence: refused after a
    Bayesian layer; before one (shared input) it runs on a batch-first
    network's transposed input."""

    def mix(module: nn.Module, h: Tensor) -> Tensor:
        attention = isinstance(module, nn.MultiheadAttention)
        out = module(h, h, h) if attention else module(h)
        return out[0] if isinstance(out, tuple) else out

    class After(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.mod = bnn.VILinear(4, 4), make()

        def forward(self, x: Tensor) -> Tensor:
            return mix(self.mod, self.lin(x))

    class Before(After):
        def forward(self, x: Tensor) -> Tensor:  # x: (B, L, 4)
            h = mix(self.mod, x.transpose(0, 1)).transpose(0, 1)
            return self.lin(h)  # type: ignore[no-any-return]

    x = torch.randn(5, 3, 4)
    with pytest.raises(ValueError, match=r"batch_first=False\) inside a Bayesian"):
        After()(x, samples=2)
    assert Before()(x, samples=2).shape == (2, 5, 3, 4)


def _mix(module: nn.Module, h: Tensor) -> Tensor:
    """A plain position-mixing layer's output sequence."""
    attention = isinstance(module, nn.MultiheadAttention)
    out = module(h, h, h) if attention else module(h)
    return out[0] if isinstance(out, tuple) else out  # type: ignore[no-any-return]


class _PlainMixing(nn.Module):
    """``Linear -> plain mixing layer -> [GRU] -> Linear`` over ``(L, B, 3)``.

    Converted with the mixing layer kept plain; the ``GRU``, converted, makes
    the network sequence-first.
    """

    def __init__(self, make: Callable[[], nn.Module], sequence_first: bool) -> None:
        super().__init__()
        self.inp, self.mix = nn.Linear(3, 4), make()
        self.post = nn.GRU(4, 4) if sequence_first else None
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = _mix(self.mix, self.inp(x))
        if self.post is not None:
            h = self.post(h)[0]
        return self.head(h)  # type: ignore[no-any-return]


class _TransposedMixing(_PlainMixing):
    """Batch-first ``(B, L, 3)``: the plain layer reads the activation transposed."""

    def forward(self, x: Tensor) -> Tensor:
        h = _mix(self.mix, self.inp(x).transpose(0, 1)).transpose(0, 1)
        return self.head(h)  # type: ignore[no-any-return]


_MIXING = pytest.mark.parametrize(
    "make",
    [
        lambda: nn.MultiheadAttention(4, 2),
        lambda: nn.GRU(4, 4),
        lambda: nn.LSTM(4, 4),
        lambda: nn.TransformerEncoderLayer(4, 2, 8, 0.0),
    ],
    ids=["attention", "gru", "lstm", "encoder_layer"],
)


@_MIXING
@pytest.mark.parametrize(("length", "samples"), [(3, 2), (2, 3)])
def test_plain_layer_reading_folded_positions_is_refused_when_they_are_the_batch(
    make: Callable[[], nn.Module], length: int, samples: int
) -> None:
    """With ``B == L * S`` the folded ``(L * S, B, ...)`` input of a plain
    ``batch_first=False`` layer was taken for ``(L', B * S, ...)`` and ran,
    mixing the particles (0.03 off the plain model at posterior std ~0, up
    to 0.23 with std 0.3; realistic sizes: B = 64, L = 8, S = 8). In a
    sequence-first network it is refused as for any other batch; without a
    Bayesian sequence-first layer the input can also be a transposed
    batch-first activation, and the refusal says the two cannot be told
    apart (another batch is refused as before)."""
    torch.manual_seed(0)
    batch = length * samples
    x = torch.randn(length, batch, 3)
    folded = rf"sequence dimension holds the {samples} particles folded.*batch {batch}"
    for sequence_first in (True, False):
        plain = _PlainMixing(make, sequence_first=sequence_first)
        net = bnn.convert(plain, exclude=["mix"])
        with pytest.raises(ValueError, match="sequence dimension holds"):
            net(torch.randn(length, batch + 1, 3), samples=samples)
        match = folded if sequence_first else r"(?s)cannot be told apart.*another"
        with pytest.raises(ValueError, match=match):
            net(x, samples=samples)


@_MIXING
def test_transposed_activation_as_long_as_the_folded_batch_is_refused_as_ambiguous(
    make: Callable[[], nn.Module],
) -> None:
    """The other reading of that input: a batch-first network transposing its
    folded ``(B * S, L, ...)`` activation for the plain layer, with ``L ==
    B * S``, which is right; its shapes are those of a sequence-first input
    ``(B, L)`` folded into dimension 0, so it is refused, and runs with
    another number of samples."""
    torch.manual_seed(0)
    net = bnn.convert(_TransposedMixing(make, sequence_first=False), exclude=["mix"])
    x = torch.randn(3, 6, 3)  # B = 3, L = 6 = B * S at S = 2
    with pytest.raises(ValueError, match=r"(?s)cannot be told apart.*another"):
        net(x, samples=2)
    assert net(x, samples=3).shape == (3, 3, 6, 2)


class _PlainFirst(nn.Module):
    """A sequence-first recurrent layer, then a head: ``(L, B, 3) -> (L, B, 2)``."""

    def __init__(self, rnn: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.rnn, self.head = rnn, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x)[0])  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("rnn", "remedy"),
    [(nn.GRU, r"Make it Bayesian \(bnn\.VIGRU\)"), (nn.RNN, r"\. Build the network")],
    ids=["gru", "rnn"],
)
@pytest.mark.parametrize("root", ["plain", "converted"])
def test_plain_layer_reading_the_batch_as_its_sequence_is_refused(
    rnn: type[nn.Module], remedy: str, root: str
) -> None:
    """With no Bayesian sequence-first layer, dimension 0 of the input is the
    batch: a plain ``batch_first=False`` layer reading it as its sequence made
    the loss weigh ``(L, B)`` data as ``L`` examples (50 x 8 sequences: a loss
    of 23.3 instead of the batch-first network's 142.0) and ``predict`` cut the
    sequences into chunks (0.36 away from the whole prediction, 0.16-0.45 in
    mean mode). Refused in training, ``predict`` in both modes and a direct
    call, naming the Bayesian class where there is one (there is no VIRNN)."""
    torch.manual_seed(0)
    if root == "plain":
        net: nn.Module = _PlainFirst(rnn(3, 4), bnn.VILinear(4, 2))
    else:  # convert keeps the excluded (or unknown) layer plain
        net = bnn.convert(_PlainFirst(rnn(3, 4), nn.Linear(4, 2)), exclude=["rnn"])
    x, y = torch.randn(50, 8, 3), torch.randn(50, 8, 2)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), dataset_size=100)
    match = rf"reads dimension 0, the (50|4) rows .*{remedy}"
    with pytest.raises(ValueError, match=match):
        loss_fn.model_loss(net, x, y, samples=4)
    for mode in ("sample", "mean"):
        with pytest.raises(ValueError, match=match):
            bnn.predict(net, x, bnn.Normal(scale=1.0), mode=mode, batch_size=4)
    with pytest.raises(ValueError, match=match) as raised:
        net(x)
    assert "VIRNN" not in str(raised.value)


def test_plain_layer_over_a_multiple_of_the_batch_runs() -> None:
    """A plain sequence-first layer whose batch is a multiple of the network's
    (words of every example read character by character) is no sequence-first
    network: it runs, and per particle equals the plain computation."""
    torch.manual_seed(0)

    class Words(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.head = nn.GRU(3, 4), bnn.VILinear(4, 2)

        def forward(self, x: Tensor) -> Tensor:  # (B, W, C, 3)
            b, w, c, f = x.shape
            chars = x.reshape(b * w, c, f).transpose(0, 1)  # (C, B * W, 3)
            last = self.rnn(chars)[1][-1].reshape(b, w, 4)
            return self.head(last)  # type: ignore[no-any-return]

    net = Words()
    x = torch.randn(6, 6, 5, 3)  # C = 5 is not the batch; B * W = 36
    out = bnn.predict(net, x, bnn.Normal(scale=1.0), mode="mean", batch_size=4)
    with torch.no_grad():
        chars = x.reshape(36, 5, 3).transpose(0, 1)
        last = net.rnn(chars)[1][-1].reshape(6, 6, 4)
        means = [net.head.posterior[n].mean() for n in ("weight", "bias")]
        expected = torch.nn.functional.linear(last, *means)
    torch.testing.assert_close(out.samples[0], expected, rtol=1e-5, atol=1e-6)


def test_predict_chunks_a_sequence_first_input_along_its_batch() -> None:
    """``predict`` splits ``(L, B, ...)`` inputs along ``B`` (dimension 1), not
    along the sequence, whose positions attend to each other: chunked and
    unchunked predictions agree particle by particle."""
    torch.manual_seed(0)
    net = bnn.VISequential(
        bnn.VILinear(E, E), bnn.VITransformerEncoderLayer(E, HEADS, 16, 0.0)
    ).eval()
    x = torch.randn(LQ, 6, E)
    torch.manual_seed(1)
    whole = bnn.predict(net, x, bnn.Normal(scale=1.0), samples=3, batch_size=6)
    torch.manual_seed(1)  # the same weight draws
    chunked = bnn.predict(net, x, bnn.Normal(scale=1.0), samples=3, batch_size=2)
    assert whole.samples.shape == (3, LQ, 6, E)
    torch.testing.assert_close(chunked.samples, whole.samples, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_first", [True, False])
def test_plain_module_around_one_recurrent_layer_returns_its_layout(
    batch_first: bool,
) -> None:
    """``nn.Sequential(VILSTM(...))`` is the network of its one Bayesian layer:
    output and states laid out as the layer's own outermost call lays them out
    (it failed on the states), with the same draws under the same seed."""
    lstm = bnn.VILSTM(3, 4, num_layers=2, batch_first=batch_first)
    x = torch.randn(5, 7, 3) if batch_first else torch.randn(7, 5, 3)
    torch.manual_seed(0)
    out, (h, c) = nn.Sequential(lstm)(x)
    torch.manual_seed(0)
    ref_out, (ref_h, ref_c) = lstm(x, samples=10)
    assert h.shape == (10, 2, 5, 4)
    for got, ref in ((out, ref_out), (h, ref_h), (c, ref_c)):
        torch.testing.assert_close(got, ref)


class _Wrapper(bnn.VIModule):
    """A user's module returning its one layer's output tuple as it is."""

    def __init__(self, layer: bnn.VIModule) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *inputs: Tensor) -> Any:
        return self.layer(*inputs)


@pytest.mark.parametrize("batch_first", [True, False])
def test_module_returning_a_layers_states_or_weights_unfolds_them_like_the_layer(
    batch_first: bool,
) -> None:
    """Recurrent states ``(layers, B * S, H)`` and a sequence-first attention's
    weights ``(B * S, Lq, Lk)`` are folded in the batch away from dimension 0;
    returned by a wrapping ``VIModule`` they are unfolded there, as the layer's
    own outermost call does (both failed: "leading size 2" / "no sequence
    dimension"), with the same draws under the same seed."""
    lstm = bnn.VILSTM(3, 4, num_layers=2, batch_first=batch_first)
    x = torch.randn(5, 7, 3) if batch_first else torch.randn(7, 5, 3)
    torch.manual_seed(0)
    out, (h, c) = _Wrapper(lstm)(x, samples=6)
    torch.manual_seed(0)
    ref_out, (ref_h, ref_c) = lstm(x, samples=6)
    assert h.shape == (6, 2, 5, 4)
    for got, ref in ((out, ref_out), (h, ref_h), (c, ref_c)):
        torch.testing.assert_close(got, ref)
    attention = bnn.VIMultiheadAttention(E, 2, batch_first=batch_first)
    q = torch.randn(B, LQ, E) if batch_first else torch.randn(LQ, B, E)
    # Self-attention, then cross-attention to a key/value of another length:
    # the wrapper's own inputs are shared by all particles, whatever their
    # length (refused before in the sequence-first fold, where lengths
    # identify folded tensors).
    for length in (LQ, LK):
        kv = torch.randn(B, length, E) if batch_first else torch.randn(length, B, E)
        torch.manual_seed(0)
        out, weights = _Wrapper(attention)(q, kv, kv, samples=6)
        torch.manual_seed(0)
        ref_out, ref_weights = attention(q, kv, kv, samples=6)
        assert weights.shape == (6, B, LQ, length)
        torch.testing.assert_close(out, ref_out)
        torch.testing.assert_close(weights, ref_weights)


def test_predict_chunks_a_batch_first_network_with_a_plain_sequence_first_layer() -> (
    None
):
    """A batch-first network may transpose for a plain ``batch_first=False``
    torch layer: its input is still chunked along the batch (dimension 0)."""

    class Transposing(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.lstm = bnn.VILinear(E, E), nn.LSTM(E, 4)

        def forward(self, x: Tensor) -> Tensor:
            out, _ = self.lstm(self.lin(x).transpose(0, 1))
            return out.transpose(0, 1)  # type: ignore[no-any-return]

    torch.manual_seed(0)
    net = Transposing().eval()
    x = torch.randn(6, LQ, E)
    torch.manual_seed(1)
    whole = bnn.predict(net, x, bnn.Normal(scale=1.0), samples=3, batch_size=6)
    torch.manual_seed(1)
    chunked = bnn.predict(net, x, bnn.Normal(scale=1.0), samples=3, batch_size=2)
    assert whole.samples.shape == (3, 6, LQ, 4)
    torch.testing.assert_close(chunked.samples, whole.samples, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (bnn.VILSTM, {"num_layers": 2, "bidirectional": True}),
        (bnn.VILSTM, {"proj_size": 2}),
        (bnn.VIGRU, {"num_layers": 2, "bidirectional": True}),
    ],
)
@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
@pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning")
def test_packed_sequences_equal_torch_per_particle(
    cls: type[bnn.VIModule],
    options: dict[str, Any],
    initial: bool,
    enforce_sorted: bool,
) -> None:
    """A ``PackedSequence`` input: particle ``s`` of the outermost call is
    torch's layer with particle ``s``'s weights on the same packed batch
    (output data, batch sizes, order and final states)."""
    hidden, layers = 5, options.get("num_layers", 1)
    layer = cls(3, hidden, batch_first=True, **options).eval()
    lengths = torch.tensor([6, 5, 3, 2, 1] if enforce_sorted else [3, 6, 1, 5, 2])
    x = torch.randn(len(lengths), 6, 3)
    packed = pack_padded_sequence(
        x, lengths, batch_first=True, enforce_sorted=enforce_sorted
    )
    args: tuple[Any, ...] = (packed,)
    states = layers * (2 if options.get("bidirectional") else 1)
    if initial:
        h0 = torch.randn(states, len(lengths), options.get("proj_size") or hidden)
        args = (
            packed,
            (h0, torch.randn(states, len(lengths), hidden))
            if cls is bnn.VILSTM
            else h0,
        )
    weights = fixed_weights(layer, SAMPLES)
    out, state = run_fixed(layer, weights, SAMPLES, *args)
    assert isinstance(out, PackedSequence)
    assert out.data.shape[:2] == (SAMPLES, packed.data.shape[0])
    for s in range(SAMPLES):
        with torch.no_grad():
            ref_out, ref_state = _torch_at(layer, weights, s)(*args)
        torch.testing.assert_close(out.data[s], ref_out.data, **TOL)
        assert out.batch_sizes.equal(ref_out.batch_sizes)
        if enforce_sorted:
            assert out.sorted_indices is None or out.sorted_indices.equal(
                torch.arange(len(lengths))
            )
        else:
            assert out.sorted_indices is not None
            assert out.sorted_indices.equal(ref_out.sorted_indices)
        for got, want in zip(_tensors(state), _tensors(ref_state), strict=True):
            torch.testing.assert_close(got[s], want, **TOL)


def test_packed_sequences_inside_a_network_equal_torch_per_particle() -> None:
    """A network packs its padded input, runs two stacked recurrent layers on
    packed sequences (the second takes the first's folded packing) and
    classifies from the last state: each particle is torch's network."""

    class Tagger(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.first = bnn.VILSTM(3, 4, batch_first=True, bidirectional=True)
            self.second = bnn.VIGRU(8, 5, batch_first=True)
            self.head = bnn.VILinear(5, 2)

        def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
            packed = pack_padded_sequence(
                x, lengths, batch_first=True, enforce_sorted=False
            )
            out, _ = self.first(packed)
            out, h_n = self.second(out)
            padded, _ = pad_packed_sequence(out, batch_first=True)
            return self.head(h_n[-1]), padded

    net = Tagger().eval()
    lengths = torch.tensor([3, 6, 1, 5])
    x = torch.randn(4, 6, 3)
    weights = fixed_weights(net, SAMPLES)
    logits, padded = run_fixed(net, weights, SAMPLES, x, lengths)
    assert logits.shape == (SAMPLES, 4, 2)
    assert padded.shape == (SAMPLES, 4, 6, 5)
    plain = bnn.to_deterministic(net).eval()  # the network with torch layers
    for s in range(SAMPLES):
        with torch.no_grad():
            for site, value in weights.items():
                plain.get_parameter(f"network.{site}").copy_(value[s, 0])
            ref_logits, ref_padded = plain(x, lengths)
        torch.testing.assert_close(logits[s], ref_logits, **TOL)
        torch.testing.assert_close(padded[s], ref_padded, **TOL)


def test_packing_a_folded_activation_with_repeated_lengths() -> None:
    """After a Bayesian embedding the activation is folded ``(B * S, L, E)``;
    packed with each length repeated ``S`` times it is taken as folded."""

    class Classifier(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.embed = bnn.VIEmbedding(10, 3)
            self.rnn = bnn.VIGRU(3, 4, batch_first=True, bidirectional=True)
            self.head = bnn.VILinear(4, 2)

        def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
            embedded = self.embed(tokens)
            repeats = embedded.shape[0] // tokens.shape[0]  # S inside a network
            packed = pack_padded_sequence(
                embedded,
                lengths.repeat_interleave(repeats),
                batch_first=True,
                enforce_sorted=False,
            )
            _, h_n = self.rnn(packed)
            return self.head(h_n[-1])

    net = Classifier().eval()
    tokens, lengths = torch.randint(0, 10, (4, 6)), torch.tensor([3, 6, 1, 5])
    weights = fixed_weights(net, SAMPLES)
    logits = run_fixed(net, weights, SAMPLES, tokens, lengths)
    plain = bnn.to_deterministic(net).eval()
    for s in range(SAMPLES):
        with torch.no_grad():
            for site, value in weights.items():
                plain.get_parameter(f"network.{site}").copy_(value[s, 0])
            torch.testing.assert_close(logits[s], plain(tokens, lengths), **TOL)


def test_packed_input_of_the_wrong_size_names_the_layer() -> None:
    packed = pack_padded_sequence(
        torch.randn(2, 4, 5), torch.tensor([4, 2]), batch_first=True
    )
    with pytest.raises(
        ValueError,
        match=r"VILSTM: a PackedSequence input must have data of shape",
    ):
        bnn.VILSTM(3, 4)(packed, samples=2)


class _LayoutTagger(bnn.VIModule):
    """A per-position classifier: LSTM then a linear head, either layout."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.rnn = bnn.VILSTM(3, 4, batch_first=batch_first)
        self.head = bnn.VILinear(4, 2, estimator="reparam")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x)[0])


def _both_layouts(
    batch: int, length: int
) -> tuple[tuple[_LayoutTagger, Tensor, Tensor], tuple[_LayoutTagger, Tensor, Tensor]]:
    """The same tagger, weights and data, batch-first and sequence-first."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, length, 3), torch.randint(0, 2, (batch, length))
    batch_first, sequence_first = _LayoutTagger(True), _LayoutTagger(False)
    sequence_first.load_state_dict(batch_first.state_dict())
    sequence_data = (x.transpose(0, 1).contiguous(), y.t().contiguous())
    return (batch_first, x, y), (sequence_first, *sequence_data)


@pytest.mark.parametrize("length", [5, 3, 40])
def test_sequence_first_loss_counts_the_batch_not_the_sequence(length: int) -> None:
    """The same weights and data in either layout give the same loss and ELBO.

    The data term of B sequences out of N is scaled by N / B whatever the
    layout: a sequence-first network's output is (S, L, B, C). L = 3 equals B
    (either reading of the layout gives the same count); L = 40 > N = 30 is a
    valid batch of 3 sequences.
    """
    batch, size = 3, 30
    (batch_first, x, y), (sequence_first, x_first, y_first) = _both_layouts(
        batch, length
    )
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), size, kl="mc")
    pyro.set_rng_seed(3)
    expected = loss_fn(batch_first(x, samples=2), y)
    pyro.set_rng_seed(3)
    out = sequence_first(x_first, samples=2)
    assert out.shape == (2, length, batch, 2)
    torch.testing.assert_close(loss_fn(out, y_first), expected)
    for net, inputs, targets in (
        (batch_first, x, y),
        (sequence_first, x_first, y_first),
    ):
        model = loss_fn.pyro_model(net)
        trace = poutine.trace(model).get_trace(inputs, targets, samples=2)
        assert trace.nodes["data"]["value"].numel() == batch
        assert trace.nodes["obs"]["scale"] == size / batch / 2  # and 1 / S
        for elbo in (Trace_ELBO(), bnn.Trace_ELBO()):
            pyro.set_rng_seed(3)
            value = elbo.loss(model, net.guide, inputs, targets, samples=2)
            assert value / size == pytest.approx(expected.item(), rel=1e-5)


def test_packed_input_of_a_sequence_first_layer_inside_a_network_is_refused() -> None:
    """Its padded output (L, B * S, H) would be read as a shared (L, B, H) one."""

    class Tagger(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = bnn.VILSTM(4, 3)
            self.head = bnn.VILinear(3, 2)

        def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            out, _ = pad_packed_sequence(self.rnn(packed)[0])
            return self.head(out)  # type: ignore[no-any-return]

    x, lengths = torch.randn(6, 5, 4), torch.tensor([6, 3, 5, 2, 6])
    with pytest.raises(ValueError, match=r"outermost module only.*batch_first=True"):
        Tagger()(x, lengths, samples=3)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, _ = bnn.VILSTM(4, 3)(packed, samples=3)  # as the outermost module: fine
    assert out.data.shape == (3, int(lengths.sum()), 3)


@pytest.mark.parametrize("length", [6, 4])
def test_sequence_first_validation_and_calibration_count_sequences(length: int) -> None:
    """fit's validation NLPD and calibrate's fit take one example per sequence.

    The same weights and draws in either layout give the same values (the
    mixture over particles is per sequence, not per position across the batch).
    L = 4 equals B: the layout was guessed from the sizes, and the sequence-first
    output (S, L, B, C) was read as batch-first, one example per position.
    """
    batch = 4
    (batch_first, x, y), (sequence_first, x_first, y_first) = _both_layouts(
        batch, length
    )
    values = []
    for net, inputs, targets in (
        (batch_first, x, y),
        (sequence_first, x_first, y_first),
    ):
        loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 20)
        frozen = torch.optim.SGD(net.parameters(), lr=0.0)
        pyro.set_rng_seed(1)
        history = bnn.fit(
            net,
            loss_fn,
            [(inputs, targets)],
            1,
            frozen,
            val_loader=[(inputs, targets)],
            progress=False,
        )
        pyro.set_rng_seed(2)
        calibration = bnn.calibrate(net, inputs, targets, bnn.Categorical(), 8)
        assert isinstance(calibration, bnn.TemperatureScaling)
        values.append((history.val_loss[0], float(calibration.temperature)))
    assert values[1] == pytest.approx(values[0], rel=1e-5)


def test_sequence_first_validation_loss_with_length_equal_to_batch() -> None:
    """fit's val_loss of a sequence-first network with L == B is per sequence.

    The reference is -log(1/S sum_s p(y_b | x_b, w_s)) per sequence b from the
    network's own output (S, L, B, C) under the validation pass's seed. The
    layout was guessed from the sizes: with L == B the mixture was taken per
    position (over the batch), another number, silently.
    """
    torch.manual_seed(0)
    wide = bnn.MeanFieldNormal(init_scale=0.5)  # particles that differ

    class Tagger(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = bnn.VILSTM(3, 4, variational=wide)  # batch_first=False
            self.head = bnn.VILinear(4, 2, variational=wide)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.rnn(x)[0])  # type: ignore[no-any-return]

    net = Tagger()
    net.samples = 6
    x, y = torch.randn(4, 4, 3), torch.randint(0, 2, (4, 4))  # L == B == 4
    references: list[float] = []

    class Seeded:
        def __iter__(self) -> Any:
            pyro.set_rng_seed(5)
            yield x, y

    def reference(epoch: int, history: bnn.History, model: nn.Module) -> None:
        pyro.set_rng_seed(5)
        model.eval()
        with torch.no_grad():
            out = model(x).double()  # (S, L, B, C)
        model.train()
        log_p = out.log_softmax(-1).gather(-1, y.expand(6, -1, -1)[..., None])
        per_sequence = log_p.squeeze(-1).sum(1)  # (S, B)
        mixture = torch.logsumexp(per_sequence, 0) - math.log(6)
        references.append(float(-mixture.mean()))

    history = bnn.fit(
        net,
        bnn.KullbackLeiblerLoss(bnn.Categorical(), 20),
        [(x, y)],
        2,
        val_loader=Seeded(),
        callbacks=[reference],
        progress=False,
    )
    assert history.val_loss == pytest.approx(references, rel=1e-5)


@pytest.mark.parametrize("length", [5, 3])
def test_sequence_first_observation_site_is_batch_first(length: int) -> None:
    """pyro_model's "obs" draws (S, B, L) targets whatever L, L == B too.

    The site's distribution holds the network output with the sequences in
    the data plate: its logits are out.movedim(2, 1). With L == B = 3 they
    were the output as it came, (S, L, B, C): draws laid out per position.
    """
    _, (net, x, y) = _both_layouts(3, length)
    model = bnn.KullbackLeiblerLoss(bnn.Categorical(), 30).pyro_model(net)
    for observed in (None, y):
        trace = poutine.trace(model).get_trace(x, observed, samples=2)
        out = trace.nodes["_RETURN"]["value"]
        assert out.shape == (2, length, 3, 2)
        draws = trace.nodes["obs"]["fn"].draws
        torch.testing.assert_close(
            draws.base_dist.logits, out.movedim(2, 1).log_softmax(-1)
        )
    draws = poutine.trace(model).get_trace(x, samples=2).nodes["obs"]["value"]
    assert draws.shape == (2, 3, length)


class _EmbedPackClassifier(bnn.VIModule):
    """A Bayesian embedding, packed for a recurrent layer, classified."""

    def __init__(self, repeat_lengths: bool) -> None:
        super().__init__()
        self.embed = bnn.VIEmbedding(10, 4, padding_idx=0)
        self.rnn = bnn.VIGRU(4, 3, batch_first=True)
        self.head = bnn.VILinear(3, 2)
        self.repeat_lengths = repeat_lengths

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        h = self.embed(tokens)  # folded (B * S, L, E)
        if self.repeat_lengths:
            lengths = lengths.repeat_interleave(current_samples())
        packed = pack_padded_sequence(
            h, lengths, batch_first=True, enforce_sorted=False
        )
        return self.head(self.rnn(packed)[1][-1])  # type: ignore[no-any-return]


def test_packing_a_folded_activation_with_the_batchs_lengths_is_refused() -> None:
    """torch packs B of the B * S folded rows without complaint: wrong rows
    (sampled outputs 30-66 % off per particle, probe of 2026-12-02). With
    gradients on, the recurrent layer sees the packed data computed from the
    fold and refuses it, naming the remedy (it only warned, and the head's
    error pointed at indexing the user never wrote); without gradients it
    warns."""
    tokens = torch.randint(1, 10, (3, 5))
    lengths = torch.tensor([5, 2, 4])
    with pytest.raises(ValueError, match=r"packed from a Bayesian layer.*repeat_inter"):
        _EmbedPackClassifier(repeat_lengths=False)(tokens, lengths, samples=2)
    with (
        pytest.warns(UserWarning, match=r"repeat the lengths per particle"),
        torch.no_grad(),  # no autograd graph to read: the warning alone
    ):
        _EmbedPackClassifier(repeat_lengths=False)(tokens, lengths, samples=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _EmbedPackClassifier(repeat_lengths=True)(tokens, lengths, samples=2)
    assert out.shape == (2, 3, 2)


def test_a_bayesian_layer_on_packed_data_is_refused_and_a_plain_one_is_quiet() -> None:
    """``PackedSequence(layer(p.data), p.batch_sizes, ...)``, a torch idiom: a
    Bayesian layer there folds its particles into the data's rows, which the
    batch sizes no longer describe; the recurrent layer read wrong rows, 66 %
    off, with only the general warning (probe of 2026-12-02). A plain layer's
    output computed from the input, with gradients on, is shared and now
    packs without the warning."""
    from torch.nn.utils.rnn import PackedSequence

    class PackedProjection(bnn.VIModule):
        def __init__(self, bayesian: bool) -> None:
            super().__init__()
            self.context = bnn.VILinear(4, 3)
            self.project = bnn.VILinear(4, 4) if bayesian else nn.Linear(4, 4)
            self.rnn = bnn.VIGRU(4, 3, batch_first=True)

        def forward(self, p: PackedSequence, first: Tensor) -> Tensor:
            context = self.context(first)
            data = self.project(p.data)
            p = PackedSequence(
                data, p.batch_sizes, p.sorted_indices, p.unsorted_indices
            )
            return self.rnn(p)[1][-1] + context  # type: ignore[no-any-return]

    x, lengths = torch.randn(3, 5, 4), torch.tensor([5, 2, 4])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    with pytest.raises(ValueError, match=r"3 particles x 11.*before packing"):
        PackedProjection(bayesian=True)(packed, x[:, 0], samples=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = PackedProjection(bayesian=False)(packed, x[:, 0], samples=3)
    assert out.shape == (3, 3, 3)


def test_plain_sequential_sequence_first_network_counts_sequences() -> None:
    """A plain nn.Sequential root records its sequence batch like a bnn one."""
    torch.manual_seed(0)
    x, y = torch.randn(5, 4, 8), torch.randint(0, 2, (5, 4))  # (L, B, ...)
    layers = [
        bnn.VITransformerEncoderLayer(8, 2, 16, 0.0),
        bnn.VILinear(8, 2, estimator="reparam"),
    ]
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 20)
    values = []
    for net in (nn.Sequential(*layers), bnn.VISequential(*layers)):
        pyro.set_rng_seed(1)
        values.append(loss_fn(net(x), y).item())
    assert values[0] == pytest.approx(values[1], rel=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: bnn.VIMultiheadAttention(8, 2),
        lambda: bnn.VITransformerEncoderLayer(8, 2, 16),
        lambda: bnn.VILSTM(8, 8),
        lambda: bnn.VIGRU(8, 8, num_layers=2),
    ],
    ids=["attention", "encoder-layer", "lstm", "gru"],
)
def test_a_lone_sequence_first_layer_is_scored_per_example(make: Any) -> None:
    """Called on its own, a batch_first=False layer's output (S, L, B, ...) has
    its batch in dimension 2: the loss took L as the batch size (the data term
    scaled by N / L instead of N / B), as when the layer is in a network."""
    torch.manual_seed(0)
    layer = make()
    x, y = torch.randn(7, 3, 8), torch.randn(7, 3, 8)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), dataset_size=30)

    class Holder(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: Tensor) -> Tensor:
            inputs = (x, x, x) if isinstance(layer, bnn.VIMultiheadAttention) else (x,)
            out = self.layer(*inputs)
            return out[0] if isinstance(out, tuple) else out  # type: ignore[no-any-return]

    def alone(x: Tensor) -> Tensor:
        inputs = (x, x, x) if isinstance(layer, bnn.VIMultiheadAttention) else (x,)
        out = layer(*inputs)
        return out[0] if isinstance(out, tuple) else out  # type: ignore[no-any-return]

    torch.manual_seed(1)
    on_its_own = loss_fn(alone(x), y)
    torch.manual_seed(1)
    in_network = loss_fn(Holder()(x), y)
    torch.testing.assert_close(on_its_own, in_network)
    out = alone(x)
    assert loss_fn.check_batch(out, bnn.record.find_record(out).sequence_batch) == 3


def test_lengths_that_fold_into_each_other_name_batch_first() -> None:
    """A source as long as the target times the particles (greedy decoding hits
    it at some step) is ambiguous; the message spoke only of batch sizes, which
    a seq2seq model cannot make equal."""

    class Decoder(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.source_embed = bnn.VILinear(E, E)
            self.target_embed = bnn.VILinear(E, E)
            self.attention = bnn.VIMultiheadAttention(E, HEADS)

        def forward(self, target: Tensor, source: Tensor) -> Tensor:
            memory = self.source_embed(source)
            query = self.target_embed(target)  # 2 * S rows: the source's 6?
            return self.attention(query, memory, memory)[0]  # type: ignore[no-any-return]

    target, source = torch.randn(2, B, E), torch.randn(6, B, E)
    with pytest.raises(
        ValueError, match=r"(?s)ambiguous.*sequence-first.*batch_first=True"
    ):
        Decoder()(target, source, samples=3)
    assert Decoder()(target, source, samples=5).shape == (5, 2, B, E)
