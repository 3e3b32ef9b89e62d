"""Peak worker memory of a whole job (fit, threshold, publication) on data larger than the
workers' memory, from every kind of input, at 1x, 4x and 16x the data.

    python benchmarks/memory.py [--quick] [--sizes 1 4 16] [--out benchmarks/memory.json]

A LocalCluster of 2 worker processes, 1 thread and 400 MiB ``memory_limit`` each (the
workers' total is 0.78 GiB; 512 MiB for Parquet input, see ``PARQUET_MEMORY_LIMIT``);
1x is 0.8 GB of float64 (6,250,000 x 16, stored in chunks of 125,000 rows). For each
input (a Zarr path, ``da.from_zarr``, a Parquet path,
``dd.read_parquet(..., blocksize=...).to_dask_array(lengths=True)`` with the block size
daskgmm's ``ChunkMemoryWarning`` recommends for these workers) and each size, on a new
cluster, the job runs as the nightly does: ``fit`` with the default k-means
initialisation (k=4, ``full``, 3 EM iterations, ``cache=False``), ``set_threshold`` (a
sketch pass) and ``write_scores`` (a scoring pass that publishes). Memory is each worker
process's own peak resident set size as its kernel counts it (``VmHWM`` of
``/proc/self/status``, read in the worker through ``client.run``), after each step, so
the peak of every phase is known and nothing is missed between samples.

A worker that pauses (above 80% of its limit) or restarts (95%) spills or loses its
chunks: the run checks that the scheduler saw the same two workers from start to end,
and reads the workers' and nannies' own logs for pausing, spilling and restart lines.

Parquet and the dataframe input are measured at 1x and 4x only: writing 12.8 GB of
Parquet costs more time than it teaches. The report is written to
``benchmarks/MEMORY.md`` next to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

# Only the standard library at the top: the workers are spawned processes that re-import
# this script, and whatever it imports would sit in every worker's memory.

N_FEATURES = 16
BASE_ROWS = 6_250_000  # 0.8 GB of float64
CHUNK_ROWS = 125_000  # 16 MB per stored chunk
MEMORY_LIMIT = "400MiB"
# Parquet: pyarrow's libraries and allocator take some 100 MiB more per worker, so that a
# 16 MB row group does not fit 400 MiB by daskgmm's own rule (ChunkBudget: the largest
# chunk is (0.8 M - 288 MiB) / 5); 512 MiB is the smallest round size where it does.
PARQUET_MEMORY_LIMIT = "512MiB"
# What a worker or nanny logs when memory went wrong: pausing (80%), restarting (95%),
# spilling to disk (70% of managed memory). "Unmanaged memory use is high" is not among
# them: it is a hint distributed logs when process memory exceeds its managed data.
WARN_WORDS = ("Pausing worker", "Restarting worker", "exceeded 95% memory budget", "spill")


def peak_rss_mib():
    """This process's peak resident set size as the kernel counts it (VmHWM of
    /proc/self/status). Not ``getrusage``'s ``ru_maxrss``: a worker process is forked from
    its nanny's process and ``ru_maxrss`` carries that parent's peak across fork and exec.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    raise RuntimeError("no VmHWM in /proc/self/status: this needs Linux")


