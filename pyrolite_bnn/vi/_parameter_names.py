"""torch_blue's parameter names on a ``vi`` module: ``_<variable>_<parameter>``.

torch_blue keeps each variational parameter as a parameter of the layer itself
(``_weight_mean``, ``_weight_log_std``); here they live in the posterior modules
(``posterior.weight.loc_unconstrained``, ``posterior.weight.rho_unconstrained``).
Each leaf tensor that *is* one of torch_blue's parameters is registered on the
layer a second time under torch_blue's name, the way torch ties a shared weight:

* ``named_parameters()`` lists torch_blue's names (the layer's own parameters
  come first and a tensor seen twice is listed once); ``parameters()`` yields
  each tensor once, so optimisers see no duplicates;
* an in-place change through either name is one change (one tensor);
* ``state_dict()`` keeps one key per tensor, the posterior's (so checkpoints
  are those of the library's layers), and ``load_state_dict`` accepts a state
  with either key (torch_blue's names included); ``vi.VIModule``'s
  ``_save_to_state_dict``/``_load_from_state_dict`` call :func:`drop_aliases`
  and :func:`fill_either_key` (overrides, not hooks: a hook holds a weak
  reference to its module, which ``convert_to_vimodule``'s in-place
  conversion replaces);
* ``load_state_dict(..., assign=True)`` replaces the posterior's tensors by the
  state's: :func:`assigned_aliases` makes each alias the new tensor;
* ``.to()``, ``.double()`` and ``to_empty`` convert each tensor once, in its
  posterior (:func:`aliases_set_aside`, around ``vi.VIModule._apply``).

A parameter that is derived rather than stored (``log_std`` of a posterior
whose scale is ``softplus(rho)``) gets no alias.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from torch import Tensor, nn

from pyrolite_bnn._unwritten_tensors import unwritten_state_keys
from pyrolite_bnn.distributions.variational import Posterior

__all__ = [
    "alias_variational_parameters",
    "aliases_set_aside",
    "assigned_aliases",
    "drop_aliases",
    "fill_either_key",
    "unwritten_priors_message",
]

_ALIASES = "_torch_blue_parameter_names"


def alias_variational_parameters(
    module: nn.Module,
    variable: str,
    posterior: Posterior,
    names: Sequence[str],
    values: Sequence[Tensor],
    naming: Any,
) -> None:
    """Register the leaf ``values`` of ``variable`` under torch_blue's ``names``.

    Args:
        module: the ``vi`` layer that owns ``posterior`` as ``posterior.<variable>``.
        variable: the random variable.
        posterior: its posterior module.
        names: torch_blue's parameter names, in order (``("mean", "log_std")``).
        values: the parameters in the same order (stored or derived).
        naming: ``variational_parameter_name(variable, parameter)``.
    """
    keys = {id(p): key for key, p in posterior.named_parameters()}
    aliases: dict[str, str] = module.__dict__.setdefault(_ALIASES, {})
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, nn.Parameter) or id(value) not in keys:
            continue
        alias = naming(variable, name)
        nn.Module.register_parameter(module, alias, value)
        aliases[alias] = f"posterior.{variable}.{keys[id(value)]}"


def _aliases(module: nn.Module) -> Mapping[str, str]:
    aliases: Mapping[str, str] = module.__dict__.get(_ALIASES, {})
    return aliases


def drop_aliases(module: nn.Module, state_dict: dict[str, Any], prefix: str) -> None:
    """After saving ``module``'s own state: one key per tensor (the posterior's)."""
    for alias in _aliases(module):
        state_dict.pop(prefix + alias, None)


def fill_either_key(
    module: nn.Module, state_dict: dict[str, Any], prefix: str
) -> list[str]:
    """Before loading ``module``'s own state: a state with either name loads.

    A state saved by torch_blue (its names only) holds no priors (torch_blue
    does not save them): the module keeps its own, as torch_blue's would,
    their values put in the state. A prior tensor that holds no values
    (nothing wrote it after ``to_empty``:
    :func:`~pyrolite_bnn._unwritten_tensors.unwritten_state_keys`) has none
    to keep: it is not put in the state, and its key is returned.

    Returns:
        The state keys of the prior tensors a torch_blue state needed kept
        and that hold no values (the caller refuses the load).
    """
    from_torch_blue = False
    for alias, stored in _aliases(module).items():
        alias_key, stored_key = prefix + alias, prefix + stored
        if alias_key in state_dict and stored_key not in state_dict:
            state_dict[stored_key] = state_dict[alias_key]
            from_torch_blue = True
        elif stored_key in state_dict and alias_key not in state_dict:
            state_dict[alias_key] = state_dict[stored_key]
    priors = getattr(module, "prior", None)
    if not from_torch_blue or not isinstance(priors, nn.Module):
        return []
    unwritten = set(unwritten_state_keys(priors))
    without_values = []
    for name, value in priors.state_dict().items():
        key = f"{prefix}prior.{name}"
        if key in state_dict:
            continue
        if name in unwritten:
            without_values.append(key)
        else:
            state_dict[key] = value
    return without_values


def unwritten_priors_message(
    module: nn.Module, prefix: str, keys: Sequence[str]
) -> str:
    """Why a torch_blue state does not load into ``module``, and what to do.

    Args:
        module: the ``vi`` layer.
        prefix: its state keys' prefix (its path in the network, and a dot).
        keys: the state keys of its prior tensors that hold no values
            (:func:`fill_either_key`).
    """
    where = f"layer {prefix[:-1]!r} ({type(module).__name__})" if prefix else "layer"
    return (
        f"{where}: the state dict holds torch_blue's names of the "
        "variational parameters and no priors (torch_blue saves none), so the "
        "layer keeps its own priors, and nothing wrote values into "
        f"{', '.join(repr(key) for key in keys)} after to_empty: call "
        "reset_parameters() on the model's modules before loading (the priors "
        "return to the values they were built with), or load a state dict that "
        "holds the priors (this library's state_dict())"
    )


@contextmanager
def aliases_set_aside(module: nn.Module) -> Iterator[None]:
    """Around ``module._apply`` (``.to()``, ``.double()``, ``to_empty``).

    torch applies the function to each module's own parameters after its
    children's: an alias, the posterior's parameter registered again, was
    converted a second time. ``to_empty`` then gave the posterior's tensor
    new memory twice, the second time after the posterior had recorded the
    first (filled with NaN, to see writes): the new address read as a write,
    and a tensor never written since was read as it was. The aliases are out
    of the module's parameters during the call; afterwards each is the
    posterior's tensor again (the one it holds now), in its place.
    """
    parameters = module._parameters
    aliases = _aliases(module)
    order = list(parameters.items())
    for alias in aliases:
        parameters.pop(alias, None)
    try:
        yield
    finally:
        kept = dict(parameters)
        parameters.clear()
        for name, value in order:
            # A tensor moved (parametrize, prune) leaves its alias as it was.
            with suppress(AttributeError):
                if name in aliases:
                    value = module.get_parameter(aliases[name])
            parameters[name] = kept.get(name, value)
        for name, value in kept.items():
            parameters.setdefault(name, value)


@contextmanager
def assigned_aliases(
    module: nn.Module, state_dict: dict[str, Any], prefix: str
) -> Iterator[None]:
    """Around loading ``module``'s own state with ``assign=True``.

    torch then replaces each parameter by the state's tensor, ``setattr`` on
    the module that owns it: the posterior (a child, loaded after this
    module) gets a new tensor, and the alias of the old one on this module
    would be left behind (and torch's ``setattr`` of the alias itself fails:
    the name is also one that ``vi.VIModule.__getattr__`` resolves). So the
    state's tensor of each alias is made the :class:`~torch.nn.Parameter` the
    posterior will receive (torch assigns a ``Parameter`` as it is), the
    aliases stay out of this module's own load, and afterwards each alias is
    that new parameter. A tensor of the wrong shape is left to torch's error.
    """
    parameters = module._parameters
    new: dict[str, nn.Parameter] = {}
    for alias, stored in _aliases(module).items():
        state_dict.pop(prefix + alias, None)
        value = state_dict.get(prefix + stored)
        current = parameters.get(alias)
        if not isinstance(value, Tensor) or current is None:
            continue
        if value.shape != current.shape:
            continue
        if not isinstance(value, nn.Parameter):
            value = nn.Parameter(value, requires_grad=current.requires_grad)
            state_dict[prefix + stored] = value
        new[alias] = value
    order = list(parameters.items())
    for alias in _aliases(module):
        parameters.pop(alias, None)
    try:
        yield
    finally:
        kept = dict(parameters)
        parameters.clear()
        for name, value in order:
            parameters[name] = new.get(name, kept.get(name, value))
        for name, value in kept.items():
            parameters.setdefault(name, value)
