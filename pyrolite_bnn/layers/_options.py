"""Keyword-only Bayesian options shared by all layers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from pyrolite_bnn import _particles

__all__ = ["ESTIMATORS", "batch_size", "check_estimator", "per_variable"]

ESTIMATORS = ("reparam",)

_T = TypeVar("_T")


def per_variable(
    option: object, name: str, what: str, names: tuple[str, ...]
) -> object:
    """Pick the option of variable ``name`` from a single value or a mapping."""
    if isinstance(option, Mapping):
        unknown = set(option) - set(names)
        if unknown:
            raise ValueError(
                f"{what} given for unknown variable(s) {sorted(unknown)}; this layer "
                f"declares {list(names)}"
            )
        return option.get(name)
    return option


def check_estimator(estimator: str) -> str:
    """Validate the ``estimator=`` option."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    return estimator


def batch_size() -> int | None:
    """Batch size of the running outermost call."""
    state = _particles.current()
    return None if state is None else state.batch_size
