"""The Prefect flows and the deployment file, on real files and a real cluster."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import daskgmm

from .conftest import write_demo, write_job_config

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_nightly_twice_then_drift(tmp_path):
    from prefect.artifacts import Artifact

    from daskgmm_pipelines.flows import nightly

    write_demo(tmp_path)
    config = write_job_config(tmp_path, nightly={"checkpoint_every": 1, "keep_versions": 2})
    events = []
    first = nightly(config_path=config, run_id="night-1", progress=events.append)
    # the report counts every pass the night's library calls made, no pass by hand
    assert first["n_passes"] == len(events)
    assert [e.phase for e in events][-2:] == ["final", "publish"]
    assert first["mode_text"].startswith("Full BIC selection: no model in the store yet")
    assert first["n_components"] == 3 and first["n_rows"] == 60_000
    store = daskgmm.ModelStore(tmp_path / "models")
    assert store.current()["version"] == first["model_version"]
    table = Artifact.get("t-bic-table")
    assert table is not None and len(json.loads(table.data)) == 6
    assert first["run_id"] == "t-nightly-night-1"  # runs are namespaced by job and flow
    assert "daskgmm run `t-nightly-night-1`" in Artifact.get("t-summary").data
    assert first["promotion"] == {"promote": True, "reason": "the store had no current model"}
    info = store.info(first["model_version"])
    assert info["selection_version"] == first["model_version"]
    assert info["nightly_verdict"] == first["promotion"]  # the version's own record of it
    assert not (tmp_path / "models" / "lock").exists()  # released

    events.clear()
    second = nightly(config_path=config, run_id="night-2", progress=events.append)
    # the warm start: its EM passes, the threshold pass, the publication
    assert [e.phase for e in events][-2:] == ["threshold", "publish"]
    assert "initialization" not in [e.phase for e in events]
    assert second["n_passes"] == len(events)
    assert store.info(second["model_version"])["selection_version"] == first["model_version"]
    assert second["mode_text"].startswith("Warm start from model version "
                                          + first["model_version"])
    assert second["drift"]["drifted"] is False
    assert second["model_version"] != first["model_version"]
    assert store.versions() == sorted([first["model_version"], second["model_version"]])
    assert store.current()["version"] == second["model_version"]
    # promoted after the check: tonight's log-likelihood under both models, recorded
    assert second["promotion"]["promote"] and second["scored_with"] == second["model_version"]
    assert "under the new model" in second["promotion"]["reason"]
    records = store.promotions()
    assert [r["version"] for r in records] == [first["model_version"], second["model_version"]]
    assert records[-1]["previous"] == first["model_version"]
    assert records[-1]["promoted_by"] == "run t-nightly-night-2"
    # the first model and its scores stay readable; the scores name their model version
    first_model = store.load(first["model_version"])
    scores_1 = zarr.open_group(first["scores_url"], mode="r")
    assert scores_1.attrs["daskgmm"]["model_version"] == first["model_version"]
    X = zarr.open_group(str(tmp_path / "data" / "demo.zarr"), mode="r")["X"][:]
    assert_allclose(scores_1["log_density"][:], first_model.score_samples(X), rtol=1e-12)
    latest = daskgmm.read_pointer(tmp_path / "data" / "demo.zarr" / "scores")
    assert latest["model_version"] == second["model_version"]
    report_dir = Path(second["report_url"]).parent
    assert {p.name for p in report_dir.iterdir()} == {"summary.md", "loglik.png", "scores.png"}
    assert (report_dir / "scores.png").read_bytes().startswith(PNG)
    summary = (report_dir / "summary.md").read_text()
    assert "Warm start" in summary and "](scores.png)" in summary
    assert "| promotion | **promoted**, now the current model: tonight's mean" in summary
    assert Artifact.get("t-fit-progress").data == 100.0

    # tonight's data come from another mixture: the drift check forces a new selection
    write_demo(tmp_path, seed=5, overwrite=True)
    events.clear()
    third = nightly(config_path=config, run_id="night-3", progress=events.append)
    # drift: one pass of the warm start, then the whole selection
    assert [e.phase for e in events][:2] == ["em", "initialization"]
    assert third["n_passes"] == len(events)
    assert third["drift"]["drifted"] is True
    assert third["mode_text"].startswith("Full BIC selection: drift: tonight's mean "
                                         "log-likelihood")
    assert third["drift"]["tonight"] < third["drift"]["training"] - 0.5
    assert {p.name for p in Path(third["report_url"]).parent.iterdir()} == {
        "summary.md", "bic.png", "loglik.png", "scores.png"}
    assert third["promotion"]["reason"].startswith("the selection replaced the model: drift")
    # keep_versions: 2 -- the oldest model version is gone (score runs: test_publish)
    assert store.versions() == [second["model_version"], third["model_version"]]



_FIT = """
import sys
from daskgmm_pipelines.cli import main
sys.exit(main(["fit", sys.argv[1], "-k", "6", "-c", "full", "--run-id", "crash",
               "--promote"]))
