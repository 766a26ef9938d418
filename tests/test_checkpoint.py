"""Tests for :mod:`pyrolite_bnn.checkpoint` (atomic save, checked load)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

import pyrolite_bnn as bnn
from pyrolite_bnn.checkpoint import load_checkpoint, save_checkpoint

N = 64


def _net(hidden: int = 8) -> bnn.VISequential:
    return bnn.VISequential(bnn.VILinear(3, hidden), nn.ReLU(), bnn.VILinear(hidden, 1))


def _loss() -> bnn.KullbackLeiblerLoss:
    return bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=N)


def _optimizer(model: nn.Module, loss_fn: nn.Module) -> torch.optim.Adam:
    return torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=0.05)


def _train(
    model: nn.Module, loss_fn: nn.Module, optimizer: Any, steps: int = 5
) -> None:
    x = torch.randn(N, 3)
    y = x[:, :1] * 2.0
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    pyro.set_rng_seed(7)
    with torch.no_grad():
        out: Tensor = model(x)
    return out


# ---------------------------------------------------------------- round trip
def test_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    model, loss_fn = _net(), _loss()
    optimizer = _optimizer(model, loss_fn)
    _train(model, loss_fn, optimizer)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, optimizer, loss_fn, epoch=3, extra={"lr": 0.05})

    fresh, fresh_loss = _net(), _loss()
    fresh_optimizer = _optimizer(fresh, fresh_loss)
    info = load_checkpoint(path, fresh, fresh_optimizer, fresh_loss)

    assert info == {"epoch": 3, "extra": {"lr": 0.05}, "version": bnn.__version__}
    x = torch.randn(5, 3)
    assert torch.equal(_predict(fresh, x), _predict(model, x))
    _assert_same_state(_state(fresh), _state(model))
    assert torch.equal(
        fresh_loss.predictive.noise_scale(), loss_fn.predictive.noise_scale()
    )
    saved_state = optimizer.state_dict()["state"]
    loaded_state = fresh_optimizer.state_dict()["state"]
    assert saved_state.keys() == loaded_state.keys()
    for index in saved_state:
        for name, value in saved_state[index].items():
            assert torch.equal(loaded_state[index][name], value)
    # Training continues identically from the loaded state.
    pyro.set_rng_seed(3)
    _train(model, loss_fn, optimizer, steps=2)
    pyro.set_rng_seed(3)
    _train(fresh, fresh_loss, fresh_optimizer, steps=2)
    _assert_same_state(_state(fresh), _state(model))


@pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)`:UserWarning")
def test_compiled_network_saves_and_loads_as_its_network(tmp_path: Path) -> None:
    """It saved an ``OptimizedModule`` with ``_orig_mod.``-prefixed keys."""
    model = _net()
    compiled = torch.compile(model, backend="eager")  # eager backend: quick
    x = torch.randn(5, 3)
    with torch.no_grad():
        compiled(x)
    path = tmp_path / "compiled.pt"
    save_checkpoint(path, compiled)
    payload = torch.load(path, weights_only=True)
    assert payload["fingerprint"]["class"] == "VISequential"
    assert payload["model"].keys() == model.state_dict().keys()
    plain = _net()
    load_checkpoint(path, plain)
    _assert_same_state(_state(plain), _state(model))
    recompiled = _net()
    load_checkpoint(path, torch.compile(recompiled, backend="eager"))
    _assert_same_state(_state(recompiled), _state(model))


def test_file_loads_with_weights_only_and_holds_fingerprint(tmp_path: Path) -> None:
    model = _net()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model)
    payload = torch.load(path, weights_only=True)
    fingerprint = payload["fingerprint"]
    assert fingerprint["class"] == "VISequential"
    assert fingerprint["state"]["0.posterior.weight.loc_unconstrained"] == [8, 3]
    assert fingerprint["state"]["0.prior.weight.scale"] == []
    assert fingerprint["sites"] == {
        "0.weight": [8, 3],
        "0.bias": [8],
        "2.weight": [1, 8],
        "2.bias": [1],
    }
    assert payload["optimizer"] is None
    assert payload["loss_fn"] is None
    assert payload["version"] == bnn.__version__


def test_custom_guide_round_trip(tmp_path: Path) -> None:
    model = _net()
    model.guide = AutoNormal(model.prior_model, init_loc_fn=model.init_loc_fn)
    with torch.no_grad():
        for param in model.guide.parameters():
            param.add_(0.1)
    path = tmp_path / "guided.pt"
    save_checkpoint(path, model)

    fresh = _net()
    fresh.guide = AutoNormal(fresh.prior_model, init_loc_fn=fresh.init_loc_fn)
    load_checkpoint(path, fresh)
    x = torch.randn(4, 3)
    assert torch.equal(_predict(fresh, x), _predict(model, x))

    without_guide = _net()
    with pytest.raises(ValueError, match="assign the same custom guide"):
        load_checkpoint(path, without_guide)


# ----------------------------------------------------------- refused loads
def test_different_architecture_is_refused_and_nothing_loaded(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, _net(hidden=8))
    other = _net(hidden=4)
    before = _state(other)
    with pytest.raises(ValueError, match="different shape") as info:
        load_checkpoint(path, other)
    message = str(info.value)
    assert "0.posterior.weight.loc_unconstrained (checkpoint (8, 3), model (4, 3))" in (
        message
    )
    assert "nothing was loaded" in message
    _assert_same_state(_state(other), before)


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, _net())
    deeper = bnn.VISequential(
        bnn.VILinear(3, 8), nn.ReLU(), bnn.VILinear(8, 1), nn.ReLU(), bnn.VILinear(1, 1)
    )
    with pytest.raises(ValueError, match="missing from the checkpoint") as info:
        load_checkpoint(path, deeper)
    message = str(info.value)
    assert "4.posterior.weight.loc_unconstrained" in message
    assert "and 3 more" in message  # at most five keys listed

    path_deep = tmp_path / "deep.pt"
    save_checkpoint(path_deep, deeper)
    with pytest.raises(ValueError, match="unexpected state keys in the checkpoint"):
        load_checkpoint(path_deep, _net())


def test_different_class_is_refused(tmp_path: Path) -> None:
    class Wrapped(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = bnn.VILinear(3, 1)

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = self.body(x)
            return out

    path = tmp_path / "model.pt"
    save_checkpoint(path, bnn.VILinear(3, 1))
    with pytest.raises(ValueError, match="saved from a VILinear"):
        load_checkpoint(path, Wrapped())


def test_optimizer_and_loss_mismatch_are_refused(tmp_path: Path) -> None:
    model = _net()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model)
    fresh = _net()
    before = _state(fresh)
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(path, fresh, optimizer=torch.optim.SGD(fresh.parameters(), 0.1))
    with pytest.raises(ValueError, match="no loss_fn state"):
        load_checkpoint(path, fresh, loss_fn=_loss())
    _assert_same_state(_state(fresh), before)

    loss_fn = _loss()
    save_checkpoint(path, model, _optimizer(model, loss_fn), loss_fn)
    with pytest.raises(ValueError, match="parameter groups"):
        load_checkpoint(path, fresh, optimizer=torch.optim.SGD(fresh.parameters(), 0.1))
    fixed = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), dataset_size=N)
    with pytest.raises(ValueError, match="loss_fn state keys"):
        load_checkpoint(path, fresh, loss_fn=fixed)
    _assert_same_state(_state(fresh), before)


def test_failed_load_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, loss_fn = _net(), _loss()
    optimizer = _optimizer(model, loss_fn)
    _train(model, loss_fn, optimizer)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, optimizer, loss_fn)

    fresh, fresh_loss = _net(), _loss()
    fresh_optimizer = _optimizer(fresh, fresh_loss)
    before_model, before_loss = _state(fresh), _state(fresh_loss)

    def broken(state: dict[str, Any]) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(fresh_optimizer, "load_state_dict", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        load_checkpoint(path, fresh, fresh_optimizer, fresh_loss)
    _assert_same_state(_state(fresh), before_model)
    _assert_same_state(_state(fresh_loss), before_loss)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a pyrolite_bnn checkpoint"):
        load_checkpoint(path, _net())


class _LitLike(nn.Module):
    """Holds the network and the loss as a LightningModule does."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.loss_fn = _net(), _loss()


