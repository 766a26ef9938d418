"""Time one training step of the same network along its three routes.

1. the PyTorch-style loop (``loss_fn(model(x), y)``: no Pyro tracing with the
   generated guide),
2. ``pyro.infer.SVI`` on ``loss_fn.pyro_model(model)`` and ``model.guide`` with
   ``Trace_ELBO`` / ``TraceMeanField_ELBO``,
3. the same with Pyro's compiled ``JitTrace_ELBO`` / ``JitTraceMeanField_ELBO``
   (reported as failed where they cannot run),
4. the same with ``bnn.Trace_ELBO`` / ``bnn.TraceMeanField_ELBO`` (Pyro's ELBOs
   computed through the PyTorch-style path), with their ratio to route 1.

All in one run, ``estimator="reparam"`` on every route, 1 thread, medians.

    python benchmarks/svi_paths.py --workload mlp --samples 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from pyro.infer import (
    SVI,
    JitTrace_ELBO,
    JitTraceMeanField_ELBO,
    Trace_ELBO,
    TraceMeanField_ELBO,
)

sys.path.insert(0, str(Path(__file__).parent))
import workloads

import pyrolite_bnn as bnn


def round_robin_ms(
    steps: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, float | str]:
    """Median milliseconds per step, the routes timed in turn in every round.

    Interleaving keeps a change of the machine's load from favouring one route.
    A route that fails in warm-up is reported as failed, not timed.
    """
    results: dict[str, float | str] = {}
    live = {}
    for name, step in steps.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # jit tracer warnings
                for _ in range(warmup):
                    step()
            live[name] = step
        except Exception as error:  # report, don't hide, what cannot run
            results[name] = f"failed: {type(error).__name__}: {error}"
    times: dict[str, list[float]] = {name: [] for name in live}
    for _ in range(repeats):
        for name, step in live.items():
            start = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - start) * 1e3)
    for name in live:
        results[name] = statistics.median(times[name])
    return {name: results[name] for name in steps}


def main(argv: list[str] | None = None) -> dict[str, float | str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="tiny", choices=["tiny", "mlp", "conv"])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    batch = 32 if args.workload == "tiny" else 128
    step, _ = workloads.make_step(args.workload, "reparam", args.samples, batch)
    steps: dict[str, Callable[[], object]] = {"pytorch loop": step}

    net, shape = workloads.build(args.workload, "reparam")
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), workloads.N_TRAIN)
    for elbo in (
        Trace_ELBO,
        TraceMeanField_ELBO,
        JitTrace_ELBO,
        JitTraceMeanField_ELBO,
        bnn.Trace_ELBO,
        bnn.TraceMeanField_ELBO,
    ):
        svi = SVI(
            loss_fn.pyro_model(net), net.guide, pyro.optim.Adam({"lr": 1e-3}), elbo()
        )

        def svi_step(svi: SVI = svi) -> object:
            return svi.step(x, y, samples=args.samples)

        steps[_label(elbo)] = svi_step
    results = round_robin_ms(steps, args.repeats, args.warmup)
    print(f"{args.workload}, S={args.samples}, B={batch}, CPU, 1 thread")
    reference = results["pytorch loop"]
    for name, value in results.items():
        shown = value
        if isinstance(value, float) and isinstance(reference, float):
            shown = f"{value:8.2f} ms  {value / reference:5.2f}x"
        print(f"  {name:36} {shown}")
    return results


def _label(elbo: type) -> str:
    package = "bnn" if elbo.__module__.startswith("pyrolite_bnn") else "pyro"
    return f"SVI {package}.{elbo.__name__}"


if __name__ == "__main__":
    main()
