"""The training mode of each module of a model, recorded and put back.

``model.train()`` sets every sub-module to training mode and ``model.eval()``
every one to evaluation mode. A sub-module the user put in ``eval()`` on its
own (a frozen batch norm while fine-tuning the rest) would not survive either
call. :func:`~pyrolite_bnn.training.fit` records the modes when it starts and
puts them back where it changed them (after each validation pass, and at the
end).
"""

from __future__ import annotations

from torch import nn

__all__ = ["ModuleModes"]


class ModuleModes:
    """Every module's ``training`` flag of ``model`` at construction.

    Args:
        model: the root module; its sub-modules (``model.modules()``) are
            recorded with it.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> _ = net[1].eval()  # frozen statistics
        >>> modes = ModuleModes(net)
        >>> net.eval().training, net[1].training
        (False, False)
        >>> modes.restore()
        >>> net.training, net[0].training, net[1].training
        (True, True, False)
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        # Root first (torch's pre-order): restoring in this order, a module's
        # train(mode), which sets its whole subtree, comes before its children's.
        self.modes = [(module, module.training) for module in model.modules()]

    @property
    def training(self) -> bool:
        """The root's recorded mode."""
        return self.modes[0][1]

    def restore(self) -> None:
        """Put every recorded module back in its recorded mode.

        Each module whose mode differs gets ``module.train(mode)`` (so that an
        overridden ``train`` runs), root first. A module added since the
        record changes only with an ancestor's ``train(mode)``.
        """
        for module, mode in self.modes:
            if module.training != mode:
                module.train(mode)
