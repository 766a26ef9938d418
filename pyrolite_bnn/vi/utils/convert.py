"""torch_blue's ``convert_to_vimodule``: a ``torch.nn`` model made Bayesian in place.

Each module of the model, from the root down, becomes (in this order of
preference):

1. the :mod:`pyrolite_bnn.vi` layer of its name (``nn.Linear`` ->
   :class:`~pyrolite_bnn.vi.VILinear`, ``nn.MultiheadAttention``, the
   Transformer family, ``nn.Conv1d/2d/3d``), built from the module's
   constructor arguments with the torch_blue options; a whole subtree
   (a Transformer) is built at once;
2. the :mod:`pyrolite_bnn` layer of its class on the layer registry
   (``nn.LSTM``, ``nn.GRU``, ``nn.Embedding``, ``nn.ConvTranspose*d``, ...),
   with the options' prior and variational family (``rescale_prior`` and
   ``prior_initialization`` do not apply there: a warning says so);
3. for any other module with parameters of its own: a generated class
   ``AVI<Name>`` (a :class:`~pyrolite_bnn.vi.VIModule` and the module's class)
   whose parameters are random variables and whose ``forward`` is the
   module's own, run per particle (:mod:`pyrolite_bnn.vi.base`); children are
   converted first;
4. a module without parameters of its own that holds converted modules (a
   container) becomes ``AVI<Name>``, a ``VIModule`` without variables
   (``nn.Sequential``: :class:`~pyrolite_bnn.vi.VISequential`).

A container whose ``forward`` is the user's (a generated class, run per
particle) runs one particle after the other when the library's layers are
below it (they run on a whole batch; see :mod:`pyrolite_bnn.vi.base`), under
:func:`torch.vmap` otherwise.

Below a module of a generated class (3), every module with parameters becomes
a generated class too, whatever layer of its name exists: the generated
``forward`` runs once per particle, and the modules it calls or whose weights
it reads (``nn.MultiheadAttention`` reads ``out_proj.weight``) must be
one-sample code, each particle seeing its own draw. This is torch_blue's way
of running a whole model per sample; it is slower than the library's layers.

Modules on the ban lists (:func:`ban_convert`; by default those without
parameters and the norms, see :func:`convert_norms`) are left as they are,
and so are TorchScript modules (``torch.jit.script``/``trace``) with everything
below them: their compiled ``forward`` calls their submodules as they are.
The module object itself is changed (its class and state), as in torch_blue;
norms and other kept modules keep their parameters, and ``keep_weights=True``
starts each posterior mean at the module's weight. Each weight keeps its
device and dtype. A converted model can be pickled whole (``torch.save``): a
module of a generated class pickles as its original class (by its import
path) and its state, and the loading process makes the generated class
again, so the original class must be importable there, as for any pickled
module. A norm converted after :func:`convert_norms` runs per particle under
:func:`torch.vmap`, which torch refuses for ``BatchNorm``'s running statistics
in training mode.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pyrolite_bnn._derived_classes import DerivedClasses
from pyrolite_bnn._module_hooks import (
    FORWARD_HOOKS,
    OTHER_HOOKS,
    refuse_recomputed_weights,
)
from pyrolite_bnn._tied_parameters import tied_parameters, warn_untied
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.convert import convert
from pyrolite_bnn.layers import registry
from pyrolite_bnn.layers.registry import copy_training_modes
from pyrolite_bnn.module import VIModule as BnnVIModule
from pyrolite_bnn.vi.utils.common_types import vikwargs_of

__all__ = [
    "ban_convert",
    "ban_reuse",
    "ban_torch_convert",
    "convert_norms",
    "convert_to_vimodule",
]

# Modules without parameters: converting them would change nothing.
_blacklist: set[type[nn.Module]] = {
    nn.Identity,
    nn.Threshold,
    nn.ReLU,
    nn.RReLU,
    nn.Hardtanh,
    nn.ReLU6,
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.Tanh,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GLU,
    nn.GELU,
    nn.Hardshrink,
    nn.LeakyReLU,
    nn.LogSigmoid,
    nn.Softplus,
    nn.Softshrink,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Softmin,
    nn.Softmax,
    nn.Softmax2d,
    nn.LogSoftmax,
    nn.PairwiseDistance,
    nn.CosineSimilarity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.Flatten,
    nn.Unflatten,
    nn.Fold,
    nn.Unfold,
    nn.CircularPad1d,
    nn.CircularPad2d,
    nn.CircularPad3d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReflectionPad3d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.ReplicationPad3d,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.MaxUnpool1d,
    nn.MaxUnpool2d,
    nn.MaxUnpool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.FractionalMaxPool2d,
    nn.FractionalMaxPool3d,
    nn.LPPool1d,
    nn.LPPool2d,
    nn.LPPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
}
# Norms stabilise training; they stay deterministic unless convert_norms().
_torch_norms: set[type[nn.Module]] = {
    nn.BatchNorm1d,
    nn.LazyBatchNorm1d,
    nn.BatchNorm2d,
    nn.LazyBatchNorm2d,
    nn.BatchNorm3d,
    nn.LazyBatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.LazyInstanceNorm1d,
    nn.InstanceNorm2d,
    nn.LazyInstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LazyInstanceNorm3d,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
}
_blacklist |= _torch_norms
# Classes converted by the generated class even where a layer of their name exists.
_replace_blacklist: set[type[nn.Module]] = set()
# The same by class name (torch_blue's vi_convert branch: ban_torch_convert).
_torch_blacklist: set[str] = set()
# Classes (or class names: ban_reuse) whose generated class is made anew for
# each module.
_reuse_blacklist: set[type[nn.Module] | str] = set()
# Classes left as they are with everything below them.
_submodule_blacklist: set[type[nn.Module]] = set()
_BAN_LISTS: dict[str, set[Any]] = {
    "ban": _blacklist,
    "reuse": _reuse_blacklist,
    "replace": _replace_blacklist,
    "submodule": _submodule_blacklist,
}
# Generated AVI classes of the original classes that are reused.
_generated: DerivedClasses[type[nn.Module]] = DerivedClasses()


def convert_norms(mode: bool = True) -> None:
    """Whether :func:`convert_to_vimodule` converts torch's norm layers.

    Args:
        mode: ``True``: norms become Bayesian too; ``False``: they stay
            deterministic (the default).
    """
    if mode:
        _blacklist.difference_update(_torch_norms)
    else:
        _blacklist.update(_torch_norms)


def ban_convert(
    class_names: type[nn.Module] | Iterable[type[nn.Module]],
    ban_mode: str | bool = "ban",
    unban: bool = False,
) -> None:
    """Add classes to (or, with ``unban=True``, remove them from) a ban list.

    Args:
        class_names: a module class or several.
        ban_mode: ``"ban"``: the module stays as it is (its children are
            converted); ``"submodule"``: the module and everything below it
            stay; ``"reuse"``: a generated class is made anew for every module
            of the class; ``"replace"``: the generated class is used even where
            a layer of the class's name exists. A bool is the ``mode`` of
            torch_blue's ``vi_convert`` branch: ``True`` bans (``"ban"``),
            ``False`` unbans.
        unban: remove instead of add.

    Raises:
        ValueError: for an unknown ``ban_mode``.
        TypeError: for anything but ``torch.nn.Module`` classes.
    """
    if isinstance(ban_mode, bool):
        if unban and ban_mode:
            raise ValueError("ban_convert: mode=True bans, but unban=True was given")
        ban_mode, unban = "ban", not ban_mode
    if ban_mode not in _BAN_LISTS:
        raise ValueError(f"Unknown ban mode: {ban_mode}")
    classes = [class_names] if isinstance(class_names, type) else list(class_names)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(
                f"ban_convert takes torch.nn.Module classes, got {cls!r}; pass the "
                "class (nn.Linear), not an instance or its name"
            )
    if unban:
        _BAN_LISTS[ban_mode].difference_update(classes)
    else:
        _BAN_LISTS[ban_mode].update(classes)


def ban_torch_convert(class_names: str | Iterable[str], mode: bool = True) -> None:
    """Convert modules of these class names by the generated class (by name).

    torch_blue's ``vi_convert`` branch: a user class that shares a torch
    layer's name (a ``Linear`` of your own) would otherwise become that
    layer's Bayesian version. The name-based form of
    ``ban_convert(cls, "replace")``.

    Args:
        class_names: a class name or several.
        mode: ``True`` bans, ``False`` unbans.
    """
    _update_names(_torch_blacklist, class_names, mode, "ban_torch_convert")


def ban_reuse(class_names: str | Iterable[str], mode: bool = True) -> None:
    """Make a generated class anew for every module of these class names.

    torch_blue's ``vi_convert`` branch: for two different classes of one
    name. The name-based form of ``ban_convert(cls, "reuse")``.

    Args:
        class_names: a class name or several.
        mode: ``True`` bans, ``False`` unbans.
    """
    _update_names(_reuse_blacklist, class_names, mode, "ban_reuse")


def _update_names(
    names: set[Any], class_names: str | Iterable[str], mode: bool, what: str
) -> None:
    """Add ``class_names`` to ``names`` (``mode=True``) or remove them."""
    if isinstance(class_names, type):
        raise TypeError(
            f"{what} takes class names, got the class {class_names.__name__}: "
            f"pass {class_names.__name__!r}"
        )
    given = [class_names] if isinstance(class_names, str) else list(class_names)
    for name in given:
        if not isinstance(name, str):
            raise TypeError(f"{what} takes class names (str), got {name!r}")
    if mode:
        names.update(given)
    else:
        names.difference_update(given)


def _replaced(cls: type[nn.Module]) -> bool:
    """Whether ``cls`` gets the generated class where a layer of its name exists."""
    return cls in _replace_blacklist or cls.__name__ in _torch_blacklist


def _reused(cls: type[nn.Module]) -> bool:
    """Whether ``cls``'s generated class is kept for the next module of the class."""
    return cls not in _reuse_blacklist and cls.__name__ not in _reuse_blacklist


