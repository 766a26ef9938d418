"""torch_blue's ``PostInitCallMeta``: ``__post_init__`` runs after ``__init__``."""

from __future__ import annotations

import inspect
from abc import ABCMeta
from typing import Any

__all__ = ["PostInitCallMeta"]


class PostInitCallMeta(ABCMeta):
    """Metaclass that calls ``__post_init__`` once ``__init__`` has finished.

    Unlike torch_blue's, it keeps the classes' signatures visible to
    :func:`inspect.signature` (and so to IDEs): a class's signature is its
    ``__init__``'s, not the metaclass's ``(*args, **kwargs)``.

    Example:
        >>> import inspect
        >>> from pyrolite_bnn.vi.utils import PostInitCallMeta
        >>> class Checked(metaclass=PostInitCallMeta):
        ...     def __init__(self, size: int = 2) -> None:
        ...         self.size = size
        ...     def __post_init__(self) -> None:
        ...         print("checked", self.size)
        >>> _ = Checked(3)
        checked 3
        >>> list(inspect.signature(Checked).parameters)
        ['size']
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        """Build the object as usual, then call its ``__post_init__``."""
        instance = super().__call__(*args, **kwargs)
        instance.__post_init__()
        return instance

    @property
    def __signature__(cls) -> inspect.Signature:
        """The signature of ``__init__`` without ``self``."""
        signature = inspect.signature(getattr(cls, "__init__"))  # noqa: B009
        return signature.replace(parameters=list(signature.parameters.values())[1:])
