"""Resumable fits: a fit interrupted after a checkpoint resumes and reaches the same model."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from daskgmm import Checkpoint, GaussianMixture

from .conftest import COVARIANCE_TYPES, Crash, crash_at, make_blobs


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_resumed_fit_reaches_the_uninterrupted_model(tmp_path, covariance_type):
    X = make_blobs(3_000, 3, 4, seed=8, overlap=2.0)
    kw = dict(n_components=4, covariance_type=covariance_type, n_init=2, random_state=0,
              tol=1e-8, max_iter=40, chunk_rows=700)
    ref = GaussianMixture(**kw).fit(X)
    assert ref.n_iter_ > 8
    ckpt = Checkpoint(tmp_path / "ckpt", every=3)
    with pytest.raises(Crash):
        GaussianMixture(**kw).fit(X, checkpoint=ckpt, callback=crash_at(8))
    assert ckpt.n_saved == 2  # after iterations 3 and 6
    seen = []
    resumed = GaussianMixture(**kw).fit(X, checkpoint=ckpt, callback=seen.append)
    # continued after the checkpoint at 6
    assert min(e.n_iter for e in seen if e.phase == "em") == 7
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert_array_equal(getattr(resumed, name), getattr(ref, name))
    assert resumed.n_iter_ == ref.n_iter_ and resumed.lower_bounds_ == ref.lower_bounds_
    assert resumed.n_passes_ == ref.n_passes_


def test_checkpoint_of_another_fit_is_ignored(tmp_path, caplog):
    X = make_blobs(1_000, 2, 2, seed=9)
    ckpt = Checkpoint(tmp_path / "ckpt", every=1)
    GaussianMixture(2, random_state=0).fit(X, checkpoint=ckpt)
    other = GaussianMixture(2, random_state=1).fit(X, checkpoint=ckpt)
    ref = GaussianMixture(2, random_state=1).fit(X)
    assert_array_equal(other.means_, ref.means_)
    assert "belongs to another fit" in caplog.text
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        Checkpoint(tmp_path / "x", every=0)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_warm_start_resume_and_callback(tmp_path):
    import copy

    X = make_blobs(3_000, 3, 4, seed=8, overlap=2.0)
    start = GaussianMixture(4, random_state=0, max_iter=2, warm_start=True).fit(X)
    start.set_params(max_iter=30, tol=1e-9)
    ref = copy.deepcopy(start)
    infos = []
    ref.fit(X, callback=infos.append)
    assert [e.n_iter for e in infos] == list(range(1, ref.n_iter_ + 1))
    assert ref.n_iter_ > 6
    assert [e.phase for e in infos] == ["em"] * ref.n_iter_  # a warm start has no init pass
    assert infos[0].max_iter == 30 and infos[-1].active == 0
    ckpt = Checkpoint(tmp_path / "c", every=2)
    with pytest.raises(Crash):
        copy.deepcopy(start).fit(X, checkpoint=ckpt, callback=crash_at(5))
    resumed = copy.deepcopy(start).fit(X, checkpoint=ckpt)
    assert_array_equal(resumed.means_, ref.means_)
    assert_array_equal(resumed.covariances_, ref.covariances_)
    # a checkpoint from another starting model is not used
    other = copy.deepcopy(ref).fit(X, checkpoint=ckpt)
    assert other.n_iter_ <= 2


_PARQUET_CRASH = """
import sys
import daskgmm

def stop(event):
    if event.n_iter == 5:
        raise SystemExit(3)

