"""Predictive distributions: the likelihood ``p(y | network output)``.

Each is a small :class:`~pyro.nn.PyroModule` that turns the network output of
shape ``(S, B, ...)`` into a Pyro distribution with batch shape ``(S, B)`` (any
further target dimensions are event dimensions), checks targets, and summarises
the posterior predictive for :class:`~pyrolite_bnn.predict.Prediction`:

* per particle: :meth:`~PredictiveDistribution.class_probs` (classification)
  or :meth:`~PredictiveDistribution.moments` (regression);
* of the mixture over particles: :meth:`~PredictiveDistribution.predictive_mean`
  and :meth:`~PredictiveDistribution.quantile`.

Every method that reads a network output first checks its shape
(:meth:`~PredictiveDistribution.check_output`), so the loss and the summaries
refuse the same outputs with the same message. A summary a likelihood cannot
give raises: ``AttributeError`` for class probabilities of a regression
likelihood and moments of a classification one, ``NotImplementedError`` for
quantiles without a closed-form mixture CDF.

The summaries (class probabilities, moments, the mixture's mean and quantiles,
:meth:`~PredictiveDistribution.mixture_log_likelihood`) are computed, and
returned, in at least ``float32``: a ``float16`` or ``bfloat16`` output (a
network under :class:`torch.autocast`, or converted to half precision) is read
as ``float32`` first (:func:`full_precision`), as autocast keeps reductions in
``float32``; a ``float64`` one stays ``float64``. The log-densities of targets
follow the same rule (:meth:`~PredictiveDistribution.log_likelihood`, the
loss's data term, and the Pyro model's observation site, both through
:meth:`~PredictiveDistribution.observe`'s checks): a noise scale cast to a
``float16`` output's dtype has a subnormal square below 7.8e-3 and a square
of 0 below 1.7e-4 (the loss was ``inf`` at a scale of 1e-4), and ``bfloat16``
keeps 3 significant digits of it.
Draws of targets (:meth:`~PredictiveDistribution.target_distribution`) keep
the output's dtype.
"""

from __future__ import annotations

import math
from typing import ClassVar, SupportsFloat

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.nn import PyroParam
from torch import Tensor

from pyrolite_bnn._capture import transforms_active
from pyrolite_bnn._label_values import (
    ignore_index_hint,
    labels_outside,
    outside_labels_note,
)
from pyrolite_bnn._math import inverse_softplus
from pyrolite_bnn._pyro_module import LocalPyroModule, local_pyro_method
from pyrolite_bnn._scales import DeclaresScales
from pyrolite_bnn._unwritten_tensors import RefusesUnwrittenTensors
from pyrolite_bnn._validation import (
    check_finite,
    check_integer,
    check_normal_number,
    check_real,
    check_temperature,
    distribution_checks_off,
    is_validation_enabled,
    readable_all,
)
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.distributions._dense_layouts import (
    batch_last_hint,
    channels_first_hint,
    pair_first_hint,
)
from pyrolite_bnn.distributions._log_rate_poisson import LogRatePoisson
from pyrolite_bnn.distributions._precision import full_precision, summary_dtype
from pyrolite_bnn.distributions._scoring import (
    defining_class,
    per_position_only,
    users_class,
)
from pyrolite_bnn.distributions._target_spread import (
    STANDARDISE,
    UNSCALED_SPREAD,
    narrow_spread,
    raw_steps,
    wide_spread,
)
from pyrolite_bnn.distributions.mixture_quantiles import (
    gaussian_mixture_quantile,
    poisson_mixture_quantile,
    student_t_mixture_quantile,
)

__all__ = [
    "Bernoulli",
    "Categorical",
    "HeteroscedasticNormal",
    "Normal",
    "Poisson",
    "PredictiveDistribution",
    "StudentT",
]


def _location(output: Tensor) -> Tensor:
    """A scalar-target output as per-particle locations: its trailing 1 dropped.

    A trailing 1 after the batch dimension is the scalar target of an example
    (``(S, B, 1)``) or of each of its positions (``(S, B, L, 1)`` per token):
    the summaries drop it, as the loss takes targets ``(B,)`` (``(B, L)``) for
    it, so that ``pred.mean - y`` keeps ``y``'s shape.
    """
    if output.dim() >= 3 and output.shape[-1] == 1:
        return output.squeeze(-1)
    return output


def _mixture_variances(means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor]:
    """``mean_s variances`` and ``var_s means`` over the particles (dim 0).

    The variance of the means is ``inf`` where their mean is infinite.
    """
    centre = means.mean(0)
    spread = (means - centre).square().mean(0)  # Tensor.var warns on no examples
    return variances.mean(0), spread.masked_fill(centre.isinf(), math.inf)


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _check_real_target(likelihood: PredictiveDistribution, target: Tensor) -> None:
    """Regression targets are real numbers: a floating or integer dtype.

    Integer targets take part in the loss as numbers (torch promotes them to
    the output's floating dtype); ``bool`` and complex ones are refused.
    """
    if target.dtype == torch.bool or target.is_complex():
        raise ValueError(
            f"{type(likelihood).__name__} targets must be real numbers (a floating "
            f"or integer dtype), got dtype {target.dtype}"
        )


# How missing target entries are marked (the ``missing=`` option).
_MISSING_MARKERS = ("nan",)


def _check_missing(missing: object, owner: str) -> str | None:
    """``missing`` if it is ``None`` or ``"nan"``, else a ``ValueError``."""
    if missing is None or (isinstance(missing, str) and missing in _MISSING_MARKERS):
        return missing
    raise ValueError(
        f'{owner} missing must be None (every target entry observed) or "nan" '
        f"(NaN entries of the targets are missing), got {missing!r}; mark other "
        "missing values with NaN first (y.masked_fill(y == marker, float('nan')))"
    )


def _nan_targets_remedy(likelihood: PredictiveDistribution) -> str:
    """Why NaN/Inf targets are refused, and what to do instead.

    Switching the check off would make the loss and every gradient NaN. A
    likelihood that already reads NaN as missing (``missing="nan"``, or an
    :meth:`~PredictiveDistribution.observed` of the user's) was refused an
    entry it marks observed: an Inf, or a NaN its ``observed`` keeps.
    """
    name = type(likelihood).__name__
    if likelihood.missing is not None:
        return (
            f'{name}(missing="nan") reads only NaN as a missing target: an Inf '
            "is not a missing marker, and would make the loss and every "
            "gradient Inf or NaN (switching validation off does not change "
            "that). Mark an unmeasured entry with NaN "
            "(y.masked_fill(y.isinf(), float('nan'))), or correct the value"
        )
    if users_class(defining_class(type(likelihood), "observed")):
        return (
            f"{name}.observed(target) marks these entries as observed; an entry "
            "is left out of the loss only where observed() returns False. Mark "
            "the missing entries there, or correct the values"
        )
    return (
        "A NaN is read as a missing target only by a likelihood built with "
        f'missing="nan" (bnn.{name}(..., missing="nan"); a '
        "likelihood of your own marks missing entries by overriding "
        "observed(target)): it leaves them out of the loss, the Pyro model and "
        "calibration. Without it the loss and every gradient would be NaN "
        "(switching validation off does not change that). Or leave the examples "
        "without a target out of the batch (x[keep], y[keep])"
    )


def _summed_over_positions(log_p: Tensor) -> Tensor:
    """Log-densities ``(S, B, ...)`` summed over the positions of each example."""
    return log_p.sum(tuple(range(2, log_p.dim()))) if log_p.dim() > 2 else log_p


def _masked(likelihood: TorchDistributionMixin, keep: Tensor) -> TorchDistributionMixin:
    """``likelihood`` with the entries where ``keep`` is false masked out.

    The mask applies to the distribution of one position (inside its
    :class:`~torch.distributions.Independent` layers), whose batch shape
    ``(S, B, ...)`` it must broadcast to.
    """
    events = 0
    base = likelihood
    while isinstance(base, torch.distributions.Independent):
        events += base.reinterpreted_batch_ndims
        base = base.base_dist
    _check_mask_layout(keep, base.batch_shape)
    result: TorchDistributionMixin = base.mask(keep).to_event(events)
    return result


def _check_mask_layout(keep: Tensor, positions: torch.Size) -> None:
    """Refuse a mask of observed entries that is not one per target position."""
    if tuple(keep.shape) != tuple(positions[1:]):
        raise ValueError(
            f"the mask of observed target entries has shape {_shape(keep)}, but "
            f"the likelihood's log-densities per position are {tuple(positions)} "
            "(S, B, ...): missing entries can only be left out of a distribution "
            "that is a product over the target positions"
        )


