"""Every entry point takes the same likelihoods and refuses the rest alike."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch

import pyrolite_bnn as bnn
from pyrolite_bnn import vi
from pyrolite_bnn._likelihoods import as_likelihood
from pyrolite_bnn.vi.utils import UnsupportedDistributionError

N = 16


def _classification_entry_points(
    likelihood: object,
) -> dict[str, Callable[[], object]]:
    """Each entry point of the library called with ``likelihood``."""
    torch.manual_seed(0)
    net = bnn.VILinear(3, 4)
    x, y = torch.randn(N, 3), torch.randint(0, 4, (N,))
    logits = torch.randn(5, N, 4)
    return {
        "KullbackLeiblerLoss": lambda: bnn.KullbackLeiblerLoss(likelihood, N)(
            net(x), y
        ),
        "predict": lambda: bnn.predict(net, x, likelihood, samples=4),
        "Prediction": lambda: bnn.Prediction(logits, likelihood).probs,
        "calibrate": lambda: bnn.calibrate(net, x, y, likelihood, samples=4),
        "TemperatureScaling.wrap": lambda: bnn.TemperatureScaling().wrap(likelihood),
        "TemperatureScaling.fit": lambda: bnn.TemperatureScaling().fit(
            logits,
            y,
            likelihood,
        ),
        "laplace": lambda: bnn.laplace(net, x, y, likelihood).predict(
            x,
            4,
            predictive=likelihood,
        ),
    }


# calibrate on an untrained network and random labels may find no better
# temperature than the search limit, and say so: not this test's subject.
@pytest.mark.filterwarnings("ignore:calibration. the fitted temperature:UserWarning")
@pytest.mark.parametrize("entry_point", list(_classification_entry_points(None)))
def test_a_torch_blue_likelihood_is_taken_everywhere(entry_point: str) -> None:
    """``vi.distributions.Categorical()`` was taken by ``predict`` and refused by
    ``calibrate`` ("... Categorical ...; got Categorical"), ``laplace``, the
    loss and ``TemperatureScaling.wrap``."""
    _classification_entry_points(vi.distributions.Categorical())[entry_point]()


def test_a_torch_blue_gaussian_likelihood_is_taken_by_the_regression_ones() -> None:
    """``MeanFieldNormal`` becomes ``bnn.Normal`` with a learned scale: taken,
    and warned about while that scale is untrained."""
    net = bnn.VILinear(3, 1)
    x, y = torch.randn(N, 3), torch.randn(N)
    likelihood = vi.distributions.MeanFieldNormal()
    untrained = "still at their initial values"
    with pytest.warns(UserWarning, match=untrained):
        assert isinstance(bnn.calibrate(net, x, y, likelihood), bnn.VarianceScaling)
    with pytest.warns(UserWarning, match=untrained):
        bnn.VarianceScaling().fit(torch.randn(5, N, 1), y, likelihood)
    with pytest.warns(UserWarning, match=untrained):
        bnn.laplace(net, x, y, likelihood)
    scaled = bnn.VarianceScaling(4.0).wrap(likelihood)
    assert scaled.base is likelihood.to_predictive()


@pytest.mark.parametrize("entry_point", list(_classification_entry_points(None)))
@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            vi.distributions.UniformPrior(),
            "pyrolite_bnn.vi.distributions.non_bayesian.UniformPrior does not "
            "support use as predictive distribution",
        ),
        ("cat", "got 'cat' of type builtins.str"),
        (
            vi.distributions.Categorical,
            "got the class pyrolite_bnn.vi.distributions.categorical.Categorical: "
            "pass an instance, Categorical()",
        ),
    ],
)
def test_what_is_no_likelihood_is_refused_alike(
    entry_point: str, given: object, message: str
) -> None:
    call = _classification_entry_points(given)[entry_point]
    with pytest.raises(TypeError, match=re.escape(message)) as error:
        call()
    assert str(error.value).startswith(f"{entry_point}: ")


def test_the_torch_blue_loss_raises_torch_blues_exception_with_the_same_message() -> (
    None
):
    with pytest.raises(
        UnsupportedDistributionError, match="UniformPrior does not support use"
    ):
        vi.KullbackLeiblerLoss(vi.distributions.UniformPrior(), 10)


def test_conversion_keeps_one_likelihood_per_torch_blue_object() -> None:
    """The learned noise scale is one parameter wherever the object goes."""
    normal = vi.distributions.MeanFieldNormal()
    assert as_likelihood(normal, "predict") is as_likelihood(normal, "laplace")
    assert as_likelihood(normal, "predict") is normal.to_predictive()
    native = bnn.Normal()
    assert as_likelihood(native, "predict") is native


def test_refusals_of_a_likelihood_of_the_wrong_kind_name_it_with_its_module() -> None:
    """laplace said "supports ... Categorical ..., got Categorical"."""
    net = bnn.VILinear(3, 4)
    x, y = torch.randn(N, 3), torch.randint(0, 4, (N,))
    probs = vi.distributions.Categorical(input_type="probs")
    where = r"input_type='probs'.*\(pyrolite_bnn\.vi\.distributions\.categorical\."
    with pytest.raises(
        NotImplementedError, match=r"Categorical \(of logits\).*" + where
    ):
        bnn.laplace(net, x, y, probs)
    with pytest.raises(TypeError, match="Gaussian likelihood.*" + where):
        bnn.VarianceScaling().wrap(probs)
    with pytest.raises(
        TypeError,
        match=r"calibrate fits .* got Poisson\(\) "
        r"\(pyrolite_bnn\.distributions\.predictive\.Poisson\)",
    ):
        bnn.calibrate(bnn.VILinear(3, 1), x, torch.ones(N), bnn.Poisson(), samples=4)


def test_a_learned_scale_shows_its_value_in_the_repr() -> None:
    """A newcomer found the learned noise only through dir(): the repr said
    'scale=learned' whatever it had learned."""
    likelihood = bnn.Normal(init_scale=0.25)
    assert repr(likelihood) == "Normal(scale=learned, now 0.25)"
    with torch.no_grad():
        likelihood.raw_scale.fill_(-3.0)
    assert repr(likelihood) == "Normal(scale=learned, now 0.0486)"
    assert repr(bnn.Normal(scale=0.5)) == "Normal(scale=0.5)"


def test_a_likelihood_from_before_a_reload_is_named_as_such() -> None:
    """A likelihood made before importlib.reload of its module is refused
    with the cause, not "must be a likelihood, got Categorical()"."""
    module = bnn.PredictiveDistribution.__module__
    old_base = type("PredictiveDistribution", (), {"__module__": module})
    old = type("Categorical", (old_base,), {"__module__": module})
    with pytest.raises(TypeError, match="another import of pyrolite_bnn"):
        bnn.predict(bnn.VILinear(2, 2), torch.randn(3, 2), old())