"""


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fit_killed_mid_fit_resumes_to_the_same_model(tmp_path, prefect_api):
    from daskgmm_pipelines.flows import fit

    write_demo(tmp_path, rows=120_000)
    config = write_job_config(tmp_path, model={"tol": 1e-9, "max_iter": 25})
    checkpoint = tmp_path / "models" / "checkpoints" / "t-fit-crash.ckpt"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": prefect_api}  # the test server: no server of its own to start
    proc = subprocess.Popen([sys.executable, "-c", _FIT, config], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not checkpoint.exists():
            time.sleep(0.05)
        assert proc.poll() is None, "the fit ended before a checkpoint was written"
        time.sleep(0.5)  # a few more iterations
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the flow's process and its workers
        proc.wait()
    assert checkpoint.exists()
    assert daskgmm.ModelStore(tmp_path / "models").current() is None  # nothing published

    # the killed run left its lock: its process is gone, so the lock is replaced
    assert json.loads((tmp_path / "models" / "lock").read_text())["pid"] != os.getpid()
    result = fit(config_path=config, n_components=6, covariance_type="full", run_id="crash",
                 promote_model=True)
    assert result["resumed_from_iteration"] >= 1
    assert not checkpoint.exists()  # removed once the model is current
    model = daskgmm.ModelStore(tmp_path / "models").load()
    ref = daskgmm.GaussianMixture(6, covariance_type="full", random_state=0, tol=1e-9,
                                  max_iter=25, array_name="X")
    ref.fit(str(tmp_path / "data" / "demo.zarr"))
    assert model.n_iter_ == ref.n_iter_ > result["resumed_from_iteration"]
    for name in ("weights_", "means_", "covariances_"):
        assert_allclose(getattr(model, name), getattr(ref, name), rtol=1e-12, atol=1e-14)


def test_deployment_file_loads_and_entrypoints_import(monkeypatch):
    from prefect.flows import Flow, load_flow_from_entrypoint

    monkeypatch.chdir(ROOT)  # the worker runs flows from the project root
    spec = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])  # as Prefect loads it
        assert isinstance(flow, Flow)
        config = deployment["parameters"]["config_path"]
        from daskgmm_pipelines.config import load_config

        cfg = load_config(ROOT / config)
        assert set(deployment["parameters"]) <= set(flow.parameters.properties)
        for schedule in deployment.get("schedules", []):
            # the deployment runs the job when its config's schedule says
            assert (schedule["cron"], schedule["timezone"]) == (cfg.schedule.cron,
                                                                cfg.schedule.timezone)
    assert np.all([d["work_pool"]["name"] == "daskgmm" for d in spec["deployments"]])
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    for deployment in spec["deployments"]:  # one run at a time, as Prefect reads the limit
        limit = ConcurrencyLimitConfig(**deployment["concurrency_limit"])
        assert (limit.limit, limit.collision_strategy.value) == (1, "ENQUEUE")



def test_a_parquet_job_names_its_features(tmp_path):
    from prefect.logging import disable_run_logger

    from daskgmm_pipelines.config import ConfigError, load_config
    from daskgmm_pipelines.flows import check_source

    frame = pd.DataFrame({"event_id": [1, 2], "a": [0.1, 0.2], "name": ["x", "y"],
                          "b": [1, 2], "label": [0, 1]})
    (tmp_path / "pq").mkdir()
    frame.to_parquet(tmp_path / "pq" / "p.parquet")
    path = tmp_path / "job.yaml"
    source = {"uri": str(tmp_path / "pq"), "id_columns": ["event_id"]}
    outputs = {"model_store": str(tmp_path / "m"), "scores": str(tmp_path / "s")}
    path.write_text(yaml.safe_dump({"name": "t", "source": source, "outputs": outputs}))
    with disable_run_logger(), pytest.raises(
            ValueError, match=r"source\.columns is not set: .* numeric columns event_id, a, "
                              r"b, label \(id_columns, never features: event_id\); add "
                              r"'columns: \[\.\.\.\]' .* features among a, b, label"):
        check_source.fn(load_config(path))  # the flows' first task, as a function
    path.write_text(yaml.safe_dump({"name": "t", "source": {**source, "format": "parquet"},
                                    "outputs": outputs}))
    with pytest.raises(ConfigError, match=r"source\.columns .*: a Parquet source names its "
                                          r"feature columns"):
        load_config(path)  # known to be Parquet: refused when the file is read


def test_parquet_demo_config_runs_the_nightly_job(tmp_path, monkeypatch):
    from daskgmm_pipelines.config import load_config
    from daskgmm_pipelines.demo_data import write_demo_data
    from daskgmm_pipelines.flows import nightly

    monkeypatch.chdir(tmp_path)  # the config's relative paths, as from the project root
    write_demo_data("demo-data", n_samples=30_000, n_features=6, n_components=3, seed=0)
    cfg = load_config(ROOT / "configs" / "demo-parquet.yaml")
    assert cfg.source.columns == [f"f{j}" for j in range(6)]
    text = (ROOT / "configs" / "demo-parquet.yaml").read_text()
    fast = yaml.safe_load(text)
    fast["model"]["n_components"] = [2, 3]  # the job as shipped, on a smaller grid
    fast["cluster"] = {"processes": False, "memory_limit": None}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(fast))
    summary = nightly(config_path=str(tmp_path / "job.yaml"))
    model = daskgmm.ModelStore("demo-data/models-parquet").load()
    assert list(model.feature_names_in_) == [f"f{j}" for j in range(6)]  # no id, no label
    scores = pd.read_parquet(daskgmm.latest_scores("demo-data/scores-parquet"))
    source = pd.read_parquet("demo-data/demo-parquet")
    assert_array_equal(scores["event_id"], source["event_id"])
    X = source[cfg.source.columns].to_numpy()
    covariances = (model.covariances_ if model.covariance_type == "full"
                   else [np.diag(c) for c in model.covariances_])
    oracle = logsumexp([np.log(w) + multivariate_normal(m, c).logpdf(X) for w, m, c in
                        zip(model.weights_, model.means_, covariances, strict=True)], axis=0)
    assert_allclose(scores["log_density"], oracle, rtol=1e-9)
    assert summary["n_rows"] == 30_000


def test_bad_data_fails_the_flow_with_the_library_message(tmp_path):
    from daskgmm_pipelines.flows import nightly

    write_demo(tmp_path, rows=20_000)
    X = zarr.open_group(str(tmp_path / "data" / "demo.zarr"), mode="a")["X"]
    X[15_003, 2] = np.nan
    config = write_job_config(tmp_path)
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"NaN or infinity: chunk 0 .* first at row 15003, "
                                         r"column 2"):
        nightly(config_path=config, run_id="bad")
    assert time.monotonic() - started < 60  # not retried: bad data is not a transient error
    assert daskgmm.ModelStore(tmp_path / "models").current() is None



def test_flow_on_an_external_scheduler(tmp_path, cluster_client):
    from daskgmm_pipelines.flows import fit

    write_demo(tmp_path, rows=20_000)
    address = cluster_client.scheduler.address
    config = write_job_config(tmp_path)
    job = yaml.safe_load(Path(config).read_text())
    job["cluster"] = {"address": address}  # the embedded cluster's keys are refused here
    Path(config).write_text(yaml.safe_dump(job))
    result = fit(config_path=config, n_components=3, covariance_type="diag", run_id="ext")
    store = daskgmm.ModelStore(tmp_path / "models")
    assert store.current() is None and result["promoted"] is False  # saved, not current
    model = store.load(result["model_version"])
    ref = daskgmm.GaussianMixture(3, covariance_type="diag", random_state=0, tol=1e-4,
                                  array_name="X").fit(str(tmp_path / "data" / "demo.zarr"))
    assert result["n_iter"] == ref.n_iter_
    assert_allclose(model.means_, ref.means_, rtol=1e-12)
    assert cluster_client.status == "running"  # the flow closed its client, not the cluster


def test_runs_of_different_flows_keep_their_outputs_and_a_held_lock_stops_a_run(tmp_path):
    from daskgmm.model_store import LockedError
    from daskgmm_pipelines.flows import nightly, score

    write_demo(tmp_path, rows=20_000)
    config = write_job_config(tmp_path, model={"n_components": [2, 3],
                                               "covariance_types": ["full"]})
    night = nightly(config_path=config)  # default run ids: the date, per job and flow
    scored = score(config_path=config)
    assert night["run_id"].startswith("t-nightly-") and scored["run_id"].startswith("t-score-")
    target = tmp_path / "data" / "demo.zarr" / "scores"
    versions = {p.name for p in (target / "_versions").iterdir() if p.is_dir()}
    assert versions == {night["run_id"], scored["run_id"]}  # the score run deleted nothing
    assert zarr.open_group(night["scores_url"], mode="r")["log_density"].shape == (20_000,)

    store = daskgmm.ModelStore(tmp_path / "models")
    with store.lock("someone-else"):
        started = time.monotonic()
        with pytest.raises(LockedError, match="run 'someone-else'"):
            nightly(config_path=config, run_id="blocked")
        assert time.monotonic() - started < 30  # failed before any work, not retried
    assert store.current()["version"] == night["model_version"]


def test_a_source_rewritten_between_fit_and_publish_publishes_nothing(tmp_path):
    import pyarrow.parquet as pq

    from daskgmm_pipelines.flows import nightly

    write_demo(tmp_path, rows=20_000)
    source = tmp_path / "data" / "demo-parquet"
    config = write_job_config(
        tmp_path, source={"uri": str(source), "array_name": None,
                          "columns": ["f0", "f1", "f2", "f3"], "id_columns": ["event_id"]},
        model={"n_components": [2], "covariance_types": ["full"]},
        outputs={"scores": str(tmp_path / "scores")})
    first = nightly(config_path=config, run_id="n1")
    pointer = (tmp_path / "scores" / "_latest").read_bytes()
    part = sorted(source.glob("*.parquet"))[0]

    def rewrite_after_the_fit(event):  # an upstream job replaces a file mid-run
        if event.phase == "threshold":
            table = pq.read_table(part)
            pq.write_table(table.slice(0, table.num_rows // 2), part)

    with pytest.raises(daskgmm.SourceChangedError,
                       match=rf"changed since the job started .*: file '{part.name}' was "
                             r"\d+ bytes, .* now \d+ bytes, .*Nothing was scored or published"):
        nightly(config_path=config, run_id="n2", progress=rewrite_after_the_fit)
    assert (tmp_path / "scores" / "_latest").read_bytes() == pointer
    assert daskgmm.read_pointer(str(tmp_path / "scores"))["run_id"] == first["run_id"]
    # the model of the failed run stays in the store, not current
    assert daskgmm.ModelStore(tmp_path / "models").current()["version"] == \
        first["model_version"]


def _run_log(flow_run_id, last):
    """The messages of a flow run's logs (the Prefect API's copy), once ``last`` is in."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(
                any_=[flow_run_id])))
            messages = [log.message for log in logs]
            if last in messages or time.monotonic() > deadline:
                return messages
            time.sleep(0.2)


