"""KL terms of half-precision networks are summed in float32.

A float16 sum overflows at 65504: at the default initialisation each weight
adds ~6.4 nats of KL, so a layer of ~10,000 weights gave an infinite loss with
finite gradients (a ``model.half()`` network of 100,000 weights: loss inf
against 13.17 in float32).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from pyro.infer.autoguide import AutoNormal
from torch import nn

import pyrolite_bnn as bnn

DATASET_SIZE = 60_000


def _network() -> bnn.VISequential:
    torch.manual_seed(0)
    return bnn.VISequential(bnn.VILinear(1000, 100), nn.ReLU(), bnn.VILinear(100, 10))


def _kl(net: nn.Module, dtype: torch.dtype, kl: str) -> float:
    """The loss's KL / N on one batch, the network cast to ``dtype``."""
    net = copy.deepcopy(net).to(dtype)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), DATASET_SIZE, kl=kl)
    x = torch.randn(16, 1000, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % 10
    torch.manual_seed(2)
    loss = loss_fn(net(x.to(dtype)), y)
    assert bool(torch.isfinite(loss))
    assert loss.dtype == torch.float32 if dtype != torch.float64 else torch.float64
    return float(loss_fn.last_kl)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kl", ["auto", "mc"])
def test_kl_of_a_half_precision_network_is_that_of_float32(
    dtype: torch.dtype, kl: str
) -> None:
    """Closed form and Monte Carlo: within 1 % of the float32 network's (the
    parameters and draws rounded to half precision), not infinite."""
    net = _network()
    assert _kl(net, dtype, kl) == pytest.approx(_kl(net, torch.float32, kl), rel=0.01)


def test_kl_of_a_half_precision_network_with_an_autoguide_is_finite() -> None:
    """An assigned Pyro guide (the KL from its trace): within 1 % of float32."""
    net = _network()
    net.guide = AutoNormal(net.prior_model, init_loc_fn=net.init_loc_fn)
    half = _kl(net, torch.float16, "auto")
    assert half == pytest.approx(_kl(net, torch.float32, "auto"), rel=0.01)


def test_fit_names_float16_parameters_when_training_fails() -> None:
    """Adam's eps=1e-8 is 0 in float16: the failure says why."""
    net = _network().half()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), DATASET_SIZE)
    x = torch.randn(16, 1000).half()
    y = torch.arange(16) % 10
    with pytest.raises(FloatingPointError, match="float16 parameters"):
        bnn.fit(net, loss_fn, [(x, y)], epochs=1, progress=False)


@pytest.mark.parametrize("guide", ["generated", "AutoNormal"])
def test_log_probs_of_a_half_precision_network_are_float32_sums(guide: str) -> None:
    """torch_blue's ``return_log_probs``: per-particle ``log p(w)``, ``log q(w)``
    of a float16 network within 0.5 % of float32's (its rounded parameters),
    not infinite."""
    net = _network()
    if guide == "AutoNormal":
        net.guide = AutoNormal(net.prior_model, init_loc_fn=net.init_loc_fn)
    net.return_log_probs = True
    x = torch.randn(4, 1000, generator=torch.Generator().manual_seed(1))
    values = []
    for dtype in (torch.float32, torch.float16):
        torch.manual_seed(3)
        values.append(copy.deepcopy(net).to(dtype)(x.to(dtype), samples=3).log_probs)
    assert bool(torch.isfinite(values[1]).all())
    torch.testing.assert_close(values[1], values[0], rtol=5e-3, atol=0.0)


def _stored_parameters_kl(net: nn.Module) -> torch.Tensor:
    """The closed-form KL in float64 of the network's stored (rounded) parameters."""
    params, buffers = dict(net.named_parameters()), dict(net.named_buffers())
    total = torch.zeros((), dtype=torch.float64)
    for name, loc in params.items():
        if not name.endswith(".loc_unconstrained"):
            continue
        base = name.removesuffix(".loc_unconstrained")
        mu = loc.double()
        sigma = F.softplus(params[base + ".rho_unconstrained"].double())
        prior = base.replace("posterior", "prior")
        m, s = buffers[prior + ".loc"].double(), buffers[prior + ".scale"].double()
        total += (torch.log(s / sigma) + (sigma**2 + (mu - m) ** 2) / (2 * s**2)).sum()
        total -= 0.5 * mu.numel()
    return total


