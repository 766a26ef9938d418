"""Keyword-only Bayesian options shared by all layers."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from pyrolite_bnn.distributions.variational import (
    MeanFieldNormal,
)
from pyrolite_bnn.module import VIModule

__all__ = ["ESTIMATORS", "EstimatorLayer", "check_estimator", "per_variable"]

ESTIMATORS = ("auto", "reparam", "local", "flipout")


def per_variable(
    option: object, name: str, what: str, names: tuple[str, ...]
) -> object:
    """Pick the option of variable ``name`` from a single value or a mapping."""
    if isinstance(option, Mapping):
        unknown = set(option) - set(names)
        if unknown:
            raise ValueError(
                f"{what} given for unknown variable(s) {sorted(unknown)}; this layer "
                f"declares {list(names)}"
            )
        return option.get(name)
    return option


def check_estimator(estimator: str, variational: object) -> str:
    """Validate the ``estimator=`` option against the variational families."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator in ("local", "flipout"):
        families = (
            list(variational.values())
            if isinstance(variational, Mapping)
            else [variational]
        )
        if any(f is not None and not isinstance(f, MeanFieldNormal) for f in families):
            raise ValueError(
                f"estimator={estimator!r} needs the mean-field Normal posterior; use "
                "estimator='reparam' (or 'auto') with other variational families"
            )
    return estimator


class EstimatorLayer(VIModule):
    """Base of the layers with an ``estimator=`` option (linear, convolutions).

    Before a PyTorch-style call the network asks :meth:`uses_moments` whether the
    layer takes the posterior means and standard deviations of its weights
    instead of weight draws; given them, the layer picks per call, from the
    input it gets, the estimator that is exact for it (:meth:`estimator_for`).

    The output positions of one example (the tokens of a sequence, the pixels
    of a convolution) share the example's weights. Local reparameterisation
    draws every output independently, which is the exact joint law only when an
    example has one output position; flipout perturbs the weights themselves,
    with random signs per example and particle that all the example's positions
    share, so every position sees the same weight draw: exact for any input.
    """

    estimator: str

    def output_positions(self, input: Tensor) -> int:
        """Outputs per example and channel that share the weights, for ``input``."""
        raise NotImplementedError

    def estimator_for(self, input: Tensor) -> str:
        """The estimator this layer runs on ``input`` in a PyTorch-style call.

        With the generated guide: ``"reparam"`` unless :meth:`uses_moments`;
        else ``"local"`` where every example has a single output position
        (``(B, in)`` inputs of a linear layer) and ``"flipout"`` elsewhere for
        ``estimator="auto"``, or the estimator asked for. Inside Pyro inference,
        with an assigned guide, in :func:`~pyrolite_bnn.predict`, in a
        sequence-first network, in a network whose batch norm takes batch
        statistics and for a layer called twice in one forward pass, weights
        are drawn whatever this says.

        Args:
            input: the layer's input, ``(B, *, in)`` for a linear layer,
                ``(B, C, *spatial)`` for a convolution (folded or not).

        Returns:
            ``"reparam"``, ``"local"`` or ``"flipout"``.

        Raises:
            ValueError: for ``estimator="local"`` when an example has several
                output positions: they would get independent draws although
                they share the weights, a different model with a different
                expected loss.
        """
        if not self.uses_moments():
            return "reparam"
        return self._moment_estimator(input)

    def _moment_estimator(self, input: Tensor) -> str:
        """``"local"`` or ``"flipout"`` for ``input`` (the weight moments given)."""
        if self.estimator == "flipout":
            return "flipout"
        positions = self.output_positions(input)
        if positions <= 1:
            return "local"
        if self.estimator == "local":
            raise ValueError(
                "estimator='local' draws each output independently, but the "
                f"{positions} output positions of each example of "
                f"{type(self).__name__} (input {tuple(input.shape)}) share the "
                "example's weights, so their joint distribution would be wrong. "
                "Use estimator='auto' or 'flipout' (exact, one weight "
                "perturbation per example), or 'reparam'"
            )
        return "flipout"
