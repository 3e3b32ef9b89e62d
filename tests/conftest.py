import numpy as np
import pytest

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


@pytest.fixture(scope="session")
def blobs():
    return make_blobs()


@pytest.fixture(scope="module")
def cluster_client():
    """A real distributed cluster: 2 worker processes, 1 thread each."""
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        memory_limit="2GiB",
    ) as cluster, Client(cluster) as client:
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
