"""Bayesian convolutions: ``VIConv1d``, ``VIConv2d``, ``VIConv3d``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import init

from pyrolite_bnn.distributions.variational import NormalMoments, VariationalFamily
from pyrolite_bnn.layers import functional
from pyrolite_bnn.layers._options import EstimatorLayer, check_estimator, per_variable
from pyrolite_bnn.layers.functional import current_batch_size, current_samples

__all__ = ["VIConv1d", "VIConv2d", "VIConv3d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _ntuple(value: int | Sequence[int], dims: int, what: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    values = tuple(int(v) for v in value)
    if len(values) != dims:
        raise ValueError(f"{what} must be an int or {dims} ints, got {value!r}")
    return values


class _VIConvNd(EstimatorLayer):
    """Shared implementation of the N-d Bayesian convolutions."""

    _dims: int
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: str | tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    padding_mode: str
    weight: Tensor
    bias: Tensor | None
    _auto_uses_moments = False

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
        *,
        prior: object = None,
        variational: VariationalFamily | dict[str, VariationalFamily] | None = None,
        estimator: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dims = self._dims
        if groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must "
                f"be divisible by groups ({groups})"
            )
        if padding_mode not in _PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _ntuple(kernel_size, dims, "kernel_size")
        self.stride = _ntuple(stride, dims, "stride")
        self.dilation = _ntuple(dilation, dims, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(
                    f"padding string must be 'same' or 'valid', got {padding!r}"
                )
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(
                    "padding='same' is not supported for strided convolutions"
                )
            self.padding = padding
        else:
            self.padding = _ntuple(padding, dims, "padding")
        self.groups = groups
        self.padding_mode = padding_mode
        self.estimator = check_estimator(estimator, variational)
        self._pad = self._reversed_padding_repeated_twice()
        names = ("weight", "bias") if bias else ("weight",)
        shapes = {
            "weight": (out_channels, in_channels // groups, *self.kernel_size),
            "bias": (out_channels,),
        }
        for name in names:
            self.declare_random_variable(
                name,
                shapes[name],
                per_variable(prior, name, "prior", names),
                per_variable(variational, name, "variational", names),  # type: ignore[arg-type]
                device=device,
                dtype=dtype,
            )
        if not bias:
            self.bias = None
        self.reset_parameters()

    def _reversed_padding_repeated_twice(self) -> list[int]:
        """Padding for ``F.pad`` (last dim first), as ``torch.nn`` computes it."""
        if self.padding == "valid":
            return [0, 0] * self._dims
        if self.padding == "same":
            pad: list[int] = []
            for d, k in zip(
                reversed(self.dilation), reversed(self.kernel_size), strict=True
            ):
                total = d * (k - 1)
                pad += [total // 2, total - total // 2]
            return pad
        assert not isinstance(self.padding, str)
        return [p for p in reversed(self.padding) for _ in range(2)]

    def reset_parameters(self) -> None:
        """Initialise posterior means like ``torch.nn`` convolutions."""
        weight = self.posterior["weight"].loc
        init_weight = torch.empty_like(weight)
        init.kaiming_uniform_(init_weight, a=math.sqrt(5))
        self.posterior["weight"].reset_parameters(init_weight)
        if "bias" in self.posterior:
            fan_in = self.in_channels // self.groups * math.prod(self.kernel_size)
            bound = 1 / math.sqrt(fan_in)
            bias = self.posterior["bias"].loc
            self.posterior["bias"].reset_parameters(
                torch.empty_like(bias).uniform_(-bound, bound)
            )

    def forward(self, input: Tensor) -> Tensor:
        """Convolve every particle's input with its own filters."""
        dims = self._dims
        if input.dim() != dims + 2 or input.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}(in_channels={self.in_channels}) expected input "
                f"of shape (batch, {self.in_channels}, {', '.join(['L'] * dims)}), "
                f"got {tuple(input.shape)}"
            )
        weight, bias = self.weight, self.bias
        # Decided on the unpadded input: output_positions pads as the layer does.
        local = (
            isinstance(weight, NormalMoments)
            and self._moment_estimator(input) == "local"
        )
        padding: str | tuple[int, ...] = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._pad, mode=self.padding_mode)
            padding = (0,) * dims
        geometry = (self.stride, padding, self.dilation, self.groups)
        if isinstance(weight, NormalMoments):
            estimate = functional.conv_local if local else functional.conv_flipout
            return estimate(
                input, weight, bias, *geometry, current_samples(), current_batch_size()
            )
        return functional.conv(input, weight, bias, *geometry, current_batch_size())

    def output_positions(self, input: Tensor) -> int:
        """Output locations per example and channel for ``input`` (all share them)."""
        if self.padding == "same":
            return math.prod(input.shape[2:])
        padding = (0,) * self._dims if isinstance(self.padding, str) else self.padding
        sizes: list[int] = [
            (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
            for size, pad, dil, k, stride in zip(
                input.shape[2:],
                padding,
                self.dilation,
                self.kernel_size,
                self.stride,
                strict=True,
            )
        ]
        return math.prod(sizes)

    def extra_repr(self) -> str:
        """Constructor arguments (non-defaults only, as ``torch.nn``)."""
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0,) * self._dims:
            text += f", padding={self.padding!r}"
        if self.dilation != (1,) * self._dims:
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if "bias" not in self.posterior:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        return text


