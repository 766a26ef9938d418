"""Property-based checks over small random networks (hypothesis).

Each example builds a random network (layer widths, biases, estimators,
priors, bnn or plain torch containers, a layer object shared between two
positions) and checks what must hold for every network:

* the output has shape ``(S, B, out)``: one particle dimension, never nested;
* the PyTorch-style loss equals Pyro's ``Trace_ELBO`` (``kl="mc"``) and
  ``TraceMeanField_ELBO`` (``kl="analytic"``) on the same model, guide and
  seed, divided by ``N`` (every layer drawing weights, ``estimator="reparam"``,
  where the identity holds draw for draw);
* the analytic KL equals ``kl_divergence`` summed over each random variable
  once;
* a packed batch of random lengths through a random recurrent layer is torch's
  layer per particle, and a random torch MLP converted by
  ``vi.convert_to_vimodule`` with fixed weights is the MLP.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn
from torch.distributions import kl_divergence

import pyrolite_bnn as bnn
from pyrolite_bnn._network import collect_variables

N = 50
PRIORS = {
    "default": lambda shape: None,
    "normal": lambda shape: bnn.NormalPrior(0.1, 0.5),
    "laplace": lambda shape: bnn.LaplacePrior(0.0, 0.7),
}


@st.composite
def networks(draw: Any) -> tuple[nn.Module, int, int, str]:
    """A random network, its input and output widths, and its container kind."""
    depth = draw(st.integers(1, 3))
    widths = [draw(st.integers(1, 5)) for _ in range(depth + 1)]
    estimator = draw(st.sampled_from(["reparam", "auto", "local", "flipout"]))
    prior = draw(st.sampled_from(sorted(PRIORS)))
    layers: list[nn.Module] = []
    for i in range(depth):
        shape = (widths[i + 1], widths[i])
        layers.append(
            bnn.VILinear(
                widths[i],
                widths[i + 1],
                draw(st.booleans()),
                prior=PRIORS[prior](shape),
                estimator=estimator,
            )
        )
        layers.append(nn.Tanh())
    if widths[-1] == widths[-2] and draw(st.booleans()):
        layers.append(layers[-2])  # the last layer again: weight sharing
    kind = draw(st.sampled_from(["VISequential", "nn.Sequential"]))
    net = (
        bnn.VISequential(*layers) if kind == "VISequential" else nn.Sequential(*layers)
    )
    return net, widths[0], widths[-1], estimator


def _set_samples(net: nn.Module, samples: int) -> None:
    # A plain container holding one Bayesian position leaves the network to
    # that layer (with its own count); with two or more it reads its own.
    net.samples = samples  # type: ignore[assignment]
    for module in net.modules():
        if isinstance(module, bnn.VIModule):
            module.samples = samples


def _guide(net: nn.Module) -> Any:
    return net.guide if isinstance(net, bnn.VIModule) else bnn.ParticleGuide(net)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(networks(), st.integers(1, 4), st.integers(1, 6))
def test_output_shape(spec: tuple[nn.Module, int, int, str], s: int, b: int) -> None:
    net, width_in, width_out, _ = spec
    _set_samples(net, s)
    assert net(torch.randn(b, width_in)).shape == (s, b, width_out)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(networks())
def test_loss_equals_pyro_elbo(spec: tuple[nn.Module, int, int, str]) -> None:
    net, width_in, width_out, estimator = spec
    if estimator != "reparam":
        return  # output-noise estimators agree in expectation only (tested elsewhere)
    _set_samples(net, 3)
    x = torch.randn(4, width_in)
    y = torch.randn(4, width_out)
    # "auto": closed form where registered, Monte Carlo elsewhere (the Laplace
    # prior), as TraceMeanField_ELBO does.
    for kl, elbo in (("mc", Trace_ELBO()), ("auto", TraceMeanField_ELBO())):
        loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.5), N, kl=kl)  # type: ignore[arg-type]
        pyro.set_rng_seed(0)
        ours = loss_fn(net(x), y)
        pyro.set_rng_seed(0)
        model = loss_fn.pyro_model(net)
        theirs = elbo.differentiable_loss(model, _guide(net), x, y) / N
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(networks())
def test_analytic_kl_equals_closed_form(spec: tuple[nn.Module, int, int, str]) -> None:
    net, width_in, width_out, _ = spec
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.5), N, kl="auto")
    loss_fn(net(torch.randn(4, width_in)), torch.randn(4, width_out))
    expected = torch.zeros(())
    for v in collect_variables(net):
        q = v.posterior.distribution()
        p = v.module.prior_distribution(v.name)
        try:
            expected = expected + kl_divergence(q, p).sum()
        except NotImplementedError:  # Monte-Carlo sites: nothing closed to compare
            return
    torch.testing.assert_close(
        loss_fn.last_kl * N, expected.detach(), rtol=1e-5, atol=1e-4
    )


@st.composite
def packed_batches(draw: Any) -> tuple[nn.Module, Any, int]:
    """A random recurrent layer and a packed batch of random lengths."""
    kind = draw(st.sampled_from(["LSTM", "GRU"]))
    options: dict[str, Any] = {
        "num_layers": draw(st.integers(1, 2)),
        "bidirectional": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
    }
    if kind == "LSTM" and draw(st.booleans()):
        options["proj_size"] = 2
    cls = bnn.VILSTM if kind == "LSTM" else bnn.VIGRU
    layer = cls(3, 4, **options).eval()
    lengths = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    sorted_input = draw(st.booleans())
    if sorted_input:
        lengths = sorted(lengths, reverse=True)
    padded = torch.randn(len(lengths), max(lengths), 3)
    if not options["batch_first"]:
        padded = padded.transpose(0, 1)
    packed = nn.utils.rnn.pack_padded_sequence(
        padded,
        torch.tensor(lengths),
        batch_first=options["batch_first"],
        enforce_sorted=sorted_input,
    )
    return layer, packed, draw(st.integers(1, 3))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(packed_batches())
def test_packed_recurrent_layers_are_torchs_per_particle(
    case: tuple[nn.Module, Any, int],
) -> None:
    """For any recurrent layer and packed batch, particle ``s`` of the outermost
    call is ``torch.nn.LSTM``/``GRU`` with particle ``s``'s weights."""
    layer, packed, samples = case
    weights = {
        v.site: torch.randn(samples, 1, *v.shape) * 0.5
        for v in layer.random_variables()
    }
    with pyro.poutine.trace():
        out, state = pyro.poutine.condition(layer, data=weights)(
            packed, samples=samples
        )
    states = state if isinstance(state, tuple) else (state,)
    assert out.data.shape[:2] == (samples, packed.data.shape[0])
    for s in range(samples):
        plain = bnn.to_deterministic(layer)
        with torch.no_grad():
            for site, value in weights.items():
                plain.get_parameter(site).copy_(value[s, 0])
            ref_out, ref_state = plain(packed)
        ref_states = ref_state if isinstance(ref_state, tuple) else (ref_state,)
        torch.testing.assert_close(out.data[s], ref_out.data, rtol=1e-4, atol=1e-5)
        for got, want in zip(states, ref_states, strict=True):
            torch.testing.assert_close(got[s], want, rtol=1e-4, atol=1e-5)


