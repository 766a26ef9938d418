"""Whether broadcasting paired every example with the targets of all examples.

A torch_blue-style ``log_prob_from_parameters`` broadcasts its operands (the
targets and the predictive parameters) from the right. Targets ``(B,)``
against parameters ``(B, 1)`` (or the mirror) give ``(B, B)``: each example
scored against the targets of all ``B`` examples, which the loss would sum as
an example's features. :func:`pairs_examples` reads that from the shapes
alone (it runs under ``torch.vmap``), and says so only where it is certain:
a verdict that would change with a batch size that happens to equal a
feature count (the last batch of a loader) is no verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["pairs_examples"]


def pairs_examples(
    value: Sequence[int], batch: int, operands: Iterable[Sequence[int]]
) -> bool:
    """Whether a log-likelihood of shape ``value`` crossed the batch with itself.

    The operands are aligned with ``value`` from the right, as broadcasting
    aligns them. An operand of ``value``'s rank whose first size is ``batch``
    has its examples in dimension 0 (it is *batch-first*); its other
    dimensions, and every dimension but the first of a shorter operand, are
    features of its own. The first dimension of a shorter operand of size
    ``batch`` is either its batch, landed after dimension 0 (the pairing), or
    features of that size (quantile levels ``(Q,)``, a scale per reading
    ``(D,)`` at ``B == Q`` or ``B == D``). A dimension ``d > 0`` of ``value``
    of size ``batch`` is a pairing only where all three hold: such a shorter
    operand lands its first dimension at ``d``; a batch-first operand has
    size 1 at ``d``, which broadcasting stretched to ``batch``; and no operand
    has a size above 1 at ``d`` from a dimension that is features for certain
    (then the shorter operand's may be features too, and nothing was
    stretched across examples for certain). Labels ``(B,)`` that index
    parameters ``(B, C)`` stretch nothing and are no pairing, at any ``C``.

    Args:
        value: the shape of one particle's log-likelihoods, batch first.
        batch: the number of examples ``B``.
        operands: the shapes of the targets and of the predictive parameters.

    Returns:
        ``True`` where some dimension of ``value`` is certainly the examples
        of a shorter operand paired with those of a batch-first one.

    Example:
        >>> pairs_examples((4, 4), 4, [(4,), (4, 1)])  # targets (B,), outputs (B, 1)
        True
        >>> pairs_examples((4, 4), 4, [(4, 1), (4, 4), (4,)])  # quantiles, taus (Q,)
        False
        >>> pairs_examples((5, 4), 5, [(5, 1), (5, 4), (4,)])  # the same at B = 5
        False
    """
    rank = len(value)
    if batch < 2 or rank < 2:
        return False
    placed = [
        (rank - len(shape), shape) for shape in operands if 0 < len(shape) <= rank
    ]
    features = {
        place + axis
        for place, shape in placed
        for axis, size in enumerate(shape)
        if size > 1 and (axis > 0 or (place > 0 and size != batch))
    }
    batch_first = [shape for place, shape in placed if place == 0 and shape[0] == batch]
    return any(
        place not in features
        and value[place] == batch
        and any(aligned[place] == 1 for aligned in batch_first)
        for place, shape in placed
        if place > 0 and shape[0] == batch
    )
