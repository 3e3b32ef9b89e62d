"""The compiled kernels (numba): the one-pass E-step of the variance types ('diag',
'spherical'), and the marginal E-step of rows with missing values under the matrix types
('full', 'tied'; at the end of this module).

The numpy path (:func:`daskgmm.kernels.chunk_stats` with :func:`._base.centred_squares`,
:func:`._base.weighted_squares`, :func:`daskgmm.kernels.log_prob_resp` and
:func:`._base.squares_statistic`) makes several passes over each block of rows. Here
each tile of rows is read once: for every row, the squared Mahalanobis distance to
every component, ``sum_j ((x_j - mu_kj) * p_kj)**2`` (each mean subtracted before
squaring: exact centring; each difference whitened before squaring: no spurious
overflow, as :func:`._base.refine_overflowed` gives), the log-sum-exp over components,
the responsibilities, and their sums ``nk``, ``s1 = sum r x`` and ``s2 = sum r (x -
mu)**2`` (centred on the current means). The conventions are those of the numpy path,
which stays the reference the tests compare against:

* a term ``log p_k - max`` is clipped at ``_LOG_TINY`` (-700); a responsibility below
  ``exp(_LOG_RESP_ZERO)`` (~1e-200) counts as 0 in the statistics;
* a row whose density underflows float64 under every component has log-density -inf
  and equal responsibilities; a row holding NaN has NaN log-density, responsibilities
  and statistics (the caller locates it);
* a row adds nothing to a component whose responsibility is 0, even when its distance
  to that mean overflows (as :func:`._base.refine_statistic` gives).

The results differ from the numpy path only by the order of rounding (sums over
features, components and rows are taken in another order). Terms ``exp(log p_k -
max) < exp(-50)`` (~2e-22) are left out of the log-sum-exp: they change it by less than
its rounding. Every function is compiled once per process (``cache=True`` keeps the
machine code on disk) and releases the GIL, so Dask's threads run chunks in parallel.

Importing this module imports numba; :func:`._base.fused_module` imports it only when
numba is installed and ``DASKGMM_KERNELS`` is not ``numpy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

# The numpy path's conventions (daskgmm.kernels._LOG_TINY, _LOG_RESP_ZERO).
_LOG_TINY = -700.0
_LOG_RESP_ZERO = -460.0
# exp() of a term below this adds less than a rounding error to a sum that holds 1.
_LOG_NEGLIGIBLE = -50.0
# Rows per tile: the tile's temporaries (n_components + 2 * n_features doubles a row)
# stay in the L1/L2 cache.
_TILE = 256

_jit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")


@_jit
def _tile_distances(X, start, n_rows, shift, means, factors, xs, xt, dist):
    """Shifted rows ``start:start + n_rows`` of ``X`` in ``xs`` (rows x features) and
    ``xt`` (features x rows); their squared distances in ``dist`` (components x rows)."""
    n_features = X.shape[1]
    for i in range(n_rows):
        for j in range(n_features):
            v = X[start + i, j] - shift[j]
            xs[i, j] = v
            xt[j, i] = v
    for c in range(means.shape[0]):
        for i in range(n_rows):
            dist[c, i] = 0.0
        for j in range(n_features):
            mu = means[c, j]
            p = factors[c, j]
            for i in range(n_rows):
                t = (xt[j, i] - mu) * p
                dist[c, i] += t * t


@_jit
def _log_resp(dist, i, const, log_resp, terms):
    """Log-responsibilities of row ``i`` (from its squared distances ``dist[:, i]``) in
    ``log_resp``, and ``terms[c] = exp(log p_c - max)`` where it is above
    ``exp(_LOG_NEGLIGIBLE)`` (0 elsewhere); returns the row's log-density and the sum of
    ``terms``."""
    n_components = const.shape[0]
    amax = -np.inf
    for c in range(n_components):
        v = dist[c, i] * -0.5 + const[c]
        log_resp[c] = v
        if v != v:  # NaN in the row
            for c2 in range(n_components):
                log_resp[c2] = np.nan
                terms[c2] = np.nan
            return np.nan, np.nan
        if v > amax:
            amax = v
    if amax == -np.inf:  # the density underflows under every component
        total = 0.0
        for _ in range(n_components):
            total += math.exp(_LOG_TINY)
        log_total = math.log(total)
        for c in range(n_components):
            log_resp[c] = _LOG_TINY - log_total
            terms[c] = 0.0
        return -np.inf, total
    total = 0.0
    for c in range(n_components):
        t = log_resp[c] - amax
        log_resp[c] = t
        if t == 0.0:
            e = 1.0
        elif t > _LOG_NEGLIGIBLE:
            e = math.exp(t)
        else:
            e = 0.0
        terms[c] = e
        total += e
    log_total = math.log(total)
    for c in range(n_components):
        log_resp[c] = max(log_resp[c], _LOG_TINY) - log_total
    return log_total + amax, total


@_jit
def _responsibility(log_resp, terms, total, c):
    """Row's responsibility of component ``c`` from :func:`_log_resp`'s results:
    ``terms[c] / total`` (= exp(log_resp[c]) up to rounding, without another exp)."""
    if terms[c] > 0.0:
        return terms[c] / total
    return math.exp(log_resp[c])


# Sums of rows in any order (the vector loop keeps one partial sum per lane): only
# reassociation, which changes how the sums round; no other fast-math flag (NaN and inf
# keep their meaning).
@numba.njit(cache=True, nogil=True, fastmath={"reassoc"}, error_model="numpy")
def _moments(r, x, mu, n_rows):
    """``sum_i r_i``, ``sum_i r_i x_i`` and ``sum_i r_i (x_i - mu)**2`` over ``n_rows``
    rows."""
    total = first = second = 0.0
    for i in range(n_rows):
        d = x[i] - mu
        total += r[i]
        first += r[i] * x[i]
        second += r[i] * (d * d)
    return total, first, second


@_jit
def _add_tile_stats(resp, xt, means, n_rows, nk, s1, s2):
    """Adds sum_i r_ci, sum_i r_ci x_ji and sum_i r_ci (x_ji - mu_cj)**2 over the tile's
    rows (``resp`` components x rows, ``xt`` features x rows) to ``nk``, ``s1``, ``s2``.
    A row whose responsibility is 0 adds 0, even when its distance to the mean
    overflows (the vector loop makes NaN of 0 * inf: such a sum is taken again)."""
    n_components, n_features = means.shape
    for c in range(n_components):
        r = resp[c]
        for j in range(n_features):
            x = xt[j]
            mu = means[c, j]
            total, first, second = _moments(r, x, mu, n_rows)
            if second != second:
                second = 0.0
                for i in range(n_rows):
                    if r[i] != 0.0:
                        d = x[i] - mu
                        second += r[i] * (d * d)
            s1[c, j] += first
            s2[c, j] += second
        nk[c] += total


@_jit
def _tile_buffers(n_features, n_components):
    """Scratch of one tile: its rows (rows x features and features x rows), their
    distances (components x rows), and one row's log-responsibilities and terms."""
    return (np.empty((_TILE, n_features)), np.empty((n_features, _TILE)),
            np.empty((n_components, _TILE)), np.empty(n_components), np.empty(n_components))


