from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyro
import pytest
import torch
from torch import nn

import pyrolite_bnn as bnn
from pyrolite_bnn.variables import UnitLayout


class Net(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = bnn.VISequential(bnn.VILinear(4, 8), nn.ReLU(), bnn.VILinear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_outermost_call_adds_particle_dimension() -> None:
    net = Net()
    assert net(torch.randn(5, 4)).shape == (10, 5, 3)
    assert net(torch.randn(5, 4), samples=3).shape == (3, 5, 3)
    net.samples = 7
    assert net(torch.randn(2, 4)).shape == (7, 2, 3)
    # The same layer is outermost when called on its own.
    assert net.body[0](torch.randn(5, 4), samples=2).shape == (2, 5, 8)


def test_site_names_are_module_paths() -> None:
    trace = pyro.poutine.trace(Net().guide).get_trace(samples=2)
    sites = [
        n for n, s in trace.nodes.items() if s["type"] == "sample" and n != "particles"
    ]
    assert sites == ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"]


def test_particles_are_independent() -> None:
    net = Net()
    for posterior in net.modules():
        if isinstance(
            posterior, bnn.distributions.variational.MeanFieldNormalPosterior
        ):
            with torch.no_grad():
                posterior.rho_unconstrained.fill_(0.0)
    out = net(torch.randn(5, 4), samples=4)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(out[i], out[j])


def test_samples_below_one_rejected() -> None:
    with pytest.raises(ValueError, match="samples must be an integer >= 1, got 0"):
        Net()(torch.randn(2, 4), samples=0)
    net = Net()
    with pytest.raises(ValueError, match="got -1"):
        net.samples = -1  # refused where it is set (it failed at the next call)
    with pytest.raises(TypeError, match="samples must be an integer"):
        net.samples = 2.5
    assert net.samples == bnn.VIModule().samples


@pytest.mark.parametrize("samples", [2.0, True, "3"])
def test_samples_of_another_type_is_a_type_error(samples: object) -> None:
    """Like every other count of the library (a ValueError said 'must be an
    integer' for 2.0); numpy integers are counts."""
    with pytest.raises(TypeError, match="samples must be an integer >= 1"):
        Net()(torch.randn(2, 4), samples=samples)
    assert Net()(torch.randn(2, 4), samples=np.int64(3)).shape[0] == 3


def test_samples_only_on_outermost_call() -> None:
    class Bad(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = bnn.VILinear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x, samples=3)

    with pytest.raises(ValueError, match="outermost"):
        Bad()(torch.randn(1, 2))


@pytest.mark.parametrize(
    "plain",
    [
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.LayerNorm(8),
        bnn.BatchNorm1d(8),  # torch's warns: tests/layers/test_batchnorm.py
        nn.Sequential(nn.Tanh(), nn.Identity()),
    ],
)
def test_plain_torch_modules_inside(plain: nn.Module) -> None:
    net = bnn.VISequential(bnn.VILinear(4, 8), plain, bnn.VILinear(8, 2))
    net.train()
    out = net(torch.randn(6, 4), samples=3)
    assert out.shape == (3, 6, 2)
    out.sum().backward()


def test_flatten_and_pooling_inside_conv_net() -> None:
    net = bnn.VISequential(
        bnn.VIConv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        bnn.VILinear(4 * 3 * 3, 2),
    )
    assert net(torch.randn(5, 1, 8, 8), samples=3).shape == (3, 5, 2)
    # Flatten before any Bayesian layer acts on the shared (B, ...) input.
    net2 = bnn.VISequential(nn.Flatten(), bnn.VILinear(16, 2))
    assert net2(torch.randn(5, 4, 4), samples=3).shape == (3, 5, 2)


def test_state_dict_round_trip_reproduces_predictions() -> None:
    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    clone = Net()
    clone.load_state_dict(net.state_dict())
    x = torch.randn(3, 4)
    pyro.set_rng_seed(5)
    a = net(x)
    pyro.set_rng_seed(5)
    b = clone(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_prior_buffers_move_with_double_and_state_dict() -> None:
    net = bnn.VILinear(3, 2, prior=bnn.NormalPrior(0.0, 0.3))
    keys = net.state_dict().keys()
    assert "prior.weight.scale" in keys
    assert "prior.bias.loc" in keys
    net.double()
    assert net.prior["weight"].scale.dtype == torch.float64
    assert net.posterior["weight"].loc.dtype == torch.float64
    assert net(torch.randn(2, 3, dtype=torch.float64)).dtype == torch.float64
    other = bnn.VILinear(3, 2)
    other.load_state_dict(
        bnn.VILinear(3, 2, prior=bnn.NormalPrior(0.0, 0.3)).state_dict()
    )
    torch.testing.assert_close(other.prior["weight"].scale, torch.tensor(0.3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_argument(dtype: torch.dtype) -> None:
    layer = bnn.VILinear(3, 2, dtype=dtype)
    assert layer.posterior["weight"].loc.dtype == dtype
    assert layer.prior["weight"].loc.dtype == dtype
    out = layer(torch.randn(4, 3, dtype=dtype))
    loss = bnn.KullbackLeiblerLoss(bnn.Categorical(), 10)(
        out, torch.zeros(4, dtype=torch.long)
    )
    assert loss.dtype == dtype


class _MixedNetwork(bnn.VIModule):
    """Plain torch layers around Bayesian ones, and a learned likelihood scale."""

    def __init__(self) -> None:
        super().__init__()
        self.body = bnn.VISequential(
            nn.Linear(4, 4), bnn.VILinear(4, 3), nn.LayerNorm(3), bnn.VILinear(3, 2)
        )
        self.noise = bnn.Normal()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _converted_network() -> bnn.VIModule:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    return bnn.convert(model, exclude=["0"])  # a plain layer kept in it


# torch's note in Module.to(complex dtype), before it converts anything.
@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")
@pytest.mark.parametrize("make", [_MixedNetwork, _converted_network])
@pytest.mark.parametrize(
    ("convert", "dtype"),
    [
        (lambda m: m.to(torch.complex64), torch.complex64),
        (lambda m: m.to("cpu", torch.complex128), torch.complex128),
        (lambda m: m.to(dtype=torch.complex64), torch.complex64),
        (lambda m: m.type(torch.complex128), torch.complex128),
        (lambda m: m.to(torch.float8_e5m2), torch.float8_e5m2),
        (lambda m: m.type(torch.int32), torch.int32),
    ],
    ids=["to", "to-device", "to-dtype", "type", "to-float8", "type-int"],
)
def test_conversion_of_a_network_to_a_dtype_it_cannot_run_is_refused_whole(
    make: Callable[[], nn.Module],
    convert: Callable[[nn.Module], object],
    dtype: torch.dtype,
) -> None:
    """``net.to(torch.complex64)`` was accepted, and the network's first call
    failed in torch (``"softplus_cpu" not implemented for 'ComplexFloat'``).
    It is refused before any tensor changes, the plain torch layers inside the
    network included; the network runs as before."""
    net = make()
    x = torch.randn(5, 4)
    pyro.set_rng_seed(1)
    expected = net(x)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(TypeError, match=rf"floating-point tensors {dtype}; .*float16"):
        convert(net)
    after = net.state_dict()
    for key, value in before.items():
        assert after[key].dtype == value.dtype, key
        torch.testing.assert_close(after[key], value, rtol=0, atol=0)
    pyro.set_rng_seed(1)
    torch.testing.assert_close(net(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "convert",
    [lambda m: m.half(), lambda m: m.bfloat16(), lambda m: m.double()],
    ids=["half", "bfloat16", "double"],
)
def test_conversion_to_a_real_floating_dtype_converts_every_tensor(
    convert: Callable[[nn.Module], object],
) -> None:
    net = _MixedNetwork()
    convert(net)
    dtypes = {
        t.dtype for t in (*net.parameters(), *net.buffers()) if t.is_floating_point()
    }
    assert len(dtypes) == 1
    (dtype,) = dtypes
    assert net(torch.randn(5, 4, dtype=dtype)).dtype == dtype


def test_a_conversion_is_checked_once_for_the_whole_tree() -> None:
    """The dtype check of a conversion ran at every library module of the
    tree, each walking its whole subtree (``.to()`` of a 40-deep network
    walked 40 trees, and called the conversion on a probe tensor at each
    level). It runs once, at the outermost: the conversion is called once per
    tensor, plus once on a probe per dtype the tree holds. Probe
    falsepos21a."""
    net: nn.Module = bnn.VILinear(4, 4)
    for _ in range(10):
        net = bnn.VISequential(net, nn.ReLU(), bnn.VILinear(4, 4))
    tensors = [*net.parameters(), *net.buffers()]
    dtypes = {t.dtype for t in tensors if t.is_floating_point()}
    calls = []

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        calls.append(tensor)
        return tensor.double() if tensor.is_floating_point() else tensor

    net._apply(convert)
    assert len(calls) == len(tensors) + len(dtypes)
    assert all(t.dtype == torch.float64 for t in net.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_cuda_moves_everything() -> None:
    net = Net().to("cuda")
    assert all(b.is_cuda for b in net.buffers())
    assert all(p.is_cuda for p in net.parameters())
    x = torch.randn(5, 4, device="cuda")
    y = torch.randint(0, 3, (5,), device="cuda")
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 100)
    loss = loss_fn(net(x), y)
    loss.backward()
    assert loss.is_cuda
    trace = pyro.poutine.trace(loss_fn.pyro_model(net)).get_trace(x, y)
    assert trace.nodes["obs"]["value"].is_cuda


def test_non_finite_input_rejected_when_validating() -> None:
    x = torch.randn(3, 4)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"input 0 of Net contains 1 NaN/Inf"):
        Net()(x)
    with bnn.validation(False):
        assert torch.isnan(Net()(x)).any()
    with pytest.raises(ValueError, match=r"input x of Net contains 1 NaN/Inf"):
        Net()(x=x)  # keyword inputs are checked too


def test_guide_must_be_callable() -> None:
    net = Net()
    with pytest.raises(TypeError, match="callable Pyro guide"):
        net.guide = 3
    assert net.guide.inner is None


def test_return_log_probs() -> None:
    net = Net()
    net.return_log_probs = True
    out = net(torch.randn(2, 4), samples=6)
    assert out.log_probs.shape == (6, 2)
    # log q of a narrow posterior is far above log p under the N(0, 1) prior.
    assert bool((out.log_probs[:, 1] > out.log_probs[:, 0]).all())


@pytest.mark.parametrize("estimator", ["auto", "local", "flipout"])
def test_log_probs_are_those_of_the_weights_behind_the_output(estimator: str) -> None:
    """With sampled outputs (local, flipout) they were of other, fresh draws."""
    torch.manual_seed(0)
    layer = bnn.VILinear(3, 2, estimator=estimator)
    with torch.no_grad():
        layer.posterior["weight"].rho_unconstrained.fill_(-1.0)  # std ~0.3
        layer.posterior["bias"].rho_unconstrained.fill_(-1.0)
    layer.return_log_probs = True
    x = torch.randn(8, 3, dtype=torch.float64).float()
    out = layer(x, samples=4)
    # each particle's weights, recovered from its 8 outputs (exact for one
    # draw per particle; rows with noise of their own fit no single draw)
    design = torch.cat([x, torch.ones(8, 1)], dim=1).double()
    for s in range(4):
        solution = torch.linalg.lstsq(design, out[s].double()).solution  # (4, 2)
        residual = design @ solution - out[s].double()
        assert residual.abs().max() < 1e-4
        weight, bias = solution[:3].T, solution[3]
        log_q = sum(
            torch.distributions.Normal(*layer.posterior[name].normal_params())
            .log_prob(value.float())
            .sum()
            for name, value in (("weight", weight), ("bias", bias))
        )
        torch.testing.assert_close(out.log_probs[s, 1], log_q, rtol=1e-4, atol=1e-3)


def test_weight_outside_a_call_is_the_posterior_mean_parameter() -> None:
    """It was a fresh prior draw (a bare PyroSample): nn.init on it did nothing."""
    layer = bnn.VILinear(3, 2, prior=bnn.NormalPrior(5.0, 2.0))
    mean = layer.posterior["weight"].loc_unconstrained
    assert layer.weight is mean  # stable, and initialised in place like torch's
    torch.nn.init.constant_(layer.weight, 0.25)
    torch.testing.assert_close(mean.detach(), torch.full((2, 3), 0.25))
    out = bnn.predict(layer, torch.ones(1, 3), bnn.Normal(1.0), mode="mean").samples
    torch.testing.assert_close(out[0, 0], 0.75 + layer.bias.detach())


def _mixed_families() -> bnn.VISequential:
    body = bnn.VILinear(3, 4)  # built first: the draws come in this order
    head = bnn.VILinear(4, 2, variational=bnn.PointMass())
    return bnn.VISequential(body, torch.nn.ReLU(), head)


def test_torchs_reset_parameters_idiom_reaches_every_module() -> None:
    """Posteriors' reset_parameters needed the mean: the idiom raised TypeError."""
    net = _mixed_families()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(3.0)
    torch.manual_seed(0)
    for module in net.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    torch.manual_seed(0)
    fresh = _mixed_families()
    for (name, got), (_, want) in zip(
        net.named_parameters(), fresh.named_parameters(), strict=True
    ):
        torch.testing.assert_close(got, want, msg=name)


def test_assigning_a_tensor_to_a_random_variable_is_refused() -> None:
    """It shadowed the variable: the next call failed inside with one particle."""
    layer = bnn.VILinear(3, 4)
    with pytest.raises(AttributeError, match="random variable"):
        layer.weight = torch.zeros(4, 3)
    with pytest.raises(AttributeError, match="random variable"):
        layer.weight = torch.nn.Parameter(torch.zeros(4, 3))
    with torch.no_grad():  # what the message proposes
        layer.weight.copy_(torch.ones(4, 3))
    mean = layer.posterior["weight"].mean().detach()
    torch.testing.assert_close(mean, torch.ones(4, 3))
    assert layer(torch.randn(2, 3), samples=3).shape == (3, 2, 4)


@pytest.mark.parametrize("how", ["context", "argument"])
def test_layers_build_on_the_meta_device_and_materialise(how: str) -> None:
    """torch's way to build a big model without memory: meta, then to_empty
    and reset_parameters (the prior check read meta values and failed)."""

    def build() -> bnn.VISequential:
        device = "meta" if how == "argument" else None
        return bnn.VISequential(
            bnn.VILinear(3, 8, device=device),
            nn.ReLU(),
            bnn.VIConv1d(1, 2, 3, device=device),
        )

    if how == "context":
        with torch.device("meta"):
            net = build()
    else:
        net = build()
    assert {p.device.type for p in net.parameters()} == {"meta"}
    reference = bnn.VISequential(
        bnn.VILinear(3, 8), nn.ReLU(), bnn.VIConv1d(1, 2, 3)
    )  # e.g. a checkpoint's weights
    net = net.to_empty(device="cpu")
    net.load_state_dict(reference.state_dict())
    x = torch.randn(4, 1, 3)
    torch.manual_seed(0)
    out = net(x, samples=2)
    torch.manual_seed(0)
    torch.testing.assert_close(out, reference(x, samples=2))


def test_torch_func_vmap_over_a_network_call() -> None:
    """The input checks cannot read values under vmap: they count as passed
    (vmap raised 'data-dependent control flow' from the finiteness check)."""
    net = bnn.VISequential(
        bnn.VILinear(3, 8, estimator="reparam"),
        nn.Tanh(),
        bnn.VILinear(8, 2, estimator="reparam"),
    )
    x = torch.randn(5, 3)

    def one(example: torch.Tensor) -> torch.Tensor:
        return net(example.unsqueeze(0), samples=3).squeeze(1)

    torch.manual_seed(1)
    mapped = torch.func.vmap(one, randomness="same")(x)
    torch.manual_seed(1)
    torch.testing.assert_close(mapped.transpose(0, 1), net(x, samples=3))
    with pytest.raises(ValueError, match="NaN"):
        net(torch.full((2, 3), float("nan")))  # outside vmap: still checked


def test_a_layer_declares_where_the_output_units_of_a_variable_lie() -> None:
    """Per-unit priors follow the declared layout (they assumed dim 0)."""

    class ColumnUnits(bnn.VIModule):
        def __init__(self, units: object) -> None:
            super().__init__()
            prior = bnn.LearnedNormalPrior(per="unit")
            self.declare_random_variable("weight", (3, 5), prior, units=units)  # type: ignore[arg-type]

    layer = ColumnUnits(UnitLayout(dim=1))
    assert layer.unit_layout("weight") == UnitLayout(dim=1)
    assert layer.prior["weight"].log_scale.shape == (1, 5)
    assert ColumnUnits(None).prior["weight"].log_scale.shape == (3, 1)
    with pytest.raises(TypeError, match=r"units must be a pyrolite_bnn\.variables"):
        ColumnUnits(1)
    with pytest.raises(ValueError, match="divisible by groups"):
        ColumnUnits(UnitLayout(dim=1, groups=2))


class _Declares(bnn.VIModule):
    """Declares ``name`` of ``shape`` after setting ``before`` attributes."""

    def __init__(self, name: object, shape: object = (3,), **before: object) -> None:
        super().__init__()
        for attribute, value in before.items():
            setattr(self, attribute, value)
        self.declare_random_variable(name, shape)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_declaring_a_name_twice_is_refused() -> None:
    """The second declaration silently replaced the first: its NormalPrior(0,
    0.1) became NormalPrior(0, 1)."""

    class Twice(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.declare_random_variable("w", (3,), bnn.NormalPrior(0.0, 0.1))
            self.declare_random_variable("w", (3,))

    with pytest.raises(ValueError, match=r"'w' is already declared on Twice"):
        Twice()


@pytest.mark.parametrize(
    ("name", "before", "what"),
    [
        ("prior", {}, "a table of the library's"),
        ("posterior", {}, "a table of the library's"),
        ("guide", {}, "a method or property"),
        ("forward", {}, "a method or property"),
        ("samples", {}, "an attribute"),
        ("lin", {"lin": nn.Linear(2, 2)}, "a submodule"),
        ("p", {"p": nn.Parameter(torch.zeros(3))}, "a parameter"),
    ],
)
def test_a_name_the_module_already_uses_is_refused(
    name: str, before: dict[str, object], what: str
) -> None:
    """ "posterior" raised RecursionError, "samples" and "guide" messages about
    a PyroSample given to them; "prior" was accepted and broke the forward."""
    with pytest.raises(
        ValueError, match=rf"name '{name}' is taken on _Declares: it is {what}"
    ):
        _Declares(name, **before)


def test_a_plain_class_attribute_may_become_a_random_variable() -> None:
    """A class-level default (``bias = None``) is no member the variable hides."""

    class WithDefault(_Declares):
        bias = None

    layer = WithDefault("bias")
    assert layer.posterior["bias"].shape == (3,)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [(3, (3,)), (np.int64(2), (2,)), ([2, 3], (2, 3)), (torch.Size([4]), (4,))],
)
def test_one_integer_is_a_one_dimensional_shape(
    shape: object, expected: tuple[int, ...]
) -> None:
    """shape=3 raised "'int' object is not iterable"; torch's size arguments
    take one integer as (3,)."""
    assert _Declares("w", shape).posterior["w"].shape == expected


@pytest.mark.parametrize(
    ("shape", "error", "message"),
    [
        (
            (-1,),
            ValueError,
            r"each size of shape=\(-1,\) must be an integer >= 0, got -1",
        ),
        ((3.0,), TypeError, r"each size of shape=\(3\.0,\) must be an integer"),
        ("3", TypeError, r"shape must be a sequence of integers \(or one integer\)"),
        (3.0, TypeError, r"shape must be a sequence of integers"),
    ],
)
def test_a_shape_of_no_sizes_is_refused(
    shape: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        _Declares("w", shape)


def test_a_name_of_another_type_is_a_type_error() -> None:
    """3 raised "'int' object has no attribute 'isidentifier'"."""
    with pytest.raises(TypeError, match="random variable name must be a str, got 3"):
        _Declares(3)


def test_replaced_prior_is_set_up_like_one_given_at_construction() -> None:
    """``layer.prior["weight"] = p`` put ``p`` in the table as it was: the
    caller's object (shared), in its own dtype (float32 on a float64 layer),
    its shape checked only when a loss ran, its support not at all, a per-unit
    prior never shaped. Now it gets the set-up of ``prior=``."""
    layer = bnn.VILinear(3, 4, dtype=torch.float64)
    given = bnn.NormalPrior(torch.zeros(4, 3), torch.ones(4, 3))  # float32
    layer.prior["weight"] = given
    held = layer.prior["weight"]
    assert held is not given
    assert held.loc.dtype == torch.float64
    assert (
        held.loc.untyped_storage().data_ptr() != given.loc.untyped_storage().data_ptr()
    )
    with pytest.raises(ValueError, match=r"prior of 'weight': .* shape \(4, 3\)"):
        layer.prior["weight"] = bnn.NormalPrior(0.0, torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"prior of 'bias': .* shape \(4,\)"):
        layer.prior.bias = bnn.NormalPrior(0.0, torch.ones(4, 3))
    assert layer.prior["weight"] is held  # a refused prior changes nothing
    with pytest.raises(ValueError, match="not the whole real line"):
        layer.prior["weight"] = torch.distributions.Gamma(2.0, 1.0)
    layer.prior.bias = bnn.LearnedNormalPrior(per="unit")  # attribute: the same
    assert layer.prior["bias"].log_scale.shape == (4,)
    layer.prior["weight"] = bnn.LearnedNormalPrior(per="unit")
    assert layer.prior["weight"].log_scale.shape == (4, 1)
    layer.prior["weight"] = None  # as prior=None: the default
    assert repr(layer.prior["weight"]) == "NormalPrior(loc=0, scale=1)"
    with pytest.raises(KeyError, match="no random variable"):
        layer.prior["mean"] = bnn.NormalPrior()
    point = bnn.VILinear(3, 4, variational=bnn.PointMass())
    point.prior["weight"] = torch.distributions.Gamma(2.0, 1.0)  # MAP: any support
    x, y = (
        torch.randn(5, 3, dtype=torch.float64),
        torch.randn(5, 4, dtype=torch.float64),
    )
    loss = bnn.KullbackLeiblerLoss(bnn.Normal(), 5)(layer(x), y)
    assert loss.dtype == torch.float64


def test_pruning_a_random_variable_names_the_posterior_mean() -> None:
    """prune.l1_unstructured(layer, "weight") raised a bare KeyError: 'weight'
    and left the layer holding an extra 'weight_orig' parameter."""
    from torch.nn.utils import prune

    layer = bnn.VILinear(4, 3)
    before = list(layer.state_dict())
    with pytest.raises(TypeError, match=r"posterior\['weight'\].*loc_unconstrained"):
        prune.l1_unstructured(layer, "weight", amount=0.5)
    assert list(layer.state_dict()) == before
    # The route it names: the mean is pruned, the spread is not.
    posterior = layer.posterior["weight"]
    prune.l1_unstructured(posterior, "loc_unconstrained", amount=0.5)
    pruned = posterior.loc_unconstrained_mask == 0
    assert int(pruned.sum()) == 6
    assert bool((layer.weight[pruned] == 0).all())  # outside a call: the mean
    x = torch.randn(5, 4)
    mean = bnn.predict(layer, x, bnn.Normal(scale=1.0), mode="mean").mean
    torch.testing.assert_close(mean, nn.functional.linear(x, layer.weight, layer.bias))


def test_the_posterior_table_reads_like_the_prior_table() -> None:
    """``layer.posterior`` had ``keys()``, ``values()`` and ``[...]`` only:
    ``items()`` raised Pyro's AttributeError and ``len()`` a TypeError, where
    ``layer.prior`` (a ModuleDict) has both."""
    layer = bnn.VIEmbedding(6, 3, padding_idx=0, dtype=torch.float64)
    posterior, prior = layer.posterior, layer.prior
    assert len(posterior) == len(prior) == 1
    assert list(posterior) == list(posterior.keys()) == list(prior.keys())
    assert [name for name, _ in posterior.items()] == ["weight"]
    assert dict(posterior.items()) == {"weight": posterior["weight"]}
    assert list(posterior.values()) == [posterior["weight"]]
    assert "weight" in posterior
    assert "bias" not in posterior
    with pytest.raises(KeyError, match=r"no random variable 'bias'.*\['weight'\]"):
        posterior["bias"]
    two = bnn.VILinear(2, 2).posterior
    assert len(two) == 2
    assert list(two.keys()) == ["weight", "bias"]
