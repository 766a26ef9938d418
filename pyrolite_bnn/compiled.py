"""Compiled loss graphs: ``KullbackLeiblerLoss(..., compile=True)``.

The library's forward pass is ordinary Python (particle state, drawn-weight
tables, Pyro handlers for assigned guides), which ``torch.compile`` cannot trace
without breaking the graph dozens of times. So the graph is captured one level
lower: :func:`torch.fx.experimental.proxy_tensor.make_fx` *runs* that Python once
and records the tensor operations it issues (forward pass, log-likelihood and KL,
random draws included), and ``torch.compile`` then compiles the recorded graph,
with autograd, into fused kernels (CUDA graphs as well with
``compile="reduce-overhead"`` on a GPU).

Whatever Python decided during capture is frozen in the graph, as with
``torch.compile``'s guards: a graph is reused only for the same network
structure (its own modules' structure stamps: building other modules changes
nothing), particle count, input and target shapes, dtypes and devices,
train/eval modes, estimators, every module's public scalar attributes
(``nn.Dropout.p``, ``nn.LeakyReLU.negative_slope``, NumPy scalars too), forward
hooks (the module's and the global ones) and what each prior's ``graph_key``
says (a :class:`~pyrolite_bnn.CallablePrior`'s function and the distribution it
returns now), and is captured anew otherwise. The eager loss's checks that read
no tensor values (``dataset_size`` against the batch, the watches of the guide
and of the optimizers) run on every compiled call too. A network or
guide whose Python reads tensor values (data-dependent control flow), or a
compiler failure, makes the loss fall back to the eager path with one warning.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.fx.experimental.proxy_tensor import make_fx

# ``pyrolite_bnn.loss.KullbackLeiblerLoss`` by its path: that module imports this
# one, and the name resolves (typing.get_type_hints) once both are loaded.
import pyrolite_bnn
from pyrolite_bnn._capture import capturing
from pyrolite_bnn._module_hooks import forward_hook_ids, global_hook_ids
from pyrolite_bnn._module_state import buffers_restored
from pyrolite_bnn._owned_tensors import OwnedTensors
from pyrolite_bnn._particles import check_samples
from pyrolite_bnn._pyro_module import public_settings, structure_stamp
from pyrolite_bnn._validation import (
    check_finite_inputs,
    distribution_checks_off,
    is_validation_enabled,
    validation,
)
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.module import VIModule
from pyrolite_bnn.record import ForwardRecord, find_record

if TYPE_CHECKING:
    import pyrolite_bnn.loss

__all__ = ["COMPILE_MODES", "CompileFallbackWarning", "CompileMode", "LossGraphs"]

# ``compile=`` values: False (eager), True (torch.compile's default mode) or a
# torch.compile mode name.
CompileMode = Literal[
    "default",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
]
COMPILE_MODES: tuple[CompileMode, ...] = get_args(CompileMode)
# Graphs kept per loss object (one per call signature, least recently used out),
# and signatures remembered as seen once (not compiled yet).
_MAX_GRAPHS = 8
_MAX_SEEN = 64


class CompileFallbackWarning(RuntimeWarning):
    """A compiled loss could not be built; the eager path runs instead."""


@dataclass(frozen=True)
class _Graph:
    """A compiled graph ``(tensors, args, target) -> (log_lik, kl)``."""

    run: Callable[..., tuple[Tensor, Tensor]]
    output: Tensor  # a meta tensor with the shape and dtype of the network output
    batch: int  # the output's number of examples (KullbackLeiblerLoss.check_batch)
    record: _CapturedRecord  # what the loss's checks read of the captured pass


class LossGraphs:
    """The captured and compiled loss graphs of one ``KullbackLeiblerLoss``.

    Args:
        mode: a ``torch.compile`` mode (see :data:`COMPILE_MODES`).
    """

    def __init__(self, mode: CompileMode) -> None:
        if mode not in COMPILE_MODES:
            raise ValueError(
                f"compile mode must be one of {COMPILE_MODES}, got {mode!r}"
            )
        self.mode = mode
        self._graphs: OrderedDict[Hashable, _Graph] = OrderedDict()
        self._failed: set[Hashable] = set()
        self._seen: OrderedDict[Hashable, None] = OrderedDict()

    def __reduce__(self) -> tuple[type[LossGraphs], tuple[str]]:
        """Copies and pickles start without graphs (they hold compiled code)."""
        return (LossGraphs, (self.mode,))

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Forget every graph (and every failure)."""
        self._graphs.clear()
        self._failed.clear()
        self._seen.clear()

    def terms(
        self,
        loss_fn: pyrolite_bnn.loss.KullbackLeiblerLoss,
        model: VIModule,
        args: tuple[Any, ...],
        target: Tensor,
        samples: int | None,
    ) -> tuple[Tensor, Tensor, int, int] | None:
        """``(sum of log-likelihoods, KL, particles, batch)`` from a compiled graph.

        Returns ``None`` where the caller must run eagerly: the first call of a
        signature (so that bad inputs raise the eager path's errors, and
        one-off shapes such as a last short batch are not compiled), a call
        whose arguments cannot be keyed, and a signature whose capture or
        compilation failed (which warns once).
        """
        count = check_samples(model.samples if samples is None else samples)
        modules = [*model.modules(), *loss_fn.modules()]
        tensors = _tensors_of(modules)
        call = (args, target)
        key = _signature(loss_fn, model, modules, tensors, call, count)
        if key is None or key in self._failed:
            return None
        graph = self._graphs.get(key)
        if graph is None and key not in self._seen:
            self._seen[key] = None
            while len(self._seen) > _MAX_SEEN:
                self._seen.popitem(last=False)
            return None
        if graph is not None:
            self._graphs.move_to_end(key)
            if is_validation_enabled():
                _validate(loss_fn, model, graph.output, args, target)
            _check(loss_fn, graph)
            log_lik, kl = graph.run(tensors, args, target)
            return log_lik, kl, graph.output.shape[0], graph.batch
        try:
            graph = self._capture(loss_fn, model, tensors, args, target, count)
        except Exception as error:  # anything: the eager path is always correct
            self._fall_back(key, model, error)
            return None
        _check(loss_fn, graph)  # its refusals and warnings are no compile failures
        try:
            log_lik, kl = graph.run(tensors, args, target)  # compiles on first run
        except Exception as error:
            self._fall_back(key, model, error)
            return None
        self._seen.pop(key, None)
        # Graphs of networks that are gone serve no call again (a search
        # over many models with one loss): dropped before they are the oldest.
        for stale in [k for k, g in self._graphs.items() if g.record.network_gone()]:
            del self._graphs[stale]
        self._graphs[key] = graph
        while len(self._graphs) > _MAX_GRAPHS:
            self._graphs.popitem(last=False)
        return log_lik, kl, graph.output.shape[0], graph.batch

    def _fall_back(self, key: Hashable, model: VIModule, error: Exception) -> None:
        """Remember a signature that failed, and warn once that it runs eagerly."""
        self._failed.add(key)
        warn_at_caller(
            f"compile=True: could not compile the loss of {type(model).__name__} "
            f"({type(error).__name__}: {_first_line(error)}); running it eagerly",
            CompileFallbackWarning,
        )

    def _capture(
        self,
        loss_fn: pyrolite_bnn.loss.KullbackLeiblerLoss,
        model: VIModule,
        tensors: list[Tensor],
        args: tuple[Any, ...],
        target: Tensor,
        samples: int,
    ) -> _Graph:
        output_like: list[Tensor] = []
        batches: list[int] = []
        records: list[_CapturedRecord] = []

        def loss_terms(
            tensors: list[Tensor], args: tuple[Any, ...], target: Tensor
        ) -> tuple[Tensor, Tensor]:
            # ``tensors`` are the very parameter and buffer objects the modules
            # hold, so the tracer records them as graph inputs, not constants.
            output = model(*args, samples=samples)
            output_like.append(torch.empty_like(output, device="meta"))
            log_lik, kl, batch = loss_fn.terms_and_batch(output, target)
            batches.append(batch)
            records.append(_CapturedRecord(find_record(output)))
            return log_lik, kl

        # Capture runs the forward pass for real: undo its in-place updates of
        # buffers (BatchNorm statistics), or this step would count twice, and
        # its use of the random stream, so the graph draws what eager would.
        cuda = sorted({t.device for t in tensors if t.device.type == "cuda"}, key=str)
        with (
            buffers_restored(model),
            buffers_restored(loss_fn),
            torch.random.fork_rng(devices=cuda, device_type="cuda"),
            capturing(),
            validation(False),
            distribution_checks_off(),
        ):
            traced = make_fx(loss_terms)(tensors, args, target)
        # The tracer, in reference cycles of its own, keeps weak references to
        # every tensor it saw (its tensor tracker) until the collector runs;
        # torch.utils.swap_tensors refuses such a tensor, so a conversion of
        # the network under torch's swap flag failed until then.
        gc.collect()
        # The graph's function, not the module: a compiled module would run the
        # library's global module hooks (see _plain_roots) on every call.
        compiled = torch.compile(traced.forward, mode=self.mode, dynamic=False)
        return _Graph(compiled, output_like[0], batches[0], records[0])


