"""The search for a quantile of an equal-weight mixture of Student-t components.

What :func:`~.mixture_quantiles.student_t_mixture_quantile` hands
:func:`~._bracketed_root.bracketed_halley`: a first guess, and the function
whose root the quantile is with its derivatives, for the entries still open.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyrolite_bnn.distributions._bracketed_root import Evaluation
from pyrolite_bnn.distributions._student_t_tail import student_t_upper_tail

__all__ = ["StudentTMixture"]


class StudentTMixture:
    """The search for a Student-t mixture's quantile: the root of ``F(y) - q``.

    ``F`` is the mixture's CDF, written the way the tail ``tail`` it is
    compared with keeps its precision: ``(1 - q) - P(Y > y)`` for an upper
    quantile, ``P(Y < y) - q`` for a lower one, each a mean of
    :func:`student_t_upper_tail` terms. Its derivatives, the mixture's density
    and slope, are cheap next to the tail.

    Args:
        loc: component locations ``(S, ...)``, float64.
        scale: component scales ``(S, ...)``, float64.
        df: the degrees of freedom.
        tail: the tail probability searched, ``q`` or ``1 - q``.
        upper: whether ``tail`` is the upper one (``1 - q``).
    """

    def __init__(
        self, loc: Tensor, scale: Tensor, df: float, tail: float, upper: bool
    ) -> None:
        self.loc = loc.reshape(loc.shape[0], -1)
        self.scale = scale.reshape(scale.shape[0], -1)
        self.df, self.tail, self.upper = df, tail, upper
        self.log_norm = (
            math.lgamma((df + 1) / 2)
            - math.lgamma(df / 2)
            - 0.5 * math.log(df * math.pi)
        )

    def start(self, component: Tensor, t_q: float, lo: Tensor, hi: Tensor) -> Tensor:
        """A first guess from the components' own quantiles ``component``.

        The root of the mixture's CDF expanded to second order around each
        component's quantile ``loc + scale * t_q`` (exact for equal
        components, close for components close to each other), kept in
        ``[lo, hi]``.
        """
        own = component.reshape(self.loc.shape)
        weight = self.scale.reciprocal()
        first = (own * weight).sum(0) / weight.sum(0)  # where the slopes cancel
        bend = (self.df + 1) * t_q / (self.df + t_q * t_q)  # -p'/p at t_q
        u = (first - own) * weight
        value = -0.5 * bend * (u * u).mean(0)
        slope = weight.mean(0) - bend * (u * weight).mean(0)
        second = first - value / slope
        guess = torch.where(second.isfinite(), second, first)
        inside = torch.minimum(torch.maximum(guess, lo.reshape(-1)), hi.reshape(-1))
        return inside.reshape(lo.shape)

    def evaluate(self, y: Tensor, index: Tensor | None) -> Evaluation:
        """``F(y) - q`` and its derivatives at the entries ``index``."""
        loc, scale = self.loc, self.scale
        if index is not None:
            loc, scale = loc[:, index], scale[:, index]
        t = (y - loc) / scale
        mass = student_t_upper_tail(t if self.upper else -t, self.df).mean(0)
        value = self.tail - mass if self.upper else mass - self.tail
        df = self.df
        square = t * t
        w = (df + square).reciprocal()
        density = torch.exp(self.log_norm - (df + 1) / 2 * torch.log1p(square / df))
        falling = (df + 1) * t * w  # -p'/p
        bending = (df + 1) * w * (df + 2 - df * (df + 3) * w)  # p''/p
        weighted = density / scale
        rate = torch.maximum(falling.abs(), bending.abs().sqrt()) / scale
        return Evaluation(
            value,
            weighted.mean(0),
            -(weighted * falling / scale).mean(0),
            rate.amax(0),
        )
