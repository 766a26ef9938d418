"""Variational families: the mean-field Normal's scale transforms."""

from __future__ import annotations

import copy
import gc
import io
import math
import weakref
from pathlib import Path
from typing import Any, cast

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO
from pyro.nn import PyroParam
from torch import nn
from torch.nn.utils import parametrize

import pyrolite_bnn as bnn
from pyrolite_bnn import vi
from pyrolite_bnn.distributions.variational import MeanFieldNormalPosterior, Posterior


def _posterior(transform: str, scale: float = 0.05) -> MeanFieldNormalPosterior:
    family = bnn.MeanFieldNormal(scale, scale_transform=transform)
    posterior = family.build((3, 2), torch.zeros(3, 2))
    assert isinstance(posterior, MeanFieldNormalPosterior)
    return posterior


@pytest.mark.parametrize(
    ("transform", "raw"),
    [("softplus", math.log(math.expm1(0.05))), ("exp", math.log(0.05))],
)
def test_scale_transform_stores_the_inverse_and_reads_it_back(
    transform: str, raw: float
) -> None:
    posterior = _posterior(transform)
    torch.testing.assert_close(posterior.rho, torch.full((3, 2), raw))
    torch.testing.assert_close(posterior.scale(), torch.full((3, 2), 0.05))
    _, scale = posterior.normal_params()
    torch.testing.assert_close(scale, posterior.scale())
    assert posterior.distribution().base_dist.scale.equal(posterior.scale())
    scales = torch.linspace(1e-4, 3.0, 6).reshape(3, 2)
    posterior.reset_parameters(torch.ones(3, 2), scales)
    torch.testing.assert_close(posterior.scale(), scales)
    posterior.reset_parameters(torch.ones(3, 2), 0.2)
    torch.testing.assert_close(posterior.scale(), torch.full((3, 2), 0.2))


def test_exp_transform_is_the_log_std_and_stays_positive_below_the_dtype() -> None:
    posterior = _posterior("exp")
    with torch.no_grad():
        posterior.rho.fill_(-1.5)
    torch.testing.assert_close(posterior.scale(), torch.full((3, 2), math.exp(-1.5)))
    with torch.no_grad():
        posterior.rho.fill_(-200.0)  # exp underflows float32
    assert bool((posterior.scale() > 0).all())
    assert bool(torch.isfinite(posterior.scale().log()).all())
    # the softplus default is unchanged
    softplus = _posterior("softplus")
    with torch.no_grad():
        softplus.rho.fill_(0.3)
    torch.testing.assert_close(softplus.scale(), F.softplus(torch.full((3, 2), 0.3)))


def test_scale_transform_is_validated_and_shown_only_when_not_default() -> None:
    with pytest.raises(ValueError, match="scale_transform must be one of"):
        bnn.MeanFieldNormal(scale_transform="sigmoid")
    assert repr(bnn.MeanFieldNormal(0.1)) == "MeanFieldNormal(init_scale=0.1)"
    assert "scale_transform='exp'" in repr(bnn.MeanFieldNormal(0.1, "exp"))
    layer = bnn.VILinear(2, 3, variational=bnn.MeanFieldNormal(0.1, "exp"))
    assert "scale_transform='exp'" in repr(layer)


@pytest.mark.parametrize("transform", ["softplus", "exp"])
def test_an_initial_scale_whose_variance_overflows_is_refused(transform: str) -> None:
    """init_scale=1e20 passed the float32 range check; the local
    reparameterisation's variance overflowed and VILinear's outputs were inf."""
    largest = math.sqrt(torch.finfo(torch.float32).max)  # 1.84e19
    family = bnn.MeanFieldNormal(1e20, scale_transform=transform)
    with pytest.raises(
        ValueError,
        match=r"init_scale must lie between 1\.175e-38 and 1\.845e\+19 .* float32 "
        r"number with a finite square, got 1e\+20",
    ):
        bnn.VILinear(3, 2, variational=family)
    below = bnn.MeanFieldNormal(largest * 0.99, scale_transform=transform)
    layer = bnn.VILinear(3, 2, variational=below)
    assert bool(torch.isfinite(layer.posterior["weight"].scale()).all())
    # the bound follows the layer's dtype
    wide = bnn.VILinear(3, 2, variational=family, dtype=torch.float64)
    assert float(wide.posterior["weight"].scale().detach()[0, 0]) == pytest.approx(1e20)
    with pytest.raises(ValueError, match=r"between 6\.104e-05 and 255\.9 .* float16"):
        bnn.VILinear(3, 2, variational=bnn.MeanFieldNormal(300.0), dtype=torch.float16)


