"""The job's Dask cluster (pipelines/cluster.py) on real ``dask scheduler`` and ``dask worker``
processes started with the commands of deploy/local/README.md, plain TCP and TLS from a
throwaway CA made by deploy/local/make-certs.py; the nightly flow run against them."""

import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import dask
import distributed  # noqa: F401 - its dask config is loaded before a test sets a key of it
import pytest
import yaml
import zarr
from numpy.testing import assert_allclose

import daskgmm
from daskgmm.synthetic import write_mixture_zarr
from daskgmm_pipelines.cluster import ClusterConnectionError, ClusterStartError, dask_client
from daskgmm_pipelines.config import ClusterConfig, load_config

from .conftest import ROOT, Processes, free_port

README = ROOT / "deploy" / "local" / "README.md"
BIN = Path(sys.executable).parent


# --- the README's commands, as real processes -----------------------------------------------

def readme_commands() -> dict[str, list[str]]:
    """The shell commands of deploy/local/README.md, by kind."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    kinds = {"tcp scheduler": [], "tcp worker": [], "tls scheduler": [], "tls worker": [],
             "certs": [], "run": []}
    for line in filter(None, lines):
        if line.startswith("dask scheduler"):
            kinds["tls scheduler" if "--protocol tls" in line else "tcp scheduler"].append(line)
        elif line.startswith("dask worker"):
            kinds["tls worker" if line.startswith("dask worker tls://") else "tcp worker"
                  ].append(line)
        elif line.startswith("python deploy/local/make-certs.py"):
            kinds["certs"].append(line)
        elif line.startswith("daskgmm run"):
            kinds["run"].append(line)
    return kinds


def test_readme_gives_one_scheduler_two_workers_and_a_job_per_protocol():
    kinds = readme_commands()
    assert {kind: len(lines) for kind, lines in kinds.items()} == {
        "tcp scheduler": 1, "tcp worker": 2, "tls scheduler": 1, "tls worker": 2,
        "certs": 1, "run": 2}
    assert kinds["run"] == ["daskgmm run configs/local-scheduler.yaml",
                            "daskgmm run configs/local-scheduler-tls.yaml"]
    tls = load_yaml(ROOT / "configs" / "local-scheduler-tls.yaml")["cluster"]
    for path in tls["tls"].values():  # the job's files are the ones the script writes
        assert path.startswith("deploy/local/tls/") and "deploy/local/tls" in kinds["certs"][0]
    assert "deploy/local/tls/ca.pem" in kinds["tls scheduler"][0]


def argv(command: str, ports: dict, certs: Path | None = None) -> list[str]:
    """A README command with this test's ports and certificate directory."""
    command = command.replace("127.0.0.1:8786", f"127.0.0.1:{ports['scheduler']}")
    command = command.replace("--port 8786", f"--port {ports['scheduler']}")
    command = command.replace("127.0.0.1:8787", f"127.0.0.1:{ports['dashboard']}")
    if certs is not None:
        command = command.replace("deploy/local/tls", str(certs))
    words = shlex.split(command)
    if words[0] == "dask":
        words[0] = str(BIN / "dask")
    elif words[0] == "python":
        words[0] = sys.executable
    return words


def start_cluster(tmp, kind, certs=None):
    """The README's scheduler and two workers of ``kind`` ('tcp' or 'tls'); returns the
    processes, the ports and the scheduler's address."""
    commands = readme_commands()
    ports = {"scheduler": free_port(), "dashboard": free_port()}
    procs = Processes(tmp)
    try:
        scheduler = procs.start("scheduler",
                                argv(commands[f"{kind} scheduler"][0], ports, certs))
        procs.wait_listening(ports["scheduler"], scheduler)
        for i, command in enumerate(commands[f"{kind} worker"]):
            procs.start(f"worker-{i}", argv(command, ports, certs))
    except BaseException:
        procs.stop()
        raise
    return procs, ports, f"{kind}://127.0.0.1:{ports['scheduler']}"


