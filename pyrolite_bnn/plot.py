"""Plots of predictive uncertainty (optional extra ``pyrolite_bnn[plot]``).

Every function draws on a matplotlib :class:`~matplotlib.axes.Axes` and returns
it. Without ``ax`` a new :class:`~matplotlib.figure.Figure` is created through
the object-oriented API (no ``pyplot`` global state, so it works with any
backend, including a headless one); save it with ``ax.figure.savefig(path)``.

matplotlib is imported only when a function is called: importing this module
does not need it. So the functions' annotations name matplotlib's ``Axes`` for
type checkers only; ``typing.get_type_hints`` resolves them given it,
``get_type_hints(plot.reliability_diagram, localns={"Axes": Axes})``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from pyrolite_bnn import metrics
from pyrolite_bnn.predict import Prediction

if TYPE_CHECKING:
    from matplotlib.axes import Axes  # not at run time (see the module docstring)

__all__ = ["regression_bands", "reliability_diagram", "uncertainty_histogram"]

_INSTALL_HINT = (
    "plotting needs matplotlib: install pyrolite_bnn[plot] "
    "(pip install 'pyrolite_bnn[plot]')"
)


def _interval_levels(levels: float | Sequence[float]) -> tuple[float, ...]:
    """``levels`` as a tuple of numbers in ``(0, 1)`` (a number: one level)."""
    as_tuple = (levels,) if isinstance(levels, (int, float)) else tuple(levels)
    if not as_tuple:
        raise ValueError("levels must name at least one interval level")
    for level in as_tuple:
        if isinstance(level, bool) or not isinstance(level, (int, float)):
            raise TypeError(f"levels must be numbers, got {level!r}")
        if not 0.0 < level < 1.0:
            raise ValueError(f"levels must be in (0, 1), got {level!r}")
    return as_tuple


def _new_axes(ax: Axes | None) -> Axes:
    """Return ``ax``, or the axes of a new figure (matplotlib imported lazily)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    if ax is not None:
        return ax
    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    return figure.add_subplot()


def _as_tensor(value: Any, name: str) -> Tensor:
    """Detached CPU tensor from a tensor, array or sequence."""
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        kind = type(value).__name__
        raise TypeError(f"{name} must be a tensor or array, got {kind}") from error
    return tensor.detach().cpu()


def _flat(value: Any, name: str) -> Tensor:
    """1-D float tensor: accepts ``(N,)`` or ``(N, 1)``."""
    tensor = _as_tensor(value, name)
    if tensor.dim() == 2 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.dim() != 1:
        shape = tuple(tensor.shape)
        raise ValueError(f"{name} must have shape (N,) or (N, 1), got {shape}")
    return tensor.to(torch.float64)


