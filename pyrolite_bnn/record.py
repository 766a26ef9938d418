"""What a PyTorch-style forward pass leaves for the loss: the weights it drew.

A call ``out = model(x)`` outside Pyro inference draws the weights from the
guide and runs the network on them; the loss then adds the observation term and
takes the KL part from a :class:`ForwardRecord`, with the same per-site
arithmetic as Pyro's ``Trace_ELBO`` (Monte Carlo) or ``TraceMeanField_ELBO``
(closed form where ``kl_divergence`` is registered):

* :class:`TraceRecord` keeps the two Pyro traces (guide, and network replayed
  against it). It serves any Pyro guide.
* :class:`LayerRecord` serves the generated guide without tracing: the weights
  were drawn straight from the layers' posterior modules (the same draws, in the
  same order, as the traced guide), and the closed-form KL is taken once per
  weight tensor instead of once per particle.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Literal, cast, get_args

import pyro.distributions as dist
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine import Trace
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor, nn
from torch.distributions import (
    Distribution,
    Independent,
    Normal,
    kl_divergence,
)

from pyrolite_bnn import _particles
from pyrolite_bnn._autograd_graph import reaches_node
from pyrolite_bnn._differentiated_calls import calls_reached
from pyrolite_bnn._draws import LazyDraws, kl_without_gradients
from pyrolite_bnn._handlers import computation_handlers, pyro_wrapped
from pyrolite_bnn._pass_charges import PassCharges
from pyrolite_bnn._pyro_module import is_positive_constraint
from pyrolite_bnn._reweighing_handlers import handler_text
from pyrolite_bnn._validation import distribution_checks_off, is_validation_enabled
from pyrolite_bnn.distributions._names import distribution_name
from pyrolite_bnn.distributions._precision import full_precision, is_narrow
from pyrolite_bnn.distributions.priors import Prior, priors_in_full_precision
from pyrolite_bnn.distributions.variational import (
    MeanFieldNormalPosterior,
    NormalMoments,
)
from pyrolite_bnn.variables import RandomVariable

__all__ = [
    "ForwardRecord",
    "KLMode",
    "LayerRecord",
    "TraceRecord",
    "attach_record",
    "check_kl_mode",
    "computed_from_a_network",
    "find_record",
    "other_passes_upstream",
    "positive_param_leaves",
    "prior_parameters",
    "release_record",
]

KLMode = Literal["auto", "mc", "analytic"]
_KL_MODES: tuple[KLMode, ...] = get_args(KLMode)


def check_kl_mode(mode: object) -> KLMode:
    """``mode`` if it is one of ``"auto"``, ``"mc"``, ``"analytic"``.

    Raises:
        ValueError: for anything else (a typo such as ``"MC"`` or
            ``"analytical"`` would otherwise read as the default).

    Example:
        >>> check_kl_mode("mc")
        'mc'
    """
    if not (isinstance(mode, str) and mode in _KL_MODES):
        raise ValueError(f"kl must be one of {_KL_MODES}, got {mode!r}")
    return mode


class ForwardRecord:
    """Base class: the random draws of one forward pass, for the loss.

    Attributes:
        samples: number of particles ``S``.
        sequence_batch: the batch size ``B`` of a sequence-first network
            (``batch_first=False`` layers: its output is ``(S, L, B, ...)``),
            else ``None``.
        analytic_sites: sites whose KL the last :meth:`kl` took in closed form.
        mc_sites: sites whose KL the last :meth:`kl` estimated by Monte Carlo.
        charges: what the losses with gradients took from the outputs of
            this pass (their heats and divisors), which warn where their sum
            is not one negative ELBO
            (:class:`~pyrolite_bnn._pass_charges.PassCharges`).
        network: the module that ran (the outermost one of the call), if
            known; its ``named_parameters()`` names the parameters in the
            loss's warnings.
    """

    def __init__(self, samples: int, network: nn.Module | None = None) -> None:
        self.samples = samples
        self.network = network
        self.sequence_batch: int | None = None
        self.analytic_sites: list[str] = []
        self.mc_sites: list[str] = []
        self.charges = PassCharges()

    @property
    def network(self) -> nn.Module | None:
        """The module that ran, while it exists (``None`` once it is gone).

        Held weakly: the record sits in the output's autograd node, which the
        cyclic collector cannot look into, so a strong reference kept alive
        every network whose module held its own output (``model.last =
        model(x)``, a hook keeping activations) after it was dropped.
        """
        return None if self._network_ref is None else self._network_ref()

    @network.setter
    def network(self, network: nn.Module | None) -> None:
        self._network_ref = None if network is None else weakref.ref(network)

    def network_gone(self) -> bool:
        """Whether the network that ran no longer exists."""
        return self._network_ref is not None and self._network_ref() is None

    def kl(self, mode: KLMode = "auto") -> Tensor:
        """The KL part of the negative ELBO, ``E_q[log q(w) - log p(w)]``.

        Averaged over particles.

        Args:
            mode: ``"mc"`` — Monte-Carlo estimate from the drawn weights, as
                ``Trace_ELBO``; ``"analytic"`` — closed form for every site, as
                ``TraceMeanField_ELBO``, raising if one has none; ``"auto"`` —
                closed form where available, Monte Carlo elsewhere.

        Returns:
            A scalar tensor.

        Raises:
            ValueError: if ``mode="analytic"`` and a site has no closed form,
                or ``mode`` is none of the three.
        """
        raise NotImplementedError

    def log_probs(self) -> Tensor:
        """Per-particle ``[log p(w_s), log q(w_s)]`` of all weights, ``(S, 2)``."""
        raise NotImplementedError

    def guide_parameters(self) -> dict[str, Tensor]:
        """The parameters of the guide that drew this pass's weights, by name.

        Values are the optimised tensors (for a constrained Pyro parameter,
        its unconstrained leaf). The loss compares them over its first training
        steps to notice a guide that the optimizer does not update.
        """
        raise NotImplementedError

    def positive_parameters(self) -> dict[str, Tensor]:
        """Guide parameters declared with a positive constraint (scales), by name.

        Pyro's guides hold their scales as ``pyro.param(...,
        constraint=positive)``; the library's posteriors name theirs instead
        (``rho_unconstrained``). The loss warns about weight decay on both.
        """
        return {}

    def prior_parameters(self) -> dict[str, Tensor]:
        """The priors' learnable hyperparameters, by site and name.

        A ``LearnedNormalPrior``'s ``log_scale`` (``"0.weight.log_scale"``):
        the loss warns about weight decay on it as on the guide's scales.
        """
        return prior_parameters(self._variables())

    def _variables(self) -> Sequence[RandomVariable]:
        """The random variables of the network that ran (``[]`` if unknown)."""
        return []

    def read_without_gradients(self) -> Sequence[RandomVariable]:
        """Variables whose layers ran only without gradients in a call with them.

        A layer run under ``torch.no_grad()`` inside the network's
        ``forward``; known for the generated guide's calls (``[]`` otherwise).
        """
        return []

    def network_parameters(self) -> list[Tensor]:
        """Parameters of the network that ran (its layers'; ``[]`` if unknown).

        The loss's watch of :meth:`guide_parameters` counts the steps of the
        optimizers that hold them.
        """
        return []

    def call_nodes(self) -> list[Any]:
        """Autograd nodes of the tensors the forward pass computed for its weights.

        Of drawn weights and weight moments: a derivative of the pass's output
        by its input reaches them where it does not reach the output
        (:mod:`~pyrolite_bnn._differentiated_calls`).
        """
        return []

    def keep_call_nodes(self) -> None:
        """Keep :meth:`call_nodes` for as long as the record (not only to the KL)."""

    def guide_identity(self) -> Hashable:
        """A cheap key of the guide behind :meth:`guide_parameters`.

        Equal keys mean the same guide, so a finished check of it is not
        repeated on every call.
        """
        raise NotImplementedError

    def training(self) -> bool:
        """Whether the forward pass ran in training mode (``True`` if unknown)."""
        return True

    def _choose(
        self, name: str, mode: KLMode, q: Distribution, p: Distribution
    ) -> Tensor | None:
        """Closed-form KL of a site if ``mode`` allows and one exists; bookkeeping."""
        if mode != "mc":
            term = analytic_kl(q, p)
            if term is not None:
                self.analytic_sites.append(name)
                return term
            if mode == "analytic":
                guide_part, prior_part = _without_shared_events(q, p)
                raise ValueError(
                    f"kl='analytic' but site '{name}' has no closed-form KL "
                    f"between the guide's {distribution_name(guide_part)} and the "
                    f"prior {distribution_name(prior_part)}; use kl='auto' (Monte "
                    "Carlo for such sites) or kl='mc'"
                )
        self.mc_sites.append(name)
        return None


def prior_parameters(variables: Iterable[RandomVariable]) -> dict[str, Tensor]:
    """The learnable hyperparameters of the priors of ``variables``, by site and name.

    A ``LearnedNormalPrior``'s ``log_scale`` (``"0.weight.log_scale"``);
    fixed priors hold none.

    Example:
        >>> import pyrolite_bnn as bnn
        >>> layer = bnn.VILinear(3, 2, prior=bnn.LearnedNormalPrior())
        >>> list(prior_parameters(layer.random_variables()))
        ['weight.log_scale', 'bias.log_scale']
    """
    return {
        f"{variable.site}.{name}": parameter
        for variable in variables
        for name, parameter in variable.module.prior[variable.name].named_parameters()
    }


def _param_leaves(trace: Trace) -> dict[str, Tensor]:
    """The optimised tensors of a trace's ``param`` sites, by name.

    For a constrained or linked value, the leaf behind it.
    """
    params: dict[str, Tensor] = {}
    for name, site in trace.nodes.items():
        value = site.get("value")
        if site["type"] == "param" and isinstance(value, Tensor):
            unconstrained = getattr(value, "unconstrained", None)
            leaf = unconstrained() if callable(unconstrained) else value
            params[name] = leaf if isinstance(leaf, Tensor) else value
    return params


def positive_param_leaves(trace: Trace) -> dict[str, Tensor]:
    """The optimised tensors of a trace's ``param`` sites with a positive constraint.

    Pyro's guides hold their scales so (``pyro.param(..., constraint=positive)``,
    ``AutoNormal``'s ``scales``): by site name, the unconstrained leaf of each.
    """
    leaves = _param_leaves(trace)
    return {
        name: leaves[name]
        for name, site in trace.nodes.items()
        if name in leaves and is_positive_constraint(site["kwargs"].get("constraint"))
    }


class TraceRecord(ForwardRecord):
    """Guide and model traces of one forward pass (without the observation).

    Args:
        guide_trace: trace of the guide (weights drawn for all particles).
        model_trace: trace of the network replayed against ``guide_trace``.
        samples: number of particles ``S``.
        network: the module that ran (for :meth:`network_parameters`).
    """

    def __init__(
        self,
        guide_trace: Trace,
        model_trace: Trace,
        samples: int,
        network: nn.Module | None = None,
    ) -> None:
        super().__init__(samples, network)
        # The KL of the layers the pass left idle is read off the network's
        # variables: a guide's pass keeps its network (its traces hold the
        # network's call anyway).
        self._kept_network = network
        self.guide_trace = prune_subsample_sites(guide_trace)
        self.model_trace = prune_subsample_sites(model_trace)
        # The grad mode of the forward pass (the record is made in its call).
        self.grad_enabled = torch.is_grad_enabled()

    def _latent_sites(self) -> list[tuple[str, Any]]:
        return [
            (name, site)
            for name, site in self.model_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
        ]

    def kl(self, mode: KLMode = "auto") -> Tensor:
        """See :meth:`ForwardRecord.kl`.

        Raises:
            ValueError: also if the forward pass ran without gradients, they
                are on now and the guide or the priors have trainable
                parameters: the traces hold the distributions of that pass,
                without gradients (``torch.utils.checkpoint(...,
                use_reentrant=True)`` runs it so).
        """
        check_kl_mode(mode)
        self._check_grad_mode()
        self.analytic_sites, self.mc_sites = [], []
        total: Tensor | float = 0.0
        latent = self._latent_sites()
        for name, model_site in latent:
            guide_site = self.guide_trace.nodes.get(name)
            if guide_site is None or guide_site["type"] != "sample":
                raise ValueError(
                    f"the guide does not sample the weight site '{name}'; a guide must "
                    "sample every random variable of the network"
                )
            q = cast(Distribution, guide_site["fn"])
            p = cast(Distribution, model_site["fn"])
            term = self._choose(name, mode, q, p)
            if term is not None:
                total = total + _scaled_sum(term, guide_site)
            else:
                total = total + _log_prob_sum(guide_site) - _log_prob_sum(model_site)
        latent_names = {name for name, _ in latent}
        idle = self._idle_priors(latent_names)
        for name, guide_site in self.guide_trace.nodes.items():
            if guide_site["type"] == "sample" and name in idle:
                # A weight of a layer this pass did not call: its KL counts,
                # as for the default guide (the ELBO of the whole network).
                q = cast(Distribution, guide_site["fn"])
                term = self._choose(name, mode, q, idle[name])
                if term is not None:
                    total = total + _scaled_sum(term, guide_site)
                else:
                    prior_site = {**guide_site, "fn": idle[name]}
                    total = (
                        total + _log_prob_sum(guide_site) - _log_prob_sum(prior_site)
                    )
            elif guide_site["type"] == "sample" and name not in latent_names:
                if not (guide_site["infer"] or {}).get("is_auxiliary"):
                    raise ValueError(
                        f"the guide samples '{name}', which is not a weight of the "
                        "network; mark auxiliary guide sites with "
                        "infer={'is_auxiliary': True}"
                    )
                if mode == "analytic":
                    raise ValueError(
                        f"kl='analytic' but the guide has the auxiliary site '{name}', "
                        "whose entropy term is Monte Carlo; use kl='auto' or kl='mc'"
                    )
                total = total + _log_prob_sum(guide_site)
        return torch.as_tensor(total)

    def _idle_priors(self, traced: set[str]) -> dict[str, Distribution]:
        """The priors of the network's weights that the pass did not sample.

        Layers the forward pass did not call (the idle head of a multi-head
        network) have no model site, but the guide draws them: their KL
        counts, every layer's does (as with the default guide).
        """
        return {
            variable.site: variable.module.prior_distribution(variable.name)
            for variable in self._variables()
            if variable.site not in traced
        }

    def _check_grad_mode(self) -> None:
        """Refuse a KL with gradients from a pass traced without them."""
        if self.grad_enabled or not torch.is_grad_enabled():
            return
        trainable = [*self.guide_parameters().values()]
        trainable += self.prior_parameters().values()
        if any(parameter.requires_grad for parameter in trainable):
            raise kl_without_gradients("the guide's trace of that pass has none")

    def log_probs(self) -> Tensor:
        """See :meth:`ForwardRecord.log_probs`."""
        log_p = self._per_particle(site for _, site in self._latent_sites())
        log_q = self._per_particle(
            site for site in self.guide_trace.nodes.values() if site["type"] == "sample"
        )
        return torch.stack([log_p, log_q], dim=-1)

    def call_nodes(self) -> list[Any]:
        """See :meth:`ForwardRecord.call_nodes`: the guide's draws'."""
        return [
            site["value"].grad_fn
            for site in self.guide_trace.nodes.values()
            if site["type"] == "sample"
            and isinstance(site["value"], Tensor)
            and site["value"].grad_fn is not None
        ]

    def guide_parameters(self) -> dict[str, Tensor]:
        """See :meth:`ForwardRecord.guide_parameters`: the guide's ``param`` sites."""
        return _param_leaves(self.guide_trace)

    def positive_parameters(self) -> dict[str, Tensor]:
        """See :meth:`ForwardRecord.positive_parameters`: the guide's sites."""
        return positive_param_leaves(self.guide_trace)

    def network_parameters(self) -> list[Tensor]:
        """See :meth:`ForwardRecord.network_parameters`: the network's."""
        return [] if self.network is None else list(self.network.parameters())

    def _variables(self) -> Sequence[RandomVariable]:
        from pyrolite_bnn._network import collect_variables  # imports module.py

        return [] if self.network is None else collect_variables(self.network)

    def guide_identity(self) -> Hashable:
        """See :meth:`ForwardRecord.guide_identity`: network and ``param`` names.

        Read off the trace without resolving each value's optimised leaf. The
        names alone are the same for every network of one architecture: a
        loss reused for a second network took its guide for the first's.
        """
        nodes = self.guide_trace.nodes
        names = tuple(name for name, site in nodes.items() if site["type"] == "param")
        return (id(self.network), names)

    def _per_particle(self, sites: Iterable[Any]) -> Tensor:
        return _sum_per_particle(
            (_event_summed_log_prob(site["fn"], site["value"]) for site in sites),
            self.samples,
        )


class LayerRecord(ForwardRecord):
    """Weights drawn from the layers' posterior modules (the generated guide).

    Args:
        draws: the call's :class:`~pyrolite_bnn._draws.LazyDraws`: each
            variable's draw (replayed from its random state, so the KL sees
            the values the forward pass used), the mean and standard deviation
            of each mean-field Normal variable as computed for the forward pass
            (the closed-form KL reuses them), and which variables were never
            drawn (layers that sample their outputs from the moments; their KL
            is taken in closed form, or estimated from fresh draws where there
            is none).
        samples: number of particles ``S``.
        network: the module that ran.
    """

    def __init__(
        self, draws: LazyDraws, samples: int, network: nn.Module | None = None
    ) -> None:
        super().__init__(samples, network)
        self.draws = draws
        self.variables = draws.variables
        self._witness = _first_posterior_parameter(self.variables)

    def _check_parameters_in_place(self) -> None:
        """Refuse a KL of parameters other than the forward pass's.

        ``torch.func.functional_call(model, params, x)`` runs the forward pass
        with ``params`` and puts the module's own tensors back when it
        returns: a KL taken afterwards read those (a LaplacePrior network's
        loss 3.730 instead of 3.641; a StudentTPrior one's -22498).
        """
        if _first_posterior_parameter(self.variables) is not self._witness:
            raise ValueError(
                "the network's parameters were replaced between its forward pass "
                "and the loss (torch.func.functional_call puts the module's own "
                "tensors back when it returns; module.to() or .float() makes new "
                "ones under torch.__future__.set_overwrite_module_params_on_"
                "conversion(True)): the KL term would read other parameters than "
                "the forward pass used. Run the forward pass again; the loss supports "
                "torch.func.functional_call only with the module's own "
                "parameters; load others into the network (load_state_dict, or "
                "copy_ under torch.no_grad()) before calling it"
            )

    def _value(self, index: int) -> Tensor:
        drawn = self.draws.value(index)
        if drawn is None:
            return self.variables[index].layer_posterior.draw(self.samples)
        return drawn

    def _narrow(self, index: int) -> bool:
        """Whether variable ``index``'s posterior is a half-precision one."""
        moments = self.draws.moments_at(index)
        if moments is not None:  # a mean-field Normal: its moments' dtype
            return is_narrow(moments.loc.dtype)
        parameter = next(self.variables[index].layer_posterior.parameters(), None)
        return parameter is not None and is_narrow(parameter.dtype)

    def _noise(self, index: int, moments: NormalMoments) -> Tensor:
        """The standard-normal noise of variable ``index``'s draws, >= float32.

        A half-precision draw rounds its noise away: the noise drawn is read
        (a layer that sampled its outputs from the moments drew none: fresh
        noise, as a fresh draw). A ``float32`` draw keeps it to float
        precision: recovered as Pyro's ``log q(w)`` reads it, ``(w - mu) /
        sigma``.
        """
        if self._narrow(index):
            eps = self.draws.noise(index)
            if eps is None:
                posterior = self.variables[index].layer_posterior
                assert isinstance(posterior, MeanFieldNormalPosterior)
                stored = NormalMoments(*posterior.normal_params())
                eps = posterior.reparameterize_with_noise(stored, self.samples)[1]
            return full_precision(eps)
        return (self._value(index) - moments.loc) / moments.scale

    def kl(self, mode: KLMode = "auto") -> Tensor:
        """See :meth:`ForwardRecord.kl`; closed forms are taken once per tensor.

        In a half-precision network every term is ``float32`` arithmetic: the
        posterior moments are computed from the stored parameters read as
        ``float32``, the Monte-Carlo estimate reads the noise drawn (the
        rounded draws lost it), and the priors' hyperparameters are read as
        ``float32`` for the whole KL
        (:func:`~pyrolite_bnn.distributions.priors.priors_in_full_precision`):
        their closed forms, densities and derived scales computed in
        ``bfloat16`` were off by its rounding, an error every weight repeats
        (``log(0.1)``: +0.0047 nats per weight).
        """
        check_kl_mode(mode)
        self._check_parameters_in_place()
        self.draws.follow_grad_mode()
        self.analytic_sites, self.mc_sites = [], []
        if any(self._narrow(index) for index in range(len(self.variables))):
            priors = [v.module.prior[v.name] for v in self.variables]
            total = priors_in_full_precision(priors, lambda: self._kl_sum(mode))
        else:
            total = self._kl_sum(mode)
        # The KL is the moments' last reader in a loss: a loss tensor kept after
        # backward() keeps this record (on its graph) but not the scales.
        self.draws.release_moments()
        return total

    def _kl_sum(self, mode: KLMode) -> Tensor:
        """The KL of every variable, summed (see :meth:`kl`)."""
        total: Tensor | float = 0.0
        # Closed forms that priors take together (the default prior's): by key.
        groups: dict[Hashable, tuple[Prior, list[NormalMoments]]] = {}
        validate = is_validation_enabled()
        with distribution_checks_off():
            for index, variable in enumerate(self.variables):
                prior = variable.module.prior[variable.name]
                assert isinstance(prior, Prior)
                prior.check_written()  # after to_empty: reads each tensor once
                if validate:  # reads each buffer once per value
                    prior.check_values()
                moments = _widened(variable, self.draws.moments_at(index))
                if mode != "mc" and moments is not None:
                    key = prior.closed_form_group(moments.loc)
                    if key is not None:
                        groups.setdefault(key, (prior, []))[1].append(moments)
                        self.analytic_sites.append(variable.site)
                        continue
                term = None if mode == "mc" else _normal_closed_form(variable, moments)
                if term is not None:
                    self.analytic_sites.append(variable.site)
                    total = total + term
                    continue
                # A half-precision posterior as the float32 Normal of its
                # widened moments (its bfloat16 scales were rounded).
                widened = moments if self._narrow(index) else None
                q = (
                    variable.layer_posterior.distribution()
                    if widened is None
                    else dist.Normal(*widened).to_event(len(variable.shape))
                )
                p = variable.module.prior_distribution(variable.name)
                term = self._choose(variable.site, mode, q, p)
                if term is None and moments is not None and _is_normal(p):
                    sums = self.draws.noise_sums[index]
                    if sums is None:
                        with torch.no_grad():  # only the draws' noise is needed
                            eps = self._noise(index, moments)
                            sums = (eps.sum(0), eps.square().sum(0))
                    term = _normal_mc(sums, moments, p, self.samples)
                if term is None:
                    if widened is not None:
                        # The draws in float32 from their noise: the rounded
                        # draws had lost it (log q(w) ~ 0, +0.5 nats per weight).
                        with torch.no_grad():
                            eps = self._noise(index, widened)
                        drawn = widened.loc + eps * widened.scale
                    else:
                        drawn = full_precision(self._value(index))
                    # (1/S) sum_s [log q(w_s) - log p(w_s)], as the 1/S-scaled plate.
                    term = (q.log_prob(drawn) - p.log_prob(drawn)).mean()
                total = total + term
            for prior, group in groups.values():
                total = total + _group_closed_form(prior, group)
        return torch.as_tensor(total)

    def call_nodes(self) -> list[Any]:
        """See :meth:`ForwardRecord.call_nodes`: of moments and kept draws."""
        return self.draws.call_nodes()

    def keep_call_nodes(self) -> None:
        """See :meth:`ForwardRecord.keep_call_nodes`: the moments'."""
        self.draws.keep_moment_nodes()

    def guide_parameters(self) -> dict[str, Tensor]:
        """See :meth:`ForwardRecord.guide_parameters`: the posterior modules'."""
        return {
            f"{variable.site}.{name}": parameter
            for variable in self.variables
            for name, parameter in variable.layer_posterior.named_parameters()
        }

    def network_parameters(self) -> list[Tensor]:
        """See :meth:`ForwardRecord.network_parameters`: the layers'."""
        return [p for v in self.variables for p in v.module.parameters()]

    def _variables(self) -> Sequence[RandomVariable]:
        return self.variables

    def read_without_gradients(self) -> Sequence[RandomVariable]:
        """See :meth:`ForwardRecord.read_without_gradients`."""
        return self.draws.read_only_without_gradients()

    def guide_identity(self) -> Hashable:
        """See :meth:`ForwardRecord.guide_identity`: the posterior modules."""
        return tuple(id(variable.layer_posterior) for variable in self.variables)

    def training(self) -> bool:
        """Whether any layer that drew weights was in training mode."""
        return any(variable.module.training for variable in self.variables)

    def log_probs(self) -> Tensor:
        """See :meth:`ForwardRecord.log_probs`."""
        self.draws.follow_grad_mode()
        log_p, log_q = [], []
        for index, variable in enumerate(self.variables):
            drawn = self._value(index)
            prior = variable.module.prior_distribution(variable.name)
            log_p.append(_event_summed_log_prob(prior, drawn))
            log_q.append(
                _event_summed_log_prob(variable.layer_posterior.distribution(), drawn)
            )
        return torch.stack(
            [
                _sum_per_particle(log_p, self.samples),
                _sum_per_particle(log_q, self.samples),
            ],
            dim=-1,
        )


def _widened(
    variable: RandomVariable, moments: NormalMoments | None
) -> NormalMoments | None:
    """Half-precision moments in float32, computed from the stored parameters.

    The KL's terms then are ``float32`` numbers (a ``float16`` sum overflows),
    of the scales of the stored ``rho``: widening the forward pass's
    ``bfloat16`` scales kept their rounding (8 bits), which moved every
    weight's closed-form KL by up to 0.004 nats.
    """
    if moments is None or moments.loc.dtype == full_precision(moments.loc).dtype:
        return moments
    posterior = variable.layer_posterior
    assert isinstance(posterior, MeanFieldNormalPosterior)
    return NormalMoments(*posterior.normal_params(full_precision=True))


def _normal_closed_form(
    variable: RandomVariable, moments: NormalMoments | None
) -> Tensor | None:
    """The prior's own closed-form KL from a mean-field Normal posterior, if any."""
    if moments is None:
        return None
    prior = variable.module.prior[variable.name]
    assert isinstance(prior, Prior)
    term = prior.kl_from_normal(*moments)
    if term is not None:
        _check_summed(prior, "kl_from_normal", term, f"site '{variable.site}'")
    return term


def _check_summed(prior: Prior, method: str, term: Tensor, where: str) -> None:
    """Refuse a closed form that is not summed to a scalar."""
    if term.dim() != 0:
        raise ValueError(
            f"{type(prior).__name__}.{method} returned a tensor of shape "
            f"{tuple(term.shape)} for {where}; it must return the KL summed over "
            "the weight tensor (a scalar)"
        )


def _group_closed_form(prior: Prior, moments: list[NormalMoments]) -> Tensor:
    """The summed closed-form KL of the tensors of one prior group."""
    method = "kl_from_normal" if len(moments) == 1 else "kl_from_normals"
    term = (
        prior.kl_from_normal(*moments[0])
        if len(moments) == 1
        else prior.kl_from_normals(moments)
    )
    if term is None:
        raise NotImplementedError(
            f"{type(prior).__name__} has a closed_form_group but no closed form "
            f"({method} returned None)"
        )
    _check_summed(prior, method, term, "a group of weight tensors")
    return term


def _is_normal(p: Any) -> bool:
    """Whether ``p`` is a Normal distribution (possibly made ``Independent``)."""
    base = p.base_dist if isinstance(p, Independent) else p
    return type(base) in (Normal, dist.Normal)


def _normal_mc(
    noise_sums: tuple[Tensor, Tensor], moments: NormalMoments, p: Any, samples: int
) -> Tensor:
    """Monte-Carlo KL of draws ``w_s = mu + sigma * eps_s`` against a Normal prior.

    ``(1/S) sum_s [log q(w_s) - log p(w_s)]``, the value of ``Trace_ELBO``'s
    estimate, from per-weight sums of the noise: with ``log q(w) = -eps^2/2 -
    log sigma - log(2 pi)/2`` (the same value and, ``eps`` held fixed, the same
    gradient as ``q.log_prob(w)``: the total derivative of ``-(w - mu)^2 /
    (2 sigma^2)`` along ``w = mu + sigma * eps`` is zero) and
    ``sum_s (w_s - m)^2 = S (mu - m)^2 + 2 (mu - m) sigma sum_s eps_s + sigma^2
    sum_s eps_s^2``, gradients flow through weight-sized tensors only, not
    through ``S`` draws of them.

    Args:
        noise_sums: ``sum_s eps_s`` and ``sum_s eps_s^2`` per weight (no gradient).
        moments: ``(mu, sigma)`` the weights were drawn with.
        p: the Normal prior.
        samples: the number of draws ``S``.
    """
    base = p.base_dist if isinstance(p, Independent) else p
    loc, scale = moments
    eps_sum, eps_squares = (full_precision(sums) for sums in noise_sums)
    prior_loc: Tensor = base.loc
    prior_scale: Tensor = base.scale
    offset = loc - prior_loc
    # sum_s (w_s - m)^2 = offset (S offset + 2 sigma sum eps) + sigma^2 sum eps^2
    squares = offset * torch.addcmul(samples * offset, scale, eps_sum, value=2)
    squares = torch.addcmul(squares, scale * eps_squares, scale)
    if prior_scale.numel() == 1:  # a scalar scale divides the sum, not each term
        quadratic = squares.sum() / prior_scale.square().reshape(())
    else:
        quadratic = (squares / prior_scale.square()).sum()
    log_s = prior_scale.log().expand(loc.shape).sum()
    return 0.5 * (quadratic - eps_squares.sum()) / samples - (scale.log().sum() - log_s)


def analytic_kl(q: Distribution, p: Distribution) -> Tensor | None:
    """``KL(q || p)`` summed to a scalar per batch element, or ``None``.

    ``None`` where only Monte Carlo is possible: no registered closed form, a
    non-reparameterisable ``q``, or a ``Delta`` ``q`` (a point mass, or an
    autoguide's transformed auxiliary draw), whose registered "KL" is
    ``-log p(value)``, a one-sample Monte-Carlo term in disguise.
    """
    if not q.has_rsample or _describe(q) == "Delta":
        return None
    try:
        return _event_summed_kl(q, p)
    except NotImplementedError:
        return None


def _event_summed_kl(q: Distribution, p: Distribution) -> Tensor:
    """``kl_divergence(q, p)``, summed over event dimensions in float32 or wider.

    Torch sums an ``Independent`` pair's elementwise KL in the weights' dtype:
    a float16 layer of ~10,000 weights overflowed to an infinite KL.
    """
    shared = _shared_events(q, p)
    if shared is not None:
        q_base, p_base, dims = shared
        return _sum_rightmost(_event_summed_kl(q_base, p_base), dims)
    term = kl_divergence(q, p)
    return full_precision(term if isinstance(term, Tensor) else torch.as_tensor(term))


def _shared_events(
    q: Distribution, p: Distribution
) -> tuple[Distribution, Distribution, int] | None:
    """Where ``q`` and ``p`` are Independent over as many dimensions: the bases, and it.

    Their KL is then their bases' KL, summed over those dimensions; ``None``
    for another pair.
    """
    if (
        isinstance(q, Independent)
        and isinstance(p, Independent)
        and q.reinterpreted_batch_ndims == p.reinterpreted_batch_ndims
    ):
        return q.base_dist, p.base_dist, q.reinterpreted_batch_ndims
    return None


def _without_shared_events(
    q: Distribution, p: Distribution
) -> tuple[Distribution, Distribution]:
    """The pair whose KL :func:`_event_summed_kl` takes in the end.

    ``Independent`` layers the two share are taken off (a refusal names the
    bases, the pair without a closed form); the rest stays.
    """
    shared = _shared_events(q, p)
    while shared is not None:
        q, p, _ = shared
        shared = _shared_events(q, p)
    return q, p


def _scaled_sum(term: Tensor, guide_site: Any) -> Tensor:
    """Sum of a site's KL over its batch (plate) shape, with the site's scale."""
    scaled = torch.as_tensor(
        scale_and_mask(term, guide_site["scale"], guide_site["mask"])
    )
    batch = guide_site["fn"].batch_shape
    if scaled.shape != batch:  # a KL that did not broadcast over the plates
        scaled = scaled.expand(batch)
    return full_precision(scaled).sum()


def _log_prob_sum(site: Any) -> Tensor:
    log_prob = _event_summed_log_prob(site["fn"], site["value"])
    result: Tensor = torch.as_tensor(
        scale_and_mask(log_prob, site["scale"], site["mask"])
    ).sum()
    return result


def _event_summed_log_prob(fn: Distribution, value: Tensor) -> Tensor:
    """``fn.log_prob(value)``, summed over event dimensions in float32 or wider."""
    if isinstance(fn, Independent):
        inner = _event_summed_log_prob(fn.base_dist, value)
        return _sum_rightmost(inner, fn.reinterpreted_batch_ndims)
    return full_precision(fn.log_prob(value))


def _sum_rightmost(value: Tensor, dims: int) -> Tensor:
    """``value`` summed over its ``dims`` rightmost dimensions (an event's)."""
    return value.sum(tuple(range(-dims, 0))) if dims else value


def _sum_per_particle(log_probs: Iterable[Tensor], samples: int) -> Tensor:
    total: Tensor | None = None
    for value in log_probs:
        per_particle = value.reshape(-1).expand(samples)
        total = per_particle if total is None else total + per_particle
    return torch.zeros(samples) if total is None else total


def _describe(fn: Any) -> str:
    """The class of the innermost distribution of ``fn`` (through ``base_dist``)."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return type(fn).__name__


# Key of a record in the autograd metadata of the nodes that produced the outputs.
_METADATA_KEY = "pyrolite_bnn.record"


def attach_record(tensor: Tensor, record: ForwardRecord) -> None:
    """Mark ``tensor`` (a network output) as produced by the pass of ``record``.

    The record goes on the tensor itself and, when it has one, on its autograd
    node, so that :func:`find_record` finds it again from any tensor computed
    from the output (``out.log_softmax(-1)``, ``out[..., 0]``, ...).
    """
    tensor.bnn_record = record  # type: ignore[attr-defined]
    node = tensor.grad_fn
    if node is not None:
        # ``Node.metadata`` is a dict property (typed as a method in torch's stubs).
        cast(dict[str, Any], node.metadata)[_METADATA_KEY] = record


def release_record(tensor: Tensor) -> None:
    """Forget the record of a network output kept as plain data (a prediction).

    The record holds the pass's weight draws; on the tensor it would keep them
    in memory, and ``torch.save`` of the tensor would write them (and fail to
    load with ``weights_only=True``).
    """
    vars(tensor).pop("bnn_record", None)


def find_record(tensor: Tensor) -> ForwardRecord:
    """The record of the forward pass that produced ``tensor``.

    ``tensor`` is a network output or any tensor computed from exactly one
    network output with gradients enabled: the autograd graph leads back to the
    output. A derivative of an output by the call's input
    (``torch.autograd.grad(out, x, create_graph=True)``), whose graph does not
    reach the output, is found from the weights and weight moments of the call
    it reaches, for a call whose inputs carried a derivative and whose output
    is still referenced (:mod:`~pyrolite_bnn._differentiated_calls`). There is no
    guessing: a tensor that combines several forward passes, or whose history
    was cut (computed under ``torch.no_grad()``, detached, copied), raises an
    error.

    Args:
        tensor: the loss input.

    Returns:
        The :class:`ForwardRecord` of its forward pass.

    Raises:
        ValueError: if no single forward pass can be identified.
    """
    record = getattr(tensor, "bnn_record", None)
    if isinstance(record, ForwardRecord):
        return record
    found = _records_in_graph(tensor.grad_fn)
    if len(found) == 1:
        return found[0]
    if not found:  # a derivative of an output by its input
        differentiated = calls_reached(tensor.grad_fn)
        if len(differentiated) == 1:
            return differentiated[0]
        if differentiated:
            raise ValueError(
                "the loss input is computed from the weights of "
                f"{len(differentiated)} different forward passes (a derivative "
                "taken through several calls of the network, each of which drew "
                "its own weights); compute one loss per forward pass, from the "
                "derivative of that call's output alone: out = model(x); slopes "
                "= torch.autograd.grad(out, x, ..., create_graph=True); "
                "loss_fn(slopes, dy)"
            )
    if found:
        raise ValueError(
            f"the loss input combines the outputs of {len(found)} different forward "
            "passes (each outermost call draws new weights, so they are "
            "different networks); compute one loss per forward pass (out = "
            "model(x); loss_fn(out, y)), and where the result must combine "
            "several calls (a siamese f(a) - f(b), a rollout), make them one "
            "call: a module whose forward makes them, called once"
        )
    running = _particles.current()
    if running is not None and running.root is not None:
        name = type(running.root).__name__
        raise ValueError(
            f"the loss was called inside the running call of {name}, a module "
            "that holds Bayesian layers and so runs as one network: its "
            "layers' outputs are folded (batch * samples rows) and get their "
            f"particle dimension and record when the call of {name} ends. A "
            "module whose forward computes the loss is a training step, not a "
            "network: compute the loss outside its call (loss_fn(model(x), y)), "
            "or call the network inside it as a network of its own, with "
            "samples= (a bnn.VIModule or bnn.VISequential: self.net(x, "
            "samples=10))"
        )
    raise ValueError(
        "cannot tell which forward pass produced this output: it is not the output "
        "of a Bayesian network called outside Pyro inference, nor computed from one "
        "with gradients enabled (operations under torch.no_grad(), .detach() or "
        ".clone() of a no-grad tensor cut the link). Pass out = model(x), or a "
        "tensor computed from it with autograd on, to the loss"
        + _derivative_note(tensor)
        + _handlers_note()
    )


def _derivative_note(tensor: Tensor) -> str:
    """What a derivative of an output needs to be found (for a tensor with a graph).

    ``""`` for a tensor without one.
    """
    if tensor.grad_fn is None:
        return ""
    return (
        ". A derivative of an output by the input (torch.autograd.grad(out, x, "
        "..., create_graph=True)) is found from the call it differentiates when "
        "that call's input required gradients (x.requires_grad_() before out = "
        "model(x)) and its output out is still referenced when the loss is called"
    )


def _handlers_note() -> str:
    """What the Pyro handlers active around a loss call did to a network call there.

    ``""`` where none is active (:func:`~pyrolite_bnn._handlers.pyro_wrapped`).
    """
    if not pyro_wrapped():
        return ""
    named = ", ".join(handler_text(handler) for handler in computation_handlers())
    return (
        f". Pyro handlers are active around this call ({named}): a network "
        "called inside them runs as a Pyro model, whose weights are sample "
        "sites (drawn from the prior unless a handler sets them), and its "
        "output carries no record for the loss. Call the network and the "
        "PyTorch-style loss outside the handlers (which do not reach the loss: "
        "it computes the ELBO from the network's outputs); for Pyro's "
        "handlers to apply, put them around loss_fn.pyro_model(model) and "
        "train with pyro.infer.SVI and bnn.Trace_ELBO"
    )


def computed_from_a_network(tensor: Tensor, weights: Sequence[Tensor] = ()) -> bool:
    """Whether ``tensor`` is a network output or computed from one (with a graph).

    A network run as a Pyro model marks no output: there, whether the graph
    reaches one of its ``weights`` (the values of its weight sites).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> out = bnn.VILinear(2, 1)(torch.randn(3, 2))
        >>> computed_from_a_network(out.squeeze(-1))
        True
        >>> computed_from_a_network(out.detach())
        False
    """
    if isinstance(getattr(tensor, "bnn_record", None), ForwardRecord):
        return True
    if any(tensor is weight for weight in weights):
        return True
    targets = {id(w.grad_fn): w.grad_fn for w in weights if w.grad_fn is not None}
    if targets and _reaches(tensor.grad_fn, targets):
        return True
    return bool(_records_in_graph(tensor.grad_fn))


def _reaches(root: Any, targets: dict[int, Any]) -> bool:
    """Whether the autograd graph from ``root`` holds a node of ``targets``."""
    return reaches_node(root, lambda node: id(node) in targets)


def other_passes_upstream(tensor: Tensor, record: ForwardRecord) -> bool:
    """Whether ``tensor`` (from the pass of ``record``) also depends on another pass.

    True when the network of ``record`` took as input an output of another
    separately called network (``dec(enc(x))``). Walks ``tensor``'s whole
    autograd graph, past ``record``'s own marks: meant for a few checks, not
    every step. The graphs of the pass's own parameters are not walked: a
    parameter computed from another pass (second-order MAML's adapted
    parameters ``p - lr * grad(inner_loss, p, create_graph=True)``, passed
    with ``torch.func.functional_call``) feeds no output into this network.
    """
    # The layers' parameters hold the guide's and the priors' (the network's
    # hold any others): no guide_parameters(), which a loss call avoids.
    parameters = [
        *record.network_parameters(),
        *(() if record.network is None else record.network.parameters()),
    ]
    # The nodes themselves stay referenced while their ids are compared.
    own = [p.grad_fn for p in parameters if p.grad_fn is not None]
    return bool(_records_in_graph(tensor.grad_fn, past=record, stop_at=own))


def _records_in_graph(
    root: Any, past: ForwardRecord | None = None, stop_at: Sequence[Any] = ()
) -> list[ForwardRecord]:
    """Records on the autograd nodes reachable from ``root`` (not past a record).

    The nodes marked with ``past`` are walked through, not collected; the
    nodes in ``stop_at`` are neither walked nor looked at.
    """
    found: list[ForwardRecord] = []
    if root is None:
        return found
    # The nodes themselves are kept: torch may hand out a new Python object
    # for a node at each access and free it after, and a freed object's id
    # is reused (a set of ids ended the walk early, missing records).
    seen = {id(node): node for node in (root, *stop_at)}
    stack = [root]
    while stack:
        node = stack.pop()
        record = node.metadata.get(_METADATA_KEY)
        if record is not None and record is not past:
            if all(record is not other for other in found):
                found.append(record)
            continue
        for child, _ in node.next_functions:
            if child is not None and id(child) not in seen:
                seen[id(child)] = child
                stack.append(child)
    return found


def _first_posterior_parameter(variables: Sequence[RandomVariable]) -> Tensor | None:
    """The first parameter of the first posterior: the tensor object itself."""
    for variable in variables:
        for parameter in variable.layer_posterior.parameters():
            return parameter
    return None
