"""A torch module's hooks, carried to the module built from it.

``bnn.convert`` and ``bnn.to_deterministic`` build new modules (a ``VILinear``
from an ``nn.Linear`` and back). Forward hooks and pre-hooks the user
registered go with them, in their order; torch offers no public way to list a
module's hooks, so this reads its hook dictionaries. Other hooks (backward,
``state_dict``) act on gradients or parameter names that the new module does
not share: they are not carried, and :func:`warn_hooks_left_behind` names the
modules that had them. A compiled loss keys its graphs on a module's forward
hooks and on the global module hooks (:func:`global_hook_ids`);
``DrawnNetworks.each`` runs a network's calls in turn where a hook runs with
them (:func:`has_call_hooks`).

torch's hook-based reparameterisations (pruning, the legacy
``nn.utils.weight_norm`` and ``spectral_norm``) are forward pre-hooks that
recompute a weight from tensors of other names (``weight_orig``,
``weight_g``/``weight_v``) before every call: :func:`recomputing_hooks` finds
them, and :func:`refuse_recomputed_weights` refuses a module to be rebuilt
with one (the rebuilt module has no such tensors; the carried hook would fail
at the first call).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules import module as module_globals
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from pyrolite_bnn._warnings import warn_at_caller

__all__ = [
    "FORWARD_HOOKS",
    "GLOBAL_HOOKS",
    "OTHER_HOOKS",
    "carry_forward_hooks",
    "forward_hook_ids",
    "global_hook_ids",
    "has_call_hooks",
    "recomputed_weight_remedy",
    "recomputing_hooks",
    "refuse_recomputed_weights",
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


# The hook dictionaries whose hooks run with a module's calls.
_CALL_HOOKS = (*FORWARD_HOOKS, "_backward_pre_hooks", "_backward_hooks")


def has_call_hooks(module: nn.Module) -> bool:
    """Whether hooks run with ``module``'s calls: forward, pre-forward or backward.

    Example:
        >>> layer = nn.Linear(2, 3)
        >>> has_call_hooks(layer)
        False
        >>> handle = layer.register_forward_hook(lambda module, args, out: None)
        >>> has_call_hooks(layer)
        True
    """
    # Looked up in the module's dictionary: asked for every module of a
    # network at every call of DrawnNetworks.each.
    return any(map(vars(module).get, _CALL_HOOKS))


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


def _holds(module: nn.Module, name: str) -> bool:
    """Whether ``module`` itself holds a tensor ``name`` (no ``__getattr__`` run)."""
    return any(name in table for table in (module._parameters, module._buffers))


#: The legacy hook-based norms, by the name of their ``torch.nn.utils`` function.
_LEGACY_NORMS: dict[type, str] = {
    WeightNorm: "weight_norm",
    SpectralNorm: "spectral_norm",
}


def recomputing_hooks(module: nn.Module) -> dict[str, Any]:
    """``module``'s forward pre-hooks that recompute one of its tensors, by its name.

    torch's pruning methods and the legacy ``weight_norm`` and ``spectral_norm``
    hook objects, and any hook object of their pattern: one naming a tensor
    (``name``, or pruning's ``_tensor_name``) that the module computes from
    ``<name>_orig`` or from ``<name>_g`` and ``<name>_v``.
    """
    found = {}
    for hook in module._forward_pre_hooks.values():
        name = getattr(hook, "name", getattr(hook, "_tensor_name", None))
        if not isinstance(name, str):
            continue
        if isinstance(hook, (BasePruningMethod, *_LEGACY_NORMS)) or any(
            all(_holds(module, name + suffix) for suffix in sources)
            for sources in (("_orig",), ("_g", "_v"))
        ):
            found[name] = hook
    return found


def recomputed_weight_remedy(hook: Any, tensor: str) -> str:
    """How to make ``tensor`` (a qualified name) a plain weight that can be converted.

    ``hook`` is the one :func:`recomputing_hooks` found for it.
    """
    if isinstance(hook, BasePruningMethod):
        return (
            f"make the pruning of {tensor} permanent first "
            "(torch.nn.utils.prune.remove(module, name))"
        )
    kind = _LEGACY_NORMS.get(type(hook))
    if kind is not None:
        return (
            f"{tensor} uses torch.nn.utils.{kind}: use "
            f"torch.nn.utils.parametrizations.{kind} instead (or "
            f"torch.nn.utils.remove_{kind} first)"
        )
    return (
        f"{tensor} is recomputed by a forward pre-hook "
        f"({type(hook).__name__}): use a torch.nn.utils.parametrize "
        "parametrization instead, or remove the hook first"
    )


def refuse_recomputed_weights(module: nn.Module, path: str, what: str) -> None:
    """Refuse ``module`` (to be rebuilt) if a hook recomputes a tensor in it.

    The module built from it holds its current weights under their plain
    names; a carried hook would read ``weight_orig`` (or ``weight_g``) there
    and fail at the first call.

    Args:
        module: the module to be rebuilt (with everything below it).
        path: its path in the model.
        what: the operation (``"bnn.convert"``).

    Raises:
        TypeError: naming the tensor and the remedy (torch's parametrizations
            are converted at their effective weights).
    """
    for sub_path, sub in module.named_modules(prefix=path):
        for name, hook in recomputing_hooks(sub).items():
            tensor = f"{sub_path}.{name}" if sub_path else name
            raise TypeError(
                f"{what} cannot rebuild a layer whose weight a forward pre-hook "
                "recomputes from other tensors (the Bayesian layer has none of "
                f"them): {recomputed_weight_remedy(hook, tensor)}"
            )
