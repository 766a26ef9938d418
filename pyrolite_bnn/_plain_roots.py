"""Plain torch modules as networks: ``nn.Sequential(VILinear(2, 8), ReLU(), ...)``.

A plain module (not a ``VIModule``) that holds Bayesian layers must run as
*one* network: one particle state for all its layers,
every KL term, and an output of shape ``(S, B, ...)``, exactly like
``bnn.VISequential``. The library cannot override a plain module's
``__call__``, so it watches module calls with torch's global forward
pre-hook, installed when the first ``VIModule`` is built:

* the pre-hook gives the outermost call of a module with children (no
  particle state, no frame yet) a *frame* and a forward hook of that module
  alone to close it; the frame is *pending* if the module is such a network
  (below), which is looked up only when a Bayesian layer is called inside;
* the first Bayesian layer called inside a pending frame opens it: the
  particle state and the generated guide's weight draws for every layer of the
  plain module, with site names from its paths (``"0.weight"``), as the
  outermost call of a ``VIModule`` would (:func:`open_pending_root`);
* the module's forward hook closes the frame; an opened one unfolds the output to
  ``(S, B, ...)`` and attaches the forward pass's record for the loss.

The particle count is the module's ``samples`` attribute if it has one, else
10. Called inside Pyro inference (the user's own Pyro model), the opened frame
is the particle plate with one sample site per weight, as for a ``VIModule``.
A plain module holding a single Bayesian layer is a network too (so a
``VILSTM`` under a plain module sees torch's state layout), except where that
``VIModule`` is the network already: under a pass-through wrapper
(``DistributedDataParallel``, ``DataParallel``, ``torch.compile``'s), when it
has an assigned guide of its own or no random variables, or when it is called
with ``samples=``. A module whose ``forward`` Lightning redirected to a
training step (its DDP strategy, Fabric's ``mark_forward_method``) is no
network: the network the step calls is (:mod:`pyrolite_bnn._redirected_steps`).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar
from types import FrameType
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.nn.parallel import DataParallel, DistributedDataParallel
from torch.nn.utils.rnn import PackedSequence
from torch.utils.hooks import RemovableHandle

from pyrolite_bnn import _particles
from pyrolite_bnn._distributed import is_compiled, unwrap
from pyrolite_bnn._draws import LazyDraws, using_draws
from pyrolite_bnn._forward import (
    attach,
    generated_guide_draws,
    prepare,
    refuse_particles_under_mcmc,
)
from pyrolite_bnn._handlers import pyro_wrapped
from pyrolite_bnn._network import (
    collect_variables,
    facts_kept_for_the_call,
    has_sequence_first_layers,
    outermost_bayesian,
    refuse_pyro_statements,
    runs_on_its_own,
)
from pyrolite_bnn._pyro_module import local_params
from pyrolite_bnn._redirected_steps import runs_a_redirected_step
from pyrolite_bnn._sites import SiteTable, sampling_sites
from pyrolite_bnn.layers.batchnorm import warn_plain_batch_norm
from pyrolite_bnn.module import DEFAULT_SAMPLES, VIModule
from pyrolite_bnn.record import LayerRecord

__all__ = [
    "close_stale_frame",
    "in_running_network",
    "install",
    "note_output",
    "open_pending_root",
    "watching_hook_id",
]


class _Frame:
    """The outermost running call of a plain module."""

    def __init__(
        self, module: nn.Module, args: tuple[Any, ...], caller: FrameType
    ) -> None:
        self.module = module
        self.args = args
        # The interpreter frame running the module's call: the frame is stale
        # once it no longer runs (see :meth:`running`).
        self.caller: FrameType | None = caller
        # The grad mode of the module's call: weights are drawn in it, even
        # when the first Bayesian layer runs under torch.no_grad().
        self.grad_enabled = torch.is_grad_enabled()
        # Whether it must run as one network (pending until its first Bayesian
        # call), and its one Bayesian module, which may still be called as the
        # network: found by :meth:`resolve` when a Bayesian layer is first
        # called inside, so calls of plain models without Bayesian layers do
        # not walk their module trees.
        self.pending: bool | None = None
        self.single: VIModule | None = None
        # What ``single`` returned: returned as is by the plain module, it is
        # laid out by ``single.unfold_output`` (a VILSTM's states).
        self.single_output: Any = None
        self.depth = 0  # nested calls of the same module object
        # The module's own forward hook that closes the frame (_leave, bound
        # to this frame: a hook whose frame is gone does nothing).
        self.closer: RemovableHandle | None = None
        self.stack: _Opened | None = None
        self.state: _particles.ParticleState | None = None
        self.draws: LazyDraws | None = None

    def __reduce__(self) -> tuple[Callable[[], _Frame], tuple[()]]:
        """A copy is an ended frame: its hook, copied with the module, does nothing.

        The module's forward hook holds its frame, which holds the running
        call's interpreter frame: after a Ctrl-C that skipped the hook (until
        the next module call closes the frame as stale), ``copy.deepcopy`` and
        ``torch.save`` of the module would fail on it.
        """
        return _ended_frame, ()

    def call_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the module's running call.

        torch's global forward pre-hooks (which open the frame) get the
        positional arguments only; the keyword ones are read from the running
        call's interpreter frame (``Module._call_impl``), ``{}`` if not found.
        """
        kwargs = None if self.caller is None else self.caller.f_locals.get("kwargs")
        return kwargs if isinstance(kwargs, dict) else {}

    def running(self) -> bool:
        """Whether the module's call is still running.

        Its forward hook closes the frame when the call ends, except when it
        ends by a ``BaseException`` that is not an ``Exception`` (a
        ``KeyboardInterrupt``: torch runs ``always_call`` hooks for
        ``Exception`` only). ``frame.clear()`` raises for a running
        interpreter frame, and releases the locals of a finished one.
        """
        caller = self.caller
        if caller is None:
            return False
        try:
            caller.clear()
        except RuntimeError:
            return True
        self.caller = None
        return False

    def resolve(self) -> bool:
        """Whether the module must run as one network (decided once per call)."""
        if self.pending is None:
            # A compiled wrapper's network is the module inside its wrappers
            # (torch.compile(DDP(net))); a VIModule there is its own network.
            # (Data-parallel wrappers open no frame: see _enter.)
            module = unwrap(self.module) if is_compiled(self.module) else self.module
            inner = (
                []
                if module is not self.module and isinstance(module, VIModule)
                else outermost_bayesian(module)
            )
            self.pending = len(inner) > 1 or (
                len(inner) == 1 and not runs_on_its_own(inner[0])
            )
            self.single = inner[0] if len(inner) == 1 else None
        return self.pending


