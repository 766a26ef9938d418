"""VIMultiheadAttention: torch equality per particle, masks, fused path, loss."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _sequence_helpers import (
    assert_loss_equals_pyro_elbo,
    fixed_weights,
    load_particle,
    run_fixed,
    signature_matches,
)
from torch import nn

import pyrolite_bnn as bnn
from pyrolite_bnn.layers.functional_attention import multi_head_attention

TOL = {"rtol": 1e-5, "atol": 1e-5}
B, L, E, HEADS = 4, 6, 8, 2
CAUSAL = torch.ones(L, L, dtype=torch.bool).triu(1)
PADDING = torch.zeros(B, L, dtype=torch.bool)
PADDING[0, -2:] = True
PADDING[2, -1] = True

LAYER_OPTIONS: list[dict[str, Any]] = [
    {},
    {"bias": False},
    {"add_bias_kv": True},
    {"add_zero_attn": True},
    {"add_bias_kv": True, "add_zero_attn": True, "bias": False},
]
CALLS: list[dict[str, Any]] = [
    {},
    {"need_weights": False},
    {"attn_mask": CAUSAL},
    {"attn_mask": CAUSAL, "need_weights": False, "is_causal": True},
    {"key_padding_mask": PADDING},
    {"key_padding_mask": PADDING, "attn_mask": CAUSAL, "need_weights": False},
    {"average_attn_weights": False, "attn_mask": torch.randn(B * HEADS, L, L)},
]


def _check_equal(
    options: dict[str, Any],
    inputs: tuple[torch.Tensor, ...],
    call: dict[str, Any],
    samples: int = 3,
    train: bool = False,
) -> None:
    layer = bnn.VIMultiheadAttention(E, HEADS, batch_first=True, **options)
    reference = nn.MultiheadAttention(E, HEADS, batch_first=True, **options)
    layer.train(train)
    reference.train(train)
    weights = fixed_weights(layer, samples)
    out, attn = run_fixed(layer, weights, samples, *inputs, **call)
    for s in range(samples):
        load_particle(reference, layer, weights, s)
        with torch.no_grad():
            ref_out, ref_attn = reference(*inputs, **call)
        torch.testing.assert_close(out[s], ref_out, **TOL)
        if ref_attn is None:
            assert attn is None
        else:
            torch.testing.assert_close(attn[s], ref_attn, **TOL)


@pytest.mark.parametrize("call", CALLS, ids=lambda c: ",".join(c) or "default")
@pytest.mark.parametrize("options", LAYER_OPTIONS, ids=str)
def test_self_attention_equals_torch(
    options: dict[str, Any], call: dict[str, Any]
) -> None:
    x = torch.randn(B, L, E)
    _check_equal(options, (x, x, x), call)


def test_cross_attention_equals_torch() -> None:
    x, memory = torch.randn(B, L, E), torch.randn(B, 5, E)
    _check_equal({}, (x, memory, memory), {"key_padding_mask": PADDING[:, :5]})
    _check_equal({}, (x, memory, torch.randn(B, 5, E)), {"need_weights": False})


def test_kdim_vdim_equal_torch() -> None:
    x, key, value = torch.randn(B, L, E), torch.randn(B, 5, 3), torch.randn(B, 5, 7)
    options = {"kdim": 3, "vdim": 7}
    _check_equal(options, (x, key, value), {})
    _check_equal(options, (x, key, value), {"need_weights": False})
    sites = [
        v.site
        for v in bnn.VIMultiheadAttention(
            E, 2, 0.0, True, True, False, 3, 7, True
        ).random_variables()
    ]
    reference = nn.MultiheadAttention(E, 2, 0.0, True, True, False, 3, 7, True)
    assert sites == [n for n, _ in reference.named_parameters()]


def test_one_particle_and_dropout_equal_torch() -> None:
    x = torch.randn(B, L, E)
    _check_equal({"add_bias_kv": True}, (x, x, x), {"attn_mask": CAUSAL}, samples=1)
    # dropout=1 zeroes every attention weight in training mode (deterministic).
    _check_equal({"dropout": 1.0}, (x, x, x), {}, train=True)
    _check_equal({"dropout": 1.0}, (x, x, x), {"need_weights": False}, train=True)


def test_float_masks_equal_boolean_masks() -> None:
    layer = bnn.VIMultiheadAttention(E, HEADS, batch_first=True)
    x = torch.randn(B, L, E)
    weights = fixed_weights(layer, 2)
    as_bool = run_fixed(layer, weights, 2, x, x, x, attn_mask=CAUSAL)
    float_mask = torch.zeros(L, L).masked_fill(CAUSAL, float("-inf"))
    # -inf in an input is refused by validation at the outermost call.
    with bnn.validation(False):
        as_float = run_fixed(layer, weights, 2, x, x, x, attn_mask=float_mask)
    torch.testing.assert_close(as_float[0], as_bool[0], rtol=0, atol=0)


def test_fused_kernel_called_once_for_all_particles_and_heads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, ...]] = []
    fused = F.scaled_dot_product_attention

    def spy(q: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(tuple(q.shape))
        return fused(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    layer = bnn.VIMultiheadAttention(E, HEADS, batch_first=True)
    x = torch.randn(B, L, E)
    layer(x, x, x, need_weights=False, samples=5)
    assert calls == [(B * 5, HEADS, L, E // HEADS)]
    layer(x, x, x, samples=5)  # need_weights=True: explicit softmax, no kernel
    assert len(calls) == 1


def test_folded_inputs_per_particle() -> None:
    # Inside a network a folded query (b * S rows) may meet a shared memory.
    samples, batch = 3, 2
    reference = nn.MultiheadAttention(E, HEADS, batch_first=True)
    w_in = torch.randn(samples, 3 * E, E) * 0.4
    w_out = torch.randn(samples, E, E) * 0.4
    b_in, b_out = torch.randn(samples, 3 * E), torch.randn(samples, E)
    query = torch.randn(batch * samples, L, E)
    memory = torch.randn(batch, 5, E)
    padding = torch.zeros(batch, 5, dtype=torch.bool)
    padding[1, -2:] = True
    out, attn = multi_head_attention(
        query, memory, memory, HEADS, w_in, b_in, None, None, False, 0.0, w_out,
        b_out, training=False, batch_size=batch, key_padding_mask=padding,
    )  # fmt: skip
    for s in range(samples):
        rows = torch.arange(batch) * samples + s
        with torch.no_grad():
            reference.in_proj_weight.copy_(w_in[s])
            reference.in_proj_bias.copy_(b_in[s])
            reference.out_proj.weight.copy_(w_out[s])
            reference.out_proj.bias.copy_(b_out[s])
            ref_out, ref_attn = reference(
                query[rows], memory, memory, key_padding_mask=padding
            )
        torch.testing.assert_close(out[rows], ref_out, **TOL)
        assert attn is not None
        torch.testing.assert_close(attn[rows], ref_attn, **TOL)


def test_signature_repr_and_errors() -> None:
    signature_matches(bnn.VIMultiheadAttention, nn.MultiheadAttention.__init__)
    assert repr(bnn.VIMultiheadAttention(8, 2, batch_first=True)).startswith(
        "VIMultiheadAttention(\n  embed_dim=8, num_heads=2, batch_first=True"
    )
    assert not bnn.VIMultiheadAttention(8, 2).batch_first  # torch's default
    with pytest.raises(ValueError, match="divisible by num_heads"):
        bnn.VIMultiheadAttention(8, 3, batch_first=True)
    with pytest.raises(ValueError, match="estimator='auto' or 'reparam'"):
        bnn.VIMultiheadAttention(8, 2, batch_first=True, estimator="local")
    # The child layer names the variable relative to itself.
    with pytest.raises(ValueError, match=r"unknown variable\(s\) \['weights'\]"):
        bnn.VIMultiheadAttention(
            8, 2, batch_first=True, prior={"out_proj.weights": bnn.NormalPrior()}
        )
    with pytest.raises(ValueError, match=r"unknown variable\(s\) \['proj.weight'\]"):
        bnn.VIMultiheadAttention(
            8, 2, batch_first=True, variational={"proj.weight": bnn.PointMass()}
        )
    layer = bnn.VIMultiheadAttention(8, 2, batch_first=True)
    with pytest.raises(ValueError, match="expected batch-first query"):
        layer(torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 8))
    x = torch.randn(2, 5, 8)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        layer(x, x, x, is_causal=True)


def test_per_variable_prior_reaches_nested_sites() -> None:
    layer = bnn.VIMultiheadAttention(
        8,
        2,
        batch_first=True,
        prior={"in_proj_weight": bnn.LaplacePrior(0.0, 0.5),
               "out_proj.bias": bnn.NormalPrior(0.0, 2.0)},
        variational={"out_proj.weight": bnn.PointMass()},
    )  # fmt: skip
    assert isinstance(layer.prior["in_proj_weight"], bnn.LaplacePrior)
    assert isinstance(layer.out_proj.prior["bias"], bnn.NormalPrior)
    assert float(layer.out_proj.prior["bias"].scale) == 2.0
    assert type(layer.out_proj.posterior["weight"]).__name__ == "PointMassPosterior"


class _Classifier(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.attn = bnn.VIMultiheadAttention(4, 2, batch_first=True, add_bias_kv=True)
        self.head = bnn.VILinear(4, 3, estimator="reparam")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attn(x, x, x, need_weights=False)[0]
        return self.head(out.mean(1))  # type: ignore[no-any-return]


def test_loss_equals_pyro_trace_elbo() -> None:
    x, y = torch.randn(6, 5, 4), torch.randint(0, 3, (6,))
    assert_loss_equals_pyro_elbo(_Classifier(), x, y, dataset_size=40)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.zeros(5, 6), r"2-D attn_mask has shape \(5, 6\); expected .* \(5, 5\)"),
        (torch.zeros(2, 5, 5), r"3-D attn_mask has shape \(2, 5, 5\); .* \(4, 5, 5\)"),
        (torch.zeros(4, 5, 6), r"3-D attn_mask has shape \(4, 5, 6\)"),
        (torch.zeros(1, 1, 5, 5), r"attn_mask must be 2-D or 3-D"),
    ],
)
def test_wrong_mask_shapes_name_the_expected_shape(
    mask: torch.Tensor, message: str
) -> None:
    """As torch's messages do (not a broadcasting error from inside)."""
    layer = bnn.VIMultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=message):
        layer(x, x, x, attn_mask=mask, samples=2)
    encoder = bnn.VITransformerEncoderLayer(8, 2, 16, batch_first=True)
    with pytest.raises(ValueError, match=message):
        encoder(x, src_mask=mask, samples=2)


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_refuses_non_tensor_and_integer_inputs(batch_first: bool) -> None:
    """torch's dtype errors from inside the projections, or ``AttributeError``
    for a list, became errors naming the layer and the argument."""
    attention = bnn.VIMultiheadAttention(4, 2, batch_first=batch_first)
    x = torch.randn(3, 5, 4)
    with pytest.raises(TypeError, match=r"floating-point key, got dtype torch.int64"):
        attention(x, x.long(), x)
    with pytest.raises(TypeError, match=r"floating-point value, got dtype torch.int64"):
        attention(x, x, x.long())
    with pytest.raises(
        TypeError, match=r"VIMultiheadAttention expected a torch.Tensor query"
    ):
        attention(x.tolist(), x, x)  # type: ignore[arg-type]


