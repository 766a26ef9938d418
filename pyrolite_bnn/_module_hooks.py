"""A torch module's hooks, carried to the module built from it.

``bnn.convert`` and ``bnn.to_deterministic`` build new modules (a ``VILinear``
from an ``nn.Linear`` and back). Forward hooks and pre-hooks the user
registered go with them, in their order; torch offers no public way to list a
module's hooks, so this reads its hook dictionaries. Other hooks (backward,
``state_dict``) act on gradients or parameter names that the new module does
not share: they are not carried, and :func:`warn_hooks_left_behind` names the
modules that had them. A compiled loss keys its graphs on a module's forward
hooks and on the global module hooks (:func:`global_hook_ids`).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules import module as module_globals

from pyrolite_bnn._warnings import warn_at_caller

__all__ = [
    "FORWARD_HOOKS",
    "GLOBAL_HOOKS",
    "OTHER_HOOKS",
    "carry_forward_hooks",
    "forward_hook_ids",
    "global_hook_ids",
    "warn_hooks_left_behind",
]

#: The dictionaries torch's ``register_forward_(pre_)hook`` fill, by hook id.
FORWARD_HOOKS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)
#: The other hook dictionaries of a module, and the kind of hook each holds.
OTHER_HOOKS = {
    "_backward_pre_hooks": "backward",
    "_backward_hooks": "backward",
    "_state_dict_pre_hooks": "state_dict",
    "_state_dict_hooks": "state_dict",
    "_load_state_dict_pre_hooks": "load_state_dict",
    "_load_state_dict_post_hooks": "load_state_dict",
}


def carry_forward_hooks(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` (built from ``source``) ``source``'s forward hooks.

    The hooks run as registered; the user's ``RemovableHandle`` of a hook
    removes it from ``source`` only (as after ``copy.deepcopy``).
    """
    if source is target:
        return
    for name in FORWARD_HOOKS:
        hooks = getattr(source, name, None)
        if hooks:
            getattr(target, name).update(hooks)


def forward_hook_ids(module: nn.Module) -> tuple[tuple[int, ...], ...]:
    """The ids of ``module``'s forward hooks and pre-hooks, per dictionary.

    A graph captured with one set of hooks runs them (or not) as they were:
    a compiled loss keys its graphs on these.
    """
    return tuple(tuple(getattr(module, name, None) or ()) for name in FORWARD_HOOKS)


#: torch's dictionaries of global module hooks (``register_module_forward_hook``...).
GLOBAL_HOOKS = (
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_hooks_with_kwargs",
    "_global_backward_pre_hooks",
    "_global_backward_hooks",
)


def global_hook_ids() -> tuple[tuple[int, ...], ...]:
    """The ids of the module hooks registered for every module, per dictionary.

    ``torch.nn.modules.module.register_module_forward_hook`` and its kin: a
    graph captured before one was registered would skip it.
    """
    return tuple(
        tuple(getattr(module_globals, name, None) or ()) for name in GLOBAL_HOOKS
    )


def warn_hooks_left_behind(
    before: list[tuple[str, nn.Module]], after: nn.Module, what: str
) -> None:
    """Warn once, naming the rebuilt modules whose other hooks were not carried.

    Args:
        before: ``named_modules()`` of the model as it was converted.
        after: the result; a module still in it was not rebuilt.
        what: the operation (``"bnn.convert"``).
    """
    kept = {id(module) for module in after.modules()}
    left = []
    for path, module in before:
        kinds = sorted(
            {kind for name, kind in OTHER_HOOKS.items() if getattr(module, name, None)}
        )
        if kinds and id(module) not in kept:
            left.append(f"{path or '<root>'} ({' and '.join(kinds)} hooks)")
    if left:
        warn_at_caller(
            f"{what}: hooks other than forward hooks are not carried to the rebuilt "
            f"modules: {', '.join(left)}; register them again on the new modules",
            UserWarning,
        )
