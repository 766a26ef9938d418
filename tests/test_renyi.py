"""``bnn.RenyiELBO``: the Rényi bound over all ``K x S`` particles.

References: Pyro's ``RenyiELBO`` (one particle per guide run), the Rényi bound
written out by hand from the drawn weights of a Bayesian linear regression,
and that model's closed-form log evidence.
"""

from __future__ import annotations

import copy
import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO as PyroRenyiELBO
from torch import Tensor, nn

import pyrolite_bnn as bnn

NOISE = 0.5


def _regression(n: int = 10) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=generator)
    w = torch.tensor([1.5, -0.7])
    y = x @ w + NOISE * torch.randn(n, generator=generator)
    return x, y


def _linear(loc: Tensor, scale: Tensor) -> bnn.VILinear:
    """``VILinear(2, 1)`` without bias, prior N(0, 1), posterior N(loc, scale)."""
    layer = bnn.VILinear(2, 1, bias=False)
    posterior = layer.posterior["weight"]
    with torch.no_grad():
        posterior.loc_unconstrained.copy_(loc.reshape(1, 2))
        posterior.rho_unconstrained.copy_(
            torch.log(torch.expm1(scale.reshape(1, 2)))  # inverse softplus
        )
    return layer


def _exact_posterior(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and covariance of the weights' posterior under prior N(0, I)."""
    precision = torch.eye(2) + x.T @ x / NOISE**2
    covariance = torch.linalg.inv(precision)
    return covariance @ x.T @ y / NOISE**2, covariance


def _log_evidence(x: Tensor, y: Tensor) -> float:
    covariance = NOISE**2 * torch.eye(len(x)) + x @ x.T
    evidence = dist.MultivariateNormal(torch.zeros(len(x)), covariance)
    return float(evidence.log_prob(y))


def _model(layer: bnn.VILinear, dataset_size: int) -> bnn.loss.PyroModel:
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=NOISE), dataset_size)
    return loss_fn.pyro_model(layer)


def _broad_layer(x: Tensor, y: Tensor) -> bnn.VILinear:
    """A mean-field posterior twice as wide as the exact one, at its mean."""
    mean, covariance = _exact_posterior(x, y)
    return _linear(mean.double().float(), 2.0 * covariance.diagonal().sqrt())


def _by_hand(
    layer: bnn.VILinear, x: Tensor, y: Tensor, draws: Tensor, dataset_size: int
) -> Tensor:
    """Log weights ``log p(y|w) N/B + log p(w) - log q(w)`` of weight draws.

    ``draws``: ``(draws, 1, 1, 2)`` weights; computed with torch.distributions only.
    """
    loc, scale = layer.posterior["weight"].normal_params()
    w = draws.reshape(-1, 2)
    means = w @ x.T  # (draws, B)
    likelihood = torch.distributions.Normal(means, NOISE).log_prob(y).sum(-1)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(w).sum(-1)
    posterior = torch.distributions.Normal(loc.reshape(2), scale.reshape(2))
    return likelihood * dataset_size / len(x) + prior - posterior.log_prob(w).sum(-1)


def _bound(log_weights: Tensor, alpha: float) -> Tensor:
    scaled = (1 - alpha) * log_weights.reshape(-1)
    return (torch.logsumexp(scaled, 0) - math.log(scaled.numel())) / (1 - alpha)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("runs", [1, 3])
def test_one_particle_equals_pyros_renyi_elbo(alpha: float, runs: int) -> None:
    """``samples=1``: value and gradients are Pyro's class's (same seed)."""
    torch.manual_seed(0)
    net = bnn.VISequential(bnn.VILinear(2, 4), nn.Tanh(), bnn.VILinear(4, 1))
    x, y = _regression()
    model = _model(net, dataset_size=40)  # subsampled: N / B = 4
    results = []
    for elbo in (bnn.RenyiELBO, PyroRenyiELBO):
        net.zero_grad()
        pyro.set_rng_seed(1)
        value = elbo(alpha=alpha, num_particles=runs).loss_and_grads(
            model, net.guide, x, y, samples=1
        )
        grads = [p.grad.clone() for p in net.parameters()]
        pyro.set_rng_seed(1)
        plain = elbo(alpha=alpha, num_particles=runs).loss(
            model, net.guide, x, y, samples=1
        )
        results.append((value, plain, grads))
    (ours, ours_plain, our_grads), (pyros, pyros_plain, pyro_grads) = results
    assert ours == pytest.approx(pyros, rel=1e-6)
    assert ours_plain == pytest.approx(pyros_plain, rel=1e-6)
    for mine, theirs in zip(our_grads, pyro_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.5, -1.0])
