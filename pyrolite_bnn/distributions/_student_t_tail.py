"""The Student-t distribution's tail probability ``P(T > t)``, which torch lacks.

Through the regularised incomplete beta function: for ``T ~ StudentT(df)``,
``P(T > |t|) = I_x(df / 2, 1 / 2) / 2`` with ``x = df / (df + t^2)``, whose
continued fraction (evaluated by the modified Lentz method) converges in tens
of terms on the side of its turning point ``(a + 1) / (a + b + 2)`` it is used
on, the symmetry ``I_x(a, b) = 1 - I_{1-x}(b, a)`` serving the other side.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["student_t_upper_tail"]

# Lentz's method replaces a vanishing denominator by this (Numerical Recipes).
_TINY = 1e-300
# A term of the continued fraction this close to 1 ends it (float64's epsilon
# is 2.2e-16; the terms round a few ulps around 1 for large ``df``).
_CONVERGED = 1e-15
_ROUNDING = 4 * 2.0**-52  # a few float64 ulps
_MAX_TERMS = 10_000
_CHECK_EVERY = 8
_LOG_GAMMA_HALF = 0.5 * math.log(math.pi)  # log(Gamma(1/2))
_SERIES_FROM = 100.0


def student_t_upper_tail(t: Tensor, df: float) -> Tensor:
    """``P(T > t)`` for ``T ~ StudentT(df)`` (location 0, scale 1), elementwise.

    In float64, with a relative precision of ``1e-11`` or better up to
    ``df = 1e6`` (``1e-13`` for small ``df``; ``1e-9`` at ``1e9``, where the
    continued fraction's terms cancel) that holds far into the upper tail:
    the small probabilities of large ``t`` are computed as such, not as ``1``
    minus a number near ``1``. ``t = +-inf`` give 0 and
    1, NaN stays NaN.

    Args:
        t: points, any shape.
        df: positive degrees of freedom.

    Example:
        >>> import torch
        >>> p = student_t_upper_tail(torch.tensor([0.0, 1.0, -1.0]), 1.0)
        >>> [round(v, 6) for v in p.tolist()]  # the Cauchy: 1/2, 1/4, 3/4
        [0.5, 0.25, 0.75]
    """
    t = t.double()
    nu = torch.tensor(float(df), dtype=torch.float64, device=t.device)
    # x = 1 / (1 + t^2 / df) and y = 1 - x from the log of t^2 / df, which
    # neither overflows for a huge t (a Cauchy's tail at 1e200 is 3e-201) nor
    # rounds x to 1 for a small one.
    log_ratio = 2 * t.abs().log() - math.log(df)
    zero = torch.zeros_like(log_ratio)
    log_x = -torch.logaddexp(zero, log_ratio)
    log_y = -torch.logaddexp(zero, -log_ratio)
    x, y = torch.exp(log_x), torch.exp(log_y)
    a = df / 2  # and b = 1 / 2
    direct = x < (a + 1) / (a + 2.5)
    log_front = _log_gamma_ratio(nu / 2) - _LOG_GAMMA_HALF + a * log_x + 0.5 * log_y
    fraction = _beta_continued_fraction(
        torch.where(direct, x, y), torch.where(direct, y, x), direct, a
    )
    part = torch.exp(log_front) * fraction / torch.where(direct, nu / 2, 0.5)
    half = 0.5 * torch.where(direct, part, 1.0 - part)  # P(T > |t|)
    return torch.where(t >= 0, half, 1.0 - half).where(~t.isnan(), t)


def _log_gamma_ratio(a: Tensor) -> Tensor:
    """``log(Gamma(a + 1/2) / Gamma(a))``, without cancellation for large ``a``.

    The difference of two ``lgamma`` values of ``1e9`` loses 7 digits; from
    ``a = 100`` its asymptotic series (terms to ``a^-7``, error below
    ``1e-20``) takes over.
    """
    large = a >= _SERIES_FROM
    big = torch.where(large, a, _SERIES_FROM)  # no division by a small a
    series = (
        0.5 * big.log()
        - 1 / (8 * big)
        + 1 / (192 * big**3)
        - 1 / (640 * big**5)
        + 17 / (14336 * big**7)
    )
    return torch.where(large, series, torch.lgamma(a + 0.5) - torch.lgamma(a))


def _beta_continued_fraction(
    x: Tensor, y: Tensor, direct: Tensor, half_df: float
) -> Tensor:
    """The continued fraction of ``I_x(a, b)`` (Numerical Recipes' ``betacf``).

    For ``(a, b) = (df / 2, 1 / 2)`` where ``direct``, else ``(1 / 2, df / 2)``:
    each branch's entries are evaluated apart (see :func:`_lentz`).
    """
    shape = x.shape
    x, y, direct = x.reshape(-1), y.reshape(-1), direct.reshape(-1)
    if bool(direct.all()):
        return _lentz(x, y, half_df, 0.5).reshape(shape)
    if not bool(direct.any()):
        return _lentz(x, y, 0.5, half_df).reshape(shape)
    fraction = torch.empty_like(x)
    for branch, a, b in ((direct, half_df, 0.5), (~direct, 0.5, half_df)):
        index = branch.nonzero().squeeze(1)
        fraction[index] = _lentz(x[index], y[index], a, b)
    return fraction.reshape(shape)


def _lentz(x: Tensor, y: Tensor, a: float, b: float) -> Tensor:
    """The continued fraction of ``I_x(a, b)`` at the points ``x`` (1-d), by Lentz.

    Each term is ``x`` times a number of ``a``, ``b`` and its index alone.
    Each entry stops changing once its terms come within its rounding level
    of 1, and once half of them have, the loop goes on with the others only
    (most entries need tens of terms, those near the turning point hundreds);
    it ends when all have. ``y = 1 - x``: for ``x`` near 1 the fraction's
    terms cancel to about ``y`` (``t^2 / df`` for a large ``df``), and their
    rounding errors grow as ``eps / y``, which would keep them from ever
    reaching 1 to float64's precision.
    """
    level = (_ROUNDING / y).clamp_min(_CONVERGED)
    fraction = torch.empty_like(x)
    index = torch.arange(x.numel(), device=x.device)  # of the entries still open
    one = x.new_ones(())
    c = torch.ones_like(x)
    d = _nonzero(torch.addcmul(one, x, one, value=-(a + b) / (a + 1))).reciprocal()
    h = d
    done = x.isnan()
    for m in range(1, _MAX_TERMS + 1):
        even = m * (b - m) / ((a - 1 + 2 * m) * (a + 2 * m))
        d = _nonzero(torch.addcmul(one, x, d, value=even)).reciprocal_()
        c = _nonzero(torch.addcdiv(one, x, c, value=even))
        step = d * c
        odd = -(a + m) * (a + b + m) / ((a + 2 * m) * (a + 1 + 2 * m))
        d = _nonzero(torch.addcmul(one, x, d, value=odd)).reciprocal_()
        c = _nonzero(torch.addcdiv(one, x, c, value=odd))
        delta = d * c
        h = torch.where(done, h, h * (step * delta))
        done |= (delta - 1.0).abs() < level
        if m % _CHECK_EVERY == 0:
            closed = int(done.sum())
            if closed == done.numel():
                break
            if 2 * closed >= done.numel():  # go on with the open half or less
                fraction[index[done]] = h[done]
                open_ = ~done
                index, x, level = index[open_], x[open_], level[open_]
                c, d, h, done = c[open_], d[open_], h[open_], done[open_]
    fraction[index] = h
    return fraction


def _nonzero(value: Tensor) -> Tensor:
    """Lentz's guard: a vanishing denominator becomes tiny, not zero (in place)."""
    return value.masked_fill_(value == 0, _TINY)
