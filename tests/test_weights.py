"""Sample weights: integer weights fit, score and select as the rows repeated that many
times (scikit-learn fitting the repeated rows is the oracle), a weight of zero drops a
row, and bad weights are errors naming their chunk and row."""

import re

import dask.array as da
import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import daskgmm
from daskgmm import Checkpoint, GaussianMixture, kernels, passes, select_model
from daskgmm.anomaly import SCORE_QUANTILE_LEVELS
from daskgmm.initialization import draw_sample
from daskgmm.quantiles import RankSketch, WeightedRankSketch, combine_sketches
from daskgmm.sources import as_dataset, with_weights

from .conftest import (
    COVARIANCE_TYPES,
    Crash,
    crash_at,
    make_blobs,
    random_params,
    write_job_config,
)
from .test_estimator import assert_same_model, sk_start

RTOL = 1e-6


@pytest.fixture(scope="module")
def weighted():
    """Rows, integer weights 0 to 4 (a fifth of them 0) and the rows repeated."""
    X = make_blobs(400, 3, 3, seed=5)
    w = np.random.default_rng(1).integers(0, 5, len(X))
    return X, w, np.repeat(X, w, axis=0)


def _inputs(X, w, kind):
    if kind == "numpy":
        return X, w
    # several chunks, the weights chunked otherwise than the rows (aligned by daskgmm)
    return da.from_array(X, chunks=(90, 3)), da.from_array(w, chunks=(130,))


###############################################################################
# The kernels


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_weighted_statistics_are_those_of_repeated_rows(covariance_type):
    p = random_params(covariance_type, n_features=4, seed=2)
    rng = np.random.default_rng(3)
    X = rng.normal(0, 3, size=(500, 4))
    w = rng.integers(0, 4, len(X))
    (weighted,) = kernels.chunk_stats(X, [p], w)
    (repeated,) = kernels.chunk_stats(np.repeat(X, w, axis=0), [p])
    for name in ("nk", "s1", "s2", "log_likelihood"):
        assert_allclose(getattr(weighted, name), getattr(repeated, name), rtol=1e-12,
                        atol=1e-9)
    assert weighted.weight == w.sum() and weighted.n_samples == 500
    (ll,) = kernels.chunk_log_likelihood(X, [p], w)
    assert_allclose(ll.log_likelihood, repeated.log_likelihood, rtol=1e-12)
    centers = X[:3] + 0.5
    hard = kernels.hard_assignment_stats(X, centers, p, w)
    ref = kernels.hard_assignment_stats(np.repeat(X, w, axis=0), centers, p)
    assert_allclose(hard.nk, ref.nk, rtol=1e-12)
    assert_allclose(hard.s2, ref.s2, rtol=1e-12)


def test_zero_weight_row_whose_density_underflows_counts_for_nothing():
    p = random_params("diag", n_features=2, seed=0)
    X = np.array([[0.0, 0.0], [1e200, 1e200]])  # the second: log-density -inf
    (ll,) = kernels.chunk_log_likelihood(X, [p], np.array([1.0, 0.0]))
    (ref,) = kernels.chunk_log_likelihood(X[:1], [p])
    assert ll.log_likelihood == ref.log_likelihood and ll.weight == 1.0


