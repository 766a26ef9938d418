"""``torch.distributed`` awareness: the wrapped network, ranks and reductions.

A ``DistributedDataParallel`` wrapper is a plain module holding one network in
``.module``, ``torch.compile``'s wrapper (``OptimizedModule``) one in
``._orig_mod``; :func:`unwrap` gives that network to the functions that need a
:class:`~pyrolite_bnn.VIModule` or its state (``predict``, ``model_loss``,
``to_deterministic``, ``laplace``, checkpoints). :class:`Ranks` is what
:func:`~pyrolite_bnn.training.fit` needs from the process group: whether this
process is rank 0, sums over ranks, and the data loader's sharding.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

__all__ = ["Ranks", "is_compiled", "unwrap"]


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is ``torch.compile``'s wrapper (an ``OptimizedModule``).

    torch has no public test for it. Its module is looked up only once loaded
    (compiling loads it), so that the check never imports the compiler.
    """
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(model, eval_frame.OptimizedModule)


def _wrapped(model: nn.Module) -> Iterator[nn.Module]:
    """``model``, then the modules inside its wrappers, the outermost first.

    The wrappers are ``DistributedDataParallel`` and ``torch.compile``'s, in
    either order (``torch.compile(DDP(net))`` is torch's advice).
    """
    while True:
        yield model
        if isinstance(model, DistributedDataParallel):
            inner = model.module
        elif is_compiled(model):
            inner = model._orig_mod
        else:
            return
        assert isinstance(inner, nn.Module)
        model = inner


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside ``DistributedDataParallel`` and ``torch.compile``.

    ``model`` itself if it is neither. The functions reading the network's
    weight sites or state use it: a compiled network's state keys carry the
    wrapper's ``_orig_mod.`` prefix, its weight sites do not.
    """
    *_, network = _wrapped(model)
    return network


class Ranks:
    """The process group a model is trained in (one process without one).

    Args:
        model: the model passed to ``fit``; a ``DistributedDataParallel``
            wrapper (compiled or not) means training in its process group.
    """

    def __init__(self, model: nn.Module) -> None:
        self.group: Any = None
        self.rank = 0
        self.size = 1
        parallel = [
            m for m in _wrapped(model) if isinstance(m, DistributedDataParallel)
        ]
        if parallel:
            self.group = parallel[0].process_group
            self.rank = torch.distributed.get_rank(self.group)
            self.size = torch.distributed.get_world_size(self.group)

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.size > 1

    @property
    def main(self) -> bool:
        """Whether this process is rank 0 (it shows progress, writes files)."""
        return self.rank == 0

    def sum(self, values: Tensor) -> Tensor:
        """``values`` summed over the ranks (``values`` itself in one process)."""
        if not self.distributed:
            return values
        total = values.detach().clone()
        torch.distributed.all_reduce(total, group=self.group)
        return total

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on at least one rank."""
        return bool(self.sum(torch.tensor([float(flag)], device=self.device)) > 0)

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Average the gradients of parameters that DDP does not synchronise."""
        if not self.distributed:
            return
        for param in params:
            if param.grad is not None:
                torch.distributed.all_reduce(param.grad, group=self.group)
                param.grad /= self.size

    @property
    def device(self) -> torch.device:
        """The device collectives run on (CUDA for NCCL, else the CPU)."""
        if self.distributed and torch.distributed.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def shard(self, loader: Iterable[Any], name: str) -> Iterable[Any]:
        """``loader`` reading this rank's part of the data.

        A ``DataLoader`` whose sampler is not a ``DistributedSampler`` is rebuilt
        with one (shuffling if the loader shuffled); any other iterable, and a
        loader that already has one, is this rank's data as it is.

        Raises:
            ValueError: for a ``DataLoader`` with a custom ``batch_sampler``,
                which cannot be sharded here.
        """
        if not self.distributed or not isinstance(loader, DataLoader):
            return loader
        if isinstance(loader.sampler, DistributedSampler):
            return loader
        if loader.batch_size is None:
            raise ValueError(
                f"{name} has a custom batch_sampler, which fit cannot shard over "
                f"{self.size} processes: give it a DistributedSampler (or give a "
                "DataLoader with batch_size)"
            )
        sampler: DistributedSampler[Any] = DistributedSampler(
            loader.dataset,
            num_replicas=self.size,
            rank=self.rank,
            shuffle=isinstance(loader.sampler, RandomSampler),
        )
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            drop_last=loader.drop_last,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            generator=loader.generator,
            persistent_workers=loader.persistent_workers,
        )


def set_epoch(loader: Iterable[Any], epoch: int) -> None:
    """Tell the loader's sampler the epoch (a ``DistributedSampler`` reshuffles)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
