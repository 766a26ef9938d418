"""Every script in examples/ runs end to end with tiny settings."""

from __future__ import annotations

import runpy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

EXAMPLES = Path(__file__).parents[1] / "examples"


def _main(name: str) -> Callable[[list[str]], Any]:
    namespace = runpy.run_path(str(EXAMPLES / name), run_name=f"example_{name[:-3]}")
    return namespace["main"]  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_regression_uncertainty(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib").use("Agg")
    argv = ["--steps", "20", "--n-train", "40", "--hidden", "4", "--samples", "5"]
    result = _main("regression_uncertainty.py")([*argv, "--out-dir", str(tmp_path)])
    assert 0.0 <= result["coverage_95"] <= 1.0
    assert result["gap_ratio"] > 0
    assert (tmp_path / "regression_uncertainty.png").is_file()


def test_regression_uncertainty_without_plot(tmp_path: Path) -> None:
    argv = ["--steps", "2", "--n-train", "10", "--hidden", "2", "--samples", "3"]
    _main("regression_uncertainty.py")([*argv, "--out-dir", str(tmp_path), "--no-plot"])
    assert not list(tmp_path.iterdir())


def test_classification_calibration_ood(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib").use("Agg")
    argv = ["--steps", "3", "--hidden", "8", "--samples", "4", "--n-ood", "20"]
    result = _main("classification_calibration_ood.py")(
        [*argv, "--out-dir", str(tmp_path)]
    )
    assert 0.0 <= result["auroc_mi"] <= 1.0
    assert 0.0 <= result["ece"] <= 1.0
    assert (tmp_path / "reliability_diagram.png").is_file()
    assert (tmp_path / "ood_histograms.png").is_file()


def test_torch_blue_migration(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--hidden", "16", "--steps", "3", "--n-train", "32", "--batch-size", "8"]
    result = _main("torch_blue_migration.py")([*argv, "--samples", "3"])
    assert (result["log_probs_rows"], result["log_probs_cols"]) == (3, 2)
    assert "log_probs (3, 2)" in capsys.readouterr().out


def test_lowrank_guide() -> None:
    argv = ["--steps", "5", "--rank", "2", "--hidden", "4", "--n-train", "20"]
    results = _main("lowrank_guide.py")([*argv, "--samples", "5"])
    assert set(results) == {"mean-field", "low-rank"}
    hidden = 4
    weights = (1 + 1) * hidden + 2 * (hidden + 1) * hidden + (hidden + 1)
    assert results["mean-field"]["guide_parameters"] == 2 * weights
    # low rank: loc and diagonal scale per weight, plus a weights x rank factor
    assert results["low-rank"]["guide_parameters"] == (2 + 2) * weights
    for result in results.values():
        assert result["neg_elbo_per_point"] == result["neg_elbo_per_point"]  # not NaN


def test_transformer_sequence(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--steps", "3", "--n-train", "32", "--n-test", "16", "--width", "4"]
    argv += ["--samples", "2", "--batch-size", "16"]
    result = _main("transformer_sequence.py")(argv)
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["mutual_information_ood"] >= 0.0
    assert "mean mutual information, OOD" in capsys.readouterr().out


def test_convert_pretrained() -> None:
    pytest.importorskip("sklearn")
    argv = ["--channels", "2", "--epochs", "1", "--finetune-epochs", "1"]
    result = _main("convert_pretrained.py")(
        [*argv, "--batch-size", "256", "--samples", "3", "--n-ood", "20"]
    )
    assert set(result) == {
        "plain_accuracy",
        "plain_ece",
        "plain_auroc_entropy",
        "bayes_accuracy",
        "bayes_ece",
        "bayes_auroc_entropy",
        "bayes_auroc_mi",
    }
    assert all(0.0 <= value <= 1.0 for value in result.values())