def test_value_and_gradient_are_the_bound_over_all_draws(alpha: float) -> None:
    """``K = 2`` runs of ``S = 5`` particles: the bound over the 10 draws,
    with its gradient, as written out by hand from the drawn weights (a
    mini-batch: the likelihood scaled by N / B = 3)."""
    x, y = _regression()
    layer = _broad_layer(x, y)
    model = _model(layer, dataset_size=30)
    runs, samples = 2, 5

    layer.zero_grad()
    pyro.set_rng_seed(2)
    value = bnn.RenyiELBO(alpha=alpha, num_particles=runs).loss_and_grads(
        model, layer.guide, x, y, samples=samples
    )
    grads = [p.grad.clone() for p in layer.parameters()]

    # The same draws: the guide's weight site, run by run.
    layer.zero_grad()
    pyro.set_rng_seed(2)
    log_weights = []
    for _ in range(runs):
        trace = poutine.trace(layer.guide).get_trace(x, y, samples=samples)
        draws = trace.nodes["weight"]["value"]
        assert draws.shape == (samples, 1, 1, 2)
        poutine.trace(poutine.replay(model, trace=trace)).get_trace(
            x, y, samples=samples
        )
        log_weights.append(_by_hand(layer, x, y, draws, dataset_size=30))
    bound = _bound(torch.stack(log_weights), alpha)
    (-bound).backward()
    assert value == pytest.approx(-float(bound.detach()), rel=1e-5)
    for mine, by_hand in zip(grads, (p.grad for p in layer.parameters()), strict=True):
        torch.testing.assert_close(mine, by_hand, rtol=1e-4, atol=1e-5)


def test_importance_weighted_bound_reaches_the_log_evidence() -> None:
    """``alpha = 0`` with 4 x 500 draws from a posterior twice too wide: within
    0.02 nats of the closed-form log evidence, where the ELBO is 0.5+ nats
    below and Pyro's class with the same particles stays near the ELBO."""
    x, y = _regression()
    layer = _broad_layer(x, y)
    model = _model(layer, dataset_size=len(x))
    evidence = _log_evidence(x, y)

    pyro.set_rng_seed(3)
    ours = -bnn.RenyiELBO(alpha=0.0, num_particles=4).loss(
        model, layer.guide, x, y, samples=500
    )
    pyro.set_rng_seed(3)
    elbo = -pyro.infer.Trace_ELBO(num_particles=4).loss(
        model, layer.guide, x, y, samples=500
    )
    pyro.set_rng_seed(3)
    pyros = -PyroRenyiELBO(alpha=0.0, num_particles=4).loss(
        model, layer.guide, x, y, samples=500
    )
    assert ours == pytest.approx(evidence, abs=0.02)
    assert elbo < evidence - 0.5
    assert pyros < evidence - 0.5


def test_bound_falls_with_alpha_on_the_same_draws() -> None:
    """On the same draws the bound is non-increasing in alpha and above their
    mean log weight (the ELBO's estimate): a power mean inequality."""
    x, y = _regression()
    layer = _broad_layer(x, y)
    model = _model(layer, dataset_size=len(x))
    values = []
    for alpha in (-2.0, 0.0, 0.3, 0.6, 0.9):
        pyro.set_rng_seed(4)
        values.append(
            -bnn.RenyiELBO(alpha=alpha, num_particles=3).loss(
                model, layer.guide, x, y, samples=20
            )
        )
    pyro.set_rng_seed(4)
    elbo = -pyro.infer.Trace_ELBO(num_particles=3).loss(
        model, layer.guide, x, y, samples=20
    )
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(values))
    assert values[-1] >= elbo - 1e-6


def test_model_without_particle_plate_goes_to_pyros_class() -> None:
    """A Pyro model of the user's own (no network): Pyro's value and gradients
    under the same seed (the traces drawn to decide are not counted)."""

    def model() -> None:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.7))

    def guide() -> None:
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.3)), 0.8))

    results = []
    for elbo in (bnn.RenyiELBO, PyroRenyiELBO):
        pyro.clear_param_store()
        pyro.set_rng_seed(5)
        value = elbo(alpha=0.5, num_particles=3).loss_and_grads(model, guide)
        grad = pyro.param("loc").unconstrained().grad.clone()
        results.append((value, grad))
    pyro.clear_param_store()
    (ours, our_grad), (pyros, pyro_grad) = results
    assert ours == pytest.approx(pyros, rel=1e-6)
    torch.testing.assert_close(our_grad, pyro_grad)


def test_trains_under_svi() -> None:
    """``SVI`` with the bound (``alpha = 0``, 2 x 8 draws a step) brings it from 3
    nats below the log evidence to within 0.1 nats of it (measured with 4 x 500
    draws). (The importance-weighted bound leaves the posterior wider than the
    ELBO would: its gradient for the scales is weak, Rainforth et al. 2018.)"""
    x, y = _regression()
    layer = _linear(torch.zeros(2), torch.full((2,), 0.5))
    model = _model(layer, dataset_size=len(x))
    evidence = _log_evidence(x, y)

    def bound() -> float:
        pyro.set_rng_seed(7)
        return -bnn.RenyiELBO(alpha=0.0, num_particles=4).loss(
            model, layer.guide, x, y, samples=500
        )

    before = bound()
    svi = pyro.infer.SVI(
        model,
        layer.guide,
        pyro.optim.Adam({"lr": 0.05}),
        bnn.RenyiELBO(alpha=0.0, num_particles=2),
    )
    pyro.set_rng_seed(6)
    for _ in range(300):
        svi.step(x, y, samples=8)
    assert before < evidence - 2.0
    assert bound() == pytest.approx(evidence, abs=0.1)


