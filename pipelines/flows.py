"""Prefect flows: ``select``, ``fit``, ``score`` and the ``nightly`` job that chains them.

Each flow loads a job file (:mod:`daskgmm_pipelines.config`), opens the Dask cluster it
names, and wires tasks that each call one library function; what the nightly job decides
is in :mod:`daskgmm_pipelines.policy`. Tasks that read or write storage retry with
exponential backoff on transient I/O errors; any other error fails the task with the
library's message.

Run ids. A run is named ``<job>-<flow>-<run_id>`` (``run_id`` defaults to the flow run's
scheduled date, UTC: ``demo-nightly-2026-11-24``), so that runs of different flows never
replace each other's outputs. The run id names the score version (a re-run of the same
run replaces its own scores and nothing else) and the fit's checkpoint (a re-run or a
retry of the same run resumes its fit from the last checkpoint and reaches the same
model). One run of a job at a time: every flow holds the job's lock in the model store.

Promotion. The nightly run promotes its model only when :func:`policy.promotion_verdict`
says so, and publishes tonight's scores with the model that is current after that
decision. ``fit`` and ``select`` save a version without making it current unless asked
(``promote=True``; the CLI's ``--promote``, or ``daskgmm promote``).

Time limit and retries. A flow run still running after ``DASKGMM_FLOW_TIMEOUT_SECONDS``
(default 43200, 12 hours: under the lock's default 24 hours, so a hung run ends before
another run may take its lock over) is interrupted and ends ``TimedOut``, a failed state.
The flows whose rerun is safe retry ``DASKGMM_FLOW_RETRIES`` times (default 0: an
in-process caller such as the CLI gets the error at once),
``DASKGMM_FLOW_RETRY_DELAY_SECONDS`` (default 600) later; deploy/prefect.yaml sets them
for the deployments. They are read when this module is imported: a deployment's worker
imports it in the flow run's own process.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

import daskgmm
from daskgmm.progress import PHASE_NAMES, PassTotal, fan_out
from daskgmm_pipelines import policy, report
from daskgmm_pipelines.cluster import dask_client
from daskgmm_pipelines.config import JobConfig, load_config, resolve_storage_options

# a full disk does not empty itself within a retry's back-off
_NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                  daskgmm.StorageFullError)


def _transient(task, task_run, state) -> bool:
    """Retry I/O errors that may pass (network, throttling), not missing files or bad data."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, (OSError, TimeoutError)) and not isinstance(exc, _NOT_TRANSIENT)


def _env_number(name: str, default: float, minimum: float, integer: bool = False):
    """The number in the environment variable ``name`` (``default`` when unset); an error
    naming the variable, its value and the fix otherwise."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= minimum) or (integer and value % 1):
        what = "a whole number" if integer else "a number"
        raise ValueError(
            f"The environment variable {name}={text!r} is not {what} >= {minimum:g}: set "
            f"it to one (deploy/prefect.yaml sets it in each deployment's job_variables "
            f"env), or unset it for the default {default:g}.")
    return int(value) if integer else value


# Read at import: Prefect takes a flow's time limit and retries from its decorator.
TIMEOUT_SECONDS = _env_number("DASKGMM_FLOW_TIMEOUT_SECONDS", 12 * 3600, 1)
RETRIES = _env_number("DASKGMM_FLOW_RETRIES", 0, 0, integer=True)
# whole seconds: a flow run's retry policy holds an int
RETRY_DELAY_SECONDS = _env_number("DASKGMM_FLOW_RETRY_DELAY_SECONDS", 600, 0, integer=True)
# a flow whose rerun is safe; see each flow's decorator for why it is
RERUN_SAFE = dict(retries=RETRIES, retry_delay_seconds=RETRY_DELAY_SECONDS)

IO = dict(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
          retry_jitter_factor=0.5, retry_condition_fn=_transient, cache_policy=NO_CACHE)
COMPUTE = dict(cache_policy=NO_CACHE)


###############################################################################
# Small helpers


def _key(*parts) -> str:
    """An artifact key: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")


