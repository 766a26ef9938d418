"""torch_blue-compatible namespace: ``from pyrolite_bnn import vi``.

torch_blue code, tests and tutorials run with their import lines changed
(``torch_blue`` -> ``pyrolite_bnn``). The names, module paths, signatures and
defaults are torch_blue's (1.1.0 and its dev branch); each is a thin adapter
over this library's layers, loss and distributions, so torch_blue's defects
are not reproduced (see the docs page "Coming from torch_blue").

``convert_to_vimodule`` works as torch_blue's does: it makes the module
Bayesian *in place* (and returns it) with torch_blue's arguments, where
``pyrolite_bnn.convert`` returns a new network and leaves the module as it
was; copy the model first (``copy.deepcopy``) to keep the original.

Example:
    >>> import torch
    >>> from pyrolite_bnn import vi
    >>> from pyrolite_bnn.vi.distributions import Categorical
    >>> net = vi.VISequential(vi.VILinear(4, 2))
    >>> out = net(torch.randn(3, 4))
    >>> type(out).__name__, out.shape, out.log_probs.shape
    ('VIReturn', torch.Size([10, 3, 2]), torch.Size([10, 2]))
"""

from pyrolite_bnn.vi import distributions, utils
from pyrolite_bnn.vi.analytical_kl_loss import (
    AnalyticalKullbackLeiblerLoss,
    KullbackLeiblerModule,
    NonBayesianDivergence,
    NormalNormalDivergence,
    UniformNormalDivergence,
)
from pyrolite_bnn.vi.base import VIModule
from pyrolite_bnn.vi.conv import VIConv1d, VIConv2d, VIConv3d
from pyrolite_bnn.vi.kl_loss import KullbackLeiblerLoss
from pyrolite_bnn.vi.linear import VILinear
from pyrolite_bnn.vi.sequential import VIResidualConnection, VISequential
from pyrolite_bnn.vi.transformer import (
    VIMultiheadAttention,
    VITransformer,
    VITransformerDecoder,
    VITransformerDecoderLayer,
    VITransformerEncoder,
    VITransformerEncoderLayer,
)
from pyrolite_bnn.vi.utils.common_types import VIkwargs
from pyrolite_bnn.vi.utils.convert import convert_to_vimodule
from pyrolite_bnn.vi.utils.vi_return import VIReturn

# The torch_blue paper's Figure 1 spells the container "VISquential".
VISquential = VISequential

__all__ = [
    "AnalyticalKullbackLeiblerLoss",
    "KullbackLeiblerLoss",
    "KullbackLeiblerModule",
    "NonBayesianDivergence",
    "NormalNormalDivergence",
    "UniformNormalDivergence",
    "VIConv1d",
    "VIConv2d",
    "VIConv3d",
    "VILinear",
    "VIModule",
    "VIMultiheadAttention",
    "VIResidualConnection",
    "VIReturn",
    "VISequential",
    "VISquential",
    "VITransformer",
    "VITransformerDecoder",
    "VITransformerDecoderLayer",
    "VITransformerEncoder",
    "VITransformerEncoderLayer",
    "VIkwargs",
    "convert_to_vimodule",
    "distributions",
    "utils",
]
