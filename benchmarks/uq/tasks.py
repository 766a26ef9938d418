"""Data of the uncertainty benchmark: gap tasks, offline regression sets, digits."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pyrolite_bnn.demo import true_function

#: Training inputs lie in ``[-EDGE, EDGE]`` (per dimension) outside the gap.
EDGE = 4.0


@dataclass(frozen=True)
class GapConfig:
    """One configuration of the sweep (a task and a network)."""

    dim: int = 1
    gap: float = 2.0
    noise: float = 0.1
    depth: int = 2
    width: int = 50
    activation: str = "relu"

    @property
    def name(self) -> str:
        """Readable identifier of the configuration."""
        return (
            f"{self.dim}d gap{self.gap:g} noise{self.noise:g} "
            f"{self.activation} {self.depth}x{self.width}"
        )


@dataclass(frozen=True)
class GapTask:
    """Training data, fresh data-region points, and gap/beyond grids."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_gap: Tensor
    x_beyond: Tensor


def gap_target(x: Tensor) -> Tensor:
    """``sum_d sin(x_d) + 0.2 x_d`` (the demo's function for ``d = 1``)."""
    return true_function(x).sum(-1)


def _inputs(count: int, dim: int, gap: float, generator: torch.Generator) -> Tensor:
    """Uniform on ``[-EDGE, EDGE]^dim`` minus the cube ``|x|_inf < gap / 2``."""
    kept: list[Tensor] = []
    total = 0
    while total < count:
        x = (torch.rand(2 * count, dim, generator=generator) * 2 - 1) * EDGE
        x = x[x.abs().amax(-1) >= gap / 2]
        kept.append(x)
        total += len(x)
    return torch.cat(kept)[:count]


def make_gap_task(
    config: GapConfig, seed: int = 0, n_train: int = 300, n_test: int = 400
) -> GapTask:
    """Seeded gap task.

    ``x_beyond`` lies one data-range width (``2 EDGE``) past
    the edge: ``+-3 EDGE`` along each axis. ``x_gap`` is a grid strictly inside
    the gap (for ``dim = 2``, on a coarser grid).
    """
    generator = torch.Generator().manual_seed(seed)
    x_train = _inputs(n_train, config.dim, config.gap, generator)
    x_test = _inputs(n_test, config.dim, config.gap, generator)

    def targets(x: Tensor) -> Tensor:
        eps = torch.randn(len(x), generator=generator)
        return gap_target(x) + config.noise * eps

    half = config.gap / 2
    line = torch.linspace(-half, half, 52)[1:-1]
    if config.dim == 1:
        x_gap = line[:, None]
    else:
        x_gap = torch.cartesian_prod(line[::5], line[::5])
    far = 3 * EDGE
    eye = torch.eye(config.dim)
    x_beyond = torch.cat([far * eye, -far * eye])
    return GapTask(x_train, targets(x_train), x_test, targets(x_test), x_gap, x_beyond)


# ----------------------------------------------------------------- regression sets
def regression_dataset(name: str) -> tuple[Tensor, Tensor]:
    """Offline regression data.

    ``diabetes`` (442 x 10) shipped with
    scikit-learn, and the synthetic ``friedman1`` (1000 x 10, noise 1),
    ``friedman2``/``friedman3`` (1000 x 4, noise at about a tenth of the
    target's std), seeded.
    """
    from sklearn import datasets

    if name == "diabetes":
        x, y = datasets.load_diabetes(return_X_y=True)
    elif name == "friedman1":
        x, y = datasets.make_friedman1(n_samples=1000, noise=1.0, random_state=0)
    elif name == "friedman2":
        x, y = datasets.make_friedman2(n_samples=1000, noise=30.0, random_state=0)
    elif name == "friedman3":
        x, y = datasets.make_friedman3(n_samples=1000, noise=0.05, random_state=0)
    else:
        raise ValueError(f"unknown data set {name!r}")
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


@dataclass(frozen=True)
class Split:
    """A standardised 90/10 split; ``y_scale`` converts back to data units."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    y_scale: float


def split(x: Tensor, y: Tensor, seed: int, test_fraction: float = 0.1) -> Split:
    """Random split, inputs and targets standardised with training statistics."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    x_mean, x_std = x[train].mean(0), x[train].std(0).clamp_min(1e-8)
    y_mean, y_std = y[train].mean(), y[train].std()
    return Split(
        (x[train] - x_mean) / x_std,
        (y[train] - y_mean) / y_std,
        (x[test] - x_mean) / x_std,
        (y[test] - y_mean) / y_std,
        float(y_std),
    )


# ----------------------------------------------------------------------- digits
@dataclass(frozen=True)
class Digits:
    """Digits split (75/25) with two out-of-distribution sets."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    ood: dict[str, Tensor]


def digits(seed: int = 0) -> Digits:
    """scikit-learn's 8x8 digits scaled to ``[0, 1]``, with two OOD sets.

    The OOD sets: uniform noise images and the test digits rotated by 90 degrees.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=generator)
    cut = math.floor(0.75 * len(x))
    train, test = order[:cut], order[cut:]
    x_test = x[test]
    rotated = torch.rot90(x_test.view(-1, 8, 8), 1, (1, 2)).reshape(-1, 64)
    noise = torch.rand(x_test.shape, generator=generator)
    return Digits(
        x[train], y[train], x_test, y[test], {"noise": noise, "rotated": rotated}
    )
