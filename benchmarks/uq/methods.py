"""The compared methods, trained at one budget.

The library's mean-field VI, MC dropout (rate and noise precision tuned on a
validation split), a deep ensemble of 5, and the linearised Laplace posterior
(:func:`pyrolite_bnn.laplace`) on top of the library's VI (``vi+laplace``) or of
a MAP fit (``map+laplace``).

Every method is trained with Adam at learning rate ``Budget.lr`` decayed
exponentially to a tenth over ``Budget.epochs`` epochs, on the same batches.
A fitted method is a *predictor*: regression predictors return per-member
``(mu, var)`` of shape ``(S, N)`` (see :mod:`benchmarks.uq.scores`),
classification predictors per-member class probabilities ``(S, N, C)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pyrolite_bnn as bnn
from pyrolite_bnn.laplace import DEFAULT_MAX_PARAMETERS

from .scores import mixture_log_likelihood

Kind = Literal["regression", "classification"]
RegressionPredictor = Callable[[Tensor], tuple[Tensor, Tensor]]
ClassPredictor = Callable[[Tensor], Tensor]
METHODS = ("vi", "mc_dropout", "ensemble", "vi+laplace", "map+laplace")


@dataclass(frozen=True)
class Net:
    """An MLP: ``depth`` hidden layers of ``width`` units."""

    in_dim: int
    out_dim: int
    width: int = 50
    depth: int = 1
    activation: str = "relu"


@dataclass(frozen=True)
class Budget:
    """Training and prediction budget shared by all methods."""

    epochs: int = 1000
    lr: float = 1e-2
    batch_size: int | None = None  # None: full batch
    samples: int = 100  # predictive draws (VI, dropout); the ensemble has 5
    dropout_rates: tuple[float, ...] = (0.01, 0.05, 0.1)
    members: int = 5


@dataclass(frozen=True)
class VISettings:
    """Library knobs; ``None`` keeps the library default."""

    prior_scale: float | None = None
    init_scale: float | None = None
    noise_init: float | None = None
    estimator: str = "auto"
    warmup: float = 0.0  # fraction of the epochs of linear KL annealing
    particles: int | None = None
    learned_prior: str | None = None  # LearnedNormalPrior(per=...) on every layer
    noise_lr: float = 1.0  # factor on the learned noise scale's learning rate
    extra: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        """Short description of the non-default knobs."""
        parts = [
            f"{name}={value}"
            for name, value in (
                ("prior_scale", self.prior_scale),
                ("init_scale", self.init_scale),
                ("noise_init", self.noise_init),
                ("particles", self.particles),
                ("learned_prior", self.learned_prior),
            )
            if value is not None
        ]
        if self.estimator != "auto":
            parts.append(f"estimator={self.estimator}")
        if self.warmup:
            parts.append(f"warmup={self.warmup:g}")
        if self.noise_lr != 1.0:
            parts.append(f"noise_lr x{self.noise_lr:g}")
        return ", ".join(parts) or "defaults"


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "tanh": nn.Tanh}[name]()


def _batches(
    x: Tensor, y: Tensor, batch_size: int | None, generator: torch.Generator
) -> Iterable[tuple[Tensor, Tensor]]:
    """Reshuffled minibatches each time it is iterated (one batch if ``None``)."""

    class _Loader:
        def __len__(self) -> int:
            return 1 if batch_size is None else math.ceil(len(x) / batch_size)

        def __iter__(self) -> Any:
            if batch_size is None:
                yield x, y
                return
            order = torch.randperm(len(x), generator=generator)
            for i in range(0, len(x), batch_size):
                index = order[i : i + batch_size]
                yield x[index], y[index]

    return _Loader()


def _decay(optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: 0.1 ** (epoch / epochs)
    )


class _StepScheduler:
    """``fit`` callback stepping a learning-rate scheduler once per epoch."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def on_epoch_end(self, epoch: int, history: Any, model: nn.Module) -> None:
        self.scheduler.step()


