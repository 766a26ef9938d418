"""torch_blue's attention and transformer layers, with its signatures.

Each class is the :mod:`pyrolite_bnn` layer of the same name
(:class:`pyrolite_bnn.VIMultiheadAttention`, ``VITransformer*``) taking
torch_blue's arguments: no ``dropout`` (torch_blue has none), the
``variational_distribution``/``prior`` objects of :mod:`pyrolite_bnn.vi.distributions`,
``return_log_probs``. The transformer layers are built from the ``vi``
sublayers (:class:`VIMultiheadAttention`, :class:`~pyrolite_bnn.vi.VILinear`),
so every weight follows torch_blue's options and each layer has torch_blue's
``bias`` flag. The defaults of ``batch_first`` are torch_blue's:
``True`` for the attention and transformer layers, ``False`` for
``VITransformer``; ``batch_first=False`` takes sequence-first tensors
``(L, B, E)`` and returns ``(S, L, B, E)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pyrolite_bnn.layers.attention import VIMultiheadAttention as BnnAttention
from pyrolite_bnn.layers.transformer import VITransformer as BnnTransformer
from pyrolite_bnn.layers.transformer import (
    VITransformerDecoder as BnnDecoder,
)
from pyrolite_bnn.layers.transformer import (
    VITransformerDecoderLayer as BnnDecoderLayer,
)
from pyrolite_bnn.layers.transformer import (
    VITransformerEncoder as BnnEncoder,
)
from pyrolite_bnn.layers.transformer import (
    VITransformerEncoderLayer as BnnEncoderLayer,
)
from pyrolite_bnn.vi.base import VariableSpecs, VIModule, reset_as_constructed
from pyrolite_bnn.vi.linear import VILinear
from pyrolite_bnn.vi.utils.common_types import vikwargs_of

__all__ = [
    "VIMultiheadAttention",
    "VITransformer",
    "VITransformerDecoder",
    "VITransformerDecoderLayer",
    "VITransformerEncoder",
    "VITransformerEncoderLayer",
]


def _vi_sublayers(
    layer: nn.Module,
    attention: tuple[str, ...],
    d_model: int,
    nhead: int,
    dim_feedforward: int,
    batch_first: bool,
    bias: bool,
    vikwargs: dict[str, Any],
) -> None:
    """Give a transformer layer the :mod:`~pyrolite_bnn.vi` sublayers of torch_blue.

    The attention blocks named ``attention`` become :class:`VIMultiheadAttention`
    and the feed-forward block's ``linear1``/``linear2`` :class:`VILinear`
    (drawing their weights, as the library's layers), each with the layer's
    torch_blue options; the library's layer keeps its computation.
    """
    for name in attention:
        setattr(
            layer,
            name,
            VIMultiheadAttention(
                d_model, nhead, bias, batch_first=batch_first, **vikwargs
            ),
        )
    layer.linear1 = VILinear(
        d_model, dim_feedforward, bias=bias, estimator="reparam", **vikwargs
    )
    layer.linear2 = VILinear(
        dim_feedforward, d_model, bias=bias, estimator="reparam", **vikwargs
    )


def _layer_bias(layer: nn.Module) -> bool:
    """torch_blue's ``bias`` flag of a stack: whether its layer has biases."""
    flag = getattr(layer, "bias", None)
    if isinstance(flag, bool):
        return flag
    norm = getattr(layer, "norm1", None)  # a pyrolite_bnn or torch layer
    return getattr(norm, "bias", None) is not None


class VIMultiheadAttention(BnnAttention, VIModule):
    """Bayesian multi-head attention with torch_blue's arguments.

    Random variables (torch_blue's names and order, ``None`` when absent):
    ``in_proj_weight`` or ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``,
    ``out_proj_weight``, ``in_proj_bias``, ``out_proj_bias``, ``bias_k``,
    ``bias_v`` (the library layer's output projection is the sublayer
    ``out_proj``; here it is the layer's own two variables, as in torch_blue).
    The computation is :class:`pyrolite_bnn.VIMultiheadAttention`'s
    (scaled-dot-product attention when no weights are requested).

    Args:
        embed_dim: model dimension.
        num_heads: number of heads (must divide ``embed_dim``).
        bias: input and output projection biases.
        add_bias_kv: learned biases appended to key and value sequences.
        add_zero_attn: a zero position appended to key and value.
        kdim: key dimension (default ``embed_dim``).
        vdim: value dimension (default ``embed_dim``).
        batch_first: ``(batch, sequence, feature)`` tensors if ``True`` (the
            default), else ``(sequence, batch, feature)``.
        variational_distribution: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        prior: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        kaiming_initialization: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        prior_initialization: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        rescale_prior: see :class:`~pyrolite_bnn.vi.VIkwargs` (torch_blue's default
            here: ``True``).
        return_log_probs: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        device: device of the parameters.
        dtype: dtype of the parameters.

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> attention = vi.VIMultiheadAttention(8, 2)
        >>> attention.random_variables
        ('in_proj_weight', 'q_proj_weight', 'k_proj_weight', 'v_proj_weight', \
'out_proj_weight', 'in_proj_bias', 'out_proj_bias', 'bias_k', 'bias_v')
        >>> attention._out_proj_weight_log_std.shape
        torch.Size([8, 8])
        >>> x = torch.randn(3, 5, 8)
        >>> out, weights = attention(x, x, x, samples=4)
        >>> out.shape, weights.shape
        (torch.Size([4, 3, 5, 8]), torch.Size([4, 3, 5, 5]))
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = True,
        variational_distribution: Any = None,
        prior: Any = None,
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        rescale_prior: bool = True,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if num_heads <= 0 or embed_dim % num_heads:
            raise AssertionError("embed_dim must be divisible by num_heads")
        same = (kdim in (None, embed_dim)) and (vdim in (None, embed_dim))
        d = embed_dim
        shapes: dict[str, tuple[int, ...] | None] = {
            "in_proj_weight": (3 * d, d) if same else None,
            "q_proj_weight": None if same else (d, d),
            "k_proj_weight": None if same else (d, kdim or d),
            "v_proj_weight": None if same else (d, vdim or d),
            "out_proj_weight": (d, d),
            "in_proj_bias": (3 * d,) if bias else None,
            "out_proj_bias": (d,) if bias else None,
            "bias_k": (1, 1, d) if add_bias_kv else None,
            "bias_v": (1, 1, d) if add_bias_kv else None,
        }
        options = (
            variational_distribution,
            prior,
            rescale_prior,
            kaiming_initialization,
            prior_initialization,
        )
        specs = VariableSpecs(shapes, *options)
        priors, families = specs.bnn_priors(), specs.bnn_families()
        projection = ("out_proj_weight", "out_proj_bias")
        super().__init__(
            embed_dim,
            num_heads,
            0.0,
            bias,
            add_bias_kv,
            add_zero_attn,
            kdim,
            vdim,
            batch_first,
            prior={k: v for k, v in priors.items() if k not in projection},
            variational={k: v for k, v in families.items() if k not in projection},
            device=device,
            dtype=dtype,
        )
        self.bias = bias
        # torch_blue's output projection is two variables of the layer itself,
        # not the library layer's ``out_proj`` sublayer.
        del self.out_proj
        for name in projection:
            shape = specs.shapes[name]
            if shape is not None:
                self.declare_random_variable(
                    name,
                    shape,
                    priors[name],
                    families[name],
                    device=device,
                    dtype=dtype,
                )
        self.adopt_specs(specs)
        self.return_log_probs = return_log_probs

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        *,
        need_weights: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to ``key``/``value``, in torch_blue's argument order.

        torch_blue's order is ``attn_mask`` before ``key_padding_mask`` (torch's,
        and :class:`pyrolite_bnn.VIMultiheadAttention`'s, is ``key_padding_mask``,
        ``need_weights``, ``attn_mask``), so ``attention(x, x, x, causal_mask)``
        is a causal attention mask here, as in torch_blue. torch_blue has no
        ``need_weights`` (it always returns the weights); the keyword-only
        ``need_weights=False`` of this layer skips them (``None``, with the
        fused kernel), as torch's transformer layers ask of it.

        Args:
            query: queries (see :class:`pyrolite_bnn.VIMultiheadAttention`).
            key: keys.
            value: values.
            attn_mask: attention mask ``(Lq, Lk)`` or ``(B * num_heads, Lq, Lk)``.
            key_padding_mask: key padding mask ``(B, Lk)``.
            average_attn_weights: average the returned weights over the heads.
            is_causal: a hint that ``attn_mask`` is the causal mask.
            need_weights: also return the attention weights.

        Returns:
            The attention output and the attention weights (``None`` with
            ``need_weights=False``).
        """
        return super().forward(
            query,
            key,
            value,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )

    def output_projection(self) -> tuple[Tensor, Tensor | None]:
        """The variables ``out_proj_weight`` and ``out_proj_bias`` (or ``None``)."""
        return self.out_proj_weight, self.out_proj_bias

    def reset_parameters(self) -> None:
        """Re-initialise every variable the torch_blue way, and the priors.

        :func:`~pyrolite_bnn.vi.base.reset_as_constructed`:
        ``reset_variational_parameters()``, then
        :meth:`~pyrolite_bnn.VIModule.reset_priors` (after ``to_empty`` the
        priors hold no values either).
        """
        reset_as_constructed(self, super().reset_parameters)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any
    ) -> None:
        # torch_blue 1.1.0 kept the output projection as a sublayer
        # (``out_proj._weight_mean``); its dev branch as two variables.
        _move_keys(state_dict, prefix + "out_proj._", prefix + "_out_proj_")
        super()._load_from_state_dict(state_dict, prefix, *args)


