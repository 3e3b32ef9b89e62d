"""A score location as readers see it: which format it holds, its current version,
reading it, and retention."""

from __future__ import annotations

import logging
import re

from .._storage import RUN_ID, join, url_to_fs
from .delta_format import DeltaScores
from .formats import FORMAT, VERSIONS, ScoreFormat
from .parquet_format import ParquetScores
from .zarr_format import ZarrScores

logger = logging.getLogger(__name__)

# What a pointer may name: a version directory of its own location, never a path out of it
_VERSION = re.compile(rf"{VERSIONS}/{RUN_ID.pattern}/[0-9a-f]+")

# Output formats by name: a new format is one module and one entry here.
FORMATS: dict[str, ScoreFormat] = {
    f.kind: f for f in (ParquetScores(), ZarrScores(), DeltaScores())}


def get_format(kind) -> ScoreFormat:
    if kind not in FORMATS:
        names = " or ".join(repr(k) for k in sorted(FORMATS))
        raise ValueError(f"format must be {names}; got {kind!r}.")
    return FORMATS[kind]


def held_format(target, storage_options=None) -> ScoreFormat | None:
    """The format of the daskgmm scores at ``target``, or None (nothing of ours)."""
    fs, root = url_to_fs(target, storage_options)
    fs.invalidate_cache(root)
    if not fs.isdir(root):
        return None
    for fmt in FORMATS.values():
        if fmt.marker(fs, root) is not None:
            return fmt
    return None


def read_pointer(target, *, storage_options=None) -> dict:
    """The manifest of the current version at ``target`` (what its pointer holds)."""
    fmt = held_format(target, storage_options)
    pointer = None if fmt is None else fmt.pointer(target, storage_options)
    if pointer is None:
        raise FileNotFoundError(
            f"No published scores at {str(target)!r} (no pointer to a version). Publish with "
            "daskgmm.write_scores(model, source, target)."
        )
    problem = _pointer_problem(pointer, fmt)
    if problem:
        raise ValueError(
            f"The score pointer of {str(target)!r} is damaged: {problem}. Restore it from a "
            "backup, or publish again (daskgmm.write_scores replaces it)."
        )
    return pointer


def _pointer_problem(pointer, fmt) -> str | None:
    """What is wrong with a pointer read from a location holding ``fmt`` scores: readers
    join its version to the target, so it must name a version of that location."""
    if pointer.get("format") != FORMAT:
        return f"format {pointer.get('format')!r}, expected {FORMAT!r}"
    if pointer.get("kind") != fmt.kind:
        return f"kind {pointer.get('kind')!r}, but the location holds {fmt.kind} scores"
    version = pointer.get("version")
    if isinstance(fmt, DeltaScores):  # a commit of the table, of one run
        run_id = pointer.get("run_id")
        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
            return f"run_id {run_id!r} is not a run id"
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            return f"version {version!r} is not a version of the Delta table"
        return None
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        return (f"version {version!r} is not a version of this location "
                f"({VERSIONS}/<run_id>/<attempt>)")
    return None


def latest_scores(target, *, storage_options=None) -> str:
    """Path or URL of the current version of the scores at ``target``.

    Parquet: ``pandas.read_parquet(daskgmm.latest_scores("out/scores"))``.
    Zarr: ``zarr.open_group(daskgmm.latest_scores("data.zarr/scores"))``.
    Delta: the table itself (Delta readers read its latest snapshot, every kept run;
    ``read_pointer(target)`` names the current run and its table version).
    """
    pointer = read_pointer(target, storage_options=storage_options)
    return publication_url(get_format(pointer["kind"]), target, pointer)


def publication_url(fmt: ScoreFormat, target, manifest) -> str:
    """Path or URL of the publication ``manifest`` at ``target``: its version directory,
    or for a Delta table the table (a run is its rows, a version its commit)."""
    if isinstance(fmt, DeltaScores):
        return str(target).rstrip("/")
    return join(target, manifest["version"])


def read_scores(target, *, storage_options=None):
    """The current scores at ``target`` as a pandas DataFrame (small outputs only)."""
    pointer = read_pointer(target, storage_options=storage_options)
    return get_format(pointer["kind"]).read(target, pointer, storage_options)


def prune_scores(target, keep_runs: int, *, storage_options=None) -> list[str]:
    """Delete the published versions of all but the ``keep_runs`` most recent runs.

    The version the pointer names is always kept, and so are attempts that never
    completed (they may belong to a run in progress; a re-run of their run id removes
    them). Returns the deleted versions. A Delta table deletes the rows of those runs in
    one commit and then runs Delta's ``vacuum`` with the table's retention
    (``delta.deletedFileRetentionDuration``, 7 days by default); it returns the deleted
    runs as ``run_id=<run_id>``.
    """
    if not isinstance(keep_runs, int) or isinstance(keep_runs, bool) or keep_runs < 1:
        raise ValueError(f"keep_runs must be an int >= 1; got {keep_runs!r}.")
    pointer = read_pointer(target, storage_options=storage_options)
    deleted = get_format(pointer["kind"]).prune(target, keep_runs, pointer["version"],
                                                storage_options)
    if deleted:
        logger.info("pruned %d score version(s) at %s, kept the %d most recent runs",
                    len(deleted), target, keep_runs)
    return deleted
