"""Pure-numpy maths of the Gaussian mixture: per-chunk E-step and statistics, M-step.

Nothing here imports dask: every function takes and returns small numpy objects,
so a reader can check any step on a 10-row array.

Conventions (as in scikit-learn's ``sklearn.mixture``):

- Gaussians are parameterised by the Cholesky factor of the precision
  (``precisions_cholesky``); the log-determinant comes from its diagonal and no
  covariance is ever inverted.
- Shapes per ``covariance_type`` (sufficient statistic ``s2``: second moments about each
  component's current mean ``mu_k``):

  ============  ======================================  ========================================
  type          covariances / precisions_cholesky       ``s2``
  ============  ======================================  ========================================
  'full'        (n_components, n_features, n_features)  sum_i r_ik (x_i-mu_k)(x_i-mu_k)^T
  'tied'        (n_features, n_features)                as 'full', summed over k in the M-step
  'diag'        (n_components, n_features)              sum_i r_ik (x_i-mu_k)**2
  'spherical'   (n_components,)                         as 'diag', averaged in the M-step
  ============  ======================================  ========================================

Numerical precision. The engine works in coordinates shifted by a fixed centre of the
data (``Params.shift``), so data offset by 1e6 with unit spread fits like centred data.
All statistics accumulate in float64 and are centred on each component's current mean;
the M-step corrects for the shift between the current and the new mean, so no
``E[x^2] - mu^2`` cancellation occurs, even for tight clusters far apart. The 'diag' and
'spherical' E-steps also subtract each mean before squaring (scikit-learn expands
``x^2 - 2 x mu + mu^2``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

# Rows per sub-block inside a chunk: temporaries of shape (block, n_components * n_features)
# stay within a few MiB, i.e. in the CPU's L2/L3 cache.
_BLOCK_BYTES = 2 * 2**20


@dataclass
class Params:
    """Parameters of one candidate mixture, in the engine's shifted coordinates.

    ``means`` are relative to ``shift``: the model's means are ``means + shift``.
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


@dataclass
class Stats:
    """Sufficient statistics of one candidate over some rows.

    ``nk``: sum of responsibilities per component; ``s1``: sum_i r_ik x_i (shifted x);
    ``s2``: second moments (see module docstring); ``log_likelihood``: sum of
    log p(x_i); ``n_samples``: number of rows.
    """

    nk: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    log_likelihood: float
    n_samples: int

    def __add__(self, other: Stats) -> Stats:
        return Stats(
            self.nk + other.nk,
            self.s1 + other.s1,
            self.s2 + other.s2,
            self.log_likelihood + other.log_likelihood,
            self.n_samples + other.n_samples,
        )


def combine_stats(parts):
    """Merge lists of per-candidate statistics (associative, order-insensitive up to
    floating-point rounding). ``parts`` is a sequence of lists of ``Stats``."""
    parts = list(parts)
    out = list(parts[0])
    for part in parts[1:]:
        out = [a + b for a, b in zip(out, part, strict=True)]
    return out


###############################################################################
# Log-densities


def log_det_cholesky(precisions_cholesky, covariance_type, n_features):
    """log det of the Cholesky factor of the precision (= -0.5 log det covariance)."""
    if covariance_type == "full":
        n_components = precisions_cholesky.shape[0]
        diag = precisions_cholesky.reshape(n_components, -1)[:, :: n_features + 1]
        return np.sum(np.log(diag), axis=1)
    if covariance_type == "tied":
        return np.sum(np.log(np.diag(precisions_cholesky)))
    if covariance_type == "diag":
        return np.sum(np.log(precisions_cholesky), axis=1)
    return n_features * np.log(precisions_cholesky)


class Workspace:
    """Scratch buffers reused from one block of rows to the next.

    Worker processes of ``distributed`` run with ``MALLOC_TRIM_THRESHOLD_`` set, which
    makes glibc map and page-fault every temporary over 128 KiB afresh: allocating the
    temporaries of each block anew is then several times slower than the arithmetic.
    ``ws(name, shape)`` returns a contiguous float64 array, reusing the memory of the
    previous request of that name.
    """

    def __init__(self):
        self._buffers = {}

    def __call__(self, name, shape):
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.size < size:
            buf = self._buffers[name] = np.empty(size)
        return buf[:size].reshape(shape)