###############################################################################
# Fits against scikit-learn on the repeated rows


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_integer_weights_fit_as_repeated_rows(weighted, covariance_type, kind):
    X, w, R = weighted
    start = sk_start(R, covariance_type)
    kw = dict(covariance_type=covariance_type, tol=1e-6, max_iter=500, **start)
    ref = SkGaussianMixture(3, **kw).fit(R)
    Xin, win = _inputs(X, w, kind)
    ours = GaussianMixture(3, chunk_rows=None if kind == "dask" else 64, **kw).fit(
        Xin, sample_weight=win)
    assert_same_model(ours, ref, rtol=RTOL)
    assert ours.fit_n_samples_ == len(X)
    assert_allclose(ours.score(Xin, sample_weight=win), ref.score(R), rtol=RTOL)
    assert_allclose(ours.bic(Xin, sample_weight=win), ref.bic(R), rtol=RTOL)
    assert_allclose(ours.aic(Xin, sample_weight=win), ref.aic(R), rtol=RTOL)
    # per-row outputs do not depend on weights: the same model's
    scored = ours.score_samples(Xin)
    assert_allclose(scored.compute() if kind == "dask" else scored, ref.score_samples(X),
                    rtol=RTOL)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_weighted_fit_far_from_the_origin_fits_like_centred(weighted, covariance_type):
    X, w, _ = weighted
    start = sk_start(X, covariance_type)
    kw = dict(covariance_type=covariance_type, tol=1e-8, max_iter=500, chunk_rows=90)
    centred = GaussianMixture(3, **kw, **start).fit(X, sample_weight=w * 0.5)
    shifted = GaussianMixture(3, **kw, **{**start, "means_init": start["means_init"] + 1e6})
    shifted.fit(X + 1e6, sample_weight=w * 0.5)
    assert shifted.n_iter_ == centred.n_iter_
    assert_allclose(shifted.means_ - 1e6, centred.means_, atol=1e-7)
    assert_allclose(shifted.covariances_, centred.covariances_, rtol=1e-7)
    assert_allclose(shifted.lower_bound_, centred.lower_bound_, rtol=1e-9)


def test_weights_computed_from_the_same_dask_array(weighted):
    """Weights and rows from one dask array share their reads in a pass's graph."""
    X, w, _ = weighted
    both = da.from_array(np.column_stack([X, w]), chunks=(90, 4))
    kw = dict(tol=1e-8, max_iter=500, random_state=0, init_params="random", chunk_rows=None)
    shared = GaussianMixture(3, **kw).fit(both[:, :3], sample_weight=both[:, 3])
    apart = GaussianMixture(3, **kw).fit(da.from_array(X, chunks=(90, 3)), sample_weight=w)
    assert_same_model(shared, apart, rtol=1e-12)


def test_zero_weights_drop_rows(weighted):
    X, w, _ = weighted
    keep = w > 0
    start = sk_start(X[keep], "full")
    kw = dict(tol=1e-6, max_iter=500, **start)
    ref = SkGaussianMixture(3, **kw).fit(X[keep])
    ours = GaussianMixture(3, chunk_rows=50, **kw).fit(X, sample_weight=keep.astype(float))
    assert_same_model(ours, ref)
    assert_allclose(ours.score(X, sample_weight=keep), ref.score(X[keep]), rtol=RTOL)
    assert_allclose(ours.bic(X, sample_weight=keep), ref.bic(X[keep]), rtol=RTOL)


def test_real_weights_scale_free(weighted):
    """Weights w and c*w give the same model; the lower bound is a weighted mean."""
    X, w, _ = weighted
    start = sk_start(X, "diag")
    kw = dict(covariance_type="diag", tol=1e-8, max_iter=500, chunk_rows=70, **start)
    a = GaussianMixture(3, **kw).fit(X, sample_weight=w * 0.37)
    b = GaussianMixture(3, **kw).fit(X, sample_weight=w)
    assert_same_model(a, b, rtol=1e-9)
    logdens = a.score_samples(X)
    assert_allclose(a.score(X, sample_weight=w * 0.37), np.average(logdens, weights=w),
                    rtol=1e-12)


@pytest.mark.parametrize("init_params", ["kmeans", "random"])
def test_weighted_fit_from_own_initialisation(weighted, init_params):
    """A seeded weighted fit runs and ends at a fixed point of EM on the repeated rows:
    one more scikit-learn iteration from it changes nothing."""
    X, w, R = weighted
    ours = GaussianMixture(3, tol=1e-10, max_iter=1000, random_state=0,
                           init_params=init_params, chunk_rows=100).fit(X, sample_weight=w)
    ref = SkGaussianMixture(3, max_iter=1, tol=0.0, weights_init=ours.weights_,
                            means_init=ours.means_, precisions_init=ours.precisions_)
    with pytest.warns(ConvergenceWarning):  # one iteration
        ref.fit(R)
    assert_allclose(ref.means_, ours.means_, rtol=1e-6, atol=1e-8)
    assert_allclose(ref.weights_, ours.weights_, rtol=1e-6)


