"""``python -m pyrolite_bnn demo``: acceptance of the default regression demo, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from pyrolite_bnn import demo
from pyrolite_bnn.__main__ import main


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, float]]:
    """Record what the demo functions return when called through ``main``."""
    results: list[dict[str, float]] = []
    for name in ("run_regression_demo", "run_classification_demo"):
        original = getattr(demo, name)

        def wrapped(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            result = _original(*args, **kwargs)
            results.append(result)
            return result

        monkeypatch.setattr(demo, name, wrapped)
    return results


def test_default_regression_demo_meets_acceptance(
    spy: list[dict[str, float]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Default flags: gap/data epistemic ratio >= 3, 95 % coverage in [0.90, 0.99]."""
    pytest.importorskip("matplotlib").use("Agg")
    threads = torch.get_num_threads()
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads  # the demo restores torch's threads
    (result,) = spy
    assert result["gap_ratio"] >= 3.0
    assert 0.90 <= result["coverage_95"] <= 0.99
    # Sanity of the rest of the table: a fit near the noise floor, a noise
    # scale close to the true one.
    assert result["rmse"] < 1.5 * result["true_noise_scale"]
    assert abs(result["noise_scale"] - result["true_noise_scale"]) < 0.1
    assert result["plotted"] == 1.0
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "epistemic std ratio gap / data" in out
    assert "95% interval coverage" in out
    assert f"wrote {tmp_path / 'demo.png'}" in out


def test_regression_demo_is_repeatable_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = demo.run_regression_demo(steps=5, samples=4, out=None, verbose=False)
    assert torch.equal(torch.rand(3), expected)
    second = demo.run_regression_demo(steps=5, samples=4, out=None, verbose=False)
    del first["train_seconds"], second["train_seconds"]
    assert first == second


def test_tiny_regression_demo_without_plot(
    spy: list[dict[str, float]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "never.png"
    argv = ["demo", "regression", "--steps", "3", "--samples", "4", "--seed", "1"]
    assert main([*argv, "--out", str(out_file), "--no-plot"]) == 0
    assert not out_file.exists()
    assert spy[0]["plotted"] == 0.0
    assert "plot: not requested" in capsys.readouterr().out


def test_demo_says_it_skipped_the_plot_without_matplotlib(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "_available", lambda module: module != "matplotlib")
    argv = ["demo", "--steps", "2", "--samples", "3", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "demo.png").exists()


def test_classify_demo_with_tiny_settings(
    spy: list[dict[str, float]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib").use("Agg")
    argv = ["demo", "classify", "--steps", "3", "--samples", "4"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    (result,) = spy
    for key in ("accuracy", "ece", "auroc_mi", "auroc_entropy"):
        assert 0.0 <= result[key] <= 1.0
    assert result["mutual_information_in"] >= -1e-6
    assert result["entropy_out"] >= result["mutual_information_out"] - 1e-6
    assert (tmp_path / "demo_classify.png").is_file()
    assert "AUROC digits vs noise (MI)" in capsys.readouterr().out


def test_classify_demo_explains_missing_sklearn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "_available", lambda module: module != "sklearn")
    assert main(["demo", "classify", "--steps", "1"]) == 1
    assert "pyrolite_bnn[data]" in capsys.readouterr().err


def test_invalid_flags_are_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--steps", "0"]) == 2
    assert main(["demo", "--samples", "1"]) == 2
    assert "--samples" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "unknown-task"])


def test_main_without_arguments_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: pyrolite-bnn" in out
    assert "demo" in out


def test_python_dash_m_prints_help() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "pyrolite_bnn"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0
    assert "usage: pyrolite-bnn" in completed.stdout


def test_out_without_suffix_is_a_directory(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib").use("Agg")
    target = tmp_path / "plots"
    result = demo.run_regression_demo(steps=2, samples=3, out=target, verbose=False)
    assert result["plotted"] == 1.0
    assert (target / "demo.png").is_file()
