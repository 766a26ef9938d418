"""Optional benchmark rows for peer libraries: torch_blue and bayesian-torch.

Each row builds the reference workloads (``shared/bench/reference.py``: ``mlp``
784-512-512-10, ``conv`` LeNet-style, ``tiny`` 16-32-32-10) the way the library's
own README / example models do, with standard-normal priors, posterior std
initialised at ``softplus(-6)``, Adam with lr 1e-3, and the loss divided to the
reference's scale (per-datum: likelihood term + KL / 60 000). A row is offered
only if its library is importable; missing libraries are silently left out.

Rows:

``torch_blue``
    ``VISequential`` of ``VILinear`` / ``VIConv2d`` with
    ``KullbackLeiblerLoss(Categorical(), 60_000)`` (the README's default loss);
    ``model(x, samples=S)`` draws S full weight samples, vectorised with
    ``torch.vmap(randomness="different")``. The loss is divided by 60 000.
    Differs from the reference: the likelihood is the log of the *mean*
    predictive probability over the S samples (``log mean_s softmax``, plus
    1e-5 inside the log), not the mean of the per-sample log-likelihoods; the
    KL is a Monte-Carlo estimate (``log q - log p`` of the drawn weights,
    averaged over samples), not the closed form. Mean init is Kaiming-uniform
    as in the reference (``kaiming_initialization=False`` only stops torch_blue
    from rescaling the std by ``1/sqrt(fan_in)``).
``torch_blue/analytic``
    Same network with ``AnalyticalKullbackLeiblerLoss`` (closed-form KL over all
    parameters, concatenated afresh every step). That loss switches off log-prob
    tracking, which puts ``VILinear`` on its local-reparameterisation fast path
    (sampled pre-activations, like reference ``local``); ``VIConv2d`` still
    draws S weight samples under vmap. Likelihood is log-of-mean as above.
``bayesian-torch/reparam``
    ``LinearReparameterization`` / ``Conv2dReparameterization`` layers in an
    ``nn.Module`` whose ``forward`` returns ``(logits, kl_sum)``, as in
    ``bayesian_torch.models.bayesian.simple_cnn_variational``. The S samples are
    a Python loop of S forward passes (one weight draw per pass, shared by the
    batch), then ``nll_loss`` of the mean over samples of ``log_softmax`` (=
    mean-of-log, as the reference) + KL / 60 000 (the library's examples divide
    by the batch size instead). Differs from the reference: each layer's KL is
    the *mean* over its elements (``BaseVariationalLayer_.kl_div`` ends in
    ``kl.mean()``), summed over weight and bias of each layer, so the KL term is
    orders of magnitude smaller than the reference's sum; it is recomputed in
    every one of the S passes and averaged. Means are initialised
    ``N(0, 0.1)`` and ``rho ~ N(-6, 0.1)`` (library init with
    ``posterior_rho_init=-6``).
``bayesian-torch/flipout``
    As ``reparam`` with ``LinearFlipout`` / ``Conv2dFlipout``: each pass runs
    the mean layer plus a sign-flipped perturbation layer (two matmuls /
    convolutions per layer) with one shared weight perturbation.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from workloads import INIT_SCALE, INPUT_SHAPES, N_TRAIN, SIZES, layer_stack

INIT_RHO = -6.0  # workloads.INIT_SCALE is softplus(INIT_RHO)
SEED = 0

Step = Callable[[], torch.Tensor]


def available() -> list[str]:
    """Peer libraries (import names) that are installed."""
    return [
        name
        for name in ("torch_blue", "bayesian_torch")
        if importlib.util.find_spec(name) is not None
    ]


def _data(
    workload: str, batch: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    if workload not in INPUT_SHAPES:
        raise ValueError(f"unknown workload {workload!r}")
    x = torch.randn(batch, *INPUT_SHAPES[workload], device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return x, y


def _torch_blue_step(
    workload: str, samples: int, batch: int, device: str, analytic: bool
) -> Step:
    from torch_blue import vi
    from torch_blue.vi.distributions import Categorical, MeanFieldNormal

    torch.manual_seed(SEED)
    dev = torch.device(device)
    opts: dict[str, Any] = {
        "variational_distribution": MeanFieldNormal(std=INIT_SCALE),
        "kaiming_initialization": False,
        "device": dev,
    }
    layers = layer_stack(
        workload,
        lambda a, b: vi.VILinear(a, b, **opts),
        lambda c, o, k: vi.VIConv2d(c, o, k, **opts),
    )
    model = vi.VISequential(*layers)
    x, y = _data(workload, batch, dev)
    loss_fn: nn.Module
    if analytic:
        loss_fn = vi.AnalyticalKullbackLeiblerLoss(model, Categorical(), N_TRAIN)
    else:
        loss_fn = vi.KullbackLeiblerLoss(Categorical(), N_TRAIN)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        out = model(x, samples=samples)
        loss: torch.Tensor = loss_fn(out, y) / N_TRAIN
        loss.backward()
        opt.step()
        return loss.detach().as_subclass(torch.Tensor)

    return step


class _BayesianTorchNet(nn.Module):
    """bayesian-torch style network: every Bayesian layer returns ``(out, kl)``."""

    def __init__(self, layers: list[nn.Module], conv: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.conv = conv

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One weight draw: logits and the summed KL of all layers."""
        kl_sum = torch.zeros((), device=x.device)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if self.conv and i == last:
                x = torch.flatten(x, 1)
            x, kl = layer(x)
            kl_sum = kl_sum + kl
            if i < last:
                x = F.relu(x)
                if self.conv:
                    x = F.max_pool2d(x, 2)
        return x, kl_sum


