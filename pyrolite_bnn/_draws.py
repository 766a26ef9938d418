"""The generated guide's weights for one PyTorch-style call, drawn on first use.

Drawing every weight before the forward pass (as the traced guide does) keeps all
layers' draws alive at once; hand-written code draws each layer's weights just
before using them, and the first layer's draws die right after it (autograd does
not keep weights whose input needs no gradient). :class:`LazyDraws` does the
same while keeping the traced guide's random stream: a variable is drawn when a
layer first reads it, after every earlier variable in site order, so the values
are the ones the traced guide would draw. A big draw itself is not kept: the
device's random-number state before it is, and a later reader (the Monte-Carlo
KL, ``log_probs``, a second read in the same forward pass) replays the draw from
that state, getting the same values; a small one (at most ``_KEEP_DRAWS_UP_TO``
numbers) is kept, which costs less than saving the state. Every draw is made in
the grad mode of the network's call, whichever layer triggers it.

A call made without gradients whose output still gets one is the forward pass
of ``torch.utils.checkpoint(..., use_reentrant=True)``: torch runs it under
``no_grad`` and runs it again, with gradients, in the backward pass, for the
network's part of the gradient only. The loss's KL term must then get its
gradient from the draws of this call: :meth:`LazyDraws.follow_grad_mode`
computes the moments again from the posteriors and replays the draws (the
random state of every draw of such a call is saved), with gradients, giving
the same values.

A call can also run on weights given beforehand (:func:`using_fixed_weights`:
``predict`` with the posterior medians, or with one draw kept for all its
chunks): :meth:`LazyDraws.fixed` hands the layers those values and draws
nothing, so such a call needs no Pyro handler either.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from pyrolite_bnn._capture import is_capturing
from pyrolite_bnn._context_values import set_while
from pyrolite_bnn.distributions._precision import full_precision, is_narrow
from pyrolite_bnn.distributions.variational import (
    MeanFieldNormalPosterior,
    NormalMoments,
)
from pyrolite_bnn.variables import RandomVariable

_T = TypeVar("_T")

__all__ = [
    "LazyDraws",
    "RepeatedExplicitEstimator",
    "RepeatedMomentsRead",
    "called_repeatedly",
    "current_draws",
    "fixed_weights",
    "generators_held",
    "keeping_noise_sums",
    "kl_without_gradients",
    "mark_called_repeatedly",
    "rng_state",
    "set_rng_state",
    "using_draws",
    "using_fixed_weights",
]


def rng_state(device: torch.device) -> Tensor | None:
    """Random-number state of the default generator of ``device`` (if replayable)."""
    if device.type == "cpu":
        return torch.get_rng_state()
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return None


# Held by a computation that saves the default generators' states and rewinds
# them (predict's memory probe, chunks that draw the same weights again).
_GENERATORS_LOCK = threading.RLock()


@contextmanager
def generators_held() -> Iterator[None]:
    """Run the body as the only computation that rewinds the default generators.

    torch's default random-number generators are process-wide: a computation
    that saves their state and sets it back hands the numbers drawn in between
    out again, to whichever thread draws next. Two such computations in two
    threads (two ``predict`` calls) take turns here, so neither undoes the
    other's draws. Code that draws without rewinding is not held back; its
    draws made while the body runs may repeat.

    Example:
        >>> with generators_held():
        ...     state = torch.get_rng_state()
        ...     _ = torch.randn(2)
        ...     torch.set_rng_state(state)
    """
    with _GENERATORS_LOCK:
        yield


def set_rng_state(state: Tensor, device: torch.device) -> None:
    """Set the default generator of ``device`` to ``state`` (from :func:`rng_state`)."""
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _draw(
    variable: RandomVariable, moments: NormalMoments | None, samples: int
) -> Tensor:
    posterior = variable.layer_posterior
    if moments is not None:
        assert isinstance(posterior, MeanFieldNormalPosterior)
        return posterior.reparameterize(moments, samples)
    return posterior.draw(samples)


def _draw_noise(
    variable: RandomVariable, moments: NormalMoments, samples: int
) -> tuple[Tensor, Tensor]:
    """A mean-field Normal draw and its standard-normal noise ``eps``."""
    posterior = variable.layer_posterior
    assert isinstance(posterior, MeanFieldNormalPosterior)
    return posterior.reparameterize_with_noise(moments, samples)


def _replayed(state: Tensor, device: torch.device, draw: Callable[[], _T]) -> _T:
    """``draw()`` again from the random state ``state`` taken before it ran.

    The random state of the device is restored afterwards, so replaying changes
    no later draw.
    """
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        set_rng_state(state, device)
        return draw()


# Layers seen reading their weight moments twice in one forward pass (a layer
# object called twice): from then on they get weight draws (see LazyDraws.get).
_CALLED_REPEATEDLY: weakref.WeakSet[object] = weakref.WeakSet()


def called_repeatedly(module: object) -> bool:
    """Whether ``module`` was seen calling its weights twice in one pass."""
    return module in _CALLED_REPEATEDLY


def mark_called_repeatedly(module: object) -> None:
    """Give ``module`` weight draws from now on (it runs twice per pass)."""
    _CALLED_REPEATEDLY.add(module)


class RepeatedMomentsRead(RuntimeError):
    """A layer under ``estimator="auto"`` read its weight moments a second time.

    Raised by :meth:`LazyDraws.get` inside a PyTorch-style call, after marking
    the layer (:func:`mark_called_repeatedly`); a ``bnn.VIModule`` network
    then runs the forward pass again with the layer's weights drawn. A plain
    ``torch.nn`` root cannot run its own forward again: the user sees this
    error once, and the next call draws the weights.

    Args:
        module: the layer.
        reason: what needs the weight draw, instead of "called twice".
    """

    def __init__(self, module: object, reason: str | None = None) -> None:
        name = type(module).__name__
        if reason is None:
            reason = (
                f"{name} is called twice in one forward pass: its two calls must "
                "share one weight draw, which sampling outputs from the weight "
                "moments (local reparameterisation) cannot give"
            )
        super().__init__(
            f"{reason}. {name} draws its weights from now on: call the network "
            "again (a bnn.VIModule network runs the pass again by itself; this "
            "plain torch root cannot)"
        )
        self.module = module


class LazyDraws:
    """What each layer reads for its random variables in one call.

    Args:
        variables: the network's random variables, in site order.
        moments: ``(loc, scale)`` of each mean-field Normal variable, else ``None``.
        use_moments: per variable, whether its layer takes the moments (local
            reparameterisation, flipout) instead of a draw.
        samples: number of particles.
    """

    def __init__(
        self,
        variables: list[RandomVariable],
        moments: list[NormalMoments | None],
        use_moments: list[bool],
        samples: int,
    ) -> None:
        self.variables = variables
        self.moments = moments
        self.use_moments = use_moments
        self.samples = samples
        self.index = {(id(v.module), v.name): i for i, v in enumerate(variables)}
        count = len(variables)
        # Kept draws: small ones, variables whose random state cannot be
        # replayed, and every draw while a graph is captured (replaying would
        # not be recorded).
        self.values: list[Tensor | None] = [None] * count
        self.states: list[Tensor | None] = [None] * count
        self.devices: list[torch.device | None] = [None] * count
        self._fresh: list[Tensor | None] = [None] * count
        # Per mean-field Normal draw w = mu + sigma * eps: (sum_s eps, sum_s eps^2)
        # per weight, kept when asked (keeping_noise_sums) for the Monte-Carlo
        # KL, which then needs no replayed draw.
        self.noise_sums: list[tuple[Tensor, Tensor] | None] = [None] * count
        # The noise of half-precision draws whose random state could not be
        # kept (see noise()).
        self.noises: list[Tensor | None] = [None] * count
        # Variables whose moments were dropped (release_moments): computed
        # again from their posteriors when read.
        self._released = [False] * count
        self._drawn = 0
        self._read = False
        self._moments_read = [False] * count
        self._keep = is_capturing()
        # The moments' autograd nodes kept past the KL (keep_moment_nodes): a
        # derivative of the call's output finds its call by them.
        self._keep_nodes = False
        self._kept_nodes: list[Any] = []
        self._sums = _NOISE_SUMS.get()
        # Weights are drawn in the grad mode of the network's call, like
        # parameters, also when the layer reading first runs under no_grad
        # (a frozen encoder draws every weight before its own).
        self.grad_enabled = torch.is_grad_enabled()
        # In a call with gradients: the variables read with them, and those
        # read without (a layer run under no_grad inside the forward).
        self._read_with_grad: set[int] = set()
        self._read_without_grad: set[int] = set()

    @classmethod
    def fixed(
        cls, variables: list[RandomVariable], values: list[Tensor], samples: int
    ) -> LazyDraws:
        """Draws that are ``values``, one ``(samples, 1, *shape)`` per variable.

        Nothing is drawn: every layer reads its given value, whatever its
        estimator (a given weight has no moments to sample outputs from).

        Raises:
            ValueError: if a value does not have the shape ``(samples, 1,
                *shape)`` of its variable.
        """
        for variable, value in zip(variables, values, strict=True):
            expected = torch.Size((samples, 1, *variable.shape))
            if value.shape != expected:
                raise ValueError(
                    f"the fixed value of site {variable.site!r} has the shape "
                    f"{tuple(value.shape)}, not {tuple(expected)} ({samples} "
                    "particle(s) of the weight)"
                )
        count = len(variables)
        draws = cls(variables, [None] * count, [False] * count, samples)
        draws.values = list(values)
        draws._drawn = count
        return draws

    def get(self, key: tuple[int, str]) -> Tensor | NormalMoments | None:
        """The draw (or moments) of the variable ``key`` = (id(module), name).

        Moments go to a layer once per pass: a second read means the layer
        object runs twice, and its two outputs, sampled from the moments
        independently, would not share one weight draw. Under
        ``estimator="auto"`` that raises :class:`RepeatedMomentsRead` (the call
        then runs again with the layer's weights drawn); an explicit
        ``"local"``/``"flipout"`` raises a ``ValueError``.
        """
        index = self.index.get(key)
        if index is None:
            return None
        self._read = True
        if self.grad_enabled:
            reads = self._read_with_grad
            if not torch.is_grad_enabled():
                reads = self._read_without_grad
            reads.add(index)
        if self.use_moments[index]:
            if self._moments_read[index]:
                _refuse_repeated_moments(self.variables[index])
            self._moments_read[index] = True
            moments = self.moments[index]
            assert moments is not None
            return moments
        self._draw_through(index)
        fresh = self._fresh[index]
        if fresh is not None:  # handed out once; the layer holds it from now on
            self._fresh[index] = None
            return fresh
        return self.value(index)

    def moments_handed_out(self, key: tuple[int, str]) -> bool:
        """Whether the moments of ``key`` already went to its layer in this pass."""
        index = self.index.get(key)
        return index is not None and self._moments_read[index]

    def read_only_without_gradients(self) -> list[RandomVariable]:
        """The variables a call with gradients handed out only with them off.

        Their layers ran under ``torch.no_grad()`` inside the network's
        ``forward`` (a torch way of freezing a module): the data term gives
        their posteriors no gradient, while the KL term, taken with
        gradients, still does.
        """
        indices = self._read_without_grad - self._read_with_grad
        return [self.variables[i] for i in sorted(indices)]

    def any_read(self) -> bool:
        """Whether a layer has read one of its weights (or moments) in this call."""
        return self._read

    def takes_moments(self, key: tuple[int, str]) -> bool:
        """Whether the variable ``key`` reaches its layer as moments (no draw)."""
        index = self.index.get(key)
        return index is not None and self.use_moments[index]

    def moments_at(self, index: int) -> NormalMoments | None:
        """The moments of variable ``index`` (``None``: not a mean-field Normal).

        Moments dropped by :meth:`release_moments` are computed again from the
        posterior, in the grad mode of now (the values of the pass while its
        parameters are unchanged).
        """
        if self._released[index]:
            posterior = self.variables[index].layer_posterior
            assert isinstance(posterior, MeanFieldNormalPosterior)
            self.moments[index] = NormalMoments(*posterior.normal_params())
            self._released[index] = False
        return self.moments[index]

    def release_moments(self) -> None:
        """Drop the moments kept for the pass (the KL term took them).

        A scale ``softplus(rho)`` is a tensor the size of its weights; the
        record of a pass is kept as long as its output's autograd graph, so a
        loss tensor kept after ``backward()`` (``losses.append(loss)``) kept a
        copy of every posterior scale. Nothing is dropped while a graph is
        captured (its values are the graph's).
        """
        if self._keep or is_capturing():
            return
        for index, moments in enumerate(self.moments):
            if moments is not None:
                if self._keep_nodes:
                    self._kept_nodes.extend(_nodes_of(moments))
                self.moments[index] = None
                self._released[index] = True

    def keep_moment_nodes(self) -> None:
        """Keep the moments' autograd nodes past :meth:`release_moments`.

        A call whose input is differentiated is found from a derivative of
        its output by them (:meth:`call_nodes`), by every loss that takes
        one, also after a first loss took the call's KL. The nodes, not the
        moments: a scale's node (``softplus``'s) holds the raw parameter, no
        copy the size of the weights (a Bayesian head on a trainable
        encoder, whose every call is differentiated, kept every posterior
        scale of every kept loss).
        """
        self._keep_nodes = True

    def call_nodes(self) -> list[Any]:
        """The autograd nodes of the tensors this call computed for its weights.

        A mean-field Normal variable's ``(loc, scale)`` (held until
        :meth:`release_moments`, their nodes after it where kept) and the
        draws kept whole; a draw replayed from its random state is not held.
        """
        held = [t for moments in self.moments if moments is not None for t in moments]
        values = [value for value in self.values if value is not None]
        return [*_nodes_of(held), *_nodes_of(values), *self._kept_nodes]

    def finish(self) -> None:
        """Draw the variables no layer read, as the traced guide would."""
        self._draw_through(len(self.variables) - 1)
        self._fresh = [None] * len(self.variables)

    def value(self, index: int) -> Tensor | None:
        """The draw of variable ``index`` (replayed), or ``None`` if never drawn."""
        kept = self.values[index]
        if kept is not None:
            return kept
        state, device = self.states[index], self.devices[index]
        if state is None or device is None:
            return None
        variable, moments = self.variables[index], self.moments_at(index)
        return _replayed(state, device, lambda: _draw(variable, moments, self.samples))

    def noise(self, index: int) -> Tensor | None:
        """The standard-normal noise ``eps`` of the draw ``mu + sigma * eps``.

        Of variable ``index``, a mean-field Normal one, ``(samples, 1,
        *shape)`` in the weights' dtype: replayed from the draw's random state
        (which a half-precision draw always saves: only a Monte-Carlo KL
        reads its noise, and a forward pass does not know which KL will be
        taken), or kept with a half-precision draw whose state could not be
        saved (a graph being captured, a device whose generator state cannot
        be read). ``None`` if it was never drawn, or neither (a kept
        ``float32`` draw; its noise is recovered from it to float precision).
        """
        kept = self.noises[index]
        if kept is not None:
            return kept
        state, device = self.states[index], self.devices[index]
        moments = self.moments_at(index)
        if state is None or device is None or moments is None:
            return None
        variable = self.variables[index]
        return _replayed(
            state, device, lambda: _draw_noise(variable, moments, self.samples)[1]
        )

    def _draw_through(self, index: int) -> None:
        if self._drawn > index:
            return
        if torch.is_grad_enabled() != self.grad_enabled:
            with torch.set_grad_enabled(self.grad_enabled):
                self._draw_through(index)
            return
        while self._drawn <= index:
            i = self._drawn
            self._drawn += 1
            if self.use_moments[i]:
                continue
            variable, moments = self.variables[i], self.moments[i]
            state = None
            device = _device_of(variable, moments)
            replayed = _replay_saves_memory(variable, self.samples)
            # A half-precision draw rounds its noise away (a mean of 1 in
            # bfloat16 is 0.008 from the next number, sigma 1e-3): a
            # Monte-Carlo KL reads the noise itself, replayed from the random
            # state (kept with the draw only where that cannot be replayed).
            narrow = moments is not None and is_narrow(moments.loc.dtype)
            # A small draw of a call without gradients is kept and its state
            # saved too: follow_grad_mode replays it with gradients.
            if (
                device is not None
                and not self._keep
                and (replayed or narrow or not self.grad_enabled)
            ):
                state = rng_state(device)
            keep_noise = narrow and state is None
            eps = None
            if moments is not None and (self._sums or keep_noise):
                value, eps = _draw_noise(variable, moments, self.samples)
                if self._sums:
                    with torch.no_grad():
                        wide = full_precision(eps)
                        self.noise_sums[i] = (wide.sum(0), (wide * wide).sum(0))
            else:
                value = _draw(variable, moments, self.samples)
            if state is not None:
                self.states[i], self.devices[i] = state, value.device
            if state is not None and replayed:
                self._fresh[i] = value
            else:
                self.values[i] = value
            if keep_noise:
                self.noises[i] = eps

    def follow_grad_mode(self) -> None:
        """Give the moments and draws gradients: the call had none, now they are on.

        A call made under ``no_grad`` (the first forward pass of
        ``torch.utils.checkpoint(..., use_reentrant=True)``) left moments and
        draws without a graph; a KL taken from them with gradients on would
        miss every gradient but the one through a leaf parameter read as is
        (the posterior means), and training would never pull the scales
        towards the prior. The moments are computed again from the
        posteriors, and the draws replayed from their random states, in the
        grad mode of now: the same values, with gradients. Does nothing if the
        call ran with gradients, or if gradients are off now.

        Raises:
            ValueError: if a draw of a posterior with trainable parameters was
                kept without its random state (a device whose generator state
                cannot be saved, a graph being captured, weights given
                beforehand): its gradient cannot be had.
        """
        if self.grad_enabled or not torch.is_grad_enabled():
            return
        for i, variable in enumerate(self.variables):
            kept_only = self.values[i] is not None and self.states[i] is None
            if kept_only and any(
                p.requires_grad for p in variable.layer_posterior.parameters()
            ):
                raise kl_without_gradients(
                    f"the draw of site {variable.site!r} cannot be made again"
                )
        self.grad_enabled = True
        for i, variable in enumerate(self.variables):
            posterior = variable.layer_posterior
            if self.moments_at(i) is not None:
                assert isinstance(posterior, MeanFieldNormalPosterior)
                self.moments[i] = NormalMoments(*posterior.normal_params())
            if self.states[i] is not None:
                self.values[i] = None  # replayed, with gradients, from now on


def kl_without_gradients(reason: str) -> ValueError:
    """The error for a KL that cannot get the gradients its forward pass lacked.

    Args:
        reason: why they cannot be had now, e.g. "the guide was traced then".

    Example:
        >>> error = kl_without_gradients("the guide was traced then")
        >>> print(error)  # doctest: +ELLIPSIS
        the forward pass ran without gradients ... use_reentrant=False)), ...
    """
    return ValueError(
        "the forward pass ran without gradients (under torch.no_grad(), or in "
        "torch.utils.checkpoint(..., use_reentrant=True), which runs it so) but "
        f"they are on now, and {reason}: the KL term would miss part of its "
        "gradient. Run the forward pass with gradients (to checkpoint a network "
        "call: checkpoint(net, x, use_reentrant=False)), or compute the loss under "
        "torch.no_grad() too"
    )


# Draws of at most this many numbers are kept rather than replayed: saving the
# generator's state (5 KB on the CPU) costs more than keeping them.
_KEEP_DRAWS_UP_TO = 1 << 16


def _replay_saves_memory(variable: RandomVariable, samples: int) -> bool:
    """Whether ``variable``'s draws are big enough to replay instead of keep."""
    return samples * math.prod(variable.shape) > _KEEP_DRAWS_UP_TO


