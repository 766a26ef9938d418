"""Library-wide switch for input validation at the public boundary.

Validation checks shapes, dtypes, label ranges and NaN/Inf values of inputs and
targets. The finiteness checks synchronise with the device, so a training loop
that has been debugged can switch them off for speed.
"""

from __future__ import annotations

import math
import numbers
import operator
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, SupportsFloat

import numpy as np
import pyro.distributions as pyro_dist
import torch

from pyrolite_bnn._capture import records_a_graph
from pyrolite_bnn._context_values import set_while
from pyrolite_bnn._input_layouts import check_input_layout, shape_text, stored_values

__all__ = ["enable_validation", "is_validation_enabled", "validation"]

_VALIDATE = True
# Checks a caller turns on for its own context whatever the switch
# (bnn.Trace_ELBO's target checks under Pyro's validation), per thread and
# task unlike the switch: the call that turns them off, for the messages.
_CHECKS_ON: ContextVar[str | None] = ContextVar("pyrolite_bnn_checks_on", default=None)


def enable_validation(flag: bool = True) -> None:
    """Turn the library's input validation on (default) or off.

    Args:
        flag: ``True`` to validate inputs and targets, ``False`` to skip checks.
            What torch's and Pyro's switches take is taken too, with their
            meaning: anything that equals ``True`` or ``False`` (NumPy bools
            and 0-d arrays, ``1`` and ``0``, ``1.0`` and ``0.0``, one-element
            tensors).

    Raises:
        TypeError: for anything else (``None``, ``'no'``, ``2``, ``0.5``).

    Example:
        >>> import numpy as np
        >>> import pyrolite_bnn as bnn
        >>> bnn.enable_validation(False); bnn.is_validation_enabled()
        False
        >>> bnn.enable_validation(np.array(1)); bnn.is_validation_enabled()
        True
    """
    global _VALIDATE
    _VALIDATE = _switch(flag, "enable_validation's flag")


def _switch(value: object, what: str) -> bool:
    """``value`` of an on/off switch as torch's and Pyro's switches read it.

    ``torch.distributions.Distribution.set_default_validate_args`` (behind
    ``pyro.enable_validation``) takes ``value in [True, False]``: whatever
    equals ``True`` or ``False`` as one truth value (bools, NumPy bools and
    scalars, 0-d and one-element arrays and tensors of any dtype, ``1``,
    ``0``, ``1.0``, ``0.0``). The same rule here, with one meaning: on for
    what equals ``True``, off for what equals ``False``. Everything torch
    refuses is refused (``None``: ``bool(None)`` turned every check off
    without a word; strings: ``'no'`` would mean on; ``2``, ``0.5``, NaN,
    several elements), with :func:`check_bool`'s message.

    Raises:
        TypeError: for anything else.
    """
    try:
        on = bool(value == True)  # noqa: E712  (1, 1.0, np.array(1) too)
        off = bool(value == False)  # noqa: E712
    except (TypeError, ValueError, RuntimeError):  # several elements
        on = off = False
    if on != off:
        return on
    return check_bool(value, what)


def is_validation_enabled() -> bool:
    """Whether the library validates inputs and targets.

    The switch (:func:`enable_validation`), or checks turned on for the
    running context by :func:`checks_on`.
    """
    return _VALIDATE or _CHECKS_ON.get() is not None


def checks_on(switch: str | None) -> AbstractContextManager[None]:
    """Run the library's checks in the body, in this context only.

    ``switch`` is the call that turns them off, named by the checks'
    messages (``"pyro.enable_validation(False)"``); ``None`` changes
    nothing. Unlike :func:`validation`, which sets the process-wide switch,
    other threads are unaffected. :class:`~pyrolite_bnn.Trace_ELBO` checks
    targets under Pyro's validation switch with it, as Pyro's own classes do.

    Example:
        >>> import pyrolite_bnn as bnn
        >>> with bnn.validation(False), checks_on("pyro.enable_validation(False)"):
        ...     print(bnn.is_validation_enabled())
        True
    """
    if switch is None:
        return nullcontext()
    return set_while(_CHECKS_ON, switch)


