"""Rows with missing values (NaN): the marginal E-step and the expected statistics of
EM for incomplete data (Ghahramani and Jordan, 1994). Pure numpy and scipy.

A row ``x`` with observed features ``o`` and missing features ``m`` has, under
component k, the marginal density of its observed part, N(x_o; mu_o, S_oo): that is
its log-density, and its responsibilities follow from it. Its statistics are those of
the row completed by the component's conditional expectation

    x_hat_m = mu_m + S_mo S_oo^-1 (x_o - mu_o),

plus, in the second moments, the conditional covariance of the missing part,
``S_mm - S_mo S_oo^-1 S_om``. So ``s1`` and ``s2`` keep their meaning
(:class:`daskgmm.kernels.Stats`) and the M-step is unchanged.

Cost. For 'full' and 'tied', rows are grouped by their pattern of missing features; a
pattern's observed covariance blocks are factorised once per chunk (one Cholesky of
d_o x d_o per component), then its rows are whitened as complete rows are. A chunk
costs ``patterns x k x O(d^3)`` on top of the per-row work. The compiled kernel
(:func:`daskgmm.covariance.compiled.marginal`, when numba is there and
``DASKGMM_KERNELS`` is not 'numpy') runs the whole loop at a few microseconds per
pattern; the numpy path here, the reference, spends a few dozen numpy calls per pattern
(about a millisecond), which dominates when a chunk holds thousands of patterns (16
features with 10% missing entries: ~4,000 per 125,000 rows). For 'diag' and 'spherical'
the features are independent given the component: no factorisation and no grouping,
the observed features' terms are masked in place.

Rows are in the engine's shifted coordinates, NaN where a feature is missing; every
row here has at least one NaN and at least one observed feature (the callers split the
complete rows off and refuse rows missing everything).
"""

from __future__ import annotations

import math

import numpy as np

from .covariance import CovarianceError, fused_module, ill_defined_message

_LOG_2PI = math.log(2 * math.pi)
# Rows of one block of a pattern: (block, k, d) temporaries stay within ~2 MiB.
_BLOCK_FLOATS = 2**18


def _log_resp(weighted_log_prob):
    """Row-wise logsumexp and log-responsibilities (rows of -inf under every component
    have log_norm -inf and equal responsibilities), as :func:`daskgmm.kernels.log_prob_resp`."""
    amax = weighted_log_prob.max(axis=1)
    safe = np.where(np.isfinite(amax), amax, 0.0)
    shifted = np.maximum(weighted_log_prob - safe[:, None], -700.0)
    with np.errstate(divide="ignore"):
        log_sum = np.log(np.exp(shifted).sum(axis=1))
    log_resp = shifted - log_sum[:, None]
    log_norm = log_sum + safe
    log_norm[amax == -np.inf] = -np.inf
    return log_norm, log_resp


def _resp(log_resp):
    resp = np.exp(log_resp)
    resp[log_resp < -460.0] = 0.0  # as the complete rows' (no subnormal products)
    return resp


###############################################################################
# 'diag' and 'spherical': masked terms


def _variance_terms(X, params):
    """(weighted log-probabilities (n, k), centred squares (n, k, d) with missing
    features 0, observed mask (n, d), per-feature variances (k, d))."""
    observed = ~np.isnan(X)
    precisions = _feature_precisions(params)
    diff = np.where(observed, X, 0.0)[:, None, :] - params.means[None]
    diff *= observed[:, None, :]
    sq = diff * diff
    maha = np.einsum("nkd,kd->nk", sq, precisions)
    obs = observed.astype(np.float64)
    log_det = obs @ (0.5 * np.log(precisions)).T
    const = -0.5 * _LOG_2PI * obs.sum(axis=1)
    wlp = log_det - 0.5 * maha + const[:, None] + np.log(params.weights)
    return wlp, sq, obs, 1.0 / precisions


def _feature_precisions(params):
    k, d = params.means.shape
    return params.model.feature_precisions(params.precisions_cholesky, k, d)


def _variance_log_prob(X, params):
    return _variance_terms(X, params)[0]


def _variance_stats(X, params, weights):
    wlp, sq, obs, variances = _variance_terms(X, params)
    log_norm, log_resp = _log_resp(wlp)
    resp = _resp(log_resp)
    if weights is not None:
        resp *= weights[:, None]
    missing_weight = resp.T @ (1.0 - obs)  # (k, d): sum_i r_ik [feature j missing]
    s1 = resp.T @ np.where(obs > 0, X, 0.0) + params.means * missing_weight
    s2 = np.einsum("nk,nkd->kd", resp, sq) + variances * missing_weight
    return resp.sum(axis=0), s1, s2, log_norm


###############################################################################
# 'full' and 'tied': per pattern, factorised once


