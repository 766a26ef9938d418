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

The memory recorded holds every bit set (:func:`holds_no_values`), and
``state_dict()`` passes it on as it is: a state saved from such a tensor
holds no values for it, and loading it writes none (the loading module
records the tensor as unwritten, saying where it came from).
``state_dict()`` itself does not refuse: torch's distributed checkpoints
(``torch.distributed.checkpoint.load``) and FSDP's deferred initialisation
load *into* the tensors that ``state_dict()`` of an emptied module returns,
and those writes are seen as writes. :func:`unwritten_state_keys` names a
network's unwritten tensors, for those that must not pass them on, and
:func:`unwritten_state_remedies` what writes each
(:func:`~pyrolite_bnn.checkpoint.save_checkpoint` refuses them, saying so).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "RefusesUnwrittenTensors",
    "holds_no_values",
    "unwritten_state_keys",
    "unwritten_state_remedies",
]

# Integer dtypes by element size: a tensor's bits read as integers.
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

# What ``to_empty``'s memory is filled with: every bit set (NaN in every
# floating dtype, not the NaN that arithmetic on numbers gives).
_UNWRITTEN = -1

# What a recorded tensor holds now (RefusesUnwrittenTensors._memory_state).
_MemoryState = Literal["written", "unwritten", "elsewhere"]

# Where a recorded tensor's lack of values came from: ``to_empty`` (or an
# interrupted conversion of its memory), or a load of a state saved from
# such a tensor.
_Origin = Literal["emptied", "loaded"]

# Why a tensor of each origin holds no values, as the refusal says it.
_CAUSES: dict[_Origin, str] = {
    "emptied": (
        "after to_empty a module's parameters and buffers hold none until they "
        "are written, and a load_state_dict(strict=False) without them (its "
        "missing_keys) writes none"
    ),
    "loaded": (
        "the state dict loaded into it held none for it: it was saved from a "
        "tensor that nothing had written to since to_empty (state_dict() passes "
        "such memory on as it is, every bit set), and loading that writes no "
        "values"
    ),
}


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
        tensor_id: the ``id`` of the tensor object recorded (the module's own,
            as ``to_empty`` left it): another object in its place was put
            there by someone else (``torch.func.functional_call`` for one
            call). An identity, not a reference, weak or strong: a weak
            reference makes ``torch.utils.swap_tensors`` refuse the tensor
            (``Module.to()`` swaps every tensor under
            ``torch.__future__.set_swap_module_params_on_conversion(True)``),
            and a strong one would keep a replaced tensor's memory alive. A
            new object that took a freed one's identity is told by its memory
            (:meth:`written`).
        origin: why it holds no values (``to_empty``, or a load of a state
            saved without them), for the refusal's message.
    """

    tensor_id: int
    address: int
    version: int
    device: torch.device
    origin: _Origin

    @classmethod
    def of(cls, tensor: Tensor, origin: _Origin) -> _EmptiedMemory | None:
        """Fill ``tensor``'s memory and record it (``None``: not a plain tensor)."""
        plain = tensor.detach()
        if plain.is_meta or type(plain) is not Tensor:
            return None
        if plain.element_size() not in _BITS:
            return None  # no integer view (complex128): held as the meta case
        _bits(plain).fill_(_UNWRITTEN)
        return cls(id(tensor), plain.data_ptr(), plain._version, plain.device, origin)

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


def holds_no_values(tensor: object) -> bool:
    """Whether ``tensor`` holds the memory of a tensor nothing wrote after ``to_empty``.

    Every bit set in every element: what :class:`RefusesUnwrittenTensors`
    fills ``to_empty``'s memory with, and what ``state_dict()`` of such a
    module passes on. Only floating-point (and complex) tensors with values
    are read: every bit set is a NaN that no arithmetic gives (``float("nan")``
    has other bits), while ``-1`` in an integer tensor is a value like any
    other. A tensor without memory of its own (``meta``, a subclass) or
    without elements holds none of it, nor does a sparse or nested one
    (``to_empty``'s memory is dense, and their bits cannot be viewed as
    integers: the elements a sparse tensor does not store are zeros).

    Args:
        tensor: a value of a state dict (anything: a non-tensor holds none).

    Example:
        >>> import torch
        >>> from pyrolite_bnn._unwritten_tensors import holds_no_values
        >>> holds_no_values(torch.full((2,), float("nan")))
        False
        >>> holds_no_values(torch.full((2,), -1, dtype=torch.int32).view(torch.float32))
        True
        >>> holds_no_values(torch.eye(2).to_sparse())
        False
    """
    if not isinstance(tensor, Tensor):
        return False
    plain = tensor.detach()
    if (
        type(plain) is not Tensor
        or plain.is_meta
        or plain.is_nested
        or plain.layout != torch.strided
        or plain.numel() == 0
        or not (plain.is_floating_point() or plain.is_complex())
        or plain.element_size() not in _BITS
    ):
        return False
    bits = _bits(plain)
    if int(bits.reshape(-1)[0]) != _UNWRITTEN:  # one element read: most states
        return False
    return bool(bits.eq(_UNWRITTEN).all())


