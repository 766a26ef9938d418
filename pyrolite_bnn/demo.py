"""Self-contained demonstrations behind ``python -m pyrolite_bnn demo``.

``demo`` (or ``demo regression``) trains a small Bayesian MLP on an embedded
1-D regression problem whose training inputs leave a gap, and shows that the
model knows what it does not know: its epistemic uncertainty is several times
larger inside the gap than where it saw data, while its 95 % predictive
interval is calibrated on held-out points. ``demo classify`` trains a Bayesian
MLP on scikit-learn's handwritten digits and uses the mutual information to
tell digits from random-noise images.

Both are plain PyTorch loops (``out = model(x)``, ``loss_fn(out, y)``, Adam)
followed by :func:`~pyrolite_bnn.predict`, seeded so that a run is repeatable.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from pyrolite_bnn import metrics
from pyrolite_bnn.distributions.predictive import Categorical, Normal
from pyrolite_bnn.distributions.priors import NormalPrior
from pyrolite_bnn.layers import VILinear, VISequential
from pyrolite_bnn.loss import KullbackLeiblerLoss
from pyrolite_bnn.predict import predict

__all__ = [
    "GAP",
    "TRUE_NOISE",
    "GapData",
    "build_regression_net",
    "format_table",
    "make_gap_data",
    "run_classification_demo",
    "run_regression_demo",
    "true_function",
]

#: The input interval left out of the training data.
GAP = (-1.0, 1.0)
#: Training inputs are uniform on ``[-DATA_EDGE, GAP[0]]`` and ``[GAP[1], DATA_EDGE]``.
DATA_EDGE = 4.0
#: Standard deviation of the observation noise of the regression data.
TRUE_NOISE = 0.2

REGRESSION_STEPS = 2000
CLASSIFY_STEPS = 400
PREDICT_SAMPLES = 100


def true_function(x: Tensor) -> Tensor:
    """Noise-free regression target ``sin(x) + 0.2 x``.

    Args:
        x: inputs, any shape.

    Returns:
        The function values, same shape.

    Example:
        >>> import torch
        >>> from pyrolite_bnn.demo import true_function
        >>> true_function(torch.tensor([0.0, 1.0]))
        tensor([0.0000, 1.0415])
    """
    return torch.sin(x) + 0.2 * x


@dataclass(frozen=True)
class GapData:
    """The regression data set of the demo.

    Attributes:
        x_train: training inputs ``(N, 1)`` outside the gap.
        y_train: noisy training targets ``(N,)``.
        x_test: held-out inputs ``(M, 1)`` from the same region as the training data.
        y_test: noisy held-out targets ``(M,)``.
        x_gap: evenly spaced inputs ``(G, 1)`` strictly inside the gap.
        noise: the true noise standard deviation.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_gap: Tensor
    noise: float


def make_gap_data(
    seed: int = 0,
    n_train: int = 600,
    n_test: int = 400,
    n_gap: int = 200,
    noise: float = TRUE_NOISE,
) -> GapData:
    """Generate the 1-D regression data with a gap, from its own seeded generator.

    Inputs are uniform on ``[-4, -1]`` and ``[1, 4]``, targets
    ``true_function(x) + noise * eps`` with standard Normal ``eps``.

    Args:
        seed: seed of the data generator (the global RNG is not touched).
        n_train: number of training points.
        n_test: number of held-out points from the data region.
        n_gap: number of grid points inside the gap.
        noise: noise standard deviation.

    Returns:
        A :class:`GapData`.

    Example:
        >>> from pyrolite_bnn.demo import make_gap_data
        >>> data = make_gap_data(n_train=50, n_test=20, n_gap=5)
        >>> data.x_train.shape, data.y_train.shape, data.x_gap.shape
        (torch.Size([50, 1]), torch.Size([50]), torch.Size([5, 1]))
        >>> bool((data.x_train.abs() >= 1).all() and (data.x_gap.abs() < 1).all())
        True
    """
    generator = torch.Generator().manual_seed(seed)
    width = DATA_EDGE - GAP[1]

    def inputs(count: int) -> Tensor:
        u = (torch.rand(count, generator=generator) * 2 - 1) * width
        return torch.where(u < 0, u + GAP[0], u + GAP[1])

    def targets(x: Tensor) -> Tensor:
        return true_function(x) + noise * torch.randn(x.shape, generator=generator)

    x_train = inputs(n_train)
    y_train = targets(x_train)
    x_test = inputs(n_test)
    y_test = targets(x_test)
    x_gap = torch.linspace(GAP[0], GAP[1], n_gap + 2)[1:-1]
    return GapData(
        x_train[:, None], y_train, x_test[:, None], y_test, x_gap[:, None], noise
    )


