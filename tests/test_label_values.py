"""Labels outside the classes are named, and the void label 255 as such.

The likelihood named the ``ignore_index`` remedy only for negative labels:
the void pixels of a PASCAL VOC or Cityscapes mask (255) were refused as
"labels must be in [0, 4), got range [0, 255]", and so by the metrics
(probe dense).
"""

from __future__ import annotations

import re

import pytest
import torch

import pyrolite_bnn as bnn
from pyrolite_bnn import metrics

C = 4


def _void_masks() -> torch.Tensor:
    """``uint8`` masks ``(2, 8, 8)`` as the data sets store them, two void rows."""
    masks = torch.randint(0, C, (2, 8, 8)).to(torch.uint8)
    masks[:, :2] = 255
    return masks


def test_void_label_names_ignore_index_255() -> None:
    logits = torch.randn(3, 2, 8, 8, C)
    with pytest.raises(ValueError, match=r"got range \[0, 255\]") as refused:
        bnn.Categorical().log_likelihood(logits, _void_masks())
    message = str(refused.value)
    assert "255, the void label of PASCAL VOC and Cityscapes masks" in message
    assert "bnn.Categorical(ignore_index=255)" in message
    kept = bnn.Categorical(ignore_index=255).log_likelihood(logits, _void_masks())
    assert kept.shape == (3, 2)


def test_too_high_labels_name_ignore_index_and_the_classes() -> None:
    """Labels past the classes may be classes: both remedies are named."""
    logits, labels = torch.randn(2, 3, C), torch.tensor([0, 4, 7])
    with pytest.raises(ValueError, match=r"outside them: 4, 7\)\. If one of") as err:
        bnn.Categorical().log_likelihood(logits, labels)
    assert "bnn.Categorical(ignore_index=...)" in str(err.value)
    assert "which has 4" in str(err.value)
    assert "void" not in str(err.value).split(". If")[0]


def test_a_label_besides_the_ignore_index_is_named() -> None:
    """With an ``ignore_index`` the other values are named, without a remedy
    that is already taken."""
    logits, labels = torch.randn(2, 3, C), torch.tensor([0, -100, 255])
    with pytest.raises(ValueError, match=r"or the ignore_index -100") as refused:
        bnn.Categorical(ignore_index=-100).log_likelihood(logits, labels)
    assert str(refused.value).endswith(
        "(outside them: 255, the void label of PASCAL VOC and Cityscapes masks)"
    )


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
def test_metrics_name_the_mask_that_leaves_void_pixels_out(metric: object) -> None:
    probs = torch.full((2 * 8 * 8, C), 1 / C)
    labels = _void_masks().reshape(-1)
    keep = "keep = labels != 255, then pass probs[keep] and labels[keep]"
    with pytest.raises(ValueError, match=re.escape(keep)) as refused:
        metric(probs, labels)  # type: ignore[operator]
    assert "255, the void label" in str(refused.value)
    metric(probs[labels != 255], labels[labels != 255])  # type: ignore[operator]


def test_metrics_with_several_values_outside_keep_the_class_range() -> None:
    probs, labels = torch.full((3, C), 1 / C), torch.tensor([-1, 0, 255])
    with pytest.raises(ValueError, match=r"keep = \(labels >= 0\) & \(labels < 4\)"):
        metrics.nll(probs, labels)


def _one_based(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities right on every row, and the same classes coded ``1..C``."""
    classes = torch.arange(n) % C
    probs = torch.full((n, C), 0.1 / (C - 1))
    probs[torch.arange(n), classes] = 0.9
    return probs, classes + 1


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
def test_metrics_offer_labels_minus_one_for_labels_coded_from_one(
    metric: object,
) -> None:
    """Labels coded 1..C were told "keep = labels != C": following it dropped
    a real class and scored the rest against the wrong columns (accuracy 0.0
    on three quarters of the rows; probe falsepos24b). Both readings are
    offered; for classes, labels - 1."""
    probs, labels = _one_based()
    with pytest.raises(ValueError, match=r"got values in \[1, 4\]") as refused:
        metric(probs, labels)  # type: ignore[operator]
    message = str(refused.value)
    assert "If 4 marks positions without a label" in message
    assert "if the labels are classes coded from 1 (1 to 4), pass labels - 1" in message
    torch.testing.assert_close(
        metrics.accuracy(probs, labels - 1), torch.tensor(1.0), rtol=0, atol=0
    )


def test_categorical_offers_labels_minus_one_for_labels_coded_from_one() -> None:
    logits = torch.randn(2, 3, C)
    with pytest.raises(ValueError, match=r"ignore_index=4\); if the labels") as err:
        bnn.Categorical().log_likelihood(logits, torch.tensor([1, 4, 2]))
    assert "coded from 1 (1 to 4), pass labels - 1" in str(err.value)
    assert "which has 4" in str(err.value)


def test_labels_holding_zero_and_c_are_not_read_as_coded_from_one() -> None:
    """0 and C both present: labels - 1 would put 0 outside; the remedy for
    classes stays one column (logit) per class."""
    probs, labels = torch.full((3, C), 1 / C), torch.tensor([0, 2, 4])
    with pytest.raises(ValueError, match=r"one column each in probs, which has 4$"):
        metrics.nll(probs, labels)
    with pytest.raises(ValueError, match=r"output, which has 4$") as refused:
        bnn.Categorical().log_likelihood(torch.randn(2, 3, C), labels)
    assert "labels - 1" not in str(refused.value)
