"""A large ``VIEmbedding``: one training step, or ``predict``, and its peak memory.

The network is ``VIEmbedding(V, 128)`` -> mean over the ``T = 8`` tokens ->
``VILinear(128, 5)``, batch 32. ``--variant``:

- ``library``: the Bayesian network, ``S`` particles, -ELBO / N with the
  closed-form KL, backward, Adam;
- ``reference``: hand-written Bayes-by-backprop that draws each particle's
  looked-up rows only (``torch.unique``, one draw per particle and row) and
  samples the head's outputs from the weight moments, same loss and optimiser;
- ``predict``: ``bnn.predict`` on 64 inputs with ``--samples`` particles and
  ``--budget`` bytes (default: the library's 2 GiB).

Prints the median thread CPU time of a step (or of the prediction) and the
process's peak resident memory (VmHWM, Linux): run one variant per process.

    python benchmarks/embedding.py --variant library --rows 100000
    python benchmarks/embedding.py --variant library --rows 100000 --padding
    python benchmarks/embedding.py --variant reference --rows 100000
    python benchmarks/embedding.py --variant predict --rows 20000 --samples 100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

# This checkout's package, not whichever copy is installed (as ``python -m``).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import pyrolite_bnn as bnn

FEATURES, BATCH, TOKENS, CLASSES, DATASET = 128, 32, 8, 5, 100_000


class _Net(bnn.VIModule):
    def __init__(self, rows: int, padding: bool) -> None:
        super().__init__()
        self.embed = bnn.VIEmbedding(rows, FEATURES, padding_idx=0 if padding else None)
        self.head = bnn.VILinear(FEATURES, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(-2))


def _kl(loc: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    scale = F.softplus(rho)
    return (0.5 * (scale**2 + loc**2) - scale.log() - 0.5).sum()


def _library_step(args: argparse.Namespace) -> Callable[[], None]:
    net = _Net(args.rows, args.padding)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), DATASET)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    tokens = torch.randint(1, args.rows, (BATCH, TOKENS))
    target = torch.randint(0, CLASSES, (BATCH,))

    def step() -> None:
        loss = loss_fn(net(tokens, samples=args.samples), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def _reference_step(args: argparse.Namespace) -> Callable[[], None]:
    rows, samples = args.rows, args.samples
    loc = torch.randn(rows, FEATURES).requires_grad_()
    rho = torch.full((rows, FEATURES), -6.0).requires_grad_()
    head_loc = (torch.randn(CLASSES, FEATURES) * FEATURES**-0.5).requires_grad_()
    head_rho = torch.full((CLASSES, FEATURES), -6.0).requires_grad_()
    bias_loc = torch.zeros(CLASSES).requires_grad_()
    bias_rho = torch.full((CLASSES,), -6.0).requires_grad_()
    parameters = [loc, rho, head_loc, head_rho, bias_loc, bias_rho]
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    tokens = torch.randint(1, rows, (BATCH, TOKENS))
    target = torch.randint(0, CLASSES, (BATCH,))

    def step() -> None:
        used, inverse = torch.unique(tokens, return_inverse=True)
        noise = torch.randn(samples, len(used), FEATURES)
        drawn = loc[used] + F.softplus(rho[used]) * noise  # (S, U, E)
        hidden = drawn[:, inverse].mean(-2)  # (S, B, E)
        mean = F.linear(hidden, head_loc, bias_loc)
        variance = F.linear(
            hidden**2, F.softplus(head_rho) ** 2, F.softplus(bias_rho) ** 2
        )
        logits = mean + variance.sqrt() * torch.randn_like(mean)
        nll = F.cross_entropy(logits.reshape(-1, CLASSES), target.repeat(samples))
        kl = _kl(loc, rho) + _kl(head_loc, head_rho) + _kl(bias_loc, bias_rho)
        loss = nll + kl / DATASET
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def _predict(args: argparse.Namespace) -> Callable[[], None]:
    net = _Net(args.rows, args.padding)
    tokens = torch.randint(0, args.rows, (64, TOKENS))

    def run() -> None:
        bnn.predict(
            net, tokens, bnn.Categorical(), args.samples, memory_budget=args.budget
        )

    return run


def _peak_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--variant", choices=["library", "reference", "predict"], default="library"
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--padding", action="store_true")
    parser.add_argument("--budget", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    make = {"library": _library_step, "reference": _reference_step}
    run = make.get(args.variant, _predict)(args)
    run()  # warm-up
    times = []
    for _ in range(1 if args.variant == "predict" else args.repeats):
        start = time.thread_time()
        run()
        times.append(time.thread_time() - start)
    print(
        f"{args.variant} rows={args.rows} samples={args.samples}"
        f"{' padding' if args.padding else ''}: {1e3 * statistics.median(times):.0f} "
        f"ms CPU, peak resident memory {_peak_mib():.0f} MiB"
    )


if __name__ == "__main__":
    main()