def _device_of(
    variable: RandomVariable, moments: NormalMoments | None
) -> torch.device | None:
    """The device ``variable`` is drawn on (``None`` without parameters)."""
    if moments is not None:
        return moments.loc.device
    param = next(iter(variable.layer_posterior.parameters()), None)
    return None if param is None else param.device


class RepeatedExplicitEstimator(ValueError):
    """A layer with an explicit ``"local"``/``"flipout"`` estimator runs twice."""


def _refuse_repeated_moments(variable: RandomVariable) -> None:
    module = variable.module
    estimator = getattr(module, "estimator", "auto")
    if estimator != "auto":
        raise RepeatedExplicitEstimator(
            f"{type(module).__name__} (site {variable.site!r}) is called twice in "
            f"one forward pass; estimator={estimator!r} samples each call's "
            "outputs independently, so the two calls would not share one weight "
            "draw. Use estimator='auto' or 'reparam' for a layer used twice"
        )
    mark_called_repeatedly(module)
    raise RepeatedMomentsRead(module)


_DRAWN: ContextVar[LazyDraws | None] = ContextVar(
    "pyrolite_drawn_weights", default=None
)


_NOISE_SUMS: ContextVar[bool] = ContextVar("pyrolite_noise_sums", default=False)


def keeping_noise_sums(keep: bool = True) -> AbstractContextManager[None]:
    """Calls in the body keep the noise sums of their Normal draws (see LazyDraws).

    Args:
        keep: whether they do (``False``: the body's calls keep none, as
            outside it). Only a Monte-Carlo KL (``kl="mc"``) reads them.
    """
    return set_while(_NOISE_SUMS, keep)


