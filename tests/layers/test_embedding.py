"""VIEmbedding specifics: the padding row, options torch has, input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pyrolite_bnn as bnn


def _widen(module: nn.Module) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("rho_unconstrained"):
                p.fill_(0.0)


def test_padding_row_is_deterministic_zero_without_kl() -> None:
    layer = bnn.VIEmbedding(6, 3, padding_idx=2)
    _widen(layer)
    # The random variable is the other 5 rows: the padding row has no posterior.
    assert [(v.site, tuple(v.shape)) for v in layer.random_variables()] == [
        ("weight", (5, 3))
    ]
    tokens = torch.tensor([[2, 0, 2], [5, 2, 1]])
    out = layer(tokens, samples=4)
    assert out.shape == (4, 2, 3, 3)
    assert bool((out[:, tokens == 2] == 0).all())
    assert bool((out[:, tokens != 2] != 0).all())
    # Rows after the padding row are shifted by one in the random variable.
    mean = bnn.predict(layer, tokens, bnn.Normal(scale=1.0), mode="mean").samples[0]
    loc = layer.posterior["weight"].loc.detach()
    torch.testing.assert_close(mean[1, 0], loc[4], rtol=0, atol=0)
    torch.testing.assert_close(mean[0, 1], loc[0], rtol=0, atol=0)
    # KL only over the 5 random rows (closed form, N(0, 1) prior).
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 10, kl="analytic")
    loss_fn(out, torch.zeros(2, 3, 3))
    post = layer.posterior["weight"]
    q = torch.distributions.Normal(post.loc, post.scale())  # type: ignore[operator]
    p = torch.distributions.Normal(0.0, 1.0)
    expected = torch.distributions.kl_divergence(q, p).sum() / 10
    torch.testing.assert_close(loss_fn.last_kl, expected.detach(), rtol=1e-5, atol=0)


class _ReadsTheTable(bnn.VIModule):
    """A forward that reads the table itself (a tied output layer would)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = bnn.VIEmbedding(6, 3, padding_idx=2)
        self.embed.set_padding_row(torch.tensor([1.0, 2.0, 3.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = self.embed.weight  # (S, 1, 6, 3) in a call
        # one sequence (B = 1): the folded batch has S rows, one per particle
        return table[:, 0, 2] + 0 * self.embed(x).sum(1)


def test_weight_in_a_call_is_the_whole_table_like_torch() -> None:
    """``weight`` has torch's ``(num_embeddings, dim)`` layout, padding row in."""
    net = _ReadsTheTable()
    out = net(torch.tensor([[0, 1]]), samples=3)
    torch.testing.assert_close(out, torch.tensor([1.0, 2.0, 3.0]).expand(3, 1, 3))
    # Outside a call there is no table to hand out: the random rows' mean
    # would shift the indices after the padding row, a whole table put
    # together would take writes into a temporary.
    with pytest.raises(AttributeError, match="inside a call only"):
        _ = net.embed.weight
    table = bnn.to_deterministic(net.embed).weight  # what it proposes
    torch.testing.assert_close(table[2], torch.tensor([1.0, 2.0, 3.0]))
    assert bnn.VIEmbedding(6, 3).weight.shape == (6, 3)  # no padding row: torch's


def test_padding_row_gets_no_gradient_like_torch() -> None:
    """torch: the padding row's output is zero and it receives no gradient."""
    torch.manual_seed(0)
    layer = bnn.VIEmbedding(4, 2, padding_idx=0, estimator="reparam")
    tokens = torch.tensor([[0, 1], [0, 0]])
    out = layer(tokens, samples=3)
    (out**2).sum().backward()
    grad = layer.posterior["weight"].loc_unconstrained.grad
    assert grad is not None
    # Rows 1 (random row 0) is used; rows 2, 3 are not: only row 0 has gradient.
    assert bool(grad[0].abs().sum() > 0)
    assert bool((grad[1:] == 0).all())


def test_to_deterministic_puts_the_zero_row_back() -> None:
    layer = bnn.VIEmbedding(5, 2, padding_idx=-2)
    assert layer.padding_idx == 3
    plain = bnn.to_deterministic(layer)
    assert isinstance(plain, nn.Embedding)
    assert plain.padding_idx == 3
    loc = layer.posterior["weight"].loc.detach()
    expected = torch.cat([loc[:3], torch.zeros(1, 2), loc[3:]])
    torch.testing.assert_close(plain.weight, expected, rtol=0, atol=0)


def test_initial_weight() -> None:
    table = torch.arange(12.0).reshape(4, 3)
    layer = bnn.VIEmbedding(4, 3, padding_idx=1, _weight=table)
    expected = table[[0, 2, 3]]
    torch.testing.assert_close(layer.posterior["weight"].loc, expected)
    with pytest.raises(ValueError, match=r"_weight must have shape \(4, 3\)"):
        bnn.VIEmbedding(4, 3, _weight=torch.zeros(3, 4))


def test_max_norm_rescales_rows_of_each_draw() -> None:
    layer = bnn.VIEmbedding(5, 4, max_norm=0.5, norm_type=1.0)
    _widen(layer)  # rows with 1-norm ~ 4 * 0.8: all above max_norm
    out = layer(torch.tensor([[0, 1, 2], [3, 4, 4]]), samples=6)
    torch.testing.assert_close(
        out.abs().sum(-1), torch.full((6, 2, 3), 0.5), rtol=1e-5, atol=1e-5
    )


def test_index_and_option_checks() -> None:
    layer = bnn.VIEmbedding(5, 2)
    with pytest.raises(ValueError, match=r"got indices from 0 to 5; expected 0 to 4"):
        layer(torch.tensor([[0, 5]]))
    with pytest.raises(ValueError, match=r"got indices from -1 to 2"):
        layer(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="expected integer indices"):
        layer(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="sparse=True"):
        bnn.VIEmbedding(5, 2, sparse=True)
    with pytest.raises(ValueError, match="_freeze=True"):
        bnn.VIEmbedding(5, 2, _freeze=True)
    with pytest.raises(ValueError, match="padding_idx must be within"):
        bnn.VIEmbedding(5, 2, padding_idx=5)
    with pytest.raises(TypeError, match=r"padding_idx must be an integer, got 1.0"):
        bnn.VIEmbedding(5, 2, padding_idx=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no random row"):
        bnn.VIEmbedding(1, 2, padding_idx=0)


def test_embedding_network_trains_with_the_loss() -> None:
    """Embedding -> mean over positions -> linear head: a PyTorch-style step."""

    class Net(bnn.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.embed = bnn.VIEmbedding(7, 4, padding_idx=0)
            self.head = bnn.VILinear(4, 2)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(tokens).mean(1))

    net = Net()
    tokens = torch.randint(0, 7, (8, 5))
    out = net(tokens, samples=3)
    assert out.shape == (3, 8, 2)
    loss = bnn.KullbackLeiblerLoss(bnn.Categorical(), 100)(
        out, torch.randint(0, 2, (8,))
    )
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_pretrained_padding_row_is_kept_by_convert_and_export() -> None:
    """torch keeps (and looks up) a pretrained table's padding row as given."""
    torch.manual_seed(0)
    table = torch.randn(6, 3)
    for padding_idx in (0, -2):
        module = nn.Embedding.from_pretrained(
            table, freeze=False, padding_idx=padding_idx
        )
        net = bnn.convert(module)
        assert isinstance(net, bnn.VIEmbedding)
        indices = torch.tensor([[0, 4, 5, 1]])
        expected = module(indices)
        mean = bnn.predict(net, indices, bnn.Normal(1.0), mode="mean").samples[0]
        torch.testing.assert_close(mean, expected, rtol=0, atol=0)
        draws = net(indices, samples=4)  # the padding row is the same in every draw
        row = padding_idx % 6
        for s in range(4):
            torch.testing.assert_close(
                draws[s][indices == row], expected[indices == row]
            )
        torch.testing.assert_close(bnn.to_deterministic(net)(indices), expected)


def test_padding_row_from_weight_argument_and_state_dict() -> None:
    table = torch.randn(5, 2)
    layer = bnn.VIEmbedding(5, 2, padding_idx=1, _weight=table)
    assert layer.padding_row is not None
    torch.testing.assert_close(layer.padding_row, table[1])
    fresh = bnn.VIEmbedding(5, 2, padding_idx=1)
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh.padding_row, table[1])
    older = {k: v for k, v in layer.state_dict().items() if k != "padding_row"}
    zero = bnn.VIEmbedding(5, 2, padding_idx=1)
    zero.load_state_dict(older)  # checkpoints without the buffer: a zero row
    assert zero.padding_row is not None
    assert not zero.padding_row.any()
    assert "padding_row" not in bnn.VIEmbedding(5, 2).state_dict()
    with pytest.raises(ValueError, match="shape"):
        layer.set_padding_row(torch.zeros(3))
    with pytest.raises(ValueError, match="no padding_idx"):
        bnn.VIEmbedding(5, 2).set_padding_row(torch.zeros(2))


def test_per_unit_learned_prior_is_one_scale_per_embedding_feature() -> None:
    """The units of a table (categories, features) are its output features, as
    for a VILinear on one-hot inputs (it was one scale per category row); the
    optimum is each column's closed form, the padding row left out."""
    layer = bnn.VIEmbedding(
        5, 3, padding_idx=0, prior=bnn.LearnedNormalPrior(per="unit")
    )
    prior = layer.prior["weight"]
    assert isinstance(prior, bnn.LearnedNormalPrior)
    assert prior.log_scale.shape == (1, 3)
    means = torch.tensor([0.5, 2.0, 0.1]).expand(4, 3)  # the 4 random rows
    sds = torch.full((4, 3), 0.2)
    torch.testing.assert_close(
        prior.optimal_scale(means, sds),
        (torch.tensor([[0.5, 2.0, 0.1]]).square() + 0.04).sqrt(),
    )
