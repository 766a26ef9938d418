"""The precision summaries and sums are computed in: at least ``float32``.

Predictive summaries over particles, and the sums over all the weights of a
network (its KL terms and log-densities: a ``float16`` sum overflows at 65504,
and a layer of 10,000 weights at the default initialisation has a KL of about
64,000 nats), read half-precision tensors as ``float32`` first. The cast is
differentiable: gradients reach the half-precision tensor.

The KL of a half-precision network also reads its priors' hyperparameters as
``float32`` (:func:`computed_in_full_precision`): computed in ``bfloat16``,
``log(0.1)`` is 0.0047 nats off and a learned scale ``exp(log_scale)`` of
0.3003 comes out 0.3008, errors that every weight's term repeats and no sum
averages out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain
from typing import TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "computed_in_full_precision",
    "full_precision",
    "is_narrow",
    "summary_dtype",
]

_T = TypeVar("_T")

_WIDE = frozenset({torch.float32, torch.float64})


def full_precision(output: Tensor) -> Tensor:
    """``output`` in at least ``float32``: ``float16``/``bfloat16`` become ``float32``.

    Summaries over particles in half precision lose what they measure: with 8
    bits of mantissa the mutual information, a small difference of two
    entropies, has a relative error of 100 % and comes out negative. Integer
    and ``bool`` outputs become torch's default dtype (a mean or a quantile of
    integers is not an integer); ``float32`` and ``float64`` are returned
    unchanged.

    Example:
        >>> import torch
        >>> full_precision(torch.zeros(2, dtype=torch.bfloat16)).dtype
        torch.float32
        >>> full_precision(torch.zeros(2, dtype=torch.float64)).dtype
        torch.float64
    """
    return output.to(summary_dtype(output.dtype))


def summary_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype summaries of ``dtype`` outputs are computed in.

    ``float32`` for a floating dtype narrower than it, the default dtype for
    integers and ``bool``, else ``dtype``.
    """
    if dtype in _WIDE:  # every training step: the common case first
        return dtype
    if not (dtype.is_floating_point or dtype.is_complex):
        return torch.get_default_dtype()
    if dtype.is_floating_point and torch.finfo(dtype).bits < 32:
        return torch.float32
    return dtype


def is_narrow(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is a floating dtype narrower than ``float32``.

    ``float16`` and ``bfloat16``: a draw ``mu + sigma * eps`` rounded to it
    can lose its noise, and the densities and KL terms computed in it their
    precision.

    Example:
        >>> import torch
        >>> is_narrow(torch.bfloat16), is_narrow(torch.float32)
        (True, False)
    """
    return (
        dtype not in _WIDE and dtype.is_floating_point and summary_dtype(dtype) != dtype
    )


class _Computation(nn.Module):
    """A module whose call is ``compute()``; it holds ``modules`` as submodules."""

    def __init__(
        self, modules: Sequence[nn.Module], compute: Callable[[], object]
    ) -> None:
        super().__init__()
        self.held = nn.ModuleList(modules)
        self.compute = compute

    def forward(self) -> object:
        """Run the computation."""
        return self.compute()


def computed_in_full_precision(
    modules: Sequence[nn.Module], compute: Callable[[], _T]
) -> _T:
    """``compute()`` while the modules' half-precision tensors read as ``float32``.

    The ``float16``/``bfloat16`` parameters and buffers of ``modules`` (a
    network's priors) are replaced, for the call, by their ``float32`` casts,
    so that every computation inside reads them so: a prior's density and
    closed-form KL, and a hyperparameter computed from them (a learned
    prior scale ``exp(log_scale)``), are then ``float32`` arithmetic on the
    stored values. The casts are differentiable: gradients reach the stored
    tensors. The modules hold their own tensors again when the call returns
    (or raises); modules without half-precision tensors are not touched. As
    with ``torch.func.functional_call``, which does the swap, code running the
    same modules in another thread meanwhile would see the casts.

    Args:
        modules: the modules whose tensors are read as ``float32``.
        compute: the computation, without arguments.

    Returns:
        What ``compute()`` returns.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> prior = bnn.NormalPrior(0.0, 0.1).to(torch.bfloat16)
        >>> computed_in_full_precision([prior], lambda: prior.scale.dtype)
        torch.float32
        >>> prior.scale.dtype
        torch.bfloat16
    """
    # Each module once: swapped twice, its second swap would put the first's
    # cast back on return.
    unique = list({id(module): module for module in modules}.values())
    widened = {
        f"held.{index}.{name}": full_precision(tensor)
        for index, module in enumerate(unique)
        for name, tensor in chain(module.named_parameters(), module.named_buffers())
        if is_narrow(tensor.dtype)
    }
    if not widened:
        return compute()
    # A tensor shared by two modules would be swapped in the first only; the
    # library's priors share none (assigned hyperparameters are copied), and
    # the search for such ties costs more than the swap.
    holder = _Computation(unique, compute)
    result: _T = torch.func.functional_call(holder, widened, (), tie_weights=False)
    return result
