"""Write anomaly scores back to storage: versioned, atomic, idempotent publication.

Layout of a Parquet score location (``target``)::

    <target>/
        _daskgmm_scores.json          marker: this location holds daskgmm scores
        _latest                       pointer (JSON): the current version, written last
        _versions/<run_id>/<token>/   one complete publication
            _daskgmm_version.json     its manifest (rows, anomalies, model, run, schema)
            part-0.parquet ...        one file per input file (or row chunk)

A Zarr score location is a Zarr group (by default the ``scores`` subgroup of the source
group) laid out the same way, with Zarr attributes in place of the JSON files, so that
Zarr sees only Zarr objects: the marker and the pointer are the group's
``attrs["daskgmm"]`` (``["latest"]`` is the pointer), each version is a subgroup
``_versions/<run_id>/<token>`` holding one array per score column, and its manifest is
its ``attrs["daskgmm"]``.

A run writes its scores under a fresh ``_versions/<run_id>/<token>``; only when every
piece is written does it write the version manifest and then replace ``_latest``
(atomically: a rename on local disks, a single PUT on object stores). Readers that
follow ``_latest`` see the previous complete scores or the new complete scores, never
a mix. A re-run with the same ``run_id`` then deletes the earlier attempts of that run
id, and nothing else. A failed run leaves ``_latest`` naming the previous version and
removes what it wrote; a piece still being written by another worker when the failure
happened (or a process killed outright) can leave files in its unpublished version
directory, which the next successful run with the same ``run_id`` deletes.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dask
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from threadpoolctl import threadpool_limits

from . import em, kernels
from ._storage import RUN_ID, is_local, put_json
from ._version import __version__
from .quantiles import RankSketch, combine_sketches

logger = logging.getLogger(__name__)

FORMAT = "daskgmm-scores"
FORMAT_VERSION = 1
MARKER = "_daskgmm_scores.json"
POINTER = "_latest"
VERSIONS = "_versions"
MANIFEST = "_daskgmm_version.json"

# Score columns, in the order they are written, with their Arrow types.
SCORE_FIELDS = [
    ("log_density", pa.float64()),
    ("anomaly_score", pa.float64()),
    ("component", pa.int32()),
    ("responsibility", pa.float64()),
    ("is_anomaly", pa.bool_()),
]
ROW_NUMBER = "row_number"


@dataclass
class Publication:
    """What :func:`write_scores` published.

    Attributes
    ----------
    target : str
        The score location.
    version : str
        The published version, relative to ``target`` (``_versions/<run_id>/<token>``).
    location : str
        Path or URL of the version: what ``daskgmm.latest_scores(target)`` returns.
    run_id, model_id, kind : str
        The run, the model's content hash, 'parquet' or 'zarr'.
    n_rows, n_anomalies : int
    log_likelihood : float
        Mean log-density per row (for drift checks).
    sketch : RankSketch
        Summary of the log-densities, for quantiles and histograms.
    seconds : float
    manifest : dict
        The version manifest as written.
    """

    target: str
    version: str
    location: str
    run_id: str
    model_id: str
    kind: str
    n_rows: int
    n_anomalies: int
    log_likelihood: float
    sketch: RankSketch = field(repr=False)
    seconds: float
    manifest: dict = field(repr=False)

    @property
    def anomaly_rate(self) -> float:
        return self.n_anomalies / self.n_rows if self.n_rows else 0.0


def write_scores(
    model,
    source,
    target=None,
    *,
    run_id=None,
    id_columns=None,
    format=None,
    columns=None,
    array_name=None,
    storage_options=None,
    target_storage_options=None,
    model_version=None,
) -> Publication:
    """Score every row of ``source`` with ``model`` and publish the scores at ``target``.

    Parameters
    ----------
    model : GaussianMixture or str
        A fitted model with an anomaly threshold (see
        :meth:`GaussianMixture.set_threshold`), or the path of a model file.
    source : path or URL of Zarr or Parquet data, or any input ``fit`` takes
        Read with the model's ``columns``/``array_name``/``storage_options`` (Parquet:
        the columns the model was fitted on) unless given here.
    target : str, default=None
        The score location (path or fsspec URL). Default for a Zarr group source: its
        ``scores`` subgroup, next to the data. Required for other sources.
    run_id : str, default=None
        Names the version; a re-run with the same ``run_id`` replaces its own earlier
        version and nothing else. Default: the UTC time, e.g. ``20261124T013000Z``.
    id_columns : list of str, default=None
        Parquet source only: columns copied from each input file next to the scores.
        Without them, a ``row_number`` column (int64, the row's 0-based position in the
        source, files in path order) identifies rows.
    format : 'parquet' or 'zarr', default=None
        The output format. Default: that of the source (Zarr for Zarr, else Parquet).
    columns, array_name, storage_options : override the model's parameters for reading
        ``source``.
    target_storage_options : dict, default=None
        fsspec options for ``target``; default: those of the source.
    model_version : str, default=None
        A label of the model (e.g. its version in a model store), kept in the manifest.

    Returns
    -------
    Publication

    Notes
    -----
    Parquet output: one file per input file (same relative path) for a Parquet source,
    else one file per row chunk (``part-00000.parquet``, ...), with the schema
    ``[id columns as in the source | row_number int64], log_density float64,
    anomaly_score float64, component int32, responsibility float64, is_anomaly bool``.
    Zarr output: one 1-D array per score column in the version's group, chunked like the
    input rows, each with attributes naming the model and the run.
    """
    from .estimator import GaussianMixture, _ScoreRows
    from .model_file import load, model_id

    t0 = time.perf_counter()
    if not isinstance(model, GaussianMixture):
        model = load(model, storage_options=target_storage_options or storage_options)
    model._check_threshold()
    scorer = copy.copy(model)
    overrides = {"columns": columns, "array_name": array_name,
                 "storage_options": storage_options}
    scorer.set_params(**{k: v for k, v in overrides.items() if v is not None})
    dataset = scorer._predict_dataset(source)
    run_id = _checked_run_id(run_id)
    if target_storage_options is None:
        target_storage_options = scorer.storage_options
    target, fs, root, kind, id_columns, present = _checked_target(
        dataset, target, format, id_columns, target_storage_options)
    if not present:
        _create_target(fs, root, kind, target_storage_options)

    token = secrets.token_hex(4)
    version = f"{VERSIONS}/{run_id}/{token}"
    vroot = f"{root}/{version}"
    mid = model_id(model)
    info = {
        "model_id": mid,
        "model_version": model_version,
        "run_id": run_id,
        "threshold": float(model.threshold_),
        "contamination": model.contamination_,
        "library_version": __version__,
    }
    scores = scorer._map_rows(
        dataset, _ScoreRows(model.threshold_), kernels.SCORE_DTYPE, None, lazy=True
    )
    try:
        if kind == "parquet":
            parts, schema = _write_parquet(scores, dataset, fs, vroot, id_columns, info)
        else:
            parts, schema = _write_zarr(scores, fs, root, vroot, version, info,
                                        target_storage_options)
        sketch = combine_sketches([s for s, _ in parts])
        n_anomalies = int(sum(a for _, a in parts))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "version": version,
            **info,
            "written_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "source": dataset.description,
            "n_rows": sketch.n_samples,
            "n_anomalies": n_anomalies,
            "log_likelihood": sketch.log_likelihood / sketch.n_samples,
            "schema": schema,
        }
        if kind == "parquet":
            put_json(fs, f"{vroot}/{MANIFEST}", manifest)
        else:
            _open_group((fs, root, target_storage_options), "r+", version).attrs.update(
                {"daskgmm": manifest})
    except BaseException:
        _remove(fs, vroot)
        raise
    # publication: readers switch here (one atomic write)
    if kind == "parquet":
        put_json(fs, f"{root}/{POINTER}", manifest)
    else:
        group = _open_group((fs, root, target_storage_options), "r+")
        group.attrs.update({"daskgmm": {**group.attrs["daskgmm"], "latest": manifest}})
    _remove_other_attempts(fs, root, run_id, token)
    location = _join(target, version)
    publication = Publication(
        target=str(target), version=version, location=location, run_id=run_id,
        model_id=mid, kind=kind, n_rows=sketch.n_samples, n_anomalies=n_anomalies,
        log_likelihood=manifest["log_likelihood"], sketch=sketch,
        seconds=time.perf_counter() - t0, manifest=manifest,
    )
    logger.info(
        "published scores of %d rows (%d anomalies, %.3f%%) of %s to %s, version %s",
        publication.n_rows, n_anomalies, 100 * publication.anomaly_rate,
        dataset.description, target, version,
    )
    return publication


def prune_scores(target, keep_runs: int, *, storage_options=None) -> list[str]:
    """Delete the published versions of all but the ``keep_runs`` most recent runs.

    The version the pointer names is always kept, and so are attempts that never
    completed (they may belong to a run in progress; a re-run of their run id removes
    them). Returns the deleted versions.
    """
    if not isinstance(keep_runs, int) or isinstance(keep_runs, bool) or keep_runs < 1:
        raise ValueError(f"keep_runs must be an int >= 1; got {keep_runs!r}.")
    fs, root = fsspec.core.url_to_fs(_expand(target), **(storage_options or {}))
    root = root.rstrip("/") or root
    current = read_pointer(target, storage_options=storage_options)["version"]
    base = f"{root}/{VERSIONS}"
    fs.invalidate_cache(base)
    complete = []  # (written_at, version)
    for run in fs.ls(base, detail=True):
        if run["type"] != "directory":
            continue
        for attempt in fs.ls(run["name"], detail=True):
            if attempt["type"] != "directory":
                continue
            path = attempt["name"].rstrip("/")
            manifest = _version_manifest(fs, path)
            if manifest is not None:
                complete.append((manifest.get("written_at", ""), path[len(root) + 1:]))
    complete.sort(reverse=True)
    runs_kept, deleted = set(), []
    for _, version in complete:
        run_id = version.split("/")[1]
        if version == current or len(runs_kept) < keep_runs and run_id not in runs_kept:
            runs_kept.add(run_id)
            continue
        _remove(fs, f"{root}/{version}")
        deleted.append(version)
    for run_id in {v.split("/")[1] for v in deleted} - runs_kept:
        run_dir = f"{base}/{run_id}"
        fs.invalidate_cache(run_dir)
        if not [e for e in fs.ls(run_dir, detail=True) if e["type"] == "directory"]:
            _remove(fs, run_dir)  # no attempt left (a Zarr run group keeps its zarr.json)
    if deleted:
        logger.info("pruned %d score version(s) at %s, kept the %d most recent runs",
                    len(deleted), target, keep_runs)
    return deleted


def _version_manifest(fs, path):
    """A complete version's manifest (Parquet file or Zarr group attributes), else None."""
    for name in (MANIFEST, "zarr.json"):
        try:
            data = json.loads(fs.cat_file(f"{path}/{name}"))
        except FileNotFoundError:
            continue
        if name == "zarr.json":
            data = (data.get("attributes") or {}).get("daskgmm") or {}
        if data.get("format") == FORMAT:
            return data
    return None


