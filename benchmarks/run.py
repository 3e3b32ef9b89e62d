"""Speed of daskgmm against scikit-learn, measured side by side in one run.

    python benchmarks/run.py [--quick] [--only speed|selection|baseline]
                             [--baseline REV] [--out benchmarks/results.json]

Speed: seconds per EM iteration on the same data from the same initial parameters:
scikit-learn in memory (its default threading, both cores) and daskgmm on a LocalCluster
of 2 single-threaded worker processes, (a) with the data persisted in the workers'
memory and (b) streaming from compressed Zarr on every pass. A fit's cost per iteration is
(time of a fit with 1 + m iterations - time with 1 iteration) / m, so initialisation and
start-up cancel out.

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
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

# Only the standard library at the top: the workers of a LocalCluster are spawned
# processes that re-import this script, and a module imported here would sit in every
# worker's memory (scikit-learn and pandas alone take about 100 MiB) and distort the
# memory measurements. The functions import what they use.


def per_iteration(fit, iterations):
    """Seconds per iteration: (t(1 + m) - t(1)) / m."""
    t0 = time.perf_counter()
    fit(1)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit(1 + iterations)
    more = time.perf_counter() - t0
    return max(more - one, 1e-9) / iterations


def speed_case(root, n_samples, n_features, n_components, covariance_type, iterations):
    import zarr
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    import daskgmm
    from daskgmm.synthetic import write_mixture_zarr

    path = root / f"speed-{n_samples}x{n_features}.zarr"
    if not path.exists():
        write_mixture_zarr(path, n_samples, n_features, n_components, chunk_rows=250_000, seed=1)
    X = zarr.open_array(str(path / "X"), mode="r")[:]
    start = SkGaussianMixture(n_components, covariance_type=covariance_type, max_iter=1,
                              init_params="random_from_data", random_state=0).fit(X)
    init = dict(weights_init=start.weights_, means_init=start.means_,
                precisions_init=start.precisions_)

    def sk_fit(m):
        SkGaussianMixture(n_components, covariance_type=covariance_type, max_iter=m, tol=0.0,
                          **init).fit(X)

    def ours(cache, chunk_rows):
        def fit(m):
            daskgmm.GaussianMixture(
                n_components, covariance_type=covariance_type, max_iter=m, tol=0.0,
                cache=cache, array_name="X", chunk_rows=chunk_rows, **init,
            ).fit(str(path))
        return fit

    sk = per_iteration(sk_fit, iterations)
    persisted = per_iteration(ours(True, "auto"), iterations)
    streamed = per_iteration(ours(False, None), iterations)
    row = {
        "rows": n_samples, "features": n_features, "components": n_components,
        "covariance_type": covariance_type,
        "sklearn_s_per_iter": round(sk, 3),
        "persisted_s_per_iter": round(persisted, 3),
        "zarr_s_per_iter": round(streamed, 3),
        "persisted_ratio": round(persisted / sk, 3),
        "zarr_ratio": round(streamed / sk, 3),
    }
    print(json.dumps(row), flush=True)
    return row


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


TARGETS = {"full": (0.25, 0.35), "diag": (0.5, 0.75)}


def write_report(results, path):
    """benchmarks/RESULTS.md: the ratios as a table (lower is better, 1.0 = scikit-learn)."""
    lines = [
        "# Benchmark results",
        "",
        "Written by `python benchmarks/run.py` (see its docstring for the method). Ratios are",
        "daskgmm's seconds per EM iteration over scikit-learn's in the same run, on the same",
        "data from the same initial parameters (lower is better; 0.25 = four times as fast).",
        "",
        "| rows x features, k, covariance | scikit-learn s/iter | persisted s/iter (ratio) "
        "| Zarr s/iter (ratio) | target ratios (persisted / Zarr) |",
        "|---|---|---|---|---|",
    ]
    for r in results.get("speed", []):
        target = TARGETS.get(r["covariance_type"]) if r["features"] == 16 else None
        target = f"{target[0]} / {target[1]}" if target else "none set"
        lines.append(
            f"| {r['rows']:,} x {r['features']}, k={r['components']}, {r['covariance_type']} "
            f"| {r['sklearn_s_per_iter']} | {r['persisted_s_per_iter']} "
            f"({r['persisted_ratio']}) | {r['zarr_s_per_iter']} ({r['zarr_ratio']}) "
            f"| {target} |"
        )
    if "selection" in results:
        lines += [
            "",
            "Model selection, a grid of candidates read from Zarr (streaming): select_model's "
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


def main(argv=None):
    from distributed import Client, LocalCluster
    from sklearn.exceptions import ConvergenceWarning

    import daskgmm

    warnings.simplefilter("ignore", ConvergenceWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", choices=["speed", "selection", "baseline"])
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="also compare the speed cases with the code of git revision REV")
    parser.add_argument("--measure", nargs=4, metavar=("PATH", "COV", "K", "ITER"),
                        help=argparse.SUPPRESS)  # one side of --baseline, in a subprocess
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument("--data", type=Path, default=None, help="scratch folder for data")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite RESULTS.md from the --out JSON without measuring")
    args = parser.parse_args(argv)
    if args.measure:
        path, cov, k, iterations = args.measure
        measure_one(path, cov, int(k), int(iterations))
        return
    report = args.out.with_name("RESULTS.md")
    if args.report_only:
        write_report(json.loads(args.out.read_text()), report)
        return
    root = args.data or Path(tempfile.mkdtemp(prefix="daskgmm-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.only and args.out.exists():  # keep the sections this run does not measure
        results = json.loads(args.out.read_text())
    results["machine"] = {"python": platform.python_version(), "cpus": 2,
                          "daskgmm": daskgmm.__version__}
    scale = 10 if args.quick else 1
    if args.only in (None, "speed"):
        cases = [
            (4_000_000 // scale, 16, 8, "full", 3),
            (4_000_000 // scale, 16, 8, "diag", 3),
            (1_000_000 // scale, 64, 16, "full", 2),
        ]
        with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="6GiB",
                          dashboard_address=None) as cluster, Client(cluster):
            results["speed"] = [speed_case(root, *case) for case in cases]
    if args.only in (None, "selection"):
        with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="6GiB",
                          dashboard_address=None) as cluster, Client(cluster):
            results["selection"] = [
                selection_case(root, 1_000_000 // scale, 8, 5, list(range(1, 11)), "full")
            ]
    if args.baseline and args.only in (None, "baseline"):
        cases = [(1_000_000 // scale, 16, 8, "full", 8), (1_000_000 // scale, 16, 8, "diag", 8)]
        results["baseline"] = [baseline_case(root, args.baseline, *case) for case in cases]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, report)
    print(f"wrote {args.out} and {report}")
    if args.data is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
