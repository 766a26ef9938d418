"""Bayesian Transformers: encoder/decoder layers, stacks, and the full model.

The attention and feed-forward weights are random variables (drawn once per
particle and shared by all positions); the layer norms stay deterministic
:class:`torch.nn.LayerNorm`. Residual connections broadcast a shortcut that is
still shared by all particles (:func:`~pyrolite_bnn.layers.functional.match_particles`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init

from pyrolite_bnn import _particles
from pyrolite_bnn._network import network_modules
from pyrolite_bnn._validation import check_floating_input
from pyrolite_bnn.distributions.variational import VariationalFamily
from pyrolite_bnn.layers._options import Estimator
from pyrolite_bnn.layers._sequence import (
    SequenceFirst,
    check_drawn_estimator,
    check_option_keys,
    in_batch_first_body,
    sub_option,
    unfold_sequence,
)
from pyrolite_bnn.layers.attention import VIMultiheadAttention
from pyrolite_bnn.layers.container import VISequential
from pyrolite_bnn.layers.functional import (
    current_batch_size,
    current_samples,
    examples_of,
    match_particles,
)
from pyrolite_bnn.layers.functional_attention import canonical_mask
from pyrolite_bnn.layers.linear import VILinear
from pyrolite_bnn.layers.registry import LayerCase, register
from pyrolite_bnn.module import VIModule

__all__ = [
    "VITransformer",
    "VITransformerDecoder",
    "VITransformerDecoderLayer",
    "VITransformerEncoder",
    "VITransformerEncoderLayer",
    "generate_square_subsequent_mask",
]

Activation = str | Callable[[Tensor], Tensor]


def generate_square_subsequent_mask(
    sz: int, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """A square causal mask: ``-inf`` above the diagonal, ``0`` elsewhere.

    Example:
        >>> generate_square_subsequent_mask(3)
        tensor([[0., -inf, -inf],
                [0., 0., -inf],
                [0., 0., 0.]])
    """
    full = torch.full((sz, sz), float("-inf"), dtype=dtype, device=device)
    return torch.triu(full, diagonal=1)


def _detect_is_causal_mask(
    mask: Tensor | None, is_causal: bool | None, size: int
) -> bool:
    """``is_causal`` if given, else whether ``mask`` is the causal mask (as torch)."""
    if is_causal is not None or mask is None:
        return bool(is_causal)
    causal = generate_square_subsequent_mask(size, mask.device, mask.dtype)
    return mask.shape == causal.shape and bool((mask == causal).all())


def _activation(activation: Activation) -> Callable[[Tensor], Tensor]:
    if isinstance(activation, str):
        if activation == "relu":
            return F.relu
        if activation == "gelu":
            return F.gelu
        raise RuntimeError(f"activation should be relu/gelu, not {activation}")
    return activation


def _add(shortcut: Tensor, branch: Tensor) -> Tensor:
    """Residual sum; a shortcut shared by all particles is broadcast to them."""
    return match_particles(shortcut, branch) + branch


# ---------------------------------------------------------------------------
# Layer registry hooks (bnn.convert, bnn.to_deterministic). The arguments of a
# Transformer layer are not attributes of torch's layer: they are read from its
# sublayers, which both classes name alike. Stacks are containers: their
# converted children replace the clones their constructors make.


def _layer_arguments(module: Any) -> dict[str, Any]:
    """Constructor arguments of a torch or Bayesian Transformer layer."""
    attention = module.self_attn
    return {
        "d_model": attention.embed_dim,
        "nhead": attention.num_heads,
        "dim_feedforward": module.linear1.out_features,
        "dropout": module.dropout.p,
        "activation": module.activation,
        "layer_norm_eps": module.norm1.eps,
        "batch_first": attention.batch_first,
        "norm_first": module.norm_first,
        "bias": module.norm1.bias is not None,
    }


def _stack_to_bayesian(module: Any, children: Mapping[str, Any]) -> VIModule:
    layers = list(children["layers"])
    cls = VITransformerEncoder if "mask_check" in vars(module) else VITransformerDecoder
    stack: VIModule = cls(layers[0], len(layers), children.get("norm"))
    stack.layers = VISequential(*layers)
    if isinstance(stack, VITransformerEncoder):
        stack.enable_nested_tensor = module.enable_nested_tensor
        stack.mask_check = module.mask_check
    return stack


def _stack_to_torch(layer: VIModule, children: Mapping[str, Any]) -> nn.Module:
    layers = list(children["layers"])
    stack: nn.Module
    if isinstance(layer, VITransformerEncoder):
        with warnings.catch_warnings():
            # torch's note that a sequence-first stack has no nested-tensor path:
            # the module being rebuilt was made with the same arguments.
            warnings.filterwarnings("ignore", "enable_nested_tensor is True")
            stack = nn.TransformerEncoder(
                layers[0],
                len(layers),
                children.get("norm"),
                enable_nested_tensor=layer.enable_nested_tensor,
                mask_check=layer.mask_check,
            )
    else:
        stack = nn.TransformerDecoder(layers[0], len(layers), children.get("norm"))
    stack.layers = nn.ModuleList(layers)
    return stack


def _model_to_bayesian(module: Any, children: Mapping[str, nn.Module]) -> VIModule:
    # Placeholders keep the constructor's initialisation off the converted stacks.
    model = VITransformer(
        module.d_model,
        module.nhead,
        custom_encoder=nn.Identity(),
        custom_decoder=nn.Identity(),
        batch_first=module.batch_first,
    )
    model.encoder, model.decoder = children["encoder"], children["decoder"]
    return model


def _model_to_torch(layer: VIModule, children: Mapping[str, nn.Module]) -> nn.Module:
    assert isinstance(layer, VITransformer)
    model = nn.Transformer(
        layer.d_model,
        layer.nhead,
        custom_encoder=nn.Identity(),
        custom_decoder=nn.Identity(),
        batch_first=layer.batch_first,
    )
    model.encoder, model.decoder = children["encoder"], children["decoder"]
    return model


class _SequenceModule(VIModule):
    """A Transformer module: batch-first, or sequence-first through the fold.

    With ``batch_first=False`` the sequence-first inputs are permuted to the
    batch-first fold, the batch-first ``forward`` body runs (its sublayers
    take batch-first tensors as they are), and the output is permuted back
    (see :mod:`pyrolite_bnn.layers._sequence`).
    """

    @property
    def sequence_layout(self) -> bool:
        """Whether this module takes sequence-first tensors (``batch_first=False``)."""
        raise NotImplementedError

    def _run(
        self, body: Callable[..., Tensor], names: tuple[str, ...], *sequences: Tensor
    ) -> Tensor:
        """``body(*sequences)`` in the batch-first layout, output in the module's."""
        self._check_sequences(names, sequences)
        if not self.sequence_layout or in_batch_first_body():
            return body(*sequences)
        if sequences[0].dim() != 3:
            raise ValueError(
                f"{type(self).__name__}(batch_first=False) expected sequence-first "
                f"inputs (sequence, batch, d_model), got {tuple(sequences[0].shape)}"
            )
        seq = SequenceFirst(self, sequences[0].shape[1])
        converted = [
            seq.batch_first(t, n) for t, n in zip(sequences, names, strict=True)
        ]
        with seq.body():
            out = body(*converted)
        return seq.sequence_first(out)

    def _check_sequences(
        self, names: tuple[str, ...], sequences: tuple[object, ...]
    ) -> None:
        """Floating-point tensors (``src``, ``tgt``, ``memory``), else ``TypeError``."""
        for name, sequence in zip(names, sequences, strict=True):
            check_floating_input(sequence, type(self).__name__, name)

    def unfold_output(self, output: Any, state: _particles.ParticleState) -> Any:
        """Sequence-first: ``(S, L, B, d_model)``, torch's layout per particle."""
        if not self.sequence_layout:
            return super().unfold_output(output, state)
        return unfold_sequence(output, state.samples)


