"""Declaration of the random variables (Bayesian weights) of a layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pyrolite_bnn.distributions.variational import Posterior
    from pyrolite_bnn.module import VIModule

__all__ = ["RandomVariable"]


@dataclass(frozen=True)
class RandomVariable:
    """A weight tensor that a layer declares as random.

    Attributes:
        site: Pyro sample-site name, the module path plus the attribute name
            (``"body.0.weight"``); checkpoints and guides rely on it.
        name: attribute name in its layer (``"weight"``).
        shape: shape of one draw of the tensor.
        module: the layer that declared it.
        posterior: the layer's posterior module of the variable.
        shared: whether the layer sits at more than one position of the
            network (weight sharing): every position reads the same draw, so
            the weights must be drawn, not output noise sampled per position.
    """

    site: str
    name: str
    shape: torch.Size
    module: VIModule
    posterior: Posterior
    shared: bool = False
