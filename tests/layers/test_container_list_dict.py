"""VIModuleList and VIModuleDict: torch's container API, Bayesian-aware."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import nn

import pyrolite_bnn as bnn

N = 40


def _layers(count: int) -> list[nn.Module]:
    return [bnn.VILinear(3, 3) if i % 2 == 0 else nn.Tanh() for i in range(count)]


def _list_ops() -> list[Callable[[Any, list[nn.Module]], Any]]:
    return [
        lambda c, m: c.append(m[0]),
        lambda c, m: c.extend(m[1:4]),
        lambda c, m: c.insert(1, m[4]),
        lambda c, m: c.insert(len(c), m[5]),
        lambda c, m: c.__delitem__(0),
        lambda c, m: c.__setitem__(-1, m[6]),
        lambda c, m: c.pop(2),
        lambda c, m: c.__delitem__(slice(0, 2)),
        lambda c, m: c.__iadd__(m[7:9]),
    ]


def test_module_list_matches_torch_module_list() -> None:
    modules = _layers(9)
    ours, theirs = bnn.VIModuleList(), nn.ModuleList()
    for op in _list_ops():
        a, b = op(ours, modules), op(theirs, modules)
        if isinstance(b, nn.Module) and not isinstance(b, nn.ModuleList):
            assert a is b
        assert list(ours) == list(theirs)
        assert len(ours) == len(theirs)
        assert [name for name, _ in ours.named_children()] == [
            name for name, _ in theirs.named_children()
        ]
    assert ours[-1] is theirs[-1]
    assert isinstance(ours[1:], bnn.VIModuleList)
    assert list(ours[1:]) == list(theirs[1:])
    assert list(ours + modules[:1]) == list(theirs + modules[:1])
    with pytest.raises(IndexError, match="index 7 is out of range"):
        ours[7]
    with pytest.raises(TypeError, match="should be called with an iterable"):
        ours.extend(nn.Tanh())  # type: ignore[arg-type]
    # Negative indices insert as list.insert does (torch's raises KeyError).
    reference = list(ours)
    ours.insert(-1, modules[0])
    reference.insert(-1, modules[0])
    assert list(ours) == reference


class _Stack(bnn.VIModule):
    def __init__(self, estimator: str = "auto") -> None:
        super().__init__()
        self.blocks = bnn.VIModuleList(
            [bnn.VILinear(3, 3, estimator=estimator) for _ in range(3)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.tanh(block(x))
        return x


def test_site_names_follow_the_list_after_changes() -> None:
    """After del/insert, the Pyro sites (named by Pyro) and the network's random
    variables (named by module path) still agree, so the loss equals Pyro's."""
    net = _Stack(estimator="reparam")  # weights drawn, as Pyro's guide does
    first = net.blocks[0]
    del net.blocks[0]
    net.blocks.insert(1, bnn.VILinear(3, 3, estimator="reparam"))
    net.blocks.append(first)
    sites = [v.site for v in net.random_variables()]
    assert sites == [f"blocks.{i}.{n}" for i in range(4) for n in ("weight", "bias")]
    x, y = torch.randn(5, 3), torch.randn(5, 3)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), N, kl="mc")
    pyro.set_rng_seed(2)
    ours = loss_fn(net(x, samples=3), y)
    pyro.set_rng_seed(2)
    trace = poutine.trace(loss_fn.pyro_model(net)).get_trace(x, y, samples=3)
    assert [n for n in trace.nodes if n.startswith("blocks")] == sites
    pyro.set_rng_seed(2)
    theirs = Trace_ELBO().differentiable_loss(
        loss_fn.pyro_model(net), net.guide, x, y, samples=3
    )
    torch.testing.assert_close(ours, theirs / N, rtol=1e-6, atol=1e-6)


def test_modules_pyro_has_run_can_be_renumbered() -> None:
    """Pyro refuses to rename modules that have run inside Pyro inference (their
    parameters could sit in its global store under the old names); the
    library's parameters are module-local, so deleting from a list that ran
    renumbers the rest, and the sites follow the new positions."""
    net = _Stack()
    poutine.trace(net).get_trace(torch.randn(2, 3))
    kept = net.blocks[1]
    del net.blocks[0]
    assert net.blocks[0] is kept
    trace = poutine.trace(net).get_trace(torch.randn(2, 3))
    sites = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert sites == [
        "particles",
        "blocks.0.weight",
        "blocks.0.bias",
        "blocks.1.weight",
        "blocks.1.bias",
    ]
    assert [v.site for v in net.random_variables()] == sites[1:]


