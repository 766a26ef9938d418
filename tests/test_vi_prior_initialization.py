"""Every reset of a ``vi`` layer gives construction's start, prior initialization too.

``vi.VILinear(7, 5, prior_initialization=True)`` starts its posteriors at the
prior (mean 0, ``log_std`` 0); its ``reset_parameters()``, ``to_empty`` then
``reset_parameters()``, and FSDP's per-module reset (each posterior resetting
itself) gave Kaiming means and scales instead (``log_std`` -0.973), and so did
the convolutions and the transformer layers' ``linear1``/``linear2``; the
attention's posteriors, reset on their own, ended Kaiming-scaled (probe
falsepos26b). The layers now hand their posteriors the prior's values, and a
``vi`` layer's ``reset_parameters()`` is torch_blue's initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from pyrolite_bnn import vi
from pyrolite_bnn.vi.distributions import BasicQuietPrior, MeanFieldNormal

_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "VILinear": lambda **kw: vi.VILinear(7, 5, **kw),
    "VIConv1d": lambda **kw: vi.VIConv1d(3, 4, 5, **kw),
    "VIConv2d": lambda **kw: vi.VIConv2d(6, 4, 3, groups=2, **kw),
    "VIConv3d": lambda **kw: vi.VIConv3d(2, 4, 2, **kw),
    "VIMultiheadAttention": lambda **kw: vi.VIMultiheadAttention(8, 2, **kw),
    "VIMultiheadAttention(kdim, vdim)": lambda **kw: vi.VIMultiheadAttention(
        8, 2, kdim=3, vdim=5, add_bias_kv=True, **kw
    ),
    "VITransformerEncoderLayer": lambda **kw: vi.VITransformerEncoderLayer(
        8, 2, 16, **kw
    ),
}

# The default prior N(0, 1), and one with a mean, rescaled by 1/sqrt(3 fan_in):
# prior initialization starts at the rescaled values.
_PRIORS: dict[str, Callable[[], dict[str, Any]]] = {
    "default prior": dict,
    "rescaled N(0.25, 0.1)": lambda: {
        "prior": MeanFieldNormal(0.25, 0.1),
        "rescale_prior": True,
    },
}


def _trained(layer: nn.Module, posteriors_only: bool = False) -> nn.Module:
    """The layer as training might leave it: parameters away from their start.

    Every parameter, or only the posteriors' (those that torch_blue's
    ``reset_variational_parameters`` resets; not a layer norm's).
    """
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            if not posteriors_only or "posterior." in name:
                parameter.fill_(7.0)
    return layer


def _reset_parameters(layer: nn.Module) -> nn.Module:
    layer.reset_parameters()  # type: ignore[operator]
    return layer


def _reset_variational_parameters(layer: nn.Module) -> nn.Module:
    """torch_blue's reset of every module with variables of its own."""
    for module in layer.modules():
        if isinstance(module, vi.VIModule) and module.random_variables:
            module.reset_variational_parameters()
    return layer


