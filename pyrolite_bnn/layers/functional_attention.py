"""Multi-head attention batched over particles, with no Python loop over samples.

Query, key and value are batch-first, shared ``(B, L, E)`` or folded
``(b * S, L, E)`` (see :mod:`pyrolite_bnn.layers.functional`). The projections
run as one batched matmul per weight for all ``S`` particles; the attention
itself then works on ``(b * S, heads, L, head_dim)`` tensors, through
:func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels) unless
the attention weights are asked for.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pyrolite_bnn.layers import functional
from pyrolite_bnn.layers.functional import _flat_particles, _fold_shared

__all__ = ["canonical_mask", "multi_head_attention"]


def canonical_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (``True`` = not allowed) as an additive float mask.

    Float masks are returned unchanged.
    """
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise TypeError(
            f"only bool and floating attention masks are supported, got {mask.dtype}"
        )
    return mask


def _per_row(tensor: Tensor, rows: int, samples: int, what: str) -> Tensor:
    """A shared (``rows // samples``) or folded (``rows``) tensor as folded."""
    if tensor.shape[0] == rows:
        return tensor
    if samples > 1 and tensor.shape[0] * samples == rows:
        return _fold_shared(tensor, samples)
    raise ValueError(
        f"{what} has leading size {tensor.shape[0]}; expected the batch size "
        f"{rows // samples} (shared by all particles) or {rows} (folded)"
    )


def _check_mask_shape(
    mask: Tensor, lengths: tuple[int, int], rows: int, samples: int, heads: int
) -> None:
    """Check ``attn_mask`` against torch's shapes ``(Lq, Lk)``, ``(B * heads, Lq, Lk)``.

    A 3-D mask may also be folded, ``(B * S * heads, Lq, Lk)``.
    """
    if mask.dim() == 2 and tuple(mask.shape) != lengths:
        raise ValueError(
            f"the 2-D attn_mask has shape {tuple(mask.shape)}; expected "
            f"(target length, source length) = {lengths}"
        )
    if mask.dim() == 3:
        batch = rows // samples
        leading = {batch * heads, rows * heads}
        if tuple(mask.shape[1:]) != lengths or mask.shape[0] not in leading:
            folded = "" if samples == 1 else f" or, folded, {(rows * heads, *lengths)}"
            raise ValueError(
                f"the 3-D attn_mask has shape {tuple(mask.shape)}; expected "
                f"(batch * num_heads, target length, source length) = "
                f"{(batch * heads, *lengths)}{folded}"
            )
    elif mask.dim() != 2:
        raise ValueError(f"attn_mask must be 2-D or 3-D, got {mask.dim()} dimensions")


def _particle_rows(param: Tensor, rows: int) -> Tensor:
    """A ``(..., 1, 1, E)`` parameter as one ``(1, E)`` row per folded example."""
    flat = _flat_particles(param, 1)  # (S, E)
    samples, size = flat.shape
    per_particle = rows // samples
    return flat.unsqueeze(0).expand(per_particle, samples, size).reshape(rows, 1, size)


def _project(
    inputs: tuple[Tensor, ...],
    weight: Tensor,
    bias: Tensor | None,
    batch_size: int | None,
) -> tuple[Tensor, ...]:
    """One (batched) matmul for inputs sharing a weight, split into its parts."""
    out = functional.linear(inputs[0], weight, bias, batch_size)
    return out.chunk(len(inputs), -1)


