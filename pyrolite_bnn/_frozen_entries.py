"""Entries of a plain network's parameters that training never moves.

``torch.nn.Embedding`` and ``torch.nn.EmbeddingBag`` with ``padding_idx``
give their padding row no gradient: it keeps its value through training
(zero, or the row of a pretrained table), as the padding row of a
:class:`~pyrolite_bnn.VIEmbedding` is no random variable (a buffer, which
:func:`~pyrolite_bnn.to_deterministic` puts back into the plain table). Such
an entry is no weight of a posterior over the trained weights
(:func:`~pyrolite_bnn.laplace`): it is not counted, has no prior, and is not
perturbed.

A table held by another module as well (a tied output layer, ``out.weight =
emb.weight``) is trained through that module: its padding row counts as a
weight unless every module holding the table leaves that row out. A table
read directly in a ``forward`` (``F.linear(h, self.emb.weight)``) cannot be
seen from the modules: its padding row is taken as frozen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["free_entries", "frozen_entries"]

# Modules whose ``padding_idx`` row of ``weight`` gets no gradient from torch.
_PADDED_TABLES = (nn.Embedding, nn.EmbeddingBag)


def _frozen_by(module: nn.Module, name: str, parameter: Tensor) -> Tensor:
    """The entries of ``module``'s own parameter ``name`` that its use never trains."""
    frozen = torch.zeros(parameter.shape, dtype=torch.bool, device=parameter.device)
    padding_idx = getattr(module, "padding_idx", None)
    if (
        isinstance(module, _PADDED_TABLES)
        and name == "weight"
        and padding_idx is not None
    ):
        frozen[padding_idx] = True
    return frozen


def frozen_entries(network: nn.Module) -> dict[str, Tensor]:
    """Boolean masks of the entries no training step moves, by parameter name.

    Only parameters with such an entry are listed, under their names in
    ``network.named_parameters()``; an entry is frozen if every module
    holding the parameter leaves it out of training.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Embedding(3, 2, padding_idx=1), nn.Linear(2, 1))
        >>> frozen_entries(net)["0.weight"]
        tensor([[False, False],
                [ True,  True],
                [False, False]])
        >>> list(frozen_entries(net))
        ['0.weight']
    """
    frozen: dict[int, Tensor] = {}
    for _, module in network.named_modules(remove_duplicate=False):
        for name, parameter in module.named_parameters(recurse=False):
            by_module = _frozen_by(module, name, parameter)
            seen = frozen.get(id(parameter))
            frozen[id(parameter)] = by_module if seen is None else seen & by_module
    return {
        name: frozen[id(parameter)]
        for name, parameter in network.named_parameters()
        if bool(frozen[id(parameter)].any())
    }


def free_entries(network: nn.Module, names: Sequence[str]) -> Tensor | None:
    """Where the entries that training moves lie in the named parameters.

    The parameters ``names`` of ``network``, flattened and concatenated in
    that order, hold the entries training moves at these indices.

    Returns:
        The indices ``(P,)`` (``int64``, on the CPU), or ``None`` where every
        entry moves.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Embedding(3, 2, padding_idx=1), nn.Linear(2, 1))
        >>> free_entries(net, ["1.bias", "0.weight"])
        tensor([0, 1, 2, 5, 6])
        >>> free_entries(net, ["1.weight", "1.bias"]) is None
        True
    """
    frozen = frozen_entries(network)
    if not any(name in frozen for name in names):
        return None
    parameters = dict(network.named_parameters())
    masks = [
        frozen[name].reshape(-1)
        if name in frozen
        else torch.zeros(parameters[name].numel(), dtype=torch.bool)
        for name in names
    ]
    return (~torch.cat([mask.cpu() for mask in masks])).nonzero().squeeze(-1)
