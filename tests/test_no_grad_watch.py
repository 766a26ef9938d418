"""The loss's warning for Bayesian layers "frozen" with torch.no_grad() in forward."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import pyrolite_bnn as bnn

_MESSAGE = r"backbone\.0 ran without gradients.*requires_grad_\(False\)"


class _Frozen(nn.Module):
    """A backbone run under torch.no_grad() (torch's freezing habit), a head."""

    def __init__(self, no_grad: bool = True) -> None:
        super().__init__()
        self.no_grad = no_grad
        self.backbone = nn.Sequential(nn.Linear(3, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.no_grad):
            features = self.backbone(x)
        out: torch.Tensor = self.head(features)
        return out


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(16, 3), torch.randn(16)


def _loss(heat: float = 1.0) -> bnn.KullbackLeiblerLoss:
    return bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), dataset_size=16, heat=heat)


@pytest.mark.parametrize("estimator", ["auto", "reparam"])
def test_a_trainable_bayesian_layer_run_under_no_grad_is_warned_about_once(
    estimator: str,
) -> None:
    """Its posterior gets the KL's gradient only: an optimizer drags it to the
    prior (a MOPED backbone's std 0.04 -> 1.0 in 1000 steps), silently."""
    net = bnn.convert(_Frozen(), moped=0.1, estimator=estimator)
    x, y = _data()
    loss_fn = _loss()
    with pytest.warns(UserWarning, match=_MESSAGE) as caught:
        loss_fn(net(x), y).backward()
    assert len(caught) == 1
    assert caught[0].filename == __file__  # the user's line
    loss_fn(net(x), y).backward()  # once per network (filterwarnings=error)
    # What the warning is about: the backbone's gradient is the KL's alone.
    rho = net.backbone[0].posterior["weight"].rho_unconstrained
    assert rho.grad is not None
    assert rho.grad.abs().max() > 0
    net.zero_grad()
    loss_fn.heat = 0.0
    loss_fn(net(x), y).backward()
    assert rho.grad is not None
    assert rho.grad.abs().max() == 0


def test_a_plain_root_with_a_layer_run_under_no_grad_is_warned_about() -> None:
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(bnn.VILinear(3, 8), nn.Tanh())
            self.head = bnn.VILinear(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                features = self.backbone(x)
            out: torch.Tensor = self.head(features)
            return out

    x, y = _data()
    with pytest.warns(UserWarning, match=_MESSAGE):
        _loss()(Plain()(x), y)


def test_no_grad_layers_frozen_with_requires_grad_false_are_not_warned_about() -> None:
    """The documented freeze: the posterior does not move at all."""
    net = bnn.convert(_Frozen(), moped=0.1)
    net.backbone.requires_grad_(False)
    x, y = _data()
    _loss()(net(x), y).backward()


def test_a_deterministic_part_under_no_grad_is_not_warned_about() -> None:
    net = bnn.convert(_Frozen(), include=["head"])
    x, y = _data()
    _loss()(net(x), y).backward()


def test_evaluations_and_untempered_losses_are_not_warned_about() -> None:
    """No gradient for the KL (evaluation, predict) or no KL (heat=0)."""
    net = bnn.convert(_Frozen(), moped=0.1)
    x, y = _data()
    out = net(x)
    with torch.no_grad():
        _loss()(out, y)
    with torch.no_grad():
        _loss()(net(x), y)
    bnn.predict(net, x, bnn.Normal(scale=0.1), samples=3)
    _loss(heat=0.0)(net(x), y).backward()


def test_a_weight_also_read_with_gradients_is_not_warned_about() -> None:
    """A no_grad read besides the layer's own call (a norm logged in forward)."""

    class Logged(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = bnn.VISequential(bnn.VILinear(3, 8, estimator="reparam"))
            self.head = bnn.VILinear(8, 1)
            self.norm = torch.tensor(0.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                self.norm = self.backbone[0].weight.norm()
            out: torch.Tensor = self.head(self.backbone(x).tanh())
            return out

    x, y = _data()
    _loss()(Logged()(x), y).backward()


def test_reentrant_checkpointing_of_the_whole_call_is_not_warned_about() -> None:
    """torch runs the checkpointed call under no_grad: no layer of a call
    with gradients ran without them."""
    net = bnn.convert(_Frozen(no_grad=False), moped=0.1)
    x, y = _data()
    with warnings.catch_warnings():
        # torch's own notice about use_reentrant=True inputs without gradients
        warnings.filterwarnings("ignore", "None of the inputs have requires_grad")
        out = checkpoint(net, x.requires_grad_(), use_reentrant=True)
    _loss()(out, y).backward()
