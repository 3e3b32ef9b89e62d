"""Demo data for the nightly job: one Gaussian mixture as a Zarr group and as Parquet."""

from __future__ import annotations

import os

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from fsspec.implementations.local import LocalFileSystem

from daskgmm.synthetic import write_mixture_zarr

_CHUNK_ROWS = 125_000


def write_demo_data(out="demo-data", *, n_samples=1_000_000, n_features=6, n_components=5,
                    seed=0, anomaly_fraction=0.005, overwrite=False,
                    storage_options=None) -> dict:
    """Write ``out/demo.zarr`` (arrays X and labels) and ``out/demo-parquet/`` (one file
    per 125,000 rows: event_id, f0..f{d-1}, label) with the same rows.

    ``out`` is a local folder or an fsspec URL (``s3://bucket/demo``, with
    ``storage_options`` or the environment's credentials and endpoint). Existing data
    are kept unless ``overwrite``; the Parquet files appear under their final name only
    when all are written. Returns the two locations.
    """
    out = os.fspath(out).rstrip("/")
    fs, root = fsspec.core.url_to_fs(out, **(storage_options or {}))
    zarr_url, parquet_url = f"{out}/demo.zarr", f"{out}/demo-parquet"
    zarr_root, parquet_root = f"{root}/demo.zarr", f"{root}/demo-parquet"
    if not overwrite and demo_data_exists(out, storage_options):
        return {"zarr": zarr_url, "parquet": parquet_url}
    tmp = f"{parquet_root}.tmp"
    for path in (zarr_root, parquet_root, tmp):
        if fs.exists(path):
            fs.rm(path, recursive=True)
    fs.makedirs(root, exist_ok=True)
    zarr_options = {"storage_options": storage_options} if storage_options else {}
    write_mixture_zarr(zarr_url, n_samples, n_features, n_components,
                       chunk_rows=_CHUNK_ROWS, seed=seed, anomaly_fraction=anomaly_fraction,
                       **zarr_options)
    group = zarr.open_group(zarr_url, mode="r", **zarr_options)
    fs.makedirs(tmp, exist_ok=True)
    names = [f"f{j}" for j in range(n_features)]
    for i, start in enumerate(range(0, n_samples, _CHUNK_ROWS)):
        stop = min(start + _CHUNK_ROWS, n_samples)
        X = group["X"][start:stop]
        columns = {"event_id": pa.array(np.arange(start, stop, dtype=np.int64) * 10 + 7)}
        columns.update({name: pa.array(X[:, j]) for j, name in enumerate(names)})
        columns["label"] = pa.array(group["labels"][start:stop])
        pq.write_table(pa.table(columns), f"{tmp}/part-{i:05d}.parquet", filesystem=fs)
    if isinstance(fs, LocalFileSystem):
        os.replace(tmp, parquet_root)
    else:  # object stores have no folders to rename: each file is copied, then deleted
        for path in sorted(fs.find(tmp)):
            fs.mv(path, f"{parquet_root}/{path.rsplit('/', 1)[-1]}")
    return {"zarr": zarr_url, "parquet": parquet_url}


def demo_data_exists(out, storage_options=None) -> bool:
    """Whether ``out`` (a folder or fsspec URL) holds both copies of the demo data."""
    fs, root = fsspec.core.url_to_fs(os.fspath(out).rstrip("/"), **(storage_options or {}))
    return all(fs.exists(f"{root}/{name}") for name in ("demo.zarr", "demo-parquet"))
