"""Every closure evaluation of one optimizer step on the same random numbers.

``torch.optim.LBFGS`` evaluates the loss several times in one step (its inner
iterations and line search) and treats the values and gradients as those of
one function: it builds curvature pairs from their differences and its
``strong_wolfe`` line search compares them. The ELBO is a Monte-Carlo
estimate, and each evaluation drew new weights: a different function every
time, whose noise made the curvature pairs and the line search's comparisons
meaningless (the probes saw non-finite losses within a few steps and losses
that stalled far above Adam's). :class:`SameDraws` runs every evaluation
after the first from the random-number state the step started in (common
random numbers: within a step the objective is one deterministic function of
the parameters); each later evaluation leaves the generators as it found
them, so that they move as if the loss had been evaluated once (and what the
optimizer itself draws between evaluations, a Langevin step's noise, is
drawn once): a run stays reproducible from ``torch.manual_seed``, and each
step draws new weights.

The default generators of the CPU and of the CUDA devices holding parameters
are rewound (:func:`~pyrolite_bnn._draws.rng_state`); draws on another kind
of device are not replayed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TypeVar

import torch
from torch import Tensor

from pyrolite_bnn._draws import generators_held, rng_state, set_rng_state

__all__ = ["SameDraws"]

_T = TypeVar("_T")


class SameDraws:
    """Runs each evaluation of one optimizer step on the first one's random numbers.

    Args:
        devices: the devices whose default generators the evaluations draw
            from (the parameters'); the CPU's is always included.

    Example:
        >>> def draw() -> float:
        ...     return float(torch.randn(()))
        >>> with SameDraws([torch.device("cpu")]) as same:
        ...     first, again = same.run(draw), same.run(draw)
        >>> first == again
        True
    """

    def __init__(self, devices: Iterable[torch.device]) -> None:
        unique = dict.fromkeys([torch.device("cpu"), *devices])
        self._devices = [d for d in unique if rng_state(d) is not None]
        self._held: AbstractContextManager[None] = generators_held()
        self._start: list[Tensor] = []
        self._evaluated = False

    def _states(self) -> list[Tensor]:
        states = [rng_state(device) for device in self._devices]
        return [state for state in states if state is not None]

    def _set(self, states: list[Tensor]) -> None:
        for state, device in zip(states, self._devices, strict=True):
            set_rng_state(state, device)

    def __enter__(self) -> SameDraws:
        self._held.__enter__()
        self._start = self._states()
        return self

    def run(self, evaluate: Callable[[], _T]) -> _T:
        """Run ``evaluate`` from the step's random state (the first: as it is).

        A later evaluation leaves the generators as it found them: what the
        optimizer drew after the first (a Langevin step's noise) is not
        handed out again.
        """
        if not self._evaluated:
            self._evaluated = True
            return evaluate()
        now = self._states()
        self._set(self._start)
        try:
            return evaluate()
        finally:
            self._set(now)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._held.__exit__(kind, error, traceback)
