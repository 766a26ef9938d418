from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
import torch
from swap_flag import swap_flag
from torch import Tensor

import pyrolite_bnn as bnn
from pyrolite_bnn.distributions._scoring import scored_positions
from pyrolite_bnn.distributions.mixture_quantiles import (
    gaussian_mixture_quantile,
    poisson_mixture_quantile,
    student_t_mixture_quantile,
)


def test_categorical_log_prob() -> None:
    logits = torch.randn(4, 3, 5)
    y = torch.tensor([0, 4, 2])
    d, target = bnn.Categorical().observe(logits, y)
    expected = torch.log_softmax(logits, -1)[:, torch.arange(3), y]
    torch.testing.assert_close(d.log_prob(target), expected)


@pytest.mark.parametrize(
    ("out_shape", "y_shape"),
    [((4, 3), (3,)), ((4, 3, 1), (3,)), ((4, 3), (3, 1)), ((4, 3, 1), (3, 1))],
)
def test_normal_scalar_target_layouts(
    out_shape: tuple[int, ...], y_shape: tuple[int, ...]
) -> None:
    out, y = torch.randn(*out_shape), torch.randn(*y_shape)
    d, target = bnn.Normal(scale=0.5).observe(out, y)
    assert d.batch_shape == (4, 3)
    expected = torch.distributions.Normal(out.reshape(4, 3), 0.5).log_prob(y.reshape(3))
    torch.testing.assert_close(d.log_prob(target), expected)


def test_normal_multi_output() -> None:
    out, y = torch.randn(4, 3, 2), torch.randn(3, 2)
    d, target = bnn.Normal(scale=1.0).observe(out, y)
    assert d.batch_shape == (4, 3)
    assert d.event_shape == (2,)
    torch.testing.assert_close(
        d.log_prob(target), torch.distributions.Normal(out, 1.0).log_prob(y).sum(-1)
    )


def test_learned_noise_scale_is_a_parameter() -> None:
    likelihood = bnn.Normal(init_scale=0.3)
    (param,) = likelihood.parameters()
    torch.testing.assert_close(likelihood.noise_scale().detach(), torch.tensor(0.3))
    loss_fn = bnn.KullbackLeiblerLoss(likelihood, 10)
    assert [p is param for p in loss_fn.parameters()] == [True]


@pytest.mark.parametrize(
    ("make", "scale"),
    [
        (lambda: bnn.Normal(), 1.0),
        (lambda: bnn.Normal(init_scale=0.3), 0.3),
        (lambda: bnn.Normal(scale=0.2), 0.2),
        (lambda: bnn.StudentT(4.0, init_scale=0.7), 0.7),
        (lambda: bnn.StudentT(3.0, scale=0.5), 0.5),
    ],
)
def test_scale_likelihoods_build_on_the_meta_device_and_reset(
    make: Any, scale: float
) -> None:
    """``bnn.Normal()`` (and a loss holding it) could not be built under
    ``torch.device("meta")``: the start of the learned scale was read with
    ``float()`` of a meta tensor. After ``to_empty`` (uninitialised memory)
    ``reset_parameters`` returns the scale (and ``df``) to the built values."""
    with torch.device("meta"):
        likelihood = make()
        loss_fn = bnn.KullbackLeiblerLoss(make(), dataset_size=10)
    assert {t.device.type for t in likelihood.state_dict().values()} == {"meta"}
    reference = make()
    for module in (likelihood, loss_fn):
        module.to_empty(device="cpu")
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                t.fill_(float("nan"))
        for inner in module.modules():
            if callable(getattr(inner, "reset_parameters", None)):
                inner.reset_parameters()
    for module in (likelihood, loss_fn.predictive):
        got, want = module.state_dict(), reference.state_dict()
        assert got.keys() == want.keys()
        for key, value in want.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
        torch.testing.assert_close(module.noise_scale(), torch.tensor(scale))
    if likelihood.learned:  # at its start again: the unscaled-targets check runs
        assert likelihood.untrained_parameters() == ["raw_scale"]


def test_heteroscedastic() -> None:
    out = torch.randn(4, 3, 2)
    y = torch.randn(3)
    d, target = bnn.HeteroscedasticNormal().observe(out, y)
    scale = torch.nn.functional.softplus(out[..., 1]) + 1e-6
    torch.testing.assert_close(
        d.log_prob(target), torch.distributions.Normal(out[..., 0], scale).log_prob(y)
    )
    with pytest.raises(ValueError, match=r"expects output \(S, B, \.\.\., 2\)"):
        bnn.HeteroscedasticNormal()(torch.randn(4, 3, 3))


def test_heteroscedastic_min_scale_is_a_finite_number() -> None:
    """Numpy numbers count as numbers; ``True`` and strings do not."""
    assert bnn.HeteroscedasticNormal(min_scale=0).min_scale == 0.0
    assert bnn.HeteroscedasticNormal(np.float32(0.5)).min_scale == 0.5
    for bad in (math.inf, math.nan, -0.1):
        with pytest.raises(ValueError, match="min_scale must be a finite number >= 0"):
            bnn.HeteroscedasticNormal(min_scale=bad)
    for wrong in ("0.1", None, True):
        with pytest.raises(TypeError, match="min_scale must be a number"):
            bnn.HeteroscedasticNormal(min_scale=wrong)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("likelihood", "raw"),
    [
        (bnn.Normal(scale=1.0), torch.randn(4, 3, 1)),
        (bnn.StudentT(scale=1.0), torch.randn(4, 3, 1)),
        (bnn.HeteroscedasticNormal(), torch.randn(4, 3, 2)),
    ],
    ids=["Normal", "StudentT", "HeteroscedasticNormal"],
)
def test_gaussian_likelihoods_take_real_targets(
    likelihood: bnn.PredictiveDistribution, raw: torch.Tensor
) -> None:
    """Integers count as numbers; ``bool`` and complex targets are refused."""
    counts = torch.tensor([0, 2, 5])
    torch.testing.assert_close(
        likelihood.log_likelihood(raw, counts),
        likelihood.log_likelihood(raw, counts.float()),
    )
    for target in (torch.tensor([True, False, True]), torch.zeros(3) + 0j):
        with pytest.raises(
            ValueError, match=rf"targets must be real numbers .* dtype {target.dtype}"
        ):
            likelihood.log_likelihood(raw, target)


def test_bernoulli() -> None:
    out = torch.randn(4, 3, 1)
    y = torch.tensor([0, 1, 1])
    d, target = bnn.Bernoulli().observe(out, y)
    expected = torch.distributions.Bernoulli(logits=out.squeeze(-1)).log_prob(y.float())
    torch.testing.assert_close(d.log_prob(target), expected)
    with pytest.raises(ValueError, match="Bernoulli targets must be 0 or 1"):
        bnn.Bernoulli().observe(out, torch.tensor([0, 2, 1]))


def test_bad_scale() -> None:
    with pytest.raises(ValueError, match="noise scale must be a positive float"):
        bnn.Normal(scale=-1.0)


def test_student_t_log_prob_and_moments() -> None:
    out, y = torch.randn(4, 3, 1), torch.randn(3)
    likelihood = bnn.StudentT(df=5.0, scale=0.5)
    d, target = likelihood.observe(out, y)
    expected = torch.distributions.StudentT(5.0, out.squeeze(-1), 0.5).log_prob(y)
    torch.testing.assert_close(d.log_prob(target), expected)
    loc, var = likelihood.moments(out)
    torch.testing.assert_close(loc, out.squeeze(-1))
    torch.testing.assert_close(var, torch.full((4, 3), 0.25 * 5 / 3))
    assert bool(torch.isinf(bnn.StudentT(df=2.0, scale=1.0).moments(out)[1]).all())
    with pytest.raises(ValueError, match="StudentT df must be a positive float"):
        bnn.StudentT(df=0.0)


