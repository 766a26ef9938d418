"""A Poisson distribution that keeps the log rate it was built from."""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions.utils import broadcast_all


class LogRatePoisson(dist.Poisson):
    """``Poisson(exp(log_rate))`` whose density is taken from ``log_rate``.

    ``log p(y) = y * log_rate - exp(log_rate) - lgamma(y + 1)``: the parent
    class takes ``log(rate)`` again, which is ``-inf`` once ``exp`` underflows
    (a log rate below about -104 in float32, where the true log density is
    finite) and gives ``inf`` gradients well before that.

    Example:
        >>> import torch
        >>> d = LogRatePoisson(torch.tensor([-110.0, 0.0]))
        >>> d.log_prob(torch.tensor([3.0, 0.0]))
        tensor([-331.7917,   -1.0000])
    """

    def __init__(self, log_rate: Tensor, *, validate_args: bool | None = None) -> None:
        self.log_rate = log_rate
        super().__init__(log_rate.exp(), validate_args=validate_args)  # type: ignore[no-untyped-call]

    def expand(self, batch_shape: Any, _instance: Any = None) -> LogRatePoisson:
        """Expand the log rate with the rate."""
        new = self._get_checked_instance(LogRatePoisson, _instance)  # type: ignore[no-untyped-call]
        new.log_rate = self.log_rate.expand(torch.Size(batch_shape))
        result: LogRatePoisson = super().expand(batch_shape, _instance=new)  # type: ignore[no-untyped-call]
        return result

    def log_prob(self, value: Tensor) -> Tensor:
        """``value * log_rate - rate - lgamma(value + 1)``."""
        if self._validate_args:
            self._validate_sample(value)
        log_rate, value = broadcast_all(self.log_rate, value)
        return value * log_rate - log_rate.exp() - torch.lgamma(value + 1)
