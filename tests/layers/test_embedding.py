"""VIEmbedding specifics: the padding row, options torch has, input checks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

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


def test_reset_parameters_zeroes_the_padding_row_as_torch() -> None:
    """torch's reset zeroes the padding row; this one left it as it was: a set
    row stayed, and after meta -> ``to_empty`` -> reset the padding index
    looked up uninitialised memory (training gave NaN)."""
    layer = bnn.VIEmbedding(6, 4, padding_idx=2)
    layer.set_padding_row(torch.ones(4))
    layer.reset_parameters()
    torch.testing.assert_close(layer.padding_row, torch.zeros(4), rtol=0, atol=0)
    with torch.device("meta"):
        layer = bnn.VIEmbedding(6, 4, padding_idx=2)
    layer = layer.to_empty(device="cpu")
    with torch.no_grad():
        layer.padding_row.fill_(float("nan"))  # what the fresh memory may hold
    layer.reset_parameters()
    out = layer(torch.tensor([[2]]), samples=3)
    torch.testing.assert_close(out, torch.zeros(3, 1, 1, 4), rtol=0, atol=0)


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


class _ThreeCategories(bnn.VIModule):
    """Three categorical columns, each with its embedding of the same size."""

    def __init__(self) -> None:
        super().__init__()
        self.e = bnn.VIModuleList([bnn.VIEmbedding(6, 2, padding_idx=0) for _ in "abc"])
        self.out = bnn.VILinear(6, 2)

    def forward(self, x_cat: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([e(x_cat[:, i]) for i, e in enumerate(self.e)], -1))


class _PlainRoot(nn.Module):
    """A plain torch root around a Bayesian network."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)  # type: ignore[no-any-return]