def test_weighted_fit_on_a_cluster(weighted, cluster_client):
    X, w, R = weighted
    start = sk_start(R, "full")
    kw = dict(tol=1e-6, max_iter=500, **start)
    ref = SkGaussianMixture(3, **kw).fit(R)
    Xin, win = _inputs(X, w, "dask")
    ours = GaussianMixture(3, chunk_rows=None, cache=False, **kw).fit(Xin, sample_weight=win)
    assert_same_model(ours, ref)
    assert_allclose(ours.bic(Xin, sample_weight=win), ref.bic(R), rtol=RTOL)
    ours.set_threshold(Xin, sample_weight=win, contamination=0.05)
    assert_allclose(ours.threshold_, np.quantile(ref.score_samples(R), 0.05), rtol=RTOL)


###############################################################################
# Checkpoints


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_checkpoint_of_other_weights_is_not_resumed(weighted, tmp_path, caplog, kind):
    X, w, _ = weighted
    Xin, win = _inputs(X, w, kind)
    _, other = _inputs(X, w + 1, kind)
    kw = dict(tol=0.0, max_iter=8, random_state=0, chunk_rows=None)  # never converges
    path = tmp_path / "ckpt"

    def interrupted():
        Checkpoint(path).remove()
        with pytest.raises(Crash):
            GaussianMixture(3, **kw).fit(Xin, sample_weight=win, callback=crash_at(5),
                                         checkpoint=Checkpoint(path, every=1))

    interrupted()
    with pytest.warns(ConvergenceWarning):
        same = GaussianMixture(3, **kw).fit(Xin, sample_weight=win,
                                            checkpoint=Checkpoint(path, every=1))
    assert same.resumed_iteration_ == 4
    for weights in (other, None):
        interrupted()
        with pytest.warns(ConvergenceWarning):
            fit = GaussianMixture(3, **kw).fit(Xin, sample_weight=weights,
                                               checkpoint=Checkpoint(path, every=1))
        assert fit.resumed_iteration_ == 0
    assert "belongs to another fit" in caplog.text


###############################################################################
# Errors


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_bad_numpy_weight_is_located(bad):
    X = make_blobs(300, 2, 2)
    w = np.ones(300)
    w[217] = bad
    gm = GaussianMixture(2, chunk_rows=100)
    msg = (rf"sample_weight holds {re.escape(repr(bad))} at row 217 \(chunk 2 of numpy "
           r"array, rows 200 to 299\): sample weights must be finite and >= 0")
    with pytest.raises(ValueError, match=msg):
        gm.fit(X, sample_weight=w)


@pytest.mark.parametrize("bad", [-2.5, np.nan, -np.inf])
def test_bad_dask_weight_is_located_by_the_pass(bad):
    X = make_blobs(300, 2, 2)
    w = np.ones(300)
    w[131] = bad
    gm = GaussianMixture(2, chunk_rows=None, init_params="random")
    msg = (rf"sample_weight holds {re.escape(repr(bad))} at row 131 \(chunk 1 of dask "
           r"array, rows 100 to 199\)")
    with pytest.raises(ValueError, match=msg):
        gm.fit(da.from_array(X, chunks=(100, 2)), sample_weight=da.from_array(w, chunks=60))


def test_weights_of_the_wrong_shape():
    X = make_blobs(300, 2, 2)
    for w, shown in ((np.ones(299), r"\(299,\)"), (da.ones(301, chunks=100), r"\(301,\)"),
                     (np.ones((300, 1)), r"\(300, 1\)")):
        with pytest.raises(ValueError, match=rf"sample_weight has shape {shown} but the "
                                             r"numpy array has 300 rows: give one weight"):
            GaussianMixture(2).fit(X, sample_weight=w)
    unknown = da.from_array(np.ones(300), chunks=100)
    unknown = unknown[unknown > 0]
    with pytest.raises(ValueError, match=r"unknown chunk sizes.*compute_chunk_sizes"):
        GaussianMixture(2).fit(X, sample_weight=unknown)
    with pytest.raises(ValueError, match=r"non-numeric dtype"):
        GaussianMixture(2).fit(X, sample_weight=np.array(["a"] * 300))


