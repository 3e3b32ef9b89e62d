"""What a score output format is, and the versioned formats (Parquet, Zarr) built on it.

A format publishes one run's scores atomically, reads the current ones, and prunes old
runs. :class:`ScoreFormat` is the interface :mod:`daskgmm.scores.publish` uses; a new
format is one module with one subclass, registered in ``location.FORMATS``.
:class:`VersionedScores` is the shared base of the formats that keep complete versions
under ``_versions/<run_id>/<attempt>/`` with a pointer to the current one
(:class:`daskgmm.versioned.VersionedLocation`): a subclass says where its marker,
pointer and manifests live and how it writes one version's pieces.
"""

from __future__ import annotations

import abc
import logging
import re
import secrets
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .._storage import RUN_ID, join, naming_write_errors
from ..kernels import SCORE_DTYPE
from ..quantiles import RankSketch, combine_sketches
from ..versioned import Metadata, VersionedLocation

logger = logging.getLogger(__name__)

FORMAT = "daskgmm-scores"
FORMAT_VERSION = 1
VERSIONS = "_versions"
# What a pointer may name: a version directory of its own location, never a path out of it
_VERSION = re.compile(rf"{VERSIONS}/{RUN_ID.pattern}/[0-9a-f]+")
ROW_NUMBER = "row_number"
# Score columns, in the order they are written, with their Arrow types.
SCORE_FIELDS = [(name, pa.from_numpy_dtype(SCORE_DTYPE[name])) for name in SCORE_DTYPE.names]
# The columns that are null for a row the model left out (nan_policy='omit': no score,
# no component); the others are never null.
UNSCORED_NULL = ("log_density", "anomaly_score", "component", "responsibility")


def score_fields() -> list:
    """The Arrow fields of the score columns (Parquet and Delta output)."""
    return [pa.field(n, t, nullable=n in UNSCORED_NULL) for n, t in SCORE_FIELDS]


def score_arrays(scores, names=None) -> list:
    """The Arrow arrays of a piece of score records (of the score columns among
    ``names``, by default all): a row left out by the model (``nan_policy='omit'``,
    log-density NaN) is null in ``UNSCORED_NULL``, so SQL engines skip it (they sort NaN
    above every number) and ``IS NULL`` finds it."""
    unscored = np.isnan(scores["log_density"])
    mask = unscored if unscored.any() else None
    return [pa.array(scores[name], mask=mask if name in UNSCORED_NULL else None)
            for name, _ in SCORE_FIELDS if names is None or name in names]


def score_pieces(scores, dataset, id_columns):
    """How a file format splits a run's scores: one piece per input file of a Parquet
    source (the scores rechunked so), else per row chunk. Returns the scores, the id
    fields (the ``id_columns`` as in the source, or ``row_number``) and the source's files
    (``(path, relative, n_rows)``, or None)."""
    origin = dataset.origin
    if origin is not None and origin.kind == "parquet":
        files = origin.files
        scores = scores.rechunk((tuple(n for _, _, n in files),))
        if id_columns:
            return scores, [origin.schemas[0].field(c) for c in id_columns], files
        return scores, [pa.field(ROW_NUMBER, pa.int64(), nullable=False)], files
    return scores, [pa.field(ROW_NUMBER, pa.int64(), nullable=False)], None


def id_arrays(n, row_start, ids):
    """The id columns of a piece of ``n`` scored rows: ``row_number`` from ``row_start``,
    or (``ids = (path, fs, id_columns, relative)``) the id columns read from its input
    file, which must still hold ``n`` rows."""
    if ids is None:
        return [pa.array(np.arange(row_start, row_start + n, dtype=np.int64))]
    in_path, in_fs, id_columns, relative = ids
    table = pq.read_table(in_path, columns=id_columns, filesystem=in_fs, use_threads=False)
    if table.num_rows != n:
        raise ValueError(
            f"File {relative!r} changed while it was scored: it has {table.num_rows} "
            f"rows, {n} were scored. Re-run on data that is not being written."
        )
    return [table.column(c).combine_chunks() for c in id_columns]


class PieceSummary(NamedTuple):
    """What a written piece of scores reports: a sketch of its log-densities (for the
    manifest, drift checks and histograms; rows scored NaN under ``nan_policy='omit'``
    are not in it), its rows, anomalies, and rows with missing features."""

    sketch: RankSketch
    n_rows: int
    n_anomalies: int
    n_incomplete: int


def summary(scores, n_points) -> PieceSummary:
    """The :class:`PieceSummary` of a piece of score records."""
    log_density = scores["log_density"]
    scored = log_density[~np.isnan(log_density)]
    return PieceSummary(RankSketch.from_values(scored, n_points), int(scores.shape[0]),
                        int(np.count_nonzero(scores["is_anomaly"])),
                        int(np.count_nonzero(scores["missing_features"])))


def piece_totals(parts) -> dict:
    """The manifest's totals over the :class:`PieceSummary` of every piece, and the
    combined sketch (under ``"sketch"``)."""
    sketch = combine_sketches([p.sketch for p in parts])
    scored = sketch.n_samples
    return {
        "n_rows": int(sum(p.n_rows for p in parts)),
        "n_anomalies": int(sum(p.n_anomalies for p in parts)),
        "n_incomplete": int(sum(p.n_incomplete for p in parts)),
        "log_likelihood": sketch.log_likelihood / scored if scored else float("nan"),
        "sketch": sketch,
    }


