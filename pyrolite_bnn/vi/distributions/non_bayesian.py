"""``UniformPrior`` and ``NonBayesian``: torch_blue's non-Bayesian switches."""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor

from pyrolite_bnn.distributions.predictive import Normal as BnnNormal
from pyrolite_bnn.distributions.predictive import (
    PredictiveDistribution as BnnPredictive,
)
from pyrolite_bnn.distributions.priors import Prior as BnnPrior
from pyrolite_bnn.distributions.variational import PointMass, VariationalFamily
from pyrolite_bnn.vi.distributions._adapters import FlatPrior
from pyrolite_bnn.vi.distributions.base import (
    PredictiveDistribution,
    Prior,
    VariationalDistribution,
    as_parameter_tuple,
)

__all__ = ["NonBayesian", "UniformPrior"]

_LOSS_TYPES = ("MSE", "L2", "MAE", "L1")


class UniformPrior(Prior):
    """Improper flat prior: every weight value equally likely (``log p = 0``).

    Becomes :class:`~pyrolite_bnn.vi.distributions._adapters.FlatPrior`; the KL
    from a mean-field Normal posterior is then minus its entropy.

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> vi.distributions.UniformPrior().log_prob(torch.ones(3), (None,))
        tensor([0., 0., 0.])
    """

    distribution_parameters = ("mean",)
    mean = None
    _scaling_parameters = ()

    def log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        """Zeros of the sample's shape."""
        return torch.zeros_like(sample)

    def to_prior(self) -> BnnPrior:
        """:class:`FlatPrior`."""
        return FlatPrior()


class _Laplace(BnnPredictive):
    """Unit-scale Laplace likelihood: ``-log p = |y - output| + log 2`` (L1 loss)."""

    def distribution(self, output: Tensor) -> dist.TorchDistribution:
        result: dist.TorchDistribution = dist.Laplace(
            output, torch.ones_like(output)
        ).to_event(output.dim() - 2)
        return result


class NonBayesian(UniformPrior, VariationalDistribution, PredictiveDistribution):
    """Non-Bayesian switch: fixed weights, flat prior, plain loss.

    * prior: :class:`UniformPrior`;
    * variational: :class:`pyrolite_bnn.PointMass` (the weight is a learned
      value; with a flat prior the KL term is exactly zero);
    * predictive: ``loss_type="MSE"``/``"L2"`` is a Normal likelihood with
      variance 1/2 (``-log p = (y - out)^2 + const``), ``"MAE"``/``"L1"`` a
      unit Laplace (``-log p = |y - out| + log 2``).

    Args:
        loss_type: ``"MSE"``, ``"L2"``, ``"MAE"``, ``"L1"``, or ``None`` (not
            usable as predictive distribution).

    Example:
        >>> from pyrolite_bnn import vi
        >>> vi.distributions.NonBayesian("MSE").to_predictive()
        Normal(scale=0.707107)
    """

    _default_variational_parameters = (0.0,)

    def __init__(self, loss_type: str | None = None) -> None:
        if loss_type is not None and loss_type not in _LOSS_TYPES:
            raise ValueError(f"Unsupported loss type: {loss_type}")
        self.loss_type = loss_type

    def sample(self, *parameters: Any) -> Tensor:
        """The fixed value itself."""
        value: Tensor = as_parameter_tuple(*parameters)[0]
        return value

    def predictive_parameters_from_samples(self, samples: Tensor) -> Tensor:
        """Mean over samples."""
        return samples.mean(dim=0)

    def log_prob_from_parameters(self, reference: Tensor, parameters: Any) -> Tensor:
        """Minus the chosen loss (mean over elements) of the prediction."""
        prediction = as_parameter_tuple(*parameters)[0]
        if self.loss_type is None:
            raise ValueError("loss_type must be set during initialization")
        error = prediction - reference
        if self.loss_type in ("MSE", "L2"):
            squared: Tensor = -(error**2).mean()
            return squared
        absolute: Tensor = -error.abs().mean()
        return absolute

    def to_variational(self) -> VariationalFamily:
        """:class:`pyrolite_bnn.PointMass`."""
        return PointMass()

    def build_predictive(self) -> BnnPredictive:
        """Normal with variance 1/2 (MSE) or unit Laplace (L1)."""
        if self.loss_type is None:
            raise ValueError("loss_type must be set during initialization")
        if self.loss_type in ("MSE", "L2"):
            return BnnNormal(scale=math.sqrt(0.5))
        return _Laplace()
