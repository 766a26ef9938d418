"""Weight decay in a Bayesian network: kept off the parameters that set a scale.

A scale (a posterior standard deviation, a learned noise scale, a learned
prior's scale) is trained through an unconstrained parameter:
``softplus(rho)`` or ``exp(log_scale)``. An optimizer's ``weight_decay`` pulls
that parameter towards 0, which moves the scale towards a constant of order 1
(``softplus(0) = 0.69``, ``exp(0) = 1``), not towards 0: it widens the
posterior instead of regularising anything (the prior, through the KL term, is
the network's regulariser). :func:`decay_groups` builds an optimizer's
parameter groups that decay everything else; :func:`scale_parameters` says
which parameters set a scale. The loss's warning about decayed scales
(:class:`~pyrolite_bnn.loss.KullbackLeiblerLoss`) names the parameters
:func:`scale_parameters` finds, so that the groups of :func:`decay_groups`
silence it.
"""

from __future__ import annotations

import re
from typing import Any, cast

from torch import Tensor, nn
from torch.nn.utils import parametrize

from pyrolite_bnn._distributed import unwrap
from pyrolite_bnn._validation import check_non_negative
from pyrolite_bnn.guides import ParticleGuide

__all__ = ["decay_groups", "is_scale_parameter", "scale_parameters"]

# The name of a parameter that holds a scale unconstrained: the library's
# ``rho_unconstrained`` / ``raw_scale_unconstrained`` / ``log_scale``,
# torch_blue's ``log_std`` / ``_weight_log_std``. Only the parameter's own name
# (the last component) counts: a module may be called ``scale``.
_SCALE_LEAF = re.compile(
    r"^(rho|raw_scale|log_scale|(_\w+_)?log_std)(_unconstrained)?$"
)


def is_scale_parameter(name: str) -> bool:
    """Whether the parameter ``name`` sets a scale through an unconstrained value.

    By the parameter's own name, the last part of ``name``: the posteriors'
    ``rho_unconstrained``, a learned noise's ``raw_scale_unconstrained``, a
    ``LearnedNormalPrior``'s ``log_scale``, :mod:`pyrolite_bnn.vi`'s
    ``log_std``. :func:`scale_parameters` applies it to a module's parameters,
    and recognises the scales of Pyro guides and reparametrised tensors too.

    Example:
        >>> is_scale_parameter("posterior.weight.rho_unconstrained")
        True
        >>> is_scale_parameter("scale.posterior.weight.loc_unconstrained")
        False
    """
    return _SCALE_LEAF.match(name.rsplit(".", 1)[-1]) is not None


def scale_parameters(module: nn.Module) -> dict[str, Tensor]:
    """The parameters of ``module`` that set a scale through an unconstrained value.

    Named as ``module.named_parameters()`` names them (a
    ``DistributedDataParallel`` or ``torch.compile`` wrapper: as the network
    inside it names them). A parameter sets a scale if

    * its name does (:func:`is_scale_parameter`): the posteriors' ``rho``, a
      learned noise scale, a learned prior's ``log_scale``;
    * it is the original of a tensor reparametrised with
      ``torch.nn.utils.parametrize`` whose name does
      (``...parametrizations.rho_unconstrained.original`` of a clamped
      ``rho``): recognised as that tensor's, not by its own name;
    * an assigned Pyro guide declares it with a positive constraint
      (:meth:`~pyrolite_bnn.guides.ParticleGuide.positive_parameters`:
      ``AutoNormal``'s ``scales``, ``AutoLowRankMultivariateNormal``'s
      ``scale``).

    Args:
        module: a network, a loss (its learned noise scale), or any module.

    Returns:
        ``{name: parameter}``, in the order of ``named_parameters()``.

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
    module = unwrap(module)
    positive: set[int] = set()
    reparametrised: dict[int, str] = {}
    for prefix, submodule in module.named_modules():
        if isinstance(submodule, ParticleGuide):
            positive.update(map(id, submodule.positive_parameters().values()))
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
        if id(parameter) in positive
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

    Args:
        model: the network (or a ``DistributedDataParallel`` or
            ``torch.compile`` wrapper of it).
        loss_fn: the loss, whose likelihood may hold a learned noise scale
            (``bnn.Normal()``, ``bnn.StudentT()``): its parameters are
            trained with the network's and are grouped as well. ``None``: the
            groups hold the model's parameters only.
        weight_decay: the decay of the first group, ``>= 0``.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...],
        "weight_decay": 0.0}]``: every parameter of ``model`` and ``loss_fn``
        (frozen ones too, as ``model.parameters()`` holds them) once, the
        ones :func:`scale_parameters` finds in the second group. Both
        groups are there even when one is empty.

    Raises:
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
    decay = check_non_negative(weight_decay, "weight_decay")
    modules = [model] if loss_fn is None else [model, loss_fn]
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
