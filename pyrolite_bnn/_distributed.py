"""``torch.distributed`` awareness: the wrapped network, ranks and reductions.

A ``DistributedDataParallel`` wrapper is a plain module holding one network in
``.module`` (as do ``nn.DataParallel`` and ``torch.optim.swa_utils.AveragedModel``,
whose ``.module`` is the averaged copy), ``torch.compile``'s wrapper
(``OptimizedModule``) one in ``._orig_mod``; :func:`unwrap` gives that network
to the functions that need the network (a :class:`~pyrolite_bnn.VIModule` or a
plain module holding Bayesian layers) or its state (``predict``,
``model_loss``, ``to_deterministic``, ``laplace``, checkpoints).
:class:`Ranks` is what
:func:`~pyrolite_bnn.training.fit` needs from the process group: whether this
process is rank 0, sums over ranks, and the data loader's sharding.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sized
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DataParallel, DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

__all__ = ["Ranks", "averaged_model", "is_compiled", "unwrap"]


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is ``torch.compile``'s wrapper (an ``OptimizedModule``).

    torch has no public test for it. Its module is looked up only once loaded
    (compiling loads it), so that the check never imports the compiler.
    """
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(model, eval_frame.OptimizedModule)


def _wrapped(model: nn.Module) -> Iterator[nn.Module]:
    """``model``, then the modules inside its wrappers, the outermost first.

    The wrappers are ``DistributedDataParallel``, ``DataParallel``,
    ``AveragedModel`` (SWA, EMA) and ``torch.compile``'s, in any order
    (``torch.compile(DDP(net))`` is torch's advice).
    """
    while True:
        yield model
        if isinstance(model, (DistributedDataParallel, DataParallel, AveragedModel)):
            inner = model.module
        elif is_compiled(model):
            inner = model._orig_mod
        else:
            return
        assert isinstance(inner, nn.Module)
        model = inner


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside ``DistributedDataParallel``, ``torch.compile`` and the like.

    ``model`` itself if it is neither. The functions reading the network's
    weight sites or state use it: a compiled network's state keys carry the
    wrapper's ``_orig_mod.`` prefix, its weight sites do not.
    """
    *_, network = _wrapped(model)
    return network


def averaged_model(model: nn.Module) -> AveragedModel | None:
    """The ``AveragedModel`` that ``model`` is or wraps, if any.

    Its own state (``n_averaged``, the count of averaged networks) is not the
    network's: checkpoints store it beside the network's state, so that an
    interrupted SWA or EMA resumes its average instead of restarting it.
    """
    for wrapper in _wrapped(model):
        if isinstance(wrapper, AveragedModel):
            return wrapper
    return None


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

    def count(self, flag: bool) -> int:
        """On how many ranks ``flag`` is true."""
        return int(self.sum(torch.tensor([float(flag)], device=self.device)).item())

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on at least one rank."""
        return self.count(flag) > 0

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

    def gather(self, value: int) -> list[int]:
        """``value`` of every rank, in rank order (``[value]`` in one process)."""
        if not self.distributed:
            return [value]
        mine = torch.tensor([value], dtype=torch.int64, device=self.device)
        every = [torch.empty_like(mine) for _ in range(self.size)]
        torch.distributed.all_gather(every, mine, group=self.group)
        return [int(t.item()) for t in every]

    def shard(self, loader: Iterable[Any], name: str) -> Iterable[Any]:
        """``loader`` reading this rank's part, as many batches on every rank.

        A ``DataLoader`` with a plain ``SequentialSampler`` or ``RandomSampler``
        is rebuilt with a ``DistributedSampler`` (shuffling if the loader
        shuffled); one with a ``DistributedSampler``, also inside its
        ``batch_sampler``, is used as it is. A loader over an
        ``IterableDataset``, and any other iterable, is this rank's data as it
        is. The ranks compare their numbers of batches: a loader of unknown
        length (a stream) comes back wrapped so that every step the ranks
        check that all of them have a batch.

        Raises:
            ValueError: for a ``DataLoader`` with another sampler or a custom
                ``batch_sampler``, which cannot be sharded here, and for
                loaders of different lengths on different ranks (on every rank).
        """
        if not self.distributed:
            return loader
        if isinstance(loader, DataLoader) and not isinstance(
            loader.dataset, IterableDataset
        ):
            loader = self._distribute(loader, name)
        counts = self.gather(_batch_count(loader))
        if -1 in counts:
            return _Stepwise(loader, self, name)
        if len(set(counts)) > 1:
            raise ValueError(
                f"{name} has {', '.join(map(str, counts))} batches on ranks "
                f"{', '.join(map(str, range(self.size)))}: under DDP every rank "
                "must run the same number of steps per epoch (one rank would wait "
                "for the others' gradients). Give every rank as many batches, "
                "e.g. a DataLoader with a DistributedSampler, which pads the "
                "shards to equal lengths"
            )
        return loader

    def _distribute(self, loader: DataLoader[Any], name: str) -> DataLoader[Any]:
        """``loader`` reading this rank's part of its map-style data set."""
        sampler = loader.sampler
        inner = getattr(loader.batch_sampler, "sampler", None)
        if isinstance(sampler, DistributedSampler) or isinstance(
            inner, DistributedSampler
        ):
            return loader
        if loader.batch_size is None and loader.batch_sampler is not None:
            custom = type(loader.batch_sampler).__name__
            raise ValueError(
                f"{name} has a custom batch_sampler ({custom}), which fit cannot "
                f"shard over {self.size} processes: "
                "give the batch_sampler a DistributedSampler as its .sampler "
                "(fit then uses the loader as it is and calls the sampler's "
                "set_epoch), give a DataLoader with batch_size, or give each "
                "rank its own batches as an iterable that is not a DataLoader"
            )
        plain = type(sampler) is SequentialSampler or (
            type(sampler) is RandomSampler
            and not sampler.replacement
            and sampler.num_samples == len(sampler.data_source)
        )
        if not plain:
            raise ValueError(
                f"{name}'s sampler is a {type(sampler).__name__}, which fit cannot "
                f"shard over {self.size} processes without changing what is "
                "sampled (a DistributedSampler over the whole data set would drop "
                "its indices or weights). Shard it yourself: for a subset, "
                "DataLoader(Subset(dataset, indices), batch_size=..., "
                "shuffle=True), which fit shards, or a DistributedSampler over "
                "the Subset; otherwise give each rank its own batches as an "
                "iterable that is not a DataLoader"
            )
        distributed: DistributedSampler[Any] = DistributedSampler(
            loader.dataset,
            num_replicas=self.size,
            rank=self.rank,
            shuffle=isinstance(sampler, RandomSampler),
        )
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=distributed,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            drop_last=loader.drop_last,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            generator=loader.generator,
            persistent_workers=loader.persistent_workers,
        )


