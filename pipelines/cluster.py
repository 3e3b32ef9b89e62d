"""The Dask cluster a job runs on: an external scheduler or an embedded LocalCluster."""

from __future__ import annotations

import contextlib
import logging

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def dask_client(cluster, log=None):
    """A ``distributed.Client`` for the job's ``cluster`` config, closed on exit.

    ``cluster.address`` set: connect to that scheduler. Otherwise start a LocalCluster
    with ``n_workers`` worker processes (or threads) of ``threads_per_worker`` threads
    and ``memory_limit`` each. The dashboard address is logged.
    """
    from distributed import Client, LocalCluster

    log = log or logger
    # the scheduler's and workers' own INFO lines would drown the job's
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if cluster.address:
        client = Client(cluster.address, timeout="30s")
        local = None
        log.info("connected to the Dask scheduler at %s (%d workers)", cluster.address,
                 len(client.scheduler_info().get("workers", {})))
    else:
        # in-process workers share the job's own process: a per-worker limit would be
        # checked against the whole process (Prefect, the client, every worker) and
        # pause them all for memory that is not theirs, so it is not applied
        limit = (cluster.memory_limit or 0) if cluster.processes else 0
        local = LocalCluster(
            n_workers=cluster.n_workers, threads_per_worker=cluster.threads_per_worker,
            memory_limit=limit, processes=cluster.processes,
            dashboard_address=":0" if _has_bokeh() else None,
        )
        client = Client(local)
        log.info("started a local Dask cluster: %d worker %s x %d threads, memory limit %s",
                 cluster.n_workers, "processes" if cluster.processes else "threads (in-process)",
                 cluster.threads_per_worker,
                 limit or ("none (in-process workers)" if cluster.memory_limit else "none"))
    try:
        if _has_bokeh():
            log.info("Dask dashboard: %s", client.dashboard_link)
        else:
            log.info("Dask dashboard unavailable: install bokeh>=3.1 to get one")
        yield client
    finally:
        client.close()
        if local is not None:
            local.close()


def _has_bokeh():
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True
