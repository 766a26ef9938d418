"""Running a network: the outermost call of a Bayesian network.

The outermost call opens the particle state (and, under Pyro, the particle
plate), runs the network's ``forward`` once for all particles, and unfolds the
folded output to ``(S, B, ...)``. Three ways to supply the weights:

* :func:`pyro_run` — under Pyro inference (or replayed against an assigned
  guide's trace): each random variable is a Pyro sample site
  (:mod:`pyrolite_bnn._sites`). Replayed against a guide's trace, the network
  runs as many particles as the guide drew (:func:`open_particle_plate`).
* :func:`pytorch_run` with the generated guide — no Pyro tracing: weights are
  drawn from the layers' posterior modules in site order, each when its layer
  first reads it (:class:`~pyrolite_bnn._draws.LazyDraws`), the same draws the
  traced guide would make. Layers whose estimator samples outputs from weight
  moments get those instead (never for a layer used at two positions: both
  positions must see the same weights).
* :func:`pytorch_run` with an assigned guide — the guide is traced and the
  network replayed against it.

Weights given for a network's calls (:func:`~pyrolite_bnn._draws.using_fixed_weights`,
``predict`` with the generated guide's medians or one kept draw) take the place
of the generated guide's draws: still no Pyro handler.

A PyTorch-style call attaches its :class:`~pyrolite_bnn.record.ForwardRecord`
to the outputs (see :func:`~pyrolite_bnn.record.attach_record`), where the
loss finds it.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeAlias, TypeVar

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuideList
from pyro.nn import PyroModule
from pyro.params.param_store import param_with_module_name
from pyro.poutine.runtime import effectful, get_plates
from torch import Tensor, nn
from torch.distributions import constraints
from torch.nn.utils.rnn import PackedSequence

from pyrolite_bnn import _particles, _structures
from pyrolite_bnn._capture import carries_derivative, is_capturing, records_a_graph
from pyrolite_bnn._differentiated_calls import remember
from pyrolite_bnn._distributed import unwrap
from pyrolite_bnn._draws import (
    LazyDraws,
    RepeatedMomentsRead,
    fixed_weights,
    rng_state,
    set_rng_state,
    using_draws,
)
from pyrolite_bnn._handlers import (
    importance_sampler,
    innermost_trace_holds,
    mcmc_initialising,
    replayed_traces,
)
from pyrolite_bnn._network import (
    collect_variables,
    couples_examples,
    has_sequence_first_layers,
    network_modules,
    per_particle_modules,
    refuse_pyro_statements,
)
from pyrolite_bnn._pyro_module import linked_parameters
from pyrolite_bnn._sites import SiteTable, sampling_sites
from pyrolite_bnn._validation import (
    check_finite_inputs,
    check_input_dtype,
    floating_dtype,
    is_validation_enabled,
)
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.distributions.variational import (
    MeanFieldNormalPosterior,
    NormalMoments,
)
from pyrolite_bnn.guides import autoguide_running_model
from pyrolite_bnn.module import VIModule, whole_networks_requested
from pyrolite_bnn.record import (
    ForwardRecord,
    LayerRecord,
    TraceRecord,
    attach_record,
)

__all__ = [
    "attach",
    "call_network",
    "check_unpacked_inputs",
    "generated_guide_draws",
    "invoke",
    "network_args",
    "open_particle_plate",
    "output_tensors",
    "prepare",
    "pyro_run",
    "pytorch_run",
    "report_plain_parameters",
    "run_sites",
    "unfold_output",
]


# Modules called as networks (outermost calls) in this process.
_NETWORKS: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _in_backward_pass() -> bool:
    """Whether autograd's engine is running a backward pass in this thread."""
    # torch.utils.checkpoint reads the same (private) function; without it
    # (another torch), the check below is skipped.
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current is not None and current() != -1


def _run_by_checkpoint() -> bool:
    """Whether ``torch.utils.checkpoint`` is running the current call.

    Its forward pass or, during a backward pass, its recomputation: a frame
    of its code is on the stack.
    """
    checkpoint = sys.modules.get("torch.utils.checkpoint")  # loaded when used
    if checkpoint is None:
        return False
    source = checkpoint.__file__
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename == source:
            return True
        frame = frame.f_back
    return False


