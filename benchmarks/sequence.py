"""Sequence layers: one particle-batched training step vs S deterministic torch runs.

For a Transformer encoder layer and an LSTM (each with a mean-pool + linear
classifier head), and an LSTM on a packed batch of sequences of random lengths
(``lstm-packed``, a linear head on the last state), times one training step
(forward, loss, backward, Adam step):

- ``pyrolite``: the Bayesian network, ``S`` particles in one vectorised pass,
  -ELBO / N loss (KL included);
- ``torch loop``: the deterministic torch network run ``S`` times in a Python
  loop (one forward per weight sample a naive BNN would need), summed
  cross-entropy, one backward and Adam step;
- ``torch S*B``: the deterministic network once on the batch repeated ``S``
  times: the same arithmetic as the loop in one pass, with one weight set. A
  floor for any particle-batched layer (it has no per-particle weights to draw,
  fold or reduce), shown to tell what batching the particles can gain.

Prints medians over interleaved repeats, of the thread's CPU time (``cpu``:
what the step costs, robust to other processes on a shared machine) and of wall
time, and the ratios pyrolite / torch loop.

    python benchmarks/sequence.py                  # S = 10, 1 thread
    python benchmarks/sequence.py --samples 10 --repeats 30 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

# This checkout's package, not whichever copy is installed (as ``python -m``).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import pyrolite_bnn as bnn


class _Pool(nn.Module):
    """Mean over the sequence of the first output (``nn.LSTM`` returns a tuple)."""

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, object]) -> torch.Tensor:
        out = x[0] if isinstance(x, tuple) else x
        return out.mean(1)


class _LastState(nn.Module):
    """The last layer's final hidden state of a recurrent layer's output."""

    def forward(
        self, x: tuple[object, tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        return x[1][0][-1]


class _BayesNet(bnn.VIModule):
    def __init__(
        self, body: nn.Module, width: int, classes: int, pool: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.body = body
        self.pool = pool or _Pool()
        self.head = bnn.VILinear(width, classes, estimator="reparam")

    def forward(self, x: object) -> torch.Tensor:
        return self.head(self.pool(self.body(x)))  # type: ignore[no-any-return]


Inputs = tuple[object, object]  # the batch, and the batch repeated S times


def _workloads(
    args: argparse.Namespace, x: torch.Tensor
) -> dict[str, tuple[nn.Module, nn.Module, Inputs]]:
    e, h = args.width, args.heads
    lengths = torch.randint(1, args.length + 1, (len(x),))
    lengths[0] = args.length
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    packed_all = pack_padded_sequence(
        x.repeat(args.samples, 1, 1),
        lengths.repeat(args.samples),
        batch_first=True,
        enforce_sorted=False,
    )
    padded = (x, x.repeat(args.samples, 1, 1))
    return {
        "transformer-encoder-layer": (
            _BayesNet(
                bnn.VITransformerEncoderLayer(e, h, 2 * e, 0.0, batch_first=True),
                e,
                args.classes,
            ),
            nn.Sequential(
                nn.TransformerEncoderLayer(e, h, 2 * e, 0.0, batch_first=True),
                _Pool(),
                nn.Linear(e, args.classes),
            ),
            padded,
        ),
        "lstm": (
            _BayesNet(bnn.VILSTM(e, e, batch_first=True), e, args.classes),
            nn.Sequential(
                nn.LSTM(e, e, batch_first=True), _Pool(), nn.Linear(e, args.classes)
            ),
            padded,
        ),
        "lstm-packed": (
            _BayesNet(
                bnn.VILSTM(e, e, batch_first=True), e, args.classes, _LastState()
            ),
            nn.Sequential(
                nn.LSTM(e, e, batch_first=True),
                _LastState(),
                nn.Linear(e, args.classes),
            ),
            (packed, packed_all),
        ),
    }


def _steps(
    bayes: nn.Module, plain: nn.Module, inputs: Inputs, y: torch.Tensor, samples: int
) -> dict[str, Callable[[], None]]:
    x, x_all = inputs
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), dataset_size=10 * len(y))
    opt_bayes = torch.optim.Adam(bayes.parameters(), lr=1e-3)
    opt_plain = torch.optim.Adam(plain.parameters(), lr=1e-3)
    cross_entropy = nn.CrossEntropyLoss()

    def pyrolite() -> None:
        loss = loss_fn(bayes(x, samples=samples), y)
        opt_bayes.zero_grad()
        loss.backward()
        opt_bayes.step()

    def torch_loop() -> None:
        loss = sum(cross_entropy(plain(x), y) for _ in range(samples))
        opt_plain.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        opt_plain.step()

    y_all = y.repeat(samples)

    def torch_batch() -> None:
        loss = cross_entropy(plain(x_all), y_all) * samples
        opt_plain.zero_grad()
        loss.backward()
        opt_plain.step()

    return {"pyrolite": pyrolite, "torch loop": torch_loop, "torch S*B": torch_batch}


def _medians(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int
) -> dict[str, float]:
    """``{"<name> cpu": ms, "<name> wall": ms}``: medians over repeats."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {
        f"{name} {clock}": [] for name in fns for clock in ("cpu", "wall")
    }
    for _ in range(repeats):  # round-robin, so drift hits all alike
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.thread_time()
            fn()
            times[f"{name} cpu"].append((time.thread_time() - cpu) * 1e3)
            times[f"{name} wall"].append((time.perf_counter() - wall) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bnn.enable_validation(False)  # hot loop: as a training script would run
    x = torch.randn(args.batch, args.length, args.width)
    y = torch.randint(0, args.classes, (args.batch,))
    print(
        f"S={args.samples} B={args.batch} L={args.length} width={args.width} "
        f"threads={torch.get_num_threads()} repeats={args.repeats} (median ms)"
    )
    results = {}
    for name, (bayes, plain, inputs) in _workloads(args, x).items():
        medians = _medians(
            _steps(bayes, plain, inputs, y, args.samples), args.repeats, args.warmup
        )
        results[name] = medians
        for clock in ("cpu", "wall"):
            ms = {k: medians[f"{k} {clock}"] for k in ("pyrolite", "torch loop")}
            floor = medians[f"torch S*B {clock}"]
            ratio = ms["pyrolite"] / ms["torch loop"]
            results[name][f"ratio {clock}"] = ratio
            print(
                f"{name:26s} {clock:4s} pyrolite {ms['pyrolite']:7.2f}  torch loop "
                f"{ms['torch loop']:7.2f}  ratio {ratio:.2f}x  (torch S*B "
                f"{floor:7.2f} = {floor / ms['torch loop']:.2f}x)"
            )
    return results


if __name__ == "__main__":
    main()
