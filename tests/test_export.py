from __future__ import annotations

import math

import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from torch import nn
from torch.nn.utils import prune

import pyrolite_bnn as bnn
from pyrolite_bnn.export import DeterministicNetwork


class Net(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv = bnn.VIConv2d(1, 2, 3, padding=1, padding_mode="reflect")
        self.flat = nn.Flatten()
        self.block = bnn.VIResidualConnection(bnn.VILinear(32, 32), nn.Tanh())
        self.head = bnn.VILinear(32, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.flat(torch.relu(self.conv(x)))))


def _widen(net: nn.Module) -> None:
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("rho_unconstrained"):
                p.fill_(0.0)


def test_custom_network_matches_posterior_mean_prediction() -> None:
    net = Net()
    _widen(net)  # wide posteriors: sampling would be visibly different
    x = torch.randn(5, 1, 4, 4)
    plain = bnn.to_deterministic(net)
    assert not any(
        isinstance(m, bnn.VIModule) for m in plain.modules() if m is not plain.network
    )  # type: ignore[union-attr]
    mean = bnn.predict(net, x, bnn.Categorical(), mode="mean").samples[0]
    torch.testing.assert_close(plain(x), mean, rtol=1e-6, atol=1e-6)
    assert net(x).shape == (10, 5, 3)  # the original is untouched


