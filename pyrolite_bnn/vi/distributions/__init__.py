"""torch_blue's ``vi.distributions``, on this library's priors and likelihoods.

Example:
    >>> from pyrolite_bnn.vi import distributions
    >>> distributions.Normal is distributions.MeanFieldNormal
    True
"""

from pyrolite_bnn.vi.distributions.base import (
    Distribution,
    PredictiveDistribution,
    Prior,
    VariationalDistribution,
)
from pyrolite_bnn.vi.distributions.categorical import Categorical
from pyrolite_bnn.vi.distributions.non_bayesian import NonBayesian, UniformPrior
from pyrolite_bnn.vi.distributions.normal import MeanFieldNormal
from pyrolite_bnn.vi.distributions.quiet import BasicQuietPrior
from pyrolite_bnn.vi.distributions.student_t import MeanFieldStudentT

Normal = MeanFieldNormal
StudentT = MeanFieldStudentT

__all__ = [
    "BasicQuietPrior",
    "Categorical",
    "Distribution",
    "MeanFieldNormal",
    "MeanFieldStudentT",
    "NonBayesian",
    "Normal",
    "PredictiveDistribution",
    "Prior",
    "StudentT",
    "UniformPrior",
    "VariationalDistribution",
]
