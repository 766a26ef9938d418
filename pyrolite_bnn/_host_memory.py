"""The memory this process can still take on the host, where the system says.

:func:`~pyrolite_bnn.predict`'s default budget on the CPU is the smaller of
:data:`~pyrolite_bnn.predict.DEFAULT_MEMORY_BUDGET` and a quarter of it: a
fixed 2 GiB in a small container, or beside other requests of a server, ran
the process out of memory where a quarter of the free device memory is the
rule on CUDA. :func:`check_fits_on_host` refuses an allocation larger than the
free memory up front (``predict``'s outputs, ``draw_networks``' draws): on an
overcommitting host it would be filled until the kernel kills the process.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["available_bytes", "check_fits_on_host"]

_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/sys/fs/cgroup")


def available_bytes() -> int | None:
    """Bytes the process can still allocate without swapping, or ``None``.

    Linux's ``MemAvailable`` (``/proc/meminfo``), lowered to the room left
    under the process's cgroup (v2) memory limit when one is set (a
    container's ``--memory``; its inactive page cache counted as room);
    elsewhere ``os.sysconf``'s available physical
    pages where the platform has them; ``None`` where nothing can be read.

    Example:
        >>> free = available_bytes()
        >>> free is None or free >= 0
        True
    """
    found = [value for value in (_meminfo(), _cgroup_room()) if value is not None]
    if not found:
        found = [value for value in (_sysconf(),) if value is not None]
    return min(found) if found else None


def check_fits_on_host(needed: int, what: str, remedy: str) -> None:
    """Raise ``MemoryError`` if ``needed`` bytes are more than the host has free.

    Nothing is checked where the free memory cannot be read.

    Args:
        needed: the bytes about to be allocated on the host.
        what: the call and what it holds (``"predict: holding the outputs
            (...)"``), the start of the message.
        remedy: what to do instead.

    Raises:
        MemoryError: naming both sizes and ``remedy``.

    Example:
        >>> check_fits_on_host(1, "a test: one byte", "free some memory")
    """
    free = available_bytes()
    if free is not None and needed > free:
        raise MemoryError(
            f"{what} takes {_gib(needed)}, more than the {_gib(free)} of memory "
            f"free on this host: {remedy}"
        )


def _gib(count: int) -> str:
    return f"{count / 2**30:.3g} GiB"


def _meminfo() -> int | None:
    try:
        lines = _MEMINFO.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) * 1024
    return None


def _cgroup_room() -> int | None:
    """The room under a cgroup v2 limit, page cache the kernel reclaims counted free.

    ``memory.current`` counts the file pages a container has read (its data
    set), which stay until memory is needed: a container that had read its
    data showed no room at all. Its inactive file pages (``memory.stat``)
    are taken as free, as ``docker stats`` does.
    """
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        used = (_CGROUP / "memory.current").read_text().strip()
    except OSError:
        return None
    if not (limit.isdigit() and used.isdigit()):
        return None  # "max": no limit
    return max(0, int(limit) - int(used) + _inactive_file())


def _inactive_file() -> int:
    try:
        lines = (_CGROUP / "memory.stat").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and fields[0] == "inactive_file" and fields[1].isdigit():
            return int(fields[1])
    return 0


def _sysconf() -> int | None:
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * size if pages > 0 and size > 0 else None
