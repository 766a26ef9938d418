"""A :class:`~pyro.nn.PyroModule` whose parameters never touch Pyro's global store.

Pyro keeps ``PyroParam`` values in a process-wide parameter store keyed by name
unless the ``module_local_params`` setting is on; two networks with the same
layer names would then silently share parameters. Setting the flag globally
would change the behaviour of the user's own Pyro code, so every module of this
library switches it on only while it is constructed and while it runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyro
from pyro.nn import PyroModule

__all__ = ["LocalPyroModule", "local_params"]


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
        with local_params():
            return super().__call__(*args, **kwargs)

    def add_module(self, name: str, module: Any) -> None:
        # Adopting a PyroModule built outside the local-parameter setting (a Pyro
        # autoguide, say) runs a consistency check that expects the setting to
        # have been on when that module was built; the adoption itself is safe.
        with pyro.settings.context(module_local_params=True, validate_poutine=False):
            super().add_module(name, module)

    def __setattr__(self, name: str, value: Any) -> None:
        with pyro.settings.context(module_local_params=True, validate_poutine=False):
            super().__setattr__(name, value)
