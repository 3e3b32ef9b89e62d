"""The pure-numpy kernels against independent references (scipy, numpy)."""

import dask
import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import special, stats

from daskgmm import covariance, kernels, passes

from .conftest import COVARIANCE_TYPES


def random_params(covariance_type, n_components=3, n_features=4, seed=0):
    rng = np.random.default_rng(seed)
    if covariance_type == "full":
        A = rng.normal(size=(n_components, n_features, n_features))
        cov = A @ A.transpose(0, 2, 1) + np.eye(n_features)
    elif covariance_type == "tied":
        A = rng.normal(size=(n_features, n_features))
        cov = A @ A.T + np.eye(n_features)
    elif covariance_type == "diag":
        cov = rng.uniform(0.5, 2.0, size=(n_components, n_features))
    else:
        cov = rng.uniform(0.5, 2.0, size=n_components)
    weights = rng.dirichlet(np.ones(n_components))
    means = rng.normal(0, 3, size=(n_components, n_features))
    prec = covariance.get(covariance_type).precisions_cholesky(cov)
    return kernels.Params(covariance_type, weights, means, prec, cov, np.zeros(n_features))


def full_covariances(params, n_features):
    cov = params.covariances
    k = params.n_components
    return {
        "full": lambda: cov,
        "tied": lambda: np.repeat(cov[None], k, axis=0),
        "diag": lambda: np.stack([np.diag(c) for c in cov]),
        "spherical": lambda: np.stack([np.eye(n_features) * c for c in cov]),
    }[params.covariance_type]()


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_weighted_log_prob_matches_scipy(covariance_type):
    p = random_params(covariance_type)
    X = np.random.default_rng(1).normal(0, 3, size=(10, 4))
    covs = full_covariances(p, 4)
    expected = np.column_stack([
        stats.multivariate_normal(p.means[k], covs[k]).logpdf(X) + np.log(p.weights[k])
        for k in range(3)
    ])
    assert_allclose(kernels.estimate_weighted_log_prob(X, p), expected, rtol=1e-10)


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


def test_precision_cholesky_round_trip():
    for covariance_type in COVARIANCE_TYPES:
        p = random_params(covariance_type)
        model = covariance.get(covariance_type)
        precisions = model.precisions(p.precisions_cholesky)
        again = model.precisions_cholesky_from_precisions(precisions)
        assert_allclose(model.precisions(again), precisions)
        if covariance_type in ("full", "tied"):
            inv = np.linalg.inv(p.covariances)
            assert_allclose(precisions, inv, rtol=1e-9)


def test_tree_depth_is_logarithmic():
    parts = [dask.delayed(i) for i in range(64)]
    root, depth = passes.tree_reduce(parts, sum, split_every=4)
    assert depth == 3
    assert root.compute() == sum(range(64))
    _, depth = passes.tree_reduce(parts, sum, split_every=8)
    assert depth == 2
    with pytest.raises(ValueError, match="split_every"):
        passes.tree_reduce(parts, sum, split_every=1)


def test_random_resp_does_not_depend_on_chunking():
    whole = kernels.random_resp(42, 0, 100, 3)
    parts = np.vstack([kernels.random_resp(42, s, 10, 3) for s in range(0, 100, 10)])
    assert_allclose(parts, whole)
    assert_allclose(whole.sum(axis=1), 1.0)
    assert 0.3 < whole.mean() * 3 < 1.7  # spread over (0, 1), not constant
    assert whole.std() > 0.1
