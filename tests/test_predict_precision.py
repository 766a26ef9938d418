"""Summaries of half-precision network outputs are computed in float32.

A network under ``torch.autocast`` (or converted with ``net.to(torch.bfloat16)``)
returns ``bfloat16``/``float16`` samples. Every summary of a
:class:`~pyrolite_bnn.Prediction` and every summary method of a likelihood
must equal the same computation on the samples converted to ``float32``: the
mutual information of such samples came out in ``bfloat16`` with a median
relative error of 100 % and negative values.

Both sides of each comparison run the same float32 operations on the same
float32 values, so the tolerances are float32 rounding (they are met exactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import pyrolite_bnn as bnn
from pyrolite_bnn.distributions._precision import full_precision
from pyrolite_bnn.predict import Prediction

_HALF = [torch.bfloat16, torch.float16]
_EXACT = {"rtol": 1e-6, "atol": 1e-7}  # same float32 computation on both sides

# (likelihood factory, network output shape (S, B, ...)) per case.
_CASES: dict[str, tuple[Callable[[], bnn.PredictiveDistribution], tuple[int, ...]]] = {
    "categorical": (bnn.Categorical, (50, 7, 5)),
    "bernoulli": (bnn.Bernoulli, (50, 7, 1)),
    "normal": (lambda: bnn.Normal(scale=0.5), (50, 7, 1)),
    "heteroscedastic": (bnn.HeteroscedasticNormal, (50, 7, 2)),
    "student_t": (lambda: bnn.StudentT(df=4.0, scale=0.5), (50, 7)),
    "poisson": (bnn.Poisson, (50, 7)),
    "temperature": (
        lambda: bnn.TemperatureScaling(1.7).wrap(bnn.Categorical()),
        (50, 7, 5),
    ),
    "variance": (
        lambda: bnn.VarianceScaling(1.3).wrap(bnn.Normal(scale=0.5)),
        (50, 7, 1),
    ),
}
_GAUSSIAN = {"normal", "heteroscedastic", "variance"}  # mixtures with quantiles


def _summaries(pred: Prediction, gaussian: bool) -> dict[str, Tensor]:
    """Every summary ``pred`` offers, by name."""
    if pred.is_classification:
        return {
            "probs": pred.probs,
            "mean": pred.mean,
            "entropy": pred.entropy,
            "aleatoric": pred.aleatoric,
            "mutual_information": pred.mutual_information,
        }
    out = {
        "mean": pred.mean,
        "aleatoric_var": pred.aleatoric_var,
        "epistemic_var": pred.epistemic_var,
        "variance": pred.variance,
        "stddev": pred.stddev,
    }
    if gaussian:
        lower, upper = pred.interval(0.9)
        out.update(lower=lower, upper=upper, quantile=pred.quantile(0.3))
    return out


@pytest.mark.parametrize("dtype", _HALF, ids=str)
@pytest.mark.parametrize("case", list(_CASES))
def test_half_precision_samples_are_summarised_in_float32(
    case: str, dtype: torch.dtype
) -> None:
    make, shape = _CASES[case]
    likelihood = make()
    samples = (torch.randn(shape) * 2).to(dtype)
    pred = Prediction(samples, likelihood)
    reference = Prediction(samples.float(), likelihood)
    assert pred.samples.dtype == dtype  # the samples keep the network's dtype
    got = _summaries(pred, case in _GAUSSIAN)
    expected = _summaries(reference, case in _GAUSSIAN)
    for name, value in got.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, expected[name], **_EXACT, msg=name)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("case", list(_CASES))
def test_integer_samples_are_summarised_as_floats(
    case: str, dtype: torch.dtype
) -> None:
    """Integer outputs (a count model's rounded draws): intervals were cast
    back to integers (truncated towards 0) or the mean failed in torch."""
    make, shape = _CASES[case]
    likelihood = make()
    samples = (torch.randn(shape) * 3).to(dtype)
    got = _summaries(Prediction(samples, likelihood), case in _GAUSSIAN)
    expected = _summaries(Prediction(samples.float(), likelihood), case in _GAUSSIAN)
    for name, value in got.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, expected[name], **_EXACT, msg=name)


@pytest.mark.parametrize("dtype", _HALF, ids=str)
@pytest.mark.parametrize("case", list(_CASES))
def test_likelihood_summaries_of_half_precision_outputs_are_float32(
    case: str, dtype: torch.dtype
) -> None:
    """The likelihood's own summary methods, called directly (metrics do)."""
    make, shape = _CASES[case]
    likelihood = make()
    output = (torch.randn(shape) * 2).to(dtype)
    full = output.float()
    results: dict[str, tuple[Tensor, Tensor]] = {
        "predictive_mean": (
            likelihood.predictive_mean(output),
            likelihood.predictive_mean(full),
        )
    }
    if likelihood.is_classification:
        results["class_probs"] = (
            likelihood.class_probs(output),
            likelihood.class_probs(full),
        )
        target = torch.randint(0, 2, shape[1:2])
    else:
        loc, var = likelihood.moments(output)
        loc_full, var_full = likelihood.moments(full)
        results.update(loc=(loc, loc_full), var=(var, var_full))
        target = torch.randint(0, 4, shape[1:2]).float()
    if case in _GAUSSIAN:
        results["quantile"] = (
            likelihood.quantile(output, 0.8),
            likelihood.quantile(full, 0.8),
        )
    results["mixture_log_likelihood"] = (
        likelihood.mixture_log_likelihood(output, target),
        likelihood.mixture_log_likelihood(full, target),
    )
    for name, (value, expected) in results.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, expected, **_EXACT, msg=name)


