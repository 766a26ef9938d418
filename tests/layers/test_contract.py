"""Layer contract suite, parametrised over the layer registry.

For every registered Bayesian layer and each of its option sets
(``pyrolite_bnn.layers.registry``): the signature is torch's; at fixed weights
every particle equals the ``torch.nn`` layer (S particles and one, shared and
folded inputs); repr; ``reset_parameters`` is torch's initialisation;
``state_dict`` round trip; float64; gradients reach every parameter; the
PyTorch-style loss equals Pyro's ELBOs; ``to_deterministic``, ``predict(...,
mode="mean")`` and the torch -> Bayesian conversion.

Sequence layers return tuples (``(output, weights)``, ``(output, (h_n,
c_n))``): as the outermost module every tensor of the output is compared; inside
a network (``_Call``) and where a loss needs one tensor, the first one.
"""

from __future__ import annotations

import inspect
from typing import Any

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from swap_flag import swap_flag
from torch import Tensor, nn

import pyrolite_bnn as bnn
from pyrolite_bnn import _particles
from pyrolite_bnn.layers import registry
from pyrolite_bnn.layers.registry import LayerCase, LayerEntry

# torch's own note when building a sequence-first nn.Transformer reference.
pytestmark = pytest.mark.filterwarnings(
    "ignore:enable_nested_tensor is True:UserWarning"
)

ENTRIES = [entry for entry in registry.entries() if entry.cases]
CASES = [(entry, case) for entry in ENTRIES for case in entry.cases]
N = 50  # data set size of the loss


def _id(value: Any) -> str:
    if isinstance(value, LayerEntry):
        return value.bayesian_cls.__name__
    if isinstance(value, LayerCase):
        return str(value)
    return str(value)


parametrize_cases = pytest.mark.parametrize(
    ("entry", "case"), CASES, ids=[f"{e.bayesian_cls.__name__}{c}" for e, c in CASES]
)


def _make(entry: LayerEntry, case: LayerCase, **options: Any) -> bnn.VIModule:
    return entry.bayesian_cls(*case.args, **case.kwargs, **options)


def _widen(module: nn.Module) -> None:
    """Posterior std ~0.3-0.7, so that sampling is visibly random."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("rho_unconstrained"):
                p.uniform_(-1.0, 0.0)


def _tensors(value: Any) -> list[Tensor]:
    """The tensors of a layer's output (tuples and nested tuples), in order."""
    if isinstance(value, tuple | list):
        return [t for item in value for t in _tensors(item)]
    return [] if value is None else [value]


def _first(value: Any) -> Tensor:
    """The main output: the first tensor (a sequence layer's ``output``)."""
    return _tensors(value)[0]


def _call(
    layer: nn.Module, case: LayerCase, x: Tensor, **kwargs: Any
) -> Any:  # the whole output, a tensor or a tuple
    return layer(*(x,) * case.copies, **case.forward_kwargs, **kwargs)


class _Call(bnn.VIModule):
    """``layer(x, ..., **forward_kwargs)`` as a network of one input.

    Returns the layer's first output tensor: inside a network, outputs without
    a leading batch (hidden states ``(layers, B * S, H)``, the attention weights
    of a sequence-first layer) are not the network's to unfold.
    """

    def __init__(self, layer: nn.Module, case: LayerCase) -> None:
        super().__init__()
        self.layer = layer
        self.case = case

    def forward(self, x: Tensor) -> Tensor:
        return _first(_call(self.layer, self.case, x))


