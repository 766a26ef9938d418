"""Tests for :mod:`pyrolite_bnn._unwritten_tensors` (tensors ``to_empty`` left
without values: states saved from them, interrupted conversions, remedies).

The refusals where each kind of module reads its tensors are tested with the
modules (``tests/distributions/test_variational.py``, ``test_priors.py``,
``test_predictive.py``, ``tests/test_calibration.py``).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import pyrolite_bnn as bnn
from pyrolite_bnn._unwritten_tensors import (
    RefusesUnwrittenTensors,
    holds_no_values,
    unwritten_state_keys,
)
from pyrolite_bnn.distributions.variational import MeanFieldNormalPosterior


def _net() -> bnn.VISequential:
    return bnn.VISequential(bnn.VILinear(3, 8), nn.ReLU(), bnn.VILinear(8, 2))


def _saved_and_loaded(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` through ``torch.save`` and ``torch.load`` (a file elsewhere)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Tensor] = torch.load(buffer, weights_only=True)
    return loaded


def _emptied_without(source: nn.Module, key: str) -> bnn.VISequential:
    """A network after ``to_empty`` that a load without ``key`` wrote."""
    network = _net().to_empty(device="cpu")
    state = {k: v for k, v in source.state_dict().items() if k != key}
    assert network.load_state_dict(state, strict=False).missing_keys == [key]
    return network


def test_holds_no_values_reads_every_bit_set_in_floating_tensors_only() -> None:
    """Every bit set is a NaN no arithmetic gives (``float('nan')`` has other
    bits); in an integer tensor it is the value -1."""
    marker = torch.full((3,), -1, dtype=torch.int32).view(torch.float32)
    assert holds_no_values(marker)
    assert holds_no_values(torch.full((2,), -1, dtype=torch.int16).view(torch.half))
    assert not holds_no_values(torch.full((3,), float("nan")))
    assert not holds_no_values(torch.zeros(3) / 0.0 * 0.0)
    assert not holds_no_values(torch.full((3,), -1, dtype=torch.int32))
    partly = marker.clone()
    partly[1] = 0.5
    assert not holds_no_values(partly)
    assert not holds_no_values(torch.empty(0))
    assert not holds_no_values(torch.empty(3, device="meta"))
    assert not holds_no_values([float("nan")])


@pytest.mark.filterwarnings(
    "ignore:Sparse .* tensor support is in beta",
    "ignore:The PyTorch API of nested tensors",
)
def test_holds_no_values_answers_for_sparse_and_nested_tensors() -> None:
    """Their bits cannot be viewed as integers ("Cannot access storage of
    SparseTensorImpl", probe falsepos24b): they hold values (to_empty's memory
    is dense; the elements a sparse tensor does not store are zeros), even
    where every stored value has every bit set."""
    marker = torch.full((2, 2), -1, dtype=torch.int32).view(torch.float32)
    for tensor in (
        marker.to_sparse(),
        marker.to_sparse_csr(),
        marker.to_sparse_bsr((1, 1)),
        torch.nested.nested_tensor([marker[0], marker[1, :1]]),
        torch.nested.nested_tensor([marker[0], marker[1, :1]], layout=torch.jagged),
    ):
        assert not holds_no_values(tensor), tensor.layout


@pytest.mark.parametrize("assign", [False, True])
@pytest.mark.parametrize(
    "key", ["0.posterior.weight.rho_unconstrained", "2.prior.weight.scale"]
)
def test_a_state_saved_from_a_tensor_without_values_writes_none_where_loaded(
    key: str, assign: bool
) -> None:
    """``to_empty``, a ``load_state_dict(strict=False)`` without ``rho``, then
    ``state_dict()`` saved and loaded strictly into a fresh network: the fresh
    network took to_empty's memory (every bit set) as values, and predict
    gave NaN variances and the loss NaN without a word (probe falsepos23a; a
    prior's scale was refused by the load as "NaN", not as no values). The
    loaded tensor now holds no values, refused where read, naming the state
    it came from; a state with values writes it again."""
    torch.manual_seed(0)
    trained, x, y = _net(), torch.randn(5, 3), torch.randn(5, 2)
    source = _emptied_without(trained, key)
    state = _saved_and_loaded(source.state_dict())
    assert holds_no_values(state[key])
    network = _net()
    network.load_state_dict(state, assign=assign)  # strict: every key is there
    assert unwritten_state_keys(network) == [key]
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), dataset_size=5)
    reads: dict[str, Callable[[], Any]] = {
        "loss": lambda: loss_fn(network(x, samples=2), y)
    }
    if "posterior" in key:  # a prediction reads no prior
        reads["forward"] = lambda: network(x, samples=2)
        reads["predict"] = lambda: bnn.predict(
            network, x, bnn.Normal(scale=0.1), samples=4
        )
    name = key.rsplit(".", 1)[1]
    message = (
        rf"tensor {name!r} of shape .* holds no values: the state dict loaded "
        "into it held none for it: it was saved from a tensor that nothing had "
        "written to since to_empty"
    )
    for read in reads.values():
        with pytest.raises(ValueError, match=message):
            read()
    network.load_state_dict(trained.state_dict())
    assert unwritten_state_keys(network) == []
    torch.manual_seed(1)
    expected = loss_fn(trained(x, samples=2), y)
    torch.manual_seed(1)
    torch.testing.assert_close(reads["loss"](), expected, rtol=0, atol=0)


def test_a_mean_loaded_without_values_is_drawn_by_a_reset() -> None:
    """A posterior's mean loaded from a state saved without values is no mean
    to keep: the layer's reset draws one, as after ``to_empty``."""
    key = "0.posterior.weight.loc_unconstrained"
    source = _emptied_without(_net(), key)
    network = _net()
    network.load_state_dict(_saved_and_loaded(source.state_dict()))
    network[0].posterior["weight"].reset_parameters()
    mean = network[0].posterior["weight"].loc
    assert bool((mean.abs() <= 3**-0.5).all())  # Kaiming-uniform, as built
    assert unwritten_state_keys(network) == []


def test_state_dict_of_an_emptied_network_passes_its_tensors_on_to_be_written() -> None:
    """``state_dict()`` does not refuse unwritten tensors: torch's distributed
    checkpoints load into the tensors it returns (in place), and those writes
    are writes."""
    torch.manual_seed(0)
    trained, x = _net(), torch.randn(4, 3)
    network = _net().to_empty(device="cpu")
    targets = network.state_dict()
    assert all(holds_no_values(value) for value in targets.values())
    for key, value in trained.state_dict().items():
        targets[key].copy_(value)  # what torch.distributed.checkpoint.load does
    assert unwritten_state_keys(network) == []
    torch.manual_seed(1)
    expected = trained(x, samples=2)
    torch.manual_seed(1)
    torch.testing.assert_close(network(x, samples=2), expected, rtol=0, atol=0)


def _interrupt_call(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, at: int
) -> list[int]:
    """Make ``owner.name`` raise ``KeyboardInterrupt`` on its ``at``-th call.

    Counting the calls for tensors with values: the conversion's own check
    tries it on an empty tensor first.
    """
    real = getattr(owner, name)
    calls = [0]

    def interrupted(tensor: Tensor, *args: Any, **kwargs: Any) -> Any:
        calls[0] += tensor.numel() > 0
        if calls[0] == at:
            raise KeyboardInterrupt
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)
    return calls


