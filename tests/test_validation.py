"""Tests for :mod:`pyrolite_bnn._validation` (boundary checks and the switch)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Distribution

import pyrolite_bnn as bnn
from pyrolite_bnn import vi
from pyrolite_bnn._validation import (
    check_finite,
    check_finite_inputs,
    check_heat,
    check_input_dtype,
    check_positive_values,
    checks_on,
    floating_dtype,
)


def test_floating_dtype_of_a_network() -> None:
    assert floating_dtype(bnn.VILinear(2, 3)) == torch.float32
    assert floating_dtype(bnn.VILinear(2, 3, dtype=torch.float64)) == torch.float64
    assert floating_dtype(nn.ReLU()) is None


def test_floating_dtype_follows_the_network_after_the_first_call() -> None:
    """floating_dtype remembers where it found the dtype: it must follow
    ``.to(dtype)``, assigned parameters, and tensors removed since."""
    net = nn.Sequential(bnn.VILinear(2, 3), nn.ReLU(), bnn.VILinear(3, 1))
    assert floating_dtype(net) == torch.float32
    net.double()
    assert floating_dtype(net) == torch.float64
    state = {k: v.half() for k, v in net.state_dict().items()}
    net.load_state_dict(state, assign=True)  # new tensor objects
    assert floating_dtype(net) == torch.float16
    removed = net[0]
    del net[0]  # the remembered tensor's module leaves the network (kept alive)
    net[1] = bnn.VILinear(3, 1, dtype=torch.bfloat16)
    assert floating_dtype(net) == torch.bfloat16
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"parameters are torch\.bfloat16"):
        net(x)
    net.float()
    assert net(x).shape == (10, 4, 1)
    assert removed.posterior["weight"].loc.dtype == torch.float16


def test_float64_input_into_float32_network_names_both_dtypes() -> None:
    net = bnn.VILinear(4, 3)
    x = torch.randn(5, 4, dtype=torch.float64)
    with pytest.raises(
        ValueError,
        match=r"input 0 of VILinear has dtype torch.float64, but the network's "
        r"parameters are torch.float32; convert the input \(x.to\(torch.float32\)\) "
        r"or the network \(model.to\(torch.float64\)\)",
    ):
        check_input_dtype((x,), {}, floating_dtype(net), "VILinear")
    with pytest.raises(ValueError, match=r"input mask of Net has dtype torch\.float16"):
        check_input_dtype((x.float(),), {"mask": x.half()}, torch.float32, "Net")


def test_matching_integer_and_unchecked_inputs_pass() -> None:
    x32 = torch.randn(2, 3)
    check_input_dtype((x32, torch.arange(3), 1.5), {"k": "v"}, torch.float32, "N")
    check_input_dtype((x32.double(),), {}, None, "N")  # no floating parameters
    with bnn.validation(False):
        check_input_dtype((x32.double(),), {}, torch.float32, "N")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_input_dtype((x32.bfloat16(),), {}, torch.float32, "N")


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan"), "hot", "1", None])
def test_check_heat_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match=r"heat must be >= 0 and finite, got"):
        check_heat(bad, "heat")  # type: ignore[arg-type]


def test_check_heat_returns_a_float() -> None:
    value = check_heat(torch.tensor(0.25), "heat")  # type: ignore[arg-type]
    assert value == 0.25
    assert type(value) is float


@pytest.mark.parametrize(
    "layer",
    [bnn.VILinear(3, 2), bnn.VIConv1d(3, 2, 1), bnn.VIConvTranspose1d(3, 2, 1)],
    ids=["linear", "conv", "conv_transpose"],
)
@pytest.mark.parametrize("outermost", [True, False])
def test_weight_layers_refuse_non_tensor_and_integer_inputs(
    layer: nn.Module, outermost: bool
) -> None:
    """A numpy array, a list or integer indices get an error naming the layer,
    not torch's ``AttributeError``/``mat1 and mat2 must have the same dtype``."""
    net = layer if outermost else nn.Sequential(nn.Identity(), layer)
    shape = (4, 3) if isinstance(layer, bnn.VILinear) else (4, 3, 5)
    name = type(layer).__name__
    with pytest.raises(TypeError, match=rf"{name} expected a torch.Tensor.*as_tensor"):
        net(torch.zeros(shape).numpy())
    with pytest.raises(TypeError, match=rf"{name} expected a torch.Tensor.*as_tensor"):
        net(torch.zeros(shape).tolist())
    with pytest.raises(TypeError, match=rf"{name} expected a floating-point.*int64"):
        net(torch.zeros(shape, dtype=torch.long))


