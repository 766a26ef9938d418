"""The loss equals Pyro's ELBOs on the same model, guide and random draws."""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import re
import warnings
import weakref
from typing import Any

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, Predictive, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal
from pyro.infer.mcmc.util import initialize_model
from torch import Tensor, nn
from torch.distributions import kl_divergence

import pyrolite_bnn as bnn
from pyrolite_bnn import vi
from pyrolite_bnn._decay_watch import PENDING_CALLS

N = 200


def _net(prior: object = None) -> bnn.VISequential:
    # "reparam" draws weights, as Pyro's traced guide does: the identity with
    # Pyro's ELBOs holds draw for draw. ("local" agrees in expectation only.)
    return bnn.VISequential(
        bnn.VILinear(3, 8, prior=prior, estimator="reparam"),
        nn.Tanh(),
        bnn.VILinear(8, 4, prior=prior, estimator="reparam"),
    )


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(16, 3), torch.randint(0, 4, (16,))


@pytest.mark.parametrize(
    ("kl", "elbo"),
    [
        ("mc", Trace_ELBO()),
        ("analytic", TraceMeanField_ELBO()),
        ("auto", TraceMeanField_ELBO()),
    ],
)
def test_equals_pyro_elbo(kl: str, elbo: pyro.infer.ELBO) -> None:
    net = _net()
    with torch.no_grad():  # make the posterior wide enough that KL terms matter
        for name, p in net.named_parameters():
            if name.endswith("rho_unconstrained"):
                p.fill_(-1.0)
    x, y = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, kl=kl)  # type: ignore[arg-type]
    pyro.set_rng_seed(3)
    ours = loss_fn(net(x, samples=5), y)
    pyro.set_rng_seed(3)
    theirs = (
        elbo.differentiable_loss(loss_fn.pyro_model(net), net.guide, x, y, samples=5)
        / N
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    # Gradients agree too.
    g_ours = torch.autograd.grad(ours, list(net.parameters()))
    pyro.set_rng_seed(3)
    theirs = (
        elbo.differentiable_loss(loss_fn.pyro_model(net), net.guide, x, y, samples=5)
        / N
    )
    g_theirs = torch.autograd.grad(theirs, list(net.parameters()))
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_analytic_kl_equals_closed_form_sum() -> None:
    net = _net(prior=bnn.NormalPrior(0.1, 0.7))
    x, y = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, kl="analytic")
    loss_fn(net(x), y)
    expected = torch.zeros(())
    for v in net.random_variables():
        post = v.module.posterior[v.name]
        q = torch.distributions.Normal(post.loc, post.scale())
        p = torch.distributions.Normal(0.1, 0.7)
        expected = expected + kl_divergence(q, p).sum()
    torch.testing.assert_close(
        loss_fn.last_kl * N, expected.detach(), rtol=1e-5, atol=1e-4
    )


def test_data_term_is_mean_of_log_likelihoods() -> None:
    """E_q log p(y|w) (mean of logs) -- not torch_blue's log of the mean."""
    net = _net()
    x, y = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    out = net(x, samples=6)
    loss_fn(out, y)
    log_lik = torch.distributions.Categorical(logits=out).log_prob(y)  # (S, B)
    expected = -(log_lik.mean(0).sum() * N / 16) / N
    torch.testing.assert_close(
        loss_fn.last_nll, expected.detach(), rtol=1e-6, atol=1e-6
    )


def test_auto_kl_is_per_site() -> None:
    layer_a = bnn.VILinear(3, 4, prior=bnn.NormalPrior())
    layer_b = bnn.VILinear(4, 2, prior=bnn.StudentTPrior(3.0, 0.0, 1.0))
    net = bnn.VISequential(layer_a, nn.ReLU(), layer_b)
    x, y = _data()
    out = net(x)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, kl="auto")
    loss_fn(out, y[:16] % 2)
    record = out.bnn_record
    assert record.analytic_sites == ["0.weight", "0.bias"]
    assert record.mc_sites == ["2.weight", "2.bias"]
    with pytest.raises(
        ValueError,
        match=r"kl='analytic' but site '2.weight' has no closed-form KL.*StudentT",
    ):
        bnn.KullbackLeiblerLoss(bnn.Categorical(), N, kl="analytic")(net(x), y % 2)


def test_reduction_and_heat() -> None:
    net = _net()
    x, y = _data()
    mean = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    total = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, reduction="sum")
    cold = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, heat=0.1)
    pyro.set_rng_seed(1)
    a = mean(net(x), y)
    pyro.set_rng_seed(1)
    b = total(net(x), y)
    pyro.set_rng_seed(1)
    c = cold(net(x), y)
    torch.testing.assert_close(a * N, b, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(
        c, cold.last_nll + 0.1 * cold.last_kl, rtol=1e-6, atol=1e-6
    )


def test_loss_scale_is_per_example() -> None:
    """-ELBO / N is on the cross-entropy scale (not N * NLL: torch_blue W9)."""
    net = _net()
    x, y = _data()
    loss = bnn.KullbackLeiblerLoss(bnn.Categorical(), 60_000)(net(x), y)
    assert 0.5 < float(loss.detach()) < 5.0


@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_accumulated_micro_batch_losses_divided_by_their_count_give_the_batch_gradient(
    kl: str,
) -> None:
    """Each call adds KL/N: with k micro-batches, each loss divided by k sums
    to the full batch's loss. With the same weight draws in every micro-batch
    (the reparameterisation estimator, one random state) the accumulated
    gradient is the full batch's, up to float32 rounding."""
    n, k = 96, 3
    x, y = torch.randn(n, 3), torch.randn(n, 1)
    layers = (
        bnn.VILinear(3, 8, estimator="reparam", prior=bnn.LearnedNormalPrior()),
        nn.Tanh(),
        bnn.VILinear(8, 1, estimator="reparam"),
    )
    net = bnn.VISequential(*layers)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=n, kl=kl)
    params = [*net.parameters(), *loss_fn.parameters()]
    torch.manual_seed(5)
    full = torch.autograd.grad(loss_fn(net(x, samples=4), y), params)
    for index in range(k):
        torch.manual_seed(5)
        part = slice(index * n // k, (index + 1) * n // k)
        (loss_fn(net(x[part], samples=4), y[part]) / k).backward()
    for expected, parameter in zip(full, params, strict=True):
        assert parameter.grad is not None
        scale = float(expected.abs().max())
        torch.testing.assert_close(
            parameter.grad, expected, rtol=1e-5, atol=1e-6 * scale
        )


def test_output_after_tensor_ops_still_finds_its_record() -> None:
    """torch_blue W5: log-probs vanished after any op on the output."""
    net = bnn.VILinear(3, 1)
    x = torch.randn(5, 3)
    out = net(x).squeeze(-1) * 1.0
    loss = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 10)(out, torch.zeros(5))
    assert loss.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset_size": 0}, "dataset_size must be an integer >= 1, got 0"),
        ({"kl": "exact"}, "kl must be one of"),
        ({"reduction": "none"}, "reduction must be one of"),
        ({"heat": -1.0}, "heat must be >= 0"),
        ({"heat": float("inf")}, "heat must be >= 0 and finite, got inf"),
        ({"heat": float("nan")}, "heat must be >= 0 and finite, got nan"),
        ({"heat": True}, "heat must be >= 0 and finite, got True"),  # was 1.0
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"dataset_size": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        bnn.KullbackLeiblerLoss(bnn.Categorical(), **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [3.5, 10.0, True, np.float64(100.0)])
def test_dataset_size_of_another_type_is_a_type_error(size: object) -> None:
    """As ``samples=`` of ``predict`` and every count (``check_count``): a
    float or a bool is the wrong type, not a wrong value."""
    message = f"dataset_size must be an integer >= 1, got {size!r}"
    with pytest.raises(TypeError, match=re.escape(message)):
        bnn.KullbackLeiblerLoss(bnn.Categorical(), size)  # type: ignore[arg-type]
    assert bnn.KullbackLeiblerLoss(bnn.Categorical(), np.int64(10)).dataset_size == 10


def test_predictive_must_be_a_likelihood() -> None:
    with pytest.raises(TypeError, match="predictive must be a likelihood"):
        bnn.KullbackLeiblerLoss(nn.CrossEntropyLoss(), 10)  # type: ignore[arg-type]


def test_segmentation_labels_in_torch_layout_name_the_class_dimension() -> None:
    """(B, C, H, W) logits against (B, H, W) labels: torch's layout, not ours."""
    net = bnn.VIConv2d(2, 3, 3, padding=1)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    x = torch.randn(4, 2, 5, 5)
    labels = torch.randint(0, 3, (4, 5, 5))
    with pytest.raises(ValueError, match=r"got \(4, 5, 5\)\. The classes are the last"):
        loss_fn(net(x), labels)
    moved = loss_fn(net(x).movedim(2, -1), labels)
    assert moved.isfinite()
    # A mismatch of another kind keeps the plain message.
    with pytest.raises(ValueError, match=r"got \(4, 5\)$"):
        loss_fn(net(x), labels[:, 0])


def test_bad_targets_and_batches() -> None:
    net = _net()
    x, y = _data()
    small = bnn.KullbackLeiblerLoss(bnn.Categorical(), 8)
    with pytest.raises(
        ValueError, match=r"batch of 16 examples is larger than dataset_size=8"
    ):
        small(net(x), y)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    with pytest.raises(
        ValueError, match=r"labels must be in \[0, 4\), got range \[0, 7\]"
    ):
        loss_fn(net(x), torch.full((16,), 7).index_fill(0, torch.tensor([0]), 0))
    with pytest.raises(
        ValueError, match=r"integer class labels, got dtype torch.float32"
    ):
        loss_fn(net(x), y.float())
    # torch's gather read a meta index without an error: a random loss
    with pytest.raises(ValueError, match=r"targets are on meta.*output on cpu"):
        loss_fn(net(x), y.to("meta"))
    one_hot = torch.nn.functional.one_hot(y, 4).float()  # torch's soft targets
    with pytest.raises(ValueError, match=r"class probabilities.*argmax\(-1\)"):
        loss_fn(net(x), one_hot)
    with pytest.raises(
        ValueError, match=r"expected targets of shape \(16,\).*got \(15,\)"
    ):
        loss_fn(net(x), y[:15])
    reg = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), N)
    out = bnn.VILinear(3, 1)(x)
    bad = torch.zeros(16)
    bad[3] = float("inf")
    with pytest.raises(ValueError, match="target contains 1 NaN/Inf"):
        reg(out, bad)
    with pytest.raises(ValueError, match=r"targets of shape \(16, 2\) do not match"):
        reg(bnn.VILinear(3, 1)(x), torch.zeros(16, 2))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("heat", -5.0, "heat must be >= 0 and finite, got -5.0"),
        ("heat", float("inf"), "heat must be >= 0 and finite, got inf"),
        ("heat", float("nan"), "heat must be >= 0 and finite, got nan"),
        ("heat", "warm", "heat must be >= 0 and finite, got 'warm'"),
        ("dataset_size", 0, "dataset_size must be an integer >= 1, got 0"),
        ("kl", "exact", "kl must be one of"),
        ("reduction", "none", "reduction must be one of"),
    ],
)
def test_reassigned_attributes_are_validated(
    name: str, value: object, message: str
) -> None:
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, heat=0.5)
    before = getattr(loss_fn, name)
    with pytest.raises(ValueError, match=message):
        setattr(loss_fn, name, value)
    assert getattr(loss_fn, name) == before


@pytest.mark.parametrize("autoguide", [False, True])
@pytest.mark.parametrize("mode", ["MC", "Analytic", "analytical", 1])
def test_terms_refuse_a_misspelt_kl_mode(autoguide: bool, mode: object) -> None:
    """A typo in ``terms(kl=...)`` once computed ``kl="auto"`` silently (with
    the library's guide and with a traced Pyro guide alike)."""
    from pyro.infer.autoguide import AutoNormal

    net = _net()
    if autoguide:
        net.guide = AutoNormal(net.prior_model)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    x, y = _data()
    output = net(x)
    with pytest.raises(ValueError, match="kl must be one of"):
        loss_fn.terms(output, y, kl=mode)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [None, nn.MSELoss(), bnn.Categorical])
