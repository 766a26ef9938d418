"""Pyro statements in a network's forward, on the PyTorch-style path.

On the PyTorch-style path (``loss_fn(model(x), y)``, ``predict``, ``fit``) no
Pyro handler runs: the loss sees the Bayesian layers' weights and nothing
else. A ``pyro.sample`` statement in a ``forward`` would draw a latent site
from its prior on every call, never learn it and leave it out of the ELBO
(an observed one: leave its log-density out); a ``pyro.param`` statement
would create a parameter in Pyro's global store, which ``model.parameters()``
(the optimizer's) and ``state_dict`` do not hold. Under Pyro inference
(``SVI`` on ``loss_fn.pyro_model``, the user's own model) Pyro's semantics
apply.

The statements are found in the code of the network's ``forward`` methods
(those of classes outside torch, Pyro and this library), not by a Pyro handler:
Pyro's handler stack is one list for the process, so a handler on the
PyTorch-style path would send other threads' calls down Pyro's path. What is
found: ``pyro.sample``, ``pyro.param`` and ``pyro.factor`` called in the
method or in functions defined in it (lambdas, comprehensions), through the
``pyro`` module under any name or imported by name (``from pyro import
sample``); not statements in other functions that ``forward`` calls.
``pyro.deterministic`` (which only records a value) and ``pyro.plate`` are
not refused.
"""

from __future__ import annotations

import dis
import os
import types
from pathlib import Path
from typing import Any

import pyro
import pyro.primitives
import torch

__all__ = ["pyro_statement_in", "pyro_statement_refusal"]

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
# Results per code object (the code of a forward method never changes).
_FOUND: dict[types.CodeType, str | None] = {}


def pyro_statement_in(module_type: type[Any]) -> str | None:
    """The first Pyro statement (``"sample"``...) in ``module_type.forward``.

    ``None`` for a class whose ``forward`` is torch's, Pyro's or this
    library's, or makes none (see the module documentation for what is found).

    Example:
        >>> import torch, pyro, pyro.distributions as dist
        >>> class Noisy(torch.nn.Module):
        ...     def forward(self, h):
        ...         return h + pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> pyro_statement_in(Noisy), pyro_statement_in(torch.nn.Linear)
        ('sample', None)
    """
    forward = getattr(module_type, "forward", None)
    if not isinstance(forward, types.FunctionType):
        return None
    if forward.__code__.co_filename.startswith(_OWN_PACKAGES):
        return None
    code = forward.__code__
    if code not in _FOUND:
        _FOUND[code] = _statement_in_code(code, forward.__globals__)
    return _FOUND[code]


def _statement_in_code(code: types.CodeType, globals_: dict[str, Any]) -> str | None:
    """The first Pyro statement that ``code`` (or code defined in it) names."""
    previous: object = None
    for instruction in dis.get_instructions(code):
        if instruction.opname == "LOAD_GLOBAL":
            value = globals_.get(instruction.argval)
            name = _STATEMENT_FUNCTIONS.get(id(value))
            if name is not None:
                return name
            previous = value
            continue
        if (
            instruction.opname in _ATTRIBUTE_LOADS
            and any(previous is module for module in _PYRO_MODULES)
            and instruction.argval in _STATEMENTS
        ):
            return str(instruction.argval)
        previous = None
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            found = _statement_in_code(constant, globals_)
            if found is not None:
                return found
    return None


def pyro_statement_refusal(module_type: type[Any], statement: str) -> ValueError:
    """The error for ``pyro.<statement>`` in ``module_type.forward``."""
    if statement == "param":
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
            "an nn.Parameter or a Bayesian layer"
        )
    return ValueError(
        f"{module_type.__name__}.forward calls pyro.{statement}, and the network "
        "runs on the PyTorch-style path (loss_fn(model(x), y), predict, fit, "
        f"bnn.Trace_ELBO's fast path): {effect}"
    )
