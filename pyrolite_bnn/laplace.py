r"""Post-hoc linearised Laplace posterior of a trained network.

``bnn.laplace(model, x, y, predictive)`` puts a Gaussian posterior
``N(theta*, Sigma)`` on the weights of a trained network around their trained
values ``theta*`` (the posterior means of a Bayesian network, the weights of a
plain ``torch.nn`` module), with the generalised Gauss-Newton (GGN) precision

.. math::

    \Sigma^{-1} = \sum_n J_n^\top \Lambda_n J_n + \delta I,

where ``J_n`` is the Jacobian of the network output at input ``x_n`` with
respect to the chosen weights, ``Lambda_n`` the Hessian of ``-log p(y_n | f)``
with respect to the output ``f`` (``I / sigma^2`` for
:class:`~pyrolite_bnn.Normal`, ``diag(p) - p p^T`` for
:class:`~pyrolite_bnn.Categorical`, ``p (1 - p)`` for
:class:`~pyrolite_bnn.Bernoulli`), and ``delta`` the prior precision of an
isotropic ``N(0, I / delta)`` prior on the weights, chosen by maximising the
Laplace approximation of the log marginal likelihood
(:meth:`LinearizedLaplace.log_marginal_likelihood`) unless given.

Predictions use the network linearised at ``theta*``:
``f(x; theta* + d) ~= f(x; theta*) + J(x) d`` with ``d ~ N(0, Sigma)``, so the
output is Gaussian, ``N(f(x; theta*), J(x) Sigma J(x)^T)``. Each particle is one
draw of ``d``, the same for every input, and
:class:`~pyrolite_bnn.Prediction` summarises the particles' outputs like those
of a Bayesian network. Unlike mean-field variational inference, the
covariance couples all the weights, so the output variance grows where the
data do not constrain the function (between and beyond the training inputs).

The weights are the entries training moves. The padding row of an embedding
(``torch.nn.Embedding(..., padding_idx=i)``, whose look-up gives it no
gradient, or a :class:`~pyrolite_bnn.VIEmbedding`'s, which is no random
variable) stays at its value: it is not counted in ``P``, has no prior and is
not perturbed, so its value changes neither the prior precision nor the
predictions of inputs that do not read it. That holds only where nothing else
reads the table. A table shared with another module (a tied output layer,
``out.weight = emb.weight``) is trained there, and so is one a ``forward``
reads directly (``F.linear(h, self.emb.weight)``, fairseq's shared input and
output embedding): the fit computes the Jacobians over the padding row too
and leaves the row out only where all its columns are zero at every fitting
input; otherwise the whole row is weights, as in the same network holding the
table as a plain parameter.

The Jacobians come from ``torch.func`` (``vmap`` of ``jacrev``, in chunks of
inputs); where it cannot batch a kernel (torch's fused LSTM and GRU), plain
autograd computes them example by example instead, with one warning.

Example:
    >>> import torch, pyrolite_bnn as bnn
    >>> net = torch.nn.Sequential(
    ...     torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    ... )
    >>> x, y = torch.randn(30, 1), torch.randn(30)
    >>> la = bnn.laplace(net, x, y, bnn.Normal(scale=0.5))
    >>> la.num_parameters, la.posterior_covariance.shape
    (25, torch.Size([25, 25]))
    >>> pred = bnn.predict(la, torch.randn(5, 1), bnn.Normal(scale=0.5))
    >>> pred.samples.shape, pred.epistemic_var.shape
    (torch.Size([100, 5, 1]), torch.Size([5]))
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, SupportsFloat, get_args

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from pyrolite_bnn._capture import unbatched_kernels_unreported
from pyrolite_bnn._distributed import unwrap
from pyrolite_bnn._forward import network_args
from pyrolite_bnn._frozen_entries import FrozenEntries
from pyrolite_bnn._likelihoods import as_likelihood, describe_likelihood
from pyrolite_bnn._module_copy import copy_module
from pyrolite_bnn._network import bayesian_positions
from pyrolite_bnn._scalar_search import minimise_expanding
from pyrolite_bnn._validation import (
    check_count,
    check_finite,
    check_input_dtype,
    check_positive,
    floating_dtype,
    validation,
)
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.calibration import Calibration
from pyrolite_bnn.distributions._precision import summary_dtype
from pyrolite_bnn.distributions.predictive import (
    Bernoulli,
    Categorical,
    Normal,
    PredictiveDistribution,
)
from pyrolite_bnn.export import to_deterministic
from pyrolite_bnn.module import VIModule
from pyrolite_bnn.predict import (
    Prediction,
    PredictMode,
    likelihood_snapshot,
    warn_untrained,
)

__all__ = ["DEFAULT_MAX_PARAMETERS", "LinearizedLaplace", "laplace"]

DEFAULT_MAX_PARAMETERS = 20_000
"""Most weights a dense Laplace covariance may have (``subset="all"``)."""

Subset = Literal["all", "last_layer"]

# Jacobian entries computed at once when building the GGN (64 MiB in float32).
_JACOBIAN_ENTRIES = 2**24
# The 1-D search over log(prior precision) covers exp(+-14), 8e-7 to 1.2e6.
_LOG_PRECISION_BOUND = 14.0
_LOG_PRECISION_LIMIT = 30.0
_SUPPORTED = (
    "Normal (homoscedastic), Categorical (of logits) and Bernoulli likelihoods of "
    "pyrolite_bnn (torch_blue's vi.distributions.MeanFieldNormal() and "
    "Categorical() become them)"
)
# Parameter names an error about ``names=`` lists at most.
_NAMES_SHOWN = 20


def _output_hessian_root(
    predictive: PredictiveDistribution, output: Tensor, jac: Tensor
) -> Tensor:
    """Rows ``A`` with ``A^T A = sum_n J_n^T Lambda_n J_n``, ``(R, P)``.

    ``A`` stacks ``Lambda_n^(1/2) J_n``: ``J_n / sigma`` (``Normal``),
    ``sqrt(p (1 - p)) J_n`` (``Bernoulli``), and for ``Categorical`` the
    symmetric square root of ``diag(p) - p p^T`` (batched ``C x C``
    eigendecompositions) times ``J_n``.

    Args:
        predictive: the likelihood.
        output: network outputs at the expansion point, ``(B, K)``
            (``Categorical``: ``(B, C)`` logits).
        jac: their Jacobians ``(B, K, P)``.
    """
    params = jac.shape[-1]
    if isinstance(predictive, Normal):
        inverse_scale = predictive.noise_scale().detach().to(output).reciprocal()
        return jac.reshape(-1, params) * inverse_scale
    if isinstance(predictive, Bernoulli):
        p = torch.sigmoid(output)
        return (jac * (p * (1 - p)).sqrt().unsqueeze(-1)).reshape(-1, params)
    assert isinstance(predictive, Categorical)
    p = output.double().softmax(-1)
    hessian = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    values, vectors = torch.linalg.eigh(hessian)
    root: Tensor = (vectors * values.clamp_min(0).sqrt().unsqueeze(-2)) @ vectors.mT
    return (root.to(jac) @ jac).reshape(-1, params)


def _check_prior_precision(value: object) -> float:
    """``value`` as a float if it is a positive, finite number, else raise.

    Numbers as :func:`~pyrolite_bnn._validation.check_positive` takes them
    (numpy scalars, one-element tensors).
    """
    if isinstance(value, str):  # a misspelt option
        raise ValueError(
            f"prior_precision must be 'marglik' or a positive finite number, got "
            f"{value!r}"
        )
    return check_positive(value, "prior_precision")


def _supported_likelihood(predictive: object, who: str) -> PredictiveDistribution:
    """``predictive`` as a likelihood (:func:`as_likelihood`) laplace supports.

    Raises:
        TypeError: for what is no likelihood.
        NotImplementedError: for a likelihood laplace has no curvature for.
    """
    likelihood = as_likelihood(predictive, who)
    if type(likelihood) not in (Normal, Categorical, Bernoulli):
        raise NotImplementedError(
            f"laplace supports the {_SUPPORTED}, got {describe_likelihood(likelihood)}"
        )
    return likelihood


def _check_dtype(network: nn.Module, x: Tensor) -> None:
    """The error of a network call for a floating input of another dtype."""
    check_input_dtype((x,), {}, floating_dtype(network), type(network).__name__)


def _batches(
    x: Tensor | Iterable[tuple[Tensor, Tensor]], y: Tensor | None, network: nn.Module
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` as one batch, or the ``(x, y)`` batches of a data loader.

    Each batch is checked: shapes, and the inputs' dtype against ``network``.
    """
    if y is not None:
        x = _single_input(x)
    if hasattr(x, "__array__") and not isinstance(x, Tensor):
        raise TypeError(
            f"laplace needs torch tensors, got x of type {type(x).__name__}; "
            "convert it with torch.as_tensor(x, dtype=torch.float32)"
        )
    if isinstance(x, Tensor):
        if y is None:
            raise ValueError("laplace needs targets y with inputs x (or a DataLoader)")
        if x.dim() == 0 or not isinstance(y, Tensor) or y.dim() == 0:
            raise ValueError(
                "laplace needs inputs x (N, ...) and targets y (N, ...), got "
                f"{tuple(x.shape)} and "
                f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}"
            )
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"laplace: x has {x.shape[0]} examples but y has {y.shape[0]}"
            )
        if x.shape[0] == 0:
            raise ValueError("laplace: the batch is empty (x has 0 examples)")
        _check_dtype(network, x)
        yield x, y
        return
    if y is not None:
        raise ValueError(
            "laplace takes targets y only with a tensor x; a DataLoader gives "
            "(x, y) batches itself"
        )
    for batch in x:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(
                "laplace needs a DataLoader of (x, y) batches, got a batch of type "
                f"{type(batch).__name__}"
            )
        yield from _batches(batch[0], batch[1], network)


