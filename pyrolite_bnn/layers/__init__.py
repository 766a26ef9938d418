"""Bayesian layers."""

from pyrolite_bnn.layers.container import (
    VIModuleDict,
    VIModuleList,
    VIResidualConnection,
    VISequential,
)
from pyrolite_bnn.layers.conv import (
    VIConv1d,
    VIConv2d,
    VIConv3d,
    VIConvTranspose1d,
    VIConvTranspose2d,
    VIConvTranspose3d,
)
from pyrolite_bnn.layers.embedding import VIEmbedding
from pyrolite_bnn.layers.linear import VILinear

__all__ = [
    "VIConv1d",
    "VIConv2d",
    "VIConv3d",
    "VIConvTranspose1d",
    "VIConvTranspose2d",
    "VIConvTranspose3d",
    "VIEmbedding",
    "VILinear",
    "VIModuleDict",
    "VIModuleList",
    "VIResidualConnection",
    "VISequential",
]
