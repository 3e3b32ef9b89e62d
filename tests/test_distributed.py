"""Fits on a real distributed cluster (LocalCluster with worker processes)."""

import os
import threading

import dask
import dask.array as da
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import ConvergenceWarning

from daskgmm import GaussianMixture

from .conftest import make_blobs


@pytest.fixture(scope="module")
def data():
    return make_blobs(80_000, 6, 4, seed=5)


def test_cluster_fit_equals_local_fit(cluster_client, data):
    X = da.from_array(data, chunks=(8_000, 6))
    kw = dict(n_components=4, random_state=0, tol=1e-6, n_init=2, chunk_rows=None)
    on_cluster = GaussianMixture(**kw).fit(X)
    with dask.config.set(scheduler="threads"):
        local = GaussianMixture(**kw).fit(X)
    assert on_cluster.n_iter_ == local.n_iter_
    assert_allclose(on_cluster.means_, local.means_, rtol=1e-9)
    assert_allclose(on_cluster.covariances_, local.covariances_, rtol=1e-9)
    labels = on_cluster.predict(X)
    assert isinstance(labels, da.Array)
    assert_array_equal(labels.compute(), local.predict(data))


def test_worker_killed_mid_fit_gives_same_result(cluster_client, data):
    X = da.from_array(data, chunks=(8_000, 6))
    kw = dict(n_components=4, random_state=0, tol=0.0, max_iter=12, cache=True,
              chunk_rows=None)  # 10 persisted chunks spread over both workers
    with pytest.warns(ConvergenceWarning):
        reference = GaussianMixture(**kw).fit(X)

    victim = list(cluster_client.scheduler_info()["workers"])[0]
    pid = cluster_client.run(os.getpid)[victim]
    fit_done, killed = threading.Event(), []

    def kill_during_the_next_pass():
        while not fit_done.is_set():
            busy = cluster_client.processing(workers=[victim]).get(victim)
            if busy:  # the worker is computing chunks of a pass: kill it now
                os.kill(pid, 9)
                killed.append(busy)
                return

    def start_the_killer(event):  # once the third EM pass is done
        if event.phase == "em" and event.n_iter == 3:
            threading.Thread(target=kill_during_the_next_pass, daemon=True).start()

    with pytest.warns(ConvergenceWarning):
        survived = GaussianMixture(**kw).fit(X, callback=start_the_killer)
    fit_done.set()
    assert killed, "the worker was not killed while it computed a pass"
    assert survived.n_iter_ == reference.n_iter_ == 12
    for name in ("weights_", "means_", "covariances_"):
        assert_allclose(getattr(survived, name), getattr(reference, name), rtol=1e-9)
    assert_allclose(survived.lower_bounds_, reference.lower_bounds_, rtol=1e-9)
    cluster_client.wait_for_workers(2, timeout=60)
