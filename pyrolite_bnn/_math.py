"""Small numeric helpers."""

from __future__ import annotations

import math
from typing import overload

import torch
from torch import Tensor

__all__ = ["at_least_float32", "inverse_softplus"]

# Floating dtypes whose sums over a network overflow or round: float16 tops out
# at 65504, bfloat16 keeps 8 bits of mantissa.
_NARROW = (torch.float16, torch.bfloat16)


@overload
def inverse_softplus(value: float) -> float: ...


@overload
def inverse_softplus(value: Tensor) -> Tensor: ...


def inverse_softplus(value: float | Tensor) -> float | Tensor:
    """``x`` such that ``softplus(x) == value`` (for ``value > 0``), elementwise.

    ``value + log(-expm1(-value))``: exact for small values, where
    ``log(expm1(value))`` would be, and without overflow for large ones.

    Example:
        >>> import torch
        >>> round(inverse_softplus(math.log(2.0)), 12)
        0.0
        >>> inverse_softplus(torch.tensor([math.log(2.0)]))
        tensor([0.])
    """
    if isinstance(value, Tensor):
        return value + torch.log(-torch.expm1(-value))
    return value + math.log(-math.expm1(-value))


def at_least_float32(value: Tensor) -> Tensor:
    """``value`` in float32 if it is float16 or bfloat16, else as it is.

    Sums over all the weights of a network (a KL term, a log-density) go
    through this first: a float16 sum overflows at 65504 (a layer of 10,000
    weights at the default initialisation has a KL of ~64,000 nats), and a
    bfloat16 one keeps three significant digits. The cast is differentiable:
    gradients reach the half-precision tensor.

    Example:
        >>> import torch
        >>> at_least_float32(torch.ones(2, dtype=torch.float16)).dtype
        torch.float32
        >>> at_least_float32(torch.ones(2, dtype=torch.float64)).dtype
        torch.float64
    """
    return value.float() if value.dtype in _NARROW else value
