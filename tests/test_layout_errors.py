"""Errors about the rows of a Bayesian layer's input name the layer.

The layout rule raises deep in a layer's arithmetic; the message named
neither the layer nor, for a network made by ``bnn.convert``, the
``exclude=`` that keeps the layer deterministic.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor, nn

import pyrolite_bnn as bnn


class _Positions(nn.Module):
    """nanoGPT's position lookup: ``pos(torch.arange(L))``, no batch dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(11, 4), nn.Embedding(8, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, ids: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[1])  # (L,): read by its size L
        return self.head(self.tok(ids) + self.pos(positions))  # type: ignore[no-any-return]


class _Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(_Positions())

    def forward(self, ids: Tensor) -> Tensor:
        return self.body(ids)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("make", "path"), [(_Positions, "pos"), (_Wrapper, "body.0.pos")]
)
def test_a_converted_networks_layer_is_named_with_its_exclude(
    make: type[nn.Module], path: str
) -> None:
    """'input has leading size 5: expected the batch size 3 ...': which of
    the model's layers, and what to do, was left to the reader."""
    net = bnn.convert(make())
    ids = torch.randint(0, 11, (3, 5))
    with pytest.raises(ValueError, match=r"leading size 5") as caught:
        net(ids, samples=2)
    text = str(caught.value)
    assert text.startswith(f"VIEmbedding {path!r}: input has leading size 5")
    assert f"bnn.convert(model, exclude=[{path!r}]) keeps that layer" in text
    assert "torch.arange(L).unsqueeze(0)" in text
    # The drawn networks' calls name it the same way.
    with pytest.raises(ValueError, match=re.escape(f"exclude=[{path!r}]")):
        bnn.draw_networks(net, samples=2)(ids)
    # Excluded, the table is torch's, read by torch's broadcasting.
    kept = bnn.convert(make(), exclude=[path])
    assert kept(ids, samples=2).shape == (2, 3, 5, 3)


def test_a_layer_of_a_network_of_ones_own_is_named_without_convert() -> None:
    """An ambiguous size ('a tensor with 8 rows is ambiguous') is named too."""

    class Net(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = bnn.VILinear(3, 2), bnn.VILinear(3, 5)
            self.c = bnn.VISequential(nn.ReLU(), bnn.VILinear(5, 2))

        def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            return self.a(x), self.c(self.b(y))

    # 8 rows: x's batch (shared) or y's 4 folded with 2 particles. The layer
    # is named once, by its own path (not its container's).
    with pytest.raises(
        ValueError, match=r"^VILinear 'c.1': a tensor with 8 rows"
    ) as caught:
        Net()(torch.randn(8, 3), torch.randn(4, 3), samples=2)
    assert "bnn.convert" not in str(caught.value)
