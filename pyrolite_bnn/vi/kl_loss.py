"""torch_blue's ``KullbackLeiblerLoss`` on :class:`pyrolite_bnn.KullbackLeiblerLoss`."""

from __future__ import annotations

from typing import Any, SupportsFloat, SupportsIndex

import torch
from torch import Tensor

from pyrolite_bnn._likelihoods import as_likelihood
from pyrolite_bnn._reweighing_handlers import refuse_reweighing_handlers
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.distributions.predictive import (
    PredictiveDistribution as BnnPredictive,
)
from pyrolite_bnn.loss import KullbackLeiblerLoss as BnnKullbackLeiblerLoss
from pyrolite_bnn.record import KLMode, find_record
from pyrolite_bnn.vi.distributions.base import Distribution
from pyrolite_bnn.vi.distributions.non_bayesian import _LossLikelihood
from pyrolite_bnn.vi.utils.errors import UnsupportedDistributionError

__all__ = ["KullbackLeiblerLoss", "as_predictive"]


def as_predictive(
    distribution: object, argument: str = "predictive_distribution"
) -> BnnPredictive:
    """The likelihood module of a torch_blue (or :mod:`pyrolite_bnn`) distribution.

    Converted as every entry point of the library converts it
    (``to_predictive()``); refused with the library's message, as torch_blue's
    exception.

    Args:
        distribution: the distribution given.
        argument: the name the user gave it under (torch_blue's
            ``predictive_distribution``, or the library's ``predictive``),
            named in the message.

    Raises:
        UnsupportedDistributionError: if it cannot serve as predictive distribution.

    Example:
        >>> from pyrolite_bnn import vi
        >>> as_predictive(vi.distributions.Categorical())
        Categorical()
        >>> try:
        ...     as_predictive(None)
        ... except vi.utils.UnsupportedDistributionError as error:
        ...     print(str(error).split(" such as")[0])
        vi.KullbackLeiblerLoss: predictive_distribution must be a likelihood
    """
    try:
        return as_likelihood(distribution, "vi.KullbackLeiblerLoss", argument)
    except TypeError as error:
        raise UnsupportedDistributionError(str(error)) from error


def _has_record(output: Tensor) -> bool:
    """Whether a forward pass of this library produced ``output``."""
    try:
        find_record(output)
    except ValueError:
        return False
    return True


