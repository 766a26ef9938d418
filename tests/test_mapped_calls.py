"""Whether one call mapped over several networks equals their calls in turn.

``DrawnNetworks.each`` tried ``torch.vmap`` on every network and ran the
networks in turn when it failed (probe falsepos27b): state changed by the
failed attempt stayed and was changed again, state changed by a successful
one changed once instead of ``S`` times, and tensors kept on modules were
``vmap``'s wrappers. :func:`unmapped_reason` decides before anything runs;
``tests/test_drawn_networks.py`` checks ``each``'s results and state.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_hook

import pyrolite_bnn as bnn
from pyrolite_bnn._mapped_calls import unmapped_reason
from pyrolite_bnn._plain_roots import watching_hook_id
from pyrolite_bnn.layers import functional
from pyrolite_bnn.layers.functional import current_batch_size


def _head(inner: nn.Module, features: int = 2) -> nn.Sequential:
    """``inner`` under a Bayesian layer: a network of the library's."""
    return nn.Sequential(inner, bnn.VILinear(features, 2))


class _Logger:
    def log(self, h: Tensor) -> None:
        self.last = h


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = bnn.VILinear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def encode(self, x: Tensor) -> Tensor:
        return self.layer(x)


class _StoresLast(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        self.last = x.detach()
        return x


class _LogsToAnObject(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = bnn.VILinear(2, 2)
        self.logger = _Logger()

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer(x)
        self.logger.log(h)
        return h


class _AppendsToAList(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = bnn.VILinear(2, 2)
        self.outputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer(x)
        self.outputs.append(h)
        return h


class _CallsAChildsMethod(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder()

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder.encode(x)


class _RegistersABuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = bnn.VILinear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer(x)
        self.register_buffer("seen", h.detach())
        return h


class _ReadsItsProperty(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = bnn.VILinear(2, 2)

    @property
    def gain(self) -> float:
        return 2.0

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x) * self.gain


class _Scaler:
    """A callable object of the user's: its ``__call__`` is not read."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, h: Tensor) -> Tensor:
        self.calls += 1
        return 2 * h


class _CallsAnAttribute(nn.Module):
    """Calls what it keeps in ``self.act``."""

    def __init__(self, act: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.layer = bnn.VILinear(2, 2)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.layer(x))


class _Harmless(nn.Module):
    """Reads that change nothing: a dict's ``get``, a buffer's methods, a
    parameter that is ``None``, a child's ``forward``, its own helper."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = bnn.VILinear(2, 2)
        self.encoder = _Encoder()
        self.config = {"gain": 2.0}
        self.register_buffer("scale", torch.ones(()))
        self.register_parameter("offset", None)

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer(x) * self.config.get("gain", 1.0) * self.scale.exp()
        if self.offset is not None:
            h = h + self.offset
        outputs = [h, self.encoder.forward(x)]  # a local list: its own
        outputs.append(self.shifted(h))
        return torch.stack(outputs).sum(0)

    def shifted(self, h: Tensor) -> Tensor:
        return h + self.scale


class _DiagonalAffine(bnn.VIModule):
    """The how-to's custom Bayesian layer: reads its own random variables."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.declare_random_variable("scale", (features,), init=nn.init.ones_)
        self.declare_random_variable("shift", (features,), init=nn.init.zeros_)

    def forward(self, x: Tensor) -> Tensor:
        weight = torch.diag_embed(self.scale)
        return functional.linear(x, weight, self.shift, current_batch_size())


_CASES: dict[str, tuple[Callable[[], nn.Module], str | None]] = {
    "a Bayesian MLP": (
        lambda: bnn.VISequential(bnn.VILinear(2, 4), nn.Tanh(), bnn.VILinear(4, 2)),
        None,
    ),
    "eval-mode batch norm": (lambda: _head(nn.BatchNorm1d(2)).eval(), None),
    "harmless reads": (lambda: _Harmless().eval(), None),
    "a module of the user's with buffers in training mode": (
        _Harmless,
        r"the network \(_Harmless\): in training mode it may update its buffers",
    ),
    "a custom Bayesian layer": (lambda: _head(_DiagonalAffine(2)), None),
    "a forward hook": (
        lambda: _head(_hooked(nn.Tanh())).eval(),
        r"module '0' \(Tanh\): hooks run with its calls",
    ),
    "training-mode batch norm": (
        lambda: _head(nn.BatchNorm1d(2)),
        "batch norm takes the batch's statistics",
    ),
    "training-mode instance norm with running statistics": (
        lambda: _head(nn.InstanceNorm1d(2, track_running_stats=True)),
        r"module '0' \(InstanceNorm1d\): in training mode it may update its buffers",
    ),
    "an inplace activation": (
        lambda: _head(nn.ELU(inplace=True)).eval(),
        r"module '0' \(ELU\): inplace=True changes its input in place",
    ),
    "dropout in training mode": (
        lambda: _head(nn.Dropout(0.2)),
        "dropout draws random numbers",
    ),
    "torch's LSTM": (
        lambda: _head(nn.LSTM(2, 2, batch_first=True)).eval(),
        r"\(LSTM\): torch.vmap has no batching rule",
    ),
    "torch's LSTMCell": (
        lambda: _head(nn.LSTMCell(2, 2)).eval(),
        r"\(LSTMCell\): torch.vmap has no batching rule",
    ),
    "an embedding with max_norm": (
        lambda: _head(nn.Embedding(5, 2, max_norm=1.0)).eval(),
        "max_norm renormalises its weight in place",
    ),
    "a lazy module (its pre-hook)": (
        lambda: _head(nn.LazyLinear(2)).eval(),
        r"module '0' \(LazyLinear\): hooks run with its calls",
    ),
    "a forward storing an attribute": (
        lambda: _head(_StoresLast()).eval(),
        r"module '0' \(_StoresLast\): its forward stores the attribute 'last'",
    ),
    "a method of a plain object": (
        _LogsToAnObject,
        r"the network \(_LogsToAnObject\): calls self\.logger\.log\(\), whose code",
    ),
    "a list attribute appended to": (
        _AppendsToAList,
        r"calls self\.outputs\.append\(\) on a list",
    ),
    "a child module's own method": (
        _CallsAChildsMethod,
        r"calls self\.encoder\.encode\(\), whose code is not read",
    ),
    "torch's method that changes the module": (
        _RegistersABuffer,
        r"calls self\.register_buffer\(\), which changes the module",
    ),
    "a callable object of the user's": (
        lambda: _CallsAnAttribute(_Scaler()),
        r"calls self\.act\(\), whose code is not read",
    ),
    "a bound method of the user's object": (
        lambda: _CallsAnAttribute(_Scaler().__call__),
        r"calls self\.act\(\), whose code is not read",
    ),
    "torch's function kept in an attribute": (
        lambda: _CallsAnAttribute(torch.tanh),
        None,
    ),
    "the user's property": (
        _ReadsItsProperty,
        r"reads self\.gain, a property whose code is not read",
    ),
}


def _hooked(module: nn.Module) -> nn.Module:
    module.register_forward_hook(lambda module, args, output: None)
    return module


@pytest.mark.parametrize("case", list(_CASES))
def test_what_rules_out_a_mapped_call_is_named(case: str) -> None:
    make, reason = _CASES[case]
    found = unmapped_reason(make())
    if reason is None:
        assert found is None
    else:
        assert found is not None
        assert re.search(reason, found), found


def test_global_module_hooks_rule_out_a_mapped_call_but_the_librarys_own() -> None:
    """The library's global pre-hook (watching plain networks' calls) is
    registered once a Bayesian layer is built: it runs under ``vmap`` as in
    any call; a user's global hook would run once for all networks."""
    net = bnn.VISequential(bnn.VILinear(2, 2))
    assert watching_hook_id() is not None
    assert unmapped_reason(net) is None
    handle = register_module_forward_hook(lambda module, args, output: None)
    try:
        reason = unmapped_reason(net)
    finally:
        handle.remove()
    assert reason is not None
    assert "a global module hook is registered" in reason
    assert unmapped_reason(net) is None
