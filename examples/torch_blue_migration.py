"""From torch_blue to pyrolite_bnn: the paper's Figure 1 network, imports changed.

The torch_blue paper (Weyrauch et al., JOSS) shows a three-layer Bayesian MLP
for 28x28 images trained with ``KullbackLeiblerLoss`` and a ``Categorical``
predictive distribution. The same code runs on pyrolite_bnn once

    from torch_blue import vi
    from torch_blue.vi.distributions import Categorical

become

    from pyrolite_bnn import vi
    from pyrolite_bnn.vi.distributions import Categorical

Everything else below is unchanged torch_blue/PyTorch style, except
``model.samples = args.samples`` (pyrolite_bnn's default number of particles
for a call without ``samples=``; torch_blue always draws 10), there so that the
tests run with fewer. Instead of
downloading FashionMNIST the script makes synthetic 28x28 "images" (a noisy
class-specific template), so it runs offline in seconds.

``model.return_log_probs = True`` behaves as in torch_blue: the output carries
``out.log_probs`` of shape ``(samples, 2)`` (per particle, the log prior and
the log variational density of all weights). pyrolite_bnn's loss does not need
it (it reads the weights' traces), so it can stay ``False`` for deployment.

Run: ``python examples/torch_blue_migration.py --steps 20``
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

# --- the only lines that change when coming from torch_blue -------------------
from pyrolite_bnn import vi
from pyrolite_bnn.vi.distributions import Categorical

# ------------------------------------------------------------------------------


class NeuralNetwork(vi.VIModule):
    """Figure 1 of the torch_blue paper: Flatten, then 784 -> 512 -> 512 -> 10."""

    def __init__(self, hidden: int = 512) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = vi.VISequential(
            vi.VILinear(28 * 28, hidden),
            nn.ReLU(),
            vi.VILinear(hidden, hidden),
            nn.ReLU(),
            vi.VILinear(hidden, 10),
        )

    def forward(self, x_: Tensor) -> Tensor:
        """Logits ``(batch, 10)`` per particle."""
        x_ = self.flatten(x_)
        logits = self.linear_relu_stack(x_)
        return logits


def synthetic_images(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` images ``(n, 1, 28, 28)`` in [0, 1]: a class template plus noise."""
    templates = torch.rand(10, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    noise = torch.rand(n, 1, 28, 28, generator=generator)
    return 0.6 * templates[labels] + 0.4 * noise, labels


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512, help="512 in the paper")
    parser.add_argument("--n-train", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--samples", type=int, default=10, help="particles per step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    images, labels = synthetic_images(args.n_train, generator)

    model = NeuralNetwork(args.hidden)
    model.samples = args.samples
    model.return_log_probs = True
    print(
        model.__class__.__name__,
        "with",
        sum(p.numel() for p in model.parameters()),
        "variational parameters",
    )

    predictive_distribution = Categorical()
    loss_fn = vi.KullbackLeiblerLoss(predictive_distribution, dataset_size=args.n_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    first_loss = last_loss = float("nan")
    for step in range(args.steps):
        start = (step * args.batch_size) % args.n_train
        x = images[start : start + args.batch_size]
        y = labels[start : start + args.batch_size]

        pred = model(x)  # (samples, batch, 10), with pred.log_probs (samples, 2)
        loss = loss_fn(pred, y)

        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

        if step == 0:
            first_loss = loss.item()
            shapes = tuple(pred.shape), tuple(pred.log_probs.shape)
            print(f"output {shapes[0]}, log_probs {shapes[1]}")
        last_loss = loss.item()
        if step % max(args.steps // 5, 1) == 0:
            print(f"step {step:4d}  loss {last_loss:.4f}")

    # torch_blue's log_probs: column 0 the log prior, column 1 the log variational
    # density of each particle's weights; their mean difference estimates -KL.
    model.eval()
    with torch.no_grad():
        out = model(images[:8])
    log_probs = out.log_probs
    assert log_probs.shape == (args.samples, 2), log_probs.shape
    mc_kl = (log_probs[:, 1] - log_probs[:, 0]).mean().item()
    print(
        f"log_probs of shape {tuple(log_probs.shape)}; MC estimate of KL(q||p) "
        f"from them: {mc_kl:.1f} nats"
    )

    model.return_log_probs = False  # for deployment: plain tensors
    with torch.no_grad():
        probs = model(images).softmax(-1).mean(0)  # posterior predictive
    accuracy = (probs.argmax(-1) == labels).float().mean().item()
    print(f"loss {first_loss:.3f} -> {last_loss:.3f}; training accuracy {accuracy:.1%}")
    return {
        "first_loss": first_loss,
        "last_loss": last_loss,
        "accuracy": accuracy,
        "log_probs_rows": float(log_probs.shape[0]),
        "log_probs_cols": float(log_probs.shape[1]),
    }


if __name__ == "__main__":
    main()