class PredictiveDistribution(DeclaresScales, RefusesUnwrittenTensors, LocalPyroModule):
    """Base class of likelihoods ``p(y | network output)``.

    ``predictive(output)`` returns the distribution for an output of shape
    ``(S, B, ...)``; :meth:`observe` also checks the targets and brings output
    and targets to matching shapes (a scalar target may come as ``(B,)`` or
    ``(B, 1)``, the output as ``(S, B)`` or ``(S, B, 1)``).

    Subclasses also summarise the posterior predictive, the equal-weight mixture
    over particles of ``p(y | output[s])``, for
    :class:`~pyrolite_bnn.predict.Prediction`: classification likelihoods
    implement :meth:`class_probs`, regression likelihoods :meth:`moments` (and
    :meth:`quantile` where the mixture CDF has a closed form).

    A likelihood with a learned scale (a noise scale) declares its
    unconstrained tensor (:meth:`scale_parameter_names`), which keeps weight
    decay off it (:func:`~pyrolite_bnn.decay.decay_groups`).

    A likelihood's tensors (a noise scale, ``df``) that ``to_empty`` left
    without values are refused where they are read, until a reset or a load
    writes them (:meth:`check_written`).

    Target entries :meth:`observed` marks as missing (the library's
    likelihoods built with ``missing="nan"``, ``Categorical(ignore_index=...)``)
    add nothing to the log-likelihood, wherever it is taken: the loss,
    :class:`~pyrolite_bnn.Trace_ELBO`, the Pyro model's observation site
    (Pyro's own ELBOs, ``MCMC``), calibration, ``fit``'s validation NLL and
    :func:`~pyrolite_bnn.laplace`. A likelihood of your own marks them by
    overriding :meth:`observed`; one that redefines :meth:`log_likelihood`
    has it used by every path that scores targets (calibration, which
    reads densities per position, takes its per-example densities, unless
    the class redefines :meth:`position_log_likelihood` too); one that
    redefines only :meth:`position_log_likelihood` (a weight per position)
    has the sum of its positions as :meth:`log_likelihood`, so that the
    loss, the Pyro model and calibration follow it alike. The inherited
    :meth:`position_log_likelihood` always gives the class's own
    per-position densities, so a redefined :meth:`log_likelihood` may be
    built from it (``(self.position_log_likelihood(output, target) *
    weights).sum(-1)``).

    Attributes:
        is_classification: whether outputs are class scores (summarised by
            :meth:`class_probs`) rather than a distribution over real values.
    """

    is_classification: ClassVar[bool] = False
    # A class default: likelihoods pickled before the option existed.
    _missing: str | None = None

    def __init__(self) -> None:
        super().__init__("likelihood")

    def _take_missing(self, missing: object) -> None:
        """Keep the ``missing=`` option of a constructor, checked."""
        self._missing = _check_missing(missing, type(self).__name__)

    @property
    def missing(self) -> str | None:
        """How missing target entries are marked: ``"nan"``, or ``None`` (none).

        Fixed at construction (read-only): a compiled loss keys its graphs on
        the likelihood's class, and a value changed later would be ignored by
        the graphs built before.
        """
        return self._missing

    def observed(self, target: Tensor) -> Tensor | None:
        """Where ``target`` holds an observed entry; ``None``: everywhere.

        A boolean mask of ``target``'s shape. Built with ``missing="nan"``,
        the NaN entries are missing. Every path that scores targets gives
        the missing entries log-density 0 (they are scored at the value 0
        and masked out, so that no NaN reaches a gradient): the data term is
        that of the data without them, its mini-batch scale ``N / B`` and the
        KL unchanged. Override it in a likelihood of your own to mark missing
        entries another way (a sentinel value).

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> y = torch.tensor([[0.5, float("nan")], [1.0, 2.0]])
            >>> bnn.Normal(scale=1.0, missing="nan").observed(y)
            tensor([[ True, False],
                    [ True,  True]])
            >>> bnn.Normal(scale=1.0).observed(y) is None
            True
        """
        if self.missing is None:
            return None
        return ~target.isnan()

    def _filled(self, target: Tensor) -> Tensor:
        """``target`` with its missing entries (see :meth:`observed`) set to 0."""
        keep = self.observed(target)
        return target if keep is None else target.masked_fill(~keep, 0)

    def _observed_values(self, target: Tensor) -> Tensor:
        """``target`` if none is missing, else its observed entries (flat)."""
        keep = self.observed(target)
        return target if keep is None else target[keep]

    def extra_repr(self) -> str:
        """The missing-entry marker, if any."""
        return "" if self.missing is None else f"missing={self.missing!r}"

    def align(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Match a scalar-target output ``(S, B, 1)`` with targets ``(B,)`` etc.

        Refuses targets of another shape, validation on or off (a shape check
        needs no synchronisation): the batch size too, so that targets
        ``(1, ...)`` are not broadcast over the batch.
        """
        self.check_batch_size(output, target)
        rest, target_rest = output.shape[2:], target.shape[1:]
        if rest == target_rest:
            return output, target
        if rest == (*target_rest, 1):
            return output.squeeze(-1), target
        if target_rest == (*rest, 1):
            return output, target.squeeze(-1)
        raise ValueError(
            f"{type(self).__name__}: targets of shape {_shape(target)} do not match "
            f"network output {_shape(output)}; expected targets of shape "
            f"{(output.shape[1], *output.shape[2:])}"
        )

    def untrained_parameters(self) -> list[str]:
        """Names of learned parameters still exactly at their initial values.

        A likelihood object made for prediction (``bnn.predict(net, x,
        bnn.Normal())``) is not the one the loss trained: its learned noise
        scale is the initial one. ``[]`` for likelihoods without any.

        Example:
            >>> import pyrolite_bnn as bnn
            >>> bnn.Normal().untrained_parameters()
            ['raw_scale']
            >>> bnn.Normal(scale=0.1).untrained_parameters()
            []
        """
        return []

    def check_output(self, output: Tensor) -> None:
        """Refuse a network output this likelihood cannot read.

        Called by every method that reads an output (the loss's
        :meth:`log_likelihood`, :meth:`forward`, the summaries), whether
        validation is on or not: a shape check needs no synchronisation. The
        base class needs ``(S, B, ...)``; subclasses that index a class or
        parameter dimension require it too.

        Raises:
            ValueError: naming the expected and the given shape.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> bnn.Categorical().check_output(torch.zeros(4, 3))
            Traceback (most recent call last):
            ...
            ValueError: Categorical expects logits of shape (S, B, classes), got (4, 3)
        """
        if output.dim() < 2:
            raise ValueError(
                f"{type(self).__name__} expects network output of shape (S, B, ...), "
                f"got {_shape(output)}"
            )

    def check_target(self, output: Tensor, target: Tensor) -> None:
        """Validate targets (batch size, values); raises ``ValueError``.

        The observed entries (:meth:`observed`) must be finite.
        """
        self.check_batch_size(output, target)
        self.check_finite_target(target)

    def check_finite_target(self, target: Tensor, what: str = "target") -> None:
        """Refuse NaN or Inf in the entries of ``target`` that are observed.

        With validation on; the entries :meth:`observed` marks as missing
        are not read. Run by :meth:`check_target`, and by
        :func:`~pyrolite_bnn.fit` on validation data held in memory before
        the first epoch.

        Args:
            target: the targets, in the layout the loss is given them.
            what: how the message names them.

        Raises:
            ValueError: counting the values refused and saying what to do.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> y = torch.tensor([[0.5, float("nan")]])
            >>> bnn.Normal(missing="nan").check_finite_target(y)  # NaN: missing
            >>> try:
            ...     bnn.Normal().check_finite_target(y)
            ... except ValueError as error:
            ...     print(str(error).split(";")[0])
            target contains 1 NaN/Inf value(s) (shape (1, 2))
        """
        check_finite(self._filled(target), what, _nan_targets_remedy(self))

    def check_batch_size(self, output: Tensor, target: Tensor) -> None:
        """Refuse targets whose first dimension is not the output's batch ``B``.

        A shape check, run by :meth:`align` whether validation is on or not
        (it needs no synchronisation).

        Raises:
            ValueError: naming both shapes.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> normal = bnn.Normal(scale=1.0)
            >>> try:
            ...     normal.check_batch_size(torch.zeros(4, 3), torch.zeros(1))
            ... except ValueError as error:
            ...     print(error)
            Normal: expected targets with batch size 3 (output (4, 3)), got (1,)
        """
        if target.dim() == 0 or target.shape[0] != output.shape[1]:
            raise ValueError(
                f"{type(self).__name__}: expected targets with batch size "
                f"{output.shape[1]} (output {_shape(output)}), got {_shape(target)}"
            )

    def distribution(self, output: Tensor) -> TorchDistributionMixin:
        """Distribution with batch shape ``output.shape[:2]``."""
        raise NotImplementedError

    def forward(self, output: Tensor) -> TorchDistributionMixin:
        """``p(y | output)`` with batch shape ``(S, B)``."""
        self.check_output(output)
        return self.distribution(output)

    def target_distribution(self, output: Tensor) -> TorchDistributionMixin:
        """``p(y | output)`` in the layout of the targets: what a draw of ``y`` is.

        Batch shape ``(S, B)``; the event shape is that of one example's
        target, so a scalar-target output ``(S, B, 1)`` draws ``(S, B)``, as
        the targets ``(B,)`` are compared with the draws (:meth:`forward` keeps
        the output's trailing ``1``). The Pyro model's observation site draws
        from it.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> poisson = bnn.Poisson()
            >>> poisson.target_distribution(torch.zeros(4, 3, 1)).sample().shape
            torch.Size([4, 3])
            >>> poisson(torch.zeros(4, 3, 1)).sample().shape
            torch.Size([4, 3, 1])
        """
        self.check_output(output)
        return self.distribution(_location(output))

    def observe(
        self, output: Tensor, target: Tensor
    ) -> tuple[TorchDistributionMixin, Tensor]:
        """Check ``target``; return ``(p(y | output), target)`` with matching shapes.

        Calls the module, so that learned parameters are reported to Pyro
        inference. Missing entries (:meth:`observed`) are masked out of the
        distribution and set to 0 in the returned target. The Pyro model's
        observation site scores targets with :meth:`pyro_log_likelihood`,
        which follows a redefined :meth:`log_likelihood` too.
        """
        output, target = self._checked(output, target)
        likelihood = self(output)
        keep = self.observed(target)
        if keep is None:
            return likelihood, target
        return _masked(likelihood, keep), target.masked_fill(~keep, 0)

    def log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
        """``log p(target | output)`` per particle and example, ``(S, B)``.

        The PyTorch-style loss uses this: no Pyro bookkeeping, and no
        distribution-level argument checks after :meth:`check_target`.
        Missing entries (:meth:`observed`) add nothing. A subclass that
        redefines only :meth:`position_log_likelihood` has its positions
        summed here.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> y = torch.tensor([[0.0, float("nan")]])  # one example, 2 outputs
            >>> bnn.Normal(scale=1.0, missing="nan").log_likelihood(
            ...     torch.zeros(1, 1, 2), y
            ... )
            tensor([[-0.9189]])
        """
        if per_position_only(self):
            return _summed_over_positions(self.position_log_likelihood(output, target))
        output, target = self._checked(output, target)
        keep = self.observed(target)
        if keep is None:
            with distribution_checks_off():
                result: Tensor = self.distribution(output).log_prob(target)
            return result
        log_p = self._position_log_densities(output, target, keep)
        return _summed_over_positions(log_p)

    def position_log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
        """``log p(target | output)`` per particle, example and target position.

        :meth:`log_likelihood` before its sum over the positions of one
        example (the tokens of a sequence, the pixels of an image, the
        entries of a multi-output target), ``(S, B, ...)`` in the layout of
        the aligned target: ``(S, B)`` for one position per example. The
        per-position summaries of a :class:`~pyrolite_bnn.Prediction`
        (``probs``, intervals) are the particle mixtures of these densities;
        a calibration is fitted on them. A missing position
        (:meth:`observed`: ``missing="nan"``, a
        ``Categorical(ignore_index=...)`` label) holds 0. A likelihood whose
        distribution is no product over positions (its event not
        :class:`~torch.distributions.Independent`) gives its log-density per
        example, ``(S, B)``.

        These are the class's own densities, whatever a subclass redefines:
        a subclass that redefines :meth:`log_likelihood` may build it from
        this method (directly or through ``super()``), and calibration
        then reads that :meth:`log_likelihood` per example instead.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> out = torch.zeros(4, 3, 5, 1)  # 3 sequences of 5 scalar targets
            >>> normal = bnn.Normal(scale=1.0)
            >>> normal.position_log_likelihood(out, torch.zeros(3, 5)).shape
            torch.Size([4, 3, 5])
            >>> normal.log_likelihood(out, torch.zeros(3, 5)).shape
            torch.Size([4, 3])
        """
        output, target = self._checked(output, target)
        return self._position_log_densities(output, target, self.observed(target))

    def _position_log_densities(
        self, output: Tensor, target: Tensor, keep: Tensor | None
    ) -> Tensor:
        """Log-densities per position of aligned outputs and targets, 0 off ``keep``."""
        with distribution_checks_off():
            likelihood = self.distribution(output)
            while isinstance(likelihood, torch.distributions.Independent):
                likelihood = likelihood.base_dist
            if keep is None:
                result: Tensor = likelihood.log_prob(target)
                return result
            log_p: Tensor = likelihood.log_prob(target.masked_fill(~keep, 0))
        _check_mask_layout(keep, log_p.shape)
        return log_p.masked_fill(~keep, 0.0)

    @local_pyro_method
    def pyro_log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
        """:meth:`log_likelihood`, with learned parameters reported to Pyro.

        Run as a call of the module runs: a learned noise scale read inside
        is a ``param`` statement that Pyro's optimisers find (and handlers
        such as ``poutine.lift`` see). The Pyro model's observation site
        scores targets with it, so that Pyro's own ELBOs, ``MCMC`` and
        ``Predictive`` score them as the loss and
        :class:`~pyrolite_bnn.Trace_ELBO` do, missing entries and a
        redefined :meth:`log_likelihood` included.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> normal, out = bnn.Normal(scale=1.0), torch.zeros(2, 3)
            >>> y = torch.tensor([0.0, 1.0, 2.0])
            >>> torch.equal(
            ...     normal.pyro_log_likelihood(out, y), normal.log_likelihood(out, y)
            ... )
            True
        """
        return self.log_likelihood(output, target)

    def redefines_log_likelihood(self) -> bool:
        """Whether a class outside the library redefines how targets are scored.

        ``True`` where :meth:`log_likelihood` or
        :meth:`position_log_likelihood` comes from a class of the user's: its
        densities are its own, which a calibration that rebuilds the
        distribution from its moments (:class:`~pyrolite_bnn.VarianceScaling`)
        cannot follow.

        Example:
            >>> import pyrolite_bnn as bnn
            >>> bnn.Normal().redefines_log_likelihood()
            False
        """
        return any(
            users_class(defining_class(type(self), name))
            for name in ("log_likelihood", "position_log_likelihood")
        )

    def mixture_log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
        """``log (1/S) sum_s p(target | output_s)`` per example, ``(B,)``.

        The log predictive density of the particle mixture: the held-out
        metric that validation, calibration and prior-precision searches
        minimise the negative mean of. In at least ``float32``
        (:func:`full_precision`): a half-precision output is read as
        ``float32``.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> out = torch.zeros(4, 3, 2)  # 4 particles, 3 examples, 2 classes
            >>> bnn.Categorical().mixture_log_likelihood(out, torch.tensor([0, 1, 1]))
            tensor([-0.6931, -0.6931, -0.6931])
        """
        log_p = self.log_likelihood(full_precision(output), target)
        return torch.logsumexp(log_p, 0) - math.log(log_p.shape[0])

    # ------------------------------------------------------------ summaries
    def class_probs(self, output: Tensor) -> Tensor:
        """Class probabilities per particle, ``(S, B, ..., C)``.

        Implementations compute them in at least ``float32``
        (:func:`full_precision` of the output), as the library's do.

        Raises:
            AttributeError: for a likelihood that is not a classification one.
        """
        raise AttributeError(
            f"class probabilities need a classification likelihood, not "
            f"{type(self).__name__}"
        )

    def tempered(self, output: Tensor, temperature: Tensor | float) -> Tensor:
        """The output of this likelihood at ``temperature``, for classification.

        Temperature scaling (:class:`~pyrolite_bnn.TemperatureScaling`)
        divides the logits by ``temperature``, so class probabilities become
        ``softmax(logits / T)``. A likelihood that reads its output as logits,
        as the library's do, returns ``output / temperature``; one that reads
        probabilities overrides this to return the tempered probabilities,
        ``p^(1/T)`` normalised.

        Args:
            output: the network's output.
            temperature: one positive, finite number (or one-element tensor).

        Raises:
            TypeError: if ``temperature`` is not one number, or for a likelihood
                that is not a classification one (dividing a regression
                output by ``T`` would move its mean; scale a regression
                likelihood's variance with
                :class:`~pyrolite_bnn.VarianceScaling` instead).
            ValueError: if it is not positive and finite.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> bnn.Categorical().tempered(torch.tensor([2.0, 4.0]), torch.tensor(2.0))
            tensor([1., 2.])
        """
        if not self.is_classification:
            raise TypeError(
                f"temperature scaling needs a classification likelihood, not "
                f"{type(self).__name__}; use VarianceScaling for a regression one"
            )
        return output / check_temperature(temperature, output)

    def moments(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``y`` per particle, ``(S, B, ...)`` each.

        Implementations compute them in at least ``float32``
        (:func:`full_precision` of the output), as the library's do.

        Raises:
            AttributeError: for a likelihood that is not a regression one.
        """
        raise AttributeError(
            f"regression summaries need a regression likelihood, not "
            f"{type(self).__name__}"
        )

    def predictive_mean(self, output: Tensor) -> Tensor:
        """Mean of the predictive mixture over particles, ``(B, ...)``.

        The particle average of the :meth:`moments` means (of the
        :meth:`class_probs` for classification).

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> bnn.Normal(scale=1.0).predictive_mean(torch.ones(4, 3, 1))
            tensor([1., 1., 1.])
            >>> bnn.Categorical().predictive_mean(torch.zeros(4, 3, 2))[0]
            tensor([0.5000, 0.5000])
        """
        return self.moments(output)[0].mean(0)

    def mixture_variances(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """Aleatoric and epistemic variance of the mixture over particles.

        ``mean_s sigma_s^2`` and ``var_s mu_s`` of the :meth:`moments`,
        ``(B, ...)`` each; their sum is the mixture's variance (the law of
        total variance). The epistemic variance is ``inf`` where the
        particles' mean is infinite (not ``inf - inf = NaN``).

        Raises:
            AttributeError: for a likelihood that is not a regression one.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> out = torch.tensor([[0.0], [2.0]])  # 2 particles, 1 example
            >>> bnn.Normal(scale=1.0).mixture_variances(out)
            (tensor([1.]), tensor([1.]))
        """
        return _mixture_variances(*self.moments(output))

    def quantile(self, output: Tensor, q: float) -> Tensor:
        """Quantile ``q`` of the predictive mixture over particles, ``(B, ...)``.

        Raises:
            NotImplementedError: for likelihoods whose mixture CDF is not
                implemented (classification).
            TypeError: if ``q`` is not one number (where implemented).
            ValueError: if ``q`` is not in ``(0, 1)`` (where implemented).
        """
        raise NotImplementedError(
            "predictive intervals are implemented for the regression likelihoods "
            "(Normal, HeteroscedasticNormal, StudentT, Poisson), not "
            f"{type(self).__name__}"
        )

    def probabilities_as_logits_hint(self, output: Tensor) -> str:
        """Why ``output`` looks like probabilities where logits are read, or ``""``.

        The classification likelihoods read logits; a network ending in
        ``nn.Softmax`` or ``nn.Sigmoid`` (a converted torch classifier) has
        its probabilities squashed again, silently: a final Sigmoid confines
        ``Bernoulli``'s probabilities to ``(0.5, 0.731)``. Regression
        likelihoods have nothing to say.
        """
        return ""

    def warn_probabilities_as_logits(self, output: Tensor) -> None:
        """Warn with :meth:`probabilities_as_logits_hint`, if it has one."""
        if output.numel() and not output.is_meta:
            hint = self.probabilities_as_logits_hint(output.detach())
            if hint:
                warn_at_caller(hint)

    def check_target_type(self, target: object) -> None:
        """Refuse a target that is not a tensor (a NumPy array, a list).

        Raises:
            TypeError: naming the likelihood and the target's type.
        """
        if not isinstance(target, Tensor):
            named = getattr(self, "base", self)  # a calibrated likelihood: its base
            raise TypeError(
                f"{type(named).__name__} targets must be a torch.Tensor, got "
                f"{type(target).__name__} (convert with torch.as_tensor)"
            )

    def _checked(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        self.check_target_type(target)
        if target.device != output.device:
            # torch's gather reads a ``meta`` index without an error: a
            # Categorical loss of uninitialised memory (1e17, 0.46, 1e36).
            raise ValueError(
                f"{type(self).__name__}: the targets are on {target.device} and "
                f"the network output on {output.device}; move the targets "
                f"(target.to({str(output.device)!r}))"
            )
        self.check_output(output)
        if is_validation_enabled():
            self.check_target(output, target)
        # Log-densities in at least float32 (see the module docstring); the
        # checks above read the output as the network made it.
        return self.align(full_precision(output), target)


class _ClassificationLikelihood(PredictiveDistribution):
    """A likelihood whose per-particle output is a distribution over classes."""

    is_classification: ClassVar[bool] = True

    def predictive_mean(self, output: Tensor) -> Tensor:
        """Predictive class probabilities ``(B, ..., C)`` (mean over particles)."""
        return self.class_probs(output).mean(0)

    # The autograd node of the operation that squashes logits into what this
    # likelihood would read as probabilities, and the hint that names it.
    _squashing_node: ClassVar[str] = ""
    _squashed_hint: ClassVar[str] = ""

    def reads_logits(self) -> bool:
        """Whether this likelihood reads its outputs as logits, as the library's.

        ``False`` for a subclass that redefines :meth:`distribution` or
        :meth:`class_probs` (probabilities as input, say): no hint about
        probabilities applies to it.
        """
        for cls in type(self).__mro__:
            if cls.__module__ == __name__:  # the first library class
                mine = type(self)
                return mine.distribution is getattr(
                    cls, "distribution", None
                ) and mine.class_probs is getattr(cls, "class_probs", None)
        return True

    def warn_probabilities_as_logits_once(self, output: Tensor) -> None:
        """Warn on the first outputs checked if the network squashed its logits.

        Called from :meth:`check_target`, so that training with the loss warns
        on its first batch. A network at initialisation gives outputs close
        to one shared value, which may well lie in ``[0, 1]`` (pixel inputs:
        8 to 17 of 40 seeds): the values cannot tell, the autograd graph can
        (a final ``nn.Sigmoid``, ``nn.Softmax``).
        """
        if self.__dict__.get("_outputs_checked", False) or output.grad_fn is None:
            return  # checked, or no graph to read (a no_grad evaluation) yet
        object.__setattr__(self, "_outputs_checked", True)
        if (
            self._squashing_node
            and _last_operation(output) == self._squashing_node
            and self.reads_logits()
        ):
            warn_at_caller(self._squashed_hint)


# Autograd nodes that only move, pick or cast values: the last operation of a
# network is looked up past them (the particle unfolding reshapes outputs).
_LAYOUT_NODES = frozenset(
    {
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "PermuteBackward0",
        "TransposeBackward0",
        "UnsqueezeBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "CloneBackward0",
        "ExpandBackward0",
        "SelectBackward0",
        "SliceBackward0",
        "IndexBackward0",
        "ToCopyBackward0",
    }
)


def _last_operation(output: Tensor) -> str:
    """The autograd node of the last operation that made ``output``, past reshapes.

    ``""`` without a graph (no gradients recorded).
    """
    node = output.grad_fn
    for _ in range(16):
        if node is None:
            return ""
        name = type(node).__name__
        if name not in _LAYOUT_NODES:
            return name
        node = next((n for n, _ in node.next_functions if n is not None), None)
    return ""


class Categorical(_ClassificationLikelihood):
    """Classification: the network outputs logits ``(S, B, C)``.

    Targets are integer class labels ``(B,)`` in ``[0, C)``, or ``(B, ...)``
    for logits ``(S, B, ..., C)`` (one label per token or pixel).

    Args:
        ignore_index: a label value that marks unobserved positions (torch's
            ``cross_entropy(..., ignore_index=-100)``, the padding of tagged
            sequences; 255, the void pixels of PASCAL VOC and Cityscapes
            segmentation masks): they add nothing to the log-likelihood, here
            and under Pyro's ELBOs. ``None`` (the default): every label must
            be a class, and labels outside the classes are refused naming
            this option.
            Metrics take the kept positions: ``keep = y != -100``, then
            ``bnn.metrics.accuracy(pred.probs[keep], y[keep])``.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> bnn.Categorical()(torch.zeros(4, 3, 5)).batch_shape
        torch.Size([4, 3])
        >>> labels = torch.tensor([[0, 1, -100]])  # a sequence padded by one
        >>> bnn.Categorical(ignore_index=-100).log_likelihood(
        ...     torch.zeros(1, 1, 3, 2), labels
        ... )
        tensor([[-1.3863]])
    """

    # A class default: Categorical objects pickled before the option existed.
    _ignore_index: int | None = None
    _squashing_node = "SoftmaxBackward0"
    _squashed_hint = (
        "the network's outputs are rows of probabilities (a final nn.Softmax?), "
        "but Categorical reads logits and takes the softmax itself: remove the "
        "Softmax (or end with nn.LogSoftmax)"
    )

    def __init__(self, ignore_index: int | None = None) -> None:
        super().__init__()
        if ignore_index is not None:
            ignore_index = check_integer(ignore_index, "Categorical ignore_index")
            if type(self).distribution is not Categorical.distribution:
                raise NotImplementedError(
                    f"{type(self).__name__} redefines distribution(): ignore_index "
                    "applies to Categorical's own logits only"
                )
        self._ignore_index = ignore_index

    @property
    def ignore_index(self) -> int | None:
        """The label value of unobserved positions (fixed at construction).

        Read-only: a compiled loss keys its graphs on the likelihood's class,
        and a value changed later would be ignored by the graphs built before.
        """
        return self._ignore_index

    def extra_repr(self) -> str:
        """The ignored label, if any."""
        return "" if self.ignore_index is None else f"ignore_index={self.ignore_index}"

    def observed(self, target: Tensor) -> Tensor | None:
        """Where ``target`` holds a label (not ``ignore_index``); ``None``: all."""
        return None if self.ignore_index is None else target != self.ignore_index

    def align(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Class dimension last; labels ``(B, ...)`` need no alignment.

        Labels of another shape or a non-integer dtype are refused, validation
        on or off (these checks need no synchronisation; only the range of the
        labels is read from the device, by :meth:`check_target`): labels
        ``(B, 1)`` against per-token logits were broadcast over the tokens.
        """
        self.check_label_layout(output, target)
        return output, target

    def check_output(self, output: Tensor) -> None:
        """Logits ``(S, B, ..., C)``: a class dimension after the batch."""
        if output.dim() < 3:
            raise ValueError(
                "Categorical expects logits of shape (S, B, classes), got "
                f"{_shape(output)}"
            )
        if output.shape[-1] < 2:
            raise ValueError(
                "Categorical needs two or more classes, got logits of shape "
                f"{_shape(output)} (one class: every log-likelihood is 0). For a "
                "binary model with one logit per example use bnn.Bernoulli()"
            )

    def check_target(self, output: Tensor, target: Tensor) -> None:
        """Labels must be integers in ``[0, C)`` of shape ``(B, ...)``.

        Labels outside the classes are refused naming their values; without
        an ``ignore_index`` the message names the one that would leave them
        out.
        """
        self.check_output(output)
        self.check_label_layout(output, target)
        classes = output.shape[-1]
        keep = self.observed(target)
        if keep is not None:
            target = target[keep]
        # Values read only where they can be (not under vmap).
        if target.numel() and not readable_all((target >= 0) & (target < classes)):
            low, high = torch.aminmax(target)
            outside = labels_outside(target, classes)
            ignored = (
                ""
                if self.ignore_index is None
                else f" (or the ignore_index {self.ignore_index})"
            )
            raise ValueError(
                f"Categorical: labels must be in [0, {classes}){ignored}, got "
                f"range [{int(low)}, {int(high)}] ({outside_labels_note(outside)})"
                + (
                    ignore_index_hint(outside, classes, int(low))
                    if self.ignore_index is None
                    else ""
                )
            )
        self.warn_probabilities_as_logits_once(output)

    def check_label_layout(self, output: Tensor, target: Tensor) -> None:
        """Refuse labels that are not integers of shape ``(B, ...)``.

        The checks of :meth:`check_target` that read no label values, run by
        :meth:`align` whether validation is on or not.

        Raises:
            ValueError: naming the dtype, or the expected and given shapes.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> logits, labels = torch.zeros(4, 2, 5, 3), torch.zeros(2, 1).long()
            >>> try:
            ...     bnn.Categorical().check_label_layout(logits, labels)
            ... except ValueError as error:
            ...     print(str(error).split(" for ")[0])
            Categorical: expected targets of shape (2, 5)
        """
        if target.is_floating_point() or target.dtype == torch.bool:
            soft = target.is_floating_point() and tuple(target.shape) == tuple(
                output.shape[1:]
            )
            raise ValueError(
                "Categorical targets must be integer class labels, got dtype "
                f"{target.dtype}"
                + (
                    ": class probabilities (soft or one-hot targets, which "
                    "torch's cross_entropy takes) are not read; for one-hot "
                    "targets pass target.argmax(-1)"
                    if soft
                    else ""
                )
            )
        if tuple(target.shape) != tuple(output.shape[1:-1]):
            raise ValueError(
                f"Categorical: expected targets of shape {tuple(output.shape[1:-1])} "
                f"for logits {_shape(output)}, got {_shape(target)}"
                + channels_first_hint(output, target)
                + batch_last_hint(output, target)
            )

    def probabilities_as_logits_hint(self, output: Tensor) -> str:
        """A hint when every row of ``output`` is a probability vector.

        Rows rounded to their dtype sum to 1 within a few roundings. None for
        a subclass that reads its outputs its own way (:meth:`reads_logits`).
        """
        if not self.reads_logits():
            return ""
        tolerance = max(1e-4, 4 * torch.finfo(output.dtype).eps)
        if not bool((output >= 0).all()):
            return ""
        if not bool(((output.float().sum(-1) - 1).abs() < tolerance).all()):
            return ""
        return self._squashed_hint

    def log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
        """``log softmax(output)[target]`` per particle and example, ``(S, B)``.

        The log density of :meth:`distribution` (summed over any dimensions
        after ``B``), without building the distribution object: two ops
        instead of its normalisation and argument handling. A subclass that
        redefines :meth:`distribution` (probabilities as input), or only
        :meth:`position_log_likelihood` (a weight per label), keeps the
        general path.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> logits, labels = torch.zeros(2, 3, 4), torch.zeros(3).long()
            >>> bnn.Categorical().log_likelihood(logits, labels)
            tensor([[-1.3863, -1.3863, -1.3863],
                    [-1.3863, -1.3863, -1.3863]])
        """
        own_logits = type(self).distribution is Categorical.distribution
        if not own_logits or per_position_only(self):
            return super().log_likelihood(output, target)
        log_p = self._label_log_densities(*self._checked(output, target))
        return _summed_over_positions(log_p)

    def position_log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
        """``log softmax(output)[target]`` per particle and label, ``(S, B, ...)``.

        0 where the label is ``ignore_index``. A subclass that redefines
        :meth:`distribution` keeps the general path.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> labels = torch.tensor([[0, 1, -100]])  # a sequence padded by one
            >>> bnn.Categorical(ignore_index=-100).position_log_likelihood(
            ...     torch.zeros(1, 1, 3, 2), labels
            ... )
            tensor([[[-0.6931, -0.6931,  0.0000]]])
        """
        if type(self).distribution is not Categorical.distribution:
            return super().position_log_likelihood(output, target)
        return self._label_log_densities(*self._checked(output, target))

    def _label_log_densities(self, output: Tensor, target: Tensor) -> Tensor:
        """``log softmax(output)[target]`` of aligned logits and labels (0: ignored)."""
        keep = self.observed(target)
        labels = target if keep is None else target.masked_fill(~keep, 0)
        index = labels.long().unsqueeze(-1).expand(*output.shape[:-1], 1)
        log_p = output.log_softmax(-1).gather(-1, index).squeeze(-1)
        if keep is not None:
            log_p = log_p.masked_fill(~keep, 0.0)
        return log_p

    def distribution(self, output: Tensor) -> TorchDistributionMixin:
        """``Categorical(logits=output)``."""
        self.check_output(output)
        result: TorchDistributionMixin = dist.Categorical(logits=output).to_event(
            output.dim() - 3
        )
        return result

    def class_probs(self, output: Tensor) -> Tensor:
        """Class probabilities per particle, ``softmax(output)``: ``(S, B, ..., C)``.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> bnn.Categorical().class_probs(torch.zeros(4, 3, 5)).shape
            torch.Size([4, 3, 5])
        """
        self.check_output(output)
        return full_precision(output).softmax(-1)


class Bernoulli(_ClassificationLikelihood):
    """Binary classification: the network outputs logits ``(S, B)`` or ``(S, B, 1)``.

    Targets are 0/1 values ``(B,)`` (any dtype; multi-label ``(B, D)`` too).

    Args:
        missing: ``"nan"`` to read NaN target entries (of a floating dtype)
            as missing: they add nothing to the log-likelihood, in the loss,
            the Pyro model, calibration and ``laplace`` (see
            :meth:`~PredictiveDistribution.observed`); a multi-label target
            with unknown labels. ``None`` (the default): NaN is refused.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> bnn.Bernoulli()(torch.zeros(4, 3)).batch_shape
        torch.Size([4, 3])
        >>> y = torch.tensor([[1.0, float("nan")]])  # the second label unknown
        >>> bnn.Bernoulli(missing="nan").log_likelihood(torch.zeros(1, 1, 2), y)
        tensor([[-0.6931]])
    """

    _squashing_node = "SigmoidBackward0"
    _squashed_hint = (
        "the network's outputs all lie in [0, 1] (a final nn.Sigmoid?), but "
        "Bernoulli reads logits and applies the sigmoid itself, so its "
        "probabilities stay between 0.5 and 0.73: remove the Sigmoid (the network "
        "nn.BCEWithLogitsLoss would train)"
    )

    def __init__(self, *, missing: str | None = None) -> None:
        super().__init__()
        self._take_missing(missing)

    def check_target(self, output: Tensor, target: Tensor) -> None:
        """Observed targets must be 0 or 1."""
        super().check_target(output, target)
        target = self._filled(target)
        if target.numel() and not readable_all((target == 0) | (target == 1)):
            raise ValueError("Bernoulli targets must be 0 or 1")
        self.warn_probabilities_as_logits_once(output)

    def probabilities_as_logits_hint(self, output: Tensor) -> str:
        """A hint when ``output`` holds many values, all in ``[0, 1]``.

        Read in :func:`~pyrolite_bnn.predict`, on a trained network: its
        logits spread over both signs; 16 values all in ``[0, 1]``
        (probabilities between 0.5 and 0.73) are the mark of a final
        ``nn.Sigmoid``. None for a subclass that reads its outputs its own way
        (:meth:`reads_logits`).
        """
        if (
            output.numel() < _PROBABILITY_VALUES
            or not self.reads_logits()
            or not bool(((output >= 0) & (output <= 1)).all())
        ):
            return ""
        return self._squashed_hint

    def align(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Align shapes and convert targets to the output's dtype."""
        output, target = super().align(output, target)
        return output, target.to(output.dtype)

    def distribution(self, output: Tensor) -> TorchDistributionMixin:
        """``Bernoulli(logits=output)``."""
        result: TorchDistributionMixin = dist.Bernoulli(logits=output).to_event(
            output.dim() - 2
        )
        return result

    def class_probs(self, output: Tensor) -> Tensor:
        """Probabilities of classes 0 and 1 per particle, ``(S, B, ..., 2)``.

        A scalar-target output ``(S, B, 1)`` gives ``(S, B, 2)`` (one logit
        per position, ``(S, B, L, 1)``, gives ``(S, B, L, 2)``).

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> bnn.Bernoulli().class_probs(torch.zeros(4, 3, 1)).shape
            torch.Size([4, 3, 2])
        """
        self.check_output(output)
        logit = _location(full_precision(output))
        # sigmoid(-x), not 1 - sigmoid(x): the latter rounds to 0 for logits
        # above ~17 in float32, and a confident mistake's NLL then reads 87.
        return torch.stack([torch.sigmoid(-logit), torch.sigmoid(logit)], dim=-1)


# Bernoulli outputs: this many, all in [0, 1], read as probabilities.
_PROBABILITY_VALUES = 16


class _ScaleLikelihood(PredictiveDistribution):
    """A likelihood with one noise scale, learned (``scale=None``) or fixed."""

    def __init__(
        self,
        scale: SupportsFloat | None,
        init_scale: SupportsFloat,
        missing: str | None,
    ) -> None:
        super().__init__()
        self._take_missing(missing)
        self.learned = scale is None
        value = check_real(
            init_scale if scale is None else scale,
            f"{type(self).__name__} {'init_scale' if scale is None else 'scale'}",
        )
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(
                f"{type(self).__name__} noise scale must be a positive float, "
                f"got {value!r}"
            )
        check_normal_number(value, f"{type(self).__name__} noise scale")
        smallest = math.sqrt(torch.finfo(torch.get_default_dtype()).tiny)
        if value < smallest:  # its square, the variance, would underflow
            raise ValueError(
                f"{type(self).__name__} noise scale must be at least {smallest:.3g}, "
                f"whose square (the variance) is a normal "
                f"{torch.get_default_dtype()} number; got {value!r}"
            )
        self._initial_scale = float(value)  # what reset_parameters returns to
        if self.learned:
            raw = inverse_softplus(float(value))
            # the stored (default dtype) number; read on the CPU, as the
            # parameter may be built on the meta device
            self._initial_raw_scale = float(torch.tensor(raw, device="cpu"))
            param = PyroParam(torch.tensor(raw), constraints.real)
            setattr(self, "raw_scale", param)  # noqa: B010
        else:
            self.register_buffer("fixed_scale", torch.tensor(float(value)))

    def reset_parameters(self) -> None:
        """Return the noise scale to the value it was built with.

        As ``torch.nn`` layers re-initialise: after ``to_empty`` of a
        likelihood built on the meta device (uninitialised memory), or to
        start a learned scale again.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> with torch.device("meta"):
            ...     normal = bnn.Normal(init_scale=0.5)
            >>> normal = normal.to_empty(device="cpu")
            >>> normal.reset_parameters()
            >>> round(normal.noise_scale().item(), 6)
            0.5
        """
        if "_initial_scale" not in self.__dict__:  # pickled before it was kept
            raise ValueError(
                f"this {type(self).__name__} was saved before it kept its initial "
                "scale: build a new one to start again"
            )
        with torch.no_grad():
            if self.learned:
                self.raw_scale_unconstrained.fill_(self._initial_raw_scale)
            else:
                self.fixed_scale.fill_(self._initial_scale)

    def scale_parameter_names(self) -> tuple[str, ...]:
        """``("raw_scale_unconstrained",)`` for a learned noise scale, else none.

        Example:
            >>> import pyrolite_bnn as bnn
            >>> bnn.StudentT().scale_parameter_names()
            ('raw_scale_unconstrained',)
            >>> bnn.StudentT(scale=0.1).scale_parameter_names()
            ()
        """
        return ("raw_scale_unconstrained",) if self.learned else ()

    def untrained_parameters(self) -> list[str]:
        """``["raw_scale"]`` while a learned noise scale has never moved."""
        initial = getattr(self, "_initial_raw_scale", None)  # older pickles
        if not self.learned or initial is None:
            return []
        return ["raw_scale"] if float(self.raw_scale.detach()) == initial else []

    def check_target(self, output: Tensor, target: Tensor) -> None:
        """Targets must be real numbers (not ``bool`` or complex), finite.

        On the first targets a learned scale sees, the spread of the observed
        ones is compared with the scale: see :meth:`warn_unscaled_targets`.
        """
        super().check_target(output, target)
        _check_real_target(self, target)
        self.warn_unscaled_targets(self._observed_values(target))

    def warn_unscaled_targets(self, target: Tensor) -> None:
        """Warn once if a learned scale starts far from the targets' spread.

        Checked on the first targets of two or more values while the scale is
        at its starting value (not for one trained or loaded from a
        checkpoint: a good fit leaves far less noise than spread), in either
        direction. The scale is ``softplus`` of a raw parameter that Adam
        moves by at most about the learning rate ``lr`` per step: below 1 it
        changes by about a factor ``exp(lr)`` per step, above 1 by about
        ``lr``.

        * a spread over 10 times the scale *and* over 10 (targets not
          standardised): the scale must grow through the linear regime,
          from 1.0 towards a spread of 77 (scikit-learn's diabetes targets
          in their units) about 76,000 steps at ``fit``'s default learning
          rate 1e-3 (measured: 5.7 after 10,000 steps, 20.7 after 30,000);
          trained as the quick start trains, the 95 % intervals covered 6 %
          of the test targets, silently. An ``init_scale`` far below the
          spread of standardised targets is the noise level the user
          expects, as the docs recommend, and is not warned about (targets
          of spread 1 and noise 1e-5 started at 1e-5 learn 1.2e-5, the
          ELBO's optimum);
        * a spread under a tenth of the scale (read from four or more
          values; constant targets have none), whatever the start, as the
          noise cannot exceed the spread: from 1 to 0.01 takes about 5,100
          steps at ``lr = 1e-3``, and until it nears the spread the intervals
          are far too wide and the data term too weak to move the weights
          (targets of amplitude 0.03, spread 0.02: R^2 0.16 after 4,000
          steps; of spread 1e-8: a scale of 0.65 after 600 steps, intervals
          3.5e8 times too wide).

        Example:
            >>> import warnings, torch, pyrolite_bnn as bnn
            >>> y = torch.randn(32)
            >>> y = (y - y.mean()) / y.std()  # standardised targets
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("error")
            ...     bnn.Normal(init_scale=1e-5).warn_unscaled_targets(y)
        """
        if not self.learned or self.__dict__.get("_spread_checked", False):
            return
        if target.numel() < 2 or target.is_meta:
            return  # no spread to read yet
        if transforms_active():
            return  # values unreadable under vmap: the next eager call checks
        object.__setattr__(self, "_spread_checked", True)
        if not self.untrained_parameters():  # trained, or restored from training
            return
        spread = float(target.detach().double().std())
        scale = float(self.noise_scale().detach())
        name = type(self).__name__
        if wide_spread(spread, scale):
            change = "grow to their spread, the intervals far too narrow meanwhile"
            remedy = (
                f"start the scale near their noise level (bnn.{name}(init_scale="
                f"...), their spread if unknown). If the noise really is about "
                f"{scale:.3g} (a network that fits them that closely), this start "
                f"is right: standardised targets with init_scale={scale / spread:.3g}"
                " (the scale over their standard deviation) start the same fit "
                "without this warning"
            )
        elif narrow_spread(target, spread, scale):
            change = (
                "shrink to their spread, and until then the intervals are far too "
                "wide and the data barely move the weights"
            )
            remedy = (
                "start the scale near their noise level, at most their spread "
                f"(bnn.{name}(init_scale=...))"
            )
        else:
            return
        steps = raw_steps(scale, spread)
        warn_at_caller(
            f"{name}: the targets spread {spread:.3g} (standard deviation) while "
            f"the learned noise scale starts at {scale:.3g}; it is softplus of a "
            "raw parameter that Adam moves by at most about the "
            "learning rate lr per step (below 1 the scale changes by about a "
            "factor exp(lr) per step, above 1 by about lr), so it takes about "
            f"{steps:.3g}/lr steps ({steps / 1e-3:,.0f} at lr 1e-3) to {change}. "
            f"{STANDARDISE}, or {remedy}"
        )

    def noise_scale(self) -> Tensor:
        """Scale of the observation noise (a standard deviation for ``Normal``).

        A learned scale comes with its gradient graph: read its value with
        ``.item()`` under ``torch.no_grad()`` (the repr shows it too).

        Raises:
            ValueError: after ``to_empty``, while the scale (or ``df``) holds
                no values (:meth:`check_written`).
        """
        self.check_written()
        if self.learned:
            return F.softplus(self.raw_scale)
        return self.fixed_scale  # type: ignore[no-any-return]

    def extra_repr(self) -> str:
        """Learned (with its value now) or fixed scale; the missing-entry marker."""
        missing = super().extra_repr()
        return ", ".join(part for part in (self._scale_repr(), missing) if part)

    def _scale_repr(self) -> str:
        """Learned (with its value now) or fixed scale."""
        if not self.learned:
            if self.fixed_scale.is_meta:
                return "scale=?"
            return f"scale={float(self.fixed_scale):g}"
        raw = self.raw_scale
        if raw.device.type == "meta" or raw.numel() != 1:
            return "scale=learned"
        with torch.no_grad():
            return f"scale=learned, now {float(F.softplus(raw)):.3g}"


class Normal(_ScaleLikelihood):
    """Regression with homoscedastic Gaussian noise: ``y ~ N(output, scale^2)``.

    The network outputs the mean, ``(S, B)``/``(S, B, 1)`` for scalar targets or
    ``(S, B, D)`` for targets ``(B, D)``; one noise scale serves all ``D``
    outputs (standardise them, or use :class:`HeteroscedasticNormal`, when
    their noise levels differ).

    Args:
        scale: ``None`` to learn the noise standard deviation (a parameter of
            this module: give ``loss_fn.parameters()`` to the optimizer too, or
            use :func:`~pyrolite_bnn.fit`), or a positive float to fix it.
        init_scale: starting value of a learned scale.
        missing: ``"nan"`` to read NaN target entries as missing (an output
            of a multi-output target not measured for some examples): they
            add nothing to the log-likelihood, in the loss, the Pyro model,
            calibration and ``laplace``, which equal those of the data
            without them (see :meth:`~PredictiveDistribution.observed`).
            ``None`` (the default): NaN is refused.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> likelihood = bnn.Normal(scale=0.5)
        >>> likelihood(torch.zeros(4, 3)).batch_shape
        torch.Size([4, 3])
        >>> float(likelihood.noise_scale())
        0.5
        >>> bnn.Normal(missing="nan")
        Normal(scale=learned, now 1, missing='nan')
    """

    def __init__(
        self,
        scale: SupportsFloat | None = None,
        init_scale: SupportsFloat = 1.0,
        *,
        missing: str | None = None,
    ) -> None:
        super().__init__(scale, init_scale, missing)

    def distribution(self, output: Tensor) -> TorchDistributionMixin:
        """``Normal(output, scale)``."""
        scale = self.noise_scale().to(output)
        result: TorchDistributionMixin = dist.Normal(output, scale).to_event(
            output.dim() - 2
        )
        return result

    def moments(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """Per-particle mean and noise variance of ``y``, ``(S, B, ...)`` each."""
        self.check_output(output)
        loc = _location(full_precision(output))
        return loc, (self.noise_scale().to(loc) ** 2).expand_as(loc)

    def quantile(self, output: Tensor, q: float) -> Tensor:
        """Exact quantile ``q`` of the Gaussian mixture over particles, ``(B, ...)``.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> median = bnn.Normal(scale=1.0).quantile(torch.zeros(4, 3), 0.5)
            >>> median.shape, bool(median.abs().max() < 1e-6)
            (torch.Size([3]), True)
        """
        return gaussian_mixture_quantile(*self.moments(output), q)


class StudentT(_ScaleLikelihood):
    """Robust regression: ``y ~ StudentT(df, loc=output, scale)``.

    Heavy-tailed noise for data with outliers. Shapes as :class:`Normal`.
    Prediction gives the mean and variance where they exist, with the
    convention of :class:`torch.distributions.StudentT`: for ``df <= 1`` the
    mean and the variance are NaN, for ``1 < df <= 2`` the variance is
    ``inf``. Quantiles and intervals are those of the Student-t mixture,
    exact (see :meth:`quantile`), for every ``df``.

    Args:
        df: degrees of freedom (fixed, positive).
        scale: ``None`` to learn the noise scale, or a positive float.
        init_scale: starting value of a learned scale.
        missing: ``"nan"`` to read NaN target entries as missing, as
            :class:`Normal`'s; ``None`` (the default): NaN is refused.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> bnn.StudentT(df=3.0)(torch.zeros(4, 3)).batch_shape
        torch.Size([4, 3])
    """

    df: Tensor

    def __init__(
        self,
        df: SupportsFloat = 4.0,
        scale: SupportsFloat | None = None,
        init_scale: SupportsFloat = 1.0,
        *,
        missing: str | None = None,
    ) -> None:
        super().__init__(scale, init_scale, missing)
        df = check_real(df, "StudentT df")
        if not (df > 0 and math.isfinite(df)):
            raise ValueError(f"StudentT df must be a positive float, got {df!r}")
        self._initial_df = float(df)
        self.register_buffer("df", torch.tensor(float(df)))

    def reset_parameters(self) -> None:
        """Return the noise scale and ``df`` to the values they were built with."""
        super().reset_parameters()
        with torch.no_grad():
            self.df.fill_(self._initial_df)

    def distribution(self, output: Tensor) -> TorchDistributionMixin:
        """``StudentT(df, output, scale)``."""
        scale = self.noise_scale().to(output)
        result: TorchDistributionMixin = dist.StudentT(
            self.df.to(output), output, scale
        ).to_event(output.dim() - 2)
        return result

    def moments(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """Per-particle mean and noise variance, ``(S, B, ...)`` each.

        Those of :class:`torch.distributions.StudentT`: the mean is NaN for
        ``df <= 1``; the variance is NaN for ``df <= 1`` and ``inf`` for
        ``1 < df <= 2``.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> bnn.StudentT(df=1.0, scale=1.0).moments(torch.zeros(1, 2))
            (tensor([[nan, nan]]), tensor([[nan, nan]]))
        """
        self.check_output(output)
        loc = _location(full_precision(output))
        noise = dist.StudentT(
            self.df.to(loc), loc, self.noise_scale().to(loc), validate_args=False
        )
        return noise.mean, noise.variance

    def quantile(self, output: Tensor, q: float) -> Tensor:
        """Exact quantile ``q`` of the Student-t mixture over particles, ``(B, ...)``.

        Safeguarded Halley steps on the mixture's tail probabilities (see
        :func:`~.mixture_quantiles.student_t_mixture_quantile`).

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> cauchy = bnn.StudentT(df=1.0, scale=1.0)
            >>> cauchy.quantile(torch.zeros(4, 3), 0.75)  # tan(pi / 4)
            tensor([1., 1., 1.])
        """
        self.check_output(output)
        loc = _location(full_precision(output))
        return student_t_mixture_quantile(
            loc, self.noise_scale().to(loc), float(self.df), q
        )


class Poisson(PredictiveDistribution):
    """Count regression: the network outputs the log rate, ``y ~ Poisson(exp(output))``.

    Output ``(S, B)``/``(S, B, 1)`` for targets ``(B,)`` of non-negative integer
    counts (any dtype).

    Args:
        missing: ``"nan"`` to read NaN target entries (of a floating dtype)
            as missing, as :class:`Normal`'s; ``None`` (the default): NaN is
            refused.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> bnn.Poisson()(torch.zeros(4, 3)).batch_shape
        torch.Size([4, 3])
    """

    def __init__(self, *, missing: str | None = None) -> None:
        super().__init__()
        self._take_missing(missing)

    def check_target(self, output: Tensor, target: Tensor) -> None:
        """Observed counts must be non-negative integers (of a real dtype)."""
        super().check_target(output, target)
        if target.is_complex():
            raise ValueError(
                "Poisson targets must be non-negative integer counts of a real "
                f"dtype, got dtype {target.dtype}"
            )
        target = self._filled(target)
        if target.numel() and not readable_all(
            (target >= 0) & (target == torch.round(target.double()))
        ):
            raise ValueError("Poisson targets must be non-negative integer counts")

    def align(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Align shapes and convert counts to the output's dtype."""
        output, target = super().align(output, target)
        return output, target.to(output.dtype)

    def distribution(self, output: Tensor) -> TorchDistributionMixin:
        """``Poisson(rate=exp(output))``, its density taken from the log rate."""
        poisson = LogRatePoisson(output)
        result: TorchDistributionMixin = poisson.to_event(  # type: ignore[no-untyped-call]
            output.dim() - 2
        )
        return result

    def moments(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """Per-particle mean and variance, both the rate."""
        self.check_output(output)
        rate = _location(full_precision(output)).exp()
        return rate, rate

    def _wide_rates(self, output: Tensor) -> Tensor:
        """The particles' rates in ``float64``, for the mixture's summaries.

        A ``float32`` rate overflows above a log rate of 88.7: one such
        particle made every quantile and the mean infinite where they are
        representable, and the variance NaN (``inf - inf``).
        """
        self.check_output(output)
        return _location(output).double().exp()

    def predictive_mean(self, output: Tensor) -> Tensor:
        """Mean of the mixture over particles, ``(B, ...)``, from ``float64`` rates.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> bnn.Poisson().predictive_mean(torch.tensor([[5.0], [89.0]]))
            tensor([2.2448e+38])
        """
        mean = self._wide_rates(output).mean(0)
        return mean.to(summary_dtype(output.dtype))

    def mixture_variances(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """Aleatoric and epistemic variance of the mixture, from ``float64`` rates.

        Rounded to the outputs' precision at the end: ``inf`` only where the
        value is beyond it.
        """
        rate = self._wide_rates(output)
        dtype = summary_dtype(output.dtype)
        aleatoric, epistemic = _mixture_variances(rate, rate)
        return aleatoric.to(dtype), epistemic.to(dtype)

    def quantile(self, output: Tensor, q: float) -> Tensor:
        """Exact quantile ``q`` of the Poisson mixture over particles, ``(B, ...)``.

        A count: the smallest ``k`` with mixture ``P(Y <= k) >= q`` (see
        :func:`poisson_mixture_quantile`), from ``float64`` rates.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> bnn.Poisson().quantile(torch.zeros(4, 3), 0.9)  # rate 1
            tensor([2., 2., 2.])
        """
        rate = self._wide_rates(output)
        return poisson_mixture_quantile(rate, q).to(summary_dtype(output.dtype))


class HeteroscedasticNormal(PredictiveDistribution):
    """Regression where the network predicts mean and noise scale per input.

    The last output dimension holds ``(mean, raw_scale)``; the noise standard
    deviation is ``softplus(raw_scale) + min_scale``. Output ``(S, B, 2)`` for
    scalar targets ``(B,)``, ``(S, B, D, 2)`` for targets ``(B, D)``.

    Whatever ``min_scale``, the standard deviation is at least the square
    root of the smallest normal number of the computation's dtype (``1.1e-19``
    in ``float32``, ``1.5e-154`` in ``float64``), whose square, the variance,
    is a normal number, as for :class:`Normal`'s fixed scale. With
    ``min_scale=0`` a raw scale below about -44 (``float32``) made the
    variance underflow to 0 (``softplus`` itself underflows below -104) and
    the log-likelihood NaN; at the floor it is finite for every target.

    Args:
        min_scale: lower bound of the predicted standard deviation, a finite
            number ``>= 0`` (0: ``softplus(raw_scale)`` alone, down to the
            floor above).
        missing: ``"nan"`` to read NaN target entries as missing, as
            :class:`Normal`'s; ``None`` (the default): NaN is refused.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> bnn.HeteroscedasticNormal()(torch.zeros(4, 3, 2)).batch_shape
        torch.Size([4, 3])
    """

    def __init__(self, min_scale: float = 1e-6, *, missing: str | None = None) -> None:
        super().__init__()
        self._take_missing(missing)
        value = check_real(min_scale, "HeteroscedasticNormal min_scale")
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(
                "HeteroscedasticNormal min_scale must be a finite number >= 0, got "
                f"{min_scale!r}"
            )
        check_normal_number(value, "HeteroscedasticNormal min_scale")
        self.min_scale = value

    def align(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Match targets ``(B, ...)`` (or ``(B, 1)`` for a scalar) with the mean.

        Other shapes are refused, validation on or off; where the targets fit
        an output with the pair in dimension 2 (channels-first ``(S, B, 2, H,
        W)`` with ``W == 2``, which the output check cannot tell), with the
        ``movedim`` that moves it last.
        """
        self.check_batch_size(output, target)
        mean_shape = tuple(output.shape[2:-1])
        if tuple(target.shape[1:]) == mean_shape:
            return output, target
        if tuple(target.shape[1:]) == (*mean_shape, 1):
            return output, target.squeeze(-1)
        raise ValueError(
            f"HeteroscedasticNormal: targets {_shape(target)} do not match output "
            f"{_shape(output)}; expected targets of shape "
            f"{(output.shape[1], *mean_shape)}"
            + pair_first_hint(output, 2, "The (mean, raw scale) pair", target)
        )

    def check_target(self, output: Tensor, target: Tensor) -> None:
        """Targets must be real numbers (not ``bool`` or complex), finite.

        On the first targets this likelihood sees, the spread of the observed
        ones is compared with the network's predictions: see
        :meth:`warn_unscaled_targets`.
        """
        super().check_target(output, target)
        _check_real_target(self, target)
        self.warn_unscaled_targets(output, self._observed_values(target))

    def warn_unscaled_targets(self, output: Tensor, target: Tensor) -> None:
        """Warn once if the network's predictions are far off the targets' scale.

        The noise scale is predicted, ``softplus(raw) + min_scale``: it meets
        the learned scale's two problems (see ``Normal``'s
        ``warn_unscaled_targets``) through the network's last layer, whose
        weights and bias Adam moves by about the learning rate per step.
        Compared on the first targets of two or more values this likelihood
        scores against an output with gradients (a training step, not an
        evaluation, where a trained network's predictions may be what they
        are for reasons of its own), with the median predicted scale of that
        output:

        * a spread over 10 times both the predicted scales and the spread of
          the predicted means (a network trained on these targets predicts
          means that spread as they do), and over 10 (targets not
          standardised; as for ``Normal``, standardised ones are not warned
          about in this direction): targets of spread 1e6 met scales and
          means near 1, whose last layer moves by about the learning rate
          per step, silently;
        * a spread under a tenth of the predicted scales (read from four or
          more values): the raw scale must fall by about the logarithm of
          their ratio, and ``min_scale`` (default ``1e-6``) bounds the
          scale from below: targets that spread less than ``10 *
          min_scale`` cannot get intervals as narrow as their noise.
        """
        if self.__dict__.get("_spread_checked", False) or not output.requires_grad:
            return
        if target.numel() < 2 or target.is_meta or output.is_meta:
            return  # no spread to read yet
        if transforms_active():
            return  # values unreadable under vmap: the next eager call checks
        object.__setattr__(self, "_spread_checked", True)
        loc, scale = self.loc_scale(full_precision(output.detach()))
        spread = float(target.detach().double().std())
        predicted = float(scale.median())
        means = float(loc.mean(0).double().std()) if loc.shape[1] > 1 else 0.0
        start = (
            f"HeteroscedasticNormal: the targets spread {spread:.3g} (standard "
            f"deviation) while the network's predicted noise scales are about "
            f"{predicted:.3g}"
        )
        if wide_spread(spread, max(predicted, means)):
            warn_at_caller(
                f"{start} and its predicted means spread {means:.3g}: the last "
                "layer's weights and bias move by about the learning rate per step, "
                "so the predictions take a very long time to reach the targets' "
                f"scale, the intervals far too narrow meanwhile. {STANDARDISE}"
            )
        elif narrow_spread(target, spread, predicted):
            floor = (
                f"; min_scale={self.min_scale:g} keeps every predicted scale above "
                "a tenth of their spread: lower it"
                if self.min_scale * UNSCALED_SPREAD > spread
                else ""
            )
            warn_at_caller(
                f"{start}: they shrink by about a factor exp(-lr) per step (lr the "
                "learning rate), and until they near the spread the intervals are "
                f"far too wide and the data barely move the weights{floor}. "
                f"{STANDARDISE}"
            )

    def check_output(self, output: Tensor) -> None:
        """Outputs ``(S, B, ..., 2)``: the last dimension holds mean and raw scale.

        An output with the pair in dimension 2 (a convolution's channels-first
        ``(S, B, 2, H, W)``) is refused with the ``movedim`` that moves it last.
        """
        if output.dim() < 3 or output.shape[-1] != 2:
            raise ValueError(
                "HeteroscedasticNormal expects output (S, B, ..., 2) holding (mean, "
                f"raw scale), got {_shape(output)}"
                + pair_first_hint(output, 2, "The (mean, raw scale) pair")
            )

    def distribution(self, output: Tensor) -> TorchDistributionMixin:
        """``Normal(mean, softplus(raw_scale) + min_scale)``."""
        loc, scale = self.loc_scale(output)
        result: TorchDistributionMixin = dist.Normal(loc, scale).to_event(loc.dim() - 2)
        return result

    def moments(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """Per-particle mean and noise variance of ``y``."""
        loc, scale = self.loc_scale(full_precision(output))
        return loc, scale**2

    def quantile(self, output: Tensor, q: float) -> Tensor:
        """Exact quantile ``q`` of the Gaussian mixture over particles, ``(B, ...)``.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> bnn.HeteroscedasticNormal().quantile(torch.zeros(4, 3, 2), 0.9).shape
            torch.Size([3])
        """
        return gaussian_mixture_quantile(*self.moments(output), q)

    def loc_scale(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation from the raw output.

        The standard deviation is at least ``sqrt`` of the smallest normal
        number of the dtype (at least ``float32``'s): its square stays normal.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> _, scale = bnn.HeteroscedasticNormal(0).loc_scale(
            ...     torch.tensor([[[0.0, -200.0]]])
            ... )
            >>> float(scale) ** 2 >= torch.finfo(torch.float32).tiny
            True
        """
        self.check_output(output)
        scale = F.softplus(output[..., 1]) + self.min_scale
        floor = math.sqrt(torch.finfo(summary_dtype(scale.dtype)).tiny)
        return output[..., 0], scale.clamp_min(floor)
