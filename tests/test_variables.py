from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pyrolite_bnn as bnn
from pyrolite_bnn.variables import UnitLayout


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_grouped_layout_spreads_each_value_to_torchs_output_channel(
    groups: int,
) -> None:
    """A transposed convolution's weight ``(in, out / groups, k)``: output
    channel ``g * out / groups + j`` reads entries ``(i, j)`` of the inputs
    ``i`` of group ``g``. Spread over the weight, unit ``c``'s value ``2^c``
    must come out of torch's ``conv_transpose1d`` (all-one input, kernel 1) as
    ``in / groups * 2^c`` on output channel ``c``."""
    in_channels, out_channels = 2 * groups, 3 * groups
    shape = (in_channels, out_channels // groups, 1)
    layout = UnitLayout(dim=1, groups=groups)
    values = 2.0 ** torch.arange(out_channels, dtype=torch.float64)
    per_unit = values.reshape(layout.per_unit_shape(shape))
    weight = layout.spread(per_unit, shape).expand(shape)
    ones = torch.ones(1, in_channels, 1, dtype=torch.float64)
    out = F.conv_transpose1d(ones, weight, groups=groups)[0, :, 0]
    torch.testing.assert_close(out, in_channels // groups * values, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("layout", "shape", "per_unit"),
    [
        (UnitLayout(), (4, 3, 2), (4, 1, 1)),
        (UnitLayout(dim=1), (4, 3, 2), (1, 3, 1)),
        (UnitLayout(dim=1, groups=2), (4, 3, 2), (2, 1, 3, 1)),
        (UnitLayout(dim=2), (1, 1, 5), (1, 1, 5)),
    ],
)
def test_sum_per_unit_adds_each_units_entries(
    layout: UnitLayout, shape: tuple[int, ...], per_unit: tuple[int, ...]
) -> None:
    assert layout.per_unit_shape(shape) == per_unit
    units = torch.arange(float(torch.Size(per_unit).numel())).reshape(per_unit)
    index = layout.spread(units, shape).expand(shape).long()
    values = torch.randn(shape, dtype=torch.float64)
    expected = torch.stack([values[index == c].sum() for c in range(units.numel())])
    got = layout.sum_per_unit(values)
    assert got.shape == per_unit
    torch.testing.assert_close(got.flatten(), expected)


def test_layouts_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="dim must be an int of at least 0"):
        UnitLayout(dim=-1)
    with pytest.raises(ValueError, match="groups must be an int of at least 1"):
        UnitLayout(groups=0)
    with pytest.raises(ValueError, match=r"dim=2 is not a dimension .* \(3, 4\)"):
        UnitLayout(dim=2).check((3, 4))
    with pytest.raises(ValueError, match="needs dim > 0"):
        UnitLayout(groups=2).check((4, 3))
    with pytest.raises(ValueError, match="divisible by groups"):
        UnitLayout(dim=1, groups=2).check((3, 4))
    UnitLayout(dim=1, groups=2).check((4, 3))


def test_layers_declare_where_their_output_units_lie() -> None:
    """Per-unit priors read it: the transposed convolutions' units are along
    dim 1 of ``(in, out / groups, k...)``, an embedding's are its features,
    attention's ``bias_k``/``bias_v`` ``(1, 1, E)`` their last dimension."""
    layouts = {
        v.site: v.module.unit_layout(v.name)
        for v in bnn.VISequential(
            bnn.VILinear(3, 4),
            bnn.VIConvTranspose2d(4, 6, 3, groups=2),
            bnn.VIEmbedding(5, 3),
            bnn.VIMultiheadAttention(4, 2, add_bias_kv=True),
        ).random_variables()
    }
    assert layouts["1.weight"] == UnitLayout(dim=1, groups=2)
    assert layouts["2.weight"] == UnitLayout(dim=1)
    assert layouts["3.bias_k"] == layouts["3.bias_v"] == UnitLayout(dim=2)
    others = {"1.weight", "2.weight", "3.bias_k", "3.bias_v"}
    assert all(layouts[site] == UnitLayout() for site in layouts.keys() - others)
