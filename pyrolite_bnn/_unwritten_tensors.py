"""Tensors that ``to_empty`` left without values, refused where they are read.

``module.to_empty(device=...)`` gives every parameter and buffer new memory
holding no values (a meta build's materialisation, ``skip_init``); a reset or a
load writes them. A ``load_state_dict(strict=False)`` that misses one writes
none into it, and the library read the memory as it was: NaN outputs from a
posterior's mean, finite nonsense from its scales (0.69, 1.5e13), a prior or
noise scale of whatever the memory held. :class:`RefusesUnwrittenTensors`
records what ``to_empty`` gave each of its module's own tensors and refuses a
read of one that nothing was written to since, naming it
(:meth:`RefusesUnwrittenTensors.check_written`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["RefusesUnwrittenTensors"]

# Integer dtypes by element size: a tensor's bits read as integers.
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

# What ``to_empty``'s memory is filled with: every bit set (NaN in every
# floating dtype, not the NaN that arithmetic on numbers gives).
_UNWRITTEN = -1

# What a recorded tensor holds now (RefusesUnwrittenTensors._memory_state).
_MemoryState = Literal["written", "unwritten", "elsewhere"]


@dataclass(frozen=True)
class _EmptiedMemory:
    """A tensor's memory as ``to_empty`` gave it (no values).

    Recording it fills it with every bit set (:data:`_UNWRITTEN`, a NaN),
    one fill: any write then changes its bits (through ``.data`` too, whose
    writes the version counter does not see; zeros into zeroed memory as
    well), its address (a ``.data`` assignment, as ``vector_to_parameters``
    makes) or its version counter (in place: ``copy_``, ``torch.nn.init``,
    optimizer steps, also through the state dict's detached tensors). Only
    plain tensors are recorded: a tensor without memory of its own
    (``meta``, a subclass such as a ``DTensor``) is not refused.

    Attributes:
        tensor: the tensor object recorded (the module's own, as ``to_empty``
            left it): another object in its place was put there by someone
            else (``torch.func.functional_call`` for one call).
    """

    tensor: weakref.ref[Tensor]
    address: int
    version: int
    device: torch.device

    @classmethod
    def of(cls, tensor: Tensor) -> _EmptiedMemory | None:
        """Fill ``tensor``'s memory and record it (``None``: not a plain tensor)."""
        plain = tensor.detach()
        if plain.is_meta or type(plain) is not Tensor:
            return None
        if plain.element_size() not in _BITS:
            return None  # no integer view (complex128): held as the meta case
        _bits(plain).fill_(_UNWRITTEN)
        return cls(weakref.ref(tensor), plain.data_ptr(), plain._version, plain.device)

    def written(self, tensor: Tensor, *, by_version: bool = True) -> bool:
        """Whether ``tensor`` (the recorded object) was written since.

        Args:
            tensor: the recorded tensor.
            by_version: whether a moved version counter counts as a write
                without reading the memory. ``False`` for a tensor that
                ``torch.nn.utils.parametrize`` moved: its ``set_`` onto the
                same memory moves the counter and writes nothing.
        """
        plain = tensor.detach()
        if plain.is_meta or type(plain) is not Tensor:
            return False  # no memory to compare (a tensor made a subclass since)
        return (
            plain.data_ptr() != self.address
            or (by_version and plain._version != self.version)
            or plain.device != self.device
            or not bool(_bits(plain).eq(_UNWRITTEN).all())
        )


def _bits(tensor: Tensor) -> Tensor:
    """``tensor``'s memory read as integers of its element size (a view)."""
    return tensor.view(_BITS[tensor.element_size()])


def _empties(fn: Callable[[Tensor], Tensor]) -> bool:
    """Whether ``fn`` is ``nn.Module.to_empty``'s (new memory, no values).

    Its memory may hold anything, the old values too (a freed copy of them):
    compared values alone cannot tell it from a move.
    """
    return getattr(fn, "__qualname__", "").startswith("Module.to_empty.")


class RefusesUnwrittenTensors(nn.Module):
    """A module whose own tensors, after ``to_empty``, are read only once written.

    ``to_empty`` (recognised in :meth:`_apply`) fills each of the module's
    own parameters and buffers with NaN (every bit set) and records it; a
    write (a reset, a load, ``copy_``, an optimizer step, ``.data``) is seen
    by the tensor's address, version counter or bits. The subclass calls
    :meth:`check_written` where it reads its tensors (a forward pass, a draw,
    the KL, a prediction): a tensor never written since raises a
    ``ValueError`` naming it and the remedy. Per read it costs one attribute
    read while nothing is recorded (every step of a network never emptied);
    each tensor's memory is read at most once after ``to_empty``, and a
    written tensor's record is then forgotten. A move (``.to()``,
    ``.double()``) or a copy (``copy.deepcopy``, a pickle) of memory nothing
    was written to holds no values either; one of written memory holds them.

    A tensor swapped in for one call (``torch.func.functional_call``) is
    read, and writes nothing into the module's own tensor: the record stays.
    Not checked under ``torch.compile``, nor for memory that cannot be read
    (``torch.func`` wrappers) or tensors not plain (``meta``, subclasses).
    """

    # After to_empty: own tensor name -> its memory as to_empty gave it, for
    # the tensors nothing was seen written to since; None: none (also the
    # class default: modules pickled before it existed).
    _unwritten: dict[str, _EmptiedMemory] | None = None

    def check_written(self) -> None:
        """Refuse to read the module's tensors while one holds no values.

        Raises:
            ValueError: naming the tensor nothing was written to since
                ``to_empty``, and the remedy.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> prior = bnn.NormalPrior(0.0, 0.5).to_empty(device="cpu")
            >>> try:
            ...     prior.check_written()
            ... except ValueError as error:
            ...     print(str(error).split(":")[0])
            NormalPrior tensor 'loc' of shape () holds no values
            >>> prior.reset_parameters()
            >>> prior.check_written()
        """
        record = self._unwritten
        if record is None or torch.compiler.is_compiling():
            return
        for name in list(record):
            state = self._memory_state(name)
            if state == "written":
                self._note_written(name)
            elif state == "unwritten":
                tensor = record[name].tensor()
                assert tensor is not None  # alive: it holds no values
                shape = tuple(tensor.shape)
                raise ValueError(
                    f"{type(self).__name__} tensor {name!r} of shape {shape} holds "
                    "no values: after to_empty a module's parameters and buffers "
                    "hold none until they are written, and a "
                    "load_state_dict(strict=False) without them (its missing_keys) "
                    "writes none: call reset_parameters() on the model's modules "
                    "first, or load a state_dict holding them"
                )

    def _own_tensor(self, name: str) -> Tensor | None:
        """The parameter or buffer ``name`` of this module (``None``: none)."""
        if name in self._parameters:
            return self._parameters[name]
        return self._buffers.get(name)

    def _memory_state(self, name: str) -> _MemoryState | None:
        """What the tensor ``name``, recorded at ``to_empty``, holds now.

        ``"written"``: values were written to it since (or it was replaced,
        and freed); ``"unwritten"``: none; ``"elsewhere"``: another tensor is
        in its place (``torch.func.functional_call`` swaps one in for a call,
        which writes nothing into this one); ``None``: not recorded, or its
        memory cannot be read (``torch.func`` wrappers).
        """
        memory = (self._unwritten or {}).get(name)
        if memory is None:
            return None
        recorded = memory.tensor()
        if recorded is None:
            return "written"
        current = self._own_tensor(name)  # None: moved (parametrize, prune)
        if current is not None and current is not recorded:
            return "elsewhere"
        try:
            written = memory.written(recorded, by_version=current is not None)
            return "written" if written else "unwritten"
        except RuntimeError:  # no memory of its own (torch.func wrappers)
            return None

    def _still_unwritten(self) -> list[str]:
        """The recorded tensors that hold no values; the others are noted written.

        A tensor another one replaced for good (``elsewhere`` while the module
        is moved or copied) counts as written: its memory is not refilled.
        """
        unwritten = []
        for name in list(self._unwritten or {}):
            if self._memory_state(name) == "unwritten":
                unwritten.append(name)
            else:
                self._note_written(name)
        return unwritten

    def _note_written(self, name: str) -> None:
        """Forget the record of the tensor ``name``: it holds values now."""
        record = self._unwritten
        if record is not None and name in record:
            rest = {key: memory for key, memory in record.items() if key != name}
            self._unwritten = rest or None

    def _note_emptied(self, names: Iterable[str]) -> None:
        """Record the tensors ``names`` as holding no values (filled with NaN).

        Replaces the record: the other tensors hold values.
        """
        record = {}
        for name in names:
            tensor = self._own_tensor(name)
            memory = None if tensor is None else _EmptiedMemory.of(tensor)
            if memory is not None:
                record[name] = memory
        self._unwritten = record or None

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        """Torch's; ``to_empty``'s memory is recorded (see the class).

        ``.to()``, ``.double()`` or ``.cuda()`` move the tensors with their
        values; ``to_empty`` (recognised by its function) gives memory holding
        none (or anything, a freed copy of the old values too). A move of
        memory that nothing was written to since holds none either.
        """
        unwritten = self._still_unwritten()
        result = super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        if _empties(fn):
            unwritten = [*self._parameters, *self._buffers]
        if unwritten:
            self._note_emptied(unwritten)
        return result

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Torch's; a tensor loaded is written (``assign=True``: new memory)."""
        super()._load_from_state_dict(
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )
        if error_msgs:
            return
        for name in list(self._unwritten or {}):
            if prefix + name in state_dict:
                self._note_written(name)

    def __getstate__(self) -> dict[str, Any]:
        """Torch's, with the names of the tensors holding no values.

        A copy (``copy.deepcopy``, a pickle) of memory nothing was written to
        since ``to_empty`` holds no values either: the copy records its own
        memory on arrival (:meth:`__setstate__`).
        """
        unwritten = self._still_unwritten()
        state: dict[str, Any] = dict(super().__getstate__())  # type: ignore[no-untyped-call]
        if unwritten:
            state["_unwritten"] = tuple(unwritten)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Torch's; tensors copied from ``to_empty``'s memory, unwritten, hold none."""
        state = dict(state)
        names = state.pop("_unwritten", None)
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        if isinstance(names, tuple):
            self._note_emptied(names)
