"""LSTM and GRU batched over particles, with no Python loop over samples.

Weights arrive with optional leading particle dimensions (``(S, 1, 4H, in)``,
``(S, 4H, in)`` or ``(4H, in)``) and are flattened to one particle dimension.
Each weight is drawn once per particle and sequence; every time step of every
particle uses the same draw. The input projections of all time steps (and both
directions) of a layer are one batched matmul; the recurrence runs a Python loop
over time steps only, each step one batched matmul over ``directions * S``.
An LSTM layer without projection runs its recurrence as one autograd function
with a hand-written backward pass (fewer, fused ops per step); without
gradients (``torch.no_grad``, ``predict``) the same steps run with one step's
buffers reused, keeping nothing for a backward pass. Under graph capture
(``compile=True``), and for the GRU and ``proj_size``, autograd records the
per-step ops.

Inputs are batch-first, shared ``(B, L, in)`` or folded ``(b * S, L, in)``
(see :mod:`pyrolite_bnn.layers.functional`). Hidden states are batch-first too:
``(rows, num_layers * directions, H)``, where ``torch.nn`` has
``(num_layers * directions, batch, H)``, so that they fold and unfold over
particles like every other tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pyrolite_bnn._capture import (
    forward_ad_active,
    is_capturing,
    transforms_active,
)
from pyrolite_bnn._particles import differentiates_inputs
from pyrolite_bnn.layers import functional
from pyrolite_bnn.layers.functional import _batch_rows, _flat_particles, _is_shared

__all__ = ["GATES", "RecurrentWeights", "recurrent", "recurrent_batch"]

#: Weights of one layer and direction: ``(w_ih, w_hh, b_ih, b_hh, w_hr)``;
#: absent biases and projection are ``None``.
RecurrentWeights = tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]

#: Gates per hidden unit: the rows of ``w_ih`` are ``GATES[mode] * hidden_size``.
GATES = {"LSTM": 4, "GRU": 3}


def _particles(tensor: Tensor, event_dims: int, samples: int) -> Tensor:
    """``tensor`` as ``(samples, *event)``, a particle-free one broadcast."""
    flat = _flat_particles(tensor, event_dims)
    if flat.shape[0] == samples:
        return flat
    if flat.shape[0] == 1:
        return flat.expand(samples, *flat.shape[1:])
    raise ValueError(
        f"a recurrent weight has {flat.shape[0]} particles but others have {samples}"
    )


def _cat_directions(
    tensors: Sequence[Tensor | None], event_dims: int, samples: int, dim: int
) -> Tensor | None:
    present = [t for t in tensors if t is not None]
    if not present:
        return None
    return torch.cat([_particles(t, event_dims, samples) for t in present], dim)


def _initial_state(
    state: Tensor | None,
    name: str,
    layers: int,
    dirs: int,
    size: int,
    batch: int,
    samples: int,
    like: Tensor,
) -> Tensor:
    """A batch-first state as ``(layers, dirs * samples, batch, size)``."""
    if state is None:
        return like.new_zeros(layers, dirs * samples, batch, size)
    expected = (layers * dirs, size)
    rows = state.shape[0]
    if state.dim() != 3 or tuple(state.shape[1:]) != expected:
        raise ValueError(
            f"{name} must be batch-first (batch, num_layers * num_directions, "
            f"{size}) = ({batch}, {layers * dirs}, {size}), got "
            f"{tuple(state.shape)}; torch's (num_layers * num_directions, batch, "
            f"{size}) state is this one transposed"
        )
    if rows == batch * samples:
        view = state.reshape(batch, samples, layers, dirs, size)
    elif rows == batch:
        view = state.reshape(batch, 1, layers, dirs, size).expand(
            batch, samples, layers, dirs, size
        )
    else:
        raise ValueError(
            f"{name} has leading size {rows}; expected the batch size {batch} (shared "
            f"by all particles) or batch * samples = {batch * samples}"
        )
    return view.permute(2, 3, 1, 0, 4).reshape(layers, dirs * samples, batch, size)


def _time_major(x: Tensor, batch: int, samples: int, dirs: int) -> Tensor:
    """Folded ``(b * S, L, dirs * G)`` -> ``(L, dirs * S, b, G)``.

    The reverse direction is in reversed time order, so step ``t`` of every
    direction is row ``t``.
    """
    length = x.shape[1]
    gates = x.shape[2] // dirs
    steps = x.reshape(batch, samples, length, dirs, gates).permute(2, 3, 1, 0, 4)
    if dirs == 2:
        steps = torch.stack((steps[:, 0], steps[:, 1].flip(0)), 1)
    return steps.reshape(length, dirs * samples, batch, gates)


def _batch_major(out: Tensor, batch: int, samples: int, dirs: int) -> Tensor:
    """Inverse of :func:`_time_major`: ``(L, dirs * S, b, H)`` -> folded outputs."""
    length, size = out.shape[0], out.shape[-1]
    out = out.reshape(length, dirs, samples, batch, size)
    if dirs == 2:
        out = torch.stack((out[:, 0], out[:, 1].flip(0)), 1)
    return out.permute(3, 2, 0, 1, 4).reshape(batch * samples, length, dirs * size)


def _final_states(states: list[Tensor], batch: int, samples: int, dirs: int) -> Tensor:
    """Per-layer ``(dirs * S, b, H)`` -> batch-first ``(b * S, layers * dirs, H)``."""
    stacked = torch.stack(states)
    layers, size = stacked.shape[0], stacked.shape[-1]
    stacked = stacked.reshape(layers, dirs, samples, batch, size)
    return stacked.permute(3, 2, 0, 1, 4).reshape(batch * samples, layers * dirs, size)


def _lstm_steps(
    gx: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    c0: Tensor,
    valid: Tensor | None,
    keep_steps: bool,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """The LSTM recurrence over all steps of ``gx``, for ``P`` weight sets.

    Arguments as :class:`_LSTMRecurrence`. Returns ``hs`` ``(P, L + 1, B, H)``
    (``hs[:, 0]`` is ``h0``), the final cell state ``(P, B, H)`` and the
    gate activations, cell states and ``tanh`` of the cell states. With
    ``keep_steps`` these are kept for every step (``(P, L, B, 4H)``, ``(P, L +
    1, B, H)``, ``(P, L, B, H)``), as the hand-written backward pass needs
    them; without, one step's buffers (two cell states) are reused at every
    step: a forward pass without gradients (``predict``) holds ``6H`` fewer
    numbers per position and particle.
    """
    particles, length, batch, gates = gx.shape
    hidden = gates // 4
    hs = gx.new_empty(particles, length + 1, batch, hidden)
    hs[:, 0] = h0
    kept = length if keep_steps else 1
    cs = gx.new_empty(particles, length + 1 if keep_steps else 2, batch, hidden)
    cs[:, 0] = c0
    acts = gx.new_empty(particles, kept, batch, gates)
    tanh_c = gx.new_empty(particles, kept, batch, hidden)
    w_hh_t = w_hh.transpose(1, 2)
    for t in range(length):
        k = t if keep_steps else 0  # this step's slot in acts and tanh_c
        now, then = (t + 1, t) if keep_steps else ((t + 1) % 2, t % 2)  # slots of cs
        pre = torch.baddbmm(gx[:, t], hs[:, t], w_hh_t)
        act = acts[:, k]
        torch.sigmoid(pre, out=act)
        torch.tanh(
            pre[..., 2 * hidden : 3 * hidden], out=act[..., 2 * hidden : 3 * hidden]
        )
        i, f, g, o = act.chunk(4, -1)
        c = cs[:, now]
        torch.mul(f, cs[:, then], out=c)
        c.addcmul_(i, g)
        torch.tanh(c, out=tanh_c[:, k])
        torch.mul(o, tanh_c[:, k], out=hs[:, t + 1])
        if valid is not None:  # past the end: the state stays (exactly)
            torch.where(valid[:, t], c, cs[:, then], out=c)
            torch.where(valid[:, t], hs[:, t + 1], hs[:, t], out=hs[:, t + 1])
    last = length if keep_steps else length % 2
    return hs, cs[:, last].clone(), (acts, cs, tanh_c)


class _LSTMRecurrence(torch.autograd.Function):
    """The recurrence of one LSTM layer for ``P`` weight sets, with its own BPTT.

    Autograd through the per-step ops records ~12 nodes per time step (and
    materialises a zero-padded gradient for every gate slice); this function
    runs 7 ops per step forward (:func:`_lstm_steps`) and ~14 small ones
    backward, writing into preallocated buffers, and computes ``dW_hh`` in one
    batched matmul over all steps. Higher-order gradients (a backward pass
    with ``create_graph=True``: gradient penalties, input Hessians, physics-
    informed losses) recompute the recurrence with autograd's own ops and
    differentiate that (:func:`_lstm_steps_differentiable`), so they are
    exact to any order; the fused backward alone would hand back first-order
    gradients as constants. That needs ``gx``, kept only where ``keep_inputs``
    (a call whose inputs require gradients): keeping it always would hold
    ``4H`` more numbers per position and particle in every training step.
    Without gradients, :func:`_lstm_layer` runs :func:`_lstm_steps` on its
    own, which keeps no buffers for a backward pass.

    Inputs: ``gx`` ``(P, L, B, 4H)``, the input projections of every step with
    both biases added; ``w_hh`` ``(P, 4H, H)``; ``h0``, ``c0`` ``(P, B, H)``;
    ``valid`` ``(P, L, B, 1)`` or ``None``: whether step ``t`` is inside each
    row's sequence (outside, ``h`` and ``c`` stay as they are);
    ``keep_inputs``: whether to keep ``gx`` for higher-order gradients.
    Outputs: ``hs`` ``(P, L + 1, B, H)`` (``hs[:, 0]`` is ``h0``, ``hs[:, t + 1]``
    the output of step ``t``) and the final cell state ``(P, B, H)``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        gx: Tensor,
        w_hh: Tensor,
        h0: Tensor,
        c0: Tensor,
        valid: Tensor | None = None,
        keep_inputs: bool = False,
    ) -> tuple[Tensor, Tensor]:
        hs, c_n, (acts, cs, tanh_c) = _lstm_steps(gx, w_hh, h0, c0, valid, True)
        kept = gx if keep_inputs else None
        ctx.save_for_backward(acts, hs, cs, tanh_c, kept, w_hh, h0, c0, valid)
        return hs, c_n

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor, d_cn: Tensor) -> tuple[Tensor | None, ...]:
        acts, hs, cs, tanh_c, gx, w_hh, h0, c0, valid = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiable backward
            if gx is None:
                raise RuntimeError(
                    "VILSTM computes higher-order gradients (create_graph=True) "
                    "in a call whose inputs require gradients (x.requires_grad_(), "
                    "as for a gradient penalty); in other calls it keeps only what "
                    "first-order gradients need"
                )
            inputs = (gx, w_hh, h0, c0)
            wanted = [t for t in inputs if t.requires_grad]
            outputs = _lstm_steps_differentiable(*inputs, valid)
            found = iter(
                torch.autograd.grad(
                    outputs, wanted, (d_hs, d_cn), create_graph=True, allow_unused=True
                )
            )
            grads = (next(found) if t.requires_grad else None for t in inputs)
            return (*grads, None, None)
        return _fused_backward(acts, hs, cs, tanh_c, w_hh, valid, d_hs, d_cn)


