"""Batch norm with each particle normalised over its own examples.

Inside a network, activations are folded ``(B * S, C, *)`` (row ``b * S + s``
is example ``b`` under particle ``s``). torch's ``BatchNorm`` in training mode
would take its statistics over all ``B * S`` rows: each particle's output would
depend on the other particles' weight draws (the ``S`` particles are no longer
``S`` separate networks, as the Monte-Carlo ELBO and ``predict`` assume), and
the running variance would get Bessel's correction for ``B * S`` values where
the ``S`` rows of an example are nearly copies (``running_var`` low by the
factor ``(B - 1) / B * B S / (B S - 1)``: 0.53 at ``B = 2``).

:class:`BatchNorm1d`, :class:`BatchNorm2d` and :class:`BatchNorm3d` are
torch's classes (same arguments, parameters, buffers and ``state_dict`` keys)
whose training-mode statistics are taken per particle: the folded input is
viewed as ``(B, S * C, *)``, each of the ``S * C`` (particle, channel) pairs is
normalised over its ``B`` examples (times the spatial positions), and the
running statistics move by the average over particles of what ``S`` separate
torch batch norms would do. Everywhere else (evaluation with running
statistics, outside a network, one particle, an input shared by all
particles) they compute exactly what torch's class does.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from pyrolite_bnn import _particles
from pyrolite_bnn._network import uses_batch_statistics
from pyrolite_bnn._validation import check_count
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.layers import functional

__all__ = [
    "PARTICLE_BATCH_NORMS",
    "TORCH_BATCH_NORMS",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "batch_norm",
    "warn_plain_batch_norm",
]


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    samples: int = 1,
) -> Tensor:
    """``F.batch_norm`` of a folded input, each particle over its own examples.

    With ``training=True`` (batch statistics) and ``samples > 1``, the input
    ``(B * S, C, *)`` is viewed as ``(B, S * C, *)`` and normalised per
    (particle, channel) over ``B`` examples and the spatial positions. The
    running statistics, if given, move by the average over particles of the
    ``S`` per-particle updates: ``running_mean`` towards the mean of the
    particles' batch means and ``running_var`` towards the mean of their
    unbiased batch variances (``n = B * prod(*)`` values each). Otherwise it is
    ``F.batch_norm`` (running statistics act row by row).

    Args:
        input: ``(B * S, C, *)``, folded batch-major (row ``b * S + s``).
        running_mean: ``(C,)`` running mean, updated in place, or ``None``.
        running_var: ``(C,)`` running variance, updated in place, or ``None``.
        weight: ``(C,)`` scale, or ``None``.
        bias: ``(C,)`` shift, or ``None``.
        training: whether batch statistics are used (and running ones updated).
        momentum: weight of the new statistics in the running ones.
        eps: added to the variance for stability.
        samples: number of particles ``S`` folded into the batch.

    Returns:
        The normalised input, shaped like ``input``.

    Raises:
        ValueError: if ``B * S`` is not a multiple of ``samples``, or a
            particle has a single value per channel in training, or
            ``samples < 1``.
        TypeError: if ``samples`` is not an integer.
        RuntimeError: torch's, if a statistic or parameter does not have one
            element per channel; its sizes are the input's channels, as in
            torch's ``F.batch_norm``, not the grouped ``S`` times as many.

    Example:
        >>> import torch
        >>> x = torch.randn(8, 3)  # B = 4 examples, S = 2 particles
        >>> out = batch_norm(x, None, None, training=True, samples=2)
        >>> out.shape
        torch.Size([8, 3])
        >>> first = out[0::2]  # particle 0's rows, normalised on their own
        >>> torch.allclose(first.mean(0), torch.zeros(3), atol=1e-6)
        True
    """
    samples = check_count(samples, "samples")
    if training:
        _check_values_per_channel(input, samples)
    if samples == 1 or not training:
        return F.batch_norm(
            input, running_mean, running_var, weight, bias, training, momentum, eps
        )
    rows, channels = input.shape[0], input.shape[1]
    spatial = input.shape[2:]
    if rows % samples:
        raise ValueError(
            f"batch norm got {rows} rows, not a multiple of samples={samples}"
        )
    batch = rows // samples
    # (B * S, C, *) is (B, S * C, *): channel s * C + c is particle s's channel c.
    grouped = input.reshape(batch, samples * channels, *spatial)
    mean_per_particle = None if running_mean is None else running_mean.repeat(samples)
    var_per_particle = None if running_var is None else running_var.repeat(samples)
    try:
        out = F.batch_norm(
            grouped,
            mean_per_particle,
            var_per_particle,
            None if weight is None else weight.repeat(samples),
            None if bias is None else bias.repeat(samples),
            True,
            momentum,
            eps,
        )
    except RuntimeError as error:
        # torch names the grouped sizes, S times the channels the user wrote.
        statistics = {
            "running_mean": running_mean,
            "running_var": running_var,
            "weight": weight,
            "bias": bias,
        }
        for name, tensor in statistics.items():
            if tensor is not None and tensor.numel() != channels:
                raise RuntimeError(
                    f"{name} should contain {channels} elements not "
                    f"{tensor.numel()}: the input has {channels} channels "
                    "(dimension 1 of its shape "
                    f"{functional.describe_input_shape(input)}), the batch norm "
                    f"was built for num_features={tensor.numel()}"
                ) from error
        raise
    with torch.no_grad():
        for running, per_particle in (
            (running_mean, mean_per_particle),
            (running_var, var_per_particle),
        ):
            if running is not None and per_particle is not None:
                running.copy_(per_particle.view(samples, channels).mean(0))
    return out.reshape(input.shape)


def _check_values_per_channel(input: Tensor, samples: int) -> None:
    """Refuse batch statistics over one value per channel (and per particle).

    torch's ``F.batch_norm`` refuses them too ("Expected more than 1 value per
    channel when training"); this message adds where the one example usually
    comes from: a ``DataLoader``'s last batch, when the data set's size is one
    more than a multiple of ``batch_size``.

    Args:
        input: ``(B * S, C, *)``, folded batch-major (``(B, C, *)`` for one
            particle).
        samples: the particles ``S`` folded into its batch.

    Raises:
        ValueError: if each particle's channel has one value (``B * prod(*)
            == 1``).

    Example:
        >>> import torch
        >>> _check_values_per_channel(torch.zeros(2, 3), samples=1)
        >>> try:
        ...     _check_values_per_channel(torch.zeros(2, 3), samples=2)
        ... except ValueError as error:
        ...     print("drop_last=True" in str(error))
        True
    """
    if input.dim() < 2 or input.shape[0] != samples or math.prod(input.shape[2:]) != 1:
        return  # (B * prod(*) == 1: B == 1 and no positions)
    particles = (
        f": each of the {samples} particles is normalised over its own 1 example"
        if samples > 1
        else ""
    )
    raise ValueError(
        "Expected more than 1 value per channel when training, got input size "
        f"{functional.describe_input_shape(input)}{particles}. A batch of one "
        "example in training is often a DataLoader's last batch (the data set's "
        "size is one more than a multiple of batch_size): pass drop_last=True "
        "to the DataLoader, or choose another batch_size"
    )


def _folded_samples(input: Tensor, owner: str) -> int:
    """``S`` if ``input`` holds ``S > 1`` particles folded in its batch, else 1.

    1 outside a network, with one particle, and for an input shared by all
    particles (no Bayesian layer before it: one batch for every particle).

    Raises:
        ValueError: for rows that are neither a batch nor a batch times ``S``
            (positions moved into the batch, ``h.reshape(-1, C)``): which
            particle a row belongs to cannot be told.
    """
    state = _particles.current()
    if state is None or state.samples == 1 or not state.classified[0]:
        return 1  # (no Bayesian layer has read a tensor yet: nothing is folded)
    layout = _particles.row_layout(state, input, state.samples, state.batch_size)
    if layout is None:
        raise ValueError(
            f"{owner} got {input.shape[0]} rows inside a network with "
            f"{state.samples} particles: neither the batch ({state.batch_size}) nor "
            "the batch times the particles, so the rows of a particle cannot be "
            "told (positions moved into the batch, h.reshape(-1, C), mix them). "
            "Give it the (batch, channels, positions) layout instead: "
            "bn(h.transpose(1, 2)).transpose(1, 2) for a (batch, positions, "
            "channels) activation"
        )
    return 1 if layout else state.samples


class _ParticleBatchNorm(_BatchNorm):
    """torch's batch norm, with batch statistics taken per particle."""

    def forward(self, input: Tensor) -> Tensor:
        """Normalise ``input``, each particle over its own examples."""
        self._check_input_dim(input)  # type: ignore[no-untyped-call]
        if not uses_batch_statistics(self):
            return super().forward(input)
        samples = _folded_samples(input, type(self).__name__)
        _check_values_per_channel(input, samples)  # (before torch counts the batch)
        if samples == 1:
            return super().forward(input)
        # torch's bookkeeping, as in _BatchNorm.forward.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            tracked = self.num_batches_tracked
            if tracked is not None:
                tracked.add_(1)
                if self.momentum is None:  # cumulative moving average
                    factor = 1.0 / float(tracked)
        update = self.training and self.track_running_stats
        return batch_norm(
            input,
            self.running_mean if update else None,
            self.running_var if update else None,
            self.weight,
            self.bias,
            True,
            factor,
            self.eps,
            samples=samples,
        )


