"""Deterministic minimisation of a function of one real variable on an interval.

Used to fit one positive hyperparameter through its logarithm: a calibration's
temperature or variance factor, a Laplace posterior's prior precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["minimise_expanding", "minimise_on_interval"]

_GRID_POINTS = 141
_GOLDEN_STEPS = 60


def minimise_on_interval(
    objective: Callable[[float], float], low: float, high: float
) -> float:
    """Minimiser ``t`` of ``objective(t)`` over ``[low, high]``, deterministically.

    A grid of 141 points finds the best cell, golden-section search refines it
    to about ``1e-12`` of the interval; an objective with several minima gets
    the grid's best.

    Example:
        >>> round(minimise_on_interval(lambda t: (t - 1.5) ** 2, -7.0, 7.0), 6)
        1.5
    """
    grid = [low + (high - low) * i / (_GRID_POINTS - 1) for i in range(_GRID_POINTS)]
    values = [objective(t) for t in grid]
    best = min(range(_GRID_POINTS), key=values.__getitem__)
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, _GRID_POINTS - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = objective(a), objective(b)
    for _ in range(_GOLDEN_STEPS):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = objective(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = objective(b)
    return (lo + hi) / 2


def minimise_expanding(
    objective: Callable[[float], float], bound: float, limit: float
) -> tuple[float, bool]:
    """Minimiser of ``objective`` from ``[-bound, bound]``, moved out up to ``limit``.

    Where the minimiser lies in the last grid cell of an edge, the interval is
    moved past that edge by its width (never back), up to ``[-limit, limit]``.

    Returns:
        The minimiser and whether it lies in the last cell of ``+-limit`` (the
        true minimiser may be further out).

    Example:
        >>> t, at_limit = minimise_expanding(lambda t: (t - 20.0) ** 2, 7.0, 30.0)
        >>> round(t, 6), at_limit
        (20.0, False)
    """
    low, high = -bound, bound
    width = high - low
    direction = 0
    while True:
        t = minimise_on_interval(objective, low, high)
        cell = width / (_GRID_POINTS - 1)
        if t > high - cell and high < limit and direction >= 0:
            direction = 1
            low, high = high - cell, min(high - cell + width, limit)
        elif t < low + cell and low > -limit and direction <= 0:
            direction = -1
            low, high = max(low + cell - width, -limit), low + cell
        else:
            return t, abs(t) > limit - cell
