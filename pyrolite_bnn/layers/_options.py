"""Keyword-only Bayesian options shared by all layers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

from torch import Tensor

from pyrolite_bnn import _particles
from pyrolite_bnn._draws import RepeatedMomentsRead, mark_called_repeatedly
from pyrolite_bnn.distributions.variational import (
    MeanFieldNormal,
)
from pyrolite_bnn.module import VIModule

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "EstimatorLayer",
    "check_estimator",
    "per_variable",
]

# The layers' ``estimator=`` values (the sequence layers, embeddings and
# transposed convolutions take "auto" and "reparam" only).
Estimator = Literal["auto", "reparam", "local", "flipout"]
ESTIMATORS: tuple[Estimator, ...] = get_args(Estimator)


def per_variable(
    option: object, name: str, what: str, names: tuple[str, ...]
) -> object:
    """Pick the option of variable ``name`` from a single value or a mapping.

    A mapping need not name every variable: ``None`` (the option's default,
    e.g. the prior ``N(0, 1)``) for one it leaves out, as the layers
    document (:class:`~pyrolite_bnn.VILinear`'s ``prior``).

    Raises:
        ValueError: for a name the layer does not declare (a typo such as
            ``"weights"``), listing the names it declares.
    """
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

        Which call: outside any call, this layer's own call on ``input`` (the
        layer as the network, ``input`` the call's input); during a call (from
        a forward pre-hook of the layer, or a ``forward`` around it), the
        layer's part of the running call, on ``input`` as it gets it there.
        The two differ for a layer inside a network in whether the call's
        inputs are differentiated (below): that is read from the outermost
        call's inputs, so an activation computed from trainable weights
        (requiring gradients) reads as differentiated when asked outside,
        while the network's call on an input that requires none runs
        ``"local"`` at that layer. To ask what a layer runs inside a network,
        ask from a forward pre-hook during the network's call (example).

        With the generated guide: ``"reparam"`` unless :meth:`uses_moments`;
        else ``"local"`` where every example has a single output position
        (``(B, in)`` inputs of a linear layer) and ``"flipout"`` elsewhere for
        ``estimator="auto"``, or the estimator asked for. ``"auto"`` runs
        ``"flipout"`` for single positions too in a call whose inputs are
        differentiated (they require gradients, or carry forward-mode
        tangents: ``torch.func.jvp``, ``jacfwd``, dual tensors): local
        reparameterisation draws each output afresh, so its
        derivatives with respect to the input are not those of any weight draw
        (a gradient penalty came out 5x too small), while flipout's are those
        of the example's weights. Inside Pyro inference,
        with an assigned guide, in :func:`~pyrolite_bnn.predict`, in a
        sequence-first network, in a network whose batch norm takes batch
        statistics, for a layer called twice in one forward pass and, under
        ``"auto"``, for a layer whose input rows are not the call's examples
        one row each (views concatenated along the batch), weights are drawn
        whatever this says.

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

        Example:
            >>> import torch
            >>> from torch import nn
            >>> import pyrolite_bnn as bnn
            >>> net = bnn.VISequential(nn.Linear(3, 8), nn.Tanh(), bnn.VILinear(8, 1))
            >>> x = torch.randn(5, 3)
            >>> hidden = net[1](net[0](x))  # requires gradients: nn.Linear's
            >>> net[2].estimator_for(hidden)  # net[2] called on hidden itself
            'flipout'
            >>> picked = []
            >>> hook = net[2].register_forward_pre_hook(
            ...     lambda layer, args: picked.append(layer.estimator_for(args[0]))
            ... )
            >>> _ = net(x)  # x requires no gradients
            >>> hook.remove()
            >>> picked  # what net(x) runs at net[2]
            ['local']
        """
        if not self.samples_from_moments():
            return "reparam"
        return self._moment_estimator(input)

    def _moment_estimator(self, input: Tensor) -> str:
        """``"local"`` or ``"flipout"`` for ``input`` (the weight moments given)."""
        if self.estimator == "flipout":
            return "flipout"
        positions = self.output_positions(input)
        if positions <= 1 and not (
            self.estimator == "auto" and _particles.differentiates_inputs(input)
        ):
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

    def _draw_unless_one_row_per_example(self, input: Tensor) -> None:
        """Have the weights drawn where ``input``'s rows are not the examples.

        A layer whose ``"auto"`` takes the weight moments (``VILinear``; a
        convolution's draws its weights) calls it when it gets them, in a
        PyTorch-style call. Output moments give every row of the input its own
        noise, which is the model only where every row is one example of the
        call (``B`` shared rows or ``B * S`` folded ones,
        :func:`~pyrolite_bnn._particles.one_row_per_example`). Two views of an
        example concatenated along the batch (a siamese ``enc(torch.cat([x1,
        x2]))``, or folded activations concatenated) would see independent
        weights, and a result that combines them (``a - b``) would be another
        model's. Under ``estimator="auto"`` the layer then draws its weights
        from now on, as a layer called twice does: the pass runs again
        (:class:`~pyrolite_bnn._draws.RepeatedMomentsRead`). An explicit
        ``"local"``/``"flipout"`` is left as asked.

        Raises:
            RepeatedMomentsRead: under ``estimator="auto"`` for such rows.
        """
        if self.estimator != "auto":
            return
        state = _particles.current()
        batch = None if state is None else state.batch_size
        samples = 1 if state is None else state.samples
        if _particles.one_row_per_example(state, input, samples, batch):
            return
        mark_called_repeatedly(self)
        raise RepeatedMomentsRead(
            self,
            reason=(
                f"{type(self).__name__} got {input.shape[0]} input rows, not the "
                f"call's {batch} examples one row each ({batch} shared or {batch} "
                f"* {samples} folded rows): rows of one example (two views "
                "concatenated along the batch, torch.cat([x1, x2])) or combined "
                "with each other would get independent weights from outputs "
                "sampled from the weight moments"
            ),
        )
