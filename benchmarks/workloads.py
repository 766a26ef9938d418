"""The reference workloads (``../shared/bench/reference.py``) built with pyrolite_bnn.

Same shapes, same initialisation scale (posterior std ``softplus(-6)``), same
loss (mean cross-entropy + KL / 60 000), Adam with lr 1e-3.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import pyrolite_bnn as bnn

N_TRAIN = 60_000
INIT_SCALE = float(F.softplus(torch.tensor(-6.0)))


def build(
    workload: str, estimator: str = "reparam"
) -> tuple[bnn.VIModule, tuple[int, ...]]:
    """Network and input shape (without batch) of a workload."""
    opts = {
        "variational": bnn.MeanFieldNormal(init_scale=INIT_SCALE),
        "estimator": estimator,
    }
    if workload == "mlp":
        sizes = [784, 512, 512, 10]
    elif workload == "tiny":
        sizes = [16, 32, 32, 10]
    elif workload == "conv":
        net = bnn.VISequential(
            bnn.VIConv2d(1, 32, 5, **opts),
            nn.ReLU(),
            nn.MaxPool2d(2),
            bnn.VIConv2d(32, 64, 5, **opts),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            bnn.VILinear(1024, 10, **opts),
        )
        return net, (1, 28, 28)
    else:
        raise ValueError(f"unknown workload {workload!r}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(bnn.VILinear(a, b, **opts))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return bnn.VISequential(*layers), (sizes[0],)


def make_step(
    workload: str,
    estimator: str = "reparam",
    samples: int = 10,
    batch: int = 128,
    device: str = "cpu",
    seed: int = 0,
    compile: bool = False,
) -> tuple[Callable[[], torch.Tensor], bnn.VIModule]:
    """One training step of pyrolite_bnn on the workload (as reference.make_step).

    ``compile=True`` uses ``KullbackLeiblerLoss(..., compile=True)``: the graph
    is captured and compiled on the third step, so warm up at least three steps.
    """
    torch.manual_seed(seed)
    net, shape = build(workload, estimator)
    net.to(device)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), N_TRAIN, compile=compile)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn.model_loss(net, x, y, samples=samples)
        loss.backward()
        opt.step()
        return loss.detach()

    return step, net


def make_predict(
    workload: str,
    samples: int = 100,
    batch: int = 128,
    device: str = "cpu",
    seed: int = 0,
) -> Callable[[], torch.Tensor]:
    """``bnn.predict`` with ``samples`` particles on one batch."""
    torch.manual_seed(seed)
    net, shape = build(workload)
    net.to(device)
    x = torch.randn(batch, *shape, device=device)

    def run() -> torch.Tensor:
        return bnn.predict(net, x, bnn.Categorical(), samples=samples).probs

    return run


def reference_forward(
    reference: object,
    workload: str,
    samples: int = 100,
    batch: int = 128,
    device: str = "cpu",
    seed: int = 0,
) -> Callable[[], torch.Tensor]:
    """The reference's forward pass (weight draws), ``samples`` particles, no grad."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    layer_cls = reference._Layer  # type: ignore[attr-defined]
    linear = reference._linear  # type: ignore[attr-defined]
    if workload == "mlp":
        layers = [
            layer_cls((512, 784), dev),
            layer_cls((512, 512), dev),
            layer_cls((10, 512), dev),
        ]
        x = torch.randn(batch, 784, device=dev)
    elif workload == "tiny":
        layers = [
            layer_cls((32, 16), dev),
            layer_cls((32, 32), dev),
            layer_cls((10, 32), dev),
        ]
        x = torch.randn(batch, 16, device=dev)
    else:
        raise ValueError("reference forward only for mlp/tiny")

    @torch.no_grad()
    def run() -> torch.Tensor:
        h = x.expand(samples, *x.shape)
        for i, layer in enumerate(layers):
            h = linear(layer, h, samples, "weight")
            if i < len(layers) - 1:
                h = F.relu(h)
        return h.softmax(-1).mean(0)

    return run


__all__ = ["build", "make_predict", "make_step", "math", "reference_forward"]
