"""The containers a module takes and returns, walked to their leaves and rebuilt.

A network's inputs and outputs may be nested tuples (namedtuples and torch's
``torch.return_types`` kept), lists, dicts (their subclasses kept:
``OrderedDict``, ``defaultdict``, a dict-based output class) and dataclass
instances; every other object, a tensor or a ``PackedSequence`` among them, is
a leaf. Everything that maps over the tensors of such a value (the particle
unfold, the per-particle stacking, the records of outputs) walks it here, so
that every container kind is seen the same way everywhere: a dataclass output
came back with its tensors still folded because the unfold did not walk
dataclasses.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

__all__ = [
    "Structure",
    "StructureMismatch",
    "flatten",
    "leaves",
    "map_leaves",
    "stack",
    "tensors",
]


def _is_leaf(value: Any) -> bool:
    if isinstance(value, (tuple, list, dict)):
        return isinstance(value, PackedSequence)  # a named tuple, one leaf
    return not _is_dataclass_instance(value)


def _is_dataclass_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _fields(value: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(value) if hasattr(value, f.name)]


def _children(value: Any) -> tuple[list[Any], Any]:
    """The items of a container, and the keys that put them back."""
    if isinstance(value, dict):
        keys = list(value)
        return [value[key] for key in keys], keys
    if isinstance(value, (tuple, list)):
        return list(value), None
    names = _fields(value)
    return [getattr(value, name) for name in names], names


def _rebuilt(value: Any, keys: Any, items: list[Any]) -> Any:
    """A container like ``value`` holding ``items``."""
    kind = type(value)
    if isinstance(value, dict):
        if kind is dict:
            return dict(zip(keys, items, strict=True))
        new = copy.copy(value)
        for key, item in zip(keys, items, strict=True):
            new[key] = item
        return new
    if isinstance(value, tuple):
        if kind is tuple:
            return tuple(items)
        if hasattr(value, "_fields"):  # a namedtuple
            return cast(Any, kind)(*items)
        return cast(Any, kind)(items)  # torch.return_types, other subclasses
    if isinstance(value, list):
        if kind is list:
            return items
        sequence = copy.copy(value)
        sequence[:] = items
        return sequence
    instance = copy.copy(value)
    for name, item in zip(keys, items, strict=True):
        object.__setattr__(instance, name, item)  # frozen dataclasses too
    return instance


@dataclass(frozen=True)
class Structure:
    """How the leaves of a flattened value nest (see :func:`flatten`).

    Example:
        >>> import torch
        >>> leaves, structure = flatten({"a": (torch.ones(1), 2)})
        >>> structure.rebuild([torch.zeros(1), 3])
        {'a': (tensor([0.]), 3)}
    """

    template: Any
    keys: Any = None
    children: tuple[Structure, ...] | None = None
    size: int = 1

    def rebuild(self, values: list[Any]) -> Any:
        """The value with its leaves replaced by ``values``, in order."""
        if len(values) != self.size:
            raise ValueError(f"expected {self.size} leaves, got {len(values)}")
        return self._rebuild(iter(values))

    def _rebuild(self, values: Iterator[Any]) -> Any:
        if self.children is None:
            return next(values)
        items = [child._rebuild(values) for child in self.children]
        return _rebuilt(self.template, self.keys, items)

    def matches(self, other: Structure) -> bool:
        """Whether ``other`` nests the same container kinds and keys."""
        if self.children is None or other.children is None:
            return self.children is None and other.children is None
        return (
            type(self.template) is type(other.template)
            and self.keys == other.keys
            and len(self.children) == len(other.children)
            and all(
                a.matches(b) for a, b in zip(self.children, other.children, strict=True)
            )
        )


def flatten(value: Any) -> tuple[list[Any], Structure]:
    """The leaves of ``value`` in order, and the structure that rebuilds it."""
    if _is_leaf(value):
        return [value], Structure(value)
    items, keys = _children(value)
    found: list[Any] = []
    children = []
    for item in items:
        item_leaves, child = flatten(item)
        found.extend(item_leaves)
        children.append(child)
    return found, Structure(value, keys, tuple(children), len(found))


def leaves(value: Any) -> list[Any]:
    """The leaves of ``value`` in order (containers walked, see the module)."""
    found: list[Any] = []
    _collect(value, found)
    return found


def _collect(value: Any, found: list[Any]) -> None:
    kind = type(value)
    if kind is tuple or kind is list:
        for item in value:
            _collect(item, found)
    elif kind is dict:
        for item in value.values():
            _collect(item, found)
    elif isinstance(value, Tensor) or _is_leaf(value):
        found.append(value)
    else:
        for item in _children(value)[0]:
            _collect(item, found)


def tensors(value: Any) -> list[Tensor]:
    """The tensors of ``value`` in order.

    Example:
        >>> import torch
        >>> len(tensors([torch.ones(1), {"b": torch.ones(2)}, "text"]))
        2
    """
    if isinstance(value, Tensor):  # every call: the common case first
        return [value]
    return [leaf for leaf in leaves(value) if isinstance(leaf, Tensor)]


def map_leaves(value: Any, function: Callable[[Any], Any]) -> Any:
    """``value`` rebuilt with ``function`` applied to each leaf.

    Example:
        >>> import torch
        >>> map_leaves((torch.ones(2), [torch.ones(3)]), lambda t: t.shape)
        (torch.Size([2]), [torch.Size([3])])
    """
    kind = type(value)  # the common kinds first: this runs on every call's output
    if kind is tuple:
        return tuple(map_leaves(item, function) for item in value)
    if kind is list:
        return [map_leaves(item, function) for item in value]
    if kind is dict:
        return {key: map_leaves(item, function) for key, item in value.items()}
    if isinstance(value, Tensor) or _is_leaf(value):
        return function(value)
    items, keys = _children(value)
    return _rebuilt(value, keys, [map_leaves(item, function) for item in items])


class StructureMismatch(ValueError):
    """Values that should nest alike hold different containers or keys."""


def stack(values: Sequence[Any]) -> Any:
    """``values`` of one structure, their tensors stacked along a new dimension 0.

    Leaves that are not tensors are the first value's.

    Raises:
        StructureMismatch: if the values nest differently.

    Example:
        >>> import torch
        >>> stack([{"a": torch.ones(2), "n": 1}, {"a": torch.zeros(2), "n": 2}])
        {'a': tensor([[1., 1.],
                [0., 0.]]), 'n': 1}
    """
    flat = [flatten(value) for value in values]
    structure = flat[0][1]
    if not all(structure.matches(other) for _, other in flat[1:]):
        raise StructureMismatch("the values nest different containers or keys")
    stacked = [
        torch.stack(column) if isinstance(column[0], Tensor) else column[0]
        for column in zip(*(found for found, _ in flat), strict=True)
    ]
    return structure.rebuild(stacked)
