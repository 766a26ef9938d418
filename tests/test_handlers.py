"""The call-stack tests by which the library tells who runs a network."""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType
from typing import Any

import pyro
import pytest
import torch
from torch import nn

import pyrolite_bnn as bnn
from pyrolite_bnn._handlers import called_from, code_of, running_frame

_PACKAGE = Path(bnn.__file__).parent
_STACK_TESTS = {called_from.__name__, running_frame.__name__}


def _stack_test_targets() -> Iterator[tuple[str, Any]]:
    """Every argument of a ``called_from`` / ``running_frame`` call in the package.

    Each is evaluated in its module's namespace, as the call evaluates it
    (the stack tests' own definitions, which pass their arguments on, left out).
    """
    for path in sorted(_PACKAGE.rglob("*.py")):
        relative = path.relative_to(_PACKAGE.parent).with_suffix("")
        module = importlib.import_module(".".join(relative.parts))
        tree = ast.parse(path.read_text())
        for definition in ast.walk(tree):
            if (
                isinstance(definition, ast.FunctionDef)
                and definition.name in _STACK_TESTS
            ):
                definition.body = []
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in _STACK_TESTS
            ):
                continue
            for argument in node.args:
                text = ast.unparse(argument)
                yield f"{relative}: {text}", eval(text, vars(module))


def test_every_stack_test_looks_for_the_functions_own_code() -> None:
    """A stack test names a function, and the code it looks for is that
    function's own, not the code of a decorator's wrapper.

    ``SVGD.step`` is decorated with ``torch.no_grad()``: its ``__code__`` is
    torch's ``decorate_context``, which runs for every function that
    decorator wraps, so a test for it matched any ``no_grad``-decorated frame
    on the stack (a ``RenyiELBO`` step was told SVGD is not supported). The
    code of every target must be in the target's own module, under its own
    name."""
    targets = dict(_stack_test_targets())
    assert len(targets) >= 8  # the Pyro internals looked for today
    for where, target in targets.items():
        assert not isinstance(target, CodeType), f"{where}: pass the function"
        code = code_of(target)
        assert code.co_name == target.__name__, where
        defined_in = sys.modules[target.__module__].__file__
        assert defined_in is not None
        assert Path(code.co_filename).resolve() == Path(defined_in).resolve(), where


def test_code_of_sees_through_decorators() -> None:
    def plain() -> bool:
        return called_from(plain)

    @torch.no_grad()
    def decorated() -> bool:
        return called_from(decorated)

    @torch.no_grad()
    def other(check: Callable[[], bool]) -> bool:
        return check()

    assert code_of(decorated).co_name == "decorated"
    assert decorated()
    assert not other(lambda: called_from(decorated))
    assert not other(lambda: called_from(pyro.infer.SVGD.step))
    assert not called_from(plain)


def _vectorised_problem() -> tuple[Callable[..., Any], Callable[..., Any], Any, Any]:
    x = torch.randn(16, 2)
    y = (x[:, 0] > 0).long()
    net = bnn.VISequential(bnn.VILinear(2, 4), nn.Tanh(), bnn.VILinear(4, 2))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=16)
    return loss_fn.pyro_model(net), net.guide, x, y


@pytest.mark.parametrize(
    "elbo", [bnn.RenyiELBO, pyro.infer.RenyiELBO, pyro.infer.Trace_ELBO]
)
def test_vectorised_particles_are_refused_with_their_own_advice(
    elbo: type[pyro.infer.ELBO],
) -> None:
    """Pyro's vectorised particles are refused with the advice for them, never
    SVGD's, whatever ``no_grad``-decorated function runs the loss."""
    model, guide, x, y = _vectorised_problem()

    @torch.no_grad()
    def evaluate() -> float:
        loss = elbo(num_particles=2, vectorize_particles=True).loss
        return float(loss(model, guide, x, y, samples=3))

    for run in (evaluate, evaluate.__wrapped__):  # type: ignore[attr-defined]
        with pytest.raises(NotImplementedError, match=r"^vectorize_particles=True is"):
            run()
