"""The nightly job's decisions as plain functions: no Prefect, no cluster.

What the flows in :mod:`.flows` decide is here, so that it can be read and tested on
its own: whether tonight re-runs the model selection and why, the drift verdict from
the first pass of a warm-start fit, which columns are features, and what a run's
report and a model version's info say.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np


def reselect_reasons(current_info: dict | None, *, warm_start: bool,
                     reselect_every_days: int | None, now: datetime) -> list[str]:
    """Why tonight runs the full selection instead of a warm start ([]: warm start).

    ``current_info`` is the current model version's info (None: no model yet).
    """
    if current_info is None:
        return ["no model in the store yet"]
    reasons = []
    if not warm_start:
        reasons.append("nightly.warm_start is off")
    selected_at = current_info.get("selected_at")
    if reselect_every_days is not None and selected_at is not None:
        age = (now - datetime.fromisoformat(selected_at)).total_seconds()
        if age >= reselect_every_days * 86400:
            reasons.append(f"the last selection is {age / 86400:.1f} days old "
                           f"(re-selection every {reselect_every_days} days)")
    return reasons


@dataclass(frozen=True)
class DriftCheck:
    """Tonight's mean log-likelihood under the current model against its training
    value: drifted when below it by more than ``margin``."""

    tonight: float
    training: float
    margin: float
    drifted: bool

    def as_dict(self) -> dict:
        return asdict(self)

    def reason(self) -> str:
        return (f"drift: tonight's mean log-likelihood {self.tonight:.4f} is below the "
                f"training value {self.training:.4f} by more than {self.margin}")


def drift_check(training: float, tonight: float, margin: float) -> DriftCheck:
    """The drift verdict (no verdict without a training value: not drifted)."""
    training, tonight = float(training), float(tonight)
    drifted = bool(math.isfinite(training) and tonight < training - margin)
    return DriftCheck(tonight, training, margin, drifted)


class DriftGuard:
    """A progress callback for a warm-start fit: the first EM pass's mean
    log-likelihood is tonight's data under the current model; when it has drifted, the
    callback stops the fit there (no pass is spent on a model that will be replaced).

    ``verdict(model)`` is the check made, or for a fit resumed past its first pass the
    one its first lower bound gives.
    """

    def __init__(self, training: float, margin: float):
        self.training, self.margin = training, margin
        self.check: DriftCheck | None = None

    def __call__(self, event) -> bool:
        if event.phase == "em" and event.n_iter == 1 and self.check is None:
            self.check = drift_check(self.training, event.log_likelihood, self.margin)
            return self.check.drifted
        return False

    def verdict(self, model) -> DriftCheck:
        if self.check is not None:
            return self.check
        return drift_check(self.training, model.lower_bounds_[0], self.margin)


@dataclass(frozen=True)
class Promotion:
    """Whether tonight's model becomes the current one, and why (for the report, the
    version's info and the store's promotion record)."""

    promote: bool
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def incomplete_share(model) -> float | None:
    """The share of the rows of a model's fit data that held NaN (its ``nan_policy``
    left them out or marginalized them), or None when unknown."""
    n_incomplete = getattr(model, "fit_n_incomplete_", None)
    n_fitted = getattr(model, "fit_n_samples_", None)
    if n_incomplete is None or n_fitted is None:
        return None
    rows = n_fitted + (n_incomplete if getattr(model, "nan_policy", "raise") == "omit" else 0)
    return n_incomplete / rows if rows > 0 else None


def promotion_verdict(model, *, has_current: bool, current_tonight: float | None,
                      margin: float, reasons: list[str], current_share: float | None = None,
                      share_margin: float = 0.1) -> Promotion:
    """Whether tonight's ``model`` becomes current.

    Never with a parameter or the threshold not finite. A warm-started model
    (``reasons`` empty) only when its mean log-likelihood on tonight's data
    (``model.training_log_likelihood_``, from its threshold pass) is not below the
    current model's on the same data (``current_tonight``, the drift check's first pass)
    by more than ``margin``. A model of a full selection (``reasons``: why it ran) is
    promoted with those reasons recorded: a model chosen by BIC may have fewer
    components and a lower likelihood than the one it replaces.

    A warm-started model is also refused when the share of rows with missing features
    (:func:`incomplete_share`) moved by more than ``share_margin`` from the current
    model's data (``current_share``): a row missing features is scored in fewer
    dimensions, so log-likelihoods (the drift check's and this comparison's) and the
    threshold rise with that share, and would hide the change.
    """
    arrays = {name: getattr(model, name) for name in
              ("weights_", "means_", "covariances_", "precisions_cholesky_")}
    broken = [name for name, value in arrays.items() if not np.isfinite(value).all()]
    threshold = getattr(model, "threshold_", math.nan)
    if not math.isfinite(threshold):
        broken.append("threshold_")
    if broken:
        return Promotion(False, f"refused: {', '.join(broken)} not finite")
    if not has_current:
        return Promotion(True, "the store had no current model")
    if reasons:
        return Promotion(True, "the selection replaced the model: " + "; ".join(reasons))
    share = incomplete_share(model)
    if share is not None and current_share is not None and (
            abs(share - current_share) > share_margin):
        return Promotion(False, (
            f"refused: {100 * share:.1f}% of tonight's rows have missing features, "
            f"{100 * current_share:.1f}% of the current model's (margin "
            f"{100 * share_margin:.0f} points): its log-likelihoods and threshold are not "
            "comparable with the current model's. Check the feed; to accept it, promote "
            "this version by hand or run the selection"))
    tonight = float(model.training_log_likelihood_)
    compared = (f"tonight's mean log-likelihood {tonight:.4f} under the new model, "
                f"{current_tonight:.4f} under the current one (margin {margin})")
    if not math.isfinite(tonight) or tonight < current_tonight - margin:
        return Promotion(False, "refused: " + compared)
    return Promotion(True, compared)


def run_id(job: str, flow: str, given: str | None, now: datetime) -> str:
    """A run's id, namespaced by job and flow so that runs of different flows never
    replace each other's outputs: ``<job>-<flow>-<given or UTC date>``."""
    return f"{job}-{flow}-{given or now.astimezone(UTC).strftime('%Y-%m-%d')}"


