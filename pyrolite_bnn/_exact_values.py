"""Hyperparameters keep the precision they were given in, whatever their dtype.

A hyperparameter given as a number (a prior's ``scale=0.1``, a likelihood's
fixed noise scale, a calibration's fitted factor) is stored in a tensor of the
default dtype, ``float32``, before the network it serves is known. Converted
to a ``float64`` network's dtype afterwards (a layer built with
``dtype=torch.float64``, ``loss_fn.double()``), or read by one, that tensor
gave the number rounded to ``float32``: a noise scale of 0.1 read as
0.10000000149, a loss 543 nats off at a scale of 1e-5, silently.

:class:`KeepsExactValues` keeps, beside such a tensor, the number it was
given as a ``float64`` CPU tensor (:meth:`~KeepsExactValues.keep_exact`).
While the tensor still holds that number (rounded to its dtype: it was not
trained, loaded or assigned another value since), the number is what it
means:

* a conversion to a wider dtype (``.double()``, ``.to(torch.float64)``, a
  layer's ``dtype=``) writes the number itself into the converted tensor;
* a computation in a wider dtype reads the number
  (:meth:`~KeepsExactValues.exact_as`): a ``float32`` likelihood on a
  ``float64`` network's output.

A tensor of the computation's dtype is read as it is, so ``float32``
networks compute with the very values they did before (one dtype comparison
per read); conversions to a narrower or the same dtype are torch's own.
Which tensor still holds its number is read from its values, once per value
(the tensor's memory and version), so that copies (``copy.deepcopy``, a
pickle, a prior copied onto a layer) and loads of the same values keep it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from pyrolite_bnn._unwritten_tensors import own_tensor

__all__ = ["KeepsExactValues", "as_float64", "given_dtype", "is_wider"]

# Largest tensor (in numbers) whose exact value is kept.
_KEPT_NUMBERS = 4096

# What identifies a tensor's values: its object, memory, version and dtype.
_Mark = tuple[int, int, int, torch.dtype]


class _Kept(NamedTuple):
    """The number a tensor was given as, and how it was stored.

    Attributes:
        number: the number, a float64 CPU tensor.
        held: the tensor's value when the number was kept (CPU), in its dtype
            then: one computed from the number in that dtype (a log) holds
            the number too.
        stored_in: the dtype the number was first stored in (the default
            dtype, for a number): the rounding to it is the one the number
            undoes; a narrower dtype is one the module was converted to.
    """

    number: Tensor
    held: Tensor
    stored_in: torch.dtype


def is_wider(dtype: torch.dtype, than: torch.dtype) -> bool:
    """Whether floating ``dtype`` holds numbers more precisely than ``than``.

    Example:
        >>> is_wider(torch.float64, torch.float32)
        True
        >>> is_wider(torch.float16, torch.float32)
        False
    """
    if not (dtype.is_floating_point and than.is_floating_point):
        return False
    return torch.finfo(dtype).eps < torch.finfo(than).eps


class KeepsExactValues(nn.Module):
    """A module whose number-given tensors keep the number's precision.

    See the module's description. A subclass calls :meth:`keep_exact` after
    it registers a tensor from a number (and again when it writes another
    number into it: a fit, an assignment), and reads the tensor in a
    computation's dtype with :meth:`exact_as`.
    """

    # Tensor name -> the number it was given as; None: none kept (also the
    # class default: modules pickled before it existed).
    _kept_values: dict[str, _Kept] | None = None

    def keep_exact(self, name: str, value: object) -> None:
        """Keep ``value`` as the exact number the own tensor ``name`` holds.

        Args:
            name: a parameter or buffer of this module, holding ``value``
                rounded to its dtype (or computed from it in that dtype).
            value: the number as given (a Python float, or a tensor of any
                floating dtype: a ``float64`` tensor is kept as it is); what
                :func:`as_float64` does not keep is not.
        """
        self._keep(name, as_float64(value))

    def _keep(self, name: str, number: Tensor | None) -> None:
        """Keep ``number`` for ``name`` as the tensor holds it now (``None``: forget).

        A kept entry stays as it is while its tensor is converted or
        rewritten with the number (its value checks, keyed by the tensor's
        version, are read again).
        """
        tensor = own_tensor(self, name)
        kept = dict(self._kept_values or {})
        kept.pop(name, None)
        if tensor is not None and number is not None and not tensor.is_meta:
            held = tensor.detach().to("cpu", copy=True)
            kept[name] = _Kept(number, held, tensor.dtype)
        self._kept_values = kept or None
        self.__dict__.pop("_kept_checks", None)

    def exact_value(self, name: str) -> Tensor:
        """The own tensor ``name``, or its kept ``float64`` number while it holds it.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> normal = bnn.Normal(scale=0.1)
            >>> normal.fixed_scale.dtype, normal.exact_value("fixed_scale").item()
            (torch.float32, 0.1)
        """
        tensor = own_tensor(self, name)
        assert tensor is not None, name
        kept = self._kept_number(name, tensor)
        return tensor if kept is None else kept

    def holds_exact(self, name: str) -> bool:
        """Whether the own tensor ``name`` holds the number kept for it.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> normal = bnn.Normal(scale=0.1)
            >>> normal.holds_exact("fixed_scale")
            True
            >>> _ = normal.fixed_scale.fill_(0.2)
            >>> normal.holds_exact("fixed_scale")
            False
        """
        tensor = own_tensor(self, name)
        return tensor is not None and self._kept_number(name, tensor) is not None

    def exact_as(self, name: str, like: Tensor) -> Tensor:
        """The own tensor ``name`` in ``like``'s dtype and on its device.

        The tensor itself where its dtype is ``like``'s (the common case,
        without any cost); its kept number where ``like``'s dtype is wider
        and the tensor still holds the number; else the tensor cast.

        Example:
            >>> import torch, pyrolite_bnn as bnn
            >>> normal = bnn.Normal(scale=0.1)
            >>> like = torch.zeros((), dtype=torch.float64)
            >>> normal.exact_as("fixed_scale", like).item()
            0.1
        """
        tensor: Tensor = getattr(self, name)
        if tensor.dtype == like.dtype:
            return tensor
        if is_wider(like.dtype, tensor.dtype):
            kept = self._kept_number(name, tensor)
            if kept is not None:
                return kept.to(device=like.device, dtype=like.dtype)
        return tensor.to(like)

    def rewrite_exact(self) -> None:
        """Write each kept number into its tensor where that is wider now.

        For a tensor that holds its number (or the value it was computed as)
        in a dtype wider than the number was first stored in: after a reset
        that copied the kept value (a ``float32`` number) into a tensor a
        ``float64`` layer holds.
        """
        for name, entry in (self._kept_values or {}).items():
            tensor = own_tensor(self, name)
            if (
                tensor is not None
                and is_wider(tensor.dtype, entry.stored_in)
                and self._kept_number(name, tensor) is not None
            ):
                with torch.no_grad():
                    tensor.copy_(entry.number.to(tensor.device).expand_as(tensor))

    def _kept_number(self, name: str, tensor: Tensor) -> Tensor | None:
        """``name``'s kept number while ``tensor`` (its value now) holds it."""
        entry = (self._kept_values or {}).get(name)
        if entry is None or tensor.is_meta or not tensor.is_floating_point():
            return None
        try:
            mark: _Mark = (id(tensor), tensor.data_ptr(), tensor._version, tensor.dtype)
        except RuntimeError:  # no memory of its own (torch.func wrappers)
            return None
        checks: dict[str, tuple[_Mark, bool]] = self.__dict__.setdefault(
            "_kept_checks", {}
        )
        seen = checks.get(name)
        if seen is None or seen[0] != mark:
            seen = (mark, _holds(tensor, entry.number, entry.held))
            checks[name] = seen
        return entry.number if seen[1] else None

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        """Torch's; the kept numbers follow the conversion.

        A tensor widened while it holds its kept number gets the number; one
        converted to a dtype narrower than the number was first stored in
        (``.half()`` of a ``float32`` module) takes that rounding for good,
        as the weights do: its number is forgotten.
        """
        holding = {
            name: (entry, tensor.dtype)
            for name, entry in (self._kept_values or {}).items()
            if (tensor := own_tensor(self, name)) is not None
            and self._kept_number(name, tensor) is not None
        }
        result = super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        for name, (entry, dtype) in holding.items():
            tensor = own_tensor(self, name)
            if tensor is None or tensor.is_meta or tensor.dtype == dtype:
                continue
            if is_wider(entry.stored_in, tensor.dtype):
                self._keep(name, None)
                continue
            if is_wider(tensor.dtype, dtype):
                with torch.no_grad():
                    tensor.copy_(entry.number.to(tensor.device).expand_as(tensor))
        return result

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
        """Torch's; a narrower state's rounding of a kept number loads as the number.

        A state saved from a ``float32`` module loaded into a ``float64`` one
        is a widening as a conversion is: a tensor whose loaded value is its
        kept number rounded to the state's dtype holds the number (not a
        state of a dtype narrower than the number was first stored in: a
        ``float16`` module's, whose rounding was a conversion's).
        """
        super()._load_from_state_dict(
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )
        for name, entry in list((self._kept_values or {}).items()):
            tensor, value = own_tensor(self, name), state_dict.get(prefix + name)
            if (
                tensor is None
                or not isinstance(value, Tensor)
                or tensor.is_meta
                or value.is_meta
                or not is_wider(tensor.dtype, value.dtype)
                or is_wider(entry.stored_in, value.dtype)
            ):
                continue
            if _holds(value, entry.number, entry.held) and torch.equal(
                tensor.detach(), value.to(device=tensor.device, dtype=tensor.dtype)
            ):
                with torch.no_grad():
                    tensor.copy_(entry.number.to(tensor.device).expand_as(tensor))

    def __getstate__(self) -> dict[str, Any]:
        """Torch's, without the checks of values (a copy reads its own)."""
        state: dict[str, Any] = dict(super().__getstate__())  # type: ignore[no-untyped-call]
        state.pop("_kept_checks", None)
        return state


