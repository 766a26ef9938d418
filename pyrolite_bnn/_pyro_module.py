"""A :class:`~pyro.nn.PyroModule` whose parameters never touch Pyro's global store.

Pyro keeps ``PyroParam`` values in a process-wide parameter store keyed by name
unless the ``module_local_params`` setting is on; two networks with the same
layer names would then silently share parameters. Setting the flag globally
would change the behaviour of the user's own Pyro code, so every module of this
library switches it on only while it is constructed and while it runs.

The library also keeps what Pyro's optimisers need: every parameter value
carries the ``.unconstrained`` link ``SVI`` follows (:class:`UnconstrainedLinks`),
the global store can name each parameter (:class:`ParameterNames`), and a
module's call leaves Pyro's global store in place, for the ``pyro.param``
statements of the user's handlers around it (:class:`StoreKeepingContext`).
``pyro.param`` statements of an assigned guide create parameters of that guide
(:class:`ParamStoreModule`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import threading
import types
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, ParamSpec, TypeVar, cast

import numpy as np
import pyro
import torch
from pyro.nn import PyroModule, PyroParam, PyroSample, pyro_method
from pyro.nn.module import _Context
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn
from torch.distributions import constraints, transform_to

from pyrolite_bnn._context_values import in_own_context, set_while
from pyrolite_bnn._handlers import pyro_wrapped
from pyrolite_bnn._weight_dtypes import check_conversion

if TYPE_CHECKING:
    from types import TracebackType

    from pyro.poutine.runtime import Message

__all__ = [
    "LocalPyroModule",
    "ModeKeepingContext",
    "ParamStoreModule",
    "ParameterNames",
    "ParamsInModule",
    "StoreKeepingContext",
    "constrained_tensor_names",
    "drop_self_links",
    "held_settings",
    "is_positive_constraint",
    "is_scale_constraint",
    "keep_store_in",
    "linked_parameters",
    "linked_value",
    "local_params",
    "local_pyro_method",
    "note_structure_change",
    "public_settings",
    "sample_attribute_names",
    "structure_stamp",
    "structure_version",
]

# Bumped whenever a LocalPyroModule gains, loses or replaces a module, tensor or
# sample-site attribute or a setting (public_settings), or deletes any
# attribute, so that
# networks can cache what they derive from their module tree.
_STRUCTURE_VERSION = 0
# The changed module's own stamp: a number of _STAMP_COUNTER, never reused in
# the process; weak, so that copies and pickles start without one.
_STAMPS: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
_STAMP_COUNTER = itertools.count(1)


def structure_version() -> int:
    """A counter that changes whenever any library module's structure changes."""
    return _STRUCTURE_VERSION


def structure_stamp(module: nn.Module) -> int:
    """A number that changes whenever ``module``'s own structure changes.

    What changes :func:`structure_version` (a child, tensor, sample site or
    setting replaced, an attribute deleted) on ``module`` itself; ``0`` for a
    module never changed since it was built. Unlike the process-wide counter,
    building or changing another module leaves it alone: a compiled loss keys
    its graphs on its network's stamps.

    Example:
        >>> import pyrolite_bnn as bnn
        >>> layer = bnn.VILinear(2, 2)
        >>> before = structure_stamp(layer)
        >>> _ = bnn.VILinear(3, 3)  # another module
        >>> structure_stamp(layer) == before
        True
        >>> layer.samples = 3
        >>> structure_stamp(layer) == before
        False
    """
    return _STAMPS.get(module, 0)


def _bump(module: nn.Module) -> None:
    global _STRUCTURE_VERSION
    _STRUCTURE_VERSION += 1
    _STAMPS[module] = next(_STAMP_COUNTER)


def note_structure_change(module: nn.Module) -> None:
    """Say that ``module``'s tree changed behind ``__setattr__`` (caches are stale)."""
    _bump(module)


# Pyro settings held by running bodies of held_settings: for each body (a
# token of its own), its thread and the values it holds; and for each setting
# held, its value from before the first hold. Pyro's settings are made what
# these say by _sync, which any later hold or release completes.
_HELD: dict[object, tuple[int, dict[str, Any]]] = {}
_BEFORE: dict[str, Any] = {}
_HELD_LOCK = threading.Lock()


def _sync() -> None:
    """Make Pyro's settings what the holds say (under ``_HELD_LOCK``).

    A held setting has the value of its earliest hold; one no longer held
    gets its value from before back. Nothing is forgotten before Pyro has
    the value: a Ctrl-C that stops this (inside ``pyro.settings.set``)
    leaves what the next hold or release of any setting completes.
    """
    wanted: dict[str, Any] = {}
    for _, values in _HELD.values():
        for name, value in values.items():
            wanted.setdefault(name, value)
    for name, value in wanted.items():
        if name not in _BEFORE:
            _BEFORE[name] = pyro.settings.get(name)
        if pyro.settings.get(name) != value:
            pyro.settings.set(**{name: value})
    for name in [name for name in _BEFORE if name not in wanted]:
        if pyro.settings.get(name) != _BEFORE[name]:
            pyro.settings.set(**{name: _BEFORE[name]})
        del _BEFORE[name]


