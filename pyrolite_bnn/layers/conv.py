"""Bayesian convolutions: ``VIConv1d/2d/3d`` and ``VIConvTranspose1d/2d/3d``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyrolite_bnn._validation import check_count, check_floating_input, check_integer
from pyrolite_bnn.distributions.variational import NormalMoments, VariationalFamily
from pyrolite_bnn.layers import functional
from pyrolite_bnn.layers._base import _VIWeightLayer
from pyrolite_bnn.layers._options import Estimator
from pyrolite_bnn.layers.functional import current_batch_size, current_samples
from pyrolite_bnn.layers.registry import LayerCase, register
from pyrolite_bnn.variables import UnitLayout

__all__ = [
    "VIConv1d",
    "VIConv2d",
    "VIConv3d",
    "VIConvTranspose1d",
    "VIConvTranspose2d",
    "VIConvTranspose3d",
]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


# Contract-suite inputs (batch 2, 4 channels) per number of spatial dims.
_CASE_INPUTS = {1: (2, 4, 11), 2: (2, 4, 9, 8), 3: (2, 4, 6, 5, 6)}
_CONV_OPTIONS: tuple[dict[str, object], ...] = (
    {},
    {"stride": 2, "padding": 1},
    {"padding": "same", "dilation": 2},
    {"padding": "valid", "groups": 2, "bias": False},
    {"padding": 1, "padding_mode": "reflect"},
    {"padding": 2, "padding_mode": "circular", "stride": 2},
    {"padding": "same", "padding_mode": "replicate"},
)
_TRANSPOSE_OPTIONS: tuple[dict[str, object], ...] = (
    {},
    {"stride": 2, "padding": 1, "output_padding": 1},
    {"groups": 2, "bias": False, "dilation": 2},
    {"stride": 3, "padding": 2, "dilation": 2, "output_padding": 1},
)


def _conv_cases(dims: int) -> tuple[LayerCase, ...]:
    shape = _CASE_INPUTS[dims]
    return tuple(LayerCase((4, 6, 3), shape, options) for options in _CONV_OPTIONS)


def _transpose_cases(dims: int) -> tuple[LayerCase, ...]:
    shape = _CASE_INPUTS[dims]
    # stride 2, kernel 3: sizes 2L + 1 (output_padding 0) and 2L + 2 are valid.
    larger = tuple(2 * size + 2 for size in shape[2:])
    return (
        *(LayerCase((4, 6, 3), shape, options) for options in _TRANSPOSE_OPTIONS),
        LayerCase(
            (4, 6, 3), shape, {"stride": 2}, forward_kwargs={"output_size": larger}
        ),
    )


def _ntuple(
    value: int | Sequence[int], dims: int, what: str, least: int | None = None
) -> tuple[int, ...]:
    """``value`` as ``dims`` ints, each at least ``least`` when it is given."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        values: tuple[int, ...] = (check_integer(value, what),) * dims
    else:  # a tuple, list, numpy array...
        values = tuple(check_integer(v, what) for v in value)
    if len(values) != dims:
        raise ValueError(f"{what} must be an int or {dims} ints, got {value!r}")
    if least is not None and min(values) < least:
        raise ValueError(f"{what} must be >= {least}, got {value!r}")
    return values


class _VIConvBase(_VIWeightLayer):
    """Geometry shared by the convolutions and the transposed convolutions."""

    _dims: int
    _transposed: bool = False
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: str | tuple[int, ...]
    dilation: tuple[int, ...]
    output_padding: tuple[int, ...]
    groups: int
    padding_mode: str

    def _geometry(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        padding: str | int | Sequence[int],
        dilation: int | Sequence[int],
        groups: int,
        padding_mode: str,
    ) -> None:
        """Validate and store the geometry (``torch.nn``'s attribute names)."""
        dims = self._dims
        in_channels = check_count(in_channels, "in_channels")
        out_channels = check_count(out_channels, "out_channels")
        groups = check_count(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must "
                f"be divisible by groups ({groups})"
            )
        modes = ("zeros",) if self._transposed else _PADDING_MODES
        if padding_mode not in modes:
            raise ValueError(
                f"padding_mode must be one of {modes} for {type(self).__name__}, got "
                f"{padding_mode!r}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _ntuple(kernel_size, dims, "kernel_size", least=1)
        self.stride = _ntuple(stride, dims, "stride", least=1)
        self.dilation = _ntuple(dilation, dims, "dilation", least=1)
        if isinstance(padding, str):
            if self._transposed:
                raise ValueError(
                    f"{type(self).__name__} takes padding as an int or {dims} ints, "
                    f"got {padding!r}"
                )
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
            self.padding = _ntuple(padding, dims, "padding", least=0)
        self.output_padding = (0,) * dims
        self.groups = groups
        self.padding_mode = padding_mode

    def _torch_repr(self) -> str:
        """As ``torch.nn`` convolutions print themselves."""
        dims = self._dims
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0,) * (len(self.padding)):
            text += f", padding={self.padding}"
        if self.dilation != (1,) * dims:
            text += f", dilation={self.dilation}"
        if self.output_padding != (0,) * dims:
            text += f", output_padding={self.output_padding}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if "bias" not in self.posterior:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text

    def _check_input(self, input: Tensor) -> None:
        check_floating_input(input, type(self).__name__)
        dims = self._dims
        if input.dim() != dims + 2 or input.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}(in_channels={self.in_channels}) expected input "
                f"of shape (batch, {self.in_channels}, {_SPATIAL[dims]}), "
                f"got {functional.describe_input_shape(input)}"
            )


