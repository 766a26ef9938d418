"""The random variables of a network: every Bayesian layer under a root module.

A network is any module tree: ``VIModule`` subclasses, ``bnn`` containers and
plain ``torch.nn`` containers (``nn.Sequential``, ``nn.ModuleList``,
``nn.ModuleDict``, any ``nn.Module``) in any mix. Each Bayesian layer's
variables get site names from the layer's path below the root
(``"body.0.weight"``); a layer reachable at several paths (weight sharing) is
listed once, at its first path, and marked ``shared``.
"""

from __future__ import annotations

from collections.abc import Container
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any

from pyro.nn import PyroModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pyrolite_bnn._context_values import set_while
from pyrolite_bnn._pyro_module import (
    LocalPyroModule,
    keep_store_in,
    sample_attribute_names,
    structure_version,
)
from pyrolite_bnn._pyro_statements import (
    PyroStatement,
    attributes_read_in,
    may_read_any_attribute,
    pyro_statement_in,
    pyro_statement_refusal,
)
from pyrolite_bnn.module import NOT_NETWORK, VIModule
from pyrolite_bnn.variables import RandomVariable

__all__ = [
    "CACHE_PREFIX",
    "bayesian_positions",
    "check_bayesian_network",
    "collect_variables",
    "couples_examples",
    "facts_kept_for_the_call",
    "is_cached_fact",
    "network_children",
    "network_modules",
    "outermost_bayesian",
    "refuse_pyro_statements",
    "uses_batch_statistics",
]


def network_children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Network children of ``module``, duplicates included, in order."""
    is_vi = isinstance(module, VIModule)
    return [
        (name, child)
        for name, child in module._modules.items()
        if child is not None and not (is_vi and name in NOT_NETWORK)
    ]


def _network_child(module: nn.Module, name: str) -> nn.Module | None:
    """``module``'s network child ``name`` (``None``: none), without a listing."""
    if isinstance(module, VIModule) and name in NOT_NETWORK:
        return None
    return module._modules.get(name)


def collect_variables(root: nn.Module) -> list[RandomVariable]:
    """All random variables below ``root`` (``root`` included), in module order."""
    cached = _cached(root, "_pyrolite_variables")
    if cached is not None:
        return list(cached)
    layers: dict[int, tuple[str, VIModule]] = {}
    positions: dict[int, int] = {}
    plain_containers = False

    def visit(module: nn.Module, prefix: str) -> None:
        nonlocal plain_containers
        if isinstance(module, PyroModule) and not isinstance(module, VIModule):
            keep_store_in(module)  # a Pyro module of the user's, run in local mode
        if isinstance(module, VIModule):
            key = id(module)
            positions[key] = positions.get(key, 0) + 1
            if positions[key] > 1:
                return
            layers[key] = (prefix, module)
            if prefix or not module.has_pyro_name():
                # A root keeps the name a PyroModule parent gave it: Pyro reads
                # an empty name as "not yet attached" and attaches it again.
                module.adopt_pyro_name(prefix)
        children = network_children(module)
        if children and not isinstance(module, VIModule):
            plain_containers = True
        for name, child in children:
            visit(child, f"{prefix}.{name}" if prefix else name)

    visit(root, "")
    found = [
        RandomVariable(
            f"{prefix}.{name}" if prefix else name,
            name,
            shape,
            module,
            module.posterior[name],
            positions[key] > 1,
            root,
        )
        for key, (prefix, module) in layers.items()
        for name, shape in module.declared_variables().items()
    ]
    _store(root, "_pyrolite_variables", tuple(found), plain_containers)
    return found


# Facts about trees holding plain containers, kept for one outermost call.
_CALL_FACTS: ContextVar[dict[tuple[int, str], Any] | None] = ContextVar(
    "pyrolite_call_facts", default=None
)


def facts_kept_for_the_call() -> AbstractContextManager[None]:
    """Keep every fact about a module tree until the body ends (one network call).

    A tree holding plain containers is never cached across calls (see
    :func:`_store`), but it does not change while one call runs: its walk
    and facts are found once per call, not once per question. (No generator
    context manager: it runs on every network call.)
    """
    return set_while(_CALL_FACTS, {})


