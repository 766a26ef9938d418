from __future__ import annotations

from typing import Any

import pytest
import torch

import pyrolite_bnn as bnn


def test_categorical_log_prob() -> None:
    logits = torch.randn(4, 3, 5)
    y = torch.tensor([0, 4, 2])
    d, target = bnn.Categorical().observe(logits, y)
    expected = torch.log_softmax(logits, -1)[:, torch.arange(3), y]
    torch.testing.assert_close(d.log_prob(target), expected)


@pytest.mark.parametrize(
    ("out_shape", "y_shape"),
    [((4, 3), (3,)), ((4, 3, 1), (3,)), ((4, 3), (3, 1)), ((4, 3, 1), (3, 1))],
)
def test_normal_scalar_target_layouts(
    out_shape: tuple[int, ...], y_shape: tuple[int, ...]
) -> None:
    out, y = torch.randn(*out_shape), torch.randn(*y_shape)
    d, target = bnn.Normal(scale=0.5).observe(out, y)
    assert d.batch_shape == (4, 3)
    expected = torch.distributions.Normal(out.reshape(4, 3), 0.5).log_prob(y.reshape(3))
    torch.testing.assert_close(d.log_prob(target), expected)


def test_normal_multi_output() -> None:
    out, y = torch.randn(4, 3, 2), torch.randn(3, 2)
    d, target = bnn.Normal(scale=1.0).observe(out, y)
    assert d.batch_shape == (4, 3)
    assert d.event_shape == (2,)
    torch.testing.assert_close(
        d.log_prob(target), torch.distributions.Normal(out, 1.0).log_prob(y).sum(-1)
    )


def test_learned_noise_scale_is_a_parameter() -> None:
    likelihood = bnn.Normal(init_scale=0.3)
    (param,) = likelihood.parameters()
    torch.testing.assert_close(likelihood.noise_scale().detach(), torch.tensor(0.3))
    loss_fn = bnn.KullbackLeiblerLoss(likelihood, 10)
    assert [p is param for p in loss_fn.parameters()] == [True]


def test_heteroscedastic() -> None:
    out = torch.randn(4, 3, 2)
    y = torch.randn(3)
    d, target = bnn.HeteroscedasticNormal().observe(out, y)
    scale = torch.nn.functional.softplus(out[..., 1]) + 1e-6
    torch.testing.assert_close(
        d.log_prob(target), torch.distributions.Normal(out[..., 0], scale).log_prob(y)
    )
    with pytest.raises(ValueError, match=r"expects output \(S, B, \.\.\., 2\)"):
        bnn.HeteroscedasticNormal()(torch.randn(4, 3, 3))


def test_bernoulli() -> None:
    out = torch.randn(4, 3, 1)
    y = torch.tensor([0, 1, 1])
    d, target = bnn.Bernoulli().observe(out, y)
    expected = torch.distributions.Bernoulli(logits=out.squeeze(-1)).log_prob(y.float())
    torch.testing.assert_close(d.log_prob(target), expected)
    with pytest.raises(ValueError, match="Bernoulli targets must be 0 or 1"):
        bnn.Bernoulli().observe(out, torch.tensor([0, 2, 1]))


def test_bad_scale() -> None:
    with pytest.raises(ValueError, match="noise scale must be a positive float"):
        bnn.Normal(scale=-1.0)


def test_student_t_log_prob_and_moments() -> None:
    out, y = torch.randn(4, 3, 1), torch.randn(3)
    likelihood = bnn.StudentT(df=5.0, scale=0.5)
    d, target = likelihood.observe(out, y)
    expected = torch.distributions.StudentT(5.0, out.squeeze(-1), 0.5).log_prob(y)
    torch.testing.assert_close(d.log_prob(target), expected)
    loc, var = likelihood.moments(out)
    torch.testing.assert_close(loc, out.squeeze(-1))
    torch.testing.assert_close(var, torch.full((4, 3), 0.25 * 5 / 3))
    assert bool(torch.isinf(bnn.StudentT(df=2.0, scale=1.0).moments(out)[1]).all())
    with pytest.raises(ValueError, match="StudentT df must be a positive float"):
        bnn.StudentT(df=0.0)


def test_student_t_learned_scale_is_a_parameter() -> None:
    (param,) = bnn.StudentT().parameters()
    assert param.requires_grad


