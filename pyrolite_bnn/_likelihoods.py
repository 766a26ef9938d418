"""Which likelihoods the entry points take: one conversion, one refusal.

Every entry point that takes a likelihood (:func:`~pyrolite_bnn.predict`,
:class:`~pyrolite_bnn.Prediction`, :func:`~pyrolite_bnn.calibrate` and the
calibrations' ``wrap`` and ``fit``, :func:`~pyrolite_bnn.laplace`,
:class:`~pyrolite_bnn.KullbackLeiblerLoss`) reads it through
:func:`as_likelihood`: a :class:`~pyrolite_bnn.PredictiveDistribution` as it
is, a torch_blue-style distribution of :mod:`pyrolite_bnn.vi.distributions`
(anything with a ``to_predictive()`` method) as the likelihood that method
returns, anything else refused with one message. What an entry point needs
of the likelihood beyond that (``laplace``: ``Normal``, ``Categorical`` or
``Bernoulli``) it checks itself, naming the likelihood with
:func:`describe_likelihood`.
"""

from __future__ import annotations

from pyrolite_bnn._validation import reloaded_hint
from pyrolite_bnn.distributions.predictive import PredictiveDistribution

__all__ = [
    "as_likelihood",
    "describe_likelihood",
    "not_predictive",
    "qualified_name",
]


def qualified_name(value: object) -> str:
    """``module.QualifiedName`` of ``value``'s class (of ``value`` if a class).

    Example:
        >>> import pyrolite_bnn as bnn
        >>> qualified_name(bnn.Normal())
        'pyrolite_bnn.distributions.predictive.Normal'
    """
    kind = value if isinstance(value, type) else type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def not_predictive(distribution: object) -> str:
    """Why a torch_blue-style ``distribution`` is no likelihood: one message.

    Used wherever one without the predictive role is given as a likelihood
    (:func:`as_likelihood`) or asked for a predictive computation.

    Example:
        >>> from pyrolite_bnn import vi
        >>> message = not_predictive(vi.distributions.UniformPrior())
        >>> message.split(" does not")[0].rsplit(".", 1)[1]
        'UniformPrior'
        >>> message.split(" does not")[1].split(" (")[0]
        ' support use as predictive distribution'
    """
    return (
        f"{qualified_name(distribution)} does not support use as predictive "
        "distribution (its is_predictive_distribution is False)"
    )


def describe_likelihood(likelihood: PredictiveDistribution) -> str:
    """The likelihood for a message: its repr and its class with the module.

    Example:
        >>> import pyrolite_bnn as bnn
        >>> describe_likelihood(bnn.Poisson())
        'Poisson() (pyrolite_bnn.distributions.predictive.Poisson)'
    """
    return f"{likelihood!r} ({qualified_name(likelihood)})"


def as_likelihood(
    predictive: object, who: str, argument: str = "predictive"
) -> PredictiveDistribution:
    """``predictive`` as a library likelihood, or a ``TypeError`` naming it.

    A torch_blue-style distribution is converted by its ``to_predictive()``,
    which builds its likelihood once and keeps it: a learned noise scale is
    the same parameter wherever the object is passed.

    Args:
        predictive: a :class:`~pyrolite_bnn.PredictiveDistribution`, or a
            distribution of :mod:`pyrolite_bnn.vi.distributions`.
        who: the entry point, named in the message.
        argument: the name under which the user gave it (an argument or an
            attribute of ``who``), named in the message.

    Raises:
        TypeError: for anything else (a torch_blue distribution without the
            predictive role, ``is_predictive_distribution = False``),
            naming its type with the module.

    Example:
        >>> from pyrolite_bnn import vi
        >>> as_likelihood(vi.distributions.Categorical(), "predict")
        Categorical()
        >>> try:
        ...     as_likelihood("cat", "predict")
        ... except TypeError as error:
        ...     print(str(error).split(", got ")[1])
        'cat' of type builtins.str
    """
    if isinstance(predictive, PredictiveDistribution):
        return predictive
    to_predictive = getattr(predictive, "to_predictive", None)
    # torch_blue's flag of the role; a custom one may leave it unset.
    serves = getattr(predictive, "is_predictive_distribution", True)
    if not isinstance(predictive, type) and callable(to_predictive):
        if not serves:  # a prior only (vi.distributions.UniformPrior())
            raise TypeError(
                f"{who}: {argument} must be a likelihood; {not_predictive(predictive)}"
            )
        converted = to_predictive()  # vi.distributions.Categorical(), ...
        if isinstance(converted, PredictiveDistribution):
            return converted
    if isinstance(predictive, type):
        given = f"the class {qualified_name(predictive)}"
        if issubclass(predictive, PredictiveDistribution) or callable(to_predictive):
            given += f": pass an instance, {predictive.__name__}()"
    else:
        given = f"{predictive!r} of type {qualified_name(predictive)}"
        given += reloaded_hint(predictive, PredictiveDistribution)
        if isinstance(predictive, int):
            given += (
                " (a number of samples? predict and calibrate take it after the "
                "likelihood: predict(model, x, likelihood, samples))"
            )
    raise TypeError(
        f"{who}: {argument} must be a likelihood such as bnn.Normal() or "
        "bnn.Categorical() (or a distribution of pyrolite_bnn.vi.distributions), "
        f"got {given}"
    )