def _changed(value: Any) -> Any:
    """Another value of a setting's type (``None``: no obvious other value)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "_changed"
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return tuple(v + 1 for v in value)
    if value is None:
        return 1.0
    return None


# Settings a layer refuses to change once built (no graph key needed).
_FIXED_AT_CONSTRUCTION = {"VIEmbedding": ("padding_idx",)}


@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
def test_every_setting_keys_compiled_graphs_and_cached_facts(entry: LayerEntry) -> None:
    # A compiled loss kept the graph of VIEmbedding.max_norm, VILSTM.dropout or
    # VIMultiheadAttention.dropout after they changed, and a network kept
    # running batch_first=True's estimators after batch_first=False was set:
    # a setting a forward reads must key the graph and make cached facts stale.
    from pyrolite_bnn._pyro_module import structure_version
    from pyrolite_bnn.compiled import _graph_key

    layer = _make(entry, entry.cases[0])
    settings = {
        name: value
        for name, value in vars(layer).items()
        if not name.startswith("_") and name != "training"
    }
    assert {"samples", "return_log_probs"} <= settings.keys()
    for name, value in settings.items():
        other = _changed(value)
        if other is None:
            continue
        key, version = _graph_key(layer), structure_version()
        if name in _FIXED_AT_CONSTRUCTION.get(entry.bayesian_cls.__name__, ()):
            with pytest.raises(AttributeError, match="fixed at construction"):
                setattr(layer, name, other)
            continue
        setattr(layer, name, other)
        assert structure_version() != version, name
        assert _graph_key(layer) != key, name
        setattr(layer, name, value)
        assert _graph_key(layer) == key, name  # the old graph is found again


def test_every_layer_is_registered() -> None:
    registered = {entry.bayesian_cls for entry in registry.entries()}
    for name in bnn.__all__:
        cls = getattr(bnn, name)
        if isinstance(cls, type) and issubclass(cls, bnn.VIModule):
            if cls is bnn.VIModule:
                continue
            assert cls in registered, name
    for entry in registry.entries():
        assert registry.for_torch(entry.torch_cls) is entry
        assert registry.for_bayesian(entry.bayesian_cls) is entry


@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
def test_signature_matches_torch(entry: LayerEntry) -> None:
    ours = inspect.signature(entry.bayesian_cls.__init__).parameters
    theirs = _torch_parameters(entry.torch_cls)
    # torch lets device/dtype be positional too; here they are keyword-only.
    shared = [
        (name, p.default)
        for name, p in theirs.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD and name not in ("device", "dtype")
    ]
    positional = [
        (name, p.default)
        for name, p in ours.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    assert positional == shared
    keyword_only = [n for n, p in ours.items() if p.kind is p.KEYWORD_ONLY]
    assert keyword_only == ["prior", "variational", "estimator", "device", "dtype"]
    assert [ours[n].default for n in keyword_only] == [None, None, "auto", None, None]


# Arguments of torch's RNNBase that a subclass fixes (mode) or refuses.
_NOT_ARGUMENTS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.LSTM: ("mode",),
    nn.GRU: ("mode", "proj_size"),  # torch's GRU raises for proj_size
}


def _torch_parameters(cls: type[nn.Module]) -> dict[str, inspect.Parameter]:
    """The torch class's constructor arguments.

    ``nn.LSTM``/``nn.GRU`` take ``*args``: their arguments are those of the
    first base class that names them (``RNNBase``) but the ones the class
    fixes or refuses.
    """
    for base in cls.__mro__:
        parameters = inspect.signature(base.__init__).parameters  # type: ignore[misc]
        if not any(p.kind is p.VAR_POSITIONAL for p in parameters.values()):
            drop = _NOT_ARGUMENTS.get(cls, ())
            return {k: p for k, p in parameters.items() if k not in drop}
    raise AssertionError(f"no signature for {cls}")


def _fixed_weights(layer: bnn.VIModule, samples: int) -> dict[str, Tensor]:
    return {
        v.site: torch.randn(samples, 1, *v.shape) * 0.5
        for v in layer.random_variables()
    }


def _run_with(
    layer: bnn.VIModule,
    x: Tensor,
    weights: dict[str, Tensor],
    samples: int,
    case: LayerCase | None = None,
) -> Any:
    """``layer`` (a ``_Call``, or the layer itself with its ``case``) at ``weights``."""
    with poutine.trace():  # a handler makes the network a plain Pyro model
        conditioned = poutine.condition(layer, data=weights)
        if case is None:
            return conditioned(x, samples=samples)
        return _call(conditioned, case, x, samples=samples)


def _torch_at(
    entry: LayerEntry, layer: bnn.VIModule, weights: dict[str, Tensor], s: int
) -> nn.Module:
    """The torch layer with the weights of particle ``s`` (sublayers' too).

    ``weights`` are keyed by site relative to ``layer``.
    """
    own = layer.declared_variables()
    if entry.build_torch is None:  # the layer's own variables, through its hooks
        plain = entry.to_torch(layer, {n: weights[n][s, 0] for n in own})
    else:  # a container (no variables of its own)
        plain = bnn.to_deterministic(layer)
    assert type(plain) is entry.torch_cls
    with torch.no_grad():  # the sublayers' variables, named by torch's paths
        for v in layer.random_variables():
            if v.site not in own:
                plain.get_parameter(v.site).copy_(weights[v.site][s, 0])
    return plain


def _inside(weights: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Weights of a network keyed relative to its submodule at ``prefix``."""
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


@parametrize_cases
def test_equals_torch_per_particle(entry: LayerEntry, case: LayerCase) -> None:
    """The outermost layer: every output tensor, for S particles and one."""
    layer = _make(entry, case)
    x = case.make_input()
    samples = 3
    weights = _fixed_weights(layer, samples)
    out = _tensors(_run_with(layer, x, weights, samples, case))
    for s in range(samples):
        with torch.no_grad():
            expected = _tensors(_call(_torch_at(entry, layer, weights, s), case, x))
        assert len(out) == len(expected)
        for got, want in zip(out, expected, strict=True):
            torch.testing.assert_close(got[s], want, rtol=1e-5, atol=1e-5)
    one = {k: v[:1] for k, v in weights.items()}
    single = _tensors(_run_with(layer, x, one, 1, case))
    with torch.no_grad():
        expected = _tensors(_call(_torch_at(entry, layer, weights, 0), case, x))
    for got, want in zip(single, expected, strict=True):
        assert got.shape == (1, *want.shape)
        torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-5)


