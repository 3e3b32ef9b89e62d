"""Missing values: nan_policy 'raise', 'omit' and 'marginalize'.

Oracles: scipy's multivariate_normal.logpdf of each row's observed sub-vector, mixed
over the components (the marginal density); a per-row reference of one EM step for
incomplete data (Ghahramani and Jordan, 1994) written here with numpy.linalg, and
scikit-learn fitted on the complete rows for 'omit'.
"""

import re
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import daskgmm
from daskgmm import GaussianMixture, kernels, missing, select_model

from . import conftest
from .conftest import COVARIANCE_TYPES, full_covariances, make_blobs, random_params

POLICIES = ["raise", "omit", "marginalize"]


@pytest.fixture(params=["numba", "numpy"])
def kernels_choice(request, monkeypatch):
    """Both E-steps of rows with missing values: the compiled one and the numpy
    reference (``DASKGMM_KERNELS``)."""
    monkeypatch.setenv("DASKGMM_KERNELS", request.param)
    return request.param


def punch_holes(X, fraction, seed=0, keep_one=True):
    """``X`` with a random ``fraction`` of its entries NaN (missing completely at
    random); with ``keep_one`` no row loses every feature."""
    rng = np.random.default_rng(seed)
    out = X.copy()
    holes = rng.random(X.shape) < fraction
    if keep_one:
        full = holes.all(axis=1)
        holes[full, rng.integers(0, X.shape[1], full.sum())] = False
    out[holes] = np.nan
    return out


def marginal_oracle(X, weights, means, covs):
    """Per row: log-density of its observed features under the mixture, and the
    responsibilities, from scipy's multivariate_normal."""
    k = len(weights)
    log_prob = np.empty((X.shape[0], k))
    for i, row in enumerate(X):
        o = ~np.isnan(row)
        for j in range(k):
            log_prob[i, j] = np.log(weights[j]) + multivariate_normal(
                means[j][o], covs[j][np.ix_(o, o)]).logpdf(row[o])
    log_norm = logsumexp(log_prob, axis=1)
    return log_norm, np.exp(log_prob - log_norm[:, None])


def dense_covariances(est):
    """A fitted estimator's covariances as (k, d, d) matrices."""
    return conftest.dense_covariances(est.covariance_type, est.covariances_,
                                      est.n_components, est.n_features_in_)


def reference_em_step(X, weights, means, covs, covariance_type, reg_covar, w=None):
    """One EM iteration for incomplete data, row by row: the marginal E-step, then the
    M-step on the rows completed by their conditional expectations plus their
    conditional covariances. Returns (weights, means, covariances, mean log-lik)."""
    n, d = X.shape
    k = len(weights)
    w = np.ones(n) if w is None else w
    log_norm, resp = marginal_oracle(X, weights, means, covs)
    resp = resp * w[:, None]
    nk = resp.sum(axis=0) + 10 * np.finfo(float).eps
    xhat = np.empty((k, n, d))
    cond = np.zeros((k, n, d, d))
    for i, row in enumerate(X):
        o, m = ~np.isnan(row), np.isnan(row)
        for j in range(k):
            s = covs[j]
            gain = s[np.ix_(m, o)] @ np.linalg.inv(s[np.ix_(o, o)])
            xhat[j, i] = row
            xhat[j, i, m] = means[j][m] + gain @ (row[o] - means[j][o])
            cond[j, i][np.ix_(m, m)] = s[np.ix_(m, m)] - gain @ s[np.ix_(o, m)]
    new_means = np.einsum("nk,knd->kd", resp, xhat) / nk[:, None]
    scatter = np.empty((k, d, d))
    for j in range(k):
        diff = xhat[j] - new_means[j]
        scatter[j] = (np.einsum("n,nd,ne->de", resp[:, j], diff, diff)
                      + np.einsum("n,nde->de", resp[:, j], cond[j]))
    if covariance_type == "full":
        out = scatter / nk[:, None, None] + reg_covar * np.eye(d)
    elif covariance_type == "tied":
        out = scatter.sum(axis=0) / nk.sum() + reg_covar * np.eye(d)
    elif covariance_type == "diag":
        out = np.stack([np.diag(s) for s in scatter]) / nk[:, None] + reg_covar
    else:
        out = (np.stack([np.diag(s) for s in scatter]) / nk[:, None] + reg_covar).mean(axis=1)
    return nk / nk.sum(), new_means, out, float(np.dot(w, log_norm) / w.sum())