def _in_time(t0: float) -> None:
    """Before a step readers see (publishing scores, promoting a model): a run past its
    time limit (the running flow's own, as ``with_options`` or a deployment set it) stops
    here, as Prefect's own limit would (state TimedOut). Prefect's limit interrupts the
    flow when it can, which may be after such a step."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    limit = TIMEOUT_SECONDS if context is None else context.flow.timeout_seconds
    if limit is not None and time.perf_counter() - t0 > limit:
        from prefect.flow_engine import FlowRunTimeoutError

        raise FlowRunTimeoutError(f"the run passed its time limit of {limit:g} s before "
                                  "publishing or promoting: nothing was published or "
                                  "promoted")


def _run_id(cfg: JobConfig, flow: str, given: str | None) -> str:
    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time or datetime.now(UTC)
    return policy.run_id(cfg.name, flow, given, when)


def _source_options(cfg: JobConfig) -> dict:
    return resolve_storage_options(cfg.source.storage_options, "source.storage_options")


def _output_options(cfg: JobConfig) -> dict:
    return resolve_storage_options(cfg.outputs.storage_options or {}, "outputs.storage_options")


def _scores_format(cfg: JobConfig) -> str | None:
    """The scores' format for write_scores: None ('auto') lets it follow the source."""
    return None if cfg.outputs.format == "auto" else cfg.outputs.format


def _read_kwargs(cfg: JobConfig) -> dict:
    """GaussianMixture parameters that say how to read the source."""
    return dict(columns=cfg.source.columns, array_name=cfg.source.array_name,
                storage_options=_source_options(cfg) or None,
                missing_chunks=cfg.source.missing_chunks)


def _source_kwargs(cfg: JobConfig) -> dict:
    """How to read the source for a fit: the features and the rows' sample weights
    (scoring reads only the features)."""
    return dict(_read_kwargs(cfg), weight_column=cfg.source.weight_column)


def _fit_kwargs(cfg: JobConfig) -> dict:
    """GaussianMixture parameters that say how to read the source for a fit, and what
    its rows holding NaN do."""
    return dict(_source_kwargs(cfg), nan_policy=cfg.model.nan_policy)


def _table(selection):
    """The selection table with NaN as None (JSON null)."""
    return selection.table_.replace({np.nan: None})


def _store(cfg: JobConfig) -> daskgmm.ModelStore:
    return daskgmm.ModelStore(cfg.outputs.model_store, storage_options=_output_options(cfg))


def _job(cfg: JobConfig) -> dict:
    return {"name": cfg.name, "source": cfg.source.uri, "config": cfg.summary()}


