"""Property-based tests (hypothesis): random shapes, dtypes and values give the kernels
and the model-file loader a correct result or a daskgmm error, never a crash.

Kernels: rows of 1 to 60 samples, 1 to 6 features, float64, float32 or int64, at
magnitudes from 1e-300 to 1e300, with constant columns and duplicated rows, under
mixtures of 1 to 4 components of every covariance type. The E-step is checked against
scipy's ``multivariate_normal.logpdf`` and ``special.logsumexp``, the statistics and the
M-step against weighted centred moments computed from their definition. Tolerances are
those of float64 arithmetic on inputs of that magnitude and conditioning (see
``_e_step_tolerance`` and ``_m_step_tolerance``): well-scaled cases are held to 1e-9.

Model files: a valid file written by fitting a small model, then truncated, bit-flipped,
or with a member replaced (random bytes, an object array, another dtype or shape, NaN,
a metadata field of another type or value, with or without a model id made to match),
dropped, duplicated or added. Each either loads to the original model (with the edited
parameters, when the model id was made to match) or raises ``ModelFileError`` naming
the file (and the member at fault, unless only the content hash can tell).

Examples are derandomized and no example database is kept, so every run (and CI) tries
the same cases.
"""

import hashlib
import io
import json
import math
import warnings
import zipfile
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose
from scipy import special, stats

import daskgmm
from daskgmm import GaussianMixture, covariance, kernels
from daskgmm.kernels import Params
from daskgmm.model_file import ModelFileError

from .conftest import COVARIANCE_TYPES

# The strategies draw from numpy generators seeded by hypothesis, never from `random`.
# Other threads of the test session (the Dask client's, Prefect's server's) do use the
# global `random` state, and hypothesis would take their draws for the strategies'.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies")


EPS = np.finfo(np.float64).eps


def _settings(max_examples):
    return settings(max_examples=max_examples, deadline=None, database=None,
                    derandomize=True, print_blob=False, report_multiple_bugs=False,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


###############################################################################
# Strategies: rows and mixtures

# the magnitude of the rows' spread and of their offset from 0
MAGNITUDES = [1.0, 1e-300, 1e-150, 1e-8, 1e8, 1e150, 1e300]
OFFSETS = [0.0, 1.0, 1e3, -1e6]  # in units of the magnitude


def _as_dtype(X, dtype):
    """``X`` as ``dtype``, clipped to what that dtype holds (the rows stay finite)."""
    if dtype == "float32":
        return np.clip(X, -3e38, 3e38).astype(np.float32)
    if dtype == "int64":
        return np.clip(np.round(X), -(2.0**62), 2.0**62).astype(np.int64)
    return X


@st.composite
def rows(draw, max_samples=60, max_features=6, outliers=False):
    """Finite rows of random shape, dtype and magnitude, with repeated rows and constant
    columns, and (``outliers``) a few rows at 1e150 to 1e300. hypothesis draws the
    structure; numpy, seeded by hypothesis, the values."""
    n = draw(st.integers(1, max_samples))
    d = draw(st.integers(1, max_features))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.integers(0, 3)):  # well-scaled values, moved to a magnitude and an offset
        magnitude = draw(st.sampled_from(MAGNITUDES))
        offset = draw(st.sampled_from(OFFSETS))
        X = (rng.uniform(-1, 1, size=(n, d)) + offset) * magnitude
    else:  # magnitudes from 1e-300 to 1e300 mixed in one array, and zeros
        X = rng.choice([-1.0, 0.0, 1.0], size=(n, d)) * 10.0 ** rng.uniform(-300, 300, (n, d))
    distinct = draw(st.sampled_from([None, 1, 2, 3]))
    if distinct:  # every row is one of a few
        X = X[rng.integers(0, min(distinct, n), n)]
    for j in draw(st.sets(st.integers(0, d - 1), max_size=d)):  # constant columns
        X[:, j] = X[0, j]
    if outliers and draw(st.booleans()):
        far = rng.integers(0, n, size=draw(st.integers(1, 3)))
        X[far] = rng.choice([-1.0, 1.0], size=(len(far), d)) * 10.0 ** rng.uniform(
            150, 300, size=(len(far), d))
    return _as_dtype(X, draw(st.sampled_from(["float64", "float32", "int64"])))


