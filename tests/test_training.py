"""Tests for :mod:`pyrolite_bnn.training` (``fit``, ``History``, ``linear_warmup``)."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pytest
import torch
from torch import Tensor, nn

import pyrolite_bnn as bnn
from pyrolite_bnn.checkpoint import load_checkpoint
from pyrolite_bnn.training import History, fit, linear_warmup

N = 64
Batches = list[tuple[Tensor, Tensor]]


def _data(flip: bool = False, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 3, generator=generator)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, (1 - y if flip else y)


def _batches(x: Tensor, y: Tensor, size: int = 16) -> Batches:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _assert_same_history_as_batches(
    history: History, x: torch.Tensor, y: torch.Tensor
) -> None:
    """``history`` is that of ``_net()`` fitted on ``_batches(x, y)`` (seed 3).

    Same draws; collated batches only change float32 rounding (~1e-5).
    """
    pyro.set_rng_seed(3)
    expected = fit(
        _net(),
        _loss(),
        _batches(x, y),
        epochs=2,
        val_loader=_batches(x, y),
        progress=False,
    )
    assert history.loss == pytest.approx(expected.loss, rel=1e-4)
    assert history.val_loss == pytest.approx(expected.val_loss, rel=1e-4)


def _net() -> bnn.VISequential:
    return bnn.VISequential(bnn.VILinear(3, 8), nn.ReLU(), bnn.VILinear(8, 2))


def _loss() -> bnn.KullbackLeiblerLoss:
    return bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=N)


def _adam(model: nn.Module, lr: float = 0.05) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=lr)


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class _Recorder:
    """Callback keeping a copy of the model state and the heat of each epoch."""

    def __init__(self, loss_fn: bnn.KullbackLeiblerLoss | None = None) -> None:
        self.loss_fn = loss_fn
        self.states: list[dict[str, Tensor]] = []
        self.heats: list[float] = []
        self.epochs: list[int] = []

    def on_epoch_end(self, epoch: int, history: History, model: nn.Module) -> None:
        self.epochs.append(epoch)
        self.states.append(_state(model))
        if self.loss_fn is not None:
            self.heats.append(self.loss_fn.heat)


# ------------------------------------------------------------------ basics
def test_loss_decreases_on_an_easy_problem() -> None:
    x, y = _data()
    model, loss_fn = _net(), _loss()
    history = fit(
        model,
        loss_fn,
        _batches(x, y),
        epochs=15,
        optimizer=_adam(model),
        progress=False,
    )
    assert history.loss[-1] < 0.7 * history.loss[0]
    probs = bnn.predict(model, x, bnn.Categorical(), samples=20).probs
    assert float((probs.argmax(-1) == y).float().mean()) > 0.85


def test_history_fields_are_filled() -> None:
    x, y = _data()
    model, loss_fn = _net(), _loss()
    batches = _batches(x, y)
    history = fit(
        model,
        loss_fn,
        batches,
        epochs=3,
        optimizer=_adam(model),
        val_loader=batches,
        progress=False,
    )
    assert history.epochs_run == 3
    assert not history.stopped_early
    for values in (history.loss, history.nll, history.kl, history.val_loss):
        assert len(values) == 3
        assert all(math.isfinite(v) for v in values)
    assert history.heat == [1.0, 1.0, 1.0]
    assert all(v > 0 for v in history.kl)
    # Means of loss = nll + heat * kl over the batches of an epoch.
    for loss, nll, kl in zip(history.loss, history.nll, history.kl, strict=True):
        assert loss == pytest.approx(nll + kl, rel=1e-5)
    assert history.best_epoch == min(range(3), key=history.val_loss.__getitem__)
    assert history.as_dict()["epochs_run"] == 3


def _fit_with_seeded_validation(
    model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, check: Any
) -> History:
    """Two epochs of ``fit``, validated on ``(x, y)`` after seeding Pyro with
    123 (as ``check``'s reference at each epoch's end is)."""

    class Seed:
        def __iter__(self) -> Any:
            pyro.set_rng_seed(123)
            yield x, y

    return fit(
        model,
        loss_fn,
        _batches(x, y),
        epochs=2,
        optimizer=_adam(model),
        val_loader=Seed(),
        callbacks=[check],
        progress=False,
    )


def test_val_loss_is_negative_log_predictive_density() -> None:
    x, y = _data()
    model, loss_fn = bnn.VILinear(3, 2), _loss()
    model.samples = 4
    recorder: list[float] = []

    class Check:
        def on_epoch_end(self, epoch: int, history: History, model: nn.Module) -> None:
            pyro.set_rng_seed(123)
            with torch.no_grad():
                out = model(x)
            log_p = torch.distributions.Categorical(logits=out).log_prob(y)
            nlpd = -(torch.logsumexp(log_p, 0) - math.log(4)).mean()
            recorder.append(float(nlpd))

    history = _fit_with_seeded_validation(model, loss_fn, x, y, Check())
    assert history.val_loss == pytest.approx(recorder, rel=1e-5)


def test_val_loss_leaves_missing_targets_out() -> None:
    """Targets marked missing (NaN, ``bnn.Normal(missing="nan")``): the
    validation NLL is the mean over the examples with an observed entry of
    the mixture's log density of those entries (the data without the
    missing ones); an example without any counts for nothing."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=generator)
    y = x[:, :2] + 0.3 * torch.randn(N, 2, generator=generator)
    y[3, 1] = y[10, 0] = math.nan
    y[20] = math.nan
    keep = ~y.isnan()
    model = bnn.VILinear(3, 2)
    model.samples = 4
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.5, missing="nan"), N)
    recorder: list[float] = []

    class Check:
        def on_epoch_end(self, epoch: int, history: History, model: nn.Module) -> None:
            pyro.set_rng_seed(123)
            with torch.no_grad():
                out = model(x)
            noise = torch.distributions.Normal(out, 0.5)
            log_p = (noise.log_prob(y.nan_to_num()) * keep).sum(-1)
            mixture = torch.logsumexp(log_p, 0) - math.log(4)
            recorder.append(float(-mixture[keep.any(1)].mean()))

    history = _fit_with_seeded_validation(model, loss_fn, x, y, Check())
    assert history.val_loss == pytest.approx(recorder, rel=1e-5)


@pytest.mark.parametrize("form", ["list of batches", "DataLoader"])
def test_validation_data_in_memory_may_hold_missing_targets(form: str) -> None:
    """The check of a val_loader held in memory refused, before the first
    epoch, the NaN targets a ``missing="nan"`` likelihood reads as missing
    (probe falsepos27d). It now checks the targets as the likelihood does:
    the validation NLL is that of the same data streamed (not checked
    beforehand), and an Inf, no missing marker, is still refused."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=generator)
    y = x[:, :2] + 0.3 * torch.randn(N, 2, generator=generator)
    y[::3, 1] = math.nan
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.5, missing="nan"), N)

    def loader(targets: Tensor) -> Any:
        if form == "list of batches":
            return [(x[:16], targets[:16]), (x[16:], targets[16:])]
        dataset = torch.utils.data.TensorDataset(x, targets)
        return torch.utils.data.DataLoader(dataset, batch_size=16)

    class Streamed:
        def __iter__(self) -> Any:
            yield from loader(y)

    val_losses = []
    for val_loader in (loader(y), Streamed()):
        pyro.set_rng_seed(1)
        model = bnn.VILinear(3, 2)
        history = fit(
            model, loss_fn, _batches(x, y), 1, val_loader=val_loader, progress=False
        )
        val_losses.append(history.val_loss[0])
    assert math.isfinite(val_losses[0])
    assert val_losses[0] == pytest.approx(val_losses[1], rel=1e-6)
    infinite = y.clone()
    infinite[20, 0] = math.inf
    refused = r"of val_loader's .* contains 1 NaN/Inf.* an Inf is not a missing marker"
    with pytest.raises(ValueError, match=refused):
        fit(
            model,
            loss_fn,
            _batches(x, y),
            1,
            val_loader=loader(infinite),
            progress=False,
        )


def test_default_optimizer_trains_the_likelihood_scale() -> None:
    x = torch.randn(N, 3)
    y = 3.0 * x[:, :1]
    model = bnn.VILinear(3, 1)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=N)
    before = loss_fn.predictive.noise_scale().item()
    fit(model, loss_fn, _batches(x, y), epochs=3, progress=False)
    assert loss_fn.predictive.noise_scale().item() != before


def test_default_optimizer_takes_a_loss_held_by_the_model_once() -> None:
    """A loss kept as a submodule of the model gave the default Adam each of
    its parameters twice: torch's "duplicate parameters" warning."""

    class WithLoss(bnn.VIModule):
        def __init__(self, loss_fn: bnn.KullbackLeiblerLoss) -> None:
            super().__init__()
            self.layer = bnn.VILinear(3, 1)
            self.loss_fn = loss_fn

        def forward(self, x: Tensor) -> Tensor:
            return self.layer(x)  # type: ignore[no-any-return]

    x = torch.randn(N, 3)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=N)
    model = WithLoss(loss_fn)
    before = loss_fn.predictive.noise_scale().item()
    fit(model, loss_fn, _batches(x, 3.0 * x[:, :1]), epochs=2, progress=False)
    assert loss_fn.predictive.noise_scale().item() != before


