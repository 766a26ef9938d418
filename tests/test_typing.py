"""The package's annotations reach its users' type checkers and hold at run time.

The tests below that use the API are also checked by ``mypy --strict``
(``test_this_file_passes_mypy``): each is a call a user's type checker must
accept (and that runs), or a type it must infer.
"""

from __future__ import annotations

import importlib
import importlib.resources
import inspect
import shutil
import subprocess
import sys
import typing
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from public_api import public_callables
from torch import Tensor, nn

import pyrolite_bnn as bnn
from pyrolite_bnn import vi
from pyrolite_bnn.distributions.variational import PointMassPosterior

if sys.version_info >= (3, 11):
    from typing import assert_type
else:
    from typing_extensions import assert_type

ROOT = Path(__file__).parents[1]


def test_package_is_marked_typed() -> None:
    """PEP 561: without ``py.typed`` mypy and pyright treat every name as ``Any``."""
    assert importlib.resources.files("pyrolite_bnn").joinpath("py.typed").is_file()


@pytest.mark.slow
def test_wheel_ships_py_typed(tmp_path: Path) -> None:
    """The marker is in the built wheel, not only in the source tree."""
    pytest.importorskip("setuptools")
    source = tmp_path / "source"  # a copy: the build leaves build/ and egg-info
    shutil.copytree(
        ROOT / "pyrolite_bnn",
        source / "pyrolite_bnn",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q"]
    subprocess.run(
        [*pip_wheel, "--no-build-isolation", str(source), "-w", str(tmp_path)],
        check=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    assert "pyrolite_bnn/py.typed" in zipfile.ZipFile(wheel).namelist()


def test_this_file_passes_mypy() -> None:
    """The calls below type-check as a user's code (strict, the package's config)."""
    api = pytest.importorskip("mypy.api")
    config = str(ROOT / "pyproject.toml")
    stdout, stderr, status = api.run(["--config-file", config, __file__])
    assert status == 0, stdout + stderr


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = bnn.VILinear(4, 1)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        out: Tensor = self.linear(torch.cat([a, b], -1))
        return out


def test_variational_mapping_built_beforehand() -> None:
    """A ``dict[str, PointMass]`` is a ``Mapping[str, VariationalFamily]``."""
    families = {"bias": bnn.PointMass()}  # dicts are invariant: not dict[str, Family]
    layer = bnn.VILinear(3, 2, variational=families)
    bnn.VIConv2d(1, 2, 3, variational=families)
    plain = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    net = bnn.convert(plain, variational=families)
    assert isinstance(layer.posterior["bias"], PointMassPosterior)
    biases = [v.posterior for v in net.random_variables() if v.name == "bias"]
    assert len(biases) == 2
    assert all(isinstance(b, PointMassPosterior) for b in biases)


def test_sequential_from_an_ordered_dict_of_one_layer_type() -> None:
    """``OrderedDict[str, VILinear]`` fits (OrderedDict is invariant), as torch's."""
    layers = OrderedDict([("fc1", bnn.VILinear(2, 4)), ("fc2", bnn.VILinear(4, 1))])
    net = bnn.VISequential(layers)
    assert net(torch.randn(3, 2)).shape == (net.samples, 3, 1)


@pytest.mark.filterwarnings("ignore:predict. the inputs:UserWarning")  # parameters
def test_inputs_as_a_list_of_a_tensor_subclass() -> None:
    """``predict``/``calibrate`` take a ``list[nn.Parameter]`` of inputs."""
    inputs = [nn.Parameter(torch.randn(5, 2)), nn.Parameter(torch.randn(5, 2))]
    likelihood = bnn.Normal(scale=0.1)
    pred = bnn.predict(_TwoInputs(), inputs, likelihood, samples=3)
    assert_type(pred, bnn.Prediction)
    calibration = bnn.calibrate(_TwoInputs(), inputs, torch.randn(5, 1), likelihood)
    assert_type(calibration, bnn.Calibration)


def test_prior_table_holds_priors() -> None:
    """``layer.prior[name]`` is a ``Prior`` (was ``nn.Module``, as torch's table)."""
    layer = bnn.VILinear(3, 2)
    layer.prior["weight"] = bnn.NormalPrior(0.0, 2.0)
    prior = assert_type(layer.prior["weight"], bnn.Prior)
    assert isinstance(prior, bnn.NormalPrior)
    assert prior.graph_key(torch.Size((2, 3))) is not None
    assert_type(list(layer.prior.values()), list[bnn.Prior])
    assert [name for name, _ in layer.prior.items()] == ["weight", "bias"]
    for _, each in layer.prior.items():
        assert_type(each, bnn.Prior)


def _returns_its_annotation(method: Callable[..., object], *args: object) -> None:
    value = method(*args)
    annotated = typing.get_type_hints(method)["return"]
    assert isinstance(value, annotated), (method, type(value), annotated)


@pytest.mark.parametrize(
    "prior",
    [
        bnn.NormalPrior(),
        bnn.LaplacePrior(),
        bnn.StudentTPrior(),
        bnn.ScaleMixtureNormalPrior(),
        bnn.LearnedNormalPrior(),
        bnn.DistributionPrior(dist.Normal(0.0, 1.0)),
    ],
    ids=lambda prior: type(prior).__name__,
)
def test_prior_distributions_are_what_is_annotated(prior: bnn.Prior) -> None:
    """pyro's Normal is no ``TorchDistribution`` (the annotation was false)."""
    declared = bnn.VILinear(4, 3, prior=prior).prior["weight"]
    _returns_its_annotation(declared.elementwise)
    _returns_its_annotation(declared.forward, torch.Size((3, 4)))


@pytest.mark.parametrize(
    ("likelihood", "outputs"),
    [
        (bnn.Normal(scale=0.1), 1),
        (bnn.Normal(), 1),
        (bnn.StudentT(), 1),
        (bnn.HeteroscedasticNormal(), 2),
        (bnn.Categorical(), 4),
        (bnn.Bernoulli(), 1),
        (bnn.Poisson(), 1),
    ],
    ids=lambda case: type(case).__name__,
)
def test_likelihood_distributions_are_what_is_annotated(
    likelihood: bnn.PredictiveDistribution, outputs: int
) -> None:
    output = torch.zeros(2, 3, outputs)
    _returns_its_annotation(likelihood.distribution, output)
    _returns_its_annotation(likelihood.forward, output)
    _returns_its_annotation(likelihood.target_distribution, output)


@pytest.mark.parametrize("family", [bnn.MeanFieldNormal(), bnn.PointMass()])
def test_posterior_distributions_are_what_is_annotated(
    family: bnn.VariationalFamily,
) -> None:
    posterior = bnn.VILinear(4, 3, variational=family).posterior["weight"]
    _returns_its_annotation(posterior.distribution)


# plot's annotations name matplotlib's Axes, imported for type checkers only:
# importing plot must not import the optional matplotlib (test_plot.py).
_NEEDS_AXES = ("regression_bands", "reliability_diagram", "uncertainty_histogram")


def test_type_hints_resolve_on_every_public_callable() -> None:
    """``typing.get_type_hints`` (runtime checkers, docs, pydantic) works on all.

    Names imported only for type checkers (an import cycle, an optional
    dependency) made it raise ``NameError`` on 12 public callables.
    """
    callables = public_callables()
    assert len(callables) > 500  # the walk found the API
    for name in _NEEDS_AXES:
        del callables[f"pyrolite_bnn.plot.{name}"]
    unresolved = []
    for name, obj in callables.items():
        try:
            typing.get_type_hints(obj)
        except NameError as error:
            unresolved.append(f"{name}: {error}")
    assert unresolved == []


def test_plot_type_hints_resolve_given_axes() -> None:
    axes = pytest.importorskip("matplotlib.axes")
    from pyrolite_bnn import plot

    for name in _NEEDS_AXES:
        hints = typing.get_type_hints(getattr(plot, name), localns={"Axes": axes.Axes})
        assert hints["return"] is axes.Axes


def test_calibration_predict_takes_what_predict_takes() -> None:
    """Same inputs as ``bnn.predict`` (a tuple of them), and no catch-all kwargs."""
    a, b, y = torch.randn(6, 2), torch.randn(6, 2), torch.randn(6, 1)
    net, likelihood = _TwoInputs(), bnn.Normal(scale=0.1)
    calibration = bnn.calibrate(net, (a, b), y, likelihood, samples=4)
    pred = calibration.predict(net, (a, b), likelihood, samples=3, batch_size=4)
    assert_type(pred, bnn.Prediction)
    assert pred.samples.shape == (3, 6, 1)
    with pytest.raises(TypeError, match="sample"):
        calibration.predict(net, a, likelihood, sample=3)  # type: ignore[call-arg]
    ours = inspect.signature(bnn.Calibration.predict).parameters.values()
    theirs = inspect.signature(bnn.predict).parameters.values()
    assert [(p.name, p.kind, p.default) for p in ours if p.name != "self"] == [
        (p.name, p.kind, p.default) for p in theirs if p.name != "calibration"
    ]


def test_string_options_are_literal_types() -> None:
    """A misspelt option is a type error (each ignore is unused on a plain ``str``)."""
    with pytest.raises(ValueError, match="estimator"):
        bnn.VILinear(2, 2, estimator="flipot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="estimator"):
        bnn.convert(nn.Linear(2, 2), estimator="flip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction"):
        bnn.KullbackLeiblerLoss(bnn.Normal(), 8, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compile"):
        bnn.KullbackLeiblerLoss(bnn.Normal(), 8, compile="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale_transform"):
        bnn.MeanFieldNormal(scale_transform="relu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per"):
        bnn.LearnedNormalPrior(per="neuron")  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="input_type"):
        vi.distributions.Categorical(input_type="logit")  # type: ignore[arg-type]
    net = bnn.VISequential(bnn.VILinear(2, 1))
    with pytest.raises(ValueError, match="mode"):
        bnn.predict(net, torch.randn(3, 2), bnn.Normal(), mode="median")  # type: ignore[call-overload]


def test_numbers_as_numpy_scalars_and_one_element_tensors() -> None:
    """Where the checks take any real number (or integer), the annotations do too."""
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    net = bnn.VISequential(bnn.VILinear(2, 1))
    loss_fn = bnn.KullbackLeiblerLoss(
        bnn.Normal(scale=torch.tensor(0.5)), np.int64(8), heat=torch.tensor(0.5)
    )
    loss_fn.heat = np.float32(1.0)
    assert loss_fn(net(x), y).dim() == 0
    assert bnn.StudentT(df=np.float64(3.0), init_scale=torch.tensor(2.0)).learned
    pred = bnn.predict(net, x, bnn.Normal(scale=0.1), samples=np.int64(4))
    assert pred.quantile(torch.tensor(0.5)).shape == pred.mean.shape
    assert pred.interval(np.float32(0.9))[0].shape == pred.mean.shape
    plain = nn.Sequential(nn.Linear(2, 1))
    laplace = bnn.laplace(
        plain, x, y, bnn.Normal(scale=0.1), prior_precision=np.int64(1)
    )
    laplace.set_prior_precision(torch.tensor(2.0))
