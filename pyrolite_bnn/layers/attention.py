"""Bayesian multi-head attention: ``VIMultiheadAttention``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import init

from pyrolite_bnn import _particles
from pyrolite_bnn._validation import check_floating_input, check_integer
from pyrolite_bnn.distributions.variational import VariationalFamily
from pyrolite_bnn.layers._initialisers import ZerosAfter
from pyrolite_bnn.layers._options import Estimator, per_variable
from pyrolite_bnn.layers._sequence import (
    SequenceFirst,
    check_drawn_estimator,
    check_option_keys,
    in_batch_first_body,
    note_batch_folded,
    own_option,
    sub_option,
    unfold_sequence,
)
from pyrolite_bnn.layers.functional import current_batch_size
from pyrolite_bnn.layers.functional_attention import multi_head_attention
from pyrolite_bnn.layers.linear import VILinear
from pyrolite_bnn.layers.registry import LayerCase, has_weight, register
from pyrolite_bnn.module import VIModule
from pyrolite_bnn.variables import UnitLayout

__all__ = ["VIMultiheadAttention"]


def _arguments(module: Any) -> dict[str, Any]:
    """Constructor arguments of a torch or Bayesian attention layer (registry)."""
    same = has_weight(module, "in_proj_weight")
    return {
        "embed_dim": module.embed_dim,
        "num_heads": module.num_heads,
        "dropout": module.dropout,
        "bias": has_weight(module, "in_proj_bias"),
        "add_bias_kv": has_weight(module, "bias_k"),
        "add_zero_attn": module.add_zero_attn,
        "kdim": None if same else module.kdim,
        "vdim": None if same else module.vdim,
        "batch_first": module.batch_first,
    }


def _torch_weights(layer: Any, means: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The torch parameter names of the variable values (registry).

    A layer whose output projection is its own variables
    (``out_proj_weight``/``out_proj_bias``,
    :class:`pyrolite_bnn.vi.VIMultiheadAttention`) gives them to torch's
    ``out_proj.weight``/``out_proj.bias``.
    """
    prefix = "out_proj_"
    return {
        f"out_proj.{name[len(prefix) :]}" if name.startswith(prefix) else name: value
        for name, value in means.items()
    }


# How the projections' means are drawn (torch's ``_reset_parameters``); the
# weights, not listed, are Xavier-uniform.
_PROJECTION_INITS: dict[str, Callable[[Tensor], Tensor]] = {
    "in_proj_bias": init.zeros_,
    "bias_k": init.xavier_normal_,
    "bias_v": init.xavier_normal_,
}