def _ended_frame() -> _Frame:
    """A frame that was never set: the hook of a copied module holds one."""
    return _Frame.__new__(_Frame)


_FRAME: ContextVar[_Frame | None] = ContextVar("pyrolite_plain_root", default=None)
_installed: RemovableHandle | None = None


def install() -> None:
    """Install the global module forward pre-hook (once per process)."""
    global _installed
    if _installed is None:
        _installed = register_module_forward_pre_hook(_enter)


def watching_hook_id() -> int | None:
    """The id of the global module hook :func:`install` installed (``None``: none).

    torch lists it with the user's global hooks
    (``torch.nn.modules.module.register_module_forward_pre_hook``); it acts
    on this library's networks only and is none of the user's.
    """
    return None if _installed is None else _installed.id


def _enter(module: nn.Module, args: tuple[Any, ...]) -> None:
    if torch.compiler.is_compiling():
        # torch.compile traces this hook into every module it compiles: plain
        # models are no networks of this library's, and a context variable
        # cannot be traced (fullgraph=True would fail, others run eagerly).
        return
    frame = _FRAME.get()
    if frame is not None and not frame.running():
        _close(frame, ended=False)
        frame = None
    state = _particles.current()
    if state is not None:
        if isinstance(module, _POSITION_MIXING) and not isinstance(module, VIModule):
            if isinstance(module, nn.MultiheadAttention):
                _check_attention_particles(module, args, state)
            _check_sequence_first_input(module, args, state)
            if isinstance(module, nn.RNNBase):
                _note_folded_states(module, args, state)
        elif isinstance(module, _BatchNorm):
            warn_plain_batch_norm(module, args, state)
        return
    if frame is not None:
        if frame.module is module:
            frame.depth += 1
        elif isinstance(module, _POSITION_MIXING):
            _check_before_first_draw(frame, module, args)
        return
    if (
        isinstance(module, (VIModule, torch.jit.ScriptModule, *_DATA_PARALLEL))
        or next(module.children(), None) is None
        or runs_a_redirected_step(module)
    ):
        # A leaf module holds no Bayesian layers, nor does a scripted one
        # (which takes no forward hooks); a data-parallel wrapper's network is
        # the module it wraps, whose call comes next, and a redirected
        # Lightning step's the network the step calls.
        return
    # The interpreter frame of the module's call, which runs this hook.
    frame = _Frame(module, args, sys._getframe(1))
    # Only this call needs closing: a hook of the module itself, not a global
    # one that would run after every module call in the process. Nothing is
    # stored after the frame is set (no token: the value before is always
    # None), so an interrupt landing anywhere here leaves either no frame or
    # one that closes as stale (a hook registered whose handle was lost
    # does nothing: it is bound to its own frame).
    frame.closer = module.register_forward_hook(
        functools.partial(_leave, frame), always_call=True
    )
    _FRAME.set(frame)


