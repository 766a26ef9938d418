"""The layer registry: lookups, arguments, conflicting registrations."""

from __future__ import annotations

import pytest
from torch import nn

import pyrolite_bnn as bnn
from pyrolite_bnn.layers import registry


def test_lookup_follows_subclasses() -> None:
    class MyLinear(bnn.VILinear):
        pass

    entry = registry.for_bayesian(MyLinear(2, 3))
    assert entry is not None
    assert entry.torch_cls is nn.Linear
    assert registry.for_torch(nn.Dropout) is None
    assert registry.for_bayesian(bnn.VIModule) is None


def test_arguments_are_read_from_either_class() -> None:
    entry = registry.for_torch(nn.ConvTranspose2d)
    assert entry is not None
    options = {"stride": 2, "padding": 1, "output_padding": 1, "bias": False}
    ours = entry.arguments(bnn.VIConvTranspose2d(4, 2, 3, **options))
    theirs = entry.arguments(nn.ConvTranspose2d(4, 2, 3, **options))
    assert ours == theirs
    assert ours["bias"] is False
    assert ours["output_padding"] == (1, 1)
    embedding = registry.for_torch(nn.Embedding)
    assert embedding is not None
    assert "_weight" not in embedding.arguments(nn.Embedding(3, 2))


def test_a_torch_class_has_one_bayesian_twin() -> None:
    with pytest.raises(ValueError, match="Linear is already registered to"):

        @registry.register(nn.Linear)
        class OtherLinear(bnn.VIModule):
            pass
