"""The model store: versions, the current pointer, retention, refusal (local and S3)."""

import pytest
from numpy.testing import assert_array_equal

import daskgmm
from daskgmm import GaussianMixture, ModelStore

from .conftest import make_blobs


def test_versions_pointer_and_refusal(tmp_path, s3):
    X = make_blobs(1_000, 2, 2, seed=1)
    a = GaussianMixture(2, random_state=0).fit(X).set_threshold(X)
    b = GaussianMixture(3, random_state=0).fit(X).set_threshold(X)
    fs, options = s3
    for store in (ModelStore(tmp_path / "store"),
                  ModelStore("s3://data/store", storage_options=options)):
        assert store.current() is None and store.versions() == []
        va = store.new_version(a)
        store.save(a, va, {"run_id": "r1"})
        assert store.current() is None  # saved, not current yet
        store.promote(va)
        vb = store.new_version(b)
        store.save(b, vb, {"run_id": "r2"})
        assert store.versions() == [va, vb] and store.current()["version"] == va
        store.promote(vb)
        info = store.current()
        assert info["version"] == vb and info["run_id"] == "r2"
        assert info["model_id"] == daskgmm.model_id(b)
        assert_array_equal(store.load().means_, b.means_)
        assert_array_equal(store.load(va).means_, a.means_)
        assert store.load(va).threshold_ == a.threshold_
        url = store.write_file(vb, "report/x.txt", b"hello")
        assert url == f"{store.version_url(vb)}/report/x.txt"
        with pytest.raises(FileNotFoundError, match="No model version 'nope'"):
            store.info("nope")
        with pytest.raises(ValueError, match="Not a model store version name"):
            store.save(a, "../x", {})
    store = ModelStore(tmp_path / "store")
    first, current = store.versions()
    vc = store.new_version(a)
    store.save(a, vc, {})  # newest, not current
    assert store.prune(1) == [first]
    assert store.versions() == [current, vc] and store.current()["version"] == current
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("1,2")
    with pytest.raises(ValueError, match="Refusing to use .* data.csv, not written by daskgmm"):
        ModelStore(tmp_path / "mine").save(a, ModelStore(tmp_path).new_version(a), {})
    with pytest.raises(FileNotFoundError, match="has no current model yet"):
        ModelStore(tmp_path / "empty").load()
