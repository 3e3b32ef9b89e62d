"""Fitting and predicting from Zarr and Parquet files, locally and on a real cluster."""

import io
import json
import zipfile

import dask.array as da
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import daskgmm
from daskgmm import GaussianMixture
from daskgmm.synthetic import write_mixture_zarr

from .conftest import make_blobs

KW = dict(n_components=3, random_state=0, tol=1e-6)


@pytest.fixture(scope="module")
def zarr_source(tmp_path_factory):
    path = tmp_path_factory.mktemp("z") / "data.zarr"
    write_mixture_zarr(path, 30_000, 4, 3, chunk_rows=7_000, seed=3)
    return path


def test_fit_from_zarr_path_equals_in_memory(zarr_source):
    X = zarr.open_array(str(zarr_source / "X"), mode="r")[:]
    for cache in (False, True):
        from_file = GaussianMixture(**KW, array_name="X", cache=cache).fit(str(zarr_source))
        in_memory = GaussianMixture(**KW).fit(X)
        assert from_file.n_iter_ == in_memory.n_iter_
        assert_allclose(from_file.means_, in_memory.means_, rtol=1e-9)
        assert_allclose(from_file.covariances_, in_memory.covariances_, rtol=1e-9)
    ref = SkGaussianMixture(**KW).fit(X)
    assert_allclose(from_file.means_, ref.means_, rtol=1e-6)
    labels = from_file.predict(str(zarr_source))
    assert isinstance(labels, da.Array) and labels.chunks[0] == (7_000,) * 4 + (2_000,)
    assert_array_equal(labels.compute(), ref.predict(X))
    assert_allclose(from_file.score(str(zarr_source)), ref.score(X), rtol=1e-9)
    assert_allclose(from_file.bic(str(zarr_source)), ref.bic(X), rtol=1e-9)


def test_zarr_on_cluster_streaming(cluster_client, zarr_source):
    X = zarr.open_array(str(zarr_source / "X"), mode="r")[:]
    ours = GaussianMixture(**KW, array_name="X", cache=False, chunk_rows=None).fit(
        str(zarr_source))
    ref = SkGaussianMixture(**KW).fit(X)
    assert_allclose(ours.means_, ref.means_, rtol=1e-6)
    assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=1e-6)


def test_fit_from_parquet_with_columns(tmp_path):
    X = make_blobs(3_000, 3, 3, seed=4)
    root = tmp_path / "pq"
    root.mkdir()
    sizes = [1000, 1200, 800]
    start = 0
    for i, n in enumerate(sizes):
        part = X[start : start + n]
        table = pa.table({"id": np.arange(start, start + n), "a": part[:, 0],
                          "name": ["r"] * n, "b": part[:, 1], "c": part[:, 2]})
        pq.write_table(table, root / f"part.{i}.parquet")
        start += n
    gm = GaussianMixture(**KW, columns=["a", "b", "c"]).fit(str(root))
    ref = SkGaussianMixture(**KW).fit(X)
    assert_allclose(gm.means_, ref.means_, rtol=1e-6)
    assert list(gm.feature_names_in_) == ["a", "b", "c"]
    scores = gm.score_samples(str(root))
    assert scores.chunks[0] == tuple(sizes)
    assert_allclose(scores.compute(), ref.score_samples(X), rtol=1e-6)
    with pytest.raises(ValueError, match="Column 'name' has Arrow type string in file 'part.0"):
        GaussianMixture(**KW, columns=["a", "name"]).fit(str(root))
    with pytest.raises(ValueError, match=r"expected columns \['a', 'b', 'c'\], got \['a', 'c'"):
        gm.set_params(columns=["a", "c", "b"]).predict(str(root))


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        GaussianMixture(2).fit(str(tmp_path / "nowhere.zarr"))


def test_fit_save_load_on_s3(s3, zarr_source):
    fs, options = s3
    X = zarr.open_array(str(zarr_source / "X"), mode="r")[:]
    write_mixture_zarr("s3://data/mix.zarr", 30_000, 4, 3, chunk_rows=7_000, seed=3,
                       storage_options=options)
    gm = GaussianMixture(**KW, array_name="X", storage_options=options).fit("s3://data/mix.zarr")
    local = GaussianMixture(**KW).fit(X)
    assert_allclose(gm.means_, local.means_, rtol=1e-9)
    gm.save("s3://data/models/gm.daskgmm", storage_options=options)
    assert fs.exists("data/models/gm.daskgmm")
    assert not [p for p in fs.ls("data/models") if ".tmp-" in p]  # no temporary left over
    loaded = daskgmm.load("s3://data/models/gm.daskgmm", storage_options=options)
    assert_allclose(loaded.score_samples(X), local.score_samples(X), rtol=1e-9)
    with zipfile.ZipFile(io.BytesIO(fs.cat("data/models/gm.daskgmm"))) as zf:
        meta = json.loads(zf.read("metadata.json"))
    assert "storage_options" not in meta["params"]  # credentials are never written
    assert "testing" not in json.dumps(meta)
