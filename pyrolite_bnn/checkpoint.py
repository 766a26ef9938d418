"""Checkpoints: ``save_checkpoint`` / ``load_checkpoint`` with an architecture check.

A checkpoint is a plain dictionary written with :func:`torch.save`, holding only
tensors, numbers, strings, lists and dictionaries, so that it loads with
``torch.load(..., weights_only=True)`` (no arbitrary code runs on loading):

* ``model``: ``model.state_dict()``: the variational parameters, the prior
  hyperparameter buffers and the parameters of an assigned custom guide;
* ``optimizer`` and ``loss_fn``: their state dictionaries (or ``None``), the
  latter holding e.g. a learned noise scale; ``optimizer_class``: the
  optimizer's class name; ``optimizer_parameters``: the name of each
  parameter of each of the optimizer's groups, in order (as the model's
  ``named_parameters()`` names it, or the loss's, prefixed ``loss_fn.``;
  ``None`` for a parameter of neither): a state whose groups hold other
  parameters, or the same in another order, does not load (files written
  before these were recorded lack them);
* ``epoch``, ``extra`` (user data) and ``version`` (of ``pyrolite_bnn``);
* ``averaged``: for a model saved through a
  ``torch.optim.swa_utils.AveragedModel`` (SWA, EMA), the wrapper's own state
  (``n_averaged``, the number of networks averaged), else ``None``: ``model``
  holds the averaged network, which loads into a plain network, and loading
  into an ``AveragedModel`` also restores its count, so that the next
  ``update_parameters`` continues the average (with ``n_averaged`` at 0 it
  copies the raw network over it);
* ``fingerprint``: the model's class name, every state-dictionary key with its
  shape, and every Pyro weight site with its shape, its prior and posterior
  families (a Normal-prior checkpoint does not load into a Laplace-prior model)
  and its posterior's parameterisation where it has a choice
  (``MeanFieldNormal(scale_transform=...)``: the same ``rho`` is another
  standard deviation under ``"exp"`` than under ``"softplus"``).

Writes are atomic: the file is written to a temporary file in the same
directory, flushed to disk and then renamed over the target, so an interrupted
write leaves the previous checkpoint intact. Loading compares the fingerprint
with the model first and loads nothing on a mismatch. Parameters (of the
model and of the loss) must be finite on both sides: a diverged model is not
written over the previous checkpoint, and a file holding NaN or infinite
parameters loads nothing; the prior buffers' constraints are checked on
loading too. A save refuses what loading refuses (those parameters, prior
hyperparameters outside their constraints, nested tensors, which
``load_state_dict`` cannot copy into) and tensors that hold no values
(nothing wrote them after ``to_empty``: ``state_dict()`` passes their memory
on as it is, see :mod:`pyrolite_bnn._unwritten_tensors`), nothing else:
buffers may hold NaN or infinities (a "not computed yet" sentinel, an
attention mask), and are saved and loaded as they are, sparse ones too. A
sparse parameter's stored values are checked as a dense one's.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections import Counter, OrderedDict
from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from pyrolite_bnn._distributed import averaged_model, unwrap
from pyrolite_bnn._input_layouts import stored_values
from pyrolite_bnn._network import collect_variables
from pyrolite_bnn._state import clone_state
from pyrolite_bnn._unwritten_tensors import unwritten_state_remedies
from pyrolite_bnn._validation import check_count, check_optimizer_holds
from pyrolite_bnn.distributions.priors import Prior

__all__ = ["check_checkpoint_path", "load_checkpoint", "save_checkpoint"]

_FORMAT = "pyrolite_bnn.checkpoint"
_FORMAT_VERSION = 1
_MAX_LISTED = 5

PathLike = str | os.PathLike[str]


def _version() -> str:
    try:
        from pyrolite_bnn import __version__
    except ImportError:  # pragma: no cover - only while the package initialises
        from importlib.metadata import version

        return version("pyrolite_bnn")
    return str(__version__)


def _shape(tensor: Any) -> list[int]:
    return list(tensor.shape) if isinstance(tensor, Tensor) else []


def _fingerprint(model: nn.Module) -> dict[str, Any]:
    """Class name, state keys and shapes, weight sites with shapes and families.

    ``parameterisations`` holds only the sites whose posterior has a choice of
    parameterisation
    (:meth:`~pyrolite_bnn.distributions.variational.Posterior.parameterisation`).
    """
    sites: dict[str, list[int]] = {}
    families: dict[str, str] = {}
    parameterisations: dict[str, str] = {}
    for variable in collect_variables(model):  # plain torch roots too
        sites[variable.site] = list(variable.shape)
        prior = variable.module.prior[variable.name]
        assert isinstance(prior, Prior)
        posterior = variable.layer_posterior
        families[variable.site] = (
            f"prior {prior.family()}, posterior {type(posterior).__name__}"
        )
        parameterisation = posterior.parameterisation()
        if parameterisation:
            parameterisations[variable.site] = parameterisation
    return {
        "class": type(model).__qualname__,
        "state": {key: _shape(value) for key, value in model.state_dict().items()},
        "sites": sites,
        "families": families,
        "parameterisations": parameterisations,
    }


def _averaging_state(averaged: AveragedModel) -> dict[str, Any]:
    """An ``AveragedModel``'s own state: ``n_averaged``.

    Its ``state_dict()`` entries outside the averaged network (``module.``).
    """
    return {
        key: value
        for key, value in averaged.state_dict().items()
        if not key.startswith("module.")
    }


def _listed(names: list[str], separator: str = ", ") -> str:
    shown = separator.join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def _compare_shapes(
    what: str, saved: Mapping[str, list[int]], current: Mapping[str, list[int]]
) -> list[str]:
    """Describe the differences between two ``{key: shape}`` maps."""
    problems = []
    missing = [key for key in current if key not in saved]
    unexpected = [key for key in saved if key not in current]
    mismatched = [
        f"{key} (checkpoint {tuple(saved[key])}, model {tuple(current[key])})"
        for key in current
        if key in saved and list(saved[key]) != list(current[key])
    ]
    if missing:
        problems.append(f"{what} missing from the checkpoint: {_listed(missing)}")
    if unexpected:
        hint = ""
        if any(key.startswith("custom_guide.") for key in unexpected):
            hint = " (assign the same custom guide to the model before loading)"
        problems.append(
            f"unexpected {what} in the checkpoint: {_listed(unexpected)}{hint}"
        )
    if mismatched:
        problems.append(f"{what} with a different shape: {_listed(mismatched)}")
    return problems


def _compare_labels(
    what: str, saved: Mapping[str, str], current: Mapping[str, str]
) -> list[str]:
    """Describe the weight sites whose ``{site: label}`` entries differ.

    A site absent from ``saved`` is not compared: files written before a label
    was recorded lack it, and loading them must not be refused for that.
    """
    different = [
        f"{site} (checkpoint: {saved[site]}; model: {label})"
        for site, label in current.items()
        if site in saved and saved[site] != label
    ]
    if not different:
        return []
    return [f"weight sites with a different {what}: {_listed(different)}"]


def _non_finite_parameters(
    module: nn.Module,
    state: Mapping[str, Any],
    owner: str,
    passed_over: Collection[str] = (),
) -> list[str]:
    """The parameters of ``module`` whose values in ``state`` are not all finite.

    Each as ``"model '0.weight' holds 1 NaN and 0 inf of 16 values"``.
    Parameters only (posterior and guide parameters, a likelihood's learned
    noise scale, plain weights): a buffer may hold NaN or infinities by
    design (a "not computed yet" sentinel, an additive attention mask), and
    the prior buffers have constraints of their own, checked when they are
    loaded. A frozen parameter (``requires_grad=False``, which no training
    moves) may hold infinities by design too (a causal mask kept as a
    parameter): only its NaN count. A sparse parameter's stored values are
    read (the others are zeros). Tensors without values (the meta device),
    nested tensors (whose values torch cannot compare) and the keys in
    ``passed_over`` are passed over.
    """
    found = []
    for key, parameter in module.named_parameters(remove_duplicate=False):
        value = state.get(key)
        if (
            key in passed_over
            or not isinstance(value, Tensor)
            or value.is_meta
            or value.is_nested
            or not (value.is_floating_point() or value.is_complex())
        ):
            continue
        values = stored_values(value)
        not_a_number = values.isnan()
        finite = torch.isfinite(values) if parameter.requires_grad else ~not_a_number
        if bool(finite.all()):
            continue
        nan = int(not_a_number.sum())
        infinite = int((~finite).sum()) - nan
        stored = "" if value.layout == torch.strided else " stored"
        found.append(
            f"{owner} {key!r} holds {nan} NaN and {infinite} inf of "
            f"{values.numel()}{stored} values"
        )
    return found


def _invalid_priors(
    module: nn.Module, owner: str, passed_over: Collection[str]
) -> list[str]:
    """The priors of ``module`` whose hyperparameters break their constraints.

    What loading the state refuses (a negative scale written in place), so
    that no checkpoint is written that ``load_checkpoint`` refuses. Priors
    holding a tensor in ``passed_over`` (without values) are passed over.
    """
    found = []
    for name, prior in module.named_modules():
        if not isinstance(prior, Prior):
            continue
        prefix = f"{name}." if name else ""
        if any(key.startswith(prefix) for key in passed_over):
            continue
        try:
            prior.check_values()
        except ValueError as error:
            found.append(f"{owner} prior {name!r}: {str(error).split(': ')[0]}")
    return found


def _unsaveable(module: nn.Module, state: Mapping[str, Any], owner: str) -> list[str]:
    """Why ``state``, saved from ``module``, must not replace a checkpoint.

    What loading it would refuse, one sentence per kind of problem: tensors
    without values (nothing wrote them after ``to_empty``), each with what
    writes it; parameters with NaN or infinite values (a diverged run); prior
    hyperparameters outside their constraints; nested tensors. Empty if none.
    """
    remedies = {
        key: remedy
        for key, remedy in unwritten_state_remedies(module).items()
        if key in state
    }
    non_finite = _non_finite_parameters(module, state, owner, passed_over=remedies)
    invalid = _invalid_priors(module, owner, remedies)
    nested = [
        repr(key)
        for key, value in state.items()
        if isinstance(value, Tensor) and value.is_nested
    ]
    sentences = []
    if remedies:
        sentences.append(
            f"{owner} tensors hold no values: "
            + _listed([repr(key) for key in remedies])
            + ". Nothing wrote them after to_empty (or they were loaded from a "
            f"state saved so): {_remedies_by_tensor(remedies)}, before saving."
        )
    if non_finite:
        sentences.append(
            "parameters hold NaN or infinite values: "
            + _listed(non_finite, "; ")
            + ". Training diverged (or the values were set by hand): restore the "
            "last finite state (bnn.fit's NaN guard does) before saving."
        )
    if invalid:
        sentences.append(
            "prior hyperparameters break their constraints, and load_checkpoint "
            "would refuse the file: " + _listed(invalid, "; ") + "."
        )
    if nested:
        sentences.append(
            f"{owner} holds nested tensors, which load_state_dict cannot copy "
            "into, so the file would not load: "
            + _listed(nested)
            + ". Store them padded (torch.nested.to_padded_tensor(x, 0.0), with "
            "the lengths beside them), or register them with persistent=False "
            "to keep them out of the state."
        )
    return sentences


def _remedies_by_tensor(remedies: Mapping[str, str]) -> str:
    """What writes the tensors in ``remedies`` (``{key: remedy}``), said once each.

    One remedy alone, as it is; several, each after the keys it writes.
    """
    keys_by_remedy: dict[str, list[str]] = {}
    for key, remedy in remedies.items():
        keys_by_remedy.setdefault(remedy, []).append(repr(key))
    if len(keys_by_remedy) == 1:
        return next(iter(keys_by_remedy))
    return "; ".join(
        f"for {_listed(keys)}, {remedy}" for remedy, keys in keys_by_remedy.items()
    )


def _check_plain(value: Any, where: str) -> None:
    """Reject values that ``torch.load(weights_only=True)`` could not read back.

    Types are checked exactly: subclasses such as ``numpy.float64`` or named
    tuples would be pickled as their own classes, which a weights-only load
    refuses.
    """
    if value is None or type(value) in (bool, int, float, str, torch.Size):
        return
    if isinstance(value, Tensor):
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where} has a key of type {type(key).__name__}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoints hold only tensors and "
        "plain bool, int, float, str, None, list, tuple and dict values (convert "
        "e.g. numpy scalars with float())"
    )


def _file_mode(target: str) -> int:
    """Mode for the new file: that of the file it replaces, else ``0o666 & ~umask``.

    ``mkstemp`` creates files readable by their owner only; a checkpoint should
    get the permissions that :func:`torch.save` would have given it.
    """
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_directory(directory: str) -> None:
    """Make the rename durable where the platform allows opening a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def check_checkpoint_path(path: PathLike) -> str:
    """Check that a checkpoint can be written to ``path``; return it as a string.

    :func:`~pyrolite_bnn.training.fit` calls this before training, so that a
    mistyped ``checkpoint_path`` fails at once instead of after the first epoch.

    Args:
        path: the checkpoint file to be written.

    Returns:
        ``os.fspath(path)``.

    Raises:
        FileNotFoundError: if the directory of ``path`` does not exist.
        IsADirectoryError: if ``path`` is a directory.
        PermissionError: if the directory is not writable.

    Example:
        >>> from pyrolite_bnn.checkpoint import check_checkpoint_path
        >>> try:
        ...     check_checkpoint_path("no_such_dir/run.pt")
        ... except FileNotFoundError as error:
        ...     print(str(error).split(":")[0])
        cannot write the checkpoint 'no_such_dir/run.pt'
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    if os.path.isdir(target):
        raise IsADirectoryError(
            f"cannot write the checkpoint {target!r}: it is a directory; give a "
            "file name such as 'run.pt'"
        )
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"cannot write the checkpoint {target!r}: the directory {directory!r} "
            "does not exist (create it first, e.g. os.makedirs)"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cannot write the checkpoint {target!r}: the directory {directory!r} "
            "is not writable"
        )
    return target


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: nn.Module | None = None,
    epoch: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a checkpoint of ``model`` (and optimizer, loss) to ``path`` atomically.

    The data go to a temporary file in the directory of ``path``, which is
    flushed, ``fsync``-ed and then renamed over ``path`` with :func:`os.replace`;
    if anything fails on the way, the temporary file is removed and an existing
    checkpoint at ``path`` is left untouched.

    Args:
        path: file to write.
        model: the network; its ``state_dict()`` and architecture fingerprint
            are stored (of the network inside a ``DistributedDataParallel``,
            ``torch.compile`` or ``AveragedModel`` wrapper, so that it loads
            into the unwrapped network; an ``AveragedModel``'s
            ``n_averaged`` is stored beside it, for resuming the average).
        optimizer: optimizer whose state (and class name) to store; it must
            hold the model's trainable parameters, as for
            :func:`~pyrolite_bnn.fit`.
        loss_fn: loss module whose state to store (e.g. a learned noise scale
            of its likelihood).
        epoch: the epoch this checkpoint belongs to, an integer ``>= 0``.
        extra: a dict of further data: tensors, numbers, strings, ``None``,
            and lists, tuples or dictionaries of these.

    Raises:
        TypeError: if ``extra`` is not a dict or holds other objects (they
            would not load back with ``weights_only=True``), or ``epoch`` is
            not an integer.
        ValueError: if ``epoch`` is negative, ``optimizer`` holds none of
            the model's trainable parameters (another network's), or the
            model or ``loss_fn`` holds what :func:`load_checkpoint` would
            refuse, or no values: a parameter with NaN or infinite values
            (a diverged run; a frozen parameter's NaN only), a prior
            hyperparameter outside its constraint, a nested tensor, a
            tensor nothing wrote after ``to_empty`` (or loaded from a state
            saved so; the message says what writes it). Other buffers may
            hold NaN (a sentinel) and infinities (a mask): they are saved
            as they are, as loading takes them. The file at ``path`` is
            left as it was, and the message names the tensors.
        OSError: if ``path`` cannot be written (see
            :func:`check_checkpoint_path`).

    Example:
        >>> import os, tempfile, torch
        >>> import pyrolite_bnn as bnn
        >>> from pyrolite_bnn.checkpoint import load_checkpoint, save_checkpoint
        >>> net = bnn.VILinear(3, 2)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "net.pt")
        ...     save_checkpoint(path, net, epoch=4, extra={"note": "demo"})
        ...     info = load_checkpoint(path, bnn.VILinear(3, 2))
        >>> info["epoch"], info["extra"]
        (4, {'note': 'demo'})
    """
    if epoch is not None:  # a plain int: a numpy one would not load back
        epoch = check_count(epoch, "epoch", minimum=0)
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(
            f"extra must be a dict of names to data, got {type(extra).__name__} "
            "(e.g. extra={'history': ...})"
        )
    _check_plain(extra, "extra")
    _check_objects("save_checkpoint", model, optimizer, loss_fn)
    averaged = averaged_model(model)
    if optimizer is not None:
        check_optimizer_holds(
            model,
            optimizer,
            "the checkpoint would pair this model's weights with another "
            "network's optimizer state"
            + (
                " (an AveragedModel holds copies of the trained network's "
                "parameters: save the trained network with its optimizer, and "
                "the average in a checkpoint of its own)"
                if averaged is not None
                else ""
            ),
        )
    model = unwrap(model)
    state = model.state_dict()
    loss_state = None if loss_fn is None else loss_fn.state_dict()
    problems = _unsaveable(model, state, "model")
    if loss_fn is not None and loss_state is not None:
        problems += _unsaveable(loss_fn, loss_state, "loss_fn")
    if problems:
        raise ValueError(
            f"save_checkpoint: nothing was written ({os.fspath(path)!r} is "
            "unchanged): " + " ".join(problems)
        )
    payload: dict[str, Any] = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "version": _version(),
        "fingerprint": _fingerprint(model),
        "model": state,
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "optimizer_class": None if optimizer is None else _class_name(optimizer),
        "optimizer_parameters": (
            None if optimizer is None else _parameter_names(optimizer, model, loss_fn)
        ),
        "loss_fn": loss_state,
        "epoch": epoch,
        "extra": None if extra is None else dict(extra),
        "averaged": None if averaged is None else _averaging_state(averaged),
    }
    target = check_checkpoint_path(path)
    directory = os.path.dirname(os.path.abspath(target))
    fd, temporary = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp"
    )
    try:
        with contextlib.suppress(OSError):
            os.chmod(temporary, _file_mode(target))
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    _fsync_directory(directory)