def test_fit_log_lines_name_the_candidate_the_pass_and_the_phase(tmp_path):
    from prefect.artifacts import Artifact

    from daskgmm_pipelines.flows import fit

    write_demo(tmp_path, rows=20_000)
    config = write_job_config(tmp_path)
    state = fit(config_path=config, n_components=3, covariance_type="full", run_id="log",
                return_state=True)
    n = state.result()["n_iter"]
    lines = [line for line in _run_log(state.state_details.flow_run_id,
                                       f"fit: pass {n + 2} (threshold) done")
             if line.startswith("fit: ")]
    assert lines[0] == "fit: pass 1 (initialisation) done"
    assert lines[1].startswith("fit: k=3 full: iteration 1, mean log-likelihood -")
    assert lines[1].endswith(", change -")  # no change on the first iteration
    assert lines[2] == "fit: pass 2 (EM): 1 of 1 candidate running"
    assert lines[-3].startswith(f"fit: k=3 full: iteration {n}, mean log-likelihood")
    assert lines[-3].endswith(", converged")
    assert lines[-2] == f"fit: pass {n + 1} (EM): EM finished, converged at iteration {n}"
    assert lines[-1] == f"fit: pass {n + 2} (threshold) done"
    assert len(lines) == 2 * n + 2  # per iteration: the candidate's line and the pass's
    assert not any("0 candidate" in line or "0 of" in line for line in lines)
    artifact = Artifact.get("t-fit-progress")
    assert artifact.data == 100.0 and artifact.description == lines[-1]


