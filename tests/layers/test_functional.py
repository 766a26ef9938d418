"""Batched particle ops equal S separate torch calls."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import pyrolite_bnn as bnn
from pyrolite_bnn import _particles
from pyrolite_bnn.layers import functional

TOL = {"rtol": 1e-5, "atol": 1e-5}
Z = 4.5  # statistical tests: a correct implementation fails one with p ~7e-6


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


class _Combined(bnn.VIModule):
    """``out(tanh(fx(x) + combine(fc(ctx) or ctx, fx(x))))`` of ``net(*inputs)``.

    ``combine`` gets the context branch (``fc(ctx)``, or ``ctx`` itself with
    ``raw``) and ``fx(x)``; ``ctx_first`` takes the context as the first
    argument.
    """

    def __init__(
        self,
        combine: Callable[[Tensor, Tensor], Tensor],
        ctx_first: bool = False,
        raw: bool = False,
    ) -> None:
        super().__init__()
        wide = bnn.MeanFieldNormal(init_scale=0.5)  # particles clearly differ
        self.fx = bnn.VILinear(3, 4, variational=wide)
        self.fc = bnn.VILinear(4 if raw else 2, 4, variational=wide)
        self.out = bnn.VILinear(4, 1, variational=wide)
        self.combine, self.ctx_first, self.raw = combine, ctx_first, raw

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        ctx, x = (first, second) if self.ctx_first else (second, first)
        h = self.fx(x)
        c = ctx if self.raw else self.fc(ctx)
        return self.out(torch.tanh(h + self.combine(c, h)))  # type: ignore[no-any-return]


def _plain(
    net: _Combined, weights: dict[str, Tensor], x: Tensor, ctx: Tensor
) -> Tensor:
    """The network of particle ``weights`` as plain torch (ctx broadcast)."""
    h = F.linear(x, weights["fx.weight"], weights["fx.bias"])
    c = ctx if net.raw else F.linear(ctx, weights["fc.weight"], weights["fc.bias"])
    return F.linear(torch.tanh(h + c), weights["out.weight"], weights["out.bias"])


def test_match_particles_broadcasts_shared_shortcut() -> None:
    """Inside a call of S = 4 a shared (2, 3) tensor meets a folded (8, 3)
    one: repeated for every particle, row b * S + s holding example b (a
    copy: exact). Outside a call there are no particles: unchanged."""
    shortcut, branch = torch.randn(2, 3), torch.randn(8, 3)
    matched: list[Tensor] = []

    class Skip(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = bnn.VILinear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            h = self.body(x)
            matched.append(functional.match_particles(x, h))
            return h  # type: ignore[no-any-return]

    Skip()(shortcut, samples=4)
    assert matched[-1].shape == (8, 3)
    for s in range(4):  # batch-major: row b * S + s holds example b
        torch.testing.assert_close(
            matched[-1].reshape(2, 4, 3)[:, s], shortcut, rtol=0, atol=0
        )
    assert functional.match_particles(shortcut, branch) is shortcut


class _PlainSkip(torch.nn.Module):
    """A torch module written for ``bnn.convert``: its skip meets its body
    through match_particles."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.skip = torch.nn.Conv2d(1, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        body = self.body(x)
        return torch.relu(body + functional.match_particles(self.skip(x), body))


