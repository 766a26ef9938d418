"""Warnings point at the user's line, however deep the library raised them."""

from __future__ import annotations

import ast
import inspect
import warnings
from pathlib import Path

import torch

import pyrolite_bnn as bnn


def test_no_warning_of_the_library_has_a_fixed_stacklevel() -> None:
    """A fixed ``stacklevel`` is right for one call depth only.

    ``bnn.calibrate`` and ``TemperatureScaling().fit`` reach the same warning
    at different depths, a subclass's ``__init__`` adds a frame (``VIGRU``),
    ``predict`` runs its budget checks below an isolation layer: each pointed
    into the library. ``warn_at_caller`` finds the user's frame instead.
    """
    package = Path(bnn.__file__).parent
    fixed = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "_warnings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "warn"
                and any(keyword.arg == "stacklevel" for keyword in node.keywords)
            ):
                fixed.append(f"{path.relative_to(package)}:{node.lineno}")
    assert fixed == []


def test_a_loss_evaluated_inside_lbfgs_step_names_the_fit_line() -> None:
    """``bnn.fit`` with LBFGS evaluates the loss in a closure that
    ``optimizer.step`` calls: its warnings (unscaled targets, a noise scale
    the optimizer does not hold) named torch/utils/_contextlib.py, the
    decorator around ``step``; with Adam they named the user's line."""
    torch.manual_seed(0)
    x = torch.randn(16, 1)
    layer = bnn.VILinear(1, 1)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=16)
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        bnn.fit(layer, loss_fn, [(x, 100 * x[:, 0])], 5, optimizer, progress=False)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("Normal: the targets spread") for m in messages)
    assert any("have not changed" in m for m in messages)
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)] * len(caught)


def test_a_users_lbfgs_closure_is_named_at_its_own_line() -> None:
    """A hand-written LBFGS loop: the warning names the closure's loss line,
    not torch.optim's frames that called the closure."""
    torch.manual_seed(0)
    x = torch.randn(16, 1)
    layer = bnn.VILinear(1, 1)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=16)
    optimizer = torch.optim.LBFGS([*layer.parameters(), *loss_fn.parameters()])
    lines = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        lines.append(inspect.currentframe().f_lineno + 1)  # type: ignore[union-attr]
        loss = loss_fn(layer(x), 100 * x[:, 0])
        loss.backward()
        return loss

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer.step(closure)
    assert [str(w.message)[:26] for w in caught] == ["Normal: the targets spread"]
    assert (caught[0].filename, caught[0].lineno) == (__file__, lines[0])