def _random_covariances(rng, covariance_type, n_components, n_features, sigma):
    """Covariances with eigenvalues in [1, 10] * sigma**2 (condition number <= 10)."""
    if covariance_type in ("full", "tied"):
        n = n_components if covariance_type == "full" else 1
        q = np.linalg.qr(rng.normal(size=(n, n_features, n_features)))[0]
        lam = rng.uniform(1.0, 10.0, size=(n, n_features)) * sigma**2
        cov = np.einsum("kij,kj,klj->kil", q, lam, q)
        cov = (cov + cov.transpose(0, 2, 1)) / 2
        return cov if covariance_type == "full" else cov[0]
    if covariance_type == "diag":
        return rng.uniform(1.0, 10.0, size=(n_components, n_features)) * sigma**2
    return rng.uniform(1.0, 10.0, size=n_components) * sigma**2


def _spread(X):
    """A positive length scale of the rows: their spread, else their magnitude, else 1."""
    for value in (np.ptp(X, axis=0).max(), np.abs(X).max()):
        if 0 < value < np.inf:
            return float(value)
    return 1.0


@st.composite
def mixtures(draw, X, covariance_type=None, n_components=None):
    """Engine parameters of a mixture for (float64) rows ``X``: means on or near random
    rows, covariances at a random scale relative to the rows' spread, the engine's shift
    (the rows' median) or none."""
    covariance_type = covariance_type or draw(st.sampled_from(COVARIANCE_TYPES))
    k = n_components or draw(st.integers(1, 4))
    n, d = X.shape
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sigma = _spread(X) * 10.0 ** draw(st.sampled_from([0, -6, -2, 2, 6, -20, -160]))
    sigma = min(max(sigma, 1e-150), 1e150)  # covariances (sigma**2) stay normal floats
    cov = _random_covariances(rng, covariance_type, k, d, sigma)
    means = X[draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k))]
    means = means + sigma * draw(st.sampled_from([0.0, 1.0, 1e3])) * rng.normal(size=(k, d))
    weights = np.maximum(rng.dirichlet(np.ones(k)), 1e-3)
    weights /= weights.sum()
    shift = kernels.data_shift(X) if draw(st.booleans()) else np.zeros(d)
    prec = covariance.get(covariance_type).precisions_cholesky(cov)
    return Params(covariance_type, weights, means - shift, prec, cov, shift)


def _as_matrices(array, covariance_type, n_components, n_features):
    """Covariances or precisions of a covariance type as (k, d, d) matrices."""
    return {
        "full": lambda: array,
        "tied": lambda: np.repeat(array[None], n_components, axis=0),
        "diag": lambda: np.stack([np.diag(c) for c in array]),
        "spherical": lambda: np.stack([np.eye(n_features) * c for c in array]),
    }[covariance_type]()


def _full_covariances(params, n_features):
    return _as_matrices(params.covariances, params.covariance_type, params.n_components,
                        n_features)


###############################################################################
# The E-step against scipy


def _oracle_log_prob(X, params):
    """scipy's log p(x | k) + log w_k (user coordinates), and each component's constant
    log p(mu_k | k) + log w_k; overflow is allowed here (it is -inf, as it should be)."""
    covs = _full_covariances(params, X.shape[1])
    means = params.means + params.shift
    out = np.empty((X.shape[0], params.n_components))
    const = np.empty(params.n_components)
    with np.errstate(all="ignore"):
        for k in range(params.n_components):
            mvn = stats.multivariate_normal(means[k], covs[k])
            out[:, k] = np.reshape(mvn.logpdf(X), -1) + np.log(params.weights[k])
            const[k] = mvn.logpdf(means[k]) + np.log(params.weights[k])
    return out, const


