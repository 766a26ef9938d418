"""The torch_blue paper's Figure 1 runs with only its two import lines changed."""

from __future__ import annotations

import textwrap

import torch
from torch import Tensor

FIGURE_1 = textwrap.dedent(
    """
    from torch import nn
    from pyrolite_bnn import vi
    from pyrolite_bnn.vi.distributions import Categorical

    # Set up three layer Bayesian MLP
    class NeuralNetwork(vi.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.flatten = nn.Flatten()
            self.linear_relu_stack = vi.VISquential(
                vi.VILinear(28 * 28, 512),
                nn.ReLU(),
                vi.VILinear(512, 512),
                nn.ReLU(),
                vi.VILinear(512, 10),
            )

        def forward(self, x_: Tensor) -> Tensor:
            x_ = self.flatten(x_)
            logits = self.linear_relu_stack(x_)
            return logits

    model = NeuralNetwork().to(device)
    model.return_log_probs = True

    # Set up classification task
    predictive_distribution = Categorical()
    loss_fn = vi.KullbackLeiblerLoss(
        predictive_distribution, dataset_size=len(training_data)
    )
    """
)


def test_figure_1_trains_in_pytorch_loop() -> None:
    images = torch.randn(256, 28, 28)
    labels = (images[:, :14].mean((1, 2)) > images[:, 14:].mean((1, 2))).long()
    namespace: dict[str, object] = {
        "Tensor": Tensor,
        "device": "cpu",
        "training_data": images,
    }
    exec(FIGURE_1, namespace)
    model = namespace["model"]
    loss_fn = namespace["loss_fn"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # type: ignore[attr-defined]
    losses = []
    for _epoch in range(3):
        for start in range(0, 256, 64):
            x, y = images[start : start + 64], labels[start : start + 64]
            out = model(x, samples=2)  # type: ignore[operator]
            assert out.log_probs.shape == (2, 2)
            loss = loss_fn(out, y)  # type: ignore[operator]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss_fn.last_nll))  # type: ignore[attr-defined]
    assert sum(losses[-4:]) < sum(losses[:4])
