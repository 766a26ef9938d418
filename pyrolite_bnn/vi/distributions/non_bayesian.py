"""``UniformPrior`` and ``NonBayesian``: torch_blue's non-Bayesian switches."""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import Tensor, nn

from pyrolite_bnn._overrides import keeps_methods
from pyrolite_bnn.distributions.mixture_quantiles import gaussian_mixture_quantile
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

# What each role's native class stands for (see MeanFieldNormal): a subclass
# that overrides none of a role's names gets the native class in that role.
_PRIOR_METHODS = ("prior_log_prob",)
_VARIATIONAL_METHODS = ("sample", "log_prob", "variational_log_prob")
_PREDICTIVE_METHODS = ("predictive_parameters_from_samples", "log_prob_from_parameters")


class _LossDensity(dist.TorchDistribution):
    """``log p(y) = -mean_d loss(y_d - loc_d)``: a plain loss as a likelihood.

    The mean runs over the event (the elements of one example), so that the
    loss's data term, ``N / B`` times the sum over the batch, is ``N`` times
    the loss averaged over all elements: torch_blue's ``N * nn.MSELoss()``
    (``nn.L1Loss()``). The density is not normalised (torch_blue's value has
    no constant). Draws, mean and variance are those of the distribution it
    is proportional to, per element: ``N(loc, D / 2)`` for the squared error,
    ``Laplace(loc, D)`` for the absolute error, ``D`` elements per example.

    Args:
        loc: the network output, ``(S, B, ...)``.
        event_dim: number of trailing dimensions of one example.
        squared: squared (``True``) or absolute error.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}  # noqa: RUF012
    support = constraints.real
    has_rsample = True

    def __init__(self, loc: Tensor, event_dim: int, squared: bool) -> None:
        self.loc = loc
        self.squared = squared
        split = loc.dim() - event_dim
        event_shape = loc.shape[split:]
        self.elements = event_shape.numel()
        super().__init__(loc.shape[:split], event_shape, validate_args=False)

    def _proportional(self) -> TorchDistributionMixin:
        """The normalised distribution whose density this is proportional to."""
        dims = len(self.event_shape)
        result: TorchDistributionMixin
        if self.squared:
            scale = math.sqrt(self.elements / 2)
            result = dist.Normal(self.loc, scale).to_event(dims)
        else:
            result = dist.Laplace(self.loc, float(self.elements)).to_event(dims)
        return result

    def expand(self, batch_shape: Any, _instance: Any = None) -> Any:
        """Pyro's generic expansion (needed inside plates)."""
        return dist.ExpandedDistribution(self, batch_shape)

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        """Draws of the normalised distribution (see the class)."""
        draw: Tensor = self._proportional().rsample(torch.Size(sample_shape))
        return draw

    @property
    def mean(self) -> Tensor:
        """The network output."""
        return self.loc

    @property
    def variance(self) -> Tensor:
        """``D / 2`` (squared error) or ``2 D^2`` (absolute error) per element."""
        variance: Tensor = self._proportional().variance
        return variance

    def log_prob(self, value: Tensor) -> Tensor:
        """Minus the loss of each example (mean over its elements)."""
        difference = value - self.loc
        loss = difference.square() if self.squared else difference.abs()
        if self.event_shape:
            loss = loss.mean(tuple(range(-len(self.event_shape), 0)))
        return -loss


