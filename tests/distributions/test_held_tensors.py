from __future__ import annotations

import copy
import gc
import pickle

import pyro.distributions as dist
import torch
from torch import nn

from pyrolite_bnn.distributions._held_tensors import (
    LastChecked,
    held_tensors,
    storage_address,
    storage_names,
)

_TD = torch.distributions


def test_held_tensors_look_into_what_a_distribution_is_made_of() -> None:
    """Nested distributions, transforms and lists of them, each with its path
    and holder; a transform's cached input and output (a tuple) are no
    parameters."""
    shift = torch.tensor(0.5)
    transformed = _TD.TransformedDistribution(
        _TD.Normal(torch.zeros(2), 1.0),
        [
            _TD.ComposeTransform(
                [_TD.AffineTransform(shift, torch.tensor(2.0)), _TD.ExpTransform()]
            )
        ],
    )
    mixture = _TD.MixtureSameFamily(
        _TD.Categorical(torch.tensor([0.3, 0.7])),
        _TD.Normal(torch.zeros(2), torch.tensor([1.0, 0.1])),
    )
    paths = {held.path: held for held in held_tensors(transformed)}
    assert set(paths) == {
        "base_dist.loc",
        "base_dist.scale",
        "transforms[0].parts[0].loc",
        "transforms[0].parts[0].scale",
    }
    affine = paths["transforms[0].parts[0].loc"]
    assert affine.tensor is shift
    assert getattr(affine.holder, affine.name) is shift
    transformed.rsample()  # fills the transforms' caches (tuples of tensors)
    assert {held.path for held in held_tensors(transformed)} == set(paths)
    assert {held.path for held in held_tensors(mixture)} >= {
        "_mixture_distribution.probs",
        "_component_distribution.loc",
        "_component_distribution.scale",
    }
    wrapped = dist.Laplace(torch.zeros(2), 1.0).mask(False).to_event(1)
    assert [held.path for held in held_tensors(wrapped)] == [
        "base_dist.base_dist.loc",
        "base_dist.base_dist.scale",
    ]


def test_storage_names_find_views_and_detached_tensors_not_copies() -> None:
    layer = nn.Linear(3, 2)
    names = storage_names(layer.named_parameters())
    assert set(names.values()) == {"weight", "bias"}
    for shared in (layer.weight, layer.weight.detach(), layer.weight[1:].detach()):
        assert names.get(storage_address(shared)) == "weight"  # type: ignore[arg-type]
    for apart in (layer.weight.detach().clone(), layer.weight * 1.0):
        assert storage_address(apart) not in names
    assert storage_address(torch.empty(0)) is None
    assert storage_address(torch.empty(3, device="meta")) is None
    with torch.device("meta"):
        assert storage_names(nn.Linear(3, 2).named_parameters()) == {}


def test_last_checked_matches_the_same_objects_only() -> None:
    """A freed tensor, another one, one that requires grad now, another
    module: no match; a copy of the record remembers nothing."""
    loc, scale = torch.zeros(3), torch.ones(3)
    last = LastChecked()
    last.remember([loc, scale], owner=1)
    assert last.matches([loc, scale], owner=1)
    assert last.matches([loc, scale], owner=None)  # checked against a module
    assert not last.matches([loc, scale], owner=2)
    assert not last.matches([loc], owner=1)
    assert not last.matches([scale, loc], owner=1)
    loc.requires_grad_()
    assert not last.matches([loc, scale], owner=1)
    loc.requires_grad_(False)
    for copied in (copy.deepcopy(last), pickle.loads(pickle.dumps(last))):
        assert not copied.matches([loc, scale], owner=1)
    last.remember([torch.zeros(3)], owner=None)  # freed at once
    gc.collect()
    assert not last.matches([torch.zeros(3)], owner=None)
    last.remember([loc], owner=None)
    assert not last.matches([loc], owner=1)  # not checked against a module yet