def test_given_optimizer_is_used_as_is() -> None:
    x, y = _data()
    model, loss_fn = _net(), _loss()
    before = _state(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    fit(model, loss_fn, _batches(x, y), epochs=2, optimizer=optimizer, progress=False)
    _assert_same_state(_state(model), before)


def test_data_loader_and_training_mode_restored() -> None:
    x, y = _data()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True
    )
    model, loss_fn = _net(), _loss()
    model.eval()
    history = fit(
        model, loss_fn, loader, epochs=2, optimizer=_adam(model), progress=False
    )
    assert history.epochs_run == 2
    assert not model.training


def _frozen_batch_norm_net() -> tuple[bnn.VISequential, list[bool]]:
    """A network whose batch norm is in eval(); the modes it ran in, per call."""
    net = bnn.VISequential(
        bnn.VILinear(3, 8), bnn.BatchNorm1d(8), nn.ReLU(), bnn.VILinear(8, 2)
    )
    net[1].requires_grad_(False)
    net[1].eval()  # frozen statistics, as in torch fine-tuning
    seen: list[bool] = []
    net[1].register_forward_pre_hook(lambda module, args: seen.append(module.training))
    return net, seen


def test_a_sub_module_in_eval_stays_in_eval_through_fit() -> None:
    """fit called model.train() every epoch and model.train(was_training) at
    the end: a frozen batch norm normalised with batch statistics in every
    step (its running mean moved by 0.1) and was left in training mode."""
    x, y = _data()
    net, seen = _frozen_batch_norm_net()
    statistics = {k: v.clone() for k, v in net[1].state_dict().items()}
    modes = [m.training for m in net.modules()]
    fit(
        net,
        _loss(),
        _batches(x, y),
        epochs=2,
        optimizer=_adam(net),
        val_loader=_batches(x, y),
        progress=False,
    )
    assert seen == [False] * 16  # 2 epochs x (4 steps + 4 validation batches)
    _assert_same_state(net[1].state_dict(), statistics)  # bit-identical
    assert [m.training for m in net.modules()] == modes
    assert net.training
    assert not net[1].training


def test_validation_inside_fit_puts_each_module_back_in_its_mode() -> None:
    x, y = _data()
    net, _ = _frozen_batch_norm_net()
    before = [m.training for m in net.modules()]
    modes: list[list[bool]] = []
    fit(
        net,
        _loss(),
        _batches(x, y),
        epochs=2,
        optimizer=_adam(net),
        val_loader=_batches(x, y),
        callbacks=[lambda e, h, m: modes.append([n.training for n in m.modules()])],
        progress=False,
    )
    assert modes == [before] * 2
    assert before.count(False) == 1


def test_a_model_in_eval_trains_in_training_mode_and_is_put_back() -> None:
    x, y = _data()
    net, seen = _frozen_batch_norm_net()
    net.eval()  # as a whole, e.g. after an earlier prediction
    fit(net, _loss(), _batches(x, y), epochs=1, optimizer=_adam(net), progress=False)
    assert seen == [True] * 4
    assert not any(m.training for m in net.modules())


def test_a_dataset_size_that_is_not_the_loaders_warns() -> None:
    """dataset_size of another split: the KL silently 3.2x too strong."""
    x, y = _data()
    dataset = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16)
    model = _net()
    wrong = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=20)
    message = r"dataset_size is 20 but train_loader holds 64"
    with pytest.warns(UserWarning, match=message):
        fit(model, wrong, loader, epochs=1, progress=False)
    # The examples a sampler draws from a part of the data set count too, and
    # plain iterables are not checked.
    part = torch.utils.data.DataLoader(
        dataset,
        batch_size=16,
        sampler=torch.utils.data.SubsetRandomSampler(range(48)),
    )
    in_batches = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=torch.utils.data.BatchSampler(
            torch.utils.data.SubsetRandomSampler(range(48)), 16, drop_last=False
        ),
    )
    pre_batched = torch.utils.data.DataLoader(_batches(x, y), batch_size=None)
    for right, batches in (
        (48, part),
        (48, in_batches),
        (N, pre_batched),  # 4 items, each a batch of 16
        (N, loader),
        (20, _batches(x, y)),
    ):
        loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=right)
        fit(model, loss_fn, batches, epochs=1, progress=False)


def test_a_subset_samplers_length_is_the_dataset_size() -> None:
    """Active learning: a sampler of the labelled part of a pool. The pool's
    size was accepted silently (a KL 4x too weak here, 50x in the probe), and
    a stale size was reported against the pool with len(dataset) advised:
    the sampler's length is N, and the pool's size is named as the mistake."""
    x, y = _data()
    pool = torch.utils.data.TensorDataset(x, y)  # N = 64 examples
    labelled = list(range(16))
    loader = torch.utils.data.DataLoader(
        pool, batch_size=8, sampler=torch.utils.data.SubsetRandomSampler(labelled)
    )
    model = _net()

    def loss(size: int) -> bnn.KullbackLeiblerLoss:
        return bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=size)

    with pytest.warns(UserWarning, match=r"draws 16 of the 64 examples") as caught:
        fit(model, loss(N), loader, epochs=1, progress=False)
    message = str(caught[0].message)
    assert "a KL 0.25 times as strong" in message
    assert "64 is the length of train_loader.dataset, the whole pool" in message
    assert "dataset_size=len(train_loader.sampler)" in message
    assert caught[0].filename == __file__
    fit(model, loss(16), loader, epochs=1, progress=False)  # no warning
    labelled += range(16, 32)  # the labelled part grows in place
    with pytest.warns(UserWarning, match="draws 32 of the 64") as caught:
        fit(model, loss(16), loader, epochs=1, progress=False)
    assert "a KL 2 times as strong" in str(caught[0].message)
    assert "whole pool" not in str(caught[0].message)
    # Indices as a list, inside a batch_sampler: the same.
    batches = torch.utils.data.DataLoader(
        pool, batch_sampler=torch.utils.data.BatchSampler(labelled, 8, False)
    )
    with pytest.warns(UserWarning, match=r"len\(train_loader\.batch_sampler\.sampler"):
        fit(model, loss(N), batches, epochs=1, progress=False)
    fit(model, loss(32), batches, epochs=1, progress=False)  # no warning
    # Fewer random draws than examples subsample the whole set: N stays right,
    # also for a user's sampler (a class-balancing one drawing with
    # replacement), which the first version told to use its length (probe).
    for sampler in (
        torch.utils.data.RandomSampler(pool, replacement=True, num_samples=16),
        torch.utils.data.WeightedRandomSampler(torch.ones(N), num_samples=16),
        _Balancing(N, 16),
    ):
        subsampled = torch.utils.data.DataLoader(pool, batch_size=8, sampler=sampler)
        fit(model, loss(N), subsampled, epochs=1, progress=False)  # no warning


class _Balancing(torch.utils.data.Sampler[int]):
    """Draws ``count`` of ``size`` indices with replacement each epoch."""

    def __init__(self, size: int, count: int) -> None:
        self.size, self.count = size, count

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randint(self.size, (self.count,)).tolist())

    def __len__(self) -> int:
        return self.count