# torch's notes when a sparse compressed or a strided nested tensor is built.
TENSOR_KIND_NOTES = pytest.mark.filterwarnings(
    "ignore:Sparse .* tensor support is in beta",
    "ignore:The PyTorch API of nested tensors",
)


def _nested(layout: torch.layout, width: int) -> torch.Tensor:
    """Two sequences of lengths 2 and 3 with ``width`` features."""
    parts = [torch.randn(2, width), torch.randn(3, width)]
    return torch.nested.nested_tensor(parts, layout=layout)


@TENSOR_KIND_NOTES
@pytest.mark.parametrize(
    ("layer", "make", "described", "remedy"),
    [
        (
            bnn.VILinear(4, 3),
            lambda: torch.randn(5, 4).to_sparse_bsc((1, 1)),
            "a tensor of layout torch.sparse_bsc",
            r"x.to_sparse_csr\(\) or x.to_sparse_coo\(\) or x.to_dense\(\)",
        ),
        (
            bnn.VILinear(4, 3),
            lambda: torch.randn(4, 4).to_sparse_bsr((2, 2)),
            "a tensor of layout torch.sparse_bsr",
            r"x.to_sparse_csr\(\) or x.to_sparse_coo\(\) or x.to_dense\(\)",
        ),
        (
            bnn.VILinear(4, 3),
            lambda: torch.randn(2, 5, 4).to_sparse(),
            "a tensor of layout torch.sparse_coo of 3 dimensions",
            r"x.to_dense\(\)$",
        ),
        (
            bnn.VILinear(4, 3),
            lambda: torch.randn(5, 4).to_sparse(1),
            r"a hybrid sparse tensor \(layout torch.sparse_coo, 1 dense",
            r"x.to_dense\(\)$",
        ),
        (
            bnn.VILinear(4, 3),
            lambda: _nested(torch.strided, 4),
            r"a nested tensor \(layout torch.strided\)",
            r"torch.nested.to_padded_tensor\(x, 0.0\)",
        ),
        (
            bnn.VILinear(4, 3),
            lambda: _nested(torch.jagged, 4),
            r"a nested tensor \(layout torch.jagged\)",
            r"torch.nested.to_padded_tensor\(x, 0.0\)",
        ),
        (
            bnn.VIConv1d(3, 2, 1),
            lambda: torch.randn(4, 3, 5).to_sparse(),
            "a tensor of layout torch.sparse_coo",
            r"x.to_dense\(\)$",
        ),
        (
            bnn.VIConv1d(3, 2, 1),
            lambda: _nested(torch.jagged, 5).transpose(1, 2),
            r"a nested tensor \(layout torch.jagged\)",
            r"torch.nested.to_padded_tensor\(x, 0.0\)",
        ),
    ],
    ids=[
        "linear-bsc",
        "linear-bsr",
        "linear-coo-3d",
        "linear-hybrid-coo",
        "linear-nested",
        "linear-jagged",
        "conv-coo",
        "conv-jagged",
    ],
)
def test_weight_layers_refuse_layouts_they_cannot_run_before_drawing(
    layer: nn.Module,
    make: Callable[[], torch.Tensor],
    described: str,
    remedy: str,
) -> None:
    """Block-sparse, 3-D sparse and nested inputs crashed inside torch
    (``NestedTensorImpl doesn't support sizes``, ``expand(): cannot expand
    shape (2, 1, j1, 3)``, ``addmm ... SparseBsc``; BSR in the local
    estimator, or in the backward pass to the weight); the layer names the
    layout and the conversion, before any weight is drawn (the random state
    is untouched)."""
    x = make()
    name = type(layer).__name__
    state = torch.get_rng_state()
    with pytest.raises(TypeError, match=rf"^{name} takes a dense \(strided\) input"):
        layer(x)
    with pytest.raises(TypeError, match=rf"got {described}.*convert it with {remedy}"):
        layer(x)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    "layer",
    [bnn.VILinear(3, 2), bnn.VIConv1d(3, 2, 1), bnn.VIConvTranspose1d(3, 2, 1)],
    ids=["linear", "conv", "conv_transpose"],
)
@pytest.mark.parametrize("outermost", [True, False])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_weight_layers_refuse_complex_inputs(
    layer: nn.Module, outermost: bool, dtype: torch.dtype
) -> None:
    """The weights are real: a complex input failed inside torch (``mat1 and
    mat2 must have the same dtype``); the layer names it and the remedies."""
    net = layer if outermost else nn.Sequential(nn.Identity(), layer)
    shape = (4, 3) if isinstance(layer, bnn.VILinear) else (4, 3, 5)
    x = torch.randn(shape, dtype=dtype)
    name = type(layer).__name__
    with pytest.raises(
        TypeError,
        match=rf"^{name} expected a real floating-point input, got dtype {dtype}: "
        r".*torch.view_as_real\(x\)",
    ):
        net(x)