def _e_step_tolerance(X, params, oracle, const):
    """How far a float64 log p(x | k) + log w_k may be from the oracle, per entry: 1e-9
    relative to its terms, plus the rounding of (x - shift) - (mu - shift), which is
    eps * (magnitude of x, mu and the shift) / (the component's smallest sigma) in each
    coordinate of the whitened difference y, and 2 |y| that in the squared distance."""
    covs = _full_covariances(params, X.shape[1])
    sigma_min = np.sqrt(np.linalg.eigvalsh(covs).min(axis=1))
    magnitude = (np.abs(X).max() + np.abs(params.shift).max()
                 + np.abs(params.means).max(axis=1))
    with np.errstate(over="ignore", invalid="ignore"):  # inf, or 0 * inf: no bound
        err_y = 64 * X.shape[1] * EPS * math.sqrt(10) * magnitude / sigma_min
        maha = np.maximum(-2.0 * (oracle - const), 0.0)
        tol = 1e-9 * (np.abs(oracle) + np.abs(const) + 1.0) + 2 * np.sqrt(maha) * err_y + err_y**2
    return np.nan_to_num(tol, nan=np.inf)


# log-densities below this are "minus infinity" for the comparison: the squared distance
# overflows float64 near here, in the oracle or in the kernel
_UNDERFLOW = -1e300


def _assert_log_close(ours, expected, tol, what):
    assert not np.isnan(ours).any(), f"{what}: NaN for finite rows and parameters"
    tiny = (expected <= _UNDERFLOW) | (ours <= _UNDERFLOW)
    assert np.all(ours[tiny] <= _UNDERFLOW / 2) and np.all(expected[tiny] <= _UNDERFLOW / 2), (
        f"{what}: one of ours and the oracle underflows, not the other"
    )
    with np.errstate(invalid="ignore"):  # -inf - -inf where both underflow
        diff = np.abs(ours - expected)
    assert np.all(diff[~tiny] <= tol[~tiny]), (
        f"{what}: differences {diff[~tiny]}, tolerances {tol[~tiny]}"
    )


