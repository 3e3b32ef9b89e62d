"""The compiled one-pass E-step of 'diag' and 'spherical' (daskgmm.covariance.compiled)
against the numpy path, the reference (DASKGMM_KERNELS=numpy)."""

import re

import dask.array as da
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from daskgmm import GaussianMixture, covariance, kernels
from daskgmm.covariance import _base

from .conftest import random_params
from .test_estimator import assert_same_model, sk_start

pytest.importorskip("numba")
from daskgmm.covariance import compiled  # noqa: E402

VARIANCE_TYPES = ["diag", "spherical"]


@pytest.fixture
def numpy_kernels(monkeypatch):
    """Runs the block under DASKGMM_KERNELS=numpy, the reference path."""

    def run(fn, *args, **kwargs):
        with monkeypatch.context() as m:
            m.setenv(_base.KERNELS_VARIABLE, "numpy")
            return fn(*args, **kwargs)

    return run


def one_pass(p):
    f = p.model.fused_e_step(p.weights, p.means, p.precisions_cholesky, p.shift)
    assert isinstance(f, compiled.OnePass)
    return f


def assert_same_stats(fused, ref, rtol=1e-12):
    nk, s1, s2, log_likelihood = fused
    scale = np.abs(ref.s1).max()
    assert_allclose(nk, ref.nk, rtol=rtol, atol=rtol * ref.nk.max())
    assert_allclose(s1, ref.s1, rtol=rtol, atol=rtol * scale)
    assert_allclose(s2, ref.s2, rtol=rtol, atol=rtol * np.abs(ref.s2).max())
    assert_allclose(log_likelihood, ref.log_likelihood, rtol=rtol)


def assert_same_scores(X, p, numpy_kernels, rtol=1e-12):
    f = one_pass(p)
    log_density, component, responsibility, proba = f.rows(X, proba=True)
    ref_proba = numpy_kernels(kernels.score_chunk, X, p, "predict_proba")
    assert_allclose(log_density, numpy_kernels(kernels.score_chunk, X, p, "score_samples"),
                    rtol=rtol)
    assert_array_equal(component, numpy_kernels(kernels.score_chunk, X, p, "predict"))
    assert_allclose(responsibility, ref_proba.max(axis=1), rtol=rtol)
    assert_allclose(proba, ref_proba, rtol=1e-11, atol=1e-300)
    rec = kernels.score_rows(X, p, threshold=-5.0)
    ref = numpy_kernels(kernels.score_rows, X, p, -5.0)
    for name in ("log_density", "anomaly_score", "responsibility"):
        assert_allclose(rec[name], ref[name], rtol=rtol)
    assert_array_equal(rec["component"], ref["component"])


def test_constants_are_the_numpy_paths():
    assert compiled._LOG_TINY == kernels._LOG_TINY  # noqa: SLF001
    assert compiled._LOG_RESP_ZERO == kernels._LOG_RESP_ZERO  # noqa: SLF001


@pytest.mark.parametrize("covariance_type", VARIANCE_TYPES)
@pytest.mark.parametrize(("n_components", "n_features"), [(1, 1), (2, 4), (8, 16), (5, 64),
                                                          (32, 3)])
def test_fused_matches_numpy(covariance_type, n_components, n_features, numpy_kernels):
    p = random_params(covariance_type, n_components, n_features, seed=n_components)
    rng = np.random.default_rng(n_features)
    X = rng.normal(0, 3, size=(1003, n_features))  # not a multiple of the tile or lanes
    (ref,) = numpy_kernels(kernels.chunk_stats, X, [p])
    assert_same_stats(one_pass(p).stats(X), ref)
    (through_kernels,) = kernels.chunk_stats(X, [p])
    assert_same_stats((through_kernels.nk, through_kernels.s1, through_kernels.s2,
                       through_kernels.log_likelihood), ref)
    assert_same_scores(X, p, numpy_kernels)


