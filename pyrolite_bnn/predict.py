"""Posterior predictive summaries: ``predict(model, x, predictive)`` -> ``Prediction``.

Classification (:class:`~pyrolite_bnn.Categorical`, :class:`~pyrolite_bnn.Bernoulli`):
the predictive probabilities are the particle average of the per-particle class
probabilities; the total uncertainty (entropy of the average) splits into the
*aleatoric* part (average entropy) and the *epistemic* part (mutual information
between the label and the weights):
``entropy == aleatoric + mutual_information``.

Regression (:class:`~pyrolite_bnn.Normal`,
:class:`~pyrolite_bnn.HeteroscedasticNormal`, :class:`~pyrolite_bnn.StudentT`,
:class:`~pyrolite_bnn.Poisson`): the predictive distribution is the mixture over
particles of ``p(y | output_s)`` with mean ``mu_s`` and variance ``sigma_s^2``;
by the law of total variance ``variance == aleatoric_var + epistemic_var`` with
``aleatoric_var = mean_s sigma_s^2`` and ``epistemic_var = var_s mu_s``.

The likelihood supplies the per-particle quantities (class probabilities,
moments) and the mixture's mean, variances and quantiles; :class:`Prediction`
only averages and combines them, in at least ``float32`` (half-precision
outputs are read as ``float32``; :class:`~pyrolite_bnn.Poisson` takes its
rates in ``float64``, which a ``float32`` rate overflows above a log rate of
88.7, and rounds the summaries at the end).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    SupportsFloat,
    SupportsIndex,
    TypeVar,
    get_args,
    overload,
)

import pyro
import torch
from torch import Tensor, nn

from pyrolite_bnn._allocations import AllocationPeak
from pyrolite_bnn._autograd_graph import reaches_node
from pyrolite_bnn._distributed import unwrap
from pyrolite_bnn._draw_budget import DRAWING_FACTOR, DrawSizes
from pyrolite_bnn._draws import generators_held, rng_state, set_rng_state
from pyrolite_bnn._fit_guard import add_to_message
from pyrolite_bnn._fixed_weights import FixedWeights
from pyrolite_bnn._forward import (
    InputTensor,
    NetworkInput,
    call_network,
    network_args,
)
from pyrolite_bnn._host_memory import available_bytes, check_fits_on_host
from pyrolite_bnn._input_layouts import (
    conversions,
    described,
    is_sparse_matrix,
    shape_text,
)
from pyrolite_bnn._isolation import isolated
from pyrolite_bnn._likelihoods import as_likelihood
from pyrolite_bnn._mode_warnings import warn_batch_statistics, warn_dropout
from pyrolite_bnn._module_state import buffers_restored
from pyrolite_bnn._network import (
    check_bayesian_network,
    has_sequence_first_layers,
)
from pyrolite_bnn._output_heads import OutputHeads
from pyrolite_bnn._pyro_module import local_params
from pyrolite_bnn._validation import (
    check_count,
    check_finite,
    check_probability,
    check_real,
)
from pyrolite_bnn._warnings import warn_at_caller
from pyrolite_bnn.distributions._precision import full_precision
from pyrolite_bnn.distributions.predictive import PredictiveDistribution
from pyrolite_bnn.guides import guide_of
from pyrolite_bnn.module import whole_network_draws
from pyrolite_bnn.record import release_record

if TYPE_CHECKING:
    from pyrolite_bnn.calibration import Calibration

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "MIN_DEFAULT_BUDGET",
    "PredictMode",
    "Prediction",
    "predict",
]

PredictMode = Literal["sample", "mean"]
"""``mode=``: posterior draws of the weights, or the network at their means."""

DEFAULT_MEMORY_BUDGET = 2 * 2**30
"""Memory budget in bytes of :func:`predict` for inputs not on CUDA (2 GiB).

