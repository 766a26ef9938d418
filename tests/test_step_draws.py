"""Tests for ``SameDraws``: one optimizer step's evaluations on the same draws."""

from __future__ import annotations

import threading

import pytest
import torch

from pyrolite_bnn._draws import generators_held
from pyrolite_bnn._step_draws import SameDraws

CPU = torch.device("cpu")


def test_later_evaluations_replay_the_first_and_the_generator_moves_on_once() -> None:
    start = torch.get_rng_state()
    once = torch.randn(4)
    after_once = torch.get_rng_state()
    torch.set_rng_state(start)
    with SameDraws([CPU, CPU]) as same:
        draws = [same.run(lambda: torch.randn(4)) for _ in range(3)]
    for draw in draws:
        torch.testing.assert_close(draw, once, rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), after_once)
    assert not torch.equal(torch.randn(4), once)  # the next step draws anew


def test_an_evaluation_that_raises_leaves_the_generators_free() -> None:
    """The block holds the lock of computations that rewind the generators
    (``predict`` in another thread); an error inside still releases it."""

    def fails() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), SameDraws([CPU]) as same:
        same.run(fails)
    entered = threading.Event()

    def rewind() -> None:
        with generators_held():
            entered.set()

    thread = threading.Thread(target=rewind)
    thread.start()
    thread.join(timeout=10)
    assert entered.is_set()


def test_nothing_drawn_leaves_the_generator_as_it_was() -> None:
    state = torch.get_rng_state()
    with SameDraws([]):
        pass
    assert torch.equal(torch.get_rng_state(), state)


def test_what_the_optimizer_draws_between_evaluations_is_drawn_once() -> None:
    """An optimizer that draws after the closure (a Langevin step's noise):
    rewinding the generators to where the first evaluation left them handed
    its noise out again as the next step's weight draws (probe falsepos16)."""
    torch.manual_seed(0)
    plain = [torch.randn(3) for _ in range(3)]  # closure, optimizer, closure
    torch.manual_seed(0)
    with SameDraws([CPU]) as same:
        first = same.run(lambda: torch.randn(3))
        noise = torch.randn(3)  # the optimizer's own draw
        again = same.run(lambda: torch.randn(3))
    after = torch.randn(3)  # the next step's first draw
    torch.testing.assert_close(first, plain[0], rtol=0, atol=0)
    torch.testing.assert_close(again, plain[0], rtol=0, atol=0)
    torch.testing.assert_close(noise, plain[1], rtol=0, atol=0)
    torch.testing.assert_close(after, plain[2], rtol=0, atol=0)
