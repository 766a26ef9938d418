"""Student-t tail probabilities and the quantiles of Student-t mixtures.

References: scipy's Student-t (Boost's incomplete beta function) and the
Cauchy's closed form ``P(T > t) = atan(1 / t) / pi``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import pyrolite_bnn as bnn
from pyrolite_bnn.distributions._student_t_tail import student_t_upper_tail
from pyrolite_bnn.distributions.mixture_quantiles import student_t_mixture_quantile
from pyrolite_bnn.predict import Prediction

_POINTS = torch.cat(
    [-torch.logspace(-4, 3, 60), torch.zeros(1), torch.logspace(-4, 3, 60)]
).double()


@pytest.mark.parametrize(
    ("df", "tolerance"),
    [
        (0.05, 1e-12),
        (0.5, 1e-12),
        (1.0, 1e-12),
        (2.5, 1e-12),
        (4.0, 1e-12),
        (30.0, 1e-12),
        (1e3, 1e-12),
        (1e5, 1e-10),
        (1e7, 1e-8),
    ],
)
def test_upper_tail_is_scipys_to_a_relative_tolerance(
    df: float, tolerance: float
) -> None:
    expected = stats.t.sf(_POINTS.numpy(), df)
    tail = student_t_upper_tail(_POINTS, df).numpy()
    positive = expected > 0
    np.testing.assert_allclose(tail[positive], expected[positive], rtol=tolerance)


def test_upper_tail_keeps_its_precision_far_into_a_heavy_tail() -> None:
    t = torch.tensor([1e3, 1e50, 1e200, 1e300], dtype=torch.float64)
    expected = torch.atan(1 / t) / math.pi  # the Cauchy's P(T > t), about 1/(pi t)
    torch.testing.assert_close(
        student_t_upper_tail(t, 1.0), expected, rtol=1e-13, atol=0.0
    )
    torch.testing.assert_close(
        student_t_upper_tail(-t, 1.0), 1 - expected, rtol=1e-15, atol=0.0
    )


def test_upper_tail_at_infinities_and_nan() -> None:
    t = torch.tensor([math.inf, -math.inf, math.nan, 0.0])
    tail = student_t_upper_tail(t, 3.0)
    assert tail.dtype == torch.float64
    assert tail[:2].tolist() == [0.0, 1.0]
    assert math.isnan(tail[2])
    assert tail[3] == 0.5


@pytest.mark.parametrize("df", [0.1, 1.0, 3.0, 30.0, 1e4])
@pytest.mark.parametrize("q", [1e-8, 0.025, 0.5, 0.975, 1 - 1e-8])
def test_one_component_quantile_is_scipys(df: float, q: float) -> None:
    loc = torch.full((3, 1), 0.25, dtype=torch.float64)
    scale = torch.tensor(2.0, dtype=torch.float64)
    quantile = student_t_mixture_quantile(loc, scale, df, q)
    expected = 0.25 + 2.0 * stats.t.ppf(q, df)
    np.testing.assert_allclose(quantile.numpy(), [expected], rtol=1e-9)


@pytest.mark.parametrize("df", [0.3, 1.0, 3.0, 30.0, 1e4])
@pytest.mark.parametrize("q", [1e-8, 0.025, 0.5, 0.975, 1 - 1e-8])
def test_mixture_quantile_has_the_mixtures_tail_mass(df: float, q: float) -> None:
    generator = torch.Generator().manual_seed(0)
    loc = 3 * torch.randn(20, 30, generator=generator, dtype=torch.float64)
    loc[:10, :15] += 40.0  # two modes for half of the entries
    scale = torch.tensor(0.7, dtype=torch.float64)
    quantile = student_t_mixture_quantile(loc, scale, df, q)
    t = ((quantile - loc) / scale).numpy()
    if q < 0.5:
        mass, tail = stats.t.cdf(t, df).mean(0), q
    else:
        mass, tail = stats.t.sf(t, df).mean(0), 1 - q
    np.testing.assert_allclose(mass, tail, rtol=1e-9)


def test_a_quantile_beyond_float64s_range_is_infinite() -> None:
    # With df = 0.005 more than 1e-10 of the mass lies beyond 1e300 scales.
    far = torch.tensor(1e300, dtype=torch.float64)
    assert float(student_t_upper_tail(far, 0.005)) > 1e-10
    loc, scale = torch.zeros(2, 3), torch.tensor(1.0)
    assert (
        student_t_mixture_quantile(loc, scale, 0.005, 1e-10).tolist() == [-math.inf] * 3
    )
    assert (
        student_t_mixture_quantile(loc, scale, 0.005, 1 - 1e-10).tolist()
        == [math.inf] * 3
    )


def test_student_t_prediction_intervals_cover_draws_of_the_mixture() -> None:
    generator = torch.Generator().manual_seed(1)
    outputs = torch.randn(8, 500, 1, generator=generator)  # (S, B, 1)
    likelihood = bnn.StudentT(df=2.5, scale=0.5)
    lower, upper = Prediction(outputs, likelihood).interval(0.9)
    assert lower.shape == upper.shape == (500,)
    assert lower.dtype == torch.float32
    draws = 400
    particle = torch.randint(0, 8, (draws, 500), generator=generator)
    noise = torch.distributions.StudentT(2.5).sample((draws, 500))
    y = outputs.squeeze(-1).gather(0, particle) + 0.5 * noise
    inside = ((y >= lower) & (y <= upper)).double().mean()
    # 200000 draws: the standard error of a 90 % coverage is 7e-4.
    assert abs(float(inside) - 0.9) < 4 * math.sqrt(0.9 * 0.1 / (draws * 500))


def test_student_t_quantile_of_half_precision_outputs_is_float32() -> None:
    likelihood = bnn.StudentT(df=4.0, scale=1.0)
    outputs = torch.zeros(4, 3, dtype=torch.bfloat16)
    median = likelihood.quantile(outputs, 0.5)
    assert median.dtype == torch.float32
    torch.testing.assert_close(median, torch.zeros(3), atol=1e-12, rtol=0.0)


def test_nan_outputs_give_nan_quantiles_as_for_normal() -> None:
    """torch's StudentT refused NaN in the Newton steps (an error naming a
    distribution the user never built, validation off or not)."""
    outputs = torch.randn(5, 4)
    outputs[:, 1] = math.nan
    outputs[2, 2] = math.nan
    quantile = bnn.StudentT(df=3.0, scale=1.0).quantile(outputs, 0.9)
    normal = bnn.Normal(scale=1.0).quantile(outputs, 0.9)
    assert torch.equal(quantile.isnan(), normal.isnan())
    assert quantile.isnan().tolist() == [False, True, True, False]


@pytest.mark.parametrize("sign", [-1.0, 0.0])
def test_mixture_quantile_refuses_a_scale_that_is_not_positive(sign: float) -> None:
    """scale=-v returned finite, wrong numbers (0.41, 1.16, ... for 0.91, 2.15,
    ... with +v)."""
    loc, scale = torch.randn(5, 4), torch.rand(5, 4) + 0.1
    with pytest.raises(
        ValueError, match=r"scale must be > 0, got -?\d.*\(20 of its 20"
    ):
        student_t_mixture_quantile(loc, sign * scale, 4.0, 0.9)
    with bnn.validation(False):  # the switch that turns the value checks off
        student_t_mixture_quantile(loc, scale, 4.0, 0.9)


@pytest.mark.parametrize(("df", "error"), [(0.0, ValueError), ("4", TypeError)])
def test_mixture_quantile_refuses_degrees_of_freedom_that_are_not_positive(
    df: object, error: type[Exception]
) -> None:
    """df=0 raised "math domain error"."""
    with pytest.raises(error, match="df must be"):
        student_t_mixture_quantile(torch.zeros(3, 2), torch.ones(()), df, 0.9)  # type: ignore[arg-type]
