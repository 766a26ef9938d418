"""Which activations are shared by all particles and which are folded.

Inside a network a tensor is shared (``B`` rows, no Bayesian layer touched it)
or folded (``B * S`` rows, row ``b * S + s``). The leading size tells them
apart; these tests cover the inputs whose size does not follow the first
input's batch: second inputs of another batch size, keys of another layout
than their values, and activations whose rows no longer pair with particles.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import Tensor, nn

import pyrolite_bnn as bnn

S = 10


class _TwoInputs(bnn.VIModule):
    """Two inputs of unrelated batch sizes, one output each."""

    def __init__(self) -> None:
        super().__init__()
        wide = bnn.MeanFieldNormal(init_scale=0.5)  # particles clearly differ
        self.a = bnn.VILinear(3, 2, estimator="reparam", variational=wide)
        self.b = bnn.VILinear(3, 2, estimator="reparam", variational=wide)

    def forward(self, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.a(x), torch.tanh(self.b(z))


@pytest.mark.parametrize("rows", [S, 2 * S, 7])
def test_a_second_input_of_another_batch_size_is_shared(rows: int) -> None:
    """A second input with S or 2S rows (a multiple of the particle count) was
    read as one block of rows per particle: particle s saw only row s of it."""
    net, x, z = _TwoInputs(), torch.randn(1, 3), torch.randn(rows, 3)
    with poutine.trace() as trace:
        first, second = net(x, z, samples=S)
    assert first.shape == (S, 1, 2)
    assert second.shape == (S, rows, 2)
    weight = trace.trace.nodes["b.weight"]["value"].reshape(S, 2, 3)
    bias = trace.trace.nodes["b.bias"]["value"].reshape(S, 2)
    for s in range(S):
        expected = torch.tanh(z @ weight[s].T + bias[s])
        torch.testing.assert_close(second[s], expected, rtol=1e-5, atol=1e-6)


def test_positions_moved_into_the_batch_are_named_in_a_warning() -> None:
    """``h.reshape(-1, E)`` of a folded ``(B * S, L, E)`` activation has rows
    ``(b * S + s) * L + l``: read as ``b' * S + s'`` it pairs rows with the
    wrong particles, without a word before. A size that no input's batch
    explains is still read as folded (right for a concatenation of folded
    activations, below), with a warning that names both cases."""

    class Flattening(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.head = bnn.VILinear(3, 4), bnn.VILinear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = torch.tanh(self.a(x))
            rows = h.shape[0]
            return self.head(h.reshape(-1, 4)).reshape(rows, -1, 2)  # type: ignore[no-any-return]

    with pytest.warns(UserWarning, match="positions moved into the batch"):
        Flattening()(torch.randn(2, 3, 3), samples=4)


def test_folded_activations_concatenated_along_the_batch() -> None:
    """``torch.cat([h, h2])`` of two folded activations keeps the rows
    batch-major (row ``b * S + s`` of each): it equals the two halves run
    separately (it was refused for a while in this change)."""

    class Cat(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            wide = bnn.MeanFieldNormal(init_scale=0.5)
            self.enc = bnn.VILinear(3, 4, estimator="reparam", variational=wide)
            self.head = bnn.VILinear(4, 2, estimator="reparam", variational=wide)

        def forward(self, x: Tensor, split: bool) -> Tensor:
            h = torch.relu(self.enc(x))
            if split:
                return self.head(h) + self.head(h.flip(-1))  # type: ignore[no-any-return]
            a, b = self.head(torch.cat([h, h.flip(-1)])).chunk(2)
            return a + b  # type: ignore[no-any-return]

    net, x = Cat(), torch.randn(5, 3)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="concatenated along the batch"):
        joined = net(x, False, samples=3)
    torch.manual_seed(0)
    torch.testing.assert_close(joined, net(x, True, samples=3))


def test_a_batch_that_is_another_inputs_batch_times_samples_is_refused() -> None:
    """With inputs of 8 and 4 rows and S = 2, an activation of 8 rows is the
    first input's batch (shared) or the second's folded: it was read as the
    first and the output mixed the particles silently."""

    class Net(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = bnn.VILinear(3, 2), bnn.VILinear(3, 5)
            self.c = bnn.VILinear(5, 2)

        def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            return self.a(x), self.c(torch.relu(self.b(y)))

    with pytest.raises(ValueError, match="ambiguous"):
        Net()(torch.randn(8, 3), torch.randn(4, 3), samples=2)
    first, second = Net()(torch.randn(3, 3), torch.randn(4, 3), samples=2)
    assert (first.shape, second.shape) == ((2, 3, 2), (2, 4, 2))


def test_an_input_that_is_no_batch_does_not_unfold_outputs() -> None:
    """An ``h0`` input ``(layers, B, H)`` gave its leading size to the
    accepted batches: the ``h_n`` of a plain ``nn.GRU`` (``(layers, B * S,
    H)``, particles in dimension 1) was expanded as if shared. It is unfolded
    where the layer folded it (the states of each particle, ``(S, layers, B,
    H)``), not read by its leading size."""

    class Net(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.proj = bnn.VILinear(3, 3)
            self.gru = nn.GRU(3, 5, num_layers=2, batch_first=True)

        def forward(self, x: Tensor, h0: Tensor) -> Tensor:
            return self.gru(self.proj(x), h0.repeat_interleave(4, 1))[1]  # type: ignore[no-any-return]

    assert Net()(torch.randn(3, 6, 3), torch.zeros(2, 3, 5), samples=4).shape == (
        4,
        2,
        3,
        5,
    )


_RECURRENT: dict[str, Callable[[], nn.Module]] = {
    "VIGRU": lambda: bnn.VIGRU(3, 5, num_layers=2, batch_first=True),
    "plain GRU": lambda: nn.Sequential(
        bnn.VILinear(3, 3), nn.GRU(3, 5, num_layers=2, batch_first=True)
    ),
    "plain LSTM": lambda: nn.Sequential(
        bnn.VILinear(3, 3), nn.LSTM(3, 5, num_layers=2, batch_first=True)
    ),
}


class _States(bnn.VIModule):
    """A 2-layer recurrent layer whose ``h_n`` is returned transformed (or as it is).

    ``kind``: a ``VIGRU``, or a plain ``nn.GRU``/``nn.LSTM`` after a ``VILinear``.
    """

    def __init__(
        self, transform: Callable[[Tensor], Tensor] | None, kind: str = "VIGRU"
    ) -> None:
        super().__init__()
        self.rnn = _RECURRENT[kind]()
        self.transform = transform

    def forward(self, x: Tensor) -> Tensor:
        _, h = self.rnn(x)  # (layers, B * S, H) inside the network
        h = h[0] if isinstance(h, tuple) else h  # an LSTM's (h_n, c_n)
        return h if self.transform is None else self.transform(h)


@pytest.mark.parametrize("kind", sorted(_RECURRENT))
@pytest.mark.parametrize(
    "transform",
    [torch.tanh, lambda h: h * 2, lambda h: h.flip(0)],
    ids=["tanh", "scaled", "flipped"],
)
def test_an_output_with_the_folded_batch_behind_the_batch_is_refused(
    transform: Callable[[Tensor], Tensor], kind: str
) -> None:
    """``torch.tanh(h_n)`` of ``(layers, B * S, H)`` with ``layers == B`` was
    read by its leading size as shared and expanded: ``(S, layers, B * S,
    H)``, every particle the same tensor holding all particles. Dimension 1
    of a shared output cannot hold ``B * S`` rows: refused as the output of
    another leading size is; raw ``h_n`` (the layer records where it folded
    it) and an output with the batch first are unfolded."""
    x = torch.randn(2, 6, 3)  # B = 2 = num_layers
    with pytest.raises(ValueError, match=r"(?s)recurrent layer's state.*6 = 2 \* 3"):
        _States(transform, kind)(x, samples=3)
    with pytest.raises(ValueError, match="network output has leading size 2"):
        _States(transform, kind)(torch.randn(4, 6, 3), samples=3)
    assert _States(None, kind)(x, samples=3).shape == (3, 2, 2, 5)
    first = _States(lambda h: transform(h).transpose(0, 1), kind)
    assert first(x, samples=3).shape == (3, 2, 2, 5)


class _OutputsAndStates(nn.Module):
    """A plain ``nn.GRU`` after a ``VILinear``, returning ``(output, h_n)``."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = bnn.VILinear(3, 3)
        self.rnn = nn.GRU(3, 5, num_layers=2, batch_first=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out, h = self.rnn(self.enc(x))
        return out, h


class _PackedStates(bnn.VIModule):
    """A plain ``nn.GRU`` reading a packed folded batch after a ``VILinear``."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = bnn.VILinear(3, 3)
        self.rnn = nn.GRU(3, 5, num_layers=2, batch_first=True)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        from pyrolite_bnn.layers.functional import current_samples

        folded = lengths.repeat_interleave(current_samples())
        packed = pack_padded_sequence(
            self.enc(x), folded, batch_first=True, enforce_sorted=False
        )
        out, h = self.rnn(packed)
        padded, _ = pad_packed_sequence(out, batch_first=True)
        return padded[torch.arange(padded.shape[0]), folded - 1], h


@pytest.mark.parametrize("batch", [2, 3])
def test_a_plain_recurrent_layers_packed_final_state_is_unfolded(batch: int) -> None:
    """Packed, the plain GRU's h_n was skipped: (S, layers, B * S, H) copies
    with layers == B, refused otherwise. Each particle's last-layer state
    is its own last valid output."""
    net = _PackedStates()
    last, h = net(torch.randn(batch, 6, 3), torch.tensor([6, 2, 4][:batch]), samples=3)
    assert h.shape == (3, 2, batch, 5)
    torch.testing.assert_close(h[:, -1], last)


@pytest.mark.parametrize("batch", [2, 3])
def test_a_plain_recurrent_layers_final_state_is_unfolded_per_particle(
    batch: int,
) -> None:
    """A plain nn.GRU's h_n, (layers, B * S, H) behind a Bayesian layer, came
    back as S copies of all particles' states with layers == B, and was
    refused for its leading size otherwise. Each particle's last-layer state
    must be its own output's last step (a one-directional GRU)."""
    net = bnn.VISequential(_OutputsAndStates())
    out, h = net(torch.randn(batch, 6, 3), samples=4)
    assert out.shape == (4, batch, 6, 5)
    assert h.shape == (4, 2, batch, 5)
    torch.testing.assert_close(h[:, -1], out[:, :, -1])


def test_a_shared_output_with_the_folded_size_behind_the_batch_is_expanded() -> None:
    """A deterministic head's ``(B, F)`` output with ``F == B * S`` by
    coincidence (``B = 1``, ``F = S``: a single example, as ``predict`` with
    ``batch_size=1`` runs it) is still read as shared: only a tensor of a
    recurrent state's shape is refused above."""

    class Heads(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.bayesian, self.plain = bnn.VILinear(3, 2), nn.Linear(3, 4)

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return self.bayesian(x), self.plain(x)

    net, x = Heads(), torch.randn(1, 3)
    out, plain = net(x, samples=4)
    assert out.shape == (4, 1, 2)
    torch.testing.assert_close(plain, net.plain(x).expand(4, 1, 4), rtol=0, atol=0)


def test_keyword_inputs_of_a_plain_root_are_its_inputs() -> None:
    """A plain ``nn.Module`` root read only its positional inputs: ``y=`` of
    another batch size (a multiple of S) was taken as folded."""

    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.samples = 2
            wide = bnn.MeanFieldNormal(init_scale=0.5)
            self.a = bnn.VILinear(3, 2, estimator="reparam", variational=wide)
            self.b = bnn.VILinear(3, 2, estimator="reparam", variational=wide)

        def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            return self.a(x), self.b(y)

    net, x, y = Plain(), torch.randn(2, 3), torch.randn(4, 3)
    torch.manual_seed(0)
    positional = net(x, y)
    torch.manual_seed(0)
    keyword = net(x, y=y)
    assert keyword[1].shape == (2, 4, 2)
    torch.testing.assert_close(keyword, positional)


def test_one_particle_outputs_keep_the_layout_check() -> None:
    """With one particle nothing is folded, but an output without the batch in
    front is refused as with several, so that it fails where it is written."""

    class Transposed(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = bnn.VILinear(3, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.layer(x).T  # type: ignore[no-any-return]

    for samples in (1, 2):
        with pytest.raises(ValueError, match="Keep the batch dimension first"):
            Transposed()(torch.randn(5, 3), samples=samples)


def test_torch_blue_containers_read_a_second_input_like_the_layers() -> None:
    """A ``vi.VIModule`` container kept its own rule (``B * S`` rows folded):
    the output of a Bayesian layer on a second input of another batch size
    reached it as shared, one block per particle."""
    from pyrolite_bnn import vi

    class Block(vi.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.inner = vi.VILinear(4, 3)

        def forward(self, h: Tensor) -> Tensor:
            return self.inner(h)  # type: ignore[no-any-return]

    class Outer(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = bnn.VILinear(3, 3), bnn.VILinear(3, 4)
            self.block = Block()

        def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            return self.a(x), self.block(self.b(y))

    first, second = Outer()(torch.randn(3, 3), torch.randn(4, 3), samples=2)
    assert (first.shape, second.shape) == ((2, 3, 3), (2, 4, 3))


def _folded(x: Tensor, samples: int) -> Tensor:
    """A shared tensor as its folded copy (row ``b * S + s`` is ``x[b]``)."""
    return x.repeat_interleave(samples, dim=0)


@pytest.mark.parametrize("fold", ["key", "value", "query"])
def test_attention_takes_query_key_and_value_folded_or_shared(fold: str) -> None:
    """A folded key with a shared value was refused ('key (6, 5, 4) and value
    (3, 5, 4) must agree'); any mix equals all of them folded."""

    class Net(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.proj = bnn.VILinear(4, 4, estimator="reparam")
            self.att = bnn.VIMultiheadAttention(4, 2, batch_first=True)

        def forward(self, q: Tensor, x: Tensor, mixed: bool) -> Tensor:
            k = v = x
            h = self.proj(q)  # folded: the particles' rows
            q_in = _folded(q, S) if fold == "query" else h
            if not mixed:
                k, v = _folded(x, S), _folded(x, S)
            elif fold == "key":
                k = _folded(x, S)
            elif fold == "value":
                v = _folded(x, S)
            return self.att(q_in, k, v, need_weights=False)[0]  # type: ignore[no-any-return]

    net, q, x = Net(), torch.randn(3, 2, 4), torch.randn(3, 5, 4)
    torch.manual_seed(0)
    mixed = net(q, x, True, samples=S)
    torch.manual_seed(0)
    folded = net(q, x, False, samples=S)
    torch.testing.assert_close(mixed, folded)


def test_attention_with_query_and_key_batches_that_differ_names_them() -> None:
    layer = bnn.VIMultiheadAttention(4, 2, batch_first=True)
    q, kv = torch.randn(2, 5, 4), torch.randn(10, 5, 4)
    with pytest.raises(ValueError, match=r"same batch \(here \[2, 10, 10\] examples"):
        layer(q, kv, kv, samples=S)


def test_transformer_takes_a_folded_source_and_a_shared_target() -> None:
    """``VITransformer(batch_first=True)`` compared the folded source's rows with
    the shared target's: 'the batch number of src and tgt must be equal'."""

    class Net(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.embed = bnn.VILinear(3, 4)
            self.tf = bnn.VITransformer(4, 2, 1, 1, 8, dropout=0.0, batch_first=True)

        def forward(self, src: Tensor, tgt: Tensor, fold_tgt: bool) -> Tensor:
            target = _folded(tgt, 3) if fold_tgt else tgt
            return self.tf(self.embed(src), target)  # type: ignore[no-any-return]

    net, src, tgt = Net(), torch.randn(2, 5, 3), torch.randn(2, 4, 4)
    torch.manual_seed(0)
    shared = net(src, tgt, False, samples=3)
    torch.manual_seed(0)
    torch.testing.assert_close(shared, net(src, tgt, True, samples=3))
    with pytest.raises(RuntimeError, match=r"batch number of src and tgt.*\[2, 1\]"):
        net(src, tgt[:1], False, samples=3)


def test_deterministic_copy_returns_states_of_plain_recurrent_layers() -> None:
    """The export of a network returning ``h_n`` could not be called: its plain
    LSTM records no folding, and ``h_n`` ``(layers, B, H)`` failed the output's
    batch check; one particle has nothing to unfold."""

    class Encoder(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = bnn.VILSTM(3, 4, batch_first=True)

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            out, (h, _) = self.rnn(x)
            return out, h

    net, x = Encoder().eval(), torch.randn(2, 5, 3)
    out, h = net(x, samples=3)
    assert (out.shape, h.shape) == ((3, 2, 5, 4), (3, 1, 2, 4))
    plain = bnn.to_deterministic(net)
    got_out, got_h = plain(x)
    rnn = plain.network.rnn
    assert isinstance(rnn, nn.LSTM)
    want_out, (want_h, _) = rnn(x)
    torch.testing.assert_close(got_out, want_out)
    torch.testing.assert_close(got_h, want_h)


@pytest.mark.parametrize(("source", "target"), [(6, 4), (5, 7), (6, 12), (6, 1)])
def test_sequence_first_target_of_another_length_inside_a_network(
    source: int, target: int
) -> None:
    """In a sequence-first network the particles fold into the sequence
    dimension; a target sequence of another length than the source, through a
    Bayesian layer before the Transformer, was refused (or, with a length
    divisible by S, refused with a message about batch sizes). The network's
    inputs give the lengths: it now equals the same network built batch-first."""

    class Net(bnn.VIModule):
        def __init__(self, batch_first: bool) -> None:
            super().__init__()
            self.src_in = bnn.VILinear(3, 4, estimator="reparam")
            self.tgt_in = bnn.VILinear(3, 4, estimator="reparam")
            self.tf = bnn.VITransformer(
                4, 2, 1, 1, 8, dropout=0.0, batch_first=batch_first
            )

        def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
            return self.tf(self.src_in(src), self.tgt_in(tgt))  # type: ignore[no-any-return]

    sequence_first, batch_first = Net(False).eval(), Net(True).eval()
    batch_first.load_state_dict(sequence_first.state_dict())
    src, tgt = torch.randn(source, 2, 3), torch.randn(target, 2, 3)
    torch.manual_seed(1)
    got = sequence_first(src, tgt, samples=3)
    torch.manual_seed(1)
    want = batch_first(
        src.transpose(0, 1).contiguous(), tgt.transpose(0, 1).contiguous(), samples=3
    )
    assert got.shape == (3, target, 2, 4)
    torch.testing.assert_close(got, want.transpose(1, 2))


def test_jit_trace_of_networks() -> None:
    """Under ``torch.jit.trace`` sizes are tensors: the layout test returned a
    tensor where a bool was tested with ``is False``, and every traced network
    failed its output check (torch_blue's ``test_basic_jit``)."""
    from pyrolite_bnn import vi

    class Identity(vi.VIModule):
        def forward(self, x: Tensor) -> Tensor:
            return x

    x = torch.randn(4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings
        torch.jit.trace_module(Identity(), {"forward": x})
        layer = bnn.VILinear(3, 2)
        traced = torch.jit.trace(layer, x)
    assert traced(x).shape == (10, 4, 2)


def test_size_errors_inside_a_network_explain_the_fold() -> None:
    """torch's size error named folded sizes the user never wrote ('tensor a
    (10) must match tensor b (100)'); it now says why, as converted networks'
    errors did. One particle folds nothing and keeps torch's message."""

    class Residual(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.a = bnn.VILinear(3, 3)

        def forward(self, x: Tensor, z: Tensor) -> Tensor:
            return self.a(x) + z  # type: ignore[no-any-return]

    x, z = torch.randn(2, 3), torch.randn(5, 3)
    with pytest.raises(RuntimeError, match=r"(?s)must match.*bnn\.match_particles"):
        Residual()(x, z, samples=4)
    with pytest.raises(RuntimeError) as caught:
        Residual()(x, z, samples=1)
    assert "match_particles" not in str(caught.value)


def test_a_size_error_the_fold_cannot_explain_keeps_torch_s_message() -> None:
    """A feature-width bug ((B*S, 4) + a bias of 5) got the fold hint naming
    bnn.match_particles, though its sizes are neither a batch's B * S rows nor
    S times the other (probe falsepos15). torch's message is kept as it is
    with one particle; sizes S times each other (B * L tokens flattened
    against B * S * L) are still hinted."""

    class Bias(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.a = bnn.VILinear(2, 4)
            self.c = nn.Parameter(torch.zeros(5))

        def forward(self, x: Tensor) -> Tensor:
            return self.a(x) + self.c  # type: ignore[no-any-return]

    x = torch.randn(6, 2)
    with pytest.raises(RuntimeError) as one:
        Bias()(x, samples=1)
    with pytest.raises(RuntimeError) as three:
        Bias()(x, samples=3)
    assert str(three.value) == str(one.value)
    assert "must match" in str(three.value)

    class Tokens(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.a = bnn.VILinear(2, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.a(x).flatten(0, 1) + x.flatten(0, 1)  # type: ignore[no-any-return]

    with pytest.raises(
        RuntimeError, match=r"(?s)\(90\).*\(30\).*activations are folded"
    ):
        Tokens()(torch.randn(6, 5, 2), samples=3)


class _PaddedAttention(nn.Module):
    """A plain attention after a linear layer, the input's padding mask given."""

    def __init__(self, match: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.mha = nn.MultiheadAttention(4, 2, batch_first=True)
        self.match = match

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.lin(x)
        if self.match:
            mask = bnn.match_particles(mask, h)
        return self.mha(h, h, h, key_padding_mask=mask)[0]  # type: ignore[no-any-return]


def test_a_key_padding_mask_from_the_input_gets_the_fold_hint() -> None:
    """torch's ``AssertionError: Expected key_padded_mask.shape[0] to be 12,
    but got 4`` said nothing of the particles; it now names the repetition
    per particle, which runs: every particle equals the plain attention with
    that particle's weights."""
    torch.manual_seed(0)
    plain = _PaddedAttention(match=False)
    x, mask = torch.randn(4, 5, 3), torch.zeros(4, 5, dtype=torch.bool)
    mask[0, -2:] = True
    net = bnn.convert(plain, exclude=["mha"])
    with pytest.raises(AssertionError, match=r"(?s)key_padded_mask.*match_particles"):
        net(x, mask, samples=3)
    with pytest.raises(AssertionError) as raised:  # one particle: torch's own
        net(x, mask[:2], samples=1)
    assert "match_particles" not in str(raised.value)
    matched = bnn.convert(_PaddedAttention(match=True), exclude=["mha"])
    matched.load_state_dict(net.state_dict())
    with poutine.trace() as trace:
        out = matched(x, mask, samples=3)
    for s in range(3):
        weight = trace.trace.nodes["lin.weight"]["value"][s, 0]
        bias = trace.trace.nodes["lin.bias"]["value"][s, 0]
        h = x @ weight.T + bias
        expected = matched.mha(h, h, h, key_padding_mask=mask)[0]
        torch.testing.assert_close(out[s], expected, rtol=1e-5, atol=1e-6)


def test_plain_cross_attention_to_shared_keys_names_match_particles() -> None:
    """A folded query meeting keys and values no Bayesian layer touched (a
    plain embedding) failed on torch's reshape with the hint about a reshape
    by the batch size, which the user never wrote. Refused naming the folded
    and the shared inputs and ``match_particles``; another batch of keys
    than a multiple by ``S`` keeps torch's error."""

    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.lin = nn.Embedding(7, 4), bnn.VILinear(4, 4)
            self.mha = nn.MultiheadAttention(4, 2, batch_first=True)

        def forward(self, tokens: Tensor) -> Tensor:
            e = self.emb(tokens)
            return self.mha(self.lin(e), e, e)[0]  # type: ignore[no-any-return]

    net = bnn.VISequential(Cross())
    tokens = torch.randint(0, 7, (4, 5))
    match = r"query folded with the 3 particles.*key and value still shared.*match_p"
    with pytest.raises(ValueError, match=match):
        net(tokens, samples=3)
    assert net(tokens, samples=1).shape == (1, 4, 5, 4)


class _PatchEmbedding(nn.Module):
    """torchvision's ViT input: the batch size read from the raw input."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.head = nn.Linear(32, 2)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        return self.head(self.proj(x).reshape(n, 32))  # type: ignore[no-any-return]


class _DirectWeight(nn.Module):
    """Swin's attention: a layer's weight read in the block's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.qkv.weight.t()


@pytest.mark.parametrize(
    ("block", "hint"),
    [
        (_PatchEmbedding, r"(?s)invalid for input of size.*reshape\(-1, \.\.\.\)"),
        (_DirectWeight, r"(?s)<= 2 dimensions.*call the layer itself"),
    ],
)
def test_reshape_and_weight_read_errors_explain_the_particles(
    block: type[nn.Module], hint: str
) -> None:
    """torch's bare 'shape [3, 32] is invalid for input of size 384' and 't()
    expects a tensor with <= 2 dimensions' (a converted torchvision ViT or Swin
    under predict) said nothing of the particles."""
    net = bnn.convert(block())
    x = torch.randn(3, 4, 4) if block is _PatchEmbedding else torch.randn(3, 4)
    for options in ({"samples": 4}, {"mode": "mean"}):
        if block is _PatchEmbedding and options == {"mode": "mean"}:
            prediction = bnn.predict(net, x, bnn.Normal(1.0), **options)  # one row each
            assert prediction.samples.shape == (1, 3, 2)
            continue
        with pytest.raises(RuntimeError, match=hint):
            bnn.predict(net, x, bnn.Normal(1.0), **options)


class _Siamese(bnn.VIModule):
    """Both views encoded in one batch: ``enc(torch.cat([x1, x2])).chunk(2)``."""

    def __init__(self) -> None:
        super().__init__()
        wide = bnn.MeanFieldNormal(init_scale=0.5)
        self.enc = bnn.VILinear(3, 2, estimator="reparam", variational=wide)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        z1, z2 = torch.tanh(self.enc(torch.cat([x1, x2]))).chunk(2)
        return (z1 - z2).square().sum(-1)


@pytest.mark.parametrize("samples", [2, 3, 4])
def test_inputs_concatenated_before_the_first_layer_are_shared(samples: int) -> None:
    """The 2B rows of two concatenated inputs are B * S rows at S = 2: they were
    read as folded (particle s saw rows s of both views, off by 21), at S = 3
    they raised, at S = 4 they were folded with a warning. Before any Bayesian
    layer has read a tensor nothing is folded: they are shared rows."""
    net, x1, x2 = _Siamese(), torch.randn(4, 3), torch.randn(4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with poutine.trace() as trace:
            out = net(x1, x2, samples=samples)
    assert out.shape == (samples, 4)
    weight = trace.trace.nodes["enc.weight"]["value"].reshape(samples, 2, 3)
    bias = trace.trace.nodes["enc.bias"]["value"].reshape(samples, 2)
    for s in range(samples):
        z1 = torch.tanh(x1 @ weight[s].T + bias[s])
        z2 = torch.tanh(x2 @ weight[s].T + bias[s])
        expected = (z1 - z2).square().sum(-1)
        torch.testing.assert_close(out[s], expected, rtol=1e-5, atol=1e-6)


def test_a_reshape_by_the_inputs_batch_size_is_named() -> None:
    """``h.view(x.shape[0], -1)`` moves the particles into the features: the
    error named ``(4, 96)`` without saying that 96 is 3 particles x 32."""

    class Flattens(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.a = bnn.VILinear(3, 32)
            self.b = bnn.VILinear(32, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            return self.b(h.view(x.shape[0], -1))  # type: ignore[no-any-return]

    with pytest.raises(ValueError, match=r"3 particles x 32: .*h\.view\(x\.shape"):
        Flattens()(torch.randn(4, 3), samples=3)


def test_an_index_over_the_batch_gets_the_fold_hint() -> None:
    """Graph pooling by a (N,) batch vector: torch's raw index_add_ error named
    the folded size (21 rows for 7 nodes) without a word on why."""

    class Pool(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = bnn.VILinear(4, 3)

        def forward(self, x: Tensor, batch: Tensor) -> Tensor:
            return torch.zeros(3, 3).index_add_(0, batch, self.lin(x))

    batch = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    with pytest.raises(
        RuntimeError, match=r"(?s)Number of indices.*mixes the particles"
    ):
        Pool()(torch.randn(7, 4), batch, samples=3)


@pytest.mark.parametrize("plain", [nn.LayerNorm(3), nn.Linear(3, 2)])
def test_a_plain_layers_width_error_explains_the_folded_rows(plain: nn.Module) -> None:
    """torch's error named 40 rows (size[40, 4], 40x4) for a batch of 4 with no
    word on the 10 particles folded into them."""
    net = bnn.VISequential(bnn.VILinear(3, 4), plain)
    with pytest.raises(RuntimeError, match=r"(?s)40.*batch times the 10 particles"):
        net(torch.randn(4, 3), samples=10)


@pytest.mark.parametrize(
    "across",
    [
        lambda a, h: a @ h,
        lambda a, h: torch.einsum("ij,jf->if", a, h),
        lambda a, h: torch.sparse.mm(a.to_sparse(), h),
    ],
    ids=["matmul", "einsum", "sparse.mm"],
)
def test_an_adjacency_times_folded_nodes_names_the_fold(
    across: Callable[[Tensor, Tensor], Tensor],
) -> None:
    """A @ h over 12 nodes at S = 4 failed with (12x12 and 48x8), and the note
    said the sizes that do not match were the features, as in the plain
    model (which runs); an einsum or torch.sparse.mm over the nodes got no
    note at all."""

    class Propagate(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = bnn.VILinear(5, 8)

        def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
            return across(adjacency, self.layer(x))

    x, adjacency = torch.randn(12, 5), torch.softmax(torch.randn(12, 12), -1)
    assert Propagate()(x, adjacency, samples=1).shape == (1, 12, 8)
    with pytest.raises(
        RuntimeError, match=r"(?s)48 = 12 \* 4 are a batch's rows.*h\.unflatten"
    ) as raised:
        Propagate()(x, adjacency, samples=4)
    assert "are the features" not in str(raised.value)


@pytest.mark.parametrize(
    "head",
    [
        lambda h, w: h @ w,
        lambda h, w: torch.einsum("bf,fk->bk", h, w),
        lambda h, w: torch.einsum("...f,fk->...k", h, w),
    ],
    ids=["matmul", "einsum", "einsum-ellipsis"],
)
def test_a_width_error_whose_width_is_the_batch_is_no_fold(
    head: Callable[[Tensor, Tensor], Tensor],
) -> None:
    """A head declared 64 wide after a 16-wide layer, at B = 16 and S = 4,
    fails with (64x16 and 64x3): 16 = B and 64 = B * S by chance, and the
    note said the rows were a batch's folded with the particles met by an
    adjacency. The folded activation is the operand with the 16 (its 64
    rows are the fold, its 16 its width): the sizes that do not match are
    the features, as at B = 15, and no note on the adjacency comes."""

    class WrongWidth(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = bnn.VILinear(8, 16)
            self.w = nn.Parameter(torch.randn(64, 3))

        def forward(self, x: Tensor) -> Tensor:
            return head(torch.relu(self.body(x)), self.w)

    for batch in (16, 15):
        with pytest.raises(RuntimeError) as raised:
            WrongWidth()(torch.randn(batch, 8), samples=4)
        text = str(raised.value)
        assert "are a batch's rows" not in text
        assert ("are the features" in text) == ("cannot be multiplied" in text)


class _SiameseTwoHeads(bnn.VIModule):
    """The concatenated inputs read by two layers (a head and a projection)."""

    def __init__(self) -> None:
        super().__init__()
        wide = bnn.MeanFieldNormal(init_scale=0.5)
        self.a = bnn.VILinear(3, 2, estimator="reparam", variational=wide)
        self.b = bnn.VILinear(3, 2, estimator="reparam", variational=wide)

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        both = torch.cat([x1, x2])
        return self.a(both), self.b(both)


def test_concatenated_inputs_read_twice_stay_shared() -> None:
    """The second read of the same concatenated tensor was no longer the
    first: at S = 2 its 2B rows were taken for folded (head b returned B rows
    instead of 2B)."""
    net, x1, x2 = _SiameseTwoHeads(), torch.randn(3, 3), torch.randn(3, 3)
    with poutine.trace() as trace:
        first, second = net(x1, x2, samples=2)
    assert first.shape == second.shape == (2, 6, 2)
    both = torch.cat([x1, x2])
    for name, out in (("b", second), ("a", first)):
        weight = trace.trace.nodes[f"{name}.weight"]["value"].reshape(2, 2, 3)
        bias = trace.trace.nodes[f"{name}.bias"]["value"].reshape(2, 2)
        for s in range(2):
            expected = both @ weight[s].T + bias[s]
            torch.testing.assert_close(out[s], expected, rtol=1e-5, atol=1e-6)


class _SiameseEncoder(bnn.VIModule):
    """Both views encoded in one batch by a two-layer encoder, then a head."""

    def __init__(self, per_view: bool) -> None:
        super().__init__()
        self.enc = bnn.VISequential(bnn.VILinear(3, 4), nn.Tanh(), bnn.VILinear(4, 4))
        self.head = bnn.VILinear(4, 1)
        self.per_view = per_view

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        if self.per_view:
            a, b = self.enc(x1), self.enc(x2)
        else:
            a, b = self.enc(torch.cat([x1, x2])).chunk(2)
        return self.head((a - b).abs())  # type: ignore[no-any-return]


def test_a_concatenation_read_as_another_batch_is_named_in_the_refusal() -> None:
    """At ``S = 2`` the head's ``8`` rows are the call's batch 4 folded or
    the concatenation's 8 shared: refused, with advice to give the inputs
    one batch size, which they already had. It names the concatenation and
    the ways that run: another ``samples``, the encoder once per view."""
    x1, x2 = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="ambiguous") as raised:
        _SiameseEncoder(per_view=False)(x1, x2, samples=2)
    message = str(raised.value)
    assert "concatenated along the batch" in message
    assert "once per view" in message
    assert "one batch size" not in message
    assert _SiameseEncoder(per_view=False)(x1, x2, samples=3).shape == (3, 4, 1)
    assert _SiameseEncoder(per_view=True)(x1, x2, samples=2).shape == (2, 4, 1)


def test_a_torch_blue_container_called_by_keyword_marks_the_fold() -> None:
    """A ``vi.VIModule`` container called with a keyword input folds its output
    without a Bayesian layer of the network having read a tensor: the next
    layer took those B * S rows for the first, unfolded read."""
    from pyrolite_bnn import vi

    class Enc(vi.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = vi.VILinear(3, 4)

        def forward(self, x: Tensor) -> Tensor:
            return torch.relu(self.lin(x))  # type: ignore[no-any-return]

    class Net(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.enc = Enc()
            self.head = bnn.VILinear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.enc(x=x))  # type: ignore[no-any-return]

    for samples in (2, 3):
        assert Net()(torch.randn(4, 3), samples=samples).shape == (samples, 4, 2)


class _LastStep(bnn.VIModule):
    """A padded-sequence classifier reading each sequence's last real step."""

    def __init__(self, pick: str) -> None:
        super().__init__()
        self.rnn = bnn.VIGRU(3, 8, batch_first=True)
        self.skip = nn.Linear(3, 8)  # a plain branch on the input: shared rows
        self.head = bnn.VILinear(8, 2)
        self.pick = pick

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        from pyrolite_bnn.layers.functional import current_samples

        out, _ = self.rnn(x)  # (B * S, L, 8), row b * S + s
        if self.pick == "arange(B)":
            last = out[torch.arange(x.shape[0]), lengths - 1]
        elif self.pick == "gather":
            index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, out.shape[-1])
            last = out.gather(1, index).squeeze(1)
        elif self.pick == "particle mean":
            last = out[:, -1].view(x.shape[0], -1, 8).mean(1)
        elif self.pick == "folded rows":
            rows = torch.arange(out.shape[0])
            last = out[rows, lengths.repeat_interleave(current_samples()) - 1]
        else:  # a shared skip branch of the input alone
            return self.head(self.skip(x[:, -1]))  # type: ignore[no-any-return]
        return self.head(last)  # type: ignore[no-any-return]


@pytest.mark.parametrize("pick", ["arange(B)", "gather", "particle mean"])
def test_rows_taken_from_a_folded_output_are_refused(pick: str) -> None:
    """o[torch.arange(B), lengths - 1] picks rows 0..B-1 of the B * S folded
    rows (the first particles' examples) and the head read them as shared:
    a newcomer's padded-sequence classifier trained to chance (0.47 against
    0.96) without a word."""
    x, lengths = torch.randn(4, 6, 3), torch.tensor([6, 2, 5, 3])
    with pytest.raises(ValueError, match="taken from some particles only"):
        _LastStep(pick)(x, lengths, samples=5)


class _FirstRows(nn.Module):
    """``head(body(x)[:B])``: the first ``B`` of the folded rows, a view."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = bnn.VILinear(3, 3), bnn.VILinear(3, 2)
        self.samples = 5

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x)[: x.shape[0]])  # type: ignore[no-any-return]


class _FirstRowsNetwork(bnn.VIModule):
    """:class:`_FirstRows` as a ``VIModule`` network."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = bnn.VILinear(3, 3), bnn.VILinear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return _FirstRows.forward(self, x)  # type: ignore[arg-type]


def test_a_view_of_a_folded_output_is_refused_without_a_graph() -> None:
    """A view of a Bayesian layer's output (``h[:B]``, rows of the first
    particles) is told by its memory: refused without gradients
    (``torch.no_grad()``, ``draw_networks``) as with them, and after the first
    layer of a plain torch root, whose output was not recorded (both read as
    shared rows, silently, before)."""
    x = torch.randn(4, 3)
    taken = "taken from some particles only"
    with torch.no_grad(), pytest.raises(ValueError, match=taken):
        _FirstRowsNetwork()(x, samples=5)
    with pytest.raises(ValueError, match=taken):
        bnn.draw_networks(_FirstRowsNetwork(), samples=5)(x)
    with pytest.raises(ValueError, match=taken):
        _FirstRows()(x)


@pytest.mark.parametrize("pick", ["folded rows", "shared skip"])
def test_rows_of_the_fold_and_shared_branches_are_read_as_before(pick: str) -> None:
    x, lengths = torch.randn(4, 6, 3), torch.tensor([6, 2, 5, 3])
    out = _LastStep(pick)(x, lengths, samples=5)
    assert out.shape == (5, 4, 2)
    if pick == "folded rows":  # each particle's own last steps: they differ
        assert not torch.allclose(out[0], out[1])


class _PickedAtOutput(bnn.VIModule):
    """The last-step pick of ``_LastStep`` made on the network's output."""

    def __init__(self, pick: str) -> None:
        super().__init__()
        self.rnn = bnn.VIGRU(3, 8, batch_first=True)
        self.head = bnn.VILinear(8, 2)
        self.pick = pick

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        logits = self.head(self.rnn(x)[0])  # (B * S, L, 2)
        if self.pick == "arange(B)":
            return logits[torch.arange(x.shape[0]), lengths - 1]
        return logits[:, -1].view(x.shape[0], -1, 2).mean(1)  # particle mean


@pytest.mark.parametrize("pick", ["arange(B)", "particle mean"])
def test_rows_taken_from_a_folded_output_are_refused_at_the_output(pick: str) -> None:
    """Returned, the picked rows were expanded to every particle: each
    particle got the first particles' logits (or their mean), silently."""
    x, lengths = torch.randn(4, 6, 3), torch.tensor([6, 2, 5, 3])
    with pytest.raises(
        ValueError, match=r"network's output has 4 rows.*some particles"
    ):
        _PickedAtOutput(pick)(x, lengths, samples=5)


class _HeadOnStates(bnn.VIModule):
    """``fc(h_n)[-1]``: a head on every layer's state, then the last layer."""

    def __init__(self, before: bool, whole: bool) -> None:
        super().__init__()
        self.pre = bnn.VILinear(3, 3) if before else None
        self.rnn = bnn.VIGRU(3, 8, num_layers=2, batch_first=True)
        self.fc = bnn.VILinear(8, 2)
        self.whole = whole

    def forward(self, x: Tensor) -> Tensor:
        _, h = self.rnn(x if self.pre is None else self.pre(x))
        return self.fc(h)[-1] if self.whole else self.fc(h[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("before", [False, True], ids=["rnn first", "layer before"])
def test_a_head_on_the_whole_recurrent_state_is_refused(before: bool) -> None:
    """With as many layers as examples, fc(h_n) read the (layers, B * S, H)
    state as B shared rows: with the VIGRU first it ran silently, every
    particle through one particle's head (spread 0 against 0.68); with a
    Bayesian layer before, it was refused with advice about indexing."""
    x = torch.randn(2, 5, 3)  # B = 2 = num_layers
    with pytest.raises(
        ValueError, match=r"dimension 1 holds the 2 \* 4 folded.*h_n\[-1\]"
    ):
        _HeadOnStates(before, whole=True)(x, samples=4)
    assert _HeadOnStates(before, whole=False)(x, samples=4).shape == (4, 2, 2)


class _Tokens(bnn.VIModule):
    """A Bayesian embedding, then a sequence layer and a head (batch-first)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.embed = bnn.VIEmbedding(11, 8)
        self.body: nn.Module = (
            bnn.VILSTM(8, 8, batch_first=True)
            if kind == "lstm"
            else bnn.VITransformerEncoder(
                bnn.VITransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
                1,
            )
        )
        self.head = bnn.VILinear(8, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.body(self.embed(tokens))
        return self.head(h[0] if isinstance(h, tuple) else h)  # type: ignore[no-any-return]


_EMPTY_BATCH_NETWORKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (
        lambda: bnn.VISequential(bnn.VILinear(2, 8), nn.Tanh(), bnn.VILinear(8, 3)),
        (2,),
    ),
    "conv": (
        lambda: bnn.VISequential(
            bnn.VIConv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            bnn.VILinear(4 * 36, 3),
        ),
        (1, 6, 6),
    ),
    "conv+batchnorm": (
        lambda: bnn.VISequential(
            bnn.VIConv2d(1, 4, 3, padding=1),
            bnn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            bnn.VILinear(4 * 36, 3),
        ),
        (1, 6, 6),
    ),
    "batchnorm mlp": (
        lambda: bnn.VISequential(
            bnn.VILinear(2, 8), bnn.BatchNorm1d(8), nn.ReLU(), bnn.VILinear(8, 3)
        ),
        (2,),
    ),
    "embedding+lstm": (lambda: _Tokens("lstm"), (5,)),
    "embedding+transformer": (lambda: _Tokens("transformer"), (5,)),
}


@pytest.mark.parametrize("samples", [1, 4])
@pytest.mark.parametrize("kind", list(_EMPTY_BATCH_NETWORKS))
def test_an_empty_batch_with_gradients_runs_and_the_loss_refuses_it(
    kind: str, samples: int
) -> None:
    """B = 0 through two or more Bayesian layers with gradients gave (S, 0, ...)
    under torch.no_grad() only; with gradients the second layer's 0 rows
    (0 == B == B * S) were refused as 'taken from some particles only'. The
    network now returns (S, 0, ...) either way, and the loss names the empty
    batch."""
    make, shape = _EMPTY_BATCH_NETWORKS[kind]
    torch.manual_seed(0)
    net = make()
    x = (
        torch.randint(0, 11, (0, *shape))
        if kind.startswith("embedding")
        else torch.randn(0, *shape)
    )
    with torch.no_grad():
        expected = net(x, samples=samples).shape
    out = net(x, samples=samples)
    assert out.shape == expected
    assert out.shape[:2] == (samples, 0)
    assert out.requires_grad
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 50)
    with pytest.raises(ValueError, match=r"the batch is empty \(output of shape"):
        loss_fn(out, torch.zeros(out.shape[1:-1], dtype=torch.long))


def _traced_weights(
    trace: poutine.Trace, net: bnn.VIModule, samples: int
) -> dict[str, Tensor]:
    """Each weight site's draws in ``trace``, ``(samples, *shape)``."""
    return {
        v.site: trace.nodes[v.site]["value"].reshape(samples, *v.shape)
        for v in net.random_variables()
    }


class _GPTLike(bnn.VIModule):
    """GPT-2's embeddings: token table, position table read with ``(1, L)`` ids.

    Hugging Face's GPT-2, BERT and DistilBERT pass ``position_ids`` of shape
    ``(1, L)`` (torch broadcasts them against the ``(B, L)`` tokens).
    """

    def __init__(self, positions_first: bool = False) -> None:
        super().__init__()
        wide = bnn.MeanFieldNormal(init_scale=0.5)  # particles clearly differ
        self.tok = bnn.VIEmbedding(11, 6, variational=wide)
        self.pos = bnn.VIEmbedding(8, 6, variational=wide)
        self.head = bnn.VILinear(6, 5, variational=wide)
        self.positions_first = positions_first

    def forward(self, ids: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[1]).unsqueeze(0)  # (1, L)
        if self.positions_first:
            p = self.pos(positions)
            h = self.tok(ids) + p
        else:
            h = self.tok(ids) + self.pos(positions)
        return self.head(torch.tanh(h))  # type: ignore[no-any-return]


def _gpt_like_reference(weights: dict[str, Tensor], ids: Tensor, s: int) -> Tensor:
    """``_GPTLike`` as plain torch with particle ``s``'s weights."""
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    h = F.embedding(ids, weights["tok.weight"][s])
    h = h + F.embedding(positions, weights["pos.weight"][s])
    return F.linear(torch.tanh(h), weights["head.weight"][s], weights["head.bias"][s])


def test_a_position_table_read_with_one_row_of_ids_is_every_examples() -> None:
    """GPT-2, BERT and DistilBERT converted raised 'input has leading size 1'
    at samples >= 2: their ``(1, L)`` position ids, torch's broadcast over the
    batch, were no batch size the layout rule knew. Such a row, read after
    the tokens, is now the same for every example: each particle reads it
    with its own table. Compared with plain torch at each drawn network's
    weights (float32 arithmetic of the same operations: tolerance 1e-6)."""
    net, ids = _GPTLike(), torch.randint(0, 11, (4, 7))
    nets = bnn.draw_networks(net, samples=3)
    weights = nets.weights()
    got = nets(ids)
    assert got.shape == (3, 4, 7, 5)
    for s in range(3):
        want = _gpt_like_reference(weights, ids, s)
        torch.testing.assert_close(got[s], want, rtol=0.0, atol=1e-6)
    assert net(ids, samples=3).shape == (3, 4, 7, 5)  # rows drawn from moments

    class Positions(_GPTLike):
        def forward(self, ids: Tensor) -> Tensor:
            positions = torch.arange(ids.shape[1]).unsqueeze(0)
            return 0.0 * self.tok(ids) + self.pos(positions)  # type: ignore[no-any-return]

    # A training call draws the rows looked up, once per particle: every
    # example reads its particle's draw.
    table = Positions()(ids, samples=3)
    torch.testing.assert_close(table, table[:, :1].expand_as(table), rtol=0, atol=0)
    assert not torch.allclose(table[0], table[1])


@pytest.mark.parametrize("samples", [3, 4])
def test_a_position_table_looked_up_before_the_tokens_names_the_order(
    samples: int,
) -> None:
    """The first tensor a Bayesian layer reads in a call is a batch of its own
    (a summary of the input, below), one row included: a position table
    looked up first gives one row per particle, which fails torch's add with
    the tokens' ``B * S`` rows (at ``S = B`` the tokens' lookup itself fails:
    their ``B`` rows fit the positions' ``1 * S`` as well); the error says
    why and names the order that works."""
    ids = torch.randint(0, 11, (4, 7))
    refused = RuntimeError if samples != len(ids) else ValueError
    with pytest.raises(refused, match="look the tokens up before the positions"):
        _GPTLike(positions_first=True)(ids, samples=samples)
    with torch.no_grad(), pytest.raises(refused, match=r"must match|ambiguous"):
        bnn.draw_networks(_GPTLike(positions_first=True), samples=samples)(ids)


class _SetLevel(bnn.VIModule):
    """A Bayesian layer on a summary of the whole input: one row for the set."""

    def __init__(self) -> None:
        super().__init__()
        self.g = bnn.VILinear(3, 2, variational=bnn.MeanFieldNormal(init_scale=0.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.g(x.mean(0, keepdim=True))  # type: ignore[no-any-return]


def test_a_summary_of_the_input_read_first_is_a_batch_of_one() -> None:
    """``g(x.mean(0, keepdim=True))`` is ``(1, 2)`` in plain torch. The one-row
    broadcast read it as every example's: ``(S, 5, 2)``, and the loss refused
    a ``(1,)`` target. Read first, before anything is folded, it is a batch
    of 1: ``(S, 1, 2)``, equal to plain torch at each drawn network's weights
    (float32, the same operations: tolerance 1e-6)."""
    net, x = _SetLevel(), torch.randn(5, 3)
    nets = bnn.draw_networks(net, samples=3)
    weights, got = nets.weights(), nets(x)
    assert got.shape == (3, 1, 2)
    for s in range(3):
        want = F.linear(
            x.mean(0, keepdim=True), weights["g.weight"][s], weights["g.bias"][s]
        )
        torch.testing.assert_close(got[s], want, rtol=0.0, atol=1e-6)
    out = net(x, samples=3)
    assert out.shape == (3, 1, 2)
    loss = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=10)
    assert torch.isfinite(loss(out, torch.tensor([1])))


class _ProjectedPositions(_GPTLike):
    """Positions looked up first, then projected by a Bayesian layer."""

    def __init__(self) -> None:
        super().__init__(positions_first=True)
        self.proj = bnn.VILinear(6, 6)

    def forward(self, ids: Tensor) -> Tensor:
        p = self.proj(self.pos(torch.arange(ids.shape[1]).unsqueeze(0)))
        return self.head(torch.tanh(self.tok(ids) + p))  # type: ignore[no-any-return]


@pytest.mark.parametrize("grad", [True, False])
def test_one_row_read_first_is_refused_where_its_fold_is_the_batch_size(
    grad: bool,
) -> None:
    """The one row read first has ``S`` rows after its layer: at ``S = B``
    they were read as the call's batch, shared (before the one-row
    broadcast, and since it gave way to the first read). A projection of
    the positions looked up first then gave every particle all particles'
    positions, and the add with the tokens ran (silently wrong); a
    set-level output was ``(S, B, 2)``. Both are refused where the size is
    read, naming the order of the lookups; ``S != B`` reads as before."""
    ids = torch.randint(0, 11, (4, 7))
    with torch.set_grad_enabled(grad):
        with pytest.raises(
            ValueError, match=r"(?s)'proj'.*ambiguous.*one row.*tokens up before"
        ):
            _ProjectedPositions()(ids, samples=4)
        with pytest.raises(ValueError, match=r"ambiguous.*one row a Bayesian"):
            _SetLevel()(torch.randn(5, 3), samples=5)
        assert _SetLevel()(torch.randn(5, 3), samples=4).shape == (4, 1, 2)


def test_a_plain_sequence_first_step_read_first_is_not_broadcast() -> None:
    """A plain ``nn.GRU`` run sequence-first on ``x.unsqueeze(0)``, then a
    Bayesian head: its ``(1, B, H)`` output, read first, is a batch of 1 of
    its own (one pass per particle, each equal to plain torch at that
    particle's weights, tolerance 1e-6), not broadcast to ``B`` copies of
    the ``B`` examples (``(S, B, B, 2)``)."""

    class SeqPlain(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.gru, self.head = nn.GRU(3, 4), bnn.VILinear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            out, _ = self.gru(x.unsqueeze(0))  # (1, B, 4): time-major
            return self.head(out).squeeze(0)  # type: ignore[no-any-return]

    net, x = SeqPlain(), torch.randn(5, 3)
    nets = bnn.draw_networks(net, samples=3)
    weights, got = nets.weights(), nets(x)
    assert got.shape == (3, 1, 5, 2)
    with torch.no_grad():
        features = net.gru(x.unsqueeze(0))[0]
    for s in range(3):
        want = F.linear(features, weights["head.weight"][s], weights["head.bias"][s])
        torch.testing.assert_close(got[s], want, rtol=0.0, atol=1e-6)


def test_one_row_read_by_each_layer_kind_is_broadcast_per_particle() -> None:
    """The rule holds for every Bayesian layer reading a ``(1, ...)`` tensor
    that is no batch: a linear layer, a convolution, a transposed one. A
    traced call with drawn weights (``"reparam"``) equals plain torch at each
    particle's weights (tolerance 1e-5: conv arithmetic grouped differently)."""

    class Canvas(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.canvas = nn.Parameter(torch.randn(1, 2, 5, 5))
            self.conv = bnn.VIConv2d(2, 3, 3, padding=1, estimator="reparam")
            self.up = bnn.VIConvTranspose2d(2, 3, 3, padding=1, estimator="reparam")
            self.inp = bnn.VIConv2d(2, 3, 3, padding=1, estimator="reparam")

        def forward(self, x: Tensor) -> Tensor:
            return self.inp(x) + self.conv(self.canvas) + self.up(self.canvas)  # type: ignore[no-any-return]

    net, x = Canvas(), torch.randn(4, 2, 5, 5)
    with poutine.trace() as trace:
        got = net(x, samples=3)
    assert got.shape == (3, 4, 3, 5, 5)
    drawn = _traced_weights(trace.trace, net, 3)
    for s in range(3):
        w = {name: value[s] for name, value in drawn.items()}
        want = (
            F.conv2d(x, w["inp.weight"], w["inp.bias"], padding=1)
            + F.conv2d(net.canvas, w["conv.weight"], w["conv.bias"], padding=1)
            + F.conv_transpose2d(net.canvas, w["up.weight"], w["up.bias"], padding=1)
        )
        torch.testing.assert_close(got[s], want, rtol=0.0, atol=1e-5)


class _LearnedQuery(bnn.VIModule):
    """A learned ``(1, E)`` query projected by a Bayesian layer, scoring tokens."""

    def __init__(self, estimator: str = "auto", query_first: bool = False) -> None:
        super().__init__()
        wide = bnn.MeanFieldNormal(init_scale=0.5)
        self.query = nn.Parameter(torch.randn(1, 4))
        self.keys = bnn.VILinear(3, 4, variational=wide, estimator=estimator)
        self.proj = bnn.VILinear(4, 4, variational=wide, estimator=estimator)
        self.query_first = query_first

    def forward(self, x: Tensor) -> Tensor:
        if self.query_first:  # the first tensor a Bayesian layer reads
            query = self.proj(self.query)
            keys = self.keys(x)
        else:
            keys = self.keys(x)  # (B * S, L, 4)
            query = self.proj(self.query)  # (1, 4): the same for every example
        return torch.einsum("bld,bd->bl", keys, query)


@pytest.mark.parametrize("query_first", [False, True])
def test_a_learned_query_of_one_row_is_every_examples(query_first: bool) -> None:
    """A ``(1, E)`` parameter into a Bayesian linear layer raised 'input has
    leading size 1' at samples >= 2. It equals plain torch at each drawn
    network's weights (float32 summed in another order: relative 1e-5,
    absolute 1e-6; 1.9e-6 of 3.2 was seen under random seeds), in a
    traced training call (``"reparam"``) and in drawn networks. Read first,
    the network's own parameter is no batch of one (e757140 refused it at
    every S >= 2; probe falsepos9)."""
    x = torch.randn(5, 6, 3)
    net = _LearnedQuery(query_first=query_first)
    nets = bnn.draw_networks(net, samples=3)
    weights, got = nets.weights(), nets(x)
    assert got.shape == (3, 5, 6)
    reparam = _LearnedQuery("reparam", query_first=query_first)
    with poutine.trace() as trace:
        traced = reparam(x, samples=3)
    drawn = _traced_weights(trace.trace, reparam, 3)
    for model, values, out in ((net, weights, got), (reparam, drawn, traced)):
        for s in range(3):
            keys = F.linear(x, values["keys.weight"][s], values["keys.bias"][s])
            query = F.linear(
                model.query, values["proj.weight"][s], values["proj.bias"][s]
            )
            want = torch.einsum("bld,d->bl", keys, query[0])
            torch.testing.assert_close(out[s], want, rtol=1e-5, atol=1e-6)
    # Output moments (local reparameterisation) on the broadcast rows run too.
    assert net(x, samples=3).shape == (3, 5, 6)


def test_one_row_keeps_its_meaning_where_it_had_one() -> None:
    """A leading size of 1 that is a batch is read as before: the batch of 1
    itself, another input of batch 1 (and tensors of its batch), one
    particle."""
    net, ids = _GPTLike(), torch.randint(0, 11, (1, 7))
    assert net(ids, samples=3).shape == (3, 1, 7, 5)
    assert net(torch.randint(0, 11, (4, 7)), samples=1).shape == (1, 4, 7, 5)
    two = _TwoInputs()
    x, z = torch.randn(4, 3), torch.randn(1, 3)
    first, second = two(x, z, samples=3)
    assert (first.shape, second.shape) == ((3, 4, 2), (3, 1, 2))

    class OtherBatch(_TwoInputs):
        def forward(self, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
            return self.a(x), self.b(2.0 * z)  # no input, but of z's batch

    first, second = OtherBatch()(x, z, samples=3)
    assert (first.shape, second.shape) == ((3, 4, 2), (3, 1, 2))


class _WithContext(bnn.VIModule):
    """Examples ``x`` and a context ``ctx`` that a Bayesian layer reads after ``x``."""

    def __init__(
        self, estimator: str, expand: bool, ctx_first: bool, ctx_argument: int = 1
    ) -> None:
        super().__init__()
        wide = bnn.MeanFieldNormal(init_scale=0.5)  # particles clearly differ
        self.fx = bnn.VILinear(4, 6, estimator=estimator, variational=wide)
        self.fc = bnn.VILinear(3, 6, estimator=estimator, variational=wide)
        self.out = bnn.VILinear(6, 2, estimator=estimator, variational=wide)
        self.expand, self.ctx_first = expand, ctx_first
        self.ctx_argument = ctx_argument  # ctx's position in the call

    def call(self, x: Tensor, ctx: Tensor, **kwargs: Any) -> Tensor:
        """``self(x, ctx)``, or ``self(ctx, x)`` with ``ctx_argument=0``."""
        pair = (ctx, x) if self.ctx_argument == 0 else (x, ctx)
        return self(*pair, **kwargs)  # type: ignore[no-any-return]

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        x, ctx = (second, first) if self.ctx_argument == 0 else (first, second)
        if self.expand:  # the remedy the error names
            ctx = ctx.expand(x.shape[0], *ctx.shape[1:])
        if self.ctx_first:
            c = self.fc(ctx)
            h = self.fx(x) + c
        else:
            h = self.fx(x) + self.fc(ctx)
        return self.out(torch.relu(h))  # type: ignore[no-any-return]


@pytest.mark.parametrize("ctx_argument", [1, 0])
@pytest.mark.parametrize("ctx_first", [False, True])
@pytest.mark.parametrize("estimator", ["auto", "reparam"])
def test_a_one_row_input_beside_the_batch_names_its_rule_and_remedy(
    estimator: str, ctx_first: bool, ctx_argument: int
) -> None:
    """``net(x, ctx)`` with ``x`` of 5 rows and ``ctx`` of one row, both read by
    Bayesian layers, failed at ``samples > 1`` with torch's size error and the
    general note on the fold (with ``estimator="auto"`` the pass runs again
    with weights drawn, and the note read the first pass's state). An input
    keeps its own batch, here 1 (``test_one_row_keeps_its_meaning_where_it_
    had_one``): the note now says so and names the remedy, ``ctx.expand``,
    whose outputs equal plain torch at each drawn network's weights (float32,
    the same operations: tolerance 1e-6). With ``ctx`` the first argument,
    ``net(ctx, x)``, the note named ``bnn.match_particles`` instead, which
    mixed the particles there (it now refuses such rows)."""
    x, ctx = torch.randn(5, 4), torch.randn(1, 3)
    net = _WithContext(estimator, expand=False, ctx_first=ctx_first)
    net.ctx_argument = ctx_argument
    with pytest.raises(
        RuntimeError, match=r"keeps its own batch(.|\n)*ctx\.expand"
    ) as raised:
        net.call(x, ctx, samples=3)
    assert "beside another input's 5" in str(raised.value)
    with torch.no_grad(), pytest.raises(RuntimeError, match="keeps its own batch"):
        bnn.draw_networks(net, samples=3)(
            *((ctx, x) if ctx_argument == 0 else (x, ctx))
        )
    assert net.call(x, ctx, samples=1).shape == (1, 5, 2)  # plain torch broadcasts
    net.expand = True
    if ctx_argument == 0:  # the remedy in the call: ctx first, of the batch's size
        ctx = ctx.expand(5, 3)
    assert net.call(x, ctx, samples=3).shape == (3, 5, 2)
    nets = bnn.draw_networks(net, samples=3)
    weights = nets.weights()
    got = nets(*((ctx, x) if ctx_argument == 0 else (x, ctx)))
    for s in range(3):
        w = {name: value[s] for name, value in weights.items()}
        h = F.linear(x, w["fx.weight"], w["fx.bias"])
        h = h + F.linear(ctx, w["fc.weight"], w["fc.bias"])
        want = F.linear(torch.relu(h), w["out.weight"], w["out.bias"])
        torch.testing.assert_close(got[s], want, rtol=0.0, atol=1e-6)
    assert not torch.allclose(got[0], got[1])


@pytest.mark.parametrize("samples", [3, 4])
def test_a_width_error_beside_a_one_row_input_names_no_one_row_rule(
    samples: int,
) -> None:
    """``net(x, ctx)`` with ``ctx`` of one row combined per particle as it
    should be, then a bias 3 wide added to 4 features: torch names sizes 4
    and 3, and at S = 4 or S = 3 the note said a one-row input was read
    beside the batch and to expand it (it matched S anywhere in the
    text). The note on the one-row input comes only for its S rows against
    the batch's B * S (the test above)."""

    class ContextThenWrongBias(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.fx, self.fc = bnn.VILinear(3, 4), bnn.VILinear(2, 4)
            self.bias = nn.Parameter(torch.zeros(3))  # the features are 4

        def forward(self, x: Tensor, ctx: Tensor) -> Tensor:
            from pyrolite_bnn.layers.functional import current_samples

            per_particle = self.fx(x).unflatten(0, (-1, current_samples()))
            return (per_particle + self.fc(ctx)).flatten(0, 1) + self.bias

    with pytest.raises(RuntimeError, match=r"\(4\) must match") as raised:
        ContextThenWrongBias()(torch.randn(5, 3), torch.randn(1, 2), samples=samples)
    assert "keeps its own batch" not in str(raised.value)
    assert "ctx.expand" not in str(raised.value)


def test_one_row_taken_from_folded_rows_is_not_broadcast() -> None:
    """One row computed from a Bayesian layer's folded output (``h[:1]``,
    particle 0 of example 0; ``h.mean(0, keepdim=True)``, mixing particles)
    is no row for every example: it is refused."""

    class Picks(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = bnn.VILinear(3, 3), bnn.VILinear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(self.a(x).mean(0, keepdim=True))  # type: ignore[no-any-return]

    with pytest.raises(ValueError, match=r"one particle's \(h\[:1\]\) or a mix"):
        Picks()(torch.randn(4, 3), samples=3)


class _GraphReadout(bnn.VIModule):
    """A graph-level network on a batch vector, its readout written per particle.

    ``graphs`` (one row per graph) is the first input or not; ``copy`` makes
    the pooled rows a copy instead of a view of the per-particle tensor.
    """

    def __init__(self, graphs_first: bool, copy: bool = False) -> None:
        super().__init__()
        self.node = bnn.VILinear(5, 8, estimator="reparam")
        self.head = bnn.VILinear(8, 3, estimator="reparam")
        self.graphs_first, self.copy = graphs_first, copy

    def forward(self, first: Tensor, second: Tensor, batch_vector: Tensor) -> Tensor:
        from pyrolite_bnn.layers.functional import current_samples

        graphs, x = (first, second) if self.graphs_first else (second, first)
        samples = current_samples()
        h = torch.relu(self.node(x)).unflatten(0, (-1, samples))  # (N, S, 8)
        pooled = torch.zeros(len(graphs), samples, 8).index_add_(0, batch_vector, h)
        rows = pooled.flatten(0, 1)  # (G * S, 8), row g * S + s: a view
        return self.head(rows + 0 if self.copy else rows)  # type: ignore[no-any-return]

    def call(
        self, x: Tensor, graphs: Tensor, batch_vector: Tensor, samples: int
    ) -> Tensor:
        """The network on nodes ``x`` of ``len(graphs)`` graphs."""
        first, second = (graphs, x) if self.graphs_first else (x, graphs)
        return self(first, second, batch_vector, samples=samples)  # type: ignore[no-any-return]


def _graph_batch(nodes: int, graphs: int) -> tuple[Tensor, Tensor, Tensor]:
    """Node features, graph ids and the batch vector of ``graphs`` graphs."""
    return (
        torch.randn(nodes, 5),
        torch.arange(graphs),
        torch.arange(nodes) * graphs // nodes,
    )


@pytest.mark.parametrize(
    ("graphs_first", "grad"),
    [(False, True), (True, True), (True, False)],
    ids=["nodes-grad", "graphs-grad", "graphs-no_grad"],
)
def test_a_per_graph_readout_of_the_batch_size_is_refused(
    graphs_first: bool, grad: bool
) -> None:
    """5 graphs with 20 nodes in all at S = 4: the readout's 5 * 4 rows equal
    the node batch. With the nodes first they were read as the batch shared
    by the particles: with gradients refused as 'taken from some particles
    only' (with advice about lengths.repeat_interleave); the coincidence is
    now named. With the graph ids first the call's batch is the graphs', with
    or without gradients; the remedy was 'Give the network's inputs one batch
    size', which a graph batch cannot: it is another number of samples.
    (Nodes first under torch.no_grad() is read as the batch: no graph to tell
    them apart, concepts.rst; a view test, 7d8d495, refused correct inputs
    laid out (n, S, ...) and was taken out.)"""
    x, graphs, batch_vector = _graph_batch(20, 5)
    net = _GraphReadout(graphs_first)
    coincidence = (
        r"ambiguous: the batch 5 of the call folded with samples=4, or another "
        r"input's batch 20"
        if graphs_first
        else r"5 \* 4 happens to equal the batch size 20"
    )
    with (
        torch.set_grad_enabled(grad),
        pytest.raises(ValueError, match=coincidence) as raised,
    ):
        net.call(x, graphs, batch_vector, samples=4)
    assert "one batch size" not in str(raised.value)
    assert "another number of samples" in str(raised.value)


class _GroupCentred(nn.Module):
    """Centres the input over groups of ``k`` rows, then one Bayesian layer."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k, self.fc = k, bnn.VILinear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.view(-1, self.k, 3)
        centred = groups - groups.mean(1, keepdim=True)  # before any Bayesian read
        return self.fc(centred.flatten(0, 1))


def _grid_points() -> torch.Tensor:
    """A flattened grid of 5 x 4 points (three coordinates): a view of (5, 4, 3)."""
    axes = torch.meshgrid(
        torch.linspace(0, 1, 5), torch.linspace(0, 1, 4), indexing="ij"
    )
    return torch.stack([*axes, axes[0] * axes[1]], -1).reshape(-1, 3)


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize(
    "make",
    [
        _grid_points,
        lambda: torch.randn(1, 20, 3)[0],  # a batch of a loader's tensor: data[i]
        lambda: torch.randn(5, 4, 3).flatten(0, 1),  # clips of 4 frames
    ],
    ids=["grid", "data-row", "clips"],
)
def test_inputs_that_view_rows_laid_out_by_the_particle_count_are_the_batch(
    make: Callable[[], torch.Tensor], grad: bool
) -> None:
    """An input that is a view of (n, S, ...) memory (a flattened grid of 5 x 4
    points at S = 4, torch_blue's example iterating a (1, 10, 10) tensor at
    S = 10) was refused as 'laid out per particle' (7d8d495; probes
    tbswitch2, falsepos12): its rows are the batch's. The output equals the
    same call on a copy, draw for draw; so does a network that groups its
    input by S rows before its first Bayesian layer."""
    x = make()
    assert x._base is not None
    for model in (bnn.VISequential(bnn.VILinear(3, 2)), _GroupCentred(4)):
        outputs = []
        for given in (x, x.clone()):
            torch.manual_seed(1)
            with torch.set_grad_enabled(grad):
                outputs.append(bnn.draw_networks(model, 4)(given))
        torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
        assert outputs[0].shape == (4, 20, 2)


@pytest.mark.parametrize("graphs_first", [False, True], ids=["nodes", "graphs"])
def test_a_per_graph_readout_of_another_size_unfolds_per_graph(
    graphs_first: bool,
) -> None:
    """At S = 3 (15 rows, no batch size) each particle's output is the plain
    model's on its own weights, drawn with the same seed."""
    x, graphs, batch_vector = _graph_batch(20, 5)
    net = _GraphReadout(graphs_first)
    samples = 3
    with torch.no_grad():
        nets = bnn.draw_networks(net, samples)
        out = nets(*((graphs, x) if graphs_first else (x, graphs)), batch_vector)
        weights = nets.weights()
    assert out.shape == (samples, 5, 3)
    for s in range(samples):
        h = torch.relu(F.linear(x, weights["node.weight"][s], weights["node.bias"][s]))
        pooled = torch.zeros(5, 8).index_add_(0, batch_vector, h)
        expected = F.linear(pooled, weights["head.weight"][s], weights["head.bias"][s])
        torch.testing.assert_close(out[s], expected, rtol=1e-5, atol=1e-6)


def test_rows_taken_from_the_fold_name_the_batch_size_coincidence() -> None:
    """A copy of the per-graph rows is caught by the autograd walk with
    gradients on; its message names the coincidence of 5 graphs times 4
    particles with the 20 nodes, not only padded sequences."""
    x, graphs, batch_vector = _graph_batch(20, 5)
    with pytest.raises(
        ValueError, match=r"(?s)some particles only.*5 \* 4 happens to equal"
    ):
        _GraphReadout(False, copy=True).call(x, graphs, batch_vector, samples=4)


def test_an_output_with_the_batch_merged_names_no_readout() -> None:
    """``logits.view(-1, V)`` in the forward of a language model at B = 6,
    L = 7, S = 4 gives 168 = B * S * L rows, and the refusal said they were
    42 rows per particle, a graph-level readout, with torch.arange(G) as the
    remedy: more rows per particle than examples are no groups of the batch.
    A multiple of B * S is the batch merged with another dimension."""

    class Language(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.out = nn.Embedding(11, 8), bnn.VILinear(8, 11)

        def forward(self, tokens: Tensor) -> Tensor:
            return self.out(self.embed(tokens)).view(-1, 11)  # type: ignore[no-any-return]

    merged = r"(?s)leading size 168;.*168 = 6 \* 4 \* 7: the batch's folded rows merged"
    with pytest.raises(ValueError, match=merged) as raised:
        Language()(torch.randint(0, 11, (6, 7)), samples=4)
    assert "rows per particle" not in str(raised.value)
    assert "arange(G)" not in str(raised.value)


# The readout's rows are no batch of an input: read as folded, with a warning.
@pytest.mark.filterwarnings("ignore:a Bayesian layer got an input of:UserWarning")
@pytest.mark.parametrize(
    ("nodes", "match"),
    [
        (7, r"one row per particle.*x\.unsqueeze\(0\)"),
        (20, r"3 rows per particle.*first input"),
    ],
)
def test_an_output_of_rows_per_particle_names_the_layout(
    nodes: int, match: str
) -> None:
    """A set reduced per particle (one row per particle) and a graph-level
    readout with the nodes as the batch (3 graphs: 12 rows) were refused as
    'leading size 3/12; expected the batch size', without the way out."""

    class Readout(bnn.VIModule):
        def __init__(self, groups: int) -> None:
            super().__init__()
            self.node, self.head = bnn.VILinear(4, 8), bnn.VILinear(8, 2)
            self.groups = groups

        def forward(self, x: Tensor) -> Tensor:
            from pyrolite_bnn.layers.functional import current_samples

            samples = current_samples()
            h = self.node(x).unflatten(0, (-1, samples))  # (n, S, 8)
            group = torch.arange(len(x)) * self.groups // len(x)
            pooled = torch.zeros(self.groups, samples, 8).index_add_(0, group, h)
            return self.head(pooled.flatten(0, 1))  # type: ignore[no-any-return]

    with pytest.raises(ValueError, match=rf"(?s)leading size \d+; expected.*{match}"):
        Readout(1 if nodes == 7 else 3)(torch.randn(nodes, 4), samples=4)