@register(
    nn.MultiheadAttention,
    read_arguments=_arguments,
    means_to_weights=_torch_weights,
    cases=(  # self-attention: the input is query, key and value
        LayerCase((8, 2), (3, 5, 8), {"batch_first": True}, copies=3),
        LayerCase((8, 2), (5, 3, 8), copies=3),
        LayerCase(
            (8, 2, 0.0, False, True, True),
            (5, 3, 8),
            forward_kwargs={"average_attn_weights": False},
            copies=3,
        ),
        LayerCase(
            (8, 2),
            (3, 5, 8),
            {"batch_first": True},
            forward_kwargs={"need_weights": False},
            copies=3,
        ),
    ),
)
class VIMultiheadAttention(VIModule):
    """Bayesian counterpart of :class:`torch.nn.MultiheadAttention`.

    The projection weights (``in_proj_weight``, or ``q_proj_weight``,
    ``k_proj_weight``, ``v_proj_weight`` when ``kdim``/``vdim`` differ from
    ``embed_dim``; ``in_proj_bias``; ``bias_k``/``bias_v`` with
    ``add_bias_kv``; ``out_proj.weight``/``out_proj.bias``) are random
    variables with torch's parameter names as site names. Each particle draws
    them once and uses them at every position; at fixed weights each particle
    computes what ``torch.nn.MultiheadAttention`` does. With
    ``need_weights=False`` the attention runs in
    :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels);
    note that torch's default is ``need_weights=True``.

    Inputs must be batched, batch-first with ``batch_first=True`` or
    sequence-first with torch's default ``batch_first=False``. Inside a
    network particles are folded into the leading dimension: ``(B * S, L, E)``
    batch-first, ``(L * S, B, E)`` sequence-first (the layer permutes the
    latter to the former and back; inside a network every sequence-first
    input must then have the network input's length, see
    :mod:`pyrolite_bnn.layers._sequence`). Masks are torch's in either
    layout: ``attn_mask`` ``(Lq, Lk)`` or ``(B * num_heads, Lq, Lk)``,
    ``key_padding_mask`` ``(B, Lk)``, boolean (``True`` = not allowed) or
    additive float; inside a network they may also be folded per particle
    (``B * S`` rows).

    Args:
        embed_dim: model dimension ``E``.
        num_heads: parallel attention heads (``E`` divisible by it).
        dropout: dropout probability on the attention weights (training).
        bias: if ``False``, no ``in_proj_bias`` and ``out_proj.bias``.
        add_bias_kv: learn ``bias_k``/``bias_v`` appended to keys and values.
        add_zero_attn: append a zero key and value.
        kdim: features of the key (default ``embed_dim``).
        vdim: features of the value (default ``embed_dim``).
        batch_first: ``(batch, sequence, feature)`` tensors if ``True``, else
            ``(sequence, batch, feature)`` (torch's default).
        prior: prior of the weights (see :class:`~pyrolite_bnn.VILinear`); a
            mapping is keyed by site name relative to this layer
            (``{"in_proj_weight": ..., "out_proj.weight": ...}``).
        variational: variational family (or mapping, as ``prior``).
        estimator: ``"auto"`` (default) or ``"reparam"``: weights are drawn.
            ``"local"``/``"flipout"`` raise: weights shared across positions
            make per-output sampling inexact.
        device: device of parameters and prior buffers.
        dtype: dtype of parameters and prior buffers.

    Shape:
        - Input: query ``(B, Lq, E)``, key ``(B, Lk, kdim)``, value
          ``(B, Lk, vdim)``; with ``batch_first=False`` ``(Lq, B, E)``,
          ``(Lk, B, kdim)``, ``(Lk, B, vdim)``.
        - Output: ``(attn_output, attn_weights)`` as the outermost module:
          ``(S, B, Lq, E)`` (``(S, Lq, B, E)`` with ``batch_first=False``) and
          ``(S, B, Lq, Lk)`` in either layout (``(S, B, num_heads, Lq, Lk)``
          with ``average_attn_weights=False``; ``None`` with
          ``need_weights=False``). Inside a network the output is folded
          (``(B * S, Lq, E)`` or ``(Lq * S, B, E)``) and the weights
          ``(B * S, Lq, Lk)``.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> mha = bnn.VIMultiheadAttention(8, 2, batch_first=True)
        >>> x = torch.randn(3, 5, 8)
        >>> out, weights = mha(x, x, x, samples=4)
        >>> out.shape, weights.shape
        (torch.Size([4, 3, 5, 8]), torch.Size([4, 3, 5, 5]))
        >>> [v.site for v in mha.random_variables()]
        ['in_proj_weight', 'in_proj_bias', 'out_proj.weight', 'out_proj.bias']
        >>> seq_first = bnn.VIMultiheadAttention(8, 2)  # torch's default layout
        >>> q, kv = torch.randn(5, 3, 8), torch.randn(7, 3, 8)
        >>> out, weights = seq_first(q, kv, kv, samples=4)
        >>> out.shape, weights.shape
        (torch.Size([4, 5, 3, 8]), torch.Size([4, 3, 5, 7]))
    """

    embed_dim: int
    num_heads: int
    dropout: float
    kdim: int
    vdim: int
    head_dim: int
    batch_first: bool
    add_zero_attn: bool
    in_proj_weight: Tensor | None
    q_proj_weight: Tensor | None
    k_proj_weight: Tensor | None
    v_proj_weight: Tensor | None
    in_proj_bias: Tensor | None
    bias_k: Tensor | None
    bias_v: Tensor | None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        *,
        prior: object = None,
        variational: VariationalFamily | Mapping[str, VariationalFamily] | None = None,
        estimator: Estimator = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        embed_dim = check_integer(embed_dim, "embed_dim")
        num_heads = check_integer(num_heads, "num_heads")
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(
                "embed_dim and num_heads must be greater than 0, got "
                f"embed_dim={embed_dim} and num_heads={num_heads} instead"
            )
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )
        self.estimator = check_drawn_estimator(estimator, variational, name)
        self.embed_dim = embed_dim
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        self.add_zero_attn = add_zero_attn
        shapes: dict[str, tuple[int, ...]] = {}
        if self._qkv_same_embed_dim:
            shapes["in_proj_weight"] = (3 * embed_dim, embed_dim)
        else:
            shapes["q_proj_weight"] = (embed_dim, embed_dim)
            shapes["k_proj_weight"] = (embed_dim, self.kdim)
            shapes["v_proj_weight"] = (embed_dim, self.vdim)
        if bias:
            shapes["in_proj_bias"] = (3 * embed_dim,)
        if add_bias_kv:
            shapes["bias_k"] = (1, 1, embed_dim)
            shapes["bias_v"] = (1, 1, embed_dim)
        names = tuple(shapes)
        # bias_k and bias_v, (1, 1, E): their output units are the E features
        features = dict.fromkeys(("bias_k", "bias_v"), UnitLayout(dim=2))
        mine = own_option(prior), own_option(variational)
        for var, shape in shapes.items():
            self.declare_random_variable(
                var,
                shape,
                per_variable(mine[0], var, "prior", names),
                per_variable(mine[1], var, "variational", names),  # type: ignore[arg-type]
                units=features.get(var),
                init=_PROJECTION_INITS.get(var, init.xavier_uniform_),
                device=device,
                dtype=dtype,
            )
        for absent in (
            "in_proj_weight",
            "q_proj_weight",
            "k_proj_weight",
            "v_proj_weight",
            "in_proj_bias",
            "bias_k",
            "bias_v",
        ):
            if absent not in shapes:
                setattr(self, absent, None)
        self.out_proj = VILinear(
            embed_dim,
            embed_dim,
            bias,
            prior=sub_option(prior, "out_proj"),
            variational=sub_option(variational, "out_proj"),  # type: ignore[arg-type]
            estimator="reparam",
            device=device,
            dtype=dtype,
        )
        check_option_keys(prior, "prior", self)
        check_option_keys(variational, "variational", self)
        if "bias" in self.out_proj.posterior:  # drawn by its constructor, then 0
            out_bias = self.out_proj.posterior["bias"]
            out_bias.loc_init = ZerosAfter(out_bias.loc_init or init.zeros_)
            out_bias.reset_parameters(torch.zeros_like(out_bias.loc))
        self._reset_projections()  # out_proj was initialised by its constructor

    def reset_parameters(self) -> None:
        """Initialise posterior means like ``torch.nn.MultiheadAttention``.

        ``out_proj.weight`` as ``nn.Linear``, Xavier-uniform projection
        weights, zero biases, Xavier-normal ``bias_k``/``bias_v``; seeded, the
        random numbers are those of torch's constructor (the output bias is
        drawn, as ``nn.Linear`` draws it, before it is set to 0). Priors return
        to the hyperparameters they were built with.
        """
        self.out_proj.reset_parameters()
        self._reset_projections()
        self.reset_priors()

    def _reset_projections(self) -> None:
        """The projections' means, each drawn by its ``loc_init``, in torch's order."""
        for var in self._declared:
            posterior = self.posterior[var]
            posterior.reset_parameters(posterior.initial_loc())

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to ``key``/``value`` for every particle."""
        layout = (
            "batch-first {} of shape (batch, sequence, "
            if self.batch_first
            else "sequence-first {} of shape (sequence, batch, "
        )
        for what, tensor, size in (
            ("query", query, self.embed_dim),
            ("key", key, self.kdim),
            ("value", value, self.vdim),
        ):
            check_floating_input(tensor, type(self).__name__, what)
            if tensor.dim() != 3 or tensor.shape[-1] != size:
                raise ValueError(
                    f"{type(self).__name__}(embed_dim={self.embed_dim}, "
                    f"batch_first={self.batch_first}) expected "
                    f"{layout.format(what)}{size}), got {tuple(tensor.shape)}"
                )
        options = (key_padding_mask, need_weights, attn_mask)
        options2 = (average_attn_weights, is_causal)
        if self.batch_first or in_batch_first_body():
            return self._attend(query, key, value, *options, *options2)
        # Sequence-first: run the batch-first fold (see layers/_sequence.py).
        seq = SequenceFirst(self, query.shape[1])
        q = seq.batch_first(query, "query")
        k = q if key is query else seq.batch_first(key, "key")
        v = k if value is key else seq.batch_first(value, "value")
        with seq.body():
            out, weights = self._attend(q, k, v, *options, *options2)
        note_batch_folded(weights, 0)
        return seq.sequence_first(out), weights

    def _attend(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        need_weights: bool,
        attn_mask: Tensor | None,
        average_attn_weights: bool,
        is_causal: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """The batch-first attention (folded ``(B * S, L, E)`` or shared inputs)."""
        return multi_head_attention(
            query,
            key,
            value,
            self.num_heads,
            self.in_proj_weight,
            self.in_proj_bias,
            self.bias_k,
            self.bias_v,
            self.add_zero_attn,
            self.dropout,
            *self.output_projection(),
            training=self.training,
            batch_size=current_batch_size(),
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
            q_proj_weight=self.q_proj_weight,
            k_proj_weight=self.k_proj_weight,
            v_proj_weight=self.v_proj_weight,
        )

    def output_projection(self) -> tuple[Tensor, Tensor | None]:
        """Weight and bias of the output projection (``out_proj``) for ``forward``."""
        return self.out_proj.weight, self.out_proj.bias

    def unfold_output(
        self, output: Any, state: _particles.ParticleState
    ) -> tuple[Tensor, Tensor | None]:
        """Sequence-first: ``(S, Lq, B, E)`` and weights ``(S, B, Lq, Lk)``.

        Each particle's output is torch's (the attention weights are
        batch-first in torch for either layout).
        """
        if self.batch_first:
            return super().unfold_output(output, state)  # type: ignore[no-any-return]
        out, weights = output
        samples = state.samples
        return (
            unfold_sequence(out, samples),
            None if weights is None else _particles.unfold_at(weights, samples, 0),
        )

    def extra_repr(self) -> str:
        """Constructor arguments (non-defaults only)."""
        text = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
        if self.dropout:
            text += f", dropout={self.dropout}"
        if "in_proj_bias" not in self.posterior:
            text += ", bias=False"
        if "bias_k" in self.posterior:
            text += ", add_bias_kv=True"
        if self.add_zero_attn:
            text += ", add_zero_attn=True"
        if not self._qkv_same_embed_dim:
            text += f", kdim={self.kdim}, vdim={self.vdim}"
        text += f", batch_first={self.batch_first}"
        return text
