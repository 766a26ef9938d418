"""The library's walks of autograd graphs do not rely on node objects persisting.

torch before 2.7 hands out a new Python object for an autograd node at each
access (``grad_fn``, ``next_functions``) and frees it after use; CPython then
reuses its ``id``. Walks that remembered the ``id`` of visited nodes took new
nodes for seen ones and stopped early: the loss accepted ``dec(enc(x))`` and
left the encoder's KL out (torch 2.1-2.6). These tests hand the walks such
nodes.
"""

from __future__ import annotations

from typing import Any

import pytest

from pyrolite_bnn import _no_grad_watch, _particles, record


class _Data:
    def __init__(self, *parents: _Data, name: str = "MulBackward0") -> None:
        self.parents = parents
        self.metadata: dict[str, Any] = {}
        self.name = name


class _Fresh:
    """A node as old torch hands it out: a new object at every access."""

    def __init__(self, data: _Data) -> None:
        self.data = data

    @property
    def metadata(self) -> dict[str, Any]:
        return self.data.metadata

    @property
    def next_functions(self) -> tuple[tuple[_Fresh, int], ...]:
        return tuple((_Fresh(parent), 0) for parent in self.data.parents)


def _wide_graph(width: int) -> tuple[_Data, list[_Data]]:
    """A root over ``width`` chains of 3 nodes; the end of each chain is a leaf."""
    ends = [_Data() for _ in range(width)]
    chains = [_Data(_Data(end)) for end in ends]
    return _Data(*chains), ends


@pytest.mark.parametrize("width", [2, 16])
def test_records_are_found_past_freed_nodes(width: int) -> None:
    root, ends = _wide_graph(width)
    marks = [object() for _ in ends]
    for end, mark in zip(ends, marks, strict=True):
        end.metadata[record._METADATA_KEY] = mark
    found = record._records_in_graph(_Fresh(root))
    assert len(found) == width
    assert {id(m) for m in found} == {id(m) for m in marks}


def test_checkpoint_nodes_are_found_past_freed_nodes() -> None:
    root, ends = _wide_graph(16)
    ends[0].name = "CheckpointFunctionBackward"  # walked last

    class _Named(_Fresh):
        @property
        def next_functions(self) -> tuple[tuple[_Fresh, int], ...]:
            return tuple((_named(parent), 0) for parent in self.data.parents)

    def _named(data: _Data) -> _Fresh:
        return type(data.name, (_Named,), {})(data)

    class _Output:
        grad_fn = _named(root)

    assert _no_grad_watch._checkpointed(_Output())  # type: ignore[arg-type]


def test_folded_outputs_are_found_past_freed_nodes() -> None:
    root, ends = _wide_graph(16)

    class _State:
        def __init__(self) -> None:
            self.folded_outputs = {id(ends[0]): ends[0]}  # walked last

    class _Held(_Fresh):
        @property
        def next_functions(self) -> tuple[tuple[Any, int], ...]:
            return tuple(
                (parent if parent is ends[0] else _Held(parent), 0)
                for parent in self.data.parents
            )

    class _Tensor:
        grad_fn = _Held(root)

    assert _particles._reaches_folded_output(_State(), _Tensor())  # type: ignore[arg-type]
