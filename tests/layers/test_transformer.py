"""The VITransformer family: torch equality per particle, options, loss, training."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _sequence_helpers import (
    accuracy,
    assert_loss_equals_pyro_elbo,
    fixed_weights,
    load_particle,
    run_fixed,
    sign_of_sum,
    signature_matches,
    train_classifier,
)
from torch import nn

import pyrolite_bnn as bnn

TOL = {"rtol": 1e-5, "atol": 1e-5}
B, L, M, E, HEADS, FF = 4, 6, 5, 8, 2, 16
CAUSAL = torch.ones(L, L, dtype=torch.bool).triu(1)
PADDING = torch.zeros(B, L, dtype=torch.bool)
PADDING[0, -2:] = True
MEMORY_PADDING = torch.zeros(B, M, dtype=torch.bool)
MEMORY_PADDING[1, -1] = True

LAYER_OPTIONS: list[dict[str, Any]] = [
    {},
    {"norm_first": True},
    {"activation": "gelu", "bias": False},
    {"activation": nn.Tanh(), "layer_norm_eps": 1e-3},
]


def _check_equal(
    layer: bnn.VIModule,
    reference: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    call: dict[str, Any],
    samples: int = 3,
    train: bool = True,
) -> None:
    # Training mode with dropout 0 (the layers' own arguments) runs torch's
    # reference path; eval mode may take torch's fused fast path.
    layer.train(train)
    reference.train(train)
    weights = fixed_weights(layer, samples)
    out = run_fixed(layer, weights, samples, *inputs, **call)
    for s in range(samples):
        load_particle(reference, layer, weights, s)
        with torch.no_grad():
            expected = reference(*inputs, **call)
        assert out.shape == (samples, *expected.shape)
        torch.testing.assert_close(out[s], expected, **TOL)


@pytest.mark.parametrize(
    "call",
    [
        {},
        {"src_mask": CAUSAL, "is_causal": True},
        {"src_mask": CAUSAL, "src_key_padding_mask": PADDING},
    ],
    ids=["plain", "causal", "masks"],
)
@pytest.mark.parametrize("options", LAYER_OPTIONS, ids=str)
def test_encoder_layer_equals_torch(
    options: dict[str, Any], call: dict[str, Any]
) -> None:
    _check_equal(
        bnn.VITransformerEncoderLayer(E, HEADS, FF, 0.0, batch_first=True, **options),
        nn.TransformerEncoderLayer(E, HEADS, FF, 0.0, batch_first=True, **options),
        (torch.randn(B, L, E),),
        call,
    )


@pytest.mark.parametrize("options", LAYER_OPTIONS, ids=str)
def test_decoder_layer_equals_torch(options: dict[str, Any]) -> None:
    call = {
        "tgt_mask": CAUSAL,
        "tgt_is_causal": True,
        "tgt_key_padding_mask": PADDING,
        "memory_key_padding_mask": MEMORY_PADDING,
    }
    _check_equal(
        bnn.VITransformerDecoderLayer(E, HEADS, FF, 0.0, batch_first=True, **options),
        nn.TransformerDecoderLayer(E, HEADS, FF, 0.0, batch_first=True, **options),
        (torch.randn(B, L, E), torch.randn(B, M, E)),
        call,
    )


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_encoder_and_decoder_stacks_equal_torch(train: bool) -> None:
    x, memory = torch.randn(B, L, E), torch.randn(B, M, E)
    layer = bnn.VITransformerEncoderLayer(E, HEADS, FF, 0.0, batch_first=True)
    reference = nn.TransformerEncoderLayer(E, HEADS, FF, 0.0, batch_first=True)
    _check_equal(
        bnn.VITransformerEncoder(layer, 2, nn.LayerNorm(E)),
        nn.TransformerEncoder(
            reference, 2, nn.LayerNorm(E), enable_nested_tensor=False
        ),
        (x,),
        {"mask": CAUSAL},
        train=train,
    )
    decoder_layer = bnn.VITransformerDecoderLayer(E, HEADS, FF, 0.0, batch_first=True)
    torch_decoder = nn.TransformerDecoderLayer(E, HEADS, FF, 0.0, batch_first=True)
    _check_equal(
        bnn.VITransformerDecoder(decoder_layer, 2, nn.LayerNorm(E)),
        nn.TransformerDecoder(torch_decoder, 2, nn.LayerNorm(E)),
        (x, memory),
        {"tgt_mask": CAUSAL, "memory_key_padding_mask": MEMORY_PADDING},
        train=train,
    )


@pytest.mark.parametrize("samples", [1, 3])
def test_transformer_equals_torch(samples: int) -> None:
    src, tgt = torch.randn(B, M, E), torch.randn(B, L, E)
    call = {
        "tgt_mask": CAUSAL,
        "src_key_padding_mask": MEMORY_PADDING,
        "memory_key_padding_mask": MEMORY_PADDING,
    }
    _check_equal(
        bnn.VITransformer(E, HEADS, 2, 1, FF, 0.0, batch_first=True),
        nn.Transformer(E, HEADS, 2, 1, FF, 0.0, batch_first=True),
        (src, tgt),
        call,
        samples=samples,
    )


def test_site_names_are_torch_parameter_names() -> None:
    model = bnn.VITransformer(E, HEADS, 2, 1, FF, batch_first=True)
    reference = nn.Transformer(E, HEADS, 2, 1, FF, batch_first=True)
    sites = {v.site: tuple(v.shape) for v in model.random_variables()}
    torch_params = {n: tuple(p.shape) for n, p in reference.named_parameters()}
    norms = {
        n
        for n in torch_params
        if ".norm" in n or n.startswith(("encoder.norm", "decoder.norm"))
    }
    assert sites == {n: s for n, s in torch_params.items() if n not in norms}
    # Layer norms stay deterministic torch parameters.
    assert {n for n, _ in model.named_parameters() if "norm" in n} == norms


def test_transformer_initialises_matrices_xavier_uniform() -> None:
    torch.manual_seed(0)
    model = bnn.VITransformer(16, 2, 1, 1, 64, batch_first=True)
    for v in model.random_variables():
        loc = v.posterior.loc.detach()
        if loc.dim() > 1:
            fan_out, fan_in = loc.shape
            bound = (6 / (fan_in + fan_out)) ** 0.5  # xavier_uniform_ bound
            assert float(loc.abs().max()) <= bound, v.site
            assert float(loc.abs().max()) > bound / 2, v.site


@pytest.mark.parametrize(
    ("vi_cls", "torch_cls"),
    [
        (bnn.VITransformerEncoderLayer, nn.TransformerEncoderLayer),
        (bnn.VITransformerDecoderLayer, nn.TransformerDecoderLayer),
        (bnn.VITransformer, nn.Transformer),
    ],
)
def test_signatures_match_torch(vi_cls: type, torch_cls: type) -> None:
    signature_matches(vi_cls, torch_cls.__init__)


def test_stack_signatures_match_torch() -> None:
    import inspect

    for vi_cls, torch_cls in [
        (bnn.VITransformerEncoder, nn.TransformerEncoder),
        (bnn.VITransformerDecoder, nn.TransformerDecoder),
    ]:
        mine = inspect.signature(vi_cls.__init__).parameters
        theirs = inspect.signature(torch_cls.__init__).parameters
        assert list(mine) == list(theirs)
        for name in theirs:
            assert mine[name].default == theirs[name].default


def test_options_and_errors() -> None:
    layer = bnn.VITransformerEncoderLayer(
        E,
        HEADS,
        FF,
        batch_first=True,
        prior={"self_attn.in_proj_weight": bnn.LaplacePrior(0.0, 0.5)},
        variational={"linear2.bias": bnn.PointMass()},
    )
    assert isinstance(layer.self_attn.prior["in_proj_weight"], bnn.LaplacePrior)
    assert isinstance(layer.linear1.prior["weight"], bnn.NormalPrior)
    assert type(layer.linear2.posterior["bias"]).__name__ == "PointMassPosterior"
    with pytest.raises(ValueError, match=r"unknown variable\(s\) \['linear3.weight'\]"):
        bnn.VITransformerEncoderLayer(
            E, HEADS, batch_first=True, prior={"linear3.weight": bnn.NormalPrior()}
        )
    with pytest.raises(ValueError, match="custom_encoder"):
        bnn.VITransformer(E, HEADS, batch_first=True, prior={"x": bnn.NormalPrior()})
    assert not bnn.VITransformerEncoderLayer(E, HEADS).self_attn.batch_first
    with pytest.raises(ValueError, match="estimator='auto' or 'reparam'"):
        bnn.VITransformerDecoderLayer(E, HEADS, batch_first=True, estimator="flipout")
    with pytest.raises(RuntimeError, match="activation should be relu/gelu"):
        bnn.VITransformerEncoderLayer(E, HEADS, batch_first=True, activation="tanh")
    model = bnn.VITransformer(E, HEADS, 1, 1, FF, batch_first=True)
    with pytest.raises(RuntimeError, match="batch number of src and tgt"):
        model(torch.randn(2, 3, E), torch.randn(3, 3, E))
    # Every linear layer inside draws its weights ("reparam").
    assert all(
        m.estimator == "reparam" for m in model.modules() if isinstance(m, bnn.VILinear)
    )


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_a_final_norm_that_is_no_module_is_refused(stack: str) -> None:
    """norm="ln" was accepted; the first forward said "'str' object is not
    callable"."""
    if stack == "encoder":
        layer: nn.Module = bnn.VITransformerEncoderLayer(E, HEADS, FF, batch_first=True)
        build = bnn.VITransformerEncoder
    else:
        layer = bnn.VITransformerDecoderLayer(E, HEADS, FF, batch_first=True)
        build = bnn.VITransformerDecoder
    with pytest.raises(TypeError, match=r"norm must be a module .* got 'ln'"):
        build(layer, 1, norm="ln")  # type: ignore[arg-type]
    assert isinstance(build(layer, 1, norm=nn.LayerNorm(E)).norm, nn.LayerNorm)