class KullbackLeiblerLoss(BnnKullbackLeiblerLoss):
    r"""Negative ELBO with torch_blue's signature and scale.

    .. math::

        -\mathrm{ELBO} = -\frac{N}{B} \sum_b \frac{1}{S} \sum_s
            \log p(y_b \mid x_b, w_s) + \mathrm{heat} \cdot \mathrm{KL}(q \| p)

    This is :class:`pyrolite_bnn.KullbackLeiblerLoss` with ``reduction="sum"``:
    the value is on torch_blue's scale (the -ELBO of the whole data set, ``N``
    times :class:`pyrolite_bnn.KullbackLeiblerLoss`'s default), so learning
    rates tuned for torch_blue keep their meaning, with SGD as with Adam. The
    data term is the mean of the particles' log-likelihoods (torch_blue: the
    log of their mean), the KL is taken in closed form where one exists, and
    the output's ``log_probs`` are not needed.

    Args:
        predictive_distribution: a ``vi.distributions`` predictive distribution
            (or a :mod:`pyrolite_bnn` one).
        dataset_size: training set size ``N``; if ``None`` it must be given to
            :meth:`forward`, else the batch size is used with a warning.
        heat: multiplier of the KL term.
        track: record the loss components in :attr:`log`.
        kl: keyword only, not in torch_blue: how the KL is estimated, as for
            :class:`pyrolite_bnn.KullbackLeiblerLoss` (``"auto"``: closed form
            where one exists, else Monte Carlo).

    Attributes:
        predictive: the library's likelihood module the loss uses.
        log: ``None``, or (once tracking is on) a dict of lists:
            ``data_fitting`` (floats), ``prior_matching`` (floats, after heat)
            and ``log_probs`` (the mean ``[log p, log q]`` of the output, when it
            carries them).

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> net = vi.VILinear(4, 3)
        >>> likelihood = vi.distributions.Categorical()
        >>> loss_fn = vi.KullbackLeiblerLoss(likelihood, 100, track=True)
        >>> loss = loss_fn(net(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
        >>> loss.shape, sorted(loss_fn.log)
        (torch.Size([]), ['data_fitting', 'log_probs', 'prior_matching'])
    """

    log: dict[str, list[Any]] | None

    def __init__(
        self,
        predictive_distribution: object,
        dataset_size: SupportsIndex | None = None,
        heat: SupportsFloat = 1.0,
        track: bool = False,
        *,
        kl: KLMode = "auto",
    ) -> None:
        super().__init__(
            as_predictive(predictive_distribution),
            1 if dataset_size is None else dataset_size,
            heat,
            kl=kl,
            reduction="sum",
        )
        self.dataset_size = dataset_size
        self.predictive_distribution = predictive_distribution
        self.log = None
        self._track = False
        self.track(track)

    def __setattr__(self, name: str, value: Any) -> None:
        """``predictive_distribution`` and ``predictive`` are one likelihood.

        Either is converted and checked (:func:`as_predictive`, the refusal
        naming the attribute assigned) and stored as ``predictive``; the value
        as given is kept for :attr:`predictive_distribution` (an attribute
        only: a module given is registered once, as ``predictive``).
        """
        if name in ("predictive", "predictive_distribution"):
            likelihood = as_predictive(value, name)
            super().__setattr__("predictive", likelihood)
            self.__dict__["_given_predictive"] = (value, likelihood)
            return
        super().__setattr__(name, value)

    @property
    def predictive_distribution(self) -> object:
        """The likelihood the loss uses, as it was given (torch_blue's attribute).

        The distribution assigned (to this name or to ``predictive``, or given
        to the constructor) while the loss's :attr:`predictive` is still the
        module it was converted to; once another module took that place
        without an assignment (``add_module("predictive", ...)``), that module:
        never a likelihood the loss no longer uses.

        Example:
            >>> import pyrolite_bnn as bnn
            >>> from pyrolite_bnn import vi
            >>> normal = vi.distributions.MeanFieldNormal()
            >>> loss_fn = vi.KullbackLeiblerLoss(normal, 100)
            >>> loss_fn.predictive_distribution is normal
            True
            >>> loss_fn.add_module("predictive", bnn.Normal(scale=0.2))
            >>> loss_fn.predictive_distribution
            Normal(scale=0.2)
        """
        given, likelihood = self.__dict__["_given_predictive"]
        if self._modules.get("predictive") is likelihood:
            return given
        return self.predictive

    @predictive_distribution.setter
    def predictive_distribution(self, value: object) -> None:
        # Assignments reach __setattr__ first (nn.Module's would register a
        # module under this name); only object.__setattr__ comes here.
        self.__setattr__("predictive_distribution", value)

    @property  # type: ignore[override]
    def dataset_size(self) -> int | None:
        """Training set size ``N``, or ``None`` (then given per call)."""
        if self.__dict__.get("_size_missing", True):
            return None
        return BnnKullbackLeiblerLoss.dataset_size.fget(self)  # type: ignore[attr-defined,no-any-return]

    @dataset_size.setter
    def dataset_size(self, value: SupportsIndex | None) -> None:
        self.__dict__["_size_missing"] = value is None
        if value is not None:  # validated as the library's loss does
            BnnKullbackLeiblerLoss.dataset_size.fset(self, value)  # type: ignore[attr-defined]

    def check_dataset_size(self, batch: int) -> None:
        """A training batch larger than ``N`` only warns.

        torch_blue accepts ``dataset_size`` smaller than the batch (the data
        term is then scaled by ``N / B < 1``, a tempered likelihood), so a
        migrated script keeps running; :class:`pyrolite_bnn.KullbackLeiblerLoss`
        refuses it. Without gradients (an evaluation) it is taken silently, as
        there.
        """
        size = self.dataset_size
        if size is not None and 0 < size < batch:
            if torch.is_grad_enabled():
                warn_at_caller(
                    f"batch of {batch} examples is larger than dataset_size={size}: "
                    f"the data term is scaled by {size}/{batch} < 1; dataset_size "
                    "should be the number of training examples"
                )
            return
        super().check_dataset_size(batch)

    def terms_and_batch(
        self, output: Tensor, target: Tensor, kl: KLMode | None = None
    ) -> tuple[Tensor, Tensor, int]:
        """As :class:`pyrolite_bnn.KullbackLeiblerLoss`, on torch_blue's scale.

        ``NonBayesian(loss_type)`` gives one value per example, the loss's mean
        over its elements; the data term, ``N / B`` times their sum, is then
        ``N`` times the loss's mean over all elements (torch_blue's). For a
        sequence-first output ``(S, L, B, ...)`` the values come per position
        instead, each the mean over the batch: their sum is scaled to the
        batch's.
        """
        log_lik, kl_value, batch = super().terms_and_batch(output, target, kl)
        if isinstance(self.predictive, _LossLikelihood) and output.shape[1] != batch:
            log_lik = log_lik * (batch / output.shape[1])
        return log_lik, kl_value, batch

    def track(self, mode: bool = True) -> None:
        """Start (``True``) or pause (``False``) recording; the history is kept."""
        if mode and self.log is None:
            self.log = {"data_fitting": [], "prior_matching": [], "log_probs": []}
        self._track = mode

    def forward(
        self, model_output: Tensor, target: Tensor, dataset_size: int | None = None
    ) -> Tensor:
        """Negative ELBO of ``model_output = model(x)`` and ``target``.

        Args:
            model_output: the network output ``(S, B, ...)``.
            target: the targets ``(B, ...)``.
            dataset_size: ``N`` for this call (overrides the constructor's).

        Returns:
            Scalar loss.
        """
        size = self.dataset_size if dataset_size is None else dataset_size
        if size is None:
            batch = model_output.shape[1]
            warn_at_caller(
                f"No dataset_size is provided. Batch size ({batch}) is used instead.",
            )
            size = batch
        log_probs = getattr(model_output, "log_probs", None)
        stored = self.dataset_size
        self.dataset_size = size  # validated by the setter, for either kind of output
        try:
            if isinstance(log_probs, Tensor) and not _has_record(model_output):
                return self._from_log_probs(model_output, target, log_probs)
            loss: Tensor = super().forward(model_output, target)
        finally:
            self.dataset_size = stored
        self._record(model_output)
        return loss

    def _from_log_probs(
        self, model_output: Tensor, target: Tensor, log_probs: Tensor
    ) -> Tensor:
        """torch_blue's convention for outputs no forward pass recorded.

        A :class:`~pyrolite_bnn.vi.VIReturn` built by hand (or restored) carries
        only its samples and ``log_probs``: the KL is estimated from those,
        ``mean_s(log q - log p)``, as torch_blue does. Its batch is checked
        against ``dataset_size`` as a recorded output's is (:meth:`check_batch`).
        """
        refuse_reweighing_handlers()
        size = super().dataset_size
        distribution = self.predictive_distribution
        samples = model_output.as_subclass(Tensor)
        if (
            isinstance(distribution, Distribution)
            and type(distribution).log_prob_from_samples
            is Distribution.log_prob_from_samples
        ):
            # torch_blue's own formula, in its order of operations (its tests
            # compare the loss to it with ==); the same value as below.
            elementwise = distribution.log_prob_from_samples(target, samples)
            data = -size * elementwise.mean(0).sum()
        else:
            likelihood = as_predictive(distribution)
            data = -size * likelihood.log_likelihood(samples, target).mean(0).mean(0)
        self.check_batch(model_output)  # after the likelihood's own shape checks
        if log_probs.shape == (2,):  # already averaged over the samples
            log_probs = log_probs.unsqueeze(0)
        elif log_probs.dim() != 2 or log_probs.shape[1] != 2 or not len(log_probs):
            # torch_blue averages any number of rows (its own tests pass B rows).
            raise ValueError(
                "log_probs must have shape (samples, 2) or (2,) (log prior, log "
                f"variational density), got {tuple(log_probs.shape)}"
            )
        mean_log_probs = log_probs.mean(0)
        kl = mean_log_probs[1] - mean_log_probs[0]
        loss = data + self.heat * kl
        if self._track and self.log is not None:
            self.log["data_fitting"].append(float(data))
            self.log["prior_matching"].append(float(self.heat * kl))
            self.log["log_probs"].append(mean_log_probs.detach())
        return loss

    def _record(self, model_output: Tensor) -> None:
        if not self._track or self.log is None:
            return
        self.log["data_fitting"].append(float(self.last_nll))
        self.log["prior_matching"].append(float(self.heat * self.last_kl))
        log_probs = getattr(model_output, "log_probs", None)
        if isinstance(log_probs, Tensor):
            self.log["log_probs"].append(log_probs.detach().mean(0))
