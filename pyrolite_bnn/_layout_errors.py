"""Name the Bayesian layer in an error about its input.

A :class:`~pyrolite_bnn._particles.LayoutError` (a leading size no batch
explains, an ambiguous one, rows taken from some particles) is raised in a
layer's arithmetic, which knows neither the layer nor the network. The layer's
call names it: its path in the running network (its class where the network
does not hold it) and, in a network :func:`~pyrolite_bnn.convert` made, the
``exclude=`` that keeps that layer deterministic. A layer's own check of its
input (an embedding's index range) names the layer the same way, with
:func:`running_layer_name`: of several layers of one kind, the message says
which.
"""

from __future__ import annotations

from torch import nn

from pyrolite_bnn._particles import LayoutError, current
from pyrolite_bnn._source_watch import converted

__all__ = ["layer_name", "naming_layer", "running_layer_name"]


def layer_name(layer: nn.Module, root: nn.Module | None) -> str:
    """``layer``'s class and its path in ``root`` (the class alone where unknown).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> net = bnn.VISequential(bnn.VILinear(2, 2))
        >>> layer_name(net[0], net), layer_name(net[0], None)
        ("VILinear '0'", 'VILinear')
    """
    path, _ = _paths(layer, root)
    return type(layer).__name__ + ("" if not path else f" {path!r}")


def running_layer_name(layer: nn.Module) -> str:
    """:func:`layer_name` of ``layer`` in the network whose call is running."""
    state = current()
    return layer_name(layer, None if state is None else state.root)


def naming_layer(
    error: LayoutError, layer: nn.Module, root: nn.Module | None
) -> LayoutError | None:
    """``error`` with ``layer`` named, or ``None`` if a layer inside it was named.

    Args:
        error: the error the layer's call raised.
        layer: the Bayesian layer whose call raised it.
        root: the module of the outermost call (``None``: unknown).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> net = bnn.VISequential(bnn.VILinear(2, 2))
        >>> named = naming_layer(LayoutError("input has leading size 7"), net[0], net)
        >>> str(named)
        "VILinear '0': input has leading size 7"
        >>> naming_layer(named, net, None) is None
        True
    """
    if error.layer is not None:
        return None
    name = layer_name(layer, root)
    _, exclude = _paths(layer, root)
    text = f"{name}: {error}"
    if exclude:
        text += (
            ". This network was made by bnn.convert: bnn.convert(model, "
            f"exclude=[{exclude!r}]) keeps that layer deterministic (torch's "
            "layer, the same for every particle)"
        )
    named = type(error)(text)
    named.layer = name
    return named


def _paths(layer: nn.Module, root: nn.Module | None) -> tuple[str, str]:
    """``layer``'s path in ``root``, and in the converted network holding it.

    Empty strings where unknown (no root, a layer the root does not hold, no
    network made by ``bnn.convert`` around it).
    """
    if root is None:
        return "", ""
    modules = list(root.named_modules())
    path = next((name for name, module in modules if module is layer), "")
    if not path:
        return "", ""
    for name, module in modules:
        if converted(module) and (not name or path.startswith(name + ".")):
            return path, path[len(name) + 1 :] if name else path
    return path, ""