class _Lines(list):
    """A logger's messages: ``logger.info(...)`` appends the message."""

    def info(self, msg, *args):
        self.append(msg % args)

    warning = info


def test_selection_log_lines_one_per_candidate_per_pass():
    """Driven by a real selection's events: after each EM pass, one line per candidate
    that ran in it (labelled), then the pass's line; the phases by name."""
    import dask.array as da
    from prefect import flow
    from prefect.artifacts import Artifact

    from daskgmm_pipelines.flows import _Progress

    from .conftest import make_blobs

    lines, events = _Lines(), []

    @flow(name="test-selection-progress")
    def selection():  # the artifact belongs to a run
        progress = _Progress(lines, "t-test-selection-progress", "select")

        def both(event):
            events.append(event)
            progress(event)

        lazy = da.from_array(make_blobs(3_000, 2, 3, seed=5), chunks=(500, 2))
        return daskgmm.select_model(lazy, [1, 3], ["full", "diag"], random_state=0,
                                    init_sample_size=1_000, callback=both)

    sel = selection()
    assert lines[:2] == ["select: pass 1 (initialisation) done",
                         "select: pass 2 (initialisation) done"]
    at = 2
    for e in events[2:-1]:  # the EM passes, in order
        assert e.phase == "em"
        for c, line in zip(e.candidates, lines[at:at + len(e.candidates)], strict=True):
            assert line.startswith(f"select: {c.label}: iteration {c.n_iter}, mean "
                                   f"log-likelihood {c.log_likelihood:.6f}, change ")
        at += len(e.candidates)
        assert lines[at].startswith(f"select: pass {e.n_passes} (EM): ")
        at += 1
    assert [line.split(": iteration")[0] for line in lines[2:6]] == [
        "select: k=1 full", "select: k=3 full", "select: k=1 diag", "select: k=3 diag"]
    assert lines[6] == "select: pass 3 (EM): 4 of 4 candidates running"
    assert lines[at - 1] == (f"select: pass {sel.n_passes_ - 1} (EM): EM finished, 4 of 4 "
                             "candidates converged")
    assert lines[at:] == [f"select: pass {sel.n_passes_} (final pass) done: scored the "
                          "final parameters of 4 candidates"]
    assert Artifact.get("t-test-selection-progress").data == 100.0


