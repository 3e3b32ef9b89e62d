"""The SLURM recipe (deploy/slurm/), for real: a SLURM on this machine runs the nightly job
through the sbatch wrapper, and the job's Dask workers run as SLURM jobs of their own,
submitted by dask-jobqueue as configs/slurm.yaml asks.

The session's SLURM is the one already up here, or, when none is and the tests run as
root, the single-node SLURM of deploy/slurm/start-test-slurm.sh (installed from Debian's
packages when missing, stopped again after the tests). When it cannot be started, the
tests are skipped with the script's reason.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

ROOT = Path(__file__).resolve().parent.parent
SLURM_DIR = ROOT / "deploy" / "slurm"
WRAPPER = SLURM_DIR / "daskgmm-nightly.sbatch"
CONFIG = ROOT / "configs" / "slurm.yaml"
OURS = "# written by deploy/slurm/start-test-slurm.sh"
JOB_SECONDS = 480  # a bound on the batch job; it takes about a minute on 2 busy cores


def _slurm_ready() -> bool:
    """Whether a SLURM controller answers here and a node takes jobs."""
    if shutil.which("sinfo") is None:
        return False
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                              timeout=30)
    except subprocess.TimeoutExpired:
        return False
    states = done.stdout.split()
    return done.returncode == 0 and any(
        s in ("idle", "mixed", "allocated", "completing") for s in states)


def _ours() -> bool:
    """Whether this machine's SLURM is the test one of start-test-slurm.sh."""
    try:
        return Path("/etc/slurm/slurm.conf").read_text().startswith(OURS)
    except OSError:
        return False


def _start_failure(done) -> str:
    """The start script's reason (its last line, 'start-test-slurm: error: ...'), and the
    details it printed before."""
    lines = done.stderr.strip().splitlines()
    reason = next((line.split("error: ", 1)[1] for line in reversed(lines)
                   if line.startswith("start-test-slurm: error: ")), None)
    details = "\n".join(lines[-25:])
    if reason is None:
        return f"start-test-slurm.sh exited with {done.returncode}:\n{details}"
    return f"{reason}\n{details}"


