"""Post-hoc calibration: identities, consistency of the summaries, and fits."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pyro
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyrolite_bnn as bnn
from pyrolite_bnn import metrics

CLASSES = bnn.Categorical()

CLASSIFICATION = [bnn.Categorical, bnn.Bernoulli]


def _logits(likelihood: bnn.PredictiveDistribution) -> torch.Tensor:
    shape = (7, 5, 3) if isinstance(likelihood, bnn.Categorical) else (7, 5, 1)
    return 2 * torch.randn(shape)


def _regression_outputs(likelihood: bnn.PredictiveDistribution) -> torch.Tensor:
    if isinstance(likelihood, bnn.HeteroscedasticNormal):
        return torch.randn(7, 5, 2)
    return torch.randn(7, 5, 1)


REGRESSION = [lambda: bnn.Normal(scale=0.3), bnn.HeteroscedasticNormal]


@pytest.mark.parametrize("make", CLASSIFICATION)
def test_temperature_one_is_the_identity(make) -> None:  # type: ignore[no-untyped-def]
    likelihood = make()
    out = _logits(likelihood)
    plain = bnn.Prediction(out, likelihood)
    same = bnn.Prediction(out, bnn.TemperatureScaling(1.0).wrap(likelihood))
    for name in ("probs", "entropy", "aleatoric", "mutual_information", "mean"):
        torch.testing.assert_close(getattr(same, name), getattr(plain, name))


@pytest.mark.parametrize("make", REGRESSION)
def test_variance_factor_one_is_the_identity(make) -> None:  # type: ignore[no-untyped-def]
    likelihood = make()
    out = _regression_outputs(likelihood)
    plain = bnn.Prediction(out, likelihood)
    same = bnn.Prediction(out, bnn.VarianceScaling(1.0).wrap(likelihood))
    for name in ("mean", "variance", "aleatoric_var", "epistemic_var"):
        torch.testing.assert_close(getattr(same, name), getattr(plain, name))
    for got, expected in zip(same.interval(0.9), plain.interval(0.9), strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("make", CLASSIFICATION)
def test_temperature_scales_every_particles_logits(make) -> None:  # type: ignore[no-untyped-def]
    likelihood = make()
    out = _logits(likelihood)
    calibrated = bnn.Prediction(out, bnn.TemperatureScaling(2.5).wrap(likelihood))
    reference = bnn.Prediction(out / 2.5, likelihood)
    for name in ("probs", "entropy", "aleatoric", "mutual_information"):
        torch.testing.assert_close(getattr(calibrated, name), getattr(reference, name))
    torch.testing.assert_close(
        calibrated.entropy, calibrated.aleatoric + calibrated.mutual_information
    )
    # A higher temperature makes every particle less confident (the entropy of
    # softmax(z / T) grows with T); the mixture's entropy need not grow.
    plain = bnn.Prediction(out, likelihood)
    assert bool((calibrated.aleatoric > plain.aleatoric).all())


@pytest.mark.parametrize("make", REGRESSION)
def test_variance_scaling_stretches_the_mixture(make) -> None:  # type: ignore[no-untyped-def]
    likelihood = make()
    out = _regression_outputs(likelihood)
    factor = 2.25
    wrapped = bnn.VarianceScaling(factor).wrap(likelihood)
    calibrated, plain = bnn.Prediction(out, wrapped), bnn.Prediction(out, likelihood)
    torch.testing.assert_close(calibrated.mean, plain.mean)
    for name in ("variance", "aleatoric_var", "epistemic_var"):
        torch.testing.assert_close(
            getattr(calibrated, name), factor * getattr(plain, name)
        )
    # Quantiles: the affine shortcut equals the exact quantile of the stretched
    # mixture, found by bisection on the calibrated per-particle moments.
    loc, var = wrapped.moments(out)
    for q in (0.05, 0.5, 0.9):
        stretched = calibrated.quantile(q)
        torch.testing.assert_close(
            stretched, plain.mean + 1.5 * (plain.quantile(q) - plain.mean)
        )
        z = (stretched - loc) / var.sqrt()
        cdf = torch.distributions.Normal(0.0, 1.0).cdf(z).mean(0)
        torch.testing.assert_close(cdf, torch.full_like(cdf, q), rtol=0, atol=1e-5)
    # The observation density is the Normal of the calibrated moments.
    y = torch.randn(5)
    expected = torch.distributions.Normal(loc, var.sqrt()).log_prob(y)
    torch.testing.assert_close(wrapped.log_likelihood(out, y), expected)


def test_calibrations_refuse_other_likelihoods_and_bad_values() -> None:
    with pytest.raises(TypeError, match="classification likelihood"):
        bnn.TemperatureScaling().wrap(bnn.Normal())
    for calibration in (bnn.TemperatureScaling(), bnn.VarianceScaling()):
        # TemperatureScaling raised AttributeError: no attribute 'is_classification'
        with pytest.raises(TypeError, match=r"predictive must be a likelihood.*'cat'"):
            calibration.wrap("cat")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Gaussian likelihood"):
        bnn.VarianceScaling().wrap(bnn.Categorical())
    with pytest.raises(TypeError, match="Gaussian likelihood"):
        bnn.VarianceScaling().wrap(bnn.StudentT())
    with pytest.raises(ValueError, match="temperature must be positive"):
        bnn.TemperatureScaling(0.0)
    with pytest.raises(ValueError, match="factor must be positive"):
        bnn.VarianceScaling(math.inf)


def test_calibration_is_a_buffer_and_leaves_the_likelihood_alone() -> None:
    cal = bnn.VarianceScaling(3.0)
    assert set(cal.state_dict()) == {"factor"}
    likelihood = bnn.Normal()
    before = dict(likelihood.named_parameters())
    wrapped = cal.wrap(likelihood)
    assert list(wrapped.parameters()) == []  # the base is referenced, not owned
    assert dict(likelihood.named_parameters()) == before
    assert "factor=3" in repr(wrapped)


def _overconfident_classifier() -> tuple[bnn.VILinear, torch.Tensor]:
    """A linear softmax model whose logits are 4x the data-generating ones."""
    w = torch.randn(3, 5)
    net = bnn.VILinear(
        5, 3, bias=False, variational=bnn.MeanFieldNormal(init_scale=0.05)
    )
    with torch.no_grad():
        net.posterior["weight"].loc_unconstrained.copy_(4 * w)
    return net, w


@pytest.mark.statistical
def test_temperature_scaling_repairs_an_overconfident_classifier() -> None:
    """Fit T on 1000 validation points, measure ECE on 2000 fresh ones.

    Tolerances: over seeds 0-4 the fitted temperature was 3.75-4.15 (the true
    over-confidence is 4; the NLL fit's relative standard error with 1000
    points is about 4 %), so 15 % is over 3 standard errors. The held-out ECE
    went from 0.16-0.21 to 0.012-0.021; with 2000 points and 15 bins the ECE of
    a calibrated model is about 0.015 from sampling alone, so < 0.04 is met by
    a calibrated model and missed by the uncalibrated one by a factor 4.
    """
    torch.manual_seed(0)
    net, w = _overconfident_classifier()

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 5)
        return x, torch.distributions.Categorical(logits=x @ w.T).sample()

    (x_val, y_val), (x_test, y_test) = data(1000), data(2000)
    likelihood = bnn.Categorical()
    cal = bnn.calibrate(net, x_val, y_val, likelihood)
    assert isinstance(cal, bnn.TemperatureScaling)
    assert abs(float(cal.temperature) - 4.0) / 4.0 < 0.15
    before = bnn.predict(net, x_test, likelihood)
    after = cal.predict(net, x_test, likelihood)
    ece_before = float(metrics.expected_calibration_error(before.probs, y_test))
    ece_after = float(metrics.expected_calibration_error(after.probs, y_test))
    assert ece_before > 0.1
    assert ece_after < 0.04


@pytest.mark.statistical
def test_variance_scaling_repairs_an_overconfident_regression() -> None:
    """Noise fixed at 0.1 where the data have 0.5: intervals far too narrow.

    Tolerances: the ideal variance factor is (0.25 + 0.0075) / (0.01 + 0.0075)
    = 14.7 (noise plus the posterior's epistemic variance, 3 * 0.05^2); the fit
    on 1000 points has a relative standard error of about sqrt(2 / 1000) = 4.5 %,
    so 20 % is over 4 standard errors. Coverage of the 95 % interval on 2000
    fresh points has a binomial standard error of 0.005 plus about 0.004 from
    the fitted factor; 0.03 is over 4 combined standard errors (seeds 0-4 gave
    0.928-0.958 after, 0.38-0.41 before).
    """
    torch.manual_seed(0)
    w = torch.randn(3)

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 3)
        return x, x @ w + 0.5 * torch.randn(n)

    (x_val, y_val), (x_test, y_test) = data(1000), data(2000)
    net = bnn.VILinear(
        3, 1, bias=False, variational=bnn.MeanFieldNormal(init_scale=0.05)
    )
    with torch.no_grad():
        net.posterior["weight"].loc_unconstrained.copy_(w[None])
    likelihood = bnn.Normal(scale=0.1)
    cal = bnn.calibrate(net, x_val, y_val, likelihood)
    assert isinstance(cal, bnn.VarianceScaling)
    assert abs(float(cal.factor) - 14.7) / 14.7 < 0.2
    before = bnn.predict(net, x_test, likelihood)
    after = bnn.predict(net, x_test, likelihood, calibration=cal)
    covered_before = float(metrics.interval_coverage(*before.interval(), y_test))
    covered_after = float(metrics.interval_coverage(*after.interval(), y_test))
    assert covered_before < 0.5
    assert abs(covered_after - 0.95) < 0.03


@pytest.mark.statistical
def test_factors_far_beyond_the_first_search_interval_are_found() -> None:
    """A noise scale 500x too small needs a variance factor of ~2.5e5 (> e^7).

    The validation NLL is minimised where the factor times the mean predicted
    variance equals the mean squared residual: with a fixed weight and the
    exact mean, factor = mean(residual^2) / 0.001^2, computed from the data
    here; the fit must land within 1 % of it (a 1-D convex objective).
    Logits scaled by 1e4 need a temperature of ~1e4 (> e^7) likewise.
    """
    torch.manual_seed(0)
    x = torch.randn(500, 1)
    y = 2.0 * x[:, 0] + 0.5 * torch.randn(500)
    outputs = (2.0 * x).unsqueeze(0)  # one particle: the exact mean
    likelihood = bnn.Normal(scale=0.001)
    cal = bnn.VarianceScaling().fit(outputs, y, likelihood)
    ideal = float((y - outputs[0, :, 0]).square().mean()) / 0.001**2
    assert ideal > 1e5
    assert abs(float(cal.factor) - ideal) / ideal < 0.01
    labels = torch.randint(0, 3, (400,))
    logits = torch.randn(400, 3) + 1.5 * F.one_hot(labels, 3)
    tempered = bnn.TemperatureScaling().fit(logits.unsqueeze(0), labels, CLASSES)
    hot = bnn.TemperatureScaling().fit(1e4 * logits.unsqueeze(0), labels, CLASSES)
    ratio = float(hot.temperature) / (1e4 * float(tempered.temperature))
    assert abs(ratio - 1) < 0.01


def test_factor_at_the_search_limit_warns() -> None:
    """Targets ~1e9 times the likelihood's scale: the factor cannot be reached."""
    torch.manual_seed(0)
    y = 1e3 * torch.randn(200)
    outputs = torch.zeros(1, 200, 1)
    with pytest.warns(UserWarning, match="at the search limit"):
        cal = bnn.VarianceScaling().fit(outputs, y, bnn.Normal(scale=1e-6))
    assert float(cal.factor) == pytest.approx(math.exp(30.0), rel=0.1)


def test_fit_with_an_untrained_learned_scale_warns() -> None:
    """``fit`` with a fresh ``bnn.Normal()`` in place of ``loss_fn.predictive``:
    its scale of 1.0 was never trained, the factor shrank it to the data
    (0.0149) and was then applied to the trained scale (0.153): 95 % intervals
    covered 26 % of the test targets, silently. ``predict``, ``calibrate`` and
    ``laplace`` warned; ``fit`` warns alike, at the caller's line."""
    outputs, y = torch.randn(4, 50, 1), torch.randn(50)
    message = (
        r"Normal\(scale=learned, now 1\) has learned parameters .*loss_fn\.predictive"
    )
    with pytest.warns(UserWarning, match=message) as caught:
        bnn.VarianceScaling().fit(outputs, y, bnn.Normal())
    assert caught[0].filename == __file__
    trained = bnn.Normal()
    with torch.no_grad():
        trained.raw_scale.sub_(0.5)
    bnn.VarianceScaling().fit(outputs, y, trained)  # no warning (errors under -W)
    bnn.VarianceScaling().fit(outputs, y, bnn.Normal(scale=0.5))


def test_calibrate_warns_once_about_an_untrained_likelihood() -> None:
    """``calibrate`` predicts (which warns) and fits: one warning, not two."""
    net = bnn.VILinear(3, 1)
    x, y = torch.randn(20, 3), torch.randn(20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bnn.calibrate(net, x, y, bnn.Normal(), samples=4)
    untrained = [w for w in caught if "initial values" in str(w.message)]
    assert len(untrained) == 1


def test_calibrated_likelihood_checks_outputs_as_its_base() -> None:
    wrapped = bnn.TemperatureScaling(2.0).wrap(CLASSES)
    with pytest.raises(ValueError, match=r"Categorical expects logits"):
        wrapped.check_output(torch.zeros(4, 3))
    stretched = bnn.VarianceScaling(2.0).wrap(bnn.HeteroscedasticNormal())
    with pytest.raises(ValueError, match=r"HeteroscedasticNormal"):
        stretched.check_output(torch.zeros(4, 3, 3))


@pytest.mark.parametrize("particles", [8, 100])
def test_column_targets_fit_the_factor_of_flat_targets(particles: int) -> None:
    """``(N, 1)`` targets, as the loss accepts them, against ``(S, N, 1)`` outputs.

    The stretched likelihood was laid out ``(S, N)``: with ``S == N`` it paired
    particle ``s`` with target ``s`` (factor 0.96 instead of ~130; the two
    fits below use the same outputs, so they agree to float precision), else
    torch raised a size error.
    """
    torch.manual_seed(0)
    x = torch.randn(100, 3)
    y = 2.0 * x.sum(1, keepdim=True) + torch.randn(100, 1)
    outputs = 2.0 * x.sum(1)[None, :, None] + 0.1 * torch.randn(particles, 100, 1)
    likelihood = bnn.Normal(scale=0.1)
    column = bnn.VarianceScaling().fit(outputs, y, likelihood)
    flat = bnn.VarianceScaling().fit(outputs, y[:, 0], likelihood)
    assert float(flat.factor) > 50  # residual variance 1 against 0.01 + 0.01
    assert float(column.factor) == pytest.approx(float(flat.factor), rel=1e-4)
    stretched = column.wrap(likelihood)
    torch.testing.assert_close(
        stretched.log_likelihood(outputs, y), stretched.log_likelihood(outputs, y[:, 0])
    )


def test_calibration_refuses_an_empty_validation_set() -> None:
    """It fitted a factor of 1e-13 (the search limit) to no data."""
    net = bnn.VILinear(3, 2)
    with pytest.raises(ValueError, match="no examples"):
        bnn.calibrate(net, torch.randn(0, 3), torch.zeros(0).long(), CLASSES)
    with pytest.raises(ValueError, match="no examples"):
        bnn.VarianceScaling().fit(torch.zeros(4, 0, 1), torch.zeros(0), bnn.Normal(1.0))


def test_validation_data_fitted_exactly_leave_the_identity() -> None:
    """Every example right: the NLL falls as T -> 0, and T = 1e-13 came back.

    That made every prediction certain (iris: test NLL 0.08 -> 2.9). The
    identity is kept, with a warning that says why.
    """
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (24,))
    logits = 3.0 * F.one_hot(labels, 3).float().unsqueeze(0)  # all right
    with pytest.warns(UserWarning, match="24 validation example"):
        cal = bnn.TemperatureScaling().fit(logits, labels, CLASSES)
    assert float(cal.temperature) == 1.0
    exact = torch.zeros(1, 10, 1)  # zero residuals
    with pytest.warns(UserWarning, match="left at 1"):
        factor = bnn.VarianceScaling().fit(exact, torch.zeros(10), bnn.Normal(1.0))
    assert float(factor.factor) == 1.0


def _vote_logits(
    seed: int, particles: int = 30, count: int = 400
) -> tuple[torch.Tensor, torch.Tensor]:
    """Particles certain of their votes, 85 % of them right, margins 0.5-6."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (count,), generator=g)
    right = torch.rand(particles, count, generator=g) < 0.85
    other = (labels + torch.randint(1, 3, (particles, count), generator=g)) % 3
    vote = torch.where(right, labels.expand(particles, count), other)
    margin = 0.5 + 5.5 * torch.rand(particles, count, 1, generator=g)
    noise = 0.1 * torch.randn(particles, count, 3, generator=g)
    return margin * F.one_hot(vote, 3).float() + noise, labels


def test_temperatures_that_leave_only_vote_shares_are_not_chased() -> None:
    """T -> 0 makes the predictive the particles' vote shares: a flat NLL.

    Its exact minimiser is an extreme temperature fitted to the validation
    set's noise (digits: T = 0.002, test NLL 0.163 against 0.108 at T = 0.1);
    here the search ran to its limit and claimed every example was predicted
    exactly. The temperature nearest 1 within 0.001 nats of the best is kept.
    """
    logits, labels = _vote_logits(0)
    cal = bnn.TemperatureScaling().fit(logits, labels, CLASSES)
    temperature = float(cal.temperature)

    def nll(t: float) -> float:
        scaled = bnn.TemperatureScaling(t).wrap(CLASSES)
        return float(-scaled.mixture_log_likelihood(logits, labels).mean())

    best = min(nll(math.exp(t / 10)) for t in range(-100, 1))
    assert nll(temperature) <= best + 1e-3 + 1e-9
    assert 0.03 < temperature < 0.3
    assert nll(temperature) < nll(1.0) - 0.1


def _reference_nll(
    logits: torch.Tensor, labels: torch.Tensor, log_t: torch.Tensor
) -> torch.Tensor:
    """Mixture NLLs of float64 ``logits (S, N, C)`` at temperatures ``exp(log_t)``.

    ``-mean_n log mean_s softmax(logits_s / T)[y_n]`` for each of the ``(G,)``
    temperatures, written out apart from the library.
    """
    scaled = logits / log_t.exp().reshape(-1, 1, 1, 1)  # (G, S, N, C)
    chosen = scaled.log_softmax(-1)[..., torch.arange(len(labels)), labels]
    return -(chosen.logsumexp(1) - math.log(logits.shape[0])).mean(-1)


@pytest.mark.parametrize("particles", [1, 8])
def test_one_or_agreeing_particles_get_the_nll_minimiser(particles: int) -> None:
    """No vote shares without disagreeing particles: the exact NLL minimiser.

    The rule for vote shares (the temperature nearest 1 within 0.001 nats of
    the best) fired for one particle (``mode="mean"``) and for particles that
    agree, whose NLL has a sharp minimum: T = 0.0229 against the minimiser
    0.0199 (the true temperature is 0.02), test ECE 1.7x. The true logits are
    ``N(0, 15^2)``, the network's a fiftieth of them; 8 particles differ by
    1e-3 of their logits. The reference minimiser: a grid of ``log T`` in
    steps of 0.01 on [log 1e-3, log 1], refined around its best in steps of
    1e-3, then 1e-5 (the NLL of one particle is convex in 1/T); the fit's
    golden-section search is exact to about 1e-11, so ``log T`` agrees within
    the fine step, 1e-5 (0.001 %).
    """
    g = torch.Generator().manual_seed(0)
    true = 15.0 * torch.randn(1000, 3, generator=g, dtype=torch.float64)
    labels = torch.multinomial(true.softmax(-1), 1, generator=g)[:, 0]
    spread = 1e-3 * torch.randn(particles, 1000, 3, generator=g, dtype=torch.float64)
    logits = true / 50 * (1.0 + spread) if particles > 1 else (true / 50)[None]
    grid = torch.arange(-6.91, 0.0, 0.01, dtype=torch.float64)
    for step, points in ((1e-3, 20), (1e-5, 100)):  # +-2 and +-1 coarser steps
        centre = grid[_reference_nll(logits, labels, grid).argmin()]
        grid = centre + step * torch.arange(-points, points + 1, dtype=torch.float64)
    best = float(grid[_reference_nll(logits, labels, grid).argmin()])
    assert -4.5 < best < -3.4  # near log 0.02: the grid's edges are far

    fitted = bnn.TemperatureScaling().fit(logits, labels, CLASSES)
    assert abs(math.log(float(fitted.temperature)) - best) <= 1e-5


def _messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught]


@pytest.mark.parametrize("make", CLASSIFICATION)
def test_a_classifier_worse_than_uniform_on_one_class_warns(make) -> None:  # type: ignore[no-untyped-def]
    """A split of one class the classifier gets wrong: the NLL falls towards
    uniform predictions as T grows and is flat to float32 precision from
    ~2e7 on, where the search stopped (T 1.9e7 or 4e7, anywhere on the
    plateau) without the documented "no better than uniform" warning, which
    only fired at e^30. The plateau is the limit: T = e^30, with the
    warning, which names the plateau and the one class."""
    likelihood = make()
    g = torch.Generator().manual_seed(0)
    if isinstance(likelihood, bnn.Categorical):
        logits = 3.0 * torch.randn(8, 60, 3, generator=g)
        logits[..., 0] -= 2.0  # class 0, the label, less likely than uniform
        labels = torch.zeros(60, dtype=torch.long)
    else:
        logits = 3.0 * torch.randn(8, 60, 1, generator=g) + 2.0
        labels = torch.zeros(60)
    with pytest.warns(UserWarning, match="no better than uniform") as caught:
        cal = bnn.TemperatureScaling().fit(logits, labels, likelihood)
    (message,) = _messages(caught)
    assert "is at the search limit e^30" in message
    assert "flat to float precision from" in message
    assert "no better than uniform" in message
    assert "every one of the 60 validation labels is class 0" in message
    assert float(cal.temperature) == pytest.approx(math.exp(30.0), rel=1e-6)
    probs = cal.wrap(likelihood).predictive_mean(logits)  # uniform
    classes = 3 if isinstance(likelihood, bnn.Categorical) else 2
    torch.testing.assert_close(
        probs, torch.full_like(probs, 1 / classes), rtol=0, atol=1e-6
    )


def test_labels_of_several_classes_get_no_one_class_note() -> None:
    """The plateau warning on mixed labels names no single class."""
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (60,), generator=g)
    logits = torch.randn(8, 60, 3, generator=g) - 3.0 * F.one_hot(labels, 3)
    with pytest.warns(UserWarning, match="no better than uniform") as caught:
        bnn.TemperatureScaling().fit(logits, labels, CLASSES)
    assert not any("validation labels is class" in m for m in _messages(caught))


def test_every_label_ignored_says_so() -> None:
    """Every label equal to ignore_index: the NLL of no position is 0 for every
    temperature, and the warning blamed the predictions ("e.g. all-equal
    logits"). It says there are no observed labels."""
    logits = torch.randn(4, 30, 3, generator=torch.Generator().manual_seed(0))
    ignoring = bnn.Categorical(ignore_index=-1)
    with pytest.warns(UserWarning, match="observed label") as caught:
        cal = bnn.TemperatureScaling().fit(logits, torch.full((30,), -1), ignoring)
    (message,) = _messages(caught)
    assert "none of the 30 validation example(s) has an observed label" in message
    assert "ignore_index" in message
    assert "all-equal logits" not in message
    assert float(cal.temperature) == 1.0
    with pytest.raises(ValueError, match="no examples"):  # still an error
        bnn.TemperatureScaling().fit(
            torch.zeros(4, 0, 3), torch.zeros(0).long(), ignoring
        )


def test_an_nll_infinite_at_every_value_says_so() -> None:
    """Targets 1e30 away (float32): every log-density overflows whatever the
    factor, and a label with a -inf logit in every particle has probability 0
    whatever the temperature. The NLL is inf throughout; its first grid point
    won, the search ran to the lower limit and warned "every one is
    predicted right". The warning says the NLL is infinite, and why."""
    g = torch.Generator().manual_seed(0)
    far = 1e30 * torch.randn(40, generator=g)
    with pytest.warns(UserWarning, match="is inf for every") as caught:
        cal = bnn.VarianceScaling().fit(torch.zeros(1, 40, 1), far, bnn.Normal(0.5))
    (message,) = _messages(caught)
    assert (
        "is inf for every variance factor the search tried (e^-30 to e^30)" in message
    )
    assert "log-density overflows in torch.float32" in message
    assert "predicted right" not in message
    assert float(cal.factor) == 1.0
    logits = torch.randn(4, 30, 3, generator=g)
    labels = torch.randint(0, 3, (30,), generator=g)
    logits[:, 0, labels[0]] = -math.inf
    with pytest.warns(UserWarning, match="is inf for every") as caught:
        cal = bnn.TemperatureScaling().fit(logits, labels, CLASSES)
    (message,) = _messages(caught)
    assert "is inf for every temperature" in message
    assert "probability 0 in every particle" in message
    assert float(cal.temperature) == 1.0


def test_an_nll_infinite_near_the_identity_searches_the_whole_range() -> None:
    """Targets 1e15 with a noise scale of 1e-6: the NLL overflows for factors
    up to ~e^17 and is finite above, so the search, which started at
    [-7, 7], went down and called the data "predicted right" (factor 1,
    intervals 1e6 times too narrow). A grid of the whole range finds the
    limit, with its warning."""
    target = 1e15 * torch.randn(40, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="at the search limit e") as caught:
        cal = bnn.VarianceScaling().fit(
            torch.zeros(1, 40, 1), target, bnn.Normal(scale=1e-6)
        )
    assert "scale is far from the data's" in _messages(caught)[0]
    assert float(cal.factor) == pytest.approx(math.exp(30.0), rel=0.1)


def test_predictions_the_temperature_does_not_change_say_so() -> None:
    """All-equal logits: the NLL is flat, not "all predicted exactly"."""
    labels = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="same for every temperature") as caught:
        cal = bnn.TemperatureScaling().fit(torch.zeros(4, 30, 3), labels, CLASSES)
    assert float(cal.temperature) == 1.0
    assert not any("predicted right" in str(w.message) for w in caught)


@pytest.mark.parametrize(
    ("calibration", "likelihood", "output_shape", "target"),
    [
        (bnn.VarianceScaling(), bnn.Normal(scale=0.5), (5, 6, 1), torch.randn(6, 1)),
        (bnn.VarianceScaling(), bnn.Normal(scale=0.5), (5, 6, 1), torch.randn(6)),
        (bnn.VarianceScaling(), bnn.Normal(scale=0.5), (5, 6), torch.randn(6)),
        (bnn.VarianceScaling(), bnn.Normal(scale=0.5), (5, 6, 3), torch.randn(6, 3)),
        (bnn.VarianceScaling(), bnn.HeteroscedasticNormal(), (5, 6, 2), torch.randn(6)),
        (bnn.TemperatureScaling(), CLASSES, (5, 6, 3), torch.randint(0, 3, (6,))),
        (bnn.TemperatureScaling(), bnn.Bernoulli(), (5, 6, 1), torch.ones(6, 1)),
    ],
)
def test_identity_calibration_keeps_the_base_likelihood_for_every_layout(
    calibration: bnn.Calibration,
    likelihood: bnn.PredictiveDistribution,
    output_shape: tuple[int, ...],
    target: torch.Tensor,
) -> None:
    """Guard for the class of the column-target bug: factor/temperature 1."""
    torch.manual_seed(0)
    output = torch.randn(output_shape)
    expected = likelihood.log_likelihood(output, target)
    wrapped = calibration.wrap(likelihood)
    torch.testing.assert_close(wrapped.log_likelihood(output, target), expected)
    torch.testing.assert_close(
        wrapped.mixture_log_likelihood(output, target),
        likelihood.mixture_log_likelihood(output, target),
    )


def test_calibrate_names_what_it_supports_and_the_users_likelihood() -> None:
    net = bnn.VILinear(3, 1)
    x = torch.randn(8, 3)
    with pytest.raises(TypeError, match=r"calibrate fits .* got Poisson"):
        bnn.calibrate(net, x, torch.ones(8), bnn.Poisson(), samples=4)
    with pytest.raises(TypeError, match="Categorical targets must be a torch"):
        bnn.calibrate(bnn.VILinear(3, 2), x, np.zeros(8), CLASSES, samples=4)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"torch\.as_tensor"):
        bnn.predict(net, x.numpy(), bnn.Normal())  # type: ignore[arg-type]


