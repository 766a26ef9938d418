"""Tests of the entries of a network's parameters that training never moves."""

from __future__ import annotations

import torch
from torch import nn

from pyrolite_bnn._frozen_entries import free_entries, frozen_entries


def _trained_rows(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows of ``network[0].weight`` that one gradient step on ``x`` moves."""
    network(x).sum().backward()
    grad = network[0].weight.grad
    assert grad is not None
    return grad.abs().sum(-1) > 0


def test_the_padding_rows_of_embeddings_and_bags_are_frozen() -> None:
    net = nn.Sequential(
        nn.Embedding(4, 2, padding_idx=-1),  # torch counts it from the end: 3
        nn.EmbeddingBag(5, 2, padding_idx=0),
        nn.Embedding(3, 2),
    )
    frozen = frozen_entries(net)
    assert sorted(frozen) == ["0.weight", "1.weight"]
    assert frozen["0.weight"].all(-1).tolist() == [False, False, False, True]
    assert frozen["1.weight"].all(-1).tolist() == [True] + [False] * 4
    assert frozen_entries(nn.Linear(2, 2)) == {}


def test_frozen_entries_are_those_torch_gives_no_gradient() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(4, 2, padding_idx=2), nn.Linear(2, 1))
    moved = _trained_rows(net, torch.arange(4)[:, None])  # every row read
    assert (~moved).tolist() == frozen_entries(net)["0.weight"].all(-1).tolist()


def test_a_table_tied_to_an_output_layer_has_its_padding_row_trained() -> None:
    """``out.weight = emb.weight``: the output layer's use trains every row."""
    embed, out = nn.Embedding(4, 3, padding_idx=0), nn.Linear(3, 4, bias=False)
    out.weight = embed.weight
    net = nn.Sequential(embed, out)
    assert bool(_trained_rows(net, torch.tensor([[1], [2]])).all())
    assert frozen_entries(net) == {}
    assert free_entries(net, ["0.weight"]) is None


def test_a_table_shared_by_two_embeddings_keeps_the_rows_both_leave_out() -> None:
    first, second = nn.Embedding(4, 1, padding_idx=0), nn.Embedding(4, 1, padding_idx=3)
    second.weight = first.weight
    assert frozen_entries(nn.ModuleList([first, second])) == {}
    again = nn.Embedding(4, 1, padding_idx=0)
    again.weight = first.weight
    shared = frozen_entries(nn.ModuleList([first, again]))
    assert shared["0.weight"].reshape(-1).tolist() == [True, False, False, False]


def test_free_entries_index_the_named_parameters_concatenated_in_order() -> None:
    net = nn.Sequential(nn.Linear(1, 2), nn.Embedding(3, 2, padding_idx=1))
    free = free_entries(net, ["1.weight", "0.bias"])
    assert free is not None
    assert free.tolist() == [0, 1, 4, 5, 6, 7]
    assert free_entries(net, ["0.weight"]) is None
