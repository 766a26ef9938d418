"""``VIModule``: the base class of every Bayesian network and layer.

A layer declares its random variables with :meth:`VIModule.declare_random_variable`;
each becomes a :class:`~pyro.nn.PyroSample` attribute (a Pyro sample site named
by its module path) with its own prior module and variational posterior module.

Only the *outermost* ``VIModule`` of a call (decided at call time) opens the
particle plate and unfolds the output to ``(S, B, ...)``; nested ones run their
``forward`` directly.

Called inside Pyro inference (``SVI``, ``Predictive``, ``MCMC``) the network is a
plain Pyro model: weights come from whatever Pyro handlers decide (the guide's
replayed values, or the prior). Called from ordinary PyTorch code, it draws the
weights from :attr:`VIModule.guide` itself (straight from the posterior modules
for the default guide, by tracing an assigned guide) and leaves a
:class:`~pyrolite_bnn.record.ForwardRecord` from which
:class:`~pyrolite_bnn.KullbackLeiblerLoss` forms the ELBO exactly as Pyro's
``Trace_ELBO`` / ``TraceMeanField_ELBO`` would.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import (
    Callable,
    Hashable,
    ItemsView,
    Iterator,
    KeysView,
    Sequence,
    ValuesView,
)
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

import pyro
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.infer.autoguide.initialization import init_to_feasible
from pyro.nn import PyroModule, PyroSample
from torch import Tensor, nn

# ``pyrolite_bnn.guides.ParticleGuide`` by its path: that module imports this one,
# and the name resolves (typing.get_type_hints) once both are loaded.
import pyrolite_bnn
from pyrolite_bnn import _particles
from pyrolite_bnn._context_values import in_own_context, set_while
from pyrolite_bnn._draws import called_repeatedly, current_draws, particle_weights
from pyrolite_bnn._handlers import pyro_wrapped
from pyrolite_bnn._layout_errors import naming_layer
from pyrolite_bnn._pyro_module import (
    LocalPyroModule,
    keep_store_in,
    local_params,
    public_settings,
)
from pyrolite_bnn._sites import current_sites
from pyrolite_bnn._validation import check_count
from pyrolite_bnn._weight_dtypes import check_floating_dtype
from pyrolite_bnn.distributions.priors import Prior, as_prior
from pyrolite_bnn.distributions.variational import (
    MeanFieldNormal,
    MeanFieldNormalPosterior,
    PointMassPosterior,
    Posterior,
    VariationalFamily,
)
from pyrolite_bnn.variables import RandomVariable, UnitLayout

if TYPE_CHECKING:
    import pyrolite_bnn.guides
    from pyrolite_bnn.guides import ParticleGuide

__all__ = [
    "DEFAULT_SAMPLES",
    "GUIDE_STATE",
    "NOT_NETWORK",
    "PosteriorDict",
    "PriorDict",
    "VIModule",
    "whole_network_draws",
    "whole_networks_requested",
]

DEFAULT_SAMPLES = 10
# Set by whole_network_draws(): every particle is one complete network.
_WHOLE_NETWORKS: ContextVar[bool] = ContextVar("pyrolite_whole_networks", default=False)


def whole_network_draws() -> AbstractContextManager[None]:
    """Draw every weight in the body, whatever the layers' estimators.

    ``"local"`` and ``"flipout"`` sample each example's output independently,
    which is right for training but makes particle ``s`` a different network
    for different inputs. Prediction wants each particle to be one network
    applied to every input (coherent function draws, smooth predictive
    curves); :func:`~pyrolite_bnn.predict` runs inside this context.
    """
    return set_while(_WHOLE_NETWORKS, True)


def whole_networks_requested() -> bool:
    """Whether the running call is inside :func:`whole_network_draws`."""
    return _WHOLE_NETWORKS.get()


# Submodule name under which an assigned (non-default) guide is registered.
_CUSTOM_GUIDE = "custom_guide"
# Submodules that declare_random_variable creates, and the assigned guide's:
# no random variable may take their names.
_TABLES = frozenset({"prior", "posterior", _CUSTOM_GUIDE})


def _class_member(cls: type, name: str) -> bool:
    """Whether ``name`` is a method, property or other descriptor of ``cls``.

    A plain class attribute (``bias = None``, a default) is not: the instance's
    random variable shadows it, as any instance attribute would.
    """
    return hasattr(inspect.getattr_static(cls, name, None), "__get__")


def _variable_size(shape: object) -> torch.Size:
    """``shape`` of a random variable as a ``torch.Size``, checked.

    A sequence of sizes, or one size (``3`` is ``(3,)``, as torch's size
    arguments take it); every size an integer ``>= 0``.
    """
    several = isinstance(shape, Sequence | torch.Size) or (
        isinstance(shape, Tensor) and shape.dim() == 1
    )
    if isinstance(shape, str | bytes) or not (several or hasattr(shape, "__index__")):
        raise TypeError(
            f"shape must be a sequence of integers (or one integer), got {shape!r}"
        )
    sizes = list(shape) if several else [shape]  # type: ignore[call-overload]
    return torch.Size(
        check_count(size, f"each size of shape={shape!r}", minimum=0) for size in sizes
    )


class PosteriorDict(LocalPyroModule):
    """Holds a layer's posterior modules by variable name (``posterior["weight"]``).

    A Pyro-aware container, so that each posterior's parameters get a unique
    Pyro name (``body.0.posterior.weight.loc``). It reads like the layer's
    ``prior`` table (a ``torch.nn.ModuleDict``) and a mapping: ``[name]``,
    ``in``, ``len``, iteration over the variable names, ``keys()``,
    ``values()`` and ``items()`` (views, in the order the variables were
    declared). Item assignment replaces the posterior of a variable.

    Example:
        >>> import pyrolite_bnn as bnn
        >>> layer = bnn.VILinear(3, 2)
        >>> len(layer.posterior), "bias" in layer.posterior, list(layer.posterior)
        (2, True, ['weight', 'bias'])
        >>> {name: tuple(p.loc.shape) for name, p in layer.posterior.items()}
        {'weight': (2, 3), 'bias': (2,)}
        >>> try:
        ...     layer.posterior["scale"]
        ... except KeyError as error:
        ...     print(error.args[0])
        no random variable 'scale' in this layer; it has ['weight', 'bias']
    """

    def __getitem__(self, name: str) -> Posterior:
        """The posterior of the random variable ``name``."""
        module = self._modules.get(name)
        if module is None:
            raise KeyError(
                f"no random variable {name!r} in this layer; it has "
                f"{list(self._modules)}"
            )
        assert isinstance(module, Posterior)
        return module

    def __setitem__(self, name: str, posterior: Posterior) -> None:
        """Hold ``posterior`` as the posterior of ``name``."""
        self.add_module(name, posterior)

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is a random variable with a posterior here."""
        return name in self._modules

    def __iter__(self) -> Iterator[str]:
        """The variable names."""
        return iter(self._modules)

    def __len__(self) -> int:
        """The number of random variables."""
        return len(self._modules)

    def keys(self) -> KeysView[str]:
        """The variable names."""
        return self._modules.keys()

    def values(self) -> ValuesView[Posterior]:
        """The posterior modules."""
        return cast("ValuesView[Posterior]", self._modules.values())

    def items(self) -> ItemsView[str, Posterior]:
        """``(variable name, posterior module)`` pairs."""
        return cast("ItemsView[str, Posterior]", self._modules.items())


