"""Networks of any shape: plain torch containers, shared layers, the loss's record.

Each test here reproduces a silently wrong result of an earlier version.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import weakref
from collections.abc import Callable
from typing import Any

import pyro
import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO, TraceMeanField_ELBO
from torch import nn
from torch.distributions import kl_divergence
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

import pyrolite_bnn as bnn
from pyrolite_bnn._draws import called_repeatedly
from pyrolite_bnn._network import collect_variables

N = 100


def _closed_form_kl(network: nn.Module) -> torch.Tensor:
    """KL(q || N(0, 1)) of every variable of ``network``, counted once each."""
    total = torch.zeros(())
    for v in collect_variables(network):
        post = v.posterior
        q = torch.distributions.Normal(post.mean(), post.distribution().base_dist.scale)
        total = total + kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum()
    return total.detach()


def _linear(i: int, o: int) -> bnn.VILinear:
    return bnn.VILinear(i, o, estimator="reparam")


class _ListNet(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_linear(3, 6), _linear(6, 4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](torch.tanh(self.layers[0](x)))


class _DictNet(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.parts = nn.ModuleDict({"a": _linear(3, 6), "b": _linear(6, 4)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts["b"](torch.tanh(self.parts["a"](x)))


class _Block(nn.Module):  # a plain module holding Bayesian layers
    def __init__(self) -> None:
        super().__init__()
        self.inner = _linear(3, 6)
        self.outer = _linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(torch.tanh(self.inner(x)))


class _PlainModuleNet(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.block = _Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _SequentialNet(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(_linear(3, 6), nn.Tanh(), _linear(6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


NETWORKS: dict[str, tuple[Callable[[], nn.Module], list[str]]] = {
    "ModuleList": (_ListNet, ["layers.0.weight", "layers.1.weight"]),
    "ModuleDict": (_DictNet, ["parts.a.weight", "parts.b.weight"]),
    "plain module": (_PlainModuleNet, ["block.inner.weight", "block.outer.weight"]),
    "nn.Sequential inside": (_SequentialNet, ["seq.0.weight", "seq.2.weight"]),
    "nn.Sequential root": (
        lambda: nn.Sequential(_linear(3, 6), nn.Tanh(), _linear(6, 4)),
        ["0.weight", "2.weight"],
    ),
    "plain module root": (_Block, ["inner.weight", "outer.weight"]),
}


@pytest.fixture(params=list(NETWORKS))
def network(request: pytest.FixtureRequest) -> tuple[nn.Module, list[str]]:
    build, weights = NETWORKS[request.param]
    return build(), weights


def test_site_names_are_module_paths(network: tuple[nn.Module, list[str]]) -> None:
    net, weights = network
    sites = [v.site for v in collect_variables(net)]
    assert [s for s in sites if s.endswith("weight")] == weights
    assert len(sites) == 4  # two weights and two biases


def test_one_particle_plate_and_every_kl_term(
    network: tuple[nn.Module, list[str]],
) -> None:
    net, _ = network
    x, y = torch.randn(8, 3), torch.randint(0, 4, (8,))
    out = net(x)
    assert out.shape == (10, 8, 4)  # not nested (10, 10, 8, 4)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, kl="analytic")
    loss_fn(out, y)
    torch.testing.assert_close(
        loss_fn.last_kl * N, _closed_form_kl(net), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize(
    ("kl", "elbo"), [("mc", Trace_ELBO()), ("analytic", TraceMeanField_ELBO())]
)
def test_loss_equals_pyro_elbo(
    network: tuple[nn.Module, list[str]], kl: str, elbo: pyro.infer.ELBO
) -> None:
    net, _ = network
    guide = net.guide if isinstance(net, bnn.VIModule) else bnn.ParticleGuide(net)
    x, y = torch.randn(8, 3), torch.randint(0, 4, (8,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, kl=kl)  # type: ignore[arg-type]
    net.samples = 4  # type: ignore[assignment]  # plain roots read it too
    pyro.set_rng_seed(1)
    ours = loss_fn(net(x), y)
    pyro.set_rng_seed(1)
    model = loss_fn.pyro_model(net)
    theirs = elbo.differentiable_loss(model, guide, x, y) / N
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_svi_and_predictive_run(network: tuple[nn.Module, list[str]]) -> None:
    net, _ = network
    guide = net.guide if isinstance(net, bnn.VIModule) else bnn.ParticleGuide(net)
    x, y = torch.randn(8, 3), torch.randint(0, 4, (8,))
    model = bnn.KullbackLeiblerLoss(bnn.Categorical(), N).pyro_model(net)
    before = [p.detach().clone() for p in net.parameters()]
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(3):
        assert torch.isfinite(torch.tensor(svi.step(x, y, samples=2)))
    assert all(
        not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True)
    )
    draws = Predictive(model, guide=guide, num_samples=3)(x, samples=2)
    assert draws["obs"].shape == (3, 2, 8)


def test_plain_root_samples_attribute() -> None:
    net = nn.Sequential(bnn.VILinear(3, 6), nn.ReLU(), bnn.VILinear(6, 2))
    net.samples = 3  # type: ignore[assignment]
    assert net(torch.randn(5, 3)).shape == (3, 5, 2)


def test_samples_given_to_a_layer_inside_a_plain_root_is_refused() -> None:
    class Root(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = bnn.VILinear(3, 3), bnn.VILinear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x, samples=4))

    with pytest.raises(ValueError, match=r"set Root\.samples"):
        Root()(torch.randn(2, 3))


def test_plain_root_frame_closes_after_an_error() -> None:
    net = nn.Sequential(bnn.VILinear(3, 6), nn.ReLU(), bnn.VILinear(5, 2))
    with pytest.raises(ValueError, match="in_features=5"):
        net(torch.randn(4, 3))
    # Nothing left open: a fresh network runs normally afterwards.
    assert bnn.VILinear(3, 2)(torch.randn(4, 3)).shape == (10, 4, 2)
    good = nn.Sequential(bnn.VILinear(3, 6), nn.ReLU(), bnn.VILinear(6, 2))
    assert good(torch.randn(4, 3)).shape == (10, 4, 2)


def test_plain_wrapper_around_one_network_counts_every_kl_term() -> None:
    inner = bnn.VISequential(bnn.VILinear(3, 4), nn.ReLU(), bnn.VILinear(4, 2))

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x) * 2.0

    out = Wrapper()(torch.randn(5, 3))
    assert out.shape == (10, 5, 2)
    assert next(v.site for v in inner.random_variables()) == "0.weight"
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, kl="analytic")
    loss_fn(out, torch.randint(0, 2, (5,)))
    torch.testing.assert_close(
        loss_fn.last_kl * N, _closed_form_kl(inner), rtol=1e-5, atol=1e-4
    )


# ------------------------------------------------------------------ shared layers
def _shared_network(root: str) -> tuple[nn.Module, bnn.VILinear]:
    shared = bnn.VILinear(4, 4)  # default estimator: must still draw weights
    head = bnn.VILinear(4, 2, estimator="reparam")
    layers = (shared, nn.Tanh(), shared, nn.Tanh(), head)
    net = bnn.VISequential(*layers) if root == "bnn" else nn.Sequential(*layers)
    return net, shared


@pytest.mark.parametrize("root", ["bnn", "torch"])
def test_shared_layer_counts_its_kl_once(root: str) -> None:
    net, _ = _shared_network(root)
    sites = [v.site for v in collect_variables(net)]
    assert sites == ["0.weight", "0.bias", "4.weight", "4.bias"]
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, kl="analytic")
    loss_fn(net(x), y)
    torch.testing.assert_close(
        loss_fn.last_kl * N, _closed_form_kl(net), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("root", ["bnn", "torch"])
@pytest.mark.parametrize(
    ("kl", "elbo"), [("mc", Trace_ELBO()), ("analytic", TraceMeanField_ELBO())]
)
def test_shared_layer_loss_equals_pyro_elbo(
    root: str, kl: str, elbo: pyro.infer.ELBO
) -> None:
    net, _ = _shared_network(root)
    guide = net.guide if isinstance(net, bnn.VIModule) else bnn.ParticleGuide(net)
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, kl=kl)  # type: ignore[arg-type]
    pyro.set_rng_seed(2)
    ours = loss_fn(net(x), y)
    pyro.set_rng_seed(2)
    theirs = elbo.differentiable_loss(loss_fn.pyro_model(net), guide, x, y) / N
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_shared_layer_uses_the_same_weights_at_both_positions() -> None:
    shared = bnn.VILinear(3, 3, bias=False)  # default estimator
    net = bnn.VISequential(shared, shared)
    x = torch.randn(5, 3)
    trace = pyro.poutine.trace(net.guide).get_trace(samples=4)
    weight = trace.nodes["0.weight"]["value"].reshape(4, 3, 3)
    out = pyro.poutine.replay(net, trace=trace)
    with pyro.poutine.trace():  # run as a Pyro model: weights from the sites
        result = out(x, samples=4)
    expected = torch.einsum("bi,soi->sbo", x, weight)
    expected = torch.einsum("sbi,soi->sbo", expected, weight)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)
    # PyTorch-style: the two positions read one draw; repeated inputs agree.
    twice = net(torch.cat([x, x]))
    torch.testing.assert_close(twice[:, :5], twice[:, 5:])


# ------------------------------------------------------------------ the loss's record
def _classifier() -> bnn.VISequential:
    return bnn.VISequential(bnn.VILinear(3, 8), nn.ReLU(), bnn.VILinear(8, 3))


def test_loss_takes_the_kl_of_the_forward_pass_of_its_input() -> None:
    m1, m2 = _classifier(), _classifier()
    with torch.no_grad():
        for p in m2.parameters():
            p.add_(1.0)  # a very different KL
    x, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, kl="analytic")
    out1 = m1(x)
    m2(x)  # a later forward pass of another network
    loss = loss_fn(out1.log_softmax(-1), y)
    torch.testing.assert_close(
        loss_fn.last_kl * N, _closed_form_kl(m1), rtol=1e-5, atol=1e-4
    )
    loss.backward()
    assert all(p.grad is None for p in m2.parameters())
    assert all(p.grad is not None for p in m1.parameters())


def test_a_no_grad_forward_in_between_keeps_the_kl_gradient() -> None:
    net = _classifier()
    x, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    out = net(x)
    with torch.no_grad():
        net(x)  # e.g. logging a prediction
    loss = loss_fn(out[..., :], y)
    reference = loss_fn(out, y)
    torch.testing.assert_close(loss, reference)
    kl_only = torch.autograd.grad(
        loss_fn.combine(torch.zeros(()), _kl(out), *out.shape[:2]),
        [net[0].posterior["weight"].loc],
    )
    assert kl_only[0].abs().sum() > 0


def _kl(out: torch.Tensor) -> torch.Tensor:
    return bnn.record.find_record(out).kl("analytic")


def test_loss_refuses_what_it_cannot_attribute() -> None:
    net = _classifier()
    x, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    with pytest.raises(ValueError, match="combines the outputs of 2 different"):
        loss_fn(net(x) + net(x), y)
    out = net(x)
    with torch.no_grad():
        scaled = out * 2
    with pytest.raises(ValueError, match="cannot tell which forward pass"):
        loss_fn(scaled, y)
    with pytest.raises(ValueError, match="cannot tell which forward pass"):
        loss_fn(torch.randn(10, 8, 3), y)


@pytest.mark.parametrize("root", ["VISequential", "plain"])
def test_loss_refuses_an_output_of_two_separately_called_networks(root: str) -> None:
    """dec(enc(x)) with enc and dec called on their own: the loss counted dec's
    KL only (enc trained without its KL); composed in one network it counts both."""
    container = bnn.VISequential if root == "VISequential" else nn.Sequential
    encoder = container(bnn.VILinear(3, 4), nn.ReLU())
    decoder = container(bnn.VILinear(4, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    for chained in (decoder(encoder(x).mean(0)), decoder(encoder(x)[0])):
        with pytest.raises(ValueError, match="output of another forward pass"):
            loss_fn(chained, y)
    both = bnn.VISequential(encoder, decoder)
    loss_fn(both(x), y)
    with torch.no_grad():
        separate = _kl(encoder(x)) + _kl(decoder(torch.randn(8, 4)))
    assert float(loss_fn.last_kl) * N == pytest.approx(separate.item(), rel=1e-6)
    # A deterministic torch module in front of a network is no other pass.
    features = nn.Linear(3, 3)
    loss_fn(bnn.VISequential(bnn.VILinear(3, 2))(features(x)), y)


def test_a_loop_that_chains_networks_later_is_caught() -> None:
    """The chained-network check ran on a loss's first three calls per network
    only: a loop that switched to dec(enc(x)) later trained without enc's KL."""
    encoder = bnn.VISequential(bnn.VILinear(3, 4), nn.ReLU())
    decoder = bnn.VISequential(bnn.VILinear(4, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    for _ in range(80):
        loss_fn(decoder(torch.randn(8, 4)), y)  # fine: one network

    def chained_steps() -> None:
        for _ in range(64):  # chained from the 81st call on
            loss_fn(decoder(encoder(x)[0]), y)

    with pytest.raises(ValueError, match="output of another forward pass"):
        chained_steps()


class _LossOf(nn.Module):
    """A network and its loss as one module (for torch.func.functional_call)."""

    def __init__(self, net: nn.Module, loss_fn: bnn.KullbackLeiblerLoss) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.net(x, samples=3), y)


def test_second_order_maml_is_no_chained_network() -> None:
    """Second-order MAML: a pass at adapted parameters p - lr * grad(inner
    loss, p, create_graph=True). The chain check walked into the parameters'
    graph, reached the inner pass and refused the outer loss as "the output
    of another forward pass". The outer gradient, through the inner step,
    equals central finite differences (float64, fixed draws)."""
    from torch.func import functional_call

    torch.manual_seed(0)
    net = bnn.VISequential(_linear(2, 6), nn.Tanh(), _linear(6, 1))
    step = _LossOf(net, bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.5), N)).double()
    x, y, x_query, y_query = (torch.randn(10, d).double() for d in (2, 1, 2, 1))

    def adapted(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        inner = functional_call(step, p, (x, y))
        grads = torch.autograd.grad(inner, list(p.values()), create_graph=True)
        return {
            name: v - 0.3 * g for (name, v), g in zip(p.items(), grads, strict=True)
        }

    def outer_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        query = adapted(p)
        torch.manual_seed(2)
        loss: torch.Tensor = functional_call(step, query, (x_query, y_query))
        return loss

    def at(shift: float, direction: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            name: (p.detach() + shift * direction[name]).requires_grad_()
            for name, p in step.named_parameters()
        }

    zero = {name: torch.zeros_like(p) for name, p in step.named_parameters()}
    start = at(0.0, zero)
    # An input computed by another network called on its own is still refused
    # (checked on the loss's first calls: these are its 2nd and 3rd).
    encoder = bnn.VISequential(_linear(2, 2)).double()
    with pytest.raises(ValueError, match="output of another forward pass"):
        functional_call(step, adapted(start), (encoder(x_query).mean(0), y_query))
    gradients = torch.autograd.grad(outer_loss(start), list(start.values()))
    for _ in range(3):
        direction = {name: torch.randn_like(p) for name, p in start.items()}
        slope = sum(
            (g * direction[name]).sum()
            for name, g in zip(start, gradients, strict=True)
        )
        h = 1e-5
        central = (outer_loss(at(h, direction)) - outer_loss(at(-h, direction))) / (
            2 * h
        )
        # truncation O(h^2) and rounding O(eps / h) are both below 1e-8 here
        torch.testing.assert_close(central.detach(), slope, rtol=1e-7, atol=1e-8)


# ------------------------------------------------------------------ call boundary
def test_dtype_mismatch_is_named_at_the_call() -> None:
    net = nn.Sequential(bnn.VILinear(3, 4), nn.ReLU(), bnn.VILinear(4, 2))
    with pytest.raises(ValueError, match=r"torch\.float64.*torch\.float32"):
        bnn.VISequential(bnn.VILinear(3, 2))(torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"torch\.float64.*torch\.float32"):
        net(torch.randn(4, 3, dtype=torch.float64))


def test_additive_masks_may_hold_minus_infinity_but_not_nan() -> None:
    layer = bnn.VIMultiheadAttention(4, 2, batch_first=True)
    x = torch.randn(2, 3, 4)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(3)
    out, _ = layer(x, x, x, attn_mask=mask)
    assert out.shape == (10, 2, 3, 4)
    with pytest.raises(ValueError, match="NaN"):
        layer(x, x, x, attn_mask=torch.full((3, 3), float("nan")))
    with pytest.raises(ValueError, match="NaN/Inf"):
        layer(x.masked_fill(x > 1, float("-inf")), x, x)


def test_plain_root_is_a_pyro_model_inside_pyro_inference() -> None:
    net = nn.Sequential(_linear(3, 6), nn.Tanh(), _linear(6, 4))
    net.samples = 3  # type: ignore[assignment]
    guide_trace = pyro.poutine.trace(bnn.ParticleGuide(net)).get_trace()
    x = torch.randn(8, 3)
    model_trace = pyro.poutine.trace(
        pyro.poutine.replay(net, trace=guide_trace)
    ).get_trace(x)
    sites = [
        n
        for n, s in model_trace.nodes.items()
        if s["type"] == "sample" and n != "particles"  # the plate's own site
    ]
    assert sites == ["0.weight", "0.bias", "2.weight", "2.bias"]
    out = model_trace.nodes["_RETURN"]["value"]
    assert out.shape == (3, 8, 4)
    w = {name: guide_trace.nodes[name]["value"].squeeze(1) for name in sites}
    hidden = torch.tanh(
        torch.einsum("bi,soi->sbo", x, w["0.weight"]) + w["0.bias"][:, None]
    )
    expected = (
        torch.einsum("sbi,soi->sbo", hidden, w["2.weight"]) + w["2.bias"][:, None]
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("root", ["bnn", "torch"])
def test_svi_trains_plain_layers_inside_the_network(root: str) -> None:
    layers = (bnn.VILinear(3, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    net = bnn.VISequential(*layers) if root == "bnn" else nn.Sequential(*layers)
    guide = net.guide if isinstance(net, bnn.VIModule) else bnn.ParticleGuide(net)
    model = bnn.KullbackLeiblerLoss(bnn.Categorical(), N).pyro_model(net)
    head = layers[2]
    before = [p.detach().clone() for p in (*head.parameters(), *layers[1].parameters())]
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    for _ in range(2):
        svi.step(x, y, samples=2)
    after = [*head.parameters(), *layers[1].parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("mode", ["sample", "mean"])
def test_predict_takes_a_plain_root(mode: str) -> None:
    net = nn.Sequential(bnn.VILinear(3, 6), nn.ReLU(), bnn.VILinear(6, 2))
    x = torch.randn(9, 3)
    pred = bnn.predict(net, x, bnn.Categorical(), samples=7, mode=mode)
    assert pred.samples.shape == (7 if mode == "sample" else 1, 9, 2)
    assert not hasattr(net, "samples")  # left as it was
    if mode == "mean":
        means = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
        means[0].weight.data = net[0].posterior["weight"].mean().detach()
        means[0].bias.data = net[0].posterior["bias"].mean().detach()
        means[2].weight.data = net[2].posterior["weight"].mean().detach()
        means[2].bias.data = net[2].posterior["bias"].mean().detach()
        torch.testing.assert_close(pred.samples[0], means(x))
    chunked = bnn.predict(net, x, bnn.Categorical(), samples=7, batch_size=2)
    pyro.set_rng_seed(5)
    a = bnn.predict(net, x, bnn.Categorical(), samples=7, batch_size=2).samples
    pyro.set_rng_seed(5)
    b = bnn.predict(net, x, bnn.Categorical(), samples=7).samples
    torch.testing.assert_close(a, b)  # particles are coherent across chunks
    assert chunked.samples.shape == (7, 9, 2)


def test_predict_refuses_a_module_without_bayesian_layers() -> None:
    with pytest.raises(TypeError, match="predict needs a network with Bayesian"):
        bnn.predict(nn.Linear(3, 2), torch.randn(4, 3), bnn.Categorical())


def test_plain_module_with_one_lstm_reads_torch_states() -> None:
    class Classifier(nn.Module):  # not converted: Bayesian layer + plain head
        def __init__(self) -> None:
            super().__init__()
            self.rnn = bnn.VILSTM(3, 5, num_layers=2, batch_first=True)
            self.head = nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            _, (h_n, _) = self.rnn(x)
            return self.head(h_n[-1])  # torch's idiom: last layer's final state

    net = Classifier()
    x = torch.randn(4, 6, 3)
    out = net(x)
    assert out.shape == (10, 4, 2)  # one particle dim, not (10, 2, ...) per layer
    pred = bnn.predict(net, x, bnn.Categorical(), mode="mean")
    reference = nn.LSTM(3, 5, num_layers=2, batch_first=True)
    for name, _ in reference.named_parameters():
        getattr(reference, name).data = net.rnn.posterior[name].mean().detach()
    _, (h_ref, _) = reference(x)
    torch.testing.assert_close(
        pred.samples[0], net.head(h_ref[-1]), rtol=1e-5, atol=1e-6
    )


def test_wrapper_around_a_network_with_its_own_guide_keeps_it() -> None:
    inner = bnn.VISequential(bnn.VILinear(3, 4), nn.ReLU(), bnn.VILinear(4, 2))
    inner.guide = pyro.infer.autoguide.AutoNormal(
        inner.prior_model, init_loc_fn=inner.init_loc_fn
    )

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    out = Wrapper()(torch.randn(5, 3))
    assert isinstance(bnn.record.find_record(out), bnn.record.TraceRecord)


def test_model_loss_takes_a_plain_root() -> None:
    net = nn.Sequential(_linear(3, 6), nn.Tanh(), _linear(6, 4))
    x, y = torch.randn(8, 3), torch.randint(0, 4, (8,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    pyro.set_rng_seed(4)
    ours = loss_fn.model_loss(net, x, y, samples=3)
    pyro.set_rng_seed(4)
    net.samples = 3  # type: ignore[assignment]
    torch.testing.assert_close(ours, loss_fn(net(x), y))
    del net.samples
    with pytest.raises(TypeError, match="model_loss needs a network with Bayesian"):
        loss_fn.model_loss(nn.Linear(3, 4), x, y)


def test_plain_root_frame_is_closed_after_an_error_and_leaves_no_hook() -> None:
    """The frame of a plain network is closed by a hook of that module alone,
    also when its forward raises; the next call is a fresh network call."""

    class Fails(nn.Module):
        fail = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.fail:
                raise RuntimeError("boom")
            return x

    fails = Fails()
    plain = nn.Sequential(bnn.VILinear(3, 4), fails, bnn.VILinear(4, 2))
    with pytest.raises(RuntimeError, match="boom"):
        plain(torch.randn(5, 3))
    fails.fail = False
    assert plain(torch.randn(5, 3)).shape == (10, 5, 2)
    assert not plain._forward_hooks  # the closing hook was removed
    assert nn.Sequential(nn.Linear(3, 2))(torch.randn(5, 3)).shape == (5, 2)


class _Interrupts(nn.Module):
    """Raises ``KeyboardInterrupt`` (a ``BaseException``: torch's ``always_call``
    forward hooks do not run for it) while ``interrupt`` is set."""

    interrupt = True

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        if self.interrupt:
            raise KeyboardInterrupt
        return x


@pytest.mark.parametrize("where", ["plain module", "plain network"])
def test_a_keyboard_interrupt_leaves_no_call_open(where: str) -> None:
    """Interrupted inside a plain module's forward (a notebook user's Ctrl-C),
    later calls of any network are fresh outermost calls."""
    plain = nn.Sequential(bnn.VILinear(3, 5), nn.ReLU(), bnn.VILinear(5, 2))
    stop = _Interrupts()
    if where == "plain module":
        interrupted: nn.Module = stop
    else:
        interrupted = nn.Sequential(bnn.VILinear(3, 3), stop, bnn.VILinear(3, 2))
    with pytest.raises(KeyboardInterrupt):
        interrupted(torch.randn(4, 3))
    x = torch.randn(4, 3)
    assert plain(x).shape == (10, 4, 2)
    assert bnn.VISequential(bnn.VILinear(3, 2))(x).shape == (10, 4, 2)
    assert bnn.predict(plain, x, bnn.Categorical(), samples=3).probs.shape == (4, 2)
    stop.interrupt = False
    assert interrupted(x).shape[-2:] == (4, 3 if where == "plain module" else 2)


def test_a_weight_read_after_an_interrupted_plain_network_is_the_posterior_mean() -> (
    None
):
    """Reading a layer's weight after Ctrl-C in its plain network's call (the
    next notebook cell) found the interrupted call's draws: it raised "called
    twice in one forward pass" and switched the layer to weight draws for the
    rest of the process."""
    stop = _Interrupts()
    stop.linear = nn.Linear(3, 3)
    net = nn.Sequential(bnn.VILinear(3, 3), stop, bnn.VILinear(3, 2))
    with pytest.raises(KeyboardInterrupt):
        net(torch.randn(4, 3))
    weight = net[0].weight
    assert weight is net[0].posterior["weight"].loc_unconstrained
    assert not called_repeatedly(net[0])
    stop.interrupt = False
    x = torch.randn(4, 3)
    torch.manual_seed(1)
    first = net(x)
    fresh = nn.Sequential(bnn.VILinear(3, 3), nn.Linear(3, 3), bnn.VILinear(3, 2))
    fresh.load_state_dict(
        {k.replace("1.linear.", "1."): v for k, v in net.state_dict().items()}
    )
    torch.manual_seed(1)
    assert torch.equal(first, fresh(x))  # the same estimator as a fresh network


def test_a_plain_network_interrupted_can_be_copied_and_saved_at_once() -> None:
    """Right after Ctrl-C in a plain network's call (before any other module
    call closes its frame), ``copy.deepcopy`` and ``torch.save`` of it failed
    with "cannot pickle 'frame' object": its closing hook held the frame. The
    copies run as fresh networks, equal to the original under one seed."""
    stop = _Interrupts()
    net = nn.Sequential(bnn.VILinear(3, 3), stop, bnn.VILinear(3, 2))
    with pytest.raises(KeyboardInterrupt):
        net(torch.randn(4, 3))
    copied = copy.deepcopy(net)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    stop.interrupt = False
    copied[1].interrupt = loaded[1].interrupt = False
    x = torch.randn(4, 3)
    outputs = []
    for module in (net, copied, loaded):
        torch.manual_seed(2)
        outputs.append(module(x))
    assert outputs[0].shape == (10, 4, 2)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    torch.testing.assert_close(outputs[2], outputs[0], rtol=0, atol=0)
    assert not net._forward_hooks  # the stale frame's hook is gone


def test_a_keyboard_interrupt_inside_pyro_inference_leaves_pyro_intact() -> None:
    """Interrupted while it ran as a Pyro model (its particle plate is a Pyro
    handler, already unwound by the interrupt), a plain network's stale call
    is closed without touching Pyro's handler stack."""
    stop = _Interrupts()
    net = nn.Sequential(bnn.VILinear(3, 3), stop, bnn.VILinear(3, 2))
    x = torch.randn(4, 3)
    with pytest.raises(KeyboardInterrupt):
        pyro.poutine.trace(net).get_trace(x)
    assert nn.Sequential(nn.Linear(3, 2), nn.ReLU())(x).shape == (4, 2)
    stop.interrupt = False
    trace = pyro.poutine.trace(net).get_trace(x)
    assert trace.nodes["_RETURN"]["value"].shape == (10, 4, 2)
    assert net(x).shape == (10, 4, 2)


@pytest.mark.filterwarnings("ignore:`torch.jit.script`:DeprecationWarning")
def test_a_scripted_module_runs_and_leaves_no_call_open() -> None:
    """TorchScript modules take no forward hooks: they are no plain networks."""
    bnn.VILinear(3, 2)  # the plain-root hook is installed
    scripted = torch.jit.script(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    x = torch.randn(4, 3)
    assert scripted(x).shape == (4, 4)
    plain = nn.Sequential(bnn.VILinear(3, 5), nn.ReLU(), bnn.VILinear(5, 2))
    assert plain(x).shape == (10, 4, 2)


@pytest.mark.parametrize("estimator", ["reparam", "auto"])
@pytest.mark.parametrize("root", [nn.Module, bnn.VIModule])
@pytest.mark.parametrize("head_first", [False, True])
def test_a_layer_run_without_gradients_leaves_the_others_theirs(
    estimator: str, root: type[nn.Module], head_first: bool
) -> None:
    """A frozen Bayesian encoder (run under torch.no_grad()): the trained head
    gets the gradients it gets without the no_grad block. Every weight is drawn
    in the root call's grad mode: the moments of a plain root were taken in the
    first layer's, and a head declared before the encoder was drawn when the
    encoder read its own weights, under no_grad."""

    class Net(root):  # type: ignore[valid-type,misc]
        def __init__(self, freeze: bool) -> None:
            super().__init__()
            self.freeze = freeze
            if head_first:  # site order: head, encoder
                self.head = bnn.VILinear(8, 2, estimator=estimator)
            self.encoder = bnn.VILinear(3, 8, estimator=estimator)
            if not head_first:
                self.head = bnn.VILinear(8, 2, estimator=estimator)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.set_grad_enabled(not self.freeze):
                h = self.encoder(x).relu()
            out: torch.Tensor = self.head(h)
            return out

    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=16)
    grads = []
    for freeze in (False, True):
        torch.manual_seed(0)
        net = Net(freeze)
        torch.manual_seed(1)
        # The encoder's posterior still trains, by the KL alone: warned.
        warned = pytest.warns(UserWarning, match="encoder ran without gradients")
        with warned if freeze else contextlib.nullcontext():
            loss_fn(net(x), y).backward()
        grads.append({n: p.grad for n, p in net.head.named_parameters()})
    assert len(grads[1]) == 4
    for name, grad in grads[1].items():
        assert grad is not None, name
        torch.testing.assert_close(grad, grads[0][name])


def test_tree_facts_of_plain_containers_follow_their_changes() -> None:
    """A plain container changes without bumping the structure version: the
    facts derived from its tree are not cached (a layer moved in is seen)."""
    from pyrolite_bnn._network import has_sequence_first_layers, per_particle_modules
    from pyrolite_bnn.vi.base import VIModule as TorchBlueModule

    class OneSample(TorchBlueModule):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    recurrent, one_sample = bnn.VILSTM(3, 3), OneSample()
    net = nn.Sequential(bnn.VILinear(3, 3), nn.ReLU(), bnn.VILinear(3, 3))
    assert not has_sequence_first_layers(net)
    assert not per_particle_modules(net)
    net[2] = recurrent  # built before: no structure change is announced
    assert has_sequence_first_layers(net)
    net[1] = one_sample
    assert id(one_sample) in per_particle_modules(net)


def test_cached_variables_do_not_follow_a_state_moved_to_another_object() -> None:
    """torch_blue's in-place conversion moves a built layer's ``__dict__``.

    Variables cached on the built layer named it as their module; moved into
    the converted object, the stale cache made every call fail ("was not
    drawn for this call").
    """
    built = bnn.VILSTM(3, 4, batch_first=True)
    assert built.random_variables()  # cached on built
    target = nn.LSTM(3, 4, batch_first=True)
    vars(target).clear()
    vars(target).update(vars(built))
    target.__class__ = type(built)
    out, _ = target(torch.randn(2, 5, 3), samples=3)
    assert out.shape == (3, 2, 5, 4)


class _TwoInputs(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc = bnn.VILinear(3, 2)
        self.out = bnn.VILinear(2, 2)

    def forward(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return self.out(torch.tanh(h + bnn.match_particles(b, h)))


class _PackedInputs(_TwoInputs):
    def forward(self, inputs: Any) -> torch.Tensor:  # type: ignore[override]
        if isinstance(inputs, dict):
            return super().forward(inputs["x"], inputs["b"])
        return super().forward(*inputs)


@pytest.mark.parametrize("pack", [tuple, dict])
def test_inputs_packed_in_a_tuple_or_dict_keep_their_batch(pack: type) -> None:
    """Inputs packed in one argument (a tuple or dict) keep their batch.

    The batch was read from top-level tensors only: with none, a shared
    (6, ...) input was taken as folded (3 examples x 2 particles), silently.
    The Pyro model unpacks a tuple x into the network's positional inputs
    (as every entry point does) and passes anything else, a dict, as one.
    """
    torch.manual_seed(0)
    two, packed = _TwoInputs(), _PackedInputs()
    packed.load_state_dict(two.state_dict())
    x, b = torch.randn(6, 3), torch.randn(6, 2)
    inputs = (x, b) if pack is tuple else {"x": x, "b": b}
    torch.manual_seed(1)
    want = two(x, b, samples=2)
    torch.manual_seed(1)
    got = packed(inputs, samples=2)
    torch.testing.assert_close(got, want)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 30)
    network = two if pack is tuple else packed
    trace = pyro.poutine.trace(loss_fn.pyro_model(network)).get_trace(
        inputs, torch.randint(0, 2, (6,)), samples=2
    )
    assert trace.nodes["obs"]["fn"].batch_shape == (2, 6)


class _CheckpointedHead(bnn.VIModule):
    """Runs its second layer under torch.utils.checkpoint (or not)."""

    def __init__(self, checkpointed: bool, reentrant: bool) -> None:
        super().__init__()
        self.checkpointed, self.reentrant = checkpointed, reentrant
        self.a = bnn.VILinear(3, 8, estimator="reparam")
        self.b = bnn.VILinear(8, 2, estimator="reparam")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).relu()
        if not self.checkpointed:
            return self.b(h)  # type: ignore[no-any-return]
        out = checkpoint(self.b, h, use_reentrant=self.reentrant)
        return out  # type: ignore[no-any-return]


def _gradients(net: nn.Module, run: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    torch.manual_seed(1)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=16)
    loss_fn(run(x), y).backward()
    return {name: p.grad for name, p in net.named_parameters()}


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointing_a_layer_inside_a_network_is_refused(reentrant: bool) -> None:
    """Recomputed in backward outside the network's call, the layer would run
    as a network of its own (torch's shape errors before)."""
    net = _CheckpointedHead(checkpointed=True, reentrant=reentrant)
    with pytest.raises(RuntimeError, match="Checkpoint whole network calls"):
        _gradients(net, net)


def test_checkpointing_a_whole_network_call_gives_the_same_gradients() -> None:
    """Recomputing a whole call draws the same weights (torch restores the RNG)."""
    torch.manual_seed(0)
    net = _CheckpointedHead(checkpointed=False, reentrant=False)
    plain = _gradients(net, net)
    net.zero_grad()
    checkpointed = _gradients(net, lambda x: checkpoint(net, x, use_reentrant=False))
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)


def test_checkpoint_sequential_is_refused_naming_the_whole_network_call() -> None:
    """checkpoint_sequential calls a VISequential's segments as networks of
    their own (output (10, 10, 10, 16, 1)); the loss refused it with the
    generic message about separately called networks."""
    seq = bnn.VISequential(
        bnn.VILinear(3, 8), nn.Tanh(), bnn.VILinear(8, 8), bnn.VILinear(8, 2)
    )
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    out = checkpoint_sequential(seq, 2, x, use_reentrant=False)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=16)
    with pytest.raises(ValueError, match=r"checkpoint_sequential.*whole network"):
        loss_fn(out, y)


class _Tied(bnn.VIModule):
    """One layer called twice per pass (a weight-tied loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.layer = bnn.VILinear(3, 8), bnn.VILinear(8, 8)
        self.out = bnn.VILinear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.layer(torch.tanh(self.layer(h))))
        return self.out(h)


class _Siamese(bnn.VIModule):
    """One encoder called on two views."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.head = bnn.VILinear(3, 8), bnn.VILinear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.enc(x)) - torch.tanh(self.enc(x.flip(0))))


@pytest.mark.parametrize("network", [_Tied, _Siamese])
def test_checkpointing_the_first_call_of_a_network_calling_a_layer_twice(
    network: type[nn.Module],
) -> None:
    """The first call of such a network runs its pass again once the layer is
    seen twice; the abandoned pass's saved tensors were counted by
    checkpoint(use_reentrant=False), whose recomputation (one pass) saved
    fewer: CheckpointError "A different number of tensors was saved". The
    gradients now equal the unchecked first call's at the same seed, exactly
    (the same draws and the same operations)."""
    torch.manual_seed(0)
    fresh = network()
    state = copy.deepcopy(fresh.state_dict())
    plain = _gradients(fresh, fresh)
    torch.manual_seed(0)
    fresh = network()  # a new object: nothing known about its calls
    fresh.load_state_dict(state)
    checkpointed = _gradients(
        fresh, lambda x: checkpoint(fresh, x, use_reentrant=False)
    )
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=0, msg=name)


def _reentrant_case(case: str) -> tuple[nn.Module, bnn.KullbackLeiblerLoss]:
    """A network and a loss covering one path of the KL term."""
    kl = "mc" if case.endswith("mc") else "auto"
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=N, kl=kl)
    if case == "big layer (replayed draws)":  # 2 * 200 * 200 > 2**16 numbers
        first = bnn.VILinear(3, 200, estimator="reparam")
        second = bnn.VILinear(200, 200, estimator="reparam")
        return bnn.VISequential(first, nn.ReLU(), second), loss_fn
    options: dict[str, Any] = {"estimator": case.split()[0]}
    if "laplace" in case:
        options["prior"] = bnn.LaplacePrior(0.0, 0.5)
    if "point mass" in case:
        options["variational"] = bnn.PointMass()
    first, second = bnn.VILinear(3, 6, **options), bnn.VILinear(6, 2, **options)
    return bnn.VISequential(first, nn.ReLU(), second), loss_fn


def _gradients_with_input_gradient(
    net: nn.Module,
    loss_fn: bnn.KullbackLeiblerLoss,
    run: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Parameter and input gradients of one step at a fixed seed."""
    net.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    x = torch.randn(8, 3, requires_grad=True)
    y = torch.randint(0, 2, (8,))
    pyro.set_rng_seed(11)
    loss_fn(run(x), y).backward()
    gradients = {name: p.grad for name, p in net.named_parameters()}
    return {**gradients, "x": x.grad}


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize(
    "case",
    [
        "auto",
        "reparam",
        "flipout",
        "reparam mc",
        "reparam laplace mc",
        "reparam point mass",
        "big layer (replayed draws)",
    ],
)
def test_checkpointing_a_whole_call_keeps_every_kl_gradient(
    case: str, reentrant: bool
) -> None:
    """use_reentrant=True (torch's default when it is not given) runs the
    forward pass under no_grad: the KL taken from its moments had a gradient
    through the posterior means only, and every scale's KL gradient was
    silently missing (0.0 instead of -0.00999 for one rho). The KL now takes
    moments and draws with gradients; all gradients equal the unchecked call's."""
    torch.manual_seed(0)
    net, loss_fn = _reentrant_case(case)
    plain = _gradients_with_input_gradient(net, loss_fn, net)
    checkpointed = _gradients_with_input_gradient(
        net, loss_fn, lambda x: checkpoint(net, x, use_reentrant=reentrant)
    )
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        assert grad is not None, name
        torch.testing.assert_close(
            checkpointed[name], grad, rtol=1e-6, atol=1e-6, msg=name
        )


@pytest.mark.parametrize(
    ("reentrant", "guide"),
    # reentrant with an assigned guide: refused by the loss (the next test)
    [(True, "generated"), (False, "generated"), (False, "assigned")],
)
def test_checkpointing_without_restoring_the_random_state_is_refused(
    reentrant: bool, guide: str
) -> None:
    """checkpoint(..., preserve_rng_state=False) recomputed the call from the
    random state of the backward pass: new weights, and gradients mixing two
    draws (relative error 0.95 at posterior std 0.3, probe of 2026-12-09),
    silently. The recomputation is refused naming preserve_rng_state=True."""
    torch.manual_seed(0)
    net, loss_fn = _reentrant_case("auto")
    if guide == "assigned":
        net.guide = pyro.infer.autoguide.AutoNormal(net.prior_model)
    with pytest.raises(RuntimeError, match=r"preserve_rng_state=True"):
        _gradients_with_input_gradient(
            net,
            loss_fn,
            lambda x: checkpoint(
                net, x, use_reentrant=reentrant, preserve_rng_state=False
            ),
        )


@pytest.mark.parametrize("reentrant", [True, False])
def test_several_checkpointed_calls_before_one_backward_pass(reentrant: bool) -> None:
    """Each recomputation finds its own call's random state: two checkpointed
    calls of one network (gradient accumulation in one graph) give the
    unchecked calls' gradients."""
    torch.manual_seed(0)
    net, loss_fn = _reentrant_case("auto")

    def two_calls(run: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
        net.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        x = torch.randn(8, 3, requires_grad=True)
        y = torch.randint(0, 2, (8,))
        (loss_fn(run(x), y) + loss_fn(run(x.flip(0)), y)).backward()
        return {name: p.grad for name, p in net.named_parameters()}

    plain = two_calls(net)
    checkpointed = two_calls(lambda x: checkpoint(net, x, use_reentrant=reentrant))
    for name, grad in plain.items():
        torch.testing.assert_close(
            checkpointed[name], grad, rtol=1e-6, atol=1e-6, msg=name
        )


def test_reentrant_checkpointing_of_a_network_with_an_assigned_guide_is_refused() -> (
    None
):
    """The guide's trace of a pass run under no_grad has no gradients: the KL
    lost part of every guide parameter's gradient, silently."""
    net = bnn.VISequential(bnn.VILinear(3, 6), nn.ReLU(), bnn.VILinear(6, 2))
    net.guide = pyro.infer.autoguide.AutoNormal(net.prior_model)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=N)
    x, y = torch.randn(8, 3, requires_grad=True), torch.randint(0, 2, (8,))
    out = checkpoint(net, x, use_reentrant=True)
    with pytest.raises(ValueError, match=r"use_reentrant=False"):
        loss_fn(out, y)
    with torch.no_grad():  # evaluation needs no gradient
        loss_fn(out, y)
    loss_fn(checkpoint(net, x, use_reentrant=False), y).backward()


def test_a_network_called_during_backward_runs() -> None:
    """Only a layer recomputed by torch.utils.checkpoint is refused: a network
    called in a gradient hook (here on its very first call) runs."""
    critic = bnn.VISequential(bnn.VILinear(4, 1))
    seen = []

    def scale(grad: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            seen.append(critic(grad).shape)
        return grad

    w = torch.randn(8, 4, requires_grad=True)
    h = w * 2
    h.register_hook(scale)
    h.sum().backward()
    assert seen == [(10, 8, 1)]


def test_a_plain_container_tree_is_walked_once_per_question_per_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Facts about a tree holding plain containers are not cached across calls
    (the containers change without telling the library), but every question
    of one call walked the tree again: 31 child listings per call for this
    7-module network. One walk for the facts and one for the variables now."""
    from pyrolite_bnn import _network

    class Net(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(bnn.VILinear(3, 4), nn.ReLU(), bnn.VILinear(4, 4))
            self.head = nn.Sequential(nn.ReLU(), bnn.VILinear(4, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))  # type: ignore[no-any-return]

    net, x = Net(), torch.randn(5, 3)
    net(x)  # first call: per-class facts (Pyro statements) found once
    network = [module for _, module in _network.network_modules(net)]
    listings = []
    original = _network.network_children

    def counting(module: nn.Module) -> list[tuple[str, nn.Module]]:
        listings.append(module)
        return original(module)

    monkeypatch.setattr(_network, "network_children", counting)
    net(x)
    assert len(listings) <= 2 * len(network), (len(listings), len(network))


def test_save_on_cpu_changes_nothing_a_step_computes() -> None:
    """The pass that finds layers called twice ran under save_on_cpu too (no
    checkpointing there): a legacy spectral_norm's power iteration ran twice
    and the loss moved (11.2363 instead of 11.2422)."""

    def step(save_on_cpu: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(1)
        middle = nn.utils.spectral_norm(nn.Linear(8, 8))
        net = bnn.VISequential(
            bnn.VILinear(4, 8), middle, nn.Tanh(), bnn.VILinear(8, 1)
        )
        loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(0.5), dataset_size=32)
        x, y = torch.randn(32, 4), torch.randn(32, 1)
        torch.manual_seed(2)
        context = (
            torch.autograd.graph.save_on_cpu()
            if save_on_cpu
            else contextlib.nullcontext()
        )
        with context:
            out = net(x)
        loss = loss_fn(out, y)
        loss.backward()
        assert middle.weight_orig.grad is not None
        return loss.detach(), middle.weight_orig.grad

    plain, saved = step(False), step(True)
    torch.testing.assert_close(saved, plain, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["plain torch", "plain network", "loss"])
def test_a_module_call_keeps_its_callers_locals_alive_no_longer(kind: str) -> None:
    """The closing hook of a plain module's call is bound to the call's frame,
    which held the interpreter frame running it; that frame held the hook
    (torch's loop variable): a cycle that kept the caller's locals (here an
    optimizer; a batch, a model) alive after every call of a module with
    children, found by the weight-decay watch counting a dead optimizer. They
    go with the caller's frame, without the cyclic collector."""
    torch_net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    net = nn.Sequential(bnn.VILinear(3, 4), nn.Tanh(), bnn.VILinear(4, 1))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    held = bnn.VISequential(bnn.VILinear(3, 1))
    out = held(x)

    def call() -> weakref.ref[torch.optim.Optimizer]:
        optimizer = torch.optim.SGD(torch_net.parameters())
        if kind == "plain torch":
            torch_net(x)
        elif kind == "plain network":
            net(x)
        else:
            loss_fn(out, y)
        return weakref.ref(optimizer)

    gc.disable()  # the collector must not run by chance in between
    try:
        optimizer = call()
        assert optimizer() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("kept", ["output", "loss"])
@pytest.mark.parametrize("root", ["VISequential", "plain nn.Sequential"])
def test_a_network_that_keeps_its_own_output_is_freed_when_dropped(
    kept: str, root: str
) -> None:
    """The forward record sits in the output's autograd node (C++, which the
    cyclic collector cannot look into) and held the network strongly, through
    itself and its random variables: a network whose module kept its output
    or a loss of it (``model.last = model(x)``, a hook keeping activations)
    stayed in memory for the life of the process after it was dropped, with
    its weights and the activations (plain torch frees it)."""

    def build() -> weakref.ref[nn.Module]:
        layers = (bnn.VILinear(2, 8), nn.ReLU(), bnn.VILinear(8, 1))
        model = (
            bnn.VISequential(*layers)
            if root == "VISequential"
            else nn.Sequential(*layers)
        )
        out = model(torch.randn(16, 2))
        if kept == "loss":
            out = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 100)(
                out, torch.randn(16, 1)
            )
        model.last = out
        return weakref.ref(model)

    model = build()
    gc.collect()
    gc.collect()  # the caches of a network hold it in cycles of their own
    assert model() is None