def convert_to_vimodule(
    module: nn.Module,
    keep_weights: bool = False,
    variational_distribution: Any = None,
    prior: Any = None,
    rescale_prior: bool = False,
    kaiming_initialization: bool = True,
    prior_initialization: bool = False,
    return_log_probs: bool = True,
) -> nn.Module:
    """Make ``module`` Bayesian in place (torch_blue's ``convert_to_vimodule``).

    See the module documentation for what each module becomes. Copy the model
    first to keep the original.

    Args:
        module: the ``torch.nn`` model; changed in place.
        keep_weights: start the posterior means at the module's weights
            (otherwise the layers are initialised the torch_blue way).
        variational_distribution: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        prior: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        rescale_prior: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        kaiming_initialization: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        prior_initialization: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        return_log_probs: see :class:`~pyrolite_bnn.vi.VIkwargs`.

    Returns:
        ``module`` itself (now Bayesian), for ``net = convert_to_vimodule(net)``.
        A model whose own class is banned, with no module below it converted,
        comes back unchanged (torch_blue 1.1.0 and its ``vi_convert2`` branch).

    Raises:
        TypeError: if ``module`` is not a ``torch.nn.Module``, or a
            hook-based reparameterisation (the legacy
            ``torch.nn.utils.weight_norm``/``spectral_norm``, pruning) recomputes
            one of its weights.
        UnsupportedDistributionError: for a distribution that cannot take the
            role it is given.

    Warns:
        UserWarning: when parameters tied between modules (``b.weight =
            a.weight``) become independent random variables, as with
            :func:`pyrolite_bnn.convert`: each converted layer has variables of
            its own, and their KL terms count separately.

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
        >>> _ = vi.convert_to_vimodule(net, keep_weights=True)
        >>> type(net).__name__, type(net[0]).__name__
        ('VISequential', 'VILinear')
        >>> net(torch.randn(4, 2), samples=5).shape
        torch.Size([5, 4, 3])
    """
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"convert_to_vimodule takes a torch.nn.Module, got {type(module).__name__}"
        )
    vikwargs = vikwargs_of(
        variational_distribution,
        prior,
        rescale_prior,
        kaiming_initialization,
        prior_initialization,
        return_log_probs,
    )
    # Checked before anything changes: the conversion is in place.
    refuse_recomputed_weights(module, "", "convert_to_vimodule")
    tied = tied_parameters(module)
    _convert(module, vikwargs, keep_weights)
    warn_untied(
        module,
        tied,
        "convert_to_vimodule",
        "ban_convert the classes of their modules",
    )
    if isinstance(module, BnnVIModule):
        module.return_log_probs = return_log_probs
    return module