class _Stream(torch.utils.data.IterableDataset[tuple[Tensor, Tensor]]):
    """A one-shot stream: its examples come once, then it is exhausted."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.examples = iter(list(zip(x, y, strict=True)))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.examples


def test_no_batches_because_of_drop_last_says_so() -> None:
    """Fewer examples than one batch with drop_last=True: the error said only
    "yielded no batches", leaving the user to find the flag."""
    x, y = _data()
    few = torch.utils.data.TensorDataset(x[:10], y[:10])
    dropping = torch.utils.data.DataLoader(few, batch_size=16, drop_last=True)
    message = (
        r"train_loader yielded no batches in epoch 0: it has drop_last=True and "
        r"fewer examples than one batch \(10 examples, batch_size=16\)"
    )
    ten = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=10)
    with pytest.raises(ValueError, match=message):
        fit(_net(), ten, dropping, epochs=1, progress=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), 16)
    with pytest.raises(ValueError, match=r"^val_loader yields no batches: it has drop"):
        fit(_net(), _loss(), loader, epochs=1, val_loader=dropping, progress=False)
    empty: list[tuple[Tensor, Tensor]] = []  # no drop_last to name
    with pytest.raises(ValueError, match=r"yielded no batches in epoch 0$"):
        fit(_net(), _loss(), empty, epochs=1, progress=False)
    # An exhausted stream with drop_last=True: not drop_last's doing (probe).
    stream = torch.utils.data.DataLoader(_Stream(x, y), batch_size=8, drop_last=True)
    with pytest.raises(ValueError, match=r"yielded no batches in epoch 1$"):
        fit(_net(), _loss(), stream, epochs=2, progress=False)


class _NoLength(torch.utils.data.Dataset[tuple[Tensor, Tensor]]):
    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]

    def __len__(self) -> int:
        raise NotImplementedError


def test_a_dataset_without_a_length_is_not_checked() -> None:
    x, y = _data()
    sampler = torch.utils.data.SequentialSampler(range(N))
    loader = torch.utils.data.DataLoader(
        _NoLength(x, y), batch_size=16, sampler=sampler
    )
    history = fit(_net(), _loss(), loader, epochs=1, progress=False)
    assert history.epochs_run == 1


class _DictDataset(torch.utils.data.Dataset[dict[str, Tensor]]):
    def __init__(self, x: Tensor, y: Tensor, keys: tuple[str, str]) -> None:
        self.x, self.y, self.keys = x, y, keys

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {self.keys[0]: self.x[i], self.keys[1]: self.y[i], "id": torch.tensor(i)}


@pytest.mark.parametrize("keys", [("x", "y"), ("input", "target")])
def test_mapping_batches_train_like_pairs(keys: tuple[str, str]) -> None:
    x, y = _data()
    loader = torch.utils.data.DataLoader(_DictDataset(x, y, keys), batch_size=16)
    pyro.set_rng_seed(3)
    model = _net()
    history = fit(model, _loss(), loader, epochs=2, val_loader=loader, progress=False)
    _assert_same_history_as_batches(history, x, y)


@pytest.mark.parametrize(
    ("batch", "found"),
    [
        ({"image": 1, "label": 2}, "neither of 'x' and 'input'"),
        ({"x": 1, "input": 1, "y": 2}, "both of 'x' and 'input'"),
        ({"x": 1, "label": 2}, "neither of 'y' and 'target'"),
    ],
)
def test_mapping_batch_without_known_keys_is_explained(
    batch: dict[str, int], found: str
) -> None:
    message = (
        r"train_loader must yield \(x, y\) pairs, or mappings with the input under "
        rf"'x' or 'input' and the target under 'y' or 'target'; epoch 0, step 0 gave "
        rf"a mapping with {found}"
    )
    with pytest.raises(ValueError, match=message):
        fit(_net(), _loss(), [batch], epochs=1, progress=False)


def test_clip_grad_norm_is_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(params: Any, max_norm: float, *args: Any, **kwargs: Any) -> Tensor:
        calls.append(max_norm)
        return original(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    x, y = _data()
    model = _net()
    fit(model, _loss(), _batches(x, y), epochs=1, clip_grad_norm=0.5, progress=False)
    assert calls == [0.5] * 4


class _ClosureSGD(torch.optim.Optimizer):
    """An optimizer whose step needs a closure: it evaluates it twice per step.

    Records each evaluation's loss and gradient norm; with ``poison`` it makes
    the parameters NaN between the two evaluations.
    """

    def __init__(self, params: Any, poison: bool = False) -> None:
        super().__init__(params, {"lr": 0.05})
        self.poison = poison
        self.losses: list[float] = []
        self.grad_norms: list[float] = []

    def step(self, closure: Any) -> Any:  # type: ignore[override]
        params = [p for group in self.param_groups for p in group["params"]]
        for _ in range(2):
            loss = closure()
            self.losses.append(float(loss))
            grads = [p.grad.flatten() for p in params if p.grad is not None]
            self.grad_norms.append(float(torch.cat(grads).norm()))
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.sub_(0.05 * p.grad)
                    if self.poison:
                        p.fill_(math.nan)
        return loss


def test_an_optimizer_whose_step_needs_a_closure_trains() -> None:
    """fit called optimizer.step() without a closure: LBFGS failed with torch's
    "missing 1 required positional argument: 'closure'" after a forward and
    backward pass had run."""
    x, y = _data()
    model = _net()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    history = fit(
        model, _loss(), [(x, y)], epochs=5, optimizer=optimizer, progress=False
    )
    assert history.loss[-1] < 0.5 * history.loss[0]


def test_a_closure_is_evaluated_as_often_as_the_optimizer_asks() -> None:
    """Each evaluation is clipped; the step's loss is its first evaluation's
    (the loss before the step, as with other optimizers)."""
    x, y = _data()
    model = _net()
    optimizer = _ClosureSGD(model.parameters())
    history = fit(
        model,
        _loss(),
        [(x, y)],
        epochs=3,
        optimizer=optimizer,
        clip_grad_norm=0.01,
        progress=False,
    )
    assert len(optimizer.losses) == 6
    assert history.loss == pytest.approx(optimizer.losses[::2], rel=1e-6)
    assert max(optimizer.grad_norms) <= 0.01 * (1 + 1e-5)


def test_the_nan_guard_checks_every_evaluation_of_a_closure() -> None:
    x, y = _data()
    model = _net()
    before = _state(model)
    optimizer = _ClosureSGD(model.parameters(), poison=True)
    # the step's first evaluation passed: the message names the later one
    later = (
        r"non-finite loss \(nan\) in evaluation 1 \(counted from 0\) of the "
        r"optimizer's closure, at parameters the optimizer moved to within the "
        r"step .*\(whose loss, the step's, was [0-9.]+\); a smaller lr"
    )
    with pytest.raises(FloatingPointError, match=later + r" .* epoch 0, step 0"):
        fit(model, _loss(), [(x, y)], epochs=2, optimizer=optimizer, progress=False)
    assert len(optimizer.losses) == 1  # the second evaluation raised
    _assert_same_state(_state(model), before)


class _Reevaluating(torch.optim.Optimizer):
    """Evaluates the closure ``times`` times per step at the same parameters
    (as LBFGS's line search compares evaluations), moving none of them."""

    def __init__(self, params: Any, times: int) -> None:
        super().__init__(params, {})
        self.times = times
        self.steps: list[list[tuple[float, Tensor]]] = []

    def step(self, closure: Any) -> Any:  # type: ignore[override]
        params = [p for group in self.param_groups for p in group["params"]]
        evaluations = []
        for _ in range(self.times):
            loss = closure()
            grads = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
            evaluations.append((float(loss), grads.clone()))
        self.steps.append(evaluations)
        return loss


def test_every_evaluation_of_a_step_draws_the_same_weights() -> None:
    """Each closure evaluation drew new weights: LBFGS compared values and
    gradients of a different Monte-Carlo objective every time (its
    strong_wolfe line search stalled, non-finite losses followed; probe
    trainloops fit_lbfgs). Within a step every evaluation now gets the first
    one's random numbers (equal loss and gradients at equal parameters,
    exactly); the generators end where one evaluation leaves them, so the
    run draws as one with one evaluation per step, and each step draws anew."""
    x, y = _data()
    runs = []
    for times in (3, 1):
        pyro.set_rng_seed(5)
        model = _net()
        optimizer = _Reevaluating(model.parameters(), times)
        fit(
            model,
            _loss(),
            _batches(x, y),
            epochs=2,
            optimizer=optimizer,
            progress=False,
        )
        runs.append((optimizer.steps, torch.get_rng_state()))
    (steps, after), (once, after_once) = runs
    assert len(steps) == len(once) == 8
    for evaluations, single in zip(steps, once, strict=True):
        for loss, grads in evaluations[1:]:
            assert loss == evaluations[0][0]
            torch.testing.assert_close(grads, evaluations[0][1], rtol=0, atol=0)
        assert evaluations[0][0] == single[0][0]
    assert len({evaluations[0][0] for evaluations in steps[::4]}) == 2  # new draws
    assert torch.equal(after, after_once)


def test_invalid_arguments() -> None:
    x, y = _data()
    model, loss_fn, batches = _net(), _loss(), _batches(x, y)
    with pytest.raises(ValueError, match="needs a val_loader"):
        fit(model, loss_fn, batches, epochs=2, early_stopping_patience=1)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, loss_fn, batches, epochs=-1)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        fit(model, loss_fn, batches, epochs=1, clip_grad_norm=0.0)
    with pytest.raises(ValueError, match="no batches"):
        fit(model, loss_fn, [], epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"\(x, y\) pairs"):
        fit(model, loss_fn, [x], epochs=1, progress=False)
    for initial_epoch in (-1, 3):
        with pytest.raises(
            ValueError, match=r"initial_epoch must be .* \[0, epochs=2\]"
        ):
            fit(model, loss_fn, batches, epochs=2, initial_epoch=initial_epoch)
    with pytest.raises(TypeError, match="initial_epoch must be an integer"):
        fit(model, loss_fn, batches, epochs=2, initial_epoch=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"optimizer": torch.optim.Adam}, TypeError, "optimizer instance"),
        ({"callbacks": object()}, TypeError, "list of callbacks"),
        ({"clip_grad_norm": "1"}, TypeError, "clip_grad_norm must be a number"),
        ({"epochs": 1.5}, TypeError, "epochs must be an integer"),
        # 'no' showed the progress bar; a callback without on_epoch_end was skipped
        ({"progress": "no"}, TypeError, "progress must be True or False, got 'no'"),
        (
            {"callbacks": [3]},
            TypeError,
            r"callbacks\[0\] must be a function or .*on_epoch_end",
        ),
    ],
)
def test_fit_refuses_wrong_argument_types_clearly(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    """They raised AttributeError/TypeError deep inside, or were ignored."""
    x, y = _data()
    arguments: dict[str, object] = {"epochs": 1, "progress": False, **kwargs}
    with pytest.raises(error, match=message):
        fit(_net(), _loss(), _batches(x, y), **arguments)  # type: ignore[arg-type]


def test_fit_refuses_an_optimizer_of_another_model() -> None:
    """convert returns a new network: the torch model's optimizer trained nothing."""
    x, y = _data()
    plain = nn.Sequential(nn.Linear(x.shape[1], 2))
    optimizer = torch.optim.Adam(plain.parameters())
    bayesian = bnn.convert(plain)
    with pytest.raises(ValueError, match="holds none of the model's"):
        fit(bayesian, _loss(), _batches(x, y), 1, optimizer, progress=False)


def test_fit_warns_of_trainable_parameters_the_optimizer_does_not_hold() -> None:
    """A head replaced after the optimizer was made stayed untrained through
    fit, its gradient growing, without a word (found by a mutation probe)."""
    x, y = _data()
    net = _net()
    optimizer = _adam(net)
    net[2] = bnn.VILinear(net[2].in_features, 2)
    before = {k: v.clone() for k, v in net[2].state_dict().items()}
    message = r"4 of the model's trainable parameters.*\(2\.posterior\.weight"
    with pytest.warns(UserWarning, match=message):
        fit(net, _loss(), _batches(x, y), 1, optimizer, progress=False)
    assert all(torch.equal(before[k], v) for k, v in net[2].state_dict().items())
    for parameter in net[2].parameters():
        parameter.requires_grad_(False)  # kept fixed on purpose: no warning
    fit(net, _loss(), _batches(x, y), 1, optimizer, progress=False)


def test_fit_refuses_a_model_without_bayesian_layers() -> None:
    x, y = _data()
    with pytest.raises(TypeError, match="without any"):
        fit(nn.Linear(x.shape[1], 2), _loss(), _batches(x, y), 1, progress=False)


def test_fit_takes_plain_function_callbacks_and_numpy_epochs() -> None:
    """A plain function callback was ignored silently; numpy epochs refused."""
    x, y = _data()
    seen: list[int] = []
    history = fit(
        _net(),
        _loss(),
        _batches(x, y),
        np.int64(3),  # type: ignore[arg-type]
        callbacks=[lambda epoch, history, model: seen.append(epoch) or epoch == 1],
        progress=False,
    )
    assert seen == [0, 1]
    assert history.stopped_early


def test_fit_needs_a_kullback_leibler_loss() -> None:
    x, y = _data()
    with pytest.raises(
        TypeError, match=r"fit needs a bnn\.KullbackLeiblerLoss .* MSELoss"
    ):
        fit(_net(), nn.MSELoss(), _batches(x, y), epochs=1, progress=False)  # type: ignore[arg-type]


# ------------------------------------------------------------ heat schedule
def test_linear_warmup() -> None:
    schedule = linear_warmup(4, start=0.2, end=1.0)
    assert [schedule(e) for e in range(6)] == pytest.approx(
        [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    )
    assert linear_warmup(0)(0) == 1.0
    assert linear_warmup(np.int64(2))(1) == 0.5  # was refused as no integer
    with pytest.raises(ValueError, match="epochs"):
        linear_warmup(-1)
    with pytest.raises(TypeError, match="epochs must be an integer"):
        linear_warmup(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start"):
        linear_warmup(3, start=-0.1)


def test_heat_schedule_sets_loss_heat_each_epoch() -> None:
    x, y = _data()
    model, loss_fn = _net(), _loss()
    schedule = linear_warmup(3)
    recorder = _Recorder(loss_fn)
    history = fit(
        model,
        loss_fn,
        _batches(x, y),
        epochs=5,
        optimizer=_adam(model),
        heat_schedule=schedule,
        callbacks=[recorder],
        progress=False,
    )
    expected = [schedule(e) for e in range(5)]
    assert recorder.heats == expected
    assert history.heat == expected
    assert history.loss[0] == pytest.approx(history.nll[0])  # heat 0: no KL
    with pytest.raises(ValueError, match="heat"):
        fit(model, loss_fn, _batches(x, y), epochs=1, heat_schedule=lambda e: -1.0)


# ----------------------------------------------------- stopping and callbacks
def test_early_stopping_stops_and_restores_best_state() -> None:
    x, y = _data()
    xv, yv = _data(flip=True, seed=1)  # the better the fit, the worse this gets
    model, loss_fn = _net(), _loss()
    recorder = _Recorder()
    patience = 2
    history = fit(
        model,
        loss_fn,
        _batches(x, y),
        epochs=60,
        optimizer=_adam(model),
        val_loader=_batches(xv, yv, 32),
        early_stopping_patience=patience,
        callbacks=[recorder],
        progress=False,
    )
    assert history.stopped_early
    assert history.epochs_run < 60
    best = history.best_epoch
    assert best is not None
    assert best == min(range(history.epochs_run), key=history.val_loss.__getitem__)
    assert history.epochs_run - 1 - best == patience
    _assert_same_state(_state(model), recorder.states[best])


def test_callback_can_stop_training() -> None:
    x, y = _data()

    class StopAfterTwo:
        def on_epoch_end(self, epoch: int, history: History, model: nn.Module) -> bool:
            return epoch == 1

    history = fit(
        _net(),
        _loss(),
        _batches(x, y),
        epochs=5,
        callbacks=[lambda *_: None, StopAfterTwo()],
        progress=False,
    )
    assert history.epochs_run == 2
    assert history.stopped_early
    assert len(history.loss) == 2


# ----------------------------------------------------------------- NaN guard
class _Breakable(bnn.VIModule):
    """A linear layer whose output or gradient becomes NaN on request."""

    def __init__(self, mode: str, after: int) -> None:
        super().__init__()
        self.body = bnn.VISequential(bnn.VILinear(3, 2))
        self.mode = mode
        self.after = after
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.body(x)
        self.calls += 1
        if self.calls <= self.after:
            return out
        if self.mode == "grad":  # finite value, NaN gradient: 0 * d sqrt(z)/dz at 0
            return out + 0.0 * torch.sqrt(out * 0.0)
        return out * float("nan")


def test_nan_loss_restores_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    x, y = _data()
    batches = _batches(x, y)
    bad = x[:16].clone()
    bad[0, 0] = float("inf")
    # Epoch 0: four good steps; epoch 1: the third batch has an Inf input.
    epoch1 = [*batches[:2], (bad, y[:16]), batches[3]]

    class Loader:
        def __init__(self) -> None:
            self.epoch = 0

        def __iter__(self) -> Any:
            self.epoch += 1
            return iter(batches if self.epoch == 1 else epoch1)

    model, loss_fn = _net(), _loss()
    optimizer = _adam(model)
    recorder = _Recorder()
    path = tmp_path / "ckpt.pt"
    with (
        bnn.validation(False),
        pyro.validation_enabled(False),
        pytest.raises(FloatingPointError, match=r"epoch 1, step 2") as info,
    ):
        fit(
            model,
            loss_fn,
            Loader(),
            epochs=3,
            optimizer=optimizer,
            callbacks=[recorder],
            checkpoint_path=path,
            progress=False,
        )
    message = str(info.value)
    assert "non-finite loss" in message
    assert "end of epoch 0" in message
    assert recorder.epochs == [0]
    _assert_same_state(_state(model), recorder.states[0])
    fresh = _net()
    assert load_checkpoint(path, fresh, _adam(fresh), _loss())["epoch"] == 0
    _assert_same_state(_state(fresh), recorder.states[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_nan_gradient_restores_state_before_training() -> None:
    x, y = _data()
    model = _Breakable("grad", after=2)
    before = _state(model)
    with pytest.raises(FloatingPointError, match=r"epoch 0, step 2") as info:
        fit(model, _loss(), _batches(x, y), epochs=2, progress=False)
    message = str(info.value)
    assert "non-finite gradient of model.body.0.posterior" in message
    assert "before training" in message
    _assert_same_state(_state(model), before)


def test_nan_output_rejected_by_likelihood_becomes_floating_point_error() -> None:
    x, y = _data()
    model = _Breakable("output", after=5)
    optimizer = _adam(model)
    recorder = _Recorder()
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 1") as info:
        fit(
            model,
            _loss(),
            _batches(x, y),
            epochs=3,
            optimizer=optimizer,
            callbacks=[recorder],
            progress=False,
        )
    # The likelihood sees the NaN output (the loss skips distribution-level
    # checks after validating targets itself), so the loss is non-finite.
    assert "non-finite" in str(info.value)
    _assert_same_state(_state(model), recorder.states[0])


class _RejectsNonFinite(bnn.Categorical):
    """A likelihood that refuses non-finite network outputs (``ValueError``)."""

    def check_target(self, output: Tensor, target: Tensor) -> None:
        super().check_target(output, target)
        if not bool(torch.isfinite(output).all()):
            raise ValueError("network output is not finite")


@pytest.mark.parametrize("after", [0, 5], ids=["first step", "later step"])
def test_output_rejected_by_the_likelihood_at_any_step(after: int) -> None:
    """The loss never ran for the rejected output: its NLL and KL are not read
    (missing on the first step, of an earlier step later)."""
    x, y = _data()
    model = _Breakable("output", after=after)
    before = _state(model)
    loss_fn = bnn.KullbackLeiblerLoss(_RejectsNonFinite(), dataset_size=N)
    with pytest.raises(FloatingPointError, match="non-finite network output") as info:
        fit(model, loss_fn, _batches(x, y), epochs=3, progress=False)
    assert isinstance(info.value.__cause__, ValueError)
    assert f"epoch {after // 4}, step {after % 4}" in str(info.value)
    if after == 0:
        _assert_same_state(_state(model), before)


def test_invalid_input_is_not_reported_as_divergence() -> None:
    x, y = _data()
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        fit(_net(), _loss(), _batches(x, y), epochs=1, progress=False)


# ---------------------------------------------------------------- checkpoints
class _CountingLoader:
    """A loader that counts how often training started to iterate it."""

    def __init__(self, batches: Batches) -> None:
        self.batches, self.iterations = batches, 0

    def __iter__(self) -> Any:
        self.iterations += 1
        return iter(self.batches)


@pytest.mark.parametrize(
    ("where", "error", "message"),
    [
        (
            "missing_dir/x.pt",
            FileNotFoundError,
            "the directory .*missing_dir' does not exist",
        ),
        (".", IsADirectoryError, "it is a directory"),
    ],
)
def test_unwritable_checkpoint_path_fails_before_training(
    tmp_path: Path, where: str, error: type[Exception], message: str
) -> None:
    x, y = _data()
    loader = _CountingLoader(_batches(x, y))
    model = _net()
    before = _state(model)
    with pytest.raises(error, match=f"cannot write the checkpoint .*: {message}"):
        fit(
            model,
            _loss(),
            loader,
            epochs=1,
            checkpoint_path=tmp_path / where,
            progress=False,
        )
    assert loader.iterations == 0
    _assert_same_state(_state(model), before)


def test_fit_writes_a_checkpoint_every_epoch(tmp_path: Path) -> None:
    x, y = _data()
    path = tmp_path / "run.pt"
    model, loss_fn = _net(), _loss()
    seen: list[int | None] = []

    class Check:
        def on_epoch_end(self, epoch: int, history: History, model: nn.Module) -> None:
            seen.append(load_checkpoint(path, _net())["epoch"])

    history = fit(
        model,
        loss_fn,
        _batches(x, y),
        epochs=3,
        callbacks=[Check()],
        checkpoint_path=path,
        progress=False,
    )
    assert seen == [0, 1, 2]
    info = load_checkpoint(path, _net(), loss_fn=_loss())
    assert info["extra"]["history"]["loss"] == history.loss
    assert info["version"] == bnn.__version__


def test_resume_from_a_checkpoint_continues_the_run(tmp_path: Path) -> None:
    """Stopped after epoch 1 and resumed with ``initial_epoch=2``, a run ends
    with exactly the parameters, heats and losses of an uninterrupted one
    (the generators' state restored by the caller, as documented)."""
    x, y = _data()
    batches, val = _batches(x, y), _batches(*_data(seed=1), 32)
    path = tmp_path / "run.pt"
    schedule = linear_warmup(3)
    options: dict[str, Any] = {
        "heat_schedule": schedule,
        "val_loader": val,
        "progress": False,
    }
    torch.manual_seed(1)
    whole_model = _net()
    whole = fit(whole_model, _loss(), batches, epochs=5, **options)
    options["checkpoint_path"] = path

    rng_states: list[Tensor] = []

    class KeepGenerator:
        def on_epoch_end(self, epoch: int, history: History, model: nn.Module) -> None:
            rng_states.append(torch.get_rng_state())

    torch.manual_seed(1)
    with pytest.warns(UserWarning, match="warm-up of 3 epochs is not over"):
        first = fit(_net(), _loss(), batches, 2, callbacks=[KeepGenerator()], **options)
    model, loss_fn = _net(), _loss()
    optimizer = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=1e-3)
    info = load_checkpoint(path, model, optimizer, loss_fn)
    torch.set_rng_state(rng_states[info["epoch"]])
    recorder = _Recorder()
    resumed = fit(
        model,
        loss_fn,
        batches,
        epochs=5,
        optimizer=optimizer,
        initial_epoch=info["epoch"] + 1,
        callbacks=[recorder],
        **options,
    )
    _assert_same_state(_state(model), _state(whole_model))
    assert recorder.epochs == [2, 3, 4]
    assert resumed.heat == whole.heat[2:] == [schedule(e) for e in (2, 3, 4)]
    assert first.loss + resumed.loss == whole.loss
    assert first.val_loss + resumed.val_loss == whole.val_loss
    assert resumed.epochs_run == 5
    assert load_checkpoint(path, _net())["epoch"] == 4


def test_early_stopping_patience_counts_from_initial_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without any improvement (NaN validation losses), a resumed run stops
    after ``patience`` of its own epochs, as a run from epoch 0 does."""
    monkeypatch.setattr(
        sys.modules["pyrolite_bnn.training"], "_validation_nll", lambda *_: math.nan
    )
    x, y = _data()
    for initial_epoch in (0, 3):
        with pytest.warns(RuntimeWarning, match="validation loss"):
            history = fit(
                _net(),
                _loss(),
                _batches(x, y),
                epochs=8,
                val_loader=_batches(x, y),
                early_stopping_patience=2,
                initial_epoch=initial_epoch,
                progress=False,
            )
        assert history.stopped_early
        assert history.best_epoch is None
        assert len(history.loss) == 2
        assert history.epochs_run == initial_epoch + 2


# ------------------------------------------------------------------ progress
def test_progress_fallback_without_tqdm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    x, y = _data()
    fit(_net(), _loss(), _batches(x, y), epochs=2, val_loader=_batches(x, y))
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2: loss=")
    assert lines[1].startswith("epoch 2/2: loss=")
    for name in ("nll=", "kl=", "val_loss=", "heat=1"):
        assert name in lines[1]


def test_progress_false_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    x, y = _data()
    fit(_net(), _loss(), _batches(x, y), epochs=1, progress=False)
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


def test_progress_bar_with_tqdm(capsys: pytest.CaptureFixture[str]) -> None:
    """The bar of an epoch shows its validation loss and heat, as the fallback.

    The bar was closed before the validation ran: with tqdm (always there:
    Pyro needs it) ``val_loss`` was never shown.
    """
    pytest.importorskip("tqdm")
    x, y = _data()
    fit(_net(), _loss(), _batches(x, y), epochs=2, val_loader=_batches(x, y))
    err = capsys.readouterr().err
    assert "epoch 2/2" in err
    for name in ("loss=", "nll=", "kl=", "val_loss=", "heat=1"):
        assert name in err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "epoch 2/2" in last
    assert "val_loss=" in last


class _NaNWhenEvaluated(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc = bnn.VILinear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        return out if self.training else out * float("nan")  # type: ignore[no-any-return]


def test_non_finite_validation_loss_warns() -> None:
    """Training is finite (the NaN guard is quiet), validation is not."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 16)
    with pytest.warns(RuntimeWarning, match="validation loss of epoch 0 is nan"):
        history = bnn.fit(
            _NaNWhenEvaluated(),
            loss_fn,
            [(x, y)],
            1,
            val_loader=[(x, y)],
            progress=False,
        )
    assert math.isnan(history.val_loss[0])


def test_fit_takes_numpy_and_tensor_clip_norms() -> None:
    x, y = _data()
    for clip in (np.float32(1.0), torch.tensor(1.0)):
        fit(_net(), _loss(), _batches(x, y), 1, clip_grad_norm=clip, progress=False)
    with pytest.raises(TypeError, match="initial_epoch must be an integer"):
        fit(_net(), _loss(), _batches(x, y), 1, initial_epoch="1", progress=False)  # type: ignore[arg-type]


def test_a_callback_returning_something_else_than_a_bool_is_refused() -> None:
    """Any truthy value stopped training after epoch 0 (a metric, the model)."""
    x, y = _data()
    for answer in (0.5, "stop", 2):
        with pytest.raises(TypeError, match="returns True \\(stop\\), False or None"):
            fit(
                _net(),
                _loss(),
                _batches(x, y),
                3,
                progress=False,
                callbacks=[lambda *_, a=answer: a],
            )
    for stop, epochs_run in (
        (np.True_, 1),
        (torch.tensor(True), 1),
        (1, 1),
        (torch.tensor(False), 2),
        (0, 2),
        (None, 2),
    ):
        history = fit(
            _net(),
            _loss(),
            _batches(x, y),
            2,
            progress=False,
            callbacks=[lambda *_, s=stop: s],
        )
        assert history.epochs_run == epochs_run


def test_a_warm_up_longer_than_the_run_warns() -> None:
    """linear_warmup(10) over 3 epochs: never the ELBO, and the heat stays 0.2."""
    x, y = _data()
    loss_fn = _loss()
    with pytest.warns(UserWarning, match="never reaches heat 1"):
        fit(
            _net(),
            loss_fn,
            _batches(x, y),
            3,
            progress=False,
            heat_schedule=linear_warmup(10),
        )
    assert loss_fn.heat == pytest.approx(0.2)
    fit(
        _net(),
        _loss(),
        _batches(x, y),
        3,
        progress=False,
        heat_schedule=linear_warmup(2),
    )  # over within the run: quiet


# ------------------------------------------------- networks with several inputs
class _Concatenating(bnn.VIModule):
    """``forward(a, b)``: the network of ``_net()`` on ``cat([a, b])``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _net()

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.body(torch.cat([a, b], -1))


class _PairDataset(torch.utils.data.Dataset[tuple[tuple[Tensor, Tensor], Tensor]]):
    """Items ``((a, b), y)``; a ``DataLoader`` collates the pair into a list."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[tuple[Tensor, Tensor], Tensor]:
        return (self.x[i, :2], self.x[i, 2:]), self.y[i]


@pytest.mark.parametrize("source", ["tuples", "DataLoader"])
def test_several_inputs_train_and_validate_unpacked(source: str) -> None:
    """Batches ``((a, b), y)`` run ``model(a, b)``, as ``predict`` runs them.

    Training passed the tuple as one argument (TypeError for ``forward(a,
    b)``), and a ``DataLoader``'s list even in ``model_loss``.
    """
    x, y = _data()
    loader: Any = (
        [((xb[:, :2], xb[:, 2:]), yb) for xb, yb in _batches(x, y)]
        if source == "tuples"
        else torch.utils.data.DataLoader(_PairDataset(x, y), batch_size=16)
    )
    pyro.set_rng_seed(3)
    model = _Concatenating()
    history = fit(model, _loss(), loader, epochs=2, val_loader=loader, progress=False)
    _assert_same_history_as_batches(history, x, y)  # the concatenated inputs


def test_a_forward_taking_one_list_is_told_the_inputs_were_unpacked() -> None:
    """A tuple or list of inputs is unpacked, model(*x): a forward taking one
    list got torch's bare 'takes 2 positional arguments but 3 were given'."""

    class OneList(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = bnn.VILinear(4, 2)

        def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
            return self.fc(inputs[0] + inputs[1])

    net = OneList()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=8)
    x = [torch.randn(8, 4), torch.randn(8, 4)]
    y = torch.randint(0, 2, (8,))
    with pytest.raises(TypeError, match="unpacked from a tuple or list"):
        bnn.fit(net, loss_fn, [(x, y)], epochs=1, progress=False)
    with pytest.raises(TypeError, match="unpacked from a tuple or list"):
        loss_fn.pyro_model(net)(x, y)


def test_step_end_callbacks_run_after_every_optimizer_step() -> None:
    """A per-step learning-rate schedule (``OneCycleLR``) had no place in
    ``fit``, whose callbacks ran only at the end of an epoch: an object's
    ``on_step_end(epoch, step, loss)`` now runs after every optimizer step,
    with that step's loss, and may be the callback's only method."""
    torch.manual_seed(0)
    net = bnn.VISequential(bnn.VILinear(2, 4), nn.Tanh(), bnn.VILinear(4, 2))
    x, y = torch.randn(24, 2), torch.arange(24) % 2
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 24, 8)]
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=24)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.1, total_steps=2 * len(batches)
    )
    calls: list[tuple[int, int, float]] = []
    rates: list[float] = []

    class StepSchedule:
        def on_step_end(self, epoch: int, step: int, loss: float) -> None:
            calls.append((epoch, step, loss))
            rates.append(optimizer.param_groups[0]["lr"])
            schedule.step()

    history = bnn.fit(
        net,
        loss_fn,
        batches,
        epochs=2,
        optimizer=optimizer,
        callbacks=[StepSchedule()],
        progress=False,
    )
    assert [(e, s) for e, s, _ in calls] == [(e, s) for e in (0, 1) for s in (0, 1, 2)]
    for epoch in (0, 1):
        losses = [loss for e, _, loss in calls if e == epoch]
        assert sum(losses) / 3 == pytest.approx(history.loss[epoch])
    assert schedule.last_epoch == 6
    assert rates[0] < rates[2]  # the one-cycle warm-up, step by step