@TENSOR_KIND_NOTES
@pytest.mark.parametrize(
    "convert",
    [
        lambda x: x.to_sparse(),
        lambda x: x.to_sparse_csr(),
        lambda x: x.to_sparse_csc(),
        lambda x: x.to_sparse_bsr((1, 1)),
        lambda x: torch.nested.nested_tensor(list(x), layout=torch.jagged),
        lambda x: torch.nested.nested_tensor(list(x)),
    ],
    ids=["coo", "csr", "csc", "bsr", "jagged", "nested"],
)
def test_finiteness_checks_read_sparse_and_nested_tensors(
    convert: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    """The NaN/Inf checks compared the tensor with a number, which torch does
    not do for sparse tensors (``Could not run 'aten::eq.Scalar' ... 'SparseCPU'
    backend``: a network's sparse adjacency input crashed with validation on),
    and read the sum of a strided nested tensor, which passes NaN. They read
    the stored values now."""
    x = torch.randn(3, 4)
    x[x.abs() < 0.5] = 0.0
    finite = convert(x)
    check_finite(finite, "x")
    check_finite_inputs((torch.zeros(3), finite), {}, "Net")
    x[1, 2] = math.nan
    x[2, 3] = math.inf
    bad = convert(x)
    with pytest.raises(ValueError, match=r"^x contains 2 NaN/Inf value\(s\)"):
        check_finite(bad, "x")
    with pytest.raises(ValueError, match=r"input 1 of Net contains 2 NaN/\+Inf"):
        check_finite_inputs((torch.zeros(3), bad), {}, "Net")


class _Checked(nn.Module):
    """Checks its inputs (the first finite, the second a positive scale)."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        check_finite_inputs((x, scale), {}, "Checked")
        check_positive_values(scale, "scale")
        return x * scale


@pytest.mark.filterwarnings(  # torch's note on its tracer, not a TracerWarning
    "ignore:`torch.jit.trace[a-z_]*` is deprecated:DeprecationWarning"
)
def test_checks_read_no_values_while_torch_records_a_graph() -> None:
    """Under torch.jit.trace the checks' reads (``float(x.sum())``,
    ``bool(valid.all())``) were constants of the trace, with TracerWarnings
    (errors here); torch.export kept their reductions in the program as
    data-dependent reads. Neither reads a value now; eager calls still check."""
    x, scale = torch.randn(4, 3), torch.rand(4, 3) + 0.5
    checked = _Checked()
    traced = torch.jit.trace(checked, (x, scale))
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        checked, (x, scale), dynamic_shapes=({0: batch}, {0: batch})
    )
    called = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert not called & {torch.ops.aten.sum.default, torch.ops.aten.all.default}
    want = x[:2] * scale[:2]
    torch.testing.assert_close(traced(x[:2], scale[:2]), want, rtol=0, atol=0)
    torch.testing.assert_close(program.module()(x[:2], scale[:2]), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="input 0 of Checked contains 1 NaN"):
        checked(x.index_fill(0, torch.tensor([0]), math.nan)[:, :1], scale[:, :1])
    with pytest.raises(ValueError, match="scale must be > 0"):
        checked(x, -scale)


def test_a_sparse_adjacency_input_passes_the_checks() -> None:
    """A network multiplying its features by a sparse adjacency before its
    Bayesian layers crashed in the finiteness check of its second input."""

    class Graph(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = bnn.VILinear(4, 2)

        def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
            return self.layer(torch.sparse.mm(adjacency, x))

    net = Graph()
    x, adjacency = torch.randn(5, 4), torch.eye(5) + torch.eye(5).roll(1, 0)
    torch.manual_seed(2)
    expected = net(x, adjacency)
    torch.manual_seed(2)
    got = net(x, adjacency.to_sparse())
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: bnn.VIConv2d(3, 4, 0), "kernel_size must be >= 1"),
        (lambda: bnn.VIConv1d(3, 4, 3, stride=0), "stride must be >= 1"),
        (lambda: bnn.VIConv3d(3, 4, 3, dilation=(1, 0, 1)), "dilation must be >= 1"),
        (lambda: bnn.VIConv2d(3, 4, 3, padding=-1), "padding must be >= 0"),
        (
            lambda: bnn.VIConvTranspose2d(3, 4, 3, stride=1, output_padding=1),
            "output_padding .* must be smaller than the stride",
        ),
    ],
)
def test_convolution_geometry_is_checked_at_construction(
    make: Callable[[], nn.Module], message: str
) -> None:
    """Torch accepts these and fails at the first call (a zero kernel with an
    unrelated reshape error); the Bayesian layers name the argument at once."""
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: bnn.VILinear("4", 3), "in_features must be an integer"),
        (lambda: bnn.VILinear(4.0, 3), "in_features must be an integer"),
        (lambda: bnn.VIConv2d(3, 8, 3.0), "kernel_size must be an integer"),
        (lambda: bnn.VIConv2d(3, 8, 3, groups=1.0), "groups must be an integer"),
        (lambda: bnn.VILSTM(3.0, 4), "input_size must be an integer"),
        (lambda: bnn.VIEmbedding(5.5, 3), "num_embeddings must be an integer"),
        (lambda: bnn.VIMultiheadAttention(8.0, 2), "embed_dim must be an integer"),
        (lambda: bnn.MeanFieldNormal(init_scale="0.1"), "init_scale must be a number"),
        (lambda: bnn.TemperatureScaling("1"), "temperature must be a number"),
        (lambda: bnn.Normal(scale="1"), "scale must be a number"),
        (lambda: bnn.StudentT(df="3"), "df must be a number"),
        (lambda: bnn.NormalPrior(scale="1"), "scale must be a number"),
    ],
)
def test_constructors_refuse_wrong_types_naming_the_argument(
    build: Callable[[], object], message: str
) -> None:
    """They raised comparison or tensor-creation errors naming nothing."""
    with pytest.raises(TypeError, match=message):
        build()


def test_numpy_numbers_are_taken_where_python_ones_are() -> None:
    """``Normal(scale=np.float32(0.5))`` was refused as not a positive float."""
    assert float(bnn.Normal(scale=np.float32(0.5)).noise_scale()) == 0.5
    assert bnn.VILinear(np.int64(4), 3).in_features == 4
    conv = bnn.VIConv2d(3, 8, (3, np.int64(3)))
    assert conv.kernel_size == (3, 3)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: bnn.save_checkpoint("unused.pt", "x"), TypeError, "model must be"),
        (
            lambda: bnn.match_particles(np.zeros((2, 3)), torch.zeros(4, 3)),
            TypeError,
            "shortcut must be a tensor",
        ),
        (
            lambda: bnn.VILSTM(3, 4)(torch.randn(5, 2, 3), torch.zeros(1, 2, 4)),
            TypeError,
            r"tuple \(h0, c0\)",
        ),
        (
            lambda: bnn.VIGRU(3, 4)(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),)),
            TypeError,
            "h0 as one tensor",
        ),
        (
            lambda: vi.AnalyticalKullbackLeiblerLoss("x", None),
            TypeError,
            "takes the network first",
        ),
        (
            lambda: vi.AnalyticalKullbackLeiblerLoss(
                vi.VILinear(2, 2), vi.distributions.MeanFieldNormal(), 10, "kl"
            ),
            TypeError,
            "divergence_type must be",
        ),
    ],
)
def test_wrong_arguments_raise_clear_errors_not_internal_ones(
    call: Callable[[], object], error: type[Exception], message: str
) -> None:
    """Each raised AttributeError/ValueError from inside the library before."""
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    "flag",
    [
        "no",
        "1",
        None,
        2,
        -1,
        2.0,
        0.5,
        float("nan"),
        torch.tensor(2),
        torch.tensor([True, False]),
        np.array([True, True]),
        np.array(0.5),
        [True],
    ],
    ids=repr,
)
def test_enable_validation_refuses_what_is_no_switch(flag: object) -> None:
    """``enable_validation('no')`` switched validation on; ``None``
    switched it off without a word (Pyro's switch refuses ``None``). What
    equals neither ``True`` nor ``False`` (other numbers, several elements)
    is refused too, with the same message, as torch's switch refuses it."""
    with pytest.raises((ValueError, RuntimeError), match=r"^$|ambiguous"):
        Distribution.set_default_validate_args(flag)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="enable_validation's flag must be True or"):
        bnn.enable_validation(flag)  # type: ignore[arg-type]
    assert bnn.is_validation_enabled()
    with pytest.raises(TypeError, match="True or False"), bnn.validation(flag):  # type: ignore[arg-type]
        pass
    assert bnn.is_validation_enabled()


