from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

from pyrolite_bnn.distributions._names import distribution_name

_TD = torch.distributions


@pytest.mark.parametrize(
    ("distribution", "name"),
    [
        (_TD.Normal(0.0, 1.0), "Normal"),
        (_TD.LogNormal(0.0, 1.0), "LogNormal"),
        (dist.Normal(torch.zeros(2, 3), 1.0).to_event(2), "Independent(Normal, 2)"),
        (dist.Normal(0.0, 1.0).expand([2, 3]).to_event(1), "Independent(Normal, 1)"),
        (dist.Normal(torch.zeros(2), 1.0).mask(False), "Normal"),
        (
            dist.ExpandedDistribution(
                _TD.Independent(_TD.Laplace(torch.zeros(2), 1.0), 1), torch.Size([3])
            ),
            "Independent(Laplace, 1)",
        ),
        (
            _TD.TransformedDistribution(
                _TD.Normal(0.0, 1.0),
                [_TD.AffineTransform(0.0, 2.0), _TD.ExpTransform()],
            ),
            "TransformedDistribution(Normal, AffineTransform, ExpTransform)",
        ),
    ],
)
def test_distribution_name_names_what_it_is_made_of(
    distribution: _TD.Distribution, name: str
) -> None:
    """Pyro's expansion and mask are seen through; Independent and transformed
    distributions are named with their base (a bare class name called an
    Independent of a Normal "Normal")."""
    assert distribution_name(distribution) == name
