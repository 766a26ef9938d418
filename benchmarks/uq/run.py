"""The three benchmark parts and the settings study; each returns JSON rows."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from . import scores, tasks
from .methods import METHODS, Budget, Net, VISettings, fit_method


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark setting (``tiny``, ``reduced``, ``full``)."""

    sweep: tuple[tasks.GapConfig, ...]
    n_train: int
    sweep_budget: Budget
    datasets: tuple[str, ...]
    splits: int
    regression_budget: Budget
    digits_budget: Budget
    settings_sweep: tuple[tasks.GapConfig, ...]
    settings_splits: int


def _grid(full: bool) -> tuple[tasks.GapConfig, ...]:
    C = tasks.GapConfig
    if not full:
        return (
            C(1, 2.0, 0.1, 1, 50, "relu"),
            C(1, 1.0, 0.05, 2, 100, "relu"),
            C(1, 2.0, 0.2, 3, 50, "relu"),
            C(1, 2.0, 0.1, 2, 50, "tanh"),
            C(1, 1.0, 0.2, 1, 200, "tanh"),
            C(2, 2.0, 0.1, 2, 50, "relu"),
        )
    configs = [
        C(1, gap, noise, depth, width, act)
        for act in ("relu", "tanh")
        for depth in (1, 2, 3)
        for width in (50, 200)
        for gap, noise in ((1.0, 0.05), (2.0, 0.2))
    ]
    configs += [C(2, 2.0, 0.1, d, 50, a) for a in ("relu", "tanh") for d in (1, 2)]
    return tuple(configs)