def checks_under_pyro_validation() -> AbstractContextManager[None]:
    """The library's checks, on while Pyro's validation is (:func:`checks_on`).

    Where Pyro's classes check values (the support of an observed site),
    the library's checks of the same values run under Pyro's switch, with
    their messages: :class:`~pyrolite_bnn.Trace_ELBO` and the Pyro model's
    observation site check targets so.

    Example:
        >>> import pyro, pyrolite_bnn as bnn
        >>> pyro_on = pyro.distributions.is_validation_enabled()
        >>> with bnn.validation(False), checks_under_pyro_validation():
        ...     print(bnn.is_validation_enabled() == pyro_on)
        True
    """
    on = pyro_dist.is_validation_enabled()
    return checks_on("pyro.enable_validation(False)" if on else None)


def _switched_off_by() -> str:
    """The call that switches the running checks off, for their messages."""
    if _VALIDATE:
        return "bnn.enable_validation(False)"
    return _CHECKS_ON.get() or "bnn.enable_validation(False)"


@contextmanager
def validation(flag: bool) -> Iterator[None]:
    """Context manager that sets validation on or off temporarily.

    Args:
        flag: the validation state inside the context.

    Example:
        >>> import pyrolite_bnn as bnn
        >>> with bnn.validation(False):
        ...     print(bnn.is_validation_enabled())
        False
        >>> bnn.is_validation_enabled()
        True
    """
    old = _VALIDATE
    try:  # set inside: an interrupt as it returns still puts the old value back
        enable_validation(flag)
        yield
    finally:
        enable_validation(old)


@contextmanager
def distribution_checks_off() -> Iterator[None]:
    """Skip ``torch``/``pyro`` distribution argument checks inside the body.

    Used on the library's hot paths, whose inputs are validated once at the
    public boundary (when validation is on); the distribution-level checks
    would repeat them on every construction, each a device synchronisation.
    """
    previous = pyro_dist.is_validation_enabled()
    if not previous:
        yield
        return
    try:
        pyro_dist.enable_validation(False)
        yield
    finally:
        pyro_dist.enable_validation(previous)


def check_finite_inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any], owner: str
) -> None:
    """No NaN in any tensor input of a call, and no infinity in the first.

    Later inputs may hold ``-inf`` (additive attention masks use it to block
    positions, as ``torch.nn.Transformer.generate_square_subsequent_mask``
    does), never NaN or ``+inf``. Nothing is checked with validation off, nor
    while ``torch.jit.trace`` or ``torch.export`` records the call
    (:func:`~pyrolite_bnn._capture.records_a_graph`: the check would be a
    constant of the recorded graph).
    """
    if not is_validation_enabled() or records_a_graph():
        return
    first = True
    for position, value in (*enumerate(args), *kwargs.items()):
        if isinstance(value, torch.Tensor):
            what = f"input {position} of {owner}"
            if first:
                check_finite(value, what)
                first = False
            elif value.is_floating_point():
                values = stored_values(value)
                invalid = values.isnan() | (values == float("inf"))
                if not readable_all(~invalid):
                    bad = int(invalid.sum())
                    raise ValueError(
                        f"{what} contains {bad} NaN/+Inf value(s) (shape "
                        f"{shape_text(value)}); expected finite values or -inf "
                        f"(masks). Disable with {_switched_off_by()}."
                    )


