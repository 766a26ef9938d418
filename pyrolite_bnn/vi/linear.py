"""torch_blue's ``VILinear``: :class:`pyrolite_bnn.VILinear` with its signature."""

from __future__ import annotations

from typing import Any

import torch

from pyrolite_bnn.layers._options import Estimator
from pyrolite_bnn.layers.linear import VILinear as BnnVILinear
from pyrolite_bnn.vi.base import VariableSpecs, VIModule, reset_as_constructed

__all__ = ["VILinear"]


class VILinear(BnnVILinear, VIModule):
    """Bayesian ``nn.Linear`` with torch_blue's arguments.

    The third positional argument is the variational distribution (torch_blue's
    order), ``bias`` comes after ``prior``. Random variables ``("weight",
    "bias")``; ``bias`` is ``None`` for ``bias=False``. The computation is
    :class:`pyrolite_bnn.VILinear`'s (local reparameterisation with the
    mean-field Normal posterior).

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        variational_distribution: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        prior: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        bias: whether the layer has a bias.
        rescale_prior: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        kaiming_initialization: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        prior_initialization: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        return_log_probs: see :class:`~pyrolite_bnn.vi.VIkwargs`.
        device: device of the parameters.
        dtype: dtype of the parameters.
        estimator: :class:`pyrolite_bnn.VILinear`'s option (keyword only; not
            in torch_blue).

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> layer = vi.VILinear(4, 3, bias=False)
        >>> layer.random_variables, layer.bias
        (('weight', 'bias'), None)
        >>> layer(torch.randn(8, 4), samples=5).shape
        torch.Size([5, 8, 3])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        variational_distribution: Any = None,
        prior: Any = None,
        bias: bool = True,
        rescale_prior: bool = False,
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        estimator: Estimator = "auto",
    ) -> None:
        specs = VariableSpecs(
            {
                "weight": (out_features, in_features),
                "bias": (out_features,) if bias else None,
            },
            variational_distribution,
            prior,
            rescale_prior,
            kaiming_initialization,
            prior_initialization,
        )
        super().__init__(
            in_features,
            out_features,
            bias,
            prior=specs.bnn_priors(),
            variational=specs.bnn_families(),
            estimator=estimator,
            device=device,
            dtype=dtype,
        )
        self.adopt_specs(specs)
        self.return_log_probs = return_log_probs

    def reset_parameters(self) -> None:
        """Re-initialise as construction does, torch_blue's way, and the priors.

        :func:`~pyrolite_bnn.vi.base.reset_as_constructed`: with
        ``prior_initialization=True`` the variables return to the prior.
        """
        reset_as_constructed(self, super().reset_parameters)