def _memory(network: nn.Module) -> dict[str, int]:
    return {key: value.data_ptr() for key, value in network.state_dict().items()}


@pytest.mark.parametrize("at", range(1, 17))
def test_a_to_empty_stopped_half_way_records_the_memory_it_gave(
    monkeypatch: pytest.MonkeyPatch, at: int
) -> None:
    """A Ctrl-C in the middle of ``to_empty`` left the tensors it had given
    new memory unrecorded: a prior's ``loc`` read -1.3e19 and the loss was
    inf without a refusal (probe falsepos23a). Stopped at any of its sixteen
    allocations (one per tensor), each tensor with new memory is refused
    until written; the others keep their values."""
    torch.manual_seed(0)
    network, x, y = _net(), torch.randn(4, 3), torch.randn(4, 2)
    reference = _net()
    reference.load_state_dict(network.state_dict())
    before = _memory(network)
    calls = _interrupt_call(monkeypatch, torch, "empty_like", at)
    with pytest.raises(KeyboardInterrupt):
        network.to_empty(device="cpu")
    monkeypatch.undo()
    assert calls[0] == at
    moved = sorted(k for k, ptr in _memory(network).items() if ptr != before[k])
    assert len(moved) == at - 1
    assert sorted(unwritten_state_keys(network)) == moved
    loss_fn = bnn.KullbackLeiblerLoss(bnn.Normal(scale=1.0), dataset_size=4)
    if moved:
        with pytest.raises(ValueError, match="holds no values: after to_empty"):
            loss_fn(network(x, samples=2), y)
    network.load_state_dict(reference.state_dict())
    torch.manual_seed(1)
    expected = loss_fn(reference(x, samples=2), y)
    torch.manual_seed(1)
    torch.testing.assert_close(loss_fn(network(x, samples=2), y), expected)