class _Gain(nn.Module):
    """A custom layer with a parameter: converted by a generated class."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.rand(features) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


@st.composite
def torch_models(draw: Any) -> tuple[nn.Module, int]:
    """A random torch MLP mixing layers with and without vi counterparts."""
    features = width = draw(st.integers(1, 4))
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 4))):
        choice = draw(st.sampled_from(["linear", "nobias", "gain", "norm", "tanh"]))
        if choice in ("linear", "nobias"):
            out = draw(st.integers(1, 4))
            layers.append(nn.Linear(width, out, bias=choice == "linear"))
            width = out
        elif choice == "gain":
            layers.append(_Gain(width))
        elif choice == "norm":
            layers.append(nn.LayerNorm(width))
        else:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers), features


@settings(max_examples=25, deadline=None, derandomize=True)
@given(torch_models(), st.integers(1, 3))
def test_converted_model_with_fixed_weights_is_the_model(
    case: tuple[nn.Module, int], samples: int
) -> None:
    """``vi.convert_to_vimodule(model, keep_weights=True,
    variational_distribution=NonBayesian())`` is the model for every particle
    (torch_blue's check of a conversion), whatever mix of layers it has."""
    import warnings

    from pyrolite_bnn import vi

    model, features = case
    x = torch.randn(5, features)
    with torch.no_grad():
        reference = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fan-in of 1-D weights
        vi.convert_to_vimodule(
            model,
            keep_weights=True,
            variational_distribution=vi.distributions.NonBayesian(),
        )
    with torch.no_grad():
        out = model(x, samples=samples)
    assert out.shape == (samples, *reference.shape)
    torch.testing.assert_close(out, reference.expand_as(out), rtol=1e-5, atol=1e-6)
