"""Small numeric helpers."""

from __future__ import annotations

import math

__all__ = ["inverse_softplus"]


def inverse_softplus(value: float) -> float:
    """``x`` such that ``softplus(x) == value`` (for ``value > 0``)."""
    return value + math.log(-math.expm1(-value))
