"""Notice parameters that get gradients but that no optimizer updates.

The loss watches two groups of parameters over its first training steps: the
guide's that drew the weights (a guide assigned after the optimizer was
created is missing from it) and the likelihood's (a learned noise scale left
out of the optimizer). The window is counted in optimizer steps, taken from a
global ``torch.optim`` post-step hook: several backward passes per step
(gradient accumulation) and evaluations between steps are not steps. Only the
optimizers that hold parameters of the network (or of the group) count, so an
unrelated model's optimizer stepping in the same process does not shorten the
window.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import register_optimizer_step_post_hook

__all__ = [
    "CLEARED_CALLS",
    "UNTRAINED_STEPS",
    "ChangeWatch",
    "count_steps",
    "holds_any",
    "optimizers_started",
    "step_counts",
    "stepped_optimizers",
]

#: Steps of the optimizers holding the network over which a group that gets
#: gradients must change, or the loss warns that no optimizer holds it.
UNTRAINED_STEPS = 4
#: Loss calls of a group whose gradients were always cleared before them, after
#: which the group is no longer watched (an optimizer holding it clears them).
CLEARED_CALLS = 20

_steps: weakref.WeakKeyDictionary[Optimizer, int] = weakref.WeakKeyDictionary()
_total = [0]  # steps of all optimizers
_started = [0]  # optimizers that took their first step
_hook: list[Any] = []


def _count_step(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    count = _steps.get(optimizer, 0)
    _steps[optimizer] = count + 1
    _total[0] += 1
    if count == 0:
        _started[0] += 1


def optimizers_started() -> int:
    """How many optimizers have taken a step since counting began (it only grows)."""
    return _started[0]


def stepped_optimizers() -> list[Optimizer]:
    """The live optimizers that have taken a step since counting began."""
    return list(_steps)


def step_counts() -> tuple[int, dict[int, int]]:
    """The steps of all optimizers, and of each live one by ``id``, so far."""
    return _total[0], {id(opt): count for opt, count in _steps.items()}


def count_steps() -> None:
    """Start counting the steps of every torch optimizer (once per process)."""
    if not _hook:
        _hook.append(register_optimizer_step_post_hook(_count_step))


def holds_any(optimizer: Optimizer, ids: set[int]) -> bool:
    """Whether ``optimizer`` holds a tensor whose ``id`` is in ``ids``."""
    return any(
        id(p) in ids for group in optimizer.param_groups for p in group["params"]
    )


class ChangeWatch:
    """Notices one group of parameters that get gradients but never change.

    :meth:`unchanged` is called once per loss evaluation with the group's
    parameters. Calls count once a backward pass has left a gradient on one
    of them (a loss evaluated but never backpropagated is not the symptom);
    the values at the first counted call are compared with those at the first
    counted call after ``UNTRAINED_STEPS`` steps of the optimizers that hold
    parameters of the group or of the network (if none does, of all
    optimizers, once ``CLEARED_CALLS`` calls found the gradients uncleared).
    A group whose gradients are cleared (by an optimizer's ``zero_grad``: it
    holds them) is not watched further, before the window opens after
    ``CLEARED_CALLS`` calls, inside it at once. A group whose parameter names
    change (a new guide) is watched afresh.
    """

    def __init__(self) -> None:
        count_steps()
        self.names: tuple[str, ...] = ()
        self.key: Hashable = None
        self.calls = 0
        self.cleared = 0  # calls before the window, without gradients
        self.snapshot: list[Tensor] = []
        self.total_then = 0
        self.steps_then: dict[int, int] = {}  # id(optimizer) -> its step count
        self.done = False

    def finished(self, key: Hashable) -> bool:
        """Whether the watch of the group ``key`` is over (no need to collect it)."""
        return (
            key is not None
            and key == self.key
            and (self.done or (self.calls == 0 and self.cleared >= CLEARED_CALLS))
        )

    def unchanged(
        self,
        params: Mapping[str, Tensor],
        key: Hashable = None,
        related: Callable[[], Iterable[Tensor]] = tuple,
    ) -> bool:
        """Count a call; ``True`` (once) if ``params`` never changed in the window.

        Args:
            params: the group, by name.
            key: identifies the group cheaply (see :meth:`finished`).
            related: returns the network's parameters: optimizers holding one
                of them (or of the group) are the ones whose steps count.
        """
        names = tuple(params)
        if names != self.names or key != self.key:
            self.names, self.key, self.calls, self.cleared = names, key, 0, 0
            self.done = False
        if not params or self.done:
            return False
        if not any(p.is_leaf and p.grad is not None for p in params.values()):
            if self.calls:  # cleared inside the window: an optimizer holds them
                self.done, self.snapshot = True, []
            else:
                self.cleared += 1
            return False
        self.calls += 1
        if self.calls == 1:
            self.snapshot = [p.detach().clone() for p in params.values()]
            self.total_then = _total[0]
            self.steps_then = {id(opt): count for opt, count in _steps.items()}
            return False
        if _total[0] - self.total_then < UNTRAINED_STEPS:
            return False  # cheap: not even all optimizers together stepped enough
        if self._steps_since(params, related) < UNTRAINED_STEPS:
            return False
        before, self.snapshot, self.done = self.snapshot, [], True
        return all(
            torch.equal(p.detach(), old)
            for p, old in zip(params.values(), before, strict=True)
        )

    def _steps_since(
        self, params: Mapping[str, Tensor], related: Callable[[], Iterable[Tensor]]
    ) -> int:
        """Steps since the snapshot of the optimizers that hold the network."""
        ids = {id(p) for p in params.values()} | {id(p) for p in related()}
        holding = [(opt, count) for opt, count in _steps.items() if holds_any(opt, ids)]
        if not holding:
            # No optimizer that stepped holds the network: it is missing from
            # every optimizer, or its own has not stepped yet (accumulating
            # gradients over many calls). After CLEARED_CALLS calls without
            # its gradients cleared, every optimizer's steps count.
            return _total[0] - self.total_then if self.calls >= CLEARED_CALLS else 0
        return sum(count - self.steps_then.get(id(opt), 0) for opt, count in holding)