def unwritten_state_keys(module: nn.Module) -> list[str]:
    """The keys, as ``module.state_dict()`` names them, of tensors holding no values.

    The keys of :func:`unwritten_state_remedies`, in its order.

    Args:
        module: a network, a loss, a calibration.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> from pyrolite_bnn._unwritten_tensors import unwritten_state_keys
        >>> layer = bnn.VILinear(3, 2).to_empty(device="cpu")
        >>> state = bnn.VILinear(3, 2).state_dict()
        >>> del state["posterior.bias.rho_unconstrained"]
        >>> _ = layer.load_state_dict(state, strict=False)
        >>> unwritten_state_keys(layer)
        ['posterior.bias.rho_unconstrained']
    """
    return list(unwritten_state_remedies(module))


def unwritten_state_remedies(module: nn.Module) -> dict[str, str]:
    """Each tensor of ``module`` holding no values, with what writes values into it.

    The tensors of every :class:`RefusesUnwrittenTensors` inside ``module``
    that nothing was written to since ``to_empty``, or that a load of a state
    saved from such a tensor left without values
    (:meth:`RefusesUnwrittenTensors.unwritten_tensors`), keyed as
    ``module.state_dict()`` names them, each with its module's
    :meth:`~RefusesUnwrittenTensors.unwritten_remedy` (a prior's or
    posterior's ``reset_parameters()``, a calibrated likelihood's new wrap).
    A module reached by several paths is named by each; non-persistent
    buffers are named too (keys not in ``state_dict()``). Tensors of other
    modules (torch's own layers) are not watched, and not named.

    Args:
        module: a network, a loss, a calibration.

    Example:
        >>> import pyrolite_bnn as bnn
        >>> from pyrolite_bnn._unwritten_tensors import unwritten_state_remedies
        >>> prior = bnn.NormalPrior(0.0, 0.5).to_empty(device="cpu")
        >>> remedies = unwritten_state_remedies(prior)
        >>> list(remedies), remedies["loc"].split(" (")[0]
        (['loc', 'scale'], 'call reset_parameters() first')
    """
    remedies = {}
    for prefix, part in _named_parts(module):
        if isinstance(part, RefusesUnwrittenTensors):
            names = part.unwritten_tensors()
            if names:
                remedy = part.unwritten_remedy()
                remedies.update({prefix + name: remedy for name in names})
    return remedies