def test_a_reassigned_predictive_is_checked_as_in_the_constructor(
    value: object,
) -> None:
    """``loss_fn.predictive = None`` (or a torch loss) was accepted and the
    next call failed with an AttributeError (no ``log_likelihood``)."""
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    before = loss_fn.predictive
    with pytest.raises(TypeError) as in_constructor:
        bnn.KullbackLeiblerLoss(value, N)  # type: ignore[arg-type]
    with pytest.raises(TypeError) as on_assignment:
        loss_fn.predictive = value  # type: ignore[assignment]
    assert str(on_assignment.value) == str(in_constructor.value)
    assert loss_fn.predictive is before


def test_a_reassigned_predictive_is_converted_as_in_the_constructor() -> None:
    net, (x, y) = _net(), _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), N)
    loss_fn.predictive = vi.distributions.Categorical()  # torch_blue's: converted
    assert isinstance(loss_fn.predictive, bnn.Categorical)
    assert "predictive" in dict(loss_fn.named_children())
    assert loss_fn(net(x), y).shape == ()
    blue = vi.KullbackLeiblerLoss(vi.distributions.Categorical(), N)
    with pytest.raises(vi.utils.UnsupportedDistributionError, match=r"vi\.Kullback"):
        blue.predictive = vi.distributions.StudentT()


def test_valid_reassignment_changes_the_loss() -> None:
    net = _net()
    x, y = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    loss_fn.heat = 0
    loss_fn.dataset_size = np.int64(2 * N)
    loss_fn.reduction = "sum"
    loss_fn.kl = "analytic"
    assert (loss_fn.heat, loss_fn.dataset_size) == (0.0, 2 * N)
    assert type(loss_fn.heat) is float
    assert type(loss_fn.dataset_size) is int
    loss = loss_fn(net(x), y)
    torch.testing.assert_close(loss.detach(), loss_fn.last_nll)  # heat 0: no KL


@pytest.mark.parametrize(
    "size", [np.int64(100), np.int32(100), torch.tensor(100)], ids=repr
)
def test_dataset_size_accepts_integral_numbers(size: object) -> None:
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), size)  # type: ignore[arg-type]
    assert loss_fn.dataset_size == 100
    assert type(loss_fn.dataset_size) is int
    assert "dataset_size=100," in repr(loss_fn)


def test_empty_batch_is_refused() -> None:
    net = bnn.VILinear(3, 4)  # (a "reparam" layer fails on B = 0 already)
    out = net(torch.randn(0, 3))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    with pytest.raises(ValueError, match=r"the batch is empty \(output of shape"):
        loss_fn(out, torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="the batch is empty"):
        loss_fn.model_loss(net, torch.randn(0, 3), torch.zeros(0, dtype=torch.long))


def test_loss_without_forward_record() -> None:
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    with pytest.raises(ValueError, match="cannot tell which forward pass"):
        loss_fn(torch.zeros(2, 3, 4), torch.zeros(3, dtype=torch.long))


def test_learned_noise_scale_not_in_optimizer_warns() -> None:
    net = bnn.VILinear(3, 1)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 100)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x, y = torch.randn(8, 3), torch.randn(8)

    def train(steps: int) -> None:
        for _ in range(steps):
            loss = loss_fn(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    with pytest.warns(
        UserWarning, match=r"pass loss_fn.parameters\(\) to the optimizer"
    ):
        train(6)


def test_pyro_model_requires_vimodule() -> None:
    with pytest.raises(
        TypeError, match=r"pyro_model needs a network with Bayesian layers.*got Linear"
    ):
        bnn.KullbackLeiblerLoss(bnn.Categorical(), N).pyro_model(nn.Linear(2, 2))  # type: ignore[arg-type]


def test_loss_can_be_evaluated_without_gradients() -> None:
    net = _net()
    x, y = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    with torch.no_grad():
        loss = loss_fn(net(x), y)
    assert not loss.requires_grad
    assert bool(torch.isfinite(loss))


# ------------------------------------------------------------------ MCMC
def _regression() -> tuple[torch.Tensor, torch.Tensor, bnn.KullbackLeiblerLoss]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 2, generator=gen)
    y = x @ torch.tensor([1.0, -0.5]) + 0.1 * torch.randn(20, generator=gen)
    return x, y, bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.5), len(x))


def test_nuts_without_samples_draws_one_particle() -> None:
    """MCMC(NUTS(pyro_model)) without samples=1 sampled 10 tempered networks."""
    x, y, loss_fn = _regression()
    net = bnn.VILinear(2, 1)
    mcmc = MCMC(
        NUTS(loss_fn.pyro_model(net)),
        num_samples=5,
        warmup_steps=5,
        disable_progbar=True,
    )
    mcmc.run(x, y)
    draws = mcmc.get_samples()
    assert draws["weight"].shape == (5, 1, 1, 1, 2)
    assert draws["bias"].shape == (5, 1, 1, 1)


def test_mcmc_potential_is_the_untempered_log_joint() -> None:
    x, y, loss_fn = _regression()
    net = bnn.VILinear(2, 1)
    params, potential_fn, _, trace = initialize_model(
        loss_fn.pyro_model(net), model_args=(x, y)
    )
    assert trace.nodes["weight"]["value"].shape == (1, 1, 1, 2)
    w, b = params["weight"].reshape(1, 2), params["bias"].reshape(1)
    standard = torch.distributions.Normal(0.0, 1.0)
    log_joint = (
        standard.log_prob(w).sum()
        + standard.log_prob(b).sum()
        + torch.distributions.Normal(x @ w.T[:, 0] + b, 0.5).log_prob(y).sum()
    )
    torch.testing.assert_close(potential_fn(params), -log_joint, rtol=1e-5, atol=1e-4)


def test_predictive_keeps_the_guides_particles() -> None:
    """Predictive runs the model under an InitMessenger too, but masked: not MCMC."""
    x, y, loss_fn = _regression()
    net = bnn.VILinear(2, 1)
    pyro_model = loss_fn.pyro_model(net)
    draws = Predictive(pyro_model, guide=net.guide, num_samples=2)(x)
    assert draws["obs"].shape == (2, 10, 20)  # targets (20,): the layout of y
    # After MCMC, the same callable predicts from the chain with one particle.
    mcmc = MCMC(NUTS(pyro_model), num_samples=3, warmup_steps=2, disable_progbar=True)
    mcmc.run(x, y)
    posterior = Predictive(pyro_model, posterior_samples=mcmc.get_samples())(x)
    assert posterior["obs"].shape == (3, 1, 20)


def test_explicit_samples_and_other_runs_keep_their_particles() -> None:
    x, y, loss_fn = _regression()
    net = bnn.VILinear(2, 1)
    _, _, _, trace = initialize_model(
        loss_fn.pyro_model(net), model_args=(x, y), model_kwargs={"samples": 1}
    )
    assert trace.nodes["weight"]["value"].shape == (1, 1, 1, 2)
    # Outside initialisation (SVI, Predictive with a guide): model.samples.
    trace = poutine.trace(loss_fn.pyro_model(net)).get_trace(x, y)
    assert trace.nodes["weight"]["value"].shape == (10, 1, 1, 2)
    trace = poutine.trace(loss_fn.pyro_model(net)).get_trace(x, y, samples=3)
    assert trace.nodes["weight"]["value"].shape == (3, 1, 1, 2)


@pytest.mark.parametrize("root", ["layer", "plain"])
def test_mcmc_with_explicit_samples_above_one_is_refused(root: str) -> None:
    """``mcmc.run(x, y, samples=4)`` (a Pyro user asking for more draws) ran
    4 particles whose sites weigh 1/4: NUTS sampled the posterior tempered
    by 1/4, standard deviations twice the closed form's ([0.59, 0.107,
    0.175, 0.358] vs [0.288, 0.051, 0.083, 0.174] on a linear regression),
    without a word. Refused at the chain's initialisation, naming
    ``samples=1``; that count runs."""
    x, y, loss_fn = _regression()
    layer = bnn.VILinear(2, 1)
    net = layer if root == "layer" else nn.Sequential(layer, nn.Identity())

    def chain() -> MCMC:
        kernel = NUTS(loss_fn.pyro_model(net), max_tree_depth=2)
        return MCMC(kernel, num_samples=2, warmup_steps=2, disable_progbar=True)

    with pytest.raises(ValueError, match=r"tempered by 1/4.*samples=1"):
        chain().run(x, y, samples=4)
    mcmc = chain()
    mcmc.run(x, y, samples=1)
    site = "weight" if root == "layer" else "0.weight"
    assert mcmc.get_samples()[site].shape[:2] == (2, 1)


def test_pyro_model_refuses_a_tempered_loss_naming_its_heat() -> None:
    cold = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, heat=0.5)
    with pytest.raises(
        ValueError,
        match=r"pyro_model needs a loss with heat=1.0, but this loss "
        r"has heat=0.5",
    ):
        cold.pyro_model(_net())


def test_heat_changed_after_pyro_model_is_refused_at_call() -> None:
    """The Pyro model stays untempered: a later heat is an error, not ignored."""
    net = _net()
    x, y = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    pyro_model = loss_fn.pyro_model(net)
    loss_fn.heat = 0.5
    message = r"loss_fn.heat is 0.5, but the Pyro model .* needs heat=1.0"
    with pytest.raises(ValueError, match=message):
        pyro_model(x, y)
    for elbo in (Trace_ELBO(), bnn.Trace_ELBO()):
        with pytest.raises(ValueError, match=message):
            elbo.loss(pyro_model, net.guide, x, y, samples=2)
    loss_fn.heat = 1.0
    assert pyro_model(x, y, samples=2).shape == (2, 16, 4)


# ------------------------------------------------ handlers on the weight sites
def test_condition_with_one_draw_is_the_same_for_every_particle() -> None:
    """A value of the weight's own shape stands for every particle."""
    net = _net()
    x, y = _data()
    pyro_model = bnn.KullbackLeiblerLoss(bnn.Categorical(), N).pyro_model(net)
    weight = torch.randn(8, 3)
    expanded = weight.expand(4, 1, 8, 3)
    for handler in (poutine.condition, poutine.do):
        pyro.set_rng_seed(1)
        one = poutine.trace(handler(pyro_model, data={"0.weight": weight}))
        one_trace = one.get_trace(x, y, samples=4)
        pyro.set_rng_seed(1)
        every = poutine.trace(handler(pyro_model, data={"0.weight": expanded}))
        every_trace = every.get_trace(x, y, samples=4)
        torch.testing.assert_close(
            one_trace.nodes["_RETURN"]["value"],
            every_trace.nodes["_RETURN"]["value"],
            rtol=0,
            atol=0,
        )
        # the same log-density: the particle plate averages the S equal terms
        torch.testing.assert_close(
            one_trace.log_prob_sum(), every_trace.log_prob_sum(), rtol=1e-6, atol=1e-4
        )


def test_condition_with_a_wrong_shape_names_the_site_and_shapes() -> None:
    net = _net()
    x, _ = _data()
    pyro_model = bnn.KullbackLeiblerLoss(bnn.Categorical(), N).pyro_model(net)
    for value in (torch.zeros(3, 8), torch.zeros(4, 8, 3), torch.zeros(2, 1, 8, 3)):
        with pytest.raises(
            ValueError,
            match=r"site '0.weight' has a value of shape .* must have the shape "
            r"\(4, 1, 8, 3\) \(one value per particle\) or \(8, 3\)",
        ):
            poutine.condition(pyro_model, data={"0.weight": value})(x, samples=4)


def test_svi_after_mcmc_runs_the_guides_particles() -> None:
    """MCMC switches the model to one particle; SVI replays the guide's S."""
    x, y, loss_fn = _regression()
    net = bnn.VILinear(2, 1, estimator="reparam")
    pyro_model = loss_fn.pyro_model(net)
    mcmc = MCMC(NUTS(pyro_model), num_samples=2, warmup_steps=2, disable_progbar=True)
    mcmc.run(x, y)
    assert pyro_model(x).shape == (1, 20, 1)  # documented: one particle now
    values = []
    for elbo, model in [
        (Trace_ELBO(), pyro_model),
        (bnn.Trace_ELBO(), pyro_model),  # the fast path: the guide's count too
        (Trace_ELBO(), loss_fn.pyro_model(net)),  # a model never run by MCMC
    ]:
        pyro.set_rng_seed(3)
        values.append(elbo.loss(model, net.guide, x, y))
    assert values[0] == pytest.approx(values[2], rel=1e-6)
    assert values[1] == pytest.approx(values[2], rel=1e-5)
    trace = poutine.trace(net.guide).get_trace(samples=4)
    replayed = poutine.trace(poutine.replay(pyro_model, trace=trace)).get_trace(x, y)
    assert replayed.nodes["_RETURN"]["value"].shape == (4, 20, 1)
    assert replayed.nodes["obs"]["fn"].batch_shape == (4, 20)


