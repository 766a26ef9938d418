"""Notice Bayesian layers "frozen" by running them without gradients.

torch's ways of freezing part of a model inside ``forward`` (``with
torch.no_grad(): f = self.backbone(x)``) leave its parameters without a
gradient, so an optimizer over all of them leaves that part as it is. A
Bayesian layer's posterior is also in the KL term, which the loss takes with
gradients: the optimizer then moves it by the KL alone, towards the prior, with
nothing from the data to hold it (a MOPED backbone's posterior standard
deviations went from 0.04 to 1.0 in 1000 Adam steps, and its fit with them).
``requires_grad_(False)`` on the frozen part freezes its posterior, KL term
included. The loss warns once per network whose layers with trainable
posterior parameters read their weights only without gradients in a call
made with them (:meth:`~pyrolite_bnn._draws.LazyDraws.read_only_without_gradients`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from torch import Tensor

from pyrolite_bnn._autograd_graph import reaches_node
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.variables import RandomVariable

__all__ = ["NoGradLayerWatch", "layer_path"]

# Layers named in the warning before "..."
_NAMED = 3


def layer_path(variable: RandomVariable) -> str:
    """The module path of ``variable``'s layer (``"<root>"`` for the network).

    Example:
        >>> import pyrolite_bnn as bnn
        >>> net = bnn.VISequential(bnn.VILinear(3, 2))
        >>> [layer_path(v) for v in net.random_variables()]
        ['0', '0']
    """
    path = variable.site[: -len(variable.name) - 1]
    return path or "<root>"


def _checkpointed(output: Tensor) -> bool:
    """Whether ``output``'s graph holds a reentrant ``torch.utils.checkpoint``."""
    return reaches_node(
        output.grad_fn,
        lambda node: type(node).__name__ == "CheckpointFunctionBackward",
    )


class NoGradLayerWatch:
    """Warns once per network whose trainable Bayesian layers ran under no_grad.

    :meth:`check` is called on the loss's training evaluations with the
    variables the call handed out only without gradients (usually none, so
    it costs a length test). Layers run so inside
    ``torch.utils.checkpoint(..., use_reentrant=True)`` are left to the
    backward pass, which refuses a checkpoint inside a network.
    """

    def __init__(self) -> None:
        self.warned: set[Hashable] = set()

    def check(
        self, key: Hashable, variables: Sequence[RandomVariable], output: Tensor
    ) -> None:
        """Warn (once per ``key``) if a variable's posterior has trainable parameters.

        Args:
            key: identifies the network's guide cheaply.
            variables: the variables its call read only without gradients.
            output: the loss's input, computed from the call's output.
        """
        if not variables or key in self.warned:
            return
        trainable = [
            variable
            for variable in variables
            if any(p.requires_grad for p in variable.layer_posterior.parameters())
        ]
        if not trainable:  # frozen with requires_grad_(False) as well: fine
            return
        self.warned.add(key)  # looked at once, warned or not
        if _checkpointed(output):
            # torch.utils.checkpoint(..., use_reentrant=True) around layers
            # runs them so; the backward pass refuses it with its remedy.
            return
        layers = list(dict.fromkeys(layer_path(v) for v in trainable))
        more = ", ..." if len(layers) > _NAMED else ""
        warn_at_caller(
            f"Bayesian layer(s) {', '.join(layers[:_NAMED])}{more} ran without "
            "gradients (under torch.no_grad() inside the network's forward) in a "
            "call whose loss takes them, but their posterior parameters still "
            "require gradients: the data term gives them none, the KL term "
            "does, so an optimizer moves their posteriors towards the prior "
            "alone (a frozen backbone would drift away from its trained "
            "weights). To freeze a Bayesian layer, call requires_grad_(False) "
            "on it (e.g. model.backbone.requires_grad_(False)); .detach() of "
            "its output freezes it no more than no_grad does"
        )