def given_dtype(value: object) -> torch.dtype:
    """The dtype a hyperparameter given as ``value`` is stored in.

    A floating tensor's own (a ``float64`` scale of 0.7 stays 0.7, and 1e-50
    stays positive), else the default dtype (numbers, integer tensors).

    Example:
        >>> given_dtype(torch.tensor(0.1, dtype=torch.float64)), given_dtype(0.1)
        (torch.float64, torch.float32)
    """
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.dtype
    return torch.get_default_dtype()


def as_float64(value: object) -> Tensor | None:
    """``value`` as a float64 CPU tensor, or ``None`` where it is not kept.

    Numbers, sequences and arrays of them, and floating tensors (not on the
    meta device) of at most 4096 numbers are; an integer or ``bool`` tensor
    is not (it was no hyperparameter given in a precision of its own).

    Example:
        >>> as_float64(0.1).item(), as_float64(torch.zeros(2, dtype=torch.long))
        (0.1, None)
    """
    if isinstance(value, Tensor):
        if (
            value.is_meta
            or not value.is_floating_point()
            or value.numel() > _KEPT_NUMBERS
        ):
            return None
        return value.detach().to(device="cpu", dtype=torch.float64, copy=True)
    try:
        number = torch.as_tensor(value, dtype=torch.float64, device="cpu")
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if number.numel() <= _KEPT_NUMBERS else None


def _holds(tensor: Tensor, number: Tensor, held: Tensor) -> bool:
    """Whether ``tensor`` holds ``number``: its value when kept, or it rounded.

    The value when kept in the same or a wider dtype (which holds it
    exactly): a value computed from the number in ``float32`` (a log)
    copied into a ``float64`` tensor means the number as well.
    """
    value = tensor.detach()
    try:
        as_kept = held.to(device=value.device, dtype=value.dtype).expand_as(value)
        rounded = number.to(device=value.device, dtype=value.dtype).expand_as(value)
    except RuntimeError:  # another shape since
        return False
    if not is_wider(held.dtype, value.dtype) and torch.equal(value, as_kept):
        return True
    return torch.equal(value, rounded)
