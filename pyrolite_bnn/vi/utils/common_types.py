"""``VIkwargs``: the Bayesian keyword arguments every torch_blue layer accepts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

import torch

# The distributions by their path: that package imports this module, and the
# names resolve (typing.get_type_hints) once both are loaded.
import pyrolite_bnn

if TYPE_CHECKING:
    import pyrolite_bnn.vi.distributions

__all__ = ["VIkwargs", "vikwargs_of"]


class VIkwargs(TypedDict, total=False):
    """Keyword arguments shared by the layers of :mod:`pyrolite_bnn.vi`.

    Attributes:
        variational_distribution: a
            :class:`~pyrolite_bnn.vi.distributions.VariationalDistribution`, or
            one per random variable (default ``MeanFieldNormal()``).
        prior: a :class:`~pyrolite_bnn.vi.distributions.Prior`, or one per
            random variable (default ``MeanFieldNormal()``, i.e. ``N(0, 1)``).
        rescale_prior: scale the prior's parameters by ``1 / sqrt(3 fan_in)``.
        kaiming_initialization: start the variational scales at the
            distribution's default times ``1 / sqrt(fan_in)`` (default ``True``).
        prior_initialization: start the variational parameters at the prior's.
        return_log_probs: outputs carry ``log_probs`` (default ``True``).
        device: device of the parameters.
        dtype: dtype of the parameters.

    Example:
        >>> from pyrolite_bnn import vi
        >>> kwargs: vi.VIkwargs = {"rescale_prior": True}
        >>> vi.VILinear(4, 2, **kwargs).in_features
        4
    """

    variational_distribution: (
        pyrolite_bnn.vi.distributions.VariationalDistribution | Any
    )
    prior: pyrolite_bnn.vi.distributions.Prior | Any
    rescale_prior: bool
    kaiming_initialization: bool
    prior_initialization: bool
    return_log_probs: bool
    device: torch.device | str | None
    dtype: torch.dtype | None


def vikwargs_of(
    variational_distribution: Any,
    prior: Any,
    rescale_prior: bool,
    kaiming_initialization: bool,
    prior_initialization: bool,
    return_log_probs: bool,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """The :class:`VIkwargs` of these values, as one dict (for sublayers)."""
    return {
        "variational_distribution": variational_distribution,
        "prior": prior,
        "rescale_prior": rescale_prior,
        "kaiming_initialization": kaiming_initialization,
        "prior_initialization": prior_initialization,
        "return_log_probs": return_log_probs,
        "device": device,
        "dtype": dtype,
    }