class _LabelAndValue(nn.Module):
    """Two heads: a class and a value; ``kind`` picks a dict or a tuple."""

    def __init__(self, kind: str = "dict") -> None:
        super().__init__()
        self.kind = kind
        self.body = bnn.VILinear(3, 8)
        self.label = bnn.VILinear(8, 3)
        self.value = bnn.VILinear(8, 1)

    def forward(self, x: torch.Tensor) -> Any:
        h = torch.relu(self.body(x))
        label, value = self.label(h), self.value(h)
        return (
            {"label": label, "value": value} if self.kind == "dict" else (label, value)
        )


class _OneHead(nn.Module):
    """The wrapper route: the network with one of its heads as its output."""

    def __init__(self, heads: _LabelAndValue, head: str) -> None:
        super().__init__()
        self.heads, self.head = heads, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.heads(x)
        return (
            out[self.head]
            if self.heads.kind == "dict"
            else out[["label", "value"].index(self.head)]
        )  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_calibrate_fits_every_head_of_a_network_with_several_outputs(kind: str) -> None:
    """calibrate(net, x, y, likelihood) on a network returning heads was told
    to give one likelihood per output, which it then refused ("predictive must
    be a likelihood"). Now each head gets its calibration, from the same
    particles: the one calibrate fits on a wrapper returning that head."""
    net = _LabelAndValue(kind)
    x = torch.randn(40, 3)
    value_likelihood = bnn.Normal(scale=0.2)
    # Targets the network explains: a temperature and a factor near 1.
    probs = bnn.predict(_OneHead(net, "label"), x, CLASSES, samples=20).probs
    labels = torch.distributions.Categorical(probs).sample()
    mean = bnn.predict(_OneHead(net, "value"), x, value_likelihood, samples=20).mean
    values = mean + 0.3 * torch.randn(40)
    if kind == "dict":
        likelihoods: Any = {"label": CLASSES, "value": value_likelihood}
        targets: Any = {"label": labels, "value": values}
    else:
        likelihoods, targets = (CLASSES, value_likelihood), (labels, values)
    pyro.set_rng_seed(5)
    fitted = bnn.calibrate(net, x, targets, likelihoods, samples=6)
    by_head = (
        dict(fitted)
        if kind == "dict"
        else dict(zip(["label", "value"], fitted, strict=True))
    )
    assert isinstance(by_head["label"], bnn.TemperatureScaling)
    assert isinstance(by_head["value"], bnn.VarianceScaling)
    for head, likelihood, target, parameter in [
        ("label", CLASSES, labels, "temperature"),
        ("value", value_likelihood, values, "factor"),
    ]:
        pyro.set_rng_seed(5)
        alone = bnn.calibrate(_OneHead(net, head), x, target, likelihood, samples=6)
        torch.testing.assert_close(
            getattr(by_head[head], parameter),
            getattr(alone, parameter),
            rtol=1e-6,
            atol=0,
        )
    preds = bnn.predict(net, x, likelihoods, samples=4, calibration=fitted)
    label_pred = preds["label"] if kind == "dict" else preds[0]
    assert label_pred is not None
    assert label_pred.probs.shape == (40, 3)