class ConvertedMultiheadAttention(VIMultiheadAttention):
    """A torch ``nn.MultiheadAttention`` made Bayesian by ``convert_to_vimodule``.

    :class:`VIMultiheadAttention` with torch's argument order, which the
    converted model's own code was written for: ``attention(x, x, x, mask)``
    in a torch ``forward`` passes a ``key_padding_mask`` (torch_blue's order
    would read it as an attention mask, silently where ``B == L``), and
    ``need_weights`` comes fifth.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pyrolite_bnn import vi
        >>> class Model(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        ...     def forward(self, x, padding):
        ...         return self.attn(x, x, x, padding, False)[0]  # torch's order
        >>> model = vi.convert_to_vimodule(Model())
        >>> type(model.attn).__name__
        'ConvertedMultiheadAttention'
        >>> x, padding = torch.randn(3, 5, 8), torch.zeros(3, 5, dtype=torch.bool)
        >>> out, weights = model.attn(x, x, x, padding, False, samples=2)
        >>> out.shape, weights
        (torch.Size([2, 3, 5, 8]), None)
    """

    forward = BnnAttention.forward  # type: ignore[assignment]


def _move_keys(state_dict: dict[str, Any], old: str, new: str) -> None:
    """Rename the keys starting with ``old`` to start with ``new`` instead."""
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[new + key[len(old) :]] = state_dict.pop(key)