@_jit
def _stats(X, weights, shift, means, factors, const, nk, s1, s2):
    """Adds the statistics of the rows of ``X`` to ``nk``, ``s1``, ``s2``; returns the
    sum of their log-densities. With ``weights`` (not empty) each row's responsibilities
    and log-density are multiplied by its weight (a row of weight 0 adds nothing, even
    when its density underflows). Sums run per tile, then across tiles."""
    n_samples, n_features = X.shape
    n_components = means.shape[0]
    xs, xt, dist, log_resp, terms = _tile_buffers(n_features, n_components)
    resp = np.empty((n_components, _TILE))
    weighted = weights.shape[0] > 0
    log_likelihood = 0.0
    for start in range(0, n_samples, _TILE):
        n_rows = min(_TILE, n_samples - start)
        _tile_distances(X, start, n_rows, shift, means, factors, xs, xt, dist)
        tile_log_likelihood = 0.0
        for i in range(n_rows):
            log_density, total = _log_resp(dist, i, const, log_resp, terms)
            w = weights[start + i] if weighted else 1.0
            if not weighted:
                tile_log_likelihood += log_density
            elif w > 0.0:
                tile_log_likelihood += w * log_density
            for c in range(n_components):
                if log_resp[c] < _LOG_RESP_ZERO:
                    resp[c, i] = 0.0  # (NaN goes on, and spoils the sums)
                elif weighted:
                    resp[c, i] = _responsibility(log_resp, terms, total, c) * w
                else:
                    resp[c, i] = _responsibility(log_resp, terms, total, c)
        _add_tile_stats(resp, xt, means, n_rows, nk, s1, s2)
        log_likelihood += tile_log_likelihood
    return log_likelihood