def test_poisson_summaries_of_a_rate_beyond_float32() -> None:
    """One particle at log rate 5, one at 89 (a rate of 4.5e38, beyond
    float32): the mixture's mean, (e^5 + e^89) / 2 = 2.2e38, is representable
    but came out inf, and the variances NaN (inf - inf). From float64 rates,
    as the quantile already was, rounded at the end: the mean and the
    aleatoric variance within float32 rounding of the exact values, the
    epistemic and total variance inf (beyond float32), none NaN. A log rate
    of 800 is beyond float64 too: inf throughout."""
    pred = Prediction(torch.tensor([[[5.0]], [[89.0]]]), bnn.Poisson())
    mean = (math.exp(5.0) + math.exp(89.0)) / 2
    for summary in (pred.mean, pred.aleatoric_var):
        assert summary.dtype == torch.float32
        torch.testing.assert_close(summary, torch.tensor([mean]), rtol=1e-6, atol=0)
    for summary in (pred.epistemic_var, pred.variance, pred.stddev):
        assert summary.dtype == torch.float32
        assert summary.tolist() == [math.inf]
    wide = Prediction(
        torch.tensor([[[5.0]], [[89.0]]], dtype=torch.float64), bnn.Poisson()
    )
    spread = ((math.exp(89.0) - math.exp(5.0)) / 2) ** 2
    torch.testing.assert_close(
        wide.variance, torch.tensor([mean + spread], dtype=torch.float64)
    )
    beyond = Prediction(torch.tensor([[[5.0]], [[800.0]]]), bnn.Poisson())
    for summary in (beyond.mean, beyond.aleatoric_var, beyond.epistemic_var):
        assert summary.tolist() == [math.inf]


def test_float64_summaries_stay_float64() -> None:
    """The rule is "at least float32": wider samples are not narrowed."""
    samples = torch.randn(20, 3, 4, dtype=torch.float64)
    pred = Prediction(samples, bnn.Categorical())
    assert pred.mutual_information.dtype == torch.float64
    gaussian = Prediction(samples[..., :1], bnn.Normal(scale=0.5))
    assert gaussian.quantile(0.3).dtype == torch.float64
    assert full_precision(samples) is samples


def _small_net() -> bnn.VISequential:
    # Its default initial posterior is narrow: the mutual information is about
    # 1e-6 nats, far below bfloat16's resolution of an entropy near log(5).
    torch.manual_seed(0)
    return bnn.VISequential(bnn.VILinear(3, 8), torch.nn.ReLU(), bnn.VILinear(8, 5))


def _check_against_float32(pred: Prediction, dtype: torch.dtype) -> None:
    """``pred``'s summaries are those of its samples read as float32."""
    assert pred.samples.dtype == dtype
    reference = Prediction(pred.samples.float(), pred.predictive)
    mi = pred.mutual_information
    assert mi.dtype == torch.float32
    torch.testing.assert_close(mi, reference.mutual_information, **_EXACT)
    torch.testing.assert_close(pred.entropy, reference.entropy, **_EXACT)
    torch.testing.assert_close(pred.probs, reference.probs, **_EXACT)
    # Jensen: the entropy of the mean is at least the mean entropy. In float32
    # these MI values (~1e-6) are positive for this seed; in bfloat16 they were
    # as low as -7.8e-3.
    assert bool((mi >= 0).all()), float(mi.min())
    torch.testing.assert_close(pred.entropy, pred.aleatoric + mi, **_EXACT)


@pytest.mark.parametrize("dtype", _HALF, ids=str)
def test_predict_under_autocast_summarises_in_float32(dtype: torch.dtype) -> None:
    net = _small_net()
    x = torch.randn(200, 3)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=dtype):
        pred = bnn.predict(net, x, bnn.Categorical(), samples=50)
        inside = pred.mutual_information  # read in the autocast region too
    _check_against_float32(pred, dtype)
    torch.testing.assert_close(inside, pred.mutual_information, **_EXACT)


@pytest.mark.parametrize("dtype", _HALF, ids=str)
def test_predict_of_a_half_precision_network_summarises_in_float32(
    dtype: torch.dtype,
) -> None:
    net = _small_net().to(dtype)
    x = torch.randn(200, 3, dtype=dtype)
    pred = bnn.predict(net, x, bnn.Categorical(), samples=50)
    _check_against_float32(pred, dtype)


def test_bernoulli_keeps_the_small_class_probability_of_confident_logits() -> None:
    """P(y=0) at logit 20 is 2.06e-9, not 1 - sigmoid(20) = 0 in float32."""
    logits = torch.tensor([16.0, 20.0, 40.0, -20.0]).reshape(1, 4, 1)
    probs = bnn.Bernoulli().class_probs(logits)
    exact = torch.sigmoid(-logits.double()).squeeze(-1)
    assert torch.allclose(probs[..., 0].double(), exact, rtol=1e-6, atol=0)
    assert torch.allclose(probs[..., 1].double(), 1 - exact, rtol=1e-6, atol=0)
    prediction = Prediction(logits, bnn.Bernoulli())
    nll = bnn.metrics.nll(prediction.probs, torch.zeros(4, dtype=torch.long))
    expected = -torch.log(exact).mean()
    assert torch.allclose(nll.double(), expected, rtol=1e-5)
    assert (prediction.entropy > 0).all()
