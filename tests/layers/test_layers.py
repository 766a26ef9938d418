"""Layer-specific behaviour of VILinear, VIConvNd and the containers.

What every registered layer must do (torch equality per particle, signature,
repr, reset, state_dict, dtype, gradients, ELBO) is in ``test_contract.py``.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

import pyrolite_bnn as bnn


def _draw_weights(layer: bnn.VIModule, samples: int) -> dict[str, torch.Tensor]:
    return {
        v.site: torch.randn(samples, 1, *v.shape) * 0.5
        for v in layer.random_variables()
    }


def _run_with(
    layer: bnn.VIModule, x: torch.Tensor, weights: dict[str, torch.Tensor], samples: int
) -> torch.Tensor:
    with poutine.trace():
        return poutine.condition(layer, data=weights)(x, samples=samples)  # type: ignore[no-any-return]


def test_uses_moments_follows_the_resolved_estimator() -> None:
    """``"auto"`` is decided once per layer: local reparam for linear layers and
    looked-up rows drawn from the moments for embeddings, with the mean-field
    Normal posterior; weight draws otherwise."""
    assert bnn.VILinear(3, 2).uses_moments()
    assert bnn.VILinear(3, 2, estimator="flipout").uses_moments()
    assert not bnn.VILinear(3, 2, estimator="reparam").uses_moments()
    assert not bnn.VILinear(3, 2, variational=bnn.PointMass()).uses_moments()
    point_bias = bnn.VILinear(3, 2, variational={"bias": bnn.PointMass()})
    assert not point_bias.uses_moments()
    assert not bnn.VIConv2d(1, 2, 3).uses_moments()
    assert bnn.VIConv2d(1, 2, 3, estimator="local").uses_moments()
    assert not bnn.VIConvTranspose2d(1, 2, 3).uses_moments()
    assert bnn.VIEmbedding(5, 2).uses_moments()
    assert not bnn.VIEmbedding(5, 2, estimator="reparam").uses_moments()
    assert not bnn.VIEmbedding(5, 2, variational=bnn.PointMass()).uses_moments()


def test_bayesian_options_in_repr() -> None:
    layer = bnn.VILinear(
        3,
        2,
        prior={"weight": bnn.LaplacePrior(0.0, 0.5)},
        variational={"bias": bnn.PointMass()},
        estimator="reparam",
    )
    assert repr(layer) == (
        "VILinear(in_features=3, out_features=2, bias=True, "
        "prior={'weight': LaplacePrior(loc=0, scale=0.5)}, "
        "variational={'bias': PointMass()}, estimator='reparam')"
    )
    same = bnn.VIConv1d(2, 2, 3, variational=bnn.MeanFieldNormal(init_scale=0.1))
    assert repr(same) == (
        "VIConv1d(2, 2, kernel_size=(3,), stride=(1,), "
        "variational=MeanFieldNormal(init_scale=0.1))"
    )
    # Hyperparameters loaded from a state_dict show in the repr.
    a = bnn.VILinear(2, 1, prior=bnn.NormalPrior(0.0, 0.3))
    b = bnn.VILinear(2, 1, prior=bnn.NormalPrior(0.0, 0.9))
    b.load_state_dict(a.state_dict())
    assert "prior=NormalPrior(loc=0, scale=0.3)" in repr(b)


def test_estimators_a_layer_does_not_offer() -> None:
    with pytest.raises(ValueError, match=r"VIEmbedding supports estimator in"):
        bnn.VIEmbedding(5, 2, estimator="local")
    with pytest.raises(ValueError, match=r"VIConvTranspose2d supports estimator in"):
        bnn.VIConvTranspose2d(2, 2, 3, estimator="flipout")
    with pytest.raises(ValueError, match="estimator must be one of"):
        bnn.VIEmbedding(5, 2, estimator="magic")


def test_input_validation_messages() -> None:
    with pytest.raises(
        ValueError,
        match=r"VILinear\(in_features=4\) expected input of shape "
        r"\(batch, \.\.\., 4\), got \(3, 5\)",
    ):
        bnn.VILinear(4, 2)(torch.randn(3, 5))
    with pytest.raises(
        ValueError,
        match=r"VIConv2d\(in_channels=3\) expected input of shape "
        r"\(batch, 3, H, W\), got \(2, 4, 8, 8\)",
    ):
        bnn.VIConv2d(3, 2, 3)(torch.randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match="divisible by groups"):
        bnn.VIConv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="strided"):
        bnn.VIConv1d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="estimator must be one of"):
        bnn.VILinear(3, 4, estimator="magic")
    with pytest.raises(ValueError, match="prior given for unknown variable"):
        bnn.VILinear(3, 4, prior={"weights": bnn.NormalPrior()})


def test_per_variable_options() -> None:
    layer = bnn.VILinear(
        3,
        2,
        prior={"weight": bnn.LaplacePrior(0.0, 0.5), "bias": bnn.NormalPrior(0.0, 2.0)},
        variational={"bias": bnn.PointMass()},
    )
    assert isinstance(layer.prior["weight"], bnn.LaplacePrior)
    assert type(layer.posterior["bias"]).__name__ == "PointMassPosterior"
    assert type(layer.posterior["weight"]).__name__ == "MeanFieldNormalPosterior"
    pyro.set_rng_seed(0)
    out = layer(torch.randn(4, 3), samples=2)
    assert out.shape == (2, 4, 2)


def test_residual_connection() -> None:
    block = bnn.VIResidualConnection(bnn.VILinear(4, 4), nn.Tanh())
    x = torch.randn(3, 4)
    weights = _draw_weights(block, 2)
    out = _run_with(block, x, weights, 2)
    for s in range(2):
        expected = (
            torch.tanh(x @ weights["0.weight"][s, 0].T + weights["0.bias"][s, 0]) + x
        )
        torch.testing.assert_close(out[s], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="residual body changed the shape"):
        bnn.VIResidualConnection(bnn.VILinear(4, 3))(x)


def test_sequential_container_api() -> None:
    seq = bnn.VISequential(bnn.VILinear(2, 3), nn.ReLU())
    seq.append(bnn.VILinear(3, 1))
    assert len(seq) == 3
    assert isinstance(seq[-1], bnn.VILinear)
    assert isinstance(seq[:2], bnn.VISequential)
    assert [v.site for v in seq.random_variables()] == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    ]


def test_shape_errors_inside_a_network_name_the_folded_batch() -> None:
    """The user sees a batch of 4, not the 40 folded rows the layer gets."""
    net = bnn.VISequential(bnn.VILinear(3, 200), nn.ReLU(), bnn.VILinear(128, 2))
    with pytest.raises(ValueError, match=r"got \(40, 200\) \(the batch of 4 folded"):
        net(torch.randn(4, 3), samples=10)
