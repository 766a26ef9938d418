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


# Layer widths of the dense workloads, and every workload's input shape.
SIZES = {"mlp": [784, 512, 512, 10], "tiny": [16, 32, 32, 10]}
INPUT_SHAPES = {"mlp": (784,), "tiny": (16,), "conv": (1, 28, 28)}


def layer_stack(
    workload: str,
    linear: Callable[[int, int], nn.Module],
    conv2d: Callable[[int, int, int], nn.Module],
    width: int | None = None,
) -> list[nn.Module]:
    """The workload's layers, built with a library's linear and conv constructors.

    ``width`` replaces the hidden width of a dense workload (``mlp``, ``tiny``).
    """
    if workload == "conv":
        return [
            conv2d(1, 32, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            conv2d(32, 64, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            linear(1024, 10),
        ]
    if workload not in SIZES:
        raise ValueError(f"unknown workload {workload!r}")
    sizes = SIZES[workload]
    if width is not None:
        sizes = [sizes[0], *([width] * (len(sizes) - 2)), sizes[-1]]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return layers


def build(
    workload: str, estimator: str = "reparam", width: int | None = None
) -> tuple[bnn.VIModule, tuple[int, ...]]:
    """Network and input shape (without batch) of a workload (see ``layer_stack``)."""
    opts = {
        "variational": bnn.MeanFieldNormal(init_scale=INIT_SCALE),
        "estimator": estimator,
    }
    layers = layer_stack(
        workload,
        lambda a, b: bnn.VILinear(a, b, **opts),
        lambda c, o, k: bnn.VIConv2d(c, o, k, **opts),
        width,
    )
    return bnn.VISequential(*layers), INPUT_SHAPES[workload]


def make_step(
    workload: str,
    estimator: str = "reparam",
    samples: int = 10,
    batch: int = 128,
    device: str = "cpu",
    seed: int = 0,
    compile: bool = False,
    width: int | None = None,
) -> tuple[Callable[[], torch.Tensor], bnn.VIModule]:
    """One training step of pyrolite_bnn on the workload (as reference.make_step).

    ``compile=True`` uses ``KullbackLeiblerLoss(..., compile=True)``: the graph
    is captured and compiled on the second step, so warm up at least two steps.
    """
    torch.manual_seed(seed)
    net, shape = build(workload, estimator, width)
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


def make_deterministic_step(
    workload: str,
    batch: int,
    device: str = "cpu",
    seed: int = 0,
    width: int | None = None,
) -> Callable[[], torch.Tensor]:
    """A plain torch training step of the workload's architecture at ``batch``.

    Deterministic ``nn.Linear``/``nn.Conv2d`` layers, mean cross-entropy, Adam:
    at ``batch = B * S`` the floor a particle-batched Bayesian step cannot beat
    by much (it does the same matmuls on the same number of rows, and local
    reparameterisation a second one for the variances).
    """
    torch.manual_seed(seed)
    layers = layer_stack(workload, nn.Linear, nn.Conv2d, width)
    net = nn.Sequential(*layers).to(device)
    x = torch.randn(batch, *INPUT_SHAPES[workload], device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


__all__ = [
    "build",
    "make_deterministic_step",
    "make_predict",
    "make_step",
    "math",
    "reference_forward",
]