def test_a_run_over_its_time_limit_ends_timed_out_and_changes_nothing(tmp_path):
    """The flows' time limit (``DASKGMM_FLOW_TIMEOUT_SECONDS``, set here on the flow): a
    run stuck after a pass (a callback that never returns, as a hung cluster would) is
    interrupted, ends TimedOut, releases the job's lock, and publishes and promotes
    nothing."""
    from daskgmm_pipelines.flows import nightly

    write_demo(tmp_path, rows=20_000)
    config = write_job_config(tmp_path)

    def stuck(event):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # interrupted by the time limit, or the run goes on
            time.sleep(0.05)

    state = nightly.with_options(timeout_seconds=6)(config_path=config, run_id="stuck",
                                                    progress=stuck, return_state=True)
    assert state.name == "TimedOut" and state.is_failed(), state
    assert state.message == "Flow run exceeded timeout of 6.0 second(s)"
    assert not (tmp_path / "models" / "lock").exists()  # released on the way out
    assert daskgmm.ModelStore(tmp_path / "models").current() is None
    assert not (tmp_path / "data" / "demo.zarr" / "scores").exists()


@pytest.mark.parametrize("name, value, minimum, integer, what", [
    ("DASKGMM_FLOW_TIMEOUT_SECONDS", "soon", 1, False, "a number >= 1"),
    ("DASKGMM_FLOW_TIMEOUT_SECONDS", "0", 1, False, "a number >= 1"),
    ("DASKGMM_FLOW_TIMEOUT_SECONDS", "inf", 1, False, "a number >= 1"),
    ("DASKGMM_FLOW_RETRIES", "1.5", 0, True, "a whole number >= 0"),
    ("DASKGMM_FLOW_RETRY_DELAY_SECONDS", "-5", 0, True, "a whole number >= 0"),
])
def test_time_limit_and_retries_from_the_environment(monkeypatch, name, value, minimum,
                                                      integer, what):
    """How pipelines/flows.py reads them when it is imported (the serving test runs a
    deployment with them set)."""
    from daskgmm_pipelines.flows import _env_number

    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=rf"The environment variable {name}='{value}' is "
                                         rf"not {what}: set it to one \(deploy/prefect\.yaml "
                                         rf"sets it .*\), or unset it for the default 7\."):
        _env_number(name, 7, minimum, integer=integer)
    monkeypatch.setenv(name, " 30 ")
    assert _env_number(name, 7, minimum, integer=integer) == 30
    monkeypatch.delenv(name)
    assert _env_number(name, 7, minimum, integer=integer) == 7


