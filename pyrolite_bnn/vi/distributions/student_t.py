"""``MeanFieldStudentT``: torch_blue's Student-t variational distribution."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pyrolite_bnn._validation import check_finite_real, check_positive
from pyrolite_bnn.vi.distributions.base import (
    VariationalDistribution,
    as_parameter_tuple,
    number_tensor,
)
from pyrolite_bnn.vi.utils.use_norm_constants import norm_constants_on

__all__ = ["MeanFieldStudentT"]


class MeanFieldStudentT(VariationalDistribution):
    """Independent Student-t posteriors with learned ``mean`` and ``log_scale``.

    Wrapped generically (draws of whole weight tensors, Monte-Carlo KL); unlike
    torch_blue it works in every layer (torch_blue's crashed inside ``vmap``).

    Args:
        mean: default mean.
        scale: default scale (before Kaiming scaling).
        degrees_of_freedom: fixed degrees of freedom.
        device: device of ``degrees_of_freedom`` (the CPU by default, whatever
            ``torch.device`` context is active: a number of the distribution,
            see :func:`~pyrolite_bnn.vi.distributions.base.number_tensor`).

    Example:
        >>> from pyrolite_bnn import vi
        >>> student_t = vi.distributions.StudentT()
        >>> layer = vi.VILinear(3, 2, variational_distribution=student_t)
        >>> type(layer.posterior["weight"]).__name__
        'AdaptedPosterior'
    """

    distribution_parameters = ("mean", "log_scale")

    def __init__(
        self,
        mean: float = 0.0,
        scale: float = 1.0,
        degrees_of_freedom: float = 4.0,
        device: torch.device | str | None = None,
    ) -> None:
        scale = check_positive(scale, "MeanFieldStudentT scale")
        degrees_of_freedom = check_positive(
            degrees_of_freedom, "MeanFieldStudentT degrees_of_freedom"
        )
        self.mean = check_finite_real(mean, "MeanFieldStudentT mean")
        self.log_scale = math.log(scale)
        self.degrees_of_freedom = number_tensor(degrees_of_freedom, device)

    @property
    def _default_variational_parameters(self) -> tuple[float, float]:
        return self.mean, self.log_scale

    def log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        """Elementwise Student-t log density (constants with ``use_norm_constants``)."""
        mean, log_scale = as_parameter_tuple(*parameters)
        df = self.degrees_of_freedom.to(sample)
        scale = torch.exp(log_scale)
        value = -(df + 1.0) * 0.5 * torch.log1p(((sample - mean) / scale) ** 2 / df)
        value = value - log_scale
        if norm_constants_on():
            value = value - (
                0.5 * torch.log(math.pi * df)
                + torch.lgamma(df / 2.0)
                - torch.lgamma((df + 1.0) / 2.0)
            )
        result: Tensor = value
        return result

    def sample(self, *parameters: Any) -> Tensor:
        """``mean + exp(log_scale) * t_df`` (differentiable in mean and scale)."""
        mean, log_scale = as_parameter_tuple(*parameters)
        return self._student_t_sample(mean, torch.exp(log_scale))

    def _student_t_sample(self, mean: Tensor, scale: Tensor) -> Tensor:
        """``mean + scale * t_df`` (torch_blue's helper)."""
        df = self.degrees_of_freedom.to(mean)
        base = torch.distributions.StudentT(df).sample(mean.shape)
        draw: Tensor = mean + scale * base
        return draw
