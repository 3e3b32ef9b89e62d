"""Demo data for the nightly job: one Gaussian mixture as a Zarr group and as Parquet."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from daskgmm.synthetic import write_mixture_zarr

_CHUNK_ROWS = 125_000


def write_demo_data(out="demo-data", *, n_samples=1_000_000, n_features=6, n_components=5,
                    seed=0, anomaly_fraction=0.005, overwrite=False) -> dict:
    """Write ``out/demo.zarr`` (arrays X and labels) and ``out/demo-parquet/`` (one file
    per 125,000 rows: event_id, f0..f{d-1}, label) with the same rows.

    Existing data are kept unless ``overwrite``; returns the two paths.
    """
    zarr_path = os.path.join(out, "demo.zarr")
    parquet_path = os.path.join(out, "demo-parquet")
    if not overwrite and os.path.exists(zarr_path) and os.path.exists(parquet_path):
        return {"zarr": zarr_path, "parquet": parquet_path}
    for path in (zarr_path, parquet_path):
        if os.path.exists(path):
            shutil.rmtree(path)
    os.makedirs(out, exist_ok=True)
    write_mixture_zarr(zarr_path, n_samples, n_features, n_components,
                       chunk_rows=_CHUNK_ROWS, seed=seed, anomaly_fraction=anomaly_fraction)
    group = zarr.open_group(zarr_path, mode="r")
    tmp = f"{parquet_path}.tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    names = [f"f{j}" for j in range(n_features)]
    for i, start in enumerate(range(0, n_samples, _CHUNK_ROWS)):
        stop = min(start + _CHUNK_ROWS, n_samples)
        X = group["X"][start:stop]
        columns = {"event_id": pa.array(np.arange(start, stop, dtype=np.int64) * 10 + 7)}
        columns.update({name: pa.array(X[:, j]) for j, name in enumerate(names)})
        columns["label"] = pa.array(group["labels"][start:stop])
        pq.write_table(pa.table(columns), os.path.join(tmp, f"part-{i:05d}.parquet"))
    os.replace(tmp, parquet_path)
    return {"zarr": zarr_path, "parquet": parquet_path}