class _StepCounter:
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, epoch: int, step: int, loss: float) -> None:
        self.steps += 1


class _StopsAtStep:
    def on_step_end(self, epoch: int, step: int, loss: float) -> bool:
        return True


class _NotCallable:
    on_step_end = 3

    def on_epoch_end(self, epoch: int, history: object, model: object) -> None:
        return None


@pytest.mark.parametrize(
    ("callback", "message"),
    [
        (_StepCounter, r"is the class _StepCounter: pass an instance"),
        (_NotCallable(), r"callbacks\[0\]\.on_step_end must be a method, got int"),
    ],
)
def test_callback_mistakes_are_refused(callback: object, message: str) -> None:
    """A class passed for an instance failed with "missing 1 required
    positional argument"; a non-callable ``on_step_end`` beside a callable
    ``on_epoch_end`` was ignored."""
    x, y = _data()
    with pytest.raises(TypeError, match=message):
        fit(_net(), _loss(), _batches(x, y), 1, progress=False, callbacks=[callback])


def test_a_value_returned_per_step_is_ignored_with_one_warning() -> None:
    """``True`` from ``on_step_end`` (meant as "stop") was ignored silently;
    it still does not stop (a progress bar's ``update`` returns ``True``)."""
    x, y = _data()
    with pytest.warns(UserWarning, match="the value of on_step_end is ignored") as seen:
        history = fit(
            _net(),
            _loss(),
            _batches(x, y),
            2,
            progress=False,
            callbacks=[_StopsAtStep()],
        )
    assert len(history.loss) == 2
    assert sum("on_step_end is ignored" in str(w.message) for w in seen) == 1


