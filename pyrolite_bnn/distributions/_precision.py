"""The precision summaries and sums are computed in: at least ``float32``.

Predictive summaries over particles, and the sums over all the weights of a
network (its KL terms and log-densities: a ``float16`` sum overflows at 65504,
and a layer of 10,000 weights at the default initialisation has a KL of about
64,000 nats), read half-precision tensors as ``float32`` first. The cast is
differentiable: gradients reach the half-precision tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["full_precision", "is_narrow", "summary_dtype"]

_WIDE = frozenset({torch.float32, torch.float64})


def full_precision(output: Tensor) -> Tensor:
    """``output`` in at least ``float32``: ``float16``/``bfloat16`` become ``float32``.

    Summaries over particles in half precision lose what they measure: with 8
    bits of mantissa the mutual information, a small difference of two
    entropies, has a relative error of 100 % and comes out negative. Integer
    and ``bool`` outputs become torch's default dtype (a mean or a quantile of
    integers is not an integer); ``float32`` and ``float64`` are returned
    unchanged.

    Example:
        >>> import torch
        >>> full_precision(torch.zeros(2, dtype=torch.bfloat16)).dtype
        torch.float32
        >>> full_precision(torch.zeros(2, dtype=torch.float64)).dtype
        torch.float64
    """
    return output.to(summary_dtype(output.dtype))


def summary_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype summaries of ``dtype`` outputs are computed in.

    ``float32`` for a floating dtype narrower than it, the default dtype for
    integers and ``bool``, else ``dtype``.
    """
    if dtype in _WIDE:  # every training step: the common case first
        return dtype
    if not (dtype.is_floating_point or dtype.is_complex):
        return torch.get_default_dtype()
    if dtype.is_floating_point and torch.finfo(dtype).bits < 32:
        return torch.float32
    return dtype


def is_narrow(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is a floating dtype narrower than ``float32``.

    ``float16`` and ``bfloat16``: a draw ``mu + sigma * eps`` rounded to it
    can lose its noise, and the densities and KL terms computed in it their
    precision.

    Example:
        >>> import torch
        >>> is_narrow(torch.bfloat16), is_narrow(torch.float32)
        (True, False)
    """
    return (
        dtype not in _WIDE and dtype.is_floating_point and summary_dtype(dtype) != dtype
    )
