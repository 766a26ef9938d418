"""torch_blue's ``AnalyticalKullbackLeiblerLoss`` and its divergence modules."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeGuard

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from pyrolite_bnn._network import collect_variables
from pyrolite_bnn.distributions._precision import full_precision
from pyrolite_bnn.distributions.priors import NormalPrior, priors_in_full_precision
from pyrolite_bnn.distributions.priors import Prior as BnnPrior
from pyrolite_bnn.distributions.variational import (
    MeanFieldNormalPosterior,
    PointMassPosterior,
)
from pyrolite_bnn.module import VIModule as BnnVIModule
from pyrolite_bnn.record import analytic_kl
from pyrolite_bnn.variables import RandomVariable
from pyrolite_bnn.vi.base import VIModule
from pyrolite_bnn.vi.distributions._adapters import (
    AdaptedPrior,
    FlatPrior,
    flat_prior_kl,
)
from pyrolite_bnn.vi.kl_loss import KullbackLeiblerLoss

__all__ = [
    "AnalyticalKullbackLeiblerLoss",
    "KullbackLeiblerModule",
    "NonBayesianDivergence",
    "NormalNormalDivergence",
    "UniformNormalDivergence",
]


class KullbackLeiblerModule:
    """A closed-form KL from flat prior and variational parameter tensors.

    ``module(prior_parameters, variational_parameters)`` calls :meth:`forward`
    with the prior's parameters followed by the variational ones. Subclasses
    implement :meth:`forward` (the base class raises ``NotImplementedError``).
    """

    def __call__(
        self, prior_parameters: Iterable[Any], variational_parameters: Iterable[Any]
    ) -> Tensor:
        """Unpack both parameter lists into :meth:`forward`."""
        return self.forward(*prior_parameters, *variational_parameters)

    def forward(self, *parameters: Any) -> Tensor:
        """The divergence, summed."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement forward(*parameters)"
        )


class NormalNormalDivergence(KullbackLeiblerModule):
    """``KL(N(vm, e^{2 vls}) || N(pm, e^{2 pls}))`` summed.

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> zero = torch.zeros(3)
        >>> float(vi.NormalNormalDivergence()([zero, zero], [zero, zero]))
        0.0
    """

    def forward(self, *parameters: Any) -> Tensor:
        """``(prior_mean, prior_log_std, variational_mean, variational_log_std)``."""
        prior_mean, prior_log_std, mean, log_std = parameters
        prior_mean = torch.as_tensor(prior_mean).to(mean)
        prior_std = torch.as_tensor(prior_log_std).to(mean).exp()
        return kl_divergence(
            Normal(mean, log_std.exp()), Normal(prior_mean, prior_std)
        ).sum()


class UniformNormalDivergence(KullbackLeiblerModule):
    """KL from a Normal to the flat prior, torch_blue's formula ``sum(-log_std - 1/2)``.

    The flat prior is improper: its density has no normalising constant, and
    the KL is fixed only up to one. This is torch_blue's (the entropy of the
    Normal without its ``log(2 pi) / 2`` per weight), the value the loss takes
    for a ``UniformPrior`` weight whether this module is given as
    ``divergence_type`` or found by
    :class:`AnalyticalKullbackLeiblerLoss` (and by
    :class:`~pyrolite_bnn.vi.KullbackLeiblerLoss`). As torch_blue's, it
    subtracts ``log(2 pi) / 2`` more per weight under
    :func:`~pyrolite_bnn.vi.utils.use_norm_constants` (an improper prior's
    KL is defined only up to a constant).

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> zero = torch.zeros(2)
        >>> float(vi.UniformNormalDivergence()([None], [zero, zero]))
        -1.0
    """

    def forward(self, *parameters: Any) -> Tensor:
        """``(prior_mean (unused), variational_mean, variational_log_std)``."""
        _, _, log_std = parameters
        return flat_prior_kl(log_std)


class NonBayesianDivergence(KullbackLeiblerModule):
    """Zero: no prior-matching term (fixed weights under a flat prior).

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> vi.NonBayesianDivergence()([None], [torch.ones(2)])
        tensor([0.])
    """

    def forward(self, *parameters: Any) -> Tensor:
        """A zero on the last tensor's device."""
        device = next(
            (p.device for p in reversed(parameters) if isinstance(p, Tensor)), None
        )
        return torch.zeros(1, device=device)