def close_stale_frame() -> None:
    """Close the frame of a plain module's call that ended without closing it.

    A ``KeyboardInterrupt`` in a plain network's forward skips its forward
    hook: its particle state would stay open, and every later call in the
    process would run as a layer nested in it.
    """
    frame = _FRAME.get()
    if frame is not None and not frame.running():
        _close(frame, ended=False)


def in_running_network() -> bool:
    """Whether a network's call is running (a layer call is then nested in it).

    A stale plain-module frame (:func:`close_stale_frame`) is closed first.
    """
    if _particles.current() is None:
        return False
    close_stale_frame()
    return _particles.current() is not None


class _Opened:
    """What a plain network's call entered, exited in reverse order when it ends.

    Unlike an ``ExitStack``, which takes an exit off its list before running
    it, an exit stays on the list until it has returned, and is recorded
    before its manager is entered: a Ctrl-C that stops an exit (or an enter)
    leaves it there, and the next close of the frame, as stale, runs it.
    Every manager entered is one whose exit may run again, or without its
    enter, when exited with the exception (``set_while``, generator context
    managers).
    """

    def __init__(self) -> None:
        self._exits: list[AbstractContextManager[Any]] = []

    def enter(self, manager: AbstractContextManager[Any]) -> None:
        """Enter ``manager``, to be exited when the frame closes."""
        self._exits.append(manager)
        manager.__enter__()

    def close(self, interrupt: KeyboardInterrupt | None) -> None:
        """Exit what was entered: normally, or as by ``interrupt``."""
        info = (
            (None, None, None)
            if interrupt is None
            else (
                KeyboardInterrupt,
                interrupt,
                None,
            )
        )
        while self._exits:
            self._exits[-1].__exit__(*info)
            self._exits.pop()


def _close(frame: _Frame, *, ended: bool = True) -> None:
    """End ``frame``: close what it opened, drop its hook and unset it.

    ``ended=False`` for a stale frame (its call ended without its hook): what
    it opened is closed as by the exception that ended the call, so that the
    Pyro handlers among them, which that exception has already unwound, leave
    Pyro's handler stack as it is. The frame is unset only once all it opened
    is closed: one a Ctrl-C stopped while closing stays set, stale, and the
    next module call closes the rest.
    """
    if frame.stack is not None:
        frame.stack.close(None if ended else KeyboardInterrupt())
    if frame.closer is not None:
        frame.closer.remove()
    # The call's interpreter frame holds the closing hook (torch's loop
    # variable), which holds this frame: a cycle that kept the caller's
    # locals (an optimizer, a batch) alive after the call.
    frame.caller = None
    # Frames never nest (one is set only where none is), so the value
    # before it was None; set, not reset: a stale frame may be seen in
    # another context than the one that set it.
    _FRAME.set(None)


# Plain torch layers that mix the positions of a sequence (stacks and
# nn.Transformer call these for every layer).
_POSITION_MIXING = (
    nn.MultiheadAttention,
    nn.RNNBase,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)