@_jit
def _scores(X, shift, means, factors, const, log_norm, component, responsibility, proba):
    """Per row: log-density, most probable component and its responsibility; with a
    non-empty ``proba`` (rows x components) every responsibility."""
    n_samples, n_features = X.shape
    n_components = means.shape[0]
    xs, xt, dist, log_resp, terms = _tile_buffers(n_features, n_components)
    with_proba = proba.shape[0] > 0
    for start in range(0, n_samples, _TILE):
        n_rows = min(_TILE, n_samples - start)
        _tile_distances(X, start, n_rows, shift, means, factors, xs, xt, dist)
        for i in range(n_rows):
            row = start + i
            log_norm[row], total = _log_resp(dist, i, const, log_resp, terms)
            best = 0  # the first maximum (a NaN row: 0, as numpy's argmax)
            for c in range(1, n_components):
                if log_resp[c] > log_resp[best]:
                    best = c
            component[row] = best
            responsibility[row] = _responsibility(log_resp, terms, total, best)
            if with_proba:
                for c in range(n_components):
                    proba[row, c] = _responsibility(log_resp, terms, total, c)


@dataclass(frozen=True)
class OnePass:
    """The compiled E-step of one model with variances ('diag', 'spherical').

    ``factors`` (n_components, n_features) are the precision factors 1 / std per feature
    (a 'spherical' model's repeated); ``const`` is log w_k + log det of the factor -
    d/2 log(2 pi). Rows given to the methods are unshifted (the engine's ``shift`` is
    subtracted here, as in :func:`daskgmm.kernels.chunk_stats`).
    """

    shift: np.ndarray
    means: np.ndarray
    factors: np.ndarray
    const: np.ndarray

    def stats(self, X, weights=None):
        """``(nk, s1, s2, log_likelihood)`` of the rows ``X``, as
        :func:`daskgmm.kernels.chunk_stats` gathers them; ``weights``: the rows' sample
        weights (None: all 1). float32 rows are read as they are (numba compiles a
        float32 reader) and computed in float64, as float64 rows."""
        X = np.ascontiguousarray(X, dtype=np.float32 if X.dtype == np.float32 else np.float64)
        weights = np.empty(0) if weights is None else np.ascontiguousarray(
            weights, dtype=np.float64)
        n_components, n_features = self.means.shape
        nk = np.zeros(n_components)
        s1 = np.zeros((n_components, n_features))
        s2 = np.zeros((n_components, n_features))
        log_likelihood = _stats(X, weights, self.shift, self.means, self.factors, self.const,
                                nk, s1, s2)
        return nk, s1, s2, float(log_likelihood)

    def rows(self, X, proba=False):
        """Per row: ``(log_density, component, responsibility)`` (the most probable
        component, int64, and its responsibility), and with ``proba`` every
        responsibility (n_samples, n_components) after them."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        n = X.shape[0]
        out = (np.empty(n), np.empty(n, dtype=np.int64), np.empty(n),
               np.empty((n if proba else 0, self.means.shape[0])))
        _scores(X, self.shift, self.means, self.factors, self.const, *out)
        return out if proba else out[:3]

    def score(self, X, what):
        """As :func:`daskgmm.kernels.score_chunk`: 'score_samples' (log-density),
        'predict' (component) or 'predict_proba' (responsibilities)."""
        if what == "predict_proba":
            return self.rows(X, proba=True)[3]
        log_density, component, _ = self.rows(X)
        return component if what == "predict" else log_density


###############################################################################
# Rows with missing values under matrix covariances ('full', 'tied')
#
# The numpy path is :mod:`daskgmm.missing` (its per-pattern class), the reference. Here
# the rows, grouped by their pattern of missing features (``order``, ``starts``), go
# through one compiled loop: per pattern, each component's observed covariance block is
# factorised once (Cholesky), with B = L^-1 S_om and the conditional covariance
# S_mm - B^T B; per row, each component's whitened observed part z = L^-1 (x_o - mu_o)
# gives the marginal log-density, and the statistics of the row completed by
# mu_m + B^T z, the conditional covariances added once per pattern. Numpy's overhead per
# pattern (a few dozen calls) is what made thousands of patterns per chunk slow.

_LOG_2PI = math.log(2.0 * math.pi)


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")  # per row: no call
def _log_normalise(w):
    """One row's weighted log-probabilities ``w`` (per component) become, in place, its
    log-responsibilities (each term clipped at ``_LOG_TINY`` below the largest, as the
    numpy path); returns the row's log-density (-inf when every term is -inf)."""
    amax = -np.inf
    for c in range(w.shape[0]):
        if w[c] > amax:
            amax = w[c]
    underflow = amax == -np.inf
    if not math.isfinite(amax):
        amax = 0.0
    total = 0.0
    for c in range(w.shape[0]):
        w[c] = max(w[c] - amax, _LOG_TINY)
        total += math.exp(w[c])
    log_s = math.log(total)
    for c in range(w.shape[0]):
        w[c] -= log_s
    return -np.inf if underflow else amax + log_s


