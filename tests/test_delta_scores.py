"""Scores as a Delta Lake table: alignment, one commit per run, time travel, re-runs,
failures and kills, concurrent readers, retention, S3, refusals and the config."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import dask.array as da
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import daskgmm
from daskgmm import GaussianMixture

deltalake = pytest.importorskip("deltalake")
pl = pytest.importorskip("polars")
from deltalake import DeltaTable, write_deltalake  # noqa: E402

from daskgmm.scores import delta_format  # noqa: E402

KW = dict(n_components=3, random_state=0, tol=1e-6)
SCORES = ["log_density", "anomaly_score", "component", "responsibility", "is_anomaly",
          "missing_features"]


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(7)
    X = np.concatenate([rng.normal(size=(4_000, 3)), rng.normal(size=(4_000, 3)) * 0.5 + 4,
                        rng.normal(size=(12, 3)) * 10])
    X = X[rng.permutation(len(X))]
    gm = GaussianMixture(**KW).fit(X).set_threshold(X, contamination=0.01)
    ref = SkGaussianMixture(**KW).fit(X)
    return X, gm, ref


def _write_parquet_files(root, X, sizes, seed=0):
    """Uneven Parquet files with a shuffled unique id column next to the features."""
    ids = np.random.default_rng(seed).permutation(len(X)) * 7 + 3
    root.mkdir(parents=True, exist_ok=True)
    start = 0
    for i, size in enumerate(sizes):
        frame = pd.DataFrame(X[start:start + size], columns=["a", "b", "c"])
        frame.insert(0, "event_id", ids[start:start + size])
        frame.to_parquet(root / f"part-{i}.parquet", row_group_size=1000)
        start += size
    assert start == len(X)
    return ids


def _runs(frame):
    return frame.groupby("run_id").size().to_dict()


def test_scores_align_with_the_model_in_every_reader(fitted, tmp_path, cluster_client):
    X, gm, ref = fitted
    ids = _write_parquet_files(tmp_path / "src", X, [1, 3_000, 37, 4_974])
    fgm = GaussianMixture(**KW, columns=["a", "b", "c"]).fit(str(tmp_path / "src"))
    fgm.set_threshold(str(tmp_path / "src"), contamination=0.01)
    target = str(tmp_path / "scores")
    pub = daskgmm.write_scores(fgm, str(tmp_path / "src"), target, id_columns=["event_id"],
                               run_id="2026-11-24", format="delta", model_version="v7")
    assert pub.kind == "delta" and pub.version == "0" and pub.n_rows == len(X)
    assert pub.location == target == daskgmm.latest_scores(target)
    table = DeltaTable(target)
    assert table.version() == 0 and table.metadata().partition_columns == ["run_id"]
    schema = pa.schema(table.schema().to_arrow())
    assert [(f.name, f.type) for f in schema] == [
        ("event_id", pa.int64()), ("log_density", pa.float64()),
        ("anomaly_score", pa.float64()), ("component", pa.int32()),
        ("responsibility", pa.float64()), ("is_anomaly", pa.bool_()),
        ("missing_features", pa.int32()), ("run_id", pa.string()),
        ("model_id", pa.string()), ("model_version", pa.string()), ("threshold", pa.float64())]
    # one data file per input file, each with exact row counts in the log
    adds = pa.table(table.get_add_actions(flatten=True))
    assert sorted(adds.column("num_records").to_pylist()) == [1, 37, 3_000, 4_974]
    # the same rows through deltalake, Polars and a pyarrow dataset of the snapshot
    frames = {
        "deltalake": table.to_pandas(),
        "polars": pl.read_delta(target).to_pandas(),
        "pyarrow": table.to_pyarrow_dataset().to_table().to_pandas(),
        "daskgmm": daskgmm.read_scores(target),
    }
    ld = fgm.score_samples(pd.DataFrame(X, columns=["a", "b", "c"]))
    by_id = dict(zip(ids, range(len(X)), strict=True))
    for name, frame in frames.items():
        assert len(frame) == len(X), name
        assert sorted(frame["event_id"]) == sorted(ids), name
        rows = np.array([by_id[i] for i in frame["event_id"]])
        assert_allclose(frame["log_density"], ld[rows], rtol=1e-12, err_msg=name)
        assert_allclose(frame["log_density"], ref.score_samples(X[rows]), rtol=1e-6)
        assert_array_equal(frame["component"], ref.predict(X[rows]))
        assert_allclose(frame["responsibility"], ref.predict_proba(X[rows]).max(axis=1),
                        rtol=1e-6)
        assert_array_equal(frame["is_anomaly"], ld[rows] < fgm.threshold_)
        assert set(frame["run_id"]) == {"2026-11-24"} and set(frame["model_version"]) == {"v7"}
        assert set(frame["model_id"]) == {daskgmm.model_id(fgm)}
        assert set(frame["threshold"]) == {fgm.threshold_}
    assert pub.n_anomalies == int(frames["deltalake"]["is_anomaly"].sum()) >= 12
    # the manifest is the commit's metadata, and the pointer reads it back
    (commit,) = table.history()
    manifest = commit["daskgmm"]
    assert manifest["run_id"] == "2026-11-24" and manifest["n_rows"] == len(X)
    assert manifest["model_version"] == "v7" and manifest["threshold"] == fgm.threshold_
    pointer = daskgmm.read_pointer(target)
    assert pointer["version"] == 0 and pointer["n_anomalies"] == pub.n_anomalies


def test_rerun_replaces_its_rows_in_one_commit_and_time_travel(fitted, tmp_path):
    X, gm, ref = fitted
    target = str(tmp_path / "scores")
    first = daskgmm.write_scores(gm, da.from_array(X, chunks=2_000), target, run_id="n1",
                                 format="delta")
    second = daskgmm.write_scores(gm, da.from_array(X[:3_000], chunks=700), target,
                                  run_id="n2", format="delta")
    again = daskgmm.write_scores(gm, da.from_array(X[:1_000], chunks=300), target,
                                 run_id="n1", format="delta")
    assert [first.version, second.version, again.version] == ["0", "1", "2"]
    history = DeltaTable(target).history()
    assert [h["version"] for h in history] == [2, 1, 0]  # one commit per run
    latest = DeltaTable(target).to_pandas()
    assert _runs(latest) == {"n1": 1_000, "n2": 3_000}
    n1 = latest[latest["run_id"] == "n1"].sort_values("row_number")
    assert_array_equal(n1["row_number"], np.arange(1_000))
    assert_allclose(n1["log_density"], ref.score_samples(X[:1_000]), rtol=1e-6)
    # time travel: the version before the re-run still has the first attempt of n1
    before = DeltaTable(target, version=1).to_pandas()
    assert _runs(before) == {"n1": len(X), "n2": 3_000}
    assert _runs(pl.read_delta(target, version=1).to_pandas()) == _runs(before)
    old = before[before["run_id"] == "n1"].sort_values("row_number")
    assert_array_equal(old["row_number"], np.arange(len(X)))
    assert_allclose(old["log_density"], ref.score_samples(X), rtol=1e-6)
    assert _runs(DeltaTable(target, version=0).to_pandas()) == {"n1": len(X)}
    # the pointer names the last publication: its run and commit
    pointer = daskgmm.read_pointer(target)
    assert (pointer["run_id"], pointer["version"], pointer["n_rows"]) == ("n1", 2, 1_000)
    current = daskgmm.read_scores(target)
    assert_array_equal(current["row_number"], np.arange(1_000))
    assert_allclose(current["log_density"], n1["log_density"])


def test_a_failed_run_leaves_the_latest_snapshot(tmp_path, cluster_client, monkeypatch):
    X = np.random.default_rng(4).normal(size=(6_000, 3))
    src = tmp_path / "src"
    _write_parquet_files(src, X, [1_000] * 6)
    gm = GaussianMixture(2, random_state=0, columns=["a", "b", "c"]).fit(str(src))
    gm.set_threshold(str(src))
    target = str(tmp_path / "scores")
    daskgmm.write_scores(gm, str(src), target, run_id="good", id_columns=["event_id"],
                         format="delta")
    before = DeltaTable(target).to_pandas()
    files_before = sorted(DeltaTable(target).file_uris())

    def unchanged():
        table = DeltaTable(target)
        assert table.version() == 0 and sorted(table.file_uris()) == files_before
        pd.testing.assert_frame_equal(table.to_pandas(), before)
        assert daskgmm.read_pointer(target)["run_id"] == "good"

    # a worker task raising: a NaN in the fifth file
    frame = pd.read_parquet(src / "part-4.parquet")
    frame.loc[9, "b"] = np.nan
    frame.to_parquet(src / "part-4.parquet")
    with pytest.raises(ValueError, match=r"first at row 4009, column 1 \('b'\)"):
        daskgmm.write_scores(gm, str(src), target, run_id="bad", id_columns=["event_id"],
                             format="delta")
    unchanged()
    # the source changing after the pass, before the commit (as another job rewrites it)
    frame.loc[9, "b"] = 0.5
    frame.to_parquet(src / "part-4.parquet")
    fingerprint = daskgmm.source_fingerprint(str(src))
    real = delta_format.compute_each

    def pass_then_rewrite(tasks):
        parts = real(tasks)
        pd.read_parquet(src / "part-0.parquet").iloc[:10].to_parquet(src / "part-0.parquet")
        return parts

    monkeypatch.setattr(delta_format, "compute_each", pass_then_rewrite)
    with pytest.raises(daskgmm.SourceChangedError, match="were not published"):
        daskgmm.write_scores(gm, str(src), target, run_id="good", id_columns=["event_id"],
                             format="delta", fingerprint=fingerprint)
    unchanged()
    # every task had ended: the attempt's files are removed with it (a worker still
    # writing when a task failed, above, may leave a file that no commit names)
    assert not [p for p in (tmp_path / "scores" / "run_id=good").iterdir()
                if str(p) not in {f.removeprefix("file://") for f in files_before}]


_KILLED_WRITER = textwrap.dedent("""
    import sys, dask, daskgmm
    dask.config.set(scheduler="synchronous")
    gm = daskgmm.load(sys.argv[1])
    daskgmm.write_scores(gm, sys.argv[2], sys.argv[3], run_id="tonight", format="delta")
