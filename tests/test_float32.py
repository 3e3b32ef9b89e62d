"""float32 input: float32 fitted attributes and outputs, as scikit-learn's, from an E-step
in float32 whose statistics add up in float64.

Oracles: scikit-learn's own float32 fit from the same initial parameters, and its
float64 fit of the same (float32-valued) data.
"""

import io
import warnings
import zipfile

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import daskgmm
from daskgmm import GaussianMixture, as_dataset, kernels

from .conftest import (
    COVARIANCE_TYPES,
    make_blobs,
    random_params,
    refused_when_edited,
)

KERNELS_VARIABLE = "DASKGMM_KERNELS"
ATTRIBUTES = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")
RTOL = 1e-4


@pytest.fixture(scope="module")
def blobs32():
    return make_blobs(n_samples=2000).astype(np.float32)


def sk_start(X, covariance_type):
    """Initial parameters (float32) from one step of scikit-learn on ``X``."""
    sk = SkGaussianMixture(3, covariance_type=covariance_type, max_iter=1, random_state=0,
                           init_params="random_from_data")
    with warnings.catch_warnings():  # one step: not converged, or (offset data) it says so
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk.fit(X)
    return dict(weights_init=sk.weights_, means_init=sk.means_, precisions_init=sk.precisions_)


def assert_close_model(ours, ref, rtol=RTOL):
    """Every fitted array within ``rtol`` of ``ref``'s (an entry near 0, such as an
    off-diagonal covariance, within ``rtol`` of the array's largest)."""
    for name in ATTRIBUTES:
        expected = np.asarray(getattr(ref, name), dtype=np.float64)
        assert_allclose(getattr(ours, name), expected, rtol=rtol,
                        atol=rtol * np.abs(expected).max(), err_msg=name)


def zarr_path(tmp_path, X, chunk_rows=500):
    path = tmp_path / "x.zarr"
    z = zarr.create_array(store=str(path), shape=X.shape, chunks=(chunk_rows, X.shape[1]),
                          dtype=X.dtype)
    z[:] = X
    return str(path)


###############################################################################
# dtypes


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_dtypes_are_scikit_learns(blobs32, covariance_type):
    ref = SkGaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(blobs32)
    ours = GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(blobs32)
    for name in ATTRIBUTES:
        assert getattr(ours, name).dtype == getattr(ref, name).dtype == np.float32, name
    assert type(ours.lower_bound_) is type(ref.lower_bound_) is np.float32
    assert {type(v) for v in ours.lower_bounds_} == {type(v) for v in ref.lower_bounds_}
    X64 = blobs32.astype(np.float64)
    for X in (blobs32, X64):  # float32 only for float32 rows, as scikit-learn
        for method in ("score_samples", "predict_proba", "predict"):
            assert getattr(ours, method)(X).dtype == getattr(ref, method)(X).dtype, method
    for method in ("score", "bic", "aic"):  # float64 scalars
        ours_value, ref_value = getattr(ours, method)(blobs32), getattr(ref, method)(blobs32)
        assert isinstance(ours_value, float) and isinstance(ref_value, float), method
    X_sample, y_sample = ours.sample(5)  # float64 rows: numpy draws float64 numbers
    with warnings.catch_warnings():  # numpy's on scikit-learn's float32 covariances
        warnings.simplefilter("ignore", RuntimeWarning)
        ref_sample = ref.sample(5)
    assert (X_sample.dtype, y_sample.dtype) == tuple(a.dtype for a in ref_sample)


def test_float64_and_other_inputs_stay_float64(tmp_path, blobs):
    assert as_dataset(blobs).dtype == np.float64
    assert as_dataset(blobs.astype(np.float16)).dtype == np.float64
    assert as_dataset(np.arange(12).reshape(6, 2)).dtype == np.float64
    assert as_dataset(da.from_array(np.arange(12, dtype=np.int32).reshape(6, 2))).dtype == (
        np.float64)
    gm = GaussianMixture(2, random_state=0).fit(blobs)
    assert all(getattr(gm, name).dtype == np.float64 for name in ATTRIBUTES)
    assert type(gm.lower_bound_) is float
    assert gm.score_samples(blobs.astype(np.float32)).dtype == np.float64  # as scikit-learn


