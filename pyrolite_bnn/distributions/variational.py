"""Variational families: what the generated guide learns for each weight tensor.

A family is a small, immutable *specification* passed to a layer
(``variational=MeanFieldNormal(init_scale=1e-3)``); the layer asks it to
:meth:`~VariationalFamily.build` one posterior module per declared random
variable. The posterior module owns the learnable parameters (so they are part
of ``model.parameters()`` and ``state_dict``) and, when called inside the
particle plate, emits one ``pyro.sample`` site for the whole tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.nn import PyroParam
from torch import Tensor

from pyrolite_bnn._math import inverse_softplus
from pyrolite_bnn._module_hooks import recomputing_hooks
from pyrolite_bnn._pyro_module import LocalPyroModule
from pyrolite_bnn._scales import DeclaresScales
from pyrolite_bnn._state import RecordsInState, recorded
from pyrolite_bnn._unwritten_tensors import RefusesUnwrittenTensors, holds_no_values
from pyrolite_bnn._validation import (
    check_finite,
    check_normal_number,
    check_real,
    readable_all,
)
from pyrolite_bnn.distributions._precision import full_precision as widen

__all__ = [
    "MeanFieldNormal",
    "MeanFieldNormalPosterior",
    "NormalMoments",
    "PointMass",
    "PointMassPosterior",
    "Posterior",
    "ScaleTransform",
    "VariationalFamily",
    "elementwise_quantiles",
]


# How a mean-field posterior's unconstrained ``rho`` maps to its scale.
ScaleTransform = Literal["softplus", "exp"]
_SCALE_TRANSFORMS: tuple[ScaleTransform, ...] = get_args(ScaleTransform)

# The key under which a posterior's state dict records its parameterisation.
_PARAMETERISATION = "pyrolite_bnn.parameterisation"


def _check_scale_transform(scale_transform: ScaleTransform) -> ScaleTransform:
    if scale_transform not in _SCALE_TRANSFORMS:
        raise ValueError(
            f"scale_transform must be one of {_SCALE_TRANSFORMS}, "
            f"got {scale_transform!r}"
        )
    return scale_transform


_MOMENTS_READ = (
    "a Bayesian layer's weight under local reparameterisation (estimator "
    "'local' or 'auto' on a (batch, features) input) is read by the layer as "
    "its mean and standard deviation, not as a drawn tensor; and with drawn "
    "weights a layer's weight holds one tensor per particle (S, 1, *shape). "
    "Code outside the layer that reads layer.weight (a tied output layer, "
    "F.linear(x, layer.weight), a shape check) is one-sample code: keep that "
    "layer deterministic (bnn.convert(..., exclude=[...])), or use "
    "vi.convert_to_vimodule, which runs such a forward once per particle"
)


class NormalMoments(NamedTuple):
    """Mean and standard deviation of a mean-field Normal weight tensor.

    What a layer reads as its weight under local reparameterisation. Using it
    as a tensor (``.shape``, ``F.linear(x, moments)``) raises a ``TypeError``
    that explains why: such code reads a Bayesian layer's weight from outside
    the layer.
    """

    loc: Tensor
    scale: Tensor

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"'NormalMoments' has no attribute {name!r}: {_MOMENTS_READ}"
        )

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        raise TypeError(
            f"{getattr(func, '__name__', func)}() got NormalMoments: {_MOMENTS_READ}"
        )


class Posterior(
    DeclaresScales, RefusesUnwrittenTensors, RecordsInState, LocalPyroModule
):
    """Learnable variational distribution of one weight tensor.

    Calling it with a site name samples that site from :meth:`distribution`.
    A family whose scales are learned through unconstrained tensors declares
    them (:meth:`scale_parameter_names`), which keeps weight decay off them
    (:func:`~pyrolite_bnn.decay.decay_groups`). After ``to_empty`` its
    tensors hold no values until written (a reset, a load): reading one that
    was not, for a forward pass, a draw, the KL or a prediction, raises a
    ``ValueError`` naming it (:meth:`check_written`).

    Attributes:
        loc_init: how :meth:`reset_parameters` draws a new mean: a function
            that fills a tensor shaped like the mean in place and returns it
            (``torch.nn.init.ones_``, or a layer's initialisation, which the
            layers hand their posteriors at construction); ``None``: the
            posterior has no initialisation of its own and keeps its mean.
    """

    loc: Tensor
    # Class defaults: posteriors pickled before they existed.
    loc_init: Callable[[Tensor], Tensor] | None = None
    # Whether the mean holds values written on a real device: by a reset, a
    # load, or moved with them (.to(), copies); not after to_empty (whose
    # memory is watched for writes: RefusesUnwrittenTensors).
    _loc_written: bool = False

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = torch.Size(shape)

    def distribution(self) -> TorchDistributionMixin:
        """The variational distribution of the whole tensor (all dims event)."""
        raise NotImplementedError

    def forward(self, site: str) -> Tensor:
        """Sample ``site`` from the variational distribution."""
        return pyro.sample(site, self.distribution())

    def mean(self) -> Tensor:
        """Variational mean of the tensor (used by posterior-mean prediction)."""
        self.check_written()
        return self.loc

    def median(self) -> Tensor:
        """Posterior median of every weight, without gradient history.

        The ``0.5`` quantile of :meth:`distribution`
        (:func:`elementwise_quantiles`), computed at every call. A family
        whose median is one of its parameters returns that parameter's values
        instead (a view of it: read it, do not write to it), so that
        ``predict(mode="mean")`` reads the medians at no cost on every call,
        always those of the parameters as they are.

        Raises:
            NotImplementedError: for a distribution without quantiles.
        """
        with torch.no_grad():
            family = type(self).__name__
            return elementwise_quantiles(self.distribution(), [0.5], family)[0]

    def _checked_loc(self, init_loc: Tensor) -> Tensor:
        """``init_loc`` as a new mean of the tensor: detached, broadcast to its shape.

        Raises:
            ValueError: if ``init_loc`` does not broadcast to the shape, or has
                NaN or Inf values (with validation on).
        """
        if not isinstance(init_loc, Tensor):
            raise TypeError(f"init_loc must be a tensor, got {type(init_loc).__name__}")
        try:
            loc = init_loc.detach().expand(self.shape)
        except RuntimeError:
            raise ValueError(
                f"init_loc of shape {tuple(init_loc.shape)} does not broadcast to "
                f"the posterior's shape {tuple(self.shape)}"
            ) from None
        check_finite(loc, "init_loc")
        return loc

    def _loc_values(self) -> Tensor:
        """The values of ``loc``, detached, read without Pyro's bookkeeping.

        ``loc`` is real-valued (no constraint), so the unconstrained tensor is
        the value.

        Raises:
            ValueError: after ``to_empty``, while a tensor of the posterior
                holds no values (:meth:`check_written`).
        """
        self.check_written()
        return self._unconstrained("loc_unconstrained").detach()

    def _unconstrained(self, attribute: str) -> Tensor:
        """The unconstrained tensor ``attribute`` (``loc_unconstrained``), read as is.

        From ``_parameters`` (no Pyro bookkeeping); a tensor that
        ``torch.nn.utils.parametrize`` has moved is computed by torch's
        property, and one that a forward pre-hook keeps is computed by the
        hooks first (:meth:`_run_forward_pre_hooks`).
        """
        value = self._parameters.get(attribute)
        if value is None:
            self._run_forward_pre_hooks()
            value = getattr(self, attribute)
        return value

    def __getattr__(self, name: str) -> Any:
        # ``self.loc`` (Pyro's PyroParam read) takes ``loc_unconstrained`` as it
        # is: bring a hook-kept one up to date first, as _unconstrained does.
        pyro_params = self.__dict__.get("_pyro_params", {})
        if name in pyro_params and f"{name}_unconstrained" not in self.__dict__.get(
            "_parameters", {}
        ):
            self._run_forward_pre_hooks()
        return super().__getattr__(name)

    def _run_forward_pre_hooks(self) -> None:
        """Run the forward pre-hooks that recompute one of this module's tensors.

        ``torch.nn.utils.prune`` (and the legacy ``nn.utils.weight_norm`` and
        ``spectral_norm``) replace a parameter by a plain attribute that their
        forward pre-hook recomputes (``loc_unconstrained = orig * mask``).
        The layers read a posterior's tensors without calling it, so every read
        of such an attribute runs the hooks (with no arguments): the value is
        that of the parameters as they are, after an optimiser step or a
        ``load_state_dict``, never the one of the last call. Refreshing is no
        change of the module's structure (nothing is bumped). Only these
        utilities' hooks run: other pre-hooks (a user's, which may read the
        call's arguments) belong to calls of the module.
        """
        hooks = list(recomputing_hooks(self).values())
        if not hooks:
            return
        object.__setattr__(self, "_refreshing", True)
        try:
            for hook in hooks:
                hook(self, ())
        finally:
            object.__setattr__(self, "_refreshing", False)

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            self.__dict__.get("_refreshing")
            and isinstance(value, Tensor)
            and isinstance(self.__dict__.get(name), Tensor)
        ):
            self.__dict__[name] = value  # a hook's refresh of its plain attribute
            return
        super().__setattr__(name, value)

    def draw(self, samples: int) -> Tensor:
        """``samples`` reparameterised draws, ``(samples, 1, *shape)``.

        The same values, from the same random numbers, as sampling the site
        inside the particle plate.
        """
        draws: Tensor = self.distribution().rsample((samples, 1))
        return draws

    def reset_parameters(self, init_loc: Tensor | None = None) -> None:
        """Re-initialise the posterior around ``init_loc``.

        With ``init_loc=None`` a mean that holds values is kept: the memory
        the last ``reset_parameters`` wrote (the layer's own reset, at
        construction), trained or loaded since, or moved with its values
        (``.to()``, ``copy.deepcopy``, ``torch.load``, a load with
        ``assign=True``, a ``.data`` assignment);
        ``reset_parameters(init_scale=...)`` after training
        resets the scales only. A mean in memory that never held one is drawn
        anew by
        :attr:`loc_init` (as its layer draws it): FSDP's deferred
        initialisation (a layer built on the ``meta`` device, then
        ``to_empty(recurse=False)`` and ``reset_parameters()`` on each module
        holding tensors) reaches the posteriors, never their layer; so does
        ``to_empty`` of a built layer, whose memory is new, unless values were
        written to it since (in place: ``copy_`` into the state dict's
        tensors, ``torch.nn.init``, an optimizer step, a write through
        ``.data``; or given to ``.data``: ``vector_to_parameters``): the mean
        reads NaN after ``to_empty`` (every bit set), so that any write, zeros
        too, is seen. Without
        :attr:`loc_init` the mean is kept. Torch's idioms of resetting every
        module (``model.apply``, children first, or ``model.modules()``) then
        give a fresh layer's numbers: the posterior keeps its mean and the
        layer draws it.
        """
        raise NotImplementedError

    def initial_loc(self) -> Tensor:
        """A new initial mean, drawn by :attr:`loc_init` (a new tensor).

        Raises:
            ValueError: if the posterior has no :attr:`loc_init`.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> layer = bnn.VILinear(4, 3)
            >>> _ = torch.manual_seed(0)
            >>> mean = layer.posterior["weight"].initial_loc()
            >>> _ = torch.manual_seed(0)
            >>> torch.equal(mean, torch.nn.Linear(4, 3).weight.detach())
            True
        """
        if self.loc_init is None:
            raise ValueError(
                f"this {type(self).__name__} has no loc_init to draw a mean with"
            )
        current = self._unconstrained("loc_unconstrained").detach()
        return self.loc_init(torch.empty_like(current))

    def _new_loc(self, init_loc: Tensor | None) -> Tensor | None:
        """The mean :meth:`reset_parameters` sets for ``init_loc`` (``None``: kept).

        Checked (:meth:`_checked_loc`) where given; drawn by :attr:`loc_init`
        where not, unless the mean holds values (:meth:`_holds_a_mean`).
        """
        if init_loc is not None:
            return self._checked_loc(init_loc)
        if self.loc_init is None or self._holds_a_mean():
            return None
        return self.initial_loc()

    def _set_loc(self, init_loc: Tensor | None) -> None:
        """Set the mean as :meth:`reset_parameters` does (under ``no_grad``)."""
        loc = self._new_loc(init_loc)
        if loc is None:
            return
        self.loc_unconstrained.copy_(loc)
        self._note_loc_written()

    def _note_loc_written(self) -> None:
        """Record that the mean was just written (nothing is, on ``meta``)."""
        self._note_written("loc_unconstrained")

    def _note_written(self, name: str) -> None:
        """Forget ``to_empty``'s record of ``name``; a mean is noted as held."""
        super()._note_written(name)
        if name == "loc_unconstrained":
            loc = self._parameters.get(name)
            self._loc_written = loc is not None and not loc.is_meta

    def _note_emptied(
        self, origins: Mapping[str, Any], *, replace: bool = True
    ) -> None:
        """Record the tensors in ``origins`` as holding no values, the mean too."""
        super()._note_emptied(origins, replace=replace)
        if "loc_unconstrained" in origins:
            self._loc_written = False

    def _holds_a_mean(self) -> bool:
        """Whether the mean's memory holds values that were written to it.

        Written by a reset or a load, and kept through training, ``.data``
        assignments and moves with the values (``.to()``, copies, pickles);
        ``to_empty`` gives memory without values (so does a layer built on the
        ``meta`` device, which writes nothing) until something is written to
        it (seen by its address, version counter or bits:
        :class:`~pyrolite_bnn._unwritten_tensors.RefusesUnwrittenTensors`).
        """
        loc = self._parameters.get("loc_unconstrained")
        if loc is None or loc.is_meta:
            return False
        written = self._memory_state("loc_unconstrained") == "written"
        return self._loc_written or written

    def parameterisation(self) -> str:
        """How the learnable tensors give the distribution; ``""``: one way only.

        Checkpoints and state dicts record it: the same tensors under another
        parameterisation are another distribution.
        """
        return ""

    def state_record(self) -> tuple[str, str] | None:
        """The :meth:`parameterisation`, recorded with the state dict (if any)."""
        parameterisation = self.parameterisation()
        return (_PARAMETERISATION, parameterisation) if parameterisation else None

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
        """Torch's, after reading tensors saved under another parameterisation.

        A state recorded with another :meth:`parameterisation` than this
        posterior's (``scale_transform="exp"`` into ``"softplus"``) is first
        rewritten into this one (:meth:`_reparameterise`: the same
        distribution), or, where that cannot be done, refused (the load fails
        with a ``RuntimeError`` saying why, and nothing is loaded into this
        posterior). A state without the record (saved before it existed, or
        rebuilt without its metadata) loads as it is.
        """
        saved = recorded(local_metadata, _PARAMETERISATION)
        current = self.parameterisation()
        if saved is not None and current and saved != current:
            problem = self._reparameterise(state_dict, prefix, saved)
            if problem is not None:
                error_msgs.append(problem)  # load_state_dict raises a RuntimeError
                return
        # A loaded mean is noted written (assign=True: new memory), unless the
        # state held none for it (RefusesUnwrittenTensors._load_from_state_dict).
        super()._load_from_state_dict(
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )

    def _reparameterise(
        self, state_dict: dict[str, Any], prefix: str, saved: str
    ) -> str | None:
        """Rewrite this posterior's tensors in ``state_dict``, saved under ``saved``.

        Into this posterior's :meth:`parameterisation`, in place (torch hands
        each module a copy of the state). Returns ``None`` when done, else why
        it cannot be done; this base class converts nothing.
        """
        return (
            f"posterior {prefix[:-1]!r} was saved with {saved}, this one has "
            f"{self.parameterisation()}: the same tensors would be another "
            "distribution here, and they cannot be converted; build the layer "
            f"with {saved} to load this state"
        )