@pytest.fixture(scope="session")
def slurm():
    """A SLURM that runs jobs on this machine; ``True`` when the tests started it."""
    if _slurm_ready():
        yield False
        return
    if os.geteuid() != 0:
        pytest.skip("no SLURM is running here and starting the test one needs root: run "
                    "deploy/slurm/start-test-slurm.sh as root (or `make slurm-test` as root)")
    started = time.monotonic()
    try:
        done = subprocess.run([str(SLURM_DIR / "start-test-slurm.sh")], capture_output=True,
                              text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        pytest.skip(f"could not start SLURM: start-test-slurm.sh did not finish in 900 s: "
                    f"{(exc.stderr or b'')[-2000:]!r}")
    if done.returncode != 0:
        pytest.skip(f"could not start SLURM: {_start_failure(done)}")
    print(f"started the test SLURM in {time.monotonic() - started:.0f} s:\n{done.stderr}")
    try:
        yield True
    finally:
        subprocess.run([str(SLURM_DIR / "stop-test-slurm.sh")], capture_output=True,
                       timeout=120)


def _jobs(workdir=None) -> list[dict]:
    """SLURM's records of the jobs it knows (running ones and those ended in the last
    MinJobAge seconds, 300 by default), optionally only those run in ``workdir``."""
    done = subprocess.run(["scontrol", "--oneliner", "show", "job"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 or "No jobs" in done.stdout + done.stderr, done.stderr
    jobs = [dict(re.findall(r"(\S+?)=(\S*)", line)) for line in done.stdout.splitlines()
            if line.startswith("JobId=")]
    if workdir is None:
        return jobs
    return [j for j in jobs if os.path.realpath(j.get("WorkDir", "")) ==
            os.path.realpath(workdir)]


def _cancel_jobs_in(workdir):
    """Cancel this test's jobs still queued or running (a failed or timed-out test)."""
    left = [j["JobId"] for j in _jobs(workdir) if j.get("JobState") in (
        "PENDING", "RUNNING", "CONFIGURING", "SUSPENDED")]
    if left:
        subprocess.run(["scancel", *left], capture_output=True, timeout=30)


def _daskgmm_env() -> dict:
    """How the wrapper finds daskgmm: the checkout's .venv when the tests run from it,
    else the daskgmm next to this Python."""
    env = dict(os.environ)
    command = Path(sys.executable).parent / "daskgmm"
    if command == ROOT / ".venv" / "bin" / "daskgmm":
        env["DASKGMM_CHECKOUT"] = str(ROOT)
    else:
        env["DASKGMM"] = str(command)
    return env


def _sbatch_wait(args, cwd, env):
    """``sbatch --wait`` of the wrapper from ``cwd``: (job id, exit status, job log)."""
    with subprocess.Popen(["sbatch", "--wait", "--parsable", str(WRAPPER), *args], cwd=cwd,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        try:
            job_id = process.stdout.readline().strip().split(";")[0]
            assert job_id.isdigit(), f"sbatch did not submit: {job_id} {process.stderr.read()}"
            try:
                status = process.wait(timeout=JOB_SECONDS)
            except subprocess.TimeoutExpired:
                log = Path(cwd) / f"daskgmm-nightly-{job_id}.log"
                pytest.fail(f"batch job {job_id} still running after {JOB_SECONDS} s; its "
                            "log:\n" + (log.read_text()[-4000:] if log.exists() else "(none)"))
        finally:
            if process.poll() is None:
                process.kill()
            _cancel_jobs_in(cwd)
    log = Path(cwd) / f"daskgmm-nightly-{job_id}.log"
    assert log.exists(), f"batch job {job_id} left no log in {cwd}"
    return job_id, status, log.read_text()


def test_the_start_script_is_idempotent(slurm):
    """A second start of a running test SLURM says so and leaves its daemons running:
    the same processes before and after."""
    if os.geteuid() != 0 or not _ours():
        pytest.skip("this machine's SLURM is not the test one of start-test-slurm.sh")
    pid_files = [Path("/run/slurmctld.pid"), Path("/run/slurmd.pid"),
                 Path("/run/munge/munged.pid")]
    before = [p.read_text().strip() for p in pid_files]
    done = subprocess.run([str(SLURM_DIR / "start-test-slurm.sh")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "already up: node" in done.stderr, done.stderr
    assert [p.read_text().strip() for p in pid_files] == before
    assert all(Path(f"/proc/{pid}").exists() for pid in before)
    assert _slurm_ready()


def test_the_nightly_job_runs_under_slurm_with_slurm_workers(slurm, tmp_path, prefect_api):
    """configs/slurm.yaml through the sbatch wrapper: the flow runs as a batch job, its
    Dask workers as SLURM jobs of their own (SLURM's records and the workers' logs say
    so), and the model, scores and report it writes are the fit scikit-learn makes from
    the same start."""
    import zarr
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    import daskgmm
    from daskgmm_pipelines.config import load_config
    from daskgmm_pipelines.demo_data import write_demo_data

    # relative paths of the job file resolve in the job's working directory: tmp_path
    write_demo_data(tmp_path / "demo-data", n_samples=4000, seed=0)
    env = {**_daskgmm_env(), "PREFECT_API_URL": prefect_api}  # the tests' Prefect API
    job_id, status, log = _sbatch_wait([str(CONFIG), "--run-id", "slurm-1"], tmp_path, env)
    assert status == 0, log[-6000:]
    assert f"SLURM job {job_id} on " in log and "with exit status 0" in log, log[-3000:]
    # the flow's time limit: 10 minutes under the job's 4 hours (as much as was left)
    limit = re.search(r"flow time limit (\S+) s", log)
    assert limit and 4 * 3600 - 660 < int(limit[1]) <= 4 * 3600 - 600, log[:3000]

    # the Dask workers were SLURM jobs: submitted from the flow's working directory,
    # started on a node, logging to the config's log_directory, registered with the
    # flow's scheduler
    cfg = load_config(CONFIG)
    logs = tmp_path / cfg.cluster.jobqueue.log_directory
    workers = [j for j in _jobs(tmp_path) if j["JobId"] != job_id]
    ran = [j for j in workers if j.get("NodeList") not in (None, "", "(null)")]
    assert ran, workers
    # the flow's end ended them (queued ones too)
    assert not [j for j in workers if j["JobState"] in ("PENDING", "RUNNING")], workers
    for job in ran:
        err_file = Path(re.sub("%[jJ]", job["JobId"], job["StdErr"]))  # SLURM's pattern
        assert err_file.parent == logs, job
        err = err_file.read_text()
        registered = re.search(r"Registered to:\s+(\S+)", err)
        assert registered, err[-3000:]
        assert registered[1] in log  # the scheduler of the flow's own cluster
    # and the flow says where its workers came from
    assert re.search(r"Flow run .* - .*\bslurm\b", log), log[-6000:]

    # the model: the selection's best, scikit-learn's fit from the same seed
    store = daskgmm.ModelStore(str(tmp_path / cfg.outputs.model_store))
    current = store.current()
    assert current is not None and current["run_id"].endswith("slurm-1"), current
    gm = store.load(current["version"])
    info = store.info(current["version"])
    assert info["config"]["cluster"]["backend"] == "slurm"  # the run's record of it
    X = zarr.open_group(str(tmp_path / cfg.source.uri), mode="r")["X"][:]
    m = cfg.model
    ref = SkGaussianMixture(gm.n_components, covariance_type=gm.covariance_type,
                            random_state=m.seed, tol=m.tol, max_iter=m.max_iter,
                            reg_covar=m.reg_covar).fit(X)
    assert gm.n_iter_ == ref.n_iter_
    assert_allclose(gm.weights_, ref.weights_, rtol=1e-6)
    assert_allclose(gm.means_, ref.means_, rtol=1e-6, atol=1e-9)
    assert_allclose(gm.covariances_, ref.covariances_, rtol=1e-6, atol=1e-9)

    # the scores: every row, as the model scores it here, 0.5% flagged
    scores = daskgmm.read_scores(str(tmp_path / cfg.outputs.scores))
    assert len(scores) == len(X)
    here = gm.anomaly_scores(X)
    assert_allclose(scores["log_density"].to_numpy(), here["log_density"].to_numpy(),
                    rtol=1e-9)
    assert_array_equal(scores["is_anomaly"].to_numpy(), here["is_anomaly"].to_numpy())
    assert np.sum(scores["is_anomaly"]) == round(cfg.anomaly.contamination * len(X))

    # the report
    report = tmp_path / cfg.outputs.model_store / "versions" / current["version"] / "report"
    summary = (report / "summary.md").read_text()
    assert f"`{current['version']}`" in summary
    assert {p.name for p in report.glob("*.png")} >= {"bic.png", "scores.png"}


def test_a_bad_job_file_fails_the_batch_job_in_one_line(slurm, tmp_path):
    """The batch job of a job file with a mistake exits 1 (sbatch --wait, afterok
    dependencies and monitoring see it) and its log names the key."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("    cores: 1\n", "    cores: many\n"))
    job_id, status, log = _sbatch_wait([str(bad)], tmp_path, _daskgmm_env())
    assert status == 1, log
    assert re.search(r"daskgmm run: error: ConfigError: .*bad\.yaml", log), log
    assert "cores" in log and "Traceback" not in log, log
    assert "with exit status 1" in log
    assert not [j for j in _jobs(tmp_path) if j["JobId"] != job_id]  # no worker job


def test_the_wrapper_names_a_missing_job_file_and_command(slurm, tmp_path):
    _, status, log = _sbatch_wait(["no-such.yaml"], tmp_path, _daskgmm_env())
    assert status == 2
    assert f"no job file no-such.yaml in the working directory {tmp_path}" in log, log
    env = {**_daskgmm_env(), "DASKGMM": str(tmp_path / "bin" / "daskgmm")}
    _, status, log = _sbatch_wait([str(CONFIG)], tmp_path, env)
    assert status == 2
    assert f"no daskgmm command at {tmp_path / 'bin' / 'daskgmm'}" in log, log