def _mahalanobis_full(X, means, precisions_cholesky, ws):
    # One matrix product for all components: X @ [P_1 | P_2 | ... | P_k].
    n_components, n_features, _ = precisions_cholesky.shape
    W = np.ascontiguousarray(precisions_cholesky.transpose(1, 0, 2)).reshape(n_features, -1)
    b = np.einsum("kd,kde->ke", means, precisions_cholesky).reshape(-1)
    Y = ws("Y", (X.shape[0], n_components * n_features))
    np.matmul(X, W, out=Y)
    Y -= b
    Y3 = Y.reshape(X.shape[0], n_components, n_features)
    return np.einsum("nkd,nkd->nk", Y3, Y3, out=ws("mahalanobis", (X.shape[0], n_components)))


def _mahalanobis_tied(X, means, precisions_cholesky, ws):
    n_components, n_features = means.shape
    Y = np.matmul(X, precisions_cholesky, out=ws("Y", X.shape))
    mb = means @ precisions_cholesky
    D = ws("D", (X.shape[0], n_components, n_features))
    np.subtract(Y[:, None, :], mb[None, :, :], out=D)
    return np.einsum("nkd,nkd->nk", D, D, out=ws("mahalanobis", (X.shape[0], n_components)))


def _centred_squares(X, means, ws):
    """(x_i - mu_k)**2 in a (n_components, n_features, n_rows) buffer ``ws('D2')``.

    Kept for the statistics of the same block: diag and spherical moments reuse it.
    """
    n_components, n_features = means.shape
    D2 = ws("D2", (n_components, n_features, X.shape[0]))
    XT = ws("XT", (n_features, X.shape[0]))
    np.copyto(XT, X.T)
    np.subtract(XT[None, :, :], means[:, :, None], out=D2)
    np.multiply(D2, D2, out=D2)
    return D2


def _weighted_squares(D2, weights, ws):
    """sum_d weights[k, d] * D2[k, d, n] as an (n, n_components) array."""
    n_components, _, n = D2.shape
    outT = ws("mahalanobisT", (n_components, n))
    for k in range(n_components):
        np.dot(weights[k], D2[k], out=outT[k])
    out = ws("mahalanobis", (n, n_components))
    np.copyto(out, outT.T)
    return out


def _mahalanobis_diag(X, means, precisions_cholesky, ws):
    return _weighted_squares(_centred_squares(X, means, ws), precisions_cholesky**2, ws)


def _mahalanobis_spherical(X, means, precisions_cholesky, ws):
    precisions = np.repeat((precisions_cholesky**2)[:, None], means.shape[1], axis=1)
    return _weighted_squares(_centred_squares(X, means, ws), precisions, ws)


_MAHALANOBIS = {
    "full": _mahalanobis_full,
    "tied": _mahalanobis_tied,
    "diag": _mahalanobis_diag,
    "spherical": _mahalanobis_spherical,
}


def estimate_weighted_log_prob(X, params: Params, ws=None):
    """log p(x_i | k) + log w_k for shifted rows ``X``; shape (n_samples, n_components).

    With a :class:`Workspace`, the result lives in it (valid until its next use).
    """
    ws = Workspace() if ws is None else ws
    n_features = X.shape[1]
    log_det = log_det_cholesky(params.precisions_cholesky, params.covariance_type, n_features)
    const = log_det - 0.5 * n_features * math.log(2 * math.pi) + np.log(params.weights)
    out = _MAHALANOBIS[params.covariance_type](X, params.means, params.precisions_cholesky, ws)
    out *= -0.5
    out += const
    return out