def _per_particle(value: Any, samples: int) -> Any:
    """Every tensor of an input (args, kwargs) expanded to ``(S, ...)``."""
    if isinstance(value, Tensor):
        return value.expand(samples, *value.shape)
    if isinstance(value, tuple | list):
        return type(value)(_per_particle(item, samples) for item in value)
    if isinstance(value, dict):
        return {key: _per_particle(item, samples) for key, item in value.items()}
    return value


@parametrize_cases
def test_drawn_networks_equal_torch_per_particle(
    entry: LayerEntry, case: LayerCase
) -> None:
    """``bnn.draw_networks``: every call runs the same networks, each the torch
    layer at its drawn weights (every output tensor), and ``each`` with the
    inputs repeated per network equals the shared call."""
    layer = _make(entry, case)
    _widen(layer)  # draws visibly different between particles and calls
    if any(isinstance(m, nn.Dropout) for m in layer.modules()):
        layer.eval()  # dropout's masks would differ between calls
    x = case.make_input()
    samples = 3
    nets = bnn.draw_networks(layer, samples)
    weights = {site: w.unsqueeze(1) for site, w in nets.weights().items()}
    args = (x,) * case.copies
    out = _tensors(nets(*args, **case.forward_kwargs))
    again = _tensors(nets(*args, **case.forward_kwargs))
    for s in range(samples):
        with torch.no_grad():
            expected = _tensors(_call(_torch_at(entry, layer, weights, s), case, x))
        assert len(out) == len(expected)
        for got, repeat, want in zip(out, again, expected, strict=True):
            torch.testing.assert_close(got[s], want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(repeat[s], want, rtol=1e-5, atol=1e-5)
    each = _tensors(
        nets.each(
            *_per_particle(args, samples),
            **_per_particle(case.forward_kwargs, samples),
        )
    )
    for got, want in zip(each, out, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _batch_dim(module: nn.Module) -> int:
    """Where ``module``'s input has its batch: 1 for torch's sequence-first layers."""
    flags = [m.batch_first for m in module.modules() if hasattr(m, "batch_first")]
    return 0 if all(flags) else 1


@parametrize_cases
@pytest.mark.parametrize("samples", [1, 3])
def test_empty_batch_gives_empty_outputs(
    entry: LayerEntry, case: LayerCase, samples: int
) -> None:
    """A batch of size 0 gives torch's (empty) output shapes with ``S`` in front.

    In training mode: torch's attention fast path (eval) returns no weights.
    """
    layer = _make(entry, case)
    x = case.make_input()
    x = x.narrow(_batch_dim(layer), 0, 0)
    with torch.no_grad():
        expected = _tensors(_call(bnn.to_deterministic(layer), case, x))
        got = _tensors(_call(layer, case, x, samples=samples))
    assert [t.shape for t in got] == [(samples, *t.shape) for t in expected]


class _PerParticleInput(nn.Module):
    """Turns a shared input into a folded one that differs between particles.

    Real inputs are scaled by ``s + 1``; indices shifted by ``s`` (mod ``V``).
    """

    def __init__(self, samples: int, index_range: int | None) -> None:
        super().__init__()
        self.samples, self.index_range = samples, index_range

    def transform(self, x: Tensor, s: int) -> Tensor:
        if self.index_range is None:
            return x * (s + 1)
        return (x + s) % self.index_range

    def forward(self, x: Tensor) -> Tensor:
        # Stands for a Bayesian layer before the one tested: the first tensor a
        # Bayesian layer reads in a call is otherwise known to be unfolded.
        state = _particles.current()
        assert state is not None
        state.classified[0] = True
        parts = [self.transform(x, s) for s in range(self.samples)]
        return torch.stack(parts, 1).reshape(x.shape[0] * self.samples, *x.shape[1:])


@parametrize_cases
def test_folded_input_equals_torch(entry: LayerEntry, case: LayerCase) -> None:
    """Inside a network, after another Bayesian layer, inputs are folded."""
    samples = 3
    fold = _PerParticleInput(samples, case.index_range)
    inner = _make(entry, case)
    call = _Call(inner, case)
    net = bnn.VISequential(fold, call)
    x = case.make_input()
    weights = _fixed_weights(net, samples)
    out = _run_with(net, x, weights, samples)
    for s in range(samples):
        plain = _torch_at(entry, inner, _inside(weights, "1.layer."), s)
        with torch.no_grad():
            expected = _first(_call(plain, case, fold.transform(x, s)))
        torch.testing.assert_close(out[s], expected, rtol=1e-5, atol=1e-5)


@parametrize_cases
def test_repr_is_torch_repr(entry: LayerEntry, case: LayerCase) -> None:
    layer = _make(entry, case)
    reference = entry.torch_cls(*case.args, **case.kwargs)
    options = _make(entry, case, prior=bnn.NormalPrior(0.0, 0.5), estimator="reparam")
    if next(reference.children(), None) is not None:
        # torch prints a layer with sublayers (attention, Transformer) as its
        # children only; ours also prints its own constructor arguments, so
        # here the check is the class and every child under torch's name.
        assert repr(layer).startswith(f"VI{entry.torch_cls.__name__}(")
        for name, _ in reference.named_children():
            assert f"({name}): " in repr(layer), name
        assert "estimator='reparam'" in repr(options)
        return
    assert repr(layer) == "VI" + repr(reference)
    assert repr(options) == (
        "VI" + repr(reference)[:-1] + ", prior=NormalPrior(loc=0, scale=0.5), "
        "estimator='reparam')"
    )


@pytest.mark.parametrize(
    "entry", ENTRIES, ids=[e.bayesian_cls.__name__ for e in ENTRIES]
)
def test_repr_on_the_meta_device(entry: LayerEntry) -> None:
    """As torch's layers do; the priors' numbers, unknown there, print as ``?``
    (it raised: ``Tensor.item() cannot be called on meta tensors``)."""
    case = entry.cases[0]
    with torch.device("meta"):
        layer = _make(entry, case, prior=bnn.NormalPrior(0.0, 0.5))
    on_cpu = repr(_make(entry, case, prior=bnn.NormalPrior(0.0, 0.5)))
    assert repr(layer) == on_cpu.replace(
        "NormalPrior(loc=0, scale=0.5)", "NormalPrior(loc=?, scale=?)"
    )
    assert "NormalPrior(loc=?, scale=?)" in repr(layer)


def _weights_of(
    entry: LayerEntry, reference: nn.Module, layer: bnn.VIModule
) -> dict[str, Tensor]:
    """The value of each of ``layer``'s variables (by site) in the torch layer.

    The layer's own variables through its entry's hooks, its sublayers' by
    torch's parameter path.
    """
    own = layer.declared_variables()
    values = dict(entry.means_from(reference, layer)) if own else {}
    for v in layer.random_variables():
        if v.site not in own:
            values[v.site] = reference.get_parameter(v.site)
    return values


@parametrize_cases
def test_reset_parameters_is_torch_init(entry: LayerEntry, case: LayerCase) -> None:
    """Seeded, the posterior means start at the seeded torch layer's weights."""
    init_scale = 0.02
    family = bnn.MeanFieldNormal(init_scale=init_scale)
    torch.manual_seed(1)
    layer = _make(entry, case, variational=family)
    torch.manual_seed(1)
    reference = entry.torch_cls(*case.args, **case.kwargs)
    expected = _weights_of(entry, reference, layer)

    def check() -> None:
        variables = {v.site: v.posterior for v in layer.random_variables()}
        assert set(expected) == set(variables)
        for name, mean in expected.items():
            posterior = variables[name]
            torch.testing.assert_close(posterior.loc, mean, rtol=0, atol=0)
            scale = posterior.scale()  # type: ignore[operator]
            torch.testing.assert_close(
                scale, torch.full_like(scale, init_scale), rtol=1e-5, atol=0
            )

    check()
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(3.0)
    torch.manual_seed(1)
    layer.reset_parameters()
    check()


def _materialise_module_by_module(module: nn.Module) -> None:
    """FSDP's deferred initialisation of a model built on the meta device.

    Breadth first, each module that holds tensors itself:
    ``to_empty(recurse=False)``, then its ``reset_parameters()`` (FSDP's
    ``_materialize_meta_module``, and the usual ``param_init_fn``). The fresh
    memory holds NaN (floating) or -7, which uninitialised memory may hold,
    so that a tensor no reset writes is seen (given by ``to_empty`` itself:
    values written after it would be a mean to keep).
    """

    def garbage(t: torch.Tensor, **options: Any) -> torch.Tensor:
        fill = float("nan") if t.is_floating_point() else -7
        return torch.full_like(t, fill, **options)

    order, queue = [], [module]
    while queue:
        current = queue.pop(0)
        order.append(current)
        queue.extend(current.children())
    for current in order:
        if not [*current.parameters(recurse=False), *current.buffers(recurse=False)]:
            continue
        with pytest.MonkeyPatch.context() as patched:
            patched.setattr(torch, "empty_like", garbage)
            current.to_empty(device="cpu", recurse=False)
        current.reset_parameters()  # type: ignore[operator]


@parametrize_cases
def test_deferred_initialisation_module_by_module(
    entry: LayerEntry, case: LayerCase
) -> None:
    """FSDP resets each module holding tensors on its own, the posteriors
    without their layer: the means kept uninitialised memory (1e37, NaN).
    Now every tensor is the one of a normal build: priors and scales equal,
    means drawn as the layer draws them (the same numbers, seeded, where
    FSDP's breadth-first order is the layer's: no sublayers)."""
    init_scale = 0.02
    options = {
        "variational": bnn.MeanFieldNormal(init_scale=init_scale),
        "prior": bnn.NormalPrior(0.1, 0.7),
    }
    torch.manual_seed(3)
    reference = _make(entry, case, **options)
    with torch.device("meta"):
        layer = _make(entry, case, **options)
    torch.manual_seed(3)
    _materialise_module_by_module(layer)
    got, want = layer.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    composite = any(
        isinstance(m, bnn.VIModule) and m is not layer for m in layer.modules()
    )
    for key, value in want.items():
        if not isinstance(value, Tensor):
            continue
        assert bool(torch.isfinite(got[key]).all()), key
        if key.endswith("loc_unconstrained") and composite:
            # drawn in another order: the same initialisation, other numbers
            assert bool((got[key] == 0).all()) == bool((value == 0).all()), key
            assert got[key].abs().max() <= value.abs().max() * 3 + 1e-6, key
        else:
            torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)


@parametrize_cases
def test_forward_on_the_meta_device_infers_the_output_shapes(
    entry: LayerEntry, case: LayerCase
) -> None:
    """As torch's layers allow (shape inference without memory): VILSTM/VIGRU
    failed (no autocast for the meta device) and VIEmbedding too (its index
    check read the values, its row draw needs them)."""
    x = case.make_input()
    expected = [t.shape for t in _tensors(_call(_make(entry, case), case, x))]
    with torch.device("meta"):
        layer = _make(entry, case)
        out = _tensors(_call(layer, case, x.to("meta")))
    assert all(t.is_meta for t in out)
    assert [t.shape for t in out] == expected


@parametrize_cases
def test_state_dict_round_trip(entry: LayerEntry, case: LayerCase) -> None:
    layer = _make(entry, case, prior=bnn.NormalPrior(0.1, 0.7))
    _widen(layer)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("loc_unconstrained"):
                p.add_(torch.randn_like(p))
    copy = _make(entry, case, prior=bnn.NormalPrior(0.1, 0.7))
    copy.load_state_dict(layer.state_dict())
    x = case.make_input()
    pyro.set_rng_seed(5)
    expected = _tensors(_call(layer, case, x, samples=3))
    pyro.set_rng_seed(5)
    got = _tensors(_call(copy, case, x, samples=3))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@parametrize_cases
@pytest.mark.parametrize("how", ["dtype=", ".double()"])
def test_float64(entry: LayerEntry, case: LayerCase, how: str) -> None:
    if how == "dtype=":
        layer = _make(entry, case, dtype=torch.float64)
    else:
        layer = _make(entry, case).double()
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    assert all(b.dtype == torch.float64 for b in layer.buffers())
    x = case.make_input(dtype=torch.float64)
    out = _call(layer, case, x, samples=2)
    assert all(t.dtype == torch.float64 for t in _tensors(out))
    # Fixed float64 weights: equal to the float64 torch layer to 1e-12.
    net = _Call(layer, case)
    weights = {k: v.double() for k, v in _fixed_weights(net, 2).items()}
    out = _run_with(net, x, weights, 2)
    for s in range(2):
        with torch.no_grad():
            plain = _torch_at(entry, layer, _inside(weights, "layer."), s)
            expected = _first(_call(plain, case, x))
        assert expected.dtype == torch.float64
        torch.testing.assert_close(out[s], expected, rtol=1e-12, atol=1e-12)


def _doubled_without_swapping(layer: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """``layer`` holding ``state``, made float64 with torch's swap flag off."""
    with swap_flag(False):
        layer.load_state_dict(state)
        return layer.double()


def _outputs(layer: nn.Module, case: LayerCase, x: Tensor) -> list[Tensor]:
    pyro.set_rng_seed(5)
    return _tensors(_call(layer, case, x, samples=3))


@parametrize_cases
def test_a_trained_layer_converts_keeping_its_parameters_and_values(
    entry: LayerEntry, case: LayerCase, swap_conversions: bool
) -> None:
    """Under ``torch.__future__.set_swap_module_params_on_conversion(True)``
    (torch's announced default) every conversion of a library layer failed
    ("Couldn't swap MeanFieldNormalPosterior.rho_unconstrained": reading a
    real-valued Pyro parameter leaves a weak reference to itself on it, and
    ``swap_tensors`` refuses a tensor with one; probe falsepos23a). With the
    flag on or off, ``.double()`` of a trained layer keeps its parameter
    objects (the optimizer's state still applies, and it steps on) and gives
    the values and outputs of the conversion with the flag off."""
    layer = _make(entry, case, prior=bnn.NormalPrior(0.1, 0.7))
    _widen(layer)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.01, momentum=0.9)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), N)
    out = _first(_call(layer, case, case.make_input(), samples=2))
    loss_fn(out, _target(out)).backward()
    optimizer.step()
    del out  # a live graph holds tensors torch then refuses to swap
    expected = _doubled_without_swapping(_make(entry, case), layer.state_dict())
    parameters = list(layer.parameters())
    layer.double()
    assert [id(p) for p in layer.parameters()] == [id(p) for p in parameters]
    assert all("momentum_buffer" in optimizer.state[p] for p in parameters)
    got, want = layer.state_dict(), expected.state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    x = case.make_input(dtype=torch.float64)
    for a, b in zip(_outputs(layer, case, x), _outputs(expected, case, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    optimizer.zero_grad()
    out = _first(_call(layer, case, x, samples=2))
    loss_fn.double()(out, _target(out)).backward()
    optimizer.step()


@parametrize_cases
def test_a_layer_built_on_meta_is_materialised_loaded_and_converted(
    entry: LayerEntry, case: LayerCase, swap_conversions: bool
) -> None:
    """``to_empty`` and ``load_state_dict`` swap too under the flag: a meta
    build's materialisation failed the same way, and so did the record of the
    memory ``to_empty`` gave (a weak reference to each tensor). With the flag
    on or off a posterior mean left out of a load is refused where read, and
    the full load, then ``.double()``, gives the source's outputs."""
    source = _make(entry, case, prior=bnn.NormalPrior(0.1, 0.7))
    _widen(source)
    with torch.device("meta"):
        layer = _make(entry, case, prior=bnn.NormalPrior(0.1, 0.7))
    layer.to_empty(device="cpu")
    state = source.state_dict()
    left_out = next(key for key in state if key.endswith("loc_unconstrained"))
    layer.load_state_dict(
        {k: v for k, v in state.items() if k != left_out}, strict=False
    )
    x = case.make_input()
    with pytest.raises(ValueError, match="holds no values: after to_empty"):
        _call(layer, case, x, samples=2)
    layer.load_state_dict(state)
    layer.double()
    expected = _doubled_without_swapping(_make(entry, case), state)
    x = case.make_input(dtype=torch.float64)
    for a, b in zip(_outputs(layer, case, x), _outputs(expected, case, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
@pytest.mark.parametrize(
    "dtype",
    [torch.long, torch.bool, torch.complex64, torch.float8_e4m3fn, "float32"],
    ids=str,
)
def test_a_dtype_that_is_not_real_floating_point_is_refused_naming_it(
    entry: LayerEntry, dtype: object
) -> None:
    """An integer dtype failed with ``torch.finfo() requires a floating point
    input type``; a complex one was accepted and failed at the first call, a
    float8 one with a message about the initial scale."""
    with pytest.raises(TypeError, match=r"^dtype must be a real floating-point"):
        _make(entry, entry.cases[0], dtype=dtype)


# torch's note in Module.to(complex dtype), before it converts anything.
@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")
@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
@pytest.mark.parametrize(
    ("convert", "dtype"),
    [
        (lambda m: m.to(torch.complex64), torch.complex64),
        (lambda m: m.to(dtype=torch.complex128), torch.complex128),
        (lambda m: m.type(torch.complex64), torch.complex64),
        (lambda m: m.to(torch.float8_e4m3fn), torch.float8_e4m3fn),
    ],
    ids=["to-complex64", "to-dtype-complex128", "type-complex64", "to-float8"],
)
def test_a_conversion_to_a_dtype_that_is_not_real_floating_point_is_refused(
    entry: LayerEntry, convert: Any, dtype: torch.dtype
) -> None:
    """``.to(torch.complex64)`` was accepted, every parameter became complex,
    and the first call failed inside torch (``"softplus_cpu" not implemented
    for 'ComplexFloat'``). The conversion is refused, naming the dtype, and
    the layer keeps its tensors and runs as before."""
    case = entry.cases[0]
    layer = _make(entry, case)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(TypeError, match=rf"floating-point tensors {dtype}; .*float32"):
        convert(layer)
    after = layer.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype, key
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, equal_nan=True)
    _call(layer, case, case.make_input(), samples=2)


def _target(out: Tensor) -> Tensor:
    return torch.randn(out.shape[1:], dtype=out.dtype)


@parametrize_cases
def test_gradients_reach_every_parameter(entry: LayerEntry, case: LayerCase) -> None:
    layer = _make(entry, case)
    out = _first(_call(layer, case, case.make_input(), samples=2))
    bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), N)(out, _target(out)).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert bool(p.grad.abs().sum() > 0), name


@parametrize_cases
@pytest.mark.parametrize(
    ("kl", "elbo"), [("mc", Trace_ELBO), ("analytic", TraceMeanField_ELBO)]
)
def test_loss_equals_pyro_elbo(
    entry: LayerEntry, case: LayerCase, kl: str, elbo: type[pyro.infer.ELBO]
) -> None:
    """PyTorch-style loss == Pyro's ELBO / N for the same draws, with gradients."""
    net = _Call(_make(entry, case, estimator="reparam"), case)
    _widen(net)  # KL terms and weight noise both matter
    x = case.make_input()
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), N, kl=kl)  # type: ignore[arg-type]
    pyro.set_rng_seed(3)
    out = net(x, samples=4)
    y = _target(out)
    pyro.set_rng_seed(3)
    ours = loss_fn(net(x, samples=4), y)
    parameters = list(net.parameters())
    g_ours = torch.autograd.grad(ours, parameters)
    pyro.set_rng_seed(3)
    model = loss_fn.pyro_model(net)
    theirs = elbo().differentiable_loss(model, net.guide, x, y, samples=4) / N
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    g_theirs = torch.autograd.grad(theirs, parameters)
    for a, b in zip(g_ours, g_theirs, strict=True):
        # Float32 round-off of sums taken in another order: relative to the
        # largest entry of the gradient, not to each (possibly tiny) entry.
        scale = float(b.abs().max())
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)


