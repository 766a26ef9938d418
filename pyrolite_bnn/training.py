"""A training loop for Bayesian networks: ``fit(model, loss_fn, train_loader, epochs)``.

:func:`fit` runs the PyTorch-style loop ``out = model(x)``,
``loss = loss_fn(out, y)``, ``backward``, ``step`` and adds what a variational
network usually needs: KL annealing (:func:`linear_warmup`), validation with the
log predictive density, early stopping with restoration of the best state,
gradient clipping, atomic checkpoints and a guard against NaN/Inf losses and
gradients.

Epochs and steps are counted from 0 everywhere (``heat_schedule(epoch)``,
callbacks, checkpoints, error messages); the progress display shows
``epoch 1/E`` for the first epoch.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

import torch
from torch import Tensor, nn

from pyrolite_bnn._state import clone_state
from pyrolite_bnn._validation import check_heat
from pyrolite_bnn.checkpoint import check_checkpoint_path, save_checkpoint
from pyrolite_bnn.loss import KullbackLeiblerLoss
from pyrolite_bnn.module import VIModule

__all__ = ["History", "fit", "linear_warmup"]


@dataclass
class History:
    """Per-epoch record of a :func:`fit` run.

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
        epochs_run: number of completed epochs.
        best_epoch: epoch with the lowest ``val_loss`` (``None`` without
            validation).
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
        ValueError: if ``epochs < 0`` or a heat is negative or not finite.

    Example:
        >>> from pyrolite_bnn.training import linear_warmup
        >>> schedule = linear_warmup(4)
        >>> [schedule(epoch) for epoch in range(6)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    return _LinearWarmup(epochs, check_heat(start, "start"), check_heat(end, "end"))


# --------------------------------------------------------------------- helpers
@dataclass
class _Snapshot:
    """In-memory copy of the training state at the end of an epoch."""

    epoch: int  # the last completed epoch (-1: before training)
    model: dict[str, Any]
    loss_fn: dict[str, Any]
    optimizer: dict[str, Any]
    heat: float

    @classmethod
    def take(
        cls,
        epoch: int,
        model: nn.Module,
        loss_fn: KullbackLeiblerLoss,
        optimizer: torch.optim.Optimizer,
    ) -> _Snapshot:
        return cls(
            epoch,
            clone_state(model.state_dict()),
            clone_state(loss_fn.state_dict()),
            clone_state(optimizer.state_dict()),
            loss_fn.heat,
        )

    def restore(
        self,
        model: nn.Module,
        loss_fn: KullbackLeiblerLoss,
        optimizer: torch.optim.Optimizer,
    ) -> str:
        """Load the copy back; return a description for error messages."""
        model.load_state_dict(self.model)
        loss_fn.load_state_dict(self.loss_fn)
        # load_state_dict may keep the given tensors: hand it a fresh copy.
        optimizer.load_state_dict(clone_state(self.optimizer))
        optimizer.zero_grad(set_to_none=True)
        loss_fn.heat = self.heat
        if self.epoch < 0:
            return (
                "restored model, loss_fn and optimizer to their state before training"
            )
        return (
            "restored model, loss_fn and optimizer to their state at the end of "
            f"epoch {self.epoch}"
        )


def _load_tqdm() -> Any:
    """The ``tqdm`` progress-bar class, or ``None`` when tqdm is not installed."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def _length(loader: Iterable[Any]) -> int | None:
    """``len(loader)`` where defined (not for every ``IterableDataset`` loader)."""
    if not isinstance(loader, Sized):
        return None
    try:
        return len(loader)
    except TypeError:
        return None


def _format_stats(stats: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.4g}" for name, value in stats.items())


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


def _first_nonfinite_grad(
    params: Sequence[nn.Parameter], names: dict[int, str]
) -> str | None:
    for param in params:
        if param.grad is not None and not bool(torch.isfinite(param.grad).all()):
            return names.get(id(param), f"<parameter of shape {tuple(param.shape)}>")
    return None


def _all_finite(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    if not tensors:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.stack([torch.isfinite(t).all().to(device) for t in tensors]).all()


def _parameters_finite(params: Sequence[nn.Parameter]) -> bool:
    if not params:
        return True
    device = params[0].device
    return bool(_all_finite([p.detach() for p in params], device))


@torch.no_grad()
def _validation_nll(
    model: nn.Module, loss_fn: KullbackLeiblerLoss, loader: Iterable[Any]
) -> float:
    """Mean negative log predictive density per example over ``loader``."""
    was_training = model.training
    model.eval()
    total = 0.0
    count = 0
    try:
        for step, batch in enumerate(loader):
            x, y = _unpack(batch, "val_loader", f"batch {step}")
            out = model(x)
            likelihood, aligned = loss_fn.predictive.observe(out, y)
            log_prob = likelihood.log_prob(aligned)  # (S, B)
            samples = log_prob.shape[0]
            log_mean = torch.logsumexp(log_prob, dim=0) - math.log(samples)
            total -= float(log_mean.sum())
            count += int(log_mean.numel())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("val_loader yielded no batches")
    return total / count


def _check_arguments(
    epochs: int,
    val_loader: Iterable[Any] | None,
    clip_grad_norm: float | None,
    early_stopping_patience: int | None,
    heat_schedule: Callable[[int], float] | None,
) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    if clip_grad_norm is not None and not (
        math.isfinite(clip_grad_norm) and clip_grad_norm > 0
    ):
        raise ValueError(f"clip_grad_norm must be > 0, got {clip_grad_norm!r}")
    if early_stopping_patience is not None:
        if (
            isinstance(early_stopping_patience, bool)
            or not isinstance(early_stopping_patience, int)
            or early_stopping_patience < 1
        ):
            raise ValueError(
                "early_stopping_patience must be an integer >= 1, got "
                f"{early_stopping_patience!r}"
            )
        if val_loader is None:
            raise ValueError(
                "early_stopping_patience needs a val_loader: early stopping "
                "monitors the validation loss"
            )
    if heat_schedule is not None and not callable(heat_schedule):
        raise TypeError("heat_schedule must be a callable epoch -> heat")


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
) -> History:
    """Train a Bayesian network by minimising ``loss_fn`` (the negative ELBO).

    Each step runs ``out = model(x)``, ``loss = loss_fn(out, y)`` (with
    ``compile=`` on the loss and a ``VIModule`` model:
    ``loss = loss_fn.model_loss(model, x, y)``),
    ``zero_grad``, ``backward``, optional gradient-norm clipping and
    ``optimizer.step()``.

    Validation (when ``val_loader`` is given) runs after each epoch without
    gradients and in ``eval()`` mode, and reports the mean *negative log
    predictive density* per example, ``-log(1/S sum_s p(y | x, w_s))`` with
    ``S = model.samples`` particles. It is the standard held-out metric of a
    Bayesian model; unlike the training loss it contains no KL term, which does
    not depend on the validation data.

    NaN guard: the model, loss and optimizer states are copied in memory at the
    end of every epoch (and before the first). If a loss or a gradient is
    NaN/Inf, if the network output is NaN/Inf and the likelihood rejects it, or
    if a parameter is non-finite at the end of an epoch, that copy is restored
    and ``FloatingPointError`` is raised. Checkpoints are only written at the
    end of an epoch with finite parameters, so the last one on disk stays
    loadable.

    Args:
        model: the network (a :class:`~pyrolite_bnn.VIModule`, or a module
            returning one's output).
        loss_fn: the :class:`~pyrolite_bnn.KullbackLeiblerLoss`.
        train_loader: iterable of batches (a ``DataLoader``, a list of
            tuples...), iterated once per epoch: ``(x, y)`` pairs, or mappings
            holding the input under ``"x"`` or ``"input"`` and the target
            under ``"y"`` or ``"target"`` (other keys are ignored).
        epochs: number of epochs.
        optimizer: the optimizer, used as is; default
            ``Adam([*model.parameters(), *loss_fn.parameters()], lr=1e-3)`` (the
            likelihood may own a learned noise scale).
        val_loader: iterable of validation batches, in the formats of
            ``train_loader``.
        callbacks: objects with an optional method
            ``on_epoch_end(epoch, history, model) -> bool | None``, called after
            each epoch (after validation and checkpointing); returning ``True``
            stops training.
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
            of the best epoch are restored (needs ``val_loader``).

    Returns:
        The :class:`History`.

    Raises:
        ValueError: for invalid arguments (early stopping without
            ``val_loader``, an empty loader, a negative heat, a batch in
            another format...).
        OSError: if ``checkpoint_path`` cannot be written (checked before
            training: a missing directory, a directory given as the path).
        FloatingPointError: if training produced a NaN/Inf loss, gradient,
            output or parameter; the message names the epoch and step and
            what was restored.

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
    _check_arguments(
        epochs, val_loader, clip_grad_norm, early_stopping_patience, heat_schedule
    )
    if checkpoint_path is not None:
        check_checkpoint_path(checkpoint_path)
    if optimizer is None:
        optimizer = torch.optim.Adam(
            [*model.parameters(), *loss_fn.parameters()], lr=1e-3
        )
    params: list[nn.Parameter] = [
        param for group in optimizer.param_groups for param in group["params"]
    ]
    names = {id(p): f"model.{name}" for name, p in model.named_parameters()}
    names.update({id(p): f"loss_fn.{name}" for name, p in loss_fn.named_parameters()})
    tqdm = _load_tqdm() if progress else None
    history = History()
    good = _Snapshot.take(-1, model, loss_fn, optimizer)
    best: tuple[dict[str, Any], dict[str, Any]] | None = None
    best_loss = math.inf
    was_training = model.training
    global_step = 0

    def fail(epoch: int, step: int, what: str, cause: BaseException | None) -> NoReturn:
        restored = good.restore(model, loss_fn, optimizer)
        where = f"epoch {epoch}, step {step} (global step {global_step})"
        saved = ""
        if checkpoint_path is not None and good.epoch >= 0:
            saved = f"; the checkpoint {os.fspath(checkpoint_path)!r} is unchanged"
        raise FloatingPointError(
            f"{what} at {where}, counted from 0; {restored}{saved}"
        ) from cause

    try:
        for epoch in range(epochs):
            if heat_schedule is not None:
                loss_fn.heat = check_heat(
                    heat_schedule(epoch), f"the heat of heat_schedule({epoch})"
                )
            model.train()
            start = time.perf_counter()
            sums = [0.0, 0.0, 0.0]
            steps = 0
            bar = None
            if tqdm is not None:
                bar = tqdm(
                    total=_length(train_loader), desc=f"epoch {epoch + 1}/{epochs}"
                )
            try:
                for step, batch in enumerate(train_loader):
                    x, y = _unpack(batch, "train_loader", f"epoch {epoch}, step {step}")
                    out: Any = None
                    optimizer.zero_grad(set_to_none=True)
                    try:
                        loss: Tensor
                        if loss_fn.graphs is not None and isinstance(model, VIModule):
                            # compiled: the output stays inside the graph
                            loss = loss_fn.model_loss(model, x, y)
                        else:
                            out = model(x)
                            loss = loss_fn(out, y)
                    except ValueError as error:
                        if isinstance(out, Tensor) and not bool(
                            torch.isfinite(out).all()
                        ):
                            fail(epoch, step, "non-finite network output", error)
                        raise
                    torch.autograd.backward(loss)
                    grads = [p.grad for p in params if p.grad is not None]
                    stats = torch.stack(
                        [loss.detach(), loss_fn.last_nll, loss_fn.last_kl]
                    ).to(torch.float64)
                    ok = _all_finite(grads, stats.device).to(stats.dtype).reshape(1)
                    loss_value, nll_value, kl_value, grads_ok = torch.cat(
                        [stats, ok]
                    ).tolist()
                    if not math.isfinite(loss_value):
                        fail(epoch, step, f"non-finite loss ({loss_value})", None)
                    if not grads_ok:
                        name = _first_nonfinite_grad(params, names)
                        fail(epoch, step, f"non-finite gradient of {name}", None)
                    if clip_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                    optimizer.step()
                    sums[0] += loss_value
                    sums[1] += nll_value
                    sums[2] += kl_value
                    steps += 1
                    global_step += 1
                    if bar is not None:
                        bar.set_postfix(
                            {
                                "loss": f"{sums[0] / steps:.4g}",
                                "nll": f"{sums[1] / steps:.4g}",
                                "kl": f"{sums[2] / steps:.4g}",
                            },
                            refresh=False,
                        )
                        bar.update(1)
                if steps == 0:
                    raise ValueError(
                        f"train_loader yielded no batches in epoch {epoch}"
                    )
                if not _parameters_finite(params):
                    fail(
                        epoch,
                        steps - 1,
                        "non-finite parameter after the epoch's last step",
                        None,
                    )
                history.loss.append(sums[0] / steps)
                history.nll.append(sums[1] / steps)
                history.kl.append(sums[2] / steps)
                history.heat.append(loss_fn.heat)
                shown = {
                    "loss": history.loss[-1],
                    "nll": history.nll[-1],
                    "kl": history.kl[-1],
                }
                if val_loader is not None:
                    val_loss = _validation_nll(model, loss_fn, val_loader)
                    history.val_loss.append(val_loss)
                    shown["val_loss"] = val_loss
                    if val_loss < best_loss:
                        best_loss = val_loss
                        history.best_epoch = epoch
                        if early_stopping_patience is not None:
                            best = (
                                clone_state(model.state_dict()),
                                clone_state(loss_fn.state_dict()),
                            )
                history.epochs_run = epoch + 1
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})
                    bar.refresh()
            finally:
                if bar is not None:
                    bar.close()
            if progress and tqdm is None:
                print(
                    f"epoch {epoch + 1}/{epochs}: {_format_stats(shown)} "
                    f"heat={loss_fn.heat:g} ({time.perf_counter() - start:.1f}s)",
                    file=sys.stderr,
                    flush=True,
                )
            if checkpoint_path is not None:
                save_checkpoint(
                    checkpoint_path,
                    model,
                    optimizer,
                    loss_fn,
                    epoch=epoch,
                    extra={"history": history.as_dict(), "heat": loss_fn.heat},
                )
            good = _Snapshot.take(epoch, model, loss_fn, optimizer)
            stop = False
            for callback in callbacks:
                on_epoch_end = getattr(callback, "on_epoch_end", None)
                if on_epoch_end is not None and on_epoch_end(epoch, history, model):
                    stop = True
            if early_stopping_patience is not None:
                best_epoch = -1 if history.best_epoch is None else history.best_epoch
                if epoch - best_epoch >= early_stopping_patience:
                    stop = True
            if stop:
                history.stopped_early = epoch + 1 < epochs
                break
        if best is not None:
            model.load_state_dict(best[0])
            loss_fn.load_state_dict(best[1])
    finally:
        model.train(was_training)
    return history