@pytest.mark.parametrize("lightning", [True, False])
def test_a_state_dict_file_says_how_to_load_it(tmp_path: Path, lightning: bool) -> None:
    """A file shaped like a Lightning ``.ckpt`` (a dict whose ``"state_dict"``
    holds the LightningModule's state) was only "not a pyrolite_bnn
    checkpoint". The message names ``load_from_checkpoint`` for Lightning, and
    the recipe it gives for the network's part of ``"state_dict"`` loads it."""
    torch.manual_seed(0)
    module = _LitLike()
    _train(module.net, module.loss_fn, _optimizer(module.net, module.loss_fn))
    payload: dict[str, Any] = {"epoch": 3, "state_dict": module.state_dict()}
    if lightning:
        payload |= {
            "global_step": 12,
            "pytorch-lightning_version": "2.6.6",
            "loops": {},
            "hyper_parameters": {"lr": 0.01},
        }
    path = tmp_path / "last.ckpt"
    torch.save(payload, path)
    net = _net()
    with pytest.raises(ValueError, match="not a pyrolite_bnn checkpoint") as caught:
        load_checkpoint(path, net)
    message = str(caught.value)
    assert ("load_from_checkpoint" in message) == lightning
    recipe = re.search(
        r"(state = torch\.load\(.*?\]); (net\.load_state_dict\(\{.*?\}\))", message
    )
    assert recipe is not None, message
    exec("; ".join(recipe.groups()), {"torch": torch, "path": path, "net": net})
    _assert_same_state(_state(net), _state(module.net))


@pytest.mark.parametrize("keep", [0, 10, 0.5, -10], ids=lambda k: f"keep={k}")
def test_empty_or_truncated_file_is_named(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "run.pt"
    save_checkpoint(path, _net())
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:cut])
    state = "is empty" if cut == 0 else "cannot be read"
    with pytest.raises(ValueError, match=rf"checkpoint '.*run\.pt' {state}"):
        load_checkpoint(path, _net())


def test_missing_file_keeps_its_own_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt", _net())


