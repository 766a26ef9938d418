r"""Pyro's Rényi bound over every particle of every guide run.

Pyro's :class:`pyro.infer.RenyiELBO` averages importance weights over its
``num_particles = K`` guide runs, and takes a plate that holds every sample site
for independent copies of the model. The particle plate of this library's
networks holds every site, scaled by ``1 / S``: with ``samples = S > 1`` Pyro's
class therefore computes the bound of ``alpha' = 1 - (1 - alpha) / S`` on each
particle's ``1 / S``-scaled log weight and adds them up, which approaches the
ELBO as ``S`` grows, not the Rényi bound of the network.

:class:`RenyiELBO` takes the ``K x S`` particles for what they are, ``K S``
independent draws of all the network's weights, each with the log weight

.. math::

    w_{ks} = \log p(y \mid x, w_{ks}) + \log p(w_{ks}) - \log q(w_{ks})

(the likelihood scaled by ``N / B`` for a mini-batch, as Pyro scales it), and
returns the negated Rényi bound (Li & Turner, 2016)

.. math::

    -\mathcal{L}_\alpha = -\frac{1}{1 - \alpha}
        \log \frac{1}{KS} \sum_{k=1}^{K} \sum_{s=1}^{S} e^{(1 - \alpha) w_{ks}},

whose gradient weighs each draw's by its normalised importance weight. With
``alpha = 0`` this is the importance-weighted bound (IWAE, Burda et al., 2016)
with ``K S`` draws, which tends to ``log p(y | x)`` as the draws grow; the
vectorised particles give the draws at the cost of one network pass per guide
run. With ``samples=1`` it equals Pyro's class.

Sites of the user's own model inside :func:`~pyrolite_bnn.per_particle`
count per particle, as the network's do. A model whose sample sites are not
all inside the particle plate or such a plate (a latent variable or an
observation of the user's own outside the network's particles) has no
per-particle weights: it goes to Pyro's class unchanged, from the same
random-number state. The log weights are summed in at least float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pyro.infer
import torch
from pyro.distributions.util import is_identically_zero
from pyro.poutine.trace_struct import Trace
from pyro.util import warn_if_nan
from torch import Tensor

from pyrolite_bnn._particles import PLATE_NAME
from pyrolite_bnn._validation import check_count, check_real
from pyrolite_bnn.distributions._precision import full_precision
from pyrolite_bnn.model_sites import particle_plate_name, watching_particle_plates

if TYPE_CHECKING:
    from pyro.poutine.runtime import Message

__all__ = ["RenyiELBO"]

Model = Callable[..., Any]


class RenyiELBO(pyro.infer.RenyiELBO):
    """Pyro's ``RenyiELBO`` with the ``K x S`` particles as ``K S`` draws.

    Drop-in for :class:`pyro.infer.RenyiELBO` (same arguments) in
    ``SVI(loss_fn.pyro_model(model), model.guide, optim, bnn.RenyiELBO(...))``
    and with any guide: see the module documentation for the bound.

    Example:
        >>> import pyro, torch
        >>> import pyrolite_bnn as bnn
        >>> from pyro.infer import SVI
        >>> net = bnn.VISequential(
        ...     bnn.VILinear(2, 8), torch.nn.Tanh(), bnn.VILinear(8, 1)
        ... )
        >>> x, y = torch.randn(16, 2), torch.randn(16)
        >>> loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.5), dataset_size=16)
        >>> elbo = bnn.RenyiELBO(alpha=0.0, num_particles=2)
        >>> optim = pyro.optim.Adam({"lr": 1e-2})
        >>> svi = SVI(loss_fn.pyro_model(net), net.guide, optim, elbo)
        >>> isinstance(svi.step(x, y, samples=8), float)
        True
    """

    def __init__(
        self,
        alpha: float = 0,
        num_particles: int = 2,
        max_plate_nesting: float = float("inf"),
        max_iarange_nesting: int | None = None,
        vectorize_particles: bool = False,
        strict_enumeration_warning: bool = True,
    ) -> None:
        order = check_real(alpha, "RenyiELBO alpha")
        if not math.isfinite(order):
            raise ValueError(f"RenyiELBO alpha must be finite, got {alpha!r}")
        super().__init__(  # type: ignore[no-untyped-call]
            alpha=order,
            num_particles=check_count(num_particles, "RenyiELBO num_particles"),
            max_plate_nesting=max_plate_nesting,
            max_iarange_nesting=max_iarange_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
        )

    @torch.no_grad()
    def loss(self, model: Model, guide: Model, *args: Any, **kwargs: Any) -> float:
        """The negated bound over all ``K x S`` draws (a float)."""
        model = watching_particle_plates(model)
        traces = self._get_traces(model, guide, args, kwargs)  # type: ignore[no-untyped-call]
        computed = self._bound(traces, with_surrogate=False)
        if isinstance(computed, _Drawn):
            with computed.handed_to(self):
                return float(super().loss(model, guide, *args, **kwargs))  # type: ignore[no-untyped-call]
        return computed[0]

    def loss_and_grads(
        self, model: Model, guide: Model, *args: Any, **kwargs: Any
    ) -> float:
        """The negated bound; its gradient is accumulated into the parameters."""
        model = watching_particle_plates(model)
        traces = self._get_traces(model, guide, args, kwargs)  # type: ignore[no-untyped-call]
        computed = self._bound(traces, with_surrogate=True)
        if isinstance(computed, _Drawn):
            with computed.handed_to(self):
                return float(super().loss_and_grads(model, guide, *args, **kwargs))  # type: ignore[no-untyped-call]
        value, surrogate = computed
        if surrogate is not None and surrogate.requires_grad:
            (-surrogate).backward()  # type: ignore[no-untyped-call]
        return value

    def _bound(
        self, traces: Iterator[tuple[Trace, Trace]], *, with_surrogate: bool
    ) -> tuple[float, Tensor | None] | _Drawn:
        """(negated bound, surrogate bound) over the draws, or Pyro's case.

        A model without per-particle weights is Pyro's class's: the traces
        drawn to find that out are handed to it (:class:`_Drawn`), so that it
        computes what it would have computed on its own.
        """
        if self.vectorize_particles and self.num_particles > 1:
            return _Drawn([], traces)  # the networks refuse it, with a message
        weights: list[Tensor] = []
        surrogates: list[Tensor] = []
        drawn: list[tuple[Trace, Trace]] = []
        for pair in traces:
            drawn.append(pair)
            particle = _particle_log_weights(*pair, self.alpha)
            if particle is None:
                return _Drawn(drawn, traces)
            weight, surrogate = particle
            weights.append(weight)
            surrogates.append(surrogate)
        if {w.shape for w in weights} != {weights[0].shape}:
            raise ValueError(
                "RenyiELBO: the guide runs drew different numbers of particles "
                f"({sorted(int(w.numel()) for w in weights)})"
            )
        log_weights = (1.0 - self.alpha) * torch.stack(weights).detach()
        draws = log_weights.numel()
        log_mean = torch.logsumexp(log_weights.reshape(-1), 0) - math.log(draws)
        value = -float(log_mean) / (1.0 - self.alpha)
        warn_if_nan(value, "loss")
        if not with_surrogate:
            return value, None
        normalised = (log_weights - log_mean).exp()
        surrogate = (normalised * torch.stack(surrogates)).sum() / draws
        return value, surrogate


class _Drawn:
    """Trace pairs drawn so far and the rest of their stream, for Pyro's class."""

    def __init__(
        self, drawn: list[tuple[Trace, Trace]], rest: Iterator[tuple[Trace, Trace]]
    ) -> None:
        self.drawn = drawn
        self.rest = rest

    @contextmanager
    def handed_to(self, elbo: RenyiELBO) -> Iterator[None]:
        """Make ``elbo``'s next ``_get_traces`` call yield these traces."""

        def get_traces(*_: Any) -> Iterator[tuple[Trace, Trace]]:
            yield from self.drawn
            yield from self.rest

        elbo._get_traces = get_traces  # type: ignore[method-assign]
        try:
            yield
        finally:
            del elbo._get_traces


