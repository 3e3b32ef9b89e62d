"""A score location as readers see it: which format it holds, its current version,
reading it, and retention."""

from __future__ import annotations

import logging

from .._storage import url_to_fs
from .delta_format import DeltaScores
from .formats import FORMAT, ScoreFormat
from .parquet_format import ParquetScores
from .zarr_format import ZarrScores

logger = logging.getLogger(__name__)

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
    """What is wrong with a pointer read from a location holding ``fmt`` scores."""
    if pointer.get("format") != FORMAT:
        return f"format {pointer.get('format')!r}, expected {FORMAT!r}"
    if pointer.get("kind") != fmt.kind:
        return f"kind {pointer.get('kind')!r}, but the location holds {fmt.kind} scores"
    return fmt.version_problem(pointer)


def latest_scores(target, *, storage_options=None) -> str:
    """Path or URL of the current version of the scores at ``target``.

    Parquet: ``pandas.read_parquet(daskgmm.latest_scores("out/scores"))``.
    Zarr: ``zarr.open_group(daskgmm.latest_scores("data.zarr/scores"))``.
    Delta: the table itself (Delta readers read its latest snapshot, every kept run;
    ``read_pointer(target)`` names the current run and its table version).
    """
    pointer = read_pointer(target, storage_options=storage_options)
    return get_format(pointer["kind"]).url(target, pointer)


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