def test_float_causal_mask_equals_boolean_mask() -> None:
    layer = bnn.VITransformerEncoderLayer(E, HEADS, FF, 0.0, batch_first=True)
    x = torch.randn(B, L, E)
    weights = fixed_weights(layer, 2)
    as_bool = run_fixed(layer, weights, 2, x, src_mask=CAUSAL)
    float_mask = bnn.VITransformer.generate_square_subsequent_mask(L)
    with bnn.validation(False):  # -inf inputs are refused by validation
        as_float = run_fixed(layer, weights, 2, x, src_mask=float_mask)
    torch.testing.assert_close(as_float, as_bool, rtol=0, atol=0)


class _Classifier(bnn.VIModule):
    def __init__(self, width: int = 16, layers: int = 1) -> None:
        super().__init__()
        self.embed = bnn.VILinear(1, width, estimator="reparam")
        layer = bnn.VITransformerEncoderLayer(
            width, 2, 2 * width, dropout=0.0, batch_first=True
        )
        self.encoder = bnn.VITransformerEncoder(layer, layers)
        self.head = bnn.VILinear(width, 2, estimator="reparam")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))  # type: ignore[no-any-return]


def test_loss_equals_pyro_trace_elbo() -> None:
    x, y = torch.randn(6, 5, 1), torch.randint(0, 2, (6,))
    assert_loss_equals_pyro_elbo(_Classifier(4, 2), x, y, dataset_size=40)


