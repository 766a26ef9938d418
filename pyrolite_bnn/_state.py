"""State dictionaries: copies that share no storage, and records kept with them."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["RecordsInState", "clone_state", "record_in_state", "recorded"]


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


def record_in_state(
    destination: Mapping[str, Any], prefix: str, key: str, value: str
) -> None:
    """Record how a module's tensors are to be read, with its ``state_dict``.

    Into the module's entry of the state dictionary's metadata
    (``state_dict._metadata[prefix[:-1]]``, where torch keeps each module's
    ``version``): no key is added to the state, so its keys stay the
    parameter and buffer names, and the record goes with the dictionary
    through ``copy.deepcopy``, ``torch.save`` and
    ``torch.load(..., weights_only=True)``, to the module's
    ``_load_from_state_dict`` (its ``local_metadata``, read with
    :func:`recorded`). A dictionary rebuilt from the items
    (``{k: v for k, v in state.items()}``) has no metadata: it loads as a
    state saved before the record existed. Called from a module's
    ``_save_to_state_dict``; a destination without metadata records nothing.

    Example:
        >>> from collections import OrderedDict
        >>> state = OrderedDict()
        >>> state._metadata = OrderedDict()
        >>> record_in_state(state, "posterior.weight.", "what", "exp")
        >>> recorded(state._metadata["posterior.weight"], "what")
        'exp'
    """
    metadata = getattr(destination, "_metadata", None)
    if isinstance(metadata, dict):
        metadata.setdefault(prefix[:-1], {})[key] = value


def recorded(local_metadata: Mapping[str, Any], key: str) -> str | None:
    """The value :func:`record_in_state` kept under ``key``; ``None``: none kept."""
    value = local_metadata.get(key)
    return value if isinstance(value, str) else None


class RecordsInState(nn.Module):
    """A module whose state dict records how its tensors are to be read.

    :meth:`state_record` names the record (:func:`record_in_state`) that
    ``state_dict`` keeps with the module's tensors, and that its
    ``_load_from_state_dict`` reads back from ``local_metadata`` with
    :func:`recorded`: a posterior's parameterisation, a prior's family.
    """

    def state_record(self) -> tuple[str, str] | None:
        """``(key, value)`` to record with the state; ``None``: nothing."""
        return None

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        """Torch's; and the :meth:`state_record`, kept with the state's metadata.

        The state's keys are unchanged.
        """
        super()._save_to_state_dict(destination, prefix, keep_vars)
        record = self.state_record()
        if record is not None:
            record_in_state(destination, prefix, *record)
