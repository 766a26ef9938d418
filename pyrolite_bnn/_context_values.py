"""Context variables set for a block and put back however the block ends.

``token = var.set(value); try: ... finally: var.reset(token)`` has a window:
a ``KeyboardInterrupt`` (Ctrl-C in a notebook) is delivered between two
bytecodes, and one that lands as ``set`` returns, before the token is stored
and the ``try`` entered, leaves the value set for the rest of the session (a
particle state left open runs every later network call as a layer nested in
it). :class:`set_while` stores the value to put back *before* setting, and
sets inside the ``try``, so there is no such window.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Generic, TypeVar

__all__ = ["set_while"]

T = TypeVar("T")


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

    def __enter__(self) -> None:
        self._before = self._var.get()
        try:
            self._var.set(self._value)
        except BaseException:  # an interrupt delivered as set() returns
            self._var.set(self._before)
            raise

    def __exit__(self, *exc_info: object) -> None:
        self._var.set(self._before)