@_jit
def _cholesky_into(a, n, out):
    """The lower Cholesky factor of ``a[:n, :n]`` in ``out[:n, :n]``; False when ``a`` is
    not positive definite."""
    for j in range(n):
        s = a[j, j]
        for p in range(j):
            s -= out[j, p] * out[j, p]
        if not s > 0.0:
            return False
        d = math.sqrt(s)
        out[j, j] = d
        for i in range(j + 1, n):
            t = a[i, j]
            for p in range(j):
                t -= out[i, p] * out[j, p]
            out[i, j] = t / d
    return True


@_jit
def _marginal(X, order, starts, means, covs, log_weights, weights, want_stats,
              log_norm, log_resp, nk, s1, s2):
    """The marginal E-step of rows ``X`` (shifted, NaN where missing; rows
    ``order[starts[g]:starts[g + 1]]`` share a pattern). Fills ``log_norm`` and (when not
    empty) ``log_resp``; with ``want_stats`` adds the expected statistics to ``nk``,
    ``s1``, ``s2`` (``weights``, when not empty, multiply the responsibilities).
    Returns ``(component, log_likelihood)``: component -1, or the first whose observed
    covariance block is not positive definite (nothing is then complete).

    A pattern's rows go by tiles of ``_TILE``, features by rows: the innermost loops run
    over the tile's rows (contiguous, vectorised)."""
    n_features = X.shape[1]
    n_components = means.shape[0]
    obs = np.empty(n_features, np.int64)
    mis = np.empty(n_features, np.int64)
    chol = np.empty((n_components, n_features, n_features))
    gain = np.empty((n_components, n_features, n_features))
    cond = np.empty((n_components, n_features, n_features))
    sub = np.empty((n_features, n_features))
    const = np.empty(n_components)
    xo = np.empty((n_features, _TILE))
    z = np.empty((n_components, n_features, _TILE))
    wlp = np.empty((n_components, _TILE))
    diff = np.empty((n_features, _TILE))
    rt = np.empty(_TILE)
    rsum = np.empty(n_components)
    weighted = weights.shape[0] > 0
    with_resp = log_resp.shape[0] > 0
    total = 0.0
    for g in range(starts.shape[0] - 1):
        first = order[starts[g]]
        no = 0
        nm = 0
        for j in range(n_features):
            if np.isnan(X[first, j]):
                mis[nm] = j
                nm += 1
            else:
                obs[no] = j
                no += 1
        for c in range(n_components):
            for a in range(no):
                for b in range(no):
                    sub[a, b] = covs[c, obs[a], obs[b]]
            if not _cholesky_into(sub, no, chol[c]):
                return c, 0.0
            half_log_det = 0.0
            for a in range(no):
                half_log_det -= math.log(chol[c, a, a])
            const[c] = log_weights[c] + half_log_det - 0.5 * no * _LOG_2PI
            for b in range(nm):  # B = L^-1 S_om, column by column
                for a in range(no):
                    t = covs[c, obs[a], mis[b]]
                    for p in range(a):
                        t -= chol[c, a, p] * gain[c, p, b]
                    gain[c, a, b] = t / chol[c, a, a]
            for a in range(nm):  # S_mm - B^T B
                for b in range(nm):
                    t = covs[c, mis[a], mis[b]]
                    for p in range(no):
                        t -= gain[c, p, a] * gain[c, p, b]
                    cond[c, a, b] = t
            rsum[c] = 0.0
        for tile in range(starts[g], starts[g + 1], _TILE):
            nt = min(_TILE, starts[g + 1] - tile)
            for a in range(no):
                for t in range(nt):
                    xo[a, t] = X[order[tile + t], obs[a]]
            for c in range(n_components):
                for a in range(no):  # z = L^-1 (x_o - mu_o), by rows of L
                    mu = means[c, obs[a]]
                    for t in range(nt):
                        z[c, a, t] = xo[a, t] - mu
                    for p in range(a):
                        lap = chol[c, a, p]
                        for t in range(nt):
                            z[c, a, t] -= lap * z[c, p, t]
                    inv = 1.0 / chol[c, a, a]
                    for t in range(nt):
                        z[c, a, t] *= inv
                for t in range(nt):
                    wlp[c, t] = const[c]
                for a in range(no):
                    for t in range(nt):
                        wlp[c, t] -= 0.5 * z[c, a, t] * z[c, a, t]
            for t in range(nt):  # the rows' log-densities and log-responsibilities
                row_norm = _log_normalise(wlp[:, t])
                i = order[tile + t]
                log_norm[i] = row_norm
                if with_resp:
                    for c in range(n_components):
                        log_resp[i, c] = wlp[c, t]
                if want_stats:
                    w = weights[i] if weighted else 1.0
                    if w > 0.0:
                        total += w * row_norm
            if not want_stats:
                continue
            for c in range(n_components):
                r_total = 0.0
                for t in range(nt):
                    w = weights[order[tile + t]] if weighted else 1.0
                    r = 0.0 if wlp[c, t] < _LOG_RESP_ZERO else math.exp(wlp[c, t]) * w
                    rt[t] = r
                    r_total += r
                if r_total == 0.0:
                    continue
                mean = means[c]
                for a in range(no):  # the row completed, less the mean
                    j = obs[a]
                    for t in range(nt):
                        diff[j, t] = xo[a, t] - mean[j]
                for b in range(nm):  # B^T z: the conditional expectation, less the mean
                    j = mis[b]
                    for t in range(nt):
                        diff[j, t] = 0.0
                    for p in range(no):
                        gpb = gain[c, p, b]
                        for t in range(nt):
                            diff[j, t] += gpb * z[c, p, t]
                nk[c] += r_total
                rsum[c] += r_total
                for a in range(n_features):
                    first_moment = 0.0
                    for t in range(nt):
                        first_moment += rt[t] * diff[a, t]
                    s1[c, a] += r_total * mean[a] + first_moment
                    for b in range(a + 1):
                        acc = 0.0
                        for t in range(nt):
                            acc += rt[t] * diff[a, t] * diff[b, t]
                        s2[c, a, b] += acc
        if want_stats:
            for c in range(n_components):
                for a in range(nm):
                    for b in range(a + 1):  # mis is increasing: the lower triangle
                        s2[c, mis[a], mis[b]] += rsum[c] * cond[c, a, b]
    if want_stats:
        for c in range(n_components):
            for a in range(n_features):
                for b in range(a):
                    s2[c, b, a] = s2[c, a, b]
    return -1, total


