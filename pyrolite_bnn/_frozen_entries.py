"""Entries of a plain network's parameters that training never moves.

``torch.nn.Embedding`` and ``torch.nn.EmbeddingBag`` with ``padding_idx``
give their padding row no gradient: it keeps its value through training
(zero, or the row of a pretrained table), as the padding row of a
:class:`~pyrolite_bnn.VIEmbedding` is no random variable (a buffer, which
:func:`~pyrolite_bnn.to_deterministic` puts back into the plain table). Such
an entry is no weight of a posterior over the trained weights
(:func:`~pyrolite_bnn.laplace`): it is not counted, has no prior, and is not
perturbed.

The look-up is not the only use a network may make of the table. A module
holding it as well (a tied output layer, ``out.weight = emb.weight``) trains
the padding row: :func:`padding_entries` keeps only the rows every module
holding the table leaves out. A ``forward`` that reads the table directly
(``F.linear(h, self.emb.weight)``, fairseq's shared input and output
embedding) trains it too, and no module shows it: the outputs depend on the
row, so its columns of the network's Jacobian are not zero.
:class:`FrozenEntries` takes the Jacobians at the fitting data and leaves a
table's padding row out only where all its columns are zero there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["FrozenEntries", "padding_entries"]

# Modules whose ``padding_idx`` row of ``weight`` gets no gradient from torch.
_PADDED_TABLES = (nn.Embedding, nn.EmbeddingBag)


def _left_out_by(module: nn.Module, name: str, parameter: Tensor) -> Tensor | None:
    """The entries of ``module``'s own parameter ``name`` its use never trains.

    ``None`` where its use trains every entry (any module but a padded table).
    """
    padding_idx = getattr(module, "padding_idx", None)
    if not (
        isinstance(module, _PADDED_TABLES)
        and name == "weight"
        and padding_idx is not None
    ):
        return None
    left_out = torch.zeros(parameter.shape, dtype=torch.bool, device=parameter.device)
    left_out[padding_idx] = True
    return left_out


def padding_entries(network: nn.Module) -> dict[str, Tensor]:
    """Boolean masks of the padding rows no module holding the table trains.

    Only parameters with such an entry are listed, under their names in
    ``network.named_parameters()``; an entry is listed if every module
    holding the parameter leaves it out of training. A ``forward`` may still
    read the table directly: :class:`FrozenEntries` tells from the Jacobians.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Embedding(3, 2, padding_idx=1), nn.Linear(2, 1))
        >>> padding_entries(net)["0.weight"]
        tensor([[False, False],
                [ True,  True],
                [False, False]])
        >>> list(padding_entries(net))
        ['0.weight']
    """
    left_out: dict[int, Tensor | None] = {}
    for _, module in network.named_modules(remove_duplicate=False):
        for name, parameter in module.named_parameters(recurse=False):
            by_module = _left_out_by(module, name, parameter)
            if id(parameter) not in left_out:
                left_out[id(parameter)] = by_module
                continue
            seen = left_out[id(parameter)]
            if seen is None or by_module is None:  # one module trains it whole
                left_out[id(parameter)] = None
            else:
                left_out[id(parameter)] = seen & by_module
    masks = {
        name: left_out[id(parameter)] for name, parameter in network.named_parameters()
    }
    return {
        name: mask
        for name, mask in masks.items()
        if mask is not None and bool(mask.any())
    }


class FrozenEntries:
    """The padding rows of the named parameters that the outputs do not depend on.

    The parameters ``names`` of ``network``, flattened and concatenated in
    that order, are the Jacobians' columns. The candidates are the entries
    :func:`padding_entries` lists, one group per parameter (its padding
    row). Fed the Jacobians at every fitting input (:meth:`observe`), a group
    is frozen if all its columns are zero at all of them: the embedding's
    look-up gives it no gradient and nothing else reads it, so training on
    these data never moves it. A nonzero column (a ``forward`` that reads the
    table directly) makes the whole row weights. An entry that is no padding
    candidate is never frozen, even with zero columns (the row of a
    category the data do not contain is a weight).

    Without candidates (:attr:`has_candidates` false) :meth:`observe` does
    nothing.

    Args:
        network: the plain network.
        names: names of its parameters, in the Jacobians' column order.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Embedding(3, 1, padding_idx=1), nn.Linear(1, 1))
        >>> entries = FrozenEntries(net, ["0.weight", "1.weight"])
        >>> entries.observe(torch.tensor([[1.0, 0.0, 0.0, 2.0]]))  # (rows, P)
        >>> entries.frozen()
        tensor([False,  True, False, False])
        >>> entries.observe(torch.tensor([[0.0, 0.5, 0.0, 2.0]]))
        >>> entries.frozen() is None
        True
    """

    def __init__(self, network: nn.Module, names: Sequence[str]) -> None:
        padding = padding_entries(network)
        parameters = dict(network.named_parameters())
        self._size = sum(parameters[name].numel() for name in names)
        # Per candidate column: the index of its group, and whether it was read.
        groups: list[Tensor] = []
        columns: list[Tensor] = []
        offset = 0
        for name in names:
            if name in padding:
                where = padding[name].reshape(-1).cpu().nonzero().squeeze(-1)
                columns.append(where + offset)
                groups.append(torch.full_like(where, len(groups)))
            offset += parameters[name].numel()
        empty = torch.zeros(0, dtype=torch.long)
        self._columns = torch.cat(columns) if columns else empty
        self._groups = torch.cat(groups) if groups else empty
        self._group_count = len(groups)
        self._read = torch.zeros(len(self._columns), dtype=torch.bool)

    @property
    def has_candidates(self) -> bool:
        """Whether the named parameters hold a padding row at all."""
        return self._group_count > 0

    @property
    def candidates(self) -> Tensor:
        """The padding rows' entries, a boolean mask ``(P,)`` on the CPU."""
        mask = torch.zeros(self._size, dtype=torch.bool)
        mask[self._columns.cpu()] = True
        return mask

    def observe(self, jacobian: Tensor) -> None:
        """Note the columns of ``jacobian`` ``(..., P)`` that are not zero."""
        if not self.has_candidates:
            return
        if jacobian.shape[-1] != self._size:
            raise ValueError(
                f"FrozenEntries takes Jacobians with {self._size} columns (the named "
                f"parameters' entries), got shape {tuple(jacobian.shape)}"
            )
        if self._read.device != jacobian.device:
            self._columns = self._columns.to(jacobian.device)
            self._groups = self._groups.to(jacobian.device)
            self._read = self._read.to(jacobian.device)
        candidates = jacobian.reshape(-1, self._size)[:, self._columns]
        self._read |= candidates.ne(0).any(0)

    def frozen(self) -> Tensor | None:
        """The frozen entries, a boolean mask ``(P,)``; ``None`` where there are none.

        A candidate group is frozen if :meth:`observe` saw no nonzero column of
        it (also when it saw no Jacobian at all).
        """
        if not self.has_candidates:
            return None
        read_groups = torch.zeros(
            self._group_count, dtype=torch.bool, device=self._read.device
        )
        read_groups[self._groups[self._read]] = True  # one read column reads its row
        frozen_columns = ~read_groups[self._groups]
        if not bool(frozen_columns.any()):
            return None
        mask = torch.zeros(self._size, dtype=torch.bool, device=self._read.device)
        mask[self._columns[frozen_columns]] = True
        return mask