class TwoHeads(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = bnn.VILinear(3, 4)

    def forward(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
        h = self.body(x)
        return {"heads": (h, h.sum(-1)), "scale": (h.exp(),)}


def test_custom_network_with_nested_outputs_drops_every_particle_dimension() -> None:
    """Each output tensor of the deterministic network is ``(B, ...)`` like a
    torch module's (tuple outputs kept ``(1, B, ...)`` before)."""
    net = TwoHeads()
    x = torch.randn(5, 3)
    out = bnn.to_deterministic(net)(x)
    mean = net.body.posterior["weight"].loc
    bias = net.body.posterior["bias"].loc
    expected = x @ mean.T + bias
    torch.testing.assert_close(out["heads"][0], expected)
    assert out["heads"][1].shape == (5,)
    assert out["scale"][0].shape == (5, 4)


def test_sequential_becomes_pure_torch() -> None:
    net = bnn.VISequential(bnn.VILinear(3, 4), nn.ReLU(), bnn.VILinear(4, 1))
    plain = bnn.to_deterministic(net)
    assert isinstance(plain, nn.Sequential)
    assert isinstance(plain[0], nn.Linear)
    torch.testing.assert_close(plain[0].weight, net[0].posterior["weight"].loc.detach())


def test_autoguide_medians_are_used() -> None:
    net = bnn.VILinear(3, 2)
    net.guide = AutoNormal(net.prior_model, init_loc_fn=net.init_loc_fn)
    with torch.no_grad():
        net.guide.inner.locs.weight.add_(1.0)
    plain = bnn.to_deterministic(net)
    torch.testing.assert_close(plain.weight, net.guide.median()["weight"])


class Decoder(bnn.VIModule):
    """Every new layer kind: embedding, module list, transposed convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = bnn.VIEmbedding(6, 8, padding_idx=0)
        self.blocks = bnn.VIModuleList([bnn.VILinear(8, 8), nn.Tanh()])
        self.up = bnn.VIConvTranspose1d(8, 2, 3, stride=2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        for block in self.blocks:
            h = block(h)
        return self.up(h.transpose(1, 2)).flatten(1)


def test_new_layers_export_to_pure_torch() -> None:
    net = Decoder()
    _widen(net)
    tokens = torch.tensor([[1, 2, 0, 5], [3, 0, 0, 4]])
    plain = bnn.to_deterministic(net)
    inner = plain.network  # type: ignore[union-attr]
    assert isinstance(inner.embed, nn.Embedding)
    assert isinstance(inner.blocks, nn.ModuleList)
    assert isinstance(inner.up, nn.ConvTranspose1d)
    assert not any(isinstance(m, bnn.VIModule) for m in inner.children())
    mean = bnn.predict(net, tokens, bnn.Normal(scale=1.0), mode="mean").samples[0]
    torch.testing.assert_close(plain(tokens), mean, rtol=1e-6, atol=1e-6)


def test_residual_is_still_exported_here() -> None:
    from pyrolite_bnn.export import Residual

    block = bnn.VIResidualConnection(bnn.VILinear(3, 3), nn.Tanh())
    assert isinstance(bnn.to_deterministic(block), Residual)


def test_rejects_a_module_without_bayesian_layers() -> None:
    with pytest.raises(
        TypeError, match=r"holding bnn layers\), got Linear without any"
    ):
        bnn.to_deterministic(nn.Linear(2, 2))


def test_rejects_what_is_no_module() -> None:
    """A string raised "'str' object has no attribute '_modules'"."""
    with pytest.raises(
        TypeError, match=r"to_deterministic needs a network .* got str$"
    ):
        bnn.to_deterministic("model")  # type: ignore[arg-type]


def test_plain_container_of_bayesian_layers_becomes_pure_torch() -> None:
    """A plain network (documented) was refused: "needs a bnn.VIModule"."""
    torch.manual_seed(0)
    shared = bnn.VILinear(4, 4, variational=bnn.MeanFieldNormal(init_scale=0.3))
    net = nn.Sequential(
        bnn.VILinear(3, 4), nn.ReLU(), shared, nn.Tanh(), shared, _ConvHead()
    )
    plain = bnn.to_deterministic(net)
    assert not any(isinstance(m, bnn.VIModule) for m in plain[:5].modules())
    assert plain[2] is plain[4]  # a layer at two positions stays one layer
    assert isinstance(plain[5], DeterministicNetwork)
    assert isinstance(net[0], bnn.VILinear)  # the network itself is unchanged
    x = torch.randn(5, 3)
    mean = bnn.predict(net, x, bnn.Normal(1.0), mode="mean").samples[0]
    with torch.no_grad():
        torch.testing.assert_close(plain(x), mean, rtol=0, atol=0)


class _ConvHead(bnn.VIModule):
    """A custom network as the last layer of a plain one."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = bnn.VILinear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).tanh()  # type: ignore[no-any-return]


@pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)`:UserWarning")
def test_compiled_network_exports_its_network() -> None:
    """It raised "needs a bnn.VIModule, got OptimizedModule"."""
    net = bnn.VISequential(bnn.VILinear(3, 4), nn.ReLU(), bnn.VILinear(4, 1))
    compiled = torch.compile(net, backend="eager")  # eager backend: quick
    x = torch.randn(5, 3)
    with torch.no_grad():
        compiled(x)
    plain = bnn.to_deterministic(compiled)
    assert isinstance(plain, nn.Sequential)
    mean = bnn.predict(net, x, bnn.Normal(scale=1.0), mode="mean").samples[0]
    torch.testing.assert_close(plain(x), mean, rtol=1e-6, atol=1e-6)


class _ConvNet(bnn.VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv = bnn.VIConv2d(1, 4, 3, padding=1)
        self.fc = bnn.VILinear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))  # type: ignore[no-any-return]


def test_export_of_a_custom_network_draws_nothing() -> None:
    """Its layers are plain: no random variables, no use of the generator."""
    torch.manual_seed(0)
    model = _ConvNet()
    plain = bnn.to_deterministic(model)
    assert isinstance(plain, DeterministicNetwork)
    assert plain.network.random_variables() == []
    x = torch.randn(4, 1, 8, 8)
    state = torch.get_rng_state()
    out = plain(x)
    assert torch.equal(state, torch.get_rng_state())
    mean = bnn.predict(model, x, bnn.Categorical(), mode="mean").samples[0]
    torch.testing.assert_close(out, mean, rtol=0, atol=0)
    posterior = bnn.laplace(model, x, torch.randint(0, 3, (4,)), bnn.Categorical())
    assert posterior.predict(x).probs.shape == (4, 3)


class _PlainBody(bnn.VIModule):
    """Bayesian layers inside a plain torch container (README: supported)."""

    def __init__(self) -> None:
        super().__init__()
        wide = bnn.MeanFieldNormal(init_scale=0.3)
        self.body = nn.Sequential(bnn.VILinear(3, 3, variational=wide), nn.Tanh())
        self.heads = nn.ModuleList([bnn.VILinear(3, 2, variational=wide)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads[0](self.body(x))


def test_layers_inside_plain_containers_become_deterministic() -> None:
    """They stayed Bayesian: the "deterministic" copy drew new weights per call."""
    torch.manual_seed(0)
    x = torch.randn(5, 3)
    for net in (
        _PlainBody(),
        bnn.VISequential(nn.Sequential(bnn.VILinear(3, 4), nn.ReLU())),
    ):
        plain = bnn.to_deterministic(net)
        assert not any(
            isinstance(m, bnn.VIModule) and m.declared_variables()
            for m in plain.modules()
        )
        mean = bnn.predict(net, x, bnn.Normal(1.0), mode="mean").samples[0]
        with torch.no_grad():
            torch.testing.assert_close(plain(x), mean)


class _Classifier(nn.Module):
    """A torch model with dropout inside its layers (a Transformer encoder)."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.5, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.encoder(x).mean(1))
        return out


@pytest.mark.parametrize("modes", ["eval", "train with an eval encoder"])
def test_convert_and_export_keep_every_modules_mode(modes: str) -> None:
    """Copies keep each module's train/eval mode: an exported eval-mode model
    runs no dropout (the rebuilt torch layers started in training mode)."""
    model = _Classifier().eval()
    if modes != "eval":
        model.train()
        model.encoder.eval()
    expected = {path: m.training for path, m in model.named_modules()}
    converted = bnn.convert(model)
    plain = bnn.to_deterministic(converted)
    for network in (converted, plain):
        for path, module in network.named_modules():
            if path in expected:
                assert module.training == expected[path], path
    if modes == "eval":
        x = torch.randn(4, 5, 8)
        with torch.no_grad():
            torch.testing.assert_close(plain(x), plain(x), rtol=0, atol=0)
            torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-5)


def test_exporting_leaves_the_random_number_generator_alone() -> None:
    """torch initialised the plain layers before their weights were copied in:
    an export from a training callback changed the rest of the run."""
    net = bnn.VISequential(bnn.VILinear(3, 8), nn.ReLU(), bnn.VILinear(8, 2))
    x, y = torch.randn(10, 3), torch.randn(10)
    state = torch.get_rng_state()
    bnn.to_deterministic(net)
    bnn.laplace(net, x, y.unsqueeze(1).expand(10, 2), bnn.Normal(1.0))
    assert torch.equal(state, torch.get_rng_state())


def test_plain_container_exports_the_weights_its_calls_draw() -> None:
    """A plain container runs all its layers from the generated guide, also a
    layer with an assigned guide of its own: the export read that layer's
    assigned (here untrained) guide instead and disagreed with
    ``predict(mode="mean")``."""
    from pyro.infer.autoguide import AutoNormal

    torch.manual_seed(0)
    first, second = bnn.VILinear(3, 4), bnn.VILinear(4, 2)
    first.guide = AutoNormal(first.prior_model, init_loc_fn=first.init_loc_fn)
    with torch.no_grad():  # training moved the generated posterior, not AutoNormal
        first.posterior["weight"].loc_unconstrained.add_(0.5)
    net = nn.Sequential(first, nn.Tanh(), second)
    x = torch.randn(5, 3)
    mean = bnn.predict(net, x, bnn.Normal(1.0), mode="mean").samples[0]
    with torch.no_grad():
        torch.testing.assert_close(bnn.to_deterministic(net)(x), mean)


class SkipNet(bnn.VIModule):
    """A deterministic stem beside a Bayesian conv (``bnn.match_particles``), a
    Bayesian linear head: the how-to's skip-connection pattern."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.conv = bnn.VIConv2d(2, 2, 3, padding=1)
        self.head = bnn.VILinear(4 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.stem(x)
        h = torch.relu(self.conv(e))
        cat = torch.cat([bnn.match_particles(e, h), h], 1)
        return self.head(cat.flatten(1))  # type: ignore[no-any-return]


# torch's own note on its tracer; a TracerWarning of the library's stays an error.
TRACER_DEPRECATED = pytest.mark.filterwarnings(
    "ignore:`torch.jit.trace[a-z_]*` is deprecated:DeprecationWarning"
)


@TRACER_DEPRECATED
def test_a_custom_network_with_a_skip_traces_without_reading_values() -> None:
    """torch.jit.trace of the copy read the input's finiteness check
    (``float(x.sum())``), the inputs' batch sizes and match_particles' row
    counts into Python: TracerWarnings "might cause the trace to be
    incorrect" (errors here), the check a constant of the trace. The trace
    runs another batch size as the copy does; the copy still checks its
    input when called."""
    torch.manual_seed(0)
    plain = bnn.to_deterministic(SkipNet())
    traced = torch.jit.trace(plain, (torch.randn(4, 1, 4, 4),))
    x = torch.randn(3, 1, 4, 4)
    torch.testing.assert_close(traced(x), plain(x), rtol=0, atol=1e-6)
    x[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="input 0 of SkipNet contains 1 NaN"):
        plain(x)


def test_a_custom_network_with_a_skip_exports_with_a_dynamic_batch() -> None:
    """torch.export with a dynamic batch failed: match_particles read the
    row counts as ints with one particle ("your code specialized it to be a
    constant (4)"), and the input's finiteness check left its reduction in
    the program (a data-dependent read). The program runs another batch size
    as the copy does and holds the network's operations only."""
    torch.manual_seed(0)
    plain = bnn.to_deterministic(SkipNet())
    program = torch.export.export(
        plain,
        (torch.randn(4, 1, 4, 4),),
        dynamic_shapes=(({0: torch.export.Dim("batch")},),),
    )
    x = torch.randn(3, 1, 4, 4)
    torch.testing.assert_close(program.module()(x), plain(x), rtol=0, atol=1e-6)
    called = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten.sum.default not in called


def test_an_exported_custom_network_loads_without_the_library() -> None:
    """The how-to's route to a library-free artefact of a custom network:
    torch.export of to_deterministic's result, saved and loaded by torch
    alone, gives the same outputs at another batch size. The loading process
    imports neither pyrolite_bnn nor Pyro."""
    import io
    import subprocess
    import sys

    plain = bnn.to_deterministic(Net())
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        plain, (torch.randn(2, 1, 4, 4),), dynamic_shapes=(({0: batch},),)
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    code = (
        "import io, sys, torch; "
        "m = torch.export.load(io.BytesIO(sys.stdin.buffer.read())).module(); "
        "torch.manual_seed(0); x = torch.randn(5, 1, 4, 4); "
        "print(m(x).sum().item(), 'pyrolite_bnn' in sys.modules, 'pyro' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        input=buffer.getvalue(),
        capture_output=True,
        check=True,
    )
    total, library, pyro = run.stdout.decode().split()
    torch.manual_seed(0)
    expected = plain(torch.randn(5, 1, 4, 4)).sum().item()
    assert abs(float(total) - expected) < 1e-5
    assert (library, pyro) == ("False", "False")


def test_frozen_bayesian_weights_export_as_frozen_parameters() -> None:
    """A Bayesian layer frozen with requires_grad_(False) gave trainable plain
    weights (new parameters): laplace(subset="all") then expanded in them."""
    net = bnn.VISequential(
        bnn.VILinear(2, 4), nn.Tanh(), bnn.VILinear(4, 3), bnn.VILinear(3, 1)
    )
    net[0].requires_grad_(False)
    net[2].posterior["bias"].requires_grad_(False)  # one variable of a layer
    plain = bnn.to_deterministic(net)
    trainable = {name: p.requires_grad for name, p in plain.named_parameters()}
    assert trainable == {
        "0.weight": False,
        "0.bias": False,
        "2.weight": True,
        "2.bias": False,
        "3.weight": True,
        "3.bias": True,
    }


def test_frozen_sublayers_of_a_transformer_layer_export_frozen() -> None:
    """Plain children loaded by state (a Transformer layer's norms) too."""
    layer = bnn.VITransformerEncoderLayer(4, 2, dim_feedforward=8, batch_first=True)
    layer.norm1.requires_grad_(False)
    layer.self_attn.requires_grad_(False)
    plain = bnn.to_deterministic(layer)
    frozen = sorted(n for n, p in plain.named_parameters() if not p.requires_grad)
    assert frozen == [
        "norm1.bias",
        "norm1.weight",
        "self_attn.in_proj_bias",
        "self_attn.in_proj_weight",
        "self_attn.out_proj.bias",
        "self_attn.out_proj.weight",
    ]


def test_a_pruned_posterior_is_refused_naming_the_pruning() -> None:
    """Pruning a posterior mean (which the layers read) keeps it as a computed
    tensor, which torch cannot copy: to_deterministic raised torch's
    RuntimeError pointing at weight_norm. It now names the pruned tensor and
    how to make the pruning permanent, as convert does; then it exports the
    pruned means."""
    net = bnn.VISequential(bnn.VILinear(4, 6), nn.Tanh(), bnn.VILinear(6, 2))
    posterior = net[0].posterior["weight"]
    prune.l1_unstructured(posterior, "loc_unconstrained", amount=0.5)
    net(torch.randn(5, 4))  # a training-mode call computes it again
    pattern = (
        r"bnn\.to_deterministic works on a copy.*"
        r"pruning of 0\.posterior\.weight\.loc_unconstrained permanent"
    )
    with pytest.raises(TypeError, match=pattern) as info:
        bnn.to_deterministic(net)
    assert "weight_norm instead" not in str(info.value)
    prune.remove(posterior, "loc_unconstrained")
    plain = bnn.to_deterministic(net)
    torch.testing.assert_close(
        plain[0].weight, posterior.mean().detach(), rtol=0, atol=0
    )
    assert int((plain[0].weight == 0).sum()) == 12


def test_a_plain_decoder_layer_keeps_its_activation_module() -> None:
    """Copying ran torch's ``TransformerDecoderLayer.__setstate__``, which put
    ``F.relu`` in front of the ``nn.GELU()`` of a plain decoder layer inside
    the network: the export computed ReLU, silently."""

    class Net(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.inp = bnn.VILinear(4, 8)
            self.dec = nn.TransformerDecoderLayer(
                8, 2, 16, dropout=0.0, activation=nn.GELU(), batch_first=True
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            return self.dec(h, h)  # type: ignore[no-any-return]

    net = Net().eval()
    x = torch.randn(2, 3, 4)
    plain = bnn.to_deterministic(net)
    assert "activation" not in vars(plain.network.dec)
    with torch.no_grad():
        expected = bnn.predict(net, x, bnn.Normal(scale=1.0), mode="mean").mean
        torch.testing.assert_close(plain(x), expected, rtol=1e-6, atol=1e-6)


class _OwnLayer(bnn.VIModule):
    """A user's Bayesian layer of no registered torch class."""

    def __init__(self) -> None:
        super().__init__()
        self.declare_random_variable("weight", (2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.transpose(-1, -2)


def test_a_layer_without_a_plain_counterpart_is_told_how_to_give_it_one() -> None:
    """The refusal named only ``predict(mode="mean")``; registering the layer
    as a torch class's twin gives it a counterpart (probe newcomer4)."""
    with pytest.raises(TypeError, match=r"registry\.register.*mode='mean'"):
        bnn.to_deterministic(nn.Sequential(_OwnLayer()))
