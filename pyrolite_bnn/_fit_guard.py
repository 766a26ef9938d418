"""The NaN guard of :func:`~pyrolite_bnn.training.fit`.

The model, loss and optimizer states are copied in memory at the end of every
epoch (and before the first); a non-finite loss, gradient, network output or
parameter restores that copy and raises ``FloatingPointError``, and any other
error that stops an epoch's step restores it too (and is re-raised, naming
the step). Under
``torch.distributed`` the checks are summed over the ranks first, so that all
ranks fail at the same step and restore together.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from torch import Tensor, nn

from pyrolite_bnn._distributed import Ranks
from pyrolite_bnn._state import clone_state
from pyrolite_bnn.loss import KullbackLeiblerLoss

__all__ = ["NaNGuard", "StepStats", "add_to_message"]


@dataclass
class _Snapshot:
    """In-memory copy of the training state at the end of an epoch."""

    epoch: int  # the last completed epoch (-1: before training)
    model: dict[str, Any]
    loss_fn: dict[str, Any]
    optimizer: dict[str, Any]
    heat: float

    @classmethod
    def take(
        cls,
        epoch: int,
        model: nn.Module,
        loss_fn: KullbackLeiblerLoss,
        optimizer: torch.optim.Optimizer,
    ) -> _Snapshot:
        return cls(
            epoch,
            clone_state(model.state_dict()),
            clone_state(loss_fn.state_dict()),
            clone_state(optimizer.state_dict()),
            loss_fn.heat,
        )

    def restore(
        self,
        model: nn.Module,
        loss_fn: KullbackLeiblerLoss,
        optimizer: torch.optim.Optimizer,
    ) -> str:
        """Load the copy back; return a description for error messages."""
        model.load_state_dict(self.model)
        loss_fn.load_state_dict(self.loss_fn)
        # load_state_dict may keep the given tensors: hand it a fresh copy.
        optimizer.load_state_dict(clone_state(self.optimizer))
        optimizer.zero_grad(set_to_none=True)
        loss_fn.heat = self.heat
        if self.epoch < 0:
            return (
                "restored model, loss_fn and optimizer to their state before training"
            )
        return (
            "restored model, loss_fn and optimizer to their state at the end of "
            f"epoch {self.epoch}"
        )


def _all_finite(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    if not tensors:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.stack([torch.isfinite(t).all().to(device) for t in tensors]).all()


@dataclass
class StepStats:
    """One step's loss, NLL and KL, averaged over the ranks."""

    loss: float
    nll: float
    kl: float