def test_predictive_with_the_guide_after_mcmc_asks_for_samples() -> None:
    x, y, loss_fn = _regression()
    net = bnn.VILinear(2, 1)
    pyro_model = loss_fn.pyro_model(net)
    mcmc = MCMC(NUTS(pyro_model), num_samples=2, warmup_steps=2, disable_progbar=True)
    mcmc.run(x, y)
    predictive = Predictive(pyro_model, guide=net.guide, num_samples=2)
    with pytest.raises(
        ValueError, match=r"runs one particle since MCMC's initialisation.*samples="
    ):
        predictive(x)
    assert predictive(x, samples=3)["obs"].shape == (2, 3, 20)


# ------------------------------------------------- parameters left untrained
def _classifier() -> bnn.VISequential:
    return bnn.VISequential(bnn.VILinear(2, 4), nn.ReLU(), bnn.VILinear(4, 2))


def _autoguide(net: bnn.VISequential) -> AutoLowRankMultivariateNormal:
    return AutoLowRankMultivariateNormal(
        net.prior_model, init_loc_fn=net.init_loc_fn, rank=2
    )


def _steps(
    net: nn.Module, loss_fn: bnn.KullbackLeiblerLoss, optimizer: Any, count: int
) -> None:
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    for _ in range(count):
        loss = loss_fn(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


GUIDE_WARNING = (
    r"the guide's parameters \(e\.g\. '.*'\) get gradients but have not changed in "
    r"4 optimizer steps: create the optimizer after assigning model\.guide"
)


def test_optimizer_created_before_the_guide_warns() -> None:
    net = _classifier()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.guide = _autoguide(net)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    with pytest.warns(UserWarning, match=GUIDE_WARNING) as caught:
        _steps(net, loss_fn, optimizer, 8)
    assert len(caught) == 1  # once


def test_the_guide_warning_names_a_parameter_as_named_parameters_does() -> None:
    """It gave Pyro's name of the guide's parameter, not the network's."""
    net = _classifier()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.guide = _autoguide(net)
    with pytest.warns(UserWarning, match=GUIDE_WARNING) as caught:
        _steps(net, bnn.KullbackLeiblerLoss(bnn.Categorical(), N), optimizer, 8)
    named = re.search(r"e\.g\. '([^']*)'", str(caught[0].message))
    assert named is not None
    assert named.group(1) in dict(net.named_parameters())


def test_optimizer_created_after_the_guide_is_silent() -> None:
    net = _classifier()
    net.guide = _autoguide(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    _steps(net, bnn.KullbackLeiblerLoss(bnn.Categorical(), N), optimizer, 8)
    net.guide = None  # the default guide, with its own posterior parameters
    _steps(net, bnn.KullbackLeiblerLoss(bnn.Categorical(), N), optimizer, 8)


def test_default_guide_missing_from_the_optimizer_warns() -> None:
    """Named as named_parameters() names it (it was '0.weight.loc_unconstrained'),
    with advice for the default guide (it said to assign a guide first)."""
    net = _classifier()
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-2)
    message = (
        r"e\.g\. '0\.posterior\.weight\.loc_unconstrained'.*no optimizer that "
        r"steps holds them.*bnn\.convert returns a new model"
    )
    with pytest.warns(UserWarning, match=message):
        # No optimizer holds the network: counted over 20 calls with gradients
        # (from the second call), after which every optimizer's steps count.
        _steps(net, bnn.KullbackLeiblerLoss(bnn.Categorical(), N), optimizer, 21)


def test_guide_assigned_after_the_first_steps_is_watched_afresh() -> None:
    net = _classifier()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    _steps(net, loss_fn, optimizer, 6)
    net.guide = _autoguide(net)  # the optimizer does not know it
    with pytest.warns(UserWarning, match=GUIDE_WARNING):
        _steps(net, loss_fn, optimizer, 6)


def test_loss_reused_for_a_new_network_watches_its_assigned_guide() -> None:
    """An assigned guide was known by its parameter names, which every network
    of one architecture shares: the reused loss took the second network's
    guide for the first's, already checked, and stayed silent."""
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    first = _classifier()
    first.guide = _autoguide(first)
    _steps(first, loss_fn, torch.optim.Adam(first.parameters(), lr=1e-2), 8)
    second = _classifier()
    optimizer = torch.optim.Adam(second.parameters(), lr=1e-2)
    second.guide = _autoguide(second)  # after the optimizer: not in it
    with pytest.warns(UserWarning, match=GUIDE_WARNING):
        _steps(second, loss_fn, optimizer, 8)


def test_loss_reused_for_a_new_network_watches_its_guide() -> None:
    """A second network with the same parameter names but an optimizer that
    does not hold its parameters is noticed (its guide is another object)."""
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    first = _classifier()
    _steps(first, loss_fn, torch.optim.Adam(first.parameters(), lr=1e-2), 8)
    second = _classifier()
    example = r"e\.g\. '0\.posterior\.weight\.loc_unconstrained'"
    with pytest.warns(UserWarning, match=example):
        # No optimizer holds the second network: noticed after 20 calls.
        _steps(second, loss_fn, torch.optim.Adam(first.parameters(), lr=1e-2), 22)


def test_a_loop_that_clears_gradients_first_stops_being_watched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """zero_grad() before the forward pass (the usual loop) leaves no gradient
    at the loss: the optimizer holds the guide, and after some steps the loss
    stops reading the guide's parameters on every call."""
    from pyrolite_bnn.record import LayerRecord

    reads = 0
    original = LayerRecord.guide_parameters

    def counted(self: LayerRecord) -> dict[str, torch.Tensor]:
        nonlocal reads
        reads += 1
        return original(self)

    monkeypatch.setattr(LayerRecord, "guide_parameters", counted)
    net = _classifier()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    window = PENDING_CALLS + 10
    for step in range(window + 30):
        if step == window:
            read_in_window, reads = reads, 0
        optimizer.zero_grad()
        loss_fn(net(x), y).backward()
        optimizer.step()
    # 20 calls of the change watch, one of the decay watch, two of the
    # bfloat16 watch (the network's first call, the optimizer's first step);
    # the decay watch reads on each of its first PENDING_CALLS calls while
    # optimizers of other networks that have stepped are alive (earlier
    # tests' leave some, and a notebook's earlier cells).
    assert 0 < read_in_window <= 23 + PENDING_CALLS, read_in_window
    assert reads == 0, reads


@pytest.mark.parametrize("guide_held", [True, False])
def test_gradient_accumulation_is_not_an_untrained_guide(guide_held: bool) -> None:
    """Eight backward passes per optimizer step (gradient accumulation) made
    the loss say that the guide and the learned noise scale were missing from
    the optimizer after five loss calls (advice that throws away the
    optimizer's state); a guide really missing is still named."""
    torch.manual_seed(0)
    net = bnn.VISequential(bnn.VILinear(2, 4), nn.ReLU(), bnn.VILinear(4, 1))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), N)
    held = list(net.parameters()) if guide_held else [nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.Adam([*held, *loss_fn.parameters()], lr=1e-2)
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(6):
            optimizer.zero_grad()
            for _ in range(8):
                (loss_fn(net(x), y) / 8).backward()
            for _ in range(3):  # evaluations between steps, gradients still set
                loss_fn(net(x), y)
            optimizer.step()
    messages = [str(w.message) for w in caught]
    assert not any("noise scale" in m for m in messages)
    named = [m for m in messages if "guide's parameters" in m]
    assert len(named) == (0 if guide_held else 1)


def test_another_models_optimizer_does_not_count_for_the_guide() -> None:
    """Steps of an unrelated model's optimizer counted towards the window, so
    gradient accumulation with the guide in its own optimizer was told to
    rebuild that optimizer."""
    torch.manual_seed(0)
    net = _classifier()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    other = nn.Linear(2, 1)
    other_optimizer = torch.optim.SGD(other.parameters(), lr=1e-2)
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            optimizer.zero_grad()
            for _ in range(8):
                (loss_fn(net(x), y) / 8).backward()
                other_optimizer.zero_grad()
                other(x).sum().backward()
                other_optimizer.step()
            optimizer.step()


def test_losses_without_backward_do_not_count() -> None:
    """Loss distributions and gradient studies at fixed parameters are silent."""
    net = _classifier()
    net.guide = _autoguide(net)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    for _ in range(8):
        loss = loss_fn(net(x), y)
        torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)


def test_evaluation_mode_calls_do_not_count() -> None:
    """Backpropagating in eval mode (e.g. input gradients) is not training."""
    net = _classifier().eval()
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-2)
    _steps(net, bnn.KullbackLeiblerLoss(bnn.Categorical(), N), optimizer, 8)


def test_output_without_gradient_is_refused_while_the_kl_has_one() -> None:
    """backward() would train towards the prior only: a clear error instead."""
    net = bnn.VILinear(3, 2)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 10)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    with torch.no_grad():
        out = net(x)
    with pytest.raises(ValueError, match="carries no gradient"):
        loss_fn(out, y)
    with torch.no_grad():  # evaluation: no gradients anywhere, a value
        assert torch.isfinite(loss_fn(out, y))


def test_a_frozen_posterior_trains_its_learned_prior_scales() -> None:
    """Empirical Bayes on a fixed posterior: only the prior scales (and the
    noise) train, the output has no gradient and the KL has one. It was refused
    as a forward pass run under no_grad; the gradient is the KL's."""
    torch.manual_seed(0)
    net = bnn.VISequential(
        bnn.VILinear(3, 8, prior=bnn.LearnedNormalPrior()),
        nn.ReLU(),
        bnn.VILinear(8, 1, prior=bnn.LearnedNormalPrior()),
    )
    for name, parameter in net.named_parameters():
        if "posterior" in name:
            parameter.requires_grad_(False)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=100)
    x, y = torch.randn(16, 3), torch.randn(16)
    loss_fn(net(x), y).backward()
    scales = [p for n, p in net.named_parameters() if "log_scale" in n]
    assert scales
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in scales)
    assert loss_fn.predictive.raw_scale.grad is not None


def test_a_loss_after_functional_call_with_other_parameters_is_refused() -> None:
    """torch.func.functional_call puts the module's tensors back when it
    returns: the KL was taken from them, not from the call's (a LaplacePrior
    network's loss 3.730 instead of 3.641, a StudentTPrior one's -22498)."""
    from torch.func import functional_call

    torch.manual_seed(0)
    net = _net(prior=bnn.LaplacePrior(0.0, 0.5))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    x, y = _data()
    own = dict(net.named_parameters())
    torch.manual_seed(1)
    expected = loss_fn(net(x), y)
    torch.manual_seed(1)
    same = loss_fn(functional_call(net, own, (x,)), y)  # its own tensors: fine
    torch.testing.assert_close(same, expected)
    other = {name: p.detach() + 0.3 for name, p in own.items()}
    with pytest.raises(ValueError, match="functional_call"):
        loss_fn(functional_call(net, other, (x,)), y)


class _LossOfNetwork(nn.Module):
    """A network and its loss as one module, so torch.func differentiates both."""

    def __init__(self, net: nn.Module, loss_fn: bnn.KullbackLeiblerLoss) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.net(x, samples=4), y)


def _loss_of_network(
    estimator: str = "reparam", prior: object = None
) -> tuple[_LossOfNetwork, torch.Tensor, torch.Tensor]:
    """A float64 regression network with a learned noise scale, and its data."""
    torch.manual_seed(0)
    net = bnn.VISequential(
        bnn.VILinear(3, 8, prior=prior, estimator=estimator),
        nn.Tanh(),
        bnn.VILinear(8, 1, prior=prior, estimator=estimator),
    )
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), N)
    step = _LossOfNetwork(net, loss_fn).double()
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    return step, x.double(), y.double()


