"""Whether a computation is being captured into a graph (see ``compiled.py``).

While capturing, code must not read tensor values into Python (``float(t)``,
``bool(t)``): such reads either fail or are frozen into the graph. Host-side
shortcuts that are only worth it eagerly check :func:`is_capturing`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_CAPTURING: ContextVar[bool] = ContextVar("pyrolite_capturing", default=False)


def is_capturing() -> bool:
    """Whether the running code is being traced into a graph."""
    return _CAPTURING.get()


@contextmanager
def capturing() -> Iterator[None]:
    """Mark the body as graph capture."""
    token = _CAPTURING.set(True)
    try:
        yield
    finally:
        _CAPTURING.reset(token)
