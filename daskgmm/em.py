"""The EM engine: a batch of candidate mixtures advanced together, one data pass per iteration.

Each pass is ONE ``compute``: every row chunk goes through a pure-numpy kernel
(:mod:`daskgmm.kernels`) that returns small per-candidate statistics; these are merged
by an associative ``combine`` in a tree of fan-in ``split_every`` and the M-step runs
on the client on the small result. Candidates that converge leave the batch, so a
batch of restarts (or of model-selection candidates) reads each chunk once per
iteration of the slowest one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dask
import numpy as np
from threadpoolctl import threadpool_limits

from . import kernels, progress
from .kernels import Params
from .quantiles import N_POINTS, RankSketch, combine_sketches
from .sources import Dataset

logger = logging.getLogger(__name__)


###############################################################################
# One pass over the data


def _tree(parts, combine, split_every):
    """Reduce delayed ``parts`` with ``combine`` in a tree of fan-in ``split_every``."""
    if split_every < 2:
        raise ValueError(f"split_every must be an int >= 2, got {split_every!r}.")
    depth = 0
    while len(parts) > 1:
        parts = [
            dask.delayed(combine, pure=True)(parts[i : i + split_every])
            for i in range(0, len(parts), split_every)
        ]
        depth += 1
    return parts[0], depth


def _bad_value_error(dataset_description, label, start, stop, row, col, feature_names):
    column = f"column {col}" + (f" ({feature_names[col]!r})" if feature_names else "")
    return ValueError(
        f"Input X contains NaN or infinity: {label} of {dataset_description}, rows "
        f"{start} to {stop - 1}, first at row {start + row}, {column}. "
        "Gaussian mixtures need finite values: drop or impute these rows before fitting, "
        "for example X = X[np.isfinite(X).all(axis=1)] for numpy, or for dask "
        "X = X[da.isfinite(X).all(axis=1)]; X.compute_chunk_sizes()."
    )


class _ChunkTask:
    """Applies a per-chunk function and turns non-finite results into a located error."""

    def __init__(self, fn, where):
        self.fn = fn
        self.where = where  # (description, feature_names)

    def __call__(self, block, args, label, start):
        with np.errstate(invalid="ignore", over="ignore"):
            out = self.fn(block, *args, start)
        if not all(_finite(s) for s in _as_list(out)):
            bad = kernels.find_nonfinite(block)
            description, names = self.where
            if bad is not None:
                raise _bad_value_error(
                    description, label, start, start + block.shape[0], *bad, names
                )
            raise ValueError(
                f"Numerical overflow in {label} of {description}, rows {start} to "
                f"{start + block.shape[0] - 1}: the values are finite but too large for "
                f"float64 arithmetic (largest magnitude {np.abs(block).max():.3g}). Scale "
                "the input data, e.g. sklearn.preprocessing.StandardScaler."
            )
        return out


def _finite(stats):
    if not math.isfinite(stats.log_likelihood):
        return False
    return all(np.isfinite(getattr(stats, name, 0.0)).all() for name in ("s1", "s2"))


def _as_list(out):
    return out if isinstance(out, list) else [out]


def data_pass(dataset: Dataset, fn, args, *, combine=kernels.combine_stats, split_every=8):
    """Map ``fn(block, *args, row_start)`` over row chunks and tree-combine: one compute.

    With ``split_every=None`` the chunks' results are combined once on the client instead
    (for results that only concatenate, where a tree would copy them at every level).

    ``fn`` returns a ``Stats`` or a list of them; a non-finite log-likelihood in a chunk
    holding NaN or infinite values raises a ``ValueError`` naming the chunk and rows.
    """
    blocks = dataset.array.to_delayed(optimize_graph=True).ravel()
    offsets = dataset.row_offsets
    task = _ChunkTask(fn, (dataset.description, dataset.feature_names))
    shared = dask.delayed(args, traverse=False)
    parts = [
        dask.delayed(task, pure=True)(block, shared, dataset.chunk_label(i), int(offsets[i]))
        for i, block in enumerate(blocks)
    ]
    if split_every is None:
        with threadpool_limits(limits=1):
            (results,) = dask.compute(parts)
        return combine(results)
    root, _ = _tree(parts, combine, split_every)
    with threadpool_limits(limits=1):
        (result,) = dask.compute(root)
    return result


def _em_chunk(block, candidates, row_start):
    return kernels.chunk_stats(block, candidates)


def _hard_assignment_chunk(block, centers_and_params, row_start):
    return [kernels.hard_assignment_stats(block, c, p) for c, p in centers_and_params]


def _random_resp_chunk(block, seeds_and_params, row_start):
    def resp_fn(seed, k):
        return lambda xs, start: random_resp(seed, row_start + start, xs.shape[0], k)

    return [
        kernels.responsibility_stats(block, p, resp_fn(seed, p.n_components))
        for seed, p in seeds_and_params
    ]


def _log_likelihood_chunk(block, params, row_start):
    return kernels.chunk_log_likelihood(block, params)


def _sketch_chunk(block, params, n_total, row_start):
    n_points = sketch_points(block.shape[0], n_total)
    return [
        RankSketch.from_values(kernels.score_chunk(block, p, "score_samples"), n_points)
        for p in params
    ]


def random_resp(seed, row_start, n_rows, n_components):
    """Uniform random responsibilities normalised per row, a function of the global row
    index only (SplitMix64 hash), so they do not depend on the chunking."""
    idx = (np.arange(row_start, row_start + n_rows, dtype=np.uint64)[:, None]
           * np.uint64(n_components) + np.arange(n_components, dtype=np.uint64))
    with np.errstate(over="ignore"):
        z = idx + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)
    return u / u.sum(axis=1, keepdims=True)


###############################################################################
# The batch of candidates


@dataclass
class Candidate:
    """One model being fitted: its parameters and EM history.

    ``lower_bound`` is the mean log-likelihood per row from the latest E-step; ``params``
    are the parameters after the latest M-step (as in scikit-learn).
    """

    params: Params
    tag: object = None
    lower_bound: float = -np.inf
    lower_bounds: list = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    done: bool = False
    seconds: float = 0.0
    error: Exception | None = None


@dataclass
class EMResult:
    candidates: list
    n_passes: int


def run_em(
    dataset: Dataset,
    candidates: list[Candidate],
    *,
    tol: float,
    max_iter: int,
    reg_covar: float,
    split_every: int = 8,
    on_iteration: Callable | None = None,
    on_pass: Callable | None = None,
    raise_errors: bool = True,
) -> EMResult:
    """Advance every candidate with EM until it converges or reaches ``max_iter``.

    Each iteration is one data pass for all active candidates. A candidate whose
    M-step fails (a covariance that is not positive definite) raises, or with
    ``raise_errors=False`` leaves the batch with ``error`` set.
    ``on_iteration(candidate, change)`` is called after each of a candidate's iterations,
    ``on_pass(candidates, n_passes)`` after each pass (for checkpoints).
    """
    n_passes = 0
    for c in candidates:
        c.done = c.done or max_iter == 0
    progress.notify({"event": "em-start", "max_iter": max_iter,
                     "n_candidates": len(candidates)})
    while True:
        active = [c for c in candidates if not c.done]
        if not active:
            break
        t0 = time.perf_counter()
        stats = data_pass(
            dataset, _em_chunk, ([c.params for c in active],), split_every=split_every
        )
        n_passes += 1
        elapsed = (time.perf_counter() - t0) / len(active)
        for c, s in zip(active, stats, strict=True):
            c.seconds += elapsed
            prev = c.lower_bound
            c.lower_bound = s.log_likelihood / s.n_samples
            c.lower_bounds.append(c.lower_bound)
            c.n_iter += 1
            try:
                c.params = kernels.m_step(s, c.params, reg_covar)
            except kernels.CovarianceError as exc:
                if raise_errors:
                    raise
                c.error, c.done = exc, True
                continue
            change = c.lower_bound - prev
            if on_iteration is not None:
                on_iteration(c, change)
            if abs(change) < tol:
                c.converged = True
            c.done = c.converged or c.n_iter >= max_iter
        if on_pass is not None:
            on_pass(candidates, n_passes)
        best = max(active, key=lambda c: c.lower_bound)
        progress.notify({
            "event": "em-pass", "n_passes": n_passes, "max_iter": max_iter,
            "active": sum(not c.done for c in candidates), "n_iter": best.n_iter,
            "lower_bound": best.lower_bound,
            "change": best.lower_bound - (best.lower_bounds[-2] if len(best.lower_bounds) > 1
                                          else -np.inf),
        })
    return EMResult(candidates, n_passes)


def score_pass(dataset: Dataset, params: list[Params], split_every: int = 8):
    """Total log-likelihood and row count of ``dataset`` under each of ``params``."""
    stats = data_pass(dataset, _log_likelihood_chunk, (params,), split_every=split_every)
    return [(s.log_likelihood, s.n_samples) for s in stats]


def sketch_pass(dataset: Dataset, params: list[Params]):
    """Per model, a :class:`RankSketch` of the log-densities of all rows (one pass).

    The sketches give the total log-likelihood and row count as :func:`score_pass`
    does, and quantiles of the log-density with a guaranteed rank error: each chunk
    keeps ``sketch_points(rows, n_samples)`` values, so the client receives about
    ``max(SKETCH_BUDGET, 2049 * n_chunks)`` values per model.
    """
    # Sketches combine by concatenation: gather them flat rather than through a tree.
    return data_pass(dataset, _sketch_chunk, (params, dataset.n_samples),
                     combine=combine_sketches, split_every=None)


# Values per model that a sketch pass may send to the client: up to this many rows, the
# quantiles are exact.
SKETCH_BUDGET = 1 << 22


def sketch_points(n_rows: int, n_total: int) -> int:
    """Values a chunk of ``n_rows`` of ``n_total`` rows keeps: its share of
    ``SKETCH_BUDGET`` (so all its rows when ``n_total <= SKETCH_BUDGET``), at least 2049."""
    return max(N_POINTS, -(-SKETCH_BUDGET * n_rows // max(n_total, 1)))