def _prior_net(
    prior: object, container: type[nn.Module] = bnn.VISequential
) -> nn.Module:
    return container(bnn.VILinear(3, 4, prior=prior), nn.ReLU())


@pytest.mark.parametrize("container", [bnn.VISequential, nn.Sequential])
@pytest.mark.parametrize(
    "other",
    [
        bnn.LaplacePrior(0.0, 1.0),
        bnn.DistributionPrior(torch.distributions.Cauchy(0.0, 1.0)),
    ],
    ids=["laplace", "cauchy"],
)
def test_different_prior_family_is_refused(
    tmp_path: Path, other: bnn.Prior, container: type[nn.Module]
) -> None:
    """Also for Bayesian layers in a plain torch container (same state keys)."""
    path = tmp_path / "normal.pt"
    save_checkpoint(path, _prior_net(bnn.NormalPrior(0.0, 1.0), container))
    model = _prior_net(other, container)
    before = _state(model)
    message = (
        r"different prior or posterior family: 0\.weight \(checkpoint: prior "
        rf"NormalPrior, posterior MeanFieldNormalPosterior; model: prior "
        rf"{re.escape(other.family())}, posterior MeanFieldNormalPosterior\)"
    )
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path, model)
    _assert_same_state(_state(model), before)


def test_wrapped_distributions_are_told_apart(tmp_path: Path) -> None:
    path = tmp_path / "cauchy.pt"
    cauchy = bnn.DistributionPrior(torch.distributions.Cauchy(0.0, 1.0))
    laplace = bnn.DistributionPrior(torch.distributions.Laplace(0.0, 1.0))
    save_checkpoint(path, _prior_net(cauchy))
    with pytest.raises(ValueError, match=r"DistributionPrior\(Laplace\)"):
        load_checkpoint(path, _prior_net(laplace))
    load_checkpoint(path, _prior_net(cauchy))


def test_checkpoint_without_families_still_loads(tmp_path: Path) -> None:
    """Files written before the families were fingerprinted."""
    path = tmp_path / "old.pt"
    saved = _prior_net(bnn.NormalPrior(0.0, 0.5))
    save_checkpoint(path, saved)
    payload = torch.load(path, weights_only=True)
    del payload["fingerprint"]["families"]
    torch.save(payload, path)
    model = _prior_net(bnn.NormalPrior(0.0, 1.0))
    load_checkpoint(path, model)
    _assert_same_state(_state(model), _state(saved))


def _scale_net(scale_transform: str) -> bnn.VILinear:
    family = bnn.MeanFieldNormal(0.05, scale_transform=scale_transform)
    return bnn.VILinear(3, 2, variational=family)


@pytest.mark.parametrize(("saved", "other"), [("exp", "softplus"), ("softplus", "exp")])
def test_different_scale_transform_is_refused(
    tmp_path: Path, saved: str, other: str
) -> None:
    """It loaded: the same ``rho`` is another standard deviation (1.0 -> 0.693)."""
    path = tmp_path / f"{saved}.pt"
    source = _scale_net(saved)
    save_checkpoint(path, source)
    model = _scale_net(other)
    before = _state(model)
    message = (
        r"different posterior parameterisation: weight \(checkpoint: "
        rf"scale_transform='{saved}'; model: scale_transform='{other}'\), bias"
    )
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path, model)
    _assert_same_state(_state(model), before)
    same = _scale_net(saved)
    load_checkpoint(path, same)
    _assert_same_state(_state(same), _state(source))


@pytest.mark.parametrize("other", ["exp", "softplus"])
def test_checkpoint_without_parameterisations_still_loads(
    tmp_path: Path, other: str
) -> None:
    """Files written before they were fingerprinted: not refused either way.

    Assuming "softplus" for them would refuse every older checkpoint of a
    ``vi`` model (torch_blue's layout, ``scale_transform="exp"``).
    """
    path = tmp_path / "old.pt"
    saved = _scale_net("exp")
    save_checkpoint(path, saved)
    payload = torch.load(path, weights_only=True)
    del payload["fingerprint"]["parameterisations"]
    for entry in payload["model"]._metadata.values():  # nor did their states
        entry.pop("pyrolite_bnn.parameterisation", None)
    torch.save(payload, path)
    model = _scale_net(other)
    load_checkpoint(path, model)
    _assert_same_state(_state(model), _state(saved))