def _check_attention_particles(
    module: nn.MultiheadAttention,
    args: tuple[Any, ...],
    state: _particles.ParticleState,
) -> None:
    """Refuse a plain attention whose inputs disagree on the particles.

    A query that has met a Bayesian layer is folded (``B * S`` rows) while
    keys and values no Bayesian layer has touched (a plain embedding of the
    input, cross-attention to a shared memory) are still ``(B, ...)``, or the
    other way round; torch then fails on a reshape, with sizes the user never
    wrote. The positional ``query, key, value`` are compared along the
    attention's batch dimension.
    """
    samples = state.samples
    if samples < 2:
        return
    named = [
        (name, value)
        for name, value in zip(("query", "key", "value"), args, strict=False)
        if isinstance(value, Tensor) and value.dim() == 3
    ]
    dim = 0 if module.batch_first else 1
    sizes = {value.shape[dim] for _, value in named}
    if len(sizes) != 2 or max(sizes) != min(sizes) * samples:
        return
    folded = [name for name, value in named if value.shape[dim] == max(sizes)]
    shared = [name for name, value in named if value.shape[dim] == min(sizes)]
    match = (
        "bnn.match_particles(shared, folded)"
        if module.batch_first
        else f"shared.repeat_interleave({samples}, dim=1) (the batch is dimension 1)"
    )
    raise ValueError(
        f"{type(module).__name__} inside a Bayesian network got the "
        f"{' and '.join(folded)} folded with the {samples} particles ({max(sizes)} "
        f"= {min(sizes)} * {samples} along dimension {dim}) and the "
        f"{' and '.join(shared)} still shared by them ({min(sizes)}): a tensor no "
        "Bayesian layer has touched (a plain embedding, the network's input) has "
        "one row per example. Repeat it for every particle before the attention, "
        f"{match}"
    )