class _Progress:
    """The run's log lines and a Prefect progress artifact, from every pass's event.

    An EM pass logs one line per candidate that ran in it, labelled with the candidate
    ("select: k=3 full: iteration 5, mean log-likelihood -9.26, change 0.0012"), then one
    line for the pass ("select: pass 12 (EM): 4 of 8 candidates running", and after the
    last iteration how EM ended); any other pass one line naming its phase. Passes are
    counted over the task's library calls (a fit, then its threshold). The artifact
    shows at least how far EM has come (iterations against ``max_iter``; 100 once EM
    or the call's last pass is done) and describes the last pass.
    """

    def __init__(self, log, key, what):
        self.log, self.what = log, what
        self.passes = PassTotal()
        self.ended = {}  # label -> the last state of each candidate of the current EM
        self.artifact = create_progress_artifact(
            0.0, key=key, description=f"{what}: waiting for the first pass over the data")

    def __call__(self, event):
        n = self.passes(event)
        if event.phase == "em":
            line, progress = self._em(event, n), (
                100.0 if event.active == 0 else
                min(99.0, 100.0 * event.n_iter / max(event.max_iter, 1)))
        else:
            self.ended.clear()
            line = f"{self.what}: pass {n} ({PHASE_NAMES[event.phase]}) done"
            if event.phase == "final":
                line += f": scored the final parameters of {event.n_candidates} candidates"
            progress = 0.0 if event.phase == "initialization" else 100.0
        self.log.info("%s", line)
        update_progress_artifact(self.artifact, progress, description=line)

    def _em(self, event, n):
        for c in event.candidates:
            self.ended[c.label] = c
            if c.error is not None:
                self.log.warning("%s: %s: failed at iteration %d, left out: %s", self.what,
                                 c.label, c.n_iter, c.error)
                continue
            change = f"{c.change:.3g}" if math.isfinite(c.change) else "-"
            end = (", converged" if c.converged else
                   f", stopped at max_iter={event.max_iter}" if c.done else "")
            self.log.info("%s: %s: iteration %d, mean log-likelihood %.6f, change %s%s",
                          self.what, c.label, c.n_iter, c.log_likelihood, change, end)
        head = f"{self.what}: pass {n} (EM)"
        if event.active:
            noun = "candidate" if event.n_candidates == 1 else "candidates"
            return f"{head}: {event.active} of {event.n_candidates} {noun} running"
        return f"{head}: EM finished, {self._how_em_ended(list(self.ended.values()))}"

    @staticmethod
    def _how_em_ended(ended) -> str:
        """'converged at iteration 12', or '6 of 8 candidates converged, 1 stopped at
        max_iter, 1 failed'."""
        converged = sum(c.converged for c in ended)
        failed = sum(c.error is not None for c in ended)
        if len(ended) == 1:
            (c,) = ended
            return (f"converged at iteration {c.n_iter}" if c.converged else
                    f"failed at iteration {c.n_iter}" if failed else
                    f"not converged after {c.n_iter} iterations (max_iter)")
        parts = [f"{converged} of {len(ended)} candidates converged"]
        if len(ended) - converged - failed:
            parts.append(f"{len(ended) - converged - failed} stopped at max_iter")
        if failed:
            parts.append(f"{failed} failed")
        return ", ".join(parts)


def _progress(key, what, progress):
    """The callback of a library call: the run's log and artifact, then ``progress``."""
    return fan_out(_Progress(get_run_logger(), key, what), progress)


def _anomaly_kwargs(cfg):
    if cfg.anomaly.threshold is not None:
        return {"threshold": cfg.anomaly.threshold}
    return {"contamination": cfg.anomaly.contamination}


###############################################################################
# Tasks


@task(name="load-config", **COMPUTE)
def load_job(config_path: str) -> JobConfig:
    # the library's INFO lines (persisting, fitted, thresholds, published) in the run's
    # logs; Prefect attaches its handlers to the loggers in PREFECT_LOGGING_EXTRA_LOGGERS
    logging.getLogger("daskgmm").setLevel(logging.INFO)
    cfg = load_config(config_path)
    get_run_logger().info("job %r from %s: %s", cfg.name, config_path, cfg.summary())
    return cfg


@task(name="check-source", **IO)
def check_source(cfg: JobConfig) -> JobConfig:
    """Read the source's metadata (shape, columns) and check that the score location can
    take its scores, before any pass over the data. A Parquet source needs the job's
    feature columns (:func:`policy.feature_columns`)."""
    dataset = daskgmm.as_dataset(cfg.source.uri, **_source_kwargs(cfg))
    if dataset.origin is not None and dataset.origin.kind == "parquet":
        policy.feature_columns(cfg.source.columns, cfg.source.id_columns,
                               dataset.feature_names, dataset.description)
    daskgmm.check_score_target(
        dataset, cfg.outputs.scores, id_columns=cfg.source.id_columns or None,
        format=_scores_format(cfg), target_storage_options=_output_options(cfg) or None,
    )
    get_run_logger().info("source %s: %d rows x %d features", dataset.description,
                          dataset.n_samples, dataset.n_features)
    return cfg


@task(name="fingerprint-source", **IO)
def fingerprint_source(cfg: JobConfig) -> daskgmm.SourceFingerprint:
    """The source's files (sizes, ETags or modification times) as the job starts; the
    publication checks them again and publishes nothing when they changed."""
    fingerprint = daskgmm.source_fingerprint(cfg.source.uri, **_read_kwargs(cfg))
    get_run_logger().info("source fingerprint: %d objects of %s", len(fingerprint.entries),
                          fingerprint.description)
    return fingerprint