def _stack_batch_first(layers: nn.Module) -> bool:
    """``batch_first`` of a stack: its first layer's attention's (as torch)."""
    first = next(iter(layers.children()), None)
    attention = getattr(first, "self_attn", None)
    return bool(getattr(attention, "batch_first", True))


class _Options:
    """Keyword-only Bayesian options of a composite layer, handed to its children."""

    def __init__(
        self,
        prior: object,
        variational: object,
        estimator: str,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        self.prior, self.variational = prior, variational
        self.estimator, self.device, self.dtype = estimator, device, dtype

    def child(self, name: str, estimator: str | None = None) -> dict[str, Any]:
        return {
            "prior": sub_option(self.prior, name),
            "variational": sub_option(self.variational, name),
            "estimator": self.estimator if estimator is None else estimator,
            "device": self.device,
            "dtype": self.dtype,
        }

    def check(self, layer: VIModule) -> None:
        check_option_keys(self.prior, "prior", layer)
        check_option_keys(self.variational, "variational", layer)


class _VITransformerLayer(_SequenceModule):
    """Feed-forward block and activation shared by encoder and decoder layers."""

    self_attn: VIMultiheadAttention
    linear1: VILinear
    linear2: VILinear
    dropout: nn.Dropout
    norm_first: bool

    @property
    def sequence_layout(self) -> bool:
        """Whether this layer takes sequence-first tensors (``batch_first=False``)."""
        return not self.self_attn.batch_first

    def reset_parameters(self) -> None:
        """Re-initialise every sublayer, in the order torch's constructor does."""
        for child in self.children():
            reset = getattr(child, "reset_parameters", None)
            if callable(reset):
                reset()

    def _options(
        self,
        prior: object,
        variational: object,
        estimator: str,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> _Options:
        """Check the estimator; the Bayesian options for the children."""
        name = type(self).__name__
        return _Options(
            prior,
            variational,
            check_drawn_estimator(estimator, variational, name),
            device,
            dtype,
        )

    @staticmethod
    def _attention(
        d_model: int,
        nhead: int,
        dropout: float,
        bias: bool,
        batch_first: bool,
        options: _Options,
        child: str,
    ) -> VIMultiheadAttention:
        """The attention block ``child`` (``self_attn`` or ``multihead_attn``)."""
        return VIMultiheadAttention(
            d_model,
            nhead,
            dropout=dropout,
            bias=bias,
            batch_first=batch_first,
            **options.child(child),
        )

    def _build_feedforward(
        self,
        d_model: int,
        dim_feedforward: int,
        dropout: float,
        activation: Activation,
        bias: bool,
        norm_first: bool,
        options: _Options,
    ) -> None:
        self.linear1 = VILinear(
            d_model, dim_feedforward, bias, **options.child("linear1", "reparam")
        )
        self.dropout = nn.Dropout(dropout)
        self.linear2 = VILinear(
            dim_feedforward, d_model, bias, **options.child("linear2", "reparam")
        )
        self.norm_first = norm_first
        self.activation = _activation(activation)

    def _ff(self, x: Tensor) -> Tensor:
        out: Tensor = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return out

    @staticmethod
    def _norm(d_model: int, eps: float, bias: bool, options: _Options) -> nn.LayerNorm:
        return nn.LayerNorm(
            d_model, eps=eps, bias=bias, device=options.device, dtype=options.dtype
        )


@register(
    nn.TransformerEncoderLayer,
    read_arguments=_layer_arguments,
    cases=(  # no dropout: particles are compared with torch in training mode
        LayerCase((8, 2, 16, 0.0), (3, 5, 8), {"batch_first": True}),
        LayerCase((8, 2, 16, 0.0), (5, 3, 8), {"norm_first": True}),
    ),
)
class VITransformerEncoderLayer(_VITransformerLayer):
    """Bayesian counterpart of :class:`torch.nn.TransformerEncoderLayer`.

    Self-attention (:class:`~pyrolite_bnn.VIMultiheadAttention`) and a
    feed-forward block of two :class:`~pyrolite_bnn.VILinear` (drawing their
    weights, ``estimator="reparam"``), with deterministic layer norms. Site
    names are torch's parameter names (``self_attn.in_proj_weight``,
    ``linear1.weight``, ...). At fixed weights each particle computes what the
    torch layer does (its slow path: no nested-tensor fast path).

    Args:
        d_model: model dimension.
        nhead: attention heads.
        dim_feedforward: hidden size of the feed-forward block.
        dropout: dropout probability (attention weights and residual branches).
        activation: ``"relu"``, ``"gelu"`` or a unary callable (a module is
            registered as a submodule).
        layer_norm_eps: epsilon of the layer norms.
        batch_first: ``(batch, sequence, feature)`` tensors if ``True``, else
            ``(sequence, batch, feature)`` (torch's default; the layer runs
            the batch-first fold, see :class:`~pyrolite_bnn.VIMultiheadAttention`).
        norm_first: pre-norm (``True``) or post-norm (``False``) residual blocks.
        bias: if ``False``, no biases in the linear layers and layer norms.
        prior: prior of the weights (see :class:`~pyrolite_bnn.VILinear`); a
            mapping is keyed by site name relative to this layer
            (``{"self_attn.in_proj_weight": ..., "linear1.weight": ...}``).
        variational: variational family (or mapping, as ``prior``).
        estimator: ``"auto"`` (default) or ``"reparam"``: weights are drawn.
        device: device of parameters and prior buffers.
        dtype: dtype of parameters and prior buffers.

    Shape:
        - Input: ``src`` ``(B, L, d_model)`` (``(L, B, d_model)`` with
          ``batch_first=False``); ``src_mask`` ``(L, L)`` or
          ``(B * nhead, L, L)``; ``src_key_padding_mask`` ``(B, L)``.
        - Output: ``(S, B, L, d_model)`` (``(S, L, B, d_model)``) as the
          outermost module.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> layer = bnn.VITransformerEncoderLayer(8, 2, 16, batch_first=True)
        >>> layer(torch.randn(3, 5, 8), samples=4).shape
        torch.Size([4, 3, 5, 8])
        >>> seq_first = bnn.VITransformerEncoderLayer(8, 2, 16)  # torch's default
        >>> seq_first(torch.randn(5, 3, 8), samples=4).shape
        torch.Size([4, 5, 3, 8])
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = F.relu,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        *,
        prior: object = None,
        variational: VariationalFamily | Mapping[str, VariationalFamily] | None = None,
        estimator: Estimator = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        options = self._options(prior, variational, estimator, device, dtype)
        self.self_attn = self._attention(
            d_model, nhead, dropout, bias, batch_first, options, "self_attn"
        )
        self._build_feedforward(
            d_model, dim_feedforward, dropout, activation, bias, norm_first, options
        )
        self.norm1 = self._norm(d_model, layer_norm_eps, bias, options)
        self.norm2 = self._norm(d_model, layer_norm_eps, bias, options)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        options.check(self)

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """Self-attention block, then feed-forward block, each with a residual."""

        def body(x: Tensor) -> Tensor:
            return self._encode(x, src_mask, src_key_padding_mask, is_causal)

        return self._run(body, ("src",), src)

    def _encode(
        self,
        x: Tensor,
        src_mask: Tensor | None,
        src_key_padding_mask: Tensor | None,
        is_causal: bool,
    ) -> Tensor:
        if self.norm_first:
            x = _add(
                x, self._sa(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            )
            return _add(x, self.dropout2(self._ff(self.norm2(x))))
        x = self.norm1(_add(x, self._sa(x, src_mask, src_key_padding_mask, is_causal)))
        out: Tensor = self.norm2(_add(x, self.dropout2(self._ff(x))))
        return out

    def _sa(
        self,
        x: Tensor,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
    ) -> Tensor:
        out = self.self_attn(
            x,
            x,
            x,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=False,
            is_causal=bool(is_causal),  # None (a stack's default) is False
        )[0]
        return self.dropout1(out)  # type: ignore[no-any-return]


@register(
    nn.TransformerDecoderLayer,
    read_arguments=_layer_arguments,
    cases=(  # the input is target and memory
        LayerCase((8, 2, 16, 0.0), (3, 5, 8), {"batch_first": True}, copies=2),
        LayerCase((8, 2, 16, 0.0), (5, 3, 8), {"activation": "gelu"}, copies=2),
    ),
)
class VITransformerDecoderLayer(_VITransformerLayer):
    """Bayesian counterpart of :class:`torch.nn.TransformerDecoderLayer`.

    Self-attention, cross-attention on ``memory`` (``multihead_attn``) and a
    feed-forward block; see :class:`VITransformerEncoderLayer` for the
    arguments (the same, with the same defaults). ``memory`` may be shared by
    all particles (``(B, Lm, d_model)``) or folded per particle (the output of a
    Bayesian encoder inside a network).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> layer = bnn.VITransformerDecoderLayer(8, 2, 16, batch_first=True)
        >>> tgt, memory = torch.randn(3, 4, 8), torch.randn(3, 6, 8)
        >>> layer(tgt, memory, samples=2).shape
        torch.Size([2, 3, 4, 8])
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = F.relu,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        *,
        prior: object = None,
        variational: VariationalFamily | Mapping[str, VariationalFamily] | None = None,
        estimator: Estimator = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        options = self._options(prior, variational, estimator, device, dtype)
        self.self_attn = self._attention(
            d_model, nhead, dropout, bias, batch_first, options, "self_attn"
        )
        self.multihead_attn = self._attention(
            d_model, nhead, dropout, bias, batch_first, options, "multihead_attn"
        )
        self._build_feedforward(
            d_model, dim_feedforward, dropout, activation, bias, norm_first, options
        )
        self.norm1 = self._norm(d_model, layer_norm_eps, bias, options)
        self.norm2 = self._norm(d_model, layer_norm_eps, bias, options)
        self.norm3 = self._norm(d_model, layer_norm_eps, bias, options)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        options.check(self)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
    ) -> Tensor:
        """Self-attention, cross-attention and feed-forward blocks with residuals."""
        sa = (tgt_mask, tgt_key_padding_mask, tgt_is_causal)
        mha = (memory_mask, memory_key_padding_mask, memory_is_causal)

        def body(x: Tensor, memory: Tensor) -> Tensor:
            return self._decode(x, memory, sa, mha)

        return self._run(body, ("tgt", "memory"), tgt, memory)

    def _decode(
        self,
        x: Tensor,
        memory: Tensor,
        sa: tuple[Tensor | None, Tensor | None, bool],
        mha: tuple[Tensor | None, Tensor | None, bool],
    ) -> Tensor:
        if self.norm_first:
            x = _add(x, self._sa(self.norm1(x), *sa))
            x = _add(x, self._mha(self.norm2(x), memory, *mha))
            return _add(x, self.dropout3(self._ff(self.norm3(x))))
        x = self.norm1(_add(x, self._sa(x, *sa)))
        x = self.norm2(_add(x, self._mha(x, memory, *mha)))
        out: Tensor = self.norm3(_add(x, self.dropout3(self._ff(x))))
        return out

    def _sa(
        self,
        x: Tensor,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
    ) -> Tensor:
        out = self.self_attn(
            x,
            x,
            x,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            is_causal=bool(is_causal),
            need_weights=False,
        )[0]
        return self.dropout1(out)  # type: ignore[no-any-return]

    def _mha(
        self,
        x: Tensor,
        memory: Tensor,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
    ) -> Tensor:
        out = self.multihead_attn(
            x,
            memory,
            memory,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            is_causal=bool(is_causal),
            need_weights=False,
        )[0]
        return self.dropout2(out)  # type: ignore[no-any-return]


def _clones(layer: nn.Module, count: int) -> VISequential:
    """``count`` deep copies of ``layer`` (the same initial weights, as torch)."""
    if count < 1:
        raise ValueError(f"num_layers must be >= 1, got {count}")
    return VISequential(*[copy.deepcopy(layer) for _ in range(count)])


def _final_norm(norm: object) -> nn.Module | None:
    """A stack's ``norm=``: ``None`` or a module (a callable, as torch runs it).

    torch stores anything and fails at the first call ("'str' object is not
    callable" for ``norm="ln"``); refused here, where it is given.
    """
    if norm is not None and not callable(norm):
        raise TypeError(
            "norm must be a module applied to the output, e.g. "
            f"nn.LayerNorm(d_model), or None; got {norm!r}"
        )
    return norm  # type: ignore[return-value]


# The stacks have no LayerCases (their first argument is a layer, a torch one
# for torch's class); VITransformer's cases run them, and the contract suite's
# round trip converts them.
@register(
    nn.TransformerEncoder,
    build_torch=_stack_to_torch,
    build_bayesian=_stack_to_bayesian,
)
class VITransformerEncoder(_SequenceModule):
    """Bayesian counterpart of :class:`torch.nn.TransformerEncoder`.

    ``num_layers`` deep copies of ``encoder_layer`` (each with its own random
    variables, sites ``layers.0.self_attn.in_proj_weight``, ...; the copies
    start from the same posterior, as torch's clones start from the same
    weights) and an optional deterministic final ``norm``. The Bayesian options
    are those of the given layer. There is no nested-tensor fast path:
    ``enable_nested_tensor`` and ``mask_check`` are accepted for compatibility
    and have no effect, so positions masked by ``src_key_padding_mask`` are
    computed as in torch's training-mode path (torch's eval fast path zeroes
    them instead).

    Args:
        encoder_layer: a :class:`VITransformerEncoderLayer` (or any module
            with the same ``forward`` arguments).
        num_layers: number of layers.
        norm: optional module applied to the output (e.g. ``nn.LayerNorm``).
        enable_nested_tensor: accepted, no effect (see above).
        mask_check: accepted, no effect.

    Raises:
        TypeError: if ``norm`` is neither a module (callable) nor ``None``.

    Shape:
        - Input: ``src`` ``(B, L, d_model)`` (``(L, B, d_model)`` if the
          layer's ``batch_first=False``); ``mask`` ``(L, L)`` or
          ``(B * nhead, L, L)``; ``src_key_padding_mask`` ``(B, L)``.
        - Output: ``(S, B, L, d_model)`` (``(S, L, B, d_model)``) as the
          outermost module.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> layer = bnn.VITransformerEncoderLayer(8, 2, 16, batch_first=True)
        >>> encoder = bnn.VITransformerEncoder(layer, num_layers=2)
        >>> encoder(torch.randn(3, 5, 8), samples=4).shape
        torch.Size([4, 3, 5, 8])
        >>> [v.site for v in encoder.random_variables()][:2]
        ['layers.0.self_attn.in_proj_weight', 'layers.0.self_attn.in_proj_bias']
    """

    def __init__(
        self,
        encoder_layer: nn.Module,
        num_layers: int,
        norm: nn.Module | None = None,
        enable_nested_tensor: bool = True,
        mask_check: bool = True,
    ) -> None:
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = _final_norm(norm)
        self.enable_nested_tensor = enable_nested_tensor
        self.mask_check = mask_check

    def forward(
        self,
        src: Tensor,
        mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool | None = None,
    ) -> Tensor:
        """Pass ``src`` through the layers in turn, then the final norm."""

        def body(x: Tensor) -> Tensor:
            return self._encode(x, mask, src_key_padding_mask, is_causal)

        return self._run(body, ("src",), src)

    @property
    def sequence_layout(self) -> bool:
        """Whether the layers take sequence-first tensors (``batch_first=False``)."""
        return not _stack_batch_first(self.layers)

    def _encode(
        self,
        src: Tensor,
        mask: Tensor | None,
        src_key_padding_mask: Tensor | None,
        is_causal: bool | None,
    ) -> Tensor:
        if src.dim() != 3:
            raise ValueError(
                f"{type(self).__name__} expected batch-first src (batch, sequence, "
                f"d_model), got {tuple(src.shape)}"
            )
        padding = canonical_mask(src_key_padding_mask, src.dtype)
        mask = canonical_mask(mask, src.dtype)
        causal = _detect_is_causal_mask(mask, is_causal, src.shape[1])
        output = src
        for layer in self.layers:
            output = layer(
                output,
                src_mask=mask,
                is_causal=causal,
                src_key_padding_mask=padding,
            )
        if self.norm is not None:
            output = self.norm(output)
        return output


@register(
    nn.TransformerDecoder,
    build_torch=_stack_to_torch,
    build_bayesian=_stack_to_bayesian,
)
class VITransformerDecoder(_SequenceModule):
    """Bayesian counterpart of :class:`torch.nn.TransformerDecoder`.

    ``num_layers`` deep copies of ``decoder_layer`` and an optional final
    ``norm`` (see :class:`VITransformerEncoder`). The copies keep the layer's
    activation; torch's copies of a ``TransformerDecoderLayer`` whose
    activation is a module (``nn.GELU()``) compute ReLU instead (its
    ``__setstate__`` puts ``F.relu`` in front of the module), so only there
    the two differ. :func:`~pyrolite_bnn.convert` of such a torch model keeps
    what the torch model computes.

    Args:
        decoder_layer: a :class:`VITransformerDecoderLayer` (or any module with
            the same ``forward`` arguments).
        num_layers: number of layers.
        norm: optional module applied to the output.

    Raises:
        TypeError: if ``norm`` is neither a module (callable) nor ``None``.

    Shape:
        - Input: ``tgt`` ``(B, T, d_model)``, ``memory`` ``(B, Lm, d_model)``
          (``(T, B, d_model)``, ``(Lm, B, d_model)`` if the layer's
          ``batch_first=False``).
        - Output: ``(S, B, T, d_model)`` (``(S, T, B, d_model)``) as the
          outermost module.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> layer = bnn.VITransformerDecoderLayer(8, 2, 16, batch_first=True)
        >>> decoder = bnn.VITransformerDecoder(layer, num_layers=2)
        >>> decoder(torch.randn(3, 4, 8), torch.randn(3, 6, 8), samples=2).shape
        torch.Size([2, 3, 4, 8])
    """

    def __init__(
        self,
        decoder_layer: nn.Module,
        num_layers: int,
        norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = _final_norm(norm)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
    ) -> Tensor:
        """Pass ``tgt`` (attending to ``memory``) through the layers in turn."""
        masks = (tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask)

        def body(x: Tensor, memory: Tensor) -> Tensor:
            return self._decode(x, memory, *masks, tgt_is_causal, memory_is_causal)

        return self._run(body, ("tgt", "memory"), tgt, memory)

    @property
    def sequence_layout(self) -> bool:
        """Whether the layers take sequence-first tensors (``batch_first=False``)."""
        return not _stack_batch_first(self.layers)

    def _decode(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None,
        memory_mask: Tensor | None,
        tgt_key_padding_mask: Tensor | None,
        memory_key_padding_mask: Tensor | None,
        tgt_is_causal: bool | None,
        memory_is_causal: bool,
    ) -> Tensor:
        if tgt.dim() != 3:
            raise ValueError(
                f"{type(self).__name__} expected batch-first tgt (batch, sequence, "
                f"d_model), got {tuple(tgt.shape)}"
            )
        causal = _detect_is_causal_mask(tgt_mask, tgt_is_causal, tgt.shape[1])
        output = tgt
        for layer in self.layers:
            output = layer(
                output,
                memory,
                tgt_mask=tgt_mask,
                memory_mask=memory_mask,
                tgt_key_padding_mask=tgt_key_padding_mask,
                memory_key_padding_mask=memory_key_padding_mask,
                tgt_is_causal=causal,
                memory_is_causal=memory_is_causal,
            )
        if self.norm is not None:
            output = self.norm(output)
        return output


def _plain_matrices(module: nn.Module) -> list[Tensor]:
    """Deterministic parameters with ``dim > 1`` outside the inference machinery."""
    return [
        p
        for _, part in network_modules(module)
        for p in part.parameters(recurse=False)
        if p.dim() > 1
    ]


@register(
    nn.Transformer,
    build_torch=_model_to_torch,
    build_bayesian=_model_to_bayesian,
    cases=(  # the input is source and target; the stacks' cases are these
        LayerCase((8, 2, 1, 1, 16, 0.0), (5, 3, 8), copies=2),
        LayerCase((8, 2, 2, 1, 16, 0.0), (3, 5, 8), {"batch_first": True}, copies=2),
    ),
)
class VITransformer(_SequenceModule):
    """Bayesian counterpart of :class:`torch.nn.Transformer`.

    An encoder and a decoder (:class:`VITransformerEncoder`,
    :class:`VITransformerDecoder`) with final layer norms, or the given
    ``custom_encoder``/``custom_decoder``. As in torch, every weight matrix
    (posterior mean) starts Xavier-uniform.

    Args:
        d_model: model dimension.
        nhead: attention heads.
        num_encoder_layers: encoder layers.
        num_decoder_layers: decoder layers.
        dim_feedforward: hidden size of the feed-forward blocks.
        dropout: dropout probability.
        activation: ``"relu"``, ``"gelu"`` or a unary callable (a module is
            kept in the decoder layers too, where torch's ``nn.Transformer``
            computes ReLU: see :class:`VITransformerDecoder`).
        custom_encoder: module used instead of the built encoder.
        custom_decoder: module used instead of the built decoder.
        layer_norm_eps: epsilon of the layer norms.
        batch_first: ``(batch, sequence, feature)`` tensors if ``True``, else
            ``(sequence, batch, feature)`` (torch's default). Sequence-first,
            a ``custom_decoder`` that is a plain torch module cannot follow a
            Bayesian encoder (it would attend across the folded particles).
        norm_first: pre-norm residual blocks.
        bias: if ``False``, no biases in linear layers and layer norms.
        prior: prior of every weight. A per-variable mapping is not accepted
            here (the copies of a layer share their options): build the layers
            with mappings and pass ``custom_encoder``/``custom_decoder``.
        variational: variational family of every weight (no mapping).
        estimator: ``"auto"`` (default) or ``"reparam"``.
        device: device of parameters and prior buffers.
        dtype: dtype of parameters and prior buffers.

    Masks may be boolean (``True`` = not allowed) or additive float. Passed
    to the outermost module while validation is on, a float mask holding
    ``-inf`` (such as :meth:`generate_square_subsequent_mask`'s) is refused
    by the NaN/Inf input check: pass the boolean mask there (the result is
    the same), or build the float mask inside ``forward``.

    Shape:
        - Input: ``src`` ``(B, L, d_model)``, ``tgt`` ``(B, T, d_model)``
          (``(L, B, d_model)``, ``(T, B, d_model)`` with ``batch_first=False``),
          masks as :class:`torch.nn.Transformer`.
        - Output: ``(S, B, T, d_model)`` (``(S, T, B, d_model)``) as the
          outermost module.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> model = bnn.VITransformer(8, 2, 1, 1, 16, batch_first=True)
        >>> src, tgt = torch.randn(3, 6, 8), torch.randn(3, 4, 8)
        >>> causal = torch.ones(4, 4, dtype=torch.bool).triu(1)  # True: masked
        >>> model(src, tgt, tgt_mask=causal, samples=2).shape
        torch.Size([2, 3, 4, 8])
    """

    generate_square_subsequent_mask = staticmethod(generate_square_subsequent_mask)

    def __init__(
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = F.relu,
        custom_encoder: Any | None = None,
        custom_decoder: Any | None = None,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        *,
        prior: object = None,
        variational: VariationalFamily | None = None,
        estimator: Estimator = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(prior, Mapping) or isinstance(variational, Mapping):
            raise ValueError(
                f"{name} takes one prior/variational for every weight; for "
                "per-variable options build the layers yourself and pass "
                "custom_encoder=/custom_decoder="
            )
        layer_args = (
            d_model,
            nhead,
            dim_feedforward,
            dropout,
            activation,
            layer_norm_eps,
            batch_first,
            norm_first,
            bias,
        )
        options: dict[str, Any] = {
            "prior": prior,
            "variational": variational,
            "estimator": check_drawn_estimator(estimator, variational, name),
            "device": device,
            "dtype": dtype,
        }

        def norm() -> nn.LayerNorm:
            return nn.LayerNorm(
                d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype
            )

        self.encoder: nn.Module
        self.decoder: nn.Module
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            encoder_layer = VITransformerEncoderLayer(*layer_args, **options)
            self.encoder = VITransformerEncoder(
                encoder_layer, num_encoder_layers, norm()
            )
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            decoder_layer = VITransformerDecoderLayer(*layer_args, **options)
            self.decoder = VITransformerDecoder(
                decoder_layer, num_decoder_layers, norm()
            )
        self.d_model = d_model
        self.nhead = nhead
        self.batch_first = batch_first
        self._reset_matrices()  # the layers were initialised by their constructors

    def reset_parameters(self) -> None:
        """Re-initialise as torch's constructor: the layers, then Xavier matrices.

        The first layer of each built stack is reset and copied to the others
        (torch's stacks are clones of one layer), then every matrix is drawn
        Xavier-uniform; seeded, the random numbers are those of torch's
        constructor.
        """
        for stack in (self.encoder, self.decoder):
            if isinstance(stack, VITransformerEncoder | VITransformerDecoder):
                first, *others = stack.layers
                if isinstance(first, _VITransformerLayer):  # not a custom layer
                    first.reset_parameters()
                    for other in others:
                        other.load_state_dict(first.state_dict())
                if isinstance(stack.norm, nn.LayerNorm):
                    stack.norm.reset_parameters()
        self._reset_matrices()

    def _reset_matrices(self) -> None:
        """Xavier-uniform posterior means (and plain weights) for every matrix."""
        for variable in self.random_variables():
            if len(variable.shape) > 1:
                posterior = variable.layer_posterior
                posterior.loc_init = init.xavier_uniform_  # also for its own resets
                posterior.reset_parameters(posterior.initial_loc())
        with torch.no_grad():
            for weight in _plain_matrices(self):
                init.xavier_uniform_(weight)

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        src_is_causal: bool | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
    ) -> Tensor:
        """Encode ``src`` into a memory, decode ``tgt`` attending to it."""
        masks = (
            src_mask,
            tgt_mask,
            memory_mask,
            src_key_padding_mask,
            tgt_key_padding_mask,
            memory_key_padding_mask,
        )
        causal = (src_is_causal, tgt_is_causal, memory_is_causal)

        def body(src: Tensor, tgt: Tensor) -> Tensor:
            return self._transform(src, tgt, *masks, *causal)

        self._check_sequences(("src", "tgt"), (src, tgt))
        layout = "batch-first" if self.batch_first else "sequence-first"
        if src.dim() != 3 or tgt.dim() != 3:
            raise ValueError(
                f"{type(self).__name__} expected {layout} src and tgt, got "
                f"{tuple(src.shape)} and {tuple(tgt.shape)}"
            )
        if self.batch_first:  # either may be folded with the particles
            samples, batch = current_samples(), current_batch_size()
            batches = [examples_of(t, samples, batch) for t in (src, tgt)]
        else:  # the particles fold into the sequence dimension
            batches = [src.shape[1], tgt.shape[1]]
        if batches[0] != batches[1]:
            raise RuntimeError(
                f"the batch number of src and tgt must be equal, got {batches}"
            )
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise RuntimeError(
                "the feature number of src and tgt must be equal to d_model"
            )
        plain_encoder = not isinstance(self.encoder, _SequenceModule)
        plain_decoder = not isinstance(self.decoder, _SequenceModule)
        if self.batch_first or not (plain_encoder or plain_decoder):
            return self._run(body, ("src", "tgt"), src, tgt)
        # A plain torch encoder/decoder (custom, or left by convert's exclude=)
        # takes the sequence-first tensors itself. A plain decoder after a
        # Bayesian encoder would read the memory folded into its sequence
        # dimension as one longer sequence.
        if plain_decoder:
            if any(isinstance(m, VIModule) for m in self.encoder.modules()):
                raise ValueError(
                    f"{type(self).__name__}(batch_first=False): a plain "
                    f"{type(self.decoder).__name__} after a Bayesian encoder would "
                    "attend across particles (they are folded into the sequence "
                    "dimension); use a VITransformerDecoder or batch_first=True"
                )
            return body(src, tgt)
        # A plain encoder on the sequence-first source, then the Bayesian
        # decoder in the batch-first fold.
        seq = SequenceFirst(self, src.shape[1])
        memory = self._encode(src, src_mask, src_key_padding_mask, src_is_causal)
        memory = seq.batch_first(memory, "memory", seq.length(src, "src"))
        target = seq.batch_first(tgt, "tgt")
        with seq.body():
            output = self._decode(target, memory, *masks[1:3], *masks[4:], *causal[1:])
        return seq.sequence_first(output)

    @property
    def sequence_layout(self) -> bool:
        """Whether this model takes sequence-first tensors (``batch_first=False``)."""
        return not self.batch_first

    def _transform(
        self,
        src: Tensor,
        tgt: Tensor,
        src_mask: Tensor | None,
        tgt_mask: Tensor | None,
        memory_mask: Tensor | None,
        src_key_padding_mask: Tensor | None,
        tgt_key_padding_mask: Tensor | None,
        memory_key_padding_mask: Tensor | None,
        src_is_causal: bool | None,
        tgt_is_causal: bool | None,
        memory_is_causal: bool,
    ) -> Tensor:
        memory = self._encode(src, src_mask, src_key_padding_mask, src_is_causal)
        return self._decode(
            tgt,
            memory,
            tgt_mask,
            memory_mask,
            tgt_key_padding_mask,
            memory_key_padding_mask,
            tgt_is_causal,
            memory_is_causal,
        )

    def _encode(
        self,
        src: Tensor,
        src_mask: Tensor | None,
        src_key_padding_mask: Tensor | None,
        src_is_causal: bool | None,
    ) -> Tensor:
        memory: Tensor = self.encoder(
            src,
            mask=src_mask,
            src_key_padding_mask=src_key_padding_mask,
            is_causal=src_is_causal,
        )
        return memory

    def _decode(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None,
        memory_mask: Tensor | None,
        tgt_key_padding_mask: Tensor | None,
        memory_key_padding_mask: Tensor | None,
        tgt_is_causal: bool | None,
        memory_is_causal: bool,
    ) -> Tensor:
        output: Tensor = self.decoder(
            tgt,
            memory,
            tgt_mask=tgt_mask,
            memory_mask=memory_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask,
            tgt_is_causal=tgt_is_causal,
            memory_is_causal=memory_is_causal,
        )
        return output

    def extra_repr(self) -> str:
        """Model dimension and heads."""
        return f"d_model={self.d_model}, nhead={self.nhead}"