def test_negative_prior_scale_in_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    save_checkpoint(path, _prior_net(bnn.NormalPrior(0.0, 0.5)))
    payload = torch.load(path, weights_only=True)
    payload["model"]["0.prior.weight.scale"] = torch.tensor(-0.5)
    torch.save(payload, path)
    model = _prior_net(bnn.NormalPrior(0.0, 0.5))
    before = _state(model)
    with pytest.raises(
        RuntimeError, match=r"prior buffer '0\.prior\.weight\.scale' of NormalPrior"
    ):
        load_checkpoint(path, model)
    _assert_same_state(_state(model), before)


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize(
    ("part", "key", "value"),
    [
        ("model", "0.posterior.weight.loc_unconstrained", float("nan")),
        ("model", "2.posterior.bias.rho_unconstrained", float("inf")),
        ("loss_fn", "predictive.raw_scale_unconstrained", float("nan")),
    ],
)
def test_non_finite_parameters_in_checkpoint_are_refused(
    tmp_path: Path, part: str, key: str, value: float, validate: bool
) -> None:
    """A NaN posterior mean or learned noise scale loaded silently: predict
    then gave NaN means, or an interval error naming neither the noise nor
    the checkpoint. Refused naming the parameter, nothing loaded, whatever
    the validation setting (as the prior buffers' constraints)."""
    path = tmp_path / "bad.pt"
    save_checkpoint(path, _net(), loss_fn=_loss())
    payload = torch.load(path, weights_only=True)
    payload[part][key].view(-1)[0] = value
    torch.save(payload, path)
    model, loss_fn = _net(), _loss()
    before, before_loss = _state(model), _state(loss_fn)
    with (
        bnn.validation(validate),
        pytest.raises(
            ValueError,
            match=rf"holds NaN or infinite parameter values; nothing was loaded: "
            rf"{part} '{re.escape(key)}' holds",
        ),
    ):
        load_checkpoint(path, model, loss_fn=loss_fn)
    _assert_same_state(_state(model), before)
    _assert_same_state(_state(loss_fn), before_loss)


@pytest.mark.parametrize(
    ("part", "name"),
    [
        ("model", "0.posterior.weight.loc_unconstrained"),
        ("loss_fn", "predictive.raw_scale_unconstrained"),
    ],
)
def test_save_refuses_non_finite_parameters_and_keeps_the_file(
    tmp_path: Path, part: str, name: str
) -> None:
    """save_checkpoint wrote a NaN posterior or noise scale (from a diverged
    hand-written loop) over the last good checkpoint, which load_checkpoint
    now refuses: the save is refused, naming the parameter, and the previous
    file stays."""
    path = tmp_path / "run.pt"
    model, loss_fn = _net(), _loss()
    save_checkpoint(path, model, loss_fn=loss_fn, epoch=0)
    written = path.read_bytes()
    target = dict((model if part == "model" else loss_fn).named_parameters())[name]
    with torch.no_grad():
        target.view(-1)[0] = float("nan")
    named = rf"nothing was written.*{part} '{re.escape(name)}' holds 1 NaN"
    with pytest.raises(ValueError, match=named):
        save_checkpoint(path, model, loss_fn=loss_fn, epoch=1)
    assert path.read_bytes() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]


def _emptied_net_without(key: str) -> nn.Module:
    """A network after ``to_empty`` that a load without ``key`` wrote."""
    network = _net().to_empty(device="cpu")
    state = {k: v for k, v in _net().state_dict().items() if k != key}
    network.load_state_dict(state, strict=False)
    return network


@pytest.mark.parametrize(
    "key",
    [
        "2.prior.weight.scale",
        "0.posterior.weight.rho_unconstrained",
        "0.posterior.bias.loc_unconstrained",
    ],
)
def test_save_refuses_tensors_without_values_and_keeps_the_file(
    tmp_path: Path, key: str
) -> None:
    """A network whose prior scale ``to_empty`` left unwritten (a load with
    ``strict=False`` missed it) was saved over the last good checkpoint, and
    load_checkpoint then refused its own file: the parameters alone were
    checked (probe falsepos23a). A tensor without values is refused by name,
    whatever it is, before the file is touched; written, it saves and loads."""
    path = tmp_path / "run.pt"
    save_checkpoint(path, _net(), epoch=0)
    written = path.read_bytes()
    network = _emptied_net_without(key)
    with pytest.raises(
        ValueError,
        match=rf"nothing was written.*model tensors hold no values: "
        rf"'{re.escape(key)}'\. Nothing wrote them after to_empty",
    ):
        save_checkpoint(path, network, epoch=1)
    assert path.read_bytes() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]
    for module in network.modules():
        reset = getattr(module, "reset_parameters", None)
        if reset is not None:
            reset()
    save_checkpoint(path, network, epoch=1)
    assert load_checkpoint(path, _net())["epoch"] == 1


def test_save_refuses_a_likelihood_without_values(tmp_path: Path) -> None:
    """The loss's tensors (a noise scale) are checked as the model's."""
    path = tmp_path / "run.pt"
    loss_fn = _loss().to_empty(device="cpu")
    with pytest.raises(
        ValueError,
        match=r"loss_fn tensors hold no values: 'predictive\.raw_scale_unconstrained'",
    ):
        save_checkpoint(path, _net(), loss_fn=loss_fn)
    assert not path.exists()


def test_save_names_the_remedy_each_tensor_without_values_has(tmp_path: Path) -> None:
    """A calibrated likelihood's temperature (a buffer of a module without
    reset_parameters) was refused with "call reset_parameters() on the modules
    holding them", which writes nothing into it (probe falsepos24b): each
    tensor is named with what writes it, the module's own remedy."""
    path = tmp_path / "run.pt"
    calibrated = bnn.TemperatureScaling().wrap(bnn.Categorical())
    loss_fn = bnn.KullbackLeiblerLoss(calibrated, dataset_size=N).to_empty(device="cpu")
    with pytest.raises(
        ValueError,
        match=r"loss_fn tensors hold no values: 'predictive\.temperature'\. "
        r"Nothing wrote them after to_empty .*: wrap the likelihood again",
    ) as refused:
        save_checkpoint(path, _net(), loss_fn=loss_fn)
    assert "reset_parameters" not in str(refused.value)
    network = nn.ModuleDict(
        {"net": _net(), "calibration": bnn.TemperatureScaling()}
    ).to_empty(device="cpu")
    with pytest.raises(ValueError, match=r"for 'calibration\.temperature', fit it"):
        save_checkpoint(path, network)
    assert not path.exists()