def load_yaml(path):
    return yaml.safe_load(Path(path).read_text())


def tls_files(directory) -> dict:
    return {"ca_file": f"{directory}/ca.pem", "cert_file": f"{directory}/client.pem",
            "key_file": f"{directory}/client-key.pem"}


def observer(address, certs=None):
    """A client of the test's own, not the default one (the job's client is)."""
    from distributed import Client
    from distributed.security import Security

    security = None if certs is None else Security(
        tls_ca_file=f"{certs}/ca.pem", tls_client_cert=f"{certs}/client.pem",
        tls_client_key=f"{certs}/client-key.pem", require_encryption=True)
    return Client(address, security=security, set_as_default=False, timeout="30s")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """The README's make-certs command, run twice: the cluster's CA and another CA."""
    command = readme_commands()["certs"][0]
    made = {}
    for name in ("ca", "other-ca"):
        directory = tmp_path_factory.mktemp(name)
        done = subprocess.run(argv(command, {"scheduler": 0, "dashboard": 0}, directory),
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        made[name] = directory
    return made


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory, certs):
    procs, ports, address = start_cluster(tmp_path_factory.mktemp("tls-logs"), "tls",
                                          certs["ca"])
    try:
        with observer(address, certs["ca"]) as client:
            client.wait_for_workers(2, timeout=60)
            yield {"address": address, "ports": ports, "client": client, "procs": procs,
                   **certs}
    finally:
        procs.stop()


@pytest.fixture(scope="module")
def tcp_cluster(tmp_path_factory):
    procs, ports, address = start_cluster(tmp_path_factory.mktemp("tcp-logs"), "tcp")
    try:
        with observer(address) as client:
            client.wait_for_workers(2, timeout=60)
            yield {"address": address, "ports": ports, "client": client}
    finally:
        procs.stop()


# --- make-certs.py ----------------------------------------------------------------------------

