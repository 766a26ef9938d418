"""Per-call cost of ``bnn.predict`` on a handful of inputs (serving).

Times, round-robin in one process (medians of the thread's CPU time over
interleaved repeats), on a 16-32-32-10 ``VISequential`` MLP:

- ``model+softmax``: ``model(x, samples=S)`` under ``no_grad``, then the
  softmax averaged over particles and its entropy, by hand (the floor);
- ``predict``: ``bnn.predict(model, x, bnn.Categorical(), samples=S)``;
- ``predict batch_size=n``: the same with the chunk size given (no probe);
- ``predict mean``: ``mode="mean"`` (the posterior medians, one particle).

and prints each in microseconds with its ratio to the floor.

    python benchmarks/predict_overhead.py                  # 1 input, S = 1 and 100
    python benchmarks/predict_overhead.py --inputs 4 --samples 1 --repeats 51
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import pyrolite_bnn as bnn


def _timed(fn: Callable[[], object], inner: int) -> float:
    start = time.thread_time()
    for _ in range(inner):
        fn()
    return (time.thread_time() - start) / inner


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the comparison; returns the medians in microseconds by row name."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1)
    parser.add_argument("--samples", nargs="+", type=int, default=[1, 100])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--inner", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = bnn.VISequential(
        bnn.VILinear(16, 32),
        nn.ReLU(),
        bnn.VILinear(32, 32),
        nn.ReLU(),
        bnn.VILinear(32, 10),
    ).eval()
    x = torch.randn(args.inputs, 16)
    likelihood = bnn.Categorical()
    results: dict[str, float] = {}
    for samples in args.samples:

        def floor(samples: int = samples) -> None:
            with torch.no_grad():
                probs = model(x, samples=samples).softmax(-1).mean(0)
                -(probs * probs.log()).sum(-1)

        rows: dict[str, Callable[[], object]] = {
            "model+softmax": floor,
            "predict": lambda s=samples: bnn.predict(model, x, likelihood, s),
            f"predict batch_size={args.inputs}": lambda s=samples: bnn.predict(
                model, x, likelihood, s, batch_size=args.inputs
            ),
        }
        if samples == 1:
            rows["predict mean"] = lambda: bnn.predict(
                model, x, likelihood, 1, mode="mean"
            )
        for fn in rows.values():
            for _ in range(args.warmup):
                fn()
        times: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.repeats):
            for name, fn in rows.items():
                times[name].append(_timed(fn, args.inner))
        floor_us = statistics.median(times["model+softmax"]) * 1e6
        for name, values in times.items():
            us = statistics.median(values) * 1e6
            results[f"S={samples} {name}"] = us
            print(f"S={samples:<4} {name:<24} {us:8.0f} us  {us / floor_us:5.2f}x")
    return results


if __name__ == "__main__":
    main()
