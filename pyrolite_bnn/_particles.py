"""The particle plate: one vectorised dimension for all Monte-Carlo samples.

The outermost :class:`~pyrolite_bnn.VIModule` call opens
``pyro.plate("particles", S, dim=-2)`` scaled by ``1/S``, so every weight site
is drawn ``S`` times at once and the ELBO is the average over particles.

Inside the network, activations use the *folded* layout ``(B * S, ...)``
(batch-major: row ``b * S + s`` is example ``b`` under particle ``s``): plain
``torch.nn`` modules see an ordinary batch, so ``Flatten``, pooling or
``LayerNorm`` work unchanged (batch norm takes statistics over the batch: the
library's ``BatchNorm1d/2d/3d`` take them per particle), and a grouped convolution over
particles reads ``(B, S * C, ...)`` and writes ``(B, S * O, ...)`` as free views
of it. A tensor whose leading size is the input batch ``B`` is *shared* by all
particles (no Bayesian layer has touched it yet) and is never copied ``S``
times. The outermost call returns ``(S, B, ...)``, a transposed view.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import SVGD, TraceTailAdaptive_ELBO
from pyro.infer.autoguide import AutoGuide, AutoGuideList
from pyro.infer.importance import vectorized_importance_weights
from pyro.poutine.runtime import get_plates
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from pyrolite_bnn import _structures
from pyrolite_bnn._capture import carries_derivative
from pyrolite_bnn._context_values import set_while
from pyrolite_bnn._handlers import (
    called_from,
    innermost_trace,
    method_of_running,
    pyro_wrapped,
    raising_frame,
    running_frame,
    traced_site_count,
    traces_holding,
)
from pyrolite_bnn._validation import check_count

__all__ = [
    "AmbiguousLayoutError",
    "LayoutError",
    "ParticleState",
    "batch_of",
    "broadcast_row",
    "computed_from_folded",
    "current",
    "differentiates_inputs",
    "fold_hinted",
    "map_outputs",
    "particle_plate",
    "particles",
    "read_rows",
    "refuse_outer_plates",
    "sequence_first_hint",
    "unfold_at",
]

PLATE_NAME = "particles"
PLATE_DIM = -2

_TWO_NETWORKS = (
    "two networks run on their own in one Pyro model or guide (or one network "
    f"twice): each opens the particle plate '{PLATE_NAME}' and reports its "
    "parameters to Pyro by their paths in the network ('0.posterior.weight.loc'), "
    "the same names for both, so SVI would train only one network's parameters "
    "(also under pyro.contrib.autoname.scope, which renames sample sites only). "
    "Build one VIModule that holds the networks and returns every output (its "
    "sites and parameters are named by path: 'mean.0.weight', ...), and call it "
    "once"
)

_IN_AN_AUTOGUIDE_LIST = (
    "net.guide cannot join an AutoGuideList: the AutoGuideList opens every "
    "plate of its model around its parts, the network's particle plate "
    f"'{PLATE_NAME}' among them, and the network's guide opens that plate "
    "itself (its particles weigh 1/S each). Call the guides in one guide "
    "function instead, an autoguide for your own sites built on "
    "poutine.block(model, expose=[...your sites...]): "
    "own = AutoNormal(poutine.block(model, expose=['sigma'])); "
    "def guide(x, y=None, samples=4): net.guide(samples=samples); "
    "own(x, y, samples)"
)

_BESIDE_AN_AUTOGUIDE_LIST = (
    "an AutoGuideList built on the whole model opens every plate of its model "
    f"around its parts, the network's particle plate '{PLATE_NAME}' among "
    "them, and net.guide opens that plate itself (its particles weigh 1/S "
    "each): called beside net.guide in one guide, the list opens it a second "
    "time. Build the AutoGuideList on your own sites, "
    "poutine.block(model, expose=[...your sites...]), as its parts: "
    "own = AutoGuideList(poutine.block(model, expose=['sigma', 'tau'])); "
    "def guide(x, y=None, samples=4): net.guide(samples=samples); "
    "own(x, y, samples)"
)


@dataclass(frozen=True)
class ParticleState:
    """What layers need to know about the current outermost call.

    Attributes:
        samples: number of particles ``S``.
        batch_size: leading size ``B`` of the outermost call's input, or
            ``None`` when the call had no tensor input.
        root: the module of the outermost call, whose output is unfolded to
            ``(S, B, ...)`` (a layer compares it with itself where its outputs
            are laid out differently inside a network, as ``VILSTM``'s states).
        sequence_batches: true batch sizes of the ``batch_first=False`` layers
            that ran inside the network in this call (their inputs are
            ``(L, B, ...)``, so the network's output must keep ``B`` in
            dimension 1 to be unfolded).
        root_sequence_batches: the true batch size of the outermost module
            when it is itself a ``batch_first=False`` layer (its own output
            layout is ``(S, L, B, ...)``; nothing else to check).
        batch_folded: tensors a layer produced with the particles folded
            into the batch at a dimension other than their leading one (the
            hidden states of a recurrent layer, ``(layers, B * S, H)``; the
            attention weights of a ``batch_first=False`` attention layer,
            ``(B * S, Lq, Lk)`` in a sequence-first network), with that
            dimension; any module returning them as they are has them unfolded
            there.
        inputs: the outermost call's tensor arguments: shared by all
            particles, whatever their shape.
        other_batches: leading sizes of the outermost call's other inputs
            (``batch_size`` is the first input's): a tensor with one of them
            as its leading size is shared by all particles, one with that size
            times ``samples`` folded (second inputs of another batch size, a
            target sequence of another length).
        unsorted_packings: data of packed outputs whose packed input had no
            ``sorted_indices`` (``enforce_sorted=True``): the outermost call
            returns them without, as torch does.
        used_batches: the other batches that Bayesian layers have read
            tensors of in this call (sizes then ambiguous with the call's).
        early_batches: the leading size of the first tensor a Bayesian layer
            read in the call when it was no input and not of the call's
            batch: nothing was folded yet, so it was another batch, shared
            (``torch.cat`` of two inputs).
        early_tensors: that tensor (shared at every later read too).
        classified: ``[True]`` once a tensor's layout has been told in the
            call (:func:`row_layout`).
        folded_outputs: the autograd nodes of the Bayesian layers' outputs
            of ``B * S`` rows in this call, by id (:func:`note_folded_output`).
        folded_output_tensors: the memory of those outputs (the tensor each
            views, or the output itself), by id, held weakly: it tells a
            layer's output, or a view of it, as folded where no autograd
            graph does (under ``torch.no_grad()``, with drawn weights).
        batch_leading: whether dimension 0 of the network's tensors is their
            batch (no ``batch_first=False`` Bayesian layers: in a
            sequence-first network a tensor's dimension 0 may be a sequence).
        inputs_require_grad: whether a tensor input of the outermost call (a
            packed sequence's data too) is differentiated, in reverse or
            forward mode (:func:`differentiates_inputs`).
    """

    samples: int
    batch_size: int | None
    root: nn.Module | None = None
    sequence_batches: set[int] = field(default_factory=set, compare=False)
    root_sequence_batches: set[int] = field(default_factory=set, compare=False)
    inputs: tuple[Tensor, ...] = field(default=(), compare=False)
    batch_folded: list[tuple[Tensor, int]] = field(default_factory=list, compare=False)
    other_batches: frozenset[int] = field(default=frozenset(), compare=False)
    unsorted_packings: list[Tensor] = field(default_factory=list, compare=False)
    used_batches: set[int] = field(default_factory=set, compare=False)
    early_batches: set[int] = field(default_factory=set, compare=False)
    early_tensors: list[Tensor] = field(default_factory=list, compare=False)
    classified: list[bool] = field(default_factory=lambda: [False], compare=False)
    folded_outputs: dict[int, Any] = field(default_factory=dict, compare=False)
    folded_output_tensors: weakref.WeakValueDictionary[int, Tensor] = field(
        default_factory=weakref.WeakValueDictionary, compare=False
    )
    batch_leading: bool = field(default=True, compare=False)
    inputs_require_grad: bool = field(default=False, compare=False)

    def restarted(self) -> ParticleState:
        """The same call's state with nothing recorded yet (to run it again)."""
        return ParticleState(
            self.samples,
            self.batch_size,
            self.root,
            inputs=self.inputs,
            other_batches=self.other_batches,
            batch_leading=self.batch_leading,
            inputs_require_grad=self.inputs_require_grad,
        )

    def other_batches_seen(self) -> frozenset[int]:
        """``other_batches`` and the batches of the sequence-first layers so far."""
        if not (
            self.sequence_batches or self.root_sequence_batches or self.early_batches
        ):
            return self.other_batches
        return (
            self.other_batches
            | self.sequence_batches
            | self.root_sequence_batches
            | self.early_batches
        )

    def is_input(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` is one of the outermost call's inputs (shared)."""
        return any(tensor is given for given in self.inputs)

    def views_an_input_batch(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` is an input's batch shared by all particles.

        An input of the outermost call, or a view of one (of its memory) whose
        leading size is an input's batch: ``ctx.expand(x.shape[0], ...)``, a
        one-row context given the batch size of ``x``, holds ``ctx``'s row
        for every example, whatever ``S``, even where ``B`` rows would also
        fit a batch folded with the particles. (A view with another leading
        size, ``x[:1]``, is a batch of its own, as any other tensor.)
        """
        if self.is_input(tensor):
            return True
        rows = int(tensor.shape[0]) if tensor.dim() else None
        if rows != self.batch_size and rows not in self.other_batches:
            return False
        return self.views_an_input(tensor)

    def views_an_input(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` is one of the inputs or a view of one's memory."""
        owner = _memory_owner(tensor)
        return any(owner is _memory_owner(given) for given in self.inputs)

    def sequence_batch(self) -> int | None:
        """``B`` of a sequence-first network (whose output is ``(S, L, B, ...)``)."""
        batches = self.sequence_batches | self.root_sequence_batches
        if len(batches) == 1:
            return next(iter(batches))
        return None

    def note_batch_folded(self, tensor: Tensor, dim: int) -> None:
        """Record that ``tensor`` is folded ``B * S`` at ``dim`` (see the attribute)."""
        self.batch_folded.append((tensor, dim))


class LayoutError(ValueError):
    """A Bayesian layer's input whose rows the particle layout cannot read.

    Raised in the layer's arithmetic, which knows neither the layer nor the
    network; the layer's call names the layer, once (:attr:`layer`, see
    :func:`pyrolite_bnn._layout_errors.naming_layer`).

    Attributes:
        layer: the name the message gives the layer (``None`` until named).
    """

    layer: str | None = None


class AmbiguousLayoutError(LayoutError):
    """A tensor's leading size fits both the shared and the folded layout."""


def _before_the_fold(state: ParticleState) -> bool:
    """Whether no tensor's layout has been told in the call yet.

    Nothing is folded before a Bayesian layer has read a tensor: the first
    one it reads is shared, another batch whatever its size (see
    :func:`row_layout`), and one row of it is no broadcast
    (:func:`broadcast_row`).
    """
    return not state.classified[0]


def row_layout(
    state: ParticleState | None,
    tensor: Tensor,
    samples: int,
    batch: int | None,
    *,
    others_shared: bool = True,
    layer_input: bool = True,
) -> bool | None:
    """Whether ``tensor`` (leading size ``rows``) is shared by all particles.

    ``True``: shared (``rows`` is the batch ``batch`` of the call, or it is one
    of the outermost call's inputs, or ``rows`` is another input's batch);
    ``False``: folded (``batch * samples`` rows, or another input's batch times
    ``samples``); ``None``: no known batch fits. The call's own batch comes
    first; a size that fits the call's batch one way and, the other way, the
    batch of another input that a Bayesian layer has already read (recorded
    in ``state.used_batches``) cannot be told apart and raises
    :class:`AmbiguousLayoutError`, as does one that fits two other inputs',
    and ``B`` rows where the first tensor read had ``B / S`` (folded from its
    layer on: one row at ``S = B``).

    Args:
        state: the running call's particle state (``None`` outside a network).
        tensor: the tensor, batch (or, sequence-first, sequence) dimension first.
        samples: the number of particles ``S``.
        batch: the batch size of the running call (a layer's body may have set
            its own, see :func:`batch_of`).
        others_shared: whether another input's batch ``B'`` itself counts as
            shared (``False``: only ``B' * S``, folded, counts).
        layer_input: whether a Bayesian layer reads ``tensor``: ``B`` rows
            computed from a Bayesian layer's folded output are then refused
            (:func:`_refuse_rows_taken_from_folded`); ``False`` for the
            network's output.
    """
    # Plain ints: under torch.jit.trace sizes are tensors, and the result must
    # be a bool (``is False`` tests it).
    rows, batch = int(tensor.shape[0]), None if batch is None else int(batch)
    others = frozenset() if state is None else state.other_batches
    early = frozenset() if state is None else state.early_batches
    if rows == batch and not others and not early:  # the common case
        if state is not None:
            state.classified[0] = True
            if layer_input:
                _refuse_shared_read_of_folded(state, tensor)
        return True
    if state is None:
        if batch is None or rows not in (batch, batch * samples):
            return None
        return rows == batch
    used = state.used_batches
    first, state.classified[0] = _before_the_fold(state), True
    if _known_shared(state, tensor):
        if rows != batch:
            used.add(rows)
        return True
    if first and rows != batch and samples > 1 and state.batch_leading:
        # The first tensor a Bayesian layer reads in the call comes before any
        # fold: another batch of shared rows, whatever its size (the inputs of
        # a siamese network concatenated, torch.cat([x1, x2]), hold B * S rows
        # at S = 2).
        state.early_batches.add(rows)
        state.early_tensors.append(tensor)
        return True
    seen = state.other_batches_seen()
    if samples == 1:  # one particle: shared and folded are the same rows
        return True if rows == batch or rows in seen else None
    split = rows // samples if rows % samples == 0 else None
    if batch is not None and rows in (batch, batch * samples):
        # The call's batch comes first; another input's batch that a Bayesian
        # layer has used makes the size ambiguous (an input that is no batch,
        # such as an h0 (layers, B, H), never is).
        shared = rows == batch
        # A batch read first is folded from its first layer on: E * S rows
        # that are the call's batch are ambiguous at once (one row read first
        # and S = B: a summary of the input, a position table before the
        # tokens).
        if (
            (split in used or split in early)
            if shared
            else (others_shared and rows in used)
        ):
            other = split if shared else rows
            assert other is not None  # split is in used
            raise AmbiguousLayoutError(
                f"a tensor with {rows} rows is ambiguous: the batch "
                f"{batch if shared else split} of the call "
                f"{'shared' if shared else f'folded with samples={samples}'}, or "
                + _another_batch(
                    state,
                    other,
                    f"folded with samples={samples}" if shared else "shared",
                )
                + ". "
                + _ambiguity_remedy(state, other, batch)
                + sequence_first_hint(state)
            )
        if layer_input and shared:
            _refuse_shared_read_of_folded(state, tensor)
        return shared
    if rows in seen and split in seen:
        assert split is not None
        raise AmbiguousLayoutError(
            f"a tensor with {rows} rows is ambiguous: "
            f"{_another_batch(state, rows, 'shared by the particles', 'one input')}"
            f", or {_another_batch(state, split, f'folded with samples={samples}')}. "
            + _ambiguity_remedy(state, rows, split)
            + sequence_first_hint(state)
        )
    if rows in seen and others_shared:
        if layer_input and rows in state.sequence_batches:
            _refuse_rows_of_the_sequence_fold(state, tensor)
        used.add(rows)
        return True
    if split in seen:
        used.add(split)
        return False
    return None


def note_folded_output(output: Any) -> None:
    """Record a Bayesian layer's output of ``B * S`` rows in the running call.

    Its autograd node marks the particles' activations: a tensor of ``B``
    rows computed from it later (:func:`row_layout`) took rows of some
    particles only, or mixed them. The memory the output views is kept too
    (weakly: no activation outlives its last use for it), which tells it,
    and views of it, without a graph (:func:`computed_from_folded`); an
    input's memory never is (a module that returns an input as it is).
    """
    state = _STATE.get()
    if state is None or state.samples == 1 or not state.batch_size:
        return  # (an empty batch: no rows to take from some particles only)
    first = output[0] if isinstance(output, tuple | list) and output else output
    if (
        not isinstance(first, Tensor)
        or first.dim() == 0
        or first.shape[0] != state.batch_size * state.samples
    ):
        return
    if first.grad_fn is not None:
        state.folded_outputs[id(first.grad_fn)] = first.grad_fn
    if torch.compiler.is_compiling() or state.views_an_input(first):
        return  # (no weak references in a trace)
    owner = _memory_owner(first)
    state.folded_output_tensors[id(owner)] = owner


# Autograd nodes read above a shared-looking tensor before giving up.
_ANCESTORS_READ = 256


def _refuse_shared_read_of_folded(state: ParticleState, tensor: Tensor) -> None:
    """Refuse a Bayesian layer's read of ``B`` rows as shared that hold folded ones.

    A tensor of a recurrent state's shape with the folded batch in dimension
    1 (``h_n`` with as many layers as examples, :func:`_folded_behind`), or
    rows computed from a Bayesian layer's folded output
    (:func:`_refuse_rows_taken_from_folded`).
    """
    if _folded_behind(tensor, state):
        raise LayoutError(_state_read_as_shared(state, tensor, "a Bayesian layer got"))
    _refuse_rows_taken_from_folded(state, tensor)


def _rows_per_particle_hint(state: ParticleState, rows: int) -> str:
    """Why ``rows == B`` rows may be ``B / S`` groups folded with the particles.

    Empty where ``rows`` is no multiple of the particle count ``S``.
    """
    samples, batch = state.samples, state.batch_size
    if samples == 1 or rows % samples or rows != batch:
        return ""
    groups = rows // samples
    return (
        f"If they are {groups} groups (graphs, selected nodes) folded with the "
        f"{samples} particles, written per particle on h.unflatten(0, (-1, S)) "
        f"and flattened back (row g * S + s), their count {groups} * {samples} "
        f"happens to equal the batch size {batch} of the call, whose rows are "
        "shared by the particles: the two cannot be told apart. Call the network "
        f"with another number of samples ({groups} * samples != {batch}); with "
        "one row per group in the network's first input (graph ids "
        "torch.arange(G), the selected nodes' index), the call's batch is the "
        "groups' and such outputs unfold by it (see 'Graph-level outputs and "
        "node subsets' in the how-to guides)"
    )


def _state_read_as_shared(state: ParticleState, tensor: Tensor, reader: str) -> str:
    """The message for a recurrent state's shape read as ``B`` shared rows."""
    batch, samples = state.batch_size, state.samples
    assert batch is not None
    return (
        f"{reader} a tensor of shape {tuple(tensor.shape)}, read as {batch} rows "
        f"shared by the particles, but its dimension 1 holds the {batch} * "
        f"{samples} folded rows (a recurrent layer's state h_n, (layers, batch * "
        "samples, hidden), or a tensor made from it, with as many layers as "
        "examples): read h_n[-1], or put the batch first with h_n.transpose(0, 1)"
    )


def _refuse_rows_taken_from_folded(
    state: ParticleState, tensor: Tensor, reader: str = "a Bayesian layer got"
) -> None:
    """Refuse ``B`` rows computed from a Bayesian layer's ``B * S``-row output.

    ``reader`` starts the message: who reads the rows as shared (a layer, or
    the network's output, which would be expanded to every particle).

    Read as shared, they would give every particle the same rows: those of the
    first particles (``o[torch.arange(B), lengths - 1]`` picks rows ``0..B-1``
    of the folded ``b * S + s`` layout), or a mix of all of them
    (``h.view(B, S, H).mean(1)``). Found by :func:`_from_folded_output`:
    a view of the output, or its autograd graph walked up to
    :data:`_ANCESTORS_READ` nodes (without gradients, ``torch.no_grad()``,
    there is none to walk); an input of the call is never refused.
    """
    if state.is_input(tensor) or not _from_folded_output(state, tensor):
        return
    batch, samples = state.batch_size, state.samples
    assert batch is not None
    if tensor.dim() >= 2 and tensor.shape[1] == batch * samples:
        raise LayoutError(_state_read_as_shared(state, tensor, reader))
    raise LayoutError(
        f"{reader} {batch} rows (the batch, read as shared by "
        f"the particles) computed from a Bayesian layer's output of "
        f"{batch} * {samples} rows, whose particles are folded into the "
        "batch (row b * S + s): the rows were taken from some particles "
        "only, or mixed across them. Index the folded batch as a whole: "
        "out[torch.arange(out.shape[0]), lengths.repeat_interleave(S) - 1] "
        "rather than torch.arange(B) and lengths - 1, with S = "
        "pyrolite_bnn.layers.functional.current_samples() (or use a packed "
        "sequence), and keep reductions off the batch dimension"
        + _and_hint(_rows_per_particle_hint(state, int(tensor.shape[0])))
    )


def _and_hint(hint: str) -> str:
    """``hint`` as a further sentence of a message (nothing if empty)."""
    return f". {hint}" if hint else ""


def _refuse_rows_of_the_sequence_fold(state: ParticleState, tensor: Tensor) -> None:
    """Refuse a sequence batch's ``B`` rows computed from a sequence-first fold.

    In a sequence-first network a Bayesian layer's output is folded ``(L * S,
    B, ...)`` (row ``l * S + s``): ``out[-1]`` is the last position of the
    last particle only, and a head on it (a forecaster's ``fc(out[-1])``)
    would run every particle on that particle's features. Such an output,
    without a sequence dimension, is refused at the network's output unless
    its size equals the batch's; here the read itself is refused. Found by
    the walk of :func:`_refuse_rows_taken_from_folded` (with gradients on).
    """
    if state.is_input(tensor) or not _from_folded_output(state, tensor):
        return
    raise LayoutError(
        f"a Bayesian layer got a tensor of shape {tuple(tensor.shape)}, read as "
        f"{tensor.shape[0]} examples of the batch_first=False layers, computed "
        "from a sequence-first activation whose particles are folded into the "
        f"sequence dimension, (L * {state.samples}, batch, ...) with row l * S + "
        "s: indexing or reducing that dimension (out[-1], out.mean(0)) mixes the "
        "particles, and a sequence-first network's outputs need their sequence "
        "dimension. Build the network with batch_first=True layers and "
        "(batch, sequence, feature) inputs, and read out[:, -1]"
    )


def _from_folded_output(state: ParticleState, tensor: Tensor) -> bool:
    """Whether ``tensor`` is computed from a recorded folded output.

    It is one, or a view of one (told without a graph too,
    :func:`_views_folded_output`), or its autograd graph reaches one
    (:func:`_reaches_folded_output`).
    """
    return _views_folded_output(state, tensor) or _reaches_folded_output(state, tensor)


def _views_folded_output(state: ParticleState, tensor: Tensor) -> bool:
    """Whether ``tensor`` is a recorded folded output or a view of its memory."""
    owner = _memory_owner(tensor)
    return state.folded_output_tensors.get(id(owner)) is owner


def _reaches_folded_output(state: ParticleState, tensor: Tensor) -> bool:
    """Whether ``tensor``'s autograd graph reaches a recorded folded output.

    Walks up to :data:`_ANCESTORS_READ` nodes (see
    :func:`note_folded_output`); without a graph, ``False``.
    """
    if not state.folded_outputs:
        return False
    pending: list[Any] = [tensor.grad_fn]
    seen: dict[int, Any] = {}  # the nodes kept: a freed node's id is reused
    while pending and len(seen) < _ANCESTORS_READ:
        node = pending.pop()
        if node is None or id(node) in seen:
            continue
        if id(node) in state.folded_outputs:
            return True
        seen[id(node)] = node
        pending.extend(parent for parent, _ in node.next_functions)
    return False


def broadcast_row(
    state: ParticleState | None, tensor: Tensor, samples: int, batch: int | None
) -> Tensor:
    """``tensor`` as the call's ``B`` rows where its one row is every example's.

    Torch reads a leading size of 1 as the same for every example (it
    broadcasts): a position table looked up with ``torch.arange(L)
    .unsqueeze(0)``, a learned ``(1, E)`` query. A Bayesian layer reads such
    a tensor as shared by all particles and all examples: expanded to ``(B,
    ...)`` (a view), its output has the folded ``B * S`` rows, each
    particle's from its own weights. The network's own parameters and
    buffers (and views of them) are broadcast wherever they are read; any
    other tensor only after the call's first read and where 1 is no known
    batch: for the first tensor a Bayesian layer reads in the call (nothing
    is folded yet: a batch of its own, as a summary of the input
    ``x.mean(0, keepdim=True)``), with one particle, for a batch of
    1, for the outermost call's inputs and the other batches (another
    input's, a concatenation read first), in a sequence-first network (whose
    leading dimension may be a sequence) and for a recurrent state with the
    folded batch in dimension 1, ``tensor`` is returned as it is, and
    :func:`row_layout` reads it.

    Args:
        state: the running call's particle state (``None`` outside a network).
        tensor: the tensor a Bayesian layer reads, batch dimension first.
        samples: the number of particles ``S``.
        batch: the batch size of the running call.

    Raises:
        LayoutError: for one row computed from a Bayesian layer's folded
            output (one particle's row, ``h[:1]``, or a reduction over the
            batch, ``h.mean(0, keepdim=True)``): no row for every example.
    """
    if not _broadcasts(state, tensor, samples, batch):
        return tensor
    assert batch is not None
    return tensor.expand(int(batch), *tensor.shape[1:])


def _broadcasts(
    state: ParticleState | None, tensor: Tensor, samples: int, batch: int | None
) -> bool:
    """Whether :func:`broadcast_row` expands ``tensor`` (see there).

    Raises:
        LayoutError: for one row computed from a Bayesian layer's folded
            output, which is no row for every example.
    """
    if state is None or samples == 1 or batch is None or int(batch) == 1:
        return False
    if tensor.dim() == 0 or int(tensor.shape[0]) != 1 or not state.batch_leading:
        return False
    if _before_the_fold(state) and not _held_by_the_network(state, tensor):
        # The first read: another batch (row_layout) of 1 row, a summary of
        # the input (x.mean(0, keepdim=True)); the network's own (1, E) query
        # or class token is every example's.
        return False
    if state.is_input(tensor) or any(tensor is t for t in state.early_tensors):
        return False
    if 1 in state.other_batches_seen() or _folded_behind(tensor, state):
        return False
    if _from_folded_output(state, tensor):
        raise LayoutError(
            f"a Bayesian layer got a tensor of shape {tuple(tensor.shape)}, one "
            "row that would be every example's, computed from a Bayesian "
            f"layer's output of {batch} * {samples} rows, whose particles are "
            "folded into the batch (row b * S + s): the row is one particle's "
            "(h[:1]) or a mix of the particles (h.mean(0, keepdim=True)). Keep "
            "reductions off the batch dimension, or write them per particle on "
            "h.unflatten(0, (-1, S))"
        )
    return True


def _held_by_the_network(state: ParticleState, tensor: Tensor) -> bool:
    """Whether ``tensor`` is a parameter or buffer of the network, or a view of one.

    A learned query or class token (``self.proj(self.query)``,
    ``self.query[None]``) is no batch of its own: it is the same for every
    example.
    """
    if state.root is None:
        return False
    base = _memory_owner(tensor)
    held = itertools.chain(state.root.parameters(), state.root.buffers())
    return any(base is own for own in held)


def _memory_owner(tensor: Tensor) -> Tensor:
    """The tensor whose memory ``tensor`` views (``tensor`` itself if none)."""
    return tensor if tensor._base is None else tensor._base


def one_row_per_example(
    state: ParticleState | None, tensor: Tensor, samples: int, batch: int | None
) -> bool:
    """Whether ``tensor``'s rows are the call's examples, one row each.

    That is the batch ``B`` of the call read as shared rows, or ``B * S`` read
    as folded ones (:func:`row_layout`). Any other rows hold some example
    twice or none of them one to one: inputs concatenated along the batch
    (``torch.cat([x1, x2])``, ``2B`` rows shared, ``B * S`` at ``S = 2``),
    folded activations concatenated (``2B * S``), another input's batch,
    positions moved into the batch. Without a known batch: ``True``.

    Args:
        state: the running call's particle state (``None`` outside a network).
        tensor: the tensor, batch dimension first.
        samples: the number of particles ``S``.
        batch: the batch size of the running call.
    """
    if batch is None:
        return True
    rows, batch = int(tensor.shape[0]), int(batch)
    if samples == 1 or state is None:
        return rows == batch
    if _broadcasts(state, tensor, samples, batch):
        return True  # read as the batch's rows (broadcast_row)
    if rows != batch and rows != batch * samples:
        return False
    # Only another layout than the size says changes the answer (a first read
    # of B * S rows is shared, as concatenated inputs are). Read so, the rows
    # are read the same way again by the layer's arithmetic.
    # ``==``, not ``is``: traced by torch.compile (tests/test_wrappers.py), the
    # two sides need not be the same bool objects, and a folded read was taken
    # for rows that are no example's.
    layout = row_layout(state, tensor, samples, batch)
    return layout is not None and layout == (rows == batch)


def _known_shared(state: ParticleState, tensor: Tensor) -> bool:
    """Whether ``tensor`` is shared by all particles whatever its size says.

    An input's batch or a view of one (:meth:`ParticleState.
    views_an_input_batch`), or the first tensor a Bayesian layer read in the
    call (:func:`row_layout`).
    """
    return state.views_an_input_batch(tensor) or any(
        tensor is t for t in state.early_tensors
    )


def read_rows(state: ParticleState, tensor: Tensor) -> tuple[str, int]:
    """How ``tensor``'s rows are laid out, told by its leading size alone.

    Nothing is recorded (unlike :func:`row_layout`, which a Bayesian layer's
    read runs). ``("shared", b)``: the ``b`` rows of a batch shared by the
    particles (an input of the call or a view of one with an input's batch,
    the first tensor a Bayesian layer read, or the leading size of one of
    them); ``("folded", b)``: that batch's rows folded with the ``S``
    particles (``b`` the call's batch, or another one a Bayesian layer has
    read); ``("ambiguous", rows)``: both fit (a tensor computed from a
    Bayesian layer's output of the call's ``B * S`` rows is folded, where
    that output itself, a view of it or the autograd graph tells,
    :func:`computed_from_folded`); ``("unknown", rows)``: neither.

    Args:
        state: the running call's particle state.
        tensor: the tensor, batch dimension first.
    """
    rows, samples, batch = int(tensor.shape[0]), state.samples, state.batch_size
    if _known_shared(state, tensor):
        return "shared", rows
    seen = state.other_batches_seen()
    calls = frozenset() if batch is None else frozenset({int(batch)})
    read = calls | state.used_batches | (seen - state.other_batches)
    split = rows // samples if samples > 1 and rows % samples == 0 else None
    shared, folded = rows in calls | seen, split in read
    if shared and folded:
        if split in calls and computed_from_folded(tensor):
            return "folded", rows // samples
        return "ambiguous", rows
    if shared:
        return "shared", rows
    if folded:
        return "folded", rows // samples
    return "unknown", rows


def _read_first(state: ParticleState, size: int) -> bool:
    """Whether ``size`` is the batch of a tensor read first, no input's.

    The first tensor a Bayesian layer reads in a call (:func:`row_layout`):
    inputs concatenated along the batch, or one row (a summary of the input,
    not torch's broadcast over the batch, :func:`broadcast_row`).
    """
    return size in state.early_batches and size not in state.other_batches


def _another_batch(
    state: ParticleState, size: int, layout: str, whose: str = "another input"
) -> str:
    """The other batch of an ambiguous size and its ``layout``, in words."""
    if size == 1 and _read_first(state, 1):
        return (
            f"the one row a Bayesian layer read first {layout} (nothing was "
            "folded before it: a batch of its own, as a summary of the input "
            "x.mean(0, keepdim=True) or a position table looked up before the "
            "tokens)"
        )
    if _read_first(state, size):
        return (
            f"the {size} rows of a tensor concatenated along the batch {layout} "
            "(a Bayesian layer read it first: torch.cat([x1, x2]) of two views)"
        )
    return f"{whose}'s batch {size} {layout}"


def _ambiguity_remedy(state: ParticleState, *sizes: int) -> str:
    """What to change where a size fits two batches (see :func:`row_layout`).

    ``sizes`` are the two batches (the call's among them where it is one).
    """
    if 1 in sizes and _read_first(state, 1):
        return (
            "Call the network with another number of samples than the batch "
            "size; where the row is every example's (position ids (1, L)), "
            "let a Bayesian layer read a tensor of the batch first (look the "
            "tokens up before the positions)"
        )
    if any(_read_first(state, size) for size in sizes):
        return (
            "Call the network with another number of samples, or call the layer "
            "once per view instead of on the concatenation (enc(x1), enc(x2): a "
            "layer called twice shares its weight draw)"
        )
    if 1 in sizes and state.batch_size == 1 and state.batch_leading:
        # A one-row input given first: its row is the call's batch, and B
        # rows of another input's batch fit that row folded at S = B.
        return (
            "Give the network an input of the batch as its first argument, "
            "net(x, ctx) (the call's batch is its first input's), or the input "
            "of one row the batch size in the call, net(ctx.expand(x.shape[0], "
            "*ctx.shape[1:]), x); in the forward, a view of an input, "
            "ctx.expand(x.shape[0], *ctx.shape[1:]), is read as that input's "
            "rows, a copy (ctx.repeat(...)) or a plain layer's output is not. "
            "Or call the network with another number of samples"
        )
    if 1 in sizes:  # an input of one row: a context, every example's
        return (
            "Give the input of one row the others' batch size (ctx.expand("
            "x.shape[0], *ctx.shape[1:]), a view), or call the network with "
            "another number of samples"
        )
    return (
        "Call the network with another number of samples: the inputs have "
        f"different batches, and one of them times the {state.samples} "
        "particles equals another by chance (as a readout per graph of a graph "
        "batch, G * S rows, can equal the number of nodes N)"
    )


def sequence_first_hint(state: ParticleState) -> str:
    """In a sequence-first network the rows are positions: say so, and the way out."""
    if state.batch_leading:
        return ""
    return (
        ". In this sequence-first network the leading dimension is the sequence "
        "(particles fold into it, (L * S, B, ...)), so sequences of different "
        "lengths (a source and a target) can meet this; build the sequence "
        "layers with batch_first=True, where the batch leads"
    )


_SIZE_ERRORS = (
    "Sizes of tensors must match",
    "must match the size of tensor",
    "must match the existing size",
)
_FOLD_HINT = "(in a Bayesian call activations are folded (B*S, ...)"
_INDEX_ERRORS = ("Number of indices", "index_add_(): ", "Expected index [")
_RESHAPE_ERRORS = ("is invalid for input of size",)
# A plain layer's width errors (nn.Linear, nn.LayerNorm): the features differ,
# and the rows they name are the folded ones.
_WIDTH_ERRORS = (
    "mat1 and mat2 shapes cannot be multiplied",
    "expected input with shape [*",
)


# torch's errors naming the two sizes of one dimension that do not match: a
# matrix product's inner sizes (after mat1's rows), an einsum subscript, a
# sparse product's dense operand.
_MATMUL_SIZES = re.compile(r"shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x\d+\)")
_EINSUM_SIZES = re.compile(
    r"subscript (\w) has size (\d+) for operand (\d+) which does not "
    r"broadcast with previously seen size (\d+)"
)
_SPARSE_SIZES = re.compile(r"Expected dim \d+ size (\d+), got (\d+)")


def _folded_rows_met(error: BaseException, state: ParticleState | None) -> int | None:
    """The batch ``B`` whose ``B`` and ``B * S`` rows an error says do not match.

    A graph's ``(N, N)`` adjacency times node features folded ``(N * S,
    F)``: torch names ``N`` and ``N * S`` as the sizes of the dimension summed
    over (``None`` for other sizes, or outside a call). The operand with the
    ``N`` there is the adjacency, not itself folded: where it has ``N * S``
    rows (``h @ W`` with ``h`` of ``(N * S, N)``, an einsum over ``h``'s
    features) it is a folded activation whose width is ``N`` by chance, and
    the sizes that do not match are the features, as in the plain model.
    """
    if state is None:
        return None
    batches = set(state.other_batches_seen())
    if state.batch_size is not None:
        batches.add(int(state.batch_size))

    def met(smaller: int, larger: int) -> bool:
        return smaller in batches and larger == smaller * state.samples

    text = str(error)
    found = _MATMUL_SIZES.search(text)
    if found is not None:
        rows, inner, other = (int(size) for size in found.groups())
        if met(inner, other) and rows != other:  # mat1 (N, N), not (N * S, N)
            return inner
        return other if met(other, inner) else None
    found = _EINSUM_SIZES.search(text)
    if found is not None:
        sizes = sorted(int(found.group(group)) for group in (2, 4))
        if not met(*sizes) or _einsum_width_met(error, found.group(1), *sizes):
            return None
        return sizes[0]
    found = _SPARSE_SIZES.search(text)
    if found is not None:
        sizes = sorted(int(size) for size in found.groups())
        return sizes[0] if met(*sizes) else None
    return None


def _einsum_width_met(
    error: BaseException, subscript: str, batch: int, rows: int
) -> bool:
    """Whether a failed einsum's ``subscript`` of size ``batch`` is a folded width.

    An operand with ``rows`` (``B * S``) rows has ``subscript`` of size
    ``batch`` in another dimension: a folded activation's features, ``B``
    wide by chance (read from the einsum's frame in ``error``'s traceback;
    ``False`` where there is none).
    """
    frame = raising_frame(error, torch.functional.einsum)
    if frame is None:
        return False
    equation, operands = frame.f_locals.get("equation"), frame.f_locals.get("operands")
    if not isinstance(equation, str) or not isinstance(operands, (list, tuple)):
        return False
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    for subscripts, operand in zip(inputs, operands, strict=False):
        if not isinstance(operand, Tensor) or operand.dim() == 0:
            continue
        left, _, right = subscripts.partition("...")
        if subscript in left:
            dim = left.index(subscript)
        elif subscript in right:
            dim = operand.dim() - len(right) + right.index(subscript)
        else:
            continue
        if dim > 0 and operand.shape[dim] == batch and operand.shape[0] == rows:
            return True
    return False


# torch's check of an attention's key_padding_mask against the query's batch.
_KEY_PADDING = re.compile(
    r"Expected key_padded_mask\.shape\[0\] to be (\d+), but got (\d+)"
)


def with_fold_hint(
    error: RuntimeError | AssertionError, state: ParticleState | None
) -> RuntimeError | AssertionError | None:
    """``error`` with a word on the fold if it is a size mismatch, else ``None``.

    torch's size errors inside a network name folded sizes the user never
    wrote (``B * S`` rows). The new error says why and names
    :func:`~pyrolite_bnn.layers.functional.match_particles` (or, where a
    Bayesian layer read one row first, :func:`_read_first`); an
    error that already carries the word is left alone, and so is any error
    of a call with one particle (``state.samples``; no ``state``: outside a
    call), where nothing is folded and the plain torch model fails alike,
    and a size error whose two sizes the fold cannot explain
    (:func:`_fold_explains`: two features' widths).
    torch checks an attention's ``key_padding_mask`` with an
    ``AssertionError``; the hinted error keeps that type. Where the sizes
    that do not match are a batch's ``B`` and ``B * S`` rows
    (:func:`_folded_rows_met`: a graph's adjacency times folded node
    features), the note says so and gives the per-particle form.
    """
    samples = 1 if state is None else state.samples
    text = str(error)
    if _FOLD_HINT in text:
        return None
    if isinstance(error, AssertionError):
        return _key_padding_hint(text, samples)
    read = re.search(r"expects a tensor with <= 2 dimensions, but self is (\d+)D", text)
    if read is not None and int(read.group(1)) >= 4:
        # A drawn weight is (S, 1, out, in) or more, with one particle too.
        return RuntimeError(
            f"{text}\n(if that tensor is a Bayesian layer's weight read directly "
            "in a forward, as in F.linear(x, self.fc.weight): inside a Bayesian "
            "call it is the particles' draws (S, ...); call the layer itself, or "
            "keep the module whose forward reads it deterministic with "
            "bnn.convert(..., exclude=...))"
        )
    if "2d weights expected" in text:
        # torch's fused nn.TransformerEncoderLayer reads its sublayers' weights.
        return RuntimeError(
            f"{text}\n(torch's fast path of a plain nn.TransformerEncoderLayer, "
            "taken in evaluation mode without gradients, reads the weights of the "
            "layers inside it itself, and a Bayesian layer's weight there is the "
            "particles' draws (S, 1, out, in): make the whole layer Bayesian "
            "(bnn.VITransformerEncoderLayer; bnn.convert converts it as one), or "
            "turn torch's fast path off for the call, "
            "torch.backends.mha.set_fastpath_enabled(False))"
        )
    if samples <= 1:
        return None
    met = _folded_rows_met(error, state)
    if met is not None:
        rows = met * samples
        return RuntimeError(
            f"{text}\n{_FOLD_HINT}: {rows} = {met} * {samples} are a batch's rows "
            f"folded with the particles, row b * S + s, met by a tensor with that "
            f"batch's {met} rows, as an operation across the batch does (a graph's "
            "adjacency over the nodes, A @ h, an einsum or torch.sparse.mm over "
            "them), which would mix the particles; write it per particle on "
            "h.unflatten(0, (-1, S)), torch.einsum('ij,jsf->isf', A, h.unflatten("
            "0, (-1, S))).flatten(0, 1) with S = bnn.layers.functional."
            "current_samples(), see 'Operations across the batch' in the "
            "concepts guide)"
        )
    if any(index in text for index in _INDEX_ERRORS):
        return RuntimeError(
            f"{text}\n{_FOLD_HINT}, row b * S + s for example b under particle s: "
            "an index over the batch (graph nodes, index_add_, scatter_add_, "
            "index_select) built from the input has B entries, and an operation "
            "across the batch mixes the particles; write it per particle on "
            "h.unflatten(0, (-1, S)), see 'Operations across the batch' in the "
            "concepts guide)"
        )
    if any(reshape in text for reshape in _RESHAPE_ERRORS):
        if re.search(r"shape '\[-1\b", text):  # the batch is -1 already
            return None
        return RuntimeError(
            f"{text}\n{_FOLD_HINT}: a reshape or view that takes the batch size "
            "from the network's input, or writes it as a number, misses the S "
            "particles folded into it; write -1 for the batch dimension "
            "(h.reshape(-1, ...)) or take the size from the tensor reshaped)"
        )
    if any(width in text for width in _WIDTH_ERRORS):
        return RuntimeError(
            f"{text}\n{_FOLD_HINT}: the rows named there are the batch times the "
            f"{samples} particles; the sizes that do not match are the features, "
            "the same as in the plain torch model)"
        )
    if not any(size in text for size in _SIZE_ERRORS):
        return None
    if state is not None and not _fold_explains(text, state):
        return None  # two features' widths, as in the plain torch model
    other = None if state is None else _one_row_input_read(state, text)
    if other is not None:
        return RuntimeError(
            f"{text}\n{_FOLD_HINT}: a Bayesian layer read an input of this call "
            "that has one row. Every input of the outermost call keeps its own "
            f"batch, here a batch of 1 beside another input's {other}, so that "
            f"layer's output has one row per particle ({samples} rows), not the "
            f"{other} * {samples} rows of the other input's batch: torch's "
            "broadcast of a leading size of 1 does not reach across the folded "
            "particles (nor does bnn.match_particles, which refuses such rows). "
            "If the row is every example's (a context shared by the batch), give "
            "it the other input's batch size before a Bayesian layer reads it, "
            "ctx.expand(x.shape[0], *ctx.shape[1:]) (a view), in the forward or "
            "in the call)"
        )
    if state is not None and _read_first(state, 1):
        return RuntimeError(
            f"{text}\n{_FOLD_HINT}: the first tensor a Bayesian layer read in "
            "this call had one row and was no input; nothing is folded before "
            "that read, so the row was read as a batch of its own, shared by "
            "the particles (a summary of the whole input, x.mean(0, "
            "keepdim=True)), and that layer's output has one row per particle, "
            "not the B * S rows of the batch. A row that is every example's "
            "(position ids of shape (1, L), a learned (1, E) query) is read as "
            "the batch's only after a Bayesian layer has read a tensor of the "
            "batch: look the tokens up before the positions)"
        )
    return RuntimeError(
        f"{text}\n{_FOLD_HINT}, while a tensor no Bayesian layer has touched, such "
        "as an input or a branch left deterministic, is still (B, ...): combine "
        "them with bnn.match_particles(shared, folded); tensors of different "
        "batch sizes do not broadcast against each other there)"
    )


@contextmanager
def fold_hinted(state: ParticleState | None) -> Iterator[None]:
    """Raise the body's size errors with the word on the fold (:func:`with_fold_hint`).

    ``state`` is the particle state the body runs with: a pass run again
    with a fresh state (a layer that read its weight moments twice) hints
    its errors with that state's records.
    """
    try:
        yield
    except (RuntimeError, AssertionError) as error:
        hinted = with_fold_hint(error, state)
        if hinted is None:
            raise
        raise hinted from error


# The two sizes named by torch's errors in _SIZE_ERRORS.
_SIZE_PAIRS = (
    re.compile(
        r"\((\d+)\) must match the (?:size of tensor b|existing size) \((\d+)\)"
    ),
    re.compile(r"Expected size (\d+) but got size (\d+)"),
)


def _mismatched_sizes(text: str) -> tuple[int, int] | None:
    """The two sizes a size error of :data:`_SIZE_ERRORS` names, if it names them."""
    for pattern in _SIZE_PAIRS:
        found = pattern.search(text)
        if found is not None:
            first, second = (int(size) for size in found.groups())
            return first, second
    return None


def _fold_explains(text: str, state: ParticleState) -> bool:
    """Whether the fold can explain the two sizes a size error ``text`` names.

    One of them is the ``b * S`` rows of a batch ``b`` of the call's inputs,
    or one is the other times ``S`` (a tensor folded, another shared). Sizes
    of neither kind (two features' widths, 4 and 5 beside ``B = 6`` and
    ``S = 3``) fail alike in the plain torch model; an error naming no two
    sizes may be the fold's.
    """
    sizes = _mismatched_sizes(text)
    if sizes is None:
        return True
    samples = state.samples
    batches = set(state.other_batches_seen())
    if state.batch_size is not None:
        batches.add(state.batch_size)
    first, second = sizes
    return (
        any(batch * samples in sizes for batch in batches)
        or first == second * samples
        or second == first * samples
    )


def _one_row_input_read(state: ParticleState, text: str) -> int | None:
    """The other batch where a size error ``text`` comes from a one-row input's fold.

    A Bayesian layer read an input of batch 1, the first input (the call's
    batch) or another one, and a tensor of another input's batch ``B``
    (another batch than 1, :func:`row_layout`), and the two sizes the error
    names are the one-row input's folded rows, one per particle (``S``), and
    that batch's ``B * S``; an error naming other sizes (two features'
    widths, one of them ``S`` by chance) is none of its. ``None``: no such
    error.
    """
    batch, samples = state.batch_size, state.samples
    others = state.other_batches
    if batch == 1:  # the one-row input is the first: other inputs' batches read
        read = {size for size in state.used_batches & others if size != 1}
    elif 1 in others and 1 in state.used_batches and batch is not None:
        read = {int(batch)}
    else:
        return None
    sizes = _mismatched_sizes(text)
    if sizes is None:
        return None
    low, high = sorted(sizes)
    if low != samples or high % samples:
        return None
    return high // samples if high // samples in read else None


def _key_padding_hint(text: str, samples: int) -> AssertionError | None:
    """The message of torch's ``key_padding_mask`` check, with the particles' part."""
    found = _KEY_PADDING.search(text)
    if samples <= 1 or found is None:
        return None
    expected, got = (int(size) for size in found.groups())
    if expected != got * samples:
        return None
    return AssertionError(
        f"{text}\n{_FOLD_HINT}: the attention's query holds every example once "
        f"per particle, {got} * {samples} rows, while a key_padding_mask taken "
        f"from the network's input has its {got} rows; repeat the mask for every "
        "particle, bnn.match_particles(key_padding_mask, h) with h the folded "
        "(B * S, ...) query, which is key_padding_mask.repeat_interleave(S, 0) "
        "with S = bnn.layers.functional.current_samples())"
    )


# True while a network without random variables runs (a deterministic export):
# with one particle and nothing folded, every output is that particle's.
_NOTHING_FOLDED: ContextVar[bool] = ContextVar("pyrolite_nothing_folded", default=False)


def folding_nothing() -> bool:
    """Whether a network without random variables runs (:func:`nothing_folded`)."""
    return _NOTHING_FOLDED.get()


def nothing_folded() -> AbstractContextManager[None]:
    """Run the body's network calls as holding no folded tensors (see above)."""
    return set_while(_NOTHING_FOLDED, True)


_STATE: ContextVar[ParticleState | None] = ContextVar(
    "pyrolite_particles", default=None
)


def current() -> ParticleState | None:
    """The particle state of the running outermost call (``None`` outside)."""
    return _STATE.get()


def differentiates_inputs(outside: Tensor | None = None) -> bool:
    """Whether the running call's output may be differentiated by its inputs.

    One of the outermost call's tensor inputs requires gradients (saliency
    maps, gradient penalties, physics-informed losses) or carries a
    forward-mode tangent (``torch.func.jvp`` / ``jacfwd``, dual tensors of
    ``torch.autograd.forward_ad``), also through ``torch.func`` wrappers
    (:func:`~pyrolite_bnn._capture.carries_derivative`). Whatever the grad
    mode: ``torch.utils.checkpoint(..., use_reentrant=True)`` runs the
    forward pass under ``no_grad`` and the recomputation with gradients, and
    both must run the same estimator. Outside a call: whether ``outside``,
    the tensor a call would get (``None``: none), carries a derivative.
    """
    state = _STATE.get()
    if state is not None:
        return state.inputs_require_grad
    return outside is not None and carries_derivative(outside)


def computed_from_folded(tensor: Tensor) -> bool:
    """Whether ``tensor`` was computed from a Bayesian layer's folded output.

    It is one of the call's outputs of ``B * S`` rows or a view of one, or
    its autograd graph reaches one (walked as for the rows taken from the
    fold, :func:`_refuse_rows_taken_from_folded`); ``False`` outside a call,
    and without gradients for a tensor computed otherwise (``torch.relu(h)``
    under ``torch.no_grad()``: no graph tells).
    """
    state = _STATE.get()
    return state is not None and _from_folded_output(state, tensor)


def outside_any_call() -> bool:
    """Whether no network call is running and no Pyro handler is active.

    There a weight has no draw: it is read as its posterior mean.
    """
    return current() is None and not pyro_wrapped()


def particles(state: ParticleState) -> AbstractContextManager[None]:
    """Make ``state`` the current particle state for the body."""
    return set_while(_STATE, state)


@contextmanager
def batch_of(batch: int, samples: int = 1) -> Iterator[None]:
    """Run the body with the current state's batch size set to ``batch``.

    For a layer that runs its body on a re-laid-out batch (sequence-first
    inputs in the batch-first fold, packed sequences padded); the network's
    records (root, inputs, folded outputs) stay shared with the body. Outside
    a network (a ``forward`` called directly), a state of ``samples``
    particles.
    """
    state = _STATE.get()
    if state is None:
        body = ParticleState(samples, batch)
    else:
        body = dataclasses.replace(state, batch_size=batch)
    with particles(body):
        yield


@contextmanager
def particle_plate(samples: int, device: torch.device | None = None) -> Iterator[None]:
    """Open the particle plate of size ``samples``, scaled by ``1 / samples``.

    Raises:
        RuntimeError: if a trace already holds a particle plate (a second
            network called on its own in one Pyro model), naming what works.
        NotImplementedError: inside another plate (:func:`refuse_outer_plates`).
    """
    refuse_outer_plates()
    where = None if device is None else str(device)
    try:
        plate = pyro.plate(PLATE_NAME, samples, dim=PLATE_DIM, device=where)
    except RuntimeError as error:
        if f"sample sites named '{PLATE_NAME}'" not in str(error):
            raise
        raise RuntimeError(_second_plate_message()) from error
    with plate:
        if traced_site_count(PLATE_NAME) > 1:  # scoped: the names differ
            raise RuntimeError(_second_plate_message())
        if samples == 1:
            yield
        else:
            with poutine.scale(scale=1.0 / samples):
                yield
        if _list_prototype_beside_the_plate():
            raise RuntimeError(_BESIDE_AN_AUTOGUIDE_LIST)


def refuse_outer_plates() -> None:
    """Refuse to run a network's Pyro model or guide inside another plate.

    A network's weights are global: one draw per particle for all examples.
    Inside a plate (a user's data plate, ``Trace_ELBO(vectorize_particles=True)``
    or ``Predictive(parallel=True)``) they would need another batch dimension,
    and Pyro reports only that model and guide shapes disagree.

    Raises:
        NotImplementedError: naming the plate and what to do instead.
    """
    for frame in get_plates():
        if frame.name == "num_particles_vectorized":
            raise NotImplementedError(_vectorised_particles_message())
        if frame.name == "_num_predictive_samples":
            raise NotImplementedError(
                "Predictive(parallel=True) is not supported: the network already "
                "draws all its particles in one vectorised pass, and Pyro's extra "
                "plate would need a second particle dimension. Use parallel=False "
                "(the default), or Predictive(..., num_samples=1)(x, samples=k) for "
                "k draws along the particle dimension"
            )
        raise NotImplementedError(
            f"a network's Pyro model and guide run outside other plates, found "
            f"plate {frame.name!r}: its weights are global (one draw per particle "
            "for all examples), not one per element of that plate. Call the "
            "network on the batch before opening the plate and observe its output "
            "inside it: out = net(x[idx]); with bnn.per_particle(out), "
            "pyro.plate('data', N, subsample=idx): pyro.sample(..., obs=y[idx])"
        )


def _second_plate_message() -> str:
    """Why a second particle plate in one trace is refused, for what opened it.

    An ``AutoGuideList`` opens the plates of its model's prototype trace
    before its parts run; the network's guide as a part (or in a guide
    function that is one) then opens the particle plate a second time.
    """
    if called_from(AutoGuideList.forward):
        return _IN_AN_AUTOGUIDE_LIST
    if any(not _plate_holds_sites(trace) for trace in traces_holding(PLATE_NAME)):
        # Opened with nothing in it: an AutoGuideList's plates, not a network.
        return (
            f"{_BESIDE_AN_AUTOGUIDE_LIST} (the plate '{PLATE_NAME}' was opened "
            "before with no site in it, as an AutoGuideList does; a "
            f"pyro.plate of your own named '{PLATE_NAME}' needs another name)"
        )
    return _TWO_NETWORKS


def _plate_holds_sites(trace: Any) -> bool:
    """Whether a sample site of ``trace`` lies in the particle plate."""
    return any(
        node["type"] == "sample"
        and any(frame.name == PLATE_NAME for frame in node["cond_indep_stack"])
        for node in trace.nodes.values()
    )


def _list_prototype_beside_the_plate() -> bool:
    """Whether an ``AutoGuideList`` sets up on a model whose plate a trace holds.

    The network ran in the list's prototype trace, which recorded its sites
    in the particle plate (the list was built on the whole model, not on
    ``poutine.block(model, expose=[...])``), while a trace around it (the
    guide's) holds the plate already, opened by ``net.guide``: the list
    would open it there a second time, and Pyro says only that there are
    multiple sites named ``'particles'``.
    """
    frame = running_frame(AutoGuide._setup_prototype)
    if frame is None or not isinstance(frame.f_locals.get("self"), AutoGuideList):
        return False
    prototype = innermost_trace()
    return (
        prototype is not None
        and _plate_holds_sites(prototype)
        and bool(traces_holding(PLATE_NAME))
    )


def _vectorised_particles_message() -> str:
    """Why Pyro's plate of vectorised particles is refused, for what opened it."""
    if called_from(vectorized_importance_weights):
        return (
            "Pyro's vectorized_importance_weights (and psis_diagnostic, which "
            "calls it) is not supported: it runs the model in a plate of "
            "num_samples draws, and a network's weights are drawn in its own "
            "particle plate, whose particles weigh 1/S each in one trace (one "
            "weight per trace would be the mean of S networks' log weights); "
            "a second plate around it would need a second particle dimension. "
            "Use pyro.infer.Importance(model, guide=net.guide, num_samples=n)"
            ".run(x, y, samples=1): its log_weights are one network's each "
            "(psis_diagnostic fits pyro.ops.stats.fit_generalized_pareto to "
            "the largest of such weights)"
        )
    if called_from(SVGD.step):
        return (
            "SVGD is not supported: it moves num_particles point estimates of "
            "every latent site, held in a plate of its own around the model, "
            "while a network draws its weights from net.guide in its own "
            "particle plate (pyro.plate('particles'), each particle weighing "
            "1/S); SVGD's plate would need a second particle dimension, and "
            "its particles are not the network's. Train the network with SVI "
            "and net.guide (bnn.Trace_ELBO, bnn.RenyiELBO), or sample it with "
            "MCMC and samples=1"
        )
    if method_of_running(TraceTailAdaptive_ELBO):
        return (
            "TraceTailAdaptive_ELBO is not supported: Pyro implements it only "
            "with vectorize_particles=True, ranking num_particles runs of the "
            "whole model in a plate of their own, and the network already "
            "draws its particles in its own plate (each weighing 1/S), so that "
            "plate would need a second particle dimension; with "
            "vectorize_particles=False Pyro refuses it. For a bound that "
            "weighs particles by p/q, use bnn.RenyiELBO (over all K x S "
            "particles); for a plain ELBO, Trace_ELBO with svi.step(x, y, "
            "samples=k)"
        )
    return (
        "vectorize_particles=True is not supported: the network already "
        "draws all its particles in one vectorised pass, and Pyro's extra "
        "particle plate would need a second particle dimension. Use "
        "vectorize_particles=False, num_particles=1 and pass samples=k to "
        "svi.step (svi.step(x, y, samples=k)) for k particles"
    )


def input_leaves(values: Iterable[Any]) -> Iterator[Tensor | PackedSequence]:
    """The tensors and packed sequences of call inputs, in order.

    Tuples, lists, dicts and dataclasses are walked: a network may take its
    inputs packed in one of them (``net((x, mask))``, as a Pyro model's single
    ``x`` must).
    """
    for leaf in _structures.leaves(list(values)):
        if isinstance(leaf, (Tensor, PackedSequence)):
            yield leaf


def leading_input(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[int | None, torch.device | None]:
    """Batch size and device of a call's first tensor or ``PackedSequence`` input.

    Positional arguments come before keyword ones, and tensors inside tuples,
    lists and dicts count (:func:`input_leaves`); the batch size is the
    leading size of a tensor (``None`` for a scalar) and the number of
    sequences of a packed batch; ``(None, None)`` without such an input.
    """
    for value in input_leaves((*args, *kwargs.values())):
        if isinstance(value, PackedSequence):
            return leading_size(value), value.data.device
        return leading_size(value), value.device
    return None, None


def leading_size(value: Tensor | PackedSequence) -> int | None:
    """Batch size of one input (``None`` for a scalar tensor).

    A tensor's leading size; the number of sequences of a packed batch.
    """
    if isinstance(value, PackedSequence):
        return int(value.batch_sizes[0])
    return None if value.dim() == 0 else value.size(0)  # nested: no .shape


# The particle count asked of a plain network's call (call_network), keyed by
# the module: read where its call opens, in this thread's context only.
_REQUESTED_SAMPLES: ContextVar[tuple[object, int] | None] = ContextVar(
    "pyrolite_requested_samples", default=None
)


def requesting_samples(module: object, samples: int) -> AbstractContextManager[None]:
    """Run the body with ``samples`` particles asked of ``module``'s calls.

    A plain ``torch.nn`` network has no ``samples=`` argument; setting its
    ``samples`` attribute for a call instead was seen by other threads calling
    the same network (and two overlapping calls restored each other's value).
    """
    return set_while(_REQUESTED_SAMPLES, (module, samples))


def requested_samples(network: nn.Module) -> int | None:
    """The count :func:`requesting_samples` asked of ``network`` or of its holder.

    A plain module around one network runs that network as a network of its
    own (with its own guide): the count asked of the plain module
    (``predict(wrapper, samples=k)``, ``loss_fn.model_loss``) is the
    network's.
    """
    requested = _REQUESTED_SAMPLES.get()
    if requested is None:
        return None
    holder, count = requested
    if holder is network or (
        isinstance(holder, nn.Module) and any(m is network for m in holder.modules())
    ):
        return count
    return None


def check_samples(samples: object) -> int:
    """Validate a particle count and return it as ``int``.

    Raises:
        TypeError: if ``samples`` is not an integer (``2.0``, ``True``).
        ValueError: if it is below 1.
    """
    if type(samples) is int and samples >= 1:  # every call: the common case first
        return samples
    return check_count(samples, "samples")


def inverse_permutation(permutation: Tensor) -> Tensor:
    """``inverse`` with ``inverse[permutation[i]] == i``."""
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(len(permutation), device=permutation.device)
    return inverse


def unfold_packed(packed: PackedSequence, state: ParticleState) -> PackedSequence:
    """A packed output as the outermost call returns it: ``data`` ``(S, N, ...)``.

    ``PackedSequence(data[s], batch_sizes, sorted_indices, unsorted_indices)``
    is particle ``s``'s packing of the ``B`` sequences. A recurrent layer's
    folded packing of ``B * S`` sequences holds, at each time step, the ``S``
    particles of a sequence next to each other, so its data is ``(N, S, ...)``
    in the order of one particle's packing (``layers/_packed.py``); a packing
    shared by all particles is expanded.
    """
    samples = state.samples
    data = packed.data
    if any(data is tensor for tensor, _ in state.batch_folded):
        sorted_rows = packed.sorted_indices
        assert sorted_rows is not None
        sorted_indices = sorted_rows[::samples] // samples
        unsorted = any(data is tensor for tensor in state.unsorted_packings)
        return PackedSequence(
            data.view(-1, samples, *data.shape[1:]).transpose(0, 1).contiguous(),
            packed.batch_sizes // samples,
            None if unsorted else sorted_indices,
            None if unsorted else inverse_permutation(sorted_indices),
        )
    return PackedSequence(
        data.unsqueeze(0).expand(samples, *data.shape),
        packed.batch_sizes,
        packed.sorted_indices,
        packed.unsorted_indices,
    )


def map_outputs(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``leaf`` applied to every tensor and ``PackedSequence`` of a module output.

    Tuples, lists, dicts and dataclasses are walked, their types kept
    (:mod:`pyrolite_bnn._structures`); anything else is returned as it is.
    """

    def apply(item: Any) -> Any:
        return leaf(item) if isinstance(item, (Tensor, PackedSequence)) else item

    return _structures.map_leaves(value, apply)


def one_particle(value: Any) -> Any:
    """An outermost output of one particle without its particle dimension.

    Tensors ``(1, ...)`` become ``(...)``, a packed output's ``data`` likewise
    (see :func:`map_outputs`).
    """

    def drop(item: Any) -> Any:
        if isinstance(item, PackedSequence):
            return item._replace(data=item.data[0])
        return item[0] if item.dim() else item

    return map_outputs(value, drop)


def unfold(value: object, state: ParticleState) -> object:
    """Turn the folded output of the network into ``(S, B, ...)`` tensors.

    Tensors, in any containers (:func:`map_outputs`), are unfolded; anything else is
    returned unchanged. A tensor whose leading size is ``B`` is shared by all
    particles and is expanded (not copied) to ``(S, B, ...)``.

    Raises:
        TypeError: for an object of another class holding tensors as its
            attributes (a ``SimpleNamespace``): they would stay folded.
    """

    def unfold_one(item: Any) -> Any:
        if isinstance(item, PackedSequence):
            return unfold_packed(item, state)
        if isinstance(item, Tensor):
            return unfold_tensor(item, state)
        held = getattr(item, "__dict__", None)
        if isinstance(held, dict) and any(isinstance(v, Tensor) for v in held.values()):
            raise TypeError(
                f"the network returned a {type(item).__name__} holding tensors: "
                "the library unfolds the particles of tensors in tuples, lists, "
                "dicts and dataclasses only, and these would stay folded (batch * "
                "samples rows); return one of those (a @dataclass for named fields)"
            )
        return item

    return _structures.map_leaves(value, unfold_one)


def unfold_at(tensor: Tensor, samples: int, dim: int) -> Tensor:
    """A tensor folded ``B * S`` at ``dim`` as ``(S, ..., B, ...)``.

    Each particle's slice is then the layer's own layout.
    """
    batch = tensor.shape[dim] // samples
    shape = (*tensor.shape[:dim], batch, samples, *tensor.shape[dim + 1 :])
    return tensor.reshape(shape).movedim(dim + 1, 0).contiguous()


def unfold_tensor(tensor: Tensor, state: ParticleState) -> Tensor:
    """Unfold one tensor (see :func:`unfold`)."""
    samples, batch = state.samples, state.batch_size
    if tensor.dim() == 0:
        return tensor
    for folded, dim in state.batch_folded:
        if folded is tensor:
            return unfold_at(tensor, samples, dim)
    if state.sequence_batches and (
        tensor.dim() < 2 or tensor.shape[1] not in state.sequence_batches
    ):
        raise ValueError(
            f"network output of shape {tuple(tensor.shape)} has no sequence "
            "dimension, but the network holds batch_first=False layers: their "
            "particles are folded into the sequence dimension (dimension 0), "
            "so an output without it (a classifier on h_n[-1] or on a pooled "
            "sequence) cannot be unfolded; build the network with "
            "batch_first=True layers and (batch, sequence, feature) inputs"
        )
    if samples == 1 and folding_nothing():
        return tensor.unsqueeze(0)
    rows = tensor.shape[0]
    # An output with another input's batch counts only folded: a plain layer's
    # output of that size may hold the particles elsewhere (h_n of nn.GRU with
    # an h0 input, (layers, B * S, H)).
    state.classified[0] = True  # the network has run: its output may be folded
    shared = row_layout(
        state, tensor, samples, batch, others_shared=False, layer_input=False
    )
    if shared is None and batch is None and rows % samples == 0:
        shared = False
    if shared is False:
        # Batch-major rows b * S + s -> (S, B, ...), contiguous for the caller.
        unfolded = tensor.reshape(rows // samples, samples, *tensor.shape[1:])
        return unfolded.transpose(0, 1).contiguous()
    keep_first = (
        "Keep the batch dimension first inside a VIModule's forward (in a "
        "sequence-first network, batch_first=False, the leading dimension is the "
        "input's sequence: an output without it, as a classifier on h_n[-1], "
        "needs a batch_first=True network)."
    )
    if shared and _folded_behind(tensor, state):
        raise ValueError(
            f"network output of shape {tuple(tensor.shape)} has the batch size "
            f"{rows} as its leading size, but the shape of a Bayesian recurrent "
            "layer's state (layers, batch * samples, hidden), whose particles are "
            f"folded in dimension 1 ({tensor.shape[1]} = {rows} * {samples}): a "
            "transformed state (torch.tanh(h_n)) with as many layers as examples "
            "cannot be told from an output shared by the particles. Return the "
            "state as the layer gives it, or with the batch first "
            f"(h_n.transpose(0, 1)). {keep_first}"
        )
    if shared and state.folded_outputs and tensor.grad_fn is not None:
        _refuse_rows_taken_from_folded(state, tensor, "the network's output has")
    if shared:
        return tensor.unsqueeze(0).expand(samples, *tensor.shape)
    if batch is None:
        raise ValueError(
            f"network output has leading size {rows}, not a multiple of "
            f"samples={samples}"
        )
    raise ValueError(
        f"network output has leading size {rows}; expected the batch size {batch} "
        f"or samples * batch = {samples * batch}. "
        f"{_rows_per_group_hint(rows, samples, batch)}{keep_first}"
    )


def _rows_per_group_hint(rows: int, samples: int, batch: int) -> str:
    """What an output of ``rows`` rows, a multiple of ``samples``, may be.

    One row per particle: the whole batch reduced per particle (one set given
    as the batch); ``G < B`` rows per particle: one per group of the batch
    (a graph-level readout); a multiple of ``B`` rows per particle: the
    folded batch merged with another dimension (``logits.view(-1, V)`` of
    ``(B * S, L, V)``). Empty for other sizes.
    """
    if samples == 1 or rows % samples:
        return ""
    if rows == samples:
        return (
            "That is one row per particle: a network that reduces its whole "
            "batch per particle (one set or point cloud given as the batch, "
            "h.unflatten(0, (-1, S)).sum(0)) has no row per example; give the "
            "set as a batch of one, x.unsqueeze(0) of shape (1, n, features), "
            "and reduce its dimension 1 (the output is then (S, 1, ...)). "
        )
    if rows // samples > batch:
        if rows % (batch * samples):
            return ""
        return (
            f"That is {rows} = {batch} * {samples} * {rows // (batch * samples)}: "
            "the batch's folded rows merged with another dimension (a sequence, "
            "as logits.view(-1, V) of (B, L, V) logits does); return the batch "
            "as a dimension of its own, (B, L, ...), and merge after the call, "
            "whose output is (S, B, L, ...). "
        )
    return (
        f"That is {rows // samples} rows per particle: an output with one row "
        "per group of the batch (a graph-level readout over a batch vector, a "
        "subset of the nodes) unfolds by a batch of that size given as the "
        "network's first input (graph ids torch.arange(G), the selected "
        "nodes' index), the nodes then another input's batch (see "
        "'Graph-level outputs and node subsets' in the how-to guides). "
    )


def _folded_behind(tensor: Tensor, state: ParticleState) -> bool:
    """Whether an output read as shared is a recurrent state with the batch behind.

    ``(k, B * S, ...)`` with ``k == B``: the leading size says shared, but a
    Bayesian layer of the call gave a tensor of its shape folded at dimension
    1 (a ``VIGRU``/``VILSTM``'s ``h_n``, ``(layers, B * S, H)``), which the
    output is then a transform of (``torch.tanh(h_n)``; the layer's own
    tensor is unfolded where it folded it). A shared output of another
    shape with ``B * S`` in dimension 1 by coincidence (``B = 1`` and ``S``
    features of a deterministic head) keeps its reading. Only in a
    batch-first network (a sequence-first one's outputs have the batch in
    dimension 1).
    """
    if state.samples == 1 or not state.batch_leading or tensor.dim() < 2:
        return False
    return any(
        dim == 1 and folded.shape == tensor.shape for folded, dim in state.batch_folded
    )
