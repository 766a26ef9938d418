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
import hashlib
import math
from collections.abc import Callable, Hashable, Sequence
from contextvars import ContextVar
from typing import Any, Literal, TypeVar, cast, get_args

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.nn import PyroParam, PyroSample
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Transform, constraints

from pyrolite_bnn._capture import is_capturing, is_wrapped
from pyrolite_bnn._context_values import in_own_context, set_while
from pyrolite_bnn._handlers import pyro_wrapped
from pyrolite_bnn._overrides import keeps_methods
from pyrolite_bnn._scales import DeclaresScales
from pyrolite_bnn._state import RecordsInState, recorded
from pyrolite_bnn._unwritten_tensors import RefusesUnwrittenTensors, holds_no_values
from pyrolite_bnn._validation import is_validation_enabled, readable_all
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.distributions._held_tensors import (
    HeldTensor,
    LastChecked,
    held_tensors,
    storage_address,
    storage_names,
)
from pyrolite_bnn.distributions._names import distribution_name
from pyrolite_bnn.distributions._precision import computed_in_full_precision
from pyrolite_bnn.distributions.variational import NormalMoments
from pyrolite_bnn.variables import UnitLayout

__all__ = [
    "CallablePrior",
    "DistributionPrior",
    "LaplacePrior",
    "LearnedNormalPrior",
    "NormalPrior",
    "Prior",
    "ScaleMixtureNormalPrior",
    "ScalePer",
    "StudentTPrior",
    "as_prior",
    "priors_in_full_precision",
]

# ``LearnedNormalPrior(per=)``: one learned scale per layer, or one per output unit.
ScalePer = Literal["layer", "unit"]

_NARROW_SCALE = math.exp(-6.0)  # Blundell et al.'s narrow mixture component
#: Largest hyperparameter (in numbers) a prior keeps a copy of for resets.
_REMEMBERED_NUMBERS = 4096
# The methods that build a prior's distribution: a closed form written for a
# class holds for a subclass only while it keeps them (builds_distribution_as).
_DISTRIBUTION_METHODS = ("forward", "elementwise")

PriorLike = "Prior | Distribution | Callable[[torch.Size], Distribution]"

_T = TypeVar("_T")

# Set while a computation reads float32 copies of priors' hyperparameters whose
# stored values were checked just before (priors_in_full_precision).
_READING_CHECKED_COPIES: ContextVar[bool] = ContextVar(
    "pyrolite_prior_copies_checked", default=False
)


class _FiniteReal(constraints.Constraint):
    """Finite real numbers (``constraints.real`` lets infinities through)."""

    def check(self, value: Tensor) -> Tensor:
        return torch.isfinite(value)

    def __repr__(self) -> str:
        return "finite"


class _FinitePositive(constraints.Constraint):
    """Positive finite numbers (``constraints.positive`` lets infinity through)."""

    def check(self, value: Tensor) -> Tensor:
        return torch.isfinite(value) & (value > 0)

    def __repr__(self) -> str:
        return "positive and finite"


class _UnitOpen(constraints.Constraint):
    """Numbers strictly between 0 and 1."""

    def check(self, value: Tensor) -> Tensor:
        return (value > 0) & (value < 1)

    def __repr__(self) -> str:
        return "in (0, 1)"


_finite_real = _FiniteReal()
_finite_positive = _FinitePositive()
_unit_open = _UnitOpen()


def _satisfies(constraint: constraints.Constraint, value: Tensor) -> bool:
    """Whether every element of ``value`` satisfies ``constraint``."""
    return readable_all(constraint.check(value))  # type: ignore[no-untyped-call]


def _broadcast_shape(*shapes: torch.Size) -> torch.Size:
    """``torch.broadcast_shapes``, typed."""
    result: torch.Size = torch.broadcast_shapes(*shapes)  # type: ignore[no-untyped-call]
    return result


def _hyperparameter(
    value: float | Tensor,
    constraint: constraints.Constraint | None,
    what: str,
    like: Tensor | None = None,
) -> Tensor:
    """``value`` as a fresh tensor, checked by ``constraint`` (``None``: any).

    A floating tensor keeps its dtype (a float64 scale of 0.7 stays 0.7, and
    1e-50 stays positive); anything else takes the default dtype. With
    ``like`` (the buffer a new value replaces) it takes ``like``'s dtype
    before it is checked, on its own device (a value given to a prior on the
    meta device is checked, and kept for ``reset_parameters``); the caller
    moves it to ``like``'s device.
    """
    if isinstance(value, str | bytes | bool) or value is None:
        raise TypeError(f"{what} must be a number or a tensor, got {value!r}")
    _refuse_trainable(value, what)
    dtype = (
        value.dtype
        if isinstance(value, Tensor) and value.is_floating_point()
        else torch.get_default_dtype()
    )
    # Numbers become CPU tensors even under a ``torch.device("meta")`` context,
    # so that the prior keeps its values for ``reset_parameters`` after
    # ``to_empty``; the layer moves its copy to the posterior's device.
    device = value.device if isinstance(value, Tensor) else torch.device("cpu")
    if like is not None:
        dtype = like.dtype
    try:
        tensor = torch.as_tensor(value, dtype=dtype, device=device).detach().clone()
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"{what} must be a number or a tensor, got {type(value).__name__} ({error})"
        ) from error
    if constraint is not None and not _satisfies(constraint, tensor):
        shown = value.tolist() if isinstance(value, Tensor) else value
        raise ValueError(f"{what} must be {constraint!r}, got {shown!r}")
    return tensor


def _refuse_trainable(value: object, what: str) -> None:
    """Refuse a hyperparameter that would train or be drawn.

    A prior keeps a detached copy of a tensor (a buffer), so gradients would
    never reach a tensor that requires grad. Pyro's declarations of a module
    attribute, ``PyroParam`` (a learned value) and ``PyroSample`` (a random
    one), the idiom of a network made a Pyro module by ``to_pyro_module_``,
    are not hyperparameters either: the library's KL and guide take a prior
    of fixed buffers.
    """
    if isinstance(value, PyroParam):
        raise ValueError(
            f"{what} cannot be a PyroParam: a prior's hyperparameters are fixed "
            "buffers (LearnedNormalPrior's log_scale, a learned parameter "
            "already), not Pyro parameters. For a prior scale learned with the "
            "network use bnn.LearnedNormalPrior (its log_scale is in "
            "model.parameters() and trained by Pyro's SVI as well); for a fixed "
            "prior assign a tensor or a number"
        )
    if isinstance(value, PyroSample):
        raise ValueError(
            f"{what} cannot be a PyroSample: a prior's hyperparameters are fixed "
            "buffers, and a random hyperparameter (a hierarchical prior) has no "
            "site in the network's guide or KL. Integrate it out into the prior: "
            "a Normal whose variance is inverse-gamma distributed is "
            "bnn.StudentTPrior, a Normal scale of two values is "
            "bnn.ScaleMixtureNormalPrior; or learn the scale with "
            "bnn.LearnedNormalPrior (empirical Bayes)"
        )
    if isinstance(value, Tensor):
        _refuse_requires_grad(
            value,
            what,
            why="a prior keeps a detached copy of its hyperparameters (buffers): "
            "no gradient would reach that tensor, and it would never train",
            fixed="pass the tensor detached (tensor.detach())",
        )


def _refuse_requires_grad(value: Tensor, what: str, why: str, fixed: str) -> None:
    """Refuse a prior's tensor that requires grad: a prior's values do not train.

    Args:
        value: the tensor.
        what: names it, as the message's subject.
        why: what would become of that tensor.
        fixed: how to give a fixed value instead.

    Raises:
        ValueError: if ``value`` requires grad.
    """
    if value.requires_grad:
        raise ValueError(
            f"{what} is a tensor that requires grad, but {why}. For a prior scale "
            "learned with the network use bnn.LearnedNormalPrior (its log_scale is "
            f"in model.parameters()); for a fixed prior {fixed}"
        )


def _positive(value: float | Tensor, what: str) -> Tensor:
    return _hyperparameter(value, _finite_positive, what)


def _finite(value: float | Tensor, what: str) -> Tensor:
    return _hyperparameter(value, _finite_real, what)