class AnalyticalKullbackLeiblerLoss(KullbackLeiblerLoss):
    """torch_blue's loss with the KL in closed form, for any mix of layers.

    :class:`~pyrolite_bnn.vi.KullbackLeiblerLoss` with ``kl="auto"``, checked at
    construction: every weight tensor must have a closed-form KL (or be a
    fixed ``NonBayesian`` weight under a flat prior, whose KL is exactly zero).
    Unlike torch_blue, layers may use different prior/posterior pairs. With
    ``divergence_type`` the KL is that module applied to the flattened
    parameters of all layers instead: the parameters of their priors as they
    are when the loss is called (loaded, assigned or changed after
    construction too), in torch_blue's order.

    Args:
        model: the network (its ``return_log_probs`` is switched off).
        predictive_distribution: the likelihood.
        dataset_size: training set size ``N`` (or per call).
        divergence_type: a :class:`KullbackLeiblerModule`, or ``None``.
        heat: multiplier of the KL term.
        track: record the loss components in ``log``.

    Raises:
        NotImplementedError: a weight tensor has no closed-form KL.
        ValueError: the model has no random variables; when called, if
            ``divergence_type`` is given and a layer's prior has no torch_blue
            parameters, or is :class:`NormalNormalDivergence` or
            :class:`UniformNormalDivergence` and a layer's prior is not of
            its family, or it fails on the parameters of a layer whose
            prior/posterior pair is not that module's.

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> net = vi.VILinear(4, 2)
        >>> likelihood = vi.distributions.Categorical()
        >>> loss_fn = vi.AnalyticalKullbackLeiblerLoss(net, likelihood, 50)
        >>> net.return_log_probs
        False
        >>> loss_fn.prior_matching().shape
        torch.Size([])
    """

    def __init__(
        self,
        model: BnnVIModule,
        predictive_distribution: object,
        dataset_size: int | None = None,
        divergence_type: KullbackLeiblerModule | None = None,
        heat: float = 1.0,
        track: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                "AnalyticalKullbackLeiblerLoss(model, predictive_distribution, ...) "
                f"takes the network first, got {type(model).__name__}"
            )
        if divergence_type is not None and not callable(divergence_type):
            raise TypeError(
                "divergence_type must be a KullbackLeiblerModule (e.g. "
                f"NormalNormalDivergence()) or None, got {divergence_type!r}"
            )
        super().__init__(predictive_distribution, dataset_size, heat, track, kl="auto")
        variables = collect_variables(model)
        if not variables:
            raise ValueError("Provided model is not bayesian.")
        if divergence_type is None:
            for v in variables:
                if _closed_form(v.module, v.name, v.layer_posterior) is None:
                    prior, posterior = _spec_names(v)
                    raise NotImplementedError(
                        f"Analytical loss is not implemented for {prior} and "
                        f"{posterior}. (variable '{v.site}': prior "
                        f"{type(v.module.prior[v.name]).__name__}, posterior "
                        f"{type(v.layer_posterior).__name__})"
                    )
        self.divergence_type = divergence_type
        model.return_log_probs = False
        object.__setattr__(self, "model", model)  # not a submodule of the loss

    @property
    def kl_module(self) -> KullbackLeiblerModule | None:
        """torch_blue's attribute: the divergence module in use.

        ``divergence_type`` if one was given; otherwise the torch_blue module
        of the network's prior/posterior pair (:class:`NormalNormalDivergence`,
        :class:`UniformNormalDivergence`, or :class:`NonBayesianDivergence`
        for fixed weights under a flat prior), whose value
        :meth:`prior_matching` is. ``None`` where no one module is: a network
        mixing pairs (W8), or a fixed weight under a proper prior; each weight
        tensor then takes its own closed form. Found from the layers' priors
        as they are now (assigned or loaded after construction too). Setting
        it sets ``divergence_type``.
        """
        if self.divergence_type is not None:
            return self.divergence_type
        return _detect(collect_variables(self.__dict__["model"]))

    @kl_module.setter
    def kl_module(self, value: KullbackLeiblerModule | None) -> None:
        if value is not None and not callable(value):
            raise TypeError(
                "kl_module must be a KullbackLeiblerModule (e.g. "
                f"NormalNormalDivergence()) or None, got {value!r}"
            )
        self.divergence_type = value

    def prior_matching(self) -> Tensor:
        """The KL term ``KL(q || p)`` of the model, in closed form.

        With ``divergence_type``, that module of the flattened parameters of
        the ``vi`` layers' priors as they are now (their buffers: after a
        ``load_state_dict``, an assigned prior, an in-place change,
        ``.double()``), not as the layers were built.

        Raises:
            ValueError: with ``divergence_type``, for a prior that has no
                torch_blue parameter list (not a Normal, flat or torch_blue
                prior), or, for :class:`NormalNormalDivergence` and
                :class:`UniformNormalDivergence`, a prior of another family
                than the module's; or a divergence module that fails on the
                parameters of a layer whose prior/posterior pair is not its.
        """
        model: BnnVIModule = self.__dict__["model"]
        if self.divergence_type is not None:
            variables = _torch_blue_variables(model)
            _check_prior_families(self.divergence_type, variables)
            try:
                return self.divergence_type(*_flat_parameters(variables))
            except (ValueError, TypeError, RuntimeError) as error:
                _check_divergence(self.divergence_type, variables, error)
                raise
        terms = [
            _closed_form(v.module, v.name, v.layer_posterior)
            for v in model.random_variables()
        ]
        return torch.stack([t for t in terms if t is not None]).sum()

    def forward(
        self, model_output: Tensor, target: Tensor, dataset_size: int | None = None
    ) -> Tensor:
        """Negative ELBO (see :class:`~pyrolite_bnn.vi.KullbackLeiblerLoss`)."""
        if self.divergence_type is None:
            return super().forward(model_output, target, dataset_size)
        heat = self.heat
        self.heat = 0.0  # the data term alone; the KL comes from divergence_type
        try:
            data_fitting = super().forward(model_output, target, dataset_size)
        finally:
            self.heat = heat
        kl = self.prior_matching()
        if self._track and self.log is not None and self.log["prior_matching"]:
            # The call above logged the heat of 0 it ran with.
            self.log["prior_matching"][-1] = float(heat * kl.detach())
        return data_fitting + heat * kl