@pytest.mark.parametrize(
    "disabled",
    [torch.no_grad, torch.inference_mode, lambda: torch.set_grad_enabled(False)],
    ids=["no_grad", "inference_mode", "set_grad_enabled"],
)
def test_fit_with_gradients_disabled_refuses_instead_of_training_nothing(
    disabled: Any,
) -> None:
    """Under ``torch.no_grad()`` fit skipped every backward and returned a
    normal-looking History with no parameter changed (probe of 2026-12-02);
    a torch loop raises at ``backward()``."""
    net = _net()
    before = _state(net)
    with disabled(), pytest.raises(RuntimeError, match="outside that block"):
        fit(net, _loss(), _batches(*_data()), epochs=1, progress=False)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_fit_of_a_model_with_every_parameter_frozen_refuses() -> None:
    """An optimizer over frozen parameters: no backward ran, silently."""
    net = _net()
    optimizer = _adam(net)
    net.requires_grad_(False)
    with pytest.raises(RuntimeError, match="train nothing"):
        fit(net, _loss(), _batches(*_data()), 1, optimizer=optimizer, progress=False)


def _regression_batches(bad: int | None = None) -> Batches:
    """Four regression batches of 8; a NaN target in batch ``bad``."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(32, 3, generator=generator)
    y = x.sum(1)
    if bad is not None:
        y[8 * bad + 3] = math.nan
    return _batches(x, y, size=8)


def _regression() -> tuple[bnn.VISequential, bnn.KullbackLeiblerLoss]:
    net = bnn.VISequential(bnn.VILinear(3, 8), nn.Tanh(), bnn.VILinear(8, 1))
    return net, bnn.KullbackLeiblerLoss(bnn.Normal(), 32)


@pytest.mark.parametrize("epoch", [0, 1])
def test_a_step_refused_by_validation_restores_the_state_and_names_the_step(
    epoch: int,
) -> None:
    """A NaN target (validation on) stopped fit with the loss's ValueError and no
    epoch or step, leaving the epoch's earlier steps applied (Adam's state
    too); with validation off the NaN guard restored and named the step. Now
    both restore the state of the last completed epoch."""
    model, loss_fn = _regression()
    optimizer = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], 0.01)
    kept: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []

    def keep(epoch: int, history: History, model: nn.Module) -> None:
        kept.append((_state(model), _state(loss_fn)))

    good, bad = _regression_batches(), _regression_batches(bad=2)

    class Switch:
        """The good batches in epoch 0, the bad ones after."""

        def __init__(self) -> None:
            self.epochs = 0

        def __iter__(self) -> Any:
            self.epochs += 1
            return iter(good if self.epochs <= epoch else bad)

    before = (_state(model), _state(loss_fn))
    where = "before training" if epoch == 0 else "at the end of epoch 0"
    with pytest.raises(
        ValueError,
        match=rf"target contains 1 NaN.*\(fit stopped at epoch {epoch}, step 2 "
        rf"\(global step {4 * epoch + 2}\), counted from 0; restored model, loss_fn "
        rf"and optimizer to their state {where}\)$",
    ):
        fit(model, loss_fn, Switch(), 3, optimizer, callbacks=[keep], progress=False)
    expected = before if epoch == 0 else kept[0]
    _assert_same_state(_state(model), expected[0])
    _assert_same_state(_state(loss_fn), expected[1])
    assert len(optimizer.state) == (
        0 if epoch == 0 else len(optimizer.param_groups[0]["params"])
    )


def test_a_loaders_batch_of_one_for_batch_norm_restores_and_names_drop_last() -> None:
    """bnn.BatchNorm1d refuses the DataLoader's last batch of one example: the
    error named neither the step nor drop_last, the model was left
    half-trained and the running statistics moved."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(17, 3, generator=generator), torch.randn(17, generator=generator)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=8
    )
    model = bnn.VISequential(
        bnn.VILinear(3, 8), bnn.BatchNorm1d(8), nn.ReLU(), bnn.VILinear(8, 1)
    )
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 17)
    before = _state(model)
    with pytest.raises(
        ValueError, match=r"drop_last=True.*fit stopped at epoch 0, step 2 .*before"
    ):
        fit(model, loss_fn, loader, 2, progress=False)
    _assert_same_state(_state(model), before)  # num_batches_tracked too