def _check_not_recomputed(root: nn.Module) -> None:
    """Refuse a layer of a network run on its own by ``torch.utils.checkpoint``.

    Checkpointing recomputes a function during the backward pass, outside
    the network's call: a layer inside it would run as a network of its own,
    with new draws and its own particle dimension, and the gradients would
    be wrong. A whole network's call recomputed this way is fine: its weights
    are drawn again from the same random state. (A layer once called as a
    network of its own is not told apart from a network: torch's own error
    follows.) Skipped while ``torch.compile`` traces: its guards on the set
    of networks (a ``WeakSet``, which changes as networks are collected)
    failed to build in a long-running process.
    """
    if torch.compiler.is_compiling():
        return
    if root not in _NETWORKS and _in_backward_pass() and _run_by_checkpoint():
        raise RuntimeError(
            f"{type(root).__name__} runs on its own during a backward pass: "
            "torch.utils.checkpoint recomputes a checkpointed function outside "
            "its network's call, where a Bayesian layer cannot read its "
            "particles' weights (its gradients would be wrong). Checkpoint whole "
            "network calls instead: checkpoint(net, x, use_reentrant=False)"
        )
    _NETWORKS.add(root)


# Per network: fingerprints of the random state at the start of its calls that
# torch.utils.checkpoint ran forward, the most recent _CHECKPOINTED_KEPT.
_CHECKPOINTED_STARTS: weakref.WeakKeyDictionary[nn.Module, OrderedDict[int, None]] = (
    weakref.WeakKeyDictionary()
)
_CHECKPOINTED_KEPT = 4096


def _check_recomputed_draws(
    root: nn.Module,
    state: _particles.ParticleState,
    device: torch.device,
    checkpoint_hooked: bool,
) -> None:
    """Refuse a checkpoint's recomputation that would draw other weights.

    ``torch.utils.checkpoint`` recomputes a network's call in the backward
    pass. The gradients are those of the output the loss saw only where the
    recomputation draws the same weights, from the same random state, which
    torch restores unless ``preserve_rng_state=False`` (then they mix two
    draws). So the state at the start of every call checkpointing runs
    forward is noted, as a hash (the most recent ``_CHECKPOINTED_KEPT`` per
    network), and a recomputation starting from none of them is refused.
    Only under checkpointing is anything done: its forward pass with
    gradients keeps tensors through its hooks (``checkpoint_hooked``, see
    :func:`_saved_tensors_hooked`), the reentrant one runs without gradients
    (on an input that requires them, else torch gives none) and is found by
    its frames, as is a recomputation, in a backward pass.

    Args:
        root: the network.
        state: the call's particle state.
        device: the device whose default generator draws the call's weights.
        checkpoint_hooked: whether checkpointing's saved-tensor hooks are on.

    Raises:
        RuntimeError: naming ``preserve_rng_state=True``.
    """
    if _in_backward_pass():
        if not _run_by_checkpoint():
            return
        fingerprint = _random_state_hash(device)
        if fingerprint is None or fingerprint in _CHECKPOINTED_STARTS.get(root, {}):
            return
        raise RuntimeError(
            f"torch.utils.checkpoint recomputes {type(root).__name__}'s call in "
            "the backward pass from another random state than its forward pass "
            "(checkpoint(..., preserve_rng_state=False)): the recomputation would "
            "draw other weights than those of the output the loss saw, and the "
            "gradients would mix two draws. Let torch restore the random state: "
            "preserve_rng_state=True (its default)"
        )
    if torch.is_grad_enabled():
        if not checkpoint_hooked:
            return
    elif not (state.inputs_require_grad and _run_by_checkpoint()):
        return
    fingerprint = _random_state_hash(device)
    if fingerprint is None:
        return
    starts = _CHECKPOINTED_STARTS.setdefault(root, OrderedDict())
    starts[fingerprint] = None
    starts.move_to_end(fingerprint)
    if len(starts) > _CHECKPOINTED_KEPT:
        starts.popitem(last=False)


def _random_state_hash(device: torch.device) -> int | None:
    """A hash of the state of ``device``'s default generator (``None``: unread)."""
    if is_capturing():
        return None
    state = rng_state(device)
    return None if state is None else hash(state.numpy().tobytes())