def test_own_model_with_per_particle_observation_is_the_networks_bound() -> None:
    """The how-to's own model (the network's output observed inside
    ``bnn.per_particle``) is ``pyro_model`` draw for draw: the same bound, value
    and gradients. Before, its observation was not seen as per particle and the
    model went to Pyro's class: -157.0 (near the ELBO) against -138.1."""
    x, y = _regression()
    layer = _broad_layer(x, y)

    def own_model(x: Tensor, y: Tensor, samples: int) -> None:
        out = layer(x, samples=samples).squeeze(-1)
        with bnn.per_particle(out), pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, NOISE), obs=y)

    results = []
    for model in (own_model, _model(layer, dataset_size=len(x))):
        layer.zero_grad()
        pyro.set_rng_seed(8)
        value = bnn.RenyiELBO(alpha=0.0, num_particles=2).loss_and_grads(
            model, layer.guide, x, y, samples=50
        )
        results.append((value, [p.grad.clone() for p in layer.parameters()]))
    (own, own_grads), (network, network_grads) = results
    assert own == pytest.approx(network, rel=1e-6)
    for a, b in zip(own_grads, network_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_one_vectorised_run_is_the_bound_over_its_draws() -> None:
    """``vectorize_particles=True, num_particles=1``: Pyro adds no particle plate
    of its own, so the run is the bound over its ``S`` draws, as without the
    flag (it went to Pyro's class: near the ELBO)."""
    x, y = _regression()
    layer = _broad_layer(x, y)
    model = _model(layer, dataset_size=len(x))
    values = []
    for vectorize in (False, True):
        pyro.set_rng_seed(9)
        elbo = bnn.RenyiELBO(
            alpha=0.0,
            num_particles=1,
            vectorize_particles=vectorize,
            max_plate_nesting=2,  # not guessed: that would run the model first
        )
        values.append(elbo.loss(model, layer.guide, x, y, samples=50))
    assert values[1] == pytest.approx(values[0], rel=1e-5)


def test_half_precision_network_has_a_finite_bound() -> None:
    """The guide's log density of 10,000 weights (~60,000 nats) is summed in
    float32: in float16 it overflowed and the bound was inf. The bound is that
    of a float32 copy of the same (rounded) weights within 0.5 %."""
    torch.manual_seed(0)
    half = bnn.VISequential(
        bnn.VILinear(100, 100), nn.Tanh(), bnn.VILinear(100, 3)
    ).half()
    full = copy.deepcopy(half).float()
    x, y = torch.randn(32, 100), torch.randint(0, 3, (32,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=32)
    values = []
    for network, inputs in ((half, x.half()), (full, x)):
        pyro.set_rng_seed(10)
        values.append(
            bnn.RenyiELBO(alpha=0.0, num_particles=2).loss(
                loss_fn.pyro_model(network), network.guide, inputs, y, samples=4
            )
        )
    assert math.isfinite(values[0])
    assert values[0] == pytest.approx(values[1], rel=5e-3)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"num_particles": 0}, ValueError, "num_particles must be an integer >= 1"),
        ({"num_particles": 2.5}, TypeError, "num_particles must be an integer"),
        ({"alpha": float("nan")}, ValueError, "alpha must be finite"),
        ({"alpha": float("inf")}, ValueError, "alpha must be finite"),
        ({"alpha": "0"}, TypeError, "alpha must be a number"),
        ({"alpha": 1.0}, ValueError, "should not be equal to 1"),
    ],
)
def test_bad_arguments_are_refused(
    arguments: dict[str, object], error: type[Exception], message: str
) -> None:
    """``num_particles=0`` raised an ``IndexError`` at the first step, a
    non-finite alpha gave a NaN loss."""
    with pytest.raises(error, match=message):
        bnn.RenyiELBO(**arguments)  # type: ignore[arg-type]


def test_a_per_particle_plate_of_another_size_is_refused() -> None:
    """Six particles in the user's plate against the network's five gave
    torch's bare broadcast error."""
    x, y = _regression()
    layer = _broad_layer(x, y)

    def own_model(x: Tensor, y: Tensor, samples: int) -> None:
        out = layer(x, samples=samples).squeeze(-1)
        with bnn.per_particle(samples + 1), pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out[:1], NOISE), obs=y)

    with pytest.raises(ValueError, match="site 'obs' is in a plate of 6 particles"):
        bnn.RenyiELBO(num_particles=1).loss(own_model, layer.guide, x, y, samples=5)
