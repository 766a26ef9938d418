"""``UniformPrior`` and ``NonBayesian``: torch_blue's non-Bayesian switches."""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor, nn

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


class _Laplace(BnnPredictive):
    """Unit-scale Laplace likelihood: ``-log p = |y - output| + log 2`` (L1 loss)."""

    def distribution(self, output: Tensor) -> dist.TorchDistribution:
        result: dist.TorchDistribution = dist.Laplace(
            output, torch.ones_like(output)
        ).to_event(output.dim() - 2)
        return result


class NonBayesian(Prior, VariationalDistribution, PredictiveDistribution):
    """Non-Bayesian switch: fixed weights, flat prior, plain loss.

    * prior: improper flat (``log p = 0``, :class:`FlatPrior`);
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

    distribution_parameters = ("mean",)
    mean = None
    _scaling_parameters = ()
    _default_variational_parameters = (0.0,)

    def __init__(self, loss_type: str | None = None) -> None:
        if loss_type is not None and loss_type not in _LOSS_TYPES:
            raise ValueError(f"Unsupported loss type: {loss_type}")
        self.loss_type = loss_type
        self.loss: nn.Module | None = None
        if loss_type in ("MSE", "L2"):
            self.loss = nn.MSELoss()
        elif loss_type in ("MAE", "L1"):
            self.loss = nn.L1Loss()

    def log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        """Zeros of the sample's shape (flat prior, fixed weights)."""
        return torch.zeros_like(sample)

    def prior_log_prob(self, sample: Tensor, *hyperparameters: Any) -> Tensor:
        """A single zero, torch_blue's shape ``(1,)``: all values equally likely."""
        return sample.new_zeros(1)

    def to_prior(self) -> BnnPrior:
        """:class:`FlatPrior`."""
        return FlatPrior()

    def sample(self, *parameters: Any) -> Tensor:
        """The fixed value itself."""
        value: Tensor = as_parameter_tuple(*parameters)[0]
        return value

    def predictive_parameters_from_samples(self, samples: Tensor) -> Tensor:
        """Mean over samples."""
        return samples.mean(dim=0)

    def log_prob_from_parameters(self, reference: Tensor, parameters: Any) -> Tensor:
        """Minus the chosen loss (mean over elements) of the prediction."""
        prediction = as_parameter_tuple(parameters)[0]
        if self.loss is None:
            raise ValueError("loss_type must be set during initialization")
        value: Tensor = -self.loss(prediction, reference)
        return value

    def log_prob_from_samples(self, reference: Tensor, samples: Tensor) -> Tensor:
        """Minus the loss, averaged over samples ``(S, B, ...)`` (a scalar).

        Each sample is one prediction: the mean over samples of their losses
        (the ELBO's data term), not the loss of the mean prediction.
        """
        reference = reference.expand_as(samples)
        return self.log_prob_from_parameters(reference, samples)

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


class UniformPrior(NonBayesian):
    """Improper flat prior: every weight value equally likely (``log p = 0``).

    :class:`NonBayesian` with only the prior role (torch_blue's dev branch);
    it becomes :class:`FlatPrior`, so the KL from a mean-field Normal posterior
    is minus its entropy.

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> vi.distributions.UniformPrior().prior_log_prob(torch.ones(3))
        tensor([0.])
    """

    is_variational_distribution = False
    is_predictive_distribution = False