@pytest.mark.filterwarnings(  # torch's note on its tracer, not a TracerWarning
    "ignore:`torch.jit.trace[a-z_]*` is deprecated:DeprecationWarning"
)
def test_match_particles_outside_a_network_reads_no_size() -> None:
    """In a plain torch call match_particles read both row counts as ints
    before returning the shortcut: torch.export with a dynamic batch failed
    ("specialized it to be a constant (4)") and torch.jit.trace warned (an
    error here). Both now run another batch size as the module does."""
    module = _PlainSkip()
    x = torch.randn(4, 1, 5, 5)
    traced = torch.jit.trace(module, (x,))
    program = torch.export.export(
        module, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    other = torch.randn(3, 1, 5, 5)
    want = module(other)
    torch.testing.assert_close(traced(other), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(program.module()(other), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["expanded", "shared_row", "shared_row_first"])
def test_what_match_particles_accepts_is_each_particles_network(case: str) -> None:
    """A context ``ctx`` beside ``x`` (5 rows) combined by match_particles:
    given the batch size before a Bayesian layer reads it (the remedy the
    refusals name), or a shared row ``(1, C)`` of its own (as the first
    argument too: the call's batch is then 1). At each drawn network's
    weights the output equals plain torch with ``ctx`` broadcast (float32,
    the same operations: tolerance 1e-5)."""
    x, ctx = torch.randn(5, 3), torch.randn(1, 2)
    if case == "expanded":
        net = _Combined(functional.match_particles, ctx_first=True)
        call: tuple[Tensor, ...] = (ctx.expand(5, 2), x)
    else:
        net = _Combined(functional.match_particles, case.endswith("first"), raw=True)
        ctx = torch.randn(1, 4)
        call = (ctx, x) if net.ctx_first else (x, ctx)
    nets = bnn.draw_networks(net, samples=4)
    weights, got = nets.weights(), nets(*call)
    for s in range(4):
        particle = {name: value[s] for name, value in weights.items()}
        want = _plain(net, particle, x, ctx)
        torch.testing.assert_close(got[s], want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[0], got[1])
    assert net(*call, samples=4).shape == (4, 5, 1)  # the training call too


def test_match_particles_refuses_an_output_of_another_batch() -> None:
    """``net(ctx, x)`` with ``ctx`` of one row first: ``fc(ctx)`` has one row
    per particle (S rows), ``fx(x)`` 5 * S. match_particles repeated the S
    rows 5 times (by the ratio of the row counts, not S), giving row b * S + s
    the context branch of particle (b * S + s) // 5: a wrong network without
    an error. It is refused, with the remedy; so are the swapped arguments
    and a branch whose rows are no batch folded with S (concatenated)."""
    x, ctx = torch.randn(5, 3), torch.randn(1, 2)
    net = _Combined(functional.match_particles, ctx_first=True)
    with pytest.raises(ValueError, match=r"one row(.|\n)*ctx\.expand"):
        net(ctx, x, samples=4)
    with torch.no_grad(), pytest.raises(ValueError, match=r"ctx\.expand"):
        bnn.draw_networks(net, samples=4)(ctx, x)
    swapped = _Combined(lambda c, h: functional.match_particles(h, x), raw=True)
    with pytest.raises(ValueError, match="swapped"):
        swapped(x, torch.randn(5, 4), samples=4)
    doubled = _Combined(
        lambda c, h: functional.match_particles(x, torch.cat([h, h]))[: len(h)],
        raw=True,
    )
    with pytest.raises(ValueError, match=r"10 \* 4|40 rows fit neither"):
        doubled(x, torch.randn(1, 4), samples=4)
    assert net(ctx, x, samples=1).shape == (1, 5, 1)  # one particle: plain torch


def test_match_particles_refuses_rows_it_cannot_tell() -> None:
    """The call's batch 1 (``ctx`` first) and ``x`` of 4 rows at S = 4: under
    ``no_grad`` ``fc(ctx)`` (1 * S rows, folded) and a tensor computed from
    ``x`` (4 rows, shared) have the same size, and returning the shortcut
    unchanged gave example b particle b's context branch. Both readings fit:
    refused (with gradients the autograd graph tells ``fc(ctx)`` folded, and
    the message says so)."""
    x, ctx = torch.randn(4, 3), torch.randn(1, 2)

    def plus_x(c: Tensor, h: Tensor) -> Tensor:
        return functional.match_particles(2.0 * x, c) + c - h

    net = _Combined(plus_x, ctx_first=True)
    with torch.no_grad(), pytest.raises(ValueError, match=r"ambiguous|both"):
        net(ctx, x, samples=4)
    with pytest.raises(ValueError, match="batch 1 folded"):
        net(ctx, x, samples=4)


class _TwoSkips(bnn.VIModule):
    """Two inputs, each with a skip past its own Bayesian layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = bnn.VILinear(3, 3), bnn.VILinear(3, 3)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        hx, hy = self.a(x), self.b(y)
        return (
            hx + functional.match_particles(x, hx),
            hy + functional.match_particles(y, hy),
        )


@pytest.mark.parametrize(("x_rows", "y_rows"), [(2, 8), (1, 4)])
def test_match_particles_folds_beside_its_own_layers_rows_without_gradients(
    x_rows: int, y_rows: int
) -> None:
    """``x`` of b rows beside ``a(x)``'s b * S, where b * S is also ``y``'s
    batch: under ``no_grad`` (``draw_networks``, ``predict``) the branch's rows
    fit both readings, and match_particles refused a network that trains
    (probe falsepos17). The branch is the layer's output itself, recorded
    (by its memory) without a graph too: folded; at each drawn network it is
    plain torch's (float32, same operations: 1e-6)."""
    torch.manual_seed(0)
    net, samples = _TwoSkips(), 4
    x, y = torch.randn(x_rows, 3), torch.randn(y_rows, 3)
    nets = bnn.draw_networks(net, samples=samples)
    got_x, got_y = nets(x, y)
    weights = nets.weights()
    for s in range(samples):
        want_x = F.linear(x, weights["a.weight"][s], weights["a.bias"][s]) + x
        want_y = F.linear(y, weights["b.weight"][s], weights["b.bias"][s]) + y
        torch.testing.assert_close(got_x[s], want_x, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got_y[s], want_y, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        out_x, out_y = net(x, y, samples=samples)
    assert out_x.shape == (samples, x_rows, 3)
    assert out_y.shape == (samples, y_rows, 3)


class _BesideAnotherBatch(bnn.VIModule):
    """``x`` (b rows) and ``y`` (b * S rows): ``combine(x, hx, y)`` beside ``b(y)``."""

    def __init__(self, combine: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.a, self.b = bnn.VILinear(3, 3), bnn.VILinear(3, 3)
        self.combine = combine

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        hx, hy = self.a(x), self.b(y)
        return self.combine(x, hx, y), hy


def test_match_particles_refuses_another_inputs_rows_it_cannot_tell() -> None:
    """``match_particles(x, tanh(y))`` with ``y`` of ``len(x) * S`` rows: plain
    torch refuses ``x + tanh(y)`` (2 vs 8 rows), but match_particles read the
    branch as ``x``'s rows folded (the only reading giving rows in common,
    45a54c6), adding ``x[b]`` to ``tanh(y)[b * S + s]``: no particle's torch
    network (probe falsepos20). Nothing tells where ``tanh(y)`` comes from:
    refused, with and without gradients, naming the ways out, which work:
    with another ``S`` torch's own size error; where the branch is computed
    from ``a(x)`` (``relu(a(x))``, under ``draw_networks``: no graph), the
    layer's output itself is told folded, and equals plain torch (float32,
    same operations: 1e-6)."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 3), torch.randn(8, 3)

    def mistake(x: Tensor, hx: Tensor, y: Tensor) -> Tensor:
        return functional.match_particles(x, torch.tanh(y)) + torch.tanh(y)

    net = _BesideAnotherBatch(mistake)
    told = r"(?s)cannot be told.*give match_particles that output itself"
    with pytest.raises(ValueError, match=told):
        net(x, y, samples=4)
    with torch.no_grad(), pytest.raises(ValueError, match=told):
        net(x, y, samples=4)
    with pytest.raises(ValueError, match=told):
        bnn.draw_networks(net, samples=4)(x, y)
    with pytest.raises(RuntimeError, match="must match the size"):
        net(x, y, samples=3)  # 8 rows: no batch folded with S = 3

    def after_relu(x: Tensor, hx: Tensor, y: Tensor) -> Tensor:
        return functional.match_particles(x, torch.relu(hx)) + hx

    assert _BesideAnotherBatch(after_relu)(x, y, samples=4)[0].shape == (4, 2, 3)
    with pytest.raises(ValueError, match=told):  # no graph to tell
        bnn.draw_networks(_BesideAnotherBatch(after_relu), samples=4)(x, y)

    def output_itself(x: Tensor, hx: Tensor, y: Tensor) -> Tensor:
        return torch.relu(hx) + functional.match_particles(x, hx)

    remedy = _BesideAnotherBatch(output_itself)
    nets = bnn.draw_networks(remedy, samples=4)
    got, weights = nets(x, y)[0], nets.weights()
    for s in range(4):
        hx = F.linear(x, weights["a.weight"][s], weights["a.bias"][s])
        torch.testing.assert_close(got[s], torch.relu(hx) + x, rtol=1e-6, atol=1e-6)


class _ContextAndBatch(bnn.VIModule):
    """``fx(x) + branch(self, ctx, x, fx(x))`` of a one-row ``ctx`` and ``x``."""

    def __init__(
        self,
        branch: Callable[[_ContextAndBatch, Tensor, Tensor, Tensor], Tensor],
        ctx_first: bool = True,
    ) -> None:
        super().__init__()
        self.fx, self.fc, self.det = (
            bnn.VILinear(3, 3),
            bnn.VILinear(3, 3),
            torch.nn.Linear(3, 3),
        )
        self.branch, self.ctx_first = branch, ctx_first

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        ctx, x = (first, second) if self.ctx_first else (second, first)
        h = self.fx(x)
        return h + self.branch(self, ctx, x, h)  # type: ignore[no-any-return]


class _PlainContextAndBatch(torch.nn.Module):
    """:class:`_ContextAndBatch` under a plain torch root (``samples`` attribute)."""

    def __init__(self, network: _ContextAndBatch, samples: int) -> None:
        super().__init__()
        self.network, self.samples = network, samples

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        return _ContextAndBatch.forward(self.network, first, second)


def _expanded_context(
    net: _ContextAndBatch, ctx: Tensor, x: Tensor, h: Tensor
) -> Tensor:
    return functional.match_particles(net.fc(ctx.expand(x.shape[0], *ctx.shape[1:])), h)


def _deterministic(net: _ContextAndBatch, ctx: Tensor, x: Tensor, h: Tensor) -> Tensor:
    return functional.match_particles(net.det(x), h)


def _deterministic_of_matched(
    net: _ContextAndBatch, ctx: Tensor, x: Tensor, h: Tensor
) -> Tensor:
    return net.det(functional.match_particles(x, h))


def _summary(net: _ContextAndBatch, ctx: Tensor, x: Tensor, h: Tensor) -> Tensor:
    return functional.match_particles(x.mean(0, keepdim=True), h)


def _repeated_context(
    net: _ContextAndBatch, ctx: Tensor, x: Tensor, h: Tensor
) -> Tensor:
    return functional.match_particles(net.fc(ctx.repeat(x.shape[0], 1)), h)


def _plain_branch(
    branch: Callable[..., Tensor], weights: dict[str, Tensor], net: _ContextAndBatch
) -> Callable[[Tensor, Tensor], Tensor]:
    """The branch of one particle's ``weights`` as plain torch (ctx broadcast)."""
    if branch in (_expanded_context, _repeated_context):
        return lambda ctx, x: F.linear(ctx, weights["fc.weight"], weights["fc.bias"])
    if branch is _summary:
        return lambda ctx, x: x.mean(0, keepdim=True)
    return lambda ctx, x: net.det(x)


def _assert_each_particle_is_torch(
    net: _ContextAndBatch, root: torch.nn.Module, ctx: Tensor, x: Tensor, samples: int
) -> None:
    """At each network drawn from ``root`` the output is plain torch's."""
    call = (ctx, x) if net.ctx_first else (x, ctx)
    nets = bnn.draw_networks(root, samples=samples)
    got, weights = nets(*call), nets.weights()
    for s in range(samples):
        particle = {
            name.removeprefix("network."): value[s] for name, value in weights.items()
        }
        h = F.linear(x, particle["fx.weight"], particle["fx.bias"])
        want = h + _plain_branch(net.branch, particle, net)(ctx, x)
        torch.testing.assert_close(got[s], want, rtol=1e-5, atol=1e-5)


# (branch, samples, rows): match_particles(det(x), h) at S == B is refused
# (test_match_particles_names_ways_out_that_work_at_samples_equal_to_the_batch).
_ACCEPTED_BESIDE_A_CONTEXT = [
    (branch, samples, rows)
    for branch in (
        _expanded_context,
        _deterministic_of_matched,
        _summary,
        _deterministic,
    )
    for samples, rows in ((3, 3), (4, 4), (4, 3))
    if not (branch is _deterministic and samples == rows)
]


@pytest.mark.parametrize("plain_root", [False, True])
@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize(("branch", "samples", "rows"), _ACCEPTED_BESIDE_A_CONTEXT)
def test_match_particles_accepts_each_particles_network_beside_a_context_first(
    branch: Callable[..., Tensor],
    samples: int,
    rows: int,
    grad: bool,
    plain_root: bool,
) -> None:
    """``net(ctx, x)``, a one-row ``ctx`` first (the call's batch 1): the
    remedy the one-row refusal names, ``fc(ctx.expand(x.shape[0], ...))`` in
    the forward, raised AmbiguousLayoutError at ``S == len(x)`` (its rows fit
    the one row folded), though the view of an input holds that input's rows
    (probe falsepos20). It, a deterministic branch of ``x`` matched after
    ``x`` (or, at ``S != B``, before), and a one-row summary equal plain torch
    at each drawn network, with a ``VIModule`` or a plain torch root, with
    and without gradients (float32, same operations: 1e-5); the ``VIModule``'s
    training call runs too. At ``S == B`` ``match_particles(det(x), h)`` is
    refused (next test)."""
    torch.manual_seed(0)
    net = _ContextAndBatch(branch)
    root = _PlainContextAndBatch(net, samples) if plain_root else net
    ctx, x = torch.randn(1, 3), torch.randn(rows, 3)
    with torch.set_grad_enabled(grad):
        _assert_each_particle_is_torch(net, root, ctx, x, samples)
        if not plain_root:
            assert net(ctx, x, samples=samples).shape == (samples, rows, 3)


@pytest.mark.parametrize("grad", [True, False])
def test_match_particles_names_ways_out_that_work_at_samples_equal_to_the_batch(
    grad: bool,
) -> None:
    """At ``S == B`` with a one-row ``ctx`` first, ``B`` rows computed from
    ``x`` by plain torch fit both ``x``'s batch and the one row folded (as
    ``fc(ctx)``'s do): match_particles of ``det(x)`` and a Bayesian layer
    reading ``ctx.repeat(B, 1)`` (a copy) are refused. The messages named
    another number of samples only, or a graph batch's coincidence (probe
    falsepos20); they name matching ``x`` itself, giving the network ``x``
    first, and the view ``ctx.expand``, which work: each equals plain torch
    at the drawn networks (the accepting test covers the matched ``x`` and
    the view)."""
    torch.manual_seed(0)
    ctx, x = torch.randn(1, 3), torch.randn(4, 3)
    with torch.set_grad_enabled(grad):
        with pytest.raises(
            ValueError, match=r"(?s)det\(bnn\.match_particles\(x, h\)\).*net\(x, ctx\)"
        ):
            _ContextAndBatch(_deterministic)(ctx, x, samples=4)
        with pytest.raises(
            _particles.AmbiguousLayoutError,
            match=r"(?s)net\(x, ctx\).*a view of an input, ctx\.expand",
        ):
            _ContextAndBatch(_repeated_context)(ctx, x, samples=4)
        for branch in (_deterministic, _repeated_context):
            net = _ContextAndBatch(branch, ctx_first=False)
            _assert_each_particle_is_torch(net, net, ctx, x, samples=4)


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


# Local reparameterisation in half precision: float16 under autocast (the
# howto's "Half precision") and a .half() network. Layers with posterior means
# of zero draw outputs std * eps: their variance over particles is the exact
# x^2 s^2 + s_b^2 up to Monte-Carlo error, and float16 rounds such outputs to
# 2^-11 of themselves (no bias to speak of).
HALF_SAMPLES = 2000


def _local_layer(kind: str, std: float, dtype: torch.dtype) -> bnn.VIModule:
    layer: bnn.VIModule = (
        bnn.VILinear(16, 8, estimator="local")
        if kind == "linear"
        else bnn.VIConv2d(2, 4, 3, estimator="local")
    )
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("loc_unconstrained"):
                p.zero_()
            else:
                p.fill_(math.log(math.expm1(std)))
    return layer.to(dtype)


def _local_input(kind: str, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    shape = (16, 16) if kind == "linear" else (16, 2, 3, 3)  # one location
    return torch.randn(shape, generator=gen) * scale


def _exact_variance(layer: bnn.VIModule, x: torch.Tensor) -> torch.Tensor:
    """x^2 s^2 + s_b^2 in float64, from the scales the forward pass uses."""
    weight, bias = (
        layer.posterior[n].scale().double() ** 2 for n in ("weight", "bias")
    )
    x2 = x.double() ** 2
    if isinstance(layer, bnn.VILinear):
        return F.linear(x2, weight, bias)
    return F.conv2d(x2, weight, bias)


def _half_run(precision: str, layer: bnn.VIModule, x: torch.Tensor) -> torch.Tensor:
    if precision == "autocast":
        with torch.autocast("cpu", dtype=torch.float16):
            out = layer(x, samples=HALF_SAMPLES)
        assert out.dtype == torch.float16  # autocast's dtype, as nn.Linear's
        return out
    return layer.half()(x.half(), samples=HALF_SAMPLES)


@pytest.mark.statistical
@pytest.mark.parametrize("std", [1e-4, 3e-4])
@pytest.mark.parametrize("precision", ["autocast", "half"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_local_variance_in_float16_matches_the_exact_one(
    kind: str, precision: str, std: float
) -> None:
    """The variance x^2 s^2 was computed in float16: at std 1e-4 it flushed to
    0 (outputs without noise), at 3e-4 it came out 33 % too large. The mean of
    the n = B * out sample variances over S particles has a relative standard
    error sqrt(2 / ((S - 1) n)) (independent Gaussian outputs); tolerance 4.5
    of them."""
    layer = _local_layer(kind, std, torch.float32)
    x = _local_input(kind)
    with torch.no_grad():
        out = _half_run(precision, layer, x).float()
        if precision == "half":  # the stored (rounded) scales and inputs
            x = x.half()
        exact = _exact_variance(layer, x)
    spread = out.double().var(0) / exact
    n = spread.numel()
    tolerance = Z * math.sqrt(2 / ((HALF_SAMPLES - 1) * n))
    torch.testing.assert_close(
        spread.mean(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=tolerance
    )


@pytest.mark.parametrize("std", [1e-4, 3e-4])
@pytest.mark.parametrize("precision", ["autocast", "half"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_local_scale_gradient_in_float16_matches_float32(
    kind: str, precision: str, std: float
) -> None:
    """The gradient on rho through the float16 variance was exactly 0 at std
    1e-4 (and 13 % short at 3e-4 in a network). With the same seed the draws
    share their noise, and the float32 run has the half network's (rounded)
    parameters and inputs, so float16 differs from float32 only by the rounding
    of the scales, the outputs and their gradients (2^-11 relative each): the
    largest relative difference measured is 1e-3; rtol 1e-2."""
    stored = torch.float16 if precision == "half" else torch.float32
    x = _local_input(kind).to(stored).float()
    grads = []
    for run in ("float32", precision):
        layer = _local_layer(kind, std, stored).float()
        torch.manual_seed(2)
        out = (
            layer(x, samples=HALF_SAMPLES)
            if run == "float32"
            else _half_run(precision, layer, x)
        )
        # A sum: a mean's gradients (~1e-9) would underflow in float16.
        out.float().square().sum().backward()
        grads.append(layer.posterior["weight"].rho.grad.float())
    assert bool(grads[0].abs().min() > 0)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-2, atol=0)


@pytest.mark.parametrize("precision", ["autocast", "half"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_local_outputs_of_large_float16_inputs_are_finite(
    kind: str, precision: str
) -> None:
    """x^2 overflowed float16 for |x| > 256: inputs of 300 gave NaN outputs
    (torch's layers and the other estimators give finite ones)."""
    layer = _local_layer(kind, 1e-3, torch.float32)
    x = torch.full_like(_local_input(kind), 300.0)
    with torch.no_grad():
        out = _half_run(precision, layer, x)
    assert bool(out.isfinite().all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("estimator", ["flipout", "local", "reparam"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_autocast_outputs_have_the_dtype_torchs_layer_gives(
    dtype: torch.dtype, estimator: str, kind: str
) -> None:
    """Flipout's random signs are made in the input's dtype (float32 under
    autocast) and promoted its noise: its outputs came back in float32 where
    nn.Linear's are in the autocast dtype, and ``"auto"`` switched dtypes
    with the input's requires_grad (probe falsepos17)."""
    if kind == "linear":
        layer: torch.nn.Module = bnn.VILinear(4, 3, estimator=estimator)
        plain: torch.nn.Module = torch.nn.Linear(4, 3)
        x = torch.randn(5, 4, requires_grad=True)
    else:
        conv_estimator = "auto" if estimator == "local" else estimator
        layer = bnn.VIConv2d(2, 3, 3, estimator=conv_estimator)
        plain = torch.nn.Conv2d(2, 3, 3)
        x = torch.randn(2, 2, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        out, want = layer(x), plain(x)
    assert out.dtype == want.dtype == dtype
