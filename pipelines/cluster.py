"""The Dask cluster a job runs on, by the ``backend`` of its ``cluster`` config.

    with dask_client(config.cluster, log) as client:
        ...  # the job's passes run on client's cluster

- ``local``: a LocalCluster in the job's process;
- ``address``: an existing scheduler (``tcp://`` or ``tls://`` with the job's certificate);
- ``slurm`` / ``pbs``: dask-jobqueue submits the workers as batch jobs, the scheduler runs
  in the job's process;
- ``kubernetes``: a DaskCluster of the dask-kubernetes operator, created for the job or an
  existing one.

The library of a backend is imported only when a job uses that backend. A cluster the job
started (local, jobqueue, a created DaskCluster) is closed when the block ends, also on an
error; an existing scheduler or DaskCluster is left running. Connecting and starting fail
with one error naming the address (or the jobs, or the DaskCluster) and the likely fix:
:class:`ClusterConnectionError` (a ``ConnectionError``) or :class:`ClusterStartError` (a
``TimeoutError``). The dashboard link logged is the scheduler's own (``dashboard_url``
replaces it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import ssl
import subprocess
import sys

logger = logging.getLogger(__name__)

__all__ = ["ClusterConnectionError", "ClusterStartError", "dask_client"]

# seconds the job waits for its first worker, by backend (cluster.start_timeout overrides)
START_TIMEOUT = {"address": 120.0, "slurm": 1800.0, "pbs": 1800.0, "kubernetes": 600.0}
class ClusterConnectionError(ConnectionError):
    """The job could not connect to its Dask scheduler (down, wrong address, TLS refused);
    the message names the address, the cause and the likely fix."""


class ClusterStartError(TimeoutError):
    """The job's cluster did not start, or no worker joined it in time; the message names
    the jobs (and their logs) or the DaskCluster, and the likely fix."""


@contextlib.contextmanager
def dask_client(cluster, log=None):
    """A ``distributed.Client`` of the cluster described by ``cluster`` (a
    :class:`~daskgmm_pipelines.config.ClusterConfig`), closed on exit with the cluster
    the job started. The dashboard link is logged."""
    log = log or logger
    # the scheduler's and workers' own INFO lines would drown the job's
    logging.getLogger("distributed").setLevel(logging.WARNING)
    start = {"local": _local, "address": _address, "slurm": _jobqueue, "pbs": _jobqueue,
             "kubernetes": _kubernetes}[cluster.backend]
    with contextlib.ExitStack() as stack:  # closes what was started, last first
        client, dashboard = start(cluster, log, stack)
        if cluster.dashboard_url:
            log.info("Dask dashboard: %s", cluster.dashboard_url)
        elif dashboard:
            log.info("Dask dashboard: %s", dashboard)
        else:
            log.info("Dask dashboard unavailable: the scheduler serves none (it needs "
                     "bokeh>=3.1; or set cluster.dashboard_url)")
        yield client


# --- local ----------------------------------------------------------------------------------

def _local(cluster, log, stack):
    from distributed import Client, LocalCluster

    # in-process workers share the job's own process: a per-worker limit would be
    # checked against the whole process (Prefect, the client, every worker) and
    # pause them all for memory that is not theirs, so it is not applied
    limit = (cluster.memory_limit or 0) if cluster.processes else 0
    local = LocalCluster(
        n_workers=cluster.n_workers, threads_per_worker=cluster.threads_per_worker,
        memory_limit=limit, processes=cluster.processes,
        dashboard_address=":0" if _has_bokeh() else None,
    )
    stack.callback(local.close)
    client = Client(local)
    stack.callback(client.close)
    log.info("started a local Dask cluster: %d worker %s x %d threads, memory limit %s",
             cluster.n_workers, "processes" if cluster.processes else "threads (in-process)",
             cluster.threads_per_worker,
             limit or ("none (in-process workers)" if cluster.memory_limit else "none"))
    return client, client.dashboard_link if _has_bokeh() else None


def _has_bokeh():
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


# --- an existing scheduler ------------------------------------------------------------------

def _address(cluster, log, stack):
    from distributed import Client

    security = None
    if cluster.tls is not None:
        from distributed.security import Security

        security = Security(tls_ca_file=cluster.tls.ca_file,
                            tls_client_cert=cluster.tls.cert_file,
                            tls_client_key=cluster.tls.key_file, require_encryption=True)
    try:  # the timeout is dask's distributed.comm.timeouts.connect (30s)
        client = Client(cluster.address, security=security)
    except (OSError, TimeoutError) as exc:
        raise ClusterConnectionError(_connect_problem(cluster, exc)) from exc
    except ValueError as exc:  # tornado, starting TLS on a stream the server wrote to
        if cluster.tls is None or "SSL" not in str(exc):
            raise
        raise ClusterConnectionError(_connect_problem(cluster, exc)) from exc
    stack.callback(client.close)
    timeout = cluster.start_timeout or START_TIMEOUT["address"]
    _wait_for_a_worker(client, timeout, lambda: (
        f"The Dask scheduler at {cluster.address} has no worker after {timeout:.0f}s. Start "
        f"workers that connect to it (dask worker {cluster.address}"
        + (" --tls-ca-file ... --tls-cert ... --tls-key ..." if cluster.tls else "")
        + ", see deploy/local/README.md), or raise cluster.start_timeout."))
    log.info("connected to the Dask scheduler at %s (%d workers)", cluster.address,
             len(client.scheduler_info().get("workers", {})))
    return client, _scheduler_dashboard(client, cluster.address)


def _scheduler_dashboard(client, address):
    """The dashboard the scheduler serves: its port as the scheduler reports it, on the
    host the job reached the scheduler at (None when it serves no dashboard)."""
    from distributed.comm.addressing import get_address_host, unparse_host_port

    port = client.scheduler_info().get("services", {}).get("dashboard")
    if port is None:
        return None
    return f"http://{unparse_host_port(get_address_host(address), port)}/status"


def _causes(exc):
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _connect_problem(cluster, exc) -> str:
    """What went wrong connecting to ``cluster.address``, and the likely fix."""
    import socket

    from distributed.comm.addressing import get_address_host

    address, tls = cluster.address, cluster.tls
    causes = _causes(exc)

    def has(kind):
        # distributed sometimes keeps only the text of the error it wrapped
        # (FatalCommClosedError: "... SSLError: [SSL: TLSV1_ALERT_UNKNOWN_CA] ...")
        return any(isinstance(cause, kind) or f"{kind.__name__}:" in str(cause)
                   for cause in causes)

    lead = f"Could not connect to the Dask scheduler at {address} (cluster.address)"
    if has(ssl.SSLCertVerificationError):
        return (f"{lead}: its certificate is not signed by the CA in cluster.tls.ca_file "
                f"({tls.ca_file}). Give the CA that signed the cluster's certificates (the "
                f"scheduler's --tls-ca-file).")
    if has(socket.gaierror):
        return (f"{lead}: the host name {get_address_host(address)!r} does not resolve. "
                f"Check the address.")
    if has(ConnectionRefusedError):
        return (f"{lead}: nothing listens there (connection refused). Is the scheduler "
                f"running, on this host and port? Start it with dask scheduler (see "
                f"deploy/local/README.md) or fix cluster.address.")
    if tls is not None and isinstance(exc, ValueError):
        return (f"{lead}: the scheduler did not answer the TLS handshake; it seems to run "
                f"plain TCP. Start it with --protocol tls and its certificate (see "
                f"deploy/local/README.md), or write the address as tcp://... without "
                f"cluster.tls.")
    if tls is not None and (has(ssl.SSLError) or has(ConnectionResetError)):
        return (f"{lead}: the scheduler ended the TLS handshake. It did not accept the job's "
                f"certificate cluster.tls.cert_file ({tls.cert_file}), or it does not speak "
                f"TLS on this port. Give a certificate signed by the CA the scheduler trusts "
                f"(its --tls-ca-file), and check the scheduler runs with --protocol tls.")
    if tls is None and (has(ConnectionResetError) or has(ssl.SSLError)):
        return (f"{lead}: the scheduler closed the connection at once, as a TLS scheduler "
                f"does to a plain tcp:// client. If it runs with --protocol tls, write the "
                f"address as tls://... and give the job's certificate in cluster.tls.")
    if "Timed out" in str(exc) or has(TimeoutError):
        # distributed keeps only its last attempt's error, often a timeout of its own:
        # ask the network directly
        return f"{lead}: {_probe(address)}"
    return f"{lead}: {type(exc).__name__}: {exc}"


def _probe(address) -> str:
    """Why a connection to ``address`` timed out, from one plain TCP connection."""
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port

    host, port = parse_host_port(parse_address(address)[1])
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except socket.gaierror:
        return f"the host name {host!r} does not resolve. Check the address."
    except ConnectionRefusedError:
        return ("nothing listens there (connection refused). Is the scheduler running, on "
                "this host and port? Start it with dask scheduler (see "
                "deploy/local/README.md) or fix cluster.address.")
    except OSError as exc:
        return (f"no answer ({exc.strerror or type(exc).__name__}). Is the host reachable from "
                f"here (firewall, network), and is the port the scheduler's?")
    return ("the port accepts connections, but no Dask scheduler answered before the connect "
            "timeout (distributed.comm.timeouts.connect). Is it the scheduler's port (not "
            "the dashboard's), and is the scheduler overloaded?")


def _wait_for_a_worker(client, timeout, problem):
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise ClusterStartError(problem()) from None


# --- batch jobs (dask-jobqueue) ---------------------------------------------------------------

def _import(cluster, name):
    module, distribution, extra = cluster.library
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except ImportError as exc:
        raise ImportError(f"cluster.backend {cluster.backend} needs {distribution}, which "
                          f"cannot be imported here ({exc}); install it with pip install "
                          f"'daskgmm[{extra}]'") from exc


_SUBMIT = {"slurm": ("SLURMCluster", "sbatch", "squeue"), "pbs": ("PBSCluster", "qsub", "qstat")}


def _jobqueue(cluster, log, stack):
    from distributed import Client

    class_name, submit, status = _SUBMIT[cluster.backend]
    cls = _import(cluster, class_name)
    # importing dask_jobqueue sets distributed's loggers back to INFO
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if shutil.which(submit) is None:
        raise ClusterStartError(
            f"cluster.backend {cluster.backend} submits its workers with {submit}, which is not "
            f"on this machine's PATH. Run the job on a node that submits {cluster.backend} "
            f"jobs, or load the scheduler's environment (module load ...) first.")
    jq = cluster.jobqueue
    options = {key: getattr(jq, key) for key in
               ("queue", "account", "interface", "local_directory", "log_directory")
               if getattr(jq, key) is not None}
    jobs = cls(cores=jq.cores, processes=jq.processes, memory=jq.memory,
               walltime=jq.walltime, python=jq.python or sys.executable,
               job_extra_directives=list(jq.job_extra_directives),
               job_script_prologue=list(jq.job_script_prologue),
               # a free port: 8787 may be another cluster's on a shared submit node
               scheduler_options={"dashboard_address": ":0"}, **options)
    stack.callback(jobs.close)
    client = Client(jobs, set_as_default=True)
    stack.callback(client.close)
    if jq.adapt is not None:
        # at least one job until a worker has joined: the job checks the queue runs its
        # workers before it starts, then the bounds as configured
        jobs.adapt(minimum_jobs=max(1, jq.adapt.minimum), maximum_jobs=jq.adapt.maximum)
        scale = f"adaptive, {jq.adapt.minimum} to {jq.adapt.maximum} jobs"
    else:
        jobs.scale(jobs=jq.jobs)
        scale = f"{jq.jobs} job{'s' if jq.jobs > 1 else ''}"
    timeout = cluster.start_timeout or START_TIMEOUT[cluster.backend]
    log.info("submitting Dask workers as %s jobs (%s; %d cores, %d worker processes, %s "
             "each; walltime %s); waiting up to %.0fs for the first", cluster.backend, scale,
             jq.cores, jq.processes, jq.memory, jq.walltime, timeout)
    _wait_for_a_worker(client, timeout, lambda: _jobs_not_started(cluster, jobs, timeout,
                                                                   submit, status))
    if jq.adapt is not None and jq.adapt.minimum == 0:
        jobs.adapt(minimum_jobs=0, maximum_jobs=jq.adapt.maximum)
    log.info("Dask scheduler %s: %d workers joined", jobs.scheduler_address,
             len(client.scheduler_info().get("workers", {})))
    return client, jobs.dashboard_link


def _jobs_not_started(cluster, jobs, timeout, submit, status) -> str:
    ids = sorted(str(job.job_id) for job in jobs.workers.values()
                 if getattr(job, "job_id", None))
    jq = cluster.jobqueue
    if not ids:
        return (f"No {cluster.backend} job of the job's Dask workers was submitted in "
                f"{timeout:.0f}s: {submit} failed (its error is in the log above). Check "
                f"cluster.jobqueue (queue, account, memory, walltime) against the queue's "
                f"limits.")
    if jq.log_directory and cluster.backend == "slurm":
        logs = f"{jq.log_directory}/dask-worker-<job id>.out and .err"
    elif jq.log_directory:
        logs = f"{jq.log_directory}/, one output and one error file per job id"
    elif cluster.backend == "slurm":
        logs = f"slurm-<job id>.out in {os.getcwd()} (set cluster.jobqueue.log_directory)"
    else:
        logs = (f"dask-worker.o<job id> and .e<job id> in {os.getcwd()} (set "
                f"cluster.jobqueue.log_directory)")
    return (f"No Dask worker joined the job's scheduler {jobs.scheduler_address} within "
            f"{timeout:.0f}s (cluster.start_timeout). The worker jobs {', '.join(ids)} are "
            f"queued or failed to start: {_queue_state(status, ids)}. Their logs: {logs}. "
            f"A job that ran but never connected usually cannot reach "
            f"{jobs.scheduler_address} from its node (set cluster.jobqueue.interface).")


def _queue_state(status, ids) -> str:
    command = [status, *(["-h", "-o", "%i %T %R", "-j", ",".join(ids)]
                         if status == "squeue" else ids)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(command)} failed ({exc})"
    text = " ".join((done.stdout or done.stderr).split())
    return f"{' '.join(command)} says {text!r}" if text else "the queue no longer lists them"


# --- Kubernetes (dask-kubernetes operator) ----------------------------------------------------

def _kubernetes(cluster, log, stack):
    from distributed import Client

    KubeCluster = _import(cluster, "KubeCluster")  # noqa: N806 - a class
    from dask_kubernetes.operator.kubecluster.kubecluster import CreateMode

    kube_config = cluster.kubernetes
    where = {"namespace": kube_config.namespace} if kube_config.namespace else {}
    adapt = kube_config.adapt
    try:
        if kube_config.existing:
            kube = KubeCluster.from_name(kube_config.name, **where)
            what = f"the existing DaskCluster {kube_config.name!r}"
        else:
            env = [{"name": name, "value": value} if isinstance(value, str) else
                   {"name": name, "valueFrom": {"secretKeyRef": {"name": value.secret,
                                                                 "key": value.key}}}
                   for name, value in kube_config.env.items()]
            n_workers = max(1, adapt.minimum) if adapt is not None else kube_config.n_workers
            kube = KubeCluster(name=kube_config.name, image=kube_config.image,
                               n_workers=n_workers, resources=dict(kube_config.resources),
                               env=env, create_mode=CreateMode.CREATE_ONLY,
                               # not before it exists: a KubeCluster that failed to start
                               # would try to delete it at exit, with a traceback
                               shutdown_on_close=False, **where)
            kube.shutdown_on_close = True  # created by the job: deleted when it ends
            what = f"a DaskCluster {kube_config.name!r} (image {kube_config.image})"
    except Exception as exc:  # noqa: BLE001 - the API's, the operator's or the config's
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        namespace = kube_config.namespace or "the current context's namespace"
        raise ClusterStartError(
            f"Could not {'connect to' if kube_config.existing else 'create'} DaskCluster "
            f"{kube_config.name!r} in {namespace}: {type(exc).__name__}: {first}. Check that "
            f"kubectl reaches the cluster (kubectl config current-context), that the "
            f"dask-kubernetes operator is installed (kubectl get crd daskclusters.kubernetes."
            f"dask.org)" + (f", and that the DaskCluster exists (kubectl get daskcluster "
                            f"{kube_config.name})" if kube_config.existing else
                            f"; a DaskCluster {kube_config.name!r} left by an earlier run is "
                            f"not reused: delete it (kubectl delete daskcluster "
                            f"{kube_config.name}) or set existing: true") + "."
        ) from exc
    stack.callback(kube.close)  # deletes a DaskCluster the job created, not an existing one
    client = Client(kube, set_as_default=True)
    stack.callback(client.close)
    if adapt is not None:
        kube.adapt(minimum=max(1, adapt.minimum), maximum=adapt.maximum)
    timeout = cluster.start_timeout or START_TIMEOUT["kubernetes"]
    _wait_for_a_worker(client, timeout, lambda: (
        f"No Dask worker of {what} joined within {timeout:.0f}s (cluster.start_timeout). "
        f"See the worker pods: kubectl get pods -l dask.org/cluster-name={kube_config.name} "
        f"and kubectl describe / logs on them (image pull, resources, pending scheduling)."))
    if adapt is not None and adapt.minimum == 0:
        kube.adapt(minimum=0, maximum=adapt.maximum)
    log.info("using %s: %d workers", what, len(client.scheduler_info().get("workers", {})))
    return client, kube.dashboard_link
