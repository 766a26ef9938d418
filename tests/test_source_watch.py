"""The loss's warning for optimizers of the torch model a network was converted from."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from torch import nn

import pyrolite_bnn as bnn


class _Pretrained(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.backbone(x))
        return out


def _messages(
    net: nn.Module, optimizer: torch.optim.Optimizer, steps: int
) -> list[tuple[int, str]]:
    """(step, message) of the warnings of a hand-written loop."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), dataset_size=16)
    found = []
    for step in range(steps):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            optimizer.zero_grad()
            loss_fn(net(x), y).backward()
            optimizer.step()
        found += [(step, str(w.message)) for w in caught]
    return found


def test_an_optimizer_made_for_the_torch_model_is_named_at_once() -> None:
    """bnn.convert returns a copy: the torch habit of converting in place left
    a loop that trained nothing, warned at step 20 about a guide."""
    pretrained = _Pretrained()
    optimizer = torch.optim.Adam(pretrained.parameters(), lr=1e-2)
    net = bnn.convert(pretrained, moped=0.1)
    messages = _messages(net, optimizer, 24)
    assert len(messages) == 1  # not again, and no guide warning after it
    step, message = messages[0]
    assert step == 1  # the loss after the optimizer's first step
    assert message.startswith("Adam steps parameters of the torch model")
    assert "8 of the network's trainable parameters" in message
    assert "'backbone.0.posterior.weight.loc_unconstrained'" in message
    assert "bnn.convert returns a new model" in message


def test_parameter_groups_taken_from_the_torch_model_are_named() -> None:
    """The backbone's group from the torch model, the head's from the network:
    only the head trained, silently."""
    pretrained = _Pretrained()
    backbone = list(pretrained.backbone.parameters())
    net = bnn.convert(pretrained, include=["head"])
    optimizer = torch.optim.Adam(
        [{"params": backbone, "lr": 1e-3}, {"params": net.head.parameters()}]
    )
    messages = _messages(net, optimizer, 3)
    assert len(messages) == 1
    assert (
        "2 of the network's trainable parameters (e.g. 'backbone.0.weight')"
        in (messages[0][1])
    )


def test_the_torch_model_trained_beside_the_network_is_no_mistake() -> None:
    pretrained = _Pretrained()
    net = bnn.convert(pretrained)
    torch_optimizer = torch.optim.SGD(pretrained.parameters(), lr=1e-2)
    x = torch.randn(16, 3)
    torch_optimizer.zero_grad()
    pretrained(x).square().mean().backward()
    torch_optimizer.step()
    assert _messages(net, torch.optim.Adam(net.parameters(), lr=1e-2), 4) == []


@pytest.mark.parametrize("frozen", ["backbone", "none"])
def test_an_optimizer_of_the_network_alone_is_silent(frozen: str) -> None:
    """Frozen parts (requires_grad_(False)) need no optimizer."""
    net = bnn.convert(_Pretrained())
    if frozen == "backbone":
        net.backbone.requires_grad_(False)
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert _messages(net, torch.optim.Adam(trainable, lr=1e-2), 4) == []


def test_fit_says_it_once_before_the_first_step() -> None:
    """fit's own check of the optimizer and the loss's watch both warned about
    the same optimizer (two warnings, the first without the cause)."""
    pretrained = _Pretrained()
    backbone = list(pretrained.backbone.parameters())
    net = bnn.convert(pretrained, include=["head"])
    optimizer = torch.optim.Adam(
        [{"params": backbone, "lr": 1e-3}, {"params": net.head.parameters()}]
    )
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), dataset_size=16)
    data = [(torch.randn(8, 3), torch.randn(8)) for _ in range(4)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bnn.fit(net, loss_fn, data, epochs=2, optimizer=optimizer, progress=False)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert messages[0].startswith("2 of the model's trainable parameters")
    assert "bnn.convert copied into this network" in messages[0]
    # The loss used by hand afterwards stays quiet about this network too.
    assert _messages(net, optimizer, 3) == []


def test_fit_with_an_incomplete_optimizer_of_the_network_names_no_convert() -> None:
    net = bnn.convert(_Pretrained())
    optimizer = torch.optim.Adam(net.head.parameters(), lr=1e-2)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=0.1), dataset_size=16)
    data = [(torch.randn(8, 3), torch.randn(8))]
    with pytest.warns(UserWarning, match="A layer replaced") as caught:
        bnn.fit(net, loss_fn, data, epochs=1, optimizer=optimizer, progress=False)
    assert not any("bnn.convert copied" in str(w.message) for w in caught)


def test_the_torch_model_converts_after_convert_and_is_still_watched(
    swap_conversions: bool,
) -> None:
    """``convert`` kept weak references to the torch model's parameters: under
    torch's swap flag (``set_swap_module_params_on_conversion``) a conversion
    of that model afterwards failed ("Couldn't swap Linear.weight"; probe
    falsepos23a). It converts (the converted network too), and an optimizer
    made for it is still named once the model itself is gone (the habit
    ``model = bnn.convert(model)``)."""
    pretrained = _Pretrained()
    net = bnn.convert(pretrained, moped=0.1)
    pretrained.float()  # swaps every parameter under the flag, as .cuda() would
    net.float()
    optimizer = torch.optim.Adam(pretrained.parameters(), lr=1e-2)
    del pretrained
    gc.collect()
    messages = _messages(net, optimizer, 3)
    assert len(messages) == 1
    assert messages[0][1].startswith("Adam steps parameters of the torch model")