class BatchNorm1d(_ParticleBatchNorm, nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` with each particle normalised on its own.

    A subclass of torch's class with the same arguments, parameters, buffers
    and ``state_dict`` keys. Inside a network with ``S > 1`` particles, in
    training mode (or without running statistics), a folded input is
    normalised per particle over its own ``B`` examples, and the running
    statistics move by the average over particles of the ``S`` per-particle
    updates (see :func:`batch_norm`); ``momentum=None`` and
    ``num_batches_tracked`` behave as torch's. Otherwise (evaluation with
    running statistics, outside a network, one particle, an input shared by
    all particles) it is torch's ``BatchNorm1d``. :func:`~pyrolite_bnn.convert`
    turns torch's class into this one.

    Args:
        num_features: number of features (channels) ``C``.
        eps: added to the variance for stability.
        momentum: weight of the new statistics in the running ones
            (``None``: cumulative average).
        affine: whether to learn ``weight`` and ``bias``.
        track_running_stats: whether to keep running statistics.
        device: device of parameters and buffers.
        dtype: dtype of parameters and buffers.
        bias: if ``False`` (with ``affine=True``), no learned shift.

    Shape:
        - Input: ``(B, C)`` or ``(B, C, L)``; ``(B * S, ...)`` folded inside a
          network.
        - Output: same shape as the input.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> net = bnn.VISequential(bnn.VILinear(3, 8), bnn.BatchNorm1d(8))
        >>> isinstance(net[1], torch.nn.BatchNorm1d)
        True
        >>> net(torch.randn(4, 3), samples=2).shape
        torch.Size([2, 4, 8])
    """


class BatchNorm2d(_ParticleBatchNorm, nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` with each particle normalised on its own.

    See :class:`BatchNorm1d` for the behaviour and the arguments.

    Shape:
        - Input: ``(B, C, H, W)``; ``(B * S, C, H, W)`` folded inside a network.
        - Output: same shape as the input.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> net = bnn.VISequential(bnn.VIConv2d(1, 4, 3), bnn.BatchNorm2d(4))
        >>> net[1].running_mean.shape
        torch.Size([4])
        >>> net(torch.randn(2, 1, 5, 5), samples=3).shape
        torch.Size([3, 2, 4, 3, 3])
    """


class BatchNorm3d(_ParticleBatchNorm, nn.BatchNorm3d):
    """:class:`torch.nn.BatchNorm3d` with each particle normalised on its own.

    See :class:`BatchNorm1d` for the behaviour and the arguments.

    Shape:
        - Input: ``(B, C, D, H, W)``; ``(B * S, C, D, H, W)`` folded inside a
          network.
        - Output: same shape as the input.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> net = bnn.VISequential(bnn.VIConv3d(1, 2, 1), bnn.BatchNorm3d(2))
        >>> net(torch.randn(2, 1, 3, 3, 3), samples=2).shape
        torch.Size([2, 2, 2, 3, 3, 3])
    """


#: torch's classes and the library's counterparts (:func:`pyrolite_bnn.convert`).
PARTICLE_BATCH_NORMS: dict[type[nn.Module], type[_ParticleBatchNorm]] = {
    nn.BatchNorm1d: BatchNorm1d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.BatchNorm3d: BatchNorm3d,
}

#: The inverse of :data:`PARTICLE_BATCH_NORMS` (:func:`pyrolite_bnn.to_deterministic`).
TORCH_BATCH_NORMS: dict[type[nn.Module], type[nn.Module]] = {
    particle: plain for plain, particle in PARTICLE_BATCH_NORMS.items()
}

# Torch batch norms already warned about (one warning per module object).
_WARNED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def warn_plain_batch_norm(
    module: nn.Module, args: tuple[Any, ...], state: _particles.ParticleState
) -> None:
    """Warn once per module if a torch batch norm is about to mix the particles.

    For the network machinery: called before a module runs inside a network.
    A batch norm that is not one of this module's classes, using batch
    statistics (training mode, or no running statistics), with ``S > 1``
    particles and an input folded ``(B * S, ...)``, normalises over all
    ``B * S`` rows; the ``UserWarning`` says so and names the replacement.
    An input still shared by all particles (``(B, ...)``) is fine.

    Args:
        module: the module about to run.
        args: its positional inputs.
        state: the running network's particle state.
    """
    if (
        not isinstance(module, _BatchNorm)
        or isinstance(module, _ParticleBatchNorm)
        or state.samples == 1
        or module in _WARNED
        or not uses_batch_statistics(module)
    ):
        return
    first = args[0] if args else None
    if not isinstance(first, Tensor) or first.dim() == 0:
        return
    rows, samples = int(first.shape[0]), state.samples
    if not state.classified[0]:
        return  # no Bayesian layer has read a tensor yet: nothing is folded
    try:
        layout = _particles.row_layout(state, first, samples, state.batch_size)
    except _particles.AmbiguousLayoutError:
        return  # the network's next Bayesian layer raises it with its name
    if layout:
        return  # shared by all particles: one batch for every particle
    _WARNED.add(module)
    modules = () if state.root is None else state.root.named_modules()
    path = next((name for name, sub in modules if sub is module), "")
    where = f" ({path!r})" if path else ""
    dims = {nn.BatchNorm1d: "1d", nn.BatchNorm2d: "2d", nn.BatchNorm3d: "3d"}
    suffix = next((d for cls, d in dims.items() if isinstance(module, cls)), None)
    replacement = f"bnn.BatchNorm{suffix}" if suffix else "bnn.BatchNorm1d/2d/3d"
    warn_at_caller(
        f"torch's {type(module).__name__}{where} in training mode inside a Bayesian "
        f"network with {samples} particles normalises over all {rows} folded rows "
        f"(the batch times the particles): each particle's output then depends on "
        "the other particles' weight draws, and the running variance is biased "
        f"low. Use {replacement} (same arguments and state_dict; bnn.convert "
        "makes the change), which normalises each particle over its own examples"
    )
