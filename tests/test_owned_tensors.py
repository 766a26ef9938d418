"""``OwnedTensors``: held while the owner lives, weakly after, never blocking a swap."""

from __future__ import annotations

import gc
import weakref

import torch
from torch import nn

from pyrolite_bnn._owned_tensors import OwnedTensors


def test_tensors_of_a_living_owner_are_kept_and_can_be_swapped() -> None:
    """A weak reference to a parameter made ``torch.utils.swap_tensors`` (the
    conversions under torch's swap flag) refuse it; these are strong."""
    layer = nn.Linear(3, 2)
    kept = OwnedTensors(layer, dict(layer.named_parameters()))
    weight = layer.weight
    assert weakref.getweakrefcount(weight) == 0
    torch.utils.swap_tensors(weight, nn.Parameter(torch.zeros(2, 3)))
    assert kept.alive()["weight"] is weight
    assert torch.equal(kept.alive()["weight"], torch.zeros(2, 3))


def test_once_the_owner_is_gone_only_tensors_held_elsewhere_are_kept() -> None:
    layer = nn.Linear(3, 2)
    kept = OwnedTensors(layer, dict(layer.named_parameters()))
    weight = layer.weight  # an optimizer's reference, say
    bias = weakref.ref(layer.bias)
    del layer
    gc.collect()
    assert bias() is None
    assert kept.alive() == {"weight": weight}


def test_the_tensors_go_with_the_holder_before_the_owner() -> None:
    """Dropping the holder (a compiled graph dropped) keeps nothing alive."""
    layer = nn.Linear(3, 2)
    removed = nn.Parameter(torch.ones(2))
    kept = OwnedTensors(layer, {"removed": removed})
    gone = weakref.ref(removed)
    del kept, removed
    gc.collect()
    assert gone() is None


def test_without_an_owner_the_tensors_live_as_long_as_the_holder() -> None:
    tensor = torch.ones(2)
    kept = OwnedTensors(None, {0: tensor})
    assert kept.alive() == {0: tensor}
