"""The benchmark's report and plot writer, and its Spark peer's skip path (seconds).

Speed itself is measured by ``make bench``, never asserted here.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def speed_row(rows, cov, sk, persisted, zarr, spark=None, dtype="float64"):
    row = {"rows": rows, "features": 16, "components": 8, "covariance_type": cov,
           "dtype": dtype, "iterations": 3, "zarr_codecs": ["ZstdCodec"],
           "sklearn_s_per_iter": sk, "persisted_s_per_iter": persisted,
           "zarr_s_per_iter": zarr, "persisted_ratio": round(persisted / sk, 3),
           "zarr_ratio": round(zarr / sk, 3)}
    if cov != "full":
        row["spark_status"] = "n/a: Spark MLlib fits full covariances only"
    elif isinstance(spark, str):
        row["spark_status"] = spark
    elif spark is not None:
        row.update(spark_status="ok", spark_s_per_iter=spark,
                   spark_ratio=round(spark / sk, 3),
                   spark_details={"spark": "4.3.0", "pyspark": "4.3.0", "java": "17.0.15",
                                  "blas": "Java", "partitions": 4, "driver_memory": "3g"})
    if dtype == "float32":
        row.update(sklearn_means_dtype="float64", daskgmm_means_dtype="float64",
                   daskgmm_compute_dtype="float64")
    return row


RESULTS = {
    "quick": False,
    "machine": {
        "date": "2026-11-30 04:00 UTC", "cpu": "Test CPU", "cpus": 2, "memory_gib": 23.5,
        "os": "Linux", "python": "3.11.7", "commit": "abc1234",
        "numpy_blas": "openblas 0.3.29", "java": "Java 17 (/usr/bin/java)",
        "versions": {n: "1.0" for n in ("daskgmm", "numpy", "scipy", "scikit-learn", "dask",
                                        "distributed", "zarr", "pyarrow", "pyspark")},
    },
    "speed": [
        speed_row(1_000_000, "full", 4.0, 1.0, 1.4, spark=8.0),
        speed_row(1_000_000, "diag", 1.0, 0.5, 0.75),
        speed_row(1_000_000, "full", 4.0, 1.2, 1.6, dtype="float32"),
        speed_row(4_000_000, "full", 16.0, 2.0, 4.0,
                  spark="skipped: Java not found (no java on PATH, no JAVA_HOME)"),
        speed_row(4_000_000, "spherical", 2.0, 0.6, 1.1),
    ],
    "fixed_cost": {
        "rows": 16_000, "features": 16, "components": 8, "covariance_type": "full",
        "iterations": 10, "a_s": 0.02, "b_s_per_chunk": 0.0015,
        "points": [{"chunks": c, "s_per_iter": 0.03 + 0.0015 * c, "kernel_s_per_iter": 0.02,
                    "fixed_s_per_iter": 0.02 + 0.0015 * c} for c in (8, 24, 80)],
    },
}


def test_report_and_plot_show_every_case_and_ratio(tmp_path):
    run = load("run")
    run.write_report(RESULTS, tmp_path / "RESULTS.md")
    run.write_plot(RESULTS, tmp_path / "results.png")
    text = (tmp_path / "RESULTS.md").read_text()
    for label in ("1,000,000 x 16, k=8, full |", "1,000,000 x 16, k=8, diag |",
                  "1,000,000 x 16, k=8, full, float32 input |", "4,000,000 x 16, k=8, full |",
                  "4,000,000 x 16, k=8, spherical |"):
        assert label in text
    # ratio to scikit-learn first, seconds per iteration after it
    assert ("| 1,000,000 x 16, k=8, full | 1 (4 s) | 0.25x (1 s) | 0.35x (1.4 s) "
            "| 2.00x (8 s) |") in text
    assert "| 0.50x (0.5 s) | 0.75x (0.75 s) | n/a (full only) |" in text
    assert "| 0.12x (2 s) | 0.25x (4 s) | skipped: Java not found" in text
    assert "0.30x (0.6 s) | 0.55x (1.1 s)" in text
    assert "computes in float64" in text and "does not keep float32" in text
    assert "own initialisation" in text and "full covariances only" in text
    assert "Test CPU, 2 cores" in text and "2026-11-30" in text
    assert "20.0 ms + 1.50 ms x chunks" in text
    png = (tmp_path / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(tmp_path / "results.png") as image:
        image.verify()
        assert image.size[0] > 600 and image.size[1] > 400


def run_without_pyspark(code, tmp_path, env=None):
    """``code`` in a fresh interpreter in which ``import pyspark`` fails."""
    blocker = tmp_path / "block"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['pyspark'] = None\n")
    env = {**os.environ, **(env or {}), "PYTHONPATH": f"{blocker}{os.pathsep}{BENCHMARKS}"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)


def test_spark_peer_says_skipped_when_pyspark_is_missing(tmp_path):
    out = run_without_pyspark(
        "import json, spark_peer\n"
        "print(json.dumps(spark_peer.measure('missing.parquet', 8)))", tmp_path)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.splitlines()[-1])
    assert row["status"].startswith("skipped: pyspark is not importable"), row
    assert "pip install -e '.[bench]'" in row["status"]


def test_benchmark_keeps_running_when_pyspark_is_missing(tmp_path):
    # The harness's own call, as `make bench` makes it: the column says why, no crash.
    out = run_without_pyspark(
        "import json, run\n"
        "print(json.dumps(run.spark_case('missing.parquet', 1000, 16, 8)))", tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["status"].startswith(
        "skipped: pyspark is not importable")
    assert "Spark MLlib skipped: pyspark is not importable" in out.stderr


def test_spark_peer_says_skipped_without_java(tmp_path):
    pytest.importorskip("pyspark")
    env = {"PATH": str(tmp_path), "JAVA_HOME": str(tmp_path / "no-java")}
    out = subprocess.run(
        [sys.executable, "-c", "import json, spark_peer\n"
         "print(json.dumps(spark_peer.measure('missing.parquet', 8)))"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, **env, "PYTHONPATH": str(BENCHMARKS)})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["status"].startswith(
        "skipped: Java not found"), out.stdout


def test_missing_values_report(tmp_path):
    """benchmarks/missing.py's report: the ratios and the cost per pattern as measured."""
    missing = load("missing")
    points = [{"patterns": p, "seconds": s} for p, s in ((1, 0.2), (16, 0.21), (2516, 0.3))]
    results = {
        "date": "2026-11-30 07:30 UTC",
        "em": [{"covariance_type": "full", "rows": 1_000_000, "incomplete_rows": 0.815,
                "sklearn_complete_s": 4.0, "complete_ratio": 0.25, "marginalize_ratio": 0.3,
                "omit_ratio": 0.1}],
        "patterns": {"rows": 125_000, "incomplete_rows": 0.8, "complete_chunk_s": 0.15,
                     "numba": {"points": points, "a_s": 0.2, "b_s_per_pattern": 4e-5},
                     "numpy": {"points": points, "a_s": 0.3, "b_s_per_pattern": 3e-4}},
    }
    path = tmp_path / "MISSING.md"
    missing.write_report(results, path)
    text = path.read_text()
    assert "| full | 1,000,000 | 82% | 4.000 s | 0.25x | 0.30x | 0.10x |" in text
    assert "| 2,516 | 0.300 | 0.300 |" in text
    assert "Fitted, compiled: 0.200 s + 40 us per pattern." in text
    assert "Fitted, numpy reference: 0.300 s + 300 us per pattern." in text
