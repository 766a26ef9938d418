"""Options, checks and layouts shared by the sequence layers (RNNs, attention).

These layers share each weight across positions or time steps, so estimators
that sample each output independently (``"local"``, ``"flipout"``) are not
exact for them: they always draw weights.

Sequence-first layouts (``batch_first=False``, torch's default). Layers that
act on the last dimension (linear layers, layer norms, dropout, activations) do
not care which dimension is the batch, so in a sequence-first network the
particles fold into dimension 0 = the sequence: a folded activation is
``(L * S, B, ...)`` with row ``l * S + s``, a shared one ``(L, B, ...)``, and
the outermost call unfolds it to ``(S, L, B, ...)``, torch's layout with the
particle dimension in front. A sequence layer with ``batch_first=False``
(:class:`SequenceFirst`) views such an input as ``(L, S, B, ...)``, permutes it
to the batch-first fold ``(B * S, L, ...)`` (row ``b * S + s``) it implements,
runs, and permutes its outputs back. Inside it (its sublayers: a Transformer's
attention blocks) everything is batch-first, with the particle state's batch
size set to the true batch ``B``, so sequences of different lengths (``src``
and ``tgt``, queries and keys) meet without ambiguity.

Whether an input is shared or folded is told by its leading size. For the
outermost module every input is shared. Inside a network the leading size must
be the network input's leading size ``L`` (shared) or ``L * S`` (folded): a
sequence of another length (a target sequence, keys of another length) cannot
be told apart and raises a ``ValueError`` naming ``batch_first=True``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor

from pyrolite_bnn import _particles
from pyrolite_bnn._context_values import set_while
from pyrolite_bnn.layers._options import check_estimator
from pyrolite_bnn.module import VIModule

__all__ = [
    "SequenceFirst",
    "check_drawn_estimator",
    "check_option_keys",
    "in_batch_first_body",
    "note_batch_folded",
    "own_option",
    "sub_option",
    "unfold_sequence",
]

# True while a batch_first=False layer runs its batch-first body: its
# sequence sublayers then take and return batch-first tensors as they are.
_BATCH_FIRST_BODY: ContextVar[bool] = ContextVar(
    "pyrolite_batch_first_body", default=False
)


def in_batch_first_body() -> bool:
    """Whether a ``batch_first=False`` layer above is running its batch-first body."""
    return _BATCH_FIRST_BODY.get()


class SequenceFirst:
    """One call of a ``batch_first=False`` layer, run in the batch-first fold.

    Args:
        layer: the calling layer (the outermost module takes shared inputs).
        batch: the true batch size ``B`` (dimension 1 of the inputs).
    """

    def __init__(self, layer: VIModule, batch: int) -> None:
        self.state = _particles.current()
        self.samples = 1 if self.state is None else self.state.samples
        self.root = self.state is None or self.state.root is layer
        self.batch = batch
        self.name = type(layer).__name__
        if self.state is not None and not self.root:
            self.state.sequence_batches.add(batch)
        elif self.state is not None:  # the loss reads B in dimension 2
            self.state.root_sequence_batches.add(batch)

    def _shared(self, tensor: Tensor, what: str, length: int | None) -> bool:
        """Whether a sequence-first tensor is shared by all particles.

        ``length``: the tensor's known unfolded length (an intermediate the
        layer computed); ``None`` for an input of the call.
        """
        rows = tensor.shape[0]
        if self.samples == 1 or (self.root and length is None):
            return True
        assert self.state is not None
        if length is None and any(tensor is given for given in self.state.inputs):
            return True  # an input of the outermost call
        if length is not None and rows in (length, length * self.samples):
            return rows == length
        length = self.state.batch_size
        layout = _particles.row_layout(self.state, tensor, self.samples, length)
        if layout is not None:  # also the lengths of the network's other inputs
            return layout
        raise ValueError(
            f"{self.name}(batch_first=False): {what} has {rows} positions, but "
            f"inside a sequence-first network the particles are folded into the "
            f"sequence dimension, so every sequence must have the network "
            f"input's length {length} (shared) or {length} * {self.samples} "
            f"(folded); sequences of other lengths cannot be told apart. Use "
            "batch_first=True (batch, sequence, feature) layers and inputs, or "
            "call this layer as the outermost module."
        )

    def length(self, tensor: Tensor, what: str) -> int:
        """The unfolded sequence length of a sequence-first input."""
        rows = tensor.shape[0]
        return rows if self._shared(tensor, what, None) else rows // self.samples

    def batch_first(
        self, tensor: Tensor, what: str, length: int | None = None
    ) -> Tensor:
        """``(L, B, ...)`` shared or ``(L * S, B, ...)`` folded, batch-first.

        ``length``: the unfolded length of an intermediate tensor (see
        :meth:`_shared`).
        """
        if tensor.dim() != 3 or tensor.shape[1] != self.batch:
            raise ValueError(
                f"{self.name}(batch_first=False) expected sequence-first {what} "
                f"(sequence, batch={self.batch}, ...), got {tuple(tensor.shape)}"
            )
        if self._shared(tensor, what, length):
            return tensor.transpose(0, 1)
        length = tensor.shape[0] // self.samples
        rest = tensor.shape[2:]
        folded = tensor.reshape(length, self.samples, self.batch, *rest)
        return folded.transpose(0, 2).reshape(self.batch * self.samples, length, *rest)

    def sequence_first(self, tensor: Tensor) -> Tensor:
        """A batch-first output ``(B * S or B, L, ...)`` in the sequence-first fold."""
        # An empty batch (B = 0) takes the folded layout: both hold no values,
        # and only the fold gives the caller the sequence length L * S.
        if (tensor.shape[0] == self.batch and self.batch) or self.samples == 1:
            return tensor.transpose(0, 1)
        length, rest = tensor.shape[1], tensor.shape[2:]
        folded = tensor.reshape(self.batch, self.samples, length, *rest)
        return folded.transpose(0, 2).reshape(length * self.samples, self.batch, *rest)

    @contextmanager
    def body(self) -> Iterator[None]:
        """Run the batch-first body: the particle state's batch size is ``B``."""
        with (
            set_while(_BATCH_FIRST_BODY, True),
            _particles.batch_of(self.batch, self.samples),
        ):
            yield


