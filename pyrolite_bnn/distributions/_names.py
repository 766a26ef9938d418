"""Distributions named in messages by what they are made of."""

from __future__ import annotations

import pyro.distributions as dist
from torch.distributions import Distribution, Independent, TransformedDistribution

__all__ = ["distribution_name"]

# Pyro's wrappers that broadcast or mask a distribution without changing it
# (the expansion of a prior to the weight's shape, a plate's, a mask).
_SEEN_THROUGH = (dist.ExpandedDistribution, dist.MaskedDistribution)
# The classes that transform a distribution they are given (not the named
# families built on them, such as LogNormal).
_TRANSFORMED = (TransformedDistribution, dist.TransformedDistribution)


def distribution_name(distribution: Distribution) -> str:
    """``distribution``'s class, with the distribution it is made of.

    Pyro's wrappers that only broadcast or mask (``ExpandedDistribution``,
    ``MaskedDistribution``, which the library and Pyro add themselves) are
    named by what they wrap; an ``Independent`` (of any class) and a
    ``TransformedDistribution`` by their class and what they wrap, so that a
    ``Normal`` inside them is not taken for a plain ``Normal``; any other
    distribution by its class.

    Args:
        distribution: a ``torch``/``pyro`` distribution.

    Returns:
        e.g. ``"Independent(Normal, 2)"``.

    Example:
        >>> import torch
        >>> td = torch.distributions
        >>> distribution_name(td.Independent(td.Normal(torch.zeros(2, 3), 1.0), 2))
        'Independent(Normal, 2)'
        >>> distribution_name(
        ...     td.TransformedDistribution(td.Normal(0.0, 1.0), [td.ExpTransform()])
        ... )
        'TransformedDistribution(Normal, ExpTransform)'
        >>> distribution_name(td.LogNormal(0.0, 1.0))
        'LogNormal'
    """
    if isinstance(distribution, _SEEN_THROUGH):
        return distribution_name(distribution.base_dist)
    name = type(distribution).__name__
    if isinstance(distribution, Independent):
        inner = distribution_name(distribution.base_dist)
        return f"{name}({inner}, {distribution.reinterpreted_batch_ndims})"
    if type(distribution) in _TRANSFORMED:
        assert isinstance(distribution, TransformedDistribution)
        steps = ", ".join(type(t).__name__ for t in distribution.transforms)
        return f"{name}({distribution_name(distribution.base_dist)}, {steps})"
    return name
