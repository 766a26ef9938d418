from __future__ import annotations

import threading

import torch

from pyrolite_bnn._allocations import AllocationPeak


def test_temporaries_count_until_freed() -> None:
    """A temporary freed inside the block still sets the peak."""
    with AllocationPeak() as memory:
        a = torch.ones(1000)  # 4000 bytes
        b = a * 2  # 4000: 8000 alive
        del a, b
        c = torch.ones(10)  # 40
    assert memory.peak == 8000
    assert memory.live == c.nbytes


def test_views_out_and_in_place_results_allocate_nothing() -> None:
    x = torch.ones(100, 10)  # before the block: not counted
    out = torch.empty(100, 10)
    with AllocationPeak() as memory:
        x.view(10, 100).transpose(0, 1)
        x.mul_(2)
        torch.mul(x, 3, out=out)
    assert memory.peak == 0


def test_a_copy_of_a_view_counts_once() -> None:
    x = torch.ones(100, 10)
    with AllocationPeak() as memory:
        y = x.t().contiguous()  # one new storage of 4000 bytes
        z = y.view(-1)
    assert memory.peak == 4000
    assert z.nbytes == 4000


def test_other_threads_allocations_do_not_count() -> None:
    def other() -> None:
        torch.ones(10_000)

    with AllocationPeak() as memory:
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        torch.ones(10)
    assert memory.peak == 40