def _lstm_steps_differentiable(
    gx: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, valid: Tensor | None
) -> tuple[Tensor, Tensor]:
    """:class:`_LSTMRecurrence`'s outputs computed by autograd's ops (slower)."""
    h, c = h0, c0
    hs = [h0]
    w_hh_t = w_hh.transpose(1, 2)
    for t in range(gx.shape[1]):
        i, f, g, o = torch.baddbmm(gx[:, t], h, w_hh_t).chunk(4, -1)
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_next = torch.sigmoid(o) * torch.tanh(c_next)
        if valid is not None:
            c_next = torch.where(valid[:, t], c_next, c)
            h_next = torch.where(valid[:, t], h_next, h)
        h, c = h_next, c_next
        hs.append(h)
    return torch.stack(hs, 1), c


def _fused_backward(
    acts: Tensor,
    hs: Tensor,
    cs: Tensor,
    tanh_c: Tensor,
    w_hh: Tensor,
    valid: Tensor | None,
    d_hs: Tensor,
    d_cn: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, None, None]:
    """:class:`_LSTMRecurrence`'s hand-written backward pass (first order)."""
    particles, length, batch, gates = acts.shape
    hidden = gates // 4
    d_pre = torch.empty_like(acts)
    dh, dc = d_hs[:, length], d_cn
    inside = None if valid is None else valid.to(acts.dtype)
    # Per step on small (P, B, H) tensors that stay in cache: one pass over
    # the whole sequence per factor costs more than these few extra ops.
    for t in range(length - 1, -1, -1):
        if inside is not None:
            # A step past the end passes h and c through unchanged; inside,
            # h = o * tanh(c) below (elsewhere dh = dc = 0 there).
            keep = inside[:, t]
            dh_through, dc_through = dh - dh * keep, dc - dc * keep
            dh, dc = dh * keep, dc * keep
        act, tanh_ct = acts[:, t], tanh_c[:, t]
        i, f, g, o = act.chunk(4, -1)
        # h = o * tanh(c): dc += dh * o * (1 - tanh(c)^2), and o * tanh(c) = h.
        dc = torch.addcmul(dc, dh, torch.addcmul(o, hs[:, t + 1], tanh_ct, value=-1))
        # sigmoid' = s (1 - s) (the g slice is unused: tanh' = 1 - g^2).
        s_i, s_f, _, s_o = torch.addcmul(act, act, act, value=-1).chunk(4, -1)
        d_i, d_f, d_g, d_o = d_pre[:, t].chunk(4, -1)
        torch.mul(dc * g, s_i, out=d_i)
        torch.mul(dc * cs[:, t], s_f, out=d_f)
        dc_i = dc * i
        torch.addcmul(dc_i, dc_i * g, g, value=-1, out=d_g)
        torch.mul(dh * tanh_ct, s_o, out=d_o)
        dc = dc * f
        dh = torch.baddbmm(d_hs[:, t], d_pre[:, t], w_hh)
        if inside is not None:
            dh, dc = dh + dh_through, dc + dc_through
    d_w_hh = torch.bmm(
        d_pre.view(particles, length * batch, gates).transpose(1, 2),
        hs[:, :length].reshape(particles, length * batch, hidden),
    )
    return d_pre, d_w_hh, dh, dc, None, None