def _release_held_in_child() -> None:
    """In a forked child, give back the settings the parent's other threads held.

    Only the forking thread goes on in the child: a setting held by another
    thread's network call at the fork would never be released there (the
    child's own Pyro modules would keep their parameters module-local), and a
    lock held then would stay locked. The forking thread's own holds stay.
    """
    global _HELD_LOCK
    _HELD_LOCK = threading.Lock()
    mine = threading.get_ident()
    for token, (thread, _) in list(_HELD.items()):
        if thread != mine:
            del _HELD[token]
    _sync()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_release_held_in_child)


@contextmanager
def held_settings(**values: Any) -> Iterator[None]:
    """Run the body with Pyro's settings ``values``, however threads interleave.

    Pyro's settings are process-wide, and ``pyro.settings.context`` restores
    the value it found on entry: two threads' overlapping contexts restored
    each other's values, so a thread's module ran in global-parameter mode in
    the middle of its call, or ``module_local_params`` stayed on for the rest
    of the program (15 of 30 rounds of concurrent module construction). Here
    every body holds its values: a setting has the value of its earliest
    hold, and the value from before the first once none holds it. (The
    settings are still process-wide: while any body holds them, every
    thread's Pyro code sees them.)

    A Ctrl-C anywhere in here leaves no hold behind: the body's hold is
    taken inside the ``try`` whose ``finally`` drops it, and dropped before
    Pyro is told; Pyro's settings left behind by a stopped update are put
    right by the next hold or release (:func:`_sync`).

    Example:
        >>> with held_settings(module_local_params=True):
        ...     pyro.settings.get("module_local_params")
        True
        >>> pyro.settings.get("module_local_params")
        False
    """
    token = object()
    try:
        with _HELD_LOCK:
            _HELD[token] = (threading.get_ident(), values)
            _sync()
        yield
    finally:
        with _HELD_LOCK:
            _HELD.pop(token, None)
            _sync()


@contextmanager
def local_params() -> Iterator[None]:
    """Run the body with Pyro's ``module_local_params`` setting switched on."""
    with held_settings(module_local_params=True):
        yield


_Module = TypeVar("_Module", bound="LocalPyroModule")
_Arguments = ParamSpec("_Arguments")
_Result = TypeVar("_Result")


def local_pyro_method(
    method: Callable[Concatenate[_Module, _Arguments], _Result],
) -> Callable[Concatenate[_Module, _Arguments], _Result]:
    """Pyro's ``pyro_method`` for a method of a :class:`LocalPyroModule`.

    The method runs as a call of the module runs ``forward``: its
    ``PyroParam`` attributes read inside are ``param`` statements (with
    module-local parameters, and the links Pyro's optimisers follow), so
    Pyro inference finds the parameters a method other than ``forward``
    reads.
    """
    in_context = pyro_method(method)

    @functools.wraps(method)
    def run(
        self: _Module, /, *args: _Arguments.args, **kwargs: _Arguments.kwargs
    ) -> _Result:
        with local_params(), linked_parameters(self):
            return in_context(self, *args, **kwargs)

    return run


