"""bnn.convert: torch models made Bayesian, MOPED, deterministic branches."""

from __future__ import annotations

import copy
import gc
import io
import pickle
import warnings
import weakref
from typing import Any

import pyro.distributions
import pytest
import torch
from pyro import poutine
from torch import Tensor, nn
from torch.nn.utils import prune

import pyrolite_bnn as bnn
from pyrolite_bnn import vi
from pyrolite_bnn.convert import MOPED_MIN_SCALE, ConvertedNetwork
from pyrolite_bnn.distributions.variational import NormalMoments
from pyrolite_bnn.layers import functional, registry
from pyrolite_bnn.layers.functional import current_batch_size

CLASSES = bnn.Categorical()


class Block(nn.Module):
    """ResNet-like block: conv body, 1x1 skip, linear head."""

    def __init__(self, helper: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()
        )
        self.skip = nn.Conv2d(3, 3, 1)
        self.head = nn.Linear(3 * 4 * 4, 5)
        self.helper = helper

    def forward(self, x: Tensor) -> Tensor:
        body = self.body(x)
        skip = self.skip(x)
        if self.helper:
            skip = bnn.match_particles(skip, body)
        return self.head(torch.relu(body + skip).flatten(1))


class SequenceClassifier(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * (1 + rnn.bidirectional), 3)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class FinalStateClassifier(nn.Module):
    """torch's idiom: classify from the last layer's final hidden state."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, 3)

    def forward(self, x: Tensor) -> Tensor:
        _, final = self.rnn(x)
        h_n = final[0] if isinstance(final, tuple) else final
        return self.head(h_n[-1])


class EncoderClassifier(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x).mean(1))


def _trained(module: nn.Module) -> nn.Module:
    """Non-default norm statistics, so that copying them is tested."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return module.eval()


def _assert_mean_equal(net: bnn.VIModule, module: nn.Module, x: Tensor) -> None:
    prediction = bnn.predict(net.eval(), x, CLASSES, samples=1, mode="mean")
    expected = torch.softmax(module.eval()(x), -1)
    torch.testing.assert_close(prediction.probs, expected, atol=1e-5, rtol=1e-5)


def test_module_left_untouched() -> None:
    module = _trained(Block())
    before = {n: (id(p), p.detach().clone()) for n, p in module.named_parameters()}
    net = bnn.convert(module, moped=0.1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    for name, p in module.named_parameters():
        assert id(p) == before[name][0]
        torch.testing.assert_close(p, before[name][1], atol=0, rtol=0)
    assert all(not isinstance(m, bnn.VIModule) for m in module.modules())


def test_custom_root_is_network_with_original_paths() -> None:
    module = _trained(Block())
    net = bnn.convert(module)
    assert isinstance(net, Block)
    assert isinstance(net, ConvertedNetwork)
    sites = [v.site for v in net.random_variables()]
    assert sites == [
        "body.0.weight",
        "body.0.bias",
        "skip.weight",
        "skip.bias",
        "head.weight",
        "head.bias",
    ]
    assert isinstance(net.body, bnn.VISequential)
    assert type(net.body[1]) is bnn.BatchNorm2d  # normalises each particle alone
    x = torch.randn(4, 3, 4, 4)
    assert net(x, samples=3).shape == (3, 4, 5)
    _assert_mean_equal(net, module, x)


def test_to_deterministic_gives_back_the_module() -> None:
    module = _trained(Block())
    plain = bnn.to_deterministic(bnn.convert(module, moped=0.1))
    assert type(plain) is Block
    assert not any(isinstance(m, bnn.VIModule) for m in plain.modules())
    x = torch.randn(4, 3, 4, 4)
    torch.testing.assert_close(plain.eval()(x), module(x), atol=1e-6, rtol=1e-6)
    assert plain.state_dict().keys() == module.state_dict().keys()


def test_to_deterministic_takes_no_cached_facts_of_the_network() -> None:
    """The root's cached random variables went along: the plain module
    pickled 4 times larger, kept the Bayesian copy alive and needed this
    library to load."""
    module = _trained(Block())
    net = bnn.convert(module, moped=0.1)
    net(torch.randn(2, 3, 4, 4), samples=2)  # the caches are filled
    plain = bnn.to_deterministic(net)
    assert sorted(vars(plain).keys() - vars(module).keys()) == []
    saved = io.BytesIO()
    torch.save(plain, saved)
    assert b"pyrolite_bnn" not in saved.getvalue()


def test_sequential_root_and_mean_prediction() -> None:
    module = nn.Sequential(
        nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3)
    ).eval()
    net = bnn.convert(module)
    assert isinstance(net, bnn.VISequential)
    _assert_mean_equal(net, module, torch.randn(5, 2, 8))


def test_unsupported_modules_warn_once_norms_silently() -> None:
    module = nn.Sequential(
        nn.Linear(3, 4), nn.LayerNorm(4), nn.PReLU(), nn.Bilinear(4, 4, 2)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bnn.convert(module)
    assert len(caught) == 1
    assert caught[0].category is UserWarning
    message = str(caught[0].message)
    assert "2 (PReLU: weight)" in message
    assert "3 (Bilinear: weight, bias)" in message
    assert "LayerNorm" not in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bnn.convert(module, exclude=[nn.PReLU, "3"])


def test_include_exclude_by_name_and_type() -> None:
    module = Block()
    only_head = bnn.convert(module, include=["head"])
    assert [v.site for v in only_head.random_variables()] == [
        "head.weight",
        "head.bias",
    ]
    no_conv = bnn.convert(module, exclude=[nn.Conv2d])
    assert isinstance(no_conv.skip, nn.Conv2d)
    assert isinstance(no_conv.head, bnn.VILinear)
    with pytest.raises(ValueError, match=r"names no module.*'hed'"):
        bnn.convert(module, exclude=["hed"])
    # An int or a predicate raised "'int' object is not iterable".
    for wrong in (3, lambda m: True):
        with pytest.raises(
            TypeError, match=r"include= takes a module path .* iterable"
        ):
            bnn.convert(module, include=wrong)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"exclude= takes module paths .* got 3"):
        bnn.convert(module, exclude=["head", 3])  # type: ignore[list-item]


