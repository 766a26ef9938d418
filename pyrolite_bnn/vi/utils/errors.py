"""Exceptions of the torch_blue-compatible namespace."""

__all__ = ["NoRoleError", "NoVariablesError", "UnsupportedDistributionError"]


class NoRoleError(TypeError, NotImplementedError):
    """A distribution was built that can serve in no role.

    A :class:`~pyrolite_bnn.vi.distributions.Distribution` subclass that uses
    none of the interfaces ``Prior``, ``VariationalDistribution``,
    ``PredictiveDistribution`` and sets none of the flags ``is_prior``,
    ``is_variational_distribution``, ``is_predictive_distribution``. Both a
    ``TypeError`` (what torch_blue 1.1.0 raises) and a ``NotImplementedError``
    (what its dev branch raises), so code written for either catches it.

    Example:
        >>> from pyrolite_bnn import vi
        >>> class Nothing(vi.distributions.Distribution):
        ...     distribution_parameters = ("mean",)
        >>> try:
        ...     Nothing()
        ... except TypeError as error:
        ...     print(str(error).split(":")[0])
        Nothing not flagged to be functional as any distribution
    """


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
