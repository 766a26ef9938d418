"""Student-t tail probabilities and the quantiles of Student-t mixtures.

References: scipy's Student-t (Boost's incomplete beta function) and the
Cauchy's closed form ``P(T > t) = atan(1 / t) / pi``.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
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


def _bisected_quantile(
    loc: torch.Tensor, scale: torch.Tensor, df: float, q: float
) -> torch.Tensor:
    """The mixture's quantile by bisection until float64 cannot split the bracket.

    The bracket is the components' own quantiles (scipy's), widened by far
    more than their rounding.
    """
    upper = q > 0.5
    tail = 1 - q if upper else q
    standard = float(stats.t.isf(tail, df))  # P(T > standard) = tail
    scale = scale.expand_as(loc)
    component = loc + scale * (standard if upper else -standard)
    margin = 1e-9 * (component.abs().amax(0) + scale.amax(0))
    lo, hi = component.amin(0) - margin, component.amax(0) + margin
    for _ in range(5000):
        mid = lo / 2 + hi / 2
        open_ = (mid > lo) & (mid < hi)
        if not bool(open_.any()):
            break
        t = (mid - loc) / scale
        mass = student_t_upper_tail(t if upper else -t, df).mean(0)
        above = mass > tail if upper else mass < tail  # the quantile is above mid
        lo = torch.where(open_ & above, mid, lo)
        hi = torch.where(open_ & ~above, mid, hi)
    return lo / 2 + hi / 2


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    particles=st.integers(1, 12),
    positions=st.integers(1, 5),
    spread=st.sampled_from([0.0, 0.01, 1.0, 30.0]),
    scale_spread=st.sampled_from([0.0, 1.0, 4.0]),
    df=st.sampled_from([0.3, 1.0, 2.5, 5.0, 30.0, 1e3]),
    q=st.one_of(
        st.sampled_from([1e-8, 1e-3, 0.5, 1 - 1e-3, 1 - 1e-8]),
        st.floats(0.01, 0.99),
    ),
    seed=st.integers(0, 2**16),
)
def test_mixture_quantile_is_the_bisections_to_float64s_resolution(
    particles: int,
    positions: int,
    spread: float,
    scale_spread: float,
    df: float,
    q: float,
    seed: int,
) -> None:
    """Locations alike or far apart (two modes), scales alike or orders of
    magnitude apart, heavy and light tails, q in the bulk and far out."""
    generator = torch.Generator().manual_seed(seed)
    shape = (particles, positions)
    loc = spread * torch.randn(shape, generator=generator, dtype=torch.float64)
    loc[: particles // 2] += 3 * spread  # a second mode
    log_scale = torch.randn(shape, generator=generator, dtype=torch.float64)
    scale = torch.exp(scale_spread * log_scale)
    quantile = student_t_mixture_quantile(loc, scale, df, q)
    expected = _bisected_quantile(loc, scale, df, q)
    # Both are roots of the mixture's tail computed to a relative 1e-12 (at
    # df <= 1e3): a root is defined to within 1e-12 * tail / density, which
    # is large only where the mixture has next to no density (between modes).
    student = torch.distributions.StudentT(torch.tensor(df, dtype=torch.float64))
    t = (expected - loc) / scale
    density = (student.log_prob(t).exp() / scale).mean(0)
    uncertainty = 1e-11 * min(q, 1 - q) / density
    torch.testing.assert_close(
        quantile,
        expected,
        rtol=1e-9,
        atol=float(uncertainty.max()) + 1e-12 * float(scale.max()),
    )


@pytest.mark.parametrize("q", [0.05, 0.5, 0.95])
def test_mixture_quantile_evaluates_the_tail_twice_for_particles_alike(
    q: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prediction interval of 200 x 16 positions and 100 particles took 15 s
    (70 times the Normal's): 24 bisection steps and 3 Newton steps, each a
    pass of the costly tail over every component."""
    evaluated: list[int] = []
    original = student_t_upper_tail

    def counted(t: torch.Tensor, df: float) -> torch.Tensor:
        evaluated.append(t.numel())
        return original(t, df)

    for name, module in list(sys.modules.items()):  # wherever the search calls it
        if name.startswith("pyrolite_bnn.") and (
            getattr(module, "student_t_upper_tail", None) is original
        ):
            monkeypatch.setattr(module, "student_t_upper_tail", counted)
    generator = torch.Generator().manual_seed(0)
    loc = 0.3 * torch.randn(100, 400, generator=generator)  # epistemic spread
    quantile = student_t_mixture_quantile(loc, torch.tensor(0.8), 5.0, q)
    assert quantile.shape == (400,)
    components = sum(n for n in evaluated if n > 1)
    assert components <= 2 * loc.numel()  # the old search: 27 passes


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