def latest_scores(target, *, storage_options=None) -> str:
    """Path or URL of the current version of the scores at ``target``.

    Parquet: ``pandas.read_parquet(daskgmm.latest_scores("out/scores"))``.
    Zarr: ``zarr.open_group(daskgmm.latest_scores("data.zarr/scores"))``.
    """
    return _join(target, read_pointer(target, storage_options=storage_options)["version"])


def read_pointer(target, *, storage_options=None) -> dict:
    """The manifest of the current version at ``target`` (the ``_latest`` pointer)."""
    fs, root = fsspec.core.url_to_fs(_expand(target), **(storage_options or {}))
    root = root.rstrip("/") or root
    fs.invalidate_cache(root)
    zattrs = _zarr_attrs(fs, root)
    if zattrs is not None:
        pointer = zattrs.get("latest")
    else:
        try:
            pointer = json.loads(fs.cat_file(f"{root}/{POINTER}"))
        except FileNotFoundError:
            pointer = None
    if pointer is None:
        raise FileNotFoundError(
            f"No published scores at {str(target)!r} (no {POINTER} pointer). Publish with "
            "daskgmm.write_scores(model, source, target)."
        )
    if pointer.get("format") != FORMAT or "version" not in pointer:
        raise ValueError(f"{str(target)!r} has no valid daskgmm score pointer.")
    return pointer