def _is_dependent(constraint: constraints.Constraint) -> bool:
    """``constraints.is_dependent``, typed."""
    return bool(constraints.is_dependent(constraint))  # type: ignore[no-untyped-call]


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` (without growing it)."""
    if len(shape) > len(target):
        return False
    return all(
        size in (1, wanted)
        for size, wanted in zip(reversed(shape), reversed(target), strict=False)
    )


_D = TypeVar("_D", bound=Distribution)


def _with_own_memory(distribution: _D, prior: nn.Module) -> _D:
    """``distribution`` with copies of its tensors that are ``prior``'s buffers.

    Changes the (fresh) distribution in place, nested ones (a mixture's
    components) too, and returns it.
    """
    buffers = storage_names(prior.named_buffers())
    if not buffers:
        return distribution
    for held in held_tensors(distribution):
        shared = storage_address(held.tensor) in buffers
        if shared and isinstance(held.holder, Distribution):
            setattr(held.holder, held.name, held.tensor.clone())
    return distribution


def _independent(base: Distribution, shape: torch.Size) -> TorchDistributionMixin:
    """Expand an elementwise ``base`` to ``shape`` and declare all of it event."""
    if not isinstance(base, TorchDistributionMixin):
        raise TypeError(
            f"prior distribution must be a pyro.distributions distribution, got "
            f"{type(base).__name__}"
        )
    batch = base.batch_shape
    if batch != shape:
        base = base.expand(shape)
    result: TorchDistributionMixin = base.to_event(len(shape))
    return result


# The key under which a prior's state dict records its family.
_FAMILY = "pyrolite_bnn.prior_family"


class Prior(DeclaresScales, RefusesUnwrittenTensors, RecordsInState):
    """Base class of priors: ``prior(shape)`` returns the prior of a tensor.

    Subclasses implement :meth:`elementwise`, the prior of one scalar weight
    (batch shape ``()`` or broadcastable to the weight's shape); the base class
    expands it to the requested shape and makes every dimension an event
    dimension, as a Pyro sample site for the whole tensor needs.

    Every hyperparameter may be a tensor that broadcasts to the weight's shape
    (one prior scale per weight, per row, ...). It is copied: a tensor that
    requires grad is refused with a ``ValueError``, as no gradient would reach
    it (:class:`LearnedNormalPrior` learns a prior scale). Hyperparameters that
    would broadcast to a *larger* shape are refused with a ``ValueError`` naming
    both shapes. Subclasses list their buffers and constraints in
    :meth:`hyperparameter_constraints`; a ``load_state_dict`` that would put an
    invalid value (a negative scale, a NaN) into one of them fails with an error
    naming the buffer, and loads nothing into the prior. So does one of a
    state saved from a prior of another :meth:`family` (recorded with the
    state dict): the same keys hold other hyperparameters there.

    :meth:`reset_parameters` returns every hyperparameter to the value it was
    built with, as ``torch.nn`` layers re-initialise after ``to_empty``. Until
    a reset or a load writes them, a prior whose hyperparameters ``to_empty``
    left without values is refused where it is used (:meth:`forward`, the
    loss's KL) with a ``ValueError`` naming the tensor
    (:meth:`check_written`).
    A prior with a learned scale declares its unconstrained tensor
    (:meth:`scale_parameter_names`), which keeps weight decay off it
    (:func:`~pyrolite_bnn.decay.decay_groups`).

    A hyperparameter may be set after construction by assignment
    (``prior.loc = posterior.loc.detach()``, the update of continual learning):
    the prior keeps a copy of the value (never the tensor itself, which would
    go on moving with it), in the buffer's dtype and on its device, checked as
    the constructor checks it: its constraint, and, once a layer has declared
    the prior for a random variable, that it broadcasts to the variable's
    shape. An invalid value raises and leaves the prior unchanged. As with
    torch's buffers, :meth:`reset_parameters` then returns to the assigned
    value.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> layer = bnn.VILinear(3, 2)
        >>> posterior_mean = layer.posterior["weight"].loc.detach()
        >>> layer.prior["weight"].loc = posterior_mean
        >>> layer.prior["weight"]
        NormalPrior(loc=tensor of shape (2, 3), scale=1)
        >>> layer.prior["weight"].loc.data_ptr() == posterior_mean.data_ptr()
        False
    """

    # The shape and unit layout of the random variable a layer declared the
    # prior for (declare_for); None until then (class default: a prior pickled
    # before it existed).
    _variable: tuple[torch.Size, UnitLayout] | None = None

    def __init__(self) -> None:
        super().__init__()
        # Hyperparameter name -> a CPU copy of its value at registration, and
        # the names whose value was never known (registered on the meta device).
        # Known values larger than _REMEMBERED_NUMBERS are in neither: left on
        # resets.
        self._initial_values: dict[str, Tensor] = {}
        self._unknown_values: set[str] = set()

    def __setattr__(self, name: str, value: Any) -> None:
        """Assignment; a hyperparameter (buffer) is copied and checked first.

        Pyro's declarations (``PyroParam``, ``PyroSample``) are refused for
        any hyperparameter: a buffer, a parameter (``LearnedNormalPrior``'s
        ``log_scale``) or a name the class defines (``LearnedNormalPrior``'s
        ``scale()``), which Pyro would replace or shadow unseen; the prior is
        left unchanged. ``load_state_dict(..., assign=True)`` assigns as torch
        does (its values were checked by :meth:`_load_from_state_dict`).
        """
        if isinstance(value, PyroParam | PyroSample) and self._is_hyperparameter(name):
            _refuse_trainable(value, f"{type(self).__name__} {name}")
        buffers = self.__dict__.get("_buffers", {})
        if name in buffers and not self.__dict__.get("_loading", False):
            self._assign_hyperparameter(name, value, buffers[name])
        else:
            super().__setattr__(name, value)

    def _is_hyperparameter(self, name: str) -> bool:
        """Whether ``name`` is a hyperparameter or a name the class defines."""
        tables = ("_buffers", "_parameters")
        return any(name in self.__dict__.get(table, ()) for table in tables) or (
            hasattr(type(self), name)
        )

    def _assign_hyperparameter(
        self, name: str, value: Any, current: Tensor | None
    ) -> None:
        """Set the buffer ``name`` to a checked copy of ``value``; else raise."""
        what = f"{type(self).__name__} {name}"
        constraint = self.hyperparameter_constraints().get(name)
        checked = _hyperparameter(value, constraint, what, like=current)
        tensor = checked if current is None else checked.to(current.device)
        kept = (
            dict(self.__dict__.get("_initial_values", {})),
            set(self.__dict__.get("_unknown_values", ())),
        )
        super().__setattr__(name, tensor)  # torch's (reset_parameters' value too)
        if tensor.is_meta and not checked.is_meta:  # the value is known: keep it
            self._remember(name, checked)
        try:
            self._check_hyperparameters()
        except ValueError:
            self._buffers[name] = current
            if "_initial_values" in self.__dict__:
                self._initial_values, self._unknown_values = kept
            raise

    def _check_hyperparameters(self) -> None:
        """Check the hyperparameters against each other and the declared variable.

        Raises:
            ValueError: if they do not broadcast together, or not to the shape
                of the random variable the prior is declared for.
        """
        if self._variable is not None:
            self._check_declaration(*self._variable)
            return
        try:
            self.hyperparameter_shape()  # builds the distribution: checks it
        except NotImplementedError:  # no elementwise form
            pass
        except RuntimeError as error:  # torch's broadcasting error
            raise ValueError(
                f"{type(self).__name__} hyperparameters do not fit together: {error}"
            ) from error

    def register_buffer(
        self, name: str, tensor: Tensor | None, persistent: bool = True
    ) -> None:
        """``nn.Module.register_buffer``; also remembers the value for resets."""
        super().register_buffer(name, tensor, persistent)
        self._remember(name, tensor)

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        """``nn.Module.register_parameter``; also remembers the value for resets."""
        super().register_parameter(name, param)
        self._remember(name, param)

    def _remember(self, name: str, value: Tensor | None) -> None:
        if "_initial_values" not in self.__dict__:
            return  # registered before Prior.__init__ ran
        self._initial_values.pop(name, None)
        self._unknown_values.discard(name)
        if value is None:
            return
        if value.is_meta:  # never had a value, whatever its size
            self._unknown_values.add(name)
        elif value.numel() <= _REMEMBERED_NUMBERS:
            self._initial_values[name] = value.detach().to("cpu", copy=True)

    def reset_parameters(self) -> None:
        """Return every hyperparameter to the value the prior was built with.

        The counterpart of ``torch.nn`` layers' ``reset_parameters``: after
        ``module.to_empty(device=...)`` of a model built on the meta device
        (uninitialised memory) it restores the priors; a learned prior scale
        returns to its initial value. Hyperparameters larger than 4096 numbers
        are not kept and are left as they are (load a ``state_dict`` after
        ``to_empty`` instead).

        Raises:
            ValueError: a hyperparameter built from a tensor on the meta device
                (its value was never known) has been materialised, e.g. by
                ``to_empty``: load a ``state_dict`` instead.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> with torch.device("meta"):
            ...     layer = bnn.VILinear(3, 2, prior=bnn.NormalPrior(0.0, 0.5))
            >>> layer = layer.to_empty(device="cpu")
            >>> layer.prior["weight"].reset_parameters()
            >>> layer.prior["weight"]
            NormalPrior(loc=0, scale=0.5)
        """
        unknown = sorted(  # still on meta: nothing to restore yet
            name
            for name in getattr(self, "_unknown_values", ())
            if not getattr(self, name).is_meta
        )
        if unknown:
            raise ValueError(
                f"{type(self).__name__} hyperparameters {unknown} were built on the "
                "meta device, so their values are unknown: build the prior from "
                "numbers or CPU tensors, or load a state_dict after to_empty"
            )
        with torch.no_grad():
            for name, value in getattr(self, "_initial_values", {}).items():
                current: Tensor = getattr(self, name)
                current.copy_(value.expand_as(current))

    def check_values(self) -> None:
        """Refuse hyperparameter buffers outside their constraints, where they are used.

        The layers call it where the prior is used (the loss's KL, the Pyro
        model), with validation on (:func:`pyrolite_bnn.enable_validation`):
        after ``to_empty`` or ``torch.nn.utils.skip_init`` without
        :meth:`reset_parameters` the buffers hold uninitialised memory, and a
        negative scale gave the KL of its absolute value, silently. Each
        buffer is read once per value: one unchanged since it was last
        checked (the same memory at the same version) is not read again, so
        a training step pays no device synchronisation for it. Values that
        cannot be read (the meta device, under ``torch.func`` transforms or
        ``torch.compile``) count as valid, and so do the ``float32`` copies
        of checked values that :func:`priors_in_full_precision` hands a
        computation.

        Raises:
            ValueError: naming the buffer, its constraint and the remedy.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> prior = bnn.NormalPrior(0.0, 1.0)
            >>> with torch.no_grad():
            ...     _ = prior.scale.fill_(-3.0)  # as uninitialised memory may be
            >>> prior.check_values()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: NormalPrior buffer 'scale' must be positive and finite, ...
        """
        if torch.compiler.is_compiling() or _READING_CHECKED_COPIES.get():
            return
        checked: dict[str, tuple[int, int]] = self.__dict__.setdefault(
            "_checked_values", {}
        )
        for name, constraint in self.hyperparameter_constraints().items():
            value = self._buffers.get(name)
            if value is None or value.is_meta:
                continue
            try:
                mark = (value.data_ptr(), value._version)
            except RuntimeError:  # no memory of its own (torch.func wrappers)
                continue
            if checked.get(name) == mark:
                continue
            if not _satisfies(constraint, value):
                shown = value.tolist() if value.numel() <= 4 else "other values"
                raise ValueError(
                    f"{type(self).__name__} buffer {name!r} must be {constraint!r}, "
                    f"it holds {shown}: after to_empty or skip_init a prior holds "
                    "uninitialised memory: call reset_parameters() on the model's "
                    "modules first, or load a state_dict (a hyperparameter of more "
                    "than 4096 numbers is not kept for resets)"
                )
            checked[name] = mark

    def elementwise(self) -> TorchDistributionMixin:
        """Distribution of a single weight built from the buffers."""
        raise NotImplementedError

    def family(self) -> str:
        """Name of the prior family, as checkpoints record it (the class name).

        Example:
            >>> import pyrolite_bnn as bnn
            >>> bnn.LaplacePrior().family()
            'LaplacePrior'
        """
        return type(self).__name__

    def _hyperparameter_family(self) -> str:
        """What the hyperparameters' values mean, as state dicts record it.

        The distribution family they parameterise: the same for the priors
        that write it another way (``NormalPrior``, a subclass of it,
        ``DistributionPrior`` of a ``Normal``: ``loc`` and ``scale`` of a
        Normal), so that a state of one loads into the other. Here the class
        name (:meth:`family`).
        """
        return self.family()

    def hyperparameter_constraints(self) -> dict[str, constraints.Constraint]:
        """Buffer name -> constraint its values must satisfy (checked on loading)."""
        return {}

    def hyperparameter_shape(self) -> torch.Size:
        """Broadcast shape of the hyperparameters: the batch shape of one weight."""
        return self.elementwise().batch_shape

    def check_shape(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` unless the hyperparameters broadcast to ``shape``.

        Args:
            shape: shape of the weight tensor the prior is declared for.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> prior = bnn.NormalPrior(0.0, torch.ones(3, 1))
            >>> prior.check_shape((3, 4))
            >>> try:
            ...     prior.check_shape((3,))
            ... except ValueError as error:
            ...     print(str(error).split(" do not")[0])
            NormalPrior hyperparameters of shape (3, 1)
        """
        try:
            batch = self.hyperparameter_shape()
        except NotImplementedError:  # no elementwise form: building it checks it
            self(shape)
            return
        _check_broadcast(self, batch, torch.Size(shape))

    def declare_for(self, shape: Sequence[int], units: UnitLayout) -> None:
        """Take the prior's place on a random variable (a layer declaring it).

        :meth:`~pyrolite_bnn.VIModule.declare_random_variable` calls it once,
        on the layer's own copy of the prior. The default checks the shape
        (:meth:`check_shape`); a prior whose hyperparameters depend on the
        variable, such as one per output unit, sets them up here first.

        The prior keeps the variable's shape and layout: hyperparameters
        assigned later are checked against them. A one-dimensional
        hyperparameter with one value per output unit that broadcasts along
        the variable's last dimension instead (a square ``VILinear``: one value
        per input column) warns, naming the shape that gives one value per
        unit (``(out, 1)``); one that does not broadcast is refused with it.

        Args:
            shape: shape of the weight tensor.
            units: where its output units lie, as the layer declares them.

        Example:
            >>> import pyrolite_bnn as bnn
            >>> from pyrolite_bnn.variables import UnitLayout
            >>> prior = bnn.LearnedNormalPrior(per="unit")
            >>> prior.declare_for((4, 3), UnitLayout())
            >>> prior.log_scale.shape
            torch.Size([4, 1])
        """
        size = torch.Size(shape)
        self._check_declaration(size, units)
        self._variable = (size, units)

    def _check_declaration(self, shape: torch.Size, units: UnitLayout) -> None:
        """:meth:`check_shape`, with the per-unit hint and warning of declare_for."""
        try:
            batch: torch.Size | None = self.hyperparameter_shape()
        except NotImplementedError:  # no elementwise form: check_shape builds it
            batch = None
        per_unit = None if batch is None else _per_unit_shape(batch, shape, units)
        if per_unit is None:
            self.check_shape(shape)
            return
        assert batch is not None
        hint = f"for one value per output unit give them shape {tuple(per_unit)}"
        _check_broadcast(self, batch, shape, hint)
        self.check_shape(shape)
        per_last = (1,) * (len(shape) - 1) + (shape[-1],)
        warn_at_caller(
            f"{type(self).__name__} hyperparameters of shape {tuple(batch)} "
            "broadcast along the last dimension of the random variable's shape "
            f"{tuple(shape)} (torch broadcasting), not along its output units; "
            f"{hint}, or shape {per_last} to keep one value per index of the "
            "last dimension (and no warning)"
        )

    def check_support(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` unless the prior covers every real weight.

        See :func:`check_real_support`; called by the layers for weights whose
        posterior is not a point mass.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> bnn.LaplacePrior().check_support((3, 2))
        """
        if any(t.is_meta for t in self.buffers()):
            return  # no values yet (built for torch's to_empty); nothing to check
        check_real_support(self(shape), self.family())

    def forward(self, shape: Sequence[int]) -> TorchDistributionMixin:
        """Prior of a weight tensor of the given ``shape`` (all dims are event).

        Under Pyro the distribution holds copies of this prior's buffers: an
        autoguide initialised at the prior's mean (``init_to_mean``) makes its
        parameter from the tensor it gets, and Pyro's parameter store keeps a
        contiguous tensor as it is, so the prior's ``loc`` would have become
        the guide's parameter and moved with training (a MOPED prior, a bias
        of one weight).

        Raises:
            ValueError: after ``to_empty``, while a hyperparameter holds no
                values (:meth:`check_written`).
        """
        self.check_written()
        if is_validation_enabled():
            self.check_values()
        size = torch.Size(shape)
        base = self.elementwise()
        if pyro_wrapped():
            base = _with_own_memory(base, self)
        _check_broadcast(self, base.batch_shape, size)
        return _independent(base, size)

    def distribution_of(
        self, shape: Sequence[int], module: nn.Module
    ) -> TorchDistributionMixin:
        """Prior of the random variable of ``shape`` that ``module`` declares.

        The layers take their priors' distributions through it
        (:meth:`~pyrolite_bnn.VIModule.prior_distribution`: the loss, the Pyro
        model), so that a prior may check what it builds against the module
        using it; :class:`CallablePrior` does. The default is ``self(shape)``.

        Args:
            shape: shape of the weight tensor.
            module: the layer that declares the random variable.

        Example:
            >>> import pyrolite_bnn as bnn
            >>> layer = bnn.VILinear(3, 2)
            >>> layer.prior["weight"].distribution_of((2, 3), layer).event_shape
            torch.Size([2, 3])
        """
        distribution: TorchDistributionMixin = self(shape)
        return distribution

    def graph_key(self, shape: Sequence[int]) -> Hashable:
        """What a compiled loss graph froze of ``self(shape)``, besides tensors.

        A compiled loss (``KullbackLeiblerLoss(compile=True)``) records the
        operations of one call; the prior's buffers and parameters are the
        graph's inputs (read live), but the Python around them (a function
        called, numbers made into tensors) is fixed in the graph. The graph is
        reused only while the key of every prior of the network is unchanged.
        The library's priors read only their buffers: ``()``; see
        :meth:`CallablePrior.graph_key`.

        Example:
            >>> import pyrolite_bnn as bnn
            >>> bnn.NormalPrior(0.0, 2.0).graph_key((3, 2))
            ()
        """
        return ()

    def kl_from_normal(self, loc: Tensor, scale: Tensor) -> Tensor | None:
        """``KL(N(loc, scale^2) || prior)`` summed over the tensor, if cheap.

        A fast path for the default mean-field Normal posterior; ``None`` (the
        default) means "use ``torch.distributions.kl_divergence``" of the
        posterior and this prior's distribution (Monte Carlo where none is
        registered). An implementation returns a scalar, and ``None`` for a
        subclass that builds another distribution than the closed form was
        written for (:meth:`builds_distribution_as`).
        """
        return None

    def builds_distribution_as(self, prior_class: type[Prior]) -> bool:
        """Whether this prior's distribution is built as ``prior_class`` builds it.

        A closed form written for ``prior_class`` (its :meth:`kl_from_normal`) holds
        for this prior only then: an instance of ``prior_class`` whose class overrides
        neither :meth:`forward` nor :meth:`elementwise`. ``PyroModule[...]`` of
        a prior (what ``pyro.nn.module.to_pyro_module_`` makes of a network's
        priors) keeps them; a subclass whose ``elementwise`` returns another
        distribution does not, and its KL is that of its own distribution.

        Args:
            prior_class: the prior class a closed form was written for.

        Example:
            >>> import pyro.distributions as dist, pyrolite_bnn as bnn
            >>> class WideNormal(bnn.NormalPrior):
            ...     def elementwise(self):
            ...         return dist.Normal(self.loc, 3.0 * self.scale)
            >>> WideNormal().builds_distribution_as(bnn.NormalPrior)
            False
            >>> bnn.NormalPrior().builds_distribution_as(bnn.NormalPrior)
            True
        """
        return keeps_methods(self, prior_class, _DISTRIBUTION_METHODS)

    def closed_form_group(self, loc: Tensor) -> Hashable | None:
        """A key shared by priors whose KLs can be summed in one computation.

        The KLs from mean-field Normal posteriors (with means like ``loc``) of
        every weight tensor whose prior returns the same key are then taken
        together by :meth:`kl_from_normals` (few large tensor operations in
        place of a few small ones per tensor). ``None`` (the default): each
        tensor's KL is taken on its own.
        """
        return None

    def kl_from_normals(self, moments: Sequence[NormalMoments]) -> Tensor:
        """The sum of :meth:`kl_from_normal` over several weight tensors.

        Only called for tensors whose priors share this prior's
        :meth:`closed_form_group` key.
        """
        terms = [self.kl_from_normal(loc, scale) for loc, scale in moments]
        if any(term is None for term in terms):
            raise NotImplementedError(
                f"{type(self).__name__} has a closed_form_group but no closed form"
            )
        return torch.stack(cast(list[Tensor], terms)).sum()

    def state_record(self) -> tuple[str, str] | None:
        """The family the hyperparameters parameterise, recorded with the state."""
        return (_FAMILY, self._hyperparameter_family())

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Check the incoming hyperparameters before copying any of them.

        Hyperparameters recorded as another :meth:`family`'s are refused
        (a ``LaplacePrior``'s ``scale`` is no ``NormalPrior``'s standard
        deviation, under the same key), as are values outside their
        constraints: the load fails with a ``RuntimeError`` naming the buffer,
        and nothing is loaded into the prior. A state without the family's
        record (saved before it existed) is not compared, and one recorded
        under this prior's class name (as records were first written) loads.
        A value saved from a tensor that nothing wrote after ``to_empty``
        (:func:`~pyrolite_bnn._unwritten_tensors.holds_no_values`) is no
        value outside a constraint: it loads, and the prior refuses to be
        used until the tensor is written, saying the state held none for it
        (:meth:`check_written`).
        """
        saved = recorded(local_metadata, _FAMILY)
        held = [
            prefix + name
            for name in (*self._parameters, *self._buffers)
            if prefix + name in state_dict
        ]
        family = self._hyperparameter_family()
        # A record of this class's own name: a state saved while records
        # named classes (LearnedNormalPrior's before it recorded "Normal").
        if saved is not None and saved not in (family, type(self).__name__) and held:
            error_msgs.append(  # load_state_dict raises a RuntimeError
                f"prior {prefix[:-1]!r} is a {type(self).__name__} ({family}), the "
                f"state dict holds the hyperparameters of a {saved} prior "
                f"({', '.join(held)}), which mean "
                "other things: build the layer with the saved prior to load this "
                "state (or delete these keys from it, del state[key], and load "
                "with strict=False to keep this prior)"
            )
            return
        problems = []
        for name, constraint in self.hyperparameter_constraints().items():
            value = state_dict.get(prefix + name)
            if not isinstance(value, Tensor) or holds_no_values(value):
                continue  # a value saved unwritten: recorded, refused where read
            if not _satisfies(constraint, value):
                shown = value.tolist() if value.numel() <= 4 else tuple(value.shape)
                problems.append(
                    f"prior buffer {prefix + name!r} of {type(self).__name__} must "
                    f"be {constraint!r}, the state dict holds {shown!r}"
                )
        if problems:
            error_msgs.extend(problems)  # load_state_dict raises a RuntimeError
            return
        # load_state_dict(assign=True) assigns the checked values as torch does
        self.__dict__["_loading"] = True
        try:
            super()._load_from_state_dict(
                state_dict,
                prefix,
                local_metadata,
                strict,
                missing_keys,
                unexpected_keys,
                error_msgs,
            )
        finally:
            del self.__dict__["_loading"]


def _check_broadcast(
    prior: Prior, batch: torch.Size, shape: torch.Size, hint: str = ""
) -> None:
    """Refuse hyperparameters of shape ``batch`` for a variable of ``shape``."""
    if not _broadcasts_to(batch, shape):
        raise ValueError(
            f"{type(prior).__name__} hyperparameters of shape {tuple(batch)} do not "
            f"broadcast to the random variable's shape {tuple(shape)}; "
            + (f"{hint}; " if hint else "")
            + "give each random variable a prior of its own shape, e.g. "
            "prior={'weight': ..., 'bias': ...}"
        )


def _per_unit_shape(
    batch: torch.Size, shape: torch.Size, units: UnitLayout
) -> torch.Size | None:
    """The per-unit shape a one-dimensional ``batch`` plausibly meant, if any.

    ``batch`` ``(n,)`` for a variable of two or more dimensions with ``n``
    output units along a dimension other than the last (a ``VILinear``
    weight ``(n, in)``): torch broadcasts it along the last dimension, which
    is what was meant only where ``n`` is not the number of units. Grouped
    layouts have no such shape (their units span two dimensions): ``None``.
    """
    if len(batch) != 1 or len(shape) < 2 or units.groups != 1:
        return None
    if units.dim == len(shape) - 1 or batch[0] < 2 or batch[0] != shape[units.dim]:
        return None
    return units.per_unit_shape(shape)


def _normal_kl(
    prior: Prior, loc: Tensor, scale: Tensor, prior_loc: Tensor, prior_scale: Tensor
) -> Tensor:
    """``KL(N(loc, scale^2) || N(prior_loc, prior_scale^2))`` summed, as a tensor.

    ``prior_loc`` and ``prior_scale`` broadcast to the weight's shape, and
    gradients flow to them. See :func:`_normal_kl_terms` for the arrangement.
    """
    _check_broadcast(
        prior, _broadcast_shape(prior_loc.shape, prior_scale.shape), loc.shape
    )
    ratio = (scale / prior_scale).square()
    centred = (loc - prior_loc) / prior_scale
    return _normal_kl_terms(ratio, centred, 1.0)


def _normal_kl_terms(ratio: Tensor, centred: Tensor, precision: float) -> Tensor:
    """``1/2 sum[(v - 1) - log v + precision * c^2]``, ``v = sigma^2 / s^2``.

    Each weight's (non-negative) term is formed before the sum, and ``v - 1``
    before ``log v`` is taken from it: near the prior (``v ~ 1``) separate
    ``O(n)`` sums, or ``v - log v`` rounded near 1, cancel to a KL near 0 with
    an error growing with the number of weights (0.05 nats at a million
    weights of sigma = 1.001). ``log v`` of the same rounded ``v`` also
    cancels ``v``'s rounding to first order.
    """
    terms = (ratio - 1.0).sub_(ratio.log())
    if terms.shape == centred.shape:
        terms = terms.addcmul_(centred, centred, value=precision)
    else:  # a scale broadcast against the means
        terms = torch.addcmul(terms, centred, centred, value=precision)
    return terms.sum().mul(0.5)


# Weight tensors of at most this many numbers take their closed-form KL in a
# group (NormalPrior.closed_form_group), with these methods of NormalPrior.
_GROUPED_KL_UP_TO = 1 << 12
_NORMAL_KL_METHODS = ("kl_from_normal", "kl_from_normals")


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

    def hyperparameter_constraints(self) -> dict[str, constraints.Constraint]:
        """``loc`` finite, ``scale`` positive."""
        return {"loc": _finite_real, "scale": _finite_positive}

    def hyperparameter_shape(self) -> torch.Size:
        """Broadcast shape of ``loc`` and ``scale``."""
        return _broadcast_shape(self.loc.shape, self.scale.shape)

    def kl_from_normal(self, loc: Tensor, scale: Tensor) -> Tensor | None:
        """Closed form, summed over every weight.

        ``KL = 1/2 sum[sigma^2/s^2 - 1 - log(sigma^2/s^2) + (mu - m)^2/s^2]``
        for ``q = N(mu, sigma^2)``, prior ``N(m, s^2)``; ``m`` and ``s`` may be
        tensors that broadcast to the weight's shape. ``None`` for a subclass
        that builds another distribution (:meth:`builds_distribution_as`).
        """
        if not self.builds_distribution_as(NormalPrior):
            return None
        prior_scale = self.scale
        if (
            prior_scale.numel() == 1
            and prior_scale.device.type == "cpu"
            and not is_capturing()
            and _readable_as_floats(prior_scale, self.loc)
        ):
            # Constants as Python floats: fewer tiny tensor ops on the CPU (on an
            # accelerator, reading them would synchronise instead).
            s = float(prior_scale)
            if self.loc.numel() != 1:  # scalars broadcast to any weight
                _check_broadcast(
                    self, _broadcast_shape(self.loc.shape, prior_scale.shape), loc.shape
                )
                centred = loc - self.loc
            else:
                m = float(self.loc)
                centred = loc if m == 0.0 else loc - m
            ratio = scale.square()
            if s != 1.0:
                ratio = ratio.mul_(1.0 / (s * s))
            return _normal_kl_terms(ratio, centred, 1.0 / (s * s))
        return _normal_kl(self, loc, scale, self.loc, prior_scale)

    def closed_form_group(self, loc: Tensor) -> Hashable | None:
        """Scalar hyperparameters on the CPU: grouped by their values.

        The small such ``NormalPrior`` tensors of a network (the default
        prior) share one KL computation over their concatenated moments; for
        a big tensor, copying it costs more than the operations it saves. A
        subclass is grouped where the closed form holds for it
        (:meth:`builds_distribution_as`) and it keeps the methods the group
        computes with (``kl_from_normal``, ``kl_from_normals``):
        ``PyroModule[NormalPrior]``.
        """
        if (
            not self.builds_distribution_as(NormalPrior)
            or not keeps_methods(self, NormalPrior, _NORMAL_KL_METHODS)
            or loc.numel() > _GROUPED_KL_UP_TO
            or self.loc.numel() != 1
            or self.scale.numel() != 1
            or self.scale.device.type != "cpu"
            or is_capturing()
            or not _readable_as_floats(self.loc, self.scale)
        ):
            return None
        return (NormalPrior, float(self.loc), float(self.scale), loc.dtype, loc.device)

    def kl_from_normals(self, moments: Sequence[NormalMoments]) -> Tensor:
        """The closed form over the concatenated means and standard deviations."""
        locs = torch.cat([loc.reshape(-1) for loc, _ in moments])
        scales = torch.cat([scale.reshape(-1) for _, scale in moments])
        term = self.kl_from_normal(locs, scales)
        assert term is not None
        return term

    def _hyperparameter_family(self) -> str:
        return "Normal"  # loc, scale (, df) of a Normal: as a DistributionPrior

    def elementwise(self) -> TorchDistributionMixin:
        """Return ``Normal(loc, scale)``."""
        result: TorchDistributionMixin = dist.Normal(self.loc, self.scale)
        return result

    def extra_repr(self) -> str:
        """Constructor arguments."""
        return f"loc={_fmt(self.loc)}, scale={_fmt(self.scale)}"


def _readable_as_floats(*hyperparameters: Tensor) -> bool:
    """Whether hyperparameters may be read as Python floats (``float(t)``).

    Not under a ``torch.func`` transform (a wrapped tensor), and not where
    they require gradients: floats carry none (a subclass's scale computed
    from a parameter it learns).
    """
    return not any(
        is_wrapped(value) or value.requires_grad for value in hyperparameters
    )


class LearnedNormalPrior(Prior):
    """``Normal(loc, s^2)`` prior whose scale ``s`` is learned (empirical Bayes).

    The scale is a trainable parameter (``log_scale``, so ``s = exp(log_scale)``
    stays positive) in ``model.parameters()``: the optimiser that trains the
    posterior maximises the same ELBO over the prior scale, a type-II
    (empirical-Bayes) objective. Only the KL term depends on ``s``; for a
    mean-field Normal posterior ``N(mu, sigma^2)`` its optimum is, per group of
    weights sharing one scale,

    ``s^2 = mean over the group of (sigma^2 + (mu - loc)^2)``

    (:meth:`optimal_scale`). The KL stays closed-form and equals
    ``kl_divergence(q, Normal(loc, s)).sum()`` at the current scale; with other
    posteriors (autoguides, ``kl="mc"``) the Monte-Carlo ``log p(w)`` carries
    the gradient to ``s`` instead.

    Each random variable of a layer gets its own copy of the prior (weight and
    bias learn separate scales). An optimiser over ``model.parameters()``
    trains it (``bnn.fit`` does), and so does Pyro's ``SVI``: the network
    reports all of its parameters to Pyro, the prior scale included.

    Args:
        loc: prior mean (fixed; a buffer that broadcasts to the weight's shape).
        init_scale: initial prior standard deviation (positive).
        per: ``"layer"``: one scale per random variable (the layer's weight,
            its bias); ``"unit"``: one scale per output unit, where the layer
            declares its units (:class:`~pyrolite_bnn.variables.UnitLayout`): a
            row of a ``VILinear`` weight, an output channel of a ``VIConv2d``
            kernel and of a ``VIConvTranspose2d`` one (its weight is ``(in,
            out / groups, k...)``: grouped ones too), an embedding feature (a
            column of a ``VIEmbedding`` table), one bias entry. The per-unit
            shape is fixed when a layer declares the variable.

    Example:
        >>> import pyrolite_bnn as bnn
        >>> layer = bnn.VILinear(4, 3, prior=bnn.LearnedNormalPrior(per="unit"))
        >>> layer.prior["weight"]
        LearnedNormalPrior(loc=0, scale=tensor of shape (3, 1), per='unit')
        >>> layer.prior["weight"].log_scale.shape, layer.prior["bias"].scale().shape
        (torch.Size([3, 1]), torch.Size([3]))
        >>> sorted(n for n, _ in layer.named_parameters() if n.startswith("prior"))
        ['prior.bias.log_scale', 'prior.weight.log_scale']
        >>> per_unit = bnn.LearnedNormalPrior(per="unit")
        >>> up = bnn.VIConvTranspose2d(6, 4, 3, prior=per_unit)
        >>> up.prior["weight"].log_scale.shape  # one per output channel
        torch.Size([1, 4, 1, 1])
    """

    loc: Tensor
    log_scale: nn.Parameter
    # Set when a per-unit scale is declared for a variable: its unit layout
    # and shape (class defaults: a prior pickled before they existed).
    _units: UnitLayout | None = None
    _declared_shape: torch.Size = torch.Size()

    def __init__(
        self,
        loc: float | Tensor = 0.0,
        init_scale: float = 1.0,
        per: ScalePer = "layer",
    ) -> None:
        super().__init__()
        if per not in get_args(ScalePer):
            raise ValueError(f"per must be 'layer' or 'unit', got {per!r}")
        self.per = per
        self.register_buffer("loc", _finite(loc, "LearnedNormalPrior loc"))
        scale = _positive(init_scale, "LearnedNormalPrior init_scale")
        if scale.dim() != 0:
            raise ValueError(
                "LearnedNormalPrior init_scale must be a number, got a tensor of "
                f"shape {tuple(scale.shape)}"
            )
        self.log_scale = nn.Parameter(scale.log())

    def scale(self) -> Tensor:
        """Current prior standard deviation, ``exp(log_scale)``.

        Per unit, each unit's scale at its weights' positions: a tensor that
        broadcasts to the weight's shape.
        """
        scale = self.log_scale.exp()
        if self._units is None:
            return scale
        return self._units.spread(scale, self._declared_shape)

    def declare_for(self, shape: Sequence[int], units: UnitLayout) -> None:
        """Fix the per-unit scale's shape, then check that it broadcasts.

        With ``per="unit"`` the first declaration turns the scalar initial
        ``log_scale`` into one entry per output unit, of
        ``units.per_unit_shape(shape)`` (``(shape[0], 1, ..., 1)`` for units
        along the first dimension).

        Args:
            shape: shape of the weight tensor the prior is declared for.
            units: where its output units lie.
        """
        size = torch.Size(shape)
        if self.per == "unit" and self.log_scale.dim() == 0 and len(size) > 0:
            per_unit = units.per_unit_shape(size)
            self._units, self._declared_shape = units, size
            self.log_scale = nn.Parameter(
                self.log_scale.detach().expand(per_unit).clone()
            )
        super().declare_for(size, units)

    def scale_parameter_names(self) -> tuple[str, ...]:
        """``("log_scale",)``: the learned prior scale's logarithm.

        Example:
            >>> import pyrolite_bnn as bnn
            >>> bnn.LearnedNormalPrior().scale_parameter_names()
            ('log_scale',)
        """
        return ("log_scale",)

    def hyperparameter_constraints(self) -> dict[str, constraints.Constraint]:
        """``loc`` and ``log_scale`` finite."""
        return {"loc": _finite_real, "log_scale": _finite_real}

    def _hyperparameter_family(self) -> str:
        return "Normal"  # loc of a Normal (and log_scale, a key of its own)

    def hyperparameter_shape(self) -> torch.Size:
        """Broadcast shape of ``loc`` and the scale."""
        return _broadcast_shape(self.loc.shape, self.scale().shape)

    def elementwise(self) -> TorchDistributionMixin:
        """Return ``Normal(loc, exp(log_scale))``."""
        result: TorchDistributionMixin = dist.Normal(self.loc, self.scale())
        return result

    def kl_from_normal(self, loc: Tensor, scale: Tensor) -> Tensor | None:
        """Closed form at the current scale; differentiable in ``log_scale``.

        ``None`` for a subclass that builds another distribution
        (:meth:`~Prior.builds_distribution_as`).
        """
        if not self.builds_distribution_as(LearnedNormalPrior):
            return None
        return _normal_kl(self, loc, scale, self.loc, self.scale())

    def optimal_scale(self, loc: Tensor, scale: Tensor) -> Tensor:
        """The scale that minimises ``KL(N(loc, scale^2) || prior)``.

        ``sqrt(mean(scale^2 + (loc - prior loc)^2))`` over each group of weights
        sharing one prior scale: the ELBO's optimum for the current posterior.

        Args:
            loc: posterior means, the weight's shape.
            scale: posterior standard deviations, the weight's shape.

        Returns:
            A tensor of ``log_scale``'s shape.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> prior = bnn.LearnedNormalPrior()
            >>> prior.optimal_scale(torch.full((2, 3), 3.0), torch.full((2, 3), 4.0))
            tensor(5.)
        """
        _check_broadcast(self, self.hyperparameter_shape(), loc.shape)
        squares = scale.square() + (loc - self.loc).square()
        if self._units is None:
            sums = squares.sum_to_size(self.log_scale.shape)
        else:
            sums = self._units.sum_per_unit(squares)
        count = squares.numel() // max(1, sums.numel())
        return (sums / count).sqrt()

    def reset_to_optimum(self, loc: Tensor, scale: Tensor) -> None:
        """Set the scale to :meth:`optimal_scale` (no gradient recorded).

        Args:
            loc: posterior means, the weight's shape.
            scale: posterior standard deviations, the weight's shape.
        """
        with torch.no_grad():
            self.log_scale.copy_(self.optimal_scale(loc, scale).log())

    def extra_repr(self) -> str:
        """Initial arguments (the scale: its current value or per-unit shape)."""
        with torch.no_grad():
            shown = _fmt(self.log_scale.exp())
        return f"loc={_fmt(self.loc)}, scale={shown}, per={self.per!r}"


class LaplacePrior(Prior):
    """Independent ``Laplace(loc, scale)`` prior (sparsity-inducing).

    The KL to a Normal posterior has a closed form, registered with torch's
    ``kl_divergence``, which ``kl="auto"`` takes (``kl="mc"`` estimates it
    from the drawn weights).

    Args:
        loc: location.
        scale: scale (must be positive).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> layer = bnn.VILinear(3, 2, prior=bnn.LaplacePrior(scale=0.5))
        >>> layer.prior.weight
        LaplacePrior(loc=0, scale=0.5)
        >>> layer(torch.randn(4, 3)).shape
        torch.Size([10, 4, 2])
    """

    loc: Tensor
    scale: Tensor

    def __init__(self, loc: float | Tensor = 0.0, scale: float | Tensor = 1.0) -> None:
        super().__init__()
        self.register_buffer("loc", _finite(loc, "LaplacePrior loc"))
        self.register_buffer("scale", _positive(scale, "LaplacePrior scale"))

    def hyperparameter_constraints(self) -> dict[str, constraints.Constraint]:
        """``loc`` finite, ``scale`` positive."""
        return {"loc": _finite_real, "scale": _finite_positive}

    def _hyperparameter_family(self) -> str:
        return "Laplace"  # loc, scale (, df) of a Laplace: as a DistributionPrior

    def elementwise(self) -> TorchDistributionMixin:
        """Return ``Laplace(loc, scale)``."""
        result: TorchDistributionMixin = dist.Laplace(self.loc, self.scale)
        return result

    def extra_repr(self) -> str:
        """Constructor arguments."""
        return f"loc={_fmt(self.loc)}, scale={_fmt(self.scale)}"


class StudentTPrior(Prior):
    """Independent Student-t prior (heavy tails).

    Estimated from the drawn weights in the KL, as :class:`LaplacePrior`.

    Args:
        df: degrees of freedom (positive).
        loc: location.
        scale: scale (positive).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> prior = bnn.StudentTPrior(df=4.0, scale=0.3)
        >>> prior
        StudentTPrior(df=4, loc=0, scale=0.3)
        >>> prior(torch.Size([2, 3])).event_shape
        torch.Size([2, 3])
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

    def hyperparameter_constraints(self) -> dict[str, constraints.Constraint]:
        """``df`` and ``scale`` positive, ``loc`` finite."""
        return {"df": _finite_positive, "loc": _finite_real, "scale": _finite_positive}

    def _hyperparameter_family(self) -> str:
        return "StudentT"  # loc, scale (, df) of a StudentT: as a DistributionPrior

    def elementwise(self) -> TorchDistributionMixin:
        """Return ``StudentT(df, loc, scale)``."""
        result: TorchDistributionMixin = dist.StudentT(self.df, self.loc, self.scale)
        return result

    def extra_repr(self) -> str:
        """Constructor arguments."""
        return f"df={_fmt(self.df)}, loc={_fmt(self.loc)}, scale={_fmt(self.scale)}"


class _NormalScaleMixture(dist.MixtureSameFamily):  # type: ignore[misc]
    """A mixture of Normals whose support reads as the real line.

    torch gives mixtures a ``MixtureSameFamilyConstraint``, which Pyro's
    autoguides and NUTS cannot transform to (``NotImplementedError``); the
    support of Normal components is ``real`` and says so.
    """

    @constraints.dependent_property
    def support(self) -> constraints.Constraint:
        """The real line."""
        return constraints.real


class ScaleMixtureNormalPrior(Prior):
    """Zero-mean scale mixture of two Normals (Blundell et al., 2015).

    ``p(w) = pi * N(w; 0, scale1^2) + (1 - pi) * N(w; 0, scale2^2)``; the KL to it
    has no closed form, so it is estimated by Monte Carlo.

    Args:
        pi: weight of the first component, in ``(0, 1)``.
        scale1: standard deviation of the first (wide) component.
        scale2: standard deviation of the second (narrow) component.

    Each argument may be a tensor that broadcasts to the weight's shape. The
    buffers hold the two components along a last dimension of size 2:
    ``logits`` ``(*pi.shape, 2)`` and ``scales`` ``(*scale_shape, 2)``.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> bnn.ScaleMixtureNormalPrior(0.25, torch.ones(3, 1), 0.1)((3, 2))
        Independent(MixtureSameFamily(
          Categorical(logits: torch.Size([3, 2, 2])),
          Normal(loc: torch.Size([3, 2, 2]), scale: torch.Size([3, 2, 2]))), 2)
    """

    logits: Tensor
    scales: Tensor

    def __init__(
        self,
        pi: float | Tensor = 0.5,
        scale1: float | Tensor = 1.0,
        scale2: float | Tensor = _NARROW_SCALE,
    ) -> None:
        super().__init__()
        weight = _hyperparameter(pi, _unit_open, "ScaleMixtureNormalPrior pi")
        first = _positive(scale1, "ScaleMixtureNormalPrior scale1")
        second = _positive(scale2, "ScaleMixtureNormalPrior scale2")
        both = _broadcast_shape(first.shape, second.shape)
        first, second = first.expand(both), second.expand(both)
        logits = torch.stack([weight.log(), torch.log1p(-weight)], dim=-1)
        self.register_buffer("logits", logits)
        self.register_buffer("scales", torch.stack([first, second], dim=-1))

    def hyperparameter_constraints(self) -> dict[str, constraints.Constraint]:
        """``logits`` finite, ``scales`` positive."""
        return {"logits": _finite_real, "scales": _finite_positive}

    def hyperparameter_shape(self) -> torch.Size:
        """Broadcast shape of ``pi`` and the scales."""
        return _broadcast_shape(self.logits.shape[:-1], self.scales.shape[:-1])

    def elementwise(self) -> TorchDistributionMixin:
        """Return the two-component mixture (its support: the real line)."""
        result: TorchDistributionMixin = _NormalScaleMixture(
            dist.Categorical(logits=self.logits),
            dist.Normal(torch.zeros_like(self.scales), self.scales),
        )
        return result

    def extra_repr(self) -> str:
        """Constructor arguments."""
        pi = _fmt(self.logits.softmax(-1)[..., 0], ".3g")
        first, second = _fmt(self.scales[..., 0]), _fmt(self.scales[..., 1])
        return f"pi={pi}, scale1={first}, scale2={second}"


def check_real_support(distribution: Distribution, what: str) -> None:
    """Refuse a prior whose support is not the whole real line.

    Variational posteriors over all real weights (the mean-field Normal, the
    low-rank and flow guides) have an infinite KL divergence from a prior with
    bounded support (``Uniform``, ``Gamma``, ``Beta``): every loss would be
    ``inf``. Only a point mass (MAP: ``bnn.PointMass()``, ``AutoDelta``)
    goes with such a prior; the layers check this when they declare a weight.

    Raises:
        ValueError: for a support other than the real line (per element).

    Example:
        >>> import torch
        >>> check_real_support(torch.distributions.Laplace(0.0, 1.0), "Laplace")
        >>> check_real_support(torch.distributions.Gamma(2.0, 1.0), "Gamma")
        Traceback (most recent call last):
        ...
        ValueError: prior Gamma has support ..., not the whole real line: ...
    """
    support: Any = distribution.support
    while hasattr(support, "base_constraint"):  # independent, mixture, ...
        support = support.base_constraint
    if type(support) is not type(constraints.real):
        raise ValueError(
            f"prior {what} has support {distribution.support}, not the whole real "
            "line: a posterior over all real weights (the mean-field Normal, "
            "low-rank and flow guides) has an infinite KL divergence from it (the "
            "loss would be inf). Use a prior on the real line (Normal, Laplace, "
            "StudentT, Cauchy, a scale mixture), or variational=bnn.PointMass() "
            "(MAP), which such a prior allows"
        )


def _pyro_class(distribution: Distribution) -> type[Any]:
    """The ``pyro.distributions`` class of ``distribution``'s name, else its own."""
    cls = getattr(dist, type(distribution).__name__, None)
    if cls is None or not isinstance(cls, type):
        return type(distribution)
    return cls


def _tensor_arguments(distribution: Distribution) -> dict[str, Tensor]:
    """The tensor arguments ``distribution`` was built with, by name.

    Empty where none can be read: a distribution built from other
    distributions (a mixture's components, a transformed distribution's
    base) or with parameters held otherwise.
    """
    return {
        name: distribution.__dict__[name]
        for name in distribution.arg_constraints
        # not lazily derived ones (probs from logits...)
        if isinstance(distribution.__dict__.get(name), Tensor)
    }


def _as_pyro_distribution(distribution: Distribution) -> TorchDistributionMixin:
    """``distribution`` as Pyro takes it (a ``TorchDistributionMixin``).

    An ``Independent`` (torch's, or Pyro's ``to_event``) is rebuilt as its
    base, itself taken as this function takes it, made ``to_event`` over the
    same dimensions: an ``Independent`` of a torch ``Normal`` becomes Pyro's
    ``Normal(...).to_event(k)``, which pairs with the posterior's
    ``Independent`` in the closed forms torch registers (Normal/Normal), as a
    plain ``Normal`` does. Another Pyro distribution is taken as it is. A
    ``torch.distributions`` one is rebuilt from its tensor arguments as Pyro's
    wrapper of its class (which keeps the closed-form KLs registered for the
    class), or, where its arguments cannot be read (``MixtureSameFamily``,
    ``TransformedDistribution``) or Pyro has no wrapper of its class (a
    subclass of the user's, whose methods a rebuild would drop; a subclass of
    ``Independent`` too), wrapped as it is: Pyro's ``ExpandedDistribution`` at
    its own batch shape scores and samples with the distribution's own
    ``log_prob`` and ``sample``/``rsample``, and adds what Pyro needs
    (``to_event``, ``expand``, ``mask``); the KL from a posterior to it is then
    estimated by Monte Carlo where torch registers no closed form.

    Args:
        distribution: a ``torch.distributions``/``pyro.distributions``
            distribution.

    Returns:
        The distribution, or one that computes as it does.

    Example:
        >>> import torch
        >>> td = torch.distributions
        >>> _as_pyro_distribution(td.Normal(0.0, 1.0))
        Normal(loc: 0.0, scale: 1.0)
        >>> mixture = td.MixtureSameFamily(
        ...     td.Categorical(torch.tensor([0.5, 0.5])),
        ...     td.Normal(torch.zeros(2), torch.tensor([1.0, 0.1])),
        ... )
        >>> type(_as_pyro_distribution(mixture).base_dist).__name__
        'MixtureSameFamily'
        >>> _as_pyro_distribution(td.Independent(td.Normal(torch.zeros(2), 1.0), 1))
        Independent(Normal(loc: torch.Size([2]), scale: torch.Size([2])), 1)
    """
    if type(distribution) in (Independent, dist.Independent):
        assert isinstance(distribution, Independent)
        base = _as_pyro_distribution(distribution.base_dist)
        rebuilt_independent: TorchDistributionMixin = base.to_event(
            distribution.reinterpreted_batch_ndims
        )
        return rebuilt_independent
    if isinstance(distribution, TorchDistributionMixin):
        return distribution
    arguments = _tensor_arguments(distribution)
    cls = _pyro_class(distribution)
    wraps_its_class = issubclass(cls, type(distribution))
    if arguments and wraps_its_class and issubclass(cls, TorchDistributionMixin):
        rebuilt: TorchDistributionMixin = cls(**arguments)
        return rebuilt
    wrapped: TorchDistributionMixin = dist.ExpandedDistribution(
        distribution, distribution.batch_shape
    )
    return wrapped


class DistributionPrior(Prior):
    """Wrap any ``torch``/``pyro`` distribution of a scalar weight as a prior.

    The distribution's tensor parameters become buffers, so the prior follows
    ``.to()``/``.double()`` and is saved in ``state_dict``. The distribution
    is rebuilt from the ``pyro.distributions`` class of the same name.

    Args:
        distribution: e.g. ``torch.distributions.Laplace(0., 1.)``.

    Raises:
        ValueError: for a parameter tensor that requires grad (the buffer would
            be a detached copy, and the tensor would never train: a learned
            prior scale is :class:`LearnedNormalPrior`); for a distribution
            whose parameters cannot be read as tensors (``MixtureSameFamily``,
            ``TransformedDistribution``: give it in a callable, see
            :class:`CallablePrior`).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> prior = bnn.DistributionPrior(torch.distributions.Cauchy(0.0, 1.0))
        >>> prior((2,)).base_dist
        Cauchy(loc: torch.Size([2]), scale: torch.Size([2]))
    """

    def __init__(self, distribution: Distribution) -> None:
        super().__init__()
        if not isinstance(distribution, Distribution):
            raise TypeError(
                "DistributionPrior takes a torch/pyro distribution, e.g. "
                f"torch.distributions.Laplace(0.0, 1.0); got {distribution!r}"
            )
        if distribution.event_shape:
            raise ValueError(
                "DistributionPrior takes a distribution of a scalar weight, got "
                f"{type(distribution).__name__} with event shape "
                f"{tuple(distribution.event_shape)}; for a distribution over the "
                "last dimensions of a weight tensor use bnn.CallablePrior(lambda "
                "shape: distribution), whose event shape must match them"
            )
        arguments = _tensor_arguments(distribution)
        if not arguments:
            name = type(distribution).__name__
            raise ValueError(
                f"prior {name}: its parameters cannot be read (they are not "
                "tensor arguments of the distribution: a mixture's components, "
                "a transformed distribution's base), so they cannot become the "
                "prior's buffers. Pass a callable instead, prior=lambda shape: "
                "distribution (torch.distributions or pyro.distributions alike; "
                "its tensors then do not follow .to() or state_dict), or a "
                "bnn.Prior subclass that builds the distribution from buffers; "
                "a spike-and-slab mixture of two zero-mean Normals is "
                "bnn.ScaleMixtureNormalPrior(pi, scale1, scale2)"
            )
        self._cls = _pyro_class(distribution)
        self._names: list[str] = []
        for name, value in arguments.items():
            _refuse_trainable(value, f"{type(distribution).__name__} {name}")
            self.register_buffer(name, value.detach().clone())
            self._names.append(name)
        # Validate now, so that bad hyperparameters fail at construction.
        self.elementwise()

    def family(self) -> str:
        """``DistributionPrior(<wrapped class>)``."""
        return f"{type(self).__name__}({self._cls.__name__})"

    def _hyperparameter_family(self) -> str:
        # The wrapped class's arguments, named as torch names them: a Normal's
        # loc and scale are NormalPrior's.
        return self._cls.__name__

    def hyperparameter_constraints(self) -> dict[str, constraints.Constraint]:
        """The wrapped distribution's ``arg_constraints`` of its tensor arguments.

        Constraints that depend on other arguments (e.g. ``Uniform``'s bounds)
        are left to the distribution's own validation.
        """
        table = getattr(self._cls, "arg_constraints", None)
        if not isinstance(table, dict):
            return {}
        return {
            name: table[name]
            for name in self._names
            if name in table and not _is_dependent(table[name])
        }

    def elementwise(self) -> TorchDistributionMixin:
        """Rebuild the wrapped distribution from the buffers.

        Buffers on the meta device (a prior built under ``torch.device("meta")``)
        hold no values to validate: the distribution is built without (torch's
        validation read them, ``Tensor.item() cannot be called on meta
        tensors``); a load checks the values it brings.
        """
        kwargs: dict[str, Any] = {name: getattr(self, name) for name in self._names}
        if any(value.is_meta for value in kwargs.values()):
            kwargs["validate_args"] = False
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

    The function is called with the weight's shape and must return a
    ``torch``/``pyro`` distribution whose batch shape is ``()`` or the weight's
    shape, or whose event shape is the weight's last dimensions (a
    ``MultivariateNormal`` over the rows of a matrix, say). It is called
    every time the prior is used (every step of the loss), so it may read a
    value that changes (a number in a dictionary, a module's buffer). Tensors
    it closes over are neither copied nor moved: they do not follow
    ``.to()``, so prefer a :class:`Prior` subclass with buffers for
    device-portable models. They must stay fixed while the network trains:
    a tensor of the distribution that requires grad is refused with a
    ``ValueError``, and so is one that shares memory with a parameter of the
    layer using the prior (the parameter, a view of it, its ``.detach()``:
    the prior of continual learning written as ``lambda shape:
    Normal(posterior.loc.detach(), ...)`` would move with the posterior);
    close over copies made once, before the function
    (``loc = posterior.loc.detach().clone()``; a copy made inside the
    function is made again on every call, from the posterior of that
    moment, and moves with it as surely; so does a value the function
    computes from a parameter, ``softplus(rho).detach()``, which no memory
    check sees), or assign a prior object
    (``layer.prior["weight"] = bnn.NormalPrior(loc, scale)``, copied). The
    tensors are checked when they change: a function returning the same
    tensor objects again is not checked again. Any distribution is scored as
    it is built, also one made of other distributions (a ``MixtureSameFamily``
    spike-and-slab, a ``TransformedDistribution``), from
    ``torch.distributions`` or ``pyro.distributions`` alike; the KL to it is
    estimated by Monte Carlo where torch registers no closed form. An
    ``Independent`` (torch's, or Pyro's ``to_event``) has the closed forms of
    what it is made of: ``Independent(Normal(loc, scale), k)`` the KL of
    ``Normal(loc, scale)``, with ``kl="auto"`` and ``kl="analytic"`` alike.

    Args:
        fn: the function.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> laplace = lambda shape: torch.distributions.Laplace(0.0, 1.0)
        >>> prior = bnn.CallablePrior(laplace)
        >>> prior(torch.Size([2, 3])).event_shape
        torch.Size([2, 3])
        >>> bnn.VILinear(3, 2, prior=prior)(torch.randn(4, 3)).shape
        torch.Size([10, 4, 2])
    """

    def __init__(self, fn: Callable[[torch.Size], Distribution]) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(
                "CallablePrior takes a function shape -> distribution, e.g. "
                f"lambda shape: torch.distributions.Laplace(0.0, 1.0); got {fn!r}"
            )
        self.fn = fn
        self._checked = LastChecked()

    def forward(self, shape: Sequence[int]) -> TorchDistributionMixin:
        """Call ``fn(shape)`` and make the result cover the whole tensor.

        Raises:
            TypeError: when ``fn`` returns no distribution.
            ValueError: for an event shape other than the weight's last
                dimensions, a batch shape that does not broadcast to the
                rest of the weight's shape (each naming what ``fn``
                returned), or a tensor of it that requires grad.
        """
        return self._built(shape, None)

    def distribution_of(
        self, shape: Sequence[int], module: nn.Module
    ) -> TorchDistributionMixin:
        """:meth:`forward`, its tensors checked against ``module``'s parameters.

        Raises:
            ValueError: as :meth:`forward`, and for a tensor of the
                distribution that shares memory with a parameter of
                ``module`` (it would move with training).
        """
        return self._built(shape, module)

    def _built(
        self, shape: Sequence[int], module: nn.Module | None
    ) -> TorchDistributionMixin:
        """``fn(shape)`` checked (against ``module``), covering the whole tensor."""
        returned = self.fn(torch.Size(shape))
        if not isinstance(returned, Distribution):
            raise TypeError(
                f"prior callable returned {type(returned).__name__}, expected a "
                "torch.distributions or pyro.distributions distribution"
            )
        if not torch.compiler.is_compiling():
            self._check_fixed(returned, module)
        size = torch.Size(shape)
        built = _as_pyro_distribution(returned)
        event = len(built.event_shape)
        if event and built.event_shape != size[len(size) - event :]:
            raise ValueError(
                f"prior callable returned {distribution_name(returned)} of event "
                f"shape {tuple(built.event_shape)} for a weight of shape "
                f"{tuple(size)}; its event shape must be the weight's last "
                "dimensions"
            )
        batch = size[: len(size) - event]
        if not _broadcasts_to(built.batch_shape, batch):
            target = f"the random variable's shape {tuple(size)}"
            if event:
                target = (
                    f"{tuple(batch)}, {target} less the event shape "
                    f"{tuple(built.event_shape)}"
                )
            raise ValueError(
                f"{type(self).__name__}: the prior callable returned "
                f"{distribution_name(returned)} of batch shape "
                f"{tuple(built.batch_shape)}, which does not broadcast to "
                f"{target}; return a distribution of batch shape () or of the "
                "shape it is called with"
            )
        if event:
            expanded: TorchDistributionMixin = built.expand(batch).to_event(len(batch))
            return expanded
        return _independent(built, size)

    def _check_fixed(self, returned: Distribution, module: nn.Module | None) -> None:
        """Refuse tensors of ``returned`` that would move while the network trains.

        Those that require grad, and those sharing memory with a parameter of
        ``module`` (if given). The tensors last checked are not checked again.
        """
        checked = self.__dict__.get("_checked")
        if checked is None:  # a prior pickled before the check existed
            checked = self.__dict__["_checked"] = LastChecked()
        held = held_tensors(returned)
        tensors = [h.tensor for h in held]
        owner = None if module is None else id(module)
        if checked.matches(tensors, owner):
            return
        for h in held:
            if h.tensor.requires_grad:  # (the message is only made then)
                _refuse_requires_grad(
                    h.tensor,
                    _returned_tensor(returned, h),
                    why="a prior stays fixed while the network trains, and the "
                    "loss would move that tensor (a posterior's parameter: the "
                    "prior would follow the posterior, keeping no weight near its "
                    "values)",
                    fixed=_CALLABLE_COPIES,
                )
        if module is not None:
            parameters = storage_names(module.named_parameters())
            for h in held:
                address = storage_address(h.tensor)
                name = None if address is None else parameters.get(address)
                if name is not None:
                    raise ValueError(
                        f"{_returned_tensor(returned, h)} shares memory with the "
                        f"parameter {name!r} of the {type(module).__name__} using "
                        "the prior (it is that parameter, a view of it or its "
                        ".detach()): the prior would move with the posterior during "
                        "training, keeping no weight near these values. For a "
                        f"fixed prior {_CALLABLE_COPIES}"
                    )
        checked.remember(tensors, owner)

    def graph_key(self, shape: Sequence[int]) -> Hashable:
        """The function, and what it returns now: see :meth:`Prior.graph_key`.

        The function is called (as the eager loss calls it on every step) and
        its distribution described: its classes, numbers and the values of its
        tensors. A compiled graph is then captured again when the function is
        replaced, or when what it reads (a number it closes over, a dictionary
        entry, a global) makes it return another distribution.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> scale = {"value": 1.0}
            >>> prior = bnn.CallablePrior(
            ...     lambda shape: torch.distributions.Normal(0.0, scale["value"])
            ... )
            >>> before = prior.graph_key((3, 2))
            >>> prior.graph_key((3, 2)) == before
            True
            >>> scale["value"] = 0.1
            >>> prior.graph_key((3, 2)) == before
            False
        """
        return (self.fn, _frozen_description(self.fn(torch.Size(shape))))


def _returned_tensor(returned: Distribution, held: HeldTensor) -> str:
    """Names a tensor of what a prior callable returned, in messages."""
    name = distribution_name(returned)
    return f"the prior callable returned {name} whose {held.path}"


# How a prior callable gives a fixed value (the end of its refusals).
_CALLABLE_COPIES = (
    "close over copies made once, before the function: "
    "loc = tensor.detach().clone(), then lambda shape: Normal(loc, ...) (a "
    "copy made inside the function is made again from the posterior on every "
    "call and moves with it all the same), or assign a prior object "
    '(layer.prior["weight"] = bnn.NormalPrior(loc, scale)), which is copied'
)

# Nesting depth to which a prior callable's distribution is described (base
# distributions, transforms, their parameters); deeper objects by their class.
_DESCRIBED_DEPTH = 6


def _frozen_description(value: object, depth: int = 0) -> Hashable:
    """A hashable description of ``value``: classes, numbers, tensor values.

    Two distributions with equal descriptions give one graph the same
    constants. Tensors are described by their values (a digest of their
    bytes), so a tensor made anew from the same numbers matches.
    """
    if isinstance(value, Tensor):
        data = value.detach().reshape(-1).cpu().contiguous().view(torch.uint8)
        digest = hashlib.blake2b(data.numpy().tobytes(), digest_size=16).digest()
        return ("tensor", tuple(value.shape), value.dtype, value.device, digest)
    if value is None or isinstance(value, (bool, int, float, str, complex)):
        return value
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_frozen_description(v, depth) for v in value))
    if depth >= _DESCRIBED_DEPTH:
        return (type(value),)
    if isinstance(value, dict):
        return (
            dict,
            tuple((k, _frozen_description(v, depth + 1)) for k, v in value.items()),
        )
    if isinstance(value, (Distribution, Transform, constraints.Constraint)):
        return (
            type(value),
            tuple(
                (name, _frozen_description(item, depth + 1))
                for name, item in sorted(vars(value).items())
            ),
        )
    try:
        hash(value)
    except TypeError:
        return (type(value),)
    return (type(value), value)


def priors_in_full_precision(priors: Sequence[Prior], compute: Callable[[], _T]) -> _T:
    """``compute()`` with the priors' half-precision hyperparameters as ``float32``.

    The KL of a half-precision network: a prior's closed form, its density
    and what it derives from its hyperparameters (a learned scale
    ``exp(log_scale)``) computed in ``bfloat16`` are off by its rounding, an
    error that every weight's term repeats (``log(0.1)``: 0.0047 nats per
    weight). Inside, the priors' ``float16``/``bfloat16`` buffers and
    parameters are their ``float32`` casts
    (:func:`~pyrolite_bnn.distributions._precision.computed_in_full_precision`:
    differentiable, gradients reach learned ones). With validation on, the
    stored values are checked first (:meth:`Prior.check_values`); the casts,
    new tensors at every call, are not read again (that would synchronise a
    device once per prior and step). Hyperparameters ``to_empty`` left
    without values are refused first (:meth:`Prior.check_written`: inside,
    the casts are read in their place).

    Args:
        priors: the priors.
        compute: the computation, without arguments.

    Returns:
        What ``compute()`` returns.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> prior = bnn.LearnedNormalPrior(init_scale=0.3).to(torch.bfloat16)
        >>> priors_in_full_precision([prior], lambda: prior.scale().dtype)
        torch.float32
    """
    for prior in priors:
        prior.check_written()
    if is_validation_enabled():
        for prior in priors:
            prior.check_values()
    # In a context of its own: a Ctrl-C that stops the restore of the flag
    # leaves later reads checked all the same.
    result: _T = in_own_context(_computed_from_checked_copies, priors, compute)
    return result


def _computed_from_checked_copies(
    priors: Sequence[Prior], compute: Callable[[], _T]
) -> _T:
    """``compute()`` on the priors' float32 copies, their values checked."""
    with set_while(_READING_CHECKED_COPIES, True):
        return computed_in_full_precision(priors, compute)


