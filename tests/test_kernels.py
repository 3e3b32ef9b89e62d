"""The pure-numpy kernels against independent references (scipy, numpy)."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import special, stats

from daskgmm import kernels

from .conftest import COVARIANCE_TYPES, random_params


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
