"""Which modules drop activations or take batch statistics while predicting."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
from torch import nn

import pyrolite_bnn as bnn
from pyrolite_bnn._mode_warnings import drops_activations


def _one_layer_lstm_with_dropout() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note: the rate goes unused
        return nn.LSTM(4, 4, dropout=0.5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Dropout(0.0),
        lambda: nn.MultiheadAttention(4, 2),
        _one_layer_lstm_with_dropout,  # the rate applies between layers only
        lambda: bnn.VILSTM(4, 4),
    ],
)
def test_modules_that_drop_nothing_give_no_dropout_warning(
    make: Callable[[], nn.Module],
) -> None:
    module = make()
    assert module.training
    assert not drops_activations(module)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.AlphaDropout(0.1),
        lambda: nn.Dropout2d(0.1),
        lambda: nn.MultiheadAttention(4, 2, dropout=0.1),
        lambda: bnn.VIMultiheadAttention(4, 2, dropout=0.1),
        lambda: nn.GRU(4, 4, num_layers=2, dropout=0.1),
        lambda: bnn.VILSTM(4, 4, num_layers=2, dropout=0.1),
    ],
)
def test_modules_that_drop_activations_are_found(
    make: Callable[[], nn.Module],
) -> None:
    module = make()
    assert drops_activations(module)
    assert not drops_activations(module.eval())
