"""Model selection by BIC (or AIC): a grid of candidates fitted in the SAME data passes."""

from __future__ import annotations

import logging
import numbers
import time
from dataclasses import dataclass

import numpy as np

from . import anomaly, covariance, em, initialization, kernels, passes, sources, validation
from .covariance import COVARIANCE_TYPES
from .estimator import GaussianMixture
from .progress import PassCounter

logger = logging.getLogger(__name__)

_CRITERIA = ("bic", "aic")


@dataclass
class ModelSelection:
    """The result of :func:`select_model`.

    Attributes
    ----------
    best_ : GaussianMixture
        The fitted candidate with the lowest criterion.
    table_ : pandas.DataFrame
        One row per candidate (best restart of each ``(n_components, covariance_type)``):
        n_components, covariance_type, bic, aic, log_likelihood (mean per row, weighted
        with ``sample_weight``, under the final parameters), n_parameters, n_iter,
        converged, seconds, error. ``seconds``
        is measured: the compute time of the entry's own E-steps and statistics over all
        its EM passes and restarts, summed over the chunks wherever they ran (a pass that
        several candidates share is not split between them; the initialisation, the final
        pass, reading the data and the M-steps are not counted).
    criterion : str
    n_passes_ : int
        How many times the data were read, initialisation and final scoring included.
    """

    best_: GaussianMixture
    table_: object
    criterion: str
    n_passes_: int


def _check_grid(n_components, covariance_types, criterion, n_samples):
    if isinstance(n_components, numbers.Integral):
        n_components = [n_components]
    ks = list(n_components)
    types = [covariance_types] if isinstance(covariance_types, str) else list(covariance_types)
    if not ks or not types:
        raise ValueError(
            f"The grid is empty: n_components={ks!r}, covariance_types={types!r}. Give at "
            "least one of each, e.g. n_components=range(1, 11), covariance_types=['full']."
        )
    bad = [k for k in ks if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1]
    if bad:
        raise ValueError(f"n_components must be ints >= 1; got {bad!r} in {ks!r}.")
    unknown = [t for t in types if t not in COVARIANCE_TYPES]
    if unknown:
        raise ValueError(
            f"Unknown covariance type(s) {unknown!r}; choose among {list(COVARIANCE_TYPES)}."
        )
    too_many = [k for k in ks if k > n_samples]
    if too_many:
        raise ValueError(
            f"n_components {too_many!r} exceed the {n_samples} rows of the data; use at "
            f"most n_components={n_samples}."
        )
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion must be one of {_CRITERIA}; got {criterion!r}.")
    return sorted(set(ks)), list(dict.fromkeys(types))