def test_all_zero_weights():
    X = make_blobs(300, 2, 2)
    with pytest.raises(ValueError, match=r"Every sample weight of the numpy array is zero"):
        GaussianMixture(2).fit(X, sample_weight=np.zeros(300))
    with pytest.raises(ValueError, match=r"Every sample weight of the dask array is zero"):
        GaussianMixture(2, init_params="random").fit(
            da.from_array(X, chunks=100), sample_weight=da.zeros(300, chunks=100))
    gm = GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match=r"Every sample weight of the dask array is zero"):
        gm.score(da.from_array(X, chunks=100), sample_weight=da.zeros(300, chunks=100))


def test_weights_travel_chunked_like_the_rows():
    X = make_blobs(300, 2, 2)
    dataset = with_weights(as_dataset(da.from_array(X, chunks=(70, 2)), chunk_rows=None),
                           da.arange(300, chunks=110))
    assert dataset.weights.chunks[0] == dataset.array.chunks[0]
    assert_allclose(dataset.weights.compute(), np.arange(300))


###############################################################################
# Weighted quantiles and thresholds


def test_weighted_sketch_is_numpy_quantile_of_repeated_values():
    rng = np.random.default_rng(4)
    v = rng.normal(size=3000)
    w = rng.integers(0, 5, len(v))
    levels = [0.0, 1e-3, 0.01, 0.05, 0.5, 0.99, 1.0]
    sketch = combine_sketches([WeightedRankSketch.from_values(v[i:i + 700], w[i:i + 700])
                               for i in range(0, len(v), 700)])
    q, bounds = sketch.quantile(levels)
    repeated = np.repeat(v, w)
    assert_allclose(q, np.quantile(repeated, levels), rtol=1e-12)
    at_or_below = [(repeated <= t).mean() for t in q]
    assert_allclose(bounds[:, 0], at_or_below, rtol=1e-12)
    assert_allclose(bounds[:, 1], at_or_below, rtol=1e-12)
    assert sketch.total_weight == w.sum() and sketch.n_samples == (w > 0).sum()
    assert_allclose(sketch.log_likelihood, (v * w).sum(), rtol=1e-12)
    assert sketch.max_rank_error() == 0.0
    # weights of 1 are the unweighted sketch
    ones = WeightedRankSketch.from_values(v, np.ones(len(v)), n_points=len(v))
    assert_allclose(ones.quantile(levels)[0],
                    RankSketch.from_values(v, n_points=len(v)).quantile(levels)[0],
                    rtol=1e-12)


def test_weighted_sketch_bounds_hold_when_it_summarises():
    rng = np.random.default_rng(5)
    v = rng.normal(size=50_000)
    w = rng.uniform(0, 3, len(v)) * (rng.random(len(v)) > 0.1)
    sketch = combine_sketches([WeightedRankSketch.from_values(v[i:i + 9000], w[i:i + 9000],
                                                              n_points=101)
                               for i in range(0, len(v), 9000)])
    levels = np.array([0.001, 0.01, 0.2, 0.5, 0.9, 0.999])
    q, bounds = sketch.quantile(levels)
    fraction = np.array([w[v <= t].sum() for t in q]) / w.sum()
    assert np.all(bounds[:, 0] <= fraction + 1e-12) and np.all(fraction <= bounds[:, 1] + 1e-12)
    assert np.all(bounds[:, 1] - bounds[:, 0] <= sketch.max_rank_error() + 1e-12)
    assert sketch.max_rank_error() < 6 / 100 + 6 * w.max() / w.sum()
    assert_allclose(fraction, levels, atol=sketch.max_rank_error())
    values, weights = sketch.weighted_values()
    assert_allclose(weights.sum(), w.sum(), rtol=1e-12)


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_weighted_threshold_is_the_repeated_rows_quantile(weighted, kind):
    X, w, R = weighted
    Xin, win = _inputs(X, w, kind)
    gm = GaussianMixture(3, random_state=0).fit(X)
    gm.set_threshold(Xin, sample_weight=win, contamination=0.03)
    logdens = gm.score_samples(R)
    assert_allclose(gm.threshold_, np.quantile(logdens, 0.03), rtol=1e-12)
    assert_allclose(gm.score_quantiles_, np.quantile(logdens, SCORE_QUANTILE_LEVELS),
                    rtol=1e-12)
    assert_allclose(gm.training_log_likelihood_, logdens.mean(), rtol=1e-12)
    fraction = (logdens <= gm.threshold_).mean()
    assert_allclose(gm.threshold_bounds_, (fraction, fraction), rtol=1e-12)
    gm.set_threshold(Xin, sample_weight=win, threshold=float(np.median(logdens)))
    assert_allclose(gm.threshold_bounds_[0], (logdens <= np.median(logdens)).mean(),
                    rtol=1e-12)
    with pytest.raises(ValueError, match="sample_weight was given without X"):
        gm.set_threshold(sample_weight=w, threshold=-3.0)


