"""Pyro statements in a network's forward, on the PyTorch-style path.

On the PyTorch-style path (``loss_fn(model(x), y)``, ``predict``, ``fit``) no
Pyro handler runs: the loss sees the Bayesian layers' weights and nothing
else. A ``pyro.sample`` statement in a ``forward`` would draw a latent site
from its prior on every call, never learn it and leave it out of the ELBO
(an observed one: leave its log-density out); a ``pyro.param`` statement
would create a parameter in Pyro's global store, which ``model.parameters()``
(the optimizer's) and ``state_dict`` do not hold. A ``PyroSample`` attribute
of a module (``self.g = PyroSample(prior)``, the declaration form of
``pyro.sample``) is the same where the network reads it: the network's
:func:`~pyrolite_bnn._network.refuse_pyro_statements` finds those in the
modules' tables and refuses the ones read as a statement would be found
(:func:`attributes_read_in`), with :func:`pyro_statement_refusal` too.
Under Pyro inference (``SVI`` on ``loss_fn.pyro_model``, the user's own model)
Pyro's semantics apply, but for a latent site drawn while the network runs
several particles (see :mod:`pyrolite_bnn._sites`).

The statements are found in the code of the network's ``forward`` methods
(those of classes outside torch, Pyro and this library), not by a Pyro handler:
Pyro's handler stack is one list for the process, so a handler on the
PyTorch-style path would send other threads' calls down Pyro's path. What is
found: ``pyro.sample``, ``pyro.param`` and ``pyro.factor`` called in the
method or in functions defined in it (lambdas, comprehensions), through the
``pyro`` module under any name or imported by name (``from pyro import
sample``), and the same in the Python functions the method names, followed
up to :data:`HELPER_DEPTH` calls deep: a module-level function (``helper(h)``,
``helpers.add_noise(h)``) or another method of the module (``self.noisy(h)``).
Not followed: functions reached any other way (a callable attribute, a
function passed in, a method of another object). ``pyro.deterministic``
(which only records a value) and ``pyro.plate`` are not refused.

A ``PyroSample`` attribute counts as read where that same code (``forward``,
the functions defined in it, the module's methods it calls by name; a
module-level helper has no module to read from) names it on the module:
``self.g``, or ``self.inner.g`` for one of a child module. Not seen: a read
through ``getattr``, a subscript (``self.layers[0].g``), a variable
(``for layer in self.layers: layer.g``) or a function the module is passed
to, and reads in methods ``forward`` does not call (a ``model`` method of a
Pyro module around the network, say, whose sites are Pyro's to handle).

The same reading finds the statements that change state outliving the
call (:func:`state_change_in`), which ``DrawnNetworks.each`` needs to know
before it runs one call of a network mapped over several networks
(:mod:`pyrolite_bnn._mapped_calls`): a store of an attribute on any object
(``self.last = h``), an item assignment (``x[0] = 1``), an augmented
assignment (``h += 1``, in place on a tensor), a call of a method named as
torch's in-place ones (``x.mul_(2)``, ``torch.relu_(h)``) or of a mutating
special method (``__setitem__``), a call with an ``out=``, ``inplace=`` or
``max_norm=`` argument, a call of ``setattr``/``delattr``, a global or
enclosing function's variable assigned, and a container method that changes
its container (``append``, ``update``, ...) called on an argument, a global
or an enclosing function's variable. Methods called on a module's
attributes (``self.cache.append(h)``, ``self.logger.log(h)``) are among
the attributes read (:func:`attributes_read_in`), for a reader that sees
the module's objects to judge. Not seen: changes made through another name
for an argument (``h = x; h[0] = 1`` is seen as an item assignment, but a
container method on a local variable is not), through a subscript or a
variable (``self.caches[0].append(h)``) or in code that is not read.

Code that is not read may read any attribute of its module
(:func:`may_read_any_attribute`): a ``forward`` of torch, Pyro or this library
(``nn.Linear`` reads ``self.weight``, an RNN its weights through a list of
their names, a Bayesian layer built with ``bias=False`` its ``self.bias``),
and whatever a user's method reaches through ``super()`` (``super().forward(x)``
in a subclass of ``PyroModule[nn.Linear]``). Every ``PyroSample`` attribute of
such a module counts as read, not only those named like its parameters: what
that code reads is not known, and an attribute it never reads is rare (one set
beside a layer's parameters for a Pyro model around the network to read, say),
while one it reads and the loss never sees is a prior drawn afresh on every
call. Its children's attributes are theirs to declare. ``nn.Module``'s own
``forward`` (a container's, which raises if called) reads nothing; torch's,
Pyro's and this library's other methods called on the module by name
(``self.parameters()``) are taken to read none of its ``PyroSample``
attributes: they read its tables, not its attributes.
"""

