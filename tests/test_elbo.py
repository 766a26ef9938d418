"""``bnn.Trace_ELBO`` / ``bnn.TraceMeanField_ELBO``: Pyro's values, faster."""

from __future__ import annotations

import math
from typing import Any
from unittest import mock

import pyro
import pytest
import torch
from pyro import poutine
from torch import Tensor, nn

import pyrolite_bnn as bnn
from pyrolite_bnn.elbo import Trace_ELBO, TraceMeanField_ELBO
from pyrolite_bnn.record import LayerRecord, find_record

PAIRS = [
    (Trace_ELBO, pyro.infer.Trace_ELBO),
    (TraceMeanField_ELBO, pyro.infer.TraceMeanField_ELBO),
]


def _net(estimator: str = "reparam") -> bnn.VISequential:
    return bnn.VISequential(
        bnn.VILinear(4, 6, estimator=estimator),
        nn.Tanh(),
        bnn.VILinear(6, 1, estimator=estimator),
    )


def _data() -> tuple[Tensor, Tensor]:
    x = torch.randn(12, 4, dtype=torch.float64)
    return x, x[:, 0] - x[:, 1]


def _run(
    elbo: Any, model: Any, guide: Any, *args: Any, **kwargs: Any
) -> tuple[float, list[str], set[Tensor], dict[int, Tensor]]:
    """One ``loss_and_grads`` from seed 5: value, param sites, params, gradients."""
    torch.manual_seed(5)
    with poutine.trace(param_only=True) as capture:
        value = elbo.loss_and_grads(model, guide, *args, **kwargs)
    sites = capture.trace.nodes.values()
    params = {site["value"].unconstrained() for site in sites}
    grads = {id(p): p.grad.clone() for p in params if p.grad is not None}
    for param in params:
        param.grad = None
    return value, sorted(capture.trace.nodes), params, grads


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_value_gradients_and_parameters_equal_pyros(
    ours: type, theirs: type, reduction: str
) -> None:
    torch.set_default_dtype(torch.float64)
    net = _net()
    # a learned noise scale: a parameter of the likelihood, not of the network
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 50, reduction=reduction)
    model = loss_fn.pyro_model(net)
    x, y = _data()
    fast = _run(ours(), model, net.guide, x, y, samples=3)
    slow = _run(theirs(), model, net.guide, x, y, samples=3)
    # the same draws (same seed, same order): equal up to rounding (float64)
    assert fast[0] == pytest.approx(slow[0], rel=1e-5)
    assert fast[1] == slow[1]  # the same param sites...
    assert fast[2] == slow[2]  # ...for the same parameters
    assert fast[2] == {*net.parameters(), *loss_fn.parameters()}
    for key, grad in slow[3].items():
        torch.testing.assert_close(fast[3][key], grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    ("elbo", "reads_noise"), [(Trace_ELBO, True), (TraceMeanField_ELBO, False)]
)
def test_only_the_monte_carlo_elbo_keeps_the_noise_sums_of_its_draws(
    elbo: type[Trace_ELBO], reads_noise: bool
) -> None:
    """The fast path kept sum(eps) and sum(eps^2) of every draw (in float32 for
    a half-precision network: two S x weights temporaries per layer) for
    TraceMeanField_ELBO too, whose KL of mean-field Normal sites is closed
    form and never reads them. Only Trace_ELBO (kl="mc") asks for them now."""
    net = _net().to(torch.bfloat16)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 50)
    x, y = _data()
    loss = elbo().differentiable_loss(
        loss_fn.pyro_model(net), net.guide, x.bfloat16(), y.bfloat16(), samples=3
    )
    record = find_record(loss)
    assert isinstance(record, LayerRecord)
    kept = [sums is not None for sums in record.draws.noise_sums]
    assert kept == [reads_noise] * 4


def test_fast_path_does_not_trace_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _net()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 50)
    x, y = (t.float() for t in _data())

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the fast path traced the model")

    monkeypatch.setattr(pyro.infer.Trace_ELBO, "_get_traces", refuse)
    for elbo in (Trace_ELBO(), TraceMeanField_ELBO()):
        assert isinstance(elbo.loss(loss_fn.pyro_model(net), net.guide, x, y), float)


