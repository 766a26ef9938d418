"""Particle-aware batch norm: each particle is normalised over its own examples.

The reference throughout is torch's class run on one particle's ``B`` rows at a
time (``S`` separate deterministic networks); the library's folded input is
read with a forward pre-hook (row ``b * S + s`` is example ``b`` of particle
``s``). Tolerances: 1e-5 (float32 rounding of a normalisation over at most a
few hundred values).
"""

from __future__ import annotations

import copy
import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.module import register_module_forward_pre_hook

import pyrolite_bnn as bnn
from pyrolite_bnn import _particles
from pyrolite_bnn.layers.batchnorm import batch_norm, warn_plain_batch_norm

TOL = {"atol": 1e-5, "rtol": 1e-5}
TORCH = {
    bnn.BatchNorm1d: nn.BatchNorm1d,
    bnn.BatchNorm2d: nn.BatchNorm2d,
    bnn.BatchNorm3d: nn.BatchNorm3d,
}


def _randomise(norm: _BatchNorm) -> _BatchNorm:
    """Non-default parameters and running statistics, so that all of them count."""
    with torch.no_grad():
        if norm.weight is not None:
            norm.weight.uniform_(0.5, 1.5)
        if norm.bias is not None:
            norm.bias.uniform_(-0.5, 0.5)
        if norm.running_mean is not None and norm.running_var is not None:
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 1.5)
    return norm


def _torch_twin(norm: _BatchNorm) -> _BatchNorm:
    """torch's class with ``norm``'s arguments, state and mode."""
    twin = TORCH[type(norm)](
        norm.num_features,
        norm.eps,
        norm.momentum,
        norm.affine,
        norm.track_running_stats,
    )
    twin.load_state_dict(norm.state_dict())
    return twin.train(norm.training)