def _single_input(x: Any) -> Any:
    """The input tensor of ``x``; the several inputs of a network are refused.

    A tuple or list of one tensor is that tensor; of several tensors (the
    inputs of a network with several, as :func:`~pyrolite_bnn.predict` takes
    them) it is refused: the Jacobians are taken per example of one input
    tensor. Anything else is returned as it is.
    """
    inputs = network_args(x)
    if len(inputs) == 1 and isinstance(inputs[0], Tensor):
        return inputs[0]
    if len(inputs) > 1 and all(isinstance(v, Tensor) for v in inputs):
        raise ValueError(
            f"laplace supports networks with one input tensor; got x as a "
            f"{type(x).__name__} of {len(inputs)} inputs (a network with several "
            "inputs). Give the network one input tensor (e.g. concatenate the "
            "inputs in one tensor and split it in forward), or use the "
            "variational posterior (bnn.fit, bnn.predict), which takes several"
        )
    return x


def _expansion_network(model: nn.Module) -> nn.Module:
    """A plain copy of ``model`` at the expansion point, in eval mode."""
    model = unwrap(model)
    if isinstance(model, VIModule):
        network = to_deterministic(model)
    elif isinstance(model, nn.Module):
        if bayesian_positions(model, limit=1):
            raise TypeError(
                "laplace takes a bnn.VIModule or a plain torch module; a plain "
                f"module holding Bayesian layers ({type(model).__name__}) has no "
                "expansion point here: wrap it in a bnn.VIModule subclass"
            )
        network = copy_module(model, "bnn.laplace")
    else:
        raise TypeError(f"laplace needs a torch module, got {type(model).__name__}")
    return network.eval()


def _plain_copy(network: nn.Module) -> nn.Module:
    """A copy, in eval mode, of the plain network given to :class:`LinearizedLaplace`.

    The posterior's weights are a snapshot (``theta``); the network they run in
    is one too, so that training the caller's network on, or its mode, does not
    move the posterior (and the posterior's frozen weights do not freeze it).
    """
    network = unwrap(network)
    if isinstance(network, VIModule):
        raise TypeError(
            "LinearizedLaplace takes a plain network at its expansion point, got "
            f"the Bayesian {type(network).__name__}: use bnn.laplace(model, x, y, "
            "predictive), or pass bnn.to_deterministic(model)"
        )
    if not isinstance(network, nn.Module):
        raise TypeError(
            f"LinearizedLaplace needs a torch module, got {type(network).__name__}"
        )
    return copy_module(network, "LinearizedLaplace").eval()


def _warn_sequence_first(network: nn.Module) -> None:
    """Warn that examples are read along dimension 0 if a layer is sequence-first.

    Inputs ``(L, B, ...)`` of a ``batch_first=False`` network were taken as
    ``L`` examples, each a sequence of one step: a posterior of another model,
    silently (precisions off by up to 1.0 against the batch-first twin).
    """
    sequence_first = [
        path or "<root>"
        for path, module in network.named_modules()
        if getattr(module, "batch_first", None) is False
    ]
    if sequence_first:
        more = ", ..." if len(sequence_first) > 3 else ""
        warn_at_caller(
            "laplace reads the examples along dimension 0 of x, but "
            f"{', '.join(sequence_first[:3])}{more} (modules of the network) "
            "take sequence-first inputs (batch_first=False): for x of shape "
            "(L, B, ...) the posterior would treat each position as an example; "
            "build the network with batch_first=True and pass (B, L, ...)"
        )


def _last_layer(network: nn.Module, x: Tensor) -> list[str]:
    """Names of the parameters of the last module with parameters that runs.

    By the end of a call: a parent owning a parameter it applies after its
    children (an output weight ``h @ self.w_out``) is the last layer; one that
    applies it before them is taken too (a known limit: see :func:`laplace`).
    """
    owners = [m for m in network.modules() if any(True for _ in m.parameters(False))]
    called: list[nn.Module] = []
    handles = [
        m.register_forward_hook(lambda module, i, o: called.append(module))
        for m in owners
    ]
    try:
        with torch.no_grad():
            network(x)
    finally:
        for handle in handles:
            handle.remove()
    if not called:
        raise ValueError("laplace: the network ran no module with parameters")
    last = {id(p) for p in called[-1].parameters(False)}
    return [n for n, p in network.named_parameters() if id(p) in last]


