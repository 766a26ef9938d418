"""Notice weight decay on the parameters that set a scale.

A scale (a posterior standard deviation, a learned noise scale, a learned
prior's scale) is trained through an unconstrained parameter:
``softplus(rho)`` or ``exp(log_scale)``. An optimizer's ``weight_decay`` pulls
that parameter towards 0, which moves the scale towards a constant of order 1
(``softplus(0) = 0.69``, ``exp(0) = 1``), not towards 0: a practitioner's
regulariser silently widens the posterior (AdamW with ``weight_decay=0.1``
tripled the default posterior's standard deviations in 300 steps), or biases
the empirical-Bayes prior scale towards 1. In a Bayesian network the prior's KL
term is the regulariser, so the loss warns about an optimizer that decays such
a parameter (one that :func:`~pyrolite_bnn.decay.scale_parameters` finds), and
recommends :func:`~pyrolite_bnn.decay.decay_groups` (a ``torch.optim``
optimizer's groups) or :func:`~pyrolite_bnn.decay.decay_optim_args` (a
``pyro.optim`` optimizer's per-parameter arguments), which keep the decay off
exactly those.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor
from torch.optim import Optimizer

from pyrolite_bnn._change_watch import (
    count_steps,
    holds_any,
    optimizers_started,
    stepped_optimizers,
)
from pyrolite_bnn._handlers import pyro_wrapped
from pyrolite_bnn._validation import real_value
from pyrolite_bnn._warnings import warn_at_caller

__all__ = ["PENDING_CALLS", "DecayWatch"]

# Whether each parameter group decays, and its number of parameters.
_Groups = list[tuple[bool, int]]

# Scale parameters named in the warning before "(and N more)".
_NAMED = 3

#: Loss calls over which optimizers that hold none of the network's parameters
#: are looked at again (another network's, or this one's not yet seen).
PENDING_CALLS = 64


class DecayWatch:
    """Warns when optimizers holding the network decay a scale parameter.

    An optimizer is checked when it takes its first step, and again when its
    parameter groups change (a group added with ``add_param_group``, a
    group's ``weight_decay`` switched on, parameters added to a group); each
    of its decayed scale parameters is warned about once. The optimizers found
    together give one warning (``pyro.optim`` keeps one torch optimizer per
    parameter).

    :meth:`check` is called on every training evaluation of the loss and
    every run of its Pyro model with gradients (``SVI`` with any ELBO and
    guide, where the loss itself does not run); it compares each checked
    optimizer's groups (whether they decay, their size) with those it had
    when checked, and does more only when an optimizer took
    its first step or changed its groups since the last check, or while
    optimizers that held none of the network's parameters when they started
    are looked at again (:data:`PENDING_CALLS` calls).
    """

    def __init__(self) -> None:
        count_steps()
        self.started = 0
        # The checked optimizers by id, with their groups as checked (a list
        # of weak references: a WeakKeyDictionary takes 2 us to iterate).
        self.checked: dict[int, tuple[weakref.ref[Optimizer], _Groups]] = {}
        # The ids of the scale parameters each optimizer was warned about.
        self.warned: weakref.WeakKeyDictionary[Optimizer, set[int]]
        self.warned = weakref.WeakKeyDictionary()
        self.pending: weakref.WeakSet[Optimizer] = weakref.WeakSet()
        self.pending_calls = 0

    def __getstate__(self) -> dict[str, object]:
        """Nothing to keep: a copy (``deepcopy``, pickling) checks afresh."""
        return {}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__()  # type: ignore[misc]

    def _checked(self, optimizer: Optimizer) -> bool:
        entry = self.checked.get(id(optimizer))
        return entry is not None and entry[0]() is optimizer

    def _forget_deleted_optimizers(self) -> None:
        self.checked = {
            key: entry for key, entry in self.checked.items() if entry[0]() is not None
        }

    def check(
        self,
        scales: Callable[[], Mapping[str, Tensor]],
        network: Callable[[], Iterable[Tensor]],
    ) -> None:
        """Check the optimizers that hold the network and started stepping.

        Args:
            scales: returns the unconstrained scale parameters of the network's
                guide, priors and likelihood, by the name the warning gives.
            network: returns the network's parameters (an optimizer that holds
                none of them or of ``scales`` is another network's).
        """
        started = optimizers_started()
        if started != self.started:
            self.started = started
            self.pending.update(
                opt for opt in stepped_optimizers() if not self._checked(opt)
            )
            self.pending_calls = 0
        for reference, groups in self.checked.values():
            optimizer = reference()
            if optimizer is not None and _groups(optimizer) != groups:
                self.pending.add(optimizer)
                self.pending_calls = 0
        if not self.pending:
            return
        self.pending_calls += 1
        if self.pending_calls > PENDING_CALLS:
            self.pending.clear()
            return
        named = scales()
        held = {id(tensor) for tensor in named.values()}
        held.update(id(tensor) for tensor in network())
        by_id = {id(tensor): name for name, tensor in named.items()}
        found: list[tuple[Optimizer, str, float, bool]] = []
        for optimizer in list(self.pending):
            if not holds_any(optimizer, held):
                continue
            self.pending.discard(optimizer)
            self._forget_deleted_optimizers()
            self.checked[id(optimizer)] = (weakref.ref(optimizer), _groups(optimizer))
            decayed = _decayed_scales(optimizer, by_id)
            warned = self.warned.setdefault(optimizer, set())
            new = [finding for finding in decayed if finding[0] not in warned]
            warned.update(key for key, _, _, _ in decayed)
            found.extend((optimizer, *finding[1:]) for finding in new)
        if found:
            # One warning for all: pyro.optim keeps one torch optimizer per
            # parameter, which would otherwise give one warning per scale.
            # Named: the trainable ones (decay moves only those), or else the
            # frozen ones, which it moves once they are unfrozen.
            trainable = [finding for finding in found if finding[3]]
            found = trainable or found
            optimizer, _, decay, _ = found[0]
            names = ", ".join(repr(name) for _, name, _, _ in found[:_NAMED])
            more = f" (and {len(found) - _NAMED} more)" if len(found) > _NAMED else ""
            frozen = (
                ""
                if trainable
                else " (frozen now, requires_grad=False: the decay acts once "
                "they are unfrozen)"
            )
            optimizers = {id(finding[0]): finding[0] for finding in found}
            warn_at_caller(
                f"{type(optimizer).__name__} applies weight_decay={decay:g} to "
                f"{names}{more}{frozen}, unconstrained parameters of scales: "
                "decay pulls them towards 0, which moves the scales towards a "
                "constant of order 1 (softplus(0) = 0.69 for the default "
                "posterior, i.e. it widens the posterior; exp(0) = 1 for a "
                "learned prior's log_scale), instead of shrinking anything. "
                "In a Bayesian network the prior (the KL term) regularises "
                "the weights, and the ELBO sets a learned prior's scale: "
                "use weight_decay=0, or keep the decay off the scales of the "
                "network and of the loss (a learned noise) with "
                + _remedy(optimizer, decay, list(optimizers.values())),
            )


def _remedy(optimizer: Optimizer, decay: float, optimizers: list[Optimizer]) -> str:
    """The call that keeps ``decay`` off the scales, for this kind of optimizer.

    ``pyro.optim`` (Pyro's ``SVI``) keeps one torch optimizer per parameter,
    of the same name (``pyro.optim.Adam`` makes ``torch.optim.Adam``s), and
    takes per-parameter arguments instead of groups: optimizers of one
    parameter each, stepped while a Pyro ELBO runs the loss, are its. Under a
    ``pyro.optim`` learning-rate scheduler (``ExponentialLR({"optimizer":
    torch.optim.AdamW, "optim_args": {...}, ...})``, which records the rate
    it started from as ``initial_lr``) the arguments go in its
    ``"optim_args"``, with that rate, not the one scheduled since.
    ``ReduceLROnPlateau`` leaves no mark on the optimizer: the advice for a
    plain ``pyro.optim`` optimizer names the scheduler's place too.
    """
    name = type(optimizer).__name__
    if pyro_wrapped() and all(_holds_one_parameter(opt) for opt in optimizers):
        group = optimizer.param_groups[0]
        scheduled = "initial_lr" in group
        lr = real_value(group.get("initial_lr" if scheduled else "lr"))
        rate = "" if lr is None else f", lr={lr:g}"
        arguments = (
            f"bnn.decay_optim_args(model, loss_fn, weight_decay={decay:g}{rate})"
        )
        if scheduled:
            return (
                f'the pyro.optim scheduler\'s arguments {{"optimizer": '
                f'{_torch_name(optimizer)}, "optim_args": {arguments}, ...}} '
                "(decay_optim_args in place of the dict of the optimizer's "
                "arguments: add the others as keywords; the scheduler's own "
                "as they are), which gives them no decay"
            )
        return (
            f"pyro.optim.{name}({arguments}) in place of its dict of arguments "
            "(add the others as keywords), which gives them no decay; under a "
            "pyro.optim scheduler that records no starting rate "
            '(ReduceLROnPlateau), the same call as the scheduler\'s "optim_args", '
            "its own entries as they are"
        )
    return (
        f"{name}(bnn.decay_groups(model, loss_fn, weight_decay={decay:g}), "
        "...), whose second group holds them without decay"
    )


def _torch_name(optimizer: Optimizer) -> str:
    """The class of ``optimizer`` as code names it: ``torch.optim.AdamW``."""
    kind = type(optimizer)
    if getattr(torch.optim, kind.__name__, None) is kind:
        return f"torch.optim.{kind.__name__}"
    return f"{kind.__module__}.{kind.__qualname__}"


def _holds_one_parameter(optimizer: Optimizer) -> bool:
    groups = optimizer.param_groups
    return len(groups) == 1 and len(groups[0]["params"]) == 1


def _groups(optimizer: Optimizer) -> _Groups:
    """Whether each parameter group decays, and its size.

    A change means parameters that may be decayed and were not checked: a
    group added, one whose decay was switched on, parameters added. A decay
    schedule changing a positive ``weight_decay`` every step changes nothing.
    """
    return [
        (_decays(group.get("weight_decay")), len(group["params"]))
        for group in optimizer.param_groups
    ]


def _decay(value: object) -> float:
    """A group's ``weight_decay`` as a number; 0 for none (absent, not a number).

    Any real number torch applies: a Python or NumPy number
    (``np.float32(0.1)`` from a sweep's grid) or a one-element tensor (one
    that requires gradients too), read by its value.
    """
    number = real_value(value)
    return 0.0 if number is None else number


def _decays(value: object) -> bool:
    return _decay(value) > 0


def _decayed_scales(
    optimizer: Optimizer, scales: Mapping[int, str]
) -> list[tuple[int, str, float, bool]]:
    """The scale parameters ``optimizer`` decays: ``id``, name, decay, trainable.

    A frozen parameter (``requires_grad=False``) gets no gradient, and torch's
    optimizers skip it, decay included, until it is unfrozen.
    """
    found = []
    for group in optimizer.param_groups:
        decay = _decay(group.get("weight_decay"))
        if not decay > 0:
            continue
        for tensor in group["params"]:
            name = scales.get(id(tensor))
            if name is not None:
                found.append((id(tensor), name, decay, tensor.requires_grad))
    return found
