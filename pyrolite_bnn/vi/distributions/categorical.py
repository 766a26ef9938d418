"""``Categorical``: torch_blue's classification likelihood."""

from __future__ import annotations

from typing import Any, Literal, get_args

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import Tensor

from pyrolite_bnn._overrides import keeps_methods
from pyrolite_bnn._validation import (
    check_non_negative,
    check_temperature,
    is_validation_enabled,
)
from pyrolite_bnn.distributions._precision import full_precision
from pyrolite_bnn.distributions.predictive import Categorical as BnnCategorical
from pyrolite_bnn.distributions.predictive import (
    PredictiveDistribution as BnnPredictive,
)
from pyrolite_bnn.vi.distributions.base import (
    PredictiveDistribution,
    as_parameter_tuple,
)

__all__ = ["Categorical"]

# What the native likelihood stands for: a subclass that overrides neither
# computes as Categorical does and gets it.
_PREDICTIVE_METHODS = ("predictive_parameters_from_samples", "log_prob_from_parameters")

# torch_blue's ``input_type=``: the network outputs logits or probabilities.
InputType = Literal["logits", "probs"]


class _EpsCategorical(dist.Categorical):
    """``Categorical(probs)`` whose ``log_prob`` is torch_blue's ``log(p[y] + eps)``.

    ``p`` is normalised (``probs / sum(probs)``) and draws are from it; the
    density is not renormalised after adding ``eps`` (its sum over the ``C``
    classes is ``1 + C * eps``), as torch_blue's loss has it.
    """

    def __init__(
        self, probs: Tensor, eps: float, validate_args: bool | None = None
    ) -> None:
        self.eps = eps
        super().__init__(probs=probs, validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> _EpsCategorical:
        """As ``Categorical.expand``, keeping ``eps``."""
        new = self._get_checked_instance(_EpsCategorical, _instance)  # type: ignore[no-untyped-call]
        new.eps = self.eps
        result: _EpsCategorical = super().expand(batch_shape, _instance=new)  # type: ignore[no-untyped-call]
        return result

    def log_prob(self, value: Tensor) -> Tensor:
        """``log(p[value] + eps)``."""
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape, self.probs.shape[:-1])  # type: ignore[no-untyped-call]
        index = value.long().expand(shape).unsqueeze(-1)
        picked = self.probs.expand(*shape, -1).gather(-1, index).squeeze(-1)
        return torch.log(picked + self.eps)