@contextmanager
def _folded_inputs(norm: nn.Module) -> Iterator[list[Tensor]]:
    """The inputs ``norm`` gets, each made a leaf that requires grad."""
    seen: list[Tensor] = []

    def keep(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        leaf = args[0].detach().requires_grad_()
        seen.append(leaf)
        return (leaf, *args[1:])

    handle = norm.register_forward_pre_hook(keep)
    try:
        yield seen
    finally:
        handle.remove()


def _per_particle(folded: Tensor, samples: int) -> list[Tensor]:
    """Particle ``s``'s ``B`` rows of a folded ``(B * S, ...)`` tensor."""
    by_particle = folded.reshape(-1, samples, *folded.shape[1:])
    return [by_particle[:, s] for s in range(samples)]


def _check_against_torch(
    net: nn.Module, norm: _BatchNorm, x: Tensor, particles: int, **call: Any
) -> None:
    """Outputs, running statistics and gradients equal ``S`` torch copies' own."""
    samples = particles
    twins = [_torch_twin(norm) for _ in range(samples)]
    with _folded_inputs(norm) as seen:
        out = net(x, **call)
    assert out.shape[0] == samples
    (folded,) = seen
    assert folded.shape[0] == x.shape[0] * samples  # the input was folded
    # The norm is the network's last module: its output is the network's.
    rows_of = _per_particle(folded.detach(), samples)
    for s, (rows, twin) in enumerate(zip(rows_of, twins, strict=True)):
        torch.testing.assert_close(out[s], twin(rows), **TOL)
    # Gradients, against torch copies that share one set of parameters.
    cotangent = torch.randn_like(out)
    (out * cotangent).sum().backward()
    shared = _torch_twin(norm)
    leaves = [rows.clone().requires_grad_() for rows in rows_of]
    loss = torch.stack(
        [(shared(rows) * cotangent[s]).sum() for s, rows in enumerate(leaves)]
    ).sum()
    loss.backward()
    assert folded.grad is not None
    for s, leaf in enumerate(leaves):
        torch.testing.assert_close(
            _per_particle(folded.grad, samples)[s], leaf.grad, **TOL
        )
    if norm.affine:
        torch.testing.assert_close(norm.weight.grad, shared.weight.grad, **TOL)
        torch.testing.assert_close(norm.bias.grad, shared.bias.grad, **TOL)
    # Running statistics: the average of the S torch copies' own updates.
    if norm.track_running_stats and norm.training:
        for name in ("running_mean", "running_var"):
            averaged = torch.stack([getattr(t, name) for t in twins]).mean(0)
            torch.testing.assert_close(getattr(norm, name), averaged, **TOL)
        assert int(norm.num_batches_tracked) == int(twins[0].num_batches_tracked)


def test_each_particle_normalised_over_its_own_examples() -> None:
    norm = _randomise(bnn.BatchNorm1d(5, momentum=0.3))
    net = bnn.VISequential(bnn.VILinear(3, 5), norm)
    _check_against_torch(net, norm, torch.randn(6, 3), 4, samples=4)


def test_conv_2d_case() -> None:
    norm = _randomise(bnn.BatchNorm2d(3))
    net = bnn.VISequential(bnn.VIConv2d(2, 3, 3, padding=1), norm)
    _check_against_torch(net, norm, torch.randn(4, 2, 5, 5), 3, samples=3)


def test_3d_case_without_affine() -> None:
    norm = _randomise(bnn.BatchNorm3d(2, affine=False))
    net = bnn.VISequential(bnn.VIConv3d(1, 2, 1), norm)
    _check_against_torch(net, norm, torch.randn(3, 1, 2, 3, 3), 2, samples=2)


def test_inside_a_plain_sequential_of_bayesian_layers() -> None:
    norm = _randomise(bnn.BatchNorm1d(5))
    plain = nn.Sequential(bnn.VILinear(3, 5), bnn.VILinear(5, 5), norm)
    plain.samples = 3  # read by the plain root (no samples= on a plain module)
    _check_against_torch(plain, norm, torch.randn(4, 3), 3)


def test_without_running_statistics_in_both_modes() -> None:
    norm = _randomise(bnn.BatchNorm1d(5, track_running_stats=False))
    assert norm.running_mean is None
    net = bnn.VISequential(bnn.VILinear(3, 5), norm)
    _check_against_torch(net, norm, torch.randn(5, 3), 3, samples=3)
    net.eval()  # still batch statistics, per particle
    norm.weight.grad = norm.bias.grad = None
    _check_against_torch(net, norm, torch.randn(5, 3), 3, samples=3)


def test_running_statistics_after_one_step_exact_formula() -> None:
    """running = (1 - m) running + m * (mean over particles of their statistics)."""
    m, samples, batch = 0.25, 5, 4
    norm = _randomise(bnn.BatchNorm2d(3, momentum=m))
    mean0, var0 = norm.running_mean.clone(), norm.running_var.clone()
    net = bnn.VISequential(bnn.VIConv2d(2, 3, 1), norm)
    with _folded_inputs(norm) as seen:
        net(torch.randn(batch, 2, 3, 2), samples=samples)
    by_particle = seen[0].detach().reshape(batch, samples, 3, 3, 2)
    values = by_particle.permute(1, 2, 0, 3, 4).reshape(samples, 3, -1)  # n = B*H*W
    mean = values.mean(-1).mean(0)
    var = values.var(-1, unbiased=True).mean(0)
    torch.testing.assert_close(norm.running_mean, (1 - m) * mean0 + m * mean, **TOL)
    torch.testing.assert_close(norm.running_var, (1 - m) * var0 + m * var, **TOL)
    assert int(norm.num_batches_tracked) == 1


def test_cumulative_average_with_momentum_none() -> None:
    """momentum=None: the running statistics are the average of all steps so far."""
    samples, batch = 3, 4
    norm = bnn.BatchNorm1d(4, momentum=None)
    net = bnn.VISequential(bnn.VILinear(2, 4), norm)
    with _folded_inputs(norm) as seen:
        for _ in range(3):
            net(torch.randn(batch, 2), samples=samples)
    assert int(norm.num_batches_tracked) == 3
    steps = [torch.stack(_per_particle(h.detach(), samples)) for h in seen]
    means = torch.stack([step.mean(1).mean(0) for step in steps])
    variances = torch.stack([step.var(1).mean(0) for step in steps])
    torch.testing.assert_close(norm.running_mean, means.mean(0), **TOL)
    torch.testing.assert_close(norm.running_var, variances.mean(0), **TOL)


def test_running_variance_unbiased_at_batch_two() -> None:
    """With a narrow posterior the particles are near copies of one network.

    torch's class over the ``B * S`` rows gives ``running_var`` low by
    ``(B - 1) / B * B S / (B S - 1) = 0.53`` at ``B = 2``, ``S = 10``; per
    particle it is the deterministic network's (posterior sd 1e-6: 1e-3 is
    far above the difference and far below the bias). Evaluation then matches
    the deterministic network too.
    """
    narrow = bnn.MeanFieldNormal(init_scale=1e-6)
    net = bnn.VISequential(
        bnn.VILinear(3, 5, variational=narrow),
        bnn.BatchNorm1d(5, momentum=1.0),
        nn.ReLU(),
        bnn.VILinear(5, 2, variational=narrow),
    )
    plain = bnn.to_deterministic(net)
    x = torch.randn(2, 3)
    net(x, samples=10)
    plain(x)
    ratio = net[1].running_var / plain[1].running_var
    torch.testing.assert_close(ratio, torch.ones(5), atol=1e-3, rtol=0)
    net.eval()
    plain.eval()
    with torch.no_grad():
        mean_output = net(x, samples=10).mean(0)
        torch.testing.assert_close(mean_output, plain(x), atol=1e-3, rtol=0)


def test_functional_with_a_hand_folded_input() -> None:
    samples, batch = 3, 5
    particles = [torch.randn(batch, 4, 6) * (s + 1) + s for s in range(samples)]
    folded = torch.stack(particles, 1).reshape(batch * samples, 4, 6)
    weight, bias = torch.rand(4) + 0.5, torch.randn(4)
    running_mean, running_var = torch.zeros(4), torch.ones(4)
    out = batch_norm(
        folded, running_mean, running_var, weight, bias, True, 0.5, samples=samples
    )
    mean_updates, var_updates = [], []
    for s, rows in enumerate(particles):
        rm, rv = torch.zeros(4), torch.ones(4)
        expected = F.batch_norm(rows, rm, rv, weight, bias, True, 0.5)
        torch.testing.assert_close(_per_particle(out, samples)[s], expected, **TOL)
        mean_updates.append(rm)
        var_updates.append(rv)
    torch.testing.assert_close(running_mean, torch.stack(mean_updates).mean(0))
    torch.testing.assert_close(running_var, torch.stack(var_updates).mean(0))


def test_eval_mode_equals_torch_and_keeps_the_statistics() -> None:
    norm = _randomise(bnn.BatchNorm2d(3))
    net = bnn.VISequential(bnn.VIConv2d(2, 3, 3), norm).eval()
    before = copy.deepcopy(norm.state_dict())
    with _folded_inputs(norm) as seen:
        out = net(torch.randn(4, 2, 5, 5), samples=3)
    twin = _torch_twin(norm)
    for s, rows in enumerate(_per_particle(seen[0].detach(), 3)):
        torch.testing.assert_close(out[s], twin(rows), **TOL)
    for key, value in norm.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=0, rtol=0)