def _zarr_attrs(fs, root):
    """``attrs["daskgmm"]`` of the Zarr group at root, {} without it, None if not Zarr."""
    try:
        meta = json.loads(fs.cat_file(f"{root}/zarr.json"))
    except FileNotFoundError:
        return None
    return (meta.get("attributes") or {}).get("daskgmm") or {}


def read_scores(target, *, storage_options=None):
    """The current scores at ``target`` as a pandas DataFrame (small outputs only)."""
    import pandas as pd

    pointer = read_pointer(target, storage_options=storage_options)
    location = _join(target, pointer["version"])
    if pointer["kind"] == "parquet":
        return pd.read_parquet(location, storage_options=storage_options)
    fs, root = fsspec.core.url_to_fs(_expand(target), **(storage_options or {}))
    group = _open_group((fs, root.rstrip("/"), storage_options), "r", pointer["version"])
    names = [name for name, _ in SCORE_FIELDS]
    return pd.DataFrame({name: group[name][:] for name in names})


###############################################################################
# Checks


def _expand(path):
    path = os.fspath(path)
    return path if "://" in path else os.path.expanduser(path)


def _join(target, relative):
    return f"{str(target).rstrip('/')}/{relative}"


def _checked_run_id(run_id):
    if run_id is None:
        return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"run_id must be 1 to 128 letters, digits or '_.=+-', starting with a letter "
            f"or digit (it names a directory); got {run_id!r}. E.g. run_id='2026-11-24'."
        )
    return run_id


