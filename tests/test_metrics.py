"""Tests for :mod:`pyrolite_bnn.metrics`."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable

import numpy as np
import pytest
import torch

from pyrolite_bnn import metrics

DTYPES = [torch.float32, torch.float64]

# Four 3-class predictions shared by several hand-computed tests:
#   sample  probs               label  argmax  confidence  correct
#   0       [0.9, 0.05, 0.05]   0      0       0.90        1
#   1       [0.8, 0.1,  0.1 ]   1      0       0.80        0
#   2       [0.4, 0.3,  0.3 ]   0      0       0.40        1
#   3       [0.2, 0.45, 0.35]   2      1       0.45        0
SMALL_PROBS = [
    [0.9, 0.05, 0.05],
    [0.8, 0.1, 0.1],
    [0.4, 0.3, 0.3],
    [0.2, 0.45, 0.35],
]
SMALL_LABELS = [0, 1, 0, 2]


def _small(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(SMALL_PROBS, dtype=dtype), torch.tensor(SMALL_LABELS)


def _scalar(value: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype)


def _assert_scalar(result: torch.Tensor, expected: float, dtype: torch.dtype) -> None:
    """Compare a 0-dim result with a float, with a tolerance suited to ``dtype``."""
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(result, _scalar(expected, dtype), atol=tol, rtol=tol)


# --------------------------------------------------------------------------- #
# Straightforward numpy reference implementations (loops on purpose)
# --------------------------------------------------------------------------- #
def _ref_nll(probs: np.ndarray, labels: np.ndarray, tiny: float) -> float:
    total = 0.0
    for i in range(len(labels)):
        total -= math.log(max(float(probs[i, labels[i]]), tiny))
    return total / len(labels)


def _ref_brier(probs: np.ndarray, labels: np.ndarray) -> float:
    total = 0.0
    for i in range(len(labels)):
        for c in range(probs.shape[1]):
            target = 1.0 if c == labels[i] else 0.0
            total += (float(probs[i, c]) - target) ** 2
    return total / len(labels)


def _ref_ece_from_groups(
    conf: np.ndarray, correct: np.ndarray, groups: list[list[int]]
) -> float:
    n = len(conf)
    ece = 0.0
    for members in groups:
        if not members:
            continue
        acc_b = sum(correct[i] for i in members) / len(members)
        conf_b = sum(conf[i] for i in members) / len(members)
        ece += len(members) / n * abs(acc_b - conf_b)
    return ece


def _ref_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    conf = probs.max(axis=1).astype(np.float64)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    groups: list[list[int]] = [[] for _ in range(n_bins)]
    for i, c in enumerate(conf):
        if c == 0.0:
            groups[0].append(i)
            continue
        for b in range(n_bins):
            if b / n_bins < c <= (b + 1) / n_bins:
                groups[b].append(i)
                break
    assert sum(len(g) for g in groups) == len(conf)
    return _ref_ece_from_groups(conf, correct, groups)


def _ref_adaptive_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    conf = probs.max(axis=1).astype(np.float64)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    order = np.argsort(conf, kind="stable")
    groups = [list(g) for g in np.array_split(order, n_bins)]
    return _ref_ece_from_groups(conf, correct, groups)


def _ref_auroc(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    wins = 0.0
    for s_out in scores_out:
        for s_in in scores_in:
            if s_out > s_in:
                wins += 1.0
            elif s_out == s_in:
                wins += 0.5
    return wins / (len(scores_in) * len(scores_out))


def _random_classification(
    rng: np.random.Generator, n: int, c: int
) -> tuple[np.ndarray, np.ndarray]:
    logits = rng.normal(size=(n, c)) * rng.uniform(0.5, 3.0, size=(n, 1))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    # Mostly correct, partly random labels, so that calibration is imperfect.
    labels = np.where(
        rng.random(n) < 0.6, probs.argmax(axis=1), rng.integers(0, c, size=n)
    )
    return probs, labels


# --------------------------------------------------------------------------- #
# nll
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", DTYPES)
def test_nll_hand_computed(dtype: torch.dtype) -> None:
    """NLL of two samples: (-log 0.5 - log 0.75) / 2 = (0.693147 + 0.287682) / 2."""
    probs = torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=dtype)
    labels = torch.tensor([0, 1])
    result = metrics.nll(probs, labels)
    assert result.shape == ()
    assert result.dtype == dtype
    expected = (math.log(2.0) + math.log(4.0 / 3.0)) / 2.0  # 0.4904146...
    _assert_scalar(result, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nll_zero_probability_is_clamped(dtype: torch.dtype) -> None:
    """A zero true-class probability gives -log(tiny), not inf."""
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=dtype)
    labels = torch.tensor([1, 1])
    result = metrics.nll(probs, labels)
    # (-log(tiny) - log(1)) / 2; float32: 87.3365 / 2, float64: 708.3964 / 2
    expected = -math.log(torch.finfo(dtype).tiny) / 2.0
    assert torch.isfinite(result)
    torch.testing.assert_close(result, _scalar(expected, dtype), atol=1e-4, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nll_matches_numpy_reference(dtype: torch.dtype) -> None:
    """Random inputs agree with a loop-based numpy implementation."""
    rng = np.random.default_rng(0)
    probs, labels = _random_classification(rng, 400, 6)
    p = torch.from_numpy(probs).to(dtype)
    expected = _ref_nll(p.double().numpy(), labels, torch.finfo(dtype).tiny)
    result = metrics.nll(p, torch.from_numpy(labels))
    torch.testing.assert_close(result, _scalar(expected, dtype), atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- #
# accuracy
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", DTYPES)
def test_accuracy_hand_computed(dtype: torch.dtype) -> None:
    """Argmax [0, 1, 1] vs labels [0, 0, 1] -> 2 correct of 3 = 0.6667."""
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]], dtype=dtype)
    labels = torch.tensor([0, 0, 1])
    result = metrics.accuracy(probs, labels)
    assert result.dtype == dtype
    _assert_scalar(result, 2.0 / 3.0, dtype)


def test_accuracy_ties_resolve_to_lowest_index() -> None:
    """For [0.5, 0.5] the prediction is class 0."""
    probs = torch.tensor([[0.5, 0.5]])
    assert metrics.accuracy(probs, torch.tensor([0])).item() == 1.0
    assert metrics.accuracy(probs, torch.tensor([1])).item() == 0.0


# --------------------------------------------------------------------------- #
# expected_calibration_error / calibration_curve
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", DTYPES)
def test_ece_equal_width_hand_computed(dtype: torch.dtype) -> None:
    """ECE of SMALL_PROBS with 4 equal-width bins (two of them empty)."""
    probs, labels = _small(dtype)
    # bin (0.25, 0.5]: conf {0.4, 0.45}, correct {1, 0}: |0.5 - 0.425| * 2/4 = 0.0375
    # bin (0.75, 1.0]: conf {0.9, 0.8}, correct {1, 0}: |0.5 - 0.85| * 2/4 = 0.175
    # bins (0, 0.25] and (0.5, 0.75] are empty -> 0.  Total 0.2125.
    result = metrics.expected_calibration_error(probs, labels, n_bins=4)
    assert result.dtype == dtype
    torch.testing.assert_close(result, _scalar(0.2125, dtype), atol=1e-6, rtol=0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ece_adaptive_hand_computed(dtype: torch.dtype) -> None:
    """Adaptive ECE of SMALL_PROBS with 3 equal-mass bins of sizes [2, 1, 1]."""
    probs, labels = _small(dtype)
    # sorted conf: 0.4 (1), 0.45 (0), 0.8 (0), 0.9 (1); tensor_split(4, 3) -> 2, 1, 1
    # {0.4, 0.45}: |0.5 - 0.425| * 2/4 = 0.0375
    # {0.8}:       |0 - 0.8| * 1/4     = 0.2
    # {0.9}:       |1 - 0.9| * 1/4     = 0.025          total 0.2625
    result = metrics.expected_calibration_error(probs, labels, n_bins=3, adaptive=True)
    assert result.dtype == dtype
    torch.testing.assert_close(result, _scalar(0.2625, dtype), atol=1e-6, rtol=0.0)


@pytest.mark.parametrize("adaptive", [False, True])
def test_ece_with_more_bins_than_samples(adaptive: bool) -> None:
    """Empty bins / empty equal-mass groups contribute nothing."""
    probs, labels = _small(torch.float64)
    # Each sample alone in its bin (100 equal-width bins, or 10 groups of sizes
    # 1, 1, 1, 1, 0, ..., 0): (|1 - 0.9| + |0 - 0.8| + |1 - 0.4| + |0 - 0.45|) / 4
    #   = (0.1 + 0.8 + 0.6 + 0.45) / 4 = 0.4875
    n_bins = 10 if adaptive else 100
    result = metrics.expected_calibration_error(
        probs, labels, n_bins=n_bins, adaptive=adaptive
    )
    torch.testing.assert_close(result, _scalar(0.4875, torch.float64))


@pytest.mark.parametrize("adaptive", [False, True])
def test_ece_single_bin_is_global_gap(adaptive: bool) -> None:
    """With one bin ECE = |accuracy - mean confidence| = |0.5 - 0.6375| = 0.1375."""
    probs, labels = _small(torch.float64)
    result = metrics.expected_calibration_error(
        probs, labels, n_bins=1, adaptive=adaptive
    )
    torch.testing.assert_close(result, _scalar(0.1375, torch.float64))


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ece_confident_predictions(adaptive: bool, dtype: torch.dtype) -> None:
    """Confidence 1: all correct -> ECE exactly 0, all wrong -> ECE exactly 1."""
    labels = torch.tensor([0, 2, 1, 2, 0])
    probs = torch.nn.functional.one_hot(labels, num_classes=3).to(dtype)
    ece_right = metrics.expected_calibration_error(probs, labels, adaptive=adaptive)
    assert ece_right.item() == 0.0
    wrong = (labels + 1) % 3
    ece_wrong = metrics.expected_calibration_error(probs, wrong, adaptive=adaptive)
    assert ece_wrong.item() == 1.0


@pytest.mark.parametrize("n_bins", [1, 7, 15, 50])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ece_equal_width_matches_numpy_reference(
    n_bins: int, dtype: torch.dtype
) -> None:
    """Random inputs agree with a loop-based equal-width ECE."""
    rng = np.random.default_rng(0)
    probs, labels = _random_classification(rng, 500, 5)
    p = torch.from_numpy(probs).to(dtype)
    expected = _ref_ece(p.double().numpy(), labels, n_bins)
    assert expected > 0.01  # non-trivial calibration gap
    result = metrics.expected_calibration_error(p, torch.from_numpy(labels), n_bins)
    torch.testing.assert_close(result, _scalar(expected, dtype), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("n_bins", [1, 7, 15, 600])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ece_adaptive_matches_numpy_reference(n_bins: int, dtype: torch.dtype) -> None:
    """Random inputs agree with a loop-based equal-mass ECE (600 > N bins too)."""
    rng = np.random.default_rng(0)
    probs, labels = _random_classification(rng, 500, 5)
    p = torch.from_numpy(probs).to(dtype)
    expected = _ref_adaptive_ece(p.double().numpy(), labels, n_bins)
    result = metrics.expected_calibration_error(
        p, torch.from_numpy(labels), n_bins, adaptive=True
    )
    torch.testing.assert_close(result, _scalar(expected, dtype), atol=1e-6, rtol=1e-5)


def test_ece_adaptive_must_be_a_bool() -> None:
    """``adaptive='False'`` is truthy: it ran adaptive binning."""
    probs, labels = torch.full((4, 2), 0.5), torch.tensor([0, 1, 0, 1])
    for wrong in ("False", 1, None):
        with pytest.raises(TypeError, match="adaptive must be True or False"):
            metrics.expected_calibration_error(probs, labels, adaptive=wrong)  # type: ignore[arg-type]
    torch.testing.assert_close(  # numpy's bool is a bool
        metrics.expected_calibration_error(probs, labels, adaptive=np.bool_(True)),
        metrics.expected_calibration_error(probs, labels, adaptive=True),
    )


def test_ece_adaptive_differs_from_equal_width() -> None:
    """The adaptive flag changes the binning on skewed confidences."""
    rng = np.random.default_rng(0)
    probs, labels = _random_classification(rng, 500, 5)
    p, y = torch.from_numpy(probs), torch.from_numpy(labels)
    equal_width = metrics.expected_calibration_error(p, y, n_bins=10)
    adaptive = metrics.expected_calibration_error(p, y, n_bins=10, adaptive=True)
    assert abs(equal_width.item() - adaptive.item()) > 1e-4


@pytest.mark.parametrize("dtype", DTYPES)
def test_bin_indices_at_edges(dtype: torch.dtype) -> None:
    """Bin i is (i/n, (i+1)/n]; confidence 0 -> first bin, 1 -> last bin."""
    conf = torch.tensor([0.0, 1e-6, 0.25, 0.2500001, 0.5, 0.75, 0.99, 1.0], dtype=dtype)
    idx = metrics._bin_indices(conf, 4)
    assert idx.tolist() == [0, 0, 0, 1, 1, 2, 3, 3]
    assert metrics._bin_indices(torch.tensor([0.0, 1.0], dtype=dtype), 1).tolist() == [
        0,
        0,
    ]


@pytest.mark.parametrize("dtype", DTYPES)
def test_calibration_curve_hand_computed(dtype: torch.dtype) -> None:
    """Per-bin stats of SMALL_PROBS with 4 bins; empty bins are NaN."""
    probs, labels = _small(dtype)
    conf, acc, count = metrics.calibration_curve(probs, labels, n_bins=4)
    nan = math.nan
    # bin 1: conf (0.4 + 0.45)/2 = 0.425, acc 1/2; bin 3: (0.9 + 0.8)/2 = 0.85, 1/2
    torch.testing.assert_close(
        conf, torch.tensor([nan, 0.425, nan, 0.85], dtype=dtype), equal_nan=True
    )
    torch.testing.assert_close(
        acc, torch.tensor([nan, 0.5, nan, 0.5], dtype=dtype), equal_nan=True
    )
    assert count.tolist() == [0, 2, 0, 2]
    assert count.dtype == torch.long


@pytest.mark.parametrize("dtype", DTYPES)
def test_calibration_curve_confidence_on_edges(dtype: torch.dtype) -> None:
    """Confidence 1.0 lands in the last bin, 0.25 and 0.3 in (0.2, 0.3]."""
    probs = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],  # conf 1.0, pred 0, label 0 -> correct
            [0.25, 0.25, 0.25, 0.25],  # conf 0.25, pred 0, label 3 -> wrong
            [0.3, 0.3, 0.2, 0.2],  # conf 0.3 (right edge of bin 2), pred 0 -> correct
        ],
        dtype=dtype,
    )
    labels = torch.tensor([0, 3, 0])
    conf, acc, count = metrics.calibration_curve(probs, labels, n_bins=10)
    assert count.tolist() == [0, 0, 2, 0, 0, 0, 0, 0, 0, 1]
    # bin 2: conf (0.25 + 0.3) / 2 = 0.275, acc 1/2; bin 9: conf 1, acc 1
    torch.testing.assert_close(conf[[2, 9]], torch.tensor([0.275, 1.0], dtype=dtype))
    torch.testing.assert_close(acc[[2, 9]], torch.tensor([0.5, 1.0], dtype=dtype))
    assert bool(torch.isnan(conf[[0, 1, 3, 4, 5, 6, 7, 8]]).all())


@pytest.mark.parametrize(
    ("n_bins", "row", "expected_bin"),
    [
        (3, [2.0 / 3.0, 1.0 / 3.0], 1),  # 2/3 is the right edge of (1/3, 2/3]
        (15, [0.2] * 5, 2),  # default bins: 0.2 = 3/15 closes (2/15, 3/15]
        (7, [3.0 / 7.0, 4.0 / 7.0], 3),  # 4/7 closes (3/7, 4/7]
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_confidence_on_bin_edge_goes_to_lower_bin(
    n_bins: int, row: list[float], expected_bin: int, dtype: torch.dtype
) -> None:
    """A confidence equal to i / n_bins (in the input dtype) is in bin i - 1."""
    probs = torch.tensor([row], dtype=dtype)
    _, _, count = metrics.calibration_curve(probs, torch.tensor([0]), n_bins=n_bins)
    assert count.nonzero().flatten().tolist() == [expected_bin]


def test_calibration_curve_half_goes_to_first_of_two_bins() -> None:
    """Confidence exactly 0.5 is the right edge of (0, 0.5] -> bin 0."""
    probs = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    _, _, count = metrics.calibration_curve(probs, torch.tensor([0, 1]), n_bins=2)
    assert count.tolist() == [1, 1]


def test_calibration_curve_consistent_with_ece() -> None:
    """sum_b count_b / N * |acc_b - conf_b| over non-empty bins equals the ECE."""
    rng = np.random.default_rng(0)
    probs, labels = _random_classification(rng, 300, 4)
    p, y = torch.from_numpy(probs), torch.from_numpy(labels)
    conf, acc, count = metrics.calibration_curve(p, y, n_bins=12)
    assert int(count.sum()) == 300
    gaps = torch.nan_to_num((acc - conf).abs(), nan=0.0)
    from_curve = (count.double() / 300 * gaps).sum()
    torch.testing.assert_close(
        from_curve,
        metrics.expected_calibration_error(p, y, n_bins=12),
        atol=1e-12,
        rtol=1e-12,
    )


# --------------------------------------------------------------------------- #
# brier_score
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", DTYPES)
def test_brier_hand_computed(dtype: torch.dtype) -> None:
    """(0.3^2 + 0.2^2 + 0.1^2 + 0.1^2 + 0.3^2 + 0.4^2) / 2 = (0.14 + 0.26) / 2."""
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=dtype)
    labels = torch.tensor([0, 2])
    result = metrics.brier_score(probs, labels)
    assert result.dtype == dtype
    _assert_scalar(result, 0.2, dtype)


def test_brier_extremes() -> None:
    """Confident correct -> 0; confident wrong -> 1^2 + 1^2 = 2."""
    labels = torch.tensor([1, 0, 2])
    onehot = torch.nn.functional.one_hot(labels, 3).float()
    assert metrics.brier_score(onehot, labels).item() == 0.0
    assert metrics.brier_score(onehot, (labels + 1) % 3).item() == 2.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_brier_matches_numpy_reference(dtype: torch.dtype) -> None:
    """Random inputs agree with a loop-based numpy implementation."""
    rng = np.random.default_rng(0)
    probs, labels = _random_classification(rng, 400, 7)
    p = torch.from_numpy(probs).to(dtype)
    expected = _ref_brier(p.double().numpy(), labels)
    result = metrics.brier_score(p, torch.from_numpy(labels))
    torch.testing.assert_close(result, _scalar(expected, dtype), atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- #
# auroc
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", DTYPES)
def test_auroc_hand_computed(dtype: torch.dtype) -> None:
    """Pairs (out, in): 0.8 beats all 3; 0.4 beats 0.1, 0.35, ties 0.4 -> 5.5/6."""
    s_in = torch.tensor([0.1, 0.4, 0.35], dtype=dtype)
    s_out = torch.tensor([0.8, 0.4], dtype=dtype)
    result = metrics.auroc(s_in, s_out)
    assert result.shape == ()
    assert result.dtype == dtype
    _assert_scalar(result, 5.5 / 6.0, dtype)


def test_auroc_all_scores_equal_is_half() -> None:
    """Every pair is a tie -> 0.5."""
    result = metrics.auroc(torch.full((5,), 0.3), torch.full((7,), 0.3))
    assert result.item() == 0.5


def test_auroc_perfect_and_reversed_separation() -> None:
    """OOD scores all higher -> 1.0; all lower -> 0.0."""
    low = torch.tensor([0.1, 0.2, 0.2, 0.3])
    high = torch.tensor([0.5, 0.9, 0.5])
    assert metrics.auroc(low, high).item() == 1.0
    assert metrics.auroc(high, low).item() == 0.0


def test_auroc_integer_scores_use_default_dtype() -> None:
    """Integer scores: in {1, 2, 2}, out {2, 3}: (0.5+0.5+1 + 3) / 6 = 5/6."""
    # out=2: > 1, ties 2, 2 -> 2.0 ; out=3: beats all three -> 3.0
    result = metrics.auroc(torch.tensor([1, 2, 2]), torch.tensor([2, 3]))
    assert result.dtype == torch.get_default_dtype()
    torch.testing.assert_close(result, torch.tensor(5.0 / 6.0))


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_auroc_matches_numpy_reference(discrete: bool, dtype: torch.dtype) -> None:
    """Random scores (with many ties when discrete) agree with a pairwise count."""
    rng = np.random.default_rng(0)
    if discrete:
        s_in = rng.integers(0, 25, size=200).astype(np.float64)
        s_out = rng.integers(5, 30, size=150).astype(np.float64)
    else:
        s_in = rng.normal(0.0, 1.0, size=200)
        s_out = rng.normal(0.7, 1.2, size=150)
    t_in = torch.from_numpy(s_in).to(dtype)
    t_out = torch.from_numpy(s_out).to(dtype)
    expected = _ref_auroc(t_in.double().numpy(), t_out.double().numpy())
    assert 0.55 < expected < 0.95
    result = metrics.auroc(t_in, t_out)
    torch.testing.assert_close(result, _scalar(expected, dtype), atol=1e-6, rtol=1e-6)
    # Swapping the roles gives the complement.
    torch.testing.assert_close(
        metrics.auroc(t_out, t_in), _scalar(1.0 - expected, dtype), atol=1e-6, rtol=0.0
    )


# --------------------------------------------------------------------------- #
# Regression metrics
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", DTYPES)
def test_rmse_hand_computed(dtype: torch.dtype) -> None:
    """Errors (0, -2, 2): sqrt((0 + 4 + 4) / 3) = sqrt(8/3) = 1.632993."""
    mean = torch.tensor([1.0, 2.0, 3.0], dtype=dtype)
    target = torch.tensor([1.0, 4.0, 1.0], dtype=dtype)
    result = metrics.rmse(mean, target)
    assert result.dtype == dtype
    torch.testing.assert_close(result, _scalar(math.sqrt(8.0 / 3.0), dtype))


def test_rmse_averages_over_all_elements() -> None:
    """2-D inputs: errors (1, 1, 1, 3) -> sqrt((1 + 1 + 1 + 9) / 4) = sqrt(3)."""
    mean = torch.zeros(2, 2)
    target = torch.tensor([[1.0, -1.0], [1.0, 3.0]])
    torch.testing.assert_close(metrics.rmse(mean, target), torch.tensor(math.sqrt(3)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_nll_hand_computed(dtype: torch.dtype) -> None:
    """0.5*(log(2 pi) + 1) = 1.418939 and 0.5*log(8 pi) = 1.612086 -> mean 1.515512."""
    mean = torch.tensor([0.0, 1.0], dtype=dtype)
    variance = torch.tensor([1.0, 4.0], dtype=dtype)
    target = torch.tensor([1.0, 1.0], dtype=dtype)
    expected = (
        0.5 * (math.log(2 * math.pi) + 1.0) + 0.5 * math.log(2 * math.pi * 4.0)
    ) / 2.0
    result = metrics.gaussian_nll(mean, variance, target)
    assert result.dtype == dtype
    _assert_scalar(result, expected, dtype)


def test_gaussian_nll_matches_torch_loss() -> None:
    """Agrees with torch.nn.functional.gaussian_nll_loss(full=True)."""
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    target = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    variance = torch.rand(64, 3, generator=gen, dtype=torch.float64) + 0.1
    expected = torch.nn.functional.gaussian_nll_loss(
        mean, target, variance, full=True, eps=1e-300
    )
    result = metrics.gaussian_nll(mean, variance, target)
    torch.testing.assert_close(result, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_interval_coverage_hand_computed(dtype: torch.dtype) -> None:
    """Interval [0, 1] with targets 0, 0.5, 1 (inside, inclusive), 1.5 -> 3/4."""
    lower = torch.zeros(4, dtype=dtype)
    upper = torch.ones(4, dtype=dtype)
    target = torch.tensor([0.0, 0.5, 1.0, 1.5], dtype=dtype)
    result = metrics.interval_coverage(lower, upper, target)
    assert result.dtype == dtype
    assert result.item() == 0.75


def test_interval_coverage_degenerate_interval() -> None:
    """An interval with lower == upper covers only targets equal to it: 1 of 2."""
    bound = torch.tensor([2.0, 2.0])
    result = metrics.interval_coverage(bound, bound, torch.tensor([2.0, 2.1]))
    assert result.item() == 0.5


@pytest.mark.parametrize("dtype", DTYPES)
def test_quantile_calibration_error_hand_computed(dtype: torch.dtype) -> None:
    """Standard-normal predictions with targets at -1, -0.5, 0.5, 1."""
    mean = torch.zeros(4, dtype=dtype)
    std = torch.ones(4, dtype=dtype)
    target = torch.tensor([-1.0, -0.5, 0.5, 1.0], dtype=dtype)
    # quantiles: q(0.25) = -0.674, q(0.5) = 0, q(0.75) = 0.674
    # fraction <= q: 1/4, 2/4, 3/4 -> |0.25-0.25| + |0.5-0.5| + |0.75-0.75| = 0
    levels = [0.25, 0.5, 0.75]
    result = metrics.quantile_calibration_error(mean, std, target, levels)
    assert result.dtype == dtype
    torch.testing.assert_close(result, _scalar(0.0, dtype), atol=1e-7, rtol=0.0)
    # level 0.9 only: q(0.9) = 1.2816, all 4 targets below -> |1 - 0.9| = 0.1
    single = metrics.quantile_calibration_error(mean, std, target, [0.9])
    _assert_scalar(single, 0.1, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_quantile_calibration_error_target_on_quantile_counts_as_below(
    dtype: torch.dtype,
) -> None:
    """Targets 0 and 1 under N(0, 1): q(0.5) = 0 and 0 <= 0 -> 1/2 below -> 0."""
    mean = torch.zeros(2, dtype=dtype)
    std = torch.ones(2, dtype=dtype)
    target = torch.tensor([0.0, 1.0], dtype=dtype)
    result = metrics.quantile_calibration_error(mean, std, target, [0.5])
    assert result.item() == 0.0


def test_quantile_calibration_error_location_scale() -> None:
    """N(10, 2^2): q(0.5) = 10, targets 9, 11, 12, 13 -> 1/4 below: |0.25 - 0.5|."""
    mean = torch.full((4,), 10.0)
    std = torch.full((4,), 2.0)
    target = torch.tensor([9.0, 11.0, 12.0, 13.0])
    result = metrics.quantile_calibration_error(mean, std, target, torch.tensor([0.5]))
    torch.testing.assert_close(result, torch.tensor(0.25))
    # q(0.9) = 10 + 2 * 1.2816 = 12.563: targets 9, 11, 12 -> 3/4; |0.75 - 0.9|
    result = metrics.quantile_calibration_error(mean, std, target, [0.9])
    torch.testing.assert_close(result, torch.tensor(0.15))


@pytest.mark.parametrize("shift", [-10.0, 10.0])
def test_quantile_calibration_error_default_levels(shift: float) -> None:
    """All targets far below (above): observed 1 (0) at each default level.

    Default levels 0.05, 0.10, ..., 0.95 have mean 0.5, so the mean of |1 - p| and of
    |0 - p| are both 0.5.
    """
    mean = torch.zeros(8)
    std = torch.ones(8)
    result = metrics.quantile_calibration_error(mean, std, mean + shift)
    torch.testing.assert_close(result, torch.tensor(0.5), atol=1e-6, rtol=0.0)


def test_quantile_calibration_error_large_sample() -> None:
    """Calibrated predictions score ~0; too narrow ones match the analytic value.

    If targets are N(mu, sigma^2) but the predicted stddev is k * sigma, the
    observed frequency at level p is Phi(k * Phi^-1(p)).
    """
    rng = np.random.default_rng(0)
    n = 20000
    mu = torch.from_numpy(rng.normal(0.0, 5.0, size=n))
    sigma = torch.from_numpy(rng.uniform(0.5, 2.0, size=n))
    target = mu + sigma * torch.from_numpy(rng.normal(size=n))
    calibrated = metrics.quantile_calibration_error(mu, sigma, target)
    assert calibrated.item() < 0.01
    k = 0.5
    levels = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    analytic = (torch.special.ndtr(torch.special.ndtri(levels) / k) - levels).abs()
    narrow = metrics.quantile_calibration_error(mu, k * sigma, target)
    assert analytic.mean().item() > 0.1
    torch.testing.assert_close(narrow, analytic.mean(), atol=0.01, rtol=0.0)


# --------------------------------------------------------------------------- #
# float64 and device handling
# --------------------------------------------------------------------------- #
def _all_metrics(
    dtype: torch.dtype, device: str = "cpu"
) -> dict[str, torch.Tensor | tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    probs = torch.softmax(logits, dim=1).to(dtype=dtype, device=device)
    labels = torch.randint(0, 4, (50,), generator=gen).to(device)
    mean = torch.randn(50, generator=gen, dtype=torch.float64).to(dtype).to(device)
    target = torch.randn(50, generator=gen, dtype=torch.float64).to(dtype).to(device)
    std = torch.rand(50, generator=gen, dtype=torch.float64).to(dtype).to(device) + 0.5
    return {
        "nll": metrics.nll(probs, labels),
        "accuracy": metrics.accuracy(probs, labels),
        "ece": metrics.expected_calibration_error(probs, labels, n_bins=5),
        "ece_adaptive": metrics.expected_calibration_error(
            probs, labels, n_bins=5, adaptive=True
        ),
        "curve": metrics.calibration_curve(probs, labels, n_bins=5),
        "brier": metrics.brier_score(probs, labels),
        "auroc": metrics.auroc(mean, target),
        "rmse": metrics.rmse(mean, target),
        "gaussian_nll": metrics.gaussian_nll(mean, std**2, target),
        "coverage": metrics.interval_coverage(mean - std, mean + std, target),
        "qce": metrics.quantile_calibration_error(mean, std, target),
    }


def test_float64_inputs_give_float64_results_matching_float32() -> None:
    """Every metric keeps float64 and agrees with its float32 counterpart."""
    r64 = _all_metrics(torch.float64)
    r32 = _all_metrics(torch.float32)
    assert r64.keys() == r32.keys()
    for name, value in r64.items():
        values64 = value if isinstance(value, tuple) else (value,)
        v32 = r32[name]
        values32 = v32 if isinstance(v32, tuple) else (v32,)
        for a, b in zip(values64, values32, strict=True):
            if a.is_floating_point():
                assert a.dtype == torch.float64, name
                assert b.dtype == torch.float32, name
                torch.testing.assert_close(
                    a.float(), b, atol=1e-5, rtol=1e-5, equal_nan=True
                )
            else:
                assert torch.equal(a, b), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu() -> None:
    """Results on CUDA stay on the device and match CPU."""
    cpu = _all_metrics(torch.float64)
    cuda = _all_metrics(torch.float64, device="cuda")
    for name, value in cuda.items():
        values = value if isinstance(value, tuple) else (value,)
        ref = cpu[name]
        refs = ref if isinstance(ref, tuple) else (ref,)
        for a, b in zip(values, refs, strict=True):
            assert a.device.type == "cuda", name
            torch.testing.assert_close(
                a.cpu(), b, atol=1e-10, rtol=1e-10, equal_nan=True
            )


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
_P = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
_Y = torch.tensor([0, 1])
_V = torch.tensor([1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        pytest.param(
            lambda: metrics.nll(torch.tensor([0.5, 0.5]), _Y),
            r"probs must be a 2-D tensor of shape \(N, C\), got shape \(2,\)",
            id="probs-1d",
        ),
        pytest.param(
            lambda: metrics.nll(torch.empty(0, 3), torch.empty(0, dtype=torch.long)),
            r"probs must be non-empty .*got shape \(0, 3\)",
            id="probs-empty",
        ),
        pytest.param(
            lambda: metrics.accuracy(torch.tensor([[1, 0], [0, 1]]), _Y),
            "probs must have a floating point dtype, got torch.int64",
            id="probs-int",
        ),
        pytest.param(
            lambda: metrics.nll(torch.tensor([[1.2, -0.2], [0.2, 0.8]]), _Y),
            r"probs must lie in \[0, 1\], got values in \[-0.2, 1.2\]",
            id="probs-out-of-range",
        ),
        pytest.param(
            lambda: metrics.brier_score(torch.tensor([[0.7, 0.7], [0.2, 0.8]]), _Y),
            r"rows of probs must sum to 1 .*got a maximum \|row sum - 1\| of 0.4",
            id="probs-row-sum",
        ),
        pytest.param(
            lambda: metrics.nll(torch.tensor([[math.nan, 1.0], [0.2, 0.8]]), _Y),
            "probs must be finite",
            id="probs-nan",
        ),
        pytest.param(
            lambda: metrics.nll(_P, torch.tensor([0.0, 1.0])),
            "labels must have an integer dtype, got torch.float32",
            id="labels-float",
        ),
        pytest.param(
            lambda: metrics.accuracy(_P, torch.tensor([True, False])),
            "labels must have an integer dtype, got torch.bool",
            id="labels-bool",
        ),
        pytest.param(
            lambda: metrics.nll(_P, torch.tensor([0, 1, 1])),
            r"labels must have shape \(2,\) to match probs .*got shape \(3,\)",
            id="labels-length",
        ),
        pytest.param(
            lambda: metrics.brier_score(_P, torch.tensor([[0], [1]])),
            r"labels must have shape \(2,\) .*got shape \(2, 1\)",
            id="labels-2d",
        ),
        pytest.param(
            lambda: metrics.nll(_P, torch.tensor([0, 2])),
            r"labels must lie in \[0, 1\] for 2 classes, got values in \[0, 2\]",
            id="labels-too-large",
        ),
        pytest.param(
            lambda: metrics.accuracy(_P, torch.tensor([-1, 1])),
            r"labels must lie in \[0, 1\] .*got values in \[-1, 1\]",
            id="labels-negative",
        ),
        pytest.param(
            lambda: metrics.expected_calibration_error(_P, _Y, n_bins=0),
            "n_bins must be >= 1, got 0",
            id="ece-n-bins",
        ),
        pytest.param(
            lambda: metrics.expected_calibration_error(
                _P, _Y, n_bins=-3, adaptive=True
            ),
            "n_bins must be >= 1, got -3",
            id="ece-adaptive-n-bins",
        ),
        pytest.param(
            lambda: metrics.calibration_curve(_P, _Y, n_bins=0),
            "n_bins must be >= 1, got 0",
            id="curve-n-bins",
        ),
        pytest.param(
            lambda: metrics.expected_calibration_error(_P, torch.tensor([0, 5])),
            r"labels must lie in \[0, 1\]",
            id="ece-labels",
        ),
        pytest.param(
            lambda: metrics.auroc(torch.tensor([]), _V),
            r"scores_in must be non-empty, got shape \(0,\)",
            id="auroc-empty-in",
        ),
        pytest.param(
            lambda: metrics.auroc(_V, torch.tensor([])),
            r"scores_out must be non-empty",
            id="auroc-empty-out",
        ),
        pytest.param(
            lambda: metrics.auroc(torch.ones(2, 2), _V),
            r"scores_in must be a 1-D tensor of shape \(n,\), got shape \(2, 2\)",
            id="auroc-2d",
        ),
        pytest.param(
            lambda: metrics.auroc(_V, torch.tensor([0.1, math.nan])),
            "scores_out must not contain NaN",
            id="auroc-nan",
        ),
        pytest.param(
            lambda: metrics.auroc(torch.tensor([True, False]), _V),
            "scores_in must have a real .*got torch.bool",
            id="auroc-bool",
        ),
        pytest.param(
            lambda: metrics.rmse(_V, torch.ones(2)),
            r"target must have the same shape as mean \(3,\), got shape \(2,\)",
            id="rmse-shape",
        ),
        pytest.param(
            lambda: metrics.rmse(torch.tensor([]), torch.tensor([])),
            r"mean must be non-empty, got shape \(0,\)",
            id="rmse-empty",
        ),
        pytest.param(
            lambda: metrics.rmse(torch.tensor([1, 2]), torch.tensor([1, 2])),
            "mean must have a floating point dtype, got torch.int64",
            id="rmse-int",
        ),
        pytest.param(
            lambda: metrics.rmse(_V, torch.tensor([1.0, math.nan, 2.0])),
            r"target must not contain NaN values \(missing targets, as a likelihood "
            r"built with missing='nan' reads them: .*keep = ~target\.isnan\(\)",
            id="rmse-nan",
        ),
        pytest.param(
            lambda: metrics.gaussian_nll(_V, torch.tensor([1.0, 0.0, 1.0]), _V),
            "variance must be > 0 everywhere, got minimum 0",
            id="gnll-zero-variance",
        ),
        pytest.param(
            lambda: metrics.gaussian_nll(_V, torch.tensor([1.0, -2.0, 1.0]), _V),
            "variance must be > 0 everywhere, got minimum -2",
            id="gnll-negative-variance",
        ),
        pytest.param(
            lambda: metrics.gaussian_nll(_V, torch.ones(3, 1), _V),
            r"variance must have the same shape as mean \(3,\), got shape \(3, 1\)",
            id="gnll-shape",
        ),
        pytest.param(
            lambda: metrics.interval_coverage(_V, _V - 1.0, _V),
            "lower must be <= upper everywhere, got lower > upper at 3 of 3",
            id="coverage-crossed",
        ),
        pytest.param(
            lambda: metrics.interval_coverage(_V, _V + 1.0, torch.ones(4)),
            r"target must have the same shape as lower \(3,\), got shape \(4,\)",
            id="coverage-shape",
        ),
        pytest.param(
            lambda: metrics.quantile_calibration_error(_V, torch.zeros(3), _V),
            "stddev must be > 0 everywhere, got minimum 0",
            id="qce-zero-std",
        ),
        pytest.param(
            lambda: metrics.quantile_calibration_error(
                _V, torch.ones(3), _V, levels=[0.0, 0.5]
            ),
            r"levels must lie in the open interval \(0, 1\), got \[0.0, 0.5\]",
            id="qce-level-zero",
        ),
        pytest.param(
            lambda: metrics.quantile_calibration_error(
                _V, torch.ones(3), _V, levels=torch.tensor([0.5, 1.0])
            ),
            r"levels must lie in the open interval \(0, 1\)",
            id="qce-level-one",
        ),
        pytest.param(
            lambda: metrics.quantile_calibration_error(
                _V, torch.ones(3), _V, levels=[1.5]
            ),
            r"levels must lie in the open interval \(0, 1\), got \[1.5\]",
            id="qce-level-above-one",
        ),
        pytest.param(
            lambda: metrics.quantile_calibration_error(_V, torch.ones(3), _V, []),
            r"levels must be a non-empty 1-D sequence, got shape \(0,\)",
            id="qce-levels-empty",
        ),
        pytest.param(
            lambda: metrics.quantile_calibration_error(
                _V,
                torch.ones(3),
                _V,
                [[0.5]],  # type: ignore[list-item]
            ),
            r"levels must be a non-empty 1-D sequence, got shape \(1, 1\)",
            id="qce-levels-2d",
        ),
    ],
)
def test_invalid_inputs_raise_value_error(
    call: Callable[[], object], match: str
) -> None:
    """Bad inputs raise ValueError naming what was expected and what came."""
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        pytest.param(
            lambda: metrics.nll([[0.5, 0.5]], _Y),  # type: ignore[arg-type]
            "probs must be a torch.Tensor, got list",
            id="probs-list",
        ),
        pytest.param(
            lambda: metrics.rmse(_V, 1.0),  # type: ignore[arg-type]
            "target must be a torch.Tensor, got float",
            id="target-float",
        ),
        pytest.param(
            lambda: metrics.expected_calibration_error(
                _P,
                _Y,
                n_bins=2.5,  # type: ignore[arg-type]
            ),
            "n_bins must be an integer, got float",
            id="n-bins-float",
        ),
        # torch's "too many dimensions 'str'" / "must be real number", or a
        # complex level cast to its real part with a warning.
        *(
            pytest.param(
                lambda levels=levels: metrics.quantile_calibration_error(
                    _V, torch.ones(3), _V, levels=levels
                ),
                match,
                id=f"qce-levels-{name}",
            )
            for name, levels, match in [
                (
                    "str",
                    ["a"],
                    r"levels must be a 1-D sequence of numbers, got \['a'\]",
                ),
                ("none", [None], "levels must be a 1-D sequence of numbers"),
                ("complex", [0.5 + 1j], "levels must be a 1-D sequence of numbers"),
                ("set", {0.5}, "levels must be a 1-D sequence of numbers"),
                ("complex-tensor", torch.tensor([0.5 + 0j]), "levels must be real"),
                ("bool-tensor", torch.tensor([True]), "levels must be real numbers"),
            ]
        ),
    ],
)
def test_non_tensor_inputs_raise_type_error(
    call: Callable[[], object], match: str
) -> None:
    """Arguments of the wrong type raise TypeError."""
    with pytest.raises(TypeError, match=match):
        call()


def test_row_sum_tolerance() -> None:
    """Rows off by less than 1e-4 are accepted, by more are rejected."""
    ok = torch.tensor([[0.5, 0.50005]], dtype=torch.float64)
    torch.testing.assert_close(
        metrics.brier_score(ok, torch.tensor([1])),
        torch.tensor(0.5**2 + 0.49995**2, dtype=torch.float64),
    )
    bad = torch.tensor([[0.5, 0.5002]], dtype=torch.float64)
    with pytest.raises(ValueError, match="rows of probs must sum to 1"):
        metrics.brier_score(bad, torch.tensor([1]))


@pytest.mark.parametrize("adaptive", [False, True])
def test_ece_of_millions_of_float32_predictions_does_not_drift(adaptive: bool) -> None:
    """Per-pixel sizes: a float32 running sum over 4e6 rows read 0.03 for 2e-8."""
    n = 4_000_000
    confidence = torch.full((n,), 0.9)
    probs = torch.stack([confidence, 1 - confidence], dim=1)
    labels = (torch.arange(n) % 10 == 0).long()  # 90 % correct, exactly
    ece = metrics.expected_calibration_error(probs, labels, adaptive=adaptive)
    assert ece.dtype == torch.float32
    assert float(ece) < 1e-6
    conf, acc, count = metrics.calibration_curve(probs, labels)
    filled = count > 0
    torch.testing.assert_close(conf[filled], torch.tensor([0.9]))
    torch.testing.assert_close(acc[filled], torch.tensor([0.9]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_probabilities_are_read_as_float32(dtype: torch.dtype) -> None:
    """Half-precision sums of 20000 rows read a true ECE of 0.25 as 0.

    Rows rounded to half precision are accepted (they sum to 1 only within
    its rounding) and every sum runs in float32 or wider.
    """
    rng = np.random.default_rng(0)
    confidence = torch.from_numpy(rng.uniform(0.5, 1.0, 20_000))
    probs = torch.stack([confidence, 1 - confidence], dim=1).to(dtype)
    labels = torch.from_numpy(rng.integers(0, 2, 20_000))
    rounded = probs.double().numpy()
    ece = metrics.expected_calibration_error(probs, labels)
    assert ece.dtype == torch.float32
    expected = _ref_ece(rounded, labels.numpy(), 15)
    assert expected > 0.2
    torch.testing.assert_close(ece, _scalar(expected, torch.float32))
    adaptive = metrics.expected_calibration_error(probs, labels, adaptive=True)
    assert abs(float(adaptive) - expected) < 0.02
    nll = metrics.nll(probs, labels)
    tiny = torch.finfo(torch.float32).tiny
    expected_nll = _ref_nll(rounded, labels.numpy(), tiny)
    torch.testing.assert_close(nll, _scalar(expected_nll, torch.float32))


def test_adaptive_ece_does_not_depend_on_the_order_of_tied_rows() -> None:
    """Two confidences, calibrated within each: shuffles gave 0.024 to 0.066."""
    rng = np.random.default_rng(1)
    confidence = np.where(rng.random(1000) < 0.5, 0.6, 0.8)
    correct = rng.random(1000) < confidence
    probs = torch.from_numpy(np.stack([confidence, 1 - confidence], axis=1))
    labels = torch.from_numpy((~correct).astype(np.int64))
    values = set()
    for seed in range(20):
        order = torch.from_numpy(np.random.default_rng(seed).permutation(1000))
        ece = metrics.expected_calibration_error(
            probs[order], labels[order], n_bins=15, adaptive=True
        )
        values.add(round(float(ece), 12))
    by_label = torch.argsort(labels, stable=True)
    grouped = metrics.expected_calibration_error(
        probs[by_label], labels[by_label], n_bins=15, adaptive=True
    )
    values.add(round(float(grouped), 12))
    assert len(values) == 1
    # Ties kept together: the two groups of equal confidence, as equal-width bins.
    torch.testing.assert_close(
        grouped, metrics.expected_calibration_error(probs, labels, n_bins=15)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_rows_must_still_sum_to_one(dtype: torch.dtype) -> None:
    """The half-precision tolerance is its rounding (eps/2 of a sum of 1), not C x eps.

    C x eps accepted all-zero rows of 128 classes in bfloat16 (NLL 87, ECE 1).
    """
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="rows of probs must sum to 1"):
        metrics.nll(torch.zeros(4, 128, dtype=dtype), labels)
    rounded = torch.softmax(torch.randn(4, 1000), dim=1).to(dtype)
    assert metrics.nll(rounded, labels).dtype == torch.float32
    float32 = torch.full((4, 1000), 1e-3) + torch.tensor(1.2e-7)  # rows 1.00012
    with pytest.raises(ValueError, match="rows of probs must sum to 1"):
        metrics.nll(float32, labels)


def test_auroc_refuses_scikit_learns_scores_and_labels() -> None:
    """``auroc(scores, labels)`` in ``roc_auc_score``'s order returned a
    plausible wrong area (0.59 where scikit-learn gives 0.99)."""
    scores = torch.tensor([0.1, 0.9, 0.2, 0.8])
    for labels in (
        torch.tensor([0, 1, 0, 1]),
        torch.tensor([False, True, False, True]),
        torch.tensor([0.0, 1.0, 0.0, 1.0]),  # float labels too
    ):
        for pair in ((scores, labels), (labels, scores)):
            with pytest.raises(ValueError, match=r"scores\[labels == 0\]"):
                metrics.auroc(*pair)
    assert float(metrics.auroc(scores[[0, 2]], scores[[1, 3]])) == 1.0
    # integer scores of two groups, or float groups of one length, still count
    assert float(metrics.auroc(torch.tensor([0, 1]), torch.tensor([1, 2]))) == 0.875
    assert float(metrics.auroc(scores, scores + 1.0)) > 0.9


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_regression_metrics_are_computed_in_float32(
    dtype: torch.dtype,
) -> None:
    """The regression metrics computed in half precision: rmse of errors of 300
    and gaussian_nll of an error of 10 with variance 1e-3 were ``inf``, and
    quantile_calibration_error raised torch's '"ndtri_cpu" not implemented for
    'Half'' (where ndtri has a half kernel, its count of 70000 targets was
    inf). Each now matches a float64 reference on the same rounded inputs, to
    float32 rounding; the quantile error to 1e-4 (a target whose float32 and
    float64 z-scores fall either side of a level moves 1 / 70000)."""
    rng = np.random.default_rng(0)
    zeros = torch.zeros(100, dtype=dtype)
    far = torch.full((100,), 300.0, dtype=dtype)
    result = metrics.rmse(zeros, far)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, _scalar(300.0, torch.float32))
    variance = torch.full((100,), 1e-3, dtype=dtype)
    rounded = float(variance[0])  # 1e-3 in half precision
    expected = 0.5 * (math.log(2 * math.pi * rounded) + 100.0 / rounded)
    nll = metrics.gaussian_nll(zeros, variance, torch.full((100,), 10.0, dtype=dtype))
    assert nll.dtype == torch.float32
    torch.testing.assert_close(nll, _scalar(expected, torch.float32))
    lower, upper = -torch.ones(100, dtype=dtype), torch.ones(100, dtype=dtype)
    covered = metrics.interval_coverage(lower, upper, far)
    assert covered.dtype == torch.float32
    assert covered.item() == 0.0

    n = 70_000
    mean = torch.from_numpy(rng.normal(0.0, 1.0, n)).to(dtype)
    std = torch.from_numpy(rng.uniform(0.5, 2.0, n)).to(dtype)
    target = torch.from_numpy(rng.normal(0.0, 1.5, n)).to(dtype)
    z = ((target.double() - mean.double()) / std.double()).numpy()
    levels = [0.05 * k for k in range(1, 20)]
    reference = float(
        np.mean(
            [abs(np.mean(z <= statistics.NormalDist().inv_cdf(p)) - p) for p in levels]
        )
    )
    qce = metrics.quantile_calibration_error(mean, std, target)
    assert qce.dtype == torch.float32
    assert reference > 0.05  # the stddevs do not match the targets' spread
    torch.testing.assert_close(
        qce, _scalar(reference, torch.float32), atol=1e-4, rtol=0
    )


def test_auroc_compares_integer_and_float_scores_exactly() -> None:
    """int64 against float32 scores were compared in float32: 2^24 + 1 and
    2^24 tied (an area of 0.5 for fully separated scores). Compared in
    float64; the result keeps the promoted dtype, float32."""
    big = torch.tensor([2**24 + 1])
    below = torch.tensor([float(2**24)])
    result = metrics.auroc(big, below)
    assert result.dtype == torch.float32
    assert result.item() == 0.0
    assert metrics.auroc(below, big).item() == 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_results_are_float32(dtype: torch.dtype) -> None:
    """The documented result dtype: at least float32 for every metric."""
    probs = torch.tensor(SMALL_PROBS, dtype=dtype)
    labels = torch.tensor(SMALL_LABELS)
    for metric in (
        metrics.nll,
        metrics.accuracy,
        metrics.brier_score,
        metrics.expected_calibration_error,
    ):
        assert metric(probs, labels).dtype == torch.float32, metric.__name__
    confidence, accuracy, _ = metrics.calibration_curve(probs, labels)
    assert confidence.dtype == accuracy.dtype == torch.float32
    scores = torch.tensor([0.1, 0.4, 0.35], dtype=dtype)
    result = metrics.auroc(scores, torch.tensor([0.8, 0.4], dtype=dtype))
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, _scalar(11 / 12, torch.float32))


@pytest.mark.parametrize(
    ("dtype", "error"),
    [
        (torch.float32, 3e19),  # squared: inf in float32
        (torch.float32, 3e38),  # the difference of +-3e38 overflowed too
        (torch.float32, 1e-23),  # squared: 0 in float32
        (torch.float64, 1e200),  # squared: inf in float64
        (torch.float64, 1e-200),  # squared: 0 in float64
    ],
)
def test_rmse_squares_no_error_out_of_range(dtype: torch.dtype, error: float) -> None:
    """rmse squared the errors in the inputs' dtype: float32 errors of 3e19
    gave inf and of 1e-23 gave 0 although the RMSE is representable. It is
    computed in float64 and scaled by the largest error: within float32
    (float64) rounding of the exact value, sqrt(mean(e^2)) of the rounded
    inputs."""
    mean = torch.tensor([error / 2, -error / 2, 0.0], dtype=dtype)
    target = torch.tensor([-error / 2, error / 2, 0.0], dtype=dtype)
    errors = (mean.double() - target.double()).tolist()
    exact = math.sqrt(math.fsum(e / error * (e / error) for e in errors) / 3) * error
    result = metrics.rmse(mean, target)
    assert result.dtype == dtype
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6  # relative: no atol
    torch.testing.assert_close(result, _scalar(exact, dtype), rtol=tolerance, atol=0.0)


def test_rmse_beyond_the_dtype_and_of_an_infinite_mean_is_inf() -> None:
    """An RMSE beyond float32 is inf (not NaN); so is that of an infinite mean."""
    big = torch.tensor([3e38, 3e38])
    assert metrics.rmse(big, -big).item() == math.inf
    for mean in (math.inf, -math.inf):
        result = metrics.rmse(torch.tensor([mean, 0.0]), torch.zeros(2))
        assert result.item() == math.inf


def test_gaussian_nll_takes_the_standard_score_in_float64() -> None:
    """An error of 1e20 with a variance of 1e30 (a standard score of 1e5):
    the error squared to inf in float32 before the division. Exact to float32
    rounding now; an NLL beyond float32 is inf."""
    mean, target = torch.tensor([1e20, 0.0]), torch.zeros(2)
    variance = torch.tensor([1e30, 1.0])
    log_two_pi = math.log(2 * math.pi)
    rounded = float(torch.tensor(1e30))
    exact = 0.25 * (2 * log_two_pi + math.log(rounded) + 1e40 / rounded)
    _assert_scalar(metrics.gaussian_nll(mean, variance, target), exact, torch.float32)
    far = metrics.gaussian_nll(torch.tensor([1e20]), torch.ones(1), torch.zeros(1))
    assert far.item() == math.inf


@pytest.mark.parametrize(
    ("mean", "variance"),
    [(math.inf, 1.0), (-math.inf, 1.0), (0.0, math.inf), (math.inf, math.inf)],
)
def test_gaussian_nll_of_an_infinite_prediction_is_inf(
    mean: float, variance: float
) -> None:
    """An infinite mean or variance gives the density 0 at a finite target:
    NLL inf. Mean and variance both infinite gave NaN (inf / inf)."""
    result = metrics.gaussian_nll(
        torch.tensor([mean, 0.0]), torch.tensor([variance, 1.0]), torch.zeros(2)
    )
    assert result.item() == math.inf


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_an_infinite_target_is_refused_like_nan(value: float) -> None:
    """rmse([inf], [inf]) and gaussian_nll(mean=inf, var=1, y=inf) were NaN,
    silently: an infinite observation is refused by every regression metric,
    as a NaN one is."""
    target = torch.tensor([0.0, value])
    ones, zeros = torch.ones(2), torch.zeros(2)
    message = r"target must be finite \(observed values\), got 1 infinite value"
    calls: list[Callable[[], torch.Tensor]] = [
        lambda: metrics.rmse(target.clone(), target),
        lambda: metrics.gaussian_nll(target.clone(), ones, target),
        lambda: metrics.interval_coverage(-ones * math.inf, ones * math.inf, target),
        lambda: metrics.quantile_calibration_error(zeros, ones, target),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()


def test_infinite_predictions_give_the_metrics_limits() -> None:
    """Infinite predictions are accepted: an unbounded interval covers, a mean
    of +inf puts the target below every quantile, an infinite standard
    deviation puts it at the median; a mean and a standard deviation both
    infinite have no quantiles and are refused."""
    target = torch.tensor([0.0, 1.0])
    unbounded = metrics.interval_coverage(
        torch.full((2,), -math.inf), torch.full((2,), math.inf), target
    )
    assert unbounded.item() == 1.0
    levels = [0.25, 0.75]
    high = metrics.quantile_calibration_error(
        torch.full((2,), math.inf), torch.ones(2), target, levels=levels
    )
    assert high.item() == pytest.approx(0.5)  # |1 - 0.25| and |1 - 0.75|, averaged
    wide = metrics.quantile_calibration_error(
        torch.zeros(2), torch.full((2,), math.inf), target, levels=levels
    )
    assert wide.item() == pytest.approx(0.25)  # counted at the median
    with pytest.raises(ValueError, match="both infinite at 1 of 2 positions"):
        metrics.quantile_calibration_error(
            torch.tensor([math.inf, 0.0]), torch.tensor([math.inf, 1.0]), target
        )


# --------------------------------------------------------------------------- #
# Dense predictions: the messages name the reshaping to one row per position
# --------------------------------------------------------------------------- #
_PIXEL_PROBS = torch.full((2, 8, 8, 3), 1 / 3)  # Prediction.probs of a segmentation
_PIXEL_LABELS = torch.zeros(2, 8, 8, dtype=torch.long)


@pytest.mark.parametrize(
    "metric",
    [
        metrics.nll,
        metrics.accuracy,
        metrics.brier_score,
        metrics.expected_calibration_error,
        metrics.calibration_curve,
    ],
)
def test_per_pixel_probabilities_name_the_rows_to_score(
    metric: Callable[[torch.Tensor, torch.Tensor], object],
) -> None:
    """(B, H, W, C) probabilities were refused as "must be a 2-D tensor of
    shape (N, C)" alone (probe dense)."""
    rows = "probs.reshape(-1, 3) with labels.reshape(-1)"
    with pytest.raises(ValueError, match=re.escape(rows)):
        metric(_PIXEL_PROBS, _PIXEL_LABELS)
    metric(_PIXEL_PROBS.reshape(-1, 3), _PIXEL_LABELS.reshape(-1))


