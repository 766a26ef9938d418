"""Options and checks shared by the sequence layers (RNNs, attention, Transformers).

These layers share each weight across positions or time steps, so estimators
that sample each output independently (``"local"``, ``"flipout"``) are not
exact for them: they always draw weights.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyrolite_bnn.layers._options import check_estimator
from pyrolite_bnn.module import VIModule

__all__ = [
    "check_batch_first",
    "check_drawn_estimator",
    "check_option_keys",
    "own_option",
    "sub_option",
]


def check_drawn_estimator(estimator: str, variational: object, layer: str) -> str:
    """Accept ``"auto"``/``"reparam"``; refuse output-noise estimators clearly."""
    if estimator in ("local", "flipout"):
        raise ValueError(
            f"{layer} supports estimator='auto' or 'reparam' only, got "
            f"{estimator!r}: its weights are shared across positions/time steps, so "
            "sampling each output independently (local reparameterisation, flipout) "
            "would not be the network's distribution"
        )
    return check_estimator(estimator, variational)


def check_batch_first(batch_first: bool, layer: str) -> None:
    """Refuse ``batch_first=False`` with a message that says why and what to use."""
    if not batch_first:
        raise ValueError(
            f"{layer} needs batch_first=True: particles are folded into the leading "
            "(batch) dimension of every tensor, and a sequence-first layout would "
            "fold them into the time dimension instead. Pass batch_first=True and "
            "(batch, sequence, feature) inputs."
        )


def own_option(option: object) -> object:
    """A layer's own options: a mapping narrowed to the keys without a dot."""
    if isinstance(option, Mapping):
        return {k: v for k, v in option.items() if "." not in k}
    return option


def sub_option(option: object, child: str) -> object:
    """Options of the child ``child``: ``{"child.x": v}`` becomes ``{"x": v}``."""
    if isinstance(option, Mapping):
        prefix = child + "."
        return {k[len(prefix) :]: v for k, v in option.items() if k.startswith(prefix)}
    return option


def check_option_keys(option: object, what: str, layer: VIModule) -> None:
    """Every key of a per-variable mapping must name a random variable of ``layer``."""
    if not isinstance(option, Mapping):
        return
    sites = [v.site for v in layer.random_variables()]
    unknown = set(option) - set(sites)
    if unknown:
        raise ValueError(
            f"{what} given for unknown variable(s) {sorted(unknown)}; this layer "
            f"declares {sites}"
        )
