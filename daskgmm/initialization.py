"""Initial parameters for a batch of restarts, as scikit-learn computes them.

- 'kmeans': k-means++ seeding and Lloyd iterations (scikit-learn's ``KMeans``) on a
  bounded uniform random sample of the rows, then ONE pass over all rows assigning each
  to its nearest centre, whose statistics give the initial weights, means, covariances.
- 'k-means++' and 'random_from_data': as scikit-learn, one-hot responsibilities on
  ``n_components`` rows picked (by k-means++ seeding or uniformly) from the sample.
- 'random': uniform random responsibilities for every row, one pass over all rows. The
  random numbers are a hash of the row's global index, so they do not depend on chunking.

When the sample is the whole dataset (``n_samples <= init_sample_size``), 'kmeans',
'k-means++' and 'random_from_data' consume ``random_state`` exactly as scikit-learn does
and give scikit-learn's initial parameters. The sample depends only on ``random_state``
and the number of rows: the same seed gives the same model whatever the chunking or the
number of workers. All restarts of a fit share one sample and one data pass.

With sample weights the sample is drawn with probability proportional to weight: when
the rows fit, it is every row of positive weight, and k-means (its k-means++ seeding
too), 'k-means++' and 'random_from_data' take the weights as scikit-learn's
``sample_weight`` (``p`` for the latter); otherwise ``init_sample_size`` rows are drawn
without replacement with probability proportional to weight (keys hashed from the row
index, as for 'random': independent of the chunking), in one pass over the weights, and
the sample is used unweighted. The statistics of the pass over all rows are weighted,
and initial weights are divided by the total weight.
"""

from __future__ import annotations

import logging
import time

import dask
import numpy as np
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.utils import check_random_state

from . import kernels, passes, sources
from .kernels import Params
from .progress import PassCounter
from .sources import Dataset

logger = logging.getLogger(__name__)

# Under nan_policy='marginalize', the sample's complete rows seed k-means when they are
# at least this fraction of it (else its NaN are filled with column medians).
_COMPLETE_FOR_KMEANS = 0.05

# Rows of the data whose mean fixes the engine's coordinate shift when no sample is drawn.
_SHIFT_ROWS = 1000


def draw_sample(dataset: Dataset, size: int, random_state, min_rows: int = 1):
    """A random sample of rows (sorted by row index), or all rows if they fit:
    ``(sample, sample_weight, total_weight)``.

    Without sample weights the sample is uniform, ``sample_weight`` None and
    ``total_weight`` the number of rows. With them, all rows of positive weight with
    their weights when the rows fit, else ``size`` rows drawn with probability
    proportional to weight (one pass over the weights, then the rows: a sample that
    stands for the weighted rows as it is, so ``sample_weight`` is None).
    A NaN or infinite value in the sample raises the same located error as a data pass.
    """
    n = dataset.n_samples
    sample_weight, total = None, n
    if n <= size:
        idx = None
        if dataset.weights is None:
            sample = np.asarray(dataset.array.compute(), dtype=np.float64)
        else:
            sample, sample_weight = dask.compute(dataset.array, dataset.weights)
            sample = np.asarray(sample, dtype=np.float64)
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            sources.check_weights(dataset, sample_weight)
            total = float(sample_weight.sum())
    else:
        seed = random_state.randint(np.iinfo(np.int32).max)
        if dataset.weights is None:
            rng = np.random.default_rng(seed)
            idx = np.sort(rng.choice(n, size=size, replace=False))
        else:
            idx, total = passes.weighted_sample_rows(dataset, size, seed)
        sample = passes.take_rows(dataset, idx)
    policy = dataset.nan_policy
    bad = kernels.find_nonfinite(sample, allow_nan=policy != "raise")
    if bad is not None:
        row = bad[0] if idx is None else int(idx[bad[0]])
        raise passes.locate_nonfinite(dataset, row, bad[1], sample[bad])
    if sample_weight is not None:  # rows of weight 0 play no part
        keep = sample_weight > 0
        sample, sample_weight = sample[keep], sample_weight[keep]
    if policy != "raise":
        check_observed_columns(dataset, sample)
        sample, sample_weight = complete_sample(sample, sample_weight, policy, min_rows)
    return sample, sample_weight, total


# A feature observed in fewer rows of the initialisation's sample than this cannot be
# fitted: its variances would rest on a handful of values (or none).
_MIN_OBSERVED = 2


