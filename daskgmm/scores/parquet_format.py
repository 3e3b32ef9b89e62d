"""Scores as a Parquet dataset: one file per input file (or row chunk) per version.

Layout of a Parquet score location::

    <target>/
        _daskgmm_scores.json          marker: this location holds daskgmm scores
        _latest                       pointer (JSON): the current version, written last
        _versions/<run_id>/<token>/   one complete publication
            _daskgmm_version.json     its manifest (rows, anomalies, model, run, schema)
            part-0.parquet ...        one file per input file (or row chunk)

Schema: the id columns with their source types (or ``row_number`` int64), then the
score columns of ``SCORE_DTYPE``, all non-null; the key-value metadata ``daskgmm``
names the model and the run.
"""

from __future__ import annotations

import json

import dask
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from .._storage import naming_write_errors, url_of
from ..passes import compute_each
from ..quantiles import sketch_points
from ..versioned import JsonMetadata
from .formats import ROW_NUMBER, SCORE_FIELDS, VersionedScores, summary

MARKER = "_daskgmm_scores.json"
POINTER = "_latest"
MANIFEST = "_daskgmm_version.json"


class ParquetScores(VersionedScores):
    kind = "parquet"

    def metadata(self, storage_options):
        return JsonMetadata(marker=MARKER, pointer=POINTER, manifest=MANIFEST)

    def write_version(self, scores, dataset, location, version, info, id_columns,
                      storage_options):
        origin = dataset.origin
        if origin is not None and origin.kind == "parquet":
            files = origin.files
            scores = scores.rechunk((tuple(n for _, _, n in files),))
            names = [relative for _, relative, _ in files]
            if id_columns:
                id_fields = [origin.schemas[0].field(c) for c in id_columns]
            else:
                id_fields = [pa.field(ROW_NUMBER, pa.int64(), nullable=False)]
        else:
            files = None
            names = [f"part-{i:05d}.parquet" for i in range(scores.numblocks[0])]
            id_fields = [pa.field(ROW_NUMBER, pa.int64(), nullable=False)]
        fields = list(id_fields) + [pa.field(n, t, nullable=False) for n, t in SCORE_FIELDS]
        schema = pa.schema(fields, metadata={"daskgmm": json.dumps(info, sort_keys=True)})
        vroot = location.version_path(version)
        offsets = np.concatenate([[0], np.cumsum(scores.chunks[0])]).astype(np.int64)
        n = int(scores.shape[0])
        tasks = [
            dask.delayed(_write_part, pure=False)(
                block, location.fs, f"{vroot}/{name}", schema, int(offsets[i]),
                (files[i][0], origin.fs, id_columns, files[i][1]) if files and id_columns
                else None,
                sketch_points(int(scores.chunks[0][i]), n),
            )
            for i, (block, name) in enumerate(zip(scores.to_delayed().ravel(), names,
                                                  strict=True))
        ]
        with threadpool_limits(limits=1):
            parts = compute_each(tasks)
        return parts, [{"name": f.name, "type": str(f.type)} for f in schema]

    def read(self, target, manifest, storage_options):
        import pandas as pd

        location = self.location(target, storage_options)
        return pd.read_parquet(location.url + "/" + manifest["version"],
                               storage_options=storage_options)


def _write_part(scores, fs, path, schema, row_start, ids, n_points):
    n = scores.shape[0]
    if ids is None:
        id_arrays = [pa.array(np.arange(row_start, row_start + n, dtype=np.int64))]
    else:
        in_path, in_fs, id_columns, relative = ids
        table = pq.read_table(in_path, columns=id_columns, filesystem=in_fs,
                              use_threads=False)
        if table.num_rows != n:
            raise ValueError(
                f"File {relative!r} changed while it was scored: it has {table.num_rows} "
                f"rows, {n} were scored. Re-run on data that is not being written."
            )
        id_arrays = [table.column(c).combine_chunks() for c in id_columns]
    arrays = id_arrays + [pa.array(scores[name]) for name, _ in SCORE_FIELDS]
    table = pa.Table.from_arrays(arrays, schema=schema)
    with naming_write_errors(url_of(fs, path)):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        pq.write_table(table, path, filesystem=fs)
    del table, arrays, id_arrays
    pa.default_memory_pool().release_unused()  # arrow keeps freed pages for later
    return summary(scores, n_points)
