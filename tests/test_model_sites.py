"""Pyro models of the user's own around a network: ``bnn.per_particle``.

A network called in a Pyro model returns ``(S, B, ...)``; an observation of
the user's own on it must be one term per particle weighed ``1 / S``, as the
weight sites are. Pyro's hint for the shape error (a plain plate over the
particles) counted the data ``S`` times against the KL: a loss of 1096.9
against an exact -ELBO of 140.6 at ``S = 8`` (probe of 2026-12-01).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.contrib.autoname import scope
from pyro.infer import Trace_ELBO
from torch import Tensor, nn

import pyrolite_bnn as bnn

NOISE = 0.5


def _data() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(12, 2, generator=generator), torch.randn(12, generator=generator)


def _net() -> bnn.VISequential:
    torch.manual_seed(0)
    return bnn.VISequential(
        bnn.VILinear(2, 4, estimator="reparam"),
        nn.Tanh(),
        bnn.VILinear(4, 1, estimator="reparam"),
    )


@pytest.mark.parametrize("samples", [1, 5])
def test_own_observation_site_gives_pyro_models_elbo(samples: int) -> None:
    """A user model observing the network's output inside ``per_particle``
    has the ELBO (value and gradients) of ``loss_fn.pyro_model``, draw for
    draw; without the ``1 / S`` the data term would count ``S`` times."""
    net = _net()
    x, y = _data()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=NOISE), dataset_size=36)

    def model(x: Tensor, y: Tensor | None = None, samples: int = 1) -> None:
        out = net(x, samples=samples).squeeze(-1)
        with (
            bnn.per_particle(out),
            pyro.plate("data", 36, subsample=torch.arange(len(x))),
        ):
            pyro.sample("obs", dist.Normal(out, NOISE), obs=y)

    results = []
    for pyro_model in (loss_fn.pyro_model(net), model):
        net.zero_grad()
        pyro.set_rng_seed(1)
        value = Trace_ELBO().loss_and_grads(
            pyro_model, net.guide, x, y, samples=samples
        )
        results.append((value, [p.grad.clone() for p in net.parameters()]))
    (reference, reference_grads), (ours, our_grads) = results
    assert ours == pytest.approx(reference, rel=1e-6)
    for mine, theirs in zip(our_grads, reference_grads, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_one_plate_serves_several_sites() -> None:
    net = _net()
    x, y = _data()

    def model() -> None:
        out = net(x, samples=3).squeeze(-1)
        plate = bnn.per_particle(out)
        with plate, pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, NOISE), obs=y)
        with plate:
            pyro.sample("offset", dist.Normal(torch.zeros(3, 1), 1.0))

    trace = pyro.poutine.trace(model).get_trace()
    for site in ("obs", "offset"):
        assert trace.nodes[site]["scale"] == pytest.approx(1 / 3)
        frames = {f.name: f.size for f in trace.nodes[site]["cond_indep_stack"]}
        assert frames["particle_sites"] == 3


@pytest.mark.parametrize("remedy", [None, "reuse", "name"])
def test_a_second_block_of_one_name_says_to_reuse_it_or_name_it(
    remedy: str | None,
) -> None:
    """Two ``bnn.per_particle(...)`` blocks in one model run failed with Pyro's
    bare "Multiple sample sites named 'particle_sites'" (probe newcomer5 e2):
    the plate records a site when created. The error now names the two
    remedies, which both give the sites their plate and 1 / S weight."""
    net = _net()
    x, y = _data()

    def model() -> None:
        out = net(x, samples=3).squeeze(-1)
        plate = bnn.per_particle(out)
        with plate:
            pyro.sample("offset", dist.Normal(torch.zeros(3, 1), 1.0))
        if remedy == "name":
            plate = bnn.per_particle(out, name="obs_particles")
        elif remedy is None:
            plate = bnn.per_particle(out)
        with plate, pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, NOISE), obs=y)

    if remedy is None:
        with pytest.raises(
            RuntimeError, match=r"(?s)second bnn\.per_particle.*same object.*name"
        ):
            pyro.poutine.trace(model).get_trace()
        return
    trace = pyro.poutine.trace(model).get_trace()
    for site in ("obs", "offset"):
        assert trace.nodes[site]["scale"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"particles": 3, "name": "particles"}, "network's own plate"),
        ({"particles": 3, "dim": 0}, "negative batch dimension"),
        ({"particles": 0}, "particles"),
        ({"particles": torch.tensor(4)}, "0-dimensional tensor"),  # IndexError
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bnn.per_particle(**kwargs)  # type: ignore[arg-type]


def test_two_networks_in_one_model_are_refused_with_what_works() -> None:
    """Two networks called on their own in one Pyro model report the same
    parameter names: Pyro raised a bare "Multiple sample sites named
    'particles'", and under ``pyro.contrib.autoname.scope`` (which renames
    sample sites only) SVI silently trained one network's parameters only.
    Both are refused, naming the way that works: one VIModule holding both,
    which trains every parameter."""
    mean_net, scale_net = _net(), _net()
    x, y = _data()

    def observe(mean: Tensor, scale: Tensor, y: Tensor | None) -> None:
        with bnn.per_particle(mean), pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(mean, scale), obs=y)

    def model(x: Tensor, y: Tensor | None = None) -> None:
        mean = mean_net(x, samples=2).squeeze(-1)
        observe(mean, nn.functional.softplus(scale_net(x, samples=2)).squeeze(-1), y)

    def scoped_model(x: Tensor, y: Tensor | None = None) -> None:
        with scope(prefix="mean"):
            mean = mean_net(x, samples=2).squeeze(-1)
        with scope(prefix="scale"):
            scale = nn.functional.softplus(scale_net(x, samples=2)).squeeze(-1)
        observe(mean, scale, y)

    for refused in (model, scoped_model):
        with pytest.raises(RuntimeError, match="one VIModule that holds"):
            pyro.poutine.trace(refused).get_trace(x, y)

    class Both(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.mean, self.scale = _net(), _net()

        def forward(self, x: Tensor) -> Tensor:
            return torch.cat([self.mean(x), self.scale(x)], -1)

    both = Both()

    def joint_model(x: Tensor, y: Tensor | None = None) -> None:
        out = both(x, samples=2)
        observe(out[..., 0], nn.functional.softplus(out[..., 1]), y)

    def joint_guide(x: Tensor, y: Tensor | None = None) -> None:
        both.guide(samples=2)

    before = [p.detach().clone() for p in both.parameters()]
    svi = pyro.infer.SVI(
        joint_model, joint_guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO()
    )
    for _ in range(3):
        assert torch.isfinite(torch.tensor(svi.step(x, y)))
    for old, new in zip(before, both.parameters(), strict=True):
        assert not torch.equal(old, new)


def test_enumerated_site_per_particle_gives_each_particles_marginal() -> None:
    """docs/howto.rst: an enumerated site on the network's output sits in
    ``per_particle`` and ``TraceEnum_ELBO`` counts the particle dimension
    (``max_plate_nesting=2``); the bound is then each particle's log marginal
    likelihood (a sum over the components), averaged over the particles, plus
    the weights' log p - log q: equal, draw for draw, to float precision."""
    from pyro import poutine
    from pyro.infer import TraceEnum_ELBO, config_enumerate
    from pyro.ops.indexing import Vindex

    torch.manual_seed(0)
    net = bnn.VISequential(
        bnn.VILinear(2, 4, estimator="reparam"),
        nn.Tanh(),
        bnn.VILinear(4, 2, estimator="reparam"),
    )
    x, y = _data()
    weights = torch.tensor([0.3, 0.7])
    samples = 3

    @config_enumerate
    def model(x: Tensor, y: Tensor) -> None:
        means = net(x, samples=samples)
        with bnn.per_particle(means), pyro.plate("data", len(x)):
            component = pyro.sample("component", dist.Categorical(weights))
            pyro.sample("obs", dist.Normal(Vindex(means)[..., component], NOISE), obs=y)

    def guide(x: Tensor, y: Tensor) -> None:
        net.guide(samples=samples)

    pyro.set_rng_seed(1)
    loss = TraceEnum_ELBO(max_plate_nesting=2).loss(model, guide, x, y)
    pyro.set_rng_seed(1)
    drawn = poutine.trace(guide).get_trace(x, y)
    run = poutine.trace(poutine.replay(net, trace=drawn)).get_trace(x, samples=samples)
    means = run.nodes["_RETURN"]["value"]  # (S, B, 2)
    joint = weights.log() + dist.Normal(means, NOISE).log_prob(y.unsqueeze(-1))
    data = torch.logsumexp(joint, -1).sum(-1).mean()
    weight_terms = run.log_prob_sum() - drawn.log_prob_sum()  # scaled 1/S each
    torch.testing.assert_close(
        torch.tensor(loss), -(data + weight_terms).detach(), rtol=1e-6, atol=1e-4
    )


