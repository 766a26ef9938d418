"""Batched particle ops equal S separate torch calls."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from pyrolite_bnn.layers import functional

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weight_layout", [(4, 1), (4,)])
def test_linear_matches_separate_calls(
    shared: bool, bias: bool, weight_layout: tuple[int, ...]
) -> None:
    samples, batch = 4, 3
    w = torch.randn(*weight_layout, 5, 6)
    b = torch.randn(*weight_layout, 5) if bias else None
    x = torch.randn(batch, 2, 6) if shared else torch.randn(batch * samples, 2, 6)
    out = functional.linear(x, w, b, batch_size=batch)
    assert out.shape == (samples * batch, 2, 5)
    w_flat = w.reshape(samples, 5, 6)
    b_flat = None if b is None else b.reshape(samples, 5)
    folded = out.reshape(batch, samples, *out.shape[1:])  # row b * S + s
    for s in range(samples):
        xs = x if shared else x.reshape(batch, samples, *x.shape[1:])[:, s]
        expected = F.linear(xs, w_flat[s], None if b_flat is None else b_flat[s])
        torch.testing.assert_close(folded[:, s], expected, **TOL)


def test_linear_single_particle_is_f_linear() -> None:
    x, w, b = torch.randn(7, 3), torch.randn(2, 3), torch.randn(2)
    torch.testing.assert_close(functional.linear(x, w, b, 7), F.linear(x, w, b), **TOL)


def test_linear_rejects_incompatible_rows() -> None:
    with pytest.raises(ValueError, match=r"leading size 7.*batch size 3"):
        functional.linear(
            torch.randn(7, 3), torch.randn(2, 1, 4, 3), None, batch_size=3
        )


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CASES = [
    # (stride, padding, dilation, groups)
    (1, 0, 1, 1),
    (2, 1, 1, 1),
    (1, "same", 2, 1),
    (1, "valid", 1, 2),
    (2, 2, 2, 2),
    (1, "same", 1, 4),
]


@pytest.mark.parametrize(
    ("dims", "case", "shared", "bias"),
    [
        (d, c, s, b)
        for d, c, s, b in itertools.product(
            [1, 2, 3], _CASES, [True, False], [True, False]
        )
        if d < 3 or c in _CASES[:3]
    ],
)
def test_conv_matches_separate_calls(
    dims: int, case: tuple[int, int | str, int, int], shared: bool, bias: bool
) -> None:
    stride, padding, dilation, groups = case
    samples, batch, cin, cout, k = 3, 2, 4, 8, 3
    size = (9,) * dims if dims < 3 else (6,) * dims
    w = torch.randn(samples, 1, cout, cin // groups, *(k,) * dims)
    b = torch.randn(samples, 1, cout) if bias else None
    x = torch.randn(batch if shared else batch * samples, cin, *size)
    strides, dilations = (stride,) * dims, (dilation,) * dims
    pads = padding if isinstance(padding, str) else (padding,) * dims
    out = functional.conv(x, w, b, strides, pads, dilations, groups, batch_size=batch)
    op = _CONV[dims]
    folded = out.reshape(batch, samples, *out.shape[1:])  # row b * S + s
    for s in range(samples):
        xs = x if shared else x.reshape(batch, samples, *x.shape[1:])[:, s]
        expected = op(
            xs,
            w[s, 0],
            None if b is None else b[s, 0],
            strides,
            pads,
            dilations,
            groups,
        )
        torch.testing.assert_close(folded[:, s], expected, **TOL)


def test_match_particles_broadcasts_shared_shortcut() -> None:
    shortcut = torch.randn(2, 3)
    branch = torch.randn(8, 3)
    matched = functional.match_particles(shortcut, branch)
    assert matched.shape == (8, 3)
    for s in range(4):  # batch-major: row b * S + s holds example b
        torch.testing.assert_close(
            matched.reshape(2, 4, 3)[:, s], shortcut, rtol=0, atol=0
        )


_ONE = (1, 1)


@pytest.mark.parametrize(
    ("estimate", "input", "shape", "geometry"),
    [
        (functional.linear_local, (4, 3), (2, 3), ()),
        (functional.linear_flipout, (4, 3), (2, 3), ()),
        (functional.conv_local, (2, 2, 5, 5), (4, 2, 3, 3), (_ONE, _ONE, _ONE, 1)),
        (functional.conv_flipout, (2, 2, 5, 5), (4, 2, 3, 3), (_ONE, _ONE, _ONE, 1)),
    ],
    ids=["linear_local", "linear_flipout", "conv_local", "conv_flipout"],
)
def test_moment_estimators_refuse_a_weight_that_is_no_pair(
    estimate: object, input: tuple[int, ...], shape: tuple[int, ...], geometry: tuple
) -> None:
    """linear_local(x, weight_tensor, ...) read the tensor's first two rows as
    the mean and the std and returned garbage of shape (16,)."""
    x, weight = torch.randn(*input), torch.randn(*shape)
    name = estimate.__name__  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match=rf"{name} takes the weight as a \(mean, std\)"):
        estimate(x, weight, None, *geometry, 4, input[0])  # type: ignore[operator]
    pair = (torch.zeros(shape[0]), torch.ones(shape[0]))
    with pytest.raises(TypeError, match=r"takes the bias as a \(mean, std\) pair"):
        estimate(x, pair, torch.zeros(shape[0]), *geometry, 4, input[0])  # type: ignore[operator]
    moments = (torch.zeros(shape), torch.ones(shape))
    assert estimate(x, moments, pair, *geometry, 4, input[0]).shape[0] == 4 * input[0]  # type: ignore[operator]