@pytest.mark.parametrize("covariance_type", VARIANCE_TYPES)
def test_fused_matches_numpy_with_sample_weights(covariance_type, numpy_kernels):
    p = random_params(covariance_type, 4, 5)
    rng = np.random.default_rng(0)
    X = rng.normal(0, 3, size=(700, 5))
    X[3] = 1e200  # underflows, but weighs 0
    w = rng.uniform(0, 3, size=700)
    w[[3, 10]] = 0.0
    nk, s1, s2, log_likelihood = one_pass(p).stats(X, w)
    # the reference: the numpy path's responsibilities, weighted by hand
    log_norm, log_resp = kernels.log_prob_resp(kernels.estimate_weighted_log_prob(X, p))
    resp = np.where(log_resp < kernels._LOG_RESP_ZERO, 0.0, np.exp(log_resp)) * w[:, None]  # noqa: SLF001
    keep = w > 0
    assert_allclose(log_likelihood, np.dot(w[keep], log_norm[keep]), rtol=1e-12)
    assert_allclose(nk, resp.sum(axis=0), rtol=1e-12)
    assert_allclose(s1, resp[keep].T @ X[keep], rtol=1e-12, atol=1e-10)
    d2 = (X[keep][:, None, :] - p.means[None]) ** 2
    assert_allclose(s2, np.einsum("nk,nkd->kd", resp[keep], d2), rtol=1e-12)


@pytest.mark.parametrize("covariance_type", VARIANCE_TYPES)
def test_tight_clusters_far_apart_are_centred_exactly(covariance_type, numpy_kernels):
    """Means at 1e6 with spread 1e-3, and no engine shift: exact centring keeps s2."""
    rng = np.random.default_rng(3)
    n_components, n_features = 4, 3
    means = 1e6 + rng.normal(0, 10, size=(n_components, n_features))
    labels = rng.integers(0, n_components, 2000)
    X = means[labels] + 1e-3 * rng.normal(size=(2000, n_features))
    model = covariance.get(covariance_type)
    cov = np.full(model.shape(n_components, n_features), 1e-6)
    p = kernels.Params(covariance_type, np.full(n_components, 0.25), means,
                       model.precisions_cholesky(cov), cov, np.zeros(n_features))
    (ref,) = numpy_kernels(kernels.chunk_stats, X, [p])
    assert_same_stats(one_pass(p).stats(X), ref, rtol=1e-11)
    # and the variances are right: about 1e-6 each, as the data's
    nk, _, s2, _ = one_pass(p).stats(X)
    expected = [((X[labels == k] - means[k]) ** 2).sum(axis=0) for k in range(n_components)]
    assert_allclose(s2, expected, rtol=1e-9)
    assert_allclose(nk, np.bincount(labels, minlength=n_components))
    assert_same_scores(X, p, numpy_kernels, rtol=1e-11)


@pytest.mark.parametrize("covariance_type", VARIANCE_TYPES)
def test_rows_whose_density_underflows(covariance_type, numpy_kernels):
    p = random_params(covariance_type, 3, 2)
    X = np.array([[1e200, -1e200], [1.0, 1.0], [1e30, 0.0], [-1e160, 3.0]])
    f = one_pass(p)
    log_density, component, responsibility, proba = f.rows(X, proba=True)
    assert log_density[0] == log_density[3] == -np.inf
    assert np.isfinite(log_density[1])
    assert_allclose(proba[0], np.full(3, 1 / 3), rtol=1e-12)  # equal responsibilities
    assert_same_scores(X, p, numpy_kernels)
    nk, s1, s2, log_likelihood = f.stats(X)
    (ref,) = numpy_kernels(kernels.chunk_stats, X, [p])
    assert log_likelihood == ref.log_likelihood == -np.inf
    assert_allclose(nk, ref.nk, rtol=1e-12)
    assert not np.isfinite(s2).all() and not np.isfinite(ref.s2).all()  # the caller reports it
    assert_array_equal(np.isfinite(s2), np.isfinite(ref.s2))


@pytest.mark.parametrize("covariance_type", VARIANCE_TYPES)
@pytest.mark.parametrize(("x", "mean", "sigma"), [
    (1.5e155, 0.0, 1e150),   # (x - mu)**2 overflows, ((x - mu) / sigma)**2 does not
    (1e300, 1e300, 1e-10),   # x / sigma and mu / sigma overflow, (x - mu) / sigma does not
])
def test_distances_whitened_before_squaring(covariance_type, x, mean, sigma, numpy_kernels):
    model = covariance.get(covariance_type)
    cov = np.ones(model.shape(2, 2)) * sigma**2
    p = kernels.Params(covariance_type, np.array([0.5, 0.5]),
                       np.array([[mean, mean], [mean, -mean]]),
                       model.precisions_cholesky(cov), cov, np.zeros(2))
    X = np.array([[x, mean], [mean, mean]])
    assert_same_scores(X, p, numpy_kernels)
    assert np.isfinite(one_pass(p).rows(X)[0]).all()


