"""Contract: every variational family, prior and likelihood declares its scales.

A registry of cases covers every public family, prior and likelihood of the
library and of :mod:`pyrolite_bnn.vi` (in each role a ``vi`` distribution
has), checked to be complete: a new class without a case fails
:func:`test_every_public_family_prior_and_likelihood_has_a_case`. Each case
builds the module the class becomes (a layer's posteriors or priors, a loss's
likelihood) and compares the parameters that
:func:`~pyrolite_bnn.decay.scale_parameters` finds with those that set the
spread of the distribution: a parameter sets it if shifting it by 0.5 changes
the standard deviation of draws made with the same random numbers (float64,
relative tolerance 1e-9: a shifted mean moves every draw alike). A parameter
setting a spread that is not declared would be decayed by ``decay_groups``
and go unnamed in the loss's warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro.distributions as dist
import pytest
import torch
from torch import Tensor, nn

import pyrolite_bnn as bnn
from pyrolite_bnn import vi
from pyrolite_bnn._scales import tensor_parameters
from pyrolite_bnn.decay import scale_parameters
from pyrolite_bnn.vi.distributions.base import as_parameter_tuple

DTYPE = torch.float64
DRAWS = 64


class _ShiftedLaplace(vi.distributions.VariationalDistribution):
    """A user's torch_blue family: a log scale and a plain shift."""

    distribution_parameters = ("mean", "log_scale", "shift")

    @property
    def _default_variational_parameters(self) -> tuple[float, float, float]:
        return 0.0, math.log(0.5), 0.0

    def log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        mean, log_scale, shift = as_parameter_tuple(*parameters)
        value: Tensor = -(sample - mean - shift).abs() / log_scale.exp() - log_scale
        return value

    def sample(self, *parameters: Any) -> Tensor:
        mean, log_scale, shift = as_parameter_tuple(*parameters)
        noise = torch.distributions.Laplace(0.0, 1.0).sample(mean.shape).to(mean)
        draw: Tensor = mean + shift + log_scale.exp() * noise
        return draw


class _SpreadPredictive(vi.distributions.PredictiveDistribution):
    """A user's torch_blue likelihood (it learns nothing)."""

    distribution_parameters = ("mean", "log_std")

    def log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        mean, log_std = as_parameter_tuple(*parameters)
        value: Tensor = -0.5 * ((sample - mean) / log_std.exp()) ** 2 - log_std
        return value

    def predictive_parameters_from_samples(self, samples: Tensor) -> Any:
        return samples.mean(0), samples.std(0)

    def log_prob_from_parameters(self, reference: Tensor, parameters: Any) -> Tensor:
        mean, std = parameters
        value: Tensor = -0.5 * ((reference - mean) / std) ** 2 - std.log()
        return value


@dataclass(frozen=True)
class _Built:
    """What a case builds: a module, the parameters of the role, the draws."""

    module: nn.Module
    parameters: list[Tensor]
    draw: Callable[[], Tensor]


def _posteriors(layer: nn.Module) -> _Built:
    posteriors = layer.posterior  # type: ignore[union-attr]

    def draw() -> Tensor:
        return torch.cat(
            [
                posteriors[name].distribution().rsample((DRAWS,)).flatten(1)
                for name in ("weight", "bias")
            ],
            1,
        )

    return _Built(layer, list(posteriors.parameters()), draw)


def _priors(layer: nn.Module) -> _Built:
    priors = layer.prior  # type: ignore[union-attr]

    def draw() -> Tensor:
        return torch.cat(
            [
                layer.prior_distribution(name).sample((DRAWS,)).flatten(1)  # type: ignore[operator]
                for name in ("weight", "bias")
            ],
            1,
        )

    return _Built(layer, list(priors.parameters()), draw)


def _likelihood(loss_fn: bnn.KullbackLeiblerLoss, outputs: int) -> _Built:
    output = torch.randn(2, 5, outputs, dtype=DTYPE)

    def draw() -> Tensor:
        return loss_fn.predictive.distribution(output).sample((DRAWS,)).flatten(1)

    return _Built(loss_fn, list(loss_fn.parameters()), draw)


def _family(family: bnn.VariationalFamily) -> _Built:
    return _posteriors(bnn.VILinear(3, 2, variational=family, dtype=DTYPE))


def _vi_family(family: Any) -> _Built:
    layer = vi.VILinear(3, 2, variational_distribution=family, dtype=DTYPE)
    return _posteriors(layer)


def _prior(prior: Any) -> _Built:
    return _priors(bnn.VILinear(3, 2, prior=prior, dtype=DTYPE))


def _vi_prior(prior: Any) -> _Built:
    return _priors(vi.VILinear(3, 2, prior=prior, dtype=DTYPE))


def _predictive(predictive: bnn.PredictiveDistribution, outputs: int = 1) -> _Built:
    loss_fn = bnn.KullbackLeiblerLoss(predictive, dataset_size=10).to(DTYPE)
    return _likelihood(loss_fn, outputs)


