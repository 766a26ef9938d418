"""``KullbackLeiblerLoss``: the negative ELBO of a Bayesian network, via Pyro."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any, Literal, SupportsFloat, SupportsIndex, get_args

import pyro
import torch
from torch import Tensor, nn

from pyrolite_bnn._capture import data_address, is_capturing, is_wrapped
from pyrolite_bnn._change_watch import UNTRAINED_STEPS, ChangeWatch
from pyrolite_bnn._decay_watch import DecayWatch
from pyrolite_bnn._distributed import unwrap
from pyrolite_bnn._forward import (
    call_network,
    check_unpacked_inputs,
    network_args,
    open_particle_plate,
    prepare,
    refuse_particles_under_mcmc,
    run_sites,
)
from pyrolite_bnn._handlers import initialising_inference
from pyrolite_bnn._likelihoods import as_likelihood
from pyrolite_bnn._network import check_bayesian_network
from pyrolite_bnn._no_grad_watch import NoGradLayerWatch
from pyrolite_bnn._output_heads import describe_heads, scoring_recipe
from pyrolite_bnn._pass_charges import LossCharge
from pyrolite_bnn._precision_watch import BFloat16ScaleWatch
from pyrolite_bnn._pyro_module import local_params
from pyrolite_bnn._reweighing_handlers import refuse_reweighing_handlers
from pyrolite_bnn._sites import SiteShapeError
from pyrolite_bnn._source_watch import SourceOptimizerWatch
from pyrolite_bnn._validation import (
    check_count,
    check_heat,
    checks_under_pyro_validation,
)
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.compiled import CompileMode, LossGraphs
from pyrolite_bnn.decay import is_scale_parameter, scale_parameters
from pyrolite_bnn.distributions._observation_site import ObservationSite
from pyrolite_bnn.distributions.predictive import PredictiveDistribution
from pyrolite_bnn.guides import autoguide_running_model, check_pyro_call, guide_of
from pyrolite_bnn.module import DEFAULT_SAMPLES, VIModule
from pyrolite_bnn.record import (
    ForwardRecord,
    KLMode,
    check_kl_mode,
    find_record,
    other_passes_upstream,
    prior_parameters,
)

__all__ = [
    "KullbackLeiblerLoss",
    "PyroModel",
    "Reduction",
    "batch_dim",
    "batch_first_layout",
    "example_count",
]

# ``reduction=``: divide by the data set size ``N``, or not (torch_blue's scale).
Reduction = Literal["mean", "sum"]
_REDUCTIONS: tuple[Reduction, ...] = get_args(Reduction)
# Loss calls per network whose output is checked for a chained network: the
# first few, then one in _CHAIN_CHECK_EVERY (a loop that changes later).
_CHAIN_CHECKS = 3
_CHAIN_CHECK_EVERY = 64


def _check_one_tensor(output: object) -> None:
    """The loss reads one output tensor ``(S, B, ...)``.

    Raises:
        TypeError: for anything else: a network's several heads (a dict or
            tuple of outputs, each scored by a loss of its own) or an output
            with a state (a recurrent layer's ``(output, state)``).
    """
    if isinstance(output, Tensor):
        return
    described = describe_heads(output)
    got = type(output).__name__ if described is None else described[0]
    raise TypeError(
        f"the loss needs the network's output as one tensor, got {got}; for a "
        f"network with several outputs (heads), {scoring_recipe(output)}; a "
        "network whose output comes with a state (a bare VILSTM's (output, "
        "(h_n, c_n))) needs a forward that returns the one to score"
    )


def _check_observed_output(output: object) -> None:
    """The Pyro model observes one output tensor at its site ``"obs"``.

    Raises:
        TypeError: for a network's several heads (a dict or tuple of
            outputs) or an output with a state.
    """
    described = describe_heads(output)
    if described is None:
        return
    raise TypeError(
        "pyro_model observes the network's output at the site 'obs' as one "
        f"tensor, got {described[0]}; for a network with several outputs "
        "(heads), write the Pyro model by hand: run the network once, then "
        "observe each head at a site of its own inside bnn.per_particle(out) "
        "and a data plate of its own (that head's dataset size, subsampled to "
        'its batch; see "Several outputs" in the how-to guide), or build '
        "pyro_model on a network whose forward returns one head; a network "
        "whose output comes with a state (a bare VILSTM's (output, (h_n, "
        "c_n))) needs a forward that returns "
        "the one to score"
    )


class KullbackLeiblerLoss(nn.Module):
    r"""Negative evidence lower bound (ELBO) of a Bayesian network.

    For a minibatch of ``B`` out of ``N = dataset_size`` training points and ``S``
    particles ``w_s ~ q``:

    .. math::

        -\mathrm{ELBO} = -\frac{N}{B} \sum_{b} \frac{1}{S} \sum_s
            \log p(y_b \mid x_b, w_s)
            + \mathrm{heat} \cdot \mathrm{KL}(q \,\|\, p)

    The data term is the mean over particles of the log-likelihood (the ELBO's
    :math:`E_q \log p`, not the log of the mean). With ``reduction="mean"`` the
    value is divided by ``N``, so it is on the scale of a per-example
    cross-entropy. An example is what one target of the batch covers: an image
    of a segmentation (logits ``(S, B, H, W, C)``, labels ``(B, H, W)``), a
    sequence of a tagger. Its log-likelihood sums over its positions, so the
    data term is torch's ``cross_entropy(..., reduction="sum") / B``, ``H * W``
    times torch's per-pixel mean (logits near 0, 4 classes, 16 x 16 pixels:
    about 355 nats per image, where the per-pixel mean is ``log 4 = 1.39``),
    and ``dataset_size`` counts images, not pixels (the how-to guide's
    "Segment images" has a recipe).
    The value equals Pyro's ``Trace_ELBO`` (``kl="mc"``) or
    ``TraceMeanField_ELBO`` (``kl="analytic"``) on :meth:`pyro_model` and the
    network's guide for the same random draws, divided by ``N``, for a
    ``float32`` or ``float64`` network; a network stored in ``bfloat16`` or
    ``float16`` gets its KL in ``float32`` from the stored parameters and the
    noise drawn, where Pyro's reads the rounded draws (and is biased). The KL is
    that of every Bayesian layer of the network, also of layers the forward
    pass did not call (an idle head of a multi-task network): the ELBO of the
    whole network. Pyro's model then lacks those layers' sites, and Pyro's own
    ELBOs warn and leave their prior terms out; :class:`~pyrolite_bnn.Trace_ELBO`
    and :class:`~pyrolite_bnn.TraceMeanField_ELBO` give this loss's value.

    A network with several outputs (heads) trains with one loss per head,
    added: their sum is one negative ELBO when the heats add up to the
    posterior's (``heat=0`` on all but one) and every loss divides by the
    same number (the same ``dataset_size`` with ``reduction="mean"``, or
    ``reduction="sum"`` on all and the total divided by one ``N``, for a
    target that only some examples have). Losses with gradients on one
    forward pass whose heats add up to more than 1, or that divide by
    different numbers, warn.

    Args:
        predictive: the likelihood, e.g. :class:`~pyrolite_bnn.Categorical`
            (a distribution of :mod:`pyrolite_bnn.vi.distributions` is
            converted with its ``to_predictive()``: the value keeps this
            loss's scale, not torch_blue's, which
            :class:`pyrolite_bnn.vi.KullbackLeiblerLoss` has).
        dataset_size: number of training examples ``N`` (images of a
            segmentation, sequences of a tagger: not their pixels or tokens):
            any integral number (``int``, a NumPy integer), not a ``bool`` or
            a float.
        heat: multiplier of the KL term (``< 1`` for a "cold" posterior), a
            finite number ``>= 0``. ``heat=0`` is the data term alone (every
            head's loss but one, for a network with several outputs), and
            scores an empty batch as 0.
        kl: ``"auto"`` (closed form per weight site where one exists, Monte
            Carlo elsewhere), ``"analytic"`` (closed form everywhere, else an
            error), or ``"mc"`` (Monte Carlo from the drawn weights).
        reduction: ``"mean"`` (divide by ``N``) or ``"sum"``.
        compile: ``True`` (or a ``torch.compile`` mode name such as
            ``"reduce-overhead"``, which adds CUDA graphs on a GPU) makes
            :meth:`model_loss` run the forward pass and the loss as one compiled
            graph; ``False`` (default) runs them eagerly. See
            :mod:`pyrolite_bnn.compiled`.

    ``predictive``, ``dataset_size``, ``heat``, ``kl`` and ``reduction`` stay
    attributes that may be reassigned (``heat_schedule`` in
    :func:`~pyrolite_bnn.training.fit` sets ``heat``); a new value is validated
    (and a likelihood converted) like a constructor argument.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> net = bnn.VILinear(4, 3)
        >>> loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=100)
        >>> loss = loss_fn(net(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
        >>> loss.shape, loss.requires_grad
        (torch.Size([]), True)
    """

    # (detached log-likelihood sum, detached KL, their factors) of the last call
    _last_terms: tuple[Tensor, Tensor, float, float]

    def __init__(
        self,
        predictive: PredictiveDistribution,
        dataset_size: SupportsIndex,
        heat: SupportsFloat = 1.0,
        kl: KLMode = "auto",
        reduction: Reduction = "mean",
        compile: bool | CompileMode = False,
    ) -> None:
        super().__init__()
        self.predictive = predictive  # converted and checked by __setattr__
        self.dataset_size = dataset_size
        self.heat = heat
        self.kl = kl
        self.reduction = reduction
        self._watches = {"predictive": ChangeWatch(), "guide": ChangeWatch()}
        self._decay_watch = DecayWatch()
        self._precision_watch = BFloat16ScaleWatch()
        self._no_grad_watch = NoGradLayerWatch()
        self._source_watch = SourceOptimizerWatch()
        # The parameters of the network whose output the loss read last: the
        # optimizers holding them are the ones the watches count.
        self._network_parameters: Callable[[], list[Tensor]] = list
        # Loss calls checked for chained networks, per network (its guide).
        self._chain_checks: dict[Hashable, int] = {}
        self.graphs: LossGraphs | None = None
        if compile is not False:
            if compile is True:
                compile = "default"
            if not isinstance(compile, str):
                raise TypeError(
                    f"compile must be a bool or a mode name, got {compile!r}"
                )
            self.graphs = LossGraphs(compile)

    def __setattr__(self, name: str, value: Any) -> None:
        """``predictive`` is converted and checked as in the constructor.

        A property cannot do it: ``nn.Module`` registers a module value (or
        ``None`` for a registered name) before a property setter would run.
        """
        if name == "predictive":
            value = self._as_likelihood(value)
        super().__setattr__(name, value)

    def _as_likelihood(self, value: object) -> PredictiveDistribution:
        """``value`` as this loss's likelihood (:func:`as_likelihood`'s rules).

        Raises:
            TypeError: for anything that is not a likelihood.
        """
        return as_likelihood(value, "KullbackLeiblerLoss")

    @property
    def dataset_size(self) -> int:
        """Number of training examples ``N`` (any integral number ``>= 1``)."""
        return self._dataset_size

    @dataset_size.setter
    def dataset_size(self, value: SupportsIndex) -> None:
        self._dataset_size = check_count(value, "dataset_size")

    @property
    def heat(self) -> float:
        """Multiplier of the KL term: a finite number ``>= 0``."""
        return self._heat

    @heat.setter
    def heat(self, value: SupportsFloat) -> None:
        self._heat = check_heat(value, "heat")

    @property
    def kl(self) -> KLMode:
        """How the KL term is taken: ``"auto"``, ``"mc"`` or ``"analytic"``."""
        return self._kl

    @kl.setter
    def kl(self, value: KLMode) -> None:
        self._kl = check_kl_mode(value)

    @property
    def reduction(self) -> Reduction:
        """``"mean"`` (divide by ``N``) or ``"sum"``."""
        return self._reduction

    @reduction.setter
    def reduction(self, value: Reduction) -> None:
        if value not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {value!r}")
        self._reduction = value

    def extra_repr(self) -> str:
        """Constructor arguments."""
        return (
            f"dataset_size={self.dataset_size}, heat={self.heat:g}, kl={self.kl!r}, "
            f"reduction={self.reduction!r}"
            + ("" if self.graphs is None else f", compile={self.graphs.mode!r}")
        )

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        """Negative ELBO of ``output = model(x)`` (a PyTorch-style call) and targets.

        Args:
            output: the network output ``(S, B, ...)`` of the forward pass
                (``(S, L, B, ...)`` for a sequence-first network).
            target: targets ``(B, ...)`` (``(L, B, ...)``).

        Returns:
            Scalar loss.

        Raises:
            ValueError: inside a Pyro handler that would change a Pyro model's
                log-density (``poutine.scale`` with a factor other than 1,
                ``poutine.mask`` with a mask that is not ``True``, a
                ``pyro.plate`` that subsamples): computed from the outputs,
                the loss is reached by no handler (scale the returned loss
                yourself, or put the handler around :meth:`pyro_model` and
                train with Pyro's ``SVI``).
        """
        log_lik, kl, batch = self.terms_and_batch(output, target, None)
        return self.combine(log_lik, kl, output.shape[0], batch)

    def model_loss(
        self,
        model: nn.Module,
        x: Tensor | tuple[Any, ...] | list[Any],
        target: Tensor,
        *,
        samples: int | None = None,
    ) -> Tensor:
        """Run ``model`` on ``x`` and return the loss: ``loss_fn(model(x), target)``.

        With ``compile=`` on, the forward pass and the loss run as one compiled
        graph (captured on the second call of each input signature; the first
        runs eagerly), falling back to the eager path with a
        :class:`~pyrolite_bnn.compiled.CompileFallbackWarning` where the network
        cannot be compiled. Without it, this is exactly
        ``self(model(x, samples=samples), target)``.

        Args:
            model: the network (or its ``DistributedDataParallel`` wrapper).
            x: its input, or a tuple (or list) of its positional inputs,
                ``model(*x)`` (see :func:`~pyrolite_bnn.training.fit`).
            target: targets ``(B, ...)``.
            samples: particle count (default ``model.samples``).

        Returns:
            Scalar loss.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> net = bnn.VILinear(4, 3)
            >>> loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=100)
            >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
            >>> loss_fn.model_loss(net, x, y).shape
            torch.Size([])
        """
        refuse_reweighing_handlers()  # a compiled graph runs no terms_and_batch
        model = unwrap(model)
        check_bayesian_network(model, "model_loss needs")
        args = network_args(x)
        if self.graphs is not None and isinstance(model, VIModule):
            terms = self.graphs.terms(self, model, args, target, samples)
            if terms is not None:
                return self.combine(*terms)
        loss: Tensor = self(call_network(model, args, samples), target)
        return loss

    def terms(
        self, output: Tensor, target: Tensor, kl: KLMode | None = None
    ) -> tuple[Tensor, Tensor]:
        """The two parts of the ELBO of ``output = model(x)`` and ``target``.

        Args:
            output: the network output ``(S, B, ...)`` (``(S, L, B, ...)`` for
                a sequence-first network) of a PyTorch-style call, or a tensor
                computed from it with gradients enabled.
            target: targets ``(B, ...)`` (``(L, B, ...)``).
            kl: how to compute the KL (default: this loss's ``kl``).

        Returns:
            The sum of the log-likelihoods over particles and examples, and the
            KL of the forward pass that produced ``output`` (see ``kl=``).
        """
        log_lik, kl_value, _ = self.terms_and_batch(output, target, kl)
        return log_lik, kl_value

    def terms_and_batch(
        self, output: Tensor, target: Tensor, kl: KLMode | None = None
    ) -> tuple[Tensor, Tensor, int]:
        """:meth:`terms` and the batch size (:meth:`check_batch`), checked once.

        The three arguments of :meth:`combine` after the particle count. An
        empty batch is taken by a loss with ``heat=0`` alone, as 0 examples.

        Refused where a Pyro handler active around the call would change a
        Pyro model's log-density (``poutine.scale``, ``poutine.mask``, a
        subsampling ``pyro.plate``): it cannot reach the loss
        (:func:`~pyrolite_bnn._reweighing_handlers.refuse_reweighing_handlers`).
        """
        refuse_reweighing_handlers()
        record = self._record_for(output)
        examples = output.shape[batch_dim(output, record.sequence_batch)]
        if self.heat == 0 and examples == 0 and target.numel() == 0:
            # Its data term sums over no example: 0 (a head whose targets only
            # some examples have, on a batch where none has one); a loss with
            # the KL would weigh the batch's data by N / 0, and is refused.
            # Its targets' layout is checked as a batch's (align computes
            # nothing: torch's Independent cannot score an empty batch).
            self.predictive.align(output, target)
            batch, log_lik = 0, output.sum()
        else:
            batch = self.check_batch(output, record.sequence_batch)
            log_lik = self.predictive.log_likelihood(output, target).sum()
        self.watch_step(record, output.dtype)
        if self.heat > 0 and torch.is_grad_enabled():  # the KL pulls them
            # Layers with trainable posteriors run under torch.no_grad().
            self._no_grad_watch.check(
                record.guide_identity(), record.read_without_gradients(), output
            )
        kl_value = record.kl(self.kl if kl is None else kl)
        self._note_charge(record, kl_value, output, log_lik if batch else None)
        if (
            torch.is_grad_enabled()
            and kl_value.requires_grad
            and not output.requires_grad
            # A frozen posterior (only prior scales trained) is no detachment.
            and any(p.requires_grad for p in record.guide_parameters().values())
        ):
            raise ValueError(
                "the network output carries no gradient (its forward pass ran "
                "under torch.no_grad(), or it was detached) while the KL term "
                "does: backward() would pull the weights towards the prior only. "
                "Run the forward pass with gradients, or compute the loss under "
                "torch.no_grad() too (for evaluation)"
            )
        return log_lik, kl_value, batch

    def watch_step(self, record: ForwardRecord, dtype: torch.dtype) -> None:
        """The loss's watches of the training step of ``record``'s forward pass.

        Each warns once: an optimizer steps the torch model the network was
        converted from, the guide's parameters never change (a guide
        assigned after the optimizer was made), an optimizer's weight decay
        acts on a posterior scale, scales stored in bfloat16 never train.
        They look at the optimizers as they are now, so every call runs them,
        a compiled one too (with the record its graph was captured from).
        Called by :meth:`terms_and_batch`; ``dtype`` is the output's.
        """
        if torch.is_grad_enabled() and not is_capturing():
            self._source_watch.check(record.network)
        self._watch_guide(record)
        self._watch_decay(record)
        self._watch_precision(record, dtype)
        self._network_parameters = record.network_parameters  # for the next watch

    def __getstate__(self) -> dict[str, Any]:
        """The loss's state without the last forward pass (pickling, deepcopy).

        Between :meth:`terms` and :meth:`combine` the loss holds a method of
        the pass's record (for its likelihood watch), which holds the pass's
        draws: a copy does not need them.
        """
        state: dict[str, Any] = dict(super().__getstate__())  # type: ignore[no-untyped-call]
        state["_network_parameters"] = list
        return state

    def _note_charge(
        self,
        record: ForwardRecord,
        kl_value: Tensor,
        output: Tensor,
        log_lik: Tensor | None,
    ) -> None:
        """Note what this loss takes from ``output``; warn where the sum is wrong.

        A network with several outputs (heads) trains with one loss per head,
        ``loss_a(out["a"], ya) + loss_b(out["b"], yb)``, which is one negative
        ELBO only if the KL of the pass counts once in total and every loss
        divides by the same number. Each is warned of once per pass
        (:class:`~pyrolite_bnn._pass_charges.PassCharges`): heats that add up
        to more than 1 (``heat=1`` on each of two heads: the KL counts
        twice), and losses that divide by different numbers
        (``reduction="mean"`` with different ``dataset_size``). The same
        output (or a view of all of it) taken again, by this loss or another,
        is left alone: that is a repeated evaluation or a comparison more
        often than a sum. Only losses with gradients count; divisors only of
        data terms ``log_lik`` that ``backward`` reaches (a metric computed
        with gradients on and only read divides by what it likes; ``None``:
        an empty batch's, which is 0 at any divisor).
        """
        if not torch.is_grad_enabled() or not (
            output.requires_grad or kl_value.requires_grad
        ):
            return
        heat = self.heat if kl_value.requires_grad else 0.0
        charge = LossCharge(heat, self.dataset_size, self.reduction)
        key = (data_address(output), tuple(output.shape), output.stride())
        for message in record.charges.add(key, charge):
            warn_at_caller(message)
        if (
            log_lik is None
            or not log_lik.requires_grad
            or is_wrapped(log_lik)
            or is_capturing()
        ):
            return
        charges = record.charges

        def trained(_: Tensor) -> None:
            for message in charges.trained(key):
                warn_at_caller(message)

        log_lik.register_hook(trained)  # type: ignore[no-untyped-call]

    def combine(self, log_lik: Tensor, kl: Tensor, samples: int, batch: int) -> Tensor:
        """The loss from :meth:`terms` of an output of ``samples`` particles.

        ``batch`` is its number of examples (:meth:`check_batch`; 0 only for
        a loss with ``heat=0``, whose value is then 0). Also sets
        :attr:`last_nll` and :attr:`last_kl` (not under ``torch.func``
        transforms, whose tensors do not outlive them: those keep the values of
        the last call outside one).

        Raises:
            ValueError: if ``samples`` or ``batch`` is below 1 (a ``batch``
                of 0 is taken with ``heat=0``).
            TypeError: if either is not an integer.
        """
        check_count(samples, "samples")
        if batch != 0 or self.heat != 0:  # an empty batch: heat=0 alone
            check_count(batch, "batch")
        norm = self.dataset_size if self.reduction == "mean" else 1
        # An empty batch's data term is a sum over no example: 0, at any factor.
        data_factor = self.dataset_size / batch / samples / norm if batch else 0.0
        # Under torch.func (grad, vmap) the terms are the transform's wrappers,
        # which outlive it as unreadable, uncopyable tensors: not kept.
        if not (is_wrapped(log_lik) or is_wrapped(kl)):
            self._last_terms = (log_lik.detach(), kl.detach(), -data_factor, 1 / norm)
        self._watch_predictive()
        return kl * (self.heat / norm) - log_lik * data_factor

    @property
    def last_nll(self) -> Tensor:
        """Detached data term of the last call (same reduction as the loss).

        Calls under ``torch.func`` transforms (``grad``, ``vmap``) leave it
        as it was: the value of the last call outside one (``AttributeError``
        before any).
        """
        log_lik, _, factor, _ = self._last_call()
        return log_lik * factor

    @property
    def last_kl(self) -> Tensor:
        """Detached KL term of the last call (same reduction, before heat).

        Like :attr:`last_nll`, left as it was by calls under ``torch.func``.
        """
        _, kl, _, factor = self._last_call()
        return kl * factor

    def _last_call(self) -> tuple[Tensor, Tensor, float, float]:
        terms: tuple[Tensor, Tensor, float, float] | None = self.__dict__.get(
            "_last_terms"
        )
        if terms is None:
            raise AttributeError(
                "last_nll and last_kl are set by the first call of the loss"
            )
        return terms

    def _record_for(self, output: Tensor) -> ForwardRecord:
        _check_one_tensor(output)
        record = find_record(output)
        if self._chained(output, record):
            raise ValueError(
                "the network output was computed from the output of another "
                "forward pass (a Bayesian network called on its own, whose output "
                "went into this one): the loss would count this network's KL "
                "only, and the two passes' particles are not paired. Call both "
                "inside one network: bnn.VISequential(first, second), or a "
                "bnn.VIModule whose forward calls both. "
                "torch.utils.checkpoint.checkpoint_sequential calls a network's "
                "segments this way: checkpoint the whole network call instead, "
                "checkpoint(net, x, use_reentrant=False)"
            )
        if output.dim() < 2 or output.shape[0] != record.samples:
            raise ValueError(
                f"output of shape {tuple(output.shape)} does not keep the particle "
                f"dimension of its forward pass ({record.samples} particles) first"
            )
        return record

    def _chained(self, output: Tensor, record: ForwardRecord) -> bool:
        """Whether ``output`` also depends on another separately called network.

        Checked on the first few calls of each network, then on one call in
        ``_CHAIN_CHECK_EVERY`` (the graph walk costs as much as the network has
        operations; a training loop rarely changes how it composes its
        networks, and one that does is caught within that many steps).
        """
        if is_capturing() or not torch.is_grad_enabled():
            return False
        key = record.guide_identity()
        calls = self._chain_checks.get(key, 0)
        self._chain_checks[key] = calls + 1
        if calls >= _CHAIN_CHECKS and (calls - _CHAIN_CHECKS) % _CHAIN_CHECK_EVERY:
            return False
        return other_passes_upstream(output, record)

    def check_batch(self, output: Tensor, sequence_batch: int | None = None) -> int:
        """The batch size ``B`` of an output; refuses 0, and ``B > N`` in training.

        ``B`` is dimension 1 of ``(S, B, ...)``, or dimension 2 of a
        sequence-first network's ``(S, L, B, ...)`` when ``sequence_batch``
        (its ``B``, :attr:`ForwardRecord.sequence_batch`) says so
        (:func:`example_count`); see :meth:`check_dataset_size` for ``N``.
        """
        batch = example_count(output, sequence_batch)
        self.check_dataset_size(batch)
        return batch

    def check_dataset_size(self, batch: int) -> None:
        """Refuse a batch of more than ``dataset_size`` examples scored for training.

        The data term of a batch of ``B`` examples is scaled by ``N / B``. A
        training batch larger than ``N`` means that ``dataset_size`` is not
        the number of training examples (the number of batches, or of
        another split), which would weigh the prior wrongly: it is refused
        while gradients are enabled. Without gradients (``torch.no_grad()``,
        Pyro's ``SVI.evaluate_loss``) nothing is trained:
        an evaluation on more examples than were trained on (a validation set
        larger than the training set) is a well-defined value and is taken.
        The Pyro model run without targets scores no data and never refuses.

        Raises:
            ValueError: if ``batch > dataset_size`` with gradients enabled.
        """
        if batch > self.dataset_size and torch.is_grad_enabled():
            raise ValueError(
                f"batch of {batch} examples is larger than dataset_size="
                f"{self.dataset_size}; dataset_size must be the number of training "
                "examples. To evaluate the loss on more examples than were "
                "trained on (a validation set), compute it under torch.no_grad()"
            )

    def _watch_predictive(self) -> None:
        """Warn once if the likelihood's parameters are never updated."""
        # Not kept after the call: the record holds the pass's draws, which
        # the loss would keep alive (and a loss holding them cannot be copied).
        related, self._network_parameters = self._network_parameters, list
        if not torch.is_grad_enabled():
            return
        params = {
            name: p for name, p in self.predictive.named_parameters() if p.requires_grad
        }
        if self._watches["predictive"].unchanged(params, related=related):
            warn_at_caller(
                f"the parameters of {type(self.predictive).__name__} (e.g. a learned "
                "noise scale) have not changed in "
                f"{UNTRAINED_STEPS} optimizer steps: pass loss_fn.parameters() to the "
                "optimizer as well as model.parameters()"
            )

    def _watch_decay(self, record: ForwardRecord) -> None:
        """Warn once per optimizer and parameter that decays a scale.

        The scales (:func:`~pyrolite_bnn.decay.scale_parameters`) of the
        guide and the priors that drew this pass's weights, and of this loss
        (the likelihood's), named as ``named_parameters()`` of the network
        and of this loss name them: :func:`~pyrolite_bnn.decay.decay_groups`
        keeps the decay off every one of them.
        """
        if not torch.is_grad_enabled() or is_capturing():
            return

        def drawing() -> list[Tensor]:
            return [
                *record.guide_parameters().values(),
                *record.prior_parameters().values(),
            ]

        self._check_decay(record.network, drawing, record.network_parameters)

    def watch_pyro_run(self, network: nn.Module) -> None:
        """The loss's watch of weight decay, for a run of its Pyro model.

        :meth:`pyro_model`'s model calls it on every run with gradients
        (Pyro's ``SVI``, any ELBO, whatever guide the network has), as
        :meth:`watch_step` runs it for a PyTorch-style pass: a ``pyro.optim``
        optimizer whose ``weight_decay`` acts on a scale of the network's
        guide, of its priors or of this loss's likelihood gets the same one
        warning, recommending :func:`~pyrolite_bnn.decay.decay_optim_args`.
        Its optimizers (one per parameter) are found as they take their first
        step; until one does, or changes its groups, a run costs a comparison.

        Args:
            network: the network the Pyro model runs; its guide (``net.guide``:
                the generated one or an assigned one) drew the weights.
        """
        if not torch.is_grad_enabled() or is_capturing():
            return

        def drawing() -> list[Tensor]:
            guide = guide_of(unwrap(network))
            return [
                *guide.weight_parameters(),
                *prior_parameters(guide.variables()).values(),
            ]

        self._check_decay(network, drawing, network.parameters)

    def _check_decay(
        self,
        network: nn.Module | None,
        drawing: Callable[[], list[Tensor]],
        network_parameters: Callable[[], Iterable[Tensor]],
    ) -> None:
        """Check the optimizers for decay on the scales that drew the weights.

        Args:
            network: the network that ran (``None`` once it is gone).
            drawing: returns the parameters of the guide and priors that drew
                its weights: of the network's scales, only those count (an
                assigned guide leaves the layers' posteriors unused: no
                gradient, no decay).
            network_parameters: returns the network's parameters.
        """

        def scales() -> dict[str, Tensor]:
            found = {} if network is None else scale_parameters(network)
            used = {id(p) for p in drawing()}
            found = {name: p for name, p in found.items() if id(p) in used}
            found.update(scale_parameters(self))
            return found

        self._decay_watch.check(scales, network_parameters)

    def _watch_precision(self, record: ForwardRecord, dtype: torch.dtype) -> None:
        """Warn once per network whose posterior scales train in bfloat16.

        The output's ``dtype`` is part of what the watch remembers: a network
        converted to bfloat16 is looked at again.
        """
        if not torch.is_grad_enabled() or is_capturing() or not record.training():
            return

        def scales() -> dict[str, Tensor]:
            network = record.network
            declared = (
                set()
                if network is None
                else {id(p) for p in scale_parameters(network).values()}
            )
            found = {
                name: parameter
                for name, parameter in record.guide_parameters().items()
                if id(parameter) in declared or is_scale_parameter(name)
            }
            found.update(record.positive_parameters())
            return found

        self._precision_watch.check((record.guide_identity(), dtype), scales)

    def _watch_guide(self, record: ForwardRecord) -> None:
        """Warn once if the guide that drew the weights is never updated."""
        if not torch.is_grad_enabled() or is_capturing() or not record.training():
            return
        watch, key = self._watches["guide"], record.guide_identity()
        if watch.finished(key):
            return
        params = record.guide_parameters()
        if watch.unchanged(params, key, record.network_parameters):
            if self._source_watch.warned_about(record.network):
                return  # said already: the optimizer holds the torch model's
            example, network = next(iter(params)), record.network
            if network is not None:  # as named_parameters() names it
                example = _parameter_paths(network).get(id(params[example]), example)
            if not (isinstance(network, VIModule) and network.guide.inner is not None):
                remedy = (  # the default guide: the posteriors' own parameters
                    "no optimizer that steps holds them: create the optimizer "
                    "from this network's parameters (torch.optim.Adam("
                    "model.parameters(), ...)); bnn.convert returns a new model, "
                    "so an optimizer made for the torch model holds none of them"
                )
            else:
                remedy = (
                    "create the optimizer after assigning model.guide "
                    "(torch.optim.Adam(model.parameters(), ...)), so that it "
                    "holds the guide's parameters"
                )
            warn_at_caller(
                f"the guide's parameters (e.g. {example!r}) get gradients but have "
                f"not changed in {UNTRAINED_STEPS} optimizer steps: {remedy}"
            )

    def pyro_model(self, model: nn.Module) -> PyroModel:
        """The full Pyro model of ``model`` under this likelihood.

        The returned callable ``pyro_model(x, y=None, samples=None)`` runs the
        network in the particle plate and observes ``y`` at site ``"obs"`` inside
        ``pyro.plate("data", N)`` subsampled to the batch (scale ``N / B``).
        Use it with ``model.guide`` in ``pyro.infer.SVI``, ``Predictive`` or
        ``MCMC``. ``x`` is the network's input, or a tuple (or list) of its
        positional inputs, run as ``model(*x)`` (as in
        :func:`~pyrolite_bnn.training.fit`). Model and guide take the particle
        count from the ``samples=`` keyword (which Pyro passes to both) or else
        from ``model.samples``.
        Replayed against a guide's trace (Pyro's ELBOs replay the model against
        the guide's draws) the model runs as many particles as the guide drew.

        The site ``"obs"`` draws targets in their own layout, batch shape
        ``(S, B)``: a scalar-target network's ``(S, B, 1)`` output draws
        ``(S, B)`` values (``Predictive`` returns ``(num_samples, S, B)``). A
        target conditioned on the site by name (``poutine.condition(pyro_model,
        data={"obs": y})``) is scored exactly as ``pyro_model(x, y)`` scores
        ``y``, in every layout the likelihood accepts (``(B,)`` or ``(B, 1)``
        for a scalar target); another shape is refused. Targets are scored
        with the likelihood's own ``log_likelihood``
        (:meth:`~pyrolite_bnn.PredictiveDistribution.pyro_log_likelihood`),
        as the loss scores them: entries it marks missing (``missing="nan"``)
        add nothing, and a subclass's redefinition is followed by Pyro's
        ELBOs, ``MCMC`` and ``Predictive`` alike. A batch larger than
        ``dataset_size`` is refused only where targets are scored with
        gradients enabled (see :meth:`check_dataset_size`): without targets
        (``Predictive`` on a test set of any size) it runs.

        MCMC needs one particle: the chain's states are the posterior samples,
        and ``S`` particles would sample ``S`` networks from a posterior
        tempered by ``1/S``. Without ``samples=``, a model first run by an
        initialisation handler (``pyro.infer.mcmc.util.initialize_model``,
        which ``NUTS``/``HMC`` use, runs it under an
        :class:`~pyro.infer.autoguide.initialization.InitMessenger`) therefore
        uses one particle in that run and every later run (the potential
        energy, ``Predictive`` on the chain's draws). ``mcmc.run(x, y,
        samples=1)`` says the same explicitly; an explicit ``samples=`` above
        1 there is refused (more posterior draws come from the chain's
        ``num_samples``). Elsewhere an explicit ``samples=`` is obeyed, except
        against a replayed guide trace (above). SVI with
        ``model.guide`` on the same callable still runs the guide's particles
        after MCMC; ``Predictive(pyro_model, guide=model.guide)`` there needs
        ``samples=`` passed explicitly (it conditions the model on the guide's
        draws instead of replaying them) and says so otherwise.

        Importance sampling (``pyro.infer.Importance``, ``CSIS``,
        ``WeighedPredictive``) weighs each draw by its whole trace as MCMC
        does, so it needs one network per draw too: ``Importance(pyro_model,
        guide=model.guide, num_samples=n).run(x, y, samples=1)``; more
        particles are refused
        (each draw's log weight would be the mean of its particles' log
        weights, a tempered evidence).

        The model is refused at call time while ``heat`` is not 1, and when an
        autoguide built on it (instead of ``model.prior_model``) runs it.

        Args:
            model: the network.

        Returns:
            The Pyro model callable, a :class:`PyroModel` (its ``loss_fn`` and
            ``network`` let :class:`~pyrolite_bnn.Trace_ELBO` take the fast
            path).

        Raises:
            TypeError: if ``model`` holds no Bayesian layers.
            ValueError: if this loss's ``heat`` is not 1.
        """
        check_bayesian_network(model, "pyro_model needs")
        if self.heat != 1.0:
            raise ValueError(
                f"pyro_model needs a loss with heat=1.0, but this loss has heat="
                f"{self.heat:g}: the Pyro model is the untempered model, and the KL "
                "heat only applies to the PyTorch-style loss. Use a loss with "
                "heat=1.0 for Pyro inference"
            )
        return PyroModel(self, model)


def batch_dim(output: Tensor, sequence_batch: int | None) -> int:
    """Where the examples of a network output are: 1, or 2 for ``(S, L, B, ...)``.

    ``sequence_batch`` is ``B`` for a sequence-first network (``None``
    otherwise: its output is ``(S, B, ...)``), as the forward pass recorded it
    (:attr:`ForwardRecord.sequence_batch <pyrolite_bnn.record.ForwardRecord>`).
    Such a network's output is ``(S, L, B, ...)``, so the examples are in
    dimension 2, whatever ``L``: where ``L == B`` the sizes cannot tell the
    layout, and the network's says it (the per-example quantities, a data
    plate or the log predictive density of each sequence, differ). Only an
    output that was permuted to ``(S, B, L, ...)`` after the call, which the
    sizes show (``B`` in dimension 1, not in dimension 2), has its examples in
    dimension 1 again.

    Example:
        >>> import torch
        >>> batch_dim(torch.zeros(10, 7, 3, 2), sequence_batch=3)
        2
        >>> batch_dim(torch.zeros(10, 3, 3, 2), sequence_batch=3)  # L == B
        2
        >>> batch_dim(torch.zeros(10, 3, 7, 2), sequence_batch=3)  # permuted
        1
        >>> batch_dim(torch.zeros(10, 3, 7, 2), sequence_batch=None)
        1
    """
    if sequence_batch is None or output.dim() < 3:
        return 1
    if output.shape[2] != sequence_batch and output.shape[1] == sequence_batch:
        return 1  # (S, B, L, ...): permuted after the call
    return 2


def example_count(output: Tensor, sequence_batch: int | None) -> int:
    """The number of examples ``B`` of a network output (at :func:`batch_dim`).

    Raises:
        TypeError: if ``output`` is not one tensor.
        ValueError: if it holds no example.

    Example:
        >>> import torch
        >>> example_count(torch.zeros(10, 7, 3, 2), sequence_batch=3)
        3
    """
    _check_one_tensor(output)
    batch = output.shape[batch_dim(output, sequence_batch)]
    if batch == 0:
        raise ValueError(
            f"the batch is empty (output of shape {tuple(output.shape)}: 0 "
            "examples); the loss needs at least one example. A loss with heat=0 "
            "(the data term of a head whose targets only some examples have, "
            "while another loss takes the KL) scores an empty batch as 0; one "
            "that takes the KL would weigh its data by dataset_size / 0: leave "
            "such a batch out"
        )
    return batch


def batch_first_layout(
    output: Tensor, target: Tensor | None, sequence_batch: int | None
) -> tuple[Tensor, Tensor | None]:
    """Output ``(S, B, ...)`` and target ``(B, ...)``, whatever the network's layout.

    A sequence-first network's ``(S, L, B, ...)`` output and ``(L, B, ...)``
    target (see :func:`batch_dim`) are permuted so that each example is one
    sequence, as per-example quantities (a data plate, the log predictive
    density of the particle mixture) need.

    Example:
        >>> import torch
        >>> out, y = batch_first_layout(torch.zeros(10, 7, 3, 2), torch.zeros(7, 3), 3)
        >>> out.shape, y.shape
        (torch.Size([10, 3, 7, 2]), torch.Size([3, 7]))
    """
    if batch_dim(output, sequence_batch) == 2:
        return output.movedim(2, 1), None if target is None else target.movedim(1, 0)
    return output, target


class PyroModel:
    """The full Pyro model of a network under a likelihood (``loss_fn.pyro_model``).

    ``pyro_model(x, y=None, samples=None)`` runs the network in the particle
    plate and observes ``y`` at site ``"obs"`` inside ``pyro.plate("data", N)``
    subsampled to the batch; see :meth:`KullbackLeiblerLoss.pyro_model`.

    Args:
        loss_fn: the loss whose likelihood and ``dataset_size`` it uses.
        network: the network.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> net = bnn.VILinear(3, 2)
        >>> loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=10)
        >>> pyro_model = loss_fn.pyro_model(net)
        >>> pyro_model.network is net, pyro_model.loss_fn is loss_fn
        (True, True)
        >>> pyro_model(torch.randn(4, 3), samples=5).shape
        torch.Size([5, 4, 2])
    """

    def __init__(self, loss_fn: KullbackLeiblerLoss, network: nn.Module) -> None:
        self.loss_fn = loss_fn
        self.network = network
        # Set when the model is first run by an initialisation handler without
        # samples= (MCMC's initialize_model): from then on one particle is the
        # default, for the potential-energy runs that follow as well.
        self.one_particle = False

    def __call__(
        self, x: Any, y: Tensor | None = None, samples: int | None = None
    ) -> Tensor:
        """Run the model on inputs ``x`` (observing targets ``y`` if given).

        Raises:
            ValueError: if ``loss_fn.heat`` is not 1 (the Pyro model is
                untempered), if MCMC initialises it or importance sampling
                weighs it with more than one particle (a tempered posterior),
                or if a weight site's value (set by a handler) has a shape the
                particle plate cannot use.
            TypeError: if an autoguide built on this model (instead of
                ``model.prior_model``) runs it.
        """
        check_pyro_call()
        self._check_call()
        self.loss_fn.watch_pyro_run(self.network)
        switched = False
        if samples is None:
            self.one_particle = self.one_particle or initialising_inference()
            if self.one_particle:
                samples, switched = 1, True
        network, loss_fn = self.network, self.loss_fn
        count = (
            getattr(network, "samples", DEFAULT_SAMPLES) if samples is None else samples
        )
        refuse_particles_under_mcmc(network, count)
        args = network_args(x)
        state, device = prepare(network, args, {}, count)
        with local_params(), open_particle_plate(state, device) as state:
            if samples is not None and not switched and state.samples != samples:
                raise ValueError(
                    f"this Pyro model was called with samples={samples}, but it "
                    f"replays a guide that drew {state.samples} particles: give model "
                    "and guide the same count, as a keyword (net.guide takes samples= "
                    "as a keyword only, so a positional one, svi.step(x, y, "
                    f"{samples}), reaches the model alone; svi.step(x, y, "
                    f"samples={samples}) reaches both)"
                )
            try:
                output: Tensor = run_sites(network, state, args, {})
            except TypeError:
                check_unpacked_inputs(network, args)
                raise
            except SiteShapeError as error:
                if not switched:
                    raise
                raise SiteShapeError(
                    f"{error}. This Pyro model runs one particle since MCMC's "
                    "initialisation ran it without samples= (see "
                    "KullbackLeiblerLoss.pyro_model), and these values are not "
                    "those of one particle (net.guide draws net.samples particles): "
                    "pass samples= explicitly, the same to model and guide, e.g. "
                    "Predictive(model, guide=net.guide, num_samples=n)(x, samples=k), "
                    "or use a new loss_fn.pyro_model(net)"
                ) from error
            _check_observed_output(output)
            sequence_batch = state.sequence_batch()
            batch = example_count(output, sequence_batch)
            if y is not None:  # now; a target conditioned by name, when scored
                loss_fn.check_dataset_size(batch)
            # The data plate is at dim -1 of the batch shape (S, B): a sequence
            # of a sequence-first network is one example (its positions event).
            observed, _ = batch_first_layout(output, None, sequence_batch)

            def score(target: Tensor) -> Tensor:
                """``log p(target | output)``, ``(S, B)``: the data term of ``y``.

                The likelihood's own ``log_likelihood``, as the loss takes it
                (missing entries, a subclass's redefinition), its targets
                checked under Pyro's validation switch as Pyro checks an
                observed site's value.
                """
                if y is None:
                    loss_fn.check_dataset_size(batch)
                _, target_layout = batch_first_layout(output, target, sequence_batch)
                assert target_layout is not None
                with checks_under_pyro_validation():
                    return loss_fn.predictive.pyro_log_likelihood(
                        observed, target_layout
                    )

            site = ObservationSite(
                loss_fn.predictive.target_distribution(observed), score
            )
            with pyro.plate(
                "data",
                loss_fn.dataset_size,
                subsample=torch.arange(batch, device=output.device),
                dim=-1,
            ):
                pyro.sample("obs", site, obs=y)
        return output

    def _check_call(self) -> None:
        """Refuse a tempered loss and an autoguide built on this model."""
        heat = self.loss_fn.heat
        if heat != 1.0:
            raise ValueError(
                f"loss_fn.heat is {heat:g}, but the Pyro model from "
                "loss_fn.pyro_model is untempered and needs heat=1.0 (heat was "
                "changed after pyro_model was created; the KL heat only applies to "
                "the PyTorch-style loss): set loss_fn.heat = 1.0 for Pyro "
                "inference, or use a separate loss with heat=1.0"
            )
        guide = autoguide_running_model()
        if guide is not None:
            name = type(guide).__name__
            raise TypeError(
                f"{name} was built on loss_fn.pyro_model(net), the full Pyro model "
                "with the data; an autoguide covers the weights of one particle: "
                "build it on the network's weight model, model.prior_model, and "
                f"assign it, net.guide = {name}(net.prior_model, "
                "init_loc_fn=net.init_loc_fn), then pass net.guide as the guide "
                "(SVI(pyro_model, net.guide, ...))"
            )


def _parameter_paths(module: nn.Module) -> dict[int, str]:
    """The name ``module.named_parameters()`` gives each parameter, by ``id``."""
    return {id(parameter): name for name, parameter in module.named_parameters()}
