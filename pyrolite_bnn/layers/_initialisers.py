"""How the layers draw their posterior means: ``torch.nn``'s initialisations.

A layer hands each posterior one of these at construction (its
:attr:`~pyrolite_bnn.distributions.variational.Posterior.loc_init`). The
layer's own ``reset_parameters`` draws every mean with them, in the order of
torch's constructor (seeded, the numbers of the seeded torch layer), and a
posterior reset on its own draws its mean with its own: FSDP's deferred
initialisation calls ``reset_parameters()`` on each module that holds tensors,
the posteriors alone, never their layer. Each is a small picklable object
holding numbers only (no module: a layer copied by ``copy.deepcopy`` or saved
with ``torch.save`` keeps them); each fills a tensor in place and returns it,
as ``torch.nn.init``'s functions do. Where torch's function takes the tensor
alone (``init.xavier_uniform_``, ``init.xavier_normal_``, ``init.zeros_``),
the layers hand it over as it is (it pickles by reference).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor
from torch.nn import init

__all__ = ["FanInUniform", "KaimingUniform", "ZerosAfter"]


@dataclass(frozen=True)
class KaimingUniform:
    """``torch.nn.Linear``'s weight: Kaiming-uniform with ``a = sqrt(5)``."""

    def __call__(self, tensor: Tensor) -> Tensor:
        """Fill ``tensor`` in place and return it."""
        return init.kaiming_uniform_(tensor, a=math.sqrt(5))


@dataclass(frozen=True)
class FanInUniform:
    """Uniform in ``±1/sqrt(fan_in)`` (0 for no inputs): torch's biases and RNNs.

    Args:
        fan_in: the number of inputs of a unit (for a recurrent layer, its
            ``hidden_size``).
    """

    fan_in: int

    def __call__(self, tensor: Tensor) -> Tensor:
        """Fill ``tensor`` in place and return it."""
        bound = 1 / math.sqrt(self.fan_in) if self.fan_in > 0 else 0.0
        return init.uniform_(tensor, -bound, bound)


@dataclass(frozen=True)
class ZerosAfter:
    """Zeros, after drawing ``drawn``: a bias torch draws and then sets to 0.

    ``torch.nn.MultiheadAttention``'s output projection is an ``nn.Linear``
    whose constructor draws the bias before the attention zeroes it: drawing
    it too keeps the random numbers after it those of torch's constructor.

    Args:
        drawn: the initialisation whose random numbers are drawn first.
    """

    drawn: Callable[[Tensor], Tensor]

    def __call__(self, tensor: Tensor) -> Tensor:
        """Fill ``tensor`` in place and return it."""
        self.drawn(tensor)
        return init.zeros_(tensor)
