"""Make a pretrained CNN Bayesian with ``bnn.convert`` and MOPED priors.

A plain ``torch.nn`` CNN is trained on scikit-learn's 8x8 handwritten digits.
``bnn.convert(cnn, moped=0.1)`` turns it into a Bayesian network whose priors
are centred at the trained weights and whose posteriors start there with
standard deviations ``0.1 * |w|`` (MOPED, Krishnan et al. 2020); a short
fine-tuning with the ELBO follows. Before and after we compare

* calibration: expected calibration error (ECE) of the predicted probabilities;
* out-of-distribution (OOD) detection: AUROC separating test digits from
  uniform-noise images by predictive entropy (and, for the Bayesian network, by
  the mutual information between label and weights).

Needs ``pip install 'pyrolite_bnn[data]'`` (scikit-learn ships the data).
Run: ``python examples/convert_pretrained.py``
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import pyrolite_bnn as bnn


def load_digits(seed: int) -> tuple[torch.Tensor, ...]:
    """Digits as ``(N, 1, 8, 8)`` images in [0, 1], shuffled, split 75 % / 25 %."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    split = int(0.75 * len(x))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


def make_cnn(channels: int) -> nn.Sequential:
    """A small plain CNN for 8x8 images."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * channels * 4 * 4, 10),
    )


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of class probabilities."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=30, help="plain training")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--moped", type=float, default=0.1, help="MOPED delta")
    parser.add_argument("--samples", type=int, default=50, help="draws per prediction")
    parser.add_argument("--n-ood", type=int, default=450, help="noise images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="0: torch's default")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_digits(args.seed)
    noise = torch.rand(args.n_ood, 1, 8, 8)  # same size and pixel range
    m = bnn.metrics

    # 1. A plain CNN, trained as usual.
    cnn = make_cnn(args.channels)
    optimizer = torch.optim.Adam(cnn.parameters(), lr=0.01)
    for _ in range(args.epochs):
        for batch in torch.randperm(len(x_train)).split(args.batch_size):
            optimizer.zero_grad()
            F.cross_entropy(cnn(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
    cnn.eval()
    with torch.no_grad():
        probs, probs_ood = cnn(x_test).softmax(-1), cnn(noise).softmax(-1)
    result = {
        "plain_accuracy": m.accuracy(probs, y_test).item(),
        "plain_ece": m.expected_calibration_error(probs, y_test).item(),
        "plain_auroc_entropy": m.auroc(entropy(probs), entropy(probs_ood)).item(),
    }

    # 2. The same network, Bayesian: priors and posteriors centred at the weights.
    net = bnn.convert(cnn, moped=args.moped)
    likelihood = bnn.Categorical()
    loss_fn = bnn.KullbackLeiblerLoss(likelihood, dataset_size=len(x_train))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(args.finetune_epochs):
        for batch in torch.randperm(len(x_train)).split(args.batch_size):
            optimizer.zero_grad()
            loss_fn(net(x_train[batch], samples=4), y_train[batch]).backward()
            optimizer.step()
    net.eval()
    digits = bnn.predict(net, x_test, likelihood, samples=args.samples)
    ood = bnn.predict(net, noise, likelihood, samples=args.samples)
    result |= {
        "bayes_accuracy": m.accuracy(digits.probs, y_test).item(),
        "bayes_ece": m.expected_calibration_error(digits.probs, y_test).item(),
        "bayes_auroc_entropy": m.auroc(digits.entropy, ood.entropy).item(),
        "bayes_auroc_mi": m.auroc(
            digits.mutual_information, ood.mutual_information
        ).item(),
    }
    for name, value in result.items():
        print(f"{name:>20s}: {value:.4f}")
    return result


if __name__ == "__main__":
    main()
