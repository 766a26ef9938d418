"""Warnings that point at the user's line, however deep the library called them."""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import types
import warnings

import pyro
import torch

__all__ = ["BACKWARD_CODE", "PYRO_FOLDER", "warn_at_caller"]

# Frames in these folders are skipped: the library's, torch's module call
# machinery (a loss is called through nn.Module.__call__) and contextlib's
# (a library context manager's body).
_SKIPPED = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(torch.nn.modules.module.__file__)) + os.sep,
    os.path.abspath(contextlib.__file__),
)

# Pyro's folder, for ``past``: a warning about a user's Pyro model names the
# model's line, not the Pyro handler or inference code that ran it.
PYRO_FOLDER = os.path.dirname(os.path.abspath(pyro.__file__)) + os.sep

# torch's backward machinery, for ``past``: a warning from a tensor hook names
# the user's ``loss.backward()`` line, not torch.autograd or Tensor.backward.
BACKWARD_CODE = (
    os.path.dirname(os.path.abspath(torch.autograd.__file__)) + os.sep,
    os.path.abspath(inspect.getfile(torch.Tensor.backward)),
)


def warn_at_caller(
    message: str,
    category: type[Warning] = UserWarning,
    *,
    past: tuple[str, ...] = (),
) -> None:
    """``warnings.warn`` attributed to the first frame outside the library.

    ``past``: further folders whose frames are skipped (Pyro's, for a
    warning about a statement of the user's model that Pyro's handlers pass
    on to the library).

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_at_caller("look here")
        >>> caught[0].filename.startswith("<doctest")  # not this module
        True
    """
    level = 1
    frame: types.FrameType | None = sys._getframe(1)
    skipped = _SKIPPED + past
    while frame is not None and frame.f_code.co_filename.startswith(skipped):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level + 1)