@pytest.mark.parametrize("cls", [bnn.BatchNorm1d, bnn.BatchNorm2d, bnn.BatchNorm3d])
def test_outside_a_network_and_with_one_particle_it_is_torch(cls: type) -> None:
    shapes = {bnn.BatchNorm1d: (6, 3, 4), bnn.BatchNorm2d: (6, 3, 2, 2)}
    x = torch.randn(shapes.get(cls, (6, 3, 2, 2, 2)))
    norm = _randomise(cls(3, momentum=None))
    twin = _torch_twin(norm)
    for train in (True, False):
        norm.train(train)
        twin.train(train)
        torch.testing.assert_close(norm(x), twin(x), atol=0, rtol=0)
    norm.train()
    twin.train()
    net = bnn.VISequential(norm)  # no random variables: one particle
    torch.testing.assert_close(net(x, samples=1)[0], twin(x), atol=0, rtol=0)
    for key, value in twin.state_dict().items():
        torch.testing.assert_close(norm.state_dict()[key], value, atol=0, rtol=0)


def test_input_shared_by_all_particles_is_one_batch() -> None:
    """Before any Bayesian layer, every particle sees the same ``B`` rows."""
    norm = _randomise(bnn.BatchNorm1d(3))
    twin = _torch_twin(norm)
    outputs: list[Tensor] = []
    norm.register_forward_hook(lambda m, a, out: outputs.append(out))
    net = bnn.VISequential(norm, bnn.VILinear(3, 2))
    x = torch.randn(5, 3)
    net(x, samples=4)
    torch.testing.assert_close(outputs[0], twin(x), **TOL)
    torch.testing.assert_close(norm.running_var, twin.running_var, **TOL)


def test_one_example_per_particle_refused_in_training() -> None:
    net = bnn.VISequential(bnn.VILinear(3, 4), bnn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="each of the 3 particles is normalised"):
        net(torch.randn(1, 3), samples=3)