#: The prefix of the attributes :func:`_store` keeps on a network's root.
CACHE_PREFIX = "_pyrolite_"


def is_cached_fact(key: str) -> bool:
    """Whether the attribute ``key`` of a module is a fact this module caches.

    Such attributes are the library's, not the user's: a plain torch module
    made from a network (``to_deterministic``) must not take them along.

    Example:
        >>> is_cached_fact("_pyrolite_variables"), is_cached_fact("hidden")
        (True, False)
    """
    return key.startswith(CACHE_PREFIX)


def _cached(root: nn.Module, key: str) -> Any:
    """What :func:`_store` kept on ``root`` under ``key`` (``None``: stale or none)."""
    cached = root.__dict__.get(key)
    # The module's id too: a state dict moved to another object (torch_blue's
    # in-place conversion, copies) must not bring facts about the old one.
    if cached is not None and cached[:2] == (structure_version(), id(root)):
        return cached[2]
    call_facts = _CALL_FACTS.get()
    return None if call_facts is None else call_facts.get((id(root), key))


def _store(root: nn.Module, key: str, value: Any, plain_containers: bool) -> None:
    """Keep ``value`` derived from ``root``'s module tree until the tree changes.

    Plain torch containers change without telling this library (their
    ``__setattr__`` does not bump :func:`structure_version`): facts about
    trees holding one are kept only for the running call
    (:func:`facts_kept_for_the_call`).
    """
    assert is_cached_fact(key), key
    if not plain_containers:
        object.__setattr__(root, key, (structure_version(), id(root), value))
        return
    call_facts = _CALL_FACTS.get()
    if call_facts is not None:
        call_facts[(id(root), key)] = value


def _holds_plain_containers(modules: list[tuple[str, nn.Module]]) -> bool:
    """Whether a plain ``torch.nn`` module with children is among a network's.

    Args:
        modules: the network's modules, :func:`network_modules` of its root.
    """
    # A plain module's network children are all its children (network_children).
    return any(
        not isinstance(module, VIModule)
        and any(child is not None for child in module._modules.values())
        for _, module in modules
    )


