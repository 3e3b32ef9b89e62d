"""Speed of daskgmm against scikit-learn and Spark MLlib, measured side by side in one run.

    python benchmarks/run.py [--quick] [--only speed|fixed|selection|baseline]
                             [--baseline REV] [--out benchmarks/results.json]

Writes ``--out`` (JSON), and beside it ``RESULTS.md`` (tables of ratios to scikit-learn)
and ``results.png`` (seconds per iteration by case, the systems side by side).

Speed: seconds per EM iteration on the same data from the same initial parameters:
scikit-learn in memory (its default threading, both cores) and daskgmm on a LocalCluster
of 2 single-threaded worker processes, (a) with the data persisted in the workers'
memory and (b) streaming from zstd-compressed Zarr on every pass. A fit's cost per
iteration is (time of a fit with 1 + m iterations - time with 1 iteration) / m, so
initialisation and start-up cancel out. Cases: 1M and 4M x 16, k=8, the four covariance
types; 1M x 64, k=16, full; float32 input against float64 (full); Spark MLlib's
GaussianMixture beside the 1M and 4M x 16 full cases (``benchmarks/spark_peer.py``: its
own process, ``local[2]``, (t(maxIter=11) - t(maxIter=1)) / 10 after a warm-up fit; a
column that says "skipped: <why>" when pyspark or Java is missing).

Fixed cost of a pass: a tiny dataset persisted in 8, 24 and 80 chunks; seconds per
iteration minus the kernels' compute (measured on the workers, divided by the 2 workers)
is the fixed cost, and ``fixed = a + b * chunks`` is fitted to it.

Memory is measured by ``benchmarks/memory.py`` (``make bench`` runs both).

Against an earlier revision (``--baseline REV``, e.g. the commit before a change): the
same speed cases with the code of REV (a git worktree) and with this checkout, each in
its own process, alternated three times; the report gives the fastest of each and their
ratio (the least disturbed runs), so a
change is judged on the same machine in the same hour. ``--only`` keeps the other
sections of an existing ``--out`` file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

# Only the standard library at the top: the workers of a LocalCluster are spawned
# processes that re-import this script, and a module imported here would sit in every
# worker's memory (scikit-learn and pandas alone take about 100 MiB) and distort the
# memory measurements. The functions import what they use.

HERE = Path(__file__).resolve().parent
COVARIANCE_TYPES = ["full", "diag", "tied", "spherical"]
SYSTEMS = [  # (key in a speed row, name in the report and the plot)
    ("sklearn", "scikit-learn (in memory)"),
    ("persisted", "daskgmm, persisted"),
    ("zarr", "daskgmm, streaming from Zarr"),
    ("spark", "Spark MLlib (local[2])"),
]
SPARK_FULL_ONLY = "n/a: Spark MLlib fits full covariances only"


def per_iteration(fit, iterations):
    """Seconds per iteration: (t(1 + m) - t(1)) / m."""
    t0 = time.perf_counter()
    fit(1)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit(1 + iterations)
    more = time.perf_counter() - t0
    return max(more - one, 1e-9) / iterations


def mixture_data(root, n_samples, n_features, n_components):
    """The Zarr group of a case's data (written once): float64 ``X`` and float32 ``X32``,
    the same rows, chunks of 250,000 rows, Zarr's default (zstd) compression."""
    import zarr

    from daskgmm.synthetic import write_mixture_zarr

    path = root / f"speed-{n_samples}x{n_features}.zarr"
    if not (path / "X32").exists():
        group = write_mixture_zarr(path, n_samples, n_features, n_components,
                                   chunk_rows=250_000, seed=1)
        X = group["X"][:]
        group.create_array("X32", shape=X.shape, chunks=group["X"].chunks, dtype="f4")[:] = (
            X.astype("f4"))
        del X
    return path, zarr.open_group(str(path), mode="r")


