"""The pure-numpy kernels against independent references (scipy, numpy)."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import special, stats

from daskgmm import covariance, kernels

from .conftest import COVARIANCE_TYPES, full_covariances, random_params


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_chunk_stats_then_m_step_match_weighted_moments(covariance_type):
    p = random_params(covariance_type)
    X = np.random.default_rng(2).normal(0, 3, size=(500, 4))
    (s,) = kernels.chunk_stats(X, [p])
    log_norm, log_resp = kernels.log_prob_resp(kernels.estimate_weighted_log_prob(X, p))
    resp = np.exp(log_resp)
    assert_allclose(s.log_likelihood, log_norm.sum(), rtol=1e-12)
    assert_allclose(log_norm, special.logsumexp(kernels.estimate_weighted_log_prob(X, p), axis=1))
    new = kernels.m_step(s, p, reg_covar=1e-6)
    covs = [np.cov(X.T, aweights=resp[:, k], bias=True) for k in range(3)]
    means = [np.average(X, axis=0, weights=resp[:, k]) for k in range(3)]
    assert_allclose(new.weights, resp.mean(axis=0), rtol=1e-10)
    assert_allclose(new.means, means, rtol=1e-10)
    expected = {
        "full": lambda: np.stack(covs) + 1e-6 * np.eye(4),
        "tied": lambda: sum(resp[:, k].sum() * covs[k] for k in range(3)) / 500 + 1e-6 * np.eye(4),
        "diag": lambda: np.stack([np.diag(c) for c in covs]) + 1e-6,
        "spherical": lambda: np.stack([np.diag(c).mean() for c in covs]) + 1e-6,
    }[covariance_type]()
    assert_allclose(new.covariances, expected, rtol=1e-9)



@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_combine_is_associative(covariance_type):
    p = random_params(covariance_type)
    X = np.random.default_rng(3).normal(0, 3, size=(300, 4))
    whole = kernels.chunk_stats(X, [p, p])
    parts = [kernels.chunk_stats(X[i : i + 70], [p, p]) for i in range(0, 300, 70)]
    halves = [kernels.combine_stats(parts[:2]), kernels.combine_stats(parts[2:])]
    left = kernels.combine_stats(halves)
    right = kernels.combine_stats(parts[::-1])
    for merged in (left, right):
        for a, b in zip(merged, whole, strict=True):
            assert_allclose(a.nk, b.nk, rtol=1e-12)
            assert_allclose(a.s1, b.s1, rtol=1e-12, atol=1e-10)
            assert_allclose(a.s2, b.s2, rtol=1e-12, atol=1e-10)
            assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-12)
            assert a.n_samples == b.n_samples == 300



def test_random_resp_does_not_depend_on_chunking():
    whole = kernels.random_resp(42, 0, 100, 3)
    parts = np.vstack([kernels.random_resp(42, s, 10, 3) for s in range(0, 100, 10)])
    assert_allclose(parts, whole)
    assert_allclose(whole.sum(axis=1), 1.0)
    assert whole.std() > 0.1
    # distributed as uniform numbers normalised per row (numpy's generator as the oracle),
    # and not the same for another seed
    big = kernels.random_resp(42, 0, 20_000, 3)
    u = np.random.default_rng(0).uniform(size=(20_000, 3))
    expected = u / u.sum(axis=1, keepdims=True)
    for j in range(3):
        assert stats.ks_2samp(big[:, j], expected[:, j]).pvalue > 1e-3
    assert abs(np.corrcoef(big[:-1, 0], big[1:, 0])[0, 1]) < 0.05  # rows independent
    assert not np.allclose(kernels.random_resp(43, 0, 100, 3), whole)


# Regressions found by the property tests (tests/test_properties.py)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_a_row_beyond_float64_under_every_component_has_log_density_minus_inf(covariance_type):
    p = random_params(covariance_type, n_features=2)
    X = np.array([[1e200, -1e200], [1.0, 1.0]])
    expected = special.logsumexp(
        [stats.multivariate_normal(p.means[k], full_covariances(p, 2)[k]).logpdf(X[1])
         + np.log(p.weights[k]) for k in range(3)])
    log_norm, _ = kernels.log_prob_resp(kernels.estimate_weighted_log_prob(X, p))
    for density in (log_norm, kernels.score_chunk(X, p, "score_samples")):
        assert density[0] == -np.inf  # was -699.3 (-700 + log 2 of the clipped terms)
        assert_allclose(density[1], expected, rtol=1e-12)
    assert kernels.chunk_log_likelihood(X, [p])[0].log_likelihood == -np.inf
    assert not np.isfinite(kernels.chunk_stats(X, [p])[0].s2).all()  # the caller reports it


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize(("x", "mean", "sigma"), [
    (1.5e155, 0.0, 1e150),   # (x - mu)**2 overflows, ((x - mu) / sigma)**2 does not
    (1e300, 1e300, 1e-10),   # x / sigma and mu / sigma overflow, (x - mu) / sigma does not
])
def test_distances_are_whitened_before_they_are_squared(covariance_type, x, mean, sigma):
    model = covariance.get(covariance_type)
    cov = {"full": np.eye(2)[None], "tied": np.eye(2), "diag": np.ones((1, 2)),
           "spherical": np.ones(1)}[covariance_type] * sigma**2
    p = kernels.Params(covariance_type, np.ones(1), np.full((1, 2), mean),
                       model.precisions_cholesky(cov), cov, np.zeros(2))
    X = np.array([[x, mean]])
    expected = stats.multivariate_normal(p.means[0], np.eye(2) * sigma**2).logpdf(X)
    assert np.isfinite(expected)
    assert_allclose(kernels.score_chunk(X, p, "score_samples"), [expected], rtol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_rows_without_responsibility_do_not_spoil_the_statistics(covariance_type):
    X = np.array([[0.0], [1.0], [2e160]])
    resp = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    model = covariance.get(covariance_type)
    cov = np.ones(model.shape(2, 1))
    p = kernels.Params(covariance_type, np.full(2, 0.5), np.array([[0.5], [2e160]]),
                       model.precisions_cholesky(cov), cov, np.zeros(1))
    s = kernels.responsibility_stats(X, p, lambda xs, start: resp[start:start + len(xs)])
    assert_allclose(s.s2.reshape(2), [0.5, 0.0])  # was NaN (0 * inf) for 'diag', 'spherical'


def _one_component(covariance_type, X, mean):
    model = covariance.get(covariance_type)
    cov = np.ones(model.shape(1, X.shape[1]))
    return kernels.Params(covariance_type, np.ones(1), np.atleast_2d(mean),
                          model.precisions_cholesky(cov), cov, np.zeros(X.shape[1]))


def _m_step(covariance_type, X, mean, reg_covar):
    p = _one_component(covariance_type, X, mean)
    s = kernels.responsibility_stats(X, p, lambda xs, start: np.ones((len(xs), 1)))
    return kernels.params_from_stats(s, p, reg_covar)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_m_step_refuses_moments_beyond_float64_and_says_to_scale(covariance_type):
    X = np.array([[-1e200], [1e200]])
    with pytest.raises(kernels.CovarianceError,
                       match=r"covariance of component 0 \(covariance_type='[a-z]+'\)|"
                             r"covariance \(covariance_type='tied'\)") as info:
        _m_step(covariance_type, X, [0.0], 1e-6)  # was scipy's ValueError, or a warning
    assert "is not a finite float64" in str(info.value)
    assert "Scale the input data" in str(info.value)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize(("X", "mean"), [
    # identical rows, seen from a mean that moved: the variance is rounding noise
    (np.full((3, 1), -0.6232744625373522), [0.1239779380417308]),
    # a precision (1 / variance) beyond float64
    (np.array([[1e-160], [2e-160], [3e-160]]), [2e-160]),
    # a spread below the resolution at 1e168, where (64 eps x 1e168)**2 overflows
    (np.array([[1e168], [1e168 + 1e153]]), [1e168]),
])
def test_m_step_refuses_variances_below_the_resolution(covariance_type, X, mean):
    with pytest.raises(kernels.CovarianceError, match="ill-defined empirical covariance"):
        _m_step(covariance_type, X, mean, 0.0)  # was a variance of rounding noise, or a warning
