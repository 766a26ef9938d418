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
from pathlib import Path
from typing import Any, NamedTuple

import pyro
import pyro.primitives
import torch
from torch import nn

__all__ = [
    "HELPER_DEPTH",
    "PyroStatement",
    "attributes_read_in",
    "may_read_any_attribute",
    "pyro_statement_in",
    "pyro_statement_refusal",
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


class _ForwardCode(NamedTuple):
    """What a class's ``forward`` and the helpers it calls hold."""

    statement: PyroStatement | None
    attribute_reads: frozenset[tuple[str, ...]]
    reads_any_attribute: bool


# Decorators of torch's, Pyro's or this library's followed to the user's function.
_WRAPPERS_FOLLOWED = 8

# Results per class and forward (the code of a forward method never changes).
# Weak in the class: a strong key held every class a network was ever built
# from, with the globals and closures of its functions (a class defined in a
# function, a notebook cell run again, and the models and optimizers they
# reach), for the life of the process.
_FOUND: weakref.WeakKeyDictionary[type[Any], dict[types.CodeType, _ForwardCode]]
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


def _forward_code(module_type: type[Any]) -> _ForwardCode:
    """What ``module_type.forward`` holds, read once per class and forward."""
    method = getattr(module_type, "forward", None)
    if method is None or method is nn.Module.forward:
        return _NOTHING
    forward = _user_function(method)
    if forward is None:
        return _NOT_READ
    found = _FOUND.setdefault(module_type, {})
    code = forward.__code__
    if code not in found:
        reads: set[tuple[str, ...]] = set()
        statement = _read_function(forward, module_type, HELPER_DEPTH, set(), reads)
        found[code] = _ForwardCode(
            statement,
            frozenset(reads - {_WHOLE_MODULE}),
            reads_any_attribute=_WHOLE_MODULE in reads,
        )
    return found[code]


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
) -> PyroStatement | None:
    """The first Pyro statement in ``function``'s code or the helpers it names.

    Adds to ``reads`` the attributes they read from the module (with
    ``owner``, the class whose method ``function`` is; :data:`_WHOLE_MODULE`
    where they hand it to code that is not read).
    """
    seen.add(function.__code__)
    helpers: list[tuple[types.FunctionType, type[Any] | None]] = []
    code = function.__code__
    has_module = owner is not None and code.co_argcount > 0
    module_name = code.co_varnames[0] if has_module else None
    found = _read_code(code, function.__globals__, owner, module_name, helpers, reads)
    if depth == 0:
        return found
    for helper, helper_owner in helpers:
        if helper.__code__ in seen:
            continue
        below = _read_function(helper, helper_owner, depth - 1, seen, reads)
        if found is None and below is not None:
            found = below._replace(route=(helper.__name__, *below.route))
    return found


def _read_code(
    code: types.CodeType,
    globals_: dict[str, Any],
    owner: type[Any] | None,
    module_name: str | None,
    helpers: list[tuple[types.FunctionType, type[Any] | None]],
    reads: set[tuple[str, ...]],
) -> PyroStatement | None:
    """The first Pyro statement that ``code`` (or code defined in it) names.

    Appends to ``helpers`` the functions it names that may hold one: module-level
    functions (called with no owner) and, with ``owner``, the owner's methods
    read from the module (``self.name``; ``module_name`` is the variable that
    holds it, a local or, in code defined in the method, a closure's); adds to
    ``reads`` the chains of attributes read from the module, and
    :data:`_WHOLE_MODULE` where a method calls ``super()`` (whose code, the
    base class's, is not read).
    """
    found: PyroStatement | None = None
    previous: object = None
    chain: list[str] | None = None  # attributes read so far from the module
    for instruction in dis.get_instructions(code):
        if chain is not None and instruction.opname in _ATTRIBUTE_LOADS:
            if not chain and owner is not None:
                method = inspect.getattr_static(owner, instruction.argval, None)
                _note_helper(helpers, method, owner)
            chain.append(str(instruction.argval))
            continue
        if chain:
            reads.add(tuple(chain))
        chain = [] if _loads(instruction, module_name) else None
        if instruction.opname == "LOAD_GLOBAL":
            value = _global_value(globals_, instruction.argval)
            if value is super and owner is not None:
                reads.add(_WHOLE_MODULE)
            name = _STATEMENT_FUNCTIONS.get(id(value))
            if name is not None and found is None:
                found = PyroStatement(name)
            _note_helper(helpers, value, None)
            previous = value
            continue
        if instruction.opname in _ATTRIBUTE_LOADS:
            if any(previous is module for module in _PYRO_MODULES):
                if instruction.argval in _STATEMENTS and found is None:
                    found = PyroStatement(str(instruction.argval))
            elif isinstance(previous, types.ModuleType):
                _note_helper(helpers, getattr(previous, instruction.argval, None), None)
        previous = None
    if chain:
        reads.add(tuple(chain))
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            below = _read_code(constant, globals_, owner, module_name, helpers, reads)
            if found is None:
                found = below
    return found


def _global_value(globals_: dict[str, Any], name: str) -> object:
    """What the global ``name`` is in code with ``globals_``: a global or a builtin."""
    if name in globals_:
        return globals_[name]
    return getattr(builtins, name, None)


def _loads(instruction: dis.Instruction, name: str | None) -> bool:
    """Whether ``instruction`` puts the variable ``name`` on the stack (last)."""
    if name is None or instruction.opname not in _VARIABLE_LOADS:
        return False
    loaded = instruction.argval
    # LOAD_FAST_LOAD_FAST (Python 3.13) loads two variables, the second last.
    return bool((loaded[-1] if isinstance(loaded, tuple) else loaded) == name)


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
