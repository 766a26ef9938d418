"""Layer contract suite, parametrised over a registry of layer cases.

Every layer, at fixed weights: one particle equals its torch counterpart; S
particles equal S separate torch calls. Also: signatures match torch, repr,
reset, state_dict round trip, dtype, gradient flow.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

import pyrolite_bnn as bnn


@dataclass
class Case:
    name: str
    make: Callable[[], bnn.VIModule]
    torch_layer: Callable[[], nn.Module]
    input_shape: tuple[int, ...]


def _conv_cases() -> list[Case]:
    cases = []
    options: list[dict[str, Any]] = [
        {},
        {"stride": 2, "padding": 1},
        {"padding": "same", "dilation": 2},
        {"padding": "valid", "groups": 2, "bias": False},
        {"padding": 1, "padding_mode": "reflect"},
        {"padding": 2, "padding_mode": "circular", "stride": 2},
        {"padding": "same", "padding_mode": "replicate"},
    ]
    shapes = {1: (2, 4, 11), 2: (2, 4, 9, 8), 3: (2, 4, 6, 5, 6)}
    for dims, vi_cls, nn_cls in [
        (1, bnn.VIConv1d, nn.Conv1d),
        (2, bnn.VIConv2d, nn.Conv2d),
        (3, bnn.VIConv3d, nn.Conv3d),
    ]:
        for opts in options:
            cases.append(
                Case(
                    f"{vi_cls.__name__}{opts}",
                    lambda c=vi_cls, o=opts: c(4, 6, 3, **o),
                    lambda c=nn_cls, o=opts: c(4, 6, 3, **o),
                    shapes[dims],
                )
            )
    return cases


CASES = [
    Case("VILinear", lambda: bnn.VILinear(5, 3), lambda: nn.Linear(5, 3), (4, 5)),
    Case(
        "VILinear-nobias",
        lambda: bnn.VILinear(5, 3, False),
        lambda: nn.Linear(5, 3, False),
        (4, 2, 5),
    ),
    *_conv_cases(),
]


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


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_equals_torch_layer_per_particle(case: Case) -> None:
    layer, reference = case.make(), case.torch_layer()
    x = torch.randn(*case.input_shape)
    samples = 3
    weights = _draw_weights(layer, samples)
    out = _run_with(layer, x, weights, samples)

    def reference_at(s: int) -> torch.Tensor:
        with torch.no_grad():
            reference.weight.copy_(weights["weight"][s, 0])
            if reference.bias is not None:
                reference.bias.copy_(weights["bias"][s, 0])
            return reference(x)

    for s in range(samples):
        torch.testing.assert_close(out[s], reference_at(s), rtol=1e-5, atol=1e-5)
    one = {k: v[:1] for k, v in weights.items()}
    single = _run_with(layer, x, one, 1)
    assert single.shape == (1, *reference_at(0).shape)
    torch.testing.assert_close(single[0], reference_at(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES[:2] + CASES[2:4], ids=lambda c: c.name)
def test_signature_matches_torch(case: Case) -> None:
    vi_params = inspect.signature(type(case.make()).__init__).parameters
    nn_params = inspect.signature(type(case.torch_layer()).__init__).parameters
    # torch also lets device/dtype be positional; here they are keyword-only.
    positional = [
        n
        for n, p in nn_params.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD and n not in ("device", "dtype")
    ]
    vi_positional = [
        n for n, p in vi_params.items() if p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    assert vi_positional == positional
    for name in positional[1:]:
        assert vi_params[name].default == nn_params[name].default, name
    for name in ("prior", "variational", "estimator", "device", "dtype"):
        assert vi_params[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_repr_like_torch() -> None:
    assert repr(bnn.VILinear(4, 3, False)).startswith(
        "VILinear(in_features=4, out_features=3, bias=False)"
    )
    conv = bnn.VIConv2d(3, 8, 3, stride=2, padding=1)
    assert repr(nn.Conv2d(3, 8, 3, stride=2, padding=1)).replace(
        "Conv2d", "VIConv2d"
    ) in repr(conv)


@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: c.name)
def test_gradients_reach_every_parameter(case: Case) -> None:
    layer = case.make()
    out = layer(torch.randn(*case.input_shape), samples=2)
    bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 100)(
        out.flatten(2).sum(-1, keepdim=True), torch.zeros(case.input_shape[0])
    ).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert bool(p.grad.abs().sum() > 0), name


def test_reset_parameters_restores_initial_scale() -> None:
    layer = bnn.VILinear(20, 10, variational=bnn.MeanFieldNormal(init_scale=0.01))
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(3.0)
    layer.reset_parameters()
    post = layer.posterior["weight"]
    torch.testing.assert_close(
        post.scale(), torch.full((10, 20), 0.01), rtol=1e-5, atol=0
    )
    bound = 1 / 20**0.5  # kaiming_uniform(a=sqrt(5)) bound = 1/sqrt(fan_in)
    loc = post.loc.detach()
    assert float(loc.abs().max()) <= bound
    assert float(loc.std()) > bound / 4


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
        r"\(batch, 3, L, L\), got \(2, 4, 8, 8\)",
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