@pytest.mark.parametrize("df", [0.5, 1.0, 1.5, 2.0, 3.0])
def test_student_t_moments_exist_as_in_torch(df: float) -> None:
    """No mean for ``df <= 1`` (NaN), infinite variance for ``df <= 2`` (NaN
    below 1): the convention of ``torch.distributions.StudentT``."""
    from pyrolite_bnn.predict import Prediction

    out = torch.randn(4, 3, 1)
    noise = torch.distributions.StudentT(df, out.squeeze(-1), 0.5)
    mean, var = bnn.StudentT(df=df, scale=0.5).moments(out)
    torch.testing.assert_close(mean, noise.mean, equal_nan=True)
    torch.testing.assert_close(var, noise.variance, equal_nan=True)
    pred = Prediction(out, bnn.StudentT(df=df, scale=0.5))
    assert bool(pred.mean.isnan().all()) == (df <= 1)
    assert bool(pred.variance.isnan().all()) == (df <= 1)
    assert bool(pred.variance.isinf().all()) == (1 < df <= 2)


def test_student_t_learned_scale_is_a_parameter() -> None:
    (param,) = bnn.StudentT().parameters()
    assert param.requires_grad


def test_poisson() -> None:
    out = torch.randn(4, 3)
    y = torch.tensor([0, 2, 5])
    d, target = bnn.Poisson().observe(out, y)
    torch.testing.assert_close(
        d.log_prob(target), torch.distributions.Poisson(out.exp()).log_prob(y.float())
    )
    mean, var = bnn.Poisson().moments(out)
    torch.testing.assert_close(mean, out.exp())
    torch.testing.assert_close(var, out.exp())
    with pytest.raises(ValueError, match="non-negative integer counts"):
        bnn.Poisson().observe(out, torch.tensor([0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match="non-negative integer counts"):
        bnn.Poisson().observe(out, torch.tensor([-1, 1, 2]))


def test_poisson_density_comes_from_the_log_rate() -> None:
    """log p = y o - e^o - lgamma(y + 1): finite where exp(o) underflows.

    Through ``log(exp(o))`` a log rate of -104 gave -inf (NaN gradients) and
    -95 an infinite gradient, where the true values are finite.
    """
    out = torch.tensor([[-95.0, -104.0, -110.0, 0.0, 3.0]], requires_grad=True)
    y = torch.tensor([1.0, 1.0, 3.0, 0.0, 7.0])
    o, k = out.detach().double(), y.double()
    exact = k * o - o.exp() - torch.lgamma(k + 1)
    for log_p in (
        bnn.Poisson().log_likelihood(out, y),
        bnn.Poisson().distribution(out).log_prob(y),
        bnn.Poisson().distribution(out).expand((2, 5)).log_prob(y)[:1],
    ):
        torch.testing.assert_close(log_p.double(), exact)
        (grad,) = torch.autograd.grad(log_p.sum(), out)
        torch.testing.assert_close(grad.double(), k - o.exp(), atol=1e-5, rtol=1e-5)


def test_intervals_without_a_mixture_quantile_are_refused() -> None:
    from pyrolite_bnn.predict import Prediction

    pred = Prediction(torch.randn(5, 3, 4), bnn.Categorical())
    assert pred.mean.shape == (3, 4)
    with pytest.raises(NotImplementedError, match=r"regression likelihoods.*StudentT"):
        pred.interval(0.9)


# ------------------------------------------------------------------ summaries
def test_class_probs() -> None:
    logits = torch.randn(4, 3, 5)
    torch.testing.assert_close(
        bnn.Categorical().class_probs(logits), logits.softmax(-1)
    )
    out = torch.randn(4, 3, 1)
    p1 = torch.sigmoid(out.squeeze(-1))
    probs = bnn.Bernoulli().class_probs(out)
    torch.testing.assert_close(probs, torch.stack([1 - p1, p1], dim=-1))
    multi_label = bnn.Bernoulli().class_probs(torch.randn(4, 3, 2))
    assert multi_label.shape == (4, 3, 2, 2)


@pytest.mark.parametrize(
    "likelihood",
    [bnn.Normal(scale=1.0), bnn.StudentT(), bnn.Poisson(), bnn.HeteroscedasticNormal()],
    ids=lambda d: type(d).__name__,
)
def test_regression_likelihoods_have_no_class_probs(
    likelihood: bnn.PredictiveDistribution,
) -> None:
    assert not likelihood.is_classification
    with pytest.raises(AttributeError, match="need a classification likelihood"):
        likelihood.class_probs(torch.zeros(4, 3, 2))


@pytest.mark.parametrize(
    "likelihood", [bnn.Categorical(), bnn.Bernoulli()], ids=lambda d: type(d).__name__
)
def test_classification_likelihoods_summaries(
    likelihood: bnn.PredictiveDistribution,
) -> None:
    out = torch.randn(6, 3, 2)
    assert likelihood.is_classification
    torch.testing.assert_close(
        likelihood.predictive_mean(out), likelihood.class_probs(out).mean(0)
    )
    with pytest.raises(AttributeError, match="need a regression likelihood"):
        likelihood.moments(out)
    with pytest.raises(NotImplementedError, match="regression likelihoods"):
        likelihood.quantile(out, 0.5)


@pytest.mark.parametrize(
    "likelihood",
    [bnn.Normal(scale=0.5), bnn.StudentT(scale=0.5), bnn.Poisson()],
    ids=lambda d: type(d).__name__,
)
def test_predictive_mean_is_the_mean_of_particle_means(
    likelihood: bnn.PredictiveDistribution,
) -> None:
    out = torch.randn(6, 3, 1)
    torch.testing.assert_close(
        likelihood.predictive_mean(out), likelihood.moments(out)[0].mean(0)
    )


@pytest.mark.parametrize(
    ("likelihood", "shape", "summaries"),
    [  # a likelihood, an output its loss refuses, the summaries it has
        (bnn.Normal(scale=1.0), (4,), ("moments", "quantile")),
        (bnn.StudentT(scale=1.0), (4,), ("moments",)),
        (bnn.Poisson(), (4,), ("moments",)),
        (bnn.Bernoulli(), (4,), ("class_probs",)),
        (bnn.Categorical(), (4, 3), ("class_probs",)),
        (bnn.HeteroscedasticNormal(), (4, 3, 3), ("moments", "quantile", "loc_scale")),
        (bnn.HeteroscedasticNormal(), (4, 3, 1), ("moments", "quantile", "loc_scale")),
    ],
    ids=[
        "Normal",
        "StudentT",
        "Poisson",
        "Bernoulli",
        "Categorical",
        "HeteroscedasticNormal-3",
        "HeteroscedasticNormal-1",
    ],
)
def test_summaries_refuse_the_outputs_the_loss_refuses(
    likelihood: bnn.PredictiveDistribution,
    shape: tuple[int, ...],
    summaries: tuple[str, ...],
) -> None:
    """Same check, same message: a (S, B, 3) output is not summarised from
    two of its columns, nor a Categorical (S, B) output by a softmax over B."""
    from pyrolite_bnn.predict import Prediction

    output, labels = torch.zeros(shape), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="expects") as refused:
        likelihood.log_likelihood(output, labels)
    same_message = f"^{re.escape(str(refused.value))}$"
    calls: dict[str, Any] = {
        "forward": likelihood,
        "predictive_mean": likelihood.predictive_mean,
        "Prediction": lambda out: Prediction(out, likelihood),
        "quantile": lambda out: likelihood.quantile(out, 0.5),
    }
    for name in ("forward", "predictive_mean", "Prediction", *summaries):
        call = calls.get(name) or getattr(likelihood, name)
        with pytest.raises(ValueError, match=same_message):
            call(output)


def test_gaussian_quantiles_of_one_particle() -> None:
    # One particle: the quantile is loc + z_q * sigma (z_0.975 = 1.959964).
    out = torch.tensor([[[1.0, 0.0]]])  # HeteroscedasticNormal: sigma = softplus(0)
    sigma = float(torch.nn.functional.softplus(torch.tensor(0.0)))
    upper = bnn.HeteroscedasticNormal(min_scale=0.0).quantile(out, 0.975)
    torch.testing.assert_close(upper, torch.tensor([1.0 + 1.959964 * sigma]))
    upper = bnn.Normal(scale=2.0).quantile(torch.ones(1, 2, 1), 0.975)
    torch.testing.assert_close(upper, torch.full((2,), 1.0 + 1.959964 * 2.0))


def test_categorical_log_likelihood_is_the_distributions_log_prob() -> None:
    """The fast log-softmax path equals ``Categorical(logits).log_prob`` (with
    any dimensions after the batch summed), and a subclass that redefines
    ``distribution`` keeps it."""
    torch.manual_seed(0)
    likelihood = bnn.Categorical()
    for logits, labels in (
        (torch.randn(4, 3, 7) * 5, torch.randint(0, 7, (3,))),
        (torch.randn(4, 3, 5, 7), torch.randint(0, 7, (3, 5))),
    ):
        expected = likelihood.distribution(logits).log_prob(labels)
        got = likelihood.log_likelihood(logits, labels)
        assert got.shape == (4, 3)
        torch.testing.assert_close(got, expected)

    class FromProbs(bnn.Categorical):
        def distribution(self, output: torch.Tensor) -> Any:
            return torch.distributions.Categorical(probs=output)

    probs = torch.rand(2, 3, 4)
    probs = probs / probs.sum(-1, keepdim=True)
    labels = torch.tensor([0, 3, 1])
    torch.testing.assert_close(
        FromProbs().log_likelihood(probs, labels),
        torch.distributions.Categorical(probs=probs).log_prob(labels),
    )


@pytest.mark.parametrize(
    ("likelihood", "output"),
    [
        (bnn.Normal(scale=1.0), torch.zeros(4, 3, 1)),
        (bnn.HeteroscedasticNormal(), torch.zeros(4, 3, 2)),
    ],
    ids=["Normal", "HeteroscedasticNormal"],
)
def test_mixture_quantile_takes_one_probability(
    likelihood: bnn.PredictiveDistribution, output: torch.Tensor
) -> None:
    """``q = 1.5`` gave the top of the bisection bracket, NaN its bottom."""
    for bad in (0.0, 1.0, 1.5, -3.0, math.nan):
        with pytest.raises(ValueError, match=r"q must be in \(0, 1\)"):
            likelihood.quantile(output, bad)
    for wrong in ("0.5", torch.tensor([0.1, 0.9])):
        with pytest.raises(TypeError, match="q must be a number"):
            likelihood.quantile(output, wrong)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("temperature", "error", "message"),
    [
        (torch.tensor(-1.0), ValueError, r"positive and finite, got -1\.0"),
        (0.0, ValueError, r"positive and finite, got 0\.0"),
        (torch.tensor(math.nan), ValueError, r"positive and finite, got nan"),
        ("2", TypeError, r"temperature must be a number"),
    ],
)
def test_tempered_refuses_a_temperature_that_is_not_positive(
    temperature: object, error: type[Exception], message: str
) -> None:
    """T=-1 was accepted and flipped the logits (the classes' order)."""
    with pytest.raises(error, match=message):
        bnn.Categorical().tempered(torch.tensor([[[1.0, 2.0]]]), temperature)  # type: ignore[arg-type]