Lowered to a quarter of the host's available memory where that is less,
down to :data:`MIN_DEFAULT_BUDGET`.
"""

MIN_DEFAULT_BUDGET = 256 * 2**20
"""The least default budget on the CPU (256 MiB): with less, a prediction in
chunks of a few inputs would take far longer (a budget read as 1 byte made it
30 to 80 times slower) and save little."""

# The keys of a multi-task network's outputs (predict by head).
_Key = TypeVar("_Key", bound=Hashable)

# Inputs in the probe chunk that measures the working memory per input.
_PROBE_INPUTS = 4
# Particles of the probe (at most the prediction's): with one, the layers call
# the plain torch op; with two, the batched code the prediction runs, with its
# copies per particle (a GRU's: 40 % more per particle than with one).
_PROBE_PARTICLES = 2
# Share of the free memory (a CUDA device's, the host's) predict takes by default.
_FREE_SHARE = 4


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()).sum(-1)


@dataclass
class Prediction:
    """Posterior predictive summary of a batch of inputs.

    Every summary comes from the likelihood (``predictive``): per-particle
    class probabilities or moments, averaged over the particles here, and
    quantiles of the particle mixture. The likelihood checks the shape of
    ``samples`` on creation
    (:meth:`~pyrolite_bnn.PredictiveDistribution.check_output`).

    A prediction is a result: it keeps a copy of a likelihood with learned
    parameters as it was on creation, so a learned noise scale that moves
    later (training goes on, a checkpoint is loaded into the loss) does not
    change the variances and intervals of predictions made before.

    **Precision**: every summary is computed, and returned, in at least
    ``float32``. Samples in ``float16`` or ``bfloat16`` (from a network run
    under :class:`torch.autocast`, or converted with
    ``net.to(torch.bfloat16)``) are read as ``float32`` before the likelihood
    and the averages see them, as autocast keeps reductions in ``float32``:
    in half precision the mutual information, a small difference of two
    entropies, would be off by 100 % and could come out negative. ``samples``
    keep the network's dtype; ``float64`` samples give ``float64`` summaries.

    Attributes:
        samples: raw network outputs per particle, ``(S, B, ...)``.
        predictive: the likelihood used to interpret them.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> pred = Prediction(torch.zeros(2, 3, 1), bnn.Normal(scale=0.5))
        >>> pred.mean.shape, pred.variance[0].item()
        (torch.Size([3]), 0.25)
        >>> pred
        Prediction(samples=(2, 3, 1) float32, predictive=Normal(scale=0.5))
    """

    samples: Tensor
    predictive: PredictiveDistribution
    _summaries: dict[
        Hashable, tuple[Tensor, int, PredictiveDistribution, bool, Any]
    ] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Refuse what is no likelihood (``TypeError``) and outputs it cannot read.

        A distribution of :mod:`pyrolite_bnn.vi.distributions` is converted
        to its likelihood (``to_predictive()``), as every entry point does.

        Raises:
            TypeError: if ``predictive`` is not a likelihood or ``samples`` no
                tensor.
            ValueError: for outputs the likelihood cannot read, or without
                particles (``S = 0``).
        """
        self.predictive = as_likelihood(self.predictive, "Prediction")
        if not isinstance(self.samples, Tensor):
            raise TypeError(
                "Prediction needs network outputs (S, B, ...) as a tensor, got "
                f"{type(self.samples).__name__}"
            )
        self.predictive.check_output(self.samples)
        if self.samples.dim() and self.samples.shape[0] == 0:  # means of nothing
            raise ValueError(
                "Prediction needs network outputs (S, B, ...) of S >= 1 particles, "
                f"got shape {tuple(self.samples.shape)}"
            )
        self.predictive = likelihood_snapshot(self.predictive)

    def __repr__(self) -> str:
        """Shape, dtype (and device, off the CPU) of ``samples``, not their values."""
        samples = self.samples
        where = "" if samples.device.type == "cpu" else f" {samples.device}"
        dtype = str(samples.dtype).removeprefix("torch.")
        return (
            f"Prediction(samples={tuple(samples.shape)} {dtype}{where}, "
            f"predictive={self.predictive!r})"
        )

    def _outputs(self) -> Tensor:
        """``samples`` in at least ``float32``, for the summaries."""
        return full_precision(self.samples)

    def _summary(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()``, kept while ``samples`` and ``predictive`` stay as they are.

        Each summary reduces all ``S`` particles of every input: a loop over
        ``pred.probs[i]`` recomputed them at every access (26 ms each for
        1,000 inputs and 100 particles). A new ``samples`` tensor, an in-place
        change of it or a new likelihood computes them again.

        Computed with gradients exactly where ``samples`` require them (and
        grad mode is on): outputs of a network run with gradients (a
        :func:`~pyrolite_bnn.draw_networks` call on inputs that require
        them) give summaries that differentiate to those inputs, for every
        likelihood; otherwise no graph is built (none to a noise scale).
        """
        differentiable = torch.is_grad_enabled() and self.samples.requires_grad
        try:
            version = self.samples._version
        except RuntimeError:  # an inference tensor has no version counter
            with torch.no_grad():
                return compute()
        # The objects themselves, compared by identity: an id() of a tensor
        # or likelihood since freed is handed to the next one made.
        kept = self._summaries.get(key)
        if (
            kept is None
            or kept[0] is not self.samples
            or kept[1] != version
            or kept[2] is not self.predictive
            or kept[3] != differentiable  # one kept under no_grad has no graph
        ):
            with torch.set_grad_enabled(differentiable):
                value = compute()
            kept = (self.samples, version, self.predictive, differentiable, value)
            self._summaries[key] = kept
        return kept[4]

    def _particle_probs(self) -> Tensor:
        """Class probabilities per particle, ``(S, B, ..., C)`` (kept)."""
        probs: Tensor = self._summary(
            "particle_probs", lambda: self.predictive.class_probs(self._outputs())
        )
        return probs

    # ------------------------------------------------------------ classification
    @property
    def is_classification(self) -> bool:
        """Whether the likelihood is a classification likelihood."""
        return self.predictive.is_classification

    @property
    def probs(self) -> Tensor:
        """Predictive class probabilities ``(B, ..., C)`` (mean over particles)."""
        probs: Tensor = self._summary("probs", lambda: self._particle_probs().mean(0))
        return probs.clone()

    @property
    def entropy(self) -> Tensor:
        """Total predictive uncertainty: entropy of :attr:`probs` (nats)."""
        return _entropy(self.probs)

    @property
    def aleatoric(self) -> Tensor:
        """Expected entropy over particles (data uncertainty)."""
        aleatoric: Tensor = self._summary(
            "aleatoric", lambda: _entropy(self._particle_probs()).mean(0)
        )
        return aleatoric.clone()

    @property
    def mutual_information(self) -> Tensor:
        """Epistemic uncertainty: ``entropy - aleatoric`` (>= 0 up to rounding)."""
        return self.entropy - self.aleatoric

    # ---------------------------------------------------------------- regression
    @property
    def mean(self) -> Tensor:
        """Predictive mean ``(B, ...)``; for classification, :attr:`probs`."""
        mean: Tensor = self._summary(
            "mean", lambda: self.predictive.predictive_mean(self._outputs())
        )
        return mean.clone()

    def _variances(self) -> tuple[Tensor, Tensor]:
        """The mixture's aleatoric and epistemic variances (kept)."""
        variances: tuple[Tensor, Tensor] = self._summary(
            "variances", lambda: self.predictive.mixture_variances(self._outputs())
        )
        return variances

    @property
    def aleatoric_var(self) -> Tensor:
        """Noise variance averaged over particles."""
        return self._variances()[0].clone()

    @property
    def epistemic_var(self) -> Tensor:
        """Variance of the particle means (model uncertainty)."""
        return self._variances()[1].clone()

    @property
    def variance(self) -> Tensor:
        """Total predictive variance, ``aleatoric_var + epistemic_var``."""
        return self.aleatoric_var + self.epistemic_var

    @property
    def stddev(self) -> Tensor:
        """Total predictive standard deviation."""
        return self.variance.sqrt()

    def interval(self, level: SupportsFloat = 0.95) -> tuple[Tensor, Tensor]:
        """Central ``level`` predictive interval of the particle mixture.

        The bounds are the exact ``(1 - level) / 2`` and ``(1 + level) / 2``
        quantiles of the mixture (see :meth:`quantile`).

        Args:
            level: coverage in ``(0, 1)``.

        Returns:
            ``(lower, upper)``, each ``(B, ...)``.

        Raises:
            TypeError: if ``level`` is not one number.
            ValueError: if ``level`` is not in ``(0, 1)``.
        """
        level = check_probability(level, "level")
        return self.quantile((1 - level) / 2), self.quantile((1 + level) / 2)

    def quantile(self, q: SupportsFloat) -> Tensor:
        """Quantile ``q`` of the predictive mixture over particles, ``(B, ...)``.

        Computed by the likelihood's
        :meth:`~pyrolite_bnn.PredictiveDistribution.quantile` (exact for the
        Gaussian likelihoods, ``StudentT`` and ``Poisson``, whose quantiles
        are counts).

        Args:
            q: probability in ``(0, 1)``, one number (for several levels, call
                this once per level).

        Raises:
            TypeError: if ``q`` is not one number.
            ValueError: if ``q`` is not in ``(0, 1)``.
            NotImplementedError: for likelihoods without mixture quantiles
                (classification).
        """
        q = check_probability(q, "q")

        quantile: Tensor = self._summary(
            ("quantile", q), lambda: self.predictive.quantile(self._outputs(), q)
        )
        return quantile.clone()


def likelihood_snapshot(predictive: PredictiveDistribution) -> PredictiveDistribution:
    """A copy of ``predictive`` as it is now, for results computed from it later.

    Only a likelihood with learned parameters (a noise scale) is copied,
    without gradient history; one without any has nothing that training
    moves and is returned itself, as is one that cannot be copied (a custom
    one holding a lock or a generator).

    Example:
        >>> import pyrolite_bnn as bnn
        >>> likelihood = bnn.Normal()
        >>> likelihood_snapshot(likelihood) is likelihood
        False
        >>> fixed = bnn.Normal(scale=0.5)
        >>> likelihood_snapshot(fixed) is fixed
        True
    """
    if not _learns(predictive):
        return predictive
    try:
        with torch.no_grad():
            return copy.deepcopy(predictive)
    except (TypeError, RuntimeError, copy.Error):
        return predictive


def _learns(predictive: PredictiveDistribution) -> bool:
    """Whether ``predictive`` or the likelihood it wraps has learned parameters.

    A calibration references its base likelihood rather than registering it.
    """
    if next(predictive.parameters(), None) is not None:
        return True
    base = getattr(predictive, "base", None)
    return isinstance(base, PredictiveDistribution) and _learns(base)


@overload
def predict(
    model: nn.Module,
    x: NetworkInput[InputTensor],
    predictive: PredictiveDistribution,
    samples: SupportsIndex = 100,
    batch_size: int | None = None,
    mode: PredictMode = "sample",
    *,
    memory_budget: int | None = None,
    calibration: Calibration | None = None,
) -> Prediction: ...


@overload
def predict(
    model: nn.Module,
    x: NetworkInput[InputTensor],
    predictive: Mapping[_Key, PredictiveDistribution],
    samples: SupportsIndex = 100,
    batch_size: int | None = None,
    mode: PredictMode = "sample",
    *,
    memory_budget: int | None = None,
    calibration: Mapping[_Key, Calibration | None] | None = None,
) -> dict[_Key, Prediction]: ...


@overload
def predict(
    model: nn.Module,
    x: NetworkInput[InputTensor],
    predictive: Sequence[PredictiveDistribution | None],
    samples: SupportsIndex = 100,
    batch_size: int | None = None,
    mode: PredictMode = "sample",
    *,
    memory_budget: int | None = None,
    calibration: Sequence[Calibration | None] | None = None,
) -> tuple[Prediction | None, ...]: ...


def predict(
    model: nn.Module,
    x: NetworkInput[InputTensor],
    predictive: Any,
    samples: SupportsIndex = 100,
    batch_size: int | None = None,
    mode: PredictMode = "sample",
    *,
    memory_budget: int | None = None,
    calibration: Any = None,
) -> Any:
    """Posterior predictive of ``model`` at inputs ``x``.

    Runs without gradients (an input that requires them warns where it is a
    leaf, or is computed from a leaf that is no weight: one computed from an
    ``nn.Parameter`` or a ``pyro.param`` alone is taken for a trainable
    trunk's features, quiet also where that parameter is a candidate input,
    ``sigmoid(z)``; for gradients by the inputs, summarise the outputs of
    drawn networks,
    ``bnn.Prediction(bnn.draw_networks(model, S)(x), predictive)``), in
    chunks of inputs, so that only one chunk's activations for all particles
    are in memory. Each particle is one complete
    network (weights drawn, whatever the layers' training estimator), and the
    same network for every chunk, so particle ``s`` is one coherent function of
    the input and the result does not depend on ``batch_size`` (up to the
    rounding of matrix products of different sizes), for a network that
    computes each example on its own. A network whose ``forward`` mixes the
    examples of its batch (a global max over the points of one cloud, a
    graph's adjacency or ``edge_index`` over all its nodes) sees only a
    chunk's examples, and its result depends on the chunks, silently: give
    it ``batch_size=len(x)``. torch's size or index error on a part of the
    inputs (a chunk, or the probe's first inputs) names that remedy.

    **Chunk size** (``batch_size=None``): a probe runs the first 4 inputs
    with 2 particles (1 for ``mode="mean"`` or ``samples=1``) on weights drawn
    before it, and measures the most memory the tensors it allocates hold at
    once (activations and the temporaries inside layers, such as an LSTM's
    gate projections of all steps); per input and particle, times ``S``, that
    is the working set of one input. Chunks get as many inputs as fit the
    part of ``memory_budget`` left by the kept weights. If the model raises
    on the probe (batch-norm in training mode on a single input, say), the
    probe runs again with the ``S`` particles of the prediction, and an error
    there is raised. The probe leaves the model's buffers (batch-norm running
    statistics, ``num_batches_tracked``) as they were and rewinds the
    random-number generators; state a module keeps outside its buffers is not
    restored. It is a call of the model, though: **forward hooks see it** (a
    call on the first 4 inputs, before the prediction's own calls; two if the
    first raises), so hooks that collect features get those rows too. Pass
    ``batch_size`` (``len(x)`` for one chunk) to run no probe. No probe runs
    either where its call would be the prediction's: one input (a chunk holds
    at least one), or at most 4 inputs with one particle (the probe would
    run just those); the model is called once, and if that call raises, its
    buffers are put back as after a failed probe (the random-number
    generators are not: the call is the prediction).

    **Same weights in every chunk**: if the ``S`` draws of all weights take at
    most half of ``memory_budget`` (and drawing them, a tensor at three times
    its draw, fits it), they are drawn once from ``model.guide``
    and every chunk runs on them. Otherwise each chunk draws them anew, layer
    by layer, after the random-number generators (CPU, and the CUDA devices
    of ``x`` and of the model) are rewound to their starting state: less
    memory, but the draws are repeated for every chunk. Either way, with
    the particles in one group (below), the draws are those of one call of
    the network on all of ``x`` with ``S`` particles, and the generators end
    where that call leaves them, if the network draws no other random
    numbers. Dropout in training mode does: it
    makes ``mode="mean"`` random, adds its noise to the epistemic variance
    and would change later weight draws between chunks of different sizes,
    and batch-norm in training mode normalises each chunk by its own
    statistics (warnings say so); call ``model.eval()`` first.

    **Particle groups**: where drawing the largest weight tensor for all ``S``
    particles takes more than half the budget (a large ``VIEmbedding`` table,
    drawn whole whatever the chunk size), the particles run in groups whose
    draws fit, one group after the other (independent draws; each group the
    same networks in all its chunks); where one particle's draw does not fit,
    they run one at a time, and a ``RuntimeWarning`` says the prediction
    exceeds the budget. The draws
    are then those of one call per group, in turn, and the generators end
    where the last leaves them: another random stream than one call's, so
    the same seed gives other networks and leaves other numbers for the
    program's later draws. Where the groups fall depends on ``memory_budget``
    (with the model and ``S``), and its default on the free memory of the
    CUDA device of ``x``, or on the CPU of the host where it has less than
    8 GiB available: with the default budget a seeded prediction that runs
    in groups can differ from host to host, and from run to run. Pass
    ``memory_budget=`` to pin its draws (the same ones on every host with
    the same generators: CPU and CUDA streams differ anyway).

    **Threads**: with the generated guide (a ``VIModule`` with no assigned
    guide, or a plain module holding Bayesian layers) ``predict`` pushes no
    Pyro handler in any mode: the posterior medians (``mode="mean"``) or the
    kept draws are handed to the layers in place of their draws, with the
    outputs of conditioning the weight sites on them. Threads can predict
    side by side, each with its own network or all with one. An assigned Pyro
    guide (an autoguide) is Pyro code: its draws are traced and the network's
    sites conditioned on its values, on Pyro's handler stack, which is one for
    the whole process; such a prediction, like ``SVI`` or ``Predictive``, is not
    safe next to another thread's network calls. So is one called under the
    caller's own Pyro handlers (it blocks them). Random numbers come from
    torch's default generators, which all threads share: a seed does not
    reproduce a sampled prediction while other threads draw. A sampled
    prediction that probes memory or draws the weights anew in every chunk
    sets the generators back to where it started, so ``predict`` calls that
    do so take turns (:func:`~pyrolite_bnn._draws.generators_held`): no call
    hands out another's draws again. Other code drawing in another thread
    meanwhile may get numbers drawn again, and make particle ``s`` a different
    network in different chunks; a call on at most 4 inputs with one particle
    (or one input), ``mode="mean"`` and ``batch_size=len(x)`` rewind nothing.
    A forward hook (or forward) that hands a sampled, chunked ``predict`` to
    another thread and waits for it inside such a call waits until the call
    ends (the same thread may call ``predict`` again).

    Args:
        model: the trained network (or its ``DistributedDataParallel``
            wrapper), or a :class:`~pyrolite_bnn.LinearizedLaplace` posterior
            (then :meth:`~pyrolite_bnn.LinearizedLaplace.predict` runs;
            ``memory_budget`` does not apply).
        x: inputs ``(N, ...)``, or a tuple (or list) of them for a network
            that takes several (``(source, target)`` of a seq2seq model,
            unpacked as ``model(*x)``), each with the
            same ``N`` examples (dimension 1 in a sequence-first network).
        predictive: the likelihood the model was trained with (a
            distribution of :mod:`pyrolite_bnn.vi.distributions` is converted
            with its ``to_predictive()``). For a network with several outputs
            (a multi-task network's heads), one likelihood per output to
            predict, in the output's shape: a dict by key for a network that
            returns a dict (outputs not named are not predicted), a tuple or
            list by position for one that returns a tuple or list (``None``
            skips an output). Every head is predicted from the same particles.
        samples: number of posterior draws ``S``.
        batch_size: inputs per chunk; ``None`` chooses it from
            ``memory_budget``.
        mode: ``"sample"`` draws weights from the guide; ``"mean"`` sets every
            weight to its posterior median/mean (one deterministic particle).
        memory_budget: bytes for the kept weight draws plus one chunk's
            activations (the result ``(S, N, ...)`` comes on top). Default:
            a quarter of the free memory of the CUDA device ``x`` is on; on
            the CPU, :data:`DEFAULT_MEMORY_BUDGET` (2 GiB) or a quarter of
            the memory the host has available (under a container's limit
            too), whichever is smaller. Give it to make a seeded prediction
            that runs in particle groups the same on every host.
        calibration: a fitted post-hoc calibration
            (:func:`~pyrolite_bnn.calibrate`); the :class:`Prediction` then
            summarises the outputs with ``calibration.wrap(predictive)``.
            With one likelihood per output: one calibration per output in
            the same shape (``None``, or a missing key, for none).

    Returns:
        A :class:`Prediction`; with one likelihood per output, a dict of
        them by key, or a tuple with ``None`` at the positions skipped.

    Raises:
        MemoryError: on the CPU, when the outputs computed in chunks or
            groups of particles would take more memory than the host has
            free (checked before they are gathered).

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> net = bnn.VILinear(3, 4)
        >>> pred = bnn.predict(net, torch.randn(5, 3), bnn.Categorical(), samples=20)
        >>> pred.probs.shape, pred.mutual_information.shape
        (torch.Size([5, 4]), torch.Size([5]))

        A network with two heads, both predicted from the same particles:

        >>> class TwoHeads(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body = bnn.VILinear(3, 8)
        ...         self.label, self.value = bnn.VILinear(8, 4), bnn.VILinear(8, 1)
        ...     def forward(self, x):
        ...         h = torch.relu(self.body(x))
        ...         return {"label": self.label(h), "value": self.value(h)}
        >>> preds = bnn.predict(
        ...     TwoHeads(), torch.randn(5, 3),
        ...     {"label": bnn.Categorical(), "value": bnn.Normal(scale=0.1)},
        ...     samples=20,
        ... )
        >>> preds["label"].probs.shape, preds["value"].mean.shape
        (torch.Size([5, 4]), torch.Size([5]))
    """
    model = unwrap(model)
    from pyrolite_bnn.calibration import Calibration
    from pyrolite_bnn.laplace import LinearizedLaplace  # both import this module

    heads = OutputHeads.of(predictive, "predict")
    calibrations = heads.per_head(calibration, "calibration")
    samples = check_count(samples, "samples")
    if batch_size is not None:
        batch_size = check_count(batch_size, "batch_size")
    if memory_budget is not None:  # bytes; 2e9 is as good as 2_000_000_000
        budget = check_real(memory_budget, "memory_budget (bytes)")
        if not (budget >= 1 and math.isfinite(budget)):
            raise ValueError(f"memory_budget must be >= 1 byte, got {memory_budget!r}")
        memory_budget = int(budget)
    for fitted in calibrations:
        if fitted is not None and not isinstance(fitted, Calibration):
            raise TypeError(
                "calibration must be a bnn.Calibration (from bnn.calibrate), got "
                f"{fitted!r}"
            )
    if isinstance(model, LinearizedLaplace):
        if not heads.single:
            raise TypeError(
                "a LinearizedLaplace posterior predicts one output: give one "
                "likelihood, not one per output"
            )
        (predictive,) = heads.likelihoods
        if not isinstance(x, Tensor):
            raise TypeError(
                "a LinearizedLaplace posterior predicts from one input tensor x, "
                f"got {type(x).__name__}"
            )
        return model.predict(
            x,
            samples,
            predictive=predictive,
            batch_size=batch_size,
            mode=mode,
            calibration=calibration,
        )
    check_bayesian_network(model, "predict needs")
    if mode not in get_args(PredictMode):
        raise ValueError(f"mode must be 'sample' or 'mean', got {mode!r}")
    inputs = _inputs(x)
    _warn_gradients_dropped(inputs)
    for likelihood in heads.likelihoods:
        warn_untrained(likelihood)
    warn_batch_statistics(
        model, "predict", "a prediction depends on the inputs predicted with it"
    )
    warn_dropout(
        model,
        "predict",
        "mode='mean' is then random, not the network at its posterior means"
        if mode == "mean"
        else "its noise is then counted as epistemic variance",
    )
    with torch.no_grad(), local_params():
        outputs = isolated(
            _predict, model, inputs, samples, batch_size, mode, memory_budget, heads
        )
    predictions = []
    for likelihood, fitted, out in zip(
        heads.likelihoods, calibrations, outputs, strict=True
    ):
        likelihood.warn_probabilities_as_logits(out)
        summarised = likelihood if fitted is None else fitted.wrap(likelihood)
        predictions.append(Prediction(out, summarised))
    return heads.assemble(predictions)


def _inputs(x: object) -> tuple[Tensor, ...]:
    """``x`` as the tuple of the network's inputs, each checked.

    One tensor, or a tuple or list of them (a network with several inputs,
    read by ``network_args``).
    """
    inputs = network_args(x)
    for position, value in enumerate(inputs):
        what = "x" if len(inputs) == 1 else f"x[{position}]"
        if not isinstance(value, Tensor):
            raise TypeError(
                f"predict needs inputs {what} as a torch.Tensor, got "
                f"{type(value).__name__} (convert it with torch.as_tensor; several "
                "inputs as a tuple of tensors)"
            )
        if value.dim() == 0:
            raise ValueError(
                f"predict needs inputs {what} of shape (N, ...), got "
                f"{tuple(value.shape)}"
            )
        check_finite(value, f"predict's inputs {what}")  # all: not one chunk
    if not inputs:
        raise ValueError("predict needs at least one input tensor, got ()")
    return inputs


def _warn_gradients_dropped(inputs: tuple[Tensor, ...]) -> None:
    """Warn once when inputs that require gradients lose them in ``predict``.

    ``predict`` runs under ``torch.no_grad()``: an acquisition function of
    Bayesian optimisation built on its summaries had no graph, and its
    ``backward()`` failed with torch's "does not require grad" far from the
    cause. Inputs count that are, or are computed from, a leaf the caller
    made differentiable (:func:`_asks_for_gradients`): features a trainable
    trunk (weights held as ``nn.Parameter`` or by ``pyro.param``) computed
    from plain inputs require gradients too without asking for input
    derivatives. Forward-mode tangents (dual tensors) are not dropped: no
    warning.
    """
    if not torch.is_grad_enabled():
        return  # the caller takes no gradients either
    dropped = [n for n, t in enumerate(inputs) if _asks_for_gradients(t)]
    if not dropped:
        return
    what = "x" if len(inputs) == 1 else ", ".join(f"x[{n}]" for n in dropped)
    warn_at_caller(
        f"predict: the inputs {what} require gradients, but predict runs without "
        "gradients: its summaries have no graph back to the inputs (backward() "
        "fails). For gradients by the inputs (an acquisition function to "
        "optimise), draw the networks and summarise their outputs: nets = "
        "bnn.draw_networks(model, samples=S); pred = bnn.Prediction(nets(x), "
        "likelihood); or pass x.detach() to silence this"
    )


def _asks_for_gradients(tensor: Tensor) -> bool:
    """Whether ``tensor`` is an input whose derivatives its caller may want.

    A leaf that requires gradients (``x.requires_grad_()``, or a candidate
    held as an ``nn.Parameter`` or in Pyro's param store, passed itself), or
    a tensor computed from a leaf that requires gradients and is held by no
    module and no param store (a view, a cast, a bounded reparameterisation
    ``sigmoid(z)`` of ``z = torch.randn(..., requires_grad=True)``). Not
    features computed by trainable weights from plain inputs: every leaf
    behind them is an ``nn.Parameter`` or a ``pyro.param``'s tensor. A
    tensor computed from a candidate held as either (``sigmoid(z)`` of an
    ``nn.Parameter`` ``z``) cannot be told from such features: no warning.
    """
    if not tensor.requires_grad:
        return False
    if tensor.is_leaf:
        return True
    held = {id(value) for _, value in pyro.get_param_store().named_parameters()}
    return reaches_node(tensor.grad_fn, lambda node: _differentiable_input(node, held))


def _differentiable_input(node: Any, held: set[int]) -> bool:
    """Whether ``node`` accumulates the gradient of a leaf that is no weight.

    Weights: every ``nn.Parameter``, and the tensors of Pyro's param store
    (plain tensors), whose ids are ``held``.
    """
    variable = getattr(node, "variable", None)  # AccumulateGrad's leaf
    return (
        variable is not None
        and not isinstance(variable, nn.Parameter)
        and id(variable) not in held
    )


def _shapes(inputs: tuple[Tensor, ...]) -> str:
    """The inputs' shapes for a message."""
    shapes = [shape_text(t) for t in inputs]
    return shapes[0] if len(shapes) == 1 else f"({', '.join(shapes)})"


def warn_untrained(predictive: PredictiveDistribution) -> None:
    """Warn when a likelihood's learned parameters were never trained.

    ``bnn.predict(net, x, bnn.Normal())`` replaced the noise scale the loss
    learned with the initial 1.0 (predictive sd 1.0 instead of 0.14, silently).
    """
    untrained = predictive.untrained_parameters()
    if untrained:
        warn_at_caller(
            f"{predictive!r} has learned parameters {untrained} still at their "
            "initial values: either this likelihood object is not the one "
            "training fitted (pass the loss's own, loss_fn.predictive, or a fixed "
            "scale such as bnn.Normal(scale=...)), or the optimizer never held "
            "loss_fn.parameters()"
        )


def _predict(
    model: nn.Module,
    x: tuple[Tensor, ...],
    samples: int,
    batch_size: int | None,
    mode: str,
    memory_budget: int | None,
    heads: OutputHeads,
) -> tuple[Tensor, ...]:
    """The outputs ``(S, N, ...)`` of every head of ``heads``."""
    budget = _default_budget(x[0]) if memory_budget is None else memory_budget
    weights = FixedWeights.medians(guide_of(model)) if mode == "mean" else None
    if weights is not None:
        return _predict_particles(model, x, heads, 1, batch_size, budget, weights, None)
    sizes = DrawSizes.of(model)
    group = sizes.particles_that_fit(samples, budget)
    if group == 0:
        warn_at_caller(
            f"predict: drawing the weight {sizes.site!r} for one particle takes "
            f"{DRAWING_FACTOR * sizes.largest} bytes ({DRAWING_FACTOR} times its "
            f"{sizes.largest}-byte draw), more than half of memory_budget={budget}: "
            "the prediction takes more memory than the budget; raise memory_budget",
            RuntimeWarning,
        )
        group = 1  # the least memory there is: one particle at a time
    if group == samples:
        return _predict_particles(
            model, x, heads, samples, batch_size, budget, None, sizes
        )
    # The particles in groups whose draws fit: independent draws, one after
    # the other, each group coherent across the chunks (and across heads).
    result: tuple[Tensor, ...] = ()
    for start in range(0, samples, group):
        count = min(group, samples - start)
        outs = _predict_particles(
            model, x, heads, count, batch_size, budget, None, sizes, start == 0
        )
        if not result:
            result = tuple(
                _outputs_buffer(out, (samples, *out.shape[1:])) for out in outs
            )
        for kept, out in zip(result, outs, strict=True):
            kept.narrow(0, start, count).copy_(out)
    return result


def _predict_particles(
    model: nn.Module,
    x: tuple[Tensor, ...],
    heads: OutputHeads,
    particles: int,
    batch_size: int | None,
    budget: int,
    weights: FixedWeights | None,
    sizes: DrawSizes | None,
    warn: bool = True,
) -> tuple[Tensor, ...]:
    """Each head's outputs ``(particles, N, ...)``, in chunks.

    The weights are ``weights`` if given, else drawn. ``warn``: whether to
    warn (the first group of particles; the others would only repeat it).

    ``sizes`` (with drawn weights) decides whether one draw is kept for all
    chunks or each chunk draws anew, and what is left of ``budget`` for the
    chunks' activations.
    """
    # Sequence-first networks (batch_first=False) take (L, B, ...) and return
    # (S, L, B, ...): chunks split the batch, never the sequence.
    axis = 1 if has_sequence_first_layers(model) else 0
    size = _batch_size(x, axis)
    if batch_size is None and _probe_is_the_prediction(size, particles):
        return _run_unprobed(model, x, heads, axis, particles, weights, warn)
    if batch_size is not None and batch_size >= size:
        return _run(model, x, heads, particles, weights, warn)
    # Fixed weights draw nothing: no generator is rewound (a rewind would hand
    # another thread's draws out again).
    generators = _Generators(_devices(model, x) if weights is None else [])
    # Keep one draw of all weights for every chunk if it fits (DrawSizes).
    kept_bytes = 0 if sizes is None else sizes.kept_bytes(particles, budget)
    if batch_size is None:
        # The probe's draws are rewound: one such call at a time in the process.
        with generators_held() if weights is None else contextlib.nullcontext():
            per_input = _probe(model, x, heads, axis, particles, weights, generators)
        reserved = kept_bytes
        if sizes is not None and not kept_bytes:  # each chunk draws its weights
            reserved = sizes.redrawn_bytes(particles)
        room = budget - reserved
        if warn and 0 <= room < per_input:  # (room < 0: the draws' warning did)
            warn_at_caller(
                f"predict: one input with {particles} particle(s) takes about "
                f"{per_input:.0f} bytes, more than the {room} bytes memory_budget="
                f"{budget} leaves beside the weight draws: the prediction takes "
                "more memory than the budget; raise memory_budget (or predict "
                "with fewer samples)",
                RuntimeWarning,
            )
        step = size if per_input == 0 else max(1, int(room // per_input))
    else:
        step = batch_size
    if step >= size:
        return _run(model, x, heads, particles, weights, warn)
    if kept_bytes:
        weights = FixedWeights.drawn(guide_of(model), particles)
    # Chunks that draw the same weights again rewind the generators: one such
    # call at a time in the process.
    with generators_held() if weights is None else contextlib.nullcontext():
        return _chunks(
            model, x, heads, axis, step, particles, weights, generators, warn
        )


def _chunks(
    model: nn.Module,
    x: tuple[Tensor, ...],
    heads: OutputHeads,
    axis: int,
    step: int,
    particles: int,
    weights: FixedWeights | None,
    generators: _Generators,
    warn: bool = True,
) -> tuple[Tensor, ...]:
    """The outputs of each head of ``x`` in chunks of ``step`` inputs.

    ``generators`` are rewound before each chunk where the weights are drawn
    anew (``weights`` is ``None``), so that every chunk draws the same ones.
    ``warn``: whether to warn (in the first chunk for each warning).
    """
    size = _batch_size(x, axis)
    result: tuple[Tensor, ...] = ()
    after_first: list[Tensor | None] | None = None
    for start in range(0, size, step):
        if weights is None:  # same draws in every chunk: rewind the generators
            generators.rewind()
        length = min(step, size - start)
        first = warn and start == 0  # warns about outputs shared by the particles
        outs = _run_chunk(
            model, x, heads, axis, start, length, particles, weights, first
        )
        if not result:
            result = tuple(
                _outputs_buffer(out, _whole(out, axis, size)) for out in outs
            )
            after_first = None if weights is not None else generators.current()
        elif warn and after_first is not None and not generators.same_as(after_first):
            warn_at_caller(
                "predict: the network drew a number of random values that depends "
                "on the chunk size (dropout in training mode?), so particles may be "
                "different networks in different chunks; call model.eval() first, "
                "or predict with batch_size=len(x)",
                RuntimeWarning,
            )
            after_first = None  # once is enough
        for kept, out in zip(result, outs, strict=True):
            kept.narrow(axis + 1, start, out.shape[axis + 1]).copy_(out)
    return result


def _whole(chunk: Tensor, axis: int, size: int) -> tuple[int, ...]:
    """The shape of ``chunk`` (particles first) with ``size`` inputs on ``axis + 1``."""
    shape = list(chunk.shape)
    shape[axis + 1] = size
    return tuple(shape)


def _outputs_buffer(like: Tensor, shape: tuple[int, ...]) -> Tensor:
    """An empty tensor like ``like`` for the outputs, ``shape`` (particles first).

    On the host it is refused up front when it is larger than the memory the
    system has free: the budget bounds the work, not the result, and a
    result that overcommit lets through is filled until the kernel kills the
    process, or the machine swaps.
    """
    if like.device.type == "cpu":
        check_fits_on_host(
            math.prod(shape) * like.element_size(),
            f"predict: holding the outputs (shape {shape}, particles first, "
            f"{like.dtype})",
            "predict with fewer samples, on slices of the inputs, or with mode='mean'",
        )
    return like.new_empty(shape)


def _probe_is_the_prediction(size: int, particles: int) -> bool:
    """Whether the memory probe's call would be the prediction's only call.

    A chunk holds at least one input, so one input is one chunk whatever the
    probe measures; and with one particle, at most :data:`_PROBE_INPUTS`
    inputs are what the probe runs: the same call as the prediction's.
    """
    return size == 1 or (particles == 1 and size <= _PROBE_INPUTS)


def _run_unprobed(
    model: nn.Module,
    x: tuple[Tensor, ...],
    heads: OutputHeads,
    axis: int,
    particles: int,
    weights: FixedWeights | None,
    warn: bool = True,
) -> tuple[Tensor, ...]:
    """All of ``x`` in one call, with no probe.

    The call the probe would have made: an error names the inputs as the
    probe's did, and the model's buffers are put back if it raises, as after
    a failed probe. The random-number generators are not rewound: this call
    is the prediction, and a rewind would hand out again what other threads
    drew meanwhile.
    """
    with buffers_restored(model, on_error_only=True):
        return _run_chunk(
            model, x, heads, axis, 0, x[0].size(axis), particles, weights, warn
        )


def _batch_size(x: tuple[Tensor, ...], axis: int) -> int:
    """The inputs' common number of examples along ``axis``."""
    if any(t.dim() <= axis for t in x):
        raise ValueError(
            f"predict needs inputs with examples along dimension {axis}, got "
            f"{_shapes(x)}"
        )
    sizes = {t.size(axis) for t in x}  # nested: no .shape
    if len(sizes) > 1:
        raise ValueError(
            f"predict needs inputs with one number of examples along dimension "
            f"{axis}, got {_shapes(x)}"
            + (
                " (in a sequence-first network, batch_first=False, predict "
                "splits every input along dimension 1, the batch of (L, B, "
                "...): give a batch-first input such as a key_padding_mask (B, "
                "L) transposed, (L, B), and transpose it back in forward)"
                if axis == 1
                else "; a graph batch, with nodes, edges and graphs, is predicted "
                "with bnn.draw_networks and bnn.Prediction: see 'Graph-level "
                "outputs and node subsets' in the how-to guides"
            )
        )
    return x[0].size(axis)


def _probe(
    model: nn.Module,
    x: tuple[Tensor, ...],
    heads: OutputHeads,
    axis: int,
    particles: int,
    weights: FixedWeights | None,
    generators: _Generators,
) -> float:
    """Working memory in bytes of one input with ``particles`` particles.

    Runs the first :data:`_PROBE_INPUTS` inputs with :data:`_PROBE_PARTICLES`
    particles (one if the prediction has one) and takes the peak of the
    tensors the call allocates
    (:class:`~pyrolite_bnn._allocations.AllocationPeak`): activations and
    every temporary inside the layers (an LSTM's gate projections of all
    steps, an attention's score matrices), per input and particle. The
    weights are given (``weights``) or drawn before the measured call: their
    draws do not grow with the inputs (:func:`_predict` budgets them apart).
    If the model raises on that (batch-norm in training mode on a single
    input, say), the probe runs again with all ``particles``, as the
    prediction will, and an error there is raised. Each try leaves no trace:
    the model's buffers are put back
    (:func:`~pyrolite_bnn._module_state.buffers_restored`) and the
    random-number generators rewound.
    """
    length = min(x[0].size(axis), _PROBE_INPUTS)
    first = min(particles, _PROBE_PARTICLES)
    tries = [first, particles] if particles > first else [first]
    for count in tries:
        try:
            with buffers_restored(model):
                given = (
                    weights
                    if weights is not None
                    else FixedWeights.drawn(guide_of(model), count)
                )
                with AllocationPeak() as memory:  # the prediction's run warns
                    _run_chunk(model, x, heads, axis, 0, length, count, given, False)
        except Exception:
            if count == tries[-1]:
                raise
            continue
        finally:
            generators.rewind()  # the probe's draws are not the prediction's
        return particles * memory.peak / count / max(1, length)
    raise AssertionError("unreachable: the last try returns or raises")


def _rows_of(tensor: Tensor, axis: int, start: int, length: int) -> Tensor:
    """``length`` inputs of ``tensor`` from ``start`` along ``axis``.

    A view for a strided tensor; a sparse COO tensor has no views (its
    selected rows are copied), and the other layouts can be run whole only.

    Raises:
        ValueError: for a part of a tensor of another layout (sparse CSR,
            CSC, BSR, a nested tensor), naming the conversions.
    """
    if length == tensor.size(axis) and start == 0:
        return tensor
    if tensor.layout == torch.strided and not tensor.is_nested:
        return tensor.narrow(axis, start, length)
    if tensor.layout == torch.sparse_coo:
        rows = torch.arange(start, start + length, device=tensor.device)
        return tensor.index_select(axis, rows)
    # One chunk runs only what a layer takes: no layer takes block-sparse or
    # nested tensors, nor sparse ones of other shapes (check_input_layout).
    whole = (
        "pass batch_size=len(x) to run it in one chunk, or "
        if is_sparse_matrix(tensor)
        else ""
    )
    raise ValueError(
        f"predict cannot cut {described(tensor)} into chunks (nor run its "
        f"memory probe on its first inputs): {whole}convert it with "
        f"{conversions(tensor, (torch.sparse_coo, torch.strided))}"
    )


def _run_chunk(
    model: nn.Module,
    x: tuple[Tensor, ...],
    heads: OutputHeads,
    axis: int,
    start: int,
    length: int,
    particles: int,
    weights: FixedWeights | None,
    warn_shared: bool = True,
) -> tuple[Tensor, ...]:
    """:func:`_run` on ``length`` inputs of ``x`` from ``start`` along ``axis``.

    A ``TypeError``/``ValueError`` of the model (a layer's shape check, say)
    names the chunk's shape; its message gets the shape of all of ``x``.
    torch's own errors (a size or index error) on a part of the inputs (a
    chunk, the memory probe's first inputs) get both and name
    ``batch_size=len(x)``: a network that holds a graph over all examples
    (an adjacency, an ``edge_index``) fails on a chunk of them.
    """
    chunk = tuple(_rows_of(t, axis, start, length) for t in x)
    try:
        return _run(model, chunk, heads, particles, weights, warn_shared)
    except Exception as error:
        rows = ", ".join([":"] * axis + [f"{start}:{start + length}"])
        where = (
            f"predict ran the model on x[{rows}] of the inputs x of shape {_shapes(x)}"
        )
        if type(error) in (TypeError, ValueError):
            raise type(error)(f"{error} ({where})").with_traceback(
                error.__traceback__
            ) from None
        # torch's size and index errors (not the library's checks, nor memory)
        if length < x[0].size(axis) and not isinstance(
            error, (TypeError, ValueError, MemoryError, torch.OutOfMemoryError)
        ):  # kept as raised: a subclass may take other constructor arguments
            add_to_message(
                error,
                f"{where}; if the model's forward needs all examples at once (a "
                "graph's adjacency or edge_index over all its nodes held by the "
                "model, an operation across the batch), predict it with "
                "batch_size=len(x); an error that batch_size=len(x) raises too is "
                "the model's own",
            )
        raise


def _run(
    model: nn.Module,
    x: tuple[Tensor, ...],
    heads: OutputHeads,
    samples: int,
    weights: FixedWeights | None,
    warn_shared: bool = True,
) -> tuple[Tensor, ...]:
    """Each head's outputs ``(S, B, ...)`` for one chunk.

    The weights are drawn, or fixed to ``weights``. ``warn_shared``: warn
    about outputs every particle shares (once per ``predict``: not in the
    memory probe, nor in chunks after the first).
    """
    if weights is not None:
        out = weights.run(model, x, samples)
    else:
        with whole_network_draws():
            out = call_network(model, x, samples)
    picked = heads.pick(out)
    for head in picked:
        release_record(head)
    shared = [
        key
        for key, head in zip(heads.keys or (None,), picked, strict=True)
        if warn_shared
        and samples > 1
        and head.dim()
        and head.numel()
        and head.stride(0) == 0
    ]
    if shared:  # the call read these outputs as shared by all particles
        which = (
            "the network's output"
            if heads.single
            else f"output(s) {', '.join(map(repr, shared))} of the network"
        )
        warn_at_caller(
            f"every particle gave the same output: {which} does "
            "not depend on its Bayesian layers' weights, or its rows lost their "
            "particles (a "
            "reshape of a folded activation, B * S rows, by the input's batch "
            "size, h.view(x.size(0), ...), moves the particles into another "
            "dimension: reshape by the activation's own h.shape[0]). The "
            "prediction has no epistemic uncertainty"
        )
    return picked


def _devices(model: nn.Module, x: tuple[Tensor, ...]) -> list[torch.device]:
    """CPU and every CUDA device the inputs or the model's tensors are on."""
    if not torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        # no tensor can be on a CUDA device
        return [torch.device("cpu")]
    found = {t.device for t in (*x, *model.parameters(), *model.buffers())}
    cuda = {
        d.index if d.index is not None else torch.cuda.current_device()
        for d in found
        if d.type == "cuda"
    }
    return [torch.device("cpu"), *(torch.device("cuda", i) for i in sorted(cuda))]


class _Generators:
    """The default random-number generators of ``devices``, saved on creation."""

    def __init__(self, devices: list[torch.device]) -> None:
        self.devices = devices
        self.saved = self.current()

    def current(self) -> list[Tensor | None]:
        """The generators' states now."""
        return [rng_state(device) for device in self.devices]

    def rewind(self) -> None:
        """Set every generator back to its saved state."""
        for device, state in zip(self.devices, self.saved, strict=True):
            if state is not None:
                set_rng_state(state, device)

    def same_as(self, states: list[Tensor | None]) -> bool:
        """Whether the generators are in ``states`` now."""
        return all(
            a is None or b is None or torch.equal(a, b)
            for a, b in zip(self.current(), states, strict=True)
        )


def _default_budget(x: Tensor) -> int:
    if x.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(x.device)
        return max(1, free // _FREE_SHARE)
    available = available_bytes()
    if available is None:
        return DEFAULT_MEMORY_BUDGET
    floor = min(MIN_DEFAULT_BUDGET, DEFAULT_MEMORY_BUDGET)
    return max(floor, min(DEFAULT_MEMORY_BUDGET, available // _FREE_SHARE))
