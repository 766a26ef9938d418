"""Export a trained Bayesian network as a plain, deterministic ``torch.nn`` module.

Every Bayesian layer becomes its ``torch.nn`` counterpart with the weights at
their posterior median (the mean, for the mean-field Normal): ``VILinear`` ->
``nn.Linear``, ``VIConv2d`` -> ``nn.Conv2d``, ``VIEmbedding`` ->
``nn.Embedding``, ``VISequential`` -> ``nn.Sequential``, ``VIModuleList`` ->
``nn.ModuleList``, ``VIResidualConnection`` -> :class:`Residual`, ... as the
layer registry (:mod:`pyrolite_bnn.layers.registry`) pairs them. The result
needs neither Pyro nor this library's particle machinery.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pyrolite_bnn import _particles
from pyrolite_bnn._context_values import in_own_context
from pyrolite_bnn._distributed import unwrap
from pyrolite_bnn._module_copy import copy_module
from pyrolite_bnn._module_hooks import warn_hooks_left_behind
from pyrolite_bnn._network import check_bayesian_network, network_children
from pyrolite_bnn._pyro_module import local_params, note_structure_change
from pyrolite_bnn.convert import ConvertedNetwork
from pyrolite_bnn.guides import guide_of
from pyrolite_bnn.layers import registry
from pyrolite_bnn.layers.batchnorm import TORCH_BATCH_NORMS
from pyrolite_bnn.layers.container import Residual
from pyrolite_bnn.module import GUIDE_STATE, VIModule

__all__ = ["DeterministicNetwork", "Residual", "to_deterministic"]


class DeterministicNetwork(nn.Module):
    """A custom ``VIModule`` network whose Bayesian layers were all made plain.

    Calls the network with one particle and drops the particle dimension of
    every output tensor (tuples, lists and dicts of them too), so it maps
    ``(B, ...)`` to ``(B, ...)`` like any ``torch.nn`` module. It runs
    through the library's call machinery and needs the library (and the
    network's own class) to load; ``torch.export.export`` of it gives a
    program that loads with torch alone (``dynamic_shapes=(({0: batch},),)``
    for a batch of any size), and ``torch.jit.trace`` works too: both record
    the layers' operations only (the library reads no value or size there;
    its checks of the inputs run in eager calls). ``torch.jit.script``
    cannot compile the call machinery.

    Args:
        network: the converted network (it declares no random variables).
    """

    def __init__(self, network: VIModule) -> None:
        super().__init__()
        self.network = network

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the network once, deterministically."""
        return in_own_context(self._run, args, kwargs)

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # In its own context: nothing_folded() cannot outlive the call.
        with _particles.nothing_folded():  # plain layers record no folding
            output = self.network(*args, samples=1, **kwargs)
        return _particles.one_particle(output)