def test_the_summary_embeds_its_plots_for_the_prefect_ui():
    """The markdown artifact shows each PNG as a data URI (the Prefect UI cannot read the
    model store) and names its file; a PNG too large to embed is linked."""
    import base64

    from daskgmm_pipelines import report

    png = report.loglik_plot([-3.0, -2.5, -2.4])
    uri = report.png_data_uri(png)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == png
    assert report.png_data_uri(png, max_bytes=len(png) - 1) is None
    with pytest.raises(ValueError, match="Not a PNG"):
        report.png_data_uri(b"GIF89a...")
    summary = {"run_id": "r", "job": "j", "mode_text": "Warm start", "n_components": 2,
               "covariance_type": "full", "model_version": "v", "model_id": "i",
               "n_iter": 3, "converged": True, "seconds": 1.0, "n_passes": 5,
               "n_rows": 10, "n_anomalies": 1, "anomaly_rate": 0.1, "threshold": -3.0,
               "model_url": "m", "scores_url": "s",
               "plots": {"Log-likelihood per iteration": "store/v/report/loglik.png",
                         "Anomaly scores": "store/v/report/scores.png"}}
    text = report.summary_markdown(summary, images={
        "Log-likelihood per iteration": uri, "Anomaly scores": None})
    assert f"![Log-likelihood per iteration]({uri})\n\nFile: `store/v/report/loglik.png`" \
        in text
    assert ("Larger than 256 KiB, not shown here: [store/v/report/scores.png]"
            "(store/v/report/scores.png)") in text
    assert "![Anomaly scores]" not in text
    # the file saved next to the PNGs links them relatively
    local = report.summary_markdown({**summary, "plots": {"Anomaly scores": "scores.png"}})
    assert "![Anomaly scores](scores.png)\n\n[scores.png](scores.png)" in local