def floating_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The dtype of the first floating-point parameter or buffer of ``module``.

    ``None`` for a module without floating-point tensors. Read on every
    network call: where the tensor was found (its module's path and name) is
    remembered, and later calls read the current tensor there, without
    walking the module tree, while the path still leads to one. Under
    ``torch.compile`` the tree is walked (once, while tracing) and nothing
    is remembered: Dynamo refuses a write to a dictionary an eager call wrote.
    """
    compiling = torch.compiler.is_compiling()
    remembered = None if compiling else _DTYPE_WITNESSES.get(module)
    if remembered is not None:
        path, buffers, name = remembered
        owner: torch.nn.Module | None = module
        for part in path.split(".") if path else ():
            owner = owner._modules.get(part) if owner is not None else None
        tensor = None if owner is None else _tensors(owner, buffers).get(name)
        if tensor is not None and tensor.is_floating_point():
            return tensor.dtype
    for buffers in (False, True):
        for path, owner in module.named_modules():
            for name, tensor in _tensors(owner, buffers).items():
                if tensor is not None and tensor.is_floating_point():
                    if not compiling:
                        _DTYPE_WITNESSES[module] = (path, buffers, name)
                    return tensor.dtype
    return None


def _tensors(module: torch.nn.Module, buffers: bool) -> dict[str, torch.Tensor | None]:
    """The parameters (or buffers) that ``module`` itself holds, by name."""
    return module._buffers if buffers else module._parameters  # type: ignore[return-value]


# Per network: where floating_dtype found its tensor (module path, buffer?, name).
_DTYPE_WITNESSES: weakref.WeakKeyDictionary[torch.nn.Module, tuple[str, bool, str]] = (
    weakref.WeakKeyDictionary()
)


def check_input_dtype(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    parameter_dtype: torch.dtype | None,
    where: str,
) -> None:
    """Raise ``ValueError`` if a floating input's dtype differs from the model's.

    A float64 input into a float32 network otherwise fails deep inside torch
    (``mat1 and mat2 must have the same dtype``) or, worse, runs in mixed
    precision. Checked at the outermost call of a network, where ``where``
    names it. Integer inputs (indices, labels) are not checked, nor are inputs
    inside ``torch.autocast`` (which casts them on purpose), nor anything when
    validation is off.

    Args:
        args: positional inputs of the call.
        kwargs: keyword inputs of the call.
        parameter_dtype: floating dtype of the network's parameters (see
            :func:`floating_dtype`); ``None`` skips the check.
        where: the network's name for the message (e.g. its class name).

    Raises:
        ValueError: naming the input, its dtype and the parameters' dtype.
    """
    if parameter_dtype is None or not is_validation_enabled():
        return
    for position, value in (*enumerate(args), *kwargs.items()):
        if (
            isinstance(value, torch.Tensor)
            and value.is_floating_point()
            and value.dtype != parameter_dtype
            and not torch.is_autocast_enabled(value.device.type)
        ):
            raise ValueError(
                f"input {position} of {where} has dtype {value.dtype}, but the "
                f"network's parameters are {parameter_dtype}; convert the input "
                f"(x.to({parameter_dtype})) or the network "
                f"(model.to({value.dtype}))"
            )


def readable_all(condition: torch.Tensor) -> bool:
    """Whether every element of ``condition`` is true, where values can be read.

    Under a ``torch.func`` transform (``vmap``) and on the meta device a value
    cannot be read, and while ``torch.jit.trace`` or ``torch.export`` records
    the code (:func:`~pyrolite_bnn._capture.records_a_graph`) it must not be:
    such a check cannot run and counts as passed, like any check with
    validation off.
    """
    if records_a_graph():
        return True
    try:
        return bool(condition.all())
    except RuntimeError:  # vmap's data-dependent control flow; meta tensors
        return True


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds no NaN or Inf (``True`` where values cannot be read).

    A finite sum proves it in one reduction (NaN and Inf propagate through
    it); only a sum that is not finite, from a bad value or an overflow,
    needs the element-wise check. Nothing is read while ``torch.jit.trace``
    or ``torch.export`` records the code (see :func:`readable_all`).
    """
    if records_a_graph():
        return True
    try:
        if math.isfinite(float(tensor.detach().sum())):
            return True
    except RuntimeError:  # vmap's data-dependent control flow; meta tensors
        return True
    return readable_all(torch.isfinite(tensor))


def check_finite(tensor: torch.Tensor, what: str, remedy: str | None = None) -> None:
    """Raise ``ValueError`` if validation is on and ``tensor`` has NaN or Inf.

    The message ends with ``remedy`` where one is given (where switching the
    check off would only let the NaN through), else with the switch.
    """
    if not (is_validation_enabled() and tensor.is_floating_point()):
        return
    values = stored_values(tensor)  # a sparse or nested tensor's
    if not all_finite(values):
        bad = int((~torch.isfinite(values)).sum())
        end = remedy if remedy is not None else f"Disable with {_switched_off_by()}."
        raise ValueError(
            f"{what} contains {bad} NaN/Inf value(s) (shape {shape_text(tensor)}); "
            f"expected finite values. {end}"
        )