class _CapturedRecord(ForwardRecord):
    """What the loss's checks read of a captured pass's record, without its draws.

    A graph's run leaves no record; the guide, the network and their
    parameters that a record names are fixed by the graph's key, so the
    captured pass's answers hold for every run of its graph. The network is
    held weakly and the parameters no longer than it
    (:class:`~pyrolite_bnn._owned_tensors.OwnedTensors`, no weak references
    to them, which would make a conversion that swaps them fail): a kept
    graph does not keep a network that is gone alive.
    """

    def __init__(self, record: ForwardRecord) -> None:
        super().__init__(record.samples, record.network)
        self.sequence_batch = record.sequence_batch
        owner = record.network
        self._guide = OwnedTensors(owner, record.guide_parameters())
        self._positive = OwnedTensors(owner, record.positive_parameters())
        self._priors = OwnedTensors(owner, record.prior_parameters())
        network = dict(enumerate(record.network_parameters()))
        self._network = OwnedTensors(owner, network)
        self._identity = record.guide_identity()
        self._training = record.training()

    def guide_parameters(self) -> dict[str, Tensor]:
        """See :meth:`ForwardRecord.guide_parameters`."""
        return self._guide.alive()

    def positive_parameters(self) -> dict[str, Tensor]:
        """See :meth:`ForwardRecord.positive_parameters`."""
        return self._positive.alive()

    def prior_parameters(self) -> dict[str, Tensor]:
        """See :meth:`ForwardRecord.prior_parameters`."""
        return self._priors.alive()

    def network_parameters(self) -> list[Tensor]:
        """See :meth:`ForwardRecord.network_parameters`."""
        return list(self._network.alive().values())

    def guide_identity(self) -> Hashable:
        """See :meth:`ForwardRecord.guide_identity`."""
        return self._identity

    def training(self) -> bool:
        """See :meth:`ForwardRecord.training`."""
        return self._training