@_settings(250)
@given(data=st.data())
def test_e_step_matches_scipy(data):
    X = data.draw(rows(outliers=True))
    X64 = np.asarray(X, dtype=np.float64)
    params = data.draw(mixtures(X64))
    oracle, const = _oracle_log_prob(X64, params)
    tol = _e_step_tolerance(X64, params, oracle, const)
    with np.errstate(all="ignore"):  # the oracle's -inf where a row underflows
        expected_norm = special.logsumexp(oracle, axis=1)
        expected_resp = np.exp(oracle - expected_norm[:, None])
        row_tol = tol.max(axis=1)
        total_tol = row_tol.sum()
        resp_tol = np.minimum(1.0, 4 * row_tol) + 1e-12
    known = expected_norm > _UNDERFLOW  # the rows whose responsibilities are defined
    event(f"E-step: {'all' if known.all() else 'not all'} rows have a density above 1e-300")

    weighted = kernels.estimate_weighted_log_prob(X64 - params.shift, params)
    _assert_log_close(weighted, oracle, tol, "estimate_weighted_log_prob")
    log_norm, log_resp = kernels.log_prob_resp(weighted)
    _assert_log_close(log_norm, expected_norm, row_tol, "log_prob_resp")
    scores = kernels.score_chunk(X, params, "score_samples")
    _assert_log_close(scores, expected_norm, row_tol, "score_samples")

    proba = kernels.score_chunk(X, params, "predict_proba")
    assert np.isfinite(proba).all() and np.all(proba >= 0)
    assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(np.abs(proba - expected_resp)[known] <= resp_tol[known, None]), (
        f"predict_proba: {proba}, scipy: {expected_resp}")
    predicted = kernels.score_chunk(X, params, "predict")
    with np.errstate(invalid="ignore"):
        gap = oracle.max(axis=1) - oracle[np.arange(len(X)), predicted]
    assert np.all(gap[known] / 2 <= row_tol[known])

    threshold = float(np.median(expected_norm))
    scored = kernels.score_rows(X, params, threshold)
    assert np.array_equal(scored["log_density"], scores)
    assert np.array_equal(scored["anomaly_score"], -scores)
    assert np.array_equal(scored["component"], predicted)
    assert_allclose(scored["responsibility"], proba.max(axis=1), rtol=1e-12)
    assert np.array_equal(scored["is_anomaly"], scores < threshold)

    (ll,) = kernels.chunk_log_likelihood(X, [params])
    # float32 rows take a float32 E-step (tests/test_float32.py): their values in float64
    (stats_,) = kernels.chunk_stats(X64, [params])
    with np.errstate(over="ignore"):
        expected_total = expected_norm.sum()
    for total in (ll.log_likelihood, stats_.log_likelihood):
        _assert_log_close(np.array([total]), np.array([expected_total]),
                          np.array([total_tol]), "chunk log-likelihood")
    assert ll.n_samples == stats_.n_samples == len(X)
    # chunk_stats reuses the E-step's squares: the same as statistics computed afresh
    # under the E-step's responsibilities (those below exp(-460) count as 0 there)
    resp = np.where(log_resp < -460.0, 0.0, np.exp(log_resp))
    again = kernels.responsibility_stats(X, params, lambda _, start: resp[start:start + len(X)])
    assert_allclose(stats_.nk, again.nk, rtol=1e-12)
    with np.errstate(over="ignore", invalid="ignore"):
        # sums in another order (the compiled kernels'): within rounding of the sum of
        # the terms' magnitudes, which is what bounds a sum whose terms cancel
        magnitude = resp.T @ np.abs(X64 - params.shift)
        _assert_within(stats_.s1, again.s1, 1e-12 * np.maximum(magnitude, np.abs(again.s1)),
                       "s1")
        _assert_within(stats_.s2, again.s2, 1e-12 * np.abs(again.s2), "s2")


###############################################################################
# Statistics and the M-step against weighted centred moments


@st.composite
def responsibilities(draw, n_samples, n_components):
    """Rows of responsibilities: soft, hard (one-hot, components may be empty), or soft
    with many exact zeros."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["soft", "hard", "sparse"]))
    if kind == "hard":
        resp = np.zeros((n_samples, n_components))
        resp[np.arange(n_samples), rng.integers(0, n_components, n_samples)] = 1.0
        return resp
    resp = rng.dirichlet(np.full(n_components, 0.5), size=n_samples)
    if kind == "sparse":
        resp[rng.uniform(size=resp.shape) < 0.5] = 0.0
        resp[np.arange(n_samples), rng.integers(0, n_components, n_samples)] += 1e-3
        resp /= resp.sum(axis=1, keepdims=True)
    return resp


def _oracle_m_step(xs, resp, covariance_type, reg_covar):
    """nk, means and covariances of shifted rows ``xs`` under ``resp`` by definition
    (weighted moments about the new means), with scikit-learn's 10 * eps guard on nk.
    What overflows is inf or NaN here, as it should be."""
    nk = resp.sum(axis=0) + 10 * EPS
    d = xs.shape[1]
    with np.errstate(all="ignore"):
        means = resp.T @ xs / nk[:, None]
        scatter = np.stack([
            (resp[used, k, None] * (xs[used] - means[k])).T @ (xs[used] - means[k])
            for k in range(len(nk)) for used in [resp[:, k] > 0]
        ])
        if covariance_type == "full":
            cov = scatter / nk[:, None, None] + reg_covar * np.eye(d)
        elif covariance_type == "tied":
            cov = scatter.sum(axis=0) / nk.sum() + reg_covar * np.eye(d)
        elif covariance_type == "diag":
            cov = np.diagonal(scatter, axis1=1, axis2=2) / nk[:, None] + reg_covar
        else:
            cov = np.diagonal(scatter, axis1=1, axis2=2).mean(axis=1) / nk + reg_covar
    return nk, means, cov


def _assert_within(ours, expected, tol, what):
    """Both overflow (inf or NaN) in the same entries, and the others are within
    ``tol`` (broadcast)."""
    finite = np.isfinite(expected)
    assert np.array_equal(np.isfinite(ours), finite), f"{what} overflows in one, not the other"
    diff = np.abs(np.where(finite, ours, 0.0) - np.where(finite, expected, 0.0))
    assert np.all(diff <= tol), f"{what}: differences {diff}, tolerance {tol}"


def _lambda_min(cov, covariance_type):
    """Smallest eigenvalue (variance) of each covariance; one entry for 'tied'."""
    if covariance_type == "full":
        return np.linalg.eigvalsh(cov).min(axis=1)
    if covariance_type == "tied":
        return np.linalg.eigvalsh(cov).min(keepdims=True)
    return cov.min(axis=1) if covariance_type == "diag" else cov


def _squared_distances(xs, means):
    """|x_i - mu_k|**2, shape (n_samples, n_components); inf where it overflows."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.stack([((xs - m) ** 2).sum(axis=1) for m in means], axis=1)