def _divergence_of(variable: RandomVariable) -> type[KullbackLeiblerModule] | None:
    """torch_blue's divergence module of one weight tensor's pair, if it has one."""
    prior = variable.module.prior[variable.name]
    posterior = variable.layer_posterior
    if isinstance(posterior, PointMassPosterior):
        return NonBayesianDivergence if _is_flat(prior) else None
    if isinstance(posterior, MeanFieldNormalPosterior):
        return _prior_divergence(prior)
    return None


def _prior_divergence(prior: object) -> type[KullbackLeiblerModule] | None:
    """The divergence module written for ``prior``'s family, if there is one.

    :class:`UniformNormalDivergence` for the flat prior,
    :class:`NormalNormalDivergence` for a Normal one (a
    :class:`~pyrolite_bnn.NormalPrior` that builds its distribution as
    ``NormalPrior`` does), ``None`` for any other.
    """
    if _is_flat(prior):
        return UniformNormalDivergence
    if _is_normal(prior):
        return NormalNormalDivergence
    return None


def _is_flat(prior: object) -> TypeGuard[FlatPrior]:
    """Whether ``prior`` is the flat prior: a :class:`FlatPrior` of its density.

    Not a subclass that builds another distribution: a closed form of the
    flat prior does not hold for it.
    """
    return isinstance(prior, FlatPrior) and prior.builds_distribution_as(FlatPrior)


def _is_normal(prior: object) -> TypeGuard[NormalPrior]:
    """Whether ``prior`` is a :class:`~pyrolite_bnn.NormalPrior` of its density.

    Not a subclass that builds another distribution (as :func:`_is_flat`).
    """
    return isinstance(prior, NormalPrior) and prior.builds_distribution_as(NormalPrior)


def _library_divergence(
    divergence: KullbackLeiblerModule,
) -> type[KullbackLeiblerModule] | None:
    """Which of the modules written for one prior family ``divergence`` is.

    :class:`NormalNormalDivergence` and :class:`UniformNormalDivergence` read
    a fixed list of prior and variational parameters; ``None`` for any other
    module (a user's own, and :class:`NonBayesianDivergence`, zero for any
    parameters), which is not judged.
    """
    return next(
        (
            cls
            for cls in (NormalNormalDivergence, UniformNormalDivergence)
            if isinstance(divergence, cls)
        ),
        None,
    )