def _convert(
    module: nn.Module,
    vikwargs: dict[str, Any],
    keep_weights: bool,
    per_particle: bool = False,
) -> None:
    """Convert ``module`` and what is below it in place.

    ``per_particle``: a module above runs its ``forward`` once per particle,
    so this one must be one-sample code too (a generated class), whatever
    layer of its name exists.
    """
    cls = type(module)
    if cls in _submodule_blacklist or isinstance(module, BnnVIModule):
        return
    if isinstance(module, torch.jit.ScriptModule):
        return  # compiled code calls its submodules as they are: kept whole
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    if (
        not per_particle
        and cls not in _blacklist
        and not _replaced(cls)
        and not isinstance(module, containers)
    ):
        built = _vi_layer(module, vikwargs)
        # A library layer holds the weights already (its registry entry maps
        # them, as an embedding's padding row): only placed, not copied again.
        means_set = built is None
        if built is None:
            built = _library_layer(module, vikwargs, keep_weights)
        if built is not None:
            _copy_state(module, built, keep_weights and not means_set)
            copy_training_modes(module, built)
            _become(module, built)
            return
    own = dict(module.named_parameters(recurse=False))
    # A module converted to its generated class runs its own forward per
    # particle: the modules it calls or reads must then be one-sample code.
    below = per_particle or (bool(own) and cls not in _blacklist)
    for child in module.children():
        _convert(child, vikwargs, keep_weights, below)
    if cls in _blacklist:
        return
    if cls is nn.Sequential and not _replaced(cls) and not per_particle:
        assert isinstance(module, nn.Sequential)
        from pyrolite_bnn import vi

        sequential = vi.VISequential(*module)
        sequential.train(module.training)
        _become(module, sequential)
        return
    if own or any(isinstance(m, BnnVIModule) for m in module.modules()):
        _generated_module(module, own, vikwargs, keep_weights)


