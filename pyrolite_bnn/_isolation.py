"""Running one of the library's computations apart from what surrounds its call.

:func:`~pyrolite_bnn.predict` is a computation of its own, whatever calls it:
Pyro handlers around the call (``poutine.block``, ``poutine.scale``, the trace
of an ``SVI`` step whose model uses a trained network's predictions) would
send its networks down the Pyro path, where the weights are drawn from the
prior, not the guide, and would record its weight sites; a network call still
running (``predict`` from a forward hook, or inside another network's
``forward``) would take the predicted network for one of its own layers.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TypeVar

import torch

from pyrolite_bnn._handlers import caller_handlers_set_aside
from pyrolite_bnn._plain_roots import close_stale_frame, in_running_network

__all__ = ["isolated"]

T = TypeVar("T")


def isolated(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` apart from the caller's Pyro handlers and network calls.

    The caller's Pyro handlers are set aside
    (:func:`~pyrolite_bnn._handlers.caller_handlers_set_aside`). Inside a
    running network call, ``fn`` runs in a fresh :class:`contextvars.Context`:
    the library's per-call state (particles, draws, a plain network's frame)
    starts empty, as outside any call; elsewhere in a copy of the caller's
    (as :func:`~pyrolite_bnn._context_values.in_own_context` runs a call):
    what it sets does not outlive it, even where a Ctrl-C skipped a restore, and a plain
    network's call that a Ctrl-C ended is closed when ``fn`` ends.

    Example:
        >>> from pyro import poutine
        >>> from pyrolite_bnn._handlers import pyro_wrapped
        >>> with poutine.scale(scale=2.0):
        ...     isolated(pyro_wrapped)
        False
    """

    def body() -> T:
        with caller_handlers_set_aside():
            return fn(*args)

    if in_running_network():
        context = contextvars.Context()
    elif torch.compiler.is_compiling():
        return body()  # torch.compile cannot trace Context.run: the caller's
    else:
        context = contextvars.copy_context()
    try:
        return context.run(body)
    finally:
        # A plain network's call that a Ctrl-C ended left its frame (with its
        # hook on the network and a hold of Pyro's settings) in this context,
        # where the next module call, in the caller's, cannot see it.
        context.run(close_stale_frame)
