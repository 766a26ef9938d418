"""Estimators ("reparam", "local", "flipout") agree in distribution and in expectation.

At fixed variational parameters every estimator gives each example's output the
same marginal distribution, so output means and variances agree within
Monte-Carlo error; the ELBO and its gradient agree in expectation. The positions
of an example (tokens of a sequence, locations of a convolution) share its
weights: under the estimators a layer runs on them ("auto", "flipout") identical
positions give identical outputs within one particle, and the joint distribution
of two positions (their covariance included) is that of "reparam". Tolerances:
|z| < 4.5 standard errors (a correct implementation fails a given check with
probability ~7e-6).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn

import pyrolite_bnn as bnn
from pyrolite_bnn.module import whole_network_draws

Z = 4.5
ESTIMATORS = ["reparam", "local", "flipout"]
# torch's forward-mode AD scripts its jvp decompositions on first use.
FORWARD_AD_SCRIPTS = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)


def _widen(module: nn.Module) -> None:
    """Posterior std ~0.3-0.7 so that weight noise is not negligible."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("rho_unconstrained"):
                p.uniform_(-1.0, 0.0)


def _layer(kind: str, estimator: str) -> bnn.VIModule:
    torch.manual_seed(0)  # same variational parameters for every estimator
    if kind in ("linear", "sequence"):
        layer: bnn.VIModule = bnn.VILinear(5, 3, estimator=estimator)
    elif kind == "conv":
        layer = bnn.VIConv2d(2, 3, 3, padding=1, estimator=estimator)
    else:  # "conv-one-location": one output location per example
        layer = bnn.VIConv2d(2, 3, 3, estimator=estimator)
    _widen(layer)
    return layer


def _input(kind: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    shape = {
        "linear": (4, 5),
        "sequence": (3, 4, 5),
        "conv": (2, 2, 4, 4),
        "conv-one-location": (2, 2, 3, 3),
    }[kind]
    return torch.randn(*shape, generator=gen)


@pytest.mark.statistical
@pytest.mark.parametrize(
    ("kind", "estimator"),
    [
        ("linear", "local"),
        ("linear", "flipout"),
        ("sequence", "auto"),
        ("sequence", "flipout"),
        ("conv", "flipout"),
        ("conv-one-location", "local"),
    ],
)
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


def _sequence_net(estimator: str) -> bnn.VISequential:
    """Two linear layers on (B, L, E): the second gets a folded (B * S, L, H)."""
    torch.manual_seed(0)
    model = bnn.VISequential(
        bnn.VILinear(5, 4, estimator=estimator),
        nn.Tanh(),
        bnn.VILinear(4, 3, estimator=estimator),
    )
    _widen(model)
    return model


def _repeated_sequence() -> torch.Tensor:
    """(3, 4, 5) tokens; token 2 of every example repeats token 0."""
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(7))
    x[:, 2] = x[:, 0]
    return x


def _constant_image(dims: int) -> torch.Tensor:
    """(2, 2, 5, ..., 5), constant over space: unpadded locations see one patch."""
    x = torch.randn(2, 2, *(1,) * dims, generator=torch.Generator().manual_seed(8))
    return x.expand(2, 2, *(5,) * dims)


@pytest.mark.parametrize("estimator", ["auto", "flipout"])
@pytest.mark.parametrize("network", [False, True])
def test_identical_tokens_give_identical_outputs(estimator: str, network: bool) -> None:
    """One particle is one network per example: token 2 == token 0 in, and out."""
    x = _repeated_sequence()
    model = _sequence_net(estimator) if network else _layer("sequence", estimator)
    with torch.no_grad():
        out = model(x, samples=6)  # (S, B, L, out)
    torch.testing.assert_close(out[:, :, 2], out[:, :, 0], rtol=1e-5, atol=1e-6)
    # Not vacuous: the outputs are random, and differ between distinct tokens.
    assert float((out[1:] - out[:1]).abs().min(0).values.max()) > 1e-2
    assert float((out[:, :, 1] - out[:, :, 0]).abs().min()) > 1e-4


@pytest.mark.parametrize("estimator", ["auto", "flipout"])
@pytest.mark.parametrize(
    ("conv", "dims"),
    [(bnn.VIConv1d, 1), (bnn.VIConv2d, 2), (bnn.VIConv3d, 3)],
    ids=["1d", "2d", "3d"],
)
def test_identical_locations_give_identical_outputs(
    conv: Callable[..., bnn.VIModule], dims: int, estimator: str
) -> None:
    torch.manual_seed(0)
    layer = conv(2, 3, 3, estimator=estimator)
    _widen(layer)
    with torch.no_grad():
        out = layer(_constant_image(dims), samples=6)  # (S, B, C_out, 3, ..., 3)
    flat = out.flatten(3)
    torch.testing.assert_close(
        flat, flat[..., :1].expand_as(flat), rtol=1e-5, atol=1e-6
    )
    assert float((flat[1:] - flat[:1]).abs().min(0).values.max()) > 1e-2