###############################################################################
# Model selection, fit_predict


def test_select_model_with_weights_is_selection_on_repeated_rows():
    X = make_blobs(600, 2, 3, seed=11, spread=8.0)
    w = np.random.default_rng(2).integers(0, 4, len(X))
    R = np.repeat(X, w, axis=0)
    kw = dict(n_components=[1, 2, 3], covariance_types=["full", "diag"], random_state=0,
              tol=1e-10, max_iter=1000, contamination=0.02)
    ours = select_model(X, sample_weight=w, chunk_rows=150, **kw)
    rep = select_model(R, **kw)
    assert ours.best_.n_components == rep.best_.n_components == 3
    assert ours.best_.covariance_type == rep.best_.covariance_type
    for column in ("bic", "aic", "log_likelihood"):
        assert_allclose(ours.table_[column], rep.table_[column], rtol=RTOL)
    # the chosen model's criteria, from scikit-learn's scoring of the repeated rows
    best = ours.best_
    sk = SkGaussianMixture(best.n_components, covariance_type=best.covariance_type)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        setattr(sk, name, getattr(best, name))
    chosen = ours.table_.loc[ours.table_["bic"].idxmin()]
    assert_allclose(chosen["bic"], sk.bic(R), rtol=1e-9)
    assert_allclose(chosen["aic"], sk.aic(R), rtol=1e-9)
    assert_allclose(best.threshold_, np.quantile(sk.score_samples(R), 0.02), rtol=1e-9)


def test_fit_predict_with_weights(weighted):
    X, w, R = weighted
    start = sk_start(R, "tied")
    kw = dict(covariance_type="tied", tol=1e-8, max_iter=500, **start)
    ref = SkGaussianMixture(3, **kw).fit(R)
    labels = GaussianMixture(3, chunk_rows=70, **kw).fit_predict(X, sample_weight=w)
    np.testing.assert_array_equal(labels, ref.predict(X))


###############################################################################
# The initialisation's weighted sample


def test_sample_is_drawn_with_probability_proportional_to_weight():
    n = 40_000
    X = np.arange(n, dtype=float)[:, None]
    w = np.where(np.arange(n) % 2 == 0, 10.0, 1.0)
    w[np.arange(n) % 7 == 0] = 0.0
    picked = []
    for chunks in (5000, 3333):
        dataset = with_weights(as_dataset(da.from_array(X, chunks=(chunks, 1)),
                                          chunk_rows=None), da.from_array(w, chunks=4000))
        sample, sample_weight, total = draw_sample(dataset, 1000,
                                                   np.random.RandomState(0))
        assert sample_weight is None and total == w.sum()
        picked.append(sample[:, 0].astype(int))
    np.testing.assert_array_equal(picked[0], picked[1])  # whatever the chunking
    rows = picked[0]
    assert len(np.unique(rows)) == 1000 and np.all(w[rows] > 0)
    # heavy rows are 10/11 of the weight of the rows that can be drawn (binomial sd 0.009)
    assert abs((w[rows] == 10.0).mean() - 10 / 11) < 0.04


def test_sample_keys_of_a_pass_are_the_largest_keys():
    w = np.random.default_rng(0).uniform(0, 2, 5000)
    dataset = with_weights(as_dataset(da.zeros((5000, 2), chunks=(600, 2)), chunk_rows=None),
                           da.from_array(w, chunks=600))
    rows, total = passes.weighted_sample_rows(dataset, 300, seed=12)
    keys = kernels.sample_keys(12, 0, w)
    np.testing.assert_array_equal(rows, np.sort(np.argsort(-keys)[:300]))
    assert_allclose(total, w.sum(), rtol=1e-12)


