"""Export a trained Bayesian network as a plain, deterministic ``torch.nn`` module.

Every Bayesian layer becomes its ``torch.nn`` counterpart with the weights at
their posterior median (the mean, for the mean-field Normal): ``VILinear`` ->
``nn.Linear``, ``VIConv2d`` -> ``nn.Conv2d``, ``VISequential`` ->
``nn.Sequential``, ``VIResidualConnection`` -> :class:`Residual`. The result
needs neither Pyro nor this library's particle machinery.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from pyrolite_bnn._pyro_module import local_params
from pyrolite_bnn.layers.container import VIResidualConnection, VISequential
from pyrolite_bnn.layers.conv import VIConv1d, VIConv2d, VIConv3d, _VIConvNd
from pyrolite_bnn.layers.linear import VILinear
from pyrolite_bnn.module import NOT_NETWORK, VIModule

__all__ = ["DeterministicNetwork", "Residual", "to_deterministic"]

_CONV = {VIConv1d: nn.Conv1d, VIConv2d: nn.Conv2d, VIConv3d: nn.Conv3d}


class Residual(nn.Module):
    """``output = body(input) + input`` for plain ``torch.nn`` bodies.

    Args:
        *modules: the body, applied in order.
    """

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*modules)

    def forward(self, input: Tensor) -> Tensor:
        """Return ``body(input) + input``."""
        result: Tensor = self.body(input) + input
        return result


class DeterministicNetwork(nn.Module):
    """A custom ``VIModule`` network whose Bayesian layers were all made plain.

    Calls the network with one particle and drops the particle dimension, so it
    maps ``(B, ...)`` to ``(B, ...)`` like any ``torch.nn`` module.

    Args:
        network: the converted network (it declares no random variables).
    """

    def __init__(self, network: VIModule) -> None:
        super().__init__()
        self.network = network

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the network once, deterministically."""
        output = self.network(*args, samples=1, **kwargs)
        return output[0] if isinstance(output, Tensor) else output


def to_deterministic(model: VIModule) -> nn.Module:
    """A plain ``torch.nn`` copy of ``model``, weights at their posterior median.

    The medians come from ``model.guide.median()``, so this works with the
    default guide and with any autoguide that provides ``median()``. ``model``
    itself is not changed.

    Args:
        model: a trained network.

    Returns:
        ``nn.Linear``/``nn.Conv*``/``nn.Sequential`` modules where ``model`` is
        built from the library's layers and containers; for a custom
        ``VIModule`` subclass, a :class:`DeterministicNetwork` around a copy whose
        Bayesian layers were replaced.

    Raises:
        TypeError: if ``model`` has a Bayesian layer of a kind that has no plain
            counterpart here (write its conversion, or use
            ``bnn.predict(..., mode="mean")``).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> relu = torch.nn.ReLU()
        >>> net = bnn.VISequential(bnn.VILinear(3, 4), relu, bnn.VILinear(4, 2))
        >>> plain = bnn.to_deterministic(net)
        >>> plain
        Sequential(
          (0): Linear(in_features=3, out_features=4, bias=True)
          (1): ReLU()
          (2): Linear(in_features=4, out_features=2, bias=True)
        )
        >>> plain(torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """
    if not isinstance(model, VIModule):
        raise TypeError(
            f"to_deterministic needs a bnn.VIModule, got {type(model).__name__}"
        )
    clone = copy.deepcopy(model)
    with local_params(), torch.no_grad():
        medians = clone.guide.median()
    values = {
        (id(v.module), v.name): medians[v.site].detach()
        for v in clone.random_variables()
    }
    converted = _convert(clone, values)
    if isinstance(converted, VIModule):
        return DeterministicNetwork(converted)
    return converted


def _convert(module: nn.Module, values: dict[tuple[int, str], Tensor]) -> nn.Module:
    if isinstance(module, VILinear):
        plain: nn.Module = nn.Linear(
            module.in_features, module.out_features, "bias" in module.posterior
        )
        _load(plain, module, values)
        return plain
    if isinstance(module, _VIConvNd):
        conv_cls: Any = _CONV[type(module)]  # torch's stubs take ints, not tuples
        plain = conv_cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias="bias" in module.posterior,
            padding_mode=module.padding_mode,
        )
        _load(plain, module, values)
        return plain
    children = {
        name: _convert(child, values)
        for name, child in module.named_children()
        if not (isinstance(module, VIModule) and name in NOT_NETWORK)
    }
    if isinstance(module, VIResidualConnection):
        return Residual(*children.values())
    if isinstance(module, VISequential):
        return nn.Sequential(*children.values())
    if isinstance(module, VIModule):
        if module.__dict__.get("_declared"):
            raise TypeError(
                f"{type(module).__name__} declares random variables but has no plain "
                "counterpart; use bnn.predict(..., mode='mean') instead"
            )
        # ``module`` belongs to the private copy made by to_deterministic.
        module.__dict__.pop("_variables_cache", None)
        module.__dict__.pop("_default_guide", None)
        module._modules = dict(children)
        return module
    return module


def _load(
    plain: nn.Module, layer: VIModule, values: dict[tuple[int, str], Tensor]
) -> None:
    with torch.no_grad():
        for name in layer.posterior:
            target = getattr(plain, name)
            target.copy_(values[(id(layer), name)])