def check_observed_columns(dataset: Dataset, sample):
    """Under nan_policy 'omit' or 'marginalize': a ``ValueError`` naming the first
    feature that is (nearly) always missing in ``sample`` (rows drawn from
    ``dataset``): EM cannot estimate it (marginalized, it keeps its start; omitted, every
    row goes)."""
    observed = (~np.isnan(sample)).sum(axis=0)
    bad = np.flatnonzero(observed < _MIN_OBSERVED)
    if not bad.size:
        return
    col = int(bad[0])
    names = dataset.feature_names
    column = f"column {col}" + (f" ({names[col]!r})" if names else "")
    raise ValueError(
        f"Feature {column} of the {dataset.description} has {int(observed[col])} "
        f"observed value(s) among the {sample.shape[0]} rows of the initialisation's "
        f"sample (nan_policy={dataset.nan_policy!r}): a feature that is (nearly) always "
        "missing cannot be fitted. Leave it out (columns=[...] for Parquet, or "
        "X[:, keep]), or fill it before fitting."
    )


def complete_sample(sample, sample_weight, nan_policy, min_rows=1):
    """The sample for k-means and the other sample-based starts, without NaN: under
    'omit' its rows without NaN; under 'marginalize' the same when at least
    ``_COMPLETE_FOR_KMEANS`` of them and ``min_rows`` (the largest k) are complete,
    else every row with each NaN replaced by its column's median over the sample (a
    start only)."""
    incomplete = np.isnan(sample).any(axis=1)
    if not incomplete.any():
        return sample, sample_weight
    complete = ~incomplete
    if nan_policy == "omit" or (complete.mean() >= _COMPLETE_FOR_KMEANS
                                and complete.sum() >= min_rows):
        return sample[complete], None if sample_weight is None else sample_weight[complete]
    filled = sample.copy()
    medians = np.nanmedian(sample, axis=0)
    rows, cols = np.nonzero(np.isnan(filled))
    filled[rows, cols] = np.where(np.isnan(medians[cols]), 0.0, medians[cols])
    return filled, sample_weight


def data_shift(dataset: Dataset, sample=None):
    """The fixed centre the engine shifts rows by (removes large offsets): the median
    of ``sample``, by default of the first rows (reads one chunk, not a pass)."""
    if sample is None:
        sample = dataset.array[:_SHIFT_ROWS].compute()
        if dataset.nan_policy != "raise":
            check_observed_columns(dataset, np.asarray(sample, dtype=np.float64))
    return kernels.data_shift(sample)


def _one_hot_params(points, covariance_type, reg_covar, n_samples, shift):
    xs = points - shift
    k = xs.shape[0]
    placeholder = _placeholder(covariance_type, xs, shift)
    stats = kernels.stats_from_resp(xs, np.eye(k), placeholder, 0.0)
    return kernels.params_from_stats(stats, placeholder, reg_covar, n_samples)


def _placeholder(covariance_type, means, shift):
    """Params carrying only what statistics need: type, centring means and shift."""
    k = means.shape[0]
    return Params(covariance_type, np.full(k, 1.0 / k), means, None, None, shift)


def override_with_user_init(params: Params, weights_init, means_init, precisions_init):
    if weights_init is not None:
        params.weights = np.asarray(weights_init, dtype=np.float64)
    if means_init is not None:
        params.means = np.asarray(means_init, dtype=np.float64) - params.shift
    if precisions_init is not None:
        params.precisions_cholesky = params.model.precisions_cholesky_from_precisions(
            np.asarray(precisions_init, dtype=np.float64))
        params.covariances = None
    return params


def initial_params(
    dataset: Dataset,
    *,
    n_components,
    covariance_type,
    init_params,
    n_init,
    random_state,
    reg_covar,
    weights_init=None,
    means_init=None,
    precisions_init=None,
    init_sample_size=100_000,
    split_every=8,
    counter: PassCounter | None = None,
) -> list[Params]:
    """``n_init`` initial ``Params`` (shifted coordinates); passes over the data are
    counted by ``counter``."""
    t0 = time.perf_counter()
    counter = counter if counter is not None else PassCounter()
    before = counter.count
    user_all = weights_init is not None and means_init is not None and precisions_init is not None
    if user_all:
        shift = data_shift(dataset)
        out = [
            override_with_user_init(
                _placeholder(covariance_type, np.zeros((n_components, shift.size)), shift),
                weights_init, means_init, precisions_init,
            )
            for _ in range(n_init)
        ]
    else:
        (out,) = initial_params_grid(
            dataset, [(n_components, covariance_type)], init_params=init_params,
            n_init=n_init, random_state=random_state, reg_covar=reg_covar,
            init_sample_size=init_sample_size, split_every=split_every, counter=counter,
        )
        out = [override_with_user_init(p, weights_init, means_init, precisions_init) for p in out]
    logger.info(
        "initialised %d candidate(s) with %r in %.2fs (%d data pass(es))",
        n_init, "user parameters" if user_all else init_params, time.perf_counter() - t0,
        counter.count - before,
    )
    return out