def _task_gradient(step: nn.Module) -> Any:
    """``(parameters, x, y) -> torch.func.grad`` of ``step``'s loss by them."""
    from torch.func import functional_call, grad

    def task_gradient(
        p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        gradients: dict[str, torch.Tensor] = grad(
            lambda q: functional_call(step, q, (xb, yb))
        )(p)
        return gradients

    return task_gradient


def _autograd_gradients(
    step: _LossOfNetwork, x: torch.Tensor, y: torch.Tensor, seed: int
) -> dict[str, torch.Tensor]:
    names, parameters = zip(*step.named_parameters(), strict=True)
    torch.manual_seed(seed)
    return dict(zip(names, torch.autograd.grad(step(x, y), parameters), strict=True))


@pytest.mark.parametrize("estimator", ["reparam", "auto"])
def test_torch_func_grad_of_the_loss_equals_autograd(estimator: str) -> None:
    """torch.func.grad by the parameters, the loss inside functional_call:
    the loss read the output's data_ptr(), which a functorch wrapper has not
    ('Cannot access data pointer of Tensor that doesn't have storage')."""
    from torch.func import functional_call, grad

    step, x, y = _loss_of_network(estimator)
    params = {name: p.detach() for name, p in step.named_parameters()}
    torch.manual_seed(5)
    gradients = grad(lambda p: functional_call(step, p, (x, y)))(params)
    expected = _autograd_gradients(step, x, y, seed=5)
    assert set(gradients) == set(expected)
    for name, value in expected.items():  # same draws: equal to rounding
        torch.testing.assert_close(gradients[name], value, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("estimator", ["reparam", "auto"])
def test_torch_func_vmap_of_the_loss_gradient_over_tasks(estimator: str) -> None:
    """vmap(grad(...)) over tasks: the same draws for every task equal a loop
    over the tasks; randomness="different" draws each task's own weights (an
    in-place draw into an unbatched tensor was refused by vmap)."""
    from torch.func import vmap

    step, x, y = _loss_of_network(estimator)
    params = {name: p.detach() for name, p in step.named_parameters()}
    tasks_x, tasks_y = torch.randn(3, *x.shape).double(), torch.randn(3, *y.shape)
    tasks_y = tasks_y.double()

    task_gradient = _task_gradient(step)
    torch.manual_seed(5)
    same = vmap(task_gradient, in_dims=(None, 0, 0), randomness="same")(
        params, tasks_x, tasks_y
    )
    for task in range(3):
        expected = _autograd_gradients(step, tasks_x[task], tasks_y[task], seed=5)
        for name, value in expected.items():
            torch.testing.assert_close(same[name][task], value, rtol=1e-12, atol=1e-12)
    # Three copies of one task: equal gradients only with equal draws.
    copies_x, copies_y = x.expand(3, *x.shape), y.expand(3, *y.shape)
    different = vmap(task_gradient, in_dims=(None, 0, 0), randomness="different")(
        params, copies_x, copies_y
    )
    loc = different["net.0.posterior.weight.loc_unconstrained"]
    assert loc.shape == (3, 8, 3)
    # Equal draws give equal float64 gradients to the last bit (as "same" does).
    assert (loc[0] - loc[1]).abs().max() > 1e-6
    assert (loc[1] - loc[2]).abs().max() > 1e-6


@pytest.mark.parametrize("transform", ["grad", "vmap(grad)"])
def test_torch_func_transforms_leave_no_wrapped_tensors_in_the_loss(
    transform: str,
) -> None:
    """The loss kept last_nll / last_kl as the transform's wrapped tensors:
    after it, loss_fn.last_nll raised 'tensor may have escaped', and
    copy.deepcopy / torch.save of the loss 'Cannot access storage of
    TensorWrapper'. The last terms stay those of the last plain call."""
    import copy
    import io

    from torch.func import functional_call, grad, vmap

    step, x, y = _loss_of_network()
    loss_fn = step.loss_fn
    params = {name: p.detach() for name, p in step.named_parameters()}
    with pytest.raises(AttributeError):  # no plain call yet
        _ = loss_fn.last_nll
    step(x, y)
    nll, kl = loss_fn.last_nll.clone(), loss_fn.last_kl.clone()
    if transform == "grad":
        grad(lambda p: functional_call(step, p, (x, y)))(params)
    else:
        tasks_x, tasks_y = x.expand(3, *x.shape), y.expand(3, *y.shape)
        vmap(_task_gradient(step), in_dims=(None, 0, 0), randomness="different")(
            params, tasks_x, tasks_y
        )
    copy.deepcopy(step)
    torch.save(loss_fn, io.BytesIO())
    torch.testing.assert_close(loss_fn.last_nll, nll, rtol=0, atol=0)
    torch.testing.assert_close(loss_fn.last_kl, kl, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("likelihood", "outputs", "targets", "invalid"),
    [
        (bnn.Categorical(), 4, lambda: torch.randint(0, 4, (3, 16)), -1),
        (bnn.Bernoulli(), 1, lambda: torch.randint(0, 2, (3, 16, 1)).double(), 0.5),
        (bnn.Poisson(), 1, lambda: torch.randint(0, 5, (3, 16, 1)).double(), -1),
        (bnn.StudentT(3.0), 1, lambda: torch.randn(3, 16, 1).double(), math.nan),
        (bnn.HeteroscedasticNormal(), 2, lambda: torch.randn(3, 16).double(), math.nan),
    ],
)
def test_torch_func_vmap_over_tasks_checks_every_likelihood(
    likelihood: bnn.PredictiveDistribution,
    outputs: int,
    targets: Any,
    invalid: float,
) -> None:
    """Targets batched over tasks by vmap: the likelihoods' target checks
    read label ranges and 0/1 or count values into Python, which vmap
    refuses; they count as passed there, like the input checks."""
    from torch.func import vmap

    torch.manual_seed(0)
    net = bnn.VISequential(bnn.VILinear(3, 8), nn.Tanh(), bnn.VILinear(8, outputs))
    step = _LossOfNetwork(net, bnn.KullbackLeiblerLoss(likelihood, N)).double()
    params = {name: p.detach() for name, p in step.named_parameters()}
    tasks_x, tasks_y = torch.randn(3, 16, 3).double(), targets()

    task_gradient = _task_gradient(step)
    torch.manual_seed(5)
    mapped = vmap(task_gradient, in_dims=(None, 0, 0), randomness="same")(
        params, tasks_x, tasks_y
    )
    for task in range(3):
        expected = _autograd_gradients(step, tasks_x[task], tasks_y[task], seed=5)
        for name, value in expected.items():
            torch.testing.assert_close(
                mapped[name][task], value, rtol=1e-12, atol=1e-12
            )
    with pytest.raises(ValueError, match=r"target|labels"):  # eagerly: checked
        step(tasks_x[0], torch.full_like(tasks_y[0], invalid))


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
def test_torch_func_vmap_over_per_task_prior_scales() -> None:
    """A NormalPrior's scale batched over tasks by vmap: its closed-form KL
    read the scale as a Python float, which vmap refuses."""
    from torch.func import functional_call, grad, vmap

    step, x, y = _loss_of_network(prior=bnn.NormalPrior(0.0, 1.0))
    params = {name: p.detach() for name, p in step.named_parameters()}
    scales = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    buffers = {
        name: scales if name.endswith("prior.weight.scale") else b.expand(3, *b.shape)
        for name, b in step.named_buffers()
    }

    def task_gradient(
        p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        gradients: dict[str, torch.Tensor] = grad(
            lambda q: functional_call(step, (q, b), (x, y))
        )(p)
        return gradients

    torch.manual_seed(5)
    mapped = vmap(task_gradient, in_dims=(None, 0), randomness="same")(params, buffers)
    for task, scale in enumerate(scales.tolist()):
        for name, b in step.named_buffers():
            if name.endswith("prior.weight.scale"):
                b.fill_(scale)
        expected = _autograd_gradients(step, x, y, seed=5)
        for name, value in expected.items():
            torch.testing.assert_close(
                mapped[name][task], value, rtol=1e-10, atol=1e-12
            )


@pytest.mark.parametrize("target", ["numpy", "list", None])
def test_targets_that_are_no_tensor_are_refused_clearly(target: str | None) -> None:
    """They raised AttributeError ('numpy.ndarray' has no attribute 'dim')."""
    net = bnn.VILinear(3, 2)
    labels = torch.randint(0, 2, (4,))
    given = {"numpy": labels.numpy(), "list": labels.tolist(), None: None}[target]
    for likelihood in (bnn.Categorical(), bnn.Normal()):
        loss_fn = bnn.KullbackLeiblerLoss(likelihood, 10)
        with pytest.raises(TypeError, match=r"targets must be a torch\.Tensor"):
            loss_fn(net(torch.randn(4, 3)), given)


def test_categorical_with_one_class_is_refused() -> None:
    """Every log-likelihood was 0 and every probability 1 (a Bernoulli model)."""
    net = bnn.VILinear(3, 1)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 10)
    with pytest.raises(ValueError, match=r"use bnn\.Bernoulli"):
        loss_fn(net(torch.randn(4, 3)), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="two or more classes"):
        bnn.predict(net, torch.randn(4, 3), bnn.Categorical())


def test_a_network_with_several_outputs_is_named_by_the_loss_and_pyro_model() -> None:
    """pyro_model raised AttributeError ('tuple' object has no attribute 'shape')."""
    lstm = bnn.VILSTM(3, 4, batch_first=True)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 10)
    x, y = torch.randn(2, 5, 3), torch.randn(2, 5, 4)
    with pytest.raises(TypeError, match="one tensor"):
        pyro.poutine.trace(loss_fn.pyro_model(lstm)).get_trace(x, y, samples=2)
    with pytest.raises(TypeError, match="one tensor"):
        loss_fn(lstm(x), y)  # type: ignore[arg-type]


def test_a_used_loss_keeps_no_pass_alive_and_copies() -> None:
    """The loss kept the last record (for its likelihood watch): the last
    pass's draws stayed alive with it, and ``copy.deepcopy(loss_fn)`` failed
    on their non-leaf tensors."""
    net, loss_fn = _classifier(), bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    out = net(x)
    loss_fn(out, y).backward()
    record = weakref.ref(out.bnn_record)  # type: ignore[attr-defined]
    del out
    gc.collect()
    assert record() is None
    copied = copy.deepcopy(loss_fn)
    assert float(copied(net(x), y).detach()) > 0


class _TwoHeads(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = bnn.VILinear(3, 8)
        self.cls = bnn.VILinear(8, 2)
        self.reg = bnn.VILinear(8, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.body(x))
        return {"cls": self.cls(h), "reg": self.reg(h)}


_TWICE = r"the KL counts twice"


def test_one_loss_per_head_warns_that_the_kl_counts_twice() -> None:
    """``loss_cls(out["cls"], yc) + loss_reg(out["reg"], yr)``: both losses
    carry the KL of the one forward pass, a heat of 2, silently."""
    net = _TwoHeads()
    x, yc, yr = torch.randn(5, 3), torch.randint(0, 2, (5,)), torch.randn(5, 1)
    loss_cls = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    loss_reg = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), N)
    out = net(x, samples=3)
    with pytest.warns(UserWarning, match=_TWICE) as caught:
        total = loss_cls(out["cls"], yc) + loss_reg(out["reg"], yr)
    assert len(caught) == 1
    assert caught[0].filename == __file__
    total.backward()


@pytest.mark.parametrize("split", ["one loss", "slices"])
def test_one_loss_on_two_heads_warns_too(split: str) -> None:
    """The same loss object on two heads (or on two slices of one output)
    counts the KL twice as well."""
    net = _TwoHeads()
    x, yc = torch.randn(5, 3), torch.randint(0, 2, (5,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), N)
    out = net(x, samples=3)
    if split == "one loss":
        first, second = out["cls"][..., :1], out["reg"]
    else:
        first, second = out["cls"][..., :1], out["cls"][..., 1:]
    target = yc.float().unsqueeze(-1)
    with pytest.warns(UserWarning, match=_TWICE):
        loss_fn(first, target) + loss_fn(second, target)


@pytest.mark.parametrize(
    "case", ["heat0", "same loss", "same output", "a view of it all", "no_grad"]
)
def test_kl_taken_once_or_evaluated_again_is_silent(case: str) -> None:
    net = _TwoHeads()
    x, yc, yr = torch.randn(5, 3), torch.randint(0, 2, (5,)), torch.randn(5, 1)
    loss_cls = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    out = net(x, samples=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = loss_cls(out["cls"], yc)
        if case == "heat0":
            other = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), N, heat=0.0)
            (first + other(out["reg"], yr)).backward()
        elif case == "same loss":  # a repeated evaluation
            assert torch.equal(first, loss_cls(out["cls"], yc))
        elif case == "same output":  # two losses compared on one output
            summed = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, reduction="sum")
            torch.testing.assert_close(summed(out["cls"], yc), N * first)
        elif case == "a view of it all":
            torch.testing.assert_close(loss_cls(out["cls"][..., :], yc), first)
        else:
            with torch.no_grad():
                other = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), N)
                other(out["reg"], yr)