def test_moped_prior_and_posterior() -> None:
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        module[0].bias.zero_()
    net = bnn.convert(module, moped=0.1, prior=bnn.NormalPrior(scale=0.5))
    for v in net.random_variables():
        weight = module.get_parameter(v.site)
        prior = v.module.prior[v.name]
        assert isinstance(prior, bnn.NormalPrior)
        assert "loc" in dict(prior.named_buffers())
        torch.testing.assert_close(prior.loc, weight.detach(), atol=0, rtol=0)
        torch.testing.assert_close(prior.scale, torch.tensor(0.5))
        torch.testing.assert_close(v.posterior.loc, weight.detach(), atol=0, rtol=0)
        expected = (0.1 * weight.detach().abs()).clamp_min(MOPED_MIN_SCALE)
        torch.testing.assert_close(v.posterior.scale(), expected, rtol=1e-4, atol=1e-9)
    assert net[0].posterior["bias"].scale().max() < 2 * MOPED_MIN_SCALE
    with pytest.raises(ValueError, match="moped"):
        bnn.convert(module, moped=0.0)
    # NaN reached the posterior: "init_scale must be positive".
    with pytest.raises(ValueError, match=r"moped \(delta\) must be positive .* nan"):
        bnn.convert(module, moped=float("nan"))
    with pytest.raises(TypeError, match=r"moped \(delta\) must be a number"):
        bnn.convert(module, moped="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NormalPrior"):
        bnn.convert(module, moped=0.1, prior=bnn.LaplacePrior())


class _Tagger(nn.Module):
    """Embedding (padding), convolution, batch norm, attention, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8, padding_idx=0)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.norm = nn.BatchNorm1d(8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.norm(self.conv(self.embed(tokens).transpose(1, 2))).transpose(1, 2)
        h, _ = self.attention(h, h, h)
        return self.head(h.mean(1))


def test_moped_converts_a_skeleton_on_the_meta_device_to_load_a_state_into() -> None:
    """The documented reload of a MOPED model (a fresh copy of the
    architecture, converted with the same moped=, then the saved state) with
    the copy built on the meta device: convert raised "Tensor.item() cannot
    be called on meta tensors" (the posterior's scale check read the values).
    Assigned the state, it is the saved model exactly."""
    torch.manual_seed(0)
    saved = bnn.convert(_Tagger().eval(), moped=0.1)
    state = saved.state_dict()
    with torch.device("meta"):
        skeleton = _Tagger()
    loaded = bnn.convert(skeleton, moped=0.1)
    assert all(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    loaded.load_state_dict(state, assign=True)
    got = loaded.state_dict()
    assert got.keys() == state.keys()
    for key, value in state.items():
        assert not got[key].is_meta, key
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    tokens = torch.randint(0, 10, (4, 6))
    saved.eval()
    loaded.eval()
    torch.manual_seed(1)
    expected = saved(tokens, samples=3)
    torch.manual_seed(1)
    torch.testing.assert_close(loaded(tokens, samples=3), expected, rtol=0, atol=0)
    # A scale that is no valid one is still refused where values are known.
    posterior = saved.head.posterior["weight"]
    with pytest.raises(ValueError, match="positive and finite"):
        posterior.reset_parameters(None, -torch.ones(3, 8))


def test_moped_refuses_an_init_scale_it_would_replace() -> None:
    """MOPED sets every posterior scale to delta * |w|: an init_scale given with
    variational= was dropped without a word, while the posterior's repr still
    read init_scale=0.05 (peer probe C7)."""
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"init_scale=0\.05 of variational= would"):
        bnn.convert(module, moped=0.1, variational=bnn.MeanFieldNormal(0.05))
    per_variable = {"weight": bnn.MeanFieldNormal(), "bias": bnn.MeanFieldNormal(0.01)}
    with pytest.raises(ValueError, match=r"init_scale=0\.01 of variational="):
        bnn.convert(module, moped=0.1, variational=per_variable)  # type: ignore[arg-type]
    # What MOPED keeps is still taken: the scale transform.
    net = bnn.convert(
        module, moped=0.1, variational=bnn.MeanFieldNormal(scale_transform="exp")
    )
    posterior = net[0].posterior["weight"]
    assert posterior.scale_transform == "exp"
    expected = 0.1 * module[0].weight.detach().abs()
    torch.testing.assert_close(posterior.scale(), expected, rtol=1e-5, atol=0)


def test_moped_refuses_a_prior_loc_it_would_replace() -> None:
    """MOPED centres every prior at the weights: prior=NormalPrior(0.5, 1) lost
    its loc silently (peer probe C2). A zero loc is MOPED's own default."""
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"loc=0\.5 of prior= would be ignored"):
        bnn.convert(module, moped=0.1, prior=bnn.NormalPrior(0.5, 1.0))
    rows = torch.tensor([[0.0], [0.0], [0.2], [0.0]])
    with pytest.raises(ValueError, match=r"loc=tensor of shape \(4, 1\) of prior="):
        bnn.convert(module, moped=0.1, prior=bnn.NormalPrior(rows, 1.0))
    net = bnn.convert(module, moped=0.1, prior=bnn.NormalPrior(torch.tensor(0.0), 2.0))
    prior = net[0].prior["weight"]
    assert isinstance(prior, bnn.NormalPrior)
    torch.testing.assert_close(prior.loc, module[0].weight.detach(), atol=0, rtol=0)
    torch.testing.assert_close(prior.scale, torch.tensor(2.0))