class _LossLikelihood(BnnPredictive):
    """torch_blue's ``NonBayesian(loss_type)`` as predictive: the plain loss.

    ``log p(y | output) = -mean_d loss(y_d, output_d)`` per example
    (:class:`_LossDensity`), so the loss is ``N`` times ``nn.MSELoss()``
    (``nn.L1Loss()``) of the outputs, averaged over the particles, as in
    torch_blue. Summaries for :func:`pyrolite_bnn.predict` are those of the
    distribution the density is proportional to: mean the output, variance
    ``D / 2`` (``MSE``) or ``2 D^2`` (``L1``) for ``D`` outputs per example,
    and Gaussian-mixture intervals for ``MSE``.

    Args:
        loss_type: ``"MSE"``, ``"L2"``, ``"MAE"`` or ``"L1"``.
    """

    def __init__(self, loss_type: str) -> None:
        super().__init__()
        self.loss_type = loss_type
        self.squared = loss_type in ("MSE", "L2")

    def check_target(self, output: Tensor, target: Tensor) -> None:
        """Targets must be real numbers (not ``bool`` or complex), finite."""
        super().check_target(output, target)
        if target.dtype == torch.bool or target.is_complex():
            raise ValueError(
                f"NonBayesian({self.loss_type!r}) targets must be real numbers, "
                f"got dtype {target.dtype}"
            )

    def distribution(self, output: Tensor) -> dist.TorchDistribution:
        """:class:`_LossDensity` with batch shape ``(S, B)``."""
        return _LossDensity(output, output.dim() - 2, self.squared)

    def moments(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """Per-particle mean (the output) and variance, ``(S, B, ...)`` each."""
        self.check_output(output)
        elements = math.prod(output.shape[2:])
        loc = output.squeeze(-1) if output.dim() == 3 and elements == 1 else output
        variance = elements / 2 if self.squared else 2.0 * elements**2
        return loc, torch.full_like(loc, variance)

    def quantile(self, output: Tensor, q: float) -> Tensor:
        """Quantile ``q`` of the Gaussian mixture over particles (``MSE`` only)."""
        if not self.squared:
            raise NotImplementedError(
                f"predictive intervals of NonBayesian({self.loss_type!r}) (a Laplace "
                "mixture) are not implemented; NonBayesian('MSE') has them"
            )
        return gaussian_mixture_quantile(*self.moments(output), q)

    def extra_repr(self) -> str:
        """The loss."""
        return f"loss_type={self.loss_type!r}"


class NonBayesian(Prior, VariationalDistribution, PredictiveDistribution):
    """Non-Bayesian switch: fixed weights, flat prior, plain loss.

    * prior: improper flat (``log p = 0``, :class:`FlatPrior`);
    * variational: :class:`pyrolite_bnn.PointMass` (the weight is a learned
      value; with a flat prior the KL term is exactly zero);
    * predictive: the plain loss, torch_blue's value: ``-log p(y | out)`` is
      the mean over the example's elements of ``(y - out)^2``
      (``"MSE"``/``"L2"``) or ``|y - out|`` (``"MAE"``/``"L1"``), so the loss
      is ``N`` times ``nn.MSELoss()`` (``nn.L1Loss()``), with no constant
      (:class:`_LossLikelihood`).

    Args:
        loss_type: ``"MSE"``, ``"L2"``, ``"MAE"``, ``"L1"``, or ``None`` (not
            usable as predictive distribution).

    Example:
        >>> from pyrolite_bnn import vi
        >>> vi.distributions.NonBayesian("MSE").to_predictive()
        _LossLikelihood(loss_type='MSE')
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
        """:class:`FlatPrior`; for a subclass with another density, its own.

        A subclass that overrides :meth:`prior_log_prob` is wrapped as any
        torch_blue prior is (``Distribution.to_prior``): the flat prior's
        closed-form KL does not hold for its density.
        """
        if not keeps_methods(self, NonBayesian, _PRIOR_METHODS):
            return super().to_prior()
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
        :class:`UniformPrior` computes it too, as torch_blue's does (the same
        functions, only the predictive role is off: a loss refuses it).
        """
        reference = reference.expand_as(samples)
        return self.log_prob_from_parameters(reference, samples)

    def to_variational(self) -> VariationalFamily:
        """:class:`pyrolite_bnn.PointMass`.

        A subclass that overrides the sampling or density methods is wrapped
        generically (``Distribution.to_variational``).
        """
        if not keeps_methods(self, NonBayesian, _VARIATIONAL_METHODS):
            return super().to_variational()
        return PointMass()

    def build_predictive(self) -> BnnPredictive:
        """The plain loss as a likelihood (:class:`_LossLikelihood`).

        A subclass that overrides :meth:`predictive_parameters_from_samples` or
        :meth:`log_prob_from_parameters` is evaluated with its own methods
        (``Distribution.build_predictive``).
        """
        if not keeps_methods(self, NonBayesian, _PREDICTIVE_METHODS):
            return super().build_predictive()
        if self.loss_type is None:
            raise ValueError("loss_type must be set during initialization")
        return _LossLikelihood(self.loss_type)


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