def _read(path: PathLike) -> dict[str, Any]:
    target = os.fspath(path)
    try:
        payload = torch.load(target, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as error:  # EOFError, unpickling, zip and OS read errors
        size = os.path.getsize(target)
        state = (
            "is empty (0 bytes)"
            if size == 0
            else f"cannot be read ({size} bytes): truncated or not a torch.save file"
        )
        reason = str(error).strip().splitlines()
        detail = (
            f"{type(error).__name__}: {reason[0]}" if reason else type(error).__name__
        )
        raise ValueError(
            f"checkpoint {target!r} {state} ({detail}); an interrupted "
            "save_checkpoint never leaves such a file, so it was written or "
            "copied by other means"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(
            f"{target!r} is not a pyrolite_bnn checkpoint" + _state_dict_hint(payload)
        )
    if payload.get("format_version") != _FORMAT_VERSION:
        raise ValueError(
            f"checkpoint format version {payload.get('format_version')!r} is not "
            f"supported (this pyrolite_bnn reads version {_FORMAT_VERSION})"
        )
    return payload


def _state_dict_hint(payload: object) -> str:
    """How to load a file that holds a module's state in ``"state_dict"``.

    A PyTorch Lightning checkpoint (and many training scripts' files) is a
    dict whose ``"state_dict"`` holds the whole module's state, its keys
    prefixed with the attribute that holds the network (``"net.0.weight..."``).
    """
    if not isinstance(payload, dict) or not isinstance(
        payload.get("state_dict"), Mapping
    ):
        return ""
    # The attributes the keys start with, most keys (the network's) first.
    counts = Counter(str(key).split(".", 1)[0] for key in payload["state_dict"])
    prefixes = [name for name, _ in counts.most_common()] or ["net"]
    prefix = prefixes[0]
    load = (
        "load the network's part of its 'state_dict', whose keys start "
        f"with the module's attributes ({_listed([p + '.' for p in prefixes])}): "
        "state = torch.load(path, weights_only=True)['state_dict']; "
        f"net.load_state_dict({{k.removeprefix('{prefix}.'): v for k, v in "
        f"state.items() if k.startswith('{prefix}.')}}), and the loss's "
        "(a learned noise scale) the same way"
    )
    if "pytorch-lightning_version" in payload:
        return (
            ": it is a PyTorch Lightning checkpoint. Restore the whole module "
            "with YourLightningModule.load_from_checkpoint(path), or " + load
        )
    return ": it holds a module's state under 'state_dict'. To use it, " + load


def _check_model(payload: Mapping[str, Any], model: nn.Module) -> list[str]:
    saved = payload["fingerprint"]
    current = _fingerprint(model)
    problems = []
    if saved["class"] != current["class"]:
        problems.append(
            f"the checkpoint was saved from a {saved['class']}, the model is a "
            f"{current['class']}"
        )
    problems += _compare_shapes("state keys", saved["state"], current["state"])
    state_problems = len(problems)
    problems += _compare_shapes("weight sites", saved["sites"], current["sites"])
    if state_problems and len(problems) > state_problems:
        # Site differences repeat the state-key differences; keep the message short.
        del problems[state_problems:]
    # Older files lack "families" or "parameterisations": not compared then.
    problems += _compare_labels(
        "prior or posterior family", saved.get("families", {}), current["families"]
    )
    problems += _compare_labels(
        "posterior parameterisation",
        saved.get("parameterisations", {}),
        current["parameterisations"],
    )
    return problems


def _check_loss(payload: Mapping[str, Any], loss_fn: nn.Module) -> list[str]:
    saved = payload["loss_fn"]
    if saved is None:
        return ["the checkpoint holds no loss_fn state"]
    current = {key: _shape(value) for key, value in loss_fn.state_dict().items()}
    return _compare_shapes(
        "loss_fn state keys",
        {key: _shape(value) for key, value in saved.items()},
        current,
    )


def _class_name(optimizer: torch.optim.Optimizer) -> str:
    return type(optimizer).__qualname__


def _group_options(groups: list[dict[str, Any]]) -> set[str]:
    """The options (``lr``, ``betas``, ``momentum``...) of parameter groups."""
    return {key for group in groups for key in group if key != "params"}


def _parameter_names(
    optimizer: torch.optim.Optimizer, model: nn.Module, loss_fn: nn.Module | None
) -> list[list[str | None]]:
    """The name of each parameter of each of ``optimizer``'s groups, in order.

    As ``model.named_parameters()`` names it (``model`` unwrapped), else as
    ``loss_fn.named_parameters()`` does, prefixed ``loss_fn.``; ``None`` for a
    tensor of neither (a parameter of the loss when ``loss_fn`` is not given).
    """
    names = {id(p): name for name, p in model.named_parameters()}
    if loss_fn is not None:
        for name, parameter in loss_fn.named_parameters():
            names.setdefault(id(parameter), f"loss_fn.{name}")
    return [
        [names.get(id(p)) for p in group["params"]] for group in optimizer.param_groups
    ]


def _compare_parameter_names(
    saved: list[list[str | None]], current: list[list[str | None]]
) -> list[str]:
    """Describe the first group whose parameters differ from the saved group's.

    Groups of equal sizes are compared position by position (torch restores
    each position's state, ``exp_avg`` or ``momentum_buffer``, and each group's
    options, ``lr`` and ``weight_decay``, by position); a parameter without a
    name on either side matches any.
    """
    for index, (before, now) in enumerate(zip(saved, current, strict=True)):
        different = [
            f"{name!r} where the checkpoint's held {old!r}"
            for old, name in zip(before, now, strict=True)
            if old is not None and name is not None and old != name
        ]
        if not different:
            continue
        # The same groups in another order: said, as the likely cause.
        reordered = sorted(map(tuple, map(_named, saved))) == sorted(
            map(tuple, map(_named, current))
        )
        hint = " (the saved groups, in another order)" if reordered else ""
        return [
            f"the optimizer's parameter group {index} holds {_listed(different)}"
            f"{hint}: build the optimizer's groups as the saved optimizer's were, "
            "in the same order, or load without optimizer= to start the "
            "optimizer afresh"
        ]
    return []


def _named(names: list[str | None]) -> list[str]:
    return [name for name in names if name is not None]


def _check_optimizer(
    payload: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    loss_fn: nn.Module | None,
) -> list[str]:
    """Refuse the state of another kind of optimizer, or other parameter groups.

    Another class's state loaded silently (Adam's into SGD: ``lr`` and
    ``betas`` replaced SGD's, ``momentum`` went, and the first step raised
    ``KeyError: 'momentum'``). Files written before the class was recorded
    are compared by their groups' options: each side having options the
    other lacks is another kind (a newer torch only adds options).

    Groups of the same sizes holding other parameters loaded silently too
    (posterior means and scales in two groups of equal size, built in the
    other order: the scales got the means' ``weight_decay``, ``lr`` and Adam
    moments). Files that record the groups' parameter names are compared by
    them; older ones by the groups' sizes only.
    """
    saved = payload["optimizer"]
    if saved is None:
        return ["the checkpoint holds no optimizer state"]
    problems = []
    saved_class, current_class = payload.get("optimizer_class"), _class_name(optimizer)
    if saved_class is not None and saved_class != current_class:
        problems.append(
            f"the checkpoint's optimizer is of class {saved_class}, the "
            f"optimizer of class {current_class}"
        )
    if saved_class is None:
        saved_options = _group_options(saved["param_groups"])
        options = _group_options(optimizer.param_groups)
        if saved_options - options and options - saved_options:
            problems.append(
                f"the checkpoint's optimizer has options "
                f"{sorted(saved_options - options)} that the {current_class} "
                f"lacks, and lacks its {sorted(options - saved_options)}: "
                "another kind of optimizer"
            )
    saved_groups = [len(group["params"]) for group in saved["param_groups"]]
    groups = [len(group["params"]) for group in optimizer.param_groups]
    if saved_groups != groups:
        problems.append(
            f"the optimizer has parameter groups of sizes {groups}, the "
            f"checkpoint's optimizer {saved_groups}"
        )
        return problems
    saved_names = payload.get("optimizer_parameters")
    if saved_names is not None:
        current = _parameter_names(optimizer, model, loss_fn)
        problems += _compare_parameter_names(saved_names, current)
    return problems


def _check_objects(
    function: str, model: object, optimizer: object, loss_fn: object
) -> None:
    """Refuse objects of the wrong kind in the model/optimizer/loss slots."""
    if model is None:
        raise TypeError(f"{function} needs the model (a torch.nn.Module), got None")
    for value, what, kind, name in (
        (model, "model", nn.Module, "torch.nn.Module"),
        (optimizer, "optimizer", torch.optim.Optimizer, "torch.optim.Optimizer"),
        (loss_fn, "loss_fn", nn.Module, "torch.nn.Module"),
    ):
        if value is not None and not isinstance(value, kind):
            raise TypeError(
                f"{function}(path, model, optimizer, loss_fn, ...): {what} "
                f"must be a {name}, got {value!r}"
            )


def load_checkpoint(
    path: PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: nn.Module | None = None,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model``.

    The architecture fingerprint in the file is compared with ``model`` (and
    the stored loss and optimizer states with ``loss_fn`` and ``optimizer``)
    before anything is loaded; on a mismatch nothing is changed. The file is
    read with ``weights_only=True`` onto the CPU; ``load_state_dict`` copies the
    values to the devices of the model's tensors.

    Args:
        path: checkpoint file.
        model: network of the same architecture as the saved one (a custom
            guide must be assigned before loading, as when saving; a
            ``DistributedDataParallel``, ``torch.compile`` or ``AveragedModel``
            wrapper loads into its network; an ``AveragedModel`` also gets
            back the ``n_averaged`` of one that was saved, so that its next
            ``update_parameters`` continues the saved average).
        optimizer: optimizer of the saved one's class with the same
            parameter groups (the same parameters in the same order), to
            restore its state.
        loss_fn: loss module of the same kind, to restore its state.

    Returns:
        ``{"epoch": ..., "extra": ..., "version": ...}``: the saved epoch, the
        extra data and the ``pyrolite_bnn`` version that wrote the file.

    Raises:
        ValueError: if the file is not a checkpoint (for a PyTorch Lightning
            ``.ckpt``, or another dict with a ``"state_dict"``, the message
            says how to load it), or its fingerprint does
            not match ``model`` (the message lists the missing, unexpected and
            shape-mismatched keys, at most five of each), or ``optimizer`` /
            ``loss_fn`` is given and the checkpoint holds no matching state
            (an optimizer of another class than the saved one, or whose
            parameter groups hold other parameters or the same in another
            order, is refused naming both; files written before the groups'
            parameter names were recorded are compared by group sizes), or
            the file holds NaN or infinite values for a parameter of
            ``model`` or ``loss_fn``
            (posterior or guide parameters, a learned noise scale: named in
            the message; whatever the validation setting, as the prior
            buffers' constraints are checked).

    Example:
        >>> import os, tempfile, torch
        >>> import pyrolite_bnn as bnn
        >>> from pyrolite_bnn.checkpoint import load_checkpoint, save_checkpoint
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "net.pt")
        ...     save_checkpoint(path, bnn.VILinear(3, 2))
        ...     try:
        ...         load_checkpoint(path, bnn.VILinear(4, 2))
        ...     except ValueError as error:
        ...         print("shape" in str(error))
        True
    """
    _check_objects("load_checkpoint", model, optimizer, loss_fn)
    payload = _read(path)
    # Files written before the key existed, or from a plain network, have none.
    averaged = averaged_model(model) if payload.get("averaged") else None
    model = unwrap(model)
    problems = _check_model(payload, model)
    if averaged is not None:
        problems += _compare_shapes(
            "AveragedModel state keys",
            {key: _shape(value) for key, value in payload["averaged"].items()},
            {key: _shape(value) for key, value in _averaging_state(averaged).items()},
        )
    if loss_fn is not None:
        problems += _check_loss(payload, loss_fn)
    if optimizer is not None:
        problems += _check_optimizer(payload, optimizer, model, loss_fn)
    if problems:
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} does not match; nothing was loaded:\n  "
            + "\n  ".join(problems)
        )
    non_finite = _non_finite_parameters(model, payload["model"], "model")
    if loss_fn is not None:
        non_finite += _non_finite_parameters(loss_fn, payload["loss_fn"], "loss_fn")
    if non_finite:
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} holds NaN or infinite parameter "
            f"values; nothing was loaded: {_listed(non_finite, '; ')}"
        )
    # Transaction: restore everything if a load fails half-way.
    backup_model = clone_state(model.state_dict())
    backup_averaging = (
        None if averaged is None else clone_state(_averaging_state(averaged))
    )
    backup_loss = None if loss_fn is None else clone_state(loss_fn.state_dict())
    backup_optimizer = (
        None if optimizer is None else clone_state(optimizer.state_dict())
    )
    try:
        model.load_state_dict(payload["model"])
        if averaged is not None:  # its keys were compared above
            averaged.load_state_dict(payload["averaged"], strict=False)
        if loss_fn is not None:
            loss_fn.load_state_dict(payload["loss_fn"])
        if optimizer is not None:
            optimizer.load_state_dict(payload["optimizer"])
    except Exception:
        model.load_state_dict(backup_model)
        if averaged is not None and backup_averaging is not None:
            averaged.load_state_dict(backup_averaging, strict=False)
        if loss_fn is not None and backup_loss is not None:
            loss_fn.load_state_dict(backup_loss)
        if optimizer is not None and backup_optimizer is not None:
            optimizer.load_state_dict(backup_optimizer)
        raise
    return {
        "epoch": payload["epoch"],
        "extra": payload["extra"],
        "version": payload["version"],
    }
