"""``predict`` on fixed weights: the posterior medians, or one draw kept for all chunks.

With the generated guide these run on the PyTorch-style path, with no Pyro
handler: Pyro's handler stack is one list for the whole process, so a
prediction that pushed handlers sent the network calls of other threads down
its Pyro path (crashes, or another network's outputs). The results are the
ones of the Pyro route they replace: the network's weight sites conditioned on
the same values under a trace.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoLowRankMultivariateNormal
from torch import Tensor, nn

import pyrolite_bnn as bnn
from pyrolite_bnn import vi
from pyrolite_bnn.distributions.variational import MeanFieldNormalPosterior

_ROWS = 8
_CHUNK = 3  # predict's batch_size: chunks of 3, 3 and 2 inputs


class _Subclassed(bnn.VIModule):
    """A ``VIModule`` subclass with a point-mass layer and plain layers."""

    def __init__(self) -> None:
        super().__init__()
        self.first = bnn.VILinear(3, 8)
        self.norm = nn.LayerNorm(8)
        self.point = bnn.VILinear(8, 8, variational=bnn.PointMass())
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.point(self.norm(self.first(x)))))


class _Recurrent(bnn.VIModule):
    """An LSTM and self-attention over its outputs, batch first."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = bnn.VILSTM(3, 6, batch_first=True)
        self.attention = bnn.VIMultiheadAttention(6, 2, batch_first=True)
        self.head = bnn.VILinear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        hidden, _ = self.lstm(x)
        attended, _ = self.attention(hidden, hidden, hidden)
        return self.head(attended[:, -1])


class _SequenceFirst(bnn.VIModule):
    """An LSTM on ``(L, B, ...)`` inputs: predict chunks along dimension 1."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = bnn.VILSTM(3, 5)
        self.head = bnn.VILinear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        hidden, _ = self.lstm(x)
        return self.head(hidden)


class _Torch(nn.Module):
    """A torch model for ``bnn.convert``: its class becomes a converted network."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 8)
        self.norm = nn.LayerNorm(8)
        self.outer = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(torch.tanh(self.norm(self.inner(x))))


class _Centred(nn.Module):
    """A module with a parameter whose forward mixes a batch's examples."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1, 8))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gain - x.mean(0)


class _TorchBlue(nn.Module):
    """For ``vi.convert_to_vimodule``: ``_Centred`` then runs per particle."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 8)
        self.centred = _Centred()
        self.outer = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(self.centred(torch.relu(self.inner(x))))


def _visequential() -> nn.Module:
    return bnn.VISequential(bnn.VILinear(3, 8), nn.ReLU(), bnn.VILinear(8, 2))


def _plain() -> nn.Module:
    return nn.Sequential(
        bnn.VILinear(3, 8), nn.ReLU(), nn.Linear(8, 8), bnn.VILinear(8, 2)
    )


def _converted() -> nn.Module:
    return bnn.convert(_Torch())


def _torch_blue() -> nn.Module:
    return vi.convert_to_vimodule(_TorchBlue())


# name -> (network factory, input shape): every network runs in eval mode.
_NETWORKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "visequential": (_visequential, (_ROWS, 3)),
    "plain": (_plain, (_ROWS, 3)),
    "subclass": (_Subclassed, (_ROWS, 3)),
    "converted": (_converted, (_ROWS, 3)),
    "torch_blue": (_torch_blue, (_ROWS, 3)),
    "lstm-attention": (_Recurrent, (_ROWS, 4, 3)),
    "sequence-first": (_SequenceFirst, (4, _ROWS, 3)),
}


def _network(name: str) -> tuple[nn.Module, Tensor, int]:
    """A trained-looking network (posterior scales widened), inputs, batch axis."""
    factory, shape = _NETWORKS[name]
    torch.manual_seed(0)
    net = factory().eval()
    with torch.no_grad():
        for parameter in net.parameters():  # move means off their initial values
            parameter.add_(0.1 * torch.randn_like(parameter))
    for module in net.modules():
        if isinstance(module, bnn.VIModule) and module.declared_variables():
            for posterior in module.posterior.values():
                if isinstance(posterior, MeanFieldNormalPosterior):
                    posterior.reset_parameters(posterior.loc.detach(), 0.1)
    axis = 1 if name == "sequence-first" else 0
    return net, torch.randn(shape), axis


def _guide(net: nn.Module) -> bnn.ParticleGuide:
    return net.guide if isinstance(net, bnn.VIModule) else bnn.ParticleGuide(net)