@task(name="current-model", **IO)
def current_model(cfg: JobConfig, version: str | None = None):
    """The store's current version (or ``version``): its info and model; (None, None)
    when the store has no current model."""
    store = _store(cfg)
    info = store.current() if version is None else store.info(version)
    if info is None:
        return None, None
    try:
        return info, store.load(info["version"])
    except daskgmm.ModelFileError as exc:
        raise daskgmm.ModelFileError(
            f"{exc} Model version {info['version']} of {store.url} cannot be used: make a "
            f"version you trust current with 'daskgmm promote CONFIG VERSION' (daskgmm "
            f"inspect {store.url} lists them), then run again."
        ) from exc


@task(name="select-model", **IO)
def select_task(cfg: JobConfig, key: str, progress: Callable | None = None):
    """The BIC grid of the config, in shared passes; a table artifact of the grid."""
    m = cfg.model
    log = get_run_logger()
    selection = daskgmm.select_model(
        cfg.source.uri, m.n_components, m.covariance_types, criterion=m.criterion,
        n_init=m.n_init, random_state=m.seed, tol=m.tol, max_iter=m.max_iter,
        reg_covar=m.reg_covar, init_params=m.init, **_anomaly_kwargs(cfg),
        callback=_progress(_key(key, "selection-progress"), "selection", progress),
        **_fit_kwargs(cfg),
    )
    table = _table(selection)
    create_table_artifact(
        table.round(4).to_dict(orient="records"), key=_key(key, "bic-table"),
        description=f"{m.criterion.upper()} of every candidate; chosen: k="
                    f"{selection.best_.n_components}, {selection.best_.covariance_type}",
    )
    log.info("selected k=%d, %s in %d passes", selection.best_.n_components,
             selection.best_.covariance_type, selection.n_passes_)
    return selection


@task(name="fit-model", **IO)
def fit_task(cfg: JobConfig, key: str, run_id: str, n_components=None, covariance_type=None,
             progress: Callable | None = None):
    """EM on tonight's data from the config's seed; checkpointed to the model store,
    resumed from this run's checkpoint; then the anomaly threshold."""
    m = cfg.model
    gm = daskgmm.GaussianMixture(
        n_components=n_components or m.n_components[0],
        covariance_type=covariance_type or m.covariance_types[0], tol=m.tol,
        reg_covar=m.reg_covar, max_iter=m.max_iter, n_init=m.n_init,
        init_params=m.init, random_state=m.seed, **_fit_kwargs(cfg),
    )
    callback = _progress(_key(key, "fit-progress"), "fit", progress)
    _fit(cfg, run_id, gm, callback)
    return gm.set_threshold(cfg.source.uri, callback=callback, **_anomaly_kwargs(cfg))


@task(name="warm-start-fit", **IO)
def warm_fit_task(cfg: JobConfig, key: str, run_id: str, start,
                  progress: Callable | None = None) -> tuple:
    """EM on tonight's data from the current model, whose first pass is the drift check
    (:class:`policy.DriftGuard`): on drift the fit stops there. Returns ``(model,
    drift, n_passes)``, with no model on drift."""
    m = cfg.model
    gm = copy.deepcopy(start)  # a retry must start from the same model again
    gm.set_params(warm_start=True, tol=m.tol, max_iter=m.max_iter, reg_covar=m.reg_covar,
                  **_fit_kwargs(cfg))
    guard = policy.DriftGuard(getattr(start, "training_log_likelihood_", math.nan),
                              cfg.nightly.drift_margin)
    callback = _progress(_key(key, "fit-progress"), "fit", progress)
    _fit(cfg, run_id, gm, fan_out(callback, guard))
    drift = guard.verdict(gm)
    get_run_logger().info(
        "drift check: tonight's mean log-likelihood %.4f, training %.4f, margin %s: %s",
        drift.tonight, drift.training, drift.margin, "DRIFTED" if drift.drifted else "ok")
    if drift.drifted:
        return None, drift, gm.n_passes_
    gm.set_threshold(cfg.source.uri, callback=callback, **_anomaly_kwargs(cfg))
    return gm, drift, gm.n_passes_ + gm.threshold_n_passes_