def to_deterministic(model: nn.Module) -> nn.Module:
    """A plain ``torch.nn`` copy of ``model``, weights at their posterior median.

    The medians come from ``model.guide.median()``, so this works with the
    default guide and with any autoguide that provides ``median()``. ``model``
    itself is not changed. Frozen parts stay frozen: a plain weight whose
    posterior parameters all have ``requires_grad=False`` (a layer frozen
    with ``requires_grad_(False)``) is a parameter with ``requires_grad=False``,
    as in a copy of a frozen torch layer.

    Args:
        model: a trained network: a ``VIModule``, or a plain ``torch.nn``
            module holding Bayesian layers (``nn.Sequential(bnn.VILinear(...),
            ...)``), or their ``DistributedDataParallel`` or ``torch.compile``
            wrapper.

    Returns:
        ``nn.Linear``/``nn.Conv*``/``nn.Sequential`` modules where ``model`` is
        built from the library's layers and containers; for a custom
        ``VIModule`` subclass, a :class:`DeterministicNetwork` around a copy whose
        Bayesian layers were replaced.

    Raises:
        TypeError: if ``model`` holds no Bayesian layer, or has one of a kind
            that has no plain counterpart here (register it as a torch
            class's twin, :func:`pyrolite_bnn.layers.registry.register`, or use
            ``bnn.predict(..., mode="mean")``), or if torch cannot copy it
            (a pruned weight, a posterior's too: make the pruning permanent
            with ``torch.nn.utils.prune.remove`` first).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> relu = torch.nn.ReLU()
        >>> net = bnn.VISequential(bnn.VILinear(3, 4), relu, bnn.VILinear(4, 2))
        >>> plain = bnn.to_deterministic(net)
        >>> plain
        Sequential(
          (0): Linear(in_features=3, out_features=4, bias=True)
          (1): ReLU()
          (2): Linear(in_features=4, out_features=2, bias=True)
        )
        >>> plain(torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """
    model = unwrap(model)
    check_bayesian_network(model, "to_deterministic needs")
    clone = copy_module(model, "bnn.to_deterministic")
    means: dict[int, dict[str, Tensor]] = {}
    # The guide the network's calls draw from: for a plain module's Bayesian
    # layers (nn.Sequential(VILinear(...), ...)) the generated guide of them
    # all, as predict reads it.
    guide = guide_of(clone)
    with local_params(), torch.no_grad():
        medians = guide.median()
    for v in guide.variables():
        means.setdefault(id(v.module), {})[v.name] = medians[v.site].detach()
    before = list(clone.named_modules())
    # torch initialises the layers built here before their weights are copied
    # in: that must not move the caller's generators (an export from a
    # callback changed the rest of a training run).
    cuda = sorted(
        {t.device.index or 0 for t in clone.parameters() if t.device.type == "cuda"}
    )
    with torch.random.fork_rng(devices=cuda):
        converted = _convert(clone, means, {})
    result = _run_deterministically(converted, {})
    warn_hooks_left_behind(before, result, "bnn.to_deterministic")
    return result


def _run_deterministically(module: nn.Module, done: dict[int, nn.Module]) -> nn.Module:
    """``module`` with each outermost custom network in a :class:`DeterministicNetwork`.

    The converted custom ``VIModule``s (with plain layers) would still run
    as networks with particles; wrapped, they run once.
    """
    if isinstance(module, VIModule):
        if id(module) not in done:
            done[id(module)] = DeterministicNetwork(module)
        return done[id(module)]
    for name, child in network_children(module):
        module._modules[name] = _run_deterministically(child, done)
    return module


def _convert(
    module: nn.Module, means: dict[int, dict[str, Tensor]], done: dict[int, nn.Module]
) -> nn.Module:
    """The plain counterpart of ``module``; a module at two positions once."""
    if id(module) not in done:
        done[id(module)] = _convert_new(module, means, done)
    return done[id(module)]


def _convert_new(
    module: nn.Module, means: dict[int, dict[str, Tensor]], done: dict[int, nn.Module]
) -> nn.Module:
    # Not named_children(): it skips the second position of a shared layer.
    children = {
        name: _convert(child, means, done) for name, child in network_children(module)
    }
    entry = registry.for_bayesian(module) if isinstance(module, VIModule) else None
    if entry is not None:
        assert isinstance(module, VIModule)
        return entry.to_torch(module, means.get(id(module), {}), children)
    if isinstance(module, ConvertedNetwork):  # bnn.convert of a custom class
        return module.plain_module(children)
    if isinstance(module, VIModule):
        if module.declared_variables():
            raise TypeError(
                f"{type(module).__name__} declares random variables but has no plain "
                "counterpart: register it as the twin of a torch class "
                "(pyrolite_bnn.layers.registry.register), or use "
                "bnn.predict(..., mode='mean') instead"
            )
        # ``module`` belongs to the private copy made by to_deterministic.
        for key in GUIDE_STATE:
            module.__dict__.pop(key, None)
        module._modules = dict(children)
        note_structure_change(module)  # what the network derived from its old tree
        return module
    # A plain torch module (nn.Sequential, nn.ModuleList, a user's class) of
    # the private copy: its Bayesian children are replaced in place, and the
    # library's batch norms become torch's (the same state; the network then
    # needs no pyrolite_bnn to run or to unpickle).
    for name, child in children.items():
        module._modules[name] = child
    plain_norm = TORCH_BATCH_NORMS.get(type(module))
    if plain_norm is not None:
        module.__class__ = plain_norm
    return module
