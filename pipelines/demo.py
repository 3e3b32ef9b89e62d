"""The main job until the Prefect pipelines exist: demo data to Zarr, fit on a LocalCluster.

    python pipelines/demo.py [--rows N] [--data DIR]

Generates a Zarr dataset of a Gaussian mixture (once), starts an embedded Dask
LocalCluster, fits daskgmm.GaussianMixture out-of-core, saves the model, and prints it.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster

import daskgmm
from daskgmm.datasets import write_mixture_zarr


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--components", type=int, default=5)
    parser.add_argument("--data", type=Path, default=Path("demo-data"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="2GiB")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    source = args.data / "demo.zarr"
    if not (source / "zarr.json").exists():
        t0 = time.perf_counter()
        write_mixture_zarr(source, args.rows, args.features, args.components,
                           chunk_rows=250_000, seed=0, anomaly_fraction=0.001)
        print(f"wrote {args.rows:,} x {args.features} demo rows to {source} "
              f"in {time.perf_counter() - t0:.1f}s")

    with LocalCluster(n_workers=args.workers, threads_per_worker=1,
                      memory_limit=args.memory_limit) as cluster, Client(cluster) as client:
        print(f"Dask dashboard: {client.dashboard_link}")
        gm = daskgmm.GaussianMixture(
            args.components, covariance_type="full", n_init=2, random_state=0,
            array_name="X", cache=False,
        )
        t0 = time.perf_counter()
        gm.fit(str(source))
        seconds = time.perf_counter() - t0
        model_path = args.data / "model.daskgmm"
        gm.save(model_path)
        labels = gm.predict(str(source))
        counts = np.bincount(labels.compute(), minlength=args.components)

    np.set_printoptions(precision=3, suppress=True, linewidth=100)
    print(f"\nfitted {gm!r} in {seconds:.1f}s")
    print(f"  converged={gm.converged_} n_iter={gm.n_iter_} data passes={gm.n_passes_} "
          f"mean log-likelihood={gm.lower_bound_:.4f}")
    print(f"  weights: {gm.weights_}")
    print(f"  means:\n{gm.means_}")
    print(f"  rows per component: {counts}")
    print(f"  model saved to {model_path} (load with daskgmm.load({str(model_path)!r}))")


if __name__ == "__main__":
    main()