@pytest.mark.parametrize("value", [float("nan"), -1.0])
def test_save_refuses_prior_hyperparameters_outside_their_constraints(
    tmp_path: Path, value: float
) -> None:
    """A prior scale written NaN or negative in place (no parameter) was saved,
    and load_checkpoint refused the file."""
    path = tmp_path / "run.pt"
    network = _net()
    with torch.no_grad():
        network[2].prior["weight"].scale.fill_(value)
    with pytest.raises(ValueError, match=r"nothing was written") as refusal:
        save_checkpoint(path, network)
    assert "'2.prior.weight'" in str(refusal.value)
    assert not path.exists()


def test_buffers_holding_nan_or_infinities_save_as_they_load(tmp_path: Path) -> None:
    """Save refused NaN in any buffer ("Training diverged"), which loading
    accepts: a NaN sentinel ("not computed yet") saved into a file could be
    loaded, and the model just loaded could not be saved again (probe
    falsepos24b). Save refuses what loading refuses: buffers are saved and
    loaded with their NaN and infinities (a mask) as they are."""
    path = tmp_path / "run.pt"
    network = nn.Sequential(_net(), nn.BatchNorm1d(1))
    network.register_buffer("median", torch.tensor([float("nan"), 1.0]))
    network.register_buffer("mask", torch.tensor([0.0, float("-inf")]))
    with torch.no_grad():
        network[1].running_var.fill_(float("nan"))
    save_checkpoint(path, network)
    fresh = nn.Sequential(_net(), nn.BatchNorm1d(1))
    fresh.register_buffer("median", torch.zeros(2))
    fresh.register_buffer("mask", torch.zeros(2))
    load_checkpoint(path, fresh)
    for key, value in network.state_dict().items():
        torch.testing.assert_close(
            fresh.state_dict()[key], value, rtol=0, atol=0, equal_nan=True
        )
    save_checkpoint(path, fresh)  # the model just loaded saves again


class _WithExtra(nn.Module):
    """A network with a tensor of another layout beside it (a graph network's
    sparse adjacency, a fixed sparse projection)."""

    def __init__(self, tensor: Tensor, kind: str) -> None:
        super().__init__()
        self.body = bnn.VILinear(3, 1)
        if kind == "buffer":
            self.register_buffer("extra", tensor)
        else:
            self.extra = nn.Parameter(tensor, requires_grad=kind == "parameter")

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


# torch's notes when a sparse compressed or a strided nested tensor is built.
TENSOR_KIND_NOTES = pytest.mark.filterwarnings(
    "ignore:Sparse .* tensor support is in beta",
    "ignore:The PyTorch API of nested tensors",
)

_SPARSE = {
    "coo": Tensor.to_sparse_coo,
    "csr": Tensor.to_sparse_csr,
    "csc": Tensor.to_sparse_csc,
    "bsr": lambda dense: dense.to_sparse_bsr((2, 2)),
}


@TENSOR_KIND_NOTES
@pytest.mark.parametrize("kind", ["buffer", "frozen parameter", "parameter"])
@pytest.mark.parametrize("layout", list(_SPARSE))
def test_sparse_tensors_save_and_load(tmp_path: Path, layout: str, kind: str) -> None:
    """A sparse buffer crashed save_checkpoint and fit(checkpoint_path=...)
    (``aten::bitwise_not`` on SparseCPU, "unsupported tensor layout: SparseCsr"),
    and a frozen sparse parameter did before (``aten::ne.Scalar``; probe
    falsepos24b). They save and load; a parameter's stored values are checked
    for NaN on both sides, as a dense one's."""
    path = tmp_path / "run.pt"
    dense = torch.zeros(4, 4)
    dense[0, 0], dense[1, 2], dense[3, 1] = 2.0, 3.0, -1.0
    model = _WithExtra(_SPARSE[layout](dense), kind)
    save_checkpoint(path, model)
    # torch copies into a sparse compressed tensor of the same pattern only
    fresh = _WithExtra(_SPARSE[layout](dense * 5.0), kind)
    load_checkpoint(path, fresh)
    torch.testing.assert_close(fresh.extra.to_dense(), dense, rtol=0, atol=0)
    with_nan = dense.clone()
    with_nan[0, 0] = float("nan")
    broken = _WithExtra(_SPARSE[layout](with_nan), kind)
    if kind == "buffer":  # a buffer's NaN is its own business
        save_checkpoint(path, broken)
        return
    stored = r"model 'extra' holds 1 NaN and 0 inf of \d+ stored values"
    with pytest.raises(ValueError, match=r"nothing was written.*" + stored):
        save_checkpoint(path, broken)
    payload = torch.load(path, weights_only=True)
    payload["model"]["extra"] = broken.extra.detach()
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"nothing was loaded: " + stored):
        load_checkpoint(path, fresh)