def test_module_dict_matches_torch_module_dict() -> None:
    modules = _layers(4)
    ours = bnn.VIModuleDict({"a": modules[0], "b": modules[1]})
    theirs = nn.ModuleDict({"a": modules[0], "b": modules[1]})
    for c in (ours, theirs):
        c.update([("c", modules[2])])
        c["a"] = modules[3]
        del c["b"]
    assert list(ours) == list(theirs) == ["a", "c"]
    assert list(ours.keys()) == list(theirs.keys())
    assert list(ours.values()) == list(theirs.values())
    assert list(ours.items()) == list(theirs.items())
    assert "c" in ours
    assert "b" not in ours
    assert ours.pop("c") is modules[2]
    assert len(ours) == 1
    ours.clear()
    assert len(ours) == 0
    with pytest.raises(KeyError):
        ours["a"]
    with pytest.raises(ValueError, match="key 'prior' is reserved"):
        ours["prior"] = nn.Tanh()
    with pytest.raises(ValueError, match="element #0 has length 3"):
        ours.update([("a", nn.Tanh(), 1)])  # type: ignore[list-item]


def test_module_dict_network_and_export() -> None:
    class Heads(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.heads = bnn.VIModuleDict(
                {"mean": bnn.VILinear(3, 1), "scale": bnn.VILinear(3, 1)}
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.heads["mean"](x) + self.heads["scale"](x).exp()

    net = Heads()
    assert [v.site for v in net.random_variables()] == [
        "heads.mean.weight",
        "heads.mean.bias",
        "heads.scale.weight",
        "heads.scale.bias",
    ]
    x = torch.randn(4, 3)
    plain = bnn.to_deterministic(net)
    assert isinstance(plain.network.heads, nn.ModuleDict)  # type: ignore[union-attr]
    mean = bnn.predict(net, x, bnn.Normal(scale=1.0), mode="mean").samples[0]
    torch.testing.assert_close(plain(x), mean, rtol=1e-6, atol=1e-6)


def test_module_list_export() -> None:
    net = _Stack()
    plain = bnn.to_deterministic(net)
    assert isinstance(plain.network.blocks, nn.ModuleList)  # type: ignore[union-attr]
    assert all(isinstance(m, nn.Linear) for m in plain.network.blocks)  # type: ignore[union-attr]
    x = torch.randn(4, 3)
    mean = bnn.predict(net, x, bnn.Normal(scale=1.0), mode="mean").samples[0]
    torch.testing.assert_close(plain(x), mean, rtol=1e-6, atol=1e-6)


def test_torch_containers_convert_through_the_registry() -> None:
    from pyrolite_bnn.layers import registry

    linear = nn.Linear(2, 2)
    for torch_container, expected in [
        (nn.ModuleList([linear]), bnn.VIModuleList),
        (nn.ModuleDict({"a": linear}), bnn.VIModuleDict),
        (nn.Sequential(linear), bnn.VISequential),
    ]:
        entry = registry.for_torch(torch_container)
        assert entry is not None
        children = {
            name: registry.for_torch(child).to_bayesian(child)  # type: ignore[union-attr]
            for name, child in torch_container.named_children()
        }
        converted = entry.to_bayesian(torch_container, children)
        assert type(converted) is expected
        assert converted.random_variables()[0].site.endswith("weight")


def test_moving_a_pyro_module_of_the_users_that_ran_is_a_clear_error() -> None:
    """A Pyro module of the user's (not the library's) that ran inside Pyro
    inference is refused a new place by Pyro; the error says why."""
    from pyro.nn import PyroModule

    class Inner(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.linear = PyroModule[nn.Linear](3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.linear(x)
            return out

    class Net(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = bnn.VIModuleList([bnn.VILinear(3, 3), Inner()])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return x

    net = Net()
    poutine.trace(net).get_trace(torch.randn(2, 3))
    with pytest.raises(ValueError, match="has already run inside Pyro inference"):
        del net.blocks[0]
