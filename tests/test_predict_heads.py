"""predict on a network with several outputs: one likelihood per head."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import pyrolite_bnn as bnn


class _TwoHeads(nn.Module):
    """Heads ``a`` and ``b = 2 a + 1``: one network, so ``b`` is ``2 a + 1``
    particle by particle exactly when both come from the same particles."""

    def __init__(self, as_tuple: bool = False) -> None:
        super().__init__()
        self.body, self.head = bnn.VILinear(3, 8), bnn.VILinear(8, 4)
        self.as_tuple = as_tuple

    def forward(self, x: Tensor) -> Any:
        a = self.head(torch.tanh(self.body(x)))
        if self.as_tuple:
            return a, torch.zeros_like(a), 2 * a + 1
        return {"a": a, "b": 2 * a + 1, "unused": "note"}


class _PickA(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)["a"]  # type: ignore[no-any-return]


LIKELIHOODS = {"a": bnn.Categorical(), "b": bnn.Normal(scale=0.1)}


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"batch_size": 3},  # chunks
        {"memory_budget": 2_000},  # each chunk draws anew, particle groups
        {"mode": "mean"},
    ],
)
def test_every_head_comes_from_the_same_particles(options: dict[str, Any]) -> None:
    """Before, a dict output was refused ("needs a network that returns one
    tensor") and a wrapper per head ran the network once per head, on
    different draws. Now head ``b`` is ``2 a + 1`` particle by particle in
    every path (one call, chunks, chunks that draw anew, particle groups, the
    posterior mean), and head ``a`` is what a wrapper picking it predicts at
    the same seed."""
    net, x = _TwoHeads(), torch.randn(10, 3)
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # over a tiny budget
        preds = bnn.predict(net, x, LIKELIHOODS, samples=6, **options)
    assert set(preds) == {"a", "b"}
    a, b = preds["a"].samples, preds["b"].samples
    assert a.shape == b.shape == ((1 if options.get("mode") else 6), 10, 4)
    torch.testing.assert_close(b, 2 * a + 1, rtol=0, atol=1e-6)
    assert preds["a"].predictive is not preds["b"].predictive
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        alone = bnn.predict(_PickA(net), x, bnn.Categorical(), samples=6, **options)
    torch.testing.assert_close(alone.samples, a, rtol=0, atol=0)


def test_a_tuple_of_likelihoods_reads_outputs_by_position() -> None:
    """``None`` skips an output; the result has ``None`` there."""
    net, x = _TwoHeads(as_tuple=True), torch.randn(5, 3)
    first, skipped, last = bnn.predict(
        net, x, (bnn.Categorical(), None, bnn.Normal(scale=0.5)), samples=4
    )
    assert skipped is None
    assert first is not None
    assert last is not None
    torch.testing.assert_close(last.samples, 2 * first.samples + 1)
    assert first.probs.shape == (5, 4)
    assert last.variance.shape == (5, 4)


def test_one_calibration_per_head() -> None:
    """Each head's summaries use its own calibration; ``None`` or a missing
    key leaves a head uncalibrated."""
    net, x = _TwoHeads(), torch.randn(5, 3)
    scaled = bnn.TemperatureScaling(2.0)
    torch.manual_seed(0)
    preds = bnn.predict(net, x, LIKELIHOODS, samples=4, calibration={"a": scaled})
    torch.manual_seed(0)
    alone = bnn.predict(
        _PickA(net), x, bnn.Categorical(), samples=4, calibration=scaled
    )
    torch.testing.assert_close(preds["a"].probs, alone.probs)
    assert preds["b"].predictive is not None
    torch.testing.assert_close(
        preds["b"].variance, torch.full((5, 4), 0.01) + preds["b"].epistemic_var
    )


@pytest.mark.parametrize(
    ("net", "likelihoods", "error", "match"),
    [
        (_TwoHeads(), bnn.Categorical(), TypeError, r"one likelihood per output"),
        (
            _TwoHeads(),
            {"c": bnn.Normal(scale=1.0)},
            KeyError,
            r"'c'.*outputs: 'a', 'b'",
        ),
        (
            _TwoHeads(),
            (bnn.Normal(scale=1.0),),
            TypeError,
            r"must return a tuple or list of 1",
        ),
        (
            _TwoHeads(True),
            {"a": bnn.Normal(scale=1.0)},
            TypeError,
            r"must return a dict",
        ),
        (_TwoHeads(True), [bnn.Normal(scale=1.0)] * 2, TypeError, r"tuple of 3"),
        (
            _TwoHeads(),
            {"unused": bnn.Normal(scale=1.0)},
            TypeError,
            r"'unused'.*as a tensor",
        ),
        (_TwoHeads(), {}, ValueError, r"at least one likelihood"),
        (_TwoHeads(), {"a": "normal"}, TypeError, r"output 'a'"),
    ],
)
def test_likelihoods_that_do_not_fit_the_outputs_are_refused(
    net: nn.Module, likelihoods: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        bnn.predict(net, torch.randn(5, 3), likelihoods, samples=2, batch_size=5)


def test_calibrations_must_be_shaped_like_the_likelihoods() -> None:
    with pytest.raises(TypeError, match="calibration in the same shape"):
        bnn.predict(
            _TwoHeads(),
            torch.randn(5, 3),
            LIKELIHOODS,
            samples=2,
            calibration=bnn.TemperatureScaling(),
        )


def test_a_head_without_particles_is_named() -> None:
    """The "every particle gave the same output" warning names the head."""

    class _Constant(_TwoHeads):
        def forward(self, x: Tensor) -> Any:
            out = super().forward(x)
            return {"a": out["a"], "flat": x[:, :1] * 2}

    with pytest.warns(UserWarning, match=r"output\(s\) 'flat' of the network"):
        bnn.predict(
            _Constant(),
            torch.randn(5, 3),
            {"a": bnn.Categorical(), "flat": bnn.Normal(scale=1.0)},
            samples=3,
        )
