"""Modules whose call runs a training step, not a network: Lightning's DDP.

A plain torch module that holds Bayesian layers runs as one network
(:mod:`pyrolite_bnn._plain_roots`): its layers' activations stay folded
``(B * S, ...)`` until its call ends. Under Lightning's DDP strategy the
``LightningModule``'s call is not its network's: Lightning patches the
instance's ``forward`` to run ``training_step`` (or another step), calls the
DDP wrapper, and the step computes the loss inside that call. Such a call
opens no network frame, so that the step's own ``self(x)`` or ``self.net(x)``
is the network's call, as on one device.
"""

from __future__ import annotations

from torch import nn

__all__ = ["runs_a_redirected_step"]

_LIGHTNING_PACKAGES = ("lightning.", "pytorch_lightning.")


def runs_a_redirected_step(module: nn.Module) -> bool:
    """Whether ``module`` is a ``LightningModule`` whose ``forward`` is redirected.

    Lightning's forward redirection patches ``forward`` on the instance with
    a function that puts the original back (a bound method, on the instance)
    before the step runs, so the step's ``self(x)`` is the network's call.
    The check reads the instance's attributes and its classes' names;
    Lightning is not imported.

    Example:
        >>> import torch
        >>> runs_a_redirected_step(torch.nn.Sequential(torch.nn.Linear(2, 1)))
        False
    """
    patched = vars(module).get("forward")
    # Lightning puts the original back as a bound method on the instance.
    if patched is None or getattr(patched, "__func__", None) is type(module).forward:
        return False
    return any(
        kind.__name__ == "LightningModule"
        and kind.__module__.startswith(_LIGHTNING_PACKAGES)
        for kind in type(module).__mro__
    )