class _LabelAndValue(bnn.VIModule):
    """A label head for every example, a value head known for some."""

    def __init__(self) -> None:
        super().__init__()
        self.body = bnn.VILinear(4, 16, estimator="reparam")
        self.label = bnn.VILinear(16, 3, estimator="reparam")
        self.value = bnn.VILinear(16, 1, estimator="reparam")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.body(x))
        return {"label": self.label(h), "value": self.value(h)}


def _two_plate_elbo(
    net: _LabelAndValue,
    x: Tensor,
    labels: Tensor,
    values: Tensor,
    keep: Tensor,
    sizes: tuple[int, int],
    scale: float,
    samples: int,
) -> Tensor:
    """Pyro's ``TraceMeanField_ELBO`` of the hand-built model: one data plate
    per head, each of its own size, the value head's subsampled to ``keep``."""

    def model(x: Tensor) -> None:
        out = net(x, samples=samples)
        particles = bnn.per_particle(out["label"])
        with particles, pyro.plate("labels", sizes[0], subsample=torch.arange(len(x))):
            pyro.sample(
                "obs_label",
                pyro.distributions.Categorical(logits=out["label"]),
                obs=labels,
            )
        kept = torch.arange(int(keep.sum()))
        with particles, pyro.plate("values", sizes[1], subsample=kept):
            mean = out["value"][:, keep].squeeze(-1)
            pyro.sample(
                "obs_value", pyro.distributions.Normal(mean, scale), obs=values[keep]
            )

    def guide(x: Tensor) -> None:
        net.guide(samples=samples)

    elbo: Tensor = TraceMeanField_ELBO().differentiable_loss(model, guide, x)
    return elbo


def test_heads_with_different_divisors_warn_and_sum_losses_match_pyro() -> None:
    """A label for all 1000 examples, a value for 100 of them: two
    ``reduction="mean"`` losses divide by their own dataset_size, so the
    value head's data term counted 10 times (3.274 against Pyro's 2.300),
    silently. Now that warns; ``reduction="sum"`` on both, divided by one
    ``N``, is Pyro's ELBO of the two-plate model divided by ``N``."""
    torch.manual_seed(0)
    net = _LabelAndValue()
    n_labels, n_values, samples, scale = 1000, 100, 4, 0.5
    x, labels, values = torch.randn(20, 4), torch.randint(0, 3, (20,)), torch.randn(20)
    keep = torch.zeros(20, dtype=torch.bool)
    keep[[0, 3, 9]] = True

    def both(reduction: str) -> Tensor:
        label_loss = bnn.KullbackLeiblerLoss(
            bnn.Categorical(), n_labels, kl="analytic", reduction=reduction
        )
        value_loss = bnn.KullbackLeiblerLoss(
            bnn.Normal(scale=scale),
            n_values,
            kl="analytic",
            heat=0,
            reduction=reduction,
        )
        pyro.set_rng_seed(0)
        out = net(x, samples=samples)
        return label_loss(out["label"], labels) + value_loss(
            out["value"][:, keep], values[keep]
        )

    means = both("mean")
    with pytest.warns(UserWarning, match=r"different divisors") as caught:
        means.backward()  # the heads' sum trains: its divisors are compared
    assert len(caught) == 1
    assert caught[0].filename == __file__
    message = str(caught[0].message)
    assert "dataset_size=1000, reduction='mean' divides by 1000" in message
    assert "weighed 10 times" in message
    assert "reduction='sum'" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summed = both("sum") / n_labels
    pyro.set_rng_seed(0)
    reference = _two_plate_elbo(
        net, x, labels, values, keep, (n_labels, n_values), scale, samples
    )
    torch.testing.assert_close(summed, reference / n_labels, rtol=1e-5, atol=1e-5)
    assert float((means - summed).detach()) > 0.5  # the value head weighed 10 times


def test_a_mean_and_a_sum_loss_on_one_pass_warn() -> None:
    net = _TwoHeads()
    x, yc, yr = torch.randn(5, 3), torch.randint(0, 2, (5,)), torch.randn(5, 1)
    loss_cls = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    loss_reg = bnn.KullbackLeiblerLoss(
        bnn.Normal(scale=1.0), N, heat=0, reduction="sum"
    )
    out = net(x, samples=3)
    total = loss_cls(out["cls"], yc) + loss_reg(out["reg"], yr)
    with pytest.warns(UserWarning, match=r"reduction='sum' by 1\."):
        total.backward()


def test_a_metric_with_another_divisor_that_is_only_read_is_silent() -> None:
    """A per-batch NLL computed with gradients on a view of the output
    (``out.squeeze(-1)``, a slice, ``log_softmax``) and only read warned
    "different divisors" (probe falsepos27c): divisors are compared between
    the data terms ``backward`` reaches, those of the heads trained together."""
    net = bnn.VISequential(bnn.VILinear(3, 1))
    x, y = torch.randn(16, 3), torch.randn(16)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 1000)
    metric = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 16, heat=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = net(x, samples=4)
        loss = loss_fn(out, y.unsqueeze(-1))
        metric(out.squeeze(-1), y).item()
        loss.backward()


@pytest.mark.parametrize(
    "heats", [(0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.1, 0.2, 0.7), (1.0, 0.0)]
)
def test_heats_that_split_one_kl_are_silent_and_count_it_once(
    heats: tuple[float, ...],
) -> None:
    """``heat=0.5`` on each of two heads takes the KL once in total; it
    warned "the KL counts twice" (the check asked only for a heat above 0)."""
    net = _TwoHeads()
    x, yc = torch.randn(5, 3), torch.randint(0, 2, (5,))
    heads = [lambda out: out["cls"]] + [
        lambda out, i=i: out["reg"][..., :1] + i for i in range(len(heats) - 1)
    ]
    target = [yc] + [torch.randn(5, 1)] * (len(heats) - 1)
    likelihoods: list[bnn.PredictiveDistribution] = [bnn.Categorical()] + [
        bnn.Normal(scale=1.0)
    ] * (len(heats) - 1)

    def total(split: tuple[float, ...]) -> Tensor:
        pyro.set_rng_seed(3)
        out = net(x, samples=3)
        return sum(
            (
                bnn.KullbackLeiblerLoss(likelihood, N, heat=heat)(head(out), y)
                for likelihood, heat, head, y in zip(
                    likelihoods, split, heads, target, strict=True
                )
            ),
            torch.zeros(()),
        )

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = total(heats)
        once = total((1.0,) + (0.0,) * (len(heats) - 1))
    torch.testing.assert_close(split, once, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("heats", "said"),
    [
        ((1.0, 1.0), r"heat=1 on each: .* heat of 2 \(the KL counts twice\)"),
        ((1.0, 1.0, 1.0), r"heat=1 on each: .* heat of 2 \(the KL counts twice\)"),
        ((1.0, 0.5), r"heats 1 \+ 0.5: .* a heat of 1.5\."),
        ((0.7, 0.7), r"heat=0.7 on each: .* heat of 1.4 \(the KL counts twice\)"),
    ],
)
def test_heats_that_add_up_to_more_than_one_warn_once_per_pass(
    heats: tuple[float, ...], said: str
) -> None:
    net = _TwoHeads()
    x, yr = torch.randn(5, 3), torch.randn(5, 1)
    out = net(x, samples=3)
    parts = [out["cls"][..., :1], out["cls"][..., 1:], out["reg"]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for heat, part in zip(heats, parts, strict=False):
            bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), N, heat=heat)(part, yr)
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert re.search(said, str(caught[0].message))
    assert caught[0].filename == __file__


def test_a_comparison_on_the_same_output_keeps_its_largest_heat() -> None:
    """The same output scored by a heat=0 loss and then a heat=1 one is one
    charge of heat 1: another head's heat=1 loss still counts the KL twice."""
    net = _TwoHeads()
    x, yc, yr = torch.randn(5, 3), torch.randint(0, 2, (5,)), torch.randn(5, 1)
    out = net(x, samples=3)
    bnn.KullbackLeiblerLoss(bnn.Categorical(), N, heat=0)(out["cls"], yc)
    bnn.KullbackLeiblerLoss(bnn.Categorical(), N)(out["cls"], yc)
    with pytest.warns(UserWarning, match=_TWICE):
        bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), N)(out["reg"], yr)


