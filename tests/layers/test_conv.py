"""Convolution specifics not covered by the contract suite: transposed options."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import pyrolite_bnn as bnn


def test_transposed_output_size_like_torch() -> None:
    layer = bnn.VIConvTranspose2d(3, 2, 3, stride=2, padding=1)
    reference = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)
    x = torch.randn(4, 3, 5, 6)
    for size in [(9, 11), (10, 12), (4, 2, 10, 11)]:
        out = layer(x, output_size=size, samples=2)
        assert out.shape[3:] == reference(x, output_size=size).shape[2:]
    with pytest.raises(ValueError, match=r"valid sizes range from 9 to 10"):
        layer(x, output_size=(11, 11))
    with pytest.raises(ValueError, match="output_size must have 2 or 4 elements"):
        layer(x, output_size=(10,))


def test_transposed_options_torch_rejects_too() -> None:
    with pytest.raises(ValueError, match=r"padding_mode must be one of \('zeros',\)"):
        bnn.VIConvTranspose1d(2, 2, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="takes padding as an int or 2 ints"):
        bnn.VIConvTranspose2d(2, 2, 3, padding="same")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divisible by groups"):
        bnn.VIConvTranspose3d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 2, L\)"):
        bnn.VIConvTranspose1d(2, 2, 3)(torch.randn(4, 3, 5))


def test_transposed_weight_layout_is_torch() -> None:
    layer = bnn.VIConvTranspose2d(6, 4, (3, 2), groups=2)
    assert tuple(layer.posterior["weight"].shape) == (6, 2, 3, 2)
    assert tuple(nn.ConvTranspose2d(6, 4, (3, 2), groups=2).weight.shape) == (
        6,
        2,
        3,
        2,
    )


def test_conv_repr_prints_like_torch() -> None:
    """String paddings and padding modes print as torch prints them."""
    layer = bnn.VIConv2d(2, 3, 3, padding="same", padding_mode="reflect")
    reference = nn.Conv2d(2, 3, 3, padding="same", padding_mode="reflect")
    assert repr(layer) == "VI" + repr(reference)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: bnn.VIConv2d(-1, 4, 3), "in_channels must be an integer >= 1, got -1"),
        (lambda: bnn.VIConv2d(2, 0, 3), "out_channels must be an integer >= 1, got 0"),
        (lambda: bnn.VIConvTranspose1d(0, 4, 3), "in_channels must be .* got 0"),
        (lambda: bnn.VIConv1d(2, 4, 3, groups=0), "groups must be .* got 0"),
    ],
)
def test_channel_counts_must_be_positive(make: Any, message: str) -> None:
    """``-1`` failed in ``torch.zeros``; ``out_channels=0`` built a layer whose
    forward failed (torch's ``nn.Conv2d(2, 0, 3)`` fails there too)."""
    with pytest.raises(ValueError, match=message):
        make()
