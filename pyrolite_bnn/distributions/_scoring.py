"""Which scoring method a user's likelihood class redefined, and the dispatch on it.

A likelihood scores targets per example (``log_likelihood``) and per target
position (``position_log_likelihood``). ``position_log_likelihood`` always
computes the class's own densities and never calls ``log_likelihood``, so
that a user's ``log_likelihood`` may be written from the inherited one (a
weight per position, summed) without any recursion. The library's readers of
per-position densities (calibration) ask :func:`scored_positions`, which
follows a user's ``log_likelihood`` redefined alone. The other way round,
the library's ``log_likelihood`` sums a user's ``position_log_likelihood``
redefined alone (:func:`per_position_only`), which therefore cannot itself
be built from ``log_likelihood``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from pyrolite_bnn.distributions.predictive import PredictiveDistribution

__all__ = [
    "defining_class",
    "per_example_only",
    "per_position_only",
    "scored_positions",
    "users_class",
]


def defining_class(kind: type, name: str) -> type:
    """The first class in ``kind``'s MRO that defines the attribute ``name``."""
    return next(cls for cls in kind.__mro__ if name in vars(cls))


def users_class(kind: type) -> bool:
    """Whether ``kind`` is defined outside the library."""
    return kind.__module__.split(".")[0] != __name__.split(".")[0]


def _redefined_below(likelihood: PredictiveDistribution, name: str, other: str) -> bool:
    """Whether a user's class defines ``name`` below the class defining ``other``.

    ``name`` then is the user's own scoring, which the ``other`` method
    inherited from above it does not follow.
    """
    kind = type(likelihood)
    mine = defining_class(kind, name)
    theirs = defining_class(kind, other)
    return users_class(mine) and mine is not theirs and issubclass(mine, theirs)


def per_example_only(likelihood: PredictiveDistribution) -> bool:
    """Whether a user's ``log_likelihood`` leaves the per-position densities behind.

    That is, ``log_likelihood`` comes from a class of the user's below the
    one ``position_log_likelihood`` comes from. Such a subclass computes its
    densities its own way (a mask of its own, a weight per position), which
    the per-position densities of the class it derives from do not follow:
    its densities are known per example only.
    """
    return _redefined_below(likelihood, "log_likelihood", "position_log_likelihood")


def per_position_only(likelihood: PredictiveDistribution) -> bool:
    """Whether a user's ``position_log_likelihood`` is the only scoring of its own.

    That is, ``position_log_likelihood`` comes from a class of the user's
    below the one ``log_likelihood`` comes from (a weighting per position):
    the per-example log-likelihood is then the sum of its positions, so that
    the loss, the Pyro model and calibration score targets alike.
    """
    return _redefined_below(likelihood, "position_log_likelihood", "log_likelihood")


def scored_positions(
    likelihood: PredictiveDistribution, output: Tensor, target: Tensor
) -> Tensor:
    """The per-position log-densities the library fits and scores on, ``(S, B, ...)``.

    ``likelihood.position_log_likelihood``, unless a user's class redefined
    ``log_likelihood`` alone (:func:`per_example_only`): then its
    log-density per example, ``(S, B)``, which is how such a class scores
    targets. Calibration reads this, so that it follows the same data term
    as the loss and the Pyro model.

    Args:
        likelihood: the likelihood scoring ``target``.
        output: network output ``(S, B, ...)``.
        target: targets ``(B, ...)``.

    Returns:
        Log-densities per particle, example and (where known) target position.
    """
    if per_example_only(likelihood):
        return likelihood.log_likelihood(output, target)
    return likelihood.position_log_likelihood(output, target)
