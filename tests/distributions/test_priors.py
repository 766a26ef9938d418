from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

import pyrolite_bnn as bnn


@pytest.mark.parametrize(
    ("prior", "reference"),
    [
        (bnn.NormalPrior(0.5, 2.0), torch.distributions.Normal(0.5, 2.0)),
        (bnn.LaplacePrior(0.0, 0.3), torch.distributions.Laplace(0.0, 0.3)),
        (bnn.StudentTPrior(4.0, 0.0, 0.5), torch.distributions.StudentT(4.0, 0.0, 0.5)),
        (
            bnn.DistributionPrior(torch.distributions.Cauchy(0.0, 0.2)),
            torch.distributions.Cauchy(0.0, 0.2),
        ),
    ],
)
def test_log_density_matches_reference(
    prior: bnn.Prior, reference: torch.distributions.Distribution
) -> None:
    value = torch.randn(3, 4)
    d = prior((3, 4))
    assert d.event_shape == (3, 4)
    torch.testing.assert_close(
        d.log_prob(value), reference.log_prob(value).sum(), rtol=1e-5, atol=1e-5
    )


def test_scale_mixture_density() -> None:
    prior = bnn.ScaleMixtureNormalPrior(pi=0.25, scale1=1.0, scale2=0.1)
    value = torch.tensor([0.0, 0.5, -2.0])
    expected = torch.log(
        0.25 * torch.distributions.Normal(0.0, 1.0).log_prob(value).exp()
        + 0.75 * torch.distributions.Normal(0.0, 0.1).log_prob(value).exp()
    ).sum()
    torch.testing.assert_close(
        prior((3,)).log_prob(value), expected, rtol=1e-5, atol=1e-5
    )


def test_callable_prior() -> None:
    prior = bnn.CallablePrior(lambda shape: dist.Normal(torch.zeros(shape), 3.0))
    d = prior((2, 2))
    assert d.event_shape == (2, 2)
    torch.testing.assert_close(
        d.log_prob(torch.zeros(2, 2)),
        4 * torch.distributions.Normal(0.0, 3.0).log_prob(torch.tensor(0.0)),
    )


def test_any_distribution_or_callable_is_accepted_by_layers() -> None:
    layer = bnn.VILinear(2, 2, prior=torch.distributions.Laplace(0.0, 0.5))
    assert isinstance(layer.prior["weight"], bnn.DistributionPrior)
    assert "prior.weight.scale" in layer.state_dict()
    layer2 = bnn.VILinear(2, 2, prior=lambda shape: dist.Normal(0.0, 0.1).expand(shape))
    assert isinstance(layer2.prior["weight"], bnn.CallablePrior)
    assert layer2(torch.randn(3, 2)).shape == (10, 3, 2)


def test_hyperparameters_are_buffers_that_follow_dtype() -> None:
    prior = bnn.NormalPrior(0.0, 0.5)
    assert set(dict(prior.named_buffers())) == {"loc", "scale"}
    prior.double()
    assert prior((2,)).base_dist.scale.dtype == torch.float64


def test_layers_do_not_share_prior_modules() -> None:
    shared = bnn.NormalPrior(0.0, 0.5)
    a, b = bnn.VILinear(2, 2, prior=shared), bnn.VILinear(2, 2, prior=shared)
    with torch.no_grad():
        a.prior["weight"].scale.fill_(9.0)
    assert float(b.prior["weight"].scale) == 0.5


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: bnn.NormalPrior(0.0, -1.0),
            "NormalPrior scale must be positive and finite, got -1.0",
        ),
        (lambda: bnn.NormalPrior(float("nan"), 1.0), "NormalPrior loc must be finite"),
        (lambda: bnn.LaplacePrior(0.0, 0.0), "LaplacePrior scale must be positive"),
        (lambda: bnn.StudentTPrior(-2.0), "StudentTPrior df must be positive"),
        (lambda: bnn.ScaleMixtureNormalPrior(pi=1.5), r"pi must be in \(0, 1\)"),
        (
            lambda: bnn.VILinear(2, 2, prior=bnn.NormalPrior(0.0, -0.1)),
            "scale must be positive",
        ),
    ],
)
def test_bad_hyperparameters(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_prior_type() -> None:
    with pytest.raises(TypeError, match="prior must be a bnn Prior"):
        bnn.VILinear(2, 2, prior=3.0)