class _DevFeedForwardKeys(nn.Module):
    """Loads torch_blue dev-branch checkpoints of a transformer layer.

    The dev branch keeps the feed-forward block as ``_ff_block`` (a
    sequential of linear, activation, linear): its ``_ff_block.0`` and
    ``_ff_block.2`` are ``linear1`` and ``linear2`` here (1.1.0's names).
    """

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any
    ) -> None:
        _move_keys(state_dict, prefix + "_ff_block.0.", prefix + "linear1.")
        _move_keys(state_dict, prefix + "_ff_block.2.", prefix + "linear2.")
        super()._load_from_state_dict(state_dict, prefix, *args)


def _activation(activation: Any) -> Any:
    """torch_blue's ``activation`` argument: ``ReLU()`` for ``None``, else as given.

    A module or function, or torch's names ``"relu"``/``"gelu"``; a number is
    refused at once: it is torch's ``dropout``, which torch's layers take in
    this position and torch_blue's (these) do not (it failed at the first
    call, ``'float' object is not callable``).

    Raises:
        TypeError: for anything else.
    """
    if activation is None:
        return nn.ReLU()
    if callable(activation) or activation in ("relu", "gelu"):
        return activation
    raise TypeError(
        f"activation must be a module or function (or 'relu'/'gelu'), got "
        f"{activation!r}; torch_blue's transformer layers take the activation "
        "where torch's take dropout (d_model, nhead, dim_feedforward, activation, "
        "...) and have no dropout: drop the dropout argument or pass "
        "activation= by name"
    )