def test_transformer_learns_sequence_task() -> None:
    # Is the sum of a noisy sequence positive? Fixed seed; held-out accuracy.
    torch.manual_seed(0)
    x_train, y_train = sign_of_sum(1024)
    x_test, y_test = sign_of_sum(512)
    net = _Classifier()
    train_classifier(net, x_train, y_train, steps=150)
    assert accuracy(net, x_test, y_test) >= 0.9


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_modules_refuse_integer_inputs(batch_first: bool) -> None:
    """torch's dtype errors from inside the first projection became errors
    naming the module and the argument (``src``, ``tgt``, ``memory``)."""
    options: dict[str, Any] = {"dropout": 0.0, "batch_first": batch_first}
    encoder_layer = bnn.VITransformerEncoderLayer(4, 2, 8, **options)
    decoder_layer = bnn.VITransformerDecoderLayer(4, 2, 8, **options)
    x = torch.randn(3, 5, 4)
    ids = x.long()
    cases: list[tuple[Any, tuple[torch.Tensor, ...], str]] = [
        (encoder_layer, (ids,), "VITransformerEncoderLayer .* src"),
        (
            bnn.VITransformerEncoder(encoder_layer, 2),
            (ids,),
            "VITransformerEncoder .* src",
        ),
        (decoder_layer, (x, ids), "VITransformerDecoderLayer .* memory"),
        (
            bnn.VITransformerDecoder(decoder_layer, 1),
            (ids, x),
            "VITransformerDecoder .* tgt",
        ),
        (bnn.VITransformer(4, 2, 1, 1, 8, **options), (ids, x), "VITransformer .* src"),
        (bnn.VITransformer(4, 2, 1, 1, 8, **options), (x, ids), "VITransformer .* tgt"),
    ]
    for module, inputs, message in cases:
        with pytest.raises(TypeError, match=message + ", got dtype torch.int64"):
            module(*inputs)
    with pytest.raises(TypeError, match=r"expected a torch.Tensor src, got list"):
        encoder_layer(x.tolist())


def test_plain_encoder_layer_holding_bayesian_layers_names_torchs_fast_path() -> None:
    """A plain ``nn.TransformerEncoderLayer`` with ``VILinear`` put in as its
    feed-forward layers runs with gradients; in evaluation mode without them
    torch's fused path reads the layers' weights itself, the particles'
    draws, and failed with a bare "2d weights expected". The error names the
    cause and the ways that run; with torch's fast path off the call gives
    the values of the call with gradients, from the same seed."""
    torch.manual_seed(0)
    tel = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True)
    tel.linear1, tel.linear2 = bnn.VILinear(4, 8), bnn.VILinear(8, 4)
    net = bnn.VISequential(bnn.VILinear(3, 4), tel).eval()
    x = torch.randn(2, 5, 3)
    for samples in (1, 3):
        with (
            torch.no_grad(),
            pytest.raises(RuntimeError, match=r"(?s)fast path.*set_fastpath_enabled"),
        ):
            net(x, samples=samples)
    torch.manual_seed(1)
    expected = net(x, samples=3)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        torch.manual_seed(1)
        with torch.no_grad():
            got = net(x, samples=3)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