def _check(loss_fn: pyrolite_bnn.loss.KullbackLeiblerLoss, graph: _Graph) -> None:
    """The eager loss's checks of a step, before the graph runs.

    They read no tensor values, so capture could not keep them in the graph:
    ``dataset_size`` lowered below the batch, and the watches of the guide
    (assigned after the optimizer was made), of weight decay on the scales
    and of bfloat16 scales, which look at the optimizers of every step.
    """
    loss_fn.check_dataset_size(graph.batch)
    loss_fn.watch_step(graph.record, graph.output.dtype)


def _validate(
    loss_fn: pyrolite_bnn.loss.KullbackLeiblerLoss,
    model: VIModule,
    output: Tensor,
    args: tuple[Any, ...],
    target: Tensor,
) -> None:
    """The eager path's input and target checks, before the graph runs."""
    check_finite_inputs(args, {}, type(model).__name__)
    loss_fn.predictive.check_target(output, target)


def _tensors_of(modules: list[nn.Module]) -> list[Tensor]:
    """Every parameter and buffer of ``modules``, once each, in a fixed order."""
    tensors: list[Tensor] = []
    seen: set[int] = set()
    for module in modules:
        for table in (module._parameters, module._buffers):
            for tensor in table.values():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    tensors.append(tensor)
    return tensors


