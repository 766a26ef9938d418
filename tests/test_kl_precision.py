"""KL terms of half-precision networks are summed in float32.

A float16 sum overflows at 65504: at the default initialisation each weight
adds ~6.4 nats of KL, so a layer of ~10,000 weights gave an infinite loss with
finite gradients (a ``model.half()`` network of 100,000 weights: loss inf
against 13.17 in float32).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from unittest import mock

import numpy as np
import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from torch import nn
from torch.distributions import Normal, kl_divergence

import pyrolite_bnn as bnn
from pyrolite_bnn import vi
from pyrolite_bnn.distributions import priors
from pyrolite_bnn.distributions.variational import MeanFieldNormalPosterior
from pyrolite_bnn.record import LayerRecord, find_record
from pyrolite_bnn.vi.utils.use_norm_constants import normalised_densities

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


def _stored_parameters_kl(net: bnn.VIModule) -> torch.Tensor:
    """KL(q || p) in float64 of the network's stored (rounded) numbers."""
    with torch.no_grad():
        return _float64_kl(copy.deepcopy(net).double())


def _float64_kl(net: bnn.VIModule) -> torch.Tensor:
    """KL(q || p) of a float64 network (a copy of a half-precision one).

    Posterior means and rho (its scale: softplus or exp of it in float64), and
    every prior hyperparameter, are then exactly the stored numbers; each
    weight's KL comes from torch's closed forms
    (``kl_divergence`` of the Normal and the prior's own distribution: a
    learned scale is ``exp(log_scale)`` of the stored ``log_scale``).
    """
    total = torch.zeros((), dtype=torch.float64)
    for variable in net.random_variables():
        posterior = variable.layer_posterior
        assert isinstance(posterior, MeanFieldNormalPosterior)
        q = Normal(*posterior.normal_params())
        prior = variable.module.prior_distribution(variable.name).base_dist
        total = total + kl_divergence(q, prior).sum()
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


# Priors whose hyperparameters are not exact in half precision, or whose
# arithmetic rounds there: log(0.1) in bfloat16 is 0.0047 nats off, a learned
# scale exp(log_scale) of 0.3003 comes out 0.3008.
PRIORS: dict[str, Callable[[], object]] = {
    "normal": bnn.NormalPrior,
    "normal 0.1": lambda: bnn.NormalPrior(0.0, 0.1),
    "normal per row": lambda: {
        "weight": bnn.NormalPrior(0.0, torch.linspace(0.1, 0.5, 16).unsqueeze(-1)),
        "bias": bnn.NormalPrior(0.0, 0.3),
    },
    "learned 0.3": lambda: bnn.LearnedNormalPrior(init_scale=0.3),
    "learned per unit": lambda: bnn.LearnedNormalPrior(init_scale=0.3, per="unit"),
    "laplace": bnn.LaplacePrior,
    "laplace 0.1": lambda: bnn.LaplacePrior(scale=0.1),
}


def _float32_kl_rtol(weights: int) -> float:
    """Relative error bound of a KL of ``weights`` non-negative float32 terms.

    Each weight's term takes ~10 roundings (unit roundoff 2^-24) of numbers
    of about its own size, and torch's pairwise sum of ``n`` terms adds at
    most log2(n) more: (10 + log2 n) 2^-24 of the KL.
    """
    return (10 + math.log2(weights)) * 2.0**-24