class MeanFieldNormalPosterior(Posterior):
    """Independent Normal for every weight: ``N(loc, softplus(rho)^2)``.

    With ``scale_transform="exp"`` the standard deviation is ``exp(rho)``
    (``rho`` is the log standard deviation, torch_blue's and Pyro's
    ``AutoNormal`` parametrisation), floored at the dtype's smallest normal
    number so that a standard deviation stored as a very negative log (1e-20
    in ``float16``) stays positive.

    Args:
        shape: shape of the weight tensor.
        init_loc: initial mean.
        init_scale: initial standard deviation.
        scale_transform: ``"softplus"`` (default) or ``"exp"``.
    """

    rho: Tensor

    def __init__(
        self,
        shape: Sequence[int],
        init_loc: Tensor,
        init_scale: float,
        scale_transform: ScaleTransform = "softplus",
    ) -> None:
        super().__init__(shape)
        self.init_scale = init_scale
        self.scale_transform = _check_scale_transform(scale_transform)
        self._check_representable(init_scale, init_loc.dtype)
        # setattr keeps the class-level annotation ``loc: Tensor`` honest for mypy.
        setattr(self, "loc", PyroParam(init_loc.detach().clone(), constraints.real))  # noqa: B010
        rho = torch.full_like(init_loc, self._raw_scale(init_scale))
        setattr(self, "rho", PyroParam(rho, constraints.real))  # noqa: B010

    def _check_representable(self, scale: float, dtype: torch.dtype) -> None:
        """Refuse a scale whose variance is not a finite number of ``dtype``.

        ``softplus(rho)`` underflows to 0 below the smallest normal number (a
        scale of 1e-50 in float32 made the KL infinite); ``exp`` is clamped at
        that number instead (torch_blue's tiny standard deviations). Above
        ``sqrt(max)`` (1.8e19 in float32) the variance ``scale**2``, which the
        densities, the KL and the local reparameterisation compute, is
        infinite (``VILinear`` outputs were +-inf).
        """
        if self.scale_transform == "softplus" or scale > 1.0:
            check_normal_number(
                scale, "MeanFieldNormal init_scale", dtype, squared=True
            )

    def _raw_scale(self, scale: float) -> float:
        """The ``rho`` of a standard deviation."""
        if self.scale_transform == "exp":
            return math.log(scale)
        return inverse_softplus(scale)

    def _to_scale(self, rho: Tensor) -> Tensor:
        """Standard deviations of the raw parameter ``rho``."""
        return _scale_of(rho, self.scale_transform, torch.finfo(rho.dtype).tiny)

    def scale(self) -> Tensor:
        """Standard deviations ``softplus(rho)`` (or ``exp(rho)``).

        Raises:
            ValueError: after ``to_empty``, while a tensor of the posterior
                holds no values (:meth:`check_written`).
        """
        self.check_written()
        return self._to_scale(self.rho)

    def scale_parameter_names(self) -> tuple[str, ...]:
        """``("rho_unconstrained",)``: the standard deviations' unconstrained tensor.

        Example:
            >>> import pyrolite_bnn as bnn
            >>> bnn.VILinear(3, 2).posterior["weight"].scale_parameter_names()
            ('rho_unconstrained',)
        """
        return ("rho_unconstrained",)

    def parameterisation(self) -> str:
        """``"scale_transform='softplus'"`` or ``"scale_transform='exp'"``.

        Recorded with the ``state_dict``: a state saved with the other
        transform loads with the same standard deviations (``rho`` is
        converted), e.g. a :mod:`pyrolite_bnn.vi` layer's (``"exp"``) into a
        default one.

        Example:
            >>> import pyrolite_bnn as bnn
            >>> source = bnn.VILinear(
            ...     3, 2, variational=bnn.MeanFieldNormal(0.5, scale_transform="exp")
            ... )
            >>> target = bnn.VILinear(3, 2)
            >>> target.load_state_dict(source.state_dict())
            <All keys matched successfully>
            >>> round(target.posterior["weight"].scale()[0, 0].item(), 6)
            0.5
        """
        return f"scale_transform={self.scale_transform!r}"

    def _reparameterise(
        self, state_dict: dict[str, Any], prefix: str, saved: str
    ) -> str | None:
        """``rho`` saved under the other ``scale_transform``, at the same scales.

        ``rho' = g^-1(f(rho))`` for the saved transform ``f`` and this one's
        ``g``, computed in float64 and stored in the saved tensor's dtype.
        A ``rho`` kept by ``torch.nn.utils.prune`` or ``parametrize`` (other
        keys) is not converted: refused.
        """
        labels = {f"scale_transform={name!r}": name for name in _SCALE_TRANSFORMS}
        source = labels.get(saved)
        key = prefix + "rho_unconstrained"
        others = [k for k in state_dict if k.startswith(key) and k != key]
        rho = state_dict.get(key)
        if source is None or others or not (rho is None or isinstance(rho, Tensor)):
            return super()._reparameterise(state_dict, prefix, saved)
        if rho is not None and not holds_no_values(rho):  # none: none either way
            with torch.no_grad():
                scale = _scale_of(rho.double(), source, torch.finfo(rho.dtype).tiny)
                state_dict[key] = _rho_of(scale, self.scale_transform).to(rho.dtype)
        return None

    def draw(self, samples: int) -> Tensor:
        """``loc + softplus(rho) * eps``, the arithmetic of ``Normal.rsample``.

        Reads the (real-valued, untransformed) parameters directly, skipping
        Pyro's parameter bookkeeping, and draws ``eps`` exactly as
        ``torch.distributions`` does, so the values equal the traced guide's.
        """
        return self.reparameterize(NormalMoments(*self.normal_params()), samples)

    def reparameterize(self, moments: NormalMoments, samples: int) -> Tensor:
        """``loc + scale * eps`` for given moments, ``(samples, 1, *shape)``."""
        return self.reparameterize_with_noise(moments, samples)[0]

    def reparameterize_with_noise(
        self, moments: NormalMoments, samples: int
    ) -> tuple[Tensor, Tensor]:
        """The draws ``loc + scale * eps`` and their standard-normal noise ``eps``.

        ``eps`` is drawn and combined as ``torch.distributions.Normal.rsample``
        does it (``loc + eps * scale``, not a fused multiply-add), so the draws
        equal Pyro's bit for bit under the same seed. ``torch.randn`` is
        ``torch.empty(...).normal_()`` (the same values), drawn out of place:
        under ``torch.func.vmap(..., randomness="different")`` an in-place
        draw into an unbatched tensor is refused.
        """
        loc, scale = moments
        eps = torch.randn((samples, 1, *self.shape), dtype=loc.dtype, device=loc.device)
        return loc + eps * scale, eps

    def normal_params(self, *, full_precision: bool = False) -> tuple[Tensor, Tensor]:
        """``(loc, scale)`` read straight from the parameters (no Pyro bookkeeping).

        Both parameters are real-valued (the scale goes through ``softplus`` here,
        not through a Pyro constraint), so the unconstrained values are the values.

        Args:
            full_precision: read half-precision parameters as ``float32``
                before the scale is computed, as the KL terms are: the scale
                of the stored ``rho``, not its ``softplus`` rounded to
                ``bfloat16`` (8 bits: every weight's KL was off by up to
                0.004 nats, 2.4e-4 of the KL of a million weights). A
                differentiable cast: gradients reach the parameters.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> posterior = bnn.VILinear(3, 2).posterior["weight"].bfloat16()
            >>> [t.dtype for t in posterior.normal_params(full_precision=True)]
            [torch.float32, torch.float32]
        """
        self.check_written()
        loc = self._unconstrained("loc_unconstrained")
        rho = self._unconstrained("rho_unconstrained")
        if not full_precision:
            return loc, self._to_scale(rho)
        # The floor of exp's scales stays the stored dtype's (float16: 6e-5).
        tiny = torch.finfo(rho.dtype).tiny
        return widen(loc), _scale_of(widen(rho), self.scale_transform, tiny)

    def median(self) -> Tensor:
        """``loc`` (a view of it, without gradient history)."""
        return self._loc_values()

    def distribution(self) -> TorchDistributionMixin:
        """``Normal(loc, softplus(rho))`` over the whole tensor."""
        self.check_written()
        normal = dist.Normal(self.loc, self.scale())
        result: TorchDistributionMixin = normal.to_event(len(self.shape))
        return result

    def reset_parameters(
        self, init_loc: Tensor | None = None, init_scale: float | Tensor | None = None
    ) -> None:
        """Set the mean to ``init_loc`` and the scales to ``init_scale``.

        Args:
            init_loc: new mean (``None``: drawn by :attr:`~Posterior.loc_init`,
                or kept: see :meth:`Posterior.reset_parameters`).
            init_scale: new standard deviations (positive; a float or a tensor
                broadcastable to the shape); ``None`` uses the family's
                ``init_scale``.
        """
        scale = self.init_scale if init_scale is None else init_scale
        with torch.no_grad():
            self._set_loc(init_loc)
            if isinstance(scale, Tensor):
                # A scale on the meta device has no values to check.
                if not readable_all((scale > 0) & torch.isfinite(scale)):
                    raise ValueError("init_scale must be positive and finite")
                rho = _rho_of(scale, self.scale_transform)
                self.rho_unconstrained.copy_(rho.expand_as(self.rho_unconstrained))
            else:
                if not scale > 0:
                    raise ValueError(f"init_scale must be positive, got {scale!r}")
                self._check_representable(float(scale), self.rho.dtype)
                self.rho_unconstrained.fill_(self._raw_scale(float(scale)))

    def extra_repr(self) -> str:
        """Shape and initial scale."""
        text = f"shape={tuple(self.shape)}, init_scale={self.init_scale:g}"
        if self.scale_transform != "softplus":
            text += f", scale_transform={self.scale_transform!r}"
        return text


