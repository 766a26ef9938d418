from __future__ import annotations

import copy
import dataclasses
import gc
import pickle

import pytest
import torch
import torch.nn.functional as F
from pyro.infer.autoguide import AutoNormal

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


def test_posterior_read_warns_when_an_assigned_guide_trains_the_network() -> None:
    """With an assigned guide the layers' posterior modules are unused: reading
    ``variable.posterior`` (the continual-learning recipe's old way to the
    next prior) gave the initial values silently. It must warn, naming the
    guide and ``guide.median()``; the guide's own statistics are the trained
    ones. The default guide reads without a warning (warnings are errors)."""
    default = bnn.VISequential(bnn.VILinear(3, 4), torch.nn.Tanh(), bnn.VILinear(4, 1))
    for variable in default.random_variables():
        assert variable.posterior is variable.module.posterior[variable.name]
    model = bnn.VISequential(bnn.VILinear(3, 4), torch.nn.Tanh(), bnn.VILinear(4, 1))
    model.guide = AutoNormal(model.prior_model, init_loc_fn=model.init_loc_fn)
    with torch.no_grad():  # the guide learns, the layers' modules stay
        for name, parameter in model.guide.named_parameters():
            if "locs" in name:
                parameter.add_(1.0)
    for variable in model.random_variables():
        with pytest.warns(
            UserWarning, match=r"AutoNormal.*guide\.median\(\)"
        ) as caught:
            posterior = variable.posterior
        assert caught[0].filename == __file__  # the user's line
        assert variable.site in str(caught[0].message)
        assert posterior is variable.layer_posterior
    trained = model.guide.median()["0.weight"]
    unused = model.random_variables()[0].layer_posterior.loc
    torch.testing.assert_close(trained, unused.detach() + 1.0, rtol=0, atol=1e-6)
    variable = model.guide.variables()[0]  # the guide's list is the same
    with pytest.warns(UserWarning, match="AutoNormal"):
        _ = variable.posterior
    model.guide = None  # back to the default guide: no warning
    for variable in model.random_variables():
        _ = variable.posterior


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copied_variables_keep_their_network(how: str) -> None:
    """Variables hold their network weakly (a forward record holds them from
    an autograd node); a copy of the variables alone lost its copied network
    at once, and with it the warning on reading ``posterior`` under an
    assigned guide (probe falsepos16)."""
    model = bnn.VISequential(bnn.VILinear(3, 4), torch.nn.Tanh(), bnn.VILinear(4, 1))
    model.guide = AutoNormal(model.prior_model, init_loc_fn=model.init_loc_fn)
    variables = model.random_variables()
    copied = (
        copy.deepcopy(variables)
        if how == "deepcopy"
        else pickle.loads(pickle.dumps(variables))
    )
    gc.collect()
    for variable, original in zip(copied, variables, strict=True):
        assert isinstance(variable.network, bnn.VISequential)
        assert variable.network is not model
        assert variable.site == original.site
        with pytest.warns(UserWarning, match="AutoNormal"):
            _ = variable.posterior


def test_a_replaced_variable_keeps_its_network() -> None:
    """``dataclasses.replace`` built the variable again with the network's
    ``root`` at its default, None: the copy lost its network, and with it the
    warning on reading ``posterior`` under an assigned guide (probe
    falsepos20a). It keeps it now, still weakly; ``root=`` gives another, and a
    replaced copy holds its copied network as the copy did."""
    model = bnn.VISequential(bnn.VILinear(3, 4), torch.nn.Tanh(), bnn.VILinear(4, 1))
    model.guide = AutoNormal(model.prior_model, init_loc_fn=model.init_loc_fn)
    variable = model.random_variables()[0]
    replaced = dataclasses.replace(variable, shared=True)
    assert replaced.network is model
    assert replaced.shared
    assert replaced.site == variable.site
    with pytest.warns(UserWarning, match="AutoNormal"):
        _ = replaced.posterior
    other = bnn.VISequential(bnn.VILinear(3, 4))
    assert dataclasses.replace(variable, root=other).network is other
    copied = dataclasses.replace(copy.deepcopy(variable))
    gc.collect()
    assert isinstance(copied.network, bnn.VISequential)
    assert copied.network is not model
    del model, other
    gc.collect()
    assert replaced.network is None  # held weakly, as the variable it came from
