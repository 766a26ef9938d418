"""Guides: the variational distribution of a network's weights, as a Pyro guide.

:class:`ParticleGuide` is what :attr:`VIModule.guide <pyrolite_bnn.VIModule.guide>`
returns. It opens the same particle plate as the model and then either

* samples every declared random variable from its layer's posterior module
  (the *generated* guide: one ``pyro.sample`` per weight tensor, shapes taken
  from the layers' declarations), or
* runs a user-supplied Pyro guide for one particle (an autoguide built on
  :meth:`VIModule.prior_model <pyrolite_bnn.VIModule.prior_model>`, or a
  hand-written function); the plate broadcasts it to all particles. Its
  ``pyro.param`` statements create parameters of the guide module
  (``pyro_params``), not entries of Pyro's global store, so they are in
  ``model.parameters()`` like every other parameter.

It is a Pyro guide in every sense: ``pyro.infer.SVI``, ``Predictive`` and the
ELBOs accept it unchanged, with the same ``(*args, samples=None)`` arguments as
the Pyro model from :meth:`KullbackLeiblerLoss.pyro_model
<pyrolite_bnn.KullbackLeiblerLoss.pyro_model>`. Like Pyro's autoguides it
offers :meth:`~ParticleGuide.median`, :meth:`~ParticleGuide.quantiles`,
:meth:`~ParticleGuide.get_posterior` and :meth:`~ParticleGuide.call`.

What cannot work is refused with an error that names the cause:
``Trace_ELBO(vectorize_particles=True)`` and ``Predictive(parallel=True)`` (use
``samples=`` particles), the Jit ELBOs (Pyro looks parameters up in its global
parameter store), one guide module (an autoguide) for two networks (a guide
function serves any number, each network with parameters of its own), a guide
whose sites or shapes are not the network's, and an autoguide built on the
full Pyro model instead of ``model.prior_model`` (when it first runs the
model).
"""

from __future__ import annotations

import gc
import inspect
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import (
    AutoContinuous,
    AutoDelta,
    AutoGaussian,
    AutoGuide,
    AutoGuideList,
    AutoLaplaceApproximation,
    AutoMessenger,
)
from pyro.ops.jit import CompiledFunction
from pyro.poutine import Trace
from pyro.poutine.messenger import unwrap
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn

from pyrolite_bnn import _particles
from pyrolite_bnn._handlers import called_from, running_frame
from pyrolite_bnn._network import (
    check_bayesian_network,
    collect_variables,
    outermost_bayesian,
    runs_on_its_own,
)
from pyrolite_bnn._pyro_module import (
    LocalPyroModule,
    ParamsInModule,
    ParamStoreModule,
    constrained_tensor_names,
    is_positive_constraint,
    local_params,
)
from pyrolite_bnn._scales import tensor_parameters
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.distributions.variational import elementwise_quantiles
from pyrolite_bnn.module import DEFAULT_SAMPLES, VIModule
from pyrolite_bnn.variables import RandomVariable

__all__ = ["ParticleGuide", "check_guide", "guide_of"]

# Submodule holding the parameters of an assigned guide's pyro.param statements.
_PYRO_PARAMS = "pyro_params"

# The wrapper of each assigned guide, by _wrapper_key (the wrapper keeps the
# guide and its network alive, so the ids are not reused while an entry exists).
_WRAPPERS: weakref.WeakValueDictionary[tuple[int, int], ParticleGuide] = (
    weakref.WeakValueDictionary()
)