def _fit(cfg: JobConfig, run_id: str, gm, callback):
    checkpoint = _store(cfg).checkpoint(run_id, every=cfg.nightly.checkpoint_every)
    log = get_run_logger()
    gm.fit(cfg.source.uri, checkpoint=checkpoint, callback=callback)
    if gm.resumed_iteration_:
        log.info("resumed from the checkpoint of run %s at iteration %d", run_id,
                 gm.resumed_iteration_)
    log.info("fitted k=%d, %s: %d iterations, converged=%s, %d passes, %.1fs",
             gm.n_components, gm.covariance_type, gm.n_iter_, gm.converged_, gm.n_passes_,
             gm.fit_seconds_)


@task(name="save-model", **IO)
def save_model(cfg: JobConfig, model, version: str, info: dict) -> str:
    """Write ``model`` as ``version`` of the model store (not current yet)."""
    store = _store(cfg)
    store.save(model, version, info)
    get_run_logger().info("saved model version %s to %s", version, store.version_url(version))
    return version


@task(name="publish-scores", **IO)
def publish_scores(cfg: JobConfig, model, run_id: str, model_version: str,
                   fingerprint: daskgmm.SourceFingerprint, progress: Callable | None = None):
    pub = daskgmm.write_scores(
        model, cfg.source.uri, cfg.outputs.scores, run_id=run_id,
        id_columns=cfg.source.id_columns or None, model_version=model_version,
        format=_scores_format(cfg), target_storage_options=_output_options(cfg) or None,
        callback=_progress(_key(cfg.name, "publish-progress"), "publish", progress),
        fingerprint=fingerprint, **_read_kwargs(cfg),
    )
    get_run_logger().info(
        "published %d scores (%d anomalies, %.3f%%; %d rows with missing features) to %s",
        pub.n_rows, pub.n_anomalies, 100 * pub.anomaly_rate, pub.n_incomplete, pub.location,
    )
    return pub


@task(name="write-plots", **IO)
def write_plots(cfg: JobConfig, version: str, plots: dict) -> dict:
    """``{title: (name, png)}`` into the model version's ``report/``; ``{title: url}``."""
    store = _store(cfg)
    return {title: store.write_file(version, f"report/{name}.png", data)
            for title, (name, data) in plots.items()}


@task(name="write-report", **IO)
def write_report(cfg: JobConfig, version: str, summary: dict, plots: dict, key: str) -> dict:
    """PNG plots and the markdown summary into the model version; a markdown artifact."""
    store = _store(cfg)
    urls = write_plots.fn(cfg, version, plots)
    # the file links its plots relatively (they sit next to it); the artifact, shown by
    # the Prefect UI, which cannot read the model store, embeds them
    local = report.summary_markdown({**summary, "plots": {
        title: f"{name}.png" for title, (name, _) in plots.items()}})
    summary = {**summary, "plots": urls}
    summary["report_url"] = store.write_file(version, "report/summary.md", local.encode())
    images = {title: report.png_data_uri(png) for title, (_, png) in plots.items()}
    create_markdown_artifact(report.summary_markdown(summary, images=images),
                             key=_key(key, "summary"),
                             description=f"daskgmm run {summary['run_id']}")
    return summary


@task(name="promote-model", **IO)
def promote(cfg: JobConfig, version: str, run_id: str, reason: str):
    store = _store(cfg)
    store.promote(version, reason=reason, actor=f"run {run_id}")
    get_run_logger().info("model version %s is now current in %s: %s", version, store.url,
                          reason)


@task(name="end-fit", **IO)
def end_fit(cfg: JobConfig, run_id: str):
    """The run's model is saved: its checkpoint has nothing left to resume."""
    _store(cfg).checkpoint(run_id).remove()