def parquet_copy(path, X):
    """The rows of ``X`` as one Parquet file beside the Zarr group (for Spark), written once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = path.with_suffix(f".{X.dtype.name}.parquet")
    if not out.exists():
        table = pa.table({f"f{j}": X[:, j] for j in range(X.shape[1])})
        pq.write_table(table, out, row_group_size=250_000)
    return out


def spark_case(parquet, n_samples, n_features, n_components, timeout=3600):
    """Spark MLlib's seconds per iteration, measured in its own process by
    ``benchmarks/spark_peer.py``; a dict with ``status`` 'ok', 'skipped: ...' or 'failed: ...'."""
    data_gib = n_samples * n_features * 8 / 2**30
    driver_memory = f"{min(12, max(2, math.ceil(10 * data_gib) + 1))}g"
    partitions = max(2, math.ceil(n_samples / 250_000))  # as many as daskgmm's chunks
    command = [sys.executable, str(HERE / "spark_peer.py"), str(parquet),
               "--k", str(n_components), "--seed", "0", "--partitions", str(partitions),
               "--driver-memory", driver_memory]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: no result after {timeout} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        errors = [line for line in out.stderr.splitlines() if line.strip()]
        print("\n".join(errors[-20:]), file=sys.stderr)
        return {"status": f"failed: {errors[-1] if errors else f'exit code {out.returncode}'}"}
    row = json.loads(lines[-1])
    if row["status"] != "ok":
        print(f"Spark MLlib {row['status']}", file=sys.stderr, flush=True)
    return row


def speed_case(root, n_samples, n_features, n_components, covariance_type, iterations,
               dtype="float64", spark=False):
    """One case: scikit-learn, daskgmm persisted and streaming (and Spark when asked) on
    the same data from the same start (scikit-learn's one iteration from
    ``random_from_data`` on the float64 rows)."""
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    import daskgmm

    path, group = mixture_data(root, n_samples, n_features, n_components)
    array_name = "X32" if dtype == "float32" else "X"
    X = group["X"][:]
    start = SkGaussianMixture(n_components, covariance_type=covariance_type, max_iter=1,
                              init_params="random_from_data", random_state=0).fit(X)
    init = dict(weights_init=start.weights_, means_init=start.means_,
                precisions_init=start.precisions_)
    if dtype != "float64":  # the same rows and start, in the input's dtype
        X = group[array_name][:]
        init = {name: value.astype(X.dtype) for name, value in init.items()}
    fitted = {}

    def sk_fit(m):
        fitted["sklearn"] = SkGaussianMixture(
            n_components, covariance_type=covariance_type, max_iter=m, tol=0.0, **init,
        ).fit(X)

    def ours(cache, chunk_rows):
        def fit(m):
            fitted["daskgmm"] = daskgmm.GaussianMixture(
                n_components, covariance_type=covariance_type, max_iter=m, tol=0.0,
                cache=cache, array_name=array_name, chunk_rows=chunk_rows, **init,
            ).fit(str(path))
        return fit

    seconds = {
        "sklearn": per_iteration(sk_fit, iterations),
        "persisted": per_iteration(ours(True, "auto"), iterations),
        "zarr": per_iteration(ours(False, None), iterations),
    }
    row = {
        "rows": n_samples, "features": n_features, "components": n_components,
        "covariance_type": covariance_type, "dtype": dtype, "iterations": iterations,
        "zarr_codecs": [type(c).__name__ for c in group[array_name].compressors],
    }
    if dtype != "float64":  # what each side computes in, found at run time
        row["sklearn_means_dtype"] = str(fitted["sklearn"].means_.dtype)
        row["daskgmm_means_dtype"] = str(fitted["daskgmm"].means_.dtype)
        row["daskgmm_compute_dtype"] = str(
            daskgmm.as_dataset(str(path), array_name=array_name).array.dtype)
    if covariance_type != "full":
        row["spark_status"] = SPARK_FULL_ONLY
    elif spark:
        measured = spark_case(parquet_copy(path, X), n_samples, n_features, n_components)
        row["spark_status"] = measured.pop("status")
        row["spark_details"] = measured
        if row["spark_status"] == "ok":
            seconds["spark"] = measured["s_per_iter"]
    for key, value in seconds.items():
        row[f"{key}_s_per_iter"] = round(value, 4)
        if key != "sklearn":
            row[f"{key}_ratio"] = round(value / seconds["sklearn"], 3)
    print(json.dumps(row), flush=True)
    return row


def fixed_cost_case(n_samples, n_features, n_components, chunk_counts, iterations):
    """The fixed cost of a pass: a tiny dataset persisted in ``chunk_counts`` chunks; per
    iteration, wall seconds minus the kernels' compute (the workers' measured seconds of
    the E-step and statistics, summed over chunks, over 2 workers); then the least-squares
    line ``fixed = a + b * chunks``."""
    import dask
    import dask.array as da
    import numpy as np
    from distributed import wait
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    import daskgmm
    from daskgmm.synthetic import mixture_parameters, sample_mixture

    X, _ = sample_mixture(n_samples, *mixture_parameters(n_features, n_components, seed=2),
                          np.random.default_rng(2))
    start = SkGaussianMixture(n_components, covariance_type="full", max_iter=1,
                              init_params="random_from_data", random_state=0).fit(X)
    init = dict(weights_init=start.weights_, means_init=start.means_,
                precisions_init=start.precisions_)
    points = []
    for chunks in chunk_counts:
        data = dask.persist(da.from_array(X, chunks=(math.ceil(n_samples / chunks), -1)))[0]
        wait(data)
        kernel = {}  # EM iteration: the candidate's compute seconds so far

        def record(event, kernel=kernel):
            if event.phase == "em" and event.candidates:
                kernel[event.n_iter] = event.candidates[0].seconds

        def fit(m, data=data, record=record):
            daskgmm.GaussianMixture(n_components, covariance_type="full", max_iter=m,
                                    tol=0.0, cache=False, chunk_rows=None, **init,
                                    ).fit(data, callback=record)

        fit(1)  # warm-up
        wall = per_iteration(fit, iterations)
        kernel_s = (kernel[1 + iterations] - kernel[1]) / iterations
        points.append({"chunks": int(data.numblocks[0]), "s_per_iter": round(wall, 5),
                       "kernel_s_per_iter": round(kernel_s, 5),
                       "fixed_s_per_iter": round(wall - kernel_s / 2, 5)})
        print(json.dumps(points[-1]), flush=True)
        del data
    b, a = np.polyfit([p["chunks"] for p in points], [p["fixed_s_per_iter"] for p in points], 1)
    return {"rows": n_samples, "features": n_features, "components": n_components,
            "covariance_type": "full", "iterations": iterations, "points": points,
            "a_s": round(float(a), 5), "b_s_per_chunk": round(float(b), 6)}


def selection_case(root, n_samples, n_features, true_k, ks, covariance_type):
    """A grid of len(ks) candidates: select_model's shared passes against fitting the
    candidates one after another with daskgmm (streaming) and with scikit-learn."""
    import zarr
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    import daskgmm
    from daskgmm.synthetic import write_mixture_zarr

    path = root / f"select-{n_samples}x{n_features}.zarr"
    if not path.exists():
        write_mixture_zarr(path, n_samples, n_features, true_k, chunk_rows=250_000, seed=4)
    kw = dict(covariance_type=covariance_type, random_state=0, tol=1e-3, max_iter=100)
    t0 = time.perf_counter()
    sel = daskgmm.select_model(str(path), n_components=ks, covariance_types=[covariance_type],
                               random_state=0, tol=1e-3, max_iter=100, array_name="X",
                               cache=False)
    shared = time.perf_counter() - t0
    t0 = time.perf_counter()
    passes = 0
    for k in ks:
        gm = daskgmm.GaussianMixture(k, array_name="X", cache=False, **kw).fit(str(path))
        passes += gm.n_passes_ + 1  # + the pass of bic()
        gm.bic(str(path))
    sequential = time.perf_counter() - t0
    X = zarr.open_array(str(path / "X"), mode="r")[:]
    t0 = time.perf_counter()
    for k in ks:
        SkGaussianMixture(k, **kw).fit(X).bic(X)
    sk = time.perf_counter() - t0
    row = {
        "rows": n_samples, "features": n_features, "candidates": len(ks),
        "covariance_type": covariance_type, "true_k": true_k,
        "selected_k": int(sel.best_.n_components),
        "shared_passes": sel.n_passes_, "shared_s": round(shared, 1),
        "sequential_passes": passes, "sequential_s": round(sequential, 1),
        "sklearn_sequential_s": round(sk, 1),
        "shared_over_sequential": round(shared / sequential, 3),
        "shared_over_sklearn": round(shared / sk, 3),
    }
    print(json.dumps(row), flush=True)
    return row


def measure_one(path, covariance_type, n_components, iterations):
    """Seconds per iteration of the daskgmm on ``sys.path``, on data persisted once in the
    workers' memory (a dask array) and streamed from Zarr (run in a subprocess by
    :func:`baseline_case`); prints one JSON line."""
    import dask
    import dask.array as da
    import zarr
    from distributed import Client, LocalCluster, wait
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    import daskgmm

    X = zarr.open_array(str(Path(path) / "X"), mode="r")[:]
    start = SkGaussianMixture(n_components, covariance_type=covariance_type, max_iter=1,
                              init_params="random_from_data", random_state=0).fit(X)
    init = dict(weights_init=start.weights_, means_init=start.means_,
                precisions_init=start.precisions_)
    del X

    def ours(data, chunk_rows):
        def fit(m):
            daskgmm.GaussianMixture(
                n_components, covariance_type=covariance_type, max_iter=m, tol=0.0,
                cache=False, array_name="X", chunk_rows=chunk_rows, **init,
            ).fit(data)
        return fit

    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="6GiB",
                      dashboard_address=None) as cluster, Client(cluster):
        persisted = dask.persist(da.from_zarr(str(Path(path) / "X")))[0]
        wait(persisted)
        ours(persisted, None)(1)  # warm-up: the workers import and compile what tasks need
        row = {"persisted": per_iteration(ours(persisted, None), iterations),
               "zarr": per_iteration(ours(str(path), None), iterations),
               "daskgmm": str(Path(daskgmm.__file__).parent)}
    print(json.dumps(row), flush=True)


def baseline_case(root, revision, n_samples, n_features, n_components, covariance_type,
                  iterations, repeats=3):
    """This checkout against ``revision`` on the same data, alternated in one run."""
    import subprocess
    import sys

    from daskgmm.synthetic import write_mixture_zarr

    repo = Path(__file__).resolve().parents[1]
    tree = root / f"baseline-{revision}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree),
                        revision], check=True, capture_output=True)
    path = root / f"baseline-{n_samples}x{n_features}.zarr"
    if not path.exists():
        write_mixture_zarr(path, n_samples, n_features, n_components, chunk_rows=250_000,
                           seed=1)
    runs = {"baseline": [], "current": []}
    sides = [("baseline", tree), ("current", repo)]
    for i in range(repeats):  # which side runs first alternates: no side always comes second
        for who, code in (sides if i % 2 == 0 else sides[::-1]):
            out = subprocess.run(
                [sys.executable, __file__, "--measure", str(path), covariance_type,
                 str(n_components), str(iterations)],
                env={**os.environ, "PYTHONPATH": str(code)},
                capture_output=True, text=True, check=True)
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            assert measured["daskgmm"] == str(code / "daskgmm"), measured
            runs[who].append(measured)
    row = {"rows": n_samples, "features": n_features, "components": n_components,
           "covariance_type": covariance_type, "revision": revision}
    for mode in ("persisted", "zarr"):
        base = min(r[mode] for r in runs["baseline"])  # the least disturbed run of each
        current = min(r[mode] for r in runs["current"])
        row.update({f"baseline_{mode}_s": round(base, 3), f"current_{mode}_s": round(current, 3),
                    f"{mode}_ratio": round(current / base, 3)})
    print(json.dumps(row), flush=True)
    subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                   capture_output=True)
    return row


# The targets of the performance issue, as ratios to scikit-learn: persisted / Zarr (None:
# none set), by covariance type and number of features (float64 input).
TARGETS = {("full", 16): (0.15, 0.2), ("diag", 16): (0.3, 0.45), ("full", 64): (0.2, None)}


def machine_info():
    """The machine, the versions and the date, for the report."""
    from importlib.metadata import PackageNotFoundError, version

    from threadpoolctl import threadpool_info

    sys.path.insert(0, str(HERE))
    from spark_peer import java_executable, java_major

    def read(path, key):
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return None

    memory = read("/proc/meminfo", "MemTotal")
    versions = {}
    for name in ("daskgmm", "numpy", "scipy", "scikit-learn", "dask", "distributed", "zarr",
                 "pyarrow", "pyspark"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    blas = [f"{i['internal_api']} {i['version']}" for i in threadpool_info()
            if i.get("user_api") == "blas"]
    repo = HERE.parent
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "daskgmm"],
                             capture_output=True, text=True).stdout.strip()
    java = java_executable()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": read("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cpus": os.cpu_count(),
        "memory_gib": round(int(memory.split()[0]) / 2**20, 1) if memory else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "numpy_blas": ", ".join(blas) or "unknown",
        "commit": commit + (" with uncommitted changes in daskgmm/" if changed else ""),
        "java": f"Java {java_major(java)} ({java})" if java else "not found",
    }


def ratio_text(ratio):
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3f}x"


def seconds_text(seconds):
    return f"{seconds:.3g} s"


def case_label(r):
    label = f"{r['rows']:,} x {r['features']}, k={r['components']}, {r['covariance_type']}"
    return label + (f", {r['dtype']} input" if r.get("dtype", "float64") != "float64" else "")


def speed_cell(r, key):
    """A system's cell of the speed table: ratio to scikit-learn (seconds per iteration)."""
    if key == "sklearn":
        return f"1 ({seconds_text(r['sklearn_s_per_iter'])})"
    if f"{key}_s_per_iter" in r:
        return f"{ratio_text(r[f'{key}_ratio'])} ({seconds_text(r[f'{key}_s_per_iter'])})"
    if key == "spark":
        status = r.get("spark_status", "not measured")
        return "n/a (full only)" if status == SPARK_FULL_ONLY else status.replace("|", "/")
    return "not measured"


