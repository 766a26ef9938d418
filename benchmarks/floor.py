"""The deterministic floor: a Bayesian step against plain torch at batch B*S.

A particle-batched training step of S particles does at least the work of a
deterministic step on ``B * S`` rows (same layers, same matmuls), so that plain
torch step is the floor. This script times, in one process and round-robin,

- ``floor``: the deterministic ``torch.nn`` network at batch ``B * S``,
- ``pyrolite/auto`` (the default estimator) and ``pyrolite/reparam``,

for each workload, particle count S and (dense workloads) hidden width, and
prints every row's ratio to the floor of the same S and width.

    python benchmarks/floor.py --workloads mlp conv --samples 1 10 100
    python benchmarks/floor.py --workloads mlp --samples 10 --widths 128 512 2048
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import workloads
from run import interleaved_medians, write_rows


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["mlp", "conv", "tiny"])
    parser.add_argument("--samples", nargs="+", type=int, default=[1, 10, 100])
    parser.add_argument(
        "--widths",
        nargs="+",
        type=int,
        default=[0],
        help="hidden widths of the dense workloads (0: the workload's own)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/floor.json")
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, threads {args.threads}")
    print(f"{'workload':8} {'width':>5} {'S':>4} {'row':16} {'ms':>9} {'x floor':>8}")
    rows: list[dict[str, object]] = []
    for workload in args.workloads:
        widths = [0] if workload == "conv" else args.widths
        for width in widths:
            hidden = width or None
            for samples in args.samples:
                batch = 32 if workload == "tiny" else 128
                fns: dict[str, Callable[[], object]] = {
                    "floor": workloads.make_deterministic_step(
                        workload, batch * samples, args.device, width=hidden
                    )
                }
                for est in ("auto", "reparam"):
                    fns[f"pyrolite/{est}"] = workloads.make_step(
                        workload, est, samples, batch, args.device, width=hidden
                    )[0]
                medians = interleaved_medians(
                    fns, args.repeats, args.warmup, args.device
                )
                for name, ms in medians.items():
                    ratio = ms / medians["floor"]
                    rows.append(
                        {
                            "workload": workload,
                            "width": width or "default",
                            "samples": samples,
                            "row": name,
                            "ms": ms,
                            "ratio_to_floor": ratio,
                        }
                    )
                    print(
                        f"{workload:8} {width or '-':>5} {samples:>4} {name:16} "
                        f"{ms:9.2f} {ratio:8.2f}"
                    )
    write_rows(args.out, rows, args.device, args.threads)
    return rows


if __name__ == "__main__":
    main()