def _vi_predictive(predictive: Any, outputs: int = 1) -> _Built:
    loss_fn = vi.KullbackLeiblerLoss(predictive, dataset_size=10).to(DTYPE)
    return _likelihood(loss_fn, outputs)


# (role, class) -> how to build it; "variational", "prior", "predictive".
_CASES: dict[str, tuple[str, type, Callable[[], _Built]]] = {
    "MeanFieldNormal": (
        "variational",
        bnn.MeanFieldNormal,
        lambda: _family(bnn.MeanFieldNormal(init_scale=0.5)),
    ),
    "MeanFieldNormal-exp": (
        "variational",
        bnn.MeanFieldNormal,
        lambda: _family(bnn.MeanFieldNormal(0.5, scale_transform="exp")),
    ),
    "PointMass": ("variational", bnn.PointMass, lambda: _family(bnn.PointMass())),
    "vi.MeanFieldNormal": (
        "variational",
        vi.distributions.MeanFieldNormal,
        lambda: _vi_family(vi.distributions.MeanFieldNormal()),
    ),
    "vi.MeanFieldStudentT": (
        "variational",
        vi.distributions.MeanFieldStudentT,
        lambda: _vi_family(vi.distributions.MeanFieldStudentT()),
    ),
    "vi.NonBayesian": (
        "variational",
        vi.distributions.NonBayesian,
        lambda: _vi_family(vi.distributions.NonBayesian()),
    ),
    "vi.user-family": (
        "variational",
        _ShiftedLaplace,
        lambda: _vi_family(_ShiftedLaplace()),
    ),
    "NormalPrior": ("prior", bnn.NormalPrior, lambda: _prior(bnn.NormalPrior())),
    "LearnedNormalPrior": (
        "prior",
        bnn.LearnedNormalPrior,
        lambda: _prior(bnn.LearnedNormalPrior(init_scale=0.5)),
    ),
    "LearnedNormalPrior-unit": (
        "prior",
        bnn.LearnedNormalPrior,
        lambda: _prior(bnn.LearnedNormalPrior(per="unit")),
    ),
    "LaplacePrior": ("prior", bnn.LaplacePrior, lambda: _prior(bnn.LaplacePrior())),
    "StudentTPrior": (
        "prior",
        bnn.StudentTPrior,
        lambda: _prior(bnn.StudentTPrior()),
    ),
    "ScaleMixtureNormalPrior": (
        "prior",
        bnn.ScaleMixtureNormalPrior,
        lambda: _prior(bnn.ScaleMixtureNormalPrior()),
    ),
    "DistributionPrior": (
        "prior",
        bnn.DistributionPrior,
        lambda: _prior(bnn.DistributionPrior(dist.Normal(0.0, 2.0))),
    ),
    "CallablePrior": (
        "prior",
        bnn.CallablePrior,
        lambda: _prior(
            bnn.CallablePrior(lambda shape: dist.Normal(0.0, 1.0).expand(shape))
        ),
    ),
    "vi.MeanFieldNormal-prior": (
        "prior",
        vi.distributions.MeanFieldNormal,
        lambda: _vi_prior(vi.distributions.MeanFieldNormal()),
    ),
    "vi.BasicQuietPrior": (
        "prior",
        vi.distributions.BasicQuietPrior,
        lambda: _vi_prior(vi.distributions.BasicQuietPrior()),
    ),
    "vi.UniformPrior": (
        "prior",
        vi.distributions.UniformPrior,
        lambda: _vi_prior(vi.distributions.UniformPrior()),
    ),
    "vi.NonBayesian-prior": (
        "prior",
        vi.distributions.NonBayesian,
        lambda: _vi_prior(vi.distributions.NonBayesian()),
    ),
    "Normal": ("predictive", bnn.Normal, lambda: _predictive(bnn.Normal())),
    "Normal-fixed": (
        "predictive",
        bnn.Normal,
        lambda: _predictive(bnn.Normal(scale=0.3)),
    ),
    "StudentT": ("predictive", bnn.StudentT, lambda: _predictive(bnn.StudentT())),
    "StudentT-fixed": (
        "predictive",
        bnn.StudentT,
        lambda: _predictive(bnn.StudentT(scale=0.3)),
    ),
    "HeteroscedasticNormal": (
        "predictive",
        bnn.HeteroscedasticNormal,
        lambda: _predictive(bnn.HeteroscedasticNormal(), outputs=2),
    ),
    "Poisson": ("predictive", bnn.Poisson, lambda: _predictive(bnn.Poisson())),
    "Categorical": (
        "predictive",
        bnn.Categorical,
        lambda: _predictive(bnn.Categorical(), outputs=3),
    ),
    "Bernoulli": ("predictive", bnn.Bernoulli, lambda: _predictive(bnn.Bernoulli())),
    "vi.MeanFieldNormal-predictive": (
        "predictive",
        vi.distributions.MeanFieldNormal,
        lambda: _vi_predictive(vi.distributions.MeanFieldNormal()),
    ),
    "vi.Categorical": (
        "predictive",
        vi.distributions.Categorical,
        lambda: _vi_predictive(vi.distributions.Categorical(), outputs=3),
    ),
    "vi.NonBayesian-predictive": (
        "predictive",
        vi.distributions.NonBayesian,
        lambda: _vi_predictive(vi.distributions.NonBayesian("MSE")),
    ),
    "vi.user-predictive": (
        "predictive",
        _SpreadPredictive,
        lambda: _vi_predictive(_SpreadPredictive()),
    ),
}