@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("first", [False, True], ids=["folded", "shared input"])
def test_a_batch_of_one_names_drop_last_and_is_not_counted(
    samples: int, first: bool
) -> None:
    """A batch of one example in training is usually a DataLoader's last batch:
    the error names drop_last=True (torch's, with one particle or an input
    shared by the particles, did not), and it comes before the batch is
    counted (torch's class counts it, then raises)."""
    layers = [bnn.BatchNorm1d(4), bnn.VILinear(4, 4)]
    net = bnn.VISequential(*(layers if first else [bnn.VILinear(4, 4), *layers]))
    norm = layers[0]
    with pytest.raises(
        ValueError, match=r"Expected more than 1 value per channel.*drop_last=True"
    ):
        net(torch.randn(1, 4), samples=samples)
    assert int(norm.num_batches_tracked) == 0
    with pytest.raises(ValueError, match="drop_last=True"):
        batch_norm(torch.randn(samples, 4), None, None, training=True, samples=samples)
    net(torch.randn(2, 4), samples=samples)  # two examples: fine
    net.eval()
    net(torch.randn(1, 4), samples=samples)  # running statistics: fine


def test_state_dict_and_class_are_torch() -> None:
    for ours, theirs in TORCH.items():
        torch_norm = _randomise(theirs(4, momentum=0.2))
        torch_norm.num_batches_tracked.fill_(7)
        norm = ours(4, momentum=0.2)
        assert isinstance(norm, theirs)
        assert repr(norm) == repr(torch_norm)
        norm.load_state_dict(torch_norm.state_dict())
        assert norm.state_dict().keys() == torch_norm.state_dict().keys()
        back = theirs(4, momentum=0.2)
        back.load_state_dict(norm.state_dict())
        for key, value in torch_norm.state_dict().items():
            torch.testing.assert_close(back.state_dict()[key], value, atol=0, rtol=0)


def test_survives_a_loss_step_and_predict() -> None:
    net = bnn.VISequential(
        bnn.VILinear(3, 8), bnn.BatchNorm1d(8), nn.ReLU(), bnn.VILinear(8, 2)
    )
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=20)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1])
    loss = loss_fn(net(x, samples=3), y)
    optimizer.zero_grad()
    loss.backward()
    assert net[1].weight.grad is not None
    optimizer.step()
    prediction = bnn.predict(net.eval(), x, bnn.Categorical(), samples=4)
    assert prediction.probs.shape == (6, 2)


# ---------------------------------------------------------------- bnn.convert


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
        self.norm = nn.BatchNorm1d(4, momentum=None)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.head(torch.relu(self.body(x))))


def test_convert_makes_torch_batch_norms_particle_aware() -> None:
    model = _ConvNet()
    _randomise(model.body[1])
    _randomise(model.norm).num_batches_tracked.fill_(3)
    model.body[1].eval()
    hooked: list[Tensor] = []
    model.norm.register_forward_hook(lambda m, a, out: hooked.append(out))
    net = bnn.convert(model)
    assert type(net.body[1]) is bnn.BatchNorm2d
    assert type(net.norm) is bnn.BatchNorm1d
    assert type(model.body[1]) is nn.BatchNorm2d  # the model is left untouched
    assert not net.body[1].training  # modes, state and hooks go with it
    assert net.norm.momentum is None
    for key, value in model.state_dict().items():
        if "norm" in key or key.startswith("body.1"):
            torch.testing.assert_close(net.state_dict()[key], value, atol=0, rtol=0)
    net(torch.randn(2, 2, 4, 4), samples=2)
    assert len(hooked) == 1
    _check_against_torch(net, net.norm, torch.randn(5, 2, 4, 4), 3, samples=3)
    # exclude= with the norm's own path or type keeps torch's class.
    kept = bnn.convert(model, exclude=["norm", nn.BatchNorm2d])
    assert type(kept.norm) is nn.BatchNorm1d
    assert type(kept.body[1]) is nn.BatchNorm2d
    assert type(bnn.convert(model, exclude=["body"]).body[1]) is bnn.BatchNorm2d


def test_convert_leaves_other_batch_norm_classes() -> None:
    class OwnForward(nn.BatchNorm1d):
        def forward(self, input: Tensor) -> Tensor:
            return super().forward(input) * 2

    model = nn.Sequential(
        nn.Linear(3, 4), OwnForward(4), nn.LazyBatchNorm1d(), nn.Linear(4, 2)
    )
    model(torch.randn(2, 3))  # a lazy norm that has run is torch's BatchNorm1d
    net = bnn.convert(model)
    assert type(net[1]) is OwnForward
    assert type(net[2]) is bnn.BatchNorm1d