def test_make_certs_writes_a_ca_and_keys_only_its_user_reads(certs):
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    directory = certs["ca"]
    names = {p.name for p in directory.iterdir()}
    assert names == {"ca.pem", "scheduler.pem", "scheduler-key.pem", "worker.pem",
                     "worker-key.pem", "client.pem", "client-key.pem"}  # no CA key
    for name in names:
        mode = (directory / name).stat().st_mode & 0o777
        assert mode == (0o600 if name.endswith("-key.pem") else 0o644), name
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    client = x509.load_pem_x509_certificate((directory / "client.pem").read_bytes())
    client.verify_directly_issued_by(ca)
    other = x509.load_pem_x509_certificate((certs["other-ca"] / "ca.pem").read_bytes())
    with pytest.raises(InvalidSignature):
        client.verify_directly_issued_by(other)
    again = subprocess.run([sys.executable, "deploy/local/make-certs.py", str(directory)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1
    assert re.search(r"already holds ca\.pem.*pass --force", again.stderr)


# --- plain TCP: the dashboard, an existing scheduler left running -----------------------------

def job_file(tmp_path, base, cluster=None, **sections):
    """configs/<base>.yaml with this test's data, outputs and cluster."""
    cfg = load_yaml(ROOT / "configs" / base)
    cfg["source"] = {"uri": str(tmp_path / "data" / "demo.zarr"), "array_name": "X"}
    cfg["outputs"] = {"model_store": str(tmp_path / "models"), "scores": None}
    if cluster is not None:
        cfg["cluster"] = cluster
    for section, values in sections.items():
        cfg[section] = values
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_scheduler_s_dashboard_is_logged_and_the_scheduler_left_running(
        tcp_cluster, tmp_path, caplog):
    address, ports = tcp_cluster["address"], tcp_cluster["ports"]
    shipped = load_yaml(ROOT / "configs" / "local-scheduler.yaml")["cluster"]
    assert shipped == {"address": "tcp://127.0.0.1:8786"}
    config = load_config(job_file(tmp_path, "local-scheduler.yaml", {"address": address}))
    assert config.cluster.backend == "address"
    log = logging.getLogger("test-cluster")
    with caplog.at_level(logging.INFO, logger="test-cluster"):
        with pytest.raises(RuntimeError, match="the job failed"):
            with dask_client(config.cluster, log) as client:
                assert client.submit(sum, [1, 2]).result() == 3
                raise RuntimeError("the job failed")
    link = f"http://127.0.0.1:{ports['dashboard']}/status"
    assert f"Dask dashboard: {link}" in caplog.messages
    assert f"connected to the Dask scheduler at {address} (2 workers)" in caplog.messages
    with urllib.request.urlopen(link, timeout=30) as page:  # the scheduler serves it there
        assert page.status == 200
    assert client.status == "closed"
    # the job's client is closed; the scheduler and its workers are not
    assert len(tcp_cluster["client"].scheduler_info()["workers"]) == 2

    caplog.clear()
    cluster = ClusterConfig(address=address, dashboard_url="https://dask.example.org/status")
    with caplog.at_level(logging.INFO, logger="test-cluster"):
        with dask_client(cluster, log):
            pass
    assert "Dask dashboard: https://dask.example.org/status" in caplog.messages
    assert not any("127.0.0.1:" + str(ports["dashboard"]) in m for m in caplog.messages)


def test_a_scheduler_without_workers_fails_naming_the_worker_command(tmp_path):
    ports = {"scheduler": free_port(), "dashboard": free_port()}
    procs = Processes(tmp_path)
    try:
        scheduler = procs.start("scheduler",
                                argv(readme_commands()["tcp scheduler"][0], ports))
        procs.wait_listening(ports["scheduler"], scheduler)
        address = f"tcp://127.0.0.1:{ports['scheduler']}"
        with pytest.raises(ClusterStartError, match=rf"The Dask scheduler at {address} has no "
                                                    rf"worker after 1s\. Start workers .*dask "
                                                    rf"worker {address}"):
            with dask_client(ClusterConfig(address=address, start_timeout=1)):
                pass
        assert scheduler.poll() is None  # left running
    finally:
        procs.stop()


def test_nothing_listening_is_one_clear_error():
    address = f"tcp://127.0.0.1:{free_port()}"
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with pytest.raises(ClusterConnectionError,
                           match=rf"^Could not connect to the Dask scheduler at {address} "
                                 r"\(cluster\.address\): nothing listens there \(connection "
                                 r"refused\)\. Is the scheduler running"):
            with dask_client(ClusterConfig(address=address)):
                pass


def test_a_local_cluster_is_closed_on_error():
    from distributed import Client

    cluster = ClusterConfig(n_workers=1, processes=False, memory_limit=None)
    with pytest.raises(RuntimeError, match="the job failed"):
        with dask_client(cluster) as client:
            address = client.scheduler.address
            assert client.submit(sum, [1, 2]).result() == 3
            raise RuntimeError("the job failed")
    assert client.status == "closed"
    with pytest.raises(OSError, match="Timed out trying to connect"):
        Client(address, timeout="1s")  # the scheduler is gone with its cluster


# --- TLS ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("client", "match"), [
    ("no certificate", r"the scheduler closed the connection at once, as a TLS scheduler does "
                       r"to a plain tcp:// client\. If it runs with --protocol tls, write the "
                       r"address as tls://"),
    ("another CA", r"its certificate is not signed by the CA in cluster\.tls\.ca_file \(.*"
                   r"other-ca.*/ca\.pem\)\. Give the CA that signed the cluster's certificates"),
    ("a certificate of another CA", r"the scheduler ended the TLS handshake\. It did not accept "
                                    r"the job's certificate cluster\.tls\.cert_file \(.*"
                                    r"other-ca.*/client\.pem\)"),
])
def test_a_client_without_the_cluster_s_certificate_is_refused(tls_cluster, client, match):
    address = tls_cluster["address"]
    cluster = {
        "no certificate": {"address": "tcp" + address[3:]},
        "another CA": {"address": address, "tls": tls_files(tls_cluster["other-ca"])},
        "a certificate of another CA": {"address": address, "tls": {
            **tls_files(tls_cluster["other-ca"]), "ca_file": f"{tls_cluster['ca']}/ca.pem"}},
    }[client]
    with dask.config.set({"distributed.comm.timeouts.connect": "5s"}):
        with pytest.raises(ClusterConnectionError, match=rf"^Could not connect to the Dask "
                                                         rf"scheduler at {cluster['address']} "
                                                         rf"\(cluster\.address\): {match}"):
            with dask_client(ClusterConfig.model_validate(cluster)):
                pass
    assert len(tls_cluster["client"].scheduler_info()["workers"]) == 2