def test_svi_trains_with_the_fast_elbo() -> None:
    net = _net()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), 12)
    x, y = (t.float() for t in _data())
    svi = pyro.infer.SVI(
        loss_fn.pyro_model(net),
        net.guide,
        pyro.optim.Adam({"lr": 0.05}),
        TraceMeanField_ELBO(),
    )
    before = {k: v.clone() for k, v in net.state_dict().items()}
    losses = [svi.step(x, y, samples=4) for _ in range(60)]
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    # 60 Adam steps on 12 points: the data term falls far more than the
    # Monte-Carlo noise of a 4-particle estimate (a few nats here)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 20


class _Spy(Trace_ELBO):
    """Records whether the parent class computed the loss."""

    parent_calls = 0

    def _get_traces(self, model: Any, guide: Any, args: Any, kwargs: Any) -> Any:
        type(self).parent_calls += 1
        return super()._get_traces(model, guide, args, kwargs)


def _autoguide_net() -> bnn.VISequential:
    net = _net()
    net.guide = pyro.infer.autoguide.AutoNormal(
        net.prior_model, init_loc_fn=net.init_loc_fn
    )
    return net


@pytest.mark.parametrize(
    "case",
    ["autoguide", "heat", "num_particles", "no target", "extra kwarg"],
)
def test_everything_else_falls_back_to_pyro(case: str) -> None:
    x, y = (t.float() for t in _data())
    net = _autoguide_net() if case == "autoguide" else _net()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 50)
    model, guide = loss_fn.pyro_model(net), net.guide
    if case == "heat":
        loss_fn.heat = 0.5
    kwargs: dict[str, Any] = {"samples": 2}
    args: tuple[Any, ...] = (x, y)
    elbo = _Spy(num_particles=2 if case == "num_particles" else 1)
    if case == "no target":
        args = (x,)
    _Spy.parent_calls = 0
    if case == "extra kwarg":
        with pytest.raises(TypeError, match="unexpected keyword"):
            elbo.loss(model, guide, *args, other=1, **kwargs)
    elif case == "no target":  # Pyro's own check of the traces
        with pytest.warns(UserWarning, match="in model but not guide"):
            elbo.loss(model, guide, *args, **kwargs)
    elif case == "heat":  # Pyro's path runs the model, which refuses the heat
        with pytest.raises(ValueError, match=r"loss_fn.heat is 0.5"):
            elbo.loss(model, guide, *args, **kwargs)
    else:
        elbo.loss(model, guide, *args, **kwargs)
    assert _Spy.parent_calls >= 1


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_a_positional_sample_count_the_guide_does_not_get_is_refused(
    ours: type, theirs: type
) -> None:
    # net.guide takes samples= as a keyword only: svi.step(x, y, 4) gave the
    # model 4 and the guide its default 10. Pyro's path replayed the guide's
    # 10, the fast path ran 4 (147.4 against 167.4 nats), both silently.
    x, y = (t.float() for t in _data())
    net = _net()
    model = bnn.KullbackLeiblerLoss(bnn.Normal(), 50).pyro_model(net)
    for elbo in (ours(), theirs()):
        with pytest.raises(ValueError, match=r"called with samples=4, but it replays"):
            elbo.differentiable_loss(model, net.guide, x, y, 4)
        # the same count, or the guide's default, given positionally is fine
        elbo.differentiable_loss(model, net.guide, x, y, net.samples)