def _scale_of(rho: Tensor, scale_transform: str, tiny: float) -> Tensor:
    """Standard deviations of ``rho`` (``exp``'s floored at ``tiny``)."""
    if scale_transform == "exp":
        return rho.exp().clamp_min(tiny)
    return F.softplus(rho)


def _rho_of(scale: Tensor, scale_transform: str) -> Tensor:
    """The ``rho`` of standard deviations ``scale``: inverse of :func:`_scale_of`."""
    if scale_transform == "exp":
        return scale.log()
    return inverse_softplus(scale)


class PointMassPosterior(Posterior):
    """A point mass (Dirac delta) at a learned value: MAP estimation.

    With a point-mass posterior the ELBO reduces to the log joint density
    ``log p(y | w) + log p(w)``, i.e. maximum a posteriori training; the KL term
    is then the negative log prior density (no entropy term).

    Args:
        shape: shape of the weight tensor.
        init_loc: initial value.
    """

    def __init__(self, shape: Sequence[int], init_loc: Tensor) -> None:
        super().__init__(shape)
        # setattr keeps the class-level annotation ``loc: Tensor`` honest for mypy.
        setattr(self, "loc", PyroParam(init_loc.detach().clone(), constraints.real))  # noqa: B010

    def median(self) -> Tensor:
        """The value ``loc`` (a view of it, without gradient history)."""
        return self._loc_values()

    def distribution(self) -> TorchDistributionMixin:
        """``Delta(loc)`` over the whole tensor."""
        self.check_written()
        return dist.Delta(self.loc, event_dim=len(self.shape))

    def reset_parameters(self, init_loc: Tensor | None = None) -> None:
        """Set the value to ``init_loc``.

        ``None``: drawn by :attr:`~Posterior.loc_init`, or kept (see
        :meth:`Posterior.reset_parameters`).
        """
        with torch.no_grad():
            self._set_loc(init_loc)

    def extra_repr(self) -> str:
        """Shape."""
        return f"shape={tuple(self.shape)}"


