"""The ``use_norm_constants`` switch of torch_blue."""

from collections.abc import Iterator
from contextlib import contextmanager

from pyrolite_bnn.vi import _globals

__all__ = ["normalised_densities", "use_norm_constants"]


def use_norm_constants(mode: bool = True) -> None:
    """Add normalisation constants to the ``log_prob`` of ``vi.distributions``.

    torch_blue leaves the constants (such as ``log(2 pi) / 2``) out of its
    distributions' ``log_prob`` methods unless this switch is on; the
    distribution objects here follow that convention. It does not change the
    loss: :class:`~pyrolite_bnn.vi.KullbackLeiblerLoss` always uses normalised
    densities (a constant shift of the loss, no change in its gradients).

    Args:
        mode: ``True`` to include the constants, ``False`` to leave them out.

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> normal = vi.distributions.MeanFieldNormal()
        >>> zero = (torch.zeros(1), torch.zeros(1))
        >>> vi.utils.use_norm_constants(True)
        >>> round(float(normal.log_prob(torch.zeros(1), zero)), 4)
        -0.9189
        >>> vi.utils.use_norm_constants(False)
        >>> abs(round(float(normal.log_prob(torch.zeros(1), zero)), 4))
        0.0
    """
    _globals._USE_NORM_CONSTANTS = bool(mode)


def norm_constants_on() -> bool:
    """Whether :func:`use_norm_constants` is on."""
    return _globals._USE_NORM_CONSTANTS


@contextmanager
def normalised_densities() -> Iterator[None]:
    """Within: the distribution objects' ``log_prob`` include their constants.

    The loss evaluates the densities of torch_blue-style priors, variational
    and predictive distributions (built-in or the user's) inside this, so it
    uses normalised densities whatever :func:`use_norm_constants` says (a
    distribution that ignores the switch is used as it is).

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> from pyrolite_bnn.vi.utils.use_norm_constants import normalised_densities
        >>> normal = vi.distributions.MeanFieldNormal()
        >>> zero = (torch.zeros(1), torch.zeros(1))
        >>> with normalised_densities():
        ...     round(float(normal.log_prob(torch.zeros(1), zero)), 4)
        -0.9189
        >>> abs(round(float(normal.log_prob(torch.zeros(1), zero)), 4))
        0.0
    """
    stored = _globals._USE_NORM_CONSTANTS
    _globals._USE_NORM_CONSTANTS = True
    try:
        yield
    finally:
        _globals._USE_NORM_CONSTANTS = stored
