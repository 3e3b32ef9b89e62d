"""select_model: a grid of candidates in shared data passes, against scikit-learn's BIC."""

import dask.array as da
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import daskgmm
from daskgmm.synthetic import mixture_parameters, sample_mixture

from .conftest import COVARIANCE_TYPES


def test_grid_matches_sklearn_bic_and_shares_passes(blobs):
    kw = dict(random_state=0, tol=1e-6, max_iter=500)
    sel = daskgmm.select_model(blobs, n_components=range(1, 5), covariance_types=COVARIANCE_TYPES,
                               **kw)
    table = sel.table_
    assert len(table) == 16
    iters = []
    for row in table.itertuples():
        ref = SkGaussianMixture(row.n_components, covariance_type=row.covariance_type,
                                **kw).fit(blobs)
        assert_allclose(row.bic, ref.bic(blobs), rtol=1e-9)
        assert_allclose(row.aic, ref.aic(blobs), rtol=1e-9)
        assert_allclose(row.log_likelihood, ref.score(blobs), rtol=1e-9)
        assert row.n_parameters == ref._n_parameters()  # noqa: SLF001 - the oracle's count
        assert row.n_iter == ref.n_iter_ and row.converged == ref.converged_
        iters.append(ref.n_iter_)
    # one hard-assignment pass (the data fit in the k-means sample), one pass per
    # iteration of the slowest candidate, one pass scoring the final parameters
    assert sel.n_passes_ == 1 + max(iters) + 1
    best = table.loc[table.bic.idxmin()]
    assert (sel.best_.n_components, sel.best_.covariance_type) == (
        best.n_components, best.covariance_type)
    ref = SkGaussianMixture(int(best.n_components), covariance_type=best.covariance_type,
                            **kw).fit(blobs)
    assert_allclose(sel.best_.means_, ref.means_, rtol=1e-6)
    assert_array_equal(sel.best_.predict(blobs), ref.predict(blobs))
    assert_allclose(sel.best_.bic(blobs), ref.bic(blobs), rtol=1e-9)


def test_finds_the_true_number_of_components():
    weights, means, factors = mixture_parameters(4, 5, seed=11, separation=8.0)
    X, _ = sample_mixture(20_000, weights, means, factors, np.random.default_rng(0))
    sel = daskgmm.select_model(da.from_array(X, chunks=(2_000, 4)), n_components=range(1, 9),
                               covariance_types=["full", "diag"], random_state=0)
    assert sel.best_.n_components == 5
    assert sel.table_.bic.idxmin() == sel.table_.index[
        (sel.table_.n_components == 5) & (sel.table_.covariance_type == "full")][0]
    assert sel.n_passes_ < 2 * 16  # not one set of passes per candidate


def test_grid_errors(blobs):
    with pytest.raises(ValueError, match="grid is empty"):
        daskgmm.select_model(blobs, n_components=[])
    with pytest.raises(ValueError, match=r"n_components \[1000\] exceed the 900 rows"):
        daskgmm.select_model(blobs, n_components=[2, 1000])
    with pytest.raises(ValueError, match=r"Unknown covariance type\(s\) \['ful'\]"):
        daskgmm.select_model(blobs, n_components=[2], covariance_types=["ful"])
    with pytest.raises(ValueError, match="criterion must be one of"):
        daskgmm.select_model(blobs, n_components=[2], criterion="icl")


def test_seconds_are_each_candidates_own_measured_compute_time(cluster_client):
    """A costly candidate (full, 12 components) and a cheap one (spherical, 1) share every
    pass; each one's seconds are its own kernels' time on the workers, not a share."""
    import time

    X = np.random.default_rng(0).normal(size=(60_000, 8))
    lazy = da.from_array(X, chunks=(7_500, 8))
    started = time.perf_counter()
    sel = daskgmm.select_model(lazy, [1, 12], ["full", "spherical"], random_state=0,
                               tol=0.0, max_iter=6)
    wall = time.perf_counter() - started
    table = sel.table_.set_index(["n_components", "covariance_type"])
    assert (table.n_iter == 6).all()  # every candidate took part in the same 6 passes
    costly, cheap = table.seconds[(12, "full")], table.seconds[(1, "spherical")]
    assert costly > 3 * cheap > 0  # an equal share would make them equal
    threads = sum(cluster_client.nthreads().values())
    assert table.seconds.sum() <= wall * threads