def prepare(
    root: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], samples: int
) -> tuple[_particles.ParticleState, torch.device | None]:
    """Validate the inputs of an outermost call; return its particle state."""
    _check_not_recomputed(root)
    count = _particles.check_samples(samples)
    batch, device = _particles.leading_input(args, kwargs)
    check_finite_inputs(args, kwargs, type(root).__name__)
    if is_validation_enabled():
        check_input_dtype(args, kwargs, floating_dtype(root), type(root).__name__)
    leaves = list(_particles.input_leaves((*args, *kwargs.values())))
    # A packed input's data are an input too (shared by all particles).
    inputs = tuple(v.data if isinstance(v, PackedSequence) else v for v in leaves)
    # Recorded by torch.jit.trace or torch.export, sizes are traced values:
    # compared here, they would be constants of the graph.
    others = frozenset(
        ()
        if records_a_graph()
        else (
            size
            for size in (_particles.leading_size(v) for v in leaves)
            if size is not None and size != batch
        )
    )
    state = _particles.ParticleState(
        count,
        batch,
        root,
        inputs=inputs,
        other_batches=others,
        batch_leading=not has_sequence_first_layers(root),
        inputs_require_grad=any(carries_derivative(v) for v in inputs),
    )
    return state, device


InputTensor = TypeVar("InputTensor", bound=Tensor)
# A network's inputs as ``predict`` and ``calibrate`` take them: one tensor, or its
# positional inputs as a tuple or a list (read by ``network_args``). Generic so that
# a list of a tensor subclass (``list[nn.Parameter]``) fits, as lists are invariant.
NetworkInput: TypeAlias = InputTensor | tuple[InputTensor, ...] | list[InputTensor]


def network_args(x: object) -> tuple[Any, ...]:
    """The positional arguments of a network call on the input ``x``.

    A tuple of inputs is a network's several positional inputs, ``model(*x)``
    (``(x_num, x_cat)`` of a ``forward(self, x_num, x_cat)``); so is a list, as
    a ``DataLoader``'s collation turns such a tuple into one. Anything else,
    a named tuple too (a ``PackedSequence``), is the network's one input.
    Every entry point that runs a network on a user's input (``predict``,
    ``calibrate``, the loss's ``model_loss`` and ``pyro_model``, ``fit``)
    reads its input this way.

    Example:
        >>> import torch
        >>> x_num, x_cat = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
        >>> len(network_args((x_num, x_cat))), len(network_args([x_num, x_cat]))
        (2, 2)
        >>> len(network_args(x_num))
        1
    """
    if isinstance(x, list) or (
        isinstance(x, tuple) and not hasattr(type(x), "_fields")
    ):
        return tuple(x)
    return (x,)