def test_moped_then_priors_at_zero_is_the_dnn_to_bnn_model() -> None:
    """docs/peers.rst's recipe for bayesian-torch's dnn_to_bnn(moped_enable=True)
    prior N(prior_mu=0, prior_sigma): assigned after convert, the KL is the closed
    form of N(w, (delta |w|)^2) against N(0, prior_sigma^2), summed over weights."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    net = bnn.convert(module, moped=0.1)
    for v in net.random_variables():
        v.module.prior[v.name] = bnn.NormalPrior(0.0, 0.5)
    expected = sum(
        torch.distributions.kl_divergence(
            torch.distributions.Normal(w, (0.1 * w.abs()).clamp_min(MOPED_MIN_SCALE)),
            torch.distributions.Normal(0.0, 0.5),
        ).sum()
        for w in module.parameters()
    )
    kl = net(torch.randn(8, 4), samples=2).bnn_record.kl()
    torch.testing.assert_close(kl.detach(), expected.detach(), rtol=1e-5, atol=0)


def test_moped_state_dict_reload_is_exact() -> None:
    trained = bnn.convert(_trained(Block()), moped=0.1)
    with torch.no_grad():  # fine-tuning moves posteriors away from the prior centres
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    fresh = bnn.convert(Block(), moped=0.1)
    fresh.load_state_dict(trained.state_dict())
    assert fresh.state_dict().keys() == trained.state_dict().keys()
    for (name, a), b in zip(
        fresh.state_dict().items(), trained.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    for v, w in zip(fresh.random_variables(), trained.random_variables(), strict=True):
        torch.testing.assert_close(
            v.module.prior[v.name].loc, w.module.prior[w.name].loc, atol=0, rtol=0
        )


class _WidePrior(bnn.NormalPrior):
    """A NormalPrior subclass whose distribution is three times as wide."""

    def elementwise(self) -> Any:
        return pyro.distributions.Normal(self.loc, 3.0 * self.scale)


class _CentredAtZero(bnn.NormalPrior):
    """A NormalPrior subclass with no loc buffer (centred at zero)."""

    def __init__(self, scale: float) -> None:
        super().__init__(0.0, scale)
        del self.loc

    def elementwise(self) -> Any:
        return pyro.distributions.Normal(0.0, self.scale)


def test_moped_keeps_a_normal_prior_subclass_centred_at_the_weights() -> None:
    """convert(moped=, prior=Wide(scale=0.5)) rebuilt a plain NormalPrior
    (prior sd 0.5 instead of Wide's 1.5), while without moped the subclass
    was kept (probe falsepos21a). MOPED now centres the layer's copy of the
    user's prior, of its class, at the weights; the centres are buffers, so a
    state_dict reload into a freshly converted copy gives the same priors. A
    subclass without NormalPrior's loc buffer cannot be centred: refused."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    net = bnn.convert(module, moped=0.1, prior=_WidePrior(scale=0.5))
    torch.manual_seed(1)
    fresh = bnn.convert(
        nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
        moped=0.1,
        prior=_WidePrior(scale=0.5),
    )
    fresh.load_state_dict(net.state_dict())
    for network in (net, fresh):
        variables = list(network.random_variables())
        assert len(variables) == 4
        for v in variables:
            weight = module.get_parameter(v.site).detach()
            assert type(v.module.prior[v.name]) is _WidePrior
            prior = v.module.prior_distribution(v.name).base_dist
            assert isinstance(prior, pyro.distributions.Normal)
            torch.testing.assert_close(prior.loc, weight, atol=0, rtol=0)
            torch.testing.assert_close(prior.scale, torch.full_like(weight, 1.5))
    with pytest.raises(ValueError, match=r"loc buffer.*_CentredAtZero"):
        bnn.convert(module, moped=0.1, prior=_CentredAtZero(0.5))


def test_checkpoint_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    net = bnn.convert(Block(), moped=0.1)
    bnn.save_checkpoint(tmp_path / "c.pt", net)
    other = bnn.convert(Block(), moped=0.1)
    bnn.load_checkpoint(tmp_path / "c.pt", other)
    for a, b in zip(
        net.state_dict().values(), other.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_deterministic_branch_error_names_helper() -> None:
    net = bnn.convert(Block(helper=False), exclude=["skip"])
    with pytest.raises(RuntimeError, match=r"bnn\.match_particles"):
        net(torch.randn(2, 3, 4, 4), samples=3)


def test_resnet_block_with_deterministic_skip() -> None:
    module = _trained(Block())
    net = bnn.convert(module, exclude=["skip"])
    assert isinstance(net.skip, nn.Conv2d)
    assert isinstance(net.body[0], bnn.VIConv2d)
    x = torch.randn(2, 3, 4, 4)
    out = net(x, samples=3)
    assert out.shape == (3, 2, 5)
    assert not torch.allclose(out[0], out[1])  # the body is random
    _assert_mean_equal(net, module, x)


# torch's own LSTM warns that oneDNN has no projections (the reference module).
@pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning")
@pytest.mark.parametrize(
    "rnn",
    [
        lambda: nn.LSTM(3, 6, num_layers=2, batch_first=True),
        lambda: nn.LSTM(3, 6, batch_first=True, bidirectional=True, proj_size=4),
        lambda: nn.GRU(3, 6, num_layers=2, batch_first=True, bidirectional=True),
    ],
    ids=["lstm", "lstm-proj-bidirectional", "gru"],
)
def test_recurrent_conversion(rnn) -> None:  # type: ignore[no-untyped-def]
    module = SequenceClassifier(rnn()).eval()
    if module.rnn.proj_size:
        module.head = nn.Linear(8, 3)
    net = bnn.convert(module)
    assert isinstance(net.rnn, (bnn.VILSTM, bnn.VIGRU))
    x = torch.randn(4, 5, 3)
    _assert_mean_equal(net, module, x)
    plain = bnn.to_deterministic(net)
    assert type(plain.rnn) is type(module.rnn)
    torch.testing.assert_close(plain(x), module(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "rnn",
    [
        lambda: nn.LSTM(3, 6, batch_first=True),
        lambda: nn.GRU(3, 6, batch_first=True),
        lambda: nn.LSTM(3, 6, num_layers=2, batch_first=True, bidirectional=True),
    ],
    ids=["lstm", "gru", "lstm-2-layers-bidirectional"],
)
def test_final_hidden_state_idiom_converts(rnn) -> None:  # type: ignore[no-untyped-def]
    # h_n[-1] inside the converted forward is torch's h_n[-1] (the hidden
    # states are in torch's layout inside a network), for every particle.
    torch.manual_seed(0)
    module = FinalStateClassifier(rnn()).eval()
    net = bnn.convert(module)
    x = torch.randn(4, 5, 3)
    _assert_mean_equal(net, module, x)
    mean = bnn.predict(net.eval(), x, CLASSES, samples=3, mode="mean")
    expected = torch.softmax(module(x), -1)
    torch.testing.assert_close(mean.probs, expected, atol=1e-5, rtol=1e-5)
    plain = bnn.to_deterministic(net)
    torch.testing.assert_close(plain(x), module(x), atol=1e-6, rtol=1e-6)
    assert net(x, samples=3).shape == (3, 4, 3)


class SequenceFirstTagger(nn.Module):
    """torch's default layout: ``(L, B, 3)`` -> ``(L, B, classes)``."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.attention = nn.MultiheadAttention(8, 2)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        out = self.encoder(out)
        out = out + self.attention(out, out, out, need_weights=False)[0]
        return self.head(out)  # type: ignore[no-any-return]


def test_batch_first_false_conversion_equals_torch() -> None:
    torch.manual_seed(0)
    module = SequenceFirstTagger().eval()
    net = bnn.convert(module)
    x = torch.randn(5, 4, 3)
    _assert_mean_equal(net, module, x)
    plain = bnn.to_deterministic(net)
    torch.testing.assert_close(plain(x), module(x), atol=1e-6, rtol=1e-6)
    assert net(x, samples=3).shape == (3, 5, 4, 3)


def test_attention_and_transformer_conversion() -> None:
    layer = nn.TransformerEncoderLayer(
        8, 2, 16, dropout=0.0, batch_first=True, activation="gelu"
    )
    module = EncoderClassifier(
        nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    )
    module.eval()
    net = bnn.convert(module, moped=0.1)
    assert isinstance(net.encoder, bnn.VITransformerEncoder)
    sites = [v.site for v in net.random_variables()]
    assert sites[:2] == [
        "encoder.layers.0.self_attn.in_proj_weight",
        "encoder.layers.0.self_attn.in_proj_bias",
    ]
    assert "encoder.layers.1.linear2.bias" in sites
    x = torch.randn(3, 5, 8)
    _assert_mean_equal(net, module, x)
    plain = bnn.to_deterministic(net)
    assert type(plain.encoder) is nn.TransformerEncoder
    torch.testing.assert_close(plain(x), module(x), atol=1e-5, rtol=1e-5)


def test_decoder_layer_keeps_an_activation_module() -> None:
    """Copying it ran torch's ``__setstate__``, which put ``F.relu`` in front."""
    torch.manual_seed(0)
    module = nn.TransformerDecoderLayer(
        4, 1, 8, dropout=0.0, activation=nn.GELU(), batch_first=True
    ).eval()
    tgt, memory = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    net = bnn.convert(module)
    assert isinstance(net.activation, nn.GELU)
    with torch.no_grad():
        expected = module(tgt, memory)
        torch.testing.assert_close(
            bnn.to_deterministic(net)(tgt, memory), expected, atol=1e-6, rtol=1e-6
        )
    assert isinstance(module.activation, nn.GELU)  # the input is left untouched


def test_multihead_attention_kdim_and_full_transformer() -> None:
    attention = nn.MultiheadAttention(
        8, 2, kdim=4, vdim=6, add_bias_kv=True, batch_first=True
    )
    converted = bnn.convert(nn.ModuleList([attention]))[0]
    assert isinstance(converted, bnn.VIMultiheadAttention)
    for name, parameter in attention.named_parameters():
        layer, _, var = name.rpartition(".")
        mean = converted.get_submodule(layer).posterior[var].loc
        torch.testing.assert_close(mean, parameter.detach(), atol=0, rtol=0)
    q, k, v = torch.randn(2, 3, 8), torch.randn(2, 4, 4), torch.randn(2, 4, 6)
    plain_attention = bnn.to_deterministic(converted)
    assert type(plain_attention) is nn.MultiheadAttention
    for out, expected in zip(plain_attention(q, k, v), attention(q, k, v), strict=True):
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    # A full Transformer: the converted network and its export agree with torch.
    model = nn.Transformer(8, 2, 1, 1, 16, dropout=0.0, batch_first=True).eval()
    net = bnn.convert(model)
    assert isinstance(net, bnn.VITransformer)
    src, tgt = torch.randn(2, 5, 8), torch.randn(2, 4, 8)
    plain = bnn.to_deterministic(net)
    assert type(plain) is nn.Transformer
    torch.testing.assert_close(plain(src, tgt), model(src, tgt), atol=1e-5, rtol=1e-5)


def test_refuses_bayesian_input() -> None:
    with pytest.raises(TypeError, match="already holds Bayesian"):
        bnn.convert(bnn.VISequential(bnn.VILinear(2, 2)))


def test_shared_layer_stays_shared() -> None:
    shared = nn.Linear(3, 3)
    module = nn.Sequential(shared, nn.Tanh(), shared)
    net = bnn.convert(module)
    assert net[0] is net[2]
    assert [v.site for v in net.random_variables()] == ["0.weight", "0.bias"]
    plain = bnn.to_deterministic(net)
    x = torch.randn(4, 3)
    torch.testing.assert_close(plain(x), module(x), atol=1e-6, rtol=1e-6)


def test_subclass_with_own_forward_is_not_replaced() -> None:
    class Scaled(nn.Linear):
        def forward(self, input: Tensor) -> Tensor:
            return 2 * super().forward(input)

    with pytest.warns(UserWarning, match=r"0 \(Scaled: weight, bias\)"):
        net = bnn.convert(nn.Sequential(Scaled(2, 2), nn.Linear(2, 1)))
    assert type(net[0]) is Scaled
    assert isinstance(net[1], bnn.VILinear)


class _TaggedLinear(nn.Linear):
    """A subclass that keeps torch's forward and adds an attribute and a method."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, tag: str = ""
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.tag = tag

    def describe(self) -> str:
        return f"tagged {self.tag}"


def test_a_subclass_that_keeps_torchs_forward_warns_that_it_is_not_kept() -> None:
    """convert made a TaggedLinear a plain VILinear, and to_deterministic a
    plain nn.Linear: the class, its method and its tag were gone, silently.
    It still becomes the Bayesian layer, with one warning naming the path,
    the class and the remedies; excluded, or registered with a twin of its
    own (which round-trips the class and the tag), it is quiet. torch's own
    subclasses (a parametrized layer's generated class) do not warn."""
    model = nn.Sequential(_TaggedLinear(3, 2, tag="head"), nn.ReLU(), nn.Linear(2, 1))
    with pytest.warns(UserWarning, match=r"registry\.register") as caught:
        net = bnn.convert(model)
    assert len(caught) == 1
    assert "0 (_TaggedLinear, a Linear: became a VILinear)" in str(caught[0].message)
    assert caught[0].filename == __file__
    assert type(net[0]) is bnn.VILinear  # converted as before
    assert type(bnn.convert(model, exclude=["0"])[0]) is _TaggedLinear  # quiet

    @registry.register(_TaggedLinear)
    class VITaggedLinear(bnn.VILinear):
        def __init__(
            self,
            in_features: int,
            out_features: int,
            bias: bool = True,
            tag: str = "",
            **options: Any,
        ) -> None:
            super().__init__(in_features, out_features, bias, **options)
            self.tag = tag

    try:
        net = bnn.convert(model)  # quiet
        assert type(net[0]) is VITaggedLinear
        back = bnn.to_deterministic(net)[0]
        assert type(back) is _TaggedLinear
        assert back.describe() == "tagged head"
    finally:
        registry.unregister(_TaggedLinear)
    parametrized = torch.nn.utils.parametrizations.weight_norm(nn.Linear(3, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bnn.convert(nn.Sequential(parametrized))
    assert caught  # the parametrization's own warnings
    assert not [w for w in caught if "subclasses" in str(w.message)]


def test_selection_inside_a_whole_layer_is_refused() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    module = EncoderClassifier(
        nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
    )
    with pytest.raises(ValueError, match=r"inside 'encoder.layers.0'"):
        bnn.convert(module, exclude=["encoder.layers.0.linear1"])
    net = bnn.convert(module, exclude=["encoder.layers.0"], include=[nn.Linear])
    assert [v.site for v in net.random_variables()] == ["head.weight", "head.bias"]


@pytest.mark.parametrize(
    ("selection", "reached"),
    [
        ({"exclude": nn.Linear}, "'encoder.layers.0.linear1'"),
        ({"exclude": nn.MultiheadAttention}, "'encoder.layers.0.self_attn'"),
        ({"include": [nn.Linear]}, "'encoder.layers.0.linear1'"),
        ({"include": [nn.MultiheadAttention]}, "'encoder.layers.0.self_attn'"),
        ({"include": ["encoder.layers.0.linear1"]}, "'encoder.layers.0.linear1'"),
        ({"exclude": ["encoder.layers.0.self_attn"]}, "'encoder.layers.0.self_attn'"),
    ],
)
def test_selection_of_types_inside_a_whole_layer_is_refused(
    selection: dict[str, Any], reached: str
) -> None:
    """A type reaching inside a layer converted whole is refused like a name:
    ``exclude=nn.Linear`` left a Transformer layer's linear layers Bayesian."""
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    module = EncoderClassifier(
        nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
    )
    with pytest.raises(ValueError, match=rf"{reached}.*converted as one layer"):
        bnn.convert(module, **selection)


def test_selection_of_the_whole_layer_or_of_what_stays_plain_inside_it() -> None:
    """Types inside a whole layer that the layer's own selection agrees with,
    or that have no Bayesian counterpart (norms, dropout), are no conflict."""
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    module = EncoderClassifier(
        nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
    )
    whole = bnn.convert(module, include=[nn.TransformerEncoderLayer, nn.Linear])
    sites = [v.site for v in whole.random_variables()]
    assert "encoder.layers.0.linear1.weight" in sites
    assert "head.weight" in sites
    with pytest.warns(UserWarning, match="made no layer"):
        kept = bnn.convert(module, exclude=[nn.TransformerEncoderLayer, nn.Linear])
    assert not kept.random_variables()
    plain_inside = bnn.convert(module, exclude=[nn.LayerNorm, nn.Dropout])
    assert "encoder.layers.0.linear1.weight" in [
        v.site for v in plain_inside.random_variables()
    ]


class DropoutTagger(nn.Module):
    """An LSTM with inter-layer dropout and a Transformer layer with dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 6, 2, batch_first=True, dropout=0.5)
        self.encoder = nn.TransformerEncoderLayer(6, 2, 12, 0.3, batch_first=True)
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(6, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.rnn(x)[0]))


def test_conversion_keeps_train_and_eval_modes() -> None:
    """A model converted in eval mode predicts as it does, without net.eval()."""
    torch.manual_seed(0)
    module = DropoutTagger().eval()
    module.head[0].train()  # mixed modes are kept module by module
    net = bnn.convert(module)
    modes = dict(module.named_modules())
    for path, sub in net.named_modules():
        if path in modes:
            assert sub.training == modes[path].training, path
    encoder = net.encoder
    assert isinstance(encoder, bnn.VITransformerEncoderLayer)
    assert not any(m.training for m in encoder.modules())
    module.head[0].eval()
    net.head[0].eval()
    x = torch.randn(3, 5, 4)
    with torch.no_grad():
        expected = module(x)
    mean = bnn.predict(net, x, bnn.Normal(scale=1.0), mode="mean").samples[0]
    torch.testing.assert_close(mean, expected, rtol=1e-5, atol=1e-5)
    train_net = bnn.convert(DropoutTagger().train())
    assert all(m.training for m in train_net.modules())


def _reloaded(model: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded: nn.Module = torch.load(buffer, weights_only=False)
    assert type(loaded) is type(model)
    return loaded


def test_converted_custom_class_and_its_export_pickle() -> None:
    """torch.save of the whole converted network and of to_deterministic."""
    torch.manual_seed(0)
    net = bnn.convert(Block()).eval()
    x = torch.randn(2, 3, 4, 4)
    loaded = _reloaded(net)
    got = bnn.predict(loaded, x, CLASSES, mode="mean").samples
    want = bnn.predict(net, x, CLASSES, mode="mean").samples
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    plain = bnn.to_deterministic(net)
    assert type(plain) is Block
    library = [
        k for k, v in vars(plain).items() if "pyrolite_bnn" in type(v).__module__
    ]
    assert library == []  # the export needs neither Pyro nor this library
    with torch.no_grad():
        torch.testing.assert_close(_reloaded(plain)(x), plain(x), rtol=0, atol=0)


class _ReadsWeight(nn.Module):
    """One-sample code: the forward reads its layer's weight itself."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        assert self.fc.weight.shape[-1] == x.shape[-1]
        return self.fc(x)


def test_reading_a_layers_weight_outside_it_names_the_cause() -> None:
    """Under local reparameterisation the weight is no tensor: a clear error."""
    net = bnn.convert(_ReadsWeight())
    with pytest.raises(AttributeError, match="one-sample code"):
        net(torch.randn(4, 3), samples=2)
    moments = NormalMoments(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(TypeError, match=r"linear\(\) got NormalMoments"):
        torch.nn.functional.linear(torch.randn(4, 3), moments)  # type: ignore[arg-type]


class _TiedLanguageModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.embed(x)))


def test_tied_parameters_warn_that_they_become_independent() -> None:
    with pytest.warns(
        UserWarning, match=r"tied parameters .*embed.weight = head.weight"
    ):
        net = bnn.convert(_TiedLanguageModel())
    assert [v.site for v in net.random_variables()] == ["embed.weight", "head.weight"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # kept deterministic: tied, no tie warning
        kept = bnn.convert(_TiedLanguageModel(), exclude=["embed", "head"])
    assert ["made no layer" in str(w.message) for w in caught] == [True]
    assert kept.head.weight is kept.embed.weight


@pytest.mark.parametrize(
    ("selection", "tie_kept"),
    [
        ({"include": [nn.Linear]}, False),  # head Bayesian, embed deterministic
        ({"include": ["head"]}, False),
        ({"exclude": [nn.Embedding, nn.Linear]}, True),  # nothing converted
        ({"exclude": ["embed", "head"]}, True),
        ({"exclude": [nn.Embedding]}, False),
    ],
)
def test_tie_warning_follows_the_selection_paths_and_types_alike(
    selection: dict[str, Any], tie_kept: bool
) -> None:
    """Selections by type were judged on a dummy module: include=[nn.Linear] broke
    the tie silently, exclude=[nn.Embedding, nn.Linear] kept it and warned."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = bnn.convert(_TiedLanguageModel(), **selection)
    warned = [w for w in caught if "tied parameters" in str(w.message)]
    held = [
        dict(layer.named_parameters(recurse=False)).get("weight")
        for layer in (net.embed, net.head)
    ]
    assert (held[0] is not None and held[0] is held[1]) == tie_kept
    assert len(warned) == (0 if tie_kept else 1)
    if warned:
        assert "embed.weight = head.weight" in str(warned[0].message)


class _TiedOutputLanguageModel(nn.Module):
    """A GPT-style tie: the output layer reads the embedding's table."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.mix = nn.Linear(4, 4)

    def forward(self, tokens: Tensor) -> Tensor:
        h = torch.tanh(self.mix(self.embed(tokens)))
        return nn.functional.linear(h, self.embed.weight)


class _HandTiedLanguageModel(bnn.VIModule):
    """docs/howto.rst's route for a tied output layer (functional.linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = bnn.VIEmbedding(7, 4)
        self.mix = bnn.VILinear(4, 4)

    def forward(self, tokens: Tensor) -> Tensor:
        h = torch.tanh(self.mix(self.embed(tokens)))
        return functional.linear(h, self.embed.weight, None, current_batch_size())


def test_documented_tied_output_layer_is_torchs_per_particle() -> None:
    """docs/howto.rst sent a tied output layer to vi.convert_to_vimodule, which
    fails on it (an embedding's weight is (1, 1, V, E) there); the route it now
    gives: one table draw per particle at both places, one variable."""
    lm = _HandTiedLanguageModel()
    assert [v.site for v in lm.random_variables()] == [
        "embed.weight",
        "mix.weight",
        "mix.bias",
    ]
    tokens = torch.randint(0, 7, (3, 5))
    trace = poutine.trace(lm).get_trace(tokens, samples=3)  # whole draws
    out = trace.nodes["_RETURN"]["value"]
    assert out.shape == (3, 3, 5, 7)
    for s in range(3):
        plain = _TiedOutputLanguageModel()
        with torch.no_grad():
            plain.embed.weight.copy_(trace.nodes["embed.weight"]["value"][s, 0])
            plain.mix.weight.copy_(trace.nodes["mix.weight"]["value"][s, 0])
            plain.mix.bias.copy_(trace.nodes["mix.bias"]["value"][s, 0])
        torch.testing.assert_close(out[s], plain(tokens))  # float32 defaults
    # The PyTorch-style call (rows looked up, then whole tables: a second read).
    assert lm(tokens, samples=2).shape == (2, 3, 5, 7)


class _WithScripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(3, 4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script
            self.mid = torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.Tanh()))
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.mid(torch.tanh(self.first(x))))


def test_a_scripted_submodule_is_kept_deterministic() -> None:
    """A TorchScript submodule crashed convert with a bare KeyError: 0, before
    exclude= was looked at; it is kept whole, named in the usual warning."""
    plain = _WithScripted().eval()
    with pytest.warns(UserWarning, match=r"mid \(TorchScript Sequential, kept whole"):
        net = bnn.convert(plain)
    assert [v.site for v in net.random_variables()] == [
        "first.weight",
        "first.bias",
        "head.weight",
        "head.bias",
    ]
    x = torch.randn(5, 3)
    assert net(x, samples=3).shape == (3, 5, 2)
    torch.testing.assert_close(
        bnn.predict(net, x, bnn.Normal(scale=1.0), mode="mean").samples[0], plain(x)
    )
    torch.testing.assert_close(bnn.to_deterministic(net)(x), plain(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # excluded: no warning
        excluded = bnn.convert(plain, exclude=["mid"])
    assert isinstance(excluded.mid, torch.jit.ScriptModule)
    with pytest.raises(TypeError, match=r"cannot convert a TorchScript module"):
        bnn.convert(plain.mid)


def test_an_uninitialised_lazy_layer_asks_for_a_forward_pass_first() -> None:
    """The message was the constructor's in_features >= 1 check."""
    lazy = nn.Sequential(nn.LazyLinear(4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"0 \(LazyLinear\): lazy module not init"):
        bnn.convert(lazy)
    lazy(torch.randn(2, 3))  # materialised: converts
    assert bnn.convert(lazy)(torch.randn(2, 3), samples=2).shape == (2, 2, 2)


def test_parametrizations_are_named_and_old_weight_norm_is_refused() -> None:
    spectral = nn.utils.parametrizations.spectral_norm(nn.Linear(4, 4))
    with pytest.warns(UserWarning, match=r"parametrizations .* not kept: 0 became"):
        net = bnn.convert(nn.Sequential(spectral, nn.ReLU()))
    with torch.no_grad():
        effective = spectral.weight.clone()
    torch.testing.assert_close(net[0].posterior["weight"].loc, effective)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's deprecation
        old = nn.utils.weight_norm(nn.Linear(4, 2))
    with pytest.raises(TypeError, match=r"parametrizations\.weight_norm"):
        bnn.convert(nn.Sequential(old))


def test_a_pruned_model_is_refused_naming_the_pruned_weight() -> None:
    """Pruning keeps a computed weight that torch cannot copy: the message
    names it and says how to make the pruning permanent (not weight_norm)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    with pytest.raises(TypeError, match=r"pruning of 0\.weight permanent") as info:
        bnn.convert(model)
    assert "weight_norm instead" not in str(info.value)
    prune.remove(model[0], "weight")
    assert isinstance(bnn.convert(model)[0], bnn.VILinear)


class _ScaledWeight:
    """A hook object of the legacy norms' pattern: ``weight`` from ``weight_orig``."""

    name = "weight"

    def __call__(self, module: nn.Module, args: object) -> None:
        module.weight = 2 * module.weight_orig


def _hooked_linear(hook: str) -> nn.Linear:
    layer = nn.Linear(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's deprecation
        if hook == "spectral_norm":
            return nn.utils.spectral_norm(layer)
        if hook == "weight_norm":
            return nn.utils.weight_norm(layer)
    if hook == "pruned under no_grad":
        with torch.no_grad():  # a leaf weight: the copy succeeds
            prune.l1_unstructured(layer, "weight", amount=0.5)
        return layer
    weight = layer.weight
    del layer.weight
    layer.weight_orig = weight
    layer.register_forward_pre_hook(_ScaledWeight())
    with torch.no_grad():  # a leaf weight, as spectral_norm leaves it
        _ScaledWeight()(layer, ())
    return layer


@pytest.mark.parametrize(
    ("hook", "remedy"),
    [
        (
            "spectral_norm",
            r"1\.weight uses torch\.nn\.utils\.spectral_norm: use "
            r"torch\.nn\.utils\.parametrizations\.spectral_norm instead",
        ),
        ("weight_norm", r"parametrizations\.weight_norm instead"),
        ("pruned under no_grad", r"pruning of 1\.weight permanent"),
        (
            "hook object",
            r"1\.weight is recomputed by a forward pre-hook "
            r"\(_ScaledWeight\): use a torch\.nn\.utils\.parametrize",
        ),
    ],
)
def test_a_weight_recomputed_by_a_hook_is_refused_with_its_remedy(
    hook: str, remedy: str
) -> None:
    """The legacy spectral_norm's (or any such) hook was carried to the
    Bayesian layer, whose first call failed reading ``weight_orig``."""
    model = nn.Sequential(nn.Linear(2, 3), _hooked_linear(hook))
    with pytest.raises(TypeError, match=remedy):
        bnn.convert(model)
    if hook != "weight_norm":  # its computed weight: torch cannot copy the model
        kept = bnn.convert(model, exclude=["1"])  # not rebuilt: its hook works
        assert kept(torch.randn(4, 2), samples=2).shape == (2, 4, 2)


def test_recurrent_flatten_parameters_is_accepted() -> None:
    """A forward calling self.rnn.flatten_parameters() (a torch idiom) runs."""
    for layer in (bnn.VILSTM(3, 4, batch_first=True), bnn.VIGRU(3, 4)):
        assert layer.flatten_parameters() is None


@pytest.mark.parametrize(
    "selection",
    [{"exclude": [nn.Linear]}, {"include": ["0"], "exclude": ["0"]}, {}],
)
def test_conversion_that_makes_nothing_bayesian_warns(
    selection: dict[str, object],
) -> None:
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    if not selection:
        module = nn.Sequential(nn.ReLU(), nn.Flatten())
    with pytest.warns(UserWarning, match="made no layer of Sequential Bayesian"):
        bnn.convert(module, **selection)  # type: ignore[arg-type]


def test_frozen_layers_are_named_when_they_become_bayesian() -> None:
    """A frozen pretrained backbone (requires_grad=False) would silently become
    trainable: convert says so, and exclude= keeps it deterministic."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    with pytest.warns(UserWarning, match=r"frozen weights .*trainable posteriors: 0 "):
        net = bnn.convert(model)
    assert isinstance(net[0], bnn.VILinear)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = bnn.convert(model, exclude=["0"])
    assert not kept[0].weight.requires_grad


class _Hooked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.act, self.b = nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.b(self.act(self.a(x)))
        return out


@pytest.mark.parametrize("where", ["a pre-hook", "b", "root"])
def test_forward_hooks_go_with_converted_and_exported_modules(where: str) -> None:
    """Hooks on converted layers (and on a custom root) were dropped silently:
    the converted model computed something else than the torch model."""
    model = _Hooked().eval()
    if where == "a pre-hook":
        model.a.register_forward_pre_hook(lambda module, args: (args[0] * 0,))
    else:
        target = model if where == "root" else model.b
        target.register_forward_hook(lambda module, args, out: out + 100)
    x = torch.randn(5, 4)
    with torch.no_grad():
        expected = model(x)
        net = bnn.convert(model, variational=bnn.PointMass())
        for particle in net(x, samples=2):
            torch.testing.assert_close(particle, expected)
        torch.testing.assert_close(bnn.to_deterministic(net)(x), expected)


def test_hooks_that_cannot_go_with_a_converted_layer_are_named() -> None:
    """Named by path, in one warning pointing at the caller's line."""
    model = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2))
    model[0].register_full_backward_hook(lambda module, g_in, g_out: None)
    model[1].register_full_backward_hook(lambda module, g_in, g_out: None)  # kept
    with pytest.warns(
        UserWarning, match=r"rebuilt modules: 0 \(backward hooks\);"
    ) as caught:
        net = bnn.convert(model)
    assert len(caught) == 1
    assert caught[0].filename == __file__
    net[0].register_state_dict_pre_hook(lambda *args: None)
    with pytest.warns(UserWarning, match=r"modules: 0 \(state_dict hooks\);") as caught:
        bnn.to_deterministic(net)
    assert caught[0].filename == __file__


def test_the_hook_dictionaries_read_are_torchs() -> None:
    """torch lists a module's hooks nowhere publicly: the names read must exist
    (a torch renaming them would silently stop carrying hooks)."""
    from pyrolite_bnn._module_hooks import FORWARD_HOOKS, OTHER_HOOKS

    module = nn.Linear(2, 2)
    for name in (*FORWARD_HOOKS, *OTHER_HOOKS):
        assert isinstance(getattr(module, name), dict), name
    module.register_forward_hook(lambda *args: None, with_kwargs=True, always_call=True)
    module.register_forward_pre_hook(lambda *args: None, with_kwargs=True)
    module.register_full_backward_pre_hook(lambda *args: None)
    assert all(getattr(module, name) for name in FORWARD_HOOKS)


class _Mixer(nn.Module):
    """A block that is no layer: a linear layer and a parameter of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.gain = nn.Parameter(torch.ones(4))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) * self.gain


def test_a_block_type_selects_everything_below_its_instances() -> None:
    """``exclude=Block`` left every layer inside the blocks Bayesian, silently
    (the type matched only registered layers); a path covered them."""
    module = nn.Sequential(_Mixer(), nn.ReLU(), _Mixer(), nn.Linear(4, 2))
    by_type = bnn.convert(module, exclude=_Mixer)
    by_path = bnn.convert(module, exclude=["0", "2"])
    sites = ["3.weight", "3.bias"]
    assert [v.site for v in by_type.random_variables()] == sites
    assert [v.site for v in by_path.random_variables()] == sites
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        included = bnn.convert(module, include=_Mixer)
    assert [v.site for v in included.random_variables()] == [
        "0.fc.weight",
        "0.fc.bias",
        "2.fc.weight",
        "2.fc.bias",
    ]
    # The warning names what stays a point estimate: each block's own gain.
    assert len(caught) == 1
    assert "0 (_Mixer: gain), 2 (_Mixer: gain)" in str(caught[0].message)


def test_a_torch_container_type_selects_everything_below_it() -> None:
    """``exclude=nn.TransformerEncoder`` left the encoder Bayesian: the type of
    a registered container matched no layer."""
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    module = EncoderClassifier(
        nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
    )
    excluded = bnn.convert(module, exclude=nn.TransformerEncoder)
    assert [v.site for v in excluded.random_variables()] == ["head.weight", "head.bias"]
    included = bnn.convert(module, include=nn.TransformerEncoder)
    sites = [v.site for v in included.random_variables()]
    assert sites
    assert all(site.startswith("encoder.") for site in sites)


class _Backbone(nn.Module):
    """A torch model with a backbone container and a head (transfer learning)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(3, 8), nn.Tanh(), nn.Sequential(nn.Linear(8, 6), nn.Tanh())
        )
        self.heads = nn.ModuleDict({"out": nn.Linear(6, 2)})
        self.extra = nn.ModuleList([nn.Linear(6, 2)])

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x)
        out: Tensor = self.heads["out"](features)
        return out + bnn.match_particles(self.extra[0](features), out)


@pytest.mark.parametrize(
    "selection", [{"include": ["heads"]}, {"exclude": ["backbone", "extra"]}]
)
def test_containers_left_deterministic_keep_their_torch_class(
    selection: dict[str, Any], tmp_path: Any
) -> None:
    """An excluded backbone became a VISequential with no random variable:
    called alone (feature extraction) it returned (S, B, F) copies."""
    module = _Backbone().eval()
    net = bnn.convert(module, **selection)
    assert type(net.backbone) is nn.Sequential
    assert type(net.backbone[2]) is nn.Sequential
    assert type(net.extra) is nn.ModuleList
    assert isinstance(net.heads, bnn.VIModuleDict)  # holds the Bayesian head
    x = torch.randn(5, 3)
    features = net.backbone(x)
    torch.testing.assert_close(features, module.backbone(x), atol=0, rtol=0)
    _assert_mean_equal(net, module, x)  # the whole network: unchanged
    assert net(x, samples=4).shape == (4, 5, 2)
    assert [v.site for v in net.random_variables()] == [
        "heads.out.weight",
        "heads.out.bias",
    ]
    plain = bnn.to_deterministic(net)
    assert type(plain) is _Backbone
    torch.testing.assert_close(plain(x), module(x), atol=1e-6, rtol=1e-6)
    bnn.save_checkpoint(tmp_path / "net.pt", net)
    fresh = bnn.convert(_Backbone().eval(), **selection)
    bnn.load_checkpoint(tmp_path / "net.pt", fresh)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, atol=0, rtol=0)


def test_a_container_with_a_bayesian_layer_deep_inside_is_converted() -> None:
    module = _Backbone().eval()
    net = bnn.convert(module, exclude=["backbone.0"])
    assert isinstance(net.backbone, bnn.VISequential)
    assert isinstance(net.backbone[2], bnn.VISequential)
    assert type(net.backbone[0]) is nn.Linear
    _assert_mean_equal(net, module, torch.randn(5, 3))


def test_an_excluded_transformer_stack_stays_torchs() -> None:
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(8, 2)

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = self.head(self.encoder(x)[:, 0])
            return out

    module = Encoder().eval()
    net = bnn.convert(module, exclude=["encoder"])
    assert type(net.encoder) is nn.TransformerEncoder
    assert type(net.encoder.layers) is nn.ModuleList
    _assert_mean_equal(net, module, torch.randn(3, 4, 8))


class _Pretrained(nn.Module):
    """A root class with a Hugging Face-style loader that calls ``cls(...)``."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 2)

    @classmethod
    def from_pretrained(cls, state: dict[str, Tensor]) -> _Pretrained:
        model = cls(state["fc.weight"].shape[1])
        model.load_state_dict(state)
        return model

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)  # type: ignore[no-any-return]


def test_calling_a_converted_networks_class_is_refused_with_the_reload() -> None:
    """type(net).from_pretrained(path) of a converted Hugging Face model (whose
    loader calls cls(config)) returned a network of the converted class with
    torch layers, fresh weights and no random variables, without a word."""
    net = bnn.convert(_Pretrained())
    with pytest.raises(TypeError, match=r"made by bnn.convert\(model\), not by"):
        type(net)(3)
    with pytest.raises(TypeError, match=r"net.load_state_dict\(state\)"):
        type(net).from_pretrained(_Pretrained().state_dict())
    # The ways that build no instance through __init__ keep working.
    x = torch.randn(4, 3)
    want = bnn.predict(net, x, CLASSES, mode="mean").samples
    copies = [
        copy.deepcopy(net),
        pickle.loads(pickle.dumps(net)),
        _reloaded(net),
    ]
    fresh = bnn.convert(_Pretrained())  # the reload the message gives
    fresh.load_state_dict(net.state_dict())
    for other in [*copies, fresh]:
        assert type(other) is type(net)
        got = bnn.predict(other, x, CLASSES, mode="mean").samples
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    plain = bnn.to_deterministic(net)
    assert type(plain) is _Pretrained
    assert type(_Pretrained.from_pretrained(plain.state_dict())) is _Pretrained


@pytest.mark.parametrize(
    "path", ["convert", "vi.convert_to_vimodule", "VIModule subclass"]
)
def test_a_network_class_is_not_held_after_its_networks_are_gone(path: str) -> None:
    """The converted-class table and the Pyro-statement scan's results were
    held by module-level dictionaries keyed by the user's class: every class a
    network was built from stayed alive for the life of the process, with the
    globals and closures of its functions (a class defined in a function, a
    notebook cell run again, and the models and optimizers they reach)."""

    def build() -> tuple[weakref.ref[type], weakref.ref[object]]:
        payload = torch.zeros(3)  # what the class's functions reach

        if path != "VIModule subclass":

            class Plain(nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.fc = nn.Linear(2, 1)

                def forward(self, x: torch.Tensor) -> torch.Tensor:
                    return self.fc(x) + payload.sum()

            if path == "convert":
                net: nn.Module = bnn.convert(Plain())
            else:
                net = vi.convert_to_vimodule(Plain())
            cls: type = Plain
        else:

            class Bayesian(bnn.VIModule):
                def __init__(self) -> None:
                    super().__init__()
                    self.fc = bnn.VILinear(2, 1)

                def forward(self, x: torch.Tensor) -> torch.Tensor:
                    return self.fc(x) + payload.sum()

            net = Bayesian()
            cls = Bayesian
        net(torch.randn(4, 2))
        return weakref.ref(cls), weakref.ref(payload)

    cls, payload = build()
    gc.collect()
    gc.collect()  # a network's caches hold it in cycles of their own
    assert cls() is None
    assert payload() is None