def test_tempered_takes_a_python_number() -> None:
    """A float raised "'float' object has no attribute 'to'"."""
    logits = torch.tensor([[[1.0, 2.0]]])
    torch.testing.assert_close(bnn.Categorical().tempered(logits, 2.0), logits / 2)


@pytest.mark.parametrize(
    "likelihood",
    [bnn.Normal(scale=1.0), bnn.StudentT(df=4.0, scale=1.0), bnn.Poisson()],
)
def test_tempered_refuses_a_regression_likelihood(
    likelihood: bnn.PredictiveDistribution,
) -> None:
    """Normal/StudentT/Poisson divided their output (the mean) by T: a moved
    regression mean, not a calibration. TemperatureScaling refused them, the
    public method did not."""
    with pytest.raises(TypeError, match=r"classification likelihood.*VarianceScaling"):
        likelihood.tempered(torch.ones(2, 3, 1), 2.0)


def test_gaussian_and_poisson_mixture_quantiles_refuse_negative_values() -> None:
    """var=-v returned NaN; a negative Poisson rate NaN too. A zero variance
    is a point mass, still taken."""
    loc, var = torch.randn(5, 4), torch.rand(5, 4) + 0.1
    with pytest.raises(ValueError, match=r"var must be >= 0, got -?\d.*\(20 of its 20"):
        gaussian_mixture_quantile(loc, -var, 0.9)
    with pytest.raises(
        ValueError, match=r"rate must be >= 0, got -?\d.*\(20 of its 20"
    ):
        poisson_mixture_quantile(-var, 0.9)
    torch.testing.assert_close(
        gaussian_mixture_quantile(loc, torch.zeros(5, 4), 0.5),
        loc.median(0).values,
        atol=1e-6,
        rtol=0.0,
    )


@pytest.mark.parametrize(
    "quantile",
    [
        lambda loc: gaussian_mixture_quantile(loc, torch.ones_like(loc), 0.9),
        lambda loc: student_t_mixture_quantile(loc, torch.ones(()), 4.0, 0.9),
        lambda loc: poisson_mixture_quantile(loc.exp(), 0.9),
    ],
    ids=["gaussian", "student_t", "poisson"],
)
def test_mixture_quantiles_refuse_zero_particles(quantile: Any) -> None:
    """S = 0 raised IndexError "min(): Expected reduction dim 0 to have
    non-zero size"."""
    with pytest.raises(ValueError, match=r"with S >= 1 particles, got shape \(0, 4\)"):
        quantile(torch.zeros(0, 4))


@pytest.mark.parametrize("q", [1e-12, 1e-7, 0.025, 0.5, 1 - 1e-7])
def test_mixture_quantile_is_exact_far_into_the_tails(q: float) -> None:
    """The bisection ran in float32 with ``1 + erf``: ``q = 1e-12`` gave -5.42.

    The float32 result against float64 ``Normal.icdf``: ``rtol=1e-6`` covers
    float32 rounding (6e-8) and the reference's own rounding of
    ``erfinv(2q - 1)`` near ``q = 1e-12`` (4e-7).
    """
    ours = bnn.Normal(scale=1.0).quantile(torch.zeros(3, 2, 1), q)
    exact = torch.distributions.Normal(
        torch.tensor(0.0, dtype=torch.float64), 1.0
    ).icdf(torch.tensor(q, dtype=torch.float64))
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, exact.float().expand(2), rtol=1e-6, atol=1e-7)


