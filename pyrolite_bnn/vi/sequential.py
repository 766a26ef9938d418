"""torch_blue's ``VISequential`` and ``VIResidualConnection``."""

from __future__ import annotations

from pyrolite_bnn.layers.container import VIResidualConnection as BnnResidual
from pyrolite_bnn.layers.container import VISequential as BnnSequential
from pyrolite_bnn.vi.base import VIModule

__all__ = ["VIResidualConnection", "VISequential"]


class VISequential(BnnSequential, VIModule):
    """:class:`pyrolite_bnn.VISequential` with torch_blue's conventions.

    ``return_log_probs`` is that of the children (``False`` when no child is a
    ``VIModule``; children that disagree raise ``AssertionError``, as in
    torch_blue); outermost outputs are :class:`~pyrolite_bnn.vi.VIReturn`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pyrolite_bnn import vi
        >>> net = vi.VISequential(vi.VILinear(2, 4), nn.ReLU(), vi.VILinear(4, 1))
        >>> out = net(torch.randn(6, 2), samples=3)
        >>> out.shape, out.log_probs.shape
        (torch.Size([3, 6, 1]), torch.Size([3, 2]))
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        modes = {m.return_log_probs for m in self.children() if isinstance(m, VIModule)}
        assert len(modes) <= 1, "return_log_probs has to be equal for all Modules"
        self.return_log_probs = modes.pop() if modes else False


class VIResidualConnection(BnnResidual, VISequential):
    """:class:`pyrolite_bnn.VIResidualConnection` with torch_blue's conventions.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pyrolite_bnn import vi
        >>> block = vi.VIResidualConnection(vi.VILinear(4, 4), nn.Tanh())
        >>> block(torch.randn(3, 4), samples=2).shape
        torch.Size([2, 3, 4])
    """
