"""Whether a derivative by a network's input is taken, not only by parameters.

``estimator="auto"`` runs flipout instead of local reparameterisation in a
call whose input is differentiated (saliency maps, gradient penalties,
physics-informed losses, forward-mode ``jvp``): a local draw's derivative by
its input is no weight draw's. For the gradient of a loss summed over the
examples by *parameters*, local reparameterisation is exact in expectation
(each example's loss depends on its own output's marginal only) and has the
lower variance, whether the parameters are the network's or those of a
trainable module that computed its input (a plain trunk under a Bayesian
head, ``head(trunk(x))``).

So an input that requires gradients is differentiated unless its autograd
graph reaches, besides nodes, only leaves that are ``nn.Parameter`` s (what
a user trains); any other leaf that requires gradients (``x.requires_grad_()``,
also behind a trunk; a tensor of Pyro's global parameter store) counts as
differentiated, and so does a graph with a module's full backward hook (its
``grad_input`` is a derivative by an activation) or an input that keeps its
gradient (``retain_grad()``) or has hooks. Tangents of forward mode and the
``torch.func`` transforms count as before
(:func:`~pyrolite_bnn._capture.carries_derivative`). A derivative taken later
by a computed input that none of these marks (``torch.autograd.grad(out,
features)`` with ``features = trunk(x)``) cannot be seen in the forward pass:
such a network needs ``estimator="flipout"``, as derivatives by an activation
inside a network do.

The walk visits each node of the input's graph once (a few microseconds per
node, proportional to the trunk's own backward pass) and runs only for inputs
that require gradients.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from pyrolite_bnn._capture import (
    carries_derivative,
    forward_ad_active,
    is_wrapped,
    transforms_active,
)

__all__ = ["takes_input_derivative"]

# Autograd nodes of a module's full backward hooks (``grad_input`` of the
# hooked module is a derivative by its input).
_HOOK_NODE = "BackwardHookFunctionBackward"


def takes_input_derivative(tensor: Tensor) -> bool:
    """Whether a derivative by ``tensor``, a network's input, may be taken.

    ``False`` for a tensor without gradients and for one computed only from
    ``nn.Parameter`` s (see the module's docstring); ``True`` otherwise,
    forward-mode tangents and ``torch.func`` wrappers included.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> trunk = nn.Linear(3, 4)
        >>> x = torch.randn(2, 3)
        >>> takes_input_derivative(x), takes_input_derivative(trunk(x))
        (False, False)
        >>> takes_input_derivative(trunk(x.requires_grad_()))
        True
    """
    if not carries_derivative(tensor):
        return False
    if (
        not tensor.requires_grad  # a tangent
        or forward_ad_active()
        or transforms_active()
        or is_wrapped(tensor)
    ):
        return True
    if tensor.retains_grad or getattr(tensor, "_backward_hooks", None):
        return True
    if tensor.grad_fn is None:
        return not isinstance(tensor, nn.Parameter)
    return not _parameters_only(tensor.grad_fn)


def _parameters_only(root: Any) -> bool:
    """Whether every leaf of the graph from ``root`` is an ``nn.Parameter``.

    ``False`` at the first other leaf or full-backward-hook node.
    """
    seen = {id(root): root}  # the nodes kept: a freed node's id is reused
    stack = [root]
    while stack:
        node = stack.pop()
        name = type(node).__name__
        if name == "AccumulateGrad":
            if not isinstance(node.variable, nn.Parameter):
                return False
            continue
        if name == _HOOK_NODE:
            return False
        for child, _ in node.next_functions:
            if child is not None and id(child) not in seen:
                seen[id(child)] = child
                stack.append(child)
    return True