def test_a_heat0_loss_scores_an_empty_batch_as_zero() -> None:
    """A value head whose target no example of the batch has: the heat=0
    loss on the empty subset raised "the batch is empty"; its data term sums
    over no example, 0, as Categorical(ignore_index) gives a batch whose
    labels are all ignored. A loss that takes the KL still refuses it, and
    says what to do."""
    net = _TwoHeads()
    x, yc, yr = torch.randn(5, 3), torch.randint(0, 2, (5,)), torch.randn(5, 1)
    none = torch.zeros(5, dtype=torch.bool)
    loss_cls = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    loss_reg = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), N, heat=0)
    pyro.set_rng_seed(0)
    out = net(x, samples=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = loss_reg(out["reg"][:, none], yr[none])
        label_only = loss_cls(out["cls"], yc)
        (label_only + empty).backward()
    assert float(empty.detach()) == 0.0
    assert float(loss_reg.last_nll) == 0.0
    assert empty.requires_grad
    ignored = bnn.KullbackLeiblerLoss(bnn.Categorical(ignore_index=-1), N, heat=0)
    pyro.set_rng_seed(0)
    all_ignored = ignored(net(x, samples=3)["cls"], torch.full((5,), -1))
    assert float(all_ignored.detach()) == 0.0
    with pytest.raises(ValueError, match=r"the batch is empty .*heat=0"):
        loss_cls(net(x, samples=3)["cls"][:, none], yc[none])


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_several_outputs_are_named_with_one_loss_per_head(kind: str) -> None:
    """The loss and pyro_model told a network returning several heads to
    return the one to score; now each names its recipe."""

    class Heads(_TwoHeads):
        def forward(self, x: torch.Tensor) -> Any:
            out = super().forward(x)
            return out if kind == "dict" else (out["cls"], out["reg"])

    net = Heads()
    x, yc = torch.randn(4, 3), torch.randint(0, 2, (4,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    first, second = (
        ("out['cls']", "out['reg']") if kind == "dict" else ("out[0]", "out[1]")
    )
    recipe = re.escape(f"loss_a({first}, y_a) + loss_b({second}, y_b)")
    with pytest.raises(TypeError, match=recipe + r".*heat=0 on every loss but one"):
        loss_fn(net(x), yc)
    with pytest.raises(TypeError, match=r"write the Pyro model by hand.*per_particle"):
        pyro.poutine.trace(loss_fn.pyro_model(net)).get_trace(x, yc, samples=2)


def test_a_loss_copies_after_terms() -> None:
    """terms() without combine() left the last record on the loss: deepcopy
    failed on its draws (non-leaf tensors)."""
    net, loss_fn = _classifier(), bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    log_lik, kl = loss_fn.terms(net(x), y)
    (kl - log_lik).backward()
    copied = copy.deepcopy(loss_fn)
    assert float(copied(net(x), y).detach()) > 0


def test_ignored_labels_add_nothing_here_and_under_pyro() -> None:
    """``Categorical(ignore_index=-100)``, torch's convention for padding: the
    loss is that of the kept positions alone, equals Pyro's ELBO on the masked
    observation, and sends no gradient to the ignored positions' logits."""
    torch.manual_seed(0)
    net = bnn.VISequential(
        bnn.VILinear(3, 8, estimator="reparam"),
        nn.Tanh(),
        bnn.VILinear(8, 4 * 5, estimator="reparam"),
        nn.Unflatten(-1, (4, 5)),
    )
    x = torch.randn(6, 3)
    y = torch.randint(0, 5, (6, 4))
    y[0, 2:] = -100  # padded sequences
    y[3, 1:] = -100
    keep = y != -100
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(ignore_index=-100), N)
    pyro.set_rng_seed(1)
    output = net(x, samples=3)
    ours = loss_fn(output, y)
    log_p = output.log_softmax(-1).gather(
        -1, y.clamp_min(0).expand(3, 6, 4).unsqueeze(-1)
    )
    nll = -(log_p.squeeze(-1) * keep).sum(-1).mean()
    torch.testing.assert_close(loss_fn.last_nll, nll.detach())
    (logit_grad,) = torch.autograd.grad(ours, output)
    assert bool((logit_grad[:, ~keep] == 0).all())
    assert bool((logit_grad[:, keep] != 0).any())
    pyro.set_rng_seed(1)
    ours = loss_fn(net(x, samples=3), y)
    pyro.set_rng_seed(1)
    theirs = (  # the closed-form KL of the default kl="auto"
        TraceMeanField_ELBO().differentiable_loss(
            loss_fn.pyro_model(net), net.guide, x, y, samples=3
        )
        / N
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"or the ignore_index -100"):
        loss_fn(net(x, samples=3), y.masked_fill(~keep, -1))
    with pytest.raises(ValueError, match=r"Categorical\(ignore_index=-100\)"):
        bnn.KullbackLeiblerLoss(bnn.Categorical(), N)(net(x, samples=3), y)


def test_ignore_index_is_fixed_and_older_objects_have_none() -> None:
    """A compiled loss keys its graphs on the likelihood's class: a changed
    ``ignore_index`` was ignored by the graphs built before (11.71 against the
    eager 9.70), so it cannot be changed. A Categorical pickled before the
    option existed has none (it failed with AttributeError)."""
    likelihood = bnn.Categorical(ignore_index=-100)
    with pytest.raises(AttributeError):
        likelihood.ignore_index = 0  # type: ignore[misc]
    older = bnn.Categorical()
    del older.__dict__["_ignore_index"]  # as unpickled from the older class
    loss_fn = bnn.KullbackLeiblerLoss(older, N)
    net = _net()
    x, y = _data()
    assert torch.isfinite(loss_fn(net(x, samples=2), y))
    assert repr(older) == "Categorical()"


@pytest.mark.parametrize("family", [bnn.Normal, bnn.StudentT])
def test_targets_far_wider_than_a_learned_scale_warn_once(
    family: type[bnn.Normal],
) -> None:
    """Diabetes targets in their units (spread 77) against a learned scale
    starting at 1: the intervals of the quick start's recipe covered 6 % of
    the test targets, silently."""
    net = bnn.VISequential(bnn.VILinear(3, 1))
    noise = torch.randn(32)
    x, y = torch.randn(32, 3), 77.0 * (noise - noise.mean()) / noise.std()
    loss_fn = bnn.KullbackLeiblerLoss(family(), dataset_size=32)
    # the mechanism: softplus grows by about lr per step above 1, so 76,459
    # steps at lr 1e-3 from 1 to 77 (inverse_softplus(77) - inverse_softplus(1))
    mechanism = (
        r"spread 77 .* starts at 1; .*below 1 .* factor exp\(lr\) per step, "
        r"above 1 by about lr\), so it takes about 76\.5/lr steps \(76,459 at lr "
        r"1e-3\) to grow .*Standardise"
    )
    with pytest.warns(UserWarning, match=mechanism):
        loss_fn(net(x, samples=2), y.unsqueeze(-1))
    # an explicit start of 1 on targets in raw units is warned about as the
    # default is: above 1 the scale grows linearly; the message says how to
    # keep a start that is the noise level (1 / 77 on standardised targets)
    explicit = bnn.KullbackLeiblerLoss(family(init_scale=1.0), dataset_size=32)
    with pytest.warns(UserWarning, match=r"76,459 .*about 1 .*init_scale=0\.013 "):
        explicit(net(x, samples=2), y.unsqueeze(-1))
    small = bnn.KullbackLeiblerLoss(family(init_scale=0.5), dataset_size=32)
    with pytest.warns(UserWarning, match=r"starts at 0\.5; .*77,433 at lr 1e-3"):
        small(net(x, samples=2), y.unsqueeze(-1))  # not standardised: warned
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn(net(x, samples=2), y.unsqueeze(-1))  # once per likelihood
        near = bnn.KullbackLeiblerLoss(family(init_scale=50.0), dataset_size=32)
        near(net(x, samples=2), y.unsqueeze(-1))
        fixed = bnn.KullbackLeiblerLoss(family(scale=1.0), dataset_size=32)
        fixed(net(x, samples=2), y.unsqueeze(-1))  # a fixed scale is the user's
        # a trained scale (restored from a checkpoint): a good fit leaves far
        # less noise than the targets spread
        trained = family()
        with torch.no_grad():
            trained.raw_scale.fill_(-3.0)
        bnn.KullbackLeiblerLoss(trained, 32)(net(x, samples=2), y.unsqueeze(-1))
    # a first batch of one value reads no spread; integer counts are targets too
    late = bnn.KullbackLeiblerLoss(family(), dataset_size=32)
    late(net(x[:1], samples=2), y[:1].unsqueeze(-1))
    with pytest.warns(UserWarning, match="Standardise"):
        late(net(x, samples=2), y.round().long().unsqueeze(-1))


@pytest.mark.parametrize("family", [bnn.Normal, bnn.StudentT])
def test_an_init_scale_at_the_noise_level_of_standardised_targets_is_silent(
    family: type[bnn.Normal],
) -> None:
    """The docs' recipe: standardised targets (spread 1) whose noise is 1e-5,
    ``init_scale`` at that noise level. It was warned about ("start the scale
    near their spread", "above 1 it grows by at most about the learning rate")
    although the fit was right (1.2e-5 learned, the ELBO's optimum): a scale
    far below the spread is the noise a good fit leaves, and below 1 it grows
    by a factor per step. Any start below 1 on targets spreading under 10 is
    taken as the user's noise level."""
    net = bnn.VISequential(bnn.VILinear(3, 1))
    x = torch.randn(32, 3)
    signal = 2.0 * x[:, 0] + 1e-5 * torch.randn(32)
    y = (signal - signal.mean()) / signal.std()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for init_scale in (1e-5, 0.05):
            likelihood = family(init_scale=init_scale)
            bnn.KullbackLeiblerLoss(likelihood, 32)(net(x, samples=2), y)
            assert likelihood.__dict__["_spread_checked"]  # read, and let pass
        near_ten = bnn.KullbackLeiblerLoss(family(init_scale=0.1), 32)
        near_ten(net(x, samples=2), 9.0 * y)  # 90 times the start, under 10


def test_a_start_above_one_far_above_the_spread_names_linear_shrinking() -> None:
    """A scale started at 100 on standardised targets shrinks by about lr per
    step down to 1 (99,459 steps at lr 1e-3): the warning said only that below
    1 it shrinks by a factor exp(-lr) per step (1 to 0.01 in 4,600 steps)."""
    net = bnn.VISequential(bnn.VILinear(3, 1))
    x, y = torch.randn(32, 3), torch.randn(32)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(init_scale=100.0), 32)
    with pytest.warns(
        UserWarning, match=r"starts at 100; .*above 1 by about lr.*99,\d{3} at lr "
    ):
        loss_fn(net(x, samples=2), (y - y.mean()) / y.std())


@pytest.mark.parametrize("family", [bnn.Normal, bnn.StudentT])
@pytest.mark.parametrize("spread", [1e-8, 1e-2])
def test_targets_far_narrower_than_a_learned_scale_warn_once(
    family: type[bnn.Normal], spread: float
) -> None:
    """1e-8-scale targets against a learned scale starting at 1: after 600 steps
    of fit the scale was 0.65 and the intervals 3.5e8 times too wide, without
    a word (the warning covered only targets spread far wider)."""
    net = bnn.VISequential(bnn.VILinear(3, 1))
    x, y = torch.randn(32, 3), spread * torch.randn(32)
    loss_fn = bnn.KullbackLeiblerLoss(family(), dataset_size=32)
    with pytest.warns(
        UserWarning, match=r"starts at 1; .*shrink to their spread.*Standardise"
    ):
        loss_fn(net(x, samples=2), y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn(net(x, samples=2), y)  # once per likelihood
        near = bnn.KullbackLeiblerLoss(family(init_scale=spread), dataset_size=32)
        near(net(x, samples=2), y)
        fixed = bnn.KullbackLeiblerLoss(family(scale=1.0), dataset_size=32)
        fixed(net(x, samples=2), y)  # a fixed scale is the user's
        constant = bnn.KullbackLeiblerLoss(family(), dataset_size=32)
        constant(net(x, samples=2), torch.full((32,), 3.0))  # no spread to read
        few = bnn.KullbackLeiblerLoss(family(), dataset_size=32)
        few(net(x[:3], samples=2), y[:3])  # three values: close by chance
        standard = bnn.KullbackLeiblerLoss(family(), dataset_size=32)
        standard(net(x, samples=2), torch.randn(32))
        # the first batch of an unshuffled loader over a standardised series:
        # a stretch that spreads 0.05 around 1, not targets near zero
        stretch = bnn.KullbackLeiblerLoss(family(), dataset_size=32)
        stretch(net(x, samples=2), 1.0 + 0.05 * torch.randn(32))


def test_heteroscedastic_targets_far_off_the_predictions_warn_once() -> None:
    """Its scale is predicted by the network, which meets the learned scale's
    two problems through its last layer: 1e6 targets and 1e-8 targets were
    silent. A trained network (means that spread as the targets do, scales
    near their noise) is not warned about."""
    net = bnn.VISequential(bnn.VILinear(3, 8), nn.Tanh(), bnn.VILinear(8, 2))
    x = torch.randn(32, 3)
    cases = {
        1e6: r"e\+0[56] \(standard deviation\).*predicted means spread.*Standardise",
        1e-8: r"e-0[89] \(standard deviation\).*min_scale=1e-06 keeps.*lower it",
        1e-2: r"shrink by about a factor exp\(-lr\).*move the weights\. Standardise",
    }
    for spread, message in cases.items():
        loss_fn = bnn.KullbackLeiblerLoss(bnn.HeteroscedasticNormal(), 32)
        y = spread * torch.randn(32)
        with pytest.warns(UserWarning, match=message):
            loss_fn(net(x, samples=2), y)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss_fn(net(x, samples=2), y)  # once per likelihood
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn = bnn.KullbackLeiblerLoss(bnn.HeteroscedasticNormal(), 32)
        loss_fn(net(x, samples=2), torch.randn(32))  # standardised targets
        stretch = bnn.KullbackLeiblerLoss(bnn.HeteroscedasticNormal(), 32)
        stretch(net(x, samples=2), 1.0 + 0.05 * torch.randn(32))  # see above
        y = 1e6 * torch.randn(32)
        trained = torch.stack([y + 1e4 * torch.randn(32), torch.full((32,), 1e4)], -1)
        trained.requires_grad_()  # a training step's output
        bnn.HeteroscedasticNormal().warn_unscaled_targets(trained.expand(2, 32, 2), y)
        tiny = 1e-8 * torch.randn(32)
        fitted = torch.stack([tiny, torch.full((32,), -22.0)], -1)  # scale ~1e-9
        low = bnn.HeteroscedasticNormal(min_scale=0.0)
        low.warn_unscaled_targets(fitted.requires_grad_().expand(2, 32, 2), tiny)
        untrained = net(x, samples=2)  # an evaluation: no gradients, no warning
        likelihood = bnn.HeteroscedasticNormal()
        with torch.no_grad():
            likelihood.warn_unscaled_targets(net(x, samples=2), 1e6 * y)
    with pytest.warns(UserWarning, match="Standardise"):  # the next training step
        likelihood.warn_unscaled_targets(untrained, 1e6 * y)


def test_heteroscedastic_standardised_targets_and_small_predictions_are_silent() -> (
    None
):
    """Standardised targets against a network whose first predictions are
    small (means spreading 0.01, scales 5e-5: a last layer started small,
    its raw-scale bias at -10) were warned about as unscaled: below 1 the
    predictions grow by a factor per step, and the targets are standardised
    as the warning advises."""
    y = torch.randn(32)
    y = (y - y.mean()) / y.std()
    output = torch.stack([0.01 * torch.randn(32), torch.full((32,), -10.0)], -1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bnn.HeteroscedasticNormal().warn_unscaled_targets(
            output.requires_grad_().expand(2, 32, 2), y
        )
    with pytest.warns(UserWarning, match="predicted means spread"):  # raw units
        bnn.HeteroscedasticNormal().warn_unscaled_targets(
            output.expand(2, 32, 2), 77.0 * y
        )


# ------------------------------------------- the observation site, conditioned
_SCALAR_TARGETS = [
    (bnn.Poisson, torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])),
    (lambda: bnn.Normal(scale=0.5), torch.linspace(-1.0, 1.0, 5)),
    (bnn.Bernoulli, torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])),
    (lambda: bnn.StudentT(scale=0.5), torch.linspace(-1.0, 1.0, 5)),
]


