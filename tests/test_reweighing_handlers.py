"""Which Pyro handlers around a call would reweigh a log-density computed there."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine

from pyrolite_bnn._handlers import caller_handlers_set_aside
from pyrolite_bnn._reweighing_handlers import (
    handler_text,
    refuse_reweighing_handlers,
    reweighing_handlers,
)


def _named() -> list[str]:
    return [handler_text(handler) for handler in reweighing_handlers()]


def test_the_handlers_are_named_outermost_first() -> None:
    with (
        poutine.scale(scale=0.5),
        poutine.trace(),
        pyro.plate("data", 100, subsample_size=10),
        poutine.mask(mask=torch.tensor([True, False])),
    ):
        assert _named() == [
            "poutine.scale(scale=0.5)",
            "pyro.plate('data', 100, subsample_size=10)",
            "poutine.mask(mask=<tensor of shape (2,)>)",
        ]


def test_factors_that_multiply_to_one_reweigh_nothing_but_a_mask_does() -> None:
    with poutine.scale(scale=0.1), pyro.plate("data", 100, subsample_size=10):
        assert _named() == []
        with poutine.mask(mask=False):
            assert _named() == ["poutine.mask(mask=False)"]
    with poutine.scale(scale=torch.ones(3)):
        assert _named() == []


def test_a_tensor_mask_counts_whatever_its_values() -> None:
    """A tensor mask all ``True`` on one batch masks examples on the next: the
    verdict must not depend on the batch's values (it would let the loss
    through once and refuse it later, or the other way round)."""
    with poutine.mask(mask=torch.ones(3) > 0):
        assert _named() == ["poutine.mask(mask=<tensor of shape (3,)>)"]
    with poutine.scale(scale=torch.tensor([1.0, 2.0])):
        assert _named() == ["poutine.scale(scale=<tensor of shape (2,)>)"]


def test_handlers_kept_from_the_call_do_not_count() -> None:
    """A ``poutine.block`` that hides every site keeps the handlers outside
    it from any site inside, as does a computation of the library's own that
    sets the caller's handlers aside; a block that hides some sites does not."""
    with poutine.scale(scale=0.5):
        with poutine.block():
            assert _named() == []
        with caller_handlers_set_aside():
            assert _named() == []
            with poutine.mask(mask=False):
                assert _named() == ["poutine.mask(mask=False)"]
        with poutine.block(hide=["obs"]):
            assert _named() == ["poutine.scale(scale=0.5)"]
        with poutine.block(hide_types=["observe"]):
            assert _named() == ["poutine.scale(scale=0.5)"]


def test_the_refusal_runs_only_under_a_reweighing_handler() -> None:
    refuse_reweighing_handlers()
    with poutine.trace(), pyro.plate("data", 10):
        refuse_reweighing_handlers()
    with poutine.scale(scale=2.0), pytest.raises(ValueError, match="2 \\* loss_fn"):
        refuse_reweighing_handlers()
