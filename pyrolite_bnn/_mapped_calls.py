"""Whether one call mapped over several networks equals their calls in turn.

:meth:`~pyrolite_bnn.DrawnNetworks.each` runs network ``s`` on row ``s`` of
its inputs. One call of a network mapped with ``torch.vmap`` over the
networks' weights and the inputs' rows returns what the ``S`` calls one
after the other return where a call is a function of its inputs and of the
network's state, and changes neither. It runs the ``forward`` code once: an
update of a module's buffer or of an input in place would happen once for all
networks instead of ``S`` times (a count of calls, a normaliser's running
statistics), a hook would run once, and a tensor kept beyond the call (``self.last
= h``, a forward hook storing an output for feature extraction) would be
``vmap``'s wrapper, which fails when used after the call. A mapped call that
fails part-way (``vmap`` refuses a value read into Python, an operator
without a batching rule) would keep the changes it made before it failed,
and the calls in turn would make them again.

So the decision is taken before anything runs (:func:`unmapped_reason`),
from what is known of the network's modules; where anything is not known,
the networks run in turn. The calls are mapped only where:

* no hook runs with a module's call: none of the modules has forward hooks,
  pre-hooks or backward hooks (a lazy module not yet initialised has its
  pre-hook), and no global module hook is registered
  (``torch.nn.modules.module.register_module_forward_hook`` and its kin;
  this library's own, which watches its networks' calls, aside);
* no batch norm takes the batch's statistics (they would be each network's
  rows, but the running statistics would move once);
* no module is of a kind that changes state or cannot be mapped in its
  mode: a module in training mode holding buffers of its own (running
  statistics, spectral norm's vectors; this library's Bayesian layers
  aside, which keep none), one with ``inplace=True`` (its input changed in
  place), an ``nn.Embedding`` with ``max_norm`` (its weight renormalised in
  place), dropout in training mode (random numbers, which ``vmap``
  refuses), torch's recurrent layers and ``nn.LSTMCell`` (no batching rule);
* the ``forward`` code of every module of the user's, with the helpers it
  calls by name, changes nothing that outlives the call
  (:func:`~pyrolite_bnn._pyro_statements.state_change_in`: no attribute
  stored, no in-place operation, ...), and every attribute it reads from
  its module (``self.a.b``) is a module, a tensor or a plain value, or a
  method known not to change its object: torch's, Pyro's and this
  library's methods of a module other than those that change it
  (``register_buffer``, ``train``, ``append``, ...), the reading methods of
  Python's containers (``get``, ``keys``, ...), the module's own methods
  (read with ``forward``) and a module's ``forward``. A method of another
  object (``self.logger.log(h)``) or another method of a child module, a
  property or a function of the user's kept in an attribute are not read:
  not known.
"""

from __future__ import annotations

import functools
import inspect
import types
from typing import Any

from torch import Tensor, nn

from pyrolite_bnn._mode_warnings import drops_activations
from pyrolite_bnn._module_hooks import global_hook_ids, has_call_hooks
from pyrolite_bnn._network import (
    couples_examples,
    facts_kept_for_the_call,
    network_modules,
)
from pyrolite_bnn._plain_roots import watching_hook_id
from pyrolite_bnn._pyro_statements import (
    CONTAINER_MUTATORS,
    attributes_read_in,
    is_users_function,
    state_change_in,
)
from pyrolite_bnn.module import VIModule

__all__ = ["unmapped_reason"]

# torch's modules whose operators have no batching rule in torch.vmap.
_NOT_MAPPABLE = (nn.RNNBase, nn.LSTMCell)
# Methods of a module (torch's, Pyro's, this library's) that change it.
_MODULE_CHANGES = CONTAINER_MUTATORS | {
    "__delattr__",
    "__delitem__",
    "__setattr__",
    "__setitem__",
    "_apply",
    "add_module",
    "apply",
    "bfloat16",
    "cpu",
    "cuda",
    "double",
    "eval",
    "flatten_parameters",
    "float",
    "half",
    "ipu",
    "load_state_dict",
    "mtia",
    "requires_grad_",
    "reset_parameters",
    "set_extra_state",
    "set_submodule",
    "share_memory",
    "to",
    "to_empty",
    "train",
    "type",
    "xpu",
    "zero_grad",
}
# Methods of Python's containers that only read them.
_CONTAINER_READS = frozenset(
    {"__contains__", "__getitem__", "__iter__", "__len__"}
    | {"copy", "count", "get", "index", "items", "keys", "values"}
)
# What calling runs itself, not an object's __call__.
_FUNCTIONS = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    staticmethod,
    classmethod,
)
# Bound methods and partials followed to their functions, at most.
_WRAPPERS_FOLLOWED = 8
# Values read from a module that hold nothing to change.
_PLAIN_VALUES = (bool, int, float, complex, str, bytes, type(None))


class _Missing:
    """An attribute not found without running code (``__getattr__``)."""


_MISSING = _Missing()
# A Bayesian layer's random variable (a tensor drawn at the call).
_RANDOM_VARIABLE = object()


