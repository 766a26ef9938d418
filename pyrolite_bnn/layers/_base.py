"""Private base class of the Bayesian weight layers (``VILinear``, ``VIConv2d``, ...).

A weight layer declares its random variables from a shape table, initialises
their posterior means as ``torch.nn`` initialises the weights, resolves its
``estimator=`` once, and prints its non-default Bayesian options in its repr.
Subclasses set their geometry attributes, call :meth:`_VIWeightLayer._declare`
and finally :meth:`~_VIWeightLayer.reset_parameters`, as ``torch.nn`` layers do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from typing import ClassVar

import torch
from torch import Tensor

from pyrolite_bnn.distributions.priors import as_prior
from pyrolite_bnn.distributions.variational import MeanFieldNormal, VariationalFamily
from pyrolite_bnn.layers._initialisers import FanInUniform, KaimingUniform
from pyrolite_bnn.layers._options import (
    ESTIMATORS,
    EstimatorLayer,
    check_estimator,
    per_variable,
)
from pyrolite_bnn.module import VIModule
from pyrolite_bnn.variables import UnitLayout

__all__ = ["MOMENT_ESTIMATORS", "options_repr"]

# Estimators that hand a layer the posterior moments instead of weight draws.
MOMENT_ESTIMATORS = ("local", "flipout")


class _VIWeightLayer(EstimatorLayer):
    """A layer whose weight tensors are random variables.

    Class attributes a subclass may set:

    - ``_auto_estimator``: what ``estimator="auto"`` means for the layer when
      every variable has the mean-field Normal posterior (``"reparam"`` by
      default; with any other family ``"auto"`` is always ``"reparam"``).
    - ``_estimators``: the estimators the layer implements.

    Attributes:
        estimator: the ``estimator=`` option as given (``"auto"`` by default).
    """

    _auto_estimator: ClassVar[str] = "reparam"
    _estimators: ClassVar[tuple[str, ...]] = ESTIMATORS

    @property
    def estimator(self) -> str:
        """The ``estimator=`` option; assigning it re-decides what ``"auto"`` means."""
        return str(self.__dict__["_estimator_option"])

    @estimator.setter
    def estimator(self, value: str) -> None:
        if value in ESTIMATORS and value not in self._estimators:
            reason = (
                "its weights are shared across positions, so sampling outputs "
                "from the weight moments would not be exact"
                if value == "local"
                else f"{value!r} is not implemented for this layer"
            )
            raise ValueError(
                f"{type(self).__name__} supports estimator in {self._estimators}, got "
                f"{value!r}: {reason}"
            )
        families = self.__dict__.get("_families")
        check_estimator(value, None if families is None else dict(families))
        self.__dict__["_estimator_option"] = value
        if families is not None:  # after construction: takes effect at once
            self._resolved_estimator = self._resolve_estimator()

    weight: Tensor
    bias: Tensor | None

    def _declare(
        self,
        shapes: Mapping[str, tuple[int, ...] | None],
        *,
        prior: object,
        variational: object,
        estimator: str,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        units: Mapping[str, UnitLayout] | None = None,
    ) -> None:
        """Declare one random variable per entry of ``shapes``, in order.

        Args:
            shapes: variable name -> shape of one draw; ``None`` declares no
                variable and sets the attribute to ``None`` (an absent bias).
            prior: the layer's ``prior=`` option (single or per variable).
            variational: the layer's ``variational=`` option.
            estimator: the layer's ``estimator=`` option.
            device: device of the parameters and prior buffers.
            dtype: dtype of the parameters and prior buffers.
            units: variable name -> where its output units lie, for variables
                whose units are not along the first dimension.
        """
        declared = {name: shape for name, shape in shapes.items() if shape is not None}
        names = tuple(declared)
        self.estimator = check_estimator(estimator, variational)
        families: dict[str, VariationalFamily] = {}
        for name, shape in declared.items():
            family = per_variable(variational, name, "variational", names)
            families[name] = MeanFieldNormal() if family is None else family  # type: ignore[assignment]
            self.declare_random_variable(
                name,
                shape,
                per_variable(prior, name, "prior", names),
                families[name],
                units=None if units is None else units.get(name),
                init=self._mean_init(name, declared),
                device=device,
                dtype=dtype,
            )
        for name in shapes.keys() - declared.keys():
            setattr(self, name, None)
        self._families = families
        self._resolved_estimator = self._resolve_estimator()

    def _resolve_estimator(self) -> str:
        """The estimator ``estimator="auto"`` stands for, decided once."""
        if self.estimator != "auto":
            return self.estimator
        mean_field = all(
            isinstance(f, MeanFieldNormal) for f in self._families.values()
        )
        return self._auto_estimator if mean_field else "reparam"

    def graph_key(self) -> tuple[Hashable, ...]:
        """See :meth:`VIModule.graph_key`; adds the estimator."""
        return (*super().graph_key(), self.estimator, self._resolved_estimator)

    def uses_moments(self) -> bool:
        """``True`` when the layer samples its outputs from the weight moments.

        That is the ``"local"`` and ``"flipout"`` estimators (which need the
        mean-field Normal posterior), and ``"auto"`` where the layer's automatic
        choice is one of them.
        """
        return self._resolved_estimator in MOMENT_ESTIMATORS

    # ------------------------------------------------------------ initialisation
    def reset_parameters(self) -> None:
        """Re-initialise every posterior (means as ``torch.nn`` weights).

        Each mean is drawn by its posterior's
        :attr:`~pyrolite_bnn.distributions.variational.Posterior.loc_init`
        (the layer's initialisation, :meth:`_mean_init`), in declaration order:
        torch's order, so a seeded layer starts at the seeded torch layer's
        weights. Scales return to their initial value, priors to the
        hyperparameters they were built with
        (:meth:`~pyrolite_bnn.VIModule.reset_priors`).
        """
        for name in self._declared:
            posterior = self.posterior[name]
            posterior.reset_parameters(posterior.initial_loc())
        self.reset_priors()

    def _mean_init(
        self, name: str, shapes: Mapping[str, tuple[int, ...]]
    ) -> Callable[[Tensor], Tensor]:
        """How the mean of variable ``name`` is drawn: ``torch.nn``'s fan-in init.

        Kaiming-uniform weight, bias uniform in ``±1/sqrt(fan_in)`` of the
        weight's fan-in.

        Args:
            name: the variable.
            shapes: every variable the layer declares, name -> shape.
        """
        if name == "weight":
            return KaimingUniform()
        return FanInUniform(math.prod(shapes["weight"][1:]))

    # ------------------------------------------------------------------- repr
    def _torch_repr(self) -> str:
        """The constructor arguments as the ``torch.nn`` counterpart prints them."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        """Constructor arguments as ``torch.nn`` prints them, then options.

        The Bayesian options (``prior=``, ``variational=``, ``estimator=``) are
        shown where they differ from the defaults.
        """
        options = options_repr(self, self._families, self.estimator)
        return ", ".join(part for part in (self._torch_repr(), options) if part)


def options_repr(
    layer: VIModule, families: Mapping[str, VariationalFamily], estimator: str
) -> str:
    """A layer's non-default Bayesian options, ``prior=..., estimator=...``.

    Args:
        layer: the layer (its own priors, by variable name, are shown).
        families: the variational family of each of its variables.
        estimator: its ``estimator=`` option.
    """
    parts = []
    default_prior = repr(as_prior(None))
    priors = {name: repr(layer.prior[name]) for name in layer.posterior}
    parts.append(_option("prior", priors, default_prior))
    shown = {name: repr(family) for name, family in families.items()}
    parts.append(_option("variational", shown, repr(MeanFieldNormal())))
    if estimator != "auto":
        parts.append(f"estimator={estimator!r}")
    return ", ".join(part for part in parts if part)


def _option(keyword: str, values: dict[str, str], default: str) -> str:
    """``keyword=value`` for a per-variable option that differs from ``default``.

    One value when every variable has the same, else a mapping of the variables
    whose value is not the default; empty when all are the default.
    """
    distinct = set(values.values())
    if distinct == {default}:
        return ""
    if len(distinct) == 1:
        return f"{keyword}={distinct.pop()}"
    changed = ", ".join(
        f"{name!r}: {value}" for name, value in values.items() if value != default
    )
    return f"{keyword}={{{changed}}}"
