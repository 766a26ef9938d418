"""Outputs in containers: every tensor of any container gets the particle dimension.

A network returning a ``@dataclass`` came back with its tensors still folded,
``(B * S, ...)`` instead of ``(S, B, ...)``, without a word; an ``OrderedDict``
subclass came back as a plain ``dict``; a converted model running its forward
per particle returned only particle 0's dataclass (probe of 2026-12-02). Each
container kind is checked against the same network returning the bare tensor,
at the same seed.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import pyro
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import pyrolite_bnn as bnn
from pyrolite_bnn import vi
from pyrolite_bnn._structures import flatten, map_leaves

SAMPLES, BATCH = 3, 6


@dataclasses.dataclass
class Logits:
    logits: Tensor
    note: str = "kept"


@dataclasses.dataclass(frozen=True)
class Frozen:
    logits: Tensor


class Pair(NamedTuple):
    logits: Tensor
    twice: Tensor


class Ordered(collections.OrderedDict[str, Any]):
    pass


WRAPPERS: dict[str, Callable[[Tensor], Any]] = {
    "dataclass": lambda t: Logits(t),
    "frozen dataclass": lambda t: Frozen(t),
    "dict subclass": lambda t: Ordered(logits=t),
    "namedtuple": lambda t: Pair(t, 2 * t),
    "return_types": lambda t: torch.max(torch.stack([t, t - 1]), dim=0),
    "nested": lambda t: [{"inner": Logits(t)}, (t,)],
}


def _logits(out: Any) -> Tensor:
    while not isinstance(out, Tensor):
        if isinstance(out, dict):
            out = next(iter(out.values()))
        elif isinstance(out, (list, tuple)):
            out = out[0]
        else:
            out = out.logits
    return out


class _Net(bnn.VIModule):
    def __init__(self, wrap: Callable[[Tensor], Any]) -> None:
        super().__init__()
        self.fc = bnn.VILinear(3, 2)
        self.wrap = wrap

    def forward(self, x: Tensor) -> Any:
        return self.wrap(self.fc(x))


@pytest.mark.parametrize("kind", list(WRAPPERS))
def test_every_container_kind_is_unfolded_and_keeps_its_type(kind: str) -> None:
    x = torch.randn(BATCH, 3)
    net = _Net(WRAPPERS[kind])
    pyro.set_rng_seed(1)
    out = net(x, samples=SAMPLES)
    net.wrap = lambda t: t
    pyro.set_rng_seed(1)
    bare = net(x, samples=SAMPLES)
    assert type(out) is type(WRAPPERS[kind](torch.zeros(1)))
    assert bare.shape == (SAMPLES, BATCH, 2)
    expected = _logits(WRAPPERS[kind](bare))
    torch.testing.assert_close(_logits(out), expected)
    if kind == "dataclass":
        assert out.note == "kept"
    if kind == "namedtuple":
        torch.testing.assert_close(out.twice, 2 * bare)


class _Functional(nn.Module):
    """Reads its weight functionally: converted, it runs per particle."""

    def __init__(self, wrap: Callable[[Tensor], Any], embed: bool) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 3) if embed else None
        self.fc = nn.Linear(3, 2)
        self.wrap = wrap

    def forward(self, x: Tensor) -> Any:
        h = self.emb(x).mean(1) if self.emb is not None else x
        return self.wrap(F.linear(h, self.fc.weight, self.fc.bias))


@pytest.mark.parametrize("embed", [False, True], ids=["vmapped", "in turn"])
@pytest.mark.parametrize("kind", ["dataclass", "dict subclass", "nested"])
def test_per_particle_forward_returns_every_particle_in_the_container(
    kind: str, embed: bool
) -> None:
    """The converted forward runs under ``torch.vmap`` (which returns tensors
    only) or, with a library layer below, once per particle (the stacking
    kept the first particle's dataclass)."""
    torch.manual_seed(0)
    x = torch.randint(0, 5, (BATCH, 4)) if embed else torch.randn(BATCH, 3)
    model = _Functional(WRAPPERS[kind], embed)
    net = vi.convert_to_vimodule(copy.deepcopy(model))
    pyro.set_rng_seed(1)
    out = net(x, samples=SAMPLES)
    plain = copy.deepcopy(model)
    plain.wrap = lambda t: t
    reference = vi.convert_to_vimodule(plain)
    reference.load_state_dict(net.state_dict())
    pyro.set_rng_seed(1)
    bare = reference(x, samples=SAMPLES)
    assert bare.shape == (SAMPLES, BATCH, 2)
    assert type(out) is type(WRAPPERS[kind](torch.zeros(1)))
    torch.testing.assert_close(_logits(out), bare)
    assert _logits(out).std(0).min() > 0  # the particles differ


_LEAF = st.one_of(
    st.integers(0, 3).map(lambda n: torch.full((n + 1,), float(n))),
    st.sampled_from(["text", None, 7]),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from("abc"), children, max_size=3),
        st.dictionaries(st.sampled_from("abc"), children, max_size=3).map(
            lambda d: Ordered(d)
        ),
        children.map(lambda c: Logits(torch.ones(1), note=c)),
    )


@settings(max_examples=60, deadline=None)
@given(st.recursive(_LEAF, _containers, max_leaves=8))
def test_flatten_then_rebuild_is_the_value(value: Any) -> None:
    found, structure = flatten(value)
    rebuilt = structure.rebuild(found)
    assert type(rebuilt) is type(value)
    assert _described(rebuilt) == _described(value)
    doubled = map_leaves(value, lambda v: 2 * v if isinstance(v, Tensor) else v)
    assert _described(doubled) == _described(
        structure.rebuild([2 * v if isinstance(v, Tensor) else v for v in found])
    )


def _described(value: Any) -> Any:
    if isinstance(value, Tensor):
        return ("tensor", value.tolist())
    if isinstance(value, dict):
        return (type(value), [(k, _described(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value), [_described(v) for v in value])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value), _described(dataclasses.astuple(value)))
    return value


def test_an_object_of_another_class_holding_tensors_is_refused() -> None:
    """A ``SimpleNamespace`` (or any plain object) output came back with its
    tensors still folded, ``(B * S, ...)``, without a word."""
    import types

    net = _Net(lambda t: types.SimpleNamespace(logits=t))
    with pytest.raises(TypeError, match=r"SimpleNamespace holding tensors.*dataclass"):
        net(torch.randn(BATCH, 3), samples=SAMPLES)
    net.wrap = lambda t: (t, types.SimpleNamespace(note="no tensors"))
    out = net(torch.randn(BATCH, 3), samples=SAMPLES)
    assert out[0].shape == (SAMPLES, BATCH, 2)
    assert out[1].note == "no tensors"