def test_fit_checkpoints_a_network_with_a_sparse_buffer(tmp_path: Path) -> None:
    """The probe's graph network: its sparse adjacency as a buffer made
    fit(checkpoint_path=...) fail after its first epoch."""
    path = tmp_path / "run.pt"
    model = _WithExtra(torch.eye(4).to_sparse(), "buffer")
    x = torch.randn(8, 3)
    bnn.fit(model, _loss(), [(x, x[:, :1])], 1, progress=False, checkpoint_path=path)
    info = load_checkpoint(path, _WithExtra(torch.eye(4).to_sparse(), "buffer"))
    assert info["epoch"] == 0


@TENSOR_KIND_NOTES
def test_save_refuses_a_nested_tensor_that_would_not_load(tmp_path: Path) -> None:
    """A nested buffer failed inside torch ("NestedTensorImpl doesn't support
    sizes", "aten::bitwise_not ... NestedTensorCPU"), and load_state_dict
    cannot copy into one, so no file holding it loads: refused, with the
    ways to keep it."""
    path = tmp_path / "run.pt"
    nested = torch.nested.nested_tensor([torch.randn(2), torch.randn(3)])
    with pytest.raises(
        ValueError,
        match=r"nothing was written.*model holds nested tensors, which "
        r"load_state_dict cannot copy into.*'extra'\. Store them padded "
        r"\(torch\.nested\.to_padded_tensor",
    ):
        save_checkpoint(path, _WithExtra(nested, "buffer"))
    assert not path.exists()


# ------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("where", ["replace", "save"])
def test_interrupted_write_keeps_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path = tmp_path / "model.pt"
    model = _net()
    save_checkpoint(path, model, epoch=1)
    saved = _state(model)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)

    if where == "replace":

        def fail_replace(src: Any, dst: Any) -> None:
            raise OSError("interrupted")

        monkeypatch.setattr(os, "replace", fail_replace)
    else:
        real_save = torch.save

        def fail_save(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
            real_save(obj, handle, *args, **kwargs)
            handle.truncate(100)  # half-written file
            raise OSError("interrupted")

        monkeypatch.setattr(torch, "save", fail_save)

    with pytest.raises(OSError, match="interrupted"):
        save_checkpoint(path, model, epoch=2)
    monkeypatch.undo()

    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    fresh = _net()
    assert load_checkpoint(path, fresh)["epoch"] == 1
    _assert_same_state(_state(fresh), saved)


def test_non_plain_extra_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    with pytest.raises(TypeError, match=r"extra\['bad'\]"):
        save_checkpoint(path, _net(), extra={"bad": object()})
    with pytest.raises(TypeError, match=r"extra\['x'\]\[1\] is a float64"):
        save_checkpoint(path, _net(), extra={"x": [1.0, np.float64(2.0)]})
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_extra_must_be_a_dict_and_epoch_a_count(tmp_path: Path) -> None:
    """A list raised ``dictionary update sequence element #0``; ``epoch=-1``
    was saved."""
    path = tmp_path / "model.pt"
    with pytest.raises(
        TypeError, match="extra must be a dict of names to data, got list"
    ):
        save_checkpoint(path, _net(), extra=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epoch must be an integer >= 0, got -1"):
        save_checkpoint(path, _net(), epoch=-1)
    with pytest.raises(TypeError, match="epoch must be an integer"):
        save_checkpoint(path, _net(), epoch=1.0)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    save_checkpoint(path, _net(), epoch=np.int64(3))  # type: ignore[arg-type]
    epoch = load_checkpoint(path, _net())["epoch"]
    assert (epoch, type(epoch)) == (3, int)  # a plain int: loads weights-only


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_file_permissions_match_torch_save(tmp_path: Path) -> None:
    reference = tmp_path / "reference.pt"
    torch.save({}, reference)
    path = tmp_path / "model.pt"
    save_checkpoint(path, _net())
    assert path.stat().st_mode == reference.stat().st_mode
    path.chmod(0o600)
    save_checkpoint(path, _net())
    assert path.stat().st_mode & 0o777 == 0o600


def test_plain_root_loaded_whole_in_a_fresh_process_runs_as_one_network(
    tmp_path: Path,
) -> None:
    """Unpickling skips ``__init__``, which installed the plain-root hook.

    In a fresh process the loaded ``nn.Sequential`` of Bayesian layers ran
    each layer as a network of its own: ``predict(..., samples=6)`` returned
    ``(10, 10, 5, 2)`` outputs without an error.
    """
    torch.manual_seed(0)
    plain = nn.Sequential(bnn.VILinear(3, 4), nn.ReLU(), bnn.VILinear(4, 2))
    path = tmp_path / "plain.pt"
    torch.save(plain, path)
    script = (
        "import torch, pyrolite_bnn as bnn\n"
        f"net = torch.load({str(path)!r}, weights_only=False)\n"
        "pred = bnn.predict(net, torch.randn(5, 3), bnn.Categorical(), samples=6)\n"
        "print(tuple(pred.samples.shape))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "(6, 5, 2)"


def test_load_checkpoint_names_an_object_in_the_wrong_slot(tmp_path: Path) -> None:
    """The loss in the optimizer slot failed with "no attribute 'param_groups'"."""
    model = bnn.VILinear(3, 2)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=10)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, loss_fn=loss_fn)
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer"):
        load_checkpoint(path, model, loss_fn)  # type: ignore[arg-type]


def test_load_checkpoint_needs_a_model(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, bnn.VILinear(3, 2))
    with pytest.raises(TypeError, match="needs the model"):
        load_checkpoint(path, None)  # type: ignore[arg-type]


# ------------------------------------------------------------------ optimizers


def _adam_checkpoint(path: Path) -> bnn.VISequential:
    """A trained network saved with its Adam (over the network's parameters)."""
    model, loss_fn = _net(), _loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    _train(model, loss_fn, optimizer, steps=2)
    save_checkpoint(path, model, optimizer, loss_fn, epoch=1)
    return model


def _refused_into_sgd(path: Path, message: str) -> None:
    """Loading into an SGD optimizer is refused, and nothing is loaded."""
    fresh = _net()
    sgd = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    before, sgd_before = _state(fresh), sgd.state_dict()
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path, fresh, sgd)
    _assert_same_state(_state(fresh), before)
    assert sgd.state_dict() == sgd_before


