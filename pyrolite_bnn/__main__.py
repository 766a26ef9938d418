"""Command line: ``python -m pyrolite_bnn demo [regression|classify]``.

Also installed as the console script ``pyrolite-bnn``. Without arguments it
prints the help.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pyrolite-bnn`` command.

    Returns:
        The parser, with one subcommand per action.

    Example:
        >>> from pyrolite_bnn.__main__ import build_parser
        >>> args = build_parser().parse_args(["demo", "--steps", "10", "--no-plot"])
        >>> args.command, args.task, args.steps, args.no_plot
        ('demo', 'regression', 10, True)
    """
    parser = argparse.ArgumentParser(
        prog="pyrolite-bnn",
        description="pyrolite_bnn: Bayesian neural networks in PyTorch syntax.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train a small Bayesian network and report its uncertainty",
        description=(
            "regression (default): 1-D regression with a gap in the training "
            "inputs; prints test error, interval coverage and gap-vs-data "
            "epistemic uncertainty and plots the predictive bands. classify: "
            "Bayesian MLP on scikit-learn's digits (needs pyrolite_bnn[data]) with "
            "calibration and out-of-distribution detection of noise images."
        ),
    )
    demo.add_argument(
        "task",
        nargs="?",
        choices=("regression", "classify"),
        default="regression",
        help="which demo to run (default: regression)",
    )
    demo.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimisation steps (default: 2000 for regression, 400 for classify)",
    )
    demo.add_argument(
        "--samples",
        type=int,
        default=100,
        help="posterior draws per prediction (default: 100)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--out",
        default=None,
        help="PNG file or directory for the plot (default: ./demo.png or "
        "./demo_classify.png)",
    )
    demo.add_argument("--no-plot", action="store_true", help="do not write the plot")
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from pyrolite_bnn import demo

    if args.steps is not None and args.steps < 1:
        print("error: --steps must be >= 1", file=sys.stderr)
        return 2
    if args.samples < 2:
        print("error: --samples must be >= 2", file=sys.stderr)
        return 2
    if args.task == "regression":
        out = None if args.no_plot else (args.out or "demo.png")
        demo.run_regression_demo(
            steps=demo.REGRESSION_STEPS if args.steps is None else args.steps,
            samples=args.samples,
            seed=args.seed,
            out=out,
        )
        return 0
    out = None if args.no_plot else (args.out or "demo_classify.png")
    try:
        demo.run_classification_demo(
            steps=demo.CLASSIFY_STEPS if args.steps is None else args.steps,
            samples=args.samples,
            seed=args.seed,
            out=out,
        )
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pyrolite-bnn`` command line.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when an optional dependency is
        missing, 2 for invalid arguments.

    Example:
        >>> from pyrolite_bnn.__main__ import main
        >>> main([])  # doctest: +ELLIPSIS
        usage: pyrolite-bnn [-h] COMMAND ...
        ...
        0
    """
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        return _run_demo(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover


if __name__ == "__main__":
    raise SystemExit(main())
