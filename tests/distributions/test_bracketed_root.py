"""The safeguarded Halley iteration behind the Student-t mixture quantiles."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyrolite_bnn.distributions._bracketed_root import Evaluation, bracketed_halley


class _Arctangent:
    """``g(y) = atan(y - root)``: Newton's method diverges from far away."""

    def __init__(self, root: Tensor) -> None:
        self.root = root
        self.evaluated: list[int] = []

    def __call__(self, y: Tensor, index: Tensor | None) -> Evaluation:
        root = self.root if index is None else self.root[index]
        self.evaluated.append(y.numel())
        u = y - root
        slope = 1 / (1 + u * u)
        # |g''/g'| = 2|u|/(1+u^2) <= 1 and |g'''/g'| = |6u^2-2|/(1+u^2)^2 <= 2
        return Evaluation(
            torch.atan(u), slope, -2 * u * slope * slope, torch.full_like(u, 2.0)
        )


def test_roots_from_far_starts_to_a_few_ulps() -> None:
    root = torch.tensor([-3.0, 0.0, 1e-3, 50.0, 1e6], dtype=torch.float64)
    function = _Arctangent(root)
    lo, hi = torch.full_like(root, -1e7), torch.full_like(root, 1e7)
    found = bracketed_halley(
        function, torch.full_like(root, 9e6), lo, hi, torch.full_like(root, 1e-15), 200
    )
    torch.testing.assert_close(found, root, rtol=4 * 2.0**-52, atol=2e-15)
    # Halving 2e7 to the first Halley step takes about 25 evaluations.
    assert len(function.evaluated) <= 40


def test_a_good_start_closes_after_one_evaluation() -> None:
    """The last step is taken without evaluating its end: its error is bounded."""
    root = torch.tensor([0.5, -2.0], dtype=torch.float64)
    function = _Arctangent(root)
    found = bracketed_halley(
        function,
        root + 1e-6,
        root - 1,
        root + 1,
        torch.full_like(root, 1e-15),
        200,
    )
    assert function.evaluated == [2]
    torch.testing.assert_close(found, root, rtol=4 * 2.0**-52, atol=1e-15)


def test_closed_brackets_are_their_ends_and_others_their_midpoints() -> None:
    root = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    function = _Arctangent(root)
    lo = torch.tensor([1.0, math.nan, -math.inf, 0.0], dtype=torch.float64)
    hi = torch.tensor([1.0, 5.0, 5.0, 8.0], dtype=torch.float64)
    found = bracketed_halley(function, lo.clone(), lo, hi, torch.zeros(4), 200)
    assert found[0] == 1.0  # lo == hi
    assert math.isnan(found[1])  # a NaN bracket
    assert found[2] == -math.inf  # an unbounded one: its midpoint
    torch.testing.assert_close(found[3], root[3], rtol=4 * 2.0**-52, atol=0.0)
    assert function.evaluated[0] == 1  # the open entry alone is evaluated
