"""What missing values cost: EM with nan_policy='marginalize' and 'omit' against the
same rows complete, and the cost of one distinct pattern of missing features.

    python benchmarks/missing.py [--rows 500000] [--out benchmarks/missing.json]

Writes ``--out`` (JSON) and beside it ``MISSING.md``.

Per EM iteration (seconds, (t(1 + m) - t(1)) / m from the same initial parameters),
16 features, k=8, 10% of the entries NaN at random (so about 81% of the rows miss at
least one feature, in thousands of distinct patterns per chunk): scikit-learn on the
complete rows in memory (the reference of the ratios; it has no missing-value support),
daskgmm on the complete rows, with 'marginalize' and with 'omit', on a LocalCluster of
2 single-threaded worker processes with the data persisted.

Per pattern: the E-step and statistics of one chunk of 125,000 rows ('full', k=8,
d=16, one thread) whose incomplete rows fall in P distinct patterns (missing one to
four features), P from 1 to 2,516; ``seconds = a + b * P`` is fitted, b being the cost
of a distinct pattern. Both kernels: the compiled one (numba, the default) and the numpy
reference (``DASKGMM_KERNELS=numpy``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import per_iteration  # noqa: E402  (the speed benchmark's: (t(1 + m) - t(1)) / m)

N_FEATURES, K, FRACTION = 16, 8, 0.10


def data(n_rows, seed=0):
    from daskgmm.synthetic import mixture_parameters, sample_mixture

    rng = np.random.default_rng(seed + 1)
    X, _ = sample_mixture(n_rows, *mixture_parameters(N_FEATURES, K, seed), rng)
    holes = X.copy()
    mask = rng.random(X.shape) < FRACTION
    mask[mask.all(axis=1), 0] = False
    holes[mask] = np.nan
    return X, holes


def em_cases(n_rows, iterations):
    import dask.array as da
    from distributed import Client, LocalCluster
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    import daskgmm

    X, holes = data(n_rows)
    incomplete = float(np.isnan(holes).any(axis=1).mean())
    rows = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit="6GiB") as cluster, \
            Client(cluster):
        for cov in ("full", "diag"):
            start = SkGaussianMixture(K, covariance_type=cov, max_iter=1, random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                start.fit(X[:50_000])
            init = dict(weights_init=start.weights_, means_init=start.means_,
                        precisions_init=start.precisions_, tol=0.0)

            def sk_fit(n, cov=cov, init=init):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    SkGaussianMixture(K, covariance_type=cov, max_iter=n, **init).fit(X)

            row = {"covariance_type": cov, "rows": n_rows, "features": N_FEATURES,
                   "components": K, "missing_entries": FRACTION,
                   "incomplete_rows": round(incomplete, 4),
                   "sklearn_complete_s": per_iteration(sk_fit, iterations)}
            for name, values, policy in (("complete", X, "raise"),
                                         ("marginalize", holes, "marginalize"),
                                         ("omit", holes, "omit")):
                array = da.from_array(values, chunks=(125_000, N_FEATURES)).persist()

                def fit(n, array=array, policy=policy, cov=cov, init=init):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", ConvergenceWarning)
                        daskgmm.GaussianMixture(K, covariance_type=cov, max_iter=n,
                                                nan_policy=policy, chunk_rows=None,
                                                **init).fit(array)

                fit(1)  # warm-up: the workers load the kernels
                seconds = per_iteration(fit, iterations)
                row[f"{name}_s"] = seconds
                row[f"{name}_ratio"] = round(seconds / row["sklearn_complete_s"], 3)
                del array
            rows.append(row)
    return rows


def pattern_case(repeats=3):
    """Seconds of one chunk's statistics against its number of distinct patterns (the
    first P patterns missing one, then two, three and four features)."""
    from threadpoolctl import threadpool_limits

    from daskgmm import kernels
    from daskgmm.kernels import Params

    rng = np.random.default_rng(3)
    n = 125_000
    X = rng.normal(size=(n, N_FEATURES))
    A = rng.normal(size=(K, N_FEATURES, N_FEATURES)) * 0.3
    cov = A @ A.transpose(0, 2, 1) + np.eye(N_FEATURES)
    model_params = Params("full", np.full(K, 1 / K), rng.normal(size=(K, N_FEATURES)),
                          None, cov, np.zeros(N_FEATURES))
    model_params.precisions_cholesky = model_params.model.precisions_cholesky(cov)
    from itertools import combinations

    all_patterns = [c for size in (1, 2, 3, 4)
                    for c in combinations(range(N_FEATURES), size)]  # 2,516
    incomplete = np.flatnonzero(rng.random(n) < 0.8)
    chunks = {}
    for p in (1, 16, 136, 696, 2516):
        holes = X.copy()
        for r, c in zip(incomplete, rng.integers(0, p, incomplete.size), strict=True):
            holes[r, list(all_patterns[c])] = np.nan
        chunks[p] = holes
    result = {"rows": n, "incomplete_rows": incomplete.size / n}
    with threadpool_limits(limits=1):
        for choice in ("numba", "numpy"):
            os.environ["DASKGMM_KERNELS"] = choice
            kernels.chunk_stats(chunks[16][:1000], [model_params], None, "marginalize")
            out = [{"patterns": p, "seconds": min(_timed(lambda h=h: kernels.chunk_stats(
                h, [model_params], None, "marginalize")) for _ in range(repeats))}
                for p, h in chunks.items()]
            slope, intercept = np.polyfit([o["patterns"] for o in out],
                                          [o["seconds"] for o in out], 1)
            result[choice] = {"points": out, "a_s": float(intercept),
                              "b_s_per_pattern": float(slope)}
        os.environ.pop("DASKGMM_KERNELS")
        kernels.chunk_stats(X[:1000], [model_params])
        result["complete_chunk_s"] = min(_timed(lambda: kernels.chunk_stats(
            X, [model_params])) for _ in range(repeats))
    return result


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def write_report(results, path):
    lines = [
        "# Missing values: what they cost",
        "",
        f"Measured {results['date']} on {os.cpu_count()} cores by `benchmarks/missing.py` "
        "(read ratios: seconds move with the machine's load).",
        "",
        f"## Per EM iteration, {FRACTION:.0%} of the entries missing at random, "
        f"{N_FEATURES} features, k={K}",
        "",
        "Ratios to scikit-learn on the complete rows in memory (lower is faster).",
        "",
        "| covariance | rows | rows with NaN | scikit-learn (complete) | daskgmm complete "
        "| daskgmm marginalize | daskgmm omit |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["em"]:
        lines.append(
            f"| {r['covariance_type']} | {r['rows']:,} | {r['incomplete_rows']:.0%} "
            f"| {r['sklearn_complete_s']:.3f} s | {r['complete_ratio']:.2f}x "
            f"| {r['marginalize_ratio']:.2f}x | {r['omit_ratio']:.2f}x |")
    p = results["patterns"]
    numba_points, numpy_points = p["numba"]["points"], p["numpy"]["points"]
    lines += [
        "",
        "## Cost of a distinct pattern ('full', k=8, d=16, one thread)",
        "",
        f"One chunk of {p['rows']:,} rows, {p['incomplete_rows']:.0%} of them missing one "
        "to four features, in P distinct patterns; seconds for the chunk's E-step and "
        "statistics:",
        "",
        "| patterns P | compiled (default) | numpy reference |",
        "|---|---|---|",
        *[f"| {a['patterns']:,} | {a['seconds']:.3f} | {b['seconds']:.3f} |"
          for a, b in zip(numba_points, numpy_points, strict=True)],
        "",
        *[f"Fitted, {name}: {p[key]['a_s']:.3f} s + "
          f"{1e6 * p[key]['b_s_per_pattern']:.0f} us per pattern." for key, name in
          (("numba", "compiled"), ("numpy", "numpy reference"))],
        "",
        f"The same chunk with no value missing takes {p['complete_chunk_s']:.3f} s.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "missing.json")
    args = parser.parse_args(argv)
    results = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "patterns": pattern_case(), "em": em_cases(args.rows, args.iterations)}
    args.out.write_text(json.dumps(results, indent=2))
    write_report(results, args.out.with_name("MISSING.md"))
    print(args.out.with_name("MISSING.md").read_text())


if __name__ == "__main__":
    main()