class _Tokens(bnn.VIModule):
    """An explicit ``estimator="local"`` layer on ``(B, L, in)`` tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.a = bnn.VILinear(4, 6, estimator="local")
        self.b = bnn.VILinear(6, 2, estimator="reparam")

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x)).mean(1))


def test_local_estimator_refusal_falls_back_to_pyro() -> None:
    """Pyro's path draws weights: no refusal there, the same value (same seed)."""
    net = _Tokens()
    x, y = torch.randn(8, 5, 4), torch.randint(0, 2, (8,))
    model = bnn.KullbackLeiblerLoss(bnn.Categorical(), 100).pyro_model(net)
    with pytest.raises(ValueError, match="estimator='local' draws each output"):
        net(x)  # the PyTorch-style call refuses the input
    torch.manual_seed(5)
    expected = pyro.infer.Trace_ELBO().loss(model, net.guide, x, y, samples=2)
    _Spy.parent_calls = 0
    torch.manual_seed(5)
    value = _Spy().loss(model, net.guide, x, y, samples=2)
    assert _Spy.parent_calls == 1
    # the fast path's attempt left the random stream where it was
    assert value == pytest.approx(expected, rel=1e-6)
    for ours, _ in PAIRS:
        svi = pyro.infer.SVI(model, net.guide, pyro.optim.Adam({"lr": 0.01}), ours())
        assert math.isfinite(svi.step(x, y, samples=2))


def test_local_estimator_keeps_the_fast_path_where_it_applies() -> None:
    net = bnn.VISequential(bnn.VILinear(4, 6, estimator="local"), nn.Tanh())
    x, y = torch.randn(8, 4), torch.randn(8, 6)
    model = bnn.KullbackLeiblerLoss(bnn.Normal(), 100).pyro_model(net)
    _Spy.parent_calls = 0
    assert isinstance(_Spy().loss(model, net.guide, x, y, samples=2), float)
    assert _Spy.parent_calls == 0  # (B, in): one position per example
    with pytest.raises(ValueError, match=r"expected input of shape"):
        _Spy().loss(model, net.guide, torch.randn(8, 5), y)  # other errors raise
    assert not net[0]._forward_pre_hooks  # the watch is removed


def test_are_pyros_classes() -> None:
    assert issubclass(bnn.Trace_ELBO, pyro.infer.Trace_ELBO)
    assert issubclass(bnn.TraceMeanField_ELBO, pyro.infer.TraceMeanField_ELBO)


def test_pyro_model_exposes_its_network_and_loss() -> None:
    net = _net()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 50)
    pyro_model = loss_fn.pyro_model(net)
    assert pyro_model.network is net
    assert pyro_model.loss_fn is loss_fn


def test_a_handler_around_the_elbo_is_respected_as_by_pyro() -> None:
    """poutine.scale around bnn.Trace_ELBO was ignored (10x Pyro's value)."""
    torch.manual_seed(0)
    net = bnn.VISequential(bnn.VILinear(3, 4), nn.Tanh(), bnn.VILinear(4, 2))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 20)
    model = loss_fn.pyro_model(net)
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    values = []
    for elbo in (bnn.Trace_ELBO(), pyro.infer.Trace_ELBO()):
        pyro.set_rng_seed(1)
        with poutine.scale(scale=0.1):
            values.append(elbo.loss(model, net.guide, x, y, samples=2))
    assert values[0] == pytest.approx(values[1], rel=1e-5)


def test_svi_step_still_takes_the_fast_path() -> None:
    """SVI runs the loss inside a parameter-only trace, which changes no site."""
    import pyrolite_bnn.elbo as elbo_module

    net = bnn.VISequential(bnn.VILinear(3, 4), nn.Tanh(), bnn.VILinear(4, 2))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 20)
    svi = pyro.infer.SVI(
        loss_fn.pyro_model(net), net.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO()
    )
    taken: list[bool] = []
    fast = elbo_module._fast_loss

    def spy(*args: Any, **kwargs: Any) -> Tensor | None:
        result = fast(*args, **kwargs)
        taken.append(result is not None)
        return result

    with mock.patch.object(elbo_module, "_fast_loss", spy):
        svi.step(torch.randn(6, 3), torch.randint(0, 2, (6,)))
    assert taken == [True]


@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO])
def test_num_particles_must_be_a_positive_integer(elbo: type[Trace_ELBO]) -> None:
    """Pyro's classes average over no particles and report a loss of 0."""
    for bad in (0, -1):
        with pytest.raises(ValueError, match=rf"num_particles must be .* got {bad}"):
            elbo(num_particles=bad)
    with pytest.raises(TypeError, match="num_particles must be an integer"):
        elbo(2.0)  # type: ignore[arg-type]
    assert elbo(num_particles=3, max_plate_nesting=2).num_particles == 3