@pytest.mark.parametrize("at", range(1, 17))
@pytest.mark.parametrize("tensor", ["loc_unconstrained", "rho_unconstrained"])
def test_a_move_stopped_half_way_keeps_unwritten_tensors_refused(
    monkeypatch: pytest.MonkeyPatch, tensor: str, at: int
) -> None:
    """``.double()`` of a network with an unwritten posterior tensor, stopped
    half-way: the record was made after the module's move returned, so a mean
    already moved (new memory, NaN) when its ``rho`` was interrupted read as
    written, and its NaN was used. Stopped at any tensor, the unwritten
    tensor stays refused."""
    key = f"0.posterior.weight.{tensor}"
    network = _emptied_without(_net(), key)
    calls = _interrupt_call(monkeypatch, torch.Tensor, "double", at)
    with pytest.raises(KeyboardInterrupt):
        network.double()
    monkeypatch.undo()
    assert calls[0] == at
    assert unwritten_state_keys(network) == [key]
    with pytest.raises(ValueError, match=rf"{tensor!r} of shape"):
        network[0].posterior["weight"].distribution()


_MODULES: dict[str, Callable[[], RefusesUnwrittenTensors]] = {
    "posterior": lambda: bnn.VILinear(3, 2).posterior["weight"],
    "prior": lambda: bnn.NormalPrior(0.5, 2.0),
    "likelihood": lambda: bnn.Normal(scale=0.5),
    "learned likelihood": lambda: bnn.Normal(init_scale=0.5),
    "temperature": lambda: bnn.TemperatureScaling(2.0),
    "variance factor": lambda: bnn.VarianceScaling(3.0),
    "calibrated likelihood": lambda: bnn.VarianceScaling(3.0).wrap(bnn.Normal(0.5)),
}


@pytest.mark.parametrize("kind", sorted(_MODULES))
def test_every_remedy_the_refusal_names_writes_the_tensors(kind: str) -> None:
    """The refusal told every kind of module to "call reset_parameters() on the
    model's modules": a calibration has none (AttributeError), and is no
    model's module (probe falsepos23a). Each remedy named is one the module
    has, and it writes every tensor: the built values come back."""
    module = _MODULES[kind]()
    if isinstance(module, MeanFieldNormalPosterior):
        module.loc_init = torch.nn.init.zeros_  # the mean a reset draws
        module.reset_parameters(torch.zeros(2, 3))
    built = {k: v.clone() for k, v in module.state_dict().items()}
    module.to_empty(device="cpu")
    with pytest.raises(ValueError, match="holds no values") as refusal:
        module.check_written()
    message = str(refusal.value)
    remedies: dict[str, Callable[[], object]] = {
        "load a state_dict": lambda: module.load_state_dict(built),
        "reset_parameters()": lambda: module.reset_parameters(),
    }
    if isinstance(module, bnn.TemperatureScaling):
        labels = torch.tensor([0, 1, 2, 0, 1, 2])
        guesses = torch.tensor([0, 1, 2, 0, 2, 0])  # four right, two wrong
        logits = 2.0 * torch.nn.functional.one_hot(guesses, 3).float()
        remedies["calibration.fit("] = lambda: module.fit(
            logits.expand(4, 6, 3), labels, bnn.Categorical()
        )
    elif isinstance(module, bnn.VarianceScaling):
        remedies["calibration.fit("] = lambda: module.fit(
            torch.randn(4, 6, 1), torch.randn(6), bnn.Normal(0.5)
        )
    named = [remedy for remedy in remedies if remedy in message]
    assert "load a state_dict" in named, message
    assert ("fit" in message) == ("calibration.fit(" in named), message
    assert ("reset_parameters" in message) == ("reset_parameters()" in named)
    assert callable(getattr(module, "reset_parameters", None)) == (
        "reset_parameters()" in named
    )
    for remedy in named:
        module.to_empty(device="cpu")
        remedies[remedy]()
        module.check_written()
        if remedy != "calibration.fit(":
            for key, value in module.state_dict().items():
                torch.testing.assert_close(value, built[key], rtol=0, atol=0)