def _describe(value: Any) -> Hashable:
    """Hashable description of a call argument (tensors by metadata), else error."""
    if isinstance(value, Tensor):
        return (tuple(value.shape), value.dtype, value.device, value.requires_grad)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_describe(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _describe(v)) for k, v in value.items()))
    hash(value)
    return ("value", value)


def _signature(
    loss_fn: pyrolite_bnn.loss.KullbackLeiblerLoss,
    model: VIModule,
    modules: list[nn.Module],
    tensors: list[Tensor],
    call: tuple[Any, ...],
    samples: int,
) -> Hashable | None:
    """Everything a captured graph depends on besides tensor values."""
    try:
        inputs = _describe(call)
    except TypeError:  # an unhashable non-tensor argument: nothing to key on
        return None
    return (
        id(model),
        global_hook_ids(),
        samples,
        loss_fn.kl,
        torch.is_grad_enabled(),
        _autocast_state(tensors),
        inputs,
        tuple((id(m), structure_stamp(m), _graph_key(m)) for m in modules),
        tuple((id(t), t.shape, t.dtype, t.device, t.requires_grad) for t in tensors),
    )


def _autocast_state(tensors: list[Tensor]) -> Hashable:
    """Whether autocast is on, and to which dtype, on the tensors' devices.

    A graph captured under ``torch.autocast`` holds its casts: run outside
    it, a float32 loss came out at bfloat16 precision.
    """
    state = []
    for device in sorted({t.device.type for t in tensors} | {"cpu"}):
        try:
            enabled = torch.is_autocast_enabled(device)
            dtype = torch.get_autocast_dtype(device)
        except RuntimeError:  # a device type without autocast (meta)
            continue
        state.append((device, enabled, dtype))
    return tuple(state)


def _graph_key(module: nn.Module) -> Hashable:
    """A module's Python-level switches, scalar attributes included.

    Its ``graph_key()`` (else its type and mode), its forward hooks (a graph
    captured before one was registered skipped it) and its public scalar
    attributes (:func:`~pyrolite_bnn._pyro_module.public_settings`, in a
    ``VIModule``'s ``graph_key``).

    A ``forward`` reads such attributes as constants
    (``nn.LeakyReLU.negative_slope``, ``nn.Dropout.p`` under a schedule,
    ``VIEmbedding.max_norm``), so a graph captured with one value must not run
    after it changed; torch's own compiler guards on them likewise.
    """
    if isinstance(module, VIModule):
        key: Hashable = module.graph_key()  # its type, mode and settings among them
        return (key, forward_hook_ids(module))
    key = ((type(module), module.training), forward_hook_ids(module))
    if type(module).__module__.startswith(_CONSTANT_CLASSES) and not isinstance(
        module, nn.modules.batchnorm._BatchNorm
    ):
        return key  # the library's priors and posteriors
    return (key, public_settings(module))


# Modules whose public scalar attributes are fixed at construction: scanning
# them every step would cost, not guard. Not the library's batch norms:
# torch's class, whose momentum users schedule.
_CONSTANT_CLASSES = ("pyrolite_bnn.distributions",)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else "no message"
