"""Warnings that point at the user's line, however deep the library called them."""

from __future__ import annotations

import contextlib
import os
import sys
import types
import warnings

import pyro
import torch

__all__ = ["warn_at_caller"]

# Frames in these folders are skipped: the library's; torch's, whichever part
# called back into the library (a loss called through nn.Module.__call__, an
# LBFGS closure called from inside optimizer.step, a tensor hook run by
# loss.backward()); Pyro's (a user's model run by SVI or a handler, an ELBO
# called by svi.step()); and contextlib's (a library context manager's body).
# None of them is a user's line: the first frame outside them is.
_SKIPPED = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
    os.path.dirname(os.path.abspath(pyro.__file__)) + os.sep,
    os.path.abspath(contextlib.__file__),
)


def warn_at_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame of the user's code.

    Frames of the library, of torch and of Pyro are skipped: a warning raised
    in a loss that ``bnn.fit`` evaluates inside ``torch.optim.LBFGS``'s
    ``step`` names the ``fit`` line, one raised in a user's own closure names
    the closure's line, one about a user's Pyro model names the model's line.

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
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level + 1)