gm = daskgmm.GaussianMixture(4, random_state=0, tol=1e-9, max_iter=30, columns=["a", "b", "c"])
gm.fit(sys.argv[1], checkpoint=daskgmm.Checkpoint(sys.argv[2], every=2), callback=stop)
"""


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_parquet_checkpoint_resumes_in_another_process(tmp_path):
    import subprocess
    import sys

    import pandas as pd

    X = make_blobs(4_000, 3, 4, seed=8, overlap=2.0)
    (tmp_path / "pq").mkdir()
    for i, part in enumerate(np.array_split(X, 3)):
        pd.DataFrame(part, columns=["a", "b", "c"]).to_parquet(tmp_path / "pq" / f"{i}.parquet")
    ckpt = tmp_path / "ckpt"
    done = subprocess.run([sys.executable, "-c", _PARQUET_CRASH, str(tmp_path / "pq"),
                           str(ckpt)], capture_output=True, text=True)
    assert done.returncode == 3 and ckpt.exists(), done.stderr
    kw = dict(n_components=4, random_state=0, tol=1e-9, max_iter=30, columns=["a", "b", "c"])
    resumed = GaussianMixture(**kw).fit(str(tmp_path / "pq"), checkpoint=Checkpoint(ckpt))
    assert resumed.resumed_iteration_ == 4
    ref = GaussianMixture(**kw).fit(str(tmp_path / "pq"))
    assert_array_equal(resumed.means_, ref.means_)


def test_zarr_rewritten_in_place_is_not_resumed(tmp_path):
    import zarr

    from daskgmm.synthetic import write_mixture_zarr

    path = str(tmp_path / "d.zarr")
    write_mixture_zarr(path, 3_000, 3, 3, chunk_rows=1_000, seed=1)
    ckpt = Checkpoint(tmp_path / "ckpt", every=1)
    first = GaussianMixture(3, random_state=0, array_name="X").fit(path, checkpoint=ckpt)
    X = zarr.open_group(path, mode="a")["X"]
    X[:1_000] = X[:1_000] + 100.0  # corrected data written over the same array
    again = GaussianMixture(3, random_state=0, array_name="X").fit(path, checkpoint=ckpt)
    assert again.resumed_iteration_ == 0
    assert not np.allclose(again.means_, first.means_)
    same = GaussianMixture(3, random_state=0, array_name="X").fit(path, checkpoint=ckpt)
    assert same.resumed_iteration_ == same.n_iter_  # unchanged data: the finished state


def test_a_damaged_checkpoint_of_the_same_fit_is_reported_and_the_fit_starts_afresh(
        tmp_path, caplog):
    import io
    import json
    import zipfile

    X = make_blobs(2_000, 3, 3, seed=10)
    kw = dict(n_components=3, random_state=0, tol=1e-8, max_iter=30)
    ref = GaussianMixture(**kw).fit(X)
    path = tmp_path / "ckpt"
    with pytest.raises(Crash):
        GaussianMixture(**kw).fit(X, checkpoint=Checkpoint(path, every=2),
                                  callback=crash_at(3))
    original = path.read_bytes()

    def rewrite(edit):
        with zipfile.ZipFile(io.BytesIO(original)) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
        edit(members)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        path.write_bytes(buf.getvalue())

    def nan_means(members):
        buf = io.BytesIO()
        np.save(buf, np.full((3, 3), np.nan))
        members["c0/means.npy"] = buf.getvalue()

    def bad_state(members):
        state = json.loads(members["state.json"])
        state["candidates"][0]["n_iter"] = "two"
        members["state.json"] = json.dumps(state).encode()

    damages = [
        (lambda: path.write_bytes(original[: len(original) // 2]), "BadZipFile"),
        (lambda: rewrite(lambda m: m.update({"state.json": b"{half"})), "JSONDecodeError"),
        (lambda: rewrite(nan_means), "member c0/means.npy: not finite float64 values"),
        (lambda: rewrite(lambda m: m.pop("c0/weights.npy")), "member c0/weights.npy"),
        (lambda: rewrite(bad_state), "ValueError"),
    ]
    for damage, named in damages:
        damage()
        caplog.clear()
        again = GaussianMixture(**kw).fit(X, checkpoint=Checkpoint(path, every=2))
        assert f"ignoring damaged checkpoint {path}" in caplog.text and named in caplog.text
        assert again.resumed_iteration_ == 0  # started afresh, to the same model
        assert_array_equal(again.means_, ref.means_)


def test_a_full_disk_is_named_and_leaves_the_saved_checkpoint(small_disk, caplog):
    import errno
    import re

    from .conftest import snapshot

    X = make_blobs(1_000, 2, 2, seed=9)
    path = small_disk.path / "run.ckpt"
    GaussianMixture(2, random_state=0).fit(X, checkpoint=Checkpoint(path, every=1))
    before = snapshot(small_disk.path)
    small_disk.fill()
    with pytest.raises(OSError, match=re.escape(
            f"No space left on device while writing {path}: free space on the filesystem "
            f"holding {path} or choose another location.")) as info:
        GaussianMixture(2, random_state=1).fit(X, checkpoint=Checkpoint(path, every=1))
    assert info.value.errno == errno.ENOSPC and info.value.__cause__.errno == errno.ENOSPC
    assert snapshot(small_disk.path) == before  # the last checkpoint, and no temporary file


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_retry_on_other_workers_resumes_though_auto_chunks_differ(tmp_path):
    """``chunk_rows='auto'`` follows the workers' memory: a fit interrupted on small
    workers (Zarr read in 3 chunks) resumes without a cluster (1 chunk), and reaches the
    uninterrupted model up to the rounding of the sums."""
    import dask
    from distributed import Client, LocalCluster
    from numpy.testing import assert_allclose

    from daskgmm.synthetic import write_mixture_zarr

    path = str(tmp_path / "d.zarr")
    write_mixture_zarr(path, 400_000, 3, 3, chunk_rows=50_000, seed=3)
    kw = dict(n_components=3, random_state=0, tol=0.0, max_iter=8, array_name="X")
    ckpt = Checkpoint(tmp_path / "ckpt", every=2)
    # an in-process worker measures this whole process's memory (over 1 GiB late in a
    # full test run) and would pause: its memory limit shapes the chunks, never pauses
    with dask.config.set({"distributed.worker.memory.monitor-interval": "1h"}), \
            LocalCluster(n_workers=1, threads_per_worker=32, processes=False,
                         memory_limit="1GiB", dashboard_address=None) as cluster, \
            Client(cluster):
        with pytest.raises(Crash):
            GaussianMixture(**kw).fit(path, checkpoint=ckpt, callback=crash_at(5))
        from daskgmm.sources import as_dataset

        assert len(as_dataset(path, array_name="X").array.chunks[0]) == 3
    resumed = GaussianMixture(**kw).fit(path, checkpoint=ckpt)
    assert resumed.resumed_iteration_ == 4
    ref = GaussianMixture(**kw).fit(path)
    for name in ("weights_", "means_", "covariances_"):
        assert_allclose(getattr(resumed, name), getattr(ref, name), rtol=1e-10)