# exp() below this stays a normal float: subnormal results make arithmetic ~100x slower,
# and terms this small (< 1e-304 of the largest) do not change a float64 sum.
_LOG_TINY = -700.0
# Responsibilities below exp(-460) ~ 1e-200 are set to 0 before the statistics, so that no
# product of a responsibility and a difference of data values can become subnormal.
_LOG_RESP_ZERO = -460.0


def log_prob_resp(weighted_log_prob, ws=None):
    """Row-wise logsumexp and log-responsibilities.

    Returns ``log_norm`` (n_samples,) and ``log_resp`` (n_samples, n_components); without
    a workspace ``weighted_log_prob`` is left unchanged, with one it becomes ``log_resp``.
    """
    n_samples = weighted_log_prob.shape[0]
    if ws is None:
        ws, log_resp = Workspace(), weighted_log_prob.copy()
    else:
        log_resp = weighted_log_prob
    amax = np.max(log_resp, axis=1, out=ws("amax", (n_samples,)))
    amax[~np.isfinite(amax)] = 0.0
    log_resp -= amax[:, None]
    np.maximum(log_resp, _LOG_TINY, out=log_resp)
    expd = np.exp(log_resp, out=ws("exp", log_resp.shape))
    log_norm = np.sum(expd, axis=1, out=ws("log_norm", (n_samples,)))
    with np.errstate(divide="ignore"):
        np.log(log_norm, out=log_norm)
    log_resp -= log_norm[:, None]
    log_norm += amax
    return log_norm, log_resp


###############################################################################
# Per-chunk statistics (the E-step of one data pass)


def _second_moment_full(X, resp, means, ws, squares=None):
    # Features-by-rows layout: each product is (d x B) @ (B x d) over contiguous rows.
    n_components, n_features = means.shape
    n = X.shape[0]
    s2 = np.empty((n_components, n_features, n_features))
    XT = ws("XT", (n_features, n))
    np.copyto(XT, X.T)
    respT = ws("respT", (n_components, n))
    np.copyto(respT, resp.T)
    diff = ws("diff", (n_features, n))
    weighted = ws("weighted", (n_features, n))
    for k in range(n_components):
        np.subtract(XT, means[k][:, None], out=diff)
        np.multiply(diff, respT[k], out=weighted)
        np.matmul(diff, weighted.T, out=s2[k])
    return s2


def _second_moment_diag(X, resp, means, ws, squares=None):
    """sum_i r_ik (x_i - mu_k)**2; ``squares``: those squares if the E-step made them."""
    D2 = _centred_squares(X, means, ws) if squares is None else squares
    n_components, n_features, n = D2.shape
    respT = ws("respT", (n_components, n))
    np.copyto(respT, resp.T)
    s2 = np.empty((n_components, n_features))
    for k in range(n_components):
        np.dot(D2[k], respT[k], out=s2[k])
    return s2


_SECOND_MOMENT = {
    "full": _second_moment_full,
    "tied": _second_moment_full,
    "diag": _second_moment_diag,
    "spherical": _second_moment_diag,
}


def empty_stats(params: Params, n_features: int) -> Stats:
    k = params.n_components
    shape = (k, n_features, n_features) if params.covariance_type in ("full", "tied") else (
        k, n_features)
    return Stats(np.zeros(k), np.zeros((k, n_features)), np.zeros(shape), 0.0, 0)


def stats_from_resp(X, resp, params: Params, log_likelihood: float, ws=None,
                    squares=None) -> Stats:
    """Statistics of shifted rows ``X`` under responsibilities ``resp``.

    All second moments are centred on ``params.means`` (the current means).
    """
    ws = Workspace() if ws is None else ws
    s2 = _SECOND_MOMENT[params.covariance_type](X, resp, params.means, ws, squares)
    return Stats(resp.sum(axis=0), resp.T @ X, s2, float(log_likelihood), X.shape[0])


