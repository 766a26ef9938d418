"""Declaration of the random variables (Bayesian weights) of a layer."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

# ``pyrolite_bnn.module.VIModule`` by its path: that module imports this one, and
# the name resolves (typing.get_type_hints) once both are loaded.
import pyrolite_bnn
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.distributions.variational import Posterior

if TYPE_CHECKING:
    import pyrolite_bnn.module

__all__ = ["RandomVariable", "UnitLayout"]


@dataclass(frozen=True)
class UnitLayout:
    """Where the output units of a random weight tensor lie.

    A layer declares it with each variable
    (:meth:`~pyrolite_bnn.VIModule.declare_random_variable`); per-unit priors
    (``LearnedNormalPrior(per="unit")``) give one hyperparameter to the entries
    of each output unit. The default, units along the first dimension, is a
    row of a ``VILinear`` weight, an output channel of a ``VIConv2d`` kernel,
    one bias entry.

    Attributes:
        dim: the dimension that indexes the output units: 1 for the
            transposed convolutions (torch's weight layout ``(in, out / groups,
            k...)``) and for ``VIEmbedding`` (``(categories, features)``: its
            output units are the embedding's features, as for a ``VILinear`` on
            one-hot inputs).
        groups: with ``groups > 1`` the first dimension is split into
            ``groups`` equal blocks, and the entries of block ``g`` at index
            ``j`` along ``dim`` belong to unit ``g * shape[dim] + j`` (output
            channel ``g * out / groups + j`` of a grouped transposed
            convolution).

    Example:
        >>> import torch
        >>> from pyrolite_bnn.variables import UnitLayout
        >>> layout = UnitLayout(dim=1, groups=2)  # VIConvTranspose1d(4, 6, 1, groups=2)
        >>> shape = (4, 3, 1)  # its weight: (in, out / groups, kernel)
        >>> per_unit = torch.arange(6.0).reshape(layout.per_unit_shape(shape))
        >>> layout.spread(per_unit, shape)[..., 0]  # the unit of each weight
        tensor([[0., 1., 2.],
                [0., 1., 2.],
                [3., 4., 5.],
                [3., 4., 5.]])
    """

    dim: int = 0
    groups: int = 1

    def __post_init__(self) -> None:
        """Refuse a negative ``dim`` and ``groups`` below 1."""
        for what, value, least in (("dim", self.dim, 0), ("groups", self.groups, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(
                    f"UnitLayout {what} must be an int of at least {least}, got "
                    f"{value!r}"
                )

    def check(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` unless the layout fits a tensor of ``shape``.

        Args:
            shape: shape of the random variable.
        """
        if self.dim >= max(1, len(shape)):
            raise ValueError(
                f"UnitLayout dim={self.dim} is not a dimension of a random variable "
                f"of shape {tuple(shape)}"
            )
        if self.groups > 1 and (self.dim == 0 or shape[0] % self.groups):
            raise ValueError(
                f"UnitLayout(dim={self.dim}, groups={self.groups}) splits the first "
                "dimension into groups of units along another one: it needs dim > "
                f"0 and a first dimension divisible by groups, got shape "
                f"{tuple(shape)}"
            )

    def per_unit_shape(self, shape: Sequence[int]) -> torch.Size:
        """Shape of a tensor with one entry per unit, in unit order.

        With ``groups == 1`` it broadcasts to ``shape`` itself (``(out, 1)`` for
        a ``VILinear`` weight); with ``groups > 1`` it has one more dimension,
        ``(groups, 1, ..., shape[dim], ...)``: see :meth:`spread`.

        Args:
            shape: shape of the random variable.
        """
        if not shape:  # a scalar variable: one unit
            return torch.Size()
        if self.groups == 1:
            sizes = [1] * len(shape)
            sizes[self.dim] = shape[self.dim]
            return torch.Size(sizes)
        sizes = [1] * (len(shape) + 1)
        sizes[0], sizes[self.dim + 1] = self.groups, shape[self.dim]
        return torch.Size(sizes)

    def spread(self, per_unit: Tensor, shape: Sequence[int]) -> Tensor:
        """``per_unit`` spread to a tensor that broadcasts to ``shape``.

        ``per_unit`` has :meth:`per_unit_shape`; each entry of the result is the
        value of its unit (differentiable).

        Args:
            per_unit: one value per unit.
            shape: shape of the random variable.
        """
        if self.groups == 1:
            return per_unit
        sizes = list(per_unit.shape)
        sizes[1] = shape[0] // self.groups
        return per_unit.expand(sizes).reshape(shape[0], *sizes[2:])

    def sum_per_unit(self, values: Tensor) -> Tensor:
        """The sum of ``values`` (the variable's shape) over each unit's entries.

        Args:
            values: one value per entry of the random variable.

        Returns:
            A tensor of :meth:`per_unit_shape`.
        """
        target = self.per_unit_shape(values.shape)
        if self.groups > 1:
            values = values.reshape(self.groups, -1, *values.shape[1:])
        return values.sum_to_size(target)


