"""Context variables set for a block and put back however the block ends.

``token = var.set(value); try: ... finally: var.reset(token)`` has a window:
a ``KeyboardInterrupt`` (Ctrl-C in a notebook) is delivered between two
bytecodes, and one that lands as ``set`` returns, before the token is stored
and the ``try`` entered, leaves the value set for the rest of the session (a
particle state left open runs every later network call as a layer nested in
it). :class:`set_while` stores the value to put back *before* setting, and
sets inside the ``try``, so there is no such window.

Putting the value back has one Python cannot close: an interrupt delivered
as ``__exit__`` starts (every Python function checks for one as it starts)
skips the restore, and every later ``set_while`` of the variable saved the
stale value as its value from before and put it back. So what a call of the
library sets runs in the call's own context (:func:`in_own_context`): the
context is dropped when the call ends, however it ends, by C code that no
interrupt can stop, and nothing the call set outlives it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, copy_context
from typing import Any, Generic, TypeVar

import torch

__all__ = ["in_own_context", "set_while"]

T = TypeVar("T")
R = TypeVar("R")


def in_own_context(fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """``fn(*args, **kwargs)`` in a copy of the current context.

    The call sees every context variable as the caller does; what it sets
    (by :class:`set_while` or otherwise) is gone when it returns or raises,
    also where an interrupt skipped the restore of a ``set_while``: the copy
    is left by :meth:`contextvars.Context.run`, in C. A call whose settings
    must outlive it (a plain network's frame, opened by its first Bayesian
    layer for the layers after it) must not run here.

    Example:
        >>> flag = ContextVar("flag", default=False)
        >>> in_own_context(flag.set, True) is not None
        True
        >>> flag.get()
        False
    """
    if torch.compiler.is_compiling():
        # torch.compile cannot trace Context.run: a compiled call runs
        # in the caller's context.
        return fn(*args, **kwargs)
    return copy_context().run(fn, *args, **kwargs)


class set_while(Generic[T]):  # lower case, as torch.no_grad
    """Set ``var`` to ``value`` in the body; the value from before comes back after.

    Unlike ``ContextVar.reset``, the value from before is put back with
    ``set``: readers see the same value (``get()`` of an unset variable is
    its default).

    Args:
        var: the context variable (with a default).
        value: its value in the body.

    Example:
        >>> from contextvars import ContextVar
        >>> flag = ContextVar("flag", default=False)
        >>> with set_while(flag, True):
        ...     print(flag.get())
        True
        >>> flag.get()
        False
    """

    __slots__ = ("_before", "_value", "_var")

    def __init__(self, var: ContextVar[T], value: T) -> None:
        self._var = var
        self._value = value
        # Nothing to put back before __enter__ has read it: an exit recorded
        # before the enter (a plain network's call, see _plain_roots) that an
        # interrupt kept from entering does nothing.
        self._before: T | _NotEntered = _NOT_ENTERED

    def __enter__(self) -> None:
        self._before = self._var.get()
        try:
            self._var.set(self._value)
        except BaseException:  # an interrupt delivered as set() returns
            self._var.set(self._before)
            raise

    def __exit__(self, *exc_info: object) -> None:
        before = self._before
        if not isinstance(before, _NotEntered):
            self._var.set(before)


class _NotEntered:
    """The value from before of a :class:`set_while` not entered."""


_NOT_ENTERED = _NotEntered()
