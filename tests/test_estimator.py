"""daskgmm.GaussianMixture against scikit-learn's GaussianMixture (the oracle)."""

import re
from contextlib import nullcontext

import dask.array as da
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from daskgmm import GaussianMixture

from .conftest import COVARIANCE_TYPES, make_blobs

RTOL = 1e-6


def sk_start(X, covariance_type, n_components=3, seed=0):
    """Initial parameters from a short scikit-learn fit, to start both fits the same way."""
    sk = SkGaussianMixture(
        n_components, covariance_type=covariance_type, max_iter=1, random_state=seed,
        init_params="random_from_data",
    )
    with pytest.warns(ConvergenceWarning):
        sk.fit(X)
    return dict(weights_init=sk.weights_, means_init=sk.means_, precisions_init=sk.precisions_)


def assert_same_model(ours, ref, rtol=RTOL):
    assert_allclose(ours.weights_, ref.weights_, rtol=rtol)
    assert_allclose(ours.means_, ref.means_, rtol=rtol, atol=1e-9)
    assert_allclose(ours.covariances_, ref.covariances_, rtol=rtol, atol=1e-12)
    assert_allclose(ours.precisions_, ref.precisions_, rtol=rtol, atol=1e-12)
    assert_allclose(ours.precisions_cholesky_, ref.precisions_cholesky_, rtol=rtol, atol=1e-12)
    assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=rtol)
    assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=rtol)
    assert ours.n_iter_ == ref.n_iter_
    assert ours.converged_ == ref.converged_


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_same_fit_as_sklearn_from_same_start(blobs, covariance_type):
    start = sk_start(blobs, covariance_type)
    kw = dict(covariance_type=covariance_type, tol=1e-6, max_iter=500, **start)
    ref = SkGaussianMixture(3, **kw).fit(blobs)
    ours = GaussianMixture(3, chunk_rows=128, **kw).fit(blobs)
    assert_same_model(ours, ref)
    assert_array_equal(ours.predict(blobs), ref.predict(blobs))
    assert_allclose(ours.predict_proba(blobs), ref.predict_proba(blobs), rtol=RTOL, atol=1e-12)
    assert_allclose(ours.score_samples(blobs), ref.score_samples(blobs), rtol=RTOL)
    assert_allclose(ours.score(blobs), ref.score(blobs), rtol=RTOL)
    assert_allclose(ours.bic(blobs), ref.bic(blobs), rtol=1e-9)
    assert_allclose(ours.aic(blobs), ref.aic(blobs), rtol=1e-9)


# scikit-learn's 'tied' estimate from k singleton rows ('k-means++', 'random_from_data')
# adds the second moments of every row; daskgmm uses the k rows only, so those starts differ.
SEEDED = [
    (c, i) for c in COVARIANCE_TYPES for i in ("kmeans", "k-means++", "random_from_data")
    if c != "tied" or i == "kmeans"
]


@pytest.mark.parametrize(("covariance_type", "init_params"), SEEDED)
def test_same_fit_as_sklearn_from_same_seed(blobs, covariance_type, init_params):
    """Data smaller than init_sample_size: the seed is consumed exactly as scikit-learn does."""
    kw = dict(covariance_type=covariance_type, tol=1e-6, max_iter=500, n_init=2,
              init_params=init_params, random_state=7)
    ref = SkGaussianMixture(3, **kw).fit(blobs)
    ours = GaussianMixture(3, chunk_rows=200, **kw).fit(blobs)
    assert_same_model(ours, ref)
    assert_array_equal(ours.predict(blobs), ref.predict(blobs))


def test_restarts_match_sklearn(blobs):
    ours = GaussianMixture(3, n_init=4, tol=1e-6, random_state=0).fit(blobs)
    ref = SkGaussianMixture(3, n_init=4, tol=1e-6, random_state=0).fit(blobs)
    assert_same_model(ours, ref)