def machine_lines(machine):
    if "versions" not in machine:  # a results file from before the versions were kept
        return [f"Machine: {json.dumps(machine)}."]
    v = machine["versions"]
    return [
        f"Measured {machine['date']} on {machine['cpu']}, {machine['cpus']} cores, "
        f"{machine['memory_gib']} GiB; {machine['os']}.",
        f"daskgmm {v['daskgmm']} at `{machine['commit']}`; Python {machine['python']}, "
        f"numpy {v['numpy']} ({machine['numpy_blas']}), scipy {v['scipy']}, scikit-learn "
        f"{v['scikit-learn']}, dask {v['dask']}, distributed {v['distributed']}, zarr "
        f"{v['zarr']}, pyarrow {v['pyarrow']}; pyspark {v['pyspark']}, {machine['java']}.",
    ]


def speed_lines(speed):
    systems = [s for s in SYSTEMS if s[0] != "spark" or any("spark_status" in r for r in speed)]
    lines = [
        "## Seconds per EM iteration, as a ratio to scikit-learn",
        "",
        "Each cell: the system's seconds per EM iteration over scikit-learn's in the same run "
        "on the same data (lower is better; 0.25x = four times as fast), then its seconds per "
        "iteration. scikit-learn and daskgmm start from the same parameters.",
        "",
        "| data, k, covariance | " + " | ".join(name for _, name in systems)
        + " | target (persisted / Zarr) |",
        "|---" * (len(systems) + 2) + "|",
    ]
    for r in speed:
        target = TARGETS.get((r["covariance_type"], r["features"]))
        target = (" / ".join("none set" if t is None else ratio_text(t) for t in target)
                  if target and r.get("dtype", "float64") == "float64" else "none set")
        lines.append(f"| {case_label(r)} | "
                     + " | ".join(speed_cell(r, key) for key, _ in systems) + f" | {target} |")
    notes = []
    codecs = {c for r in speed for c in r.get("zarr_codecs", [])}
    if codecs:
        notes.append(f"Zarr: chunks of 250,000 rows compressed with {', '.join(sorted(codecs))}, "
                     "read on every pass by the streaming fit; the persisted fit reads them "
                     "once per fit into the workers' memory, a read in both timed fits that "
                     "cancels out.")
    for r in speed:
        if r.get("dtype", "float64") == "float64":
            continue
        twin = next((t for t in speed if t.get("dtype", "float64") == "float64"
                     and all(t[k] == r[k] for k in ("rows", "features", "components",
                                                    "covariance_type"))), None)
        note = (f"{case_label(r)}: the same rows and start stored as {r['dtype']}; "
                f"scikit-learn fits the {r['dtype']} array (its fitted means are "
                f"{r.get('sklearn_means_dtype')}); "
                f"daskgmm reads the {r['dtype']} Zarr array and computes in "
                f"{r.get('daskgmm_compute_dtype')} (its fitted means are "
                f"{r.get('daskgmm_means_dtype')})")
        if r.get("daskgmm_compute_dtype") == "float64":
            note += ": it does not keep float32, so its compute is the float64 work"
        if twin:
            keys = [(f"{key}_s_per_iter", name) for key, name in SYSTEMS]
            note += ". Seconds per iteration over the float64 case's: " + ", ".join(
                f"{name} {r[k] / twin[k]:.2f}" for k, name in keys if k in r and twin.get(k))
        notes.append(note + ".")
    spark = [r for r in speed if r.get("spark_status") not in (None, SPARK_FULL_ONLY)]
    ok = [r for r in spark if r["spark_status"] == "ok"]
    if spark:
        note = ("Spark MLlib: `pyspark.ml.clustering.GaussianMixture(k, tol=0.0, seed=0)` on "
                "`local[2]`, in its own process, measured at the x 16, k=8, full, float64 "
                "cases, on a Parquet copy of the same rows, "
                "read, assembled into a vector column, repartitioned and cached before "
                "anything is timed; seconds per iteration = (t(maxIter=11) - t(maxIter=1)) / "
                "10 after a warm-up fit. Spark fits full covariances only (the other rows say "
                "n/a). It starts from its own initialisation (means and variances of random "
                "samples), not from the parameters scikit-learn and daskgmm start from: the "
                "work per iteration is the same, the path to the fit is not.")
        early = [r for r in ok if r["spark_details"].get("n_iter", 11) < 11]
        if early:
            note += (" Spark stopped before maxIter=11 when an iteration left its "
                     "log-likelihood exactly unchanged (" + ", ".join(
                         f"{r['rows']:,} rows: {r['spark_details']['n_iter']} iterations"
                         for r in early) + "); the time is divided by the iterations it ran.")
        if ok:
            d = ok[0]["spark_details"]
            note += (f" Spark {d.get('spark')} (pyspark {d.get('pyspark')}) on Java "
                     f"{d.get('java')}, BLAS: {d.get('blas')}; " + "; ".join(
                         f"{r['rows']:,} rows: {r['spark_details'].get('partitions')} "
                         f"partitions, driver memory {r['spark_details'].get('driver_memory')}"
                         for r in ok) + ".")
        notes.append(note)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return lines