def current_draws() -> LazyDraws | None:
    """The draws of the running PyTorch-style call (``None`` elsewhere)."""
    return _DRAWN.get()


def using_draws(draws: LazyDraws) -> AbstractContextManager[None]:
    """Make ``draws`` what layers read their random variables from in the body."""
    return set_while(_DRAWN, draws)


# The weights of the one particle a per-particle ``forward`` runs for (the
# torch_blue containers of :mod:`pyrolite_bnn.vi`), by (id(module), name):
# looked up before the call's draws.
_PARTICLE_WEIGHTS: ContextVar[dict[tuple[int, str], Tensor] | None] = ContextVar(
    "pyrolite_particle_weights", default=None
)


def particle_weights() -> dict[tuple[int, str], Tensor] | None:
    """The weights of the particle running alone (``None`` outside such a run)."""
    return _PARTICLE_WEIGHTS.get()


def using_particle_weights(
    table: dict[tuple[int, str], Tensor],
) -> AbstractContextManager[None]:
    """Layers in the body read their weights from ``table`` first."""
    return set_while(_PARTICLE_WEIGHTS, table)


# Weights given for the calls of one network instead of the generated guide's
# draws: the network, and its values by site name, ``(S, 1, *shape)`` each.
_FIXED: ContextVar[tuple[nn.Module, dict[str, Tensor]] | None] = ContextVar(
    "pyrolite_fixed_weights", default=None
)


def fixed_weights(network: nn.Module) -> dict[str, Tensor] | None:
    """The weights given for calls of ``network`` (``None``: none given)."""
    fixed = _FIXED.get()
    if fixed is None or fixed[0] is not network:
        return None
    return fixed[1]


def using_fixed_weights(
    network: nn.Module, values: dict[str, Tensor]
) -> AbstractContextManager[None]:
    """Calls of ``network`` in the body run on ``values`` instead of drawing.

    Args:
        network: the network whose outermost calls take the values (a
            ``VIModule`` or a plain module holding Bayesian layers) with the
            generated guide.
        values: site name -> value ``(S, 1, *shape)`` for the calls'
            ``S`` particles (see :meth:`LazyDraws.fixed`).
    """
    return set_while(_FIXED, (network, values))


def _nodes_of(tensors: Iterable[Tensor]) -> list[Any]:
    """The autograd nodes of ``tensors`` that have one (not leaves)."""
    return [tensor.grad_fn for tensor in tensors if tensor.grad_fn is not None]
