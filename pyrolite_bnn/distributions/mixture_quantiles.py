"""Exact quantiles of the equal-weight mixtures a prediction's particles make.

The posterior predictive of ``S`` particles is the mixture over dim 0 of each
particle's noise distribution; its quantiles are found in float64: by
bisection on the mixture's CDF refined by Newton steps where the mixture has
a density (Gaussian), by safeguarded Halley steps (Student-t: each evaluation
of its tail is costly), by bisection over the counts (Poisson).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from pyrolite_bnn._validation import (
    check_positive,
    check_positive_values,
    check_probability,
)
from pyrolite_bnn.distributions._bracketed_root import bracketed_halley
from pyrolite_bnn.distributions._precision import summary_dtype
from pyrolite_bnn.distributions._student_t_mixture import StudentTMixture
from pyrolite_bnn.distributions._student_t_tail import student_t_upper_tail

__all__ = [
    "gaussian_mixture_quantile",
    "poisson_mixture_quantile",
    "student_t_mixture_quantile",
]

# Bisection until the bracket is below 1e-5 of the narrowest component's sigma
# (24 halvings of 80 sigmas when the components are alike; more when they
# differ, the bracket spanning the widest ones), at most 200 (float64 has no
# finer resolution to reach); then Newton steps (quadratic from there: float64
# resolution), kept in the bracket.
_BISECTION_RESOLUTION = 1e-5
_BISECTION_STEPS = (24, 200)
_NEWTON_STEPS = 3
# Half-width of the bisection bracket in component standard deviations: the
# normal CDF is below the smallest positive float64 beyond 38.5 sigma.
_BRACKET_SIGMAS = 40.0


def _check_particles(components: Tensor, what: str) -> None:
    """Refuse a mixture without components: ``(S, ...)`` needs ``S >= 1``."""
    if components.dim() == 0 or components.shape[0] == 0:
        raise ValueError(
            f"{what} must hold the mixture's components along dim 0, (S, ...) "
            f"with S >= 1 particles, got shape {tuple(components.shape)}"
        )


def _halvings(lo: Tensor, hi: Tensor, sigma: Tensor) -> int:
    """Bisection steps that bring every bracket below the resolution.

    Entries without a finite positive ratio (an empty batch, a zero or
    non-finite scale) do not count: their results are what the steps give.
    """
    fewest, most = _BISECTION_STEPS
    if lo.numel() == 0:
        return fewest
    ratio = (hi - lo) / (_BISECTION_RESOLUTION * sigma.min(0).values)
    finite = ratio[torch.isfinite(ratio) & (ratio > 0)]
    if finite.numel() == 0:
        return fewest
    widest = max(float(finite.max()), 1.0)
    return min(max(math.ceil(math.log2(widest)), fewest), most)


def gaussian_mixture_quantile(loc: Tensor, var: Tensor, q: float) -> Tensor:
    """Quantile ``q`` of the equal-weight mixture over dim 0 of ``N(loc, var)``.

    Bisection in float64 (the result in ``loc``'s dtype, at least ``float32``:
    see :func:`full_precision`) on the mixture's
    lower tail ``P(Y <= y)`` for ``q <= 1/2`` and upper tail ``P(Y > y)``
    against ``1 - q`` otherwise, each through ``erfc``, which keeps its
    relative precision far into the tail (``1 + erf`` would lose it below
    ``1e-16``). The bracket, the components' 40-sigma bounds, holds every
    quantile of a float64 ``q``; halvings shrink it below ``1e-5`` of the
    narrowest component's sigma (24 when the components' scales are alike,
    up to 200), and Newton steps on the tail (its slope is the mixture
    density), kept inside the bracket, reach float64 resolution.

    Raises:
        TypeError: if ``q`` is not one number.
        ValueError: if ``q`` is not in ``(0, 1)``, ``loc`` has no components
            (``S = 0``) or ``var`` a negative (or NaN) value; a zero variance
            is a point mass.
    """
    q = check_probability(q, "q")
    _check_particles(loc, "loc")
    check_positive_values(var, "var", zero=True)
    upper = q > 0.5  # search the upper tail 1 - q instead
    tail = 1.0 - q if upper else q
    wide_loc, wide_sigma = loc.double(), var.double().sqrt()
    mean, sigma = wide_loc.detach(), wide_sigma.detach()  # searched without a graph
    scale = 1.0 / (sigma * math.sqrt(2.0))  # z = (y - mean) * scale
    lo = (mean - _BRACKET_SIGMAS * sigma).min(0).values
    hi = (mean + _BRACKET_SIGMAS * sigma).max(0).values

    def tail_mass(y: Tensor) -> tuple[Tensor, Tensor]:
        z = (y.unsqueeze(0) - mean) * scale
        return (0.5 * torch.erfc(z if upper else -z)).mean(0), z

    halvings = _halvings(lo, hi, sigma)
    for _ in range(halvings):
        mid = (lo + hi) / 2
        mass, _ = tail_mass(mid)
        below = mass > tail if upper else mass < tail  # quantile above mid
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    y = (lo + hi) / 2
    for _ in range(_NEWTON_STEPS):
        mass, z = tail_mass(y)
        density = (torch.exp(-z * z) * scale).mean(0) / math.sqrt(math.pi)
        step = (mass - tail) / density  # d tail / dy = -+ density
        y = (y + step if upper else y - step).clamp(lo, hi)
        y = torch.where(density > 0, y, (lo + hi) / 2)
    y = _with_root_gradient(y, wide_loc, wide_sigma, _standard_normal_density)
    return y.to(summary_dtype(loc.dtype))


def poisson_mixture_quantile(rate: Tensor, q: float) -> Tensor:
    """Quantile ``q`` of the equal-weight mixture over dim 0 of ``Poisson(rate)``.

    The smallest count ``k`` with ``P(Y <= k) >= q``, the mixture's CDF
    ``mean_s Q(k + 1, rate_s)`` (the regularised upper incomplete gamma
    function) in float64, found by bisection over the integers between -1
    and a count above every finite component's 40-sigma point. A component of
    infinite rate puts its weight above every count: the quantile is finite
    where the finite components reach ``q``, else infinite. Returned in the
    rate's dtype (at least ``float32``); piecewise constant in the rates,
    its gradient is zero where they require one (as ``torch.floor``'s).

    Raises:
        TypeError: if ``q`` is not one number.
        ValueError: if ``q`` is not in ``(0, 1)``, ``rate`` has no
            components (``S = 0``) or a negative (or NaN) value.

    Example:
        >>> import torch
        >>> poisson_mixture_quantile(torch.full((4, 1), 3.0), 0.5)
        tensor([3.])
        >>> rates = torch.tensor([[1.0], [1.0], [1.0], [float("inf")]])
        >>> poisson_mixture_quantile(rates, 0.5), poisson_mixture_quantile(rates, 0.9)
        (tensor([1.]), tensor([inf]))
    """
    q = check_probability(q, "q")
    _check_particles(rate, "rate")
    check_positive_values(rate, "rate", zero=True)
    wide = rate.double()
    infinite = wide.isinf()
    finite = wide.masked_fill(infinite, 0.0)  # an infinite rate: no finite bracket
    top = (finite + _BRACKET_SIGMAS * finite.sqrt() + _BRACKET_SIGMAS).amax(0).ceil()
    if bool(infinite.any()):  # the finite components' mass may fall short of q
        short = torch.special.gammaincc(top + 1, wide).mean(0) < q
        top = top.masked_fill(short & infinite.any(0), math.inf)
    lo, hi = torch.full_like(top, -1.0), top  # P(Y <= lo) < q <= P(Y <= hi)
    while True:
        mid = torch.floor((lo + hi) / 2)
        # Beyond 2**53 float64 counts are not all integers: a bracket that a
        # midpoint no longer splits is done (an infinite rate's is never open).
        open_ = (hi - lo > 1) & (mid > lo) & (mid < hi)
        if not bool(open_.any()):
            if torch.is_grad_enabled() and rate.requires_grad:
                # A count is piecewise constant in the rates: gradient 0, as
                # torch.floor's (an infinite rate masked: 0 * inf is NaN).
                hi = hi + (finite * 0.0).sum(0)
            return hi.to(summary_dtype(rate.dtype))
        reached = torch.special.gammaincc(mid + 1, wide).mean(0) >= q
        hi = torch.where(open_ & reached, mid, hi)
        lo = torch.where(open_ & ~reached, mid, lo)


# The component quantile is searched in u = asinh(t): linear near 0 and
# logarithmic far out, as heavy tails put quantiles at any magnitude; 64
# halvings of its bracket leave float64 resolution. Beyond this |t| no
# bracket is representable and the quantile is infinite.
_LARGEST_T = 1e300
_COMPONENT_HALVINGS = 64
# The mixture's quantile: safeguarded Halley steps, with bisections where they
# do not serve, at most as many as float64 can make count.
_ROOT_STEPS = 200


def student_t_mixture_quantile(
    loc: Tensor, scale: Tensor, df: float, q: float
) -> Tensor:
    """Quantile ``q`` of the equal-weight mixture over dim 0 of Student-t components.

    The components are ``StudentT(df, loc, scale)``. Their common standard
    quantile ``t_q`` (found by bisection in ``asinh(t)``, as heavy tails put
    it at any magnitude: ``df = 0.1``'s 2.5 % point is ``-1.7e12``) brackets
    the mixture's between the smallest and the largest ``loc + scale * t_q``
    (every component's CDF is below ``q`` left of that interval and above it
    right of it). From the root of the mixture's CDF expanded to second order
    around those component quantiles, safeguarded Halley steps in float64
    (:func:`~._bracketed_root.bracketed_halley`) on the mixture's lower tail
    ``P(Y <= y)`` for ``q <= 1/2`` and upper tail ``P(Y > y)`` against
    ``1 - q`` otherwise, each from :func:`student_t_upper_tail` (which keeps
    its relative precision far into the tail), the slope and curvature being
    the mixture's density and its derivative: each evaluation narrows the
    bracket, a step that would leave it (or does not shrink fast enough)
    becomes a bisection, and an entry is done once the error its last step
    leaves is below a few float64 ulps of the result (or of the narrowest
    scale, for a result at 0), or its bracket is: two evaluations of the
    tail for components alike, more (at most 200) where their scales differ
    by orders of magnitude. A quantile beyond ``1e300`` scales
    (``df`` below about ``0.01``) is returned as ``-inf``/``inf``. The result
    is in ``loc``'s dtype, at least ``float32``; where ``loc`` or ``scale``
    require a gradient it is the implicit function theorem's.

    Args:
        loc: component locations ``(S, ...)``.
        scale: positive component scales, broadcasting with ``loc``.
        df: the components' degrees of freedom, positive.
        q: the probability, in ``(0, 1)``.

    Raises:
        TypeError: if ``q`` or ``df`` is not one number.
        ValueError: if ``q`` is not in ``(0, 1)``, ``df`` is not positive
            and finite, ``loc`` has no components (``S = 0``) or ``scale`` a
            value that is not positive.

    Example:
        >>> import torch
        >>> loc = torch.zeros(4, 1)
        >>> student_t_mixture_quantile(loc, torch.tensor(1.0), 1.0, 0.75)  # Cauchy
        tensor([1.])
    """
    q = check_probability(q, "q")
    df = check_positive(df, "df")
    _check_particles(loc, "loc")
    upper = q > 0.5  # search the upper tail 1 - q instead
    tail = 1.0 - q if upper else q
    wide_loc = loc.double()
    wide_sigma = torch.as_tensor(scale, dtype=torch.float64, device=wide_loc.device)
    check_positive_values(wide_sigma, "scale")
    wide_sigma = wide_sigma.expand_as(wide_loc)
    mean, sigma = wide_loc.detach(), wide_sigma.detach()  # searched without a graph
    standard = _standard_quantile(df, tail)  # P(T > standard) = tail
    if not math.isfinite(standard):
        infinite = torch.full_like(mean.sum(0), math.inf if upper else -math.inf)
        return infinite.to(summary_dtype(loc.dtype))
    t_q = standard if upper else -standard  # the components' quantile
    component = mean + sigma * t_q  # each one's: the mixture's lies between them
    lo, hi = component.amin(0), component.amax(0)
    search = StudentTMixture(mean, sigma, float(df), tail, upper)
    y = bracketed_halley(
        search.evaluate,
        search.start(component, t_q, lo, hi),
        lo,
        hi,
        sigma.amin(0),  # the resolution of a quantile at 0
        _ROOT_STEPS,
    )
    nu = torch.tensor(float(df), dtype=torch.float64, device=mean.device)

    def standard_density(t: Tensor) -> Tensor:
        student = torch.distributions.StudentT(nu, validate_args=False)
        density: Tensor = student.log_prob(t).exp()  # type: ignore[no-untyped-call]
        return density

    y = _with_root_gradient(y, wide_loc, wide_sigma, standard_density)
    return y.to(summary_dtype(loc.dtype))


def _standard_normal_density(t: Tensor) -> Tensor:
    return torch.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)


def _with_root_gradient(
    y: Tensor, loc: Tensor, scale: Tensor, density: Callable[[Tensor], Tensor]
) -> Tensor:
    """``y``, the root of the mixture's ``F(y) = q``, with its implicit gradient.

    The search runs without a graph; where ``loc`` or ``scale`` require a
    gradient, it is that of the implicit function theorem, ``dy = -dF / f``:
    the mixture's CDF ``F(y) = mean_s Phi((y - loc_s) / scale_s)`` changes by
    ``mean_s phi(t_s) dt_s`` and has the density ``f = mean_s phi(t_s) /
    scale_s``. The value stays ``y`` exactly; entries without a positive
    density (point masses) get no gradient.

    Args:
        y: the quantiles, found without gradients, ``(...)``.
        loc: component locations ``(S, ...)``, float64.
        scale: component scales broadcasting with ``loc``, float64.
        density: the components' standard density ``phi``.
    """
    if not (torch.is_grad_enabled() and (loc.requires_grad or scale.requires_grad)):
        return y
    t = (y.detach().unsqueeze(0) - loc) / scale  # differentiable in loc, scale
    weight = density(t.detach())
    mixture_density = (weight / scale.detach()).mean(0)
    positive = mixture_density > 0
    change = -(weight * t).mean(0) / torch.where(positive, mixture_density, 1.0)
    correction = change - change.detach()  # value 0, gradient dy
    return y + torch.where(positive & correction.isfinite(), correction, 0.0)


def _standard_quantile(df: float, tail: float) -> float:
    """``t`` with ``P(T > t) = tail`` for ``T ~ StudentT(df)``; ``inf`` past 1e300."""

    def upper_tail(t: float) -> float:
        point = torch.tensor(t, dtype=torch.float64)
        return float(student_t_upper_tail(point, df))

    if upper_tail(_LARGEST_T) >= tail:
        return math.inf
    lo, hi = 0.0, math.asinh(_LARGEST_T)  # tail <= 1/2 = P(T > 0)
    for _ in range(_COMPONENT_HALVINGS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if upper_tail(math.sinh(mid)) > tail else (lo, mid)
    return math.sinh((lo + hi) / 2)
