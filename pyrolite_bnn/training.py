"""A training loop for Bayesian networks: ``fit(model, loss_fn, train_loader, epochs)``.

:func:`fit` runs the PyTorch-style loop ``out = model(x)``,
``loss = loss_fn(out, y)``, ``backward``, ``step`` and adds what a variational
network usually needs: KL annealing (:func:`linear_warmup`), validation with the
log predictive density, early stopping with restoration of the best state,
gradient clipping, atomic checkpoints and a guard against NaN/Inf losses and
gradients.

Epochs and steps are counted from 0 everywhere (``heat_schedule(epoch)``,
callbacks, checkpoints, error messages); the progress display shows
``epoch 1/E`` for the first epoch. A run resumed from a checkpoint
(``initial_epoch=``) goes on counting where the checkpoint left off.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
    default_collate,
)

from pyrolite_bnn._distributed import Ranks, set_epoch, unwrap
from pyrolite_bnn._fit_guard import NaNGuard, StepStats, add_to_message
from pyrolite_bnn._fit_modes import ModuleModes
from pyrolite_bnn._fit_progress import Progress
from pyrolite_bnn._forward import call_network, network_args
from pyrolite_bnn._network import check_bayesian_network
from pyrolite_bnn._output_heads import describe_heads
from pyrolite_bnn._source_watch import steps_convert_source
from pyrolite_bnn._state import clone_state
from pyrolite_bnn._step_draws import SameDraws
from pyrolite_bnn._validation import (
    check_bool,
    check_count,
    check_finite_inputs,
    check_heat,
    check_integer,
    check_optimizer_holds,
    check_positive,
    held_parameter_ids,
    reloaded_hint,
)
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.checkpoint import check_checkpoint_path, save_checkpoint
from pyrolite_bnn.distributions.predictive import PredictiveDistribution
from pyrolite_bnn.loss import KullbackLeiblerLoss, batch_first_layout
from pyrolite_bnn.module import VIModule
from pyrolite_bnn.record import find_record

__all__ = ["History", "fit", "linear_warmup"]


@dataclass
class History:
    """Per-epoch record of a :func:`fit` run.

    The lists hold one value per epoch run by the call, the first for epoch
    ``initial_epoch`` (0 unless :func:`fit` resumed a run); the epoch numbers
    (``epochs_run``, ``best_epoch``) count the resumed epochs too.

    Attributes:
        loss: mean over the epoch's batches of the training loss (the negative
            ELBO divided by ``N`` with the default ``reduction="mean"``, with the
            KL term multiplied by that epoch's heat).
        nll: mean over batches of ``loss_fn.last_nll`` (the data term).
        kl: mean over batches of ``loss_fn.last_kl`` (the KL term before heat).
        val_loss: per epoch, the mean negative log predictive density of the
            validation examples, ``-log(1/S sum_s p(y | x, w_s))`` (nats per
            example); empty without ``val_loader``.
        heat: ``loss_fn.heat`` during each epoch.
        epochs_run: number of completed epochs (with ``initial_epoch``: the
            index of the last completed epoch plus one).
        best_epoch: epoch with the lowest ``val_loss`` after any
            :func:`linear_warmup` (``None`` without validation, or when
            every epoch run was in the warm-up).
        stopped_early: whether early stopping or a callback ended the run
            before ``epochs``.
    """

    loss: list[float] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    heat: list[float] = field(default_factory=list)
    epochs_run: int = 0
    best_epoch: int | None = None
    stopped_early: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The history as a plain dictionary (lists copied)."""
        return asdict(self)


@dataclass(frozen=True)
class _LinearWarmup:
    epochs: int
    start: float
    end: float

    def __call__(self, epoch: int) -> float:
        if self.epochs == 0 or epoch >= self.epochs:
            return self.end
        fraction = max(epoch, 0) / self.epochs
        return self.start + (self.end - self.start) * fraction


