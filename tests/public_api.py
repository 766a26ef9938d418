"""The public API, walked: the modules, classes, functions and methods users see.

Shared by the tests that check every public callable (type hints, docstrings).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
from collections.abc import Iterator

import pyrolite_bnn as bnn
from pyrolite_bnn import vi

__all__ = ["public_callables", "public_modules"]


def public_modules() -> Iterator[types.ModuleType]:
    """The package, ``vi`` and every module without a private part in its path."""
    yield bnn
    yield vi
    for info in pkgutil.walk_packages(bnn.__path__, "pyrolite_bnn."):
        parts = info.name.split(".")[1:]
        if not any(part.startswith("_") for part in parts) and parts[-1] != "demo":
            yield importlib.import_module(info.name)


def public_callables() -> dict[str, object]:
    """Classes, functions and the classes' public and dunder methods/properties."""
    found: dict[str, object] = {}
    for module in public_modules():
        for name in module.__all__:
            obj = getattr(module, name)
            if not getattr(obj, "__module__", "").startswith("pyrolite_bnn"):
                continue  # a module, a constant, or a re-exported torch/pyro name
            if not inspect.isclass(obj):
                if callable(obj):
                    found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
                continue
            found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
            for member, value in vars(obj).items():
                if member.startswith("_") and not member.endswith("__"):
                    continue
                if isinstance(value, property):
                    functions = [value.fget, value.fset]
                else:
                    functions = [getattr(value, "__func__", value)]
                for function in functions:
                    if inspect.isfunction(function):
                        key = f"{obj.__module__}.{obj.__qualname__}.{member}"
                        found.setdefault(key, function)
    return found