def _checked_format(format, origin):
    if format is None:
        return "zarr" if origin is not None and origin.kind == "zarr" else "parquet"
    if format not in ("parquet", "zarr"):
        raise ValueError(f"format must be 'parquet' or 'zarr'; got {format!r}.")
    return format


def _checked_id_columns(id_columns, origin, dataset):
    if id_columns is None:
        return []
    if isinstance(id_columns, str):
        id_columns = [id_columns]
    id_columns = [str(c) for c in id_columns]
    if origin is None or origin.kind != "parquet":
        raise ValueError(
            f"id_columns={id_columns!r} needs a Parquet source (they are copied from its "
            f"files); {dataset.description} has none. Rows are identified by their position: "
            f"the '{ROW_NUMBER}' column in Parquet output, the array index in Zarr output."
        )
    clash = sorted(set(id_columns) & ({n for n, _ in SCORE_FIELDS} | {ROW_NUMBER}))
    if clash:
        raise ValueError(
            f"id_columns {clash} clash with the score columns "
            f"{[n for n, _ in SCORE_FIELDS]}; rename them in the source."
        )
    for (_, relative, _), schema in zip(origin.files, origin.schemas, strict=True):
        names = schema.names
        missing = [c for c in id_columns if c not in names]
        if missing:
            raise ValueError(
                f"id column(s) {missing} not in file {relative!r} of {dataset.description} "
                f"(columns there: {', '.join(names)}). Pass id_columns present in every "
                "file, or none to get a row_number column."
            )
    return id_columns


def check_score_target(
    source,
    target=None,
    *,
    id_columns=None,
    format=None,
    columns=None,
    array_name=None,
    storage_options=None,
    target_storage_options=None,
) -> str:
    """Check, writing nothing, that :func:`write_scores` can publish the scores of
    ``source`` at ``target`` (same arguments); returns the target it would use.

    Raises the ``ValueError`` that ``write_scores`` would raise only after its pass over
    the data: no default target, id columns missing from a file, a target inside a
    Parquet source, holding something else than daskgmm scores, or scores of the other
    format. A job can call it before fitting.
    """
    from .sources import as_dataset

    dataset = as_dataset(source, columns=columns, array_name=array_name,
                         storage_options=storage_options)
    if target_storage_options is None:
        target_storage_options = storage_options
    return _checked_target(dataset, target, format, id_columns, target_storage_options)[0]