def multi_head_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    num_heads: int,
    in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None,
    bias_k: Tensor | None,
    bias_v: Tensor | None,
    add_zero_attn: bool,
    dropout_p: float,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    *,
    training: bool,
    batch_size: int | None,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
    q_proj_weight: Tensor | None = None,
    k_proj_weight: Tensor | None = None,
    v_proj_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``F.multi_head_attention_forward`` (batch-first) for ``S`` weight draws.

    Every weight may carry leading particle dimensions. Masks follow
    :class:`torch.nn.MultiheadAttention`: ``attn_mask`` is ``(Lq, Lk)`` or
    ``(rows * num_heads, Lq, Lk)`` and ``key_padding_mask`` ``(rows, Lk)``,
    boolean (``True`` = ignore) or additive float, with ``rows`` the batch size
    (shared by all particles) or ``b * S`` (folded). ``is_causal`` is the same
    hint as in torch: with no key padding mask and ``need_weights=False`` it
    replaces ``attn_mask`` by a causal mask inside the fused kernel.

    Args:
        query: ``(rows, Lq, E)``.
        key: ``(rows, Lk, kdim)``.
        value: ``(rows, Lk, vdim)``.
        num_heads: attention heads (divides ``E``).
        in_proj_weight: ``(..., 3E, E)``, or ``None`` with separate
            ``q/k/v_proj_weight``.
        in_proj_bias: ``(..., 3E)`` or ``None``.
        bias_k: ``(..., 1, 1, E)`` appended to the keys, or ``None``.
        bias_v: ``(..., 1, 1, E)`` appended to the values, or ``None``.
        add_zero_attn: append a zero key and value.
        dropout_p: dropout on the attention weights (training only).
        out_proj_weight: ``(..., E, E)``.
        out_proj_bias: ``(..., E)`` or ``None``.
        training: apply dropout.
        batch_size: the outermost call's batch size.
        key_padding_mask: see above.
        need_weights: also return the attention weights (no fused kernel).
        attn_mask: see above.
        average_attn_weights: average the returned weights over heads.
        is_causal: causal-mask hint (see above).
        q_proj_weight: ``(..., E, E)`` when ``in_proj_weight`` is ``None``.
        k_proj_weight: ``(..., E, kdim)``.
        v_proj_weight: ``(..., E, vdim)``.

    Returns:
        ``(output, weights)``: folded ``(b * S, Lq, E)`` and, with
        ``need_weights``, ``(b * S, Lq, Lk)`` (``(b * S, heads, Lq, Lk)`` if not
        averaged), else ``None``.

    Example:
        >>> import torch
        >>> w_in, w_out = torch.randn(5, 1, 12, 4), torch.randn(5, 1, 4, 4)
        >>> x = torch.randn(2, 7, 4)
        >>> out, weights = multi_head_attention(
        ...     x, x, x, 2, w_in, None, None, None, False, 0.0, w_out, None,
        ...     training=False, batch_size=2)
        >>> out.shape, weights.shape
        (torch.Size([10, 7, 4]), torch.Size([10, 7, 7]))
    """
    if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
        raise ValueError(
            "attention inputs must be batch-first (batch, sequence, features), got "
            f"query {tuple(query.shape)}, key {tuple(key.shape)}, value "
            f"{tuple(value.shape)}"
        )
    samples = _flat_particles(out_proj_weight, 2).shape[0]
    batches = [
        functional.examples_of(t, samples, batch_size) for t in (query, key, value)
    ]
    if key.shape[1] != value.shape[1] or len(set(batches)) > 1:
        shapes = ", ".join(
            f"{name} {tuple(t.shape)}"
            for name, t in (("query", query), ("key", key), ("value", value))
        )
        raise ValueError(
            f"query, key and value must hold the same batch (here {batches} "
            f"examples) and key and value the same sequence length; got {shapes}"
            + ("" if samples == 1 else f" with samples={samples} particles")
        )
    dtype = query.dtype
    key_padding_mask = canonical_mask(key_padding_mask, dtype)
    if is_causal and attn_mask is None:
        raise RuntimeError(
            "Need attn_mask if specifying the is_causal hint. You may use the "
            "Transformer module method `generate_square_subsequent_mask` to create "
            "this mask."
        )
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None
    else:
        attn_mask = canonical_mask(attn_mask, dtype)
        if key_padding_mask is not None:
            is_causal = False

    # Projections: one batched matmul per weight for all particles.
    if in_proj_weight is not None:
        embed = in_proj_weight.shape[-1]
        w = _flat_particles(in_proj_weight, 2)
        b = None if in_proj_bias is None else _flat_particles(in_proj_bias, 1)
        if query is key and key is value:
            q, k, v = _project((query, key, value), w, b, batch_size)
        else:
            (q,) = _project(
                (query,), w[:, :embed], None if b is None else b[:, :embed], batch_size
            )
            w_kv, b_kv = w[:, embed:], None if b is None else b[:, embed:]
            if key is value:
                k, v = _project((key, value), w_kv, b_kv, batch_size)
            else:
                (k,) = _project(
                    (key,),
                    w_kv[:, :embed],
                    None if b_kv is None else b_kv[:, :embed],
                    batch_size,
                )
                (v,) = _project(
                    (value,),
                    w_kv[:, embed:],
                    None if b_kv is None else b_kv[:, embed:],
                    batch_size,
                )
    else:
        if q_proj_weight is None or k_proj_weight is None or v_proj_weight is None:
            raise ValueError("q/k/v_proj_weight are needed without in_proj_weight")
        embed = q_proj_weight.shape[-2]
        b = None if in_proj_bias is None else _flat_particles(in_proj_bias, 1)
        parts = (None, None, None) if b is None else b.chunk(3, -1)
        (q,) = _project((query,), q_proj_weight, parts[0], batch_size)
        (k,) = _project((key,), k_proj_weight, parts[1], batch_size)
        (v,) = _project((value,), v_proj_weight, parts[2], batch_size)

    rows = max(q.shape[0], k.shape[0])
    q = _per_row(q, rows, samples, "query")
    k = _per_row(k, rows, samples, "key")
    v = _per_row(v, rows, samples, "value")
    target, head_dim = q.shape[1], embed // num_heads
    if head_dim * num_heads != embed:
        raise ValueError(f"embed_dim {embed} not divisible by num_heads {num_heads}")

    if attn_mask is not None:
        _check_mask_shape(attn_mask, (target, k.shape[1]), rows, samples, num_heads)
        if attn_mask.dim() == 3:
            # (rows * heads, Lq, Lk), shared or folded, as (rows, heads, Lq, Lk).
            per_example = attn_mask.reshape(-1, num_heads, *attn_mask.shape[1:])
            attn_mask = _per_row(per_example, rows, samples, "attn_mask")
    if bias_k is not None and bias_v is not None:
        k = torch.cat([k, _particle_rows(bias_k, rows)], 1)
        v = torch.cat([v, _particle_rows(bias_v, rows)], 1)
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        key_padding_mask = (
            None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        )
    elif bias_k is not None or bias_v is not None:
        raise ValueError("bias_k and bias_v must both be given, or neither")

    # (rows, L, E) -> (rows, heads, L, head_dim)
    q = q.reshape(rows, target, num_heads, head_dim).transpose(1, 2)
    k = k.reshape(rows, k.shape[1], num_heads, head_dim).transpose(1, 2)
    v = v.reshape(rows, v.shape[1], num_heads, head_dim).transpose(1, 2)
    if add_zero_attn:
        zeros = q.new_zeros(rows, num_heads, 1, head_dim)
        k, v = torch.cat([k, zeros], 2), torch.cat([v, zeros], 2)
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        key_padding_mask = (
            None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        )
    source = k.shape[2]
    if key_padding_mask is not None:
        if key_padding_mask.shape[-1] != source:
            raise ValueError(
                f"key_padding_mask must be (batch, {source}), got "
                f"{tuple(key_padding_mask.shape)}"
            )
        padding = _per_row(key_padding_mask, rows, samples, "key_padding_mask")
        padding = padding.reshape(rows, 1, 1, source)
        attn_mask = padding if attn_mask is None else attn_mask + padding
    if not training:
        dropout_p = 0.0

    weights = None
    if need_weights:
        scores = torch.matmul(q * math.sqrt(1.0 / head_dim), k.transpose(-2, -1))
        if attn_mask is not None:
            scores = scores + attn_mask
        weights = torch.softmax(scores, dim=-1)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        out = torch.matmul(weights, v)
        if average_attn_weights:
            weights = weights.mean(dim=1)
    else:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask, dropout_p, is_causal=is_causal
        )
    out = out.transpose(1, 2).reshape(rows, target, embed)
    return functional.linear(out, out_proj_weight, out_proj_bias, batch_size), weights
