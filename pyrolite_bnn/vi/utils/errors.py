"""Exceptions of the torch_blue-compatible namespace."""

__all__ = ["NoVariablesError", "UnsupportedDistributionError"]


class NoVariablesError(Exception):
    """A method that needs the module's own random variables found none.

    Raised by :class:`~pyrolite_bnn.vi.VIModule` methods such as
    ``get_variational_parameters`` on a module built without ``variable_shapes``.

    Example:
        >>> from pyrolite_bnn import vi
        >>> try:
        ...     vi.VIModule().reset_variational_parameters()
        ... except vi.utils.NoVariablesError as error:
        ...     print(error)
        VIModule has no random variables to reset
    """


class UnsupportedDistributionError(ValueError):
    """A distribution was used in a role it does not support.

    For example :class:`~pyrolite_bnn.vi.distributions.Categorical` (a predictive
    distribution only) given as a prior.

    Example:
        >>> from pyrolite_bnn import vi
        >>> try:
        ...     vi.VILinear(2, 3, prior=vi.distributions.Categorical())
        ... except vi.utils.UnsupportedDistributionError as error:
        ...     print(error)
        Categorical does not support use as prior.
    """