@pytest.mark.parametrize(
    ("flag", "on"),
    [
        (False, False),
        (np.True_, True),
        (0, False),
        (1, True),
        (np.int64(0), False),
        (torch.tensor(False), False),
        (torch.tensor([True]), True),
        (np.array(True), True),
        (np.array(1), True),
        (np.array([0]), False),
        (1.0, True),
        (0.0, False),
        (np.float64(1.0), True),
        (torch.tensor(0), False),
        (torch.tensor(1.0), True),
    ],
    ids=repr,
)
def test_enable_validation_takes_what_torch_and_pyro_take(
    flag: object, on: bool
) -> None:
    """``enable_validation(1)`` and ``enable_validation(torch.tensor(True))``
    were refused since the switch took bools only; torch's and Pyro's
    switches take them (whatever equals True or False), with one meaning.
    0-d NumPy arrays (``np.array(1)``), floats (``1.0``) and tensors of other
    dtypes were still refused though torch and Pyro take them: each is taken
    here as by them (checked against torch's switch below)."""
    Distribution.set_default_validate_args(flag)  # type: ignore[arg-type]
    Distribution.set_default_validate_args(True)
    try:
        bnn.enable_validation(flag)  # type: ignore[arg-type]
        assert bnn.is_validation_enabled() is on
        bnn.enable_validation(True)
        with bnn.validation(flag):  # type: ignore[arg-type]
            assert bnn.is_validation_enabled() is on
        assert bnn.is_validation_enabled()
    finally:
        bnn.enable_validation(True)


