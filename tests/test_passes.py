"""Passes over the data: the reduction tree, located errors, row-wise maps."""

import dask
import dask.array as da
import numpy as np
import pytest
from numpy.testing import assert_allclose

from daskgmm import kernels, passes
from daskgmm.sources import as_dataset

from .conftest import random_params


def test_tree_depth_is_logarithmic():
    from dask.local import get_sync

    keys = [("x", i) for i in range(64)]
    graph = {k: i for i, k in enumerate(keys)}
    entries, root, depth = passes.tree_keys(keys, sum, 4, "t")
    assert depth == 3
    assert get_sync({**graph, **entries}, [root]) == (sum(range(64)),)
    assert len(entries) == 16 + 4 + 1
    _, _, depth = passes.tree_keys(keys, sum, 8, "t")
    assert depth == 2
    with pytest.raises(ValueError, match="split_every"):
        passes.tree_keys(keys, sum, 1, "t")


def _first_row(block, *args):
    return block[:1]


def test_a_pass_graph_is_built_in_linear_work():
    """The graph of a pass over C chunks has C chunk tasks, the tree's nodes and one copy
    of the arguments, whatever C: built without re-walking the graph per task."""
    for n in (100, 1000):
        ds = as_dataset(da.zeros((n * 10, 2), chunks=(10, 2)), chunk_rows=None)
        root = passes.pass_graph(ds, _first_row, ("big",), combine=sum)
        layers = root.__dask_graph__().layers
        ours = [layer for name, layer in layers.items() if not name.endswith("-reads")]
        assert len(ours) == 1
        tree, _, _ = passes.tree_keys(list(range(n)), sum, 8, "t")
        assert len(ours[0]) == n + len(tree) + 1  # chunk tasks, tree, the arguments once


def test_a_pass_is_one_reduction_and_equals_the_whole_chunk():
    p = random_params("full", n_features=4)
    X = np.random.default_rng(3).normal(0, 3, size=(1_000, 4))
    dataset = as_dataset(da.from_array(X, chunks=(90, 4)), chunk_rows=None)
    (merged,) = passes.data_pass(dataset, passes.em_chunk, ([p],), split_every=3)
    (whole,) = kernels.chunk_stats(X, [p])
    assert merged.n_samples == 1_000
    assert_allclose(merged.s2, whole.s2, rtol=1e-12)
    assert_allclose(merged.log_likelihood, whole.log_likelihood, rtol=1e-12)
    ((total, n),) = passes.score_pass(dataset, [p])
    assert n == 1_000 and total == pytest.approx(whole.log_likelihood, rel=1e-12)


def test_nonfinite_rows_are_located_in_passes_and_row_maps():
    p = random_params("diag", n_features=4)
    X = np.random.default_rng(3).normal(size=(300, 4))
    X[205, 3] = np.nan
    dataset = as_dataset(da.from_array(X, chunks=(100, 4)), chunk_rows=None)
    message = r"chunk 2 of dask array, rows 200 to 299, first at row 205, column 3"
    with pytest.raises(ValueError, match=message):
        passes.data_pass(dataset, passes.em_chunk, ([p],))
    out = passes.map_rows(dataset, lambda block, params: block[:, 0], p, np.float64)
    with pytest.raises(ValueError, match=message):
        out.compute()


def _held_results(i, prefix):
    """Sleeps a little, then counts the results of its own pass held by its worker."""
    import time

    from distributed import get_worker

    time.sleep(0.05)
    if i == -1:
        raise ValueError("part -1 fails")
    return i, sum(1 for key in get_worker().data if str(key).startswith(prefix))


def _parts(n, prefix, fail_at=None):
    import dask

    return [dask.delayed(_held_results, pure=False)(-1 if i == fail_at else i, prefix,
                                                    dask_key_name=f"{prefix}{i}")
            for i in range(n)]


def test_compute_each_fetches_results_as_they_finish(cluster_client):
    """Results come back in order, and a worker holds only a few of them at a time:
    ``dask.compute`` of the same parts holds them all until the last one is done (the
    same measure, to show that it tells the two apart)."""
    import dask

    out = passes.compute_each(_parts(80, "each-"))
    assert [i for i, _ in out] == list(range(80))
    # a few, however many parts: those done since the client's last fetch (a 50 ms task;
    # a busy machine's fetch may take some hundreds of milliseconds)
    assert max(held for _, held in out) <= 12
    (held_by_compute,) = dask.compute(_parts(80, "all-"))
    assert max(held for _, held in held_by_compute) >= 30
    # without a distributed client: dask's own scheduler, the same results
    with dask.config.set(scheduler="sync"):
        assert passes.compute_each([dask.delayed(abs)(-i) for i in range(5)]) == list(range(5))