def test_passes_equal_slowest_restart(blobs):
    """n_init restarts advance in one pass per iteration: passes = iterations of the slowest."""
    rs = np.random.RandomState(3)  # consumed restart after restart, as within one fit
    kw = dict(tol=1e-4, max_iter=1000, init_params="random_from_data")
    iters = [SkGaussianMixture(3, random_state=rs, **kw).fit(blobs).n_iter_ for _ in range(3)]
    assert len(set(iters)) > 1
    both = GaussianMixture(3, n_init=3, random_state=3, **kw).fit(blobs)
    assert both.n_passes_ == max(iters)  # in-memory sample: no initialisation pass


def test_chunking_invariance():
    X = make_blobs(3000, 4, 3, seed=1)
    fits = [
        GaussianMixture(3, tol=1e-8, random_state=0, init_params="random",
                        chunk_rows=None).fit(da.from_array(X, chunks=(rows, 4)))
        for rows in (3000, 217, 1000)
    ]
    for other in fits[1:]:
        assert other.n_iter_ == fits[0].n_iter_
        for name in ("weights_", "means_", "covariances_"):
            assert_allclose(getattr(other, name), getattr(fits[0], name), rtol=1e-9, atol=1e-12)
        assert_allclose(other.lower_bound_, fits[0].lower_bound_, rtol=1e-9)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_large_offset_fits_like_centred(covariance_type):
    X = make_blobs(2000, 3, 3, seed=2, spread=3.0)
    kw = dict(covariance_type=covariance_type, tol=1e-8, max_iter=2000, random_state=0)
    centred = GaussianMixture(3, **kw).fit(X)
    shifted = GaussianMixture(3, **kw).fit(X + 1e6)
    assert shifted.n_iter_ == centred.n_iter_
    assert_allclose(shifted.means_ - 1e6, centred.means_, atol=1e-7)
    assert_allclose(shifted.covariances_, centred.covariances_, rtol=1e-7)
    assert_allclose(shifted.lower_bound_, centred.lower_bound_, rtol=1e-9)
    if covariance_type != "full":
        return  # scikit-learn's uncentred diag/spherical/tied moments lose ~1e-4 at this offset
    # the offset data is also what scikit-learn fits from the same start
    start = sk_start(X + 1e6, covariance_type)
    kw = dict(covariance_type=covariance_type, tol=1e-8, max_iter=2000, **start)
    ref = SkGaussianMixture(3, **kw).fit(X + 1e6)
    ours = GaussianMixture(3, **kw).fit(X + 1e6)
    assert_allclose(ours.means_, ref.means_, rtol=1e-12)
    assert_allclose(ours.covariances_, ref.covariances_, rtol=1e-6)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_tight_clusters_far_apart_keep_their_variance(covariance_type):
    """Moments are centred on each component's mean: spread 1e-2 at +-1e5 is exact."""
    rng = np.random.default_rng(8)
    a = 1e5 + 1e-2 * rng.normal(size=(500, 2))
    b = -1e5 + 1e-2 * rng.normal(size=(700, 2)) @ np.array([[1.0, 0.5], [0.0, 1.0]])
    X = np.vstack([a, b])
    cov_a, cov_b = np.cov(a.T, bias=True), np.cov(b.T, bias=True)
    expected = {
        "full": np.stack([cov_a, cov_b]),
        "tied": (500 * cov_a + 700 * cov_b) / 1200,
        "diag": np.stack([np.diag(cov_a), np.diag(cov_b)]),
        "spherical": np.array([np.diag(cov_a).mean(), np.diag(cov_b).mean()]),
    }[covariance_type]
    gm = GaussianMixture(2, covariance_type=covariance_type, reg_covar=0.0, max_iter=1,
                         means_init=[a.mean(axis=0), b.mean(axis=0)], random_state=0)
    with pytest.warns(ConvergenceWarning) as seen:
        gm.fit(da.from_array(X, chunks=(100, 2)))
    assert seen[0].filename == __file__  # shown at the user's call, not inside daskgmm
    assert_allclose(gm.covariances_, expected, rtol=1e-6)
    assert_allclose(gm.means_, [a.mean(axis=0), b.mean(axis=0)], rtol=1e-12)


