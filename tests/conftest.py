import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


def make_blobs(n_samples=900, n_features=3, n_components=3, seed=0, spread=4.0, overlap=1.0):
    """Rows drawn from ``n_components`` Gaussians with random correlated covariances."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, spread, size=(n_components, n_features))
    labels = rng.integers(0, n_components, n_samples)
    X = np.empty((n_samples, n_features))
    for k in range(n_components):
        A = rng.normal(size=(n_features, n_features)) * 0.4 + np.eye(n_features) * overlap
        rows = labels == k
        X[rows] = centers[k] + rng.normal(size=(rows.sum(), n_features)) @ A
    return X


def random_params(covariance_type, n_components=3, n_features=4, seed=0):
    """Random engine parameters of a mixture (no shift), with their covariances."""
    from daskgmm import covariance
    from daskgmm.kernels import Params

    rng = np.random.default_rng(seed)
    if covariance_type == "full":
        A = rng.normal(size=(n_components, n_features, n_features))
        cov = A @ A.transpose(0, 2, 1) + np.eye(n_features)
    elif covariance_type == "tied":
        A = rng.normal(size=(n_features, n_features))
        cov = A @ A.T + np.eye(n_features)
    elif covariance_type == "diag":
        cov = rng.uniform(0.5, 2.0, size=(n_components, n_features))
    else:
        cov = rng.uniform(0.5, 2.0, size=n_components)
    weights = rng.dirichlet(np.ones(n_components))
    means = rng.normal(0, 3, size=(n_components, n_features))
    prec = covariance.get(covariance_type).precisions_cholesky(cov)
    return Params(covariance_type, weights, means, prec, cov, np.zeros(n_features))


def dense_covariances(covariance_type, cov, n_components, n_features):
    """Covariances of any type as (n_components, n_features, n_features) matrices."""
    return {
        "full": lambda: cov,
        "tied": lambda: np.repeat(cov[None], n_components, axis=0),
        "diag": lambda: np.stack([np.diag(c) for c in cov]),
        "spherical": lambda: np.stack([np.eye(n_features) * c for c in cov]),
    }[covariance_type]()


def full_covariances(params, n_features):
    """The covariances of ``params`` as (n_components, n_features, n_features) matrices."""
    return dense_covariances(params.covariance_type, params.covariances,
                             params.n_components, n_features)


def refused_when_edited(path, edit, message):
    """The model file at ``path``, rewritten by ``edit`` (see :func:`rewrite_zip`), is
    refused by ``daskgmm.load`` with a ``ModelFileError`` matching ``message``."""
    import daskgmm

    rewrite_zip(path, edit)
    with pytest.raises(daskgmm.model_file.ModelFileError, match=message):
        daskgmm.load(path)


@pytest.fixture(scope="session")
def blobs():
    return make_blobs()


@pytest.fixture(scope="session")
def cluster():
    """A real distributed cluster for the whole session: 2 worker processes, 1 thread
    each. Tests reach it through ``cluster_client``."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        memory_limit="2GiB",
    ) as cluster:
        yield cluster


@pytest.fixture
def cluster_client(cluster):
    """A client of the session's cluster, current for this test only: other tests run
    on dask's local scheduler."""
    from distributed import Client

    with Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


@pytest.fixture(scope="session")
def s3():
    """A real S3 endpoint (moto's server) on 127.0.0.1, a bucket 'data', and the
    storage_options that reach it."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://{host}:{port}", "region_name": "eu-west-1"},
    }
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("data")
    yield fs, options
    server.stop()


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect API (SQLite) for the flow runs of the tests that ask for it;
    started once (it takes about 12 s on 2 cores). Yields its URL."""
    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield prefect.settings.PREFECT_API_URL.value()


def write_job_config(tmp_path, **changes):
    """A job file for the demo data of :func:`write_demo`: a small grid, an embedded
    cluster of in-process workers (process isolation is not what flow tests check)."""
    import yaml

    cfg = {
        "name": "t",
        "source": {"uri": str(tmp_path / "data" / "demo.zarr"), "array_name": "X"},
        "model": {"n_components": [2, 3, 4], "covariance_types": ["full", "diag"],
                  "seed": 0, "tol": 1e-4},
        "anomaly": {"contamination": 0.01},
        "outputs": {"model_store": str(tmp_path / "models")},
        "cluster": {"n_workers": 2, "threads_per_worker": 1, "memory_limit": None,
                    "processes": False},
        "nightly": {"checkpoint_every": 1},
    }
    for section, values in changes.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def write_demo(tmp_path, seed=0, rows=60_000, overwrite=False):
    from daskgmm_pipelines.demo_data import write_demo_data

    return write_demo_data(tmp_path / "data", n_samples=rows, n_features=4, n_components=3,
                           seed=seed, anomaly_fraction=0.01, overwrite=overwrite)