def test_large_weighted_fit_initialises_from_a_weighted_sample(weighted):
    """Rows of weight 0 in one cluster: the k-means sample has none of them, so no
    initial centre lies there, and the fit matches scikit-learn on the repeated rows."""
    X, w, R = weighted
    labels = SkGaussianMixture(3, random_state=0).fit(X).predict(X)
    w = np.where(labels == 0, 0, w)
    start = GaussianMixture(2, init_sample_size=100, random_state=0, max_iter=0,
                            chunk_rows=64).fit(X, sample_weight=w)
    assert start.weights_.min() > 0.2  # no centre among the rows of weight 0
    ours = GaussianMixture(2, init_sample_size=100, random_state=0, tol=1e-10,
                           max_iter=1000, chunk_rows=64).fit(X, sample_weight=w)
    assert ours.n_passes_ >= 3  # the weights, the sample's rows, the assignment pass
    ref = SkGaussianMixture(2, tol=1e-10, max_iter=1000, weights_init=ours.weights_,
                            means_init=ours.means_, precisions_init=ours.precisions_)
    ref.fit(np.repeat(X, w, axis=0))
    assert_allclose(ref.means_, ours.means_, rtol=1e-6, atol=1e-8)
    assert ref.n_iter_ <= 2


def test_fewer_weighted_rows_than_components():
    X = make_blobs(300, 2, 2)
    w = np.zeros(300)
    w[:2] = 1.0
    with pytest.raises(ValueError, match=r"Only 2 rows of the numpy array have a positive "
                                         r"sample weight, fewer than n_components=3"):
        GaussianMixture(3).fit(X, sample_weight=w)


###############################################################################
# A weight column of a Parquet source, and the pipelines' config key


def _write_parquet(path, X, w, files=3, row_group_size=50, weight_name="w"):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(X)), files)):
        table = {f"f{j}": X[rows, j] for j in range(X.shape[1])}
        if weight_name is not None:
            table[weight_name] = pa.array(w[rows])
        table["id"] = rows.astype(str)
        pq.write_table(pa.table(table), path / f"part.{i}.parquet",
                       row_group_size=row_group_size)
    return str(path)


def test_parquet_weight_column_fits_as_repeated_rows(weighted, tmp_path):
    X, w, R = weighted
    path = _write_parquet(tmp_path / "pq", X, w.astype(np.int32))
    start = sk_start(R, "diag")
    kw = dict(covariance_type="diag", tol=1e-6, max_iter=500, **start)
    ref = SkGaussianMixture(3, **kw).fit(R)
    ours = GaussianMixture(3, weight_column="w", chunk_rows=None, **kw).fit(path)
    assert list(ours.feature_names_in_) == ["f0", "f1", "f2"]  # the weights: no feature
    assert_same_model(ours, ref)
    assert_allclose(ours.score(path), ref.score(R), rtol=RTOL)
    assert_allclose(ours.bic(path), ref.bic(R), rtol=RTOL)
    ours.set_threshold(path, contamination=0.02)
    assert_allclose(ours.threshold_, np.quantile(ref.score_samples(R), 0.02), rtol=RTOL)
    # scoring reads only the features: data without the weight column score alike
    other = _write_parquet(tmp_path / "new", X, None, weight_name=None)
    assert_allclose(ours.score_samples(other).compute(), ref.score_samples(X), rtol=RTOL)
    selection = select_model(path, [2, 3], ["diag"], weight_column="w", random_state=0,
                             tol=1e-8)
    again = select_model(X, [2, 3], ["diag"], sample_weight=w, random_state=0, tol=1e-8,
                         chunk_rows=64)
    assert_allclose(selection.table_["bic"], again.table_["bic"], rtol=RTOL)