def test_calibrate_per_head_needs_a_target_per_likelihood() -> None:
    net = _LabelAndValue()
    x, labels = torch.randn(10, 3), torch.randint(0, 3, (10,))
    likelihoods = {"label": CLASSES, "value": bnn.Normal(scale=0.2)}
    with pytest.raises(TypeError, match=r"output 'value' but no target for it"):
        bnn.calibrate(net, x, {"label": labels}, likelihoods, samples=4)
    with pytest.raises(
        TypeError,
        match=r"calibrate with one likelihood per output takes the targets y in "
        r"the same shape \(a dict by key\)",
    ):
        bnn.calibrate(net, x, labels, likelihoods, samples=4)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"calibrate\(net, x, \{'label': y\}"):
        bnn.calibrate(net, x, labels, CLASSES, samples=4)
    with pytest.raises(
        TypeError, match=r"calibrate fits .* got Poisson\(\) .*\(output 'value'\)"
    ):
        bnn.calibrate(
            net,
            x,
            {"label": labels, "value": labels},
            {"label": CLASSES, "value": bnn.Poisson()},
            samples=4,
        )


def test_non_finite_network_outputs_are_refused() -> None:
    """NaN outputs gave the identity, explained as 'all predicted exactly'."""
    logits = torch.randn(4, 30, 3)
    logits[1, 5, 0] = math.nan
    labels = torch.randint(0, 3, (30,))
    with pytest.raises(ValueError, match="network outputs contains 1 NaN"):
        bnn.TemperatureScaling().fit(logits, labels, CLASSES)
    with pytest.raises(ValueError, match="network outputs contains 1 NaN"):
        bnn.VarianceScaling().fit(logits[..., :1], torch.randn(30), bnn.Normal(1.0))