@pytest.mark.parametrize("prior", sorted(PRIORS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_closed_form_kl_reads_the_priors_hyperparameters_in_float32(
    dtype: torch.dtype, prior: str
) -> None:
    """The priors' own arithmetic ran in the stored dtype: a LearnedNormalPrior's
    scale exp(log_scale) was rounded to bfloat16 (+28.4 nats of 85,708 for a
    VILinear(256, 64) with init_scale=0.3), and a LaplacePrior's closed form
    (torch's kl_divergence) took the posterior and the prior in bfloat16
    (-73.7 nats). Every prior's hyperparameters are read as float32 for the
    KL now: within float32 rounding of the float64 KL of the stored numbers."""
    torch.manual_seed(0)
    out_features = 16
    net = bnn.VILinear(256, out_features, prior=PRIORS[prior]()).to(dtype)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 10, kl="analytic")
    x = torch.randn(4, 256, dtype=dtype)
    with torch.no_grad():
        _, kl = loss_fn.terms(
            net(x, samples=2), torch.zeros(4, out_features, dtype=dtype)
        )
    assert kl.dtype == torch.float32
    rtol = _float32_kl_rtol(256 * out_features + out_features)
    torch.testing.assert_close(
        kl.double(), _stored_parameters_kl(net), rtol=rtol, atol=0.0
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_learned_prior_scale_gets_its_gradient(
    dtype: torch.dtype,
) -> None:
    """At the prior scale's optimum (where the gradient is a small difference of
    large sums) the gradient from the rounded scale was -220 instead of -248
    in bfloat16, and NaN in float16. It is the float64 gradient of the KL of
    the stored numbers now, rounded to the parameter's dtype (finfo.eps)."""
    torch.manual_seed(0)
    net = bnn.VILinear(256, 64, prior=bnn.LearnedNormalPrior(init_scale=0.3))
    names = ("weight", "bias")
    for name in names:
        moments = [t.detach() for t in net.posterior[name].normal_params()]
        net.prior[name].reset_to_optimum(*moments)
    net = net.to(dtype)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 10, kl="analytic")
    x, y = torch.randn(4, 256, dtype=dtype), torch.zeros(4, 64, dtype=dtype)
    _, kl = loss_fn.terms(net(x, samples=2), y)
    kl.backward()
    reference = copy.deepcopy(net).double()
    expected = torch.autograd.grad(
        _float64_kl(reference),
        [reference.prior[name].log_scale for name in names],
    )
    for name, grad in zip(names, expected, strict=True):
        got = net.prior[name].log_scale.grad
        assert got is not None
        assert got.dtype == dtype
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(got.double(), grad, rtol=eps, atol=0.0)


@pytest.mark.parametrize("divergence", [None, vi.NormalNormalDivergence])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_blue_analytical_kl_of_a_half_precision_network_is_float32(
    dtype: torch.dtype, divergence: type[vi.NormalNormalDivergence] | None
) -> None:
    """torch_blue's divergence module took the flattened half-precision
    parameters as they were: its per-weight KL and their sum were bfloat16
    (+63.6 nats of 3712 for a VILinear(256, 64) with a prior std of 0.1). The
    loss's own closed form (``divergence_type=None``) reads the priors in
    float32 as the record's does. Both within float32 rounding of the same
    loss on a float64 copy of the network."""
    torch.manual_seed(0)
    prior = vi.distributions.MeanFieldNormal(std=0.1)
    net = vi.VILinear(256, 64, prior=prior).to(dtype)
    values = []
    for model in (net, copy.deepcopy(net).double()):
        loss_fn = vi.AnalyticalKullbackLeiblerLoss(
            model,
            vi.distributions.MeanFieldNormal(),
            10,
            divergence_type=None if divergence is None else divergence(),
        )
        with torch.no_grad():
            values.append(loss_fn.prior_matching())
    assert values[0].dtype == torch.float32
    rtol = _float32_kl_rtol(256 * 64 + 64)
    torch.testing.assert_close(values[0].double(), values[1], rtol=rtol, atol=0.0)


MC_SAMPLES = 2000


@pytest.mark.statistical
@pytest.mark.parametrize("estimator", ["auto", "reparam"])
@pytest.mark.parametrize("prior", sorted(PRIORS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_monte_carlo_kl_of_a_half_precision_network_is_unbiased(
    dtype: torch.dtype, prior: str, estimator: str
) -> None:
    """Means of size ~1 are 0.008 apart in bfloat16, more than sigma = 1e-3:
    the rounded draws had lost their noise, and log q recomputed from them was
    biased by up to +0.5 nats per weight (+689 nats here in bfloat16, -89 in
    float16). The estimate now reads the noise drawn ("reparam": replayed for
    the weight and the bias; "auto": fresh, the layer sampled its outputs)
    and evaluates the densities in float32 with the priors' hyperparameters
    read as float32 (a NormalPrior(0, 0.1)'s log scale taken in bfloat16 had
    added 0.0047 nats per weight, +4.9 nats here, 9.6 standard errors).
    Reference: the exact KL in float64 of the same stored numbers. Per
    particle, log q - log p has variance ~n/2 over n weights (the -eps^2/2
    terms; the prior's terms add (mu sigma / s^2)^2 <= 0.01 per weight here),
    so the estimate's standard error is sqrt(n / (2 S)); tolerance 4 of it."""
    torch.manual_seed(0)
    net = bnn.VILinear(64, 16, estimator=estimator, prior=PRIORS[prior]())
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
    weights = 64 * 16 + 16
    tolerance = 4 * math.sqrt(weights / (2 * MC_SAMPLES))
    expected = _stored_parameters_kl(net)
    torch.testing.assert_close(kl.double(), expected, rtol=0.0, atol=tolerance)


def _quiet_network(dtype: torch.dtype) -> vi.VILinear:
    """A torch_blue layer under the hierarchical BasicQuietPrior, N(m, (r m)^2).

    Means ~N(1, 0.1), standard deviations 0.4 |m|: q is close to the prior
    given m, so the Monte-Carlo KL has a small standard error.
    """
    torch.manual_seed(0)
    prior = vi.distributions.BasicQuietPrior(std_ratio=0.5, mean_mean=1.0)
    net = vi.VILinear(64, 16, prior=prior)
    with torch.no_grad():
        for kind in ("weight", "bias"):
            mean = getattr(net, f"_{kind}_mean").normal_(1.0, 0.1)
            getattr(net, f"_{kind}_log_std").copy_(torch.log(0.4 * mean.abs()))
    return net.to(dtype)


def _quadrature_kl(net: vi.VILinear) -> float:
    """E_q[log q - log p] in float64 of the stored numbers, by Gauss-Hermite.

    The prior's own density (evaluated by a float64 copy of the network) at
    20 nodes per weight: exact for this prior, Normal in w given m.
    """
    reference = copy.deepcopy(net).double()
    nodes, weights = np.polynomial.hermite_e.hermegauss(20)
    weights = weights / math.sqrt(2 * math.pi)
    total = 0.0
    with torch.no_grad(), normalised_densities():
        for variable in reference.random_variables():
            posterior = variable.layer_posterior
            assert isinstance(posterior, MeanFieldNormalPosterior)
            loc, scale = posterior.normal_params()
            prior = variable.module.prior_distribution(variable.name)
            for node, weight in zip(nodes, weights, strict=True):
                total -= weight * float(prior.log_prob(loc + scale * node))
            total -= float(0.5 * torch.log(2 * math.pi * math.e * scale**2).sum())
    return total


@pytest.mark.statistical
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_monte_carlo_kl_of_a_half_precision_hierarchical_prior_is_unbiased(
    dtype: torch.dtype,
) -> None:
    """The hierarchical prior's density reads the posterior means: the prior
    built in float32 for the Monte-Carlo KL (Prior.full_precision) was called
    without them and raised ("not enough values to unpack"). The priors are
    read as float32 in place now, through the layer's own prior_distribution.
    Per particle, log q - log p = (sigma^2 / v - 1) eps^2 / 2 + const per
    weight (v = (r m)^2, sigma^2 / v = 0.64): variance 0.065 per weight, a
    standard error of sqrt(0.065 n / S); tolerance 4 of it."""
    net = _quiet_network(dtype)
    loss_fn = vi.KullbackLeiblerLoss(vi.distributions.MeanFieldNormal(), 10)
    x, y = torch.randn(4, 64, dtype=dtype), torch.zeros(4, 16, dtype=dtype)
    with torch.no_grad():
        _, kl = loss_fn.terms(net(x, samples=MC_SAMPLES), y)
    tolerance = 4 * math.sqrt(0.065 * (64 * 16 + 16) / MC_SAMPLES)
    assert float(kl) == pytest.approx(_quadrature_kl(net), abs=tolerance)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_forward_pass_keeps_no_noise_for_a_closed_form_kl(
    dtype: torch.dtype,
) -> None:
    """Every draw of a half-precision network kept its noise (and float32 sums
    of it): another S x weights tensor and two float32 temporaries per layer,
    also for the default closed-form KL, which never reads them (a bfloat16
    VILinear(2048, 2048), 16 particles: 1061 MiB of peak memory growth
    instead of 665). The draws save their random state instead; a
    Monte-Carlo KL replays the noise (the test above)."""
    torch.manual_seed(0)
    net = bnn.VILinear(64, 16, estimator="reparam").to(dtype)
    out = net(torch.randn(4, 64, dtype=dtype), samples=8)
    record = find_record(out)
    assert isinstance(record, LayerRecord)
    draws = record.draws
    assert draws.noises == [None, None]
    assert draws.noise_sums == [None, None]
    assert all(state is not None for state in draws.states)


@pytest.mark.parametrize("kl", ["auto", "mc"])
def test_a_half_precision_kl_reads_each_prior_value_once(kl: str) -> None:
    """With validation on, a prior's buffers are checked once per value (on
    an accelerator each check is a synchronisation). The KL reads float32
    copies of them, new at every call: only the stored values are checked,
    so later training steps read none."""
    net = bnn.VILinear(8, 4, prior=bnn.NormalPrior(0.0, 0.1)).to(torch.bfloat16)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 10, kl=kl)
    x, y = torch.randn(4, 8).bfloat16(), torch.zeros(4, 4).bfloat16()
    assert bnn.is_validation_enabled()
    loss_fn(net(x), y).backward()  # the first step checks them
    with mock.patch.object(priors, "_satisfies", wraps=priors._satisfies) as check:
        loss_fn(net(x), y).backward()
    assert check.call_count == 0