@parametrize_cases
def test_to_deterministic_and_mean_prediction(
    entry: LayerEntry, case: LayerCase
) -> None:
    layer = _make(entry, case)
    _widen(layer)  # sampling would be visibly different from the mean
    plain = bnn.to_deterministic(layer)
    assert type(plain) is entry.torch_cls
    own = layer.declared_variables()
    if own:  # the layer's own variables, through its entry's hooks
        means = {name: layer.posterior[name].mean() for name in own}
        for name, value in entry.weights_from(layer, means).items():
            torch.testing.assert_close(getattr(plain, name), value, rtol=0, atol=0)
    for v in layer.random_variables():  # sublayers': torch's parameter paths
        if v.site not in own:
            value = v.posterior.mean()
            torch.testing.assert_close(
                plain.get_parameter(v.site), value, rtol=0, atol=0
            )
    net = _Call(layer, case)
    x = case.make_input()
    mean = bnn.predict(net, x, bnn.Normal(scale=1.0), mode="mean").samples[0]
    with torch.no_grad():
        expected = _first(_call(plain, case, x))
    torch.testing.assert_close(mean, expected, rtol=1e-6, atol=1e-6)
    wrapped = bnn.to_deterministic(net)
    torch.testing.assert_close(wrapped(x), expected, rtol=1e-6, atol=1e-6)


