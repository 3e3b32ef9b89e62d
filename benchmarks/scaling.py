"""The numbers behind docs/scaling.md: what one EM data pass costs, measured on this machine.

    python benchmarks/scaling.py [--quick] [--out benchmarks/scaling.json]

Everything runs on a LocalCluster of 2 worker processes with 1 thread each (the client
is this process); the whole script takes about 5 minutes on 2 cores (``--quick``: about
one, with smaller cases, for checking that it runs). Every time is the median of
repeats, because the machine may be shared: the load average before and after is kept
with the results.

Sections of the JSON output:

- ``kernels``: seconds per row of one candidate's E-step and statistics
  (``kernels.chunk_stats``, what ``passes.em_chunk`` runs per candidate), timed on a
  worker, per covariance type; with the floating-point operations the cost model
  counts per row, the rate reached (GFLOP/s per worker thread).
- ``read``: bytes per second per worker of a pass that only reads (and casts to
  float64) a Zarr array from local files, compressed (Zarr's default, zstd) and not.
  The files were just written, so this is decoding from the page cache: the rate of
  the worker's CPU, not of a disk or an object store.
- ``passes``: real ``GaussianMixture.fit`` passes (seconds between progress events)
  on persisted data and streaming from the compressed Zarr array, next to what the
  model predicts from ``kernels`` and ``read``.
- ``statistics``: pickled bytes of one candidate's statistics per covariance type
  (what a chunk task sends to the reduction tree), against the formula.
- ``client_m_step``: the client's work after a pass for a grid of 40 full-covariance
  candidates, k = 1..40 (820 components): receiving the statistics (pickle round
  trip), one addition of two such results (a combine step) and ``kernels.m_step`` for
  every candidate (what ``em.run_em`` calls), at 256 and at 64 features.
- ``many_chunks``: the same EM pass with 100 to 10,000 tiny chunks, through the public
  API (``GaussianMixture(...).fit(dask_array, callback=...)`` from given initial
  parameters, data persisted, ``chunk_rows=None`` to keep the chunks): seconds per pass
  and per task, a least-squares line through them; beside it the part spent building
  the graph on the client (the same calls ``passes.data_pass`` makes, without the
  compute) and a bare-distributed floor (a hand-written graph of the same shape whose
  tasks do nothing).
- ``graph``: that client-side graph alone (``passes.pass_graph``), up to 20,000 chunks,
  fitted by ``a n + b n^2`` (``--graph-only`` measures it again and redoes the
  projection from the other sections).
- ``projection``: 1 TB of float64 at 64 features on 100 such workers, computed from
  the numbers above (see docs/scaling.md for the assumptions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

# Only the standard library at the top: the LocalCluster's worker processes are spawned
# and re-import this script. The functions import what they use.

REPO = Path(__file__).resolve().parents[1]
TYPES = ("full", "tied", "diag", "spherical")


def median(values):
    import numpy as np

    return float(np.median(values))


class Meter:
    """Wall time and CPU time of the processes of a pass: this process's main thread
    (the client: building graphs, M-steps), its other threads (the LocalCluster's
    scheduler and the client's communication run there) and the worker processes.
    On a shared machine wall times stretch with the load; CPU times much less."""

    def __init__(self, client=None):
        import threading

        import psutil

        self.me = psutil.Process()
        self.main = threading.main_thread().native_id
        pids = client.run(os.getpid).values() if client is not None else []
        self.workers = [psutil.Process(pid) for pid in pids]

    def read(self):
        main = loop = 0.0
        for t in self.me.threads():
            if t.id == self.main:
                main += t.user_time + t.system_time
            else:
                loop += t.user_time + t.system_time
        workers = sum(sum(w.cpu_times()[:2]) for w in self.workers)
        return {"wall": time.perf_counter(), "client_cpu": main, "scheduler_cpu": loop,
                "workers_cpu": workers}

    @staticmethod
    def between(a, b):
        return {key: b[key] - a[key] for key in a}

    def timed(self, fn, repeats):
        """Per call of ``fn()``: wall and CPU seconds; returns the medians and all."""
        runs = []
        for _ in range(repeats):
            a = self.read()
            fn()
            runs.append(self.between(a, self.read()))
        return medians(runs), runs


def medians(runs):
    return {key: median([r[key] for r in runs]) for key in runs[0]}


###############################################################################
# The cost model (counted from daskgmm/covariance and daskgmm/kernels)


def flops_per_row(covariance_type, k, d):
    """Floating-point operations per row of one candidate's E-step and statistics, as
    daskgmm computes them (multiply-add = 2). Not counted: the log-sum-exp and the
    exponentials (about 8 elementwise operations per row and component, 2 of them exp).

    - full: X @ [P_1 .. P_k] (2 d^2 per component), subtract and square-sum (3 d); the
      statistics' (d x B) @ (B x d) outer products (2 d^2), the centring and weighting
      (2 d) and resp^T X (2 d): 4 d^2 + 7 d per component.
    - tied: X @ P once (2 d^2), then per component 3 d for the distance and the same
      outer products as 'full' (2 d^2 + 4 d): the statistic is k x d x d although its
      M-step sums it over the components.
    - diag, spherical: centred squares (2 d), weighted sums (2 d), second moments (2 d),
      resp^T X (2 d): 8 d per component.
    """
    if covariance_type == "full":
        return k * (4 * d * d + 7 * d)
    if covariance_type == "tied":
        return 2 * d * d + k * (2 * d * d + 7 * d)
    return k * 8 * d


def stats_bytes(covariance_type, k, d):
    """Bytes of the float64 arrays of one candidate's statistics (nk, s1, s2)."""
    s2 = k * d * d if covariance_type in ("full", "tied") else k * d
    return 8 * (k + k * d + s2)


def tree_tasks(n_chunks, split_every):
    """Combine nodes of a tree of fan-in ``split_every`` over ``n_chunks`` results, and
    its depth (``passes.tree_keys``)."""
    nodes = depth = 0
    n = n_chunks
    while n > 1:
        n = -(-n // split_every)
        nodes += n
        depth += 1
    return nodes, depth


###############################################################################
# Helpers that run on the workers


def make_params(covariance_type, k, d, seed=0):
    import numpy as np

    from daskgmm import kernels

    rng = np.random.default_rng(seed)
    if covariance_type == "full":
        chol = np.repeat(np.eye(d)[None], k, axis=0)
    elif covariance_type == "tied":
        chol = np.eye(d)
    elif covariance_type == "diag":
        chol = np.ones((k, d))
    else:
        chol = np.ones(k)
    return kernels.Params(covariance_type, np.full(k, 1.0 / k), rng.normal(size=(k, d)),
                          chol, None, np.zeros(d))


def time_kernel(covariance_type, k, d, n_rows, repeats):
    """On a worker: wall and CPU seconds (medians) of ``kernels.chunk_stats`` for one
    candidate on ``n_rows`` rows."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from daskgmm import kernels

    X = np.random.default_rng(1).normal(size=(n_rows, d))
    params = make_params(covariance_type, k, d)
    walls, cpus = [], []
    with threadpool_limits(limits=1):
        kernels.chunk_stats(X[:1024], [params])  # warm-up
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.thread_time()
            kernels.chunk_stats(X, [params])
            walls.append(time.perf_counter() - t0)
            cpus.append(time.thread_time() - c0)
    return walls, cpus


def noop_chunk(i):
    return 1


def noop_combine(parts):
    return sum(parts)


###############################################################################
# Sections


def kernel_section(client, quick):
    """Per covariance type: seconds per row of one candidate (CPU seconds of the worker
    thread; wall seconds beside them), and the rate in GFLOP/s."""
    rows = 8_192 if quick else 32_768
    repeats = 3
    out = []
    cases = [(t, 16, 64, rows) for t in TYPES] + [("full", 4, 256, rows // 4)]
    for covariance_type, k, d, n_rows in cases:
        walls, cpus = client.submit(time_kernel, covariance_type, k, d, n_rows, repeats,
                                    pure=False).result()
        per_row = median(cpus) / n_rows
        flops = flops_per_row(covariance_type, k, d)
        out.append({
            "covariance_type": covariance_type, "n_components": k, "n_features": d,
            "rows": n_rows, "cpu_seconds": cpus, "wall_seconds": walls,
            "seconds_per_row": per_row, "seconds_per_row_component": per_row / k,
            "wall_seconds_per_row": median(walls) / n_rows,
            "flops_per_row": flops, "gflops_per_s": flops / per_row / 1e9,
        })
        print(f"kernel {covariance_type:9s} k={k:2d} d={d:3d}: {per_row * 1e6:8.2f} us/row "
              f"(CPU; wall {median(walls) / n_rows * 1e6:.2f}), "
              f"{flops / per_row / 1e9:6.2f} GFLOP/s", flush=True)
    return out


def write_zarr(path, n_rows, d, chunk_rows, compressed):
    import numpy as np
    import zarr

    group = zarr.open_group(str(path), mode="w")
    X = group.create_array("X", shape=(n_rows, d), chunks=(chunk_rows, d), dtype="f8",
                           **({} if compressed else {"compressors": None}))
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        X[start:stop] = np.random.default_rng([2, start]).normal(size=(stop - start, d))
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def read_section(client, meter, root, quick):
    """A pass that only reads the Zarr array and casts it to float64 (``sum``): float64
    bytes per CPU second of a worker (and per wall second, 2 workers in parallel)."""
    import daskgmm

    d = 64
    # 32 MiB of float64 per chunk: the size daskgmm's 'auto' chunking aims at
    chunk_rows = 16_384 if quick else 65_536
    n_rows = chunk_rows * (4 if quick else 8)
    n_bytes = n_rows * d * 8
    out = {"n_rows": n_rows, "n_features": d, "chunk_rows": chunk_rows, "workers": 2}
    for compressed in (True, False):
        name = "compressed" if compressed else "uncompressed"
        path = root / f"read-{name}.zarr"
        on_disk = write_zarr(path, n_rows, d, chunk_rows, compressed)
        array = daskgmm.as_dataset(str(path), array_name="X").array
        array.sum().compute()  # warm-up: imports on the workers, page cache
        med, runs = meter.timed(lambda a=array: a.sum().compute(), 3)
        out[name] = {
            "bytes_float64": n_bytes, "bytes_on_disk": on_disk, "median": med, "runs": runs,
            "bytes_per_cpu_s_per_worker": n_bytes / med["workers_cpu"],
            "bytes_per_wall_s_per_worker": n_bytes / med["wall"] / 2,
        }
        print(f"read {name}: {out[name]['bytes_per_cpu_s_per_worker'] / 1e6:.0f} MB per CPU "
              f"second of a worker (wall: {out[name]['bytes_per_wall_s_per_worker'] / 1e6:.0f} "
              f"MB/s per worker); {on_disk / n_bytes:.3f} of the bytes on disk", flush=True)
    return out


def fit_passes(meter, X, covariance_type, k, d, n_passes, **kwargs):
    """Wall and CPU seconds of each EM pass of a fit after the first, between its
    progress events (the first pass's interval starts with the call: left out)."""
    import numpy as np

    import daskgmm

    rng = np.random.default_rng(3)
    init = make_params(covariance_type, k, d)
    precisions = init.model.precisions(init.precisions_cholesky)
    marks = []
    gm = daskgmm.GaussianMixture(
        k, covariance_type=covariance_type, max_iter=n_passes, tol=0.0,
        weights_init=init.weights, means_init=rng.normal(size=(k, d)),
        precisions_init=precisions, **kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: tol=0 never converges
        gm.fit(X, callback=lambda e: marks.append(meter.read()))
    assert gm.n_passes_ == n_passes, (gm.n_passes_, n_passes)
    runs = [meter.between(a, b) for a, b in zip(marks[:-1], marks[1:], strict=True)]
    return medians(runs), runs


def pass_section(meter, root, kernels_out, read_out):
    """Real EM passes at 64 features, 16 components, against the model: the kernel's
    CPU seconds per row times the rows, plus reading at the measured rate."""
    import dask.array as da
    import numpy as np

    d, k = 64, 16
    path = root / "read-compressed.zarr"
    n_rows = read_out["n_rows"]
    chunk_rows = read_out["chunk_rows"]
    X = np.random.default_rng(4).normal(size=(n_rows, d))
    data = da.from_array(X, chunks=(chunk_rows, d))
    out = []
    for covariance_type in ("full", "diag"):
        per_row = next(r["seconds_per_row"] for r in kernels_out
                       if r["covariance_type"] == covariance_type and r["n_features"] == d)
        compute = n_rows * per_row
        read = n_rows * d * 8 / read_out["compressed"]["bytes_per_cpu_s_per_worker"]
        for source, kwargs, predicted in (
            ("persisted", {"cache": True, "chunk_rows": None}, compute),
            ("zarr (compressed), streamed", {"cache": False, "array_name": "X"},
             compute + read),
        ):
            med, runs = fit_passes(meter, data if source == "persisted" else str(path),
                                   covariance_type, k, d, 4, **kwargs)
            out.append({
                "covariance_type": covariance_type, "n_components": k, "n_features": d,
                "rows": n_rows, "chunks": n_rows // chunk_rows, "source": source,
                "median": med, "runs": runs, "model_workers_cpu_seconds": predicted,
            })
            print(f"pass {covariance_type} {source}: workers' CPU {med['workers_cpu']:.2f} s "
                  f"(model {predicted:.2f} s), wall {med['wall']:.2f} s", flush=True)
    return out


def statistics_section():
    import pickle

    import numpy as np

    from daskgmm import kernels, passes

    out = []
    for covariance_type in TYPES:
        for k, d in ((16, 64), (16, 256)):
            params = make_params(covariance_type, k, d)
            stats = kernels.chunk_stats(np.zeros((4, d)) + 0.1, [params])[0]
            timed_stats = passes.TimedStats(**vars(stats), seconds=0.0)
            out.append({
                "covariance_type": covariance_type, "n_components": k, "n_features": d,
                "pickled_bytes": len(pickle.dumps([timed_stats], protocol=5)),
                "formula_bytes": stats_bytes(covariance_type, k, d),
            })
    return out


def grid_statistics(d, ks, seed=0):
    """Statistics and parameters of a grid of full-covariance candidates: one candidate
    per k, k * 1e6 rows; the values are valid (symmetric positive definite) and what
    they are does not change the cost of the M-step."""
    import numpy as np

    from daskgmm import kernels, passes

    rng = np.random.default_rng(seed)
    bases = []
    for _ in range(8):
        a = rng.normal(size=(d, d)) / np.sqrt(d)
        bases.append(a @ a.T + np.eye(d))
    stats, params = [], []
    for k in ks:
        nk = rng.uniform(0.5e6, 1.5e6, size=k)
        means = rng.normal(size=(k, d))
        s2 = np.empty((k, d, d))
        for j in range(k):
            np.multiply(bases[(k + j) % 8], nk[j], out=s2[j])
        stats.append(passes.TimedStats(nk, nk[:, None] * means, s2, -1.0e7 * k,
                                       int(nk.sum()), 0.0))
        params.append(kernels.Params("full", nk / nk.sum(), means,
                                     np.repeat(np.eye(d)[None], k, axis=0), None,
                                     np.zeros(d)))
    return stats, params


def cpu_timed(fn, repeats):
    """Medians of wall and CPU seconds (this whole process, BLAS threads included)."""
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"wall": median(walls), "cpu": median(cpus), "all_wall": walls, "all_cpu": cpus}


def m_step_section(d, n_candidates, repeats):
    """The client's work for a grid of full-covariance candidates k = 1..n_candidates,
    with its default BLAS threads (the client of a fit does not limit them)."""
    import pickle

    from daskgmm import kernels

    ks = list(range(1, n_candidates + 1))
    stats, params = grid_statistics(d, ks)
    n_bytes = sum(s.nk.nbytes + s.s1.nbytes + s.s2.nbytes for s in stats)

    def m_steps():
        for s, p in zip(stats, params, strict=True):
            kernels.m_step(s, p, 1e-6)

    m_step = cpu_timed(m_steps, repeats)
    payload = pickle.dumps(stats, protocol=5)
    pickled = len(payload)
    unpickle = cpu_timed(lambda: pickle.loads(payload), repeats)
    pickle_ = cpu_timed(lambda: pickle.dumps(stats, protocol=5), repeats)
    addition = cpu_timed(lambda: kernels.combine_stats([stats, stats]), repeats)
    out = {
        "n_features": d, "covariance_type": "full", "n_components": f"1..{n_candidates}",
        "total_components": sum(ks), "statistics_bytes": n_bytes, "pickled_bytes": pickled,
        "m_step": m_step, "pickle": pickle_, "unpickle": unpickle, "one_addition": addition,
    }
    print(f"client, {n_candidates} full candidates at d={d}: statistics "
          f"{n_bytes / 2**20:.0f} MiB; M-step {m_step['wall']:.2f} s wall, {m_step['cpu']:.2f} s "
          f"CPU; unpickle {unpickle['wall']:.2f} s; one addition {addition['wall']:.2f} s",
          flush=True)
    return out


def build_pass_graph(dataset, split_every):
    """The graph ``passes.data_pass`` computes for an EM pass (``passes.pass_graph``),
    built but not computed: the client's share of a pass's cost."""
    from daskgmm import kernels, passes

    params = [make_params("diag", 2, dataset.n_features)]
    return passes.pass_graph(dataset, passes.em_chunk, (params,),
                             combine=kernels.combine_stats, split_every=split_every)


def graph_parts(dataset, split_every):
    """Client CPU seconds to build a pass's graph (``passes.pass_graph``: the array's
    optimised reads, the chunk tasks and the combine tree, in one layer)."""
    c0 = time.thread_time()
    build_pass_graph(dataset, split_every)
    return {"pass_graph": time.thread_time() - c0}


def graph_section(quick):
    """The client's graph for one pass, alone (no cluster needed), up to more chunks
    than the passes above: which of its steps grow faster than the chunks, and a fit
    of ``a n + b n^2`` to each (n = chunks)."""
    import dask.array as da
    import numpy as np

    import daskgmm

    counts = (1000, 3000, 6000) if quick else (1000, 3000, 10_000, 20_000)
    runs = []
    for n_chunks in counts:
        X = da.from_array(np.zeros((n_chunks * 20, 4)), chunks=(20, 4))
        dataset = daskgmm.as_dataset(X, chunk_rows=None)
        repeats = 3 if n_chunks <= 3000 else 1
        parts = [graph_parts(dataset, 8) for _ in range(repeats)]
        row = {"chunks": n_chunks, "repeats": repeats,
               **{key: median([p[key] for p in parts]) for key in parts[0]}}
        runs.append(row)
        print(f"graph of {n_chunks:6d} chunks on the client: {row['pass_graph']:.2f} CPU s",
              flush=True)
    n = np.array([r["chunks"] for r in runs], dtype=float)
    fits = {}
    for key in ("pass_graph",):
        y = np.array([r[key] for r in runs])
        (a, b), *_ = np.linalg.lstsq(np.stack([n, n * n], axis=1), y, rcond=None)
        fits[key] = {"a_seconds_per_chunk": float(a), "b_seconds_per_chunk_squared": float(b),
                     "seconds_per_chunk": [float(v) for v in y / n]}
    return {"runs": runs, "fit_a_n_plus_b_n2": fits}


def graph_seconds(graph, n_chunks):
    """Client CPU seconds for a pass's graph over ``n_chunks`` from the fits."""
    return sum(f["a_seconds_per_chunk"] * n_chunks + f["b_seconds_per_chunk_squared"]
               * n_chunks**2 for f in graph["fit_a_n_plus_b_n2"].values())


def bare_pass(client, n_chunks, split_every):
    """A hand-written graph of the same shape (n_chunks tasks, then the tree), whose
    tasks do nothing: what distributed itself costs per task."""
    dsk = {("chunk", i): (noop_chunk, i) for i in range(n_chunks)}
    keys = [("chunk", i) for i in range(n_chunks)]
    level = 0
    while len(keys) > 1:
        level += 1
        nxt = []
        for j in range(0, len(keys), split_every):
            key = ("combine", level, j // split_every)
            dsk[key] = (noop_combine, list(keys[j : j + split_every]))
            nxt.append(key)
        keys = nxt
    return client.get(dsk, keys[0], sync=True)


def many_chunks_section(client, meter, quick):
    """The same EM pass over 100 to 10,000 tiny chunks (20 rows x 4 features, persisted):
    per pass, wall seconds and the CPU seconds of the client, the scheduler and the
    workers; a least-squares line through each against the number of tasks."""
    import dask.array as da
    import numpy as np

    import daskgmm

    d, k, rows, split_every = 4, 2, 20, 8
    counts = (100, 300, 1000) if quick else (100, 1000, 3000, 10_000)
    out = []
    for n_chunks in counts:
        X = np.random.default_rng(5).normal(size=(n_chunks * rows, d))
        data = da.from_array(X, chunks=(rows, d)).persist()
        n_passes = 3 if n_chunks >= 10_000 else 4
        med, runs = fit_passes(meter, data, "diag", k, d, n_passes, cache=True,
                               chunk_rows=None, split_every=split_every)
        dataset = daskgmm.as_dataset(data, chunk_rows=None)
        repeats = 1 if n_chunks >= 3000 else 3
        graph, _ = meter.timed(lambda ds=dataset: build_pass_graph(ds, split_every), repeats)
        n_graph_tasks = len(build_pass_graph(dataset, split_every).__dask_graph__())
        bare, _ = meter.timed(lambda n=n_chunks: bare_pass(client, n, split_every), repeats)
        nodes, depth = tree_tasks(n_chunks, split_every)
        tasks = n_chunks + nodes
        row = {
            "chunks": n_chunks, "rows_per_chunk": rows, "n_features": d,
            "n_components": k, "covariance_type": "diag", "tasks": tasks,
            "tasks_in_graph": n_graph_tasks, "tree_depth": depth, "passes_timed": len(runs),
            "pass": med, "pass_runs": runs, "client_graph": graph, "bare_distributed": bare,
        }
        out.append(row)
        print(f"{n_chunks:6d} chunks, {tasks:6d} tasks per pass: wall {med['wall']:6.2f} s, "
              f"CPU client {med['client_cpu']:.2f} + scheduler {med['scheduler_cpu']:.2f} + "
              f"workers {med['workers_cpu']:.2f} s; building the graph {graph['client_cpu']:.2f}"
              f" s CPU; bare distributed: wall {bare['wall']:.2f} s, scheduler "
              f"{bare['scheduler_cpu']:.2f} s CPU", flush=True)
        client.cancel(data)
        del data
    x = np.array([r["tasks"] for r in out], dtype=float)
    fits = {}
    for name, series in (
        ("pass_wall", [r["pass"]["wall"] for r in out]),
        ("pass_client_cpu", [r["pass"]["client_cpu"] for r in out]),
        ("pass_scheduler_cpu", [r["pass"]["scheduler_cpu"] for r in out]),
        ("pass_workers_cpu", [r["pass"]["workers_cpu"] for r in out]),
        ("pass_client_and_scheduler_cpu",
         [r["pass"]["client_cpu"] + r["pass"]["scheduler_cpu"] for r in out]),
        ("graph_client_cpu", [r["client_graph"]["client_cpu"] for r in out]),
        ("bare_wall", [r["bare_distributed"]["wall"] for r in out]),
        ("bare_scheduler_cpu", [r["bare_distributed"]["scheduler_cpu"] for r in out]),
    ):
        y = np.array(series)
        slope, intercept = np.polyfit(x, y, 1)
        predicted = slope * x + intercept
        r2 = 1.0 - np.sum((y - predicted) ** 2) / np.sum((y - y.mean()) ** 2)
        i1000 = counts.index(1000)
        # a term quadratic in the number of tasks shows as seconds per task that grow
        fits[name] = {
            "slope_seconds_per_task": float(slope), "intercept_seconds": float(intercept),
            "r_squared": float(r2),
            "seconds_per_task": [float(v) for v in y / x],
            "per_task_largest_over_1000_chunks": float((y[-1] / x[-1]) / (y[i1000] / x[i1000])),
        }
    return {"runs": out, "linear_fit": fits, "split_every": split_every}


def projection(kernels_out, read_out, m64, m256, many, graph):
    """1 TB of float64 at 64 features on 100 single-thread workers, chunks of 128 MiB."""
    per_row = {r["covariance_type"]: r["seconds_per_row_component"]
               for r in kernels_out if r["n_features"] == 64}
    full256 = next(r for r in kernels_out if r["n_features"] == 256)
    total, d, workers, split_every = 1e12, 64, 100, 8
    chunk_bytes = 128 * 2**20
    rows = total / (d * 8)
    chunks = int(-(-total // chunk_bytes))
    nodes, depth = tree_tasks(chunks, split_every)
    read_rate = read_out["compressed"]["bytes_per_cpu_s_per_worker"]
    fits = many["linear_fit"]
    scheduler_s = fits["pass_scheduler_cpu"]["slope_seconds_per_task"]
    # the client: its graph (fitted, superlinear) and the rest of its per-task work
    client_rest = (fits["pass_client_cpu"]["slope_seconds_per_task"]
                   - fits["graph_client_cpu"]["slope_seconds_per_task"])
    # streaming: a read task per chunk, an EM task per chunk, the tree, the shared args
    tasks = 2 * chunks + nodes + 1
    cases = []
    for label, covariance_type, ks, n_features in (
        ("one fit, k=16 full", "full", [16], 64),
        ("one fit, k=16 diag", "diag", [16], 64),
        ("grid k=1..40 full (40 candidates)", "full", list(range(1, 41)), 64),
        ("grid k=1..40 full at 256 features", "full", list(range(1, 41)), 256),
    ):
        n_rows = total / (n_features * 8)
        components = sum(ks)
        if n_features == 64:
            compute = n_rows * per_row[covariance_type] * components / workers
        else:  # scaled from the measured rate of the d=256 full kernel
            compute = (n_rows * flops_per_row("full", 1, 256) * components
                       / (full256["gflops_per_s"] * 1e9) / workers)
        stat_bytes = sum(stats_bytes(covariance_type, k, n_features) for k in ks)
        client_m = (m256 if n_features == 256 else m64)["m_step"]["wall"] if len(ks) > 1 \
            else 0.0
        cases.append({
            "case": label, "n_features": n_features, "rows": n_rows,
            "compute_seconds_per_pass": compute,
            "read_seconds_per_pass": total / workers / read_rate,
            "scheduler_cpu_seconds_per_pass": tasks * scheduler_s,
            "client_graph_cpu_seconds_per_pass": graph_seconds(graph, chunks),
            "client_other_cpu_seconds_per_pass": (chunks + nodes) * max(client_rest, 0.0),
            "statistics_bytes_per_chunk": stat_bytes,
            "statistics_network_bytes_per_pass": stat_bytes * (chunks + nodes),
            "reducer_memory_bytes": stat_bytes * (split_every + 1),
            "client_m_step_seconds": client_m,
        })
    return {"client_graph_cpu_seconds_at_32MiB_chunks": graph_seconds(
                graph, int(-(-total // (32 * 2**20)))),
            "total_bytes": total, "n_features": d, "itemsize": 8, "workers": workers,
            "threads_per_worker": 1, "chunk_bytes": chunk_bytes, "rows": rows,
            "chunks": chunks, "tree_nodes": nodes, "tree_depth": depth,
            "tasks_per_pass": tasks, "split_every": split_every,
            "read_bytes_per_s_per_worker": read_rate, "cases": cases}


###############################################################################


def git_revision():
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                              text=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"),
            "library_changed_since": bool(git("status", "--porcelain", "--", "daskgmm"))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small cases (about a minute)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "scaling.json"))
    parser.add_argument("--graph-only", action="store_true",
                        help="measure the client's graph again and redo the projection from "
                             "the other sections of --out")
    args = parser.parse_args()
    if args.graph_only:
        results = json.loads(Path(args.out).read_text())
        results["graph"] = graph_section(args.quick)
        results["graph_measured"] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                     "git": git_revision()}
        results["projection"] = projection(
            results["kernels"], results["read"], *results["client_m_step"],
            results["many_chunks"], results["graph"])
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}", flush=True)
        return

    import dask
    import distributed
    import numpy as np
    from distributed import Client, LocalCluster

    t_start = time.perf_counter()
    results = {
        "script": "benchmarks/scaling.py" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git": git_revision(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "dask": dask.__version__,
                    "distributed": distributed.__version__,
                    "load_average_before": os.getloadavg()},
        "cluster": "LocalCluster, 2 worker processes x 1 thread; client in this process",
        "timing": "every time is the median of repeats (all_seconds lists them)",
    }
    root = Path(tempfile.mkdtemp(prefix="daskgmm-scaling-"))
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="4GiB",
                          dashboard_address=None) as cluster, Client(cluster) as client:
            meter = Meter(client)
            results["kernels"] = kernel_section(client, args.quick)
            results["read"] = read_section(client, meter, root, args.quick)
            results["passes"] = pass_section(meter, root, results["kernels"], results["read"])
            results["many_chunks"] = many_chunks_section(client, meter, args.quick)
        results["graph"] = graph_section(args.quick)
        results["statistics"] = statistics_section()
        n_candidates = 10 if args.quick else 40
        results["client_m_step"] = [m_step_section(64, n_candidates, 3),
                                    m_step_section(256, n_candidates, 1 if args.quick else 3)]
        results["projection"] = projection(
            results["kernels"], results["read"], *results["client_m_step"],
            results["many_chunks"], results["graph"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["machine"]["load_average_after"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - t_start
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out} in {results['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