class VIConv1d(_VIConvNd):
    """Bayesian :class:`torch.nn.Conv1d` (same arguments, plus Bayesian options).

    See :class:`VIConv2d` for the arguments.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> bnn.VIConv1d(2, 4, 3, padding="same")(torch.randn(5, 2, 16)).shape
        torch.Size([10, 5, 4, 16])
    """

    _dims = 1


class VIConv2d(_VIConvNd):
    """Bayesian :class:`torch.nn.Conv2d`.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: int or tuple.
        stride: int or tuple.
        padding: int, tuple, ``"same"`` or ``"valid"``.
        dilation: int or tuple.
        groups: blocked connections from input to output channels.
        bias: if ``False``, no bias (``self.bias is None``).
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
        prior: prior of the weights (see :class:`~pyrolite_bnn.VILinear`).
        variational: variational family (see :class:`~pyrolite_bnn.VILinear`).
        estimator: ``"auto"`` (default) or ``"reparam"`` draw the filters of
            every particle (measured fastest on CPU). ``"flipout"`` draws one
            filter perturbation per particle, with random signs per example
            over input and output channels that all output locations of the
            example share: each example sees one filter bank, as with drawn
            weights. ``"local"`` samples each output independently, which is
            exact only if an example has one output location (its locations
            share the filters), so the layer raises a ``ValueError`` for
            inputs with several (see ``estimator_for`` and
            :class:`~pyrolite_bnn.VILinear`).
        device: device of parameters and prior buffers.
        dtype: dtype of parameters and prior buffers.

    Shape:
        - Input: ``(B, C_in, H, W)``.
        - Output: ``(S, B, C_out, H_out, W_out)`` as the outermost module.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> conv = bnn.VIConv2d(3, 8, 3, stride=2, padding=1)
        >>> conv
        VIConv2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
        >>> conv(torch.randn(4, 3, 16, 16), samples=2).shape
        torch.Size([2, 4, 8, 8, 8])
        >>> conv.estimator_for(torch.randn(4, 3, 16, 16))
        'reparam'
    """

    _dims = 2


class VIConv3d(_VIConvNd):
    """Bayesian :class:`torch.nn.Conv3d` (same arguments, plus Bayesian options).

    See :class:`VIConv2d` for the arguments.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> bnn.VIConv3d(1, 2, 3)(torch.randn(2, 1, 5, 5, 5), samples=3).shape
        torch.Size([3, 2, 2, 3, 3, 3])
    """

    _dims = 3
