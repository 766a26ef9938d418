"""Plot helpers: each returns an Axes and renders to PNG; matplotlib stays optional."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import pyrolite_bnn as bnn
from pyrolite_bnn import plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def mpl() -> ModuleType:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    return matplotlib


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def _regression_prediction(points: int = 40) -> tuple[torch.Tensor, bnn.Prediction]:
    net = bnn.VISequential(bnn.VILinear(1, 8), torch.nn.Tanh(), bnn.VILinear(8, 1))
    x = torch.linspace(-3, 3, points)[:, None]
    likelihood = bnn.Normal()  # learned scale: summaries must still plot
    with torch.no_grad():
        likelihood.raw_scale.sub_(1.0)  # as training would have moved it
    return x, bnn.predict(net, x, likelihood, samples=12)


def test_reliability_diagram_returns_axes_and_writes_png(
    mpl: ModuleType, tmp_path: Path
) -> None:
    from matplotlib.axes import Axes

    probs = torch.softmax(3 * torch.randn(300, 4), dim=-1)
    labels = torch.randint(0, 4, (300,))
    ax = plot.reliability_diagram(probs, labels, n_bins=10)
    assert isinstance(ax, Axes)
    assert "ECE" in ax.get_title()
    path = tmp_path / "reliability.png"
    ax.figure.savefig(path)
    assert _is_png(path)


def test_reliability_diagram_draws_on_given_axes(mpl: ModuleType) -> None:
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    out = plot.reliability_diagram(probs, torch.tensor([0, 1, 1]), n_bins=5, ax=ax)
    assert out is ax


def test_reliability_diagram_validates_inputs(mpl: ModuleType) -> None:
    with pytest.raises(ValueError, match="labels"):
        plot.reliability_diagram(torch.full((3, 2), 0.5), torch.tensor([0, 1]))


def test_regression_bands_returns_axes_and_writes_png(
    mpl: ModuleType, tmp_path: Path
) -> None:
    from matplotlib.axes import Axes

    x, prediction = _regression_prediction()
    x_train = torch.rand(20, 1) * 6 - 3
    y_train = torch.sin(x_train[:, 0])
    ax = plot.regression_bands(x, prediction, x_train, y_train, levels=(0.5, 0.8, 0.95))
    assert isinstance(ax, Axes)
    labels = ax.get_legend_handles_labels()[1]
    assert "95% predictive interval" in labels
    assert "epistemic ±2 std" in labels
    assert "training data" in labels
    path = tmp_path / "bands.png"
    ax.figure.savefig(path)
    assert _is_png(path)


def test_regression_bands_accepts_unsorted_flat_inputs(mpl: ModuleType) -> None:
    net = bnn.VILinear(1, 1)
    x = torch.tensor([2.0, -1.0, 0.5])
    prediction = bnn.predict(net, x[:, None], bnn.Normal(scale=0.3), samples=5)
    ax = plot.regression_bands(x, prediction)
    mean_line = ax.get_lines()[-1]
    assert list(mean_line.get_xdata()) == [-1.0, 0.5, 2.0]


def test_regression_bands_validates_inputs(mpl: ModuleType) -> None:
    x, prediction = _regression_prediction()
    with pytest.raises(ValueError, match="y_train"):
        plot.regression_bands(x, prediction, x_train=x)
    with pytest.raises(ValueError, match="levels"):
        plot.regression_bands(x, prediction, levels=(1.5,))
    with pytest.raises(ValueError, match="does not match"):
        plot.regression_bands(x[:-1], prediction)


def test_regression_bands_takes_one_level(mpl: ModuleType) -> None:
    """levels=0.9 raised "'float' object is not iterable"."""
    x, prediction = _regression_prediction()
    ax = plot.regression_bands(x, prediction, levels=0.9)
    labels = ax.get_legend_handles_labels()[1]
    assert [label for label in labels if "predictive interval" in label] == [
        "90% predictive interval"
    ]


def test_regression_bands_refuses_training_points_that_do_not_pair(
    mpl: ModuleType,
) -> None:
    """A y_train of another length raised from inside matplotlib."""
    x, prediction = _regression_prediction()
    mismatch = "x_train of 5 points does not match y_train of 4"
    with pytest.raises(ValueError, match=mismatch):
        plot.regression_bands(x, prediction, torch.zeros(5), torch.zeros(4))
    with pytest.raises(TypeError, match="levels must be numbers"):
        plot.regression_bands(x, prediction, levels=("0.9",))  # type: ignore[arg-type]


def test_uncertainty_histogram_returns_axes_and_writes_png(
    mpl: ModuleType, tmp_path: Path
) -> None:
    from matplotlib.axes import Axes

    ax = plot.uncertainty_histogram(
        torch.rand(50) * 0.2, torch.rand(60) * 0.5 + 0.1, bins=12, label="MI"
    )
    assert isinstance(ax, Axes)
    assert ax.get_xlabel() == "MI"
    assert "AUROC" in ax.get_title()
    path = tmp_path / "hist.png"
    ax.figure.savefig(path)
    assert _is_png(path)


def test_uncertainty_histogram_handles_constant_scores(mpl: ModuleType) -> None:
    ax = plot.uncertainty_histogram(torch.zeros(5), torch.zeros(5))
    assert "0.500" in ax.get_title()
    with pytest.raises(ValueError, match="bins"):
        plot.uncertainty_histogram(torch.zeros(5), torch.ones(5), bins=0)


def test_importing_plot_does_not_import_matplotlib() -> None:
    code = "import sys, pyrolite_bnn.plot; sys.exit(int('matplotlib' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_clear_import_error_without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pyrolite_bnn\[plot\]"):
        plot.uncertainty_histogram(torch.rand(5), torch.rand(5))