from __future__ import annotations

import builtins
import dis
import inspect
import os
import types
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyro
import pyro.primitives
import torch
from torch import nn

__all__ = [
    "CONTAINER_MUTATORS",
    "HELPER_DEPTH",
    "PyroStatement",
    "StateChange",
    "attributes_read_in",
    "is_users_function",
    "may_read_any_attribute",
    "pyro_statement_in",
    "pyro_statement_refusal",
    "state_change_in",
]

HELPER_DEPTH = 4
"""How many calls deep below ``forward`` helper functions are read."""

_STATEMENTS = ("sample", "param", "factor")
_STATEMENT_FUNCTIONS = {
    id(getattr(pyro.primitives, name)): name for name in _STATEMENTS
}
_PYRO_MODULES = (pyro, pyro.primitives)
_ATTRIBUTE_LOADS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
# The instructions that load a local or closure variable (Python 3.10 to 3.14).
_VARIABLE_LOADS = frozenset(
    {
        "LOAD_DEREF",
        "LOAD_FAST",
        "LOAD_FAST_BORROW",
        "LOAD_FAST_BORROW_LOAD_FAST_BORROW",
        "LOAD_FAST_CHECK",
        "LOAD_FAST_LOAD_FAST",
    }
)
# Instructions that change state outliving the call, whatever they act on.
_STORES = {
    "STORE_ATTR": "stores the attribute {!r}",
    "DELETE_ATTR": "deletes the attribute {!r}",
    "STORE_SUBSCR": "assigns to an item (x[...] = ...)",
    "DELETE_SUBSCR": "deletes an item (del x[...])",
    "STORE_SLICE": "assigns to a slice (x[a:b] = ...)",
    "DELETE_SLICE": "deletes a slice (del x[a:b])",
    "STORE_GLOBAL": "assigns the global variable {!r}",
    "DELETE_GLOBAL": "deletes the global variable {!r}",
}
_CELL_STORES = frozenset({"STORE_DEREF", "DELETE_DEREF"})
# The keyword arguments of torch's functions that write into a tensor given.
_WRITING_KEYWORDS = ("out", "inplace", "max_norm")
_KEYWORD_CALLS = frozenset({"CALL_KW", "CALL_FUNCTION_KW"})
# Special methods that change their object (the in-place operators too).
_MUTATING_SPECIAL_METHODS = frozenset(
    {"__setattr__", "__delattr__", "__setitem__", "__delitem__", "__setstate__"}
    | {
        f"__i{operator}__"
        for operator in (
            "add",
            "sub",
            "mul",
            "matmul",
            "truediv",
            "floordiv",
            "mod",
            "pow",
            "lshift",
            "rshift",
            "and",
            "or",
            "xor",
        )
    }
)
CONTAINER_MUTATORS = frozenset(
    {
        "add",
        "append",
        "appendleft",
        "clear",
        "discard",
        "extend",
        "extendleft",
        "insert",
        "pop",
        "popitem",
        "popleft",
        "remove",
        "reverse",
        "rotate",
        "setdefault",
        "sort",
        "update",
    }
)
"""Methods of Python's containers (and torch's) that change the container."""
# torch's, Pyro's and this library's source folders: their forwards make no
# Pyro statement, and are not read (what they read of the module is not known).
_OWN_PACKAGES = tuple(
    str(folder) + os.sep
    for folder in (
        Path(torch.__file__).parent,
        Path(pyro.__file__).parent,
        Path(__file__).parent,
    )
)


