"""The model store: versions, the current pointer, retention, refusal (local and S3)."""

import re

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
        store.promote(va, reason="first")
        vb = store.new_version(b)
        store.save(b, vb, {"run_id": "r2"})
        assert store.versions() == [va, vb] and store.current()["version"] == va
        store.promote(vb, reason="second")
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


def test_promotions_are_recorded_and_a_rollback_is_one_promotion(tmp_path):
    X = make_blobs(1_000, 2, 2, seed=1)
    store = ModelStore(tmp_path / "store")
    a = GaussianMixture(2, random_state=0).fit(X).set_threshold(X)
    b = GaussianMixture(3, random_state=0).fit(X).set_threshold(X)
    va, vb = store.new_version(a), store.new_version(b)
    store.save(a, va, {})
    store.save(b, vb, {})
    store.promote(va, reason="first", actor="tester")
    store.promote(vb, reason="better", actor="tester")
    back = store.promote(va, reason="rollback: b flags too much", actor="tester")
    assert back["previous"] == vb and store.current()["version"] == va
    assert store.current()["promotion_reason"] == "rollback: b flags too much"
    history = store.promotions()
    assert [(h["version"], h["previous"], h["promotion_reason"]) for h in history] == [
        (va, None, "first"), (vb, va, "better"), (va, vb, "rollback: b flags too much")]
    assert store.load().n_components == 2


def test_one_run_of_a_job_at_a_time(tmp_path, s3):
    import json
    import os
    import subprocess
    import sys
    from datetime import UTC, datetime, timedelta

    from daskgmm.model_store import LockedError

    fs, options = s3
    for store in (ModelStore(tmp_path / "store"),
                  ModelStore("s3://data/lockstore", storage_options=options)):
        with store.lock("job-nightly-1"):
            with pytest.raises(LockedError, match=r"Another run of this job is running: run "
                                                  r"'job-nightly-1' started at .* \(process "
                                                  rf"{os.getpid()}\)"):
                store.lock("job-score-1").acquire()
        with store.lock("job-score-1"):  # released: the next run takes it
            pass
        # an attempt interrupted after writing the lock (a time limit in Prefect's
        # retry): the retried acquire finds its own lock, and the run's release removes it
        # whether or not acquire returned; another lock object, even of the same run in
        # the same process, is another holder
        lock = store.lock("job-nightly-1")
        lock.acquire()
        lock.held = False  # as if interrupted before acquire returned
        lock.acquire()
        with pytest.raises(LockedError, match="run 'job-nightly-1'"):
            store.lock("job-nightly-1").acquire()
        lock.held = False
        lock.release()
        lock_path = f"{store.location.root}/lock"
        assert not store.location.fs.exists(lock_path)
        store.lock("job-nightly-1").release()  # not holding it: nothing to remove, no error
        # an expired lock of another host is replaced
        old = datetime.now(UTC) - timedelta(hours=30)
        store.location.fs.pipe_file(lock_path, json.dumps({
            "run_id": "old", "host": "elsewhere", "pid": 1, "started": old.isoformat(),
            "expires": (old + timedelta(hours=24)).isoformat()}).encode())
        with store.lock("job-nightly-2"):
            assert json.loads(store.location.fs.cat_file(lock_path))["run_id"] == "job-nightly-2"
    # a lock whose process is gone on this host is replaced at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    store = ModelStore(tmp_path / "store")
    (tmp_path / "store" / "lock").write_text(json.dumps({
        "run_id": "killed", "host": __import__("socket").gethostname(), "pid": int(dead),
        "started": datetime.now(UTC).isoformat(),
        "expires": (datetime.now(UTC) + timedelta(hours=24)).isoformat()}))
    with store.lock("job-nightly-3"):
        pass
    # a damaged lock file (not JSON, or an unreadable expiry) is stale, not a crash
    for damaged in ("{not json", json.dumps({"run_id": "x", "expires": "yesterday"})):
        (tmp_path / "store" / "lock").write_text(damaged)
        with store.lock("job-nightly-4"):
            assert json.loads((tmp_path / "store" / "lock").read_text())["run_id"] == \
                "job-nightly-4"
    assert not (tmp_path / "store" / "lock").exists()


def test_a_full_disk_is_named_and_leaves_the_current_model(small_disk):
    """Saving, promoting and locking on a full filesystem: an OSError naming the file
    and the fix, the filesystem's error chained, and every file readers see unchanged."""
    import errno

    from daskgmm._storage import StorageFullError

    from .conftest import snapshot

    X = make_blobs(600, 2, 2, seed=1)
    a = GaussianMixture(2, random_state=0).fit(X).set_threshold(X)
    b = GaussianMixture(3, random_state=0).fit(X).set_threshold(X)
    store = ModelStore(small_disk.path / "store")
    va = store.new_version(a)
    store.save(a, va, {"run_id": "r1"})
    store.promote(va, reason="first")
    before = snapshot(small_disk.path)
    small_disk.fill()
    vb = store.new_version(b)
    fix = "free space on the filesystem holding {} or choose another location"
    with pytest.raises(StorageFullError, match=re.escape(
            f"No space left on device while writing {store.version_url(vb)}/model.daskgmm: "
            + fix.format(f"{store.version_url(vb)}/model.daskgmm"))) as info:
        store.save(b, vb, {"run_id": "r2"})
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    with pytest.raises(OSError, match=re.escape(fix.format(f"{store.url}/current"))):
        store.promote(va, reason="again")
    with pytest.raises(OSError, match=re.escape(fix.format(f"{store.url}/lock"))):
        store.lock("job-nightly-1").acquire()
    assert snapshot(small_disk.path) == before  # no partial version, no lock, same pointer
    assert store.current()["version"] == va and store.versions() == [va]
    assert_array_equal(store.load().means_, a.means_)
    small_disk.free()
    store.save(b, vb, {"run_id": "r2"})  # with space again, the same save succeeds
    assert store.versions() == [va, vb]