def test_mcmc_on_a_model_running_the_default_particles_is_refused() -> None:
    """MCMC on a user model calling ``net(x)`` sampled the default 10
    particles, each from the posterior tempered by 1/10 (standard deviations
    3.1-3.2x the closed form's): refused, naming ``samples=1``, which runs.
    So is an explicit ``samples=4``, which sampled the posterior tempered by
    1/4 without a word."""
    net = bnn.VILinear(2, 1)
    x, y = _data()

    def model(x: Tensor, y: Tensor | None = None, samples: int | None = None) -> None:
        out = net(x, samples=samples).squeeze(-1)
        with bnn.per_particle(out), pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, NOISE), obs=y)

    def mcmc() -> pyro.infer.MCMC:
        kernel = pyro.infer.NUTS(model, max_tree_depth=2)
        return pyro.infer.MCMC(
            kernel, num_samples=2, warmup_steps=2, disable_progbar=True
        )

    with pytest.raises(ValueError, match="samples=1"):
        mcmc().run(x, y)
    with pytest.raises(ValueError, match=r"tempered by 1/4.*samples=1"):
        mcmc().run(x, y, samples=4)
    chain = mcmc()
    chain.run(x, y, samples=1)
    assert chain.get_samples()["weight"].shape == (2, 1, 1, 1, 2)


