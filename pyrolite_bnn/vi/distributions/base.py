"""torch_blue's distribution interfaces, adapted to this library's classes.

A torch_blue distribution is one object that may serve in up to three roles:
prior, variational distribution and predictive distribution. Both of
torch_blue's ways to declare them work: the 1.1.0 interfaces :class:`Prior`,
:class:`VariationalDistribution`, :class:`PredictiveDistribution` (one
``log_prob(sample, parameters)``), and the dev branch's flags on a bare
:class:`Distribution` (``is_prior = True`` with ``prior_log_prob``, ...).
Three adapter methods hand a role over to this library's machinery:

* :meth:`Distribution.to_prior` returns a :class:`pyrolite_bnn.Prior` module,
* :meth:`Distribution.to_variational` a :class:`pyrolite_bnn.VariationalFamily`,
* :meth:`Distribution.to_predictive` a
  :class:`pyrolite_bnn.PredictiveDistribution` (the likelihood of the loss).

The built-in distributions map to this library's native classes (closed-form
KL, local reparameterisation); a custom subclass that only defines torch_blue's
methods is wrapped generically (:mod:`pyrolite_bnn.vi.distributions._adapters`).
"""

from __future__ import annotations

import inspect
import math
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyro.distributions as pyro_dist
import torch
from torch import Tensor
from torch.nn import Module, init

from pyrolite_bnn._likelihoods import not_predictive
from pyrolite_bnn._overrides import keeps_methods
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.distributions.predictive import (
    PredictiveDistribution as BnnPredictive,
)
from pyrolite_bnn.distributions.priors import Prior as BnnPrior
from pyrolite_bnn.distributions.variational import VariationalFamily
from pyrolite_bnn.vi.utils.errors import NoRoleError, UnsupportedDistributionError
from pyrolite_bnn.vi.utils.post_init_metaclass import PostInitCallMeta

__all__ = ["Distribution", "PredictiveDistribution", "Prior", "VariationalDistribution"]

# Parameter names torch_blue initialises like the weights of a plain layer.
_WEIGHT_LIKE = ("mean", "mode", "loc")


def number_tensor(value: float, device: torch.device | str | None = None) -> Tensor:
    """A distribution's number as a tensor, on ``device`` or else on the CPU.

    A distribution object describes a prior, a variational distribution or a
    likelihood; it is no module (its tensors do not follow ``.to()``), and the
    layers and losses built from it make their own tensors from its numbers,
    where they are built. On the CPU whatever ``torch.device`` context is
    active: made under ``with torch.device("meta"):`` they held no values, and
    a layer built there could not read its initial scale from them
    (``Tensor.item() cannot be called on meta tensors``), nor its prior keep
    them for ``reset_parameters`` after ``to_empty``.

    Example:
        >>> with torch.device("meta"):
        ...     number_tensor(0.5)
        tensor(0.5000)
    """
    return torch.tensor(value, device=torch.device("cpu") if device is None else device)


def as_parameter_tuple(*parameters: Any) -> tuple[Any, ...]:
    """Parameters given as one tuple (torch_blue 1.1) or one by one (its dev branch)."""
    if len(parameters) == 1 and isinstance(parameters[0], (tuple, list)):
        return tuple(parameters[0])
    return parameters


