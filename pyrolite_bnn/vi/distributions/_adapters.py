"""Generic adapters: torch_blue-style distribution objects on this library's classes.

* :class:`BlueDistribution` — a Pyro distribution over a whole tensor from a
  torch_blue ``log_prob(sample, parameters)`` (and ``sample(parameters)``).
* :class:`AdaptedPrior` — a :class:`~pyrolite_bnn.Prior` module around a
  torch_blue prior; its tensor parameters become buffers.
* :class:`AdaptedFamily` / :class:`AdaptedPosterior` — a variational family
  whose posterior module holds one learnable tensor per torch_blue parameter.
* :class:`AdaptedPredictive` — a likelihood evaluated per particle from
  ``predictive_parameters_from_samples`` and ``log_prob_from_parameters``
  (one particle's output at a time, under ``torch.vmap`` where it runs),
  through :class:`ParticleLikelihood` (batch ``(S, B)``, any target shape).
* :class:`FlatPrior` — the improper uniform prior (``log p = 0``).
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam
from torch import Tensor

from pyrolite_bnn._input_layouts import shape_text
from pyrolite_bnn._likelihoods import qualified_name
from pyrolite_bnn._validation import all_finite, is_validation_enabled
from pyrolite_bnn.distributions.predictive import (
    PredictiveDistribution as BnnPredictive,
)
from pyrolite_bnn.distributions.priors import Prior as BnnPrior
from pyrolite_bnn.distributions.variational import Posterior, VariationalFamily
from pyrolite_bnn.vi.distributions._pairing import pairs_examples
from pyrolite_bnn.vi.distributions.base import (
    sample_function,
    variational_log_prob_function,
)
from pyrolite_bnn.vi.utils.errors import UnsupportedDistributionError
from pyrolite_bnn.vi.utils.use_norm_constants import (
    norm_constants_on,
    normalised_densities,
)

if TYPE_CHECKING:
    from pyrolite_bnn.vi.distributions.base import Distribution

__all__ = [
    "AdaptedFamily",
    "AdaptedPosterior",
    "AdaptedPredictive",
    "AdaptedPrior",
    "BlueDistribution",
    "FlatPrior",
    "ParticleLikelihood",
    "flat_prior_kl",
]

LogProb = Callable[[Tensor, tuple[Any, ...]], Tensor]
Sample = Callable[[tuple[Any, ...]], Tensor]

# Classes of torch_blue predictives whose code torch.vmap could not run: their
# particles are scored one after the other.
_SCORED_IN_TURN: weakref.WeakSet[type] = weakref.WeakSet()


def _parameter_tensors(parameters: Any) -> list[Tensor]:
    """The tensors of predictive parameters: one, or those of a tuple or list."""
    if isinstance(parameters, Tensor):
        return [parameters]
    if isinstance(parameters, tuple | list):
        return [p for p in parameters if isinstance(p, Tensor)]
    return []


def _parameters_text(parameters: Any) -> str:
    """The shapes of predictive parameters for a message, or their type."""
    shapes = ", ".join(shape_text(p) for p in _parameter_tensors(parameters))
    return shapes or type(parameters).__name__


class BlueDistribution(dist.TorchDistribution):
    """Distribution of a whole tensor (all dims event) from torch_blue callables.

    Args:
        log_prob_fn: ``(value, parameters) -> elementwise log density``.
        sample_fn: ``parameters -> draw`` (``None``: not samplable).
        parameters: the parameter tensors (each broadcastable to ``event_shape``).
        event_shape: shape of the tensor.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}  # noqa: RUF012
    support = constraints.real
    has_rsample = True

    def __init__(
        self,
        log_prob_fn: LogProb,
        sample_fn: Sample | None,
        parameters: tuple[Any, ...],
        event_shape: Sequence[int],
    ) -> None:
        self.log_prob_fn = log_prob_fn
        self.sample_fn = sample_fn
        self.parameters = parameters
        super().__init__(torch.Size(), torch.Size(event_shape), validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> Any:
        """Pyro's generic expansion (needed inside plates)."""
        return dist.ExpandedDistribution(self, batch_shape)

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        """Draw ``sample_shape`` independent tensors through ``sample_fn``."""
        if self.sample_fn is None:
            raise NotImplementedError(
                "this torch_blue prior defines no sample method; use it with the "
                "default guide, not for prior sampling"
            )
        shape = torch.Size(sample_shape) + self.event_shape
        params = tuple(
            p.expand(shape) if isinstance(p, Tensor) else p for p in self.parameters
        )
        return self.sample_fn(params)

    def log_prob(self, value: Tensor) -> Tensor:
        """Sum of the elementwise log densities over the tensor's dims.

        Normalised: the torch_blue callables run with their constants
        (:func:`~pyrolite_bnn.vi.utils.use_norm_constants.normalised_densities`),
        whatever ``use_norm_constants`` is set to.
        """
        with normalised_densities():
            elementwise = self.log_prob_fn(value, self.parameters)
        elementwise = elementwise + torch.zeros_like(value)
        # A smaller value broadcasts (torch_blue's elementwise log_prob): sum its dims.
        dims = min(len(self.event_shape), elementwise.dim())
        return elementwise.sum(tuple(range(-dims, 0))) if dims else elementwise


class ParticleLikelihood(dist.TorchDistribution):
    """Per-particle likelihood of batch shape ``(S, B)`` from a torch_blue callable.

    ``log_prob(target)`` is the callable's density reduced to ``(S, B)``; the
    target keeps whatever dimensions follow the batch (``(B,)`` labels,
    ``(B, D)`` regression targets), which the callable broadcasts against the
    outputs, as torch_blue's loss does.

    Args:
        log_prob_fn: ``(target, parameters) -> (S, B)`` log density.
        parameters: the network outputs ``(S, B, ...)`` it reads.
        batch_shape: ``(S, B)``.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}  # noqa: RUF012
    support = constraints.real

    def __init__(
        self,
        log_prob_fn: LogProb,
        parameters: tuple[Any, ...],
        batch_shape: Sequence[int],
    ) -> None:
        self.log_prob_fn = log_prob_fn
        self.parameters = parameters
        super().__init__(torch.Size(batch_shape), torch.Size(), validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> Any:
        """Itself at its own shape (Pyro's plates ask), else Pyro's expansion."""
        if torch.Size(batch_shape) == self.batch_shape:
            return self
        return dist.ExpandedDistribution(self, batch_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """The ``(S, B)`` log density, with torch_blue's constants."""
        with normalised_densities():
            result: Tensor = self.log_prob_fn(value, self.parameters)
        return result.expand(self.batch_shape)


class AdaptedPrior(BnnPrior):
    """A torch_blue prior object as a :class:`~pyrolite_bnn.Prior` module.

    Its tensor parameters (distribution and scaling parameters) are copied into
    buffers ``blue_<name>``, so they are saved in ``state_dict`` and follow
    ``.to()``/``.double()``; the density is the object's ``prior_log_prob``.

    Args:
        prior: the torch_blue-style prior (copied).
    """

    def __init__(self, prior: Distribution) -> None:
        super().__init__()
        self.blue = copy.deepcopy(prior)
        names = dict.fromkeys(
            (*self.blue.distribution_parameters, *self.blue.scaling_parameters)
        )
        self._buffered: list[str] = []
        for name in names:
            value = getattr(self.blue, name, None)
            if isinstance(value, Tensor):
                self.register_buffer(f"blue_{name}", value.detach().clone())
                self._buffered.append(name)

    def required_parameters(self) -> tuple[str, ...]:
        """Variational parameters the prior's density needs (hierarchical priors)."""
        return tuple(self.blue._required_parameters)

    def torch_blue_parameters(self) -> tuple[Any, ...]:
        """The prior's ``get_parameters()`` in torch_blue's order, from its buffers.

        What the wrapped object returns with its tensor parameters the
        buffers' current values (after a ``load_state_dict``, an in-place
        change, ``.to()``/``.double()``), not the values it was built with.
        """
        return self._with_buffers().get_parameters()

    def forward(
        self, shape: Sequence[int], hyperparameters: tuple[Tensor, ...] = ()
    ) -> dist.TorchDistribution:
        """Prior of a tensor of ``shape``; ``hyperparameters`` are the required ones."""
        density = self._with_buffers().prior_log_prob  # type: ignore[attr-defined]
        return BlueDistribution(
            lambda value, extra: density(value, *extra), None, hyperparameters, shape
        )

    def _with_buffers(self) -> Distribution:
        """The wrapped prior, its tensor parameters set to the buffers."""
        self.check_written()
        for name in self._buffered:
            setattr(self.blue, name, getattr(self, f"blue_{name}"))
        return self.blue

    def extra_repr(self) -> str:
        """The wrapped class."""
        return type(self.blue).__name__


def flat_prior_kl(log_std: Tensor) -> Tensor:
    """torch_blue's KL from ``N(mean, exp(log_std)^2)`` to the flat prior, summed.

    ``sum(-log_std - 1/2)``: minus the Normal's entropy without its
    ``log(2 pi) / 2`` per weight, or with it under ``use_norm_constants(True)``
    (as torch_blue's ``UniformNormalDivergence``). An improper prior has no
    normalising constant, so the KL is fixed only up to one; this is
    torch_blue's, whichever way the loss finds it.
    """
    constant = 0.5 * (1 + math.log(2 * math.pi)) if norm_constants_on() else 0.5
    total: Tensor = (-log_std - constant).sum()
    return total


class FlatPrior(BnnPrior):
    """Improper uniform prior, ``log p(w) = 0`` (torch_blue's ``UniformPrior``).

    The closed-form KL from a mean-field Normal posterior is torch_blue's,
    :func:`flat_prior_kl`; a Monte-Carlo estimate (``kl="mc"``), ``E_q[log
    q(w)]`` with the normalised Normal density, is lower by ``log(2 pi) / 2``
    per weight with ``use_norm_constants`` off and equal with it on (a
    constant: the gradients are the same).
    """

    def forward(self, shape: Sequence[int]) -> dist.TorchDistribution:
        """``ImproperUniform`` over a tensor of ``shape``."""
        result: dist.TorchDistribution = dist.ImproperUniform(
            constraints.real, torch.Size(), torch.Size(shape)
        )
        return result

    def torch_blue_parameters(self) -> tuple[None]:
        """torch_blue's ``UniformPrior.get_parameters()``: one, without a value.

        The flat prior has no hyperparameters; torch_blue lists its ``mean``
        (``None``), which ``UniformNormalDivergence`` takes and ignores.
        """
        return (None,)

    def kl_from_normal(self, loc: Tensor, scale: Tensor) -> Tensor | None:
        """``KL(N(loc, scale^2) || flat)``, torch_blue's :func:`flat_prior_kl`.

        ``None`` for a subclass that builds another distribution
        (:meth:`~pyrolite_bnn.Prior.builds_distribution_as`).
        """
        if not self.builds_distribution_as(FlatPrior):
            return None
        return flat_prior_kl(scale.log().expand_as(loc))


class AdaptedPosterior(Posterior):
    """Posterior module with one learnable tensor per torch_blue parameter.

    The primary parameter is ``loc`` (so :meth:`mean` and the layers' Kaiming
    initialisation find it); the others are ``param1``, ``param2``, ...

    Args:
        shape: shape of the weight tensor.
        init_loc: initial primary parameter.
        family: the torch_blue variational distribution.

    Attributes:
        initial_values: the value each other parameter starts at, by name
            (its layer gives it the Kaiming-scaled values it initialises
            them with: ``Distribution.initial_constants``); a parameter not
            listed starts at the family's default.
    """

    initial_values: Mapping[str, float] = MappingProxyType({})

    def __init__(
        self, shape: Sequence[int], init_loc: Tensor, family: Distribution
    ) -> None:
        super().__init__(shape)
        self.blue = family
        setattr(self, "loc", PyroParam(init_loc.detach().clone(), constraints.real))  # noqa: B010
        defaults = family.default_parameters()
        for index in range(1, len(family.distribution_parameters)):
            value = torch.full_like(init_loc, float(defaults[index]))
            setattr(self, f"param{index}", PyroParam(value, constraints.real))

    def scale_parameter_names(self) -> tuple[str, ...]:
        """The tensors of the parameters torch_blue holds as logarithms.

        By torch_blue's convention (``Distribution.distribution_parameters``),
        a parameter whose name starts with ``log_`` is the logarithm of a
        positive value:
        ``log_std``, ``MeanFieldStudentT``'s ``log_scale`` (a layer lists it
        as ``_weight_log_scale``). Weight decay would pull the value towards 1.

        Example:
            >>> from pyrolite_bnn import vi
            >>> student_t = vi.distributions.MeanFieldStudentT()
            >>> layer = vi.VILinear(3, 2, variational_distribution=student_t)
            >>> layer.posterior["weight"].scale_parameter_names()
            ('param1_unconstrained',)
        """
        names = self.blue.distribution_parameters
        return tuple(
            f"param{index}_unconstrained"
            for index in range(1, len(names))
            if names[index].startswith("log_")
        )

    def values(self) -> list[Tensor]:
        """The parameters in torch_blue's order."""
        count = len(self.blue.distribution_parameters)
        return [self.loc, *(getattr(self, f"param{i}") for i in range(1, count))]

    def set_values(self, values: Sequence[Tensor]) -> None:
        """Overwrite the parameters (torch_blue's order)."""
        with torch.no_grad():
            for index, value in enumerate(values):
                name = "loc" if index == 0 else f"param{index}"
                getattr(self, f"{name}_unconstrained").copy_(value)

    def distribution(self) -> dist.TorchDistribution:
        """The torch_blue distribution of the whole tensor."""
        self.check_written()
        return BlueDistribution(
            variational_log_prob_function(self.blue),
            sample_function(self.blue),
            tuple(self.values()),
            self.shape,
        )

    def reset_parameters(self, init_loc: Tensor | None = None) -> None:
        """Primary parameter to ``init_loc``, others to their initial values.

        ``None``: drawn by the posterior's ``loc_init``, or kept (see
        :meth:`pyrolite_bnn.distributions.variational.Posterior.reset_parameters`).
        The others start at :attr:`initial_values`, else at the defaults.
        """
        loc = self._new_loc(init_loc)
        if loc is None:
            loc = self.values()[0].detach().clone()
        names = self.blue.distribution_parameters
        defaults = self.blue.default_parameters()
        starts = [
            self.initial_values.get(name, float(default))
            for name, default in zip(names[1:], defaults[1:], strict=True)
        ]
        self.set_values([loc] + [torch.full_like(loc, start) for start in starts])
        self._note_loc_written()

    def extra_repr(self) -> str:
        """Shape and family."""
        return f"shape={tuple(self.shape)}, family={type(self.blue).__name__}"


class AdaptedFamily(VariationalFamily):
    """A torch_blue variational distribution as a variational family.

    Args:
        family: the torch_blue-style variational distribution.
    """

    def __init__(self, family: Distribution) -> None:
        self.blue = family

    def build(self, shape: Sequence[int], init_loc: Tensor) -> Posterior:
        """Create an :class:`AdaptedPosterior` (with its own copy of the family)."""
        return AdaptedPosterior(shape, init_loc, copy.deepcopy(self.blue))


class AdaptedPredictive(BnnPredictive):
    """A torch_blue predictive distribution as this library's likelihood.

    Each particle's output is one "sample": the per-particle log-likelihood is
    ``log_prob_from_parameters(y, predictive_parameters_from_samples(out_s))``
    with ``out_s`` of shape ``(1, B, ...)`` (torch_blue's shapes; see
    :meth:`elementwise_log_likelihood`), and the loss averages those over
    particles (the ELBO's data term).

    Args:
        predictive: the torch_blue-style predictive distribution.
    """

    def __init__(self, predictive: Distribution) -> None:
        super().__init__()
        self.blue = predictive

    def extra_repr(self) -> str:
        """The class of the torch_blue distribution, with its module."""
        return qualified_name(self.blue)

    def align(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Shapes are left to the torch_blue distribution."""
        return output, target

    def distribution(self, output: Tensor) -> dist.TorchDistribution:
        """Per-particle likelihood with batch shape ``(S, B)``.

        The elementwise log-likelihoods are summed over the dimensions after
        the batch; one number per particle (a plain loss's mean, as
        ``NonBayesian``'s) is every example's.
        """

        def log_prob(target: Tensor, parameters: tuple[Any, ...]) -> Tensor:
            value = self.elementwise_log_likelihood(parameters[0], target)
            if value.dim() == 1:
                value = value.unsqueeze(-1)
            while value.dim() > 2:
                value = value.sum(-1)
            return value

        return ParticleLikelihood(log_prob, (output,), output.shape[:2])

    def elementwise_log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
        """Each particle's log-likelihood, unsummed, stacked: ``(S, ...)``.

        torch_blue's contract, once per particle: the samples that
        ``predictive_parameters_from_samples`` gets are the particle's output
        alone, ``(1, B, ...)``, and ``log_prob_from_parameters`` gets
        ``target`` as given (labels ``(B,)``, targets ``(B, D)``) with the
        parameters of that one prediction, so the distribution's code sees
        torch_blue's shapes. Its results are stacked over particles:
        ``(S, B, D)`` for an elementwise one, ``(S,)`` for one number per
        particle.

        All particles run in one call under :func:`torch.vmap` (randomness
        ``"different"``: each particle draws its own random numbers). Where
        vmap cannot run the distribution's code (``.item()``, a branch on a
        value, an operation without a batching rule: its class runs in turn
        from then on), and to report log-likelihoods that are not finite,
        the particles are scored one after the other, whose values vmap's
        equal.

        Raises:
            UnsupportedDistributionError: while validation is on, if the
                log-likelihoods are not finite for finite outputs (see
                :meth:`check_particle_scores`), or if
                ``log_prob_from_parameters`` raised ``ValueError`` for
                parameters that are not finite (the error is chained).
        """
        vmap_refused = False
        if output.shape[0] > 1 and type(self.blue) not in _SCORED_IN_TURN:
            try:
                value: Tensor = torch.vmap(
                    lambda particle: self._score_particle(particle, target),
                    randomness="different",
                )(output)
            except Exception:  # whatever vmap refused: the loop runs it as written
                vmap_refused = True
            else:
                if not self._needs_a_look(output, value):
                    return value
                # Checks that read values do not run under vmap: in turn they do.
        # Outside the except clause: an error of the distribution's own code
        # is raised by the loop, without vmap's attempt as its context.
        value = self._score_in_turn(output, target)
        if vmap_refused:
            _SCORED_IN_TURN.add(type(self.blue))
        self.check_particle_scores(output, value)
        return value

    def _score_in_turn(self, output: Tensor, target: Tensor) -> Tensor:
        """:meth:`_score_particle` of one particle after the other, stacked."""
        return torch.stack([self._score_particle(one, target) for one in output])

    def _score_particle(self, output: Tensor, target: Tensor) -> Tensor:
        """The log-likelihood of ``target`` under one particle's ``output``.

        Args:
            output: the particle's network output, ``(B, ...)``.
            target: the targets, as torch_blue's loss passes them.

        Raises:
            UnsupportedDistributionError: while validation is on, if
                ``log_prob_from_parameters`` raised ``ValueError`` (a torch
                distribution's parameter check) for parameters that are not
                finite although ``output`` is.
        """
        blue: Any = self.blue
        parameters = blue.predictive_parameters_from_samples(output.unsqueeze(0))
        try:
            value: Tensor = blue.log_prob_from_parameters(target, parameters)
        except ValueError as error:
            if self._needs_a_look(output, _parameter_tensors(parameters)):
                raise UnsupportedDistributionError(
                    f"{qualified_name(self.blue)}.log_prob_from_parameters raised "
                    f"ValueError for parameters that are not finite from finite "
                    f"network outputs. {self._one_sample_explanation()}"
                ) from error
            raise
        self.check_particle_shape(output, target, parameters, value)
        return value

    def check_particle_shape(
        self, output: Tensor, target: Tensor, parameters: Any, value: Tensor
    ) -> None:
        """Refuse a particle's log-likelihood that is not of its batch.

        torch_blue's contract: ``predictive_parameters_from_samples`` reduces
        the sample dimension 0, so ``log_prob_from_parameters`` gives the
        examples' log-likelihoods, first dimension ``B`` (``(B,)``, ``(B,
        D)``), or one number for the batch: a scalar, ``(1,)`` (torch_blue's
        ``NonBayesian`` documents its loss so), or a batch mean kept as
        ``(1, D)``, which every example gets. Parameters that keep the sample
        dimension (``return samples`` without ``.mean(0)``) give ``(1, B,
        ...)``, whose ``B`` the loss would sum as a feature dimension,
        counting every example ``B`` times without a word: a leading ``1``
        followed by ``B`` is refused (also where it is a batch mean of ``D ==
        B`` features, which cannot be told apart; ``.mean()`` per particle is
        one number). A shape check: it runs under ``torch.vmap`` and with
        validation off.

        Args:
            output: the particle's network output, ``(B, ...)``.
            target: the targets, as torch_blue's loss passes them.
            parameters: what ``predictive_parameters_from_samples`` returned.
            value: what ``log_prob_from_parameters`` returned.

        Raises:
            UnsupportedDistributionError: naming the shapes and the contract.
        """
        if value.numel() == 1 or output.dim() == 0:
            return
        batch = output.shape[0]
        if value.shape[0] == batch:
            self.check_target_pairing(output, target, parameters, value)
            return
        if value.shape[0] == 1 and not (value.dim() > 1 and value.shape[1] == batch):
            return  # a batch summary, (1, D): every example's
        name = qualified_name(self.blue)
        raise UnsupportedDistributionError(
            f"{name}.log_prob_from_parameters gave shape {shape_text(value)} for "
            f"one particle's output of batch B = {output.shape[0]} (samples "
            f"{(1, *output.shape)}, targets {shape_text(target)}, parameters "
            f"{_parameters_text(parameters)}). torch_blue's "
            "contract: the examples' log-likelihoods, batch first, or one number "
            "for the batch (a scalar, (1,), or a batch mean (1, D)); the loss "
            "would sum the other dimensions as an example's features (parameters "
            "that keep the sample dimension, (1, B, ...), count every example B "
            "times). Make predictive_parameters_from_samples reduce the sample "
            "dimension 0 (samples.mean(0), as torch_blue's distributions do), so "
            "that the parameters have the batch first; a log-likelihood with a "
            "leading 1 of its own loses it with squeeze(0), a batch mean per "
            "particle is .mean()."
        )

    def check_target_pairing(
        self, output: Tensor, target: Tensor, parameters: Any, value: Tensor
    ) -> None:
        """Refuse log-likelihoods that pair every example with every target.

        Targets ``(B,)`` against parameters ``(B, 1)`` (or targets ``(B, 1)``
        against parameters ``(B,)``) broadcast from the right to ``(B, B)``:
        each example scored against the targets of all ``B`` examples, which
        the loss would sum as the example's features (torch_blue computes the
        same; torch's ``MSELoss`` warns of it). The sign, read by
        :func:`~pyrolite_bnn.vi.distributions._pairing.pairs_examples`: of the
        targets and the parameters aligned from the right with the
        log-likelihoods, one's batch dimension lands after the first, where
        one whose batch is first has a dimension of size 1 that broadcasting
        stretched to ``B``, and no operand has features of its own there.
        Labels ``(B,)`` indexing parameters ``(B, C)`` (per-class terms ``(B,
        C)``), quantile levels ``(Q,)`` beside quantiles ``(B, Q)`` and a
        scale per reading ``(D,)`` beside targets ``(B, D)`` are accepted at
        every ``B``, also one equal to ``C``, ``Q`` or ``D`` (a last batch).
        A shape check: it runs under ``torch.vmap`` and with validation off.

        Args:
            output: the particle's network output, ``(B, ...)``.
            target: the targets, as torch_blue's loss passes them.
            parameters: what ``predictive_parameters_from_samples`` returned.
            value: what ``log_prob_from_parameters`` returned, batch first.

        Raises:
            UnsupportedDistributionError: naming the shapes and the remedy.
        """
        batch = output.shape[0]
        operands = (target, *_parameter_tensors(parameters))
        if not pairs_examples(value.shape, batch, (t.shape for t in operands)):
            return
        raise UnsupportedDistributionError(
            f"{qualified_name(self.blue)}.log_prob_from_parameters gave shape "
            f"{shape_text(value)} for targets {shape_text(target)} and parameters "
            f"{_parameters_text(parameters)}: broadcasting from "
            "the right paired every example with the targets of all B = "
            f"{batch} examples, and the loss would sum them as the example's "
            "features. Give the targets the outputs' shape (e.g. "
            "target.unsqueeze(-1) for outputs (B, 1), target.squeeze(-1) for "
            "outputs (B,)) or the outputs the targets'."
        )

    def _needs_a_look(self, output: Tensor, values: Tensor | list[Tensor]) -> bool:
        """Whether validation is on and ``values`` are not finite, ``output`` is.

        Outputs that are not finite themselves are left to the checks that
        report them. ``False`` where values cannot be read (under a
        ``torch.func`` transform) and with validation off.
        """
        if not is_validation_enabled():
            return False
        tensors = [values] if isinstance(values, Tensor) else values
        # The values first: finite ones (the rule) need no look at the output,
        # larger by the event dimensions.
        return not all(all_finite(t) for t in tensors) and all_finite(output)

    def check_particle_scores(self, output: Tensor, value: Tensor) -> None:
        """Refuse non-finite log-likelihoods of finite outputs, with the cause.

        A distribution whose parameters come from the spread of the samples
        (a standard deviation over the sample dimension, as torch_blue 1.1.0's
        ``MeanFieldNormal``) gets one sample per particle here: the spread of
        one sample is NaN (or zero), and the loss was NaN without a word.
        Outputs that are not finite themselves are left to the checks that
        report them. Skipped with validation off (it reads values). Not
        detected: a spread guarded by a constant (``samples.var(0,
        unbiased=False) + 1e-6``) is that constant for one sample, finite; no
        check can tell it from a fixed noise scale.

        Raises:
            UnsupportedDistributionError: naming the per-particle scoring and
                the two ways out.
        """
        if not self._needs_a_look(output, value):
            return
        bad = int((~torch.isfinite(value)).sum())
        raise UnsupportedDistributionError(
            f"{qualified_name(self.blue)} gave {bad} non-finite log-likelihood(s) "
            f"for finite network outputs. {self._one_sample_explanation()} (A "
            "target outside the distribution's support is the other cause of an "
            "infinite one.)"
        )

    def _one_sample_explanation(self) -> str:
        """Why a spread-based distribution fails here, and the two ways out."""
        name = type(self.blue).__name__
        return (
            "The loss scores each particle's output as its own prediction (the "
            "ELBO's data term, the mean over particles of log p(y | x, w_s)): "
            f"{name}.predictive_parameters_from_samples gets one sample at a "
            "time, shape (1, B, ...), and parameters from the spread of the "
            "samples (a standard deviation over dimension 0) are undefined for "
            "one sample. Give the distribution a noise parameter of its own (a "
            "fixed or learned scale, not the samples' spread), or use "
            "vi.distributions.MeanFieldNormal, which learns one (pass "
            "loss_fn.parameters() to the optimizer)."
        )

    def log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
        """``log p(target | output_s)``, ``(S, B)``."""
        return self.distribution(output).log_prob(target)