def build_regression_net(
    hidden: int = 16, depth: int = 3, prior_scale: float = 1.0
) -> VISequential:
    """The demo's Bayesian MLP: ``depth`` tanh layers of ``hidden`` units.

    Every weight has the prior ``N(0, prior_scale^2)`` and a mean-field Normal
    posterior (the library default).

    Args:
        hidden: units per hidden layer.
        depth: number of hidden layers.
        prior_scale: prior standard deviation of every weight and bias.

    Returns:
        A :class:`~pyrolite_bnn.VISequential` mapping ``(B, 1)`` to ``(S, B, 1)``.

    Example:
        >>> import torch
        >>> from pyrolite_bnn.demo import build_regression_net
        >>> build_regression_net()(torch.zeros(4, 1)).shape
        torch.Size([10, 4, 1])
    """
    prior = NormalPrior(0.0, prior_scale)
    layers: list[nn.Module] = []
    width = 1
    for _ in range(depth):
        layers += [VILinear(width, hidden, prior=prior), nn.Tanh()]
        width = hidden
    layers.append(VILinear(width, 1, prior=prior))
    return VISequential(*layers)


def format_table(title: str, rows: list[tuple[str, str, str]]) -> str:
    """A plain-text table of ``(quantity, value, note)`` rows under a title.

    Args:
        title: heading line.
        rows: the rows; the note may be empty.

    Returns:
        The table as one string (no trailing newline).

    Example:
        >>> from pyrolite_bnn.demo import format_table
        >>> print(format_table("T", [("a", "1.0", "ok")]))
        T
        quantity | value | note
        ---------+-------+-----
        a        | 1.0   | ok
    """
    header = ("quantity", "value", "note")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(3)]

    def line(cells: tuple[str, str, str]) -> str:
        padded = (c.ljust(w) for c, w in zip(cells, widths, strict=True))
        return " | ".join(padded).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([title, line(header), rule, *(line(r) for r in rows)])


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch on one thread (restored afterwards).

    The demo's tensors are tiny: intra-op threading only adds synchronisation,
    which on a busy 2-core machine makes each step several times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _resolve_out(out: str | Path | None, default_name: str) -> Path | None:
    """The PNG path: ``out`` itself, or ``out / default_name`` for a directory.

    A path is taken as a directory if it exists as one or has no suffix
    (``--out plots`` and ``--out plots/`` both mean ``plots/demo.png``).
    """
    if out is None:
        return None
    path = Path(out)
    if path.is_dir() or not path.suffix:
        path = path / default_name
    return path


_NO_MATPLOTLIB = "plot: skipped, matplotlib is not installed (pyrolite_bnn[plot])"


def _available(module: str) -> bool:
    """Whether an optional dependency can be imported."""
    return importlib.util.find_spec(module) is not None