def test_optimizer_of_another_class_is_refused_before_loading(tmp_path: Path) -> None:
    """Adam's state loaded into SGD silently: SGD's lr became Adam's, its
    momentum went, and its first step raised ``KeyError: 'momentum'``."""
    path = tmp_path / "adam.pt"
    _adam_checkpoint(path)
    _refused_into_sgd(
        path,
        r"nothing was loaded:\n  the checkpoint's optimizer is of class Adam, the "
        r"optimizer of class SGD",
    )
    assert torch.load(path, weights_only=True)["optimizer_class"] == "Adam"
    fresh = _net()
    adam = torch.optim.Adam(fresh.parameters(), lr=0.5)
    load_checkpoint(path, fresh, adam)  # the same class loads
    assert adam.param_groups[0]["lr"] == 0.01


def test_optimizer_class_of_an_older_checkpoint_is_told_by_its_options(
    tmp_path: Path,
) -> None:
    """Files written before the class was recorded: compared by group options."""
    path = tmp_path / "old.pt"
    _adam_checkpoint(path)
    payload = torch.load(path, weights_only=True)
    payload.pop("optimizer_class", None)
    torch.save(payload, path)
    _refused_into_sgd(
        path,
        r"the checkpoint's optimizer has options \[.*'betas'.*\] that the SGD "
        r"lacks, and lacks its \[.*'momentum'.*\]: another kind of optimizer",
    )
    fresh = _net()
    adam = torch.optim.Adam(fresh.parameters(), lr=0.5)
    load_checkpoint(path, fresh, adam)
    assert adam.param_groups[0]["lr"] == 0.01


def _grouped(
    model: nn.Module, loss_fn: nn.Module, swap: bool = False
) -> torch.optim.AdamW:
    """AdamW over the means (decayed), the scales (not) and the loss's noise:
    the first two groups of equal sizes (one rho per mean), built in the
    other order if ``swap``."""
    decayed, kept = bnn.decay_groups(model, weight_decay=0.1)
    kept["lr"] = 0.2
    groups = [kept, decayed] if swap else [decayed, kept]
    noise = {"params": list(loss_fn.parameters()), "weight_decay": 0.0}
    return torch.optim.AdamW([*groups, noise], lr=0.01)


def _grouped_checkpoint(path: Path) -> None:
    model, loss_fn = bnn.VISequential(bnn.VILinear(3, 1)), _loss()
    optimizer = _grouped(model, loss_fn)
    _train(model, loss_fn, optimizer, steps=2)
    save_checkpoint(path, model, optimizer, loss_fn)


def test_optimizer_groups_in_another_order_are_refused(tmp_path: Path) -> None:
    """The same groups built in the other order loaded silently (only sizes
    were compared): the scales got the means' weight_decay, lr and Adam
    moments."""
    path = tmp_path / "grouped.pt"
    _grouped_checkpoint(path)
    assert torch.load(path, weights_only=True)["optimizer_parameters"] == [
        ["0.posterior.weight.loc_unconstrained", "0.posterior.bias.loc_unconstrained"],
        ["0.posterior.weight.rho_unconstrained", "0.posterior.bias.rho_unconstrained"],
        ["loss_fn.predictive.raw_scale_unconstrained"],
    ]
    model, loss_fn = bnn.VISequential(bnn.VILinear(3, 1)), _loss()
    swapped = _grouped(model, loss_fn, swap=True)
    assert [len(g["params"]) for g in swapped.param_groups] == [2, 2, 1]
    before, optimizer_before = _state(model), swapped.state_dict()
    message = (
        r"nothing was loaded:\n  the optimizer's parameter group 0 holds "
        r"'0\.posterior\.weight\.rho_unconstrained' where the checkpoint's held "
        r"'0\.posterior\.weight\.loc_unconstrained', .* \(the saved groups, in "
        r"another order\): build the optimizer's groups as the saved optimizer's"
    )
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path, model, swapped, loss_fn)
    _assert_same_state(_state(model), before)
    assert swapped.state_dict() == optimizer_before
    rebuilt = _grouped(model, loss_fn)
    load_checkpoint(path, model, rebuilt, loss_fn)  # the same order loads
    assert rebuilt.param_groups[1]["lr"] == 0.2