def test_mixture_quantile_of_two_components_in_the_tail() -> None:
    """At the returned point the mixture CDF (``log_ndtr``, exact in the tail)
    is ``q`` to float64 precision; the old float32 search stopped at 1e-7."""
    loc = torch.tensor([[-1.0], [2.0]], dtype=torch.float64)
    var = torch.tensor([[0.25], [4.0]], dtype=torch.float64)
    for q in (1e-10, 1 - 1e-10):
        point = gaussian_mixture_quantile(loc, var, q)
        z = (point - loc) / var.sqrt()
        below = torch.special.log_ndtr(z).exp().mean(0)
        above = torch.special.log_ndtr(-z).exp().mean(0)
        mass = torch.tensor([q if q < 0.5 else 1 - q], dtype=torch.float64)
        torch.testing.assert_close(
            below if q < 0.5 else above, mass, rtol=1e-9, atol=0.0
        )


def test_poisson_refuses_complex_counts() -> None:
    """torch raised ``NotImplementedError: "ge_cpu" not implemented``."""
    output = torch.zeros(4, 3, 1)
    with pytest.raises(ValueError, match=r"Poisson targets .* real dtype.*complex64"):
        bnn.Poisson().log_likelihood(output, torch.ones(3, dtype=torch.cfloat))


def _poisson_mixture_quantile_by_summing(rate: torch.Tensor, q: float) -> torch.Tensor:
    """Reference: the mixture's pmf summed up count by count, in float64."""
    counts = torch.arange(2000, dtype=torch.float64).view(-1, *([1] * rate.dim()))
    log_rate = rate.double().log()
    pmf = (counts * log_rate - rate.double() - torch.lgamma(counts + 1)).exp()
    cdf = pmf.mean(1).cumsum(0)
    return (cdf < q).sum(0).double()


@pytest.mark.parametrize("q", [0.001, 0.025, 0.3, 0.5, 0.9, 0.975, 0.999])
def test_poisson_mixture_quantiles_are_the_counts_of_the_summed_pmf(q: float) -> None:
    """Poisson intervals were refused ("a count-data user cannot get an
    interval"): the quantile is the smallest count whose mixture CDF reaches q,
    equal to the pmf summed count by count (rates 1e-3 to 800, particles
    of very different rates)."""
    torch.manual_seed(0)
    # 7 particles: no q here is a multiple of 1/7, the mixture CDF's plateaus
    # between components of very different rates (there the quantile is the
    # plateau's first count only up to the CDF's float64 rounding).
    log_rate = torch.empty(7, 40).uniform_(math.log(1e-3), math.log(800.0))
    quantile = bnn.Poisson().quantile(log_rate, q)
    expected = _poisson_mixture_quantile_by_summing(log_rate.double().exp(), q)
    assert quantile.dtype == torch.float32
    torch.testing.assert_close(quantile.double(), expected, rtol=0, atol=0)


def test_a_count_prediction_has_intervals_that_cover() -> None:
    """95 % intervals of a known Poisson mixture cover about 95 % of its draws
    (at least, for a discrete law: the interval holds its end points), 20,000
    draws, tolerance 4 standard errors."""
    torch.manual_seed(0)
    log_rate = torch.randn(50, 1) + 2.0  # 50 particles, one example
    pred = bnn.Prediction(log_rate.expand(50, 20000).contiguous(), bnn.Poisson())
    lower, upper = pred.interval(0.95)
    particle = torch.randint(0, 50, (20000,))
    draws = torch.poisson(log_rate[particle, 0].exp())
    covered = ((draws >= lower) & (draws <= upper)).double().mean()
    assert float(covered) >= 0.95 - 4 * math.sqrt(0.95 * 0.05 / 20000)
    assert float(covered) < 0.99


def test_poisson_quantiles_of_extreme_rates_end() -> None:
    """A log rate of 80 (a rate of 5.5e34, past float64's integers) never ended
    its bisection: the midpoint stopped splitting the bracket."""
    log_rate = torch.tensor([[80.0, -100.0, 0.0, 200.0]])
    median = bnn.Poisson().quantile(log_rate, 0.5)
    assert float(median[0]) == pytest.approx(math.exp(80.0), rel=1e-6)
    assert median[1:3].tolist() == [0.0, 1.0]
    assert math.isinf(float(median[3]))  # exp(200) is inf in float32
    assert bnn.Poisson().quantile(torch.zeros(3, 0), 0.5).shape == (0,)


@pytest.mark.parametrize(
    ("likelihood", "output", "event"),
    [
        (bnn.Normal(scale=1.0), torch.zeros(4, 3, 1), ()),
        (bnn.Normal(scale=1.0), torch.zeros(4, 3), ()),
        (bnn.Normal(scale=1.0), torch.zeros(4, 3, 2), (2,)),
        (bnn.Normal(scale=1.0), torch.zeros(4, 3, 7, 1), (7,)),
        (bnn.Poisson(), torch.zeros(4, 3, 7, 1), (7,)),
        (bnn.StudentT(scale=1.0), torch.zeros(4, 3, 1), ()),
        (bnn.Poisson(), torch.zeros(4, 3, 1), ()),
        (bnn.Bernoulli(), torch.zeros(4, 3, 1), ()),
        (bnn.Bernoulli(), torch.zeros(4, 3, 5), (5,)),
        (bnn.Categorical(), torch.zeros(4, 3, 5), ()),
        (bnn.Categorical(), torch.zeros(4, 3, 7, 5), (7,)),
        (bnn.HeteroscedasticNormal(), torch.zeros(4, 3, 2), ()),
    ],
)
def test_target_distribution_draws_in_the_layout_of_the_targets(
    likelihood: bnn.PredictiveDistribution, output: torch.Tensor, event: tuple[int, ...]
) -> None:
    """A scalar-target output (S, B, 1) draws (S, B), as its targets (B,) read.

    A scalar per position, (S, B, L, 1), draws (S, B, L) as targets (B, L)
    (it drew (S, B, L, 1)).
    """
    targets = likelihood.target_distribution(output)
    assert (tuple(targets.batch_shape), tuple(targets.event_shape)) == ((4, 3), event)
    assert targets.sample().shape == (4, 3, *event)


def test_target_distribution_checks_the_output() -> None:
    with pytest.raises(ValueError, match="Categorical needs two or more classes"):
        bnn.Categorical().target_distribution(torch.zeros(4, 3, 1))


