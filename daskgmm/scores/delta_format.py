"""Scores as a Delta Lake table: one commit per run, read natively by Delta readers.

Layout of a Delta score location (written with ``deltalake``, delta-rs)::

    <target>/
        _delta_log/                              the table's log: one JSON commit per change
        run_id=<run_id>/part-<i>-<attempt>.parquet   the data files of one run

The table is partitioned by ``run_id`` and holds every kept run. Its schema, in order: the
id columns with their source types (or ``row_number`` int64), the score columns of
``SCORE_DTYPE``, then ``run_id`` string (the partition), ``model_id`` string,
``model_version`` string (null when not given) and ``threshold`` double.

Publication: the workers write one Parquet data file per input file (or row chunk) into
``run_id=<run_id>/``, named with a fresh attempt token; the client then commits them in
one transaction that also removes the run's earlier rows (an overwrite of the partition
``run_id = <run_id>``). The commit's ``commitInfo`` holds the run's manifest under
``"daskgmm"``. Readers of any version see whole runs only. A run that fails or is killed
before its commit leaves the table as it was; its data files are never referenced, and
the next publication that fails removes its own, ``vacuum`` the rest.

Retention: :meth:`DeltaScores.prune` deletes the rows of all but the newest runs in one
commit, then runs Delta's ``vacuum`` with the table's retention
(``delta.deletedFileRetentionDuration``, 7 days by default): files that no version younger
than that needs are deleted, and so are data files of killed runs, which no commit names,
once they are that old. Time travel reaches back at least that far.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import urllib.parse
from contextlib import contextmanager
from datetime import UTC, datetime

import dask
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from .._storage import RUN_ID, is_local, naming_write_errors, redact_url, url_of, url_to_fs
from ..passes import compute_each
from ..quantiles import sketch_points
from .formats import (
    FORMAT,
    FORMAT_VERSION,
    ROW_NUMBER,
    ScoreFormat,
    id_arrays,
    piece_totals,
    score_arrays,
    score_fields,
    score_pieces,
    summary,
)

logger = logging.getLogger(__name__)

LOG = "_delta_log"
PARTITION = "run_id"
# The table's name marks it as daskgmm's (delta-rs refuses custom table properties)
TABLE_NAME = "daskgmm_scores"
DESCRIPTION = ("daskgmm anomaly scores: one commit per run, partitioned by run_id; the "
               "commitInfo key 'daskgmm' of a run's commit holds its manifest.")
# The run's columns after the scores: the partition, then constants of the run
RUN_FIELDS = [
    pa.field(PARTITION, pa.string(), nullable=False),
    pa.field("model_id", pa.string(), nullable=False),
    pa.field("model_version", pa.string(), nullable=True),
    pa.field("threshold", pa.float64(), nullable=False),
]
PRUNE_KEY = "daskgmm_prune"
# What an interrupted first publication can leave in a new location: run directories
_DEBRIS = ("run_id=", LOG)


class DeltaScores(ScoreFormat):
    """Scores as a Delta Lake table partitioned by run (see the module docstring)."""

    kind = "delta"

    # ------------------------------------------------------------------ marker

    def marker(self, fs, root):
        fs.invalidate_cache(root)
        if not fs.isdir(f"{root}/{LOG}"):
            return None
        table = _open(url_of(fs, root), getattr(fs, "storage_options", None))
        if table is None or table.metadata().name != TABLE_NAME:
            return None
        return {"format": FORMAT, "kind": self.kind}

    def check(self, target, storage_options):
        fs, root = url_to_fs(target, storage_options)
        fs.invalidate_cache(root)
        refusal = f"Refusing to write scores to {redact_url(str(target))!r}"
        if fs.isfile(root):
            raise ValueError(f"{refusal}: it is a file. Choose a new or empty directory, or "
                             "a Delta table written earlier by daskgmm.write_scores.")
        if not fs.isdir(root):
            return False
        table = _open(url_of(fs, root), storage_options) if fs.isdir(f"{root}/{LOG}") else None
        if table is not None:
            meta = table.metadata()
            if meta.name != TABLE_NAME:
                raise ValueError(
                    f"{refusal}: it is a Delta table not written by daskgmm.write_scores "
                    f"(table name {meta.name!r}, expected {TABLE_NAME!r}). Choose a new "
                    "location, e.g. a sibling directory.")
            if list(meta.partition_columns) != [PARTITION]:
                raise ValueError(
                    f"{refusal}: its Delta table is partitioned by "
                    f"{list(meta.partition_columns)}, not [{PARTITION!r}] as daskgmm writes "
                    "it. Restore the table or choose a new location.")
            return True
        entries = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
        foreign = [e for e in entries if not e.startswith(_DEBRIS)]
        if foreign:
            shown = ", ".join(foreign[:8]) + (", ..." if len(foreign) > 8 else "")
            raise ValueError(
                f"{refusal}: it holds {shown}, not written by daskgmm.write_scores (no Delta "
                "table). Choose a new or empty location, or a Delta table written earlier "
                "by daskgmm.write_scores.")
        return False  # empty, or only the files of a first publication that never committed

    # ------------------------------------------------------------- publishing

    def publish(self, scores, dataset, target, *, run_id, info, id_columns,
                storage_options, before_commit=None):
        _deltalake()
        from deltalake import CommitProperties
        from deltalake import Schema as DeltaSchema

        fs, root = url_to_fs(target, storage_options)
        uri = url_of(fs, root)
        options = object_store_options(uri, storage_options)
        table = _open(uri, storage_options) if self.check(target, storage_options) else None
        scores, id_fields, origin_files = score_pieces(scores, dataset, id_columns)
        schema = pa.schema(list(id_fields) + score_fields() + RUN_FIELDS)
        with _delta_errors(uri, "describe the scores' schema"):
            delta_schema = DeltaSchema.from_arrow(schema)
        if table is not None:
            schema, delta_schema = _as_table_was(table, schema, delta_schema, uri)
            _check_schema(table, delta_schema, uri)
        file_schema = pa.schema([f for f in schema if f.name != PARTITION],
                                metadata={"daskgmm": json.dumps(info, sort_keys=True)})
        token = secrets.token_hex(8)
        directory = f"{PARTITION}={_partition_value(run_id)}"
        offsets = np.concatenate([[0], np.cumsum(scores.chunks[0])]).astype(np.int64)
        n = int(scores.shape[0])
        constants = (info["model_id"], info["model_version"], float(info["threshold"]))
        tasks = [
            dask.delayed(_write_file, pure=False)(
                block, fs, root, f"{directory}/part-{i:05d}-{token}.parquet", file_schema,
                constants, int(offsets[i]),
                (origin_files[i][0], dataset.origin.fs, id_columns, origin_files[i][1])
                if origin_files and id_columns else None,
                sketch_points(int(scores.chunks[0][i]), n),
            )
            for i, block in enumerate(scores.to_delayed().ravel())
        ]
        try:
            with naming_write_errors(f"{uri}/{directory}"), threadpool_limits(limits=1):
                parts = compute_each(tasks)
            totals = piece_totals([piece for piece, _ in parts])
            sketch = totals.pop("sketch")
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "kind": self.kind,
                **info,
                "attempt": token,
                "written_at": datetime.now(UTC).isoformat(timespec="microseconds"),
                "source": dataset.description,
                **totals,
                "schema": [{"name": f.name, "type": str(f.type)} for f in schema],
            }
            if before_commit is not None:
                before_commit()
        except BaseException:
            _remove_attempt(fs, f"{root}/{directory}", token)
            raise
        actions = [_add_action(add, run_id) for _, add in parts]
        commit = CommitProperties(custom_metadata={
            "daskgmm": manifest, "userMetadata": f"daskgmm scores of run {run_id}"})
        with _delta_errors(uri, f"commit the scores of run {run_id!r}"):
            if table is None:
                from deltalake.transaction import create_table_with_add_actions

                create_table_with_add_actions(
                    uri, delta_schema, actions, mode="error", partition_by=[PARTITION],
                    name=TABLE_NAME, description=DESCRIPTION, storage_options=options,
                    commit_properties=commit)
            else:
                table.create_write_transaction(
                    actions, mode="overwrite", schema=delta_schema, partition_by=[PARTITION],
                    partition_filters=[(PARTITION, "=", run_id)], commit_properties=commit)
        for version, info in _commits(fs, root, _open(uri, storage_options).version()):
            if (info.get("daskgmm") or {}).get("attempt") == token:  # ours, just made
                manifest["version"] = version
                return {**manifest, "sketch": sketch}
        raise RuntimeError(f"The commit of attempt {token} is not in the log of "
                           f"{redact_url(uri)}.")

    # ---------------------------------------------------------------- reading

    def pointer(self, target, storage_options):
        fs, root = url_to_fs(target, storage_options)
        table = _open(url_of(fs, root), storage_options)
        if table is None:
            return None
        for version, info in _commits(fs, root, table.version()):
            meta = info.get("daskgmm")
            if isinstance(meta, dict) and meta.get("format") == FORMAT:
                return {**meta, "version": version}
        return None

    def read(self, target, manifest, storage_options):
        fs, root = url_to_fs(target, storage_options)
        uri = url_of(fs, root)
        table = _open(uri, storage_options, version=manifest["version"])
        with _delta_errors(uri, f"read version {manifest['version']}"):
            frame = table.to_pyarrow_table(
                filters=[(PARTITION, "=", manifest["run_id"])]).to_pandas()
        if ROW_NUMBER in frame.columns:
            frame = frame.sort_values(ROW_NUMBER, ignore_index=True)
        return frame

    def version_problem(self, manifest):
        """A commit of the table (a version number), of one run."""
        run_id, version = manifest.get("run_id"), manifest.get("version")
        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
            return f"run_id {run_id!r} is not a run id"
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            return f"version {version!r} is not a version of the Delta table"
        return None

    def url(self, target, manifest):
        """The table: a run is its rows, a version its commit."""
        return str(target).rstrip("/")

    # -------------------------------------------------------------- retention

    def prune(self, target, keep_runs, current, storage_options):
        """Delete the rows of all but the ``keep_runs`` most recent runs (by the time
        their files were written) in one commit, never the run of the current
        publication, then ``vacuum`` (full: also the files no commit ever named, left by
        killed runs) with the table's retention. Returns the deleted runs (as
        ``run_id=<run_id>``)."""
        from deltalake import CommitProperties

        fs, root = url_to_fs(target, storage_options)
        uri = url_of(fs, root)
        table = _open(uri, storage_options)
        pointer = self.pointer(target, storage_options) or {}
        with _delta_errors(uri, "list the runs"):
            adds = pa.table(table.get_add_actions(flatten=True))
        written = {}
        for run, mtime in zip(adds.column(f"partition.{PARTITION}").to_pylist(),
                              adds.column("modification_time").to_pylist(), strict=True):
            written[run] = max(written.get(run, mtime), mtime)
        newest = sorted(written, key=lambda r: (written[r], r), reverse=True)
        kept = set(newest[:keep_runs]) | {pointer.get("run_id")}
        deleted = sorted(r for r in newest if r not in kept)
        if deleted:
            for run in deleted:  # names a partition of ours: never a quote in it
                if not RUN_ID.fullmatch(run):
                    raise ValueError(f"The Delta table at {redact_url(uri)} has a run "
                                     f"{run!r} that daskgmm did not write; prune it by hand.")
            predicate = f"{PARTITION} IN ({', '.join(repr(r) for r in deleted)})"
            with _delta_errors(uri, f"delete the rows of runs {deleted}"):
                table.delete(predicate, commit_properties=CommitProperties(custom_metadata={
                    PRUNE_KEY: {"deleted_runs": deleted, "keep_runs": keep_runs}}))
        with _delta_errors(uri, "vacuum"):
            removed = table.vacuum(dry_run=False, full=True)
        if removed:
            logger.info("vacuum of %s removed %d file(s)", redact_url(uri), len(removed))
        return [f"{PARTITION}={r}" for r in deleted]


###############################################################################
# Workers


def _write_file(scores, fs, root, relative, schema, constants, row_start, ids, n_points):
    """Write one data file; returns its summary and what its add action needs."""
    n = scores.shape[0]
    ids_columns = id_arrays(n, row_start, ids)
    model_id, model_version, threshold = constants
    arrays = ids_columns + score_arrays(scores, schema.names) + [
        pa.repeat(pa.scalar(model_id, pa.string()), n),
        pa.repeat(pa.scalar(model_version, pa.string()), n),
        pa.array(np.full(n, threshold, dtype=np.float64)),
    ]
    table = pa.Table.from_arrays(arrays, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    data = sink.getvalue()
    path = f"{root}/{relative}"
    with naming_write_errors(url_of(fs, path)):
        if is_local(fs):
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, data.to_pybytes())
    add = {"path": relative, "size": data.size, "modification_time": int(time.time() * 1000),
           "stats": json.dumps(_stats(table), allow_nan=False)}
    del table, arrays, ids_columns, data
    pa.default_memory_pool().release_unused()
    return summary(scores, n_points), add


def _stats(table) -> dict:
    """Delta file statistics: rows, nulls, and bounds of the integer and finite float
    columns (readers skip files by them, so a bound is given only when exact)."""
    mins, maxs, nulls = {}, {}, {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        nulls[name] = column.null_count
        kind = column.type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            continue
        if column.null_count == len(column) or len(column) == 0:
            continue
        if pa.types.is_floating(kind) and not pc.all(pc.is_finite(column)).as_py():
            continue
        bounds = pc.min_max(column)
        mins[name], maxs[name] = bounds["min"].as_py(), bounds["max"].as_py()
    return {"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs,
            "nullCount": nulls}


def _add_action(add, run_id):
    from deltalake.transaction import AddAction

    return AddAction(path=add["path"], size=add["size"],
                     partition_values={PARTITION: run_id},
                     modification_time=add["modification_time"], data_change=True,
                     stats=add["stats"])


def _partition_value(value: str) -> str:
    """A partition value as delta-rs names its directory (``=`` is ``%3D``...)."""
    return urllib.parse.quote(value, safe="")


def _remove_attempt(fs, directory, token):
    """Best effort: remove the data files of attempt ``token`` (never committed, so no
    version needs them); a file still being written may stay, for ``vacuum``."""
    try:
        fs.invalidate_cache(directory)
        if not fs.isdir(directory):
            return
        for path in fs.ls(directory, detail=False):
            if path.endswith(f"-{token}.parquet"):
                fs.rm(path)
        if not fs.ls(directory, detail=False):
            fs.rm(directory, recursive=True)
    except Exception:  # noqa: BLE001 - cleanup must not hide the original error
        logger.warning("could not remove the files of attempt %s under %s", token,
                       redact_url(url_of(fs, directory)), exc_info=True)


###############################################################################
# The table


def _deltalake():
    """The ``deltalake`` module, or an ImportError saying how to install it."""
    try:
        import deltalake
    except ImportError:
        raise ImportError(
            "Delta Lake score output needs the deltalake package (delta-rs): "
            "pip install 'daskgmm[delta]' (or pip install 'deltalake>=1.0')."
        ) from None
    return deltalake


def _open(uri, storage_options, version=None):
    """The Delta table at ``uri`` (at ``version``), or None when there is none."""
    _deltalake()
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    options = object_store_options(uri, storage_options)
    with _delta_errors(uri, "open the Delta table" if version is None
                       else f"open version {version} of the Delta table"):
        try:
            return DeltaTable(uri, version=version, storage_options=options or None)
        except TableNotFoundError:
            if version is not None:
                raise
            return None


def _commits(fs, root, latest):
    """``(version, commitInfo)`` of the table's commits from ``latest`` back, read from
    the JSON commit files of its log (the Delta protocol's own record of each commit);
    it ends where the log was cleaned up. ``DeltaTable.history`` would do, but it holds
    the GIL while it lists the log, stalling every other thread of the process."""
    fs.invalidate_cache(f"{root}/{LOG}")  # s3fs answers from its listings cache
    for version in range(latest, -1, -1):
        path = f"{root}/{LOG}/{version:020d}.json"
        try:
            raw = fs.cat_file(path)
        except FileNotFoundError:
            return
        for line in raw.splitlines():
            try:
                action = json.loads(line)
            except ValueError:
                raise ValueError(
                    f"{redact_url(url_of(fs, path))} is damaged (a line is not JSON): the "
                    "Delta table's commit cannot be read. Restore it from a backup.") from None
            if isinstance(action, dict) and isinstance(action.get("commitInfo"), dict):
                yield version, action["commitInfo"]
                break


# Score columns added after the first daskgmm release with Delta output: a table created
# before has runs without them, and keeps its schema (its later runs leave them out).
_LATER_SCORE_COLUMNS = ("missing_features",)


def _as_table_was(table, schema, delta_schema, uri):
    """``(schema, delta_schema)`` of this run for an existing ``table``: without the
    score columns the table was created without (its older runs lack them)."""
    from deltalake import Schema as DeltaSchema

    have = {f.name for f in table.schema().fields}
    absent = [n for n in _LATER_SCORE_COLUMNS if n not in have]
    if not absent:
        return schema, delta_schema
    logger.warning("the Delta table at %s was created without the score column(s) %s: "
                   "this run leaves them out too (write to a new table to have them)",
                   redact_url(uri), absent)
    schema = pa.schema([f for f in schema if f.name not in absent])
    return schema, DeltaSchema.from_arrow(schema)


def _check_schema(table, schema, uri):
    have = [(f.name, str(f.type)) for f in table.schema().fields]
    want = [(f.name, str(f.type)) for f in schema.fields]
    if have != want:
        raise ValueError(
            f"The Delta table at {redact_url(uri)} has the columns "
            f"{[n for n, _ in have]}; this run writes {[n for n, _ in want]}"
            + ("" if [n for n, _ in have] != [n for n, _ in want]
               else f" with other types ({have} against {want})")
            + ". Runs of one table share a schema: pass the id_columns of its earlier runs, "
              "or write to another target."
        )


@contextmanager
def _delta_errors(uri, what):
    """Name the table and what was being done in a ``deltalake`` error: a ``ValueError``
    (the table or its options) or ``OSError`` (the storage), the original as cause."""
    from deltalake.exceptions import DeltaError, TableNotFoundError

    try:
        yield
    except TableNotFoundError as exc:
        raise ValueError(f"No Delta table at {redact_url(uri)} (could not {what}): "
                         f"{exc}") from exc
    except DeltaError as exc:
        text = redact_url(str(exc))
        if "error sending request" in text or "connect" in text.lower():
            raise OSError(f"Could not reach the storage of the Delta table at "
                          f"{redact_url(uri)} to {what} ({text}): check that its endpoint "
                          "is up and reachable, then re-run.") from exc
        raise ValueError(f"Could not {what} at {redact_url(uri)}: {text}. Check the table "
                         "and its storage_options; a table damaged by hand can be restored "
                         "to an earlier version with deltalake's DeltaTable.restore.") from exc


###############################################################################
# Storage options


# fsspec (s3fs) option -> object_store option
_S3_KEYS = {"key": "aws_access_key_id", "secret": "aws_secret_access_key",
            "token": "aws_session_token", "endpoint_url": "aws_endpoint_url",
            "region_name": "aws_region"}
_IGNORED = {"auto_mkdir", "use_listings_cache", "listings_expiry_time", "skip_instance_cache",
            "default_block_size", "default_cache_type", "asynchronous", "loop"}
_NATIVE = ("aws_", "azure_", "google_", "AWS_", "AZURE_", "GOOGLE_")


def object_store_options(uri, storage_options) -> dict:
    """fsspec ``storage_options`` (as s3fs takes them) as delta-rs (object_store)
    options: ``key``, ``secret``, ``token``, ``endpoint_url`` and ``region_name`` (also
    in ``client_kwargs``), ``anon`` and ``use_ssl``; options already in object_store's
    spelling (``aws_...``, ``AWS_...``, ``azure_...``, ``google_...``) pass unchanged.
    Other options are an error naming them (values are never shown)."""
    if _is_local_uri(uri):
        return {}
    out, unknown = {}, []
    for key, value in (storage_options or {}).items():
        if key == "client_kwargs" and isinstance(value, dict):
            for inner, v in value.items():
                if inner in _S3_KEYS:
                    out[_S3_KEYS[inner]] = str(v)
                else:
                    unknown.append(f"client_kwargs.{inner}")
        elif key in _S3_KEYS:
            out[_S3_KEYS[key]] = str(value)
        elif key == "anon":
            if value:
                out["aws_skip_signature"] = "true"
        elif key == "use_ssl":
            if not value:
                out["aws_allow_http"] = "true"
        elif key.startswith(_NATIVE):
            out[key] = str(value)
        elif key not in _IGNORED:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"storage_options {unknown} of the Delta table at {redact_url(str(uri))} have "
            "no delta-rs equivalent here: give them in delta-rs (object_store) spelling, "
            "e.g. aws_endpoint_url, aws_region, aws_allow_http, aws_access_key_id.")
    endpoint = out.get("aws_endpoint_url", "")
    if endpoint.startswith("http://"):
        out.setdefault("aws_allow_http", "true")
    if str(uri).startswith(("s3://", "s3a://")) and endpoint:
        out.setdefault("aws_region", "us-east-1")  # a custom endpoint needs some region
    return out


def _is_local_uri(uri) -> bool:
    return "://" not in str(uri) or str(uri).startswith("file://")
