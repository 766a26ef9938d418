"""Keyword-only Bayesian options shared by all layers."""

from __future__ import annotations

from collections.abc import Mapping

from pyrolite_bnn.distributions.variational import MeanFieldNormal

__all__ = ["ESTIMATORS", "check_estimator", "per_variable"]

ESTIMATORS = ("auto", "reparam", "local", "flipout")


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


def check_estimator(estimator: str, variational: object) -> str:
    """Validate the ``estimator=`` option against the variational families."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator in ("local", "flipout"):
        families = (
            list(variational.values())
            if isinstance(variational, Mapping)
            else [variational]
        )
        if any(f is not None and not isinstance(f, MeanFieldNormal) for f in families):
            raise ValueError(
                f"estimator={estimator!r} needs the mean-field Normal posterior; use "
                "estimator='reparam' (or 'auto') with other variational families"
            )
    return estimator
