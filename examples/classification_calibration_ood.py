"""Digits classification: calibration and out-of-distribution detection.

A Bayesian MLP is trained on scikit-learn's 8x8 handwritten digits with the
library defaults. We then check

* calibration: accuracy, expected calibration error (ECE) and a reliability
  diagram of the posterior predictive probabilities;
* out-of-distribution (OOD) detection: random-noise images should get a higher
  mutual information between label and weights (epistemic uncertainty) than
  test digits; the AUROC measures how well it separates them.

Needs ``pip install 'pyrolite_bnn[data,plot]'`` (scikit-learn ships the data).
Run: ``python examples/classification_calibration_ood.py --out-dir .``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

import pyrolite_bnn as bnn


def load_digits(seed: int) -> tuple[torch.Tensor, ...]:
    """Digits scaled to [0, 1], shuffled and split 75 % / 25 %."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    split = int(0.75 * len(x))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="full-batch Adam steps")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--samples", type=int, default=100, help="draws per prediction")
    parser.add_argument("--n-ood", type=int, default=450, help="noise images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; small networks run fastest on 1 (0: torch's default)",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_digits(args.seed)
    noise = torch.rand(args.n_ood, 64)  # same size and pixel range as the digits

    model = bnn.VISequential(
        bnn.VILinear(64, args.hidden), nn.ReLU(), bnn.VILinear(args.hidden, 10)
    )
    likelihood = bnn.Categorical()
    loss_fn = bnn.KullbackLeiblerLoss(likelihood, dataset_size=len(x_train))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    start = time.perf_counter()
    for step in range(args.steps):
        optimizer.zero_grad()
        loss = loss_fn(model(x_train), y_train)
        loss.backward()
        optimizer.step()
        if step % max(args.steps // 5, 1) == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    seconds = time.perf_counter() - start

    digits = bnn.predict(model, x_test, likelihood, samples=args.samples)
    ood = bnn.predict(model, noise, likelihood, samples=args.samples)
    m = bnn.metrics
    result = {
        "accuracy": m.accuracy(digits.probs, y_test).item(),
        "ece": m.expected_calibration_error(digits.probs, y_test).item(),
        "nll": m.nll(digits.probs, y_test).item(),
        "brier": m.brier_score(digits.probs, y_test).item(),
        "mi_digits": digits.mutual_information.mean().item(),
        "mi_noise": ood.mutual_information.mean().item(),
        "auroc_mi": m.auroc(digits.mutual_information, ood.mutual_information).item(),
        "auroc_entropy": m.auroc(digits.entropy, ood.entropy).item(),
        "seconds": seconds,
    }
    for name, value in result.items():
        print(f"{name:>14s}: {value:.4f}")

    if not args.no_plot:
        try:
            from matplotlib.figure import Figure

            from pyrolite_bnn import plot
        except ImportError:
            print("skipped the plots: install pyrolite_bnn[plot]")
            return result
        args.out_dir.mkdir(parents=True, exist_ok=True)
        ax = plot.reliability_diagram(digits.probs, y_test)
        ax.figure.savefig(args.out_dir / "reliability_diagram.png", dpi=120)
        figure = Figure(figsize=(10, 4), layout="constrained")
        left, right = figure.subplots(1, 2)
        plot.uncertainty_histogram(
            digits.mutual_information, ood.mutual_information, ax=left
        )
        plot.uncertainty_histogram(
            digits.entropy, ood.entropy, ax=right, label="predictive entropy (nats)"
        )
        figure.savefig(args.out_dir / "ood_histograms.png", dpi=120)
        print(f"wrote reliability_diagram.png and ood_histograms.png to {args.out_dir}")
    return result


if __name__ == "__main__":
    main()
