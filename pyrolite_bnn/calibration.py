"""Post-hoc calibration: temperature scaling and variance scaling.

A trained network's predictive can be over- or under-confident. A calibration
has one positive parameter, fitted on held-out validation data by minimising
the negative log-likelihood of the *particle mixture* (the posterior
predictive that :func:`~pyrolite_bnn.predict` summarises) at every target
position: ``-mean_i log mean_s p(y_i | output_s)`` over the examples and,
for outputs with several positions per example (the tokens of a sequence,
the pixels of an image, the entries of a multi-output target), over their
positions, the missing ones left out (the labels
``Categorical(ignore_index=...)`` skips, the NaN entries of a likelihood built
with ``missing="nan"``: see
:meth:`~pyrolite_bnn.PredictiveDistribution.observed`). These are
the per-position predictives that a :class:`~pyrolite_bnn.Prediction`'s
``probs``, intervals and the metrics on them read; the joint density of all
positions of an example, ``log mean_s prod_i p(y_i | output_s)``, would be
dominated by the best particle there and fit a temperature that calibrates
one particle, not the mixture. With one position per example both are the
example's log predictive density. One exception: a
temperature that makes most particles' predictions certain, while the
particles disagree, turns the predictive into the particles' vote shares,
where the validation NLL is nearly flat and its exact minimiser an extreme
value that over-fits the validation set; there the temperature nearest 1
within 0.001 nats per position of the minimum is kept. The particles disagree
where the mixture's validation NLL is more than 0.001 nats per position below
their own mean NLL; one particle (``predict(..., mode="mean")``) or particles
that agree have no vote shares, and get the NLL minimiser.

* :class:`TemperatureScaling` (classification): every particle's logits are
  divided by a temperature ``T`` before the softmax (sigmoid), so the
  predictive probabilities are ``mean_s softmax(logits_s / T)``. ``T > 1``
  softens over-confident predictions. ``T < 1`` sharpens each particle but
  cannot make the mixture more confident than the particles' vote shares:
  under-confidence that comes from the particles disagreeing stays.
* :class:`VarianceScaling` (Gaussian regression): the predictive mixture is
  stretched about its mean by ``sqrt(factor)``: particle means
  ``mean + sqrt(factor) (mu_s - mean)`` and noise variances
  ``factor * sigma_s^2``. The predictive mean is unchanged; the aleatoric,
  epistemic and total variance are multiplied by ``factor`` and every
  interval's half-widths by ``sqrt(factor)``.

``calibration.wrap(predictive)`` returns a likelihood whose per-particle
summaries are the calibrated ones, so every summary of a
:class:`~pyrolite_bnn.Prediction` (probabilities, entropy, mutual information,
moments, intervals) is calibrated consistently:
``bnn.predict(model, x, predictive, calibration=cal)``.

Example:
    >>> import torch, pyrolite_bnn as bnn
    >>> net = bnn.VILinear(3, 4)
    >>> x = torch.randn(50, 3)
    >>> probs = bnn.predict(net, x, bnn.Categorical()).probs
    >>> y = torch.distributions.Categorical(probs).sample()  # labels it explains
    >>> cal = bnn.calibrate(net, x, y, bnn.Categorical(), samples=8)
    >>> type(cal).__name__, cal.temperature.shape
    ('TemperatureScaling', torch.Size([]))
    >>> cal.predict(net, x[:5], bnn.Categorical()).probs.shape
    torch.Size([5, 4])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, ClassVar, SupportsIndex, TypeVar, overload

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import Tensor, nn

from pyrolite_bnn._forward import InputTensor, NetworkInput, network_args
from pyrolite_bnn._likelihoods import as_likelihood, describe_likelihood
from pyrolite_bnn._network import has_sequence_first_layers
from pyrolite_bnn._output_heads import OutputHeads
from pyrolite_bnn._scalar_search import minimise_expanding
from pyrolite_bnn._unwritten_tensors import RefusesUnwrittenTensors
from pyrolite_bnn._validation import (
    check_finite,
    check_normal_number,
    check_positive,
)
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.distributions._precision import full_precision
from pyrolite_bnn.distributions._scoring import scored_positions
from pyrolite_bnn.distributions.predictive import (
    HeteroscedasticNormal,
    Normal,
    PredictiveDistribution,
)
from pyrolite_bnn.loss import batch_first_layout
from pyrolite_bnn.predict import Prediction, PredictMode, predict, warn_untrained

__all__ = ["Calibration", "TemperatureScaling", "VarianceScaling", "calibrate"]

# Search of the log-parameter: from [-7, 7], moved out up to +-30 (factors
# from e^-30 to e^30, about 1e-13 to 1e13) where the minimum is at an edge.
_LOG_BOUND = 7.0
_LOG_LIMIT = 30.0
# A temperature that makes most particles' predictions certain (top
# probability above 1 - _CERTAIN) while they disagree (the mixture's NLL more
# than _NLL_TOLERANCE below the particles' mean NLL) turns the predictive into
# the particles' vote shares, where the validation NLL is nearly flat and its
# exact minimiser an extreme value fitted to the validation set's noise
# (digits: T = 0.002, test NLL 0.163 against 0.108 at T = 0.1, whose
# validation NLL is 0.0006 higher). There, of the temperatures within
# _NLL_TOLERANCE nats per position of the best, the one nearest 1 is kept. One
# particle, or particles that agree, have a sharp minimum: the rule moved their
# T 15-20 % above it (test ECE 1.7x).
_CERTAIN = 1e-3
_NLL_TOLERANCE = 1e-3
_TOWARDS_IDENTITY_POINTS = 141
# An NLL within this relative difference of its value at the upper limit is
# flat towards it: float32 rounding of a mean NLL is a few 1e-7.
_FLAT = 1e-6

_SelfCalibration = TypeVar("_SelfCalibration", bound="Calibration")
_Key = TypeVar("_Key", bound=Hashable)


def _fit_log_parameter(
    objective: Callable[[float], float],
    what: str,
    outputs: Tensor,
    degenerate: Callable[[float], bool] = lambda value: False,
    *,
    positions: int | None = None,
    one_class: str = "",
) -> float:
    """``exp`` of the minimiser of ``objective(log value)``; warns at the limit.

    Where ``degenerate(value)`` says the minimiser lies where the objective is
    nearly flat, the value nearest 1 within ``_NLL_TOLERANCE`` of its NLL.
    The identity (1), with a warning that says why, where nothing can be
    fitted: no target ``positions`` left to fit (every label ignored), an NLL
    that the value does not change, that is infinite wherever the search
    went, or that falls without bound towards 0. A minimiser at (or flat to
    float precision up to) the upper limit warns and is the limit.
    ``one_class``: a note on labels of one class, added to the warnings of
    the two limits.

    Raises:
        ValueError: for network outputs ``(S, N, ...)`` without examples.
    """
    if outputs.dim() < 2 or outputs.shape[1] == 0:
        raise ValueError(
            f"calibration needs validation data: got network outputs of shape "
            f"{tuple(outputs.shape)} (S, N, ...) with no examples"
        )
    count = outputs.shape[1]
    if positions == 0:
        kind = "label" if what == "temperature" else "target"
        warn_at_caller(
            f"calibration: none of the {count} validation example(s) has an "
            f"observed {kind} (the likelihood marks every one missing: its "
            "ignore_index, or NaN with missing='nan'): there is nothing to fit "
            f"the {what} to. The {what} is left at 1 (the identity)",
            UserWarning,
        )
        return 1.0
    # NaN outputs (NaN weights, an input that overflows) made every value fit
    # equally and read as "all predicted exactly"; -inf is a masked logit.
    masked = outputs.nan_to_num(nan=math.nan, posinf=math.inf, neginf=0.0)
    check_finite(masked, "calibration: the network outputs")
    probes = [objective(t) for t in (-_LOG_BOUND, 0.0, _LOG_BOUND)]
    if max(probes) - min(probes) <= 1e-12 * max(1.0, abs(probes[1])):
        # Predictions the parameter does not change (all-equal logits): any
        # value fits equally, and the search would run to its lower limit.
        warn_at_caller(
            f"calibration: the validation NLL of the {count} example(s) is the "
            f"same for every {what} (the predictions do not depend on it, e.g. "
            f"all-equal logits). The {what} is left at 1 (the identity)",
            UserWarning,
        )
        return 1.0
    tried: list[float] = []

    def recorded(log_value: float) -> float:
        tried.append(log_value)
        return objective(log_value)

    log_value, at_limit = minimise_expanding(recorded, _LOG_BOUND, _LOG_LIMIT)
    best = objective(log_value)
    if not math.isfinite(best):
        # An NLL infinite (some example's density 0) across the first interval
        # made its first point the best: the search went down to the lower
        # limit, where it read as "every example predicted right". A grid of
        # the whole range finds where it is finite, if anywhere.
        log_value, at_limit = minimise_expanding(recorded, _LOG_LIMIT, _LOG_LIMIT)
        best = objective(log_value)
    if not math.isfinite(best):
        reason = (
            "some label has probability 0 in every particle (a -inf logit at "
            "its class), whatever the temperature"
            if what == "temperature"
            else "some targets lie so far from the predictions that their "
            f"log-density overflows in {outputs.dtype} (check the targets' "
            "units and the noise scale)"
        )
        warn_at_caller(
            f"calibration: the validation NLL of the {count} example(s) is "
            f"{best} for every {what} the search tried (e^{min(tried):.3g} to "
            f"e^{max(tried):.3g}): {reason}. The {what} is left at 1 (the "
            "identity)",
            UserWarning,
        )
        return 1.0
    flat_from: float | None = None  # where the NLL is flat up to the limit
    # An NLL still falling towards the upper limit by less than float
    # precision is flat there: the search stopped anywhere on the plateau (a
    # temperature of 2.5e6 or 5.4e6 for one classifier: predictions uniform
    # either way), short of the limit, without a warning.
    if (
        not at_limit
        and log_value > 0
        and objective(_LOG_LIMIT) <= best + _FLAT * max(1.0, abs(best))
    ):
        flat_from, log_value, at_limit = math.exp(log_value), _LOG_LIMIT, True
    exact = at_limit and log_value < 0 and best < _NLL_TOLERANCE
    if not exact and degenerate(math.exp(log_value)):
        log_value, at_limit = _nearest_identity(objective, log_value), False
    if at_limit and log_value < 0:
        # The NLL falls without bound towards 0: the validation data are fitted
        # exactly (every example right). Such a fit would make every prediction
        # certain; the identity is the honest answer.
        warn_at_caller(
            f"calibration: no finite {what} fits the {count} validation "
            "example(s): every one is predicted right (classified correctly, or "
            "a regression target met exactly; the validation NLL keeps "
            f"falling as the {what} goes to 0){one_class}. The calibration is "
            "left at 1 (the identity); fit it on a larger validation set",
            UserWarning,
        )
        return 1.0
    value = math.exp(log_value)
    if at_limit:
        hint = (
            "the classifier's predictions are no better than uniform on the "
            "validation data"
            if what == "temperature"
            else "the likelihood's scale is far from the data's (check the "
            "targets' units and the noise scale)"
        )
        flat = (
            ""
            if flat_from is None
            else f" (the validation NLL falls as the {what} grows, and is flat "
            f"to float precision from {flat_from:.3g} on)"
        )
        warn_at_caller(
            f"calibration: the fitted {what} {value:.3g} is at the search limit "
            f"e^{_LOG_LIMIT:g}{flat}: {hint}{one_class}",
            UserWarning,
        )
    return value


def _vote_shares(
    predictive: PredictiveDistribution,
    outputs: Tensor,
    target: Tensor,
    temperature: float,
    observed: Tensor | None,
) -> bool:
    """Whether the mixture at ``temperature`` is the particles' vote shares.

    That is, most particles' predictions are certain and the particles
    disagree: the mixture's NLL per position is more than ``_NLL_TOLERANCE``
    below the mean of the particles' own (equal for one particle, or for
    particles that agree). Only the ``observed`` positions count (``None``:
    all): the logits of padding a ``Categorical(ignore_index=...)`` skips
    moved the temperature.
    """
    scaled = TemperatureScaling(temperature).to(outputs).wrap(predictive)
    with torch.no_grad():
        top = _at_observed(scaled.class_probs(outputs).amax(-1), observed)
        if not bool((top > 1.0 - _CERTAIN).float().mean() > 0.5):
            return False
        log_p = _position_log_likelihoods(scaled, outputs, target, observed)
        particles = -float(log_p.mean()) if log_p.numel() else 0.0
    return particles - _mixture_nll(log_p) > _NLL_TOLERANCE


def _nearest_identity(objective: Callable[[float], float], best: float) -> float:
    """The point of ``[best, 0]`` nearest 0 within ``_NLL_TOLERANCE`` of ``best``'s NLL.

    A grid from the identity (0) towards the minimiser ``best``; the first
    point within the tolerance is kept (``best`` itself at worst).
    """
    threshold = objective(best) + _NLL_TOLERANCE
    for i in range(_TOWARDS_IDENTITY_POINTS):
        t = best * i / (_TOWARDS_IDENTITY_POINTS - 1)
        if objective(t) <= threshold:
            return t
    return best


def _one_class(labels: Tensor) -> str:
    """A note for the warnings if every one of ``labels`` is one class, else ``""``.

    Example:
        >>> _one_class(torch.zeros(3, dtype=torch.long)).split(":")[0]
        '; every one of the 3 validation labels is class 0'
        >>> _one_class(torch.tensor([0, 1]))
        ''
    """
    if labels.numel() < 2 or not bool((labels == labels.reshape(-1)[0]).all()):
        return ""
    return (
        f"; every one of the {labels.numel()} validation labels is class "
        f"{float(labels.reshape(-1)[0]):g}: calibrate on labels of every class"
    )


def _position_log_likelihoods(
    likelihood: PredictiveDistribution,
    outputs: Tensor,
    target: Tensor,
    observed: Tensor | None,
) -> Tensor:
    """``log p(y_i | outputs[s])`` at the ``observed`` target positions, ``(S, K)``.

    ``observed``: a mask of the target positions
    (:meth:`~pyrolite_bnn.PredictiveDistribution.observed`; ``None``: all
    ``K``). A likelihood whose densities are known per example only (a
    user's class redefining ``log_likelihood`` alone) gives one per example,
    its own mask applied by it (:func:`scored_positions`).
    """
    with torch.no_grad():
        log_p = scored_positions(likelihood, outputs, target)
    return _at_observed(log_p, observed)


def _at_observed(values: Tensor, observed: Tensor | None) -> Tensor:
    """``values`` ``(S, ...)`` per target position at the ``observed`` ones, ``(S, K)``.

    The mask is read in the layout of the values (targets ``(N, 1)`` against
    values ``(S, N)``); values per example where the mask has several
    positions per example (a likelihood's own ``log_likelihood``) are all
    kept, as are all values for ``observed=None``.
    """
    if observed is not None and observed.numel() == values[0].numel():
        return values[:, observed.reshape(values.shape[1:])]
    return values.reshape(values.shape[0], -1)


def _mixture_nll(log_p: Tensor) -> float:
    """``-mean_i log mean_s p(y_i | ...)`` of log-likelihoods ``(S, K)``.

    The NLL of the particle mixture per target position; 0 if ``K = 0``.
    """
    if log_p.shape[1] == 0:  # every position ignored: nothing to fit
        return 0.0
    mixture = torch.logsumexp(log_p, 0) - math.log(log_p.shape[0])
    return float(-mixture.mean())


class Calibration(RefusesUnwrittenTensors):
    """Base class of post-hoc calibrations with one positive parameter.

    Subclasses implement :meth:`wrap` and ``_fit`` (the fit of the parameter,
    which :meth:`fit` calls after checking the likelihood). The parameter is a
    buffer: it follows ``.to()`` and is saved in ``state_dict``; after
    ``to_empty`` it is refused by :meth:`wrap` until written (a fit, a
    :meth:`reset_parameters`, a load: :meth:`check_written`). A subclass
    registers it with ``_register_calibration_parameter(name, value)``, which
    keeps the value for :meth:`reset_parameters`.
    """

    def __init__(self) -> None:
        super().__init__()
        # Buffer name -> the value the calibration was built with (resets).
        self._built_values: dict[str, float] = {}

    def _register_calibration_parameter(self, name: str, value: float) -> None:
        """Register the buffer ``name`` holding ``value``, kept for resets."""
        self.register_buffer(name, torch.tensor(value))
        self._built_values[name] = value

    def reset_parameters(self) -> None:
        """Return the parameter to the value the calibration was built with.

        As torch's layers re-initialise: after ``to_empty`` (of a calibration
        built on the ``meta`` device, say), or to undo a fit.

        Raises:
            ValueError: for a calibration that keeps no such value (pickled
                before calibrations kept it, or a subclass that registers its
                parameter itself): fit it or load a ``state_dict`` instead.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> with torch.device("meta"):
            ...     calibration = bnn.TemperatureScaling(2.0)
            >>> calibration = calibration.to_empty(device="cpu")
            >>> calibration.reset_parameters()
            >>> calibration
            TemperatureScaling(temperature=2)
        """
        built = self.__dict__.get("_built_values")
        if not built:
            raise ValueError(
                f"this {type(self).__name__} keeps no value it was built with "
                "(pickled before calibrations kept it, or its parameter was not "
                "registered with _register_calibration_parameter): fit it, or "
                "load a state_dict holding its parameter"
            )
        with torch.no_grad():
            for name, value in built.items():
                tensor: Tensor = getattr(self, name)
                tensor.fill_(value)

    def unwritten_remedy(self) -> str:
        """A fit, a reset or a load writes the parameter (:meth:`check_written`)."""
        reset = (
            ", return it to the value it was built with (reset_parameters())"
            if self.__dict__.get("_built_values")
            else ""
        )
        return (
            "fit it (calibration.fit(outputs, target, likelihood), or "
            f"bnn.calibrate(...)){reset}, or load a state_dict that holds "
            "values for it"
        )

    def wrap(self, predictive: PredictiveDistribution) -> PredictiveDistribution:
        """The calibrated likelihood (``predictive`` is referenced, not copied)."""
        raise NotImplementedError

    def _taken_likelihood(self, predictive: object, who: str) -> PredictiveDistribution:
        """``predictive`` as a likelihood this calibration takes, else a ``TypeError``.

        :meth:`fit` calls it before it writes the parameter, which may hold
        no values yet (after ``to_empty``): the library's calibrations check
        the likelihood's kind alone. This default wraps it (a subclass's
        :meth:`wrap` checks the kind) where the parameter holds values.
        """
        likelihood = as_likelihood(predictive, who)
        if not self.unwritten_tensors():
            self.wrap(likelihood)  # refuses a likelihood of the wrong kind
        return likelihood

    def fit(
        self: _SelfCalibration,
        outputs: Tensor,
        target: Tensor,
        predictive: PredictiveDistribution,
    ) -> _SelfCalibration:
        """Fit the parameter to validation outputs ``(S, N, ...)`` and targets.

        The parameter minimises the negative log-likelihood of the particle
        mixture on the validation data, per target position (per token or
        pixel where an example has several; see the module's description).

        Args:
            outputs: network outputs ``(S, N, ...)``, e.g.
                ``bnn.predict(...).samples``.
            target: targets ``(N, ...)``.
            predictive: the likelihood the network was trained with, the
                loss's own (``loss_fn.predictive``): the calibration is fitted
                to its noise scale. One whose learned parameters were never
                trained (a fresh ``bnn.Normal()``) warns, as in
                :func:`~pyrolite_bnn.predict`.

        Returns:
            ``self``.

        Raises:
            TypeError: for a likelihood this calibration does not take.
            NotImplementedError: for one whose scoring it cannot follow
                (:class:`VarianceScaling`: a likelihood whose class redefines
                ``log_likelihood``).
        """
        likelihood = self._taken_likelihood(predictive, f"{type(self).__name__}.fit")
        warn_untrained(likelihood)
        return self._fit(outputs, target, likelihood)

    def _fit(
        self: _SelfCalibration,
        outputs: Tensor,
        target: Tensor,
        predictive: PredictiveDistribution,
    ) -> _SelfCalibration:
        """Set the parameter from a checked likelihood; returns ``self``."""
        raise NotImplementedError

    def predict(
        self,
        model: nn.Module,
        x: NetworkInput[InputTensor],
        predictive: PredictiveDistribution,
        samples: SupportsIndex = 100,
        batch_size: int | None = None,
        mode: PredictMode = "sample",
        *,
        memory_budget: int | None = None,
    ) -> Prediction:
        """``bnn.predict(model, x, predictive, ..., calibration=self)``.

        The arguments are :func:`~pyrolite_bnn.predict`'s.
        """
        return predict(
            model,
            x,
            predictive,
            samples,
            batch_size,
            mode,
            memory_budget=memory_budget,
            calibration=self,
        )

    def forward(self, predictive: PredictiveDistribution) -> PredictiveDistribution:
        """Same as :meth:`wrap`."""
        return self.wrap(predictive)


class TemperatureScaling(Calibration):
    """Divide every particle's logits by a temperature ``T > 0``.

    For :class:`~pyrolite_bnn.Categorical` and :class:`~pyrolite_bnn.Bernoulli`
    likelihoods. ``T = 1`` is the identity.

    Args:
        temperature: the temperature (fit it with :meth:`fit` or
            :func:`calibrate`).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> cal = bnn.TemperatureScaling(2.0)
        >>> cal.wrap(bnn.Categorical()).class_probs(torch.tensor([[[0.0, 2.0]]]))
        tensor([[[0.2689, 0.7311]]])
    """

    temperature: Tensor

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        value = check_normal_number(
            check_positive(temperature, "temperature"), "temperature"
        )
        self._register_calibration_parameter("temperature", value)

    def wrap(self, predictive: PredictiveDistribution) -> PredictiveDistribution:
        """``predictive`` at the temperature: its logits divided by it.

        A likelihood reading probabilities has them tempered instead,
        ``p^(1/T)`` normalised (its
        :meth:`~pyrolite_bnn.PredictiveDistribution.tempered`).
        """
        self.check_written()
        likelihood = self._taken_likelihood(predictive, "TemperatureScaling.wrap")
        return _TemperatureScaled(likelihood, self.temperature)

    def _taken_likelihood(self, predictive: object, who: str) -> PredictiveDistribution:
        """A classification likelihood; else a ``TypeError``."""
        likelihood = as_likelihood(predictive, who)
        if not likelihood.is_classification:
            raise TypeError(
                "TemperatureScaling needs a classification likelihood (Categorical, "
                f"Bernoulli), got {describe_likelihood(likelihood)}; use "
                "VarianceScaling"
            )
        return likelihood

    def _fit(
        self, outputs: Tensor, target: Tensor, predictive: PredictiveDistribution
    ) -> TemperatureScaling:
        """The temperature minimising the validation NLL of the mixture per position.

        Where that temperature makes most particles' predictions certain
        while the particles disagree, the one nearest 1 within 0.001 nats per
        position of the minimum (see the module's description).
        """
        # At least float32: a candidate cast to bfloat16 outputs' dtype landed
        # on its grid (T 0.43 % off the float64 fit of the same outputs).
        outputs = full_precision(outputs)
        observed = predictive.observed(target)
        labels = target if observed is None else target[observed]

        def objective(log_t: float) -> float:
            scaled = TemperatureScaling(math.exp(log_t)).to(outputs).wrap(predictive)
            return _mixture_nll(
                _position_log_likelihoods(scaled, outputs, target, observed)
            )

        def vote_shares(temperature: float) -> bool:
            return temperature < 1.0 and _vote_shares(
                predictive, outputs, target, temperature, observed
            )

        best = _fit_log_parameter(
            objective,
            "temperature",
            outputs,
            vote_shares,
            positions=labels.numel(),
            one_class=_one_class(labels),
        )
        with torch.no_grad():
            self.temperature.fill_(best)
        return self

    def extra_repr(self) -> str:
        """The temperature."""
        return f"temperature={float(self.temperature):.4g}"


class VarianceScaling(Calibration):
    """Multiply the predictive variance (aleatoric and epistemic) by ``factor``.

    For the Gaussian likelihoods (:class:`~pyrolite_bnn.Normal`,
    :class:`~pyrolite_bnn.HeteroscedasticNormal`). The particle mixture is
    stretched about its mean by ``sqrt(factor)``: its mean is unchanged and its
    quantiles move to ``mean + sqrt(factor) (quantile - mean)``. ``factor = 1``
    is the identity.

    Args:
        factor: the variance factor (fit it with :meth:`fit` or
            :func:`calibrate`).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> likelihood = bnn.VarianceScaling(4.0).wrap(bnn.Normal(scale=0.5))
        >>> loc, var = likelihood.moments(torch.tensor([[1.0], [3.0]]))
        >>> loc.tolist(), var.tolist()
        ([[0.0], [4.0]], [[1.0], [1.0]])
    """

    factor: Tensor

    def __init__(self, factor: float = 1.0) -> None:
        super().__init__()
        value = check_normal_number(check_positive(factor, "factor"), "factor")
        self._register_calibration_parameter("factor", value)

    def wrap(self, predictive: PredictiveDistribution) -> PredictiveDistribution:
        """``predictive`` with its particle mixture stretched by ``sqrt(factor)``."""
        self.check_written()
        likelihood = self._taken_likelihood(predictive, "VarianceScaling.wrap")
        return _VarianceScaled(likelihood, self.factor)

    def _taken_likelihood(self, predictive: object, who: str) -> PredictiveDistribution:
        """A Gaussian likelihood scored as the library scores it, else a refusal.

        The calibrated likelihood is a Gaussian rebuilt from the stretched
        moments: a subclass's own ``log_likelihood`` (a mask of its own)
        would not be followed, and is refused with ``NotImplementedError``.
        """
        likelihood = as_likelihood(predictive, who)
        if not isinstance(likelihood, (Normal, HeteroscedasticNormal)):
            raise TypeError(
                "VarianceScaling needs a Gaussian likelihood (Normal, "
                f"HeteroscedasticNormal), got {describe_likelihood(likelihood)}"
            )
        if likelihood.redefines_log_likelihood():
            raise NotImplementedError(
                f"VarianceScaling cannot follow {describe_likelihood(likelihood)}: "
                "its class redefines log_likelihood (or position_log_likelihood), "
                "and the calibrated likelihood is a Gaussian rebuilt from the "
                "stretched moments, which scores the targets without that "
                "log_likelihood (every entry, a missing one too). To leave "
                "missing entries out, mark them with NaN "
                "and build the library's likelihood with missing='nan' "
                "(bnn.Normal(missing='nan')), or override observed(target) "
                "instead of log_likelihood"
            )
        return likelihood

    def _fit(
        self, outputs: Tensor, target: Tensor, predictive: PredictiveDistribution
    ) -> VarianceScaling:
        """The factor minimising the Gaussian mixture's validation NLL per position."""
        # At least float32, as for the temperature (bfloat16: 0.14 % off).
        outputs, target = full_precision(outputs), full_precision(target)
        observed = predictive.observed(target)

        def objective(log_factor: float) -> float:
            scaled = VarianceScaling(math.exp(log_factor)).to(outputs).wrap(predictive)
            log_p = _position_log_likelihoods(scaled, outputs, target, observed)
            return _mixture_nll(log_p)

        positions = None if observed is None else int(observed.sum())
        best = _fit_log_parameter(
            objective, "variance factor", outputs, positions=positions
        )
        with torch.no_grad():
            self.factor.fill_(best)
        return self

    def extra_repr(self) -> str:
        """The variance factor."""
        return f"factor={float(self.factor):.4g}"


class _Calibrated(PredictiveDistribution):
    """A likelihood that delegates target handling to the one it calibrates."""

    base: PredictiveDistribution

    def __init__(self, base: PredictiveDistribution) -> None:
        super().__init__()
        # Referenced, not registered as a submodule: a PyroModule child would be
        # renamed under this module, and the base belongs to the user's loss.
        object.__setattr__(self, "base", base)

    def align(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """The base likelihood's alignment."""
        return self.base.align(output, target)

    def check_output(self, output: Tensor) -> None:
        """The base likelihood's output checks."""
        self.base.check_output(output)

    def check_target(self, output: Tensor, target: Tensor) -> None:
        """The base likelihood's target checks."""
        self.base.check_target(output, target)

    def observed(self, target: Tensor) -> Tensor | None:
        """The base likelihood's observed target entries."""
        return self.base.observed(target)

    def extra_repr(self) -> str:
        """The calibrated likelihood."""
        return repr(self.base)

    def unwritten_remedy(self) -> str:
        """A new wrap of the likelihood writes the parameter (:meth:`check_written`)."""
        return (
            "wrap the likelihood again with a calibration that holds values "
            "(calibration.wrap(likelihood)), or load a state_dict that holds "
            "values for it"
        )


class _TemperatureScaled(_Calibrated):
    """Classification likelihood on ``output / temperature``."""

    is_classification: ClassVar[bool] = True

    def __init__(self, base: PredictiveDistribution, temperature: Tensor) -> None:
        super().__init__(base)
        self.register_buffer("temperature", temperature.detach().clone())

    def _scaled(self, output: Tensor) -> Tensor:
        self.check_written()
        temperature: Tensor = self.temperature
        return self.base.tempered(output, temperature)

    def distribution(self, output: Tensor) -> TorchDistributionMixin:
        """The base distribution of the scaled logits."""
        return self.base.distribution(self._scaled(output))

    def log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
        """The base likelihood's, of the scaled logits (its ignored labels too).

        In at least ``float32``, as every likelihood's log-densities: the
        logits are scaled after :func:`full_precision`.
        """
        return self.base.log_likelihood(self._scaled(full_precision(output)), target)

    def position_log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
        """The base likelihood's per position, of the scaled logits.

        As calibration scores the base (:func:`scored_positions`): per
        example where the base's class redefines only ``log_likelihood``.
        """
        return scored_positions(self.base, self._scaled(full_precision(output)), target)

    def class_probs(self, output: Tensor) -> Tensor:
        """The base class probabilities of the scaled logits (at least float32)."""
        return self.base.class_probs(self._scaled(full_precision(output)))

    def predictive_mean(self, output: Tensor) -> Tensor:
        """Mean class probabilities of the scaled logits (at least float32)."""
        return self.base.predictive_mean(self._scaled(full_precision(output)))

    def extra_repr(self) -> str:
        """Base likelihood and temperature."""
        return f"{self.base!r}, temperature={float(self.temperature):.4g}"


class _VarianceScaled(_Calibrated):
    """Gaussian likelihood whose particle mixture is stretched about its mean."""

    def __init__(self, base: PredictiveDistribution, factor: Tensor) -> None:
        super().__init__(base)
        self.register_buffer("factor", factor.detach().clone())

    def _stretch(self, loc: Tensor) -> tuple[Tensor, Tensor]:
        """Centre ``mean_s loc`` and the standard-deviation factor."""
        self.check_written()
        factor: Tensor = self.factor
        return loc.mean(0), factor.to(loc).sqrt()

    def moments(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """Particle means stretched about their average; variances scaled."""
        loc, var = self.base.moments(output)
        centre, stretch = self._stretch(loc)
        return centre + stretch * (loc - centre), stretch.square() * var

    def distribution(self, output: Tensor) -> TorchDistributionMixin:
        """``Normal`` with the calibrated per-particle moments.

        Laid out as the base likelihood's distribution (a scalar output
        ``(S, B, 1)`` keeps its event dimension, as the targets it is aligned
        with do).
        """
        base = self.base.distribution(output)
        shape = base.batch_shape + base.event_shape
        loc, var = self.moments(output)
        result: TorchDistributionMixin = dist.Normal(
            loc.reshape(shape), var.sqrt().reshape(shape)
        ).to_event(len(base.event_shape))
        return result

    def predictive_mean(self, output: Tensor) -> Tensor:
        """Unchanged: the base likelihood's predictive mean."""
        return self.base.predictive_mean(output)

    def quantile(self, output: Tensor, q: float) -> Tensor:
        """``mean + sqrt(factor) (base quantile - mean)``: the stretched mixture's."""
        centre, stretch = self._stretch(self.base.moments(output)[0])
        return centre + stretch * (self.base.quantile(output, q) - centre)

    def extra_repr(self) -> str:
        """Base likelihood and factor."""
        return f"{self.base!r}, factor={float(self.factor):.4g}"


@overload
def calibrate(
    model: nn.Module,
    x: NetworkInput[InputTensor],
    y: Tensor,
    predictive: PredictiveDistribution,
    samples: SupportsIndex = 100,
    **kwargs: Any,
) -> Calibration: ...


@overload
def calibrate(
    model: nn.Module,
    x: NetworkInput[InputTensor],
    y: Mapping[_Key, Tensor],
    predictive: Mapping[_Key, PredictiveDistribution],
    samples: SupportsIndex = 100,
    **kwargs: Any,
) -> dict[_Key, Calibration]: ...


@overload
def calibrate(
    model: nn.Module,
    x: NetworkInput[InputTensor],
    y: Sequence[Tensor | None],
    predictive: Sequence[PredictiveDistribution | None],
    samples: SupportsIndex = 100,
    **kwargs: Any,
) -> tuple[Calibration | None, ...]: ...


def calibrate(
    model: nn.Module,
    x: NetworkInput[InputTensor],
    y: Any,
    predictive: Any,
    samples: SupportsIndex = 100,
    **kwargs: Any,
) -> Any:
    """Fit a post-hoc calibration of ``model`` on validation data ``(x, y)``.

    :class:`TemperatureScaling` for a classification likelihood,
    :class:`VarianceScaling` for a Gaussian one; the parameter minimises the
    negative log-likelihood of the posterior predictive (the particle mixture
    of ``samples`` draws) on ``(x, y)``. Use data the network was not trained
    on.

    The objective is the mixture's NLL per target position,
    ``-mean_i log mean_s p(y_i | output_s)``: per example for one target per
    example, per token, pixel or target entry for outputs with several
    (``(S, N, L, C)`` tagging, ``(S, N, H, W, C)`` segmentation,
    ``(S, N, L, 1)`` or ``(S, N, D)`` regression), averaged over all of them
    (labels equal to a ``Categorical``'s ``ignore_index`` left out). That is
    the predictive whose probabilities, intervals and metrics
    (``expected_calibration_error`` of ``pred.probs``) a
    :class:`~pyrolite_bnn.Prediction` reports; the joint density of all
    positions of an example would be dominated by its best particle, and
    calibrate that particle rather than the mixture.

    Args:
        model: the trained network, or anything else :func:`~pyrolite_bnn.predict`
            takes (a :class:`~pyrolite_bnn.LinearizedLaplace` posterior).
        x: validation inputs ``(N, ...)`` (a tuple or list of them for a
            network with several inputs, as :func:`~pyrolite_bnn.predict`
            takes).
        y: validation targets ``(N, ...)``; with one likelihood per output,
            one target per output in the likelihoods' shape.
        predictive: the likelihood the network was trained with (a
            distribution of :mod:`pyrolite_bnn.vi.distributions` is converted
            with its ``to_predictive()``), or one per output of a network
            with several (a dict by key, a tuple or list by position).
        samples: posterior draws for the fit.
        **kwargs: further arguments of :func:`~pyrolite_bnn.predict`
            (``batch_size``, ``memory_budget``).

    Returns:
        The fitted calibration; pass it as ``calibration=`` to
        :func:`~pyrolite_bnn.predict`, or call its ``predict``. With one
        likelihood per output, a dict of calibrations by key, or a tuple with
        ``None`` at the positions skipped.

    Raises:
        TypeError: for a likelihood neither calibration takes, or a
            likelihood per output without a target for that output.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> net = bnn.VILinear(2, 1)
        >>> x, y = torch.randn(40, 2), torch.randn(40)
        >>> cal = bnn.calibrate(net, x, y, bnn.Normal(scale=0.1), samples=8)
        >>> type(cal).__name__
        'VarianceScaling'
        >>> pred = bnn.predict(net, x, bnn.Normal(scale=0.1), calibration=cal)
        >>> pred.interval(0.9)[0].shape
        torch.Size([40])

        A network with two heads, each calibrated:

        >>> class TwoHeads(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.label, self.value = bnn.VILinear(2, 3), bnn.VILinear(2, 1)
        ...     def forward(self, x):
        ...         return {"label": self.label(x), "value": self.value(x)}
        >>> heads = TwoHeads()
        >>> likelihoods = {"label": bnn.Categorical(), "value": bnn.Normal(scale=0.1)}
        >>> probs = bnn.predict(heads, x, {"label": bnn.Categorical()})["label"].probs
        >>> labels = torch.distributions.Categorical(probs).sample()  # it explains
        >>> targets = {"label": labels, "value": y}
        >>> cals = bnn.calibrate(heads, x, targets, likelihoods, samples=8)
        >>> {key: type(cal).__name__ for key, cal in cals.items()}
        {'label': 'TemperatureScaling', 'value': 'VarianceScaling'}
        >>> preds = bnn.predict(heads, x, likelihoods, calibration=cals)
        >>> preds["label"].probs.shape
        torch.Size([40, 3])
    """
    heads = OutputHeads.of(predictive, "calibrate")
    targets = heads.per_head(y, "the targets y", "calibrate")
    names = [None] if heads.keys is None else list(heads.keys)
    calibrations = []
    for name, likelihood, target in zip(names, heads.likelihoods, targets, strict=True):
        if target is None and name is None:
            raise TypeError("calibrate needs the validation targets y, got None")
        if target is None:
            raise TypeError(
                f"calibrate was given a likelihood for output {name!r} but no "
                "target for it: give the targets in the likelihoods' shape, or "
                "leave that output's likelihood out to calibrate the others"
            )
        calibrations.append(_unfitted_calibration(likelihood, name))
        likelihood.check_target_type(target)  # before the predictions
    # predict warns about a likelihood whose learned parameters never trained;
    # the checked fits below do not warn a second time.
    predictions = predict(
        model, x, heads.assemble(heads.likelihoods), samples, **kwargs
    )
    fitted = [
        calibration._fit(*_fit_layout(model, x, prediction.samples, target), likelihood)
        for calibration, likelihood, target, prediction in zip(
            calibrations,
            heads.likelihoods,
            targets,
            heads.per_head(predictions, "predictions"),
            strict=True,
        )
    ]
    return heads.assemble(fitted)


def _unfitted_calibration(
    likelihood: PredictiveDistribution, output: Hashable | None
) -> Calibration:
    """The calibration for ``likelihood``: temperature or variance scaling.

    Raises:
        TypeError: for a likelihood neither takes (named by ``output``, the
            head's key or position, where the network has several).
    """
    calibration: Calibration = (
        TemperatureScaling() if likelihood.is_classification else VarianceScaling()
    )
    try:  # the calibration's own check of the likelihood, before predicting
        calibration.wrap(likelihood)
    except TypeError as error:
        head = "" if output is None else f" (output {output!r})"
        raise TypeError(
            "calibrate fits temperature scaling for classification likelihoods "
            "(Categorical, Bernoulli) and variance scaling for Gaussian ones "
            f"(Normal, HeteroscedasticNormal); got {describe_likelihood(likelihood)}"
            f"{head}"
        ) from error
    return calibration


def _fit_layout(
    model: nn.Module, x: NetworkInput[InputTensor], outputs: Tensor, target: Tensor
) -> tuple[Tensor, Tensor]:
    """Outputs ``(S, N, ...)`` and targets ``(N, ...)`` in one example per row.

    A sequence-first network's ``(S, L, B, ...)`` against ``(L, B, ...)`` has
    one example per sequence.
    """
    if isinstance(model, nn.Module) and has_sequence_first_layers(model):
        first = network_args(x)[0]  # several inputs: the first
        outputs, moved = batch_first_layout(outputs, target, first.shape[1])
        assert moved is not None
        return outputs, moved
    return outputs, target
