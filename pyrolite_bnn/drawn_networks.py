"""Networks drawn once from the posterior and kept for any number of calls.

Every outermost call of a Bayesian network draws new weights: right for
training and for one prediction, wrong for a loop of calls that should run
the same functions throughout (a rollout ``x = x + f(x)`` of a learned
dynamics model, decoding one token per call, Thompson sampling that evaluates
candidates in several calls). :func:`draw_networks` draws ``S`` networks once;
the returned :class:`DrawnNetworks` runs every call on them: ``nets(x)`` gives
all ``S`` networks the same inputs, ``nets.each(xs)`` gives network ``s`` its
own ``xs[s]`` (the state a rollout feeds back), all networks in one call
mapped over them with ``torch.vmap`` where that is known to give what the
calls one by one give (:mod:`pyrolite_bnn._mapped_calls`).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Hashable
from typing import Any, NoReturn

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from pyrolite_bnn import _structures
from pyrolite_bnn._capture import unbatched_kernels_unreported
from pyrolite_bnn._distributed import unwrap
from pyrolite_bnn._draw_budget import DrawSizes
from pyrolite_bnn._fixed_weights import FixedWeights
from pyrolite_bnn._host_memory import check_fits_on_host
from pyrolite_bnn._isolation import isolated
from pyrolite_bnn._mapped_calls import unmapped_reason
from pyrolite_bnn._mode_warnings import warn_batch_statistics, warn_dropout
from pyrolite_bnn._network import check_bayesian_network
from pyrolite_bnn._particles import one_particle
from pyrolite_bnn._pyro_module import local_params
from pyrolite_bnn._validation import check_count, check_finite_inputs
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.guides import guide_of
from pyrolite_bnn.laplace import LinearizedLaplace
from pyrolite_bnn.record import release_record

__all__ = ["DrawnNetworks", "PerNetworkInputWarning", "draw_networks"]

# The fewest networks DrawnNetworks.each runs in one mapped call. Mapping costs
# about what 2.5 calls of one network cost where the work per call is small (1
# CPU thread: an MLP, a convolution, a transformer layer, a recurrent step): 2
# networks ran 1.0-1.4 times faster in turn, 3 as fast or faster mapped (0.7-1.0
# times the calls' time).
_FEWEST_MAPPED = 3


class PerNetworkInputWarning(UserWarning):
    """A call of drawn networks got an input that looks like their own outputs.

    ``nets(x)`` gives every network all of ``x``: an ``x`` of shape ``(S, B,
    ...)`` that holds one row per network (their outputs, or a state computed
    from them) is read as ``S`` examples of ``B`` positions by each network,
    and the output is ``(S, S, B, ...)``, every network on every other
    network's rows. ``nets.each(x)`` runs network ``s`` on ``x[s]``. Where the
    leading ``S`` is the batch by coincidence, silence it with
    ``warnings.filterwarnings("ignore", category=bnn.PerNetworkInputWarning)``.
    """


def draw_networks(model: nn.Module, samples: int) -> DrawnNetworks:
    """Draw ``samples`` networks from ``model``'s posterior, kept for every call.

    Each network is one draw of every weight from the posterior (the
    network's guide: the generated mean-field one, or an assigned Pyro guide),
    taken now, without gradients. Calls of the returned object run on these
    draws: the same ``S`` functions in every call, however many, so a loop of
    calls (a rollout, decoding, a search over candidates) is ``S`` coherent
    trajectories. Each particle is a whole network, whatever the layers'
    training estimator, as in :func:`~pyrolite_bnn.predict`.

    The draws are a snapshot of the Bayesian weights: training the model
    afterwards does not change them (draw again). Everything else is read
    from the model at each call, as it is then: deterministic layers (a plain
    ``nn.Linear`` trunk under a Bayesian head), norm layers' parameters and
    running statistics, the model's mode. Training a deterministic part after
    drawing changes the networks; for a copy frozen as a whole (a target
    network), draw from one: ``bnn.draw_networks(copy.deepcopy(model), S)``.
    The draws keep the dtype and device the parameters had: after
    ``model.double()`` or ``model.to(device)``, calls are refused; draw
    again. Calls in training mode warn (once) about dropout, which would drop
    other activations in every call, and batch norm, which would normalise
    by each call's inputs and move the running statistics: call
    ``model.eval()`` first.

    Args:
        model: a ``bnn.VIModule``, or a torch module holding Bayesian layers.
        samples: the number of networks ``S``.

    Returns:
        The drawn networks; see :class:`DrawnNetworks`.

    Raises:
        TypeError: if ``model`` holds no Bayesian layers, or ``samples`` is
            not an integer.
        ValueError: if ``samples`` is below 1.
        MemoryError: when the draws of the weights held on the host
            (``samples`` times every weight, and the largest being drawn at
            three times its size) are more than its free memory.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> step = bnn.VISequential(bnn.VILinear(2, 8), torch.nn.Tanh(),
        ...                         bnn.VILinear(8, 2))
        >>> nets = bnn.draw_networks(step, samples=5)
        >>> x = torch.randn(3, 2)
        >>> torch.equal(nets(x), nets(x))  # the same networks in every call
        True
        >>> state = x + nets(x)  # (5, 3, 2): one state per network
        >>> for _ in range(4):
        ...     state = state + nets.each(state)  # network s continues state[s]
        >>> state.shape
        torch.Size([5, 3, 2])
    """
    model = unwrap(model)
    if isinstance(model, LinearizedLaplace):
        raise TypeError(
            "draw_networks draws from a network's variational posterior, got a "
            "bnn.laplace result: a linearised Laplace approximation predicts "
            "through the network linearised at its weights (laplace(...).predict"
            "), and networks drawn from its Gaussian would not be that model"
        )
    check_bayesian_network(model, "draw_networks needs")
    samples = check_count(samples, "samples")
    check_fits_on_host(
        DrawSizes.of(model, device_type="cpu").drawing_bytes(samples),
        f"draw_networks: drawing and keeping {samples} draws of every weight",
        "draw fewer networks",
    )
    with torch.no_grad(), local_params():
        weights = isolated(FixedWeights.drawn, guide_of(model), samples)
    return DrawnNetworks(model, weights, samples)


class DrawnNetworks:
    """``S`` networks drawn from a posterior, run on the same weights in every call.

    Made by :func:`draw_networks`. Calls run in the caller's gradient mode
    (gradients flow to the inputs, for a search over inputs, but not to the
    drawn weights), apart from the caller's Pyro handlers, and return plain
    tensors: they are no training step (a loss needs a call of the network
    itself). For the summaries of :func:`~pyrolite_bnn.predict` over these
    networks, wrap their outputs: ``bnn.Prediction(nets(x), likelihood)``.

    ``nets(x)`` gives every network all of ``x``; ``nets.each(xs)`` gives
    network ``s`` its own ``xs[s]``, as a rollout feeds each network's state
    back. A call on such a state (the networks' own outputs, ``(S, B, ...)``)
    would run every network on every network's rows: it warns
    (:class:`PerNetworkInputWarning`).

    Attributes:
        model: the network the draws are of.
        samples: the number of networks ``S``.

    Example:
        Thompson sampling: each network picks its best candidate.

        >>> import torch, pyrolite_bnn as bnn
        >>> net = bnn.VISequential(bnn.VILinear(1, 16), torch.nn.ReLU(),
        ...                        bnn.VILinear(16, 1))
        >>> nets = bnn.draw_networks(net, samples=4)
        >>> candidates = torch.linspace(-2, 2, 50).unsqueeze(-1)
        >>> picks = candidates[nets(candidates).squeeze(-1).argmax(1)]
        >>> picks.shape  # one candidate per network
        torch.Size([4, 1])
        >>> nets[0](candidates).shape  # network 0 alone
        torch.Size([1, 50, 1])
        >>> bnn.Prediction(nets(candidates), bnn.Normal(scale=0.1)).variance.shape
        torch.Size([50])
    """

    def __init__(self, model: nn.Module, weights: FixedWeights, samples: int) -> None:
        self.model = model
        self.samples = samples
        self._weights = weights
        self._placement = _placement(model)
        self._mode_checked = False
        # (batch, rank) of each network's first input in the calls so far: a
        # later call's input (S, batch, ...) of one more dimension is per network.
        self._batches_run: set[tuple[int, int]] = set()
        # The signatures (see _signature) of the inputs of the calls of each
        # that vmap could not map: calls with such inputs run in turn at once.
        self._unmapped: set[Hashable] = set()

    def __len__(self) -> int:
        return self.samples

    def __repr__(self) -> str:
        return f"DrawnNetworks({type(self.model).__name__}, samples={self.samples})"

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        """The outputs of all ``S`` networks at the same inputs.

        ``model(*inputs, **kwargs)`` for each network: tensors ``(S, B, ...)``
        (in the output's containers), as a call with ``samples=S`` returns
        them. Every network gets all of each input: per-network inputs (the
        outputs of an earlier call, a rollout's state) go to :meth:`each`.

        Warns:
            PerNetworkInputWarning: when the first tensor input is ``(S, B,
                ...)`` with ``B`` the batch of an earlier call of these
                networks and one dimension more than that call's input: it
                looks like their outputs, one row per network, which this call
                would give every network whole (an ``(S, S, B, ...)`` output).

        Raises:
            TypeError: for a ``samples=`` argument: the number of networks
                was fixed when drawing (select some with ``nets[a:b]``).
        """
        if "samples" in kwargs:
            raise TypeError(
                f"DrawnNetworks run the {self.samples} networks drawn; samples= "
                "is no argument of their calls: select networks with nets[i] or "
                "nets[a:b], or draw another number with bnn.draw_networks"
            )
        first = _first_tensor(inputs, kwargs)
        if first is not None:
            self._warn_if_per_network(first)
        self._check_model()
        out = self._run(self._weights, inputs, kwargs, self.samples)
        if first is not None and first.dim():
            self._batches_run.add((first.shape[0], first.dim()))
        return out

    def each(self, *inputs: Any, **kwargs: Any) -> Any:
        """Network ``s``'s outputs at its own inputs (row ``s`` of each).

        Every tensor input (positional or keyword), also inside tuples, lists
        and dicts (a recurrent layer's state ``(h, c)``), has the networks
        first, ``(S, ...)``, as the outputs of a call have: network ``s`` runs
        on row ``s`` of each. Other arguments go to every network as they
        are; a tensor that all networks share is given expanded,
        ``x.expand(S, *x.shape)``. The outputs are ``(S, B, ...)``; leaves of
        the output that are not tensors are the first network's.

        All networks run in one call where that is known to give what the
        calls one by one give: the call of one network, mapped over the
        networks and the rows of the inputs with ``torch.vmap``. Its outputs
        are those of the networks called one by one, ``nets[s](*rows_s)``, up
        to float rounding (batched matrix products add in another order).
        The networks run one after the other instead (``S`` calls of one
        network each, with those calls' results, errors and effects) for
        fewer than 3 networks (the calls are faster then), and wherever a
        mapped call could differ from the calls one by one, decided before
        anything runs: a call that changes state (a module's buffer or
        attribute, an input in place: the mapped call would change it once,
        not ``S`` times, and a tensor it kept would be ``vmap``'s wrapper,
        which fails when used later), hooks on a module of the network or
        global module hooks (they would run once), batch norm on the batch's
        statistics or a module with buffers in training mode, dropout in
        training mode (random numbers), torch's own ``nn.LSTM``, ``nn.GRU``,
        ``nn.RNN`` and ``nn.LSTMCell`` (no rule in ``vmap``), and code of the
        user's calling methods that are not read (``self.logger.log(h)``).
        What a ``forward`` of the user's changes is read from its code (and
        that of the helpers it calls by name); the how-to ("Several outputs,
        several calls: one network per particle") says what is seen. A
        mapped call that ``vmap`` cannot run (a ``forward`` reading a
        tensor's value into Python, ``if h.sum() > 0`` or ``.item()``; an
        operator without a batching rule; a ``PackedSequence`` output)
        changes nothing before it fails: the networks then run in turn, and
        later calls with inputs of the same kinds (ranks and dtypes) in the
        same mode run in turn at once.

        Raises:
            TypeError: if no input is a tensor.
            ValueError: if a tensor input's first dimension is not ``S``.
        """
        if any(
            isinstance(value, PackedSequence) for value in (*inputs, *kwargs.values())
        ):
            raise TypeError(
                "each cannot split a PackedSequence by network (its rows are "
                "time steps of several sequences): give all networks one packed "
                "batch with nets(packed), or give each network its own padded "
                "tensor, (S, B, L, ...)"
            )
        found = _structures.tensors((inputs, kwargs))
        if not found:
            raise TypeError(
                "each needs at least one tensor input with the networks first, "
                f"(S, B, ...) with S = {self.samples}; for inputs shared by all "
                "networks call them directly, nets(x)"
            )
        for value in found:
            if value.dim() == 0 or value.shape[0] != self.samples:
                raise ValueError(
                    "each takes tensor inputs with one row per network first, "
                    f"({self.samples}, ...): got an input of shape "
                    f"{tuple(value.shape)}. For an input that all networks share, "
                    f"call them directly, nets(x), or expand it, "
                    f"x.expand({self.samples}, *x.shape)"
                )
        self._check_model()
        first = _first_tensor(inputs, kwargs)
        if first is not None and first.dim() > 1:
            self._batches_run.add((first.shape[1], first.dim() - 1))
        signature = _signature(inputs, kwargs, self.model.training)
        if (
            self.samples < _FEWEST_MAPPED
            or signature in self._unmapped
            or unmapped_reason(self.model) is not None
        ):
            return self._each_in_turn(inputs, kwargs)
        # The mapped run reads no tensor's value: the networks' own calls
        # check their inputs' values, which the one call checks here.
        check_finite_inputs(inputs, kwargs, type(self.model).__name__)
        try:
            return self._each_at_once(inputs, kwargs)
        except Exception:  # vmap cannot run the network: see the docstring
            pass
        # Known to change nothing, the failed run left nothing behind. The
        # calls in turn give the networks' results, or their own error.
        out = self._each_in_turn(inputs, kwargs)
        self._unmapped.add(signature)
        return out

    def _each_at_once(self, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """:meth:`each` as one call of a network, mapped over the networks.

        ``torch.vmap`` maps the call of one network (one particle, as
        ``nets[s]`` runs) over the networks' weights and the rows of the
        tensor inputs; ``randomness="error"`` refuses random numbers, whose
        draws would differ from the calls one by one.

        Raises:
            Exception: whatever the mapped run raises, ``vmap``'s refusals
                among them (:meth:`each` then runs the networks in turn).
        """
        leaves, structure = _structures.flatten((inputs, kwargs))
        outputs: list[tuple[list[Any], _structures.Structure]] = []

        def network(
            values: dict[str, Tensor], rows: tuple[Tensor, ...]
        ) -> tuple[Tensor, ...]:
            row = iter(rows)
            own, own_kwargs = structure.rebuild(
                [next(row) if isinstance(leaf, Tensor) else leaf for leaf in leaves]
            )
            weights = FixedWeights(
                {site: value.unsqueeze(0) for site, value in values.items()},
                self._weights.guide,
            )
            out = one_particle(self._run(weights, own, own_kwargs, 1))
            out_leaves, out_structure = _structures.flatten(out)
            if any(isinstance(leaf, PackedSequence) for leaf in out_leaves):
                _refuse_packed_output()
            outputs.append((out_leaves, out_structure))
            return tuple(leaf for leaf in out_leaves if isinstance(leaf, Tensor))

        rows = tuple(leaf for leaf in leaves if isinstance(leaf, Tensor))
        with unbatched_kernels_unreported():
            mapped = iter(
                torch.vmap(network, randomness="error")(self._weights.values, rows)
            )
        out_leaves, out_structure = outputs[-1]
        return out_structure.rebuild(
            [next(mapped) if isinstance(leaf, Tensor) else leaf for leaf in out_leaves]
        )

    def _each_in_turn(self, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """:meth:`each` as ``S`` calls of one network each, stacked."""
        outputs = []
        for s in range(self.samples):
            row = functools.partial(_row, s=s)
            own, own_kwargs = _structures.map_leaves((inputs, kwargs), row)
            outputs.append(one_particle(self._run(self._one(s), own, own_kwargs, 1)))
        return _structures.stack(outputs)

    def _warn_if_per_network(self, first: Tensor) -> None:
        """Warn if the first input of a call looks like these networks' outputs.

        ``(S, B, ...)`` where an earlier call ran on a batch ``B`` with inputs
        of one dimension fewer (see :class:`PerNetworkInputWarning`).
        """
        if first.dim() < 2 or first.shape[0] != self.samples:
            return
        if (first.shape[1], first.dim() - 1) not in self._batches_run:
            return
        shape = tuple(first.shape)
        warn_at_caller(
            f"DrawnNetworks: the first input, of shape {shape}, has the "
            f"{self.samples} networks first and the batch {shape[1]} of an "
            "earlier call of these networks: it looks like their outputs, or a "
            "state computed from them, with one row per network. A call gives "
            "every network the whole input, so each network would run on "
            f"every network's rows (an output of shape ({self.samples}, "
            f"{shape[0]}, {shape[1]}, ...)). To run network s on row s, "
            "call nets.each(...) (a shared input expanded, x.expand(S, "
            "*x.shape)); if the leading size is a batch of your own, silence "
            "this with warnings.filterwarnings('ignore', "
            "category=bnn.PerNetworkInputWarning)",
            PerNetworkInputWarning,
        )

    def __getitem__(self, index: int | slice) -> DrawnNetworks:
        """The networks ``index`` selects (one for an integer), as ``DrawnNetworks``.

        Raises:
            TypeError: for an index that is not an integer or a slice.
            IndexError: for an integer out of range or an empty selection.
        """
        if not isinstance(index, slice):
            try:
                if _is_bool(index):
                    raise TypeError
                index = operator.index(index)  # NumPy and 0-d torch integers too
            except TypeError:
                raise TypeError(
                    f"DrawnNetworks are indexed by an int or a slice, got "
                    f"{_describe(index)}"
                ) from None
            if not -self.samples <= index < self.samples:
                raise IndexError(
                    f"network {index} out of range for {self.samples} networks"
                )
            return DrawnNetworks(self.model, self._one(index % self.samples), 1)
        chosen = range(self.samples)[index]
        if not chosen:
            raise IndexError(f"{index} selects none of the {self.samples} networks")
        rows = torch.tensor(chosen)  # a negative step too, which tensors refuse
        values = {
            site: value.index_select(0, rows.to(value.device))
            for site, value in self._weights.values.items()
        }
        return DrawnNetworks(
            self.model, FixedWeights(values, self._weights.guide), len(chosen)
        )

    def weights(self) -> dict[str, Tensor]:
        """Every weight of the ``S`` networks by site name, ``(S, *shape)`` (copies).

        The sites and shapes are those of the layers' random variables (the
        guide's, ``model.guide``), which can differ from the torch layer's
        parameters: a ``VIEmbedding`` with ``padding_idx`` draws every row but
        the padding row, which stays zero.
        """
        return {
            site: value.reshape(self.samples, *value.shape[2:]).clone()
            for site, value in self._weights.values.items()
        }

    def _one(self, s: int) -> FixedWeights:
        """The weights of network ``s`` alone."""
        values = {
            site: value[s : s + 1] for site, value in self._weights.values.items()
        }
        return FixedWeights(values, self._weights.guide)

    def _check_model(self) -> None:
        """Refuse a model moved since drawing; warn once about its training mode."""
        placement = _placement(self.model)
        if placement != self._placement:
            raise RuntimeError(
                "the model's parameters moved after its networks were drawn "
                f"(dtype and device {_describe_placement(self._placement)} then, "
                f"{_describe_placement(placement)} now: model.to(), .double(), "
                ".cuda()): the draws stay as they were; draw again with "
                "bnn.draw_networks(model, samples)"
            )
        if not self._mode_checked:
            self._mode_checked = True
            warn_dropout(
                self.model,
                "DrawnNetworks",
                "every call drops other activations, so the networks are not the "
                "same functions from call to call",
            )
            warn_batch_statistics(
                self.model,
                "DrawnNetworks",
                "an output depends on the inputs of its call",
            )

    def _run(
        self,
        weights: FixedWeights,
        inputs: tuple[Any, ...],
        kwargs: dict[str, Any],
        samples: int,
    ) -> Any:
        """``model(*inputs, **kwargs)`` on ``weights``, for ``samples`` particles."""
        with local_params():
            out = isolated(weights.run, self.model, inputs, samples, kwargs)
        for tensor in _structures.tensors(out):
            release_record(tensor)  # plain data, as a prediction's
        return out


def _first_tensor(inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    """A call's first input that is a tensor or packed sequence, if a tensor.

    Positional inputs come first, tensors inside containers count: the input
    whose leading size is the batch of the call (a ``PackedSequence``'s
    batch is its number of sequences: ``None``).
    """
    for leaf in _structures.leaves((inputs, kwargs)):
        if isinstance(leaf, Tensor):
            return leaf
        if isinstance(leaf, PackedSequence):
            return None
    return None


def _signature(
    inputs: tuple[Any, ...], kwargs: dict[str, Any], training: bool
) -> Hashable:
    """What a mapped run's success may depend on besides the model's code.

    The kinds of the inputs (a tensor's rank and dtype, another input's
    type), the keyword names and the model's mode; not the sizes, which grow
    from call to call in step-wise decoding.
    """
    kinds = tuple(
        (leaf.dim(), leaf.dtype) if isinstance(leaf, Tensor) else type(leaf)
        for leaf in _structures.leaves((inputs, kwargs))
    )
    return len(inputs), tuple(kwargs), kinds, training


def _refuse_packed_output() -> NoReturn:
    """Stop a mapped run whose network returns a ``PackedSequence``.

    Its ``batch_sizes`` would come back mapped like the data; the networks
    run in turn instead (see :meth:`DrawnNetworks.each`).
    """
    raise TypeError("a PackedSequence output cannot be mapped over the networks")


def _row(leaf: Any, s: int) -> Any:
    """Row ``s`` of a tensor input; any other input as it is."""
    return leaf[s] if isinstance(leaf, Tensor) else leaf


def _placement(model: nn.Module) -> frozenset[tuple[torch.dtype, torch.device]]:
    """The dtypes and devices of ``model``'s floating-point parameters."""
    return frozenset(
        (p.dtype, p.device) for p in model.parameters() if p.is_floating_point()
    )


def _describe_placement(placement: frozenset[tuple[torch.dtype, torch.device]]) -> str:
    """A placement for a message: ``torch.float32 on cpu``."""
    return ", ".join(sorted(f"{dtype} on {device}" for dtype, device in placement))


def _is_bool(index: object) -> bool:
    """Whether ``index`` is a boolean (Python, NumPy or a torch tensor)."""
    if isinstance(index, Tensor):
        return index.dtype == torch.bool
    return isinstance(index, bool) or type(index).__name__ == "bool_"


def _describe(index: object) -> str:
    """The type of an index for a message, with a tensor's dtype."""
    if isinstance(index, Tensor):
        return f"a tensor of dtype {index.dtype} and shape {tuple(index.shape)}"
    return type(index).__name__
