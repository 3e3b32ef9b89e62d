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
from .formats import (
    VersionedScores,
    id_arrays,
    score_arrays,
    score_fields,
    score_pieces,
    summary,
)

MARKER = "_daskgmm_scores.json"
POINTER = "_latest"
MANIFEST = "_daskgmm_version.json"


class ParquetScores(VersionedScores):
    kind = "parquet"

    def metadata(self, storage_options):
        return JsonMetadata(marker=MARKER, pointer=POINTER, manifest=MANIFEST)

    def write_version(self, scores, dataset, location, version, info, id_columns,
                      storage_options):
        scores, id_fields, files = score_pieces(scores, dataset, id_columns)
        names = ([relative for _, relative, _ in files] if files is not None
                 else [f"part-{i:05d}.parquet" for i in range(scores.numblocks[0])])
        fields = list(id_fields) + score_fields()
        schema = pa.schema(fields, metadata={"daskgmm": json.dumps(info, sort_keys=True)})
        vroot = location.version_path(version)
        offsets = np.concatenate([[0], np.cumsum(scores.chunks[0])]).astype(np.int64)
        n = int(scores.shape[0])
        tasks = [
            dask.delayed(_write_part, pure=False)(
                block, location.fs, f"{vroot}/{name}", schema, int(offsets[i]),
                (files[i][0], dataset.origin.fs, id_columns, files[i][1]) if files and id_columns
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
    id_columns = id_arrays(scores.shape[0], row_start, ids)
    arrays = id_columns + score_arrays(scores)
    table = pa.Table.from_arrays(arrays, schema=schema)
    with naming_write_errors(url_of(fs, path)):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        pq.write_table(table, path, filesystem=fs)
    del table, arrays, id_columns
    pa.default_memory_pool().release_unused()  # arrow keeps freed pages for later
    return summary(scores, n_points)