class ParticleGuide(LocalPyroModule):
    """The guide of a :class:`~pyrolite_bnn.VIModule`, vectorised over particles.

    Besides being called by Pyro, it offers what Pyro's autoguides offer:
    :meth:`median`, :meth:`quantiles`, :meth:`get_posterior` and :meth:`call`.
    With the generated guide they are computed in closed form from the
    layers' posterior modules; with an assigned guide they are that guide's.

    Args:
        network: the network whose weights it covers.
        inner: ``None`` for the generated guide from the layers' posterior
            modules, or any Pyro guide for the weights of one particle. Its
            ``pyro.param`` statements create parameters of this module, in
            the submodule ``pyro_params``.

    Raises:
        TypeError: if ``inner`` is no guide (see :func:`check_guide`).
        ValueError: if ``inner`` is a Pyro module that already ran in another
            module tree (another network's guide, or called on its own).

    Example:
        >>> import torch, pyro
        >>> import pyrolite_bnn as bnn
        >>> net = bnn.VILinear(3, 2)
        >>> trace = pyro.poutine.trace(net.guide).get_trace(samples=4)
        >>> trace.nodes["weight"]["value"].shape
        torch.Size([4, 1, 2, 3])
        >>> sorted(net.guide.median())
        ['bias', 'weight']
        >>> net.guide.quantiles([0.05, 0.5, 0.95])["weight"].shape
        torch.Size([3, 2, 3])
    """

    def __init__(
        self, network: nn.Module, inner: Callable[..., Any] | None = None
    ) -> None:
        check_bayesian_network(network, "ParticleGuide needs")
        if inner is not None:
            check_guide(inner)
            _refuse_laplace_approximation(inner)
            _warn_structure_without_data(inner)
        super().__init__()
        # A tuple hides the network from nn.Module registration (no cycle).
        self._network = (network,)
        try:
            self.inner = inner
        except AssertionError as error:  # Pyro: a submodule already ran elsewhere
            raise ValueError(
                f"this {type(inner).__name__} has already run outside this network "
                "(as another network's guide, or called on its own), and Pyro "
                "cannot move a module that has run into another module tree; build "
                f"a new guide for this network, e.g. {type(inner).__name__}"
                "(model.prior_model, init_loc_fn=model.init_loc_fn), and assign it "
                "before calling it"
            ) from error

    @classmethod
    def wrap(cls, network: nn.Module, guide: Callable[..., Any]) -> ParticleGuide:
        """The ``ParticleGuide`` of ``network`` running ``guide`` for one particle.

        Reuses the wrapper made when ``guide`` was assigned to ``network``
        before (so a guide can be assigned again after ``model.guide = None``).
        A guide function (any guide that is no module) serves any number of
        networks: its ``pyro.param`` statements create parameters of each
        network's wrapper.

        Raises:
            ValueError: if ``guide`` is a guide module (an autoguide, a
                ``PyroModule``) of another network, or another network's
                ``ParticleGuide``: one module serving two networks would share
                its parameters.
        """
        if isinstance(guide, ParticleGuide):
            if guide.network is not network:
                inner = guide if guide.inner is None else guide.inner
                raise ValueError(_two_networks(guide.network, inner))
            return guide
        key = _wrapper_key(guide, network)
        previous = _WRAPPERS.get(key)
        if previous is not None and previous.network is not network:
            # The other network may be unreachable, kept only by its reference
            # cycles until the collector runs (a network built per fold).
            previous = None
            gc.collect()
            previous = _WRAPPERS.get(key)
        if previous is not None:
            if previous.network is not network:
                raise ValueError(_two_networks(previous.network, guide))
            return previous
        return cls(network, guide)

    def variables(self) -> list[RandomVariable]:
        """The random variables of the network, in site order."""
        return collect_variables(self.network)

    @property
    def network(self) -> nn.Module:
        """The network this guide belongs to."""
        return self._network[0]

    def _names_root(self) -> nn.Module:
        """The network: the guide's parameters are named by their paths in it."""
        return self.network

    def setup(self) -> None:
        """Run an assigned guide once, outside the particle plate, and check it.

        Autoguides create parameters lazily on their first call from the plates
        they see; run once without the particle plate they learn one
        distribution per weight tensor, which the plate then broadcasts, and
        ``model.parameters()`` holds them before the first step.

        Raises:
            TypeError: if the guide cannot run without arguments (an autoguide
                built on the full Pyro model instead of ``model.prior_model``).
            ValueError: if the guide's sample sites or their shapes are not the
                network's random variables.
        """
        inner = self.inner
        if inner is None:
            return
        name = type(inner).__name__
        try:
            with local_params(), poutine.block(), torch.no_grad(), self._params():
                trace = poutine.trace(inner).get_trace()
        except TypeError as error:
            # An autoguide of the full Pyro model needs its arguments (x, y);
            # any other TypeError is the guide's own, passed on with its text.
            advice = (
                f": build autoguides on the network's weight model, e.g. "
                f"{name}(model.prior_model, init_loc_fn=model.init_loc_fn)"
                if "argument" in str(error) and "positional" in str(error)
                else ""
            )
            raise TypeError(f"could not set up {name} ({error}){advice}") from error
        _check_sites(inner, trace, self.network)
        # Guides that initialise from the prior's mean (init_to_mean,
        # AutoNormalMessenger's default) get parameters made from the layers'
        # priors as they are: expanded, stride 0 (in-place optimiser steps
        # refuse them), or the prior's loc buffer itself (a MOPED prior, a
        # bias of one weight), which training would then move. Each gets its
        # own memory (the parameter objects stay).
        owned = [*self._param_store().parameters()]
        if isinstance(inner, torch.nn.Module):
            owned += inner.parameters()
        for parameter in owned:
            parameter.data = parameter.data.clone(memory_format=torch.contiguous_format)
        _WRAPPERS[_wrapper_key(inner, self.network)] = self

    def weight_parameters(self) -> list[Tensor]:
        """The parameters this guide draws the network's weights from.

        The assigned guide's (its modules' and its ``pyro.param``
        statements'); for the generated guide, the layers' posterior
        modules', which an assigned guide leaves unused.

        Example:
            >>> from pyro.infer.autoguide import AutoDiagonalNormal
            >>> import pyrolite_bnn as bnn
            >>> net = bnn.VILinear(3, 2)
            >>> len(net.guide.weight_parameters())  # loc and rho of weight and bias
            4
            >>> net.guide = AutoDiagonalNormal(net.prior_model)
            >>> len(net.guide.weight_parameters())  # its loc and scale
            2
        """
        if self.inner is None:
            return [
                parameter
                for variable in self.variables()
                for parameter in variable.layer_posterior.parameters()
            ]
        return list(self.parameters())

    def positive_parameters(self) -> dict[str, Tensor]:
        """The assigned guide's parameters declared with a positive constraint.

        Pyro's guides hold their scales so: ``pyro.param(...,
        constraint=positive)``, ``AutoNormal``'s ``scales``,
        ``AutoLowRankMultivariateNormal``'s ``scale``. Their unconstrained
        values, by their names in :meth:`named_parameters`, read from the
        constraints the guide's modules record with their parameters (a
        guide saved whole and loaded again has them too). Empty for the
        generated guide, whose posteriors declare their scales
        (``rho_unconstrained``).

        Example:
            >>> from pyro.infer.autoguide import AutoDiagonalNormal
            >>> import pyrolite_bnn as bnn
            >>> net = bnn.VILinear(3, 2)
            >>> net.guide = AutoDiagonalNormal(net.prior_model)
            >>> list(net.guide.positive_parameters())
            ['inner.scale_unconstrained']
        """
        positive = {
            id(parameter)
            for module in self.modules()
            for name in constrained_tensor_names(module, is_positive_constraint)
            for parameter in tensor_parameters(module, name)
        }
        return {n: p for n, p in self.named_parameters() if id(p) in positive}

    def forward(self, *args: Any, samples: int | None = None, **kwargs: Any) -> Any:
        """Draw all weights for ``samples`` particles (default ``network.samples``).

        Positional and keyword arguments (the data, when called by Pyro's ELBOs)
        are accepted and ignored.
        """
        network = self.network
        check_pyro_call()
        default = getattr(network, "samples", DEFAULT_SAMPLES)
        count = _particles.check_samples(default if samples is None else samples)
        _, device = _particles.leading_input(args, kwargs)
        if device is None:
            device = _parameter_device(network)
        with _particles.particle_plate(count, device):
            if self.inner is not None:
                with self._params():
                    return self.inner()
            return {
                v.site: v.layer_posterior(v.site) for v in collect_variables(network)
            }

    def _params(self) -> ParamsInModule:
        """Handler keeping the assigned guide's ``pyro.param`` parameters here."""
        return ParamsInModule(self._param_store)

    def _param_store(self) -> ParamStoreModule:
        # Read from the table: attribute access would make Pyro report every
        # parameter of this plain module a second time.
        store = self._modules.get(_PYRO_PARAMS)
        if not isinstance(store, ParamStoreModule):
            store = ParamStoreModule()
            self.add_module(_PYRO_PARAMS, store)
        return store

    def call(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Like :meth:`forward`, but the drawn values as a tuple sorted by site.

        Pyro's ``AutoGuide.call``. Needs a guide that returns its draws (the
        generated guide and Pyro's autoguides do).
        """
        result = self(*args, **kwargs)
        if not isinstance(result, dict):
            raise TypeError(
                f"guide {type(self.inner).__name__} returned "
                f"{type(result).__name__}, not a dict of its draws"
            )
        return tuple(value for _, value in sorted(result.items()))

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Posterior median of every weight, by site name.

        Values have the shape of one draw (no particle dimension), new tensors.
        For the generated guide: each posterior module's
        :meth:`~pyrolite_bnn.distributions.variational.Posterior.median` (the
        mean of a mean-field Normal, the value of a point mass, read from the
        parameters). For an assigned guide: its ``median()``; a guide whose posterior is
        a point mass (``AutoLaplaceApproximation``, a MAP guide until
        ``laplace_approximation()``) gives its value.

        Raises:
            NotImplementedError: for a guide without a posterior median
                (``AutoIAFNormal``, a hand-written guide), naming the guide;
                ``predict(..., mode="sample")`` needs none.
        """
        if self.inner is not None:
            # Pyro's medians may be the guide's own parameters (AutoDelta's
            # values, AutoLaplaceApproximation's loc): copies, without gradients.
            medians = _guide_median(self.inner, args, kwargs)
            return {site: value.detach().clone() for site, value in medians.items()}
        return {v.site: v.layer_posterior.median().clone() for v in self.variables()}

    @torch.no_grad()
    def quantiles(
        self, quantiles: Sequence[float] | Tensor, *args: Any, **kwargs: Any
    ) -> dict[str, Tensor]:
        """Posterior quantiles of every weight, by site name.

        As Pyro's ``AutoNormal.quantiles``: each value has a leading dimension
        over ``quantiles``, then the shape of one draw. For the generated guide a
        mean-field Normal gives ``loc + scale * Phi^-1(q)`` and a point mass its
        value at every ``q``; an assigned guide (or part of an
        ``AutoGuideList``) whose posterior is a point mass (``AutoDelta``,
        ``AutoLaplaceApproximation``) likewise, as in :meth:`median`.

        Args:
            quantiles: probabilities in ``(0, 1)``.
            *args: passed on to an assigned guide's ``quantiles``.
            **kwargs: passed on to an assigned guide's ``quantiles``.

        Raises:
            NotImplementedError: for a guide or posterior without quantiles
                (``AutoIAFNormal``, a hand-written guide), naming the guide.
        """
        if self.inner is not None:
            return _guide_quantiles(self.inner, quantiles, args, kwargs)
        result = {}
        for variable in self.variables():
            distribution = variable.layer_posterior.distribution()
            result[variable.site] = elementwise_quantiles(
                distribution, quantiles, type(variable.layer_posterior).__name__
            )
        return result

    def get_posterior(self, *args: Any, **kwargs: Any) -> Any:
        """The variational distribution, for one particle.

        For the generated guide a dict from site name to the distribution of
        that weight tensor (all its dimensions are event dimensions); for an
        assigned guide whatever its ``get_posterior`` returns (Pyro's
        ``AutoContinuous`` guides: the joint distribution of all weights,
        flattened and concatenated).

        Raises:
            NotImplementedError: for an assigned guide without ``get_posterior``.
        """
        if self.inner is not None:
            method = getattr(self.inner, "get_posterior", None)
            if method is None:
                raise NotImplementedError(
                    f"guide {type(self.inner).__name__} has no get_posterior() method"
                )
            return method(*args, **kwargs)
        return {v.site: v.layer_posterior.distribution() for v in self.variables()}


def _laplace_approximation_refused(*args: Any, **kwargs: Any) -> Any:
    """``AutoLaplaceApproximation.laplace_approximation`` of a network's guide."""
    raise NotImplementedError(
        "AutoLaplaceApproximation.laplace_approximation() of a network's guide "
        "sees only model.prior_model, which scores no data: its covariance would "
        "be the prior's, not the posterior's. For a Laplace posterior of the "
        "trained network use bnn.laplace(model, x, y, likelihood); the guide's "
        "median() is the MAP value"
    )


def _refuse_laplace_approximation(guide: Callable[..., Any]) -> None:
    """Make ``laplace_approximation()`` of an assigned Laplace guide refuse.

    It reads ``guide.model``, the network's ``prior_model``: the Hessian of
    the prior alone, silently (posterior variances 120-215 times too wide).
    """
    parts = list(guide) if isinstance(guide, AutoGuideList) else [guide]
    for part in parts:
        if isinstance(part, AutoLaplaceApproximation):
            object.__setattr__(
                part, "laplace_approximation", _laplace_approximation_refused
            )


def _warn_structure_without_data(guide: Callable[..., Any]) -> None:
    """Warn that an assigned ``AutoGaussian`` couples no two weight tensors.

    ``AutoGaussian`` takes its dependencies from the model it is built on; the
    network's ``prior_model`` scores no data, so no two sites depend on each
    other there and the guide factorises over the weight tensors (between
    weight and bias of a linear regression: correlation 0 where the posterior
    has 0.28, epistemic variance 23 % low).
    """
    parts = list(guide) if isinstance(guide, AutoGuideList) else [guide]
    if any(
        isinstance(part, AutoGaussian) and _sample_site_count(part.model) > 1
        for part in parts
    ):
        warn_at_caller(
            "AutoGaussian takes its dependency structure from the model it is "
            "built on, and model.prior_model has no data: no two weight tensors "
            "depend on each other there, so this guide is independent between "
            "them (a Gaussian per weight tensor). For a posterior that couples "
            "the weights use AutoMultivariateNormal or "
            "AutoLowRankMultivariateNormal (or AutoStructured with dependencies)"
        )


def _sample_site_count(model: Callable[[], Any]) -> int:
    """How many sample sites one run of ``model`` (a weight model) has."""
    with local_params(), poutine.block():
        trace = poutine.trace(model).get_trace()
    return sum(1 for site in trace.nodes.values() if site["type"] == "sample")


def check_guide(guide: object) -> None:
    """Refuse what cannot be a guide of one particle, with an error naming it.

    A network's guide is called without arguments, ``guide()``, and samples
    the network's weight sites for one particle (the particle plate around it
    broadcasts them): a Pyro autoguide built on ``model.prior_model``, or a
    function. ``model.guide = ...`` and :class:`ParticleGuide` check it
    before it first runs.

    Args:
        guide: the guide to check.

    Raises:
        TypeError: for something not callable (``"auto"``), a class (an
            autoguide class not yet built on the network's weight model) or a
            callable that needs arguments (a torch module's ``forward(input)``).

    Example:
        >>> check_guide("auto")
        Traceback (most recent call last):
        ...
        TypeError: guide must be a callable Pyro guide, got str
    """
    example = "AutoNormal(model.prior_model, init_loc_fn=model.init_loc_fn)"
    if isinstance(guide, type):
        name = guide.__name__
        raise TypeError(
            f"guide must be a Pyro guide object, got the class {name}: build it "
            f"on the network's weight model, e.g. {example.replace('AutoNormal', name)}"
        )
    if not callable(guide):
        raise TypeError(
            f"guide must be a callable Pyro guide, got {type(guide).__name__}"
        )
    # A module's call signature is (*args, **kwargs): its forward's tells.
    function = guide.forward if isinstance(guide, nn.Module) else guide
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a callable without a signature: run it
        return
    try:
        signature.bind()
    except TypeError as error:
        raise TypeError(
            f"guide {type(guide).__name__} cannot be called without arguments "
            f"({error}): a network's guide is called as guide() and samples the "
            f"weights of one particle, as Pyro's autoguides built on the "
            f"network's weight model do, e.g. {example}"
        ) from None


def guide_of(model: nn.Module) -> ParticleGuide:
    """The guide ``model``'s calls draw their weights from.

    A ``VIModule``'s own (``model.guide``). A plain module holding Bayesian
    layers runs them as one network with its generated guide, except around
    one network that runs on its own (with an assigned guide), whose guide
    it takes. ``predict`` and ``to_deterministic`` read the weights from it.

    Example:
        >>> import torch
        >>> import pyrolite_bnn as bnn
        >>> plain = torch.nn.Sequential(bnn.VILinear(2, 3), bnn.VILinear(3, 1))
        >>> sorted(guide_of(plain).median())
        ['0.bias', '0.weight', '1.bias', '1.weight']
    """
    if isinstance(model, VIModule):
        return model.guide
    inner = outermost_bayesian(model)
    if len(inner) == 1 and runs_on_its_own(inner[0]):
        return inner[0].guide
    return ParticleGuide(model)


def check_pyro_call() -> None:
    """Refuse Pyro inference set-ups the particle plate cannot serve.

    Called by the network's Pyro model and guide when they start. The network
    draws all its particles in one vectorised pass (``samples=``); an extra
    plate around it from ``Trace_ELBO(vectorize_particles=True)`` or
    ``Predictive(parallel=True)`` would need a second particle dimension. The
    Jit ELBOs look every parameter up in Pyro's global parameter store, where
    this library's module-local parameters never are.

    Raises:
        NotImplementedError: naming the option and what to use instead.
    """
    _particles.refuse_outer_plates()
    if _inside_jit_compile():
        raise NotImplementedError(
            "Pyro's Jit ELBOs (JitTrace_ELBO, JitTraceMeanField_ELBO, "
            "JitTraceGraph_ELBO, ...) cannot train pyrolite_bnn networks in Pyro "
            "1.9: pyro.ops.jit looks every parameter up by name in "
            "Pyro's global parameter store, and this library keeps parameters local "
            "to each network (model.parameters(); two networks never share them), "
            "so they are never there. Use Trace_ELBO or TraceMeanField_ELBO, or "
            "bnn.KullbackLeiblerLoss(..., compile=True) with "
            "loss_fn.model_loss(model, x, y) for a compiled training step"
        )


def autoguide_running_model() -> AutoGuide | AutoMessenger | None:
    """The autoguide that is running the caller as its model, or ``None``.

    An ``AutoGuide`` runs its model once, on its first call, to find the
    sample sites it covers (``AutoGuide._setup_prototype``, under an
    ``InitMessenger``, as MCMC's initialisation does); an ``AutoMessenger``
    runs its model at every call.
    """
    frame = running_frame(AutoGuide._setup_prototype, AutoMessenger.__call__)
    if frame is None:
        return None
    guide = frame.f_locals.get("self")
    return guide if isinstance(guide, (AutoGuide, AutoMessenger)) else None


def _inside_jit_compile() -> bool:
    """Whether ``pyro.ops.jit`` is running the function it is about to compile."""
    return called_from(CompiledFunction.__call__)


def _wrapper_key(guide: object, network: nn.Module) -> tuple[int, int]:
    """The key of ``guide``'s wrapper for ``network`` in ``_WRAPPERS``.

    A guide module owns the parameters it creates: one wrapper, whatever the
    network. A guide function's ``pyro.param`` statements create parameters of
    the wrapper running it: one wrapper per network.
    """
    return (id(guide), 0 if isinstance(guide, nn.Module) else id(network))


def _two_networks(owner: nn.Module, guide: object) -> str:
    name = type(guide).__name__
    if not isinstance(guide, nn.Module):  # in another network's ParticleGuide
        function = getattr(guide, "__name__", name)
        return (
            f"this is the guide of another network ({type(owner).__name__}), "
            "holding that network's guide parameters; assign the guide function "
            f"itself, other.guide = {function}: each network then gets "
            "parameters of its own"
        )
    build = name if isinstance(guide, (AutoGuide, AutoMessenger)) else "AutoNormal"
    return (
        f"this {name} is already the guide of another network "
        f"({type(owner).__name__}); one guide object cannot serve two networks "
        f"(they would share its parameters). Build one per network, e.g. "
        f"other.guide = {build}(other.prior_model, init_loc_fn=other.init_loc_fn)"
    )


def _check_sites(guide: object, trace: Trace, network: nn.Module) -> None:
    """Check that a guide's trace samples exactly the network's weights.

    The error names what is wrong; it advises building an autoguide on
    ``model.prior_model`` only where the autoguide was built on another model.
    """
    declared = {v.site: v.shape for v in collect_variables(network)}
    plates = sorted(
        site for site, node in trace.nodes.items() if site_is_subsample(node)
    )
    drawn: dict[str, torch.Size] = {}
    for site, node in trace.nodes.items():
        infer = node.get("infer") or {}
        if node["type"] != "sample" or node["is_observed"] or site in plates:
            continue
        value = node["value"]
        if isinstance(value, Tensor) and not infer.get("is_auxiliary", False):
            drawn[site] = value.shape
    name = type(guide).__name__
    autoguide = isinstance(guide, (AutoGuide, AutoMessenger))
    if not autoguide:
        name = f"guide {getattr(guide, '__qualname__', name)}"
    if plates:
        raise ValueError(f"{name} opens {_plates_refused(guide, plates)}")
    on_prior_model = isinstance(guide, (AutoGuide, AutoMessenger)) and _built_on(
        guide, getattr(network, "prior_model", None)
    )
    if not autoguide:
        hint = "a guide must sample each weight of one particle with its shape"
    elif on_prior_model:
        hint = (
            "a network's guide must sample each of the network's weight sites, "
            "for one particle, with its shape"
        )
    else:
        hint = f"build it on model.prior_model: {name}(model.prior_model, ...)"
    if drawn.keys() != declared.keys():
        missing = sorted(declared.keys() - drawn.keys())
        extra = sorted(drawn.keys() - declared.keys())
        renamed = {
            site: [e for e in extra if e.startswith(f"{site}_")] for site in missing
        }
        if missing and all(renamed.values()):
            first = missing[0]
            hint = (
                "it samples the sites of a reparameterised model (poutine.reparam "
                f"draws a reparameterised site under another name: {first!r} as "
                f"{renamed[first][0]!r}), but a network's guide must draw the "
                "network's own weight sites, on which the PyTorch-style call, "
                "bnn.predict and median() run the network. Build it on "
                "model.prior_model itself, not on poutine.reparam(model.prior_model, "
                "...); reparameterised weights work where no network guide is "
                "replayed, e.g. MCMC on poutine.reparam(loss_fn.pyro_model(model), "
                "config) with samples=1"
            )
        elif drawn and not extra and isinstance(guide, (AutoGuide, AutoMessenger)):
            hint = (
                "it samples only some of them (a part built on "
                "poutine.block(model.prior_model, ...)?): assign an "
                "AutoGuideList(model.prior_model) whose parts together sample "
                "every weight"
            )
        raise ValueError(
            f"{name} does not sample the network's weights: missing sites "
            f"{missing}, unknown sites {extra} (the network declares "
            f"{sorted(declared)}); {hint}"
        )
    for site, shape in declared.items():
        if drawn[site] != shape:
            if on_prior_model:
                hint = (
                    "built on model.prior_model, which draws the declared shape, "
                    "it takes its values' shapes from its initialisation: its "
                    "init_loc_fn (e.g. init_to_value) must give each site a value "
                    "of the weight's shape"
                )
            raise ValueError(
                f"{name} draws site {site!r} with shape {tuple(drawn[site])} but "
                f"the network declares {tuple(shape)}; {hint}"
            )


def _built_on(guide: AutoGuide | AutoMessenger, model: object) -> bool:
    """Whether an autoguide was built on ``model`` (through Pyro's handlers)."""
    try:
        built_on = guide.model
    except (AttributeError, TypeError):  # a pickled copy has none
        return False
    while True:
        inner = inspect.unwrap(unwrap(built_on))
        if inner is built_on:
            return bool(built_on == model)
        built_on = inner


def _plates_refused(guide: object, plates: list[str]) -> str:
    """Why a guide that opens ``plates`` cannot be a network's guide."""
    if _particles.PLATE_NAME not in plates:
        return (
            f"plates {plates}: a network's guide draws the network's weights "
            "for one particle and opens no plate (each weight tensor is one "
            "site of its own shape; the network opens its particle plate "
            "around the guide)"
        )
    reason = (
        f"a plate named {_particles.PLATE_NAME!r}, the name reserved for the "
        "network's particle plate, which the network opens around its guide "
        "(a guide draws the weights of one particle)"
    )
    modules = guide.modules() if isinstance(guide, nn.Module) else ()
    if any(isinstance(module, ParticleGuide) for module in modules):
        return (
            f"{reason}: it holds a network's guide (net.guide), "
            "which runs that plate; a network's guide cannot be part of "
            "another guide. Append autoguides built on "
            "poutine.block(model.prior_model, expose=[...]) instead"
        )
    return f"{reason}: name the guide's plate otherwise, or open none"


def _guide_quantiles(
    guide: Any,
    quantiles: Sequence[float] | Tensor,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> dict[str, Tensor]:
    """Quantiles of an assigned guide; point-mass parts give their value."""
    if isinstance(guide, AutoGuideList):
        result: dict[str, Tensor] = {}
        for part in guide:
            result.update(_guide_quantiles(part, quantiles, args, kwargs))
        return result
    name = type(guide).__name__
    if _is_point_mass(guide, args, kwargs):
        return {
            site: elementwise_quantiles(
                dist.Delta(value, event_dim=value.dim()), quantiles, name
            )
            for site, value in _point_mass_values(guide, args, kwargs).items()
        }
    instead = (
        "draw from the guide instead (bnn.predict(..., mode='sample'), "
        "bnn.draw_networks)"
    )
    method = getattr(guide, "quantiles", None)
    if method is None:
        raise NotImplementedError(f"guide {name} has no quantiles() method; {instead}")
    try:
        return dict(method(quantiles, *args, **kwargs))
    except NotImplementedError as error:
        reason = f" ({error})" if str(error) else ""
        raise NotImplementedError(
            f"guide {name} has no posterior quantiles: Pyro's {name}.quantiles() "
            f"is not implemented{reason}; {instead}"
        ) from error


def _guide_median(
    guide: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Tensor]:
    """Median of an assigned guide; a point-mass posterior gives its value."""
    if isinstance(guide, AutoGuideList):
        result: dict[str, Tensor] = {}
        for part in guide:
            result.update(_guide_median(part, args, kwargs))
        return result
    name = type(guide).__name__
    if _is_point_mass(guide, args, kwargs):
        return _point_mass_values(guide, args, kwargs)
    method = getattr(guide, "median", None)
    if method is None:
        raise NotImplementedError(
            f"guide {name} has no median() method, so there are no posterior "
            "medians of the weights (predict(..., mode='mean') and "
            "bnn.to_deterministic need them); use predict(..., mode='sample')"
        )
    try:
        return dict(method(*args, **kwargs))
    except NotImplementedError as error:
        reason = f" ({error})" if str(error) else ""
        raise NotImplementedError(
            f"guide {name} has no posterior median: Pyro's {name}.median() is not "
            f"implemented{reason}, so predict(..., mode='mean') and "
            "bnn.to_deterministic cannot run; use predict(..., mode='sample'), "
            "which draws from the guide"
        ) from error


def _is_point_mass(guide: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether an assigned guide's posterior is a point mass.

    ``AutoDelta``'s is; an ``AutoContinuous`` guide's is when its posterior
    is a ``Delta`` (``AutoLaplaceApproximation``, a MAP guide until
    ``laplace_approximation()``).
    """
    if isinstance(guide, AutoDelta):
        return True
    if not isinstance(guide, AutoContinuous):
        return False
    with local_params():
        posterior = guide.get_posterior(*args, **kwargs)
    while isinstance(posterior, dist.Independent):
        posterior = posterior.base_dist
    return isinstance(posterior, dist.Delta)


def _point_mass_values(
    guide: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Tensor]:
    """The value of every site of a point-mass guide (:func:`_is_point_mass`).

    A draw of a point mass is its value: for an ``AutoContinuous`` guide the
    latent's loc, transformed to each site's support, as
    ``AutoContinuous.median`` would give it.
    """
    with local_params(), poutine.block():
        return dict(guide(*args, **kwargs))


def _parameter_device(network: nn.Module) -> torch.device | None:
    for parameter in network.parameters():
        return parameter.device
    return None
