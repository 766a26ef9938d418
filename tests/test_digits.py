"""Default settings reach >= 95 % accuracy on digits (torch_blue W9: 19 %)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).parents[1] / "examples" / "digits.py"


def _main():  # type: ignore[no-untyped-def]
    return runpy.run_path(str(EXAMPLE), run_name="digits_example")["main"]


def test_digits_example_runs_with_tiny_settings() -> None:
    result = _main()(["--epochs", "1"])
    assert 0.0 <= result["accuracy"] <= 1.0


def test_digits_default_settings_reach_95_percent() -> None:
    # ~10 s on 2 CPU cores (40 epochs), so it runs by default.
    result = _main()([])
    assert result["accuracy"] >= 0.95
