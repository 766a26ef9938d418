"""Networks inside ``nn.DataParallel`` and ``AveragedModel`` (SWA / EMA).

Both hold the network in ``.module`` (the averaged copy for ``AveragedModel``):
checkpoints, ``to_deterministic``, ``predict`` and ``model_loss`` read the
network inside, as they do for ``DistributedDataParallel`` and ``torch.compile``.
Before, ``to_deterministic`` refused them and a checkpoint held ``module.``-prefixed
keys that did not load into the network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import pyrolite_bnn as bnn


def _net() -> bnn.VISequential:
    return bnn.VISequential(bnn.VILinear(3, 8), nn.ReLU(), bnn.VILinear(8, 2))


def _plain_net() -> nn.Sequential:
    """The same layers in a plain container, whose call is the network."""
    return nn.Sequential(bnn.VILinear(3, 8), nn.ReLU(), bnn.VILinear(8, 2))


NETWORKS: dict[str, Callable[[], nn.Module]] = {
    "VISequential": _net,
    "plain": _plain_net,
}


def _averaged(net: nn.Module) -> nn.Module:
    """An EMA of ``net`` after two updates from a perturbed network."""
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.5))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1)
    ema.update_parameters(net)
    return ema


WRAPPERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "DataParallel": nn.DataParallel,
    "AveragedModel": _averaged,
}


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_wrapped_network_is_read_as_the_network_inside(
    wrapper: str, network: str, tmp_path: Path
) -> None:
    """A plain container's call is its network's inside the wrapper too.

    Before, ``DataParallel``'s call was taken for a plain network's and ran
    each Bayesian layer as a network of its own (output ``(S, S, B, 2)``), and
    ``to_deterministic`` refused plain networks.
    """
    torch.manual_seed(0)
    wrapped = WRAPPERS[wrapper](NETWORKS[network]())
    inner = wrapped.module
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 1, 0])
    torch.manual_seed(2)
    out = wrapped(x, samples=4) if network == "VISequential" else wrapped(x)
    torch.manual_seed(2)
    expected = inner(x, samples=4) if network == "VISequential" else inner(x)
    torch.testing.assert_close(out, expected)

    path = tmp_path / "wrapped.pt"
    bnn.save_checkpoint(path, wrapped)
    fresh = NETWORKS[network]()
    bnn.load_checkpoint(path, fresh)
    for (name, a), (_, b) in zip(
        fresh.state_dict().items(), inner.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name

    deterministic = bnn.to_deterministic(wrapped)
    torch.testing.assert_close(deterministic(x), bnn.to_deterministic(inner)(x))

    mean = bnn.predict(wrapped, x, bnn.Categorical(), mode="mean").probs
    torch.testing.assert_close(
        mean, bnn.predict(inner, x, bnn.Categorical(), mode="mean").probs
    )

    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=6)
    torch.manual_seed(1)
    loss = loss_fn.model_loss(wrapped, x, y, samples=3)
    torch.manual_seed(1)
    torch.testing.assert_close(loss, loss_fn.model_loss(inner, x, y, samples=3))


@pytest.mark.parametrize("network", NETWORKS)
def test_averaged_model_resumes_its_average_from_a_checkpoint(
    network: str, tmp_path: Path
) -> None:
    """A checkpoint of an EMA after ``k`` updates, loaded into a fresh
    ``AveragedModel``, continues the average: one more update equals the
    uninterrupted run's. Before, ``n_averaged`` was not saved, and the first
    update after loading copied the raw network over the average."""
    torch.manual_seed(0)
    net = NETWORKS[network]()
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
        ema.update_parameters(net)
    path = tmp_path / "ema.pt"
    bnn.save_checkpoint(path, ema)

    resumed = AveragedModel(NETWORKS[network](), multi_avg_fn=get_ema_multi_avg_fn(0.9))
    bnn.load_checkpoint(path, resumed)
    assert torch.equal(resumed.n_averaged, ema.n_averaged)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ema.update_parameters(net)
    resumed.update_parameters(net)
    for (name, a), (_, b) in zip(
        resumed.module.state_dict().items(),
        ema.module.state_dict().items(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)

    # Still the averaged network for a plain one (the count is left out).
    plain = NETWORKS[network]()
    bnn.load_checkpoint(path, plain)
    ema_before_update = torch.load(path, weights_only=True)["model"]
    for name, value in plain.state_dict().items():
        assert torch.equal(value, ema_before_update[name]), name


def _compiled(module: nn.Module) -> nn.Module:
    return torch.compile(module, backend="eager")  # eager backend: quick


ARRANGEMENTS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "compile": _compiled,
    "compile(DataParallel)": lambda net: _compiled(nn.DataParallel(net)),
    "DataParallel(compile)": lambda net: nn.DataParallel(_compiled(net)),
    "compile(AveragedModel)": lambda net: _compiled(AveragedModel(net)),
}


@pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)`:UserWarning")
@pytest.mark.parametrize("arrangement", ARRANGEMENTS)
def test_compiled_wrappers_of_a_plain_network_run_it_as_one(arrangement: str) -> None:
    """``torch.compile`` around (or inside) a data-parallel wrapper of a plain
    container took the compiled wrapper for a wrapper of nothing: each
    Bayesian layer ran as a network of its own, output ``(S, S, B, 2)``.
    ``torch.compile`` of the plain container itself, and of the wrappers run
    in a fresh process (no earlier test's eager call of the same tree), failed
    inside Dynamo: opening the network traced a write to the module that
    Dynamo had reached through the compiled wrapper (probe ecosystem, F5); it
    now runs eagerly."""
    torch.manual_seed(0)
    net = _plain_net()
    wrapped = ARRANGEMENTS[arrangement](net)
    x = torch.randn(6, 3)
    with torch.no_grad():  # dynamo warns about .grad reads when tracing grads
        torch.manual_seed(1)
        out = wrapped(x)
        torch.manual_seed(1)
        torch.testing.assert_close(out, net(x))
    assert out.shape == (10, 6, 2)


class LightningModule(nn.Module):
    """Stands for ``lightning.pytorch.LightningModule`` (not a dependency)."""


LightningModule.__module__ = "lightning.pytorch.core.module"


class _Lit(LightningModule):
    """The how-to's ``LitBNN`` pattern: the loss is computed in the step."""

    def __init__(self, net: nn.Module, direct_layers: bool) -> None:
        super().__init__()
        self.net = net
        self.direct_layers = direct_layers
        self.loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), dataset_size=40)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self(x) if self.direct_layers else self.net(x)
        return self.loss_fn(out, y)  # type: ignore[no-any-return]


