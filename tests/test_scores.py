"""Write-back of anomaly scores: Zarr and Parquet, versions, the pointer, failures, S3."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import dask.array as da
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import daskgmm
from daskgmm import GaussianMixture
from daskgmm.synthetic import write_mixture_zarr

KW = dict(n_components=3, random_state=0, tol=1e-6)
SCORE_SCHEMA = [
    ("log_density", pa.float64()), ("anomaly_score", pa.float64()), ("component", pa.int32()),
    ("responsibility", pa.float64()), ("is_anomaly", pa.bool_()),
    ("missing_features", pa.int32()),
]


@pytest.fixture(scope="module")
def zarr_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("z") / "data.zarr"
    write_mixture_zarr(path, 12_000, 3, 3, chunk_rows=2_500, seed=11, anomaly_fraction=0.01)
    group = zarr.open_group(str(path), mode="r")
    X, labels = group["X"][:], group["labels"][:]
    gm = GaussianMixture(**KW, array_name="X").fit(str(path)).set_threshold(str(path))
    ref = SkGaussianMixture(**KW).fit(X)
    return path, X, labels, gm, ref


def _write_parquet_files(root, X, sizes, names, seed=0):
    """Uneven Parquet files with a shuffled unique id column next to the features."""
    ids = np.random.default_rng(seed).permutation(len(X)) * 7 + 3
    start = 0
    for size, name in zip(sizes, names, strict=True):
        stop = start + size
        frame = pd.DataFrame(X[start:stop], columns=["a", "b", "c"])
        frame.insert(0, "event_id", ids[start:stop])
        os.makedirs(os.path.dirname(root / name), exist_ok=True)
        frame.to_parquet(root / name, row_group_size=1000)
        start = stop
    assert start == len(X)
    return ids


def test_zarr_scores_next_to_the_source(zarr_data):
    path, X, labels, gm, ref = zarr_data
    pub = daskgmm.write_scores(gm, str(path), run_id="2026-11-24")
    assert pub.kind == "zarr" and pub.target == f"{path}/scores"
    assert pub.n_rows == 12_000 and pub.run_id == "2026-11-24"
    assert pub.location == daskgmm.latest_scores(f"{path}/scores")
    # the documented read-back line
    df = pd.DataFrame({n: a[:] for n, a in zarr.open_group(daskgmm.latest_scores(
        f"{path}/scores")).arrays()})
    group = zarr.open_group(pub.location, mode="r")
    for name, _ in SCORE_SCHEMA:
        array = group[name]
        assert array.chunks == (2_500,)  # chunked like the input rows
        assert array.attrs["daskgmm"]["model_id"] == daskgmm.model_id(gm)
        assert array.attrs["daskgmm"]["run_id"] == "2026-11-24"
    assert group.attrs["daskgmm"]["n_anomalies"] == pub.n_anomalies == df["is_anomaly"].sum()
    rows = np.random.default_rng(0).choice(len(X), 500, replace=False)
    assert_allclose(df["log_density"].to_numpy()[rows], ref.score_samples(X[rows]), rtol=1e-6)
    assert_array_equal(df["component"].to_numpy()[rows], ref.predict(X[rows]))
    assert_allclose(df["responsibility"].to_numpy()[rows],
                    ref.predict_proba(X[rows]).max(axis=1), rtol=1e-6)
    assert_array_equal(df["is_anomaly"], df["log_density"] < gm.threshold_)
    assert df["is_anomaly"][labels == -1].mean() > 0.8  # planted anomalies are flagged
    assert_allclose(pub.log_likelihood, ref.score(X), rtol=1e-9)
    # the source group is still a clean Zarr hierarchy with the data untouched
    root = zarr.open_group(str(path), mode="r")
    assert_array_equal(root["X"][:], X)
    assert sorted(root.group_keys()) == ["scores"]


def test_parquet_scores_one_file_per_input_file_with_ids(cluster_client, tmp_path):
    X = np.random.default_rng(3).normal(size=(9_038, 3)) * [1, 2, 3]
    names = ["day=1/part-0.parquet", "day=1/part-1.parquet", "day=2/part-0.parquet",
             "day=2/part-1.parquet"]
    ids = _write_parquet_files(tmp_path / "src", X, [1, 4_000, 37, 5_000], names)
    gm = GaussianMixture(2, random_state=0, columns=["a", "b", "c"]).fit(str(tmp_path / "src"))
    gm.set_threshold(str(tmp_path / "src"), contamination=0.001)
    target = str(tmp_path / "scores")
    pub = daskgmm.write_scores(gm, str(tmp_path / "src"), target, id_columns=["event_id"],
                               run_id="r1")
    version = tmp_path / "scores" / pub.version
    written = sorted(str(p.relative_to(version)) for p in version.rglob("*.parquet"))
    assert written == sorted(names)  # one output partition per input partition, same names
    schema = pq.read_schema(version / names[1])
    assert [(f.name, f.type) for f in schema] == [("event_id", pa.int64())] + SCORE_SCHEMA
    assert json.loads(schema.metadata[b"daskgmm"])["model_id"] == daskgmm.model_id(gm)
    # the documented read-back lines
    frame = pd.read_parquet(daskgmm.latest_scores(target))
    ducked = duckdb.sql(
        f"SELECT * FROM read_parquet('{daskgmm.latest_scores(target)}/**/*.parquet')"
    ).df()
    assert len(frame) == len(ducked) == len(X)
    assert sorted(ducked["event_id"]) == sorted(ids)
    # row alignment: the score next to an id is the score of the row with that id
    ld = gm.score_samples(pd.DataFrame(X, columns=["a", "b", "c"]))
    by_id = dict(zip(ids, ld, strict=True))
    assert_allclose(frame["log_density"], [by_id[i] for i in frame["event_id"]], rtol=1e-12)
    assert_allclose(ducked["log_density"], [by_id[i] for i in ducked["event_id"]], rtol=1e-12)
    flagged = set(frame.loc[frame["is_anomaly"], "event_id"])
    assert flagged == set(ids[ld < gm.threshold_]) and len(flagged) >= 9
    assert pub.n_anomalies == len(flagged)


def test_row_number_for_sources_without_ids(zarr_data, tmp_path):
    _, X, _, gm, ref = zarr_data
    uneven = da.from_array(X, chunks=((5_000, 1, 999, 6_000), (3,)))
    target = tmp_path / "out"
    with pytest.raises(ValueError, match="target= is required"):
        daskgmm.write_scores(gm, uneven)
    pub = daskgmm.write_scores(gm, uneven, str(target), run_id="x")
    files = sorted((target / pub.version).glob("*.parquet"))
    assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(4)]
    assert [pq.read_metadata(f).num_rows for f in files] == [5_000, 1, 999, 6_000]
    frame = pd.read_parquet(daskgmm.latest_scores(target))
    assert pq.read_schema(files[0]).field("row_number").type == pa.int64()
    frame = frame.sort_values("row_number")
    assert_array_equal(frame["row_number"], np.arange(len(X)))
    assert_allclose(frame["log_density"], ref.score_samples(X), rtol=1e-6)
    # Zarr output of a non-Zarr source: needs a target, regular chunks
    pub = daskgmm.write_scores(gm, uneven, str(tmp_path / "z.zarr"), format="zarr")
    back = daskgmm.read_scores(str(tmp_path / "z.zarr"))
    assert zarr.open_group(pub.location)["log_density"].chunks == (6_000,)
    assert_allclose(back["log_density"], ref.score_samples(X), rtol=1e-6)


def test_rerun_replaces_only_its_own_version(zarr_data, tmp_path):
    _, X, _, gm, _ = zarr_data
    target = tmp_path / "scores"
    first = daskgmm.write_scores(gm, X, str(target), run_id="night-1")
    second = daskgmm.write_scores(gm, X, str(target), run_id="night-2")
    assert daskgmm.latest_scores(target) == second.location
    again = daskgmm.write_scores(gm, X, str(target), run_id="night-2")
    assert again.version != second.version
    assert daskgmm.read_pointer(target)["version"] == again.version
    assert not (target / second.version).exists()  # the run's earlier attempt is gone
    assert sorted(p.name for p in (target / "_versions").iterdir()) == ["night-1", "night-2"]
    old = pd.read_parquet(target / first.version)  # other runs stay readable
    assert_allclose(old["log_density"], pd.read_parquet(again.location)["log_density"])


def test_failed_run_leaves_the_previous_scores(tmp_path, cluster_client):
    X = np.random.default_rng(4).normal(size=(6_000, 3))
    names = [f"part-{i}.parquet" for i in range(6)]
    _write_parquet_files(tmp_path / "src", X, [1_000] * 6, names)
    gm = GaussianMixture(2, random_state=0, columns=["a", "b", "c"]).fit(str(tmp_path / "src"))
    gm.set_threshold(str(tmp_path / "src"))
    target = tmp_path / "scores"
    good = daskgmm.write_scores(gm, str(tmp_path / "src"), str(target), run_id="good",
                                id_columns=["event_id"])
    before = pd.read_parquet(daskgmm.latest_scores(target))
    # tonight's data: the fifth file has a NaN in its 10th row
    frame = pd.read_parquet(tmp_path / "src" / "part-4.parquet")
    frame.loc[9, "b"] = np.nan
    frame.to_parquet(tmp_path / "src" / "part-4.parquet")
    with pytest.raises(ValueError, match=r"file 'part-4.parquet'.*first at row 4009, column 1 "
                                         r"\('b'\)"):
        daskgmm.write_scores(gm, str(tmp_path / "src"), str(target), run_id="bad",
                             id_columns=["event_id"])
    assert daskgmm.read_pointer(target)["version"] == good.version
    after = pd.read_parquet(daskgmm.latest_scores(target))
    pd.testing.assert_frame_equal(before, after)
    # fixed data, same run id: published, and no file of the failed attempt is left
    frame.loc[9, "b"] = 0.5
    frame.to_parquet(tmp_path / "src" / "part-4.parquet")
    fixed = daskgmm.write_scores(gm, str(tmp_path / "src"), str(target), run_id="bad",
                                 id_columns=["event_id"])
    assert [p.name for p in (target / "_versions" / "bad").iterdir()] == [
        fixed.version.rsplit("/", 1)[-1]]
    assert len(pd.read_parquet(daskgmm.latest_scores(target))) == 6_000


_KILLED_WRITER = textwrap.dedent("""
    import sys, dask, daskgmm
    dask.config.set(scheduler="synchronous")
    gm = daskgmm.load(sys.argv[1])
    daskgmm.write_scores(gm, sys.argv[2], sys.argv[3], run_id="tonight", format="parquet")
