"""The network calls whose inputs are differentiated, found from a derivative.

A physics-informed loss observes a derivative of the network's output by its
input, ``slopes = torch.autograd.grad(out, x, ..., create_graph=True)``. The
graph of ``slopes`` reaches the weights and weight moments that the call of
``out`` computed (``softplus(rho)``, ``mu + sigma * eps``), not ``out``'s own
node, where the call's record sits (:func:`~pyrolite_bnn.record.attach_record`).

Each call with gradients whose inputs carry a derivative is remembered here,
weakly (a record lives as long as its output or the output's graph), and
:func:`calls_reached` finds the calls among them whose own tensors' nodes (a
record's :meth:`~pyrolite_bnn.record.ForwardRecord.call_nodes`) the graph of
a tensor reaches. Other calls (the training hot path) are not remembered.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from pyrolite_bnn._autograd_graph import reached_nodes

if TYPE_CHECKING:
    from pyrolite_bnn.record import ForwardRecord

__all__ = ["calls_reached", "remember"]

_CALLS: weakref.WeakSet[ForwardRecord] = weakref.WeakSet()


def remember(record: ForwardRecord) -> None:
    """Remember the record of a call whose inputs carry a derivative.

    The record keeps its :meth:`~pyrolite_bnn.record.ForwardRecord.call_nodes`
    from now on, also after a loss took its KL: a second loss (a physics term
    beside the data term) finds the call as the first did.
    """
    record.keep_call_nodes()
    _CALLS.add(record)


def calls_reached(root: Any) -> list[ForwardRecord]:
    """The remembered calls whose own tensors the graph from ``root`` reaches.

    Args:
        root: an autograd node (a tensor's ``grad_fn``), or ``None``.

    Returns:
        Each such call's record once (``[]`` if none).
    """
    if root is None:
        return []
    owners: list[tuple[Any, ForwardRecord]] = []
    for record in list(_CALLS):
        owners.extend((node, record) for node in record.call_nodes())
    found = reached_nodes(root, [node for node, _ in owners])
    records: list[ForwardRecord] = []
    # A node two calls share (moments kept from one call to the next) names both.
    for node, record in owners:
        reached = any(node is other for other in found)
        if reached and all(record is not other for other in records):
            records.append(record)
    return records
