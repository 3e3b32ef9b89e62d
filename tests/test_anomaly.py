"""Anomaly thresholds and per-row anomaly scores (daskgmm.anomaly through the estimator)."""

import dask.array as da
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import daskgmm
from daskgmm import GaussianMixture, quantiles

from .conftest import COVARIANCE_TYPES, make_blobs


@pytest.fixture(scope="module")
def fitted():
    X = make_blobs(4_000, 3, 3, seed=5)
    ours = GaussianMixture(3, random_state=0, tol=1e-6).fit(X)
    ref = SkGaussianMixture(3, random_state=0, tol=1e-6).fit(X)
    return X, ours, ref



def test_threshold_is_the_contamination_quantile_of_training_log_density(fitted):
    X, ours, ref = fitted
    ours.set_threshold(X, contamination=0.02)
    ld = ref.score_samples(X)
    assert_allclose(ours.threshold_, np.quantile(ld, 0.02), rtol=1e-9)
    assert ours.contamination_ == 0.02
    assert_allclose(ours.threshold_bounds_, [np.mean(ld <= ours.threshold_)] * 2, atol=1e-12)
    assert_allclose(ours.score_quantiles_, np.quantile(ld, ours.score_quantile_levels_),
                    rtol=1e-9)
    assert_allclose(ours.training_log_likelihood_, ref.score(X), rtol=1e-9)



def test_threshold_out_of_core_on_many_chunks_is_within_its_bounds(
    fitted, cluster_client, monkeypatch
):
    X, ours, ref = fitted
    big = np.tile(X, (60, 1)) + np.repeat(np.arange(60), len(X))[:, None] * 1e-3
    lazy = da.from_array(big, chunks=9_000)  # 27 chunks of 9000 rows
    # as on data of more than SKETCH_BUDGET rows: chunks keep 2049 of their 9000 values
    # (the client decides how many values each chunk keeps: the patch reaches the workers)
    monkeypatch.setattr(quantiles, "SKETCH_BUDGET", 0)
    assert quantiles.sketch_points(9_000, len(big)) == 2049
    ours.set_threshold(lazy, contamination=0.01)
    ld = ref.score_samples(big)
    fraction = np.mean(ld <= ours.threshold_)
    lo, hi = ours.threshold_bounds_
    assert lo <= fraction <= hi
    assert hi > lo  # the sketch kept part of each chunk: the bounds are not exact
    assert hi - lo <= 1 / 2048 + lazy.numblocks[0] / len(big)
    assert abs(fraction - 0.01) <= hi - lo
    assert_allclose(ours.threshold_, np.quantile(ld, 0.01), rtol=1e-3)



def test_fixed_threshold_and_errors(fitted):
    X, ours, ref = fitted
    gm = GaussianMixture(3, random_state=0).fit(X)
    with pytest.raises(ValueError, match="no anomaly threshold: call"):
        gm.anomaly_scores(X)
    with pytest.raises(ValueError, match=r"contamination must be a float in \(0, 0.5\]"):
        gm.set_threshold(X, contamination=0.7)
    with pytest.raises(ValueError, match="needs the training data X"):
        gm.set_threshold()
    with pytest.raises(ValueError, match="threshold must be a finite log-density"):
        gm.set_threshold(threshold=float("nan"))
    gm.set_threshold(threshold=-9.5)
    assert gm.threshold_ == -9.5 and gm.contamination_ is None and gm.threshold_bounds_ is None
    gm.set_threshold(X, threshold=-9.5)
    lo, hi = gm.threshold_bounds_
    assert_allclose([lo, hi], np.mean(ref.score_samples(X) <= -9.5), atol=1e-12)
    with pytest.raises(Exception, match="not fitted"):
        GaussianMixture().set_threshold(threshold=1.0)



@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_anomaly_scores_equal_sklearn(covariance_type):
    X = make_blobs(3_000, 4, 3, seed=6)
    X[::500] += 40  # a few far rows
    ours = GaussianMixture(3, covariance_type=covariance_type, random_state=1).fit(X)
    ref = SkGaussianMixture(3, covariance_type=covariance_type, random_state=1).fit(X)
    ours.set_threshold(X, contamination=0.01)
    df = ours.anomaly_scores(X)
    assert list(df.columns) == ["log_density", "anomaly_score", "component", "responsibility",
                                "is_anomaly", "missing_features"]
    assert [str(t) for t in df.dtypes] == ["float64", "float64", "int32", "float64", "bool",
                                           "int32"]
    assert (df["missing_features"] == 0).all()
    ld = ref.score_samples(X)
    assert_allclose(df["log_density"], ld, rtol=1e-6)
    assert_allclose(df["anomaly_score"], -ld, rtol=1e-6)
    assert_array_equal(df["component"], ref.predict(X))
    assert_allclose(df["responsibility"], ref.predict_proba(X).max(axis=1), rtol=1e-6, atol=1e-9)
    assert_array_equal(df["is_anomaly"], df["log_density"] < ours.threshold_)
    assert df["is_anomaly"].sum() == 30
    assert df["is_anomaly"].iloc[::500].all()  # the far rows are flagged



def test_anomaly_scores_lazy_are_chunked_like_the_input(fitted):
    X, ours, ref = fitted
    ours.set_threshold(X)
    lazy = da.from_array(X, chunks=((1000, 7, 2993), (3,)))
    out = ours.anomaly_scores(lazy)
    assert isinstance(out, da.Array) and out.dtype == daskgmm.SCORE_DTYPE
    assert out.chunks == ((1000, 7, 2993),)
    records = out.compute()
    assert_allclose(records["log_density"], ref.score_samples(X), rtol=1e-6)
    assert_array_equal(records["component"], ref.predict(X))



def test_select_model_sets_the_threshold_in_its_final_pass():
    X = make_blobs(3_000, 3, 3, seed=7)
    sel = daskgmm.select_model(X, [2, 3], ["full", "diag"], random_state=0,
                               contamination=0.05)
    best = sel.best_
    ld = best.score_samples(X)
    assert_allclose(best.threshold_, np.quantile(ld, 0.05), rtol=1e-9)
    assert_allclose(best.training_log_likelihood_, ld.mean(), rtol=1e-9)
    assert_allclose(sel.table_["log_likelihood"].min(), min(
        GaussianMixture(k, covariance_type=t, random_state=0).fit(X).score(X)
        for k in (2, 3) for t in ("full", "diag")), rtol=1e-9)
    with pytest.raises(ValueError, match="contamination must be a float"):
        daskgmm.select_model(X, [2], ["full"], contamination=0)
