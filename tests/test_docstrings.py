"""The public API's docstrings document the parameters their callables take.

A Google-style ``Args:`` section that names a parameter the signature no
longer has (renamed, removed), or leaves out one it has, tells users of the
API reference something false; the walk of the public API is shared with the
type-hint test (``public_api``).
"""

from __future__ import annotations

import inspect
import re

from public_api import public_callables

_SECTION = re.compile(r"^(?P<indent>\s*)(Args|Arguments|Keyword Args):$")
_ENTRY = re.compile(r"^\s*\**(?P<name>[A-Za-z_]\w*)\s*(\([^)]*\))?\s*:")


def documented_parameters(doc: str) -> list[str] | None:
    """The names of the entries of ``doc``'s ``Args:`` sections, ``None``: none.

    Example:
        >>> documented_parameters("Sum.\\n\\nArgs:\\n    a: one.\\n    b (int): 2.")
        ['a', 'b']
    """
    lines = doc.expandtabs().splitlines()
    names: list[str] | None = None
    number = 0
    while number < len(lines):
        section = _SECTION.match(lines[number].rstrip())
        number += 1
        if section is None:
            continue
        names = [] if names is None else names
        base, entries = len(section["indent"]), None
        while number < len(lines):
            line = lines[number]
            indent = len(line) - len(line.lstrip())
            if line.strip() and indent <= base:
                break
            number += 1
            if line.strip() and entries in (None, indent):
                entry = _ENTRY.match(line)
                if entry is not None:
                    entries = indent
                    names.append(entry["name"])
    return names


def _signature_parameters(obj: object) -> list[inspect.Parameter] | None:
    try:
        signature = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return [p for p in signature.parameters.values() if p.name not in ("self", "cls")]


def _docstring(obj: object) -> str:
    """The docstring; for a class, its own or its ``__init__``'s ``Args:``."""
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and documented_parameters(doc) is None:
        return inspect.getdoc(obj.__init__) or ""
    return doc


def test_every_args_section_documents_the_signature() -> None:
    callables = public_callables()
    checked, wrong = 0, []
    for qualified, obj in callables.items():
        if inspect.isclass(obj) and "__init__" not in vars(obj):
            continue  # its parameters are a base class's, documented there
        documented = documented_parameters(_docstring(obj))
        taken = _signature_parameters(obj)
        if documented is None or taken is None:
            continue  # no Args section: the prose documents the parameters
        checked += 1
        absent = [name for name in documented if name not in {p.name for p in taken}]
        missing = [  # *args and **kwargs may be left to the prose
            parameter.name
            for parameter in taken
            if parameter.name not in documented
            and not parameter.name.startswith("_")
            and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        ]
        if absent or missing:
            wrong.append(f"{qualified}: documents {absent} not taken, omits {missing}")
    assert checked > 80  # the walk found the documented API
    assert wrong == []