def _batch_count(loader: Iterable[Any]) -> int:
    """How many batches ``loader`` yields, -1 where unknown.

    A loader over an ``IterableDataset`` counts as unknown: its length is the
    data set's estimate.
    """
    if isinstance(loader, DataLoader) and isinstance(loader.dataset, IterableDataset):
        return -1
    if not isinstance(loader, Sized):
        return -1
    try:
        return len(loader)
    except TypeError:  # a __len__ that refuses
        return -1


class _Stepwise:
    """A loader of unknown length whose ranks agree, step by step, to go on.

    Before each step every rank says whether it has a batch (one all-reduce):
    all stop together when none has one, and all raise when only some have.
    """

    def __init__(self, loader: Iterable[Any], ranks: Ranks, name: str) -> None:
        self.loader, self.ranks, self.name = loader, ranks, name

    def __iter__(self) -> Iterator[Any]:
        end = object()
        batches = iter(self.loader)
        step = 0
        while True:
            batch = next(batches, end)
            having = self.ranks.count(batch is not end)
            if having == 0:
                return
            if having < self.ranks.size:
                raise ValueError(
                    f"{self.name} ran out of batches after {step} steps on "
                    f"{self.ranks.size - having} of {self.ranks.size} ranks while "
                    "the others had more: under DDP every rank must yield the "
                    "same number of batches per epoch (one rank would wait for "
                    "the others' gradients). Give every rank's stream as many "
                    "batches"
                )
            yield batch
            step += 1


def set_epoch(loader: Iterable[Any], epoch: int) -> None:
    """Tell the loader's ``DistributedSampler`` the epoch (it reshuffles).

    The sampler is the loader's ``sampler`` or else its ``batch_sampler``'s
    (the loader's own batch sampler holds the loader's ``sampler``).
    """
    if isinstance(loader, _Stepwise):
        loader = loader.loader
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, DistributedSampler):
        sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
