from __future__ import annotations

import copy
import importlib
import math
import re
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoLowRankMultivariateNormal
from torch import Tensor, nn

import pyrolite_bnn as bnn
from pyrolite_bnn import _host_memory
from pyrolite_bnn._allocations import AllocationPeak
from pyrolite_bnn._draw_budget import DrawSizes
from pyrolite_bnn.distributions.variational import MeanFieldNormalPosterior
from pyrolite_bnn.module import whole_network_draws
from pyrolite_bnn.predict import Prediction

# The module (``bnn.predict`` is the function of the same name).
_PREDICT_MODULE = importlib.import_module("pyrolite_bnn.predict")


def test_classification_decomposition_hand_computed() -> None:
    # Two particles for one input: p1 = (0.5, 0.5), p2 = (0.9, 0.1).
    logits = torch.log(torch.tensor([[[0.5, 0.5]], [[0.9, 0.1]]]))
    pred = Prediction(logits, bnn.Categorical())
    torch.testing.assert_close(pred.probs, torch.tensor([[0.7, 0.3]]))
    # H(0.7, 0.3) = -(0.7 ln 0.7 + 0.3 ln 0.3) = 0.6108643
    torch.testing.assert_close(
        pred.entropy, torch.tensor([0.6108643]), rtol=1e-6, atol=1e-6
    )
    # mean of H(0.5, 0.5) = ln 2 = 0.6931472 and H(0.9, 0.1) = 0.3250830
    torch.testing.assert_close(
        pred.aleatoric, torch.tensor([0.5091151]), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(
        pred.mutual_information, torch.tensor([0.1017492]), rtol=1e-5, atol=1e-6
    )


def test_regression_decomposition_hand_computed() -> None:
    # Particle means 1 and 3, noise std 0.5: epistemic var 1, aleatoric 0.25.
    pred = Prediction(torch.tensor([[[1.0]], [[3.0]]]), bnn.Normal(scale=0.5))
    torch.testing.assert_close(pred.mean, torch.tensor([2.0]))
    torch.testing.assert_close(pred.epistemic_var, torch.tensor([1.0]))
    torch.testing.assert_close(pred.aleatoric_var, torch.tensor([0.25]))
    torch.testing.assert_close(pred.variance, torch.tensor([1.25]))
    torch.testing.assert_close(pred.stddev, torch.tensor([math.sqrt(1.25)]))


def test_heteroscedastic_moments() -> None:
    raw = torch.tensor([[[1.0, 0.0]], [[3.0, 1.0]]])  # (S=2, B=1, 2)
    pred = Prediction(raw, bnn.HeteroscedasticNormal(min_scale=0.0))
    softplus = torch.nn.functional.softplus(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(pred.aleatoric_var, (softplus**2).mean().reshape(1))
    torch.testing.assert_close(pred.epistemic_var, torch.tensor([1.0]))


@pytest.mark.parametrize("likelihood", [bnn.Categorical(), bnn.Bernoulli()])
def test_entropy_identity_exact(likelihood: bnn.PredictiveDistribution) -> None:
    classes = 4 if isinstance(likelihood, bnn.Categorical) else 1
    pred = Prediction(torch.randn(30, 7, classes), likelihood)
    torch.testing.assert_close(pred.entropy, pred.aleatoric + pred.mutual_information)
    assert bool((pred.mutual_information > -1e-6).all())  # Jensen: MI >= 0
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(7))


def test_variance_identity_exact() -> None:
    pred = Prediction(torch.randn(30, 7, 1), bnn.Normal(scale=0.3))
    torch.testing.assert_close(pred.variance, pred.aleatoric_var + pred.epistemic_var)


def test_interval_single_gaussian() -> None:
    pred = Prediction(torch.full((1, 3), 2.0), bnn.Normal(scale=0.5))
    lower, upper = pred.interval(0.95)
    z = 1.959964
    torch.testing.assert_close(
        lower, torch.full((3,), 2.0 - z * 0.5), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        upper, torch.full((3,), 2.0 + z * 0.5), rtol=1e-5, atol=1e-5
    )


def test_mixture_quantile_is_exact() -> None:
    means = torch.tensor([[-2.0], [0.0], [5.0]])  # (S=3, B=1)
    pred = Prediction(means, bnn.Normal(scale=0.7))
    for q in (0.05, 0.5, 0.9):
        x = pred.quantile(q)
        cdf = torch.distributions.Normal(means, 0.7).cdf(x).mean()
        assert abs(float(cdf) - q) < 1e-5


@pytest.mark.parametrize("narrow", [1e-6, 1e-8])
def test_mixture_quantile_of_components_of_very_different_widths(narrow: float) -> None:
    """sd 1 and 1e-6 at one mean: 24 fixed halvings missed q by 6.5e-3."""
    from pyrolite_bnn.distributions.mixture_quantiles import gaussian_mixture_quantile

    loc = torch.zeros(2, 1, dtype=torch.float64)
    var = torch.tensor([[1.0], [narrow**2]], dtype=torch.float64)
    for q in (0.3, 0.45, 0.5, 0.55, 0.7):
        y = gaussian_mixture_quantile(loc, var, q)
        cdf = torch.distributions.Normal(loc, var.sqrt()).cdf(y).mean()
        assert abs(float(cdf) - q) < 1e-9


@pytest.mark.parametrize(
    "likelihood",
    [bnn.Normal(scale=0.5), bnn.StudentT(df=5.0, scale=0.5), bnn.Poisson()],
    ids=["Normal", "StudentT", "Poisson"],
)
def test_per_position_scalar_summaries_have_the_targets_shape(
    likelihood: bnn.PredictiveDistribution,
) -> None:
    """A scalar per token, ``(S, B, L, 1)``, is summarised ``(B, L)``.

    The loss takes targets ``(B, L)`` for it and a scalar per example
    ``(S, B, 1)`` gives ``(B,)``, but these summaries kept the trailing 1:
    with ``B == L``, ``pred.mean - y`` broadcast to ``(B, L, L)`` silently (a
    hand RMSE of 1.162 against 1.064 in the probe).
    """
    torch.manual_seed(0)
    net = bnn.VILinear(3, 1)
    x, y = torch.randn(6, 6, 3), torch.randint(0, 4, (6, 6)).float()
    bnn.KullbackLeiblerLoss(likelihood, dataset_size=60)(net(x), y)  # takes (B, L)
    pred = bnn.predict(net, x, likelihood, samples=8)
    lower, upper = pred.interval(0.9)
    for summary in (pred.mean, pred.variance, pred.stddev, pred.quantile(0.3)):
        assert summary.shape == y.shape
    assert lower.shape == upper.shape == (pred.mean - y).shape == y.shape
    per_particle = likelihood.moments(pred.samples)[0]
    torch.testing.assert_close(pred.mean, per_particle.mean(0))
    assert per_particle.shape == (8, 6, 6)


def test_per_position_binary_summaries_have_the_targets_shape() -> None:
    """``Bernoulli`` logits ``(S, B, L, 1)``: probabilities ``(B, L, 2)``,
    entropies ``(B, L)``, as for labels ``(B, L)`` (they were ``(B, L, 1, 2)``
    and ``(B, L, 1)``)."""
    pred = Prediction(torch.randn(8, 6, 6, 1), bnn.Bernoulli())
    assert pred.probs.shape == (6, 6, 2)
    for summary in (pred.entropy, pred.aleatoric, pred.mutual_information):
        assert summary.shape == (6, 6)


def test_predict_end_to_end() -> None:
    net = bnn.VISequential(bnn.VILinear(2, 8), torch.nn.Tanh(), bnn.VILinear(8, 1))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 100)
    x = torch.randn(10, 2)
    with torch.no_grad():
        loss_fn.predictive.raw_scale.sub_(1.0)  # as training would have moved it
    pred = bnn.predict(net, x, loss_fn.predictive, samples=40, batch_size=3)
    assert pred.samples.shape == (40, 10, 1)
    assert pred.mean.shape == (10,)
    assert not pred.variance.requires_grad  # summaries carry no graph
    lower, upper = pred.interval(0.9)
    assert bool((lower < pred.mean).all())
    assert bool((upper > pred.mean).all())


