"""Class labels outside the classes: which values, and what they usually mean.

A label outside ``[0, C)`` is refused by :class:`~pyrolite_bnn.Categorical`'s
checks and by the classification metrics (:mod:`pyrolite_bnn.metrics`). Most
often it is not a class at all but a mark of a position without a label: the
padding of tagged sequences (``-100``, torch's ``ignore_index``) or the void
pixels of a segmentation mask (``255`` in PASCAL VOC and Cityscapes masks,
which are ``uint8``). Sometimes it is a class: labels coded from 1 (``1..C``,
as data exported from R or MATLAB often are) put the last class at ``C``, and
leaving ``C`` out would drop a real class. Both messages name the values
outside the classes with :func:`outside_labels_note` and offer both readings:
the remedy that leaves the value out (the likelihood's ``ignore_index``,
:func:`ignore_index_hint`; the metrics' ``keep`` mask, :func:`keep_mask_hint`),
and what makes the labels classes (``labels - 1`` where they fit ``1..C``, else
one logit or column per class).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "VOID_LABEL",
    "ignore_index_hint",
    "keep_mask_hint",
    "labels_outside",
    "outside_labels_note",
]

# The label of void (unlabelled, boundary) pixels in PASCAL VOC and Cityscapes
# segmentation masks.
VOID_LABEL = 255

# How many of the distinct values outside the classes a message names.
_SHOWN = 4


def labels_outside(labels: Tensor, classes: int) -> list[int]:
    """The distinct values of ``labels`` outside ``[0, classes)``, ascending.

    Reads the values (a device synchronisation): for error messages only.

    Example:
        >>> import torch
        >>> labels_outside(torch.tensor([0, 255, 3, 255, -1]), 4)
        [-1, 255]
    """
    outside = labels[(labels < 0) | (labels >= classes)]
    return [int(value) for value in torch.unique(outside).tolist()]


def outside_labels_note(values: Sequence[int]) -> str:
    """Name the values outside the classes, and 255 as the void label of masks.

    Args:
        values: the distinct values outside the classes, ascending
            (:func:`labels_outside`).

    Example:
        >>> outside_labels_note([255])
        'outside them: 255, the void label of PASCAL VOC and Cityscapes masks'
        >>> outside_labels_note([-3, -2, -1, 7, 9])
        'outside them: -3, -2, -1, 7, ...'
    """
    shown = ", ".join(str(value) for value in values[:_SHOWN])
    if len(values) > _SHOWN:
        shown += ", ..."
    note = f"outside them: {shown}"
    if VOID_LABEL in values:
        lead = "," if len(values) == 1 else f"; {VOID_LABEL} is"
        note += f"{lead} the void label of PASCAL VOC and Cityscapes masks"
    return note


def ignore_index_hint(outside: Sequence[int], classes: int, lowest: int) -> str:
    """:class:`~pyrolite_bnn.Categorical`'s remedies for labels outside the classes.

    The ``ignore_index`` that leaves them out where they mark positions
    without a label; where they are classes, ``labels - 1`` for labels coded
    from 1, else one logit per class.

    Args:
        outside: the distinct label values outside ``[0, classes)``.
        classes: the number of classes (the logits' last dimension).
        lowest: the smallest label.

    Example:
        >>> ignore_index_hint([255], 4, 0).split(", leave")[0]
        '. If 255 marks positions without a label (padding, void pixels)'
        >>> ignore_index_hint([-1, 255], 4, -1).split("; ")[0].split(" with ")[1]
        'bnn.Categorical(ignore_index=...)'
        >>> ignore_index_hint([3], 3, 1).split("; ")[1].split(" (classes")[0]
        'if the labels are classes coded from 1 (1 to 3), pass labels - 1'
    """
    one = len(outside) == 1
    value = str(outside[0]) if one else "..."
    return (
        f". If {value if one else 'one of these values'} marks positions without "
        "a label (padding, void pixels), leave them out with "
        f"bnn.Categorical(ignore_index={value}); "
        + _as_classes(
            outside,
            classes,
            lowest,
            "one logit each in the last dimension of the network's output",
        )
    )


def keep_mask_hint(outside: Sequence[int], classes: int, lowest: int) -> str:
    """The metrics' remedies for labels outside the classes.

    The ``keep`` mask that leaves them out where they mark positions without
    a label; where they are classes, ``labels - 1`` for labels coded from 1,
    else one column of ``probs`` per class.

    Args:
        outside: the distinct label values outside ``[0, classes)``.
        classes: the number of classes (the columns of ``probs``).
        lowest: the smallest label.

    Example:
        >>> keep_mask_hint([255], 4, 0).split("; ")[0].split(": ")[1]
        'keep = labels != 255, then pass probs[keep] and labels[keep]'
        >>> keep_mask_hint([3], 3, 1).split("; ")[1].split(" (classes")[0]
        'if the labels are classes coded from 1 (1 to 3), pass labels - 1'
    """
    one = len(outside) == 1
    kept = f"labels != {outside[0]}" if one else f"(labels >= 0) & (labels < {classes})"
    return (
        f". If {outside[0] if one else 'one of these values'} marks positions "
        f"without a label (padding, void pixels), leave them out: keep = {kept}, "
        "then pass probs[keep] and labels[keep]; "
        + _as_classes(outside, classes, lowest, "one column each in probs")
    )


def _as_classes(outside: Sequence[int], classes: int, lowest: int, slots: str) -> str:
    """What makes the labels classes: ``labels - 1`` where they fit ``1..C``.

    ``slots`` says where the classes are (``"one column each in probs"``).
    """
    if lowest >= 1 and list(outside) == [classes]:
        return (
            f"if the labels are classes coded from 1 (1 to {classes}), pass "
            f"labels - 1 (classes are counted from 0, {slots}, which has {classes})"
        )
    return f"labels of classes need {slots}, which has {classes}"
