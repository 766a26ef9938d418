"""Log probabilities of the draws of ``sample_variable``, kept for ``gather_log_probs``.

torch_blue 1.1.0 records ``[log p(w), log q(w)]`` of every draw of
``VIModule.sample_variable`` in the module (with ``return_log_probs`` on);
``gather_log_probs`` averages them per variable, sums them over the variables
and submodules and forgets them, and ``reset_log_probs`` forgets them. Here
the log probabilities of a forward pass are computed from its record and
attached to its output (``out.log_probs``), so the only draws kept are those
of ``sample_variable`` outside a forward pass: this module keeps them.

The record is transient, like torch_blue's: a copy of the module
(``copy.deepcopy``, pickling) starts without it, so that tensors in the
middle of an autograd graph never stop a module from being copied.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DrawnLogProbs",
    "drawn_log_probs",
    "forget_drawn_log_probs",
    "gather_drawn_log_probs",
]

# The attribute of a module that holds its record (in its ``__dict__``).
_ATTRIBUTE = "_drawn_log_probs"
# Modules that hold a record: without any, a forward pass has nothing to
# forget and walks no module tree.
_HOLDERS: weakref.WeakSet[nn.Module] = weakref.WeakSet()


class DrawnLogProbs:
    """Per variable, the ``[log p(w), log q(w)]`` of each draw, in order.

    Example:
        >>> import torch
        >>> record = DrawnLogProbs()
        >>> record.add("weight", torch.tensor([-1.0, 0.5]))
        >>> record.add("weight", torch.tensor([-3.0, 1.5]))
        >>> record.per_variable()
        [tensor([-2.,  1.])]
    """

    def __init__(self) -> None:
        self.draws: dict[str, list[Tensor]] = {}

    def add(self, variable: str, log_probs: Tensor) -> None:
        """Keep the log probabilities of one draw of ``variable``."""
        self.draws.setdefault(variable, []).append(log_probs)

    def per_variable(self) -> list[Tensor]:
        """The mean over draws of each variable drawn (torch_blue's aggregate)."""
        return [torch.stack(values).mean(0) for values in self.draws.values()]

    def __deepcopy__(self, memo: dict[int, Any]) -> DrawnLogProbs:
        """An empty record: draws belong to the module they were made on."""
        return DrawnLogProbs()

    def __reduce__(self) -> tuple[type[DrawnLogProbs], tuple[()]]:
        """Pickled empty (see :meth:`__deepcopy__`)."""
        return DrawnLogProbs, ()


def drawn_log_probs(module: nn.Module) -> DrawnLogProbs:
    """The record of ``module`` (created empty on first use)."""
    record = module.__dict__.get(_ATTRIBUTE)
    if not isinstance(record, DrawnLogProbs):
        record = DrawnLogProbs()
        module.__dict__[_ATTRIBUTE] = record
    _HOLDERS.add(module)  # also for a copy's record (copied empty)
    return record


def gather_drawn_log_probs(root: nn.Module) -> list[Tensor]:
    """The per-variable log probabilities of ``root`` and below, then forgotten."""
    gathered: list[Tensor] = []
    for module in root.modules():
        record = module.__dict__.get(_ATTRIBUTE)
        if isinstance(record, DrawnLogProbs):
            gathered.extend(record.per_variable())
    forget_drawn_log_probs(root)
    return gathered


def forget_drawn_log_probs(root: nn.Module) -> None:
    """Empty the records of ``root`` and of every module below it."""
    if not _HOLDERS:
        return
    for module in root.modules():
        if module.__dict__.pop(_ATTRIBUTE, None) is not None:
            _HOLDERS.discard(module)
