"""Initialisation helpers of torch_blue."""

import torch
from torch import Tensor

__all__ = ["fixed_"]


def fixed_(tensor: Tensor, other: Tensor) -> Tensor:
    """Copy the values of ``other`` into ``tensor`` in place (no gradient).

    Args:
        tensor: the tensor to initialise.
        other: values of the same shape.

    Returns:
        ``tensor``.

    Example:
        >>> import torch
        >>> from pyrolite_bnn.vi.utils.init import fixed_
        >>> fixed_(torch.zeros(2), torch.ones(2))
        tensor([1., 1.])
    """
    if tensor.shape != other.shape:
        raise ValueError(
            f"fixed_ needs values for every element: shape {tuple(tensor.shape)} "
            f"got {tuple(other.shape)}"
        )
    with torch.no_grad():
        return tensor.copy_(other)
