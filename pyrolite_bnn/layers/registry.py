"""Registry of the Bayesian layers and their ``torch.nn`` counterparts.

Every Bayesian layer and container registers itself with the ``torch.nn`` class
it mirrors (``@register(nn.Linear, cases=...)`` on the class). An entry knows:

- the constructor arguments shared by both classes (read from either layer by
  the names of the ``torch.nn`` signature),
- how to build the Bayesian layer from a ``torch.nn`` one (same arguments,
  posterior means = its weights) and the ``torch.nn`` layer from posterior
  means (:func:`~pyrolite_bnn.to_deterministic`), with hooks for layers whose
  random variables are not the torch parameters one to one,
- the option sets of the layer contract suite (``tests/layers/test_contract.py``).

A new layer only adds its own ``@register``: nothing else looks at its class.
That holds for a class of your own too (a library's layer such as
transformers' ``Conv1D``, or yours): :func:`register` a Bayesian twin for it
and :func:`~pyrolite_bnn.convert`, :func:`~pyrolite_bnn.to_deterministic` and
``predict(..., mode="mean")`` handle it like the library's layers
(:func:`unregister` takes it back; the how-to guides' "Teach convert a layer
of your own" has a complete example).

Example:
    >>> from torch import nn
    >>> import pyrolite_bnn as bnn
    >>> from pyrolite_bnn.layers import registry
    >>> registry.for_torch(nn.Conv2d).bayesian_cls.__name__
    'VIConv2d'
    >>> registry.for_bayesian(bnn.VILinear(3, 2)).torch_cls.__name__
    'Linear'
    >>> layer = registry.for_torch(nn.Linear).to_bayesian(nn.Linear(3, 2), prior=None)
    >>> layer
    VILinear(in_features=3, out_features=2, bias=True)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from pyrolite_bnn._module_hooks import carry_forward_hooks
from pyrolite_bnn.module import NOT_NETWORK, VIModule

__all__ = [
    "LayerCase",
    "LayerEntry",
    "carry_module_state",
    "copy_training_modes",
    "entries",
    "for_bayesian",
    "for_torch",
    "has_weight",
    "register",
    "unregister",
]

# Hooks of an entry (see LayerEntry).
WeightsToMeans = Callable[[nn.Module, VIModule], dict[str, Tensor]]
MeansToWeights = Callable[[VIModule, Mapping[str, Tensor]], dict[str, Tensor]]
BuildTorch = Callable[[VIModule, Mapping[str, nn.Module]], nn.Module]
BuildBayesian = Callable[[nn.Module, Mapping[str, nn.Module]], VIModule]
ReadArguments = Callable[[nn.Module], dict[str, Any]]

_Layer = TypeVar("_Layer", bound=VIModule)

# Torch signature parameters that are no constructor arguments of both classes.
_NOT_SHARED = frozenset({"self", "device", "dtype"})


@dataclass(frozen=True)
class LayerCase:
    """One option set of a registered layer for the contract suite.

    Attributes:
        args: positional constructor arguments (the same for both classes).
        kwargs: keyword constructor arguments.
        input_shape: shape of the input, in the layer's layout (batch first,
            or sequence first for ``batch_first=False`` sequence layers).
        index_range: for layers that take integer indices, their upper bound
            (exclusive); ``None`` for real-valued inputs.
        forward_kwargs: keyword arguments of ``forward`` (both classes).
        copies: how many times the input is passed positionally (3 for
            self-attention's query, key and value; 2 for a decoder's target and
            memory or a Transformer's source and target).
    """

    args: tuple[Any, ...]
    input_shape: tuple[int, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    index_range: int | None = None
    forward_kwargs: Mapping[str, Any] = field(default_factory=dict)
    copies: int = 1

    def make_input(self, dtype: torch.dtype | None = None) -> Tensor:
        """A random input of the case (indices, or standard Normal values)."""
        if self.index_range is not None:
            return torch.randint(0, self.index_range, self.input_shape)
        return torch.randn(self.input_shape, dtype=dtype)

    def __str__(self) -> str:
        arguments = [repr(a) for a in self.args]
        arguments += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        arguments += [] if self.copies == 1 else [f"copies={self.copies}"]
        call = f"({', '.join(arguments)})"
        if self.forward_kwargs:
            call += f"{dict(self.forward_kwargs)}"
        return call


@dataclass(frozen=True)
class LayerEntry:
    """A Bayesian class, its ``torch.nn`` counterpart, and how to convert.

    Attributes:
        torch_cls: the ``torch.nn`` class.
        bayesian_cls: the Bayesian class (same constructor arguments, then
            keyword-only Bayesian options).
        cases: option sets of the contract suite.
        weights_to_means: ``(torch_layer, layer) -> {variable: mean}``; default:
            the torch parameter of each random variable's name.
        means_to_weights: ``(layer, means) -> {parameter: value}``; default: the
            means themselves.
        build_torch: for containers, ``(layer, converted_children) ->
            torch_module``; ``None`` for weight layers.
        build_bayesian: for containers, ``(torch_module, converted_children) ->
            layer``; ``None`` for weight layers.
        read_arguments: ``module -> {argument: value}`` for either class, where
            the arguments are not attributes of both (Transformer layers);
            default: see :meth:`arguments`.
    """

    torch_cls: type[nn.Module]
    bayesian_cls: type[VIModule]
    cases: tuple[LayerCase, ...] = ()
    weights_to_means: WeightsToMeans | None = None
    means_to_weights: MeansToWeights | None = None
    build_torch: BuildTorch | None = None
    build_bayesian: BuildBayesian | None = None
    read_arguments: ReadArguments | None = None

    def arguments(self, module: nn.Module) -> dict[str, Any]:
        """Constructor arguments of ``module`` (torch or Bayesian), by name.

        They are the ``torch.nn`` signature's (without ``device``, ``dtype`` and
        private ``_``-names; the Bayesian class's positional ones where torch
        hides its own behind ``*args``, as ``nn.LSTM``), read as attributes of
        ``module``; ``bias`` is whether the module has one. A
        ``read_arguments`` hook replaces this.
        """
        if self.read_arguments is not None:
            return self.read_arguments(module)
        found: dict[str, Any] = {}
        for name in _shared_arguments(self.torch_cls, self.bayesian_cls):
            if name == "bias":
                found[name] = _bias(module)
            elif hasattr(module, name):
                found[name] = getattr(module, name)
            else:
                raise AttributeError(
                    f"{type(module).__name__} has no attribute {name!r}: the layers "
                    f"of a registered pair keep each constructor argument of "
                    f"{self.torch_cls.__name__} as an attribute of that name, or "
                    "the entry reads them with read_arguments="
                )
        return found

    def to_bayesian(
        self,
        module: nn.Module,
        children: Mapping[str, nn.Module] | None = None,
        **options: Any,
    ) -> VIModule:
        """The Bayesian layer of ``module``, its posterior means at the weights.

        Bayesian sublayers the new layer builds itself (``out_proj`` of an
        attention layer, the linear layers of a Transformer layer) take the
        weights of ``module``'s children of the same names, and plain children
        (norms) their state.

        Args:
            module: a ``torch.nn`` layer of :attr:`torch_cls`.
            children: for containers, the already converted children.
            **options: Bayesian keyword options of the new layer (``prior=``,
                ``variational=``, ``estimator=``, ``device=``, ``dtype=``);
                device and dtype default to those of the weights.
        """
        if self.build_bayesian is not None:
            built = self.build_bayesian(module, children or {})
            carry_module_state(module, built)
            return built
        reference = next(module.parameters(), None)
        if reference is not None:
            options.setdefault("device", reference.device)
            options.setdefault("dtype", reference.dtype)
        layer = _construct(self.bayesian_cls, self.arguments(module), options)
        assert isinstance(layer, VIModule)
        with torch.no_grad():
            for name, mean in self.means_from(module, layer).items():
                layer.posterior[name].reset_parameters(mean.detach())
            _copy_children(module, layer)
        carry_module_state(module, layer)
        return layer

    def means_from(self, module: nn.Module, layer: VIModule) -> dict[str, Tensor]:
        """Values of ``layer``'s random variables for the weights of ``module``.

        Args:
            module: a ``torch.nn`` layer of :attr:`torch_cls`.
            layer: a layer of :attr:`bayesian_cls` with the same arguments.
        """
        hook = self.weights_to_means or _parameters_of
        return hook(module, layer)

    def weights_from(
        self, layer: VIModule, means: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """The ``torch.nn`` parameters, by name, for the variable values ``means``."""
        hook = self.means_to_weights
        return dict(means) if hook is None else hook(layer, means)

    def to_torch(
        self,
        layer: VIModule,
        means: Mapping[str, Tensor],
        children: Mapping[str, nn.Module] | None = None,
    ) -> nn.Module:
        """The ``torch.nn`` layer of ``layer`` with its weights at ``means``.

        A weight whose random variable's posterior parameters are all
        frozen (``requires_grad=False``) is frozen too; where the layer's
        variables are not its torch parameters one to one (an attention
        layer's ``out_proj_weight``), the weights of a layer whose every
        posterior is frozen are.

        Args:
            layer: a layer of :attr:`bayesian_cls`.
            means: the value of each of its random variables, by name.
            children: for containers, the already converted children.
        """
        if self.build_torch is not None:
            built = self.build_torch(layer, children or {})
            carry_module_state(layer, built)
            return built
        weights = self.weights_from(layer, means)
        reference = next(iter(weights.values()), None)
        if reference is None:  # every weight is a sublayer's (Transformer layers)
            reference = next(layer.parameters())
        plain = _construct(
            self.torch_cls,
            self.arguments(layer),
            {"device": reference.device, "dtype": reference.dtype},
        )
        frozen = _frozen_variables(layer)
        every_one = frozen == set(layer.declared_variables())
        with torch.no_grad():
            for name, value in weights.items():
                parameter = plain.get_parameter(name)
                parameter.copy_(value)
                if every_one or name in frozen:
                    parameter.requires_grad_(False)
            for name, child in (children or {}).items():
                target = getattr(plain, name, None)
                if isinstance(target, nn.Module):
                    target.load_state_dict(child.state_dict())
                    _copy_frozen_flags(child, target)
        carry_module_state(layer, plain)
        return plain


def _shared_arguments(
    torch_cls: type[nn.Module], bayesian_cls: type[nn.Module]
) -> list[str]:
    """The constructor arguments of a registered pair, by name (see ``arguments``)."""
    parameters = inspect.signature(torch_cls.__init__).parameters
    if any(p.kind is p.VAR_POSITIONAL for p in parameters.values()):
        parameters = inspect.signature(bayesian_cls.__init__).parameters
    return [
        name
        for name, parameter in parameters.items()
        if name not in _NOT_SHARED
        and not name.startswith("_")
        and parameter.kind is parameter.POSITIONAL_OR_KEYWORD
    ]


def _keywords(cls: type[nn.Module]) -> frozenset[str] | None:
    """The keyword arguments ``cls``'s constructor takes (``None``: any)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    by_name = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in parameters if p.kind in by_name)


# The Bayesian options convert passes to every layer, at their defaults; a
# registered class of a user's may leave them out of its constructor.
_OPTION_DEFAULTS: dict[str, object] = {
    "prior": None,
    "variational": None,
    "estimator": "auto",
}


def _is_default(option: str, value: object) -> bool:
    """Whether ``value`` is the default of the Bayesian ``option`` (no choice)."""
    if option not in _OPTION_DEFAULTS or not isinstance(value, str | None):
        return False
    return value == _OPTION_DEFAULTS[option]


def _construct(
    cls: type[nn.Module], arguments: Mapping[str, Any], options: Mapping[str, Any]
) -> nn.Module:
    """``cls(**arguments, **options)``, with the options its constructor takes.

    ``device``/``dtype`` it does not take (a plain class of a user's, as
    transformers' ``Conv1D``) are applied by ``.to()`` afterwards; a Bayesian
    option it does not take is left out at its default and refused otherwise.

    Raises:
        ValueError: for an option other than ``device``/``dtype`` that ``cls``
            does not take, unless it is a Bayesian option at its default.
    """
    accepted = _keywords(cls)
    given = {k: v for k, v in options.items() if accepted is None or k in accepted}
    refused = [
        f"{name}={value!r}"
        for name, value in options.items()
        if name not in given
        and name not in ("device", "dtype")
        and not _is_default(name, value)
    ]
    if refused:
        raise ValueError(
            f"{cls.__name__} takes no {', '.join(refused)} (its constructor has no "
            "such keyword)"
        )
    built: nn.Module = cls(**arguments, **given)
    placement = {
        k: options[k]
        for k in ("device", "dtype")
        if options.get(k) is not None and k not in given
    }
    return built.to(**placement) if placement else built


def _frozen_variables(layer: VIModule) -> set[str]:
    """The variables of ``layer`` whose posterior parameters are all frozen.

    Their weights stay fixed in training (``requires_grad_(False)`` on the
    layer, or on the posterior); the plain weights built from them are frozen
    too, as a copy of a frozen torch layer is.
    """
    return {
        name
        for name in layer.declared_variables()
        if not any(p.requires_grad for p in layer.posterior[name].parameters())
    }


def _copy_frozen_flags(source: nn.Module, target: nn.Module) -> None:
    """Freeze the parameters of ``target`` frozen at the same names in ``source``."""
    for name, parameter in source.named_parameters():
        if not parameter.requires_grad:
            target.get_parameter(name).requires_grad_(False)


def carry_module_state(source: nn.Module, built: nn.Module) -> None:
    """What a module built from ``source`` keeps besides its weights.

    Each submodule's train/eval mode (:func:`copy_training_modes`) and the
    forward hooks (:func:`~pyrolite_bnn._module_hooks.carry_forward_hooks`).
    """
    copy_training_modes(source, built)
    carry_forward_hooks(source, built)


def copy_training_modes(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` the train/eval modes of ``source`` (a copy keeps them).

    ``target`` (a layer built from ``source``) takes ``source.training``
    throughout; each of its submodules at a path ``source`` also has (a
    Transformer layer's ``dropout1``) then takes that submodule's mode, so a
    model converted in eval mode stays in eval mode, dropout inside included.

    Args:
        source: the torch module.
        target: the module built from it.
    """
    # Read first: ``target`` may be built around ``source``'s own children.
    modes = {path: module.training for path, module in source.named_modules()}
    target.train(source.training)
    for path, module in target.named_modules():
        mode = modes.get(path)
        if mode is not None:
            module.training = mode


_BY_TORCH: dict[type[nn.Module], LayerEntry] = {}
_BY_BAYESIAN: dict[type[nn.Module], LayerEntry] = {}


def register(
    torch_cls: type[nn.Module],
    *,
    cases: tuple[LayerCase, ...] = (),
    weights_to_means: WeightsToMeans | None = None,
    means_to_weights: MeansToWeights | None = None,
    build_torch: BuildTorch | None = None,
    build_bayesian: BuildBayesian | None = None,
    read_arguments: ReadArguments | None = None,
) -> Callable[[type[_Layer]], type[_Layer]]:
    """Class decorator: register a Bayesian class as the twin of ``torch_cls``.

    :func:`~pyrolite_bnn.convert` then makes every ``torch_cls`` module
    (whose class keeps ``torch_cls.forward``) a layer of the decorated class,
    its posterior means at the module's parameters, and
    :func:`~pyrolite_bnn.to_deterministic` (and ``predict(..., mode="mean")``,
    which reads the same means) goes back. ``torch_cls`` may be any
    ``nn.Module`` class: a library's (transformers' ``Conv1D``) or your own.
    The decorated class:

    - takes ``torch_cls``'s constructor arguments under the same names and
      keeps each as an attribute of that name, as ``torch_cls`` does (the
      arguments are read from either module by name; give
      ``read_arguments=`` where they are not attributes);
    - declares a random variable per parameter of ``torch_cls``, of the same
      name and shape (else give ``weights_to_means=``/``means_to_weights=``);
    - may take the keyword-only options ``prior=``, ``variational=``,
      ``estimator=``, ``device=``, ``dtype=`` that ``convert`` passes on; one
      it does not take is left out at its default (``device``/``dtype``:
      applied by ``.to()``), and a ``convert`` call that sets it is refused.

    Args:
        torch_cls: the ``torch.nn`` class the decorated class mirrors.
        cases: option sets of the library's layer contract suite
            (``tests/layers/test_contract.py``, which runs on every entry with
            cases); a class of your own leaves them empty.
        weights_to_means: see :class:`LayerEntry`.
        means_to_weights: see :class:`LayerEntry`.
        build_torch: see :class:`LayerEntry` (containers).
        build_bayesian: see :class:`LayerEntry` (containers).
        read_arguments: see :class:`LayerEntry`.

    Raises:
        ValueError: if another Bayesian class is registered for ``torch_cls``
            (:func:`unregister` it first); one of the same qualified name (a
            notebook cell run again) replaces it. Also if the decorated class
            is already the twin of another torch class.
        TypeError: if the decorated class's constructor takes no argument of a
            name of ``torch_cls``'s (without ``read_arguments=`` or
            ``build_bayesian=``).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> from torch import nn
        >>> from pyrolite_bnn.layers import functional, registry
        >>> class Scale(nn.Module):  # y = x * weight, one weight per feature
        ...     def __init__(self, features):
        ...         super().__init__()
        ...         self.features = features
        ...         self.weight = nn.Parameter(torch.ones(features))
        ...
        ...     def forward(self, x):
        ...         return x * self.weight
        >>> @registry.register(Scale)
        ... class VIScale(bnn.VIModule):
        ...     def __init__(self, features, *, prior=None, device=None, dtype=None):
        ...         super().__init__()
        ...         self.features = features
        ...         self.declare_random_variable(
        ...             "weight", (features,), prior, device=device, dtype=dtype
        ...         )
        ...
        ...     def forward(self, x):  # every particle's weights at once
        ...         diagonal = torch.diag_embed(self.weight)
        ...         batch = functional.current_batch_size()
        ...         return functional.linear(x, diagonal, None, batch)
        >>> net = bnn.convert(nn.Sequential(Scale(3), nn.Linear(3, 2)))
        >>> [v.site for v in net.random_variables()]
        ['0.weight', '1.weight', '1.bias']
        >>> net(torch.randn(5, 3), samples=4).shape
        torch.Size([4, 5, 2])
        >>> type(bnn.to_deterministic(net)[0]).__name__
        'Scale'
        >>> registry.unregister(Scale).bayesian_cls.__name__
        'VIScale'
    """

    def decorate(cls: type[_Layer]) -> type[_Layer]:
        entry = LayerEntry(
            torch_cls,
            cls,
            tuple(cases),
            weights_to_means,
            means_to_weights,
            build_torch,
            build_bayesian,
            read_arguments,
        )
        previous = _BY_TORCH.get(torch_cls)
        if previous is not None and _name(previous.bayesian_cls) != _name(cls):
            raise ValueError(
                f"{torch_cls.__name__} is already registered to "
                f"{_name(previous.bayesian_cls)}"
            )
        twin = _BY_BAYESIAN.get(cls)
        if twin is not None and _name(twin.torch_cls) != _name(torch_cls):
            # to_deterministic would build the other class from this one's
            raise ValueError(
                f"{_name(cls)} is already the Bayesian twin of "
                f"{_name(twin.torch_cls)}; a twin serves one torch class (make a "
                "subclass for another)"
            )
        if build_bayesian is None and read_arguments is None:
            _check_constructor(torch_cls, cls)
        if previous is not None:
            del _BY_BAYESIAN[previous.bayesian_cls]
        _BY_TORCH[torch_cls] = entry
        _BY_BAYESIAN[cls] = entry
        return cls

    return decorate


def unregister(torch_cls: type[nn.Module]) -> LayerEntry:
    """Remove the registration of ``torch_cls``; ``convert`` leaves it as it is.

    Args:
        torch_cls: a class registered with :func:`register`.

    Returns:
        The removed entry.

    Raises:
        ValueError: if ``torch_cls`` is not registered.

    Example:
        >>> import pyrolite_bnn as bnn
        >>> from torch import nn
        >>> from pyrolite_bnn.layers import registry
        >>> class MyLinear(nn.Linear):
        ...     pass
        >>> @registry.register(MyLinear)
        ... class VIMyLinear(bnn.VILinear):
        ...     pass
        >>> registry.for_torch(MyLinear).bayesian_cls.__name__
        'VIMyLinear'
        >>> registry.unregister(MyLinear).bayesian_cls.__name__
        'VIMyLinear'
        >>> registry.for_torch(MyLinear).bayesian_cls.__name__  # nn.Linear's
        'VILinear'
    """
    entry = _BY_TORCH.pop(torch_cls, None)
    if entry is None:
        raise ValueError(f"{torch_cls.__name__} is not registered")
    del _BY_BAYESIAN[entry.bayesian_cls]
    return entry


def _check_constructor(torch_cls: type[nn.Module], cls: type[nn.Module]) -> None:
    """Refuse a Bayesian class whose constructor lacks an argument of torch's."""
    accepted = _keywords(cls)
    missing = [
        name
        for name in _shared_arguments(torch_cls, cls)
        if accepted is not None and name not in accepted
    ]
    if missing:
        raise TypeError(
            f"{cls.__name__} cannot be registered for {torch_cls.__name__}: its "
            f"constructor takes no {', '.join(map(repr, missing))}; convert builds "
            f"it with the constructor arguments of {torch_cls.__name__}, by name "
            "(or give read_arguments=)"
        )


def entries() -> tuple[LayerEntry, ...]:
    """Every registered entry, in registration order."""
    return tuple(_BY_TORCH.values())


def for_torch(module: nn.Module | type[nn.Module]) -> LayerEntry | None:
    """The entry of a ``torch.nn`` module or class (its nearest registered base)."""
    return _lookup(_BY_TORCH, module)


def for_unchanged_torch(module: nn.Module) -> LayerEntry | None:
    """The entry of a ``torch.nn`` module whose class keeps its ``forward``.

    A subclass that redefines ``forward`` (a user's ``nn.Linear`` with extra
    arithmetic) would lose it in the Bayesian layer, so it has no entry here.
    """
    entry = for_torch(module)
    if entry is None or type(module).forward is not entry.torch_cls.forward:
        return None
    return entry


def for_bayesian(module: nn.Module | type[nn.Module]) -> LayerEntry | None:
    """The entry of a Bayesian module or class (its nearest registered base)."""
    return _lookup(_BY_BAYESIAN, module)


def _lookup(
    table: dict[type[nn.Module], LayerEntry], module: nn.Module | type[nn.Module]
) -> LayerEntry | None:
    cls = module if isinstance(module, type) else type(module)
    for base in cls.__mro__:
        entry = table.get(base)
        if entry is not None:
            return entry
    return None


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def has_weight(module: nn.Module, name: str) -> bool:
    """Whether ``module`` (torch or Bayesian) has the weight ``name`` (not ``None``).

    A Bayesian layer's random variable is a sample site (reading it would draw
    it): its posterior is asked instead.
    """
    if isinstance(module, VIModule):
        return name in module.declared_variables()
    return getattr(module, name, None) is not None


def _bias(module: nn.Module) -> bool:
    """The ``bias`` argument: a plain flag (``nn.LSTM``) or whether one exists."""
    flag = vars(module).get("bias")
    return flag if isinstance(flag, bool) else has_weight(module, "bias")


def _copy_children(module: nn.Module, layer: nn.Module) -> None:
    """Give the sublayers of a new Bayesian ``layer`` the state of ``module``'s."""
    for name, child in layer.named_children():
        source = getattr(module, name, None)
        if name in NOT_NETWORK or not isinstance(source, nn.Module):
            continue
        entry = for_bayesian(child) if isinstance(child, VIModule) else None
        if entry is not None and entry.build_bayesian is None:
            assert isinstance(child, VIModule)
            for var, mean in entry.means_from(source, child).items():
                child.posterior[var].reset_parameters(mean.detach())
            _copy_children(source, child)
        elif any(isinstance(m, VIModule) for m in child.modules()):
            _copy_children(source, child)
        else:
            child.load_state_dict(source.state_dict())


def _parameters_of(module: nn.Module, layer: VIModule) -> dict[str, Tensor]:
    """Default ``weights_to_means``: the torch parameter named like each variable."""
    return {name: getattr(module, name) for name in layer.declared_variables()}