def test_optimizer_parameters_in_another_order_within_a_group_are_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "adam.pt"
    _adam_checkpoint(path)
    fresh = _net()
    reordered = torch.optim.Adam(list(fresh.parameters())[::-1], lr=0.01)
    with pytest.raises(ValueError, match=r"parameter group 0 holds '2\.posterior"):
        load_checkpoint(path, fresh, reordered)


def test_unnamed_optimizer_parameters_match_any(tmp_path: Path) -> None:
    """A tensor of neither the model nor the loss has no name, nor have the
    loss's parameters when the loss is not given."""
    model, loss_fn = _net(), _loss()
    params = [*model.parameters(), *loss_fn.parameters()]
    optimizer = torch.optim.Adam([*params, nn.Parameter(torch.zeros(2))])
    _train(model, loss_fn, optimizer, steps=1)
    path = tmp_path / "run.pt"
    save_checkpoint(path, model, optimizer, loss_fn)
    names = torch.load(path, weights_only=True)["optimizer_parameters"][0]
    assert names[-2:] == ["loss_fn.predictive.raw_scale_unconstrained", None]
    fresh, fresh_loss = _net(), _loss()
    params = [*fresh.parameters(), *fresh_loss.parameters()]
    rebuilt = torch.optim.Adam([*params, nn.Parameter(torch.ones(2))])
    load_checkpoint(path, fresh, rebuilt)  # the loss's noise: unnamed here
    _assert_same_state(_state(fresh), _state(model))


@pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)`:UserWarning")
def test_optimizer_of_a_compiled_network_loads_into_the_plain_one(
    tmp_path: Path,
) -> None:
    """Parameter names are the network's, not the wrapper's (``_orig_mod.``)."""
    model, loss_fn = _net(), _loss()
    compiled = torch.compile(model, backend="eager")
    optimizer = _grouped(compiled, loss_fn)
    with torch.no_grad():
        compiled(torch.randn(5, 3))
    path = tmp_path / "compiled.pt"
    save_checkpoint(path, compiled, optimizer, loss_fn)
    names = torch.load(path, weights_only=True)["optimizer_parameters"][0]
    assert names[0] == "0.posterior.weight.loc_unconstrained"
    fresh, fresh_loss = _net(), _loss()
    load_checkpoint(path, fresh, _grouped(fresh, fresh_loss), fresh_loss)


def test_optimizer_groups_of_an_older_checkpoint_are_compared_by_size(
    tmp_path: Path,
) -> None:
    """Files written before the names were recorded load as before."""
    path = tmp_path / "old.pt"
    _grouped_checkpoint(path)
    payload = torch.load(path, weights_only=True)
    del payload["optimizer_parameters"]
    torch.save(payload, path)
    model, loss_fn = bnn.VISequential(bnn.VILinear(3, 1)), _loss()
    load_checkpoint(path, model, _grouped(model, loss_fn, swap=True), loss_fn)
    with pytest.raises(ValueError, match=r"parameter groups of sizes \[4\], the"):
        load_checkpoint(path, model, torch.optim.AdamW(model.parameters()), loss_fn)


def test_save_refuses_an_optimizer_of_another_network(tmp_path: Path) -> None:
    """``save_checkpoint(A, optimizer of B)`` paired A's weights with B's
    optimizer state silently; ``fit`` refuses that optimizer (the same rule)."""
    path = tmp_path / "run.pt"
    model = _adam_checkpoint(path)
    written = path.read_bytes()
    other = torch.optim.Adam(_net().parameters())
    message = r"the optimizer holds none of the model's trainable parameters, so "
    with pytest.raises(ValueError, match=message + "the checkpoint would pair"):
        save_checkpoint(path, model, other)
    assert path.read_bytes() == written  # the previous checkpoint is kept
    with pytest.raises(ValueError, match=message + "fit would train nothing"):
        bnn.fit(model, _loss(), [(torch.randn(4, 3), torch.randn(4, 1))], 1, other)
    # The average of SWA / EMA holds copies: its optimizer is the network's.
    averaged = AveragedModel(model)
    with pytest.raises(ValueError, match=r"an AveragedModel holds copies"):
        save_checkpoint(path, averaged, torch.optim.Adam(model.parameters()))
    frozen = _net().requires_grad_(False)  # nothing to train: any optimizer
    save_checkpoint(path, frozen, other)


def test_a_frozen_parameter_may_hold_infinities_by_design(tmp_path: Path) -> None:
    """A causal mask kept as a frozen parameter (-inf above the diagonal)
    saved and loaded before the non-finite check; refusing it made fit with
    checkpoint_path= fail after its first epoch. A NaN there is refused."""

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = bnn.VILinear(4, 4)
            mask = torch.full((4, 4), float("-inf")).triu(1)
            self.mask = nn.Parameter(mask, requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    path = tmp_path / "masked.pt"
    model = Masked()
    save_checkpoint(path, model)
    fresh = Masked()
    load_checkpoint(path, fresh)
    torch.testing.assert_close(fresh.mask, model.mask)
    with torch.no_grad():
        model.mask[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"model 'mask' holds 1 NaN and 0 inf"):
        save_checkpoint(path, model)
