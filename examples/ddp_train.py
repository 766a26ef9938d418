"""Train a Bayesian MLP on several processes with DistributedDataParallel.

Each process (rank) trains on its shard of the data; DDP averages the
gradients, so that every rank holds the same network after every step.
``bnn.fit`` shards the ``DataLoader`` (a ``DistributedSampler``), all-reduces the
reported statistics, and shows progress and writes the checkpoint on rank 0.
``dataset_size`` is the global number of training examples: each rank's loss
carries ``KL / N`` and DDP averages, so the KL counts once per step.

Run (CPU, gloo; NCCL and one GPU per process when GPUs are present):
``torchrun --nproc_per_node=2 examples/ddp_train.py --epochs 20``
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset, default_collate

import pyrolite_bnn as bnn


def make_data(n: int, seed: int) -> TensorDataset:
    """Three Gaussian blobs in 8 dimensions, the same on every rank.

    The blob centres are fixed (seed 0); ``seed`` draws the points, so a
    test set of another seed comes from the training distribution.
    """
    centres = 2 * torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=generator)
    x = centres[y] + torch.randn(n, 8, generator=generator)
    return TensorDataset(x, y)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--checkpoint", default=None, help="file written by rank 0")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")  # torchrun's env://
    try:
        rank = dist.get_rank()
        device = torch.device("cpu")
        if cuda:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        torch.manual_seed(0)  # the same initial network everywhere (DDP broadcasts)
        net = bnn.VISequential(
            bnn.VILinear(8, args.hidden), nn.ReLU(), bnn.VILinear(args.hidden, 3)
        ).to(device)
        model = DistributedDataParallel(net, device_ids=[device] if cuda else None)
        # Different draws on each rank: the ranks' particles are independent.
        torch.manual_seed(1 + rank)

        train = make_data(args.train_size, seed=0)
        # fit gives this loader a DistributedSampler: each rank reads its shard
        loader = DataLoader(
            train,
            batch_size=args.batch_size,
            shuffle=True,
            collate_fn=_collate_on(device),
        )
        loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=len(train))
        history = bnn.fit(
            model,
            loss_fn,
            loader,
            args.epochs,
            optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
            progress=rank == 0,
            checkpoint_path=args.checkpoint,
        )
        test = make_data(500, seed=1)
        x, y = (t.to(device) for t in test.tensors)
        accuracy = float(
            (bnn.predict(model, x, bnn.Categorical(), 50).probs.argmax(-1) == y)
            .float()
            .mean()
        )
        if rank == 0:
            print(f"final loss {history.loss[-1]:.4f}, test accuracy {accuracy:.3f}")
        return {"loss": history.loss[-1], "accuracy": accuracy}
    finally:
        dist.destroy_process_group()


def _collate_on(device: torch.device) -> Callable[[list[Any]], list[torch.Tensor]]:
    """Batches put together as usual, then moved to ``device``."""

    def collate(examples: list[Any]) -> list[torch.Tensor]:
        return [t.to(device) for t in default_collate(examples)]

    return collate


if __name__ == "__main__":
    main()
