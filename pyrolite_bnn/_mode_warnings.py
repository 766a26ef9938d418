"""Warnings for networks run as a prediction while left in training mode.

A freshly built module trains, and ``bnn.convert`` keeps the torch model's
mode: a network then drops activations at random and normalises its inputs
by their own statistics, moving a batch norm's running statistics.
:func:`~pyrolite_bnn.predict` and the calls of
:func:`~pyrolite_bnn.draw_networks` use these checks to say so.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from pyrolite_bnn._network import network_modules, uses_batch_statistics
from pyrolite_bnn._warnings import warn_at_caller

__all__ = ["drops_activations", "warn_batch_statistics", "warn_dropout"]


def warn_batch_statistics(model: nn.Module, who: str, effect: str) -> bool:
    """Warn when a batch norm of ``model`` would take the inputs' statistics.

    Args:
        model: the network.
        who: the entry point, first in the message (``"predict"``).
        effect: what that does to its results (``"a prediction depends on the
            inputs predicted with it"``).

    Returns:
        Whether it warned.

    Example:
        >>> import warnings
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_batch_statistics(net, "predict", "it depends on its batch")
        True
        >>> str(caught[0].message).split(" normalises")[0]
        'predict: batch norm (1)'
        >>> warn_batch_statistics(net.eval(), "predict", "")
        False
    """
    coupling = [
        (path or "<root>", module.training and module.track_running_stats)
        for path, module in network_modules(model)
        if isinstance(module, _BatchNorm) and uses_batch_statistics(module)
    ]
    if not coupling:
        return False
    names = ", ".join(path for path, _ in coupling[:3])
    training = any(updates for _, updates in coupling)
    warn_at_caller(
        f"{who}: batch norm ({names}{', ...' if len(coupling) > 3 else ''}) "
        f"normalises the inputs by their own statistics, so {effect}"
        + (
            " and moves the running statistics: it is in training mode; call "
            "model.eval() first"
            if training
            else ": it keeps no running statistics (track_running_stats=False)"
        )
    )
    return True


def warn_dropout(model: nn.Module, who: str, effect: str) -> bool:
    """Warn when a dropout of ``model`` is in training mode.

    Args:
        model: the network.
        who: the entry point, first in the message (``"predict"``).
        effect: what dropping activations at random does to its results.

    Returns:
        Whether it warned.

    Example:
        >>> import warnings
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.1))
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_dropout(net, "predict", "results are random")
        True
        >>> str(caught[0].message).split(" is in")[0]
        'predict: dropout (1)'
    """
    active = [
        path or "<root>"
        for path, module in network_modules(model)
        if drops_activations(module)
    ]
    if not active:
        return False
    names = ", ".join(active[:3]) + (", ..." if len(active) > 3 else "")
    warn_at_caller(
        f"{who}: dropout ({names}) is in training mode and drops activations "
        f"at random: {effect}; call model.eval() first (it keeps the weights "
        "random: eval() switches off dropout and batch statistics only)"
    )
    return True


def drops_activations(module: nn.Module) -> bool:
    """Whether ``module`` drops activations now (a rate above 0, training mode).

    Dropout modules, and the ``dropout`` rate of attention and stacked
    recurrent layers (torch's and the library's).

    Example:
        >>> drops_activations(nn.Dropout(0.5)), drops_activations(nn.Dropout(0.0))
        (True, False)
        >>> drops_activations(nn.LSTM(2, 3, num_layers=2, dropout=0.2).eval())
        False
    """
    if not module.training:
        return False
    if isinstance(module, _DropoutNd):
        return module.p > 0
    rate = vars(module).get("dropout")  # a submodule of that name is no rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        return False
    return rate > 0 and vars(module).get("num_layers", 2) > 1
