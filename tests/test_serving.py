"""Serving the nightly job: a real Prefect server, a process worker, the deployments of
deploy/prefect.yaml and the automation of deploy/automations.yaml, driven by the commands
README.md's "Serving it on a schedule" gives.

One test, because a server, a worker and their flow runs take most of a minute to start:
the nightly deployment runs once on a small job (model, scores, report, the summary
artifact with its plots embedded); a second run, due while the first runs, waits for the
deployment's concurrency slot, exceeds its time limit before it can publish (nothing
readers see changes), and its final state reaches a webhook through the automation.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import daskgmm

from .conftest import ROOT, Processes, free_port, write_demo, write_job_config

BIN = Path(sys.executable).parent  # the venv's commands: prefect, daskgmm
PNG = b"\x89PNG\r\n\x1a\n"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

# The block of README.md's walkthrough, on the test's webhook
BLOCK = """
import sys
from prefect.blocks.notifications import CustomWebhookNotificationBlock as Webhook
print(Webhook(name="daskgmm", url=sys.argv[1],
              json_data={"text": "{{subject}}: {{body}}"}).save("daskgmm-failures",
                                                             overwrite=True))
"""


class _Webhook:
    """A local HTTP endpoint recording the JSON bodies POSTed to it."""

    def __init__(self):
        self.bodies = []
        bodies = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served(tmp_path):
    """A Prefect server on a free port (its own PREFECT_HOME and SQLite database), the
    process work pool ``daskgmm`` and a worker in the project root; yields ``(run,
    api, procs)``: ``run(*args)`` runs a command against the server, ``api`` its URL."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PREFECT_PROFILE", None)
    server_env = {**env, "PREFECT_API_DATABASE_CONNECTION_URL":
                  f"sqlite+aiosqlite:///{home / 'prefect.db'}",
                  # a run waiting for the deployment's slot asks again after 1 s, not 30
                  "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1"}
    server_env.pop("PREFECT_API_URL")
    procs = Processes(tmp_path, grace=20)

    def run(*args, check=True, timeout=120, **extra):
        done = subprocess.run(args, cwd=ROOT, env={**env, **extra}, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited with {done.returncode}:\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    try:
        # no scheduler: no run of the deployments' cron schedules during the test
        server = procs.start("server", [str(BIN / "prefect"), "server", "start", "--host",
                                        "127.0.0.1", "--port", str(port), "--no-ui",
                                        "--no-scheduler", "--analytics-off"], env=server_env)
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"the server exited:\n{procs.log('server')}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"no server:\n{procs.log('server')}"
            time.sleep(0.5)
        run(str(BIN / "prefect"), "work-pool", "create", "daskgmm", "--type", "process")
        procs.start("worker", [str(BIN / "prefect"), "worker", "start", "--pool", "daskgmm"],
                    env={**env, "DASKGMM_HOME": str(ROOT), "PREFECT_WORKER_QUERY_SECONDS": "1"})
        yield run, api, procs
    finally:
        procs.stop()


def _post(api, path, body):
    response = httpx.post(f"{api}/{path}", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def _flow_run(api, flow_run_id):
    response = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10)
    response.raise_for_status()
    return response.json()


def _wait_for(api, flow_run_id, types, procs, timeout=300):
    deadline = time.monotonic() + timeout
    while True:
        flow_run = _flow_run(api, flow_run_id)
        if flow_run["state_type"] in types:
            return flow_run
        assert time.monotonic() < deadline, (
            f"flow run {flow_run_id} still {flow_run['state_name']}:\n{procs.log('worker')}")
        time.sleep(0.5)


def _created_flow_run(output: str) -> str:
    """The flow run id `prefect deployment run` prints (`└── UUID: ...`)."""
    found = re.search(rf"UUID: ({UUID})", output)
    assert found, output
    return found.group(1)


def test_the_nightly_deployment_served_by_a_prefect_server(tmp_path, served):
    run, api, procs = served
    prefect = str(BIN / "prefect")
    hook = _Webhook()
    try:
        write_demo(tmp_path, rows=20_000)
        config = write_job_config(tmp_path, model={"n_components": [2, 3],
                                                   "covariance_types": ["full"]})

        deployed = run(prefect, "--no-prompt", "deploy", "--all", "--prefect-file",
                       "deploy/prefect.yaml")
        assert "Deployment 'daskgmm-nightly/demo-nightly' successfully" in deployed.stdout

        # the automation of deploy/automations.yaml, on a notification block to the webhook
        block_id = run(str(BIN / "python"), "-c", BLOCK, hook.url).stdout.strip()
        assert re.fullmatch(UUID, block_id), block_id
        automation = tmp_path / "automations.yaml"
        automation.write_text((ROOT / "deploy" / "automations.yaml").read_text().replace(
            "NOTIFICATION_BLOCK_ID", block_id))
        run(prefect, "automation", "create", "--from-file", str(automation))
        (created,) = _post(api, "automations/filter", {})
        assert created["name"] == "daskgmm-run-failed" and created["enabled"]
        assert created["actions"] == [{**created["actions"][0], "type": "send-notification",
                                       "block_document_id": block_id}]

        # the nightly on the small job, watched as README.md says
        watch_log = (tmp_path / "watch.log").open("w+")
        watch = subprocess.Popen(
            [prefect, "deployment", "run", "daskgmm-nightly/demo-nightly", "--param",
             f"config_path={config}", "--param", "run_id=served", "--watch",
             "--watch-timeout", "600"],
            cwd=ROOT, env={**os.environ, "PREFECT_API_URL": api,
                           "PREFECT_HOME": str(tmp_path / "prefect-home")},
            stdout=watch_log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not re.search(rf"UUID: {UUID}", Path(watch_log.name).read_text()):
                assert watch.poll() is None and time.monotonic() < deadline, \
                    Path(watch_log.name).read_text()
                time.sleep(0.2)
            first_id = _created_flow_run(Path(watch_log.name).read_text())
            _wait_for(api, first_id, {"RUNNING", "COMPLETED", "FAILED", "CRASHED"}, procs)

            # a second run due while the first runs, with a time limit of 1 s (a nightly
            # takes longer) and no retry (a retry reuses the attempt's finished tasks and
            # may well finish within the second)
            second = run(prefect, "deployment", "run", "daskgmm-nightly/demo-nightly",
                         "--param", f"config_path={config}", "--param", "run_id=late",
                         "--job-variable", 'env={"DASKGMM_FLOW_TIMEOUT_SECONDS": "1", '
                                           '"DASKGMM_FLOW_RETRIES": "0", '
                                           '"DASKGMM_FLOW_RETRY_DELAY_SECONDS": "0"}')
            second_id = _created_flow_run(second.stdout)
            assert watch.wait(timeout=600) == 0, (Path(watch_log.name).read_text()
                                                  + procs.log("worker"))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(watch.pid, signal.SIGTERM)
            watch.wait()
            watch_log.close()
        watched = Path(watch_log.name).read_text()
        assert "Flow run finished successfully in 'Completed'." in watched

        first = _flow_run(api, first_id)
        assert first["state_name"] == "Completed" and first["parameters"]["run_id"] == "served"
        # what the run wrote: the model (current), the scores, the report
        store = daskgmm.ModelStore(tmp_path / "models")
        info = store.current()
        assert info is not None and info["run_id"] == "t-nightly-served"
        model = store.load()
        target = str(tmp_path / "data" / "demo.zarr" / "scores")
        scores = zarr.open_group(daskgmm.latest_scores(target), mode="r")
        X = zarr.open_group(str(tmp_path / "data" / "demo.zarr"), mode="r")["X"][:]
        oracle = logsumexp([np.log(w) + multivariate_normal(m, c).logpdf(X) for w, m, c in
                            zip(model.weights_, model.means_, model.covariances_,
                                strict=True)], axis=0)
        assert_allclose(scores["log_density"][:], oracle, rtol=1e-9)
        assert scores.attrs["daskgmm"]["model_version"] == info["version"]
        report = tmp_path / "models" / "versions" / info["version"] / "report"
        assert {p.name for p in report.iterdir()} == {"summary.md", "bic.png", "loglik.png",
                                                      "scores.png"}
        summary = (report / "summary.md").read_text()
        assert "![Anomaly scores](scores.png)" in summary and "data:image" not in summary

        # the summary artifact on the server shows the same PNGs, embedded
        (artifact,) = _post(api, "artifacts/filter", {"artifacts": {"key": {"any_": [
            "t-summary"]}}})
        assert artifact["type"] == "markdown" and artifact["flow_run_id"] == first_id
        images = dict(re.findall(r"!\[([^]]+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)",
                                 artifact["data"]))
        assert set(images) == {"BIC against k", "Log-likelihood per iteration",
                               "Anomaly scores"}
        for title, name in [("BIC against k", "bic"), ("Anomaly scores", "scores")]:
            assert base64.b64decode(images[title]) == (report / f"{name}.png").read_bytes()

        # the second run waited for the first's slot and timed out before publishing
        late = _wait_for(api, second_id, {"FAILED", "CRASHED", "COMPLETED"}, procs)
        assert late["state_name"] == "TimedOut" and late["run_count"] == 1, late["state"]
        assert late["state"]["message"] == "Flow run exceeded timeout of 1.0 second(s)"
        states = httpx.get(f"{api}/flow_run_states/", params={"flow_run_id": second_id},
                           timeout=10).json()
        names = [s["name"] for s in sorted(states, key=lambda s: s["timestamp"])]
        # one run at a time: it ran after the first had ended (it waited in
        # AwaitingConcurrencySlot when it came due before that)
        assert "TimedOut" in names, names
        assert min(s["timestamp"] for s in states if s["name"] == "Running") > \
            first["end_time"]
        # ... and changed nothing readers see
        assert store.current()["version"] == info["version"]
        assert daskgmm.read_pointer(target)["run_id"] == "t-nightly-served"

        # one notification, for the final time-out
        deadline = time.monotonic() + 60
        while not hook.bodies and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # a second notification would have come by now
        assert len(hook.bodies) == 1, hook.bodies
        text = hook.bodies[0]["text"]
        assert text.startswith(f"daskgmm: daskgmm-nightly/{late['name']} is TimedOut: ")
        assert "of deployment demo-nightly ended TimedOut" in text
        assert "'run_id': 'late'" in text and "exceeded timeout of 1.0 second(s)" in text
        # warnings are errors in this suite, which does not see the flow runs' processes
        assert "Warning" not in procs.log("worker"), procs.log("worker")
    finally:
        hook.close()