def _note_folded_states(
    module: nn.RNNBase, args: tuple[Any, ...], state: _particles.ParticleState
) -> None:
    """Record a plain recurrent layer's final states as folded in dimension 1.

    Given the batch folded with the particles (``B * S`` rows, or as many
    packed sequences), ``h_n`` (and an LSTM's ``c_n``) are ``(layers, B * S,
    H)``: the network's output unfolds them there, as it does a ``VIGRU``'s,
    instead of reading the number of layers as a leading size (with
    ``layers == B`` they came back as ``S`` copies of every particle's
    states).
    """
    first = args[0] if args else None
    batch = state.batch_size
    if state.samples == 1 or batch is None:
        return
    sequences: int | None
    if isinstance(first, PackedSequence):
        sequences = _particles.leading_size(first)  # its number of sequences
    elif isinstance(first, Tensor) and first.dim() >= 3:
        sequences = first.shape[0 if module.batch_first else 1]
    else:
        return
    if sequences != batch * state.samples:
        return

    def note(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
        handle.remove()
        if not isinstance(output, tuple) or len(output) != 2:
            return  # the call raised
        final = output[1] if isinstance(output[1], tuple) else (output[1],)
        for tensor in final:
            state.note_batch_folded(tensor, 1)

    handle = module.register_forward_hook(note, always_call=True)


def _check_sequence_first_input(
    module: nn.Module, args: tuple[Any, ...], state: _particles.ParticleState
) -> None:
    """A plain ``batch_first=False`` sequence layer must read a batch it can keep.

    In a sequence-first network the particles are folded into the sequence
    dimension (``(L * S, B, ...)``): the plain layer would read the ``L * S``
    rows as one longer sequence and mix positions of different particles. An
    input still shared by the particles (``(L, B, ...)``), or one folded into
    the batch dimension (``(L, B * S, ...)``), is fine
    (:func:`_refuse_folded_sequence`).

    Where no Bayesian layer is sequence-first, dimension 0 of the network's
    input is its batch: a plain layer that reads that dimension as its
    sequence is a sequence-first network the library cannot see (see
    :func:`_refuse_batch_as_sequence`).
    """
    from pyrolite_bnn.layers._sequence import in_batch_first_body

    if not _sequence_first(module) or in_batch_first_body():
        return
    first = args[0] if args else None
    batch = state.batch_size
    if not isinstance(first, Tensor) or first.dim() < 2 or batch is None:
        return
    folded = batch * state.samples
    if state.samples > 1 and first.shape[0] == folded:
        _refuse_folded_sequence(module, first, state, folded)
    if state.batch_leading and not _particles.folding_nothing():
        _refuse_batch_as_sequence(module, first, batch, folded)


def _refuse_folded_sequence(
    module: nn.Module, first: Tensor, state: _particles.ParticleState, folded: int
) -> None:
    """Refuse a plain sequence-first layer reading the particles folded as positions.

    ``first`` is ``(folded, N, ...)``: dimension 0 has the network input's
    leading size times ``S``. Read as the sequence-first fold ``(L * S, B,
    ...)``, ``N`` is the batch ``B`` of a sequence-first layout, dimension 1
    of the network's input; read as a batch-first activation transposed,
    ``(L', B * S, ...)``, ``N`` is the network's batch folded with the
    particles. The layer runs only where ``N`` fits the second reading
    alone. In a sequence-first network only the first can hold (``N == B``
    with ``B == L * S`` too, which once ran silently); where both can (a
    batch-first network whose input's dimension 1 is ``B * S``), the library
    cannot tell them apart and says so.
    """
    samples, width = state.samples, first.shape[1]
    given = state.inputs[0] if state.inputs else None
    # The batch of a sequence-first layout: dimension 1 of the network's input.
    sequence_batches = set(state.sequence_batches)
    if given is not None and given.dim() >= 2:
        sequence_batches.add(given.shape[1])
    if width != folded:
        reading = "the network's batch_first=False layout"
    elif width not in sequence_batches:
        return  # (L', B * S, ...) of a batch-first network, L' == B * S
    elif not state.batch_leading:
        reading = f"the network's batch_first=False layout, batch {width}"
    else:
        raise ValueError(
            f"{type(module).__name__}(batch_first=False) inside a Bayesian network "
            f"got an input of shape {tuple(first.shape)} that cannot be told "
            f"apart: {width} is the network's batch {folded // samples} folded "
            f"with samples={samples} (a batch-first activation transposed to "
            "(sequence, batch), which runs), and it is dimension 1 of the "
            f"network's input (a (sequence, batch) input whose {samples} particles "
            "are folded into dimension 0, which a plain torch layer would read as "
            "one longer sequence, mixing the particles). Call the network with "
            f"another number of samples, or: {_sequence_first_remedy(module)}"
        )
    raise ValueError(
        f"{type(module).__name__}(batch_first=False) inside a Bayesian network "
        f"got an input of shape {tuple(first.shape)} whose sequence dimension "
        f"holds the {samples} particles folded together ({reading}): a plain "
        "torch layer would read them as one longer sequence. "
        f"{_sequence_first_remedy(module)}"
    )


def _refuse_batch_as_sequence(
    module: nn.Module, first: Tensor, batch: int, folded: int
) -> None:
    """Refuse a plain sequence-first layer reading the network's batch as its sequence.

    Called where no Bayesian layer of the network is sequence-first, so that
    dimension 0 of the network's input is its batch (``batch`` rows, ``folded``
    with the particles). The layer's input ``(L, N, ...)`` is suspect when
    ``L`` is that batch and ``N`` is not: a layer over other sequences (the
    characters of every word, ``(C, B * W, ...)``) whose length is the batch
    size by coincidence is refused too, and says so.
    """
    if _reads_batch_as_sequence(first, batch, folded):
        raise ValueError(
            f"{type(module).__name__}(batch_first=False) got an input of shape "
            f"{tuple(first.shape)}: it reads dimension 0, the {batch} rows of the "
            f"network's input, as its sequence and {first.shape[1]} as its batch. "
            "The network has no Bayesian batch_first=False layer, so the library "
            "takes dimension 0 of the input as the batch: the loss would weigh "
            f"the data as {batch} examples and predict would cut the sequences "
            f"into chunks. {_sequence_first_remedy(module)} (if the layer reads "
            "other sequences, whose length only equals the batch size here, a "
            "batch of another size runs)"
        )


def _check_before_first_draw(frame: _Frame, module: nn.Module, args: Any) -> None:
    """:func:`_refuse_batch_as_sequence` before a plain network's first Bayesian call.

    A plain network opens its particle state at its first Bayesian layer; a
    plain sequence layer before it (the network's first layer) is checked
    against the network's input here. The network's modules are only walked
    when the input's layout is the suspect one.
    """
    first = args[0] if args else None
    given = frame.args[0] if frame.args else None
    if (
        not _sequence_first(module)
        or not isinstance(first, Tensor)
        or not isinstance(given, Tensor)
        or given.dim() == 0
    ):
        return
    batch = given.shape[0]
    if not _reads_batch_as_sequence(first, batch, batch):
        return
    if frame.resolve() and not has_sequence_first_layers(frame.module):
        _refuse_batch_as_sequence(module, first, batch, batch)


def _sequence_first(module: nn.Module) -> bool:
    """Whether a position-mixing torch layer is ``batch_first=False``."""
    attention = getattr(module, "self_attn", module)  # Transformer layers
    return not getattr(attention, "batch_first", True)


def _reads_batch_as_sequence(first: Tensor, batch: int, folded: int) -> bool:
    """Whether a sequence-first input ``(L, N, ...)`` reads the batch as ``L``.

    That is, ``L`` is the batch and ``N`` neither it nor the folded batch (see
    :func:`_refuse_batch_as_sequence`).
    """
    return (
        first.dim() >= 3
        and first.shape[0] == batch
        and first.shape[1] not in (batch, folded)
    )


def _sequence_first_remedy(module: nn.Module) -> str:
    """What to change: the Bayesian class of the layer if there is one."""
    from pyrolite_bnn.layers import registry

    entry = registry.for_unchanged_torch(module)
    fix = "build the network batch_first=True with (batch, sequence, ...) inputs"
    if entry is None:
        return fix[0].upper() + fix[1:]
    return f"Make it Bayesian (bnn.{entry.bayesian_cls.__name__}), or {fix}"


# Wrappers whose forward calls the module they wrap (on each device's shard).
_DATA_PARALLEL = (DistributedDataParallel, DataParallel)


def _leave(frame: _Frame, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    # Not this context's frame: closed as stale, never set (an interrupt), or
    # another thread's call of the same module (whose hook this is).
    if _FRAME.get() is not frame:
        return None
    if frame.depth:
        frame.depth -= 1
        return None
    state, draws = frame.state, frame.draws
    _close(frame)
    if output is None or state is None:  # not opened, or failed
        return None
    single = frame.single
    if single is not None and output is frame.single_output:
        result = single.unfold_output(output, state)
    else:
        result = _particles.unfold(output, state)
    if draws is None:  # run as a Pyro model: the weights are sample sites
        return result
    draws.finish()
    record = LayerRecord(draws, state.samples, module)
    record.sequence_batch = state.sequence_batch()
    return attach(
        result,
        record,
        log_probs=getattr(module, "return_log_probs", False),
        differentiated=state.inputs_require_grad,
    )


def note_output(caller: VIModule, output: Any) -> None:
    """Remember the output of the plain module's one Bayesian module ``caller``."""
    frame = _FRAME.get()
    if frame is not None and frame.single is caller:
        frame.single_output = output


# Run eagerly under torch.compile: opening the frame stores facts on the
# plain module (a mutation Dynamo refuses to trace when the module is reached
# through a compiled wrapper) and enters the call's contexts, which outlive
# this function.
@torch.compiler.disable  # type: ignore[untyped-decorator]  # torch leaves it untyped
def open_pending_root(
    caller: VIModule,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    samples: int | None,
) -> bool:
    """Open the pending plain-module frame, if any, for the Bayesian layer called.

    Args:
        caller: the Bayesian module being called.
        args: its positional inputs.
        kwargs: its keyword inputs.
        samples: its ``samples=`` argument.

    Returns:
        Whether a frame was opened (the layer then runs as a nested layer).

    Raises:
        ValueError: if ``samples=`` is given to one of several Bayesian layers
            inside a plain module.
    """
    frame = _FRAME.get()
    if frame is None or frame.stack is not None:
        return False
    if not frame.running():  # a stale frame (see close_stale_frame)
        _close(frame, ended=False)
        return False
    if not frame.resolve():
        return False
    root = frame.module
    name = type(root).__name__
    if samples is not None and frame.single is caller:
        frame.pending = False  # called as a network of its own: let it be one
        return False
    if samples is not None:
        raise ValueError(
            f"samples= cannot be given to a Bayesian layer inside the plain {name}; "
            f"set {name}.samples (or use a bnn.VIModule / bnn.VISequential root)"
        )
    # The frame holds the stack before anything enters it: whatever ends the
    # call from here on (an error, an interrupt) closes what was entered. The
    # facts about the network's tree are kept for its whole call.
    stack = frame.stack = _Opened()
    stack.enter(facts_kept_for_the_call())
    requested = _particles.requested_samples(root)
    count = (
        getattr(root, "samples", DEFAULT_SAMPLES) if requested is None else requested
    )
    state, device = prepare(root, frame.args, frame.call_kwargs(), count)
    if state.batch_size is None:  # its keyword inputs could not be read
        batch, _ = _particles.leading_input(args, kwargs)
        state = dataclasses.replace(state, batch_size=batch)
    wrapped = pyro_wrapped()
    if not wrapped:
        refuse_pyro_statements(root)
    stack.enter(local_params())
    if wrapped:  # a Pyro model: the particle plate and one site per weight
        refuse_particles_under_mcmc(root, count)
        stack.enter(_particles.particle_plate(state.samples, device))
        stack.enter(_particles.particles(state))
        stack.enter(sampling_sites(SiteTable(collect_variables(root))))
        frame.state = state
        return True
    with torch.set_grad_enabled(frame.grad_enabled):
        draws = generated_guide_draws(root, state.samples)
    stack.enter(_particles.particles(state))
    stack.enter(using_draws(draws))
    frame.state, frame.draws = state, draws
    return True
