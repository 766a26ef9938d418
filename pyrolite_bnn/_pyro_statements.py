"""Pyro statements in a network's forward, called from PyTorch-style code.

On the PyTorch-style path (``loss_fn(model(x), y)``, ``predict``, ``fit``) no
Pyro handler runs: the loss sees the Bayesian layers' weights and nothing
else. A ``pyro.sample`` statement in a ``forward`` would draw from its prior
on every call, never be learned and be left out of the ELBO; a
``pyro.param`` statement would create a parameter in Pyro's global store,
which ``model.parameters()`` (the optimizer's) and ``state_dict`` do not
hold. Both are refused with the remedy (``pyro.deterministic``, which only
records a value, and ``pyro.plate`` are not). Under Pyro inference (``SVI`` on
``loss_fn.pyro_model``, the user's own model) Pyro's semantics apply and
nothing is refused here.
"""

from __future__ import annotations

from typing import Any

from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from pyro.poutine.util import site_is_subsample

from pyrolite_bnn._handlers import PushedUnseen

__all__ = ["pyro_statements_refused"]


_PATHS = "loss_fn(model(x), y), predict, fit, bnn.Trace_ELBO's fast path"


class _PyroStatementRefusal(Messenger):
    """Raises at the first sample or param statement it sees."""

    def _pyro_sample(self, msg: Message[..., Any]) -> None:
        if (msg["infer"] or {}).get("_deterministic") or site_is_subsample(msg):
            return  # a recorded value or a plate: the same with or without Pyro
        if msg["is_observed"]:
            kind, effect = "an observed pyro.sample", "its log-density left out of"
        else:
            kind = "pyro.sample"
            effect = (
                "drawn from its prior on every call, never learned, and left out of"
            )
        raise ValueError(
            f"{kind}({msg['name']!r}) in a network's forward on the PyTorch-style "
            f"path ({_PATHS}): the loss and predict see only the Bayesian layers' "
            f"weights, so the site would be {effect} the ELBO. Put latent "
            "variables and observations in a Pyro model around the network and "
            "train it with SVI (docs/howto.rst, 'Write your own Pyro model around "
            "a network'); for a learned quantity in the forward, use an "
            "nn.Parameter or a Bayesian layer"
        )

    def _pyro_param(self, msg: Message[..., Any]) -> None:
        raise ValueError(
            f"pyro.param({msg['name']!r}) in a network's forward on the "
            f"PyTorch-style path ({_PATHS}): the parameter would live in Pyro's "
            "global parameter store, not in model.parameters() (so a torch "
            "optimizer never trains it) nor in the state_dict. Make it an "
            "nn.Parameter attribute of the module"
        )


def pyro_statements_refused() -> PushedUnseen:
    """Refuse Pyro sample and param statements in the body (see the module).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> with pyro_statements_refused():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        Traceback (most recent call last):
        ...
        ValueError: pyro.sample('z') in a network's forward ...
    """
    return PushedUnseen(_PyroStatementRefusal())
