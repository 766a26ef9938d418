"""torch_blue's ``VIConv1d/2d/3d`` on :mod:`pyrolite_bnn.layers.conv`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pyrolite_bnn.layers.conv import VIConv1d as BnnVIConv1d
from pyrolite_bnn.layers.conv import VIConv2d as BnnVIConv2d
from pyrolite_bnn.layers.conv import VIConv3d as BnnVIConv3d
from pyrolite_bnn.vi.base import VariableSpecs, VIModule, reset_as_constructed

__all__ = ["VIConv1d", "VIConv2d", "VIConv3d"]


class _Conv:
    """torch_blue's convolution signature over a :mod:`pyrolite_bnn` convolution.

    A mixin placed before the :mod:`pyrolite_bnn` convolution in the bases, so
    that ``super().__init__`` reaches that convolution (whose own ``super`` is
    :class:`~pyrolite_bnn.vi.VIModule`).
    """

    _dims: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        variational_distribution: Any = None,
        prior: Any = None,
        rescale_prior: bool = False,
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        kernel = (
            (kernel_size,) * self._dims
            if isinstance(kernel_size, int)
            else tuple(kernel_size)
        )
        per_group = in_channels // groups if groups > 0 else in_channels
        specs = VariableSpecs(
            {
                "weight": (out_channels, per_group, *kernel),
                "bias": (out_channels,) if bias else None,
            },
            variational_distribution,
            prior,
            rescale_prior,
            kaiming_initialization,
            prior_initialization,
        )
        super().__init__(  # type: ignore[call-arg]  # the pyrolite_bnn convolution
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            prior=specs.bnn_priors(),
            variational=specs.bnn_families(),
            device=device,
            dtype=dtype,
        )
        layer: VIModule = self  # type: ignore[assignment]
        layer.adopt_specs(specs)
        layer.return_log_probs = return_log_probs

    def reset_parameters(self) -> None:
        """Re-initialise as construction does, torch_blue's way, and the priors.

        :func:`~pyrolite_bnn.vi.base.reset_as_constructed`: with
        ``prior_initialization=True`` the variables return to the prior.
        """
        layer: VIModule = self  # type: ignore[assignment]
        reset_as_constructed(layer, super().reset_parameters)  # type: ignore[misc]


class VIConv1d(_Conv, BnnVIConv1d, VIModule):
    """Bayesian ``nn.Conv1d`` with torch_blue's arguments (as ``vi.VILinear``).

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> vi.VIConv1d(2, 4, 3)(torch.randn(5, 2, 10), samples=3).shape
        torch.Size([3, 5, 4, 8])
    """

    _dims = 1


class VIConv2d(_Conv, BnnVIConv2d, VIModule):
    """Bayesian ``nn.Conv2d`` with torch_blue's arguments.

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> vi.VIConv2d(1, 2, 3, padding=1)(torch.randn(4, 1, 6, 6), samples=2).shape
        torch.Size([2, 4, 2, 6, 6])
    """

    _dims = 2


class VIConv3d(_Conv, BnnVIConv3d, VIModule):
    """Bayesian ``nn.Conv3d`` with torch_blue's arguments.

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> vi.VIConv3d(1, 2, 2)(torch.randn(3, 1, 4, 4, 4), samples=2).shape
        torch.Size([2, 3, 2, 3, 3, 3])
    """

    _dims = 3


# torch_blue's name of the private base (its tests import it).
_VIConvNd = _Conv
