"""``python -m benchmarks.uq [--reduced | --full | --tiny] [--parts abc] [--settings]``.

``--settings --combos`` and ``--settings --noise-rates`` run the other studies.

``--methods vi+laplace,map+laplace`` runs only those rows (into their own file).
Writes ``benchmarks/uq/results/<setting>[_settings].json`` and regenerates
``benchmarks/uq/RESULTS.md`` from every JSON file present.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from . import report
from .methods import METHODS
from .run import COMBOS, NOISE_RATES, SETTINGS, run_parts, run_settings, scale

HERE = Path(__file__).parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.uq")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--reduced", action="store_const", const="reduced", dest="size")
    group.add_argument("--full", action="store_const", const="full", dest="size")
    group.add_argument("--tiny", action="store_const", const="tiny", dest="size")
    parser.add_argument(
        "--parts",
        default="abc",
        help="subset of a (sweep), b (regression sets), c (digits)",
    )
    parser.add_argument(
        "--settings",
        action="store_true",
        help="run the library-settings study instead of the parts",
    )
    parser.add_argument(
        "--combos",
        action="store_true",
        help="with --settings: the combinations of knobs instead of one at a time",
    )
    parser.add_argument(
        "--noise-rates",
        action="store_true",
        help="with --settings: faster learning rates for the learned noise scale",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated subset of {', '.join(METHODS)} (default: all); "
        "the JSON file name then ends in the methods",
    )
    parser.add_argument("--out", type=Path, default=HERE, help="output directory")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    size = args.size or "reduced"
    torch.set_num_threads(args.threads)
    setting = scale(size)
    name = f"{size}_{args.parts}"
    methods = METHODS
    if args.methods:
        methods = tuple(args.methods.split(","))
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            parser.error(f"unknown methods {unknown}; choose from {METHODS}")
        name += "_" + "_".join(m.replace("+", "-") for m in methods)
    if args.combos and args.noise_rates:
        parser.error("--combos and --noise-rates are two studies: choose one")
    variants, study = SETTINGS, ""
    if args.combos:
        variants, study = COMBOS, "combos_"
    elif args.noise_rates:
        variants, study = NOISE_RATES, "noise_rates_"
    if args.settings:
        name = f"{size}_{study}settings"
    results = args.out / "results"
    results.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []

    def log(row: dict[str, Any]) -> None:
        """Print the row and rewrite the JSON, so a stopped run keeps its rows."""
        print(row, flush=True)
        rows.append(row)
        (results / f"{name}.json").write_text(json.dumps(rows, indent=1))

    if args.settings:
        run_settings(setting, log, variants)
    else:
        run_parts(setting, args.parts, log, methods)
    report.write(args.out)


if __name__ == "__main__":
    main()