class _TwoInputs(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = _net()

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.body(torch.cat([a, b], -1))


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_several_inputs_take_the_fast_path_with_pyros_value(
    ours: type, theirs: type
) -> None:
    """A tuple x is the network's positional inputs on both paths."""
    torch.set_default_dtype(torch.float64)
    net = _TwoInputs()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 50)
    model = loss_fn.pyro_model(net)
    x, y = _data()
    inputs = (x[:, :2], x[:, 2:])
    _Spy.parent_calls = 0
    fast = _run(_Spy() if ours is Trace_ELBO else ours(), model, net.guide, inputs, y)
    assert _Spy.parent_calls == 0
    slow = _run(theirs(), model, net.guide, inputs, y)
    assert fast[0] == pytest.approx(slow[0], rel=1e-5)
    for key, grad in slow[3].items():
        torch.testing.assert_close(fast[3][key], grad, rtol=1e-5, atol=1e-8)


def _bad_targets() -> dict[str, tuple[Any, int, Tensor, str]]:
    """Likelihood, outputs and a target outside its support, with the message."""
    real = torch.randn(6, dtype=torch.float64)
    return {
        "Normal NaN": (
            bnn.Normal(scale=1.0),
            1,
            real.index_fill(0, torch.tensor([0]), math.nan),
            r"target contains 1 NaN.*read as a missing target only by a likelihood "
            r'built with missing="nan"',
        ),
        "Bernoulli -1/+1": (
            bnn.Bernoulli(),
            1,
            torch.tensor([-1.0, 1, 1, -1, 1, -1], dtype=torch.float64),
            "Bernoulli targets must be 0 or 1",
        ),
        "Poisson negative": (
            bnn.Poisson(),
            1,
            torch.tensor([0.0, 1, -2, 3, 0, 1], dtype=torch.float64),
            "non-negative integer counts",
        ),
        "Poisson fraction": (
            bnn.Poisson(),
            1,
            torch.tensor([0.0, 1, 2.5, 3, 0, 1], dtype=torch.float64),
            "non-negative integer counts",
        ),
        "Categorical out of range": (
            bnn.Categorical(),
            3,
            torch.tensor([0, 1, 2, 3, 0, 1]),
            r"labels must be in \[0, 3\)",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_targets()))
@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_targets_are_checked_under_pyros_validation_as_pyro_does(
    case: str, ours: type, theirs: type
) -> None:
    """With the library's validation off and Pyro's on (Pyro's default), Pyro's
    ELBO refuses a target outside the likelihood's support at the "obs" site;
    the fast path took it: NaN (or, for Bernoulli -1/+1 targets, a finite
    wrong value), and SVI wrote NaN into the posterior. Pyro's own ELBO
    refuses it at the site with the same message: the site scores targets
    with the likelihood's log_likelihood, checked under Pyro's switch."""
    torch.set_default_dtype(torch.float64)
    likelihood, outputs, y, message = _bad_targets()[case]
    x = torch.randn(6, 4)
    net = bnn.VISequential(bnn.VILinear(4, 6), nn.Tanh(), bnn.VILinear(6, outputs))
    model = bnn.KullbackLeiblerLoss(likelihood, 50).pyro_model(net)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    with bnn.validation(False), pyro.validation_enabled(True):
        with pytest.raises(ValueError, match=message):  # at "obs"
            theirs().loss(model, net.guide, x, y, samples=3)
        svi = pyro.infer.SVI(model, net.guide, pyro.optim.Adam({"lr": 0.01}), ours())
        with pytest.raises(ValueError, match=message):
            svi.step(x, y, samples=3)
        with pytest.raises(ValueError, match=message):
            ours().loss(model, net.guide, x, y, samples=3)
    for name, param in net.named_parameters():
        assert torch.equal(param, before[name]), name
    if not case.startswith("Categorical"):  # (a label out of range fails to index)
        with bnn.validation(False), pyro.validation_enabled(False):
            value = ours().loss(model, net.guide, x, y, samples=3)  # nothing checks
        assert isinstance(value, float)