def _named_parts(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``module`` and every module inside it, each with its state-dict prefix."""
    for name, part in module.named_modules(remove_duplicate=False):
        yield (f"{name}." if name else ""), part


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
    A ``to_empty`` or a move stopped half-way (a ``KeyboardInterrupt``)
    records the tensors it gave new memory so far.

    A load writes a tensor, unless the state's value is such memory saved
    as it was (:func:`holds_no_values`: ``state_dict()`` of an emptied module
    passes it on): the tensor is then recorded as holding no values, and the
    refusal says that the state it was loaded from held none.

    A tensor swapped in for one call (``torch.func.functional_call``) is
    read, and writes nothing into the module's own tensor: the record stays.
    The record holds no reference to the tensors (their identities only), so
    conversions that swap tensors in place
    (``torch.__future__.set_swap_module_params_on_conversion(True)``) convert
    them as any others. Not checked under ``torch.compile``, nor for memory
    that cannot be read (``torch.func`` wrappers) or tensors not plain
    (``meta``, subclasses).
    """

    # After to_empty: own tensor name -> its memory as to_empty gave it, for
    # the tensors nothing was seen written to since; None: none (also the
    # class default: modules pickled before it existed).
    _unwritten: dict[str, _EmptiedMemory] | None = None

    def check_written(self) -> None:
        """Refuse to read the module's tensors while one holds no values.

        Raises:
            ValueError: naming the tensor nothing was written to since
                ``to_empty`` (or that was loaded from a state saved without
                values), why it holds none, and the remedy
                (:meth:`unwritten_remedy`).

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
                memory = record[name]
                tensor = self._recorded_tensor(name, memory)
                assert tensor is not None  # held here: it holds no values
                shape = tuple(tensor.shape)
                raise ValueError(
                    f"{type(self).__name__} tensor {name!r} of shape {shape} holds "
                    f"no values: {_CAUSES[memory.origin]}: {self.unwritten_remedy()}"
                )

    def unwritten_remedy(self) -> str:
        """What writes values into this module's tensors, as :meth:`check_written` says.

        A module with a ``reset_parameters`` (posteriors, priors, a noise
        scale) is told to call it, as torch re-initialises after
        ``to_empty``; one without is told to load a state holding values
        (no ``reset_parameters`` is declared here: FSDP's deferred
        initialisation calls it on every module that has one). Subclasses
        whose tensors something else writes say so (a calibration's fit).

        Example:
            >>> import pyrolite_bnn as bnn
            >>> bnn.NormalPrior().unwritten_remedy()  # doctest: +ELLIPSIS
            'call reset_parameters() first (on every module of the network, ...'
        """
        if callable(getattr(self, "reset_parameters", None)):
            return (
                "call reset_parameters() first (on every module of the network, "
                "or of the loss, that has one), or load a state_dict that holds "
                "values for it"
            )
        return (
            "load a state_dict that holds values for it "
            f"({type(self).__name__} has no reset_parameters)"
        )

    def unwritten_tensors(self) -> list[str]:
        """The names of the module's own tensors that hold no values now.

        Those nothing was written to since ``to_empty``, and those a load of
        a state saved without values left without them; the records of the
        others are forgotten (their memory is read at most once).

        Example:
            >>> import pyrolite_bnn as bnn
            >>> prior = bnn.NormalPrior(0.0, 0.5).to_empty(device="cpu")
            >>> prior.unwritten_tensors()
            ['loc', 'scale']
            >>> prior.reset_parameters()
            >>> prior.unwritten_tensors()
            []
        """
        return list(self._still_unwritten())

    def _own_tensor(self, name: str) -> Tensor | None:
        """The parameter or buffer ``name`` of this module (``None``: none)."""
        if name in self._parameters:
            return self._parameters[name]
        return self._buffers.get(name)

    def _recorded_tensor(self, name: str, memory: _EmptiedMemory) -> Tensor | None:
        """The tensor recorded as ``name``, where this module holds it now.

        In its place, or moved within the module (``torch.nn.utils.parametrize``
        keeps it as ``parametrizations.<name>.original``, ``prune`` as
        ``<name>_orig``); ``None``: not held here (deleted, or another tensor
        is in its place).
        """
        current = self._own_tensor(name)
        if current is not None:
            return current if id(current) == memory.tensor_id else None
        return next(_with_identity(self, memory.tensor_id), None)

    def _memory_state(self, name: str) -> _MemoryState | None:
        """What the tensor ``name``, recorded at ``to_empty``, holds now.

        ``"written"``: values were written to it since (or it is no longer
        held here: deleted); ``"unwritten"``: none; ``"elsewhere"``: another
        tensor is in its place (``torch.func.functional_call`` swaps one in for
        a call, which writes nothing into this one; or an assignment replaced
        it); ``None``: not recorded, or its memory cannot be read
        (``torch.func`` wrappers).
        """
        memory = (self._unwritten or {}).get(name)
        if memory is None:
            return None
        current = self._own_tensor(name)  # None: moved (parametrize, prune)
        recorded = self._recorded_tensor(name, memory)
        if recorded is None:
            return "written" if current is None else "elsewhere"
        try:
            written = memory.written(recorded, by_version=current is not None)
            return "written" if written else "unwritten"
        except RuntimeError:  # no memory of its own (torch.func wrappers)
            return None

    def _still_unwritten(self) -> dict[str, _Origin]:
        """The recorded tensors that hold no values; the others are noted written.

        Each with why it holds none. A tensor another one replaced for good
        (``elsewhere`` while the module is moved or copied) counts as
        written: its memory is not refilled.
        """
        unwritten: dict[str, _Origin] = {}
        for name, memory in list((self._unwritten or {}).items()):
            if self._memory_state(name) == "unwritten":
                unwritten[name] = memory.origin
            else:
                self._note_written(name)
        return unwritten

    def _note_written(self, name: str) -> None:
        """Forget the record of the tensor ``name``: it holds values now."""
        record = self._unwritten
        if record is not None and name in record:
            rest = {key: memory for key, memory in record.items() if key != name}
            self._unwritten = rest or None

    def _note_emptied(
        self, origins: Mapping[str, _Origin], *, replace: bool = True
    ) -> None:
        """Record the tensors named in ``origins`` as holding no values.

        Each is filled with NaN (every bit set) and recorded with why it
        holds none. ``replace``: the other tensors hold values (their records
        are forgotten); else their records are kept as they are (their
        memory is not refilled: a write not seen yet would be lost).
        """
        record = {} if replace else dict(self._unwritten or {})
        for name, origin in origins.items():
            tensor = self._own_tensor(name)
            memory = None if tensor is None else _EmptiedMemory.of(tensor, origin)
            if memory is not None:
                record[name] = memory
        self._unwritten = record or None

    def _memory_addresses(self) -> dict[str, tuple[int, int] | None]:
        """Each own tensor's object and address (``None``: not readable)."""
        addresses: dict[str, tuple[int, int] | None] = {}
        for name, tensor in (*self._parameters.items(), *self._buffers.items()):
            addresses[name] = None
            if tensor is not None:
                # No memory of its own (torch.func wrappers): None.
                with contextlib.suppress(RuntimeError):
                    addresses[name] = (id(tensor), tensor.data_ptr())
        return addresses

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        """Torch's; ``to_empty``'s memory is recorded (see the class).

        ``.to()``, ``.double()`` or ``.cuda()`` move the tensors with their
        values; ``to_empty`` (recognised by its function) gives memory holding
        none (or anything, a freed copy of the old values too). A move of
        memory that nothing was written to since holds none either. Torch
        gives the tensors new memory one at a time: a ``to_empty`` stopped
        half-way (a ``KeyboardInterrupt``, an allocation that fails) records
        the tensors it gave new memory before it stopped, and a move stopped
        half-way records the unwritten tensors it moved, before the error
        goes on.
        """
        unwritten = self._still_unwritten()
        empties = _empties(fn)
        before = self._memory_addresses() if empties else {}
        try:
            result = super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        except BaseException:
            if empties:
                after = self._memory_addresses()
                moved = [name for name in before if after.get(name) != before[name]]
                unwritten.update(dict.fromkeys(moved, "emptied"))
            if unwritten:
                self._note_emptied(unwritten)
            raise
        if empties:
            unwritten = dict.fromkeys([*self._parameters, *self._buffers], "emptied")
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
        """Torch's; a tensor loaded is written, unless the state held no values.

        ``assign=True`` gives it new memory, written too. A value holding the
        memory of a tensor nothing wrote after ``to_empty``
        (:func:`holds_no_values`) writes none: the tensor that received it
        (every element NaN now) is recorded as holding no values, loaded so.
        """
        super()._load_from_state_dict(
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )
        received_none: dict[str, _Origin] = {}
        loaded = []
        for name in [*self._parameters, *self._buffers]:
            if prefix + name not in state_dict:
                continue
            if holds_no_values(state_dict[prefix + name]) and self._received(name):
                received_none[name] = "loaded"
            else:
                loaded.append(name)
        if received_none:
            self._note_emptied(received_none, replace=False)
        if error_msgs:
            return
        for name in loaded:
            self._note_written(name)

    def _received(self, name: str) -> bool:
        """Whether the tensor ``name`` holds a load of memory without values.

        Every element NaN: the load copied it (in the tensor's dtype: no
        longer every bit set in another) or assigned it; a load refused for
        this tensor (another shape) left its values.
        """
        tensor = self._own_tensor(name)
        if tensor is None or tensor.is_meta or type(tensor.detach()) is not Tensor:
            return False
        return bool(tensor.detach().isnan().all())

    def __getstate__(self) -> dict[str, Any]:
        """Torch's, with the names of the tensors holding no values.

        A copy (``copy.deepcopy``, a pickle) of memory nothing was written to
        since ``to_empty`` holds no values either: the copy records its own
        memory on arrival (:meth:`__setstate__`), with why it holds none.
        """
        unwritten = self._still_unwritten()
        state: dict[str, Any] = dict(super().__getstate__())  # type: ignore[no-untyped-call]
        if unwritten:
            state["_unwritten"] = unwritten
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Torch's; tensors copied from memory without values hold none.

        A state pickled before the origins were kept names the tensors only
        (a tuple): they were ``to_empty``'s.
        """
        state = dict(state)
        names = state.pop("_unwritten", None)
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        if isinstance(names, tuple):
            names = dict.fromkeys(names, "emptied")
        if isinstance(names, dict):
            self._note_emptied(names)


def _with_identity(module: nn.Module, tensor_id: int) -> Iterator[Tensor]:
    """``module``'s tensors (its submodules' too) whose ``id`` is ``tensor_id``."""
    for tensor in (*module.parameters(), *module.buffers()):
        if id(tensor) == tensor_id:
            yield tensor
