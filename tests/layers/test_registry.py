"""The layer registry: lookups, arguments, conflicting registrations, a user's class."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import pyrolite_bnn as bnn
from pyrolite_bnn.layers import functional, registry
from pyrolite_bnn.variables import UnitLayout


def test_lookup_follows_subclasses() -> None:
    class MyLinear(bnn.VILinear):
        pass

    entry = registry.for_bayesian(MyLinear(2, 3))
    assert entry is not None
    assert entry.torch_cls is nn.Linear
    assert registry.for_torch(nn.Dropout) is None
    assert registry.for_bayesian(bnn.VIModule) is None


def test_arguments_are_read_from_either_class() -> None:
    entry = registry.for_torch(nn.ConvTranspose2d)
    assert entry is not None
    options = {"stride": 2, "padding": 1, "output_padding": 1, "bias": False}
    ours = entry.arguments(bnn.VIConvTranspose2d(4, 2, 3, **options))
    theirs = entry.arguments(nn.ConvTranspose2d(4, 2, 3, **options))
    assert ours == theirs
    assert ours["bias"] is False
    assert ours["output_padding"] == (1, 1)
    embedding = registry.for_torch(nn.Embedding)
    assert embedding is not None
    assert "_weight" not in embedding.arguments(nn.Embedding(3, 2))


def test_a_torch_class_has_one_bayesian_twin() -> None:
    with pytest.raises(ValueError, match="Linear is already registered to"):

        @registry.register(nn.Linear)
        class OtherLinear(bnn.VIModule):
            pass


# A layer class of a user's, registered as the how-to's "Teach convert a layer
# of your own" does: transformers' Conv1D (a Linear whose weight is stored
# (in, out)), which takes no device=/dtype=, and a Bayesian twin that takes no
# estimator=, running every particle's weights through the functional ops.
class Conv1D(nn.Module):
    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.nx = nx
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        size_out = (*x.size()[:-1], self.nf)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(
            size_out
        )


class VIConv1D(bnn.VIModule):
    def __init__(
        self,
        nf: int,
        nx: int,
        *,
        prior: object = None,
        variational: bnn.VariationalFamily | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.nf = nf
        self.nx = nx
        options: dict[str, Any] = {"device": device, "dtype": dtype}
        self.declare_random_variable(
            "weight", (nx, nf), prior, variational, units=UnitLayout(dim=1), **options
        )
        self.declare_random_variable("bias", (nf,), prior, variational, **options)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.transpose(-1, -2)  # F.linear's (out, in), per particle
        return functional.linear(x, weight, self.bias, functional.current_batch_size())


@pytest.fixture
def conv1d() -> Iterator[None]:
    """``VIConv1D`` registered for ``Conv1D`` during one test."""
    registry.register(Conv1D)(VIConv1D)
    yield
    registry.unregister(Conv1D)


def _conv1d_model() -> nn.Module:
    model = nn.Sequential(Conv1D(8, 4), nn.GELU(), Conv1D(3, 8)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    return model


@pytest.mark.usefixtures("conv1d")
def test_a_registered_class_of_a_users_converts_and_goes_back() -> None:
    """convert, predict(mode="mean") and to_deterministic know a user's class.

    Guards the extension point: old code passed convert's ``estimator=`` to
    every Bayesian constructor and ``device=``/``dtype=`` to every torch one
    (transformers' ``Conv1D`` takes neither), and had no ``unregister``.
    """
    model = _conv1d_model()
    x = torch.randn(5, 6, 4)
    net = bnn.convert(model)
    assert [type(m).__name__ for m in net] == ["VIConv1D", "GELU", "VIConv1D"]
    assert [v.site for v in net.random_variables()] == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    ]
    with torch.no_grad():
        expected = model(x)
        mean = bnn.predict(net, x, bnn.Normal(scale=1.0), mode="mean").samples[0]
        plain = bnn.to_deterministic(net)
        assert [type(m) for m in plain] == [Conv1D, nn.GELU, Conv1D]
        # The same weights through the same ops: exactly the model.
        torch.testing.assert_close(mean, expected, rtol=0, atol=0)
        torch.testing.assert_close(plain(x), expected, rtol=0, atol=0)
    double = bnn.to_deterministic(bnn.convert(model.double()))
    assert double[0].weight.dtype == torch.float64  # applied by .to(): no dtype=


@pytest.mark.usefixtures("conv1d")
def test_each_drawn_network_of_a_registered_class_is_the_torch_model() -> None:
    """Per particle, a converted user's layer is torch's at that particle's draw.

    The second ``Conv1D`` gets folded ``(B * S, L, 8)`` activations, the first
    the shared input. Float32 round-off of the same products summed in another
    order: tolerance 1e-6 (the outputs are of order 10; the particles differ by
    more than 1).
    """
    model = _conv1d_model()
    net = bnn.convert(model, moped=0.3).eval()
    x = torch.randn(5, 6, 4)
    nets = bnn.draw_networks(net, samples=3)
    with torch.no_grad():
        out = nets(x)
        references = []
        for s in range(3):
            plain = copy.deepcopy(model)
            plain.load_state_dict({k: w[s] for k, w in nets.weights().items()})
            references.append(plain(x))
    expected = torch.stack(references)
    assert (expected[0] - expected[1]).abs().max() > 1.0
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.usefixtures("conv1d")
def test_the_kl_counts_a_registered_class_of_a_users() -> None:
    """The loss's KL is the closed-form KL of every variable, the user's too."""
    net = bnn.convert(_conv1d_model(), moped=0.3)
    record = net(torch.randn(5, 6, 4), samples=4).bnn_record
    kl = record.kl("analytic")
    expected = sum(
        torch.distributions.kl_divergence(
            v.posterior.distribution(), v.module.prior[v.name](v.shape)
        )
        for v in net.random_variables()
    )
    assert isinstance(expected, Tensor)
    assert record.analytic_sites == ["0.weight", "0.bias", "2.weight", "2.bias"]
    torch.testing.assert_close(kl, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.usefixtures("conv1d")
def test_an_option_a_registered_class_does_not_take_is_refused() -> None:
    """``estimator=`` at its default is left out; another value is refused."""
    with pytest.raises(
        ValueError,
        match=r"cannot convert 0 \(Conv1D\): VIConv1D takes no estimator='flipout'",
    ):
        bnn.convert(_conv1d_model(), estimator="flipout")


def test_a_twin_must_take_the_torch_arguments() -> None:
    """A Bayesian class missing a constructor argument of torch's is refused."""
    with pytest.raises(TypeError, match=r"takes no 'nx'; convert builds it"):

        @registry.register(Conv1D)
        class Twin(bnn.VIModule):
            def __init__(self, nf: int) -> None:
                super().__init__()

    assert registry.for_torch(Conv1D) is None


def test_unregister_takes_a_registration_back() -> None:
    registry.register(Conv1D)(VIConv1D)
    assert registry.for_bayesian(VIConv1D) is registry.for_torch(Conv1D)
    entry = registry.unregister(Conv1D)
    assert entry.bayesian_cls is VIConv1D
    assert registry.for_torch(Conv1D) is None
    assert registry.for_bayesian(VIConv1D) is None
    with pytest.raises(ValueError, match="Conv1D is not registered"):
        registry.unregister(Conv1D)


def test_a_twin_that_drops_an_argument_is_named() -> None:
    """The arguments are read back by name: a twin must keep them as attributes."""

    class Forgetful(VIConv1D):
        def __init__(self, nf: int, nx: int) -> None:
            super().__init__(nf, nx)
            del self.nx

    registry.register(Conv1D)(Forgetful)
    try:
        net = bnn.convert(_conv1d_model())
        with pytest.raises(AttributeError, match="Forgetful has no attribute 'nx'"):
            bnn.to_deterministic(net)
    finally:
        registry.unregister(Conv1D)


class _OtherConv1D(Conv1D):
    """Another torch class of Conv1D's arguments."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 2.0


@pytest.mark.usefixtures("conv1d")
def test_a_twin_serves_one_torch_class() -> None:
    """A twin registered for a second torch class was accepted, and
    ``to_deterministic`` of the first class's network built the second
    (outputs off by 0.43; probe falsepos9)."""
    with pytest.raises(ValueError, match="already the Bayesian twin of"):
        registry.register(_OtherConv1D)(VIConv1D)
    assert registry.for_torch(_OtherConv1D) is not None  # by its base: Conv1D's
    model = _conv1d_model()
    plain = bnn.to_deterministic(bnn.convert(model))
    assert type(plain[0]) is Conv1D
