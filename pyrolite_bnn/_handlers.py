"""Which Pyro handlers belong to the running computation.

Pyro's handler stack is one list for the process; code decides between
Pyro's path and the PyTorch-style one by whether any handler is on it
(``am_i_wrapped``). A computation of the library's own that sets the
caller's handlers aside (:func:`~pyrolite_bnn._isolation.isolated`: a
prediction inside a user's Pyro model) blocks them and counts only the
handlers pushed after that: :func:`pyro_wrapped`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import pyro
from pyro import poutine
from pyro.poutine.runtime import am_i_wrapped

__all__ = ["caller_handlers_set_aside", "pyro_wrapped"]

# Handlers on Pyro's stack below this depth are the caller's, set aside.
_BASE: ContextVar[int] = ContextVar("pyrolite_handler_base", default=0)


def _depth() -> int:
    # A Pyro internal: Pyro has no public view of its handler stack.
    return len(pyro.poutine.runtime._PYRO_STACK)


def pyro_wrapped() -> bool:
    """``am_i_wrapped()``, not counting handlers set aside by the caller."""
    base = _BASE.get()
    if base == 0:
        return am_i_wrapped()
    return _depth() > base


@contextmanager
def caller_handlers_set_aside() -> Iterator[None]:
    """Run the body as if no Pyro handler surrounded it.

    The caller's handlers stay on Pyro's stack, below a ``poutine.block`` that
    keeps the body's sample sites from them; :func:`pyro_wrapped` counts only
    handlers pushed in the body.

    Example:
        >>> with poutine.scale(scale=2.0):
        ...     with caller_handlers_set_aside():
        ...         pyro_wrapped()
        False
    """
    if not am_i_wrapped():
        yield
        return
    with poutine.block():
        token = _BASE.set(_depth())
        try:
            yield
        finally:
            _BASE.reset(token)
