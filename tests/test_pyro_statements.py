"""What a ``forward``'s code changes that outlives its call, read from its bytecode.

``DrawnNetworks.each`` mapped one call of the network over the networks
whatever it changed: a buffer updated in place moved once instead of ``S``
times, a tensor kept on the module was ``vmap``'s wrapper (probe
falsepos27b). The same reader that finds Pyro statements now finds those
changes (the refusals of Pyro statements are tested in
``test_pyro_interop.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyrolite_bnn._pyro_statements import StateChange, state_change_in

_SEEN: list[Tensor] = []
_TOTAL = 0


def _remember(h: Tensor, into: list[Tensor]) -> None:
    into.append(h)


class _StoresAttribute(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        self.last = x.detach()
        return x


class _CountsCalls(nn.Module):
    calls: Tensor

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return x


class _ScalesInputInPlace(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mul_(2.0)


class _DecaysBufferInHelper(nn.Module):
    ema: Tensor

    def forward(self, x: Tensor) -> Tensor:
        self.decay()
        return x

    def decay(self) -> None:
        with torch.no_grad():
            self.ema.mul_(0.5)


class _AugmentedAssignment(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        h = x
        h += 1
        return h


class _ItemAssignment(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        x[0] = 0.0
        return x


class _InplaceKeyword(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x, inplace=True)


class _OutKeyword(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.add(x, 1.0, out=x)


class _Setattr(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        setattr(self, "last", x)  # noqa: B010 (the call is what is read)
        return x


class _SpecialMethod(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        object.__setattr__(self, "last", x)
        return x


class _AssignsGlobal(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        global _TOTAL
        _TOTAL = _TOTAL + 1
        return x


class _AppendsToGlobal(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        _SEEN.append(x)
        return x


class _AppendsToArgument(nn.Module):
    def forward(self, x: Tensor, seen: list[Tensor]) -> Tensor:
        seen.append(x)
        return x


class _AppendsInModuleHelper(nn.Module):
    def forward(self, x: Tensor, seen: list[Tensor]) -> Tensor:
        _remember(x, seen)
        return x


class _InPlaceInComprehension(nn.Module):
    def forward(self, x: Tensor) -> list[Tensor]:
        return [row.mul_(2.0) for row in x]


def _counting_class() -> type[nn.Module]:
    calls = 0

    class Counting(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            nonlocal calls
            calls = calls + 1
            return x

    return Counting


_CHANGES: dict[str, tuple[type[nn.Module], str]] = {
    "attribute stored": (_StoresAttribute, r"stores the attribute 'last'"),
    "buffer counted": (_CountsCalls, r"augmented assignment \(\+=\)"),
    "input scaled in place": (_ScalesInputInPlace, r"calls mul_\(\), in place"),
    "buffer decayed in a helper": (
        _DecaysBufferInHelper,
        r"calls mul_\(\), in place on a tensor through decay\(\)",
    ),
    "augmented assignment": (_AugmentedAssignment, r"augmented assignment"),
    "item assigned": (_ItemAssignment, r"assigns to an item"),
    "inplace=": (_InplaceKeyword, r"passes inplace="),
    "out=": (_OutKeyword, r"passes out="),
    "setattr": (_Setattr, r"calls setattr\(\)"),
    "__setattr__": (_SpecialMethod, r"calls __setattr__\(\)"),
    "global assigned": (_AssignsGlobal, r"assigns the global variable '_TOTAL'"),
    "global list appended": (_AppendsToGlobal, r"calls append\(\) on '_SEEN'"),
    "argument appended": (_AppendsToArgument, r"calls append\(\) on 'seen'"),
    "argument appended in a helper": (
        _AppendsInModuleHelper,
        r"calls append\(\) on 'into'.* through _remember\(\)",
    ),
    "in place in a comprehension": (_InPlaceInComprehension, r"calls mul_\(\)"),
    "enclosing variable assigned": (
        _counting_class(),
        r"assigns the variable 'calls' of an enclosing function",
    ),
}


@pytest.mark.parametrize("case", list(_CHANGES))
def test_state_changes_outliving_the_call_are_found(case: str) -> None:
    module_type, what = _CHANGES[case]
    change = state_change_in(module_type)
    assert isinstance(change, StateChange)
    assert re.search(what, str(change)), str(change)


class _Pure(nn.Module):
    """Local lists, methods of tensors that return new ones, children called."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def forward(self, x: Tensor, steps: int = 3) -> Tensor:
        outputs = []
        h = x
        for _ in range(steps):
            h = torch.tanh(self.layer(h)).clamp(-1, 1)
            outputs.append(h)
        table = {"mean": torch.stack(outputs).mean(0)}
        return table["mean"] * self.layer.weight.t().sum()


_NO_CHANGE: dict[str, Callable[[], type[Any]]] = {
    "pure user code": lambda: _Pure,
    "torch's forward (not read)": lambda: nn.Linear,
    "torch's container": lambda: nn.Sequential,
}


@pytest.mark.parametrize("case", list(_NO_CHANGE))
def test_code_that_changes_only_its_locals_is_no_state_change(case: str) -> None:
    assert state_change_in(_NO_CHANGE[case]()) is None
