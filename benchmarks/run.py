"""Benchmark pyrolite_bnn against the hand-written reference, in one process.

Prints a table of medians and ratios (pyrolite / reference) and writes JSON.

    python benchmarks/run.py                      # all workloads, CPU
    python benchmarks/run.py --workloads tiny --samples 10 --repeats 50
    python benchmarks/run.py --device cuda --out results/gpu.json

The reference is ``shared/bench/reference.py`` (found next to the repository, or
via ``--reference``). Thread count is pinned (``--threads``, default 1) and
reported: on a contended 2-core machine two intra-op threads can be
pathologically slow.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).parent))
import peers
import workloads

DEFAULT_REFERENCE = (
    Path(__file__).resolve().parents[2] / "shared" / "bench" / "reference.py"
)


def load_reference(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("reference", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn: Callable[[], object], device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    start = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - start) * 1e3


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: str
) -> dict[str, float]:
    """Median ms of each function, measured round-robin so drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory_mb(step: Callable[[], object]) -> float:
    """Peak of the memory allocated during one training step (MiB, CPU).

    Measured with the PyTorch profiler: the running sum of every operator's own
    allocations and frees, in time order, over one step after a warm-up step.
    Memory held before the step (parameters, optimizer state, data) is excluded.
    """
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.events() if e.self_cpu_memory_usage]
    events.sort(key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["mlp", "conv", "tiny"])
    parser.add_argument("--samples", nargs="+", type=int, default=[1, 10, 50])
    parser.add_argument("--estimators", nargs="+", default=["reparam"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time each estimator with KullbackLeiblerLoss(compile=True)",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also time torch_blue and bayesian-torch where installed",
    )
    parser.add_argument(
        "--predict", action="store_true", help="also time predict S=100"
    )
    parser.add_argument(
        "--memory", action="store_true", help="also measure peak training memory"
    )
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/latest.json")
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    reference = load_reference(args.reference)
    rows: list[dict[str, object]] = []
    print(
        f"torch {torch.__version__}, device {args.device}, threads {args.threads}, "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"{'workload':8} {'S':>3} {'row':24} {'ms':>9} {'ratio':>7}")
    for workload in args.workloads:
        for samples in args.samples:
            batch = 32 if workload == "tiny" else 128
            fns: dict[str, Callable[[], object]] = {}
            for est in ("weight", "local"):
                step, _ = reference.make_step(
                    workload, est, samples, batch, args.device
                )
                fns[f"reference/{est}"] = step
            for est in args.estimators:
                for compiled in (False, True) if args.compile else (False,):
                    step, _ = workloads.make_step(
                        workload, est, samples, batch, args.device, compile=compiled
                    )
                    fns[f"pyrolite/{est}" + ("+compile" if compiled else "")] = step
            if args.peers:
                fns.update(peers.make_peer_steps(workload, samples, batch, args.device))
            warmup = max(args.warmup, 3) if args.compile else args.warmup
            medians = interleaved_medians(fns, args.repeats, warmup, args.device)
            best_ref = min(medians["reference/weight"], medians["reference/local"])
            for name, ms in medians.items():
                base = (
                    medians["reference/weight"]
                    if name.startswith("pyrolite/reparam")
                    else best_ref
                )
                ratio = ms / base
                rows.append(
                    {
                        "workload": workload,
                        "samples": samples,
                        "row": name,
                        "ms": ms,
                        "ratio": ratio,
                        "kind": "train_step",
                    }
                )
                print(f"{workload:8} {samples:>3} {name:24} {ms:9.2f} {ratio:7.2f}")
        if args.predict and workload in ("mlp", "tiny"):
            batch = 32 if workload == "tiny" else 128
            fns = {
                "reference/forward": workloads.reference_forward(
                    reference, workload, 100, batch, args.device
                ),
                "pyrolite/predict": workloads.make_predict(
                    workload, 100, batch, args.device
                ),
            }
            medians = interleaved_medians(fns, args.repeats, args.warmup, args.device)
            for name, ms in medians.items():
                ratio = ms / medians["reference/forward"]
                rows.append(
                    {
                        "workload": workload,
                        "samples": 100,
                        "row": name,
                        "ms": ms,
                        "ratio": ratio,
                        "kind": "predict",
                    }
                )
                print(f"{workload:8} {100:>3} {name:24} {ms:9.2f} {ratio:7.2f}")
    if args.memory:
        for workload in args.workloads:
            for samples in args.samples:
                batch = 32 if workload == "tiny" else 128
                mem = {
                    f"reference/{est}": peak_memory_mb(
                        reference.make_step(workload, est, samples, batch)[0]
                    )
                    for est in ("weight", "local")
                }
                for est in args.estimators:
                    mem[f"pyrolite/{est}"] = peak_memory_mb(
                        workloads.make_step(workload, est, samples, batch)[0]
                    )
                best = min(mem["reference/weight"], mem["reference/local"])
                for name, mb in mem.items():
                    ratio = mb / best
                    rows.append(
                        {
                            "workload": workload,
                            "samples": samples,
                            "row": name,
                            "mb": mb,
                            "ratio": ratio,
                            "kind": "peak_memory",
                        }
                    )
                    print(
                        f"{workload:8} {samples:>3} {name:24} {mb:8.1f}MB {ratio:6.2f}"
                    )
    write_rows(args.out, rows, args.device, args.threads)
    return rows


def write_rows(
    path: Path, rows: list[dict[str, object]], device: str, threads: int
) -> None:
    """Write benchmark rows, with the torch version, device and threads, as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "device": device, "threads": threads}
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
