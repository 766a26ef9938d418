"""Bayesian lookup table: ``VIEmbedding``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pyrolite_bnn import _particles
from pyrolite_bnn._capture import is_capturing
from pyrolite_bnn._draws import RepeatedMomentsRead, mark_called_repeatedly
from pyrolite_bnn._layout_errors import running_layer_name
from pyrolite_bnn._validation import (
    check_finite,
    check_integer,
    is_validation_enabled,
    readable_all,
)
from pyrolite_bnn.distributions.variational import NormalMoments, VariationalFamily
from pyrolite_bnn.layers import functional
from pyrolite_bnn.layers._base import _VIWeightLayer
from pyrolite_bnn.layers._options import Estimator
from pyrolite_bnn.layers.functional import current_batch_size, current_samples
from pyrolite_bnn.layers.registry import LayerCase, register
from pyrolite_bnn.module import VIModule
from pyrolite_bnn.variables import UnitLayout

__all__ = ["VIEmbedding"]

_TABLE_READ = (
    "the whole table VIEmbedding.weight is read in a forward pass (a tied "
    "output layer, F.embedding(x, layer.weight)) while the layer draws only "
    "the rows it looks up: both must come from one table draw"
)


def _without_row(table: Tensor, row: int | None) -> Tensor:
    """``table`` (``(..., V, E)``) without row ``row`` (unchanged for ``None``)."""
    if row is None:
        return table
    return torch.cat([table[..., :row, :], table[..., row + 1 :, :]], dim=-2)


def _with_row(rows: Tensor, row: int | None, value: Tensor | None) -> Tensor:
    """Insert ``value`` ``(E,)`` as row ``row`` along dim ``-2`` (``None``: as is)."""
    if row is None or value is None:
        return rows
    inserted = value.to(rows.dtype).expand(*rows.shape[:-2], 1, rows.shape[-1])
    return torch.cat([rows[..., :row, :], inserted, rows[..., row:, :]], dim=-2)


@dataclass(frozen=True)
class _NormalRows:
    """``N(0, 1)`` rows of a table but its ``padding_idx`` one (drawn, left out).

    The random numbers of ``torch.nn.Embedding``'s whole table, so that a
    seeded layer starts at the seeded torch layer's rows.
    """

    padding_idx: int | None

    def __call__(self, rows: Tensor) -> Tensor:
        """Fill ``rows`` ``(num_embeddings - 1 or not, embedding_dim)`` in place."""
        padded = self.padding_idx is not None
        table = rows.new_empty((rows.shape[0] + padded, rows.shape[1])).normal_()
        with torch.no_grad():
            return rows.copy_(_without_row(table, self.padding_idx))


def _weights_to_means(module: nn.Module, layer: VIModule) -> dict[str, Tensor]:
    """The rows but the padding row; that one becomes the layer's ``padding_row``."""
    assert isinstance(module, nn.Embedding)
    assert isinstance(layer, VIEmbedding)
    if module.padding_idx is not None:
        layer.set_padding_row(module.weight[module.padding_idx])
    return {"weight": _without_row(module.weight, module.padding_idx)}