def test_autoguide_on_a_model_running_a_network_warns() -> None:
    """``AutoNormal(user_model)`` learns its own copy of the network's weights
    and leaves the network's posterior (predict, checkpoints) untrained: it
    warns; built on ``poutine.block(model, expose=...)`` for the user's own
    sites it covers no weight and does not."""
    from pyro.infer.autoguide import AutoNormal

    net = bnn.VILinear(2, 1)
    x, y = _data()

    def model(x: Tensor, y: Tensor | None = None) -> None:
        out = net(x, samples=1).squeeze(-1)
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with bnn.per_particle(out), pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, sigma), obs=y)

    with pytest.warns(UserWarning, match="net.prior_model"):
        AutoNormal(model)(x, y)
    own = AutoNormal(pyro.poutine.block(model, expose=["sigma"]))
    own(x, y)  # no warning (filterwarnings=error)
    assert {name for name, _ in own.named_parameters()} == {
        "locs.sigma_unconstrained",
        "scales.sigma_unconstrained",
    }


def test_the_networks_guide_in_an_autoguide_list_is_refused_naming_the_recipe() -> None:
    """``net.guide`` in an ``AutoGuideList`` on a user model (which Pyro's
    plates cannot serve: the list opens the particle plate around its parts)
    got a warning that the list covers the weights with a posterior of its
    own (it covers none) and then "two networks run on their own ... (or one
    network twice)" for one network called once. It is now refused for what
    it is, with the guide function that works; a part that does cover the
    weights still warns, under its own name."""
    from pyro import poutine
    from pyro.infer.autoguide import AutoGuideList, AutoNormal

    net = bnn.VILinear(2, 1)
    x, y = _data()

    def model(x: Tensor, y: Tensor | None = None, samples: int = 3) -> None:
        out = net(x, samples=samples).squeeze(-1)
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with bnn.per_particle(out), pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, sigma), obs=y)

    guides = AutoGuideList(model)
    guides.append(net.guide)
    guides.append(AutoNormal(poutine.block(model, expose=["sigma"])))
    with pytest.raises(
        RuntimeError,
        match=r"^net\.guide cannot join an AutoGuideList: .* plate 'particles' .*"
        r"poutine\.block\(model, expose=.*net\.guide\(samples=samples\)",
    ):
        Trace_ELBO().loss(model, guides, x, y)  # no warning (filterwarnings=error)

    covering = AutoGuideList(model)
    covering.append(AutoNormal(model))
    with pytest.warns(UserWarning, match="is built on a Pyro model") as warned:
        Trace_ELBO().loss(model, covering, x, y)
    messages = [str(warning.message) for warning in warned]
    assert [m.split(" is built on")[0] for m in messages] == ["AutoNormal"]


