"""Copies of state dictionaries that share no storage with the live objects."""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor

__all__ = ["clone_state"]


def clone_state(value: Any) -> Any:
    """Deep copy of a (nested) state dictionary with detached tensor clones."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return type(value)((key, clone_state(item)) for key, item in value.items())
    if isinstance(value, list):
        return [clone_state(item) for item in value]
    if isinstance(value, tuple):
        return tuple(clone_state(item) for item in value)
    return copy.deepcopy(value)
