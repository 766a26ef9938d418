r"""Pyro's ELBOs at the speed of the PyTorch-style loss.

``SVI(loss_fn.pyro_model(model), model.guide, optim, bnn.Trace_ELBO())`` is
Pyro's own recipe; :class:`Trace_ELBO` and :class:`TraceMeanField_ELBO` are
drop-in subclasses of Pyro's classes that compute the same value without
tracing the model and guide, where they can: for the Pyro model of
:meth:`KullbackLeiblerLoss.pyro_model
<pyrolite_bnn.KullbackLeiblerLoss.pyro_model>` of a
:class:`~pyrolite_bnn.VIModule` with its generated guide (``model.guide``), the
network runs PyTorch-style and the loss is ``loss_fn``'s
(:meth:`~pyrolite_bnn.KullbackLeiblerLoss.terms` and
:meth:`~pyrolite_bnn.KullbackLeiblerLoss.combine`) times ``dataset_size``:

.. math::

    -\mathrm{ELBO} = \mathrm{KL}\bigl(q(w) \,\|\, p(w)\bigr)
        - \frac{N}{B}\,\frac{1}{S} \sum_{s=1}^{S} \sum_{i=1}^{B}
          \log p(y_i \mid x_i, w_s),

with the Monte-Carlo KL ``log q(w_s) - log p(w_s)`` averaged over the
particles for ``Trace_ELBO`` and the closed-form KL for
``TraceMeanField_ELBO`` (where it exists), as Pyro's classes compute it. The
weights are drawn in the same order from the same generator, so under the same
seed the value is Pyro's (with ``estimator="reparam"``, which draws every
weight; the default estimators draw pre-activations instead, with the same
expected value and gradient), for ``float32`` and ``float64`` networks. A
network stored in ``bfloat16`` or ``float16`` gets the loss's ``float32`` KL
of its stored parameters and drawn noise instead: Pyro's classes evaluate
``log q(w)`` at the draws rounded to the stored dtype, a biased estimate (0.17
nats too many per weight for means of size 1 and standard deviations of 1e-3
in ``bfloat16``). Each parameter is reported with a ``param``
statement, so that ``SVI.step`` hands it to the optimizer as Pyro's path does.

Targets are checked as Pyro's classes check them: where the library's
validation (:func:`~pyrolite_bnn.enable_validation`) or Pyro's
(``pyro.enable_validation``, on by default) is on, a target outside the
likelihood's support (NaN, a label out of range, a Bernoulli target other
than 0 or 1, a negative or fractional count) is refused with the library's
message, where Pyro's path refuses it at the ``"obs"`` site; with both off
neither path checks. The PyTorch-style loss follows the library's switch
alone.

Anything else (another guide, a plain module as the network, a tempered
``loss_fn``, which the Pyro model then refuses, ``num_particles > 1``, other
arguments) goes to the parent class unchanged. So does an input that a layer
with an explicit ``estimator="local"`` refuses in a PyTorch-style call
(several output positions per example, as a ``(B, L, in)`` input), or such a
layer called twice in one forward pass: Pyro's path draws the weights,
whatever the estimator. The random-number state is rewound
first, so under the same seed the value is Pyro's. Random plain modules
(``nn.Dropout``) draw in another order than in Pyro's run, so with them the
two agree in expectation, not draw for draw.

On the parent's path the model runs under
:class:`~pyrolite_bnn.model_sites.PlainParticlePlates`: a user's model that
observes a network's output inside a plain ``pyro.plate`` over its particles
(the data counted ``S`` times) gets a warning naming
:func:`~pyrolite_bnn.per_particle`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pyro.distributions as pyro_dist
import pyro.infer
import torch
from pyro.infer.util import torch_item
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import am_i_wrapped, effectful
from pyro.poutine.trace_messenger import TraceMessenger
from torch import Tensor, nn
from torch.distributions import constraints, kl_divergence

from pyrolite_bnn._context_values import in_own_context
from pyrolite_bnn._draws import (
    RepeatedExplicitEstimator,
    keeping_noise_sums,
    rng_state,
    set_rng_state,
)
from pyrolite_bnn._forward import network_args, prepare, pytorch_run
from pyrolite_bnn._pyro_module import linked_parameters, linked_value, local_params
from pyrolite_bnn._validation import check_count, checks_under_pyro_validation
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.guides import check_pyro_call
from pyrolite_bnn.layers._options import EstimatorLayer
from pyrolite_bnn.loss import PyroModel
from pyrolite_bnn.model_sites import watching_particle_plates
from pyrolite_bnn.module import VIModule
from pyrolite_bnn.record import KLMode

if TYPE_CHECKING:
    from pyro.poutine.runtime import Message

__all__ = ["TraceMeanField_ELBO", "Trace_ELBO"]

_UNCONSTRAINED = "_unconstrained"


class _LocalRefused(Exception):
    """A layer with ``estimator="local"`` met an input it refuses (fast path only)."""


def _refuse_positions(layer: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook: the condition under which ``estimator="local"`` refuses.

    ``EstimatorLayer._moment_estimator`` raises a ``ValueError`` for an input
    with several output positions per example; this raises
    :class:`_LocalRefused` just before, so that only that refusal sends the
    loss to Pyro's path.
    """
    assert isinstance(layer, EstimatorLayer)
    if args and isinstance(args[0], Tensor) and layer.output_positions(args[0]) > 1:
        raise _LocalRefused


