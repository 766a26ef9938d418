"""Numbers given for hyperparameters keep their precision (``_exact_values``)."""

from __future__ import annotations

import copy
import pickle

import torch
from torch import Tensor

from pyrolite_bnn._exact_values import KeepsExactValues, as_float64, is_wider

_F64 = torch.float64


class _Scale(KeepsExactValues):
    """A module holding one number-given buffer, as the library's do."""

    value: Tensor

    def __init__(self, number: float) -> None:
        super().__init__()
        self.register_buffer("value", torch.tensor(number))
        self.keep_exact("value", number)


def test_a_widening_writes_the_number_and_a_float32_read_is_the_tensor() -> None:
    """``.double()`` (and a float64 read) give the number; a float32 read is
    the float32 tensor itself, the same object (no cast, no cost)."""
    module = _Scale(0.1)
    like32 = torch.zeros(())
    assert module.exact_as("value", like32) is module.value
    torch.testing.assert_close(
        module.exact_as("value", torch.zeros((), dtype=_F64)),
        torch.tensor(0.1, dtype=_F64),
        rtol=1e-15,
        atol=0,
    )
    module.double()
    assert module.value.item() == 0.1
    module.float()  # back to float32: the number rounded once, as at the start
    torch.testing.assert_close(module.value, torch.tensor(0.1), rtol=0, atol=0)
    assert module.double().value.item() == 0.1


def test_a_tensor_written_since_is_read_as_it_is() -> None:
    """A value written into the tensor (a training step, a fill, a load of
    another value) is no longer the number: it is converted as torch does."""
    module = _Scale(0.1)
    with torch.no_grad():
        module.value.fill_(0.2)
    assert not module.holds_exact("value")
    torch.testing.assert_close(
        module.double().value, torch.tensor(0.2).double(), rtol=0, atol=0
    )


def test_a_narrowing_below_the_stored_dtype_takes_its_rounding_for_good() -> None:
    """``.half()`` is the user's precision, as for weights: converted back the
    tensor holds the half-precision value."""
    module = _Scale(0.1).half().double()
    torch.testing.assert_close(
        module.value, torch.tensor(0.1).half().double(), rtol=0, atol=0
    )


def test_copies_and_loads_keep_the_number() -> None:
    """A deepcopy, a pickle, and a load of a float32 state into a float64
    module hold the number; a float16 state's rounding stays a rounding."""
    module = _Scale(0.1)
    for copied in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert copied.double().value.item() == 0.1
    target = _Scale(0.1).double()
    with torch.no_grad():
        target.value.zero_()
    target.load_state_dict(_Scale(0.1).state_dict())
    assert target.value.item() == 0.1
    half_state = {"value": torch.tensor(0.1, dtype=torch.float16)}
    target.load_state_dict(half_state)
    torch.testing.assert_close(
        target.value, half_state["value"].double(), rtol=0, atol=0
    )


def test_helpers() -> None:
    """Which dtypes are wider, and what is kept."""
    assert is_wider(_F64, torch.float32)
    assert not is_wider(torch.bfloat16, torch.float16)
    assert as_float64(torch.zeros(2, dtype=torch.long)) is None
    number = as_float64([0.1, 0.2])
    assert number is not None
    torch.testing.assert_close(
        number, torch.tensor([0.1, 0.2], dtype=_F64), rtol=0, atol=0
    )