def check_positive_values(
    values: torch.Tensor, what: str, *, zero: bool = False
) -> None:
    """Raise ``ValueError`` if validation is on and a value is not positive.

    Scales and variances given as tensors: every value must be ``> 0`` (``>=
    0`` with ``zero=True``); NaN is neither. A negative scale is otherwise
    taken at its word by the formulas and gives finite, wrong numbers.

    Example:
        >>> check_positive_values(torch.tensor([0.5, -1.0]), "scale")
        Traceback (most recent call last):
        ...
        ValueError: scale must be > 0, got -1.0 (1 of its 2 values is not)
    """
    if not is_validation_enabled():
        return
    valid = values >= 0 if zero else values > 0
    if readable_all(valid):
        return
    invalid = ~valid
    first = float(values[invalid].flatten()[0])
    count = int(invalid.sum())
    raise ValueError(
        f"{what} must be {'>= 0' if zero else '> 0'}, got {first!r} ({count} of "
        f"its {values.numel()} values {'is' if count == 1 else 'are'} not)"
    )


def check_heat(value: SupportsFloat, what: str) -> float:
    """``value`` as a float if it is a valid KL heat (finite, ``>= 0``), else raise.

    Args:
        value: the heat.
        what: how to name it in the error message.

    Raises:
        ValueError: if ``value`` is not a finite number ``>= 0`` (``True`` is
            not a heat).
    """
    try:  # a number or a one-element tensor; never a string ('1' is no heat)
        heat = math.nan if isinstance(value, str | bytes | bool) else float(value)
    except (TypeError, ValueError):
        heat = math.nan
    if not (math.isfinite(heat) and heat >= 0):
        raise ValueError(f"{what} must be >= 0 and finite, got {value!r}")
    return heat


def reloaded_hint(value: object, expected: type) -> str:
    """Why ``value`` of a class named like ``expected`` is no instance of it.

    After ``importlib.reload`` (IPython's autoreload) of a library module,
    objects made before are of the old class object: "needs a
    KullbackLeiblerLoss, got KullbackLeiblerLoss" says nothing. The hint
    names the cause; ``""`` where the classes differ in name too.

    Example:
        >>> import pyrolite_bnn as bnn
        >>> Old = type("Categorical", (), {"__module__": bnn.Categorical.__module__})
        >>> reloaded_hint(Old(), bnn.Categorical)[:48]
        ' (an object from another import of pyrolite_bnn:'
        >>> reloaded_hint(1, bnn.Categorical)
        ''
    """
    same_name = any(
        c is not expected
        and c.__name__ == expected.__name__
        and c.__module__ == expected.__module__
        for c in type(value).__mro__
    )
    if not same_name:
        return ""
    return (
        " (an object from another import of pyrolite_bnn: a module reloaded, by "
        "importlib.reload or IPython's autoreload, after it was made; make it "
        "again, or restart the interpreter)"
    )


def check_integer(value: object, what: str) -> int:
    """``value`` as an ``int`` if it is an integer, else ``TypeError``.

    Python, numpy and one-element torch integers are accepted; ``bool``,
    floats and strings are not.

    Example:
        >>> check_integer(4, "in_features")
        4
    """
    if not isinstance(value, bool) and hasattr(value, "__index__"):
        try:
            return operator.index(value)
        except TypeError:  # a float tensor, say
            pass
    raise TypeError(f"{what} must be an integer, got {value!r}")