class Distribution(metaclass=PostInitCallMeta):
    """Base class of torch_blue-style distributions.

    Two ways to write one, as in torch_blue:

    * 1.1.0: subclass one or more of the role interfaces :class:`Prior`,
      :class:`VariationalDistribution` and :class:`PredictiveDistribution` and
      implement ``log_prob(sample, parameters)`` (and ``sample(parameters)``).
    * dev branch: subclass this class, set the flags :attr:`is_prior`,
      :attr:`is_variational_distribution`, :attr:`is_predictive_distribution`
      and implement, per role, ``prior_log_prob(sample, *required)``;
      ``sample(*parameters)`` and ``variational_log_prob(sample, *parameters)``
      with ``_default_variational_parameters``;
      ``predictive_parameters_from_samples(samples)`` and
      ``log_prob_from_parameters(reference, parameters)``. What a flagged role
      needs is checked when the object is built (``__post_init__``).

    Attributes:
        distribution_parameters: names of the parameters; the first is the
            *primary* one (a mean or mode, closest to a plain weight), names
            starting with ``log_`` are logarithms of positive values.
        is_prior: usable as prior.
        is_variational_distribution: usable as variational distribution.
        is_predictive_distribution: usable as predictive distribution.

    Example:
        >>> import torch
        >>> from pyrolite_bnn.vi.distributions import Distribution
        >>> class Laplace(Distribution):
        ...     is_prior = True
        ...     distribution_parameters = ("mean", "log_scale")
        ...     mean, log_scale = 0.0, 0.0
        ...     def prior_log_prob(self, sample):
        ...         return -(sample - self.mean).abs() - self.log_scale
        >>> Laplace().to_prior()
        AdaptedPrior(Laplace)
    """

    distribution_parameters: tuple[str, ...]
    _required_parameters: tuple[str, ...] = ()
    _scaling_parameters: tuple[str, ...]
    _rescaled: bool = False
    is_prior: bool = False
    is_variational_distribution: bool = False
    is_predictive_distribution: bool = False

    # ------------------------------------------------------------ checks
    def __post_init__(self) -> None:
        """Check that every flagged role has what it needs (torch_blue's checks).

        Raises:
            NoRoleError: for a distribution with no role (a ``TypeError`` as
                in torch_blue 1.1.0, and a ``NotImplementedError`` as on its
                dev branch).
        """
        if not (
            self.is_prior
            or self.is_variational_distribution
            or self.is_predictive_distribution
        ):
            raise NoRoleError(
                f"{type(self).__name__} not flagged to be functional as any "
                "distribution: a Distribution must use at least one of Prior, "
                "VariationalDistribution, or PredictiveDistribution as interface "
                "(or set is_prior, is_variational_distribution or "
                "is_predictive_distribution to True)."
            )
        if self.is_prior:
            self._check_prior()
        if self.is_variational_distribution:
            self._check_variational()
        if self.is_predictive_distribution:
            self._check_predictive()

    def _check_prior(self) -> None:
        if not hasattr(self, "distribution_parameters"):
            raise NotImplementedError("Subclasses must define distribution_parameters")
        if not hasattr(self, "prior_log_prob"):
            raise NotImplementedError("Subclasses must define prior_log_prob")
        assert _accepts(self.prior_log_prob, len(self._required_parameters) + 1), (
            "prior_log_prob must accept an argument for each required parameter plus "
            "the sample"
        )
        for name in self.scaling_parameters:
            assert hasattr(self, name), (
                f"Module [{type(self).__name__}] is missing exposed scaling parameter "
                f"[{name}]"
            )

    def _check_variational(self) -> None:
        if not hasattr(self, "distribution_parameters"):
            raise NotImplementedError("Subclasses must define distribution_parameters")
        if not hasattr(self, "_default_variational_parameters"):
            raise NotImplementedError(
                "Subclasses must define _default_variational_parameters"
            )
        count = len(self.distribution_parameters)
        assert len(self.default_parameters()) == count, (
            "Each variational parameter must be assigned a default value"
        )
        if not hasattr(self, "sample"):
            raise NotImplementedError("Subclasses must define the sample method")
        one_tuple = isinstance(self, VariationalDistribution)  # 1.1.0: sample(params)
        assert one_tuple or _accepts(self.sample, count), (
            "Sample must accept exactly one Tensor for each distribution parameter"
        )
        if not hasattr(self, "variational_log_prob"):
            raise NotImplementedError("Subclasses must define variational_log_prob")
        assert _accepts(self.variational_log_prob, count + 1), (
            "variational_log_prob must accept an argument for each variational "
            "parameter plus the sample"
        )

    def _check_predictive(self) -> None:
        if not hasattr(self, "distribution_parameters"):
            raise NotImplementedError("Subclasses must define distribution_parameters")
        if not hasattr(self, "predictive_parameters_from_samples"):
            raise NotImplementedError(
                "Subclasses must define predictive_parameters_from_samples"
            )
        if not hasattr(self, "log_prob_from_parameters"):
            raise NotImplementedError("Subclasses must define log_prob_from_parameters")

    # ------------------------------------------------------------ parameters
    @property
    def primary_parameter(self) -> str:
        """The parameter closest to a non-Bayesian weight (the first one)."""
        return self.distribution_parameters[0]

    @property
    def scaling_parameters(self) -> tuple[str, ...]:
        """Parameters that :meth:`kaiming_rescale` scales (default: all)."""
        scaling: tuple[str, ...] | None = getattr(self, "_scaling_parameters", None)
        return self.distribution_parameters if scaling is None else scaling

    def get_parameters(self) -> tuple[Any, ...]:
        """Values of :attr:`distribution_parameters` (attributes), in order."""
        return tuple(getattr(self, name) for name in self.distribution_parameters)

    def default_parameters(self) -> tuple[Any, ...]:
        """Default value of every variational parameter."""
        defaults: Sequence[Any] = getattr(self, "_default_variational_parameters")  # noqa: B009
        return tuple(defaults)

    def match_parameters(
        self, distribution_parameters: Sequence[str]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Split this distribution's parameters into shared and exclusive ones.

        Args:
            distribution_parameters: names to compare with.

        Returns:
            ``(shared, exclusive)``: each maps a name of
            :attr:`distribution_parameters` to its index.
        """
        shared: dict[str, int] = {}
        exclusive: dict[str, int] = {}
        for index, name in enumerate(self.distribution_parameters):
            (shared if name in distribution_parameters else exclusive)[name] = index
        return shared, exclusive

    def kaiming_rescale(self, fan_in: int, eps: float = 1e-5) -> None:
        """Scale the prior like Kaiming initialisation (by ``1/sqrt(3 fan_in)``).

        ``log_`` parameters are shifted by ``log(scale + eps)`` instead. A second
        call warns and does nothing.
        """
        if self._rescaled:
            warn_at_caller(
                f"{type(self).__name__} has already been rescaled. Ignoring rescaling.",
            )
            return
        self._rescaled = True
        scale = 1 / math.sqrt(3 * fan_in) if fan_in > 0 else 0.0
        for name in self.scaling_parameters:
            value = getattr(self, name)
            if name.startswith("log"):
                setattr(self, name, value + math.log(scale + eps))
            else:
                setattr(self, name, value * scale)

    # ------------------------------------------------------------ initialisation
    def initial_constants(
        self, fan_in: int, kaiming_scaling: bool = True, eps: float = 1e-5
    ) -> dict[str, float]:
        """The value every non-mean-like parameter starts at, by name.

        Its default, with ``kaiming_scaling`` times ``1/sqrt(fan_in)``
        (``log_`` parameters: plus ``log(1/sqrt(fan_in) + eps)``). Computed
        from numbers only (no tensor values are read), so it serves a layer
        built on the ``meta`` device, whose posteriors keep these values for
        their own ``reset_parameters()``. Mean-like parameters (``mean``,
        ``mode``, ``loc``) are drawn instead and are not listed.

        Example:
            >>> from pyrolite_bnn import vi
            >>> normal = vi.distributions.MeanFieldNormal(std=1.0)
            >>> round(normal.initial_constants(fan_in=4)["log_std"], 4)
            -0.6931
        """
        constants: dict[str, float] = {}
        for name, default in zip(
            self.distribution_parameters, self.default_parameters(), strict=True
        ):
            if name in _WEIGHT_LIKE:
                continue
            value = float(default)
            if kaiming_scaling:
                value = _fan_in_scaled(value, fan_in, name.startswith("log"), eps)
            constants[name] = value
        return constants

    @staticmethod
    def _init_constant(
        parameter: Tensor, default: float, fan_in: int, is_log: bool, eps: float = 1e-5
    ) -> None:
        """torch_blue's name: ``default`` scaled by the fan-in, in place.

        Times ``1/sqrt(fan_in)`` (``is_log``: plus ``log(1/sqrt(fan_in) +
        eps)``), the value :meth:`initial_constants` gives a parameter.
        """
        with torch.no_grad():
            init.constant_(parameter, _fan_in_scaled(default, fan_in, is_log, eps))

    @staticmethod
    def _init_uniform(parameter: Tensor, fan_in: int) -> None:
        """torch_blue's name for :func:`init_like_a_weight` (in place)."""
        init_like_a_weight(parameter, fan_in)

    def reset_variational_parameters(
        self, module: Module, variable: str, fan_in: int, kaiming_scaling: bool = True
    ) -> None:
        """Re-initialise ``module``'s variational parameters of ``variable``.

        Mean-like parameters (``mean``, ``mode``, ``loc``) are drawn like the
        weights of a ``torch.nn`` layer; the others start at
        :meth:`initial_constants`. ``module`` is a
        :class:`pyrolite_bnn.vi.VIModule` or any module exposing the parameters
        under ``module.variational_parameter_name(variable, parameter)``.
        """
        tensors = variational_tensors(module, variable, self.distribution_parameters)
        constants = self.initial_constants(fan_in, kaiming_scaling)
        for tensor, name in zip(tensors, self.distribution_parameters, strict=True):
            if name in constants:
                with torch.no_grad():
                    init.constant_(tensor, constants[name])
            else:
                init_like_a_weight(tensor, fan_in)
        store_variational_tensors(module, variable, tensors)

    def prior_initialization_values(self) -> dict[str, float] | None:
        """The constants prior initialization sets the variational parameters to.

        By parameter name: each variational parameter of that name starts at
        the value, every weight alike; the others keep their initialisation
        (:meth:`reset_variational_parameters`). Read from the prior's numbers
        (as rescaled by :meth:`kaiming_rescale`), no tensor values. A layer
        hands them to its posteriors, so that every reset of the layer, and
        each posterior's own (FSDP's deferred initialisation), starts where
        construction does. ``None`` (the base class): this prior gives none;
        :meth:`reset_parameters_to_prior` then warns, unless a subclass
        overrides it with code of its own (``BasicQuietPrior`` draws).

        Example:
            >>> from pyrolite_bnn import vi
            >>> vi.distributions.MeanFieldNormal(0.5, 1.0).prior_initialization_values()
            {'mean': 0.5, 'log_std': 0.0}
        """
        return None

    def reset_parameters_to_prior(self, module: Module, variable: str) -> None:
        """Set ``module``'s variational parameters of ``variable`` to the prior's.

        The base class sets those named by :meth:`prior_initialization_values`;
        where it gives none, prior initialization is not supported, and it
        warns.
        """
        values = self.prior_initialization_values()
        if values is None:
            warn_at_caller(
                f"Module [{type(self).__name__}] is missing the "
                '"reset_parameters_to_prior" method and therefore does not support '
                "prior initialization.",
            )
            return
        assign_variational_parameters(module, variable, values)

    # ------------------------------------------------------------ predictive
    def log_prob_from_samples(self, reference: Tensor, samples: Tensor) -> Tensor:
        """``E_q[log p(reference | w)]`` estimated from model samples ``(S, B, ...)``.

        The mean over samples of each sample's log-likelihood (the ELBO's data
        term), not torch_blue's log-likelihood of the prediction made from all
        samples (see the migration table). Elementwise, as torch_blue returns
        it: ``(B, D)`` for targets ``(B, D)`` (sum the last dimension for an
        example's log-likelihood).
        """
        from pyrolite_bnn.vi.distributions._adapters import AdaptedPredictive

        self._check_predictive_role("log_prob_from_samples")
        predictive = self.to_predictive()
        if isinstance(predictive, AdaptedPredictive):  # a distribution of the user's
            return predictive.elementwise_log_likelihood(samples, reference).mean(0)
        distribution, target = predictive.observe(samples, reference)
        while isinstance(distribution, pyro_dist.Independent):
            distribution = distribution.base_dist
        result: Tensor = distribution.log_prob(target).mean(0)
        return result

    # ------------------------------------------------------------ adapters
    def to_prior(self) -> BnnPrior:
        """This prior as a :class:`pyrolite_bnn.Prior` module (a copy).

        Tensor parameters become buffers of the module, so they are saved in
        ``state_dict`` and follow ``.to()``.
        """
        from pyrolite_bnn.vi.distributions._adapters import AdaptedPrior

        return AdaptedPrior(self)

    def to_variational(self) -> VariationalFamily:
        """This distribution as a :class:`pyrolite_bnn.VariationalFamily`."""
        from pyrolite_bnn.vi.distributions._adapters import AdaptedFamily

        return AdaptedFamily(self)

    def to_predictive(self) -> BnnPredictive:
        """This distribution as a :class:`pyrolite_bnn.PredictiveDistribution`.

        Built once and kept, so that learned parameters (a noise scale) are
        shared by every loss and helper that uses this object.

        Raises:
            UnsupportedDistributionError: for a distribution without the
                predictive role (``is_predictive_distribution`` is ``False``).
        """
        self._check_predictive_role("to_predictive")
        built: BnnPredictive | None = self.__dict__.get("_bnn_predictive")
        if built is None:
            built = self.build_predictive()
            self.__dict__["_bnn_predictive"] = built
        return built

    def _check_predictive_role(self, method: str) -> None:
        """Refuse ``method`` (a predictive computation) without the role.

        Without it a distribution lacks ``predictive_parameters_from_samples``
        (torch_blue's ``StudentT``): the call failed on that attribute.
        """
        if not self.is_predictive_distribution:
            raise UnsupportedDistributionError(
                f"{type(self).__name__}.{method}: {not_predictive(self)}"
            )

    def build_predictive(self) -> BnnPredictive:
        """Create the likelihood module (called once by :meth:`to_predictive`)."""
        from pyrolite_bnn.vi.distributions._adapters import AdaptedPredictive

        return AdaptedPredictive(self)


def _fan_in_scaled(default: float, fan_in: int, is_log: bool, eps: float) -> float:
    """``default`` times ``1/sqrt(fan_in)``; a log one plus its log (``+ eps``)."""
    scale = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return default + math.log(scale + eps) if is_log else default * scale


def constant_prior_initialization(prior: Distribution) -> dict[str, float] | None:
    """What prior initialization with ``prior`` sets, where constants say it all.

    :meth:`Distribution.prior_initialization_values`, unless the prior's class
    overrides :meth:`~Distribution.reset_parameters_to_prior` (code of its
    own, which the constants may not describe: ``BasicQuietPrior`` draws
    each mean and gives each weight a standard deviation of its own); then,
    and for a prior that gives no constants, ``None``.

    Example:
        >>> from pyrolite_bnn import vi
        >>> constant_prior_initialization(vi.distributions.MeanFieldNormal())
        {'mean': 0.0, 'log_std': 0.0}
        >>> print(constant_prior_initialization(vi.distributions.BasicQuietPrior()))
        None
    """
    if not keeps_methods(prior, Distribution, ("reset_parameters_to_prior",)):
        return None
    return prior.prior_initialization_values()


def init_like_a_weight(parameter: Tensor, fan_in: int) -> Tensor:
    """Fill ``parameter`` like a ``torch.nn`` weight, in place, and return it.

    Kaiming uniform for matrices, uniform in ``±1/sqrt(fan_in)`` for vectors:
    how torch_blue draws the mean-like variational parameters, at construction
    and, as a posterior's ``loc_init``, at every reset.
    """
    with torch.no_grad():
        if parameter.dim() < 2:
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            init.uniform_(parameter, -bound, bound)
        else:
            init.kaiming_uniform_(parameter, a=math.sqrt(5))
    return parameter


def _accepts(function: Callable[..., Any], count: int) -> bool:
    """Whether ``function`` takes ``count`` positional arguments (or ``*args``)."""
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return True
    return len(parameters) == count


def variational_tensors(
    module: Module, variable: str, names: Sequence[str]
) -> list[Tensor]:
    """Tensors to initialise the parameters ``names`` of ``variable`` in place.

    A :class:`pyrolite_bnn.vi.VIModule` gets fresh tensors (its stored
    parameters are transformed; :func:`store_variational_tensors` writes them);
    another module (torch_blue's convention) gets its own attributes
    ``module.variational_parameter_name(variable, name)``.
    """
    from pyrolite_bnn.vi.base import VIModule

    if isinstance(module, VIModule):
        shape, like = module.variable_shape(variable)
        return [torch.empty(shape, device=like.device, dtype=like.dtype) for _ in names]
    naming = getattr(module, "variational_parameter_name")  # noqa: B009
    return [getattr(module, naming(variable, name)) for name in names]


def store_variational_tensors(
    module: Module, variable: str, tensors: Sequence[Tensor]
) -> None:
    """Write tensors from :func:`variational_tensors` back (no-op for in-place ones)."""
    from pyrolite_bnn.vi.base import VIModule

    if isinstance(module, VIModule):
        module.set_variational_parameters(variable, tensors)


def assign_variational_parameters(
    module: Module, variable: str, values: Mapping[str, Any]
) -> None:
    """Fill the named variational parameters of ``variable`` with constants.

    Parameters not in ``values`` keep their current values.
    """
    from pyrolite_bnn.vi.base import VIModule

    if isinstance(module, VIModule):
        family = module.variational_distribution[variable]
        assert family is not None
        current = module.get_variational_parameters(variable)
        names = family.distribution_parameters
        module.set_variational_parameters(
            variable,
            [
                torch.full_like(c, float(values[n])) if n in values else c.detach()
                for n, c in zip(names, current, strict=True)
            ],
        )
        return
    naming = getattr(module, "variational_parameter_name")  # noqa: B009
    with torch.no_grad():
        for name, value in values.items():
            init.constant_(getattr(module, naming(variable, name)), float(value))


def sample_function(distribution: Distribution) -> Callable[[tuple[Any, ...]], Tensor]:
    """``parameters -> draw`` for either convention (1.1.0 takes one tuple)."""
    if isinstance(distribution, VariationalDistribution):
        return distribution.sample
    return lambda parameters: distribution.sample(*parameters)  # type: ignore[attr-defined]


def variational_log_prob_function(
    distribution: Distribution,
) -> Callable[[Tensor, tuple[Any, ...]], Tensor]:
    """``(value, parameters) -> elementwise log q`` for either convention."""
    method = distribution.variational_log_prob  # type: ignore[attr-defined]
    return lambda value, parameters: method(value, *parameters)


class _RoleInterface(Distribution):
    """torch_blue 1.1.0's interfaces: one ``log_prob(sample, parameters)``."""

    @abstractmethod
    def log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        """Elementwise log density of ``sample`` given the parameters.

        The parameters come as one tuple (torch_blue 1.1.0) or one by one (its
        dev branch); built-in distributions accept both.
        """


class Prior(_RoleInterface):
    """Interface of distributions usable as prior (torch_blue 1.1.0).

    Implement :attr:`~Distribution.distribution_parameters` (each stored as an
    attribute of the same name) and :meth:`log_prob`. Hierarchical priors name
    the variational parameters they need in ``_required_parameters``; they are
    appended to the parameters passed to ``log_prob``.
    """

    is_prior = True

    def prior_log_prob(self, sample: Tensor, *hyperparameters: Any) -> Tensor:
        """``log_prob`` with this prior's own parameters (plus required ones)."""
        extra = as_parameter_tuple(*hyperparameters)
        return self.log_prob(sample, (*self.get_parameters(), *extra))


class VariationalDistribution(_RoleInterface):
    """Interface of distributions usable as variational distribution (1.1.0).

    Implement :attr:`~Distribution.distribution_parameters`,
    ``_default_variational_parameters`` (one default per parameter),
    :meth:`sample` (differentiable) and :meth:`log_prob`.
    """

    is_variational_distribution = True

    @property
    @abstractmethod
    def _default_variational_parameters(self) -> tuple[Any, ...]:
        """Default value of every parameter."""

    @abstractmethod
    def sample(self, *parameters: Any) -> Tensor:
        """A differentiable draw given the parameters (all of one shape)."""

    def variational_log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        """Elementwise log density of ``sample`` under the variational parameters."""
        return self.log_prob(sample, as_parameter_tuple(*parameters))


class PredictiveDistribution(_RoleInterface):
    """Interface of distributions usable as predictive distribution (likelihood).

    Implement :meth:`predictive_parameters_from_samples` and
    :meth:`~Distribution.log_prob` (of a target given the parameters).
    """

    is_predictive_distribution = True

    @abstractmethod
    def predictive_parameters_from_samples(self, samples: Tensor) -> Any:
        """The prediction (distribution parameters) from samples ``(S, *)``."""

    def log_prob_from_parameters(self, reference: Tensor, parameters: Any) -> Tensor:
        """Log probability of ``reference`` under the predicted parameters."""
        return self.log_prob(reference, parameters)