def test_the_pytorch_style_loss_follows_the_librarys_switch_alone() -> None:
    """As documented: Pyro's switch does not turn the loss's checks on."""
    net = _net()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 50)
    x, y = torch.randn(6, 4), torch.randn(6)
    y[0] = math.nan
    with bnn.validation(False), pyro.validation_enabled(True):
        assert math.isnan(float(loss_fn(net(x), y).detach()))
    with pytest.raises(ValueError, match="read as a missing target only by"):
        loss_fn(net(x), y)


@pytest.mark.filterwarnings("ignore:Failed to verify mean field restriction")
def test_mean_field_elbo_warns_where_pyro_drops_a_delta_density() -> None:
    """``AutoStructured`` puts the log-Jacobian of its map from auxiliary
    latents to the weights in each site's ``Delta.log_density``, which Pyro's
    closed-form ``KL(Delta || p)`` drops: ``TraceMeanField_ELBO`` gave 85.09
    where ``Trace_ELBO`` and the PyTorch loop's ``kl="auto"`` give 133.44, and
    training it optimises another objective, silently. It warns now, naming
    the site and ``bnn.Trace_ELBO``; guides whose Delta sites carry no
    density (``AutoDelta``, ``AutoDiagonalNormal`` of the real-valued
    weights) and sites that are not Deltas (``AutoNormal``) do not warn."""
    from pyro.infer.autoguide import (
        AutoDelta,
        AutoDiagonalNormal,
        AutoNormal,
        AutoStructured,
    )

    x, y = _data()
    x, y = x.float(), y.float()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.5), dataset_size=50)
    net = _net()
    for quiet in (AutoDelta, AutoDiagonalNormal, AutoNormal):
        net.guide = quiet(net.prior_model, init_loc_fn=net.init_loc_fn)
        TraceMeanField_ELBO().loss(loss_fn.pyro_model(net), net.guide, x, y)
    net.guide = AutoStructured(
        net.prior_model, conditionals="normal", init_loc_fn=net.init_loc_fn
    )
    model = loss_fn.pyro_model(net)
    with pytest.warns(UserWarning, match=r"site '0.bias' is a Delta .*bnn.Trace_ELBO"):
        mean_field = TraceMeanField_ELBO().loss(model, net.guide, x, y, samples=4)
    pyro.set_rng_seed(0)
    monte_carlo = Trace_ELBO().loss(model, net.guide, x, y, samples=4)
    pyro.set_rng_seed(0)
    torch_loop = float(loss_fn(net(x, samples=4), y).detach()) * 50
    assert math.isclose(monte_carlo, torch_loop, rel_tol=1e-5)
    assert abs(mean_field - monte_carlo) > 1.0  # what Pyro's KL drops


_DELTA_VALUE = torch.tensor([0.3, -0.2])
_DELTA_DENSITY = torch.tensor(1.7)


def _delta_guide(kind: str) -> Any:
    """A guide drawing a Delta with a density, bare or wrapped as ``kind``."""
    from pyro.distributions.torch_distribution import ExpandedDistribution

    delta = pyro.distributions.Delta(
        _DELTA_VALUE, log_density=_DELTA_DENSITY, event_dim=1
    )
    fn = {
        "Delta": delta,
        "Independent": pyro.distributions.Delta(
            _DELTA_VALUE, log_density=_DELTA_DENSITY / 2
        ).to_event(1),
        "masked": delta.mask(torch.tensor(True)),
        "expanded": ExpandedDistribution(delta, torch.Size()),
    }[kind]

    def guide() -> None:
        pyro.sample("z", fn)

    return guide


def _normal_model(masked: bool) -> Any:
    def model() -> None:
        prior = pyro.distributions.Normal(0.0, 1.0).expand([2]).to_event(1)
        pyro.sample("z", prior.mask(torch.tensor(True)) if masked else prior)

    return model