def _assert_same_modes(module: nn.Module, reference: nn.Module) -> None:
    """``module`` has ``reference``'s train/eval mode at every path they share,
    and its root's mode elsewhere (the inference machinery of a layer)."""
    modes = {path: m.training for path, m in reference.named_modules()}
    for path, m in module.named_modules():
        assert m.training == modes.get(path, reference.training), path


@parametrize_cases
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_from_torch_layer(entry: LayerEntry, case: LayerCase, mode: str) -> None:
    """torch -> Bayesian (same arguments, means = weights) -> torch is the identity,
    train/eval modes included."""
    reference = entry.torch_cls(*case.args, **case.kwargs).train(mode == "train")
    if entry.build_bayesian is None:
        layer = entry.to_bayesian(reference, estimator="reparam")
    else:  # a container: its children are converted first
        layer = bnn.convert(reference, estimator="reparam")
    assert type(layer) is entry.bayesian_cls
    for module in layer.modules():  # every layer with variables takes the option
        if isinstance(module, bnn.VIModule) and module.declared_variables():
            assert getattr(module, "estimator") == "reparam"  # noqa: B009
    _assert_same_modes(layer, reference)
    back = bnn.to_deterministic(layer)
    _assert_same_modes(back, reference)
    x = case.make_input()
    with torch.no_grad():
        expected = _tensors(_call(reference, case, x))
        got = _tensors(_call(back, case, x))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(back.get_parameter(name), p, rtol=0, atol=0)


