"""Sources that are damaged, unreadable or change under the job: every read error names
the file (and the chunk or row group) and what to do; nothing is read as data silently.

Oracles: the values read back are compared with the numpy array written; the errors'
types and messages are the contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal

import daskgmm
from daskgmm.sources import (
    DamagedSourceError,
    MissingChunksError,
    SourceChangedError,
    as_dataset,
    source_fingerprint,
)


@pytest.fixture
def data():
    return np.random.default_rng(0).normal(size=(1_000, 3))


def _zarr_group(path, data, chunk=100, **kwargs):
    group = zarr.open_group(str(path), mode="w")
    array = group.create_array("X", shape=data.shape, chunks=(chunk, data.shape[1]),
                               dtype=data.dtype, **kwargs)
    array[:] = data
    return array


def _parquet(path, data, files=3, **kwargs):
    path.mkdir()
    per = len(data) // files
    for i in range(files):
        part = data[i * per:(i + 1) * per if i < files - 1 else len(data)]
        pq.write_table(pa.table({"a": part[:, 0], "b": part[:, 1], "c": part[:, 2]}),
                       path / f"part.{i}.parquet", row_group_size=100, **kwargs)
    return path


###############################################################################
# Missing Zarr chunks


def test_missing_zarr_chunk_is_an_error_naming_the_array_and_rows(tmp_path, data):
    _zarr_group(tmp_path / "d.zarr", data)
    os.remove(tmp_path / "d.zarr" / "X" / "c" / "3" / "0")
    os.remove(tmp_path / "d.zarr" / "X" / "c" / "7" / "0")
    match = (r"Zarr array '.*d\.zarr' \(array 'X'\) is missing 2 of its 10 stored chunks: "
             r"chunk 'c/3/0' \(rows 300 to 399\), chunk 'c/7/0' \(rows 700 to 799\)\. Zarr "
             r"would read them as the fill value \(0\.0\).*missing_chunks='fill'")
    with pytest.raises(MissingChunksError, match=match):
        as_dataset(str(tmp_path / "d.zarr"))
    with pytest.raises(MissingChunksError, match=match):  # an estimator reading the path
        daskgmm.GaussianMixture(2, random_state=0).fit(str(tmp_path / "d.zarr"))
    with pytest.raises(MissingChunksError, match="missing 2 of its 10"):  # a Zarr object
        as_dataset(zarr.open_group(str(tmp_path / "d.zarr"), mode="r")["X"])

    # the explicit opt-in reads them as the fill value
    filled = as_dataset(str(tmp_path / "d.zarr"), missing_chunks="fill").array.compute()
    expected = data.copy()
    expected[300:400] = expected[700:800] = 0.0
    assert_array_equal(filled, expected)
    gm = daskgmm.GaussianMixture(2, random_state=0, missing_chunks="fill")
    assert gm.fit(str(tmp_path / "d.zarr")).n_features_in_ == 3
    with pytest.raises(ValueError, match=r"'missing_chunks' parameter of GaussianMixture "
                                         r"must be a str among \{'raise', 'fill'\}"):
        daskgmm.GaussianMixture(missing_chunks="zeros").fit(data)


def test_sharded_array_missing_shard_and_complete_arrays_pass(tmp_path, data):
    z = _zarr_group(tmp_path / "s.zarr", data, chunk=50, shards=(200, 3))
    assert_array_equal(as_dataset(str(tmp_path / "s.zarr")).array.compute(), data)
    key = z.metadata.encode_chunk_key((2, 0))
    os.remove(tmp_path / "s.zarr" / "X" / key)
    with pytest.raises(MissingChunksError, match=rf"1 of its 5 stored chunks: chunk "
                                                 rf"'{key}' \(rows 400 to 599\)"):
        as_dataset(str(tmp_path / "s.zarr"))


###############################################################################
# Corrupt inputs


def test_zarr_chunk_that_does_not_decode_is_named(tmp_path, data, cluster_client):
    _zarr_group(tmp_path / "d.zarr", data)
    (tmp_path / "d.zarr" / "X" / "c" / "5" / "0").write_bytes(b"not zstd" * 8)
    with pytest.raises(DamagedSourceError,
                       match=r"Cannot read stored chunk 'c/5/0' \(rows 500 to 599\) of the "
                             r"Zarr array '.*d\.zarr' \(array 'X'\): RuntimeError: Zstd "
                             r"decompression error.*Restore it from a backup or rewrite"):
        daskgmm.GaussianMixture(2, random_state=0).fit(str(tmp_path / "d.zarr"))


def test_truncated_parquet_file_is_named(tmp_path, data):
    path = _parquet(tmp_path / "p", data)
    raw = (path / "part.1.parquet").read_bytes()
    (path / "part.1.parquet").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DamagedSourceError,
                       match=r"File 'part\.1\.parquet' of the Parquet dataset '.*p' is not a "
                             r"readable Parquet file \(ArrowInvalid: Parquet magic bytes not "
                             r"found.*restore or rewrite it, or move it out"):
        as_dataset(str(path))


def test_corrupt_parquet_page_is_named_with_its_row_groups(tmp_path, data, cluster_client):
    path = _parquet(tmp_path / "p", data, compression="zstd", use_dictionary=False)
    raw = bytearray((path / "part.2.parquet").read_bytes())
    for i in range(60, 400):  # the first pages, after the magic bytes
        raw[i] ^= 0x5A
    (path / "part.2.parquet").write_bytes(bytes(raw))
    with pytest.raises(DamagedSourceError,
                       match=r"Cannot read row groups 0 to 3 of Parquet file '.*part\.2\."
                             r"parquet' \(OSError: .*\)\. The file is damaged"):
        daskgmm.GaussianMixture(2, random_state=0).fit(str(path))


def test_text_in_object_array_is_a_clear_error():
    X = np.array([[1.0, 2.0], [3.0, "x"]], dtype=object)
    with pytest.raises(ValueError, match=r"X holds a value that is not a number at row 1, "
                                         r"column 1: 'x' \(str; could not convert string to "
                                         r"float: 'x'\)\. Gaussian mixtures need numbers"):
        daskgmm.GaussianMixture(1).fit(X)
    fitted = daskgmm.GaussianMixture(1).fit(np.ones((3, 2)) + np.eye(3, 2))
    with pytest.raises(ValueError, match=r"row 0, column 1: 'abc' \(str"):
        fitted.score_samples([[1.0, "abc"]])  # a list of rows, when scoring


###############################################################################
# Permissions


_WARM_UP = """
import os, pwd
import numpy as np
import daskgmm, daskgmm.estimator, daskgmm.sources
# every module a fit needs is imported while this process can still read the
# interpreter's files (under /root), then the process becomes 'nobody'
daskgmm.GaussianMixture(2, random_state=0).fit(np.random.default_rng(0).normal(size=(50, 3)))
nobody = pwd.getpwnam("nobody")
os.setgid(nobody.pw_gid)
os.setuid(nobody.pw_uid)
"""


def _as_nobody(code: str, cwd):
    """Run ``code`` as the unprivileged user 'nobody' (root reads everything, so
    permission errors need another user)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to the user 'nobody'")
    return subprocess.run([sys.executable, "-c", _WARM_UP + textwrap.dedent(code)],
                          cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": f"{cwd}/home"})


@pytest.fixture
def shared_dir():
    """A directory 'nobody' can reach (pytest's own tmp directories are private)."""
    path = f"/tmp/daskgmm-perm-{os.getpid()}"
    os.makedirs(f"{path}/home", exist_ok=True)
    os.chmod(path, 0o755)
    os.chmod(f"{path}/home", 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unreadable_paths_are_permission_errors(shared_dir, data):
    from pathlib import Path

    root = Path(shared_dir)
    _zarr_group(root / "d.zarr", data)
    _parquet(root / "p", data)
    for p in root.rglob("*"):
        if p.name != "home":
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
    os.chmod(root / "d.zarr", 0o700)  # the store's directory
    os.chmod(root / "p" / "part.1.parquet", 0o600)  # one file
    result = _as_nobody("""
        import daskgmm
        for source in ("d.zarr", "p"):
            try:
                daskgmm.GaussianMixture(2, random_state=0).fit(source)
            except Exception as exc:
                print(type(exc).__name__, "|", exc)
    """, shared_dir)
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout + result.stderr
    assert lines[0].startswith("PermissionError | Permission denied reading 'd.zarr': the "
                               "directory cannot be read by this process (user nobody)")
    assert "grant read access" in lines[0] and "No such file" not in lines[0]
    assert lines[1].startswith("PermissionError | Permission denied reading file "
                               "'part.1.parquet' of the Parquet dataset 'p'"), lines[1]


###############################################################################
# Sources that change under the job


def test_fingerprint_names_what_changed(tmp_path, data):
    path = _parquet(tmp_path / "p", data)
    fp = source_fingerprint(str(path))
    assert sorted(fp.entries) == ["part.0.parquet", "part.1.parquet", "part.2.parquet"]
    dataset = as_dataset(str(path))
    fp.check(dataset.origin, when="")  # unchanged: nothing raised
    pq.write_table(pa.table({"a": data[:50, 0], "b": data[:50, 1], "c": data[:50, 2]}),
                   path / "part.1.parquet")
    (path / "part.3.parquet").write_bytes((path / "part.0.parquet").read_bytes())
    with pytest.raises(SourceChangedError,
                       match=r"changed since the job started .*: file 'part\.1\.parquet' was "
                             r"\d+ bytes, modified .*, now \d+ bytes, modified .*; file "
                             r"'part\.3\.parquet' was added .* Nothing was published\."):
        fp.check(dataset.origin, when="Nothing was published.")

    z = _zarr_group(tmp_path / "d.zarr", data)
    fp = source_fingerprint(str(tmp_path / "d.zarr"))
    origin = as_dataset(str(tmp_path / "d.zarr")).origin
    z.resize((1_100, 3))
    with pytest.raises(SourceChangedError, match=r"object 'zarr\.json' was \d+ bytes"):
        fp.check(origin, when="")


def test_a_parquet_file_rewritten_while_read_is_named(tmp_path, data):
    path = _parquet(tmp_path / "p", data)
    dataset = as_dataset(str(path))  # planned: 333 rows in part.1
    pq.write_table(pa.table({"a": data[:50, 0], "b": data[:50, 1], "c": data[:50, 2]}),
                   path / "part.1.parquet")
    with pytest.raises(SourceChangedError,
                       match=r"Parquet file '.*part\.1\.parquet' changed while the job was "
                             r"reading it: it now holds 50 rows in 1 row groups; it held 333 "
                             r"rows in 4"):
        dataset.array.compute()


def test_write_scores_publishes_nothing_when_the_source_changed(tmp_path, data):
    path = _parquet(tmp_path / "p", data)
    gm = daskgmm.GaussianMixture(2, random_state=0).fit(str(path))
    gm.set_threshold(str(path), contamination=0.01)
    target = tmp_path / "scores"
    fp = daskgmm.source_fingerprint(str(path))
    first = daskgmm.write_scores(gm, str(path), str(target), run_id="r1", fingerprint=fp)
    assert_allclose(daskgmm.read_scores(str(target))["log_density"],
                    gm.score_samples(pd.DataFrame(data, columns=["a", "b", "c"])), rtol=1e-12)
    pointer = (target / "_latest").read_bytes()
    pq.write_table(pa.table({"a": data[:50, 0], "b": data[:50, 1], "c": data[:50, 2]}),
                   path / "part.2.parquet")
    with pytest.raises(SourceChangedError, match=r"file 'part\.2\.parquet' was .* Nothing "
                                                 r"was scored or published\."):
        daskgmm.write_scores(gm, str(path), str(target), run_id="r2", fingerprint=fp)
    assert (target / "_latest").read_bytes() == pointer
    assert daskgmm.read_pointer(str(target))["version"] == first.version


def test_a_source_changed_during_the_publication_pass_is_not_published(tmp_path, data,
                                                                       monkeypatch):
    from daskgmm.scores.location import get_format

    path = _parquet(tmp_path / "p", data)
    gm = daskgmm.GaussianMixture(2, random_state=0).fit(str(path))
    gm.set_threshold(str(path), contamination=0.01)
    target = tmp_path / "scores"
    daskgmm.write_scores(gm, str(path), str(target), run_id="r1")
    pointer = (target / "_latest").read_bytes()
    fp = daskgmm.source_fingerprint(str(path))
    fmt = type(get_format("parquet"))
    write_version = fmt.write_version

    def then_rewrite_the_source(self, *args, **kwargs):  # the source changes mid-pass
        out = write_version(self, *args, **kwargs)
        pq.write_table(pa.table({"a": data[:9, 0], "b": data[:9, 1], "c": data[:9, 2]}),
                       path / "part.0.parquet")
        return out

    monkeypatch.setattr(fmt, "write_version", then_rewrite_the_source)
    with pytest.raises(SourceChangedError, match=r"file 'part\.0\.parquet' was .* The scores "
                                                 r"computed from it were not published\."):
        daskgmm.write_scores(gm, str(path), str(target), run_id="r2", fingerprint=fp)
    assert (target / "_latest").read_bytes() == pointer
    assert not (target / "_versions" / "r2").exists()  # the written version removed