def test_channels_first_probabilities_name_movedim() -> None:
    channels_first = _PIXEL_PROBS.movedim(-1, 1)  # torch's (B, C, H, W)
    rows = "probs.movedim(1, -1).reshape(-1, 3) with labels.reshape(-1)"
    with pytest.raises(ValueError, match=re.escape(rows)):
        metrics.nll(channels_first, _PIXEL_LABELS)


def test_unflattened_labels_name_reshape() -> None:
    with pytest.raises(ValueError, match=re.escape("; one label per row of probs")):
        metrics.accuracy(_PIXEL_PROBS.reshape(-1, 3), _PIXEL_LABELS)
    with pytest.raises(ValueError, match=r"got shape \(5,\)$"):  # no such reshape
        metrics.accuracy(_PIXEL_PROBS.reshape(-1, 3), _PIXEL_LABELS.reshape(-1)[:5])


def test_per_pixel_scores_name_reshape() -> None:
    entropy_map = torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match=re.escape("scores_in.reshape(-1)")):
        metrics.auroc(entropy_map, torch.rand(5))
    assert 0 <= float(metrics.auroc(entropy_map.reshape(-1), torch.rand(5))) <= 1


def test_regression_shapes_differing_in_ones_name_reshape() -> None:
    """A per-pixel target with a channel of one, ``(B, 1, H, W)``."""
    mean, target = torch.zeros(2, 8, 8), torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=re.escape("target.reshape((2, 8, 8))")):
        metrics.rmse(mean, target)
    with pytest.raises(ValueError, match=r"got shape \(2, 8, 4\)$"):
        metrics.rmse(mean, torch.zeros(2, 8, 4))
