"""Tests of the entries of a network's parameters that training never moves."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev
from torch.nn import functional as F

from pyrolite_bnn._frozen_entries import FrozenEntries, padding_entries


def _trained_rows(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows of ``network[0].weight`` that one gradient step on ``x`` moves."""
    network(x).sum().backward()
    grad = network[0].weight.grad
    assert grad is not None
    return grad.abs().sum(-1) > 0


def test_the_padding_rows_of_embeddings_and_bags_are_candidates() -> None:
    net = nn.Sequential(
        nn.Embedding(4, 2, padding_idx=-1),  # torch counts it from the end: 3
        nn.EmbeddingBag(5, 2, padding_idx=0),
        nn.Embedding(3, 2),
    )
    padding = padding_entries(net)
    assert sorted(padding) == ["0.weight", "1.weight"]
    assert padding["0.weight"].all(-1).tolist() == [False, False, False, True]
    assert padding["1.weight"].all(-1).tolist() == [True] + [False] * 4
    assert padding_entries(nn.Linear(2, 2)) == {}


def test_padding_entries_are_those_the_look_up_gives_no_gradient() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(4, 2, padding_idx=2), nn.Linear(2, 1))
    moved = _trained_rows(net, torch.arange(4)[:, None])  # every row read
    assert (~moved).tolist() == padding_entries(net)["0.weight"].all(-1).tolist()


def test_a_table_tied_to_an_output_layer_has_no_padding_candidate() -> None:
    """``out.weight = emb.weight``: the output layer's use trains every row."""
    embed, out = nn.Embedding(4, 3, padding_idx=0), nn.Linear(3, 4, bias=False)
    out.weight = embed.weight
    net = nn.Sequential(embed, out)
    assert bool(_trained_rows(net, torch.tensor([[1], [2]])).all())
    assert padding_entries(net) == {}
    assert not FrozenEntries(net, ["0.weight"]).has_candidates


def test_a_table_shared_by_two_embeddings_keeps_the_rows_both_leave_out() -> None:
    first, second = nn.Embedding(4, 1, padding_idx=0), nn.Embedding(4, 1, padding_idx=3)
    second.weight = first.weight
    assert padding_entries(nn.ModuleList([first, second])) == {}
    again = nn.Embedding(4, 1, padding_idx=0)
    again.weight = first.weight
    shared = padding_entries(nn.ModuleList([first, again]))
    assert shared["0.weight"].reshape(-1).tolist() == [True, False, False, False]


def test_candidates_index_the_named_parameters_concatenated_in_order() -> None:
    net = nn.Sequential(nn.Linear(1, 2), nn.Embedding(3, 2, padding_idx=1))
    entries = FrozenEntries(net, ["1.weight", "0.bias"])
    assert entries.candidates.nonzero().squeeze(-1).tolist() == [2, 3]
    assert not FrozenEntries(net, ["0.weight", "0.bias"]).has_candidates


def test_a_padding_row_is_frozen_only_where_all_its_columns_stay_zero() -> None:
    """One nonzero column of a padding row makes the whole row weights; the
    zero columns of other entries (an unseen category's row) never freeze."""
    net = nn.Sequential(nn.Embedding(3, 2, padding_idx=1), nn.Linear(2, 1))
    names = ["0.weight", "1.bias"]  # columns: rows 0, 1 (padding), 2, then the bias
    entries = FrozenEntries(net, names)
    unread = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]]])  # (B, K, P)
    entries.observe(unread)
    frozen = entries.frozen()
    assert frozen is not None
    assert frozen.tolist() == [False, False, True, True, False, False, False]
    entries.observe(torch.tensor([[0.0, 0.0, 0.0, -0.5, 0.0, 0.0, 1.0]]))
    assert entries.frozen() is None  # the row's second entry was read
    never_fed = FrozenEntries(net, names).frozen()
    assert never_fed is not None
    assert never_fed.nonzero().squeeze(-1).tolist() == [2, 3]


def test_a_jacobian_of_another_width_is_refused() -> None:
    net = nn.Embedding(3, 2, padding_idx=0)
    with pytest.raises(ValueError, match="Jacobians with 6 columns"):
        FrozenEntries(net, ["weight"]).observe(torch.zeros(1, 5))


def test_without_padding_rows_nothing_is_observed_or_frozen() -> None:
    entries = FrozenEntries(nn.Linear(2, 1), ["weight", "bias"])
    assert not entries.has_candidates
    entries.observe(torch.zeros(4, 1, 99))  # not even looked at
    assert entries.frozen() is None
    assert entries.candidates.tolist() == [False] * 3


class _SharedInputOutput(nn.Module):
    """fairseq's ``share_input_output_embed``: the table read in ``forward``."""

    def __init__(self, direct_read: bool) -> None:
        super().__init__()
        self.direct_read = direct_read
        self.emb = nn.Embedding(4, 2, padding_idx=0)

    def forward(self, idx: Tensor) -> Tensor:
        h = torch.tanh(self.emb(idx).sum(-2))
        return F.linear(h, self.emb.weight) if self.direct_read else h


@pytest.mark.parametrize("direct_read", [False, True])
def test_the_jacobians_tell_a_table_read_directly_in_forward(direct_read: bool) -> None:
    """torch.func gives the padding row of a look-up exact zero columns; a
    direct read of the table gives them values, as torch gives it a gradient."""
    torch.manual_seed(0)
    net = _SharedInputOutput(direct_read)
    idx = torch.tensor([[0, 1], [2, 3], [0, 0]])
    weight = net.emb.weight.detach()

    def outputs(table: Tensor) -> Tensor:
        return functional_call(net, {"emb.weight": table}, (idx,)).reshape(-1)

    jacobian = jacrev(outputs)(weight)  # (outputs, 4, 2)
    entries = FrozenEntries(net, ["emb.weight"])
    entries.observe(jacobian.reshape(jacobian.shape[0], -1))
    net(idx).sum().backward()
    assert net.emb.weight.grad is not None
    trained = bool(net.emb.weight.grad[0].ne(0).any())
    assert trained is direct_read
    assert (entries.frozen() is None) is direct_read