def _on_meta(make: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return make()


def _per_module(layer: nn.Module, parents_first: bool) -> nn.Module:
    """Each module holding tensors of its own: ``to_empty(recurse=False)``, reset.

    Parents first is FSDP's deferred initialisation (the posteriors and priors
    reset themselves, never their layer); children first is ``model.apply``'s
    order.
    """
    modules = [
        module
        for module in layer.modules()
        if [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    ]
    for module in modules if parents_first else modules[::-1]:
        module.to_empty(device="cpu", recurse=False)
        module.reset_parameters()  # type: ignore[operator]
    return layer


_PATHS: dict[str, Callable[[Callable[[], nn.Module]], nn.Module]] = {
    "reset_parameters": lambda make: _reset_parameters(_trained(make())),
    "reset_variational_parameters": lambda make: _reset_variational_parameters(
        _trained(make(), posteriors_only=True)
    ),
    "to_empty, reset_parameters": lambda make: _reset_parameters(
        make().to_empty(device="cpu")
    ),
    "meta, to_empty, reset_parameters": lambda make: _reset_parameters(
        _on_meta(make).to_empty(device="cpu")
    ),
    "meta, per module, parents first (FSDP)": lambda make: _per_module(
        _on_meta(make), parents_first=True
    ),
    "meta, per module, children first": lambda make: _per_module(
        _on_meta(make), parents_first=False
    ),
}


def _is_mean(key: str) -> bool:
    return key.endswith("loc_unconstrained")


@pytest.mark.parametrize(
    "prior_initialization", [True, False], ids=["prior init", "kaiming"]
)
@pytest.mark.parametrize("prior", list(_PRIORS))
@pytest.mark.parametrize("kind", list(_LAYERS))
@pytest.mark.parametrize("path", list(_PATHS))
def test_every_reset_gives_what_construction_gives(
    path: str, kind: str, prior: str, prior_initialization: bool
) -> None:
    """With prior initialization every tensor is the prior's number, so the
    reset state equals the constructed one exactly; without it the means are
    drawn, and everything else (scales, priors, norms) equals construction's
    exactly, the means are finite and drawn anew."""

    def make() -> nn.Module:
        options = _PRIORS[prior]()
        return _LAYERS[kind](prior_initialization=prior_initialization, **options)

    want = make().state_dict()
    got = _PATHS[path](make).state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        if prior_initialization or not _is_mean(key):
            torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
        else:
            assert torch.isfinite(got[key]).all(), key
            assert (got[key] != 7.0).all(), key  # drawn, not the trained value


def test_prior_initialization_reaches_every_posterior_of_a_transformer_layer() -> None:
    """The numbers the test above compares: each posterior at its own rescaled
    prior, ``N(0.25 s, (0.1 s)^2)`` with ``s = 1/sqrt(3 fan_in)``, after a
    posterior's own reset (FSDP) too."""
    layer = _per_module(
        _on_meta(
            lambda: vi.VITransformerEncoderLayer(
                8, 2, 16, prior=MeanFieldNormal(0.25, 0.1), prior_initialization=True
            )
        ),
        parents_first=True,
    )
    fan_ins = {"self_attn": 8, "linear1": 8, "linear2": 16}
    for name, fan_in in fan_ins.items():
        sublayer = layer.get_submodule(name)
        scale = 1 / math.sqrt(3 * fan_in)
        for variable in sublayer.random_variables:
            if sublayer.variational_distribution[variable] is None:
                continue
            mean, log_std = sublayer.get_variational_parameters(variable)
            torch.testing.assert_close(
                mean, torch.full_like(mean, 0.25 * scale), rtol=1e-6, atol=0
            )
            torch.testing.assert_close(
                log_std,
                torch.full_like(log_std, math.log(0.1) + math.log(scale + 1e-5)),
                rtol=1e-6,
                atol=0,
            )


@pytest.mark.parametrize("kind", ["VILinear", "VIConv2d", "VIMultiheadAttention"])
@pytest.mark.parametrize(
    "path", ["reset_parameters", "to_empty, reset_parameters", "children first"]
)
def test_a_layer_reset_runs_the_priors_own_prior_initialization(
    kind: str, path: str
) -> None:
    """``BasicQuietPrior``'s prior initialization is code, not constants: it
    draws each mean from ``N(mean_mean, mean_std^2)`` and gives each weight
    the standard deviation ``std_ratio |mean|``. The layer's
    ``reset_parameters()`` drew Kaiming means and one Kaiming-scaled std
    instead; it now runs torch_blue's initialisation: the same random numbers
    as ``reset_variational_parameters()`` (children first, the posteriors draw
    first; the layer then draws as construction does). The mean of the ``n``
    means is within 5 standard errors, ``5 * 0.2 / sqrt(n)``, of 1."""

    def make() -> nn.Module:
        prior = BasicQuietPrior(std_ratio=0.5, mean_mean=1.0, mean_std=0.2)
        return _LAYERS[kind](
            prior=prior, prior_initialization=True, rescale_prior=False
        )

    reference = _trained(make())
    torch.manual_seed(3)
    _reset_variational_parameters(reference)
    if path == "reset_parameters":
        layer = _trained(make())
    else:
        layer = make().to_empty(device="cpu")
    torch.manual_seed(3)
    if path == "children first":
        _per_module(layer, parents_first=False)
    else:
        _reset_parameters(layer)
        want, got = reference.state_dict(), layer.state_dict()
        assert got.keys() == want.keys()
        for key, value in want.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    for variable in layer.random_variables:
        if layer.variational_distribution[variable] is None:
            continue
        mean, log_std = layer.get_variational_parameters(variable)
        torch.testing.assert_close(log_std, (0.5 * mean.abs()).log())
        assert abs(mean.mean().item() - 1.0) < 5 * 0.2 / math.sqrt(mean.numel())