class LocalPyroModule(PyroModule):
    """``PyroModule`` whose parameters are local to the module tree.

    Parameters appear in ``module.parameters()`` and ``state_dict()`` like any
    ``torch.nn.Module``; inside Pyro inference (``SVI``) they are reported with
    ``param`` statements, so Pyro optimisers find them too.
    """

    def __init__(self, name: str = "") -> None:
        with local_params():
            super().__init__(name)
            object.__setattr__(self, "_pyro_context", StoreKeepingContext())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with local_params(), linked_parameters(self._names_root()):
            return super().__call__(*args, **kwargs)

    def _names_root(self) -> nn.Module:
        """The module whose paths name the parameters this module's call reports.

        Under Pyro a call names them in Pyro's store, for Pyro's optimisers,
        while that module lives (:class:`ParameterNames`): this module
        itself; a guide running its network's parameters, that network.
        """
        return self

    def adopt_pyro_name(self, name: str) -> None:
        """Name this module's Pyro parameters (and its submodules') under ``name``.

        Pyro names a module's parameters by its attribute path below the
        outermost ``PyroModule``; a plain torch container in between breaks
        that chain, and two layers in one ``nn.Sequential`` would otherwise
        both report ``"posterior.weight.loc"`` to Pyro's optimisers. Networks
        call this with each layer's path from the network that is run.
        """
        if self.__dict__.get("_pyro_name") == name:
            return
        object.__setattr__(self, "_pyro_name", name)
        for key, child in self._modules.items():
            if isinstance(child, LocalPyroModule):
                child.adopt_pyro_name(f"{name}.{key}" if name else key)

    def _pyro_set_supermodule(self, name: str, context: Any) -> None:
        # Pyro's hook when a parent PyroModule adopts this one: it hands over the
        # parent's call context. A parent built in Pyro's default global-parameter
        # mode has a context without a local store, which this module's calls
        # (local parameters) cannot enter ('_Context' object has no attribute
        # 'param_state'): keep this tree's own context then, and take the name.
        # The library runs the parent tree in local mode too (the parent as the
        # network's root, called by predict or a Pyro model): its context gets
        # a local store (keep_store_in).
        # Pyro also refuses a tree that has run on its own before ("submodule
        # has executed outside of supermodule": its parameters could be in the
        # global store under old names); this tree's parameters are its
        # modules' own, so a network that ran (trained with SVI, say) joins a
        # new parent like a fresh one.
        if not hasattr(context, "param_state"):
            keep_store_in(context)
            self.adopt_pyro_name(name)
            return
        _bump(self)
        _share_context(self, name, context)

    def has_pyro_name(self) -> bool:
        """Whether this module has a Pyro name (a parent ``PyroModule`` gave it one)."""
        return bool(self.__dict__.get("_pyro_name"))

    def add_module(self, name: str, module: Any) -> None:
        # Adopting a PyroModule built outside the local-parameter setting (a Pyro
        # autoguide, say) runs a consistency check that expects the setting to
        # have been on when that module was built; the adoption itself is safe.
        _bump(self)
        with held_settings(module_local_params=True, validate_poutine=False):
            super().add_module(name, module)

    def readopt(self, name: str, module: nn.Module) -> None:
        """Register ``module`` again as child ``name`` after it was removed.

        For a Pyro module that was this module's child before and has run with
        it: it still shares this tree's Pyro context, which Pyro's own
        registration would reject ("executed outside of supermodule").
        """
        _bump(self)
        nn.Module.add_module(self, name, module)

    def __setattr__(self, name: str, value: Any) -> None:
        if _is_structural(self, name, value):
            _bump(self)
        place = _place_of(self, name)
        with held_settings(module_local_params=True, validate_poutine=False):
            super().__setattr__(name, value)
        if place is not None:
            _restore_place(self, *place)

    def __delattr__(self, name: str) -> None:
        _bump(self)
        super().__delattr__(name)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        """Torch's, for a conversion that keeps the tensors real floating-point.

        Every dtype conversion (``.to()``, ``.type()``, ``.half()``...) of
        the library's modules goes through here: one to a complex or float8
        dtype is refused before anything is converted, plain torch
        submodules included (:func:`~pyrolite_bnn._weight_dtypes.check_conversion`).
        """
        if _CONVERTING.get():  # checked at the outermost module: its tree
            return super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        check_conversion(self, fn)
        drop_self_links(self.parameters())  # the whole tree, plain modules too
        # In a context of its own: a Ctrl-C that stops the restore of
        # _CONVERTING leaves later conversions checked all the same.
        return in_own_context(self._apply_checked, fn, recurse)

    def _apply_checked(self, fn: Callable[[Tensor], Tensor], recurse: bool) -> Any:
        """Torch's ``_apply`` of a conversion checked for the whole tree."""
        with set_while(_CONVERTING, True):
            return super()._apply(fn, recurse)  # type: ignore[no-untyped-call]

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
        """Torch's, the parameters it may swap freed of Pyro's links first.

        Those of this module and of the plain modules below it (an assigned
        autoguide's), which torch loads next; library modules below free
        their own (:func:`drop_self_links`).
        """
        drop_self_links(_parameters_up_to_library_modules(self))
        super()._load_from_state_dict(
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )


def _parameters_up_to_library_modules(module: nn.Module) -> Iterator[Tensor]:
    """``module``'s own parameters and those of its descendants, down to library ones.

    A :class:`LocalPyroModule` below ``module`` is not entered.
    """
    yield from module.parameters(recurse=False)
    for child in module.children():
        if not isinstance(child, LocalPyroModule):
            yield from _parameters_up_to_library_modules(child)


def drop_self_links(tensors: Iterable[Tensor]) -> None:
    """Remove the ``.unconstrained`` link to itself Pyro leaves on a parameter.

    Reading a ``PyroParam`` whose constraint is ``real`` (a posterior's
    ``loc``, an ``AutoNormal``'s ``locs``) returns the parameter itself, and
    Pyro sets ``value.unconstrained = weakref.ref(value)`` on it: a weak
    reference to itself that lives as long as the parameter.
    ``torch.utils.swap_tensors`` refuses a tensor that has one ("Cannot swap
    t1 because it has weakref associated with it"), and every conversion
    swaps under ``torch.__future__.set_swap_module_params_on_conversion(True)``
    (``.to()``, ``.double()``, ``to_empty``, ``load_state_dict``): each failed.
    The link serves the ``param`` statement that set it (``SVI`` follows it
    right after the model and guide ran), and the next read sets it again, so
    conversions drop it first, with the swap flag or without (the same
    parameters either way). Links to other tensors are left alone.

    Example:
        >>> from pyro.nn import PyroModule, PyroParam
        >>> module = PyroModule()
        >>> module.loc = PyroParam(torch.zeros(2))
        >>> module.loc is module.loc_unconstrained  # the read links it to itself
        True
        >>> drop_self_links(module.parameters())
        >>> hasattr(module.loc_unconstrained, "unconstrained")
        False
    """
    for tensor in tensors:
        link = vars(tensor).get("unconstrained")
        if isinstance(link, weakref.ref) and link() is tensor:
            delattr(tensor, "unconstrained")