def test_dask_input_gives_lazy_output_chunked_like_input(blobs):
    X = da.from_array(blobs, chunks=(100, 3))
    gm = GaussianMixture(3, random_state=0).fit(X)
    for out in (gm.predict(X), gm.score_samples(X), gm.predict_proba(X), gm.fit_predict(X)):
        assert isinstance(out, da.Array)
        assert out.chunks[0] == X.chunks[0]
    assert gm.predict_proba(X).shape == (900, 3)
    assert_array_equal(gm.predict(X).compute(), gm.predict(blobs))
    assert isinstance(gm.predict(blobs), np.ndarray)


def test_fit_predict_matches_sklearn_and_predict(blobs):
    start = sk_start(blobs, "full")
    for max_iter in (1, 2, 500):
        kw = dict(max_iter=max_iter, tol=1e-6, **start)
        ref = SkGaussianMixture(3, **kw)
        ours = GaussianMixture(3, **kw)
        with pytest.warns(ConvergenceWarning) if max_iter < 500 else nullcontext():
            expected = ref.fit_predict(blobs)
        with pytest.warns(ConvergenceWarning) if max_iter < 500 else nullcontext():
            labels = ours.fit_predict(blobs)
        assert_array_equal(labels, expected)
        assert_array_equal(ours.predict(blobs), labels)


def test_convergence_warning_and_max_iter_zero(blobs):
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        gm = GaussianMixture(3, max_iter=2, tol=0.0, random_state=0).fit(blobs)
    assert gm.n_iter_ == 2 and not gm.converged_
    ref = SkGaussianMixture(3, max_iter=0, random_state=0).fit(blobs)
    ours = GaussianMixture(3, max_iter=0, random_state=0).fit(blobs)
    assert ours.n_iter_ == 0 and ours.lower_bound_ == -np.inf
    assert_allclose(ours.means_, ref.means_, rtol=1e-9)
    # max_iter=0 from given precisions: covariances_ follow the precisions, never stale
    precisions = np.stack([np.eye(3) * (i + 1.0) for i in range(3)])
    ours = GaussianMixture(3, max_iter=0, precisions_init=precisions, random_state=0)
    ours.fit(blobs)
    assert_allclose(ours.covariances_, np.linalg.inv(precisions), rtol=1e-12)
    ours.set_params(precisions_init=precisions * 2).fit(blobs)
    assert_allclose(ours.covariances_, np.linalg.inv(precisions * 2), rtol=1e-12)


def test_warm_start_matches_sklearn(blobs):
    start = sk_start(blobs, "full")
    kw = dict(warm_start=True, max_iter=3, tol=1e-12, **start)
    ref = SkGaussianMixture(3, **kw)
    ours = GaussianMixture(3, **kw)
    for _ in range(3):
        with pytest.warns(ConvergenceWarning):
            ref.fit(blobs)
        with pytest.warns(ConvergenceWarning):
            ours.fit(blobs)
        assert_same_model(ours, ref)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_sample_matches_sklearn(blobs, covariance_type):
    start = sk_start(blobs, covariance_type)
    kw = dict(covariance_type=covariance_type, random_state=5, **start)
    ref = SkGaussianMixture(3, **kw).fit(blobs)
    ours = GaussianMixture(3, **kw).fit(blobs)
    Xr, yr = ref.sample(50)
    Xo, yo = ours.sample(50)
    assert_array_equal(yo, yr)
    assert_allclose(Xo, Xr, rtol=1e-6)