@pytest.mark.parametrize("networks_first", [True, False])
def test_an_autoguide_list_of_own_sites_beside_the_networks_guide_names_the_block(
    networks_first: bool,
) -> None:
    """An ``AutoGuideList`` of the user's own sites built on the whole model,
    called beside ``net.guide`` (not holding it), opens the network's particle
    plate too: Pyro's "Multiple sample sites named 'particles'" came with
    ``net.guide`` first, the note on two networks with the list first. Both
    now name the list's plates and ``poutine.block(model, expose=[...])``,
    with which the same guide runs (no warning: filterwarnings=error)."""
    from pyro import poutine
    from pyro.infer.autoguide import AutoDelta, AutoGuideList, AutoNormal

    net = bnn.VILinear(2, 1)
    x, y = _data()

    def model(x: Tensor, y: Tensor | None = None, samples: int = 3) -> None:
        out = net(x, samples=samples).squeeze(-1)
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        tau = pyro.sample("tau", dist.Normal(0.0, 1.0))
        with bnn.per_particle(out), pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out + tau, sigma), obs=y)

    def guide_with(own: AutoGuideList) -> Callable[..., None]:
        own.append(AutoDelta(poutine.block(model, expose=["sigma"])))
        own.append(AutoNormal(poutine.block(model, expose=["tau"])))

        def guide(x: Tensor, y: Tensor | None = None, samples: int = 3) -> None:
            if networks_first:
                net.guide(samples=samples)
            own(x, y, samples)
            if not networks_first:
                net.guide(samples=samples)

        return guide

    with pytest.raises(
        RuntimeError,
        match=r"^an AutoGuideList built on the whole model .* plate 'particles' .*"
        r"AutoGuideList\(poutine\.block\(model, expose=",
    ):
        Trace_ELBO().loss(model, guide_with(AutoGuideList(model)), x, y)
    pyro.clear_param_store()
    blocked = AutoGuideList(poutine.block(model, expose=["sigma", "tau"]))
    assert torch.isfinite(
        torch.tensor(Trace_ELBO().loss(model, guide_with(blocked), x, y))
    )


@pytest.mark.parametrize("samples", [4, 1])
def test_messenger_autoguide_on_a_model_running_a_network_trains_as_in_pyro(
    samples: int,
) -> None:
    """``AutoNormalMessenger(user_model)`` (after the warning above) crashed in
    ``Adam``: it made its locs from the prior mean broadcast over the particle
    plate (stride 0), and in the network's module-local parameter mode Pyro
    keeps that tensor as the parameter; with one particle the bias's loc was
    the prior's loc buffer itself, which training moved. Losses now equal the
    same model written in plain Pyro, step by step, and the prior stays."""
    from pyro import poutine
    from pyro.infer import SVI
    from pyro.infer.autoguide import AutoNormalMessenger

    net = bnn.VILinear(2, 1)
    x, y = _data()

    def model(x: Tensor, y: Tensor) -> None:
        out = net(x, samples=samples).squeeze(-1)
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with bnn.per_particle(out), pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, sigma), obs=y)

    def plain(x: Tensor, y: Tensor) -> None:
        with pyro.plate("particles", samples, dim=-2):
            with poutine.scale(scale=1.0 / samples):
                weight = pyro.sample(
                    "weight", dist.Normal(0.0, 1.0).expand([1, 2]).to_event(2)
                )
                bias = pyro.sample(
                    "bias", dist.Normal(0.0, 1.0).expand([1]).to_event(1)
                )
            out = torch.einsum("spio,bo->spb", weight, x).squeeze(-2) + bias[..., 0]
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with (
            pyro.plate("observed particles", samples, dim=-2),
            poutine.scale(scale=1.0 / samples),
            pyro.plate("data", len(x)),
        ):
            pyro.sample("obs", dist.Normal(out, sigma), obs=y)

    def losses(fn: object) -> list[float]:
        pyro.clear_param_store()  # the guide keeps its "sigma" there
        pyro.set_rng_seed(1)
        guide = AutoNormalMessenger(fn)
        svi = SVI(fn, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        return [svi.step(x, y) for _ in range(4)]

    with pytest.warns(UserWarning, match="net.prior_model"):
        ours = losses(model)
    assert ours == pytest.approx(losses(plain), rel=1e-6)
    assert float(net.prior.bias.loc) == 0.0  # the N(0, 1) prior's mean stays


@pytest.mark.parametrize("guide", ["AutoNormal", "AutoDelta", "AutoNormalMessenger"])
def test_autoguides_at_the_prior_mean_never_train_the_prior(guide: str) -> None:
    """``init_to_mean`` hands an autoguide the prior's mean; Pyro's parameter
    store keeps a contiguous tensor as it is, so the guide's loc *was* the
    prior's ``loc`` buffer (a MOPED prior; the bias of one weight at one
    particle) and SVI moved the prior (probe of 2026-12-02). Under Pyro the
    priors hand out copies."""
    from pyro.infer import SVI
    from pyro.infer import autoguide as autoguides
    from pyro.infer.autoguide.initialization import init_to_mean

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    net = bnn.convert(plain, moped=0.1)
    priors = {k: v.clone() for k, v in net.state_dict().items() if "prior" in k}
    x, y = _data()

    def model(x: Tensor, y: Tensor) -> None:
        out = net(x, samples=1).squeeze(-1)
        with bnn.per_particle(out), pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, NOISE), obs=y)

    def train() -> None:
        chosen = getattr(autoguides, guide)(model, init_loc_fn=init_to_mean)
        svi = SVI(model, chosen, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        for _ in range(3):
            svi.step(x, y)

    pyro.clear_param_store()
    with pytest.warns(UserWarning, match="net.prior_model"):
        train()
    state = net.state_dict()
    for name, value in priors.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)


