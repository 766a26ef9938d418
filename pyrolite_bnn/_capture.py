"""Whether a computation is being captured into a graph (see ``compiled.py``).

While capturing, code must not read tensor values into Python (``float(t)``,
``bool(t)``): such reads either fail or are frozen into the graph. Host-side
shortcuts that are only worth it eagerly check :func:`is_capturing`. Under
``torch.func`` transforms tensors are wrappers without storage
(:func:`is_wrapped`, :func:`data_address`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from contextvars import ContextVar

import torch

from pyrolite_bnn._context_values import set_while

_CAPTURING: ContextVar[bool] = ContextVar("pyrolite_capturing", default=False)


def transforms_active() -> bool:
    """Whether ``torch.func`` transforms (``grad``, ``jacrev``, ``vmap``) run.

    Custom autograd Functions written in the ``ctx`` style, like the fused
    LSTM recurrence, cannot run under them; callers take autograd's own ops.
    """
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def is_wrapped(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``torch.func`` wrapper (``grad``'s or ``vmap``'s).

    A wrapper has no storage of its own; under ``vmap`` its value cannot be
    read into Python (``float(t)``), and under ``grad`` such a read drops its
    gradient: host-side shortcuts take the tensor path for it.
    """
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(tensor))


def data_address(tensor: torch.Tensor) -> int:
    """``tensor.data_ptr()``, read through ``torch.func`` wrappers.

    A wrapper's ``data_ptr()`` raises; the innermost tensor it wraps holds
    the memory, at the same address for a view of all of it.
    """
    while is_wrapped(tensor):
        tensor = torch._C._functorch.get_unwrapped(tensor)
    return tensor.data_ptr()


def is_capturing() -> bool:
    """Whether the running code is being traced into a graph."""
    return _CAPTURING.get()


def capturing() -> AbstractContextManager[None]:
    """Mark the body as graph capture."""
    return set_while(_CAPTURING, True)
