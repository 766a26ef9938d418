"""Regression with a gap in the data: predictive intervals and epistemic uncertainty.

A Bayesian MLP learns y = sin(x) + 0.2 x + noise from inputs in [-4, -1] and
[1, 4] only. Where it saw data, its 95 % predictive interval should cover about
95 % of new points; inside the gap (-1, 1) its epistemic uncertainty (the
spread of the functions it considers plausible) should be much larger than on
the data. The noise scale is learned along with the weights.

Run: ``python examples/regression_uncertainty.py --steps 2000 --out-dir .``
(needs ``pyrolite_bnn[plot]`` for the figure; ``--no-plot`` skips it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

import pyrolite_bnn as bnn


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy points with x uniform on [-4, -1] U [1, 4]."""
    u = (torch.rand(n, generator=generator) * 2 - 1) * 3  # uniform on [-3, 3]
    x = torch.where(u < 0, u - 1, u + 1)  # shift away from 0: the gap (-1, 1)
    y = torch.sin(x) + 0.2 * x + 0.2 * torch.randn(n, generator=generator)
    return x[:, None], y


def make_model(hidden: int) -> bnn.VISequential:
    """Three tanh layers; each weight: N(0, 1) prior, mean-field Normal posterior."""
    return bnn.VISequential(
        bnn.VILinear(1, hidden),
        nn.Tanh(),
        bnn.VILinear(hidden, hidden),
        nn.Tanh(),
        bnn.VILinear(hidden, hidden),
        nn.Tanh(),
        bnn.VILinear(hidden, 1),
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--samples", type=int, default=100, help="draws per prediction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; tiny networks run fastest on 1 (0: torch's default)",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    data_rng = torch.Generator().manual_seed(args.seed)
    x_train, y_train = make_data(args.n_train, data_rng)
    x_test, y_test = make_data(400, data_rng)  # held out, same region as training
    x_gap = torch.linspace(-1, 1, 202)[1:-1, None]  # strictly inside the gap

    # 1. Model, likelihood with a learned noise scale, loss: the negative ELBO / N.
    model = make_model(args.hidden)
    likelihood = bnn.Normal()
    loss_fn = bnn.KullbackLeiblerLoss(likelihood, dataset_size=args.n_train)

    # 2. A plain PyTorch loop. The noise scale lives in the loss: optimise both.
    optimizer = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=0.02)
    steps = args.steps
    # learning rate decays exponentially to a tenth over the run
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.1 ** (i / steps)
    )
    start = time.perf_counter()
    for step in range(steps):
        optimizer.zero_grad()
        out = model(x_train)  # (10 particles, N, 1)
        loss = loss_fn(out, y_train)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % max(steps // 5, 1) == 0 or step == steps - 1:
            print(
                f"step {step:5d}  loss {loss.item():8.4f}  "
                f"noise {likelihood.noise_scale().item():.3f}"
            )
    seconds = time.perf_counter() - start

    # 3. Posterior predictive: the mixture over 100 weight draws.
    with torch.no_grad():
        test = bnn.predict(model, x_test, likelihood, samples=args.samples)
        gap = bnn.predict(model, x_gap, likelihood, samples=args.samples)
        lower, upper = test.interval(0.95)
        result = {
            "rmse": bnn.metrics.rmse(test.mean, y_test).item(),
            "nll": bnn.metrics.gaussian_nll(test.mean, test.variance, y_test).item(),
            "coverage_95": bnn.metrics.interval_coverage(lower, upper, y_test).item(),
            "epistemic_std_gap": gap.epistemic_var.sqrt().mean().item(),
            "epistemic_std_data": test.epistemic_var.sqrt().mean().item(),
            "noise_scale": likelihood.noise_scale().item(),
            "seconds": seconds,
        }
    result["gap_ratio"] = result["epistemic_std_gap"] / result["epistemic_std_data"]
    for name, value in result.items():
        print(f"{name:>20s}: {value:.4f}")

    if not args.no_plot:
        try:
            from pyrolite_bnn import plot

            grid = torch.linspace(-5, 5, 300)[:, None]
            with torch.no_grad():
                pred = bnn.predict(model, grid, likelihood, samples=args.samples)
            ax = plot.regression_bands(grid, pred, x_train, y_train)
            ax.axvspan(-1, 1, color="gray", alpha=0.12)
            args.out_dir.mkdir(parents=True, exist_ok=True)
            path = args.out_dir / "regression_uncertainty.png"
            ax.figure.savefig(path, dpi=120)
            print(f"wrote {path}")
        except ImportError as error:
            print(f"skipped the plot: {error}")
    return result


if __name__ == "__main__":
    main()