def linear_warmup(
    epochs: int, start: float = 0.0, end: float = 1.0
) -> Callable[[int], float]:
    """KL annealing schedule: heat rises linearly from ``start`` to ``end``.

    The returned callable gives ``start + (end - start) * epoch / epochs`` for
    ``epoch < epochs`` and ``end`` from epoch ``epochs`` on; pass it to
    :func:`fit` as ``heat_schedule``.

    Args:
        epochs: length of the warm-up in epochs (``0``: always ``end``).
        start: heat of epoch 0.
        end: heat after the warm-up.

    Returns:
        A callable ``epoch -> heat``.

    Raises:
        TypeError: if ``epochs`` is not an integer.
        ValueError: if ``epochs < 0`` or a heat is negative or not finite.

    Example:
        >>> from pyrolite_bnn.training import linear_warmup
        >>> schedule = linear_warmup(4)
        >>> [schedule(epoch) for epoch in range(6)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    epochs = check_count(epochs, "epochs", minimum=0)
    return _LinearWarmup(epochs, check_heat(start, "start"), check_heat(end, "end"))


# --------------------------------------------------------------------- helpers
# Keys under which a mapping batch holds the input and the target.
_INPUT_KEYS = ("x", "input")
_TARGET_KEYS = ("y", "target")
_BATCH_FORMATS = (
    "(x, y) pairs, or mappings with the input under 'x' or 'input' and the "
    "target under 'y' or 'target'"
)


def _unpack(batch: Any, loader: str, where: str) -> tuple[Any, Any]:
    if isinstance(batch, Mapping):
        return _from_mapping(batch, _INPUT_KEYS, loader, where), _from_mapping(
            batch, _TARGET_KEYS, loader, where
        )
    try:
        x, y = batch
    except (TypeError, ValueError):
        raise ValueError(
            f"{loader} must yield {_BATCH_FORMATS}; {where} gave a "
            f"{type(batch).__name__}"
        ) from None
    return x, y


def _from_mapping(
    batch: Mapping[Any, Any], keys: tuple[str, str], loader: str, where: str
) -> Any:
    present = [key for key in keys if key in batch]
    if len(present) != 1:
        found = "both" if present else "neither"
        raise ValueError(
            f"{loader} must yield {_BATCH_FORMATS}; {where} gave a mapping with "
            f"{found} of {keys[0]!r} and {keys[1]!r} (keys: "
            f"{', '.join(repr(key) for key in batch)})"
        )
    return batch[present[0]]


@torch.no_grad()
def _validation_nll(
    model: nn.Module, loss_fn: KullbackLeiblerLoss, loader: Iterable[Any], ranks: Ranks
) -> float:
    """Mean negative log predictive density per example over ``loader``.

    Per example with a target: one whose target entries the likelihood marks
    all missing (:meth:`~pyrolite_bnn.PredictiveDistribution.observed`) adds
    nothing and is not counted, so that the value is that of the data
    without them. Under ``torch.distributed`` the sums and counts of all
    ranks are added, so every rank gets the same value whether its
    ``loader`` holds its shard or the whole validation set. Every module of
    ``model`` is back in its own mode afterwards (a sub-module in ``eval()``
    under a training root too).
    """
    modes = ModuleModes(model)
    model.eval()
    total = 0.0
    count = 0
    batches = 0
    try:
        for step, batch in enumerate(loader):
            x, y = _unpack(batch, "val_loader", f"batch {step}")
            output = call_network(model, network_args(x), None)
            output, y = batch_first_layout(  # one example per sequence
                output, y, find_record(output).sequence_batch
            )
            assert y is not None
            log_mean = loss_fn.predictive.mixture_log_likelihood(output, y)
            total -= float(log_mean.sum())
            count += _examples_with_targets(loss_fn.predictive, y)
            batches += 1
    finally:
        modes.restore()
    summed = ranks.sum(torch.tensor([total, count, batches], dtype=torch.float64))
    total, count, batches = summed[0].item(), int(summed[1].item()), int(summed[2])
    if batches == 0:
        raise ValueError(f"val_loader yielded no batches{_dropped(loader)}")
    if count == 0:
        raise ValueError(
            "val_loader's targets are all missing (the likelihood's observed() "
            "marks every entry missing: NaN with missing='nan', or its "
            "ignore_index): there is no validation NLL to compute; give "
            "validation examples with targets"
        )
    return total / count


def _examples_with_targets(likelihood: PredictiveDistribution, target: Tensor) -> int:
    """How many examples of ``target`` ``(B, ...)`` have an observed entry."""
    keep = likelihood.observed(target)
    if keep is None:
        return int(target.shape[0])
    if keep.dim() > 1:  # an example has several entries: any observed one
        keep = keep.flatten(1).any(1)
    return int(keep.sum())


def _dropped(loader: object) -> str:
    """Why a loader without batches had none, if ``drop_last`` explains it.

    A ``DataLoader`` (or its ``batch_sampler``) with ``drop_last=True`` and
    fewer examples than one batch drops its only, partial batch. ``""`` for
    any other loader.
    """
    batches = getattr(loader, "batch_sampler", None)
    if not (isinstance(loader, DataLoader) and getattr(batches, "drop_last", False)):
        return ""
    size = getattr(batches, "batch_size", None)
    examples = _length(getattr(batches, "sampler", None))
    if examples is None or not isinstance(size, int) or examples >= size:
        return ""  # not the cause (an exhausted stream, a sampler without length)
    return (
        f": it has drop_last=True and fewer examples than one batch ({examples} "
        f"examples, batch_size={size}), so "
        "its only, partial batch is dropped; use drop_last=False or a smaller "
        "batch_size"
    )


def _check_val_loader(
    val_loader: Iterable[Any], predictive: PredictiveDistribution, ranks: Ranks
) -> None:
    """Refuse validation data that the first validation pass would refuse.

    Checked before the first epoch, so that the error does not come after a
    whole epoch of training, without iterating a loader: a ``val_loader``
    whose ``len`` is 0 (on every rank: under ``torch.distributed`` a rank may
    hold an empty shard) yields no batches; batches held in memory (a list or
    tuple of batches, or a ``DataLoader`` reading every row of a
    two-tensor ``TensorDataset``) are unpacked and, with validation on, their
    floating tensors checked for NaN/Inf as the validation pass checks them:
    the inputs as the network's call does, the targets as ``predictive``
    does (:meth:`~PredictiveDistribution.check_finite_target`: the entries
    it marks missing are not read). Other loaders are left to the validation
    pass (iterating them would read their data once more, and a
    ``DataLoader``'s iterator draws a seed from the global generator, which
    would change the training draws).

    Raises:
        ValueError: naming the batch (on every rank, if one rank's is refused).
    """
    try:
        empty = len(val_loader) == 0  # type: ignore[arg-type]
    except Exception:  # no length: an iterable, a __len__ that raises
        empty = False
    if ranks.count(empty) == ranks.size:
        dropped = _dropped(val_loader)
        raise ValueError(
            f"val_loader yields no batches{dropped}"
            if dropped
            else "val_loader yields no batches (it is empty): give fit validation "
            "data, or no val_loader"
        )
    error: ValueError | None = None
    try:
        for where, x, y in _batches_in_memory(val_loader):
            check_finite_inputs(network_args(x), {}, f"val_loader's {where}")
            if isinstance(y, Tensor):
                predictive.check_finite_target(y, f"the target of val_loader's {where}")
    except ValueError as caught:
        error = caught
    if ranks.any(error is not None):
        if error is not None:
            raise error
        raise ValueError("another rank's val_loader was refused (see its error)")


def _batches_in_memory(loader: Iterable[Any]) -> Iterator[tuple[str, Any, Any]]:
    """``(where, x, y)`` of each batch of ``loader`` held in memory, unpacked.

    A list or tuple gives its batches; a ``DataLoader`` that reads every row
    of a ``TensorDataset(x, y)`` in batches (a sequential or random sampler
    without replacement, the default collation, ``drop_last=False``) gives
    the data set's two tensors as one batch. Any other loader gives nothing.
    """
    if isinstance(loader, list | tuple):
        for step, batch in enumerate(loader):
            x, y = _unpack(batch, "val_loader", f"batch {step}")
            yield f"batch {step}", x, y
        return
    if not isinstance(loader, DataLoader):
        return
    data, sampler = loader.dataset, loader.sampler
    every_row = isinstance(sampler, SequentialSampler) or (
        isinstance(sampler, RandomSampler)
        and not sampler.replacement
        and sampler.num_samples == len(data)  # type: ignore[arg-type]
    )
    if (
        isinstance(data, TensorDataset)
        and len(data.tensors) == 2
        and every_row
        and type(loader.batch_sampler) is BatchSampler
        and not loader.drop_last
        and loader.collate_fn is default_collate
    ):
        yield "data set", data.tensors[0], data.tensors[1]


def _check_arguments(
    loss_fn: object,
    epochs: int,
    initial_epoch: int,
    val_loader: Iterable[Any] | None,
    clip_grad_norm: float | None,
    early_stopping_patience: int | None,
    heat_schedule: Callable[[int], float] | None,
) -> tuple[int, int]:
    """Refuse invalid arguments; return ``epochs`` and ``initial_epoch`` as ints."""
    if not isinstance(loss_fn, KullbackLeiblerLoss):
        raise TypeError(
            "fit needs a bnn.KullbackLeiblerLoss as loss_fn (it sets the loss's "
            "heat, reads its data and KL terms and validates with its "
            f"likelihood), got {type(loss_fn).__name__}"
            + reloaded_hint(loss_fn, KullbackLeiblerLoss)
        )
    epochs = check_count(epochs, "epochs", minimum=0)
    start = check_integer(initial_epoch, "initial_epoch")
    if not 0 <= start <= epochs:
        raise ValueError(
            f"initial_epoch must be an integer in [0, epochs={epochs}], got "
            f"{initial_epoch!r}"
        )
    if clip_grad_norm is not None:
        check_positive(clip_grad_norm, "clip_grad_norm")
    if early_stopping_patience is not None:
        check_count(early_stopping_patience, "early_stopping_patience")
        if val_loader is None:
            raise ValueError(
                "early_stopping_patience needs a val_loader: early stopping "
                "monitors the validation loss"
            )
    if heat_schedule is not None and not callable(heat_schedule):
        raise TypeError("heat_schedule must be a callable epoch -> heat")
    if (
        isinstance(heat_schedule, _LinearWarmup)
        and heat_schedule.start != heat_schedule.end
        and heat_schedule.epochs >= epochs > 0
    ):
        warn_at_caller(
            f"fit: the heat warm-up of {heat_schedule.epochs} epochs is not over "
            f"within the run's {epochs}: training never reaches heat "
            f"{heat_schedule.end:g} (the ELBO), and loss_fn.heat stays at "
            f"{heat_schedule(epochs - 1):g} afterwards; warm up over fewer epochs",
            UserWarning,
        )
    return epochs, start


def _check_dataset_size(
    loss_fn: KullbackLeiblerLoss, train_loader: object, ranks: int
) -> None:
    """Warn when the loss's ``dataset_size`` is not the loader's number of examples.

    A map-style ``DataLoader`` knows its data set's length; ``dataset_size``
    equal to neither it nor a sampler's length (the number of batches,
    another split's size) weights the KL by the wrong ``1/N``, silently. A
    sampler that draws part of the data set (``SubsetRandomSampler``, a list
    of indices, also inside a ``batch_sampler``: the labelled part of an
    active-learning pool) trains on that part: its length is ``N``, and the
    data set's length (the pool's) is named as the mistake. A
    ``RandomSampler`` or ``WeightedRandomSampler`` of fewer draws than
    examples subsamples the whole data set each epoch: either length is
    accepted. A ``DistributedSampler``'s length is one rank's share: its data
    set's length counts instead, and ``dataset_size`` equal to a share (the
    sampler's, or ``ceil(N / ranks)`` for a loader ``fit`` shards over
    ``ranks`` processes) is named as the per-rank mistake. Other iterables,
    and loaders whose items are whole batches (``batch_size=None``), are not
    checked.
    """
    if not isinstance(train_loader, torch.utils.data.DataLoader):
        return
    batch_sampler = train_loader.batch_sampler
    if batch_sampler is None:  # batch_size=None: every item is a whole batch
        return
    subset = _subset_sampled(train_loader)
    if subset is not None:
        _check_subset_size(loss_fn, train_loader, *subset)
        return
    sizes: set[int] = set()
    shares: set[int] = set()
    for source in (
        train_loader.dataset,
        train_loader.sampler,
        getattr(batch_sampler, "sampler", None),
    ):
        if isinstance(source, torch.utils.data.DistributedSampler):
            shares.add(len(source))
            source = source.dataset
        size = _length(source)
        if size is None:  # no length: iterable data, a __len__ that raises
            continue
        sizes.add(size)
        if ranks > 1:
            shares.add(math.ceil(size / ranks))
    if not sizes or loss_fn.dataset_size in sizes:
        return
    examples = max(sizes)
    advice = (
        f"{loss_fn.dataset_size} is one rank's share of the data under "
        "torch.distributed; dataset_size is the global number of training "
        "examples (len(sampler.dataset) for a DistributedSampler)"
        if loss_fn.dataset_size in shares
        else "Build the loss with dataset_size=len(train_loader.dataset), the "
        "number of training examples, not batches"
    )
    warn_at_caller(
        f"fit: loss_fn.dataset_size is {loss_fn.dataset_size} but train_loader "
        f"holds {examples} examples: the KL term is weighted as if the data set "
        f"had {loss_fn.dataset_size} (a KL {examples / loss_fn.dataset_size:.3g} "
        f"times as strong as the ELBO's). {advice}",
        UserWarning,
    )


def _length(source: object) -> int | None:
    """``len(source)``, or ``None`` for an object without a (working) length."""
    try:
        return len(source)  # type: ignore[arg-type]
    except Exception:  # no length, or a __len__ that raises
        return None


def _picks_a_part(sampler: object) -> bool:
    """Whether ``sampler`` trains on a fixed part of its data set.

    A ``SubsetRandomSampler`` (active learning's labelled part of a pool) or
    a sequence of indices given as the sampler. Other samplers with fewer
    draws than examples (``RandomSampler(num_samples=...)``, a
    class-balancing sampler drawing with replacement) may reach every
    example: the training set is then the whole data set, and which one a
    user's sampler means cannot be told, so it is left to them.
    """
    return isinstance(sampler, torch.utils.data.SubsetRandomSampler | Sequence)


def _subset_sampled(loader: DataLoader[Any]) -> tuple[int, str, str] | None:
    """The part of its data set ``loader`` trains on, if its sampler picks one.

    Returns:
        ``(examples, expression, kind)``: the sampler's length, below the data
        set's; how to write it (``len(train_loader.sampler)``); the sampler's
        type. ``None`` for samplers that may reach the whole data set (see
        :func:`_picks_a_part`) and data sets without a length.
    """
    whole = _length(loader.dataset)
    if whole is None:
        return None
    for source, expression in (
        (loader.sampler, "train_loader.sampler"),
        (
            getattr(loader.batch_sampler, "sampler", None),
            "train_loader.batch_sampler.sampler",
        ),
    ):
        if not _picks_a_part(source):
            continue
        size = _length(source)
        if size is not None and size < whole:
            return size, f"len({expression})", type(source).__name__
    return None


def _check_subset_size(
    loss_fn: KullbackLeiblerLoss,
    loader: DataLoader[Any],
    examples: int,
    expression: str,
    kind: str,
) -> None:
    """Warn unless ``dataset_size`` is the ``examples`` a subset sampler draws."""
    size = loss_fn.dataset_size
    if size == examples:
        return
    whole = len(loader.dataset)  # type: ignore[arg-type]
    pool = (
        f" {size} is the length of train_loader.dataset, the whole pool, not of "
        "the part the sampler trains on."
        if size == whole
        else ""
    )
    warn_at_caller(
        f"fit: loss_fn.dataset_size is {size} but train_loader's sampler ({kind}) "
        f"draws {examples} of the {whole} examples of its data set per epoch: the "
        f"training set is those {examples}, and the KL term is weighted as if it "
        f"had {size} (a KL {examples / size:.3g} times as strong as the "
        f"ELBO's).{pool} Build the loss with dataset_size={expression}, and set "
        "loss_fn.dataset_size again whenever the part grows (active learning)"
    )


class _EarlyStopping:
    """Tracks the best validation loss; keeps that epoch's state when asked to.

    The epochs of a :func:`linear_warmup` are not compared: with the KL
    down-weighted the validation loss is lower, and such an epoch would be
    restored over every epoch of the ELBO itself; patience counts from the
    first epoch after the warm-up. Under any other heat schedule epochs of
    every heat are compared (the validation loss does not depend on the
    heat); restoring one trained at a lower heat than the last warns.
    """

    def __init__(
        self,
        patience: int | None,
        initial_epoch: int,
        heat_schedule: Callable[[int], float] | None,
    ) -> None:
        self.patience = patience
        warm_up = 0
        if (
            isinstance(heat_schedule, _LinearWarmup)
            and heat_schedule.start != heat_schedule.end
        ):
            warm_up = heat_schedule.epochs
        self.first_compared = max(initial_epoch, warm_up)
        self.best_loss = math.inf
        self.best: tuple[dict[str, Any], dict[str, Any]] | None = None

    def update(
        self,
        epoch: int,
        val_loss: float,
        history: History,
        model: nn.Module,
        loss_fn: KullbackLeiblerLoss,
    ) -> None:
        """Record ``val_loss`` of ``epoch``; keep the state if it is the best."""
        if epoch >= self.first_compared and val_loss < self.best_loss:
            self.best_loss = val_loss
            history.best_epoch = epoch
            if self.patience is not None:
                self.best = (
                    clone_state(model.state_dict()),
                    clone_state(loss_fn.state_dict()),
                )

    def should_stop(self, epoch: int, history: History) -> bool:
        """Whether ``patience`` compared epochs passed without improvement."""
        if self.patience is None:
            return False
        best_epoch = (
            self.first_compared - 1
            if history.best_epoch is None
            else history.best_epoch
        )
        return epoch - best_epoch >= self.patience

    def restore(
        self, model: nn.Module, loss_fn: KullbackLeiblerLoss, history: History
    ) -> None:
        """Load the best epoch's state back (if early stopping kept one)."""
        if self.best is None:
            return
        model.load_state_dict(self.best[0])
        loss_fn.load_state_dict(self.best[1])
        assert history.best_epoch is not None
        best = history.best_epoch - (history.epochs_run - len(history.heat))
        kept, last = history.heat[best], history.heat[-1]
        if kept < last:
            warn_at_caller(
                f"fit: early stopping restored epoch {history.best_epoch}, trained "
                f"at heat {kept:g}, lower than the last epoch's {last:g}: its "
                "down-weighted KL favours the validation loss, and the network "
                "restored is not the ELBO's at the final heat (for a warm-up, "
                "linear_warmup's epochs are left out of the comparison)",
                UserWarning,
            )


def _step_loss(
    model: nn.Module, loss_fn: KullbackLeiblerLoss, x: Any, y: Any, ranks: Ranks
) -> tuple[Tensor, BaseException | None]:
    """The loss of one batch, and the likelihood's error for a non-finite output.

    With such an error the loss is NaN; under ``torch.distributed`` it stays
    connected to the network, so that DDP's gradient reduction runs on every
    rank and all ranks fail together.
    """
    if loss_fn.graphs is not None and isinstance(model, VIModule):
        # compiled: the output stays inside the graph
        return loss_fn.model_loss(model, x, y), None
    out = call_network(model, network_args(x), None)
    _check_one_output(out)
    try:
        return loss_fn(out, y), None
    except ValueError as error:
        if not isinstance(out, Tensor) or bool(torch.isfinite(out).all()):
            raise
        if not ranks.distributed:
            return torch.full((), math.nan), error
        return out.sum() * math.nan, error


def _check_one_output(out: object) -> None:
    """``fit`` trains one loss on one output tensor of the network.

    Raises:
        TypeError: for a network's several heads (a dict or tuple of outputs).
    """
    described = describe_heads(out)
    if described is None:
        return  # a tensor, or something the loss's own check names
    raise TypeError(
        f"fit trains one loss on one output of the network, got {described[0]}. "
        "For a network with several outputs (heads), write the training loop "
        "(one loss per head, added, with heat=0 on every loss but one; see "
        '"Several outputs" in the how-to guide), or fit a wrapper network whose '
        "forward returns the one head to train; a network whose output comes "
        "with a state (a bare VILSTM's (output, (h_n, c_n))) needs a forward "
        "that returns the one to score"
    )


@dataclass(frozen=True)
class _StepInputs:
    """What every evaluation of a training step reads besides its batch."""

    model: nn.Module
    loss_fn: KullbackLeiblerLoss
    guard: NaNGuard
    unsynced: list[nn.Parameter]
    clip_grad_norm: float | None
    devices: tuple[torch.device, ...]  # the parameters' (their random draws)


def _evaluate(
    inputs: _StepInputs,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    step: int,
    x: Any,
    y: Any,
    evaluations: list[StepStats],
) -> Tensor:
    """One evaluation of a step: gradients zeroed, loss, backward, guard, clipping.

    Appends its statistics to ``evaluations`` and returns the loss, under
    ``torch.distributed`` averaged over the ranks (as the closure of an
    optimizer that evaluates the loss several times per step,
    ``torch.optim.LBFGS``, every rank then takes the same decisions).
    """
    guard = inputs.guard
    optimizer.zero_grad(set_to_none=True)
    loss, output_error = _step_loss(inputs.model, inputs.loss_fn, x, y, guard.ranks)
    if loss.requires_grad:
        torch.autograd.backward(loss)
    elif output_error is None:  # (a rejected output is the guard's to report)
        raise RuntimeError(
            f"epoch {epoch}, step {step}: the loss does not depend on any parameter "
            "that requires gradients, so fit would train nothing (every parameter "
            "frozen with requires_grad_(False), or the output detached in forward?)"
        )
    guard.ranks.average_gradients(inputs.unsynced)
    first = evaluations[0].loss if evaluations else None
    stats = guard.check_step(epoch, step, loss, output_error, len(evaluations), first)
    if inputs.clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(guard.params, inputs.clip_grad_norm)
    evaluations.append(stats)
    if not guard.ranks.distributed:
        return loss.detach()
    return torch.tensor(stats.loss, dtype=loss.dtype, device=loss.device)


def _needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` requires a closure (``torch.optim.LBFGS``)."""
    try:
        parameters = inspect.signature(optimizer.step).parameters.values()
    except (TypeError, ValueError):  # no signature to read: call it without one
        return False
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    return any(
        parameter.default is inspect.Parameter.empty and parameter.kind in positional
        for parameter in parameters
    )


def _train_step(
    inputs: _StepInputs,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    step: int,
    batch: Any,
    needs_closure: bool,
) -> StepStats:
    """One optimizer step on ``batch``; the statistics of its first evaluation.

    An optimizer whose ``step`` needs a closure gets :func:`_evaluate`, which
    it may call several times, each time on the same random numbers
    (:class:`~pyrolite_bnn._step_draws.SameDraws`); the loss recorded is the
    one before the step, as for other optimizers.
    """
    x, y = _unpack(batch, "train_loader", f"epoch {epoch}, step {step}")
    evaluations: list[StepStats] = []
    evaluate = functools.partial(
        _evaluate, inputs, optimizer, epoch, step, x, y, evaluations
    )
    if needs_closure:
        # torch types a closure as returning a float; its own return the
        # loss tensor, which LBFGS reads with float() as well
        with SameDraws(inputs.devices) as same:
            optimizer.step(cast(Callable[[], float], lambda: same.run(evaluate)))
        if not evaluations:
            raise RuntimeError(
                f"{type(optimizer).__name__}.step did not call the closure fit "
                "gave it: fit cannot train with this optimizer"
            )
    else:
        evaluate()
        optimizer.step()
    inputs.guard.step_done()
    return evaluations[0]


def _train_epoch(
    epoch: int,
    model: nn.Module,
    loss_fn: KullbackLeiblerLoss,
    loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    guard: NaNGuard,
    unsynced: list[nn.Parameter],
    clip_grad_norm: float | None,
    progress: Progress,
    step_end_hooks: Sequence[Callable[..., Any]],
) -> StepStats:
    """One pass over ``loader``; the epoch's mean loss, NLL and KL.

    ``step_end_hooks`` are called after every optimizer step with the epoch,
    the step and the step's loss. An error that stops a step (its batch,
    the loader fetching it, the network, the loss, the optimizer, a hook)
    restores the guard's last good state and is raised again, its message
    naming the epoch and step (:meth:`NaNGuard.restore_after`).
    """
    sums = StepStats(0.0, 0.0, 0.0)
    steps = 0
    needs_closure = _needs_closure(optimizer)
    devices = tuple(dict.fromkeys(param.device for param in guard.params))
    inputs = _StepInputs(model, loss_fn, guard, unsynced, clip_grad_norm, devices)
    current = 0  # the step running, or whose batch the loader is fetching
    try:
        for step, batch in enumerate(loader):
            current = step
            stats = _train_step(inputs, optimizer, epoch, step, batch, needs_closure)
            sums.loss += stats.loss
            sums.nll += stats.nll
            sums.kl += stats.kl
            steps += 1
            progress.step(
                {
                    "loss": sums.loss / steps,
                    "nll": sums.nll / steps,
                    "kl": sums.kl / steps,
                }
            )
            for on_step_end in step_end_hooks:
                on_step_end(epoch, step, stats.loss)
            current = step + 1
    except Exception as error:
        guard.restore_after(error, epoch, current)
        raise
    if steps == 0:
        raise ValueError(
            f"train_loader yielded no batches in epoch {epoch}{_dropped(loader)}"
        )
    guard.check_parameters(epoch, steps - 1)
    return StepStats(sums.loss / steps, sums.nll / steps, sums.kl / steps)


def _check_checkpoint_path(path: str | os.PathLike[str], ranks: Ranks) -> None:
    """Check the checkpoint path on rank 0; every rank raises if it fails."""
    error: OSError | None = None
    if ranks.main:
        try:
            check_checkpoint_path(path)
        except OSError as caught:
            error = caught
    if ranks.any(error is not None):
        if error is not None:
            raise error
        raise OSError(f"rank 0 cannot write the checkpoint {os.fspath(path)!r}")


def _callback_hooks(
    callbacks: object,
) -> tuple[list[Callable[..., Any]], list[Callable[..., Any]]]:
    """The ``on_epoch_end`` and ``on_step_end`` methods of the callbacks.

    A plain function is its own ``on_epoch_end``; an object may have either
    method or both.

    Raises:
        TypeError: for a single callback not in a list, or a callback that is
            neither callable nor has one of the methods.
    """
    if not isinstance(callbacks, Sequence) or isinstance(callbacks, str):
        raise TypeError(
            "callbacks must be a list of callbacks, got "
            f"{type(callbacks).__name__}; pass [callback]"
        )
    epoch_end: list[Callable[..., Any]] = []
    step_end: list[Callable[..., Any]] = []
    for index, callback in enumerate(callbacks):
        if isinstance(callback, type):
            raise TypeError(
                f"callbacks[{index}] is the class {callback.__name__}: pass an "
                f"instance, {callback.__name__}(...)"
            )
        on_epoch_end = getattr(callback, "on_epoch_end", None)
        on_step_end = getattr(callback, "on_step_end", None)
        if on_epoch_end is None and on_step_end is None and callable(callback):
            on_epoch_end = callback
        for name, method in (
            ("on_epoch_end", on_epoch_end),
            ("on_step_end", on_step_end),
        ):
            if method is not None and not callable(method):
                raise TypeError(
                    f"callbacks[{index}].{name} must be a method, got "
                    f"{type(method).__name__} {method!r}"
                )
        if on_epoch_end is None and on_step_end is None:
            raise TypeError(
                f"callbacks[{index}] must be a function or an object with a method "
                "on_epoch_end(epoch, history, model) or on_step_end(epoch, step, "
                f"loss), got {callback!r}"
            )
        if on_epoch_end is not None:
            epoch_end.append(on_epoch_end)
        if on_step_end is not None:
            step_end.append(_returning_nothing(on_step_end))
    return epoch_end, step_end


def _returning_nothing(on_step_end: Callable[..., Any]) -> Callable[..., None]:
    """``on_step_end``, warning once that a returned value is ignored.

    Only an epoch's end stops training; a value returned per step (``True``
    meant as "stop", or a progress bar's ``update`` result) changes nothing.
    """
    warned = False

    def call(epoch: int, step: int, loss: float) -> None:
        nonlocal warned
        answer = on_step_end(epoch, step, loss)
        if answer is not None and not warned:
            warned = True
            warn_at_caller(
                f"{on_step_end!r} returned {type(answer).__name__} {answer!r}: "
                "the value of on_step_end is ignored (to stop training, return "
                "True from on_epoch_end)",
                UserWarning,
            )

    return call


def _write_checkpoint(
    path: str | os.PathLike[str],
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: KullbackLeiblerLoss,
    epoch: int,
    history: History,
) -> None:
    """The end-of-epoch checkpoint: states, ``epoch``, history and heat."""
    save_checkpoint(
        path,
        network,
        optimizer,
        loss_fn,
        epoch=epoch,
        extra={"history": history.as_dict(), "heat": loss_fn.heat},
    )


def _optimizer_settings(
    optimizer: torch.optim.Optimizer,
) -> list[list[tuple[str, str]]]:
    """The optimizer's settings per parameter group (``lr``, ``betas``...), comparable.

    Values are compared by their ``repr`` (a tensor learning rate included).
    """
    return [
        [(key, repr(value)) for key, value in group.items() if key != "params"]
        for group in optimizer.param_groups
    ]


def _stop_requested(
    hooks: Sequence[Callable[..., Any]], epoch: int, history: History, model: nn.Module
) -> bool:
    stop = False
    for on_epoch_end in hooks:
        answer = on_epoch_end(epoch, history, model)
        if isinstance(answer, torch.Tensor) and answer.numel() == 1:
            answer = answer.item()  # torch.tensor(True), x.isnan().any()
        if (
            answer is None
            or isinstance(answer, bool | np.bool_)
            or (isinstance(answer, int) and answer in (0, 1))
        ):
            stop = stop or bool(answer)
            continue
        # Any truthy value stopped training (a float metric, the model).
        raise TypeError(
            f"a fit callback returns True (stop), False or None; {on_epoch_end!r} "
            f"returned {type(answer).__name__} {answer!r}"
        )
    return stop


def _check_model_and_optimizer(
    model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> None:
    """Refuse a non-Bayesian network, a useless optimizer, disabled gradients.

    Warns if the optimizer holds some of the model's trainable parameters but
    not all: a layer replaced or a guide assigned after it was made would stay
    untrained, its gradients growing (nothing zeroes what no optimizer holds).

    Raises:
        TypeError: for such a model, or an optimizer that is not an instance.
        ValueError: for an optimizer holding none of the model's trainable
            parameters (one made for the torch model before ``bnn.convert``).
        RuntimeError: with gradients disabled (``torch.no_grad()``,
            ``torch.inference_mode()``): every step would train nothing.
    """
    network = unwrap(model)
    check_bayesian_network(network, "fit trains")
    if not torch.is_grad_enabled():
        raise RuntimeError(
            "fit is called with gradients disabled (inside torch.no_grad(), "
            "torch.inference_mode() or torch.set_grad_enabled(False)): it would "
            "compute every loss and train nothing. Call fit outside that block"
        )
    if optimizer is None:
        return
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            "optimizer must be a torch optimizer instance, e.g. "
            f"torch.optim.Adam(model.parameters()), got {optimizer!r}"
        )
    check_optimizer_holds(model, optimizer, "fit would train nothing")
    held = held_parameter_ids(optimizer)
    left_out = [
        name
        for name, parameter in model.named_parameters()
        if parameter.requires_grad and id(parameter) not in held
    ]
    if left_out:
        shown = ", ".join(left_out[:3]) + (", ..." if len(left_out) > 3 else "")
        cause = (
            "It also holds parameters of the torch model that bnn.convert copied "
            "into this network: bnn.convert returns a new model and leaves the "
            "torch model as it was, so those steps do not train the network. "
            "Create the optimizer (and its parameter groups) from the converted "
            "network, after converting: torch.optim.Adam(net.parameters(), ...)"
            if steps_convert_source(network, optimizer)
            else "A layer replaced or a guide assigned after the optimizer was "
            "made? Create it from model.parameters(), or requires_grad_(False) "
            "the parameters you keep fixed"
        )
        warn_at_caller(
            f"{len(left_out)} of the model's trainable parameters are not in the "
            f"optimizer ({shown}): fit does not train them. {cause}"
        )


# ------------------------------------------------------------------------- fit
def fit(
    model: nn.Module,
    loss_fn: KullbackLeiblerLoss,
    train_loader: Iterable[Any],
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
    val_loader: Iterable[Any] | None = None,
    callbacks: Sequence[object] = (),
    progress: bool = True,
    heat_schedule: Callable[[int], float] | None = None,
    clip_grad_norm: float | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    early_stopping_patience: int | None = None,
    initial_epoch: int = 0,
) -> History:
    """Train a Bayesian network by minimising ``loss_fn`` (the negative ELBO).

    Each step runs ``out = model(x)``, ``loss = loss_fn(out, y)`` (with
    ``compile=`` on the loss and a ``VIModule`` model:
    ``loss = loss_fn.model_loss(model, x, y)``),
    ``zero_grad``, ``backward``, optional gradient-norm clipping and
    ``optimizer.step()``. An optimizer whose ``step`` needs a closure
    (``torch.optim.LBFGS``) gets one that runs all of these but the step,
    and may evaluate it several times per step: every evaluation of a step
    draws the same weights (the random state the step started in is
    replayed, so that LBFGS's line search and curvature pairs compare values
    of one function; the generators then move on as after one evaluation,
    and each step draws anew), the NaN guard checks every evaluation (its
    message says when a later one failed), the step's loss, NLL and KL
    (:class:`History`, the progress display) are those of its first
    evaluation (the loss before the step, as with other optimizers), and the
    closure returns the loss averaged over the ranks under
    ``torch.distributed``, so that every rank decides alike.

    A network with several inputs (``forward(self, x_num, x_cat)``) takes
    batches ``((x_num, x_cat), y)``: a tuple of inputs, or the list a
    ``DataLoader`` collates it into, is unpacked, ``out = model(*x)``, in
    training and validation alike, as :func:`~pyrolite_bnn.predict`,
    :func:`~pyrolite_bnn.calibrate`, ``loss_fn.model_loss`` and
    ``loss_fn.pyro_model`` take it. A named tuple (a ``PackedSequence``) is
    one input.

    Validation (when ``val_loader`` is given) runs after each epoch without
    gradients and in ``eval()`` mode, and reports the mean *negative log
    predictive density* per example, ``-log(1/S sum_s p(y | x, w_s))`` with
    ``S = model.samples`` particles (missing target entries left out, and
    examples without any not counted: see
    :meth:`~pyrolite_bnn.PredictiveDistribution.observed`). It is the
    standard held-out metric of a
    Bayesian model; unlike the training loss it contains no KL term, which does
    not depend on the validation data.

    Training mode: ``fit`` records every module's mode (``module.training``)
    when it starts. If the model itself is in training mode then, each epoch
    trains in these modes: a sub-module the user put in ``eval()`` (a batch
    norm frozen for fine-tuning) stays in ``eval()`` and its running
    statistics do not change. A model in ``eval()`` as a whole (e.g. after an
    earlier prediction) is set to ``model.train()`` for every epoch. The
    validation pass sets ``eval()`` and then puts each module back in its
    mode, and at the end every module is back in the mode it had when
    ``fit`` started.

    NaN guard: the model, loss and optimizer states are copied in memory at the
    end of every epoch (and before the first). If a loss or a gradient is
    NaN/Inf, if the network output is NaN/Inf and the likelihood rejects it, or
    if a parameter is non-finite at the end of an epoch, that copy is restored
    and ``FloatingPointError`` is raised. Checkpoints are only written at the
    end of an epoch with finite parameters, so the last one on disk stays
    loadable.

    Other errors: an exception that stops a training step (a batch the
    library's validation refuses, such as NaN targets, a batch norm's batch of
    one example, an empty batch, an error of the loader or of an
    ``on_step_end`` callback) restores the same copy as the NaN guard and is
    raised again, of its own type, its message ending with the epoch and
    step and what was restored: as with validation off, where the same NaN
    target reaches the guard, ``fit`` never leaves a half-trained epoch
    behind. An error of the validation pass after an epoch names that
    epoch; the model keeps its training. A ``KeyboardInterrupt`` restores
    nothing. Before the first epoch the validation data are checked where
    that needs no pass over a loader: an empty ``val_loader`` (``len`` 0),
    and, with validation on, NaN/Inf values in batches held in memory (a
    list of batches, a ``DataLoader`` over a ``TensorDataset``), are refused
    before any training.

    Under ``torch.distributed``: pass the ``DistributedDataParallel``-wrapped
    network. A ``DataLoader`` with a plain sampler gets a
    ``DistributedSampler``, one with a ``DistributedSampler`` (also inside its
    ``batch_sampler``) is used as it is, one with another sampler is refused
    (a ``DistributedSampler`` would change what is sampled); a loader over an
    ``IterableDataset`` and any other iterable are taken to be this rank's
    data, and every rank must yield as many batches (checked). The sampler's
    ``set_epoch`` is called every epoch, the reported statistics and the
    validation loss are averaged over the ranks, the gradients of
    ``loss_fn``'s parameters (which DDP does not see) are averaged, the NaN
    guard, early stopping and callbacks stop or restore every rank together,
    and progress and checkpoints (of the unwrapped network) come from rank 0
    only. ``dataset_size`` is the global number of examples.

    Resuming from a checkpoint: load it with
    :func:`~pyrolite_bnn.checkpoint.load_checkpoint` into the model, the loss
    and an optimizer of the same kinds (give that optimizer to ``fit``; the
    default one is ``Adam([*model.parameters(), *loss_fn.parameters()],
    lr=1e-3)``), then call ``fit`` with the same ``epochs`` and
    ``heat_schedule`` and ``initial_epoch=info["epoch"] + 1``. Epochs
    ``initial_epoch`` to ``epochs - 1`` run with the heat, the epoch numbers
    (callbacks, checkpoints, :class:`History`, the sampler's ``set_epoch``)
    of the uninterrupted run. The parameters end exactly as in that run if
    the random-number generators are also back in their state at the end of
    epoch ``initial_epoch - 1``: checkpoints do not hold it, so keep it
    yourself (e.g. ``torch.get_rng_state()``, and
    ``torch.cuda.get_rng_state_all()`` on a GPU, in a callback) and restore
    it before the call. With a compiled loss (``compile=True``) the first
    calls of a new loss object run eagerly and draw their random numbers
    differently: resume with an eager loss, or compute the new loss on a
    batch twice (no optimizer step; its gradients zeroed after) before
    restoring the generators, so that its graphs are built. Early stopping
    starts afresh: it knows only the resumed epochs' validation losses.

    The validation pass (``val_loader``) draws weights from the same
    random-number generators as training, so adding or removing it changes
    the draws of the training steps after it (the runs are each reproducible
    under a seed, not equal to each other).

    Args:
        model: the network (a :class:`~pyrolite_bnn.VIModule`, or a module
            returning one's output, such as its ``DistributedDataParallel``
            wrapper).
        loss_fn: the :class:`~pyrolite_bnn.KullbackLeiblerLoss`.
        train_loader: iterable of batches (a ``DataLoader``, a list of
            tuples...), iterated once per epoch: ``(x, y)`` pairs, or mappings
            holding the input under ``"x"`` or ``"input"`` and the target
            under ``"y"`` or ``"target"`` (other keys are ignored). ``x`` is
            one input, or a tuple (or list) of the network's positional
            inputs (see above).
        epochs: number of epochs of the whole run, the last being
            ``epochs - 1`` (also when resuming with ``initial_epoch``).
        optimizer: the optimizer, used as is; default
            ``Adam([*model.parameters(), *loss_fn.parameters()], lr=1e-3)`` (the
            likelihood may own a learned noise scale).
        val_loader: iterable of validation batches, in the formats of
            ``train_loader``.
        callbacks: a list of objects with a method
            ``on_epoch_end(epoch, history, model) -> bool | None``, or of such
            functions, called after each epoch (after validation and
            checkpointing: they may read the epoch's checkpoint; a change of
            the optimizer's settings they make, a ``ReduceLROnPlateau``
            stepped there on ``history.val_loss[-1]``, is written into it
            again, and is in the NaN guard's copy); returning ``True`` stops
            training. An object may
            also (or instead) have ``on_step_end(epoch, step, loss)``, called
            after every optimizer step with the step's loss (a float): step a
            per-step learning-rate schedule there (``OneCycleLR``); a value
            it returns is ignored, with a warning (once).
        progress: show a tqdm bar per epoch (when tqdm is installed; otherwise
            one line per epoch on stderr) with loss, nll and kl.
        heat_schedule: callable ``epoch -> heat`` setting ``loss_fn.heat`` at
            the start of each epoch, e.g. :func:`linear_warmup`.
        clip_grad_norm: maximum total gradient norm
            (:func:`torch.nn.utils.clip_grad_norm_`).
        checkpoint_path: file to write a checkpoint to at the end of every
            epoch (:func:`~pyrolite_bnn.checkpoint.save_checkpoint`, with
            ``epoch`` and ``extra={"history": ...}``). It holds the latest
            epoch's state for resuming, not the best state restored by early
            stopping. Its directory is checked before training starts.
        early_stopping_patience: stop when ``val_loss`` has not improved for
            this many epochs; at the end of training the model and loss states
            of the best epoch are restored (needs ``val_loader``). The
            epochs of a :func:`linear_warmup` are not compared (their
            down-weighted KL lowers the validation loss): patience counts
            from the first epoch after the warm-up. Under another heat
            schedule (a cyclical one) every epoch is compared, and restoring
            one trained at a lower heat than the last epoch's warns. The
            validation NLL may rise while the posterior scales grow, so this
            can keep a near point estimate: see the how-to on defaults.
        initial_epoch: the first epoch to run, to resume a run whose epochs
            before it are done (see above); ``0 <= initial_epoch <= epochs``.

    Returns:
        The :class:`History`.

    Raises:
        TypeError: if ``loss_fn`` is not a
            :class:`~pyrolite_bnn.KullbackLeiblerLoss`, ``progress`` not a
            bool, a callback neither a function nor an object with
            ``on_epoch_end`` or ``on_step_end`` methods (a class, not an
            instance).
        ValueError: for invalid arguments (early stopping without
            ``val_loader``, an empty loader, a negative heat, a batch in
            another format, under DDP a sampler ``fit`` cannot shard or
            loaders of different lengths on different ranks...), and for
            data the library's checks refuse (NaN targets with validation
            on, a batch norm's batch of one); raised in a training step,
            the message names the epoch and step and the state before that
            epoch is restored (see above).
        OSError: if ``checkpoint_path`` cannot be written (checked before
            training: a missing directory, a directory given as the path).
        FloatingPointError: if training produced a NaN/Inf loss, gradient,
            output or parameter; the message names the epoch and step and
            what was restored.
        RuntimeError: if gradients are disabled (``torch.no_grad()``,
            ``torch.inference_mode()``) or the loss depends on no parameter
            that requires them: fit would train nothing.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> from pyrolite_bnn.training import fit, linear_warmup
        >>> x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
        >>> net = bnn.VILinear(3, 2)
        >>> loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=32)
        >>> batches = [(x[:16], y[:16]), (x[16:], y[16:])]
        >>> history = fit(net, loss_fn, batches, epochs=3, progress=False,
        ...               heat_schedule=linear_warmup(2), val_loader=batches)
        >>> history.epochs_run, len(history.loss), history.heat
        (3, 3, [0.0, 0.5, 1.0])
    """
    epochs, initial_epoch = _check_arguments(
        loss_fn,
        epochs,
        initial_epoch,
        val_loader,
        clip_grad_norm,
        early_stopping_patience,
        heat_schedule,
    )
    _check_model_and_optimizer(model, optimizer)
    progress = check_bool(progress, "progress")
    epoch_end_hooks, step_end_hooks = _callback_hooks(callbacks)
    ranks = Ranks(model)
    _check_dataset_size(loss_fn, train_loader, ranks.size)
    if val_loader is not None:
        _check_val_loader(val_loader, loss_fn.predictive, ranks)
    if checkpoint_path is not None:
        _check_checkpoint_path(checkpoint_path, ranks)
    if optimizer is None:
        # Each parameter once: a loss kept as a submodule of the model is both.
        parameters = {id(p): p for p in (*model.parameters(), *loss_fn.parameters())}
        optimizer = torch.optim.Adam(list(parameters.values()), lr=1e-3)
    network = unwrap(model)
    names = {id(p): f"model.{name}" for name, p in network.named_parameters()}
    names.update({id(p): f"loss_fn.{name}" for name, p in loss_fn.named_parameters()})
    guard = NaNGuard(model, loss_fn, optimizer, names, ranks, checkpoint_path)
    synced = {id(p) for p in model.parameters()} if ranks.distributed else set()
    unsynced = [p for p in guard.params if ranks.distributed and id(p) not in synced]
    train_loader = ranks.shard(train_loader, "train_loader")
    display = Progress(progress and ranks.main, epochs, train_loader)
    history = History(epochs_run=initial_epoch)
    stopping = _EarlyStopping(early_stopping_patience, initial_epoch, heat_schedule)
    modes = ModuleModes(model)
    try:
        for epoch in range(initial_epoch, epochs):
            if heat_schedule is not None:
                loss_fn.heat = check_heat(
                    heat_schedule(epoch), f"the heat of heat_schedule({epoch})"
                )
            set_epoch(train_loader, epoch)
            if modes.training:
                modes.restore()  # sub-modules the user put in eval() stay there
            else:
                model.train()
            display.begin(epoch)  # open until display.end shows the validation
            means = _train_epoch(
                epoch,
                model,
                loss_fn,
                train_loader,
                optimizer,
                guard,
                unsynced,
                clip_grad_norm,
                display,
                step_end_hooks,
            )
            history.loss.append(means.loss)
            history.nll.append(means.nll)
            history.kl.append(means.kl)
            history.heat.append(loss_fn.heat)
            shown = {"loss": means.loss, "nll": means.nll, "kl": means.kl}
            if val_loader is not None:
                try:  # the network itself: DDP's forward would synchronise buffers
                    val_loss = _validation_nll(network, loss_fn, val_loader, ranks)
                except Exception as error:
                    add_to_message(
                        error,
                        f"fit stopped in the validation after epoch {epoch}, "
                        "counted from 0; the model keeps that epoch's training",
                    )
                    raise
                if not math.isfinite(val_loss):
                    warn_at_caller(
                        f"fit: the validation loss of epoch {epoch} is {val_loss}: "
                        "the network's predictive density on val_loader is not "
                        "finite (NaN or infinite outputs, or targets the likelihood "
                        "gives zero density); early stopping counts it as no "
                        "improvement",
                        RuntimeWarning,
                    )
                history.val_loss.append(val_loss)
                shown["val_loss"] = val_loss
                stopping.update(epoch, val_loss, history, model, loss_fn)
            history.epochs_run = epoch + 1
            display.end(epoch, shown, loss_fn.heat)
            saving = checkpoint_path is not None and ranks.main
            settings = _optimizer_settings(optimizer) if saving else None
            if checkpoint_path is not None and saving:
                _write_checkpoint(
                    checkpoint_path, network, optimizer, loss_fn, epoch, history
                )
            stop = _stop_requested(epoch_end_hooks, epoch, history, model)
            if (
                checkpoint_path is not None
                and saving
                and _optimizer_settings(optimizer) != settings
            ):
                # A schedule stepped in a callback (ReduceLROnPlateau on the
                # validation loss): the resumed run needs its learning rate.
                _write_checkpoint(
                    checkpoint_path, network, optimizer, loss_fn, epoch, history
                )
            guard.keep(epoch)  # after the callbacks: their schedule's step too
            if ranks.any(stop or stopping.should_stop(epoch, history)):
                history.stopped_early = epoch + 1 < epochs
                break
        stopping.restore(model, loss_fn, history)
    finally:
        display.close()  # an epoch that failed
        modes.restore()
    return history
