"""Bayesian MLP on scikit-learn's handwritten digits with the library defaults.

Default prior N(0, 1), mean-field Normal posterior, 10 particles per step, the
ELBO loss and a plain Adam loop: no tuning. Needs the optional extra
``pip install 'pyrolite_bnn[data]'`` (scikit-learn ships the data set).

Run: ``python examples/digits.py --epochs 40``
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import pyrolite_bnn as bnn


class DigitsNet(bnn.VIModule):
    """64 -> 128 -> 10 Bayesian MLP."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.body = bnn.VISequential(
            bnn.VILinear(64, hidden), nn.ReLU(), bnn.VILinear(hidden, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every particle."""
        return self.body(x)


def load(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Digits as tensors, split 1400 train / 397 test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load(args.seed)
    model = DigitsNet()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=len(x_train))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    start = time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(len(x_train))
        for i in range(0, len(x_train), args.batch_size):
            index = order[i : i + args.batch_size]
            loss = loss_fn(model(x_train[index]), y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start

    prediction = bnn.predict(model, x_test, bnn.Categorical(), samples=100)
    accuracy = float(bnn.metrics.accuracy(prediction.probs, y_test))
    ece = float(bnn.metrics.expected_calibration_error(prediction.probs, y_test))
    print(f"test accuracy {accuracy:.3f}  ECE {ece:.3f}  training {seconds:.1f} s")
    return {"accuracy": accuracy, "ece": ece, "seconds": seconds}


if __name__ == "__main__":
    main()