def _conditioned(
    net: nn.Module,
    x: Tensor,
    axis: int,
    values: dict[str, Tensor],
    samples: int,
    chunk: int,
) -> Tensor:
    """The network's outputs with its weight sites conditioned on ``values``.

    The Pyro route (``poutine.condition`` under ``poutine.trace``), chunk by
    chunk along ``axis`` as ``predict`` splits the inputs.
    """
    outputs = []
    for part in x.split(chunk, dim=axis):

        def call(part: Tensor = part) -> Any:
            if isinstance(net, bnn.VIModule):
                return net(part, samples=samples)
            net.samples = samples  # a plain network's particle count
            return net(part)

        with torch.no_grad(), poutine.trace():
            outputs.append(poutine.condition(call, data=values)())
    return torch.cat(outputs, dim=axis + 1)


@pytest.mark.parametrize("name", list(_NETWORKS))
@pytest.mark.parametrize("batch_size", [None, _CHUNK], ids=["whole", "chunked"])
def test_mean_mode_equals_the_conditioned_medians(
    name: str, batch_size: int | None
) -> None:
    net, x, axis = _network(name)
    medians = _guide(net).median()
    chunk = x.shape[axis] if batch_size is None else batch_size
    expected = _conditioned(net, x, axis, medians, 1, chunk)
    pred = bnn.predict(
        net, x, bnn.Normal(scale=1.0), mode="mean", batch_size=batch_size
    )
    torch.testing.assert_close(pred.samples, expected, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("name", list(_NETWORKS))
@pytest.mark.parametrize("batch_size", [None, _CHUNK], ids=["whole", "chunked"])
def test_sample_mode_equals_the_conditioned_guide_draws(
    name: str, batch_size: int | None
) -> None:
    """Chunked: one draw of all weights is kept for every chunk (it fits the
    default budget); whole: the network draws its weights in its one call."""
    net, x, axis = _network(name)
    pyro.set_rng_seed(3)
    trace = poutine.trace(_guide(net)).get_trace(samples=5)
    draws = {
        site: node["value"]
        for site, node in trace.nodes.items()
        if node["type"] == "sample" and site != "particles"
    }
    chunk = x.shape[axis] if batch_size is None else batch_size
    expected = _conditioned(net, x, axis, draws, 5, chunk)
    pyro.set_rng_seed(3)
    pred = bnn.predict(net, x, bnn.Normal(scale=1.0), samples=5, batch_size=batch_size)
    assert pred.samples.std(0).min() > 1e-3  # particles differ: the check has teeth
    torch.testing.assert_close(pred.samples, expected, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("name", ["visequential", "subclass", "converted"])
def test_mean_mode_equals_the_deterministic_network(name: str) -> None:
    """An independent route to the medians' outputs: a plain torch copy.

    Its ``nn.Linear`` adds the bias inside one fused product where the Bayesian
    layer adds it after the product: the two round differently (by up to 6e-8
    here), hence the tolerance.
    """
    net, x, _ = _network(name)
    expected = bnn.to_deterministic(net)(x)
    for batch_size in (None, _CHUNK):
        pred = bnn.predict(
            net, x, bnn.Normal(scale=1.0), mode="mean", batch_size=batch_size
        )
        torch.testing.assert_close(pred.samples[0], expected, rtol=0.0, atol=1e-6)


def _handler_depths(net: nn.Module) -> list[int]:
    """Depths of Pyro's handler stack seen by each Bayesian layer call of ``net``."""
    depths: list[int] = []
    for module in net.modules():
        if isinstance(module, bnn.VILinear):
            module.register_forward_pre_hook(
                lambda *_: depths.append(len(pyro.poutine.runtime._PYRO_STACK))
            )
    return depths


@pytest.mark.parametrize("name", ["visequential", "plain"])
def test_fixed_weights_of_the_generated_guide_push_no_pyro_handler(name: str) -> None:
    """Every handler on Pyro's one stack reaches all threads' network calls."""
    net, x, _ = _network(name)
    depths = _handler_depths(net)
    bnn.predict(net, x, bnn.Normal(scale=1.0), mode="mean")
    bnn.predict(net, x, bnn.Normal(scale=1.0), mode="mean", batch_size=_CHUNK)
    bnn.predict(net, x, bnn.Normal(scale=1.0), samples=4, batch_size=_CHUNK)
    assert depths
    assert set(depths) == {0}


def test_an_assigned_guide_keeps_the_pyro_path() -> None:
    """An autoguide is Pyro code: its medians and draws condition the sites."""
    net, x, _ = _network("visequential")
    net.guide = AutoLowRankMultivariateNormal(
        net.prior_model, init_loc_fn=net.init_loc_fn, rank=2, init_scale=0.1
    )
    depths = _handler_depths(net)
    medians = net.guide.median()
    pred = bnn.predict(net, x, bnn.Normal(scale=1.0), mode="mean", batch_size=_CHUNK)
    expected = _conditioned(net, x, 0, medians, 1, _CHUNK)
    torch.testing.assert_close(pred.samples, expected, rtol=0.0, atol=0.0)
    assert min(depths) > 0


@pytest.mark.parametrize("name", ["visequential", "plain"])
def test_threads_predicting_on_fixed_weights_get_their_own_networks(name: str) -> None:
    """Three threads predicting, two with one network and one with another, in
    mean mode and on one kept draw, both in chunks. Each gets its network's
    results: on Pyro's handler stack one thread's prediction ran the other
    threads' networks as conditioned Pyro models (nearly half the calls
    crashed, some returned another network's outputs)."""
    offsets = (0.0, 1000.0)  # the networks' outputs differ by ~1000
    nets = []
    for offset in offsets:
        net, x, _ = _network(name)
        last = [m for m in net.modules() if isinstance(m, bnn.VILinear)][-1]
        with torch.no_grad():
            last.posterior["bias"].loc.add_(offset)
        nets.append(net)
    likelihood = bnn.Normal(scale=1.0)
    # Budgets that chunk the inputs; the 4 draws of the weights (under 1000
    # bytes) are kept for all chunks.
    mean_mode: dict[str, Any] = {"mode": "mean", "memory_budget": 300}
    drawing: dict[str, Any] = {"samples": 4, "memory_budget": 2000}
    assert len(_chunk_sizes(nets[0], x, mean_mode)) > 2
    assert len(_chunk_sizes(nets[0], x, drawing)) > 2
    means = [bnn.predict(net, x, likelihood, **mean_mode).samples for net in nets]
    failures: list[str] = []
    calls = 80

    def predicting(index: int) -> None:
        net = nets[index]
        for _ in range(calls):
            try:
                mean = bnn.predict(net, x, likelihood, **mean_mode).samples
                drawn = bnn.predict(net, x, likelihood, **drawing).samples
            except Exception as error:  # reported below
                failures.append(f"{type(error).__name__}: {error}")
                continue
            if not torch.equal(mean, means[index]):
                failures.append(f"thread {index}: mean mode {mean.mean():.1f}")
            centre = drawn.mean().item()
            if drawn.shape != (4, _ROWS, 2) or abs(centre - offsets[index]) > 100:
                failures.append(f"thread {index}: samples {drawn.shape} {centre:.1f}")

    threads = [threading.Thread(target=predicting, args=(i,)) for i in (0, 1, 0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, f"{len(failures)} of {6 * calls} calls: {failures[:3]}"


def _chunk_sizes(net: nn.Module, x: Tensor, options: dict[str, Any]) -> list[int]:
    """Input counts of the calls of one prediction (probe included)."""
    sizes: list[int] = []
    handle = net.register_forward_pre_hook(lambda _, args: sizes.append(len(args[0])))
    try:
        bnn.predict(net, x, bnn.Normal(scale=1.0), **options)
    finally:
        handle.remove()
    return sizes


@pytest.mark.parametrize("how", ["mean", "sample", "kept"])
def test_plain_module_around_a_network_with_an_assigned_guide(how: str) -> None:
    """``nn.Sequential(net, ...)`` around a network with an autoguide: the
    network runs as its own, with its guide. ``predict`` on the wrapper took
    the medians of the layers' untrained posteriors (``mode="mean"``, 0.02
    off), and ran the network's default 10 particles instead of ``samples``
    (sample mode, 0.07 off): it now equals ``predict`` on the network."""
    from pyro.infer.autoguide import AutoNormal

    torch.manual_seed(0)
    net = bnn.VISequential(bnn.VILinear(2, 4), nn.Tanh(), bnn.VILinear(4, 2))
    net.guide = AutoNormal(net.prior_model, init_loc_fn=net.init_loc_fn)
    with torch.no_grad():  # the guide away from the layers' own posteriors
        for parameter in net.guide.parameters():
            parameter.add_(torch.randn_like(parameter))
    wrapper = nn.Sequential(net, nn.Identity())
    x = torch.randn(5, 2)
    options: dict[str, Any] = {"samples": 3}
    if how == "mean":
        options["mode"] = "mean"
    if how == "kept":
        options["memory_budget"] = 3000  # chunks on one kept draw
    probs = []
    for model in (net, wrapper):
        torch.manual_seed(1)
        probs.append(bnn.predict(model, x, bnn.Categorical(), **options).samples)
    assert probs[1].shape == probs[0].shape
    torch.testing.assert_close(probs[1], probs[0], rtol=0, atol=1e-6)
