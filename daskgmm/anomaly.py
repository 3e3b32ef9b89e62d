"""Anomaly thresholds and per-row anomaly scores of a fitted mixture.

A row is an anomaly when its log-density under the model is below the model's
threshold. The threshold is the ``contamination`` quantile of the training
log-density, computed out-of-core in one pass (per-chunk rank sketches,
:mod:`daskgmm.quantiles`), or a fixed log-density. :class:`Threshold` is what is stored
with a model; the estimator, :func:`daskgmm.select_model` and the score publisher all
use the functions here.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from . import kernels, passes
from .mixture import Mixture
from .progress import PassCounter
from .quantiles import RankSketch, WeightedRankSketch
from .sources import Dataset

logger = logging.getLogger(__name__)

# Levels of the training log-density quantiles kept with the threshold.
SCORE_QUANTILE_LEVELS = (0.0, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


@dataclass
class Threshold:
    """An anomaly threshold and what is known of the training log-density.

    Attributes
    ----------
    threshold : float
        Log-density below which a row is an anomaly.
    contamination : float or None
        The fraction it was set for (None: a fixed threshold).
    bounds : (float, float) or None
        Lowest and highest possible fraction of the training rows at or below it
        (None without training data).
    training_log_likelihood : float
        Mean log-density per training row (NaN without training data).
    quantile_levels, quantiles : ndarray
        Training log-density quantiles at these levels (empty without training data).
    """

    threshold: float
    contamination: float | None = None
    bounds: tuple | None = None
    training_log_likelihood: float = math.nan
    quantile_levels: np.ndarray = field(default_factory=lambda: np.empty(0))
    quantiles: np.ndarray = field(default_factory=lambda: np.empty(0))


# The estimator's fitted attributes that hold its Threshold.
ATTRIBUTES = {
    "threshold_": "threshold", "contamination_": "contamination",
    "threshold_bounds_": "bounds", "training_log_likelihood_": "training_log_likelihood",
    "score_quantile_levels_": "quantile_levels", "score_quantiles_": "quantiles",
}


def attach(est, threshold: Threshold | None, n_passes=0):
    """Set ``est``'s threshold attributes (``threshold_`` ...) and
    ``threshold_n_passes_``; with None, remove them."""
    for attribute, name in ATTRIBUTES.items():
        if threshold is not None:
            setattr(est, attribute, getattr(threshold, name))
        elif hasattr(est, attribute):
            delattr(est, attribute)
    if threshold is not None:
        est.threshold_n_passes_ = n_passes
    elif hasattr(est, "threshold_n_passes_"):
        del est.threshold_n_passes_


def attached(est) -> Threshold | None:
    """The threshold of ``est``'s attributes, or None."""
    if getattr(est, "threshold_", None) is None:
        return None
    return Threshold(**{name: getattr(est, attribute) for attribute, name in ATTRIBUTES.items()})


def check_contamination(contamination):
    if isinstance(contamination, bool) or not isinstance(contamination, numbers.Real) or (
        not 0.0 < contamination <= 0.5
    ):
        raise ValueError(
            "contamination must be a float in (0, 0.5], the expected fraction of "
            f"anomalies; got {contamination!r}."
        )


def check_fixed_threshold(threshold):
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or (
        not math.isfinite(threshold)
    ):
        raise ValueError(
            f"threshold must be a finite log-density (a float); got {threshold!r}."
        )


def check_has_threshold(threshold):
    """The error a model without an anomaly threshold gives when asked for scores."""
    if threshold is None:
        raise ValueError(
            "This GaussianMixture has no anomaly threshold: call "
            "gm.set_threshold(X_train, contamination=0.01) (or threshold=<log-density>) "
            "after fit, or use daskgmm.select_model, which sets it."
        )


def check_rule(contamination, threshold):
    """Check the threshold rule: a fixed ``threshold`` when given, else ``contamination``."""
    if threshold is not None:
        check_fixed_threshold(threshold)
    else:
        check_contamination(contamination)


def from_sketch(sketch: RankSketch | WeightedRankSketch, contamination=None,
                threshold=None) -> Threshold:
    """The threshold of a sketch of the training log-densities: its ``contamination``
    quantile, or the fixed ``threshold`` with the fraction of rows at or below it. With
    sample weights (a :class:`WeightedRankSketch`) the quantile is the weighted one,
    fractions are of the total weight and the training log-likelihood is the weighted
    mean."""
    levels = np.asarray(SCORE_QUANTILE_LEVELS)
    quantiles, _ = sketch.quantile(levels)
    if threshold is None:
        (value,), bounds = sketch.quantile([contamination])
        value, contamination = float(value), float(contamination)
        bounds = (float(bounds[0, 0]), float(bounds[0, 1]))
    else:
        value, contamination = float(threshold), None
        ((lo, hi),) = sketch.fraction_at_or_below([threshold])
        bounds = (float(lo), float(hi))
    return Threshold(value, contamination, bounds,
                     sketch.log_likelihood / sketch.total_weight, levels, quantiles)


def compute(dataset: Dataset, mixture: Mixture, *, contamination=0.01, threshold=None,
            counter: PassCounter | None = None) -> Threshold:
    """The threshold of ``mixture`` on the training rows ``dataset``, in one pass
    (counted by ``counter``); without ``dataset``, only a fixed ``threshold``."""
    check_rule(contamination, threshold)
    if dataset is None:
        if threshold is None:
            raise ValueError(
                "set_threshold needs the training data X to compute the "
                f"contamination={contamination!r} quantile of its log-density, or a "
                "fixed threshold=<log-density>."
            )
        return Threshold(float(threshold))
    (sketch,) = passes.sketch_pass(dataset, [mixture.params()])
    if counter is not None:
        counter.done("threshold")
    out = from_sketch(sketch, contamination, threshold)
    logger.info(
        "anomaly threshold %.6g (log-density) on %d rows of %s: %s",
        out.threshold, sketch.n_samples, dataset.description,
        "fixed" if threshold is not None else (
            f"contamination {contamination}, fraction at or below in "
            f"[{out.bounds[0]:.5f}, {out.bounds[1]:.5f}]"
        ),
    )
    return out


class _ScoreRows:
    def __init__(self, threshold):
        self.threshold = threshold

    def __call__(self, X, params, nan_policy="raise"):
        return kernels.score_rows(X, params, self.threshold, nan_policy)


def score_records(dataset: Dataset, mixture: Mixture, threshold: float):
    """Per-row anomaly scores of ``dataset``: a lazy dask array of ``SCORE_DTYPE``
    records chunked like the rows."""
    return passes.map_rows(dataset, _ScoreRows(float(threshold)), mixture.params(),
                           kernels.SCORE_DTYPE)