def test_inputs_that_require_gradients_warn_once_with_the_route_that_keeps_them() -> (
    None
):
    """A Bayesian-optimisation acquisition built on predict had no graph: its
    backward() failed with torch's generic error. predict warns once per call
    (also for chunks and particle groups), naming draw_networks + Prediction;
    inputs without gradients, or grad mode off, stay quiet."""
    net = bnn.VISequential(bnn.VILinear(2, 8), nn.Tanh(), bnn.VILinear(8, 1))
    x = torch.randn(5, 2, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bnn.predict(net, x, bnn.Normal(scale=0.1), samples=4, batch_size=2)
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "bnn.draw_networks" in message
    assert "bnn.Prediction" in message
    assert caught[0].filename == __file__
    bnn.predict(net, x.detach(), bnn.Normal(scale=0.1), samples=4)  # quiet
    with torch.no_grad():
        bnn.predict(net, x, bnn.Normal(scale=0.1), samples=4)  # quiet
    trunk = nn.Linear(2, 2)  # features of a trainable trunk: no input asked about
    bnn.predict(net, trunk(x.detach()), bnn.Normal(scale=0.1), samples=4)  # quiet
    for candidate in (x[:, :], x.double().float(), -1 + 2 * torch.sigmoid(x)):
        with pytest.warns(UserWarning, match="require gradients"):  # computed from x
            bnn.predict(net, candidate, bnn.Normal(scale=0.1), samples=4)
    u, v = torch.randn(5, 3), torch.randn(5, 2, requires_grad=True)
    with pytest.warns(UserWarning, match=r"inputs x\[1\] require gradients"):
        bnn.predict(_TwoInputs(), (u, v), bnn.Categorical(), samples=4)


def test_features_from_pyro_params_are_a_trunk_like_those_from_parameters() -> None:
    """predict warned "inputs require gradients" for features computed from a
    ``pyro.param`` (a trainable trunk): Pyro's param store holds plain
    tensors, not ``nn.Parameter`` objects (probe falsepos15). Its tensors now
    count as weights, constrained or not. A candidate held as a weight warns
    passed itself; computed from it (``sigmoid``) it is taken for features:
    quiet, as documented."""
    net = bnn.VISequential(bnn.VILinear(2, 8), nn.Tanh(), bnn.VILinear(8, 1))
    likelihood = bnn.Normal(scale=0.1)
    z = torch.randn(5, 2)
    scale = pyro.param(
        "input_scale",
        torch.ones(2),
        constraint=torch.distributions.constraints.positive,
    )
    shift = pyro.param("input_shift", torch.zeros(5, 2))  # unconstrained: the leaf
    for held in (nn.Parameter(torch.zeros(5, 2)), shift):
        with pytest.warns(UserWarning, match="require gradients"):
            bnn.predict(net, held, likelihood, samples=4)  # a candidate itself
    for features in (z * scale, z + shift, torch.sigmoid(nn.Parameter(z))):
        bnn.predict(net, features, likelihood, samples=4)  # quiet (warnings: errors)
    with pytest.warns(UserWarning, match="require gradients"):  # a plain leaf
        bnn.predict(net, z.requires_grad_() * scale, likelihood, samples=4)


def test_posterior_mean_mode() -> None:
    net = bnn.VILinear(3, 2)
    x = torch.randn(4, 3)
    pred = bnn.predict(net, x, bnn.Categorical(), mode="mean")
    w, b = net.posterior["weight"].loc.detach(), net.posterior["bias"].loc.detach()
    torch.testing.assert_close(pred.samples[0], x @ w.T + b)
    chunked = bnn.predict(net, x, bnn.Categorical(), mode="mean", batch_size=1)
    torch.testing.assert_close(chunked.samples, pred.samples)


def test_predict_errors() -> None:
    net = bnn.VILinear(3, 2)
    with pytest.raises(ValueError, match="mode must be 'sample' or 'mean'"):
        bnn.predict(net, torch.randn(2, 3), bnn.Categorical(), mode="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        bnn.predict(net, torch.randn(2, 3), bnn.Categorical(), batch_size=0)
    with pytest.raises(
        TypeError, match=r"predict needs a network with Bayesian layers"
    ):
        bnn.predict(torch.nn.Linear(3, 2), torch.randn(2, 3), bnn.Categorical())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
        Prediction(torch.zeros(2, 3), bnn.Normal(scale=1.0)).interval(1.5)
    with pytest.raises(AttributeError, match="classification likelihood"):
        _ = Prediction(torch.zeros(2, 3), bnn.Normal(scale=1.0)).probs


class _Squeezed(bnn.VIModule):
    """A network whose output has no class dimension, ``(S, B)``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = bnn.VILinear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out.squeeze(-1)


@pytest.mark.parametrize(
    ("outputs", "likelihood", "match"),
    [
        (3, bnn.HeteroscedasticNormal(), r"output \(S, B, \.\.\., 2\)"),
        (1, bnn.HeteroscedasticNormal(), r"output \(S, B, \.\.\., 2\)"),
        (0, bnn.Categorical(), r"logits of shape \(S, B, classes\)"),
    ],
    ids=["HeteroscedasticNormal-3", "HeteroscedasticNormal-1", "Categorical"],
)
def test_predict_refuses_outputs_the_likelihood_cannot_read(
    outputs: int, likelihood: bnn.PredictiveDistribution, match: str
) -> None:
    """As the loss does: no summary from two of three columns, or a softmax
    over the batch of an output without a class dimension (``outputs=0``)."""
    net = bnn.VILinear(2, outputs) if outputs else _Squeezed()
    with pytest.raises(ValueError, match=match):
        bnn.predict(net, torch.randn(5, 2), likelihood, samples=4)


@pytest.mark.parametrize(
    "options",
    [{}, {"batch_size": 2}, {"mode": "mean"}],
    ids=["whole", "chunks", "mean"],
)
def test_predict_on_an_empty_batch(options: dict[str, Any]) -> None:
    net = bnn.VISequential(bnn.VILinear(3, 4), torch.nn.Tanh(), bnn.VILinear(4, 1))
    pred = bnn.predict(net, torch.zeros(0, 3), bnn.Normal(scale=1.0), 5, **options)
    assert pred.samples.shape == (1 if options.get("mode") else 5, 0, 1)
    for summary in (pred.mean, pred.variance, *pred.interval(0.9)):
        assert summary.shape == (0,)
    labels = bnn.predict(
        bnn.VILinear(3, 4), torch.zeros(0, 3), bnn.Categorical(), 5, **options
    )
    assert labels.probs.shape == (0, 4)
    assert labels.mutual_information.shape == (0,)


def test_each_particle_is_one_network() -> None:
    """Even with the local estimator (training default), a predictive particle is
    one draw of all weights: identical inputs get identical outputs."""
    net = bnn.VILinear(3, 2, estimator="local")
    x = torch.randn(1, 3).expand(4, 3)
    pred = bnn.predict(net, x, bnn.Categorical(), samples=8)
    torch.testing.assert_close(pred.samples[:, 1:], pred.samples[:, :1].expand(8, 3, 2))
    assert not torch.allclose(pred.samples[0], pred.samples[1])  # particles differ


# ----------------------------------------------------------------- chunking
def _mlp() -> bnn.VISequential:
    return bnn.VISequential(
        bnn.VILinear(3, 16),
        torch.nn.Tanh(),
        bnn.VILinear(16, 16),
        torch.nn.ReLU(),
        bnn.VILinear(16, 2),
    )


def _chunk_sizes(net: torch.nn.Module) -> list[int]:
    """Input batch sizes of the outermost forward calls, recorded by a hook."""
    sizes: list[int] = []
    net.register_forward_hook(lambda module, args, out: sizes.append(len(args[0])))
    return sizes


def test_large_input_is_chunked_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """batch_size=None chunks a large input by the documented rule.

    The default budget (2 GiB) is lowered to 1 MiB so that a "large" input is
    cheap to run; the rule is the one ``predict`` documents.
    """
    monkeypatch.setattr(_PREDICT_MODULE, "DEFAULT_MEMORY_BUDGET", 2**20)
    net = bnn.VISequential(bnn.VILinear(2, 64), torch.nn.ReLU(), bnn.VILinear(64, 1))
    sizes = _chunk_sizes(net)
    pred = bnn.predict(net, torch.randn(1000, 2), bnn.Normal(scale=1.0), samples=10)
    assert pred.samples.shape == (10, 1000, 1)
    # Probe: 4 inputs, one particle; the most it holds at once is the first
    # layer's output and the ReLU's, 4 * 64 floats each = 2048 bytes, so 512
    # bytes per input and particle; working set of one input = 10 * 512 =
    # 5120 bytes. The 10 draws of the 257 weights (10280 bytes) are kept:
    # chunks get (2**20 - 10280) // 5120 = 202 inputs.
    assert sizes == [4] + [202] * 4 + [192]


def test_small_input_runs_in_one_chunk() -> None:
    net = _mlp()
    sizes = _chunk_sizes(net)
    bnn.predict(net, torch.randn(50, 3), bnn.Categorical(), samples=10)
    assert sizes == [4, 50]  # the probe, then everything at once


class _CallCounter(torch.nn.Module):
    """Counts its calls in a buffer it reassigns (rather than updates in place)."""

    calls: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls = self.calls + 1
        return x


def _batch_norm_net() -> bnn.VISequential:
    """torch's batch norm: one row per particle still normalises (over S rows)."""
    return bnn.VISequential(
        bnn.VILinear(3, 5),
        torch.nn.BatchNorm1d(5),
        _CallCounter(),
        torch.nn.ReLU(),
        bnn.VILinear(5, 2),
    )


def _assert_same_buffers(net: torch.nn.Module, other: torch.nn.Module) -> None:
    pairs = zip(net.named_buffers(), other.named_buffers(), strict=True)
    for (name, buffer), (_, expected) in pairs:
        assert torch.equal(buffer, expected), name


@pytest.mark.filterwarnings("ignore:predict. batch norm:UserWarning")
@pytest.mark.filterwarnings("ignore:torch's BatchNorm1d:UserWarning")
@pytest.mark.parametrize("rows", [50, 1])
def test_the_probe_changes_no_buffer(rows: int) -> None:
    """In training mode, predict's buffers are those of its own pass alone.

    The memory probe (``batch_size=None``) counted as a pass: batch-norm took
    running statistics from its 4 inputs (``num_batches_tracked`` +2 per
    predict), and on one input it raised "Expected more than 1 value per
    channel" (one particle, one row) where the network's own call works. It
    now runs again with the prediction's particles, and the buffers are put
    back after it. ``batch_size=rows`` runs no probe: the reference.
    """
    net = _batch_norm_net()
    alone = copy.deepcopy(net)
    x = torch.randn(rows, 3)
    torch.manual_seed(1)
    pred = bnn.predict(net, x, bnn.Categorical(), samples=10)
    after = torch.get_rng_state()
    torch.manual_seed(1)
    expected = bnn.predict(alone, x, bnn.Categorical(), samples=10, batch_size=rows)
    torch.testing.assert_close(pred.samples, expected.samples, rtol=0.0, atol=0.0)
    assert torch.equal(after, torch.get_rng_state())  # the probe's draws rewound
    _assert_same_buffers(net, alone)
    assert int(net[1].num_batches_tracked) == 1  # one pass of the model
    assert int(net[2].calls) == 1  # a reassigned buffer is put back too


@pytest.mark.filterwarnings("ignore:predict. batch norm:UserWarning")
@pytest.mark.filterwarnings("ignore:torch's BatchNorm1d:UserWarning")
def test_a_probe_that_fails_with_the_predictions_particles_raises() -> None:
    """One particle and one row: the network's own call fails the same way."""
    net = _batch_norm_net()
    before = copy.deepcopy(net)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        bnn.predict(net, torch.randn(1, 3), bnn.Categorical(), samples=1)
    _assert_same_buffers(net, before)  # the failed probes left no trace


@pytest.mark.filterwarnings("ignore:predict. batch norm:UserWarning")
@pytest.mark.filterwarnings("ignore:torch's BatchNorm1d:UserWarning")
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_the_probe_keeps_a_pending_backward_pass_valid(training: bool) -> None:
    """Batch-norm statistics saved by an earlier call stay valid for its backward.

    A plain in-place copy of the buffers after the probe would bump their
    version counters, and autograd would refuse the pending backward pass.
    """
    net = _batch_norm_net().train(training)
    out = net(torch.randn(8, 3), samples=2)  # saves the running statistics
    bnn.predict(net, torch.randn(20, 3), bnn.Categorical(), samples=4)
    out.sum().backward()


def test_forward_hooks_see_the_probe_unless_batch_size_is_given() -> None:
    """Documented in predict's docstring: the probe is a call of the model."""
    net = bnn.VISequential(bnn.VILinear(3, 8), torch.nn.ReLU(), bnn.VILinear(8, 2))
    shapes: list[tuple[int, ...]] = []
    net[1].register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    x = torch.randn(20, 3)
    bnn.predict(net, x, bnn.Categorical(), samples=5)
    assert shapes == [(8, 8), (100, 8)]  # probe: 4 inputs, two particles; 5 * 20
    shapes.clear()
    bnn.predict(net, x, bnn.Categorical(), samples=5, batch_size=len(x))
    assert shapes == [(100, 8)]


def test_the_probe_measures_only_its_own_threads_calls() -> None:
    """A network served from a thread pool: the probe's hooks are on its modules,
    and another thread's call during the probe (more inputs, 10 particles) was
    measured as the prediction's, making its chunks smaller."""
    net = _mlp().eval()
    x = torch.randn(40, 3)
    options: dict[str, Any] = {"samples": 3, "memory_budget": 4000}
    main = threading.main_thread()
    sizes: list[int] = []

    def record(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if threading.current_thread() is main:
            sizes.append(len(args[0]))

    net.register_forward_hook(record)
    bnn.predict(net, x, bnn.Categorical(), **options)
    alone = list(sizes)
    assert len(alone) > 2  # chunked

    def other_thread() -> None:
        with torch.no_grad():
            net(torch.randn(64, 3))

    def call_from_another_thread(module: nn.Module, args: tuple[Any, ...]) -> None:
        if threading.current_thread() is main and not sizes:  # the probe's call
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()

    net.register_forward_pre_hook(call_from_another_thread)
    sizes.clear()
    bnn.predict(net, x, bnn.Categorical(), **options)
    assert sizes == alone


@pytest.mark.parametrize("guide", ["default", "lowrank"])
@pytest.mark.parametrize("memory_budget", [None, 1], ids=["kept", "redrawn"])
def test_particles_are_coherent_across_chunks(
    guide: str, memory_budget: int | None
) -> None:
    """Particle s is the same network for every input, whatever the chunking.

    ``memory_budget=1`` leaves no room to keep the weight draws, so every chunk
    draws them anew from the rewound random-number generators (and ``predict``
    warns that not even one particle's draw fits the budget); the particles
    then run one at a time, their draws those of nine one-particle calls.
    """
    net = _mlp()
    if guide == "lowrank":
        net.guide = AutoLowRankMultivariateNormal(
            net.prior_model, init_loc_fn=net.init_loc_fn, rank=3, init_scale=0.1
        )
    x = torch.randn(20, 3)
    torch.manual_seed(1)
    with torch.no_grad(), whole_network_draws():
        if memory_budget == 1:  # one call per particle on all inputs
            single = torch.cat([net(x, samples=1) for _ in range(9)])
        else:
            single = net(x, samples=9)  # one call on all inputs
    after_single = torch.get_rng_state()
    # Particles differ by far more than the tolerance below: the check has teeth.
    assert single.std(0).min() > 1e-4
    for batch_size in (1, 7, None, 20):
        torch.manual_seed(1)
        with warnings.catch_warnings():
            if memory_budget == 1:
                warnings.filterwarnings("ignore", "predict: drawing the weight")
            pred = bnn.predict(
                net,
                x,
                bnn.Categorical(),
                samples=9,
                batch_size=batch_size,
                memory_budget=memory_budget,
            )
        # Chunks differ only in the rounding of matrix products of other sizes.
        torch.testing.assert_close(pred.samples, single, rtol=1e-6, atol=1e-6)
        # The generators end where the single call left them.
        assert torch.equal(torch.get_rng_state(), after_single)


def test_particle_groups_draw_as_one_call_per_group_pinned_by_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """predict's docstring said the generators end where one call on all of x
    leaves them; in particle groups they end where one call per group does
    (another stream: the same seed gives other draws), and where the groups
    fall follows memory_budget, whose default follows the host's free memory
    (8 vs 2 GiB free changed every particle of a seeded prediction). As now
    documented: draws and generators those of one call per group, in turn;
    an explicit memory_budget gives the same draws whatever the host has."""
    net = _mlp()
    x = torch.randn(20, 3)
    samples, budget = 9, 12_000
    group = DrawSizes.of(net).particles_that_fit(samples, budget)
    assert 1 < group < samples  # the group path, in three groups of 3
    torch.manual_seed(1)
    with torch.no_grad(), whole_network_draws():
        calls = [
            net(x, samples=min(group, samples - start))
            for start in range(0, samples, group)
        ]
    after_calls = torch.get_rng_state()
    torch.manual_seed(1)
    with torch.no_grad(), whole_network_draws():
        one_call = net(x, samples=samples)
    assert (one_call - torch.cat(calls)).abs().max() > 1e-3  # another stream
    seeded = {}
    for free in (8 * 2**30, 2 * 2**30):
        monkeypatch.setattr(_PREDICT_MODULE, "available_bytes", lambda f=free: f)
        torch.manual_seed(1)
        pred = bnn.predict(
            net, x, bnn.Categorical(), samples=samples, memory_budget=budget
        )
        seeded[free] = pred.samples
        # Chunks differ from one call only in the rounding of matrix products.
        torch.testing.assert_close(pred.samples, torch.cat(calls), rtol=1e-6, atol=1e-6)
        assert torch.equal(torch.get_rng_state(), after_calls)
    torch.testing.assert_close(seeded[8 * 2**30], seeded[2 * 2**30], rtol=0, atol=0)


def test_a_budget_below_one_particles_draw_runs_one_particle_at_a_time() -> None:
    """Where not even one particle's draw fit memory_budget, predict drew all
    ``S`` particles at once (the groups fell back to ``S``): a smaller budget
    took several times the memory of a larger one (a 200,000-row embedding
    at S = 20: 2.9 GiB more peak memory at 100 MiB than the 252 MiB at 400
    MiB, where groups of one fit). It warns as before and runs the particles
    one per group: the draws, and where the generators end, are those of
    ``S`` one-particle calls in turn (the same posterior, independent draws;
    exact up to the rounding of matrix products in chunks, 1e-6)."""
    net = _mlp()
    x = torch.randn(20, 3)
    samples, budget = 5, 1
    assert DrawSizes.of(net).particles_that_fit(samples, budget) == 0
    torch.manual_seed(1)
    with torch.no_grad(), whole_network_draws():
        calls = [net(x, samples=1) for _ in range(samples)]
    after_calls = torch.get_rng_state()
    torch.manual_seed(1)
    with pytest.warns(RuntimeWarning, match="drawing the weight"):
        pred = bnn.predict(
            net, x, bnn.Categorical(), samples=samples, memory_budget=budget
        )
    torch.testing.assert_close(pred.samples, torch.cat(calls), rtol=1e-6, atol=1e-6)
    assert torch.equal(torch.get_rng_state(), after_calls)


def test_mean_mode_automatic_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_PREDICT_MODULE, "DEFAULT_MEMORY_BUDGET", 4096)
    net = _mlp()
    sizes = _chunk_sizes(net)
    x = torch.randn(40, 3)
    pred = bnn.predict(net, x, bnn.Categorical(), mode="mean")
    assert len(sizes) > 2  # chunked
    whole = bnn.predict(net, x, bnn.Categorical(), mode="mean", batch_size=40)
    torch.testing.assert_close(pred.samples, whole.samples, rtol=1e-6, atol=1e-6)


def test_batch_dependent_randomness_is_reported() -> None:
    net = bnn.VISequential(
        bnn.VILinear(3, 16), torch.nn.Dropout(0.5), bnn.VILinear(16, 2)
    )
    x = torch.randn(20, 3)
    # memory_budget=1: every chunk draws the weights anew (predict warns that
    # the budget is too small for any draw, and that dropout is on; those
    # warnings are not the subject).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "predict: drawing the weight")
        warnings.filterwarnings("ignore", r"predict: dropout \(1\)")
        with pytest.warns(RuntimeWarning, match="depends on the chunk size"):
            bnn.predict(net, x, bnn.Categorical(), batch_size=7, memory_budget=1)
        net.eval()  # dropout off: no warning (warnings are errors in this suite)
        bnn.predict(net, x, bnn.Categorical(), batch_size=7, memory_budget=1)


def test_predict_input_errors() -> None:
    net = bnn.VILinear(3, 2)
    with pytest.raises(ValueError, match=r"memory_budget must be >= 1 byte"):
        bnn.predict(net, torch.randn(2, 3), bnn.Categorical(), memory_budget=0)
    with pytest.raises(ValueError, match=r"inputs x of shape \(N, \.\.\.\)"):
        bnn.predict(net, torch.tensor(1.0), bnn.Categorical())
    with pytest.raises(ValueError, match=r"q must be in \(0, 1\)"):
        Prediction(torch.zeros(2, 3), bnn.Normal(scale=1.0)).quantile(0.0)


def test_interval_and_quantile_take_one_number() -> None:
    """A string raised ``'<' not supported``, two levels ``ambiguous bool``."""
    prediction = Prediction(torch.zeros(2, 3), bnn.Normal(scale=1.0))
    with pytest.raises(TypeError, match=r"level must be a number, got '0.9'"):
        prediction.interval("0.9")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"q must be a number, got '0.5'"):
        prediction.quantile("0.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"q must be a number, got tensor\("):
        prediction.quantile(torch.tensor([0.1, 0.9]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\), got nan"):
        prediction.interval(math.nan)
    torch.testing.assert_close(  # numbers as numpy and one-element tensors
        prediction.quantile(np.float32(0.5)), prediction.quantile(torch.tensor(0.5))
    )


def test_interval_of_a_normal_is_exact_at_high_coverage() -> None:
    """``interval(0.9999999)`` of N(0, 1) was [-5.34, 5.26] (float32 bisection).

    Against float64 ``Normal.icdf``: ``rtol=1e-6`` is float32 rounding with a
    margin.
    """
    lower, upper = Prediction(torch.zeros(3, 2, 1), bnn.Normal(scale=1.0)).interval(
        0.9999999
    )
    exact = torch.distributions.Normal(
        torch.tensor(0.0, dtype=torch.float64), 1.0
    ).icdf(torch.tensor((1 + 0.9999999) / 2, dtype=torch.float64))
    torch.testing.assert_close(upper, exact.float().expand(2), rtol=1e-6, atol=0.0)
    torch.testing.assert_close(lower, -exact.float().expand(2), rtol=1e-6, atol=0.0)


def test_predict_errors_name_the_whole_input() -> None:
    """They named the 4-input probe: ``12 NaN/Inf value(s) (shape (4, 3))``."""
    net = bnn.VILinear(3, 2)
    with pytest.raises(
        ValueError,
        match=r"inputs x contains 150 NaN/Inf value\(s\) \(shape \(50, 3\)\)",
    ):
        bnn.predict(net, torch.full((50, 3), math.nan), bnn.Normal(1.0), samples=2)
    with pytest.raises(
        ValueError,
        match=r"got \(4, 4\) \(predict ran the model on x\[0:4\] of the "
        r"inputs x of shape \(50, 4\)\)",
    ):
        bnn.predict(net, torch.randn(50, 4), bnn.Normal(1.0), samples=2)
    with pytest.raises(
        ValueError, match=r"x\[0:10\] of the inputs x of shape \(50, 4\)"
    ):
        bnn.predict(net, torch.randn(50, 4), bnn.Normal(1.0), samples=2, batch_size=10)


# ------------------------------------------------ summaries by the likelihood
class _Laplace(bnn.PredictiveDistribution):
    """A likelihood defined outside the library: Laplace(output, 1)."""

    def distribution(self, output: torch.Tensor) -> Any:
        return pyro.distributions.Laplace(output, 1.0)

    def moments(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return output, torch.full_like(output, 2.0)  # Var = 2 b^2, b = 1

    def quantile(self, output: torch.Tensor, q: float) -> torch.Tensor:
        # One particle only, for the test: the Laplace quantile in closed form.
        sign = 1.0 if q > 0.5 else -1.0
        return output[0] - sign * math.log(1 - 2 * abs(q - 0.5))


class _TemperedSoftmax(bnn.PredictiveDistribution):
    """A classification likelihood defined outside the library."""

    is_classification = True

    def distribution(self, output: torch.Tensor) -> Any:
        return pyro.distributions.Categorical(logits=output / 2)

    def class_probs(self, output: torch.Tensor) -> torch.Tensor:
        return (output / 2).softmax(-1)

    def predictive_mean(self, output: torch.Tensor) -> torch.Tensor:
        return self.class_probs(output).mean(0)


@pytest.mark.parametrize(
    ("outputs", "likelihood"),
    [
        (torch.randn(0, 4, 1), bnn.Normal(scale=1.0)),
        (torch.randn(0, 4, 3), bnn.Categorical()),
    ],
)
def test_a_prediction_of_zero_particles_is_refused(
    outputs: torch.Tensor, likelihood: bnn.PredictiveDistribution
) -> None:
    """Accepted: the mean was NaN (predict(samples=0) refuses the same)."""
    with pytest.raises(ValueError, match=r"S >= 1 particles, got shape \(0, 4,"):
        Prediction(outputs, likelihood)


def test_prediction_asks_the_likelihood_for_regression_summaries() -> None:
    pred = Prediction(torch.tensor([[1.0, -1.0]]), _Laplace())
    torch.testing.assert_close(pred.mean, torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(pred.variance, torch.tensor([2.0, 2.0]))
    lower, upper = pred.interval(0.5)  # Laplace(0, 1) quartiles: -+ ln 2
    torch.testing.assert_close(upper - lower, torch.full((2,), 2 * math.log(2)))
    assert not pred.is_classification


def test_prediction_asks_the_likelihood_for_class_probabilities() -> None:
    logits = torch.log(torch.tensor([[[0.5, 0.5]], [[0.9, 0.1]]])) * 2
    pred = Prediction(logits, _TemperedSoftmax())
    torch.testing.assert_close(pred.probs, torch.tensor([[0.7, 0.3]]))
    torch.testing.assert_close(pred.mean, pred.probs)
    torch.testing.assert_close(
        pred.mutual_information, torch.tensor([0.1017492]), rtol=1e-5, atol=1e-6
    )
    assert pred.is_classification


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"predictive": 100}, TypeError, "take it after the likelihood"),
        ({"predictive": bnn.Categorical}, TypeError, "pass an instance"),
        ({"samples": "10"}, TypeError, "samples must be an integer"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an integer"),
        ({"batch_size": True}, TypeError, "batch_size must be an integer"),
        ({"memory_budget": "1G"}, TypeError, "memory_budget"),
        ({"calibration": "temp"}, TypeError, "bnn.Calibration"),
        ({"samples": 0}, ValueError, "samples must be an integer >= 1"),
    ],
)
def test_predict_refuses_wrong_argument_types_clearly(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    """They raised AttributeError/TypeError from inside the library."""
    net = bnn.VILinear(3, 2)
    arguments: dict[str, object] = {"predictive": bnn.Categorical(), **kwargs}
    with pytest.raises(error, match=message):
        bnn.predict(net, torch.randn(5, 3), **arguments)  # type: ignore[arg-type]


def test_predict_takes_numpy_integers() -> None:
    net = bnn.VILinear(3, 2)
    pred = bnn.predict(
        net, torch.randn(5, 3), bnn.Categorical(), np.int64(4), np.int64(2)
    )
    assert pred.samples.shape == (4, 5, 2)


@pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)`:UserWarning")
def test_predict_through_torch_compile_keeps_the_networks_samples() -> None:
    """``predict(torch.compile(net), ...)`` deleted ``net.samples`` for good."""
    net = bnn.VISequential(bnn.VILinear(3, 4), torch.nn.ReLU(), bnn.VILinear(4, 2))
    net.samples = 7
    compiled = torch.compile(net, backend="eager")  # eager backend: quick
    x = torch.randn(8, 3)
    assert bnn.predict(compiled, x, bnn.Categorical(), mode="mean").probs.shape == (
        8,
        2,
    )
    assert net.samples == 7
    assert net(x).shape == (7, 8, 2)


@pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)`:UserWarning")
def test_predict_mean_of_a_compiled_network_that_has_run_uses_the_means() -> None:
    """It used prior draws: the medians were keyed ``_orig_mod.0.weight``.

    Once the compiled network had been called, ``mode="mean"`` conditioned on
    nothing (the weight sites are ``0.weight``).
    """
    net = bnn.VISequential(bnn.VILinear(4, 6), torch.nn.Tanh(), bnn.VILinear(6, 2))
    x = torch.randn(5, 4)
    expected = bnn.predict(net, x, bnn.Normal(scale=1.0), mode="mean").mean
    compiled = torch.compile(net, backend="eager")  # eager backend: quick
    with torch.no_grad():
        compiled(x, samples=3)
    for _ in range(2):
        got = bnn.predict(compiled, x, bnn.Normal(scale=1.0), mode="mean").mean
        torch.testing.assert_close(got, expected, rtol=0.0, atol=0.0)


def test_prediction_samples_save_as_plain_tensors(tmp_path: Path) -> None:
    """They carried the forward record: 100x the bytes, refused by torch.load."""
    net = bnn.VISequential(bnn.VILinear(3, 64), torch.nn.ReLU(), bnn.VILinear(64, 2))
    pred = bnn.predict(net, torch.randn(5, 3), bnn.Categorical(), samples=4)
    path = tmp_path / "samples.pt"
    torch.save(pred.samples, path)
    loaded = torch.load(path)  # weights_only=True, torch's default
    torch.testing.assert_close(loaded, pred.samples)
    assert path.stat().st_size < 4 * pred.samples.numel() + 2000


def test_predict_on_a_plain_network_leaves_its_samples_attribute_alone() -> None:
    """The count of a plain network's call was its ``samples`` attribute, set
    for the call: another thread calling the same network read it (and two
    overlapping calls restored each other's value, leaving one behind)."""
    seen: list[object] = []

    class Plain(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(getattr(self, "samples", None))
            return super().forward(x)

    net = Plain(bnn.VILinear(4, 8), nn.ReLU(), bnn.VILinear(8, 3))
    pred = bnn.predict(net, torch.randn(5, 4), bnn.Categorical(), samples=7)
    assert pred.samples.shape == (7, 5, 3)
    assert seen
    assert all(value is None for value in seen)
    assert not hasattr(net, "samples")
    net.samples = 3  # the attribute still sets a plain call's count
    assert net(torch.randn(5, 4)).shape == (3, 5, 3)
    assert (
        bnn.predict(net, torch.randn(5, 4), bnn.Categorical(), samples=6).samples.shape[
            0
        ]
        == 6
    )
    assert net.samples == 3


def test_threads_calling_one_plain_network_keep_their_particle_counts() -> None:
    net = nn.Sequential(bnn.VILinear(4, 8), nn.ReLU(), bnn.VILinear(8, 3))
    x = torch.randn(6, 4)
    shapes: list[tuple[int, ...]] = []
    errors: list[BaseException] = []

    def predicting() -> None:
        try:
            for _ in range(100):
                bnn.predict(net, x, bnn.Categorical(), samples=50, batch_size=6)
        except BaseException as error:  # reported below
            errors.append(error)

    thread = threading.Thread(target=predicting)
    thread.start()
    with torch.no_grad():
        while thread.is_alive():
            shapes.append(tuple(net(x).shape))
    thread.join()
    assert not errors
    assert shapes
    assert set(shapes) == {(10, 6, 3)}


def test_an_untrained_learned_noise_scale_warns() -> None:
    """A new bnn.Normal() at predict time: sd 1.0 in place of the learned 0.14."""
    net = bnn.VILinear(2, 1)
    x = torch.randn(5, 2)
    with pytest.warns(UserWarning, match=r"loss_fn\.predictive") as caught:
        bnn.predict(net, x, bnn.Normal(), samples=3)
    assert caught[0].filename == __file__
    trained = bnn.Normal()
    with torch.no_grad():
        trained.raw_scale.sub_(0.5)
    for quiet in (trained, bnn.Normal(scale=0.5), bnn.Categorical()):
        out = bnn.VILinear(2, 3) if quiet.is_classification else net
        bnn.predict(out, x, quiet, samples=3)  # no warning (errors under -W)


def test_probabilities_passed_as_logits_warn() -> None:
    """A network ending in nn.Softmax: its probabilities were softmaxed again."""
    net = torch.nn.Sequential(bnn.VILinear(4, 3), torch.nn.Softmax(-1))
    x = torch.randn(6, 4)
    with pytest.warns(UserWarning, match=r"nn\.Softmax"):
        bnn.predict(net, x, bnn.Categorical(), samples=3)
    log_probs = torch.nn.Sequential(bnn.VILinear(4, 3), torch.nn.LogSoftmax(-1))
    bnn.predict(log_probs, x, bnn.Categorical(), samples=3)  # quiet


def test_bernoulli_after_a_final_sigmoid_warns() -> None:
    """A converted nn.BCELoss classifier ends in nn.Sigmoid: Bernoulli reads
    logits, so its probabilities stayed in (0.5, 0.73) (accuracy 0.50 on
    separable data), silently, in training and in predict."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(bnn.VILinear(4, 1), torch.nn.Sigmoid())
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Bernoulli(), dataset_size=32)
    with pytest.warns(UserWarning, match=r"nn\.Sigmoid"):
        loss_fn(net(x), y)
    loss_fn(net(x), y)  # once per likelihood
    with pytest.warns(UserWarning, match=r"nn\.Sigmoid"):
        bnn.predict(net, x, bnn.Bernoulli(), samples=3)
    logits = torch.nn.Sequential(bnn.VILinear(4, 1))
    quiet = bnn.KullbackLeiblerLoss(bnn.Bernoulli(), dataset_size=32)
    quiet(logits(x), y)
    bnn.predict(logits, x, bnn.Bernoulli(), samples=3)


@pytest.mark.parametrize("seed", range(12))
def test_a_bernoulli_network_at_initialisation_is_not_taken_for_a_sigmoid(
    seed: int,
) -> None:
    """At initialisation a network's outputs lie close to one shared value: on
    pixel inputs in [0, 1] all of them fell in [0, 1] for 8 to 17 of 40 seeds,
    and the values-only rule told networks without a Sigmoid to remove it."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        bnn.VIConv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), bnn.VILinear(36, 1)
    )
    x, y = torch.rand(32, 1, 5, 5), torch.randint(0, 2, (32,))
    bnn.KullbackLeiblerLoss(bnn.Bernoulli(), dataset_size=32)(net(x), y)  # quiet


def test_a_bernoulli_subclass_reading_probabilities_is_quiet() -> None:
    class FromProbabilities(bnn.Bernoulli):
        def distribution(self, output: torch.Tensor) -> Any:
            return pyro.distributions.Bernoulli(probs=output).to_event(output.dim() - 2)

        def class_probs(self, output: torch.Tensor) -> torch.Tensor:
            p = output.squeeze(-1)
            return torch.stack([1 - p, p], dim=-1)

    torch.manual_seed(0)
    net = torch.nn.Sequential(bnn.VILinear(4, 1), torch.nn.Sigmoid())
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    bnn.KullbackLeiblerLoss(FromProbabilities(), dataset_size=32)(net(x), y)
    bnn.predict(net, x, FromProbabilities(), samples=3)


@pytest.mark.parametrize("tail", ["plain", "cast", "index"])
def test_a_final_sigmoid_is_found_past_casts_and_indexing(tail: str) -> None:
    """The warning reads the network's last operation past reshapes, casts and
    indexing (mixed-precision heads, a selected output)."""

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = bnn.VILinear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.fc(x)
            if tail == "cast":
                return torch.sigmoid(out.double()).float()[..., :1]
            if tail == "index":
                return torch.sigmoid(out)[..., torch.tensor([0])]
            return torch.sigmoid(out)[..., :1]

    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Bernoulli(), dataset_size=8)
    with pytest.warns(UserWarning, match=r"nn\.Sigmoid"):
        loss_fn(Head()(x), y)


def test_a_no_grad_evaluation_first_leaves_the_sigmoid_check_for_training() -> None:
    """Without a graph nothing can be read: an initial validation loss under
    no_grad used to mark the check done, and training never warned."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(bnn.VILinear(4, 1), torch.nn.Sigmoid())
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Bernoulli(), dataset_size=8)
    with torch.no_grad():
        loss_fn(net(x), y)
    with pytest.warns(UserWarning, match=r"nn\.Sigmoid"):
        loss_fn(net(x), y)


def test_categorical_after_a_final_softmax_warns_in_training() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(bnn.VILinear(4, 3), torch.nn.Softmax(-1))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=8)
    with pytest.warns(UserWarning, match=r"nn\.Softmax"):
        loss_fn(net(x), y)


def test_a_prediction_keeps_the_likelihood_it_was_made_with() -> None:
    """Summaries are computed on demand: with the live likelihood, a learned
    noise scale that moved later (training went on, a checkpoint was loaded
    into the loss) changed the variances and intervals of earlier predictions
    (variance 0.44 -> 0.02 after more training)."""
    torch.manual_seed(0)
    net = bnn.VISequential(bnn.VILinear(3, 1))
    likelihood = bnn.Normal()
    with torch.no_grad():
        likelihood.raw_scale.sub_(1.0)  # trained
    prediction = bnn.predict(net, torch.randn(4, 3), likelihood, samples=8)
    variance, interval = prediction.variance.clone(), prediction.interval(0.9)
    with torch.no_grad():
        likelihood.raw_scale.add_(2.0)  # trained on, or a checkpoint loaded
    torch.testing.assert_close(prediction.variance, variance, rtol=0, atol=0)
    for now, then in zip(prediction.interval(0.9), interval, strict=True):
        torch.testing.assert_close(now, then, rtol=0, atol=0)
    # a calibrated prediction too (the calibration references its base)
    calibrated = bnn.predict(
        net, torch.randn(4, 3), likelihood, 8, calibration=bnn.VarianceScaling(2.0)
    )
    before = calibrated.variance.clone()
    with torch.no_grad():
        likelihood.raw_scale.sub_(0.5)
    torch.testing.assert_close(calibrated.variance, before, rtol=0, atol=0)
    assert (
        bnn.predict(net, torch.randn(4, 3), likelihood).variance.min() > variance.max()
    )


def test_predicting_with_batch_norm_in_training_mode_warns() -> None:
    """Without ``model.eval()`` a batch norm normalised the inputs by their own
    statistics (a prediction depended on the inputs predicted with it) and
    moved its running statistics, silently."""
    net = nn.Sequential(bnn.VILinear(3, 4), bnn.BatchNorm1d(4), bnn.VILinear(4, 2))
    x = torch.randn(8, 3)
    with pytest.warns(UserWarning, match=r"batch norm \(1\).*training mode"):
        bnn.predict(net, x, bnn.Categorical(), samples=4)
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bnn.predict(net, x, bnn.Categorical(), samples=4)
    untracked = nn.Sequential(
        bnn.VILinear(3, 4), bnn.BatchNorm1d(4, track_running_stats=False)
    ).eval()
    with pytest.warns(UserWarning, match="keeps no running statistics"):
        bnn.predict(untracked, x, bnn.Categorical(), samples=4)


def test_predicting_with_dropout_in_training_mode_warns() -> None:
    """A converted model keeps the torch model's (training) mode: mode="mean"
    was random (0.31 off model.eval()(x)) and sampled predictions counted
    dropout's noise as epistemic variance, silently."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.5))
    pretrained = nn.Sequential(backbone, nn.Linear(16, 1))
    net = bnn.convert(pretrained)
    x, likelihood = torch.randn(8, 3), bnn.Normal(scale=0.1)
    with pytest.warns(UserWarning, match=r"dropout \(0\.2\).*mode='mean' is then"):
        first = bnn.predict(net, x, likelihood, mode="mean")
    with pytest.warns(UserWarning, match="noise is then counted as epistemic"):
        bnn.predict(net, x, likelihood, samples=4)
    with pytest.warns(UserWarning, match=r"model\.eval\(\)"):
        second = bnn.predict(net, x, likelihood, mode="mean")
    assert not torch.equal(first.mean, second.mean)  # what the warning is about
    net.eval()  # no warning (warnings are errors in this suite)
    evaluated = bnn.predict(net, x, likelihood, mode="mean")
    expected = pretrained.eval()(x).squeeze(-1)
    torch.testing.assert_close(evaluated.mean, expected, rtol=1e-6, atol=1e-6)


# An untrained network on random labels: no better than uniform, as calibrate
# may say; not this test's subject.
@pytest.mark.filterwarnings("ignore:calibration. the fitted temperature:UserWarning")
def test_calibrating_with_dropout_in_training_mode_warns() -> None:
    """calibrate fits on predictions: its own call of predict warns, at the
    user's line."""
    net = bnn.VISequential(bnn.VILinear(3, 8), nn.Dropout(0.2), bnn.VILinear(8, 2))
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    with pytest.warns(UserWarning, match=r"dropout \(1\)") as caught:
        bnn.calibrate(net, x, y, bnn.Categorical(), samples=4)
    assert caught[0].filename == __file__


class _TwoInputs(bnn.VIModule):
    """A two-tower network: ``head(a(u) * b(v))``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = bnn.VILinear(3, 8), bnn.VILinear(2, 8)
        self.head = bnn.VILinear(8, 4)

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        return self.head(self.a(u) * self.b(v))  # type: ignore[no-any-return]


def test_a_network_with_several_inputs_predicts_from_a_tuple() -> None:
    """predict and calibrate took one tensor only ('convert it with
    torch.as_tensor', which would stack two inputs of one shape into one),
    while fit took tuples. Chunks split every input alike."""
    torch.manual_seed(0)
    net, u, v = _TwoInputs(), torch.randn(10, 3), torch.randn(10, 2)
    torch.manual_seed(1)
    whole = bnn.predict(net, (u, v), bnn.Categorical(), samples=5, batch_size=10)
    torch.manual_seed(1)
    chunked = bnn.predict(net, (u, v), bnn.Categorical(), samples=5, batch_size=3)
    torch.testing.assert_close(chunked.samples, whole.samples)
    plain = bnn.to_deterministic(net)
    mean = bnn.predict(net, (u, v), bnn.Categorical(), mode="mean")
    torch.testing.assert_close(mean.samples[0], plain(u, v))
    with pytest.raises(
        ValueError, match=r"one number of examples.*\(10, 3\), \(9, 2\)"
    ):
        bnn.predict(net, (u, v[:9]), bnn.Categorical())
    with pytest.raises(TypeError, match=r"x\[1\] as a torch.Tensor, got list"):
        bnn.predict(net, (u, [[1.0, 2.0]]), bnn.Categorical())  # type: ignore[arg-type]
    calibration = bnn.calibrate(
        net, (u, v), torch.randint(0, 4, (10,)), bnn.Categorical(), samples=5
    )
    assert float(calibration.temperature) > 0


class _HoldsItsGraph(bnn.VIModule):
    """A node classifier whose adjacency over all its 12 nodes is an attribute."""

    def __init__(self, dense: bool) -> None:
        super().__init__()
        self.layer = bnn.VILinear(5, 3)
        self.adjacency = torch.softmax(torch.randn(12, 12), -1)
        self.edge_index = torch.randint(0, 12, (2, 30))
        self.dense = dense

    def forward(self, x: Tensor) -> Tensor:
        from pyrolite_bnn.layers.functional import current_samples

        h = self.layer(x).unflatten(0, (-1, current_samples()))  # (N, S, 3)
        if self.dense:
            h = torch.einsum("ij,jsf->isf", self.adjacency, h)
        else:
            source, target = self.edge_index
            h = h + torch.zeros_like(h).index_add_(0, target, h[source])
        return h.flatten(0, 1)


@pytest.mark.parametrize("dense", [True, False], ids=["adjacency", "edge_index"])
@pytest.mark.parametrize("batch_size", [None, 5])
def test_a_network_holding_its_graph_fails_on_a_chunk_naming_batch_size(
    dense: bool, batch_size: int | None
) -> None:
    """The memory probe's first 4 nodes (or a chunk of 5) met the graph over
    all 12 nodes: a bare einsum size error or IndexError, with no word on
    predict's chunks. The error now names batch_size=len(x), which runs."""
    net, x = _HoldsItsGraph(dense), torch.randn(12, 5)
    with pytest.raises((RuntimeError, IndexError), match=r"batch_size=len\(x\)"):
        bnn.predict(net, x, bnn.Categorical(), samples=4, batch_size=batch_size)
    whole = bnn.predict(net, x, bnn.Categorical(), samples=4, batch_size=len(x))
    assert whole.probs.shape == (12, 3)


def test_inputs_of_several_sizes_name_the_way_for_a_graph_batch() -> None:
    """A graph batch (nodes, edges, graph ids) was refused with no way out:
    the message names draw_networks and the how-to section."""
    net = _TwoInputs()
    with pytest.raises(
        ValueError, match=r"graph batch.*draw_networks.*'Graph-level outputs"
    ):
        bnn.predict(net, (torch.randn(10, 3), torch.randn(4, 2)), bnn.Categorical())


def test_several_inputs_in_a_list_are_unpacked_as_in_a_tuple() -> None:
    """A DataLoader collates an input pair into a list: ``model(*x)`` too.

    A list was refused ("needs inputs x as a torch.Tensor, got list").
    """
    torch.manual_seed(0)
    net, u, v = _TwoInputs(), torch.randn(10, 3), torch.randn(10, 2)
    torch.manual_seed(1)
    from_tuple = bnn.predict(net, (u, v), bnn.Categorical(), samples=5)
    torch.manual_seed(1)
    from_list = bnn.predict(net, [u, v], bnn.Categorical(), samples=5)
    torch.testing.assert_close(from_list.samples, from_tuple.samples, rtol=0, atol=0)


def _contexts_around_predict() -> dict[str, Any]:
    """Ways a caller surrounds ``predict``: ``run(call)`` returns ``call()``."""

    def under(handler: Any) -> Any:
        def run(call: Any) -> Any:
            with handler:
                return call()

        return run

    def in_pyro_model(call: Any) -> Any:
        result: list[Any] = []

        def model() -> None:  # a Pyro model using a trained network's predictions
            result.append(call())
            pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))

        trace = pyro.poutine.trace(model).get_trace()
        sites = [name for name, node in trace.nodes.items() if node["type"] == "sample"]
        assert sites == ["z"]  # predict's weight sites stay its own
        return result[0]

    def in_forward_hook(call: Any) -> Any:  # monitoring another model
        other = bnn.VISequential(bnn.VILinear(3, 2))
        result: list[Any] = []
        handle = other[0].register_forward_hook(lambda *_: result.append(call()))
        other(torch.randn(4, 3), samples=2)
        handle.remove()
        return result[0]

    def in_forward(call: Any) -> Any:  # a student reading a frozen teacher
        class Student(bnn.VIModule):
            def __init__(self) -> None:
                super().__init__()
                self.head = bnn.VILinear(3, 2)
                self.result: list[Any] = []

            def forward(self, x: Tensor) -> Tensor:
                self.result.append(call())
                return self.head(x)  # type: ignore[no-any-return]

        student = Student()
        student(torch.randn(4, 3), samples=2)
        return student.result[0]

    return {
        "block": under(pyro.poutine.block()),
        "scale": under(pyro.poutine.scale(scale=2.0)),
        "pyro_model": in_pyro_model,
        "forward_hook": in_forward_hook,
        "forward": in_forward,
    }


@pytest.mark.parametrize("mode", ["sample", "mean"])
@pytest.mark.parametrize("where", list(_contexts_around_predict()))
def test_predict_is_its_own_computation_wherever_it_is_called(
    where: str, mode: str
) -> None:
    """Under the caller's Pyro handlers the networks took Pyro's path and drew
    their weights from the prior (accuracy 0.906 -> 0.469 in the probe); inside
    another network's call predict failed with "samples= can only be given to
    the outermost VIModule call". Now the same draws as a call on its own."""
    torch.manual_seed(0)
    net = bnn.VISequential(bnn.VILinear(3, 8), nn.ReLU(), bnn.VILinear(8, 2))
    with torch.no_grad():  # a posterior far from the N(0, 1) prior
        for v in net.random_variables():
            v.posterior.loc.fill_(3.0)
    x = torch.randn(6, 3)

    def call() -> Tensor:
        torch.manual_seed(1)
        return bnn.predict(
            net, x, bnn.Categorical(), samples=4, batch_size=4, mode=mode
        ).samples

    expected = call()
    got = _contexts_around_predict()[where](call)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_prediction_summaries_are_computed_once_per_samples() -> None:
    """A loop over ``pred.probs[i]`` recomputed every particle's softmax at
    every access (26 ms an access for 1,000 inputs and 100 particles): the
    summaries are kept while ``samples`` and the likelihood stay as they are,
    and computed again after an in-place change or a new ``samples``; what a
    caller does to a returned tensor does not reach the next access."""
    calls = []

    class Counting(bnn.Categorical):
        def class_probs(self, output: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            return super().class_probs(output)

    torch.manual_seed(0)
    pred = Prediction(torch.randn(4, 6, 3), Counting())
    first = pred.probs
    summaries = [
        (pred.probs, pred.aleatoric, pred.entropy, pred.mutual_information)
        for _ in range(5)
    ]
    assert len(summaries) == 5
    assert len(calls) == 1
    first.zero_()  # the caller's copy
    torch.testing.assert_close(pred.probs, torch.softmax(pred.samples, -1).mean(0))
    pred.samples.mul_(2.0)
    torch.testing.assert_close(pred.probs, torch.softmax(pred.samples, -1).mean(0))
    assert len(calls) == 2
    pred.samples = torch.randn(4, 6, 3)
    torch.testing.assert_close(pred.probs, torch.softmax(pred.samples, -1).mean(0))
    assert len(calls) == 3


def test_prediction_summaries_follow_reassigned_samples_and_likelihoods() -> None:
    """The kept summaries were stamped with id(samples) and id(predictive):
    after two reassignments CPython hands the new object the freed first one's
    id, and the first one's summaries came back (stale in 200 of 200 tries)."""
    torch.manual_seed(0)
    pred = Prediction(torch.randn(5, 4, 1), bnn.Normal(scale=1.0))
    for _ in range(20):
        _ = pred.mean
        pred.samples = pred.samples * 2.0  # the first tensor is freed here
        pred.samples = pred.samples + 1.0  # and its id given to this one
        torch.testing.assert_close(pred.mean, pred.samples.mean(0).squeeze(-1))
    for _ in range(20):
        pred = Prediction(torch.randn(5, 4, 1), bnn.Normal(scale=1.0))
        _ = pred.variance
        pred.predictive = bnn.Normal(scale=2.0)
        pred.predictive = bnn.Normal(scale=3.0)
        torch.testing.assert_close(pred.variance, pred.epistemic_var + 9.0)


# ------------------------------------------------ probe: memory and one call
class _Recurrent(bnn.VIModule):
    """A long-sequence classifier: a recurrent layer and a head on its last step."""

    def __init__(self, layer: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = layer(8, 32, batch_first=True)
        self.head = bnn.VILinear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("layer", [bnn.VILSTM, bnn.VIGRU], ids=["lstm", "gru"])
def test_long_sequences_stay_within_the_memory_budget(layer: type[nn.Module]) -> None:
    """The probe measured module inputs and outputs with hooks, blind to an
    LSTM's per-step buffers (gates of all steps, kept for a backward pass even
    under ``no_grad``) and a GRU's per-step tensors: chunks overshot the
    budget 2-3.7x (7.6 GB for a 2 GiB budget at L=1000, S=100).

    Every tensor ``predict`` allocates is counted (:class:`AllocationPeak`):
    the kept weight draws and a chunk's working memory stay within the
    budget (5 % slack: the probe runs 2 particles, the prediction 20); the
    result ``(S, N, 3)`` comes on top, as documented.
    """
    torch.manual_seed(0)
    net = _Recurrent(layer).eval()
    x = torch.randn(16, 200, 8)
    budget = 16 * 2**20
    sizes = _chunk_sizes(net)
    with AllocationPeak() as memory:
        pred = bnn.predict(net, x, bnn.Categorical(), samples=20, memory_budget=budget)
    assert memory.peak - pred.samples.nbytes <= 1.05 * budget
    assert len(sizes) > 3  # the probe and several chunks
    assert max(sizes[1:]) > 1  # not trivially safe: chunks of several inputs


@pytest.mark.parametrize(
    ("inputs", "options"),
    [
        (1, {"samples": 1}),
        (1, {"samples": 10}),
        (1, {"samples": 10, "mode": "mean"}),
        (4, {"samples": 1}),
        (4, {"samples": 10, "mode": "mean"}),
    ],
)
def test_inputs_the_probe_would_run_take_one_call(
    inputs: int, options: dict[str, Any]
) -> None:
    """Serving one input: the probe was a whole extra forward pass (1.4 ms per
    call vs 0.34 ms for ``model(x)`` and a softmax). One input is one chunk
    whatever the probe measures, and with one particle the probe runs exactly
    the prediction's call: the model now runs once, with the same result as
    the call without a probe."""
    net = _mlp().eval()
    x = torch.randn(inputs, 3)
    sizes = _chunk_sizes(net)
    torch.manual_seed(3)
    pred = bnn.predict(net, x, bnn.Categorical(), **options)
    assert sizes == [inputs]
    torch.manual_seed(3)
    given = bnn.predict(net, x, bnn.Categorical(), batch_size=inputs, **options)
    torch.testing.assert_close(pred.samples, given.samples, rtol=0.0, atol=0.0)


def test_more_inputs_or_particles_than_the_probe_runs_are_probed() -> None:
    net = _mlp().eval()
    sizes = _chunk_sizes(net)
    bnn.predict(net, torch.randn(4, 3), bnn.Categorical(), samples=10)
    bnn.predict(net, torch.randn(5, 3), bnn.Categorical(), samples=1)
    assert sizes == [4, 4, 4, 5]


def test_mean_mode_reads_the_medians_without_rebuilding_distributions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``mode="mean"`` built every layer's Normal and its icdf at 0.5 at every
    call (27 % of a one-input prediction, slower than sampling); a mean-field
    Normal's median is its ``loc``, read as it is, and equals the plain network
    at the posterior median (``to_deterministic``)."""
    net = _mlp().eval()
    x = torch.randn(6, 3)

    def no_distribution(self: object) -> None:
        raise AssertionError("predict(mode='mean') built a posterior distribution")

    with monkeypatch.context() as patch:
        patch.setattr(MeanFieldNormalPosterior, "distribution", no_distribution)
        pred = bnn.predict(net, x, bnn.Categorical(), mode="mean")
    with torch.no_grad():
        expected = bnn.to_deterministic(net)(x)
    torch.testing.assert_close(pred.samples[0], expected, rtol=1e-6, atol=1e-6)


def test_mean_mode_follows_an_in_place_update_of_the_parameters() -> None:
    """Medians read from the parameters at every call: an optimizer step (an
    in-place update) between two predictions changes the second."""
    net = _mlp().eval()
    x = torch.randn(6, 3)
    before = bnn.predict(net, x, bnn.Categorical(), mode="mean").samples
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.1)
    after = bnn.predict(net, x, bnn.Categorical(), mode="mean").samples
    with torch.no_grad():
        expected = bnn.to_deterministic(net)(x)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after[0], expected, rtol=1e-6, atol=1e-6)


def _pausing_network(
    pause: threading.Event, resume: threading.Event, events: list[str] | None = None
) -> nn.Module:
    """A network whose first call in thread "B" waits (up to 1 s) for ``resume``."""
    net = bnn.VISequential(bnn.VILinear(4, 8), nn.Tanh(), bnn.VILinear(8, 3))
    first = [True]

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if first[0] and threading.current_thread().name == "B":
            first[0] = False
            pause.set()
            resume.wait(timeout=1.0)
            if events is not None:
                events.append("B resumed")

    net[0].register_forward_hook(hook)
    return net


def test_mean_mode_rewinds_no_generator_under_another_thread() -> None:
    """Its memory probe set torch's generator back although it drew nothing:
    a draw another thread made during the probe was handed out again."""
    torch.manual_seed(0)
    pause, resume = threading.Event(), threading.Event()
    net, x = _pausing_network(pause, resume), torch.randn(64, 4)
    during: list[Tensor] = []

    def draw() -> None:
        pause.wait(timeout=5.0)
        during.append(torch.randn(5))
        resume.set()

    a = threading.Thread(target=draw, name="A")
    b = threading.Thread(
        target=lambda: bnn.predict(net, x, bnn.Categorical(), mode="mean"), name="B"
    )
    a.start(), b.start()
    a.join(), b.join()
    assert not torch.equal(during[0], torch.randn(5))


def test_sampled_predictions_that_rewind_the_generators_take_turns() -> None:
    """A sampled ``predict`` that probes memory sets the generators back after
    its probe: another thread's ``predict`` starting from the same state drew
    the same numbers (a probe found 17 of 3,000 pairs of predictions equal).
    A second such call now waits until the first is done: here thread A's
    call, started while B's probe is paused, ends after B resumes."""
    torch.manual_seed(0)
    pause, resume = threading.Event(), threading.Event()
    events: list[str] = []
    net, x = _pausing_network(pause, resume, events), torch.randn(64, 4)

    def call(name: str) -> None:
        bnn.predict(net, x, bnn.Categorical(), samples=4)

    _race(call, pause, resume, events)
    assert events == ["B resumed", "A done"]


def _race(
    call: Callable[[str], None],
    pause: threading.Event,
    resume: threading.Event,
    events: list[str],
) -> None:
    """``call("B")`` in thread B and, once B pauses, ``call("A")`` in thread A."""

    def run(name: str) -> None:
        if name == "A":
            pause.wait(timeout=5.0)
        call(name)
        if name == "A":
            events.append("A done")
            resume.set()

    threads = [threading.Thread(target=run, args=(n,), name=n) for n in "AB"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_predictions_that_rewind_nothing_do_not_wait_for_each_other() -> None:
    """Mean-mode calls draw nothing: one waited for another thread's call
    paused in its memory probe (a server's threads ran one at a time)."""
    torch.manual_seed(0)
    pause, resume = threading.Event(), threading.Event()
    events: list[str] = []
    paused = _pausing_network(pause, resume, events)
    other = bnn.VISequential(bnn.VILinear(4, 8), nn.Tanh(), bnn.VILinear(8, 3))
    x = torch.randn(64, 4)

    def call(name: str) -> None:
        net = other if name == "A" else paused
        bnn.predict(net, x, bnn.Categorical(), mode="mean")

    _race(call, pause, resume, events)
    assert events == ["A done", "B resumed"]


def test_a_budget_that_one_input_exceeds_is_reported() -> None:
    """Where even one input's working memory does not fit the budget left by
    the weight draws (long signals, few weights), predict ran input by input
    over the budget, silently."""
    net = bnn.VISequential(
        bnn.VIConv1d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        bnn.VILinear(16, 2),
    )
    x = torch.randn(3, 1, 10_000)  # one input: ~0.6 MB of activations per particle
    with pytest.warns(RuntimeWarning, match="one input with 4 particle"):
        pred = bnn.predict(net, x, bnn.Categorical(), samples=4, memory_budget=2**20)
    assert pred.samples.shape == (4, 3, 2)


def test_an_output_that_lost_its_particles_is_named_by_predict() -> None:
    """Older segmentation code ends with ``logits.view(x.size(0), C, -1)``:
    on the folded ``(B * S, C, H, W)`` activation it moves the particles into
    the pixels, and the call reads the ``B`` rows as shared by all particles.
    predict returned S identical particles (no epistemic uncertainty) without
    a word (probe of 2026-12-02); it now warns."""

    class Segmenter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 3, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x).view(x.size(0), 3, -1).transpose(1, 2)

    net = bnn.convert(Segmenter())
    x = torch.randn(2, 1, 4, 4)
    with pytest.warns(UserWarning, match="every particle gave the same output"):
        bnn.predict(net, x, bnn.Categorical(), samples=4, batch_size=2)
    good = bnn.VISequential(bnn.VILinear(3, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bnn.predict(good, torch.randn(5, 3), bnn.Categorical(), samples=4)


class _SequenceFirstWithMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = bnn.VIMultiheadAttention(8, 2)  # batch_first=False

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.attention(x, x, x, key_padding_mask=mask)[0]  # type: ignore[no-any-return]


def test_a_batch_first_mask_of_a_sequence_first_network_is_named() -> None:
    """torch's key_padding_mask is (B, L) while the sequence-first inputs are
    (L, B, ...): predict splits every input along dimension 1 and refused
    the mask with no word of why (probe multicall, F4). The message names the
    rule and the remedy, which works: the mask transposed, back in forward."""
    x, mask = torch.randn(5, 4, 8), torch.zeros(4, 5, dtype=torch.bool)
    net = _SequenceFirstWithMask()
    with pytest.raises(
        ValueError, match=r"sequence-first.*key_padding_mask.*transposed"
    ):
        bnn.predict(net, (x, mask), bnn.Normal(scale=1.0), samples=2)

    class Transposed(_SequenceFirstWithMask):
        def forward(self, x: Tensor, mask: Tensor) -> Tensor:
            return super().forward(x, mask.T)

    pred = bnn.predict(Transposed(), (x, mask.T), bnn.Normal(scale=1.0), samples=2)
    assert pred.samples.shape == (2, 5, 4, 8)


@pytest.mark.parametrize(("samples", "free"), [(1, 100), (64, 1000)])
def test_outputs_larger_than_the_free_host_memory_are_refused_up_front(
    monkeypatch: pytest.MonkeyPatch, samples: int, free: int
) -> None:
    """The memory budget bounds predict's work, not its result: 100,000
    samples of 1,000 outputs on 2,000 inputs ran for seconds and then asked
    for 26 GiB at once (an allocator error, or on an overcommitting host a
    buffer filled until the kernel killed the process). The outputs' buffer is
    now checked against the host's free memory (``free`` bytes here) first,
    in chunks of inputs (1 sample) and in groups of samples (64, whose draws
    do not fit the budget at once)."""
    net = _mlp().eval()
    x = torch.randn(40, 3)
    monkeypatch.setattr(_host_memory, "available_bytes", lambda: free)
    with pytest.raises(MemoryError, match=r"holding the outputs \(shape \(\d+, 40, "):
        bnn.predict(net, x, bnn.Categorical(), samples=samples, memory_budget=4096)
    monkeypatch.setattr(_host_memory, "available_bytes", lambda: None)
    pred = bnn.predict(net, x, bnn.Categorical(), samples=samples, memory_budget=4096)
    assert pred.samples.shape[:2] == (samples, 40)


def test_memory_budget_warnings_point_at_the_callers_line() -> None:
    """Both budget warnings pointed into the library (_isolation.py), and the
    one about the inputs came once per group of particles (17 times here)."""
    net = bnn.VISequential(bnn.VILinear(4, 8), nn.ReLU(), bnn.VILinear(8, 2))
    with pytest.warns(RuntimeWarning, match="drawing the weight") as caught:
        bnn.predict(net, torch.randn(16, 4), bnn.Categorical(), memory_budget=100)
    assert [w.filename for w in caught] == [__file__]
    wide = bnn.VISequential(bnn.VILinear(1, 1), nn.Linear(1, 512), nn.ReLU())
    with pytest.warns(RuntimeWarning, match="one input with") as caught:
        bnn.predict(wide, torch.randn(16, 1), bnn.Normal(0.1), memory_budget=100)
    assert [w.filename for w in caught] == [__file__]


@pytest.mark.parametrize("batch_size", [None, 4])
def test_outputs_shared_by_the_particles_warn_once_per_call(
    batch_size: int | None,
) -> None:
    """The memory probe and every chunk warned again: twice or more per call."""

    class Constant(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = bnn.VILinear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).detach()[:1, :].mean(0).expand(x.shape[0], 2) * 0

    x = torch.randn(16, 4)
    with pytest.warns(UserWarning, match="every particle gave the same") as caught:
        bnn.predict(Constant(), x, bnn.Categorical(), samples=4, batch_size=batch_size)
    assert len(caught) == 1
    assert caught[0].filename == __file__


def test_repr_shows_the_samples_shape_not_their_values() -> None:
    """The dataclass repr dumped the samples tensor (1,200 characters)."""
    pred = Prediction(torch.zeros(200, 64, 2), bnn.Categorical())
    shown = "Prediction(samples=(200, 64, 2) float32, predictive=Categorical())"
    assert repr(pred) == shown
    pred = Prediction(torch.zeros(3, 5, dtype=torch.float64), bnn.Normal(scale=0.5))
    shown = "Prediction(samples=(3, 5) float64, predictive=Normal(scale=0.5))"
    assert repr(pred) == shown


def _spread(loc: Tensor) -> Tensor:
    return (loc - loc.mean(0)).square().mean(0)


def _entropy_of(probs: Tensor) -> Tensor:
    return -(probs * probs.log()).sum(-1)


def _categorical(probs: Tensor) -> dict[str, Tensor]:
    """Hand-computed classification summaries of per-particle probabilities."""
    mean = probs.mean(0)
    aleatoric = _entropy_of(probs).mean(0)
    return {
        "probs": mean,
        "entropy": _entropy_of(mean),
        "aleatoric": aleatoric,
        "mutual_information": _entropy_of(mean) - aleatoric,
    }


def _gaussian(loc: Tensor, noise_var: Tensor) -> dict[str, Tensor]:
    """Hand-computed regression summaries: law of total variance."""
    variance = noise_var.mean(0) + _spread(loc)
    return {
        "mean": loc.mean(0),
        "aleatoric_var": noise_var.mean(0),
        "epistemic_var": _spread(loc),
        "variance": variance,
        "stddev": variance.sqrt(),
    }


# The likelihoods keep their noise scale in float32: its square as they see it.
_NOISE_VAR = float(torch.tensor(0.3)) ** 2

_SUMMARY_CASES: dict[str, tuple[Callable[[], Any], int, Callable[[Tensor], Any]]] = {
    # name: (likelihood, output features, hand computation from the outputs)
    "normal": (
        lambda: bnn.Normal(scale=0.3),
        1,
        lambda o: _gaussian(o[..., 0], torch.full_like(o[..., 0], _NOISE_VAR)),
    ),
    "heteroscedastic": (
        lambda: bnn.HeteroscedasticNormal(min_scale=1e-6),
        2,
        lambda o: _gaussian(
            o[..., 0], (torch.nn.functional.softplus(o[..., 1]) + 1e-6) ** 2
        ),
    ),
    "student_t": (
        lambda: bnn.StudentT(df=5.0, scale=0.3),
        1,
        lambda o: _gaussian(o[..., 0], torch.full_like(o[..., 0], _NOISE_VAR * 5 / 3)),
    ),
    "poisson": (
        bnn.Poisson,
        1,
        lambda o: _gaussian(o[..., 0].exp(), o[..., 0].exp()),
    ),
    "variance_scaled": (
        lambda: bnn.VarianceScaling(2.0).wrap(bnn.Normal(scale=0.3)),
        1,
        lambda o: {
            **_gaussian(
                o[..., 0].mean(0) + 2**0.5 * (o[..., 0] - o[..., 0].mean(0)),
                torch.full_like(o[..., 0], 2 * _NOISE_VAR),
            ),
            "mean": o[..., 0].mean(0),
        },
    ),
    "categorical": (bnn.Categorical, 3, lambda o: _categorical(o.softmax(-1))),
    "tempered": (
        lambda: bnn.TemperatureScaling(2.0).wrap(bnn.Categorical()),
        3,
        lambda o: _categorical((o / 2).softmax(-1)),
    ),
    "bernoulli": (
        bnn.Bernoulli,
        1,
        lambda o: _categorical(torch.cat([(-o).sigmoid(), o.sigmoid()], -1)),
    ),
}


@pytest.mark.parametrize("case", list(_SUMMARY_CASES))
def test_summaries_differentiate_to_the_samples_as_computed_by_hand(case: str) -> None:
    """Samples that require grad (a drawn network's outputs on inputs that
    require grad) give summaries with the gradient of the same formulas
    written out by hand, for every likelihood: regression summaries used to
    be computed under no_grad, so an acquisition function built on them
    (UCB = mean + 2 stddev) had no gradient to the inputs. Float64: the
    gradients agree to rounding (1e-10)."""
    likelihood, features, hand = _SUMMARY_CASES[case]
    samples = torch.randn(6, 4, features, dtype=torch.float64, requires_grad=True)
    pred = Prediction(samples, likelihood())
    for name, expected in hand(samples).items():
        value = getattr(pred, name)
        torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-10)
        if not expected.requires_grad:
            continue
        weights = torch.randn_like(expected)  # a random direction
        # Summaries share their graphs (the variance is made of the kept parts).
        (got,) = torch.autograd.grad(
            (value * weights).sum(), samples, retain_graph=True
        )
        (want,) = torch.autograd.grad(
            (expected * weights).sum(), samples, retain_graph=True
        )
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)
    with torch.no_grad():  # grad mode off: no graph, from a fresh computation
        for name in hand(samples):
            assert not getattr(pred, name).requires_grad, name
    assert not getattr(Prediction(samples.detach(), likelihood()), name).requires_grad


@pytest.mark.parametrize("case", ["normal", "heteroscedastic", "student_t"])
@pytest.mark.parametrize("q", [0.05, 0.5, 0.9])
def test_quantiles_differentiate_to_the_samples(case: str, q: float) -> None:
    """The mixture quantile is found by a search; its gradient is the implicit
    one, ``dy = -dF / f``. Checked against central finite differences of the
    float64 quantile (found to float64 resolution, so the differences are
    exact to about 1e-9 with eps = 1e-6), and for the Normal mixture against
    the closed form: d y / d loc_s = N(y; loc_s, sigma) / sum_s N(y; loc_s, sigma)."""
    likelihood, features, _ = _SUMMARY_CASES[case]
    samples = torch.randn(3, 2, features, dtype=torch.float64, requires_grad=True)

    def quantile(outputs: Tensor) -> Tensor:
        return Prediction(outputs, likelihood()).quantile(q)

    assert torch.autograd.gradcheck(quantile, (samples,), eps=1e-6, atol=1e-7)
    if case == "normal":
        y = quantile(samples)
        (got,) = torch.autograd.grad(y.sum(), samples)
        loc = samples.detach()[..., 0]
        sigma = _NOISE_VAR**0.5
        density = torch.distributions.Normal(loc, sigma).log_prob(y.detach()).exp()
        want = (density / density.sum(0)).unsqueeze(-1)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_a_poisson_quantile_is_a_count_with_zero_gradient() -> None:
    """As torch.floor: piecewise constant, differentiable with gradient 0."""
    samples = torch.randn(5, 3, 1, requires_grad=True)
    lower, upper = Prediction(samples, bnn.Poisson()).interval(0.9)
    (gradient,) = torch.autograd.grad((lower + upper).sum(), samples)
    torch.testing.assert_close(gradient, torch.zeros_like(samples), rtol=0, atol=0)


def test_a_drawn_networks_acquisition_function_has_the_inputs_gradient() -> None:
    """UCB built on Prediction(nets(x), likelihood), as the draw_networks docs
    suggest for Bayesian optimisation: its gradient to the input equals that
    of the same UCB written out from the particles' outputs."""
    net = bnn.VISequential(bnn.VILinear(1, 16), nn.Tanh(), bnn.VILinear(16, 1))
    nets = bnn.draw_networks(net, samples=32)
    x = torch.tensor([[0.3], [-0.7]], requires_grad=True)
    out = nets(x)
    pred = Prediction(out, bnn.Normal(scale=0.1))
    ucb = pred.mean + 2 * pred.stddev
    (got,) = torch.autograd.grad(ucb.sum(), x, retain_graph=True)
    hand = out[..., 0].mean(0) + 2 * (_spread(out[..., 0]) + 0.01).sqrt()
    (want,) = torch.autograd.grad(hand.sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_inputs_are_cut_into_chunks_or_named() -> None:
    """predict cut its inputs (and the memory probe's first ones) with
    ``narrow``, which sparse tensors lack: sparse COO inputs, which the
    network itself takes, crashed inside torch (probe tensorkinds). COO rows
    are selected now (the same prediction as dense inputs at the same seed);
    CSR is refused with the remedies, and runs as one chunk."""
    net = bnn.VISequential(bnn.VILinear(4, 8), torch.nn.ReLU(), bnn.VILinear(8, 3))
    x = torch.randn(6, 4)
    x[x.abs() < 0.7] = 0.0

    def probs(inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        torch.manual_seed(3)
        pred = bnn.predict(net, inputs, bnn.Categorical(), samples=5, **kwargs)
        return pred.probs

    dense = probs(x, batch_size=2)
    torch.testing.assert_close(probs(x.to_sparse(), batch_size=2), dense)
    torch.testing.assert_close(probs(x.to_sparse()), probs(x))
    csr = x.to_sparse_csr()
    with pytest.raises(ValueError, match=r"sparse_csr.*batch_size=len\(x\)"):
        probs(csr, batch_size=2)
    torch.testing.assert_close(probs(csr, batch_size=len(x)), probs(x, batch_size=6))


@pytest.mark.filterwarnings(
    "ignore:Sparse BSR tensor support is in beta",
    "ignore:Sparse BSC tensor support is in beta",
    "ignore:The PyTorch API of nested tensors",
)
@pytest.mark.parametrize("layout", ["bsr", "bsc", "nested", "jagged"])
def test_inputs_no_layer_takes_are_named_without_one_chunk(layout: str) -> None:
    """predict's refusal to cut a block-sparse or nested input into chunks
    first suggested batch_size=len(x), which fails too: every layer refuses
    those layouts (probe falsepos21a). It names only the conversions now."""
    net = bnn.VISequential(bnn.VILinear(4, 8), torch.nn.ReLU(), bnn.VILinear(8, 3))
    x = torch.randn(6, 4)
    inputs = {
        "bsr": lambda: x.to_sparse_bsr((2, 2)),
        "bsc": lambda: x.to_sparse_bsc((2, 2)),
        "nested": lambda: torch.nested.nested_tensor([x[:2], x[2:]]),
        "jagged": lambda: torch.nested.nested_tensor(
            [x[:2], x[2:]], layout=torch.jagged
        ),
    }[layout]()
    with pytest.raises(ValueError, match=r"cannot cut .* into chunks") as refused:
        bnn.predict(net, inputs, bnn.Categorical(), samples=2, batch_size=1)
    assert "batch_size" not in str(refused.value)
    assert re.search(r"convert it with (x\.to_|torch\.nested)", str(refused.value))
    with pytest.raises(TypeError, match=r"^VILinear takes"):  # one chunk fails too
        bnn.predict(net, inputs, bnn.Categorical(), samples=2, batch_size=len(x))


@pytest.mark.filterwarnings(
    "ignore:Sparse CSC tensor support is in beta",
    "ignore:The PyTorch API of nested tensors",
)
def test_csc_and_nested_inputs_are_predicted_or_named() -> None:
    """A CSC input crashed in the local estimator (``Expected result Tensor to
    be of format CSR``); it is predicted as the dense input now. A nested
    input crashed inside torch (``NestedTensorImpl doesn't support sizes``,
    reading its shape): predict names the padding that makes it an input,
    whether it cuts it into chunks or the network's layer reads it."""
    net = bnn.VISequential(bnn.VILinear(4, 8), torch.nn.ReLU(), bnn.VILinear(8, 3))
    x = torch.randn(6, 4)
    x[x.abs() < 0.7] = 0.0

    def probs(inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        torch.manual_seed(3)
        return bnn.predict(net, inputs, bnn.Categorical(), samples=5, **kwargs).probs

    csc = x.to_sparse_csc()
    torch.testing.assert_close(probs(csc, batch_size=6), probs(x, batch_size=6))
    nested = torch.nested.nested_tensor([x[:2], x[2:]])
    padding = r"torch\.nested\.to_padded_tensor\(x, 0\.0\)"
    with pytest.raises(ValueError, match=rf"cannot cut a nested tensor.*{padding}"):
        probs(nested, batch_size=1)
    with pytest.raises(TypeError, match=rf"^VILinear takes .*nested.*{padding}"):
        probs(nested, batch_size=2)
