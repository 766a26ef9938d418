"""Monte-Carlo properties of the particle plate; tolerances from the standard error."""

from __future__ import annotations

import math

import pytest
import torch

import pyrolite_bnn as bnn

# |z| below 4.5 fails a correct implementation with probability ~7e-6 per check.
Z = 4.5


@pytest.mark.statistical
def test_linear_output_moments_match_closed_form() -> None:
    """y = W x + b with W ~ N(M, S^2): E y = M x + m_b, Var y = S^2 x^2 + s_b^2."""
    layer = bnn.VILinear(4, 3, variational=bnn.MeanFieldNormal(init_scale=0.3))
    with torch.no_grad():
        layer.posterior["weight"].rho_unconstrained.uniform_(-1.5, 0.5)
    x = torch.randn(2, 4)
    samples = 20_000
    with torch.no_grad():
        out = layer(x, samples=samples)  # (S, 2, 3)
        w = layer.posterior["weight"]
        b = layer.posterior["bias"]
        mean = x @ w.loc.T + b.loc
        var = (x**2) @ (w.scale() ** 2).T + b.scale() ** 2
    se_mean = (var / samples).sqrt()
    assert float(((out.mean(0) - mean).abs() / se_mean).max()) < Z
    # Var of the sample variance of a Gaussian: 2 var^2 / (S - 1).
    se_var = var * math.sqrt(2 / (samples - 1))
    assert float(((out.var(0) - var).abs() / se_var).max()) < Z


@pytest.mark.statistical
def test_particles_are_uncorrelated() -> None:
    layer = bnn.VILinear(
        1, 1, bias=False, variational=bnn.MeanFieldNormal(init_scale=1.0)
    )
    samples = 20_000
    with torch.no_grad():
        out = layer(torch.ones(1, 1), samples=samples).reshape(-1)
    centred = out - out.mean()
    lag1 = (centred[1:] * centred[:-1]).mean() / centred.var()
    assert abs(float(lag1)) < Z / math.sqrt(samples)


@pytest.mark.statistical
def test_conv_output_mean_matches_mean_weights() -> None:
    conv = bnn.VIConv2d(
        2, 3, 3, padding=1, variational=bnn.MeanFieldNormal(init_scale=0.2)
    )
    x = torch.randn(1, 2, 5, 5)
    samples = 4000
    with torch.no_grad():
        out = conv(x, samples=samples)[:, 0]
        w, b = conv.posterior["weight"], conv.posterior["bias"]
        mean = torch.nn.functional.conv2d(x, w.loc, b.loc, padding=1)[0]
        var = torch.nn.functional.conv2d(
            x**2, w.scale() ** 2, b.scale() ** 2, padding=1
        )[0]
    se = (var / samples).sqrt()
    assert float(((out.mean(0) - mean).abs() / se).max()) < Z