def _m_step_tolerance(xs, resp, current_means):
    """Per component: the rounding of float64 means of these rows (eps * n * the largest
    magnitude of a row it weighs), and of their second moments (eps * n * d * the
    largest squared distance of a row it weighs from the current mean, plus what the
    rounding of the mean makes of the distances)."""
    n, d = xs.shape
    used = resp > 0
    with np.errstate(over="ignore", invalid="ignore"):
        far = np.where(used, _squared_distances(xs, current_means), 0.0).max(axis=0)
        size = np.where(used, np.abs(xs).max(axis=1)[:, None], 0.0).max(axis=0)
        mean_tol = 8 * n * EPS * size
        return 64 * n * d * EPS * far + 4 * mean_tol * np.sqrt(far) + mean_tol**2, mean_tol


@_settings(250)
@given(data=st.data())
def test_statistics_and_m_step_match_weighted_moments(data):
    X = data.draw(rows())
    X64 = np.asarray(X, dtype=np.float64)
    n, d = X64.shape
    params = data.draw(mixtures(X64))
    ct, k = params.covariance_type, params.n_components
    resp = data.draw(responsibilities(n, k))
    reg_covar = data.draw(st.sampled_from([0.0, 1e-6, 1e-4 * min(_spread(X64), 1e150) ** 2]))
    xs = X64 - params.shift
    cov_tol, mean_tol = _m_step_tolerance(xs, resp, params.means)

    stats_ = kernels.responsibility_stats(X, params, lambda _, start: resp[start:start + n])
    assert stats_.n_samples == n
    assert_allclose(stats_.nk, resp.sum(axis=0), rtol=1e-12)
    with np.errstate(all="ignore"):  # overflow is inf, as it should be
        s1 = resp.T @ xs
        s2 = np.stack([(resp[used, j, None] * (xs[used] - m)).T @ (xs[used] - m)
                       for j, m in enumerate(params.means) for used in [resp[:, j] > 0]])
    if ct in ("diag", "spherical"):
        s2 = np.diagonal(s2, axis1=1, axis2=2)
    weight = np.maximum(resp.sum(axis=0), 1.0)  # the tolerances are per unit of weight
    _assert_within(stats_.s1, s1, (mean_tol * weight)[:, None], "s1")
    _assert_within(stats_.s2, s2, (cov_tol * weight).reshape((k,) + (1,) * (s2.ndim - 1)),
                   "s2")

    nk, means, cov = _oracle_m_step(xs, resp, ct, reg_covar)
    # A covariance must be returned when its smallest standard deviation is 30 times
    # above what float64 resolves: the rounding of the moments (which covers that of
    # moving them from the current means), 64 eps x the magnitude of the means, and
    # 1 / sqrt(largest float) (a finite precision). Standard deviations, not variances:
    # the squares may overflow.
    resolution = 64 * EPS * (np.abs(means + params.shift).max(axis=1)
                             + np.abs(params.shift).max())
    if ct == "tied":
        cov_tol, resolution = cov_tol.max(keepdims=True), resolution.max(keepdims=True)
    with np.errstate(all="ignore"):
        well_defined = np.isfinite(cov).all() and bool(
            np.all(np.sqrt(_lambda_min(cov, ct)) > 30 * (np.sqrt(cov_tol) + resolution))
            and np.all(_lambda_min(cov, ct) > 30 / np.finfo(float).max))  # precision finite
    try:
        new = kernels.params_from_stats(stats_, params, reg_covar)
    except kernels.CovarianceError as exc:
        message = str(exc)
        event("M-step: " + ("overflow" if "finite float64" in message else "ill-defined"))
        if "is not a finite float64" in message:
            # the oracle overflows, or the sums over the rows about the current means
            # (which the statistics hold), or the squared rounding of the means (rows
            # beyond ~1e169), come within a factor of 4 of doing so
            with np.errstate(over="ignore"):
                near = 4 * n * max(_squared_distances(xs, params.means).max(),
                                   mean_tol.max() ** 2) > np.finfo(float).max
            assert near or not (np.isfinite(cov).all() and np.isfinite(means).all()), message
            assert "Scale the input data" in message
        else:
            assert not well_defined, f"refused a well-defined covariance: {message}"
            assert "ill-defined empirical covariance" in message
            assert "increase reg_covar, or scale the input data" in message
        return
    event(f"M-step: {'well-defined' if well_defined else 'near the resolution'}, returned")
    assert np.isfinite(cov).all(), "a covariance beyond float64 was returned"
    assert_allclose(new.weights, nk / nk.sum(), rtol=1e-12, atol=1e-15)
    _assert_within(new.means, means, mean_tol[:, None] + 1e-300, "means")
    _assert_within(new.means + new.shift, means + params.shift,
                   mean_tol[:, None] + 4 * EPS * np.abs(params.shift).max(), "user means")
    entry_tol = cov_tol.reshape((-1,) + (1,) * (cov.ndim - 1)) if ct != "tied" else cov_tol[0]
    _assert_within(new.covariances, cov, entry_tol + 1e-9 * np.abs(cov), "covariances")
    # the precision factor inverts the covariance, to the conditioning of the oracle's
    precisions = _as_matrices(covariance.get(ct).precisions(new.precisions_cholesky), ct, k, d)
    covs = _as_matrices(cov, ct, k, d)
    eig = np.linalg.eigvalsh(covs)
    with np.errstate(all="ignore"):
        cond = eig.max(axis=1) / eig.min(axis=1)
        bound = (10 * d * (np.broadcast_to(cov_tol, (k,)) / eig.min(axis=1) + 1e-9 * cond)
                 + 64 * d * EPS * cond)
        residual = np.abs(precisions @ covs - np.eye(d)).max(axis=(1, 2))
    checked = (eig.min(axis=1) > 0) & (bound < 0.1)
    assert np.all(residual[checked] <= bound[checked]), (
        f"precisions x covariances - I: {residual}, tolerance {bound}")