def job_lock(cfg: JobConfig, run_id: str):
    """The job's lock for this run (:class:`daskgmm.model_store.JobLock`), not taken yet:
    a flow takes it with :func:`lock_job` inside the ``try`` whose ``finally`` calls
    :func:`unlock_job`, so an attempt interrupted while taking it releases it too."""
    return _store(cfg).lock(run_id, hours=cfg.nightly.lock_hours)


@task(name="lock-job", **IO)
def lock_job(lock):
    """Take the job's lock; another run of the job fails here, before any work."""
    lock.acquire()


@task(name="unlock-job", **IO)
def unlock_job(lock):
    lock.release()


@task(name="prune-old-versions", **IO)
def prune(cfg: JobConfig, scores_target: str):
    """Keep the ``nightly.keep_versions`` newest model versions and score runs."""
    keep = cfg.nightly.keep_versions
    if keep is None:
        return
    models = _store(cfg).prune(keep)
    scores = daskgmm.prune_scores(scores_target, keep,
                                  storage_options=_output_options(cfg) or None)
    if models or scores:
        get_run_logger().info("deleted %d old model version(s) and %d old score version(s)",
                              len(models), len(scores))


###############################################################################
# Flows


def _plots(model, pub, selection=None):
    plots = {}
    if selection is not None:
        plots["BIC against k"] = ("bic", report.bic_plot(
            selection.table_, selection.criterion,
            (selection.best_.n_components, selection.best_.covariance_type)))
    if model.lower_bounds_:
        plots["Log-likelihood per iteration"] = ("loglik", report.loglik_plot(
            model.lower_bounds_))
    if pub is not None:
        plots["Anomaly scores"] = ("scores", report.score_histogram(pub.sketch,
                                                                    model.threshold_))
    return plots


# Retries: a retry keeps the run id (the run's scheduled date), so a fit that failed
# resumes from the run's checkpoint, the scores replace only the run's earlier attempt,
# and the model is promoted only after they are published; a retry after the promotion (a
# failed report or pruning) warm-starts from the model just promoted and saves one more
# version. Nothing readers see is left half-done either way.
@flow(name="daskgmm-nightly", timeout_seconds=TIMEOUT_SECONDS, **RERUN_SAFE)
def nightly(config_path: str = "configs/demo.yaml", run_id: str | None = None,
            progress: Callable | None = None) -> dict:
    """The nightly job: warm-start EM on tonight's data from the current model (or re-run
    the BIC selection when due, on drift, or with no model yet), save the model version,
    promote it if it passes the checks, score every row with the current model, publish,
    report. ``progress``: a callback receiving every pass's ``daskgmm.ProgressEvent``
    (in-process callers such as the CLI's progress bar)."""
    t0 = time.perf_counter()
    cfg = load_job(config_path)
    run_id = _run_id(cfg, "nightly", run_id)
    key = _key(cfg.name)
    log = get_run_logger()
    lock = job_lock(cfg, run_id)
    try:
        lock_job(lock)
        with dask_client(cfg.cluster, log):
            summary, pub = _night(cfg, run_id, key, log, t0, progress)
    finally:
        unlock_job(lock)
    log.info("run %s done in %.1fs: model %s (%s), scores %s, report %s", run_id,
             time.perf_counter() - t0, summary["model_url"],
             "current" if summary["promotion"]["promote"] else "not promoted",
             pub.location, summary["report_url"])
    return summary


