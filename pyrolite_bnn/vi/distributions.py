"""torch_blue-compatible distribution names (re-exports only)."""

from pyrolite_bnn.distributions.predictive import (
    Bernoulli,
    Categorical,
    HeteroscedasticNormal,
    Normal,
)
from pyrolite_bnn.distributions.priors import NormalPrior
from pyrolite_bnn.distributions.variational import MeanFieldNormal

__all__ = [
    "Bernoulli",
    "Categorical",
    "HeteroscedasticNormal",
    "MeanFieldNormal",
    "Normal",
    "NormalPrior",
]