def _checked_target(dataset, target, format, id_columns, storage_options):
    """``(target, fs, root, kind, id_columns, present)`` after every check that needs no
    write; ``present``: the location already holds daskgmm scores of this kind."""
    origin = dataset.origin
    kind = _checked_format(format, origin)
    id_columns = _checked_id_columns(id_columns, origin, dataset)
    target = _default_target(target, origin, dataset)
    fs, root = fsspec.core.url_to_fs(_expand(target), **(storage_options or {}))
    root = root.rstrip("/") or root
    _check_not_inside_source(root, fs, origin, target)
    present = _check_existing_target(fs, root, target, kind)
    return target, fs, root, kind, id_columns, present


def _default_target(target, origin, dataset):
    if target is not None:
        return os.fspath(target)
    if origin is not None and origin.kind == "zarr" and origin.group:
        return _join(origin.url, "scores")
    raise ValueError(
        f"target= is required to write the scores of {dataset.description}: a path or URL "
        "of a new (or earlier daskgmm score) location, e.g. target='out/scores'. Only a "
        "Zarr group source has a default: its 'scores' subgroup."
    )


def _check_not_inside_source(root, fs, origin, target):
    if origin is None or origin.kind != "parquet":
        return
    src = origin.root.rstrip("/")
    if fs.protocol == origin.fs.protocol and (root == src or root.startswith(f"{src}/")):
        raise ValueError(
            f"Refusing to write scores to {str(target)!r}: it is inside the Parquet source "
            f"{origin.url!r}, whose readers would pick up the score files. Choose a location "
            "outside the source, e.g. a sibling directory."
        )


def _check_existing_target(fs, root, target, kind) -> bool:
    """Whether the location holds daskgmm scores of this kind (False: absent or empty);
    raises when it holds anything else."""
    fs.invalidate_cache(root)
    if fs.isfile(root):
        raise ValueError(
            f"Refusing to write scores to {str(target)!r}: it is a file. Choose a new or "
            "empty directory, or one written earlier by daskgmm.write_scores."
        )
    if fs.isdir(root):
        entries = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
        zattrs = _zarr_attrs(fs, root)
        if zattrs is not None:
            if zattrs.get("format") != FORMAT:
                raise ValueError(
                    f"Refusing to write scores to {str(target)!r}: it is a Zarr node not "
                    "written by daskgmm.write_scores (no attrs['daskgmm'] score marker). "
                    "Choose a new location, e.g. another subgroup name."
                )
            if kind != "zarr":
                raise ValueError(
                    f"{str(target)!r} holds zarr scores; this run writes {kind}. Use "
                    "another target, or format='zarr'."
                )
            return True
        if entries:
            if MARKER not in entries:
                shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "")
                raise ValueError(
                    f"Refusing to write scores to {str(target)!r}: it holds {shown}, not "
                    f"written by daskgmm.write_scores (no {MARKER}). Choose a new or empty "
                    "location, or one written earlier by daskgmm.write_scores."
                )
            marker = json.loads(fs.cat_file(f"{root}/{MARKER}"))
            if marker.get("format") != FORMAT:
                raise ValueError(
                    f"Refusing to write scores to {str(target)!r}: its {MARKER} is not a "
                    "daskgmm score marker."
                )
            if marker.get("kind") != kind:
                raise ValueError(
                    f"{str(target)!r} holds {marker.get('kind')} scores; this run writes "
                    f"{kind}. Use another target, or format={marker.get('kind')!r}."
                )
            return True
    return False


def _create_target(fs, root, kind, storage_options):
    """Mark a new (or empty) location as daskgmm scores of this kind."""
    fs.makedirs(root, exist_ok=True)
    if kind == "zarr":
        group = _open_group((fs, root, storage_options), mode="a")
        group.attrs["daskgmm"] = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "kind": "zarr",
            "library_version": __version__,
            "note": "daskgmm anomaly scores: read the version named in ['latest'].",
        }
        return
    put_json(fs, f"{root}/{MARKER}", {
        "format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
        "library_version": __version__,
        "note": f"daskgmm anomaly scores: read the version named in {POINTER}.",
    })


###############################################################################
# Writing


def _summary(scores, n_points):
    sketch = RankSketch.from_values(scores["log_density"], n_points)
    return sketch, int(np.count_nonzero(scores["is_anomaly"]))