class _ProbsCategorical(BnnCategorical):
    """:class:`pyrolite_bnn.Categorical` for outputs that are probabilities.

    The log-likelihood is torch_blue's ``log(p[y] / sum(p) + eps)``, not
    renormalised after adding ``eps`` (the loss, ``log_prob_from_samples``
    and the held-out NLL of ``predict`` and calibration); the class
    probabilities of the summaries and of draws of ``y`` are ``p / sum(p)``,
    and temperature scaling tempers them, ``p^(1/T)`` normalised.
    """

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def extra_repr(self) -> str:
        """The input type and ``eps``."""
        return f"input_type='probs', eps={self.eps:g}"

    def check_probabilities(self, output: Tensor) -> None:
        """Refuse outputs outside ``[0, 1]``: logits, not probabilities.

        A network without its final ``nn.Softmax`` gave negative
        "probabilities", whose logarithm made the loss NaN with no word of the
        cause. NaN outputs pass, to be reported as non-finite.

        Raises:
            ValueError: naming the range and the two ways out.
        """
        if not output.numel() or output.is_meta:
            return
        if bool(((output < 0) | (output > 1)).any()):  # False for NaN
            values = output.detach()[~output.isnan()]
            low, high = float(values.min()), float(values.max())
            raise ValueError(
                "Categorical(input_type='probs') reads probabilities, but the "
                f"network outputs values outside [0, 1] (range [{low:.3g}, "
                f"{high:.3g}]): logits? End the network in nn.Softmax(-1), or "
                "use Categorical(input_type='logits') (the default)"
            )

    def check_output(self, output: Tensor) -> None:
        """``Categorical``'s shape check; while validation is on, values in ``[0, 1]``.

        Every method that reads an output calls it (the loss, ``predict``'s
        :class:`~pyrolite_bnn.Prediction`, the summaries).
        """
        super().check_output(output)
        if is_validation_enabled():
            self.check_probabilities(output)

    def distribution(self, output: Tensor) -> TorchDistributionMixin:
        """``Categorical`` of the normalised probabilities, torch_blue's density.

        ``log_prob`` is ``log(p[y] / sum(p) + eps)`` (torch_blue's), draws are
        from ``p / sum(p)``. Built here, not by ``Categorical.distribution``,
        which reads logits.

        Example:
            >>> import torch
            >>> from pyrolite_bnn import vi
            >>> likelihood = vi.distributions.Categorical(input_type="probs", eps=0.1)
            >>> p = torch.tensor([[[0.2, 0.8]]])
            >>> likelihood.to_predictive().distribution(p).log_prob(torch.tensor(0))
            tensor([[-1.2040]])
        """
        self.check_output(output)
        likelihood = _EpsCategorical(output, self.eps)
        result: TorchDistributionMixin = likelihood.to_event(  # type: ignore[no-untyped-call]
            output.dim() - 3
        )
        return result

    def probs(self, output: Tensor) -> Tensor:
        """Class probabilities per particle."""
        return output / output.sum(-1, keepdim=True)

    def class_probs(self, output: Tensor) -> Tensor:
        """The output's probabilities, normalised, at least ``float32``.

        Example:
            >>> import torch
            >>> from pyrolite_bnn import vi
            >>> likelihood = vi.distributions.Categorical(input_type="probs")
            >>> likelihood.to_predictive().class_probs(torch.tensor([[[0.2, 0.8]]]))
            tensor([[[0.2000, 0.8000]]])
        """
        self.check_output(output)
        return self.probs(full_precision(output))

    def tempered(self, output: Tensor, temperature: Tensor | float) -> Tensor:
        """Probabilities ``p^(1/T)`` normalised: ``softmax(log(p) / T)``.

        Example:
            >>> import torch
            >>> from pyrolite_bnn import vi
            >>> likelihood = vi.distributions.Categorical(input_type="probs")
            >>> likelihood.to_predictive().tempered(
            ...     torch.tensor([0.2, 0.8]), torch.tensor(0.5)
            ... )
            tensor([0.0588, 0.9412])
        """
        scaled = self.probs(output).log() / check_temperature(temperature, output)
        return scaled.softmax(-1)


class Categorical(PredictiveDistribution):
    """Classification: the network outputs logits (or probabilities) ``(S, B, C)``.

    As the loss's likelihood it is :class:`pyrolite_bnn.Categorical`; the loss
    averages each particle's log-likelihood (the ELBO's data term), where
    torch_blue took the log of the particle-averaged probability.

    Args:
        input_type: ``"logits"`` (default) or ``"probs"``.
        eps: added inside logarithms of probabilities (finite, ``>= 0``).

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> categorical = vi.distributions.Categorical()
        >>> probs = categorical.predictive_parameters_from_samples(torch.zeros(4, 2, 5))
        >>> probs.shape
        torch.Size([2, 5])
    """

    distribution_parameters = ("probs",)

    def __init__(self, input_type: InputType = "logits", eps: float = 1e-5) -> None:
        if input_type not in get_args(InputType):
            raise AssertionError("input_type must be logits or probs")
        self.eps = check_non_negative(eps, "Categorical eps")
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
        """:class:`pyrolite_bnn.Categorical` (on log probabilities for ``"probs"``).

        Also for a subclass that keeps :meth:`predictive_parameters_from_samples`
        and :meth:`log_prob_from_parameters`; one that overrides either is
        evaluated with its own methods (``Distribution.build_predictive``).
        """
        if not keeps_methods(self, Categorical, _PREDICTIVE_METHODS):
            return super().build_predictive()
        if self.input_type == "logits":
            return BnnCategorical()
        return _ProbsCategorical(self.eps)
