"""The host memory predict's default budget on the CPU is taken from."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from pyrolite_bnn import _host_memory
from pyrolite_bnn.predict import DEFAULT_MEMORY_BUDGET, MIN_DEFAULT_BUDGET

predict = importlib.import_module("pyrolite_bnn.predict")  # the module


def _files(
    tmp_path: Path, meminfo: str, limit: str | None, used: str, inactive: str | None
) -> None:
    (tmp_path / "meminfo").write_text(meminfo)
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    if limit is not None:
        (cgroup / "memory.max").write_text(limit + "\n")
        (cgroup / "memory.current").write_text(used + "\n")
    if inactive is not None:
        (cgroup / "memory.stat").write_text(
            f"anon 100\nfile 900\nactive_file 300\ninactive_file {inactive}\n"
        )


@pytest.mark.parametrize(
    ("limit", "used", "inactive", "expected"),
    [
        (None, "0", None, 3_000_000 * 1024),  # no cgroup files: MemAvailable
        ("max", "5", None, 3_000_000 * 1024),  # a cgroup without a limit
        ("1000000000", "400000000", None, 600_000_000),  # a container's room
        # a container full of the page cache of its data set: that is room
        ("1000000000", "1000000000", "700000000", 700_000_000),
    ],
)
def test_available_bytes_reads_meminfo_and_the_cgroup_limit(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    limit: str | None,
    used: str,
    inactive: str | None,
    expected: int,
) -> None:
    meminfo = "MemTotal: 9000000 kB\nMemAvailable:    3000000 kB\n"
    _files(tmp_path, meminfo, limit, used, inactive)
    monkeypatch.setattr(_host_memory, "_MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(_host_memory, "_CGROUP", tmp_path / "cgroup")
    assert _host_memory.available_bytes() == expected


def test_unreadable_files_fall_back_to_sysconf_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_host_memory, "_MEMINFO", tmp_path / "absent")
    monkeypatch.setattr(_host_memory, "_CGROUP", tmp_path / "absent")
    monkeypatch.setattr(_host_memory, "_sysconf", lambda: None)
    assert _host_memory.available_bytes() is None


@pytest.mark.parametrize(
    ("free", "expected"),
    [
        (None, DEFAULT_MEMORY_BUDGET),
        (64 * 2**40, DEFAULT_MEMORY_BUDGET),  # a big host: the fixed 2 GiB
        (2 * 2**30, 2**29),  # a 2 GiB container: a quarter of it
        # a full one: the floor (a budget of 1 byte was 30-80 times slower)
        (0, MIN_DEFAULT_BUDGET),
        (2**28, MIN_DEFAULT_BUDGET),
    ],
)
def test_the_cpu_default_budget_is_at_most_a_quarter_of_the_free_memory(
    monkeypatch: pytest.MonkeyPatch, free: int | None, expected: int
) -> None:
    """A fixed 2 GiB ran a small container out of memory (the budget is used
    in full: the probe's prediction peaked at 2048 MiB)."""
    monkeypatch.setattr(predict, "available_bytes", lambda: free)
    assert predict._default_budget(torch.zeros(1)) == expected


def test_a_lowered_default_budget_is_not_raised_to_the_floor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(predict, "DEFAULT_MEMORY_BUDGET", 2**20)
    monkeypatch.setattr(predict, "available_bytes", lambda: 0)
    assert predict._default_budget(torch.zeros(1)) == 2**20