def test_the_cli_prints_the_refusal_in_one_line(tls_cluster, tmp_path, prefect_api):
    cluster = {"address": tls_cluster["address"], "tls": tls_files(tls_cluster["other-ca"])}
    config = job_file(tmp_path, "local-scheduler-tls.yaml", cluster)
    env = {**os.environ, "PREFECT_API_URL": prefect_api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"}
    done = subprocess.run([str(BIN / "daskgmm"), "run", str(config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert re.search(rf"^daskgmm run: error: ClusterConnectionError: Could not connect to the "
                     rf"Dask scheduler at {tls_cluster['address']} \(cluster\.address\): its "
                     rf"certificate is not signed by the CA", done.stderr, re.M), done.stderr


def demo_job(tmp_path, tls_cluster):
    """The TLS recipe's job on 60,000 rows in 10 chunks, one candidate, 10 iterations."""
    write_mixture_zarr(str(tmp_path / "data" / "demo.zarr"), 60_000, 4, 3, chunk_rows=6_000,
                       seed=0, anomaly_fraction=0.01)
    return job_file(
        tmp_path, "local-scheduler-tls.yaml",
        {"backend": "address", "address": tls_cluster["address"],
         "tls": tls_files(tls_cluster["ca"])},
        model={"n_components": [3], "covariance_types": ["full"], "seed": 0, "tol": 1e-12,
               "max_iter": 10},
        anomaly={"contamination": 0.01}, nightly={"checkpoint_every": 100})


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_nightly_over_tls_survives_a_killed_worker(tls_cluster, tmp_path, prefect_api):
    from daskgmm_pipelines.flows import nightly

    client = tls_cluster["client"]
    plain = demo_job(tmp_path / "plain", tls_cluster)
    first = nightly(config_path=str(plain), run_id="plain")
    assert first["n_rows"] == 60_000 and first["n_components"] == 3
    assert first["n_iter"] == 10
    store = daskgmm.ModelStore(tmp_path / "plain" / "models")
    assert store.current()["version"] == first["model_version"]
    scores = zarr.open_group(first["scores_url"], mode="r")
    assert scores["log_density"].shape == (60_000,)
    assert 0 < int(scores["is_anomaly"][:].sum()) <= 700
    assert Path(first["report_url"]).exists()

    victim = sorted(client.scheduler_info()["workers"])[0]
    pid = client.run(os.getpid, workers=[victim])[victim]
    fit_done, killed = threading.Event(), []

    def kill_during_a_pass():
        while not fit_done.is_set():
            busy = client.processing(workers=[victim]).get(victim)
            if busy:  # the worker is computing chunks of a pass: kill it now
                os.kill(pid, signal.SIGKILL)
                killed.append(busy)
                return

    def start_the_killer(event):  # once the third EM pass is done
        if event.phase == "em" and event.n_iter == 3 and not killed:
            threading.Thread(target=kill_during_a_pass, daemon=True).start()

    try:
        second = nightly(config_path=str(demo_job(tmp_path / "killed", tls_cluster)),
                         run_id="killed", progress=start_the_killer)
    finally:
        fit_done.set()
    assert killed, "the worker was not killed while it computed a pass"
    assert second["n_iter"] == first["n_iter"]
    plain_model = store.load()
    survived = daskgmm.ModelStore(tmp_path / "killed" / "models").load()
    for name in ("weights_", "means_", "covariances_", "threshold_"):
        assert_allclose(getattr(survived, name), getattr(plain_model, name), rtol=1e-9)
    assert_allclose(survived.lower_bounds_, plain_model.lower_bounds_, rtol=1e-9)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it, for the next tests


# --- the other backends: their errors, without a queue or a Kubernetes cluster ---------------

_BLOCKED = """
import sys
from pathlib import Path

from daskgmm_pipelines.config import ConfigError, load_config

job = sys.argv[1]
loaded = load_config(job)  # the library is installed here
sys.modules[sys.argv[2]] = None  # now it is not: importing it fails, as when it is missing
try:
    load_config(job)
except ConfigError as exc:
    print("load:", exc)
from daskgmm_pipelines.cluster import dask_client

try:
    with dask_client(loaded.cluster):
        pass
except ImportError as exc:
    print("client:", type(exc).__name__, exc)
"""


@pytest.mark.parametrize(("backend", "module", "extra", "distribution"), [
    ("slurm", "dask_jobqueue", "slurm", "dask-jobqueue"),
    ("kubernetes", "dask_kubernetes", "kubernetes", "dask-kubernetes"),
])
def test_a_missing_library_names_the_extra(tmp_path, backend, module, extra, distribution):
    path = tmp_path / "job.yaml"
    path.write_text(f"name: t\nsource:\n  uri: x.zarr\noutputs:\n  model_store: m\n"
                    f"cluster:\n  backend: {backend}\n")
    done = subprocess.run([sys.executable, "-c", _BLOCKED, str(path), module], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    load, problem, client = done.stdout.strip().splitlines()
    assert load == f"load: {path}: invalid job configuration (1 problem):"
    assert problem == (f"{path}: cluster.backend (line 7): backend {backend} needs "
                       f"{distribution}, which is not installed in this environment; install "
                       f"it with pip install 'daskgmm[{extra}]'")
    assert client.startswith(f"client: ImportError cluster.backend {backend} needs "
                             f"{distribution}, which cannot be imported here")
    assert client.endswith(f"install it with pip install 'daskgmm[{extra}]'")


@pytest.mark.parametrize(("backend", "command"), [("slurm", "sbatch"), ("pbs", "qsub")])
def test_a_batch_backend_off_a_submit_node_says_so(backend, command, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no submit command on it
    cluster = ClusterConfig(backend=backend, jobqueue={"adapt": {"maximum": 2}})
    with pytest.raises(ClusterStartError, match=rf"cluster\.backend {backend} submits its "
                                                rf"workers with {command}, which is not on "
                                                rf"this machine's PATH"):
        with dask_client(cluster):
            pass


def test_kubernetes_without_a_reachable_cluster_is_one_clear_error(tmp_path):
    code = ("from daskgmm_pipelines.config import ClusterConfig\n"
            "from daskgmm_pipelines.cluster import dask_client\n"
            "for existing in (False, True):\n"
            "    cluster = ClusterConfig(backend='kubernetes', kubernetes={'existing': "
            "existing})\n"
            "    try:\n"
            "        with dask_client(cluster):\n"
            "            pass\n"
            "    except Exception as exc:\n"
            "        print(type(exc).__name__, exc)\n")
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "absent"), "HOME": str(tmp_path)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr  # not even at exit
    created, existing = done.stdout.strip().splitlines()
    assert created.startswith("ClusterStartError Could not create DaskCluster 'daskgmm' in "
                              "the current context's namespace: ")
    assert "kubectl config current-context" in created
    assert "kubectl delete daskcluster daskgmm" in created
    assert existing.startswith("ClusterStartError Could not connect to DaskCluster 'daskgmm'")
    assert "kubectl get daskcluster daskgmm" in existing
