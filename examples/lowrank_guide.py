"""Low-rank multivariate Normal guide vs the default mean-field guide.

The regression network of ``regression_uncertainty.py`` (a Bayesian tanh MLP
on 1-D data with a gap in (-1, 1)) is trained twice with the same PyTorch loop:

* with the default guide: an independent Normal per weight (mean field);
* with Pyro's ``AutoLowRankMultivariateNormal``, a single Gaussian over *all*
  weights whose covariance is ``diag + W W^T`` with ``W`` of rank ``--rank``,
  so it can represent correlations between weights.

Swapping the guide is one assignment; the loss, the loop and ``bnn.predict``
stay the same. The table compares the final negative ELBO (lower is a tighter
bound), the test fit and the epistemic uncertainty inside the gap.

Run: ``python examples/lowrank_guide.py --steps 1500 --rank 10``
"""

from __future__ import annotations

import argparse
import time

import torch
from pyro.infer.autoguide import AutoLowRankMultivariateNormal

import pyrolite_bnn as bnn
from pyrolite_bnn.demo import build_regression_net, make_gap_data


def train_and_evaluate(
    guide: str, args: argparse.Namespace, data: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Train one model with ``guide`` ("mean-field" or "low-rank"); return metrics."""
    torch.manual_seed(args.seed)  # same initial means for both guides
    model = build_regression_net(args.hidden)
    if guide == "low-rank":
        # Built on the network's weights-only Pyro model, started at the same
        # (Kaiming) means as the default guide.
        model.guide = AutoLowRankMultivariateNormal(
            model.prior_model,
            init_loc_fn=model.init_loc_fn,
            rank=args.rank,
            init_scale=0.01,
        )
    likelihood = bnn.Normal()
    loss_fn = bnn.KullbackLeiblerLoss(likelihood, dataset_size=len(data["x_train"]))
    # model.parameters() holds the assigned guide's parameters too.
    optimizer = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=0.02)
    steps = args.steps
    # learning rate decays exponentially to a tenth over the run
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.1 ** (i / steps)
    )
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(data["x_train"]), data["y_train"])
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    weights = sum(v.shape.numel() for v in model.random_variables())
    if guide == "low-rank":
        guide_parameters = sum(p.numel() for p in model.guide.parameters())
    else:  # a mean and a scale per weight, held by the layers
        guide_parameters = 2 * weights

    # Final -ELBO / N averaged over many particles (less Monte Carlo noise).
    elbo_loss = loss_fn(model(data["x_train"], samples=200), data["y_train"]).item()
    with torch.no_grad():
        test = bnn.predict(model, data["x_test"], likelihood, samples=args.samples)
        gap = bnn.predict(model, data["x_gap"], likelihood, samples=args.samples)
        lower, upper = test.interval(0.95)
        y_test = data["y_test"]
        gap_std = gap.epistemic_var.sqrt().mean().item()
        data_std = test.epistemic_var.sqrt().mean().item()
        return {
            "neg_elbo_per_point": elbo_loss,
            "rmse": bnn.metrics.rmse(test.mean, y_test).item(),
            "nll": bnn.metrics.gaussian_nll(test.mean, test.variance, y_test).item(),
            "coverage_95": bnn.metrics.interval_coverage(lower, upper, y_test).item(),
            "epistemic_std_gap": gap_std,
            "epistemic_std_data": data_std,
            "gap_ratio": gap_std / data_std,
            "noise_scale": likelihood.noise_scale().item(),
            "guide_parameters": float(guide_parameters),
            "seconds": seconds,
        }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--samples", type=int, default=100, help="draws per prediction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; tiny networks run fastest on 1 (0: torch's default)",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    # The demo's data (sin(x) + 0.2 x + noise, a gap in (-1, 1)) and tanh MLP.
    gap = make_gap_data(seed=args.seed, n_train=args.n_train, n_test=400, n_gap=100)
    data = {
        "x_train": gap.x_train,
        "y_train": gap.y_train,
        "x_test": gap.x_test,
        "y_test": gap.y_test,
        "x_gap": gap.x_gap,
    }
    results = {
        guide: train_and_evaluate(guide, args, data)
        for guide in ("mean-field", "low-rank")
    }

    names = list(results["mean-field"])
    print(f"{'':>20s} {'mean-field':>12s} {'low-rank':>12s}")
    for name in names:
        row = [results[guide][name] for guide in results]
        print(f"{name:>20s} " + " ".join(f"{value:12.4f}" for value in row))
    return results


if __name__ == "__main__":
    main()