class SmallDisk:
    """A small tmpfs mounted at ``path``: :meth:`fill` takes all its free space (a file
    ``.filler``), :meth:`free` gives it back."""

    FILLER = ".filler"

    def __init__(self, path):
        self.path = path

    def fill(self):
        import errno

        with open(self.path / self.FILLER, "ab", buffering=0) as f:
            for block in (1 << 16, 1 << 12, 1 << 9, 1):
                try:
                    while True:
                        f.write(b"\0" * block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
        return self

    def free(self):
        (self.path / self.FILLER).unlink(missing_ok=True)
        return self


@contextlib.contextmanager
def small_disk_at(path, size="1m"):
    """Mount a tmpfs of ``size`` at ``path`` (created) for the block, then unmount it;
    skips the test when this machine does not let the tests mount one."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"a small tmpfs cannot be mounted at {path} (needs root or "
                    f"CAP_SYS_ADMIN): {done.stderr.strip() or done.returncode}")
    try:
        yield SmallDisk(path)
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs under ``tmp_path`` (a :class:`SmallDisk`), unmounted after the test;
    the test is skipped when mounting is not permitted."""
    with small_disk_at(tmp_path / "small-disk") as disk:
        yield disk


def snapshot(root, exclude=(SmallDisk.FILLER,)):
    """Every file under ``root`` with its bytes, and every directory (None), by relative
    path: what a reader could see there. While it finds a temporary file of a write that
    was still ending when an error was raised (Zarr's ``*.partial``, daskgmm's
    ``*.tmp-<hex>``, removed by the thread that wrote them) or a file vanishing as it is
    read, it reads again, for up to a second; a temporary file that stays is counted."""
    import re
    import time
    from pathlib import Path

    temporary = re.compile(r"\.partial$|\.tmp-[0-9a-f]{8}$")

    def read():
        out, settled = {}, True
        for path in sorted(Path(root).rglob("*")):
            relative = path.relative_to(root).as_posix()
            if relative in exclude:
                continue
            settled = settled and not temporary.search(relative)
            try:
                out[relative] = None if path.is_dir() else path.read_bytes()
            except FileNotFoundError:
                settled = False
        return out, settled

    for _ in range(50):
        out, settled = read()
        if settled:
            return out
        time.sleep(0.02)
    return out


def rewrite_zip(path, edit):
    """Rewrite the zip at ``path`` (a model file, a checkpoint) with ``edit(members)``
    applied to its ``{name: bytes}`` members."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    edit(members)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def edit_json(member, fn):
    """A :func:`rewrite_zip` edit applying ``fn`` to the JSON member ``member``."""
    import json

    def edit(members):
        data = json.loads(members[member])
        fn(data)
        members[member] = json.dumps(data).encode()
    return edit


class Crash(Exception):
    """Raised by a :func:`crash_at` callback: a fit stopped on purpose."""


def crash_at(n):
    """A fit callback that raises :class:`Crash` at EM iteration ``n`` (an interrupted
    fit, to resume from its checkpoint)."""
    def callback(event):
        if event.n_iter == n:
            raise Crash(f"stopped at iteration {n}")
    return callback


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """Long-running commands (schedulers, workers, servers), each in its own session and
    process group with its output in ``<logs>/<name>.log``; :meth:`stop` stops them all,
    the last started first (SIGTERM to the group, SIGKILL after ``grace`` seconds, then
    SIGKILL to what the group left behind), also after a failure."""

    def __init__(self, logs: Path, grace: float = 30.0):
        self.logs, self.grace, self.started = Path(logs), grace, []

    def start(self, name, argv, *, env=None, cwd=ROOT):
        out = (self.logs / f"{name}.log").open("wb")  # closed by stop()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.started.append((name, proc, out))
        return proc

    def log(self, name, tail: int | None = None) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def all_logs(self, tail=3000) -> str:
        return "\n".join(f"--- {name}:\n{self.log(name, tail)}" for name, _, _ in self.started)

    def wait_listening(self, port, proc, timeout=60):
        """Until something listens on loopback ``port``; fails if ``proc`` exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"{proc.args[0]} exited with {proc.returncode}:\n{self.all_logs()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        pytest.fail(f"nothing listened on {port} in {timeout}s:\n{self.all_logs()}")

    def stop(self):
        gone = contextlib.suppress(ProcessLookupError, PermissionError)
        for _, proc, _ in reversed(self.started):
            with gone:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc, out in reversed(self.started):
            try:
                proc.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                with gone:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            with gone:  # children left behind in the group (a flow run, uvicorn)
                os.killpg(proc.pid, signal.SIGKILL)
            out.close()
