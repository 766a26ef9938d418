"""Small numeric helpers."""

from __future__ import annotations

import math
from typing import overload

import torch
from torch import Tensor

__all__ = ["inverse_softplus"]


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
