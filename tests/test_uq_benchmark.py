"""The uncertainty benchmark (benchmarks/uq): metric helpers, and a tiny run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.uq import report, scores, tasks
from benchmarks.uq.__main__ import main
from benchmarks.uq.methods import METHODS, Budget, Net, VISettings, train_vi
from benchmarks.uq.run import COMBOS, NOISE_RATES, run_parts, run_settings, scale

# Settings that start the noise at 0.1 on standardised targets (spread 1.01 in the
# tiny sweep) meet the library's warning of a distant starting scale, as intended.
NOISE_STARTS_LOW = pytest.mark.filterwarnings(
    "ignore:Normal. the targets spread:UserWarning"
)


def test_std_ratios_on_known_spreads() -> None:
    # Members' means spread by exactly +-a at every point: epistemic std = a.
    signs = torch.tensor([1.0, -1.0])[:, None]
    data, gap, beyond = signs * 0.1, signs * 0.4, signs * torch.tensor([1.0, 2.0])
    ratios = scores.std_ratios(data.expand(2, 5), gap.expand(2, 3), beyond)
    assert ratios["epi_data"] == pytest.approx(0.1, rel=1e-6)
    assert ratios["gap_ratio"] == pytest.approx(4.0, rel=1e-6)
    assert ratios["beyond_ratio"] == pytest.approx(15.0, rel=1e-6)


def test_mixture_log_likelihood_of_one_member_is_gaussian() -> None:
    mu, var, y = torch.randn(1, 7), torch.rand(1, 7) + 0.1, torch.randn(7)
    expected = torch.distributions.Normal(mu[0], var[0].sqrt()).log_prob(y).mean()
    torch.testing.assert_close(
        scores.mixture_log_likelihood(mu, var, y), expected, rtol=1e-6, atol=1e-6
    )
    # Two identical members: the same mixture.
    torch.testing.assert_close(
        scores.mixture_log_likelihood(mu.expand(2, 7), var.expand(2, 7), y),
        expected,
        rtol=1e-6,
        atol=1e-6,
    )


def test_coverage_of_the_true_predictive() -> None:
    # Two members at +-1 with noise var 1: mixture variance 2; the moment-matched
    # interval of a draw from the mixture covers P(|Y| < 1.96 sqrt 2), computed
    # here exactly; n = 20000 draws: standard error sqrt(p(1-p)/n) < 0.0016,
    # tolerance 5 standard errors.
    n = 20000
    generator = torch.Generator().manual_seed(0)
    side = torch.randint(0, 2, (n,), generator=generator) * 2.0 - 1.0
    y = side + torch.randn(n, generator=generator)
    mu = torch.stack([torch.ones(n), -torch.ones(n)])
    half = scores.Z95 * math.sqrt(2.0)
    normal = torch.distributions.Normal(0.0, 1.0)
    exact = float(
        normal.cdf(torch.tensor(half - 1.0)) - normal.cdf(torch.tensor(-half - 1.0))
    )
    assert scores.coverage95(mu, torch.ones(2, n), y) == pytest.approx(
        exact, abs=5 * math.sqrt(exact * (1 - exact) / n)
    )


def test_gap_task_leaves_the_gap_empty() -> None:
    for dim in (1, 2):
        config = tasks.GapConfig(dim=dim, gap=2.0)
        task = tasks.make_gap_task(config, n_train=50, n_test=20)
        assert task.x_train.shape == (50, dim)
        assert task.x_test.shape == (20, dim)
        assert (task.x_train.abs().amax(-1) >= 1.0).all()
        assert (task.x_gap.abs().amax(-1) < 1.0).all()
        assert (task.x_beyond.abs().amax(-1) == 3 * tasks.EDGE).all()


def test_split_standardises_with_training_statistics() -> None:
    x, y = torch.randn(100, 3) * 5 + 2, torch.randn(100) * 3 - 1
    data = tasks.split(x, y, seed=0)
    assert len(data.x_test) == 10
    torch.testing.assert_close(data.x_train.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.y_train.std(), torch.tensor(1.0), atol=1e-5, rtol=0)


def test_sweep_goal() -> None:
    row = {"gap_ratio": 3.0, "beyond_ratio": 5.0, "coverage95": 0.95}
    assert report.sweep_goal(row)
    assert not report.sweep_goal({**row, "coverage95": 0.99})
    assert not report.sweep_goal({**row, "gap_ratio": 2.9})


@pytest.mark.slow
@NOISE_STARTS_LOW
def test_tiny_benchmark_runs_every_part(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    rows = run_parts(scale("tiny"), "abc", log=lambda row: None)
    parts = {(row["part"], row["method"]) for row in rows}
    assert parts == {
        (part, method)
        for part in ("sweep", "regression", "digits")
        for method in METHODS
    }
    for row in rows:
        numbers = [v for v in row.values() if isinstance(v, float)]
        assert all(math.isfinite(v) for v in numbers), row
    settings = run_settings(scale("tiny"), log=lambda row: None)
    assert {row["settings"] for row in settings} >= {"defaults", "particles=1"}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "tiny_abc.json").write_text(json.dumps(rows))
    (tmp_path / "results" / "tiny_settings.json").write_text(json.dumps(settings))
    text = report.write(tmp_path).read_text()
    assert "### sweep" in text
    assert "### digits" in text
    assert "library settings" in text


def test_noise_lr_scales_the_learned_noise_steps() -> None:
    # Adam moves the noise scale's raw parameter by about its learning rate per
    # step, so 5 steps at 10x the rate move it about 10x as far (measured 9.6x;
    # the bound leaves room for Adam's bias-corrected first steps).
    # Targets of spread 0.2: the noise scale comes down at every step, whatever
    # the seed (targets of spread 1 left its direction to the draws).
    x, y = torch.randn(40, 1), 0.2 * torch.randn(40)
    budget = Budget(epochs=5, samples=4)

    def noise_step(factor: float) -> float:
        torch.manual_seed(0)
        settings = VISettings(noise_lr=factor)
        _, likelihood = train_vi(x, y, Net(1, 1, 8), budget, "regression", settings)
        raw = likelihood.state_dict()["raw_scale_unconstrained"]
        return abs(float(raw) - math.log(math.e - 1.0))  # raw of the initial 1.0

    assert noise_step(10.0) / noise_step(1.0) == pytest.approx(10.0, rel=0.2)
    assert VISettings(noise_lr=10.0).label() == "noise_lr x10"


@pytest.mark.slow
@NOISE_STARTS_LOW
def test_command_line_writes_results(tmp_path: Path) -> None:
    main(["--tiny", "--parts", "c", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "results" / "tiny_c.json").read_text())
    assert [row["method"] for row in rows] == list(METHODS)
    assert "| vi |" in (tmp_path / "RESULTS.md").read_text()
    main(["--tiny", "--settings", "--combos", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "results" / "tiny_combos_settings.json").read_text())
    assert {row["settings"] for row in rows} == {vi.label() for vi in COMBOS}
    main(["--tiny", "--settings", "--noise-rates", "--out", str(tmp_path)])
    path = tmp_path / "results" / "tiny_noise_rates_settings.json"
    rows = json.loads(path.read_text())
    assert {row["settings"] for row in rows} == {vi.label() for vi in NOISE_RATES}
    with pytest.raises(SystemExit):
        main(["--tiny", "--settings", "--combos", "--noise-rates"])


def test_command_line_runs_chosen_methods(tmp_path: Path) -> None:
    main(["--tiny", "--parts", "a", "--methods", "map+laplace", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "results" / "tiny_a_map-laplace.json").read_text())
    assert [row["method"] for row in rows] == ["map+laplace"]
    assert rows[0]["gap_ratio"] > 0
    assert "map+laplace gap / beyond / cov" in (tmp_path / "RESULTS.md").read_text()
    with pytest.raises(SystemExit):
        main(["--tiny", "--methods", "laplace", "--out", str(tmp_path)])
