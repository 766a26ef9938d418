"""Half-precision tensors read as float32 for one computation."""

from __future__ import annotations

import pytest
import torch

import pyrolite_bnn as bnn
from pyrolite_bnn.distributions._precision import computed_in_full_precision


def test_the_modules_hold_their_own_tensors_again_afterwards() -> None:
    """A module listed twice is swapped once: a second swap of the same module
    would have put the first one's cast back when the call returned."""
    prior = bnn.LearnedNormalPrior(init_scale=0.3).to(torch.bfloat16)
    own = [prior.loc, prior.log_scale]
    seen = computed_in_full_precision(
        [prior, prior], lambda: (prior.loc.dtype, prior.log_scale.dtype)
    )
    assert seen == (torch.float32, torch.float32)
    assert prior.loc is own[0]
    assert prior.log_scale is own[1]


def test_the_modules_hold_their_own_tensors_again_after_an_error() -> None:
    prior = bnn.NormalPrior(0.0, 0.1).to(torch.float16)
    scale = prior.scale

    def fail() -> None:
        raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        computed_in_full_precision([prior], fail)
    assert prior.scale is scale


def test_gradients_reach_the_half_precision_parameters() -> None:
    prior = bnn.LearnedNormalPrior(init_scale=0.3).to(torch.bfloat16)
    value = computed_in_full_precision([prior], lambda: prior.scale())
    assert value.dtype == torch.float32
    value.backward()
    assert prior.log_scale.grad is not None
    assert prior.log_scale.grad.dtype == torch.bfloat16
    # d exp(l) / dl = exp(l), of the stored log_scale, rounded to bfloat16
    expected = prior.log_scale.detach().double().exp()
    torch.testing.assert_close(
        prior.log_scale.grad.double(), expected, rtol=2.0**-8, atol=0.0
    )


def test_full_precision_modules_are_not_touched() -> None:
    prior = bnn.NormalPrior(0.0, 0.1)
    scale = prior.scale
    assert computed_in_full_precision([prior], lambda: prior.scale) is scale