def marginal(X, order, starts, means, covs, log_weights, weights=None, stats=False,
             resp=True):
    """The compiled marginal E-step of rows ``X`` (see :func:`_marginal`) under ``covs``
    (n_components, d, d). Returns ``(component, log_norm, log_resp, nk, s1, s2,
    log_likelihood)``; ``log_resp`` is empty without ``resp``, the statistics zero
    without ``stats``."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    n, d = X.shape
    k = means.shape[0]
    log_norm = np.empty(n)
    log_resp = np.empty((n if resp else 0, k))
    nk, s1, s2 = np.zeros(k), np.zeros((k, d)), np.zeros((k, d, d))
    weights = np.empty(0) if weights is None else np.ascontiguousarray(weights, np.float64)
    component, total = _marginal(
        X, np.ascontiguousarray(order, np.int64), np.ascontiguousarray(starts, np.int64),
        np.ascontiguousarray(means, np.float64), np.ascontiguousarray(covs, np.float64),
        np.ascontiguousarray(log_weights, np.float64), weights, stats, log_norm, log_resp,
        nk, s1, s2)
    return component, log_norm, log_resp, nk, s1, s2, float(total)


###############################################################################
# Rows with missing values under the variance types ('diag', 'spherical')
#
# The features are independent given the component: a row's marginal density is the
# product over its observed features, and its missing features' conditional
# expectations and variances are the component's mean and variance. The numpy
# reference is :func:`daskgmm.missing._variance_stats` (masked arrays, (rows, k, d)
# temporaries); here one loop over the rows.


@_jit
def _variance_marginal(X, means, factors, log_weights, weights, want_stats, log_norm,
                       log_resp, nk, s1, s2):
    """As :func:`_marginal` for per-feature precision factors ``factors`` (k, d):
    ``sum_j ((x_j - mu_kj) * p_kj)**2`` over the observed features. Returns the
    log-likelihood."""
    n_samples, n_features = X.shape
    n_components = means.shape[0]
    log_factors = np.log(factors)
    variances = 1.0 / (factors * factors)
    wlp = np.empty(n_components)
    x = np.empty(n_features)  # the row, 0 where missing
    seen = np.empty(n_features)  # 1.0 where observed, else 0.0
    weighted = weights.shape[0] > 0
    with_resp = log_resp.shape[0] > 0
    total = 0.0
    for i in range(n_samples):
        n_obs = 0.0
        for j in range(n_features):
            v = X[i, j]
            ok = not np.isnan(v)
            seen[j] = 1.0 if ok else 0.0
            x[j] = v if ok else 0.0
            n_obs += seen[j]
        for c in range(n_components):  # branch-free over the features
            q = 0.0
            log_det = 0.0
            for j in range(n_features):
                t = (x[j] - means[c, j]) * factors[c, j] * seen[j]
                q += t * t
                log_det += log_factors[c, j] * seen[j]
            wlp[c] = log_weights[c] + log_det - 0.5 * n_obs * _LOG_2PI - 0.5 * q
        row_norm = _log_normalise(wlp)
        log_norm[i] = row_norm
        if with_resp:
            for c in range(n_components):
                log_resp[i, c] = wlp[c]
        if not want_stats:
            continue
        w = weights[i] if weighted else 1.0
        if w > 0.0:
            total += w * row_norm
        for c in range(n_components):
            if wlp[c] < _LOG_RESP_ZERO:
                continue
            r = math.exp(wlp[c]) * w
            if r == 0.0:
                continue
            nk[c] += r
            for j in range(n_features):
                d = (x[j] - means[c, j]) * seen[j]  # 0 where missing
                s1[c, j] += r * (means[c, j] + d)
                s2[c, j] += r * (d * d + (1.0 - seen[j]) * variances[c, j])
    return total


def variance_marginal(X, means, factors, log_weights, weights=None, stats=False,
                      resp=True):
    """The compiled marginal E-step of rows ``X`` under per-feature precision factors
    (see :func:`_variance_marginal`). Returns ``(log_norm, log_resp, nk, s1, s2,
    log_likelihood)`` as :func:`marginal` does (without its component)."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    n, d = X.shape
    k = means.shape[0]
    log_norm = np.empty(n)
    log_resp = np.empty((n if resp else 0, k))
    nk, s1, s2 = np.zeros(k), np.zeros((k, d)), np.zeros((k, d))
    weights = np.empty(0) if weights is None else np.ascontiguousarray(weights, np.float64)
    total = _variance_marginal(
        X, np.ascontiguousarray(means, np.float64), np.ascontiguousarray(factors, np.float64),
        np.ascontiguousarray(log_weights, np.float64), weights, stats, log_norm, log_resp,
        nk, s1, s2)
    return log_norm, log_resp, nk, s1, s2, float(total)