@pytest.mark.parametrize("kl", ["mc", "analytic"])
def test_exp_transform_loss_equals_pyro_elbo(kl: str) -> None:
    torch.manual_seed(0)
    family = bnn.MeanFieldNormal(0.3, scale_transform="exp")
    net = bnn.VISequential(
        bnn.VILinear(4, 8, variational=family, estimator="reparam"),
        torch.nn.Tanh(),
        bnn.VILinear(8, 3, variational=family, estimator="reparam"),
    )
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 100, kl=kl)  # type: ignore[arg-type]
    params = list(net.parameters())
    pyro.set_rng_seed(3)
    ours = loss_fn(net(x, samples=4), y)
    grads = torch.autograd.grad(ours, params)
    pyro.set_rng_seed(3)
    elbo = Trace_ELBO().differentiable_loss(
        loss_fn.pyro_model(net), net.guide, x, y, samples=4
    )
    if kl == "mc":  # same draws: the same estimate
        torch.testing.assert_close(ours, elbo / 100, rtol=1e-5, atol=1e-5)
        for mine, theirs in zip(
            grads, torch.autograd.grad(elbo / 100, params), strict=True
        ):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    else:  # closed-form KL: equal to the MC one in expectation
        estimates = []
        for seed in range(400):
            pyro.set_rng_seed(seed)
            with torch.no_grad():
                model = loss_fn.pyro_model(net)
                estimates.append(Trace_ELBO().loss(model, net.guide, x, y, samples=4))
        pyro.set_rng_seed(3)
        with torch.no_grad():
            analytic = [float(loss_fn(net(x, samples=4), y)) for _ in range(50)]
        mc = torch.tensor(estimates) / 100
        exact = torch.tensor(analytic)
        # 5 standard errors of the two means (seeded: deterministic)
        tolerance = 5 * math.sqrt(mc.var() / len(mc) + exact.var() / len(exact))
        assert abs(float(mc.mean() - exact.mean())) < tolerance


@pytest.mark.parametrize(
    "posterior",
    [
        MeanFieldNormalPosterior((3, 2), torch.zeros(3, 2), 0.1),
        bnn.PointMass().build((3, 2), torch.zeros(3, 2)),
    ],
    ids=["mean_field", "point_mass"],
)
def test_reset_parameters_refuses_a_mean_that_is_not_finite_or_does_not_fit(
    posterior: Posterior,
) -> None:
    """A NaN mean was copied in silently (every later loss NaN); a mean of
    another shape raised torch's broadcast error, naming neither argument."""
    with pytest.raises(ValueError, match=r"init_loc contains 1 NaN/Inf"):
        posterior.reset_parameters(
            torch.tensor([[0.0, 1.0], [math.nan, 2.0], [0.0, 0.0]])
        )
    with pytest.raises(
        ValueError, match=r"init_loc of shape \(4,\) does not broadcast.*\(3, 2\)"
    ):
        posterior.reset_parameters(torch.zeros(4))
    assert not posterior.mean().any()  # unchanged by the refused calls


def test_reset_parameters_refuses_an_infinite_scale_tensor() -> None:
    posterior = MeanFieldNormalPosterior((3, 2), torch.zeros(3, 2), 0.1)
    with pytest.raises(ValueError, match="positive and finite"):
        posterior.reset_parameters(None, torch.full((3, 2), math.inf))


