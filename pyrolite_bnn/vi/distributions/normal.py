"""``MeanFieldNormal``: torch_blue's Normal as prior, variational and predictive."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pyrolite_bnn._overrides import keeps_methods
from pyrolite_bnn._validation import (
    check_finite_real,
    check_non_negative,
    check_positive,
    is_validation_enabled,
    readable_all,
)
from pyrolite_bnn.distributions.predictive import Normal as BnnNormal
from pyrolite_bnn.distributions.predictive import (
    PredictiveDistribution as BnnPredictive,
)
from pyrolite_bnn.distributions.priors import NormalPrior
from pyrolite_bnn.distributions.priors import Prior as BnnPrior
from pyrolite_bnn.distributions.variational import MeanFieldNormal as BnnMeanFieldNormal
from pyrolite_bnn.distributions.variational import VariationalFamily
from pyrolite_bnn.vi.distributions.base import (
    PredictiveDistribution,
    Prior,
    VariationalDistribution,
    as_parameter_tuple,
    number_tensor,
)
from pyrolite_bnn.vi.utils.use_norm_constants import norm_constants_on

__all__ = ["MeanFieldNormal"]

# What each role's native class stands for: a subclass that overrides none of
# these names computes as MeanFieldNormal does in that role and gets the native
# class (closed-form KL, local reparameterisation, learned noise); one that
# overrides any of them is wrapped generically, with its own methods.
_PRIOR_METHODS = (
    "distribution_parameters",
    "_required_parameters",
    "get_parameters",
    "log_prob",
    "prior_log_prob",
)
_VARIATIONAL_METHODS = (
    "distribution_parameters",
    "sample",
    "log_prob",
    "variational_log_prob",
)
_PREDICTIVE_METHODS = ("predictive_parameters_from_samples", "log_prob_from_parameters")


class MeanFieldNormal(Prior, VariationalDistribution, PredictiveDistribution):
    """Independent Normal distributions: prior, variational and predictive.

    Parameters are ``("mean", "log_std")``. In each role it becomes this
    library's native class:

    * prior: :class:`pyrolite_bnn.NormalPrior` (hyperparameters are buffers,
      saved in ``state_dict``);
    * variational: :class:`pyrolite_bnn.MeanFieldNormal` with
      ``scale_transform="exp"`` (closed-form KL, local reparameterisation in
      linear layers): the learnable tensors are the mean and the log standard
      deviation, as in torch_blue (a layer's ``_weight_log_std``);
    * predictive: :class:`pyrolite_bnn.Normal` with a *learned* noise scale
      (starting at ``std``), instead of torch_blue's spread of the samples. Give
      ``loss_fn.parameters()`` to the optimizer too.

    Args:
        mean: mean (prior; default of the variational mean, which is
            initialised like a weight).
        std: standard deviation (prior; default of the variational std before
            Kaiming scaling; initial noise scale as predictive).
        eps: added to the variance in :meth:`log_prob` (finite, ``>= 0``;
            the variance is positive without it). The roles leave it out: as
            prior this is ``NormalPrior(mean, std)`` exactly (at the default
            ``1e-10`` the difference is far below float precision).

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> normal = vi.distributions.MeanFieldNormal(0.0, 0.5)
        >>> normal.to_prior()
        NormalPrior(loc=0, scale=0.5)
        >>> normal.sample((torch.zeros(2, 3), torch.zeros(2, 3))).shape
        torch.Size([2, 3])
    """

    distribution_parameters = ("mean", "log_std")

    def __init__(self, mean: float = 0.0, std: float = 1.0, eps: float = 1e-10) -> None:
        std = check_positive(std, "MeanFieldNormal std")
        self.mean = number_tensor(check_finite_real(mean, "MeanFieldNormal mean"))
        self.log_std = number_tensor(std).log()
        self.eps = check_non_negative(eps, "MeanFieldNormal eps")

    @property
    def _default_variational_parameters(self) -> tuple[Tensor, Tensor]:
        return self.mean, self.log_std

    @property
    def std(self) -> Tensor:
        """Standard deviation ``exp(log_std)``."""
        return self.log_std.exp()

    def log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        """Elementwise Normal log density (constants with ``use_norm_constants``)."""
        mean, log_std = as_parameter_tuple(*parameters)
        variance = torch.exp(log_std) ** 2 + self.eps
        value = -0.5 * ((sample - mean) ** 2 / variance + 2 * log_std)
        if norm_constants_on():
            value = value - 0.5 * math.log(2 * math.pi)
        result: Tensor = value
        return result

    def sample(self, *parameters: Any) -> Tensor:
        """``mean + exp(log_std) * N(0, 1)`` (differentiable)."""
        mean, log_std = as_parameter_tuple(*parameters)
        return self._normal_sample(mean, torch.exp(log_std))

    def prior_initialization_values(self) -> dict[str, float]:
        """This prior's ``mean`` and ``log_std``: prior initialization's values.

        :meth:`reset_parameters_to_prior` sets the variable's variational
        ``mean`` and ``log_std`` to them (after ``rescale_prior``, the
        rescaled ones).
        """
        return {"mean": float(self.mean), "log_std": float(self.log_std)}

    @staticmethod
    def _normal_sample(mean: Tensor, std: Tensor) -> Tensor:
        """``mean + std * N(0, 1)`` (torch_blue's helper)."""
        draw: Tensor = mean + std * torch.randn_like(mean)
        return draw

    def predictive_parameters_from_samples(
        self, samples: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Predictive mean and standard deviation from model samples ``(S, ...)``.

        The mean over the sample dimension, and the standard deviation of the
        predictive: the samples' spread (epistemic) and, once this object's
        likelihood exists (built by the first loss, ``log_prob_from_samples``
        or :func:`~pyrolite_bnn.predict` that used it), its noise scale
        (aleatoric, learned by a loss whose parameters are optimised; else
        still ``std``), ``sqrt(spread^2 + noise^2)``. In torch_blue the spread
        was the predictive's only scale; here the noise is a parameter of its
        own, and the spread alone would give intervals far too narrow.
        """
        mean, spread = samples.mean(dim=0), samples.std(dim=0)
        built = self.__dict__.get("_bnn_predictive")
        if not isinstance(built, BnnNormal):
            return mean, spread
        noise = built.noise_scale().detach().to(spread)
        return mean, (spread.square() + noise.square()).sqrt()

    def log_prob_from_parameters(
        self, reference: Tensor, parameters: tuple[Tensor, Tensor]
    ) -> Tensor:
        """Elementwise log density of ``reference`` under ``N(mean, std)``.

        ``parameters`` is ``(mean, std)``, as :meth:`predictive_parameters_from_samples`
        returns them (a standard deviation, not the ``log_std`` that
        :meth:`log_prob` takes; torch_blue's dev branch's contract). torch_blue
        1.1.0's documentation asks for ``(mean, log_std)`` here instead: pass
        ``(mean, log_std.exp())``. Constants with ``use_norm_constants``.

        Raises:
            TypeError: if ``parameters`` is not a pair.
            ValueError: while validation is on, for a negative ``std`` (a
                ``log_std`` passed where the standard deviation belongs).

        Example:
            >>> import torch
            >>> from pyrolite_bnn import vi
            >>> normal = vi.distributions.MeanFieldNormal()
            >>> samples, target = torch.randn(50, 4), torch.zeros(4)
            >>> lp = normal.log_prob_from_parameters(
            ...     target, normal.predictive_parameters_from_samples(samples)
            ... )
            >>> lp.shape
            torch.Size([4])
        """
        if not (isinstance(parameters, tuple | list) and len(parameters) == 2):
            raise TypeError(
                "MeanFieldNormal.log_prob_from_parameters takes (mean, std), as "
                "predictive_parameters_from_samples returns them; got "
                f"{type(parameters).__name__}"
            )
        mean, std = parameters
        if is_validation_enabled() and not readable_all(~(std < 0)):  # NaN passes
            raise ValueError(
                "MeanFieldNormal.log_prob_from_parameters takes (mean, std), a "
                "standard deviation as predictive_parameters_from_samples returns "
                "it, but the second parameter has negative values: a log standard "
                "deviation? torch_blue 1.1.0's (mean, log_std) order is "
                "(mean, log_std.exp()) here (log_prob takes (mean, log_std))"
            )
        value = -0.5 * ((reference - mean) / std).square() - std.log()
        if norm_constants_on():
            value = value - 0.5 * math.log(2 * math.pi)
        return value

    def to_prior(self) -> BnnPrior:
        """:class:`pyrolite_bnn.NormalPrior` with this mean and std.

        Also for a subclass that keeps the prior's methods (``class
        MyNormal(MeanFieldNormal): pass``); one that overrides its density is
        wrapped as any torch_blue prior is (``Distribution.to_prior``).
        """
        if not keeps_methods(self, MeanFieldNormal, _PRIOR_METHODS):
            return super().to_prior()
        return NormalPrior(self.mean.clone(), self.std.clone())

    def to_variational(self) -> VariationalFamily:
        """:class:`pyrolite_bnn.MeanFieldNormal` (scales set by the layer's init).

        Also for a subclass that keeps the sampling and density methods; one
        that overrides them is wrapped generically
        (``Distribution.to_variational``).
        """
        if not keeps_methods(self, MeanFieldNormal, _VARIATIONAL_METHODS):
            return super().to_variational()
        return BnnMeanFieldNormal(init_scale=float(self.std), scale_transform="exp")

    def build_predictive(self) -> BnnPredictive:
        """:class:`pyrolite_bnn.Normal` with a learned noise scale.

        Also for a subclass that keeps :meth:`predictive_parameters_from_samples`
        and :meth:`log_prob_from_parameters`; one that overrides either is
        evaluated with its own methods (``Distribution.build_predictive``).
        """
        if not keeps_methods(self, MeanFieldNormal, _PREDICTIVE_METHODS):
            return super().build_predictive()
        return BnnNormal(scale=None, init_scale=float(self.std))