def as_prior(prior: object) -> Prior:
    """Turn anything accepted as a prior into a fresh :class:`Prior` module.

    ``None`` gives the default ``NormalPrior(0, 1)``; a :class:`Prior` is copied
    (so that layers never share hyperparameter buffers by accident); a
    distribution is wrapped in :class:`DistributionPrior`; a callable in
    :class:`CallablePrior`; a torch_blue-style distribution of
    :mod:`pyrolite_bnn.vi.distributions` is converted by its ``to_prior()``
    (as the ``vi`` layers' ``prior=`` does, and as likelihoods are by
    ``to_predictive()``).

    Args:
        prior: ``None``, a :class:`Prior`, a distribution, or a callable.

    Returns:
        A new :class:`Prior` module.

    Raises:
        TypeError: for anything else: a class, a torch module that is no
            :class:`Prior` (callable, but with data), another object.
    """
    if prior is None:
        return NormalPrior()
    if isinstance(prior, Prior):
        return copy.deepcopy(prior)
    to_prior = getattr(prior, "to_prior", None)
    if callable(to_prior) and not isinstance(prior, type):
        return as_prior(to_prior())
    if isinstance(prior, Distribution):
        return DistributionPrior(prior)
    if isinstance(prior, type) and issubclass(prior, Prior | Distribution):
        # A class is callable, and was taken for a shape -> distribution function.
        raise TypeError(
            f"prior must be an instance, got the class {prior.__name__}: pass "
            f"{prior.__name__}(...)"
        )
    if isinstance(prior, nn.Module):
        # A module is callable, and was taken for a shape -> distribution function.
        raise TypeError(
            "prior must be a bnn Prior, a torch/pyro distribution or a callable "
            f"shape -> distribution; got the torch module {type(prior).__name__}, "
            "whose forward takes data (for hyperparameters that train or follow "
            ".to(), subclass bnn.Prior)"
        )
    if callable(prior):
        return CallablePrior(prior)
    raise TypeError(
        "prior must be a bnn Prior, a torch/pyro distribution or a callable "
        f"shape -> distribution; got {type(prior).__name__}"
    )


def _fmt(value: Tensor, spec: str = ".4g") -> str:
    """A hyperparameter in a repr: a number, else ``tensor of shape (...)``.

    (``tensor(8, 4)`` read like values.)

    A number on the meta device has no value: ``?``.
    """
    if value.numel() == 1:
        return "?" if value.is_meta else format(value.item(), spec)
    return f"tensor of shape {tuple(value.shape)}"
