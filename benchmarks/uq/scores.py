"""Metrics of the uncertainty benchmark, on per-particle Gaussian moments.

Every regression method hands back ``mu`` and ``var`` of shape ``(S, N)``: the
predictive mean and noise variance of each of its ``S`` members (weight draws,
dropout masks or ensemble members). The predictive is their equal-weight mixture.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyrolite_bnn import metrics

Z95 = 1.959963984540054


def mixture_log_likelihood(mu: Tensor, var: Tensor, y: Tensor) -> Tensor:
    """Mean over points of ``log 1/S sum_s N(y; mu_s, var_s)`` (nats per point)."""
    log_p = -0.5 * (torch.log(2 * math.pi * var) + (y - mu) ** 2 / var)
    return (torch.logsumexp(log_p, 0) - math.log(mu.shape[0])).mean()


def epistemic_std(mu: Tensor) -> Tensor:
    """Per-point std of the member means ``(N,)`` (law of total variance)."""
    return mu.var(0, unbiased=False).sqrt()


def total_moments(mu: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Mixture mean and variance ``(N,)`` each."""
    return mu.mean(0), var.mean(0) + mu.var(0, unbiased=False)


def coverage95(mu: Tensor, var: Tensor, y: Tensor) -> float:
    """Coverage of the moment-matched Gaussian 95 % interval."""
    mean, total = total_moments(mu, var)
    half = Z95 * total.sqrt()
    return float(metrics.interval_coverage(mean - half, mean + half, y))


def rmse(mu: Tensor, y: Tensor) -> float:
    """RMSE of the mixture mean."""
    return float(metrics.rmse(mu.mean(0), y))


def std_ratios(mu_data: Tensor, mu_gap: Tensor, mu_beyond: Tensor) -> dict[str, float]:
    """Mean epistemic std in the gap and beyond the data, relative to the data's."""
    data = float(epistemic_std(mu_data).mean())
    return {
        "epi_data": data,
        "gap_ratio": float(epistemic_std(mu_gap).mean()) / data,
        "beyond_ratio": float(epistemic_std(mu_beyond).mean()) / data,
    }


def classification_scores(
    probs: Tensor, labels: Tensor, probs_out: dict[str, Tensor]
) -> dict[str, float]:
    """Accuracy, NLL, ECE of the mean probabilities ``probs (S, N, C)``, and AUROCs.

    AUROC of the predictive entropy (total uncertainty) and of the mutual information
    between in-distribution test images and each out-of-distribution set.
    """
    mean = probs.mean(0)
    result = {
        "accuracy": float(metrics.accuracy(mean, labels)),
        "nll": float(metrics.nll(mean, labels)),
        "ece": float(metrics.expected_calibration_error(mean, labels)),
    }
    ent_in, mi_in = _entropy_mi(probs)
    for name, out in probs_out.items():
        ent_out, mi_out = _entropy_mi(out)
        result[f"auroc_{name}"] = float(metrics.auroc(ent_in, ent_out))
        result[f"auroc_mi_{name}"] = float(metrics.auroc(mi_in, mi_out))
    return result


def _entropy_mi(probs: Tensor) -> tuple[Tensor, Tensor]:
    def entropy(p: Tensor) -> Tensor:
        return -(p * p.clamp_min(1e-12).log()).sum(-1)

    total = entropy(probs.mean(0))
    return total, total - entropy(probs).mean(0)