def _share_context(module: PyroModule, name: str, context: _Context) -> None:
    """Pyro's adoption of ``module``'s tree under ``name``, ``context`` shared.

    What ``PyroModule._pyro_set_supermodule`` does, without its refusal of a
    tree whose context was used: each Pyro module of the tree (down chains of
    Pyro modules) takes ``context`` and the name of its path under ``name``.
    """
    object.__setattr__(module, "_pyro_name", name)
    object.__setattr__(module, "_pyro_context", context)
    for key, child in module._modules.items():
        if isinstance(child, PyroModule):
            _share_context(child, f"{name}.{key}" if name else key, context)


# Whether a conversion of a library module's tree is running (``_apply``):
# checked once, at its outermost library module, not again at each level.
_CONVERTING: ContextVar[bool] = ContextVar("pyrolite_converting", default=False)
# Whether an UnconstrainedLinks handler is already on the stack for this call.
_LINKING: ContextVar[bool] = ContextVar("pyrolite_linking", default=False)


@contextmanager
def linked_parameters(root: nn.Module) -> Iterator[None]:
    """Under Pyro, run the body inside the handlers Pyro's optimisers need.

    Those are :class:`ParameterNames` (for ``root``, the module whose call
    the body is) and :class:`UnconstrainedLinks`. Nested uses (every library
    module of a network) share the outermost ones.
    """
    if _LINKING.get() or not pyro_wrapped():
        yield
        return
    with set_while(_LINKING, True), ParameterNames(root), UnconstrainedLinks():
        yield


class UnconstrainedLinks(Messenger):
    """Give every parameter site's value the ``.unconstrained`` link Pyro expects.

    With ``module_local_params`` on, Pyro 1.9 reports a plain ``nn.Parameter``
    attribute of a ``PyroModule`` (``AutoDiagonalNormal.loc``, the
    ``cov_factor`` of ``AutoLowRankMultivariateNormal``, the weights of
    ``AutoIAFNormal``'s networks, any plain ``nn.Module`` child) with a
    ``param`` statement whose value is the ``Parameter`` itself. Values of real
    ``pyro.param`` statements and of ``PyroParam`` attributes carry
    ``value.unconstrained()``, a weak reference to the tensor the optimiser
    updates, and ``SVI.step`` calls it on every parameter site it sees
    (``'Parameter' object has no attribute 'unconstrained'``). This handler
    makes such statements return a view of the parameter that carries the link
    back to it (the parameter itself is not modified). Values decided by other
    handlers (``replay``, ``substitute``, ``lift``) are left alone.

    A ``PyroParam`` created inside the body (an autoguide meeting the
    network's sites) becomes a parameter from its initial value as it stands
    in the module-local mode: an initial value taken from a prior (its mean
    broadcast over the particle plate, stride 0, or the prior's ``loc``
    buffer itself, as ``init_to_mean`` gives for a MOPED prior or a bias of
    one weight) gave a parameter that shares memory with itself, which
    ``Adam`` refuses to update, or with the prior, which training then moved.
    Initial values (the only values here that are neither parameters nor
    linked) are copied.
    """

    def _pyro_param(self, msg: Message[..., Any]) -> None:
        if msg["value"] is None:
            msg["fn"] = _linked(msg["fn"])


def _linked(fn: Callable[..., Any]) -> Callable[..., Any]:
    def linked(*args: Any, **kwargs: Any) -> Any:
        value = fn(*args, **kwargs)
        if isinstance(value, Tensor) and not hasattr(value, "unconstrained"):
            if not isinstance(value, nn.Parameter):  # an initial value
                value = value.detach().clone(memory_format=torch.contiguous_format)
            return linked_value(value, value)
        return value

    return linked


def linked_value(value: Tensor, unconstrained: Tensor) -> Tensor:
    """``value`` with Pyro's ``.unconstrained`` link to the tensor optimised.

    A view of ``value`` when it is that tensor itself (a real-valued
    parameter), so the parameter is never modified.
    """
    alias = value.view_as(value) if value is unconstrained else value
    alias.unconstrained = weakref.ref(unconstrained)  # type: ignore[attr-defined]
    return alias


class ParameterNames(Messenger):
    """Let Pyro's optimisers name the parameters reported in the body.

    A ``pyro.optim`` optimiser looks each parameter's name up in Pyro's global
    store (``param_store.param_name(p)``): for per-parameter arguments
    (``pyro.optim.Adam(lambda name: {...})``) and as the keys of
    ``get_state()``, ``save()`` and ``load()``. With ``module_local_params`` on
    the store knows no library parameter, so every name would be ``None``. On
    exit this handler names each parameter reported in its body after its
    ``param`` site (the module path, the name Pyro's global mode would give
    it), without renaming one the store already names (``pyro.module("net",
    net)``).

    The store's table is keyed by the parameters themselves, as Pyro keys its
    own; the names this handler adds leave it when ``root`` is collected, or
    when ``root`` gives a name of its tree to another of its parameters (a
    layer replaced), so they keep no network or replaced layer alive; names
    given under other roots stay (:func:`_name_while_alive`). (Weak keys,
    as before, made ``torch.utils.swap_tensors`` refuse every parameter that
    had been trained with ``SVI``: ``.to()`` under
    ``torch.__future__.set_swap_module_params_on_conversion(True)``.)

    Args:
        root: the module whose call the body is (its parameters, those of its
            guide and of the modules it runs); for a network's guide, the
            network.
    """

    def __init__(self, root: nn.Module) -> None:
        super().__init__()
        self._root = root

    def __enter__(self) -> ParameterNames:
        self._reported: list[tuple[Tensor, str]] = []
        return super().__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc_value, traceback)
        store = pyro.get_param_store()
        # Those named so already by the library are taken too: the root runs
        # them under those names now (a layer moved in from another network).
        # A parameter of Pyro's own store (a handler's global pyro.param) is
        # the store's to name.
        run_as_named: dict[Tensor, str] = {}
        for parameter, name in self._reported:
            held = store.param_name(parameter)
            if held is None or (held == name and name not in store):
                run_as_named[parameter] = name
        self._reported = []
        if run_as_named:
            _name_while_alive(self._root, run_as_named)

    def _pyro_post_param(self, msg: Message[..., Any]) -> None:
        link = getattr(msg["value"], "unconstrained", None)
        parameter = link() if callable(link) else None
        if isinstance(parameter, Tensor) and msg["name"] is not None:
            self._reported.append((parameter, msg["name"]))


