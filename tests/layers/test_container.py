"""``VISequential``'s list methods: sites are renumbered like ``nn.Sequential``."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from pyro.nn import PyroParam
from torch import nn

import pyrolite_bnn as bnn
from pyrolite_bnn import vi


def _sites(seq: bnn.VISequential) -> list[str]:
    return [v.site for v in seq.random_variables()]


def test_extend_insert_pop_setitem_delitem_match_nn_sequential() -> None:
    first, second = bnn.VILinear(2, 3), bnn.VILinear(3, 4)
    seq = bnn.VISequential(first, nn.ReLU())
    plain = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    seq.extend([second])
    plain.extend([nn.Linear(3, 4)])
    seq.insert(0, nn.Identity())
    plain.insert(0, nn.Identity())
    assert list(seq._modules) == list(plain._modules) == ["0", "1", "2", "3"]
    assert _sites(seq) == ["1.weight", "1.bias", "3.weight", "3.bias"]
    assert isinstance(seq.pop(0), nn.Identity)
    assert _sites(seq) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    seq[1] = nn.Tanh()
    assert isinstance(seq[1], nn.Tanh)
    del seq[0]
    assert [type(m).__name__ for m in seq] == ["Tanh", "VILinear"]
    assert seq[1] is second
    assert _sites(seq) == ["1.weight", "1.bias"]
    assert seq(torch.randn(5, 3), samples=2).shape == (2, 5, 4)


def test_insert_negative_index_and_slice_delete() -> None:
    seq = bnn.VISequential(nn.ReLU(), nn.Tanh(), nn.Sigmoid())
    seq.insert(-1, nn.Identity())
    assert [type(m).__name__ for m in seq] == ["ReLU", "Tanh", "Identity", "Sigmoid"]
    del seq[1:3]
    assert [type(m).__name__ for m in seq] == ["ReLU", "Sigmoid"]
    assert list(seq._modules) == ["0", "1"]


def test_list_methods_reject_bad_input() -> None:
    seq = bnn.VISequential(nn.ReLU())
    with pytest.raises(IndexError, match="out of range"):
        seq.insert(5, nn.Tanh())
    with pytest.raises(TypeError, match="torch modules"):
        seq[0] = "relu"  # type: ignore[assignment]
    with pytest.raises(IndexError):
        seq.pop(3)


def test_add_and_multiply_match_nn_sequential() -> None:
    """``+``, ``*``, ``+=``, ``*=`` hold the same modules, as torch's do."""
    layer = bnn.VILinear(3, 3)
    seq = bnn.VISequential(layer, nn.Tanh())
    added = seq + nn.Sequential(nn.ReLU())
    assert isinstance(added, bnn.VISequential)
    assert [type(m).__name__ for m in added] == ["VILinear", "Tanh", "ReLU"]
    assert added[0] is layer
    for twice in (seq * 2, 2 * seq):
        assert [m for m in twice] == [layer, seq[1], layer, seq[1]]
        assert _sites(twice) == ["0.weight", "0.bias"]  # one variable, shared
        assert twice(torch.randn(4, 3), samples=2).shape == (2, 4, 3)
    grown = bnn.VISequential(layer)
    grown += bnn.VISequential(nn.ReLU())
    grown *= 2
    assert len(grown) == 4
    assert grown[2] is layer
    with pytest.raises(TypeError, match=r"VISequential or nn\.Sequential"):
        seq + nn.ReLU()  # type: ignore[operator]
    with pytest.raises(ValueError, match="non-positive"):
        seq * 0
    with pytest.raises(TypeError, match="int number"):
        seq * 1.5  # type: ignore[operator]


class _SlicesInForward(bnn.VIModule):
    """``self.body[:2](x)``: a torch idiom that slices a container per call."""

    def __init__(self) -> None:
        super().__init__()
        self.body = bnn.VISequential(bnn.VILinear(3, 4), nn.ReLU(), bnn.VILinear(4, 2))
        self.heads = bnn.VIModuleList([bnn.VILinear(4, 2), bnn.VILinear(4, 2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.body[:2](x)
        return self.body[2:](hidden) + sum(h(hidden) for h in self.heads[0:])


def test_slices_taken_in_forward_leave_the_network_intact() -> None:
    """Slices share the modules and keep them in place (Pyro's module tree)."""
    import pyro
    from pyro.infer import SVI, Trace_ELBO

    net = _SlicesInForward()
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    piece = net.body[:2]
    assert isinstance(piece, bnn.VISequential)
    assert piece[0] is net.body[0]
    assert _sites(net) == [
        "body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias",
        "heads.0.weight", "heads.0.bias", "heads.1.weight", "heads.1.bias",
    ]  # fmt: skip
    likelihood = bnn.Categorical()
    for _ in range(2):  # twice: the first round must not break the second
        assert net(x, samples=3).shape == (3, 5, 2)
        assert bnn.predict(net, x, likelihood, mode="mean").probs.shape == (5, 2)
        loss_fn = bnn.KullbackLeiblerLoss(likelihood, 20)
        svi = SVI(loss_fn.pyro_model(net), net.guide, pyro.optim.Adam({}), Trace_ELBO())
        assert svi.step(x, y, samples=2) > 0


@pytest.mark.parametrize("container", [bnn.VISequential, vi.VISequential])
def test_replacing_a_bayesian_layer_keeps_its_place(
    container: type[bnn.VISequential],
) -> None:
    """Pyro replaces a submodule by deleting and appending it: ``seq[0] =
    VILinear(...)`` ran the network as [Tanh, old last layer, new first layer],
    silently when the shapes agree (a square network)."""
    torch.manual_seed(0)
    first, last = bnn.VILinear(4, 4), bnn.VILinear(4, 4)
    seq = container(bnn.VILinear(4, 4), nn.Tanh(), last)
    seq[0] = first
    assert list(seq._modules) == ["0", "1", "2"]
    assert [seq[0], seq[2]] == [first, last]
    x = torch.randn(3, 4)
    expected = bnn.VISequential(first, nn.Tanh(), last)
    torch.testing.assert_close(
        bnn.predict(seq, x, bnn.Normal(1.0), mode="mean").mean,
        bnn.predict(expected, x, bnn.Normal(1.0), mode="mean").mean,
    )
    named = bnn.VISequential(
        OrderedDict(fc1=bnn.VILinear(4, 4), act=nn.Tanh(), fc2=bnn.VILinear(4, 4))
    )
    named.fc1 = bnn.VILinear(4, 4)  # nn.Sequential keeps the place of a name
    assert list(named._modules) == ["fc1", "act", "fc2"]


def test_replacing_a_pyro_parameter_keeps_the_parameter_order() -> None:
    """Optimizer state is matched to ``parameters()`` by position."""
    posterior = bnn.VILinear(2, 3).posterior["weight"]
    before = [name for name, _ in posterior.named_parameters()]
    posterior.loc = PyroParam(torch.zeros(3, 2))
    assert [name for name, _ in posterior.named_parameters()] == before