def _checked_names(names: object, network: nn.Module) -> tuple[str, ...]:
    """``names`` as distinct parameter names of ``network``, else raise.

    A name listed twice would count its weights twice (``P`` and the prior's
    terms of the evidence with them); a misspelt one failed with a bare
    ``KeyError``.

    Raises:
        TypeError: for one string, or anything but an iterable of strings.
        ValueError: for no names, a name listed twice, or one that is not a
            parameter of ``network``.
    """
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise TypeError(
            f"names must be a list of parameter names of the network, got {names!r}"
        )
    chosen = tuple(names)
    other = [n for n in chosen if not isinstance(n, str)]
    if other:
        raise TypeError(f"names must be parameter names (str), got {other[0]!r}")
    valid = [n for n, _ in network.named_parameters()]
    more = f" ... ({len(valid)} in all)" if len(valid) > _NAMES_SHOWN else ""
    shown = f"{valid[:_NAMES_SHOWN]}{more}"
    if not chosen:
        raise ValueError(
            f"names is empty: give the weights with a posterior, among {shown}"
        )
    twice = sorted({n for n in chosen if chosen.count(n) > 1})
    if twice:
        raise ValueError(
            f"names lists {twice} more than once: their weights would be counted "
            "once per listing (in P and in the evidence's prior terms); give "
            "each name once"
        )
    known = set(valid)
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ValueError(
            f"names {unknown} are no parameters of the network; its parameters "
            f"(network.named_parameters()) are {shown}"
        )
    return chosen


