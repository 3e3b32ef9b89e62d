"""Write anomaly scores back to storage: versioned, atomic, idempotent publication.

A run writes its scores under a fresh ``_versions/<run_id>/<token>``; only when every
piece is written does it write the version manifest and then replace the pointer
(atomically: a rename on local disks, a single PUT on object stores). Readers that
follow the pointer see the previous complete scores or the new complete scores, never
a mix. A re-run with the same ``run_id`` then deletes the earlier attempts of that run
id, and nothing else. A failed run leaves the pointer naming the previous version and
removes what it wrote; a piece still being written by another worker when the failure
happened (or a process killed outright) can leave files in its unpublished version
directory, which the next successful run with the same ``run_id`` deletes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sklearn.utils.validation import check_is_fitted

from .. import anomaly, validation
from .._storage import RUN_ID, join, redact_url, url_to_fs
from .._version import __version__
from ..estimator import GaussianMixture, load, model_id
from ..progress import PassCounter
from ..quantiles import RankSketch
from ..sources import SourceFingerprint, as_dataset
from .formats import ROW_NUMBER, SCORE_FIELDS
from .location import get_format, held_format

logger = logging.getLogger(__name__)


@dataclass
class Publication:
    """What :func:`write_scores` published.

    Attributes
    ----------
    target : str
        The score location.
    version : str
        The published version, relative to ``target`` (``_versions/<run_id>/<token>``);
        for a Delta table, the table version of the run's commit (e.g. ``'3'``).
    location : str
        Path or URL of the version (a Delta table: the table): what
        ``daskgmm.latest_scores(target)`` returns.
    run_id, model_id, kind : str
        The run, the model's content hash, 'parquet', 'zarr' or 'delta'.
    n_rows, n_anomalies : int
    n_incomplete : int
        Rows scored with missing features (NaN): under the model's
        ``nan_policy='marginalize'`` scored by their observed features, under 'omit'
        scored NaN (not anomalies).
    log_likelihood : float
        Mean log-density per row (for drift checks).
    sketch : RankSketch
        Summary of the log-densities, for quantiles and histograms.
    seconds : float
    manifest : dict
        The version manifest as written.
    n_passes : int
        Passes over the data (1: scoring and writing are one pass).
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
    n_passes: int = 1
    n_incomplete: int = 0

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
    callback=None,
    missing_chunks=None,
    fingerprint=None,
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
    format : 'parquet', 'zarr' or 'delta', default=None
        The output format. Default: that of the source (Zarr for Zarr, else Parquet).
        'delta' (needs the ``delta`` extra, ``deltalake``) writes a Delta Lake table
        partitioned by ``run_id``: one commit per run (a re-run replaces the run's rows),
        see :mod:`daskgmm.scores.delta_format`.
    columns, array_name, storage_options, missing_chunks : override the model's
        parameters for reading ``source``.
    target_storage_options : dict, default=None
        fsspec options for ``target``; default: those of the source.
    model_version : str, default=None
        A label of the model (e.g. its version in a model store), kept in the manifest.
    callback : callable, default=None
        Receives a :class:`daskgmm.progress.ProgressEvent` after the pass.
    fingerprint : SourceFingerprint, default=None
        The source as it was when the job started (:func:`daskgmm.source_fingerprint`):
        checked before the pass and again before the scores become current; a change
        (a file replaced, added or removed, the array resized or rewritten) is a
        :class:`daskgmm.SourceChangedError` naming it, and nothing is published.

    Returns
    -------
    Publication

    Notes
    -----
    Parquet output: one file per input file (same relative path) for a Parquet source,
    else one file per row chunk (``part-00000.parquet``, ...), with the schema
    ``[id columns as in the source | row_number int64], log_density float64,
    anomaly_score float64, component int32, responsibility float64, is_anomaly bool,
    missing_features int32``.
    Zarr output: one 1-D array per score column in the version's group, chunked like the
    input rows, each with attributes naming the model and the run.
    Delta output: the Parquet schema followed by ``run_id`` (the partition), ``model_id``,
    ``model_version`` and ``threshold``; one data file per input file or row chunk.
    """
    t0 = time.perf_counter()
    counter = PassCounter(callback)
    if not isinstance(model, GaussianMixture):
        model = load(model, storage_options=target_storage_options or storage_options)
    check_is_fitted(model)
    anomaly.check_has_threshold(getattr(model, "threshold_", None))
    scorer = copy.copy(model)
    overrides = {"columns": columns, "array_name": array_name,
                 "storage_options": storage_options, "missing_chunks": missing_chunks}
    scorer.set_params(**{k: v for k, v in overrides.items() if v is not None})
    _leave_out_ids(scorer, source, id_columns)
    dataset = validation.predict_dataset(scorer, source)
    changed = _change_check(fingerprint, dataset)
    changed("Nothing was scored or published.")
    run_id = _checked_run_id(run_id)
    if target_storage_options is None:
        target_storage_options = scorer.storage_options
    target, fmt, id_columns = _checked_target(dataset, target, format, id_columns,
                                              target_storage_options)
    mid = model_id(model)
    info = {
        "model_id": mid,
        "model_version": model_version,
        "run_id": run_id,
        "threshold": float(model.threshold_),
        "contamination": model.contamination_,
        "nan_policy": getattr(model, "nan_policy", "raise"),
        "library_version": __version__,
    }
    scores = scorer.anomaly_scores(dataclasses.replace(dataset, lazy=True))
    manifest = fmt.publish(
        scores, dataset, target, run_id=run_id, info=info, id_columns=id_columns,
        storage_options=target_storage_options,
        before_commit=lambda: changed("The scores computed from it were not published."))
    counter.done("publish")
    sketch = manifest.pop("sketch")
    publication = Publication(
        target=str(target), version=str(manifest["version"]),
        location=fmt.url(target, manifest), run_id=run_id, model_id=mid,
        kind=fmt.kind, n_rows=manifest["n_rows"], n_anomalies=manifest["n_anomalies"],
        log_likelihood=manifest["log_likelihood"], sketch=sketch,
        seconds=time.perf_counter() - t0, manifest=manifest, n_passes=counter.count,
        n_incomplete=manifest["n_incomplete"],
    )
    logger.info(
        "published scores of %d rows (%d anomalies, %.3f%%) of %s to %s, version %s",
        publication.n_rows, publication.n_anomalies, 100 * publication.anomaly_rate,
        dataset.description, redact_url(str(target)), publication.version,
    )
    return publication


###############################################################################
# Checks


def _leave_out_ids(scorer, source, id_columns):
    """A model that knows no column names (fitted on Zarr or numpy) scoring a Parquet
    source without ``columns``: read every numeric column but the id columns (footers
    only), not the ids as features."""
    if (not id_columns or scorer.columns is not None
            or getattr(scorer, "feature_names_in_", None) is not None):
        return
    ids = {id_columns} if isinstance(id_columns, str) else {str(c) for c in id_columns}
    names = as_dataset(source, storage_options=scorer.storage_options).feature_names
    if names is not None:
        scorer.set_params(columns=[c for c in names if c not in ids])


def _change_check(fingerprint, dataset):
    """A function raising SourceChangedError when the source no longer matches
    ``fingerprint`` (nothing when there is none)."""
    if fingerprint is None:
        return lambda when: None
    if not isinstance(fingerprint, SourceFingerprint):
        raise TypeError(f"fingerprint must be a daskgmm.SourceFingerprint (from "
                        f"daskgmm.source_fingerprint), got {type(fingerprint).__name__}.")
    if dataset.origin is None:
        raise ValueError(f"fingerprint= needs a Zarr or Parquet path or URL as source; "
                         f"got a {dataset.description}.")
    return lambda when: fingerprint.check(dataset.origin, when=when)


def _checked_run_id(run_id):
    if run_id is None:
        return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"run_id must be 1 to 128 letters, digits or '_.=+-', starting with a letter "
            f"or digit (it names a directory); got {run_id!r}. E.g. run_id='2026-11-24'."
        )
    return run_id


def _checked_id_columns(id_columns, dataset):
    if id_columns is None:
        return []
    if isinstance(id_columns, str):
        id_columns = [id_columns]
    id_columns = [str(c) for c in id_columns]
    origin = dataset.origin
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
    missing_chunks="raise",
) -> str:
    """Check, writing nothing, that :func:`write_scores` can publish the scores of
    ``source`` at ``target`` (same arguments); returns the target it would use.

    Raises the ``ValueError`` that ``write_scores`` would raise only after its pass over
    the data: no default target, id columns missing from a file, a target inside a
    Parquet source, holding something else than daskgmm scores, or scores of the other
    format. A job can call it before fitting.
    """
    dataset = as_dataset(source, columns=columns, array_name=array_name,
                         storage_options=storage_options, missing_chunks=missing_chunks)
    if target_storage_options is None:
        target_storage_options = storage_options
    return _checked_target(dataset, target, format, id_columns, target_storage_options)[0]


def _checked_target(dataset, target, format, id_columns, storage_options):
    """``(target, format, id_columns)`` after every check that needs no write."""
    origin = dataset.origin
    if format is None:
        format = "zarr" if origin is not None and origin.kind == "zarr" else "parquet"
    fmt = get_format(format)
    id_columns = _checked_id_columns(id_columns, dataset)
    target = _default_target(target, dataset, fmt.kind)
    _check_not_inside_source(target, storage_options, origin)
    held = held_format(target, storage_options)
    if held is not None and held.kind != fmt.kind:
        raise ValueError(
            f"{str(target)!r} holds {held.kind} scores; this run writes {fmt.kind}. Use "
            f"another target, or format={held.kind!r}."
        )
    fmt.check(target, storage_options)
    return target, fmt, id_columns


def _default_target(target, dataset, kind):
    if target is not None:
        return os.fspath(target)
    origin = dataset.origin
    if kind == "delta":  # a table inside a Zarr group would break its hierarchy
        raise ValueError(
            f"target= is required to write the scores of {dataset.description} as a Delta "
            "table: a path or URL of a new (or earlier daskgmm Delta) table, e.g. "
            "target='out/scores-delta'."
        )
    if origin is not None and origin.kind == "zarr" and origin.group:
        return join(origin.url, "scores")
    raise ValueError(
        f"target= is required to write the scores of {dataset.description}: a path or URL "
        "of a new (or earlier daskgmm score) location, e.g. target='out/scores'. Only a "
        "Zarr group source has a default: its 'scores' subgroup."
    )


def _check_not_inside_source(target, storage_options, origin):
    if origin is None or origin.kind != "parquet":
        return
    fs, root = url_to_fs(target, storage_options)
    src = origin.root.rstrip("/")
    if fs.protocol == origin.fs.protocol and (root == src or root.startswith(f"{src}/")):
        raise ValueError(
            f"Refusing to write scores to {redact_url(str(target))!r}: it is inside the "
            f"Parquet source {redact_url(origin.url)!r}, whose readers would pick up the "
            "score files. Choose a location "
            "outside the source, e.g. a sibling directory."
        )
