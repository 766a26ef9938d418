"""Bayesian layers."""

from pyrolite_bnn.layers.container import VIResidualConnection, VISequential
from pyrolite_bnn.layers.conv import VIConv1d, VIConv2d, VIConv3d
from pyrolite_bnn.layers.linear import VILinear

__all__ = [
    "VIConv1d",
    "VIConv2d",
    "VIConv3d",
    "VILinear",
    "VIResidualConnection",
    "VISequential",
]