def select_model(
    X,
    n_components=range(1, 11),
    covariance_types=COVARIANCE_TYPES,
    *,
    criterion="bic",
    n_init=1,
    random_state=None,
    tol=1e-3,
    reg_covar=1e-6,
    max_iter=100,
    init_params="kmeans",
    contamination=0.01,
    threshold=None,
    callback=None,
    sample_weight=None,
    **estimator_params,
) -> ModelSelection:
    """Fit every ``(n_components, covariance_type)`` with ``n_init`` restarts and keep the
    best by ``criterion`` ('bic' or 'aic', as scikit-learn computes them).

    All candidates advance together through the same passes over the data (one pass per
    EM iteration of the slowest candidate, plus initialisation and one final pass that
    scores every candidate's final parameters on all rows). Other keyword arguments are
    :class:`GaussianMixture` parameters (``split_every``, ``cache``, ``columns``, ...).
    With an int ``random_state`` each candidate starts as a separate fit with that seed
    would. A candidate whose covariance becomes singular is reported in ``table_['error']``
    and left out of the choice. ``callback`` receives a
    :class:`daskgmm.progress.ProgressEvent` after every pass.

    ``sample_weight`` (one per row of ``X``, as :meth:`GaussianMixture.fit`) weighs the
    fits, the criteria and the threshold: BIC takes the total weight as the sample size
    (the effective sample size of frequency weights), so integer weights choose as the
    rows repeated that many times would, with the same BIC and AIC values.

    The final pass also summarises every candidate's log-densities, so the chosen model
    gets its anomaly threshold without another pass: the ``contamination`` quantile of
    the training log-density, or the fixed ``threshold`` (see
    :meth:`GaussianMixture.set_threshold`).
    """
    import pandas as pd

    t0 = time.perf_counter()
    template = GaussianMixture(
        n_components=1, tol=tol, reg_covar=reg_covar, max_iter=max_iter, n_init=n_init,
        init_params=init_params, random_state=random_state, **estimator_params,
    )
    validation.check_params(template.get_params(deep=False))
    anomaly.check_rule(contamination, threshold)
    dataset = validation.fit_dataset(template, X, sample_weight)
    ks, types = _check_grid(n_components, covariance_types, criterion, dataset.n_samples)
    grid = [(k, t) for t in types for k in ks]
    fit_data = sources.cached(dataset, template.cache)
    counter = PassCounter(callback)

    params = initialization.initial_params_grid(
        fit_data, grid, init_params=init_params, n_init=n_init, random_state=random_state,
        reg_covar=reg_covar, init_sample_size=template.init_sample_size,
        split_every=template.split_every, counter=counter,
    )
    candidates = [
        em.Candidate(p, tag=(grid[g], r), label=em.candidate_label(*grid[g], r, n_init))
        for g, entry in enumerate(params) for r, p in enumerate(entry)
    ]
    result = em.run_em(
        fit_data, candidates, tol=tol, max_iter=max_iter, reg_covar=reg_covar,
        split_every=template.split_every, raise_errors=False, counter=counter,
    )

    best_per_entry = {}
    for c in result.candidates:  # best restart per grid entry, as GaussianMixture's n_init
        g = grid.index(c.tag[0])
        current = best_per_entry.get(g)
        if c.error is None and (current is None or c.lower_bound > current.lower_bound):
            best_per_entry[g] = c
    finals = sorted(best_per_entry)
    sketches = dict(zip(finals, passes.sketch_pass(
        fit_data, [best_per_entry[g].params for g in finals]
    ), strict=True))
    counter.done("final", n_candidates=len(finals))

    rows = []
    n = dataset.n_samples
    for g, (k, covariance_type) in enumerate(grid):
        mine = [x for x in result.candidates if x.tag[0] == (k, covariance_type)]
        p = covariance.n_parameters(k, dataset.n_features, covariance_type)
        c = best_per_entry.get(g)
        if c is None:
            rows.append(dict(n_components=k, covariance_type=covariance_type, bic=np.nan,
                             aic=np.nan, log_likelihood=np.nan, n_parameters=p,
                             n_iter=max(x.n_iter for x in mine), converged=False,
                             seconds=sum(x.seconds for x in mine),
                             error=str(next(x.error for x in mine if x.error))))
            continue
        total, weight = sketches[g].log_likelihood, sketches[g].total_weight
        rows.append(dict(
            n_components=k, covariance_type=covariance_type,
            bic=kernels.bic(total, weight, p), aic=kernels.aic(total, p),
            log_likelihood=total / weight, n_parameters=p, n_iter=c.n_iter,
            converged=c.converged, seconds=sum(x.seconds for x in mine), error=None,
        ))
    table = pd.DataFrame(rows)
    if not finals:
        raise ValueError(
            "Every candidate failed: " + "; ".join(sorted(set(table["error"].dropna())))
        )
    best_g = int(table[criterion].idxmin())
    chosen = best_per_entry[best_g]
    k, covariance_type = grid[best_g]
    best = GaussianMixture(**{**template.get_params(), "n_components": k,
                              "covariance_type": covariance_type})
    mixture, summary = em.fitted(chosen, n_samples=n, n_passes=counter.count,
                                 seconds=time.perf_counter() - t0, dtype=dataset.dtype)
    best.set_fitted(
        mixture, summary, anomaly.from_sketch(sketches[best_g], contamination, threshold),
        feature_names=getattr(template, "feature_names_in_", None),
    )
    logger.info(
        "selected n_components=%d covariance_type=%r by %s among %d candidates in %d passes",
        k, covariance_type, criterion, len(grid), counter.count,
    )
    return ModelSelection(best, table, criterion, counter.count)
