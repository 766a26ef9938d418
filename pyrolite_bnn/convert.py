"""Make an existing ``torch.nn`` model Bayesian: :func:`convert`.

Every layer with a Bayesian counterpart on the layer registry
(:mod:`pyrolite_bnn.layers.registry`: ``Linear``, ``Conv*``,
``ConvTranspose*``, ``Embedding``, ``LSTM``, ``GRU``, ``MultiheadAttention``,
the ``Transformer`` layers and stacks, ``Sequential``/``ModuleList``/
``ModuleDict``, and any class registered with
:func:`~pyrolite_bnn.layers.registry.register`) becomes that layer, its
posterior means at the module's weights.
torch's ``BatchNorm1d/2d/3d`` become :class:`~pyrolite_bnn.BatchNorm1d` (``2d``,
``3d``), with the same state, which normalise each particle over its own
examples in training mode (torch's would take its statistics over the ``B * S``
rows of all particles); ``exclude=`` with their path or type keeps torch's
class. Everything else is copied unchanged: other norms silently, other modules
with parameters with one warning that lists them (a TorchScript submodule is
kept whole: its compiled ``forward`` calls its submodules as they are). The
tree keeps its module paths, so the site names are the original parameter
paths (``body.0.weight``).
Train/eval modes and forward hooks (``register_forward_hook``,
``register_forward_pre_hook``) go with each converted module, in both
directions (:func:`~pyrolite_bnn.to_deterministic` too); a hook on a Bayesian
layer inside a network sees its folded ``(B*S, ...)`` activations, and a
pre-hook on the network's root runs after the call has checked its inputs
(dtype, finite values, batch size): convert inputs before the call instead.
Backward and ``state_dict`` hooks are not carried (a warning names them).

A custom root class (a ``forward`` of your own) becomes a
:class:`ConvertedNetwork`: the same class with :class:`~pyrolite_bnn.VIModule`
mixed in, so ``net.guide``, ``bnn.predict``, checkpoints and
``bnn.to_deterministic`` (which gives back an instance of your class) work.

Inside a Bayesian call activations are folded ``(B*S, ...)``; a tensor no
Bayesian layer has touched (the raw input, a branch left deterministic with
``exclude=``) is still ``(B, ...)``. The library's own residual sums broadcast
it; in your own ``forward``, combine the two with :func:`match_particles`
(``torch.cat``/``+`` of ``(B, ...)`` and ``(B*S, ...)`` fail with torch's size
error, which a converted network extends with this hint). An operation of
your ``forward`` across the batch dimension (``h - h.mean(0)``, ``h.max(0)``,
``softmax(h, 0)``, ``cumsum(0)``, ``h[0:1]``) runs over the folded rows and
mixes the particles: ``mode="mean"`` still equals the model, but each drawn
network is another function, silently (nothing can tell the folded rows from
a batch there); keep such operations out of the converted forward.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize

from pyrolite_bnn import _particles
from pyrolite_bnn._derived_classes import DerivedClasses
from pyrolite_bnn._module_copy import copy_module
from pyrolite_bnn._module_hooks import (
    refuse_recomputed_weights,
    warn_hooks_left_behind,
)
from pyrolite_bnn._network import is_cached_fact
from pyrolite_bnn._source_watch import remember_source
from pyrolite_bnn._tied_parameters import tied_parameters, warn_untied
from pyrolite_bnn._validation import check_positive
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.distributions.priors import NormalPrior
from pyrolite_bnn.distributions.variational import (
    MeanFieldNormal,
    MeanFieldNormalPosterior,
    VariationalFamily,
)
from pyrolite_bnn.layers import registry
from pyrolite_bnn.layers._options import Estimator
from pyrolite_bnn.layers.batchnorm import PARTICLE_BATCH_NORMS
from pyrolite_bnn.layers.registry import LayerEntry, carry_module_state
from pyrolite_bnn.module import GUIDE_STATE, NOT_NETWORK, VIModule

__all__ = ["MOPED_MIN_SCALE", "ConvertedNetwork", "convert"]

#: Smallest posterior standard deviation ``moped=`` gives (weights at zero).
MOPED_MIN_SCALE = 1e-5

# Deterministic by design: their parameters are for stability, not learning.
_NORMS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LazyInstanceNorm1d,
    nn.LazyInstanceNorm2d,
    nn.LazyInstanceNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
)

Selection = Iterable[str | type[nn.Module]] | str | type[nn.Module] | None


# torch's messages when two tensors' sizes disagree (cat, stack, broadcasting).
def convert(
    module: nn.Module,
    *,
    prior: object = None,
    variational: VariationalFamily | Mapping[str, VariationalFamily] | None = None,
    estimator: Estimator = "auto",
    moped: float | None = None,
    include: Selection = None,
    exclude: Selection = None,
) -> VIModule:
    """A Bayesian copy of ``module``, its posterior means at ``module``'s weights.

    ``module`` itself is left untouched (values and identity of its
    parameters). Each registered layer becomes its Bayesian layer with the
    same constructor arguments (see the module docstring), so
    ``bnn.predict(net, x, likelihood, mode="mean").samples[0]`` equals
    ``module.eval()(x)`` (for any likelihood, e.g. ``bnn.Normal()``; for a
    module returning one tensor, as ``predict`` needs: wrap a multi-head
    module's call to pick one) and ``bnn.to_deterministic(net)`` equals
    ``module``. Norm layers stay
    deterministic silently (torch's ``BatchNorm1d/2d/3d`` become the library's
    :class:`~pyrolite_bnn.BatchNorm2d` and its siblings, with the same state,
    whose training-mode statistics are taken per particle); other modules with
    parameters stay deterministic with one ``UserWarning`` that lists them.

    A subclass of a registered class that keeps torch's ``forward``
    (``class TaggedLinear(nn.Linear)`` adding attributes or methods) becomes
    the Bayesian layer of that class, without its own methods and attributes,
    and ``to_deterministic`` gives back the torch class: one ``UserWarning``
    names such layers (register a Bayesian twin for the subclass,
    :func:`~pyrolite_bnn.layers.registry.register`, to keep it; ``exclude=``
    keeps it deterministic). A layer subclass with a ``forward`` of its own
    is not replaced: it stays deterministic (listed in the warning about
    modules left deterministic). A container subclass that keeps torch's
    ``forward`` (torchvision's ``Conv2dNormActivation``, an ``nn.Sequential``)
    holding layers made Bayesian becomes the library's container without a
    warning (torch's ``forward`` reads only its children; its class and own
    attributes are not kept either).

    Sequence layers (``LSTM``, ``GRU``, ``MultiheadAttention``, Transformer)
    convert with either ``batch_first``; a ``batch_first=False`` network folds
    its particles into the sequence dimension (see the sequence-first layouts
    in the concepts guide, with their limits). Hidden states keep torch's
    layout.

    Args:
        module: a ``torch.nn`` model (not already a ``bnn.VIModule``).
        prior: prior of every weight (anything the layers' ``prior=`` takes);
            with ``moped``, ``None`` or a :class:`~pyrolite_bnn.NormalPrior`
            (or a subclass of it) with ``loc=0``, kept with its class and
            ``scale``: MOPED sets its ``loc`` to the weights (assign other
            priors after the conversion).
        variational: variational family of every weight (``None``:
            mean-field Normal), or one per variable name as the layers'
            ``variational=`` takes (``{"bias": bnn.PointMass()}``: every
            converted layer must declare each name); with ``moped``, ``None`` or a
            :class:`~pyrolite_bnn.MeanFieldNormal` with the default
            ``init_scale`` (MOPED sets the scales), whose
            ``scale_transform`` is kept.
        estimator: the layers' ``estimator=`` (the sequence layers,
            ``VIEmbedding`` and the transposed convolutions accept only
            ``"auto"``/``"reparam"``: exclude them or keep ``"auto"``).
        moped: MOPED (Krishnan et al., 2020) with ``delta = moped > 0``: each
            prior is a Normal centred at the pretrained weights (a buffer, saved
            in ``state_dict()``), each posterior has its mean at the weights and
            standard deviation ``delta * |w|``, at least ``MOPED_MIN_SCALE``
            (the posterior's ``reset_parameters()`` starts again from its
            family's ``init_scale``, as the repr shows).
        include: module paths (``"body.0"``, also covering everything below)
            or types (a layer type, or a block type standing for its
            instances' paths); only registered layers matched are made
            Bayesian.
        exclude: module paths or types to keep deterministic (e.g. a skip
            path), as for ``include``; a batch norm's own path or type keeps
            torch's class (a path above it does not). A container below the
            root (``Sequential``, ``ModuleList``, ``ModuleDict``, a
            Transformer stack) left with no Bayesian layer inside stays the
            torch module it was: a deterministic backbone called on its own
            returns ``(B, ...)`` features, as before converting.

    Returns:
        The Bayesian network: a registered Bayesian container or layer when
        ``module`` is one, else a :class:`ConvertedNetwork` of ``module``'s class.

    Raises:
        TypeError: if ``module`` is no ``torch.nn.Module``, is already
            Bayesian or is a TorchScript module, ``moped`` is not a number,
            ``include``/``exclude`` hold other than paths and types, or a layer
            to convert has a weight recomputed by a hook-based
            reparameterisation (the legacy ``torch.nn.utils.weight_norm`` or
            ``spectral_norm``, pruning: the message names the remedy).
        ValueError: for an unknown path in ``include``/``exclude``, a path
            inside a layer converted as a whole, invalid
            ``moped``/``prior``/``variational`` (with ``moped``, a prior
            ``loc`` or an ``init_scale`` that MOPED would replace), or a lazy
            layer (``nn.LazyLinear``) not yet initialised by a forward pass.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> from torch import nn
        >>> plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> net = bnn.convert(plain, exclude=["2"])
        >>> net
        VISequential(
          (0): VILinear(in_features=4, out_features=8, bias=True)
          (1): ReLU()
          (2): Linear(in_features=8, out_features=3, bias=True)
        )
        >>> [v.site for v in net.random_variables()]
        ['0.weight', '0.bias']
        >>> net(torch.randn(5, 4), samples=2).shape
        torch.Size([2, 5, 3])
        >>> moped = bnn.convert(plain, moped=0.1)
        >>> moped[2].prior["weight"]
        NormalPrior(loc=tensor of shape (3, 8), scale=1)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert needs a torch.nn.Module, got {type(module).__name__}")
    if any(isinstance(m, VIModule) for m in module.modules()):
        raise TypeError(
            f"{type(module).__name__} already holds Bayesian layers; convert takes "
            "a plain torch.nn model"
        )
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError(
            "bnn.convert cannot convert a TorchScript module "
            "(torch.jit.script/trace): its forward is compiled code, which "
            "cannot call Bayesian layers; convert the plain model (a scripted "
            "submodule of it is kept deterministic)"
        )
    if moped is not None:
        moped = check_positive(moped, "moped (delta)")
        _check_moped_options(prior, variational)
    converter = _Converter(
        {"prior": prior, "variational": variational, "estimator": estimator},
        moped,
        _selection(include, module, "include"),
        _selection(exclude, module, "exclude"),
    )
    tied = tied_parameters(module)
    duplicate = copy_module(module, "bnn.convert")
    before = list(duplicate.named_modules())
    root = converter.convert(duplicate, "")
    converter.warn()
    network = root if isinstance(root, VIModule) else ConvertedNetwork.wrap(root)
    remember_source(network, module)  # for the loss: optimizers of ``module``
    warn_untied(network, tied, "bnn.convert", "exclude= their layers")
    warn_hooks_left_behind(before, network, "bnn.convert")
    if not any(
        isinstance(m, VIModule) and m.declared_variables() for m in network.modules()
    ):
        warn_at_caller(
            f"bnn.convert made no layer of {type(module).__name__} Bayesian: "
            "include=/exclude= left none, or it has no layer with a Bayesian "
            "counterpart (Linear, Conv*, ConvTranspose*, Embedding, LSTM, GRU, "
            "MultiheadAttention, Transformer layers); the result is the "
            "deterministic model",
            UserWarning,
        )
    return network


class ConvertedNetwork(VIModule):
    """Base of the networks :func:`convert` builds around a custom root class.

    ``convert`` makes a subclass of both your class and this one: your
    ``forward`` and methods, the library's call machinery. Its instances are not
    built by ``__init__``: :meth:`wrap` moves a converted module into one, and
    calling the subclass (or a class method that does, as Hugging Face's
    ``from_pretrained``) raises ``TypeError`` with the way to reload one
    (convert a model of the same architecture, then ``load_state_dict``).
    The subclass is made at run time; the network pickles (``torch.save`` of
    the whole module) as long as your class can be imported where it is loaded.
    """

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        """Pickle by the user's class (the generated subclass has no import path)."""
        return (_converted_instance, (_torch_class(type(self)),), self.__getstate__())

    @classmethod
    def wrap(cls, root: nn.Module) -> ConvertedNetwork:
        """A network of ``root``'s class holding ``root``'s state and children.

        Args:
            root: a plain module whose children were converted.
        """
        network_cls = _network_class(type(root))
        network = network_cls.__new__(network_cls)
        VIModule.__init__(network)
        _move_state(root, network)
        return network

    def plain_module(self, children: dict[str, nn.Module]) -> nn.Module:
        """An instance of the original class with this state and ``children``.

        Used by :func:`~pyrolite_bnn.to_deterministic`.

        Args:
            children: the deterministic counterparts of this module's children.
        """
        cls = _torch_class(type(self))
        plain = cls.__new__(cls)
        nn.Module.__init__(plain)
        kept = {
            k: v
            for k, v in self._modules.items()
            if k not in NOT_NETWORK and v is not None
        }
        # Facts cached on this root (its random variables...) stay behind: they
        # refer to the Bayesian layers and would make the plain module need
        # this library to load.
        skip = _network_keys() | {k for k in vars(self) if is_cached_fact(k)}
        _move_state(self, plain, dict(kept, **children), skip=skip)
        return plain


_NETWORK_CLASSES: DerivedClasses[type[ConvertedNetwork]] = DerivedClasses()


def _network_class(cls: type[nn.Module]) -> type[ConvertedNetwork]:
    """The subclass of ``cls`` and :class:`ConvertedNetwork` (one per class)."""
    return _NETWORK_CLASSES.get(cls, _make_network_class)


def _converted_instance(cls: type[nn.Module]) -> ConvertedNetwork:
    """An empty instance of ``cls``'s converted network class (for unpickling)."""
    network_cls = _network_class(cls)
    return network_cls.__new__(network_cls)


# Calling a converted network's class built a network of it with the class's
# own __init__: its torch layers, fresh weights, no random variables (Hugging
# Face's from_pretrained calls cls(config)).
_BUILT_BY_CONVERT = (
    "{name} (this class) is the one bnn.convert made for converted {name} "
    "networks: they are made by bnn.convert(model), not by calling the class "
    "(its __init__ would build torch layers with fresh weights and no random "
    "variables; a class method that calls it, such as Hugging Face's "
    "from_pretrained(path), does). To reload a saved converted network, build "
    "the torch model of the same architecture (the plain {name}), convert it "
    "with the same arguments and load the state: net = bnn.convert(model, "
    "...); net.load_state_dict(state). torch.save/torch.load of the whole "
    "network works too, and bnn.to_deterministic(net) gives back a plain "
    "{name}"
)


def _make_network_class(cls: type[nn.Module]) -> type[ConvertedNetwork]:
    forward = cls.forward

    @functools.wraps(forward)
    def hinted_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with _particles.fold_hinted(_particles.current()):
            return forward(self, *args, **kwargs)

    def refused_init(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        raise TypeError(_BUILT_BY_CONVERT.format(name=cls.__name__))

    namespace = {
        "forward": hinted_forward,
        "__init__": refused_init,
        "__module__": cls.__module__,
    }
    made = types.new_class(
        cls.__name__, (cls, ConvertedNetwork), exec_body=lambda ns: ns.update(namespace)
    )
    made.__qualname__ = cls.__qualname__
    return made


def _torch_class(cls: type) -> type[nn.Module]:
    for base in cls.__mro__[1:]:
        if issubclass(base, nn.Module) and not issubclass(base, ConvertedNetwork):
            return base
    raise TypeError(f"{cls.__name__} is not a converted network")  # pragma: no cover


@functools.cache
def _network_keys() -> frozenset[str]:
    """Instance attributes of the library's machinery (not the user's)."""
    return frozenset(vars(VIModule())) | GUIDE_STATE


def _move_state(
    source: nn.Module,
    target: nn.Module,
    modules: dict[str, nn.Module] | None = None,
    skip: frozenset[str] = frozenset(),
) -> None:
    """Give ``target`` the attributes, parameters, buffers, children of ``source``.

    Its forward hooks too (``target``'s own hook dictionaries are kept).
    """
    for key, value in vars(source).items():
        if key not in vars(target) and key not in skip:
            object.__setattr__(target, key, value)
    carry_module_state(source, target)
    for name, parameter in source._parameters.items():
        target.register_parameter(name, parameter)
    for name, buffer in source._buffers.items():
        persistent = name not in source._non_persistent_buffers_set
        target.register_buffer(name, buffer, persistent=persistent)
    for name, child in (source._modules if modules is None else modules).items():
        if modules is None and name in NOT_NETWORK:
            continue
        target.add_module(name, child)


def _selection(
    given: Selection, model: nn.Module, what: str
) -> tuple[frozenset[str], tuple[type[nn.Module], ...]] | None:
    """Paths and types of ``include=``/``exclude=``, checked against ``model``.

    A type that is no layer of its own (a block, a user's module class) stands
    for the paths of its instances holding parameters, so that it covers
    everything below them as a path does: ``exclude=Block`` left every layer
    inside the blocks Bayesian, silently.
    """
    if given is None:
        return None
    if not isinstance(given, str | type | Iterable):
        raise TypeError(
            f"{what}= takes a module path (str), a module type, or an iterable of "
            f"them; got {given!r}"
        )
    items = [given] if isinstance(given, str | type) else list(given)
    names = frozenset(i for i in items if isinstance(i, str))
    types_ = tuple(i for i in items if isinstance(i, type))
    if len(names) + len(types_) != len(items):
        other = next(i for i in items if not isinstance(i, str | type))
        raise TypeError(
            f"{what}= takes module paths (str) or module types, got {other!r}"
        )
    modules = dict(model.named_modules())
    unknown = sorted(names - set(modules))
    if unknown:
        raise ValueError(
            f"{what}= names no module of the model: {unknown}; paths are "
            "those of model.named_modules(), such as "
            f"{sorted(p for p in modules if p)[:5]}"
        )
    blocks = frozenset(
        path
        for path, inner in modules.items()
        if types_
        and isinstance(inner, types_)
        and not _is_layer(inner)
        and not isinstance(inner, _NORMS)
        and next(inner.parameters(), None) is not None
    )
    return names | blocks, types_


def _is_layer(module: nn.Module) -> bool:
    """Whether ``module`` becomes one Bayesian layer (not a container of them)."""
    entry = registry.for_unchanged_torch(module)
    return entry is not None and entry.build_bayesian is None


def _matches(
    selection: tuple[frozenset[str], tuple[type[nn.Module], ...]],
    path: str,
    module: nn.Module,
) -> bool:
    names, types_ = selection
    if isinstance(module, types_):
        return True
    return any(path == n or path.startswith(n + ".") or not n for n in names)


class _Converter:
    """One conversion: options, selection, and the modules left deterministic."""

    def __init__(
        self,
        options: dict[str, Any],
        moped: float | None,
        include: tuple[frozenset[str], tuple[type[nn.Module], ...]] | None,
        exclude: tuple[frozenset[str], tuple[type[nn.Module], ...]] | None,
    ) -> None:
        self.options = options
        self.moped = moped
        self.include = include
        self.exclude = exclude
        self.unsupported: list[str] = []
        self.reparametrised: list[str] = []
        self.frozen: list[str] = []  # layers with requires_grad=False weights
        self.subclassed: list[str] = []  # a subclass built as its torch class
        self.converted: dict[int, nn.Module] = {}  # a module at two paths: once

    def selected(self, path: str, module: nn.Module) -> bool:
        if self.exclude is not None and _matches(self.exclude, path, module):
            return False
        return self.include is None or _matches(self.include, path, module)

    def kept_as_torch(self, path: str, module: nn.Module) -> bool:
        """Whether ``exclude=`` names ``module`` itself, by its path or its type."""
        if self.exclude is None:
            return False
        names, types_ = self.exclude
        return path in names or isinstance(module, types_)

    def convert(self, module: nn.Module, path: str) -> nn.Module:
        done = self.converted.get(id(module))
        if done is None:
            done = self.converted[id(module)] = self.convert_new(module, path)
        return done

    def convert_new(self, module: nn.Module, path: str) -> nn.Module:
        if isinstance(module, torch.jit.ScriptModule):
            # Compiled code calls its submodules as they are: kept whole.
            self.keep_deterministic(path, module, recurse=True)
            return module
        particle_norm = PARTICLE_BATCH_NORMS.get(type(module))
        if particle_norm is not None and not self.kept_as_torch(path, module):
            # The private copy's own module, state and hooks as they are: only
            # the training-mode statistics become per particle.
            module.__class__ = particle_norm
            return module
        entry = registry.for_unchanged_torch(module)
        if entry is not None and entry.build_bayesian is None:
            selected = self.selected(path, module)
            self.check_inner(path, module, selected)
            return self.layer(entry, module, path) if selected else module
        # Not named_children(): it skips a second position of a shared module.
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            converted = self.convert(child, f"{path}.{name}" if path else name)
            if converted is not child:
                setattr(module, name, converted)
        if entry is not None and (not path or _holds_bayesian_layers(module)):
            children = {k: v for k, v in module._modules.items() if v is not None}
            return entry.to_bayesian(module, children)
        if entry is not None:  # a container of deterministic modules only
            return module  # it keeps torch's class and call (features (B, F))
        if not isinstance(module, _NORMS):
            self.keep_deterministic(path, module, recurse=False)
        return module

    def keep_deterministic(self, path: str, module: nn.Module, recurse: bool) -> None:
        """Note the parameters of a selected module left as it is, for the warning.

        ``recurse``: its submodules' too (a TorchScript module, kept whole).
        """
        own = ", ".join(name for name, _ in module.named_parameters(recurse=recurse))
        if own and self.selected(path, module):
            kind = type(module).__name__
            if isinstance(module, torch.jit.ScriptModule):
                # The class is torch's RecursiveScriptModule: name the original.
                original = getattr(module, "original_name", kind)
                kind = f"TorchScript {original}, kept whole"

            self.unsupported.append(f"{path or '<root>'} ({kind}: {own})")

    def layer(self, entry: LayerEntry, module: nn.Module, path: str) -> VIModule:
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
            raise ValueError(
                f"cannot convert {path or 'the model'} ({type(module).__name__}): "
                "lazy module not initialised: run one forward pass of the model "
                "first (model(example_input)), which gives its parameters their "
                "shapes, then convert"
            )
        refuse_recomputed_weights(module, path, "bnn.convert")
        if parametrize.is_parametrized(module):
            self.reparametrised.append(path or "<root>")
        try:
            layer = entry.to_bayesian(module, **self.options)
        except ValueError as error:
            raise ValueError(
                f"cannot convert {path or 'the model'} ({type(module).__name__}): "
                f"{error}"
            ) from error
        if self.moped is not None:
            _apply_moped(layer, self.moped)
        if any(not p.requires_grad for p in module.parameters()):
            self.frozen.append(path or "<root>")
        cls = _own_class(module)
        if cls is not entry.torch_cls and not _is_torchs(cls):
            torch_name = entry.torch_cls.__name__
            self.subclassed.append(
                f"{path or '<root>'} ({cls.__name__}, a {torch_name}: "
                f"became a {type(layer).__name__})"
            )
        return layer

    def check_inner(self, path: str, module: nn.Module, selected: bool) -> None:
        """Refuse a selection that reaches inside a layer converted as one.

        A Transformer layer, an attention layer, a recurrent layer become
        Bayesian whole: ``include=``/``exclude=`` cannot pick their inner
        layers, by name or by type (``exclude=nn.Linear`` would otherwise
        leave a Transformer layer's linear layers Bayesian).
        """
        place = repr(path) if path else "the model"
        for selection, what in ((self.include, "include"), (self.exclude, "exclude")):
            inner = [
                name
                for name in (() if selection is None else sorted(selection[0]))
                if name and (not path or name.startswith(path + "."))
            ]
            if inner:
                raise ValueError(
                    f"{what}= names {inner} inside {place}, which is converted as "
                    f"one layer; name {place} itself"
                )
        # Types: an inner layer that the selection would treat otherwise
        # than the whole (excluded inside a converted layer, included inside
        # one left as it is, unless that one is excluded itself).
        if selected:
            selection, what = self.exclude, "exclude"
        elif self.exclude is not None and _matches(self.exclude, path, module):
            return
        else:
            selection, what = self.include, "include"
        if selection is None or not selection[1]:
            return
        reached = [
            f"{path}.{sub}" if path else sub
            for sub, inner_module in module.named_modules()
            if sub
            and isinstance(inner_module, selection[1])
            and registry.for_torch(inner_module) is not None
        ]
        if reached:
            kind = type(module).__name__
            raise ValueError(
                f"{what}= types reach {reached} inside {place} ({kind}), which "
                f"is converted as one layer: {what} it as a whole (its path, or "
                f"the type {kind})"
            )

    def warn(self) -> None:
        """One warning per kind of thing the conversion could not keep."""
        if self.frozen:
            warn_at_caller(
                "bnn.convert: layers with frozen weights (requires_grad=False) "
                "became Bayesian with trainable posteriors: "
                + ", ".join(self.frozen)
                + " (pass exclude= to keep them deterministic and frozen, or "
                "call requires_grad_(False) on the converted layers)",
                UserWarning,
            )
        if self.unsupported:
            warn_at_caller(
                "bnn.convert: parameters of modules without a Bayesian "
                "counterpart stay point estimates (trained as usual): "
                + ", ".join(self.unsupported)
                + " (selected layers below these modules were converted; exclude= a "
                "module's path keeps it and everything below it deterministic, "
                "and silences this; or write a VIModule for it)",
                UserWarning,
            )
        if self.subclassed:
            warn_at_caller(
                "bnn.convert: subclasses of registered torch classes became the "
                "Bayesian layer of their torch class, without their own methods "
                "and attributes (bnn.to_deterministic gives back the torch class): "
                + ", ".join(self.subclassed)
                + " (register a Bayesian twin for a subclass to keep it, "
                "@pyrolite_bnn.layers.registry.register(YourClass) on a subclass "
                "of its Bayesian layer; or exclude= it to keep it deterministic)",
                UserWarning,
            )
        if self.reparametrised:
            warn_at_caller(
                "bnn.convert: parametrizations (weight_norm, spectral_norm, ...) "
                "are not kept: "
                + ", ".join(self.reparametrised)
                + " became Bayesian layers of their current effective weights",
                UserWarning,
            )


def _own_class(module: nn.Module) -> type[nn.Module]:
    """``module``'s class, the one it had before torch's ``parametrize``.

    ``register_parametrization`` swaps in a generated subclass
    (``ParametrizedLinear``) of the module's class.
    """
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) else cls


def _is_torchs(cls: type) -> bool:
    """Whether torch defines ``cls`` (``NonDynamicallyQuantizableLinear``)."""
    return cls.__module__ == "torch" or cls.__module__.startswith("torch.")


def _check_moped_options(prior: object, variational: object) -> None:
    """Refuse a ``prior=``/``variational=`` setting that ``moped=`` would replace.

    MOPED centres every prior at the trained weights and starts every
    posterior at standard deviation ``delta * |w|``: a prior's nonzero ``loc``
    or a family's ``init_scale`` other than the default would be dropped
    without a word (the prior's class and its other hyperparameters, such as
    ``scale``, and the family's ``scale_transform`` are kept). A
    ``NormalPrior`` subclass without NormalPrior's ``loc`` buffer cannot be
    centred.
    """
    if not (prior is None or isinstance(prior, NormalPrior)):
        raise ValueError(
            "moped= centres a Normal prior at the weights: pass prior=None or a "
            f"bnn.NormalPrior (its scale is kept), got {type(prior).__name__}"
        )
    if prior is not None and "loc" not in dict(prior.named_buffers(recurse=False)):
        raise ValueError(
            "moped= centres the prior at the weights by setting its loc buffer, "
            f"which this {type(prior).__name__} (a bnn.NormalPrior subclass) does "
            "not have: give the subclass NormalPrior's loc, or assign the priors "
            "you want after convert"
        )
    loc = None if prior is None else prior.loc
    if loc is not None and not loc.is_meta and bool((loc != 0).any()):
        shown = (
            f"{loc.item():g}"
            if loc.numel() == 1
            else f"tensor of shape {tuple(loc.shape)}"
        )
        raise ValueError(
            "moped= centres each prior at the trained weights, so the "
            f"loc={shown} of prior= would be ignored: pass "
            "bnn.NormalPrior(scale=...) (its scale is kept), or assign the priors "
            "you want after convert (for v in net.random_variables(): "
            "v.module.prior[v.name] = ...)"
        )
    families = (
        list(variational.values())
        if isinstance(variational, Mapping)
        else [variational]
    )
    default = MeanFieldNormal().init_scale
    for family in families:
        if isinstance(family, MeanFieldNormal) and family.init_scale != default:
            raise ValueError(
                "moped= starts each posterior at standard deviation delta * |w|, "
                f"so the init_scale={family.init_scale:g} of variational= would be "
                "ignored: pass bnn.MeanFieldNormal() (its scale_transform is "
                "kept), or leave out moped= to start every posterior at init_scale"
            )


def _holds_bayesian_layers(module: nn.Module) -> bool:
    """Whether a layer below ``module`` (converted) declares random variables."""
    return any(
        isinstance(inner, VIModule) and inner.declared_variables()
        for inner in module.modules()
    )


def _apply_moped(layer: VIModule, delta: float) -> None:
    """Centre every prior of ``layer`` at its posterior mean; scale delta * |w|.

    Each prior is the layer's own copy of ``prior=`` (a ``NormalPrior``, or a
    subclass, which keeps its class and every other hyperparameter); its
    ``loc`` buffer is set to the weights.
    """
    for sub in layer.modules():
        if not isinstance(sub, VIModule):
            continue
        for name in sub.declared_variables():
            posterior = sub.posterior[name]
            if not isinstance(posterior, MeanFieldNormalPosterior):
                raise ValueError(
                    "moped= needs the mean-field Normal posterior (variational=None "
                    f"or bnn.MeanFieldNormal()), got {type(posterior).__name__}"
                )
            weight: Tensor = posterior.loc.detach().clone()
            prior = sub.prior[name]
            if not isinstance(prior, NormalPrior):
                raise ValueError(
                    "moped= centres a Normal prior at the weights, but the prior "
                    f"of {name!r} is a {type(prior).__name__}: pass prior=None or "
                    "a bnn.NormalPrior"
                )
            prior.loc = weight  # a checked copy, in the prior's dtype and device
            std = (delta * weight.abs()).clamp_min(MOPED_MIN_SCALE)
            posterior.reset_parameters(weight, std)
