"""Warnings point at the user's line, however deep the library raised them."""

from __future__ import annotations

import ast
from pathlib import Path

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
