"""``convert_to_vimodule`` (not available yet)."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["convert_to_vimodule"]


def convert_to_vimodule(module: nn.Module, *args: Any, **kwargs: Any) -> None:
    """torch_blue's in-place conversion of a ``torch.nn`` model (not yet here).

    The conversion of plain PyTorch networks is being built as
    ``pyrolite_bnn.convert`` (a new Bayesian network whose posterior means are
    the module's weights, instead of an in-place change of classes). Until it
    lands, build the network from :mod:`pyrolite_bnn.vi` layers.

    Raises:
        NotImplementedError: always.

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> try:
        ...     vi.convert_to_vimodule(torch.nn.Linear(2, 3))
        ... except NotImplementedError:
        ...     print("not yet")
        not yet
    """
    raise NotImplementedError(
        "convert_to_vimodule is not available in pyrolite_bnn.vi yet: the "
        "conversion of torch.nn networks is coming as pyrolite_bnn.convert(module) "
        "(it returns a new network instead of changing classes in place). Build "
        "the network from vi.VILinear / vi.VIConv*d / vi.VISequential meanwhile."
    )