# ---------------------------------------------------------------------------- VI
def build_vi(net: Net, settings: VISettings) -> bnn.VISequential:
    """Bayesian MLP with the given knobs (library defaults elsewhere)."""
    options: dict[str, Any] = {"estimator": settings.estimator}
    if settings.prior_scale is not None:
        options["prior"] = bnn.NormalPrior(0.0, settings.prior_scale)
    if settings.init_scale is not None:
        options["variational"] = bnn.MeanFieldNormal(init_scale=settings.init_scale)
    learned = settings.learned_prior

    def layer(a: int, b: int) -> bnn.VILinear:
        if learned is not None:  # a prior object per layer: its scale is learned
            options["prior"] = bnn.LearnedNormalPrior(per=learned)
        return bnn.VILinear(a, b, **options)

    layers: list[nn.Module] = []
    width = net.in_dim
    for _ in range(net.depth):
        layers += [layer(width, net.width), _activation(net.activation)]
        width = net.width
    layers.append(layer(width, net.out_dim))
    model = bnn.VISequential(*layers)
    if settings.particles is not None:
        model.samples = settings.particles
    return model


def train_vi(
    x: Tensor,
    y: Tensor,
    net: Net,
    budget: Budget,
    kind: Kind,
    settings: VISettings | None = None,
) -> tuple[bnn.VISequential, bnn.PredictiveDistribution]:
    """Train the library's mean-field VI with :func:`pyrolite_bnn.fit`."""
    settings = settings or VISettings()
    model = build_vi(net, settings)
    likelihood: bnn.PredictiveDistribution
    if kind == "classification":
        likelihood = bnn.Categorical()
    elif settings.noise_init is None:
        likelihood = bnn.Normal()
    else:
        likelihood = bnn.Normal(init_scale=settings.noise_init)
    loss_fn = bnn.KullbackLeiblerLoss(likelihood, dataset_size=len(x))
    groups: list[dict[str, Any]] = [
        {"params": list(model.parameters())},
        {"params": list(loss_fn.parameters()), "lr": budget.lr * settings.noise_lr},
    ]
    optimizer = torch.optim.Adam(groups, lr=budget.lr)
    warmup = round(settings.warmup * budget.epochs)
    bnn.fit(
        model,
        loss_fn,
        _batches(x, y, budget.batch_size, torch.Generator().manual_seed(0)),
        epochs=budget.epochs,
        optimizer=optimizer,
        progress=False,
        heat_schedule=bnn.linear_warmup(warmup) if warmup else None,
        callbacks=[_StepScheduler(_decay(optimizer, budget.epochs))],
    )
    model.eval()
    return model, likelihood


def _predictor(
    model: nn.Module, likelihood: bnn.PredictiveDistribution, budget: Budget, kind: Kind
) -> Callable[[Tensor], Any]:
    """Per-particle summaries of ``bnn.predict`` (VI network or Laplace)."""

    def predictor(x_new: Tensor) -> Any:
        with torch.no_grad():
            out = bnn.predict(model, x_new, likelihood, samples=budget.samples).samples
            if kind == "classification":
                return likelihood.class_probs(out)
            mu, var = likelihood.moments(out)
            return mu.reshape(len(out), -1), var.reshape(len(out), -1)

    return predictor


def fit_vi(
    x: Tensor,
    y: Tensor,
    net: Net,
    budget: Budget,
    kind: Kind,
    settings: VISettings | None = None,
) -> Callable[[Tensor], Any]:
    """The library's mean-field VI (:func:`train_vi`), 100 posterior draws."""
    model, likelihood = train_vi(x, y, net, budget, kind, settings)
    return _predictor(model, likelihood, budget, kind)


def _laplace(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    likelihood: bnn.PredictiveDistribution,
) -> bnn.LinearizedLaplace:
    """``bnn.laplace`` on all weights (last layer above the size limit)."""
    plain = bnn.to_deterministic(model) if isinstance(model, bnn.VIModule) else model
    count = sum(p.numel() for p in plain.parameters())
    subset = "all" if count <= DEFAULT_MAX_PARAMETERS else "last_layer"
    return bnn.laplace(model, x, y, likelihood, subset=subset)