def run_regression_demo(
    steps: int = REGRESSION_STEPS,
    samples: int = PREDICT_SAMPLES,
    seed: int = 0,
    out: str | Path | None = "demo.png",
    lr: float = 0.02,
    n_train: int = 600,
    verbose: bool = True,
) -> dict[str, float]:
    """Train the gap-regression BNN, print a summary table and plot the fit.

    The network (:func:`build_regression_net`) is trained full-batch with Adam
    (learning rate ``lr`` decayed exponentially to a tenth over the run, 10
    particles per step) on :func:`make_gap_data`, with a learned noise scale
    (:class:`~pyrolite_bnn.Normal`). Predictions use ``samples`` posterior draws.

    Args:
        steps: optimisation steps.
        samples: posterior draws for prediction.
        seed: seed of the data, the initialisation and the weight draws.
        out: PNG path (or directory) of the plot; ``None`` for no plot. The
            plot is skipped with a message when matplotlib is missing.
        lr: initial Adam learning rate.
        n_train: number of training points.
        verbose: print the table.

    Returns:
        ``rmse``, ``nll`` (Gaussian, moment-matched), ``coverage_95`` on the
        held-out data-region points; ``epistemic_std_gap`` and
        ``epistemic_std_data`` (mean over points of ``sqrt(epistemic_var)``) and
        their ratio ``gap_ratio``; ``noise_scale`` (learned) and
        ``true_noise_scale``; ``final_loss``; ``train_seconds``; ``plotted``
        (1.0 if a PNG was written).

    Example:
        >>> from pyrolite_bnn.demo import run_regression_demo
        >>> result = run_regression_demo(steps=5, samples=4, out=None, verbose=False)
        >>> sorted(result)[:3]
        ['coverage_95', 'epistemic_std_data', 'epistemic_std_gap']
    """
    if steps < 1 or samples < 2:
        raise ValueError(f"need steps >= 1 and samples >= 2, got {steps}, {samples}")
    data = make_gap_data(seed, n_train=n_train)
    with _single_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_regression_net()
        likelihood = Normal()  # learned noise scale: optimise loss_fn.parameters()
        loss_fn = KullbackLeiblerLoss(likelihood, dataset_size=n_train)
        parameters = [*model.parameters(), *loss_fn.parameters()]
        optimizer = torch.optim.Adam(parameters, lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.1 ** (step / steps)
        )
        start = time.perf_counter()
        loss = torch.tensor(math.nan)
        for _ in range(steps):
            optimizer.zero_grad()
            loss = loss_fn(model(data.x_train), data.y_train)
            loss.backward()
            optimizer.step()
            schedule.step()
        train_seconds = time.perf_counter() - start

    # Prediction summaries use the learned noise scale: keep them out of autograd.
    with _single_thread(), torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed + 1)
        test = predict(model, data.x_test, likelihood, samples=samples)
        gap = predict(model, data.x_gap, likelihood, samples=samples)
        lower, upper = test.interval(0.95)
        result = {
            "rmse": float(metrics.rmse(test.mean, data.y_test)),
            "nll": float(metrics.gaussian_nll(test.mean, test.variance, data.y_test)),
            "coverage_95": float(metrics.interval_coverage(lower, upper, data.y_test)),
            "epistemic_std_gap": float(gap.epistemic_var.sqrt().mean()),
            "epistemic_std_data": float(test.epistemic_var.sqrt().mean()),
            "noise_scale": float(likelihood.noise_scale()),
            "true_noise_scale": data.noise,
            "final_loss": float(loss.detach()),
            "train_seconds": train_seconds,
        }
        result["gap_ratio"] = result["epistemic_std_gap"] / result["epistemic_std_data"]

        path = _resolve_out(out, "demo.png")
        plot_note = "plot: not requested"
        result["plotted"] = 0.0
        if path is not None and not _available("matplotlib"):
            plot_note = _NO_MATPLOTLIB
        elif path is not None:
            _plot_regression(model, likelihood, data, samples, path)
            result["plotted"] = 1.0
            plot_note = f"plot: wrote {path}"

    if verbose:
        print(_regression_table(result, steps, samples, n_train))
        print(plot_note)
    return result