""")


def test_a_killed_run_leaves_the_snapshot_and_vacuum_removes_its_files(fitted, tmp_path):
    from daskgmm.synthetic import write_mixture_zarr

    _, gm, _ = fitted
    big = tmp_path / "big.zarr"
    write_mixture_zarr(big, 400_000, 3, 3, chunk_rows=4_000, seed=11)
    model = tmp_path / "m.daskgmm"
    gm.save(model)
    target = tmp_path / "scores"
    daskgmm.write_scores(gm, str(big), str(target), run_id="yesterday", format="delta")
    expected = DeltaTable(str(target)).to_pandas()
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(model), str(big),
                             str(target)])
    run_dir = target / "run_id=tonight"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if run_dir.exists() and len(list(run_dir.glob("*.parquet"))) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the writer finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    debris = list(run_dir.glob("*.parquet"))
    assert 3 <= len(debris) < 100  # killed while writing its 100 files
    table = DeltaTable(str(target))
    assert table.version() == 0
    pd.testing.assert_frame_equal(table.to_pandas(), expected)
    assert daskgmm.read_pointer(target)["run_id"] == "yesterday"
    # the re-run commits; the debris is never part of any version, and vacuum removes it
    rerun = daskgmm.write_scores(str(model), str(big), str(target), run_id="tonight",
                                 format="delta")
    assert rerun.version == "1"
    assert _runs(DeltaTable(str(target)).to_pandas()) == {"yesterday": 400_000,
                                                           "tonight": 400_000}
    assert all(p.exists() for p in debris)
    removed = DeltaTable(str(target)).vacuum(retention_hours=0, dry_run=False, full=True,
                                             enforce_retention_duration=False)
    assert len(removed) == len(debris) and not any(p.exists() for p in debris)
    assert _runs(DeltaTable(str(target)).to_pandas())["tonight"] == 400_000


def test_a_polling_reader_never_sees_a_partial_run(fitted, tmp_path):
    X, gm, _ = fitted
    target = str(tmp_path / "scores")
    daskgmm.write_scores(gm, da.from_array(X[:1_000], chunks=100), target, run_id="a",
                         format="delta", model_version="rows-1000")
    seen, problems, stop = [], [], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                table = DeltaTable(target)
                version = table.version()
                frame = table.to_pandas(columns=["row_number", "run_id", "model_version"])
            except Exception as exc:  # noqa: BLE001 - reported below
                problems.append(repr(exc))
                continue
            for run, rows in frame.groupby("run_id"):
                labels = set(rows["model_version"])
                if len(labels) != 1:
                    problems.append(f"v{version} {run}: attempts mixed {labels}")
                n = int(next(iter(labels)).split("-")[1])
                if sorted(rows["row_number"]) != list(range(n)):
                    problems.append(f"v{version} {run}: {len(rows)} rows, expected {n}")
            seen.append(version)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for run, n in [("b", 3_000), ("a", 2_000), ("c", 1_500), ("b", 3_000)]:
            daskgmm.write_scores(gm, da.from_array(X[:n], chunks=150), target, run_id=run,
                                 format="delta", model_version=f"rows-{n}")
        time.sleep(0.2)
    finally:
        stop.set()
        reader.join()
    assert not problems, problems[:5]
    assert len(set(seen)) >= 3 and max(seen) == 4, sorted(set(seen))


def _object_store(options):
    return delta_format.object_store_options("s3://data/x", options)


def test_s3_round_trip_time_travel_and_prune(s3, fitted, cluster_client, caplog):
    fs, options = s3
    X, _, ref = fitted
    ids = np.arange(len(X)) * 2
    for i, (a, b) in enumerate([(0, 5_000), (5_000, len(X))]):
        frame = pd.DataFrame(X[a:b], columns=["a", "b", "c"])
        frame.insert(0, "event_id", ids[a:b])
        with fs.open(f"data/delta/src/part-{i}.parquet", "wb") as f:
            frame.to_parquet(f)
    gm = GaussianMixture(**KW, columns=["a", "b", "c"], storage_options=options)
    gm.fit("s3://data/delta/src").set_threshold("s3://data/delta/src")
    target = "s3://data/delta/scores"
    caplog.set_level("INFO")
    for run in ("s3-1", "s3-2"):
        pub = daskgmm.write_scores(gm, "s3://data/delta/src", target, id_columns=["event_id"],
                                   run_id=run, format="delta")
    assert pub.version == "1" and daskgmm.latest_scores(target, storage_options=options) == target
    native = _object_store(options)
    assert native["aws_endpoint_url"] == options["client_kwargs"]["endpoint_url"]
    assert native["aws_allow_http"] == "true" and native["aws_region"] == "eu-west-1"
    for frame in (DeltaTable(target, storage_options=native).to_pandas(),
                  pl.read_delta(target, storage_options=native).to_pandas()):
        assert _runs(frame) == {"s3-1": len(X), "s3-2": len(X)}
        run = frame[frame["run_id"] == "s3-2"].sort_values("event_id")
        assert_array_equal(run["event_id"], ids)
        assert_allclose(run["log_density"], ref.score_samples(X), rtol=1e-6)
    old = pl.read_delta(target, version=0, storage_options=native).to_pandas()
    assert _runs(old) == {"s3-1": len(X)}
    back = daskgmm.read_scores(target, storage_options=options)
    assert len(back) == len(X) and set(back["run_id"]) == {"s3-2"}
    # retention: the old run's rows deleted in one commit, time travel still reaches it
    assert daskgmm.prune_scores(target, 1, storage_options=options) == ["run_id=s3-1"]
    table = DeltaTable(target, storage_options=native)
    assert _runs(table.to_pandas()) == {"s3-2": len(X)}
    # (read from the log: DeltaTable.history holds the GIL, which moto's in-process
    # server needs to answer it)
    commit = json.loads(fs.cat(f"data/delta/scores/_delta_log/{table.version():020d}.json")
                        .splitlines()[0])["commitInfo"]
    assert commit["operation"] == "DELETE"
    assert commit["daskgmm_prune"]["deleted_runs"] == ["s3-1"]
    assert _runs(DeltaTable(target, version=1, storage_options=native).to_pandas()) == {
        "s3-1": len(X), "s3-2": len(X)}
    # secrets reach neither the log nor the messages
    log = "".join(fs.cat(p).decode() for p in fs.ls("data/delta/scores/_delta_log")
                  if p.endswith(".json"))
    assert options["secret"] not in log and options["secret"] not in caplog.text


def test_prune_deletes_old_runs_in_one_commit_then_vacuums(fitted, tmp_path):
    X, gm, _ = fitted
    target = str(tmp_path / "scores")
    for i in range(4):
        daskgmm.write_scores(gm, X[:300 + i], target, run_id=f"n{i}", format="delta")
    daskgmm.write_scores(gm, X[:500], target, run_id="n0", format="delta")  # n0 current
    assert daskgmm.prune_scores(target, 2) == ["run_id=n1", "run_id=n2"]
    table = DeltaTable(target)
    assert _runs(table.to_pandas()) == {"n0": 500, "n3": 303}
    assert table.version() == 5 and table.history(1)[0]["operation"] == "DELETE"
    # the default retention (7 days) keeps every file an earlier version needs
    assert _runs(DeltaTable(target, version=3).to_pandas()) == {
        "n0": 300, "n1": 301, "n2": 302, "n3": 303}
    assert daskgmm.read_pointer(target)["run_id"] == "n0"
    assert daskgmm.prune_scores(target, 2) == []  # nothing more to delete
    assert DeltaTable(target).version() == 5


def test_refusals_name_the_target_and_the_fix(fitted, tmp_path):
    X, gm, _ = fitted
    foreign = str(tmp_path / "foreign")
    write_deltalake(foreign, pa.table({"x": [1, 2]}), name="sales")
    with pytest.raises(ValueError, match=r"foreign.*Delta table not written by daskgmm.*"
                                         r"'sales'"):
        daskgmm.write_scores(gm, X, foreign, format="delta")
    with pytest.raises(ValueError, match=r"holds .*notes.txt.*not written by daskgmm"):
        (tmp_path / "notes").mkdir()
        (tmp_path / "notes" / "notes.txt").write_text("mine")
        daskgmm.check_score_target(X, str(tmp_path / "notes"), format="delta")
    parquet = str(tmp_path / "pq")
    daskgmm.write_scores(gm, X[:100], parquet, run_id="p")
    with pytest.raises(ValueError, match="holds parquet scores; this run writes delta"):
        daskgmm.write_scores(gm, X[:100], parquet, format="delta")
    delta = str(tmp_path / "delta")
    daskgmm.write_scores(gm, X[:100], delta, run_id="d", format="delta")
    with pytest.raises(ValueError, match="holds delta scores; this run writes parquet"):
        daskgmm.write_scores(gm, X[:100], delta, format="parquet")
    # runs of one table share a schema
    src = tmp_path / "src"
    _write_parquet_files(src, X, [len(X)])
    fgm = GaussianMixture(2, random_state=0, columns=["a", "b", "c"]).fit(str(src))
    fgm.set_threshold(threshold=-20.0)
    with pytest.raises(ValueError, match=r"has the columns \['row_number'.*this run writes "
                                         r"\['event_id'.*pass the id_columns"):
        daskgmm.write_scores(fgm, str(src), delta, id_columns=["event_id"], format="delta")
    assert DeltaTable(delta).version() == 0
    # a Zarr source has no default Delta target
    from daskgmm.synthetic import write_mixture_zarr

    write_mixture_zarr(tmp_path / "z.zarr", 500, 3, 2, chunk_rows=250, seed=1)
    with pytest.raises(ValueError, match="target= is required .* as a Delta table"):
        daskgmm.check_score_target(str(tmp_path / "z.zarr"), format="delta", array_name="X")
    with pytest.raises(ValueError, match="format must be 'delta' or 'parquet' or 'zarr'"):
        daskgmm.write_scores(gm, X, delta, format="iceberg")


def test_storage_options_become_object_store_options_without_showing_values():
    options = {"key": "AKIA", "secret": "s3cr3t", "token": "tok",
               "client_kwargs": {"endpoint_url": "http://minio:9000", "region_name": "x-1"}}
    assert delta_format.object_store_options("s3://b/t", options) == {
        "aws_access_key_id": "AKIA", "aws_secret_access_key": "s3cr3t",
        "aws_session_token": "tok", "aws_endpoint_url": "http://minio:9000",
        "aws_region": "x-1", "aws_allow_http": "true"}
    assert delta_format.object_store_options("s3://b/t", {"anon": True}) == {
        "aws_skip_signature": "true"}
    assert delta_format.object_store_options("/local/t", options) == {}
    native = {"AWS_ENDPOINT_URL": "https://s3.example", "aws_region": "y"}
    assert delta_format.object_store_options("s3://b/t", native) == native
    with pytest.raises(ValueError, match=r"\['profile', 'client_kwargs.verify'\] .* no "
                                         r"delta-rs equivalent") as info:
        delta_format.object_store_options("s3://b/t", {"profile": "p1-secret-name",
                                                       "client_kwargs": {"verify": False}})
    assert "p1-secret-name" not in str(info.value)


def _duckdb_delta():
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    try:
        con.sql("LOAD delta")
    except duckdb.Error:
        try:
            con.sql("INSTALL delta")
            con.sql("LOAD delta")
        except duckdb.Error as exc:
            pytest.skip("DuckDB's delta extension is not installed and cannot be downloaded "
                        f"here (extensions come from DuckDB's own server, not PyPI): {exc}")
    return con


def test_duckdb_delta_scan_reads_the_latest_snapshot(fitted, tmp_path):
    X, gm, _ = fitted
    target = str(tmp_path / "scores")
    for run in ("d1", "d2"):
        daskgmm.write_scores(gm, X[:700], target, run_id=run, format="delta")
    con = _duckdb_delta()
    frame = con.sql(f"SELECT * FROM delta_scan('{target}')").df()
    assert _runs(frame) == {"d1": 700, "d2": 700}


def test_the_job_config_selects_the_delta_format(tmp_path):
    from daskgmm_pipelines.config import ConfigError, load_config

    from .conftest import write_job_config

    cfg = load_config(write_job_config(tmp_path, outputs={
        "scores": str(tmp_path / "scores"), "format": "delta"}))
    assert cfg.outputs.format == "delta"
    assert load_config(write_job_config(tmp_path)).outputs.format == "auto"
    with pytest.raises(ConfigError, match=r"outputs.scores.*cannot hold a Delta table"):
        load_config(write_job_config(tmp_path, outputs={"format": "delta"}))
    with pytest.raises(ConfigError, match=r"outputs.format"):
        load_config(write_job_config(tmp_path, outputs={"format": "iceberg"}))


def test_a_table_from_before_missing_features_keeps_its_schema(fitted, tmp_path, caplog):
    """A score table created before the missing_features column: new runs go on with
    the table's columns, and every run reads back."""
    X, gm, _ = fitted
    target = str(tmp_path / "old")
    old = pd.DataFrame({"row_number": np.arange(4, dtype=np.int64),
                        "log_density": np.full(4, -3.0), "anomaly_score": np.full(4, 3.0),
                        "component": np.zeros(4, dtype=np.int32),
                        "responsibility": np.ones(4), "is_anomaly": np.zeros(4, bool),
                        "run_id": "before", "model_id": "m0", "model_version": "v0",
                        "threshold": np.full(4, -9.0)})
    write_deltalake(target, old, partition_by=["run_id"], name="daskgmm_scores")
    with caplog.at_level("WARNING", logger="daskgmm.scores.delta_format"):
        pub = daskgmm.write_scores(gm, X, target, run_id="after", format="delta")
    assert "created without the score column(s) ['missing_features']" in caplog.text
    table = DeltaTable(target)
    assert "missing_features" not in table.schema().to_arrow().names
    frame = table.to_pandas()
    assert sorted(_runs(frame)) == ["after", "before"]
    after = frame[frame["run_id"] == "after"].sort_values("row_number")
    assert_allclose(after["log_density"], gm.score_samples(X), rtol=1e-12)
    assert pub.n_rows == len(X)
