"""The peak memory of the tensors a block of code allocates, in this thread."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["AllocationPeak"]


class AllocationPeak(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Largest total size of the tensor storages allocated inside the block at once.

    Every PyTorch operator that runs inside ``with`` in this thread (a
    dispatch mode is thread-local: other threads' calls are not seen) passes
    through this mode. A storage an operator returns that none of its
    arguments has (not a view, not an ``out=`` or in-place result) is new: it
    counts from then until it is freed (a weak reference to the storage, whose
    Python object PyTorch keeps for as long as the storage lives). Temporaries
    inside a layer, which module hooks cannot see, count like any other
    tensor; tensors that existed before the block (inputs, parameters) do not.
    Memory allocated outside PyTorch operators (NumPy arrays, Python objects)
    and the allocator's own overhead are not counted.

    ``predict``'s memory probe sizes its chunks with it. Running operators
    through a Python mode costs tens of microseconds each (37-150 us measured
    against ~3 us): a probe of a long recurrence (thousands of steps) takes
    as long as the prediction itself.

    Attributes:
        live: bytes of the storages allocated inside the block still alive.
        peak: the largest ``live`` while the block ran.

    Example:
        >>> import torch
        >>> with AllocationPeak() as memory:
        ...     a = torch.ones(1000)  # 4000 bytes
        ...     b = (a * 2).view(10, 100)  # 4000 more; the view adds nothing
        ...     del a, b
        ...     c = torch.ones(10)
        >>> memory.peak, memory.live
        (8000, 40)
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.live = 0
        self.peak = 0
        self._counted: dict[int, int] = {}  # id of a live storage -> its bytes

    def __enter__(self) -> AllocationPeak:
        """Start counting (the mode is pushed for this thread)."""
        super().__enter__()  # type: ignore[no-untyped-call]
        return self

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Run ``func`` and count the storages it allocated."""
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        arguments = {id(s) for s in _storages((args, kwargs))}
        for storage in _storages(out):
            key = id(storage)
            if key in arguments or key in self._counted:
                continue
            size = storage.nbytes()
            self._counted[key] = size
            weakref.finalize(storage, self._freed, key)
            self.live += size
        self.peak = max(self.peak, self.live)
        return out

    def _freed(self, key: int) -> None:
        self.live -= self._counted.pop(key)


def _storages(value: object) -> Iterator[torch.UntypedStorage]:
    """The storages of the tensors in ``value`` (nested tuples, lists, dicts)."""
    if isinstance(value, Tensor):
        try:
            yield value.untyped_storage()
        except (NotImplementedError, RuntimeError):  # sparse, nested: not counted
            return
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _storages(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _storages(item)
