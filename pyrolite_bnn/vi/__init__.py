"""torch_blue-compatible names: ``from pyrolite_bnn import vi``.

Code written for torch_blue's ``vi`` namespace runs with its import lines
changed. Only names are re-exported here; there is no separate logic.

Example:
    >>> import torch
    >>> from pyrolite_bnn import vi
    >>> from pyrolite_bnn.vi.distributions import Categorical
    >>> net = vi.VISequential(vi.VILinear(4, 2))
    >>> net.return_log_probs = True
    >>> net(torch.randn(3, 4)).log_probs.shape
    torch.Size([10, 2])
"""

from pyrolite_bnn.layers import (
    VIConv1d,
    VIConv2d,
    VIConv3d,
    VILinear,
    VIResidualConnection,
    VISequential,
)
from pyrolite_bnn.loss import KullbackLeiblerLoss
from pyrolite_bnn.module import VIModule
from pyrolite_bnn.vi import distributions

# The torch_blue paper's Figure 1 spells the container "VISquential".
VISquential = VISequential

__all__ = [
    "KullbackLeiblerLoss",
    "VIConv1d",
    "VIConv2d",
    "VIConv3d",
    "VILinear",
    "VIModule",
    "VIResidualConnection",
    "VISequential",
    "VISquential",
    "distributions",
]