def _joint_moments(
    out: torch.Tensor, first: int, second: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Mean, variance and covariance of positions ``first``/``second`` over the
    particles (dim 0; position dim 2), each with its squared standard error.

    Each statistic is the mean over n particles of a per-particle quantity (the
    value, the squared or the cross-product deviation from the mean), so its
    squared standard error is that quantity's sample variance / n (CLT; using
    the estimated mean changes it by O(1/n)).
    """
    n = out.shape[0]
    a, b = out.select(2, first), out.select(2, second)
    da, db = a - a.mean(0), b - b.mean(0)
    return {
        name: (q.mean(0), q.var(0) / n)
        for name, q in (("mean", a), ("var", da * da), ("cov", da * db))
    }


@pytest.mark.statistical
@pytest.mark.parametrize(
    ("kind", "estimator"),
    [
        ("sequence", "auto"),
        ("sequence", "flipout"),
        ("network", "auto"),
        ("network", "flipout"),
        ("conv", "flipout"),
    ],
)
def test_joint_distribution_of_two_positions_matches_reparam(
    kind: str, estimator: str
) -> None:
    """Positions of one example share its weights: their covariance is kept."""
    samples = 20_000
    gen = torch.Generator().manual_seed(9)
    if kind == "conv":
        x = torch.randn(2, 2, 4, 4, generator=gen)

        def make(est: str) -> bnn.VIModule:
            return _layer("conv", est)

        def positions(out: torch.Tensor) -> torch.Tensor:
            return out.flatten(3).transpose(2, 3)  # (S, B, locations, C_out)

        first, second = 5, 6  # neighbouring locations, overlapping patches
    else:
        # Two correlated tokens, so that their outputs are clearly correlated.
        x = torch.randn(3, 4, 5, generator=gen)
        x[:, 1] = 0.8 * x[:, 0] + 0.6 * x[:, 1]
        make = _sequence_net if kind == "network" else partial(_layer, "sequence")

        def positions(out: torch.Tensor) -> torch.Tensor:
            return out

        first, second = 0, 1
    with torch.no_grad():
        ref_out = positions(make("reparam")(x, samples=samples))
        est_out = positions(make(estimator)(x, samples=samples))
    ref = _joint_moments(ref_out, first, second)
    est = _joint_moments(est_out, first, second)
    for name, (value, se2) in est.items():
        ref_value, ref_se2 = ref[name]
        z = (value - ref_value).abs() / (se2 + ref_se2).sqrt()
        assert float(z.max()) < Z, name
    # Not vacuous: some covariance is > 2 Z standard errors from 0, so draws
    # independent per position (covariance 0) would fail the check above.
    cov, cov_se2 = ref["cov"]
    assert float((cov.abs() / cov_se2.sqrt()).max()) > 2 * Z


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


class _PooledSequence(bnn.VIModule):
    """A linear layer over the tokens of a sequence, averaged over tokens."""

    def __init__(self, estimator: str) -> None:
        super().__init__()
        self.layer = bnn.VILinear(3, 1, estimator=estimator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x).mean(1)  # (B, L, 3) -> (B, 1)


@pytest.mark.statistical
@pytest.mark.parametrize(
    ("kind", "estimator"),
    [
        ("flat", "local"),
        ("flat", "flipout"),
        ("sequence", "auto"),
        ("sequence", "flipout"),
    ],
)
def test_elbo_and_gradient_agree_in_expectation(kind: str, estimator: str) -> None:
    """Pooling over tokens mixes positions: the expected loss needs their joint."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, generator=gen)
    if kind == "sequence":
        x = torch.randn(16, 6, 3, generator=gen)
    y = torch.randn(16, generator=torch.Generator().manual_seed(4))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.5), 100)
    repeats, samples = 200, 50

    def estimates(est: str) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = (
            _PooledSequence(est)
            if kind == "sequence"
            else bnn.VILinear(3, 1, estimator=est)
        )
        _widen(model)
        params = list(model.parameters())
        losses, grads = [], []
        for _ in range(repeats):
            loss = loss_fn(model(x, samples=samples), y)
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