def unfold_sequence(tensor: Tensor, samples: int) -> Tensor:
    """The outermost call's ``(L * S, B, ...)`` output as ``(S, L, B, ...)``."""
    length = tensor.shape[0] // samples
    unfolded = tensor.reshape(length, samples, *tensor.shape[1:])
    return unfolded.transpose(0, 1).contiguous()


def note_batch_folded(tensor: Tensor | None, dim: int) -> None:
    """Record a layer output folded ``B * S`` at ``dim`` for the outermost unfold.

    A module that returns it as it is (a wrapper around the layer) then gets
    it unfolded at ``dim``; outside a network it is a no-op.
    """
    state = _particles.current()
    if state is not None and tensor is not None:
        state.note_batch_folded(tensor, dim)


def check_drawn_estimator(estimator: str, variational: object, layer: str) -> str:
    """Accept ``"auto"``/``"reparam"``; refuse output-noise estimators clearly."""
    if estimator in ("local", "flipout"):
        raise ValueError(
            f"{layer} supports estimator='auto' or 'reparam' only, got "
            f"{estimator!r}: its weights are shared across positions/time steps, so "
            "sampling each output independently (local reparameterisation, flipout) "
            "would not be the network's distribution"
        )
    return check_estimator(estimator, variational)


def own_option(option: object) -> object:
    """A layer's own options: a mapping narrowed to the keys without a dot."""
    if isinstance(option, Mapping):
        return {k: v for k, v in option.items() if "." not in k}
    return option


def sub_option(option: object, child: str) -> object:
    """Options of the child ``child``: ``{"child.x": v}`` becomes ``{"x": v}``."""
    if isinstance(option, Mapping):
        prefix = child + "."
        return {k[len(prefix) :]: v for k, v in option.items() if k.startswith(prefix)}
    return option


def check_option_keys(option: object, what: str, layer: VIModule) -> None:
    """Every key of a per-variable mapping must name a random variable of ``layer``."""
    if not isinstance(option, Mapping):
        return
    sites = [v.site for v in layer.random_variables()]
    unknown = set(option) - set(sites)
    if unknown:
        raise ValueError(
            f"{what} given for unknown variable(s) {sorted(unknown)}; this layer "
            f"declares {sites}"
        )
