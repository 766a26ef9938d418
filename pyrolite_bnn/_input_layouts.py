"""The tensor layouts the Bayesian layers take, and the remedies for the others.

A Bayesian layer runs its input against one weight per particle, folding the
particles into the input's rows: it takes dense (strided) tensors.
:class:`~pyrolite_bnn.VILinear` takes 2-D sparse matrices too (COO, CSR and
CSC, which ``torch.nn.Linear`` trains on). Block-sparse matrices (on CPU, BSR
gives the weight no gradient and BSC no output), sparse tensors of other
shapes and nested tensors (strided or jagged) are refused where a layer reads
its input, before its weights are drawn, with the conversion that makes them
an input; torch's errors deep inside (``Expected result Tensor to be of format
CSR``, ``NestedTensorImpl doesn't support sizes``) said neither. ``predict``,
which cuts its inputs into chunks, names the same conversions for the layouts
it cannot cut (and one chunk, ``batch_size=len(x)``, only for the sparse
matrices a layer takes), and the finiteness checks read the values such tensors store.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor

__all__ = [
    "SPARSE_MATRIX_LAYOUTS",
    "check_input_layout",
    "conversions",
    "described",
    "is_sparse_matrix",
    "shape_text",
    "stored_values",
]

# The sparse layouts torch's F.linear takes as its input, forward and backward
# (on CPU, BSR has no backward to the weight, BSC not even a forward).
SPARSE_MATRIX_LAYOUTS = frozenset(
    {torch.sparse_coo, torch.sparse_csr, torch.sparse_csc}
)

# The call that converts a tensor into each layout.
_CONVERSIONS = {
    torch.sparse_coo: "x.to_sparse_coo()",
    torch.sparse_csr: "x.to_sparse_csr()",
    torch.sparse_csc: "x.to_sparse_csc()",
    torch.strided: "x.to_dense()",
}


def described(tensor: Tensor) -> str:
    """``tensor``'s kind in words: its layout, or that it is a nested tensor.

    Example:
        >>> described(torch.zeros(2, 2).to_sparse())
        'a tensor of layout torch.sparse_coo'
    """
    if tensor.is_nested:
        return f"a nested tensor (layout {tensor.layout})"
    if tensor.layout != torch.strided and tensor.dense_dim() > 0:
        return (
            f"a hybrid sparse tensor (layout {tensor.layout}, "
            f"{tensor.dense_dim()} dense dimension(s))"
        )
    return f"a tensor of layout {tensor.layout}"


def shape_text(tensor: Tensor) -> str:
    """``tensor``'s shape for a message (a strided nested tensor has none).

    Example:
        >>> shape_text(torch.zeros(2, 3).to_sparse())
        '(2, 3)'
    """
    if tensor.is_nested and tensor.layout == torch.strided:
        return f"nested, {tensor.size(0)} components"
    return str(tuple(tensor.shape))


def stored_values(tensor: Tensor) -> Tensor:
    """The values ``tensor`` stores, as one dense tensor (for value checks).

    A sparse tensor's specified elements (the others are zeros) and a nested
    tensor's components, padded with zeros: torch compares neither layout
    with a number (``Could not run 'aten::ne.Scalar' with arguments from the
    'SparseCPU' backend``), and a strided nested tensor has no sum to read.

    Example:
        >>> stored_values(torch.tensor([[0.0, 2.0], [0.0, 0.0]]).to_sparse())
        tensor([2.])
    """
    if tensor.is_nested:
        padded: Tensor = torch.nested.to_padded_tensor(tensor, 0.0)
        return padded
    if tensor.layout == torch.sparse_coo:
        return tensor.coalesce().values()
    if tensor.layout != torch.strided:
        return tensor.values()
    return tensor


def conversions(tensor: Tensor, layouts: Collection[torch.layout]) -> str:
    """The calls that turn ``tensor`` into a tensor of one of ``layouts``.

    A nested tensor is padded into a dense one (its components have other
    lengths); any other tensor is converted, in the order of ``layouts``.

    Example:
        >>> x = torch.zeros(2, 2).to_sparse()
        >>> conversions(x, (torch.sparse_coo, torch.sparse_csr, torch.strided))
        'x.to_sparse_csr() or x.to_dense()'
    """
    if tensor.is_nested:
        return (
            "torch.nested.to_padded_tensor(x, 0.0) (each component padded to "
            "the longest, the padding masked where it matters)"
        )
    calls = [_CONVERSIONS[layout] for layout in layouts if layout != tensor.layout]
    return " or ".join(calls)


def is_sparse_matrix(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a 2-D sparse matrix :class:`~pyrolite_bnn.VILinear` takes.

    One of :data:`SPARSE_MATRIX_LAYOUTS`, not nested, not hybrid (a hybrid
    sparse tensor, ``x.to_sparse(1)``, stores dense rows).

    Example:
        >>> is_sparse_matrix(torch.zeros(2, 2).to_sparse())
        True
        >>> is_sparse_matrix(torch.zeros(2, 2, 2).to_sparse())
        False
    """
    return (
        not tensor.is_nested
        and tensor.dim() == 2
        and tensor.layout in SPARSE_MATRIX_LAYOUTS
        and tensor.dense_dim() == 0
    )


def check_input_layout(
    value: Tensor, owner: str, what: str = "input", *, sparse: bool = False
) -> None:
    """Refuse an input of a layout the layer ``owner`` cannot run.

    Args:
        value: the input.
        owner: the layer's name for the message (e.g. its class name).
        what: which input (``"query"``, ``"h0"``...).
        sparse: whether the layer takes 2-D sparse matrices of
            :data:`SPARSE_MATRIX_LAYOUTS` too (``VILinear``).

    Raises:
        TypeError: naming the layout and the conversions.

    Example:
        >>> x = torch.zeros(3, 2).to_sparse()
        >>> check_input_layout(x, "VILinear", sparse=True)
        >>> try:
        ...     check_input_layout(x, "VIConv1d")
        ... except TypeError as error:
        ...     print(str(error).split(", got ")[1])  # doctest: +ELLIPSIS
        a tensor of layout torch.sparse_coo of 2 dimensions: ... x.to_dense()
    """
    if not value.is_nested and value.layout == torch.strided:
        return
    if sparse and is_sparse_matrix(value):
        return
    layouts: tuple[torch.layout, ...] = (torch.strided,)
    takes = f"a dense (strided) {what}"
    if sparse:
        takes += " or a 2-D sparse COO, CSR or CSC one"
        if value.dim() == 2 and not value.is_nested and value.dense_dim() == 0:
            layouts = (torch.sparse_csr, torch.sparse_coo, torch.strided)
    raise TypeError(
        f"{owner} takes {takes}, got {described(value)} of "
        f"{value.dim()} dimensions: convert it with {conversions(value, layouts)}"
    )
