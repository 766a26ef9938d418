"""Notice an optimizer that steps the torch model a network was converted from.

:func:`~pyrolite_bnn.convert` returns a new model and leaves the torch model as
it was (bayesian-torch's ``dnn_to_bnn`` and torch_blue's
``convert_to_vimodule`` work in place). An optimizer made for the torch model
before converting, or parameter groups taken from it, then steps parameters
that the converted network does not use: a hand-written loop trains nothing
(or the head only) and the loss's watch of unchanged parameters spoke after 20
steps, of a guide. ``convert`` remembers the parameters of the model it
copied (:class:`~pyrolite_bnn._owned_tensors.OwnedTensors`: held while the
model holds them, then as long as an optimizer keeps them, and no weak
reference makes a conversion of the model that swaps its tensors fail). Over the
network's first loss calls, the loss looks at the optimizers that step after
its first call: if one holds parameters of the torch model while some of the
network's trainable parameters are in none of them, it warns, once per
network. An optimizer of the torch model stepping beside a complete one of
the network is left alone. :func:`~pyrolite_bnn.fit`, which sees its
optimizer before the first step, says it at once
(:func:`steps_convert_source`), and the loss's watch then stays quiet.
"""

from __future__ import annotations

import weakref

from torch import nn
from torch.optim import Optimizer

from pyrolite_bnn._change_watch import (
    count_steps,
    holds_any,
    step_counts,
    stepped_optimizers,
)
from pyrolite_bnn._owned_tensors import OwnedTensors
from pyrolite_bnn._warnings import warn_at_caller

__all__ = [
    "WATCHED_CALLS",
    "SourceOptimizerWatch",
    "converted",
    "remember_source",
    "steps_convert_source",
]

# The parameters of the torch model each converted network was copied from.
_SOURCES: weakref.WeakKeyDictionary[nn.Module, OwnedTensors[int]]
_SOURCES = weakref.WeakKeyDictionary()
# Networks whose source-stepping optimizer was reported before any loss call.
_REPORTED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def remember_source(network: nn.Module, source: nn.Module) -> None:
    """Note that ``network`` is a converted copy of ``source`` (see the module).

    Example:
        >>> from torch import nn
        >>> plain = nn.Linear(2, 1)
        >>> remember_source(nn.Linear(2, 1), plain)
    """
    _SOURCES[network] = OwnedTensors(source, dict(enumerate(source.parameters())))


def converted(network: nn.Module) -> bool:
    """Whether ``network`` is one :func:`~pyrolite_bnn.convert` returned here.

    Known in this process only (a network loaded from a file is not).

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(2, 1)
        >>> converted(net)
        False
        >>> remember_source(net, nn.Linear(2, 1))
        >>> converted(net)
        True
    """
    return network in _SOURCES


def steps_convert_source(network: nn.Module, optimizer: Optimizer) -> bool:
    """Whether ``optimizer`` holds parameters of the model ``network`` copied.

    A ``True`` answer is taken as reported (the caller warns): the loss's
    :class:`SourceOptimizerWatch` does not say it again for ``network``.

    Args:
        network: a network :func:`~pyrolite_bnn.convert` returned (any other
            module: ``False``).
        optimizer: the optimizer to look at.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> plain, copy = nn.Linear(2, 1), nn.Linear(2, 1)
        >>> remember_source(copy, plain)
        >>> steps_convert_source(copy, torch.optim.SGD(plain.parameters()))
        True
        >>> steps_convert_source(copy, torch.optim.SGD(copy.parameters()))
        False
    """
    sources = _SOURCES.get(network)
    if sources is None:
        return False
    if not holds_any(optimizer, {id(p) for p in sources.alive().values()}):
        return False
    _REPORTED.add(network)
    return True


#: Loss calls of a network over which the optimizers that step are looked at.
WATCHED_CALLS = 64


class SourceOptimizerWatch:
    """Warns once per network trained by optimizers of the torch model it copied.

    :meth:`check` is called on the loss's training evaluations. For a network
    :func:`remember_source` knows, the first call notes every optimizer's
    step count; later calls, until the question is settled or for
    :data:`WATCHED_CALLS` calls, look at the optimizers that stepped since
    (only when some optimizer stepped: a counter comparison otherwise).
    """

    def __init__(self) -> None:
        count_steps()
        # Per network: the step counts at its first call, and its calls.
        self.watched: weakref.WeakKeyDictionary[
            nn.Module, tuple[int, dict[int, int], int]
        ] = weakref.WeakKeyDictionary()
        self.settled: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        self.warned: weakref.WeakSet[nn.Module] = weakref.WeakSet()

    def __getstate__(self) -> dict[str, object]:
        """Nothing to keep: a copy (``deepcopy``, pickling) checks afresh."""
        return {}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__()  # type: ignore[misc]

    def warned_about(self, network: nn.Module | None) -> bool:
        """Whether :meth:`check` (or ``fit``, before it) warned about ``network``."""
        return network is not None and (network in self.warned or network in _REPORTED)

    def check(self, network: nn.Module | None) -> None:
        """Warn (once) if optimizers step ``network``'s source instead of it.

        Args:
            network: the network whose loss is evaluated (``None``: unknown).
        """
        if network is None or network in self.settled or network in _REPORTED:
            return
        sources = _SOURCES.get(network)
        if sources is None:
            return
        total, counts = step_counts()
        first = self.watched.get(network)
        if first is None:
            self.watched[network] = (total, counts, 0)
            return
        total_then, counts_then, calls = first
        if calls >= WATCHED_CALLS:
            self.settled.add(network)
            return
        self.watched[network] = (total_then, counts_then, calls + 1)
        if total == total_then:
            return  # no optimizer stepped since the first call
        stepping = [
            opt
            for opt in stepped_optimizers()
            if counts.get(id(opt), 0) > counts_then.get(id(opt), 0)
        ]
        held = {
            id(p) for opt in stepping for g in opt.param_groups for p in g["params"]
        }
        missing = [
            name
            for name, parameter in network.named_parameters()
            if parameter.requires_grad and id(parameter) not in held
        ]
        if not missing:  # the network's own optimizers step all of it
            self.settled.add(network)
            return
        source_ids = {id(p) for p in sources.alive().values()}
        stale = [opt for opt in stepping if holds_any(opt, source_ids)]
        if not stale:
            return
        self.settled.add(network)
        self.warned.add(network)
        warn_at_caller(
            f"{type(stale[0]).__name__} steps parameters of the torch model that "
            f"bnn.convert copied into this network, and {len(missing)} of the "
            f"network's trainable parameters (e.g. {missing[0]!r}) are in no "
            "optimizer that steps: bnn.convert returns a new model and leaves "
            "the torch model as it was, so those steps do not train the network. "
            "Create the optimizer (and its parameter groups) from the converted "
            "network, after converting: torch.optim.Adam(net.parameters(), ...)"
        )