def _arrow_schema(id_fields, info):
    fields = list(id_fields) + [pa.field(n, t, nullable=False) for n, t in SCORE_FIELDS]
    return pa.schema(fields, metadata={"daskgmm": json.dumps(info, sort_keys=True)})


def _write_parquet(scores, dataset, fs, vroot, id_columns, info):
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
    schema = _arrow_schema(id_fields, info)
    offsets = np.concatenate([[0], np.cumsum(scores.chunks[0])]).astype(np.int64)
    tasks = [
        dask.delayed(_write_parquet_part, pure=False)(
            block, fs, f"{vroot}/{name}", schema, int(offsets[i]),
            (files[i][0], origin.fs, id_columns, files[i][1]) if files and id_columns else None,
            em.sketch_points(int(scores.chunks[0][i]), int(scores.shape[0])),
        )
        for i, (block, name) in enumerate(zip(scores.to_delayed().ravel(), names, strict=True))
    ]
    with threadpool_limits(limits=1):
        (parts,) = dask.compute(tasks)
    columns = [{"name": f.name, "type": str(f.type)} for f in schema]
    return parts, columns


def _write_parquet_part(scores, fs, path, schema, row_start, ids, n_points):
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
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    pq.write_table(table, path, filesystem=fs)
    return _summary(scores, n_points)


def _open_group(where, mode, path=None):
    """The Zarr group at ``where = (fs, root, storage_options)`` (and ``path`` in it)."""
    fs, root, storage_options = where
    if is_local(fs):
        return zarr.open_group(store=root, mode=mode, path=path)
    return zarr.open_group(store=fs.unstrip_protocol(root), mode=mode, path=path,
                           storage_options=storage_options or None)


def _write_zarr(scores, fs, root, vroot, version, info, storage_options):
    rows = max(scores.chunks[0])
    if any(c != rows for c in scores.chunks[0][:-1]):
        scores = scores.rechunk((rows,))  # Zarr chunks are regular
    n = int(scores.shape[0])
    where = (fs, root, storage_options)
    parent = ""
    for part in version.split("/")[:-1]:  # explicit parent groups: a valid hierarchy
        parent = f"{parent}/{part}" if parent else part
        _open_group(where, mode="a", path=parent)
    vgroup = _open_group(where, mode="w-", path=version)
    vgroup.attrs["daskgmm"] = info
    for name, _ in SCORE_FIELDS:
        dtype = kernels.SCORE_DTYPE[name]
        vgroup.create_array(name, shape=(n,), chunks=(rows,), dtype=dtype,
                            fill_value=np.zeros((), dtype=dtype)[()],
                            attributes={"daskgmm": {**info, "column": name}})
    offsets = np.concatenate([[0], np.cumsum(scores.chunks[0])]).astype(np.int64)
    tasks = [
        dask.delayed(_write_zarr_part, pure=False)(
            block, where, version, int(offsets[i]),
            em.sketch_points(int(scores.chunks[0][i]), n))
        for i, block in enumerate(scores.to_delayed().ravel())
    ]
    with threadpool_limits(limits=1):
        (parts,) = dask.compute(tasks)
    columns = [{"name": name, "type": str(kernels.SCORE_DTYPE[name])} for name, _ in SCORE_FIELDS]
    return parts, columns


def _write_zarr_part(scores, where, version, start, n_points):
    group = _open_group(where, mode="r+", path=version)
    stop = start + scores.shape[0]
    for name, _ in SCORE_FIELDS:
        group[name][start:stop] = scores[name]
    return _summary(scores, n_points)


def _remove(fs, path):
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except Exception:  # noqa: BLE001 - cleanup must not hide the original error
        logger.warning("could not remove the unpublished version at %s", path, exc_info=True)


def _remove_other_attempts(fs, root, run_id, token):
    """Delete the earlier attempts of this run id (superseded; not named by the pointer)."""
    run_dir = f"{root}/{VERSIONS}/{run_id}"
    fs.invalidate_cache(run_dir)
    for entry in fs.ls(run_dir, detail=True):
        path = entry["name"].rstrip("/")
        if entry["type"] == "directory" and path.rsplit("/", 1)[-1] != token:
            _remove(fs, path)
