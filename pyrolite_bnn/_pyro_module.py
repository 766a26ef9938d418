"""A :class:`~pyro.nn.PyroModule` whose parameters never touch Pyro's global store.

Pyro keeps ``PyroParam`` values in a process-wide parameter store keyed by name
unless the ``module_local_params`` setting is on; two networks with the same
layer names would then silently share parameters. Setting the flag globally
would change the behaviour of the user's own Pyro code, so every module of this
library switches it on only while it is constructed and while it runs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import pyro
import torch
from pyro.nn import PyroModule, PyroParam, PyroSample
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import am_i_wrapped
from torch import nn

if TYPE_CHECKING:
    from pyro.poutine.runtime import Message

__all__ = [
    "LocalPyroModule",
    "linked_parameters",
    "local_params",
    "note_structure_change",
    "structure_version",
]

# Bumped whenever a LocalPyroModule gains, loses or replaces a module, tensor or
# sample-site attribute (or deletes any attribute), so that
# networks can cache what they derive from their module tree.
_STRUCTURE_VERSION = 0


def structure_version() -> int:
    """A counter that changes whenever any library module's structure changes."""
    return _STRUCTURE_VERSION


def _bump() -> None:
    global _STRUCTURE_VERSION
    _STRUCTURE_VERSION += 1


def note_structure_change() -> None:
    """Say that a module tree changed behind ``__setattr__`` (caches are stale)."""
    _bump()


@contextmanager
def local_params() -> Iterator[None]:
    """Run the body with Pyro's ``module_local_params`` setting switched on."""
    if pyro.settings.get("module_local_params"):
        yield
        return
    with pyro.settings.context(module_local_params=True):
        yield


class LocalPyroModule(PyroModule):
    """``PyroModule`` whose parameters are local to the module tree.

    Parameters appear in ``module.parameters()`` and ``state_dict()`` like any
    ``torch.nn.Module``; inside Pyro inference (``SVI``) they are reported with
    ``param`` statements, so Pyro optimisers find them too.
    """

    def __init__(self, name: str = "") -> None:
        with local_params():
            super().__init__(name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with local_params(), linked_parameters():
            return super().__call__(*args, **kwargs)

    def adopt_pyro_name(self, name: str) -> None:
        """Name this module's Pyro parameters (and its submodules') under ``name``.

        Pyro names a module's parameters by its attribute path below the
        outermost ``PyroModule``; a plain torch container in between breaks
        that chain, and two layers in one ``nn.Sequential`` would otherwise
        both report ``"posterior.weight.loc"`` to Pyro's optimisers. Networks
        call this with each layer's path from the network that is run.
        """
        if self.__dict__.get("_pyro_name") == name:
            return
        object.__setattr__(self, "_pyro_name", name)
        for key, child in self._modules.items():
            if isinstance(child, LocalPyroModule):
                child.adopt_pyro_name(f"{name}.{key}" if name else key)

    def add_module(self, name: str, module: Any) -> None:
        # Adopting a PyroModule built outside the local-parameter setting (a Pyro
        # autoguide, say) runs a consistency check that expects the setting to
        # have been on when that module was built; the adoption itself is safe.
        _bump()
        with pyro.settings.context(module_local_params=True, validate_poutine=False):
            super().add_module(name, module)

    def readopt(self, name: str, module: nn.Module) -> None:
        """Register ``module`` again as child ``name`` after it was removed.

        For a Pyro module that was this module's child before and has run with
        it: it still shares this tree's Pyro context, which Pyro's own
        registration would reject ("executed outside of supermodule").
        """
        _bump()
        nn.Module.add_module(self, name, module)

    def __setattr__(self, name: str, value: Any) -> None:
        if _is_structural(self, name, value):
            _bump()
        with pyro.settings.context(module_local_params=True, validate_poutine=False):
            super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        _bump()
        super().__delattr__(name)


# Whether an UnconstrainedLinks handler is already on the stack for this call.
_LINKING: ContextVar[bool] = ContextVar("pyrolite_linking", default=False)


@contextmanager
def linked_parameters() -> Iterator[None]:
    """Under Pyro, run the body inside one :class:`UnconstrainedLinks` handler.

    Nested uses (every library module of a network) share the outermost one.
    """
    if _LINKING.get() or not am_i_wrapped():
        yield
        return
    token = _LINKING.set(True)
    try:
        with UnconstrainedLinks():
            yield
    finally:
        _LINKING.reset(token)


class UnconstrainedLinks(Messenger):
    """Give every parameter site's value the ``.unconstrained`` link Pyro expects.

    With ``module_local_params`` on, Pyro 1.9 reports a plain ``nn.Parameter``
    attribute of a ``PyroModule`` (``AutoDiagonalNormal.loc``, the
    ``cov_factor`` of ``AutoLowRankMultivariateNormal``, the weights of
    ``AutoIAFNormal``'s networks, any plain ``nn.Module`` child) with a
    ``param`` statement whose value is the ``Parameter`` itself. Values of real
    ``pyro.param`` statements and of ``PyroParam`` attributes carry
    ``value.unconstrained()``, a weak reference to the tensor the optimiser
    updates, and ``SVI.step`` calls it on every parameter site it sees
    (``'Parameter' object has no attribute 'unconstrained'``). This handler
    makes such statements return a view of the parameter that carries the link
    back to it (the parameter itself is not modified). Values decided by other
    handlers (``replay``, ``substitute``, ``lift``) are left alone.
    """

    def _pyro_param(self, msg: Message[..., Any]) -> None:
        if msg["value"] is None:
            msg["fn"] = _linked(msg["fn"])


def _linked(fn: Callable[..., Any]) -> Callable[..., Any]:
    def linked(*args: Any, **kwargs: Any) -> Any:
        value = fn(*args, **kwargs)
        if isinstance(value, torch.Tensor) and not hasattr(value, "unconstrained"):
            alias = value.view_as(value)
            alias.unconstrained = weakref.ref(value)  # type: ignore[attr-defined]
            return alias
        return value

    return linked


def _is_structural(module: nn.Module, name: str, value: Any) -> bool:
    """Whether setting ``module.name = value`` can change modules, weights or sites."""
    if isinstance(value, (nn.Module, torch.Tensor, PyroParam, PyroSample)):
        return True
    tables = ("_modules", "_parameters", "_buffers", "_pyro_samples")
    return any(name in module.__dict__.get(table, ()) for table in tables)