def _called(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    net(x)


def _predicted(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    bnn.predict(net, x, bnn.Categorical())


def _fitted(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = bnn.KullbackLeiblerLoss(bnn.Categorical(), len(x))
    bnn.fit(net, loss, [(x, y)], epochs=1, progress=False)


def _loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    bnn.KullbackLeiblerLoss(bnn.Categorical(), len(x))(net(x), y)


@pytest.mark.parametrize(
    "run", [_called, _predicted, _fitted, _loss], ids=["call", "predict", "fit", "loss"]
)
@pytest.mark.parametrize("plain", [False, True], ids=["VIModule", "plain_root"])
def test_an_index_error_names_the_layer_in_the_network(
    plain: bool, run: Callable[[nn.Module, torch.Tensor, torch.Tensor], None]
) -> None:
    """Three VIEmbedding(6, 2) columns and an unseen category 6 in column 1:
    the message said ``VIEmbedding(6, ...)``, not which of the three."""
    net: nn.Module = _PlainRoot(_ThreeCategories()) if plain else _ThreeCategories()
    path = r"inner\.e\." if plain else r"e\."
    x, y = torch.randint(0, 6, (8, 3)), torch.randint(0, 2, (8,))
    x[3, 1] = 6
    with pytest.raises(ValueError, match=rf"VIEmbedding '{path}1' got indices from"):
        run(net, x, y)
    with pytest.raises(ValueError, match=rf"^VIEmbedding '{path}0' expected integer"):
        run(net, x.float(), y)


class _Operations(TorchDispatchMode):
    """The names of the operations run."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("index", [5, -1, 100])
@pytest.mark.parametrize("folded", [False, True], ids=["shared", "folded"])
@pytest.mark.parametrize("padding_idx", [None, 2])
@pytest.mark.parametrize("estimator", ["auto", "reparam"])
def test_out_of_range_indices_raise_torchs_index_error_with_validation_off(
    estimator: str, padding_idx: int | None, folded: bool, index: int
) -> None:
    """With validation off, the row draws (``"auto"``) wrapped an index outside
    the table: 5 and 100 read row 0, -1 the last row, finite and wrong.
    ``torch.nn.Embedding`` raises ``IndexError`` whatever the setting; so do
    both estimators, by an indexing operation (no host synchronisation: no
    tensor value is read on the host with validation off)."""
    tokens = torch.tensor([[0, index, 4], [1, 3, 4]])
    with pytest.raises(IndexError, match="index out of range in self"):
        nn.Embedding(5, 3, padding_idx=padding_idx)(tokens)
    layer = bnn.VIEmbedding(5, 3, padding_idx=padding_idx, estimator=estimator)
    network = _FoldedTokens(layer) if folded else layer
    with (
        bnn.validation(False),
        _Operations() as operations,
        pytest.raises(IndexError, match="index out of range in self"),
    ):
        network(tokens, samples=4)
    assert "aten._local_scalar_dense.default" not in operations.names
    with pytest.raises(ValueError, match=rf"got indices from {min(index, 0)} to"):
        network(tokens, samples=4)  # validation on: the library's message


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
    with pytest.raises(ValueError, match="padding row contains 1 NaN/Inf"):
        layer.set_padding_row(torch.tensor([0.0, float("nan")]))  # was copied in
    torch.testing.assert_close(layer.padding_row, table[1])


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


# ---------------------------------------------------------------- rows drawn
# where looked up (estimator="auto", PyTorch-style calls with the generated
# guide): the outputs are those of a whole table drawn per particle.


def _set_posterior(layer: bnn.VIEmbedding, seed: int) -> None:
    """Distinct means and standard deviations (~0.3-1.3) per weight."""
    generator = torch.Generator().manual_seed(seed)
    posterior = layer.posterior["weight"]
    with torch.no_grad():
        posterior.loc.copy_(torch.randn(posterior.loc.shape, generator=generator))
        rho = posterior.rho_unconstrained
        rho.copy_(torch.rand(rho.shape, generator=generator) * 2 - 1)


class _FoldedTokens(bnn.VIModule):
    """The embedding after another Bayesian layer: its indices arrive folded."""

    def __init__(self, embed: bnn.VIEmbedding) -> None:
        super().__init__()
        self.embed = embed
        self.before = bnn.VILinear(1, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        folded = self.before(torch.ones(tokens.shape[0], 1))  # (B * S, 1)
        return self.embed(bnn.match_particles(tokens, folded))


@pytest.mark.statistical
@pytest.mark.parametrize("folded", [False, True], ids=["shared", "folded"])
def test_looked_up_rows_have_the_distribution_of_a_drawn_table(folded: bool) -> None:
    """Each particle's rows are Normal(loc, scale), as in a whole drawn table.

    Over S = 4000 particles, per looked-up row and feature: the mean within 5
    standard errors of ``loc`` (SE = scale / sqrt(S)), the standard deviation
    within 5 of ``scale`` (SE ~ scale / sqrt(2 S)); rows and particles
    uncorrelated (|corr| < 5 / sqrt(S)). An index read twice, in one sequence
    or in two sequences of the batch, is one value within a particle.
    """
    torch.manual_seed(0)
    layer = bnn.VIEmbedding(6, 3, padding_idx=4)
    _set_posterior(layer, seed=1)
    assert layer.estimator_for(torch.zeros(1, 1, dtype=torch.long)) == "rows"
    tokens = torch.tensor([[0, 3, 0, 4], [3, 5, 1, 0]])
    samples = 4000
    network = _FoldedTokens(layer) if folded else layer
    with torch.no_grad():
        out = network(tokens, samples=samples)
    assert out.shape == (samples, 2, 4, 3)
    assert bool((out[:, 0, 3] == 0).all())  # the padding row
    for first, *again in ([(0, 0), (0, 2), (1, 3)], [(0, 1), (1, 0)]):
        for position in again:
            torch.testing.assert_close(
                out[:, position[0], position[1]],
                out[:, first[0], first[1]],
                rtol=0,
                atol=0,
            )
    posterior = layer.posterior["weight"]
    loc, scale = posterior.loc.detach(), posterior.scale().detach()
    firsts = {0: (0, 0), 3: (0, 1), 5: (1, 1), 1: (1, 2)}
    bound = 5 / samples**0.5
    for index, (b, t) in firsts.items():
        row = index - (index > 4)  # the random rows skip the padding row
        values = out[:, b, t]  # (S, E)
        mean_error = (values.mean(0) - loc[row]) / scale[row]
        std_error = (values.std(0) - scale[row]) / scale[row]
        assert float(mean_error.abs().max()) < bound, index
        assert float(std_error.abs().max()) < bound * 2**-0.5, index
        lagged = torch.corrcoef(torch.stack([values[:-1, 0], values[1:, 0]]))[0, 1]
        assert abs(float(lagged)) < bound, index  # particles independent
    rows = torch.stack([out[:, b, t, 0] for b, t in firsts.values()])
    correlations = torch.corrcoef(rows) - torch.eye(len(firsts))
    assert float(correlations.abs().max()) < bound  # rows independent


class _EmbedAndHead(bnn.VIModule):
    def __init__(self, embed: bnn.VIEmbedding) -> None:
        super().__init__()
        self.embed = embed
        self.head = bnn.VILinear(3, 2, estimator="reparam")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(1))


@pytest.mark.statistical
@pytest.mark.parametrize("kl", ["auto", "mc"])
def test_loss_and_gradients_equal_the_whole_table_draw_in_expectation(
    kl: str,
) -> None:
    """The row draws and whole-table draws (``"reparam"``, Pyro's guide's) give
    the same expected loss and gradients. With ``kl="mc"`` the row draws
    estimate the KL from a draw of their own (unbiased, independent of the
    forward pass). 300 repetitions of 8 particles each; every mean within 5
    standard errors of the difference (plus 1e-6 where both are exact)."""
    torch.manual_seed(0)
    tokens = torch.tensor([[1, 2, 2, 0], [3, 0, 0, 6], [2, 5, 1, 1]])
    target = torch.tensor([0, 1, 1])
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 20, kl=kl)  # type: ignore[arg-type]
    net = _EmbedAndHead(bnn.VIEmbedding(7, 3, padding_idx=0, scale_grad_by_freq=True))
    _set_posterior(net.embed, seed=2)
    parameters = list(net.parameters())
    results = {}
    for estimator in ("auto", "reparam"):
        net.embed.estimator = estimator
        runs = []
        for _ in range(300):
            loss = loss_fn(net(tokens, samples=8), target)
            grads = torch.autograd.grad(loss, parameters)
            runs.append(
                torch.cat([loss.detach().reshape(1), *[g.reshape(-1) for g in grads]])
            )
        stacked = torch.stack(runs)
        results[estimator] = (stacked.mean(0), stacked.var(0) / len(runs))
    (mean_rows, var_rows), (mean_table, var_table) = results.values()
    tolerance = 5 * (var_rows + var_table).sqrt() + 1e-6
    assert bool(((mean_rows - mean_table).abs() <= tolerance).all())


class _Counting(TorchDispatchMode):
    """The largest tensor any operation returns (its number of elements)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for value in pytree.tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_a_training_step_draws_the_rows_it_looks_up_not_whole_tables(
    padding_idx: int | None,
) -> None:
    """A step (forward, closed-form KL, backward) of a 20,000-row table with 16
    particles makes no tensor larger than the table itself (the posterior's
    loc, scale and their gradients): no particle's table is drawn. (Drawn
    whole, the step held 16 tables; with padding_idx, copies of them.)"""
    torch.manual_seed(0)
    rows, features, samples = 20_000, 8, 16
    net = _EmbedAndHead(bnn.VIEmbedding(rows, features, padding_idx=padding_idx))
    net.head = bnn.VILinear(features, 2)
    tokens = torch.randint(0, rows, (32, 10))
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Categorical(), 1000)
    counting = _Counting()
    with counting:
        loss = loss_fn(net(tokens, samples=samples), torch.randint(0, 2, (32,)))
        loss.backward()
    assert counting.largest <= rows * features
    assert loss_fn.last_kl is not None


class _CallsTwice(bnn.VIModule):
    """One embedding read three ways in a pass: two calls and its whole table."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = bnn.VIEmbedding(9, 4, padding_idx=2)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        first = self.embed(tokens)
        second = self.embed(tokens.flip(1))
        table = self.embed.weight[:, 0]  # a tied output layer reads it
        # (S, V, E) for the folded rows b * S + s: particle s's table each
        per_row = table.repeat(tokens.shape[0], 1, 1)
        logits = first @ per_row.transpose(1, 2)
        return first, second, logits


def test_calls_and_table_reads_in_one_pass_share_one_draw() -> None:
    """Within a particle, a row is one value in both calls of the layer and in
    the whole table read by a tied output layer (the layer then draws whole
    tables: its rows alone could not serve the table read)."""
    torch.manual_seed(0)
    net = _CallsTwice()
    _set_posterior(net.embed, seed=3)
    tokens = torch.tensor([[1, 2, 8, 1], [0, 5, 5, 3]])
    first, second, logits = net(tokens, samples=5)
    torch.testing.assert_close(second, first.flip(2), rtol=0, atol=0)
    # logits[s, b, t, v] = <row of tokens[b, t], row v> within particle s
    own = (first * first).sum(-1)
    picked = logits.gather(-1, tokens.expand(5, 2, 4).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(picked, own, rtol=1e-6, atol=1e-6)


def test_plain_root_reading_the_table_asks_for_a_second_call() -> None:
    """A plain torch root cannot run its forward again: one clear error, then
    the layer draws whole tables."""

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = bnn.VIEmbedding(9, 4)
            self.other = bnn.VILinear(4, 4)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            hidden = self.other(self.embed(tokens))  # (B * S, L, E)
            per_row = self.embed.weight[:, 0].repeat(tokens.shape[0], 1, 1)
            return hidden @ per_row.transpose(1, 2)

    net = Tied()
    tokens = torch.tensor([[1, 2, 8]])
    with pytest.raises(RuntimeError, match=r"whole table VIEmbedding\.weight is read"):
        net(tokens)
    assert net(tokens).shape == (10, 1, 3, 9)


@pytest.mark.parametrize("estimator", ["auto", "reparam"])
@pytest.mark.parametrize("folded", [False, True], ids=["shared", "folded"])
def test_padding_and_frequency_scaled_gradients_are_torchs(
    estimator: str, folded: bool
) -> None:
    """``scale_grad_by_freq`` counts an index's uses per particle, the padding
    positions not among any random row's (they read the deterministic row,
    which gets no gradient), as ``torch.nn.Embedding``."""
    torch.manual_seed(0)
    layer = bnn.VIEmbedding(
        6, 3, padding_idx=2, scale_grad_by_freq=True, estimator=estimator
    )
    posterior = layer.posterior["weight"]
    with torch.no_grad():
        posterior.rho_unconstrained.fill_(-40.0)  # scale ~ 4e-18: draws = means
    tokens = torch.tensor([[2, 0, 0, 3, 2], [5, 2, 0, 1, 1]])
    samples = 3
    weights = torch.randn(samples, 2, 5, 3)
    network = _FoldedTokens(layer) if folded else layer
    (network(tokens, samples=samples) * weights).sum().backward()
    table = bnn.to_deterministic(layer)
    assert table.scale_grad_by_freq
    assert table.padding_idx == 2
    for s in range(samples):
        (table(tokens) * weights[s]).sum().backward()
    expected = torch.cat([table.weight.grad[:2], table.weight.grad[3:]])
    torch.testing.assert_close(posterior.loc_unconstrained.grad, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rows_in_half_precision(dtype: torch.dtype) -> None:
    layer = bnn.VIEmbedding(10, 4, padding_idx=0, max_norm=1.0, dtype=dtype)
    out = layer(torch.tensor([[1, 2, 0, 1]]), samples=3)
    assert out.dtype == dtype
    torch.testing.assert_close(out[:, 0, 0], out[:, 0, 3], rtol=0, atol=0)
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), 10)
    loss = loss_fn(out, torch.zeros(1, 4, 4, dtype=dtype))
    loss.backward()
    assert bool(torch.isfinite(loss))


# ------------------------------------------------- predict within the budget


class _EmbedMean(bnn.VIModule):
    def __init__(self, rows: int, features: int) -> None:
        super().__init__()
        self.embed = bnn.VIEmbedding(rows, features)
        self.head = bnn.VILinear(features, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(1))


def test_predict_draws_a_large_table_in_particle_groups_within_the_budget() -> None:
    """40 draws of a 4,000 x 16 table (10.2 MB) do not fit a 4 MB budget, not
    even drawn layer by layer in each chunk (the table is one tensor, drawn for
    all particles at once): predict runs the particles in groups whose draws
    fit (5 at a time), so no tensor it makes takes more than half the budget
    (it drew 40 tables at once, silently). Each group is the same networks in
    every chunk: the result does not depend on batch_size."""
    torch.manual_seed(0)
    net = _EmbedMean(4000, 16)
    tokens = torch.randint(0, 4000, (12, 6))
    budget = 4_000_000
    results = []
    for batch_size in (None, 5, 12):
        torch.manual_seed(1)
        counting = _Counting()
        with counting:
            pred = bnn.predict(
                net,
                tokens,
                bnn.Categorical(),
                samples=40,
                batch_size=batch_size,
                memory_budget=budget,
            )
        assert counting.largest * 4 <= budget // 2
        results.append(pred.samples)
    assert results[0].shape == (40, 12, 3)
    assert float(results[0].std(0).min()) > 1e-3  # particles differ
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-6, atol=1e-6)


def test_predict_warns_when_one_particle_does_not_fit_the_budget() -> None:
    net = _EmbedMean(4000, 16)  # one draw of the table: 256,000 bytes
    tokens = torch.randint(0, 4000, (4, 6))
    with pytest.warns(RuntimeWarning, match=r"drawing the weight 'embed\.weight'"):
        pred = bnn.predict(
            net, tokens, bnn.Categorical(), samples=3, memory_budget=500_000
        )
    assert pred.samples.shape == (3, 4, 3)


def test_padding_idx_cannot_change_after_construction() -> None:
    """Setting padding_idx = None on a padded table raised IndexError at the
    next call; setting one on a table built without was silently ignored
    (the random rows are laid out around the padding row at construction)."""
    padded, plain = bnn.VIEmbedding(5, 2, padding_idx=0), bnn.VIEmbedding(5, 2)
    padded.padding_idx = 0  # the same value: allowed
    with pytest.raises(AttributeError, match="padding_idx is fixed at construction"):
        padded.padding_idx = None
    with pytest.raises(AttributeError, match=r"fixed at construction \(it is None\)"):
        plain.padding_idx = 0
    assert padded(torch.tensor([[0, 1]]), samples=2)[:, 0, 0].abs().sum() == 0