def _check_prior_families(
    divergence: KullbackLeiblerModule, variables: list[RandomVariable]
) -> None:
    """Refuse a prior whose parameters ``divergence`` would read as another's.

    The layers' priors are read as they are now: a prior assigned after
    construction (``layer.prior["weight"] = bnn.LaplacePrior(0, 1)``) may be
    of another family than the one the network was built with, and a Laplace
    prior's ``loc`` and ``scale`` taken as a Normal's give a wrong KL without
    a word.

    Raises:
        ValueError: naming the variable, its prior and what to do instead.
    """
    kind = _library_divergence(divergence)
    for variable in variables:
        prior = variable.module.prior[variable.name]
        fitting = _prior_divergence(prior)
        if kind is None or fitting is kind:
            continue
        family = "a Normal" if kind is NormalNormalDivergence else "the flat"
        raise ValueError(
            f"divergence_type {type(divergence).__name__} does not match the "
            f"network: variable '{variable.site}' has the prior {prior!r} (its "
            "prior now: assigned or loaded after construction too), "
            f"{_fitting_text(fitting)}, and {type(divergence).__name__} reads "
            f"the parameters of {family} prior; leave divergence_type=None to "
            "take each layer's closed form"
        )


def _fitting_text(fitting: type[KullbackLeiblerModule] | None) -> str:
    """The divergence module that fits a pair or a prior, for a message."""
    if fitting is None:
        return "which has no divergence module"
    return f"whose divergence is {fitting.__name__}"


def _check_divergence(
    divergence: KullbackLeiblerModule,
    variables: list[RandomVariable],
    error: Exception,
) -> None:
    """Explain ``error`` of a library divergence that does not fit a layer's pair.

    :class:`NormalNormalDivergence` and :class:`UniformNormalDivergence` read
    a fixed list of prior and variational parameters. Their prior's family
    is checked first (:func:`_check_prior_families`); the variational
    distribution is taken as torch_blue takes it (one whose parameters line
    up computes: torch_blue's own tests force a divergence on other pairs),
    and another one's list failed inside the module ("too many values to
    unpack"). A user's own module, and :class:`NonBayesianDivergence` (zero
    for any parameters), are not judged.

    Args:
        divergence: the module given as ``divergence_type``.
        variables: the variables of the ``vi`` layers, whose parameters it
            read (:func:`_torch_blue_variables`).
        error: what the module raised.

    Raises:
        ValueError: naming the variable, its pair and the divergence that
            fits it, from ``error``.
    """
    kind = _library_divergence(divergence)
    if kind is None:
        return
    for variable in variables:
        fitting = _divergence_of(variable)
        if fitting is not kind:
            prior, posterior = _spec_names(variable)
            raise ValueError(
                f"divergence_type {type(divergence).__name__} does not match the "
                f"network: variable '{variable.site}' has the prior {prior} and the "
                f"variational distribution {posterior}, {_fitting_text(fitting)}; "
                "leave divergence_type=None to take each layer's closed form"
            ) from error


def _detect(variables: list[RandomVariable]) -> KullbackLeiblerModule | None:
    """The one torch_blue divergence module of all weight tensors, or ``None``."""
    kinds = {_divergence_of(v) for v in variables}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    return None if kind is None else kind()


def _spec_names(variable: RandomVariable) -> tuple[str, str]:
    """Class names of a variable's prior and variational distribution, as given."""
    module = variable.module
    if isinstance(module, VIModule) and variable.name in module.prior_specs:
        prior = module.prior_specs[variable.name]
        family = module.variational_distribution[variable.name]
        return type(prior).__name__, type(family).__name__
    return (
        type(module.prior[variable.name]).__name__,
        type(variable.layer_posterior).__name__,
    )


