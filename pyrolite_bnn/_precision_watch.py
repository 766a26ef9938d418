"""Notice posterior scales stored in bfloat16 while an optimizer updates them.

A posterior standard deviation is trained through an unconstrained parameter,
``softplus(rho)`` by default; the default ``init_scale=1e-3`` puts ``rho`` near
``-6.9``, where neighbouring bfloat16 numbers are ``2**-5 = 0.031`` apart. An
optimizer step smaller than half of that rounds away: with ordinary learning
rates (an Adam step is about its learning rate) every ``rho`` stays at its
initial value while the means train, and the network silently becomes a point
estimate (Lightning's ``precision="bf16-true"``, ``model.to(torch.bfloat16)``).
Parameters kept in float32 with the computation in bfloat16 under
``torch.autocast`` (Lightning's ``"bf16-mixed"``, accelerate's
``mixed_precision="bf16"``) keep every step. The loss warns once per network
when an optimizer that holds such bfloat16 scales has taken a step.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import torch
from torch import Tensor

from pyrolite_bnn._change_watch import (
    count_steps,
    holds_any,
    optimizers_started,
    stepped_optimizers,
)
from pyrolite_bnn._warnings import warn_at_caller

__all__ = ["BFloat16ScaleWatch"]


class BFloat16ScaleWatch:
    """Warns once per network whose posterior scales train in bfloat16.

    :meth:`check` is called on every training evaluation of the loss. It looks
    at a network's scale parameters on its first call and again whenever an
    optimizer took its first step since; the loss's key holds the output's
    dtype, so a network converted with ``.to(torch.bfloat16)`` is looked at
    again, also under the optimizer it had (not: scales in a parameter group
    added to an optimizer that has stepped); in between
    it costs a dictionary lookup. It warns when some of them are bfloat16
    tensors that require gradients and an optimizer that has stepped holds
    one of them: a loss evaluated on a bfloat16 network without training it
    (no optimizer, or one over other parameters) gives no warning.
    """

    def __init__(self) -> None:
        count_steps()
        # The optimizers started when each network was last looked at.
        self.seen: dict[Hashable, int] = {}
        self.warned: set[Hashable] = set()

    def __getstate__(self) -> dict[str, object]:
        """Nothing to keep: a copy (``deepcopy``, pickling) checks afresh."""
        return {}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__()  # type: ignore[misc]

    def check(self, key: Hashable, scales: Callable[[], Mapping[str, Tensor]]) -> None:
        """Warn (once per ``key``) if an optimizer steps bfloat16 scales.

        Args:
            key: identifies the network's guide cheaply.
            scales: returns the guide's unconstrained scale parameters by name.
        """
        started = optimizers_started()
        if key in self.warned or self.seen.get(key) == started:
            return
        self.seen[key] = started
        half = {
            name: tensor
            for name, tensor in scales().items()
            if tensor.dtype == torch.bfloat16 and tensor.requires_grad
        }
        if not half:
            return
        ids = {id(tensor) for tensor in half.values()}
        if not any(holds_any(optimizer, ids) for optimizer in stepped_optimizers()):
            return
        self.warned.add(key)
        example = next(iter(half))
        warn_at_caller(
            f"the posterior's scale parameters (e.g. {example!r}, {len(half)} in "
            "all) are stored in torch.bfloat16 while an optimizer updates them: "
            "neighbouring bfloat16 numbers near the default rho = -6.9 are 0.031 "
            "apart, so optimizer steps smaller than 0.016 round away, the "
            "posterior standard deviations stay at their initial values and the "
            "network trains as a point estimate. Keep the parameters in float32 "
            "and compute in bfloat16 under torch.autocast(device_type, "
            "dtype=torch.bfloat16) (Lightning: precision='bf16-mixed', not "
            "'bf16-true'; accelerate: mixed_precision='bf16')"
        )