class LinearizedLaplace(nn.Module):
    """Gaussian posterior over (some of) a network's weights, linearised predictive.

    Built and fitted by :func:`laplace`; see :mod:`pyrolite_bnn.laplace` for
    the model. Built directly, it holds no posterior until :meth:`fit` has
    computed one: until then, what reads the fit (:meth:`predict`, calling it,
    :meth:`output_covariance`, :attr:`posterior_covariance`,
    :attr:`posterior_precision`, :meth:`log_marginal_likelihood`,
    :meth:`fit_prior_precision`) raises ``RuntimeError``. A posterior whose
    state is loaded (``load_state_dict``) counts as fitted.

    The constructor works on a copy of ``network``, as :func:`laplace` does
    (which builds it from a copy of the model it is given): the copy is put in
    eval mode and its parameters are frozen. The caller's network is not
    changed (neither its ``requires_grad`` flags nor its mode) and may go on
    training: the posterior keeps the weights it was built with. A
    ``bnn.VIModule`` is refused: :func:`laplace` takes one (its expansion
    point is :func:`~pyrolite_bnn.to_deterministic`'s network).

    The posterior is kept as the eigendecomposition of the GGN, so a new prior
    precision changes it without recomputing Jacobians. With fewer than
    ``P / 2`` rows ``Lambda_n^(1/2) J_n`` in all (``N K`` small against ``P``)
    the GGN has low rank and a thin SVD of those rows gives its ``r`` nonzero
    eigenpairs in ``O(r^2 P)``; otherwise the dense ``P x P`` GGN is
    eigendecomposed (``O(P^3)``). Both in float64.

    Args:
        network: the trained plain ``torch.nn`` network; it is copied, not
            changed.
        names: distinct names, in the copy's ``named_parameters()``, of the
            weights with a posterior (the others stay fixed at their values;
            so does an embedding's padding row that the network reads only
            through the embedding: :meth:`fit` tells from the Jacobians).
        predictive: its likelihood, as for :func:`laplace`.
        subset: the label of ``names`` kept in :attr:`subset`.

    Raises:
        TypeError: if ``network`` is a ``bnn.VIModule`` or no module, if
            ``names`` is not a list of strings (one string), or if torch
            cannot copy the network (a pruned weight: make the pruning
            permanent with ``torch.nn.utils.prune.remove`` first).
        ValueError: if ``names`` is empty, lists a name twice, or names no
            parameter of the network.

    Attributes:
        network: plain copy of the network at the expansion point (eval mode,
            parameters frozen).
        names: names (in ``network``) of the weights with a posterior.
        subset: ``"all"`` or ``"last_layer"``.
        theta: the expansion point, the chosen weights flattened and
            concatenated, ``(P,)``: every entry but the frozen ones.
        frozen_entries: which entries of the named parameters, flattened and
            concatenated, are no weights, a boolean mask: the padding row of
            an embedding whose Jacobian columns :meth:`fit` found zero at
            every fitting input (nothing but the look-up reads it). They keep
            the network's values. All ``False`` before :meth:`fit`.
        eigenvalues: of the GGN ``sum_n J_n^T Lambda_n J_n``, ``(r,)`` (>= 0;
            the GGN's other ``P - r`` eigenvalues are zero).
        eigenvectors: the matching orthonormal columns, ``(P, r)``.
        prior_precision: ``delta`` of the prior ``N(0, I / delta)``.
        log_likelihood: ``log p(data | theta*)`` summed over the data.
        input_shape: shape of one input example once fitted (``None`` before):
            prediction inputs must match it.

    Shape:
        - ``forward(x, samples)``: ``(B, ...) -> (S, B, ...)``, the network's
          output shape with a leading particle dimension.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> net = torch.nn.Sequential(
        ...     torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
        ... )
        >>> x, y = torch.randn(30, 1), torch.randn(30)
        >>> la = bnn.LinearizedLaplace(net, ["2.weight", "2.bias"], bnn.Normal(0.5))
        >>> la.fit(x, y).fit_prior_precision().posterior_covariance.shape
        torch.Size([9, 9])
        >>> all(p.requires_grad for p in net.parameters())  # net is not changed
        True
    """

    theta: Tensor
    frozen_entries: Tensor
    eigenvalues: Tensor
    eigenvectors: Tensor
    prior_precision: Tensor
    log_likelihood: Tensor
    predictive: PredictiveDistribution

    def __init__(
        self,
        network: nn.Module,
        names: list[str],
        predictive: PredictiveDistribution,
        subset: Subset = "all",
    ) -> None:
        super().__init__()
        predictive = _supported_likelihood(predictive, "LinearizedLaplace")
        network = _plain_copy(network)  # the caller's network is not changed
        self.network = network
        self.names = _checked_names(names, network)
        self.subset = subset
        params = dict(network.named_parameters())
        self._shapes = [params[n].shape for n in self.names]
        # Referenced, not a submodule: the likelihood belongs to the user's loss.
        object.__setattr__(self, "predictive", predictive)
        self._use_entries(None)  # every entry a weight until fit tells
        wide = self.eigenvalues
        self.register_buffer("prior_precision", wide.new_ones(()))
        self.register_buffer("log_likelihood", wide.new_zeros(()))
        network.requires_grad_(False)  # the copy's
        # Shape of one input example, known once fitted (checked on prediction).
        self.input_shape: tuple[int, ...] | None = None
        # The Normal likelihood's noise scale the GGN was built with.
        self._fitted_noise: float | None = None

    def _use_entries(self, frozen: Tensor | None) -> None:
        """Make the weights all entries of the named parameters but ``frozen``.

        Sets :attr:`frozen_entries` and :attr:`theta` (the network's values),
        and clears the posterior (no eigenpairs, not fitted): it belonged to
        the weights before.

        Raises:
            ValueError: where ``frozen`` leaves no weight.
        """
        params = dict(self.network.named_parameters())
        whole = torch.cat([params[n].detach().reshape(-1) for n in self.names])
        mask = torch.zeros(len(whole), dtype=torch.bool, device=whole.device)
        if frozen is not None:
            mask = frozen.to(mask)
        free = (~mask).nonzero().squeeze(-1) if bool(mask.any()) else None
        theta = whole if free is None else whole[free]
        if not theta.numel():
            raise ValueError(
                f"names {list(self.names)} hold no weight that training moves: an "
                "embedding's padding row that only the look-up reads gets no "
                "gradient and stays fixed, so there is nothing to put a posterior "
                "on; name other weights"
            )
        self.register_buffer("frozen_entries", mask)
        # The other entries keep the network's values (see _weights).
        self.register_buffer("_free_entries", free, persistent=False)
        self.register_buffer("theta", theta)
        # The posterior in float64 whatever the network's dtype: a float32 GGN
        # and Sigma = I / delta - V diag V^T lose the small variances (those at
        # the data) to rounding, and the evidence's prior precision with them.
        wide = theta.new_zeros(0, dtype=torch.float64)
        self.register_buffer("eigenvalues", wide)
        self.register_buffer("eigenvectors", wide.new_zeros(len(theta), 0))
        # Whether a posterior was computed (fit) or loaded (load_state_dict).
        self._fitted = False

    def fit(
        self, x: Tensor | Iterable[tuple[Tensor, Tensor]], y: Tensor | None = None
    ) -> LinearizedLaplace:
        """Compute the GGN and the log-likelihood of the data at the expansion point.

        Replaces those of an earlier call; the prior precision is kept. An
        embedding's padding row is a candidate frozen entry: its Jacobian
        columns are computed with the others, and it is left out of the
        weights (:attr:`frozen_entries`) only where they are zero at every
        input of ``x`` (its look-up gives it no gradient and nothing else
        reads it); otherwise the row is weights. A network without padding
        rows is fitted as it was.

        Args:
            x: inputs ``(N, ...)``, or an iterable of ``(x, y)`` batches.
            y: targets ``(N, ...)``; ``None`` with batches.

        Returns:
            ``self``.

        Raises:
            ValueError: for inconsistent data, or where the named parameters
                hold nothing but frozen padding rows.
        """
        entries = FrozenEntries(self.network, self.names)
        if entries.has_candidates:  # the Jacobians over the padding rows too
            self._use_entries(None)
        count = self.num_parameters
        rows: list[Tensor] = []  # rows of A while there are few (low rank)
        ggn: Tensor | None = None  # dense A^T A once there are many
        log_likelihood = torch.zeros_like(self.log_likelihood)
        predictive = self.predictive
        first = True
        with torch.no_grad():
            for xb, yb in _batches(x, y, self.network):
                self.input_shape = tuple(xb.shape[1:])
                output = self._function(xb)(self.theta)
                if output.shape[0] != xb.shape[0]:
                    raise ValueError(
                        f"laplace: the network maps {xb.shape[0]} inputs to an "
                        f"output of shape {tuple(output.shape)}; expected (B, ...)"
                    )
                predictive.check_target(output.unsqueeze(0), yb)
                if first:  # a trained network: its values tell (a final Sigmoid)
                    predictive.warn_probabilities_as_logits(output.unsqueeze(0))
                    first = False
                log_likelihood += predictive.log_likelihood(
                    output.unsqueeze(0), yb
                ).sum()
                flat = output.reshape(output.shape[0], -1)
                step = self._jacobian_chunk(xb)
                for start in range(0, xb.shape[0], step):
                    jac = self.jacobian(xb[start : start + step])
                    entries.observe(jac)
                    out = flat[start : start + step]
                    if isinstance(predictive, Categorical):
                        classes = output.shape[-1]
                        jac = jac.reshape(-1, classes, count)
                        out = out.reshape(-1, classes)
                    root = _output_hessian_root(predictive, out, jac).double()
                    keep = predictive.observed(yb[start : start + step])
                    if keep is not None:  # unobserved positions: no curvature
                        rows_kept = keep.reshape(-1)  # one row per output entry
                        if isinstance(predictive, Categorical):
                            rows_kept = rows_kept.repeat_interleave(classes)
                        root = root[rows_kept]
                    if ggn is None and (len(root) + sum(map(len, rows))) * 2 <= count:
                        rows.append(root)
                        continue
                    if ggn is None:
                        ggn = root.new_zeros(count, count)
                        for kept in rows:
                            ggn += kept.T @ kept
                        rows = []
                    ggn += root.T @ root
            frozen = entries.frozen()
            if frozen is not None:  # zero columns of the Jacobians: exact
                self._use_entries(frozen)
                kept = (~self.frozen_entries).nonzero().squeeze(-1)
                rows = [root[:, kept] for root in rows]
                ggn = None if ggn is None else ggn[kept][:, kept]
                count = self.num_parameters
            # float64 (the rows are): float32 eigh fails to converge on
            # ill-conditioned GGNs, and loses their small eigenvalues.
            if ggn is None:  # rank <= P / 2: thin SVD of A, O(R^2 P)
                stacked = (
                    torch.cat(rows) if rows else self.eigenvectors.new_zeros(0, count)
                )
                _, singular, vh = torch.linalg.svd(stacked, full_matrices=False)
                eigenvalues, eigenvectors = singular.square(), vh.T
            else:
                eigenvalues, eigenvectors = torch.linalg.eigh(ggn)
            self.eigenvalues = eigenvalues.clamp_min(0)
            self.eigenvectors = eigenvectors
            self.log_likelihood.copy_(log_likelihood)
        if isinstance(predictive, Normal):
            self._fitted_noise = float(predictive.noise_scale().detach())
        # The likelihood as the curvature saw it: the user's object may go on
        # training (a learned noise scale), which this posterior does not follow.
        object.__setattr__(self, "_fitted_predictive", likelihood_snapshot(predictive))
        self._fitted = True
        return self

    def _check_fitted(self, what: str) -> None:
        """Refuse ``what`` before there is a posterior (the GGN of the data).

        Before :meth:`fit` the posterior is the prior alone (a zero GGN and
        log-likelihood): predictions and evidence of a model that saw no data.
        A posterior pickled before this check existed counts as fitted.
        """
        if not self.__dict__.get("_fitted", True):
            raise RuntimeError(
                f"LinearizedLaplace.{what} needs a fitted posterior: call "
                ".fit(x, y) first (or build it with bnn.laplace(model, x, y, "
                "predictive), which fits it)"
            )

    def _fitted_likelihood(self) -> PredictiveDistribution:
        """The likelihood as it was when the curvature was built.

        The one given to :func:`laplace` where no copy was kept (older pickles,
        a posterior whose state was loaded).
        """
        fitted = self.__dict__.get("_fitted_predictive")
        return self.predictive if fitted is None else fitted

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Take the GGN rank of the saved posterior (a fitted one has ``r > 0``).

        ``torch.nn.Module`` copies saved buffers into existing ones of the same
        shape; the eigenpairs' shape depends on the data the posterior was
        fitted on, so they are resized to the saved shapes first. The saved
        :attr:`frozen_entries` (which the fit found) are taken before, so that
        :attr:`theta` has the saved size; a state saved without them is read
        by its ``theta``: every entry a weight, or (as laplace left them out
        before it looked at the Jacobians) every embedding's padding row
        frozen.
        """
        key = prefix + "frozen_entries"
        frozen = state_dict.get(key)
        inferred = frozen is None
        if inferred:
            frozen = self._older_frozen_entries(state_dict.get(prefix + "theta"))
        current = self.frozen_entries
        if (
            isinstance(frozen, Tensor)
            and frozen.shape == current.shape
            and not torch.equal(frozen.to(current), current)
        ):
            self._use_entries(frozen)
        for name in ("eigenvalues", "eigenvectors"):
            saved = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(saved, Tensor) and saved.shape != current.shape:
                if saved.dim() != current.dim() or (
                    name == "eigenvectors" and saved.shape[0] != current.shape[0]
                ):
                    continue  # a real mismatch: torch reports it below
                setattr(self, name, current.new_empty(saved.shape))
        super()._load_from_state_dict(
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )
        if inferred and frozen is not None and key in missing_keys:
            missing_keys.remove(key)
        if prefix + "eigenvectors" in state_dict:  # a posterior's state: fitted
            self._fitted = True

    def _older_frozen_entries(self, theta: object) -> Tensor | None:
        """The frozen entries of a state saved without them, told by its ``theta``.

        ``None`` where its size matches neither way (torch reports it).
        """
        if not isinstance(theta, Tensor):
            return None
        everything = self.frozen_entries.numel()
        padding = FrozenEntries(self.network, self.names).candidates
        if theta.numel() == everything:
            return torch.zeros_like(padding)
        if theta.numel() == everything - int(padding.sum()):
            return padding
        return None

    # ------------------------------------------------------------------ posterior
    @property
    def num_parameters(self) -> int:
        """Number ``P`` of weights with a posterior."""
        return self.theta.numel()

    @property
    def rank(self) -> int:
        """Number ``r`` of kept GGN eigenpairs (the other ``P - r`` are zero)."""
        return self.eigenvalues.numel()

    @property
    def _spans_all_weights(self) -> bool:
        """Whether the GGN's eigenvectors span every weight direction (``r = P``).

        The dense eigendecomposition keeps all ``P`` eigenpairs: the prior's
        part outside them, ``(I - V V^T) / delta``, is then zero. Computed,
        it was float64 rounding magnified by ``1 / delta`` (by ``1 /
        sqrt(delta)`` in the samples): a prior precision of ``1e-36`` gave a
        predictive standard deviation of 1299 where it is 0.45.
        """
        return self.rank == self.num_parameters

    def _largest_posterior_variance(self, delta: float) -> float:
        """The largest eigenvalue of :attr:`posterior_covariance` at ``delta``.

        ``1 / (lambda_min + delta)`` where the eigenvectors span all weights,
        else ``1 / delta`` (the directions the data leave free).
        """
        smallest = (
            float(self.eigenvalues.min())
            if self._spans_all_weights and self.rank
            else 0.0
        )
        return math.inf if smallest + delta == 0 else 1.0 / (smallest + delta)

    @property
    def posterior_precision(self) -> Tensor:
        """``GGN + prior_precision * I``, ``(P, P)``."""
        self._check_fitted("posterior_precision")
        v = self.eigenvectors
        eye = torch.eye(len(v), dtype=v.dtype, device=v.device)
        return (v * self.eigenvalues) @ v.T + self.prior_precision * eye

    @property
    def posterior_covariance(self) -> Tensor:
        """``Sigma``, the inverse of :attr:`posterior_precision`, ``(P, P)``.

        ``V diag(1 / (lambda + delta)) V^T + (I - V V^T) / delta`` (the second
        part zero where ``V`` spans all weights, ``r = P``).
        """
        self._check_fitted("posterior_covariance")
        v, delta = self.eigenvectors, self.prior_precision
        covariance = (v / (self.eigenvalues + delta)) @ v.T
        if self._spans_all_weights:
            return covariance
        eye = torch.eye(len(v), dtype=v.dtype, device=v.device)
        return covariance + (eye - v @ v.T) / delta

    def log_marginal_likelihood(
        self, prior_precision: SupportsFloat | None = None
    ) -> Tensor:
        r"""Laplace approximation of ``log p(data | delta)`` at the expansion point.

        .. math::

            \log p(D \mid \theta^*) - \frac{\delta}{2} \|\theta^*\|^2
            + \frac{P}{2} \log \delta
            - \frac{1}{2} \sum_i \log(\lambda_i + \delta),

        with ``lambda_i`` the GGN eigenvalues: the Gaussian integral of
        ``p(D | theta) N(theta; 0, I / delta)`` with the log-likelihood
        expanded to second order (GGN) about ``theta*``. Exact for a linear
        Gaussian model when ``theta*`` is the posterior mode.

        Args:
            prior_precision: ``delta``; default: :attr:`prior_precision`.

        Returns:
            A scalar tensor (nats).

        Raises:
            RuntimeError: before :meth:`fit`.
            ValueError: for a ``prior_precision`` that is not a positive,
                finite number.
        """
        self._check_fitted("log_marginal_likelihood()")
        given = self.prior_precision if prior_precision is None else prior_precision
        if prior_precision is not None:
            # checked as a number; a tensor keeps its graph (the evidence's
            # gradient in log delta, laplace-torch's idiom)
            _check_prior_precision(
                prior_precision.detach()
                if isinstance(prior_precision, Tensor)
                else prior_precision
            )
        delta = torch.as_tensor(given, dtype=torch.float64, device=self.theta.device)
        lam = self.eigenvalues.double()
        # log det(GGN + delta I) = sum_i log(lambda_i + delta) + (P - r) log(delta)
        zero = self.num_parameters - self.rank
        log_det = (lam + delta).log().sum() + zero * delta.log()
        return (
            self.log_likelihood.double()
            - delta / 2 * self.theta.double().square().sum()
            + self.num_parameters / 2 * delta.log()
            - log_det / 2
        )

    def fit_prior_precision(
        self, x: Tensor | None = None, y: Tensor | None = None, samples: int = 100
    ) -> LinearizedLaplace:
        """Choose :attr:`prior_precision` by the evidence or on validation data.

        Without data: the maximiser of the Laplace marginal likelihood
        (:meth:`log_marginal_likelihood`). With validation data ``(x, y)``:
        the minimiser of the negative log-likelihood of the linearised
        posterior predictive (the mixture of ``samples`` particles) on them,
        with the same standard-normal draws for every candidate (common random
        numbers), so the objective is a smooth function of the precision. Use
        the second where calibration on test data matters more than the
        evidence, e.g. for classifiers, which the evidence tends to leave
        under-confident.

        Both search ``log(delta)`` in ``[-14, 14]`` on a grid (step 0.2),
        moved out up to ``+-30`` where the best value lies at an edge, and
        refine the best cell by golden-section search. A precision at that
        limit warns: the objective still improves beyond it (towards
        ``e^30``, the Laplace posterior is the expansion point alone).

        Args:
            x: validation inputs ``(N, ...)`` (not the training data).
            y: validation targets ``(N, ...)``.
            samples: particles of the validation predictive.

        Returns:
            ``self``.

        Raises:
            RuntimeError: before :meth:`fit`.
        """
        self._check_fitted("fit_prior_precision()")
        if (x is None) != (y is None):
            raise ValueError("fit_prior_precision takes both x and y, or neither")
        objective = (
            self._negative_evidence
            if x is None or y is None
            else self._validation_nll(x, y, samples)
        )
        log_best, at_limit = minimise_expanding(
            objective, _LOG_PRECISION_BOUND, _LOG_PRECISION_LIMIT
        )
        best = math.exp(log_best)
        if at_limit:
            warn_at_caller(
                f"fit_prior_precision: the best prior precision {best:.3g} is at the "
                f"search limit e^{'-' if log_best < 0 else ''}"
                f"{_LOG_PRECISION_LIMIT:g}: the objective still improves beyond it "
                + (
                    "(a larger precision shrinks the posterior to the expansion "
                    "point: the validation data reward no epistemic uncertainty)"
                    if log_best > 0
                    else "(a smaller precision: an almost flat prior)"
                ),
                UserWarning,
            )
        self.set_prior_precision(best)
        return self

    def _negative_evidence(self, log_delta: float) -> float:
        return -float(self.log_marginal_likelihood(math.exp(log_delta)))

    def _validation_nll(
        self, x: Tensor, y: Tensor, samples: int
    ) -> Callable[[float], float]:
        """``log(delta) -> -mean_n log mean_s p(y_n | output_s(x_n))``."""
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples!r}")
        self._check_input(x)
        if not isinstance(y, Tensor) or y.shape[:1] != x.shape[:1]:
            raise ValueError("validation targets y must be a tensor (N, ...) like x")
        theta, v = self.theta, self.eigenvectors
        with torch.no_grad():
            centre = self._function(x)(theta)
            self._fitted_likelihood().check_target(centre.unsqueeze(0), y)
            jac = self.jacobian(x).reshape(-1, len(theta)).to(v.dtype)  # (N K, P)
            z = torch.randn(samples, len(theta), dtype=v.dtype, device=theta.device)
            # output_s = centre + J Sigma^(1/2) z_s, the square root as in
            # _sample: J V diag((lambda + delta)^(-1/2)) V^T z_s plus
            # J (z_s - V V^T z_s) / sqrt(delta), whose difference is delta-free.
            jv, zv = jac @ v, z @ v
            # (N K, S); zero where V spans all weights
            outside = None if self._spans_all_weights else jac @ z.T - jv @ zv.T

        def objective(log_delta: float) -> float:
            delta = math.exp(log_delta)
            with torch.no_grad():
                moved = (jv * (self.eigenvalues + delta).rsqrt()) @ zv.T
                if outside is not None:
                    moved = moved + outside / math.sqrt(delta)  # (N K, S)
                outputs = centre + moved.T.reshape(samples, *centre.shape).to(
                    centre.dtype
                )
                mixture = self._fitted_likelihood().mixture_log_likelihood(outputs, y)
            return -float(mixture.mean())

        return objective

    def set_prior_precision(self, prior_precision: SupportsFloat) -> None:
        """Use the prior ``N(0, I / prior_precision)`` (positive, finite).

        To maximise the evidence instead, call :meth:`fit_prior_precision`.

        Raises:
            ValueError: for a value that is not a positive finite number, or
                so small that the posterior covariance is not finite in the
                predictions' dtype (the network's, at least ``float32``): its
                largest variance, ``1 / (lambda_min + delta)``, or ``1 /
                delta`` in the directions the data leave free, beyond the
                dtype's largest number (``delta`` below ``2.9e-39`` in
                ``float32``); the predictions would be infinite or NaN.
        """
        if isinstance(prior_precision, str):
            raise ValueError(
                "set_prior_precision takes a positive finite number, got "
                f"{prior_precision!r}; to maximise the evidence call "
                "fit_prior_precision()"
            )
        value = _check_prior_precision(prior_precision)
        largest = self._largest_posterior_variance(value)
        dtype = summary_dtype(self.theta.dtype)  # the predictions' summaries'
        limit = torch.finfo(dtype).max
        if not largest <= limit:
            low, high = math.exp(-_LOG_PRECISION_LIMIT), math.exp(_LOG_PRECISION_LIMIT)
            raise ValueError(
                f"prior_precision={value:.3g} is too small: the posterior's largest "
                f"variance would be {largest:.3g}, beyond the largest {dtype} "
                f"number ({limit:.3g}), so the posterior covariance and the "
                "predictions would be infinite or NaN. The "
                f"evidence search ('marglik') covers {low:.3g} to {high:.3g} "
                f"(e^-{_LOG_PRECISION_LIMIT:g} to e^{_LOG_PRECISION_LIMIT:g}); "
                f"give a value of at least {1.0 / limit:.3g} or use 'marglik'"
            )
        self.prior_precision.fill_(value)

    # ---------------------------------------------------------------- linearised
    def _weights(self, theta: Tensor) -> dict[str, Tensor]:
        """The named parameters with the weights ``theta`` in their free entries."""
        free: Tensor | None = getattr(self, "_free_entries", None)  # older pickles
        if free is not None:  # the other entries keep the network's values
            params = dict(self.network.named_parameters())
            whole = torch.cat([params[n].reshape(-1) for n in self.names])
            theta = whole.scatter(0, free, theta)
        chunks = torch.split(theta, [math.prod(s) for s in self._shapes])
        pairs = zip(self.names, chunks, self._shapes, strict=True)
        return {name: chunk.view(shape) for name, chunk, shape in pairs}

    def _check_input(self, x: object) -> None:
        """Inputs ``(B, ...)`` shaped like the examples the posterior was fitted on."""
        if not isinstance(x, Tensor):
            raise TypeError(
                f"LinearizedLaplace needs inputs x as a torch.Tensor, got "
                f"{type(x).__name__}"
            )
        if x.dim() == 0:
            raise ValueError("LinearizedLaplace needs inputs x of shape (B, ...)")
        _check_dtype(self.network, x)
        fitted = self.input_shape
        if fitted is not None and tuple(x.shape[1:]) != fitted:
            raise ValueError(
                f"LinearizedLaplace was fitted on inputs of shape (N, "
                f"{', '.join(map(str, fitted))}), got {tuple(x.shape)}"
            )

    def _function(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """``theta -> network output at x`` (other weights fixed)."""

        def f(theta: Tensor) -> Tensor:
            out = functional_call(self.network, self._weights(theta), (x,))
            if not isinstance(out, Tensor) or out.dim() == 0:
                raise TypeError(
                    "laplace needs a network that returns one tensor (B, ...), got "
                    f"{type(out).__name__}"
                )
            return out

        return f

    def jacobian(self, x: Tensor) -> Tensor:
        """Jacobians of the flattened outputs at ``x``, ``(B, K, P)``.

        ``K`` is the number of output values per input.
        """

        def single(theta: Tensor, xi: Tensor) -> Tensor:
            return self._function(xi.unsqueeze(0))(theta).reshape(-1)

        self._check_input(x)
        check_finite(x, "laplace input")
        if not len(x):  # vmap maps over at least one input
            with torch.no_grad():
                out = self._function(x)(self.theta)
            return self.theta.new_zeros(0, math.prod(out.shape[1:]), len(self.theta))
        with validation(False):  # no data-dependent checks under vmap
            try:
                with unbatched_kernels_unreported():
                    result: Tensor = vmap(jacrev(single), in_dims=(None, 0))(
                        self.theta, x
                    )
            except RuntimeError as error:  # torch's fused LSTM/GRU under torch.func
                if "random" in str(error):  # a network that draws: no Jacobian
                    raise
                result = self._looped_jacobian(single, x, error)
        return result

    def _looped_jacobian(
        self, single: Callable[[Tensor, Tensor], Tensor], x: Tensor, error: Exception
    ) -> Tensor:
        """Jacobians example by example, by plain autograd.

        ``torch.func`` has no batched rules for some fused kernels: an LSTM's
        derivatives failed with "Expected a proper Tensor but got None for
        argument 'workspace'", a GRU's forward under ``vmap`` with a broadcast
        error. Plain reverse mode through each example's outputs works there,
        one backward pass per output value: slower, and said once.
        """

        def jacobian_at(xi: Tensor) -> Tensor:
            def outputs(theta: Tensor) -> Tensor:
                return single(theta, xi)

            with torch.enable_grad():
                rows: Tensor = torch.autograd.functional.jacobian(  # type: ignore[no-untyped-call]
                    outputs, self.theta
                )
            return rows

        try:
            result = torch.stack([jacobian_at(xi) for xi in x])
        except RuntimeError as looped:
            raise looped from error
        if not self.__dict__.get("_looping"):  # said once, once it worked
            object.__setattr__(self, "_looping", True)
            warn_at_caller(
                "laplace: torch.func could not batch the network's Jacobians "
                f"({str(error).splitlines()[0][:120]}); computing them example by "
                "example with autograd (slower)"
            )
        return result

    def _jacobian_chunk(self, x: Tensor) -> int:
        """Inputs per chunk so that a chunk's Jacobian has ~2**24 entries."""
        with torch.no_grad():  # an empty x has no outputs: any chunk size will do
            outputs = self._function(x[:1])(self.theta).numel()
        return max(1, _JACOBIAN_ENTRIES // (max(outputs, 1) * self.num_parameters))

    def output_covariance(self, x: Tensor) -> Tensor:
        """Exact covariance ``J(x) Sigma J(x)^T`` of the linearised outputs.

        Args:
            x: inputs ``(B, ...)``.

        Returns:
            ``(B, K, K)``, ``K`` the number of output values per input.

        Raises:
            RuntimeError: before :meth:`fit`.
        """
        self._check_fitted("output_covariance()")
        with torch.no_grad():
            # Sigma = V diag(1 / (lambda + delta)) V^T + (I - V V^T) / delta:
            # two positive semi-definite parts, no difference of large terms
            # (J J^T / delta minus a correction cancelled to negative
            # variances at small delta).
            v, delta = self.eigenvectors, self.prior_precision
            jac = self.jacobian(x).to(v.dtype)
            projected = jac @ v
            covariance = (projected / (self.eigenvalues + delta)) @ projected.mT
            if not self._spans_all_weights:
                residual = jac - projected @ v.T
                covariance = covariance + residual @ residual.mT / delta
            return covariance.to(self.theta.dtype)

    def forward(self, x: Tensor, samples: int = 100) -> Tensor:
        """Outputs of ``samples`` linearised networks, ``(S, B, ...)``.

        Particle ``s`` is ``f(x; theta*) + J(x) d_s`` (Jacobians by
        ``vmap(jacrev)``, in chunks of inputs) with ``d_s ~ N(0, Sigma)``
        drawn once per particle, shared by all inputs, through a square root
        of ``Sigma`` built from the GGN eigenpairs.

        Raises:
            RuntimeError: before :meth:`fit`.
        """
        self._check_fitted("forward()")
        return self._sample(x, samples, None)

    def _sample(self, x: Tensor, samples: int, batch_size: int | None) -> Tensor:
        samples = check_count(samples, "samples")
        self._check_input(x)
        theta, v, delta = self.theta, self.eigenvectors, self.prior_precision
        # float64: along the data's directions z and its correction cancel.
        z = torch.randn(samples, len(theta), dtype=v.dtype, device=theta.device)
        # Sigma^(1/2) z = V diag((lambda + delta)^(-1/2)) V^T z + (z - V V^T z)
        # / sqrt(delta): each part without a difference of large terms.
        along = z @ v
        deltas = (along * (self.eigenvalues + delta).rsqrt()) @ v.T
        if not self._spans_all_weights:  # else zero
            deltas = deltas + (z - along @ v.T) / delta.sqrt()
        step = batch_size or self._jacobian_chunk(x[:1])
        chunks = []
        with torch.no_grad():
            for start in range(0, max(x.shape[0], 1), step):  # empty x: one chunk
                xb = x[start : start + step]
                centre = self._function(xb)(self.theta)
                jac = self.jacobian(xb).to(deltas.dtype)
                moved = torch.einsum("bkp,sp->sbk", jac, deltas).to(centre.dtype)
                chunks.append(centre + moved.reshape(samples, *centre.shape))
        return torch.cat(chunks, 1)

    def predict(
        self,
        x: Tensor,
        samples: int = 100,
        *,
        predictive: PredictiveDistribution | None = None,
        batch_size: int | None = None,
        mode: PredictMode = "sample",
        calibration: Calibration | None = None,
    ) -> Prediction:
        """Linearised posterior predictive at ``x``.

        Same as ``bnn.predict(self, x, predictive, samples)``.

        Args:
            x: inputs ``(N, ...)``.
            samples: particles ``S`` (weight perturbations).
            predictive: the likelihood; default: the one of :func:`laplace`.
            batch_size: inputs per chunk; ``None``: as many as keep the
                chunk's Jacobian at about ``2**24`` entries.
            mode: ``"sample"``, or ``"mean"`` for the network at ``theta*``
                (one particle).
            calibration: a fitted post-hoc calibration (see
                :func:`~pyrolite_bnn.predict`).

        Returns:
            A :class:`~pyrolite_bnn.Prediction` of ``(S, N, ...)`` outputs.

        Raises:
            RuntimeError: before :meth:`fit`.
        """
        self._check_fitted("predict()")
        likelihood = (
            self.predictive
            if predictive is None
            else as_likelihood(predictive, "LinearizedLaplace.predict")
        )
        if type(likelihood) is not type(self.predictive):
            raise ValueError(
                f"this Laplace posterior was fitted with {self.predictive!r}, whose "
                f"curvature it holds; predicting with {likelihood!r} would mix two "
                "models: call bnn.laplace again with that likelihood"
            )
        fitted = getattr(self, "_fitted_noise", None)  # absent in older pickles
        if likelihood is self.predictive:
            if isinstance(likelihood, Normal) and fitted is not None:
                scale = float(likelihood.noise_scale().detach())
                if not math.isclose(scale, fitted, rel_tol=1e-5):
                    warn_at_caller(
                        f"the noise scale of {likelihood!r} moved from {fitted:.6g} "
                        f"to {scale:.6g} since bnn.laplace built this posterior's "
                        f"curvature with it; predicting with {fitted:.6g}, the "
                        "curvature's (call bnn.laplace again to use the new scale)"
                    )
            likelihood = self._fitted_likelihood()
        elif isinstance(likelihood, Normal) and fitted is not None:
            scale = float(likelihood.noise_scale().detach())
            if not math.isclose(scale, fitted, rel_tol=1e-5):
                raise ValueError(
                    f"this Laplace posterior's curvature was built with noise scale "
                    f"{fitted:.6g}; predicting with {likelihood!r} (scale "
                    f"{scale:.6g}) would mix two models: pass the likelihood given "
                    "to bnn.laplace, or call it again with this one"
                )
        if mode not in get_args(PredictMode):
            raise ValueError(f"mode must be 'sample' or 'mean', got {mode!r}")
        if batch_size is not None:
            batch_size = check_count(batch_size, "batch_size")
        if calibration is not None:
            likelihood = calibration.wrap(likelihood)
        if mode == "mean":
            self._check_input(x)
            with torch.no_grad():
                centre = self._function(x)(self.theta)
            return Prediction(centre.unsqueeze(0), likelihood)
        return Prediction(self._sample(x, samples, batch_size), likelihood)

    def extra_repr(self) -> str:
        """Size, subset and prior precision."""
        return (
            f"parameters={self.num_parameters}, subset={self.subset!r}, "
            f"prior_precision={float(self.prior_precision):.4g}"
        )


def laplace(
    model: nn.Module,
    x: Tensor | Iterable[tuple[Tensor, Tensor]],
    y: Tensor | None,
    predictive: PredictiveDistribution,
    *,
    subset: Subset = "all",
    prior_precision: SupportsFloat | Literal["marglik"] = "marglik",
    max_parameters: int = DEFAULT_MAX_PARAMETERS,
) -> LinearizedLaplace:
    """Linearised Laplace posterior of a trained network (post hoc).

    Computes the GGN of the data at the expansion point (batched Jacobians,
    ``torch.func.vmap`` of ``jacrev``), its eigendecomposition, and the prior
    precision. See :mod:`pyrolite_bnn.laplace` for the model.

    An embedding's padding row (``padding_idx``) gets no gradient from the
    look-up, so it is no weight where nothing else reads the table: not
    counted in ``P``, without prior, not perturbed. Where the network reads
    the table otherwise, through a tied module (``out.weight = emb.weight``)
    or directly in its ``forward`` (``F.linear(h, self.emb.weight)``), the
    row is trained and is weights. The rule is exact for the fitting data:
    the row is left out only where its columns of the Jacobians computed for
    the GGN are zero at every input (see :meth:`LinearizedLaplace.fit` and
    :attr:`LinearizedLaplace.frozen_entries`). Only padding rows are tested:
    the row of a category the data do not contain has zero columns too, and
    stays a weight with the prior's variance.

    Args:
        model: a trained ``bnn.VIModule`` (expansion point: its posterior
            means, :func:`~pyrolite_bnn.to_deterministic`) or a plain
            ``torch.nn`` module (its weights). It is copied, not changed.
        x: training inputs ``(N, ...)``, or an iterable (``DataLoader``) of
            ``(x, y)`` batches: one input tensor (a network with several
            inputs is refused).
        y: training targets ``(N, ...)``; ``None`` with a data loader.
        predictive: the likelihood the network was trained with:
            :class:`~pyrolite_bnn.Normal` (its fixed or learned noise scale is
            used as is), :class:`~pyrolite_bnn.Categorical` or
            :class:`~pyrolite_bnn.Bernoulli`; torch_blue's
            ``vi.distributions.MeanFieldNormal()`` and ``Categorical()`` are
            converted to them (``to_predictive()``).
        subset: ``"all"`` trainable weights (dense ``P x P`` covariance;
            parameters with ``requires_grad=False``, a frozen backbone, stay
            fixed at their values, as in laplace-torch; so do the weights of
            a Bayesian layer frozen with ``requires_grad_(False)``, and an
            embedding's padding row that nothing but its look-up reads, see
            above), or ``"last_layer"``:
            the weights of the last module with parameters whose call ends
            in the forward pass (others, and its padding row if it is an
            embedding that only its look-up reads, fixed at their values).
            A module
            owning parameters of its own and calling modules with parameters
            ends after them: its own are taken (a root's output scale
            applied after its head would be; give such a network
            ``subset="all"``).
        prior_precision: ``"marglik"`` to maximise
            :meth:`LinearizedLaplace.log_marginal_likelihood`, or a positive
            number ``delta`` (prior ``N(0, I / delta)``).
        max_parameters: the largest ``P`` accepted, an integer ``>= 1``
            (embeddings' padding rows counted: the fit's Jacobians span them).

    Returns:
        The fitted :class:`LinearizedLaplace`; predict with
        ``bnn.predict(la, x_new, predictive)`` or ``la.predict(x_new)``.

    Raises:
        NotImplementedError: for another likelihood.
        TypeError: if ``predictive`` is no likelihood, if ``prior_precision``
            or ``max_parameters`` is not a number (an integer), or if torch
            cannot copy the model (a pruned weight: make the pruning permanent
            with ``torch.nn.utils.prune.remove`` first).
        ValueError: for more than ``max_parameters`` weights, inconsistent
            data, several inputs (a tuple of tensors as ``x``), inputs of
            another floating dtype than the network's, an
            unknown ``subset``, a ``prior_precision`` that is not
            ``"marglik"`` or positive, or so small that the posterior
            covariance is not finite (see
            :meth:`LinearizedLaplace.set_prior_precision`), or
            ``max_parameters < 1``.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> net = bnn.VISequential(bnn.VILinear(4, 8), torch.nn.ReLU(),
        ...                        bnn.VILinear(8, 3))
        >>> x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
        >>> la = bnn.laplace(net, x, y, bnn.Categorical(), subset="last_layer")
        >>> la.names, la.posterior_covariance.shape
        (('2.weight', '2.bias'), torch.Size([27, 27]))
        >>> la.predict(x[:5], samples=10).probs.shape
        torch.Size([5, 3])
    """
    predictive = _supported_likelihood(predictive, "laplace")
    warn_untrained(predictive)
    if subset not in get_args(Subset):
        raise ValueError(f"subset must be 'all' or 'last_layer', got {subset!r}")
    marglik = isinstance(prior_precision, str) and prior_precision == "marglik"
    precision = None if marglik else _check_prior_precision(prior_precision)
    max_parameters = check_count(max_parameters, "max_parameters")
    network = _expansion_network(model)
    _warn_sequence_first(network)
    batches = _batches(x, y, network)
    first = next(batches, None)
    if first is None:
        raise ValueError("laplace needs at least one (x, y) batch")
    if subset == "last_layer":
        names = _last_layer(network, first[0][:1])
    else:
        names = [n for n, p in network.named_parameters() if p.requires_grad]
    params = dict(network.named_parameters())
    # Embeddings' padding rows counted: the fit's Jacobians span them.
    count = sum(params[n].numel() for n in names)
    if count > max_parameters:
        hint = ', or subset="last_layer"' if subset == "all" else ""
        raise ValueError(
            f"laplace: {count} weights in subset={subset!r} exceed max_parameters="
            f"{max_parameters} (a dense {count} x {count} covariance); raise "
            f"max_parameters{hint}"
        )
    if count == 0:
        raise ValueError(
            f"laplace: the network has no trainable weights in subset={subset!r}"
        )
    result = LinearizedLaplace(network, names, predictive, subset)
    result.fit(itertools.chain([first], batches))
    if precision is None:
        return result.fit_prior_precision()
    result.set_prior_precision(precision)
    return result
