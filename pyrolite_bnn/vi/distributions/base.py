"""torch_blue's distribution interfaces, adapted to this library's classes.

A torch_blue distribution is one object that may serve in up to three roles:
:class:`Prior`, :class:`VariationalDistribution` and
:class:`PredictiveDistribution`. Each interface here keeps torch_blue's methods
(``log_prob(sample, parameters)``, ``sample(parameters)``,
``predictive_parameters_from_samples(samples)``, ...) and adds one adapter
method that hands the role over to this library's machinery:

* :meth:`Prior.to_prior` returns a :class:`pyrolite_bnn.Prior` module,
* :meth:`VariationalDistribution.to_variational` a
  :class:`pyrolite_bnn.VariationalFamily`,
* :meth:`PredictiveDistribution.to_predictive` a
  :class:`pyrolite_bnn.PredictiveDistribution` (the likelihood of the loss).

The built-in distributions map to this library's native classes (closed-form
KL, local reparameterisation); a custom subclass that only defines torch_blue's
methods is wrapped generically (:mod:`pyrolite_bnn.vi.distributions._adapters`).
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import init

from pyrolite_bnn.distributions.predictive import (
    PredictiveDistribution as BnnPredictive,
)
from pyrolite_bnn.distributions.priors import Prior as BnnPrior
from pyrolite_bnn.distributions.variational import VariationalFamily

if TYPE_CHECKING:
    from pyrolite_bnn.vi.base import VIModule

__all__ = ["Distribution", "PredictiveDistribution", "Prior", "VariationalDistribution"]

# Parameter names torch_blue initialises like the weights of a plain layer.
_WEIGHT_LIKE = ("mean", "mode", "loc")


def as_parameter_tuple(*parameters: Any) -> tuple[Any, ...]:
    """Parameters given as one tuple (torch_blue 1.1) or one by one (its dev branch)."""
    if len(parameters) == 1 and isinstance(parameters[0], (tuple, list)):
        return tuple(parameters[0])
    return parameters


class Distribution(ABC):
    """Base class of torch_blue-style distributions.

    Subclass one or more of :class:`Prior`, :class:`VariationalDistribution`
    and :class:`PredictiveDistribution`, not this class directly.

    Attributes:
        distribution_parameters: names of the parameters; the first is the
            *primary* one (a mean or mode, closest to a plain weight), names
            starting with ``log_`` are logarithms of positive values.
    """

    distribution_parameters: tuple[str, ...]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        """Refuse distributions that implement none of the three roles."""
        if not issubclass(
            cls, (Prior, VariationalDistribution, PredictiveDistribution)
        ):
            raise TypeError(
                "A Distribution must use at least one of Prior, VariationalDistribution"
                ", or PredictiveDistribution as interface."
            )
        return super().__new__(cls)

    @property
    def primary_parameter(self) -> str:
        """The parameter closest to a non-Bayesian weight (the first one)."""
        return self.distribution_parameters[0]

    @property
    def is_prior(self) -> bool:
        """Whether it can serve as a prior (torch_blue dev-branch flag)."""
        return isinstance(self, Prior)

    @property
    def is_variational_distribution(self) -> bool:
        """Whether it can serve as a variational distribution."""
        return isinstance(self, VariationalDistribution)

    @property
    def is_predictive_distribution(self) -> bool:
        """Whether it can serve as a predictive distribution."""
        return isinstance(self, PredictiveDistribution)

    @abstractmethod
    def log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        """Elementwise log density of ``sample`` given the parameters.

        The parameters come as one tuple (torch_blue 1.1.0) or one by one (its
        dev branch); built-in distributions accept both.
        """

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


class Prior(Distribution):
    """Interface of distributions usable as prior.

    Implement :attr:`~Distribution.distribution_parameters` (each stored as an
    attribute of the same name) and :meth:`~Distribution.log_prob`. Hierarchical
    priors name the variational parameters they need in ``_required_parameters``;
    they are appended to the parameters passed to ``log_prob``.
    """

    _rescaled: bool = False
    _required_parameters: tuple[str, ...] = ()

    @property
    def scaling_parameters(self) -> tuple[str, ...]:
        """Parameters that :meth:`kaiming_rescale` scales."""
        scaling: tuple[str, ...] | None = getattr(self, "_scaling_parameters", None)
        return self.distribution_parameters if scaling is None else scaling

    def get_parameters(self) -> tuple[Any, ...]:
        """Values of :attr:`~Distribution.distribution_parameters`, in order."""
        return tuple(getattr(self, name) for name in self.distribution_parameters)

    def prior_log_prob(self, sample: Tensor, *hyperparameters: Any) -> Tensor:
        """``log_prob`` with this prior's own parameters (plus required ones)."""
        extra = as_parameter_tuple(*hyperparameters)
        return self.log_prob(sample, (*self.get_parameters(), *extra))

    def kaiming_rescale(self, fan_in: int, eps: float = 1e-5) -> None:
        """Scale the parameters like Kaiming initialisation (by ``1/sqrt(3 fan_in)``).

        ``log_`` parameters are shifted by ``log(scale + eps)`` instead. A second
        call warns and does nothing.
        """
        if self._rescaled:
            warnings.warn(
                f"{type(self).__name__} has already been rescaled. Ignoring rescaling.",
                stacklevel=2,
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

    def reset_parameters_to_prior(self, module: VIModule, variable: str) -> None:
        """Set ``module``'s variational parameters of ``variable`` to the prior's.

        The base class does not support it and warns.
        """
        warnings.warn(
            f'Module [{type(self).__name__}] is missing the "reset_parameters_to_prior"'
            " method and therefore does not support prior initialization.",
            stacklevel=2,
        )

    def to_prior(self) -> BnnPrior:
        """This prior as a :class:`pyrolite_bnn.Prior` module (a copy).

        Tensor parameters become buffers of the module, so they are saved in
        ``state_dict`` and follow ``.to()``.
        """
        from pyrolite_bnn.vi.distributions._adapters import AdaptedPrior

        return AdaptedPrior(self)


class VariationalDistribution(Distribution):
    """Interface of distributions usable as variational distribution.

    Implement :attr:`~Distribution.distribution_parameters`,
    ``_default_variational_parameters`` (one default per parameter),
    :meth:`sample` (differentiable) and :meth:`~Distribution.log_prob`.
    """

    @property
    @abstractmethod
    def _default_variational_parameters(self) -> tuple[Any, ...]:
        """Default value of every parameter."""

    def default_parameters(self) -> tuple[Any, ...]:
        """Default value of every parameter (public view)."""
        return tuple(self._default_variational_parameters)

    @abstractmethod
    def sample(self, *parameters: Any) -> Tensor:
        """A differentiable draw given the parameters (all of one shape)."""

    def variational_log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        """Elementwise log density of ``sample`` under the variational parameters."""
        return self.log_prob(sample, as_parameter_tuple(*parameters))

    def initial_parameters(
        self,
        shape: Sequence[int],
        fan_in: int,
        kaiming_scaling: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, ...]:
        """torch_blue's starting values of the parameters of a tensor of ``shape``.

        Mean-like parameters (``mean``, ``mode``, ``loc``) are drawn like the
        weights of a ``torch.nn`` layer (Kaiming uniform for matrices, uniform in
        ``±1/sqrt(fan_in)`` for vectors). The others start at their default;
        with ``kaiming_scaling`` multiplied by ``1/sqrt(fan_in)`` (``log_``
        parameters: shifted by ``log(1/sqrt(fan_in) + 1e-5)``).
        """
        values = []
        scale = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        for name, default in zip(
            self.distribution_parameters, self.default_parameters(), strict=True
        ):
            value = torch.empty(tuple(shape), device=device, dtype=dtype)
            if name in _WEIGHT_LIKE:
                if value.dim() < 2:
                    init.uniform_(value, -scale, scale)
                else:
                    init.kaiming_uniform_(value, a=math.sqrt(5))
            else:
                start = float(default)
                if kaiming_scaling:
                    start = (
                        start + math.log(scale + 1e-5)
                        if name.startswith("log")
                        else start * scale
                    )
                value.fill_(start)
            values.append(value)
        return tuple(values)

    def reset_variational_parameters(
        self, module: VIModule, variable: str, fan_in: int, kaiming_scaling: bool = True
    ) -> None:
        """Re-initialise ``module``'s parameters of ``variable`` (see above)."""
        shape, like = module.variable_shape(variable)
        module.set_variational_parameters(
            variable,
            self.initial_parameters(
                shape, fan_in, kaiming_scaling, device=like.device, dtype=like.dtype
            ),
        )

    def to_variational(self) -> VariationalFamily:
        """This distribution as a :class:`pyrolite_bnn.VariationalFamily`."""
        from pyrolite_bnn.vi.distributions._adapters import AdaptedFamily

        return AdaptedFamily(self)


class PredictiveDistribution(Distribution):
    """Interface of distributions usable as predictive distribution (likelihood).

    Implement :meth:`predictive_parameters_from_samples` and
    :meth:`~Distribution.log_prob` (of a target given the parameters).
    """

    @abstractmethod
    def predictive_parameters_from_samples(self, samples: Tensor) -> Any:
        """The prediction (distribution parameters) from samples ``(S, *)``."""

    def log_prob_from_parameters(self, reference: Tensor, parameters: Any) -> Tensor:
        """Log probability of ``reference`` under the predicted parameters."""
        return self.log_prob(reference, parameters)

    def log_prob_from_samples(self, reference: Tensor, samples: Tensor) -> Tensor:
        """``E_q[log p(reference | w)]`` estimated from model samples ``(S, B, ...)``.

        The mean over samples of each sample's log-likelihood (the ELBO's data
        term), not torch_blue's log-likelihood of the averaged prediction.

        Returns:
            One value per example, ``(B,)``.
        """
        predictive = self.to_predictive()
        return predictive.log_likelihood(samples, reference).mean(0)

    def to_predictive(self) -> BnnPredictive:
        """This distribution as a :class:`pyrolite_bnn.PredictiveDistribution`.

        Built once and kept, so that learned parameters (a noise scale) are
        shared by every loss and helper that uses this object.
        """
        built: BnnPredictive | None = self.__dict__.get("_bnn_predictive")
        if built is None:
            built = self.build_predictive()
            self.__dict__["_bnn_predictive"] = built
        return built

    def build_predictive(self) -> BnnPredictive:
        """Create the likelihood module (called once by :meth:`to_predictive`)."""
        from pyrolite_bnn.vi.distributions._adapters import AdaptedPredictive

        return AdaptedPredictive(self)
