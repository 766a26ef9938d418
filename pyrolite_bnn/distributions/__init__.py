"""Priors, variational families and predictive distributions."""

from pyrolite_bnn.distributions.predictive import (
    Bernoulli,
    Categorical,
    HeteroscedasticNormal,
    Normal,
    Poisson,
    PredictiveDistribution,
    StudentT,
)
from pyrolite_bnn.distributions.priors import (
    CallablePrior,
    DistributionPrior,
    LaplacePrior,
    LearnedNormalPrior,
    NormalPrior,
    Prior,
    ScaleMixtureNormalPrior,
    StudentTPrior,
)
from pyrolite_bnn.distributions.variational import (
    MeanFieldNormal,
    PointMass,
    VariationalFamily,
)

__all__ = [
    "Bernoulli",
    "CallablePrior",
    "Categorical",
    "DistributionPrior",
    "HeteroscedasticNormal",
    "LaplacePrior",
    "LearnedNormalPrior",
    "MeanFieldNormal",
    "Normal",
    "NormalPrior",
    "PointMass",
    "Poisson",
    "PredictiveDistribution",
    "Prior",
    "ScaleMixtureNormalPrior",
    "StudentT",
    "StudentTPrior",
    "VariationalFamily",
]