def _means_to_weights(
    layer: VIModule, means: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    assert isinstance(layer, VIEmbedding)
    return {"weight": _with_row(means["weight"], layer.padding_idx, layer.padding_row)}


@register(
    nn.Embedding,
    cases=(
        LayerCase((10, 3), (4, 5), index_range=10),
        LayerCase((10, 3, 0), (6, 5), index_range=3),
        LayerCase((10, 3), (4, 5), {"padding_idx": -1, "max_norm": 1.0}, 10),
        LayerCase((10, 3, None, 0.5, 1.0, True), (7,), index_range=10),
        LayerCase((10, 3), (3, 2, 2), {"scale_grad_by_freq": True}, 10),
    ),
    weights_to_means=_weights_to_means,
    means_to_weights=_means_to_weights,
)
class VIEmbedding(_VIWeightLayer):
    """Bayesian counterpart of :class:`torch.nn.Embedding`: a random lookup table.

    Each particle has its own random table ``(num_embeddings, embedding_dim)``
    and looks the indices up in it. Positional and keyword arguments are those
    of ``torch.nn.Embedding``; the Bayesian options are keyword-only. An index
    that occurs twice must read the same row, which sampling outputs
    independently (``"local"``, ``"flipout"``) would break; rows never looked
    up do not affect the outputs. So ``estimator="auto"`` (with the mean-field
    Normal posterior, in a PyTorch-style call with the generated guide) draws
    for each particle only the distinct rows its indices reference, one draw
    per (particle, row) read by every occurrence: the outputs have exactly the
    distribution of a whole drawn table, at the cost of the rows used instead
    of ``S`` tables. The closed-form KL needs no draws; a Monte-Carlo KL
    (``kl="mc"``, priors without a closed form) and ``log_probs`` take a
    whole-table draw of their own (unbiased, independent of the forward pass),
    as for layers that sample their outputs. ``"reparam"`` draws whole tables
    (the traced guide's draws: the loss then equals Pyro's ELBOs for the same
    random numbers), as do Pyro inference, assigned guides, ``predict``, graph
    capture (``compile=True``), networks where no layer samples from moments
    (sequence-first layers, batch statistics), and a layer whose
    table is read whole in a pass (``F.embedding(x, emb.weight)``, a tied
    output layer) or that is called twice in one pass: both reads must come
    from one table, so the pass runs again with tables drawn (a plain torch
    root raises once instead), and the layer draws tables from then on. Any
    read of ``weight`` in a forward pass counts, ``emb.weight.device`` too:
    read the device or dtype of another tensor (the input, or
    ``emb.posterior["weight"].loc_unconstrained``) to keep the row draws.

    ``padding_idx``: the row is deterministic, as torch keeps it (no gradient):
    zero, or the row of a pretrained table (``_weight=``, ``bnn.convert`` of
    ``nn.Embedding.from_pretrained(..., padding_idx=...)``), held in the buffer
    ``padding_row`` (saved in ``state_dict()``). It is no random variable, so
    it has no posterior and adds no KL term: the random variable ``weight``
    holds the other ``num_embeddings - 1`` rows, in order.
    :func:`~pyrolite_bnn.to_deterministic` puts the padding row back.

    Per-unit priors (``LearnedNormalPrior(per="unit")``) give one scale per
    embedding feature (a column of the table): the output units, as of a
    ``VILinear`` on one-hot inputs, shared by all categories.

    Args:
        num_embeddings: size of the dictionary.
        embedding_dim: size of each embedding vector.
        padding_idx: index of the zero padding row (negative counts from the
            end), or ``None``.
        max_norm: each looked-up row of a drawn table whose ``norm_type``-norm
            exceeds ``max_norm`` is scaled to norm ``max_norm``. Output values
            equal torch's; torch also rescales its stored weight in place,
            which a drawn weight has no use for, so gradients here flow through
            the rescaling.
        norm_type: the ``p`` of the ``max_norm`` norm.
        scale_grad_by_freq: scale the gradients by the inverse frequency of the
            indices in the batch.
        sparse: must be ``False``: the posterior parameters get dense gradients
            (every row has a KL term), so sparse gradients are not offered.
        _weight: initial posterior mean ``(num_embeddings, embedding_dim)``
            instead of torch's ``N(0, 1)`` initialisation; its ``padding_idx``
            row becomes the deterministic padding row, as in torch.
        _freeze: must be ``False`` (a frozen table is not Bayesian; use
            ``torch.nn.Embedding.from_pretrained``).
        prior: prior of the weights (see :class:`~pyrolite_bnn.VILinear`).
        variational: variational family (see :class:`~pyrolite_bnn.VILinear`).
        estimator: ``"auto"`` (draw the looked-up rows where exact) or
            ``"reparam"`` (draw whole tables).
        device: device of parameters and prior buffers.
        dtype: dtype of parameters and prior buffers.

    Raises:
        ValueError: for indices outside ``[0, num_embeddings)`` with
            validation on (naming their range, and the layer's path in the
            network being called: ``VIEmbedding 'embs.1'``); with it off, torch's
            ``IndexError: index out of range in self``, as
            ``torch.nn.Embedding`` raises, from an indexing operation (no
            host synchronisation).

    Shape:
        - Input: integer indices ``(B, *)``.
        - Output: ``(S, B, *, embedding_dim)`` as the outermost module; folded
          ``(B * S, *, embedding_dim)`` inside a network.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> embed = bnn.VIEmbedding(10, 4, padding_idx=0)
        >>> embed
        VIEmbedding(10, 4, padding_idx=0)
        >>> tokens = torch.tensor([[1, 2, 0], [3, 0, 0]])
        >>> out = embed(tokens, samples=5)
        >>> out.shape
        torch.Size([5, 2, 3, 4])
        >>> bool((out[:, tokens == 0] == 0).all())
        True
    """

    _estimators = ("auto", "reparam")
    _auto_estimator = "rows"
    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None
    max_norm: float | None
    norm_type: float
    scale_grad_by_freq: bool
    sparse: bool
    padding_row: Tensor | None

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Tensor | None = None,
        _freeze: bool = False,
        *,
        prior: object = None,
        variational: VariationalFamily | Mapping[str, VariationalFamily] | None = None,
        estimator: Estimator = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        num_embeddings = check_integer(num_embeddings, "num_embeddings")
        embedding_dim = check_integer(embedding_dim, "embedding_dim")
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(
                "num_embeddings and embedding_dim must be >= 1, got "
                f"{num_embeddings}, {embedding_dim}"
            )
        if padding_idx is not None:
            padding_idx = check_integer(padding_idx, "padding_idx")
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(
                    f"padding_idx must be within num_embeddings ({num_embeddings}), "
                    f"got {padding_idx}"
                )
            if num_embeddings == 1:
                raise ValueError(
                    "VIEmbedding(1, ..., padding_idx=...) has no random row; use a "
                    "zero tensor"
                )
            padding_idx %= num_embeddings
        if sparse:
            raise ValueError(
                "VIEmbedding does not support sparse=True: every row of the "
                "posterior has a KL term, so its gradients are dense"
            )
        if _freeze:
            raise ValueError(
                "VIEmbedding does not support _freeze=True (a frozen table is not "
                "Bayesian); use torch.nn.Embedding.from_pretrained"
            )
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        self.sparse = sparse
        rows = num_embeddings - (padding_idx is not None)
        self._declare(
            {"weight": (rows, embedding_dim)},
            prior=prior,
            variational=variational,
            estimator=estimator,
            device=device,
            dtype=dtype,
            units={"weight": UnitLayout(dim=1)},  # the output features
        )
        loc = self.posterior["weight"].loc
        self.register_buffer(
            "padding_row",
            None
            if padding_idx is None
            else torch.zeros(embedding_dim, dtype=loc.dtype, device=loc.device),
        )
        if _weight is None:
            self.reset_parameters()
        else:
            if _weight.shape != (num_embeddings, embedding_dim):
                raise ValueError(
                    f"_weight must have shape {(num_embeddings, embedding_dim)}, got "
                    f"{tuple(_weight.shape)}"
                )
            self.posterior["weight"].reset_parameters(
                _without_row(_weight.detach(), padding_idx)
            )
            if padding_idx is not None:
                self.set_padding_row(_weight[padding_idx])

    def __setattr__(self, name: str, value: Any) -> None:
        """``padding_idx`` is fixed once built: the table's random rows leave it out."""
        fixed = self.__dict__.get("padding_idx", value)
        if name == "padding_idx" and value != fixed:
            raise AttributeError(
                f"VIEmbedding.padding_idx is fixed at construction (it is "
                f"{fixed}): the random rows leave the padding row out, so another "
                "padding row needs a new layer, "
                "VIEmbedding(..., padding_idx=..., _weight=table)"
            )
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        """``weight`` reads as the whole table in a call, the padding row included.

        The random variable holds the other rows; a ``forward`` of the user's
        that reads the table itself (``F.embedding(x, emb.weight)``, a tied
        output layer) sees torch's ``(num_embeddings, embedding_dim)`` layout,
        with leading particle dimensions where the draws have them.

        Outside a call there is no such table to hand out: the mean of the
        random rows would shift every index after ``padding_idx`` by one, and
        a whole table put together would take in-place writes into a
        temporary. Reading it raises ``AttributeError`` naming the ways in.
        """
        padded = name == "weight" and self.__dict__.get("padding_idx") is not None
        if padded and _particles.outside_any_call():
            raise AttributeError(
                "VIEmbedding(padding_idx=...).weight exists inside a call only; "
                "outside one read the mean table with bnn.to_deterministic(layer)"
                ".weight, set it with VIEmbedding(..., _weight=table) or "
                "layer.posterior['weight'].reset_parameters(rows) for the rows but "
                "the padding one, and layer.set_padding_row(row)"
            )
        # The forward pass draws only the rows it looks up (its moments
        # handed out); a whole table read elsewhere in the pass must be the
        # table those rows come from: the pass runs again with tables drawn.
        try:
            value = super().__getattr__(name)
        except RepeatedMomentsRead as error:  # read after the layer's call
            raise RepeatedMomentsRead(self, reason=_TABLE_READ) from error
        if name == "weight" and isinstance(value, NormalMoments):  # read before
            mark_called_repeatedly(self)
            raise RepeatedMomentsRead(self, reason=_TABLE_READ)
        if padded:
            return _with_row(value, self.padding_idx, self.padding_row)
        return value

    def set_padding_row(self, value: Tensor) -> None:
        """Set the deterministic ``padding_idx`` row to ``value`` ``(embedding_dim,)``.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> embed = bnn.VIEmbedding(5, 2, padding_idx=0)
            >>> embed.set_padding_row(torch.tensor([1.0, -1.0]))
            >>> embed(torch.tensor([[0]]), samples=3)[:, 0, 0].tolist()
            [[1.0, -1.0], [1.0, -1.0], [1.0, -1.0]]
        """
        if self.padding_row is None:
            raise ValueError("this VIEmbedding has no padding_idx")
        if value.shape != self.padding_row.shape:
            raise ValueError(
                f"padding row must have shape {tuple(self.padding_row.shape)}, got "
                f"{tuple(value.shape)}"
            )
        check_finite(value, "padding row")
        with torch.no_grad():
            self.padding_row.copy_(value.detach())

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, *args
    ) -> None:
        """Checkpoints from before ``padding_row`` existed load (a zero row)."""
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, *args
        )
        key = prefix + "padding_row"
        if key in missing_keys:
            missing_keys.remove(key)

    def reset_parameters(self) -> None:
        """Re-initialise as ``torch.nn.Embedding``: ``N(0, 1)`` rows, padding row 0.

        Scales return to their initial value, priors to the hyperparameters
        they were built with.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> embed = bnn.VIEmbedding(5, 2, padding_idx=0)
            >>> embed.set_padding_row(torch.ones(2))
            >>> embed.reset_parameters()
            >>> embed.padding_row
            tensor([0., 0.])
        """
        super().reset_parameters()
        if self.padding_row is not None:
            with torch.no_grad():
                self.padding_row.zero_()

    def _mean_init(
        self, name: str, shapes: Mapping[str, tuple[int, ...]]
    ) -> Callable[[Tensor], Tensor]:
        """``N(0, 1)`` rows, as ``torch.nn.Embedding`` (same draws for a seed)."""
        return _NormalRows(self.padding_idx)

    def forward(self, input: Tensor) -> Tensor:
        """Look the indices up in every particle's table."""
        if input.dim() < 1 or input.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"{running_layer_name(self)} expected integer indices (int64 or "
                f"int32) of shape (batch, ...), got {input.dtype} of shape "
                f"{tuple(input.shape)}"
            )
        if is_validation_enabled() and input.numel() and not input.is_meta:
            # Under torch.vmap the values cannot be read (the check counts as
            # passed): an index outside the table meets index_select's
            # IndexError there (functional._random_rows).
            outside = (input < 0) | (input >= self.num_embeddings)
            if not readable_all(~outside):
                low, high = int(input.min()), int(input.max())
                raise ValueError(
                    f"{running_layer_name(self)} got indices from {low} to {high}; "
                    f"expected 0 to {self.num_embeddings - 1}, the rows of its "
                    f"table (num_embeddings={self.num_embeddings}): give an index "
                    "outside them (a category unseen in training) a row of its "
                    "own, or map it to a known one"
                )
        options = (
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            current_batch_size(),
            self.padding_idx,
            self.padding_row,
        )
        rows = self._random_rows()
        if isinstance(rows, NormalMoments) and input.is_meta:
            # Which rows are looked up is unknown on the meta device (shape
            # inference): a whole table is drawn, with the same output shape.
            rows = self.posterior["weight"].reparameterize(rows, current_samples())
        if isinstance(rows, NormalMoments):
            return functional.embedding_rows(
                input, rows.loc, rows.scale, current_samples(), *options
            )
        return functional.embedding(input, rows, *options)

    def _random_rows(self) -> Tensor | NormalMoments:
        """This call's draw of the random rows, or their moments to draw from.

        The variable itself, without the padding row (which ``weight``
        inserts for readers of the whole table).
        """
        rows: Tensor | NormalMoments = super().__getattr__("weight")
        return rows

    def uses_moments(self) -> bool:
        """Whether this call draws only the looked-up rows (from the moments).

        ``True`` for ``estimator="auto"`` with the mean-field Normal
        posterior, in a PyTorch-style call with the generated guide; a graph
        being captured (``KullbackLeiblerLoss(compile=True)``,
        ``torch.compile``) draws whole tables, whose shapes do not depend on
        the indices.
        """
        capturing = is_capturing() or torch.compiler.is_compiling()
        return self._resolved_estimator == "rows" and not capturing

    def estimator_for(self, input: Tensor) -> str:
        """``"rows"`` if :meth:`samples_from_moments`, else ``"reparam"``.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> tokens = torch.tensor([[1, 2]])
            >>> bnn.VIEmbedding(5, 2).estimator_for(tokens)
            'rows'
            >>> bnn.VIEmbedding(5, 2, estimator="reparam").estimator_for(tokens)
            'reparam'
        """
        return "rows" if self.samples_from_moments() else "reparam"

    def _torch_repr(self) -> str:
        text = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            text += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            text += f", max_norm={self.max_norm}"
        if self.norm_type != 2:
            text += f", norm_type={self.norm_type}"
        if self.scale_grad_by_freq:
            text += f", scale_grad_by_freq={self.scale_grad_by_freq}"
        return text