def pattern_groups(observed):
    """``(order, starts)``: the rows ``order[starts[g]:starts[g + 1]]`` share the g-th
    pattern of observed features (``observed``: boolean, (n, d))."""
    if observed.shape[1] <= 62:  # one int64 per row: a 1-D unique, much faster
        keys = observed @ (np.int64(1) << np.arange(observed.shape[1], dtype=np.int64))
        _, inverse = np.unique(keys, return_inverse=True)
    else:
        _, inverse = np.unique(np.packbits(observed, axis=1), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    return order, np.concatenate([[0], np.cumsum(np.bincount(inverse))])


def patterns(observed):
    """Groups of rows sharing a pattern of observed features: yields ``(rows, o)``,
    the rows' indices and the pattern's observed features (boolean, (d,))."""
    order, starts = pattern_groups(observed)
    for g in range(len(starts) - 1):
        rows = order[starts[g]:starts[g + 1]]
        yield rows, observed[rows[0]]


class _Pattern:
    """One pattern's marginal and conditional Gaussians, for every component at once
    (a handful of numpy calls per pattern, whatever k: the cost of a pattern is its
    calls, not its arithmetic, at the sizes EM meets)."""

    def __init__(self, params, covariances, o):
        self.o, self.m = np.flatnonzero(o), np.flatnonzero(~o)
        self.means = params.means
        k = params.n_components
        s_oo = covariances[:, self.o[:, None], self.o]
        try:
            chol = np.linalg.cholesky(s_oo)  # (k or 1, d_o, d_o), lower
        except np.linalg.LinAlgError:
            bad = _first_not_positive(s_oo)
            raise CovarianceError(ill_defined_message(
                None if len(s_oo) == 1 and k > 1 else bad, params.covariance_type)) from None
        self.chol = np.broadcast_to(chol, (k,) + chol.shape[1:])
        # B = L^-1 S_om: S_mo S_oo^-1 (x_o - mu_o) = B^T z with z = L^-1 (x_o - mu_o)
        b = np.linalg.solve(chol, covariances[:, self.o[:, None], self.m])
        self.b = np.broadcast_to(b, (k,) + b.shape[1:])
        cond = covariances[:, self.m[:, None], self.m] - np.swapaxes(b, 1, 2) @ b
        self.cond = np.broadcast_to(cond, (k,) + cond.shape[1:])
        half_log_det = -np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        self.const = (half_log_det - 0.5 * _LOG_2PI * len(self.o)
                      + np.log(params.weights))

    def log_prob(self, X):
        """Weighted log-probabilities (n, k) of rows ``X`` (d columns, NaN at ``m``),
        and the whitened observed parts z (k, d_o, n)."""
        diff = X[:, self.o].T[None] - self.means[:, self.o, None]  # (k, d_o, n)
        z = np.linalg.solve(self.chol, diff)
        return self.const - 0.5 * np.square(z).sum(axis=1).T, z

    def add_stats(self, X, z, resp, nk, s1, s2):
        """Add the expected statistics of rows ``X`` under responsibilities ``resp``
        (already multiplied by the sample weights) to ``nk``, ``s1``, ``s2`` in place."""
        o, m = self.o, self.m
        diff = np.empty((X.shape[0],) + self.means.shape)  # (n, k, d): x_hat - mu
        diff[:, :, o] = X[:, None, o] - self.means[None, :, o]
        diff[:, :, m] = np.matmul(np.swapaxes(self.b, 1, 2), z).transpose(2, 0, 1)
        rk = resp.sum(axis=0)
        weighted = diff * resp[:, :, None]
        nk += rk
        s1 += resp.T @ np.where(np.isnan(X), 0.0, X)
        s1[:, m] += rk[:, None] * self.means[:, m] + weighted[:, :, m].sum(axis=0)
        s2 += np.matmul(weighted.transpose(1, 2, 0), diff.transpose(1, 0, 2))
        s2[:, m[:, None], m] += rk[:, None, None] * self.cond


def _first_not_positive(mats):
    for j, mat in enumerate(mats):
        try:
            np.linalg.cholesky(mat)
        except np.linalg.LinAlgError:
            return j
    return None


def _matrix_covariances(params):
    cov = params.covariances
    if cov is None:
        cov = params.model.covariances_from_precisions(
            params.model.precisions(params.precisions_cholesky))
    return cov[None] if cov.ndim == 2 else cov


def _pattern_blocks(X, params):
    """Per pattern and block of its rows: ``(pattern, rows, weighted log-probs, z)``."""
    covariances = _matrix_covariances(params)
    step = _block_step(params)
    for rows, o in patterns(~np.isnan(X)):
        pattern = _Pattern(params, covariances, o)
        for start in range(0, len(rows), step):
            sub = rows[start:start + step]
            wlp, z = pattern.log_prob(X[sub])
            yield pattern, sub, wlp, z


###############################################################################
# What the kernels call


def log_prob_resp(X, params):
    """(log_norm (n,), log_resp (n, k)) of incomplete rows ``X`` under ``params``:
    the marginal density of each row's observed features."""
    n, k = X.shape[0], params.n_components
    log_norm, log_resp = np.empty(n), np.empty((n, k))
    if _feature_precisions(params) is not None:
        compiled = _compiled_variance(X, params, stats=False)
        if compiled is not None:
            return compiled[0], compiled[1]
        for rows in _row_blocks(X, params):
            log_norm[rows], log_resp[rows] = _log_resp(_variance_log_prob(X[rows], params))
        return log_norm, log_resp
    compiled = _compiled_marginal(X, params, stats=False)
    if compiled is not None:
        return compiled[1], compiled[2]
    for _, rows, wlp, _ in _pattern_blocks(X, params):
        log_norm[rows], log_resp[rows] = _log_resp(wlp)
    return log_norm, log_resp


def _compiled_variance(X, params, weights=None, stats=True):
    """The compiled kernel's results for a variance type (see
    :func:`daskgmm.covariance.compiled.variance_marginal`), or None."""
    compiled = fused_module()
    if compiled is None:
        return None
    return compiled.variance_marginal(X, params.means, np.sqrt(_feature_precisions(params)),
                                      np.log(params.weights), weights, stats=stats,
                                      resp=not stats)


def _compiled_marginal(X, params, weights=None, stats=True):
    """The compiled kernel's results for a matrix type (see
    :func:`daskgmm.covariance.compiled.marginal`), or None: run the numpy path
    (``DASKGMM_KERNELS=numpy``, or numba missing)."""
    compiled = fused_module()
    if compiled is None:
        return None
    k, d = params.means.shape
    covariances = _matrix_covariances(params)
    order, starts = pattern_groups(~np.isnan(X))
    out = compiled.marginal(X, order, starts, params.means,
                            np.broadcast_to(covariances, (k, d, d)),
                            np.log(params.weights), weights, stats=stats, resp=not stats)
    if out[0] >= 0:
        shared = covariances.shape[0] == 1 and k > 1
        raise CovarianceError(ill_defined_message(None if shared else int(out[0]),
                                                  params.covariance_type))
    return out


def _block_step(params):
    k, d = params.means.shape
    return max(64, _BLOCK_FLOATS // (k * d))


def _row_blocks(X, params):
    """Slices of rows whose (rows, k, d) temporaries stay within ~2 MiB."""
    step = _block_step(params)
    for start in range(0, X.shape[0], step):
        yield slice(start, start + step)


def stats(X, params, weights=None):
    """``(nk, s1, s2, log_likelihood)`` of incomplete rows ``X`` under ``params``:
    responsibilities from the marginal densities (times ``weights``), statistics of
    the rows completed by each component's conditional expectation, second moments
    about the current means plus the conditional covariances, and the weighted sum of
    the marginal log-densities."""
    k, d = params.means.shape
    total = 0.0
    if _feature_precisions(params) is not None:
        compiled = _compiled_variance(X, params, weights)
        if compiled is not None:
            return compiled[2], compiled[3], compiled[4], compiled[5]
        nk, s1, s2 = np.zeros(k), np.zeros((k, d)), np.zeros((k, d))
        for rows in _row_blocks(X, params):
            w = None if weights is None else weights[rows]
            parts = _variance_stats(X[rows], params, w)
            for acc, part in zip((nk, s1, s2), parts[:3], strict=True):
                acc += part
            total += _weighted_sum(parts[3], w)
        return nk, s1, s2, total
    compiled = _compiled_marginal(X, params, weights)
    if compiled is not None:
        return compiled[3], compiled[4], compiled[5], compiled[6]
    nk, s1, s2 = np.zeros(k), np.zeros((k, d)), np.zeros((k, d, d))
    for pattern, rows, wlp, z in _pattern_blocks(X, params):
        log_norm, log_resp = _log_resp(wlp)
        resp = _resp(log_resp)
        w = None if weights is None else weights[rows]
        if w is not None:
            resp *= w[:, None]
        pattern.add_stats(X[rows], z, resp, nk, s1, s2)
        total += _weighted_sum(log_norm, w)
    return nk, s1, s2, total


def _weighted_sum(log_norm, weights):
    if weights is None:
        return float(log_norm.sum())
    return float(np.dot(weights, np.where(weights > 0, log_norm, 0.0)))


def impute(X, centres=None):
    """Incomplete rows ``X`` (shifted) completed for an initialisation: each missing
    value from the nearest of ``centres`` over the row's observed features ('kmeans'),
    or 0, the data's median (no centres)."""
    observed = ~np.isnan(X)
    out = np.where(observed, X, 0.0)
    if centres is None:
        return out
    step = max(64, _BLOCK_FLOATS // centres.size)  # (rows, k, d) within ~2 MiB
    for start in range(0, X.shape[0], step):
        rows = slice(start, start + step)
        diff = (out[rows, None, :] - centres[None]) * observed[rows, None, :]
        nearest = centres[np.einsum("nkd,nkd->nk", diff, diff).argmin(axis=1)]
        out[rows] = np.where(observed[rows], out[rows], nearest)
    return out
