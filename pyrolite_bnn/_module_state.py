"""Run a model without leaving a trace in its buffers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from pyrolite_bnn.distributions.priors import Prior

__all__ = ["buffers_restored"]


@contextmanager
def buffers_restored(model: nn.Module, on_error_only: bool = False) -> Iterator[None]:
    """Put every buffer of ``model`` back as it was, values and tensors, on exit.

    With ``on_error_only``, only if the block raises: a call that counts as a
    pass of the model (``predict`` on inputs its probe would have run) keeps
    what it did, and a failed one leaves no trace.

    For calls that must not count as passes of the model (``predict``'s memory
    probe, the compiled loss's capture): batch-norm in training mode would
    update its running statistics (and ``num_batches_tracked``) from them. The
    buffers are copied on entry (buffers, unlike activations, are small in the
    models this is for) and those whose values changed are written back
    through ``.data``, without a version-counter bump: batch-norm updates its
    statistics that way (its kernel bumps no counter either), and an autograd
    graph of an earlier call that saved them stays valid for its backward
    pass, which a plain in-place copy would make autograd refuse. A buffer
    still to be initialised (a lazy module's) is left to the call. Priors'
    buffers (MOPED's prior means are as big as the weights) are not copied: no
    call changes them.

    Example:
        >>> import torch
        >>> norm = torch.nn.BatchNorm1d(2)
        >>> with buffers_restored(norm):
        ...     _ = norm(torch.randn(4, 2))
        >>> int(norm.num_batches_tracked), float(norm.running_mean.abs().sum())
        (0, 0.0)
    """
    saved = [
        (module, name, buffer, buffer.clone())
        for module in model.modules()
        if not isinstance(module, Prior)  # constant in a call, and weight-sized
        for name, buffer in module.named_buffers(recurse=False)
        if not is_lazy(buffer)
    ]
    try:
        yield
    except BaseException:
        _put_back(saved)
        raise
    if not on_error_only:
        _put_back(saved)


def _put_back(saved: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]]) -> None:
    """Write the saved buffers back (see :func:`buffers_restored`)."""
    for module, name, buffer, value in saved:
        if getattr(module, name, None) is not buffer:  # reassigned, not updated
            setattr(module, name, buffer)
        if not torch.equal(buffer, value):
            buffer.data.copy_(value)