@pytest.mark.parametrize(
    ("make", "shape", "expected"),
    [
        (lambda: bnn.VILinear(5, 3), (4, 5), "local"),
        (lambda: bnn.VILinear(5, 3), (4, 1, 5), "local"),
        (lambda: bnn.VILinear(5, 3), (4, 7, 5), "flipout"),
        (lambda: bnn.VILinear(5, 3), (4, 2, 7, 5), "flipout"),
        (lambda: bnn.VILinear(5, 3, estimator="flipout"), (4, 5), "flipout"),
        (lambda: bnn.VILinear(5, 3, estimator="local"), (4, 1, 5), "local"),
        (lambda: bnn.VILinear(5, 3, estimator="reparam"), (4, 7, 5), "reparam"),
        (lambda: bnn.VILinear(5, 3, variational=bnn.PointMass()), (4, 5), "reparam"),
        (lambda: bnn.VIConv2d(2, 3, 3), (4, 2, 3, 3), "reparam"),
        (lambda: bnn.VIConv2d(2, 3, 3, estimator="flipout"), (4, 2, 3, 3), "flipout"),
        (lambda: bnn.VIConv2d(2, 3, 3, estimator="local"), (4, 2, 3, 3), "local"),
    ],
)
def test_estimator_for_input(
    make: Callable[[], bnn.VILinear | bnn.VIConv2d],
    shape: tuple[int, ...],
    expected: str,
) -> None:
    layer, x = make(), torch.randn(shape)
    assert layer.estimator_for(x) == expected
    layer(x, samples=3)  # runs the estimator it names


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: bnn.VILinear(5, 3, estimator="local"), (4, 7, 5)),
        (lambda: bnn.VIConv1d(2, 3, 3, estimator="local"), (4, 2, 4)),
        (lambda: bnn.VIConv2d(2, 3, 3, padding=1, estimator="local"), (4, 2, 2, 1)),
    ],
)
def test_local_refuses_inputs_with_several_positions(
    make: Callable[[], bnn.VIModule], shape: tuple[int, ...]
) -> None:
    """Independent draws per position would change the model, not just the noise."""
    layer, x = make(), torch.randn(shape)
    with pytest.raises(ValueError, match="output positions of each example"):
        layer(x)
    with whole_network_draws():  # weights are drawn: nothing to refuse
        assert layer(x, samples=2).shape[:2] == (2, 4)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"stride": 2, "padding": 1},
        {"padding": "same", "dilation": 2},
        {"padding": "valid", "stride": 3},
        {"padding": 2, "padding_mode": "circular", "dilation": 2},
    ],
    ids=str,
)
@pytest.mark.parametrize(
    ("vi_conv", "nn_conv", "shape"),
    [
        (bnn.VIConv1d, nn.Conv1d, (1, 2, 11)),
        (bnn.VIConv2d, nn.Conv2d, (1, 2, 9, 8)),
        (bnn.VIConv3d, nn.Conv3d, (1, 2, 6, 5, 7)),
    ],
)
def test_conv_output_positions_count_output_locations(
    vi_conv: Callable[..., bnn.VIConv2d],
    nn_conv: Callable[..., nn.Module],
    shape: tuple[int, ...],
    options: dict[str, Any],
) -> None:
    x = torch.randn(shape)
    locations = nn_conv(2, 4, 3, **options)(x)[0, 0].numel()
    assert vi_conv(2, 4, 3, **options).output_positions(x) == locations


@pytest.mark.parametrize("estimator", ["auto", "flipout"])
@pytest.mark.parametrize("shape", [(0, 5), (0, 3, 5), (4, 0, 5)])
def test_empty_batch_or_sequence(estimator: str, shape: tuple[int, ...]) -> None:
    out = bnn.VILinear(5, 2, estimator=estimator)(torch.randn(shape), samples=3)
    assert out.shape == (3, *shape[:-1], 2)


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


# --------------------------------------------------- one weight draw per pass
_MEAN = torch.tensor([[0.2, -0.3], [0.4, 0.1]])
_STD = torch.tensor([[1.0, 0.3], [0.4, 0.9]])


class _Twice(bnn.VIModule):
    """One layer object called twice: y = L(L(x))."""

    def __init__(self, layer: bnn.VILinear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.layer(x))  # type: ignore[no-any-return]


@pytest.mark.statistical
def test_layer_called_twice_uses_one_draw_per_particle() -> None:
    """E[W W x] with one W is M M x + diag(sigma^2) x (the W_ii W_ii terms).

    Two independent draws would give M M x (here 1.00 and 0.41 lower than
    the shared value). Tolerance: 5 standard errors of the mean over 20,000
    particles (std(y) / sqrt(S) ~ 0.01; the two theories are ~80 SE apart).
    Under the default estimator the first pass finds the second call and runs
    again with the layer's weights drawn (later passes draw at once).
    """
    x = torch.tensor([[1.0, -0.5]])
    shared = (_MEAN @ _MEAN @ x.T).T[0] + _STD.diag() ** 2 * x[0]
    samples = 20_000
    for estimator in ("auto", "reparam"):
        layer = bnn.VILinear(2, 2, bias=False, estimator=estimator)
        layer.posterior["weight"].reset_parameters(_MEAN, _STD)
        net = _Twice(layer)
        torch.manual_seed(0)
        for _ in range(2):  # the first pass runs again; the second draws at once
            with torch.no_grad():
                y = net(x, samples=samples)[:, 0]
            error = (y.mean(0) - shared).abs() / (y.std(0) / math.sqrt(samples))
            assert float(error.max()) < 5, (estimator, y.mean(0), shared)
    for estimator in ("local", "flipout"):
        layer = bnn.VILinear(2, 2, bias=False, estimator=estimator)
        with pytest.raises(ValueError, match="called twice in one forward pass"):
            _Twice(layer)(x, samples=2)


@pytest.mark.parametrize("estimator", ["local", "flipout"])
@pytest.mark.parametrize("root", [bnn.VISequential, nn.Sequential])
def test_explicit_estimator_on_a_layer_at_two_positions_is_refused(
    estimator: str, root: type[nn.Module]
) -> None:
    """A layer at two positions of a container, VISequential(l, act, l), drew
    its weights silently under an explicit "local" (the docs promise an
    error, as for l(l(x)) in a forward)."""
    layer = bnn.VILinear(2, 2, bias=False, estimator=estimator)
    net = root(layer, nn.Tanh(), layer)
    with pytest.raises(ValueError, match="called twice in one forward pass"):
        net(torch.randn(3, 2))