# The names ParameterNames gave in Pyro's store, per root module: strong
# references to the parameters, dropped with the module.
_NAMED: weakref.WeakKeyDictionary[nn.Module, dict[Tensor, str]] = (
    weakref.WeakKeyDictionary()
)


def _name_while_alive(root: nn.Module, names: dict[Tensor, str]) -> None:
    """Name the parameters in Pyro's store until ``root`` is collected.

    ``names``: the parameters a call of ``root`` reported under these names,
    unnamed in the store or named so already. One finalizer per root (its
    first names) takes the names out of the store, and with them the store's
    references to the parameters.

    A name of ``root``'s module tree given to another of its parameters (a
    layer replaced at the same path) is taken from the parameter ``root``
    named so before, which it no longer runs under that name: the replaced
    layer's parameters are not kept alive by their names. Nothing else is
    taken: names given under other roots stay (two networks of one
    structure, or a ``copy.deepcopy`` snapshot of one, give their own
    parameters the same names, and each network's optimiser keys its state
    by them: ``get_state()``, ``save()``, ``load()``), and so do those of
    parameters outside ``root``'s tree that it ran (a loss's likelihood,
    while another loss's runs the network).
    """
    given = _NAMED.get(root)
    if given is None:
        given = _NAMED[root] = {}
        weakref.finalize(root, _unname, given).atexit = False
    renamed = set(names.values())
    replaced = {
        parameter: name
        for parameter, name in given.items()
        if name in renamed and parameter not in names
    }
    if replaced:  # names of root's tree only: its own parameters have them now
        own = {id(parameter) for parameter in root.parameters()}
        paths = {name for parameter, name in names.items() if id(parameter) in own}
        replaced = {p: name for p, name in replaced.items() if name in paths}
        for parameter in replaced:
            del given[parameter]
        _unname(replaced, passed_over=given)
    pyro.get_param_store()._param_to_name.update(names)
    given.update(names)


def _unname(
    given: dict[Tensor, str], passed_over: dict[Tensor, str] | None = None
) -> None:
    """Take the names in ``given`` out of Pyro's store (their root is done with them).

    A name the store holds for another reason now (the store cleared, the
    parameter named again) stays. So does the name of a parameter another
    live root still holds, one whose names are neither ``given`` nor
    ``passed_over`` (the root that replaced it): a root that named it too or
    has it among its parameters (a layer moved into another network), which
    then keeps the name while it lives.
    """
    table = pyro.get_param_store()._param_to_name
    current = {
        parameter: name
        for parameter, name in given.items()
        if table.get(parameter) == name
    }
    given.clear()
    if not current:
        return
    holders = [
        (names, {id(parameter) for parameter in root.parameters()})
        for root, names in list(_NAMED.items())
        if names is not given and names is not passed_over
    ]
    for parameter, name in current.items():
        holder = next(
            (
                names
                for names, held in holders
                if parameter in names or id(parameter) in held
            ),
            None,
        )
        if holder is None:
            del table[parameter]
        else:
            holder[parameter] = name