###############################################################################
# The model-file loader against damaged, edited and hostile files

_ARRAY_NAMES = ("weights_", "means_", "covariances_", "precisions_cholesky_")


class _Originals(dict):
    """covariance type -> (fitted model, bytes of its file); shown short in reports."""

    def __repr__(self):
        return f"<model files of {sorted(self)}>"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A small fitted model of each covariance type (one with feature names and an
    anomaly threshold), as the bytes of its file, and a scratch path."""
    X = np.random.default_rng(0).normal(size=(120, 3)) + [0.0, 5.0, -5.0]
    folder = tmp_path_factory.mktemp("model-files")
    out = _Originals()
    for ct in COVARIANCE_TYPES:
        data = pd.DataFrame(X, columns=["a", "b", "c"]) if ct == "full" else X
        gm = GaussianMixture(2, covariance_type=ct, random_state=0, reg_covar=1e-3).fit(data)
        if ct == "full":
            gm.set_threshold(data, contamination=0.05)
        gm.save(folder / f"{ct}.daskgmm")
        out[ct] = (gm, (folder / f"{ct}.daskgmm").read_bytes())
    return out, folder / "mutated.daskgmm"


def _members(raw):
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _zip(members, compression):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names, on purpose
        with zipfile.ZipFile(buf, "w", compression=compression) as zf:
            for name, data in members:
                zf.writestr(name, data)
    return buf.getvalue()


def _npy(array, allow_pickle=False):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=8,
)


# wrong values of the right kind: other covariance types, counts, numbers JSON allows
PLAUSIBLE = [*COVARIANCE_TYPES, 0, -1, 1, 2, 3, 1.5, True, "2", 2**63, 1e308, math.nan,
             math.inf, [], {}, None]


@st.composite
def array_members(draw, original):
    """A replacement for an array member: another dtype, shape or values, an object
    array (pickled), a 0-d array, or bytes that are not an array."""
    kind = draw(st.sampled_from([
        "dtype", "shape", "nonfinite", "pickled", "scalar", "bytes", "npy header",
        "perturbed", "big-endian", "fortran",
    ]))
    if kind == "dtype":
        dtype = draw(st.sampled_from(["int64", "float32", "float16", "complex128", "bool",
                                      "U8", "datetime64[s]", "uint8"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return kind, _npy(original.astype(dtype))
    if kind == "shape":
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
        return kind, _npy(np.ones(shape))
    if kind == "nonfinite":
        bad = original.copy()
        bad.flat[draw(st.integers(0, max(bad.size - 1, 0)))] = draw(
            st.sampled_from([np.nan, np.inf, -np.inf]))
        return kind, _npy(bad)
    if kind == "pickled":
        return kind, _npy(np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    if kind == "scalar":
        return kind, _npy(np.float64(draw(st.floats())))
    if kind == "bytes":
        return kind, draw(st.binary(max_size=64))
    if kind == "npy header":  # a .npy whose header lies about the data that follows
        data = _npy(original)
        cut = draw(st.integers(0, len(data) - 1))
        return kind, data[:cut]
    if kind == "perturbed":
        return kind, _npy(original * (1 + draw(st.sampled_from([1e-15, 1e-6, -0.5]))))
    if kind == "big-endian":
        return kind, _npy(original.astype(">f8"))
    return kind, _npy(np.asfortranarray(original))


@st.composite
def metadata_members(draw, original):
    """A replacement for metadata.json: a field set to another JSON value, removed or
    added (at the top level or inside 'params', 'fit_data' or 'anomaly'), or text that
    is not JSON or not an object."""
    kind = draw(st.sampled_from(["field", "field", "drop", "add", "bytes", "not object"]))
    if kind == "bytes":
        return kind, draw(st.binary(max_size=64))
    if kind == "not object":
        return kind, json.dumps(draw(st.lists(json_values, max_size=3))).encode()
    meta = json.loads(original)
    where = draw(st.sampled_from([None, "params", "fit_data", "anomaly"]))
    target = meta if where is None or not isinstance(meta.get(where), dict) else meta[where]
    key = draw(st.sampled_from(sorted(target)))
    if kind == "field":
        target[key] = draw(json_values | st.sampled_from(PLAUSIBLE))
    elif kind == "drop":
        del target[key]
    else:
        target[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    return f"{kind} {where or ''}.{key}", json.dumps(meta).encode()


def _rehashed(meta_bytes, members):
    """metadata.json with its model id recomputed the way daskgmm computes it (a hash
    of the parameters, the anomaly entry and the arrays), when it is a JSON object."""
    try:
        meta = json.loads(meta_bytes)
        h = hashlib.sha256()
        h.update(json.dumps({"params": meta["params"], "anomaly": meta.get("anomaly")},
                            sort_keys=True).encode())
    except (ValueError, TypeError, KeyError):
        return meta_bytes
    for name in _ARRAY_NAMES:
        h.update(name.encode())
        h.update(np.load(io.BytesIO(members[f"arrays/{name}.npy"])).tobytes())
    meta["model_id"] = h.hexdigest()[:16]
    return json.dumps(meta).encode()


class Damaged(NamedTuple):
    """A damaged model file: its bytes, the member at fault (None when the damage is not
    to one member) and what was done."""

    data: bytes
    member: str | None
    how: str

    def __repr__(self):
        return f"<{self.how!r}: {len(self.data)} bytes, member at fault {self.member!r}>"


@st.composite
def damaged_files(draw, raw):
    """``raw`` (a model file's bytes) truncated, with bytes flipped, or with a member
    replaced, dropped, duplicated or added."""
    how = draw(st.sampled_from(["truncate", "flip", "replace array", "replace metadata",
                                "drop", "add", "duplicate", "replace array",
                                "replace metadata", "replace metadata"]))
    if how == "truncate":
        return Damaged(raw[:draw(st.integers(0, len(raw) - 1))], None, how)
    if how == "flip":
        data = bytearray(raw)
        for at in draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4)):
            data[at] ^= draw(st.integers(1, 255))
        return Damaged(bytes(data), None, how)
    members = _members(raw)
    names = list(members)
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    if how == "replace array":
        name = draw(st.sampled_from([n for n in names if n.startswith("arrays/")]))
        kind, members[name] = draw(array_members(np.load(io.BytesIO(members[name]))))
        return Damaged(_zip(members.items(), compression), name, f"{name}: {kind}")
    if how == "replace metadata":
        kind, members["metadata.json"] = draw(metadata_members(members["metadata.json"]))
        if draw(st.booleans()):  # and the model id made to match, as a tamperer would
            members["metadata.json"] = _rehashed(members["metadata.json"], members)
            kind += ", rehashed"
        return Damaged(_zip(members.items(), compression), "metadata.json",
                       f"metadata: {kind}")
    if how == "drop":
        name = draw(st.sampled_from(names))
        del members[name]
        return Damaged(_zip(members.items(), compression), name, f"drop {name}")
    if how == "add":
        name = draw(st.sampled_from(["extra.bin", "arrays/extra_.npy", "../escape.npy",
                                     "arrays/", "metadata.json.bak"]))
        members[name] = draw(st.binary(max_size=32))
        return Damaged(_zip(members.items(), compression), None, f"add {name}")
    name = draw(st.sampled_from(names))  # a second member of the same name, read last
    extra = draw(st.binary(max_size=32))
    return Damaged(_zip([*members.items(), (name, extra)], compression), name,
                   f"duplicate {name}")


@_settings(400)
@given(data=st.data())
def test_damaged_model_files_load_unchanged_or_raise_model_file_error(model_files, data):
    originals, path = model_files
    ct = data.draw(st.sampled_from(COVARIANCE_TYPES))
    original, raw = originals[ct]
    damaged, member, how = data.draw(damaged_files(raw))
    event(how.split(":")[0].split(" ")[0])
    path.write_bytes(damaged)
    try:
        loaded = daskgmm.load(path)
    except ModelFileError as exc:
        event("refused")
        message = str(exc)
        assert str(path) in message, f"{how}: the file is not named: {message}"
        if member is not None and "does not hash to its model id" not in message:
            assert member in message, f"{how}: the member {member} is not named: {message}"
        return
    event("loaded")
    for name in _ARRAY_NAMES:
        assert_allclose(getattr(loaded, name), getattr(original, name), rtol=1e-15,
                        err_msg=f"{how}: {name} differs from the original")
    if "rehashed" in how:  # the parameters may be edited consistently: they are the file's
        with zipfile.ZipFile(io.BytesIO(damaged)) as zf:
            params = json.loads(zf.read("metadata.json"))["params"]
        loaded_params = {k: loaded.get_params()[k] for k in params}
        assert json.dumps(loaded_params, sort_keys=True) == json.dumps(params, sort_keys=True)
    else:
        assert loaded.get_params() == original.get_params(), how