def _block_rows(n_features, widest):
    return max(256, _BLOCK_BYTES // (8 * max(n_features, widest)))


def _blocks(X, candidates):
    """Sub-blocks of rows of a chunk, sized to keep temporaries in cache."""
    widest = max(p.n_components * X.shape[1] for p in candidates)
    step = _block_rows(X.shape[1], widest)
    for start in range(0, X.shape[0], step):
        yield start, X[start : start + step]


def chunk_stats(X, candidates: list[Params]) -> list[Stats]:
    """E-step of every candidate on one chunk of (unshifted) rows, with statistics.

    The chunk is processed in sub-blocks of rows sized to keep temporaries in cache.
    Returns one ``Stats`` per candidate; a non-finite ``log_likelihood`` means the
    chunk holds NaN or infinite values (the caller locates them).
    """
    X = np.asarray(X, dtype=np.float64)
    n_samples, n_features = X.shape
    out = [empty_stats(p, n_features) for p in candidates]
    ws = Workspace()
    for _, block in _blocks(X, candidates):
        shifted = {}
        for i, p in enumerate(candidates):
            key = p.shift.tobytes()
            if key not in shifted:
                shifted[key] = np.subtract(block, p.shift, out=ws(f"xs{len(shifted)}", block.shape))
            xs = shifted[key]
            log_norm, log_resp = log_prob_resp(estimate_weighted_log_prob(xs, p, ws), ws)
            negligible = log_resp < _LOG_RESP_ZERO
            resp = np.exp(log_resp, out=log_resp)
            resp[negligible] = 0.0
            squares = ws("D2", (p.n_components, n_features, xs.shape[0])) if (
                p.covariance_type in ("diag", "spherical")) else None  # from the E-step
            out[i] = out[i] + stats_from_resp(xs, resp, p, log_norm.sum(), ws, squares)
    return out


def _e_steps(X, params: Params):
    """The E-step of one model on (unshifted) float64 rows, block by block: yields
    ``(rows, log_norm, log_resp)`` with ``rows`` the block's slice of ``X`` (the arrays
    are workspace buffers, valid until the next block)."""
    ws = Workspace()
    for start, block in _blocks(X, [params]):
        xs = np.subtract(block, params.shift, out=ws("xs", block.shape))
        log_norm, log_resp = log_prob_resp(estimate_weighted_log_prob(xs, params, ws), ws)
        yield slice(start, start + block.shape[0]), log_norm, log_resp


def score_chunk(X, params: Params, what):
    """Per-row results of one model on a chunk of (unshifted) rows, block by block.

    ``what``: 'score_samples' (log-density, float64), 'predict' (int64 component) or
    'predict_proba' (float64, (n_samples, n_components)).
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    if what == "predict_proba":
        out = np.empty((n, params.n_components))
    else:
        out = np.empty(n, dtype=np.int64 if what == "predict" else np.float64)
    for rows, log_norm, log_resp in _e_steps(X, params):
        if what == "score_samples":
            out[rows] = log_norm
        elif what == "predict":
            out[rows] = log_resp.argmax(axis=1)
        else:
            np.exp(log_resp, out=out[rows])
    return out


# Per-row anomaly scores: one record per row (see :func:`score_rows`).
SCORE_DTYPE = np.dtype([
    ("log_density", np.float64),
    ("anomaly_score", np.float64),
    ("component", np.int32),
    ("responsibility", np.float64),
    ("is_anomaly", np.bool_),
])


def score_rows(X, params: Params, threshold: float):
    """Anomaly scores of a chunk of (unshifted) rows under one model, block by block.

    Returns a structured array of ``SCORE_DTYPE``: log-density (``score_samples``), the
    anomaly score (its negative), the most probable component (``predict``), that
    component's responsibility (the row's maximum of ``predict_proba``) and
    ``is_anomaly = log_density < threshold``.
    """
    X = np.asarray(X, dtype=np.float64)
    out = np.empty(X.shape[0], dtype=SCORE_DTYPE)
    for rows, log_norm, log_resp in _e_steps(X, params):
        rec = out[rows]
        rec["log_density"] = log_norm
        rec["anomaly_score"] = -log_norm
        rec["component"] = log_resp.argmax(axis=1)
        rec["responsibility"] = np.exp(log_resp.max(axis=1))
        rec["is_anomaly"] = log_norm < threshold
    return out


def chunk_log_likelihood(X, candidates: list[Params]) -> list[Stats]:
    """Only the log-likelihood (and row count) of every candidate on a chunk of rows.

    A non-finite ``log_likelihood`` means the chunk holds NaN or infinite values.
    """
    X = np.asarray(X, dtype=np.float64)
    totals = [0.0] * len(candidates)
    ws = Workspace()
    for _, block in _blocks(X, candidates):
        for i, p in enumerate(candidates):
            xs = np.subtract(block, p.shift, out=ws("xs", block.shape))
            log_norm, _ = log_prob_resp(estimate_weighted_log_prob(xs, p, ws), ws)
            totals[i] += log_norm.sum()
    return [
        Stats(s.nk, s.s1, s.s2, total, X.shape[0])
        for s, total in zip((empty_stats(p, X.shape[1]) for p in candidates), totals,
                            strict=True)
    ]


def responsibility_stats(X, params: Params, resp_fn) -> Stats:
    """Statistics of a chunk of (unshifted) rows under given responsibilities.

    ``resp_fn(shifted_block, block_start)`` returns the responsibilities of one block of
    rows; blocks are cache-sized, so no temporary grows with the chunk.
    """
    X = np.asarray(X, dtype=np.float64)
    out = empty_stats(params, X.shape[1])
    ws = Workspace()
    for start, block in _blocks(X, [params]):
        xs = np.subtract(block, params.shift, out=ws("xs", block.shape))
        out = out + stats_from_resp(xs, resp_fn(xs, start), params, 0.0, ws)
    return out


def hard_assignment_stats(X, centers, params: Params) -> Stats:
    """Statistics of rows assigned to their nearest centre (k-means initialisation)."""
    c = centers - params.shift
    c2 = (c * c).sum(axis=1)

    def nearest(xs, start):
        d2 = c2 - 2.0 * (xs @ c.T)  # + |x|^2, the same for every centre
        resp = np.zeros(d2.shape)
        resp[np.arange(xs.shape[0]), d2.argmin(axis=1)] = 1.0
        return resp

    return responsibility_stats(X, params, nearest)


###############################################################################
# M-step


class CovarianceError(ValueError):
    """A covariance matrix is not positive definite."""


def precision_error_message(component=None, covariance_type="full"):
    where = (
        f" (covariance_type={covariance_type!r})" if component is None
        else f" (component {component}, covariance_type={covariance_type!r})"
    )
    return (
        "Fitting the mixture model failed because some components have ill-defined "
        f"empirical covariance{where} (for instance caused by singleton or collapsed "
        "samples). Try to decrease the number of components, increase reg_covar, or "
        "scale the input data."
    )


def compute_precision_cholesky(covariances, covariance_type):
    """Cholesky factor of the precision from covariances (scikit-learn's convention)."""
    if covariance_type in ("full", "tied"):
        covs = covariances if covariance_type == "full" else covariances[None]
        n_features = covs.shape[-1]
        out = np.empty_like(covs)
        eye = np.eye(n_features)
        for k, cov in enumerate(covs):
            try:
                cov_chol = linalg.cholesky(cov, lower=True)
            except linalg.LinAlgError:
                raise CovarianceError(
                    precision_error_message(k, covariance_type) if covariance_type == "full"
                    else precision_error_message(None, covariance_type)
                ) from None
            out[k] = linalg.solve_triangular(cov_chol, eye, lower=True).T
        return out if covariance_type == "full" else out[0]
    if np.any(covariances <= 0.0):
        bad = int(np.flatnonzero(np.ravel(covariances <= 0.0))[0])
        if covariances.ndim == 2:
            bad //= covariances.shape[1]
        raise CovarianceError(precision_error_message(bad, covariance_type))
    return 1.0 / np.sqrt(covariances)


def precision_cholesky_from_precisions(precisions, covariance_type):
    """Upper-triangular U with precision = U U^T (scikit-learn's convention)."""
    if covariance_type == "full":
        return np.stack([_flip(linalg.cholesky(_flip(p), lower=True)) for p in precisions])
    if covariance_type == "tied":
        return _flip(linalg.cholesky(_flip(precisions), lower=True))
    return np.sqrt(precisions)


def _flip(a):
    return a[::-1, ::-1]


def precisions_from_cholesky(precisions_cholesky, covariance_type):
    if covariance_type == "full":
        return precisions_cholesky @ precisions_cholesky.transpose(0, 2, 1)
    if covariance_type == "tied":
        return precisions_cholesky @ precisions_cholesky.T
    return precisions_cholesky**2


def _add_to_diagonal(a, value):
    n = a.shape[-1]
    a.reshape(a.shape[:-2] + (n * n,))[..., :: n + 1] += value
    return a


def _scatter_full(stats, means, current_means):
    # s2 is centred on the current means; shift it to the new means:
    # sum r (x-m)(x-m)^T = s2 - a d^T - d a^T + N d d^T with a = sum r (x-mu), d = m - mu.
    n = stats.nk
    a = stats.s1 - n[:, None] * current_means
    d = means - current_means
    outer_ad = a[:, :, None] * d[:, None, :]
    return (
        stats.s2
        - outer_ad
        - outer_ad.transpose(0, 2, 1)
        + n[:, None, None] * d[:, :, None] * d[:, None, :]
    )


def _covariances_full(stats, nk, means, current_means, reg_covar):
    cov = _scatter_full(stats, means, current_means)
    cov /= nk[:, None, None]
    return _add_to_diagonal(cov, reg_covar)


def _covariances_tied(stats, nk, means, current_means, reg_covar):
    cov = _scatter_full(stats, means, current_means).sum(axis=0)
    cov /= nk.sum()
    return _add_to_diagonal(cov, reg_covar)


def _covariances_diag(stats, nk, means, current_means, reg_covar):
    # s2 = sum r (x - mu)**2 per feature, centred on the current means (as for 'full').
    n = stats.nk[:, None]
    a = stats.s1 - n * current_means
    d = means - current_means
    return (stats.s2 - 2.0 * a * d + n * d * d) / nk[:, None] + reg_covar


def _covariances_spherical(stats, nk, means, current_means, reg_covar):
    return _covariances_diag(stats, nk, means, current_means, reg_covar).mean(axis=1)


_COVARIANCES = {
    "full": _covariances_full,
    "tied": _covariances_tied,
    "diag": _covariances_diag,
    "spherical": _covariances_spherical,
}


def estimate_gaussian_parameters(stats: Stats, current_means, covariance_type, reg_covar):
    """nk (with scikit-learn's 10*eps guard), means and covariances from statistics.

    ``current_means`` are the means the statistics were centred on ('full' only).
    """
    nk = stats.nk + 10 * np.finfo(np.float64).eps
    means = stats.s1 / nk[:, None]
    covariances = _COVARIANCES[covariance_type](stats, nk, means, current_means, reg_covar)
    return nk, means, covariances


def m_step(stats: Stats, params: Params, reg_covar: float) -> Params:
    """New parameters from the statistics gathered under ``params``."""
    nk, means, covariances = estimate_gaussian_parameters(
        stats, params.means, params.covariance_type, reg_covar
    )
    return Params(
        params.covariance_type,
        nk / nk.sum(),
        means,
        compute_precision_cholesky(covariances, params.covariance_type),
        covariances,
        params.shift,
    )


def n_parameters(n_components, n_features, covariance_type):
    """Number of free parameters, counted as scikit-learn does."""
    cov_params = {
        "full": n_components * n_features * (n_features + 1) / 2.0,
        "diag": n_components * n_features,
        "tied": n_features * (n_features + 1) / 2.0,
        "spherical": n_components,
    }[covariance_type]
    return int(cov_params + n_features * n_components + n_components - 1)


def find_nonfinite(X):
    """(row, column) of the first NaN or infinite value in ``X``, or None."""
    bad = ~np.isfinite(np.asarray(X, dtype=np.float64))
    if not bad.any():
        return None
    row, col = np.argwhere(bad)[0]
    return int(row), int(col)
