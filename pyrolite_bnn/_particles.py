"""The particle plate: one vectorised dimension for all Monte-Carlo samples.

The outermost :class:`~pyrolite_bnn.VIModule` call opens
``pyro.plate("particles", S, dim=-2)`` scaled by ``1/S``, so every weight site
is drawn ``S`` times at once and the ELBO is the average over particles.

Inside the network, activations use the *folded* layout ``(B * S, ...)``
(batch-major: row ``b * S + s`` is example ``b`` under particle ``s``): plain
``torch.nn`` modules see an ordinary batch, so ``Flatten``, pooling,
``BatchNorm`` or ``LayerNorm`` work unchanged, and a grouped convolution over
particles reads ``(B, S * C, ...)`` and writes ``(B, S * O, ...)`` as free views
of it. A tensor whose leading size is the input batch ``B`` is *shared* by all
particles (no Bayesian layer has touched it yet) and is never copied ``S``
times. The outermost call returns ``(S, B, ...)``, a transposed view.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, cast

import pyro
import torch
from pyro import poutine
from torch import Tensor, nn

__all__ = ["ParticleState", "current", "particle_plate", "particles"]

PLATE_NAME = "particles"
PLATE_DIM = -2


@dataclass(frozen=True)
class ParticleState:
    """What layers need to know about the current outermost call.

    Attributes:
        samples: number of particles ``S``.
        batch_size: leading size ``B`` of the outermost call's input, or
            ``None`` when the call had no tensor input.
        root: the module of the outermost call, whose output is unfolded to
            ``(S, B, ...)`` (a layer compares it with itself where its outputs
            are laid out differently inside a network, as ``VILSTM``'s states).
        sequence_batches: true batch sizes of the ``batch_first=False`` layers
            that ran inside the network in this call (their inputs are
            ``(L, B, ...)``, so the network's output must keep ``B`` in
            dimension 1 to be unfolded).
    """

    samples: int
    batch_size: int | None
    root: nn.Module | None = None
    sequence_batches: set[int] = field(default_factory=set, compare=False)


_STATE: ContextVar[ParticleState | None] = ContextVar(
    "pyrolite_particles", default=None
)


def current() -> ParticleState | None:
    """The particle state of the running outermost call (``None`` outside)."""
    return _STATE.get()


@contextmanager
def particles(state: ParticleState) -> Iterator[None]:
    """Make ``state`` the current particle state for the body."""
    token = _STATE.set(state)
    try:
        yield
    finally:
        _STATE.reset(token)


@contextmanager
def particle_plate(samples: int, device: torch.device | None = None) -> Iterator[None]:
    """Open the particle plate of size ``samples``, scaled by ``1 / samples``."""
    where = None if device is None else str(device)
    with pyro.plate(PLATE_NAME, samples, dim=PLATE_DIM, device=where):
        if samples == 1:
            yield
        else:
            with poutine.scale(scale=1.0 / samples):
                yield


def first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    """The first tensor among a call's positional, then keyword, arguments."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            return value
    return None


def check_samples(samples: object) -> int:
    """Validate a particle count and return it as ``int``."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    return samples


def unfold(value: object, state: ParticleState) -> object:
    """Turn the folded output of the network into ``(S, B, ...)`` tensors.

    Tensors, and tuples/lists/dicts of tensors, are unfolded; anything else is
    returned unchanged. A tensor whose leading size is ``B`` is shared by all
    particles and is expanded (not copied) to ``(S, B, ...)``.
    """
    if isinstance(value, Tensor):
        return unfold_tensor(value, state)
    if isinstance(value, tuple):
        items = [unfold(v, state) for v in value]
        if hasattr(value, "_fields"):  # a namedtuple
            return cast(Any, type(value))(*items)
        return tuple(items)
    if isinstance(value, list):
        return [unfold(v, state) for v in value]
    if isinstance(value, dict):
        return {k: unfold(v, state) for k, v in value.items()}
    return value


def unfold_tensor(tensor: Tensor, state: ParticleState) -> Tensor:
    """Unfold one tensor (see :func:`unfold`)."""
    samples, batch = state.samples, state.batch_size
    if tensor.dim() == 0:
        return tensor
    if state.sequence_batches and (
        tensor.dim() < 2 or tensor.shape[1] not in state.sequence_batches
    ):
        raise ValueError(
            f"network output of shape {tuple(tensor.shape)} has no sequence "
            "dimension, but the network holds batch_first=False layers: their "
            "particles are folded into the sequence dimension (dimension 0), "
            "so an output without it (a classifier on h_n[-1] or on a pooled "
            "sequence) cannot be unfolded; build the network with "
            "batch_first=True layers and (batch, sequence, feature) inputs"
        )
    rows = tensor.shape[0]
    if batch is None:
        if rows % samples:
            raise ValueError(
                f"network output has leading size {rows}, not a multiple of "
                f"samples={samples}"
            )
        batch = rows // samples
    if rows == samples * batch:
        # Batch-major rows b * S + s -> (S, B, ...), contiguous for the caller.
        unfolded = tensor.reshape(batch, samples, *tensor.shape[1:])
        return unfolded.transpose(0, 1).contiguous()
    if rows == batch:
        return tensor.unsqueeze(0).expand(samples, *tensor.shape)
    raise ValueError(
        f"network output has leading size {rows}; expected the batch size {batch} "
        f"or samples * batch = {samples * batch}. Keep the batch dimension first "
        "inside a VIModule's forward (in a sequence-first network, batch_first="
        "False, the leading dimension is the input's sequence: an output without "
        "it, as a classifier on h_n[-1], needs a batch_first=True network)."
    )
