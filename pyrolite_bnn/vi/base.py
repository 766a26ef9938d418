"""torch_blue's ``VIModule``, as a subclass of :class:`pyrolite_bnn.VIModule`.

The torch_blue conventions kept here: the constructor
``VIModule(variable_shapes=None, **vi_kwargs)``, ``random_variables`` as a tuple
of names, ``return_log_probs`` on by default (set on a module, it applies to all
its submodules), outputs of the outermost call as :class:`VIReturn`,
``get_variational_parameters``, ``get_log_probs``, ``sample_variable``,
``reset_variational_parameters``, ``variational_parameter_name`` and the
``_<variable>_<parameter>`` attribute names.

Everything else is this library's machinery: the declared variables are
:meth:`pyrolite_bnn.VIModule.declare_random_variable` sites with a prior module
and a posterior module, the outermost call opens the particle plate, and the
loss takes the KL from the forward pass's record.

A custom module that declares its own variables (torch_blue's "level 5") has
its ``forward`` written for *one* weight sample, as in torch_blue; it is run for
all particles at once with :func:`torch.vmap`, each particle seeing its own
draw of ``self.<variable>``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from pyrolite_bnn import _particles, _plain_roots, _structures
from pyrolite_bnn._draws import current_draws, particle_weights, using_particle_weights
from pyrolite_bnn._forward import output_tensors
from pyrolite_bnn._handlers import pyro_wrapped
from pyrolite_bnn._validation import check_integer
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.distributions.variational import (
    MeanFieldNormalPosterior,
    PointMassPosterior,
    Posterior,
)
from pyrolite_bnn.layers.functional import current_batch_size, current_samples
from pyrolite_bnn.module import VIModule as BnnVIModule
from pyrolite_bnn.variables import RandomVariable
from pyrolite_bnn.vi._drawn_log_probs import (
    drawn_log_probs,
    forget_drawn_log_probs,
    gather_drawn_log_probs,
)
from pyrolite_bnn.vi._parameter_names import (
    alias_variational_parameters,
    aliases_set_aside,
    assigned_aliases,
    drop_aliases,
    fill_either_key,
    unwritten_priors_message,
)
from pyrolite_bnn.vi.distributions import MeanFieldNormal
from pyrolite_bnn.vi.distributions._adapters import AdaptedPosterior, AdaptedPrior
from pyrolite_bnn.vi.distributions.base import (
    Distribution,
    constant_prior_initialization,
    init_like_a_weight,
)
from pyrolite_bnn.vi.utils.errors import NoVariablesError, UnsupportedDistributionError
from pyrolite_bnn.vi.utils.vi_return import VIReturn

__all__ = [
    "RandomVariableNames",
    "VIModule",
    "VariableSpecs",
    "reset_as_constructed",
    "validated_shapes",
]

Shapes = Mapping[str, Sequence[int] | None]

# Classes whose one-sample forward torch.vmap could not run: run in turn.
_NOT_VMAPPABLE: weakref.WeakSet[type] = weakref.WeakSet()


class RandomVariableNames(tuple[str, ...]):
    """torch_blue's ``random_variables`` tuple, still callable the library's way.

    ``module.random_variables`` is the tuple of the module's own variable names
    (torch_blue); ``module.random_variables()`` returns the network's
    :class:`~pyrolite_bnn.variables.RandomVariable` records
    (:meth:`pyrolite_bnn.VIModule.random_variables`).
    """

    module: BnnVIModule

    def __call__(self) -> list[RandomVariable]:
        """The network's random-variable records."""
        return BnnVIModule.random_variables(self.module)


def validated_shapes(
    variable_shapes: Shapes,
) -> dict[str, tuple[int, ...] | None]:
    """``variable_shapes`` as name -> tuple of ints (or ``None``), checked.

    Raises:
        TypeError: not a mapping of identifier names to sequences of ints.
        ValueError: a negative dimension.

    Example:
        >>> validated_shapes({"weight": torch.Size([3, 4]), "bias": None})
        {'weight': (3, 4), 'bias': None}
    """
    if not isinstance(variable_shapes, Mapping):
        raise TypeError(
            "variable_shapes must map variable names to shapes, e.g. "
            f"{{'weight': (3, 4)}}; got {type(variable_shapes).__name__}"
        )
    shapes: dict[str, tuple[int, ...] | None] = {}
    for name, shape in variable_shapes.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise TypeError(
                f"variable_shapes: variable names must be identifiers, got {name!r}"
            )
        if shape is None:
            shapes[name] = None
            continue
        dims = _int_tuple(shape)
        if dims is None:
            raise TypeError(
                f"variable_shapes[{name!r}] must be a sequence of ints (or None), "
                f"got {shape!r}"
            )
        if any(d < 0 for d in dims):
            raise ValueError(
                f"variable_shapes[{name!r}] has a negative dimension: {shape!r}"
            )
        shapes[name] = dims
    return shapes


def _int_tuple(shape: object) -> tuple[int, ...] | None:
    """``shape`` as a tuple of ints (numpy and torch integers too), else ``None``."""
    if isinstance(shape, str) or not isinstance(shape, Sequence | torch.Size):
        return None
    try:
        return tuple(check_integer(d, "dimension") for d in shape)
    except TypeError:
        return None