def test_converted_model_mean_prediction_equals_the_model() -> None:
    model = _ConvNet()
    _randomise(model.body[1])
    _randomise(model.norm)
    model.eval()
    x = torch.randn(3, 2, 4, 4)
    net = bnn.convert(model)
    prediction = bnn.predict(net.eval(), x, bnn.Normal(1.0), samples=1, mode="mean")
    torch.testing.assert_close(prediction.samples[0], model(x), **TOL)


# ------------------------------------------------------ torch's batch norm, warned


def _state(samples: int = 3, batch: int = 4) -> _particles.ParticleState:
    """A network's state after its first Bayesian layer read its input."""
    state = _particles.ParticleState(samples, batch)
    state.classified[0] = True
    return state


def test_warning_for_a_torch_batch_norm_on_folded_rows() -> None:
    norm, folded = nn.BatchNorm2d(3), torch.randn(12, 3, 2, 2)
    with pytest.warns(UserWarning, match=r"normalises over all 12 folded rows.*"):
        warn_plain_batch_norm(norm, (folded,), _state())
    with pytest.warns(UserWarning, match=r"Use bnn\.BatchNorm2d"):
        warn_plain_batch_norm(nn.BatchNorm2d(3), (folded,), _state())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_plain_batch_norm(norm, (folded,), _state())  # once per module
        for quiet, rows, state in [
            (bnn.BatchNorm2d(3), 12, _state()),  # the library's
            (nn.BatchNorm2d(3), 4, _state()),  # shared (B, ...) input
            (nn.BatchNorm2d(3), 12, _state(samples=1, batch=12)),
            (nn.BatchNorm2d(3).eval(), 12, _state()),  # running statistics
            (nn.LayerNorm(2), 12, _state()),
        ]:
            warn_plain_batch_norm(quiet, (torch.randn(rows, 3, 2, 2),), state)


@contextmanager
def _plain_batch_norm_hook() -> Iterator[None]:
    """The check as the network's global pre-hook would run it (see the report)."""

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        state = _particles.current()
        if state is not None:
            warn_plain_batch_norm(module, args, state)

    handle = register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _net_with_torch_norm() -> bnn.VISequential:
    return bnn.VISequential(
        bnn.VILinear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), bnn.VILinear(4, 2)
    )


def test_warning_inside_a_running_network() -> None:
    net = _net_with_torch_norm()
    with _plain_batch_norm_hook():
        with pytest.warns(UserWarning, match=r"BatchNorm1d \('1'\).*bnn.BatchNorm1d"):
            net(torch.randn(5, 3), samples=3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            net(torch.randn(5, 3), samples=3)  # once per module
            _net_with_torch_norm()(torch.randn(5, 3), samples=1)
            _net_with_torch_norm().eval()(torch.randn(5, 3), samples=3)
            bnn.convert(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))(
                torch.randn(5, 3), samples=3
            )


def test_warning_wired_into_the_network_calls() -> None:
    with pytest.warns(UserWarning, match="bnn.BatchNorm1d") as caught:
        _net_with_torch_norm()(torch.randn(5, 3), samples=3)
    assert caught[0].filename == __file__  # the user's line, not the library's


@inductor_config.patch(fallback_random=True)
def test_compiled_loss_follows_a_momentum_change() -> None:
    def run(compile: bool) -> Tensor:
        torch.manual_seed(0)
        model = bnn.VISequential(bnn.VILinear(3, 4), bnn.BatchNorm1d(4))
        loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(1.0), 200, compile=compile)
        x, y = torch.randn(6, 3), torch.randn(6, 4)
        for call in range(3):
            model[1].momentum = 0.1 if call < 2 else 0.9
            torch.manual_seed(10 + call)
            loss_fn.model_loss(model, x, y, samples=2)
        return model[1].running_mean.clone()

    torch.testing.assert_close(run(True), run(False), **TOL)


