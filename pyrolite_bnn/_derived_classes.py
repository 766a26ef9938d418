"""One class made from each class, held only while it is in use.

``bnn.convert`` and ``vi.convert_to_vimodule`` make a subclass of a user's
network class, one per class, so that every network converted from that class
has the same type. A table keyed by the user's class held every such class for
the life of the process, with the globals and closures of its functions (a
class defined in a function, a notebook cell run again, and the models and
data they reach). The made class holds its user class (its base), so the
table keys by the user class's ``id`` and holds the made class weakly: the
``id`` names one live class while the entry lives, and both classes go once no
network of them (and nothing else) holds the made class.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["DerivedClasses"]

_Made = TypeVar("_Made", bound=type)


class DerivedClasses(Generic[_Made]):
    """The class made from each class by ``make``, while it is in use.

    Example:
        >>> made = DerivedClasses[type]()
        >>> class Net:
        ...     pass
        >>> def subclass(cls: type) -> type:
        ...     return type("Made" + cls.__name__, (cls,), {})
        >>> first = made.get(Net, subclass)
        >>> first.__name__, made.get(Net, subclass) is first
        ('MadeNet', True)
    """

    def __init__(self) -> None:
        self._made: weakref.WeakValueDictionary[int, _Made] = (
            weakref.WeakValueDictionary()
        )

    def get(self, cls: type, make: Callable[[type], _Made]) -> _Made:
        """The class made from ``cls``: the one made before, or ``make(cls)``.

        ``make(cls)`` must return a class that holds ``cls`` (a subclass of
        it): that keeps ``id(cls)`` unique while the entry lives.
        """
        made = self._made.get(id(cls))
        if made is None or cls not in made.__mro__:
            made = make(cls)
            self._made[id(cls)] = made
        return made