class _Heads(bnn.VIModule):
    """A class head and a value head, as a dict or a tuple."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = bnn.VILinear(3, 8)
        self.label, self.value = bnn.VILinear(8, 2), bnn.VILinear(8, 1)

    def forward(self, x: Tensor) -> Any:
        h = torch.relu(self.body(x))
        label, value = self.label(h), self.value(h)
        return (
            {"label": label, "value": value} if self.kind == "dict" else (label, value)
        )


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_fit_on_a_network_with_several_outputs_names_the_loop_and_the_wrapper(
    kind: str,
) -> None:
    """fit passed on the loss's advice to return the one output to score;
    fit trains one loss, so it names the two routes for several heads."""
    model = _Heads(kind)
    x, y = _data()
    before = _state(model)
    with pytest.raises(
        TypeError,
        match=r"fit trains one loss on one output of the network, got "
        + ("dict \\(outputs 'label', 'value'\\)" if kind == "dict" else "tuple of 2")
        + r".*write the training loop .*heat=0 on every loss but one.*wrapper "
        r"network whose forward returns the one head.*fit stopped at epoch 0",
    ):
        fit(model, _loss(), _batches(x, y), 1, progress=False)
    _assert_same_state(_state(model), before)


def test_an_empty_batch_stops_fit_with_the_losss_message_and_restores() -> None:
    model, loss_fn = _regression()
    batches = _regression_batches()
    batches.insert(1, (batches[0][0][:0], batches[0][1][:0]))
    before = _state(model)
    with pytest.raises(
        ValueError, match=r"the batch is empty .*fit stopped at epoch 0, step 1 "
    ):
        fit(model, loss_fn, batches, 2, progress=False)
    _assert_same_state(_state(model), before)


def test_a_loaders_own_error_restores_and_names_the_step() -> None:
    """An error fetching batch 2 (a data set's __getitem__) stops step 2."""
    model, loss_fn = _regression()

    def batches() -> Any:
        yield from _regression_batches()[:2]
        raise KeyError("image 17")

    before = _state(model)
    with pytest.raises(KeyError) as info:
        fit(model, loss_fn, batches(), 1, progress=False)
    place = "fit stopped at epoch 0, step 2 (global step 2)"
    if sys.version_info >= (3, 11):  # KeyError's message is its key: a note
        assert any(place in note for note in info.value.__notes__)
    _assert_same_state(_state(model), before)


def test_an_interrupt_keeps_the_training_so_far() -> None:
    """Ctrl-C is no error of the step: the model keeps its steps."""
    model, loss_fn = _regression()
    before = _state(model)

    class Interrupt:
        def on_step_end(self, epoch: int, step: int, loss: float) -> None:
            if step == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(
            model,
            loss_fn,
            _regression_batches(),
            1,
            callbacks=[Interrupt()],
            progress=False,
        )
    assert not torch.equal(
        _state(model)["0.posterior.weight.loc_unconstrained"],
        before["0.posterior.weight.loc_unconstrained"],
    )


@pytest.mark.parametrize(
    "val_loader",
    ["empty list", "empty loader", "nan target", "nan input", "nan in a loader"],
)
def test_bad_validation_data_is_refused_before_training(val_loader: str) -> None:
    """An empty or NaN validation set failed only after a whole training epoch."""
    x, y = _regression_batches()[0]
    nan_y, nan_x = y.clone(), x.clone()
    nan_y[1] = nan_x[2, 0] = math.nan
    data = torch.utils.data.TensorDataset
    loaders: dict[str, Any] = {
        "empty list": [],
        "empty loader": torch.utils.data.DataLoader(data(x[:0], y[:0])),
        "nan target": [(x, y), (x, nan_y)],
        "nan input": [(nan_x, y)],
        "nan in a loader": torch.utils.data.DataLoader(data(x, nan_y), batch_size=3),
    }
    messages = {
        "empty list": "val_loader yields no batches",
        "empty loader": "val_loader yields no batches",
        "nan target": r"the target of val_loader's batch 1 contains 1 NaN",
        "nan input": r"input 0 of val_loader's batch 0 contains 1 NaN",
        "nan in a loader": r"the target of val_loader's data set contains 1 NaN",
    }
    model, loss_fn = _regression()
    steps: list[int] = []

    class Counted:
        def __iter__(self) -> Any:
            for batch in _regression_batches():
                steps.append(1)
                yield batch

    with pytest.raises(ValueError, match=messages[val_loader]):
        fit(
            model, loss_fn, Counted(), 1, val_loader=loaders[val_loader], progress=False
        )
    assert not steps  # refused before the first batch
    if val_loader.startswith("nan"):  # the library's check: off with validation
        with bnn.validation(False), pytest.warns(RuntimeWarning, match="is nan"):
            fit(
                model,
                loss_fn,
                Counted(),
                1,
                val_loader=loaders[val_loader],
                progress=False,
            )


def test_a_validation_error_after_an_epoch_names_the_epoch() -> None:
    """Validation data not held in memory are checked by the validation pass:
    its error now says it came from validation after that epoch."""
    model, loss_fn = _regression()
    x, y = _regression_batches()[0]
    y = y.clone()
    y[0] = math.nan

    class Streamed:
        def __iter__(self) -> Any:
            yield x, y

    with pytest.raises(
        ValueError,
        match=r"target contains 1 NaN.*fit stopped in the validation after epoch 0",
    ):
        fit(
            model,
            loss_fn,
            _regression_batches(),
            2,
            val_loader=Streamed(),
            progress=False,
        )


def test_a_loss_from_before_a_reload_is_named_as_such() -> None:
    """After importlib.reload of the package, fit said "fit needs a
    bnn.KullbackLeiblerLoss ... got KullbackLeiblerLoss". The old class is
    stood in for by one of the same name and module."""
    old = type("KullbackLeiblerLoss", (nn.Module,), {"__module__": "pyrolite_bnn.loss"})
    x, y = _data()
    with pytest.raises(TypeError, match="another import of pyrolite_bnn"):
        fit(_net(), old(), _batches(x, y), epochs=1, progress=False)
    with pytest.raises(TypeError) as raised:
        fit(_net(), nn.MSELoss(), _batches(x, y), epochs=1, progress=False)
    assert "another import" not in str(raised.value)


def test_a_learning_rate_stepped_in_a_callback_is_in_the_checkpoint(
    tmp_path: Path,
) -> None:
    """``on_epoch_end`` ran after the checkpoint was written: a
    ``ReduceLROnPlateau`` stepped there on the validation loss (the only place
    it can be stepped) was missing from it, and a resumed run trained at twice
    the learning rate (probe longrun). Callbacks now run first."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 2), torch.randn(32)
    net = bnn.VISequential(bnn.VILinear(2, 4), nn.ReLU(), bnn.VILinear(4, 1))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=32)
    optimizer = torch.optim.Adam([*net.parameters(), *loss_fn.parameters()], lr=0.1)
    path = tmp_path / "run.pt"

    def halve(epoch: int, history: History, model: nn.Module) -> None:
        for group in optimizer.param_groups:
            group["lr"] *= 0.5

    fit(
        net,
        loss_fn,
        [(x, y)],
        epochs=3,
        optimizer=optimizer,
        callbacks=[halve],
        progress=False,
        checkpoint_path=path,
    )
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    resumed = torch.optim.Adam([*net.parameters(), *loss_fn.parameters()], lr=0.1)
    load_checkpoint(path, net, resumed, loss_fn)
    assert resumed.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def _two_hidden_layers(width: int, activation: type[nn.Module]) -> bnn.VISequential:
    """A 1-``width``-``width``-1 regression network."""
    return bnn.VISequential(
        bnn.VILinear(1, width),
        activation(),
        bnn.VILinear(width, width),
        activation(),
        bnn.VILinear(width, 1),
    )


def test_early_stopping_leaves_the_linear_warmup_out() -> None:
    """With a KL warm-up, the validation loss is lowest while the KL is
    down-weighted: early stopping restored a warm-up epoch (here epoch 20,
    heat 0.67) of a run that never reached heat 1, without a word (probe
    longrun). The warm-up's epochs are no longer compared."""
    torch.manual_seed(0)
    n = 256
    x = torch.rand(2 * n, 1) * 6 - 3
    y = torch.sin(2 * x[:, 0]) + 0.2 * torch.randn(2 * n)
    train = [(x[i : i + 32], y[i : i + 32]) for i in range(0, n, 32)]
    val = [(x[n:], y[n:])]
    net = _two_hidden_layers(32, nn.ReLU)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=n)
    optimizer = torch.optim.Adam([*net.parameters(), *loss_fn.parameters()], lr=1e-2)
    history = fit(
        net,
        loss_fn,
        train,
        epochs=40,
        optimizer=optimizer,
        val_loader=val,
        progress=False,
        heat_schedule=linear_warmup(30),
        early_stopping_patience=5,
    )
    assert history.best_epoch is not None
    assert history.heat[history.best_epoch] == 1.0
    assert history.epochs_run >= 30
    at_final_heat = [
        v for v, h in zip(history.val_loss, history.heat, strict=True) if h == 1.0
    ]
    assert history.val_loss[history.best_epoch] == min(at_final_heat)