class VariableSpecs:
    """The torch_blue options of a module's random variables, validated.

    Args:
        variable_shapes: name -> shape (``None``: the variable is always ``None``).
        variational_distribution: one, or one per variable (default
            ``MeanFieldNormal()``).
        prior: one, or one per variable (default ``MeanFieldNormal()``).
        rescale_prior: scale the priors by ``1 / sqrt(3 fan_in)``.
        kaiming_initialization: scale the initial variational scales.
        prior_initialization: start the variational parameters at the prior.

    Raises:
        NoVariablesError: if every variable is ``None`` (or there are none).
    """

    def __init__(
        self,
        variable_shapes: Shapes,
        variational_distribution: Any,
        prior: Any,
        rescale_prior: bool,
        kaiming_initialization: bool,
        prior_initialization: bool,
    ) -> None:
        self.shapes = validated_shapes(variable_shapes)
        self.names = tuple(self.shapes)
        if not self.declared():
            raise NoVariablesError("All module variables are set to None.")
        families = _per_variable(
            variational_distribution,
            self.names,
            "is_variational_distribution",
            "variational",
        )
        priors = _per_variable(prior, self.names, "is_prior", "prior")
        self.variational: dict[str, Distribution | None] = {}
        self.priors: dict[str, Distribution | None] = {}
        for name, family, prior_spec in zip(self.names, families, priors, strict=True):
            keep = self.shapes[name] is not None
            self.variational[name] = family if keep else None
            self.priors[name] = prior_spec if keep else None
        self.kaiming_initialization = kaiming_initialization
        self.prior_initialization = prior_initialization
        if rescale_prior:
            fan_in = self.fan_in()
            for spec in self.priors.values():
                if spec is not None:
                    spec.kaiming_rescale(fan_in)

    def declared(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the variables that are not ``None``."""
        return {n: s for n, s in self.shapes.items() if s is not None}

    def bnn_priors(self) -> dict[str, Any]:
        """The priors as :class:`pyrolite_bnn.Prior` modules."""
        return {n: p.to_prior() for n, p in self.priors.items() if p is not None}

    def bnn_families(self) -> dict[str, Any]:
        """The variational distributions as :class:`pyrolite_bnn.VariationalFamily`."""
        return {
            n: f.to_variational() for n, f in self.variational.items() if f is not None
        }

    def fan_in(self) -> int:
        """torch_blue's fan-in: of the first variable with two or more dims."""
        for shape in self.declared().values():
            if len(shape) >= 2:
                return shape[1] * math.prod(shape[2:])
        warn_at_caller(
            "only one-dimensional Parameters where found, assuming fan_in to be 1",
        )
        return 1


def _per_variable(
    option: Any, names: tuple[str, ...], flag: str, what: str
) -> list[Any]:
    label = "variational distribution" if what == "variational" else "prior"
    if option is None:
        option = MeanFieldNormal()
    if isinstance(option, (tuple, list)):
        if len(option) != len(names):
            raise AssertionError(
                f"Provide either exactly one {label} or exactly one for each random "
                "variable"
            )
        chosen = [copy.deepcopy(o) for o in option]
    else:
        chosen = [copy.deepcopy(option) for _ in names]
    for spec in chosen:
        if not (isinstance(spec, Distribution) and getattr(spec, flag)):
            raise UnsupportedDistributionError(
                f"{_described(spec)} does not support use as {label}."
                + _role_hint(spec, what, flag)
            )
    return chosen


def _described(spec: object) -> str:
    """A refused option for a message: a class by its name, else its type's."""
    if isinstance(spec, type):
        return f"the class {spec.__name__}"
    return type(spec).__name__


def _role_hint(spec: object, what: str, flag: str) -> str:
    """What the user probably meant with a refused ``prior``/``variational``."""
    if isinstance(spec, type) and issubclass(spec, Distribution):
        if getattr(spec, flag, False):  # the role flags are class attributes
            return f" Pass an instance, {spec.__name__}()."
        return ""
    if isinstance(spec, bool):  # VILinear(3, 5, False): nn.Linear's bias
        return (
            " torch_blue's layers take the variational distribution third, not "
            "nn.Linear's bias: pass bias=False by keyword."
        )
    module = type(spec).__module__
    if module.startswith("pyrolite_bnn.") and not module.startswith("pyrolite_bnn.vi"):
        return (
            " The vi layers take the distributions of pyrolite_bnn.vi.distributions; "
            f"the library's own {type(spec).__name__} goes with the bnn layers "
            f"(bnn.VILinear(..., {'prior' if what == 'prior' else 'variational'}="
            "...))."
        )
    return ""


_SAMPLED_INPUT = (
    "torch_blue's sampled_input=True (inputs that already carry a sample "
    "dimension, (S, B, ...)) is not supported: every particle of a call sees the "
    "same batch (B, ...). Pass the batch without a sample dimension; to feed "
    "each particle the output of an earlier Bayesian stage, call both stages "
    "inside one network (one VIModule whose forward runs them in turn), so that "
    "each particle's input comes from its own draw"
)


def _per_particle_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    """Run a one-sample ``forward`` for every particle (see :class:`VIModule`)."""

    @functools.wraps(forward)
    def wrapper(self: VIModule, *args: Any, **kwargs: Any) -> Any:
        if (
            not self.__dict__.get("_per_particle")
            or not _plain_roots.in_running_network()
            or particle_weights() is not None  # inside an outer one: one particle
            or _folds_for_batch_norm(self)
        ):
            return forward(self, *args, **kwargs)
        return self.run_per_particle(forward, args, kwargs)

    wrapper.__dict__["_vi_per_particle"] = True
    return wrapper


class VIModule(BnnVIModule):
    """torch_blue's base class of Bayesian modules (a :class:`pyrolite_bnn.VIModule`).

    Without ``variable_shapes`` it is a container (``super().__init__()``);
    with them, each name becomes a random variable of that shape (``None``: the
    attribute is always ``None``), readable as ``self.<name>`` in ``forward``.
    Such a module's ``forward`` is written for one weight sample and runs for
    all particles through :func:`torch.vmap`; each call draws each variable
    once (however often ``forward`` reads it).

    Args:
        variable_shapes: shapes of the module's own random variables, in order.
        variational_distribution: a
            :class:`~pyrolite_bnn.vi.distributions.VariationalDistribution`, or
            one per variable (default ``MeanFieldNormal()``).
        prior: a :class:`~pyrolite_bnn.vi.distributions.Prior`, or one per
            variable (default ``MeanFieldNormal()``: ``N(0, 1)``).
        rescale_prior: scale the priors by ``1 / sqrt(3 fan_in)``.
        kaiming_initialization: start the variational scales at their default
            times ``1 / sqrt(fan_in)`` (means: like ``torch.nn`` weights).
        prior_initialization: start the variational parameters at the prior's.
        return_log_probs: outputs carry ``log_probs`` (``(S, 2)``).
        device: device of the parameters.
        dtype: dtype of the parameters.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from pyrolite_bnn import vi
        >>> class Affine(vi.VIModule):
        ...     def __init__(self, n: int, **vikwargs) -> None:
        ...         shapes = {"weight": (n, n), "bias": (n,)}
        ...         super().__init__(variable_shapes=shapes, **vikwargs)
        ...     def forward(self, x: torch.Tensor) -> torch.Tensor:
        ...         return F.linear(x, self.weight, self.bias)  # one sample
        >>> layer = Affine(3)
        >>> layer.random_variables
        ('weight', 'bias')
        >>> out = layer(torch.randn(5, 3), samples=4)
        >>> type(out).__name__, out.shape, out.log_probs.shape
        ('VIReturn', torch.Size([4, 5, 3]), torch.Size([4, 2]))
    """

    _return_log_probs: bool
    variational_distribution: dict[str, Distribution | None]

    def __init__(
        self,
        variable_shapes: Shapes | None = None,
        variational_distribution: Any = None,
        prior: Any = None,
        rescale_prior: bool = False,
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.return_log_probs = return_log_probs
        # torch_blue runs every module's forward for one sample: so do a user's
        # containers (batch-wise operations, skip connections to the input,
        # x.shape[0] then mean what they mean there); the library's own
        # containers and layers run on the folded batch.
        self._per_particle = _user_forward(type(self))
        if variable_shapes is None:
            return
        specs = VariableSpecs(
            variable_shapes,
            variational_distribution,
            prior,
            rescale_prior,
            kaiming_initialization,
            prior_initialization,
        )
        priors, families = specs.bnn_priors(), specs.bnn_families()
        for name, shape in specs.declared().items():
            self.declare_random_variable(
                name, shape, priors[name], families[name], device=device, dtype=dtype
            )
        self._per_particle = True
        self.adopt_specs(specs)

    def runs_per_particle(self) -> bool:
        """See :meth:`pyrolite_bnn.VIModule.runs_per_particle`.

        ``True`` for a module with variables of its own and for a container
        whose ``forward`` is the user's.
        """
        return bool(self.__dict__.get("_per_particle"))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        forward = cls.__dict__.get("forward")
        if forward is not None and not forward.__dict__.get("_vi_per_particle"):
            cls.forward = _per_particle_forward(forward)

    def adopt_specs(self, specs: VariableSpecs) -> None:
        """Record the torch_blue options of the declared variables; initialise them.

        Layers that declare their variables through a :mod:`pyrolite_bnn` layer
        constructor call this afterwards.
        """
        for name, shape in specs.shapes.items():
            if shape is None:
                setattr(self, name, None)
        for name in specs.declared():
            family = specs.variational[name]
            assert family is not None
            posterior = self.posterior[name]
            alias_variational_parameters(
                self,
                name,
                posterior,
                family.distribution_parameters,
                _posterior_values(posterior),
                self.variational_parameter_name,
            )
        self.variable_names = specs.names
        self.variational_distribution = specs.variational
        # torch_blue's ``prior`` has one entry per variable, ``None`` when the
        # variable is: the prior modules in the variables' order, ``None``
        # placeholders (not modules, so not in ``modules()`` or ``state_dict``).
        priors = self.prior
        declared = {name: priors[name] for name in specs.declared()}
        for name in list(priors.keys()):
            del priors[name]
        for name in specs.names:
            priors.add_module(name, declared.get(name))
        self.prior_specs = specs.priors
        self._kaiming_init = specs.kaiming_initialization
        self._prior_init = specs.prior_initialization
        self._fan_in = specs.fan_in()
        self.reset_variational_parameters()

    # ------------------------------------------------------------ torch_blue API
    @property
    def random_variables(self) -> RandomVariableNames:
        """Names of the module's own random variables (empty for a container).

        Calling it (``module.random_variables()``) returns the network's
        :class:`~pyrolite_bnn.variables.RandomVariable` records instead.
        """
        names = RandomVariableNames(self.__dict__.get("variable_names", ()))
        names.module = self
        return names

    @property
    def return_log_probs(self) -> bool:
        """Whether outputs carry ``log_probs``; setting it sets every submodule's."""
        return bool(self.__dict__.get("_return_log_probs", True))

    @return_log_probs.setter
    def return_log_probs(self, mode: bool) -> None:
        for module in self.modules():
            if isinstance(module, VIModule):
                module.__dict__["_return_log_probs"] = bool(mode)
            elif isinstance(module, BnnVIModule):
                module.return_log_probs = bool(mode)

    @staticmethod
    def variational_parameter_name(variable: str, variational_parameter: str) -> str:
        """Attribute name of a variational parameter: ``_<variable>_<parameter>``."""
        return f"_{variable}_{variational_parameter}"

    def _own_variables(self, what: str) -> dict[str, Distribution | None]:
        specs: dict[str, Distribution | None] | None = self.__dict__.get(
            "variational_distribution"
        )
        if specs is None:
            raise NoVariablesError(
                f"{type(self).__name__} has no random variables{what}"
            )
        return specs

    def _own_variable(self, variable: str, what: str) -> Distribution | None:
        """The family of ``variable``; ``KeyError`` (as torch_blue) for no such one."""
        specs = self._own_variables(what)
        if variable not in specs:
            raise KeyError(
                f"{type(self).__name__} has no random variable {variable!r}; its "
                f"variables are {tuple(specs)}"
            )
        return specs[variable]

    def variable_shape(self, variable: str) -> tuple[tuple[int, ...], Tensor]:
        """Shape of ``variable`` and a tensor with its device and dtype."""
        posterior = self.posterior[variable]
        return tuple(posterior.shape), posterior.loc

    def get_variational_parameters(self, variable: str) -> list[Tensor]:
        """The variational parameters of ``variable`` in torch_blue's order.

        ``MeanFieldNormal``: ``[mean, log_std]``, both learnable leaf tensors
        (``vi`` stores the log standard deviation, as torch_blue does); with a
        :class:`pyrolite_bnn.MeanFieldNormal` family of scale ``softplus(rho)``
        the ``log_std`` is derived (differentiable, not a leaf).

        Raises:
            NoVariablesError: no own variables, or ``variable`` is ``None``.
            KeyError: for a name that is none of its variables.
        """
        if self._own_variable(variable, " to get") is None:
            raise NoVariablesError(f"{variable} is None and has no parameters to get")
        return _posterior_values(self.posterior[variable])

    def set_variational_parameters(
        self, variable: str, values: Sequence[Tensor]
    ) -> None:
        """Overwrite the variational parameters of ``variable`` (torch_blue's order)."""
        posterior: Posterior = self.posterior[variable]
        if isinstance(posterior, MeanFieldNormalPosterior):
            loc, log_std = values
            if posterior.scale_transform == "exp":
                with torch.no_grad():
                    posterior.loc.copy_(loc)
                    posterior.rho.copy_(log_std)
                return
            # A std that underflows the dtype (1e-20 in float16) becomes its
            # smallest normal number instead of 0.
            tiny = torch.finfo(log_std.dtype).tiny
            posterior.reset_parameters(loc, log_std.exp().clamp_min(tiny))
        elif isinstance(posterior, AdaptedPosterior):
            posterior.set_values(values)
        elif isinstance(posterior, PointMassPosterior):
            posterior.reset_parameters(values[0])
        else:
            raise TypeError(f"cannot set the parameters of {type(posterior).__name__}")

    def reset_variational_parameters(self) -> None:
        """Re-initialise every own variable the torch_blue way.

        Each posterior keeps how it was initialised (its ``loc_init`` and
        initial scales), so that its own ``reset_parameters()`` (the layer's,
        FSDP's per-module one after ``to_empty``) starts it where this method
        does.

        Raises:
            NoVariablesError: if the module has no variables of its own.
        """
        specs = self._own_variables(" to reset")
        for name, family in specs.items():
            if family is None:
                continue
            family.reset_variational_parameters(
                self, name, self._fan_in, self._kaiming_init
            )
            prior = self.prior_specs[name] if self._prior_init else None
            if prior is not None:
                prior.reset_parameters_to_prior(self, name)
            _give_initial_values(
                self.posterior[name], family, prior, self._fan_in, self._kaiming_init
            )

    def prior_distribution(self, name: str) -> Any:
        """Prior of ``name``; a hierarchical prior gets the variational parameters."""
        prior = self.prior[name]
        if isinstance(prior, AdaptedPrior) and prior.required_parameters():
            family = self.variational_distribution[name]
            assert family is not None
            current = dict(
                zip(
                    family.distribution_parameters,
                    self.get_variational_parameters(name),
                    strict=True,
                )
            )
            extra = tuple(current[p] for p in prior.required_parameters())
            return prior(self.posterior[name].shape, extra)
        return super().prior_distribution(name)

    def get_log_probs(self, sample: Tensor, variable: str) -> Tensor:
        """``[log p(sample), log q(sample)]`` of a draw of ``variable``, summed.

        Raises:
            NoVariablesError: if the module has no variables of its own.
        """
        self._own_variables("")
        log_prior = self.prior_distribution(variable).log_prob(sample).sum()
        log_q = self.posterior[variable].distribution().log_prob(sample).sum()
        return torch.stack([log_prior, log_q])

    def sample_variable(self, variable: str) -> Tensor | None:
        """One draw of ``variable`` from its variational distribution (or ``None``).

        For use outside a forward pass: inside one, ``forward`` reads its
        particle's draw as ``self.<variable>``. With ``return_log_probs`` on,
        the draw's ``[log p, log q]`` (:meth:`get_log_probs`) is kept for
        :meth:`gather_log_probs`, as in torch_blue.

        Raises:
            NoVariablesError: if the module has no variables of its own.
            KeyError: for a name that is none of its variables.
            RuntimeError: if called while a network runs (inside ``forward``).
        """
        if self._own_variable(variable, " to sample") is None:
            return None
        if _plain_roots.in_running_network():
            raise RuntimeError(
                f"{type(self).__name__}.sample_variable({variable!r}) was called "
                "while the network runs: inside forward read the variable as "
                f"self.{variable}, the draw of the running particle, which the "
                "network records for the loss; sample_variable draws one more "
                "sample that the loss never sees (and torch.vmap, which runs "
                "forward for all particles, cannot draw it)"
            )
        draw: Tensor = self.posterior[variable].distribution().rsample()
        if self.return_log_probs:
            drawn_log_probs(self).add(variable, self.get_log_probs(draw, variable))
        return draw

    def gather_log_probs(self) -> Tensor:
        """``[log p, log q]`` of the draws of :meth:`sample_variable`, then forgotten.

        torch_blue 1.1.0's aggregate over this module and its submodules: per
        variable the mean over its draws since the last forward pass,
        :meth:`reset_log_probs` or :meth:`gather_log_probs`, summed over the
        variables; shape ``(2,)``, differentiable. Draws are kept while
        ``return_log_probs`` is on. A forward pass's log probabilities are on
        its output (``out.log_probs``, ``(S, 2)``), not gathered here.

        Raises:
            RuntimeError: if no draw was kept (torch_blue failed in
                ``torch.stack`` there).

        Example:
            >>> import torch
            >>> from pyrolite_bnn import vi
            >>> layer = vi.VILinear(3, 2)
            >>> weight = layer.sample_variable("weight")
            >>> lps = layer.gather_log_probs()
            >>> torch.equal(lps, layer.get_log_probs(weight, "weight"))
            True
        """
        gathered = gather_drawn_log_probs(self)
        if not gathered:
            raise RuntimeError(
                f"{type(self).__name__}.gather_log_probs: no log probabilities "
                "were kept. It returns those of the draws of sample_variable "
                "(made while return_log_probs is on) since the last forward pass, "
                "reset_log_probs or gather_log_probs; a forward pass's log "
                "probabilities are on its output, out.log_probs"
            )
        return torch.stack(gathered).sum(0)

    def reset_log_probs(self) -> None:
        """Forget the log probabilities kept for :meth:`gather_log_probs`.

        In this module and its submodules. Every outermost forward pass does
        it too, as in torch_blue 1.1.0.

        Example:
            >>> from pyrolite_bnn import vi
            >>> layer = vi.VILinear(3, 2)
            >>> _ = layer.sample_variable("weight")
            >>> layer.reset_log_probs()
            >>> try:
            ...     layer.gather_log_probs()
            ... except RuntimeError as error:
            ...     print(str(error).split(":")[0])
            VILinear.gather_log_probs
        """
        forget_drawn_log_probs(self)

    def sampled_forward(
        self,
        *input_: Any,
        samples: int = 10,
        sampled_input: bool = False,
        **kwargs: Any,
    ) -> Any:
        """torch_blue's explicit outermost call: ``self(*input_, samples=samples)``.

        Raises:
            NotImplementedError: for ``sampled_input=True`` (inputs that already
                have a sample dimension).
        """
        return self(*input_, samples=samples, sampled_input=sampled_input, **kwargs)

    # ------------------------------------------------------------ calling
    def __call__(self, *args: Any, samples: int | None = None, **kwargs: Any) -> Any:
        """As :class:`pyrolite_bnn.VIModule`; outermost outputs become ``VIReturn``.

        torch_blue's ``module._has_sampling_responsibility = False`` (set by
        the user: this library decides at call time who is outermost) makes an
        outermost call without ``samples=`` run one particle and return it
        without the particle dimension, as torch_blue does.

        torch_blue's ``sampled_input=False`` is accepted (and has no effect).

        Raises:
            NotImplementedError: for ``sampled_input=True``.
        """
        # A stale frame of an interrupted plain root is closed first: the
        # call is then outermost, as the library's own call decides.
        outermost = not _plain_roots.in_running_network() and not pyro_wrapped()
        if kwargs.pop("sampled_input", False):
            raise NotImplementedError(_SAMPLED_INPUT)
        if outermost:
            self.reset_log_probs()
        single = (
            outermost
            and samples is None
            and self.__dict__.get("_has_sampling_responsibility") is False
        )
        if single:
            return _particles.one_particle(super().__call__(*args, samples=1, **kwargs))
        result = super().__call__(*args, samples=samples, **kwargs)
        if outermost:
            for tensor in output_tensors(result):
                VIReturn.from_tensor(tensor, tensor.__dict__.get("log_probs"))
        return result

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        """Torch's; each torch_blue-named parameter converted once, by its posterior."""
        with aliases_set_aside(self):
            return super()._apply(fn, recurse)

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        drop_aliases(self, destination, prefix)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Torch's, for a state with either name of each variational parameter.

        A torch_blue state (its names, no priors) keeps the layer's priors;
        where ``to_empty`` left them without values it is refused, whatever
        ``strict`` (no state of torch_blue's holds priors to write them),
        with the remedy (:func:`fill_either_key`).
        """
        without_values = fill_either_key(self, state_dict, prefix)
        if without_values:  # load_state_dict raises a RuntimeError
            error_msgs.append(unwritten_priors_message(self, prefix, without_values))
        args = (strict, missing_keys, unexpected_keys, error_msgs)
        if not local_metadata.get("assign_to_params_buffers", False):
            super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)
            return
        with assigned_aliases(self, state_dict, prefix):
            super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    def __getattr__(self, name: str) -> Any:
        weights = particle_weights()
        if weights is not None:
            value = weights.get((id(self), name))
            if value is not None:
                return value
        specs = self.__dict__.get("variational_distribution")
        if specs is not None and name.startswith("_"):
            for variable, family in specs.items():
                prefix = f"_{variable}_"
                if family is not None and name.startswith(prefix):
                    parameter = name[len(prefix) :]
                    if parameter in family.distribution_parameters:
                        index = family.distribution_parameters.index(parameter)
                        return self.get_variational_parameters(variable)[index]
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("variational_distribution", "prior"):
                # A container: no random variables of its own (torch_blue's
                # layers keep both mappings, one entry per variable).
                return MappingProxyType({})
            raise

    def run_per_particle(
        self,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run a one-sample ``forward`` for every particle.

        With :func:`torch.vmap` where it can; one particle after the other
        where the forward calls the library's layers (which run on a whole
        batch: a recurrent layer cannot be vmapped) or something else vmap has
        no batching rule for (a plain ``nn.LSTM``). Inputs shared by all
        particles (leading size ``B``) are broadcast, folded ones (``B * S``)
        are split per particle; the output is folded again. Each particle sees
        its draw of this module's variables and of those of the modules below
        it (read as attributes or called: they then run their ``forward``
        directly for the particle).
        """
        samples, batch = current_samples(), current_batch_size()
        draws = current_draws()
        weights: dict[tuple[int, str], Tensor] = {}
        whole_batch = False  # a library layer below: it needs the particle's batch
        for module in self.modules():
            if not isinstance(module, BnnVIModule) or not module.declared_variables():
                continue
            one_sample = isinstance(module, VIModule)
            whole_batch = whole_batch or not one_sample
            for name, shape in module.declared_variables().items():
                if draws is not None and draws.takes_moments((id(module), name)):
                    continue  # the layer samples its outputs from the moments
                value = BnnVIModule.__getattr__(module, name)
                flat = value.reshape(-1, *shape)
                flat = flat.expand(samples, *shape) if flat.shape[0] == 1 else flat
                # One-sample layers read one weight; the library's layers one
                # particle's draw, (1, 1, *shape), as in a call with S = 1.
                weights[id(module), name] = (
                    flat if one_sample else flat.reshape(samples, 1, 1, *shape)
                )
        in_dims: list[int | None] = []
        inputs: list[Any] = []
        state = _particles.current()
        for arg in args:
            if _folded(state, arg, samples, batch):
                rows = arg.shape[0]
                inputs.append(arg.reshape(rows // samples, samples, *arg.shape[1:]))
                in_dims.append(1)
            else:
                inputs.append(arg)
                in_dims.append(None)

        single_state = None if state is None else dataclasses.replace(state, samples=1)

        def one_particle(drawn: dict[tuple[int, str], Tensor], *inner: Any) -> Any:
            table = dict(particle_weights() or {})
            table.update(drawn)
            with using_particle_weights(table):
                if single_state is None:
                    return forward(self, *inner, **kwargs)
                # Layers below see one particle: their weights are this one's.
                with _particles.particles(single_state):
                    return forward(self, *inner, **kwargs)

        if samples == 1:
            single = {name: value[0] for name, value in weights.items()}
            out = one_particle(single, *args)
            # As the vmapped outputs: (1, rows, ...), folded and recorded alike.
            return _fold(_particles.map_outputs(out, _with_particle_dim), batch)
        in_turn = whole_batch or type(self) in _NOT_VMAPPABLE
        if not in_turn:
            if not weights and all(dim is None for dim in in_dims):
                # Nothing differs between particles but their random numbers
                # (dropout): a particle index gives vmap a dimension to map.
                weights = {(id(self), "<particle>"): torch.arange(samples)}
            # vmap returns tensors only: the output's other leaves and its
            # containers (a dataclass, a dict subclass) are put back after.
            found: list[tuple[list[Any], _structures.Structure]] = []

            def particle_tensors(*call: Any) -> tuple[Tensor, ...]:
                found.append(_structures.flatten(one_particle(*call)))
                return tuple(leaf for leaf in found[-1][0] if isinstance(leaf, Tensor))

            try:
                out = torch.vmap(
                    particle_tensors, in_dims=(0, *in_dims), randomness="different"
                )(weights, *inputs)
            except RuntimeError as error:
                if "Batching rule not implemented" not in str(error):
                    _explain_vmap_error(error, type(self).__name__)
                    raise
                _NOT_VMAPPABLE.add(type(self))  # and run in turn from now on
            else:
                mapped = iter(out)
                leaves, structure = found[-1]
                return _fold(
                    structure.rebuild(
                        [
                            next(mapped) if isinstance(leaf, Tensor) else leaf
                            for leaf in leaves
                        ]
                    ),
                    batch,
                )
        outputs = [
            one_particle(
                {name: value[s] for name, value in weights.items()},
                *(
                    value if dim is None else value.select(dim, s)
                    for value, dim in zip(inputs, in_dims, strict=True)
                ),
            )
            for s in range(samples)
        ]
        return _fold(_stack_particles(outputs), batch)


def reset_as_constructed(layer: VIModule, library_reset: Callable[[], None]) -> None:
    """A ``vi`` layer's ``reset_parameters()``: the layer as construction leaves it.

    torch_blue's initialisation of its variables,
    :meth:`VIModule.reset_variational_parameters` (Kaiming-scaled or prior
    initialization, whatever code the prior's ``reset_parameters_to_prior``
    runs), then :meth:`~pyrolite_bnn.VIModule.reset_priors` (after
    ``to_empty`` they hold no values either). The :mod:`pyrolite_bnn` layer's
    constructor resets before the torch_blue options are recorded; that call
    is ``library_reset`` (the library layer's own ``reset_parameters``), and
    :meth:`VIModule.adopt_specs` initialises the torch_blue way after it.

    Args:
        layer: the layer.
        library_reset: the library layer's ``reset_parameters``.

    Example:
        >>> from pyrolite_bnn import vi
        >>> layer = vi.VILinear(3, 2, prior_initialization=True)
        >>> layer.reset_parameters()  # reset_as_constructed
        >>> mean, log_std = layer.get_variational_parameters("weight")
        >>> mean.abs().max().item(), log_std.abs().max().item()
        (0.0, 0.0)
    """
    if not layer.random_variables:  # the library layer's constructor
        library_reset()
        return
    layer.reset_variational_parameters()
    layer.reset_priors()


# torch.vmap's messages for what it refuses in any forward (no fallback runs it).
_DATA_DEPENDENT = ("data-dependent control flow", "calling .item()")


def _explain_vmap_error(error: RuntimeError, name: str) -> None:
    """Re-raise vmap's refusal of data-dependent code, naming cause and workaround.

    A ``forward`` with variables' draws runs once per particle under
    ``torch.vmap`` (as in torch_blue); vmap refuses Python control flow on a
    tensor's value (``if h.mean() > 0``) and ``.item()``. Other errors return
    (the caller re-raises them unchanged).

    Raises:
        RuntimeError: vmap's message followed by the cause and the ways out.
    """
    if not any(marker in str(error) for marker in _DATA_DEPENDENT):
        return
    raise RuntimeError(
        f"{error}\n{name}.forward runs once per particle under torch.vmap (as in "
        "torch_blue), which cannot branch on a tensor's value (if/while on a "
        "tensor, bool(), float(), .item()). Write the branch as tensor "
        "operations (torch.where(h.mean() > 0, -h, h); a scale as a tensor, "
        "h / h.abs().max(), not float(...)), or move the data-dependent code out "
        "of the vi.VIModule's forward into a plain function or nn.Module called "
        "on its output"
    ) from error


def _stack_particles(outputs: list[Any]) -> Any:
    """Per-particle outputs stacked into ``(S, ...)``.

    Any nesting of :mod:`pyrolite_bnn._structures`; leaves that are not
    tensors are the first particle's.

    Raises:
        ValueError: if the particles' outputs nest differently.
    """
    try:
        return _structures.stack(outputs)
    except _structures.StructureMismatch:
        raise ValueError(
            "the per-particle forward returned outputs of different structures "
            "for different particles; return the same containers for every draw"
        ) from None


def _folds_for_batch_norm(module: VIModule) -> bool:
    """Whether a container runs folded because batch norm trains below it.

    Under ``torch.vmap`` batch norm cannot update its running statistics
    (torch_blue fails there); on the folded batch it normalises over all
    ``B * S`` rows. A module with variables of its own has one-sample code and
    always runs per particle.
    """
    return not module.declared_variables() and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.training
        and m.track_running_stats
        for m in module.modules()
    )


def _user_forward(cls: type) -> bool:
    """Whether ``cls``'s ``forward`` is written outside this library."""
    for klass in cls.__mro__:
        if klass.__module__.startswith("pyrolite_bnn"):
            return False
        if "forward" in vars(klass):
            return True
    return False


def _give_initial_values(
    posterior: Posterior,
    family: Distribution,
    prior: Distribution | None,
    fan_in: int,
    kaiming_scaling: bool,
) -> None:
    """Let ``posterior``'s own reset start it where torch_blue's does.

    Its mean is drawn like a weight of fan-in ``fan_in``
    (:func:`~pyrolite_bnn.vi.distributions.base.init_like_a_weight`); its
    scales start at the family's ``initial_constants``. With prior
    initialization (``prior`` given) the prior's constants
    (:func:`~pyrolite_bnn.vi.distributions.base.constant_prior_initialization`:
    ``MeanFieldNormal``'s mean and ``log_std``, rescaled where the prior is)
    replace those of the parameters they name, the mean's too. A mean-field
    Normal posterior keeps ``exp(log_std)`` as its ``init_scale``, an adapted
    one all of its other parameters' values; a point mass has no scales.

    A prior whose prior initialization is code of its own (``BasicQuietPrior``
    draws the means and gives each weight its own scale) has no constants to
    hand over: its layer's resets run that code
    (:meth:`VIModule.reset_variational_parameters`), a posterior's own reset
    starts it as without prior initialization.
    """
    constants = family.initial_constants(fan_in, kaiming_scaling)
    loc_init: Callable[[Tensor], Tensor] = functools.partial(
        init_like_a_weight, fan_in=fan_in
    )
    from_prior = None if prior is None else constant_prior_initialization(prior)
    if from_prior is not None:
        primary, *others = family.distribution_parameters
        if primary in from_prior:
            loc_init = functools.partial(nn.init.constant_, val=from_prior[primary])
        constants.update({n: v for n, v in from_prior.items() if n in others})
    posterior.loc_init = loc_init
    if isinstance(posterior, MeanFieldNormalPosterior):
        posterior.init_scale = math.exp(constants["log_std"])
    elif isinstance(posterior, AdaptedPosterior):
        posterior.initial_values = constants


def _posterior_values(posterior: Posterior) -> list[Tensor]:
    """A posterior's parameters, torch_blue's order (get_variational_parameters)."""
    posterior.check_written()
    if isinstance(posterior, MeanFieldNormalPosterior):
        if posterior.scale_transform == "exp":
            return [posterior.loc, posterior.rho]
        return [posterior.loc, posterior.scale().log()]
    if isinstance(posterior, AdaptedPosterior):
        return posterior.values()
    return [posterior.loc]


def _folded(
    state: _particles.ParticleState | None, arg: Any, samples: int, batch: int | None
) -> bool:
    """Whether ``arg`` holds all particles folded (``b * S`` leading rows).

    The rule of the library's layers (:func:`pyrolite_bnn._particles.row_layout`:
    the network's own inputs are shared whatever their size, another input's
    batch times ``S`` is folded too); a size no batch explains counts as folded
    when it is a multiple of ``S`` and ``B`` is unknown, else as shared.
    """
    if samples == 1 or not isinstance(arg, Tensor) or not arg.dim():
        return False
    layout = _particles.row_layout(state, arg, samples, batch)
    if layout is not None:
        return not layout
    return batch is None and arg.shape[0] % samples == 0


def _with_particle_dim(item: Any) -> Any:
    return item.unsqueeze(0) if isinstance(item, Tensor) else item


def _fold(value: Any, batch: int | None) -> Any:
    """``(S, rows, ...)`` per-particle outputs to folded ``(rows * S, ...)``.

    An output whose leading size is not the batch ``B`` (attention weights of
    a sequence-first layer, ``(B, Lq, Lk)`` next to ``(L, B, E)`` outputs) is
    recorded, so that the outermost call unfolds it at its own leading size.
    """
    state = _particles.current()
    if state is not None:
        state.classified[0] = True  # folded tensors exist from now on

    def fold(item: Tensor) -> Tensor:
        if item.dim() < 2:
            return item
        folded = item.transpose(0, 1).reshape(-1, *item.shape[2:])
        if state is not None and item.shape[1] != batch:
            state.note_batch_folded(folded, 0)
        return folded

    return _particles.map_outputs(value, fold)
