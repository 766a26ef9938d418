"""``VIReturn``: the output type of torch_blue-style networks."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["VIReturn"]


class VIReturn(Tensor):
    """A tensor that also carries ``log_probs`` (torch_blue's output type).

    The outermost :class:`~pyrolite_bnn.vi.VIModule` call returns its output
    tensors as ``VIReturn``; ``log_probs`` is the ``(S, 2)`` tensor of per-particle
    ``[log p(w), log q(w)]`` when ``return_log_probs`` is on, else ``None``.
    Operations on a ``VIReturn`` return plain tensors. Unlike torch_blue's, the
    loss does not depend on ``log_probs``: it finds the forward pass itself, so
    arithmetic on the output before the loss is allowed.

    Args:
        data: the values.
        log_probs: the log probabilities, or ``None``.

    Example:
        >>> import torch
        >>> from pyrolite_bnn.vi import VIReturn
        >>> out = VIReturn(torch.zeros(3), torch.zeros(10, 2))
        >>> out.log_probs.shape, type(out * 2).__name__
        (torch.Size([10, 2]), 'Tensor')
    """

    log_probs: Tensor | None = None
    # Results of operations are plain tensors (no subclass propagation).
    __torch_function__ = torch._C._disabled_torch_function_impl  # type: ignore[assignment]

    @staticmethod
    def __new__(
        cls, data: Any, log_probs: Tensor | None = None, *args: Any, **kwargs: Any
    ) -> VIReturn:
        """Create a ``VIReturn`` sharing ``data``'s storage and autograd history.

        ``as_subclass``: the result stays in ``data``'s graph (``model(x).clone()``,
        ``to``), and gradients of a ``VIReturn`` around a leaf reach that leaf
        (the optimizer's parameter); a new leaf (``Tensor._make_subclass``)
        cut the output from the network, and training went on with the KL's
        gradient alone.
        """
        tensor = data if isinstance(data, Tensor) else torch.as_tensor(data)
        result: VIReturn = tensor.as_subclass(cls)
        return result

    def __init__(self, data: Any, log_probs: Tensor | None = None) -> None:
        super().__init__()
        self.log_probs = log_probs

    def clone(self, *args: Any, **kwargs: Any) -> VIReturn:
        """Copy of the values and of ``log_probs``."""
        log_probs = self.log_probs
        return VIReturn(
            Tensor.clone(self, *args, **kwargs),
            None if log_probs is None else log_probs.clone(*args, **kwargs),
        )

    def to(self, *args: Any, **kwargs: Any) -> VIReturn:
        """``Tensor.to`` that moves ``log_probs`` along."""
        log_probs = self.log_probs
        return VIReturn(
            Tensor.to(self, *args, **kwargs),
            None if log_probs is None else log_probs.to(*args, **kwargs),
        )

    @staticmethod
    def from_tensor(input_: Tensor, log_probs: Tensor | None) -> VIReturn:
        """Turn ``input_`` into a ``VIReturn`` in place (no copy).

        Args:
            input_: the tensor.
            log_probs: the log probabilities to attach, or ``None``.

        Returns:
            ``input_``, now a ``VIReturn``.
        """
        input_.__class__ = VIReturn
        result: VIReturn = input_  # type: ignore[assignment]
        result.log_probs = log_probs
        return result
