"""Whether a tensor is differentiated, in reverse or forward mode, through wrappers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.autograd import forward_ad
from torch.func import grad, jacfwd, jacrev, jvp, vmap

from pyrolite_bnn._capture import carries_derivative, records_a_graph


def _record(seen: list[bool]) -> Callable[[Tensor], Tensor]:
    def inner(x: Tensor) -> Tensor:
        seen.append(carries_derivative(x))
        return (x * x).sum()

    return inner


def _dual(f: Callable[[Tensor], Tensor], x: Tensor) -> None:
    with forward_ad.dual_level():
        f(forward_ad.make_dual(x, torch.ones_like(x)))


def _plain_in_a_dual_level(f: Callable[[Tensor], Tensor], x: Tensor) -> None:
    with forward_ad.dual_level():
        f(x)


def _rows(x: Tensor) -> Tensor:
    return x.expand(2, *x.shape)


def _jvp_by_another_argument(f: Callable[[Tensor], Tensor], x: Tensor) -> None:
    jacfwd(lambda a, b: f(a) + b.sum(), argnums=1)(x, x)


# How the function gets its tensor, and whether it is then differentiated.
Run = Callable[[Callable[[Tensor], Tensor], Tensor], object]
CASES: dict[str, tuple[Run, bool]] = {
    "plain": (lambda f, x: f(x), False),
    "requires_grad": (lambda f, x: f(x.requires_grad_()), True),
    "plain in a dual level": (_plain_in_a_dual_level, False),
    "dual tensor": (_dual, True),
    "jvp": (lambda f, x: jvp(f, (x,), (x,)), True),
    "jacfwd": (lambda f, x: jacfwd(f)(x), True),
    "jacfwd by another argument": (_jvp_by_another_argument, False),
    "grad": (lambda f, x: grad(f)(x), True),
    "jacrev": (lambda f, x: jacrev(f)(x), True),
    "vmap": (lambda f, x: vmap(f)(_rows(x)), False),
    "grad of vmap": (lambda f, x: grad(lambda y: vmap(f)(y).sum())(_rows(x)), True),
    "jvp of vmap": (lambda f, x: jvp(vmap(f), (_rows(x),), (_rows(x),)), True),
}


@pytest.mark.filterwarnings(  # torch's forward AD scripts its decompositions once
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)
@pytest.mark.parametrize("case", list(CASES))
def test_carries_derivative(case: str) -> None:
    """Forward-mode tangents leave ``requires_grad`` False; under ``vmap`` the
    wrapper of a differentiated tensor has neither. ``vmap`` alone takes no
    derivative."""
    run, expected = CASES[case]
    seen: list[bool] = []
    run(_record(seen), torch.randn(3))
    assert seen == [expected]


def _probe(seen: list[bool]) -> torch.nn.Module:
    """A module appending what :func:`records_a_graph` says to ``seen``."""

    class Probe(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            seen.append(records_a_graph())
            return x + 1

    return Probe()


@pytest.mark.filterwarnings(  # torch's note on its tracer
    "ignore:`torch.jit.trace[a-z_]*` is deprecated:DeprecationWarning"
)
def test_records_a_graph_under_the_tracer_and_export_only() -> None:
    """torch.jit.trace and torch.export record a graph (a value read there is a
    constant of it); an eager call and torch.compile, which runs such a read
    between its graphs on every call, do not."""
    x = torch.zeros(2)
    seen: list[bool] = []
    probe = _probe(seen)
    probe(x)
    torch.compile(lambda t: probe(t), backend="eager")(x)
    assert seen == [False, False]
    seen.clear()
    torch.jit.trace(probe, (x,), check_trace=False)
    torch.export.export(probe, (x,))
    assert seen == [True, True]
