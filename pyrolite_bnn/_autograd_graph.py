"""Searches of a tensor's autograd graph: whether some node is reachable.

The walks keep the nodes themselves, not only their ids: torch may hand out
a new Python object for a node at each access and free it after, and a freed
object's id is reused (a set of ids ended walks early).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["reached_nodes", "reaches_node"]


def reaches_node(root: Any, found: Callable[[Any], bool]) -> bool:
    """Whether a node reachable from ``root`` (itself included) is ``found``.

    Args:
        root: an autograd node (a tensor's ``grad_fn``), or ``None``.
        found: the test of one node.

    Example:
        >>> import torch
        >>> x = torch.ones(2, requires_grad=True)
        >>> y = (2 * x).sum()
        >>> reaches_node(y.grad_fn, lambda node: type(node).__name__ == "MulBackward0")
        True
        >>> reaches_node(None, lambda node: True)
        False
    """
    seen: dict[int, Any] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        if found(node):
            return True
        seen[id(node)] = node
        stack.extend(child for child, _ in node.next_functions)
    return False


def reached_nodes(root: Any, targets: list[Any]) -> list[Any]:
    """The nodes of ``targets`` that the autograd graph from ``root`` reaches.

    One walk of the whole graph, however many targets; each target found is
    returned once, in the order of ``targets``.

    Args:
        root: an autograd node (a tensor's ``grad_fn``), or ``None``.
        targets: autograd nodes (``None`` entries are never reached).

    Example:
        >>> import torch
        >>> x = torch.ones(2, requires_grad=True)
        >>> a, b = 2 * x, 3 * x
        >>> found = reached_nodes(a.exp().grad_fn, [b.grad_fn, a.grad_fn])
        >>> [node is a.grad_fn for node in found]
        [True]
    """
    wanted = {id(node): node for node in targets if node is not None}
    hits: set[int] = set()
    if wanted:
        reaches_node(root, lambda node: _note(node, wanted, hits))
    return [node for key, node in wanted.items() if key in hits]


def _note(node: Any, wanted: dict[int, Any], hits: set[int]) -> bool:
    """Note ``node`` if wanted; whether every wanted node is found (the walk ends)."""
    if id(node) in wanted:
        hits.add(id(node))
    return len(hits) == len(wanted)