@contextmanager
def _local_refusals(network: nn.Module) -> Iterator[None]:
    """Watch the ``estimator="local"`` layers of ``network`` in the body."""
    handles = [
        layer.register_forward_pre_hook(_refuse_positions)
        for layer in network.modules()
        if isinstance(layer, EstimatorLayer) and layer.estimator == "local"
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _handled() -> bool:
    """Whether a Pyro handler that may change sample sites surrounds the ELBO.

    ``SVI.step`` runs the loss inside a parameter-only trace, which records
    parameters and leaves sample sites alone: the fast path still applies.
    Pyro has no public view of its handler stack; without one the answer
    errs towards Pyro's own path.
    """
    if not am_i_wrapped():
        return False
    stack = getattr(pyro.poutine.runtime, "_PYRO_STACK", None)
    if stack is None:
        return True
    return not all(
        isinstance(handler, TraceMessenger) and handler.param_only for handler in stack
    )


def _fast_loss(
    model: object,
    guide: object,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    kl: KLMode,
) -> Tensor | None:
    """:func:`_fast_loss_here` in its own context (nothing it sets outlives it)."""
    return in_own_context(_fast_loss_here, model, guide, args, kwargs, kl)


def _fast_loss_here(
    model: object,
    guide: object,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    kl: KLMode,
) -> Tensor | None:
    """The negative ELBO through the PyTorch-style path.

    ``None`` where the fast path does not apply to these arguments.
    """
    if not isinstance(model, PyroModel) or not isinstance(model.network, VIModule):
        return None
    if _handled():  # a handler around the ELBO (scale, condition...): Pyro's
        return None
    network, loss_fn = model.network, model.loss_fn
    if guide is not network.guide or network.guide.inner is not None:
        return None
    if loss_fn.heat != 1.0 or set(kwargs) - {"y", "samples"}:
        return None
    # A positional samples reaches the model alone (net.guide takes it as a
    # keyword): Pyro's path sees the mismatch and says so.
    bound = dict(zip(("x", "y"), args, strict=False))
    if len(args) > 2 or bound.keys() & kwargs.keys():
        return None
    bound.update(kwargs)
    inputs = network_args(bound.get("x"))
    y, samples = bound.get("y"), bound.get("samples")
    tensors = bool(inputs) and all(isinstance(v, Tensor) for v in inputs)
    if not tensors or not isinstance(y, Tensor):
        return None
    check_pyro_call()  # the same refusals as the model's own run
    count = network.samples if samples is None else samples
    state, device = prepare(network, inputs, {}, count)
    rewind_device = inputs[0].device
    with _local_refusals(network):
        # Draws made before a refusal are undone: Pyro's path then draws what
        # it would have drawn without the attempt.
        rewind = rng_state(rewind_device)
        try:
            # Only the Monte-Carlo KL reads the draws' noise sums (kl="auto"
            # takes every mean-field Normal site against a Normal prior in
            # closed form, and estimates the others from the draws).
            with local_params(), keeping_noise_sums(kl == "mc"):
                output = pytorch_run(network, state, device, inputs, {})
        except (_LocalRefused, RepeatedExplicitEstimator):
            # An explicit local/flipout estimator refuses the input, or runs
            # twice: inside Pyro inference the weights are drawn instead.
            if rewind is not None:
                set_rng_state(rewind, rewind_device)
            return None
    # Targets are checked under Pyro's validation too, as Pyro's path checks
    # them at the "obs" site (the distribution's support), with the library's
    # checks and messages; the PyTorch-style loss follows the library's switch.
    with checks_under_pyro_validation():
        log_lik, kl_term, batch = loss_fn.terms_and_batch(output, y, kl)
    loss = loss_fn.combine(log_lik, kl_term, output.shape[0], batch)
    scale = loss_fn.dataset_size if loss_fn.reduction == "mean" else 1
    _report_parameters(model)
    return loss * scale


def _report_parameters(model: PyroModel) -> None:
    """A ``param`` statement for every parameter the traced path reports.

    ``SVI.step`` collects the parameters to optimise from the ``param`` sites
    of its ``trace(param_only=True)``; each value carries
    ``unconstrained()``, a weak reference to the parameter, as Pyro's own
    statements for module-local parameters do.
    """
    named = [
        *model.network.named_parameters(),
        *(
            (f"likelihood.{name}", param)
            for name, param in model.loss_fn.predictive.named_parameters()
        ),
    ]
    with linked_parameters(model.network):  # Pyro's optimisers can name them
        for name, param in named:
            site = name.removesuffix(_UNCONSTRAINED)
            alias = linked_value(param, param)
            effectful(type="param")(lambda *_, alias=alias, **__: alias)(
                site, alias, constraint=constraints.real, name=site
            )


class Trace_ELBO(pyro.infer.Trace_ELBO):
    """Pyro's ``Trace_ELBO``, through the PyTorch-style path where it can.

    See the module documentation for when the fast path applies; the value
    and gradients are Pyro's either way.

    Example:
        >>> import torch, pyro
        >>> import pyrolite_bnn as bnn
        >>> net = bnn.VILinear(3, 2, estimator="reparam")
        >>> loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=20)
        >>> svi = pyro.infer.SVI(loss_fn.pyro_model(net), net.guide,
        ...                      pyro.optim.Adam({"lr": 1e-2}), bnn.Trace_ELBO())
        >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        >>> isinstance(svi.step(x, y, samples=4), float)
        True
    """

    kl_mode: KLMode = "mc"

    def __init__(self, num_particles: int = 1, *args: Any, **kwargs: Any) -> None:
        """Pyro's arguments; ``num_particles`` must be an integer ``>= 1``.

        Pyro's class would average over no particles and report a loss of 0.
        """
        count = check_count(num_particles, "num_particles")
        super().__init__(count, *args, **kwargs)  # type: ignore[no-untyped-call]

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """The negative ELBO (a number), without gradients."""
        if self.num_particles == 1 and not self.vectorize_particles:
            with torch.no_grad():
                value = _fast_loss(model, guide, args, kwargs, self.kl_mode)
            if value is not None:
                return float(torch_item(value))
        model, guide = self._parents_pair(model, guide)
        return float(super().loss(model, guide, *args, **kwargs))  # type: ignore[no-untyped-call]

    def differentiable_loss(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> Any:
        """The negative ELBO as a tensor that can be differentiated."""
        if self.num_particles == 1 and not self.vectorize_particles:
            value = _fast_loss(model, guide, args, kwargs, self.kl_mode)
            if value is not None:
                return value
        model, guide = self._parents_pair(model, guide)
        return super().differentiable_loss(model, guide, *args, **kwargs)  # type: ignore[no-untyped-call]

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Any:
        """The negative ELBO; its gradients are accumulated in the parameters."""
        if self.num_particles == 1 and not self.vectorize_particles:
            value = _fast_loss(model, guide, args, kwargs, self.kl_mode)
            if value is not None:
                torch.autograd.backward(value, retain_graph=self.retain_graph)
                return torch_item(value.detach())
        model, guide = self._parents_pair(model, guide)
        return super().loss_and_grads(model, guide, *args, **kwargs)  # type: ignore[no-untyped-call]

    def _parents_pair(self, model: Any, guide: Any) -> tuple[Any, Any]:
        """Model and guide as the parent class runs them (the model watched)."""
        return watching_particle_plates(model), guide


class TraceMeanField_ELBO(Trace_ELBO, pyro.infer.TraceMeanField_ELBO):
    """Pyro's ``TraceMeanField_ELBO`` (closed-form KL), through the fast path.

    On Pyro's path it warns for a guide whose sites are ``Delta`` draws
    carrying a non-zero ``log_density`` (``AutoStructured``) where Pyro takes
    their KL in closed form: that KL drops the density, so the value and
    gradients are not the ELBO's (``bnn.Trace_ELBO`` counts it; so does
    Pyro's Monte-Carlo fallback, for a pair without a closed form).

    Example:
        >>> import pyrolite_bnn as bnn
        >>> import pyro
        >>> isinstance(bnn.TraceMeanField_ELBO(), pyro.infer.TraceMeanField_ELBO)
        True
    """

    kl_mode: KLMode = "auto"  # closed form where there is one, as Pyro

    def _parents_pair(self, model: Any, guide: Any) -> tuple[Any, Any]:
        """The parent's pair, watched for Delta sites whose density is dropped."""
        model, guide = super()._parents_pair(model, guide)
        return _warning_of_dropped_densities(model, guide)


class _DeltaDensities(Messenger):
    """The latent sites of a guide's run whose ``Delta`` has a log-density.

    Guides that map auxiliary latents to the model's sites (``AutoStructured``,
    ``AutoContinuous`` guides of constrained sites) put the log-Jacobian of
    the map there. ``sites`` maps each such site to its distribution, the
    ``Delta`` itself or one wrapping it (``Independent``, masked, expanded).
    """

    def __init__(self) -> None:
        super().__init__()
        self.sites: dict[str, Any] = {}

    def _pyro_post_sample(self, msg: Message[..., Any]) -> None:
        if msg["is_observed"]:
            return
        fn = delta = msg["fn"]
        while not isinstance(delta, pyro_dist.Delta) and hasattr(delta, "base_dist"):
            delta = delta.base_dist  # Independent, MaskedDistribution, expanded
        if isinstance(delta, pyro_dist.Delta) and bool(
            torch.as_tensor(delta.log_density).ne(0).any()
        ):
            self.sites[str(msg["name"])] = fn


class _ClosedFormKL(Messenger):
    """Of a guide's sites (name to distribution), those whose KL has a closed form.

    Pyro's ``TraceMeanField_ELBO`` takes ``kl_divergence(guide's, model's)``
    where one is registered and falls back to Monte Carlo (the guide's
    ``log_prob``, its ``Delta``'s density counted) where none is: the
    registered KLs of a ``Delta`` (``Delta`` against any distribution, an
    ``Independent`` one against an ``Independent`` one or a multivariate
    Normal, a masked one against a masked one) drop its density, while a
    masked one against an unmasked model site, or an expanded one, has none.
    ``sites`` lists the guide's sites whose KL has a closed form.
    """

    def __init__(self, guide_sites: dict[str, Any]) -> None:
        super().__init__()
        self.guide_sites = guide_sites
        self.sites: list[str] = []

    def _pyro_post_sample(self, msg: Message[..., Any]) -> None:
        name = str(msg["name"])
        if msg["is_observed"] or name not in self.guide_sites:
            return
        model_fn: Any = msg["fn"]  # as Pyro passes it, whatever its class
        try:
            kl_divergence(self.guide_sites[name], model_fn)
        except NotImplementedError:
            return
        self.sites.append(name)


def _warning_of_dropped_densities(model: Any, guide: Any) -> tuple[Any, Any]:
    """``model`` and ``guide``, warning where Pyro's mean-field ELBO drops a density.

    ``pyro.infer.TraceMeanField_ELBO`` takes ``KL(Delta(v) || p)`` as
    ``-log p(v)`` (``pyro.distributions.kl``), without the Delta's
    ``log_density``: for a guide whose sites carry one, value and gradients
    miss the log-Jacobian of its map, and training optimises another
    objective. ``Trace_ELBO`` (and the library's loss, whose ``kl="auto"``
    takes a Delta site by Monte Carlo) count it, and so does
    ``TraceMeanField_ELBO`` where the pair has no closed-form KL
    (:class:`_ClosedFormKL`). Pyro runs the guide, then the model replayed
    against its trace: the guide's run finds its Delta sites with a density,
    the model's run those of them whose KL is taken in closed form.
    """
    found: dict[str, Any] = {}

    def watched_guide(*args: Any, **kwargs: Any) -> Any:
        found.clear()
        with _DeltaDensities() as densities:
            result = guide(*args, **kwargs)
        found.update(densities.sites)
        return result

    def watched_model(*args: Any, **kwargs: Any) -> Any:
        with _ClosedFormKL(dict(found)) as closed_form:
            result = model(*args, **kwargs)
        dropped = [site for site in found if site in closed_form.sites]  # guide's order
        if dropped:
            warn_at_caller(
                f"TraceMeanField_ELBO: the guide's site {dropped[0]!r} "
                "is a Delta with a non-zero log_density (the log-Jacobian of a "
                "guide that maps latents in another space to this site: "
                "AutoStructured's auxiliary latents, an autoguide's unconstrained "
                "value of a constrained site such as a noise scale), which Pyro's "
                "closed-form KL of a Delta drops "
                "(pyro.distributions.kl._kl_delta): this loss and its gradients "
                "are not the ELBO's, and training optimises another objective. "
                "Use bnn.Trace_ELBO, which counts it (as the PyTorch-style "
                "loss's kl='auto' does for a network's weights)",
            )
        return result

    return watched_model, watched_guide