@pytest.mark.parametrize("spread", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_closed_form_kl_of_a_half_precision_network_is_that_of_its_parameters(
    dtype: torch.dtype, spread: bool
) -> None:
    """Each weight's term was computed from the scale softplus(rho) rounded to
    bfloat16 (8 bits): 2.4e-4 of the KL off for equal rho (the rounding does not
    average out). The terms are float32 now, and float32 sums of ~10^5 terms
    are good to ~1e-7: within 1e-6 of the float64 KL of the same stored
    parameters."""
    torch.manual_seed(0)
    net = bnn.VISequential(bnn.VILinear(300, 300), nn.ReLU(), bnn.VILinear(300, 3))
    if spread:
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.endswith("rho_unconstrained"):
                    p.add_(torch.randn_like(p), alpha=0.5)
    net = net.to(dtype)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 1, kl="analytic")
    x = torch.randn(4, 300, dtype=dtype)
    with torch.no_grad():
        _, kl = loss_fn.terms(net(x, samples=2), torch.zeros(4, dtype=torch.long))
    assert kl.dtype == torch.float32
    expected = _stored_parameters_kl(net)
    torch.testing.assert_close(kl.double(), expected, rtol=1e-6, atol=0.0)


def _folded_mean(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E|w| for w ~ N(mu, sigma^2)."""
    z = mu / sigma
    normal = torch.distributions.Normal(0.0, 1.0)
    density = torch.exp(normal.log_prob(z))
    return sigma * 2 * density + mu * (1 - 2 * normal.cdf(-z))


def _stored_parameters_laplace_kl(net: nn.Module) -> torch.Tensor:
    """KL(N(mu, sigma^2) || Laplace(m, b)) in float64 of the stored parameters:
    -log(2 pi e sigma^2) / 2 + log(2 b) + E|w - m| / b per weight."""
    params, buffers = dict(net.named_parameters()), dict(net.named_buffers())
    total = torch.zeros((), dtype=torch.float64)
    for name in ("weight", "bias"):
        mu = params[f"posterior.{name}.loc_unconstrained"].double()
        sigma = F.softplus(params[f"posterior.{name}.rho_unconstrained"].double())
        m = buffers[f"prior.{name}.loc"].double()
        b = buffers[f"prior.{name}.scale"].double()
        entropy = 0.5 * torch.log(2 * math.pi * math.e * sigma**2)
        total += (-entropy + torch.log(2 * b) + _folded_mean(mu - m, sigma) / b).sum()
    return total


MC_SAMPLES = 2000


@pytest.mark.statistical
@pytest.mark.parametrize("estimator", ["auto", "reparam"])
@pytest.mark.parametrize("prior", ["normal", "laplace"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_monte_carlo_kl_of_a_half_precision_network_is_unbiased(
    dtype: torch.dtype, prior: str, estimator: str
) -> None:
    """Means of size ~1 are 0.008 apart in bfloat16, more than sigma = 1e-3:
    the rounded draws had lost their noise, and log q recomputed from them was
    biased by up to +0.5 nats per weight (+689 nats here in bfloat16, -89 in
    float16). The estimate now reads the noise drawn ("reparam": replayed for
    the weight, kept for the bias; "auto": fresh, the layer sampled its
    outputs) and evaluates the densities in float32. Reference: the exact KL
    in float64 of the same stored parameters (Normal prior: closed form;
    Laplace: -log(2 pi e sigma^2)/2 + log 2b + E|w - m|/b). Per particle,
    log q - log p has variance ~n/2 over n weights (the -eps^2/2 terms), so
    the estimate's standard error is sqrt(n / (2 S)); tolerance 4.5 of it."""
    torch.manual_seed(0)
    laplace = prior == "laplace"
    net = bnn.VILinear(
        64, 16, estimator=estimator, prior=bnn.LaplacePrior() if laplace else None
    )
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("loc_unconstrained"):
                p.normal_(0.0, 1.0)
    net = net.to(dtype)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 10, kl="mc")
    x = torch.randn(4, 64, dtype=dtype)
    with torch.no_grad():
        out = net(x, samples=MC_SAMPLES)
        _, kl = loss_fn.terms(out, torch.zeros(4, 16, dtype=dtype))
    expected = (
        _stored_parameters_laplace_kl(net) if laplace else _stored_parameters_kl(net)
    )
    weights = 64 * 16 + 16
    tolerance = 4.5 * math.sqrt(weights / (2 * MC_SAMPLES))
    torch.testing.assert_close(kl.double(), expected, rtol=0.0, atol=tolerance)
