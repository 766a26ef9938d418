"""Layer arithmetic batched over particles, with no Python loop over samples.

Weights arrive with leading particle dimensions (``(S, 1, out, in)`` from the
particle plate) or none at all (one particle); they are flattened to one
particle dimension ``S``. Inputs are either *shared* by all particles (leading
size ``batch_size``; a leading size of 1 that is no batch is torch's
broadcast, read as the batch's rows) or *folded* (leading size ``b * S``).
Folded means batch-major, ``(b * S, ...)`` with row ``i * S + s`` for example
``i`` under particle ``s``. Outputs are folded. A custom layer gets
``batch_size`` and ``S`` of the running call from :func:`current_batch_size`
and :func:`current_samples`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pyrolite_bnn import _particles
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.distributions._precision import summary_dtype

__all__ = [
    "conv",
    "conv_flipout",
    "conv_local",
    "conv_transpose",
    "current_batch_size",
    "current_samples",
    "describe_input_shape",
    "embedding",
    "embedding_rows",
    "linear",
    "linear_flipout",
    "linear_local",
    "match_particles",
]


def current_batch_size() -> int | None:
    """Batch size ``B`` of the running outermost call (``None`` outside one).

    Pass it as ``batch_size`` to the ops here from a custom layer's ``forward``.
    """
    state = _particles.current()
    return None if state is None else state.batch_size


def current_samples() -> int:
    """Number of particles ``S`` of the running outermost call (1 outside one)."""
    state = _particles.current()
    return 1 if state is None else state.samples


def describe_input_shape(input: Tensor) -> str:
    """``input``'s shape for an error message, saying where particles are folded.

    Inside a network an activation has ``B * S`` rows; the message then names
    the batch and the particles, which the user never sees as a batch size.

    Example:
        >>> import torch
        >>> describe_input_shape(torch.zeros(4, 3))
        '(4, 3)'
    """
    shape = str(tuple(input.shape))
    samples, batch = current_samples(), current_batch_size()
    rows = input.shape[0] if input.dim() else None
    if samples > 1 and batch is not None and rows == batch * samples:
        return f"{shape} (the batch of {batch} folded with {samples} particles)"
    return shape


def _flat_particles(weight: Tensor, event_dims: int) -> Tensor:
    event = weight.shape[weight.dim() - event_dims :]
    return weight.reshape(-1, *event)


def _bias_particles(bias: Tensor | None, samples: int, size: int) -> Tensor | None:
    if bias is None:
        return None
    flat = bias.reshape(-1, size)
    if flat.shape[0] == samples:
        return flat
    if flat.shape[0] == 1:
        return flat.expand(samples, size)
    raise ValueError(f"bias has {flat.shape[0]} particles but the weight has {samples}")


def _batch_rows(input: Tensor, samples: int, batch_size: int | None) -> Tensor:
    """``input``, a row that stands for every example expanded to the batch.

    A leading size of 1 that is no batch of the call is torch's broadcast:
    the same for every example (:func:`pyrolite_bnn._particles.broadcast_row`).
    """
    return _particles.broadcast_row(_particles.current(), input, samples, batch_size)


def _is_shared(input: Tensor, samples: int, batch_size: int | None) -> bool:
    """Whether ``input`` is shared by all particles (else folded, ``b * S`` rows).

    The leading size tells (:func:`pyrolite_bnn._particles.row_layout`): the
    outermost call's batch ``B`` (shared) or ``B * S`` (folded); an input of
    the outermost call is shared whatever its size; a tensor with another
    input's leading size ``B'`` is shared, one with ``B' * S`` rows folded.
    Another multiple of ``S`` is read as folded with a warning: the layout of
    folded activations concatenated along the batch (whose rows are then no
    longer one per example: a layer under ``estimator="auto"`` draws its
    weights there, ``EstimatorLayer._draw_unless_one_row_per_example``), wrong
    for a folded activation whose positions were moved into the batch
    (``h.reshape(-1, E)`` of a ``(B * S, L, E)`` one). (The true batch of the
    sequence-first layers that ran counts as another input's: their hidden
    states are batch-first, ``(b * S, H)`` per layer.)
    """
    state = _particles.current()
    layout = _particles.row_layout(state, input, samples, batch_size)
    if layout is not None:
        return layout
    rows = input.shape[0]
    known = sorted(
        {batch_size, *(() if state is None else state.other_batches_seen())} - {None}
    )
    if rows % samples == 0:
        if known:
            warn_at_caller(
                f"a Bayesian layer got an input of {rows} rows, neither a batch "
                f"size of the network's inputs ({', '.join(map(str, known))}) nor "
                f"one times samples={samples}: it is read as {rows // samples} "
                f"examples folded with the particles (row r is particle r % "
                f"{samples}). That is the layout of folded activations "
                "concatenated along the batch (torch.cat([h1, h2])), exact with "
                "drawn weights (estimator='auto' draws them there, so that the two "
                "rows of an example share them; an explicit 'local' or 'flipout' "
                "gives them independent ones), and wrong for positions moved into "
                "the batch (h.reshape(-1, E) of a (B * S, L, E) activation): keep "
                "the batch dimension first and positions in dimensions of their own",
                UserWarning,
            )
        return False
    shown = " or ".join(map(str, known)) if known else "unknown"
    unbatched = (
        ". A tensor without a batch dimension (positions, torch.arange(L)) is "
        "read by its size: give it one, of size 1 where it is the same for "
        "every example (torch.arange(L).unsqueeze(0))"
    )
    raise _particles.LayoutError(
        f"input has leading size {rows}: expected the batch size {shown} (shared "
        f"by all particles) or a multiple of samples={samples} (folded)"
        + ("" if rows == 1 else unbatched)
        + ("" if state is None else _particles.sequence_first_hint(state))
    )


def examples_of(input: Tensor, samples: int, batch_size: int | None) -> int:
    """How many examples ``input`` holds: its rows if shared, else ``rows / S``.

    Example:
        >>> import torch
        >>> examples_of(torch.zeros(6, 3), samples=3, batch_size=2)
        2
        >>> examples_of(torch.zeros(2, 3), samples=3, batch_size=2)
        2
    """
    input = _batch_rows(input, samples, batch_size)
    rows = input.shape[0]
    if samples == 1 or _is_shared(input, samples, batch_size):
        return rows
    return rows // samples


def linear(
    input: Tensor, weight: Tensor, bias: Tensor | None, batch_size: int | None
) -> Tensor:
    """``F.linear`` for ``S`` weight draws at once.

    Args:
        input: ``(rows, *, in)``, shared (``rows == batch_size``) or folded.
        weight: ``(..., out, in)``.
        bias: ``(..., out)`` or ``None``.
        batch_size: the outermost call's batch size.

    Returns:
        ``(b * S, *, out)`` folded output (``(rows, *, out)`` for one particle).

    Example:
        >>> import torch
        >>> x, w = torch.randn(4, 3), torch.randn(5, 1, 2, 3)
        >>> linear(x, w, None, batch_size=4).shape
        torch.Size([20, 2])
    """
    out_features, in_features = weight.shape[-2:]
    w = _flat_particles(weight, 2)
    samples = w.shape[0]
    b = _bias_particles(bias, samples, out_features)
    if samples == 1:
        return F.linear(input, w[0], None if b is None else b[0])
    input = _batch_rows(input, samples, batch_size)
    rows, middle = input.shape[0], input.shape[1:-1]
    positions = math.prod(middle)  # explicit sizes: an empty batch has no -1
    if _is_shared(input, samples, batch_size):
        # One GEMM against all S weight sets stacked: (B, *, S * out) is already
        # batch-major, so without middle dims the fold is a free view.
        out = F.linear(
            input,
            w.reshape(samples * out_features, in_features),
            None if b is None else b.reshape(-1),
        )
        out = out.reshape(rows, positions, samples, out_features).transpose(1, 2)
        return out.reshape(rows * samples, *middle, out_features)
    per_particle = rows // samples
    input = _densified(input)  # folded rows meet their particles' weights
    h = input.reshape(per_particle, samples, positions, in_features).transpose(0, 1)
    h = h.reshape(samples, per_particle * positions, in_features)
    wt = w.transpose(1, 2)
    out = torch.bmm(h, wt) if b is None else torch.baddbmm(b.unsqueeze(1), h, wt)
    out = out.reshape(samples, per_particle, positions, out_features).transpose(0, 1)
    return out.reshape(rows, *middle, out_features)


def _densified(input: Tensor) -> Tensor:
    """A sparse matrix ``input`` as a dense one, differentiable at every entry.

    ``to_dense()`` passes gradients to the stored entries only (torch's
    masked gradient), where ``F.linear`` of the sparse input gives the full
    gradient: a saliency map or gradient penalty would have been wrong at the
    others. Torch has no such backward for CSC: a CSC input that requires
    gradients is refused here (CSR has it).

    Example:
        >>> x = torch.tensor([[0.0, 2.0]]).to_sparse().requires_grad_()
        >>> (_densified(x) * torch.tensor([[3.0, 4.0]])).sum().backward()
        >>> x.grad.to_dense()
        tensor([[3., 4.]])
    """
    if input.layout == torch.strided:
        return input
    if input.layout == torch.sparse_csc and input.requires_grad:
        raise TypeError(
            "a sparse CSC input that requires gradients cannot be made dense "
            "differentiably here (torch has no such backward for CSC): build the "
            "input as CSR (x.to_sparse_csr() of the dense tensor) or COO"
        )
    dense: Tensor = input.to_dense(masked_grad=False)
    return dense


_CONV: dict[int, Callable[..., Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Sequence[int],
    padding: str | Sequence[int],
    dilation: Sequence[int],
    groups: int,
    batch_size: int | None,
) -> Tensor:
    """``F.conv{1,2,3}d`` for ``S`` weight draws in one grouped convolution.

    A shared input is convolved once with all ``S`` filter banks stacked as extra
    output channels; a folded input is moved into channels and convolved with
    ``groups * S`` groups.

    Args:
        input: ``(rows, C, *spatial)``, shared or folded.
        weight: ``(..., O, C / groups, *kernel)``.
        bias: ``(..., O)`` or ``None``.
        stride: per spatial dim.
        padding: per spatial dim, or ``"same"``/``"valid"``.
        dilation: per spatial dim.
        groups: channel groups of the layer.
        batch_size: the outermost call's batch size.

    Returns:
        Folded ``(b * S, O, *spatial_out)``.

    Example:
        >>> import torch
        >>> x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 1, 5, 3, 3, 3)
        >>> conv(x, w, None, (1, 1), (1, 1), (1, 1), 1, batch_size=2).shape
        torch.Size([8, 5, 8, 8])
    """
    dims = len(stride)
    op = _CONV[dims]
    w = _flat_particles(weight, dims + 2)
    samples, out_channels = w.shape[0], w.shape[1]
    b = _bias_particles(bias, samples, out_channels)
    if samples == 1:
        return op(
            input, w[0], None if b is None else b[0], stride, padding, dilation, groups
        )
    kernel = w.shape[2:]
    input = _batch_rows(input, samples, batch_size)
    rows = input.shape[0]
    per_group = out_channels // groups
    if _is_shared(input, samples, batch_size):
        # All S filter banks as extra output channels, ordered (group, particle,
        # channel-in-group); with one group the output is already batch-major.
        wg = w.reshape(samples, groups, per_group, *kernel).transpose(0, 1)
        bg = (
            None if b is None else b.reshape(samples, groups, per_group).transpose(0, 1)
        )
        out = op(
            input,
            wg.reshape(groups * samples * per_group, *kernel),
            None if bg is None else bg.reshape(-1),
            stride,
            padding,
            dilation,
            groups,
        )
        spatial = out.shape[2:]
        out = out.reshape(rows, groups, samples, per_group, *spatial)
        if groups > 1:
            out = out.transpose(1, 2)
        return out.reshape(rows * samples, out_channels, *spatial)
    # Folded (b * S, C, ...) is (b, S * C, ...) as it stands: one grouped
    # convolution with groups * S groups, and the output folds back for free.
    per_particle = rows // samples
    x = input.reshape(per_particle, samples * input.shape[1], *input.shape[2:])
    out = op(
        x,
        w.reshape(samples * out_channels, *kernel),
        None if b is None else b.reshape(-1),
        stride,
        padding,
        dilation,
        groups * samples,
    )
    return out.reshape(rows, out_channels, *out.shape[2:])


_CONV_TRANSPOSE: dict[int, Callable[..., Tensor]] = {
    1: F.conv_transpose1d,
    2: F.conv_transpose2d,
    3: F.conv_transpose3d,
}


def conv_transpose(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    output_padding: Sequence[int],
    groups: int,
    dilation: Sequence[int],
    batch_size: int | None,
) -> Tensor:
    """``F.conv_transpose{1,2,3}d`` for ``S`` weight draws in one grouped call.

    As :func:`conv`: a shared input meets all ``S`` filter banks stacked as
    extra output channels; a folded input is moved into channels and
    convolved with ``groups * S`` groups.

    Args:
        input: ``(rows, C, *spatial)``, shared or folded.
        weight: ``(..., C, O / groups, *kernel)``.
        bias: ``(..., O)`` or ``None``.
        stride: per spatial dim.
        padding: per spatial dim.
        output_padding: per spatial dim.
        groups: channel groups of the layer.
        dilation: per spatial dim.
        batch_size: the outermost call's batch size.

    Returns:
        Folded ``(b * S, O, *spatial_out)``.

    Example:
        >>> import torch
        >>> x, w = torch.randn(2, 3, 4, 4), torch.randn(5, 1, 3, 6, 3, 3)
        >>> one, zero = (1, 1), (0, 0)
        >>> conv_transpose(x, w, None, one, zero, zero, 1, one, batch_size=2).shape
        torch.Size([10, 6, 6, 6])
    """
    dims = len(stride)
    op = _CONV_TRANSPOSE[dims]
    w = _flat_particles(weight, dims + 2)
    samples, in_channels, per_group = w.shape[0], w.shape[1], w.shape[2]
    out_channels = per_group * groups
    b = _bias_particles(bias, samples, out_channels)
    geometry = (stride, padding, output_padding)
    if samples == 1:
        return op(input, w[0], None if b is None else b[0], *geometry, groups, dilation)
    kernel = w.shape[3:]
    input = _batch_rows(input, samples, batch_size)
    rows = input.shape[0]
    if _is_shared(input, samples, batch_size):
        # Output channels ordered (group, particle, channel-in-group): input
        # channel c feeds the columns of every particle of its group.
        wg = w.transpose(0, 1).reshape(in_channels, samples * per_group, *kernel)
        bg = (
            None if b is None else b.reshape(samples, groups, per_group).transpose(0, 1)
        )
        out = op(
            input,
            wg,
            None if bg is None else bg.reshape(-1),
            *geometry,
            groups,
            dilation,
        )
        spatial = out.shape[2:]
        out = out.reshape(rows, groups, samples, per_group, *spatial)
        if groups > 1:
            out = out.transpose(1, 2)
        return out.reshape(rows * samples, out_channels, *spatial)
    # Folded (b * S, C, ...) is (b, S * C, ...): groups * S groups, and the
    # output (b, S * O, ...) folds back for free.
    per_particle = rows // samples
    x = input.reshape(per_particle, samples * in_channels, *input.shape[2:])
    out = op(
        x,
        w.reshape(samples * in_channels, per_group, *kernel),
        None if b is None else b.reshape(-1),
        *geometry,
        groups * samples,
        dilation,
    )
    return out.reshape(rows, out_channels, *out.shape[2:])


def _particle_indices(
    input: Tensor, samples: int, batch_size: int | None, block: int
) -> Tensor:
    """Folded indices ``(b * S, *)``, each offset by its particle's block.

    Particle ``s`` reads rows ``[s * block, (s + 1) * block)`` of a table of
    ``S`` blocks stacked; a shared input is repeated for every particle.
    """
    if samples == 1:
        return input
    input = _batch_rows(input, samples, batch_size)
    rows = input.shape[0]
    offsets = torch.arange(samples, device=input.device) * block
    if _is_shared(input, samples, batch_size):
        offsets = offsets.reshape(1, samples, *([1] * (input.dim() - 1)))
        shifted = input.unsqueeze(1) + offsets
        return shifted.reshape(rows * samples, *input.shape[1:])
    per_row = offsets.repeat(rows // samples)
    return input + per_row.reshape(rows, *([1] * (input.dim() - 1)))


def _random_rows(
    input: Tensor, num_embeddings: int, padding_idx: int | None, placeholder: int
) -> Tensor:
    """Indices into the random rows (all rows but ``padding_idx``), range-checked.

    Rows after ``padding_idx`` move up by one; ``padding_idx`` itself becomes
    ``placeholder``. The indices are looked up in that map of the table's
    ``num_embeddings`` rows with ``index_select``, which raises
    ``IndexError: index out of range in self`` for an index outside
    ``[0, num_embeddings)``, as ``torch.nn.Embedding`` does whatever the
    validation setting (a device-side assertion on CUDA: no host
    synchronisation). The particle offsets added next carried such an index
    into a neighbouring particle's block, or the row draws' modulo wrapped it
    (index ``V`` read row 0, ``-1`` the last row), silently.
    """
    rows = torch.arange(num_embeddings, dtype=input.dtype, device=input.device)
    if padding_idx is not None:
        rows[padding_idx + 1 :] -= 1
        rows[padding_idx] = placeholder
    return rows.index_select(0, input.reshape(-1)).view(input.shape)


def _renormed(out: Tensor, max_norm: float | None, norm_type: float) -> Tensor:
    """Looked-up rows scaled to norm ``max_norm`` where theirs exceeds it."""
    if max_norm is None:
        return out
    norm = torch.linalg.vector_norm(out, ord=norm_type, dim=-1, keepdim=True)
    # torch.embedding_renorm_'s factor, with its 1e-7 guard.
    factor = torch.where(norm > max_norm, max_norm / (norm + 1e-7), 1.0)
    return out * factor


def embedding(
    input: Tensor,
    weight: Tensor,
    max_norm: float | None,
    norm_type: float,
    scale_grad_by_freq: bool,
    batch_size: int | None,
    padding_idx: int | None = None,
    padding_row: Tensor | None = None,
) -> Tensor:
    """``F.embedding`` for ``S`` weight draws: row lookups per particle.

    The ``S`` tables are read as one ``(S * V, E)`` table and every index is
    offset by its particle's block, so one gather serves all particles. With
    ``max_norm``, each looked-up row whose ``norm_type``-norm exceeds
    ``max_norm`` is scaled to ``max_norm`` (the values ``torch.nn.Embedding``
    gives; it rescales its stored weight in place instead, which a drawn weight
    has no use for, so here gradients flow through the rescaling).

    Args:
        input: integer indices ``(rows, *)``, shared (``rows == batch_size``)
            or folded.
        weight: ``(..., V, E)``; with ``padding_idx``, the rows but the
            padding one (the indices after it move up by one).
        max_norm: largest norm of a looked-up row, or ``None``.
        norm_type: the ``p`` of the ``max_norm`` norm.
        scale_grad_by_freq: scale gradients by the inverse frequency of the
            indices in the batch (per particle).
        batch_size: the outermost call's batch size.
        padding_idx: the index that reads ``padding_row``, or ``None``.
        padding_row: the deterministic row ``(E,)`` of ``padding_idx``.

    Returns:
        Folded ``(b * S, *, E)``.

    Raises:
        IndexError: for an index outside the table, as ``F.embedding``.

    Example:
        >>> import torch
        >>> idx, w = torch.tensor([[0, 2], [1, 1]]), torch.randn(4, 1, 3, 5)
        >>> embedding(idx, w, None, 2.0, False, batch_size=2).shape
        torch.Size([8, 2, 5])
    """
    num_embeddings, embedding_dim = weight.shape[-2:]
    w = _flat_particles(weight, 2)
    samples = w.shape[0]
    padding: Tensor | None = None
    if padding_idx is None or padding_row is None:
        rows = _random_rows(input, num_embeddings, None, placeholder=0)
    elif scale_grad_by_freq:
        # The padding positions must not count as uses of a random row: they
        # read the padding row, appended to every particle's table.
        row = padding_row.to(w.dtype).expand(samples, 1, embedding_dim)
        w = torch.cat([w, row], dim=1)
        num_embeddings += 1
        rows = _random_rows(input, num_embeddings, padding_idx, num_embeddings - 1)
    else:  # the padding positions read row 0, replaced below
        rows = _random_rows(input, num_embeddings + 1, padding_idx, placeholder=0)
        is_padding = (input == padding_idx).to(input.dtype)
        padding = _particle_indices(is_padding, samples, batch_size, 0) > 0
    rows = _particle_indices(rows, samples, batch_size, num_embeddings)
    table = w.reshape(samples * num_embeddings, embedding_dim)
    out = F.embedding(rows, table, scale_grad_by_freq=scale_grad_by_freq)
    if padding is not None and padding_row is not None:
        out = torch.where(padding.unsqueeze(-1), padding_row.to(out.dtype), out)
    return _renormed(out, max_norm, norm_type)


def embedding_rows(
    input: Tensor,
    loc: Tensor,
    scale: Tensor,
    samples: int,
    max_norm: float | None,
    norm_type: float,
    scale_grad_by_freq: bool,
    batch_size: int | None,
    padding_idx: int | None = None,
    padding_row: Tensor | None = None,
) -> Tensor:
    """:func:`embedding` of ``S`` tables ``loc + scale * eps``, drawn where looked up.

    Each particle draws only the distinct rows its indices reference
    (``torch.unique`` over the (particle, row) pairs), one standard-normal
    draw per pair, and every occurrence of a row in the particle's inputs
    reads that draw. Rows never looked up do not enter the outputs, so these
    have exactly the distribution of :func:`embedding` on ``S`` whole tables
    drawn from ``Normal(loc, scale)``, at the cost of the rows used instead of
    ``S`` tables.

    Args:
        input: integer indices ``(rows, *)``, shared or folded.
        loc: posterior means ``(V, E)`` (with ``padding_idx``, of the rows
            but the padding one).
        scale: posterior standard deviations ``(V, E)``.
        samples: number of particles ``S``.
        max_norm: see :func:`embedding`.
        norm_type: see :func:`embedding`.
        scale_grad_by_freq: see :func:`embedding`.
        batch_size: the outermost call's batch size.
        padding_idx: see :func:`embedding`.
        padding_row: see :func:`embedding`.

    Returns:
        Folded ``(b * S, *, E)``.

    Raises:
        IndexError: for an index outside the table, as ``F.embedding``.

    Example:
        >>> import torch
        >>> idx = torch.tensor([[3, 3, 1]])  # one sequence reading row 3 twice
        >>> out = embedding_rows(idx, torch.zeros(5, 2), torch.ones(5, 2), 4,
        ...                      None, 2.0, False, batch_size=1)
        >>> out.shape, bool((out[:, 0] == out[:, 1]).all())
        (torch.Size([4, 3, 2]), True)
    """
    num_embeddings, embedding_dim = loc.shape
    # The padding row, if any, is the last of each particle's block.
    block = num_embeddings + (padding_idx is not None)
    rows = _random_rows(input, block, padding_idx, placeholder=num_embeddings)
    keys = _particle_indices(rows, samples, batch_size, block)
    pairs, inverse = torch.unique(keys, return_inverse=True)
    index = pairs % block
    padding = index == num_embeddings if padding_idx is not None else None
    if padding is not None:
        index = index.masked_fill(padding, 0)
    eps = torch.empty(
        (pairs.shape[0], embedding_dim), dtype=loc.dtype, device=loc.device
    ).normal_()
    drawn = loc[index] + eps * scale[index]  # Normal.rsample's arithmetic
    if padding is not None and padding_row is not None:
        drawn = torch.where(padding.unsqueeze(-1), padding_row.to(drawn.dtype), drawn)
    out = F.embedding(inverse, drawn, scale_grad_by_freq=scale_grad_by_freq)
    return _renormed(out, max_norm, norm_type)


def match_particles(shortcut: Tensor, branch: Tensor) -> Tensor:
    """Fold ``shortcut`` like ``branch`` so the two can be added or concatenated.

    Inside a Bayesian call activations are folded ``(B*S, ...)``, while a
    tensor no Bayesian layer has touched (the input, a branch left
    deterministic by ``bnn.convert(..., exclude=...)``) is still ``(B, ...)``,
    shared by all particles. A shared tensor meeting a folded one of its batch
    is repeated for every particle of the running call (row ``b*S + s``); a
    shared tensor of one row (a context, a summary ``x.mean(0, keepdim=True)``)
    is every row's, as torch broadcasts it; two tensors of one layout are
    returned unchanged, and so is ``shortcut`` outside a network's call (or
    with one particle), without reading a size, so a ``forward`` that uses
    this runs as a torch module too, traced by ``torch.jit.trace`` or
    exported with a dynamic batch by ``torch.export``. Where a tensor's size
    fits both an input's batch and a batch folded with the particles (``B``
    rows at ``S = B`` beside a one-row input, a second input of ``B * S``
    rows), where it comes from tells: an input or a view of one is shared,
    a Bayesian layer's output of the call's batch or a view of it (or, with
    gradients, a tensor computed from one) folded; anything else is refused,
    with the ways out. Public as ``bnn.match_particles``.

    Args:
        shortcut: the tensor that may be shared, ``(B, ...)``.
        branch: the tensor that may be folded, ``(B*S, ...)``.

    Returns:
        ``shortcut`` in ``branch``'s layout.

    Raises:
        ValueError: where ``shortcut``'s rows cannot be placed beside
            ``branch``'s: already folded with another batch than ``branch``'s
            (a Bayesian layer's output for an input of one row: ``S`` rows,
            one per particle), shared and ``branch`` too with another batch,
            of a batch ``branch``'s rows are not, folded while ``branch`` is
            shared (the arguments swapped), computed from a Bayesian layer's
            folded output but read as shared rows, or rows that are neither a
            batch of the call's inputs nor one folded with its particles (or
            both: ambiguous).
        TypeError: for an argument that is no tensor with a batch dimension.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> class Skip(bnn.VIModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body = bnn.VILinear(3, 3)
        ...
        ...     def forward(self, x):
        ...         h = self.body(x)  # folded: (B * S, 3); x is (B, 3)
        ...         return torch.cat([h, bnn.match_particles(x, h)], -1)
        >>> Skip()(torch.randn(2, 3), samples=4).shape
        torch.Size([4, 2, 6])
        >>> bnn.match_particles(torch.randn(2, 3), torch.randn(8, 3)).shape
        torch.Size([2, 3])
    """
    for tensor, what in ((shortcut, "shortcut"), (branch, "branch")):
        if not isinstance(tensor, Tensor) or tensor.dim() == 0:
            raise TypeError(
                f"match_particles: {what} must be a tensor with a batch "
                f"dimension, got {type(tensor).__name__}"
            )
    state = _particles.current()
    # Outside a call and with one particle no size is read: traced by
    # torch.jit.trace or torch.export, an int would fix the batch size.
    if state is None or state.samples == 1:
        return shortcut
    rows, branch_rows = int(shortcut.shape[0]), int(branch.shape[0])
    if rows == branch_rows == 0:
        return shortcut
    samples = state.samples
    if not state.batch_leading:
        # A sequence-first network: dimension 0 may be a sequence, folded
        # ``(L * S, ...)`` like the batch (row ``l * S + s``).
        if rows == branch_rows:
            return shortcut
        if branch_rows == rows * samples:
            return _fold_shared(shortcut, samples)
        raise ValueError(
            f"match_particles: the shortcut's {rows} rows are neither the "
            f"branch's {branch_rows} nor {branch_rows} / S (S = {samples} "
            "particles in this call): no layout places them beside the branch's"
        )
    layout, batch = _particles.read_rows(state, shortcut)
    if (layout, rows) == ("unknown", 1) and not _particles.computed_from_folded(
        shortcut
    ):
        layout = "shared"  # a row every example's, as torch broadcasts it
    branch_layout, branch_batch = _particles.read_rows(state, branch)
    if "ambiguous" not in (layout, branch_layout):
        if (layout, batch) == (branch_layout, branch_batch):
            return shortcut  # one layout (neither told: the same rows, as torch)
        if layout == branch_layout == "shared":
            return shortcut  # shared rows combine as in the plain torch model
        if (
            layout == "shared"
            and branch_layout == "folded"
            and batch in (1, branch_batch)
        ):
            if _particles.computed_from_folded(shortcut):
                raise ValueError(
                    f"match_particles: the shortcut's {rows} rows were computed "
                    "from a Bayesian layer's output whose particles are folded "
                    "into the batch (row b * S + s): they are some particles' "
                    "rows, or a mix of them, not rows shared by all; give "
                    "match_particles the tensor before any Bayesian layer, and "
                    "keep reductions and indexing off the batch dimension"
                )
            if batch == 1:  # one row, every example's
                return shortcut.expand(branch_rows, *shortcut.shape[1:])
            return _fold_shared(shortcut, samples)
    raise ValueError(
        _unmatched(
            (layout, batch, rows),
            (branch_layout, branch_batch, branch_rows),
            samples,
            state.batch_size,
        )
    )


def _unmatched(
    shortcut: tuple[str, int, int],
    branch: tuple[str, int, int],
    samples: int,
    call_batch: int | None,
) -> str:
    """Why :func:`match_particles` cannot place ``shortcut`` beside ``branch``.

    Each is ``(layout, batch, rows)`` as :func:`~pyrolite_bnn._particles.
    read_rows` tells it; ``call_batch`` is the running call's batch (its first
    input's).
    """

    def rows_of(what: str, told: tuple[str, int, int]) -> str:
        layout, batch, rows = told
        if layout == "shared":
            return f"the {what}'s {rows} rows are a batch shared by the particles"
        if layout == "folded":
            return (
                f"the {what}'s {rows} rows are the batch {batch} folded with the "
                f"{samples} particles"
            )
        fits = "both" if layout == "ambiguous" else "neither"
        return (
            f"the {what}'s {rows} rows fit {fits} a batch of the call's inputs "
            f"shared by the particles {'and' if fits == 'both' else 'nor'} one "
            f"folded with the {samples} particles"
        )

    told = (
        f"match_particles: {rows_of('shortcut', shortcut)}, {rows_of('branch', branch)}"
    )
    (layout, batch, _), (branch_layout, branch_batch, _) = shortcut, branch
    if "ambiguous" in (layout, branch_layout):
        return f"{told}: their layout cannot be told. " + _ambiguity_remedies(
            shortcut, branch, samples, call_batch
        )
    if "unknown" in (layout, branch_layout):
        return (
            f"{told}: only a tensor of the call's inputs' batch (or of one row) "
            "is placed beside its folded rows. Keep the batch dimension first "
            "and the same for both tensors"
        )
    if layout == "folded" and branch_layout == "shared" and batch == branch_batch:
        return (
            f"{told}: the arguments are swapped, match_particles(shared, folded) "
            "returns the shared tensor folded"
        )
    if layout == "folded" and batch == 1:
        return (
            f"{told}: the shortcut is a Bayesian layer's output for an input of "
            f"one row ({samples} rows, one per particle), and every input keeps "
            "its own batch. If the row is every example's (a context shared by "
            "the batch), give the input the batch size before a Bayesian layer "
            "reads it, ctx.expand(x.shape[0], *ctx.shape[1:]) (a view), in the "
            "forward or in the call"
        )
    return (
        f"{told}: tensors of different batches have no rows in common (nor in "
        "the plain torch model)"
    )


def _ambiguity_remedies(
    shortcut: tuple[str, int, int],
    branch: tuple[str, int, int],
    samples: int,
    call_batch: int | None,
) -> str:
    """What to change where :func:`match_particles` cannot tell a layout.

    A size that fits both an input's batch and a batch folded with the
    ``S`` particles is told by where the tensor comes from: an input (or a
    view of one) is shared, a Bayesian layer's output of the call's batch
    (or a view of it, or, with gradients, a tensor computed from it) folded.
    Arguments as for :func:`_unmatched`.
    """
    remedies = []
    if shortcut[0] == "ambiguous":
        rows = shortcut[2]
        remedies.append(
            "If the shortcut is computed from an input without a Bayesian layer "
            "(a plain layer's det(x)), match the input itself and compute the "
            "shortcut from its folded rows, det(bnn.match_particles(x, h)): an "
            "input, or a view of it, is read as shared whatever its size"
        )
        if rows == samples:  # or S rows: one per particle of a single row
            remedies.append(
                "if it is a Bayesian layer's output for an input of one row "
                f"(ctx), it has one row per particle ({samples}), no example's: "
                "give that input the batch size before the layer reads it, "
                "ctx.expand(x.shape[0], *ctx.shape[1:]) (a view)"
            )
        if call_batch == 1 and rows == samples:
            remedies.append(
                f"or give the network the input of {rows} rows as its first "
                "argument, net(x, ctx) (the call's batch is its first input's, "
                "here the one row of the first)"
            )
    if branch[0] == "ambiguous":
        rows = branch[2]
        told = (
            "give match_particles that output itself, bnn.match_particles(x, "
            "h) with h = layer(x), and compute on from the result (a Bayesian "
            "layer's output is read as folded whatever its size)"
            if call_batch is not None and rows == call_batch * samples
            else "give the network the input of the shortcut's batch as its "
            "first argument (the call's batch is its first input's)"
        )
        remedies.append(
            "If the branch is a Bayesian layer's output for the shortcut's rows, "
            f"{told}; if it holds another input's {rows} rows, the shortcut has "
            "no rows in common with them (nor in the plain torch model)"
        )
    remedies.append(
        "or call the network with another number of samples, where the sizes "
        "tell the layouts apart"
    )
    return "; ".join(remedies)


# ---------------------------------------------------------------------------
# Estimators that never draw full weight tensors per particle. They need the
# mean-field Normal posterior's mean and standard deviation of each parameter.


def _rows(input: Tensor, samples: int, batch_size: int | None) -> tuple[bool, int]:
    """(shared?, rows of the folded output)."""
    rows = input.shape[0]
    shared = _is_shared(input, samples, batch_size) if samples > 1 else False
    return shared, samples * rows if shared else rows


def _broadcast_shared(mean: Tensor, samples: int) -> Tensor:
    """``(B, ...)`` -> ``(B, S, ...)`` view for a shared input's statistics."""
    return mean.unsqueeze(1).expand(mean.shape[0], samples, *mean.shape[1:])


def _fold_shared(shared: Tensor, samples: int) -> Tensor:
    """A shared ``(B, ...)`` tensor as folded ``(B * S, ...)`` (a copy)."""
    return _broadcast_shared(shared, samples).reshape(
        shared.shape[0] * samples, *shared.shape[1:]
    )


def _check_moments(weight: object, bias: object, owner: str) -> None:
    """Refuse a weight (or bias) that is not a ``(mean, std)`` pair.

    A tensor in its place unpacked into its first two rows as the mean and
    the standard deviation: a wrong result of a wrong shape, without an error.
    """
    for what, pair in (("weight", weight), ("bias", bias)):
        if pair is None and what == "bias":
            continue
        if not (isinstance(pair, tuple) and len(pair) == 2):
            given = (
                f"a tensor of shape {tuple(pair.shape)}"
                if isinstance(pair, Tensor)
                else type(pair).__name__
            )
            raise TypeError(
                f"{owner} takes the {what} as a (mean, std) pair of tensors, the "
                f"moments of a mean-field Normal, got {given} (a drawn weight "
                "goes to linear or conv)"
            )


def linear_local(
    input: Tensor,
    weight: tuple[Tensor, Tensor],
    bias: tuple[Tensor, Tensor] | None,
    samples: int,
    batch_size: int | None,
) -> Tensor:
    """Local reparameterisation: sample the pre-activations, not the weights.

    With independent ``w_ij ~ N(m_ij, s_ij^2)`` the output of every example is
    exactly Gaussian, ``N(x m^T + m_b, x^2 (s^2)^T + s_b^2)``; each particle and
    example draws its own value (Kingma et al., 2015). Every output row is drawn
    independently, positions ``*`` included: each output has its exact
    distribution, but the positions of an example, which share its weights,
    lose their correlation. Only for inputs with one position per example is
    this the joint distribution of ``"reparam"``; the layers use
    :func:`linear_flipout` otherwise.

    Args:
        input: shared ``(B, *, in)`` or folded ``(b * S, *, in)``.
        weight: ``(mean, std)`` of the weight, each ``(out, in)``.
        bias: ``(mean, std)`` of the bias, each ``(out,)``, or ``None``.
        samples: number of particles ``S``.
        batch_size: the outermost call's batch size.

    Returns:
        Folded ``(b * S, *, out)``.

    Example:
        >>> import torch
        >>> w = (torch.zeros(2, 3), torch.ones(2, 3))
        >>> linear_local(torch.randn(4, 3), w, None, samples=5, batch_size=4).shape
        torch.Size([20, 2])
    """
    _check_moments(weight, bias, "linear_local")
    input = _batch_rows(input, samples, batch_size)
    shared, out_rows = _rows(input, samples, batch_size)
    mean = F.linear(input, weight[0], None if bias is None else bias[0])
    var = _output_variance(F.linear, input, weight[1], bias)
    return _gaussian_draws(
        mean, var, shared, samples, out_rows, bias_variance=bias is not None
    )


def _gaussian_draws(
    mean: Tensor,
    var: Tensor,
    shared: bool,
    samples: int,
    out_rows: int,
    *,
    bias_variance: bool = False,
) -> Tensor:
    """One draw of ``N(mean, var)`` per particle and example, folded.

    ``mean`` and ``var`` are ``(rows, ...)``; for a shared input (``rows = B``)
    each of the ``S`` particles draws its own values. ``bias_variance``: the
    variance includes a bias's variance from :func:`_floored_square`, so in
    a floored dtype it is at least that dtype's smallest normal number.
    ``var`` may be wider than ``mean`` (:func:`_output_variance`): the draws
    are made in its dtype and returned in ``mean``'s.
    """
    if bias_variance and var.dtype in _FLOORED_DTYPES:
        # With a bias the true variance is positive: a float zero would be
        # underflow, and the floor (std ~1e-19 in float32) is closer to it; the
        # floor keeps sqrt's derivative finite. One op instead of the four below.
        std = var.sqrt()
    else:
        # Where the variance is 0 (an input row of zeros and no bias variance)
        # sqrt's derivative is infinite, and 0 * inf gave NaN gradients: there
        # the std is 0 with no gradient, as drawn weights give (the output does
        # not depend on them); elsewhere it is unchanged (a floor would move
        # float16's small variances: its smallest normal number is 6e-5).
        positive = var > 0
        std = torch.where(positive, var, torch.ones_like(var)).sqrt() * positive
    if shared:  # the standard deviations of B rows, read by all S particles
        mean, std = _broadcast_shared(mean, samples), _broadcast_shared(std, samples)
    # Out of place: also under vmap (one sample). In the variance's dtype, and
    # rounded to the activations' once: a float16 mean plus noise below its
    # spacing would be rounded twice.
    eps = torch.randn_like(mean, dtype=std.dtype)
    draws = torch.addcmul(mean.to(std.dtype), std, eps).to(mean.dtype)
    return draws.reshape(out_rows, *draws.shape[2 if shared else 1 :])


def _output_variance(
    op: Callable[..., Tensor],
    input: Tensor,
    std: Tensor,
    bias: tuple[Tensor, Tensor] | None,
    *geometry: object,
) -> Tensor:
    """``op(x^2, s^2, s_b^2)``: the outputs' variance, in at least ``float32``.

    In ``float16`` the squares lose what they measure: a posterior standard
    deviation of 1e-4 has a variance below its smallest subnormal number
    (6e-8), and with it the outputs their noise and ``rho`` its gradient;
    larger ones keep few bits (+33 % output variance at 3e-4), and inputs
    above 256 overflow to ``inf`` (``NaN`` outputs). ``float16`` operands are
    read as ``float32``, with ``float16`` autocast off, which would cast them
    down again (a ``float32`` network under
    ``torch.autocast(dtype=torch.float16)`` computed it in ``float16``).
    ``bfloat16`` has ``float32``'s range and keeps 8 bits, a variance's
    relative error of 0.4 %, well inside the Monte-Carlo error of any
    estimate made from the draws: it runs as it is (under ``bfloat16``
    autocast too, at its speed), as do ``float32`` and ``float64``.
    :func:`_gaussian_draws` rounds the draws to the activations' dtype.

    Args:
        op: ``F.linear`` or a convolution, called as ``op(input, weight,
            bias, *geometry)``.
        input: the layer's input.
        std: the weight's standard deviations.
        bias: ``(mean, std)`` of the bias, or ``None``.
        *geometry: the convolution's arguments after the bias.
    """
    device = input.device.type
    if (
        torch.amp.is_autocast_available(device)
        and torch.is_autocast_enabled(device)
        and torch.get_autocast_dtype(device) == torch.float16
    ):
        with torch.autocast(device, enabled=False):
            return _output_variance(op, input, std, bias, *geometry)
    bias_std = None if bias is None else bias[1]
    if torch.float16 in (input.dtype, std.dtype):  # others run as they are
        wide = summary_dtype(torch.promote_types(input.dtype, std.dtype))
        input, std = input.to(wide), std.to(wide)
        bias_std = None if bias_std is None else bias_std.to(wide)
    return op(
        _squared(input),
        std.square(),
        None if bias_std is None else _floored_square(bias_std),
        *geometry,
    )


def _squared(input: Tensor) -> Tensor:
    """``input * input``, in ``input``'s layout.

    Torch has no product of sparse CSC tensors (``Expected result Tensor to
    be of format CSR``): their stored values are squared instead, the zeros
    staying where they are (the indices are the input's, valid).
    """
    if input.layout != torch.sparse_csc:
        return input * input
    return torch.sparse_csc_tensor(
        input.ccol_indices(),
        input.row_indices(),
        input.values().square(),
        input.shape,
        check_invariants=False,
    )


# Dtypes whose smallest normal number is far below any variance that matters.
_FLOORED_DTYPES = frozenset({torch.float32, torch.float64, torch.bfloat16})


def _floored_square(std: Tensor) -> Tensor:
    """A bias's variance, plus its dtype's smallest normal number if floored.

    Added to a variance that holds it, the floor keeps the variance positive
    (its square root differentiable) and changes no variance above ~1e-31 in
    float32, which it is below half an ulp of; float16's smallest normal
    number (6e-5) would move small variances, so float16 is not floored.
    """
    square = std.square()
    if square.dtype in _FLOORED_DTYPES:
        return square + torch.finfo(square.dtype).tiny
    return square


def _random_signs(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Random +-1 (out of place, so also inside ``torch.vmap``)."""
    half = torch.full(shape, 0.5, dtype=like.dtype, device=like.device)
    return torch.bernoulli(half) * 2 - 1


def linear_flipout(
    input: Tensor,
    weight: tuple[Tensor, Tensor],
    bias: tuple[Tensor, Tensor] | None,
    samples: int,
    batch_size: int | None,
) -> Tensor:
    """Flipout (Wen et al., 2018): one weight perturbation per particle.

    The perturbation is decorrelated across examples by random sign flips of its
    inputs and outputs, drawn per example and particle and shared by all
    positions ``*`` of the example. Example ``b`` under particle ``s`` sees
    ``W = m + (s * eps_s) o (r_out r_in^T)`` at every position, a weight with the
    distribution of a fresh draw, so the joint distribution of an example's
    outputs (all positions together) equals that of ``"reparam"``; gradients
    vary less between the examples of a batch. The bias is drawn once per
    particle.

    Args:
        input: shared ``(B, *, in)`` or folded ``(b * S, *, in)``.
        weight: ``(mean, std)`` of the weight, each ``(out, in)``.
        bias: ``(mean, std)`` of the bias, each ``(out,)``, or ``None``.
        samples: number of particles ``S``.
        batch_size: the outermost call's batch size.

    Returns:
        Folded ``(b * S, *, out)``.

    Example:
        >>> import torch
        >>> w = (torch.zeros(2, 3), torch.ones(2, 3))
        >>> x = torch.randn(4, 7, 3)  # 7 positions per example
        >>> linear_flipout(x, w, None, samples=5, batch_size=4).shape
        torch.Size([20, 7, 2])
    """
    _check_moments(weight, bias, "linear_flipout")
    out_features, in_features = weight[0].shape
    input = _batch_rows(input, samples, batch_size)
    shared, out_rows = _rows(input, samples, batch_size)
    mean = F.linear(input, weight[0], None if bias is None else bias[0])
    if shared:
        mean = _fold_shared(mean, samples)
    input = _densified(input)  # a sparse matrix: its sign flips are dense
    # Particle-major (S, b, M, in) with M positions per example; a shared input
    # (1, B, M, in) broadcasts against the per-particle signs.
    per_particle, positions = out_rows // samples, math.prod(input.shape[1:-1])
    if shared:
        h = input.reshape(1, per_particle, positions, in_features)
    else:
        h = input.reshape(per_particle, samples, positions, in_features)
        h = h.transpose(0, 1)
    sign_in = _random_signs((samples, per_particle, 1, in_features), input)
    sign_out = _random_signs((samples, per_particle, 1, out_features), input)
    eps = torch.randn(
        (samples, out_features, in_features), dtype=input.dtype, device=input.device
    )
    delta = weight[1] * eps
    flipped = (h * sign_in).reshape(samples, per_particle * positions, in_features)
    noise = torch.bmm(flipped, delta.transpose(1, 2))
    noise = noise.reshape(samples, per_particle, positions, out_features) * sign_out
    if bias is not None:
        eps_bias = torch.randn(
            (samples, 1, 1, out_features), dtype=input.dtype, device=input.device
        )
        noise = noise + bias[1] * eps_bias
    # Under autocast the mean is in its dtype and the signs (the input's)
    # promoted the noise: the output keeps the mean's, as nn.Linear's.
    return mean + noise.transpose(0, 1).reshape(mean.shape).to(mean.dtype)


def conv_local(
    input: Tensor,
    weight: tuple[Tensor, Tensor],
    bias: tuple[Tensor, Tensor] | None,
    stride: Sequence[int],
    padding: str | Sequence[int],
    dilation: Sequence[int],
    groups: int,
    samples: int,
    batch_size: int | None,
) -> Tensor:
    """Local reparameterisation for convolutions (see :func:`linear_local`).

    Every output location is drawn independently: exact only for one output
    location per example (the locations share the filters).

    Example:
        >>> import torch
        >>> w = (torch.zeros(4, 2, 3, 3), torch.ones(4, 2, 3, 3))
        >>> x = torch.randn(2, 2, 8, 8)
        >>> one = (1, 1)
        >>> conv_local(x, w, None, one, one, one, 1, samples=3, batch_size=2).shape
        torch.Size([6, 4, 8, 8])
    """
    _check_moments(weight, bias, "conv_local")
    op = _CONV[len(stride)]
    input = _batch_rows(input, samples, batch_size)
    shared, out_rows = _rows(input, samples, batch_size)
    mean = op(
        input,
        weight[0],
        None if bias is None else bias[0],
        stride,
        padding,
        dilation,
        groups,
    )
    var = _output_variance(
        op, input, weight[1], bias, stride, padding, dilation, groups
    )
    return _gaussian_draws(
        mean, var, shared, samples, out_rows, bias_variance=bias is not None
    )


def conv_flipout(
    input: Tensor,
    weight: tuple[Tensor, Tensor],
    bias: tuple[Tensor, Tensor] | None,
    stride: Sequence[int],
    padding: str | Sequence[int],
    dilation: Sequence[int],
    groups: int,
    samples: int,
    batch_size: int | None,
) -> Tensor:
    """Flipout for convolutions (see :func:`linear_flipout`).

    Signs are flipped per example and particle over input and output channels
    and shared by all spatial locations of the example, so every location sees
    the same filter bank: the joint distribution of an example's outputs equals
    that of drawn filters.

    Example:
        >>> import torch
        >>> w = (torch.zeros(4, 2, 3, 3), torch.ones(4, 2, 3, 3))
        >>> x = torch.randn(2, 2, 8, 8)
        >>> one = (1, 1)
        >>> conv_flipout(x, w, None, one, one, one, 1, samples=3, batch_size=2).shape
        torch.Size([6, 4, 8, 8])
    """
    _check_moments(weight, bias, "conv_flipout")
    dims = len(stride)
    op = _CONV[dims]
    input = _batch_rows(input, samples, batch_size)
    shared, out_rows = _rows(input, samples, batch_size)
    mean = op(
        input,
        weight[0],
        None if bias is None else bias[0],
        stride,
        padding,
        dilation,
        groups,
    )
    if shared:
        mean = _fold_shared(mean, samples)
        h = _fold_shared(input, samples)
    else:
        h = input
    spatial_ones = (1,) * dims
    sign_in = _random_signs((out_rows, input.shape[1], *spatial_ones), h)
    delta = weight[1] * torch.randn(
        (samples, *weight[1].shape), dtype=h.dtype, device=h.device
    )
    noise = conv(
        h * sign_in, delta, None, stride, padding, dilation, groups, batch_size=None
    )
    sign_out = _random_signs((out_rows, noise.shape[1], *spatial_ones), h)
    out = mean + noise * sign_out
    if bias is not None:
        eps = torch.randn(
            (samples, 1, bias[1].shape[0]), dtype=h.dtype, device=h.device
        )
        # One bias draw per particle, shared by the particle's examples.
        per_particle = out_rows // samples
        bias_noise = (bias[1] * eps).transpose(0, 1).expand(per_particle, samples, -1)
        out = out + bias_noise.reshape(out_rows, bias[1].shape[0], *spatial_ones)
    return out.to(mean.dtype)  # under autocast, as linear_flipout's