def test_parquet_float32_columns_stay_float32_and_mixed_ones_do_not(tmp_path, blobs32):
    frame = pd.DataFrame(blobs32, columns=["a", "b", "c"])
    (tmp_path / "f32").mkdir()
    frame.iloc[:1000].to_parquet(tmp_path / "f32" / "part.0.parquet", index=False)
    frame.iloc[1000:].to_parquet(tmp_path / "f32" / "part.1.parquet", index=False)
    assert as_dataset(str(tmp_path / "f32")).dtype == np.float32

    ours = GaussianMixture(3, random_state=0).fit(str(tmp_path / "f32"))
    in_memory = GaussianMixture(3, random_state=0, chunk_rows=1000).fit(blobs32)
    for name in ATTRIBUTES:
        assert getattr(ours, name).dtype == np.float32
        assert_allclose(getattr(ours, name), getattr(in_memory, name), rtol=1e-5,
                        atol=1e-6 * np.abs(getattr(in_memory, name)).max())
    assert ours.score_samples(str(tmp_path / "f32")).compute().dtype == np.float32

    # one file's column in float64, or an integer column: float64
    (tmp_path / "mixed").mkdir()
    frame.iloc[:1000].to_parquet(tmp_path / "mixed" / "part.0.parquet", index=False)
    frame.iloc[1000:].astype({"b": np.float64}).to_parquet(
        tmp_path / "mixed" / "part.1.parquet", index=False)
    assert as_dataset(str(tmp_path / "mixed")).dtype == np.float64
    (tmp_path / "ints").mkdir()
    frame.assign(n=np.arange(len(frame))).to_parquet(tmp_path / "ints" / "p.parquet",
                                                     index=False)
    assert as_dataset(str(tmp_path / "ints")).dtype == np.float64
    assert as_dataset(str(tmp_path / "ints"), columns=["a", "c"]).dtype == np.float32
    mixed = GaussianMixture(3, random_state=0).fit(str(tmp_path / "mixed"))
    assert all(getattr(mixed, name).dtype == np.float64 for name in ATTRIBUTES)


###############################################################################
# The fit, against scikit-learn's float32 fit