def _vi_layer(module: nn.Module, vikwargs: dict[str, Any]) -> nn.Module | None:
    """The ``vi`` layer of ``module``'s name, built from its arguments, or ``None``."""
    from pyrolite_bnn import vi

    layer_cls = getattr(vi, "VI" + type(module).__name__, None)
    if isinstance(module, nn.MultiheadAttention):
        # The model's own code calls it in torch's argument order.
        layer_cls = vi.transformer.ConvertedMultiheadAttention
    if not (isinstance(layer_cls, type) and issubclass(layer_cls, BnnVIModule)):
        return None
    if isinstance(module, nn.Transformer):
        arguments = _transformer_arguments(module)
    elif isinstance(module, (nn.TransformerEncoder, nn.TransformerDecoder)):
        first = _vi_layer(module.layers[0], vikwargs)
        if first is None:
            return None
        name = (
            "encoder_layer"
            if isinstance(module, nn.TransformerEncoder)
            else "decoder_layer"
        )
        arguments = {
            name: first,
            "num_layers": len(module.layers),
            "norm": copy.deepcopy(module.norm),
        }
    else:
        entry = registry.for_unchanged_torch(module)
        if entry is None:
            return None
        arguments = entry.arguments(module)
    accepted = inspect.signature(layer_cls).parameters
    options = {**arguments, **vikwargs, **_placement(module)}
    built: nn.Module = layer_cls(**{k: v for k, v in options.items() if k in accepted})
    return built


def _transformer_arguments(module: nn.Transformer) -> dict[str, Any]:
    """``nn.Transformer``'s constructor arguments, read from its layers."""
    encoder_layer = module.encoder.layers[0]
    return {
        "d_model": module.d_model,
        "nhead": module.nhead,
        "num_encoder_layers": len(module.encoder.layers),
        "num_decoder_layers": len(module.decoder.layers),
        "dim_feedforward": encoder_layer.linear1.out_features,
        "activation": encoder_layer.activation,
        "layer_norm_eps": encoder_layer.norm1.eps,
        "batch_first": module.batch_first,
        "norm_first": encoder_layer.norm_first,
        "bias": encoder_layer.linear1.bias is not None,
    }