class PyroStatement(NamedTuple):
    """A Pyro statement found below a ``forward``.

    Attributes:
        name: ``"sample"``, ``"param"`` or ``"factor"``.
        route: the helper functions that lead to it, outermost first (empty:
            in ``forward`` itself).
        attribute: for a ``PyroSample`` attribute (the declaration form of
            ``pyro.sample``, a site drawn whenever the module reads it), its
            name; ``None`` for a statement in code.
    """

    name: str
    route: tuple[str, ...] = ()
    attribute: str | None = None


class StateChange(NamedTuple):
    """A statement below a ``forward`` that changes state outliving the call.

    Attributes:
        what: the statement, for a message (``"stores the attribute 'last'"``).
        route: the helper functions that lead to it, outermost first (empty:
            in ``forward`` itself).
    """

    what: str
    route: tuple[str, ...] = ()

    def __str__(self) -> str:
        """The statement with its route: ``"calls mul_() through scale()"``."""
        return self.what + "".join(f" through {name}()" for name in self.route)


class _ForwardCode(NamedTuple):
    """What a class's ``forward`` and the helpers it calls hold."""

    statement: PyroStatement | None
    attribute_reads: frozenset[tuple[str, ...]]
    reads_any_attribute: bool
    state_change: StateChange | None = None


class _Found(NamedTuple):
    """The first Pyro statement and the first state change found in some code."""

    statement: PyroStatement | None
    change: StateChange | None

    def after(self, below: _Found, helper: str) -> _Found:
        """These, or where there are none, what ``helper``'s code holds."""
        statement, change = self
        if statement is None and below.statement is not None:
            statement = below.statement._replace(route=(helper, *below.statement.route))
        if change is None and below.change is not None:
            change = below.change._replace(route=(helper, *below.change.route))
        return _Found(statement, change)


@dataclass
class _Reading:
    """What the code of one function is read with, and what reading it finds.

    Attributes:
        globals_: the function's globals.
        owner: the class whose method the function is (``None``: a function).
        module_name: the variable that holds the module (its first argument).
        arguments: its other arguments (a call's inputs).
        enclosing: its free variables (an enclosing function's).
        helpers: the functions it names that are read next, with their owners.
        reads: the chains of attributes read from the module.
    """

    globals_: dict[str, Any]
    owner: type[Any] | None
    module_name: str | None
    arguments: frozenset[str]
    enclosing: frozenset[str]
    helpers: list[tuple[types.FunctionType, type[Any] | None]] = field(
        default_factory=list
    )
    reads: set[tuple[str, ...]] = field(default_factory=set)


# Decorators of torch's, Pyro's or this library's followed to the user's function.
_WRAPPERS_FOLLOWED = 8

# Results per class and forward function (read again if the class's is replaced).
# Weak in the class: a strong key held every class a network was ever built
# from, with the globals and closures of its functions (a class defined in a
# function, a notebook cell run again, and the models and optimizers they
# reach), for the life of the process.
_FOUND: weakref.WeakKeyDictionary[type[Any], dict[object, _ForwardCode]]
_FOUND = weakref.WeakKeyDictionary()

# A forward that reads nothing (nn.Module's own, which raises if called), and
# one whose code is not read: no Pyro statement, any attribute.
_NOTHING = _ForwardCode(None, frozenset(), reads_any_attribute=False)
_NOT_READ = _ForwardCode(None, frozenset(), reads_any_attribute=True)
# In the attribute chains read while reading code: the module itself, reached
# by code that is not read (through super()), which may read any attribute.
_WHOLE_MODULE: tuple[str, ...] = ()


def pyro_statement_in(module_type: type[Any]) -> PyroStatement | None:
    """The first Pyro statement in ``module_type.forward`` or the helpers it calls.

    ``None`` for a class whose ``forward`` is torch's, Pyro's or this
    library's, or makes none (see the module documentation for what is found).

    Example:
        >>> import torch, pyro, pyro.distributions as dist
        >>> class Noisy(torch.nn.Module):
        ...     def forward(self, h):
        ...         return h + pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> class Helped(torch.nn.Module):
        ...     def forward(self, h):
        ...         return self.noisy(h)
        ...     def noisy(self, h):
        ...         return h + pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> pyro_statement_in(Noisy), pyro_statement_in(torch.nn.Linear)
        (PyroStatement(name='sample', route=(), attribute=None), None)
        >>> pyro_statement_in(Helped).route
        ('noisy',)
    """
    return _forward_code(module_type).statement