@pytest.mark.parametrize(
    ("kind", "masked_model", "dropped"),
    [
        ("Delta", False, True),
        ("Delta", True, True),
        ("Independent", False, True),
        ("Independent", True, False),
        ("masked", False, False),
        ("masked", True, True),
        ("expanded", False, False),
    ],
)
def test_mean_field_elbo_warns_only_where_pyros_kl_drops_the_density(
    kind: str, masked_model: bool, dropped: bool
) -> None:
    """The warning looked through ``Independent``, masked and expanded
    distributions to the Delta, but Pyro's KL is registered for a bare
    ``Delta`` (against anything), an ``Independent`` one against an
    ``Independent`` one and a masked one against a masked one: for other
    pairs Pyro falls back to Monte Carlo, which counts the density, and the
    warning was false. It now warns where Pyro's ``TraceMeanField_ELBO``
    differs from ``Trace_ELBO`` by the density (1.7 nats; both exact here,
    the guide being a point mass)."""
    model, guide = _normal_model(masked_model), _delta_guide(kind)
    monte_carlo = pyro.infer.Trace_ELBO().loss(model, guide)
    mean_field = pyro.infer.TraceMeanField_ELBO().loss(model, guide)
    assert math.isclose(monte_carlo - mean_field, 1.7 if dropped else 0.0, abs_tol=1e-5)
    if dropped:
        with pytest.warns(UserWarning, match=r"site 'z' is a Delta .*bnn.Trace_ELBO"):
            loss = TraceMeanField_ELBO().loss(model, guide)
    else:
        loss = TraceMeanField_ELBO().loss(model, guide)  # warnings are errors
    assert math.isclose(loss, mean_field, rel_tol=1e-6)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_missing_targets_are_left_out_of_every_elbo(ours: type, theirs: type) -> None:
    """Targets marked missing (NaN, ``bnn.Normal(missing="nan")``): the fast
    path and Pyro's own ELBO on the Pyro model give the same value, parameter
    sites and gradients, and these are exactly those of the data without the
    missing examples (a loss of the 10 kept ones, whose ``dataset_size`` is
    10: full batches, ``reduction="sum"``; the same weight draws, which do not
    depend on the batch). Pyro's ELBO refused NaN at the "obs" site, and
    scored a missing entry marked otherwise (probe multitask)."""
    torch.set_default_dtype(torch.float64)
    net = _net()
    x, y = _data()
    marked = y.index_fill(0, torch.tensor([2, 7]), math.nan)
    keep = ~marked.isnan()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(missing="nan"), 12, reduction="sum")
    model = loss_fn.pyro_model(net)
    fast = _run(ours(), model, net.guide, x, marked, samples=3)
    slow = _run(theirs(), model, net.guide, x, marked, samples=3)
    assert fast[0] == pytest.approx(slow[0], rel=1e-9)
    assert fast[1] == slow[1]
    assert fast[2] == slow[2] == {*net.parameters(), *loss_fn.parameters()}
    for key, grad in slow[3].items():
        torch.testing.assert_close(fast[3][key], grad, rtol=1e-7, atol=1e-10)
    kept_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), 10, reduction="sum")
    kept_fn.load_state_dict(loss_fn.state_dict())  # the same noise scale
    kept = _run(ours(), kept_fn.pyro_model(net), net.guide, x[keep], y[keep], samples=3)
    assert kept[0] == pytest.approx(fast[0], rel=1e-9)
    pairs = [
        *zip(net.parameters(), net.parameters(), strict=True),
        *zip(loss_fn.parameters(), kept_fn.parameters(), strict=True),
    ]
    for mine, theirs_param in pairs:
        torch.testing.assert_close(
            fast[3][id(mine)], kept[3][id(theirs_param)], rtol=1e-7, atol=1e-10
        )


