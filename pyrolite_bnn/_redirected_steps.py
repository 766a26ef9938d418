"""Module calls that run a training step, not a network: Lightning's DDP.

A plain torch module that holds Bayesian layers runs as one network
(:mod:`pyrolite_bnn._plain_roots`): its layers' activations stay folded
``(B * S, ...)`` until its call ends. Under Lightning's DDP strategy (and
Lightning Fabric's ``mark_forward_method``) a module's call is not its
network's: Lightning patches the instance's ``forward`` with a function that
runs ``training_step`` (or another step method), calls the DDP wrapper, and
the step computes the loss inside that call. Such a call opens no network
frame, so that the step's own ``self(x)`` or ``self.net(x)`` is the network's
call, as on one device.
"""

from __future__ import annotations

from torch import nn

__all__ = ["runs_a_redirected_step"]

# Where Lightning's forward redirection is defined (lightning.pytorch's
# strategies, lightning.fabric's wrappers, and their standalone packages).
_LIGHTNING_PACKAGES = ("lightning.", "pytorch_lightning.", "lightning_fabric.")


def runs_a_redirected_step(module: nn.Module) -> bool:
    """Whether ``module``'s ``forward`` is Lightning's redirection to a step.

    Lightning's redirection patches ``forward`` on the instance with its own
    function ``wrapped_forward``, which puts the original back (a bound
    method, on the instance) before the step runs, so the step's ``self(x)``
    is the network's call. A ``forward`` a module sets on itself (``self.forward
    = self.forward_deep``) is no redirection. The check reads the instance's
    attributes; Lightning is not imported.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 1))
        >>> net.forward = net.forward  # set on the instance: still the network
        >>> runs_a_redirected_step(net)
        False
    """
    patched = vars(module).get("forward")
    if patched is None or hasattr(patched, "__self__"):  # none, or a bound method
        return False
    return getattr(patched, "__name__", "") == "wrapped_forward" and getattr(
        patched, "__module__", ""
    ).startswith(_LIGHTNING_PACKAGES)