def _half_precision_case(
    name: str, dtype: torch.dtype
) -> tuple[bnn.PredictiveDistribution, torch.Tensor, torch.Tensor, Any]:
    """A likelihood, a half-precision output, targets, the float64 log density."""
    torch.manual_seed(0)
    out = torch.randn(4, 6, 1)
    if name == "HeteroscedasticNormal":  # predicted scales near 6e-6
        out = torch.stack([torch.randn(4, 6), torch.full((4, 6), -12.0)], dim=-1)
    if name == "Categorical":
        out = torch.randn(4, 6, 5)
    if name == "learned Normal":  # targets spread as the scale (no warning)
        out = 1e-3 * out
    out = out.to(dtype)
    wide = out.double()
    if name in ("Normal", "learned Normal", "StudentT"):
        scale = 1e-4 if name != "learned Normal" else 1e-3
        y = wide[0, :, 0].float() + scale * torch.randn(6)
        if name == "StudentT":
            likelihood: bnn.PredictiveDistribution = bnn.StudentT(3.0, scale=scale)
            noise: Any = torch.distributions.StudentT(3.0, wide[..., 0], scale)
        elif name == "Normal":
            likelihood = bnn.Normal(scale=scale)
            noise = torch.distributions.Normal(wide[..., 0], scale)
        else:
            likelihood = bnn.Normal(init_scale=scale)
            learned = likelihood.noise_scale().detach().double()  # type: ignore[operator]
            noise = torch.distributions.Normal(wide[..., 0], learned)
        return likelihood, out, y, noise.log_prob(y.double())
    if name == "HeteroscedasticNormal":
        scale = torch.nn.functional.softplus(wide[..., 1]) + 1e-6
        y = wide[0, :, 0].float() + 1e-5 * torch.randn(6)
        normal = torch.distributions.Normal(wide[..., 0], scale)
        return bnn.HeteroscedasticNormal(), out, y, normal.log_prob(y.double())
    if name == "Categorical":
        y = torch.randint(0, 5, (6,))
        log_p = wide.log_softmax(-1)[:, torch.arange(6), y]
        return bnn.Categorical(), out, y, log_p
    y = torch.randint(0, 2, (6,)).float()
    if name == "Bernoulli":
        bernoulli = torch.distributions.Bernoulli(logits=wide[..., 0])
        return bnn.Bernoulli(), out, y, bernoulli.log_prob(y.double())
    poisson = torch.distributions.Poisson(wide[..., 0].exp())
    return bnn.Poisson(), out, y, poisson.log_prob(y.double())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "name",
    [
        "Normal",
        "learned Normal",
        "StudentT",
        "HeteroscedasticNormal",
        "Categorical",
        "Bernoulli",
        "Poisson",
    ],
)
def test_log_densities_of_half_precision_outputs_are_float32_accurate(
    name: str, dtype: torch.dtype
) -> None:
    """The likelihoods computed log p(y | output) in the output's dtype: Normal
    cast its noise scale to float16, whose square is 0 below 1.7e-4 (the loss
    was inf at a scale of 1e-4), HeteroscedasticNormal's predicted scale of
    6e-6 likewise, and bfloat16 kept 3 digits of every density. Now in at least
    float32, the loss's data term and the Pyro observation site's alike:
    within float32 rounding (rtol 1e-5) of float64 on the same outputs."""
    likelihood, out, y, reference = _half_precision_case(name, dtype)
    log_p = likelihood.log_likelihood(out, y)
    observed, target = likelihood.observe(out, y)
    for value in (log_p, observed.log_prob(target)):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value.double(), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("likelihood", "output", "target"),
    [
        (bnn.Normal(scale=0.5), torch.randn(4, 3, 5, 1), torch.randn(3, 5)),
        (bnn.Normal(scale=0.5), torch.randn(4, 3, 2), torch.randn(3, 2)),
        (bnn.Normal(scale=0.5), torch.randn(4, 3, 1), torch.randn(3)),
        (bnn.StudentT(scale=0.5), torch.randn(4, 3, 5), torch.randn(3, 5)),
        (bnn.Poisson(), torch.randn(4, 3, 5, 1), torch.randint(0, 4, (3, 5))),
        (bnn.Bernoulli(), torch.randn(4, 3, 5), torch.randint(0, 2, (3, 5))),
        (bnn.HeteroscedasticNormal(), torch.randn(4, 3, 5, 2), torch.randn(3, 5)),
        (bnn.Categorical(), torch.randn(4, 3, 2, 5, 4), torch.randint(0, 4, (3, 2, 5))),
        (
            bnn.Categorical(ignore_index=-100),
            torch.randn(4, 3, 5, 4),
            torch.tensor([[0, 1, 2, -100, -100]] * 3),
        ),
        (bnn.Categorical(), torch.randn(4, 3, 4), torch.randint(0, 4, (3,))),
    ],
    ids=[
        "Normal-tokens",
        "Normal-multi-output",
        "Normal-scalar",
        "StudentT",
        "Poisson",
        "Bernoulli-multi-label",
        "HeteroscedasticNormal",
        "Categorical-pixels",
        "Categorical-padded",
        "Categorical-one-label",
    ],
)
def test_position_log_likelihood_is_log_likelihood_per_position(
    likelihood: bnn.PredictiveDistribution, output: torch.Tensor, target: torch.Tensor
) -> None:
    """``(S, B, ...)`` per target position, summing to the per-example one.

    The positions are those of the targets (a trailing 1 of the output
    aligned away); an ignored label holds 0. A calibration is fitted on them.
    """
    torch.manual_seed(0)
    per_position = likelihood.position_log_likelihood(output, target)
    positions = (
        target.shape[1:]
        if not isinstance(likelihood, bnn.HeteroscedasticNormal)
        else output.shape[2:-1]
    )
    assert per_position.shape == (4, 3, *positions)
    summed = per_position.flatten(2).sum(-1) if positions else per_position
    torch.testing.assert_close(summed, likelihood.log_likelihood(output, target))
    if isinstance(likelihood, bnn.Categorical) and likelihood.ignore_index is not None:
        assert bool((per_position[..., 3:] == 0).all())


def test_poisson_quantiles_of_a_float32_overflowing_rate_are_those_of_float64() -> None:
    """One particle's log rate of 100 (a rate of 2.7e43, past float32's range)
    made every quantile of the mixture infinite, the lower ones included: the
    rate was cast back to float32 before the search. Now the quantiles are the
    float64 computation's, in float32 (2.7e43 itself is ``inf`` there). A rate
    infinite in float64 too (log rate 800) leaves the quantiles the other
    particles reach finite."""
    log_rate = torch.tensor([[[0.0]], [[0.0]], [[0.0]], [[100.0]]])
    narrow = bnn.Prediction(log_rate, bnn.Poisson())
    wide = bnn.Prediction(log_rate.double(), bnn.Poisson())
    beyond = torch.tensor([[0.0], [0.0], [0.0], [800.0]])
    infinite = bnn.Prediction(beyond, bnn.Poisson())
    for q in (0.05, 0.25, 0.5, 0.7, 0.75, 0.9):
        expected = wide.quantile(q).float()
        torch.testing.assert_close(narrow.quantile(q), expected, rtol=0, atol=0)
        torch.testing.assert_close(infinite.quantile(q), expected, rtol=0, atol=0)
    assert [float(bound) for bound in narrow.interval(0.5)] == [0.0, 18.0]
    assert float(wide.quantile(0.9)) == pytest.approx(math.exp(100.0), rel=1e-6)


