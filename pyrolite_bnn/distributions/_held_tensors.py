"""The tensors a distribution holds, and which of them share a module's memory.

A prior's distribution holds its parameters as tensors, also inside the
distributions and transforms it is made of (a mixture's components, a
transformed distribution's base and steps). The library's priors copy the
tensors that are their own buffers (so that Pyro's autoguides do not train
them); a prior callable's tensors are checked not to be, or share memory
with, a parameter of the network, which would move them with training.
:class:`LastChecked` remembers the tensors of the last distribution checked,
so that a callable returning the same tensors on every step is checked once.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import NamedTuple

from torch import Tensor
from torch.distributions import Distribution, Transform

__all__ = [
    "HeldTensor",
    "LastChecked",
    "held_tensors",
    "storage_address",
    "storage_names",
]

# Nesting depth to which distributions and transforms are looked into.
_DEPTH = 6


# What the tensors of a distribution are looked for in.
_MADE_OF = (Distribution, Transform)


class HeldTensor(NamedTuple):
    """A tensor attribute of a distribution or transform.

    Attributes:
        holder: the distribution or transform that holds it.
        name: its attribute name on ``holder``.
        prefix: the path to ``holder`` from the distribution looked at.
        tensor: the tensor.
    """

    holder: Distribution | Transform
    name: str
    prefix: str
    tensor: Tensor

    @property
    def path(self) -> str:
        """Where the tensor is, from the distribution looked at: ``"base_dist.loc"``."""
        return self.prefix + self.name


def held_tensors(distribution: Distribution) -> list[HeldTensor]:
    """The tensor attributes of ``distribution`` and of what it is made of.

    Attributes that are distributions or transforms, or lists and tuples of
    them (a ``TransformedDistribution``'s ``transforms``, a
    ``ComposeTransform``'s ``parts``), are looked into, each object once, to a
    depth of six; tensors inside lists and tuples (a transform's cache of its
    last input and output) are not taken.

    Args:
        distribution: a ``torch``/``pyro`` distribution.

    Returns:
        Each tensor attribute, with its holder, name and path.

    Example:
        >>> import torch
        >>> td = torch.distributions
        >>> normal = td.Normal(torch.zeros(2), torch.ones(2))
        >>> [held.path for held in held_tensors(td.Independent(normal, 1))]
        ['base_dist.loc', 'base_dist.scale']
    """
    found: list[HeldTensor] = []
    _collect(distribution, "", 0, set(), found)
    return found


def _collect(
    holder: Distribution | Transform,
    prefix: str,
    depth: int,
    seen: set[int],
    found: list[HeldTensor],
) -> None:
    """Add :func:`held_tensors` of ``holder`` to ``found``, paths after ``prefix``."""
    if id(holder) in seen or depth > _DEPTH:
        return
    seen.add(id(holder))
    for name, value in vars(holder).items():
        if isinstance(value, Tensor):
            found.append(HeldTensor(holder, name, prefix, value))
        elif isinstance(value, _MADE_OF):
            _collect(value, f"{prefix}{name}.", depth + 1, seen, found)
        elif type(value) in (list, tuple):  # not torch.Size, a tuple of ints
            for index, item in enumerate(value):
                if isinstance(item, _MADE_OF):
                    path = f"{prefix}{name}[{index}]."
                    _collect(item, path, depth + 1, seen, found)


def storage_names(named: Iterable[tuple[str, Tensor]]) -> dict[int, str]:
    """Where each tensor's memory starts -> its name (the first of shared memory).

    Tensors without memory of their own (empty, on the meta device,
    ``torch.func`` wrappers) are left out.

    Args:
        named: ``(name, tensor)`` pairs, e.g. ``module.named_parameters()``.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 3)
        >>> names = storage_names(layer.named_parameters())
        >>> names.get(storage_address(layer.weight[0].detach()))
        'weight'
        >>> names.get(storage_address(layer.weight.detach().clone())) is None
        True
    """
    names: dict[int, str] = {}
    for name, tensor in named:
        address = storage_address(tensor)
        if address is not None:
            names.setdefault(address, name)
    return names


def storage_address(tensor: Tensor) -> int | None:
    """Where ``tensor``'s memory starts; ``None`` without memory of its own.

    A tensor, its views and its ``.detach()`` share one storage, so one
    address; a copy (``.clone()``) or a tensor computed from it has another.
    """
    if not tensor.numel() or tensor.is_meta:
        return None
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (NotImplementedError, RuntimeError):  # torch.func wrappers, sparse
        return None


class LastChecked:
    """The tensors of the last distribution checked for a module, by identity.

    Weak references: a tensor freed since is no match (and a new tensor at
    its address none either). A copy of the holder (``deepcopy``, pickling)
    remembers nothing and checks afresh.

    Example:
        >>> import torch
        >>> loc = torch.zeros(2)
        >>> last = LastChecked()
        >>> last.matches([loc], owner=None)
        False
        >>> last.remember([loc], owner=7)
        >>> last.matches([loc], owner=7), last.matches([loc], owner=None)
        (True, True)
        >>> last.matches([loc], owner=8), last.matches([loc.clone()], owner=7)
        (False, False)
    """

    def __init__(self) -> None:
        self._tensors: tuple[weakref.ref[Tensor], ...] | None = None
        self._owner: int | None = None

    def matches(self, tensors: list[Tensor], owner: int | None) -> bool:
        """Whether ``tensors`` are those remembered, none requiring grad now.

        Args:
            tensors: the tensors of the distribution to check.
            owner: ``id`` of the module they are checked against; ``None``
                matches whatever module they were checked against.
        """
        remembered = self._tensors
        if remembered is None or len(remembered) != len(tensors):
            return False
        if owner is not None and owner != self._owner:
            return False
        return all(
            ref() is tensor and not tensor.requires_grad
            for ref, tensor in zip(remembered, tensors, strict=True)
        )

    def remember(self, tensors: list[Tensor], owner: int | None) -> None:
        """Remember ``tensors`` as checked (against the module ``owner``)."""
        self._tensors = tuple(weakref.ref(tensor) for tensor in tensors)
        self._owner = owner

    def __getstate__(self) -> dict[str, object]:
        """Nothing to keep: a copy checks afresh."""
        return {}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__()  # type: ignore[misc]
