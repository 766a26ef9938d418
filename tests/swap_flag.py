"""torch's swap-on-conversion flag, set for a block.

With ``torch.__future__.set_swap_module_params_on_conversion(True)`` (torch's
announced default) ``.to()``, ``.double()``, ``to_empty`` and
``load_state_dict`` swap each parameter's contents into the same object
(``torch.utils.swap_tensors``) instead of assigning ``.data``. The
``swap_conversions`` fixture (``conftest.py``) runs a test with it off and on;
a test computes its reference with it off (:func:`swap_flag`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def swap_flag(on: bool) -> Iterator[None]:
    """Run the block with torch's swap-on-conversion flag ``on``, then restore it."""
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(on)
    try:
        yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)