def fixed_cost_lines(f):
    lines = [
        "## Fixed cost of one pass",
        "",
        f"{f['rows']:,} x {f['features']} rows, k={f['components']} {f['covariance_type']}, "
        "persisted in the workers in a number of chunks; per EM iteration: the wall seconds, "
        "the kernels' compute (E-step and statistics, timed on the workers chunk by chunk "
        "and summed), and the fixed cost = wall - compute / 2 workers.",
        "",
        "| chunks | s/iter | compute s/iter (summed over chunks) | fixed s/iter |",
        "|---|---|---|---|",
    ]
    for p in f["points"]:
        lines.append(f"| {p['chunks']} | {p['s_per_iter'] * 1000:.1f} ms "
                     f"| {p['kernel_s_per_iter'] * 1000:.1f} ms "
                     f"| {p['fixed_s_per_iter'] * 1000:.1f} ms |")
    lines += ["", f"Least-squares fit: fixed cost per pass = {f['a_s'] * 1000:.1f} ms "
              f"{_signed(f['b_s_per_chunk'] * 1000)} ms x chunks."]
    return lines


def write_report(results, path):
    """RESULTS.md beside the JSON: the machine, then tables of ratios (1 = scikit-learn)."""
    lines = ["# Benchmark results", ""]
    if results.get("quick"):
        lines += ["**`--quick` smoke run: small sizes; these numbers say nothing about "
                  "speed.**", ""]
    lines += [
        "Written by `make bench` (`python benchmarks/run.py`; its docstring has the method). "
        "The plot of the speed cases is [results.png](results.png).",
        "",
        *machine_lines(results.get("machine", {})),
    ]
    if results.get("speed"):
        lines += ["", *speed_lines(results["speed"])]
    if results.get("fixed_cost"):
        lines += ["", *fixed_cost_lines(results["fixed_cost"])]
    if "selection" in results:
        lines += [
            "",
            "## Model selection",
            "",
            "A grid of candidates read from Zarr (streaming): select_model's "
            "shared passes against fitting the candidates one after another (each fit plus "
            "its bic() pass), and against scikit-learn fitting them one after another in "
            "memory:",
            "",
            "| data | candidates | selected k (true k) | shared: passes, s | one after another: "
            "passes, s | scikit-learn one after another s |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["selection"]:
            lines.append(
                f"| {r['rows']:,} x {r['features']} | {r['candidates']} x "
                f"{r['covariance_type']} | {r['selected_k']} ({r['true_k']}) "
                f"| {r['shared_passes']}, {r['shared_s']} "
                f"| {r['sequential_passes']}, {r['sequential_s']} "
                f"| {r['sklearn_sequential_s']} |"
            )
    if results.get("baseline"):
        revision = results["baseline"][0]["revision"]
        lines += [
            "",
            "## Against an earlier revision",
            "",
            f"Against the code of `{revision}` (the same cases, each side in its own process, "
            "alternated three times in one run; the fastest of each; ratio = this checkout over "
            f"`{revision}`, 1.0 = no change; on this shared 2-core machine the same code "
            "measures up to 25% apart from one run to the next, so ratios inside 0.8 to 1.25 "
            "are no change):",
            "",
            "| rows x features, k, covariance | in memory s/iter: before, now (ratio) "
            "| Zarr s/iter: before, now (ratio) |",
            "|---|---|---|",
        ]
        for r in results["baseline"]:
            lines.append(
                f"| {r['rows']:,} x {r['features']}, k={r['components']}, "
                f"{r['covariance_type']} | {r['baseline_persisted_s']}, "
                f"{r['current_persisted_s']} ({r['persisted_ratio']}) "
                f"| {r['baseline_zarr_s']}, {r['current_zarr_s']} ({r['zarr_ratio']}) |"
            )
    path.write_text("\n".join(lines) + "\n")


COLOURS = {"sklearn": "#7f7f7f", "persisted": "#1f77b4", "zarr": "#2ca02c", "spark": "#d62728"}


def write_plot(results, path):
    """results.png beside the JSON: seconds per iteration by case, the systems side by side
    (horizontal grouped bars, each labelled with its ratio to scikit-learn), and the fixed
    cost of a pass against the number of chunks with its fitted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = results.get("speed", [])
    fixed = results.get("fixed_cost")
    spark_rows = [r for r in speed if r.get("spark_status") not in (None, SPARK_FULL_ONLY)]
    systems = [(k, n) for k, n in SYSTEMS
               if any(f"{k}_s_per_iter" in r for r in speed) or (k == "spark" and spark_rows)]
    heights = ([1.6 + 0.2 * len(speed) * (len(systems) + 1)] if speed else []) + (
        [3.0] if fixed else [])
    if not heights:
        return False
    fig, axes = plt.subplots(len(heights), 1, figsize=(10, sum(heights) + 0.8),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    axes = [row[0] for row in axes]
    if speed:
        plot_speed(axes.pop(0), speed, systems, results.get("quick"))
    if fixed:
        plot_fixed_cost(axes.pop(0), fixed)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_speed(ax, speed, systems, quick):
    from matplotlib.ticker import FuncFormatter, LogLocator

    spark_rows = [r for r in speed if r.get("spark_status") not in (None, SPARK_FULL_ONLY)]
    values = [r[f"{k}_s_per_iter"] for r in speed for k, _ in systems if f"{k}_s_per_iter" in r]
    log = bool(values) and max(values) / min(values) > 20
    low, high = ((min(values) / 1.6, max(values) * 3) if log else (0, max(values or [1]) * 1.25))
    bar = 0.8 / max(1, len(systems))
    for j, (key, name) in enumerate(systems):
        ys, widths = [], []
        for i, r in enumerate(speed):
            y = i + (j - (len(systems) - 1) / 2) * bar
            if f"{key}_s_per_iter" in r:
                ys.append(y)
                widths.append(r[f"{key}_s_per_iter"])
                text = (seconds_text(r["sklearn_s_per_iter"]) if key == "sklearn"
                        else ratio_text(r[f"{key}_ratio"]))
                ax.text(widths[-1] * (1.04 if log else 1) + (0 if log else high * 0.005), y,
                        text, va="center", fontsize=7.5)
            elif key == "spark" and r in spark_rows:  # skipped or failed: say so in place
                ax.text(low * (1.05 if log else 1) + (0 if log else high * 0.005), y,
                        f"Spark MLlib {r['spark_status'][:70]}", va="center", fontsize=7.5,
                        color=COLOURS["spark"])
        label = "Spark MLlib (local[2], full covariances only)" if key == "spark" else name
        ax.barh(ys, widths, height=bar * 0.92, color=COLOURS[key], label=label)
    ax.set_yticks(range(len(speed)), [case_label(r) for r in speed], fontsize=9)
    ax.set_ylim(len(speed) - 0.5, -0.5)
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    ax.set_xlim(low, high)
    ax.set_xlabel("seconds per EM iteration (lower is better)" + (", log scale" if log else ""))
    title = "Seconds per EM iteration; bar labels: ratio to scikit-learn (its own: seconds)"
    if quick:
        title = "--quick smoke run (small sizes)\n" + title
    ax.set_title(title, fontsize=10, pad=36)  # room for the legend above the bars
    ax.grid(axis="x", which="major", alpha=0.3)
    ax.legend(fontsize=8.5, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2,
              frameon=False)


def _signed(value):
    """``+ 1.23`` or ``- 1.23`` (no ``+ -0.00``)."""
    value = 0.0 if abs(value) < 0.005 else value
    return f"{'-' if value < 0 else '+'} {abs(value):.2f}"


def plot_fixed_cost(ax, fixed):
    chunks = [p["chunks"] for p in fixed["points"]]
    ax.plot(chunks, [p["fixed_s_per_iter"] * 1000 for p in fixed["points"]], "o",
            color=COLOURS["persisted"], label="measured: wall - compute / 2 workers")
    line = [0, max(chunks) * 1.05]
    ax.plot(line, [(fixed["a_s"] + fixed["b_s_per_chunk"] * c) * 1000 for c in line], "-",
            color="black", lw=1, label=f"fit: {fixed['a_s'] * 1000:.1f} ms "
            f"{_signed(fixed['b_s_per_chunk'] * 1000)} ms x chunks")
    ax.set_xlabel("chunks")
    ax.set_ylabel("ms per pass")
    top = max(p["fixed_s_per_iter"] for p in fixed["points"]) * 1000
    ax.set_ylim(0, top * 1.4)  # the points below the legend
    ax.set_title(f"daskgmm's fixed cost of one pass ({fixed['rows']:,} x {fixed['features']}"
                 f", k={fixed['components']} {fixed['covariance_type']}, persisted)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


def warm_up(root):
    """One small fit of every covariance type, persisted and streaming: the workers import
    and compile what the tasks need before anything is timed."""
    import daskgmm

    path, _ = mixture_data(root, 20_000, 4, 2)
    for covariance_type in COVARIANCE_TYPES:
        for cache in (True, False):
            daskgmm.GaussianMixture(2, covariance_type=covariance_type, max_iter=2,
                                    cache=cache, array_name="X", random_state=0).fit(str(path))


def main(argv=None):
    from distributed import Client, LocalCluster
    from sklearn.exceptions import ConvergenceWarning

    warnings.simplefilter("ignore", ConvergenceWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", choices=["speed", "fixed", "selection", "baseline"])
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="also compare the speed cases with the code of git revision REV")
    parser.add_argument("--measure", nargs=4, metavar=("PATH", "COV", "K", "ITER"),
                        help=argparse.SUPPRESS)  # one side of --baseline, in a subprocess
    parser.add_argument("--out", type=Path, default=HERE / "results.json",
                        help="the JSON to write; RESULTS.md and results.png go beside it")
    parser.add_argument("--data", type=Path, default=None, help="scratch folder for data")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite RESULTS.md and results.png from the --out JSON "
                             "without measuring")
    args = parser.parse_args(argv)
    if args.measure:
        path, cov, k, iterations = args.measure
        measure_one(path, cov, int(k), int(iterations))
        return
    report, plot = args.out.with_name("RESULTS.md"), args.out.with_name("results.png")
    if args.report_only:
        results = json.loads(args.out.read_text())
        write_report(results, report)
        write_plot(results, plot)
        return
    root = args.data or Path(tempfile.mkdtemp(prefix="daskgmm-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.only and args.out.exists():  # keep the sections this run does not measure
        results = json.loads(args.out.read_text())
    results["machine"] = machine_info()
    results["quick"] = args.quick
    scale = 10 if args.quick else 1

    def cluster():
        return LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="6GiB",
                            dashboard_address=None)

    if args.only in (None, "speed"):
        m1, m4 = 1_000_000 // scale, 4_000_000 // scale
        cases = [
            *[(m1, 16, 8, cov, 5) for cov in COVARIANCE_TYPES],
            (m1, 16, 8, "full", 5, "float32"),
            *[(m4, 16, 8, cov, 3) for cov in COVARIANCE_TYPES],
            (m1, 64, 16, "full", 2),
        ]
        with cluster() as c, Client(c):
            warm_up(root)
            results["speed"] = []
            for rows, features, k, cov, iterations, *dtype in cases:
                results["speed"].append(speed_case(
                    root, rows, features, k, cov, iterations, *dtype,
                    spark=(features, k, cov, dtype) == (16, 8, "full", [])))
    if args.only in (None, "fixed"):
        with cluster() as c, Client(c):
            results["fixed_cost"] = fixed_cost_case(16_000, 16, 8, (8, 24, 80),
                                                    5 if args.quick else 10)
    if args.only in (None, "selection"):
        with cluster() as c, Client(c):
            results["selection"] = [
                selection_case(root, 1_000_000 // scale, 8, 5, list(range(1, 11)), "full")
            ]
    if args.baseline and args.only in (None, "baseline"):
        cases = [(1_000_000 // scale, 16, 8, "full", 8), (1_000_000 // scale, 16, 8, "diag", 8)]
        results["baseline"] = [baseline_case(root, args.baseline, *case) for case in cases]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, report)
    wrote = [args.out, report] + ([plot] if write_plot(results, plot) else [])
    print("wrote " + ", ".join(map(str, wrote)))
    if args.data is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
