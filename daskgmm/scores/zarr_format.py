"""Scores as Zarr arrays, by default in the ``scores`` subgroup of a Zarr source group.

A Zarr score location is a Zarr group laid out like a Parquet one, with Zarr attributes
in place of the JSON files, so that Zarr sees only Zarr objects: the marker and the
pointer are the group's ``attrs["daskgmm"]`` (``["latest"]`` is the pointer), each
version is a subgroup ``_versions/<run_id>/<token>`` holding one 1-D array per score
column, chunked like the input rows, and its manifest is its ``attrs["daskgmm"]``. A
full filesystem is a :class:`daskgmm._storage.StorageFullError` naming the group or array
being written.
"""

from __future__ import annotations

import json

import dask
import numpy as np
import zarr
from threadpoolctl import threadpool_limits

from .._storage import is_local, naming_write_errors, url_of
from ..kernels import SCORE_DTYPE
from ..passes import compute_each
from ..quantiles import sketch_points
from ..versioned import Metadata
from .formats import FORMAT, SCORE_FIELDS, VersionedScores, summary


def open_group(fs, root, storage_options, mode, path=None):
    """The Zarr group at ``root`` on ``fs`` (and ``path`` in it)."""
    if is_local(fs):
        return zarr.open_group(store=root, mode=mode, path=path)
    return zarr.open_group(store=fs.unstrip_protocol(root), mode=mode, path=path,
                           storage_options=storage_options or None)


def _attrs(fs, path):
    """``attrs["daskgmm"]`` of the Zarr node at path ({} without), None if not Zarr.
    Raises ``ValueError`` naming the file when its metadata or that attribute is not
    what Zarr and daskgmm write (damaged JSON, a non-object)."""
    try:
        raw = fs.cat_file(f"{path}/zarr.json")
    except FileNotFoundError:
        return None
    where = url_of(fs, f"{path}/zarr.json")
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{where} is damaged (not JSON: {exc}): the Zarr node's metadata cannot be "
            "read. Restore it from a backup, or choose another location."
        ) from None
    value, node = meta, "the metadata"
    for key, name in (("attributes", "attributes"), ("daskgmm", "attributes['daskgmm']")):
        if not isinstance(value, dict):
            break
        value, node = value.get(key) or {}, name
    if not isinstance(value, dict):
        raise ValueError(
            f"{where}: {node} is a JSON {type(value).__name__}, not the object Zarr and "
            "daskgmm.write_scores write: the node is damaged or not written by daskgmm. "
            "Restore it from a backup, or choose another location."
        )
    return value


class ZarrMetadata(Metadata):
    """Marker and pointer in the root group's attributes, manifests in the version
    groups' attributes."""

    marker_name = "attrs['daskgmm'] score marker"

    def __init__(self, storage_options):
        self.storage_options = storage_options

    def foreign(self, fs, root):
        attrs = _attrs(fs, root)
        if attrs is not None and attrs.get("format") != FORMAT:
            return ("it is a Zarr node not written by daskgmm.write_scores (no "
                    "attrs['daskgmm'] score marker). Choose a new location, e.g. another "
                    "subgroup name.")
        return None

    def read_marker(self, fs, root):
        attrs = _attrs(fs, root)
        if not attrs:
            return None
        return {k: v for k, v in attrs.items() if k != "latest"}

    def write_marker(self, fs, root, marker):
        with naming_write_errors(url_of(fs, f"{root}/zarr.json")):
            group = open_group(fs, root, self.storage_options, "a")
            group.attrs["daskgmm"] = marker

    def read_pointer(self, fs, root):
        pointer = (_attrs(fs, root) or {}).get("latest")
        if pointer is not None and not isinstance(pointer, dict):
            raise ValueError(
                f"{url_of(fs, root)}/zarr.json: the score pointer attributes['daskgmm']"
                f"['latest'] is damaged (a JSON {type(pointer).__name__}, not an object). "
                "Restore it from a backup, or publish again (daskgmm.write_scores replaces it)."
            )
        return pointer

    def write_pointer(self, fs, root, manifest):
        with naming_write_errors(url_of(fs, f"{root}/zarr.json")):
            group = open_group(fs, root, self.storage_options, "r+")
            group.attrs.update({"daskgmm": {**group.attrs["daskgmm"], "latest": manifest}})

    def read_manifest(self, fs, root, path):
        attrs = _attrs(fs, path)
        return attrs if attrs and attrs.get("format") == FORMAT else None

    def write_manifest(self, fs, root, path, manifest):
        with naming_write_errors(url_of(fs, f"{path}/zarr.json")):
            group = open_group(fs, root, self.storage_options, "r+", path[len(root) + 1:])
            group.attrs.update({"daskgmm": manifest})


class ZarrScores(VersionedScores):
    kind = "zarr"

    def metadata(self, storage_options):
        return ZarrMetadata(storage_options)

    def write_version(self, scores, dataset, location, version, info, id_columns,
                      storage_options):
        rows = max(scores.chunks[0])
        if any(c != rows for c in scores.chunks[0][:-1]):
            scores = scores.rechunk((rows,))  # Zarr chunks are regular
        n = int(scores.shape[0])
        fs, root = location.fs, location.root
        relative = location.relative(version)
        with naming_write_errors(location.version_url(version)):
            parent = ""
            for part in relative.split("/")[:-1]:  # explicit parent groups: a valid hierarchy
                parent = f"{parent}/{part}" if parent else part
                open_group(fs, root, storage_options, "a", parent)
            vgroup = open_group(fs, root, storage_options, "w-", relative)
            vgroup.attrs["daskgmm"] = info
            for name, _ in SCORE_FIELDS:
                dtype = SCORE_DTYPE[name]
                vgroup.create_array(name, shape=(n,), chunks=(rows,), dtype=dtype,
                                    fill_value=np.zeros((), dtype=dtype)[()],
                                    attributes={"daskgmm": {**info, "column": name}})
        offsets = np.concatenate([[0], np.cumsum(scores.chunks[0])]).astype(np.int64)
        where = (fs, root, storage_options, relative)
        tasks = [
            dask.delayed(_write_part, pure=False)(
                block, where, int(offsets[i]), sketch_points(int(scores.chunks[0][i]), n))
            for i, block in enumerate(scores.to_delayed().ravel())
        ]
        with threadpool_limits(limits=1):
            parts = compute_each(tasks)
        return parts, [{"name": name, "type": str(SCORE_DTYPE[name])}
                       for name, _ in SCORE_FIELDS]

    def read(self, target, manifest, storage_options):
        import pandas as pd

        location = self.location(target, storage_options)
        group = open_group(location.fs, location.root, storage_options, "r",
                           manifest["version"])
        # versions written before a column existed (missing_features) lack its array
        return pd.DataFrame({name: group[name][:] for name, _ in SCORE_FIELDS
                             if name in group})


def _write_part(scores, where, start, n_points):
    fs, root, storage_options, version = where
    group = open_group(fs, root, storage_options, "r+", version)
    stop = start + scores.shape[0]
    for name, _ in SCORE_FIELDS:
        with naming_write_errors(url_of(fs, f"{root}/{version}/{name}")):
            group[name][start:stop] = scores[name]
    return summary(scores, n_points)