def _redirected(lit: _Lit, *args: torch.Tensor) -> torch.Tensor:
    """Lightning's forward redirection (its DDP strategy): ``training_step``
    runs inside the call of the wrapped module, whose ``forward`` is patched on
    the instance and puts the original back before the step runs."""
    original = lit.forward

    def wrapped_forward(*inner: torch.Tensor) -> torch.Tensor:
        lit.forward = original  # type: ignore[method-assign]
        return lit.training_step(*inner)

    # Defined in lightning.pytorch.strategies.strategy, as Lightning's is.
    wrapped_forward.__module__ = "lightning.pytorch.strategies.strategy"
    lit.forward = wrapped_forward  # type: ignore[method-assign]
    return nn.DataParallel(lit)(*args)  # type: ignore[no-any-return]


@pytest.mark.parametrize("make", [_net, _plain_net], ids=["VISequential", "plain"])
@pytest.mark.parametrize("direct_layers", [False, True], ids=["net", "self"])
def test_a_lightning_step_redirected_through_the_wrapper_trains_as_on_one_device(
    make: Callable[[], nn.Module], direct_layers: bool
) -> None:
    """Under Lightning's DDP strategy the LightningModule's call runs
    ``training_step``: the library took that call for the network's, so
    ``self.net(x)`` gave folded ``(B * S, ...)`` rows and the loss raised
    "cannot tell which forward pass produced this output" on the first step
    (probe ecosystem, F1). The redirected step now gives the loss and the
    gradients of the step called directly, at the same seed, on every step
    (the original ``forward`` left on the instance is the network's again)."""
    torch.manual_seed(0)
    lit = _Lit(make(), direct_layers)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    for _ in range(2):
        torch.manual_seed(1)
        direct = lit.training_step(x, y)
        expected = torch.autograd.grad(direct, list(lit.parameters()))
        torch.manual_seed(1)
        redirected = _redirected(lit, x, y)
        got = torch.autograd.grad(redirected, list(lit.parameters()))
        torch.testing.assert_close(redirected, direct)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b)


class _SelfPatched(LightningModule):
    """A LightningModule that is the network and picks its forward itself."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = bnn.VILinear(3, 4), bnn.VILinear(4, 1)
        self.forward = self.forward_deep  # type: ignore[method-assign]

    def forward_deep(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))  # type: ignore[no-any-return]


def test_a_forward_a_module_sets_on_itself_is_no_redirection() -> None:
    """The first check took any forward set on a LightningModule instance for
    Lightning's redirection: such a network's call opened no frame, each layer
    ran as a network of its own, (10, 10, 4, 1) from a call and (5, 5, 4, 1)
    from predict (probe falsepos, C2)."""
    net, x = _SelfPatched(), torch.randn(4, 3)
    assert net(x).shape == (10, 4, 1)
    assert bnn.predict(net, x, bnn.Normal(scale=1.0), samples=5).samples.shape == (
        5,
        4,
        1,
    )