def test_guide_and_model_with_different_particle_counts_say_so() -> None:
    """``Predictive(model, guide=net.guide)`` with a model calling the network
    with ``samples=1`` and the guide drawing its default 10: the error named
    the shapes only; it now says to give both the same ``samples=``."""
    from pyrolite_bnn._sites import SiteShapeError

    net = bnn.VILinear(2, 1)
    x, _ = _data()

    def model(x: Tensor, y: Tensor | None = None) -> None:
        out = net(x, samples=1).squeeze(-1)
        with bnn.per_particle(out), pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, NOISE), obs=y)

    with pytest.raises(SiteShapeError, match="the same samples="):
        pyro.infer.Predictive(model, guide=net.guide, num_samples=2)(x)


def test_network_called_inside_a_data_plate_is_refused_with_what_works() -> None:
    """Pyro said only "Model and guide shapes disagree at site 'weight'": inside
    the plate the model's weights took the plate's dimension."""
    net = bnn.VILinear(2, 1)
    x, y = torch.randn(40, 2), torch.randn(40)

    def model() -> None:
        with pyro.plate("data", 40, subsample_size=10) as idx:
            out = net(x[idx], samples=4).squeeze(-1)
            with bnn.per_particle(out):
                pyro.sample("obs", dist.Normal(out, 0.5), obs=y[idx])

    def guide() -> None:
        net.guide(samples=4)

    with pytest.raises(
        NotImplementedError, match=r"found plate 'data'.*before opening"
    ):
        Trace_ELBO().loss(model, guide)


_PLATES = {
    # a plain plate over the particles: the data counted S times (warns)
    "plain": lambda s, b: (pyro.plate("particles2", s, dim=-2),),
    # the remedy, and a user's own 1/S weight: no warning
    "per_particle": lambda s, b: (bnn.per_particle(s),),
    "scaled": lambda s, b: (
        pyro.plate("particles2", s, dim=-2),
        pyro.poutine.scale(scale=1.0 / s),
    ),
}


@pytest.mark.parametrize("plate", sorted(_PLATES))
@pytest.mark.parametrize(
    "elbo", [bnn.Trace_ELBO, bnn.TraceMeanField_ELBO, bnn.RenyiELBO]
)
def test_observing_in_a_plain_plate_over_the_particles_warns(
    plate: str, elbo: type
) -> None:
    """A user's model observing the network's ``(S, B)`` output inside
    ``pyro.plate("particles2", S, dim=-2)`` (the fix Pyro's shape error
    suggests) counts the data ``S`` times: -ELBO 753.20 against 347.48 with
    ``bnn.per_particle`` (probe of 2026-12). The library's ELBOs warn, naming
    ``bnn.per_particle``; the remedy, a plate carrying its own ``1 / S`` and
    a data plate (subsampled, scale ``N / B``) inside give no warning
    (warnings are errors in the tests)."""
    net = _net()
    x, y = _data()
    samples = 4

    def model(x: Tensor, y: Tensor | None = None) -> None:
        out = net(x, samples=samples).squeeze(-1)
        with contextlib.ExitStack() as stack:
            for context in _PLATES[plate](samples, len(x)):
                stack.enter_context(context)
            stack.enter_context(pyro.plate("data", 36, subsample=torch.arange(12)))
            pyro.sample("obs", dist.Normal(out, NOISE), obs=y)

    def guide(x: Tensor, y: Tensor | None = None) -> None:
        net.guide(samples=samples)

    # (RenyiELBO.loss runs without gradients, where the dependence on the
    # network cannot be seen: its training step warns)
    step = elbo().loss_and_grads
    if plate != "plain":
        step(model, guide, x, y)
        return
    with pytest.warns(UserWarning, match=r"'obs'.*data 4 times.*bnn.per_particle"):
        step(model, guide, x, y)