def _closed_form(module: BnnVIModule, name: str, posterior: Any) -> Tensor | None:
    """The closed-form KL of the variable ``name``, ``None`` if it has none.

    In ``float32`` arithmetic for a half-precision layer: the posterior's
    moments from its stored parameters, the prior's hyperparameters read as
    ``float32``
    (:func:`~pyrolite_bnn.distributions.priors.priors_in_full_precision`).
    """
    prior = module.prior[name]
    assert isinstance(prior, BnnPrior)
    posterior.check_written()  # the point mass's value is read as it is
    return priors_in_full_precision(
        [prior], lambda: _prior_closed_form(module, name, prior, posterior)
    )


def _prior_closed_form(
    module: BnnVIModule, name: str, prior: BnnPrior, posterior: Any
) -> Tensor | None:
    if isinstance(posterior, PointMassPosterior):
        # A fixed weight: the KL up to the point mass's (infinite) constant is
        # -log p(w), zero under the flat prior (MAP for any other prior).
        if _is_flat(prior):
            return posterior.loc.new_zeros(())
        value: Tensor = -module.prior_distribution(name).log_prob(posterior.loc).sum()
        return value
    if not isinstance(posterior, MeanFieldNormalPosterior):
        return analytic_kl(posterior.distribution(), module.prior_distribution(name))
    moments = posterior.normal_params(full_precision=True)
    term = prior.kl_from_normal(*moments)
    if term is not None:
        return term
    q = dist.Normal(*moments).to_event(len(posterior.shape))
    return analytic_kl(q, module.prior_distribution(name))


def _torch_blue_variables(model: nn.Module) -> list[RandomVariable]:
    """The variables of the ``vi`` layers: those ``divergence_type`` reads."""
    return [v for v in collect_variables(model) if isinstance(v.module, VIModule)]


def _torch_blue_prior_parameters(
    variable: RandomVariable,
) -> tuple[Tensor | float | None, ...]:
    """The variable's prior parameters in torch_blue's order, as they are now.

    Read from the layer's prior module, the one its default closed form and
    its densities use: ``(mean, log_std)`` of a Normal prior (torch_blue's
    ``MeanFieldNormal``), the flat prior's and a torch_blue prior's own list
    (``torch_blue_parameters()``), its half-precision buffers as ``float32``
    (:func:`~pyrolite_bnn.distributions.priors.priors_in_full_precision`).

    Raises:
        ValueError: for a prior of none of these, naming the variable.
    """
    prior = variable.module.prior[variable.name]
    if _is_normal(prior):
        normal = prior  # the narrowed type, for the closure
        return priors_in_full_precision(
            [normal], lambda: (normal.loc, normal.scale.log())
        )
    if isinstance(prior, FlatPrior | AdaptedPrior):
        parameters: tuple[Any, ...] = priors_in_full_precision(
            [prior], prior.torch_blue_parameters
        )
        return parameters
    raise ValueError(
        f"divergence_type reads torch_blue's prior parameters, but variable "
        f"'{variable.site}' has the prior {prior!r}, which has none (torch_blue's "
        "priors are MeanFieldNormal, UniformPrior and its own Distribution "
        "subclasses); leave divergence_type=None to take each layer's closed form"
    )


def _flat_parameters(
    variables: list[RandomVariable],
) -> tuple[list[Tensor], list[Tensor]]:
    """Prior and variational parameters of torch_blue-style layers, flattened.

    Each prior parameter is broadcast to its variable's shape, so that the
    lists line up weight by weight: a number (``None`` read as ``0``) or a
    tensor of hyperparameters per weight, row, ... alike.
    """
    prior_lists: list[list[Tensor]] = []
    variational_lists: list[list[Tensor]] = []
    for variable in variables:
        module = variable.module
        assert isinstance(module, VIModule)
        # Half-precision parameters as float32: the module's arithmetic
        # and its sum over every weight are then float32.
        values = [
            full_precision(p) for p in module.get_variational_parameters(variable.name)
        ]
        for index, value in enumerate(values):
            if len(variational_lists) <= index:
                variational_lists.append([])
            variational_lists[index].append(value.flatten())
        for index, parameter in enumerate(_torch_blue_prior_parameters(variable)):
            if len(prior_lists) <= index:
                prior_lists.append([])
            value = torch.as_tensor(0.0 if parameter is None else parameter)
            prior_lists[index].append(
                value.to(values[0]).broadcast_to(values[0].shape).flatten()
            )
    return (
        [torch.cat(p) for p in prior_lists],
        [torch.cat(v) for v in variational_lists],
    )
