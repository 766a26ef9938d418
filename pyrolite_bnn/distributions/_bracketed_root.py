"""A safeguarded Halley iteration for the roots of increasing functions, bracketed.

Each entry's root lies in a bracket ``[lo, hi]``; every evaluation narrows it
(the function's sign says on which side of the point the root is), and a
Halley step that would leave it, or that has not halved the step before the
last one (Numerical Recipes' ``rtsafe`` rule), becomes a bisection. From a
good start the iteration converges cubically: an entry closes once its step
is so small that the error the step leaves, about ``C * step^3`` with
``|C| <= rate^2 / 2`` (``rate`` bounding the function's log-derivatives, see
:func:`bracketed_halley`), is below the resolution, so the last step is taken
without one more evaluation; or once its bracket is below the resolution.
Each evaluation covers the entries still open only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Evaluation", "bracketed_halley"]

# The resolution: a few float64 ulps of the root (plus as many of a scale the
# caller sets, for a root at 0).
_ULPS = 4 * 2.0**-52
# A Halley step closes an entry only while ``rate * step`` is this small (the
# Taylor model the error bound rests on holds), and its predicted error counts
# this many times over.
_LOCAL = 1e-2
_SAFETY = 4.0


class Evaluation(NamedTuple):
    """An increasing function and its derivatives at the open entries' points.

    Attributes:
        value: ``g(y)``, whose root is sought (increasing in ``y``).
        slope: ``g'(y) >= 0``.
        curvature: ``g''(y)``.
        rate: a bound on ``|g''| / g'`` and ``sqrt(|g'''| / g')`` near ``y``,
            non-negative (``inf`` where there is none: such entries close on
            their bracket).
    """

    value: Tensor
    slope: Tensor
    curvature: Tensor
    rate: Tensor


def bracketed_halley(
    evaluate: Callable[[Tensor, Tensor | None], Evaluation],
    start: Tensor,
    lo: Tensor,
    hi: Tensor,
    floor: Tensor,
    max_steps: int,
) -> Tensor:
    """The root of each entry's increasing function, in its bracket ``[lo, hi]``.

    Args:
        evaluate: ``evaluate(y, index)`` evaluates the functions of the entries
            ``index`` (a long tensor into the flattened entries; ``None`` for
            all of them) at the points ``y`` (one per entry).
        start: the first points, ``(...)``, inside the brackets.
        lo: lower ends of the brackets, ``(...)``: ``g(lo) <= 0``.
        hi: upper ends, ``(...)``: ``g(hi) >= 0``.
        floor: a scale for a root at or near 0, ``(...)``: an entry closes
            when its error is below a few ulps of the root plus as many of
            ``floor``.
        max_steps: at most this many evaluations per entry.

    Returns:
        The roots, ``(...)``, float64 (an entry whose bracket is not finite:
        its midpoint; one with ``lo == hi``: ``lo``).
    """
    shape = start.shape
    y, lo, hi = start.reshape(-1), lo.reshape(-1).clone(), hi.reshape(-1).clone()
    floor = floor.reshape(-1)
    y = torch.where(lo.isfinite() & hi.isfinite(), y, lo / 2 + hi / 2)
    # rtsafe's rule compares each step with the one before the last.
    previous = hi - lo
    before = previous.clone()
    open_ = lo.isfinite() & hi.isfinite() & (lo < hi)
    index: Tensor | None = None if bool(open_.all()) else open_.nonzero().squeeze(1)
    for _ in range(max_steps):
        if index is not None and index.numel() == 0:
            break
        point = y if index is None else y[index]
        low, high = (lo, hi) if index is None else (lo[index], hi[index])
        value, slope, curvature, rate = evaluate(point, index)
        low = torch.where(value < 0, point, low)
        high = torch.where(value > 0, point, high)
        newton = -value / slope
        bend = newton * curvature / (2 * slope)
        halley = bend.abs() <= 0.5  # else Newton's step, as far out
        step = torch.where(halley, newton / (1 + bend), newton)
        ahead = point + step
        older = before if index is None else before[index]
        inside = (ahead > low) & (ahead < high)
        middle = low / 2 + high / 2
        magnitude = ahead.clamp(low, high).abs()
        resolution = _ULPS * (magnitude + (floor if index is None else floor[index]))
        size = step.abs()
        # A step this small leaves an error below the resolution (its end may
        # fall a rounding outside the bracket: it is kept at the bracket).
        landed = (
            halley
            & (rate * size <= _LOCAL)
            & (_SAFETY * rate * rate * size**3 / 2 <= resolution)
            & (ahead >= low - resolution)
            & (ahead <= high + resolution)
        )
        taken = inside & (2 * size <= older.abs())
        closed = (value == 0) | landed | (high - low <= resolution)
        step = torch.where(taken, step, middle - point)
        ahead = torch.where(
            landed, ahead.clamp(low, high), torch.where(taken, ahead, middle)
        )
        ahead = torch.where(value == 0, point, ahead)
        if index is None:
            y, lo, hi = ahead, low, high
            before, previous = previous, step
            index = (~closed).nonzero().squeeze(1)
        else:
            y[index], lo[index], hi[index] = ahead, low, high
            before[index], previous[index] = previous[index], step
            index = index[~closed]
    return y.reshape(shape)