def _regression_table(
    result: dict[str, float], steps: int, samples: int, n_train: int
) -> str:
    ratio = result["gap_ratio"]
    coverage = result["coverage_95"]
    rows = [
        (
            "test RMSE (data region)",
            f"{result['rmse']:.3f}",
            f"noise floor {result['true_noise_scale']:.3f}",
        ),
        ("test Gaussian NLL (data region)", f"{result['nll']:.3f}", "nats per point"),
        (
            "95% interval coverage (data region)",
            f"{coverage:.1%}",
            "target 90-99% " + ("(ok)" if 0.90 <= coverage <= 0.99 else "(MISSED)"),
        ),
        ("mean epistemic std, inside gap", f"{result['epistemic_std_gap']:.3f}", ""),
        ("mean epistemic std, data region", f"{result['epistemic_std_data']:.3f}", ""),
        (
            "epistemic std ratio gap / data",
            f"{ratio:.2f}x",
            "target >= 3x " + ("(ok)" if ratio >= 3 else "(MISSED)"),
        ),
        (
            "learned noise scale",
            f"{result['noise_scale']:.3f}",
            f"true {result['true_noise_scale']:.3f}",
        ),
        ("final loss (-ELBO / N)", f"{result['final_loss']:.3f}", ""),
        (
            "training time",
            f"{result['train_seconds']:.1f} s",
            f"{steps} Adam steps, 10 particles",
        ),
    ]
    title = (
        f"pyrolite_bnn demo: 1-D regression with a gap in ({GAP[0]:g}, {GAP[1]:g})\n"
        f"{n_train} training points on [-{DATA_EDGE:g}, {GAP[0]:g}] U "
        f"[{GAP[1]:g}, {DATA_EDGE:g}], y = sin(x) + 0.2 x + N(0, "
        f"{result['true_noise_scale']:g}^2); {samples} posterior draws per prediction\n"
    )
    return format_table(title, rows)