def test_numbers_in_other_types_are_still_taken() -> None:
    """The type checks refused what worked before (review of this change)."""
    assert float(bnn.TemperatureScaling(torch.tensor(1.5)).temperature) == 1.5
    prior = bnn.NormalPrior(scale=np.full((4, 1), 0.5))
    assert prior.scale.shape == (4, 1)
    assert bnn.VIConv2d(3, 8, np.array([3, 3])).kernel_size == (3, 3)
    bnn.enable_validation(np.True_)  # type: ignore[arg-type]
    assert bnn.is_validation_enabled()
    net = bnn.VILinear(3, 2)
    pred = bnn.predict(net, torch.randn(5, 3), bnn.Categorical(), 4, memory_budget=2e9)
    assert pred.samples.shape == (4, 5, 2)


_SCALE_HYPERPARAMETERS: dict[str, Callable[[float], object]] = {
    "MeanFieldNormal init_scale": lambda v: bnn.VILinear(
        3, 2, variational=bnn.MeanFieldNormal(init_scale=v)
    ),
    "Normal noise scale": lambda v: bnn.Normal(init_scale=v),
    "StudentT noise scale": lambda v: bnn.StudentT(scale=v),
    "HeteroscedasticNormal min_scale": lambda v: bnn.HeteroscedasticNormal(v),
    "temperature": lambda v: bnn.TemperatureScaling(v),
    "factor": lambda v: bnn.VarianceScaling(v),
}


