"""Copies of a user's module: ``copy.deepcopy`` made faithful, or refused clearly.

``bnn.convert``, ``bnn.to_deterministic`` and ``bnn.laplace`` work on a copy
of the model they are given. torch copies only leaf tensors, so a module
holding a computed weight as an attribute (pruning, the old ``weight_norm``)
cannot be copied, and torch's own error points at ``weight_norm`` whatever
the cause; and copying runs ``__setstate__``, which for
``nn.TransformerDecoderLayer`` puts ``F.relu`` in front of an activation
module. :func:`copy_module` names the cause and its remedy, and undoes the
shadowing.
"""

from __future__ import annotations

import copy
from typing import TypeVar

from torch import Tensor, nn

from pyrolite_bnn._module_hooks import recomputed_weight_remedy, recomputing_hooks

__all__ = ["copy_module"]

ModuleType = TypeVar("ModuleType", bound=nn.Module)


def copy_module(module: ModuleType, caller: str) -> ModuleType:
    """``copy.deepcopy(module)``, for ``caller``, which works on a copy.

    Args:
        module: the module to copy.
        caller: the public function copying it, named in the error
            (``"bnn.convert"``).

    Returns:
        The copy, computing what ``module`` computes.

    Raises:
        TypeError: torch cannot copy ``module``: the message names the
            computed tensors it holds (the pruned weights) and what to do.

    Example:
        >>> from torch.nn.utils import prune
        >>> pruned = prune.l1_unstructured(nn.Linear(3, 2), "weight", amount=0.5)
        >>> try:
        ...     copy_module(pruned, "bnn.convert")
        ... except TypeError as error:
        ...     print("make the pruning of weight permanent" in str(error))
        True
        >>> copy_module(prune.remove(pruned, "weight"), "bnn.convert")
        Linear(in_features=3, out_features=2, bias=True)
    """
    try:
        duplicate = copy.deepcopy(module)
    except RuntimeError as error:  # torch's own limit (pruning, old weight_norm)
        raise TypeError(_uncopyable_message(module, error, caller)) from error
    _drop_copy_shadows(module, duplicate)
    return duplicate


def _drop_copy_shadows(original: nn.Module, duplicate: nn.Module) -> None:
    """Undo attributes that copying added in front of submodules of the same name.

    ``copy.deepcopy`` runs ``__setstate__``, and torch's
    ``TransformerDecoderLayer.__setstate__`` sets ``activation = F.relu``
    whenever the activation is a module (kept in ``_modules``, not in the
    instance dict): the copy would compute ReLU where the original computes
    ``nn.GELU()``. Such an entry, absent from the original, is removed.
    """
    for mine, copied in zip(original.modules(), duplicate.modules(), strict=True):
        # keys(): a TorchScript module's module dict cannot be iterated itself
        for name in set(vars(copied)) & set(copied._modules.keys()):
            if name not in vars(mine):
                del vars(copied)[name]


def _uncopyable_message(module: nn.Module, error: RuntimeError, caller: str) -> str:
    """Why ``copy.deepcopy`` failed on ``module``, and what to do about it.

    torch copies only leaf tensors; pruning (``torch.nn.utils.prune``) and the
    old ``torch.nn.utils.weight_norm`` keep a computed weight as a plain
    attribute, recomputed by a forward pre-hook (whose remedy is named).
    """
    computed = [
        f"{path}.{name}" if path else name
        for path, sub in module.named_modules()
        for name, value in vars(sub).items()
        if isinstance(value, Tensor) and not value.is_leaf
    ]
    remedies = [
        recomputed_weight_remedy(hook, f"{path}.{name}" if path else name)
        for path, sub in module.named_modules()
        for name, hook in recomputing_hooks(sub).items()
    ]
    fix = "; ".join(remedies) or (
        "keep no computed tensor as a plain module attribute (torch's "
        "parametrizations, torch.nn.utils.parametrize, are copied as they are)"
    )
    held = f" (computed tensors held as attributes: {', '.join(computed)})"
    return (
        f"{caller} works on a copy of the model, and torch cannot copy this "
        f"one{held if computed else ''}: {fix}. torch said: {error}"
    )