def test_the_pyro_model_scores_missing_entries_as_the_data_without_them() -> None:
    """The observation site of a target conditioned by name (what MCMC's
    potential energy and ``Predictive`` read): for a three-output target
    with missing entries its log-density is the sum over each output of the
    log-likelihood of the examples that observe it; draws fill every entry."""
    torch.set_default_dtype(torch.float64)
    net = bnn.VISequential(bnn.VILinear(4, 6), nn.Tanh(), bnn.VILinear(6, 3))
    x = torch.randn(12, 4)
    y = torch.randn(12, 3)
    y[1, 0] = y[5, 2] = y[9, 1] = math.nan
    y[3] = math.nan
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.5, missing="nan"), 12)
    model = poutine.condition(loss_fn.pyro_model(net), data={"obs": y})
    trace = poutine.trace(model).get_trace(x, samples=1)
    site, output = trace.nodes["obs"], trace.nodes["_RETURN"]["value"]
    plain = bnn.Normal(scale=0.5)
    reference = sum(
        plain.log_likelihood(
            output[:, ~y[:, d].isnan(), d], y[~y[:, d].isnan(), d]
        ).sum()
        for d in range(3)
    )
    torch.testing.assert_close(site["fn"].log_prob(site["value"]).sum(), reference)
    draws = pyro.infer.Predictive(loss_fn.pyro_model(net), num_samples=2)(x)["obs"]
    assert bool(draws.isfinite().all())


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_pyros_elbo_follows_a_redefined_log_likelihood(
    ours: type, theirs: type
) -> None:
    """A likelihood of one's own whose ``log_likelihood`` leaves out entries
    marked -999 (the old NaN refusal's advice): the loss and ``bnn.Trace_ELBO``
    gave 366.25, Pyro's ``Trace_ELBO`` on the same model, guide and draws
    3,995,763, its "obs" site scoring the class it derives from (probe
    multitask). The site scores with the likelihood's ``log_likelihood``:
    the same value and gradients."""
    torch.set_default_dtype(torch.float64)

    class MaskedNormal(bnn.Normal):
        def log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
            keep = target != -999.0
            noise = torch.distributions.Normal(output, self.noise_scale())
            log_p = noise.log_prob(torch.where(keep, target, 0.0))
            return (log_p * keep).sum(-1)

    net = bnn.VISequential(
        bnn.VILinear(4, 6, estimator="reparam"),
        nn.Tanh(),
        bnn.VILinear(6, 2, estimator="reparam"),
    )
    x, y = torch.randn(12, 4), torch.randn(12, 2)
    y[3, 1] = y[7, 0] = -999.0
    loss_fn = bnn.KullbackLeiblerLoss(MaskedNormal(), 12, reduction="sum")
    model = loss_fn.pyro_model(net)
    fast = _run(ours(), model, net.guide, x, y, samples=4)
    slow = _run(theirs(), model, net.guide, x, y, samples=4)
    assert fast[0] == pytest.approx(slow[0], rel=1e-9)
    assert fast[2] == slow[2] == {*net.parameters(), *loss_fn.parameters()}
    for key, grad in slow[3].items():
        torch.testing.assert_close(fast[3][key], grad, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_every_elbo_follows_a_redefined_position_log_likelihood(
    ours: type, theirs: type
) -> None:
    """A Categorical that weights each label (``position_log_likelihood``
    redefined, ``log_likelihood`` not): the loss and the Pyro model scored
    the unweighted labels while calibration read the weights (probe
    falsepos27d). Every ELBO now equals that of the same weighting written
    as a redefined ``log_likelihood``."""
    torch.set_default_dtype(torch.float64)

    class PerLabel(bnn.Categorical):
        def position_log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
            return 2.0 * super().position_log_likelihood(output, target)

    class PerExample(bnn.Categorical):
        def log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
            return 2.0 * super().log_likelihood(output, target)

    net = bnn.VISequential(
        bnn.VILinear(4, 6, estimator="reparam"),
        nn.Tanh(),
        bnn.VILinear(6, 3, estimator="reparam"),
    )
    x, labels = torch.randn(12, 4), torch.randint(0, 3, (12,))
    elbos, losses = [], []
    for likelihood in (PerLabel(), PerExample()):
        loss_fn = bnn.KullbackLeiblerLoss(likelihood, 12, reduction="sum")
        model = loss_fn.pyro_model(net)
        elbos.append(_run(ours(), model, net.guide, x, labels, samples=3)[0])
        elbos.append(_run(theirs(), model, net.guide, x, labels, samples=3)[0])
        torch.manual_seed(5)
        losses.append(float(loss_fn(net(x, samples=3), labels).detach()))
    assert elbos == pytest.approx([elbos[-1]] * 4, rel=1e-9)
    assert losses[0] == pytest.approx(losses[1], rel=1e-9)


def _weighted_pair(kind: str) -> tuple[Any, Any, Tensor, Any]:
    """The probe's weighting of two positions, written both ways, and a hand density.

    A class whose ``log_likelihood`` weights and sums the inherited
    ``position_log_likelihood``, one whose ``position_log_likelihood`` weights
    the parent's, the weights, and ``(output, target) -> per-position log p``.
    """
    weights = torch.tensor([1.0, 0.5])
    base: Any = bnn.Normal if kind == "Normal" else bnn.Categorical

    class ColumnWeighted(base):  # type: ignore[misc, valid-type]
        def log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
            return (self.position_log_likelihood(output, target) * weights).sum(-1)

    class PositionWeighted(base):  # type: ignore[misc, valid-type]
        def position_log_likelihood(self, output: Tensor, target: Tensor) -> Tensor:
            return weights * super().position_log_likelihood(output, target)

    def hand(output: Tensor, target: Tensor) -> Tensor:
        if kind == "Normal":
            return torch.distributions.Normal(output, 1.0).log_prob(target)
        index = target.expand(*output.shape[:-1]).unsqueeze(-1)
        return output.log_softmax(-1).gather(-1, index).squeeze(-1)

    made = {"scale": 1.0} if kind == "Normal" else {}
    return ColumnWeighted(**made), PositionWeighted(**made), weights, hand


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
@pytest.mark.parametrize("kind", ["Normal", "Categorical"])
def test_a_log_likelihood_built_from_the_inherited_positions_trains(
    ours: type, theirs: type, kind: str
) -> None:
    """A ``log_likelihood`` that weights and sums the inherited
    ``position_log_likelihood`` (a weight per output column) raised
    RecursionError in the loss and in Pyro's ELBOs since 40e4072 (probe
    falsepos28: expected loss 2.0016). The loss equals the hand-computed
    data term, the Pyro model's "obs" site the hand-computed density, and
    the fast path, Pyro's own ELBO and the same weighting written per
    position agree."""
    torch.set_default_dtype(torch.float64)
    weighted, per_position, weights, hand = _weighted_pair(kind)
    width = 2 if kind == "Normal" else 6
    layers: list[nn.Module] = [
        bnn.VILinear(3, 5, estimator="reparam"),
        nn.Tanh(),
        bnn.VILinear(5, width, estimator="reparam"),
    ]
    if kind == "Categorical":
        layers.append(nn.Unflatten(-1, (2, 3)))
    net = bnn.VISequential(*layers)
    torch.manual_seed(0)
    x = torch.randn(8, 3)
    y = torch.randn(8, 2) if kind == "Normal" else torch.randint(0, 3, (8, 2))

    loss_fn = bnn.KullbackLeiblerLoss(weighted, 40, heat=0)
    out = net(x, samples=3)
    expected = -(hand(out.detach(), y) * weights).sum(-1).mean(0).mean()
    torch.testing.assert_close(loss_fn(out, y).detach(), expected, rtol=1e-6, atol=0.0)

    pyro_model = bnn.KullbackLeiblerLoss(weighted, 40).pyro_model(net)
    model = poutine.condition(pyro_model, data={"obs": y})
    trace = poutine.trace(model).get_trace(x, samples=1)
    site, output = trace.nodes["obs"], trace.nodes["_RETURN"]["value"]
    torch.testing.assert_close(
        site["fn"].log_prob(site["value"]).sum(),
        (hand(output, y) * weights).sum(),
        rtol=1e-6,
        atol=0.0,
    )

    values = []
    for likelihood in (weighted, per_position):
        model = bnn.KullbackLeiblerLoss(likelihood, 8, reduction="sum").pyro_model(net)
        values.append(_run(ours(), model, net.guide, x, y, samples=3)[0])
        values.append(_run(theirs(), model, net.guide, x, y, samples=3)[0])
    assert values == pytest.approx([values[0]] * 4, rel=1e-6)