def fit_vi_laplace(
    x: Tensor,
    y: Tensor,
    net: Net,
    budget: Budget,
    kind: Kind,
    settings: VISettings | None = None,
) -> Callable[[Tensor], Any]:
    """Library VI (:func:`train_vi`), then ``bnn.laplace`` at its posterior means.

    The prior precision by the Laplace marginal likelihood; the noise scale
    is the one VI learned.
    """
    model, likelihood = train_vi(x, y, net, budget, kind, settings)
    return _laplace_predictor(model, x, y, likelihood, budget, kind)


def fit_map_laplace(
    x: Tensor, y: Tensor, net: Net, budget: Budget, kind: Kind
) -> Callable[[Tensor], Any]:
    """MAP fit, then ``bnn.laplace`` at its weights.

    The plain network is trained like MC dropout's without dropout (MSE or
    cross-entropy, weight decay 1e-4, the same budget); for regression the
    noise scale is the root-mean-square training residual (its maximum
    likelihood value given the fit). The prior precision by the Laplace
    marginal likelihood.
    """
    model = build_plain(net)
    _train_plain(model, _plain_loss(kind), x, y, budget, 1e-4)
    model.eval()
    likelihood: bnn.PredictiveDistribution
    if kind == "classification":
        likelihood = bnn.Categorical()
    else:
        with torch.no_grad():
            residual = float((model(x)[:, 0] - y).square().mean().sqrt())
        likelihood = bnn.Normal(scale=residual)
    return _laplace_predictor(model, x, y, likelihood, budget, kind)


def _laplace_predictor(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    likelihood: bnn.PredictiveDistribution,
    budget: Budget,
    kind: Kind,
) -> Callable[[Tensor], Any]:
    """``bnn.laplace`` at ``model``; the predictor records what it chose."""
    posterior = _laplace(model, x, y, likelihood)
    predictor = _predictor(posterior, likelihood, budget, kind)
    predictor.chosen = {  # type: ignore[attr-defined]
        "prior_precision": float(posterior.prior_precision),
        "subset": posterior.subset,
    }
    return predictor


