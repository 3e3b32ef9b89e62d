"""The nightly job's decisions (daskgmm_pipelines.policy): plain functions, no Prefect, no
cluster; each test runs in milliseconds."""

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from daskgmm.progress import ProgressEvent
from daskgmm_pipelines import policy

NOW = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)


def _info(days_ago):
    return {"version": "v1", "selected_at": (NOW - timedelta(days=days_ago)).isoformat()}


def test_reselect_reasons():
    def reasons(info, warm_start=True, every=7):
        return policy.reselect_reasons(info, warm_start=warm_start,
                                       reselect_every_days=every, now=NOW)

    assert reasons(None) == ["no model in the store yet"]
    assert reasons(_info(1)) == []
    assert reasons(_info(6.9)) == []
    assert reasons(_info(7)) == ["the last selection is 7.0 days old (re-selection every 7 days)"]
    assert reasons(_info(30), every=None) == []  # never re-selected on age
    assert reasons(_info(1), warm_start=False) == ["nightly.warm_start is off"]
    assert len(reasons(_info(9), warm_start=False)) == 2
    assert reasons({"version": "v1"}) == []  # a model without a selection time: no age


def test_drift_check():
    ok = policy.drift_check(training=-5.0, tonight=-5.4, margin=0.5)
    assert ok == policy.DriftCheck(-5.4, -5.0, 0.5, False)
    drifted = policy.drift_check(training=-5.0, tonight=-5.6, margin=0.5)
    assert drifted.drifted
    assert drifted.reason() == ("drift: tonight's mean log-likelihood -5.6000 is below the "
                                "training value -5.0000 by more than 0.5")
    assert drifted.as_dict() == {"tonight": -5.6, "training": -5.0, "margin": 0.5,
                                 "drifted": True}
    # a model without a training log-likelihood (a fixed threshold, no data): no verdict
    assert not policy.drift_check(training=math.nan, tonight=-100.0, margin=0.5).drifted
    assert policy.drift_check(training=-5.0, tonight=-4.0, margin=0.0).drifted is False


def _em(n_iter, log_likelihood):
    return ProgressEvent("em", n_passes=n_iter + 1, n_iter=n_iter, max_iter=10, active=1,
                         n_candidates=1, log_likelihood=log_likelihood)


def test_drift_guard_stops_the_fit_at_its_first_pass_on_drift_only():
    guard = policy.DriftGuard(training=-5.0, margin=0.5)
    assert guard(ProgressEvent("initialization", n_passes=1)) is False
    assert guard(_em(1, -9.0)) is True  # drifted: stop
    assert guard.verdict(None).drifted and guard.verdict(None).tonight == -9.0
    calm = policy.DriftGuard(training=-5.0, margin=0.5)
    assert calm(_em(1, -5.1)) is False and calm(_em(2, -4.0)) is False
    assert calm.verdict(None) == policy.DriftCheck(-5.1, -5.0, 0.5, False)

    class Resumed:  # a fit resumed from a checkpoint after its first pass
        lower_bounds_ = [-7.0, -6.0]

    resumed = policy.DriftGuard(training=-5.0, margin=0.5)
    assert resumed(_em(4, -6.0)) is False
    assert resumed.verdict(Resumed()) == policy.DriftCheck(-7.0, -5.0, 0.5, True)


def test_feature_columns_are_named_by_a_parquet_job():
    numeric = ["event_id", "a", "b", "label"]
    assert policy.feature_columns(["a"], ["event_id"], numeric, "Parquet dataset 'p'") == ["a"]
    with pytest.raises(ValueError, match=r"source\.columns is not set: a Parquet job names "
                                         r".* The Parquet dataset 'p' has the numeric columns "
                                         r"event_id, a, b, label \(id_columns, never features: "
                                         r"event_id\); add 'columns: \[\.\.\.\]' .* with the "
                                         r"features among a, b, label \(leave out labels"):
        policy.feature_columns(None, ["event_id"], numeric, "Parquet dataset 'p'")


class _Model:
    n_components, covariance_type, n_iter_, converged_ = 3, "full", 12, True
    training_log_likelihood_, threshold_ = -4.5, -11.25
    lower_bounds_ = [-5.0, -4.5]


class _Publication:
    n_rows, n_anomalies, anomaly_rate, location = 1000, 10, 0.01, "out/scores/_versions/r/x"
    n_incomplete = 0


