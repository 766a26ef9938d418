"""Whether a computation is being captured into a graph (see ``compiled.py``).

While capturing, code must not read tensor values into Python (``float(t)``,
``bool(t)``): such reads either fail or are frozen into the graph. Host-side
shortcuts that are only worth it eagerly check :func:`is_capturing`. While
``torch.jit.trace`` or ``torch.export`` records a user's program
(:func:`records_a_graph`) such a read is a constant of the recorded graph, and
a size read as a Python ``int`` fixes the batch: checks of values are skipped
there. Under ``torch.func`` transforms tensors are wrappers without storage
(:func:`is_wrapped`, :func:`data_address`); whether a tensor is being
differentiated, in reverse or forward mode and through such wrappers, is
:func:`carries_derivative`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar

import torch
from torch.autograd import forward_ad

from pyrolite_bnn._context_values import set_while

_CAPTURING: ContextVar[bool] = ContextVar("pyrolite_capturing", default=False)

# torch.func's note on a kernel it runs one slice at a time under vmap.
_UNBATCHED_KERNEL = "There is a performance drop because we have not yet implemented"


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


def forward_ad_active() -> bool:
    """Whether forward-mode AD runs: a dual level is open.

    ``torch.autograd.forward_ad.dual_level`` opens one, and so do
    ``torch.func.jvp`` and ``jacfwd``. Only there can a tensor carry a tangent.
    """
    return getattr(forward_ad, "_current_level", -1) >= 0


def carries_derivative(tensor: torch.Tensor) -> bool:
    """Whether a derivative by ``tensor`` is being taken, in either mode.

    Reverse mode: it requires gradients (``x.requires_grad_()``, or a
    ``torch.func.grad`` / ``jacrev`` wrapper). Forward mode: it carries a
    tangent (a dual tensor of ``torch.autograd.forward_ad.make_dual``, or a
    ``torch.func.jvp`` / ``jacfwd`` wrapper), which leaves ``requires_grad``
    ``False``. A ``torch.func.vmap`` wrapper takes no derivative itself, but
    the tensor it wraps may (``grad(vmap(f))``, ``jvp(vmap(f))``): each
    wrapper is looked through. A plain tensor outside forward-mode AD and
    the transforms costs an attribute read and two calls, none of which
    ``torch.compile`` breaks its graph at.
    """
    if tensor.requires_grad:
        return True
    forward = forward_ad_active()
    if not (forward or transforms_active()):
        return False  # no tangents, no wrappers
    while True:
        if tensor.requires_grad:
            return True
        wrapped = is_wrapped(tensor)
        # A vmap wrapper has no tangent of its own, and forward AD cannot
        # unpack it (no batching rule): the tensor it wraps is looked at next.
        if (
            forward
            and not (wrapped and torch._C._functorch.is_batchedtensor(tensor))
            and forward_ad.unpack_dual(tensor).tangent is not None  # type: ignore[no-untyped-call]
        ):
            return True
        if not wrapped:
            return False
        tensor = torch._C._functorch.get_unwrapped(tensor)


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


def records_a_graph() -> bool:
    """Whether ``torch.jit.trace`` or ``torch.export`` records the running code.

    Both record one run as a graph that a user runs later on other inputs: a
    tensor's value read into Python there (``float(t)``, ``bool(t)``) is a
    constant of that graph, not a check of the later inputs, and torch says
    so (the tracer's ``TracerWarning`` "might cause the trace to be
    incorrect", export's data-dependent symbols); under the tracer a size is
    a tensor, and read as an ``int`` it fixes the batch size, as it does
    under ``torch.export`` with a dynamic batch ("specialized it to be a
    constant"). Checks of values count as passed there, as with validation
    off. ``torch.compile`` is not counted: it runs such a check between its
    graphs, on every call.

    Example:
        >>> import torch
        >>> records_a_graph()
        False
        >>> class Probe(torch.nn.Module):
        ...     def forward(self, x):
        ...         self.seen = records_a_graph()
        ...         return x
        >>> probe = Probe()
        >>> _ = torch.export.export(probe, (torch.zeros(2),))
        >>> probe.seen
        True
    """
    # Public torch API that torch's stubs neither re-export nor annotate.
    tracing: bool = torch.jit.is_tracing()  # type: ignore[attr-defined,no-untyped-call]
    return tracing or torch.compiler.is_exporting()


def capturing() -> AbstractContextManager[None]:
    """Mark the body as graph capture."""
    return set_while(_CAPTURING, True)


@contextmanager
def unbatched_kernels_unreported() -> Iterator[None]:
    """Run the body without torch's note on kernels ``vmap`` runs slice by slice.

    ``torch.vmap`` runs an operator without a batching rule (the CPU kernel of
    ``scaled_dot_product_attention``) once per slice and says so with a
    ``UserWarning`` ("There is a performance drop ..."): correct results, and
    nothing a user of the library's mapped computations can act on.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_UNBATCHED_KERNEL)
        yield