def test_heteroscedastic_min_scale_zero_keeps_the_log_likelihood_finite() -> None:
    """``min_scale=0`` (documented as allowed): a raw scale of -60 made the
    variance underflow to 0 in float32, one of -120 ``softplus`` itself, and
    the log-likelihood was NaN (the loss with it). The scale is at least
    ``sqrt(tiny)``, whose square is a normal number: the log-density is that
    of the floor, in float64 to float32 rounding; above it, unchanged."""
    likelihood = bnn.HeteroscedasticNormal(min_scale=0)
    floor = math.sqrt(torch.finfo(torch.float32).tiny)
    for raw in (-60.0, -120.0):
        output = torch.tensor([[[1.0, raw], [1.0, raw]]])
        log_p = likelihood.log_likelihood(output, torch.tensor([1.0, 1.5]))
        expected = torch.distributions.Normal(
            torch.tensor(1.0, dtype=torch.float64), floor
        ).log_prob(torch.tensor([1.0, 1.5], dtype=torch.float64))
        torch.testing.assert_close(log_p[0].double(), expected, rtol=1e-6, atol=0)
    raw = torch.tensor(-30.0)  # softplus 9.4e-14: above the floor, as it was
    output = torch.stack([torch.tensor(1.0), raw])[None, None]
    expected = torch.distributions.Normal(
        1.0, torch.nn.functional.softplus(raw.double())
    ).log_prob(torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(
        likelihood.log_likelihood(output, torch.tensor([1.0]))[0, 0].double(),
        expected,
        rtol=1e-6,
        atol=0,
    )
    net = bnn.VILinear(2, 2)
    with torch.no_grad():
        net.posterior["bias"].loc_unconstrained.copy_(torch.tensor([0.0, -120.0]))
        net.posterior["weight"].loc_unconstrained.zero_()
    loss = bnn.KullbackLeiblerLoss(likelihood, dataset_size=10)(
        net(torch.randn(4, 2)), torch.zeros(4)
    )
    assert math.isfinite(float(loss.detach()))


@pytest.mark.parametrize(
    ("likelihood", "output", "target"),
    [
        (bnn.Categorical(), torch.randn(4, 6, 5, 3), torch.zeros(6, 1).long()),
        (bnn.Categorical(), torch.randn(4, 6, 5, 3), torch.zeros(5).long()),
        (bnn.Categorical(), torch.randn(4, 6, 3), torch.zeros(6).float()),
        (
            bnn.Categorical(ignore_index=-100),
            torch.randn(4, 6, 5, 3),
            torch.zeros(1, 5, dtype=torch.long),
        ),
        (bnn.Bernoulli(), torch.randn(4, 6), torch.zeros(1)),
        (bnn.Normal(scale=1.0), torch.randn(4, 6, 1), torch.zeros(1)),
        (bnn.Poisson(), torch.randn(4, 6), torch.zeros(1, 1)),
        (bnn.HeteroscedasticNormal(), torch.randn(4, 6, 2), torch.zeros(1)),
    ],
    ids=[
        "Categorical-(B,1)",
        "Categorical-(L,)",
        "Categorical-float",
        "Categorical-ignore-(1,L)",
        "Bernoulli-(1,)",
        "Normal-(1,)",
        "Poisson-(1,1)",
        "HeteroscedasticNormal-(1,)",
    ],
)
def test_target_layouts_are_refused_with_validation_off(
    likelihood: bnn.PredictiveDistribution, output: torch.Tensor, target: torch.Tensor
) -> None:
    """Validation off skips the checks that read values from the device, not
    the shape and dtype checks (they need no synchronisation): labels
    ``(B, 1)`` or ``(L,)`` against per-token logits were broadcast over the
    tokens, a target ``(1,)`` over the batch, into a finite, wrong loss."""
    with (
        bnn.validation(False),
        pytest.raises(ValueError, match=r"expected targets|integer class labels"),
    ):
        likelihood.log_likelihood(output, target)


def test_the_loss_refuses_token_labels_of_another_shape_with_validation_off() -> None:
    """The probe's tagger: labels ``(B, 1)`` gave a finite loss, silently."""
    net = bnn.VILinear(3, 4)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=100)
    x = torch.randn(6, 5, 3)  # per-token logits (S, 6, 5, 4)
    with (
        bnn.validation(False),
        pytest.raises(ValueError, match=r"expected targets of shape \(6, 5\)"),
    ):
        loss_fn(net(x), torch.zeros(6, 1, dtype=torch.long))


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: bnn.Normal(), "raw_scale_unconstrained"),
        (lambda: bnn.Normal(scale=0.5), "fixed_scale"),
        (lambda: bnn.StudentT(3.0), "raw_scale_unconstrained"),
        (lambda: bnn.StudentT(3.0, scale=0.5), "df"),
    ],
)
def test_a_likelihood_tensor_never_written_after_to_empty_is_refused(
    make: Any, key: str
) -> None:
    """``to_empty`` then ``load_state_dict(strict=False)`` without a noise
    scale (or ``df``) read uninitialised memory as it: a loss and
    predictive intervals of whatever it held (probe falsepos20b). It is
    refused by name where it is read; a load holding it makes the likelihood
    usable."""
    source = make()
    loss_fn = bnn.KullbackLeiblerLoss(make(), dataset_size=8)
    loss_fn.to_empty(device="cpu")
    likelihood = loss_fn.predictive
    state = {k: v for k, v in source.state_dict().items() if k != key}
    assert likelihood.load_state_dict(state, strict=False).missing_keys == [key]
    net, x, y = bnn.VILinear(3, 1), torch.randn(4, 3), torch.randn(4, 1)
    reads = {
        "loss": lambda: loss_fn(net(x), y),
        "noise scale": likelihood.noise_scale,
        "predict": lambda: bnn.predict(net, x, likelihood, samples=2).interval(0.9),
    }
    for call in reads.values():
        with pytest.raises(ValueError, match=rf"{key!r} of shape \(\) holds no values"):
            call()
    likelihood.load_state_dict(source.state_dict())
    torch.testing.assert_close(likelihood.noise_scale(), source.noise_scale())


@pytest.mark.parametrize(
    "make",
    [lambda: bnn.Normal(), lambda: bnn.StudentT(3.0), lambda: bnn.Normal(scale=0.5)],
    ids=["learned Normal", "learned StudentT", "fixed Normal"],
)
def test_a_likelihood_converts_and_loads_under_torchs_swap_flag(
    make: Any, swap_conversions: bool
) -> None:
    """Under torch's ``set_swap_module_params_on_conversion(True)`` a loss
    whose likelihood learns its noise scale failed to convert once the scale
    was read (Pyro's weak link on a real-valued parameter), and a likelihood
    failed to load after ``to_empty`` (the record of its memory, a weak
    reference; probe falsepos23a). With the flag on or off the conversion
    keeps the parameter objects and the noise scale, and after ``to_empty``
    the scale is refused until a load brings it."""
    loss_fn = bnn.KullbackLeiblerLoss(make(), dataset_size=8)
    net, x, y = bnn.VILinear(3, 1), torch.randn(4, 3), torch.randn(4, 1)
    loss_fn(net(x), y).backward()
    reference = bnn.KullbackLeiblerLoss(make(), dataset_size=8)
    with swap_flag(False):
        reference.load_state_dict(loss_fn.state_dict())
        expected = reference.double().predictive.noise_scale()
    parameters = list(loss_fn.parameters())
    loss_fn.double()
    assert [id(p) for p in loss_fn.parameters()] == [id(p) for p in parameters]
    likelihood = loss_fn.predictive
    torch.testing.assert_close(likelihood.noise_scale(), expected, rtol=0, atol=0)
    state = loss_fn.state_dict()
    loss_fn.to_empty(device="cpu")
    with pytest.raises(ValueError, match=r"of shape \(\) holds no values"):
        likelihood.noise_scale()
    loss_fn.load_state_dict(state)
    torch.testing.assert_close(likelihood.noise_scale(), expected, rtol=0, atol=0)


def _with_missing(target: Tensor) -> Tensor:
    """``target`` ``(5, 3)`` with NaN entries: one example all missing."""
    target = target.double().clone()
    target[0, 1] = math.nan
    target[2, :] = math.nan
    target[4, 0] = target[4, 2] = math.nan
    return target


def _missing_cases() -> dict[str, tuple[Any, Any, Tensor, Tensor]]:
    """Likelihood with ``missing="nan"``, the same without, outputs, targets."""
    g = torch.Generator().manual_seed(0)
    out = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    pairs = torch.randn(4, 5, 3, 2, generator=g, dtype=torch.float64)
    real = _with_missing(torch.randn(5, 3, generator=g))
    labels = _with_missing(torch.randint(0, 2, (5, 3), generator=g))
    counts = _with_missing(torch.randint(0, 6, (5, 3), generator=g))
    return {
        "Normal": (
            bnn.Normal(scale=0.7, missing="nan"),
            bnn.Normal(scale=0.7),
            out,
            real,
        ),
        "StudentT": (
            bnn.StudentT(3.0, scale=0.5, missing="nan"),
            bnn.StudentT(3.0, scale=0.5),
            out,
            real,
        ),
        "HeteroscedasticNormal": (
            bnn.HeteroscedasticNormal(missing="nan"),
            bnn.HeteroscedasticNormal(),
            pairs,
            real,
        ),
        "Bernoulli": (bnn.Bernoulli(missing="nan"), bnn.Bernoulli(), out, labels),
        "Poisson": (bnn.Poisson(missing="nan"), bnn.Poisson(), out, counts),
    }