def _night(cfg, run_id, key, log, t0, progress):
    cfg = check_source(cfg)
    fingerprint = fingerprint_source(cfg)
    info, current = current_model(cfg)
    reasons = policy.reselect_reasons(
        info, warm_start=cfg.nightly.warm_start,
        reselect_every_days=cfg.nightly.reselect_every_days, now=policy.utcnow())
    drift, n_passes, warm_version = None, 0, None
    if not reasons:
        warm_version = info["version"]
        log.info("warm start from model version %s", warm_version)
        model, drift, n_passes = warm_fit_task(cfg, key, run_id, current, progress)
        if drift.drifted:
            reasons.append(drift.reason())
    selection = None
    if reasons:
        log.info("full model selection: %s", "; ".join(reasons))
        selection = select_task(cfg, key, progress)
        model = selection.best_
        n_passes += selection.n_passes_
    version = _store(cfg).new_version(model)
    verdict = policy.promotion_verdict(
        model, has_current=current is not None,
        current_tonight=None if drift is None else drift.tonight,
        margin=cfg.nightly.promotion_margin, reasons=reasons,  # reasons: selection ran
        current_share=None if current is None else policy.incomplete_share(current),
        share_margin=cfg.nightly.missing_share_margin)
    selected_at, selection_version = policy.selection_of(
        info, selected=selection is not None, version=version, now=policy.utcnow())
    save_model(cfg, model, version, policy.model_info(
        _job(cfg), run_id, model, selected_at=selected_at,
        selection_version=selection_version, drift=drift, reasons=reasons,
        now=policy.utcnow(), promotion=verdict))
    if verdict.promote:
        scoring, scored_with = model, version
    elif current is not None:
        log.warning("model version %s not promoted (%s); tonight's scores come from the "
                    "current version %s", version, verdict.reason, info["version"])
        scoring, scored_with = current, info["version"]
    else:
        raise ValueError(f"Tonight's model (version {version}, kept in the store for "
                         f"inspection) was {verdict.reason}, and the store has no current "
                         "model to score with.")
    end_fit(cfg, run_id)
    _in_time(t0)
    pub = publish_scores(cfg, scoring, run_id, scored_with, fingerprint, progress)
    if verdict.promote:  # after the scores: a run that fails changes nothing readers see
        _in_time(t0)
        promote(cfg, version, run_id, verdict.reason)
    summary = policy.run_summary(
        job=cfg.name, run_id=run_id, model=model, model_id=daskgmm.model_id(model),
        version=version, model_url=_store(cfg).version_url(version), publication=pub,
        seconds=time.perf_counter() - t0, n_passes=n_passes + pub.n_passes,
        reasons=reasons, warm_version=warm_version, drift=drift, promotion=verdict,
        scored_with=scored_with,
        selection_table=None if selection is None else
        _table(selection).round(4).to_dict(orient="records"))
    summary = write_report(cfg, version, summary, _plots(model, pub, selection), key)
    prune(cfg, pub.target)
    return summary, pub


# No retries: the BIC grid is not checkpointed, so a rerun repeats every candidate's
# passes from the start, and what fails a grid (the data, the config) fails it again.
@flow(name="daskgmm-select", timeout_seconds=TIMEOUT_SECONDS)
def select(config_path: str, run_id: str | None = None, promote_model: bool = False,
           progress: Callable | None = None) -> dict:
    """Run the BIC grid of the config and save the chosen model as a new version; it
    becomes current only with ``promote_model=True``."""
    t0 = time.perf_counter()
    cfg = load_job(config_path)
    run_id = _run_id(cfg, "select", run_id)
    lock = job_lock(cfg, run_id)
    try:
        lock_job(lock)
        with dask_client(cfg.cluster, get_run_logger()):
            selection = select_task(cfg, _key(cfg.name), progress)
            model = selection.best_
            now = policy.utcnow()
            version = _store(cfg).new_version(model)
            save_model(cfg, model, version, policy.model_info(
                _job(cfg), run_id, model, selected_at=now.isoformat(),
                selection_version=version, drift=None, reasons=["select flow"], now=now))
            urls = write_plots(cfg, version, _plots(model, None, selection))
            _promote_if_asked(cfg, version, run_id, promote_model, "select flow", t0)
    finally:
        unlock_job(lock)
    return {"job": cfg.name, "run_id": run_id, "model_version": version,
            "model_url": _store(cfg).version_url(version), "promoted": promote_model,
            "n_components": model.n_components, "covariance_type": model.covariance_type,
            "n_passes": selection.n_passes_, "seconds": time.perf_counter() - t0,
            "plots": urls, "selection_table": _table(selection).to_dict(orient="records")}


def _promote_if_asked(cfg, version, run_id, asked, what, t0):
    if asked:
        _in_time(t0)
        promote(cfg, version, run_id, f"{what} run {run_id}, promoted on request")
    else:
        get_run_logger().info(
            "saved model version %s; it is not current. Make it current with: daskgmm "
            "promote <config> %s", version, version)


