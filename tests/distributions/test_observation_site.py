"""The distribution at the Pyro model's observation site."""

from __future__ import annotations

import pytest
import torch

import pyrolite_bnn as bnn
from pyrolite_bnn.distributions._observation_site import ObservationSite


def _site(output: torch.Tensor) -> tuple[ObservationSite, bnn.Poisson]:
    poisson = bnn.Poisson()
    site = ObservationSite(
        poisson.target_distribution(output),
        lambda y: poisson.log_likelihood(output, y),
    )
    return site, poisson


def test_draws_and_targets_are_scored_each_in_their_layout() -> None:
    output = torch.randn(3, 4, 1)
    site, poisson = _site(output)
    counts = torch.tensor([0.0, 1.0, 2.0, 5.0])
    expected = poisson.log_likelihood(output, counts)
    for target in (counts, counts.unsqueeze(-1)):  # (B,) and (B, 1)
        torch.testing.assert_close(site.log_prob(target), expected)
    # a value of the site's whole shape (a draw per particle) by the draws
    draws = site.sample()
    assert draws.shape == (3, 4)
    torch.testing.assert_close(
        site.log_prob(draws), site.draws.log_prob(draws), rtol=0, atol=0
    )


def test_expanded_by_an_outer_plate_keeps_scoring_targets() -> None:
    output = torch.randn(3, 4, 1)
    site, poisson = _site(output)
    assert site.expand((3, 4)) is site
    wider = site.expand((2, 3, 4))
    assert wider.batch_shape == (2, 3, 4)
    assert wider.sample().shape == (2, 3, 4)
    counts = torch.tensor([0.0, 1.0, 2.0, 5.0])
    torch.testing.assert_close(
        wider.log_prob(counts),
        poisson.log_likelihood(output, counts).expand(2, 3, 4),
    )
    assert not wider.has_rsample
    assert wider.support is site.draws.support


def test_a_target_of_the_sites_shape_is_scored_as_a_target() -> None:
    """With one particle and one example a (1, 1) target has the site's whole
    shape (S, B): it was scored as a draw, skipping the likelihood's checks
    (Pyro's support error for an ignored label -100, instead of Categorical's
    own refusal of (B, 1) labels)."""
    from pyro.infer import Trace_ELBO

    torch.manual_seed(0)
    net = bnn.VISequential(bnn.VILinear(2, 3))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(ignore_index=-100), 10)
    model, x = loss_fn.pyro_model(net), torch.randn(1, 2)
    with pytest.raises(ValueError, match="site 'obs'") as refused:
        Trace_ELBO().differentiable_loss(
            model, net.guide, x, torch.tensor([[-100]]), samples=1
        )
    assert "expected targets of shape (1,)" in str(refused.value.__cause__)
    masked = Trace_ELBO().differentiable_loss(
        model, net.guide, x, torch.tensor([-100]), samples=1
    )
    assert torch.isfinite(masked)
