"""The targets' spread against the noise scale a likelihood starts from.

A learned noise scale is ``softplus(raw)``, and Adam moves ``raw`` by at most
about the learning rate ``lr`` per step: below 1 the scale changes by about a
factor ``exp(lr)`` per step, above 1 by about ``lr``. A scale started far from
where training must take it stays there for :func:`raw_steps` ``/ lr`` steps.

The spread of the targets bounds their noise from above only: a good fit
leaves far less noise than the targets spread (standardised targets, spread
1, of noise 1e-5 started at ``init_scale=1e-5`` as the docs recommend are
right), but never more. So a scale far *below* the spread is warned about
only where the targets look unstandardised and the scale must grow through
the slow, linear regime (:func:`wide_spread`); one far *above* it is always a
start the scale must leave (:func:`narrow_spread`).
"""

from __future__ import annotations

from torch import Tensor

from pyrolite_bnn._math import inverse_softplus

__all__ = [
    "STANDARDISE",
    "UNSCALED_SPREAD",
    "narrow_spread",
    "raw_steps",
    "wide_spread",
]

# Targets spread this many times a noise scale's start (and, wider, this many
# times 1), or under this fraction of it, are warned about.
UNSCALED_SPREAD = 10.0
# Values needed to read a spread far below the scale: two or three values of
# ordinary data are that close by chance (a pair within a tenth of its
# standard deviation one time in 12; four values about one in 700).
_NARROW_SPREAD_VALUES = 4
STANDARDISE = "Standardise the targets ((y - mean) / std, and map predictions back)"


def wide_spread(spread: float, scale: float) -> bool:
    """Whether targets of this ``spread`` look unstandardised for ``scale``.

    Over 10 times the scale *and* over 10: standardised targets (spread
    about 1) are never warned about whatever the start (a scale below 1
    grows by a factor per step, and one far below their spread is the noise
    level the user expects), while targets in raw units (scikit-learn's
    diabetes, spread 77) leave a scale started at 1 far too small for tens of
    thousands of steps.

    Example:
        >>> wide_spread(1.0, 1e-5), wide_spread(77.0, 1.0), wide_spread(77.0, 50.0)
        (False, True, False)
    """
    return spread > UNSCALED_SPREAD * max(scale, 1.0)


def narrow_spread(target: Tensor, spread: float, scale: float) -> bool:
    """Whether the targets lie far inside ``scale`` (enough values, not constant).

    Their ``spread`` and their distance from zero are both under a tenth of
    ``scale``: one batch of an unshuffled loader (a stretch of a standardised
    time series) may spread little while the data set spreads 1, but its
    values are then not all near zero.

    Example:
        >>> import torch
        >>> narrow_spread(1e-8 * torch.randn(32), 1e-8, 1.0)
        True
    """
    return (
        target.numel() >= _NARROW_SPREAD_VALUES
        and 0 < spread * UNSCALED_SPREAD < scale
        and float(target.detach().abs().max()) * UNSCALED_SPREAD < scale
    )


def raw_steps(start: float, end: float) -> float:
    """How far ``raw`` moves for ``softplus(raw)`` to go from ``start`` to ``end``.

    Adam moves ``raw`` by at most about the learning rate per step, so this
    divided by the learning rate is about the fewest steps it takes: about
    ``ln(end / start)`` below 1, ``end - start`` above.

    Example:
        >>> round(raw_steps(1.0, 77.0), 2), round(raw_steps(1e-5, 1.0), 2)
        (76.46, 12.05)
    """
    return abs(inverse_softplus(end) - inverse_softplus(start))