def test_early_stopping_under_a_changing_heat_compares_every_epoch() -> None:
    """A heat that never settles (an asymptotic schedule) must not keep
    early stopping from stopping (a first fix started the comparison afresh
    at every new heat: no early stop, the last epoch restored; probe
    falsepos8). The validation loss does not depend on the heat: every epoch
    is compared, and restoring one of a lower heat than the last warns."""
    torch.manual_seed(0)
    x, y = torch.randn(20, 1), torch.randn(20, 1)
    y = x + 0.5 * y
    val_x = torch.randn(200, 1)
    val = [(val_x, val_x + 0.5 * torch.randn(200, 1))]
    torch.manual_seed(1)
    net = _two_hidden_layers(64, nn.Tanh)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=20)
    optimizer = torch.optim.Adam([*net.parameters(), *loss_fn.parameters()], 3e-2)
    with pytest.warns(UserWarning, match="early stopping restored epoch"):
        history = fit(
            net,
            loss_fn,
            [(x, y)] * 5,
            40,
            optimizer,
            val_loader=val,
            progress=False,
            heat_schedule=lambda e: 1 - 0.7 ** (e + 1),
            early_stopping_patience=3,
        )
    assert history.stopped_early
    assert history.best_epoch is not None
    assert history.val_loss[history.best_epoch] == min(history.val_loss)
