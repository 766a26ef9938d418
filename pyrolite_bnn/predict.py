"""Posterior predictive summaries: ``predict(model, x, predictive)`` -> ``Prediction``.

Classification (:class:`~pyrolite_bnn.Categorical`, :class:`~pyrolite_bnn.Bernoulli`):
the predictive probabilities are the particle average of the per-particle class
probabilities; the total uncertainty (entropy of the average) splits into the
*aleatoric* part (average entropy) and the *epistemic* part (mutual information
between the label and the weights):
``entropy == aleatoric + mutual_information``.

Regression (:class:`~pyrolite_bnn.Normal`,
:class:`~pyrolite_bnn.HeteroscedasticNormal`): the predictive distribution is
the mixture over particles of ``N(mu_s, sigma_s^2)``; by the law of total
variance ``variance == aleatoric_var + epistemic_var`` with
``aleatoric_var = mean_s sigma_s^2`` and ``epistemic_var = var_s mu_s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pyro import poutine
from torch import Tensor

from pyrolite_bnn._pyro_module import local_params
from pyrolite_bnn.distributions.predictive import (
    Bernoulli,
    Categorical,
    HeteroscedasticNormal,
    Normal,
    PredictiveDistribution,
)
from pyrolite_bnn.module import VIModule, whole_network_draws

__all__ = ["Prediction", "predict"]

_BISECTION_STEPS = 60


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()).sum(-1)


@dataclass
class Prediction:
    """Posterior predictive summary of a batch of inputs.

    Attributes:
        samples: raw network outputs per particle, ``(S, B, ...)``.
        predictive: the likelihood used to interpret them.
    """

    samples: Tensor
    predictive: PredictiveDistribution

    # ------------------------------------------------------------ classification
    @property
    def is_classification(self) -> bool:
        """Whether the likelihood is a classification likelihood."""
        return isinstance(self.predictive, (Categorical, Bernoulli))

    def _class_probs(self) -> Tensor:
        """Per-particle class probabilities ``(S, B, ..., C)``."""
        if isinstance(self.predictive, Categorical):
            return self.samples.softmax(-1)
        if isinstance(self.predictive, Bernoulli):
            out = self.samples
            if out.dim() == 3 and out.shape[-1] == 1:
                out = out.squeeze(-1)
            p1 = torch.sigmoid(out)
            return torch.stack([1 - p1, p1], dim=-1)
        raise AttributeError(
            f"class probabilities need a classification likelihood, not "
            f"{type(self.predictive).__name__}"
        )

    @property
    def probs(self) -> Tensor:
        """Predictive class probabilities ``(B, ..., C)`` (mean over particles)."""
        return self._class_probs().mean(0)

    @property
    def entropy(self) -> Tensor:
        """Total predictive uncertainty: entropy of :attr:`probs` (nats)."""
        return _entropy(self.probs)

    @property
    def aleatoric(self) -> Tensor:
        """Expected entropy over particles (data uncertainty)."""
        return _entropy(self._class_probs()).mean(0)

    @property
    def mutual_information(self) -> Tensor:
        """Epistemic uncertainty: ``entropy - aleatoric`` (>= 0 up to rounding)."""
        return self.entropy - self.aleatoric

    # ---------------------------------------------------------------- regression
    def _moments(self) -> tuple[Tensor, Tensor]:
        moments = getattr(self.predictive, "moments", None)
        if moments is None:
            raise AttributeError(
                f"regression summaries need a regression likelihood, not "
                f"{type(self.predictive).__name__}"
            )
        with torch.no_grad():  # summaries, not training: no graph to a noise scale
            loc, var = moments(self.samples)
        return loc, var

    @property
    def mean(self) -> Tensor:
        """Predictive mean ``(B, ...)``; for classification, :attr:`probs`."""
        if self.is_classification:
            return self.probs
        return self._moments()[0].mean(0)

    @property
    def aleatoric_var(self) -> Tensor:
        """Noise variance averaged over particles."""
        return self._moments()[1].mean(0)

    @property
    def epistemic_var(self) -> Tensor:
        """Variance of the particle means (model uncertainty)."""
        return self._moments()[0].var(0, unbiased=False)

    @property
    def variance(self) -> Tensor:
        """Total predictive variance, ``aleatoric_var + epistemic_var``."""
        return self.aleatoric_var + self.epistemic_var

    @property
    def stddev(self) -> Tensor:
        """Total predictive standard deviation."""
        return self.variance.sqrt()

    def interval(self, level: float = 0.95) -> tuple[Tensor, Tensor]:
        """Central ``level`` predictive interval of the Gaussian mixture.

        The bounds are the exact ``(1 - level) / 2`` and ``(1 + level) / 2``
        quantiles of the particle mixture, found by bisection.

        Args:
            level: coverage in ``(0, 1)``.

        Returns:
            ``(lower, upper)``, each ``(B, ...)``.
        """
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        return self.quantile((1 - level) / 2), self.quantile((1 + level) / 2)

    def quantile(self, q: float) -> Tensor:
        """Quantile ``q`` of the predictive Gaussian mixture, ``(B, ...)``.

        Raises:
            NotImplementedError: for non-Gaussian likelihoods (``StudentT``,
                ``Poisson``), whose mixtures are not Gaussian mixtures.
        """
        if not isinstance(self.predictive, (Normal, HeteroscedasticNormal)):
            raise NotImplementedError(
                "predictive intervals are implemented for the Gaussian likelihoods "
                f"(Normal, HeteroscedasticNormal), not {type(self.predictive).__name__}"
            )
        loc, var = self._moments()
        scale = var.sqrt()
        lo = (loc - 10 * scale).min(0).values
        hi = (loc + 10 * scale).max(0).values
        for _ in range(_BISECTION_STEPS):
            mid = (lo + hi) / 2
            z = (mid.unsqueeze(0) - loc) / (scale * math.sqrt(2.0))
            below = (0.5 * (1 + torch.erf(z))).mean(0) < q
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return (lo + hi) / 2


def predict(
    model: VIModule,
    x: Tensor,
    predictive: PredictiveDistribution,
    samples: int = 100,
    batch_size: int | None = None,
    mode: Literal["sample", "mean"] = "sample",
) -> Prediction:
    """Posterior predictive of ``model`` at inputs ``x``.

    Runs without gradients, in chunks of ``batch_size`` inputs (all at once by
    default), so only one chunk's activations for all particles are in memory.
    Each particle is one complete network (weights drawn, whatever the layers'
    training estimator), so particle ``s`` is a coherent function of the input.

    Args:
        model: the trained network.
        x: inputs ``(N, ...)``.
        predictive: the likelihood the model was trained with.
        samples: number of posterior draws ``S``.
        batch_size: inputs per chunk.
        mode: ``"sample"`` draws weights from the guide; ``"mean"`` sets every
            weight to its posterior median/mean (one deterministic particle).

    Returns:
        A :class:`Prediction`.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> net = bnn.VILinear(3, 4)
        >>> pred = bnn.predict(net, torch.randn(5, 3), bnn.Categorical(), samples=20)
        >>> pred.probs.shape, pred.mutual_information.shape
        (torch.Size([5, 4]), torch.Size([5]))
    """
    if not isinstance(model, VIModule):
        raise TypeError(f"predict needs a bnn.VIModule, got {type(model).__name__}")
    if mode not in ("sample", "mean"):
        raise ValueError(f"mode must be 'sample' or 'mean', got {mode!r}")
    size = x.shape[0]
    step = size if batch_size is None else batch_size
    if step < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    chunks = [
        _predict_chunk(model, x[i : i + step], samples, mode)
        for i in range(0, size, step)
    ]
    return Prediction(torch.cat(chunks, dim=1), predictive)


@torch.no_grad()
def _predict_chunk(model: VIModule, x: Tensor, samples: int, mode: str) -> Tensor:
    return _forward(model, x, samples, mode)


def _forward(model: VIModule, x: Tensor, samples: int, mode: str) -> Tensor:
    with local_params():
        if mode == "mean":
            weights = model.guide.median()
            conditioned: Any = poutine.condition(model, data=weights)
            with poutine.trace():  # a handler makes the network a plain Pyro model
                out = conditioned(x, samples=1)
            return out  # type: ignore[no-any-return]
        with whole_network_draws():
            return model(x, samples=samples)  # type: ignore[no-any-return]