@pytest.mark.parametrize(("likelihood", "y"), _SCALAR_TARGETS)
@pytest.mark.parametrize("layout", ["(B,)", "(B, 1)"])
def test_obs_conditioned_by_name_is_scored_as_the_y_argument(
    likelihood: Any, y: torch.Tensor, layout: str
) -> None:
    """``poutine.condition(pyro_model, data={"obs": y})`` == ``pyro_model(x, y)``.

    A scalar-target network returns ``(S, B, 1)``; the site drawn without
    targets had event shape ``(1,)``, so a conditioned ``(B,)`` target
    broadcast to ``(S, B, B)``: each example scored under every example's
    prediction (Poisson: -ELBO 98.45 against 40.43 with ``y`` passed).
    """
    torch.manual_seed(0)
    x = torch.randn(5, 3)
    target = y if layout == "(B,)" else y.unsqueeze(-1)
    net = bnn.VILinear(3, 1, estimator="reparam")  # output (S, B, 1)
    pyro_model = bnn.KullbackLeiblerLoss(likelihood(), dataset_size=5).pyro_model(net)
    conditioned = poutine.condition(pyro_model, data={"obs": target})
    pyro.set_rng_seed(0)
    passed = Trace_ELBO().loss(pyro_model, net.guide, x, y, samples=2)
    pyro.set_rng_seed(0)
    by_name = Trace_ELBO().loss(conditioned, net.guide, x, samples=2)
    assert by_name == pytest.approx(passed, rel=1e-6)
    # the site has one shape with or without targets: that of (S, B) draws
    sampled = poutine.trace(pyro_model).get_trace(x, samples=2).nodes["obs"]
    observed = poutine.trace(pyro_model).get_trace(x, y, samples=2).nodes["obs"]
    assert sampled["value"].shape == (2, 5)
    for site in (sampled, observed):
        assert (site["fn"].batch_shape, site["fn"].event_shape) == ((2, 5), ())


def test_predictive_draws_obs_in_the_layout_of_the_targets() -> None:
    """``Predictive``'s ``obs`` of a ``(S, B, 1)`` network was ``(k, S, B, 1)``:
    compared with targets ``(B,)`` it broadcast to ``(B, B)`` silently."""
    torch.manual_seed(0)
    x, y = torch.randn(5, 3), torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    net = bnn.VILinear(3, 1)
    pyro_model = bnn.KullbackLeiblerLoss(bnn.Poisson(), 5).pyro_model(net)
    draws = Predictive(pyro_model, guide=net.guide, num_samples=4)(x, samples=2)
    assert draws["obs"].shape == (4, 2, 5)
    assert (draws["obs"] <= y).float().mean((0, 1)).shape == (5,)


def test_obs_conditioned_with_another_shape_is_refused() -> None:
    x = torch.randn(5, 3)
    net = bnn.VILinear(3, 1)
    pyro_model = bnn.KullbackLeiblerLoss(bnn.Poisson(), 5).pyro_model(net)
    conditioned = poutine.condition(pyro_model, data={"obs": torch.zeros(5, 2)})
    with pytest.raises(ValueError, match=r"targets of shape \(5, 2\) do not match"):
        Trace_ELBO().loss(conditioned, net.guide, x, samples=2)


def test_obs_conditioned_by_name_keeps_the_ignored_labels_out() -> None:
    """Conditioning goes through the likelihood's own target handling too."""
    torch.manual_seed(0)
    net = bnn.VISequential(
        bnn.VILinear(3, 4 * 5, estimator="reparam"), nn.Unflatten(-1, (4, 5))
    )
    x, y = torch.randn(6, 3), torch.randint(0, 5, (6, 4))
    y[0, 2:] = -100
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(ignore_index=-100), N)
    pyro_model = loss_fn.pyro_model(net)
    conditioned = poutine.condition(pyro_model, data={"obs": y})
    pyro.set_rng_seed(0)
    passed = Trace_ELBO().loss(pyro_model, net.guide, x, y, samples=3)
    pyro.set_rng_seed(0)
    assert Trace_ELBO().loss(conditioned, net.guide, x, samples=3) == pytest.approx(
        passed, rel=1e-6
    )


# --------------------------------------------- batches larger than dataset_size
def test_predictive_takes_a_test_set_larger_than_dataset_size() -> None:
    """Without targets nothing is scaled by N / B: 50 test inputs after 10."""
    net = bnn.VILinear(3, 2)
    pyro_model = bnn.KullbackLeiblerLoss(bnn.Categorical(), 10).pyro_model(net)
    draws = Predictive(pyro_model, guide=net.guide, num_samples=3)(
        torch.randn(50, 3), samples=2
    )
    assert draws["obs"].shape == (3, 2, 50)


def test_a_batch_larger_than_dataset_size_is_refused_in_training_only() -> None:
    """The check catches a wrong ``dataset_size`` where a batch is trained on.

    Under ``torch.no_grad()`` (a validation pass on 200 held-out points after
    20 training ones) the loss is the same formula, ``KL / N + mean NLL``.
    """
    torch.manual_seed(0)
    net = bnn.VILinear(1, 1, estimator="reparam")
    x, y = torch.randn(200, 1), torch.randn(200)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), dataset_size=20)
    with pytest.raises(
        ValueError, match=r"larger than dataset_size=20.*under torch.no_grad\(\)"
    ):
        loss_fn(net(x), y)
    with torch.no_grad():
        output = net(x, samples=4)
        loss = loss_fn(output, y)
    nll = -torch.distributions.Normal(output[..., 0], 1.0).log_prob(y).mean()
    torch.testing.assert_close(loss_fn.last_nll, nll, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, loss_fn.last_kl + nll, rtol=1e-6, atol=1e-6)


def test_pyro_model_refuses_a_large_batch_where_it_scores_with_gradients() -> None:
    """Passed as ``y`` or conditioned by name, with gradients (SVI); taken
    without (``SVI.evaluate_loss``), equal to the PyTorch-style loss."""
    torch.manual_seed(0)
    net = bnn.VILinear(3, 2, estimator="reparam")
    x, y = torch.randn(12, 3), torch.randint(0, 2, (12,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=8, kl="mc")
    pyro_model = loss_fn.pyro_model(net)
    conditioned = poutine.condition(pyro_model, data={"obs": y})
    elbo = Trace_ELBO()
    for model, args in ((pyro_model, (x, y)), (conditioned, (x,))):
        with pytest.raises(ValueError, match=r"batch of 12 examples is larger"):
            elbo.differentiable_loss(model, net.guide, *args, samples=3)
        pyro.set_rng_seed(1)
        with torch.no_grad():
            evaluated = elbo.loss(model, net.guide, *args, samples=3)
        pyro.set_rng_seed(1)
        with torch.no_grad():
            ours = loss_fn(net(x, samples=3), y)
        assert evaluated == pytest.approx(float(ours) * 8, rel=1e-5)


# ------------------------------------------------- networks with several inputs
class _TwoInputs(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = _net()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([a, b], -1))


@pytest.mark.parametrize("pack", [tuple, list])
def test_several_inputs_are_unpacked_by_model_loss_and_pyro_model(pack: type) -> None:
    """A tuple (or a DataLoader's list) of inputs runs ``model(*x)``.

    ``model_loss`` unpacked tuples only; ``pyro_model`` passed the tuple as
    one argument (TypeError for ``forward(a, b)``).
    """
    net = _TwoInputs()
    x, y = _data()
    inputs = pack([x[:, :2], x[:, 2:]])
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, kl="mc")
    pyro.set_rng_seed(1)
    reference = loss_fn(net(x[:, :2], x[:, 2:], samples=3), y)
    pyro.set_rng_seed(1)
    torch.testing.assert_close(
        loss_fn.model_loss(net, inputs, y, samples=3), reference, rtol=0, atol=0
    )
    pyro.set_rng_seed(1)
    pyro_loss = Trace_ELBO().loss(
        loss_fn.pyro_model(net), net.guide, inputs, y, samples=3
    )
    assert pyro_loss == pytest.approx(reference.item() * N, rel=1e-5)


@pytest.mark.parametrize(
    ("samples", "batch", "error", "message"),
    [
        (-1, 8, ValueError, r"samples must be an integer >= 1, got -1"),
        (0, 8, ValueError, r"samples must be an integer >= 1, got 0"),
        (4, 0, ValueError, r"batch must be an integer >= 1, got 0"),
        (2.5, 8, TypeError, r"samples must be an integer >= 1, got 2\.5"),
    ],
)
def test_combine_refuses_counts_below_one(
    samples: object, batch: object, error: type[Exception], message: str
) -> None:
    """samples=-1 returned -1.2 (the data term's sign flipped); samples=0 or
    batch=0 raised ZeroDivisionError."""
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 100)
    with pytest.raises(error, match=message):
        loss_fn.combine(torch.tensor(-10.0), torch.tensor(5.0), samples, batch)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_data_term_under_autocast_is_float32_accurate(dtype: torch.dtype) -> None:
    """A float32 network under autocast, as the how-to recommends, with a
    noise scale of 1e-4: the loss was inf in float16 (the scale, cast to the
    output's dtype, squared to 0) and off by 0.31 nats per example in
    bfloat16. Now the data term equals the float64 one of the same outputs to
    float32 rounding (rtol 1e-6 of ~465 nats per example)."""
    torch.manual_seed(0)
    net = bnn.VISequential(bnn.VILinear(4, 16), nn.Tanh(), bnn.VILinear(16, 1))
    x = torch.randn(64, 4)
    with torch.no_grad():
        y = net(x, samples=4).mean(0).squeeze(-1) + 1e-4 * torch.randn(64)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1e-4), dataset_size=1000)
    with torch.autocast("cpu", dtype=dtype):
        out = net(x, samples=4)
        loss = loss_fn(out, y)
    assert out.dtype == dtype
    assert bool(torch.isfinite(loss))
    wide = torch.distributions.Normal(out.squeeze(-1).double(), 1e-4)
    reference = -wide.log_prob(y.double()).mean()  # per particle and example
    torch.testing.assert_close(
        loss_fn.last_nll.double(), reference, rtol=1e-6, atol=0.0
    )


def test_a_loss_over_two_calls_names_the_one_call_remedy() -> None:
    """``loss_fn(enc(a) - enc(b), y)`` over two outermost calls (two
    different networks per particle) is refused; the message said only "one
    loss per forward pass", not how to write a siamese difference (probe
    multicall, F3): one module whose forward makes both calls."""
    enc = bnn.VILinear(3, 2)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=10)
    a, b, y = torch.randn(4, 3), torch.randn(4, 3), torch.randint(0, 2, (4,))
    with pytest.raises(ValueError, match=r"different networks.*make them one call"):
        loss_fn(enc(a, samples=2) - enc(b, samples=2), y)