def test_to_deterministic_gives_torchs_batch_norm_back() -> None:
    """The deterministic network needs no pyrolite_bnn: its batch norms are
    torch's classes again, with the same state (and it pickles as such)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)
    )
    model(torch.randn(5, 1, 4, 4))  # running statistics away from their start
    model.eval()
    net = bnn.convert(model)
    assert type(net[1]) is bnn.BatchNorm2d
    plain = bnn.to_deterministic(net)
    assert type(plain[1]) is nn.BatchNorm2d
    assert type(net[1]) is bnn.BatchNorm2d  # the network itself is unchanged
    x = torch.randn(3, 1, 4, 4)
    torch.testing.assert_close(plain(x), model(x), **TOL)
    assert b"pyrolite_bnn" not in pickle.dumps(plain[1])


class _PositionsInBatch(bnn.VIModule):
    """A sequence activation (B*S, L, C) normalised as (B*S*L, C) rows."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.linear = bnn.VILinear(3, 4)
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear(x)
        return self.norm(h.reshape(-1, 4)).reshape(h.shape)


def test_positions_moved_into_the_batch_are_refused() -> None:
    """Rows r of (B*S*L, C) are not particle r % S: grouping them so mixed the
    particles under the generic folded-size warning."""
    x = torch.randn(5, 2, 3)  # B = 5, L = 2: 5 * 3 * 2 = 30 rows, a multiple of S
    with pytest.raises(ValueError, match=r"bn\(h\.transpose\(1, 2\)\)"):
        _PositionsInBatch(bnn.BatchNorm1d(4))(x, samples=3)
    with pytest.warns(UserWarning, match="normalises over all 30 folded rows"):
        _PositionsInBatch(nn.BatchNorm1d(4))(x, samples=3)


@pytest.mark.parametrize(
    ("samples", "error", "message"),
    [
        (0, ValueError, r"samples must be an integer >= 1, got 0"),
        (-2, ValueError, r"samples must be an integer >= 1, got -2"),
        (2.5, TypeError, r"samples must be an integer >= 1, got 2\.5"),
    ],
)
def test_functional_batch_norm_refuses_a_bad_particle_count(
    samples: object, error: type[Exception], message: str
) -> None:
    """samples=0 divided by zero; -2 made torch name a shape of -4 rows."""
    with pytest.raises(error, match=message):
        batch_norm(torch.randn(8, 3), None, None, training=True, samples=samples)  # type: ignore[arg-type]


@pytest.mark.parametrize("estimator", ["auto", "local", "flipout"])
def test_layers_before_batch_statistics_draw_whole_weights(estimator: str) -> None:
    """Output moments give each example its own weights: wrong under batch norm.

    A batch of copies of one example has, per particle, identical
    pre-activations when the weights are drawn, so training-mode batch norm
    maps them to exactly its shift. Output moments (local reparameterisation,
    flipout) gave each copy independent noise: a 5 % biased loss and gradients
    off by 30-46 % (a hand Monte Carlo of S separate networks as reference).
    """
    torch.manual_seed(0)
    variational = bnn.MeanFieldNormal(init_scale=0.5)
    for root in (nn.Sequential, bnn.VISequential):
        net = root(
            bnn.VILinear(3, 4, variational=variational, estimator=estimator),
            bnn.BatchNorm1d(4),
        )
        copies = torch.randn(1, 3).expand(8, 3)
        out = net(copies, samples=5) if root is bnn.VISequential else net(copies)
        # Exactly 0 up to the batch mean's rounding, which batch norm divides
        # by sqrt(eps) ~ 3e-3 (1e-4 on one thread).
        torch.testing.assert_close(out, torch.zeros_like(out), atol=1e-3, rtol=0)
        # Running statistics in evaluation mode: examples are independent again,
        # and the layer may sample its outputs from the moments.
        net.eval()
        out = net(copies, samples=5) if root is bnn.VISequential else net(copies)
        assert float(out.detach().std(dim=1).min()) > 1e-3


@pytest.mark.parametrize("track_running_stats", [True, False])
def test_wrong_num_features_names_the_users_sizes(track_running_stats: bool) -> None:
    """BatchNorm1d(3) after VILinear(3, 4) said "running_mean should contain 40
    elements not 30" in training: the user's 4 and 3 times the 10 particles."""
    net = bnn.VISequential(
        bnn.VILinear(3, 4),
        bnn.BatchNorm1d(3, track_running_stats=track_running_stats),
    )
    name = "running_mean" if track_running_stats else "weight"
    with pytest.raises(
        RuntimeError,
        match=rf"^{name} should contain 4 elements not 3: the input has 4 channels "
        r".*num_features=3$",
    ):
        net(torch.randn(5, 3), samples=10)
    # Evaluation with running statistics is torch's own message, the same sizes.
    if track_running_stats:
        with pytest.raises(RuntimeError, match="should contain 4 elements not 3"):
            net.eval()(torch.randn(5, 3), samples=10)