def scale(name: str) -> Scale:
    if name == "tiny":
        b = Budget(epochs=5, samples=4, dropout_rates=(0.05,), members=2)
        one = (tasks.GapConfig(1, 2.0, 0.1, 1, 8, "relu"),)
        return Scale(one, 30, b, ("diabetes",), 1, b, b, one, 1)
    if name == "reduced":
        budget = Budget(epochs=300, dropout_rates=(0.01, 0.1))
        return Scale(
            _grid(False),
            200,
            budget,
            ("diabetes", "friedman1"),
            2,
            budget,
            Budget(epochs=200, dropout_rates=(0.05, 0.2)),
            _grid(False)[:3],
            1,
        )
    if name == "full":
        rates = (0.005, 0.01, 0.05, 0.1, 0.2)
        return Scale(
            _grid(True),
            600,
            Budget(epochs=2000, dropout_rates=rates),
            ("diabetes", "friedman1", "friedman2", "friedman3"),
            20,
            Budget(epochs=1000, dropout_rates=rates),
            Budget(epochs=600, dropout_rates=rates),
            _grid(False),
            5,
        )
    raise ValueError(name)


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def sweep_row(
    config: tasks.GapConfig,
    method: str,
    n_train: int,
    budget: Budget,
    settings: VISettings | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    task = tasks.make_gap_task(config, seed, n_train=n_train)
    net = Net(config.dim, 1, config.width, config.depth, config.activation)
    _seeded(seed)
    start = time.perf_counter()
    predictor = fit_method(
        method, task.x_train, task.y_train, net, budget, "regression", settings
    )
    seconds = time.perf_counter() - start
    mu, var = predictor(task.x_test)
    row = {
        "part": "sweep",
        "task": config.name,
        "config": asdict(config),
        "method": method,
        "coverage95": scores.coverage95(mu, var, task.y_test),
        "rmse": scores.rmse(mu, task.y_test),
        "noise_std": float(var.mean().sqrt()),
        "seconds": seconds,
        **scores.std_ratios(mu, predictor(task.x_gap)[0], predictor(task.x_beyond)[0]),
    }
    return row


def regression_row(
    dataset: str,
    split_seed: int,
    method: str,
    budget: Budget,
    settings: VISettings | None = None,
) -> dict[str, Any]:
    x, y = tasks.regression_dataset(dataset)
    data = tasks.split(x, y, split_seed)
    net = Net(x.shape[1], 1, 50, 1, "relu")
    _seeded(split_seed)
    start = time.perf_counter()
    predictor = fit_method(
        method, data.x_train, data.y_train, net, budget, "regression", settings
    )
    seconds = time.perf_counter() - start
    mu, var = predictor(data.x_test)
    log_scale = float(torch.tensor(data.y_scale).log())
    return {
        "part": "regression",
        "task": dataset,
        "split": split_seed,
        "method": method,
        # in the data's units: densities of standardised targets / y_scale
        "test_ll": float(scores.mixture_log_likelihood(mu, var, data.y_test))
        - log_scale,
        "rmse": scores.rmse(mu, data.y_test) * data.y_scale,
        "coverage95": scores.coverage95(mu, var, data.y_test),
        "seconds": seconds,
    }


def digits_row(
    method: str, budget: Budget, settings: VISettings | None = None, seed: int = 0
) -> dict[str, Any]:
    data = tasks.digits(seed)
    net = Net(64, 10, 64, 1, "relu")
    _seeded(seed)
    start = time.perf_counter()
    predictor = fit_method(
        method, data.x_train, data.y_train, net, budget, "classification", settings
    )
    seconds = time.perf_counter() - start
    probs = predictor(data.x_test)
    ood = {name: predictor(x) for name, x in data.ood.items()}
    return {
        "part": "digits",
        "task": "digits",
        "method": method,
        "seconds": seconds,
        **scores.classification_scores(probs, data.y_test, ood),
    }


def run_parts(
    setting: Scale,
    parts: str,
    log: Any = print,
    methods: tuple[str, ...] = METHODS,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for method in methods:
        if "a" in parts:
            for config in setting.sweep:
                rows.append(
                    sweep_row(config, method, setting.n_train, setting.sweep_budget)
                )
                log(rows[-1])
        if "b" in parts:
            for dataset in setting.datasets:
                for seed in range(setting.splits):
                    rows.append(
                        regression_row(dataset, seed, method, setting.regression_budget)
                    )
                    log(rows[-1])
        if "c" in parts:
            rows.append(digits_row(method, setting.digits_budget))
            log(rows[-1])
    return rows


#: One-at-a-time variations of the library's knobs, from its defaults.
SETTINGS: tuple[VISettings, ...] = (
    VISettings(),
    VISettings(prior_scale=0.3),
    VISettings(prior_scale=3.0),
    VISettings(init_scale=1e-2),
    VISettings(init_scale=0.1),
    VISettings(noise_init=0.1),
    VISettings(estimator="reparam"),
    VISettings(warmup=0.5),
    VISettings(particles=1),
    VISettings(particles=32),
)


#: Combinations of the knobs that helped one at a time (``--settings --combos``).
COMBOS: tuple[VISettings, ...] = (
    VISettings(noise_init=0.1, init_scale=0.1),
    VISettings(noise_init=0.1, init_scale=0.1, warmup=0.5),
    VISettings(noise_init=0.1, prior_scale=3.0),
    VISettings(noise_init=0.1, init_scale=0.1, prior_scale=3.0),
)


#: A faster learning rate for the learned noise scale (``--settings --noise-rates``),
#: alone and with larger initial posterior scales.
NOISE_RATES: tuple[VISettings, ...] = (
    VISettings(),
    VISettings(noise_lr=3.0),
    VISettings(noise_lr=10.0),
    VISettings(init_scale=1e-2),
    VISettings(init_scale=1e-2, noise_lr=10.0),
    VISettings(init_scale=0.03),
    VISettings(init_scale=0.03, noise_lr=10.0),
    VISettings(init_scale=0.1),
    VISettings(init_scale=0.1, noise_lr=10.0),
)


def run_settings(
    setting: Scale, log: Any = print, variants: tuple[VISettings, ...] = SETTINGS
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for vi in variants:
        for config in setting.settings_sweep:
            row = sweep_row(config, "vi", setting.n_train, setting.sweep_budget, vi)
            rows.append({**row, "settings": vi.label()})
            log(rows[-1])
        for seed in range(setting.settings_splits):
            row = regression_row("diabetes", seed, "vi", setting.regression_budget, vi)
            rows.append({**row, "settings": vi.label()})
            log(rows[-1])
    return rows