class PriorDict(nn.ModuleDict):
    """Holds a layer's prior modules by variable name (``prior["weight"]``).

    A prior assigned to a declared random variable (``layer.prior["weight"] =
    p``, or ``layer.prior.weight = p``) takes anything ``prior=`` takes and is
    set up exactly as one given at construction: copied, declared for the
    variable (its shape checked now, a per-unit prior shaped), on the
    device and in the dtype of the variable's posterior, its support checked.

    Args:
        posteriors: the layer's posterior modules (the dtype and device of each
            variable's prior, and whether it may have a bounded support).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> layer = bnn.VILinear(3, 2, dtype=torch.float64)
        >>> layer.prior["weight"] = bnn.NormalPrior(0.0, torch.ones(2, 1))
        >>> layer.prior["weight"].scale.dtype
        torch.float64
        >>> try:
        ...     layer.prior["bias"] = bnn.NormalPrior(0.0, torch.ones(2, 1))
        ... except ValueError as error:
        ...     print(str(error).split(" do not")[0])
        prior of 'bias': NormalPrior hyperparameters of shape (2, 1)
    """

    def __init__(self, posteriors: PosteriorDict) -> None:
        super().__init__()
        # A tuple, so that the posteriors are no submodule of this table.
        self._posteriors = (posteriors,)
        self._variables: dict[str, tuple[torch.Size, UnitLayout]] = {}

    def declare(
        self,
        name: str,
        prior: object,
        shape: torch.Size,
        units: UnitLayout,
        posterior: Posterior,
    ) -> None:
        """Add the prior of a new random variable (its posterior not yet held)."""
        module = _prior_set_up(name, prior, shape, units, posterior)
        self._variables[name] = (shape, units)
        super().__setitem__(name, module)

    def __getitem__(self, name: str) -> Prior:
        # Typed for the layers' priors; torch_blue's attention (vi) keeps None
        # placeholders for the variables it splits, read back as they are.
        return cast("Prior", self._modules[name])

    def values(self) -> ValuesView[Prior]:
        """Prior modules (each set up by :meth:`declare` or item assignment)."""
        return cast("ValuesView[Prior]", super().values())

    def items(self) -> ItemsView[str, Prior]:
        """``(variable name, prior module)`` pairs."""
        return cast("ItemsView[str, Prior]", super().items())

    def __setitem__(self, name: str, prior: object) -> None:
        """Replace the prior of the declared random variable ``name``."""
        if name not in self._variables:
            raise KeyError(
                f"{name!r} is no random variable of this layer: its priors are "
                f"{sorted(self._variables)}"
            )
        shape, units = self._variables[name]
        posterior = self._posteriors[0][name]
        super().__setitem__(name, _prior_set_up(name, prior, shape, units, posterior))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__.get("_variables", {}):
            self[name] = value
        else:
            super().__setattr__(name, value)


