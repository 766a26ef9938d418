"""Markdown tables and PNG plots from ``results/*.json`` into ``RESULTS.md``.

``notes.md`` (hand-written findings) is placed at the top unchanged.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .methods import METHODS

Row = dict[str, Any]


def sweep_goal(row: Row) -> bool:
    """The issue's sweep goal for one configuration."""
    return (
        row["gap_ratio"] >= 3
        and row["beyond_ratio"] >= 3
        and 0.92 <= row["coverage95"] <= 0.97
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _mean_se(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    se = statistics.stdev(values) / len(values) ** 0.5
    return f"{statistics.fmean(values):.3f} ± {se:.3f}"


def sweep_section(rows: list[Row]) -> str:
    by_task: dict[str, dict[str, Row]] = defaultdict(dict)
    for row in rows:
        by_task[row["task"]][row["method"]] = row
    methods = [m for m in METHODS if any(m in r for r in by_task.values())]
    header = ["task", *[f"{m} gap / beyond / cov" for m in methods]]
    body = []
    for task, cells in by_task.items():
        body.append(
            [task]
            + [
                f"{c['gap_ratio']:.1f}x / {c['beyond_ratio']:.1f}x / "
                f"{c['coverage95']:.1%}" + (" ✓" if sweep_goal(c) else "")
                if (c := cells.get(m))
                else "—"
                for m in methods
            ]
        )
    summary = []
    for m in methods:
        ms = [c[m] for c in by_task.values() if m in c]
        summary.append(
            [
                m,
                f"{sum(sweep_goal(r) for r in ms)}/{len(ms)}",
                f"{sum(r['gap_ratio'] >= 3 for r in ms)}/{len(ms)}",
                f"{sum(r['beyond_ratio'] >= 3 for r in ms)}/{len(ms)}",
                f"{sum(0.92 <= r['coverage95'] <= 0.97 for r in ms)}/{len(ms)}",
                f"{statistics.median(r['gap_ratio'] for r in ms):.1f}x",
                f"{statistics.median(r['beyond_ratio'] for r in ms):.1f}x",
                f"{statistics.fmean(r['coverage95'] for r in ms):.1%}",
            ]
        )
    return (
        "Epistemic std ratio gap/data and beyond/data (one data-range width past "
        "the edge), and 95 % interval coverage on fresh data-region points "
        "(✓: all three goals met).\n\n"
        + _table(header, body)
        + "\n\nGoal counts (goal: all of gap ≥ 3x, beyond ≥ 3x, coverage 92-97 %):\n\n"
        + _table(
            [
                "method",
                "all goals",
                "gap ≥ 3x",
                "beyond ≥ 3x",
                "cov 92-97 %",
                "median gap",
                "median beyond",
                "mean cov",
            ],
            summary,
        )
    )


def regression_section(rows: list[Row]) -> str:
    cells: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        cells[row["task"], row["method"]].append(row)
    datasets = list(dict.fromkeys(r["task"] for r in rows))
    body = []
    for d in datasets:
        for m in METHODS:
            rs = cells.get((d, m))
            if rs:
                body.append(
                    [
                        d,
                        m,
                        str(len(rs)),
                        _mean_se([r["test_ll"] for r in rs]),
                        _mean_se([r["rmse"] for r in rs]),
                        f"{statistics.fmean(r['coverage95'] for r in rs):.1%}",
                    ]
                )
    return (
        "Test log-likelihood (nats per point, data units) and RMSE, mean ± "
        "standard error over random 90/10 splits.\n\n"
        + _table(["data set", "method", "splits", "test LL", "RMSE", "cov95"], body)
    )


def digits_section(rows: list[Row]) -> str:
    body = [
        [
            r["method"],
            f"{r['accuracy']:.2%}",
            f"{r['nll']:.3f}",
            f"{r['ece']:.3f}",
            f"{r['auroc_noise']:.3f} / {r['auroc_mi_noise']:.3f}",
            f"{r['auroc_rotated']:.3f} / {r['auroc_mi_rotated']:.3f}",
        ]
        for r in rows
    ]
    return (
        "AUROC of the predictive entropy / of the mutual information between "
        "test digits and OOD images (uniform noise; digits rotated 90°).\n\n"
        + _table(
            ["method", "accuracy", "NLL", "ECE", "AUROC noise", "AUROC rotated"], body
        )
    )


def settings_section(rows: list[Row]) -> str:
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row["settings"]].append(row)
    body = []
    for label, rs in groups.items():
        sw = [r for r in rs if r["part"] == "sweep"]
        rg = [r for r in rs if r["part"] == "regression"]
        body.append(
            [
                label,
                f"{sum(sweep_goal(r) for r in sw)}/{len(sw)}",
                f"{statistics.median(r['gap_ratio'] for r in sw):.2f}x",
                f"{statistics.median(r['beyond_ratio'] for r in sw):.2f}x",
                f"{statistics.fmean(r['coverage95'] for r in sw):.1%}",
                f"{statistics.fmean(r['noise_std'] for r in sw):.3f}",
                _mean_se([r["test_ll"] for r in rg]) if rg else "—",
                f"{statistics.fmean(r['seconds'] for r in rs):.1f}",
            ]
        )
    return _table(
        [
            "VI settings",
            "sweep goals",
            "median gap",
            "median beyond",
            "mean cov95",
            "mean noise std",
            "diabetes test LL",
            "s / fit",
        ],
        body,
    )


def _plots(rows: list[Row], out: Path) -> list[str]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return []
    names = []
    sweep = [r for r in rows if r["part"] == "sweep" and "settings" not in r]
    if sweep:
        figure = Figure(figsize=(10, 4), layout="constrained")
        for i, key in enumerate(("gap_ratio", "beyond_ratio", "coverage95")):
            ax = figure.add_subplot(1, 3, i + 1)
            tasks = list(dict.fromkeys(r["task"] for r in sweep))
            for j, m in enumerate(METHODS):
                xs = [
                    tasks.index(r["task"]) + 0.15 * (j - 2)
                    for r in sweep
                    if r["method"] == m
                ]
                ys = [r[key] for r in sweep if r["method"] == m]
                ax.scatter(xs, ys, label=m, s=14)
            if key == "coverage95":
                ax.axhspan(0.92, 0.97, color="green", alpha=0.15)
            else:
                ax.set_yscale("log")
                ax.axhline(3, color="green", linestyle=":")
            ax.set_title(key)
            ax.set_xlabel("sweep configuration")
        ax.legend(fontsize="small")
        figure.savefig(out / "sweep.png", dpi=100)
        names.append("sweep.png")
    reg = [r for r in rows if r["part"] == "regression" and "settings" not in r]
    if reg:
        figure = Figure(figsize=(6, 3.5), layout="constrained")
        ax = figure.add_subplot()
        datasets = list(dict.fromkeys(r["task"] for r in reg))
        for j, m in enumerate(METHODS):
            for r in reg:
                if r["method"] == m:
                    ax.scatter(
                        datasets.index(r["task"]) + 0.15 * (j - 2),
                        r["test_ll"],
                        color=f"C{j}",
                        s=10,
                        label=m
                        if r is next(q for q in reg if q["method"] == m)
                        else None,
                    )
        ax.set_xticks(range(len(datasets)), datasets)
        ax.set_ylabel("test log-likelihood per split")
        ax.legend(fontsize="small")
        figure.savefig(out / "regression.png", dpi=100)
        names.append("regression.png")
    return names


def write(out: Path) -> Path:
    """Regenerate ``out/RESULTS.md`` from ``out/results/*.json``."""
    sections = []
    notes = out / "notes.md"
    if notes.exists():
        sections.append(notes.read_text().strip())
    for path in sorted((out / "results").glob("*.json")):
        rows: list[Row] = json.loads(path.read_text())
        title = f"## `{path.stem}`"
        if path.stem.endswith("_settings"):
            sections.append(
                f"{title}: library settings (VI only)\n\n" + settings_section(rows)
            )
            continue
        parts = [title]
        for part, render in (
            ("sweep", sweep_section),
            ("regression", regression_section),
            ("digits", digits_section),
        ):
            sub = [r for r in rows if r["part"] == part]
            if sub:
                parts.append(f"### {part}\n\n" + render(sub))
        if path.stem.startswith("reduced") or path.stem.startswith("full"):
            for name in _plots(rows, out):
                stem = f"{path.stem}_{name}"
                (out / name).rename(out / stem)
                parts.append(f"![{stem}]({stem})")
        sections.append("\n\n".join(parts))
    target = out / "RESULTS.md"
    target.write_text(
        "# Uncertainty-quality benchmark\n\n" + "\n\n".join(sections) + "\n"
    )
    return target