def initial_params_grid(
    dataset: Dataset,
    grid,
    *,
    init_params,
    n_init,
    random_state,
    reg_covar,
    init_sample_size=100_000,
    split_every=8,
    counter: PassCounter | None = None,
):
    """Initial ``Params`` for every ``(n_components, covariance_type)`` of ``grid``, each
    with ``n_init`` restarts, sharing one sample and at most one pass over all rows.

    ``random_state``: a ``RandomState`` is consumed restart after restart and grid entry
    after grid entry; an int (or None) seeds each grid entry afresh, as separate
    scikit-learn fits with that seed would be (k-means runs once per k and seed and is
    shared by the covariance types). Returns a list (per grid entry) of lists of
    ``Params``. A sample of part of the rows counts as a pass (it reads from every
    chunk), and so does the pass over all rows; both go to ``counter``.
    """
    counter = counter if counter is not None else PassCounter()
    n = dataset.n_samples
    shared = isinstance(random_state, np.random.RandomState)

    def rng():
        return random_state if shared else check_random_state(random_state)

    sample_rs = rng() if shared else np.random.RandomState(
        check_random_state(random_state).randint(np.iinfo(np.int32).max)
    )
    largest = max(k for k, _ in grid)
    size = max(init_sample_size, largest)
    needs_sample = init_params != "random"
    sample, sample_weight, total = (draw_sample(dataset, size, sample_rs, largest)
                                    if needs_sample else (None, None, n))
    shift = data_shift(dataset, sample)
    if needs_sample and n > size:
        if dataset.weights is not None:  # the pass over the weights, then the rows'
            counter.done("initialization")
        counter.done("initialization")
    if needs_sample and sample.shape[0] < largest and dataset.nan_policy == "omit":
        raise ValueError(
            f"Only {sample.shape[0]} rows of the initialisation's sample of the "
            f"{dataset.description} have no NaN (nan_policy='omit' leaves the others "
            f"out), fewer than n_components={largest}. Use nan_policy='marginalize', "
            "a larger init_sample_size, or fewer components."
        )
    if needs_sample and sample.shape[0] < largest:
        raise ValueError(
            f"Only {sample.shape[0]} rows of the {dataset.description} have a positive "
            f"sample weight, fewer than n_components={largest}. Use at most "
            f"n_components={sample.shape[0]}, or give more rows a positive weight."
        )
    d = shift.size

    out, work = [], []
    centers_cache = {}
    for k, covariance_type in grid:
        rs = rng()
        entry = []
        for r in range(n_init):
            if init_params == "kmeans":
                key = (k, r)
                if shared or key not in centers_cache:
                    km = KMeans(n_clusters=k, n_init=1, random_state=rs)
                    centers_cache[key] = km.fit(
                        sample, sample_weight=sample_weight).cluster_centers_
                centers = centers_cache[key]
                work.append((centers, _placeholder(covariance_type, centers - shift, shift)))
                entry.append(None)
            elif init_params == "random":
                seed = int(rs.randint(np.iinfo(np.int32).max))
                work.append((seed, _placeholder(covariance_type, np.zeros((k, d)), shift)))
                entry.append(None)
            elif init_params == "k-means++":
                _, idx = kmeans_plusplus(sample, k, random_state=rs,
                                         sample_weight=sample_weight)
                entry.append(_one_hot_params(sample[idx], covariance_type, reg_covar, total,
                                             shift))
            else:  # random_from_data
                idx = rs.choice(sample.shape[0], size=k, replace=False, p=None if (
                    sample_weight is None) else sample_weight / sample_weight.sum())
                entry.append(_one_hot_params(sample[idx], covariance_type, reg_covar, total,
                                             shift))
        out.append(entry)
    if work:
        chunk_fn = (passes.hard_assignment_chunk if init_params == "kmeans"
                    else passes.random_resp_chunk)
        stats = passes.data_pass(dataset, chunk_fn, (work,), split_every=split_every)
        passes.check_total_weight(dataset, stats[0].weight, stats[0].n_incomplete)
        # weights nk / n, n the rows used (without NaN under nan_policy='omit') or with
        # sample weights their total weight
        total = stats[0].weight
        stats = iter(stats)
        counter.done("initialization")
        work = iter(work)
        for entry in out:
            for r in range(len(entry)):
                s, (_, placeholder) = next(stats), next(work)
                entry[r] = kernels.params_from_stats(s, placeholder, reg_covar, total)
    return out
