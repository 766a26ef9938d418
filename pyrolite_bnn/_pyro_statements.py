"""Pyro statements in a network's forward, on the PyTorch-style path.

On the PyTorch-style path (``loss_fn(model(x), y)``, ``predict``, ``fit``) no
Pyro handler runs: the loss sees the Bayesian layers' weights and nothing
else. A ``pyro.sample`` statement in a ``forward`` would draw a latent site
from its prior on every call, never learn it and leave it out of the ELBO
(an observed one: leave its log-density out); a ``pyro.param`` statement
would create a parameter in Pyro's global store, which ``model.parameters()``
(the optimizer's) and ``state_dict`` do not hold. A ``PyroSample`` attribute
of a module (``self.g = PyroSample(prior)``, the declaration form of
``pyro.sample``) is the same: the network's
:func:`~pyrolite_bnn._network.refuse_pyro_statements` finds those in the
modules' tables and refuses them with :func:`pyro_statement_refusal` too.
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
"""

from __future__ import annotations

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

__all__ = [
    "HELPER_DEPTH",
    "PyroStatement",
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
# torch's, Pyro's and this library's source folders: their forwards are known.
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


# Results per class and forward (the code of a forward method never changes).
# Weak in the class: a strong key held every class a network was ever built
# from, with the globals and closures of its functions (a class defined in a
# function, a notebook cell run again, and the models and optimizers they
# reach), for the life of the process.
_FOUND: weakref.WeakKeyDictionary[type[Any], dict[types.CodeType, PyroStatement | None]]
_FOUND = weakref.WeakKeyDictionary()


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
    forward = _user_function(getattr(module_type, "forward", None))
    if forward is None:
        return None
    found = _FOUND.setdefault(module_type, {})
    code = forward.__code__
    if code not in found:
        found[code] = _statement_in_function(forward, module_type, HELPER_DEPTH, set())
    return found[code]


def _user_function(value: object) -> types.FunctionType | None:
    """``value`` if it is a Python function outside torch, Pyro and this library."""
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if not isinstance(value, types.FunctionType):
        return None
    if value.__code__.co_filename.startswith(_OWN_PACKAGES):
        return None
    return value


def _statement_in_function(
    function: types.FunctionType,
    owner: type[Any] | None,
    depth: int,
    seen: set[types.CodeType],
) -> PyroStatement | None:
    """The first Pyro statement in ``function``'s code or the helpers it names."""
    seen.add(function.__code__)
    helpers: list[tuple[types.FunctionType, type[Any] | None]] = []
    found = _statement_in_code(function.__code__, function.__globals__, owner, helpers)
    if found is not None or depth == 0:
        return found
    for helper, helper_owner in helpers:
        if helper.__code__ in seen:
            continue
        below = _statement_in_function(helper, helper_owner, depth - 1, seen)
        if below is not None:
            return below._replace(route=(helper.__name__, *below.route))
    return None


def _statement_in_code(
    code: types.CodeType,
    globals_: dict[str, Any],
    owner: type[Any] | None,
    helpers: list[tuple[types.FunctionType, type[Any] | None]],
) -> PyroStatement | None:
    """The first Pyro statement that ``code`` (or code defined in it) names.

    Appends to ``helpers`` the functions it names that may hold one: module-level
    functions (called with no owner) and, with ``owner``, the owner's methods
    read from the first argument (``self.name``).
    """
    self_name = code.co_varnames[0] if owner is not None and code.co_argcount else None
    previous: object = None
    reads_self = False
    for instruction in dis.get_instructions(code):
        if instruction.opname == "LOAD_GLOBAL":
            value = globals_.get(instruction.argval)
            name = _STATEMENT_FUNCTIONS.get(id(value))
            if name is not None:
                return PyroStatement(name)
            _note_helper(helpers, value, None)
            previous, reads_self = value, False
            continue
        if instruction.opname in _ATTRIBUTE_LOADS:
            if any(previous is module for module in _PYRO_MODULES):
                if instruction.argval in _STATEMENTS:
                    return PyroStatement(str(instruction.argval))
            elif isinstance(previous, types.ModuleType):
                _note_helper(helpers, getattr(previous, instruction.argval, None), None)
            elif reads_self and owner is not None:
                method = inspect.getattr_static(owner, instruction.argval, None)
                _note_helper(helpers, method, owner)
        reads_self = (
            instruction.opname == "LOAD_FAST" and instruction.argval == self_name
        )
        previous = None
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            found = _statement_in_code(constant, globals_, owner, helpers)
            if found is not None:
                return found
    return None


def _note_helper(
    helpers: list[tuple[types.FunctionType, type[Any] | None]],
    value: object,
    owner: type[Any] | None,
) -> None:
    """Add ``value`` to ``helpers`` if it is a user's Python function."""
    function = _user_function(value)
    if function is not None:
        helpers.append((function, owner))


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
