"""The weights of a network's calls given beforehand, instead of drawn per call.

:func:`~pyrolite_bnn.predict` runs every chunk of its inputs on one draw of
the weights (or on the posterior medians), and
:func:`~pyrolite_bnn.draw_networks` keeps one draw for any number of calls:
both hand the layers these values instead of letting each call draw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyro import poutine
from torch import Tensor, nn

from pyrolite_bnn._draws import using_fixed_weights
from pyrolite_bnn._forward import call_network
from pyrolite_bnn.distributions._held_tensors import storage_address, storage_names
from pyrolite_bnn.guides import ParticleGuide

__all__ = ["FixedWeights"]


@dataclass
class FixedWeights:
    """The weights of every call of a prediction, by site name.

    With the generated guide, the values are ``(S, 1, *shape)`` and the
    network runs on them on the PyTorch-style path
    (:func:`~pyrolite_bnn._draws.using_fixed_weights`): no Pyro handler is
    pushed, so other threads' network calls run beside it unaffected. An
    assigned guide is Pyro code: its values condition the network's sample
    sites under a trace, on Pyro's handler stack, which is one for the process.

    Attributes:
        values: site name -> value.
        guide: the guide they come from.
    """

    values: dict[str, Tensor]
    guide: ParticleGuide

    @classmethod
    def medians(cls, guide: ParticleGuide) -> FixedWeights:
        """The posterior median of every weight, for one particle.

        The generated guide's are read from the layers' posterior modules
        (:meth:`~pyrolite_bnn.distributions.variational.Posterior.median`: a
        mean-field Normal's ``loc`` as it is now, not a copy), so a call costs
        no rebuilt distributions and follows every change of the parameters.
        """
        if guide.inner is None:
            values = {}
            for variable in guide.variables():
                median = variable.layer_posterior.median()
                values[variable.site] = median.expand(1, 1, *median.shape)
            return cls(values, guide)
        return cls(guide.median(), guide)

    @classmethod
    def drawn(cls, guide: ParticleGuide, samples: int) -> FixedWeights:
        """One draw of every weight for ``samples`` particles, from the guide.

        The generated guide draws from the layers' posterior modules in site
        order, without tracing: the values, from the same random numbers, of
        the traced guide's draws. The values are a snapshot: none shares
        memory with a parameter or buffer of the guide (a point mass's
        expanded parameter is copied once and expanded again).
        """
        variables = guide.variables()
        if guide.inner is None:
            values = {v.site: v.layer_posterior.draw(samples) for v in variables}
        else:
            trace = poutine.trace(guide).get_trace(samples=samples)
            values = {}
            for variable in variables:
                value = trace.nodes[variable.site]["value"]
                assert isinstance(value, Tensor)
                values[variable.site] = value
        # A point mass "draws" its parameter expanded: a view, which training
        # would change (or, after an in-place step, make unusable).
        held = set(
            storage_names(
                (name, t)
                for source in (guide, *(v.layer_posterior for v in variables))
                for name, t in (*source.named_parameters(), *source.named_buffers())
            )
        )
        return cls({site: _own(v, held) for site, v in values.items()}, guide)

    def run(
        self,
        model: nn.Module,
        x: tuple[Any, ...],
        samples: int,
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        """``model(*x, **kwargs)`` for ``samples`` particles on these weights."""
        if self.guide.inner is None:
            with using_fixed_weights(model, self.values):
                return call_network(model, x, samples, kwargs)

        def network() -> Any:
            return call_network(model, x, samples, kwargs)

        conditioned: Any = poutine.condition(network, data=self.values)
        with poutine.trace():  # a handler makes the network a plain Pyro model
            return conditioned()


def _own(value: Tensor, held: set[int]) -> Tensor:
    """``value``, or a copy of it if its memory is one of the ``held`` tensors'.

    An expanded tensor is copied once and expanded again: the copy takes the
    memory of the tensor it was expanded from, not of all particles.
    """
    address = storage_address(value)
    if address is None or address not in held:
        return value
    distinct = tuple(
        slice(0, 1) if stride == 0 else slice(None) for stride in value.stride()
    )
    return value[distinct].clone().expand(value.shape)
