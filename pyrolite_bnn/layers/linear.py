"""Bayesian fully connected layer."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from pyrolite_bnn._validation import check_floating_input, check_integer
from pyrolite_bnn.distributions.variational import NormalMoments, VariationalFamily
from pyrolite_bnn.layers import functional
from pyrolite_bnn.layers._base import _VIWeightLayer
from pyrolite_bnn.layers._options import Estimator
from pyrolite_bnn.layers.functional import current_batch_size, current_samples
from pyrolite_bnn.layers.registry import LayerCase, register

__all__ = ["VILinear"]


@register(
    nn.Linear,
    cases=(
        LayerCase((5, 3), (4, 5)),
        LayerCase((5, 3, False), (4, 2, 5)),
    ),
)
class VILinear(_VIWeightLayer):
    """Bayesian counterpart of :class:`torch.nn.Linear`: ``y = x W^T + b``.

    ``weight`` and ``bias`` are random variables with a prior and a learned
    variational posterior. Positional and keyword arguments are those of
    ``torch.nn.Linear``; the Bayesian options are keyword-only.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: if ``False``, the layer has no bias (``self.bias is None``).
        prior: prior of the weights: a :class:`~pyrolite_bnn.Prior`, any
            torch/pyro distribution, a callable ``shape -> distribution``, or a
            mapping ``{"weight": ..., "bias": ...}``. Default ``N(0, 1)``. A
            mapping need not name every variable: one it leaves out gets the
            default ``N(0, 1)`` (``{"weight": bnn.LaplacePrior(0, 0.1)}``
            keeps the bias's ``N(0, 1)``); a name the layer does not declare
            is refused.
        variational: variational family (or mapping per variable). Default
            :class:`~pyrolite_bnn.MeanFieldNormal`.
        estimator: how the output's randomness is sampled in a PyTorch-style
            call with the generated guide (``estimator_for(input)`` says which):
            ``"reparam"`` draws the weights of every particle; ``"local"``
            samples each output from its exact Gaussian given the weight means
            and variances (local reparameterisation: no weight draws,
            lower-variance gradients), only for inputs with one position per
            example; ``"flipout"`` draws one weight perturbation per particle
            and decorrelates examples by random sign flips drawn per example
            and shared by all its positions. ``"auto"`` (default) is
            ``"local"`` for ``(B, in_features)`` inputs and ``"flipout"`` for
            ``(B, *, in_features)`` inputs, where the positions of an example
            (the tokens of a sequence) share its weights and independent
            output draws would break their joint distribution, and in calls
            whose inputs require gradients; ``"reparam"`` with other
            variational families. All give the same expected loss and
            gradients of the parameters; an explicit ``"local"``'s derivatives
            by the inputs are those of no weight draw (a gradient penalty on
            them is biased low).
            Inside Pyro inference, or with a replaced guide, weights are always
            sampled (``"reparam"``).
        device: device of parameters and prior buffers.
        dtype: dtype of parameters and prior buffers.

    Shape:
        - Input: ``(B, *, in_features)``, dense; or a ``(B, in_features)``
          sparse COO, CSR or CSC matrix, as ``torch.nn.Linear`` takes (other
          layouts and nested tensors are refused with their conversion).
        - Output: ``(S, B, *, out_features)`` as the outermost module; folded
          ``(B * S, *, out_features)`` inside a network.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> layer = bnn.VILinear(4, 3, False)
        >>> layer
        VILinear(in_features=4, out_features=3, bias=False)
        >>> layer(torch.randn(8, 4), samples=5).shape
        torch.Size([5, 8, 3])
        >>> layer.estimator_for(torch.randn(8, 4))
        'local'
        >>> layer.estimator_for(torch.randn(8, 6, 4))  # 6 positions per example
        'flipout'
    """

    _auto_estimator = "local"
    in_features: int
    out_features: int

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        prior: object = None,
        variational: VariationalFamily | Mapping[str, VariationalFamily] | None = None,
        estimator: Estimator = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        in_features = check_integer(in_features, "in_features")
        out_features = check_integer(out_features, "out_features")
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"in_features and out_features must be >= 1, got {in_features}, "
                f"{out_features}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self._declare(
            {
                "weight": (out_features, in_features),
                "bias": (out_features,) if bias else None,
            },
            prior=prior,
            variational=variational,
            estimator=estimator,
            device=device,
            dtype=dtype,
        )
        self.reset_parameters()

    def forward(self, input: Tensor) -> Tensor:
        """Apply the layer for every particle."""
        check_floating_input(input, type(self).__name__, sparse=True)
        if input.dim() < 2 or input.shape[-1] != self.in_features:
            samples = current_samples()
            folded = samples > 1 and input.shape[-1] == samples * self.in_features
            raise ValueError(
                f"VILinear(in_features={self.in_features}) expected input of shape "
                f"(batch, ..., {self.in_features}), got "
                f"{functional.describe_input_shape(input)}"
                + (
                    f" ({samples} particles x {self.in_features}: inside a "
                    f"network the batch dimension holds batch * {samples} rows, "
                    "so a reshape by the input's batch size, h.view(x.shape[0], "
                    "-1), moved the particles into the features; reshape by "
                    "h.shape[0] or flatten(1))"
                    if folded
                    else ""
                )
            )
        weight, bias = self.weight, self.bias
        if isinstance(weight, NormalMoments):
            self._draw_unless_one_row_per_example(input)
            local = self._moment_estimator(input) == "local"
            estimate = functional.linear_local if local else functional.linear_flipout
            return estimate(
                input, weight, bias, current_samples(), current_batch_size()
            )
        return functional.linear(input, weight, bias, current_batch_size())

    def output_positions(self, input: Tensor) -> int:
        """Positions per example: the size of the middle dimensions of ``input``."""
        return math.prod(input.shape[1:-1])

    def _torch_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={'bias' in self.posterior}"
        )
