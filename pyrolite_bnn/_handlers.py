"""Which Pyro handlers belong to the running computation.

Pyro's handler stack is one list for the process; code decides between
Pyro's path and the PyTorch-style one by whether any handler is on it
(``am_i_wrapped``). A computation of the library's own that sets the
caller's handlers aside (:func:`~pyrolite_bnn._isolation.isolated`: a
prediction inside a user's Pyro model) blocks them and counts only the
handlers pushed after that: :func:`pyro_wrapped`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import CodeType, FrameType, FunctionType
from typing import Any

import pyro
from pyro import poutine
from pyro.infer.importance import Importance
from pyro.infer.mcmc.util import initialize_model
from pyro.infer.predictive import WeighedPredictive
from pyro.poutine.messenger import Messenger
from pyro.poutine.replay_messenger import ReplayMessenger
from pyro.poutine.runtime import am_i_wrapped, effectful, get_mask
from pyro.poutine.scale_messenger import ScaleMessenger
from pyro.poutine.trace_messenger import TraceMessenger
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyrolite_bnn._context_values import set_while

__all__ = [
    "active_scales",
    "called_from",
    "caller_handlers_set_aside",
    "code_of",
    "computation_handlers",
    "importance_sampler",
    "initialising_inference",
    "innermost_trace",
    "innermost_trace_holds",
    "method_of_running",
    "pyro_wrapped",
    "raising_frame",
    "replayed_traces",
    "running_frame",
    "traced_site_count",
    "traces_holding",
]

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


def computation_handlers() -> list[Messenger]:
    """The handlers on Pyro's stack that belong to the running computation.

    Outermost first (Pyro applies them to a site from the last one back),
    without the caller's handlers that a computation of the library's own
    set aside (:func:`caller_handlers_set_aside`).

    Example:
        >>> with poutine.scale(scale=2.0):
        ...     with caller_handlers_set_aside(), poutine.mask(mask=False):
        ...         [type(handler).__name__ for handler in computation_handlers()]
        ['MaskMessenger']
    """
    # A Pyro internal, as in _depth.
    return pyro.poutine.runtime._PYRO_STACK[_BASE.get() :]


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
    with poutine.block(), set_while(_BASE, _depth()):
        yield


def traced_site_count(name: str) -> int:
    """The most sample sites named ``name`` that one trace of the computation holds.

    A site under a ``pyro.contrib.autoname.scope`` prefix (``"mean/" + name``)
    counts too. Only the traces pushed after the caller's handlers that were
    set aside count (a prediction inside a user's Pyro model is a
    computation of its own). A site a ``poutine.block`` kept from a trace is
    not in it.
    """
    suffix = "/" + name
    most = 0
    for handler in computation_handlers():
        if isinstance(handler, TraceMessenger):
            count = sum(
                1
                for site, node in handler.trace.nodes.items()
                if node["type"] == "sample" and (site == name or site.endswith(suffix))
            )
            most = max(most, count)
    return most


def replayed_traces() -> list[Trace]:
    """The traces that ``poutine.replay`` handlers of the computation replay.

    A Pyro ELBO replays the model against the guide's trace.
    """
    return [
        handler.trace
        for handler in computation_handlers()
        if isinstance(handler, ReplayMessenger) and handler.trace is not None
    ]


def active_scales() -> list[float | Tensor]:
    """The factors of the ``poutine.scale`` handlers of the computation.

    Each as its handler holds it (a site inside carries their product, with
    its plates' subsampling).

    Example:
        >>> with poutine.scale(scale=0.25), poutine.scale(scale=3.0):
        ...     active_scales()
        [0.25, 3.0]
    """
    return [
        handler.scale
        for handler in computation_handlers()
        if isinstance(handler, ScaleMessenger)
    ]


def innermost_trace_holds(name: str) -> bool:
    """Whether the innermost trace on Pyro's stack holds the site ``name``.

    For an autoguide finding its sites, that is its prototype trace.
    """
    trace = innermost_trace()
    return trace is not None and name in trace.nodes


def innermost_trace() -> Trace | None:
    """The innermost trace on Pyro's stack (``None`` if none is recording).

    Example:
        >>> with poutine.trace() as outer, poutine.trace() as inner:
        ...     innermost_trace() is inner.trace
        True
    """
    for handler in reversed(computation_handlers()):
        if isinstance(handler, TraceMessenger):
            return handler.trace
    return None


def traces_holding(name: str) -> list[Trace]:
    """The traces on Pyro's stack that hold the site ``name``, outermost first.

    Only the traces pushed after the caller's handlers that were set aside
    (as :func:`traced_site_count`).

    Example:
        >>> with poutine.trace() as outer:
        ...     _ = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
        ...     with poutine.trace():
        ...         [trace is outer.trace for trace in traces_holding("z")]
        [True]
    """
    return [
        handler.trace
        for handler in computation_handlers()
        if isinstance(handler, TraceMessenger) and name in handler.trace.nodes
    ]


# Pyro's own query for the InitMessengers on the handler stack (public
# pyro.poutine.runtime.effectful with the message type that
# pyro.infer.autoguide.initialization.InitMessenger answers); [] when none is.
_init_messengers: Callable[[], list[Any]] = effectful(
    lambda: [], type="get_init_messengers"
)


def initialising_inference() -> bool:
    """Whether the model runs for the initialisation of an inference algorithm.

    MCMC's ``initialize_model`` runs the model under an ``InitMessenger``,
    which chooses the latent values, with every log-density counting (so
    does an autoguide finding its sites). ``Predictive`` uses an
    ``InitMessenger`` too, but masks every log-density out
    (``poutine.mask(mask=False)``, so ``get_mask()`` is ``False``): it only
    draws, and its particle count comes from the guide's draws.
    ``WeighedPredictive`` draws the same way without the mask (it weighs the
    draws afterwards).
    """
    return (
        bool(_init_messengers())
        and get_mask() is not False
        and not _weighing_predictive()
    )


def mcmc_initialising() -> bool:
    """Whether Pyro's MCMC is initialising the running model (``initialize_model``).

    Every MCMC kernel of Pyro runs its model there first, under an
    ``InitMessenger``; other users of one (an autoguide or an ``EasyGuide``
    finding its sites) are no MCMC.
    """
    return initialising_inference() and called_from(initialize_model)


def importance_sampler() -> str | None:
    """The Pyro importance sampler that runs the model, ``None`` if none does.

    ``Importance`` (and ``CSIS``) runs guide and model once per draw (its
    ``_traces`` generator, on the call stack while it does) and weighs the
    draw by the log density of the whole model trace over the guide's;
    ``WeighedPredictive`` (and ``MHResampler``, which calls it) weighs its
    draws the same way, in its ``forward``.
    """
    # A Pyro internal: the generator every Importance (and CSIS) runs.
    if called_from(Importance._traces):
        return "Importance"
    if _weighing_predictive():
        return "WeighedPredictive"
    return None


def _weighing_predictive() -> bool:
    """Whether a ``WeighedPredictive`` (or an ``MHResampler``) runs the model."""
    return called_from(WeighedPredictive.forward)


def method_of_running(cls: type) -> bool:
    """Whether a frame of the running call stack runs a method of a ``cls`` instance.

    The frame of a method holds its instance as the local ``self``; for an
    inherited method (``Trace_ELBO.loss_and_grads`` of a subclass) that tells
    the subclass apart, which the method's code cannot.

    Example:
        >>> class Probe:
        ...     def ask(self):
        ...         return method_of_running(Probe)
        >>> Probe().ask(), method_of_running(Probe)
        (True, False)
    """
    frame = inspect.currentframe()
    while frame is not None:
        if isinstance(frame.f_locals.get("self"), cls):
            return True
        frame = frame.f_back
    return False


def called_from(function: Callable[..., Any]) -> bool:
    """Whether a frame of the running call stack runs ``function``.

    The function's own code is looked for, under any decorators
    (:func:`code_of`).

    Example:
        >>> def outer():
        ...     return called_from(outer)
        >>> outer(), called_from(outer)
        (True, False)
    """
    return running_frame(function) is not None


def running_frame(*functions: Callable[..., Any]) -> FrameType | None:
    """The innermost frame of the running call stack that runs one of ``functions``.

    ``None`` if none does. A frame is matched by the function's own code
    (:func:`code_of`), so the frame's locals are the function's.

    Example:
        >>> def outer():
        ...     return running_frame(outer).f_code.co_name
        >>> outer(), running_frame(outer)
        ('outer', None)
    """
    codes = {code_of(function) for function in functions}
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code in codes:
            return frame
        frame = frame.f_back
    return None


def raising_frame(
    error: BaseException, function: Callable[..., Any]
) -> FrameType | None:
    """The innermost frame of ``error``'s traceback that ran ``function``.

    ``None`` if none did. The frame keeps the function's locals as they were
    when the error passed through it (the arguments of a torch function
    whose check failed). Matched by the function's own code
    (:func:`code_of`).

    Example:
        >>> def fails(size):
        ...     raise ValueError("no")
        >>> try:
        ...     fails(3)
        ... except ValueError as error:
        ...     raising_frame(error, fails).f_locals["size"]
        3
    """
    code = code_of(function)
    found = None
    trace = error.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code is code:
            found = trace.tb_frame
        trace = trace.tb_next
    return found


@functools.cache  # looked up at every run of a Pyro model by the stack tests
def code_of(function: Callable[..., Any]) -> CodeType:
    """The code object of ``function`` itself, unwrapped from its decorators.

    A decorated function's ``__code__`` is its decorator's wrapper, often
    shared by every function that decorator wraps (``torch.no_grad()``'s
    ``decorate_context``, Pyro's ``pyro_method``): a frame running that code
    need not run ``function``. ``functools.wraps`` leaves the function at
    ``__wrapped__``, which :func:`inspect.unwrap` follows.

    Example:
        >>> import torch
        >>> @torch.no_grad()
        ... def evaluate():
        ...     pass
        >>> evaluate.__code__.co_name, code_of(evaluate).co_name
        ('decorate_context', 'evaluate')
    """
    unwrapped = inspect.unwrap(function)
    if not isinstance(unwrapped, FunctionType):
        raise TypeError(f"{function!r} is no Python function: it has no code")
    return unwrapped.__code__
