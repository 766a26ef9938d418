"""What the losses of one forward pass take from it: their heats and divisors.

A network with several outputs (heads) trains with one loss per head, added:
``label_loss(out["label"], y) + value_loss(out["value"], v)``. The sum is one
negative ELBO (divided by one number) only if

* the KL of the pass, which each loss with a positive heat adds, counts once
  in total: the heats of the losses add up, so the default ``heat=1`` on
  each of two heads gives the posterior a heat of 2, where ``heat=0.5`` on
  each (or ``heat=0`` on all but one) gives it 1;
* every loss divides by the same number: a ``reduction="mean"`` loss divides
  its ELBO by its own ``dataset_size``, so heads with different
  ``dataset_size`` (a target known for some examples only) are weighed by
  different factors, and the heads' data terms are no longer those of one
  ELBO.

:class:`PassCharges` collects what each loss took from one output of a pass
and names what is wrong, once per pass. Heats are compared when the losses
are computed (the KL is the same tensor for all); divisors when their data
terms are trained, in ``backward``: a loss computed only to be read (a
metric with gradients on, ``.item()``'d) divides by what it likes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = ["LossCharge", "OutputKey", "PassCharges"]

# An output by its memory, shape and strides: the same for a view of all of it.
OutputKey = tuple[int, tuple[int, ...], tuple[int, ...]]

# Heats that add up to 1 within float rounding (three times 1/3, 0.1 + 0.2 +
# 0.7) are a split of the untempered KL.
_HEAT_ROUNDING = 1e-9


@dataclass(frozen=True)
class LossCharge:
    """What one loss with gradients took from one output of a forward pass.

    Attributes:
        heat: the heat of the KL it added (0 for ``heat=0``, or where the KL
            carries no gradient).
        dataset_size: its ``dataset_size``.
        reduction: its ``reduction``, ``"mean"`` or ``"sum"``.

    Example:
        >>> LossCharge(1.0, 100, "mean").divisor, LossCharge(1.0, 100, "sum").divisor
        (100, 1)
    """

    heat: float
    dataset_size: int
    reduction: str

    @property
    def divisor(self) -> int:
        """What the loss divides the negative ELBO by: ``N`` for ``"mean"``, else 1."""
        return self.dataset_size if self.reduction == "mean" else 1

    def describe(self) -> str:
        """The loss's arguments that set its divisor, as the user wrote them."""
        if self.reduction == "mean":
            return f"dataset_size={self.dataset_size}, reduction='mean'"
        return "reduction='sum'"


class PassCharges:
    """The losses with gradients that scored outputs of one forward pass.

    The same output (or a view of all of it) scored again, by the same loss
    or another, is a repeated evaluation or a comparison, not a second head:
    it counts once, with the largest heat any loss took it with and the
    divisor of the first. Divisors are compared between the outputs whose
    data terms ``backward`` reached (:meth:`trained`): those are the heads
    the losses' sum trains.

    Example:
        >>> charges = PassCharges()
        >>> label, value = (1, (4, 8, 3), (24, 3, 1)), (2, (4, 8, 1), (8, 1, 1))
        >>> charges.add(label, LossCharge(0.5, 1000, "mean"))
        []
        >>> charges.add(value, LossCharge(0.5, 100, "mean"))
        []
        >>> charges.total_heat
        1.0
        >>> charges.trained(label)
        []
        >>> [message[:42] for message in charges.trained(value)]
        ['losses with gradients scored outputs of th']
    """

    def __init__(self) -> None:
        self._charges: dict[OutputKey, LossCharge] = {}
        self._trained: set[OutputKey] = set()
        self._said: set[str] = set()

    @property
    def total_heat(self) -> float:
        """The heat of the KL of the pass summed over the losses: the posterior's."""
        return math.fsum(charge.heat for charge in self._charges.values())

    def add(self, output: OutputKey, charge: LossCharge) -> list[str]:
        """Note that a loss took ``charge`` from ``output``.

        Returns:
            The messages of the problems this charge makes, each said once
            per pass.
        """
        earlier = self._charges.get(output)
        if earlier is not None:
            if charge.heat <= earlier.heat:
                return []
            charge = replace(earlier, heat=charge.heat)
        self._charges[output] = charge
        return self._said_once("heat", self._heat_problem())

    def trained(self, output: OutputKey) -> list[str]:
        """Note that ``backward`` reached the data term a loss took from ``output``.

        Returns:
            The message of losses trained together that divide by different
            numbers, said once per pass.
        """
        charge = self._charges.get(output)
        if charge is None or output in self._trained:
            return []
        self._trained.add(output)
        return self._said_once("divisor", self._divisor_problem())

    def _said_once(self, kind: str, message: str | None) -> list[str]:
        if message is None or kind in self._said:
            return []
        self._said.add(kind)
        return [message]

    def _heat_problem(self) -> str | None:
        """Several losses with a positive heat whose heats add up to more than 1.

        A total of at most 1 is read as a split (``heat=0.5`` on each of two
        heads): a loss cannot know whether more heads follow.
        """
        heats = [charge.heat for charge in self._charges.values() if charge.heat > 0]
        total = math.fsum(heats)
        if len(heats) < 2 or total <= 1 + _HEAT_ROUNDING:
            return None
        if len(set(heats)) == 1:
            times = "twice" if len(heats) == 2 else f"{len(heats)} times"
            detail = f"heat={heats[0]:g} on each"
            counts = f" (the KL counts {times})"
        else:
            detail = "heats " + " + ".join(f"{heat:g}" for heat in heats)
            counts = ""
        return (
            f"{len(heats)} losses with gradients took the KL term of the same "
            "forward pass from different outputs of it (heads, or parts of one "
            f"output), {detail}: added, they give the posterior a heat of "
            f"{total:g}{counts}. Give every loss but one heat=0 "
            "(bnn.KullbackLeiblerLoss(..., heat=0): data term only), or split "
            "the heat between them (heat=0.5 on each of two heads is a heat of "
            "1); to evaluate a loss again, use torch.no_grad() or "
            "loss_fn.last_nll"
        )

    def _divisor_problem(self) -> str | None:
        """Two losses trained on outputs of the pass, dividing by different numbers."""
        # In the order the losses were computed, as the user wrote them.
        charges = [c for key, c in self._charges.items() if key in self._trained]
        first = charges[0]
        other = next((c for c in charges if c.divisor != first.divisor), None)
        if other is None:
            return None
        return (
            "losses with gradients scored outputs of the same forward pass "
            f"(heads) with different divisors: one with {first.describe()} "
            f"divides by {first.divisor}, one with {other.describe()} by "
            f"{other.divisor}. Added, they are not one negative ELBO: each "
            "reduction='mean' loss is its own ELBO divided by its own "
            "dataset_size, so one head's data term is weighed "
            f"{_ratio(first.divisor, other.divisor)} times too much against the "
            "other's. Give every loss reduction='sum' (each its own "
            "dataset_size: the number of examples that have its target) and "
            "divide their total by one number, (loss_a(...) + loss_b(...)) / N; "
            "or, where every example has every head's target, the same "
            "dataset_size to all"
        )


def _ratio(a: int, b: int) -> str:
    """``max / min`` of two positive divisors, as few digits as it needs."""
    return f"{max(a, b) / min(a, b):g}"
