"""Shared helpers of the sequence-layer tests (recurrent, attention, Transformer)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import nn

import pyrolite_bnn as bnn


def fixed_weights(layer: bnn.VIModule, samples: int) -> dict[str, torch.Tensor]:
    """One ``(samples, 1, *shape)`` draw per site, scaled to keep activations sane."""
    return {
        v.site: torch.randn(samples, 1, *v.shape) * 0.4
        for v in layer.random_variables()
    }


def run_fixed(
    layer: bnn.VIModule,
    weights: dict[str, torch.Tensor],
    samples: int,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Call ``layer`` as the outermost module with every site fixed to ``weights``."""
    with poutine.trace():
        return poutine.condition(layer, data=weights)(*args, samples=samples, **kwargs)


def load_particle(
    reference: nn.Module,
    layer: bnn.VIModule,
    weights: dict[str, torch.Tensor],
    s: int,
) -> None:
    """Give ``reference`` particle ``s``'s weights; other parameters from ``layer``."""
    plain = dict(layer.named_parameters())
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.copy_(weights[name][s, 0] if name in weights else plain[name])


def signature_matches(
    vi_cls: type, torch_init: Callable[..., Any], exclude: tuple[str, ...] = ()
) -> None:
    """Same positional arguments and defaults as torch, then keyword-only options."""
    vi = inspect.signature(vi_cls.__init__).parameters  # type: ignore[misc]
    ref = inspect.signature(torch_init).parameters
    skip = ("self", "device", "dtype", "mode", *exclude)
    positional = [n for n in ref if n not in skip]
    mine = [n for n, p in vi.items() if p.kind is p.POSITIONAL_OR_KEYWORD][1:]
    assert mine == positional
    for name in positional:
        assert vi[name].default == ref[name].default, name
    for name in ("prior", "variational", "estimator", "device", "dtype"):
        assert vi[name].kind is inspect.Parameter.KEYWORD_ONLY


def assert_loss_equals_pyro_elbo(
    net: bnn.VIModule, x: torch.Tensor, y: torch.Tensor, dataset_size: int
) -> None:
    """The PyTorch-style loss equals ``Trace_ELBO`` / N, value and gradients."""
    with torch.no_grad():  # a wide posterior, so that the KL terms matter
        for name, p in net.named_parameters():
            if name.endswith("rho_unconstrained"):
                p.fill_(-1.0)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size, kl="mc")
    params = list(net.parameters())
    pyro.set_rng_seed(3)
    ours = loss_fn(net(x, samples=4), y)
    g_ours = torch.autograd.grad(ours, params)
    pyro.set_rng_seed(3)
    elbo = Trace_ELBO().differentiable_loss(
        loss_fn.pyro_model(net), net.guide, x, y, samples=4
    )
    theirs = elbo / dataset_size
    g_theirs = torch.autograd.grad(theirs, params)
    # Same draws, same arithmetic up to float32 summation order.
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread: small recurrent/attention steps on a busy 2-core
    machine run ~20x slower with two competing threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_classifier(
    net: bnn.VIModule,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float = 0.02,
    batch_size: int = 64,
    samples: int = 4,
) -> None:
    """Adam on the -ELBO / N of a categorical classifier, random mini-batches."""
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), len(x))
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    with one_thread():
        for _ in range(steps):
            batch = torch.randint(0, len(x), (batch_size,))
            loss = loss_fn(net(x[batch], samples=samples), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def accuracy(net: bnn.VIModule, x: torch.Tensor, y: torch.Tensor) -> float:
    """Held-out accuracy of the posterior predictive (8 whole-network draws)."""
    with one_thread():
        pred = bnn.predict(net, x, bnn.Categorical(), samples=8)
    return float((pred.probs.argmax(-1) == y).float().mean())


def sign_of_sum(n: int, length: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy sequences ``(n, length, 1)``; label: is their sum positive?"""
    x = torch.randn(n, length, 1)
    return x, (x.sum((1, 2)) > 0).long()
