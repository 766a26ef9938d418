"""How many particles' weight draws fit a memory budget (``_draw_budget``)."""

from __future__ import annotations

import torch

import pyrolite_bnn as bnn
from pyrolite_bnn._draw_budget import DRAWING_FACTOR, DrawSizes


def test_sizes_of_a_network() -> None:
    net = bnn.VISequential(bnn.VILinear(4, 8), bnn.VILinear(8, 3, dtype=torch.float64))
    sizes = DrawSizes.of(net)
    assert sizes.total == (32 + 8) * 4 + (24 + 3) * 8
    assert sizes.largest == 24 * 8  # float64 weights: 8 bytes each
    assert sizes.site == "1.weight"


def test_kept_draws_need_half_the_budget_and_room_to_draw() -> None:
    sizes = DrawSizes(total=100, largest=60, site="w")
    # 10 particles: kept 1000 bytes; drawing the largest adds 2 * 600.
    assert sizes.kept_bytes(10, budget=2200) == 1000
    assert sizes.kept_bytes(10, budget=2199) == 0  # drawing does not fit
    small = DrawSizes(total=100, largest=10, site="w")
    assert small.kept_bytes(10, budget=2000) == 1000
    assert small.kept_bytes(10, budget=1999) == 0  # more than half the budget
    assert sizes.redrawn_bytes(10) == DRAWING_FACTOR * 600


def test_drawing_bytes_keep_every_draw_and_draw_the_largest_at_three_times() -> None:
    sizes = DrawSizes(total=100, largest=60, site="w")
    assert sizes.drawing_bytes(10) == 10 * 100 + (DRAWING_FACTOR - 1) * 10 * 60


def test_sizes_on_one_device_type_count_only_its_weights() -> None:
    net = bnn.VISequential(bnn.VILinear(4, 8), bnn.VILinear(8, 3, device="meta"))
    sizes = DrawSizes.of(net, device_type="cpu")
    assert (sizes.total, sizes.site) == ((32 + 8) * 4, "0.weight")


def test_particles_that_fit() -> None:
    sizes = DrawSizes(total=100, largest=60, site="w")
    assert sizes.particles_that_fit(10, budget=10_000) == 10
    # kept: min(1000 // 100, 2000 // 220) = 9; redrawn: 1000 // 180 = 5
    assert sizes.particles_that_fit(10, budget=2000) == 9
    # spread over many tensors, drawing layer by layer fits more particles
    spread = DrawSizes(total=1000, largest=10, site="w")
    assert spread.particles_that_fit(100, budget=2000) == 33
    assert sizes.particles_that_fit(10, budget=200) == 0  # not even one
    assert DrawSizes(0, 0, "").particles_that_fit(7, budget=1) == 7