def _library_layer(
    module: nn.Module, vikwargs: dict[str, Any], keep_weights: bool
) -> nn.Module | None:
    """The :mod:`pyrolite_bnn` layer of ``module``'s class (registry), or ``None``.

    Its posterior means start at the weights with ``keep_weights``, else the
    layers are re-initialised (``reset_parameters``).
    """
    entry = registry.for_unchanged_torch(module)
    if entry is None:
        return None
    family, prior = vikwargs["variational_distribution"], vikwargs["prior"]
    if isinstance(family, (tuple, list)) or isinstance(prior, (tuple, list)):
        raise NotImplementedError(
            f"convert_to_vimodule: {type(module).__name__} becomes a pyrolite_bnn "
            "layer, which takes one variational distribution and one prior, not "
            "one per variable"
        )
    ignored = [k for k in ("rescale_prior", "prior_initialization") if vikwargs[k]]
    if ignored:
        warn_at_caller(
            f"convert_to_vimodule: {type(module).__name__} becomes the library's "
            f"layer {entry.bayesian_cls.__name__}, which "
            f"does not take {' and '.join(ignored)}: its prior is used as given "
            "and its means start at torch's initialisation (or the weights)",
            UserWarning,
        )
    layer = convert(
        module,
        prior=None if prior is None else prior.to_prior(),
        variational=None if family is None else family.to_variational(),
    )
    if not keep_weights:
        for part in layer.modules():
            if isinstance(part, BnnVIModule) and part.declared_variables():
                reset = getattr(part, "reset_parameters", None)
                if callable(reset):
                    reset()
    return layer


def _placement(module: nn.Module) -> dict[str, Any]:
    """``device``/``dtype`` of the module's first parameter (if any)."""
    first = next(module.parameters(), None)
    return {} if first is None else {"device": first.device, "dtype": first.dtype}


def _torch_name(path: str, variable: str) -> str:
    """The torch parameter of a variable (``out_proj_weight``: ``out_proj.weight``)."""
    if variable.startswith("out_proj_"):
        variable = "out_proj." + variable[len("out_proj_") :]
    return f"{path}.{variable}" if path else variable


def _copy_state(source: nn.Module, built: nn.Module, keep_weights: bool) -> None:
    """Give ``built`` the plain state of ``source``, and its weights as means.

    Parameters and buffers of deterministic submodules (norms) are copied;
    with ``keep_weights`` each random variable's posterior mean is the
    module's weight; each variable takes its weight's device and dtype.
    """
    weights = dict(source.named_parameters())
    buffers = dict(source.named_buffers())
    with torch.no_grad():
        for path, layer in built.named_modules():
            if isinstance(layer, BnnVIModule):
                for variable in layer.declared_variables():
                    weight = weights.get(_torch_name(path, variable))
                    if weight is not None:
                        _place(layer, variable, weight, keep_weights)
                continue
            if _inside_bayesian(path):
                continue
            for name, value in [
                *layer.named_parameters(recurse=False),
                *layer.named_buffers(recurse=False),
            ]:
                full = f"{path}.{name}" if path else name
                found = weights.get(full, buffers.get(full))
                if found is not None and found.shape == value.shape:
                    value.copy_(found)


def _inside_bayesian(path: str) -> bool:
    """Whether ``path`` is the prior or posterior machinery of a Bayesian layer."""
    parts = path.split(".")
    return "prior" in parts or "posterior" in parts


def _place(
    layer: BnnVIModule, variable: str, weight: Tensor, keep_weights: bool
) -> None:
    """Move a variable to its weight's device/dtype; set its mean to the weight."""
    posterior, prior = layer.posterior[variable], layer.prior[variable]
    loc = posterior.loc
    if (loc.device, loc.dtype) != (weight.device, weight.dtype):
        posterior.to(device=weight.device, dtype=weight.dtype)
        if isinstance(prior, nn.Module):
            prior.to(device=weight.device, dtype=weight.dtype)
    if keep_weights:
        posterior.loc.copy_(weight)


def _become(module: nn.Module, built: nn.Module) -> None:
    """Turn ``module`` itself into ``built`` (class and state).

    The forward hooks and pre-hooks registered on ``module`` stay (see
    :func:`_keep_forward_hooks`).
    """
    state = vars(module)
    saved = dict(state)
    state.clear()
    state.update(vars(built))
    module.__class__ = type(built)
    _keep_forward_hooks(module, saved)


