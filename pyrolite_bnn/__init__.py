"""pyrolite_bnn: Bayesian neural networks in PyTorch syntax, with Pyro inference.

Example:
    >>> import torch
    >>> import pyrolite_bnn as bnn
    >>> relu = torch.nn.ReLU()
    >>> net = bnn.VISequential(bnn.VILinear(3, 16), relu, bnn.VILinear(16, 2))
    >>> net(torch.randn(4, 3)).shape  # (samples, batch, classes)
    torch.Size([10, 4, 2])
"""

from pyrolite_bnn import metrics
from pyrolite_bnn._validation import (
    enable_validation,
    is_validation_enabled,
    validation,
)
from pyrolite_bnn.calibration import (
    Calibration,
    TemperatureScaling,
    VarianceScaling,
    calibrate,
)
from pyrolite_bnn.checkpoint import load_checkpoint, save_checkpoint
from pyrolite_bnn.compiled import CompileFallbackWarning
from pyrolite_bnn.convert import convert
from pyrolite_bnn.decay import decay_groups, decay_optim_args
from pyrolite_bnn.distributions import (
    Bernoulli,
    CallablePrior,
    Categorical,
    DistributionPrior,
    HeteroscedasticNormal,
    LaplacePrior,
    LearnedNormalPrior,
    MeanFieldNormal,
    Normal,
    NormalPrior,
    PointMass,
    Poisson,
    PredictiveDistribution,
    Prior,
    ScaleMixtureNormalPrior,
    StudentT,
    StudentTPrior,
    VariationalFamily,
)
from pyrolite_bnn.drawn_networks import (
    DrawnNetworks,
    PerNetworkInputWarning,
    draw_networks,
)
from pyrolite_bnn.elbo import Trace_ELBO, TraceMeanField_ELBO
from pyrolite_bnn.export import to_deterministic
from pyrolite_bnn.guides import ParticleGuide
from pyrolite_bnn.laplace import LinearizedLaplace, laplace
from pyrolite_bnn.layers import (
    VIGRU,
    VILSTM,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    VIConv1d,
    VIConv2d,
    VIConv3d,
    VIConvTranspose1d,
    VIConvTranspose2d,
    VIConvTranspose3d,
    VIEmbedding,
    VILinear,
    VIModuleDict,
    VIModuleList,
    VIMultiheadAttention,
    VIResidualConnection,
    VISequential,
    VITransformer,
    VITransformerDecoder,
    VITransformerDecoderLayer,
    VITransformerEncoder,
    VITransformerEncoderLayer,
)
from pyrolite_bnn.layers.functional import match_particles
from pyrolite_bnn.loss import KullbackLeiblerLoss
from pyrolite_bnn.model_sites import ParticlePlate, per_particle
from pyrolite_bnn.module import VIModule
from pyrolite_bnn.predict import Prediction, predict
from pyrolite_bnn.renyi import RenyiELBO
from pyrolite_bnn.training import History, fit, linear_warmup

__version__ = "0.1.0"

__all__ = [
    "VIGRU",
    "VILSTM",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Bernoulli",
    "Calibration",
    "CallablePrior",
    "Categorical",
    "CompileFallbackWarning",
    "DistributionPrior",
    "DrawnNetworks",
    "HeteroscedasticNormal",
    "History",
    "KullbackLeiblerLoss",
    "LaplacePrior",
    "LearnedNormalPrior",
    "LinearizedLaplace",
    "MeanFieldNormal",
    "Normal",
    "NormalPrior",
    "ParticleGuide",
    "ParticlePlate",
    "PerNetworkInputWarning",
    "PointMass",
    "Poisson",
    "Prediction",
    "PredictiveDistribution",
    "Prior",
    "RenyiELBO",
    "ScaleMixtureNormalPrior",
    "StudentT",
    "StudentTPrior",
    "TemperatureScaling",
    "TraceMeanField_ELBO",
    "Trace_ELBO",
    "VIConv1d",
    "VIConv2d",
    "VIConv3d",
    "VIConvTranspose1d",
    "VIConvTranspose2d",
    "VIConvTranspose3d",
    "VIEmbedding",
    "VILinear",
    "VIModule",
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
    "VarianceScaling",
    "VariationalFamily",
    "__version__",
    "calibrate",
    "convert",
    "decay_groups",
    "decay_optim_args",
    "draw_networks",
    "enable_validation",
    "fit",
    "is_validation_enabled",
    "laplace",
    "linear_warmup",
    "load_checkpoint",
    "match_particles",
    "metrics",
    "per_particle",
    "predict",
    "save_checkpoint",
    "to_deterministic",
    "validation",
]