class ScoreFormat(abc.ABC):
    """One way of writing scores to storage."""

    kind: str

    @abc.abstractmethod
    def marker(self, fs, root) -> dict | None:
        """The format's marker at ``root`` when it holds scores of this format."""

    @abc.abstractmethod
    def check(self, target, storage_options) -> bool:
        """Whether ``target`` already holds scores of this format (False: absent or
        empty); raises ``ValueError`` when it holds anything else."""

    @abc.abstractmethod
    def publish(self, scores, dataset, target, *, run_id, info, id_columns,
                storage_options, before_commit=None) -> dict:
        """Write ``scores`` (a lazy dask array of ``SCORE_DTYPE`` records chunked like
        ``dataset``) as run ``run_id`` and make them current, atomically; return the
        manifest, with ``version`` (relative to ``target``), ``n_rows``,
        ``n_anomalies``, ``n_incomplete`` (rows with missing features),
        ``log_likelihood`` and the ``sketch`` of the log-densities.
        ``before_commit``: called once the version is written, before it becomes
        current; an exception there removes the version and publishes nothing."""

    @abc.abstractmethod
    def pointer(self, target, storage_options) -> dict | None:
        """The current publication's manifest, or None."""

    @abc.abstractmethod
    def read(self, target, manifest, storage_options):
        """The scores of the publication ``manifest`` as a pandas DataFrame."""

    @abc.abstractmethod
    def prune(self, target, keep_runs, current, storage_options) -> list[str]:
        """Delete the publications of all but the ``keep_runs`` most recent runs, never
        ``current`` (a version); return the deleted versions."""

    @abc.abstractmethod
    def version_problem(self, manifest) -> str | None:
        """What is wrong with the ``version`` (and run) a pointer read from storage
        names, or None: readers open what it names, so it must name a publication of
        this location."""

    @abc.abstractmethod
    def url(self, target, manifest) -> str:
        """Path or URL of the publication ``manifest`` at ``target``, for readers."""


class VersionedScores(ScoreFormat):
    """Scores as complete versions ``_versions/<run_id>/<attempt>`` and a pointer."""

    def version_problem(self, manifest):
        version = manifest.get("version")
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            return (f"version {version!r} is not a version of this location "
                    f"({VERSIONS}/<run_id>/<attempt>)")
        return None

    def url(self, target, manifest):
        return join(target, manifest["version"])

    @abc.abstractmethod
    def metadata(self, storage_options) -> Metadata:
        """Where this format keeps its marker, pointer and manifests."""

    @abc.abstractmethod
    def write_version(self, scores, dataset, location: VersionedLocation, version, info,
                      id_columns, storage_options):
        """Write the pieces of ``version``; returns ``(parts, columns)``: per piece its
        :class:`PieceSummary`, and the written columns' names and types."""

    def location(self, target, storage_options) -> VersionedLocation:
        return VersionedLocation(
            target, what="score location", format=FORMAT,
            metadata=self.metadata(storage_options), versions=VERSIONS, depth=2,
            storage_options=storage_options, writer="daskgmm.write_scores",
            refusal=f"Refusing to write scores to {str(target)!r}", manifest_format=FORMAT,
        )

    def marker(self, fs, root):
        marker = self.metadata(None).read_marker(fs, root)
        return marker if marker is not None and marker.get("format") == FORMAT else None

    def check(self, target, storage_options):
        return self.location(target, storage_options).present()

    def publish(self, scores, dataset, target, *, run_id, info, id_columns,
                storage_options, before_commit=None):
        location = self.location(target, storage_options)
        if not location.present():
            location.create({
                "format_version": FORMAT_VERSION, "kind": self.kind,
                "library_version": info["library_version"],
                "note": "daskgmm anomaly scores: read the version the pointer names.",
            })
        token = secrets.token_hex(4)
        version = f"{run_id}/{token}"
        try:
            with naming_write_errors(location.version_url(version)):
                parts, columns = self.write_version(scores, dataset, location, version, info,
                                                    id_columns, storage_options)
            totals = piece_totals(parts)
            sketch = totals.pop("sketch")
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "kind": self.kind,
                "version": location.relative(version),
                **info,
                "written_at": datetime.now(UTC).isoformat(timespec="microseconds"),
                "source": dataset.description,
                **totals,
                "schema": columns,
            }
            location.complete(version, manifest)
            if before_commit is not None:
                before_commit()
        except BaseException:
            location.remove(version)
            _remove_if_empty(location, run_id)
            raise
        location.point_to(manifest)  # publication: readers switch here
        for other in location.entries(run_id):  # superseded attempts of this run
            if other != version:
                location.remove(other)
        return {**manifest, "sketch": sketch}

    def pointer(self, target, storage_options):
        return self.location(target, storage_options).pointer()

    def prune(self, target, keep_runs, current, storage_options):
        location = self.location(target, storage_options)
        deleted = location.prune(
            keep_runs, None if current is None else current.removeprefix(f"{VERSIONS}/"),
            group=lambda version: version.split("/")[0],
            order=lambda version, manifest: (manifest.get("written_at", ""), version),
        )
        return [location.relative(v) for v in deleted]


def _remove_if_empty(location: VersionedLocation, run_id: str):
    """Remove the directory of run ``run_id`` when no attempt is left in it (best effort:
    it runs while an error is raised, which it must not hide)."""
    try:
        if not location.entries(run_id):
            location.remove(run_id)
    except Exception:  # noqa: BLE001
        logger.warning("could not check or remove %s", location.version_url(run_id),
                       exc_info=True)
