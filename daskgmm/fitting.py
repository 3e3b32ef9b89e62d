"""Fitting one mixture configuration: initialisation (or a warm start, or the state a
checkpoint kept), the EM batch of restarts, and the restart a fit keeps.

:func:`fit` is what ``GaussianMixture.fit`` runs once it has checked its parameters and
its input; :func:`daskgmm.select_model` runs a whole grid through the same engine.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state

from . import em, initialization, sources
from .checkpoint import Checkpoint, fingerprint
from .mixture import FitSummary, Mixture
from .progress import PassCounter, VerbosePrinter, fan_out
from .sources import Dataset, warning_stacklevel

logger = logging.getLogger(__name__)


def fit(dataset: Dataset, params: dict, *, start: Mixture | None = None,
        start_lower_bound: float = -np.inf, callback=None,
        checkpoint: Checkpoint | None = None) -> tuple[Mixture, FitSummary]:
    """EM on ``dataset`` with the estimator parameters ``params`` (``get_params()``).

    ``start``: warm start from this mixture (one restart) whose last lower bound is
    ``start_lower_bound``. ``callback`` hears of every pass; ``checkpoint`` saves the
    batch and, when it holds the state of this very fit, the fit resumes from it.
    Returns the kept restart's mixture and what the fit reports.
    """
    t0 = time.perf_counter()
    p = params
    n_init = p["n_init"] if start is None else 1
    fit_data = sources.cached(dataset, p["cache"])
    verbose = VerbosePrinter(p["verbose"], p["verbose_interval"], n_init)
    resumed = key = None
    if checkpoint is not None:  # the fingerprint lists the data's files: only then
        key = fingerprint(p, dataset, start)
        resumed = checkpoint.load(key)
    if resumed is not None:
        candidates, n_passes = resumed
        counter = PassCounter(fan_out(verbose, callback), start=n_passes)
        resumed_iteration = max(c.n_iter for c in candidates)
        logger.info("resuming the fit from checkpoint %s: iteration %d, %d passes made",
                    checkpoint.path, resumed_iteration, n_passes)
    else:
        counter = PassCounter(fan_out(verbose, callback))
        resumed_iteration = 0
        candidates = _initial_candidates(fit_data, p, start, start_lower_bound, n_init,
                                         counter)
    verbose.start()
    result = em.run_em(
        fit_data, candidates, tol=p["tol"], max_iter=p["max_iter"],
        reg_covar=p["reg_covar"], split_every=p["split_every"], counter=counter,
        on_pass=None if checkpoint is None else checkpoint.saver(key, counter.count),
    )
    verbose.end()
    best = em.best_candidate(result.candidates)
    if best.n_incomplete:
        logger.info("%d of %d rows of %s hold NaN: %s (nan_policy=%r)", best.n_incomplete,
                    dataset.n_samples, dataset.description,
                    "left out" if p["nan_policy"] == "omit" else "marginalized",
                    p["nan_policy"])
    if not best.converged and p["max_iter"] > 0 and not result.stopped:
        warnings.warn(
            "Best performing initialization did not converge. Try different init "
            "parameters, or increase max_iter, tol, or check for degenerate data.",
            ConvergenceWarning,
            stacklevel=warning_stacklevel(),
        )
    # rows fitted on: under nan_policy='omit' the rows holding NaN are not
    n_fitted = dataset.n_samples - (best.n_incomplete if p["nan_policy"] == "omit" else 0)
    mixture, summary = em.fitted(best, n_samples=n_fitted, n_passes=counter.count,
                                 seconds=time.perf_counter() - t0,
                                 resumed_iteration=resumed_iteration, dtype=dataset.dtype)
    logger.info(
        "fitted %d components (%s) on %d x %d rows of %s: %d iterations, converged=%s, "
        "lower bound %.6f, %d data passes, %.2fs",
        p["n_components"], p["covariance_type"], dataset.n_samples, dataset.n_features,
        dataset.description, summary.n_iter, summary.converged, summary.lower_bound,
        summary.n_passes, summary.seconds,
    )
    return mixture, summary


def _initial_candidates(fit_data, p, start, start_lower_bound, n_init, counter):
    if start is not None:  # warm start: the fitted model, in this data's coordinates
        params = start.params(initialization.data_shift(fit_data))
        label = em.candidate_label(p["n_components"], p["covariance_type"]) + ", warm start"
        return [em.Candidate(params, tag=0, label=label, lower_bound=start_lower_bound)]
    params = initialization.initial_params(
        fit_data, n_components=p["n_components"], covariance_type=p["covariance_type"],
        init_params=p["init_params"], n_init=n_init,
        random_state=check_random_state(p["random_state"]), reg_covar=p["reg_covar"],
        weights_init=p["weights_init"], means_init=p["means_init"],
        precisions_init=p["precisions_init"], init_sample_size=p["init_sample_size"],
        split_every=p["split_every"], counter=counter,
    )
    return [em.Candidate(params, tag=i, label=em.candidate_label(
                p["n_components"], p["covariance_type"], i, n_init))
            for i, params in enumerate(params)]
