"""Pure-numpy maths of one chunk of rows: E-step and statistics, M-step, per-row scores.

Nothing here imports dask: every function takes and returns small numpy objects, so a
reader can check any step on a 10-row array. What depends on the covariance type lives
in :mod:`daskgmm.covariance` (one module per type); this module is the same for all.

Conventions (as in scikit-learn's ``sklearn.mixture``): Gaussians are parameterised by
the Cholesky factor of the precision (``precisions_cholesky``); the log-determinant comes
from its diagonal and no covariance is ever inverted.

Numerical precision. The engine works in coordinates shifted by a fixed centre of the
data (``Params.shift``), so data offset by 1e6 with unit spread fits like centred data.
All statistics accumulate in float64 and are centred on each component's current mean;
the M-step corrects for the shift between the current and the new mean, so no
``E[x^2] - mu^2`` cancellation occurs, even for tight clusters far apart.

float32 rows (:func:`data_dtype`) are read as they are. The numpy E-step (the matrix
types; the variance types under ``DASKGMM_KERNELS=numpy``) then runs in float32 (the
shifted rows, the whitening product, the log-densities and responsibilities of each
cache-sized block, and the block's statistics), and each block's statistics are added to
float64 totals; the parameters stay float64. Parameters outside the float32 E-step's
domain (:func:`float32_safe`), or a float32 E-step that overflows (a non-finite result),
send the chunk through the float64 E-step. The compiled kernels of the variance types
read float32 rows and compute in float64. Rows
holding NaN are cast to float64 for their marginal E-step; the scoring kernels
(:func:`score_chunk`, :func:`score_rows`, :func:`chunk_log_likelihood`) cast every
chunk to float64.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from . import covariance, missing
from .covariance import CovarianceError

__all__ = [
    "NAN_POLICIES", "SCORE_DTYPE", "CovarianceError", "Params", "Stats", "Workspace", "aic", "bic",
    "chunk_log_likelihood", "chunk_stats", "combine_stats", "data_dtype", "data_shift",
    "estimate_gaussian_parameters", "estimate_weighted_log_prob", "find_bad_weight",
    "find_nonfinite", "float32_safe", "incomplete_rows",
    "hard_assignment_stats", "log_prob_resp", "m_step", "random_resp",
    "responsibility_stats", "score_chunk", "score_rows", "stats_from_resp",
]

# What a pass does with rows holding NaN (the estimator's ``nan_policy``): 'raise' (an
# error naming the row), 'omit' (left out of fits and sums; scored NaN), 'marginalize'
# (the marginal density over the observed features, :mod:`daskgmm.missing`).
NAN_POLICIES = ("raise", "omit", "marginalize")

def data_dtype(dtype) -> np.dtype:
    """The dtype rows of ``dtype`` are held and fitted in, as scikit-learn's
    ``GaussianMixture`` keeps them: float32 stays float32, anything else (integers,
    booleans, float16, float64) is float64."""
    return np.dtype(np.float32 if np.dtype(dtype) == np.float32 else np.float64)


def as_rows(X) -> np.ndarray:
    """``X`` as a float32 array when it is one, else as float64 (:func:`data_dtype`)."""
    X = np.asarray(X)
    return X if X.dtype == np.float32 else np.asarray(X, dtype=np.float64)


def _as(a, dtype):
    """``a`` in ``dtype`` (itself when it has it)."""
    return a.astype(dtype, copy=False)


# Rows per sub-block inside a chunk: temporaries of shape (block, n_components * n_features)
# stay within a few MiB, i.e. in the CPU's L2/L3 cache.
_BLOCK_BYTES = 2 * 2**20


@dataclass
class Params:
    """Parameters of one candidate mixture, in the engine's shifted coordinates.

    ``means`` are relative to ``shift``: the model's means are ``means + shift``.
    ``covariances`` may be None (a model that has not run an M-step).
    """

    covariance_type: str
    weights: np.ndarray
    means: np.ndarray
    precisions_cholesky: np.ndarray
    covariances: np.ndarray | None
    shift: np.ndarray

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def model(self) -> covariance.CovarianceModel:
        return covariance.get(self.covariance_type)


@dataclass
class Stats:
    """Sufficient statistics of one candidate over some rows.

    ``nk``: sum of responsibilities per component; ``s1``: sum_i r_ik x_i (shifted x);
    ``s2``: second moments about each component's current mean (shape per covariance
    type, see :mod:`daskgmm.covariance`); ``log_likelihood``: sum of log p(x_i);
    ``n_samples``: number of rows; ``weight``: their total sample weight;
    ``n_incomplete``: rows holding NaN among the rows seen (with ``nan_policy='omit'``
    they are not in ``n_samples``, with 'marginalize' they are).

    With sample weights ``w_i`` each row's responsibilities are multiplied by its
    weight and its log-likelihood too (``log_likelihood`` is sum_i w_i log p(x_i)), so
    integer weights give the statistics of the rows repeated that many times. Without
    weights every row weighs 1 and ``weight`` equals ``n_samples``.
    """

    nk: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    log_likelihood: float
    n_samples: int
    weight: float
    n_incomplete: int = 0

    def __add__(self, other: Stats) -> Stats:
        return Stats(
            self.nk + other.nk,
            self.s1 + other.s1,
            self.s2 + other.s2,
            self.log_likelihood + other.log_likelihood,
            self.n_samples + other.n_samples,
            self.weight + other.weight,
            self.n_incomplete + other.n_incomplete,
        )


def combine_stats(parts):
    """Merge lists of per-candidate statistics (associative, order-insensitive up to
    floating-point rounding). ``parts`` is a sequence of lists of ``Stats``."""
    parts = list(parts)
    out = list(parts[0])
    for part in parts[1:]:
        out = [a + b for a, b in zip(out, part, strict=True)]
    return out


class Workspace:
    """Scratch buffers reused from one block of rows to the next.

    Worker processes of ``distributed`` run with ``MALLOC_TRIM_THRESHOLD_`` set, which
    makes glibc map and page-fault every temporary over 128 KiB afresh: allocating the
    temporaries of each block anew is then several times slower than the arithmetic.
    ``ws(name, shape)`` returns a contiguous array of the workspace's ``dtype`` (float64,
    or float32 for a float32 E-step), reusing the memory of the previous request of
    that name.
    """

    def __init__(self, dtype=np.float64):
        self._buffers = {}
        self.dtype = np.dtype(dtype)

    def __call__(self, name, shape):
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.size < size:
            buf = self._buffers[name] = np.empty(size, dtype=self.dtype)
        return buf[:size].reshape(shape)


###############################################################################
# E-step


def overflow_is_inf(fn):
    """Run ``fn`` with float64 overflow silent. A squared distance or a second moment too
    large for float64 is inf (a log-density is -inf; a sum of overflowing products may
    be NaN): the result says so, and the callers report it with its location
    (:func:`daskgmm.passes.data_pass`) or return it (a row whose density underflows has
    log-density -inf); a warning would only repeat it."""

    @functools.wraps(fn)
    def silent(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore"):
            return fn(*args, **kwargs)

    return silent


@overflow_is_inf
def estimate_weighted_log_prob(X, params: Params, ws=None):
    """log p(x_i | k) + log w_k for shifted rows ``X``; shape (n_samples, n_components).

    With a :class:`Workspace`, the result lives in it (valid until its next use). For
    float32 rows the result is float32 (the workspace's dtype must be theirs).
    """
    ws = Workspace(X.dtype) if ws is None else ws
    model = params.model
    n_features = X.shape[1]
    log_det = model.log_det_cholesky(params.precisions_cholesky, n_features)
    const = log_det - 0.5 * n_features * math.log(2 * math.pi) + np.log(params.weights)
    out = model.squared_mahalanobis(X, _as(params.means, X.dtype),
                                    _as(params.precisions_cholesky, X.dtype), ws)
    out *= -0.5
    out += _as(const, X.dtype)
    return out


# exp() below this stays a normal float: subnormal results make arithmetic ~100x slower,
# and terms this small (< 1e-304 of the largest) do not change a float64 sum.
_LOG_TINY = -700.0
# Responsibilities below exp(-460) ~ 1e-200 are set to 0 before the statistics, so that no
# product of a responsibility and a difference of data values can become subnormal.
_LOG_RESP_ZERO = -460.0
# The same for float32 (normal down to exp(-87.3) ~ 1.2e-38): terms below exp(-80) (<
# 2e-35 of the largest) do not change a float32 sum, responsibilities below exp(-60) ~
# 9e-27 count as 0.
_LOG_LIMITS = {np.dtype(np.float64): (_LOG_TINY, _LOG_RESP_ZERO),
               np.dtype(np.float32): (-80.0, -60.0)}


def log_prob_resp(weighted_log_prob, ws=None):
    """Row-wise logsumexp and log-responsibilities.

    Returns ``log_norm`` (n_samples,) and ``log_resp`` (n_samples, n_components); without
    a workspace ``weighted_log_prob`` is left unchanged, with one it becomes ``log_resp``.
    A row that is -inf under every component (its density underflows float64) has
    ``log_norm`` -inf and equal responsibilities.
    """
    n_samples = weighted_log_prob.shape[0]
    if ws is None:
        ws, log_resp = Workspace(weighted_log_prob.dtype), weighted_log_prob.copy()
    else:
        log_resp = weighted_log_prob
    amax = np.max(log_resp, axis=1, out=ws("amax", (n_samples,)))
    underflow = amax == -np.inf
    amax[~np.isfinite(amax)] = 0.0
    log_resp -= amax[:, None]
    np.maximum(log_resp, _LOG_LIMITS[log_resp.dtype][0], out=log_resp)
    expd = np.exp(log_resp, out=ws("exp", log_resp.shape))
    log_norm = np.sum(expd, axis=1, out=ws("log_norm", (n_samples,)))
    with np.errstate(divide="ignore"):
        np.log(log_norm, out=log_norm)
    log_resp -= log_norm[:, None]
    log_norm += amax
    log_norm[underflow] = -np.inf  # not the -700 + log(k) of the clipped terms
    return log_norm, log_resp


###############################################################################
# Per-chunk statistics (the E-step of one data pass)


def empty_stats(params: Params, n_features: int) -> Stats:
    k = params.n_components
    shape = params.model.second_moment_shape(k, n_features)
    return Stats(np.zeros(k), np.zeros((k, n_features)), np.zeros(shape), 0.0, 0, 0.0)


@overflow_is_inf
def stats_from_resp(X, resp, params: Params, log_likelihood: float, ws=None,
                    after_e_step=False, weights=None) -> Stats:
    """Statistics of shifted rows ``X`` under responsibilities ``resp``.

    All second moments are centred on ``params.means`` (the current means).
    ``after_e_step``: ``ws`` holds this block's E-step under ``params`` (reused).
    ``weights``: the rows' sample weights, already folded into ``resp`` (only their
    total is taken here); None for rows of weight 1. float32 rows and responsibilities
    give the block's sums in float32, returned as float64 (the totals' dtype).
    """
    ws = Workspace(X.dtype) if ws is None else ws
    s2 = params.model.second_moment(X, resp, _as(params.means, X.dtype), ws, after_e_step)
    weight = float(X.shape[0]) if weights is None else float(weights.sum())
    return Stats(resp.sum(axis=0, dtype=np.float64), _as(resp.T @ X, np.float64),
                 _as(s2, np.float64), float(log_likelihood), X.shape[0], weight)


def weighted_log_likelihood(log_norm, weights=None) -> float:
    """sum_i w_i log p(x_i) (sum_i log p(x_i) without weights). A row of weight zero
    counts for nothing, even when its density underflows (log p = -inf)."""
    if weights is None:
        return log_norm.sum(dtype=np.float64)
    return float(np.dot(weights, np.where(weights > 0, _as(log_norm, np.float64), 0.0)))


def weighted_resp(resp, weights=None):
    """``resp`` with each row multiplied by its sample weight (in place), or as is."""
    if weights is not None:
        resp *= weights[:, None]
    return resp


def _block_rows(n_features, widest):
    return max(256, _BLOCK_BYTES // (8 * max(n_features, widest)))


def _blocks(X, candidates):
    """Sub-blocks of rows of a chunk, sized to keep temporaries in cache."""
    widest = max(p.n_components * X.shape[1] for p in candidates)
    step = _block_rows(X.shape[1], widest)
    for start in range(0, X.shape[0], step):
        yield start, X[start : start + step]


def _block_weights(weights, start, block):
    return None if weights is None else weights[start : start + block.shape[0]]


def _as_weights(weights):
    return None if weights is None else np.asarray(weights, dtype=np.float64)


def incomplete_rows(X, nan_policy="raise"):
    """Boolean mask of the rows of ``X`` holding a NaN, or None: none does, or
    ``nan_policy`` is 'raise' (the rows are not looked at: a NaN makes the result
    non-finite and the caller locates it)."""
    if nan_policy == "raise":
        return None
    mask = np.isnan(X).any(axis=1)
    return mask if mask.any() else None


def _take_weights(weights, rows):
    return None if weights is None else weights[rows]


def _total_weight(X, weights):
    return float(X.shape[0]) if weights is None else float(weights.sum())


def incomplete_stats(X, params: Params, weights=None) -> Stats:
    """Statistics of (unshifted) rows that each hold a NaN, under ``params``: their
    marginal E-step and expected statistics (:func:`daskgmm.missing.stats`)."""
    nk, s1, s2, log_likelihood = missing.stats(X - params.shift, params, weights)
    return Stats(nk, s1, s2, log_likelihood, X.shape[0], _total_weight(X, weights),
                 X.shape[0])


@overflow_is_inf
def chunk_stats(X, candidates: list[Params], weights=None, nan_policy="raise") -> list[Stats]:
    """E-step of every candidate on one chunk of (unshifted) rows, with statistics.

    The chunk is processed in sub-blocks of rows sized to keep temporaries in cache.
    ``weights``: the rows' sample weights (n_samples,), folded into the
    responsibilities and the log-likelihood (see :class:`Stats`); None: all 1.
    ``nan_policy``: what rows holding NaN do (:data:`NAN_POLICIES`): 'omit' leaves them
    out, 'marginalize' adds their expected statistics (:func:`incomplete_stats`).
    Returns one ``Stats`` per candidate; a non-finite ``log_likelihood`` means the
    chunk holds NaN (under 'raise') or infinite values (the caller locates them).
    float32 rows stay float32 (see the module's notes); their statistics are float64.
    """
    X = as_rows(X)
    weights = _as_weights(weights)
    incomplete = incomplete_rows(X, nan_policy)
    if incomplete is None:
        return _complete_stats(X, candidates, weights)
    complete = ~incomplete
    out = _complete_stats(X[complete], candidates, _take_weights(weights, complete))
    rows, w = _as(X[incomplete], np.float64), _take_weights(weights, incomplete)
    if nan_policy == "omit":
        return [_with_incomplete(s, rows.shape[0]) for s in out]
    return [s + incomplete_stats(rows, p, w) for s, p in zip(out, candidates, strict=True)]


def _with_incomplete(stats: Stats, n_incomplete: int) -> Stats:
    stats.n_incomplete += n_incomplete
    return stats


def _complete_stats(X, candidates: list[Params], weights=None) -> list[Stats]:
    """:func:`chunk_stats` of rows without NaN (float64 or float32)."""
    if X.shape[0] == 0:
        return [empty_stats(p, X.shape[1]) for p in candidates]
    fused = [_fused(p) for p in candidates]  # diag, spherical: one compiled pass
    if all(f is not None for f in fused):
        weight = float(X.shape[0]) if weights is None else float(weights.sum())
        return [Stats(*f.stats(X, weights), X.shape[0], weight) for f in fused]
    if X.dtype == np.float32 and not all(float32_safe(p) for p in candidates):
        X = _as(X, np.float64)
    out = _blocked_stats(X, candidates, weights)
    if X.dtype == np.float32 and not all(_finite_stats(s) for s in out):
        # overflow in float32 (or NaN, which float64 finds again): float64 says which
        out = _blocked_stats(_as(X, np.float64), candidates, weights)
    return out


# The float32 E-step's domain: precision factors (1 / standard deviations) within
# 1e-15..1e15, so that squared distances and second moments are normal float32 numbers,
# and means within 1e3 of the data's centre in those units, so that whitening x and mu
# apart (x P - mu P, 'full' and 'tied') cancels at most 3 of float32's 7 digits.
_FLOAT32_FACTORS = (1e-15, 1e15)
_FLOAT32_WHITENED_MEAN = 1e3


def float32_safe(params: Params) -> bool:
    """Whether float32 rows may take the float32 E-step under ``params``; if not, the
    chunk is computed in float64."""
    factors = np.abs(params.precisions_cholesky)
    factors = factors[factors > 0]
    low, high = _FLOAT32_FACTORS
    return bool(factors.size and low <= factors.min() and factors.max() <= high
                and np.abs(params.means).max() * factors.max() <= _FLOAT32_WHITENED_MEAN)


def _finite_stats(stats: Stats) -> bool:
    return bool(math.isfinite(stats.log_likelihood) and np.isfinite(stats.s1).all()
                and np.isfinite(stats.s2).all())


def _blocked_stats(X, candidates: list[Params], weights=None) -> list[Stats]:
    """The numpy E-step and statistics of rows without NaN, block by block, in the
    rows' dtype."""
    n_features = X.shape[1]
    out = [empty_stats(p, n_features) for p in candidates]
    resp_zero = _LOG_LIMITS[X.dtype][1]
    ws = Workspace(X.dtype)
    for start, block in _blocks(X, candidates):
        w = _block_weights(weights, start, block)
        shifted = {}
        for i, p in enumerate(candidates):
            key = p.shift.tobytes()
            if key not in shifted:
                shifted[key] = np.subtract(block, p.shift, out=ws(f"xs{len(shifted)}", block.shape))
            xs = shifted[key]
            log_norm, log_resp = log_prob_resp(estimate_weighted_log_prob(xs, p, ws), ws)
            negligible = log_resp < resp_zero
            resp = np.exp(log_resp, out=log_resp)
            resp[negligible] = 0.0
            out[i] = out[i] + stats_from_resp(xs, weighted_resp(resp, w), p,
                                              weighted_log_likelihood(log_norm, w), ws,
                                              after_e_step=True, weights=w)
    return out


def _fused(params: Params):
    """The compiled one-pass E-step of ``params`` (see :mod:`daskgmm.covariance`), or
    None: run the numpy path."""
    return params.model.fused_e_step(params.weights, params.means,
                                     params.precisions_cholesky, params.shift)


def _e_steps(X, params: Params):
    """The E-step of one model on (unshifted) float64 rows, block by block: yields
    ``(rows, log_norm, log_resp)`` with ``rows`` the block's slice of ``X`` (the arrays
    are workspace buffers, valid until the next block)."""
    ws = Workspace()
    for start, block in _blocks(X, [params]):
        xs = np.subtract(block, params.shift, out=ws("xs", block.shape))
        log_norm, log_resp = log_prob_resp(estimate_weighted_log_prob(xs, params, ws), ws)
        yield slice(start, start + block.shape[0]), log_norm, log_resp


def _result_array(n, params: Params, what):
    if what == "predict_proba":
        return np.empty((n, params.n_components))
    return np.empty(n, dtype=np.int64 if what == "predict" else np.float64)


def _incomplete_results(rows, params: Params, what, nan_policy):
    """:func:`score_chunk` of rows that each hold a NaN: under 'marginalize' from
    their marginal densities; under 'omit' NaN (component -1 for 'predict')."""
    out = _result_array(rows.shape[0], params, what)
    if nan_policy == "omit":
        out[...] = -1 if what == "predict" else np.nan
        return out
    log_norm, log_resp = missing.log_prob_resp(rows - params.shift, params)
    if what == "score_samples":
        out[:] = log_norm
    elif what == "predict":
        out[:] = log_resp.argmax(axis=1)
    else:
        np.exp(log_resp, out=out)
    return out


@overflow_is_inf
def score_chunk(X, params: Params, what, nan_policy="raise"):
    """Per-row results of one model on a chunk of (unshifted) rows, block by block.

    ``what``: 'score_samples' (log-density, float64), 'predict' (int64 component) or
    'predict_proba' (float64, (n_samples, n_components)). Rows holding NaN, under
    ``nan_policy`` 'marginalize': the results of their marginal density over the
    observed features; under 'omit': NaN (component -1).
    """
    X = np.asarray(X, dtype=np.float64)
    incomplete = incomplete_rows(X, nan_policy)
    if incomplete is None:
        return _complete_scores(X, params, what)
    out = _result_array(X.shape[0], params, what)
    complete = ~incomplete
    if complete.any():
        out[complete] = _complete_scores(X[complete], params, what)
    out[incomplete] = _incomplete_results(X[incomplete], params, what, nan_policy)
    return out


def _complete_scores(X, params: Params, what):
    fused = _fused(params)
    if fused is not None:
        return fused.score(X, what)
    out = _result_array(X.shape[0], params, what)
    for rows, log_norm, log_resp in _e_steps(X, params):
        if what == "score_samples":
            out[rows] = log_norm
        elif what == "predict":
            out[rows] = log_resp.argmax(axis=1)
        else:
            np.exp(log_resp, out=out[rows])
    return out


# Per-row anomaly scores: one record per row (see :func:`score_rows`). The one
# definition of the score schema: Zarr and Parquet outputs derive their types from it.
SCORE_DTYPE = np.dtype([
    ("log_density", np.float64),
    ("anomaly_score", np.float64),
    ("component", np.int32),
    ("responsibility", np.float64),
    ("is_anomaly", np.bool_),
    ("missing_features", np.int32),
])


@overflow_is_inf
def score_rows(X, params: Params, threshold: float, nan_policy="raise"):
    """Anomaly scores of a chunk of (unshifted) rows under one model, block by block.

    Returns a structured array of ``SCORE_DTYPE``: log-density (``score_samples``), the
    anomaly score (its negative), the most probable component (``predict``), that
    component's responsibility (the row's maximum of ``predict_proba``),
    ``is_anomaly = log_density < threshold`` and the number of the row's features that
    are NaN. Rows holding NaN: under ``nan_policy='marginalize'`` scored by their
    marginal density over the observed features; under 'omit' log-density, score and
    responsibility NaN, component -1, ``is_anomaly`` False.
    """
    X = np.asarray(X, dtype=np.float64)
    incomplete = incomplete_rows(X, nan_policy)
    if incomplete is None:
        out = _complete_score_rows(X, params, threshold)
        out["missing_features"] = 0
        return out
    out = np.empty(X.shape[0], dtype=SCORE_DTYPE)
    complete = ~incomplete
    if complete.any():
        out[complete] = _complete_score_rows(X[complete], params, threshold)
    rows = X[incomplete]
    if nan_policy == "omit":
        log_norm = np.full(rows.shape[0], np.nan)
        component, responsibility = np.full(rows.shape[0], -1), log_norm
    else:
        log_norm, log_resp = missing.log_prob_resp(rows - params.shift, params)
        component, responsibility = log_resp.argmax(axis=1), np.exp(log_resp.max(axis=1))
    out[incomplete] = _records(log_norm, component, responsibility, threshold)
    out["missing_features"] = np.isnan(X).sum(axis=1)
    return out


def _records(log_norm, component, responsibility, threshold):
    rec = np.empty(log_norm.shape[0], dtype=SCORE_DTYPE)
    _fill_records(rec, log_norm, component, responsibility, threshold)
    return rec


def _fill_records(rec, log_norm, component, responsibility, threshold):
    rec["log_density"] = log_norm
    rec["anomaly_score"] = -log_norm
    rec["component"] = component
    rec["responsibility"] = responsibility
    rec["is_anomaly"] = log_norm < threshold  # False for NaN


def _complete_score_rows(X, params: Params, threshold: float):
    out = np.empty(X.shape[0], dtype=SCORE_DTYPE)
    fused = _fused(params)
    parts = [(slice(None), *fused.rows(X))] if fused is not None else (
        (rows, log_norm, log_resp.argmax(axis=1), np.exp(log_resp.max(axis=1)))
        for rows, log_norm, log_resp in _e_steps(X, params))
    for rows, log_norm, component, responsibility in parts:
        _fill_records(out[rows], log_norm, component, responsibility, threshold)
    return out


@overflow_is_inf
def chunk_log_likelihood(X, candidates: list[Params], weights=None,
                         nan_policy="raise") -> list[Stats]:
    """Only the log-likelihood (and row count and total weight) of every candidate on a
    chunk of rows; ``weights`` and ``nan_policy`` as in :func:`chunk_stats`.

    A non-finite ``log_likelihood`` means the chunk holds NaN or infinite values.
    """
    X = np.asarray(X, dtype=np.float64)
    weights = _as_weights(weights)
    incomplete = incomplete_rows(X, nan_policy)
    if incomplete is None:
        return _complete_log_likelihood(X, candidates, weights)
    complete = ~incomplete
    out = _complete_log_likelihood(X[complete], candidates, _take_weights(weights, complete))
    rows, w = X[incomplete], _take_weights(weights, incomplete)
    if nan_policy == "omit":
        return [_with_incomplete(s, rows.shape[0]) for s in out]
    for s, p in zip(out, candidates, strict=True):
        log_norm, _ = missing.log_prob_resp(rows - p.shift, p)
        s.log_likelihood += weighted_log_likelihood(log_norm, w)
        s.n_samples += rows.shape[0]
        s.weight += _total_weight(rows, w)
        s.n_incomplete += rows.shape[0]
    return out


def _complete_log_likelihood(X, candidates: list[Params], weights=None) -> list[Stats]:
    totals = [0.0] * len(candidates)
    ws = Workspace()
    for start, block in _blocks(X, candidates):
        w = _block_weights(weights, start, block)
        for i, p in enumerate(candidates):
            xs = np.subtract(block, p.shift, out=ws("xs", block.shape))
            log_norm, _ = log_prob_resp(estimate_weighted_log_prob(xs, p, ws), ws)
            totals[i] += weighted_log_likelihood(log_norm, w)
    weight = float(X.shape[0]) if weights is None else float(weights.sum())
    return [
        Stats(s.nk, s.s1, s.s2, total, X.shape[0], weight)
        for s, total in zip((empty_stats(p, X.shape[1]) for p in candidates), totals,
                            strict=True)
    ]


@overflow_is_inf
def responsibility_stats(X, params: Params, resp_fn, weights=None) -> Stats:
    """Statistics of a chunk of (unshifted) rows under given responsibilities, each
    row's multiplied by its sample weight (``weights``, None: all 1).

    ``resp_fn(shifted_block, block_start)`` returns the responsibilities of one block of
    rows; blocks are cache-sized, so no temporary grows with the chunk.
    """
    X = np.asarray(X, dtype=np.float64)
    weights = _as_weights(weights)
    out = empty_stats(params, X.shape[1])
    ws = Workspace()
    for start, block in _blocks(X, [params]):
        w = _block_weights(weights, start, block)
        xs = np.subtract(block, params.shift, out=ws("xs", block.shape))
        out = out + stats_from_resp(xs, weighted_resp(resp_fn(xs, start), w), params, 0.0,
                                    ws, weights=w)
    return out


def initialisation_rows(X, weights, nan_policy, centres):
    """The rows of a chunk an initialisation pass uses, their weights and their
    positions in the chunk: every row (under 'raise', or without NaN); under 'omit' the
    rows without NaN; under 'marginalize' every row, each NaN replaced by the value of
    the nearest of ``centres`` over the row's observed features (a single imputation
    for the start only: EM then marginalizes)."""
    X = np.asarray(X, dtype=np.float64)
    weights = _as_weights(weights)
    incomplete = incomplete_rows(X, nan_policy)
    if incomplete is None:
        return X, weights, np.arange(X.shape[0])
    if nan_policy == "omit":
        keep = np.flatnonzero(~incomplete)
        return X[keep], _take_weights(weights, keep), keep
    X = X.copy()
    X[incomplete] = missing.impute(X[incomplete], centres)
    return X, weights, np.arange(X.shape[0])


def hard_assignment_stats(X, centers, params: Params, weights=None,
                          nan_policy="raise") -> Stats:
    """Statistics of rows assigned to their nearest centre (k-means initialisation)."""
    n = np.shape(X)[0]
    X, weights, _ = initialisation_rows(X, weights, nan_policy, centers)
    c = centers - params.shift
    c2 = (c * c).sum(axis=1)

    def nearest(xs, start):
        d2 = c2 - 2.0 * (xs @ c.T)  # + |x|^2, the same for every centre
        resp = np.zeros(d2.shape)
        resp[np.arange(xs.shape[0]), d2.argmin(axis=1)] = 1.0
        return resp

    return _with_incomplete(responsibility_stats(X, params, nearest, weights),
                            _n_left_out(n, X, nan_policy))


def _n_left_out(n, X, nan_policy):
    return n - X.shape[0] if nan_policy == "omit" else 0


def _hash_uniform(idx, seed):
    """Uniform numbers in [0, 1), a SplitMix64 hash of the uint64 indices ``idx``."""
    with np.errstate(over="ignore"):
        z = idx + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def random_resp(seed, row_start, n_rows, n_components):
    """Uniform random responsibilities normalised per row, a function of the global row
    index only (SplitMix64 hash), so they do not depend on the chunking."""
    return random_resp_at(seed, np.arange(row_start, row_start + n_rows), n_components)


def random_resp_at(seed, rows, n_components):
    """:func:`random_resp` of the rows of global indices ``rows``."""
    idx = (np.asarray(rows, dtype=np.uint64)[:, None]
           * np.uint64(n_components) + np.arange(n_components, dtype=np.uint64))
    u = _hash_uniform(idx, seed)
    return u / u.sum(axis=1, keepdims=True)


def sample_keys(seed, row_start, weights):
    """Keys of weighted sampling without replacement (Efraimidis and Spirakis): the rows
    of the largest keys ``log(u) / w`` are a sample drawn with probability proportional
    to weight, one row after another. ``u`` is a hash of the global row index (from
    ``row_start``), so the sample does not depend on the chunking; a row of weight 0 has
    key -inf (never drawn)."""
    weights = np.asarray(weights, dtype=np.float64)
    idx = np.arange(row_start, row_start + weights.shape[0], dtype=np.uint64)
    u = _hash_uniform(idx, seed) + 0.5 / 2**53  # in (0, 1)
    keys = np.full(weights.shape, -np.inf)
    positive = weights > 0
    keys[positive] = np.log(u[positive]) / weights[positive]
    return keys


def random_resp_stats(X, seed, row_start, params: Params, weights=None,
                      nan_policy="raise") -> Stats:
    """Statistics of a chunk starting at global row ``row_start`` under
    :func:`random_resp` responsibilities ('random' initialisation); under
    'marginalize' a NaN is replaced by the data's centre (the engine's shift)."""
    k = params.n_components
    n = np.shape(X)[0]
    X, weights, positions = initialisation_rows(X, weights, nan_policy, params.shift[None])
    rows = row_start + positions
    return _with_incomplete(responsibility_stats(
        X, params,
        lambda xs, start: random_resp_at(seed, rows[start:start + xs.shape[0]], k),
        weights), _n_left_out(n, X, nan_policy))


###############################################################################
# M-step


def estimate_gaussian_parameters(stats: Stats, current_means, covariance_type, reg_covar):
    """nk (with scikit-learn's 10*eps guard), means and covariances from statistics.

    ``current_means`` are the means the statistics were centred on.
    """
    nk = stats.nk + 10 * np.finfo(np.float64).eps
    means = stats.s1 / nk[:, None]
    model = covariance.get(covariance_type)
    covariances = model.covariances(stats, nk, means, current_means, reg_covar)
    return nk, means, covariances


# A standard deviation below this many float64 epsilons x the data's magnitude is
# rounding noise: the component's rows coincide (in some direction) to machine precision.
_RESOLUTION = 64 * np.finfo(np.float64).eps
# One below this (~7.5e-155) has a precision, 1 / variance, beyond float64.
_SMALLEST_STD = 1.0 / math.sqrt(np.finfo(np.float64).max)
# Moving the second moments from the current means to the new ones (s2 - a d^T - d a^T
# + n d d^T) rounds each variance by ~eps |d|**2: a standard deviation below this many
# sqrt(eps) x |d| is that rounding (rows that coincide, seen from a mean that moved).
_MOVED = 8 * math.sqrt(np.finfo(np.float64).eps)


@overflow_is_inf
def params_from_stats(stats: Stats, params: Params, reg_covar: float,
                      n_samples: float | None = None) -> Params:
    """New parameters from the statistics gathered under ``params`` (whose means the
    second moments are centred on). Weights are nk / n_samples, by default nk / sum(nk)
    (the M-step); initialisation divides by the number of rows, as scikit-learn does.

    A covariance that is not positive definite, or whose variance in some direction is
    at the rounding level of the data (collapsed or repeated rows with ``reg_covar=0``),
    raises :class:`CovarianceError` naming the component, as scikit-learn does; so does
    a mean or covariance that overflows float64 (statistics of data too large for it).
    """
    nk, means, covariances = estimate_gaussian_parameters(
        stats, params.means, params.covariance_type, reg_covar
    )
    model = params.model
    _check_finite(means, covariances, params.covariance_type)
    precisions_cholesky = model.precisions_cholesky(covariances)
    # the rounding level of each component's rows: their magnitude in the user's
    # coordinates, plus the shift they were centred with; and of the move from the
    # current means, in proportion to the weight of the rows (0 for an empty component)
    scale = np.abs(means + params.shift).max(axis=1) + np.abs(params.shift).max()
    moved2 = np.sum((means - params.means) ** 2, axis=1) * (stats.nk / nk)
    stds = model.conditional_stds(precisions_cholesky)
    if len(stds) == 1:  # one covariance for all components ('tied')
        moved = np.sqrt(np.sum(moved2 * nk) / nk.sum())
        floor = np.fmax.reduce([_RESOLUTION * scale.max(), _MOVED * moved, _SMALLEST_STD])
        collapsed = [None] if np.any(stds <= floor) else []
    else:
        floor = np.fmax.reduce([_RESOLUTION * scale, _MOVED * np.sqrt(moved2),
                                np.full(len(scale), _SMALLEST_STD)])
        collapsed = np.flatnonzero(np.any(stds <= floor[:, None], axis=1))
    if len(collapsed):
        c = collapsed[0]
        raise CovarianceError(covariance.ill_defined_message(
            None if c is None else int(c), params.covariance_type))
    return Params(
        params.covariance_type,
        nk / (nk.sum() if n_samples is None else n_samples),
        means,
        precisions_cholesky,
        covariances,
        params.shift,
    )


def _check_finite(means, covariances, covariance_type):
    """:class:`CovarianceError` naming the first component whose mean or covariance
    overflowed (or is NaN)."""
    ok = np.isfinite(means).all(axis=1)
    if covariance_type == "tied":
        if not np.isfinite(covariances).all():
            raise CovarianceError(covariance.overflow_message(None, covariance_type))
    else:
        ok &= np.isfinite(covariances.reshape(len(covariances), -1)).all(axis=1)
    if not ok.all():
        raise CovarianceError(covariance.overflow_message(int(np.flatnonzero(~ok)[0]),
                                                          covariance_type))


def m_step(stats: Stats, params: Params, reg_covar: float) -> Params:
    """New parameters from the statistics gathered under ``params``."""
    return params_from_stats(stats, params, reg_covar)


###############################################################################
# Model criteria and checks


def bic(log_likelihood: float, n_samples: float, n_parameters: int) -> float:
    """Bayesian information criterion from a total log-likelihood (lower is better).

    ``n_samples`` is the effective sample size: the number of rows, or with sample
    weights their total weight (frequency weights: integer weights count as the rows
    repeated, so the BIC is the repeated rows' BIC).
    """
    return -2.0 * log_likelihood + n_parameters * math.log(n_samples)


def aic(log_likelihood: float, n_parameters: int) -> float:
    """Akaike information criterion from a total log-likelihood (lower is better)."""
    return -2.0 * log_likelihood + 2.0 * n_parameters


def find_bad_weight(weights):
    """Index of the first sample weight that is negative, NaN or infinite, or None."""
    w = np.asarray(weights, dtype=np.float64)
    bad = ~(np.isfinite(w) & (w >= 0))
    return int(np.argmax(bad)) if bad.any() else None


def find_nonfinite(X, allow_nan=False):
    """(row, column) of the first NaN or infinite value in ``X`` (``allow_nan``: of the
    first infinite value), or None."""
    X = np.asarray(X, dtype=np.float64)
    bad = np.isinf(X) if allow_nan else ~np.isfinite(X)
    if not bad.any():
        return None
    row, col = np.argwhere(bad)[0]
    return int(row), int(col)


def find_all_missing(X):
    """Index of the first row of ``X`` whose every value is NaN, or None."""
    empty = np.isnan(np.asarray(X, dtype=np.float64)).all(axis=1)
    return int(np.argmax(empty)) if empty.any() else None


def data_shift(sample):
    """The fixed centre the engine shifts rows by (removes large offsets): the median
    of the finite rows of ``sample`` (one huge outlier cannot move it), or zeros."""
    sample = np.asarray(sample, dtype=np.float64)
    # bad rows are reported by the data pass, with their location; skip them here.
    finite = sample[np.isfinite(sample).all(axis=1)]
    return np.median(finite, axis=0) if finite.size else np.zeros(sample.shape[1])