def call_network(
    model: nn.Module,
    args: tuple[Any, ...],
    samples: int | None,
    kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """``model(*args, **kwargs)`` with ``samples`` particles (``None``: its default).

    A ``VIModule`` takes ``samples=``; for a plain module holding Bayesian
    layers the count is asked of its call through a context variable
    (:func:`~pyrolite_bnn._particles.requesting_samples`), so that other
    threads calling the same network keep its own ``samples``.

    Several ``args`` (a tuple or list of inputs, unpacked by
    :func:`network_args`) that the model's ``forward`` cannot take raise a
    ``TypeError`` that says they were unpacked.
    """
    given = {} if kwargs is None else kwargs
    try:
        if isinstance(model, VIModule):
            return model(*args, samples=samples, **given)
        if samples is None:
            return model(*args, **given)
        with _particles.requesting_samples(unwrap(model), samples):
            return model(*args, **given)
    except TypeError:
        if given:
            raise
        check_unpacked_inputs(model, args)
        raise


def check_unpacked_inputs(model: nn.Module, args: tuple[Any, ...]) -> None:
    """Refuse, naming the unpacking, inputs the model's ``forward`` cannot bind.

    Called when a call with ``args`` raised a ``TypeError`` (nothing is read
    on the way of a call that runs): several inputs that ``forward``'s
    signature does not take were unpacked from a tuple or list; any other
    ``TypeError`` is the model's own and is left to propagate.
    """
    if len(args) < 2:
        return
    try:
        signature = inspect.signature(unwrap(model).forward)
    except (TypeError, ValueError):  # no signature to read: let the call tell
        return
    try:
        signature.bind(*args)
    except TypeError as error:
        raise TypeError(
            f"{type(unwrap(model)).__name__}.forward cannot take the {len(args)} "
            f"inputs the library unpacked from a tuple or list ({error}): a tuple "
            "or list of inputs is passed as that many positional arguments, "
            "model(*x), as a network with several inputs takes them. For a "
            "forward that takes one list, take the inputs as separate arguments "
            "(forward(self, a, b)) or stack them into one tensor"
        ) from None


def invoke(root: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``root.forward`` (with torch's hooks) inside the current particle state."""
    if isinstance(root, PyroModule):
        return PyroModule.__call__(root, *args, **kwargs)
    return nn.Module.__call__(root, *args, **kwargs)


@contextmanager
def open_particle_plate(
    state: _particles.ParticleState, device: torch.device | None
) -> Iterator[_particles.ParticleState]:
    """Open the particle plate of ``state``; yield the state of the plate opened.

    The plate's indices are a Pyro sample site. Replayed against a trace that
    has it (a guide's trace, as Pyro's ELBOs replay the model against it), the
    plate takes the trace's indices, so the network runs as many particles as
    the guide drew, whatever count it was asked for. Pyro then scales each
    site by ``samples / drawn`` and the plate by ``1 / samples``, together the
    ``1 / drawn`` average over the guide's particles.
    """
    with _particles.particle_plate(state.samples, device):
        drawn = next(
            frame.size for frame in get_plates() if frame.name == _particles.PLATE_NAME
        )
        if drawn != state.samples:
            state = dataclasses.replace(state, samples=drawn)
        elif drawn > 1 and state.root is not None:
            warn_if_a_guide_drew_one_particle(state.root)
        yield state


def warn_if_a_guide_drew_one_particle(root: nn.Module) -> None:
    """Warn if the trace replayed into ``root``'s run drew its weights unplated.

    A hand-written guide for one particle given straight to ``SVI`` (Pyro's
    SVI tutorial's habit): its trace holds the network's weight sites but no
    particle plate, so every particle takes its one draw, and Pyro's ELBO
    then refuses the shapes ("Model and guide shapes disagree at site").
    Assigned as ``net.guide`` it runs in the particle plate.

    A trace without the plate's node whose weight sites were drawn in the
    plate is no such guide's: Pyro's ``prune_subsample_sites`` removes the
    node (``infer_discrete`` replays the model against such a trace), while
    each site still names the plate in its ``cond_indep_stack``.
    """
    sites = None
    for trace in replayed_traces():
        if _particles.PLATE_NAME in trace.nodes:
            continue
        if sites is None:
            sites = {variable.site for variable in collect_variables(root)}
        held = sorted(
            site
            for site in sites & trace.nodes.keys()
            if not any(
                frame.name == _particles.PLATE_NAME
                for frame in trace.nodes[site].get("cond_indep_stack", ())
            )
        )
        if held:
            warn_at_caller(
                f"the guide replayed into this model drew the network's weight "
                f"site {held[0]!r} without the particle plate "
                f"({_particles.PLATE_NAME!r}): a guide for one particle passed "
                "straight to SVI or an ELBO (Pyro then refuses the shapes: 'Model "
                "and guide shapes disagree'). Assign it to the network and pass "
                "the network's guide, net.guide = guide; SVI(model, net.guide, "
                "...): it then draws every particle",
            )
            return


def refuse_particles_under_mcmc(root: nn.Module, count: int) -> None:
    """Refuse a particle count above 1 where MCMC or importance sampling runs a model.

    In a Pyro model each particle is a network of its own whose sites weigh
    ``1 / S``, and both algorithms weigh the whole model trace. MCMC would
    sample ``S`` networks, each from the posterior tempered by ``1 / S``
    (posterior standard deviations ~sqrt(S) too wide); importance sampling
    would weigh each draw by the mean of its ``S`` networks' log weights (a
    tempered evidence and posterior). A count given with ``samples=`` is
    refused too: it asks for more posterior draws, which come from the
    algorithm's ``num_samples``. Every MCMC kernel of Pyro runs the model
    once under an ``InitMessenger`` first (``initialize_model``), before any
    potential energy is computed; an autoguide or ``EasyGuide`` finding its
    sites initialises the same way and is let be. ``Importance`` (and
    ``CSIS``) run the model in their ``_traces``, ``WeighedPredictive`` (and
    ``MHResampler``) in its ``forward``.

    Raises:
        ValueError: naming ``samples=1``.
    """
    if count == 1:
        return
    name = type(root).__name__
    if mcmc_initialising():
        raise ValueError(
            f"{name} runs {count} particles (samples={count}) in a Pyro "
            "model that an inference algorithm (MCMC) is initialising: each "
            f"particle is a network of its own whose sites weigh 1/{count}, so "
            f"MCMC would sample {count} networks, each from the posterior "
            f"tempered by 1/{count} (standard deviations sqrt({count}) times too "
            "wide). Run one particle, samples=1 (loss_fn.pyro_model(net) without "
            "samples= does that by itself); more posterior draws come from the "
            "chain (num_samples)"
        )
    sampler = importance_sampler()
    if sampler is not None:
        call = (
            ".run(x, y, samples=1)" if sampler == "Importance" else "(x, y, samples=1)"
        )
        raise ValueError(
            f"{name} runs {count} particles (samples={count}) in a Pyro "
            f"model that importance sampling (pyro.infer.{sampler}) weighs: "
            f"each particle is a network of its own whose sites weigh 1/{count}, "
            "so each draw's log weight would be the mean of its "
            f"{count} networks' log weights, and the log normalizer and the "
            "weighted posterior those of a tempered model. Run one network per "
            f"draw, samples=1: {sampler}(model, guide=net.guide, "
            f"num_samples=n){call}; more draws come from num_samples"
        )


def warn_if_an_autoguide_covers(root: nn.Module) -> None:
    """Warn if an autoguide built on a user's model sees ``root``'s weight sites.

    Called after the network ran: its first weight site reached the
    autoguide's prototype trace, the innermost one
    (``poutine.block(model, expose=[...])`` hides it). An ``AutoGuideList``
    covers no site itself: each of its parts is an autoguide that runs the
    model for its own prototype (and warns then) or a guide function.
    """
    guide = autoguide_running_model()
    if guide is None or isinstance(guide, AutoGuideList):
        return
    variables = collect_variables(root)
    if not variables or not innermost_trace_holds(variables[0].site):
        return
    name = type(guide).__name__
    warn_at_caller(
        f"{name} is built on a Pyro model that runs {type(root).__name__}: it "
        "covers the network's weight sites with a posterior of its own, which "
        "SVI trains instead of the network's (net.guide, bnn.predict, "
        "to_deterministic and checkpoints keep the untrained one). For the "
        f"network, assign net.guide = {name}(net.prior_model, "
        "init_loc_fn=net.init_loc_fn); for your own latent sites, build the "
        f"autoguide on poutine.block(model, expose=[...those sites...]) and call "
        "both guides in one guide function"
    )


def pyro_run(
    root: nn.Module,
    state: _particles.ParticleState,
    device: torch.device | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run ``root`` as a Pyro model: particle plate, one sample site per variable."""
    with open_particle_plate(state, device) as plate_state:
        result = run_sites(root, plate_state, args, kwargs)
    warn_if_an_autoguide_covers(root)
    return result


def run_sites(
    root: nn.Module,
    state: _particles.ParticleState,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run ``root`` inside an open particle plate, weights from Pyro sample sites."""
    table = SiteTable(collect_variables(root))
    with linked_parameters(root):
        report_plain_parameters(root)
        with _particles.particles(state), sampling_sites(table):
            result = invoke(root, args, kwargs)
    return unfold_output(root, result, state)


def unfold_output(root: nn.Module, result: Any, state: _particles.ParticleState) -> Any:
    """The outermost call's folded ``result`` with the particle dimension in front."""
    if isinstance(root, VIModule):
        return root.unfold_output(result, state)
    return _particles.unfold(result, state)


def report_plain_parameters(root: nn.Module) -> None:
    """Report the network's deterministic parameters to Pyro with ``param`` sites.

    Pyro's optimisers (``SVI``) train what ``param`` statements report. Library
    modules report their own parameters; a plain ``torch.nn`` layer inside the
    network (an ``nn.Linear`` head, a ``LayerNorm``) reports nothing by itself,
    so its parameters are reported here, named as a ``pyro.module`` statement
    would name them (``"body.2$$$weight"``).
    """
    for path, module in network_modules(root):
        if isinstance(module, PyroModule):
            continue
        for name, value in module.named_parameters(recurse=False):
            site = param_with_module_name(path, name)
            effectful(type="param")(lambda *_, value=value, **__: value)(
                site, value, constraint=constraints.real, name=site
            )


def generated_guide_draws(root: nn.Module, samples: int) -> LazyDraws:
    """What the layers of ``root`` read in a call with the generated guide.

    The weights given for ``root``'s calls
    (:func:`~pyrolite_bnn._draws.using_fixed_weights`), if any; else the
    generated guide's draws (or moments), each made when a layer first reads it.
    """
    variables = collect_variables(root)
    fixed = fixed_weights(root)
    if fixed is not None:
        missing = [v.site for v in variables if v.site not in fixed]
        if missing:
            raise RuntimeError(
                f"no weights were given for the Bayesian layer sites {missing[:3]} "
                "of this call: the network has Bayesian layers it did not have "
                "when its weights were drawn (bnn.draw_networks keeps the draws "
                "of the network as it was); draw again"
            )
        return LazyDraws.fixed(variables, [fixed[v.site] for v in variables], samples)
    # Log densities returned with the output (return_log_probs) are those of
    # the weights behind it: every weight is drawn (not sampled outputs).
    whole_networks = whole_networks_requested() or bool(
        getattr(root, "return_log_probs", False)
    )
    moments: list[NormalMoments | None] = []
    use_moments: list[bool] = []
    for v in variables:
        normal = None
        if isinstance(v.layer_posterior, MeanFieldNormalPosterior):
            normal = NormalMoments(*v.layer_posterior.normal_params())
        moments.append(normal)
        # A layer at two positions of the network (v.shared) draws its weights
        # under "auto"; an explicit "local"/"flipout" keeps its moments, and a
        # second call in one pass is refused when it happens (a layer at two
        # positions may be an alias called once, self.head = self.body[-1]).
        use_moments.append(
            not (v.shared and getattr(v.module, "estimator", "auto") == "auto")
            and not whole_networks
            and v.module.samples_from_moments()  # every posterior mean-field
        )
    # In a sequence-first network a layer's dimension 0 is the folded sequence,
    # not the batch: output moments cannot tell which outputs share an
    # example's weights; under batch statistics a particle's examples must
    # share one draw of the weights. Every weight is drawn there.
    if any(use_moments) and (has_sequence_first_layers(root) or couples_examples(root)):
        use_moments = [False] * len(use_moments)
    elif any(use_moments):  # one-sample forwards may combine a batch's examples
        inside = per_particle_modules(root)
        use_moments = [
            use and id(v.module) not in inside
            for use, v in zip(use_moments, variables, strict=True)
        ]
    return LazyDraws(variables, moments, use_moments, samples)


def pytorch_run(
    root: nn.Module,
    state: _particles.ParticleState,
    device: torch.device | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run ``root`` from ordinary PyTorch code; the outputs carry the record."""
    refuse_pyro_statements(root)
    guide = root.guide if isinstance(root, VIModule) else None
    record: ForwardRecord
    random_device = device if device is not None else torch.device("cpu")
    hooked = torch.is_grad_enabled() and _saved_tensors_hooked()
    _check_recomputed_draws(root, state, random_device, hooked)
    if guide is None or guide.inner is None:
        # The pass may run again (below): from the same random state, so that
        # its result does not depend on whether it ran before.
        random_state = None if is_capturing() else rng_state(random_device)
        start = None if random_state is None else (random_state, random_device)
        if start is not None and hooked:
            _explore_unrecorded(root, state.restarted(), args, kwargs, start)
        result, draws, state = _run_generated(root, state, args, kwargs, start)
        draws.finish()
        if not torch.is_grad_enabled():
            # No graph holds the moments: an output kept from an evaluation
            # would be their only holder (a loss computes them again).
            draws.release_moments()
        result = unfold_output(root, result, state)
        record = LayerRecord(draws, state.samples, root)
    else:
        guide_trace = poutine.trace(guide).get_trace(samples=state.samples)
        replayed = poutine.replay(pyro_run, trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(
            root, state, device, args, kwargs
        )
        # The record goes on the output's autograd node (C++, unseen by
        # Python's garbage collector): a trace that held the output too would
        # be a cycle through it, and every such pass would stay in memory.
        result = model_trace.nodes.pop("_RETURN")["value"]
        record = TraceRecord(guide_trace, model_trace, state.samples, root)
    record.sequence_batch = state.sequence_batch()
    return attach(
        result,
        record,
        log_probs=getattr(root, "return_log_probs", False),
        differentiated=state.inputs_require_grad,
    )


def _run_generated(
    root: nn.Module,
    state: _particles.ParticleState,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    start: tuple[Tensor, torch.device] | None,
) -> tuple[Any, LazyDraws, _particles.ParticleState]:
    """Run ``root`` with the generated guide's draws, again until no layer refuses.

    A layer object that runs twice reads its weight moments twice
    (:class:`~pyrolite_bnn._draws.RepeatedMomentsRead`): it is marked, and the
    pass runs again from the random state ``start`` (``None``: not restored)
    with its weights drawn, so that both calls share one draw.
    """
    while True:
        draws = generated_guide_draws(root, state.samples)
        try:
            # Size errors are hinted with this pass's state, not the first's.
            with (
                using_draws(draws),
                _particles.particles(state),
                _particles.fold_hinted(state),
            ):
                result = nn.Module.__call__(root, *args, **kwargs)
        except RepeatedMomentsRead:
            state = state.restarted()
            if start is not None:
                set_rng_state(*start)
            continue
        return result, draws, state


# Per network explored by _explore_unrecorded: the layers that read weight
# moments in its last pass run to the end.
_EXPLORED: weakref.WeakKeyDictionary[nn.Module, frozenset[tuple[int, str]]] = (
    weakref.WeakKeyDictionary()
)


def _saved_tensors_hooked() -> bool:
    """Whether activation checkpointing hands saved tensors to its hooks now.

    ``torch.utils.checkpoint(..., use_reentrant=False)`` does (and counts
    them); torch offers no public query (the same private function as the
    hooks' own; without it, and while ``torch.compile`` traces, which cannot
    trace it, ``False``). Other saved-tensor hooks (``save_on_cpu``) are not
    checkpointing.
    """
    if torch.compiler.is_compiling():
        return False
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    hooks: Any = None if top is None else top(False)
    # Only checkpointing recomputes and counts: hooks that keep what is saved
    # elsewhere (save_on_cpu) take an abandoned pass's tensors harmlessly,
    # while an extra pass would repeat the network's side effects.
    return bool(hooks) and getattr(hooks[0], "__module__", "") == _CHECKPOINT_MODULE


_CHECKPOINT_MODULE = "torch.utils.checkpoint"


def _moment_readers(draws: LazyDraws) -> frozenset[tuple[int, str]]:
    """The variables whose layers read moments in a pass with ``draws``."""
    return frozenset(
        (id(v.module), v.name)
        for v, use in zip(draws.variables, draws.use_moments, strict=True)
        if use
    )


def _explore_unrecorded(
    root: nn.Module,
    state: _particles.ParticleState,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    start: tuple[Tensor, torch.device],
) -> None:
    """Find the layers ``root`` calls twice in a pass that autograd does not record.

    A pass that a layer called twice abandons (:func:`_run_generated`) has
    saved tensors for the backward pass all the same; activation
    checkpointing counts them, and its recomputation, which draws the marked
    layer's weights at once, saved fewer ("A different number of tensors was
    saved during the original forward and recomputation"). Under
    checkpointing (:func:`_saved_tensors_hooked`), a network not yet seen to
    run to the end with the
    layers that now read moments first runs without gradients (the random
    state restored after it): the recorded pass is then the only one. Its
    other effects (batch-norm statistics) happen twice, as under the
    checkpoint's own recomputation.
    """
    readers = _moment_readers(generated_guide_draws(root, state.samples))
    if not readers or _EXPLORED.get(root) == readers:
        return
    with torch.no_grad():
        _, draws, _ = _run_generated(root, state, args, kwargs, start)
    set_rng_state(*start)
    _EXPLORED[root] = _moment_readers(draws)


def attach(
    result: Any,
    record: ForwardRecord,
    *,
    log_probs: bool,
    differentiated: bool = False,
) -> Any:
    """Attach ``record`` (and ``log_probs`` if asked) to every output tensor.

    A call with gradients whose inputs carry a derivative (``differentiated``)
    is also remembered, so that a derivative of its output by the input finds
    it (:mod:`~pyrolite_bnn._differentiated_calls`).
    """
    if differentiated and torch.is_grad_enabled():
        remember(record)
    values = record.log_probs() if log_probs else None
    for tensor in output_tensors(result):
        attach_record(tensor, record)
        if values is not None:
            tensor.log_probs = values  # type: ignore[attr-defined]
    return result


def output_tensors(value: Any) -> list[Tensor]:
    """The tensors of a network output (tuples, lists, dicts, dataclasses walked)."""
    return _structures.tensors(value)