@pytest.mark.parametrize("case", list(_missing_cases()))
def test_missing_entries_score_as_the_data_without_them(case: str) -> None:
    """A NaN target was refused with the advice to write a likelihood of one's
    own (probe multitask). Built with ``missing="nan"``, each example's
    log-likelihood is that of the same likelihood on the example's observed
    entries alone (0 for an example without any), exactly (float64); per
    position, missing entries hold 0; the masked distribution of ``observe``
    and ``pyro_log_likelihood`` give the same numbers; and no NaN reaches the
    gradient, which is 0 at the outputs of missing entries."""
    masked, plain, out, y = _missing_cases()[case]
    out = out.clone().requires_grad_()
    log_p = masked.log_likelihood(out, y)
    reference = torch.zeros(4, 5, dtype=torch.float64)
    for b in range(5):
        keep = ~y[b].isnan()
        if keep.any():
            kept = out[:, b : b + 1][:, :, keep]  # the example's observed entries
            reference[:, b] = plain.log_likelihood(kept, y[b : b + 1, keep])[:, 0]
    torch.testing.assert_close(log_p, reference, rtol=0, atol=1e-12)
    per_position = masked.position_log_likelihood(out, y)
    assert per_position.shape == (4, 5, 3)
    assert bool((per_position[:, y.isnan()] == 0).all())
    torch.testing.assert_close(per_position.sum(-1), reference, rtol=0, atol=1e-12)
    distribution, filled = masked.observe(out, y)
    torch.testing.assert_close(distribution.log_prob(filled), reference)
    torch.testing.assert_close(masked.pyro_log_likelihood(out, y), reference)
    (gradient,) = torch.autograd.grad(log_p.sum(), out)
    assert bool(gradient.isfinite().all())
    assert bool((gradient[:, y.isnan()] == 0).all())


def test_missing_scalar_targets_are_examples_left_out() -> None:
    """Scalar targets ``(B,)`` (outputs ``(S, B, 1)``): a missing one is an
    example without a target, log-likelihood 0; the others are those of the
    data without it."""
    out, y = torch.randn(4, 6, 1), torch.randn(6)
    y[[1, 4]] = math.nan
    keep = ~y.isnan()
    log_p = bnn.Normal(scale=0.5, missing="nan").log_likelihood(out, y)
    torch.testing.assert_close(
        log_p[:, keep], bnn.Normal(scale=0.5).log_likelihood(out[:, keep], y[keep])
    )
    assert bool((log_p[:, ~keep] == 0).all())
    column = bnn.Normal(scale=0.5, missing="nan").log_likelihood(out, y.unsqueeze(-1))
    torch.testing.assert_close(column, log_p)


def test_missing_is_none_or_nan_fixed_at_construction() -> None:
    """The option takes ``"nan"`` only (other markers are named with the way
    to turn them into NaN), is read-only, shows in the repr and keeps
    infinite observed entries refused."""
    for likelihood in (
        bnn.Normal,
        bnn.StudentT,
        bnn.HeteroscedasticNormal,
        bnn.Bernoulli,
        bnn.Poisson,
    ):
        assert likelihood().missing is None
        assert likelihood(missing="nan").missing == "nan"
        assert "missing='nan'" in repr(likelihood(missing="nan"))
        for wrong in (math.nan, "NaN", -999.0, True):
            with pytest.raises(ValueError, match=r'missing must be None .* or "nan"'):
                likelihood(missing=wrong)
    normal = bnn.Normal(scale=1.0, missing="nan")
    with pytest.raises(AttributeError):
        normal.missing = None  # type: ignore[misc]
    with pytest.raises(ValueError, match="target contains 1 NaN/Inf"):
        normal.log_likelihood(torch.zeros(2, 2), torch.tensor([math.inf, math.nan]))


@pytest.mark.parametrize(
    "likelihood",
    [bnn.Normal(scale=1.0), bnn.StudentT(scale=1.0), bnn.Bernoulli(), bnn.Poisson()],
    ids=["Normal", "StudentT", "Bernoulli", "Poisson"],
)
def test_nan_targets_are_refused_naming_the_missing_option(
    likelihood: bnn.PredictiveDistribution,
) -> None:
    """The refusal advised a likelihood of one's own; it names the option."""
    name = type(likelihood).__name__
    with pytest.raises(ValueError, match=re.escape(f'bnn.{name}(..., missing="nan")')):
        likelihood.log_likelihood(torch.zeros(2, 3), torch.tensor([0.0, math.nan, 1.0]))


def test_a_refused_inf_target_is_not_called_unmarked_missing() -> None:
    """An Inf target under ``missing="nan"`` was refused with the advice to
    build the likelihood with ``missing="nan"``, which it was. The message
    now says that only NaN marks a missing entry; a likelihood marking them
    with an ``observed`` of its own is told that it marked these observed."""

    class SentinelNormal(bnn.Normal):
        def observed(self, target: Tensor) -> Tensor | None:
            return target != -999.0

    y = torch.tensor([[math.inf, 0.0], [0.0, math.nan]])
    with pytest.raises(ValueError, match="1 NaN/Inf") as refused:
        bnn.Normal(scale=1.0, missing="nan").log_likelihood(torch.zeros(3, 2, 2), y)
    message = str(refused.value)
    assert "an Inf is not a missing marker" in message
    assert "(..., missing=" not in message
    with pytest.raises(ValueError, match="2 NaN/Inf") as refused:
        SentinelNormal(scale=1.0).log_likelihood(torch.zeros(3, 2, 2), y)
    assert "SentinelNormal.observed(target) marks these entries as observed" in str(
        refused.value
    )


def test_a_redefined_position_log_likelihood_is_summed_into_log_likelihood() -> None:
    """A subclass weighting each position (``position_log_likelihood``
    redefined, ``log_likelihood`` not): Categorical's loss stopped following
    the weights while calibration read them (probe falsepos27d), Normal's
    never had. ``log_likelihood`` is now the sum of its positions for both,
    and the override's call of the parent's method does not recurse."""
    weights = torch.tensor([1.0, 0.5, 2.0])

    class WeightedCategorical(bnn.Categorical):
        def position_log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
            return weights * super().position_log_likelihood(output, target)

    class WeightedNormal(bnn.Normal):
        def position_log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
            return weights * super().position_log_likelihood(output, target)

    Case = tuple[bnn.PredictiveDistribution, bnn.PredictiveDistribution, Tensor, Tensor]
    cases: list[Case] = [
        (
            WeightedCategorical(),
            bnn.Categorical(),
            torch.randn(4, 5, 3, 2),
            torch.randint(0, 2, (5, 3)),
        ),
        (
            WeightedNormal(scale=0.5),
            bnn.Normal(scale=0.5),
            torch.randn(4, 5, 3),
            torch.randn(5, 3),
        ),
    ]
    for weighted, plain, output, target in cases:
        assert weighted.redefines_log_likelihood()
        expected = (weights * plain.position_log_likelihood(output, target)).sum(-1)
        torch.testing.assert_close(weighted.log_likelihood(output, target), expected)
        torch.testing.assert_close(
            weighted.pyro_log_likelihood(output, target), expected
        )
        torch.testing.assert_close(
            weighted.mixture_log_likelihood(output, target),
            torch.logsumexp(expected, 0) - math.log(4),
        )