def elementwise_quantiles(
    distribution: TorchDistributionMixin,
    quantiles: Sequence[float] | Tensor,
    family: str,
) -> Tensor:
    """Quantiles of an elementwise distribution, ``(len(quantiles), *shape)``.

    A Normal (under any ``Independent``) gives ``loc + scale * Phi^-1(q)``, a
    point mass its value at every ``q``.

    Args:
        distribution: the distribution of a whole weight tensor.
        quantiles: probabilities in ``(0, 1)``.
        family: the name of what gave ``distribution``, for the error.

    Raises:
        ValueError: if ``quantiles`` are not probabilities in ``(0, 1)``.
        NotImplementedError: for other distributions.

    Example:
        >>> import pyro.distributions as dist, torch
        >>> normal = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
        >>> elementwise_quantiles(normal, [0.5], "Normal")
        tensor([[0., 0.]])
    """
    base = distribution
    while isinstance(base, dist.Independent):
        base = base.base_dist
    if isinstance(base, dist.Delta):
        value: Tensor = base.v
        probs = _probabilities(quantiles, value)
        return value.expand(len(probs), *value.shape).clone()
    if isinstance(base, dist.Normal):
        probs = _probabilities(quantiles, base.loc)
        probs = probs.reshape(-1, *([1] * base.loc.dim()))
        result: Tensor = base.icdf(probs)
        return result
    raise NotImplementedError(f"quantiles() is not available for {family}")


