"""Containers: ``VISequential`` and ``VIResidualConnection``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any, overload

from torch import Tensor, nn

from pyrolite_bnn.layers.functional import match_particles
from pyrolite_bnn.module import NOT_NETWORK, VIModule

__all__ = ["VIResidualConnection", "VISequential"]


class VISequential(VIModule):
    """Bayesian-aware :class:`torch.nn.Sequential`: modules applied in order.

    Holds any mix of ``VIModule`` layers and plain ``torch.nn`` modules; Pyro
    site names follow the indices (``body.0.weight``). A plain
    ``nn.Sequential`` works the same; this one also takes ``samples=`` when
    called, and holds an assignable guide (``seq.guide = ...``).

    Args:
        *args: modules, or one ``OrderedDict`` of named modules.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import pyrolite_bnn as bnn
        >>> seq = bnn.VISequential(bnn.VILinear(2, 4), nn.ReLU(), bnn.VILinear(4, 1))
        >>> len(seq), type(seq[1]).__name__
        (3, 'ReLU')
        >>> seq(torch.randn(6, 2), samples=3).shape
        torch.Size([3, 6, 1])
    """

    def __init__(self, *args: nn.Module | OrderedDict[str, nn.Module]) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for name, child in args[0].items():
                self.add_module(name, child)
        else:
            for index, module in enumerate(args):
                if not isinstance(module, nn.Module):
                    raise TypeError(
                        f"VISequential takes torch modules, got {type(module).__name__}"
                    )
                self.add_module(str(index), module)

    def _layers(self) -> list[tuple[str, nn.Module]]:
        """Child modules of the sequence (an assigned guide is not one)."""
        return [
            (name, module)
            for name, module in self._modules.items()
            if module is not None and name not in NOT_NETWORK
        ]

    @overload
    def __getitem__(self, index: int) -> nn.Module: ...

    @overload
    def __getitem__(self, index: slice) -> VISequential: ...

    def __getitem__(self, index: int | slice) -> nn.Module:
        layers = self._layers()
        if isinstance(index, slice):
            return VISequential(OrderedDict(layers[index]))
        return layers[index][1]

    def __len__(self) -> int:
        return len(self._layers())

    def __iter__(self) -> Iterator[nn.Module]:
        return iter([module for _, module in self._layers()])

    def append(self, module: nn.Module) -> VISequential:
        """Append a module at the end."""
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[nn.Module]) -> VISequential:
        """Append several modules at the end."""
        for module in modules:
            self.append(module)
        return self

    def insert(self, index: int, module: nn.Module) -> VISequential:
        """Insert ``module`` before position ``index`` (as ``list.insert``)."""
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"VISequential takes torch modules, got {type(module).__name__}"
            )
        layers = [m for _, m in self._layers()]
        size = len(layers)
        if not -size <= index <= size:
            raise IndexError(f"index {index} is out of range for {size} modules")
        layers.insert(index if index >= 0 else size + index, module)
        self._renumber(layers)
        return self

    def pop(self, index: int = -1) -> nn.Module:
        """Remove and return the module at ``index``."""
        layer = self[index]
        del self[index]
        return layer

    def __setitem__(self, index: int, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"VISequential takes torch modules, got {type(module).__name__}"
            )
        name = self._layers()[index][0]
        setattr(self, name, module)

    def __delitem__(self, index: int | slice) -> None:
        layers = self._layers()
        doomed = {
            name
            for name, _ in (
                layers[index] if isinstance(index, slice) else [layers[index]]
            )
        }
        self._renumber([m for name, m in layers if name not in doomed])

    def _renumber(self, layers: list[nn.Module]) -> None:
        """Hold exactly ``layers``, named ``0..n-1`` (site names follow)."""
        for name, _ in self._layers():
            delattr(self, name)
        for index, module in enumerate(layers):
            self.add_module(str(index), module)

    def forward(self, input: Any) -> Any:
        """Apply the modules in order."""
        for module in self:
            input = module(input)
        return input


class VIResidualConnection(VISequential):
    """Residual block: ``output = body(input) + input``.

    ``body`` is the sequence of the given modules. The shortcut is broadcast over
    particles when the body is Bayesian and the input is still shared.

    Args:
        *args: modules of the body (as :class:`VISequential`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import pyrolite_bnn as bnn
        >>> block = bnn.VIResidualConnection(bnn.VILinear(4, 4), nn.Tanh())
        >>> block(torch.randn(3, 4), samples=2).shape
        torch.Size([2, 3, 4])
    """

    def forward(self, input: Any) -> Any:
        """Return ``body(input) + input``."""
        branch = super().forward(input)
        if not isinstance(branch, Tensor) or not isinstance(input, Tensor):
            raise TypeError("VIResidualConnection needs a tensor input and output")
        if branch.shape[1:] != input.shape[1:]:
            raise ValueError(
                f"residual body changed the shape from {tuple(input.shape[1:])} to "
                f"{tuple(branch.shape[1:])}; input and output must match"
            )
        return branch + match_particles(input, branch)