class _TrainStep(nn.Module):
    """A "model that returns its loss": its call runs the network and the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(bnn.VILinear(2, 4), nn.Tanh(), bnn.VILinear(4, 1))
        self.loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), dataset_size=40)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.loss_fn(self.net(x), y)  # type: ignore[no-any-return]


def test_a_loss_inside_a_running_network_names_the_module_and_the_way_out() -> None:
    """A plain module holding Bayesian layers runs as one network, so a
    loss computed inside its call got folded rows and said "cannot tell which
    forward pass produced this output ... Pass out = model(x)", which is what
    the user passed (probe ecosystem, F1). The message names the running
    module and both remedies."""
    with pytest.raises(ValueError, match=r"inside the running call of _TrainStep"):
        _TrainStep()(torch.randn(8, 2), torch.randn(8))


class _OneHeadPerTask(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = bnn.VILinear(2, 4)
        self.heads = bnn.VIModuleDict(
            {"a": bnn.VILinear(4, 1), "b": bnn.VILinear(4, 1)}
        )
        self.task = "a"

    def forward(self, x: Tensor) -> Tensor:
        return self.heads[self.task](torch.tanh(self.body(x)))


def test_the_kl_counts_layers_the_call_did_not_run() -> None:
    """Documented (concepts, loss docstring, continual-learning how-to): the
    KL is the whole network's, an idle head's included, and bnn.Trace_ELBO
    gives the same value; Pyro's own Trace_ELBO, whose model lacks the idle
    head's sites, warns and leaves its prior term out. Closed-form KL of
    every variable by hand, float64: equal to rounding."""
    net = _OneHeadPerTask().double()
    for variable in net.random_variables():
        posterior = variable.posterior
        posterior.reset_parameters(posterior.loc.detach() + 0.5, 0.3)
    x = torch.randn(10, 2, dtype=torch.float64)
    y = torch.randn(10, 1, dtype=torch.float64)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 10, reduction="sum")
    loss_fn(net(x), y)
    everything = sum(
        kl_divergence(
            v.posterior.distribution(), v.module.prior_distribution(v.name)
        ).sum()
        for v in net.random_variables()
    )
    torch.testing.assert_close(loss_fn.last_kl, everything, rtol=1e-12, atol=0)
    mc = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 10, reduction="sum", kl="mc")
    model = mc.pyro_model(net)
    pyro.set_rng_seed(1)
    ours = mc(net(x), y)
    pyro.set_rng_seed(1)
    theirs = bnn.Trace_ELBO().differentiable_loss(model, net.guide, x, y)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    pyro.set_rng_seed(1)
    with pytest.warns(UserWarning, match="Found non-auxiliary vars in guide"):
        pyros = Trace_ELBO().differentiable_loss(model, net.guide, x, y)
    assert float(pyros.detach()) < float(ours.detach())  # no idle -log p(w)


@pytest.mark.filterwarnings("ignore:Found non-auxiliary vars in guide")
def test_an_assigned_guide_counts_the_kl_of_layers_the_call_did_not_run() -> None:
    """With an assigned guide the loss raised for any multi-head network
    ("the guide samples 'heads.b.weight', which is not a weight of the
    network"): the guide draws every weight, the pass's model trace only the
    called layers'. The idle layers' KL counts, as with the default guide.
    AutoNormal's sites are Deltas of an auxiliary Normal, so the KL is Monte
    Carlo: its mean over 300 passes of 10 particles is the closed-form KL of
    every variable (the guide's loc 0 and scale 0.3 against N(0, 1)) within
    4 standard errors; leaving the idle head out is 3.7 nats, ~70 of them."""
    net = _OneHeadPerTask().double()
    net.guide = AutoNormal(net.prior_model, init_scale=0.3)
    x = torch.randn(10, 2, dtype=torch.float64)
    y = torch.randn(10, 1, dtype=torch.float64)
    loc, scale = torch.tensor(0.0, dtype=torch.float64), 0.3
    assert torch.equal(net.guide.median()["heads.b.weight"], torch.zeros(1, 4).double())
    closed_form = sum(
        kl_divergence(
            torch.distributions.Normal(loc.expand(v.shape), scale),
            v.module.prior_distribution(v.name).base_dist,  # type: ignore[attr-defined]
        ).sum()
        for v in net.random_variables()
    )
    assert len(net.random_variables()) == 6  # the idle head's two included
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 10, reduction="sum")
    estimates = []
    with torch.no_grad():
        for _ in range(300):
            loss_fn(net(x), y)
            estimates.append(float(loss_fn.last_kl))
    mean = sum(estimates) / len(estimates)
    spread = math.sqrt(sum((e - mean) ** 2 for e in estimates) / (len(estimates) - 1))
    assert abs(mean - float(closed_form)) < 4 * spread / math.sqrt(len(estimates))


@pytest.mark.parametrize(
    ("likelihood", "target"),
    [
        (bnn.Categorical(), torch.zeros(0)),  # float labels
        (bnn.Categorical(), torch.zeros(0, 2, dtype=torch.long)),  # a class dim
        (bnn.Normal(scale=1.0), torch.zeros(0, 3)),  # outputs (S, 0, 2)
    ],
)
def test_an_empty_batch_of_a_heat_zero_loss_checks_its_targets(
    likelihood: bnn.PredictiveDistribution, target: Tensor
) -> None:
    """A heat=0 loss on an empty batch returned 0 before any target check:
    float labels or a wrong layout passed on empty batches and failed on
    the others (probe falsepos27c). Their layout is checked as a batch's."""
    out = bnn.VILinear(3, 2)(torch.randn(0, 3), samples=3)
    with pytest.raises(ValueError, match=r"integer class labels|targets of shape"):
        bnn.KullbackLeiblerLoss(likelihood, N, heat=0)(out, target)


# ------------------------------------------------ Pyro handlers around the loss
# Handlers that would change a Pyro model's log-density where the loss runs.
_REWEIGHING_HANDLERS = {
    "scale 0.5": lambda: poutine.scale(scale=0.5),
    "tensor scale": lambda: poutine.scale(scale=torch.tensor(2.0)),
    "mask False": lambda: poutine.mask(mask=False),
    "tensor mask": lambda: poutine.mask(mask=torch.arange(16) < 8),
    "subsampling plate": lambda: pyro.plate("data", N, subsample_size=16),
}


@pytest.mark.parametrize(
    "handler", list(_REWEIGHING_HANDLERS.values()), ids=list(_REWEIGHING_HANDLERS)
)
def test_the_loss_refuses_a_handler_that_would_change_its_value(
    handler: Any,
) -> None:
    """``loss_fn(out, y)`` under ``poutine.scale(scale=0.5)``,
    ``poutine.mask(mask=False)`` or ``pyro.plate("data", N,
    subsample_size=16)`` returned its plain value (3.87634 in all, no
    warning), where Pyro's ``Trace_ELBO`` of the same model and guide under
    the scale gives half (probe29 pyrohandlers). No Pyro site sees the
    handler: the loss refuses, naming it."""
    net = _net()
    x, y = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    out = net(x, samples=4)
    with handler():
        with pytest.raises(
            ValueError,
            match=r"the loss was called inside (poutine\.(scale|mask)|pyro\.plate)"
            r".*computes the ELBO from the network's outputs",
        ):
            loss_fn(out, y)
        with pytest.raises(ValueError, match="the loss was called inside"):
            loss_fn.terms(out, y)
        with pytest.raises(ValueError, match="the loss was called inside"):
            loss_fn.model_loss(net, x, y, samples=4)


def test_the_refusal_says_what_to_do_instead() -> None:
    net = _net()
    x, y = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    out = net(x, samples=4)
    with (
        poutine.scale(scale=0.5),
        pytest.raises(ValueError, match="called inside") as refused,
    ):
        loss_fn(out, y)
    message = str(refused.value)
    assert "poutine.scale(scale=0.5)" in message
    assert "0.5 * loss_fn(out, y)" in message
    assert "poutine.scale(loss_fn.pyro_model(model), scale=0.5)" in message
    assert "bnn.Trace_ELBO" in message
    with (
        pyro.plate("data", N, subsample_size=16),
        pytest.raises(ValueError, match="called inside") as plate,
    ):
        loss_fn(out, y)
    assert "pyro.plate('data', 200, subsample_size=16)" in str(plate.value)
    assert "already weighs the batch's data term by dataset_size" in str(plate.value)


# Handlers that leave a Pyro model's log-density where the loss runs as it is.
_NEUTRAL_HANDLERS = {
    "trace": lambda: poutine.trace(),
    "parameter-only trace (SVI.step)": lambda: poutine.trace(param_only=True),
    "seed": lambda: poutine.seed(rng_seed=3),
    "block": lambda: poutine.block(),
    "condition": lambda: poutine.condition(data={"0.weight": torch.zeros(8, 3)}),
    "do": lambda: poutine.do(data={"0.weight": torch.zeros(8, 3)}),
    "replay": lambda: poutine.replay(trace=poutine.Trace()),
    "plate without subsampling": lambda: pyro.plate("data", 16),
    "scale 1.0": lambda: poutine.scale(scale=1.0),
    "mask True": lambda: poutine.mask(mask=True),
    "scales multiplying to 1": lambda: _nested(
        poutine.scale(scale=0.5), pyro.plate("data", 32, subsample_size=16)
    ),
    "scale outside a block": lambda: _nested(poutine.scale(scale=0.5), poutine.block()),
}


@pytest.mark.parametrize(
    "handler", list(_NEUTRAL_HANDLERS.values()), ids=list(_NEUTRAL_HANDLERS)
)
def test_a_handler_that_leaves_the_value_as_it_is_is_no_reason_to_refuse(
    handler: Any,
) -> None:
    net = _net()
    x, y = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    out = net(x, samples=4)
    plain = loss_fn(out, y)
    with handler():
        inside = loss_fn(out, y)
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


def _nested(*handlers: Any) -> Any:
    """``handlers`` entered in order, outermost first, as one context manager."""
    stack = contextlib.ExitStack()
    for handler in handlers:
        stack.enter_context(handler)
    return stack


def test_svis_fast_path_runs_the_loss_inside_its_parameter_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``SVI.step`` runs ``bnn.Trace_ELBO``, and so the loss's fast path,
    inside ``poutine.trace(param_only=True)``: not refused, the same value."""
    net = _net()
    x, y = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N, kl="mc")
    calls = []
    terms_and_batch = loss_fn.terms_and_batch

    def counted(*args: Any) -> tuple[Tensor, Tensor, int]:
        calls.append(pyro.poutine.runtime.am_i_wrapped())
        return terms_and_batch(*args)

    monkeypatch.setattr(loss_fn, "terms_and_batch", counted)
    svi = pyro.infer.SVI(
        loss_fn.pyro_model(net),
        net.guide,
        pyro.optim.SGD({"lr": 0.0}),
        bnn.Trace_ELBO(),
    )
    pyro.set_rng_seed(5)
    stepped = svi.step(x, y, samples=4)
    pyro.set_rng_seed(5)
    plain = loss_fn(net(x, samples=4), y).item() * N
    assert calls == [True, False]  # the fast path, inside SVI's trace; the plain call
    torch.testing.assert_close(stepped, plain, rtol=1e-6, atol=0)


def test_a_network_called_inside_a_handler_is_named_in_the_loss_error() -> None:
    """The forward pass moved inside the handler gave "not the output of a
    Bayesian network called outside Pyro inference" without saying that a
    handler was active (probe29): a network there runs as a Pyro model. So
    does one in a custom loss of ``pyro.infer.SVI``, run inside its
    parameter-only trace."""
    net = _net()
    x, y = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N)
    with (
        poutine.block(),
        pytest.raises(
            ValueError,
            match=r"Pyro handlers are active around this call \(poutine\.block\): a "
            r"network called inside them runs as a Pyro model",
        ),
    ):
        loss_fn(net(x, samples=4), y)

    def custom_loss(model: Any, guide: Any, x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(net(x, samples=4), y)

    svi = pyro.infer.SVI(
        lambda x, y: None, lambda x, y: None, pyro.optim.Adam({}), custom_loss
    )
    with pytest.raises(ValueError, match=r"\(poutine\.trace\(param_only=True\)\)"):
        svi.step(x, y)


@pytest.mark.parametrize("leading", [(), (1,), (1, 1), (4, 1)])
def test_a_conditioned_weight_value_in_each_accepted_layout(
    leading: tuple[int, ...],
) -> None:
    """``(*shape)``, ``(1, *shape)`` and ``(1, 1, *shape)`` broadcast to every
    particle, ``(S, 1, *shape)`` is per particle: the howto said any shape but
    the first and the last was refused."""
    net = _net()
    x, y = _data()
    pyro_model = bnn.KullbackLeiblerLoss(bnn.Categorical(), N).pyro_model(net)
    weight = torch.randn(8, 3)
    traces = []
    for value in (weight, weight.expand(*leading, 8, 3)):
        pyro.set_rng_seed(1)
        conditioned = poutine.condition(pyro_model, data={"0.weight": value})
        traces.append(poutine.trace(conditioned).get_trace(x, y, samples=4))
    first, other = traces
    torch.testing.assert_close(
        other.nodes["_RETURN"]["value"], first.nodes["_RETURN"]["value"], rtol=0, atol=0
    )
    torch.testing.assert_close(
        other.log_prob_sum(), first.log_prob_sum(), rtol=1e-6, atol=0
    )