# Names of the spatial dimensions in shape messages, as torch's docs write them.
_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


class _VIConvNd(_VIConvBase):
    """Shared implementation of the N-d Bayesian convolutions."""

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
        variational: VariationalFamily | Mapping[str, VariationalFamily] | None = None,
        estimator: Estimator = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._geometry(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            padding_mode,
        )
        self._pad = self._reversed_padding_repeated_twice()
        self._declare(
            {
                "weight": (out_channels, in_channels // groups, *self.kernel_size),
                "bias": (out_channels,) if bias else None,
            },
            prior=prior,
            variational=variational,
            estimator=estimator,
            device=device,
            dtype=dtype,
        )
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

    def forward(self, input: Tensor) -> Tensor:
        """Convolve every particle's input with its own filters."""
        dims = self._dims
        self._check_input(input)
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


@register(nn.Conv1d, cases=_conv_cases(1))
class VIConv1d(_VIConvNd):
    """Bayesian :class:`torch.nn.Conv1d` (same arguments, plus Bayesian options).

    See :class:`VIConv2d` for the arguments.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> bnn.VIConv1d(2, 4, 3, padding="same")(torch.randn(5, 2, 16)).shape
        torch.Size([10, 5, 4, 16])
    """

    _dims = 1


@register(nn.Conv2d, cases=_conv_cases(2))
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
        estimator: ``"auto"`` (default), ``"reparam"``, ``"local"`` or
            ``"flipout"``; ``"auto"`` draws the weights (``"reparam"``) for
            convolutions, measured fastest on CPU (see
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
    """

    _dims = 2


@register(nn.Conv3d, cases=_conv_cases(3))
class VIConv3d(_VIConvNd):
    """Bayesian :class:`torch.nn.Conv3d` (same arguments, plus Bayesian options).

    See :class:`VIConv2d` for the arguments.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> bnn.VIConv3d(1, 2, 3)(torch.randn(2, 1, 5, 5, 5), samples=3).shape
        torch.Size([3, 2, 2, 3, 3, 3])
    """

    _dims = 3


class _VIConvTransposeNd(_VIConvBase):
    """Shared implementation of the N-d Bayesian transposed convolutions."""

    _transposed = True
    _estimators = ("auto", "reparam")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        output_padding: int | Sequence[int] = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: int | Sequence[int] = 1,
        padding_mode: str = "zeros",
        *,
        prior: object = None,
        variational: VariationalFamily | Mapping[str, VariationalFamily] | None = None,
        estimator: Estimator = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._geometry(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            padding_mode,
        )
        self.output_padding = _ntuple(
            output_padding, self._dims, "output_padding", least=0
        )
        if any(
            p >= max(s, d)
            for p, s, d in zip(
                self.output_padding, self.stride, self.dilation, strict=True
            )
        ):
            raise ValueError(
                f"output_padding {self.output_padding} must be smaller than the stride "
                f"{self.stride} or the dilation {self.dilation} in every dimension"
            )
        self._declare(
            {
                "weight": (in_channels, out_channels // groups, *self.kernel_size),
                "bias": (out_channels,) if bias else None,
            },
            prior=prior,
            variational=variational,
            estimator=estimator,
            device=device,
            dtype=dtype,
            # output channel g * out / groups + j: dim 1 within group g of dim 0
            units={"weight": UnitLayout(dim=1, groups=groups)},
        )
        self.reset_parameters()

    def forward(
        self, input: Tensor, output_size: Sequence[int] | None = None
    ) -> Tensor:
        """Transposed convolution of every particle's input with its own filters.

        Args:
            input: ``(B, C_in, *spatial)``, shared or folded.
            output_size: the spatial output size (optionally preceded by batch
                and channel sizes, as ``torch.nn``); picks ``output_padding``.
        """
        self._check_input(input)
        return functional.conv_transpose(
            input,
            self.weight,
            self.bias,
            self.stride,
            self._padding_tuple(),
            self._output_padding(input, output_size),
            self.groups,
            self.dilation,
            current_batch_size(),
        )

    def _padding_tuple(self) -> tuple[int, ...]:
        assert not isinstance(self.padding, str)
        return self.padding

    def _output_padding(
        self, input: Tensor, output_size: Sequence[int] | None
    ) -> tuple[int, ...]:
        """The ``output_padding`` that gives ``output_size`` (torch's rule)."""
        if output_size is None:
            return self.output_padding
        dims = self._dims
        size = [int(s) for s in output_size]
        if len(size) == dims + 2:
            size = size[2:]
        if len(size) != dims:
            raise ValueError(
                f"output_size must have {dims} or {dims + 2} elements (got "
                f"{len(output_size)})"
            )
        padding = self._padding_tuple()
        result = []
        for d in range(dims):
            smallest = (
                (input.shape[d + 2] - 1) * self.stride[d]
                - 2 * padding[d]
                + self.dilation[d] * (self.kernel_size[d] - 1)
                + 1
            )
            largest = smallest + self.stride[d] - 1
            if not smallest <= size[d] <= largest:
                raise ValueError(
                    f"requested an output size of {size}, but valid sizes range from "
                    f"{smallest} to {largest} in spatial dim {d} (for an input of "
                    f"{tuple(input.shape[2:])})"
                )
            result.append(size[d] - smallest)
        return tuple(result)


@register(nn.ConvTranspose1d, cases=_transpose_cases(1))
class VIConvTranspose1d(_VIConvTransposeNd):
    """Bayesian :class:`torch.nn.ConvTranspose1d` (same arguments, Bayesian options).

    See :class:`VIConvTranspose2d` for the arguments.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> layer = bnn.VIConvTranspose1d(2, 4, 3, stride=2)
        >>> layer(torch.randn(5, 2, 8), samples=3).shape
        torch.Size([3, 5, 4, 17])
    """

    _dims = 1


@register(nn.ConvTranspose2d, cases=_transpose_cases(2))
class VIConvTranspose2d(_VIConvTransposeNd):
    """Bayesian :class:`torch.nn.ConvTranspose2d` (a "deconvolution").

    The weight has torch's layout ``(in_channels, out_channels / groups,
    *kernel_size)``; the posterior means start at torch's initialisation.
    Per-unit priors (``LearnedNormalPrior(per="unit")``) give one scale per
    output channel, grouped too. Weights are always drawn (``estimator="auto"``
    is ``"reparam"``; ``"local"`` and ``"flipout"`` are not offered).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: int or tuple.
        stride: int or tuple.
        padding: int or tuple: ``dilation * (kernel_size - 1) - padding``
            zeros are added to both sides of the input.
        output_padding: int or tuple, added to one side of the output shape.
        groups: blocked connections from input to output channels.
        bias: if ``False``, no bias (``self.bias is None``).
        dilation: int or tuple.
        padding_mode: only ``"zeros"`` (as ``torch.nn``).
        prior: prior of the weights (see :class:`~pyrolite_bnn.VILinear`).
        variational: variational family (see :class:`~pyrolite_bnn.VILinear`).
        estimator: ``"auto"`` or ``"reparam"`` (both draw the weights).
        device: device of parameters and prior buffers.
        dtype: dtype of parameters and prior buffers.

    Shape:
        - Input: ``(B, C_in, H, W)``; ``forward(input, output_size=None)``.
        - Output: ``(S, B, C_out, H_out, W_out)`` as the outermost module, with
          ``H_out = (H - 1) * stride - 2 * padding + dilation * (kernel_size - 1)
          + output_padding + 1``.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> up = bnn.VIConvTranspose2d(8, 3, 3, stride=2, padding=1)
        >>> up
        VIConvTranspose2d(8, 3, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
        >>> x = torch.randn(4, 8, 5, 5)
        >>> up(x, samples=2).shape
        torch.Size([2, 4, 3, 9, 9])
        >>> up(x, output_size=(10, 10), samples=2).shape
        torch.Size([2, 4, 3, 10, 10])
    """

    _dims = 2


@register(nn.ConvTranspose3d, cases=_transpose_cases(3))
class VIConvTranspose3d(_VIConvTransposeNd):
    """Bayesian :class:`torch.nn.ConvTranspose3d` (same arguments, Bayesian options).

    See :class:`VIConvTranspose2d` for the arguments.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> layer = bnn.VIConvTranspose3d(2, 1, 2, stride=2)
        >>> layer(torch.randn(2, 2, 3, 3, 3), samples=3).shape
        torch.Size([3, 2, 1, 6, 6, 6])
    """

    _dims = 3