class ParamStoreModule(nn.Module):
    """Parameters of ``pyro.param`` statements, held in a module.

    Pyro's ``ParamStoreDict.get_param`` for one module tree instead of the
    process: the first statement of a name creates the parameter from a copy
    of its initial value (stored unconstrained, as Pyro stores it; a
    real-valued ``nn.Parameter``, as ``pyro.module`` passes, is kept itself, so
    its module trains), later ones return it, constrained and with Pyro's
    ``.unconstrained`` link. Parameter
    ``"a.b"`` is the attribute path ``a.b_unconstrained``, so it is in
    ``parameters()`` and ``state_dict()`` and follows ``.to()``.

    Example:
        >>> from torch.distributions import constraints
        >>> store = ParamStoreModule()
        >>> scale = store.get_param("0.scale", torch.ones(2), constraints.positive)
        >>> [name for name, _ in store.named_parameters()]
        ['0.scale_unconstrained']
        >>> store.get_param("0.scale") is not None
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self._constraints: dict[str, constraints.Constraint] = {}

    def get_param(
        self,
        name: str,
        init_tensor: Tensor | Callable[[], Tensor] | None = None,
        constraint: constraints.Constraint = constraints.real,
        event_dim: int | None = None,
    ) -> Tensor:
        """The constrained value of parameter ``name``, created on first use.

        Raises:
            KeyError: for a first statement without an initial value.
            ValueError: for a name that is not an attribute path.
        """
        del event_dim  # as in Pyro's store: only subsampling handlers read it
        if name not in self._constraints:
            if init_tensor is None:
                raise KeyError(
                    f"pyro.param({name!r}) has no initial value, and no earlier "
                    "statement of this guide created it: the parameters of a guide "
                    "assigned to a network belong to the network "
                    "(model.parameters()), not to Pyro's global parameter store; "
                    f"give the initial value in the guide, pyro.param({name!r}, "
                    "init_tensor)"
                )
            self._create(name, init_tensor, constraint)
            self._constraints[name] = constraint
        unconstrained = self._find(name)
        constrained = transform_to(self._constraints[name])(unconstrained)
        return linked_value(constrained, unconstrained)

    def parameter_constraints(self) -> dict[str, constraints.Constraint]:
        """The constraint of each parameter, by its ``pyro.param`` name.

        Example:
            >>> from torch.distributions import constraints
            >>> store = ParamStoreModule()
            >>> _ = store.get_param("0.scale", torch.ones(2), constraints.positive)
            >>> store.parameter_constraints()
            {'0.scale': GreaterThan(lower_bound=0.0)}
        """
        return dict(self._constraints)

    def _create(
        self,
        name: str,
        init_tensor: Tensor | Callable[[], Tensor],
        constraint: constraints.Constraint,
    ) -> None:
        with torch.no_grad():
            value = init_tensor() if callable(init_tensor) else init_tensor
            unconstrained = transform_to(constraint).inv(value).contiguous()
        parameter = (
            unconstrained
            if isinstance(unconstrained, nn.Parameter)
            else nn.Parameter(unconstrained.detach().clone())
        )
        *path, leaf = f"{name}_unconstrained".split(".")
        module: nn.Module = self
        try:
            for part in path:
                child = module._modules.get(part)
                if child is None:
                    child = nn.Module()
                    module.add_module(part, child)
                module = child
            module.register_parameter(leaf, parameter)
        except KeyError as error:
            raise ValueError(
                f"pyro.param name {name!r} cannot be kept as a module attribute "
                f"path ({error.args[0]}); rename the parameter"
            ) from error

    def _find(self, name: str) -> Tensor:
        # Walks the tables, not getattr, so no Pyro module reports anything.
        *path, leaf = f"{name}_unconstrained".split(".")
        module: nn.Module = self
        for part in path:
            child = module._modules[part]
            assert child is not None
            module = child
        parameter = module._parameters[leaf]
        assert parameter is not None
        return parameter


def is_positive_constraint(constraint: object) -> bool:
    """Whether ``constraint`` is ``positive`` (or ``softplus_positive``).

    Pyro stores such a value unconstrained, as its ``log`` (its inverse
    ``softplus``): the way Pyro's guides hold their scales.

    Example:
        >>> from pyro.distributions import constraints as pyro_constraints
        >>> is_positive_constraint(pyro_constraints.softplus_positive)
        True
        >>> is_positive_constraint(constraints.greater_than(1.0))
        False
    """
    return (
        isinstance(constraint, type(constraints.positive))
        and getattr(constraint, "lower_bound", None) == 0
    )


def is_scale_constraint(constraint: object) -> bool:
    """Whether a value of ``constraint`` is a scale that Pyro stores as its log.

    A positive value (:func:`is_positive_constraint`), and a matrix whose
    diagonal is stored so: a Cholesky factor (``lower_cholesky``,
    ``softplus_lower_cholesky``) or a covariance (``positive_definite``). Not
    ``unit_lower_cholesky``, whose unit diagonal is no parameter.

    Example:
        >>> is_scale_constraint(constraints.lower_cholesky)
        True
        >>> is_scale_constraint(constraints.real)
        False
    """
    return is_positive_constraint(constraint) or isinstance(
        constraint,
        (type(constraints.lower_cholesky), type(constraints.positive_definite)),
    )


def constrained_tensor_names(
    module: nn.Module, holds: Callable[[constraints.Constraint], bool]
) -> tuple[str, ...]:
    """``module``'s own tensors that hold a Pyro parameter whose constraint ``holds``.

    By their names in ``module``'s ``named_parameters()``: a ``PyroParam``
    ``scale`` is the tensor ``scale_unconstrained``; of a
    :class:`ParamStoreModule`, the tensors of its ``pyro.param`` statements
    (dotted paths below it). Read from what the module records with its
    parameters (Pyro keeps each ``PyroParam``'s constraint in the module's
    ``_pyro_params`` table, which pickles and copies keep), never from a run
    of the module, so a module saved whole and loaded again has them too.

    Example:
        >>> from pyro.nn import PyroModule, PyroParam
        >>> module = PyroModule()
        >>> module.loc = PyroParam(torch.zeros(2))
        >>> module.scale = PyroParam(torch.ones(2), constraints.positive)
        >>> constrained_tensor_names(module, is_positive_constraint)
        ('scale_unconstrained',)
    """
    if isinstance(module, ParamStoreModule):
        recorded = module.parameter_constraints()
    else:
        table = module.__dict__.get("_pyro_params", {})
        recorded = {name: entry[0] for name, entry in table.items()}
    return tuple(
        f"{name}_unconstrained"
        for name, constraint in recorded.items()
        if holds(constraint)
    )


# The packages whose classes declare no sample sites (the library's declare
# its random variables on the instance).
_DECLARE_NO_SAMPLE_SITES = frozenset({"builtins", "pyro", "pyrolite_bnn", "torch"})


def sample_attribute_names(module: nn.Module) -> tuple[str, ...]:
    """Names of ``module``'s ``PyroSample`` attributes: the sample sites it declares.

    Those set on the module (``module.g = PyroSample(prior)``, kept in Pyro's
    ``_pyro_samples`` table: Pyro has no public way to list them) and those
    its class declares (``@PyroSample`` methods, which Pyro adds to the table
    only when first read); ``()`` for a module that is no ``PyroModule``. A
    :class:`~pyrolite_bnn.VIModule`'s random variables are among them.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro.nn import PyroModule
        >>> module = PyroModule()
        >>> module.g = PyroSample(dist.LogNormal(0.0, 0.5))
        >>> sample_attribute_names(module), sample_attribute_names(nn.ReLU())
        (('g',), ())
    """
    if not isinstance(module, PyroModule):
        return ()
    names = tuple(module.__dict__.get("_pyro_samples", ()))
    if _declares_no_sample_sites(type(module)):  # nor do its bases
        return names
    declared = (
        name
        for owner in type(module).__mro__
        if not _declares_no_sample_sites(owner)
        for name, value in vars(owner).items()
        if isinstance(value, PyroSample)
    )
    return tuple(dict.fromkeys((*names, *declared)))


def _declares_no_sample_sites(owner: type) -> bool:
    """Whether ``owner`` is a class of torch's, Pyro's or the library's."""
    return owner.__module__.partition(".")[0] in _DECLARE_NO_SAMPLE_SITES