def test_poisson() -> None:
    out = torch.randn(4, 3)
    y = torch.tensor([0, 2, 5])
    d, target = bnn.Poisson().observe(out, y)
    torch.testing.assert_close(
        d.log_prob(target), torch.distributions.Poisson(out.exp()).log_prob(y.float())
    )
    mean, var = bnn.Poisson().moments(out)
    torch.testing.assert_close(mean, out.exp())
    torch.testing.assert_close(var, out.exp())
    with pytest.raises(ValueError, match="non-negative integer counts"):
        bnn.Poisson().observe(out, torch.tensor([0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match="non-negative integer counts"):
        bnn.Poisson().observe(out, torch.tensor([-1, 1, 2]))


def test_non_gaussian_intervals_are_refused() -> None:
    from pyrolite_bnn.predict import Prediction

    pred = Prediction(torch.randn(5, 3), bnn.Poisson())
    assert pred.mean.shape == (3,)
    with pytest.raises(NotImplementedError, match="Gaussian likelihoods"):
        pred.interval(0.9)


# ------------------------------------------------------------------ summaries
def test_class_probs() -> None:
    logits = torch.randn(4, 3, 5)
    torch.testing.assert_close(
        bnn.Categorical().class_probs(logits), logits.softmax(-1)
    )
    out = torch.randn(4, 3, 1)
    p1 = torch.sigmoid(out.squeeze(-1))
    probs = bnn.Bernoulli().class_probs(out)
    torch.testing.assert_close(probs, torch.stack([1 - p1, p1], dim=-1))
    multi_label = bnn.Bernoulli().class_probs(torch.randn(4, 3, 2))
    assert multi_label.shape == (4, 3, 2, 2)


@pytest.mark.parametrize(
    "likelihood",
    [bnn.Normal(scale=1.0), bnn.StudentT(), bnn.Poisson(), bnn.HeteroscedasticNormal()],
    ids=lambda d: type(d).__name__,
)
def test_regression_likelihoods_have_no_class_probs(
    likelihood: bnn.PredictiveDistribution,
) -> None:
    assert not likelihood.is_classification
    with pytest.raises(AttributeError, match="need a classification likelihood"):
        likelihood.class_probs(torch.zeros(4, 3, 2))


@pytest.mark.parametrize(
    "likelihood", [bnn.Categorical(), bnn.Bernoulli()], ids=lambda d: type(d).__name__
)
def test_classification_likelihoods_summaries(
    likelihood: bnn.PredictiveDistribution,
) -> None:
    out = torch.randn(6, 3, 2)
    assert likelihood.is_classification
    torch.testing.assert_close(
        likelihood.predictive_mean(out), likelihood.class_probs(out).mean(0)
    )
    with pytest.raises(AttributeError, match="need a regression likelihood"):
        likelihood.moments(out)
    with pytest.raises(NotImplementedError, match="Gaussian likelihoods"):
        likelihood.quantile(out, 0.5)


@pytest.mark.parametrize(
    "likelihood",
    [bnn.Normal(scale=0.5), bnn.StudentT(scale=0.5), bnn.Poisson()],
    ids=lambda d: type(d).__name__,
)
def test_predictive_mean_is_the_mean_of_particle_means(
    likelihood: bnn.PredictiveDistribution,
) -> None:
    out = torch.randn(6, 3, 1)
    torch.testing.assert_close(
        likelihood.predictive_mean(out), likelihood.moments(out)[0].mean(0)
    )


def test_gaussian_quantiles_of_one_particle() -> None:
    # One particle: the quantile is loc + z_q * sigma (z_0.975 = 1.959964).
    out = torch.tensor([[[1.0, 0.0]]])  # HeteroscedasticNormal: sigma = softplus(0)
    sigma = float(torch.nn.functional.softplus(torch.tensor(0.0)))
    upper = bnn.HeteroscedasticNormal(min_scale=0.0).quantile(out, 0.975)
    torch.testing.assert_close(upper, torch.tensor([1.0 + 1.959964 * sigma]))
    upper = bnn.Normal(scale=2.0).quantile(torch.ones(1, 2, 1), 0.975)
    torch.testing.assert_close(upper, torch.full((2,), 1.0 + 1.959964 * 2.0))


def test_student_t_quantiles_are_refused() -> None:
    with pytest.raises(NotImplementedError, match="Gaussian likelihoods"):
        bnn.StudentT().quantile(torch.zeros(4, 3), 0.5)


def test_categorical_log_likelihood_is_the_distributions_log_prob() -> None:
    """The fast log-softmax path equals ``Categorical(logits).log_prob`` (with
    any dimensions after the batch summed), and a subclass that redefines
    ``distribution`` keeps it."""
    torch.manual_seed(0)
    likelihood = bnn.Categorical()
    for logits, labels in (
        (torch.randn(4, 3, 7) * 5, torch.randint(0, 7, (3,))),
        (torch.randn(4, 3, 5, 7), torch.randint(0, 7, (3, 5))),
    ):
        expected = likelihood.distribution(logits).log_prob(labels)
        got = likelihood.log_likelihood(logits, labels)
        assert got.shape == (4, 3)
        torch.testing.assert_close(got, expected)

    class FromProbs(bnn.Categorical):
        def distribution(self, output: torch.Tensor) -> Any:
            return torch.distributions.Categorical(probs=output)

    probs = torch.rand(2, 3, 4)
    probs = probs / probs.sum(-1, keepdim=True)
    labels = torch.tensor([0, 3, 1])
    torch.testing.assert_close(
        FromProbs().log_likelihood(probs, labels),
        torch.distributions.Categorical(probs=probs).log_prob(labels),
    )
