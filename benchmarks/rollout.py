"""Model-based RL rollouts on drawn networks: ``nets.each`` vs plain batched torch.

A learned dynamics model (a heteroscedastic MLP, 3 -> 64 -> 64 -> 2 x 2, as
in a pendulum's model) is drawn ``P`` times with ``bnn.draw_networks``; each
network rolls its own ``B`` states forward ``H`` steps, ``state = state +
0.05 * mean(state, action)``, the actions shared by all networks. Rows, timed
under ``torch.no_grad()``:

- ``torch bmm``: the floor: the same rollout in plain torch on the drawn
  weights (``nets.weights()``), one batched matrix product per layer;
- ``nets.each``: the library, every network on its own state in one call per
  step (mapped over the networks with ``torch.vmap``);
- ``in turn``: ``P`` calls of one network per step (``nets[s]``), the way
  ``nets.each`` ran before it was batched, and still runs where ``vmap``
  cannot run a network;
- ``nets(x)``: one call of all networks on shared inputs per step, the
  library's fixed cost of a call (a rollout cannot use it: every network
  would get every state).

Prints medians over interleaved repeats of the thread's CPU time (robust to
other processes on a shared machine) and the ratios to ``torch bmm``.

    python benchmarks/rollout.py                      # P = 20 and 100, 1 thread
    python benchmarks/rollout.py --networks 20 --repeats 15 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

# This checkout's package, not whichever copy is installed (as ``python -m``).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import pyrolite_bnn as bnn


class Dynamics(bnn.VIModule):
    """Next-state change of a 2-d state under a 1-d action: mean and raw scale."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.body = bnn.VISequential(
            bnn.VILinear(3, hidden),
            nn.Tanh(),
            bnn.VILinear(hidden, hidden),
            nn.Tanh(),
            bnn.VILinear(hidden, 4),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(..., 2, 2)``: per state dimension, the mean and the raw scale."""
        return self.body(x).unflatten(-1, (2, 2))


def _rollouts(
    networks: int, batch: int, horizon: int, hidden: int
) -> dict[str, Callable[[], Tensor]]:
    """The rollouts of each row, on one draw of ``networks`` networks."""
    torch.manual_seed(0)
    nets = bnn.draw_networks(Dynamics(hidden).eval(), samples=networks)
    singles = [nets[s] for s in range(networks)]
    weights = nets.weights()
    start = torch.randn(batch, 2)
    actions = torch.rand(horizon, batch, 1) * 2 - 1

    def plain_step(x: Tensor) -> Tensor:
        h = x
        for index in (0, 2):
            bias = weights[f"body.{index}.bias"][:, None]
            weight = weights[f"body.{index}.weight"].transpose(1, 2)
            h = torch.tanh(torch.baddbmm(bias, h, weight))
        bias, weight = weights["body.4.bias"][:, None], weights["body.4.weight"]
        return torch.baddbmm(bias, h, weight.transpose(1, 2)).unflatten(-1, (2, 2))

    def in_turn(x: Tensor) -> Tensor:
        return torch.cat([single(x[s]) for s, single in enumerate(singles)])

    def rollout(step: Callable[[Tensor], Tensor]) -> Callable[[], Tensor]:
        def run() -> Tensor:
            state = start.expand(networks, batch, 2)
            for t in range(horizon):
                x = torch.cat([state, actions[t].expand(networks, batch, 1)], -1)
                state = state + 0.05 * step(x)[..., 0]
            return state

        return run

    def shared_calls() -> Tensor:
        outputs = [nets(torch.cat([start, actions[t]], -1)) for t in range(horizon)]
        return outputs[-1]

    return {
        "torch bmm": rollout(plain_step),
        "nets.each": rollout(nets.each),
        "in turn": rollout(in_turn),
        "nets(x)": shared_calls,
    }


def _medians(fns: dict[str, Callable[[], Tensor]], repeats: int) -> dict[str, float]:
    """Median CPU ms of each function over interleaved repeats (one warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.thread_time()
                fn()
                times[name].append((time.thread_time() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    """Run the comparison; returns the medians in ms by network count and row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"B={args.batch} H={args.horizon} hidden={args.hidden} "
        f"threads={torch.get_num_threads()} repeats={args.repeats} "
        "(median CPU ms of a whole rollout)"
    )
    results = {}
    for networks in args.networks:
        fns = _rollouts(networks, args.batch, args.horizon, args.hidden)
        medians = _medians(fns, args.repeats)
        floor = medians["torch bmm"]
        print(
            f"P={networks}: "
            + "; ".join(f"{k} {v:.1f} ({v / floor:.1f}x)" for k, v in medians.items())
        )
        results[networks] = medians
    return results


if __name__ == "__main__":
    main()
