"""Guides: the variational distribution of a network's weights, as a Pyro guide.

:class:`ParticleGuide` is what :attr:`VIModule.guide <pyrolite_bnn.VIModule.guide>`
returns. It opens the same particle plate as the model and then either

* samples every declared random variable from its layer's posterior module
  (the *generated* guide: one ``pyro.sample`` per weight tensor, shapes taken
  from the layers' declarations), or
* runs a user-supplied Pyro guide for one particle (an autoguide built on
  :meth:`VIModule.prior_model <pyrolite_bnn.VIModule.prior_model>`, or a
  hand-written function); the plate broadcasts it to all particles.

It is a Pyro guide in every sense: ``pyro.infer.SVI``, ``Predictive`` and the
ELBOs accept it unchanged, with the same ``(*args, samples=None)`` arguments as
the Pyro model from :meth:`KullbackLeiblerLoss.pyro_model
<pyrolite_bnn.KullbackLeiblerLoss.pyro_model>`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuide
from torch import Tensor, nn

from pyrolite_bnn import _particles
from pyrolite_bnn._network import collect_variables
from pyrolite_bnn._pyro_module import LocalPyroModule, local_params
from pyrolite_bnn.module import DEFAULT_SAMPLES

if TYPE_CHECKING:
    from pyrolite_bnn.variables import RandomVariable

__all__ = ["ParticleGuide"]


class ParticleGuide(LocalPyroModule):
    """The guide of a :class:`~pyrolite_bnn.VIModule`, vectorised over particles.

    Args:
        network: the network whose weights it covers: a ``VIModule``, or any
            torch module holding Bayesian layers (``nn.Sequential(...)``).
        inner: ``None`` for the generated guide from the layers' posterior
            modules, or any Pyro guide for the weights of one particle.

    Example:
        >>> import torch, pyro
        >>> import pyrolite_bnn as bnn
        >>> net = bnn.VILinear(3, 2)
        >>> trace = pyro.poutine.trace(net.guide).get_trace(samples=4)
        >>> trace.nodes["weight"]["value"].shape
        torch.Size([4, 1, 2, 3])
        >>> sorted(net.guide.median())
        ['bias', 'weight']
    """

    def __init__(
        self, network: nn.Module, inner: Callable[..., Any] | None = None
    ) -> None:
        super().__init__()
        # A tuple hides the network from nn.Module registration (no cycle).
        self._network = (network,)
        self.inner = inner

    @property
    def network(self) -> nn.Module:
        """The network this guide belongs to."""
        return self._network[0]

    def variables(self) -> list[RandomVariable]:
        """The random variables of the network, in site order."""
        return collect_variables(self.network)

    def setup(self) -> None:
        """Create an autoguide's parameters now, outside the particle plate.

        Autoguides create parameters lazily on their first call from the plates
        they see; run once without the particle plate they learn one
        distribution per weight tensor, which the plate then broadcasts.
        """
        inner = self.inner
        if isinstance(inner, AutoGuide) and inner.prototype_trace is None:
            try:
                with local_params(), poutine.block(), torch.no_grad():
                    inner()
            except TypeError as error:
                raise TypeError(
                    f"could not set up {type(inner).__name__}: build autoguides on "
                    "the network's weight model, e.g. "
                    "AutoNormal(model.prior_model, init_loc_fn=model.init_loc_fn)"
                ) from error
            sites = {v.site for v in self.variables()}
            prototype = inner.prototype_trace
            assert prototype is not None
            covered = {
                name
                for name, site in prototype.nodes.items()
                if site["type"] == "sample" and not site["is_observed"]
            }
            if covered != sites:
                raise ValueError(
                    f"{type(inner).__name__} covers sites {sorted(covered)} but the "
                    f"network declares {sorted(sites)}; build it on model.prior_model"
                )

    def forward(self, *args: Any, samples: int | None = None, **kwargs: Any) -> Any:
        """Draw all weights for ``samples`` particles (default ``network.samples``).

        Positional and keyword arguments (the data, when called by Pyro's ELBOs)
        are accepted and ignored.
        """
        network = self.network
        default = getattr(network, "samples", DEFAULT_SAMPLES)
        count = _particles.check_samples(default if samples is None else samples)
        first = _particles.first_tensor(args, kwargs)
        device = first.device if first is not None else _parameter_device(network)
        with _particles.particle_plate(count, device):
            if self.inner is not None:
                return self.inner()
            return {v.site: v.posterior(v.site) for v in self.variables()}

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Posterior median (the mean, for symmetric families) of every weight.

        Values have the shape of one draw (no particle dimension).
        """
        if self.inner is not None:
            median = getattr(self.inner, "median", None)
            if median is None:
                raise NotImplementedError(
                    f"guide {type(self.inner).__name__} has no median() method"
                )
            return dict(median())
        return {v.site: v.posterior.mean().detach() for v in self.variables()}

    def quantiles(self, quantiles: Sequence[float], *args: Any, **kwargs: Any) -> Any:
        """Quantiles of each weight, for guides that support them (Pyro autoguides)."""
        method = getattr(self.inner, "quantiles", None)
        if method is None:
            raise NotImplementedError("this guide does not provide quantiles()")
        return method(quantiles)


def _parameter_device(network: nn.Module) -> torch.device | None:
    for parameter in network.parameters():
        return parameter.device
    return None