class _Aliased(bnn.VIModule):
    """A layer at two positions, called once: ``self.head`` aliases ``body[1]``."""

    def __init__(self, estimator: str) -> None:
        super().__init__()
        self.body = bnn.VISequential(
            nn.Identity(), bnn.VILinear(2, 2, bias=False, estimator=estimator)
        )
        self.head = self.body[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # type: ignore[no-any-return]


@pytest.mark.parametrize("estimator", ["local", "flipout"])
def test_explicit_estimator_on_an_aliased_layer_called_once_is_kept(
    estimator: str,
) -> None:
    # Two equal input rows get their own output noise from the moments (the
    # estimator asked for); drawn weights would give them equal outputs.
    net = _Aliased(estimator)
    y = net(torch.ones(2, 2), samples=3)
    assert not torch.equal(y[:, 0], y[:, 1])


class _Views(bnn.VIModule):
    """Two views of each example encoded in one batch: ``a - b`` of the halves.

    ``folded``: the views are folded activations (``f(x1)``, ``f(x2)``), the
    encoder reads ``2B * S`` rows; else the inputs, ``2B`` shared rows.
    """

    def __init__(self, estimator: str, folded: bool) -> None:
        super().__init__()
        wide = bnn.MeanFieldNormal(init_scale=0.5)
        self.f = bnn.VILinear(3, 3, variational=wide) if folded else None
        self.enc = bnn.VILinear(3, 4, variational=wide, estimator=estimator)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        if self.f is not None:
            x1, x2 = self.f(x1), self.f(x2)
        a, b = self.enc(torch.cat([x1, x2])).chunk(2)
        return a - b  # type: ignore[no-any-return]


@pytest.mark.parametrize("folded", [False, True], ids=["inputs", "activations"])
@pytest.mark.parametrize("samples", [1, 2, 10])
def test_views_concatenated_along_the_batch_share_the_weights(
    folded: bool, samples: int
) -> None:
    """``enc(torch.cat([x1, x2])).chunk(2)``: local reparameterisation gave
    each of the two rows of an example its own noise, so for ``x1 == x2`` the
    difference of the views was not 0 (std 0.96 over examples; 9.4 for
    folded activations, with a warning that called the layout right). Under
    ``"auto"`` the layer draws its weights there, as for a layer called
    twice: the difference is exactly 0, and every output equals
    ``estimator="reparam"``'s from the same seed."""
    torch.manual_seed(0)
    net = _Views("auto", folded)
    reference = _Views("reparam", folded)
    reference.load_state_dict(net.state_dict())
    x = torch.randn(5, 3)
    with warnings.catch_warnings():
        # Folded activations concatenated: 2B * S rows, read as 2B folded.
        warnings.filterwarnings("ignore", "a Bayesian layer got an input of")
        torch.manual_seed(1)
        difference = net(x, x.clone(), samples=samples)
        assert difference.shape == (samples, 5, 4)
        torch.testing.assert_close(
            difference, torch.zeros_like(difference), rtol=0, atol=0
        )
        y = torch.randn(5, 3)
        torch.manual_seed(2)
        got = net(x, y, samples=samples)
        torch.manual_seed(2)
        torch.testing.assert_close(got, reference(x, y, samples=samples))


def test_examples_one_row_each_keep_output_moments() -> None:
    """Shared ``B`` and folded ``B * S`` rows (the common cases) stay on the
    fast estimators; a plain root meeting concatenated views raises once, as
    for a layer called twice, and draws from then on."""
    from pyrolite_bnn._draws import called_repeatedly

    net = bnn.VISequential(bnn.VILinear(3, 4), nn.Tanh(), bnn.VILinear(4, 2))
    x = torch.randn(6, 3)
    assert net(x, samples=4).shape == (4, 6, 2)
    assert not called_repeatedly(net[0])
    assert not called_repeatedly(net[2])

    class Siamese(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc, self.head = bnn.VILinear(3, 4), bnn.VILinear(4, 1)

        def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
            a, b = self.enc(torch.cat([x1, x2])).chunk(2)
            return self.head(a - b)  # type: ignore[no-any-return]

    siamese = Siamese()
    with pytest.raises(
        RuntimeError, match=r"(?s)12 input rows.*call the network again"
    ):
        siamese(x, x)
    assert siamese(x, x).shape == (10, 6, 1)
    assert called_repeatedly(siamese.enc)
    assert not called_repeatedly(siamese.head)


class _SequenceFirstProjection(bnn.VIModule):
    """A linear layer's output in a sequence-first network (the LSTM makes it so)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = bnn.VILinear(2, 2, bias=False)
        self.rnn = bnn.VILSTM(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.linear(x)
        self.rnn(projected)
        return projected  # type: ignore[no-any-return]


@pytest.mark.statistical
@pytest.mark.parametrize("batch", [1, 3])
def test_tokens_of_a_sequence_first_input_share_the_weights(batch: int) -> None:
    """Cov(y_0i, y_1i) = sum_j x_0j x_1j sigma_ij^2 for y_l = W x_l, one W per sequence.

    Output moments drawn per token (independent tokens) give 0. Tolerance: 5
    standard errors of the covariance over 20,000 particles,
    sqrt((v_0 v_1 + c^2) / S).
    """
    net = _SequenceFirstProjection()
    net.linear.posterior["weight"].reset_parameters(_MEAN, _STD)
    x = torch.tensor([[1.0, -0.5], [0.5, 1.0]]).unsqueeze(1).expand(2, batch, 2)
    samples = 20_000
    torch.manual_seed(0)
    with torch.no_grad():
        y = net(x.contiguous(), samples=samples)[:, :, 0]  # (S, L, out), example 0
    centred = y - y.mean(0)
    covariance = (centred[:, 0] * centred[:, 1]).mean(0)
    expected = (x[0, 0] * x[1, 0] * _STD**2).sum(-1)
    variances = centred.square().mean(0)
    error = (covariance - expected).abs() / (
        (variances[0] * variances[1] + expected**2) / samples
    ).sqrt()
    assert float(error.max()) < 5, (covariance, expected)


def test_assigning_the_estimator_takes_effect() -> None:
    """``layer.estimator = "reparam"`` after construction is obeyed and checked."""
    layer = bnn.VILinear(3, 2)
    assert layer.uses_moments()  # "auto": local reparameterisation for (B, in)
    layer.estimator = "reparam"
    assert not layer.uses_moments()
    assert layer.estimator_for(torch.randn(4, 3)) == "reparam"
    layer.estimator = "auto"
    assert layer.uses_moments()
    with pytest.raises(ValueError, match="estimator must be one of"):
        layer.estimator = "bogus"
    with pytest.raises(ValueError, match="supports estimator in"):
        bnn.VIEmbedding(5, 2).estimator = "local"


def test_plain_root_calling_a_layer_twice_asks_for_a_second_call() -> None:
    """A torch root cannot run its forward again: one clear error, then draws."""
    layer = bnn.VILinear(2, 2)

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer
            self.other = bnn.VILinear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.other(self.layer(self.layer(x)))  # type: ignore[no-any-return]

    net, x = Tied(), torch.randn(3, 2)
    with pytest.raises(RuntimeError, match="call the network again"):
        net(x)
    out = net(x)
    assert out.shape == (10, 3, 2)


def test_bnn_trace_elbo_falls_back_for_an_explicit_estimator_called_twice() -> None:
    """Inside Pyro inference the weights are drawn: Pyro's ELBO is the value."""
    import pyro
    from pyro.infer import Trace_ELBO

    torch.manual_seed(0)
    net = _Twice(bnn.VILinear(2, 2, estimator="local"))
    x, y = torch.randn(4, 2), torch.randn(4, 2)
    model = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 20).pyro_model(net)
    values = []
    for elbo in (Trace_ELBO(), bnn.Trace_ELBO()):
        pyro.set_rng_seed(3)
        values.append(elbo.loss(model, net.guide, x, y, samples=2))
    assert values[1] == pytest.approx(values[0], rel=1e-5)


@pytest.mark.parametrize("estimator", ["auto", "local", "flipout", "reparam"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_inputs_of_zeros_without_bias_give_finite_gradients(
    kind: str, estimator: str
) -> None:
    """An example whose input is all zeros into a layer without bias has output
    variance 0: local reparameterisation took sqrt's infinite slope there and
    gave NaN gradients (one Adam step then made the weights NaN). Its output
    does not depend on the weights: their gradient from it is 0."""
    if kind == "linear":
        layer: bnn.VIModule = bnn.VILinear(3, 4, bias=False, estimator=estimator)
        x = torch.randn(6, 3)
    else:  # one output position per example: local reparameterisation applies
        layer = bnn.VIConv2d(2, 4, 3, bias=False, estimator=estimator)
        x = torch.randn(6, 2, 3, 3)
    x[0] = 0.0
    out = layer(x, samples=5)
    out.square().sum().backward()
    grads = {name: p.grad for name, p in layer.named_parameters()}
    assert all(g is not None and bool(g.isfinite().all()) for g in grads.values())
    layer.zero_grad()
    layer(x[:1], samples=5).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is None or not bool(p.grad.any()), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_local_draws_keep_small_variances(dtype: torch.dtype) -> None:
    """Only an exact zero variance is special: a floor at float16's smallest
    normal number (6e-5) raised small variances and cut their gradients."""
    from pyrolite_bnn.layers.functional import _gaussian_draws

    var = torch.tensor([0.0, 1e-6, 1e-5, 1e-3], dtype=dtype, requires_grad=True)
    mean = torch.zeros(4000, 4, dtype=dtype)
    torch.manual_seed(0)
    draws = _gaussian_draws(mean, var.expand(4000, 4), False, 1, 4000).float()
    spread = draws.var(0)
    assert spread[0] == 0
    for got, want in zip(spread[1:], var[1:].float(), strict=True):
        assert abs(got / want - 1) < 0.15
    draws.square().sum().backward()
    assert var.grad is not None
    assert var.grad[0] == 0
    assert bool((var.grad[1:] > 0).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_local_draws_with_bias_variance_match_the_exact_path(
    dtype: torch.dtype,
) -> None:
    """With a bias the variance is positive: its draws (one op for the std) equal
    the exact zero-aware path's wherever the variance is a normal number."""
    from pyrolite_bnn.layers.functional import _gaussian_draws

    var = torch.tensor([1e-6, 1e-4, 1e-2, 3.0], dtype=dtype, requires_grad=True)
    mean = torch.randn(50, 4, dtype=dtype)
    grads = []
    outputs = []
    for bias_variance in (False, True):
        torch.manual_seed(0)
        out = _gaussian_draws(
            mean, var.expand(50, 4), False, 1, 50, bias_variance=bias_variance
        )
        (grad,) = torch.autograd.grad(out.float().square().sum(), var)
        outputs.append(out)
        grads.append(grad)
    assert torch.equal(outputs[0], outputs[1])
    assert torch.equal(grads[0], grads[1])


def test_underflowed_bias_variance_gives_finite_gradients() -> None:
    """A bias scale whose square underflows (rho = -60: std ~1e-26) with an
    input row of zeros made the variance a float zero: its gradients stay
    finite."""
    layer = bnn.VILinear(3, 4, estimator="local")
    with torch.no_grad():
        layer.posterior["bias"].rho.fill_(-60.0)
    x = torch.randn(6, 3)
    x[0] = 0.0
    layer(x, samples=5).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert bool(p.grad.isfinite().all()), name


def test_estimator_for_follows_a_replaced_posterior_and_a_layer_called_twice() -> None:
    """estimator_for said "local" after the posteriors were replaced by point
    masses, and for a layer seen called twice, where the call draws weights."""
    x = torch.randn(4, 3)
    layer = bnn.VILinear(3, 2)
    assert layer.estimator_for(x) == "local"
    for name in ("weight", "bias"):
        mean = layer.posterior[name].mean().detach().clone()
        layer.posterior[name] = bnn.PointMass().build(mean.shape, mean)
    assert layer.estimator_for(x) == "reparam"
    twice = _Twice(bnn.VILinear(2, 2, bias=False))
    assert twice.layer.estimator_for(torch.randn(4, 2)) == "local"
    twice(torch.randn(4, 2), samples=2)
    assert twice.layer.estimator_for(torch.randn(4, 2)) == "reparam"


@pytest.mark.parametrize("replaced", ["weight", "bias"])
def test_one_posterior_replaced_by_a_point_mass_gives_the_layer_weight_draws(
    replaced: str,
) -> None:
    """The generated guide chose moments per variable, the layer's estimators
    need them for all: with only the bias (or weight) replaced after
    construction the call raised "linear_local takes the bias as a (mean,
    std) pair". The layer now draws its weights, and estimator_for says so."""
    layer = bnn.VILinear(3, 2)
    mean = layer.posterior[replaced].mean().detach().clone()
    layer.posterior[replaced] = bnn.PointMass().build(mean.shape, mean)
    x = torch.ones(2, 3)
    y = layer(x, samples=3)
    torch.testing.assert_close(
        y[:, 0], y[:, 1], rtol=0, atol=0
    )  # one draw per particle
    assert layer.estimator_for(x) == "reparam"


@pytest.mark.parametrize("estimator", ["auto", "flipout"])
def test_input_derivatives_are_those_of_weight_draws(estimator: str) -> None:
    """For ``out = x . w + b`` the derivative by ``x`` is a weight draw ``w``,
    so ``E ||d out / dx||^2 = ||mu||^2 + sum sigma^2`` exactly. Local
    reparameterisation (``"auto"`` on ``(B, in)`` inputs) draws each output
    afresh and gave 0.8 against 4.2 (a gradient penalty 5x too small, probe of
    2026-12-02); ``"auto"`` now runs flipout when the inputs require
    gradients. 400 particles of 50 examples, each its own draw; tolerance 3 %
    (the estimate's standard error is about 0.6 %)."""
    torch.manual_seed(0)
    layer = bnn.VILinear(8, 1, estimator=estimator)
    with torch.no_grad():
        layer.posterior["weight"].rho_unconstrained.fill_(-0.5)  # sigma ~ 0.47
    mean = layer.posterior["weight"].mean().detach()
    std = layer.posterior["weight"].scale().detach()
    exact = float((mean**2).sum() + (std**2).sum())
    x = torch.randn(50, 8, requires_grad=True)
    out = layer(x, samples=400)
    squared = []
    for particle in out:  # row b depends on x[b] only
        (grad,) = torch.autograd.grad(particle.sum(), x, retain_graph=True)
        squared.append((grad**2).sum(-1))
    estimate = float(torch.stack(squared).mean())
    assert estimate == pytest.approx(exact, rel=0.03)
    if estimator == "auto":  # without input gradients it stays local
        assert layer.estimator_for(x.detach()) == "local"


def test_derivatives_by_a_trunk_activation_are_those_of_weight_draws() -> None:
    """Grad-CAM's hook on a trainable trunk's activation ``a``, under a head
    ``out = a . w + b``: each particle's ``d out / d a`` is a weight draw, so
    ``E[g^2] = mu^2 + sigma^2`` per feature. The hook is not visible from the
    head: a rule that ran local reparameterisation on a trunk's features
    (parameter leaves only) gave up to 4x too little (probe falsepos11 of
    2026-12-02). ``"auto"`` runs flipout on inputs that require gradients;
    ``estimator_for`` says so outside a call too. 4000 particles, 1 example;
    tolerance 10 % (about 4.5 standard errors of each mean of squares)."""
    torch.manual_seed(0)
    trunk = nn.Linear(3, 6)
    head = bnn.VILinear(6, 1)
    with torch.no_grad():
        head.posterior["weight"].rho_unconstrained.fill_(-1.0)  # sigma ~ 0.31
    mean = head.posterior["weight"].mean().detach()[0]
    std = head.posterior["weight"].scale().detach()[0]
    activation = trunk(torch.randn(1, 3))  # the trunk: Linear, then ReLU
    activation.register_hook(lambda grad: grad)  # what Grad-CAM's hook adds
    samples = 4000
    out = head(torch.relu(activation), samples=samples)  # (S, 1, 1)
    one_particle_each = torch.eye(samples).view(samples, samples, 1, 1)
    (slopes,) = torch.autograd.grad(
        out, activation, one_particle_each, is_grads_batched=True
    )  # (S, 1, 6): d out[s] / d a, a weight draw where a > 0
    estimate = slopes[:, 0].square().mean(0)
    expected = (mean.square() + std.square()) * (activation[0] > 0)
    torch.testing.assert_close(estimate, expected.detach(), rtol=0.1, atol=0)
    assert head.estimator_for(activation) == "flipout"
    assert head.estimator_for(activation.detach()) == "local"


def _input_jacobian(transform: str, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-particle ``d out / d x`` of a ``VILinear(3, 2)`` taken by ``transform``.

    The input ``(1, 0, 2)`` has a zero feature, whose column a local draw
    gives no spread at all. Returns the Jacobians ``(S, out, in)`` and the
    posterior standard deviations of the weight ``(out, in)``.
    """
    torch.manual_seed(0)
    layer = bnn.VILinear(3, 2, variational=bnn.MeanFieldNormal(0.5))
    x = torch.tensor([[1.0, 0.0, 2.0]])

    def net(inp: torch.Tensor) -> torch.Tensor:
        return layer(inp, samples=samples)[:, 0]  # (S, out)

    basis = torch.eye(3).unsqueeze(1)  # tangents (in, 1, in)
    torch.manual_seed(3)
    if transform == "jacfwd":
        jac = torch.func.jacfwd(net, randomness="same")(x)[:, :, 0]
    elif transform == "jacrev":
        jac = torch.func.jacrev(net)(x)[:, :, 0]
    else:  # one forward-mode pass per input feature, each at the same draws
        columns = []
        for tangent in basis:
            torch.manual_seed(3)
            if transform == "jvp":
                _, column = torch.func.jvp(net, (x,), (tangent,))
            else:  # "dual": torch.autograd.forward_ad
                with torch.autograd.forward_ad.dual_level():
                    dual = torch.autograd.forward_ad.make_dual(x, tangent)
                    column = torch.autograd.forward_ad.unpack_dual(net(dual)).tangent
            columns.append(column)
        jac = torch.stack(columns, dim=-1)
    return jac.detach(), layer.posterior["weight"].scale().detach()


@FORWARD_AD_SCRIPTS
@pytest.mark.statistical
@pytest.mark.parametrize("transform", ["jacfwd", "jvp", "dual"])
def test_forward_mode_input_derivatives_are_those_of_weight_draws(
    transform: str,
) -> None:
    """Forward mode takes the same estimator as reverse mode under ``"auto"``.

    ``d out_o / d x_i`` of a particle is its weight draw ``W_oi``, so the
    spread over particles is the posterior standard deviation (0.5) for every
    entry. A forward-mode input has no ``requires_grad``, and ``"auto"`` kept
    local reparameterisation: spreads ``[0.2, 0, 0.4]`` for the input
    ``(1, 0, 2)`` (probe of 2026-12-09). Tolerance 4.5 standard errors of a
    sample standard deviation of 2000 Normal draws, ``0.5 / sqrt(2 * 1999)``.
    """
    samples = 2000
    jac, std = _input_jacobian(transform, samples)
    spread = jac.std(0)
    tolerance = Z * 0.5 / math.sqrt(2 * (samples - 1))
    torch.testing.assert_close(spread, std, rtol=0, atol=tolerance)


@FORWARD_AD_SCRIPTS
def test_jacfwd_and_jacrev_take_the_same_draws() -> None:
    """At one seed forward and reverse mode differentiate the same networks."""
    forward, _ = _input_jacobian("jacfwd", 8)
    reverse, _ = _input_jacobian("jacrev", 8)
    torch.testing.assert_close(forward, reverse, rtol=1e-6, atol=1e-6)
    for transform in ("jvp", "dual"):
        columns, _ = _input_jacobian(transform, 8)
        torch.testing.assert_close(columns, reverse, rtol=1e-6, atol=1e-6)


def _mean_squared_input_slope(estimator: str, samples: int = 100) -> float:
    """``E |d out / d x|^2`` over particles of a small tanh network."""
    torch.manual_seed(5)
    net = bnn.VISequential(
        bnn.VILinear(2, 8, estimator=estimator),
        nn.Tanh(),
        bnn.VILinear(8, 1, estimator=estimator),
    )
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if "rho" in name:
                parameter.fill_(math.log(math.expm1(0.4)))  # posterior std 0.4
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    x.requires_grad_()
    out = net(x, samples=samples)  # (S, 4, 1)
    # One backward pass per particle: row s of ``picks`` selects its outputs.
    picks = torch.eye(samples).view(samples, samples, 1, 1).expand(-1, -1, 4, 1)
    (slopes,) = torch.autograd.grad(out, x, picks, is_grads_batched=True)
    return float(slopes.square().sum(-1).mean())


def test_local_input_derivatives_are_of_no_weight_draw_and_auto_avoids_them() -> None:
    """Output moments give each output its own noise: derivatives by the
    inputs are those of no weight draw (the gradient penalty below comes out
    far too small, as VILinear's docstring says of an explicit ``"local"``);
    ``"auto"`` switches to flipout in such calls and matches drawn weights.
    (No warning for an explicit ``"local"``: the howto recommends it for a
    head on a trainable trunk, whose inputs require gradients unbiasedly.)"""
    local = _mean_squared_input_slope("local")
    reparam = _mean_squared_input_slope("reparam")
    auto = _mean_squared_input_slope("auto")
    assert local < 0.5 * reparam
    assert auto == pytest.approx(reparam, rel=0.15)


@pytest.mark.filterwarnings("ignore:Sparse .* tensor support is in beta")
@pytest.mark.parametrize("estimator", ["auto", "reparam", "local", "flipout"])
@pytest.mark.parametrize(
    "layout",
    [torch.sparse_coo, torch.sparse_csr, torch.sparse_csc],
    ids=str,
)
def test_sparse_matrix_inputs_give_the_dense_inputs_outputs(
    estimator: str, layout: torch.layout
) -> None:
    """VILinear takes the sparse matrices torch's nn.Linear trains on. The
    local estimator's squared input crashed for CSC (torch has no product of
    CSC tensors: ``Expected result Tensor to be of format CSR``), and flipout's
    sign flips for every sparse layout (``reshape is not implemented for
    sparse tensors``). At one seed, the outputs and the gradients are the
    dense input's, to float32 round-off."""
    x = _input("linear")
    x[x.abs() < 0.7] = 0.0
    sparse = x.to_sparse(layout=layout)

    def run(inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        layer = _layer("linear", estimator)
        torch.manual_seed(3)
        out = layer(inputs, samples=4)
        out.square().sum().backward()
        return (out, *(p.grad for p in layer.parameters() if p.grad is not None))

    got, expected = run(sparse), run(x)
    assert len(got) == len(expected) == 5
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Sparse .* tensor support is in beta")
@pytest.mark.parametrize("estimator", ["auto", "reparam", "local", "flipout"])
@pytest.mark.parametrize("layout", [torch.sparse_coo, torch.sparse_csr], ids=str)
def test_a_sparse_inputs_gradient_is_the_dense_inputs_at_every_entry(
    estimator: str, layout: torch.layout
) -> None:
    """Flipout made a sparse input dense with ``to_dense()``, whose backward
    passes gradients to the stored entries only: ``x.grad`` was off by up to
    2.4 at the others, under ``"auto"`` too (which runs flipout for inputs
    that require gradients: saliency maps, gradient penalties). Probe
    falsepos21a."""
    x = _input("linear")
    x[x.abs() < 0.7] = 0.0

    def input_gradient(inputs: torch.Tensor) -> torch.Tensor:
        inputs.requires_grad_()
        layer = _layer("linear", estimator)
        torch.manual_seed(3)
        layer(inputs, samples=4).square().sum().backward()
        assert inputs.grad is not None
        return inputs.grad.to_dense()

    got = input_gradient(x.to_sparse(layout=layout))
    expected = input_gradient(x.clone())
    assert bool((x == 0).any())  # entries the sparse tensor does not store
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Sparse .* tensor support is in beta")
@pytest.mark.parametrize("layout", [torch.sparse_coo, torch.sparse_csr], ids=str)
def test_a_sparse_activation_meets_its_particles_weights(layout: torch.layout) -> None:
    """A sparse matrix made of a folded activation (B * S rows) inside a
    network met per-particle weights by a reshape, which torch has not for
    sparse tensors (``reshape is not implemented for sparse tensors``)."""

    class Sparsify(nn.Module):
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return h.to_sparse(layout=layout)

    def run(middle: nn.Module) -> torch.Tensor:
        torch.manual_seed(0)
        net = bnn.VISequential(
            bnn.VILinear(5, 4),
            nn.ReLU(),
            middle,
            bnn.VILinear(4, 2, estimator="reparam"),
        )
        torch.manual_seed(3)
        x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
        return net(x, samples=3)

    torch.testing.assert_close(run(Sparsify()), run(nn.Identity()))
