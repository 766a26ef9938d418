"""Markdown tables from the JSON files that ``benchmarks/run.py`` writes.

    python benchmarks/tables.py results/dense.json results/conv.json

Prints one table per kind of row (training step, prediction, peak memory), in
the order the rows were measured, for pasting into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_TITLES = {
    "train_step": "Training step (S particles, -ELBO/N, backward, Adam), ms",
    "predict": "Prediction, S = 100 (reference: its forward pass with 100 draws), ms",
    "peak_memory": "Peak memory of one training step, MiB",
}


def tables(paths: list[Path]) -> str:
    """The markdown tables of the rows in ``paths``."""
    rows = [row for path in paths for row in json.loads(path.read_text())["rows"]]
    out: list[str] = []
    for kind, title in _TITLES.items():
        selected = [row for row in rows if row["kind"] == kind]
        if not selected:
            continue
        unit = "MiB" if kind == "peak_memory" else "ms"
        out += [f"### {title}", "", f"| workload | S | row | {unit} | ratio |"]
        out.append("|---|---:|---|---:|---:|")
        for row in selected:
            value = row["mb"] if kind == "peak_memory" else row["ms"]
            out.append(
                f"| {row['workload']} | {row['samples']} | {row['row']} "
                f"| {value:.2f} | {row['ratio']:.2f} |"
            )
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    print(tables(parser.parse_args().paths))


if __name__ == "__main__":
    main()