""")


def test_process_killed_mid_write_leaves_previous_version_readable(zarr_data, tmp_path):
    path, X, _, gm, _ = zarr_data
    big = tmp_path / "big.zarr"
    write_mixture_zarr(big, 400_000, 3, 3, chunk_rows=4_000, seed=11)
    model = tmp_path / "m.daskgmm"
    gm.save(model)
    target = tmp_path / "scores"
    yesterday = daskgmm.write_scores(gm, str(big), str(target), run_id="yesterday",
                                     format="parquet")
    expected = pd.read_parquet(yesterday.location)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(model), str(big),
                             str(target)])
    run_dir = target / "_versions" / "tonight"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if run_dir.exists() and len(list(run_dir.rglob("*.parquet"))) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the writer finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = list(run_dir.rglob("*.parquet"))
    assert 3 <= len(written) < 100  # killed in the middle of writing its 100 files
    assert daskgmm.read_pointer(target)["version"] == yesterday.version
    pd.testing.assert_frame_equal(pd.read_parquet(daskgmm.latest_scores(target)), expected)
    # the re-run of the same run id publishes and removes the debris of the killed attempt
    rerun = daskgmm.write_scores(str(model), str(big), str(target), run_id="tonight",
                                 format="parquet")
    assert [p.name for p in run_dir.iterdir()] == [rerun.version.rsplit("/", 1)[-1]]
    assert len(pd.read_parquet(daskgmm.latest_scores(target))) == 400_000


def test_refuses_targets_it_did_not_write(zarr_data, tmp_path):
    path, X, _, gm, _ = zarr_data
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"Refusing to write scores to .*foreign.*notes.txt.*"
                                         r"not written by daskgmm"):
        daskgmm.write_scores(gm, X, str(foreign))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="it is a file"):
        daskgmm.write_scores(gm, X, str(tmp_path / "file"))
    # a Zarr group whose 'scores' node belongs to the user
    other = tmp_path / "other.zarr"
    write_mixture_zarr(other, 1_000, 3, 2, chunk_rows=500, seed=1)
    zarr.open_group(str(other), mode="a").create_array("scores", shape=(3,), dtype="f8")
    with pytest.raises(ValueError, match="Zarr node not written by daskgmm"):
        daskgmm.write_scores(gm, str(other))
    out = tmp_path / "out"
    daskgmm.write_scores(gm, X, str(out))
    with pytest.raises(ValueError, match="holds parquet scores; this run writes zarr"):
        daskgmm.write_scores(gm, X, str(out), format="zarr")
    with pytest.raises(ValueError, match="run_id must be"):
        daskgmm.write_scores(gm, X, str(out), run_id="../escape")
    src = tmp_path / "src"
    _write_parquet_files(src, X, [len(X)], ["p.parquet"])
    fitted = GaussianMixture(2, random_state=0, columns=["a", "b", "c"]).fit(str(src))
    fitted.set_threshold(threshold=-20.0)
    with pytest.raises(ValueError, match="inside the Parquet source"):
        daskgmm.write_scores(fitted, str(src), str(src / "scores"))


def test_check_score_target_refuses_before_any_pass_and_writes_nothing(zarr_data, tmp_path):
    path, X, _, _, _ = zarr_data
    assert daskgmm.check_score_target(str(path)) == os.path.join(str(path), "scores")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"Refusing to write scores to .*foreign.*notes.txt"):
        daskgmm.check_score_target(X, str(foreign))
    with pytest.raises(ValueError, match="target= is required"):
        daskgmm.check_score_target(X)
    src = tmp_path / "src"
    _write_parquet_files(src, X, [len(X)], ["p.parquet"])
    with pytest.raises(ValueError, match="inside the Parquet source"):
        daskgmm.check_score_target(str(src), str(src / "scores"))
    with pytest.raises(ValueError, match=r"id column\(s\) \['user'\] not in file"):
        daskgmm.check_score_target(str(src), str(tmp_path / "o"), id_columns=["user"])
    new = tmp_path / "new"
    assert daskgmm.check_score_target(str(src), str(new), id_columns=["event_id"]) == str(new)
    assert not new.exists()
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_bad_inputs_name_what_is_wrong(zarr_data, tmp_path):
    path, X, _, gm, _ = zarr_data
    src = tmp_path / "src"
    _write_parquet_files(src, X, [6_000, 6_000], ["p0.parquet", "p1.parquet"])
    fitted = GaussianMixture(3, random_state=0, columns=["a", "b", "c"]).fit(str(src))
    fitted.set_threshold(str(src))
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    pd.read_parquet(src / "p0.parquet").rename(columns={"c": "z"}).to_parquet(renamed / "p.pq")
    with pytest.raises(ValueError, match=r"Column 'c' is not in file 'p.pq'.*columns there: "
                                         r"event_id, a, b, z.*fitted on columns \['a', 'b', 'c'\]"):
        daskgmm.write_scores(fitted, str(renamed), str(tmp_path / "o1"))
    wide = tmp_path / "wide.zarr"
    write_mixture_zarr(wide, 1_000, 4, 2, chunk_rows=500, seed=1)
    with pytest.raises(ValueError, match="X has 4 features, but GaussianMixture is expecting 3"):
        daskgmm.write_scores(gm, str(wide))
    with pytest.raises(ValueError, match=r"id column\(s\) \['user'\] not in file 'p0.parquet'"):
        daskgmm.write_scores(fitted, str(src), str(tmp_path / "o2"), id_columns=["user"])
    with pytest.raises(ValueError, match="id_columns=\\['id'\\] needs a Parquet source"):
        daskgmm.write_scores(gm, str(path), id_columns=["id"])
    with pytest.raises(ValueError, match="no anomaly threshold"):
        daskgmm.write_scores(GaussianMixture(2).fit(X), X, str(tmp_path / "o3"))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_s3_round_trip(s3, zarr_data):
    fs, options = s3
    _, X, _, gm, ref = zarr_data
    ids = np.arange(len(X)) * 2
    for i, (a, b) in enumerate([(0, 5_000), (5_000, 12_000)]):
        frame = pd.DataFrame(X[a:b], columns=["a", "b", "c"])
        frame.insert(0, "event_id", ids[a:b])
        with fs.open(f"data/pub/src/part-{i}.parquet", "wb") as f:
            frame.to_parquet(f)
    fitted = GaussianMixture(**KW, columns=["a", "b", "c"], storage_options=options)
    fitted.fit("s3://data/pub/src").set_threshold("s3://data/pub/src")
    pub = daskgmm.write_scores(fitted, "s3://data/pub/src", "s3://data/pub/scores",
                               id_columns=["event_id"], run_id="s3run")
    frame = pd.read_parquet(daskgmm.latest_scores("s3://data/pub/scores",
                                                  storage_options=options),
                            storage_options=options)
    frame = frame.sort_values("event_id")
    assert_array_equal(frame["event_id"], ids)
    assert_allclose(frame["log_density"], ref.score_samples(X), rtol=1e-6)
    assert pub.n_rows == len(X)
    # Zarr on S3: scores in the source group's 'scores' subgroup
    write_mixture_zarr("s3://data/pub/z.zarr", 3_000, 3, 3, chunk_rows=1_000, seed=2,
                       storage_options=options)
    zgm = GaussianMixture(**KW, array_name="X", storage_options=options).fit(
        "s3://data/pub/z.zarr").set_threshold("s3://data/pub/z.zarr")
    zpub = daskgmm.write_scores(zgm, "s3://data/pub/z.zarr", run_id="z")
    back = daskgmm.read_scores("s3://data/pub/z.zarr/scores", storage_options=options)
    assert len(back) == 3_000 and zpub.location.startswith("s3://data/pub/z.zarr/scores/")
    assert_allclose(back["log_density"].sum(), zpub.log_likelihood * 3_000, rtol=1e-12)


def test_prune_keeps_recent_runs_and_the_current_version(zarr_data, tmp_path):
    _, X, _, gm, _ = zarr_data
    target = tmp_path / "scores"
    pubs = [daskgmm.write_scores(gm, X[:500], str(target), run_id=f"n{i}") for i in range(4)]
    # re-publishing an old run makes it current again
    again = daskgmm.write_scores(gm, X[:500], str(target), run_id="n0")
    deleted = daskgmm.prune_scores(target, 2)
    assert sorted(deleted) == sorted([pubs[1].version, pubs[2].version])
    assert sorted(p.name for p in (target / "_versions").iterdir()) == ["n0", "n3"]
    assert not (target / pubs[1].version).exists() and (target / pubs[3].version).exists()
    assert daskgmm.latest_scores(target) == again.location
    assert len(pd.read_parquet(again.location)) == 500
    zpath = tmp_path / "z.zarr"
    for i in range(3):
        last = daskgmm.write_scores(gm, X[:500], str(zpath), format="zarr", run_id=f"z{i}")
    assert len(daskgmm.prune_scores(zpath, 1)) == 2
    assert len(daskgmm.read_scores(zpath)) == 500 and daskgmm.latest_scores(zpath) == last.location
    with pytest.raises(ValueError, match="keep_runs must be an int >= 1"):
        daskgmm.prune_scores(target, 0)


@pytest.mark.parametrize("format", ["parquet", "zarr"])
def test_a_full_disk_is_named_and_leaves_the_published_scores(zarr_data, small_disk, format):
    import errno
    import re

    from .conftest import snapshot

    _, X, _, gm, _ = zarr_data
    target = small_disk.path / "scores"
    first = daskgmm.write_scores(gm, X[:2_000], str(target), run_id="n1", format=format)
    before = snapshot(small_disk.path)
    small_disk.fill()
    for run_id in ("n1", "n2"):  # a re-run of the current run, and a new run
        with pytest.raises(OSError, match=rf"No space left on device while writing "
                                          rf"{re.escape(str(target))}/_versions/{run_id}/"
                                          r"[0-9a-f]{8}\S*: free space on the filesystem "
                                          r"holding .* or choose another location\.") as info:
            daskgmm.write_scores(gm, X[:2_000], str(target), run_id=run_id, format=format)
        assert info.value.errno == errno.ENOSPC and info.value.__cause__.errno == errno.ENOSPC
        # the pointer, the current scores and every other file as they were: no partial
        # version, not even an empty directory of the failed attempt
        assert snapshot(small_disk.path) == before
    assert daskgmm.read_pointer(target)["version"] == first.version
    small_disk.free()
    again = daskgmm.write_scores(gm, X[:2_000], str(target), run_id="n2", format=format)
    assert daskgmm.latest_scores(target) == again.location