def _particle_log_weights(
    model_trace: Trace, guide_trace: Trace, alpha: float
) -> tuple[Tensor, Tensor] | None:
    """Per particle: log weight ``w_s`` and its surrogate (``None``: no particles).

    Every sample site must be inside the particle plate; its ``log_prob`` is
    scaled by ``1 / S`` there (and by ``N / B`` for a subsampled observation):
    the weight takes it ``S`` times, summed over the site's other dimensions.
    """
    weight: Tensor | float = 0.0
    surrogate: Tensor | float = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            per_particle = _per_particle(site)
            if per_particle is None:
                return None
            if isinstance(weight, Tensor) and weight.shape != per_particle.shape:
                raise ValueError(
                    f"RenyiELBO: site {site['name']!r} is in a plate of "
                    f"{per_particle.numel()} particles, earlier sites in one of "
                    f"{weight.numel()}: a bnn.per_particle plate takes the "
                    "network's particle count (per_particle(out) of its output)"
                )
            weight = weight + sign * per_particle.detach()
            if sign > 0:
                surrogate = surrogate + per_particle
                continue
            _, score_function_term, entropy_term = site["score_parts"]
            if not is_identically_zero(entropy_term):
                surrogate = surrogate - per_particle
                if not is_identically_zero(score_function_term):
                    # As Pyro's class: pyro-ppl/pyro issue 1222.
                    raise NotImplementedError(
                        "RenyiELBO does not support guide sites that are neither "
                        "fully reparameterised nor pure score-function sites"
                    )
            elif not is_identically_zero(score_function_term):
                surrogate = surrogate + (alpha / (1.0 - alpha)) * per_particle
    if not isinstance(weight, Tensor) or not isinstance(surrogate, Tensor):
        return None  # no sample site at all
    return weight, surrogate


def _per_particle(site: Message[..., Any]) -> Tensor | None:
    """The site's unscaled-by-particles ``log_prob`` summed per particle.

    The particles are the network's plate, or a :func:`~pyrolite_bnn.per_particle`
    plate of the user's model. Summed in at least float32: a half-precision
    network's log weights (tens of thousands of nats) overflow ``float16``
    and are rounded to hundreds of nats in ``bfloat16``.
    """
    plate = particle_plate_name(site) or PLATE_NAME
    frame = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
    if frame is None or frame.dim is None:
        return None
    log_prob: Tensor = full_precision(site["log_prob"])
    dim = frame.dim
    if log_prob.dim() < -dim:
        log_prob = log_prob.reshape((1,) * (-dim - log_prob.dim()) + log_prob.shape)
    log_prob = log_prob.movedim(dim, 0)
    log_prob = log_prob.expand(frame.size, *log_prob.shape[1:])
    total: Tensor = log_prob.reshape(frame.size, -1).sum(1) * frame.size
    return total