_MINIBATCH_WEIGHTS = {
    # the minibatch weight N / B alone: the data counted S times (warns)
    "uncompensated": (lambda n, b, s: [n / b], True),
    "float": (lambda n, b, s: [n / b, 1.0 / s], False),
    # a one-element tensor 1 / S was skipped by the check (probe falsepos12)
    "tensor": (lambda n, b, s: [n / b, torch.tensor(1.0 / s)], False),
    "tensor-alone": (lambda n, b, s: [torch.tensor(1.0 / s)], False),
    # one factor N / (B * S): no plate holds N, and the factor cannot be told
    # from a minibatch weight without the 1 / S: warns, naming a factor of
    # its own as the way
    "combined": (lambda n, b, s: [n / (b * s)], True),
}


@pytest.mark.parametrize("weights", sorted(_MINIBATCH_WEIGHTS))
def test_a_minibatch_weight_of_the_users_own_is_no_particle_weight(
    weights: str,
) -> None:
    """The same plain plate over the particles with the minibatch weighed by
    hand, ``poutine.scale(N / B)`` around ``pyro.plate("data", B)`` (a common
    Pyro idiom), counts the data ``S`` times just the same (-ELBO 692.20 in
    both, probe of 2026-12), but any scale other than the subsampling's was
    taken for the user's own ``1 / S``: no warning. Only a scale holding
    ``1 / S`` silences it now, beside the minibatch weight or not, a number
    or a one-element tensor (a tensor was not read: it warned)."""
    net = _net()
    x, y = _data()
    samples = 4
    factors, warns = _MINIBATCH_WEIGHTS[weights]

    def model(x: Tensor, y: Tensor | None = None) -> None:
        out = net(x, samples=samples).squeeze(-1)
        with contextlib.ExitStack() as stack:
            stack.enter_context(pyro.plate("particles2", samples, dim=-2))
            for weight in factors(36, len(x), samples):
                stack.enter_context(pyro.poutine.scale(scale=weight))
            stack.enter_context(pyro.plate("data", len(x)))
            pyro.sample("obs", dist.Normal(out, NOISE), obs=y)

    def guide(x: Tensor, y: Tensor | None = None) -> None:
        net.guide(samples=samples)

    step = bnn.Trace_ELBO().loss_and_grads
    if not warns:
        step(model, guide, x, y)  # no warning (filterwarnings=error)
        return
    way = r"(?s)'obs'.*data 4 times.*bnn.per_particle.*poutine.scale of its own"
    with pytest.warns(UserWarning, match=way):
        step(model, guide, x, y)


def test_a_data_plate_at_the_particle_dimension_does_not_warn() -> None:
    """A plate of the user's at dim -2 whose size is not the particle count
    (a second data dimension) is no plate over the particles."""
    net = _net()
    x, _ = _data()
    y = torch.randn(3, 12)

    def model(x: Tensor, y: Tensor | None = None) -> None:
        out = net(x, samples=4).squeeze(-1).mean(0)
        with pyro.plate("rows", 3, dim=-2), pyro.plate("data", 12):
            pyro.sample("obs", dist.Normal(out, NOISE), obs=y)

    def guide(x: Tensor, y: Tensor | None = None) -> None:
        net.guide(samples=4)

    bnn.Trace_ELBO().loss(model, guide, x, y)


def test_a_site_of_the_models_own_in_a_plate_of_s_members_does_not_warn() -> None:
    """A hierarchical site beside the network, in pyro.plate("groups", 10,
    dim=-2) with the default 10 particles, was reported as counting the data
    10 times (the loss was right)."""
    net = _net()
    x, y = _data()

    def model(x: Tensor, y: Tensor | None = None) -> None:
        out = net(x).squeeze(-1)
        with bnn.per_particle(out), pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, NOISE), obs=y)
        with pyro.plate("groups", 10, dim=-2), pyro.plate("members", 3):
            pyro.sample("z", dist.Normal(0.0, 1.0), obs=torch.zeros(10, 3))

    def guide(x: Tensor, y: Tensor | None = None) -> None:
        net.guide()

    assert net.samples == 10
    for elbo in (bnn.Trace_ELBO, bnn.TraceMeanField_ELBO, bnn.RenyiELBO):
        elbo().loss(model, guide, x, y)