def feature_columns(columns, id_columns, numeric_columns, description) -> list[str]:
    """The feature columns of a Parquet source: the job file's ``columns``. A Parquet
    job names them: without them an id, a label or a column added upstream would
    silently become a feature. The error suggests the numeric columns that are not ids."""
    if columns is not None:
        return list(columns)
    candidates = [c for c in numeric_columns or [] if c not in set(id_columns)]
    ids = f" (id_columns, never features: {', '.join(id_columns)})" if id_columns else ""
    raise ValueError(
        f"source.columns is not set: a Parquet job names its feature columns, so that an "
        f"id, a label or a column added upstream never becomes a feature. The "
        f"{description} has the numeric columns {', '.join(numeric_columns or [])}{ids}; "
        f"add 'columns: [...]' to the source section with the features among "
        f"{', '.join(candidates)} (leave out labels, targets and other ids)."
    )


def selection_of(current_info: dict | None, *, selected: bool, version: str,
                 now: datetime) -> tuple:
    """``(selected_at, selection_version)`` of tonight's model: itself when tonight ran
    the selection, else those of the model it was warm-started from."""
    if selected or current_info is None:
        return now.isoformat(), version
    return current_info.get("selected_at"), current_info.get("selection_version")


def mode_text(reasons: list[str], warm_version: str | None) -> str:
    """The report's first line: what tonight did and why."""
    if reasons:
        return "Full BIC selection: " + "; ".join(reasons)
    return f"Warm start from model version {warm_version}; drift check within the margin"


def model_info(job: dict, run_id, model, *, selected_at, selection_version, drift,
               reasons, now: datetime, promotion: Promotion | None = None) -> dict:
    """The ``info.json`` of a model version: what produced it. ``job``: the config's
    name, source uri and summary (secrets stay ``{env: NAME}`` references)."""
    return {
        "job": job["name"], "run_id": run_id, "created": now.isoformat(),
        "n_components": int(model.n_components), "covariance_type": model.covariance_type,
        "n_iter": int(model.n_iter_), "converged": bool(model.converged_),
        "training_log_likelihood": float(model.training_log_likelihood_),
        "threshold": float(model.threshold_), "selected_at": selected_at,
        "selection_version": selection_version,
        "drift": None if drift is None else drift.as_dict(), "reselect_reasons": reasons,
        # the nightly's checks when it saved the version; a promotion (nightly or by
        # hand) adds promoted_at/by, promotion_reason and previous to the pointer
        "nightly_verdict": None if promotion is None else promotion.as_dict(),
        "source": job["source"], "config": job["config"],
    }


def run_summary(*, job: str, run_id: str, model, model_id: str, version: str,
                model_url: str, publication, seconds: float, n_passes: int,
                reasons: list[str], warm_version: str | None, drift: DriftCheck | None,
                promotion: Promotion, scored_with: str, selection_table=None) -> dict:
    """What the nightly run's report says (the markdown summary renders this)."""
    return {
        "promotion": promotion.as_dict(), "scored_with": scored_with,
        "job": job, "run_id": run_id, "mode_text": mode_text(reasons, warm_version),
        "drift_note": "; ".join(reasons),
        "n_components": int(model.n_components), "covariance_type": model.covariance_type,
        "model_version": version, "model_id": model_id,
        "n_iter": int(model.n_iter_), "converged": bool(model.converged_),
        "seconds": seconds, "n_passes": int(n_passes),
        "n_rows": publication.n_rows, "n_anomalies": publication.n_anomalies,
        "n_incomplete": publication.n_incomplete,
        "nan_policy": getattr(model, "nan_policy", "raise"),
        "anomaly_rate": publication.anomaly_rate, "threshold": float(model.threshold_),
        "drift": None if drift is None else drift.as_dict(), "model_url": model_url,
        "scores_url": publication.location, "selection_table": selection_table,
    }


def utcnow() -> datetime:
    return datetime.now(UTC)
