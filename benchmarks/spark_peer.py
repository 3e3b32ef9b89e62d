"""Spark MLlib's GaussianMixture as a peer of the speed benchmark (``benchmarks/run.py``).

    python benchmarks/spark_peer.py DATA.parquet --k 8 [--seed 0] [--partitions 4]
                                    [--driver-memory 4g]

Prints one JSON line: ``{"status": "ok", "s_per_iter": ...}`` or, when Spark cannot run
here, ``{"status": "skipped: <why>"}``. ``benchmarks/run.py`` runs it in its own process
(the JVM goes away with it) on a Parquet copy of the numpy array that scikit-learn and
daskgmm fit.

Method: a SparkSession on ``local[2]`` (both cores of this machine), the Parquet file read
by Spark, repartitioned to ``--partitions`` (as many as daskgmm's chunks, so both cores
work), assembled into one vector column with ``VectorAssembler``, cached and counted
before anything is timed (reading the file is not timed). Then
``pyspark.ml.clustering.GaussianMixture(k, tol=0.0, seed)``: one warm-up fit with
``maxIter=1`` (the JVM compiles what the fit runs), then seconds per iteration =
(time of a fit with ``maxIter=11`` - time with ``maxIter=1``) / 10, so the start-up and
Spark's initialisation cancel out. (Spark stops before ``maxIter`` when an iteration
leaves the log-likelihood exactly unchanged, even with ``tol=0.0``; then the divisor is
the iterations it ran, ``n_iter`` in the output.)

Differences from the other columns, said in the report: Spark only fits ``full``
covariances; it starts from its own initialisation (means and variances of random
samples, from ``seed``), not from the parameters scikit-learn and daskgmm start from, so
the work per iteration is the same but the path is not; it computes in the JVM with
the BLAS it finds (``blas`` in the output).

Only the standard library at the top: whether pyspark and Java exist is what
:func:`unavailable` finds out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

MAX_ITER = 11  # the method: (t(maxIter=11) - t(maxIter=1)) / 10


def java_executable():
    """The ``java`` Spark would start: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        return os.path.join(home, "bin", "java")
    return shutil.which("java")


def java_major(java):
    """Major version of ``java`` (8, 11, 17, 21...) or None when it does not say."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def unavailable():
    """Why Spark cannot run here (a sentence), or None when it can."""
    try:
        import pyspark
    except ImportError as e:
        return (f"pyspark is not importable ({e}); install the benchmark extra: "
                ".venv/bin/pip install -e '.[bench]'")
    java = java_executable()
    if java is None:
        return ("Java not found (no java on PATH, no JAVA_HOME); "
                "benchmarks/install-java.sh installs Debian's headless JRE")
    needed = 17 if int(pyspark.__version__.split(".")[0]) >= 4 else 8
    major = java_major(java)
    if major is None:
        return f"{java} -version did not run or did not say its version"
    if major < needed:
        return f"pyspark {pyspark.__version__} needs Java {needed} or later; {java} is Java {major}"
    return None


def session(driver_memory):
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]").appName("daskgmm-bench")
        .config("spark.driver.memory", driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def blas_name(spark):
    """The BLAS Spark's linear algebra uses: native when it loads one, else its Java one."""
    try:
        native = spark._jvm.dev.ludovic.netlib.blas.NativeBLAS.getInstance()  # noqa: SLF001
        return f"native ({native.getClass().getSimpleName()})"
    except Exception:
        return "Java (no native libblas.so.3 found)"


def measure(parquet, n_components, seed=0, partitions=4, driver_memory="4g"):
    """Seconds per EM iteration of Spark MLlib on the Parquet file, as a dict with
    ``status`` 'ok', or ``status`` 'skipped: <why>' when pyspark or Java is missing."""
    reason = unavailable()
    if reason:
        return {"status": f"skipped: {reason}"}
    import pyspark
    from pyspark.ml.clustering import GaussianMixture
    from pyspark.ml.feature import VectorAssembler

    t0 = time.perf_counter()
    spark = session(driver_memory)
    started = time.perf_counter() - t0
    try:
        df = spark.read.parquet(str(parquet))
        features = (
            VectorAssembler(inputCols=df.columns, outputCol="features")
            .transform(df.repartition(partitions)).select("features").cache()
        )
        rows = features.count()  # reads and caches: reading is not timed

        def fit(max_iter):
            t0 = time.perf_counter()
            model = GaussianMixture(k=n_components, tol=0.0, maxIter=max_iter, seed=seed,
                                    featuresCol="features").fit(features)
            seconds = time.perf_counter() - t0
            return seconds, model.summary.numIter, model.summary.logLikelihood

        fit(1)  # warm-up
        one, n_iter_one, _ = fit(1)
        more, n_iter, log_likelihood = fit(MAX_ITER)
        # Spark stops before maxIter when the log-likelihood does not change at all (tol=0):
        # the difference is divided by the iterations it ran.
        return {
            "status": "ok",
            "s_per_iter": max(more - one, 1e-9) / max(n_iter - n_iter_one, 1),
            "fit_1_s": one, "fit_11_s": more, "n_iter": n_iter, "max_iter": MAX_ITER,
            "mean_log_likelihood": log_likelihood / rows, "rows": rows,
            "partitions": partitions, "driver_memory": driver_memory,
            "session_start_s": started, "pyspark": pyspark.__version__,
            "spark": spark.version, "java": spark._jvm.System.getProperty("java.version"),  # noqa: SLF001
            "blas": blas_name(spark), "master": "local[2]",
        }
    finally:
        spark.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parquet")
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--driver-memory", default="4g")
    args = parser.parse_args(argv)
    row = measure(args.parquet, args.k, args.seed, args.partitions, args.driver_memory)
    print(json.dumps(row), flush=True)
    if row["status"].startswith("skipped"):
        print(f"Spark MLlib {row['status']}", file=sys.stderr)


if __name__ == "__main__":
    main()
