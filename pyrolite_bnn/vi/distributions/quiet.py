"""``BasicQuietPrior``: torch_blue's experimental hierarchical prior."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module

from pyrolite_bnn._validation import check_finite_real, check_positive
from pyrolite_bnn.vi.distributions.base import (
    Prior,
    as_parameter_tuple,
    number_tensor,
    store_variational_tensors,
    variational_tensors,
)
from pyrolite_bnn.vi.utils.use_norm_constants import norm_constants_on

__all__ = ["BasicQuietPrior"]


class BasicQuietPrior(Prior):
    """Weights ``N(m, (r m)^2)`` around their variational mean ``m ~ N(mm, ms^2)``.

    Experimental (as in torch_blue). The density needs the variational mean of
    each weight (``_required_parameters = ("mean",)``), which the layer passes.

    Args:
        std_ratio: ``r``, ratio of each weight's std to its mean.
        mean_mean: ``mm``.
        mean_std: ``ms``.
        eps: added to the variances (positive and finite: a mean of 0, as
            Kaiming initialisation starts biases, would give a variance of 0).

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> layer = vi.VILinear(3, 2, prior=vi.distributions.BasicQuietPrior())
        >>> layer.prior_distribution("weight").event_shape
        torch.Size([2, 3])
    """

    distribution_parameters = ("mean", "log_std")
    _required_parameters = ("mean",)
    _scaling_parameters = ("mean_mean", "mean_std", "eps")

    def __init__(
        self,
        std_ratio: float = 1.0,
        mean_mean: float = 0.0,
        mean_std: float = 1.0,
        eps: float = 1e-10,
    ) -> None:
        for value, what in (
            (std_ratio, "std_ratio"),
            (mean_std, "mean_std"),
            (eps, "eps"),
        ):
            check_positive(value, f"BasicQuietPrior {what}")
        self._std_ratio = std_ratio
        self.mean_mean = number_tensor(
            check_finite_real(mean_mean, "BasicQuietPrior mean_mean")
        )
        self.mean_std = number_tensor(float(mean_std))
        self.eps = eps

    def get_parameters(self) -> tuple[Tensor, Tensor]:
        """``(mean_mean, mean_std)``."""
        return self.mean_mean, self.mean_std

    def log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        """Elementwise log density given ``(mean_mean, mean_std, mean)``."""
        mean_mean, mean_std, mean = as_parameter_tuple(*parameters)
        variance = (self._std_ratio * mean) ** 2 + self.eps
        mean_variance = mean_std**2 + self.eps
        value = -0.5 * (
            (sample - mean) ** 2 / variance
            + (mean - mean_mean) ** 2 / mean_variance
            + torch.log(variance)
            + torch.log(torch.as_tensor(mean_variance))
        )
        if norm_constants_on():
            value = value - math.log(2 * math.pi)
        result: Tensor = value
        return result

    def reset_parameters_to_prior(self, module: Module, variable: str) -> None:
        """Draw means from ``N(mm, ms^2)``, stds ``r |mean|``."""
        mean, log_std = variational_tensors(module, variable, ("mean", "log_std"))
        with torch.no_grad():
            mean.normal_(float(self.mean_mean), float(self.mean_std))
            log_std.copy_(torch.log(self._std_ratio * mean.abs()))
        store_variational_tensors(module, variable, (mean, log_std))