def network_modules(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every module of the network below ``root`` once, with its first path.

    Priors, posteriors and assigned guides are not part of the network.
    Within one call (:func:`facts_kept_for_the_call`) the walk is made once.
    """
    call_facts = _CALL_FACTS.get()
    if call_facts is not None:
        walked = call_facts.get((id(root), "_walk"))
        if walked is not None:
            return list(walked)
    found: dict[int, tuple[str, nn.Module]] = {}
    stack = [("", root)]
    while stack:
        prefix, module = stack.pop()
        if id(module) in found:
            continue
        found[id(module)] = (prefix, module)
        stack.extend(
            (f"{prefix}.{name}" if prefix else name, child)
            for name, child in reversed(network_children(module))
        )
    if call_facts is not None:
        call_facts[(id(root), "_walk")] = tuple(found.values())
    return list(found.values())


def uses_batch_statistics(module: _BatchNorm) -> bool:
    """Whether ``module`` normalises with batch statistics (torch's rule)."""
    return module.training or (
        module.running_mean is None and module.running_var is None
    )


def couples_examples(root: nn.Module) -> bool:
    """Whether a batch norm of ``root`` now takes statistics over the batch.

    Then an example's output depends on the other examples' activations, so
    every example of a particle must see the same weights: output moments
    (independent per example) would be a different model with a different
    expected loss. Batch statistics are used in training mode and, without
    running statistics, in evaluation mode too; the modules are found once
    per module tree, their mode is read per call.
    """
    norms = _cached(root, "_pyrolite_batch_norms")
    if norms is None:
        modules = network_modules(root)
        norms = tuple(module for _, module in modules if isinstance(module, _BatchNorm))
        _store(root, "_pyrolite_batch_norms", norms, _holds_plain_containers(modules))
    return any(uses_batch_statistics(norm) for norm in norms)


def outermost_bayesian(root: nn.Module, limit: int = 2) -> list[VIModule]:
    """Outermost ``VIModule``s below ``root``, one per position, up to ``limit``.

    A layer object used at two positions is listed twice.
    """
    found: list[VIModule] = []
    stack = [root]
    while stack and len(found) < limit:
        module = stack.pop()
        if isinstance(module, VIModule):
            found.append(module)
            continue
        stack.extend(child for _, child in reversed(network_children(module)))
    return found


def runs_on_its_own(network: VIModule) -> bool:
    """Whether ``network``, the only one in a plain module, runs as its own network.

    With an assigned guide (its weights come from that guide) or without
    random variables it does, and the plain module around it is no network
    of its own; otherwise the plain module runs as one network (with its
    generated guide) and ``network`` as its layer.
    """
    return network.guide.inner is not None or not network.random_variables()


def bayesian_positions(root: nn.Module, limit: int = 2) -> int:
    """Positions of outermost Bayesian modules below ``root`` (up to ``limit``)."""
    return len(outermost_bayesian(root, limit))


def has_sequence_first_layers(root: nn.Module) -> bool:
    """Whether ``root`` holds a Bayesian ``batch_first=False`` sequence layer.

    Such a layer only runs in a network whose input is sequence-first, so its
    activations are folded ``(L * S, B, ...)``: dimension 0 is not the batch. A
    plain torch one says nothing about the input's layout (a batch-first
    network may transpose for it), so it does not count.
    """
    cached = _cached(root, "_pyrolite_sequence_first")
    if cached is not None:
        return bool(cached)
    found = any(
        isinstance(m, VIModule) and getattr(m, "batch_first", True) is False
        for m in root.modules()
    )
    _store(
        root,
        "_pyrolite_sequence_first",
        found,
        _holds_plain_containers(network_modules(root)),
    )
    return found


def refuse_pyro_statements(root: nn.Module) -> None:
    """Refuse ``pyro.sample`` / ``pyro.param`` in a ``forward`` of the network.

    For the PyTorch-style path, which no Pyro handler watches (see
    :mod:`pyrolite_bnn._pyro_statements`). A ``PyroSample`` attribute of a
    module of the network (other than a Bayesian layer's random variables)
    that the network's ``forward`` code reads is a ``pyro.sample`` statement
    too, and refused the same way; one it does not read is never drawn. Every
    one of a module whose ``forward`` is not read (torch's, Pyro's or this
    library's: ``PyroModule[nn.Linear]`` with a ``PyroSample`` weight) counts
    as read (:func:`~pyrolite_bnn._pyro_statements.may_read_any_attribute`).

    Found once per module tree, as the network's other facts. A Pyro module
    of the user's (no library module) does not say when it gains or loses a
    ``PyroSample`` attribute: the attributes of those the code reads from
    alone are looked up on every call (none in most networks).

    Raises:
        ValueError: naming the module class and the statement or attribute.
    """
    cached = _cached(root, "_pyrolite_pyro_statement")
    if cached is None:
        modules = network_modules(root)
        read = _attributes_read(modules)
        found = next(
            (
                (type(module), statement, path)
                for path, module in modules
                if (statement := _statement_kept_by(module, read)) is not None
            ),
            (),
        )
        users_pyro_modules_read = tuple(
            (path, module, read[id(module)])
            for path, module in modules
            if isinstance(module, PyroModule)
            and not isinstance(module, LocalPyroModule)
            and id(module) in read
        )
        cached = (found, users_pyro_modules_read)
        plain_containers = _holds_plain_containers(modules)
        _store(root, "_pyrolite_pyro_statement", cached, plain_containers)
    found, users_pyro_modules_read = cached
    if found:
        raise pyro_statement_refusal(*found)
    for path, module, names in users_pyro_modules_read:
        attribute = _sample_attribute_of(module, names)
        if attribute is not None:
            raise pyro_statement_refusal(type(module), attribute, path)


class _AnyName(Container[str]):
    """The attributes read by code that is not read: any of them."""

    def __contains__(self, name: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "<any attribute>"


_ANY_NAME = _AnyName()
_NO_NAME: frozenset[str] = frozenset()


def _attributes_read(
    modules: list[tuple[str, nn.Module]],
) -> dict[int, Container[str]]:
    """The attributes the network's ``forward`` code reads, by the read module's id.

    Each chain a module's code reads (:func:`attributes_read_in`) is followed
    through the module's children: ``self.inner.g`` is ``g`` read from
    ``inner``. A module whose ``forward`` may read any of its attributes
    (:func:`may_read_any_attribute`: torch's, Pyro's or this library's code)
    reads them all.

    Args:
        modules: the network's modules, :func:`network_modules` of its root.
    """
    read: dict[int, set[str]] = {}
    for _, reader in modules:
        for chain in attributes_read_in(type(reader)):
            holder = reader
            for name in chain:
                child = _network_child(holder, name)
                if child is None:
                    read.setdefault(id(holder), set()).add(name)
                    break
                holder = child
    found: dict[int, Container[str]] = {
        key: frozenset(names) for key, names in read.items()
    }
    for _, reader in modules:
        if may_read_any_attribute(type(reader)):
            found[id(reader)] = _ANY_NAME
    return found


def _statement_kept_by(
    module: nn.Module, read: dict[int, Container[str]]
) -> PyroStatement | None:
    """A Pyro statement of ``module`` that holds until its tree changes.

    One in its class's ``forward`` code, or a sample attribute of a library
    module (whose changes :func:`structure_version` counts) that the network
    reads (``read``, from :func:`_attributes_read`).
    """
    if isinstance(module, LocalPyroModule):
        attribute = _sample_attribute_of(module, read.get(id(module), _NO_NAME))
        if attribute is not None:
            return attribute
    return pyro_statement_in(type(module))


def _sample_attribute_of(
    module: nn.Module, read: Container[str]
) -> PyroStatement | None:
    """``module``'s first ``PyroSample`` attribute in ``read`` (not a random variable).

    A :class:`VIModule`'s declared random variables are ``PyroSample``
    attributes too: the network's weights, drawn by its guide.
    """
    if read is _NO_NAME:
        return None
    declared = module.declared_variables() if isinstance(module, VIModule) else {}
    return next(
        (
            PyroStatement("sample", attribute=name)
            for name in sample_attribute_names(module)
            if name in read and name not in declared
        ),
        None,
    )


def per_particle_modules(root: nn.Module) -> frozenset[int]:
    """Ids of the modules at or below one that runs its forward per particle.

    See :meth:`~pyrolite_bnn.VIModule.runs_per_particle`: their weights are
    drawn, never read as output moments.
    """
    cached = _cached(root, "_pyrolite_per_particle")
    if cached is not None:
        return frozenset(cached)
    found: set[int] = set()
    for module in root.modules():
        if isinstance(module, VIModule) and module.runs_per_particle():
            found.update(id(m) for m in module.modules())
    _store(
        root,
        "_pyrolite_per_particle",
        frozenset(found),
        _holds_plain_containers(network_modules(root)),
    )
    return frozenset(found)


def check_bayesian_network(model: object, who: str) -> None:
    """Refuse a ``model`` without Bayesian layers, naming the entry point.

    Args:
        model: a ``bnn.VIModule``, or a torch module holding bnn layers.
        who: what needs it (``"predict needs"``), the start of the message.

    Raises:
        TypeError: for anything else (a torch module without bnn layers, a
            tensor).
    """
    if isinstance(model, VIModule) or (
        isinstance(model, nn.Module) and bayesian_positions(model, limit=1)
    ):
        return
    raise TypeError(
        f"{who} a network with Bayesian layers (a bnn.VIModule, or a torch module "
        f"holding bnn layers), got {type(model).__name__}"
        + (" without any" if isinstance(model, nn.Module) else "")
    )