@dataclass(frozen=True)
class RandomVariable:
    """A weight tensor that a layer declares as random.

    Attributes:
        site: Pyro sample-site name, the module path plus the attribute name
            (``"body.0.weight"``); checkpoints and guides rely on it.
        name: attribute name in its layer (``"weight"``).
        shape: shape of one draw of the tensor.
        module: the layer that declared it.
        layer_posterior: the layer's own posterior module of the variable
            (``module.posterior[name]``), read without any check: the
            network's posterior under its default guide, an unused module
            while an assigned guide trains the network.
        shared: whether the layer sits at more than one position of the
            network (weight sharing): every position reads the same draw, so
            the weights must be drawn, not output noise sampled per position.
        network: the module whose variables were collected (the network whose
            site names these are), while it exists; ``None`` for a variable
            built by hand. Held weakly (given as ``root``): a forward pass's
            record holds its variables from the output's autograd node, which
            the cyclic collector cannot look into. Copies keep it: ``copy``,
            ``pickle`` (a copied variable holds its copied network) and
            ``dataclasses.replace`` (``root=`` gives another one).

    Where the tensor's output units lie is the layer's to say
    (``module.unit_layout(name)``).

    Example:
        >>> import dataclasses, pyrolite_bnn as bnn
        >>> net = bnn.VISequential(bnn.VILinear(3, 2))
        >>> weight = net.random_variables()[0]
        >>> dataclasses.replace(weight, shared=True).network is net
        True
    """

    site: str
    name: str
    shape: torch.Size
    module: pyrolite_bnn.module.VIModule
    layer_posterior: Posterior
    shared: bool = False
    root: InitVar[nn.Module | None] = None
    # The network, as a field that dataclasses.replace passes on (an InitVar
    # falls back to its default there: the copy had lost its network).
    _link: _NetworkLink | None = field(
        default=None, compare=False, repr=False, kw_only=True
    )

    def __post_init__(self, root: nn.Module | None) -> None:
        if root is not None:
            object.__setattr__(self, "_link", _NetworkLink(root))

    @property
    def network(self) -> nn.Module | None:
        """The network whose variables were collected, while it exists."""
        return None if self._link is None else self._link.network()

    def __reduce__(
        self,
    ) -> tuple[Callable[..., RandomVariable], tuple[object, ...]]:
        """Pickled and copied with its network (a weak reference pickles not).

        The copy holds its network: a variable copied alone (``copy.deepcopy``
        of a list of them) would otherwise lose it at once.
        """
        fields = (self.site, self.name, self.shape, self.module, self.layer_posterior)
        return (_copied_variable, (*fields, self.shared, self.network))

    @property
    def posterior(self) -> Posterior:
        """The layer's posterior module of the variable: the network's posterior.

        That holds for the network's default guide. A guide assigned to the
        network (``network.guide = AutoNormal(...)``) replaces the layers'
        posterior modules: they keep their initial values while the guide
        learns, so reading them (to set the next task's prior, say) is
        silently wrong, and a warning says so, naming the guide. Read the
        trained posterior from the guide itself:
        ``network.guide.median()`` and ``network.guide.quantiles(...)``, by
        site name, work for every guide (the default one included).

        Example:
            >>> import pyrolite_bnn as bnn
            >>> layer = bnn.VILinear(3, 2)
            >>> weight = layer.random_variables()[0]
            >>> weight.site, weight.posterior.loc.shape
            ('weight', torch.Size([2, 3]))
        """
        if self.network is not None:
            from pyrolite_bnn.guides import guide_of  # imports this module

            assigned = guide_of(self.network).inner
            if assigned is not None:
                warn_at_caller(
                    f"{self.site}: RandomVariable.posterior is the layer's own "
                    f"posterior module ({type(self.layer_posterior).__name__}), "
                    "which the guide assigned to this network, "
                    f"{type(assigned).__name__}, replaces: it holds its initial "
                    "values, not what training learned. Read the trained "
                    "posterior from the guide: network.guide.median() (the "
                    "median of each weight, by site name) and "
                    "network.guide.quantiles([...]) (for a Normal guide, "
                    "quantiles([0.5, 0.8413447]) give the mean and the mean plus "
                    "one standard deviation)"
                )
        return self.layer_posterior


class _NetworkLink:
    """A random variable's network: held weakly, or held (a copy's).

    Args:
        network: the network.
        hold: hold it (a copied variable's copied network, which nothing else
            holds), not only weakly.
    """

    __slots__ = ("_held", "_reference")

    def __init__(self, network: nn.Module, hold: bool = False) -> None:
        self._reference = weakref.ref(network)
        self._held = network if hold else None

    def network(self) -> nn.Module | None:
        """The network, while it exists."""
        return self._reference()


def _copied_variable(*fields: Any) -> RandomVariable:
    """A :class:`RandomVariable` rebuilt by pickling or copying, holding its network."""
    *declared, network = fields
    link = None if network is None else _NetworkLink(network, hold=True)
    return RandomVariable(*declared, _link=link)