# ------------------------------------------------------------------ plain networks
def build_plain(
    net: Net, dropout: float = 0.0, out_dim: int | None = None
) -> nn.Module:
    layers: list[nn.Module] = []
    width = net.in_dim
    for _ in range(net.depth):
        layers += [nn.Linear(width, net.width), _activation(net.activation)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = net.width
    layers.append(nn.Linear(width, out_dim or net.out_dim))
    return nn.Sequential(*layers)


def _train_plain(
    model: nn.Module,
    loss: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    budget: Budget,
    weight_decay: float = 0.0,
) -> None:
    optimizer = torch.optim.Adam(
        model.parameters(), lr=budget.lr, weight_decay=weight_decay
    )
    scheduler = _decay(optimizer, budget.epochs)
    batches = _batches(x, y, budget.batch_size, torch.Generator().manual_seed(0))
    model.train()
    for _ in range(budget.epochs):
        for xb, yb in batches:
            optimizer.zero_grad()
            loss(model(xb), yb).backward()
            optimizer.step()
        scheduler.step()


def _validation_split(x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    cut = round(0.8 * len(x))
    train, val = order[:cut], order[cut:]
    return x[train], y[train], x[val], y[val]


#: Noise standard deviations tried for MC dropout's precision ``tau = 1 / s^2``
#: (in the units of the targets; regression sets are standardised).
NOISE_GRID = torch.logspace(-2.5, 0.5, 61)


def fit_mc_dropout(
    x: Tensor, y: Tensor, net: Net, budget: Budget, kind: Kind
) -> Callable[[Tensor], Any]:
    """MC dropout (Gal & Ghahramani 2016).

    A dropout layer after every hidden layer, weight decay 1e-4, trained with
    MSE (regression) or cross-entropy; the rate from ``budget.dropout_rates``
    and, for regression, the noise precision from :data:`NOISE_GRID` maximise
    the validation log-likelihood on a 20 % split; the chosen rate is then
    retrained on all the data.
    """
    x_fit, y_fit, x_val, y_val = _validation_split(x, y)
    best: tuple[float, float, float] = (-math.inf, 0.0, 1.0)  # (ll, rate, noise)
    for rate in budget.dropout_rates:
        model = build_plain(net, rate)
        _train_plain(model, _plain_loss(kind), x_fit, y_fit, budget, 1e-4)
        members = _dropout_members(model, x_val, budget.samples)
        if kind == "classification":
            probs = members.softmax(-1).mean(0)
            ll = float(
                probs[torch.arange(len(y_val)), y_val].clamp_min(1e-12).log().mean()
            )
            noise = 1.0
        else:
            mu = members[..., 0]
            lls = [
                float(mixture_log_likelihood(mu, torch.full_like(mu, s**2), y_val))
                for s in NOISE_GRID.tolist()
            ]
            index = max(range(len(lls)), key=lls.__getitem__)
            ll, noise = lls[index], float(NOISE_GRID[index])
        if ll > best[0]:
            best = (ll, rate, noise)
    _, rate, noise = best
    model = build_plain(net, rate)
    _train_plain(model, _plain_loss(kind), x, y, budget, 1e-4)

    def predictor(x_new: Tensor) -> Any:
        members = _dropout_members(model, x_new, budget.samples)
        if kind == "classification":
            return members.softmax(-1)
        mu = members[..., 0]
        return mu, torch.full_like(mu, noise**2)

    predictor.chosen = {"dropout": rate, "noise": noise}  # type: ignore[attr-defined]
    return predictor


def _plain_loss(kind: Kind) -> Callable[[Tensor, Tensor], Tensor]:
    if kind == "classification":
        return F.cross_entropy
    return lambda out, y: F.mse_loss(out[..., 0], y)


def _dropout_members(model: nn.Module, x: Tensor, samples: int) -> Tensor:
    model.train()  # dropout on
    with torch.no_grad():
        return torch.stack([model(x) for _ in range(samples)])


def fit_ensemble(
    x: Tensor, y: Tensor, net: Net, budget: Budget, kind: Kind
) -> Callable[[Tensor], Any]:
    """Deep ensemble (Lakshminarayanan et al. 2017).

    ``budget.members`` networks from different initialisations; regression
    members output a mean and a variance (softplus) trained with the Gaussian NLL.
    """
    out_dim = 2 if kind == "regression" else net.out_dim
    models = []
    for _ in range(budget.members):
        model = build_plain(net, out_dim=out_dim)
        loss = F.cross_entropy if kind == "classification" else _gaussian_loss
        _train_plain(model, loss, x, y, budget)
        model.eval()
        models.append(model)

    def predictor(x_new: Tensor) -> Any:
        with torch.no_grad():
            outs = torch.stack([model(x_new) for model in models])
        if kind == "classification":
            return outs.softmax(-1)
        return outs[..., 0], F.softplus(outs[..., 1]) + 1e-6

    return predictor


def _gaussian_loss(out: Tensor, y: Tensor) -> Tensor:
    return F.gaussian_nll_loss(out[..., 0], y, F.softplus(out[..., 1]) + 1e-6)


def fit_method(
    method: str,
    x: Tensor,
    y: Tensor,
    net: Net,
    budget: Budget,
    kind: Kind,
    settings: VISettings | None = None,
) -> Callable[[Tensor], Any]:
    """Train ``method`` (one of :data:`METHODS`) and return its predictor."""
    if method == "vi":
        return fit_vi(x, y, net, budget, kind, settings)
    if method == "mc_dropout":
        return fit_mc_dropout(x, y, net, budget, kind)
    if method == "ensemble":
        return fit_ensemble(x, y, net, budget, kind)
    if method == "vi+laplace":
        return fit_vi_laplace(x, y, net, budget, kind, settings)
    if method == "map+laplace":
        return fit_map_laplace(x, y, net, budget, kind)
    raise ValueError(f"unknown method {method!r}")


__all__ = [
    "METHODS",
    "Budget",
    "Net",
    "VISettings",
    "build_vi",
    "fit_method",
    "replace",
]
