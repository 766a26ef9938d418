from __future__ import annotations

import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from torch import nn

import pyrolite_bnn as bnn


class Net(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv = bnn.VIConv2d(1, 2, 3, padding=1, padding_mode="reflect")
        self.flat = nn.Flatten()
        self.block = bnn.VIResidualConnection(bnn.VILinear(32, 32), nn.Tanh())
        self.head = bnn.VILinear(32, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.flat(torch.relu(self.conv(x)))))


def _widen(net: nn.Module) -> None:
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("rho_unconstrained"):
                p.fill_(0.0)


def test_custom_network_matches_posterior_mean_prediction() -> None:
    net = Net()
    _widen(net)  # wide posteriors: sampling would be visibly different
    x = torch.randn(5, 1, 4, 4)
    plain = bnn.to_deterministic(net)
    assert not any(
        isinstance(m, bnn.VIModule) for m in plain.modules() if m is not plain.network
    )  # type: ignore[union-attr]
    mean = bnn.predict(net, x, bnn.Categorical(), mode="mean").samples[0]
    torch.testing.assert_close(plain(x), mean, rtol=1e-6, atol=1e-6)
    assert net(x).shape == (10, 5, 3)  # the original is untouched


def test_sequential_becomes_pure_torch() -> None:
    net = bnn.VISequential(bnn.VILinear(3, 4), nn.ReLU(), bnn.VILinear(4, 1))
    plain = bnn.to_deterministic(net)
    assert isinstance(plain, nn.Sequential)
    assert isinstance(plain[0], nn.Linear)
    torch.testing.assert_close(plain[0].weight, net[0].posterior["weight"].loc.detach())


def test_autoguide_medians_are_used() -> None:
    net = bnn.VILinear(3, 2)
    net.guide = AutoNormal(net.prior_model, init_loc_fn=net.init_loc_fn)
    with torch.no_grad():
        net.guide.inner.locs.weight.add_(1.0)
    plain = bnn.to_deterministic(net)
    torch.testing.assert_close(plain.weight, net.guide.median()["weight"])


def test_rejects_non_vimodule() -> None:
    with pytest.raises(TypeError, match=r"to_deterministic needs a bnn\.VIModule"):
        bnn.to_deterministic(nn.Linear(2, 2))  # type: ignore[arg-type]
