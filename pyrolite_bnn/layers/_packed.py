"""``PackedSequence`` inputs of the recurrent layers, under the particle fold.

A packed batch of ``B`` sequences is unpacked to the padded batch-first tensor
``(B, T, F)`` and its lengths; the recurrence reads each sequence only up to
its length (:func:`~pyrolite_bnn.layers.functional_recurrent.recurrent`), and
the output is packed again.

Inside a network the output is the packing of the ``B * S`` folded sequences
(row ``b * S + s`` is sequence ``b`` under particle ``s``, as everywhere in the
fold): ``pad_packed_sequence(output, batch_first=True)`` gives the folded
``(B * S, T, H)`` and the next recurrent layer takes it as it is. As the
outermost module's output, ``data`` gets the leading particle dimension:
``PackedSequence(output.data[s], output.batch_sizes, output.sorted_indices,
output.unsorted_indices)`` is particle ``s``'s torch output (see
:func:`pyrolite_bnn._particles.unfold_packed`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from pyrolite_bnn import _particles
from pyrolite_bnn._draws import current_draws
from pyrolite_bnn._sites import current_sites
from pyrolite_bnn._warnings import warn_at_caller

__all__ = ["PackedInput"]


class PackedInput:
    """One ``PackedSequence`` input of a recurrent layer, padded for the recurrence.

    Args:
        packed: the input (``B`` sequences shared by all particles, or the
            ``B * S`` folded sequences of a Bayesian layer before).
        name: the layer's name, for errors.
        features: the layer's input size.
    """

    def __init__(self, packed: PackedSequence, name: str, features: int) -> None:
        if packed.data.dim() != 2 or packed.data.shape[-1] != features:
            raise ValueError(
                f"{name}: a PackedSequence input must have data of shape "
                f"(total_length, {features}), got {tuple(packed.data.shape)}"
            )
        self.state = _particles.current()
        self.samples = 1 if self.state is None else self.state.samples
        described = int(packed.batch_sizes.sum())
        if packed.data.shape[0] != described:
            raise ValueError(
                f"{name}: a PackedSequence's data has {packed.data.shape[0]} rows "
                f"but its batch_sizes describe {described}"
                + (
                    f" ({self.samples} particles x {described}: a Bayesian layer "
                    "applied to packed.data folded its particles into the rows; "
                    "apply it to the padded batch before packing, and pack that "
                    "folded activation with lengths.repeat_interleave(S))"
                    if packed.data.shape[0] == described * self.samples
                    else ""
                )
            )
        padded, lengths = pad_packed_sequence(packed, batch_first=True)
        rows = padded.shape[0]
        self.padded = padded
        folded = self.samples > 1 and self._is_folded(packed, rows)
        self.batch = rows // self.samples if folded else rows
        remedy = (
            "repeat the lengths per particle, pack_padded_sequence(h, "
            "lengths.repeat_interleave(S), ...) with S = "
            "pyrolite_bnn.layers.functional.current_samples(): packing it with "
            "the B lengths reads the wrong rows"
        )
        if not folded and self.samples > 1:
            if _particles.computed_from_folded(packed.data):
                raise ValueError(
                    f"{name} got a packed batch of {rows} sequences packed from a "
                    f"Bayesian layer's folded output ({rows} * {self.samples} rows, "
                    f"row b * S + s, such as a VIEmbedding's): {remedy}"
                )
            if (
                packed.data.grad_fn is None
                and not (self.state is not None and self.state.is_input(packed.data))
                and _bayesian_layers_ran()
            ):
                # No graph to tell where the data came from (no gradients).
                warn_at_caller(
                    f"{name} got a packed batch of {rows} sequences, shared by all "
                    f"{self.samples} particles, after Bayesian layers ran in this "
                    "call. If it was packed from their folded output (B * S rows, "
                    f"such as a VIEmbedding's), {remedy}. A packed network input "
                    "is right as it is",
                    UserWarning,
                )
        if folded:
            lengths = lengths.view(self.batch, self.samples)[:, 0]
            self.sorted = torch.sort(lengths, descending=True, stable=True).indices
            self.batch_sizes = self._batch_sizes(lengths)
            self.keep_sorted = True
        else:
            self.batch_sizes = packed.batch_sizes
            self.keep_sorted = packed.sorted_indices is not None
            self.sorted = (
                torch.arange(rows)
                if packed.sorted_indices is None
                else packed.sorted_indices
            )
        self.lengths = lengths

    def _is_folded(self, packed: PackedSequence, rows: int) -> bool:
        """Whether the packed sequences are the folded ``B * S`` of a network."""
        assert self.state is not None
        if any(packed.data is tensor for tensor, _ in self.state.batch_folded):
            return True  # packed by a Bayesian recurrent layer before
        batch = self.state.batch_size
        return batch is not None and rows == batch * self.samples

    @staticmethod
    def _batch_sizes(lengths: Tensor) -> Tensor:
        steps = torch.arange(int(lengths.max()), device=lengths.device)
        return (lengths.unsqueeze(0) > steps.unsqueeze(1)).sum(1).cpu()

    def body(self) -> AbstractContextManager[None]:
        """Run the recurrence with the particle state's batch size set to ``B``."""
        return _particles.batch_of(self.batch, self.samples)

    def pack(self, output: Tensor) -> PackedSequence:
        """The padded batch-first output ``(B or B * S, T, H)``, packed again."""
        copies = output.shape[0] // self.batch
        sorted_rows = (
            self.sorted.to(output.device).unsqueeze(1) * copies
            + torch.arange(copies, device=output.device)
        ).reshape(-1)
        batch_sizes = self.batch_sizes * copies
        # Time-major: at step t the first batch_sizes[t] sequences in sorted order.
        slots = torch.arange(len(sorted_rows)).unsqueeze(0)
        time, slot = (slots < batch_sizes.unsqueeze(1)).nonzero(as_tuple=True)
        device = output.device
        data = output[sorted_rows[slot.to(device)], time.to(device)]
        keep = self.keep_sorted or copies > 1
        packed = PackedSequence(
            data,
            batch_sizes,
            sorted_rows if keep else None,
            _particles.inverse_permutation(sorted_rows) if keep else None,
        )
        if copies > 1 and self.state is not None:
            self.state.note_batch_folded(data, 0)
            if not self.keep_sorted:  # returned without indices, as by torch
                self.state.unsorted_packings.append(data)
        return packed


def _bayesian_layers_ran() -> bool:
    """Whether a Bayesian layer has read its weights in the running call."""
    draws, sites = current_draws(), current_sites()
    return (draws is not None and draws.any_read()) or (
        sites is not None and sites.any_read()
    )
