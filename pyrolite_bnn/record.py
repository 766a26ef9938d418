"""What a PyTorch-style forward pass leaves for the loss: the two Pyro traces.

A call ``out = model(x)`` outside Pyro inference runs the guide under
``poutine.trace`` and the network under ``poutine.replay`` of that trace, exactly
as Pyro's ELBOs do. The :class:`ForwardRecord` keeps both traces; the loss adds
the observation term and takes the KL part from here, with the same
per-site arithmetic as ``Trace_ELBO`` (Monte Carlo) or ``TraceMeanField_ELBO``
(closed form where ``kl_divergence`` is registered).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Literal

import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine import Trace
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor
from torch.distributions import kl_divergence

__all__ = ["ForwardRecord", "KLMode", "last_record", "set_last_record"]

KLMode = Literal["auto", "mc", "analytic"]


class ForwardRecord:
    """Guide and model traces of one forward pass (without the observation).

    Args:
        guide_trace: trace of the guide (weights drawn for all particles).
        model_trace: trace of the network replayed against ``guide_trace``.
        samples: number of particles ``S``.
    """

    def __init__(self, guide_trace: Trace, model_trace: Trace, samples: int) -> None:
        self.guide_trace = prune_subsample_sites(guide_trace)
        self.model_trace = prune_subsample_sites(model_trace)
        self.samples = samples
        self.analytic_sites: list[str] = []
        self.mc_sites: list[str] = []

    def _latent_sites(self) -> list[tuple[str, Any]]:
        return [
            (name, site)
            for name, site in self.model_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
        ]

    def kl(self, mode: KLMode = "auto") -> Tensor:
        """The KL part of the negative ELBO, ``E_q[log q(w) - log p(w)]``.

        Averaged over particles (each site carries the ``1/S`` plate scale).

        Args:
            mode: ``"mc"`` — Monte-Carlo estimate from the drawn weights, as
                ``Trace_ELBO``; ``"analytic"`` — closed form for every site, as
                ``TraceMeanField_ELBO``, raising if one has none; ``"auto"`` —
                closed form where available, Monte Carlo elsewhere.

        Returns:
            A scalar tensor.

        Raises:
            ValueError: if ``mode="analytic"`` and a site has no closed form.
        """
        self.analytic_sites, self.mc_sites = [], []
        total: Tensor | float = 0.0
        latent = self._latent_sites()
        for name, model_site in latent:
            guide_site = self.guide_trace.nodes.get(name)
            if guide_site is None or guide_site["type"] != "sample":
                raise ValueError(
                    f"the guide does not sample the weight site '{name}'; a guide must "
                    "sample every random variable of the network"
                )
            if mode != "mc":
                term = _analytic_kl(guide_site, model_site)
                if term is not None:
                    total = total + term
                    self.analytic_sites.append(name)
                    continue
                if mode == "analytic":
                    raise ValueError(
                        f"kl='analytic' but site '{name}' has no closed-form KL "
                        f"between the guide's {_describe(guide_site)} and the prior "
                        f"{_describe(model_site)}; use kl='auto' (Monte Carlo for such "
                        "sites) or kl='mc'"
                    )
            total = total + _log_prob_sum(guide_site) - _log_prob_sum(model_site)
            self.mc_sites.append(name)
        latent_names = {name for name, _ in latent}
        for name, guide_site in self.guide_trace.nodes.items():
            if guide_site["type"] == "sample" and name not in latent_names:
                if not (guide_site["infer"] or {}).get("is_auxiliary"):
                    raise ValueError(
                        f"the guide samples '{name}', which is not a weight of the "
                        "network; mark auxiliary guide sites with "
                        "infer={'is_auxiliary': True}"
                    )
                if mode == "analytic":
                    raise ValueError(
                        f"kl='analytic' but the guide has the auxiliary site '{name}', "
                        "whose entropy term is Monte Carlo; use kl='auto' or kl='mc'"
                    )
                total = total + _log_prob_sum(guide_site)
        if not isinstance(total, Tensor):
            total = torch.zeros(())
        return total

    def log_probs(self) -> Tensor:
        """Per-particle ``[log p(w_s), log q(w_s)]`` of all weights, ``(S, 2)``."""
        log_p = self._per_particle(site for _, site in self._latent_sites())
        log_q = self._per_particle(
            site for site in self.guide_trace.nodes.values() if site["type"] == "sample"
        )
        return torch.stack([log_p, log_q], dim=-1)

    def _per_particle(self, sites: Any) -> Tensor:
        total: Tensor = torch.zeros(self.samples)
        for site in sites:
            value = site["fn"].log_prob(site["value"])
            total = total.to(value) + value.reshape(-1).expand(self.samples)
        return total


def _log_prob_sum(site: Any) -> Tensor:
    log_prob = site["fn"].log_prob(site["value"])
    return scale_and_mask(log_prob, site["scale"], site["mask"]).sum()  # type: ignore[no-any-return]


def _analytic_kl(
    guide_site: Any, model_site: Any
) -> Tensor | None:
    """Closed-form KL of one site, or ``None`` where only Monte Carlo is possible.

    A ``Delta`` guide site (a point mass, or an autoguide's transformed auxiliary
    draw) has a registered "KL" of ``-log p(value)``: a one-sample Monte-Carlo
    term in disguise, so it does not count as closed form here.
    """
    if not guide_site["fn"].has_rsample or _describe(guide_site) == "Delta":
        return None
    try:
        term = kl_divergence(guide_site["fn"], model_site["fn"])
    except NotImplementedError:
        return None
    scaled = scale_and_mask(term, guide_site["scale"], guide_site["mask"])
    if isinstance(scaled, Tensor):
        return scaled.sum()
    return torch.as_tensor(scaled * guide_site["fn"].batch_shape.numel())


def _describe(site: Any) -> str:
    fn = site["fn"]
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return type(fn).__name__


_LAST: ContextVar[ForwardRecord | None] = ContextVar(
    "pyrolite_last_record", default=None
)


def set_last_record(record: ForwardRecord | None) -> None:
    """Remember the record of the latest PyTorch-style forward pass."""
    _LAST.set(record)


def last_record() -> ForwardRecord | None:
    """The record of the latest PyTorch-style forward pass not yet used by a loss."""
    return _LAST.get()