# --------------------------------------------------------------------- maths


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_marginal_log_density_equals_scipy(covariance_type, kernels_choice):
    d = 6
    params = random_params(covariance_type, n_components=3, n_features=d, seed=3)
    rng = np.random.default_rng(1)
    X = punch_holes(rng.normal(0, 3, size=(400, d)), 0.3, seed=2)
    log_norm, log_resp = missing.log_prob_resp(X, params)
    ref_norm, ref_resp = marginal_oracle(X, params.weights, params.means,
                                         full_covariances(params, d))
    assert len({tuple(r) for r in np.isnan(X)}) > 20  # many patterns
    assert_allclose(log_norm, ref_norm, rtol=1e-8)
    assert_allclose(np.exp(log_resp), ref_resp, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("n_features", [11, 70])  # one int64 key per row, or packed bits
def test_patterns_group_every_row_once(n_features):
    observed = ~np.isnan(punch_holes(np.zeros((300, n_features)), 0.2, seed=4))
    seen = []
    for rows, o in missing.patterns(observed):
        assert (observed[rows] == o).all()
        seen.extend(rows)
    assert sorted(seen) == list(range(300))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_one_em_step_equals_reference(covariance_type, kernels_choice):
    """From the same start, one EM iteration of 'marginalize' over 4 chunks equals the
    per-row reference (relative 1e-8), weights, means, covariances and lower bound."""
    X = punch_holes(make_blobs(600, 4, 3, seed=5), 0.2, seed=6)
    start = random_params(covariance_type, n_components=3, n_features=4, seed=7)
    start.means = start.means * 0.3
    model = start.model
    precisions = model.precisions(start.precisions_cholesky)
    gm = GaussianMixture(3, covariance_type=covariance_type, nan_policy="marginalize",
                         max_iter=1, weights_init=start.weights, means_init=start.means,
                         precisions_init=precisions, chunk_rows=150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(da.from_array(X, chunks=150))
    w, m, c, lb = reference_em_step(X, start.weights, start.means,
                                    full_covariances(start, 4), covariance_type, 1e-6)
    assert_allclose(gm.weights_, w, rtol=1e-8)
    assert_allclose(gm.means_, m, rtol=1e-8, atol=1e-10)
    assert_allclose(gm.covariances_, c, rtol=1e-8, atol=1e-12)
    assert_allclose(gm.lower_bound_, lb, rtol=1e-8)
    assert gm.fit_n_incomplete_ == int(np.isnan(X).any(axis=1).sum()) > 200


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_weights_fold_into_marginal_statistics(covariance_type, kernels_choice):
    """Integer sample weights under 'marginalize' fit as the rows repeated."""
    X = punch_holes(make_blobs(500, 3, 2, seed=8), 0.2, seed=9)
    w = np.random.default_rng(10).integers(0, 4, X.shape[0]).astype(float)
    kw = dict(covariance_type=covariance_type, nan_policy="marginalize", random_state=0,
              init_params="random", tol=1e-8, max_iter=30)
    start = GaussianMixture(2, **{**kw, "max_iter": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start.fit(np.repeat(X, w.astype(int), axis=0))
    init = dict(weights_init=start.weights_, means_init=start.means_,
                precisions_init=start.precisions_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        weighted = GaussianMixture(2, **kw, **init).fit(X, sample_weight=w)
        repeated = GaussianMixture(2, **kw, **init).fit(np.repeat(X, w.astype(int), axis=0))
    assert_allclose(weighted.means_, repeated.means_, rtol=1e-6)
    assert_allclose(weighted.covariances_, repeated.covariances_, rtol=1e-6)
    assert_allclose(weighted.lower_bound_, repeated.lower_bound_, rtol=1e-8)


# ------------------------------------------------------------------ policies


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_without_nan_every_policy_fits_the_same(covariance_type):
    X = make_blobs(1200, 3, 3, seed=11)
    fits = [GaussianMixture(3, covariance_type=covariance_type, random_state=0,
                            nan_policy=p, chunk_rows=300).fit(X) for p in POLICIES]
    for other in fits[1:]:
        assert_array_equal(other.means_, fits[0].means_)
        assert_array_equal(other.covariances_, fits[0].covariances_)
        assert other.lower_bounds_ == fits[0].lower_bounds_
        assert other.fit_n_incomplete_ == 0
    scores = [g.anomaly_scores(X) if g.set_threshold(X) else None for g in fits]
    for other in scores[1:]:
        pd.testing.assert_frame_equal(other, scores[0])


def test_recovers_means_with_15_percent_missing_at_random():
    rng = np.random.default_rng(12)
    truth = np.array([[0.0] * 6, [6.0] * 6, [0, 6, 0, 6, 0, 6.0]])
    labels = rng.integers(0, 3, 30_000)
    X = truth[labels] + rng.normal(size=(30_000, 6))
    Xm = punch_holes(X, 0.15, seed=13)
    assert 0.14 < np.isnan(Xm).mean() < 0.16
    gm = GaussianMixture(3, nan_policy="marginalize", random_state=0, tol=1e-6,
                         chunk_rows=5000).fit(da.from_array(Xm, chunks=5000))
    order = [int(np.argmin(np.abs(gm.means_ - t).sum(axis=1))) for t in truth]
    assert sorted(order) == [0, 1, 2]
    assert_allclose(gm.means_[order], truth, atol=0.05)
    assert_allclose(gm.covariances_[order], np.repeat(np.eye(6)[None], 3, 0), atol=0.06)
    # the same data complete: the fit with holes is close to it
    full = GaussianMixture(3, random_state=0, tol=1e-6).fit(X)
    assert_allclose(gm.means_[order], full.means_[[int(np.argmin(np.abs(
        full.means_ - t).sum(axis=1))) for t in truth]], atol=0.04)
    # rows scored by their observed features are flagged as complete rows are
    assert gm.predict(Xm)[labels == 1].tolist().count(order[1]) > 0.99 * (labels == 1).sum()


def test_omit_equals_sklearn_on_the_complete_rows():
    X = punch_holes(make_blobs(2000, 4, 3, seed=14), 0.05, seed=15)
    complete = ~np.isnan(X).any(axis=1)
    gm = GaussianMixture(3, nan_policy="omit", random_state=0, tol=1e-6,
                         chunk_rows=500).fit(X)
    ref = SkGaussianMixture(3, random_state=0, tol=1e-6).fit(X[complete])
    assert_allclose(gm.means_, ref.means_, rtol=1e-6)
    assert_allclose(gm.covariances_, ref.covariances_, rtol=1e-6, atol=1e-10)
    assert_allclose(gm.lower_bound_, ref.lower_bound_, rtol=1e-8)
    assert gm.fit_n_incomplete_ == int((~complete).sum()) > 100
    assert_allclose(gm.score(X), ref.score(X[complete]), rtol=1e-8)
    assert_allclose(gm.bic(X), ref.bic(X[complete]), rtol=1e-8)
    ss = gm.score_samples(X)
    assert np.isnan(ss[~complete]).all()
    assert_allclose(ss[complete], ref.score_samples(X[complete]), rtol=1e-8)
    assert (gm.predict(X)[~complete] == -1).all()
    assert np.isnan(gm.predict_proba(X)[~complete]).all()
    gm.set_threshold(X, contamination=0.02)
    assert_allclose(gm.threshold_, np.quantile(ref.score_samples(X[complete]), 0.02),
                    rtol=1e-10)
    scores = gm.anomaly_scores(X)
    assert not scores["is_anomaly"][~complete].any()
    assert scores["component"][~complete].eq(-1).all()
    assert_array_equal(scores["missing_features"], np.isnan(X).sum(axis=1))
    assert_array_equal(scores["is_anomaly"][complete],
                       ref.score_samples(X[complete]) < gm.threshold_)


def test_marginalize_scores_flag_and_threshold():
    X = punch_holes(make_blobs(3000, 4, 3, seed=16), 0.1, seed=17)
    gm = GaussianMixture(3, nan_policy="marginalize", random_state=0).fit(X)
    gm.set_threshold(X, contamination=0.01)
    ref_norm, ref_resp = marginal_oracle(X, gm.weights_, gm.means_, dense_covariances(gm))
    assert_allclose(gm.threshold_, np.quantile(ref_norm, 0.01), rtol=1e-8)
    assert_allclose(gm.score(X), ref_norm.mean(), rtol=1e-8)
    scores = gm.anomaly_scores(X)
    assert_allclose(scores["log_density"], ref_norm, rtol=1e-8)
    assert_array_equal(scores["component"], ref_resp.argmax(axis=1))
    assert_allclose(scores["responsibility"], ref_resp.max(axis=1), rtol=1e-8)
    assert_array_equal(scores["is_anomaly"], ref_norm < gm.threshold_)
    assert_array_equal(scores["missing_features"], np.isnan(X).sum(axis=1))
    assert_allclose(gm.predict_proba(X), ref_resp, rtol=1e-8, atol=1e-12)


def test_grid_selection_marginalizes_in_shared_passes():
    X = punch_holes(make_blobs(1500, 3, 3, seed=18), 0.1, seed=19)
    sel = select_model(X, [2, 3], ["full", "diag"], random_state=0, nan_policy="marginalize")
    best = sel.best_
    assert best.nan_policy == "marginalize" and best.fit_n_incomplete_ > 100
    ref_norm, _ = marginal_oracle(X, best.weights_, best.means_, dense_covariances(best))
    k, ct = best.n_components, best.covariance_type
    n_params = daskgmm.covariance.n_parameters(k, 3, ct)
    assert_allclose(best.bic(X), -2 * ref_norm.sum() + n_params * np.log(len(X)), rtol=1e-8)


# -------------------------------------------------------------------- errors


def test_raise_names_the_nan_and_the_policies():
    X = make_blobs(1000, 3, 2, seed=20)
    X[612, 1] = np.nan
    with pytest.raises(ValueError, match=re.escape(
            "first at row 612, column 1 (nan). For missing values, fit with "
            "nan_policy='marginalize'")):
        GaussianMixture(2, chunk_rows=250).fit(da.from_array(X, chunks=250))


@pytest.mark.parametrize("policy", POLICIES)
def test_infinity_is_an_error_under_every_policy(policy):
    X = make_blobs(1000, 3, 2, seed=21)
    if policy != "raise":
        X = punch_holes(X, 0.1, seed=22)
        X[733, 0] = np.nan  # the row is incomplete too: 'omit' would leave it out
    X[733, 2] = -np.inf
    with pytest.raises(ValueError, match=r"chunk 2 of dask array, rows 500 to 749, first "
                                         r"at row 733, column 2 \(-inf\)\. Gaussian mixtures "
                                         r"need finite values, whatever nan_policy"):
        GaussianMixture(2, nan_policy=policy, chunk_rows=None, init_params="random").fit(
            da.from_array(X, chunks=250))


def test_a_row_missing_every_feature_is_an_error_under_marginalize():
    X = punch_holes(make_blobs(1000, 3, 2, seed=23), 0.1, seed=24)
    X[420] = np.nan
    with pytest.raises(ValueError, match=r"Row 420 of dask array \(chunk 1, rows 250 to "
                                         r"499\) has no observed feature.*nan_policy='omit'"):
        GaussianMixture(2, nan_policy="marginalize", chunk_rows=None).fit(
            da.from_array(X, chunks=250))
    gm = GaussianMixture(2, nan_policy="omit", random_state=0).fit(X)  # left out there
    assert gm.fit_n_incomplete_ == int(np.isnan(X).any(axis=1).sum())
    fitted = GaussianMixture(2, nan_policy="marginalize", random_state=0).fit(X[:400])
    with pytest.raises(ValueError, match=r"Row 420 of numpy array .* no observed feature"):
        fitted.score_samples(X)


def test_omit_with_every_row_incomplete_says_so():
    X = make_blobs(300, 3, 2, seed=25)
    X[np.arange(300), np.arange(300) % 3] = np.nan  # every row misses one feature
    with pytest.raises(ValueError, match=r"Every row of the numpy array holds NaN: "
                                         r"nan_policy='omit' leaves nothing"):
        GaussianMixture(2, nan_policy="omit", init_params="random").fit(X)
    with pytest.raises(ValueError, match=r"rows of the initialisation's sample .* have no "
                                         r"NaN .*nan_policy='marginalize'"):
        GaussianMixture(2, nan_policy="omit").fit(X)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="nan_policy"):
        GaussianMixture(2, nan_policy="drop").fit(make_blobs(100, 2, 2))


# ------------------------------------------------------- storage and clusters


def test_marginalize_on_zarr_through_a_cluster_equals_in_memory(tmp_path, cluster_client):
    X = punch_holes(make_blobs(8000, 4, 3, seed=26), 0.1, seed=27)
    path = str(tmp_path / "x.zarr")
    zarr.create_array(path, shape=X.shape, chunks=(1000, 4), dtype="f8")[:] = X
    kw = dict(nan_policy="marginalize", random_state=0, tol=1e-8)
    remote = GaussianMixture(3, chunk_rows=None, **kw).fit(path)
    local = GaussianMixture(3, chunk_rows=2000, **kw).fit(X)
    assert_allclose(remote.means_, local.means_, rtol=1e-9)
    assert_allclose(remote.covariances_, local.covariances_, rtol=1e-9)
    assert remote.fit_n_incomplete_ == int(np.isnan(X).any(axis=1).sum())


def test_published_scores_count_rows_with_missing_features(tmp_path):
    X = punch_holes(make_blobs(4000, 4, 3, seed=28), 0.05, seed=29)
    frame = pd.DataFrame(X, columns=list("abcd"))
    frame["event_id"] = np.arange(len(X))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        frame.iloc[i * 1000:(i + 1) * 1000].to_parquet(src / f"part-{i}.parquet")
    incomplete = int(np.isnan(X).any(axis=1).sum())
    for policy in ["marginalize", "omit"]:
        gm = GaussianMixture(3, nan_policy=policy, random_state=0,
                             columns=list("abcd")).fit(str(src))
        gm.set_threshold(str(src))
        model = tmp_path / f"{policy}.dgmm"
        gm.save(model)
        assert daskgmm.load(model).nan_policy == policy
        assert daskgmm.load(model).fit_n_incomplete_ == incomplete
        pub = daskgmm.write_scores(str(model), str(src), str(tmp_path / f"scores-{policy}"),
                                   run_id="r1", id_columns=["event_id"])
        assert pub.n_incomplete == pub.manifest["n_incomplete"] == incomplete
        assert pub.n_rows == len(X)
        scores = pd.read_parquet(pub.location).sort_values("event_id")
        assert_array_equal(scores["missing_features"], np.isnan(X).sum(axis=1))
        if policy == "omit":
            assert scores["log_density"].isna().sum() == incomplete
            assert not scores.loc[scores["log_density"].isna(), "is_anomaly"].any()
            assert_allclose(pub.log_likelihood, scores["log_density"].mean(), rtol=1e-10)
        else:
            ref, _ = marginal_oracle(X, gm.weights_, gm.means_, dense_covariances(gm))
            assert_allclose(scores["log_density"], ref, rtol=1e-8)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_compiled_and_numpy_marginal_statistics_agree(covariance_type, monkeypatch):
    """The compiled kernel against the numpy reference on many patterns, tiles longer
    than one (a pattern of 700 rows), sample weights with zeros, and a far row whose
    density underflows."""
    params = random_params(covariance_type, n_components=4, n_features=7, seed=31)
    rng = np.random.default_rng(32)
    X = punch_holes(rng.normal(0, 3, size=(3000, 7)), 0.25, seed=33)
    X[:700] = rng.normal(0, 3, size=(700, 7))
    X[:700, 2] = np.nan  # one large pattern
    X[5] = [1e30, np.nan, 0, 0, 0, 0, 0]
    X = X[np.isnan(X).any(axis=1)]
    w = rng.integers(0, 3, X.shape[0]).astype(float)
    out = {}
    for choice in ("numba", "numpy"):
        monkeypatch.setenv("DASKGMM_KERNELS", choice)
        out[choice] = (missing.stats(X, params, w), missing.log_prob_resp(X, params))
    (nk, s1, s2, ll), (norm, resp) = out["numba"]
    (nk0, s10, s20, ll0), (norm0, resp0) = out["numpy"]
    assert_allclose(nk, nk0, rtol=1e-10)
    assert_allclose(s1, s10, rtol=1e-10, atol=1e-9)
    assert_allclose(s2, s20, rtol=1e-10, atol=1e-9)
    assert_allclose(ll, ll0, rtol=1e-12)
    assert_allclose(norm, norm0, rtol=1e-12)
    assert norm[np.flatnonzero(X[:, 0] == 1e30)[0]] < -1e50
    assert_allclose(np.exp(resp), np.exp(resp0), atol=1e-12)


def test_score_rows_records_missing_features():
    params = random_params("full", 2, 3, seed=30)
    X = np.array([[0.0, 1.0, np.nan], [np.nan, np.nan, 2.0], [1.0, 2.0, 3.0]])
    rec = kernels.score_rows(X, params, threshold=-5.0, nan_policy="marginalize")
    assert rec["missing_features"].tolist() == [1, 2, 0]
    rec = kernels.score_rows(X, params, threshold=-5.0, nan_policy="omit")
    assert np.isnan(rec["log_density"][:2]).all() and rec["component"][:2].tolist() == [-1, -1]
    assert np.isfinite(rec["log_density"][2])


def test_nightly_job_marginalizes_and_reports_rows_with_missing_features(tmp_path,
                                                                       prefect_api,
                                                                       monkeypatch):

    from daskgmm_pipelines.flows import nightly

    X = punch_holes(make_blobs(6000, 3, 3, seed=34), 0.1, seed=35)
    frame = pd.DataFrame(X, columns=["f0", "f1", "f2"])
    frame["id"] = np.arange(len(X))
    (tmp_path / "pq").mkdir()
    for i in range(3):
        frame.iloc[i * 2000:(i + 1) * 2000].to_parquet(tmp_path / "pq" / f"part-{i}.parquet")
    config = conftest.write_job_config(
        tmp_path,
        source={"uri": str(tmp_path / "pq"), "format": "parquet", "array_name": None,
                "columns": ["f0", "f1", "f2"], "id_columns": ["id"]},
        model={"n_components": [2, 3], "covariance_types": ["full"],
               "nan_policy": "marginalize"},
        anomaly={"contamination": 0.02}, outputs={"scores": str(tmp_path / "scores")})
    monkeypatch.chdir(tmp_path)
    out = nightly(config_path=config, run_id="holes-1")
    incomplete = int(np.isnan(X).any(axis=1).sum())
    assert out["n_incomplete"] == incomplete > 1000
    model = daskgmm.ModelStore(str(tmp_path / "models")).load()
    assert model.nan_policy == "marginalize" and model.fit_n_incomplete_ == incomplete
    ref, _ = marginal_oracle(X, model.weights_, model.means_, dense_covariances(model))
    assert_allclose(model.threshold_, np.quantile(ref, 0.02), rtol=1e-8)
    scores = pd.read_parquet(daskgmm.latest_scores(str(tmp_path / "scores"))).sort_values("id")
    assert_allclose(scores["log_density"], ref, rtol=1e-8)
    assert_array_equal(scores["missing_features"], np.isnan(X).sum(axis=1))
    summary = Path(out["report_url"]).read_text()
    assert (f"| rows with missing features | {incomplete:,} "
            f"({100 * incomplete / len(X):.3f}%), scored by their observed features |"
            in summary)


def test_parquet_scores_of_rows_left_out_are_null_not_nan(tmp_path):
    """SQL engines sort NaN above every number: a row 'omit' left out has null scores."""
    import pyarrow.parquet as pq

    X = punch_holes(make_blobs(2000, 3, 2, seed=36), 0.05, seed=37)
    gm = GaussianMixture(2, nan_policy="omit", random_state=0).fit(X)
    gm.set_threshold(X)
    pub = daskgmm.write_scores(gm, X, str(tmp_path / "scores"), run_id="r1")
    assert pub.manifest["nan_policy"] == "omit"
    table = pq.read_table(pub.location)
    incomplete = int(np.isnan(X).any(axis=1).sum())
    for name in ("log_density", "anomaly_score", "component", "responsibility"):
        assert table.schema.field(name).nullable and table[name].null_count == incomplete
    for name in ("is_anomaly", "missing_features"):
        assert not table.schema.field(name).nullable and table[name].null_count == 0
    frame = table.to_pandas().sort_values("row_number")
    ref = SkGaussianMixture(2, random_state=0).fit(X[~np.isnan(X).any(axis=1)])
    complete = ~np.isnan(X).any(axis=1)
    assert_allclose(frame["log_density"][complete], ref.score_samples(X[complete]),
                    rtol=1e-6)
    assert frame["log_density"][~complete].isna().all()


def test_a_feature_never_observed_is_named():
    X = make_blobs(3000, 4, 2, seed=38)
    X[:, 2] = np.nan
    X[5, 2] = 1.0  # one value: still not enough to fit it
    for policy in ("marginalize", "omit"):
        for init in ("kmeans", "random"):
            with pytest.raises(ValueError, match=r"Feature column 2 of the numpy array has "
                                                 r"1 observed value\(s\) among the \d+ rows "
                                                 r".*Leave it out"):
                GaussianMixture(2, nan_policy=policy, init_params=init).fit(X)


def test_rows_fitted_on_exclude_rows_left_out():
    X = punch_holes(make_blobs(1000, 3, 2, seed=39), 0.1, seed=40)
    incomplete = int(np.isnan(X).any(axis=1).sum())
    omit = GaussianMixture(2, nan_policy="omit", random_state=0).fit(X)
    assert omit.fit_n_samples_ == 1000 - incomplete and omit.fit_n_incomplete_ == incomplete
    marg = GaussianMixture(2, nan_policy="marginalize", random_state=0).fit(X)
    assert marg.fit_n_samples_ == 1000 and marg.fit_n_incomplete_ == incomplete


def test_pandas_missing_values_are_named_and_the_fix_works():
    X = punch_holes(make_blobs(500, 3, 2, seed=41), 0.1, seed=42)
    frame = pd.DataFrame(X, columns=list("abc")).astype(object)
    frame.iloc[7, 1] = pd.NA
    with pytest.raises(TypeError, match=r"pd.NA at row 7, column 1.*"
                                         r"df.astype\('Float64'\).to_numpy"):
        GaussianMixture(2, nan_policy="marginalize").fit(frame)
    fixed = frame.astype("Float64").to_numpy("float64", na_value=np.nan)
    gm = GaussianMixture(2, nan_policy="marginalize", random_state=0).fit(fixed)
    assert gm.fit_n_incomplete_ == int(np.isnan(fixed).any(axis=1).sum())


def test_scoring_rows_with_nan_under_a_raise_model_says_how():
    X = make_blobs(1000, 3, 2, seed=43)
    gm = GaussianMixture(2, random_state=0).fit(X)
    Y = X.copy()
    Y[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"set the model's nan_policy: est.set_params\("
                                         r"nan_policy='marginalize'\) scores each row .* "
                                         r"\(no refit\)"):
        gm.score_samples(Y)
    scored = gm.set_params(nan_policy="marginalize").score_samples(Y)
    ref, _ = marginal_oracle(Y[3:4], gm.weights_, gm.means_, dense_covariances(gm))
    assert_allclose(scored[3], ref[0], rtol=1e-8)
    assert_allclose(scored[4:], gm.set_params(nan_policy="raise").score_samples(X[4:]),
                    rtol=1e-12)


def test_a_warm_start_is_not_promoted_when_the_share_of_incomplete_rows_moves():
    from daskgmm_pipelines import policy

    X = make_blobs(2000, 3, 2, seed=44)
    light = punch_holes(X, 0.02, seed=45)
    heavy = punch_holes(X, 0.4, seed=46)
    current = GaussianMixture(2, nan_policy="marginalize", random_state=0).fit(light)
    current.set_threshold(light)
    tonight = GaussianMixture(2, nan_policy="marginalize", random_state=0).fit(heavy)
    tonight.set_threshold(heavy)
    share = policy.incomplete_share(current)
    assert share == np.isnan(light).any(axis=1).mean()
    assert tonight.training_log_likelihood_ > current.training_log_likelihood_  # higher
    verdict = policy.promotion_verdict(
        tonight, has_current=True, current_tonight=current.training_log_likelihood_,
        margin=0.05, reasons=[], current_share=share, share_margin=0.1)
    assert not verdict.promote
    assert re.search(r"refused: \d+\.\d% of tonight's rows have missing features, "
                     r"\d\.\d% of the current model's", verdict.reason)
    same = policy.promotion_verdict(
        current, has_current=True, current_tonight=current.training_log_likelihood_,
        margin=0.05, reasons=[], current_share=share, share_margin=0.1)
    assert same.promote
    omit = GaussianMixture(2, nan_policy="omit", random_state=0).fit(heavy)
    assert policy.incomplete_share(omit) == np.isnan(heavy).any(axis=1).mean()


def test_saved_models_keep_their_id_and_their_policy(tmp_path):
    import json
    import zipfile

    X = punch_holes(make_blobs(600, 3, 2, seed=47), 0.1, seed=48)
    plain = GaussianMixture(2, random_state=0).fit(np.nan_to_num(X))
    plain.save(tmp_path / "plain.dgmm")
    meta = json.loads(zipfile.ZipFile(tmp_path / "plain.dgmm").read("metadata.json"))
    assert "nan_policy" not in meta["params"]  # as files written before the parameter
    assert daskgmm.load(tmp_path / "plain.dgmm").nan_policy == "raise"
    assert daskgmm.model_id(daskgmm.load(tmp_path / "plain.dgmm")) == daskgmm.model_id(plain)
    marg = GaussianMixture(2, nan_policy="marginalize", random_state=0).fit(X)
    marg.save(tmp_path / "marg.dgmm")
    meta = json.loads(zipfile.ZipFile(tmp_path / "marg.dgmm").read("metadata.json"))
    assert meta["params"]["nan_policy"] == "marginalize"
    assert meta["fit_data"]["n_incomplete"] == marg.fit_n_incomplete_ > 0
    assert daskgmm.model_id(marg) != daskgmm.model_id(
        GaussianMixture(**{**marg.get_params(), "nan_policy": "omit"}).set_fitted(
            *_fitted_parts(marg)))


def _fitted_parts(est):
    from daskgmm.mixture import Mixture

    return (Mixture(est.covariance_type, est.weights_, est.means_, est.precisions_cholesky_,
                    est.covariances_),)


def test_a_resumed_fit_keeps_its_count_of_incomplete_rows(tmp_path):
    X = punch_holes(make_blobs(800, 3, 2, seed=49), 0.1, seed=50)
    checkpoint = daskgmm.Checkpoint(str(tmp_path / "ckpt.zip"), every=1)
    kw = dict(nan_policy="marginalize", random_state=0, max_iter=5, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        first = GaussianMixture(2, **kw).fit(X, checkpoint=checkpoint)
        again = GaussianMixture(2, **kw).fit(X, checkpoint=checkpoint)
    assert again.resumed_iteration_ == 5
    assert again.fit_n_incomplete_ == first.fit_n_incomplete_ == int(
        np.isnan(X).any(axis=1).sum())


def test_marginalize_starts_k_means_on_few_complete_rows():
    X = punch_holes(make_blobs(40, 3, 2, seed=51), 0.45, seed=52)
    assert 0 < (~np.isnan(X).any(axis=1)).sum() < 5
    gm = GaussianMixture(5, nan_policy="marginalize", random_state=0, reg_covar=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X)
    assert np.isfinite(gm.means_).all()


def test_zero_weights_without_nan_are_named_as_weights_under_omit():
    X = make_blobs(300, 2, 2, seed=53)
    with pytest.raises(ValueError, match=r"sample_weight|weights") as info:
        GaussianMixture(2, nan_policy="omit", init_params="random").fit(
            da.from_array(X, chunks=100), sample_weight=da.zeros(300, chunks=100))
    assert "holds NaN" not in str(info.value)
