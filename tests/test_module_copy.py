"""copy_module: the copy convert, to_deterministic and laplace work on."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from pyrolite_bnn._module_copy import copy_module


def test_an_uncopyable_module_is_refused_naming_the_caller_and_the_remedy() -> None:
    """torch's own error points at weight_norm whatever the cause."""
    pruned = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    prune.l1_unstructured(pruned[0], "weight", amount=0.5)
    with pytest.raises(TypeError, match=r"^bnn\.laplace works on a copy") as info:
        copy_module(pruned, "bnn.laplace")
    assert "computed tensors held as attributes: 0.weight" in str(info.value)
    assert "prune.remove" in str(info.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's deprecation
        old = nn.utils.weight_norm(nn.Linear(4, 2))
    with pytest.raises(TypeError, match=r"parametrizations\.weight_norm instead"):
        copy_module(old, "bnn.convert")


def test_the_copy_computes_what_the_module_computes() -> None:
    """A decoder layer's activation module is not shadowed by F.relu."""
    layer = nn.TransformerDecoderLayer(
        4, 1, 8, dropout=0.0, activation=nn.GELU(), batch_first=True
    ).eval()
    duplicate = copy_module(layer, "bnn.convert")
    assert isinstance(duplicate.activation, nn.GELU)
    tgt, memory = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    with torch.no_grad():
        torch.testing.assert_close(
            duplicate(tgt, memory), layer(tgt, memory), rtol=0, atol=0
        )