@pytest.mark.parametrize("source", ["numpy", "dask", "zarr"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_same_fit_as_sklearn_float32(tmp_path, blobs32, covariance_type, source):
    kw = dict(covariance_type=covariance_type, **sk_start(blobs32, covariance_type))
    ref = SkGaussianMixture(3, **kw).fit(blobs32)
    X = {"numpy": lambda: blobs32,
         "dask": lambda: da.from_array(blobs32, chunks=(300, 3)),
         "zarr": lambda: zarr_path(tmp_path, blobs32)}[source]()
    assert as_dataset(X).dtype == np.float32
    ours = GaussianMixture(3, chunk_rows=300, **kw).fit(X)
    for name in ATTRIBUTES:
        assert getattr(ours, name).dtype == np.float32
    assert_close_model(ours, ref)
    assert ours.n_iter_ == ref.n_iter_ and ours.converged_ == ref.converged_
    assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=1e-5)
    scores = np.asarray(ours.score_samples(X))
    assert scores.dtype == np.float32
    assert_allclose(scores, ref.score_samples(blobs32), rtol=RTOL)
    proba = np.asarray(ours.predict_proba(X))
    assert proba.dtype == np.float32
    assert_allclose(proba, ref.predict_proba(blobs32), rtol=RTOL, atol=1e-5)
    assert_array_equal(np.asarray(ours.predict(X)), ref.predict(blobs32))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_close_to_the_float64_fit(blobs32, covariance_type):
    """The statistics add up in float64: the float32 fit is the float64 fit of the same
    values, but for the rounding of the E-step and of the fitted arrays to float32."""
    X64 = blobs32.astype(np.float64)
    kw = dict(covariance_type=covariance_type, tol=1e-6, max_iter=500,
              **sk_start(blobs32, covariance_type))
    ref64 = SkGaussianMixture(3, **kw).fit(X64)
    ours = GaussianMixture(3, chunk_rows=300, **kw).fit(blobs32)
    assert ours.n_iter_ == ref64.n_iter_
    assert_close_model(ours, ref64, rtol=1e-4)
    assert_allclose(ours.weights_, ref64.weights_, rtol=1e-5)
    assert_allclose(ours.means_, ref64.means_, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_shifted_data(covariance_type):
    """Data offset by 1e4 (float32 keeps 3 decimals there) fit like the float64 fit of
    the same values: the rows are centred on the engine's shift before any float32
    arithmetic. (scikit-learn's float32 fit, which does not centre, finds a covariance
    ill-defined here.)"""
    X = (make_blobs(n_samples=2000) + 1e4).astype(np.float32)
    X64 = X.astype(np.float64)
    kw = dict(covariance_type=covariance_type, **sk_start(X64, covariance_type))
    ref64 = SkGaussianMixture(3, **kw).fit(X64)
    ours = GaussianMixture(3, chunk_rows=300, **kw).fit(X)
    assert ours.n_iter_ == ref64.n_iter_
    assert_close_model(ours, ref64)


def test_chunking_does_not_matter(blobs32):
    kw = dict(covariance_type="full", **sk_start(blobs32, "full"))
    a = GaussianMixture(3, chunk_rows=128, **kw).fit(blobs32)
    b = GaussianMixture(3, chunk_rows=2000, **kw).fit(blobs32)
    assert a.n_iter_ == b.n_iter_
    assert_close_model(a, b)


def test_fit_on_a_cluster(cluster_client, tmp_path, blobs32):
    kw = dict(covariance_type="diag", **sk_start(blobs32, "diag"))
    ref = SkGaussianMixture(3, **kw).fit(blobs32)
    ours = GaussianMixture(3, chunk_rows=500, cache=False, **kw).fit(
        zarr_path(tmp_path, blobs32))
    assert ours.means_.dtype == np.float32
    assert_close_model(ours, ref)


###############################################################################
# The kernels


@pytest.mark.parametrize("kernels_choice", ["auto", "numpy"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_chunk_statistics_of_float32_rows(monkeypatch, covariance_type, kernels_choice):
    """float32 rows: float64 statistics within float32 rounding of those of the same
    values in float64 (the compiled kernels compute in float64: the same up to the order
    of the sums)."""
    monkeypatch.setenv(KERNELS_VARIABLE, kernels_choice)
    rng = np.random.default_rng(1)
    X32 = rng.normal(0, 3, size=(5000, 4)).astype(np.float32)
    weights = rng.uniform(0, 2, size=5000)
    params = random_params(covariance_type)
    (s32,) = kernels.chunk_stats(X32, [params], weights)
    (s64,) = kernels.chunk_stats(X32.astype(np.float64), [params], weights)
    for name in ("nk", "s1", "s2"):
        got, expected = getattr(s32, name), getattr(s64, name)
        assert got.dtype == np.float64
        assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max(),
                        err_msg=name)
    assert_allclose(s32.log_likelihood, s64.log_likelihood, rtol=1e-6)
    assert (s32.n_samples, s32.weight) == (s64.n_samples, s64.weight)


def test_float32_overflow_is_computed_again_in_float64(monkeypatch):
    """A squared distance beyond float32 (a row at 1e21 standard deviations) is inf in
    float32; the chunk is computed again in float64, where it is finite."""
    monkeypatch.setenv(KERNELS_VARIABLE, "numpy")
    rng = np.random.default_rng(2)
    X32 = rng.normal(size=(1000, 4)).astype(np.float32)
    X32[7] = 1e21
    params = random_params("full")
    (s32,) = kernels.chunk_stats(X32, [params])
    (s64,) = kernels.chunk_stats(X32.astype(np.float64), [params])
    assert np.isfinite(s64.log_likelihood)
    for name in ("nk", "s1", "s2", "log_likelihood"):
        assert_array_equal(getattr(s32, name), getattr(s64, name))


###############################################################################
# Missing values


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_missing_values_marginalized(blobs32, covariance_type):
    """Rows holding NaN take the float64 marginal E-step: the fit is the float64 fit of
    the same values, within float32 rounding."""
    X = blobs32.copy()
    rng = np.random.default_rng(3)
    X[rng.random(X.shape) < 0.1] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.5
    kw = dict(covariance_type=covariance_type, nan_policy="marginalize", chunk_rows=300,
              **sk_start(blobs32, covariance_type))
    ours = GaussianMixture(3, **kw).fit(X)
    ref = GaussianMixture(3, **kw).fit(X.astype(np.float64))
    assert ours.means_.dtype == np.float32 and ref.means_.dtype == np.float64
    assert ours.n_iter_ == ref.n_iter_
    assert_close_model(ours, ref)
    scores = ours.score_samples(X)
    assert scores.dtype == np.float32
    assert_allclose(scores, ref.score_samples(X.astype(np.float64)), rtol=RTOL)


def test_missing_values_omitted(blobs32):
    X = blobs32.copy()
    X[::7, 1] = np.nan
    complete = X[~np.isnan(X).any(axis=1)]
    kw = dict(covariance_type="full", **sk_start(complete, "full"))
    ref = SkGaussianMixture(3, **kw).fit(complete)
    ours = GaussianMixture(3, nan_policy="omit", chunk_rows=300, **kw).fit(X)
    assert_close_model(ours, ref)
    assert ours.fit_n_incomplete_ == int(np.isnan(X).any(axis=1).sum())


###############################################################################
# Model files and anomaly scores


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_model_file_keeps_float32(tmp_path, blobs32, covariance_type):
    gm = GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(blobs32)
    path = tmp_path / "gm.daskgmm"
    gm.save(path)
    with zipfile.ZipFile(path) as zf:
        assert np.load(io.BytesIO(zf.read("arrays/means_.npy"))).dtype == np.float32
    loaded = daskgmm.load(path)
    for name in ATTRIBUTES:
        assert getattr(loaded, name).dtype == np.float32
        assert_array_equal(getattr(loaded, name), getattr(gm, name))
    assert type(loaded.lower_bound_) is np.float32 and loaded.lower_bound_ == gm.lower_bound_
    assert loaded.lower_bounds_ == gm.lower_bounds_
    assert_array_equal(loaded.score_samples(blobs32), gm.score_samples(blobs32))
    # the float64 copy of the same values is another model, with another id
    copy = GaussianMixture(**gm.get_params()).set_fitted(
        daskgmm.Mixture(covariance_type, *(getattr(gm, n).astype(np.float64) for n in (
            "weights_", "means_", "precisions_cholesky_", "covariances_"))))
    assert daskgmm.model_id(copy) != daskgmm.model_id(loaded)


def _npy(array):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _retyped(name, dtype):
    def edit(members):
        array = np.load(io.BytesIO(members[f"arrays/{name}.npy"]))
        members[f"arrays/{name}.npy"] = _npy(array.astype(dtype))
    return edit


def _all_retyped(dtype):
    def edit(members):
        for member in [m for m in members if m.endswith(".npy")]:
            members[member] = _npy(np.load(io.BytesIO(members[member])).astype(dtype))
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (_retyped("means_", np.float16), r"member arrays/means_.npy has dtype float16; model "
                                     r"files hold float64 arrays, or float32"),
    (_retyped("covariances_", np.float64),
     r"member arrays/covariances_.npy has another dtype than the model's other arrays "
     r"\(weights_ float32, means_ float32, covariances_ float64"),
    (_retyped("weights_", np.int32), r"arrays/weights_.npy has dtype int32, not floating"),
    # every array made float64: the same values, but not the model that was saved
    (_all_retyped(np.float64), r"does not hash to its model id"),
])
def test_tampered_dtypes_are_refused(tmp_path, blobs32, edit, message):
    path = tmp_path / "gm.daskgmm"
    GaussianMixture(3, random_state=0).fit(blobs32).save(path)
    refused_when_edited(path, edit, message)


def test_anomaly_scores_keep_their_float64_schema(tmp_path, blobs32):
    kw = dict(covariance_type="full", **sk_start(blobs32, "full"))
    ref = SkGaussianMixture(3, **kw).fit(blobs32)
    gm = GaussianMixture(3, chunk_rows=300, **kw).fit(blobs32).set_threshold(
        blobs32, contamination=0.05)
    scores = gm.anomaly_scores(blobs32)
    assert dict(scores.dtypes) == {name: kernels.SCORE_DTYPE[name]
                                   for name in kernels.SCORE_DTYPE.names}
    expected = ref.score_samples(blobs32).astype(np.float64)
    assert_allclose(scores["log_density"], expected, rtol=RTOL)
    assert_allclose(scores["anomaly_score"], -expected, rtol=RTOL)
    assert_allclose(scores["responsibility"], ref.predict_proba(blobs32).max(axis=1),
                    rtol=RTOL)
    assert_allclose(gm.threshold_, np.quantile(expected, 0.05), rtol=RTOL)
    assert scores["is_anomaly"].mean() == pytest.approx(0.05, abs=2 / len(blobs32))
    records = gm.anomaly_scores(da.from_array(blobs32, chunks=(500, 3))).compute()
    assert records.dtype == kernels.SCORE_DTYPE
    # the model file keeps the threshold with the float32 model
    gm.save(tmp_path / "gm.daskgmm")
    loaded = daskgmm.load(tmp_path / "gm.daskgmm")
    assert loaded.threshold_ == gm.threshold_
    assert_array_equal(loaded.anomaly_scores(blobs32)["log_density"], scores["log_density"])


def test_warm_start_from_a_float32_model(blobs32):
    gm = GaussianMixture(3, covariance_type="diag", random_state=0, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(blobs32)
    gm.set_params(warm_start=True, max_iter=100)
    gm.fit(blobs32)
    assert gm.means_.dtype == np.float32 and gm.converged_
    ref = SkGaussianMixture(3, covariance_type="diag", random_state=0).fit(blobs32)
    assert_allclose(np.sort(gm.means_[:, 0]), np.sort(ref.means_[:, 0]), rtol=1e-2)


def test_the_initial_weights_of_a_float32_model_are_accepted(blobs32):
    """A float32 model's weights_ sum to 1 within float32 rounding; as scikit-learn, they
    are valid initial weights."""
    ref = SkGaussianMixture(3, random_state=0).fit(blobs32)
    weights = ref.weights_.copy()
    weights[0] += 4e-7  # float32 rounding of a sum of weights
    gm = GaussianMixture(3, weights_init=weights, means_init=ref.means_,
                         precisions_init=ref.precisions_).fit(blobs32)
    assert gm.weights_.dtype == np.float32
    with pytest.raises(ValueError, match="should be normalized"):
        GaussianMixture(3, weights_init=weights.astype(np.float64)).fit(blobs32)