def _plot_regression(
    model: VISequential, likelihood: Normal, data: GapData, samples: int, path: Path
) -> None:
    from matplotlib.figure import Figure

    from pyrolite_bnn import plot

    grid = torch.linspace(-DATA_EDGE - 1, DATA_EDGE + 1, 400)[:, None]
    prediction = predict(model, grid, likelihood, samples=samples)
    figure = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = plot.regression_bands(
        grid, prediction, data.x_train, data.y_train, ax=figure.add_subplot()
    )
    ax.plot(
        grid[:, 0].tolist(),
        true_function(grid[:, 0]).tolist(),
        color="tab:green",
        linewidth=1,
        linestyle=":",
        label="true function",
    )
    ax.axvspan(*GAP, color="gray", alpha=0.12, label="gap (no training data)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize="small")
    ax.set_title("Bayesian MLP: predictive intervals and epistemic uncertainty")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


# ----------------------------------------------------------------- classification
def _load_digits(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    split = int(0.75 * len(x))
    train, test = order[:split], order[split:]
    return x[train], y[train], x[test], y[test]


def run_classification_demo(
    steps: int = CLASSIFY_STEPS,
    samples: int = PREDICT_SAMPLES,
    seed: int = 0,
    out: str | Path | None = "demo_classify.png",
    hidden: int = 64,
    lr: float = 0.01,
    verbose: bool = True,
) -> dict[str, float]:
    """Train a Bayesian MLP on the digits and detect random-noise inputs.

    Needs scikit-learn (the ``data`` extra), which ships the 8x8 digits. A
    ``64 -> hidden -> 10`` ReLU MLP with the library defaults (``N(0, 1)``
    prior, mean-field posterior, 10 particles) is trained full-batch with Adam
    on 75 % of the 1797 images; out-of-distribution inputs are uniform noise
    images of the same size and range.

    Args:
        steps: optimisation steps.
        samples: posterior draws for prediction.
        seed: seed of the split, the initialisation and the weight draws.
        out: PNG path (or directory) for a reliability diagram and the
            mutual-information histograms; ``None`` for no plot.
        hidden: hidden units.
        lr: Adam learning rate.
        verbose: print the table.

    Returns:
        ``accuracy``, ``ece``, ``nll``, ``entropy_in``, ``entropy_out``,
        ``mutual_information_in``, ``mutual_information_out``, ``auroc_mi``,
        ``auroc_entropy``, ``train_seconds``, ``plotted``.

    Raises:
        ImportError: if scikit-learn is not installed.

    Example:
        >>> from pyrolite_bnn.demo import run_classification_demo
        >>> result = run_classification_demo(steps=2, samples=4, out=None,
        ...                                  verbose=False)  # doctest: +SKIP
    """
    if not _available("sklearn"):
        raise ImportError(
            "demo classify needs scikit-learn for the digits data: install "
            "pyrolite_bnn[data] (pip install 'pyrolite_bnn[data]')"
        )
    if steps < 1 or samples < 2:
        raise ValueError(f"need steps >= 1 and samples >= 2, got {steps}, {samples}")
    x_train, y_train, x_test, y_test = _load_digits(seed)
    noise_images = torch.rand(
        x_test.shape, generator=torch.Generator().manual_seed(seed + 1)
    )
    with _single_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VISequential(VILinear(64, hidden), nn.ReLU(), VILinear(hidden, 10))
        likelihood = Categorical()
        loss_fn = KullbackLeiblerLoss(likelihood, dataset_size=len(x_train))
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad()
            loss = loss_fn(model(x_train), y_train)
            loss.backward()
            optimizer.step()
        train_seconds = time.perf_counter() - start

    with _single_thread(), torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed + 1)
        inside = predict(model, x_test, likelihood, samples=samples)
        outside = predict(model, noise_images, likelihood, samples=samples)
        mi_in, mi_out = inside.mutual_information, outside.mutual_information
        result = {
            "accuracy": float(metrics.accuracy(inside.probs, y_test)),
            "ece": float(metrics.expected_calibration_error(inside.probs, y_test)),
            "nll": float(metrics.nll(inside.probs, y_test)),
            "entropy_in": float(inside.entropy.mean()),
            "entropy_out": float(outside.entropy.mean()),
            "mutual_information_in": float(mi_in.mean()),
            "mutual_information_out": float(mi_out.mean()),
            "auroc_mi": float(metrics.auroc(mi_in, mi_out)),
            "auroc_entropy": float(metrics.auroc(inside.entropy, outside.entropy)),
            "train_seconds": train_seconds,
        }
        path = _resolve_out(out, "demo_classify.png")
        result["plotted"] = 0.0
        plot_note = "plot: not requested"
        if path is not None and not _available("matplotlib"):
            plot_note = _NO_MATPLOTLIB
        elif path is not None:
            _plot_classification(inside.probs, y_test, mi_in, mi_out, path)
            result["plotted"] = 1.0
            plot_note = f"plot: wrote {path}"

    if verbose:
        rows = [
            (
                "test accuracy",
                f"{result['accuracy']:.1%}",
                f"{len(y_test)} test digits",
            ),
            ("expected calibration error", f"{result['ece']:.3f}", "15 bins"),
            ("test NLL", f"{result['nll']:.3f}", "nats per digit"),
            ("mean predictive entropy, digits", f"{result['entropy_in']:.3f}", "nats"),
            ("mean predictive entropy, noise", f"{result['entropy_out']:.3f}", "nats"),
            (
                "mean mutual information, digits",
                f"{result['mutual_information_in']:.3f}",
                "nats",
            ),
            (
                "mean mutual information, noise",
                f"{result['mutual_information_out']:.3f}",
                "nats",
            ),
            ("AUROC digits vs noise (MI)", f"{result['auroc_mi']:.3f}", "1 = perfect"),
            ("AUROC digits vs noise (entropy)", f"{result['auroc_entropy']:.3f}", ""),
            (
                "training time",
                f"{result['train_seconds']:.1f} s",
                f"{steps} Adam steps, 10 particles",
            ),
        ]
        title = (
            "pyrolite_bnn demo: Bayesian MLP (64-"
            f"{hidden}-10) on scikit-learn digits; OOD = uniform noise images\n"
            f"{len(x_train)} training digits, {samples} posterior draws per "
            "prediction\n"
        )
        print(format_table(title, rows))
        print(plot_note)
    return result


def _plot_classification(
    probs: Tensor, labels: Tensor, mi_in: Tensor, mi_out: Tensor, path: Path
) -> None:
    from matplotlib.figure import Figure

    from pyrolite_bnn import plot

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    plot.reliability_diagram(probs, labels, ax=left)
    plot.uncertainty_histogram(mi_in, mi_out, ax=right)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