@pytest.mark.parametrize("covariance_type", VARIANCE_TYPES)
def test_rows_without_responsibility_add_nothing(covariance_type, numpy_kernels):
    """A row far from a mean (its squared difference overflows) with responsibility 0
    there adds 0, not 0 * inf = NaN."""
    model = covariance.get(covariance_type)
    cov = np.ones(model.shape(2, 1))
    p = kernels.Params(covariance_type, np.full(2, 0.5), np.array([[0.5], [2e160]]),
                       model.precisions_cholesky(cov), cov, np.zeros(1))
    X = np.array([[0.0], [1.0], [2e160]] * 5)
    nk, s1, s2, log_likelihood = one_pass(p).stats(X)
    assert np.isfinite(s2).all()
    assert_allclose(s2.reshape(2), [2.5, 0.0])
    assert_allclose(nk, [10.0, 5.0])
    (ref,) = numpy_kernels(kernels.chunk_stats, X, [p])
    assert_same_stats((nk, s1, s2, log_likelihood), ref)


@pytest.mark.parametrize("covariance_type", VARIANCE_TYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_rows_give_a_nonfinite_log_likelihood(covariance_type, bad,
                                                        numpy_kernels):
    p = random_params(covariance_type, 3, 4)
    X = np.random.default_rng(0).normal(size=(600, 4))
    X[437, 1] = bad
    nk, s1, s2, log_likelihood = one_pass(p).stats(X)
    (ref,) = numpy_kernels(kernels.chunk_stats, X, [p])
    assert not np.isfinite(log_likelihood)
    assert np.isnan(log_likelihood) == np.isnan(ref.log_likelihood)
    log_density = one_pass(p).rows(X)[0]
    assert_array_equal(np.isfinite(log_density), np.arange(600) != 437)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_input_is_located_with_the_fused_kernel(blobs, bad):
    X = blobs.copy()
    X[437, 1] = bad
    for covariance_type in VARIANCE_TYPES:
        with pytest.raises(ValueError, match=r"NaN or infinity: chunk 4 of dask array, rows "
                                             r"400 to 499, first at row 437, column 1"):
            GaussianMixture(2, covariance_type=covariance_type, random_state=0,
                            init_params="random", chunk_rows=None).fit(
                da.from_array(X, chunks=(100, 3)))


def test_overflow_is_located_with_the_fused_kernel():
    X = np.vstack([np.random.default_rng(0).normal(size=(300, 2)), [[1e300, 1e300]]])
    for covariance_type in VARIANCE_TYPES:
        with pytest.raises(ValueError, match=r"Numerical overflow in chunk 3 of dask array, "
                                             r"rows 300 to 300.*Scale the input data"):
            GaussianMixture(2, covariance_type=covariance_type, init_params="random",
                            chunk_rows=None).fit(da.from_array(X, chunks=(100, 2)))


@pytest.mark.parametrize("covariance_type", VARIANCE_TYPES)
def test_same_fit_as_sklearn_with_the_fused_kernel(blobs, covariance_type):
    start = sk_start(blobs, covariance_type)
    kw = dict(covariance_type=covariance_type, tol=1e-6, max_iter=200, **start)
    ref = SkGaussianMixture(3, **kw).fit(blobs)
    ours = GaussianMixture(3, **kw).fit(da.from_array(blobs, chunks=(200, 3)))
    assert_same_model(ours, ref)


def test_the_switch(monkeypatch):
    p = random_params("diag")
    monkeypatch.setenv(_base.KERNELS_VARIABLE, "numpy")
    assert p.model.fused_e_step(p.weights, p.means, p.precisions_cholesky, p.shift) is None
    monkeypatch.setenv(_base.KERNELS_VARIABLE, "numba")
    assert one_pass(p) is not None
    monkeypatch.delenv(_base.KERNELS_VARIABLE)
    assert one_pass(p) is not None
    full = random_params("full")
    assert full.model.fused_e_step(full.weights, full.means, full.precisions_cholesky,
                                   full.shift) is None
    monkeypatch.setenv(_base.KERNELS_VARIABLE, "fast")
    with pytest.raises(ValueError, match=re.escape(
            "DASKGMM_KERNELS='fast' is not one of ['auto', 'numba', 'numpy']. Unset it, or "
            "set DASKGMM_KERNELS=numpy")):
        p.model.fused_e_step(p.weights, p.means, p.precisions_cholesky, p.shift)
