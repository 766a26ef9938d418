"""Parameters a model holds at two or more paths (weight tying), after a conversion.

``bnn.convert`` and ``vi.convert_to_vimodule`` give each Bayesian layer random
variables of its own: a parameter tied between a converted layer and another
module (a language model's output layer sharing its embedding) becomes
independent variables, or a variable and a deterministic weight. Both
conversions find the ties in the model before and ask the converted network
which of them it still holds as one parameter (:func:`warn_untied`), so the
warning follows what the conversion did, whatever selected the layers
(``include=``/``exclude=`` paths or types, ban lists).
"""

from __future__ import annotations

from torch import nn

from pyrolite_bnn._warnings import warn_at_caller

__all__ = ["tied_parameters", "untied", "warn_untied"]


def tied_parameters(module: nn.Module) -> list[list[str]]:
    """Paths of each parameter held by two or more modules (weight tying).

    A module reachable at two paths counts once (its first path).

    Example:
        >>> lm = nn.ModuleDict({"embed": nn.Embedding(5, 2), "head": nn.Linear(2, 5)})
        >>> lm["head"].weight = lm["embed"].weight
        >>> tied_parameters(lm)
        [['embed.weight', 'head.weight']]
    """
    owners: dict[int, list[str]] = {}
    seen: set[int] = set()
    for path, sub in module.named_modules():
        if id(sub) in seen:
            continue
        seen.add(id(sub))
        for name, parameter in sub.named_parameters(recurse=False):
            owners.setdefault(id(parameter), []).append(
                f"{path}.{name}" if path else name
            )
    return [paths for paths in owners.values() if len(paths) > 1]


def untied(network: nn.Module, groups: list[list[str]]) -> list[list[str]]:
    """The groups of tied paths that ``network`` no longer holds as one parameter.

    A path whose module is gone or holds no such parameter (a Bayesian layer
    keeps its weights as random variables) counts as untied.

    Example:
        >>> lm = nn.ModuleDict({"embed": nn.Embedding(5, 2), "head": nn.Linear(2, 5)})
        >>> lm["head"].weight = lm["embed"].weight
        >>> untied(lm, [["embed.weight", "head.weight"]])
        []
        >>> lm["head"].weight = nn.Parameter(lm["embed"].weight.detach().clone())
        >>> untied(lm, [["embed.weight", "head.weight"]])
        [['embed.weight', 'head.weight']]
    """

    def held(path: str) -> nn.Parameter | None:
        owner, _, name = path.rpartition(".")
        try:
            module = network.get_submodule(owner)
        except AttributeError:
            return None
        return dict(module.named_parameters(recurse=False)).get(name)

    def kept(group: list[str]) -> bool:
        found = [held(path) for path in group]
        return found[0] is not None and all(p is found[0] for p in found)

    return [group for group in groups if not kept(group)]


def warn_untied(
    network: nn.Module,
    groups: list[list[str]],
    caller: str,
    remedy: str,
) -> None:
    """Warn once, naming the tied parameters ``network`` no longer shares.

    Args:
        network: the converted network.
        groups: :func:`tied_parameters` of the model it was converted from.
        caller: the conversion, for the message (``"bnn.convert"``).
        remedy: how that conversion keeps a tie (which layers to leave as
            they are).
    """
    broken = untied(network, groups)
    if broken:
        warn_at_caller(
            f"{caller}: tied parameters become independent random variables: "
            + "; ".join(" = ".join(group) for group in broken)
            + f" ({remedy} to keep them tied and deterministic)",
            UserWarning,
        )