def test_demo_data_on_s3_lands_whole(s3):
    """``daskgmm demo-data --out s3://...``: both copies on the bucket, the Parquet one
    under its final name, and the same rows in both."""
    from daskgmm_pipelines.demo_data import write_demo_data

    fs, options = s3
    paths = write_demo_data("s3://data/demo", n_samples=3000, n_features=3, n_components=2,
                            storage_options=options)
    assert paths == {"zarr": "s3://data/demo/demo.zarr",
                     "parquet": "s3://data/demo/demo-parquet"}
    assert not fs.exists("data/demo/demo-parquet.tmp")
    zarr_rows = daskgmm.as_dataset(paths["zarr"], array_name="X",
                                   storage_options=options).array.compute()
    parquet_rows = daskgmm.as_dataset(paths["parquet"], columns=["f0", "f1", "f2"],
                                      storage_options=options).array.compute()
    np.testing.assert_array_equal(parquet_rows, zarr_rows)
    before = fs.info("data/demo/demo-parquet/part-00000.parquet")["LastModified"]
    write_demo_data("s3://data/demo", n_samples=3000, n_features=3, n_components=2,
                    storage_options=options)  # kept, not rewritten
    assert fs.info("data/demo/demo-parquet/part-00000.parquet")["LastModified"] == before


def test_the_time_limit_checked_before_publishing_is_the_running_flows_own():
    """``with_options(timeout_seconds=...)`` (or a deployment's) is the limit the flows
    check before publishing or promoting, not the module's default; a flow without a
    limit is never stopped there."""
    from prefect import flow

    from daskgmm_pipelines.flows import _in_time

    @flow(name="late")
    def late():
        _in_time(time.perf_counter() - 10)  # started 10 s ago
        return "published"

    state = late.with_options(timeout_seconds=5)(return_state=True)
    assert state.name == "TimedOut", state
    assert "time limit of 5 s before publishing" in str(state.result(raise_on_failure=False))
    assert late(return_state=True).result() == "published"


def test_nightly_runs_publish_to_a_delta_table_one_commit_each(tmp_path):
    """``outputs.format: delta``: each nightly run is one commit of the table, whose
    latest snapshot holds every kept run; a run's rows are the current model's scores."""
    from deltalake import DeltaTable

    from daskgmm_pipelines.flows import nightly, score

    write_demo(tmp_path, rows=20_000)
    out = tmp_path / "scores-delta"
    config = write_job_config(tmp_path, model={"n_components": [2, 3],
                                               "covariance_types": ["full"]},
                              outputs={"scores": str(out), "format": "delta"})
    night = nightly(config_path=config, run_id="d1")
    scored = score(config_path=config, run_id="d2")
    table = DeltaTable(str(out))
    assert table.version() == 1  # two runs, two commits
    rows = table.to_pandas().sort_values(["run_id", "row_number"])
    assert rows.groupby("run_id").size().to_dict() == {night["run_id"]: 20_000,
                                                      scored["run_id"]: 20_000}
    gm = daskgmm.ModelStore(tmp_path / "models").load(night["model_version"])
    X = zarr.open_group(str(tmp_path / "data" / "demo.zarr"), mode="r")["X"][:]
    mine = rows[rows["run_id"] == scored["run_id"]]
    assert_allclose(mine["log_density"].to_numpy(), gm.score_samples(X), rtol=1e-9)
    assert (mine["model_version"] == night["model_version"]).all()
    assert DeltaTable(str(out), version=0).to_pandas()["run_id"].unique().tolist() == [
        night["run_id"]]