def test_each_posterior_reset_on_its_own_draws_torchs_initialisation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FSDP resets each posterior on its own, never the attention layer: the
    means kept uninitialised memory. Each is now drawn as torch's constructor
    draws it: Xavier-uniform projections (bound sqrt(6 / (fan_in + fan_out))),
    the output projection ``nn.Linear``'s Kaiming-uniform (bound
    1/sqrt(E)), zero biases, Xavier-normal ``bias_k``/``bias_v``. The spread
    of the in-projection (3E^2 = 768 uniform numbers) is checked to 5
    standard errors of a sample standard deviation (relative standard error
    sqrt(0.8 / n) / 2 = 1.6 %)."""
    embed = 16
    layer = bnn.VIMultiheadAttention(embed, HEADS, add_bias_kv=True)
    torch.manual_seed(0)
    # to_empty's memory may hold NaN (a write there would be a mean to keep)
    nan_memory = partial(torch.full_like, fill_value=float("nan"))
    for module in layer.modules():
        if list(module.parameters(recurse=False)):
            with monkeypatch.context() as patched:
                patched.setattr(torch, "empty_like", nan_memory)
                module.to_empty(device="cpu", recurse=False)
            module.reset_parameters()  # type: ignore[operator]
    means = {v.site: v.posterior.loc.detach() for v in layer.random_variables()}
    assert all(bool(torch.isfinite(m).all()) for m in means.values())
    xavier = (6 / (embed + 3 * embed)) ** 0.5
    assert means["in_proj_weight"].abs().max() <= xavier
    std = means["in_proj_weight"].std().item()
    assert abs(std / (xavier / 3**0.5) - 1) < 5 * 0.016
    assert means["out_proj.weight"].abs().max() <= embed**-0.5
    assert means["out_proj.weight"].std() > 0.5 * embed**-0.5 / 3**0.5
    for bias in ("in_proj_bias", "out_proj.bias"):
        torch.testing.assert_close(means[bias], torch.zeros_like(means[bias]))
    assert means["bias_k"].std() > 0  # Xavier-normal, not left as it was
    for v in layer.random_variables():
        scale = v.posterior.scale()  # type: ignore[operator]
        torch.testing.assert_close(scale, torch.full_like(scale, 1e-3))