def attributes_read_in(module_type: type[Any]) -> frozenset[tuple[str, ...]]:
    """The attributes that ``module_type.forward`` (or a helper) reads from ``self``.

    Each is the chain of names read from the module, ``self.scale`` as
    ``("scale",)``, ``self.inner.scale`` as ``("inner", "scale")``; a
    ``PyroSample`` attribute is drawn only where one is read. Read are the
    same methods as for statements (see the module documentation): ``forward``
    and the module's own methods it calls by name (``self.method``), up to
    :data:`HELPER_DEPTH` calls deep, with the functions defined in them;
    module-level helpers have no module to read from. Empty for a class whose
    ``forward`` is torch's, Pyro's or this library's, whose reads are not
    known (:func:`may_read_any_attribute`).

    Example:
        >>> import torch
        >>> class Scaled(torch.nn.Module):
        ...     def forward(self, h):
        ...         return self.shifted(h) * self.scale
        ...     def shifted(self, h):
        ...         return h + self.inner.shift
        >>> sorted(attributes_read_in(Scaled))
        [('inner', 'shift'), ('scale',), ('shifted',)]
        >>> attributes_read_in(torch.nn.Linear)
        frozenset()
    """
    return _forward_code(module_type).attribute_reads


def may_read_any_attribute(module_type: type[Any]) -> bool:
    """Whether ``module_type.forward`` may read any attribute of its module.

    ``True`` where code that is not read runs with the module: a ``forward``
    of torch, Pyro or this library (``nn.Linear``'s reads ``self.weight``),
    or one of the user's that reaches code through ``super()``. Every
    ``PyroSample`` attribute of such a module counts as read (see the module
    documentation); its children's attributes are not meant, only its own.
    ``False`` for a class whose ``forward`` is the user's (what it reads is
    :func:`attributes_read_in`) and for ``nn.Module``'s own (a container's:
    no ``forward``, it raises if called).

    Example:
        >>> import torch
        >>> class Twice(torch.nn.Linear):
        ...     def forward(self, h):
        ...         return 2 * super().forward(h)
        >>> class Scaled(torch.nn.Module):
        ...     def forward(self, h):
        ...         return h * self.scale
        >>> [
        ...     may_read_any_attribute(module_type)
        ...     for module_type in (torch.nn.Linear, Twice, Scaled, torch.nn.ModuleList)
        ... ]
        [True, True, False, False]
    """
    return _forward_code(module_type).reads_any_attribute


def state_change_in(module_type: type[Any]) -> StateChange | None:
    """The first change of state outliving the call in ``module_type.forward``.

    Or in the helpers it calls by name, read as for Pyro statements (see the
    module documentation for what is found and what is not seen): a
    ``forward`` that changes nothing but its own local variables is a function
    of its inputs and the module's state. ``None`` for a class whose
    ``forward`` makes none, and for one whose ``forward`` is torch's, Pyro's
    or this library's (not read: what such a module changes is known by its
    class, see :mod:`pyrolite_bnn._mapped_calls`).

    Example:
        >>> import torch
        >>> class Cached(torch.nn.Module):
        ...     def forward(self, h):
        ...         self.last = h.detach()
        ...         return h
        >>> class Counted(torch.nn.Module):
        ...     def forward(self, h):
        ...         self.count()
        ...         return h
        ...     def count(self):
        ...         self.calls.add_(1)
        >>> print(state_change_in(Cached))
        stores the attribute 'last'
        >>> print(state_change_in(Counted))
        calls add_(), in place on a tensor through count()
        >>> state_change_in(torch.nn.Linear) is None
        True
    """
    return _forward_code(module_type).state_change


def is_users_function(value: object) -> bool:
    """Whether ``value`` is a Python function of the user's, whose code is read.

    A function outside torch, Pyro and this library (or one of theirs
    decorating it, followed to the user's through ``__wrapped__``); ``False``
    for their functions, builtins and other callables.

    Example:
        >>> import torch
        >>> def helper(h):
        ...     return h
        >>> is_users_function(helper), is_users_function(torch.nn.Linear.forward)
        (True, False)
    """
    return _user_function(value) is not None