def test_parquet_weight_column_errors(weighted, tmp_path):
    X, w, _ = weighted
    w = w.astype(float)
    w[307] = np.nan  # a null: NaN
    path = _write_parquet(tmp_path / "pq", X, w)
    with pytest.raises(ValueError, match=r"sample_weight holds nan at row 307 \(file "
                                         r"'part.2.parquet' of Parquet dataset .*; weight "
                                         r"column 'w'\), rows 267 to 399\)"):
        GaussianMixture(2, weight_column="w", init_params="random").fit(path)
    with pytest.raises(ValueError, match=r"columns lists the weight column 'w'"):
        GaussianMixture(2, weight_column="w", columns=["f0", "w"]).fit(path)
    with pytest.raises(ValueError, match=r"Column 'v' is not in file 'part.0.parquet'"):
        GaussianMixture(2, weight_column="v").fit(path)
    with pytest.raises(ValueError, match=r"Column 'id' has Arrow type string"):
        GaussianMixture(2, weight_column="id").fit(path)
    with pytest.raises(ValueError, match=r"already has sample weights .* Give one"):
        GaussianMixture(2, weight_column="w").fit(path, sample_weight=np.ones(len(X)))
    with pytest.raises(ValueError, match=r"weight_column='w' names a column of a Parquet "
                                         r"source, but X is a ndarray"):
        GaussianMixture(2, weight_column="w").fit(X)
    with pytest.raises(ValueError, match=r"'weight_column' parameter of GaussianMixture "
                                         r"must be a column name"):
        GaussianMixture(2, weight_column=3).fit(path)


def test_checkpoint_fingerprint_names_the_weight_column(weighted, tmp_path):
    from daskgmm.checkpoint import fingerprint

    X, w, _ = weighted
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "one.parquet"
    pq.write_table(pa.table({"f0": X[:, 0], "f1": X[:, 1], "w": w, "v": w + 1}), path)
    params = GaussianMixture(2).get_params()
    prints = [fingerprint(params, as_dataset(str(path), columns=["f0", "f1"],
                                             weight_column=column))
              for column in ("w", "w", "v", None)]
    assert prints[0] == prints[1] and len(set(prints)) == 3


def test_pipeline_config_weight_column(tmp_path):
    from daskgmm_pipelines.config import ConfigError, load_config

    def load(source):
        path = tmp_path / "job.yaml"
        path.write_text(f"name: job\nsource:\n{source}outputs:\n  model_store: models\n"
                        "  scores: scores/\n")
        return load_config(path)

    cfg = load("  uri: data/pq/\n  format: parquet\n  columns: [f0, f1]\n"
               "  weight_column: w\n")
    assert cfg.source.weight_column == "w"
    with pytest.raises(ConfigError, match=r"source\.weight_column .*applies to Parquet"):
        load("  uri: data/x.zarr\n  weight_column: w\n")
    with pytest.raises(ConfigError, match=r"source\.weight_column .*w also in columns"):
        load("  uri: data/pq/\n  format: parquet\n  columns: [f0, w]\n  weight_column: w\n")
    assert load("  uri: data/x.zarr\n").source.weight_column is None


def test_nightly_job_weighs_the_rows_by_its_weight_column(weighted, tmp_path, prefect_api,
                                                          monkeypatch):
    import pandas as pd

    from daskgmm_pipelines.flows import nightly

    X, w, _ = weighted
    source = _write_parquet(tmp_path / "pq", X, w.astype(np.int64))
    config = write_job_config(
        tmp_path,
        source={"uri": source, "format": "parquet", "array_name": None,
                "columns": ["f0", "f1", "f2"], "id_columns": ["id"], "weight_column": "w"},
        model={"n_components": [2, 3], "covariance_types": ["diag"], "tol": 1e-6},
        anomaly={"contamination": 0.05}, outputs={"scores": str(tmp_path / "scores")})
    monkeypatch.chdir(tmp_path)
    nightly(config_path=config)
    model = daskgmm.ModelStore(str(tmp_path / "models")).load()
    assert model.weight_column == "w" and list(model.feature_names_in_) == ["f0", "f1", "f2"]
    logdens = model.score_samples(pd.DataFrame(X, columns=["f0", "f1", "f2"]))
    repeated = np.repeat(logdens, w)
    assert_allclose(model.threshold_, np.quantile(repeated, 0.05), rtol=1e-9)
    assert_allclose(model.training_log_likelihood_, repeated.mean(), rtol=1e-9)
    scores = pd.read_parquet(daskgmm.latest_scores(str(tmp_path / "scores")))
    assert len(scores) == len(X)  # every row scored, weight 0 or not
    assert_allclose(scores["log_density"], logdens, rtol=1e-9)
