"""A torch module's hooks, carried to the module built from it.

``bnn.convert`` and ``bnn.to_deterministic`` build new modules (a ``VILinear``
from an ``nn.Linear`` and back). Forward hooks and pre-hooks the user
registered go with them, in their order; torch offers no public way to list a
module's hooks, so this reads its hook dictionaries. Other hooks (backward,
``state_dict``) act on gradients or parameter names that the new module does
not share: they are not carried, and a warning names them.
"""

from __future__ import annotations

import warnings

from torch import nn

__all__ = ["carry_forward_hooks"]

# The dictionaries torch's register_forward_(pre_)hook fill, keyed by hook id.
_FORWARD_HOOKS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)
_OTHER_HOOKS = {
    "_backward_pre_hooks": "backward",
    "_backward_hooks": "backward",
    "_state_dict_pre_hooks": "state_dict",
    "_state_dict_hooks": "state_dict",
    "_load_state_dict_pre_hooks": "load_state_dict",
    "_load_state_dict_post_hooks": "load_state_dict",
}


def carry_forward_hooks(source: nn.Module, target: nn.Module, what: str) -> None:
    """Give ``target`` (built from ``source``) ``source``'s forward hooks.

    Args:
        source: the module the hooks were registered on.
        target: the module built from it.
        what: the operation, for the warning (``"bnn.convert"``).
    """
    if source is target:
        return
    for name in _FORWARD_HOOKS:
        hooks = getattr(source, name, None)
        if hooks:
            getattr(target, name).update(hooks)
    left = sorted(
        {kind for name, kind in _OTHER_HOOKS.items() if getattr(source, name, None)}
    )
    if left:
        warnings.warn(
            f"{what}: the {' and '.join(left)} hooks of a {type(source).__name__} "
            f"are not carried to the {type(target).__name__} built from it "
            "(forward hooks are); register them again on the new module",
            UserWarning,
            stacklevel=4,
        )
