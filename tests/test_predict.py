from __future__ import annotations

import math

import pytest
import torch

import pyrolite_bnn as bnn
from pyrolite_bnn.predict import Prediction


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


def test_predict_end_to_end() -> None:
    net = bnn.VISequential(bnn.VILinear(2, 8), torch.nn.Tanh(), bnn.VILinear(8, 1))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 100)
    x = torch.randn(10, 2)
    pred = bnn.predict(net, x, loss_fn.predictive, samples=40, batch_size=3)
    assert pred.samples.shape == (40, 10, 1)
    assert pred.mean.shape == (10,)
    assert not pred.variance.requires_grad  # summaries carry no graph
    lower, upper = pred.interval(0.9)
    assert bool((lower < pred.mean).all())
    assert bool((upper > pred.mean).all())


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
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        bnn.predict(net, torch.randn(2, 3), bnn.Categorical(), batch_size=0)
    with pytest.raises(TypeError, match=r"predict needs a bnn\.VIModule"):
        bnn.predict(torch.nn.Linear(3, 2), torch.randn(2, 3), bnn.Categorical())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
        Prediction(torch.zeros(2, 3), bnn.Normal(scale=1.0)).interval(1.5)
    with pytest.raises(AttributeError, match="classification likelihood"):
        _ = Prediction(torch.zeros(2, 3), bnn.Normal(scale=1.0)).probs


def test_each_particle_is_one_network() -> None:
    """Even with the local estimator (training default), a predictive particle is
    one draw of all weights: identical inputs get identical outputs."""
    net = bnn.VILinear(3, 2, estimator="local")
    x = torch.randn(1, 3).expand(4, 3)
    pred = bnn.predict(net, x, bnn.Categorical(), samples=8)
    torch.testing.assert_close(pred.samples[:, 1:], pred.samples[:, :1].expand(8, 3, 2))
    assert not torch.allclose(pred.samples[0], pred.samples[1])  # particles differ