# Sequence layers take several inputs and return tuples, so they are not
# LayerCases: each case is a torch module and its inputs. torch -> Bayesian
# (bnn.convert, through the registry) -> torch (to_deterministic) is the identity.
def _sequence_cases() -> list[tuple[str, nn.Module, tuple[Tensor, ...]]]:
    seq, src, tgt = torch.randn(2, 4, 3), torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    kv = torch.randn(2, 6, 4), torch.randn(2, 6, 6)

    def encoder_layer(**kw: Any) -> nn.TransformerEncoderLayer:
        return nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, **kw)

    def decoder_layer(**kw: Any) -> nn.TransformerDecoderLayer:
        return nn.TransformerDecoderLayer(8, 2, 16, batch_first=True, **kw)

    return [
        ("LSTM-2layers", nn.LSTM(3, 5, 2, batch_first=True, dropout=0.5), (seq,)),
        (
            "LSTM-bidirectional-proj-nobias",
            nn.LSTM(
                3, 6, bias=False, batch_first=True, bidirectional=True, proj_size=2
            ),
            (seq,),
        ),
        (
            "GRU-2layers-bidirectional",
            nn.GRU(3, 5, 2, batch_first=True, bidirectional=True),
            (seq,),
        ),
        (
            "MHA-kdim-vdim-bias_kv-zero_attn",
            nn.MultiheadAttention(
                8,
                2,
                0.1,
                add_bias_kv=True,
                add_zero_attn=True,
                kdim=4,
                vdim=6,
                batch_first=True,
            ),
            (tgt, *kv),
        ),
        (
            "MHA-nobias",
            nn.MultiheadAttention(8, 2, bias=False, batch_first=True),
            (src, src, src),
        ),
        (
            "EncoderLayer-gelu-norm_first",
            encoder_layer(activation="gelu", norm_first=True),
            (src,),
        ),
        ("DecoderLayer-nobias", decoder_layer(bias=False), (tgt, src)),
        (
            "Encoder-norm",
            nn.TransformerEncoder(
                encoder_layer(), 2, nn.LayerNorm(8), enable_nested_tensor=False
            ),
            (src,),
        ),
        ("Decoder", nn.TransformerDecoder(decoder_layer(), 2), (tgt, src)),
        ("Transformer", nn.Transformer(8, 2, 1, 1, 16, batch_first=True), (src, tgt)),
    ]


# torch's own LSTM warns that oneDNN has no projections (the reference module).
@pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning")
@pytest.mark.parametrize(
    ("reference", "inputs"),
    [case[1:] for case in _sequence_cases()],
    ids=[case[0] for case in _sequence_cases()],
)
def test_sequence_layer_round_trip(
    reference: nn.Module, inputs: tuple[Tensor, ...]
) -> None:
    reference.eval()
    entry = registry.for_torch(reference)
    assert entry is not None
    layer = bnn.convert(reference)
    assert type(layer) is entry.bayesian_cls
    for v in layer.random_variables():  # posterior means are torch's weights
        torch.testing.assert_close(
            v.posterior.loc, reference.get_parameter(v.site), rtol=0, atol=0
        )
    _assert_same_modes(layer, reference)
    back = bnn.to_deterministic(layer)
    _assert_same_modes(back, reference)  # no dropout switched back on
    assert type(back) is entry.torch_cls
    assert back.state_dict().keys() == reference.state_dict().keys()
    for (name, a), b in zip(
        back.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    with torch.no_grad():
        expected, got = reference(*inputs), back(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