class ParamsInModule(Messenger):
    """Serve the body's ``pyro.param`` statements from a :class:`ParamStoreModule`.

    Only real ``pyro.param`` statements (those Pyro would send to its global
    store) are redirected; the ``param`` sites that ``PyroModule`` attributes
    report are left alone.

    Args:
        store: returns the module to keep the parameters in (called only when
            a statement is redirected, so it may create the module lazily).
    """

    def __init__(self, store: Callable[[], ParamStoreModule]) -> None:
        super().__init__()
        self._store = store

    def _pyro_param(self, msg: Message[..., Any]) -> None:
        if msg["value"] is None and msg["fn"] == pyro.get_param_store().get_param:
            msg["fn"] = self._store().get_param


class StoreKeepingContext(_Context):
    """Pyro's ``PyroModule`` call context, leaving the global store in place.

    With ``module_local_params`` on, Pyro's context swaps its global
    parameter store for the tree's local one during the outermost call of a
    module tree. The library's parameters never use that local store (a
    ``PyroParam`` in local mode is the module's attribute, reported by a
    ``param`` statement of its own), so the swap only took the global store
    away from the ``pyro.param`` statements made during the call: those of a
    user's handler around the network (``poutine.reparam`` with
    ``LocScaleReparam(centered=None)`` learns its centeredness with one) went
    to the tree's store, which Pyro then refused ("Support for global
    pyro.param statements in PyroModules with local param mode enabled is not
    yet implemented"). This context does not swap: such statements create
    and find their parameters in Pyro's global store, as in a plain Pyro
    model, and ``SVI`` trains them; the swap's side effects on the global
    store (its table of parameter names rebuilt, the ``.unconstrained``
    links of real-valued parameters stripped) are gone with it. The
    ``pyro.param`` statements of an assigned guide still create parameters
    of that guide (:class:`ParamsInModule`). Library modules and the Pyro
    modules they adopt (assigned autoguides) share such a context.

    An outermost call with ``module_local_params`` off (an adopted autoguide
    called on its own, ``guide()``, as Pyro users draw from a guide) switches
    it on for the call: the guide's parameters went to the global store,
    under names every network's guide shares, and a second network's guide
    took the first one's tensors there.
    """

    def __init__(self) -> None:
        super().__init__()
        self._local_setting: contextlib.AbstractContextManager[Any] | None = None

    # Whether an outermost call in global mode switches the local mode on.
    switches_local_on: ClassVar[bool] = True

    def __enter__(self) -> None:
        if (
            self.switches_local_on
            and not self.active
            and not pyro.settings.get("module_local_params")
        ):
            self._local_setting = held_settings(module_local_params=True)
            self._local_setting.__enter__()
        # Pyro's _Context.__enter__ without its swap of stores (in global mode
        # it makes none).
        self.active += 1
        self.used = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.active -= 1
        if self.active:
            return
        self.cache.clear()
        setting, self._local_setting = self._local_setting, None
        if setting is not None:
            setting.__exit__(exc_type, exc_value, traceback)