# Retries: a retry keeps the run id, so the fit resumes from its checkpoint and reaches
# the same model; it saves a version, and promotes only when asked, as its last step.
@flow(name="daskgmm-fit", timeout_seconds=TIMEOUT_SECONDS, **RERUN_SAFE)
def fit(config_path: str, n_components: int | None = None,
        covariance_type: str | None = None, run_id: str | None = None,
        promote_model: bool = False, progress: Callable | None = None) -> dict:
    """Fit one configuration (default: the config's first k and covariance type) from
    the config's seed, checkpointed, and save it as a new version; it becomes current
    only with ``promote_model=True``."""
    t0 = time.perf_counter()
    cfg = load_job(config_path)
    run_id = _run_id(cfg, "fit", run_id)
    lock = job_lock(cfg, run_id)
    try:
        lock_job(lock)
        with dask_client(cfg.cluster, get_run_logger()):
            model = fit_task(cfg, _key(cfg.name), run_id, n_components=n_components,
                             covariance_type=covariance_type, progress=progress)
            now = policy.utcnow()
            version = _store(cfg).new_version(model)
            save_model(cfg, model, version, policy.model_info(
                _job(cfg), run_id, model, selected_at=now.isoformat(),
                selection_version=None, drift=None, reasons=["fit flow"], now=now))
            urls = write_plots(cfg, version, _plots(model, None))
            end_fit(cfg, run_id)
            _promote_if_asked(cfg, version, run_id, promote_model, "fit flow", t0)
    finally:
        unlock_job(lock)
    return {"job": cfg.name, "run_id": run_id, "model_version": version,
            "model_url": _store(cfg).version_url(version), "promoted": promote_model,
            "n_components": model.n_components, "covariance_type": model.covariance_type,
            "n_iter": model.n_iter_, "converged": model.converged_,
            "n_passes": model.n_passes_ + model.threshold_n_passes_,
            "resumed_from_iteration": model.resumed_iteration_,
            "seconds": time.perf_counter() - t0, "plots": urls}


# Retries: one pass over the data, and publishing a run id again replaces only that run's
# earlier attempt; the model is read, never written.
@flow(name="daskgmm-score", timeout_seconds=TIMEOUT_SECONDS, **RERUN_SAFE)
def score(config_path: str, model_version: str | None = None, source: str | None = None,
          run_id: str | None = None, progress: Callable | None = None) -> dict:
    """Score a source (default: the config's) with a stored model (default: the current
    one) against its stored threshold, and publish the scores."""
    t0 = time.perf_counter()
    cfg = load_job(config_path)
    if source is not None:
        cfg = cfg.model_copy(update={"source": cfg.source.model_copy(update={"uri": source})})
    run_id = _run_id(cfg, "score", run_id)
    lock = job_lock(cfg, run_id)
    try:
        lock_job(lock)
        with dask_client(cfg.cluster, get_run_logger()):
            info, model = current_model(cfg, model_version)
            if info is None:
                raise FileNotFoundError(
                    f"The model store {cfg.outputs.model_store!r} has no current model: run "
                    "the nightly flow, or promote a version (daskgmm promote), or pass "
                    "model_version.")
            store = _store(cfg)
            fingerprint = fingerprint_source(cfg)
            _in_time(t0)
            pub = publish_scores(cfg, model, run_id, info["version"], fingerprint, progress)
            url = store.write_run_file(run_id, "scores.png",
                                       report.score_histogram(pub.sketch, model.threshold_))
    finally:
        unlock_job(lock)
    return {"job": cfg.name, "run_id": run_id, "model_version": info["version"],
            "n_rows": pub.n_rows, "n_anomalies": pub.n_anomalies,
            "n_incomplete": pub.n_incomplete,
            "anomaly_rate": pub.anomaly_rate, "scores_url": pub.location,
            "seconds": time.perf_counter() - t0, "plots": {"Anomaly scores": url}}