def test_compute_each_raises_the_first_error_and_cancels_the_rest(cluster_client):
    import time

    with pytest.raises(ValueError, match="part -1 fails"):
        passes.compute_each(_parts(40, "fail-", fail_at=3))
    scheduler = cluster_client.cluster.scheduler
    deadline = time.monotonic() + 10
    while any(str(k).startswith("fail-") for k in scheduler.tasks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [k for k in scheduler.tasks if str(k).startswith("fail-")]


def test_a_pass_over_persisted_data_runs_a_few_tasks_per_worker_thread(cluster_client):
    """Data held in the cluster's memory: a pass is a handful of tasks per worker thread
    (each running its chunks where they are), whatever the number of chunks; its result
    equals the chunk-by-chunk pass's. Streamed data keep one task per chunk."""
    X = np.random.default_rng(0).normal(size=(12_000, 3))
    X[7_777, 1] = np.nan
    params = [random_params("full", 2, 3, seed=1)]
    from distributed import wait

    persisted = as_dataset(da.from_array(X, chunks=(200, 3)).persist(), chunk_rows=None)
    wait(persisted.array)
    streamed = as_dataset(da.from_array(X, chunks=(200, 3)), chunk_rows=None)
    keys = [row[0] for row in persisted.array.__dask_keys__()]
    groups = passes.chunk_groups(persisted.array, keys)
    threads = sum(cluster_client.nthreads().values())
    grouped = [g for g in groups if len(g) > 1]
    assert len(grouped) <= passes.GROUPS_PER_THREAD * threads < len(keys) == 60
    assert sorted(i for g in groups for i in g) == list(range(60))
    where = cluster_client.who_has(persisted.array)
    assert all(len({where[keys[i]][0] for i in g}) == 1 for g in groups)  # one worker each
    # a worker's groups hold at most its fair share (30 of 60 here); the rest go alone,
    # for the scheduler to balance
    per_worker = {}
    for g in grouped:
        per_worker[where[keys[g[0]]][0]] = per_worker.get(where[keys[g[0]]][0], 0) + len(g)
    assert max(per_worker.values()) <= 30
    assert len(groups) - len(grouped) == 60 - sum(per_worker.values())
    assert passes.chunk_groups(streamed.array, keys) is None

    built = passes.pass_graph(persisted, passes.em_chunk, (params,), split_every=8)
    assert isinstance(built, list) and len(built) == len(groups)  # the client combines
    built = passes.pass_graph(persisted, passes.em_chunk, (params,), split_every=2)
    graph = dict(built.__dask_graph__())  # more groups than split_every: a tree
    assert len([k for k in graph if isinstance(k, tuple) and "combine" not in str(k[0])
                and k[0] == built.key[0].rsplit("-combine", 1)[0]]) == len(groups)
    with pytest.raises(ValueError, match=r"chunk 38 of dask array, rows 7600 to 7799, first "
                                         r"at row 7777, column 1"):
        passes.score_pass(persisted, params)
    complete = as_dataset(da.from_array(np.nan_to_num(X), chunks=(200, 3)).persist(),
                          chunk_rows=None)
    wait(complete.array)
    grouped = passes.data_pass(complete, passes.em_chunk, (params,))[0]
    one_by_one = kernels.chunk_stats(np.nan_to_num(X), params)[0]
    assert_allclose(grouped.nk, one_by_one.nk, rtol=1e-12)
    assert_allclose(grouped.s2, one_by_one.s2, rtol=1e-12)
    assert_allclose(grouped.log_likelihood, one_by_one.log_likelihood, rtol=1e-12)
    assert grouped.n_samples == 12_000


def _zarr_source(tmp_path, X, chunks=500):
    import zarr

    path = str(tmp_path / "x.zarr")
    zarr.create_array(path, shape=X.shape, chunks=(chunks, X.shape[1]), dtype="f8")[:] = X
    return path


def test_a_streamed_zarr_pass_reads_its_chunks_itself_and_equals_the_whole(tmp_path):
    X = np.random.default_rng(2).normal(size=(6_000, 3))
    params = [random_params("full", 2, 3, seed=3), random_params("diag", 3, 3, seed=4)]
    dataset = as_dataset(_zarr_source(tmp_path, X), chunk_rows=None)
    runs = passes.read_ahead_runs(dataset)
    assert runs is not None and [list(r) for r in runs][0][:2] == [0, 1]
    assert sorted(i for r in runs for i in r) == list(range(12))
    built = passes.pass_graph(dataset, passes.em_chunk, (params,))
    graph = dict(built[0].__dask_graph__()) if isinstance(built, list) else dict(
        built.__dask_graph__())
    assert not [k for k in graph if str(k[0] if isinstance(k, tuple) else k).startswith(
        "zarr-")]  # no read task: the pass's tasks read
    for got, want in zip(passes.data_pass(dataset, passes.em_chunk, (params,)),
                         kernels.chunk_stats(X, params), strict=True):
        assert_allclose(got.nk, want.nk, rtol=1e-12)
        assert_allclose(got.s2, want.s2, rtol=1e-12)
        assert_allclose(got.log_likelihood, want.log_likelihood, rtol=1e-12)
    # rechunked: the reader no longer matches the array; one task per chunk again
    other = as_dataset(dataset.array.rechunk((1_000, 3)))
    assert passes.read_ahead_runs(other) is None


def test_a_streamed_parquet_pass_reads_features_and_weights_ahead(tmp_path, cluster_client):
    import pandas as pd

    X = np.random.default_rng(5).normal(size=(4_000, 3))
    w = np.random.default_rng(6).integers(0, 4, 4_000).astype(float)
    frame = pd.DataFrame(X, columns=["a", "b", "c"]).assign(w=w)
    for i in range(8):
        frame.iloc[i * 500:(i + 1) * 500].to_parquet(tmp_path / f"part-{i}.parquet")
    dataset = as_dataset(str(tmp_path), chunk_rows=None, weight_column="w")
    assert len(dataset.array.chunks[0]) == 8 and passes.read_ahead_runs(dataset) is not None
    params = [random_params("tied", 2, 3, seed=7)]
    (got,) = passes.data_pass(dataset, passes.em_chunk, (params,))
    (want,) = kernels.chunk_stats(X, params, w)
    assert_allclose(got.s1, want.s1, rtol=1e-12)
    assert_allclose(got.log_likelihood, want.log_likelihood, rtol=1e-12)
    assert got.weight == w.sum()


class _SlowRows:
    """Rows of an in-memory array read slowly, as from a distant store: each read is
    logged with its start and end."""

    def __init__(self, X, log, seconds):
        self.X, self.log, self.seconds = X, log, seconds
        self.shape, self.dtype, self.ndim = X.shape, X.dtype, 2

    def __getitem__(self, key):
        import time

        start = time.monotonic()
        time.sleep(self.seconds)
        self.log.append(("read", key[0].start, start, time.monotonic()))
        return self.X[key]


def test_the_next_chunk_is_read_while_the_current_one_is_computed():
    import dataclasses
    import time

    from daskgmm.quantiles import RankSketch, combine_sketches
    from daskgmm.sources import RowReader

    X = np.random.default_rng(8).normal(size=(4_000, 2))
    log = []
    dataset = as_dataset(da.from_array(X, chunks=(500, 2)), chunk_rows=None)
    rows = RowReader(_SlowRows(X, log, 0.1), tuple(dataset.array.chunks[0]))
    dataset = dataclasses.replace(dataset, rows=rows)

    def slow_compute(block, row_start):
        start = time.monotonic()
        time.sleep(0.1)
        log.append(("compute", row_start, start, time.monotonic()))
        return RankSketch.from_values(block[:, 0])

    with dask.config.set(scheduler="sync"):
        sketch = passes.data_pass(dataset, slow_compute, (), split_every=None,
                                  combine=combine_sketches)
    assert sketch.n_samples == 4_000
    reads = {row: (s, e) for kind, row, s, e in log if kind == "read"}
    computes = {row: (s, e) for kind, row, s, e in log if kind == "compute"}
    assert sorted(reads) == sorted(computes) == list(range(0, 4_000, 500))
    overlapped = [row for row in computes if row + 500 in reads
                  and reads[row + 500][0] < computes[row][1]]
    assert len(overlapped) >= 4  # the next read began before this computation ended


def test_replicated_chunks_spread_over_their_holders(cluster_client):
    from distributed import wait

    X = np.random.default_rng(9).normal(size=(8_000, 2))
    array = da.from_array(X, chunks=(200, 2)).persist()
    wait(array)
    cluster_client.replicate(array)  # every chunk on both workers
    keys = [row[0] for row in array.__dask_keys__()]
    groups = passes.chunk_groups(array, keys)
    sizes = sorted(len(g) for g in groups)
    assert len(groups) == 4 and sizes[-1] - sizes[0] <= 1, sizes  # both workers' threads


def test_the_reads_of_an_array_and_its_weights_are_dropped_with_either():
    import gc

    gc.collect()
    before = len(passes.READS)
    X = da.from_array(np.ones((100, 2)), chunks=(50, 2))
    for _ in range(3):
        w = da.from_array(np.ones(100), chunks=50)
        assert passes.reads_of(X, w) is passes.reads_of(X, w)  # built once
        assert len(passes.READS) == before + 1
        del w
        gc.collect()
        assert len(passes.READS) == before  # gone with the weights
    passes.reads_of(X, None)
    assert len(passes.READS) == before + 1
    del X
    gc.collect()
    assert len(passes.READS) == before  # gone with the array
