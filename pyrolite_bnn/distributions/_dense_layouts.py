"""Hints for dense outputs given in torch's channels-first layout.

The likelihoods read classes (:class:`~pyrolite_bnn.Categorical`) and
parameter pairs (:class:`~pyrolite_bnn.HeteroscedasticNormal`'s mean and raw
scale) from the **last** dimension of the network's output ``(S, B, ..., C)``;
torch's convolutions and ``cross_entropy`` keep them in dimension 1 of
``(B, C, H, W)``. A segmentation network that ends with a convolution thus
returns ``(S, B, C, H, W)``. Moving dimension 1 last, torch's habit, is right
inside ``forward`` (which sees no particle dimension) and wrong on the
network's output, whose dimension 1 is the batch: ``out.movedim(1, -1)`` gives
``(S, C, H, W, B)``, and where the batch size equals the number of classes
these logits have the expected shape and no check can tell.

These hints complete a likelihood's shape error where the shapes fit one of
those readings; each returns ``""`` where they do not.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["batch_last_hint", "channels_first_hint", "pair_first_hint"]


def _move_last(what: str, variable: str, size: str, noun: str) -> str:
    """Where and how to move torch's channel dimension (dimension 1) last."""
    return (
        f"Move {what} last at the end of the network's forward, e.g. "
        f"`return {variable}.movedim(1, -1)` for (B, {size}, H, W) {noun} (forward "
        "sees no particle dimension), or on the network's output (S, B, "
        f"{size}, ...) with out.movedim(2, -1), not out.movedim(1, -1): "
        "dimension 0 of the output holds the particles, and moving dimension 1 "
        "moves the batch"
    )


def channels_first_hint(output: Tensor, target: Tensor) -> str:
    """Name torch's class dimension 1 when the labels fit that layout instead.

    ``F.cross_entropy`` reads ``(B, C, d1, ...)`` logits against ``(B, d1, ...)``
    labels; here the classes are the last dimension of ``(S, B, ..., C)``.

    Example:
        >>> import torch
        >>> hint = channels_first_hint(torch.zeros(2, 4, 3, 5, 5), torch.zeros(4, 5, 5))
        >>> hint.split(";")[0]
        '. The classes are the last dimension here'
        >>> channels_first_hint(torch.zeros(2, 4, 5, 5, 3), torch.zeros(4, 5, 5))
        ''
    """
    if output.dim() < 4:
        return ""
    if tuple(target.shape) != (output.shape[1], *output.shape[3:]):
        return ""
    return (
        ". The classes are the last dimension here; torch's cross_entropy reads "
        "them from dimension 1 of (B, C, ...) logits. "
        + _move_last("them", "logits", "C", "logits")
        + " (with as many examples as classes that swaps batch and classes "
        "without an error)"
    )


def batch_last_hint(output: Tensor, target: Tensor) -> str:
    """Name ``out.movedim(1, -1)`` when the batch of the logits is last.

    Logits ``(S, C, ..., B)`` against labels ``(B, ...)``: the network's
    output ``(S, B, C, ...)`` with its batch moved last instead of its
    classes. Where ``B`` equals ``C`` the shapes match and no error is raised:
    the hint says so.

    Example:
        >>> import torch
        >>> hint = batch_last_hint(torch.zeros(2, 4, 5, 5, 3), torch.zeros(3, 5, 5))
        >>> hint.split(":")[0]
        '. The batch seems to be the last dimension of these logits'
        >>> batch_last_hint(torch.zeros(2, 3, 5, 5, 4), torch.zeros(3, 5, 5))
        ''
    """
    if output.dim() < 4 or output.shape[1] == output.shape[-1]:
        return ""
    if tuple(target.shape) != (output.shape[-1], *output.shape[2:-1]):
        return ""
    return (
        ". The batch seems to be the last dimension of these logits: "
        "out.movedim(1, -1) on the network's output (S, B, C, ...) moves the "
        "batch, not the classes (dimension 0 holds the particles); the classes "
        "are its dimension 2, out.movedim(2, -1), or end the network's forward "
        "with `return logits.movedim(1, -1)` (forward sees (B, C, ...) without "
        "particles). With as many examples in a batch as classes the same "
        "mistake gives logits of the expected shape and no error"
    )


def pair_first_hint(
    output: Tensor, size: int, what: str, target: Tensor | None = None
) -> str:
    """Name torch's channel dimension 1 when it holds a likelihood's parameters.

    Where ``output``'s last dimension has ``size`` entries too (an image
    ``size`` pixels wide), the output passes the likelihood's check and only
    the targets tell: given ``target``, the hint is given where the targets
    fit the channels-first reading, ``(B, H, W)`` for ``(S, B, size, H, W)``.

    Args:
        output: the network's output, refused for its last dimension (or for
            the targets' shape).
        size: how many parameters the likelihood reads from the last dimension.
        what: those parameters, for the message, capitalised as it starts a
            sentence (``"The (mean, raw scale) pair"``).
        target: the targets ``output`` was refused for, if it was.

    Example:
        >>> import torch
        >>> hint = pair_first_hint(torch.zeros(3, 2, 2, 8, 8), 2, "The pair")
        >>> hint.split(". Move")[0]
        ". The pair seems to be dimension 2 here, torch's channels-first layout"
        >>> pair_first_hint(torch.zeros(3, 2, 8, 8), 2, "The pair")
        ''
        >>> out, images = torch.zeros(3, 4, 2, 8, 2), torch.zeros(4, 8, 2)
        >>> pair_first_hint(out, 2, "The pair", images).split(", torch")[0]
        '. The pair seems to be dimension 2 here'
    """
    if output.dim() < 4 or output.shape[2] != size:
        return ""
    if target is not None and tuple(target.shape) != (
        output.shape[1],
        *output.shape[3:],
    ):
        return ""
    return (
        f". {what} seems to be dimension 2 here, torch's channels-first layout. "
        + _move_last("it", "out", str(size), "outputs")
    )