def test_a_parametrized_posterior_mean_is_read_through_its_parametrization() -> None:
    """torch.nn.utils.parametrize moves the tensor out of _parameters: the next
    forward raised a bare KeyError('loc_unconstrained')."""
    import torch.nn.utils.parametrize as parametrize

    class Double(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2.0 * w

    layer = bnn.VILinear(3, 2)
    weight = layer.posterior["weight"].mean().detach().clone()
    bias = layer.posterior["bias"].mean().detach().clone()
    parametrize.register_parametrization(
        layer.posterior["weight"], "loc_unconstrained", Double()
    )
    x = torch.randn(4, 3)
    mean = bnn.predict(layer, x, bnn.Normal(scale=1.0), mode="mean").mean
    torch.testing.assert_close(mean, x @ (2 * weight).T + bias)
    assert layer(x, samples=3).shape == (3, 4, 2)


def _pruned_net(seed: int) -> torch.nn.Module:
    from torch.nn.utils import prune

    torch.manual_seed(seed)
    net = bnn.VISequential(bnn.VILinear(3, 8), nn.Tanh(), bnn.VILinear(8, 1))
    prune.l1_unstructured(net[0].posterior["weight"], "loc_unconstrained", amount=0.5)
    return net


def _pruned_mean(posterior: torch.nn.Module) -> torch.Tensor:
    orig, mask = posterior.loc_unconstrained_orig, posterior.loc_unconstrained_mask
    return (orig * mask).detach()


def test_a_pruned_posterior_mean_follows_its_parameters_while_training() -> None:
    """prune keeps loc_unconstrained = orig * mask up to date in a forward
    pre-hook, and the posterior module is never called: the layer used the
    prune-time mean after an optimiser step (off by 0.11), and the second
    backward ran through the freed prune-time graph ("backward through the
    graph a second time")."""
    net = _pruned_net(0)
    posterior = net[0].posterior["weight"]
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.5), dataset_size=32)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(4):
        loss = loss_fn(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        expected = _pruned_mean(posterior)
        # Exact: the mean read is orig * mask computed by prune's own hook.
        torch.testing.assert_close(
            posterior.normal_params()[0].detach(), expected, rtol=0, atol=0
        )
        torch.testing.assert_close(posterior.loc.detach(), expected, rtol=0, atol=0)
        h = torch.tanh(x @ expected.T + net[0].posterior["bias"].median())
        manual = h @ net[2].posterior["weight"].median().T
        manual = manual + net[2].posterior["bias"].median()
        mean = bnn.predict(net, x, bnn.Normal(scale=1.0), mode="mean").mean
        torch.testing.assert_close(mean, manual.squeeze(-1), rtol=1e-6, atol=1e-6)
    assert bool((posterior.loc_unconstrained_orig.grad != 0).any())


def test_a_pruned_posterior_mean_follows_a_loaded_state_dict() -> None:
    """Loading another pruned model's state dict left the layer on its own
    prune-time mean: equal state dicts, mean predictions 1.9 apart."""
    net, other = _pruned_net(0), _pruned_net(1)
    net.load_state_dict(other.state_dict())
    x = torch.randn(5, 3)
    mean = bnn.predict(net, x, bnn.Normal(scale=1.0), mode="mean").mean
    expected = bnn.predict(other, x, bnn.Normal(scale=1.0), mode="mean").mean
    torch.testing.assert_close(mean, expected, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:.*is deprecated in favor of:FutureWarning")
@pytest.mark.parametrize("utility", ["weight_norm", "spectral_norm"])
def test_legacy_hook_reparameterisations_of_the_mean_are_read_fresh(
    utility: str,
) -> None:
    """The legacy nn.utils.weight_norm / spectral_norm keep their tensor in a
    forward pre-hook too: the mean read is the one of the parameters as they
    are after each step, not the one computed when the hook was applied."""
    torch.manual_seed(0)
    layer = bnn.VILinear(3, 4)
    posterior = layer.posterior["weight"]
    getattr(nn.utils, utility)(posterior, "loc_unconstrained")
    x, y = torch.randn(16, 3), torch.randn(16, 4)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.5), dataset_size=16)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    for _ in range(3):
        loss = loss_fn(layer(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if utility == "weight_norm":
            v, g = posterior.loc_unconstrained_v, posterior.loc_unconstrained_g
            expected = torch._weight_norm(v, g, 0).detach()
        else:  # eval: no power iteration, the current estimate of sigma
            posterior.eval()
            u, v = posterior.loc_unconstrained_u, posterior.loc_unconstrained_v
            orig = posterior.loc_unconstrained_orig
            expected = (orig / torch.dot(u, orig @ v)).detach()
        mean = posterior.normal_params()[0].detach()
        posterior.train()
        torch.testing.assert_close(mean, expected, rtol=1e-6, atol=1e-7)


def test_a_users_pre_hook_on_a_posterior_is_not_run_by_reads() -> None:
    """Reads of a parametrized mean ran every pre-hook of the posterior with no
    arguments: a user's hook reading args[0] (a debugging habit, on every
    module) raised IndexError; only prune's and the legacy weight/spectral
    norms' hooks recompute a tensor."""
    torch.manual_seed(0)
    net = bnn.VISequential(bnn.VILinear(3, 4), nn.ReLU(), bnn.VILinear(4, 2))
    nn.utils.parametrizations.weight_norm(
        net[0].posterior["weight"], "loc_unconstrained"
    )
    shapes = []
    for name, module in net.named_modules():
        if "parametrizations" not in name:
            module.register_forward_pre_hook(
                lambda _, args: shapes.append(tuple(args[0].shape))
            )
    x = torch.randn(8, 3)
    assert net(x).shape == (10, 8, 2)
    assert bnn.predict(net, x, bnn.Categorical(), mode="mean").probs.shape == (8, 2)
    assert (8, 3) in shapes


def _transform_net(transform: str, scale: float) -> bnn.VISequential:
    family = bnn.MeanFieldNormal(scale, scale_transform=transform)
    return bnn.VISequential(
        bnn.VILinear(2, 4, variational=family),
        nn.Tanh(),
        bnn.VILinear(4, 1, variational=family),
    )


def _normal_posteriors(module: nn.Module) -> list[MeanFieldNormalPosterior]:
    return [m for m in module.modules() if isinstance(m, MeanFieldNormalPosterior)]


@pytest.mark.parametrize(
    ("source", "target"), [("exp", "softplus"), ("softplus", "exp")]
)
def test_a_state_of_the_other_scale_transform_loads_at_the_same_scales(
    source: str, target: str, tmp_path: Path
) -> None:
    """Both transforms keep the raw scale under ``rho_unconstrained``: a state
    saved with one loaded strict into the other, all keys matched, every
    standard deviation changed (0.71 -> 0.53). The transform is recorded with
    the state (also through a weights-only file) and ``rho`` converted, so
    the scales are the saved ones to float32 rounding of the stored ``rho``
    (conversion in float64: rtol 1e-6, a few ulp)."""
    saved = _transform_net(source, 0.1)
    for posterior in _normal_posteriors(saved):
        scales = torch.empty(posterior.shape).uniform_(1e-3, 3.0)
        posterior.reset_parameters(torch.randn(posterior.shape), scales)
    path = tmp_path / "state.pt"
    torch.save(saved.state_dict(), path)
    net = _transform_net(target, 1e-3)
    keys = list(net.state_dict())
    result = net.load_state_dict(torch.load(path, weights_only=True))
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    assert list(net.state_dict()) == keys  # the record adds no key
    pairs = zip(_normal_posteriors(saved), _normal_posteriors(net), strict=True)
    for before, after in pairs:
        assert after.scale_transform == target
        torch.testing.assert_close(after.loc, before.loc, rtol=0, atol=0)
        torch.testing.assert_close(after.scale(), before.scale(), rtol=1e-6, atol=0)


def test_a_vi_networks_state_loads_into_the_main_api_at_its_scales() -> None:
    """A ``pyrolite_bnn.vi`` network (log-std parameterisation) loaded into a
    main-API network of the same architecture keeps its posterior (rtol as
    above)."""
    from pyrolite_bnn import vi

    saved = vi.VISequential(vi.VILinear(2, 4), nn.Tanh(), vi.VILinear(4, 1))
    net = bnn.VISequential(bnn.VILinear(2, 4), nn.Tanh(), bnn.VILinear(4, 1))
    net.load_state_dict(saved.state_dict())
    pairs = zip(_normal_posteriors(saved), _normal_posteriors(net), strict=True)
    for before, after in pairs:
        torch.testing.assert_close(after.scale(), before.scale(), rtol=1e-6, atol=0)


def test_a_state_without_the_scale_transform_record_loads_as_before() -> None:
    """A state saved before the transform was recorded loads its tensors as
    they are (strict, no error)."""
    saved = _transform_net("exp", 0.5)
    state = saved.state_dict()
    for entry in state._metadata.values():  # type: ignore[attr-defined]
        entry.pop("pyrolite_bnn.parameterisation", None)
    net = _transform_net("softplus", 1e-3)
    net.load_state_dict(state)
    pairs = zip(_normal_posteriors(saved), _normal_posteriors(net), strict=True)
    for before, after in pairs:
        torch.testing.assert_close(after.rho, before.rho, rtol=0, atol=0)


def test_a_pruned_scale_of_the_other_transform_is_refused() -> None:
    """A ``rho`` kept by ``torch.nn.utils.prune`` (``rho_unconstrained_orig``
    and a mask) is not converted: the load is refused, nothing is changed."""

    def pruned(transform: str) -> bnn.VILinear:
        layer = bnn.VILinear(
            3, 2, variational=bnn.MeanFieldNormal(0.5, scale_transform=transform)
        )
        nn.utils.prune.l1_unstructured(
            layer.posterior["weight"], "rho_unconstrained", amount=0.5
        )
        return layer

    saved, layer = pruned("exp"), pruned("softplus")
    before = layer.posterior["weight"].scale().detach().clone()
    with pytest.raises(RuntimeError, match="saved with scale_transform='exp'"):
        layer.load_state_dict(saved.state_dict())
    torch.testing.assert_close(
        layer.posterior["weight"].scale(), before, rtol=0, atol=0
    )


def _nan_memory(t: torch.Tensor, **options: Any) -> torch.Tensor:
    """``torch.empty_like`` giving memory that holds NaN (as it may)."""
    return torch.full_like(t, float("nan"), **options)


@pytest.mark.parametrize("family", [bnn.MeanFieldNormal(0.05), bnn.PointMass()])
def test_reset_on_its_own_draws_the_mean_as_the_layer_draws_it(
    family: bnn.MeanFieldNormal | bnn.PointMass, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FSDP resets each module holding tensors on its own (after
    ``to_empty(recurse=False)``): a posterior's ``reset_parameters()`` kept
    the mean, uninitialised memory there (1e37, NaN). It now draws it with the
    ``loc_init`` its layer gave it where the memory is new; a mean in the
    memory last written (the layer's, trained in place since) is kept."""
    layer = bnn.VILinear(5, 4, variational=family)
    posterior = layer.posterior["weight"]
    torch.manual_seed(1)
    layer.reset_parameters()
    as_built = posterior.loc.detach().clone()
    torch.manual_seed(1)
    expected = nn.Linear(5, 4).weight.detach()
    torch.testing.assert_close(as_built, expected, rtol=0, atol=0)
    posterior.reset_parameters()  # right after the layer's: kept
    torch.testing.assert_close(posterior.loc, as_built, rtol=0, atol=0)
    monkeypatch.setattr(torch, "empty_like", _nan_memory)
    layer.to_empty(device="cpu")  # new memory: the mean is drawn
    monkeypatch.undo()
    assert posterior.loc.isnan().all()
    torch.manual_seed(1)
    posterior.reset_parameters()
    torch.testing.assert_close(posterior.loc, expected, rtol=0, atol=0)
    with torch.no_grad():  # an optimizer's step writes in place: kept
        posterior.loc_unconstrained.add_(1.0)
    posterior.reset_parameters()
    torch.testing.assert_close(posterior.loc, expected + 1.0, rtol=0, atol=0)
    if isinstance(posterior, MeanFieldNormalPosterior):
        torch.testing.assert_close(posterior.scale(), torch.full((4, 5), 0.05))
    # A posterior without loc_init (built by hand) keeps its mean.
    bare = family.build((3, 2), torch.ones(3, 2))
    assert bare.loc_init is None
    bare.reset_parameters()
    torch.testing.assert_close(bare.loc, torch.ones(3, 2), rtol=0, atol=0)
    with pytest.raises(ValueError, match="no loc_init"):
        bare.initial_loc()


def test_reset_of_the_scales_keeps_a_trained_mean() -> None:
    """``reset_parameters(init_scale=...)`` after training re-widens the
    posterior: it redrew the trained mean (Kaiming-uniform, a change of 0.5)
    once an optimizer step had written it."""
    layer = bnn.VILinear(5, 4)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.randn(8, 5)).pow(2).mean().backward()
        optimizer.step()
    posterior = cast(MeanFieldNormalPosterior, layer.posterior["weight"])
    trained = posterior.loc.detach().clone()
    posterior.reset_parameters(init_scale=0.05)
    torch.testing.assert_close(posterior.loc, trained, rtol=0, atol=0)
    torch.testing.assert_close(posterior.scale(), torch.full((4, 5), 0.05))
    # A mean loaded in place is kept the same way.
    loaded = bnn.VILinear(5, 4)
    loaded.load_state_dict(layer.state_dict())
    loaded.posterior["weight"].reset_parameters()
    torch.testing.assert_close(loaded.posterior["weight"].loc, trained, rtol=0, atol=0)


def test_resetting_every_module_of_a_trained_network_gives_a_fresh_network() -> None:
    """``model.apply`` visits children first: every posterior redrew its
    trained mean before its layer drew again, so a seeded reset no longer gave
    a freshly built network's numbers (max difference 0.9)."""

    def build() -> nn.Module:
        return nn.Sequential(bnn.VILinear(4, 6), nn.ReLU(), bnn.VILinear(6, 2))

    def reset(module: nn.Module) -> None:
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()

    torch.manual_seed(0)
    fresh = build().state_dict()
    trained = build()
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(torch.randn_like(parameter))
    for visit in ("apply", "modules"):
        torch.manual_seed(0)
        if visit == "apply":
            trained.apply(reset)
        else:
            for module in trained.modules():
                reset(module)
        for key, value in trained.state_dict().items():
            torch.testing.assert_close(value, fresh[key], rtol=0, atol=0, msg=key)


def _moved(layer: nn.Module, how: str) -> nn.Module:
    if how == "double":
        return layer.double()
    if how == "deepcopy":
        return copy.deepcopy(layer)
    if how == "save-load":
        buffer = io.BytesIO()
        torch.save(layer, buffer)
        buffer.seek(0)
        loaded: nn.Module = torch.load(buffer, weights_only=False)
        return loaded
    if how == "data":  # a new tensor given to .data (no write in place)
        posterior = layer.posterior["weight"]
        posterior.loc_unconstrained.data = posterior.loc_unconstrained.data.clone()
        return layer
    if how == "vector_to_parameters":  # torch's utility assigns .data too
        vector = nn.utils.parameters_to_vector(layer.parameters())
        nn.utils.vector_to_parameters(vector.clone(), layer.parameters())
        return layer
    fresh = bnn.VILinear(5, 4)
    fresh.load_state_dict(layer.state_dict(), assign=True)
    return fresh


@pytest.mark.parametrize(
    "how",
    ["double", "deepcopy", "save-load", "assign", "data", "vector_to_parameters"],
)
def test_a_trained_mean_moved_with_its_values_is_kept_by_a_reset(how: str) -> None:
    """The mean's memory moves with its values in ``.double()``, a copy, a
    pickle, a ``load_state_dict(assign=True)``, a ``.data`` assignment and
    ``vector_to_parameters`` (probe newcomer4): ``reset_parameters
    (init_scale=...)`` then redrew the trained mean (a change of 0.9; probe
    falsepos8). (``to_empty`` moves it without its values: drawn, see
    test_reset_on_its_own_draws_the_mean_as_the_layer_draws_it.)"""
    layer = bnn.VILinear(5, 4)
    with torch.no_grad():
        layer.posterior["weight"].loc_unconstrained.add_(0.5)
    trained = layer.posterior["weight"].loc.detach().clone()
    moved = _moved(layer, how)
    posterior = moved.posterior["weight"]
    posterior.reset_parameters(init_scale=0.05)
    torch.testing.assert_close(
        posterior.loc.detach(), trained.to(posterior.loc.dtype), rtol=0, atol=0
    )


def test_to_empty_memory_holding_the_old_values_is_still_drawn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``to_empty``'s memory may hold the old values (a freed copy of them):
    compared values took it for a move and kept it (under random seeds, 1
    run in 2 of the attention layer's per-module FSDP test, where NaN
    followed). ``to_empty`` is recognised: the mean is drawn."""
    layer = bnn.VILinear(5, 4)
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: t.clone().to(**kw))
    layer.to_empty(device="cpu")
    monkeypatch.undo()
    posterior = layer.posterior["weight"]
    assert posterior.loc.isnan().all()  # the old values, filled with NaN since
    torch.manual_seed(1)
    posterior.reset_parameters()
    torch.manual_seed(1)
    expected = nn.Linear(5, 4).weight.detach()
    torch.testing.assert_close(posterior.loc.detach(), expected, rtol=0, atol=0)


def _emptied(layer: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """``to_empty`` whose memory holds the old values (the hard case)."""
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: t.clone().to(**kw))
    layer.to_empty(device="cpu")
    monkeypatch.undo()


def _write(layer: bnn.VILinear, how: str, values: torch.Tensor) -> None:
    loc = layer.posterior["weight"].loc_unconstrained
    key = "posterior.weight.loc_unconstrained"
    if how == "copy_ into the state dict":
        with torch.no_grad():
            layer.state_dict()[key].copy_(values)
    elif how == "vector_to_parameters":
        source = copy.deepcopy(layer)
        with torch.no_grad():
            source.posterior["weight"].loc_unconstrained.copy_(values)
        vector = nn.utils.parameters_to_vector(source.parameters())
        nn.utils.vector_to_parameters(vector, layer.parameters())
    elif how == ".data assignment":
        loc.data = values.clone()
    elif how == "copy_ into .data":  # not seen by the version counter
        loc.data.copy_(values)
    elif how == "mul_":
        with torch.no_grad():
            loc.mul_(2.0)
    elif how == "torch.nn.init":
        nn.init.normal_(loc)
    else:  # "optimizer step" (a forward pass refuses the unwritten mean)
        optimizer = torch.optim.SGD([loc], lr=0.1)
        loc.grad = torch.ones_like(loc)
        optimizer.step()


WRITES = [
    "copy_ into the state dict",
    "vector_to_parameters",
    ".data assignment",
    "copy_ into .data",
    "mul_",
    "torch.nn.init",
    "optimizer step",
]


@pytest.mark.parametrize("then", ["", "deepcopy", "double", "save-load"])
@pytest.mark.parametrize("how", WRITES)
def test_a_mean_written_after_to_empty_is_kept_by_a_reset(
    how: str, then: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trained mean written into ``to_empty``'s memory other than by
    ``load_state_dict`` (``copy_`` into the state dict, ``vector_to_parameters``)
    was redrawn by ``reset_parameters(init_scale=...)`` (probe falsepos10):
    only a reset or a load counted as a write. Writes in place, ``.data``
    assignments and writes through ``.data`` now count, also after a move or
    a copy."""
    layer = bnn.VILinear(5, 4)
    trained = layer.posterior["weight"].loc.detach() + 0.5
    _emptied(layer, monkeypatch)
    _write(layer, how, trained)
    moved = _moved(layer, then) if then else layer
    posterior = moved.posterior["weight"]
    written = posterior.loc.detach().clone()
    assert not torch.equal(written.float(), trained - 0.5)  # values were written
    posterior.reset_parameters(init_scale=0.05)
    # mul_ of to_empty's memory (NaN) writes NaN: kept, where a draw is finite.
    torch.testing.assert_close(
        posterior.loc.detach(), written, rtol=0, atol=0, equal_nan=True
    )


@pytest.mark.parametrize("memory", ["zeros", "old values"])
def test_a_write_through_data_that_keeps_the_bit_sum_is_kept_by_a_reset(
    memory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mean written through ``.data`` after ``to_empty`` was told from the
    memory by the sum of its bits: a write that kept the sum (zeros into
    zeroed memory, as a ``meta`` build's fresh pages hold; the old values in
    another order) was redrawn by a reset (probe falsepos15). ``to_empty``'s
    memory is now filled with NaN (every bit set): any write is seen."""
    layer = bnn.VILinear(5, 4, device="meta" if memory == "zeros" else None)
    if memory == "zeros":
        monkeypatch.setattr(torch, "empty_like", torch.zeros_like)
        layer.to_empty(device="cpu")
        monkeypatch.undo()
        values = torch.zeros(4, 5)
    else:
        values = layer.posterior["weight"].loc.detach().flip(0, 1).clone()
        _emptied(layer, monkeypatch)
    posterior = layer.posterior["weight"]
    posterior.loc_unconstrained.data.copy_(values)
    posterior.reset_parameters()
    torch.testing.assert_close(posterior.loc.detach(), values, rtol=0, atol=0)


@pytest.mark.parametrize("how", ["deepcopy", "double", "save-load", "double-deepcopy"])
def test_to_empty_memory_moved_or_copied_is_still_drawn(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move or a copy gives ``to_empty``'s memory new addresses: still no
    values, so a reset draws the mean."""
    layer = bnn.VILinear(5, 4)
    _emptied(layer, monkeypatch)
    if how == "double-deepcopy":
        moved = _moved(_moved(layer, "double"), "deepcopy")
    else:
        moved = _moved(layer, how)
    posterior = moved.posterior["weight"]
    torch.manual_seed(1)
    expected = posterior.initial_loc()  # the layer's draw, in the moved dtype
    torch.manual_seed(1)
    posterior.reset_parameters()
    torch.testing.assert_close(posterior.loc.detach(), expected, rtol=0, atol=0)


_READS = ["local", "reparam", "point mass", "loss", "predict", "median"]


@pytest.mark.parametrize("then", ["", "deepcopy", "double"])
@pytest.mark.parametrize("read", _READS)
def test_a_mean_never_written_after_to_empty_is_refused_where_read(
    read: str, then: str
) -> None:
    """``to_empty`` then ``load_state_dict(strict=False)`` without a posterior
    mean gave NaN outputs, losses and predictions, silently (probe
    falsepos16): the posterior knew its mean was never written. Reading it for
    a forward pass, a draw, the loss or a prediction now raises, as a prior's
    unwritten buffer does."""
    family = bnn.PointMass() if read == "point mass" else None
    estimator = "reparam" if read == "reparam" else "auto"
    source = bnn.VILinear(3, 2, variational=family, estimator=estimator)
    layer = bnn.VILinear(3, 2, variational=family, estimator=estimator)
    layer.to_empty(device="cpu")
    state = source.state_dict()
    del state["posterior.weight.loc_unconstrained"]
    missing = layer.load_state_dict(state, strict=False).missing_keys
    assert missing == ["posterior.weight.loc_unconstrained"]
    layer = cast(bnn.VILinear, _moved(layer, then)) if then else layer
    x = torch.randn(4, 3, dtype=layer.posterior["weight"].loc.dtype)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(1.0), dataset_size=8)
    reads = {
        "loss": lambda: loss_fn(layer(x), torch.zeros(4, 2, dtype=x.dtype)),
        "predict": lambda: bnn.predict(layer, x, bnn.Normal(1.0), mode="mean"),
        "median": lambda: layer.guide.median(),
    }
    unwritten = r"'loc_unconstrained' of shape \(2, 3\) holds no values: after to_empty"
    with pytest.raises(ValueError, match=unwritten + r" .* call reset_parameters"):
        reads.get(read, lambda: layer(x, samples=2))()


def test_a_mean_written_after_to_empty_is_read_and_its_record_forgotten() -> None:
    """Every write after ``to_empty`` (a full load, a reset, ``copy_`` into the
    state dict) makes the mean readable; the first read forgets the record of
    ``to_empty``, so that later reads check nothing."""
    source = bnn.VILinear(3, 2)
    x = torch.randn(4, 3)
    writes = {
        "load": lambda layer: layer.load_state_dict(source.state_dict()),
        "reset": lambda layer: layer.reset_parameters(),
        "copy_": lambda layer: [
            value.copy_(source.state_dict()[key])
            for key, value in layer.state_dict().items()
        ],
    }
    for name, write in writes.items():
        layer = bnn.VILinear(3, 2)
        layer.to_empty(device="cpu")
        with torch.no_grad():
            write(layer)
        posterior = layer.posterior["weight"]
        assert torch.isfinite(layer(x, samples=2)).all(), name
        assert posterior._unwritten is None, name


class _DevBranchNormal(vi.distributions.Distribution):
    """A torch_blue-style variational distribution: an ``AdaptedPosterior``."""

    is_variational_distribution = True
    distribution_parameters = ("mean", "log_std")
    _default_variational_parameters = (0.0, -3.0)

    def sample(self, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        return mean + log_std.exp() * torch.randn_like(mean)

    def variational_log_prob(
        self, sample: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
    ) -> torch.Tensor:
        return torch.distributions.Normal(mean, log_std.exp()).log_prob(sample)


# Layers of every variational family, and the key of a tensor of the weight's
# posterior besides the mean.
_FAMILY_LAYERS: dict[str, tuple[Any, str]] = {
    "softplus": (lambda: bnn.VILinear(3, 2), "rho_unconstrained"),
    "exp": (
        lambda: bnn.VILinear(
            3, 2, variational=bnn.MeanFieldNormal(0.05, scale_transform="exp")
        ),
        "rho_unconstrained",
    ),
    "reparam": (lambda: bnn.VILinear(3, 2, estimator="reparam"), "rho_unconstrained"),
    "vi mean field": (lambda: vi.VILinear(3, 2), "rho_unconstrained"),
    "vi torch_blue family": (
        lambda: vi.VILinear(3, 2, _DevBranchNormal()),
        "param1_unconstrained",
    ),
}


@pytest.mark.parametrize("tensor", ["scale", "mean"])
@pytest.mark.parametrize("family", sorted(_FAMILY_LAYERS))
def test_every_posterior_tensor_never_written_after_to_empty_is_refused(
    family: str, tensor: str
) -> None:
    """``to_empty`` then ``load_state_dict(strict=False)`` without a
    posterior's scale (``rho``) read uninitialised memory as the scales
    (0.69, 0, 1.5e13): an infinite loss, finite meaningless predictions
    (probe falsepos20b); only the mean was watched. In a ``vi`` layer the
    mean was not refused either: its torch_blue-named alias gave the tensor
    new memory a second time, after the posterior had recorded it. Every
    tensor of every family is now refused, by name, where it is read; a
    load holding it makes the layer readable."""
    make, scale_key = _FAMILY_LAYERS[family]
    key = "loc_unconstrained" if tensor == "mean" else scale_key
    source, layer = make(), make()
    layer.to_empty(device="cpu")
    state = {
        k: v for k, v in source.state_dict().items() if k != f"posterior.weight.{key}"
    }
    missing = layer.load_state_dict(state, strict=False).missing_keys
    assert f"posterior.weight.{key}" in missing
    x = torch.randn(4, 3)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(1.0), dataset_size=8)
    posterior = layer.posterior["weight"]
    reads = {
        "forward": lambda: layer(x, samples=2),
        "loss": lambda: loss_fn(layer(x, samples=2), torch.zeros(4, 2)),
        "predict": lambda: bnn.predict(layer, x, bnn.Normal(1.0), samples=2),
        "posterior distribution": posterior.distribution,
    }
    if isinstance(posterior, MeanFieldNormalPosterior):
        reads["posterior scale"] = posterior.scale
    message = rf"tensor {key!r} of shape \(2, 3\) holds no values: after to_empty"
    for call in reads.values():
        with pytest.raises(ValueError, match=message):
            call()
    layer.load_state_dict(source.state_dict())
    torch.manual_seed(0)
    loaded = layer(x, samples=2)
    torch.manual_seed(0)
    torch.testing.assert_close(loaded, source(x, samples=2), rtol=0, atol=0)
    assert posterior._unwritten is None


def test_a_tensor_swapped_in_by_functional_call_writes_nothing_into_the_posterior() -> (
    None
):
    """``torch.func.functional_call`` puts other tensors in a posterior's
    place for one call: its mean's new address read as a write of the mean,
    whose record of ``to_empty`` was forgotten, and every later plain call
    returned NaN silently (probe falsepos20b). The swapped-in tensors are
    read; the posterior's own stay refused until written."""
    source, layer = bnn.VILinear(3, 2), bnn.VILinear(3, 2)
    layer.to_empty(device="cpu")
    state = source.state_dict()
    del state["posterior.weight.loc_unconstrained"]
    layer.load_state_dict(state, strict=False)
    x = torch.randn(4, 3)
    tensors = {**dict(source.named_parameters()), **dict(source.named_buffers())}
    torch.manual_seed(0)
    swapped = torch.func.functional_call(layer, tensors, (x,), {"samples": 2})
    torch.manual_seed(0)
    torch.testing.assert_close(swapped, source(x, samples=2), rtol=0, atol=0)
    for _ in range(2):
        with pytest.raises(ValueError, match="'loc_unconstrained' of shape"):
            layer(x, samples=2)
    # functional_call with the layer's own tensors reads them: refused too.
    own = dict(layer.named_parameters())
    with pytest.raises(ValueError, match="'loc_unconstrained' of shape"):
        torch.func.functional_call(layer, own, (x,), {"samples": 2})
    layer.load_state_dict(source.state_dict())
    torch.manual_seed(0)
    plain = layer(x, samples=2)
    torch.testing.assert_close(plain, swapped, rtol=0, atol=0)


def test_the_record_of_to_empty_holds_no_reference_to_the_tensors() -> None:
    """It held a weak reference to each tensor, which made
    ``torch.utils.swap_tensors`` refuse them: every conversion and load under
    torch's ``set_swap_module_params_on_conversion(True)`` failed (probe
    falsepos23a). It holds their identities: an own tensor can be swapped
    (new memory: written), a tensor replaced by assignment is freed and its
    replacement read; one neither stays refused."""
    layer = bnn.VILinear(3, 2, bias=False)
    layer.to_empty(device="cpu")
    posterior = layer.posterior["weight"]
    assert [weakref.getweakrefcount(t) for t in layer.parameters()] == [0, 0]
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="'loc_unconstrained' of shape"):
        layer(x, samples=2)
    loc = posterior.loc_unconstrained
    torch.utils.swap_tensors(loc, nn.Parameter(torch.zeros(2, 3)))
    assert posterior.loc_unconstrained is loc
    with pytest.raises(ValueError, match="'rho_unconstrained' of shape"):
        layer(x, samples=2)
    replaced = weakref.ref(posterior.rho_unconstrained)
    posterior.rho = PyroParam(torch.zeros(2, 3))
    gc.collect()
    assert replaced() is None
    assert torch.isfinite(layer(x, samples=2)).all()


def test_a_scale_moved_by_parametrize_after_to_empty_is_refused_until_loaded() -> None:
    """``register_parametrization`` moves a posterior's ``rho`` with a ``set_``
    onto its own memory: the moved version counter read as a write, and the
    scales of ``to_empty``'s memory (NaN) were read silently. The memory
    itself is compared; a load into the parametrization writes it."""

    class Identity(nn.Module):
        def forward(self, value: torch.Tensor) -> torch.Tensor:
            return value

    source, layer = bnn.VILinear(3, 2), bnn.VILinear(3, 2)
    layer.to_empty(device="cpu")
    state = source.state_dict()
    rho = state.pop("posterior.weight.rho_unconstrained")
    layer.load_state_dict(state, strict=False)
    posterior = layer.posterior["weight"]
    parametrize.register_parametrization(posterior, "rho_unconstrained", Identity())
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="'rho_unconstrained' of shape \\(2, 3\\)"):
        layer(x, samples=2)
    state["posterior.weight.parametrizations.rho_unconstrained.original"] = rho
    layer.load_state_dict(state)
    torch.manual_seed(0)
    loaded = layer(x, samples=2)
    torch.manual_seed(0)
    torch.testing.assert_close(loaded, source(x, samples=2), rtol=0, atol=0)


def test_a_network_built_on_meta_then_emptied_and_loaded_reads_every_tensor() -> None:
    """The deferred initialisation the refusal must leave alone: built on the
    ``meta`` device, ``to_empty``, a strict load (also with ``assign=True``,
    and into a deep copy) of the network and of a loss with a learned noise
    scale: every tensor is written and read, the loss is the source's, and no
    record is left."""

    def build() -> nn.Module:
        return bnn.VISequential(
            bnn.VILinear(3, 4, prior=bnn.LearnedNormalPrior()),
            nn.Tanh(),
            bnn.VILinear(4, 1, variational=bnn.PointMass()),
        )

    source, x, y = build(), torch.randn(5, 3), torch.randn(5, 1)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=10)
    torch.manual_seed(0)
    expected = loss_fn(source(x, samples=2), y)
    for how in ("load", "assign", "deepcopy"):
        with torch.device("meta"):
            network = build()
            loss = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=10)
        network.to_empty(device="cpu")
        loss.to_empty(device="cpu")
        if how == "deepcopy":
            network = copy.deepcopy(network)
        network.load_state_dict(source.state_dict(), assign=how == "assign")
        loss.load_state_dict(loss_fn.state_dict(), assign=how == "assign")
        torch.manual_seed(0)
        got = loss(network(x, samples=2), y)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        modules = [*network.modules(), *loss.modules()]
        records = [getattr(m, "_unwritten", None) for m in modules]
        assert records == [None] * len(records), how
