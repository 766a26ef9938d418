"""A small Bayesian Transformer classifier on synthetic sequences, with OOD uncertainty.

Task: is the sum of a noisy sequence ``x_t ~ N(0, 1)`` positive? A Bayesian
Transformer encoder (``VITransformerEncoder``) embeds each step, attends over
the sequence and classifies its mean-pooled output. After training it prints
the held-out accuracy and the epistemic uncertainty (mutual information with the
weights) on in-distribution sequences and on out-of-distribution ones (steps
drawn from ``N(0, 8^2)`` and shifted by a constant, far from the training data).

    python examples/transformer_sequence.py
    python examples/transformer_sequence.py --steps 600 --width 32 --layers 2
"""

from __future__ import annotations

import argparse
import time

import torch

import pyrolite_bnn as bnn


class SequenceClassifier(bnn.VIModule):
    """Embedding -> Bayesian Transformer encoder -> mean pool -> linear head."""

    def __init__(self, width: int, heads: int, layers: int, classes: int = 2) -> None:
        super().__init__()
        self.embed = bnn.VILinear(1, width, estimator="reparam")
        layer = bnn.VITransformerEncoderLayer(
            width, heads, 2 * width, dropout=0.0, batch_first=True
        )
        self.encoder = bnn.VITransformerEncoder(layer, layers)
        self.head = bnn.VILinear(width, classes, estimator="reparam")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, classes)`` of sequences ``(B, L, 1)``."""
        return self.head(self.encoder(self.embed(x)).mean(1))  # type: ignore[no-any-return]


def make_data(n: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, length, 1)
    return x, (x.sum((1, 2)) > 0).long()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--n-train", type=int, default=2048)
    parser.add_argument("--n-test", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=12)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small steps: one thread is fastest on busy CPUs
    torch.manual_seed(args.seed)

    x_train, y_train = make_data(args.n_train, args.seq_len)
    x_test, y_test = make_data(args.n_test, args.seq_len)
    x_ood = 8.0 * torch.randn(args.n_test, args.seq_len, 1) + 4.0

    model = SequenceClassifier(args.width, args.heads, args.layers)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=len(x_train))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    start = time.perf_counter()
    loss = torch.zeros(())
    for _ in range(args.steps):
        batch = torch.randint(0, len(x_train), (args.batch_size,))
        out = model(x_train[batch], samples=args.samples)
        loss = loss_fn(out, y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start

    pred = bnn.predict(model, x_test, bnn.Categorical(), samples=32)
    ood = bnn.predict(model, x_ood, bnn.Categorical(), samples=32)
    accuracy = float((pred.probs.argmax(-1) == y_test).float().mean())
    mi_in = float(pred.mutual_information.mean())
    mi_ood = float(ood.mutual_information.mean())
    results = {
        "accuracy": accuracy,
        "final_loss": float(loss.detach()),
        "mutual_information_in": mi_in,
        "mutual_information_ood": mi_ood,
        "seconds": seconds,
    }
    print(f"held-out accuracy              {accuracy:.3f}")
    print(f"final loss (-ELBO / N)         {results['final_loss']:.3f}")
    print(f"mean mutual information, test  {mi_in:.4f} nats")
    print(f"mean mutual information, OOD   {mi_ood:.4f} nats")
    print(f"training time                  {seconds:.1f} s ({args.steps} steps)")
    return results


if __name__ == "__main__":
    main()