def test_missing_entries_marked_by_an_observed_override() -> None:
    """A likelihood of one's own marks missing entries (here a sentinel) by
    overriding ``observed``: its scores are those of ``missing="nan"``."""

    class SentinelNormal(bnn.Normal):
        def observed(self, target: Tensor) -> Tensor | None:
            return target != -999.0

    out, y = torch.randn(4, 5, 2), torch.randn(5, 2)
    marked = y.clone()
    marked[1, 0] = marked[3, 1] = -999.0
    with_nan = marked.masked_fill(marked == -999.0, math.nan)
    sentinel = SentinelNormal(scale=0.5)
    nan = bnn.Normal(scale=0.5, missing="nan")
    for method in ("log_likelihood", "position_log_likelihood", "pyro_log_likelihood"):
        torch.testing.assert_close(
            getattr(sentinel, method)(out, marked), getattr(nan, method)(out, with_nan)
        )


def test_a_redefined_log_likelihood_is_the_per_position_density_too() -> None:
    """A subclass that redefines ``log_likelihood`` (the advice of the old NaN
    refusal) had calibration fitted on ``position_log_likelihood``, which
    scored every entry as the class it derives from: with a sentinel for a
    missing entry, a density of 1e-6 per particle. Calibration reads its
    per-example densities now (for ``Categorical`` too: a temperature-scaled
    wrap scores as the redefinition), while ``position_log_likelihood``
    stays the class's own per-position densities (probe falsepos28: it
    called the redefinition, which called it back)."""

    class MaskedNormal(bnn.Normal):
        def log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
            keep = target != -999.0
            noise = torch.distributions.Normal(output, self.noise_scale())
            log_p = noise.log_prob(torch.where(keep, target, 0.0))
            return (log_p * keep).sum(-1)

    class DoubledCategorical(bnn.Categorical):
        def log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
            return 2 * super().log_likelihood(output, target)

    out, y = torch.randn(4, 5, 2), torch.randn(5, 2)
    y[2, 1] = -999.0
    masked = MaskedNormal(scale=0.5)
    assert masked.redefines_log_likelihood()
    assert not bnn.Normal().redefines_log_likelihood()
    torch.testing.assert_close(
        scored_positions(masked, out, y),
        masked.log_likelihood(out, y),
        rtol=0.0,
        atol=0.0,
    )
    torch.testing.assert_close(
        masked.position_log_likelihood(out, y),
        bnn.Normal(scale=0.5).position_log_likelihood(out, y),
        rtol=0.0,
        atol=0.0,
    )
    logits, labels = torch.randn(4, 5, 3), torch.randint(0, 3, (5,))
    doubled = DoubledCategorical()
    expected = 2 * bnn.Categorical().log_likelihood(logits, labels)
    torch.testing.assert_close(
        scored_positions(doubled, logits, labels), expected, rtol=0.0, atol=0.0
    )
    torch.testing.assert_close(
        bnn.TemperatureScaling(1.0)
        .wrap(doubled)
        .position_log_likelihood(logits, labels),
        expected,
        rtol=1e-6,
        atol=1e-6,
    )


def _weighted_cases() -> dict[str, tuple[Any, Tensor, Tensor]]:
    """A likelihood of each class with per-position densities, an output and targets.

    Three positions per example (``Categorical``: three labels of four classes).
    """
    torch.manual_seed(0)
    s, b = 4, 5
    return {
        "Normal": (bnn.Normal, torch.randn(s, b, 3), torch.randn(b, 3)),
        "StudentT": (bnn.StudentT, torch.randn(s, b, 3), torch.randn(b, 3)),
        "HeteroscedasticNormal": (
            bnn.HeteroscedasticNormal,
            torch.randn(s, b, 3, 2),
            torch.randn(b, 3),
        ),
        "Poisson": (bnn.Poisson, torch.randn(s, b, 3), torch.poisson(torch.ones(b, 3))),
        "Bernoulli": (
            bnn.Bernoulli,
            torch.randn(s, b, 3),
            torch.randint(0, 2, (b, 3)).float(),
        ),
        "Categorical": (
            bnn.Categorical,
            torch.randn(s, b, 3, 4),
            torch.randint(0, 4, (b, 3)),
        ),
    }


@pytest.mark.parametrize("way", ["self", "super", "helper"])
@pytest.mark.parametrize("name", list(_weighted_cases()))
def test_a_log_likelihood_built_from_the_inherited_positions_does_not_recurse(
    name: str, way: str
) -> None:
    """A subclass whose ``log_likelihood`` weights and sums the inherited
    ``position_log_likelihood`` (a weight per output column) recursed
    without end: the inherited method called the redefinition back (probe
    falsepos28, since 40e4072). It gets the class's own per-position
    densities, directly, through ``super()`` or a helper, and calibration's
    per-position reading follows the redefinition."""
    kind, output, target = _weighted_cases()[name]
    weights = torch.tensor([1.0, 0.5, 2.0])

    def weighted(likelihood: Any, output: Tensor, target: Tensor) -> Tensor:
        positions: Tensor = likelihood.position_log_likelihood(output, target)
        return (positions * weights).sum(-1)

    class ColumnWeighted(kind):  # type: ignore[misc, valid-type]
        def log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
            if way == "self":
                return (self.position_log_likelihood(output, target) * weights).sum(-1)
            if way == "super":
                positions = super().position_log_likelihood(output, target)
                return (positions * weights).sum(-1)
            return weighted(self, output, target)

    likelihood, plain = ColumnWeighted(), kind()
    expected = (plain.position_log_likelihood(output, target) * weights).sum(-1)
    torch.testing.assert_close(
        likelihood.log_likelihood(output, target), expected, rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(
        scored_positions(likelihood, output, target), expected, rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(
        likelihood.mixture_log_likelihood(output, target),
        torch.logsumexp(expected, 0) - math.log(4),
        rtol=1e-6,
        atol=1e-6,
    )


def test_a_weighted_log_likelihood_is_the_hand_computed_density() -> None:
    """The probe's two cases against torch's own densities: a ``Normal`` and
    a ``Categorical`` whose ``log_likelihood`` weights the inherited
    per-position densities (float64)."""
    weights = torch.tensor([1.0, 0.5], dtype=torch.float64)

    class ColumnWeightedNormal(bnn.Normal):
        def log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
            return (self.position_log_likelihood(output, target) * weights).sum(-1)

    class LabelWeightedCategorical(bnn.Categorical):
        def log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
            return (self.position_log_likelihood(output, target) * weights).sum(-1)

    torch.manual_seed(0)
    out, y = (
        torch.randn(3, 4, 2, dtype=torch.float64),
        torch.randn(4, 2, dtype=torch.float64),
    )
    hand = (torch.distributions.Normal(out, 0.5).log_prob(y) * weights).sum(-1)
    torch.testing.assert_close(
        ColumnWeightedNormal(scale=0.5).log_likelihood(out, y),
        hand,
        rtol=1e-12,
        atol=0.0,
    )
    logits = torch.randn(3, 4, 2, 5, dtype=torch.float64)
    labels = torch.randint(0, 5, (4, 2))
    picked = logits.log_softmax(-1).gather(-1, labels.expand(3, 4, 2).unsqueeze(-1))
    hand = (picked.squeeze(-1) * weights).sum(-1)
    torch.testing.assert_close(
        LabelWeightedCategorical().log_likelihood(logits, labels),
        hand,
        rtol=1e-12,
        atol=0.0,
    )