def _probabilities(quantiles: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    probs = torch.as_tensor(quantiles, dtype=like.dtype, device=like.device)
    if probs.dim() != 1 or not bool(((probs > 0) & (probs < 1)).all()):
        raise ValueError(
            f"quantiles must be a sequence of probabilities in (0, 1), got {quantiles}"
        )
    return probs


class VariationalFamily:
    """Specification of a variational family; builds one posterior per tensor."""

    def build(self, shape: Sequence[int], init_loc: Tensor) -> Posterior:
        """Create the posterior module of a tensor of ``shape``."""
        raise NotImplementedError


@dataclass(frozen=True, repr=False)
class MeanFieldNormal(VariationalFamily):
    """Mean-field Normal family (the default).

    Args:
        init_scale: initial posterior standard deviation of every weight. Small
            values (default ``1e-3``) let the network first fit the data like a
            deterministic one; the scales then grow where the data allow.
        scale_transform: how the learnable ``rho`` gives the standard
            deviation: ``"softplus"`` (default, ``softplus(rho)``) or ``"exp"``
            (``exp(rho)``: ``rho`` is the log standard deviation, as in
            torch_blue and Pyro's ``AutoNormal``; :mod:`pyrolite_bnn.vi` uses
            it). Under Adam the two train alike at small scales, where
            ``softplus(rho)`` is ``exp(rho)`` to first order.

    Example:
        >>> import pyrolite_bnn as bnn
        >>> layer = bnn.VILinear(3, 2, variational=bnn.MeanFieldNormal(init_scale=0.01))
        >>> layer.posterior["weight"]
        MeanFieldNormalPosterior(shape=(2, 3), init_scale=0.01)
        >>> log_scaled = bnn.MeanFieldNormal(0.01, scale_transform="exp")
        >>> bnn.VILinear(3, 2, variational=log_scaled).posterior["weight"].rho[0, 0]
        tensor(-4.6052, grad_fn=<SelectBackward0>)
    """

    init_scale: float = 1e-3
    scale_transform: ScaleTransform = "softplus"

    def __post_init__(self) -> None:
        check_real(self.init_scale, "MeanFieldNormal init_scale")
        if not (self.init_scale > 0 and math.isfinite(self.init_scale)):
            raise ValueError(
                f"MeanFieldNormal init_scale must be positive, got {self.init_scale!r}"
            )
        _check_scale_transform(self.scale_transform)

    def __repr__(self) -> str:
        text = f"MeanFieldNormal(init_scale={self.init_scale!r}"
        if self.scale_transform != "softplus":
            text += f", scale_transform={self.scale_transform!r}"
        return text + ")"

    def build(self, shape: Sequence[int], init_loc: Tensor) -> Posterior:
        """Create a :class:`MeanFieldNormalPosterior`."""
        return MeanFieldNormalPosterior(
            shape, init_loc, self.init_scale, self.scale_transform
        )


@dataclass(frozen=True)
class PointMass(VariationalFamily):
    """Point-mass family: maximum a posteriori (MAP) weights.

    Example:
        >>> import pyrolite_bnn as bnn
        >>> layer = bnn.VILinear(3, 2, variational=bnn.PointMass())
        >>> type(layer.posterior["weight"]).__name__
        'PointMassPosterior'
    """

    def build(self, shape: Sequence[int], init_loc: Tensor) -> Posterior:
        """Create a :class:`PointMassPosterior`."""
        return PointMassPosterior(shape, init_loc)