def _forward_code(module_type: type[Any]) -> _ForwardCode:
    """What ``module_type.forward`` holds, read once per class and forward."""
    method = getattr(module_type, "forward", None)
    found = _FOUND.get(module_type)
    if found is None:
        found = _FOUND.setdefault(module_type, {})
    elif method in found:  # read before (a network's every call asks)
        return found[method]
    found[method] = _read_forward(module_type, method)
    return found[method]


def _read_forward(module_type: type[Any], method: object) -> _ForwardCode:
    """What ``method``, the ``forward`` of ``module_type``, holds."""
    if method is None or method is nn.Module.forward:
        return _NOTHING
    forward = _user_function(method)
    if forward is None:
        return _NOT_READ
    reads: set[tuple[str, ...]] = set()
    statement, change = _read_function(forward, module_type, HELPER_DEPTH, set(), reads)
    return _ForwardCode(
        statement,
        frozenset(reads - {_WHOLE_MODULE}),
        reads_any_attribute=_WHOLE_MODULE in reads,
        state_change=change,
    )


def _user_function(value: object) -> types.FunctionType | None:
    """The Python function outside torch, Pyro and this library that ``value`` is.

    A decorator of theirs around the user's function (``@torch.no_grad()``,
    the ``vi`` layers' per-particle run, ``convert``'s wrapper) leaves it at
    ``__wrapped__`` (``functools.wraps``): the user's code is read, not the
    decorator's.
    """
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    for _ in range(_WRAPPERS_FOLLOWED):
        if not isinstance(value, types.FunctionType):
            return None
        if not value.__code__.co_filename.startswith(_OWN_PACKAGES):
            return value
        value = getattr(value, "__wrapped__", None)
    return None


def _read_function(
    function: types.FunctionType,
    owner: type[Any] | None,
    depth: int,
    seen: set[types.CodeType],
    reads: set[tuple[str, ...]],
) -> _Found:
    """The first Pyro statement and state change in ``function`` or its helpers.

    Adds to ``reads`` the attributes they read from the module (with
    ``owner``, the class whose method ``function`` is; :data:`_WHOLE_MODULE`
    where they hand it to code that is not read).
    """
    seen.add(function.__code__)
    code = function.__code__
    has_module = owner is not None and code.co_argcount > 0
    module_name = code.co_varnames[0] if has_module else None
    reading = _Reading(
        function.__globals__,
        owner,
        module_name,
        _arguments(code) - {module_name},
        frozenset(code.co_freevars),
        reads=reads,
    )
    found = _read_code(code, reading)
    if depth == 0:
        return found
    for helper, helper_owner in reading.helpers:
        if helper.__code__ in seen:
            continue
        below = _read_function(helper, helper_owner, depth - 1, seen, reads)
        found = found.after(below, helper.__name__)
    return found


def _arguments(code: types.CodeType) -> frozenset[str]:
    """The names of the arguments of the function whose code is ``code``."""
    count = code.co_argcount + code.co_kwonlyargcount
    count += bool(code.co_flags & inspect.CO_VARARGS)
    count += bool(code.co_flags & inspect.CO_VARKEYWORDS)
    return frozenset(code.co_varnames[:count])


