"""``Categorical``: torch_blue's classification likelihood."""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor

from pyrolite_bnn._validation import check_real
from pyrolite_bnn.distributions.predictive import Categorical as BnnCategorical
from pyrolite_bnn.distributions.predictive import (
    PredictiveDistribution as BnnPredictive,
)
from pyrolite_bnn.vi.distributions.base import (
    PredictiveDistribution,
    as_parameter_tuple,
)

__all__ = ["Categorical"]


class _ProbsCategorical(BnnCategorical):
    """:class:`pyrolite_bnn.Categorical` for outputs that are probabilities."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def logits(self, output: Tensor) -> Tensor:
        """Normalised log probabilities of a probability output."""
        return torch.log(output / output.sum(-1, keepdim=True) + self.eps)

    def distribution(self, output: Tensor) -> dist.TorchDistribution:
        """``Categorical`` of the normalised probabilities."""
        return super().distribution(self.logits(output))

    def probs(self, output: Tensor) -> Tensor:
        """Class probabilities per particle."""
        return output / output.sum(-1, keepdim=True)


class Categorical(PredictiveDistribution):
    """Classification: the network outputs logits (or probabilities) ``(S, B, C)``.

    As the loss's likelihood it is :class:`pyrolite_bnn.Categorical`; the loss
    averages each particle's log-likelihood (the ELBO's data term), where
    torch_blue took the log of the particle-averaged probability.

    Args:
        input_type: ``"logits"`` (default) or ``"probs"``.
        eps: added inside logarithms of probabilities.

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> categorical = vi.distributions.Categorical()
        >>> probs = categorical.predictive_parameters_from_samples(torch.zeros(4, 2, 5))
        >>> probs.shape
        torch.Size([2, 5])
    """

    distribution_parameters = ("probs",)

    def __init__(self, input_type: str = "logits", eps: float = 1e-5) -> None:
        if input_type not in ("logits", "probs"):
            raise AssertionError("input_type must be logits or probs")
        if not (check_real(eps, "Categorical eps") >= 0 and math.isfinite(eps)):
            raise ValueError(f"Categorical eps must be >= 0, got {eps!r}")
        self.eps = eps
        self.input_type = input_type

    def predictive_parameters_from_samples(self, samples: Tensor) -> Tensor:
        """Class probabilities averaged over samples, ``(B, C)``.

        A tensor, as torch_blue's dev branch and its tutorial use it (1.1.0
        returned a one-element tuple, which broke its own tutorial).
        """
        if self.input_type == "logits":
            return F.softmax(samples, -1).mean(dim=0)
        return (samples / samples.sum(dim=-1, keepdim=True)).mean(dim=0)

    def log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        """``log(probs[label] + eps)`` for integer labels ``sample``."""
        return self.log_prob_from_parameters(sample, parameters[0])

    def log_prob_from_parameters(
        self, reference: Tensor, parameters: Any, eps: float | None = None
    ) -> Tensor:
        """``log(probs[label] + eps)`` of integer labels ``reference`` ``(B,)``.

        Args:
            reference: labels.
            parameters: class probabilities ``(B, C)`` (or a one-element tuple).
            eps: added to the probabilities (default: the object's ``eps``).
        """
        sample = reference
        probs = as_parameter_tuple(parameters)[0]
        log_pmf = torch.log(probs + (self.eps if eps is None else eps))
        value = sample.long().unsqueeze(-1)
        value = value.expand(*log_pmf.shape[:-1], 1)
        result: Tensor = log_pmf.gather(-1, value).squeeze(-1)
        return result

    def build_predictive(self) -> BnnPredictive:
        """:class:`pyrolite_bnn.Categorical` (on log probabilities for ``"probs"``)."""
        if type(self) is not Categorical:
            return super().build_predictive()
        if self.input_type == "logits":
            return BnnCategorical()
        return _ProbsCategorical(self.eps)