class _Tokens(nn.Module):
    """A Bayesian tagger's logits for two positions, ``(S, B, 2, 3)``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = bnn.VILinear(4, 6, variational=bnn.MeanFieldNormal(0.3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).unflatten(-1, (2, 3))  # type: ignore[no-any-return]


class _First(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[..., :1, :]  # type: ignore[no-any-return]


def test_temperature_scaling_ignores_the_ignored_positions() -> None:
    """The scaled likelihood read the padding label -100 as a class (the base
    likelihood's mask was skipped); the temperature is that of the kept
    positions alone (the same draws: the network cut to them)."""
    torch.manual_seed(0)
    net, x = _Tokens(), torch.randn(40, 4)
    y = torch.randint(0, 3, (40, 2))
    y[:, 1] = -100
    torch.manual_seed(1)
    full = bnn.calibrate(net, x, y, bnn.Categorical(ignore_index=-100), samples=8)
    torch.manual_seed(1)
    cut = bnn.calibrate(_First(net), x, y[:, :1], bnn.Categorical(), samples=8)
    torch.testing.assert_close(full.temperature, cut.temperature)
    assert float(full.temperature) != 1.0


def test_the_temperature_rule_reads_only_the_kept_positions() -> None:
    """The "mostly certain" rule (the temperature nearest 1 within 0.001 nats)
    read the padded positions' logits too: T = 0.0112 or 0.0275 for the same
    kept logits and labels, by the padding alone."""
    classes, likelihood = 3, bnn.Categorical(ignore_index=-100)
    torch.manual_seed(0)
    labels = torch.randint(0, classes, (200,))
    kept = 0.3 * torch.randn(4, 200, classes) + F.one_hot(labels, classes)
    y = torch.stack([labels, torch.full((200,), -100)], 1)
    alone = bnn.TemperatureScaling().fit(kept.unsqueeze(2), y[:, :1], likelihood)
    certain = 50.0 * F.one_hot(torch.zeros(4, 200, dtype=torch.long), classes)
    for padding in (torch.zeros(4, 200, classes), certain):
        fitted = bnn.TemperatureScaling().fit(
            torch.stack([kept, padding], 2), y, likelihood
        )
        torch.testing.assert_close(fitted.temperature, alone.temperature)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_outputs_are_fitted_in_float32(dtype: torch.dtype) -> None:
    """Each candidate was cast to the outputs' dtype, so bfloat16 outputs got
    a temperature on its grid (1.6445 against 1.6379, 0.4 %) and a factor
    0.14 % off. Now the fit is that of the same rounded outputs in float32,
    to float32 rounding of the result."""
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(10, 500, 5, generator=g) + 4 * torch.randn(
        1, 500, 5, generator=g
    )
    labels = torch.multinomial((logits.mean(0) / 2).softmax(-1), 1, generator=g)[:, 0]
    half = logits.to(dtype)
    fitted = bnn.TemperatureScaling().fit(half, labels, CLASSES).temperature
    reference = bnn.TemperatureScaling().fit(half.float(), labels, CLASSES)
    torch.testing.assert_close(fitted, reference.temperature, rtol=1e-6, atol=0)

    means = 0.3 * torch.randn(10, 500, 1, generator=g) + torch.randn(
        1, 500, 1, generator=g
    )
    targets = (means.mean(0)[:, 0] + 2 * torch.randn(500, generator=g)).to(dtype)
    likelihood = bnn.Normal(scale=0.5)
    factor = bnn.VarianceScaling().fit(means.to(dtype), targets, likelihood).factor
    expected = bnn.VarianceScaling().fit(
        means.to(dtype).float(), targets.float(), likelihood
    )
    torch.testing.assert_close(factor, expected.factor, rtol=1e-6, atol=0)


def test_tempered_log_densities_of_half_outputs_are_float32_accurate() -> None:
    """The logits were divided by the temperature in bfloat16 (3 significant
    digits) before the base likelihood read them as float32."""
    torch.manual_seed(0)
    out, y = torch.randn(4, 6, 5).to(torch.bfloat16), torch.randint(0, 5, (6,))
    tempered = bnn.TemperatureScaling(3.0).wrap(bnn.Categorical())
    log_p = tempered.log_likelihood(out, y)
    reference = (out.double() / 3.0).log_softmax(-1)[:, torch.arange(6), y]
    assert log_p.dtype == torch.float32
    torch.testing.assert_close(log_p.double(), reference, rtol=1e-5, atol=1e-5)


def _grid_minimiser(nll: Callable[[float], float], low: float, high: float) -> float:
    """The ``log`` parameter minimising ``nll`` on ``[low, high]``, to 1e-4.

    A grid in steps of 0.01, then steps of 1e-4 within one coarse step of its
    best (the per-position NLLs below have one minimum).
    """
    coarse = [low + 0.01 * i for i in range(round((high - low) / 0.01) + 1)]
    centre = min(coarse, key=nll)
    return min((centre + 1e-4 * i for i in range(-100, 101)), key=nll)


def _position_nll_of_labels(
    logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, log_t: float
) -> float:
    """``-mean_i log mean_s softmax(logits_s / T)[y_i]`` over the kept positions.

    The per-position predictive ``pred.probs`` reads, written out apart from
    the library; ``logits (S, B, ..., C)`` in float64.
    """
    index = labels.clamp_min(0).expand(logits.shape[:-1]).unsqueeze(-1)
    chosen = (logits / math.exp(log_t)).log_softmax(-1).gather(-1, index)[..., 0]
    mixture = chosen.logsumexp(0) - math.log(logits.shape[0])
    return float(-mixture[keep].mean())


def _disagreeing_logits(
    g: torch.Generator, positions: tuple[int, ...], padded: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Over-confident particles that disagree at every position, and labels.

    ``(10, 30, *positions, 4)`` float64 logits: the true logits plus noise
    drawn per particle and position, times 3; labels drawn from the true
    logits. ``padded``: the last third of the positions of every example is
    padding (label -100, logits of 50 for class 0).
    """
    truth = 2.0 * torch.randn(30, *positions, 4, generator=g, dtype=torch.float64)
    labels = torch.multinomial(truth.reshape(-1, 4).softmax(-1), 1, generator=g)
    labels = labels.reshape(30, *positions)
    noise = torch.randn(10, *truth.shape, generator=g, dtype=torch.float64)
    logits = 3.0 * (truth + 1.5 * noise)
    if padded:
        cut = positions[0] - positions[0] // 3
        labels[:, cut:] = -100
        logits[:, :, cut:] = 50.0 * F.one_hot(torch.tensor(0), 4).double()
    return logits, labels


@pytest.mark.parametrize(
    ("positions", "padded"), [((6, 6), False), ((12,), True)], ids=["pixels", "tokens"]
)
def test_temperature_is_the_per_position_nll_minimiser(
    positions: tuple[int, ...], padded: bool
) -> None:
    """Segmentation ``(S, B, H, W, C)`` and padded tagging ``(S, B, L, C)``.

    The fit minimised the joint NLL of all positions of an example,
    ``-log mean_s prod_i p_s(y_i)``, which the best particle dominates: T = 4.9
    where the per-pixel NLL of ``pred.probs`` is least at 2.0 (20 particles, 40
    images 8x8), and the held-out per-pixel NLL rose from 0.844 to 0.881
    (ECE 0.156 against 0.042 in the probe). Now the temperature is the
    minimiser of the per-position NLL (padding left out): ``log T`` within
    1e-3 of the reference's (the fit sums its NLL in float32, flat to about
    1e-7 near the minimum; the joint fit was 0.9 away), and on fresh data
    from the same process the per-position NLL is below that of the
    uncalibrated predictive.
    """
    g = torch.Generator().manual_seed(0)
    logits, labels = _disagreeing_logits(g, positions, padded)
    logits = logits.float().double()  # the values the fit reads
    likelihood = bnn.Categorical(ignore_index=-100 if padded else None)
    fitted = bnn.TemperatureScaling().fit(logits.float(), labels, likelihood)
    keep = labels != -100

    def nll(log_t: float) -> float:
        return _position_nll_of_labels(logits, labels, keep, log_t)

    best = _grid_minimiser(nll, -1.0, 3.0)
    assert 0.3 < best < 1.5  # T 1.35-4.5: over-confident, far from the edges
    assert abs(math.log(float(fitted.temperature)) - best) <= 1e-3

    fresh, fresh_labels = _disagreeing_logits(g, positions, padded)
    fresh_keep = fresh_labels != -100
    at_fit = _position_nll_of_labels(
        fresh, fresh_labels, fresh_keep, math.log(float(fitted.temperature))
    )
    assert at_fit < _position_nll_of_labels(fresh, fresh_labels, fresh_keep, 0.0)


def test_variance_factor_is_the_per_position_nll_minimiser() -> None:
    """Per-position regression ``(S, B, L, 1)`` with targets ``(B, L)``.

    Particle means that disagree at every position: the joint NLL of an
    example's 16 positions fitted the factor of its best particle. Now the
    factor minimises the per-position NLL of the stretched Gaussian mixture,
    written out here in float64 (``log factor`` within 1e-3, as for the
    temperature), and the fresh data's per-position NLL is below the
    identity's.
    """
    g = torch.Generator().manual_seed(0)
    scale = 0.1

    def data() -> tuple[torch.Tensor, torch.Tensor]:
        truth = torch.randn(30, 16, generator=g, dtype=torch.float64)
        noise = torch.randn(10, 30, 16, generator=g, dtype=torch.float64)
        y = truth + 0.3 * torch.randn(30, 16, generator=g, dtype=torch.float64)
        return (truth + 0.2 * noise).unsqueeze(-1), y

    def nll(means: torch.Tensor, y: torch.Tensor, log_factor: float) -> float:
        mu = means[..., 0]
        centre, stretch = mu.mean(0), math.exp(log_factor / 2)
        normal = torch.distributions.Normal(
            centre + stretch * (mu - centre), stretch * scale
        )
        log_p = normal.log_prob(y)
        return float(-(log_p.logsumexp(0) - math.log(mu.shape[0])).mean())

    means, y = (part.float() for part in data())
    fitted = bnn.VarianceScaling().fit(means, y, bnn.Normal(scale))
    best = _grid_minimiser(lambda t: nll(means.double(), y.double(), t), 0.0, 5.0)
    assert 0.5 < best < 2.0  # too narrow: variance 0.09 against 0.01 + 0.04
    assert abs(math.log(float(fitted.factor)) - best) <= 1e-3
    fresh, fresh_y = data()
    assert nll(fresh, fresh_y, math.log(float(fitted.factor))) < nll(
        fresh, fresh_y, 0.0
    )


def test_calibrate_fits_a_tagger_per_token() -> None:
    """``bnn.calibrate`` on a Bayesian tagger ``(B, L, F) -> (S, B, L, C)``.

    Its temperature minimised the NLL of whole sequences (T = 1.08 where the
    per-token optimum of the same particles was 0.69, in the probe); now it
    is the per-token minimiser for the same draws (the same seed), padding
    left out, within 1e-3 of ``log T`` (as above).
    """
    torch.manual_seed(0)
    net = bnn.VILinear(5, 3, bias=False, variational=bnn.MeanFieldNormal(0.3))
    w, x = torch.randn(3, 5), torch.randn(40, 8, 5)
    with torch.no_grad():
        net.posterior["weight"].loc_unconstrained.copy_(2 * w)
    labels = torch.distributions.Categorical(logits=x @ w.T).sample()
    labels[:, 6:] = -100
    likelihood = bnn.Categorical(ignore_index=-100)
    torch.manual_seed(1)
    cal = bnn.calibrate(net, x, labels, likelihood, samples=16)
    torch.manual_seed(1)
    logits = bnn.predict(net, x, likelihood, 16).samples.double()
    keep = labels != -100

    def nll(log_t: float) -> float:
        return _position_nll_of_labels(logits, labels, keep, log_t)

    best = _grid_minimiser(nll, -3.0, 3.0)
    assert abs(math.log(float(cal.temperature)) - best) <= 1e-3


@pytest.mark.parametrize("through", ["VarianceScaling().fit", "calibrate"])
def test_a_calibration_warning_points_at_the_callers_line(through: str) -> None:
    """A fixed stacklevel pointed into calibration.py from both entry points."""
    torch.manual_seed(0)
    y = 1e3 * torch.randn(50)
    likelihood = bnn.Normal(scale=1e-6)

    def run() -> object:
        if through == "calibrate":
            return bnn.calibrate(bnn.VILinear(2, 1), torch.randn(50, 2), y, likelihood)
        return bnn.VarianceScaling().fit(torch.zeros(1, 50, 1), y, likelihood)

    with pytest.warns(UserWarning, match="at the search limit") as caught:
        run()
    assert {w.filename for w in caught} == {__file__}


@pytest.mark.parametrize("kind", ["temperature", "variance"])
def test_a_calibration_never_written_after_to_empty_is_refused(kind: str) -> None:
    """``to_empty`` then a load without the temperature (factor) wrapped a
    likelihood in uninitialised memory, and a calibrated likelihood emptied
    so read it as its temperature (probe falsepos20b): both refused by name
    until written."""
    calibration: bnn.TemperatureScaling | bnn.VarianceScaling
    if kind == "temperature":
        calibration, likelihood = bnn.TemperatureScaling(2.0), bnn.Categorical()
        output = torch.randn(3, 2, 4)

        def summary(calibrated: bnn.PredictiveDistribution) -> torch.Tensor:
            return calibrated.class_probs(output)
    else:
        calibration, likelihood = bnn.VarianceScaling(3.0), bnn.Normal(scale=0.5)
        output = torch.randn(3, 2, 1)

        def summary(calibrated: bnn.PredictiveDistribution) -> torch.Tensor:
            return calibrated.moments(output)[1]

    (name,) = state = calibration.state_dict()
    wrapped = calibration.wrap(likelihood)
    expected = summary(wrapped)
    for module in (calibration, wrapped):
        module.to_empty(device="cpu")
    message = rf"'{name}' of shape \(\) holds no values"
    with pytest.raises(ValueError, match=message):
        calibration.wrap(likelihood)
    with pytest.raises(ValueError, match=message):
        summary(wrapped)
    calibration.load_state_dict(state)
    wrapped.load_state_dict(state)
    torch.testing.assert_close(summary(wrapped), expected, rtol=0, atol=0)
    torch.testing.assert_close(
        summary(calibration.wrap(likelihood)), expected, rtol=0, atol=0
    )


_CALIBRATIONS: dict[str, type[bnn.TemperatureScaling | bnn.VarianceScaling]] = {
    "temperature": bnn.TemperatureScaling,
    "variance": bnn.VarianceScaling,
}


@pytest.mark.parametrize("kind", sorted(_CALIBRATIONS))
def test_a_calibration_after_to_empty_is_written_by_a_fit_or_a_reset(kind: str) -> None:
    """The refusal told a calibration to "call reset_parameters() on the
    model's modules": it had none (AttributeError), and its fit refused to
    run, as it wrapped the likelihood first, which reads the parameter (probe
    falsepos23a). A fit writes it; ``reset_parameters`` returns to the value
    it was built with, a calibration built on the meta device too."""
    kind_of = _CALIBRATIONS[kind]
    likelihood: bnn.PredictiveDistribution
    if kind == "temperature":
        target = torch.tensor([0, 1, 2, 0, 1, 2])
        guesses = torch.tensor([0, 1, 2, 0, 2, 0])  # four right, two wrong
        outputs = 2.0 * F.one_hot(guesses, 3).float().expand(4, 6, 3)
        likelihood = bnn.Categorical()
    else:
        outputs, target = torch.randn(4, 6, 1), torch.randn(6)
        likelihood = bnn.Normal(scale=0.5)
    built = kind_of(2.0).state_dict()
    fitted = kind_of(2.0).fit(outputs, target, likelihood).state_dict()
    calibration = kind_of(2.0).to_empty(device="cpu")
    with pytest.raises(ValueError, match=r"fit it \(calibration\.fit\(") as refusal:
        calibration.wrap(likelihood)
    assert "reset_parameters()" in str(refusal.value)
    calibration.fit(outputs, target, likelihood)
    torch.testing.assert_close(calibration.state_dict(), fitted, rtol=0, atol=0)
    calibration.reset_parameters()
    torch.testing.assert_close(calibration.state_dict(), built, rtol=0, atol=0)
    with torch.device("meta"):
        calibration = kind_of(2.0)
    calibration = calibration.to_empty(device="cpu")
    calibration.reset_parameters()
    torch.testing.assert_close(calibration.state_dict(), built, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["temperature", "variance"])
def test_a_calibration_loads_after_to_empty_under_torchs_swap_flag(
    kind: str, swap_conversions: bool
) -> None:
    """Under torch's ``set_swap_module_params_on_conversion(True)``
    ``load_state_dict`` swaps buffers too, and the record of the memory
    ``to_empty`` gave held a weak reference to each: a calibration emptied
    could not be loaded (probe falsepos23a). Refused until loaded, it loads,
    converts and holds the source's value."""
    calibration: bnn.TemperatureScaling | bnn.VarianceScaling
    if kind == "temperature":
        calibration, likelihood = bnn.TemperatureScaling(2.0), bnn.Categorical()
    else:
        calibration, likelihood = bnn.VarianceScaling(3.0), bnn.Normal(scale=0.5)
    state = calibration.state_dict()
    (name,) = state
    calibration.to_empty(device="cpu")
    with pytest.raises(ValueError, match=rf"'{name}' of shape \(\) holds no values"):
        calibration.wrap(likelihood)
    calibration.load_state_dict(state)
    calibration.double()
    torch.testing.assert_close(
        calibration.state_dict()[name], state[name].double(), rtol=0, atol=0
    )
    calibration.wrap(likelihood)


@pytest.mark.parametrize(
    ("calibration", "likelihood", "plain", "outputs", "targets"),
    [
        (
            bnn.VarianceScaling,
            bnn.Normal(scale=0.3, missing="nan"),
            bnn.Normal(scale=0.3),
            lambda: torch.randn(8, 40, 2),
            lambda: 2.0 * torch.randn(40, 2),
        ),
        (
            bnn.VarianceScaling,
            bnn.HeteroscedasticNormal(missing="nan"),
            bnn.HeteroscedasticNormal(),
            lambda: torch.randn(8, 40, 2, 2),
            lambda: 2.0 * torch.randn(40, 2),
        ),
        (
            bnn.TemperatureScaling,
            bnn.Bernoulli(missing="nan"),
            bnn.Bernoulli(),
            lambda: 3.0 * torch.randn(8, 40, 2),
            lambda: torch.randint(0, 2, (40, 2)).float(),
        ),
    ],
    ids=["Normal", "HeteroscedasticNormal", "Bernoulli"],
)
@pytest.mark.parametrize("column", [False, True], ids=["(N, 2)", "(N, 1) each"])
def test_missing_targets_are_left_out_of_the_fit(
    calibration: type[bnn.Calibration],
    likelihood: bnn.PredictiveDistribution,
    plain: bnn.PredictiveDistribution,
    outputs: Callable[[], torch.Tensor],
    targets: Callable[[], torch.Tensor],
    column: bool,
) -> None:
    """Targets marked missing (NaN, ``missing="nan"``): the calibration is the
    one fitted on the observed target positions alone (the same outputs,
    one position per example), to float precision; also for a scalar target
    given as a column ``(N, 1)``, whose mask has the target's layout, not
    the densities'."""
    torch.manual_seed(0)
    out, y = outputs(), targets()
    y[0, 1] = y[5, 0] = y[9, 1] = math.nan
    y[12] = math.nan
    pair = isinstance(likelihood, bnn.HeteroscedasticNormal)
    if column:  # the first output alone, its targets (N, 1)
        out, y = out[:, :, :1], y[:, :1]
        if pair:
            out = out.squeeze(2)  # (S, N, 2): one (mean, raw scale) pair
    keep = ~y.isnan()
    masked = calibration().fit(out, y, likelihood)
    positions = keep.reshape(out.shape[1:-1] if pair else out.shape[1:])
    kept = calibration().fit(out[:, positions], y[keep], plain)
    (value,), (reference,) = masked.state_dict().values(), kept.state_dict().values()
    assert float(value) == pytest.approx(float(reference), rel=1e-5)
    assert float(reference) != pytest.approx(1.0, abs=0.05)  # a fit, not the identity


def test_calibrate_leaves_missing_targets_out() -> None:
    """``calibrate`` with the likelihood that leaves a missing entry out: the
    factor fitted on its predictions' observed entries. A likelihood whose
    own ``log_likelihood`` masked entries was fitted on every entry, the
    masked one too (factor 2503 for one entry of 400 marked -999, 1.066
    without that row: probe multitask); it is refused, naming the option."""
    torch.manual_seed(0)
    net = bnn.VISequential(bnn.VILinear(3, 8), nn.Tanh(), bnn.VILinear(8, 2))
    x, y = torch.randn(200, 3), torch.randn(200, 2)
    y[0, 1] = math.nan
    keep = ~y.isnan()
    likelihood = bnn.Normal(scale=1.0, missing="nan")
    torch.manual_seed(1)
    fitted = bnn.calibrate(net, x, y, likelihood, samples=16)
    torch.manual_seed(1)
    outputs = bnn.predict(net, x, likelihood, samples=16).samples
    reference = bnn.VarianceScaling().fit(outputs[:, keep], y[keep], bnn.Normal(1.0))
    assert float(fitted.factor) == pytest.approx(float(reference.factor), rel=1e-5)
    assert 0.5 < float(fitted.factor) < 2.0

    class MaskedNormal(bnn.Normal):
        def log_likelihood(
            self, output: torch.Tensor, target: torch.Tensor
        ) -> torch.Tensor:
            keep = target != -999.0
            noise = torch.distributions.Normal(output, self.noise_scale())
            log_p = noise.log_prob(torch.where(keep, target, 0.0))
            return (log_p * keep).sum(-1)

    marked = y.nan_to_num(nan=-999.0)
    with pytest.raises(NotImplementedError, match="missing='nan'"):
        bnn.calibrate(net, x, marked, MaskedNormal(scale=1.0), samples=16)


def test_temperature_follows_a_log_likelihood_built_from_the_inherited_positions() -> (
    None
):
    """A ``Categorical`` whose ``log_likelihood`` doubles the inherited
    ``position_log_likelihood`` recursed without end in the fit (probe
    falsepos28). Its temperature is that of the same doubling written per
    position, and not the plain ``Categorical``'s."""

    class Doubled(bnn.Categorical):
        def log_likelihood(
            self, output: torch.Tensor, target: torch.Tensor
        ) -> torch.Tensor:
            return 2 * self.position_log_likelihood(output, target)

    class DoubledPerLabel(bnn.Categorical):
        def position_log_likelihood(
            self, output: torch.Tensor, target: torch.Tensor
        ) -> torch.Tensor:
            return 2 * super().position_log_likelihood(output, target)

    torch.manual_seed(0)
    labels = torch.randint(0, 4, (300,))
    centre = 3.0 * F.one_hot(labels, 4).float() + torch.randn(300, 4)
    logits = centre + 2.0 * torch.randn(8, 300, 4)
    fitted = [
        float(bnn.TemperatureScaling().fit(logits, labels, likelihood).temperature)
        for likelihood in (Doubled(), DoubledPerLabel(), bnn.Categorical())
    ]
    assert fitted[0] == pytest.approx(fitted[1], rel=1e-6)
    assert abs(fitted[0] - fitted[2]) > 0.01