def unmapped_reason(network: nn.Module) -> str | None:
    """Why the calls of ``network`` on several weights must run in turn, if so.

    ``None`` where one call mapped over the networks is known to equal the
    calls one after the other, results and state after the call (see the
    module documentation); otherwise the first reason found, for a message.
    What can change between calls (hooks, modes) is read at every call; the
    code of a class is read once.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> class Cached(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = bnn.VILinear(2, 2)
        ...     def forward(self, x):
        ...         self.last = self.layer(x)
        ...         return self.last
        >>> unmapped_reason(bnn.VILinear(2, 2)) is None
        True
        >>> unmapped_reason(Cached())
        "the network (Cached): its forward stores the attribute 'last'"
    """
    hooks = {key for keys in global_hook_ids() for key in keys}
    if hooks - {watching_hook_id()}:
        return (
            "a global module hook is registered (torch.nn.modules.module."
            "register_module_forward_hook or its kin): it runs once for all networks"
        )
    with facts_kept_for_the_call():  # one walk of a tree of plain containers
        if couples_examples(network):
            return (
                "a batch norm takes the batch's statistics and moves its running ones"
            )
        for path, module in network_modules(network):
            reason = _module_reason(module)
            if reason is not None:
                where = f"module {path!r}" if path else "the network"
                return f"{where} ({type(module).__name__}): {reason}"
    return None


def _module_reason(module: nn.Module) -> str | None:
    """Why ``module``'s call may change state or fail when mapped, if it may."""
    if has_call_hooks(module):
        return "hooks run with its calls (forward, pre-forward or backward)"
    if vars(module).get("inplace") is True:
        return "inplace=True changes its input in place"
    if drops_activations(module):
        return "dropout draws random numbers in training mode"
    if isinstance(module, _NOT_MAPPABLE) and not isinstance(module, VIModule):
        return "torch.vmap has no batching rule for its operator"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.max_norm:
        return "max_norm renormalises its weight in place"
    if (
        module.training
        and not isinstance(module, VIModule)
        and next(module.buffers(recurse=False), None) is not None
    ):
        return "in training mode it may update its buffers"
    change = state_change_in(type(module))
    if change is not None:
        return f"its forward {change}"
    reads = attributes_read_in(type(module))
    for chain in sorted(reads) if reads else ():
        reason = _read_reason(module, chain)
        if reason is not None:
            return reason
    return None


def _read_reason(module: nn.Module, chain: tuple[str, ...]) -> str | None:
    """Why reading (or calling) ``self.<chain>`` in ``module``'s code may change state.

    ``None`` where the chain reaches a module, a tensor, a plain value, or a
    method known not to change its object (see the module documentation).
    """
    holder: object = module
    for depth, name in enumerate(chain):
        read = "self." + ".".join(chain[: depth + 1])
        value = _attribute(holder, name)
        if isinstance(value, nn.Module):
            holder = value
            continue
        if value is _RANDOM_VARIABLE or isinstance(value, (Tensor, *_PLAIN_VALUES)):
            return None  # a tensor's in-place methods are found in the code
        if isinstance(value, functools.cached_property):
            return f"reads {read}, a cached property (stored at its first read)"
        if isinstance(value, property):
            if is_users_function(value.fget):
                return f"reads {read}, a property whose code is not read"
            return None
        if value is _MISSING:
            return f"reads {read}, which is found only by running code"
        if callable(value) and not isinstance(value, type):
            return _call_reason(holder, name, value, read, own=depth == 0)
        holder = value  # a plain object: its attributes next
    return None


def _call_reason(
    holder: object, name: str, value: object, read: str, own: bool
) -> str | None:
    """Why calling the method ``name`` (``value``) of ``holder`` may change state.

    Args:
        holder: the object it is read from.
        name: its name there.
        value: what it is there (a function, a method descriptor, a callable).
        read: the chain read, for a message (``"self.cache.append"``).
        own: whether ``holder`` is the module whose code is read (its own
            methods are read with that code).
    """
    if is_users_function(_code_of(value)):
        if name == "forward":
            return None  # a module's forward is read with that module
        if own and inspect.getattr_static(type(holder), name, None) is value:
            return None  # a method of the module's class: read with its forward
        return f"calls {read}(), whose code is not read"
    if isinstance(holder, nn.Module):
        if name in _MODULE_CHANGES or name.startswith("register_"):
            return f"calls {read}(), which changes the module"
        return None
    if isinstance(holder, (list, dict, set, frozenset, tuple)):
        if name in _CONTAINER_READS:
            return None
        return f"calls {read}() on a {type(holder).__name__}"
    return f"calls {read}(), a method of a {type(holder).__name__}, not read"


def _code_of(value: object) -> object:
    """The function that calling ``value`` runs, as far as it is known.

    A bound method's or a ``functools.partial``'s function, a callable
    object's ``__call__``; a function, builtin or method descriptor itself.
    """
    for _ in range(_WRAPPERS_FOLLOWED):
        if isinstance(value, types.MethodType):
            value = value.__func__
        elif isinstance(value, functools.partial):
            value = value.func
        else:
            break
    if isinstance(value, _FUNCTIONS):
        return value
    return inspect.getattr_static(type(value), "__call__", None)


def _attribute(holder: object, name: str) -> Any:
    """``holder``'s attribute ``name`` as found without running code.

    A module's own attributes and class attributes (methods, properties as
    they are), its parameters, buffers and child modules, and for a Bayesian
    layer its random variables (:data:`_RANDOM_VARIABLE`: drawn at the call,
    which reading them would do); :data:`_MISSING` where only running code
    (a ``__getattr__`` of the module's class) would find it.
    """
    found = inspect.getattr_static(holder, name, _MISSING)
    if found is not _MISSING or not isinstance(holder, nn.Module):
        return found
    if isinstance(holder, VIModule) and name in holder.declared_variables():
        return _RANDOM_VARIABLE
    try:
        return nn.Module.__getattr__(holder, name)  # parameters, buffers, modules
    except AttributeError:
        return _MISSING
