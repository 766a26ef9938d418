"""Which tensors of a module set a scale through an unconstrained value.

A scale (a posterior standard deviation, a learned noise scale, a learned
prior's scale) is trained through an unconstrained parameter:
``softplus(rho)``, ``exp(log_scale)``. The library's posteriors, priors and
likelihoods say which of their tensors those are (:class:`DeclaresScales`);
:func:`tensor_parameters` finds the parameters behind such a tensor when
``torch.nn.utils.parametrize`` or ``prune`` has moved it. Modules that declare
nothing are read by their parameters' names (:func:`is_scale_name`:
torch_blue's ``log_std``).
"""

from __future__ import annotations

import re
from typing import cast

from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["DeclaresScales", "is_scale_name", "tensor_parameters"]

# The name of a parameter that holds a scale unconstrained: the library's
# ``rho_unconstrained`` / ``raw_scale_unconstrained`` / ``log_scale``,
# torch_blue's ``log_std`` / ``log_scale`` and their layer-level aliases
# ``_weight_log_std`` / ``_weight_log_scale``. Only the parameter's own name
# (the last component) counts: a module may be called ``scale``.
_SCALE_LEAF = re.compile(r"^(rho|raw_scale|(_\w+_)?log_(std|scale))(_unconstrained)?$")


def is_scale_name(name: str) -> bool:
    """Whether the parameter name ``name`` is one of a scale's unconstrained value.

    Only its last part counts (``"scale.weight"`` is no scale's).

    Example:
        >>> is_scale_name("layer._weight_log_scale"), is_scale_name("log_std")
        (True, True)
        >>> is_scale_name("scale.posterior.weight.loc_unconstrained")
        False
    """
    return _SCALE_LEAF.match(name.rsplit(".", 1)[-1]) is not None


class DeclaresScales:
    """A module that says which of its tensors set a scale, unconstrained.

    The base classes of the library's posteriors
    (:class:`~pyrolite_bnn.distributions.variational.Posterior`), priors
    (:class:`~pyrolite_bnn.Prior`) and likelihoods
    (:class:`~pyrolite_bnn.PredictiveDistribution`) inherit it; a subclass
    with a learned scale overrides :meth:`scale_parameter_names`.
    :func:`~pyrolite_bnn.decay.scale_parameters` reads the declarations, so a
    new family's scales are kept off weight decay by declaring them.
    """

    def scale_parameter_names(self) -> tuple[str, ...]:
        """The tensors of this module that set a scale through an unconstrained value.

        By their names in the module's own ``named_parameters()``
        (``"rho_unconstrained"``, ``"log_scale"``): the tensor that
        ``softplus`` or ``exp`` turns into a scale. A tensor moved by
        ``torch.nn.utils.parametrize`` or ``prune`` keeps its name here
        (:func:`tensor_parameters` finds its parameters). Default: none.
        """
        return ()


def tensor_parameters(module: nn.Module, name: str) -> list[Tensor]:
    """The parameters behind the tensor ``name`` of ``module`` (a dotted path).

    The parameter itself; for a tensor reparametrised with
    ``torch.nn.utils.parametrize``, its originals (``original``, or
    ``original0``, ...); for one pruned with ``torch.nn.utils.prune``, the
    parameter ``<name>_orig``. Empty for a name that is no tensor of it.

    Example:
        >>> from torch import nn
        >>> [tuple(p.shape) for p in tensor_parameters(nn.Linear(2, 3), "bias")]
        [(3,)]
    """
    path, _, leaf = name.rpartition(".")
    try:
        owner = module.get_submodule(path) if path else module
    except AttributeError:
        return []
    if parametrize.is_parametrized(owner, leaf):
        tensors = cast(nn.ModuleDict, owner.parametrizations)
        return list(tensors[leaf].parameters(recurse=False))
    own = dict(owner.named_parameters(recurse=False))
    for key in (leaf, f"{leaf}_orig"):
        if key in own:
            return [own[key]]
    return []
