"""Whether a derivative by a network's input is taken, not only by parameters."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pytest
import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.func import grad

from pyrolite_bnn._input_derivatives import takes_input_derivative


def _trunk(trainable: bool = True) -> nn.Module:
    trunk = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4))
    return trunk.requires_grad_(trainable)


def _residual_trunk(x: Tensor) -> Tensor:
    """Two paths that meet again: the walk visits the shared nodes once."""
    first, second = nn.Linear(3, 3), nn.Linear(3, 3)
    h = first(x)
    return second(h).relu() + h


def _hooked(hook: str) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        trunk = _trunk()
        if hook == "module":  # Grad-CAM's way: the module's grad_input/output
            trunk[2].register_full_backward_hook(lambda *_: None)
            return trunk(x)
        features = trunk(x)
        if hook == "tensor":
            features.register_hook(lambda g: g)
        else:
            features.retain_grad()
        return features

    return run


def _with_store_tensor(x: Tensor) -> Tensor:
    """A tensor of Pyro's global parameter store: a leaf that is no Parameter."""
    scale = pyro.param("scale", torch.ones(3))
    return nn.Linear(3, 4)(x * scale)


def _dual(x: Tensor) -> bool:
    with forward_ad.dual_level():
        return takes_input_derivative(forward_ad.make_dual(x, torch.ones_like(x)))


def _under_grad(x: Tensor) -> bool:
    seen: list[bool] = []

    def inner(y: Tensor) -> Tensor:
        seen.append(takes_input_derivative(y))
        return y.sum()

    grad(inner)(x)
    return seen[0]


CASES: dict[str, tuple[Callable[[Tensor], object], bool]] = {
    "plain": (lambda x: takes_input_derivative(x), False),
    "frozen trunk": (lambda x: takes_input_derivative(_trunk(False)(x)), False),
    "trainable trunk": (lambda x: takes_input_derivative(_trunk()(x)), False),
    "residual trunk": (lambda x: takes_input_derivative(_residual_trunk(x)), False),
    "parameter": (lambda x: takes_input_derivative(nn.Parameter(x)), False),
    "leaf": (lambda x: takes_input_derivative(x.requires_grad_()), True),
    "leaf through a frozen trunk": (
        lambda x: takes_input_derivative(_trunk(False)(x.requires_grad_())),
        True,
    ),
    "leaf through a trunk": (
        lambda x: takes_input_derivative(_trunk()(x.requires_grad_())),
        True,
    ),
    "leaf through a residual trunk": (
        lambda x: takes_input_derivative(_residual_trunk(x.requires_grad_())),
        True,
    ),
    "pyro param store": (lambda x: takes_input_derivative(_with_store_tensor(x)), True),
    "module backward hook": (
        lambda x: takes_input_derivative(_hooked("module")(x)),
        True,
    ),
    "tensor hook": (lambda x: takes_input_derivative(_hooked("tensor")(x)), True),
    "retain_grad": (lambda x: takes_input_derivative(_hooked("retain")(x)), True),
    "dual tensor": (_dual, True),
    "torch.func.grad": (_under_grad, True),
}


@pytest.mark.filterwarnings(  # torch's forward AD scripts its decompositions once
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)
@pytest.mark.parametrize("case", list(CASES))
def test_takes_input_derivative(case: str) -> None:
    """Only leaves that are no ``nn.Parameter`` (and hooks, retained
    gradients, tangents, transforms) make an input differentiated; a trunk's
    parameters alone do not."""
    run, expected = CASES[case]
    assert run(torch.randn(2, 3)) is expected