def write_data(root, factor, quick):
    """The Zarr group (and, at 1x and 4x, a Parquet dataset of the same rows)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zarr

    from daskgmm.synthetic import write_mixture_zarr

    rows = (BASE_ROWS // (10 if quick else 1)) * factor
    zpath = root / f"x{factor}.zarr"
    if not zpath.exists():
        write_mixture_zarr(zpath, rows, N_FEATURES, 4, chunk_rows=CHUNK_ROWS, seed=2)
    ppath = root / f"x{factor}.parquet"
    if factor <= 4 and not ppath.exists():
        z = zarr.open_array(str(zpath / "X"), mode="r")
        ppath.mkdir()
        names = [f"f{j}" for j in range(N_FEATURES)]
        per_file = 8 * CHUNK_ROWS  # 128 MB files of 8 row groups of 125,000 rows
        for i, start in enumerate(range(0, rows, per_file)):
            block = np.asarray(z[start:start + per_file])
            table = pa.table({n: block[:, j] for j, n in enumerate(names)})
            pq.write_table(table, ppath / f"part-{i:04d}.parquet", row_group_size=CHUNK_ROWS)
    return rows, zpath, ppath


def inputs(zpath, ppath, factor):
    import dask.array as da
    import dask.dataframe as dd

    out = [("Zarr path", lambda: str(zpath), {"array_name": "X"}),
           ("da.from_zarr", lambda: da.from_zarr(str(zpath), component="X"), {})]
    if factor <= 4:
        names = [f"f{j}" for j in range(N_FEATURES)]
        out += [("Parquet path", lambda: str(ppath), {"columns": names}),
                ("dd.read_parquet(..., blocksize='25MiB').to_dask_array(lengths=True)",
                 lambda: dd.read_parquet(str(ppath), blocksize="25MiB").to_dask_array(
                     lengths=True), {})]
    return out


def logs_with(client, words):
    found = []
    for nanny in (False, True):
        for address, lines in client.get_worker_logs(nanny=nanny).items():
            for _, line in lines:
                if any(w in line for w in words):
                    found.append(f"{'nanny' if nanny else 'worker'} {address}: {line[:160]}")
    for _, line in client.get_scheduler_logs():
        if "Remove worker" in line or "Lost all workers" in line:
            found.append(f"scheduler: {line[:160]}")
    return found


def run_case(root, label, make_input, read_kw, rows, factor):
    """One case on its own new cluster: fresh worker processes, fresh logs."""
    from distributed import Client, LocalCluster

    limit = PARQUET_MEMORY_LIMIT if "parquet" in label.lower() else MEMORY_LIMIT
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=limit,
                      processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        return _measure(client, root, label, make_input, read_kw, rows, factor)


def _measure(client, root, label, make_input, read_kw, rows, factor):
    import numpy as np

    import daskgmm

    info = client.scheduler_info()["workers"]
    workers = sorted(info)
    baseline = client.run(peak_rss_mib)
    X = make_input()
    phases = {}
    gm = daskgmm.GaussianMixture(4, covariance_type="full", max_iter=3, tol=0.0,
                                 random_state=0, cache=False, **read_kw)
    t0 = time.perf_counter()
    gm.fit(X)
    phases["fit"] = client.run(peak_rss_mib)
    gm.set_threshold(X, contamination=0.01)
    phases["threshold"] = client.run(peak_rss_mib)
    target = root / f"scores-{factor}-{len(os.listdir(root))}"
    daskgmm.write_scores(gm, X, str(target),
                         run_id="bench", format="zarr" if "Zarr" in label else "parquet")
    phases["publish"] = client.run(peak_rss_mib)
    seconds = time.perf_counter() - t0
    shutil.rmtree(target, ignore_errors=True)
    after = sorted(client.scheduler_info()["workers"])
    notes = logs_with(client, WARN_WORDS)
    per_worker = [phases["publish"][w] for w in workers if w in phases["publish"]]
    row = {
        "input": label, "factor": factor, "rows": rows,
        "memory_limit": f"{min(w['memory_limit'] for w in info.values()) // 2**20}MiB",
        "data_GB": round(rows * N_FEATURES * 8 / 1e9, 2),
        "baseline_MiB": round(float(np.max(list(baseline.values()))), 1),
        "peak_MiB": {p: round(max(v.values()), 1) for p, v in phases.items()},
        "peak_per_worker_MiB": per_worker,
        "seconds": round(seconds, 1), "passes": gm.n_passes_,
        "same_workers": workers == after, "log_lines": notes,
    }
    print(json.dumps(row), flush=True)
    return row


def write_report(results, path):
    lines = [
        "# Peak worker memory",
        "",
        "Written by `python benchmarks/memory.py` (see its docstring for the method). Two "
        f"worker processes, 1 thread and {results['memory_limit']} `memory_limit` each "
        f"({results['parquet_memory_limit']} for Parquet input, whose 16 MB row groups do "
        "not fit 400 MiB by daskgmm's own rule); peak "
        "resident memory of each worker process from its own kernel accounting "
        "(`VmHWM` of /proc/self/status), after each step of the job: fit (default k-means "
        "initialisation, k=4 `full`, 3 EM iterations, `cache=False`), `set_threshold`, "
        "`write_scores`. The peak is cumulative: the publish column is the whole job's.",
        "",
        "| input | data | memory_limit | baseline MiB | peak MiB after fit / threshold / "
        "publish | passes | seconds | workers restarted or paused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["cases"]:
        p = r["peak_MiB"]
        trouble = "none" if r["same_workers"] and not r["log_lines"] else (
            "; ".join(r["log_lines"][:3]) or "a worker left")
        lines.append(
            f"| {r['input']} | {r['factor']}x, {r['data_GB']} GB | {r['memory_limit']} "
            f"| {r['baseline_MiB']} "
            f"| {p['fit']} / {p['threshold']} / {p['publish']} | {r['passes']} "
            f"| {r['seconds']} | {trouble} |"
        )
    lines += ["", "Growth of the whole job's peak from the smallest to the largest data, "
                  "per input:", ""]
    for label, growth in results["growth"].items():
        lines.append(f"- {label}: {growth}")
    lines += ["", f"Machine: {results['machine']}.", ""]
    path.write_text("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the data")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/memory.json"))
    parser.add_argument("--only", nargs="+", metavar="WORD",
                        help="only the inputs whose label contains one of these words")
    parser.add_argument("--data", type=Path, default=None, help="scratch folder for data")
    args = parser.parse_args(argv)
    root = args.data or Path(tempfile.mkdtemp(prefix="daskgmm-memory-"))
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for factor in args.sizes:
        rows, zpath, ppath = write_data(root, factor, args.quick)
        for label, make_input, read_kw in inputs(zpath, ppath, factor):
            if args.only and not any(o.lower() in label.lower() for o in args.only):
                continue
            cases.append(run_case(root, label, make_input, read_kw, rows, factor))
        if args.data is None:
            shutil.rmtree(zpath, ignore_errors=True)
            shutil.rmtree(ppath, ignore_errors=True)
    growth = {}
    for label in dict.fromkeys(c["input"] for c in cases):
        mine = sorted((c for c in cases if c["input"] == label), key=lambda c: c["factor"])
        if len(mine) > 1:
            lo, hi = mine[0], mine[-1]
            growth[label] = (f"{hi['peak_MiB']['publish'] / lo['peak_MiB']['publish']:.2f}x "
                             f"for {hi['factor'] // lo['factor']}x the data")
    results = {"memory_limit": MEMORY_LIMIT, "parquet_memory_limit": PARQUET_MEMORY_LIMIT,
               "cases": cases, "growth": growth,
               "machine": f"Python {platform.python_version()}, {os.cpu_count()} CPUs"}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.out.with_name("MEMORY.md"))
    print(f"wrote {args.out} and {args.out.with_name('MEMORY.md')}")
    if args.data is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
