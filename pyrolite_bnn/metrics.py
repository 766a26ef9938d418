"""Metrics for evaluating the quality and uncertainty of predictions.

All functions are stateless, operate on :class:`torch.Tensor` inputs (CPU or CUDA,
``float32`` or ``float64``; half-precision inputs, ``float16`` and ``bfloat16``,
are read as ``float32``) and are fully vectorised over data points. Each metric
returns a 0-dim floating point tensor on the device of its inputs, in their
(promoted) dtype and at least ``float32``, except :func:`calibration_curve`, which
returns a tuple of per-bin tensors. Sums over data points (the calibration bins)
are accumulated in ``float64``, so a metric over millions of predictions (per-pixel
calibration) does not drift with the data set's size.

Classification metrics take ``probs`` of shape ``(N, C)`` (rows are class
probabilities that lie in ``[0, 1]`` and sum to 1 within ``1e-4``, or within the
rounding of a half-precision dtype) and integer
``labels`` of shape ``(N,)`` with values in ``[0, C)``:

* :func:`nll`, :func:`accuracy`, :func:`brier_score`,
* :func:`expected_calibration_error` and :func:`calibration_curve`.

Out-of-distribution detection is scored with :func:`auroc`.

Dense predictions (a segmentation's per-pixel probabilities ``(B, H, W, C)``
and labels ``(B, H, W)``, per-token ones) are scored with each position as
one row: ``probs.reshape(-1, C)`` and ``labels.reshape(-1)``, after leaving
out positions without a label (``keep = labels != 255`` for the void pixels
of VOC and Cityscapes masks, then ``probs[keep]``, ``labels[keep]``); per-pixel
OOD scores likewise as ``scores.reshape(-1)``. The messages of these
functions name that reshaping where the shapes fit it.

Regression metrics take tensors of identical (arbitrary) shape and average over
all elements: :func:`rmse`, :func:`gaussian_nll`, :func:`interval_coverage` and
:func:`quantile_calibration_error`.

Invalid inputs raise :class:`ValueError` (or :class:`TypeError` for arguments that
are not tensors) with a message stating what was expected and what was received.

Non-finite values: NaN is refused everywhere, and so is an infinite regression
``target`` (an observed value). Predictions may be infinite and give the
metric's limit: :func:`rmse` and :func:`gaussian_nll` are ``inf`` for an
infinite mean or variance (the density at a finite target is 0), an infinite
interval bound is unbounded on that side, and :func:`auroc` ranks infinite
scores. :func:`quantile_calibration_error` refuses a mean and a standard
deviation both infinite at one position (its quantiles are undefined).
:func:`rmse` and :func:`gaussian_nll` are computed in ``float64`` (the root
mean square scaled by the largest error), so that no square of a finite input
overflows or underflows on the way: the result is ``inf`` or ``0`` only where
its value is beyond the result's dtype.

Missing regression targets (NaN, which a likelihood built with
``missing="nan"`` leaves out of the loss) are left out with a mask, as the
unlabelled positions of dense predictions are: ``keep = ~y.isnan()``, then
``rmse(pred.mean[keep], y[keep])``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch

from pyrolite_bnn._label_values import (
    keep_mask_hint,
    labels_outside,
    outside_labels_note,
)
from pyrolite_bnn._validation import check_bool
from pyrolite_bnn.distributions._precision import full_precision, summary_dtype

__all__ = [
    "accuracy",
    "auroc",
    "brier_score",
    "calibration_curve",
    "expected_calibration_error",
    "gaussian_nll",
    "interval_coverage",
    "nll",
    "quantile_calibration_error",
    "rmse",
]

_ROW_SUM_TOLERANCE = 1e-4


# --------------------------------------------------------------------------- #
# Input validation helpers
# --------------------------------------------------------------------------- #
def _require_tensor(x: object, name: str) -> torch.Tensor:
    """Return ``x`` if it is a tensor, otherwise raise ``TypeError``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _check_classification(
    probs: object, labels: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``probs`` (N, C) and ``labels`` (N,).

    Returns:
        ``(probs, labels)`` with ``labels`` converted to ``torch.long``.

    """
    p = _require_tensor(probs, "probs")
    y = _require_tensor(labels, "labels")
    if p.ndim != 2:
        raise ValueError(
            f"probs must be a 2-D tensor of shape (N, C), got shape {tuple(p.shape)}"
            + _positions_as_rows_hint(p, y)
        )
    n, c = p.shape
    if n == 0 or c == 0:
        raise ValueError(
            "probs must be non-empty (at least one sample and one class), "
            f"got shape {tuple(p.shape)}"
        )
    if not p.is_floating_point():
        raise ValueError(f"probs must have a floating point dtype, got {p.dtype}")
    tolerance = _ROW_SUM_TOLERANCE
    if p.dtype in (torch.float16, torch.bfloat16):
        # Each probability rounded to half precision is off by at most eps/2 of
        # itself, so a row sums to 1 within eps/2; sums over many rows in half
        # precision stall: read it as float32.
        tolerance = max(tolerance, torch.finfo(p.dtype).eps)
        p = full_precision(p)
    if not bool(torch.isfinite(p).all()):
        raise ValueError("probs must be finite, got NaN or infinite values")
    lo, hi = torch.aminmax(p)
    if lo.item() < 0.0 or hi.item() > 1.0:
        raise ValueError(
            "probs must lie in [0, 1], "
            f"got values in [{lo.item():.6g}, {hi.item():.6g}]"
        )
    max_dev = (p.sum(dim=1) - 1.0).abs().max().item()
    if max_dev > tolerance:
        raise ValueError(
            f"rows of probs must sum to 1 (tolerance {tolerance:g}), "
            f"got a maximum |row sum - 1| of {max_dev:.6g}"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must have an integer dtype, got {y.dtype}")
    if tuple(y.shape) != (n,):
        raise ValueError(
            f"labels must have shape ({n},) to match probs of shape {(n, c)}, "
            f"got shape {tuple(y.shape)}"
            + (
                "; one label per row of probs: labels.reshape(-1)"
                if y.ndim > 1 and y.numel() == n
                else ""
            )
        )
    if y.device != p.device:
        raise ValueError(
            "labels and probs must be on the same device, "
            f"got {y.device} and {p.device}"
        )
    y_lo, y_hi = int(y.min().item()), int(y.max().item())
    if y_lo < 0 or y_hi >= c:
        outside = labels_outside(y, c)
        raise ValueError(
            f"labels must lie in [0, {c - 1}] for {c} classes, "
            f"got values in [{y_lo}, {y_hi}] ({outside_labels_note(outside)})"
            + keep_mask_hint(outside, c, y_lo)
        )
    return p, y.long()


def _positions_as_rows_hint(p: torch.Tensor, y: torch.Tensor) -> str:
    """How to score probabilities per position (a segmentation's) as rows.

    Classes last (``(B, H, W, C)``, as :class:`~pyrolite_bnn.Prediction`
    gives them) unless the labels fit them in dimension 1 (torch's
    channels-first ``(B, C, H, W)``) and not last.
    """
    if p.ndim < 3:
        return ""
    channels_first = (p.shape[0], *p.shape[2:])
    if tuple(y.shape) == channels_first and tuple(y.shape) != tuple(p.shape[:-1]):
        layout = "the classes in dimension 1, torch's (B, C, H, W)"
        rows = f"probs.movedim(1, -1).reshape(-1, {p.shape[1]})"
    else:
        layout = "the classes last, as Prediction.probs gives them, (B, H, W, C)"
        rows = f"probs.reshape(-1, {p.shape[-1]})"
    return (
        f"; for probabilities per position (pixel, token) with {layout}, score "
        f"each position as a row: {rows} with labels.reshape(-1)"
    )


def _check_n_bins(n_bins: int) -> int:
    """Validate the number of bins and return it as a Python ``int``."""
    if isinstance(n_bins, bool):
        raise TypeError(f"n_bins must be an integer, got {n_bins!r}")
    try:
        value = operator.index(n_bins)
    except TypeError:
        raise TypeError(
            f"n_bins must be an integer, got {type(n_bins).__name__}"
        ) from None
    if value < 1:
        raise ValueError(f"n_bins must be >= 1, got {value}")
    return value


def _check_real(x: object, name: str, finite: bool = False) -> torch.Tensor:
    """Validate a non-empty, NaN-free (``finite``: and inf-free) floating tensor."""
    t = _require_tensor(x, name)
    if not t.is_floating_point():
        raise ValueError(f"{name} must have a floating point dtype, got {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(t.shape)}")
    if bool(torch.isnan(t).any()):
        missing = (
            " (missing targets, as a likelihood built with missing='nan' reads "
            f"them: score the observed ones, keep = ~{name}.isnan(), then "
            f"metric(prediction[keep], {name}[keep]))"
            if finite
            else ""
        )
        raise ValueError(f"{name} must not contain NaN values{missing}")
    if finite and bool(torch.isinf(t).any()):
        raise ValueError(
            f"{name} must be finite (observed values), got "
            f"{int(torch.isinf(t).sum())} infinite value(s)"
        )
    return t


def _check_regression(**tensors: object) -> list[torch.Tensor]:
    """Validate tensors that must share shape and device (keyword order kept).

    Returns them in at least ``float32`` (:func:`full_precision`): in half
    precision ``rmse`` of errors of 300 and ``gaussian_nll`` of an error of 10
    with variance 1e-3 overflowed to ``inf``. The ``target`` must be finite.
    """
    checked = [
        full_precision(_check_real(value, name, finite=name == "target"))
        for name, value in tensors.items()
    ]
    names = list(tensors)
    first_name, first = names[0], checked[0]
    for name, t in zip(names[1:], checked[1:], strict=True):
        if t.shape != first.shape:
            raise ValueError(
                f"{name} must have the same shape as {first_name} "
                f"{tuple(first.shape)}, got shape {tuple(t.shape)}"
                + _singleton_hint(name, t, first)
            )
        if t.device != first.device:
            raise ValueError(
                f"{name} must be on the same device as {first_name} "
                f"({first.device}), got {t.device}"
            )
    return checked


def _singleton_hint(name: str, t: torch.Tensor, first: torch.Tensor) -> str:
    """How to match shapes that differ in dimensions of size 1 only.

    A per-pixel target ``(B, 1, H, W)`` (a channel of one) against predictions
    ``(B, H, W)``: the same values in another shape.
    """

    def sizes(tensor: torch.Tensor) -> list[int]:
        return [size for size in tensor.shape if size != 1]

    if sizes(t) != sizes(first):
        return ""
    shape = tuple(first.shape)
    return f"; they differ in dimensions of size 1 only: {name}.reshape({shape})"


def _check_scores(x: object, name: str) -> torch.Tensor:
    """Validate a non-empty 1-D tensor of real-valued scores."""
    t = _require_tensor(x, name)
    if t.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D tensor of shape (n,), got shape {tuple(t.shape)}"
            + (
                "; for scores per position (an entropy map (B, H, W)), score each "
                f"position: {name}.reshape(-1)"
                if t.ndim > 1
                else ""
            )
        )
    if t.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(
            f"{name} must have a real (integer or floating point) dtype, got {t.dtype}"
        )
    if t.is_floating_point() and bool(torch.isnan(t).any()):
        raise ValueError(f"{name} must not contain NaN values")
    return t


# --------------------------------------------------------------------------- #
# Binning helpers
# --------------------------------------------------------------------------- #
def _top_label(
    probs: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return top-label confidence and correctness (as ``probs.dtype``)."""
    confidence = probs.amax(dim=1)
    correct = (probs.argmax(dim=1) == labels).to(probs.dtype)
    return confidence, correct


def _bin_indices(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Map confidences to equal-width bin indices in ``[0, n_bins)``.

    Bin ``i`` is the half-open interval ``(i / n_bins, (i + 1) / n_bins]``; a
    confidence of exactly 0 goes to the first bin and one of exactly 1 to the last.
    Edges are computed as ``i / n_bins`` in the dtype of ``confidence`` so that a
    value written as ``i / n_bins`` lands exactly on its edge.
    """
    edges = (
        torch.arange(n_bins + 1, dtype=confidence.dtype, device=confidence.device)
        / n_bins
    )
    # right=False: edges[k - 1] < x <= edges[k]  ->  bin k - 1.
    idx = torch.bucketize(confidence.contiguous(), edges, right=False) - 1
    return idx.clamp(min=0, max=n_bins - 1)


def _bin_sums(
    confidence: torch.Tensor, correct: torch.Tensor, idx: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin counts and float64 sums of confidence and correctness.

    float64 whatever the inputs' dtype: a float32 running sum over millions of
    rows drifts by more than the calibration error it measures.
    """
    counts = torch.bincount(idx, minlength=n_bins)
    wide = confidence.new_zeros(n_bins, dtype=torch.float64)
    conf_sums = wide.index_add(0, idx, confidence.double())
    acc_sums = wide.index_add(0, idx, correct.double())
    return counts, conf_sums, acc_sums


def _equal_width_bin_sums(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin sample counts, summed confidences and summed correctness."""
    confidence, correct = _top_label(probs, labels)
    return _bin_sums(confidence, correct, _bin_indices(confidence, n_bins), n_bins)


def _equal_mass_bin_indices(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Equal-mass bins of the sorted confidences, ties kept in one bin.

    Position ``i`` of the sorted confidences falls in the group that
    :func:`torch.tensor_split` gives it; every value then goes to the group of
    the first position holding it, so tied examples share a bin and the result
    does not depend on the order of the rows.
    """
    n = confidence.shape[0]
    ordered, order = torch.sort(confidence, stable=True)
    position = torch.arange(n, device=confidence.device)
    base, extra = divmod(n, n_bins)
    # tensor_split: the first `extra` groups hold base + 1 positions.
    long_groups = extra * (base + 1)
    group = torch.where(
        position < long_groups,
        position // (base + 1),
        extra + (position - long_groups) // max(base, 1),
    )
    _, run, run_length = torch.unique_consecutive(
        ordered, return_inverse=True, return_counts=True
    )
    run_start = torch.cumsum(run_length, 0) - run_length
    idx = torch.empty_like(group)
    idx[order] = group[run_start[run]]
    return idx


# --------------------------------------------------------------------------- #
# Classification metrics
# --------------------------------------------------------------------------- #
def nll(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of integer labels under class probabilities.

    Probabilities are clamped from below at ``torch.finfo(probs.dtype).tiny`` so
    that a zero probability on the true class gives a large but finite loss.

    Args:
        probs: Class probabilities of shape ``(N, C)``.
        labels: Integer class labels of shape ``(N,)`` with values in ``[0, C)``.

    Returns:
        0-dim tensor (dtype of ``probs``, ``float32`` for half precision):
        ``-mean_i log probs[i, labels[i]]``.

    Raises:
        TypeError: If an argument is not a tensor.
        ValueError: If ``probs`` is not a non-empty ``(N, C)`` floating point
            tensor with entries in ``[0, 1]`` and rows summing to 1, or ``labels``
            is not an integer tensor of shape ``(N,)`` with values in ``[0, C)``.

    Example:
        >>> import torch
        >>> p = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
        >>> y = torch.tensor([0, 1])
        >>> print(f"{nll(p, y).item():.4f}")
        0.4904

    """
    p, y = _check_classification(probs, labels)
    true_prob = p.gather(1, y.unsqueeze(1)).squeeze(1)
    tiny = torch.finfo(p.dtype).tiny
    return -torch.log(true_prob.clamp(min=tiny)).mean()


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose most probable class equals the label.

    Ties in ``probs`` are resolved towards the lowest class index (``argmax``).

    Args:
        probs: Class probabilities of shape ``(N, C)``.
        labels: Integer class labels of shape ``(N,)`` with values in ``[0, C)``.

    Returns:
        0-dim tensor (dtype of ``probs``, ``float32`` for half precision) in
        ``[0, 1]``.

    Raises:
        TypeError: If an argument is not a tensor.
        ValueError: If ``probs`` or ``labels`` are invalid (see :func:`nll`).

    Example:
        >>> import torch
        >>> p = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
        >>> y = torch.tensor([0, 0, 1])
        >>> print(f"{accuracy(p, y).item():.4f}")
        0.6667

    """
    p, y = _check_classification(probs, labels)
    return (p.argmax(dim=1) == y).to(p.dtype).mean()


def expected_calibration_error(
    probs: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    adaptive: bool = False,
) -> torch.Tensor:
    """Compute the expected calibration error (ECE) of the top-label confidence.

    ``ECE = sum_b (|B_b| / N) * |acc_b - conf_b|`` where ``acc_b`` and ``conf_b``
    are the accuracy and mean confidence of the samples in bin ``B_b``; empty bins
    contribute 0.

    With ``adaptive=False`` the bins have equal width over ``[0, 1]``: bin ``i`` is
    ``(i / n_bins, (i + 1) / n_bins]``, a confidence of exactly 0 falls in the
    first bin and one of exactly 1 in the last (torchmetrics' bins are
    ``[lo, hi)``: the two differ only where confidences sit exactly on a bin
    edge, e.g. 0.6 with 10 bins). With ``adaptive=True`` the bins
    have (near) equal mass: samples are sorted by confidence and split into
    ``n_bins`` consecutive groups as :func:`torch.tensor_split` splits them;
    samples of equal confidence stay together in the group of the first of them
    (so the value does not depend on the order of the rows, and a group can
    grow at the expense of the next); empty groups contribute 0.

    Args:
        probs: Class probabilities of shape ``(N, C)``.
        labels: Integer class labels of shape ``(N,)`` with values in ``[0, C)``.
        n_bins: Number of bins, at least 1.
        adaptive: Use equal-mass instead of equal-width bins.

    Returns:
        0-dim tensor (dtype of ``probs``, ``float32`` for half precision) in
        ``[0, 1]``.

    Raises:
        TypeError: If an argument is not a tensor, ``n_bins`` is not an integer
            or ``adaptive`` not a bool.
        ValueError: If ``probs`` or ``labels`` are invalid (see :func:`nll`) or
            ``n_bins < 1``.

    Example:
        >>> import torch
        >>> p = torch.tensor(
        ...     [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.4, 0.3, 0.3], [0.2, 0.45, 0.35]]
        ... )
        >>> y = torch.tensor([0, 1, 0, 2])
        >>> print(f"{expected_calibration_error(p, y, n_bins=3).item():.4f}")
        0.2125
        >>> ece = expected_calibration_error(p, y, n_bins=3, adaptive=True)
        >>> print(f"{ece.item():.4f}")
        0.2625

    """
    p, y = _check_classification(probs, labels)
    bins = _check_n_bins(n_bins)
    n = p.shape[0]
    if check_bool(adaptive, "adaptive"):
        confidence, correct = _top_label(p, y)
        idx = _equal_mass_bin_indices(confidence, bins)
        _, conf_sums, acc_sums = _bin_sums(confidence, correct, idx, bins)
    else:
        _, conf_sums, acc_sums = _equal_width_bin_sums(p, y, bins)
    # (|B|/N) * |acc_b - conf_b| == |sum_acc_b - sum_conf_b| / N
    return ((acc_sums - conf_sums).abs().sum() / n).to(p.dtype)


def calibration_curve(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin mean confidence, accuracy and count for a reliability diagram.

    Uses the same equal-width bins as :func:`expected_calibration_error`: bin
    ``i`` is ``(i / n_bins, (i + 1) / n_bins]``, with a confidence of exactly 0 in
    the first bin and one of exactly 1 in the last.

    Args:
        probs: Class probabilities of shape ``(N, C)``.
        labels: Integer class labels of shape ``(N,)`` with values in ``[0, C)``.
        n_bins: Number of bins, at least 1.

    Returns:
        Tuple ``(bin_confidence, bin_accuracy, bin_count)``, each of shape
        ``(n_bins,)``. ``bin_confidence`` and ``bin_accuracy`` have the dtype of
        ``probs`` (``float32`` for half precision) and are NaN for empty bins;
        ``bin_count`` is ``torch.long``.

    Raises:
        TypeError: If an argument is not a tensor or ``n_bins`` is not an integer.
        ValueError: If ``probs`` or ``labels`` are invalid (see :func:`nll`) or
            ``n_bins < 1``.

    Example:
        >>> import torch
        >>> p = torch.tensor(
        ...     [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.4, 0.3, 0.3], [0.2, 0.45, 0.35]]
        ... )
        >>> y = torch.tensor([0, 1, 0, 2])
        >>> conf, acc, count = calibration_curve(p, y, n_bins=4)
        >>> print([round(v, 3) for v in conf.tolist()])
        [nan, 0.425, nan, 0.85]
        >>> print(acc.tolist(), count.tolist())
        [nan, 0.5, nan, 0.5] [0, 2, 0, 2]

    """
    p, y = _check_classification(probs, labels)
    bins = _check_n_bins(n_bins)
    counts, conf_sums, acc_sums = _equal_width_bin_sums(p, y, bins)
    nonempty = counts > 0
    denom = counts.clamp(min=1).to(conf_sums.dtype)
    nan = torch.full_like(conf_sums, math.nan)
    bin_confidence = torch.where(nonempty, conf_sums / denom, nan).to(p.dtype)
    bin_accuracy = torch.where(nonempty, acc_sums / denom, nan).to(p.dtype)
    return bin_confidence, bin_accuracy, counts


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-class Brier score.

    ``mean_i sum_c (probs[i, c] - onehot(labels[i])[c]) ** 2``, which lies in
    ``[0, 2]`` (0 for confident correct predictions).

    Args:
        probs: Class probabilities of shape ``(N, C)``.
        labels: Integer class labels of shape ``(N,)`` with values in ``[0, C)``.

    Returns:
        0-dim tensor (dtype of ``probs``, ``float32`` for half precision).

    Raises:
        TypeError: If an argument is not a tensor.
        ValueError: If ``probs`` or ``labels`` are invalid (see :func:`nll`).

    Example:
        >>> import torch
        >>> p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
        >>> y = torch.tensor([0, 2])
        >>> print(f"{brier_score(p, y).item():.4f}")
        0.2000

    """
    p, y = _check_classification(probs, labels)
    onehot = torch.nn.functional.one_hot(y, num_classes=p.shape[1]).to(p.dtype)
    return (p - onehot).square().sum(dim=1).mean()


def _refuse_labels(first: object, second: object) -> None:
    """Refuse ``(scores, labels)``, scikit-learn's ``roc_auc_score`` order.

    Float scores next to a tensor of the same length holding only 0s and 1s
    (of any dtype) is that call, not two groups of scores: it returned a
    plausible wrong area (0.59 against 0.99).
    """
    pair = (first, second)
    if not all(isinstance(t, torch.Tensor) and t.ndim == 1 for t in pair):
        return
    a, b = (t for t in pair if isinstance(t, torch.Tensor))
    if len(a) != len(b):
        return

    def binary(t: torch.Tensor) -> bool:  # 0/1 values, both present
        if t.is_complex():
            return False
        values = t.to(torch.float64)
        return bool(((values == 0) | (values == 1)).all()) and bool(
            (values == 0).any() & (values == 1).any()
        )

    for scores, labels in ((a, b), (b, a)):
        if scores.is_floating_point() and not binary(scores) and binary(labels):
            raise ValueError(
                "auroc takes the scores of in-distribution inputs and those of "
                "out-of-distribution inputs, not (scores, labels) as scikit-learn's "
                "roc_auc_score: split them, auroc(scores[labels == 0], "
                "scores[labels == 1])"
            )


def auroc(scores_in: torch.Tensor, scores_out: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve for detecting out-of-distribution inputs.

    Out-of-distribution samples are the positives and a higher score means
    "more OOD". The result equals ``P(s_out > s_in) + 0.5 * P(s_out == s_in)`` for
    independently drawn scores, computed with the Mann-Whitney U statistic using
    average ranks for ties (``O((n + m) log(n + m))``, no pairwise matrix).

    Args:
        scores_in: Scores of in-distribution samples, shape ``(n,)``.
        scores_out: Scores of out-of-distribution samples, shape ``(m,)``.

    Returns:
        0-dim tensor in ``[0, 1]``; its dtype is the promoted floating dtype of
        the inputs, at least ``float32`` (the default dtype for integer
        scores). 0.5 means no separation, 1.0 perfect separation.

    Raises:
        TypeError: If an argument is not a tensor.
        ValueError: If a score tensor is not 1-D, is empty, has a non-real dtype
            or contains NaN, or the tensors are on different devices.

    Example:
        >>> import torch
        >>> s_in = torch.tensor([0.1, 0.4, 0.35])
        >>> s_out = torch.tensor([0.8, 0.4])
        >>> print(f"{auroc(s_in, s_out).item():.4f}")
        0.9167

    """
    _refuse_labels(scores_in, scores_out)
    s_in = _check_scores(scores_in, "scores_in")
    s_out = _check_scores(scores_out, "scores_out")
    if s_in.device != s_out.device:
        raise ValueError(
            "scores_in and scores_out must be on the same device, "
            f"got {s_in.device} and {s_out.device}"
        )
    dtype = torch.promote_types(s_in.dtype, s_out.dtype)
    result_dtype = summary_dtype(dtype)
    if dtype.is_floating_point and not (
        s_in.is_floating_point() and s_out.is_floating_point()
    ):
        # Integer against floating scores are compared in float64: their
        # promoted float32 tied 16777217 and 16777216.0 (an area of 0.5, not 0).
        dtype = torch.float64
    n_in, n_out = s_in.numel(), s_out.numel()
    scores = torch.cat((s_in.to(dtype), s_out.to(dtype)))
    sorted_scores, order = torch.sort(scores)
    group: torch.Tensor
    counts: torch.Tensor
    _, group, counts = torch.unique_consecutive(
        sorted_scores, return_inverse=True, return_counts=True
    )
    # 1-based ranks: a tie group occupying ranks start..end gets (start + end) / 2.
    ends = torch.cumsum(counts, dim=0).to(torch.float64)
    average_rank = ends - (counts.to(torch.float64) - 1.0) / 2.0
    ranks = average_rank[group]
    rank_sum_out = ranks[order >= n_in].sum()
    u_out = rank_sum_out - n_out * (n_out + 1) / 2.0
    return (u_out / (float(n_in) * float(n_out))).to(result_dtype)


# --------------------------------------------------------------------------- #
# Regression metrics
# --------------------------------------------------------------------------- #
def rmse(mean: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root mean squared error over all elements.

    Args:
        mean: Point predictions, any shape.
        target: Observed values, same shape as ``mean``.

    Returns:
        0-dim tensor ``sqrt(mean((mean - target) ** 2))``, in the inputs'
        dtype, at least ``float32``.

    Raises:
        TypeError: If an argument is not a tensor.
        ValueError: If an input is empty, not floating point or contains NaN,
            ``target`` is infinite, or the shapes or devices differ.

    Example:
        >>> import torch
        >>> mu = torch.tensor([1.0, 2.0, 3.0])
        >>> y = torch.tensor([1.0, 4.0, 1.0])
        >>> print(f"{rmse(mu, y).item():.4f}")
        1.6330

    """
    mu, y = _check_regression(mean=mean, target=target)
    dtype = torch.promote_types(mu.dtype, y.dtype)
    # float32 errors beyond 1.8e19 squared to inf, below 1e-23 to 0.
    error = (mu.to(torch.float64) - y.to(torch.float64)).abs()
    return _root_mean_square(error).to(dtype)


def _root_mean_square(values: torch.Tensor) -> torch.Tensor:
    """``sqrt(mean(values ** 2))`` of values ``>= 0``, scaled by their largest.

    No square overflows or underflows (float64 values beyond 1e154 too);
    an infinite value gives ``inf``.
    """
    largest = values.amax()
    unit = torch.where(
        torch.isfinite(largest) & (largest > 0), largest, torch.ones_like(largest)
    )
    return unit * torch.sqrt(torch.mean((values / unit).square()))


def gaussian_nll(
    mean: torch.Tensor, variance: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Mean negative log-likelihood under independent Gaussian predictions.

    ``mean_i 0.5 * (log(2 * pi * var_i) + (y_i - mu_i) ** 2 / var_i)``.

    Args:
        mean: Predictive means, any shape.
        variance: Predictive variances (strictly positive), same shape as ``mean``.
        target: Observed values, same shape as ``mean``.

    Returns:
        0-dim tensor, in the inputs' dtype, at least ``float32``.

    Raises:
        TypeError: If an argument is not a tensor.
        ValueError: If an input is empty, not floating point or contains NaN,
            ``target`` is infinite, the shapes or devices differ, or any
            variance is ``<= 0``.

    Example:
        >>> import torch
        >>> mu = torch.tensor([0.0, 1.0])
        >>> var = torch.tensor([1.0, 4.0])
        >>> y = torch.tensor([1.0, 1.0])
        >>> print(f"{gaussian_nll(mu, var, y).item():.4f}")
        1.5155

    """
    mu, var, y = _check_regression(mean=mean, variance=variance, target=target)
    min_var = var.min().item()
    if not min_var > 0.0:
        raise ValueError(f"variance must be > 0 everywhere, got minimum {min_var:.6g}")
    dtype = torch.promote_types(torch.promote_types(mu.dtype, var.dtype), y.dtype)
    mu, var, y = (t.to(torch.float64) for t in (mu, var, y))
    # The squared standard score, not a squared error over the variance: an
    # error of 1e20 and a variance of 1e30 made inf / 1e30 in float32.
    z = (y - mu) / var.sqrt()
    terms = math.log(2.0 * math.pi) + torch.log(var) + z.square()
    # An infinite mean or variance: the density at the (finite) target is 0.
    terms = terms.masked_fill(mu.isinf() | var.isinf(), math.inf)
    return (0.5 * terms.mean()).to(dtype)


def interval_coverage(
    lower: torch.Tensor, upper: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Prediction interval coverage probability (PICP).

    Fraction of targets with ``lower <= target <= upper`` (both ends inclusive).

    Args:
        lower: Lower interval bounds, any shape.
        upper: Upper interval bounds, same shape as ``lower``.
        target: Observed values, same shape as ``lower``.

    Returns:
        0-dim tensor in ``[0, 1]``, in the inputs' dtype, at least ``float32``.

    Raises:
        TypeError: If an argument is not a tensor.
        ValueError: If an input is empty, not floating point or contains NaN,
            ``target`` is infinite, the shapes or devices differ, or any
            ``lower > upper``.

    Example:
        >>> import torch
        >>> lo = torch.zeros(4)
        >>> hi = torch.ones(4)
        >>> y = torch.tensor([0.0, 0.5, 1.0, 1.5])
        >>> print(f"{interval_coverage(lo, hi, y).item():.2f}")
        0.75

    """
    lo, hi, y = _check_regression(lower=lower, upper=upper, target=target)
    n_bad = int((lo > hi).sum().item())
    if n_bad > 0:
        raise ValueError(
            f"lower must be <= upper everywhere, got lower > upper at {n_bad} "
            f"of {lo.numel()} positions"
        )
    inside = (lo <= y) & (y <= hi)
    dtype = torch.result_type(lo, hi)
    dtype = torch.promote_types(dtype, y.dtype)
    return inside.to(dtype).mean()


def quantile_calibration_error(
    mean: torch.Tensor,
    stddev: torch.Tensor,
    target: torch.Tensor,
    levels: torch.Tensor | Sequence[float] | None = None,
) -> torch.Tensor:
    """Quantile calibration error of Gaussian predictive distributions.

    For each level ``p`` the observed frequency of targets at or below the
    ``p``-quantile ``mean + stddev * Phi^-1(p)`` of ``N(mean, stddev ** 2)`` is
    compared with ``p`` (evaluated in standardised form,
    ``(target - mean) / stddev <= Phi^-1(p)``). The result is the mean absolute
    difference ``|observed(p) - p|`` over the levels; 0 means perfectly
    calibrated quantiles.

    Args:
        mean: Predictive means, any shape.
        stddev: Predictive standard deviations (strictly positive), same shape as
            ``mean``.
        target: Observed values, same shape as ``mean``.
        levels: Quantile levels, a 1-D sequence of values in the open interval
            ``(0, 1)``. Defaults to ``torch.linspace(0.05, 0.95, 19)``.

    Returns:
        0-dim tensor in ``[0, 1)``, in the inputs' dtype, at least ``float32``.

    Raises:
        TypeError: If an argument is not a tensor, or ``levels`` holds other
            than real numbers.
        ValueError: If an input is empty, not floating point or contains NaN,
            ``target`` is infinite, the shapes or devices differ, any
            ``stddev <= 0``, ``mean`` and ``stddev`` are both infinite at a
            position, or ``levels`` is not a non-empty 1-D sequence of values
            in ``(0, 1)``.

    Example:
        >>> import torch
        >>> mu = torch.zeros(4)
        >>> sd = torch.ones(4)
        >>> y = torch.tensor([-1.0, -0.5, 0.5, 1.0])
        >>> qce = quantile_calibration_error(mu, sd, y, levels=[0.25, 0.5, 0.75])
        >>> print(f"{qce.item():.4f}")
        0.0000
        >>> print(f"{quantile_calibration_error(mu, sd, y + 10.0).item():.4f}")
        0.5000

    """
    mu, sd, y = _check_regression(mean=mean, stddev=stddev, target=target)
    min_sd = sd.min().item()
    if not min_sd > 0.0:
        raise ValueError(f"stddev must be > 0 everywhere, got minimum {min_sd:.6g}")
    undefined = int((mu.isinf() & sd.isinf()).sum())
    if undefined:
        raise ValueError(
            f"mean and stddev are both infinite at {undefined} of {mu.numel()} "
            "positions: the quantiles there are undefined (inf - inf)"
        )
    dtype = torch.promote_types(torch.promote_types(mu.dtype, sd.dtype), y.dtype)
    if levels is None:
        lv = torch.linspace(0.05, 0.95, 19, dtype=dtype, device=mu.device)
    else:
        if isinstance(levels, torch.Tensor) and (
            levels.is_complex() or levels.dtype == torch.bool
        ):
            raise TypeError(f"levels must be real numbers, got dtype {levels.dtype}")
        try:
            lv = torch.as_tensor(levels, dtype=dtype, device=mu.device)
        except (TypeError, ValueError, RuntimeError) as error:  # 'a', None, 1j
            raise TypeError(
                f"levels must be a 1-D sequence of numbers, got {levels!r}"
            ) from error
        if lv.ndim != 1 or lv.numel() == 0:
            raise ValueError(
                f"levels must be a non-empty 1-D sequence, got shape {tuple(lv.shape)}"
            )
        if bool(torch.isnan(lv).any()) or bool(((lv <= 0) | (lv >= 1)).any()):
            raise ValueError(
                "levels must lie in the open interval (0, 1), "
                f"got {[round(v, 6) for v in lv.tolist()]}"
            )
    z = ((y - mu) / sd).reshape(-1).to(dtype)
    z_sorted = torch.sort(z).values
    z_levels = torch.special.ndtri(lv)
    n_below = torch.searchsorted(z_sorted, z_levels, right=True)
    # Counts as float64: a float16 count is inf beyond 65504 targets.
    observed = n_below.to(torch.float64) / z.numel()
    return (observed - lv.to(torch.float64)).abs().mean().to(dtype)
