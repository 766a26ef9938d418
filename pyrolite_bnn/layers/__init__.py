"""Bayesian layers."""

from pyrolite_bnn.layers.attention import VIMultiheadAttention
from pyrolite_bnn.layers.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
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
from pyrolite_bnn.layers.recurrent import VIGRU, VILSTM
from pyrolite_bnn.layers.transformer import (
    VITransformer,
    VITransformerDecoder,
    VITransformerDecoderLayer,
    VITransformerEncoder,
    VITransformerEncoderLayer,
)

__all__ = [
    "VIGRU",
    "VILSTM",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
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
    "VIMultiheadAttention",
    "VIResidualConnection",
    "VISequential",
    "VITransformer",
    "VITransformerDecoder",
    "VITransformerDecoderLayer",
    "VITransformerEncoder",
    "VITransformerEncoderLayer",
]
