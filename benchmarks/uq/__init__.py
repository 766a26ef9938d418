"""Uncertainty-quality benchmark of pyrolite_bnn against MC dropout and deep ensembles.

Run ``python -m benchmarks.uq --reduced`` (or ``--full``) from the repository root.
Parts: (a) a sweep of 1-D/2-D regression tasks with a gap and test points beyond
the data (:mod:`benchmarks.uq.tasks`), (b) small offline regression data sets,
(c) digits classification with noise and rotated images. ``--settings`` measures
the library's knobs (prior scale, ``init_scale``, noise initialisation, estimator,
KL annealing, particles) on a subset. Results go to ``benchmarks/uq/results/*.json``
and ``benchmarks/uq/RESULTS.md`` (:mod:`benchmarks.uq.report`).
"""
