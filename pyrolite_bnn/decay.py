"""Weight decay in a Bayesian network: kept off the parameters that set a scale.

A scale (a posterior standard deviation, a learned noise scale, a learned
prior's scale) is trained through an unconstrained parameter:
``softplus(rho)`` or ``exp(log_scale)``. An optimizer's ``weight_decay`` pulls
that parameter towards 0, which moves the scale towards a constant of order 1
(``softplus(0) = 0.69``, ``exp(0) = 1``), not towards 0: it widens the
posterior instead of regularising anything (the prior, through the KL term, is
the network's regulariser). :func:`decay_groups` builds a ``torch.optim``
optimizer's parameter groups that decay everything else,
:func:`decay_optim_args` the per-parameter arguments of a ``pyro.optim``
optimizer; :func:`scale_parameters` says which parameters set a scale. The
loss's warning about decayed scales
(:class:`~pyrolite_bnn.loss.KullbackLeiblerLoss`) names the parameters
:func:`scale_parameters` finds, so that either silences it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pyro
from pyro.params.param_store import normalize_param_name
from torch import Tensor, nn
from torch.nn.utils import parametrize

from pyrolite_bnn._distributed import unwrap
from pyrolite_bnn._pyro_module import constrained_tensor_names, is_scale_constraint
from pyrolite_bnn._scales import DeclaresScales, is_scale_name, tensor_parameters
from pyrolite_bnn._validation import check_non_negative

__all__ = [
    "decay_groups",
    "decay_optim_args",
    "is_scale_parameter",
    "scale_parameters",
]


def is_scale_parameter(name: str) -> bool:
    """Whether the parameter ``name`` sets a scale through an unconstrained value.

    By the parameter's own name, the last part of ``name``: the posteriors'
    ``rho_unconstrained``, a learned noise's ``raw_scale_unconstrained``, a
    ``LearnedNormalPrior``'s ``log_scale``, :mod:`pyrolite_bnn.vi`'s
    ``log_std`` and ``log_scale`` (a layer's ``_weight_log_std``). The rule
    for modules that do not say which of their tensors are scales:
    :func:`scale_parameters` reads the library's own declarations and Pyro's
    constraints first.

    Example:
        >>> is_scale_parameter("posterior.weight.rho_unconstrained")
        True
        >>> is_scale_parameter("scale.posterior.weight.loc_unconstrained")
        False
    """
    return is_scale_name(name)


def scale_parameters(module: nn.Module) -> dict[str, Tensor]:
    """The parameters of ``module`` that set a scale through an unconstrained value.

    Named as ``module.named_parameters()`` names them (a
    ``DistributedDataParallel`` or ``torch.compile`` wrapper: as the network
    inside it names them). A parameter sets a scale if

    * the module holding it declares it (its ``scale_parameter_names()``):
      every posterior, prior and likelihood of the library says which of its
      tensors set a scale (the posteriors' ``rho``, a
      :mod:`pyrolite_bnn.vi` family's ``log_std`` or ``log_scale``, a
      learned noise scale, a learned prior's ``log_scale``), whatever name a
      layer lists it under (a :mod:`pyrolite_bnn.vi` layer's
      ``_weight_log_scale``);
    * it holds a Pyro parameter declared with a positive constraint
      (``PyroParam(..., constraints.positive)``, ``pyro.param(...,
      constraint=positive)`` in an assigned guide: ``AutoNormal``'s
      ``scales``, ``AutoLowRankMultivariateNormal``'s ``scale``), or a
      Cholesky factor or covariance whose diagonal Pyro stores as its log
      (``lower_cholesky``, ``softplus_lower_cholesky``,
      ``positive_definite``: ``AutoStructured``'s dense ``scale_trils``), as
      the module records it (a network saved whole and loaded again too);
    * its name says so (:func:`is_scale_parameter`: torch_blue-style
      ``log_std`` in a module of one's own).

    A tensor reparametrised with ``torch.nn.utils.parametrize``
    (``...parametrizations.rho_unconstrained.original`` of a clamped ``rho``)
    or pruned is recognised as that tensor, not by its own name.

    Args:
        module: a network, a loss (its learned noise scale), or any module.

    Returns:
        ``{name: parameter}``, in the order of ``named_parameters()``.

    Raises:
        TypeError: if ``module`` is no ``torch.nn.Module`` (see
            :func:`decay_groups`).

    Example:
        >>> from torch import nn
        >>> import pyrolite_bnn as bnn
        >>> net = bnn.VISequential(bnn.VILinear(2, 3), nn.ReLU(), bnn.VILinear(3, 1))
        >>> list(scale_parameters(net))  # doctest: +NORMALIZE_WHITESPACE
        ['0.posterior.weight.rho_unconstrained', '0.posterior.bias.rho_unconstrained',
         '2.posterior.weight.rho_unconstrained', '2.posterior.bias.rho_unconstrained']
        >>> list(scale_parameters(bnn.KullbackLeiblerLoss(bnn.Normal(), 100)))
        ['predictive.raw_scale_unconstrained']
    """
    module = unwrap(_checked_module(module, "module", "scale_parameters(model)"))
    declared: set[int] = set()
    reparametrised: dict[int, str] = {}
    for prefix, submodule in module.named_modules():
        names = constrained_tensor_names(submodule, is_scale_constraint)
        if isinstance(submodule, DeclaresScales):
            names += submodule.scale_parameter_names()
        declared.update(
            id(parameter)
            for name in names
            for parameter in tensor_parameters(submodule, name)
        )
        if not parametrize.is_parametrized(submodule):
            continue
        tensors = cast(nn.ModuleDict, submodule.parametrizations)
        for tensor, parametrizations in tensors.items():
            name = f"{prefix}.{tensor}" if prefix else tensor
            for original in parametrizations.parameters(recurse=False):
                reparametrised[id(original)] = name
    return {
        name: parameter
        for name, parameter in module.named_parameters()
        if id(parameter) in declared
        or is_scale_parameter(reparametrised.get(id(parameter), name))
    }


def decay_groups(
    model: nn.Module, loss_fn: nn.Module | None = None, *, weight_decay: float
) -> list[dict[str, Any]]:
    """Optimizer parameter groups that decay every parameter but the scales.

    Weight decay on a scale's unconstrained parameter widens the posterior (see
    the module's description); these groups keep it off them, and the loss
    then gives no warning. Pass them to any ``torch.optim`` optimizer in place
    of ``model.parameters()``; further options (``lr``) apply to both groups.
    For a ``pyro.optim`` optimizer (``SVI``), which takes per-parameter
    arguments instead of groups, use :func:`decay_optim_args`.

    Args:
        model: the network itself, a ``torch.nn.Module`` (or a
            ``DistributedDataParallel`` or ``torch.compile`` wrapper of it),
            not ``model.parameters()``: which parameters set a scale is read
            from the modules that hold them.
        loss_fn: the loss module, whose likelihood may hold a learned noise
            scale (``bnn.Normal()``, ``bnn.StudentT()``): its parameters are
            trained with the network's and are grouped as well. ``None`` (a
            loss function such as ``F.mse_loss`` holds no parameters): the
            groups hold the model's parameters only.
        weight_decay: the decay of the first group, ``>= 0``.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...],
        "weight_decay": 0.0}]``: every parameter of ``model`` and ``loss_fn``
        (frozen ones too, as ``model.parameters()`` holds them) once, the
        ones :func:`scale_parameters` finds in the second group. Both
        groups are there even when one is empty.

    Raises:
        TypeError: if ``model`` or ``loss_fn`` is no ``torch.nn.Module``
            (``model.parameters()``, a loss function), or ``weight_decay`` is
            no number.
        ValueError: if ``weight_decay`` is negative, NaN or infinite.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import pyrolite_bnn as bnn
        >>> net = bnn.VISequential(bnn.VILinear(2, 3), nn.ReLU(), bnn.VILinear(3, 1))
        >>> loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=100)
        >>> groups = bnn.decay_groups(net, loss_fn, weight_decay=1e-2)
        >>> optimizer = torch.optim.AdamW(groups, lr=1e-3)
        >>> [(len(g["params"]), g["weight_decay"]) for g in optimizer.param_groups]
        [(4, 0.01), (5, 0.0)]
    """
    modules = _modules(model, loss_fn, "decay_groups")
    decay = check_non_negative(weight_decay, "weight_decay")
    scales = {id(p) for module in modules for p in scale_parameters(module).values()}
    decayed: list[Tensor] = []
    kept: list[Tensor] = []
    seen: set[int] = set()
    for module in modules:
        for parameter in module.parameters():
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            (kept if id(parameter) in scales else decayed).append(parameter)
    return [
        {"params": decayed, "weight_decay": decay},
        {"params": kept, "weight_decay": 0.0},
    ]


def decay_optim_args(
    model: nn.Module,
    loss_fn: nn.Module | None = None,
    *,
    weight_decay: float,
    **optim_args: Any,
) -> Callable[[str], dict[str, Any]]:
    """Per-parameter arguments of a ``pyro.optim`` optimizer: no decay on the scales.

    ``pyro.optim`` optimizers (for ``pyro.infer.SVI``) take no parameter
    groups; they take the arguments of each parameter's optimizer from a
    callable given the parameter's name. This one gives ``optim_args`` with
    ``weight_decay=0`` for the parameters that :func:`scale_parameters` finds
    in ``model`` and ``loss_fn`` (the same as :func:`decay_groups` keeps
    without decay), and ``weight_decay`` for every other parameter; the loss
    then gives no warning. The scales are found when Pyro asks, so a guide
    assigned after this call counts, also one assigned after the optimizer's
    first steps (another guide trained by the same ``pyro.optim`` object); a
    parameter is told by the name Pyro's parameter store gives it.

    Args:
        model: the network itself (not ``model.parameters()``), or a wrapper
            of it, as for :func:`decay_groups`.
        loss_fn: the loss module, whose likelihood may hold a learned noise
            scale; ``None``: the model's scales only.
        weight_decay: the decay of every parameter but the scales, ``>= 0``.
        **optim_args: further arguments of every parameter's optimizer
            (``lr=1e-3``, ``betas=...``).

    Returns:
        ``optim_args(name) -> dict``, for ``pyro.optim.Adam(optim_args)``.

    Raises:
        TypeError: as :func:`decay_groups`.
        ValueError: if ``weight_decay`` is negative, NaN or infinite.

    Example:
        >>> import pyro
        >>> from pyro.infer import SVI
        >>> import torch
        >>> from torch import nn
        >>> import pyrolite_bnn as bnn
        >>> net = bnn.VISequential(bnn.VILinear(2, 3), nn.ReLU(), bnn.VILinear(3, 1))
        >>> loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(), dataset_size=8)
        >>> arguments = bnn.decay_optim_args(net, loss_fn, weight_decay=1e-2, lr=1e-3)
        >>> optim = pyro.optim.AdamW(arguments)
        >>> svi = SVI(loss_fn.pyro_model(net), net.guide, optim, bnn.Trace_ELBO())
        >>> _ = svi.step(torch.randn(8, 2), torch.randn(8, 1))
        >>> arguments("0.posterior.weight.loc"), arguments("0.posterior.weight.rho")
        ({'lr': 0.001, 'weight_decay': 0.01}, {'lr': 0.001, 'weight_decay': 0.0})
        >>> arguments("likelihood.raw_scale")  # the learned noise scale
        {'lr': 0.001, 'weight_decay': 0.0}
    """
    modules = _modules(model, loss_fn, "decay_optim_args")
    decay = check_non_negative(weight_decay, "weight_decay")
    return _DecayArguments(modules, decay, optim_args)


class _DecayArguments:
    """:func:`decay_optim_args`' callable: ``optim_args`` with each parameter's decay.

    The names ``pyro.optim`` gives are classified together, scale or not: the
    modules' scales found afresh and the store name of each of the modules'
    parameters read, one pass over the parameters (the names of the global
    store's own entries, another module's, are no scale's). A name not
    classified yet (a parameter Pyro named since: its first step, a guide
    assigned after the callable was made or after the optimizer's first
    steps) classifies them again; a whole step's names cost one pass, not one
    pass each.
    """

    def __init__(
        self, modules: list[nn.Module], decay: float, optim_args: dict[str, Any]
    ) -> None:
        self.modules = modules
        self.decay = decay
        self.optim_args = optim_args
        # Whether each parameter name was a scale's when last classified.
        self.is_scale: dict[str, bool] = {}

    def __call__(self, name: str) -> dict[str, Any]:
        """The arguments of the optimizer of the parameter ``name``."""
        scale = self.is_scale.get(name)
        if scale is None:
            self.is_scale = self._classified_names()
            scale = self.is_scale.get(name, False)
        decay = 0.0 if scale else self.decay
        return {**self.optim_args, "weight_decay": decay}

    def _classified_names(self) -> dict[str, bool]:
        """Each parameter's name, as ``pyro.optim`` gives it: a scale's?"""
        store = pyro.get_param_store()
        classified = dict.fromkeys(map(normalize_param_name, store), False)
        scales = {
            id(p) for module in self.modules for p in scale_parameters(module).values()
        }
        for module in self.modules:
            for parameter in module.parameters():
                name = store.param_name(parameter)
                if name is not None:
                    classified[normalize_param_name(name)] = id(parameter) in scales
        return classified


def _modules(model: object, loss_fn: object, function: str) -> list[nn.Module]:
    """``model`` and ``loss_fn`` (if not ``None``), checked to be modules."""
    modules = [
        _checked_module(model, "model", f"{function}(model, loss_fn, weight_decay=...)")
    ]
    if loss_fn is not None:
        usage = f"{function}(model, weight_decay=...)"
        modules.append(_checked_module(loss_fn, "loss_fn", usage))
    return modules


def _checked_module(value: object, argument: str, usage: str) -> nn.Module:
    """``value`` if it is a ``torch.nn.Module``, else a ``TypeError`` with a remedy.

    ``usage`` is the call to make instead (``"decay_groups(model, ...)"``).
    """
    if isinstance(value, nn.Module):
        return value
    name = getattr(value, "__name__", None)
    what = (
        f"the function {name}"
        if callable(value) and name
        else f"an object of type {type(value).__name__}"
    )
    if argument == "loss_fn":
        advice = (
            "the loss module (bnn.KullbackLeiblerLoss(...), whose likelihood "
            "may hold a learned noise scale), or leave loss_fn out: a loss "
            f"function such as F.mse_loss holds no parameters: {usage}"
        )
    else:
        advice = (
            f"the network itself, {usage}, not model.parameters(): which "
            "parameters set a scale is read from the modules that hold them"
        )
    function = usage.split("(", 1)[0]
    raise TypeError(
        f"{function} needs a torch.nn.Module as {argument}, got {what}; pass {advice}"
    )