def _read_code(code: types.CodeType, reading: _Reading) -> _Found:
    """The first Pyro statement and state change that ``code`` (or code in it) makes.

    Appends to ``reading.helpers`` the functions it names that may hold one:
    module-level functions (called with no owner) and, with an owner, the
    owner's methods read from the module (``self.name``; the module is in
    the variable ``reading.module_name``, a local or, in code defined in the
    method, a closure's); adds to ``reading.reads`` the chains of attributes
    read from the module, and :data:`_WHOLE_MODULE` where a method calls
    ``super()`` (whose code, the base class's, is not read).
    """
    statement: PyroStatement | None = None
    change: StateChange | None = None
    previous: object = None
    chain: list[str] | None = None  # attributes read so far from the module
    # The argument, global or enclosing variable whose attributes are read.
    outer: str | None = None
    owner = reading.owner
    instructions = list(dis.get_instructions(code))
    for index, instruction in enumerate(instructions):
        if change is None:
            following = (
                instructions[index + 1] if index + 1 < len(instructions) else None
            )
            change = _state_change(instruction, following, code, chain, outer, reading)
        if chain is not None and instruction.opname in _ATTRIBUTE_LOADS:
            if not chain and owner is not None:
                method = inspect.getattr_static(owner, instruction.argval, None)
                _note_helper(reading.helpers, method, owner)
            chain.append(str(instruction.argval))
            continue
        if chain:
            reading.reads.add(tuple(chain))
        chain = [] if _loads(instruction, reading.module_name) else None
        if outer is None or instruction.opname not in _ATTRIBUTE_LOADS:
            outer = _outer_variable(instruction, reading)
        if instruction.opname == "LOAD_GLOBAL":
            value = _global_value(reading.globals_, instruction.argval)
            if value is super and owner is not None:
                reading.reads.add(_WHOLE_MODULE)
            name = _STATEMENT_FUNCTIONS.get(id(value))
            if name is not None and statement is None:
                statement = PyroStatement(name)
            _note_helper(reading.helpers, value, None)
            previous = value
            continue
        if instruction.opname in _ATTRIBUTE_LOADS:
            if any(previous is module for module in _PYRO_MODULES):
                if instruction.argval in _STATEMENTS and statement is None:
                    statement = PyroStatement(str(instruction.argval))
            elif isinstance(previous, types.ModuleType):
                helper = getattr(previous, instruction.argval, None)
                _note_helper(reading.helpers, helper, None)
        previous = None
    if chain:
        reading.reads.add(tuple(chain))
    found = _Found(statement, change)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            below = _read_code(constant, reading)
            found = _Found(
                found.statement or below.statement, found.change or below.change
            )
    return found


def _state_change(
    instruction: dis.Instruction,
    following: dis.Instruction | None,
    code: types.CodeType,
    chain: list[str] | None,
    outer: str | None,
    reading: _Reading,
) -> StateChange | None:
    """The change of state outliving the call that ``instruction`` makes, if any.

    Args:
        instruction: the instruction.
        following: the next one (a keyword call's names come before it).
        code: the code they are in.
        chain: the attributes read so far from the module, if the instruction
            reads on from it (empty: from the module itself).
        outer: the argument, global or enclosing variable it reads on from.
        reading: what the code is read with.
    """
    opname, argval = instruction.opname, instruction.argval
    if opname in _STORES:
        return StateChange(_STORES[opname].format(argval))
    if opname in _CELL_STORES and argval in reading.enclosing:
        return StateChange(f"assigns the variable {argval!r} of an enclosing function")
    if opname.startswith("INPLACE_") or (
        opname == "BINARY_OP" and instruction.argrepr.endswith("=")
    ):
        operator = instruction.argrepr or opname
        return StateChange(
            f"makes an augmented assignment ({operator}), in place on a tensor"
        )
    if opname in _ATTRIBUTE_LOADS:
        name = str(argval)
        if name in _MUTATING_SPECIAL_METHODS:
            return StateChange(f"calls {name}()")
        # The module's own attribute (self.linear_) is judged with the module.
        if _is_in_place_name(name) and chain != []:
            return StateChange(f"calls {name}(), in place on a tensor")
        if outer is not None and name in CONTAINER_MUTATORS:
            return StateChange(f"calls {name}() on {outer!r}, which outlives the call")
    if opname == "LOAD_GLOBAL":
        value = _global_value(reading.globals_, argval)
        if value is setattr or value is delattr:
            return StateChange(f"calls {argval}()")
    written = [
        name
        for name in _keywords(instruction, following, code)
        if name in _WRITING_KEYWORDS
    ]
    if written:
        return StateChange(f"passes {written[0]}=, which writes into a tensor")
    return None


def _is_in_place_name(name: str) -> bool:
    """Whether ``name`` is named as torch's in-place methods (``mul_``, ``relu_``)."""
    return len(name) > 1 and name.endswith("_") and not name.startswith("_")


def _keywords(
    instruction: dis.Instruction,
    following: dis.Instruction | None,
    code: types.CodeType,
) -> tuple[str, ...]:
    """The keyword names of the call ``instruction`` names them for, if any.

    ``KW_NAMES`` (Python 3.11 and 3.12), or the names' tuple loaded right
    before the call (``CALL_KW``, ``CALL_FUNCTION_KW``).
    """
    names: object = ()
    if instruction.opname == "KW_NAMES" and instruction.arg is not None:
        names = code.co_consts[instruction.arg]
    elif (
        instruction.opname == "LOAD_CONST"
        and following is not None
        and following.opname in _KEYWORD_CALLS
    ):
        names = instruction.argval
    if not isinstance(names, tuple):
        return ()
    return tuple(name for name in names if isinstance(name, str))