def _prior_set_up(
    name: str, prior: object, shape: torch.Size, units: UnitLayout, posterior: Posterior
) -> Prior:
    """``prior`` as the prior module of the variable ``name``, set up for it.

    Raises:
        ValueError: naming the variable, if the prior does not fit it.
    """
    module = as_prior(prior)
    keep_store_in(module)  # a Pyro module (to_pyro_module_) is run in local mode
    try:
        module.declare_for(shape, units)  # hyperparameters fit the weight
        # The prior's buffers go where the posterior's parameters are (also
        # under a torch.device context) and take their dtype (float64
        # hyperparameter tensors keep their precision on a float64 layer).
        tensors = itertools.chain(posterior.parameters(), posterior.buffers())
        like = next((t for t in tensors if t.is_floating_point()), None)
        if like is not None:
            module = module.to(device=like.device, dtype=like.dtype)
        if not isinstance(posterior, PointMassPosterior):  # MAP takes any support
            with local_params():
                module.check_support(shape)
    except ValueError as error:
        raise ValueError(f"prior of {name!r}: {error}") from error
    return module


class _PriorOf:
    """Picklable ``PyroSample`` prior: ``module -> module.prior[name](shape)``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module: PyroModule) -> TorchDistributionMixin:
        assert isinstance(module, VIModule)
        prior: TorchDistributionMixin = module.prior_distribution(self.name)
        return prior


class VIModule(LocalPyroModule):
    """Base class for Bayesian networks and layers (a :class:`~pyro.nn.PyroModule`).

    Subclass it exactly like :class:`torch.nn.Module`. Calling an instance as the
    outermost ``VIModule`` draws ``samples`` particles of every Bayesian weight in
    one vectorised pass and returns outputs of shape ``(samples, batch, ...)``.

    Attributes:
        samples: default number of particles of an outermost call (10).
        return_log_probs: if ``True``, outputs of PyTorch-style calls carry
            ``out.log_probs`` of shape ``(samples, 2)``: per particle, the log
            prior density and the log variational density of all weights
            (torch_blue compatibility). They are the densities of the weights
            the output was computed with: such a call draws every weight (no
            local reparameterisation or flipout, which sample outputs).

    Shape:
        - Input: whatever the ``forward`` takes, batch dimension first.
        - Output: ``(S, B, ...)`` for an output ``(B, ...)`` of ``forward``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import pyrolite_bnn as bnn
        >>> class Net(bnn.VIModule):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.body = bnn.VISequential(
        ...             bnn.VILinear(4, 8), nn.ReLU(), bnn.VILinear(8, 3))
        ...     def forward(self, x: torch.Tensor) -> torch.Tensor:
        ...         return self.body(x)
        >>> net = Net()
        >>> net(torch.randn(5, 4)).shape
        torch.Size([10, 5, 3])
        >>> net(torch.randn(5, 4), samples=2).shape
        torch.Size([2, 5, 3])
        >>> [v.site for v in net.random_variables()]
        ['body.0.weight', 'body.0.bias', 'body.2.weight', 'body.2.bias']
    """

    samples: int
    return_log_probs: bool

    def __init__(self) -> None:
        super().__init__()
        from pyrolite_bnn import _plain_roots  # imports this module

        _plain_roots.install()
        self.samples = DEFAULT_SAMPLES
        self.return_log_probs = False
        self._declared: dict[str, torch.Size] = {}
        self._unit_layouts: dict[str, UnitLayout] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled (``torch.load``, ``copy.deepcopy``): as built by ``__init__``.

        The plain-root hook must be in place in a fresh process too, or a plain
        ``nn.Sequential`` of loaded Bayesian layers would run each layer as a
        network of its own (nested particle dimensions).
        """
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        self.__dict__.setdefault("_unit_layouts", {})  # pickled before it existed
        from pyrolite_bnn import _plain_roots

        _plain_roots.install()

    # ------------------------------------------------------------------ declaration
    def declare_random_variable(
        self,
        name: str,
        shape: tuple[int, ...] | torch.Size,
        prior: object = None,
        variational: VariationalFamily | None = None,
        *,
        units: UnitLayout | None = None,
        init: Callable[[Tensor], Tensor] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Declare the attribute ``name`` as a random weight tensor of ``shape``.

        Creates ``self.prior[name]`` (a :class:`~pyrolite_bnn.Prior` module) and
        ``self.posterior[name]`` (built by ``variational``, default
        :class:`~pyrolite_bnn.MeanFieldNormal`), and makes ``self.<name>`` a Pyro
        sample site. Initialise the posterior afterwards with
        ``self.posterior[name].reset_parameters(init(...))``, or
        ``self.posterior[name].reset_parameters()`` to draw with ``init``.

        Args:
            name: attribute name, not yet an attribute of the module.
            shape: shape of one draw: a sequence of sizes ``>= 0``, or one
                size (``3`` is ``(3,)``, as torch's size arguments take it).
            prior: anything :func:`~pyrolite_bnn.distributions.priors.as_prior`
                accepts (``None``: standard Normal).
            variational: variational family (``None``: mean-field Normal).
            units: where the tensor's output units lie, for per-unit priors
                (``None``: along the first dimension, as in a ``VILinear``
                weight; see :class:`~pyrolite_bnn.variables.UnitLayout`).
            init: how the posterior mean is initialised: a function that fills
                a tensor of ``shape`` in place and returns it
                (``torch.nn.init.ones_``); the posterior's
                :attr:`~pyrolite_bnn.distributions.variational.Posterior.loc_init`.
                With it, a ``reset_parameters()`` of the posterior on its own
                (FSDP's deferred initialisation) draws the mean as the layer
                would; ``None``: such a reset keeps the mean.
            device: device of the parameters and prior buffers.
            dtype: floating dtype of the parameters and prior buffers.

        Raises:
            ValueError: if ``name`` is no identifier, is declared already or is
                an attribute of the module (a method, property, parameter,
                buffer, submodule, or the ``prior``/``posterior`` tables), or
                ``shape`` has a negative size.
            TypeError: if ``name`` is no string, ``shape`` holds a
                non-integer, or ``dtype`` is not a real floating-point dtype.
        """
        self._check_variable_name(name)
        size = _variable_size(shape)
        if "prior" not in self._modules:
            posteriors = PosteriorDict()
            self.prior = PriorDict(posteriors)
            self.posterior = posteriors
        family = MeanFieldNormal() if variational is None else variational
        if not isinstance(family, VariationalFamily):
            raise TypeError(
                "variational must be a VariationalFamily such as bnn.MeanFieldNormal()"
                f" or bnn.PointMass(), got {type(family).__name__}"
            )
        layout = UnitLayout() if units is None else units
        if not isinstance(layout, UnitLayout):
            raise TypeError(
                "units must be a pyrolite_bnn.variables.UnitLayout, got "
                f"{type(layout).__name__}"
            )
        layout.check(size)
        if init is not None and not callable(init):
            raise TypeError(
                "init must be a function that fills a tensor in place "
                f"(torch.nn.init.ones_), got {type(init).__name__}"
            )
        check_floating_dtype(dtype)
        zeros = torch.zeros(size, device=device, dtype=dtype)
        posterior = family.build(size, zeros)
        posterior.loc_init = init
        priors = self.prior
        assert isinstance(priors, PriorDict)
        priors.declare(name, prior, size, layout, posterior)
        self.posterior[name] = posterior
        self._declared[name] = size
        self._unit_layouts[name] = layout
        setattr(self, name, PyroSample(_PriorOf(name)))

    def _check_variable_name(self, name: object) -> None:
        """Refuse a name that cannot be a new random variable of this module."""
        if not isinstance(name, str):
            raise TypeError(f"random variable name must be a str, got {name!r}")
        if not name.isidentifier():
            raise ValueError(
                f"random variable name must be an identifier, got {name!r}"
            )
        owner = type(self).__name__
        if name in self._declared:
            raise ValueError(
                f"random variable {name!r} is already declared on {owner} (shape "
                f"{tuple(self._declared[name])}); declare each name once (a second "
                "declaration would replace the first one's prior and posterior)"
            )
        uses = (
            (name in _TABLES, "a table of the library's (priors, posteriors, guide)"),
            (_class_member(type(self), name), "a method or property of the class"),
            (name in self._parameters, "a parameter"),
            (name in self._buffers, "a buffer"),
            (name in self._modules, "a submodule"),
            (name in self.__dict__, "an attribute"),
        )
        use = next((what for taken, what in uses if taken), None)
        if use is not None:
            raise ValueError(
                f"random variable name {name!r} is taken on {owner}: it is {use}; "
                "choose another name"
            )

    def graph_key(self) -> tuple[Hashable, ...]:
        """The Python-level switches this module's ``forward`` reads.

        A compiled loss graph (``KullbackLeiblerLoss(compile=True)``) freezes
        whatever Python decided while it was captured; it is reused only while
        every module's key is unchanged. Subclasses with switches of their own
        (an estimator, a mode flag read in ``forward``) extend it:
        ``return (*super().graph_key(), self.my_switch)``. Public scalar
        attributes (``batch_first``, ``dropout``, ``max_norm``: see
        :func:`~pyrolite_bnn._pyro_module.public_settings`) are in it already,
        and so is each prior's :meth:`~pyrolite_bnn.Prior.graph_key` (a
        :class:`~pyrolite_bnn.CallablePrior`'s function and what it returns).
        """
        return (type(self), self.training, self._settings(), self._prior_keys())

    def _prior_keys(self) -> tuple[Hashable, ...]:
        """The :meth:`Prior.graph_key` of each declared random variable's prior."""
        keys = []
        for name, shape in self._declared.items():
            prior = self.prior[name]
            assert isinstance(prior, Prior)
            keys.append(prior.graph_key(shape))
        return tuple(keys)

    def _settings(self) -> tuple[tuple[str, Hashable], ...]:
        """:func:`public_settings`, kept until a public attribute is set."""
        settings: tuple[tuple[str, Hashable], ...] | None = self.__dict__.get(
            "_graph_settings"
        )
        if settings is None:
            settings = public_settings(self)
            object.__setattr__(self, "_graph_settings", settings)
        return settings

    def uses_moments(self) -> bool:
        """Whether this layer samples its outputs from weight moments this call.

        Layers with the ``"local"`` or ``"flipout"`` estimator return ``True``;
        in a PyTorch-style call with the generated guide their random variables
        then arrive as :class:`~pyrolite_bnn.distributions.variational.NormalMoments`
        instead of weight draws. The default is ``False``: weights are drawn.
        """
        return False

    def samples_from_moments(self) -> bool:
        """Whether the generated guide gives this layer weight moments now.

        In a PyTorch-style call: :meth:`uses_moments`, every posterior still a
        mean-field Normal (one may have been replaced since construction: the
        layer's moment estimators need all of them) and the layer not seen
        called twice in one pass (it draws from then on).
        """
        return (
            self.uses_moments()
            and not called_repeatedly(self)
            and all(
                isinstance(self.posterior[name], MeanFieldNormalPosterior)
                for name in self._declared
            )
        )

    def runs_per_particle(self) -> bool:
        """Whether this module runs its ``forward`` once per particle.

        Such a ``forward`` is one-sample code (torch_blue's modules, in
        :mod:`pyrolite_bnn.vi`) that may combine the examples of a batch
        (``h - h.mean(0)``): the layers below it then draw their weights, one
        draw per particle shared by its examples, instead of sampling each
        example's outputs from the weight moments. The default is ``False``.
        """
        return False

    def prior_distribution(self, name: str) -> Any:
        """Prior distribution of this module's random variable ``name``.

        Built by :meth:`Prior.distribution_of <pyrolite_bnn.Prior.distribution_of>`
        for this module: a :class:`~pyrolite_bnn.CallablePrior` whose
        distribution holds this module's parameters (or their ``.detach()``)
        is refused there.
        """
        prior = self.prior[name]
        assert isinstance(prior, Prior)
        return prior.distribution_of(self._declared[name], self)

    def declared_variables(self) -> dict[str, torch.Size]:
        """This module's own random variables: name -> shape of one draw."""
        return dict(self._declared)

    def unit_layout(self, name: str) -> UnitLayout:
        """Where the output units of this module's random variable ``name`` lie.

        Example:
            >>> import pyrolite_bnn as bnn
            >>> bnn.VIConvTranspose2d(4, 6, 3, groups=2).unit_layout("weight")
            UnitLayout(dim=1, groups=2)
        """
        return self._unit_layouts.get(name, UnitLayout())

    def reset_priors(self) -> None:
        """Return this module's own priors to the hyperparameters they were built with.

        The layers' ``reset_parameters`` call it (a reset layer is the layer as
        built, priors included); see :meth:`~pyrolite_bnn.Prior.reset_parameters`.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> layer = bnn.VILinear(3, 2, prior=bnn.LearnedNormalPrior(init_scale=0.5))
            >>> with torch.no_grad():
            ...     _ = layer.prior["weight"].log_scale.fill_(3.0)
            >>> layer.reset_priors()
            >>> round(layer.prior["weight"].scale().item(), 6)
            0.5
        """
        for name in self._declared:
            prior = self.prior[name]
            assert isinstance(prior, Prior)
            prior.reset_parameters()

    def random_variables(self) -> list[RandomVariable]:
        """All random variables of this network, in module order.

        Bayesian layers anywhere below this module count, inside ``bnn`` or
        plain ``torch.nn`` containers alike; site names are module paths. A
        layer used at several positions is listed once (at its first path).
        """
        from pyrolite_bnn._network import collect_variables  # imports this module

        return collect_variables(self)

    # ------------------------------------------------------------------ guides
    @property
    def guide(self) -> pyrolite_bnn.guides.ParticleGuide:
        """The variational guide (a Pyro guide callable).

        By default it samples every declared variable from its layer's posterior
        module. Assign any Pyro guide for the weights of *one* particle to replace
        it: an autoguide built on :meth:`prior_model` (``AutoNormal``,
        ``AutoLowRankMultivariateNormal``, ``AutoIAFNormal``, ``AutoDelta``...) or
        a hand-written function that samples every site (its ``pyro.param``
        statements create parameters of the guide, not of Pyro's global store).
        It is wrapped in the particle plate, set up immediately (so
        ``model.parameters()`` holds its parameters) and registered as a
        submodule. Assign ``None`` to return to the default guide; the last
        guide removed can be assigned again.

        Assigning raises ``TypeError`` for a value that is not callable or an
        autoguide built on the full Pyro model instead of :meth:`prior_model`,
        and ``ValueError`` for a guide whose sample sites or shapes are not this
        network's, or that belongs to another network.
        """
        custom = self._modules.get(_CUSTOM_GUIDE)
        if custom is not None:
            return custom  # type: ignore[return-value]
        default: ParticleGuide | None = self.__dict__.get("_default_guide")
        if default is None:
            from pyrolite_bnn.guides import ParticleGuide

            default = ParticleGuide(self)
            object.__setattr__(self, "_default_guide", default)
        return default

    @guide.setter
    def guide(self, value: Callable[..., Any] | None) -> None:
        # Reached through __setattr__ below (torch.nn.Module.__setattr__ would
        # otherwise register a module value before any property setter runs).
        self._set_guide(value)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            self.__dict__.pop("_graph_settings", None)  # see _settings
        if name == "guide":
            self._set_guide(value)
            return
        if name == "samples":  # refused where it is set, not at the next call
            value = _particles.check_samples(value)
        if isinstance(value, Tensor) and name in self.__dict__.get("_declared", ()):
            raise AttributeError(
                f"{type(self).__name__}.{name} is a random variable, not a "
                "tensor to replace: set its posterior mean in place "
                f"(with torch.no_grad(): layer.{name}.copy_(value)), or "
                f"layer.posterior[{name!r}].reset_parameters(value)"
            )
        super().__setattr__(name, value)

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        """``torch.nn.Module.register_parameter``; refuses ``torch.nn.utils.prune``.

        Pruning a random variable (``prune.l1_unstructured(layer, "weight")``)
        registers ``weight_orig`` first and then failed with a bare
        ``KeyError: 'weight'``, the layer left holding the extra parameter:
        it is refused here, before anything changes, naming what to prune.

        Raises:
            TypeError: for ``<variable>_orig``, the name pruning registers.
        """
        variable = name.removesuffix("_orig")
        if variable != name and variable in self.__dict__.get("_declared", ()):
            raise TypeError(
                f"{type(self).__name__}.{variable} is a random variable, not a "
                "parameter: torch.nn.utils.prune cannot prune it. Prune its "
                "posterior mean, prune.l1_unstructured(layer.posterior"
                f"[{variable!r}], 'loc_unconstrained', amount=...) for the "
                "default Normal posterior: mode='mean' predictions use the pruned "
                "weights, while sampled particles still draw each pruned weight "
                "with its spread, N(0, sigma^2); call prune.remove before "
                "bnn.to_deterministic. Or prune the plain copy, "
                "bnn.to_deterministic(model)"
            )
        super().register_parameter(name, param)

    def _set_guide(self, value: Any) -> None:
        from pyrolite_bnn.guides import ParticleGuide, check_guide

        current = self._modules.get(_CUSTOM_GUIDE)
        detached = self.__dict__.get("_detached_guide")
        if value is None:
            if current is not None:
                delattr(self, _CUSTOM_GUIDE)
                object.__setattr__(self, "_detached_guide", current)
            return
        check_guide(value)
        # The last two wrappers of this network (assigned, and removed by the
        # last change) are reused: Pyro cannot register a module that has run
        # into a module tree anew.
        for known in (current, detached):
            if isinstance(known, ParticleGuide) and (
                value is known or value is known.inner
            ):
                wrapped = known
                break
        else:
            wrapped = ParticleGuide.wrap(self, value)
        if wrapped is current:
            return
        if wrapped is detached:
            self.readopt(_CUSTOM_GUIDE, wrapped)
        else:
            try:
                super().__setattr__(_CUSTOM_GUIDE, wrapped)
            except AssertionError as error:  # Pyro: module already ran on its own
                raise ValueError(
                    "assign the guide to the network before calling it: a PyroModule "
                    "guide that has already run cannot join the network's module tree"
                ) from error
            try:
                wrapped.setup()
            except Exception:
                if current is None:
                    delattr(self, _CUSTOM_GUIDE)
                else:
                    self.readopt(_CUSTOM_GUIDE, current)
                raise
        object.__setattr__(self, "_detached_guide", current)

    def prior_model(self, *args: Any, **kwargs: Any) -> None:
        """Pyro model of the weights alone, for one particle: samples each prior.

        Build Pyro autoguides on it (arguments are ignored)::

            model.guide = AutoLowRankMultivariateNormal(
                model.prior_model, init_loc_fn=model.init_loc_fn, rank=10)
        """
        for variable in self.random_variables():
            prior = variable.module.prior_distribution(variable.name)
            pyro.sample(variable.site, prior)

    def init_loc_fn(self, site: dict[str, Any]) -> Tensor:
        """Autoguide ``init_loc_fn``: start at the layers' (Kaiming) posterior means.

        Pyro's default initialisation puts every weight at zero, which makes all
        hidden units of a layer identical at the start; this keeps the same
        initialisation as the default guide. Unknown sites fall back to
        ``init_to_feasible``.
        """
        for variable in self.random_variables():
            if variable.site == site["name"]:
                return variable.layer_posterior.mean().detach().clone()
        return init_to_feasible(site)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        """Like ``torch.nn.Module``, without the inference-machinery children.

        Priors and posteriors are listed by ``module.prior`` and
        ``module.posterior``; an assigned guide by ``module.guide``.
        """
        lines = [line for line in self.extra_repr().split("\n") if line]
        for key, module in self._modules.items():
            if key in NOT_NETWORK or module is None:
                continue
            child = repr(module).replace("\n", "\n  ")
            lines.append(f"({key}): {child}")
        name = type(self).__name__
        if not lines:
            return f"{name}()"
        if len(lines) == 1 and not self._modules.keys() - NOT_NETWORK:
            return f"{name}({lines[0]})"
        return name + "(\n  " + "\n  ".join(lines) + "\n)"

    # ------------------------------------------------------------------ calling
    def __call__(self, *args: Any, samples: int | None = None, **kwargs: Any) -> Any:
        """Run the network; the outermost call adds the particle dimension.

        Args:
            *args: inputs of ``forward``.
            samples: number of particles for this call (outermost call only;
                default :attr:`samples`).
            **kwargs: keyword inputs of ``forward``.
        """
        # The call machinery imports this module.
        from pyrolite_bnn import _plain_roots

        # What a call sets in the library's context variables (particles,
        # drawn weights, facts) must not outlive it, even where a Ctrl-C
        # skipped a restore: an outermost call runs in its own context
        # (in_own_context), and so does a layer of a plain network, whose
        # call runs in the caller's. The layers of a VIModule network run in
        # its call's context: they see each other's context variables, as
        # the modules of a torch model do.
        if _plain_roots.in_running_network():
            if samples is not None:
                raise ValueError(
                    "samples= can only be given to the outermost VIModule call"
                )
            state = _particles.current()
            if state is not None and isinstance(state.root, VIModule):
                return self._nested_call(args, kwargs)
            return in_own_context(self._nested_call, args, kwargs)
        if _plain_roots.open_pending_root(self, args, kwargs, samples):
            # The first Bayesian layer of a plain network: the network's call
            # is open in the caller's context, for its later layers too.
            return in_own_context(self._first_layer_of_plain_network, args, kwargs)
        return in_own_context(self._outermost_call, samples, args, kwargs)

    def _nested_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A call inside a running network: a layer of it."""
        try:
            if current_draws() is not None:  # weights drawn: no Pyro needed
                output = nn.Module.__call__(self, *args, **kwargs)
            else:
                output = LocalPyroModule.__call__(self, *args, **kwargs)
        except _particles.LayoutError as error:
            state = _particles.current()
            root = None if state is None else state.root
            named = naming_layer(error, self, root)
            if named is None:  # a layer inside this one is named
                raise
            raise named from error
        _particles.note_folded_output(output)
        return output

    def _first_layer_of_plain_network(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """The call that opened a plain network's call (see ``_plain_roots``)."""
        from pyrolite_bnn import _plain_roots

        result = nn.Module.__call__(self, *args, **kwargs)
        _plain_roots.note_output(self, result)
        _particles.note_folded_output(result)
        return result

    def _outermost_call(
        self, samples: int | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """The outermost call of the network: particles drawn, output unfolded."""
        from pyrolite_bnn import _forward
        from pyrolite_bnn._network import facts_kept_for_the_call

        # A count asked of a plain module around this network (predict(wrapper)).
        requested = None if samples is not None else _particles.requested_samples(self)
        count = samples if samples is not None else requested or self.samples
        with facts_kept_for_the_call():
            state, device = _forward.prepare(self, args, kwargs, count)
            # torch's size errors name folded sizes (key padding: AssertionError).
            with _particles.fold_hinted(state), local_params():
                if pyro_wrapped():
                    _forward.refuse_particles_under_mcmc(self, count)
                    return _forward.pyro_run(self, state, device, args, kwargs)
                return _forward.pytorch_run(self, state, device, args, kwargs)

    def unfold_output(self, output: Any, state: _particles.ParticleState) -> Any:
        """This module's folded output as the outermost call returns it.

        The default puts the particle dimension in front of each tensor's
        leading (batch) dimension, ``(B * S, ...)`` -> ``(S, B, ...)``. A layer
        whose outputs are folded elsewhere (sequence-first layers: ``(L * S,
        B, ...)``, hidden states ``(layers, B * S, H)``) overrides it.
        """
        return _particles.unfold(output, state)

    def __getattr__(self, name: str) -> Any:
        if name in self.__dict__.get("_declared", ()):
            alone = particle_weights()
            if alone is not None:
                weight = alone.get((id(self), name))
                if weight is not None:
                    return weight
            draws = current_draws()
            if draws is not None and draws.moments_handed_out((id(self), name)):
                # A second read: the layer runs twice in one pass, or a plain
                # network's call ended by KeyboardInterrupt left its draws set.
                from pyrolite_bnn import _plain_roots

                _plain_roots.close_stale_frame()
                draws = current_draws()
            if draws is not None:
                value = draws.get((id(self), name))
                if value is None:
                    raise RuntimeError(
                        f"{type(self).__name__}.{name} was not drawn for this call: "
                        "the layer is not a submodule of the network being called "
                        "(keep Bayesian layers as attributes or inside torch or bnn "
                        "containers, not in plain Python lists or dicts)"
                    )
                return value
            sites = current_sites()
            if sites is not None:
                return sites.sample(self, name)
            if _particles.outside_any_call():
                # Outside any call and Pyro handler: the posterior mean, as a
                # torch user reads (and initialises in place) a weight, not
                # the prior draw of a bare PyroSample.
                with local_params():
                    return self.posterior[name].mean()
        return super().__getattr__(name)


# Children of a VIModule that belong to the inference machinery, not the network.
NOT_NETWORK = frozenset({_CUSTOM_GUIDE, "prior", "posterior"})

# Attributes a VIModule sets on itself when its guide is first read or replaced
# (not modules, so not in NOT_NETWORK): they belong to the inference machinery.
GUIDE_STATE = frozenset({"_default_guide", "_detached_guide"})
