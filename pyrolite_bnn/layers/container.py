"""Bayesian-aware containers.

``VISequential``, ``VIResidualConnection``, ``VIModuleList`` and
``VIModuleDict`` hold Bayesian layers and plain ``torch.nn`` modules alike;
Pyro site names follow the keys (``blocks.0.weight``). Each is registered with
its ``torch.nn`` counterpart (:class:`Residual` for the residual block), which
:func:`~pyrolite_bnn.to_deterministic` builds from the converted children.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import (
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    Sequence,
    ValuesView,
)
from typing import Any, TypeVar, overload

from torch import Tensor, nn

from pyrolite_bnn._network import network_children
from pyrolite_bnn.layers.functional import match_particles
from pyrolite_bnn.layers.registry import register
from pyrolite_bnn.module import NOT_NETWORK, VIModule

__all__ = [
    "Residual",
    "VIModuleDict",
    "VIModuleList",
    "VIResidualConnection",
    "VISequential",
]


_Container = TypeVar("_Container", bound=nn.Module)
# The modules of an OrderedDict given to VISequential (generic: an
# OrderedDict[str, VILinear] fits, as mappings of a fixed type are invariant).
_Layer = TypeVar("_Layer", bound=nn.Module)


def _view(
    container: _Container, named: Sequence[tuple[str | int, nn.Module]]
) -> _Container:
    """``container`` holding ``named`` modules as a slice of another container.

    The modules stay where they are: torch's slices share the modules, and
    here they keep their place in the network's Pyro module tree too
    (``PyroModule.add_module`` would move them, and Pyro refuses moving a
    module whose submodules have run, breaking the network), so a slice can be
    taken inside a ``forward`` (``self.features[:2](x)``).
    """
    for name, module in named:
        nn.Module.add_module(container, str(name), module)
    return container


def _adopt(container: VIModule, name: str, module: nn.Module) -> None:
    """``container.add_module(name, module)``, with a clear error from Pyro's check.

    Pyro refuses to move a Pyro module of the user's (the library's own move
    freely: their parameters are module-local) into a new place in a module
    tree once its submodules have run inside Pyro inference (their names
    would change).
    """
    try:
        container.add_module(name, module)
    except AssertionError as error:
        raise ValueError(
            f"cannot put {type(module).__name__} at '{name}' of "
            f"{type(container).__name__}: it has already run inside Pyro inference "
            "under another name; build the container before running the network "
            "(the container may have been left partly changed)"
        ) from error


class Residual(nn.Module):
    """``output = body(input) + input`` for plain ``torch.nn`` bodies.

    The deterministic counterpart of :class:`VIResidualConnection`.

    Args:
        *modules: the body, applied in order.

    Example:
        >>> import torch
        >>> block = Residual(torch.nn.Linear(3, 3), torch.nn.Tanh())
        >>> block(torch.randn(2, 3)).shape
        torch.Size([2, 3])
    """

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*modules)

    def forward(self, input: Tensor) -> Tensor:
        """Return ``body(input) + input``."""
        result: Tensor = self.body(input) + input
        return result


@register(
    nn.Sequential,
    build_torch=lambda layer, children: nn.Sequential(OrderedDict(children)),
    build_bayesian=lambda module, children: VISequential(OrderedDict(children)),
)
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

    def __init__(self, *args: nn.Module | OrderedDict[str, _Layer]) -> None:
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
        return network_children(self)

    @overload
    def __getitem__(self, index: int) -> nn.Module: ...

    @overload
    def __getitem__(self, index: slice) -> VISequential: ...

    def __getitem__(self, index: int | slice) -> nn.Module:
        layers = self._layers()
        if isinstance(index, slice):
            return _view(VISequential(), layers[index])
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

    def __add__(self, other: nn.Sequential | VISequential) -> VISequential:
        """The modules of both, in order (the modules themselves, not copies)."""
        return VISequential(*self, *_sequence_of(other, "+"))

    def __iadd__(self, other: nn.Sequential | VISequential) -> VISequential:
        return self.extend(_sequence_of(other, "+="))

    def __mul__(self, times: int) -> VISequential:
        """The modules ``times`` times over (the same modules, as ``nn.Sequential``).

        A Bayesian layer repeated shares its weights (one KL term).
        """
        return VISequential(*(list(self) * _repeats(times)))

    __rmul__ = __mul__

    def __imul__(self, times: int) -> VISequential:
        return self.extend(list(self) * (_repeats(times) - 1))

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


def _sequence_of(other: object, operator: str) -> list[nn.Module]:
    if not isinstance(other, nn.Sequential | VISequential):
        raise TypeError(
            f"VISequential {operator} takes a VISequential or nn.Sequential, got "
            f"{type(other).__name__}"
        )
    return list(other)


def _repeats(times: object) -> int:
    if isinstance(times, bool) or not isinstance(times, int):
        raise TypeError(f"a VISequential repeats an int number of times, got {times!r}")
    if times <= 0:
        raise ValueError(f"non-positive repetition {times} of a VISequential")
    return times


def _residual_from_torch(
    module: nn.Module, children: Mapping[str, nn.Module]
) -> VIModule:
    body = children["body"]
    assert isinstance(body, VISequential)
    return VIResidualConnection(*body)


@register(
    Residual,
    build_torch=lambda layer, children: Residual(*children.values()),
    build_bayesian=_residual_from_torch,
)
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


@register(
    nn.ModuleList,
    build_torch=lambda layer, children: nn.ModuleList(children.values()),
    build_bayesian=lambda module, children: VIModuleList(children.values()),
)
class VIModuleList(VIModule):
    """Bayesian-aware :class:`torch.nn.ModuleList`: modules held in a list.

    The same API as ``nn.ModuleList`` (indexing, slicing, ``append``,
    ``extend``, ``insert``, ``pop``, ``del``, ``+``, ``+=``); site names follow
    the indices (``blocks.0.weight``). Like ``nn.ModuleList`` it has no
    ``forward``: a network's ``forward`` iterates over it.

    Args:
        modules: an iterable of modules to add.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import pyrolite_bnn as bnn
        >>> class Net(bnn.VIModule):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.blocks = bnn.VIModuleList(
        ...             [bnn.VILinear(4, 4) for _ in range(3)])
        ...     def forward(self, x: torch.Tensor) -> torch.Tensor:
        ...         for block in self.blocks:
        ...             x = torch.tanh(block(x))
        ...         return x
        >>> net = Net()
        >>> net(torch.randn(5, 4), samples=2).shape
        torch.Size([2, 5, 4])
        >>> [v.site for v in net.random_variables()][:2]
        ['blocks.0.weight', 'blocks.0.bias']
    """

    def __init__(self, modules: Iterable[nn.Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _list(self) -> list[nn.Module]:
        return [module for _, module in network_children(self)]

    def _index(self, idx: int) -> int:
        size = len(self)
        if not -size <= idx < size:
            raise IndexError(f"index {idx} is out of range")
        return idx % size

    def _renumber(self, modules: list[nn.Module]) -> None:
        """Hold exactly ``modules``, under the keys ``0..n-1``."""
        old = self._list()
        for index in range(len(modules), len(old)):
            delattr(self, str(index))
        for index, module in enumerate(modules):
            if index >= len(old) or old[index] is not module:
                _adopt(self, str(index), module)

    @overload
    def __getitem__(self, idx: int) -> nn.Module: ...

    @overload
    def __getitem__(self, idx: slice) -> VIModuleList: ...

    def __getitem__(self, idx: int | slice) -> nn.Module:
        if isinstance(idx, slice):
            return _view(type(self)(), list(enumerate(self._list()[idx])))
        return self._list()[self._index(idx)]

    def __setitem__(self, idx: int, module: nn.Module) -> None:
        _adopt(self, str(self._index(idx)), module)

    def __delitem__(self, idx: int | slice) -> None:
        modules = self._list()
        if isinstance(idx, slice):
            del modules[idx]
        else:
            del modules[self._index(idx)]
        self._renumber(modules)

    def __len__(self) -> int:
        return len(network_children(self))

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self._list())

    def __iadd__(self, modules: Iterable[nn.Module]) -> VIModuleList:
        return self.extend(modules)

    def __add__(self, other: Iterable[nn.Module]) -> VIModuleList:
        return type(self)([*self, *other])

    def insert(self, index: int, module: nn.Module) -> None:
        """Insert ``module`` before ``index`` (as ``list.insert``)."""
        modules = self._list()
        modules.insert(index, module)
        self._renumber(modules)

    def append(self, module: nn.Module) -> VIModuleList:
        """Append ``module`` at the end."""
        _adopt(self, str(len(self)), module)
        return self

    def pop(self, key: int | slice) -> nn.Module:
        """Remove and return the module at ``key``."""
        module = self[key]
        del self[key]
        return module

    def extend(self, modules: Iterable[nn.Module]) -> VIModuleList:
        """Append the modules of an iterable at the end."""
        if not isinstance(modules, Iterable):
            raise TypeError(
                "VIModuleList.extend should be called with an iterable, but got "
                f"{type(modules).__name__}"
            )
        offset = len(self)
        for index, module in enumerate(modules):
            _adopt(self, str(offset + index), module)
        return self


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"VIModuleDict keys must be strings, got {type(key).__name__}")
    if key in NOT_NETWORK:
        raise ValueError(
            f"VIModuleDict key {key!r} is reserved (a VIModule keeps its priors, "
            "posteriors and assigned guide under it); choose another key"
        )
    return key


@register(
    nn.ModuleDict,
    build_torch=lambda layer, children: nn.ModuleDict(children),
    build_bayesian=lambda module, children: VIModuleDict(children),
)
class VIModuleDict(VIModule):
    """Bayesian-aware :class:`torch.nn.ModuleDict`: modules held by name.

    The same API as ``nn.ModuleDict`` (``[key]``, ``in``, ``len``, iteration
    over keys, ``keys``, ``items``, ``values``, ``update``, ``pop``,
    ``clear``), in insertion order; site names follow the keys
    (``heads.mean.weight``). The keys ``prior``, ``posterior`` and
    ``custom_guide`` are reserved. Like ``nn.ModuleDict`` it has no
    ``forward``.

    Args:
        modules: a mapping (or iterable of ``(key, module)`` pairs) to add.

    Example:
        >>> import torch
        >>> import pyrolite_bnn as bnn
        >>> class Net(bnn.VIModule):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.heads = bnn.VIModuleDict(
        ...             {"mean": bnn.VILinear(3, 1), "logits": bnn.VILinear(3, 4)})
        ...     def forward(self, x: torch.Tensor, head: str) -> torch.Tensor:
        ...         return self.heads[head](x)
        >>> net = Net()
        >>> net(torch.randn(5, 3), "logits", samples=2).shape
        torch.Size([2, 5, 4])
        >>> list(net.heads)
        ['mean', 'logits']
    """

    def __init__(
        self,
        modules: Mapping[str, nn.Module]
        | Iterable[tuple[str, nn.Module]]
        | None = None,
    ) -> None:
        super().__init__()
        if modules is not None:
            self.update(modules)

    def _dict(self) -> dict[str, nn.Module]:
        return dict(network_children(self))

    def __getitem__(self, key: str) -> nn.Module:
        modules = self._dict()
        if key not in modules:
            raise KeyError(key)
        return modules[key]

    def __setitem__(self, key: str, module: nn.Module) -> None:
        _adopt(self, _check_key(key), module)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        delattr(self, key)

    def __len__(self) -> int:
        return len(self._dict())

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __contains__(self, key: object) -> bool:
        return key in self._dict()

    def clear(self) -> None:
        """Remove every module."""
        for key in list(self):
            del self[key]

    def pop(self, key: str) -> nn.Module:
        """Remove and return the module at ``key``."""
        module = self[key]
        del self[key]
        return module

    def keys(self) -> KeysView[str]:
        """The keys, in insertion order."""
        return self._dict().keys()

    def items(self) -> ItemsView[str, nn.Module]:
        """``(key, module)`` pairs, in insertion order."""
        return self._dict().items()

    def values(self) -> ValuesView[nn.Module]:
        """The modules, in insertion order."""
        return self._dict().values()

    def update(
        self, modules: Mapping[str, nn.Module] | Iterable[tuple[str, nn.Module]]
    ) -> None:
        """Add or replace modules from a mapping or ``(key, module)`` pairs."""
        if isinstance(modules, (Mapping, VIModuleDict, nn.ModuleDict)):
            for key, module in modules.items():
                self[key] = module
            return
        if not isinstance(modules, Iterable):
            raise TypeError(
                "VIModuleDict.update should be called with an iterable of key/module "
                f"pairs, but got {type(modules).__name__}"
            )
        for index, pair in enumerate(modules):
            if not isinstance(pair, Iterable) or isinstance(pair, (str, bytes)):
                raise TypeError(
                    f"VIModuleDict update sequence element #{index} should be "
                    f"iterable; is {type(pair).__name__}"
                )
            items = list(pair)
            if len(items) != 2:
                raise ValueError(
                    f"VIModuleDict update sequence element #{index} has length "
                    f"{len(items)}; 2 is required"
                )
            key, module = items
            if not isinstance(module, nn.Module):
                raise TypeError(f"{type(module).__name__} is not a Module subclass")
            self[_check_key(key)] = module