def reliability_diagram(
    probs: Tensor, labels: Tensor, n_bins: int = 15, ax: Axes | None = None
) -> Axes:
    """Reliability diagram: accuracy against confidence of the top class.

    Bars show the accuracy of each equal-width confidence bin (the bins of
    :func:`~pyrolite_bnn.metrics.calibration_curve`); a red hatched box spans
    the gap from the bin's accuracy to its mean confidence (above the bar when
    overconfident, inside it when underconfident), and the diagonal is perfect
    calibration. Empty bins are left blank. The expected calibration error is
    printed in the title.

    Args:
        probs: predictive class probabilities ``(N, C)``, e.g.
            ``bnn.predict(...).probs``.
        labels: integer labels ``(N,)``.
        n_bins: number of equal-width confidence bins.
        ax: axes to draw on (default: a new figure).

    Returns:
        The matplotlib axes.

    Raises:
        ImportError: if matplotlib is not installed.

    Example:
        >>> import torch
        >>> from pyrolite_bnn import plot
        >>> probs = torch.softmax(torch.randn(200, 3), dim=-1)
        >>> labels = torch.randint(0, 3, (200,))
        >>> ax = plot.reliability_diagram(probs, labels)  # doctest: +SKIP
        >>> ax.figure.savefig("reliability.png")  # doctest: +SKIP
    """
    p = _as_tensor(probs, "probs")
    y = _as_tensor(labels, "labels")
    ax = _new_axes(ax)
    confidence, accuracy, count = metrics.calibration_curve(p, y, n_bins=n_bins)
    ece = float(metrics.expected_calibration_error(p, y, n_bins=n_bins))
    width = 1.0 / n_bins
    centers = (torch.arange(n_bins, dtype=torch.float64) + 0.5) * width
    filled = count > 0
    x = centers[filled].tolist()
    acc = accuracy[filled].double().tolist()
    conf = confidence[filled].double().tolist()
    ax.bar(
        x,
        acc,
        width=width,
        color="tab:blue",
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    ax.bar(
        x,
        [c - a for c, a in zip(conf, acc, strict=True)],
        bottom=acc,
        width=width,
        fill=False,
        hatch="//",
        edgecolor="tab:red",
        linewidth=0.8,
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE = {ece:.3f}, {n_bins} bins)")
    ax.legend(loc="upper left")
    return ax


def regression_bands(
    x: Tensor,
    prediction: Prediction,
    x_train: Tensor | None = None,
    y_train: Tensor | None = None,
    levels: float | Sequence[float] = (0.5, 0.95),
    ax: Axes | None = None,
) -> Axes:
    """Predictive mean with shaded central intervals, for 1-D regression.

    Draws, against ``x``: the predictive mean; one shaded band per level from
    :meth:`Prediction.interval <pyrolite_bnn.Prediction.interval>` (total
    uncertainty, noise included); the epistemic part, mean
    ``± 2 * sqrt(epistemic_var)``, as a hatched band with dashed edges; and the
    training points if given.

    Args:
        x: inputs ``(N,)`` or ``(N, 1)`` at which ``prediction`` was made.
        prediction: a regression :class:`~pyrolite_bnn.Prediction` of ``x``.
        x_train: training inputs ``(M,)`` or ``(M, 1)`` to scatter (optional).
        y_train: training targets ``(M,)`` (needed with ``x_train``).
        levels: central interval levels in ``(0, 1)``, or one level.
        ax: axes to draw on (default: a new figure).

    Returns:
        The matplotlib axes.

    Raises:
        ImportError: if matplotlib is not installed.
        ValueError: for a level outside ``(0, 1)``, or points that do not
            match (``prediction`` and ``x``; ``x_train`` and ``y_train``).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> from pyrolite_bnn import plot
        >>> tanh = torch.nn.Tanh()
        >>> net = bnn.VISequential(bnn.VILinear(1, 8), tanh, bnn.VILinear(8, 1))
        >>> x = torch.linspace(-3, 3, 50)[:, None]
        >>> pred = bnn.predict(net, x, bnn.Normal(scale=0.1), samples=20)
        >>> ax = plot.regression_bands(x, pred)  # doctest: +SKIP
        >>> ax.figure.savefig("bands.png")  # doctest: +SKIP
    """
    xs = _flat(x, "x")
    if x_train is not None and y_train is None:
        raise ValueError("y_train is needed to plot the training points x_train")
    levels = _interval_levels(levels)
    train = None
    if x_train is not None and y_train is not None:
        train = _flat(x_train, "x_train"), _flat(y_train, "y_train")
        if train[0].shape != train[1].shape:
            raise ValueError(
                f"x_train of {train[0].shape[0]} points does not match y_train "
                f"of {train[1].shape[0]}"
            )
    mean = _flat(prediction.mean, "prediction.mean")
    if mean.shape != xs.shape:
        raise ValueError(
            f"prediction of {mean.shape[0]} points does not match x of {xs.shape[0]}"
        )
    ax = _new_axes(ax)
    order = torch.argsort(xs)
    xs = xs[order]
    ordered = sorted(levels, reverse=True)
    for rank, level in enumerate(ordered):
        lower, upper = prediction.interval(level)
        alpha = 0.15 + 0.2 * rank / max(len(ordered) - 1, 1)
        ax.fill_between(
            xs.tolist(),
            _flat(lower, "lower")[order].tolist(),
            _flat(upper, "upper")[order].tolist(),
            color="tab:blue",
            alpha=alpha,
            linewidth=0,
            label=f"{level:.0%} predictive interval",
        )
    spread = 2 * _flat(prediction.epistemic_var, "epistemic_var")[order].sqrt()
    mean = mean[order]
    ax.fill_between(
        xs.tolist(),
        (mean - spread).tolist(),
        (mean + spread).tolist(),
        facecolor="none",
        edgecolor="tab:orange",
        hatch="///",
        linestyle="--",
        linewidth=1.0,
        label="epistemic ±2 std",
    )
    ax.plot(xs.tolist(), mean.tolist(), color="tab:blue", linewidth=2, label="mean")
    if train is not None:
        ax.scatter(
            train[0].tolist(),
            train[1].tolist(),
            s=8,
            color="black",
            alpha=0.6,
            label="training data",
            zorder=3,
        )
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(loc="best", fontsize="small")
    return ax


def uncertainty_histogram(
    scores_in: Tensor,
    scores_out: Tensor,
    bins: int = 30,
    ax: Axes | None = None,
    label: str = "mutual information (nats)",
) -> Axes:
    """Histograms of an uncertainty score on in- and out-of-distribution inputs.

    Both histograms share the same bins and are normalised to densities; the
    AUROC of the score for telling the two apart
    (:func:`~pyrolite_bnn.metrics.auroc`) is printed in the title.

    Args:
        scores_in: scores of in-distribution inputs ``(n,)``.
        scores_out: scores of out-of-distribution inputs ``(m,)``.
        bins: number of shared bins.
        ax: axes to draw on (default: a new figure).
        label: name of the score, for the x axis.

    Returns:
        The matplotlib axes.

    Raises:
        ImportError: if matplotlib is not installed.

    Example:
        >>> import torch
        >>> from pyrolite_bnn import plot
        >>> s_in, s_out = torch.rand(100) * 0.2, torch.rand(100) * 0.5 + 0.1
        >>> ax = plot.uncertainty_histogram(s_in, s_out)  # doctest: +SKIP
        >>> ax.figure.savefig("ood.png")  # doctest: +SKIP
    """
    s_in = _flat(scores_in, "scores_in")
    s_out = _flat(scores_out, "scores_out")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    area = float(metrics.auroc(s_in, s_out))
    ax = _new_axes(ax)
    both = torch.cat([s_in, s_out])
    lo, hi = float(both.min()), float(both.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = torch.linspace(lo, hi, bins + 1).tolist()
    ax.hist(
        s_in.tolist(),
        bins=edges,
        density=True,
        alpha=0.6,
        color="tab:blue",
        label=f"in-distribution (n={s_in.numel()})",
    )
    ax.hist(
        s_out.tolist(),
        bins=edges,
        density=True,
        alpha=0.6,
        color="tab:red",
        label=f"out-of-distribution (n={s_out.numel()})",
    )
    ax.set_xlabel(label)
    ax.set_ylabel("density")
    ax.set_title(f"In- vs out-of-distribution (AUROC = {area:.3f})")
    ax.legend(loc="best")
    return ax
