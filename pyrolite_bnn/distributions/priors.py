"""Prior distributions over a layer's weights.

A prior is a small :class:`torch.nn.Module` whose hyperparameters are *buffers*:
they follow ``.to()``/``.double()`` and are saved in ``state_dict``. The
distribution itself is built lazily, on every call, from those buffers, so it is
always on the right device and dtype. Any ``torch.distributions`` or
``pyro.distributions`` distribution, or a callable ``shape -> distribution``,
is accepted wherever a prior is (see :func:`as_prior`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import Tensor, nn
from torch.distributions import Distribution

from pyrolite_bnn._capture import is_capturing

__all__ = [
    "CallablePrior",
    "DistributionPrior",
    "LaplacePrior",
    "NormalPrior",
    "Prior",
    "ScaleMixtureNormalPrior",
    "StudentTPrior",
    "as_prior",
]

PriorLike = "Prior | Distribution | Callable[[torch.Size], Distribution]"


def _positive(value: float | Tensor, what: str) -> Tensor:
    tensor = torch.as_tensor(value, dtype=torch.get_default_dtype())
    if not bool((tensor > 0).all()) or not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{what} must be positive and finite, got {value!r}")
    return tensor


def _finite(value: float | Tensor, what: str) -> Tensor:
    tensor = torch.as_tensor(value, dtype=torch.get_default_dtype())
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return tensor


def _independent(base: Distribution, shape: torch.Size) -> dist.TorchDistribution:
    """Expand an elementwise ``base`` to ``shape`` and declare all of it event."""
    if not isinstance(base, TorchDistributionMixin):
        raise TypeError(
            f"prior distribution must be a pyro.distributions distribution, got "
            f"{type(base).__name__}"
        )
    batch = base.batch_shape
    if batch != shape:
        base = base.expand(shape)
    result: dist.TorchDistribution = base.to_event(len(shape))
    return result


class Prior(nn.Module):
    """Base class of priors: ``prior(shape)`` returns the prior of a tensor.

    Subclasses implement :meth:`elementwise`, the prior of one scalar weight
    (batch shape ``()`` or broadcastable to the weight's shape); the base class
    expands it to the requested shape and makes every dimension an event
    dimension, as a Pyro sample site for the whole tensor needs.
    """

    def elementwise(self) -> dist.TorchDistribution:
        """Distribution of a single weight built from the buffers."""
        raise NotImplementedError

    def forward(self, shape: Sequence[int]) -> dist.TorchDistribution:
        """Prior of a weight tensor of the given ``shape`` (all dims are event)."""
        return _independent(self.elementwise(), torch.Size(shape))

    def kl_from_normal(self, loc: Tensor, scale: Tensor) -> Tensor | None:
        """``KL(N(loc, scale^2) || prior)`` summed over the tensor, if cheap.

        A fast path for the default mean-field Normal posterior; ``None`` (the
        default) means "use ``torch.distributions.kl_divergence``".
        """
        return None


class NormalPrior(Prior):
    """Independent ``Normal(loc, scale)`` prior on every weight.

    Args:
        loc: prior mean.
        scale: prior standard deviation (must be positive).

    Example:
        >>> import pyrolite_bnn as bnn
        >>> bnn.NormalPrior(0.0, 0.5)((3, 2))
        Independent(Normal(loc: torch.Size([3, 2]), scale: torch.Size([3, 2])), 2)
        >>> bnn.NormalPrior(scale=0.5)
        NormalPrior(loc=0, scale=0.5)
    """

    loc: Tensor
    scale: Tensor

    def __init__(self, loc: float | Tensor = 0.0, scale: float | Tensor = 1.0) -> None:
        super().__init__()
        self.register_buffer("loc", _finite(loc, "NormalPrior loc"))
        self.register_buffer("scale", _positive(scale, "NormalPrior scale"))

    def kl_from_normal(self, loc: Tensor, scale: Tensor) -> Tensor | None:
        """Closed form, arranged to keep few weight-sized tensors for backward.

        ``KL = sum[(sigma^2 + (mu - m)^2) / (2 s^2)] - sum log sigma
        + n (log s - 1/2)`` for ``q = N(mu, sigma^2)``, prior ``N(m, s^2)``.
        """
        prior_loc, prior_scale = self.loc, self.scale
        quadratic = (scale.square() + (loc - prior_loc).square()).sum()
        if (
            prior_scale.device.type == "cpu"
            and prior_scale.numel() == 1
            and not is_capturing()
        ):
            # Constants as Python floats: fewer tiny tensor ops on the CPU (on an
            # accelerator, reading them would synchronise instead).
            s = float(prior_scale)
            constant = loc.numel() * (math.log(s) - 0.5)
            return quadratic * (0.5 / (s * s)) - scale.log().sum() + constant
        return (
            0.5 * quadratic / prior_scale.square()
            - scale.log().sum()
            + loc.numel() * (prior_scale.log() - 0.5)
        )

    def elementwise(self) -> dist.TorchDistribution:
        """Return ``Normal(loc, scale)``."""
        result: dist.TorchDistribution = dist.Normal(self.loc, self.scale)
        return result

    def extra_repr(self) -> str:
        """Constructor arguments."""
        return f"loc={_fmt(self.loc)}, scale={_fmt(self.scale)}"


class LaplacePrior(Prior):
    """Independent ``Laplace(loc, scale)`` prior (sparsity-inducing).

    Args:
        loc: location.
        scale: scale (must be positive).
    """

    loc: Tensor
    scale: Tensor

    def __init__(self, loc: float | Tensor = 0.0, scale: float | Tensor = 1.0) -> None:
        super().__init__()
        self.register_buffer("loc", _finite(loc, "LaplacePrior loc"))
        self.register_buffer("scale", _positive(scale, "LaplacePrior scale"))

    def elementwise(self) -> dist.TorchDistribution:
        """Return ``Laplace(loc, scale)``."""
        result: dist.TorchDistribution = dist.Laplace(self.loc, self.scale)
        return result

    def extra_repr(self) -> str:
        """Constructor arguments."""
        return f"loc={_fmt(self.loc)}, scale={_fmt(self.scale)}"


class StudentTPrior(Prior):
    """Independent Student-t prior (heavy tails).

    Args:
        df: degrees of freedom (positive).
        loc: location.
        scale: scale (positive).
    """

    df: Tensor
    loc: Tensor
    scale: Tensor

    def __init__(
        self,
        df: float | Tensor = 3.0,
        loc: float | Tensor = 0.0,
        scale: float | Tensor = 1.0,
    ) -> None:
        super().__init__()
        self.register_buffer("df", _positive(df, "StudentTPrior df"))
        self.register_buffer("loc", _finite(loc, "StudentTPrior loc"))
        self.register_buffer("scale", _positive(scale, "StudentTPrior scale"))

    def elementwise(self) -> dist.TorchDistribution:
        """Return ``StudentT(df, loc, scale)``."""
        result: dist.TorchDistribution = dist.StudentT(self.df, self.loc, self.scale)
        return result

    def extra_repr(self) -> str:
        """Constructor arguments."""
        return f"df={_fmt(self.df)}, loc={_fmt(self.loc)}, scale={_fmt(self.scale)}"


class ScaleMixtureNormalPrior(Prior):
    """Zero-mean scale mixture of two Normals (Blundell et al., 2015).

    ``p(w) = pi * N(w; 0, scale1^2) + (1 - pi) * N(w; 0, scale2^2)``; the KL to it
    has no closed form, so it is estimated by Monte Carlo.

    Args:
        pi: weight of the first component, in ``(0, 1)``.
        scale1: standard deviation of the first (wide) component.
        scale2: standard deviation of the second (narrow) component.
    """

    logits: Tensor
    scales: Tensor

    def __init__(
        self,
        pi: float = 0.5,
        scale1: float = 1.0,
        scale2: float = math.exp(-6.0),
    ) -> None:
        super().__init__()
        if not 0.0 < pi < 1.0:
            raise ValueError(
                f"ScaleMixtureNormalPrior pi must be in (0, 1), got {pi!r}"
            )
        scales = torch.stack(
            [
                _positive(scale1, "ScaleMixtureNormalPrior scale1"),
                _positive(scale2, "ScaleMixtureNormalPrior scale2"),
            ]
        )
        self.register_buffer("logits", torch.tensor([math.log(pi), math.log1p(-pi)]))
        self.register_buffer("scales", scales)

    def elementwise(self) -> dist.TorchDistribution:
        """Return the two-component mixture."""
        result: dist.TorchDistribution = dist.MixtureSameFamily(
            dist.Categorical(logits=self.logits),
            dist.Normal(torch.zeros_like(self.scales), self.scales),
        )
        return result

    def extra_repr(self) -> str:
        """Constructor arguments."""
        pi = float(self.logits.softmax(-1)[0])
        return (
            f"pi={pi:.3g}, scale1={_fmt(self.scales[0])}, scale2={_fmt(self.scales[1])}"
        )


class DistributionPrior(Prior):
    """Wrap any ``torch``/``pyro`` distribution of a scalar weight as a prior.

    The distribution's tensor parameters become buffers, so the prior follows
    ``.to()``/``.double()`` and is saved in ``state_dict``. The distribution
    is rebuilt from the ``pyro.distributions`` class of the same name.

    Args:
        distribution: e.g. ``torch.distributions.Laplace(0., 1.)``.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> prior = bnn.DistributionPrior(torch.distributions.Cauchy(0.0, 1.0))
        >>> prior((2,)).base_dist
        Cauchy(loc: torch.Size([2]), scale: torch.Size([2]))
    """

    def __init__(self, distribution: Distribution) -> None:
        super().__init__()
        cls = getattr(dist, type(distribution).__name__, None)
        if cls is None or not isinstance(cls, type):
            cls = type(distribution)
        self._cls = cls
        self._names: list[str] = []
        for name in distribution.arg_constraints:
            if name not in distribution.__dict__:  # e.g. lazily derived probs/logits
                continue
            value = getattr(distribution, name)
            if isinstance(value, Tensor):
                self.register_buffer(name, value.detach().clone())
                self._names.append(name)
        if not self._names:
            raise ValueError(
                f"cannot read the parameters of {type(distribution).__name__}; "
                "pass a callable shape -> distribution instead"
            )
        # Validate now, so that bad hyperparameters fail at construction.
        self.elementwise()

    def elementwise(self) -> dist.TorchDistribution:
        """Rebuild the wrapped distribution from the buffers."""
        kwargs = {name: getattr(self, name) for name in self._names}
        built = self._cls(**kwargs)
        if not isinstance(built, TorchDistributionMixin):
            raise TypeError(
                f"{self._cls.__name__} is not a Pyro-compatible distribution"
            )
        return built

    def extra_repr(self) -> str:
        """The wrapped distribution's class."""
        return self._cls.__name__


class CallablePrior(Prior):
    """A prior given as a function ``shape -> distribution``.

    The function is called with the weight's shape and must return a Pyro
    distribution whose batch shape is ``()`` or the weight's shape. Tensors it
    closes over do not follow ``.to()``: prefer a :class:`Prior` subclass with
    buffers for device-portable models.

    Args:
        fn: the function.
    """

    def __init__(self, fn: Callable[[torch.Size], Distribution]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, shape: Sequence[int]) -> dist.TorchDistribution:
        """Call ``fn(shape)`` and make the result cover the whole tensor."""
        built = self.fn(torch.Size(shape))
        if not isinstance(built, TorchDistributionMixin):
            cls = getattr(dist, type(built).__name__, None)
            if cls is None:
                raise TypeError(
                    f"prior callable returned {type(built).__name__}, expected a "
                    "torch.distributions or pyro.distributions distribution"
                )
            built = DistributionPrior(built).elementwise()
        event = len(built.event_shape)
        if event:
            if built.event_shape != torch.Size(shape)[len(shape) - event :]:
                raise ValueError(
                    f"prior callable returned event shape {tuple(built.event_shape)} "
                    f"for a weight of shape {tuple(shape)}"
                )
            built = built.to_event(0)
            batch = torch.Size(shape)[: len(shape) - event]
            expanded: dist.TorchDistribution = built.expand(batch).to_event(len(batch))
            return expanded
        return _independent(built, torch.Size(shape))


def as_prior(prior: object) -> Prior:
    """Turn anything accepted as a prior into a fresh :class:`Prior` module.

    ``None`` gives the default ``NormalPrior(0, 1)``; a :class:`Prior` is copied
    (so that layers never share hyperparameter buffers by accident); a
    distribution is wrapped in :class:`DistributionPrior`; a callable in
    :class:`CallablePrior`.

    Args:
        prior: ``None``, a :class:`Prior`, a distribution, or a callable.

    Returns:
        A new :class:`Prior` module.
    """
    if prior is None:
        return NormalPrior()
    if isinstance(prior, Prior):
        return copy.deepcopy(prior)
    if isinstance(prior, Distribution):
        return DistributionPrior(prior)
    if callable(prior):
        return CallablePrior(prior)
    raise TypeError(
        "prior must be a bnn Prior, a torch/pyro distribution or a callable "
        f"shape -> distribution; got {type(prior).__name__}"
    )


def _fmt(value: Tensor) -> str:
    return (
        f"{value.item():.4g}" if value.numel() == 1 else f"tensor{tuple(value.shape)}"
    )