class NaNGuard:
    """Keeps the last good state and turns non-finite values into errors.

    Args:
        model: the model being trained (possibly DDP-wrapped).
        loss_fn: the loss.
        optimizer: the optimizer; its parameters are checked.
        names: parameter names by ``id`` for messages.
        ranks: the process group.
        checkpoint_path: the checkpoint file (for messages), if any.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: KullbackLeiblerLoss,
        optimizer: torch.optim.Optimizer,
        names: dict[int, str],
        ranks: Ranks,
        checkpoint_path: str | os.PathLike[str] | None,
    ) -> None:
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.params: list[nn.Parameter] = [
            param for group in optimizer.param_groups for param in group["params"]
        ]
        self.names, self.ranks = names, ranks
        self.checkpoint_path = checkpoint_path
        self.global_step = 0
        self.good = _Snapshot.take(-1, model, loss_fn, optimizer)
        self._raised: FloatingPointError | None = None  # by fail, restored

    def keep(self, epoch: int) -> None:
        """Remember the state at the end of ``epoch`` as the last good one."""
        self.good = _Snapshot.take(epoch, self.model, self.loss_fn, self.optimizer)

    def fail(
        self, epoch: int, step: int, what: str, cause: BaseException | None = None
    ) -> NoReturn:
        """Restore the last good state and raise ``FloatingPointError``."""
        error = FloatingPointError(
            f"{what} at {self._restore(epoch, step)}" + _float16_hint(self.params)
        )
        self._raised = error
        raise error from cause

    def restore_after(self, error: Exception, epoch: int, step: int) -> None:
        """Restore the last good state after ``error`` stopped step ``step``.

        A step that raises (targets the loss's checks refuse, a batch norm's
        batch of one, an error of the loader) has left the epoch's earlier
        steps applied: the model, loss and optimizer go back to the copy the
        NaN guard restores, and ``error``'s message says where it was raised
        and what was restored (the caller re-raises it). The guard's own
        ``FloatingPointError`` has restored already and is left alone.
        """
        if error is self._raised:
            return
        add_to_message(error, f"fit stopped at {self._restore(epoch, step)}")

    def _restore(self, epoch: int, step: int) -> str:
        """Load the last good state; where training stopped and what was restored."""
        restored = self.good.restore(self.model, self.loss_fn, self.optimizer)
        where = f"epoch {epoch}, step {step} (global step {self.global_step})"
        saved = ""
        if self.checkpoint_path is not None and self.good.epoch >= 0:
            saved = f"; the checkpoint {os.fspath(self.checkpoint_path)!r} is unchanged"
        return f"{where}, counted from 0; {restored}{saved}"

    def check_step(
        self,
        epoch: int,
        step: int,
        loss: Tensor,
        output_error: BaseException | None,
        evaluation: int = 0,
        first_loss: float | None = None,
    ) -> StepStats:
        """Check an evaluation of a step after ``backward``; return its statistics.

        One synchronisation (and one ``all_reduce`` under ``torch.distributed``)
        carries the loss, NLL, KL, whether every gradient is finite and whether
        the network output was rejected as non-finite on some rank. A step
        whose output was rejected has no NLL and KL: the loss never ran, and
        ``last_nll``/``last_kl`` are missing (first step) or of an earlier step.
        ``evaluation`` counts the evaluations of the step before this one (an
        optimizer's closure, ``torch.optim.LBFGS``, may be evaluated several
        times), ``first_loss`` is the first one's loss (the step's): a failure
        of a later evaluation says so.
        """
        grads = [p.grad for p in self.params if p.grad is not None]
        value = loss.detach()
        if output_error is None:
            nll, kl = self.loss_fn.last_nll, self.loss_fn.last_kl
        else:
            nll = kl = torch.full_like(value, math.nan)
        stats = torch.stack([value, nll, kl]).to(torch.float64)
        flags = torch.stack(
            [
                _all_finite(grads, stats.device).logical_not(),
                torch.tensor(output_error is not None, device=stats.device),
            ]
        ).to(stats.dtype)
        reduced = self.ranks.sum(torch.cat([stats, flags]).to(self.ranks.device))
        loss_value, nll_value, kl_value, bad_grads, bad_output = reduced.tolist()
        size = self.ranks.size
        later = _later_evaluation(evaluation, first_loss)
        if bad_output:
            ranks = " on some rank" if self.ranks.distributed else ""
            self.fail(
                epoch, step, f"non-finite network output{ranks}{later}", output_error
            )
        if not math.isfinite(loss_value):
            self.fail(epoch, step, f"non-finite loss ({loss_value / size}){later}")
        if bad_grads:
            self.fail(
                epoch, step, f"non-finite gradient of {self._nonfinite_grad()}{later}"
            )
        return StepStats(loss_value / size, nll_value / size, kl_value / size)

    def step_done(self) -> None:
        """Count an optimizer step (one or more checked evaluations)."""
        self.global_step += 1

    def check_parameters(self, epoch: int, step: int) -> None:
        """Fail if a parameter is non-finite at the end of an epoch."""
        finite = not self.params or bool(
            _all_finite([p.detach() for p in self.params], self.params[0].device)
        )
        if self.ranks.any(not finite):
            self.fail(
                epoch, step, "non-finite parameter after the epoch's last step", None
            )

    def _nonfinite_grad(self) -> str:
        for param in self.params:
            if param.grad is not None and not bool(torch.isfinite(param.grad).all()):
                return self.names.get(
                    id(param), f"<parameter of shape {tuple(param.shape)}>"
                )
        return "a parameter on another rank"


def add_to_message(error: Exception, addition: str) -> None:
    """Append ``(addition)`` to ``error``'s message, keeping its type and traceback.

    The message is the one string argument of most exceptions
    (``ValueError("...")``); another kind of exception (a ``KeyError``, whose
    message is its key's repr, an ``OSError`` with an error number) gets
    the addition as a note, which Python 3.11 and later print after it.
    """
    message = error.args[0] if len(error.args) == 1 else None
    if isinstance(message, str) and str(error) == message:
        error.args = (f"{message} ({addition})",)
    elif hasattr(error, "add_note"):  # Python 3.11+
        error.add_note(addition)


def _later_evaluation(evaluation: int, first_loss: float | None) -> str:
    """Which evaluation of a step failed, when it was not the step's first."""
    if evaluation == 0:
        return ""
    first = "" if first_loss is None else f" (whose loss, the step's, was {first_loss})"
    return (
        f" in evaluation {evaluation} (counted from 0) of the optimizer's closure, "
        "at parameters the optimizer moved to within the step (LBFGS's inner "
        f"iterations or line search), not in the step's first evaluation{first}; "
        "a smaller lr or max_iter keeps those moves shorter"
    )


def _float16_hint(params: list[nn.Parameter]) -> str:
    """Why training float16 parameters fails, if there are any."""
    if not any(p.dtype == torch.float16 for p in params):
        return ""
    return (
        ". The optimizer updates float16 parameters: an optimizer's small "
        "constants vanish in float16 (Adam's default eps=1e-8 rounds to 0, so a "
        "weight whose gradient is 0 gets 0/0) and its steps round away; keep the "
        "parameters in float32 and compute under torch.autocast(device_type, "
        "dtype=torch.float16) or dtype=torch.bfloat16 (parameters stored in "
        "bfloat16 round the steps of the posterior's scales away too)"
    )