def _outer_variable(instruction: dis.Instruction, reading: _Reading) -> str | None:
    """The variable ``instruction`` loads if it outlives the call.

    An argument of the function (its caller's object), a global that is no
    Python module, or an enclosing function's variable.
    """
    loaded = _loaded_variable(instruction)
    if loaded is not None:
        return loaded if loaded in reading.arguments | reading.enclosing else None
    if instruction.opname == "LOAD_GLOBAL":
        value = _global_value(reading.globals_, instruction.argval)
        if value is not None and not isinstance(value, types.ModuleType):
            return str(instruction.argval)
    return None


def _global_value(globals_: dict[str, Any], name: str) -> object:
    """What the global ``name`` is in code with ``globals_``: a global or a builtin."""
    if name in globals_:
        return globals_[name]
    return getattr(builtins, name, None)


def _loads(instruction: dis.Instruction, name: str | None) -> bool:
    """Whether ``instruction`` puts the variable ``name`` on the stack (last)."""
    return name is not None and _loaded_variable(instruction) == name


def _loaded_variable(instruction: dis.Instruction) -> str | None:
    """The local or closure variable ``instruction`` puts on the stack (last)."""
    if instruction.opname not in _VARIABLE_LOADS:
        return None
    loaded = instruction.argval
    # LOAD_FAST_LOAD_FAST (Python 3.13) loads two variables, the second last.
    return str(loaded[-1] if isinstance(loaded, tuple) else loaded)


def _note_helper(
    helpers: list[tuple[types.FunctionType, type[Any] | None]],
    value: object,
    owner: type[Any] | None,
) -> None:
    """Add ``value`` to ``helpers`` if it is a user's Python function.

    A static method has no module (or class) for its first argument: it is
    read as a module-level function, with no owner.
    """
    function = _user_function(value)
    if function is not None:
        helpers.append((function, None if isinstance(value, staticmethod) else owner))


def pyro_statement_refusal(
    module_type: type[Any], statement: PyroStatement, path: str = ""
) -> ValueError:
    """The error for ``pyro.<statement>`` in ``module_type.forward`` (or below it).

    Or for a ``PyroSample`` attribute of a ``module_type`` module
    (``statement.attribute``), which is a ``pyro.sample`` statement too.

    Args:
        module_type: the class of the module.
        statement: what it holds.
        path: where the module is in the network (``"body.1"``; empty: the
            network itself).
    """
    if statement.name == "param":
        effect = (
            "the parameter would live in Pyro's global parameter store, not in "
            "model.parameters() (so a torch optimizer never trains it) nor in the "
            "state_dict. Make it an nn.Parameter attribute of the module"
        )
    else:
        effect = (
            "the loss and predict see only the Bayesian layers' weights, so a "
            "latent site would be drawn from its prior on every call, never "
            "learned, and left out of the ELBO (an observed one: its log-density "
            "left out). Put latent variables and observations in a Pyro model "
            "around the network and train it with SVI (docs/howto.rst, 'Write "
            "your own Pyro model around a network'); for a learned quantity, use "
            "an nn.Parameter (or a PyroParam) or a Bayesian layer (a random "
            "variable of your own: VIModule.declare_random_variable, "
            "docs/howto.rst, 'Write a custom Bayesian layer')"
        )
    if statement.attribute is not None:
        what = (
            f"{module_type.__name__}.{statement.attribute} is a PyroSample "
            "attribute (a pyro.sample site drawn whenever the module reads it)"
        )
    else:
        through = "".join(f" through {helper}()" for helper in statement.route)
        what = f"{module_type.__name__}.forward calls pyro.{statement.name}{through}"
    where = f"In the network's module {path!r}, " if path else ""
    return ValueError(
        f"{where}{what}, and the network "
        "runs on the PyTorch-style path (loss_fn(model(x), y), predict, fit, "
        f"bnn.Trace_ELBO's fast path): {effect}"
    )
