"""Bayesian recurrent layers: ``VILSTM`` and ``VIGRU``.

Each weight is drawn once per particle and sequence (not per time step), so the
KL is counted once per weight tensor. Inputs and outputs are batch-first or,
with ``batch_first=False`` (torch's default), sequence-first (particles folded
into the sequence dimension, see :mod:`pyrolite_bnn.layers._sequence`). Hidden
states use torch's layout ``(num_layers * num_directions, rows, H)`` with the
folded batch inside a network, so a converted ``forward`` reading ``h_n[-1]``
gets the folded ``(B * S, H)`` activation; called on its own (the outermost
module) a layer returns them as torch does with the particle dimension in
front, ``(S, num_layers * num_directions, B, H)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from pyrolite_bnn import _particles
from pyrolite_bnn._validation import check_floating_input, check_integer
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.distributions.variational import MeanFieldNormal, VariationalFamily
from pyrolite_bnn.layers._base import options_repr
from pyrolite_bnn.layers._initialisers import FanInUniform
from pyrolite_bnn.layers._options import Estimator, per_variable
from pyrolite_bnn.layers._packed import PackedInput
from pyrolite_bnn.layers._sequence import (
    SequenceFirst,
    check_drawn_estimator,
    note_batch_folded,
    unfold_sequence,
)
from pyrolite_bnn.layers.functional import (
    current_batch_size,
    current_samples,
    describe_input_shape,
)
from pyrolite_bnn.layers.functional_recurrent import (
    GATES,
    RecurrentWeights,
    recurrent,
    recurrent_batch,
)
from pyrolite_bnn.layers.registry import LayerCase, register
from pyrolite_bnn.module import VIModule

__all__ = ["VIGRU", "VILSTM"]


class _VIRNNBase(VIModule):
    """Shared implementation of the Bayesian LSTM and GRU."""

    mode: str
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    dropout: float
    bidirectional: bool
    proj_size: int

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        prior: object = None,
        variational: VariationalFamily | Mapping[str, VariationalFamily] | None = None,
        estimator: Estimator = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(
                "dropout should be a number in range [0, 1] representing the "
                f"probability of an element being zeroed, got {dropout!r}"
            )
        if dropout > 0 and num_layers == 1:
            warn_at_caller(
                "dropout option adds dropout after all but last recurrent layer, so "
                f"non-zero dropout expects num_layers greater than 1, but got "
                f"dropout={dropout} and num_layers={num_layers}",
                UserWarning,
            )
        input_size = check_integer(input_size, "input_size")
        hidden_size = check_integer(hidden_size, "hidden_size")
        num_layers = check_integer(num_layers, "num_layers")
        proj_size = check_integer(proj_size, "proj_size")
        if input_size < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError(
                "input_size, hidden_size and num_layers must be >= 1, got "
                f"{input_size}, {hidden_size}, {num_layers}"
            )
        if proj_size < 0 or (proj_size and proj_size >= hidden_size):
            raise ValueError(
                f"proj_size must be 0 or in [1, hidden_size), got {proj_size}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.estimator = check_drawn_estimator(estimator, variational, name)
        gates = GATES[self.mode] * hidden_size
        out_size = proj_size or hidden_size
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else out_size * self.num_directions
            for suffix in self._suffixes(layer):
                shapes[f"weight_ih{suffix}"] = (gates, layer_in)
                shapes[f"weight_hh{suffix}"] = (gates, out_size)
                if bias:
                    shapes[f"bias_ih{suffix}"] = (gates,)
                    shapes[f"bias_hh{suffix}"] = (gates,)
                if proj_size:
                    shapes[f"weight_hr{suffix}"] = (proj_size, hidden_size)
        names = tuple(shapes)
        self._families: dict[str, VariationalFamily] = {}
        for var, shape in shapes.items():
            family = per_variable(variational, var, "variational", names)
            self._families[var] = MeanFieldNormal() if family is None else family  # type: ignore[assignment]
            self.declare_random_variable(
                var,
                shape,
                per_variable(prior, var, "prior", names),
                self._families[var],
                init=FanInUniform(hidden_size),
                device=device,
                dtype=dtype,
            )
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        """2 for a bidirectional layer, else 1."""
        return 2 if self.bidirectional else 1

    def _suffixes(self, layer: int) -> list[str]:
        return [f"_l{layer}", f"_l{layer}_reverse"][: self.num_directions]

    def reset_parameters(self) -> None:
        """Initialise posterior means like ``torch.nn``: uniform in ``±1/sqrt(H)``.

        Scales return to their initial value, priors to the hyperparameters
        they were built with.
        """
        for posterior in self.posterior.values():
            posterior.reset_parameters(posterior.initial_loc())
        self.reset_priors()

    def _weights(self) -> list[list[RecurrentWeights]]:
        def get(name: str) -> Tensor | None:
            return getattr(self, name) if name in self.posterior else None

        weights = []
        for layer in range(self.num_layers):
            directions = []
            for s in self._suffixes(layer):
                w_ih, w_hh = (
                    getattr(self, f"weight_ih{s}"),
                    getattr(self, f"weight_hh{s}"),
                )
                directions.append(
                    (
                        w_ih,
                        w_hh,
                        get(f"bias_ih{s}"),
                        get(f"bias_hh{s}"),
                        get(f"weight_hr{s}"),
                    )
                )
            weights.append(directions)
        return weights

    def _state_in(
        self, state: Tensor | None, name: str, size: int, batch: int
    ) -> Tensor | None:
        """An initial state in torch's layout ``(layers * D, rows, size)``.

        Or as an outermost call returns a final state, ``(S, layers * D, b,
        size)``: each particle's own, carried to the next call (a language
        model's hidden state from one batch to the next); it is folded here
        (row ``i * S + s``) only if its batch is ``batch``, the examples of
        this layer's input (folded first, a state of ``b / S`` examples would
        pass as torch's shared layout). That is the recurrence's own batch, as
        ``torch.nn`` checks it: a network that moves positions into the batch
        (``(B, T, L, F)`` to ``(B * T, L, F)``) gives ``B * T`` sequences, not
        the outermost call's ``B``. Returned batch-first, as the functional op
        takes it.
        """
        if state is None:
            return state
        check_floating_input(state, type(self).__name__, name)
        states = self.num_layers * self.num_directions
        samples = current_samples()
        if (
            state.dim() == 4
            and state.shape[0] == samples
            and state.shape[1] == states
            and state.shape[3] == size
            and state.shape[2] == batch
        ):
            folded = state.shape[2] * samples
            state = state.permute(1, 2, 0, 3).reshape(states, folded, size)
        elif (
            state.dim() != 3
            or state.shape[0] != states
            or state.shape[2] != size
            or state.shape[1] not in (batch, batch * samples)
        ):
            raise ValueError(self._state_error(state, name, size, batch, samples))
        return state.transpose(0, 1)

    def _state_error(
        self, state: Tensor, name: str, size: int, batch: int, samples: int
    ) -> str:
        """What ``_state_in`` expected of ``state`` (the user's), and what is off."""
        states = self.num_layers * self.num_directions
        rows = f"{batch} or {batch} * {samples} = {batch * samples}"
        message = (
            f"{type(self).__name__}: {name} must be in torch's "
            f"layout (num_layers * num_directions, batch, {size}) = ({states}, "
            f"{rows}, {size}), or a final state as a call returned it, "
            f"(samples, num_layers * num_directions, batch, {size}) = "
            f"({samples}, {states}, {batch}, {size}); "
            f"got {tuple(state.shape)}"
        )
        shape = tuple(state.shape)
        if len(shape) == 4 and shape[1] == states and shape[3] == size:
            if shape[0] != samples:
                return (
                    f"{message}: a final state of {shape[0]} particles, and this "
                    f"call draws {samples} (call with samples={shape[0]} to "
                    "continue it)"
                )
            message += (
                f": a final state of a batch of {shape[2]}, and this call's "
                f"batch is {batch}"
            )
            if shape[2] > batch:
                message += (
                    " (a loader's last, smaller batch? slice the state to the "
                    f"call's batch, {name}[:, :, :{batch}], or give the DataLoader "
                    "drop_last=True)"
                )
            return message
        if len(shape) == 3 and shape[0] == states and shape[2] == size:
            return (
                f"{message}: {shape[1]} rows, and this call's batch is {batch} "
                f"({batch * samples} rows folded with its {samples} particles)"
            )
        return message

    def _recur(
        self, input: Tensor, hx: Tensor | None, cx: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Output and final states (in torch's layout, folded batch)."""
        name = type(self).__name__
        if isinstance(input, PackedSequence):
            state = _particles.current()
            if not self.batch_first and state is not None and state.root is not self:
                raise ValueError(
                    f"{name}(batch_first=False) takes packed sequences as the "
                    "outermost module only: inside a network its output packs the "
                    "B * S folded sequences, and pad_packed_sequence gives them as "
                    "(L, B * S, ...), which is not the sequence-first fold (L * S, "
                    "B, ...) of the layers after it; build the network with "
                    "batch_first=True layers (then pad_packed_sequence(out, "
                    "batch_first=True) is the folded (B * S, L, ...) activation)"
                )
            check_floating_input(input.data, name, "PackedSequence input")
            packed = PackedInput(input, name, self.input_size)
            with packed.body():
                output, h_n, c_n = self._batch_first(
                    packed.padded, hx, cx, packed.lengths
                )
            return packed.pack(output), h_n, c_n
        check_floating_input(input, name)
        if input.dim() == 3 and input.shape[1 if self.batch_first else 0] == 0:
            raise ValueError(
                f"{name} expected a sequence length larger than 0 (as torch's "
                f"{self.mode} does), got input of shape "
                f"{describe_input_shape(input)} (batch_first={self.batch_first})"
            )
        if input.dim() != 3 or input.shape[-1] != self.input_size:
            layout = (
                "batch-first input of shape (batch, sequence, "
                if self.batch_first
                else "sequence-first input of shape (sequence, batch, "
            )
            samples = current_samples()
            if input.dim() < 3:
                hint = (
                    " (unbatched inputs are not supported: add a batch dimension "
                    "of size 1)"
                )
            elif input.shape[-1] == self.input_size * samples > self.input_size:
                hint = (
                    f" ({samples} particles x {self.input_size} features: a view or "
                    "reshape by a size that is not the folded activation's own (a "
                    "sequence length read from the input, len(sentence)) moved the "
                    "particles into the features; reshape by the activation's own "
                    "leading size, x.shape[0])"
                )
            else:
                hint = ""
            raise ValueError(
                f"{name}(input_size={self.input_size}, batch_first="
                f"{self.batch_first}) expected {layout}"
                f"{self.input_size}), got {tuple(input.shape)}{hint}"
            )
        if self.batch_first:
            return self._batch_first(input, hx, cx)
        seq = SequenceFirst(self, input.shape[1])
        x = seq.batch_first(input, "input")
        with seq.body():
            output, h_n, c_n = self._batch_first(x, hx, cx)
        return seq.sequence_first(output), h_n, c_n

    def _batch_first(
        self,
        input: Tensor,
        hx: Tensor | None,
        cx: Tensor | None,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The recurrence on the batch-first fold; states in torch's layout."""
        weights = self._weights()
        batch_size = current_batch_size()
        if hx is not None or cx is not None:
            batch = recurrent_batch(input, weights, batch_size)
            hx = self._state_in(hx, "h0", self.proj_size or self.hidden_size, batch)
            cx = self._state_in(cx, "c0", self.hidden_size, batch)
        output, h_n, c_n = recurrent(
            self.mode,
            input,
            weights,
            hx,
            cx,
            self.dropout,
            self.training,
            batch_size,
            lengths,
        )
        h_n = h_n.transpose(0, 1).contiguous()
        c_n = None if c_n is None else c_n.transpose(0, 1).contiguous()
        note_batch_folded(h_n, 1)
        note_batch_folded(c_n, 1)
        return output, h_n, c_n

    def unfold_output(self, output: Any, state: _particles.ParticleState) -> Any:
        """As the outermost module: each particle's output and states are torch's.

        ``output`` ``(S, B, L, D * H_out)`` (``batch_first=True``) or
        ``(S, L, B, D * H_out)``; states ``(S, num_layers * D, B, H)``.
        """
        out, hidden = output
        samples = state.samples
        if isinstance(hidden, tuple):
            hidden = tuple(_particles.unfold_at(h, samples, 1) for h in hidden)
        else:
            hidden = _particles.unfold_at(hidden, samples, 1)
        if self.batch_first or isinstance(out, PackedSequence):
            return super().unfold_output(out, state), hidden
        return unfold_sequence(out, samples), hidden

    def flatten_parameters(self) -> None:
        """Do nothing: there is no cuDNN weight buffer to compact.

        Kept so that code written for ``torch.nn.LSTM``/``GRU`` (a ``forward``
        that calls ``self.rnn.flatten_parameters()``) runs unchanged; torch's
        method is a no-op off cuDNN too.
        """

    def extra_repr(self) -> str:
        """Constructor arguments (non-defaults only, as ``torch.nn``)."""
        text = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            text += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if not self.bias:
            text += ", bias=False"
        if self.batch_first:
            text += ", batch_first=True"
        if self.dropout:
            text += f", dropout={self.dropout}"
        if self.bidirectional:
            text += ", bidirectional=True"
        options = options_repr(self, self._families, self.estimator)
        return f"{text}, {options}" if options else text


@register(
    nn.LSTM,
    cases=(
        LayerCase((3, 5), (6, 4, 3), {"bidirectional": True}),
        LayerCase((3, 5, 2, False, True), (4, 6, 3)),
    ),
)
class VILSTM(_VIRNNBase):
    """Bayesian counterpart of :class:`torch.nn.LSTM`.

    Every weight (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
    ``bias_hh_l0``, ``weight_hr_l0`` with ``proj_size``, ``..._reverse`` for the
    backward direction; site names as ``torch.nn.LSTM``'s parameter names) is a
    random variable, drawn once per particle and used at every time step. At
    fixed weights each particle computes exactly what ``torch.nn.LSTM`` does.

    Layouts, with particles folded into the leading dimension of every
    activation:

    - ``batch_first=True``: input ``(B, L, H_in)``, folded ``(B * S, L, ...)``
      inside a network. ``batch_first=False`` (torch's default): input
      ``(L, B, H_in)``, folded into the sequence dimension ``(L * S, B, ...)``
      (row ``l * S + s``) inside a network; the layer runs the batch-first
      fold and permutes back (see :mod:`pyrolite_bnn.layers._sequence`).
    - Hidden and cell states (``h0``, ``c0`` given; ``h_n``, ``c_n``
      returned) are in torch's layout, ``(num_layers * num_directions, B,
      H)`` for either ``batch_first``. Inside a network the batch is folded,
      ``(num_layers * num_directions, B * S, H)`` (column ``b * S + s``), so
      ``h_n[-1]`` is the folded ``(B * S, H)`` activation as in torch;
      initial states are shared ``(..., B, H)`` or folded ``(..., B * S,
      H)``. Called on its own (the outermost module) the layer returns
      torch's states with the particle dimension in front,
      ``(S, num_layers * num_directions, B, H)``.

    A :class:`~torch.nn.utils.rnn.PackedSequence` input (sequences of
    different lengths, either ``batch_first``) is read up to each sequence's
    length, the reverse direction from its last element, as torch does; the
    output is packed. As the outermost module its ``data`` has the particle
    dimension in front, ``(S, N, D * H_out)`` (``PackedSequence(out.data[s],
    out.batch_sizes, out.sorted_indices, out.unsorted_indices)`` is particle
    ``s``'s), and the states are ``(S, num_layers * D, B, H)``; inside a
    network the output packs the ``B * S`` folded sequences, so
    ``pad_packed_sequence(out, batch_first=True)`` gives the folded ``(B * S,
    L, ...)`` and a following recurrent layer takes it as it is (also for
    :class:`VIGRU`). Unbatched ``(L, H_in)`` inputs raise a
    ``ValueError``.

    Args:
        input_size: features of the input ``x_t``.
        hidden_size: features of the hidden state ``h_t``.
        num_layers: stacked recurrent layers.
        bias: if ``False``, no ``bias_ih``/``bias_hh``.
        batch_first: ``(batch, sequence, feature)`` tensors if ``True``, else
            ``(sequence, batch, feature)`` (torch's default).
        dropout: dropout on the outputs of every layer but the last (training).
        bidirectional: run a second, backward layer and concatenate outputs.
        proj_size: if ``> 0``, project ``h_t`` to this size (``weight_hr``).
        prior: prior of the weights (see :class:`~pyrolite_bnn.VILinear`); a
            mapping is keyed by variable name (``{"weight_hh_l0": ...}``).
        variational: variational family (or mapping per variable).
        estimator: ``"auto"`` (default) or ``"reparam"``: weights are drawn.
            ``"local"`` and ``"flipout"`` raise a ``ValueError``: a weight
            shared across time steps makes per-output sampling inexact.
        device: device of parameters and prior buffers.
        dtype: dtype of parameters and prior buffers.

    Shape:
        - Input: ``(B, L, input_size)`` (``(L, B, input_size)`` with
          ``batch_first=False``); optional ``(h0, c0)``
          ``(num_layers * D, B, H_out)`` and
          ``(num_layers * D, B, hidden_size)`` (``B * S`` columns if folded).
        - Output: ``(output, (h_n, c_n))``; as the outermost module ``output``
          is ``(S, B, L, D * H_out)`` (``(S, L, B, D * H_out)`` with
          ``batch_first=False``), ``h_n`` ``(S, num_layers * D, B, H_out)`` and
          ``c_n`` ``(S, num_layers * D, B, hidden_size)``; inside a network
          ``output`` is folded (``(B * S, L, D * H_out)`` or
          ``(L * S, B, D * H_out)``), ``h_n`` ``(num_layers * D, B * S, H_out)``
          and ``c_n`` ``(num_layers * D, B * S, hidden_size)`` (``D`` = 2 if
          bidirectional, ``H_out`` = ``proj_size`` or ``hidden_size``).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> lstm = bnn.VILSTM(3, 8, num_layers=2, batch_first=True)
        >>> lstm
        VILSTM(3, 8, num_layers=2, batch_first=True)
        >>> out, (h_n, c_n) = lstm(torch.randn(4, 5, 3), samples=2)
        >>> out.shape, h_n.shape, c_n.shape
        (torch.Size([2, 4, 5, 8]), torch.Size([2, 2, 4, 8]), torch.Size([2, 2, 4, 8]))
        >>> seq_first = bnn.VILSTM(3, 8)  # torch's default: (L, B, H_in)
        >>> out, (h_n, c_n) = seq_first(torch.randn(5, 4, 3), samples=2)
        >>> out.shape, h_n.shape
        (torch.Size([2, 5, 4, 8]), torch.Size([2, 1, 4, 8]))
        >>> from torch.nn.utils.rnn import pack_padded_sequence
        >>> packed = pack_padded_sequence(
        ...     torch.randn(4, 5, 3), torch.tensor([5, 2, 4, 1]), batch_first=True,
        ...     enforce_sorted=False)
        >>> out, (h_n, c_n) = lstm(packed, samples=2)  # lengths 5, 2, 4, 1
        >>> type(out).__name__, out.data.shape, h_n.shape
        ('PackedSequence', torch.Size([2, 12, 8]), torch.Size([2, 2, 4, 8]))
        >>> class Classifier(bnn.VIModule):  # inside a network: torch's layout
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lstm, self.head = lstm, bnn.VILinear(8, 3)
        ...     def forward(self, x):
        ...         _, (h_n, c_n) = self.lstm(x)
        ...         print(tuple(h_n.shape))
        ...         return self.head(h_n[-1])
        >>> Classifier()(torch.randn(4, 5, 3), samples=2).shape
        (2, 8, 8)
        torch.Size([2, 4, 3])
    """

    mode = "LSTM"

    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Run the LSTM over the sequence for every particle."""
        if hx is not None and not (
            isinstance(hx, tuple | list)
            and len(hx) == 2
            and all(isinstance(h, Tensor) for h in hx)
        ):
            raise TypeError(
                "VILSTM takes the initial state as a tuple (h0, c0) of tensors, as "
                f"torch.nn.LSTM does; got {type(hx).__name__}"
            )
        h0, c0 = (None, None) if hx is None else hx
        output, h_n, c_n = self._recur(input, h0, c0)
        assert c_n is not None
        return output, (h_n, c_n)


@register(
    nn.GRU,
    cases=(
        LayerCase((3, 5), (6, 4, 3), {"num_layers": 2}),
        LayerCase((3, 5), (4, 6, 3), {"batch_first": True, "bidirectional": True}),
    ),
)
class VIGRU(_VIRNNBase):
    """Bayesian counterpart of :class:`torch.nn.GRU`.

    Same conventions as :class:`VILSTM` (either layout, hidden states in
    torch's layout, weights drawn once per particle and sequence), without
    ``proj_size`` and cell state.

    Args:
        input_size: features of the input ``x_t``.
        hidden_size: features of the hidden state ``h_t``.
        num_layers: stacked recurrent layers.
        bias: if ``False``, no ``bias_ih``/``bias_hh``.
        batch_first: ``(batch, sequence, feature)`` tensors if ``True``, else
            ``(sequence, batch, feature)`` (torch's default).
        dropout: dropout on the outputs of every layer but the last (training).
        bidirectional: run a second, backward layer and concatenate outputs.
        prior: prior of the weights (see :class:`VILSTM`).
        variational: variational family (or mapping per variable).
        estimator: ``"auto"`` (default) or ``"reparam"`` (see :class:`VILSTM`).
        device: device of parameters and prior buffers.
        dtype: dtype of parameters and prior buffers.

    Shape:
        - Input: ``(B, L, input_size)`` (``(L, B, input_size)`` with
          ``batch_first=False``) or a ``PackedSequence`` (see
          :class:`VILSTM`); optional ``h0``
          ``(num_layers * D, B or B * S, hidden_size)``.
        - Output: ``(output, h_n)``: as the outermost module
          ``(S, B, L, D * hidden_size)`` (``(S, L, B, D * hidden_size)`` with
          ``batch_first=False``) and ``(S, num_layers * D, B, hidden_size)``;
          inside a network folded, ``h_n`` ``(num_layers * D, B * S,
          hidden_size)``.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> gru = bnn.VIGRU(3, 8, bidirectional=True, batch_first=True)
        >>> out, h_n = gru(torch.randn(4, 5, 3), samples=2)
        >>> out.shape, h_n.shape
        (torch.Size([2, 4, 5, 16]), torch.Size([2, 2, 4, 8]))
    """

    mode = "GRU"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        prior: object = None,
        variational: VariationalFamily | Mapping[str, VariationalFamily] | None = None,
        estimator: Estimator = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            prior=prior,
            variational=variational,
            estimator=estimator,
            device=device,
            dtype=dtype,
        )

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run the GRU over the sequence for every particle."""
        if hx is not None and not isinstance(hx, Tensor):
            raise TypeError(
                "VIGRU takes the initial state h0 as one tensor, as torch.nn.GRU "
                f"does; got {type(hx).__name__}"
            )
        output, h_n, _ = self._recur(input, hx, None)
        return output, h_n
