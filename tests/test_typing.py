"""The package's annotations reach its users' type checkers and hold at run time."""

from __future__ import annotations

import importlib.resources
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_package_is_marked_typed() -> None:
    """PEP 561: without ``py.typed`` mypy and pyright treat every name as ``Any``."""
    assert importlib.resources.files("pyrolite_bnn").joinpath("py.typed").is_file()


@pytest.mark.slow
def test_wheel_ships_py_typed(tmp_path: Path) -> None:
    """The marker is in the built wheel, not only in the source tree."""
    pytest.importorskip("setuptools")
    source = tmp_path / "source"  # a copy: the build leaves build/ and egg-info
    shutil.copytree(
        ROOT / "pyrolite_bnn",
        source / "pyrolite_bnn",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q"]
    subprocess.run(
        [*pip_wheel, "--no-build-isolation", str(source), "-w", str(tmp_path)],
        check=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    assert "pyrolite_bnn/py.typed" in zipfile.ZipFile(wheel).namelist()