def test_report_says_what_the_night_did():
    drift = policy.drift_check(-4.4, -4.5, 0.5)
    summary = policy.run_summary(
        job="demo", run_id="r", model=_Model(), model_id="abc", version="v2",
        model_url="store/versions/v2", publication=_Publication(), seconds=1.5, n_passes=7,
        reasons=[], warm_version="v1", drift=drift,
        promotion=policy.Promotion(True, "checks passed"), scored_with="v2")
    assert summary["mode_text"] == ("Warm start from model version v1; drift check within "
                                    "the margin")
    assert summary["drift"] == {"tonight": -4.5, "training": -4.4, "margin": 0.5,
                                "drifted": False}
    assert (summary["n_passes"], summary["n_rows"], summary["threshold"]) == (7, 1000, -11.25)
    reselected = policy.run_summary(
        job="demo", run_id="r", model=_Model(), model_id="abc", version="v2",
        model_url="u", publication=_Publication(), seconds=1.0, n_passes=20,
        reasons=["no model in the store yet"], warm_version=None, drift=None,
        promotion=policy.Promotion(False, "refused: means_ not finite"), scored_with="v1")
    assert reselected["mode_text"] == "Full BIC selection: no model in the store yet"
    assert reselected["promotion"] == {"promote": False, "reason": "refused: means_ not finite"}
    assert reselected["scored_with"] == "v1"
    info = policy.model_info({"name": "demo", "source": "s.zarr", "config": {"k": 1}}, "r",
                             _Model(), selected_at=None, selection_version="v1", drift=drift,
                             reasons=[], now=NOW)
    assert info["created"] == NOW.isoformat() and info["drift"]["drifted"] is False
    assert info["threshold"] == pytest.approx(-11.25) and info["config"] == {"k": 1}
    assert np.isfinite(info["training_log_likelihood"])


def test_selection_of_tonights_model():
    info = {"version": "v1", "selected_at": "2026-11-20T02:00:00+00:00",
            "selection_version": "v0"}
    assert policy.selection_of(info, selected=False, version="v2", now=NOW) == (
        "2026-11-20T02:00:00+00:00", "v0")
    assert policy.selection_of(info, selected=True, version="v2", now=NOW) == (
        NOW.isoformat(), "v2")
    assert policy.selection_of(None, selected=True, version="v2", now=NOW)[1] == "v2"


class _Fitted:
    def __init__(self, tonight=-4.0, **changes):
        self.weights_ = np.array([0.5, 0.5])
        self.means_ = np.zeros((2, 2))
        self.covariances_ = np.stack([np.eye(2)] * 2)
        self.precisions_cholesky_ = np.stack([np.eye(2)] * 2)
        self.threshold_ = -10.0
        self.training_log_likelihood_ = tonight
        self.__dict__.update(changes)


def test_promotion_verdict():
    def verdict(model, current_tonight=-4.0, reasons=(), has_current=True):
        return policy.promotion_verdict(model, has_current=has_current,
                                        current_tonight=current_tonight, margin=0.05,
                                        reasons=list(reasons))

    ok = verdict(_Fitted(tonight=-4.04))
    assert ok.promote and ok.reason == ("tonight's mean log-likelihood -4.0400 under the new "
                                        "model, -4.0000 under the current one (margin 0.05)")
    worse = verdict(_Fitted(tonight=-4.2))
    assert not worse.promote and worse.reason.startswith("refused: tonight's mean")
    nan = _Fitted(means_=np.array([[0.0, np.nan], [0.0, 0.0]]))
    assert verdict(nan) == policy.Promotion(False, "refused: means_ not finite")
    assert not verdict(_Fitted(threshold_=np.nan)).promote
    assert not verdict(nan, has_current=False).promote  # never a broken model, even first
    first = verdict(_Fitted(), current_tonight=None, has_current=False)
    assert first == policy.Promotion(True, "the store had no current model")
    # a BIC selection may keep fewer components and a lower likelihood: reasons recorded
    drift = policy.drift_check(-4.0, -9.0, 0.5)
    selected = verdict(_Fitted(tonight=-6.0), current_tonight=-9.0, reasons=[drift.reason()])
    assert selected.promote and selected.reason.startswith(
        "the selection replaced the model: drift: tonight's mean log-likelihood -9.0000")
    assert not verdict(_Fitted(tonight=np.nan)).promote


def test_run_ids_are_namespaced_by_job_and_flow():
    assert policy.run_id("demo", "nightly", None, NOW) == "demo-nightly-2026-11-29"
    assert policy.run_id("demo", "score", None, NOW) == "demo-score-2026-11-29"
    assert policy.run_id("demo", "fit", "again", NOW) == "demo-fit-again"
