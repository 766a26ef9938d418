"""Whether an object computes as a class of it does: no method overridden.

A closed form written for a class (the KL of a ``NormalPrior`` from a Normal
posterior, the zero KL of a flat prior) stands for methods of that class (the
ones that build its distribution). A subclass that overrides one of them has
another distribution, and the closed form does not hold for it.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["keeps_methods"]


def keeps_methods(obj: object, cls: type, names: Iterable[str]) -> bool:
    """Whether ``obj`` is a ``cls`` whose class overrides none of ``names``.

    Args:
        obj: the object.
        cls: the class whose methods a computation stands for.
        names: the names of those methods.

    Example:
        >>> class Base:
        ...     def density(self) -> float:
        ...         return 1.0
        >>> class Renamed(Base):
        ...     pass
        >>> class Wider(Base):
        ...     def density(self) -> float:
        ...         return 0.5
        >>> keeps_methods(Renamed(), Base, ["density"])
        True
        >>> keeps_methods(Wider(), Base, ["density"])
        False
        >>> keeps_methods(object(), Base, ["density"])
        False
    """
    kind = type(obj)
    if kind is cls:  # the class itself (the common case): nothing to compare
        return True
    return isinstance(obj, cls) and all(
        getattr(kind, name) is getattr(cls, name) for name in names
    )
