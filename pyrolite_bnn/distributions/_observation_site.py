"""The distribution at the observation site of a Pyro model of a network."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import Tensor
from torch.distributions import constraints


class ObservationSite(TorchDistribution):
    """Targets drawn in their own layout; an observed target scored as given.

    ``draws`` is the likelihood of the network output in the layout of the
    targets (:meth:`~pyrolite_bnn.PredictiveDistribution.target_distribution`:
    a scalar-target output ``(S, B, 1)`` draws ``(S, B)``, as targets ``(B,)``
    read). A value of the site's whole shape ``batch_shape + event_shape``
    (a draw, or one value per particle) is scored by ``draws``. Any other
    value is a target, scored by ``score``: the Pyro model scores a target
    conditioned on the site (``poutine.condition(pyro_model, data={"obs":
    y})``) exactly as one passed as ``y``, in every layout the likelihood
    accepts (``(B,)`` or ``(B, 1)`` for a scalar target), and refuses others
    with the likelihood's message.

    Args:
        draws: the distribution of the targets, batch shape ``(S, B)``.
        score: the log-likelihood ``(S, B)`` of a target ``(B, ...)``.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> output, normal = torch.zeros(3, 4, 1), bnn.Normal(scale=1.0)
        >>> site = ObservationSite(
        ...     normal.target_distribution(output),
        ...     lambda y: normal.log_likelihood(output, y),
        ... )
        >>> site.sample().shape, site.log_prob(torch.zeros(4, 1)).shape
        (torch.Size([3, 4]), torch.Size([3, 4]))
    """

    arg_constraints: dict[str, constraints.Constraint] = {}  # noqa: RUF012

    def __init__(
        self, draws: TorchDistributionMixin, score: Callable[[Tensor], Tensor]
    ) -> None:
        self.draws = draws
        self.score = score
        super().__init__(draws.batch_shape, draws.event_shape, validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> ObservationSite:
        """The same site with ``batch_shape`` (Pyro's plates broadcast a site)."""
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        return ObservationSite(self.draws.expand(batch_shape), self.score)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        """Whether the draws are reparameterised."""
        return bool(self.draws.has_rsample)

    @property
    def has_enumerate_support(self) -> bool:  # type: ignore[override]
        """Whether the draws' support can be enumerated."""
        return bool(self.draws.has_enumerate_support)

    @constraints.dependent_property
    def support(self) -> Any:
        """The draws' support."""
        return self.draws.support

    def sample(self, sample_shape: Any = torch.Size()) -> Tensor:  # noqa: B008
        """Targets drawn from the likelihood, ``(*sample_shape, S, B, ...)``."""
        result: Tensor = self.draws.sample(sample_shape)
        self._drawn = result
        return result

    def rsample(self, sample_shape: Any = torch.Size()) -> Tensor:  # noqa: B008
        """Reparameterised draws."""
        result: Tensor = self.draws.rsample(sample_shape)
        self._drawn = result
        return result

    def enumerate_support(self, expand: bool = True) -> Tensor:
        """The draws' support."""
        result: Tensor = self.draws.enumerate_support(expand=expand)
        return result

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-density of a draw (the site's whole shape) or of a target.

        This site's own draw is a draw; any other value is a target if the
        likelihood takes it as one, else a value per particle (the site's
        whole shape). With one particle and one example a ``(1, 1)`` target
        has the site's shape too: it is a target (its checks and masks
        apply).
        """
        whole = value.shape == self.batch_shape + self.event_shape
        if value is self.__dict__.get("_drawn"):
            result: Tensor = self.draws.log_prob(value)
            return result
        try:
            return self.score(value).expand(self.batch_shape)
        except ValueError as refused:
            if not whole:
                raise
            try:
                result = self.draws.log_prob(value)
            except ValueError:  # no value per particle either: the target's error
                raise refused from None
        return result

    @property
    def mean(self) -> Tensor:
        """The draws' mean."""
        result: Tensor = self.draws.mean
        return result

    @property
    def variance(self) -> Tensor:
        """The draws' variance."""
        result: Tensor = self.draws.variance
        return result