def _bayesian_torch_step(
    workload: str, samples: int, batch: int, device: str, flipout: bool
) -> Step:
    from bayesian_torch import layers as bl

    torch.manual_seed(SEED)
    dev = torch.device(device)
    opts: dict[str, Any] = {
        "prior_mean": 0.0,
        "prior_variance": 1.0,
        "posterior_mu_init": 0.0,
        "posterior_rho_init": INIT_RHO,
    }
    linear = bl.LinearFlipout if flipout else bl.LinearReparameterization
    conv2d = bl.Conv2dFlipout if flipout else bl.Conv2dReparameterization
    layers: list[nn.Module]
    if workload == "conv":
        layers = [
            conv2d(1, 32, 5, **opts),
            conv2d(32, 64, 5, **opts),
            linear(1024, 10, **opts),
        ]
    elif workload in SIZES:
        sizes = SIZES[workload]
        layers = [linear(a, b, **opts) for a, b in itertools.pairwise(sizes)]
    else:
        raise ValueError(f"unknown workload {workload!r}")
    net = _BayesianTorchNet(layers, conv=workload == "conv").to(dev)
    x, y = _data(workload, batch, dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        log_probs = []
        kls = []
        for _ in range(samples):
            logits, kl = net(x)
            log_probs.append(F.log_softmax(logits, dim=-1))
            kls.append(kl)
        output = torch.stack(log_probs).mean(dim=0)
        loss = F.nll_loss(output, y) + torch.stack(kls).mean() / N_TRAIN
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def make_peer_steps(
    workload: str, samples: int, batch: int, device: str
) -> dict[str, Step]:
    """Training-step closures of the installed peer libraries on a workload.

    Args:
        workload: ``"mlp"``, ``"conv"`` or ``"tiny"``.
        samples: Monte-Carlo samples (weight draws) per step.
        batch: Batch size.
        device: Torch device string.

    Returns:
        Row name to ``step()``, which runs one full training step (forward over
        ``samples`` draws, loss, backward, Adam step) and returns the detached
        loss. Libraries that are not installed are omitted.
    """
    if workload not in INPUT_SHAPES:
        raise ValueError(f"unknown workload {workload!r}")
    have = available()
    steps: dict[str, Step] = {}
    if "torch_blue" in have:
        steps["torch_blue"] = _torch_blue_step(
            workload, samples, batch, device, analytic=False
        )
        steps["torch_blue/analytic"] = _torch_blue_step(
            workload, samples, batch, device, analytic=True
        )
    if "bayesian_torch" in have:
        steps["bayesian-torch/reparam"] = _bayesian_torch_step(
            workload, samples, batch, device, flipout=False
        )
        steps["bayesian-torch/flipout"] = _bayesian_torch_step(
            workload, samples, batch, device, flipout=True
        )
    return steps
