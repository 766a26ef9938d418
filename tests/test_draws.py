"""Weights drawn on first use (``pyrolite_bnn._draws``): same values, less memory."""

from __future__ import annotations

import pyro
import pytest
import torch
from torch import Tensor, nn

import pyrolite_bnn as bnn
from pyrolite_bnn.record import LayerRecord


def _net() -> bnn.VISequential:
    return bnn.VISequential(
        bnn.VILinear(3, 4, estimator="reparam"),
        nn.ReLU(),
        bnn.VILinear(4, 2, estimator="reparam"),
    )


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
            ],
        ),
    ],
)
def test_draws_are_the_traced_guides_and_are_not_kept(device: str) -> None:
    """Drawn lazily, the weights still equal the traced guide's under one seed."""
    net = _net().to(device)
    x = torch.randn(5, 3, device=device)
    pyro.set_rng_seed(4)
    out = net(x, samples=3)
    record = out.bnn_record
    assert isinstance(record, LayerRecord)
    # nothing weight-sized is held for the loss: only random states
    assert all(value is None for value in record.draws.values)
    assert all(state is not None for state in record.draws.states)
    pyro.set_rng_seed(4)
    guide_trace = pyro.poutine.trace(net.guide).get_trace(samples=3)
    for index, variable in enumerate(record.variables):
        replayed = record.draws.value(index)
        assert replayed is not None
        traced = guide_trace.nodes[variable.site]["value"]
        torch.testing.assert_close(replayed.reshape(traced.shape), traced)
    # replaying did not move the random stream: the next call draws as usual
    pyro.set_rng_seed(4)
    net(x, samples=3)
    expected = torch.randn(2, device=device)
    pyro.set_rng_seed(4)
    net(x, samples=3)
    record.draws.value(0)
    assert torch.equal(torch.randn(2, device=device), expected)


class _TwoReads(bnn.VIModule):
    """Reads its weight twice in one forward pass (the second read is replayed)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = bnn.VILinear(3, 2, estimator="reparam")
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen = [self.layer.weight, self.layer.weight]
        out: Tensor = self.layer(x)
        return out


def test_a_second_read_in_one_call_gets_the_same_draw() -> None:
    net = _TwoReads()
    net(torch.randn(4, 3), samples=2)
    first, second = net.seen
    assert torch.equal(first, second)
    assert first.requires_grad