@pytest.mark.parametrize("name", sorted(_SCALE_HYPERPARAMETERS))
@pytest.mark.parametrize("value", [1e-50, 1e39])
def test_scale_hyperparameters_outside_float32_are_refused(
    name: str, value: float
) -> None:
    """Valid as Python floats, 1e-50 is 0 and 1e39 is inf in float32: a noise
    scale of 1e-50 made every loss NaN, an initial posterior scale an infinite
    KL, a temperature of 1e-50 was kept as 0."""
    with pytest.raises(ValueError, match=f"{name} must lie between .* float32"):
        _SCALE_HYPERPARAMETERS[name](value)


@pytest.mark.parametrize("family", [bnn.Normal, bnn.StudentT])
def test_a_noise_scale_whose_variance_underflows_is_refused(
    family: type[bnn.Normal],
) -> None:
    """A scale of 1e-20 is a float32 number, its square is 0: every loss was
    infinite."""
    for options in ({"scale": 1e-20}, {"init_scale": 1e-25}):
        with pytest.raises(ValueError, match="whose square"):
            family(**options)  # type: ignore[arg-type]
    assert float(family(scale=1e-18).noise_scale()) == pytest.approx(1e-18)


def test_scale_hyperparameters_follow_the_dtype_they_are_used_in() -> None:
    layer = bnn.VILinear(
        3, 2, variational=bnn.MeanFieldNormal(init_scale=1e-50), dtype=torch.float64
    )
    assert float(layer.posterior["weight"].scale().detach().min()) == pytest.approx(
        1e-50
    )
    with pytest.raises(ValueError, match="init_scale must lie between"):
        bnn.VILinear(3, 2).posterior["weight"].reset_parameters(init_scale=1e-50)
    torch.set_default_dtype(torch.float64)
    try:
        assert float(bnn.TemperatureScaling(1e-50).temperature) == 1e-50
    finally:
        torch.set_default_dtype(torch.float32)
    assert bnn.HeteroscedasticNormal(0.0).min_scale == 0.0


def test_checks_turned_on_for_a_context_leave_other_threads_alone() -> None:
    """bnn.Trace_ELBO's target checks under Pyro's switch are this context's:
    a network called in another thread meanwhile keeps the switch's value,
    and the message names the switch that turns them off."""
    nan = torch.tensor([math.nan])
    seen: list[bool] = []
    with bnn.validation(False), checks_on("pyro.enable_validation(False)"):
        thread = threading.Thread(
            target=lambda: seen.append(bnn.is_validation_enabled())
        )
        thread.start()
        thread.join()
        with pytest.raises(ValueError, match=r"Disable with pyro\.enable_validation"):
            check_finite(nan, "target")
    assert seen == [False]
    with bnn.validation(False), checks_on(None):
        check_finite(nan, "target")  # None: the switch alone
    with pytest.raises(ValueError, match=r"Disable with bnn\.enable_validation"):
        check_finite(nan, "target")
