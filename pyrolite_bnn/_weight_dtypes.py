"""The dtypes the library's parameters can have, at construction and conversion.

Weights are drawn from distributions over the reals (a Normal posterior's
``softplus`` scale, a prior's log-density), and so are the noise scales of the
likelihoods: every floating-point tensor of the library's modules must be of
one of :data:`WEIGHT_DTYPES`. A ``dtype=`` argument is checked where a layer
is built (:func:`check_floating_dtype`); a conversion of a built module
(``.to(torch.complex64)``, ``.type(...)``, ``.to(torch.float8_e4m3fn)``) is
checked before it changes anything (:func:`check_conversion`, from the
modules' ``_apply``, which every such conversion goes through). Without these
checks an integer dtype failed deep inside the constructor (``torch.finfo()
requires a floating point input type``), and a complex or float8 conversion
was accepted and failed at the first call (``"softplus_cpu" not implemented
for 'ComplexFloat'``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["WEIGHT_DTYPES", "check_conversion", "check_floating_dtype"]

# Real floating-point dtypes with the arithmetic the distributions need (float8
# dtypes are floating-point but have no softplus, no randn, no comparisons).
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_NAMES = ", ".join(map(str, WEIGHT_DTYPES))


def check_floating_dtype(dtype: object, what: str = "dtype") -> None:
    """Refuse a ``dtype=`` for weights that is not one of :data:`WEIGHT_DTYPES`.

    Args:
        dtype: the argument (``None``: the default dtype, accepted).
        what: how to name it in the message.

    Raises:
        TypeError: for anything else.

    Example:
        >>> check_floating_dtype(torch.float64)
        >>> try:
        ...     check_floating_dtype(torch.long)
        ... except TypeError as error:
        ...     print(str(error).split(", got ")[1])
        torch.int64
    """
    if dtype is None:
        return
    if dtype not in WEIGHT_DTYPES:
        raise TypeError(
            f"{what} must be a real floating-point torch.dtype ({_NAMES}), "
            f"got {dtype!r}"
        )


def check_conversion(module: nn.Module, fn: Callable[[Tensor], Tensor]) -> None:
    """Refuse a conversion of ``module`` that leaves a tensor in another dtype.

    ``fn`` is what ``module._apply`` applies to every parameter and buffer
    (``.to()``, ``.type()``, ``.half()``, ``.cuda()``...). It
    is tried on an empty tensor of each floating dtype (and device) that
    ``module``'s tree holds, plain torch submodules included, before anything
    is converted: a refused conversion leaves the whole tree as it was. (A
    plain torch container converts its children one after the other: those
    before the first Bayesian one are converted when it refuses.) A
    conversion that fails on its own (a move of the ``meta`` device's data)
    is left to raise torch's error.

    Args:
        module: the module being converted.
        fn: the conversion of one tensor.

    Raises:
        TypeError: naming the dtype the conversion gives and those allowed.

    Example:
        >>> layer = torch.nn.Linear(2, 1)
        >>> check_conversion(layer, lambda t: t.double())
        >>> try:
        ...     check_conversion(layer, lambda t: t.cfloat())
        ... except TypeError as error:
        ...     print(str(error).split(";")[0])
        Linear: this conversion would make its floating-point tensors torch.complex64
    """
    probed: set[tuple[torch.dtype, torch.device]] = set()
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if not tensor.is_floating_point() or (tensor.dtype, tensor.device) in probed:
            continue
        probed.add((tensor.dtype, tensor.device))
        try:
            with torch.no_grad():
                converted = fn(tensor.new_empty(0))
        except Exception:  # torch's _apply raises it, where it belongs
            continue
        if isinstance(converted, Tensor) and converted.dtype not in WEIGHT_DTYPES:
            raise TypeError(
                f"{type(module).__name__}: this conversion would make its "
                f"floating-point tensors {converted.dtype}; the weights, priors "
                "and noise scales of Bayesian layers are parameters of "
                "distributions over the reals and need a real floating-point "
                f"dtype ({_NAMES}). {type(module).__name__} was left as it was"
            )