def test_not_fitted():
    with pytest.raises(NotFittedError):
        GaussianMixture().predict(np.zeros((3, 2)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_input_names_chunk_and_rows(blobs, bad):
    X = blobs.copy()
    X[437, 1] = bad
    with pytest.raises(ValueError, match=r"NaN or infinity: chunk 4 of dask array, rows 400 "
                                         r"to 499, first at row 437, column 1"):
        GaussianMixture(2, random_state=0, init_params="random", chunk_rows=None).fit(
            da.from_array(X, chunks=(100, 3))
        )
    for init_params in ("kmeans", "k-means++", "random_from_data"):  # found in the sample
        with pytest.raises(ValueError, match=r"chunk 4 of dask array, rows 400 to 499, first "
                                             r"at row 437, column 1"):
            GaussianMixture(2, init_params=init_params, chunk_rows=None).fit(
                da.from_array(X, chunks=(100, 3))
            )
    many_bad = np.vstack([X[:437], np.tile(X[437], (1000, 1))])  # rows 437.. are bad
    with pytest.raises(ValueError, match=r"NaN or infinity: chunk (\d+) of dask array, rows "
                                         r"(\d+) to (\d+), first at row (\d+), column 1") as err:
        GaussianMixture(2, init_sample_size=50, chunk_rows=None, random_state=0).fit(
            da.from_array(many_bad, chunks=(100, 3))  # a 50-row sample of 1437 rows
        )
    chunk, start, stop, row = map(int, re.search(r"chunk (\d+) .* rows (\d+) to (\d+), first "
                                                  r"at row (\d+)", str(err.value)).groups())
    assert (start, stop) == (100 * chunk, min(100 * chunk + 99, 1436))
    assert 437 <= row and start <= row <= stop
    gm = GaussianMixture(2, random_state=0).fit(blobs)
    with pytest.raises(ValueError, match=r"rows 400 to 499, first at row 437, column 1"):
        gm.score_samples(da.from_array(X, chunks=(100, 3))).compute()


def test_degenerate_data_fits_with_reg_covar():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=500), np.full(500, 3.0)])  # a constant column
    X = np.vstack([X, np.repeat(X[:5], 20, axis=0)])  # duplicated points
    for covariance_type in COVARIANCE_TYPES:
        gm = GaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X)
        ref = SkGaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X)
        assert_allclose(gm.lower_bound_, ref.lower_bound_, rtol=1e-6)


def test_overflowing_values_are_located():
    X = np.vstack([np.random.default_rng(0).normal(size=(300, 2)), [[1e300, 1e300]]])
    with pytest.raises(ValueError, match=r"Numerical overflow in chunk 3 of dask array, rows "
                                         r"300 to 300.*Scale the input data"):
        GaussianMixture(2, init_params="random", chunk_rows=None).fit(
            da.from_array(X, chunks=(100, 2))
        )


def test_collapsed_component_error_names_component_and_fix():
    X = np.vstack([np.zeros((50, 2)), np.ones((50, 2))])
    means = np.array([[0.0, 0.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match=r"ill-defined empirical covariance \(component 0, "
                                         r"covariance_type='full'\).*increase reg_covar"):
        GaussianMixture(2, reg_covar=0.0, means_init=means, random_state=0).fit(X)


def test_verbose_reports_iterations_and_convergence(blobs, capsys):
    GaussianMixture(3, n_init=2, verbose=2, verbose_interval=1, random_state=0).fit(blobs)
    out = capsys.readouterr().out
    assert "Initialization 0" in out and "Initialization 1" in out
    assert "Iteration 1\t time lapse" in out and "ll change" in out
    assert "converged. time lapse" in out and "lower bound" in out


def test_set_fitted_builds_the_model_fit_builds_and_a_refit_drops_the_old_threshold(blobs):
    from daskgmm import FitSummary, Mixture

    gm = GaussianMixture(3, random_state=0).fit(blobs).set_threshold(blobs)
    mixture = Mixture("full", gm.weights_, gm.means_, gm.precisions_cholesky_, gm.covariances_)
    built = GaussianMixture(3).set_fitted(mixture, FitSummary(gm.n_iter_, True, gm.lower_bound_))
    assert_allclose(built.score_samples(blobs), gm.score_samples(blobs), rtol=1e-14)
    assert_allclose(built.precisions_, gm.precisions_, rtol=1e-14)
    assert built.n_features_in_ == 3 and built.n_iter_ == gm.n_iter_
    with pytest.raises(ValueError, match=r"The mixture has 3 components of covariance_type "
                                         r"'full'; this estimator has n_components=2"):
        GaussianMixture(2).set_fitted(mixture)
    assert gm.threshold_n_passes_ == 1
    gm.set_params(n_components=2).fit(blobs)  # new parameters: the old threshold is gone
    assert not hasattr(gm, "threshold_") and not hasattr(gm, "threshold_n_passes_")
    with pytest.raises(ValueError, match="no anomaly threshold"):
        gm.anomaly_scores(blobs)