def check_count(value: object, what: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer ``>= minimum``, else raise.

    Raises:
        TypeError: if ``value`` is not an integer (see :func:`check_integer`).
        ValueError: if it is below ``minimum``.

    Example:
        >>> check_count(3, "samples")
        3
    """
    try:
        count = check_integer(value, what)
    except TypeError:
        raise TypeError(
            f"{what} must be an integer >= {minimum}, got {value!r}"
        ) from None
    if count < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return count


def check_real(value: object, what: str) -> float:
    """``value`` as a ``float`` if it is a real number, else ``TypeError``.

    Python and numpy numbers (``np.float32(0.5)``) and one-element real
    tensors (``cal.temperature``) are accepted; ``bool`` and strings are not.
    Range checks are the caller's.

    Example:
        >>> check_real(1, "scale")
        1.0
    """
    number = real_value(value)
    if number is None:
        raise TypeError(f"{what} must be a number, got {value!r}")
    return number


def real_value(value: object) -> float | None:
    """``value`` as a ``float`` if it is a real number, else ``None``.

    What :func:`check_real` accepts, for a caller that only reads a value (an
    optimizer's ``weight_decay``) and has nothing to refuse. A tensor's value
    is read whether or not it requires gradients.

    Example:
        >>> import numpy as np
        >>> real_value(np.float32(0.5)), real_value(torch.tensor(2.0)), real_value(None)
        (0.5, 2.0, None)
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if (
        isinstance(value, torch.Tensor)
        and value.numel() == 1
        and not value.is_complex()
        and value.dtype != torch.bool
    ):
        return float(value.detach())
    return None


def check_finite_real(value: object, what: str) -> float:
    """``value`` as a ``float`` if it is a finite number, else raise.

    Raises:
        TypeError: if ``value`` is not a number (see :func:`check_real`).
        ValueError: if it is NaN or infinite.

    Example:
        >>> check_finite_real(-0.5, "mean")
        -0.5
    """
    number = check_real(value, what)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return number


def check_positive(value: object, what: str) -> float:
    """``value`` as a ``float`` if it is a positive, finite number, else raise.

    Raises:
        TypeError: if ``value`` is not a number (see :func:`check_real`).
        ValueError: if it is not positive and finite.

    Example:
        >>> check_positive(0.5, "scale")
        0.5
    """
    number = check_real(value, what)
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{what} must be positive and finite, got {value!r}")
    return number


def check_non_negative(value: object, what: str) -> float:
    """``value`` as a ``float`` if it is a finite number ``>= 0``, else raise.

    Raises:
        TypeError: if ``value`` is not a number (see :func:`check_real`).
        ValueError: if it is negative, NaN or infinite.

    Example:
        >>> check_non_negative(0, "eps")
        0.0
    """
    number = check_real(value, what)
    if not (number >= 0 and math.isfinite(number)):
        raise ValueError(f"{what} must be >= 0 and finite, got {value!r}")
    return number


def check_normal_number(
    value: float,
    what: str,
    dtype: torch.dtype | None = None,
    *,
    squared: bool = False,
) -> float:
    """``value`` if a positive ``value`` is a normal number of ``dtype``, else raise.

    A hyperparameter valid as a Python float can underflow or overflow where
    the library uses it: a standard deviation of ``1e-50`` is 0 in float32 (and
    ``softplus`` of its raw parameter underflows alike), so a KL turns
    infinite and a density NaN. ``dtype`` defaults to torch's default dtype;
    0 is left to the caller's range check. With ``squared=True`` its square
    must be finite too (a standard deviation whose variance is computed:
    above ``sqrt(max)``, ``1.8e19`` in float32, it is infinite).

    Example:
        >>> check_normal_number(1e-3, "init_scale")
        0.001
        >>> f32 = torch.float32
        >>> check_normal_number(1e20, "s", f32, squared=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: s must lie between 1.175e-38 and 1.845e+19 in magnitude ...
    """
    info = torch.finfo(torch.get_default_dtype() if dtype is None else dtype)
    largest = math.sqrt(info.max) if squared else info.max
    if value != 0 and not info.tiny <= abs(value) <= largest:
        square = " with a finite square" if squared else ""
        raise ValueError(
            f"{what} must lie between {info.tiny:.4g} and {largest:.4g} in "
            f"magnitude to be a normal {info.dtype} number{square}, got {value!r}"
        )
    return value


def check_temperature(temperature: object, like: torch.Tensor) -> torch.Tensor:
    """``temperature`` as a tensor of ``like``'s dtype and device, if it is one.

    A temperature divides logits: it must be one positive, finite number (a
    negative one flips the classes' order, zero divides by it). A Python or
    numpy number, or a one-element tensor (a calibration's buffer), which
    keeps its autograd history.

    Raises:
        TypeError: if ``temperature`` is not one number.
        ValueError: if it is not positive and finite.

    Example:
        >>> check_temperature(2, torch.zeros(3))
        tensor(2.)
    """
    if isinstance(temperature, torch.Tensor) and temperature.is_floating_point():
        if temperature.numel() != 1:
            raise TypeError(
                "temperature must be a number or a one-element tensor, got shape "
                f"{tuple(temperature.shape)}"
            )
        if not readable_all((temperature > 0) & torch.isfinite(temperature)):
            raise ValueError(
                f"temperature must be positive and finite, got {float(temperature)!r}"
            )
        return temperature.to(like)
    value = check_positive(temperature, "temperature")
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def check_probability(value: object, what: str) -> float:
    """``value`` as a ``float`` if it is a probability in ``(0, 1)``, else raise.

    Quantile and interval levels: one number (see :func:`check_real`), strictly
    between 0 and 1.

    Raises:
        TypeError: if ``value`` is not one number.
        ValueError: if it is not in ``(0, 1)`` (NaN is not).

    Example:
        >>> check_probability(0.9, "level")
        0.9
    """
    number = check_real(value, what)
    if not 0.0 < number < 1.0:
        raise ValueError(f"{what} must be in (0, 1), got {value!r}")
    return number


def check_bool(value: object, what: str) -> bool:
    """``value`` as a ``bool`` if it is ``True`` or ``False``, else ``TypeError``.

    For on/off options, where a string such as ``'no'`` or ``'False'`` would
    otherwise count as true. Python and numpy booleans are accepted.

    Example:
        >>> check_bool(False, "adaptive")
        False
    """
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise TypeError(f"{what} must be True or False, got {value!r}")


def held_parameter_ids(optimizer: torch.optim.Optimizer) -> set[int]:
    """The ids of the tensors ``optimizer`` updates, over all its groups."""
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def check_optimizer_holds(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, consequence: str
) -> None:
    """Refuse an optimizer that holds none of ``model``'s trainable parameters.

    One made for another network (the torch model before ``bnn.convert``, a
    second copy): :func:`~pyrolite_bnn.fit` would train nothing,
    :func:`~pyrolite_bnn.save_checkpoint` would pair the model's weights with
    another network's optimizer state. A model without trainable parameters
    takes any optimizer.

    Args:
        model: the network.
        optimizer: the optimizer given with it.
        consequence: what would happen, for the message (``"fit would train
            nothing"``).

    Raises:
        ValueError: for such an optimizer.

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> check_optimizer_holds(net, torch.optim.SGD(net.parameters()), "")
        >>> other = torch.optim.SGD(torch.nn.Linear(2, 1).parameters())
        >>> try:
        ...     check_optimizer_holds(net, other, "fit would train nothing")
        ... except ValueError as error:
        ...     print(str(error).split(", so ")[1].split(":")[0])
        fit would train nothing
    """
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if trainable and not trainable & held_parameter_ids(optimizer):
        raise ValueError(
            "the optimizer holds none of the model's trainable parameters, so "
            f"{consequence}: create it from this model's parameters "
            "(bnn.convert returns a new network; an assigned guide's parameters "
            "belong to the model too)"
        )


def check_floating_input(
    value: object, owner: str, what: str = "input", *, sparse: bool = False
) -> None:
    """Refuse an input a Bayesian layer cannot run, with an error naming it.

    A non-tensor, an integer or complex tensor (the weights are real), or a
    layout the layer does not take
    (:func:`~pyrolite_bnn._input_layouts.check_input_layout`): ``torch.nn``
    raises deep inside ``F.linear``/``F.conv*``/the recurrence (``mat1 and
    mat2 must have the same dtype``, ``Expected result Tensor to be of format
    CSR``); this says what the layer expected, before its weights are drawn.

    Args:
        value: the input.
        owner: the layer's name for the message (e.g. its class name).
        what: which input (``"query"``, ``"h0"``...).
        sparse: whether the layer takes 2-D sparse matrices too.

    Raises:
        TypeError: if ``value`` is not a tensor, not a real floating-point one,
            or of a layout the layer does not take.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{owner} expected a torch.Tensor {what}, got {type(value).__name__}"
            + (
                " (convert it with torch.as_tensor(x, dtype=torch.float32))"
                if hasattr(value, "__array__") or isinstance(value, list | tuple)
                else ""
            )
        )
    if value.is_complex():
        raise TypeError(
            f"{owner} expected a real floating-point {what}, got dtype "
            f"{value.dtype}: its weights are real (pass the real and imaginary "
            "parts as features, torch.view_as_real(x).flatten(-2), or a real "
            "function of x such as x.abs())"
        )
    if not value.is_floating_point():
        raise TypeError(
            f"{owner} expected a floating-point {what}, got dtype {value.dtype} "
            "(convert it with x.float(), or use bnn.VIEmbedding for indices)"
        )
    check_input_layout(value, owner, what, sparse=sparse)