def _public_roles() -> set[tuple[str, type]]:
    """Every public family, prior and likelihood class, in each of its roles."""
    bases = {
        "variational": bnn.VariationalFamily,
        "prior": bnn.Prior,
        "predictive": bnn.PredictiveDistribution,
    }
    roles = {
        "variational": "is_variational_distribution",
        "prior": "is_prior",
        "predictive": "is_predictive_distribution",
    }
    interfaces = {
        vi.distributions.Distribution,
        vi.distributions.Prior,
        vi.distributions.VariationalDistribution,
        vi.distributions.PredictiveDistribution,
    }
    found: set[tuple[str, type]] = set()
    for module in (bnn, bnn.distributions, vi.distributions):
        for name in module.__all__:
            cls = getattr(module, name)
            if not isinstance(cls, type) or cls in interfaces:
                continue
            for role, base in bases.items():
                if issubclass(cls, base) and cls is not base:
                    found.add((role, cls))
            if issubclass(cls, vi.distributions.Distribution):
                found.update(
                    (role, cls) for role, flag in roles.items() if getattr(cls, flag)
                )
    return found


def test_every_public_family_prior_and_likelihood_has_a_case() -> None:
    covered = {(role, cls) for role, cls, _ in _CASES.values()}
    missing = sorted(
        f"{role} {cls.__module__}.{cls.__qualname__}"
        for role, cls in _public_roles() - covered
    )
    assert missing == [], f"add cases to _CASES for {missing}"


def _spread(draw: Callable[[], Tensor]) -> Tensor:
    torch.manual_seed(0)
    return draw().std(0)


def _spread_setting(built: _Built) -> set[int]:
    """The ids of the role's parameters whose shift changes the draws' spread."""
    found: set[int] = set()
    for parameter in built.parameters:
        before = _spread(built.draw)
        with torch.no_grad():
            parameter.add_(0.5)
        after = _spread(built.draw)
        with torch.no_grad():
            parameter.sub_(0.5)
        if not torch.allclose(before, after, rtol=1e-9, atol=1e-12):
            found.add(id(parameter))
    return found


@pytest.mark.parametrize("case", sorted(_CASES))
def test_the_parameters_that_set_a_spread_are_the_declared_scales(case: str) -> None:
    built = _CASES[case][2]()
    role = {id(p) for p in built.parameters}
    declared = {id(p) for p in scale_parameters(built.module).values()} & role
    spread = _spread_setting(built) if role else set()
    names = {id(p): n for n, p in built.module.named_parameters()}
    assert sorted(map(names.get, declared)) == sorted(map(names.get, spread))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("vi.MeanFieldStudentT", ["_bias_log_scale", "_weight_log_scale"]),
        ("vi.MeanFieldNormal", ["_bias_log_std", "_weight_log_std"]),
        ("vi.user-family", ["_bias_log_scale", "_weight_log_scale"]),
        ("Normal", ["predictive.raw_scale_unconstrained"]),
        (
            "LearnedNormalPrior",
            [
                "posterior.bias.rho_unconstrained",
                "posterior.weight.rho_unconstrained",
                "prior.bias.log_scale",
                "prior.weight.log_scale",
            ],
        ),
    ],
)
def test_learned_scales_are_named_as_their_module_lists_them(
    case: str, expected: list[str]
) -> None:
    """A vi layer lists its posterior's tensors under torch_blue's names:
    MeanFieldStudentT's '_weight_log_scale' was no scale by its name."""
    built = _CASES[case][2]()
    assert sorted(scale_parameters(built.module)) == expected


def test_tensor_parameters_finds_a_pruned_tensors_original() -> None:
    layer = bnn.VILinear(3, 2)
    posterior = layer.posterior["weight"]
    torch.nn.utils.prune.l1_unstructured(posterior, "rho_unconstrained", amount=0.5)
    (original,) = tensor_parameters(posterior, "rho_unconstrained")
    assert original is posterior.rho_unconstrained_orig
    assert "posterior.weight.rho_unconstrained_orig" in scale_parameters(layer)


def test_tensor_parameters_of_no_tensor_is_empty() -> None:
    assert tensor_parameters(nn.Linear(2, 2), "missing.weight") == []
    assert tensor_parameters(nn.Linear(2, 2), "scale") == []