class VITransformerEncoderLayer(_DevFeedForwardKeys, BnnEncoderLayer, VIModule):
    """Bayesian transformer encoder layer with torch_blue's arguments.

    :class:`pyrolite_bnn.VITransformerEncoderLayer` without dropout (as in
    torch_blue), built from :mod:`~pyrolite_bnn.vi` sublayers: ``self_attn`` is a
    :class:`VIMultiheadAttention`, the feed-forward block's ``linear1`` and
    ``linear2`` are :class:`~pyrolite_bnn.vi.VILinear`, each taking the layer's
    torch_blue options (``variational_distribution``, ``prior``,
    ``rescale_prior``, ``kaiming_initialization``, ``prior_initialization``,
    ``return_log_probs``). ``bias`` is torch_blue's flag. The computation is the
    library layer's.

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> layer = vi.VITransformerEncoderLayer(8, 2, dim_feedforward=16)
        >>> layer(torch.randn(3, 5, 8), samples=2).shape
        torch.Size([2, 3, 5, 8])
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 512,
        activation: Any = None,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = True,
        norm_first: bool = False,
        bias: bool = True,
        variational_distribution: Any = None,
        prior: Any = None,
        rescale_prior: bool = True,
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            d_model,
            nhead,
            dim_feedforward,
            0.0,
            _activation(activation),
            layer_norm_eps,
            batch_first,
            norm_first,
            bias,
            device=device,
            dtype=dtype,
        )
        vikwargs = vikwargs_of(
            variational_distribution,
            prior,
            rescale_prior,
            kaiming_initialization,
            prior_initialization,
            return_log_probs,
            device,
            dtype,
        )
        _vi_sublayers(
            self,
            ("self_attn",),
            d_model,
            nhead,
            dim_feedforward,
            batch_first,
            bias,
            vikwargs,
        )
        self.bias = bias
        self.return_log_probs = return_log_probs


class VITransformerDecoderLayer(_DevFeedForwardKeys, BnnDecoderLayer, VIModule):
    """Bayesian transformer decoder layer with torch_blue's arguments.

    See :class:`VITransformerEncoderLayer` (note torch_blue's order:
    ``norm_first`` before ``batch_first``); ``multihead_attn`` is a
    :class:`VIMultiheadAttention` too.

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> layer = vi.VITransformerDecoderLayer(8, 2, dim_feedforward=16)
        >>> layer(torch.randn(3, 5, 8), torch.randn(3, 4, 8), samples=2).shape
        torch.Size([2, 3, 5, 8])
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 512,
        activation: Any = None,
        layer_norm_eps: float = 1e-5,
        norm_first: bool = False,
        batch_first: bool = True,
        bias: bool = True,
        variational_distribution: Any = None,
        prior: Any = None,
        rescale_prior: bool = True,
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            d_model,
            nhead,
            dim_feedforward,
            0.0,
            _activation(activation),
            layer_norm_eps,
            batch_first,
            norm_first,
            bias,
            device=device,
            dtype=dtype,
        )
        vikwargs = vikwargs_of(
            variational_distribution,
            prior,
            rescale_prior,
            kaiming_initialization,
            prior_initialization,
            return_log_probs,
            device,
            dtype,
        )
        _vi_sublayers(
            self,
            ("self_attn", "multihead_attn"),
            d_model,
            nhead,
            dim_feedforward,
            batch_first,
            bias,
            vikwargs,
        )
        self.bias = bias
        self.return_log_probs = return_log_probs


class VITransformerEncoder(BnnEncoder, VIModule):
    """``num_layers`` copies of an encoder layer (torch_blue's arguments).

    ``bias`` is the layer's flag (torch_blue's layers all have one).

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> layer = vi.VITransformerEncoderLayer(8, 2, dim_feedforward=16)
        >>> vi.VITransformerEncoder(layer, 2)(torch.randn(3, 5, 8), samples=2).shape
        torch.Size([2, 3, 5, 8])
    """

    def __init__(
        self,
        encoder_layer: nn.Module,
        num_layers: int,
        norm: nn.Module | None = None,
        return_log_probs: bool = True,
    ) -> None:
        super().__init__(encoder_layer, num_layers, norm)
        self.bias = _layer_bias(encoder_layer)
        self.return_log_probs = return_log_probs


