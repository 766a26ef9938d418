"""Estimators ("reparam", "local", "flipout") agree in distribution and in expectation.

At fixed variational parameters every estimator gives each example's output the
same marginal distribution, so output means and variances agree within
Monte-Carlo error; the ELBO and its gradient agree in expectation. Tolerances:
|z| < 4.5 standard errors (a correct implementation fails a given check with
probability ~7e-6).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pyrolite_bnn as bnn

Z = 4.5
ESTIMATORS = ["reparam", "local", "flipout"]


def _widen(module: nn.Module) -> None:
    """Posterior std ~0.3-0.7 so that weight noise is not negligible."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("rho_unconstrained"):
                p.uniform_(-1.0, 0.0)


def _layer(kind: str, estimator: str) -> bnn.VIModule:
    torch.manual_seed(0)  # same variational parameters for every estimator
    if kind == "linear":
        layer: bnn.VIModule = bnn.VILinear(5, 3, estimator=estimator)
    else:
        layer = bnn.VIConv2d(2, 3, 3, padding=1, estimator=estimator)
    _widen(layer)
    return layer


def _input(kind: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    shape = (4, 5) if kind == "linear" else (2, 2, 4, 4)
    return torch.randn(*shape, generator=gen)


@pytest.mark.statistical
@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("estimator", ["local", "flipout"])
def test_output_moments_match_reparam(kind: str, estimator: str) -> None:
    samples = 20_000
    x = _input(kind)
    with torch.no_grad():
        ref = _layer(kind, "reparam")(x, samples=samples)
        out = _layer(kind, estimator)(x, samples=samples)
    assert out.shape == ref.shape
    var = ref.var(0)
    se_mean = (2 * var / samples).sqrt()  # difference of two independent means
    assert float(((out.mean(0) - ref.mean(0)).abs() / se_mean).max()) < Z
    # Var of a Gaussian sample variance: 2 var^2 / (n - 1); two samples -> x2.
    se_var = var * math.sqrt(4 / (samples - 1))
    assert float(((out.var(0) - var).abs() / se_var).max()) < Z


@pytest.mark.statistical
@pytest.mark.parametrize("estimator", ["local", "flipout"])
def test_hidden_layer_with_folded_input(estimator: str) -> None:
    """Second layer: inputs already differ per particle (folded layout)."""
    samples = 20_000
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))

    def net(est: str) -> bnn.VISequential:
        torch.manual_seed(0)
        model = bnn.VISequential(
            bnn.VILinear(4, 4, estimator=est),
            nn.Tanh(),
            bnn.VILinear(4, 2, estimator=est),
        )
        _widen(model)
        return model

    with torch.no_grad():
        ref = net("reparam")(x, samples=samples)
        out = net(estimator)(x, samples=samples)
    se = (ref.var(0) / samples + out.var(0) / samples).sqrt()
    assert float(((out.mean(0) - ref.mean(0)).abs() / se).max()) < Z


@pytest.mark.statistical
@pytest.mark.parametrize("estimator", ["local", "flipout"])
def test_elbo_and_gradient_agree_in_expectation(estimator: str) -> None:
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(3))
    y = torch.randn(16, generator=torch.Generator().manual_seed(4))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.5), 100)
    repeats, samples = 200, 50

    def estimates(est: str) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        layer = bnn.VILinear(3, 1, estimator=est)
        _widen(layer)
        params = list(layer.parameters())
        losses, grads = [], []
        for _ in range(repeats):
            loss = loss_fn(layer(x, samples=samples), y)
            grads.append(
                torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
            )
            losses.append(loss.detach())
        return torch.stack(losses), torch.stack(grads)

    loss_ref, grad_ref = estimates("reparam")
    loss_est, grad_est = estimates(estimator)
    se = ((loss_ref.var() + loss_est.var()) / repeats).sqrt()
    assert abs(float(loss_est.mean() - loss_ref.mean())) < Z * float(se)
    se_g = ((grad_ref.var(0) + grad_est.var(0)) / repeats).sqrt().clamp_min(1e-8)
    assert float(((grad_est.mean(0) - grad_ref.mean(0)).abs() / se_g).max()) < Z


def test_local_gradient_has_lower_variance_than_reparam() -> None:
    """The point of local reparameterisation: per-example noise averages out."""
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(5))
    y = torch.randn(64, generator=torch.Generator().manual_seed(6))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.5), 1000)

    def grad_var(est: str) -> float:
        torch.manual_seed(0)
        layer = bnn.VILinear(8, 1, estimator=est)
        _widen(layer)
        weight_loc = layer.posterior["weight"].loc_unconstrained
        grads = []
        for _ in range(200):
            loss = loss_fn(layer(x, samples=1), y)
            grads.append(torch.autograd.grad(loss, weight_loc)[0].reshape(-1))
        return float(torch.stack(grads).var(0).sum())

    assert grad_var("local") < grad_var("reparam")


def test_auto_is_local_for_linear_and_reparam_for_conv() -> None:
    assert bnn.VILinear(2, 2).uses_moments()
    assert not bnn.VIConv2d(1, 1, 3).uses_moments()
    assert not bnn.VILinear(2, 2, variational=bnn.PointMass()).uses_moments()
    assert bnn.VIConv1d(1, 1, 3, estimator="flipout").uses_moments()


def test_moment_estimators_need_mean_field_normal() -> None:
    with pytest.raises(ValueError, match="needs the mean-field Normal posterior"):
        bnn.VILinear(2, 2, estimator="local", variational=bnn.PointMass())


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_kl_is_closed_form_for_every_estimator(estimator: str) -> None:
    layer = bnn.VILinear(3, 2, estimator=estimator)
    out = layer(torch.randn(4, 3))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 10)
    loss_fn(out, torch.zeros(4, 2))
    assert out.bnn_record.analytic_sites == ["weight", "bias"]


def test_local_layer_with_prior_without_closed_form_uses_mc_kl() -> None:
    layer = bnn.VILinear(3, 2, prior=bnn.StudentTPrior(3.0), estimator="local")
    out = layer(torch.randn(4, 3))
    bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 10)(out, torch.zeros(4, 2))
    assert out.bnn_record.mc_sites == ["weight", "bias"]


def test_pyro_inference_ignores_moment_estimators() -> None:
    """Under SVI the network is a Pyro model with weight sites, any estimator."""
    import pyro

    net = bnn.VILinear(3, 2, estimator="local")
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 10)
    trace = pyro.poutine.trace(loss_fn.pyro_model(net)).get_trace(torch.randn(4, 3))
    assert trace.nodes["weight"]["value"].shape == (10, 1, 2, 3)
