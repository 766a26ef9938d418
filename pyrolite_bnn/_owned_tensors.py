"""Tensors kept track of without keeping them alive, and without weak references.

A weak reference to a tensor makes ``torch.utils.swap_tensors`` refuse it
("Cannot swap t1 because it has weakref associated with it"), and under
``torch.__future__.set_swap_module_params_on_conversion(True)`` (torch's
announced default) every conversion of a module swaps its parameters:
``.to()``, ``.double()``, ``to_empty``, ``load_state_dict``. Bookkeeping that
held a module's parameters weakly (the parameters of the torch model a network
was converted from, those a compiled loss graph's checks read) made every
later conversion of that module fail.

:class:`OwnedTensors` holds the tensors strongly while the module that owns
them (their *owner*) lives: the owner keeps them alive anyway, so this costs
no memory, and a swap keeps the very objects (their contents change), so the
references stay right. Once the owner is collected, it holds weakly the
tensors that something else keeps alive (an optimizer): no module holds those
any more, so nothing converts them.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Mapping
from typing import Any, Generic, TypeVar

from torch import Tensor

__all__ = ["OwnedTensors"]

_Key = TypeVar("_Key", bound=Hashable)


class OwnedTensors(Generic[_Key]):
    """Tensors by key, held strongly while their owner lives and weakly after.

    Args:
        owner: the object holding the tensors (a module; it must support
            weak references), or ``None`` where none is known: then the
            tensors are held as long as this object.
        tensors: the tensors by key.

    Example:
        >>> import gc
        >>> from torch import nn
        >>> layer = nn.Linear(2, 1)
        >>> kept = OwnedTensors(layer, dict(layer.named_parameters()))
        >>> sorted(kept.alive())
        ['bias', 'weight']
        >>> weight = layer.weight  # held elsewhere (an optimizer, say)
        >>> del layer
        >>> _ = gc.collect()
        >>> sorted(kept.alive())
        ['weight']
    """

    def __init__(self, owner: object | None, tensors: Mapping[_Key, Tensor]) -> None:
        self._strong: dict[_Key, Tensor] = dict(tensors)
        self._weak: dict[_Key, weakref.ref[Tensor]] = {}
        if owner is None:
            return
        # The finalizer refers to this object weakly: dropping it (a graph
        # dropped, a record forgotten) drops the tensors before the owner.
        gone = weakref.finalize(owner, OwnedTensors._owner_gone, weakref.ref(self))
        gone.atexit = False

    def alive(self) -> dict[_Key, Tensor]:
        """The tensors that still exist, by key."""
        if self._strong:
            return dict(self._strong)
        found = {key: reference() for key, reference in self._weak.items()}
        return {key: tensor for key, tensor in found.items() if tensor is not None}

    @staticmethod
    def _owner_gone(reference: weakref.ref[OwnedTensors[Any]]) -> None:
        """The owner is gone: keep only the tensors something else keeps."""
        kept = reference()
        if kept is not None:
            kept._weak = {key: weakref.ref(t) for key, t in kept._strong.items()}
            kept._strong = {}