class VITransformerDecoder(BnnDecoder, VIModule):
    """``num_layers`` copies of a decoder layer (torch_blue's arguments).

    ``bias`` is the layer's flag (torch_blue's layers all have one).

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> layer = vi.VITransformerDecoderLayer(8, 2, dim_feedforward=16)
        >>> decoder = vi.VITransformerDecoder(layer, 2)
        >>> decoder(torch.randn(3, 5, 8), torch.randn(3, 4, 8), samples=2).shape
        torch.Size([2, 3, 5, 8])
    """

    def __init__(
        self,
        decoder_layer: nn.Module,
        num_layers: int,
        norm: nn.Module | None = None,
        return_log_probs: bool = True,
    ) -> None:
        super().__init__(decoder_layer, num_layers, norm)
        self.bias = _layer_bias(decoder_layer)
        self.return_log_probs = return_log_probs


class VITransformer(BnnTransformer, VIModule):
    """Bayesian encoder-decoder transformer with torch_blue's arguments.

    torch_blue's defaults (``d_model=32``, one head, one layer each,
    ``dim_feedforward=256``, ``batch_first=False``: sequence-first tensors
    ``(L, B, d_model)``, output ``(S, T, B, d_model)``). The built encoder and
    decoder are :class:`VITransformerEncoder`/:class:`VITransformerDecoder` of
    this module's layers, with final layer norms; every weight keeps its
    sublayer's torch_blue initialisation (:meth:`reset_parameters`).

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> model = vi.VITransformer(d_model=8, nhead=2, dim_feedforward=16)
        >>> model(torch.randn(5, 3, 8), torch.randn(4, 3, 8), samples=2).shape
        torch.Size([2, 4, 3, 8])
    """

    def __init__(
        self,
        d_model: int = 32,
        nhead: int = 1,
        num_encoder_layers: int = 1,
        num_decoder_layers: int = 1,
        dim_feedforward: int = 256,
        activation: Any = None,
        custom_encoder: Any | None = None,
        custom_decoder: Any | None = None,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        variational_distribution: Any = None,
        prior: Any = None,
        rescale_prior: bool = True,
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        vikwargs = vikwargs_of(
            variational_distribution,
            prior,
            rescale_prior,
            kaiming_initialization,
            prior_initialization,
            return_log_probs,
            device,
            dtype,
        )
        activation = _activation(activation)
        layer_args = (d_model, nhead, dim_feedforward, activation, layer_norm_eps)

        def norm() -> nn.LayerNorm:
            return nn.LayerNorm(
                d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype
            )

        if custom_encoder is None:
            encoder_layer = VITransformerEncoderLayer(
                *layer_args, batch_first, norm_first, bias, **vikwargs
            )
            custom_encoder = VITransformerEncoder(
                encoder_layer, num_encoder_layers, norm(), return_log_probs
            )
        if custom_decoder is None:
            decoder_layer = VITransformerDecoderLayer(
                *layer_args, norm_first, batch_first, bias, **vikwargs
            )
            custom_decoder = VITransformerDecoder(
                decoder_layer, num_decoder_layers, norm(), return_log_probs
            )
        super().__init__(
            d_model,
            nhead,
            num_encoder_layers,
            num_decoder_layers,
            dim_feedforward,
            0.0,
            activation,
            custom_encoder,
            custom_decoder,
            layer_norm_eps,
            batch_first,
            norm_first,
            bias,
            device=device,
            dtype=dtype,
        )
        self.bias = bias
        self.return_log_probs = return_log_probs
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every random variable the torch_blue way.

        Each sublayer's :meth:`~pyrolite_bnn.vi.VIModule.reset_variational_parameters`
        (its ``kaiming_initialization``/``prior_initialization``), in place of
        :class:`pyrolite_bnn.VITransformer`'s Xavier-uniform means: torch_blue's
        transformer keeps the initialisation of its layers. Each layer of a
        stack draws its own initial means (torch_blue's copies start equal).
        """
        for module in self.modules():
            if isinstance(module, VIModule) and module.random_variables:
                module.reset_variational_parameters()