def _particle_major(x: Tensor, batch: int, samples: int, shared: bool) -> Tensor:
    """Batch-first ``(rows, L, in)`` -> ``(S or 1, L, b, in)`` (1: shared input)."""
    length, size = x.shape[1], x.shape[2]
    if shared or samples == 1:
        return x.transpose(0, 1).unsqueeze(0)
    return x.reshape(batch, samples, length, size).permute(1, 2, 0, 3)


def _lstm_layer(
    x: Tensor,
    layer: Sequence[RecurrentWeights],
    h0: Tensor,
    c0: Tensor,
    batch: int,
    samples: int,
    shared: bool,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer without projection (all directions) via the fused recurrence.

    ``h0``/``c0`` are ``(dirs * S, b, H)``; ``valid`` ``(L, dirs * S, b, 1)``
    or ``None`` (see :func:`_valid_steps`); returns the folded output and the
    final ``h``/``c`` as ``(dirs * S, b, H)``.
    """
    dirs = len(layer)
    inputs = _particle_major(x, batch, samples, shared)  # (S or 1, L, b, in)
    length, size = inputs.shape[1], inputs.shape[-1]
    if dirs == 2:  # the reverse direction reads the sequence backwards
        inputs = torch.stack((inputs, inputs.flip(1)))
    # A shared input is copied once (time-major), then broadcast over particles.
    rows = length * batch
    inputs = inputs.reshape(dirs, inputs.shape[-4], rows, size)
    inputs = inputs.expand(dirs, samples, rows, size)
    inputs = inputs.reshape(dirs * samples, rows, size)
    w_ih = torch.cat([_particles(w[0], 2, samples) for w in layer])
    w_hh = torch.cat([_particles(w[1], 2, samples) for w in layer])
    biases = [
        [_particles(b, 1, samples) for b in (w[2], w[3]) if b is not None]
        for w in layer
    ]
    w_ih_t = w_ih.transpose(1, 2)
    if biases[0]:
        bias = torch.cat([sum(b[1:], b[0]) for b in biases]).unsqueeze(1)
        gx = torch.baddbmm(bias, inputs, w_ih_t)
    else:
        gx = torch.bmm(inputs, w_ih_t)
    # Explicit sizes throughout: with an empty batch a -1 would be ambiguous.
    gates, hidden = gx.shape[-1], h0.shape[-1]
    gx = gx.view(dirs * samples, length, batch, gates)
    steps_valid = None if valid is None else valid.transpose(0, 1)
    # The recurrence runs in the input projection's dtype, outside autocast:
    # its backward runs outside it too, and autocast's casts in the forward
    # alone (bfloat16 products of float32 weights) left the backward with
    # mixed dtypes. The casts below carry the gradients to the weights.
    recurrence = (gx, w_hh.to(gx.dtype), h0.to(gx.dtype), c0.to(gx.dtype))
    device = gx.device.type  # the meta device has no autocast (shape inference)
    with (
        torch.autocast(device, enabled=False)
        if torch.amp.is_autocast_available(device)
        else nullcontext()
    ):
        if torch.is_grad_enabled() and any(t.requires_grad for t in recurrence):
            hs, c_n = _LSTMRecurrence.apply(  # type: ignore[no-untyped-call]
                *recurrence, steps_valid, differentiates_inputs()
            )
        else:  # nothing to differentiate: no buffers for a backward pass
            hs, c_n, _ = _lstm_steps(*recurrence, steps_valid, keep_steps=False)
    out = hs[:, 1:].reshape(dirs, samples, length, batch, hidden)
    if dirs == 2:
        out = torch.stack((out[0], out[1].flip(1)))
    out = out.permute(3, 1, 2, 0, 4).reshape(batch * samples, length, dirs * hidden)
    return out, hs[:, length], c_n


def _stepwise_layer(
    lstm: bool,
    x: Tensor,
    layer: Sequence[RecurrentWeights],
    h: Tensor,
    c: Tensor,
    batch: int,
    samples: int,
    dirs: int,
    batch_size: int | None,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One layer (all directions) with autograd recording every time step.

    For the GRU, the LSTM with projection, variable lengths and under graph
    capture; ``h`` and ``c`` are ``(dirs * S, b, H_out)`` and ``(dirs * S, b,
    H)`` (the GRU passes ``h`` as ``c`` and gets it back). ``valid``
    ``(L, dirs * S, b, 1)``: whether step ``t`` of each row is part of its
    sequence; the state does not change at other steps. Returns the folded
    output and the final ``h`` and ``c``.
    """
    hidden = layer[0][1].shape[-2] // GATES["LSTM" if lstm else "GRU"]
    w_ih = _cat_directions([w[0] for w in layer], 2, samples, 1)
    b_ih = _cat_directions([w[2] for w in layer], 1, samples, 1)
    assert w_ih is not None
    # All time steps and directions of the layer in one (batched) matmul.
    steps = _time_major(
        functional.linear(x, w_ih, b_ih, batch_size), batch, samples, dirs
    )
    w_hh = _cat_directions([w[1] for w in layer], 2, samples, 0)
    b_hh = _cat_directions([w[3] for w in layer], 1, samples, 0)
    w_hr = _cat_directions([w[4] for w in layer], 2, samples, 0)
    assert w_hh is not None
    w_hh_t = w_hh.transpose(1, 2)
    w_hr_t = None if w_hr is None else w_hr.transpose(1, 2)
    bias = None if b_hh is None else b_hh.unsqueeze(1)
    # Without gradients the outputs go straight into one tensor: no list of
    # per-step tensors and no stacked copy of it (kept per-step tensors among
    # the freed temporaries also fragmented the heap: 18 % more RSS).
    out_size = h.shape[-1]
    stacked = (
        None
        if torch.is_grad_enabled()
        else h.new_empty(steps.shape[0], *h.shape[:-1], out_size)
    )
    outputs = []
    for t, step in enumerate(steps):
        gh = torch.bmm(h, w_hh_t) if bias is None else torch.baddbmm(bias, h, w_hh_t)
        if lstm:
            gates = step + gh
            sig = torch.sigmoid(gates)
            i, f, _, o = sig.chunk(4, -1)
            g = torch.tanh(gates[..., 2 * hidden : 3 * hidden])
            c_new = f * c + i * g
            h_new = o * torch.tanh(c_new)
            if w_hr_t is not None:
                h_new = torch.bmm(h_new, w_hr_t)
            c = c_new if valid is None else torch.where(valid[t], c_new, c)
        else:
            xr, xz, xn = step.chunk(3, -1)
            hr, hz, hn = gh.chunk(3, -1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h_new = n + z * (h - n)
        h = h_new if valid is None else torch.where(valid[t], h_new, h)
        if stacked is None:
            outputs.append(h)
        else:
            h = stacked[t].copy_(h)
    x = _batch_major(
        torch.stack(outputs) if stacked is None else stacked, batch, samples, dirs
    )
    return x, h, c


def _valid_steps(lengths: Tensor, length: int, dirs: int, samples: int) -> Tensor:
    """``(L, dirs * S, b, 1)``: step ``t`` of each direction inside each sequence.

    The reverse direction runs in reversed time: its step ``t`` is position
    ``L - 1 - t``, inside a sequence of length ``n`` iff ``t >= L - n``.
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be one-dimensional, got {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > length).any()):
        raise ValueError(
            f"lengths must be between 1 and the padded length {length}, got "
            f"{lengths.tolist()}"
        )
    steps = torch.arange(length, device=lengths.device).unsqueeze(1)
    lengths = lengths.to(steps.device).unsqueeze(0)
    directions = [steps < lengths, steps >= length - lengths][:dirs]
    valid = torch.stack(directions, 1)  # (L, dirs, b)
    batch = valid.shape[-1]
    valid = valid.unsqueeze(2).expand(length, dirs, samples, batch)
    return valid.reshape(length, dirs * samples, batch, 1)


def _rows(
    input: Tensor,
    weights: Sequence[Sequence[RecurrentWeights]],
    batch_size: int | None,
) -> tuple[int, Tensor, int, bool]:
    """The particles ``S``, ``input`` with a broadcast row expanded, its examples ``b``.

    And whether ``input`` is shared by the particles (``b`` rows; else folded,
    ``b * S``), as its leading size tells
    (:func:`pyrolite_bnn.layers.functional._is_shared`).
    """
    samples = max(
        _flat_particles(t, 1 if k in (2, 3) else 2).shape[0]
        for layer in weights
        for direction in layer
        for k, t in enumerate(direction)
        if t is not None
    )
    if samples > 1:
        input = _batch_rows(input, samples, batch_size)
    rows = input.shape[0]
    shared = samples > 1 and _is_shared(input, samples, batch_size)
    batch = rows if shared or samples == 1 else rows // samples
    return samples, input, batch, shared


def recurrent_batch(
    input: Tensor,
    weights: Sequence[Sequence[RecurrentWeights]],
    batch_size: int | None,
) -> int:
    """The examples ``b`` of a recurrent input: its states have ``b`` or ``b * S`` rows.

    :func:`recurrent`'s reading of ``input``: shared by the ``S`` particles of
    ``weights`` (``b`` rows) or folded with them (``b * S`` rows). Not
    necessarily the outermost call's ``batch_size``: a network that moves
    positions into the batch (``(B, T, L, F)`` to ``(B * T, L, F)``) runs its
    recurrence over ``B * T`` sequences, as ``torch.nn`` layers do.

    Args:
        input: batch-first ``(rows, L, in)``.
        weights: as :func:`recurrent` takes them.
        batch_size: the outermost call's batch size.

    Example:
        >>> import torch
        >>> w = (torch.randn(3, 1, 8, 5), torch.randn(3, 1, 8, 2), None, None, None)
        >>> recurrent_batch(torch.randn(4, 6, 5), [[w]], 4)  # shared by 3 particles
        4
        >>> recurrent_batch(torch.randn(12, 6, 5), [[w]], 4)  # folded
        4
    """
    return _rows(input, weights, batch_size)[2]


def recurrent(
    mode: str,
    input: Tensor,
    weights: Sequence[Sequence[RecurrentWeights]],
    hx: Tensor | None,
    cx: Tensor | None,
    dropout: float,
    training: bool,
    batch_size: int | None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """A multi-layer LSTM or GRU for ``S`` weight draws at once.

    The arithmetic is that of :class:`torch.nn.LSTM` / :class:`torch.nn.GRU`
    (gate order ``i, f, g, o`` and ``r, z, n``; optional projection
    ``h = W_hr h`` of the LSTM), for every particle with its own weights.

    Args:
        mode: ``"LSTM"`` or ``"GRU"``.
        input: batch-first ``(rows, L, in)``, shared (``rows == batch_size``) or
            folded.
        weights: per layer, per direction (1 or 2), the tuple
            ``(w_ih, w_hh, b_ih, b_hh, w_hr)``, each with optional leading
            particle dimensions; ``w_ih`` is ``(G * H, in)``, ``w_hh``
            ``(G * H, H_out)``, ``w_hr`` ``(H_out, H)`` or ``None``.
        hx: initial hidden state ``(rows, num_layers * dirs, H_out)``, shared
            or folded, or ``None`` (zeros).
        cx: initial cell state ``(rows, num_layers * dirs, H)`` of the LSTM, or
            ``None`` (zeros).
        dropout: dropout probability on the outputs of every layer but the last.
        training: apply ``dropout`` (training mode).
        batch_size: the outermost call's batch size.
        lengths: ``(b,)`` lengths of the sequences (padded at the end), or
            ``None`` (all of length ``L``): each direction reads only the
            first ``lengths[i]`` steps of sequence ``i`` (the reverse one
            starts at its last), as torch does for a ``PackedSequence``; the
            output at padded steps is the last state and is not meant to be
            read.

    Returns:
        ``(output, h_n, c_n)``, all folded and batch-first: output
        ``(b * S, L, dirs * H_out)``, ``h_n`` ``(b * S, num_layers * dirs,
        H_out)``, ``c_n`` like ``h_n`` with ``H`` (LSTM) or ``None`` (GRU).

    Example:
        >>> import torch
        >>> w = (torch.randn(3, 1, 8, 5), torch.randn(3, 1, 8, 2), None, None, None)
        >>> out, h_n, c_n = recurrent(
        ...     "LSTM", torch.randn(4, 6, 5), [[w]], None, None, 0.0, False, 4
        ... )
        >>> out.shape, h_n.shape, c_n.shape
        (torch.Size([12, 6, 2]), torch.Size([12, 1, 2]), torch.Size([12, 1, 2]))
    """
    if mode not in GATES:
        raise ValueError(f"mode must be one of {sorted(GATES)}, got {mode!r}")
    if input.dim() != 3:
        raise ValueError(
            f"recurrent input must be batch-first (batch, sequence, features), got "
            f"shape {tuple(input.shape)}"
        )
    lstm = mode == "LSTM"
    layers, dirs = len(weights), len(weights[0])
    samples, input, batch, shared = _rows(input, weights, batch_size)
    w_hh0 = weights[0][0][1]
    w_hr0 = weights[0][0][4]
    out_size = w_hh0.shape[-1]
    hidden = w_hh0.shape[-2] // GATES[mode]
    h_all = _initial_state(hx, "h0", layers, dirs, out_size, batch, samples, input)
    c_all = (
        _initial_state(cx, "c0", layers, dirs, hidden, batch, samples, input)
        if lstm
        else None
    )
    if w_hr0 is None and lstm and out_size != hidden:
        raise ValueError("w_hh must be (4 * H, H) without a projection")
    valid = (
        None
        if lengths is None
        else _valid_steps(lengths, input.shape[1], dirs, samples)
    )
    x = input
    # Graph capture (compile=True) differentiates the traced ops itself and
    # cannot trace the fused recurrence's buffer writes, and torch.func's
    # transforms and forward-mode AD (it has no jvp) cannot run its autograd
    # Function: autograd's ops there.
    autograd_only = (
        is_capturing()
        or torch.compiler.is_compiling()
        or transforms_active()
        or forward_ad_active()
    )
    h_n: list[Tensor] = []
    c_n: list[Tensor] = []
    for index, layer in enumerate(weights):
        h = h_all[index]
        c = c_all[index] if c_all is not None else h
        if lstm and layer[0][4] is None and not autograd_only:
            first = shared and index == 0
            x, h, c = _lstm_layer(x, layer, h, c, batch, samples, first, valid)
        else:
            x, h, c = _stepwise_layer(
                lstm, x, layer, h, c, batch, samples, dirs, batch_size, valid
            )
        if dropout > 0 and training and index < layers - 1:
            x = F.dropout(x, dropout, training=True)
        h_n.append(h)
        c_n.append(c)
    return (
        x,
        _final_states(h_n, batch, samples, dirs),
        _final_states(c_n, batch, samples, dirs) if lstm else None,
    )