class ModeKeepingContext(StoreKeepingContext):
    """The call context of a Pyro module tree built in Pyro's global mode.

    A :class:`StoreKeepingContext` that runs in the mode its caller is in: a
    user's call in global mode is Pyro's global-mode call, a call of the
    library (local mode) swaps in the tree's local store and keeps the
    global store's names and links. Made by :func:`keep_store_in`.
    """

    switches_local_on: ClassVar[bool] = False


def keep_store_in(target: _Context | nn.Module) -> None:
    """Let a Pyro module tree built in Pyro's global mode run in local mode.

    Pyro gives a ``PyroModule`` built with ``module_local_params`` off
    (``PyroModule[nn.Sequential](...)`` in a user's script, the modules
    ``to_pyro_module_`` converts) a call context without a local store, and
    entering it with the setting on, as the library calls the modules of a
    network, raised ``'_Context' object has no attribute 'param_state'``.
    The context, shared by every module of the tree, becomes a
    :class:`ModeKeepingContext` in place (its class and a local store are
    all that change), so every module sharing it is served.

    Args:
        target: the context, or a module (a ``PyroModule``'s context; any
            other module is left alone).

    Example:
        >>> from pyro.nn import PyroModule
        >>> seq = PyroModule[nn.Sequential](nn.Linear(2, 2))
        >>> keep_store_in(seq)
        >>> with local_params():
        ...     seq(torch.zeros(1, 2)).shape
        torch.Size([1, 2])
    """
    if isinstance(target, nn.Module):
        if not isinstance(target, PyroModule):
            return
        target = target.__dict__["_pyro_context"]
    if isinstance(target, StoreKeepingContext):
        return
    if not hasattr(target, "param_state"):
        target.param_state = {"params": {}, "constraints": {}}
    target.__class__ = ModeKeepingContext
    context = cast("ModeKeepingContext", target)
    context._local_setting = None


_ORDERED_TABLES = ("_modules", "_parameters", "_buffers")


def _place_of(module: nn.Module, name: str) -> tuple[str, str, int] | None:
    """Table, key and position of child, parameter or buffer ``name``.

    A ``PyroParam`` named ``name`` is stored as ``name + "_unconstrained"``.
    """
    for key in (name, name + "_unconstrained"):
        for table in _ORDERED_TABLES:
            entries = module.__dict__.get(table, {})
            if key in entries:
                return table, key, list(entries).index(key)
    return None


def _restore_place(module: nn.Module, table: str, key: str, position: int) -> None:
    """Move ``key`` back to ``position`` of ``table`` after it was replaced.

    Pyro replaces a submodule (or a ``PyroParam``) by deleting it and adding
    the new value, which appends it: ``seq[0] = layer`` on a ``VISequential``
    moved the first layer to the end and the network ran its layers in another
    order. ``torch.nn.Module`` keeps the place of a replaced entry; so does
    this (and so the order of ``parameters()``, which optimizer state follows).
    """
    entries: dict[str, Any] = module.__dict__.get(table, {})
    if key not in entries or list(entries).index(key) == position:
        return
    order = [other for other in entries if other != key]
    order.insert(position, key)
    reordered = {other: entries[other] for other in order}
    entries.clear()
    entries.update(reordered)


def _is_structural(module: nn.Module, name: str, value: Any) -> bool:
    """Whether setting ``module.name = value`` can change modules, weights or sites.

    Or a change of a setting ``forward`` reads (:func:`public_settings`):
    what networks derive from ``batch_first``, ``dropout``, ``max_norm``... is
    stale too. (A setting's first value, set while the module is built, is
    not a change.)
    """
    if isinstance(value, (nn.Module, torch.Tensor, PyroParam, PyroSample)):
        return True
    if _is_setting(name, value) and name in module.__dict__:
        return bool(module.__dict__[name] != value)  # a change, not the first value
    tables = ("_modules", "_parameters", "_buffers", "_pyro_samples")
    return any(name in module.__dict__.get(table, ()) for table in tables)


# NumPy's scalars too (np.float32 is no float: a setting read with float(...)).
_SCALARS = (bool, int, float, str, type(None), np.number, np.bool_)


def _is_setting(name: str, value: Any) -> bool:
    """A public scalar, tuple of scalars or function attribute, not ``training``.

    ``training`` is read where it matters, on every call.
    """
    if name.startswith("_") or name == "training":
        return False
    return (
        isinstance(value, _SCALARS)
        or (isinstance(value, tuple) and all(isinstance(v, _SCALARS) for v in value))
        or isinstance(value, (types.FunctionType, types.BuiltinFunctionType))
    )


def public_settings(module: nn.Module) -> tuple[tuple[str, Hashable], ...]:
    """``(name, value)`` of the module's settings, in attribute order.

    Its public attributes that are scalars (NumPy's too), tuples of scalars or
    functions (``batch_first``, ``dropout``, ``padding``, ``activation``),
    ``training`` aside. Changing one on a library module changes
    :func:`structure_version`.

    Example:
        >>> public_settings(nn.Dropout(0.5))
        (('p', 0.5), ('inplace', False))
    """
    return tuple(
        (name, value)
        for name, value in vars(module).items()
        if _is_setting(name, value)
    )