def _keep_forward_hooks(module: nn.Module, saved: Mapping[str, Any]) -> None:
    """Give the converted ``module`` back the hook dictionaries of its old state.

    The conversion replaces the module's state (``saved`` is the old one); its
    forward hooks and pre-hooks are the user's, registered on this very
    object, so they stay, in their order, and the handles that
    ``register_forward_hook`` returned still remove them (the same
    dictionaries; hooks of the new state follow the user's). Other hooks
    (backward, ``state_dict``) act on gradients or parameter names the
    converted module no longer has: they are dropped, and a warning names them.
    """
    state = vars(module)
    for name in FORWARD_HOOKS:
        kept = saved.get(name)
        if not isinstance(kept, dict):
            continue
        current = state.get(name)
        if isinstance(current, dict) and current is not kept:
            for key, hook in current.items():
                kept.setdefault(key, hook)
        state[name] = kept
    dropped = {kind for name, kind in OTHER_HOOKS.items() if saved.get(name)}
    if dropped:
        warn_at_caller(
            f"convert_to_vimodule: the {' and '.join(sorted(dropped))} hooks of a "
            f"{type(module).__name__} converted in place are dropped (its forward "
            "hooks are kept); register them again on the converted module",
            UserWarning,
        )


class _Generated(BnnVIModule):
    """Base of the generated ``AVI<Name>`` classes: pickled by their original class.

    A generated class is made at run time and has no import path; its instances
    pickle as the original class (pickled by reference) and their state, and
    unpickling makes the generated class of that class again. The original
    class is kept under a private name, which the user's class does not use.
    """

    _generated_from: ClassVar[type[nn.Module]]

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        """Rebuilt by :func:`_generated_instance` of the original class."""
        source = type(self)._generated_from
        return (_generated_instance, (source,), self.__getstate__())


def _generated_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``AVI<Name>``: a ``vi.VIModule`` running ``cls.forward`` per particle."""
    if _reused(cls):
        return _generated.get(cls, _make_generated_class)
    return _make_generated_class(cls)


def _make_generated_class(cls: type[nn.Module]) -> type[nn.Module]:
    from pyrolite_bnn.vi.base import VIModule  # imports this module

    name = "AVI" + cls.__name__
    generated = type(
        name,
        (_Generated, VIModule, cls),
        {
            "forward": cls.forward,
            "_generated_from": cls,
            "__module__": __name__,
            "__qualname__": name,
        },
    )
    return generated


def _generated_instance(cls: type[nn.Module]) -> nn.Module:
    """An empty instance of ``cls``'s generated class (for unpickling)."""
    generated = _generated_class(cls)
    instance: nn.Module = generated.__new__(generated)
    return instance


def _generated_module(
    module: nn.Module,
    own: Mapping[str, Tensor],
    vikwargs: dict[str, Any],
    keep_weights: bool,
) -> None:
    """Make ``module`` an instance of its generated class, keeping its state."""
    from pyrolite_bnn.vi.base import VIModule

    saved = dict(vars(module))
    # torch keeps absent parameters (bias=False) as None entries: None variables
    registered: dict[str, Tensor | None] = saved["_parameters"] if own else {}
    shapes = {n: None if p is None else tuple(p.shape) for n, p in registered.items()}
    generated = _generated_class(type(module))
    # Initialised as a plain vi.VIModule: the generated class's MRO would run
    # the original class's __init__ (which needs its own arguments).
    module.__class__ = VIModule
    VIModule.__init__(
        module,  # type: ignore[arg-type]
        shapes if shapes else None,
        **{**vikwargs, **_placement_of(own)},
    )
    module.__class__ = generated
    # The module's own forward is the user's one-sample code (as torch_blue
    # runs every module): once per particle, with or without own variables.
    vars(module)["_per_particle"] = True
    fresh = vars(module)
    for key, value in saved.items():
        # children and buffers kept (and the None entries of a container)
        if key in ("_modules", "_buffers") or (key == "_parameters" and not own):
            fresh[key] = {**value, **fresh[key]}
        elif key == "training" or key not in fresh:
            fresh[key] = value
    _keep_forward_hooks(module, saved)
    assert isinstance(module, BnnVIModule)
    with torch.no_grad():
        for name, weight in own.items():
            _place(module, name, weight, keep_weights)


def _placement_of(weights: Mapping[str, Tensor]) -> dict[str, Any]:
    """One device and dtype for the variables, if the weights share them."""
    kinds = {(w.device, w.dtype) for w in weights.values()}
    if len(kinds) == 1:
        device, dtype = kinds.pop()
        return {"device": device, "dtype": dtype}
    return {}
