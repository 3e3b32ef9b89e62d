"""``daskgmm.GaussianMixture``: scikit-learn's GaussianMixture, fitted out-of-core on Dask."""

from __future__ import annotations

import copy
import logging
import math
import numbers
import time
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from . import em, initialization, kernels
from .kernels import COVARIANCE_TYPES, Params
from .sources import Dataset, MissingColumnError, as_dataset

logger = logging.getLogger(__name__)

# Levels of the training log-density quantiles kept with the threshold.
SCORE_QUANTILE_LEVELS = (0.0, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)

_INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


def _interval(name, kind, low, high=None):
    def check(est, value):
        ok_type = (
            isinstance(value, numbers.Integral) if kind == "int"
            else isinstance(value, numbers.Real)
        ) and not isinstance(value, bool)
        if ok_type and value >= low and (high is None or value <= high):
            return
        what = "an int" if kind == "int" else "a float"
        hi = "inf)" if high is None else f"{high}]"
        raise ValueError(
            f"The {name!r} parameter of {type(est).__name__} must be {what} in the range "
            f"[{low}, {hi}. Got {value!r} instead."
        )
    return check


def _options(name, options, extra=()):
    def check(est, value):
        if (isinstance(value, str) and value in options) or any(value is e for e in extra):
            return
        allowed = ", ".join(repr(o) for o in options) + "".join(f" or {e!r}" for e in extra)
        raise ValueError(
            f"The {name!r} parameter of {type(est).__name__} must be a str among "
            f"{{{allowed}}}. Got {value!r} instead."
        )
    return check


def _boolean(name):
    def check(est, value):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(
                f"The {name!r} parameter of {type(est).__name__} must be an instance of "
                f"'bool'. Got {value!r} instead."
            )
    return check


def _check_cache(est, value):
    if value not in (True, False, "auto") or isinstance(value, (int, float)) and (
        not isinstance(value, bool)
    ):
        raise ValueError(
            "The 'cache' parameter of GaussianMixture must be True, False or 'auto'. "
            f"Got {value!r} instead."
        )


def _check_chunk_rows(est, value):
    if value == "auto" or value is None:
        return
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return
    raise ValueError(
        "The 'chunk_rows' parameter of GaussianMixture must be an int in the range "
        f"[1, inf), 'auto' or None. Got {value!r} instead."
    )


_CONSTRAINTS = {
    "n_components": _interval("n_components", "int", 1),
    "covariance_type": _options("covariance_type", COVARIANCE_TYPES),
    "tol": _interval("tol", "real", 0.0),
    "reg_covar": _interval("reg_covar", "real", 0.0),
    "max_iter": _interval("max_iter", "int", 0),
    "n_init": _interval("n_init", "int", 1),
    "init_params": _options("init_params", _INIT_PARAMS),
    "warm_start": _boolean("warm_start"),
    "verbose_interval": _interval("verbose_interval", "int", 1),
    "split_every": _interval("split_every", "int", 2),
    "init_sample_size": _interval("init_sample_size", "int", 1),
    "cache": _check_cache,
    "chunk_rows": _check_chunk_rows,
}


def _is_lazy_source(X):
    return isinstance(X, (str, Path, da.Array, Dataset)) or type(X).__module__.startswith("zarr")


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM out-of-core on Dask.

    Same parameters, attributes and methods as :class:`sklearn.mixture.GaussianMixture`;
    from the same initial parameters it reaches the same fitted values. Each EM
    iteration is one pass over the data, whatever ``n_init``: all restarts advance
    together and a restart that has converged leaves the batch.

    Parameters
    ----------
    n_components : int, default=1
        The number of mixture components.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
        The type of covariance parameters (see scikit-learn's documentation).
    tol : float, default=1e-3
        Convergence threshold: EM stops when the change of the mean per-row
        log-likelihood is below it.
    reg_covar : float, default=1e-6
        Non-negative regularisation added to the diagonal of covariances.
    max_iter : int, default=100
        The number of EM iterations (data passes) to perform.
    n_init : int, default=1
        The number of initialisations; the best result is kept.
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, default='kmeans'
        The method used to initialise the weights, means and precisions. 'kmeans' runs
        k-means on a uniform random sample of ``init_sample_size`` rows, then one pass
        over all rows for the hard-assignment statistics.
    weights_init : array-like of shape (n_components,), default=None
    means_init : array-like of shape (n_components, n_features), default=None
    precisions_init : array-like, default=None
        User-provided initial parameters; shapes as scikit-learn's.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation and :meth:`sample`. The same seed gives the same model
        whatever the chunking and the number of workers.
    warm_start : bool, default=False
        Reuse the solution of the last fit as initialisation (``n_init`` is ignored).
    verbose : int, default=0
    verbose_interval : int, default=10
    split_every : int, default=8
        Fan-in of the tree that combines per-chunk statistics.
    cache : {'auto', True, False}, default='auto'
        Persist the data in the cluster's memory for the fit (True), re-read it from
        storage on every pass (False), or persist only when it takes at most half of the
        cluster's memory ('auto').
    chunk_rows : int, 'auto' or None, default='auto'
        Rows per chunk for the fit: 'auto' aims at chunks of about 32 MiB (merging small
        storage chunks), None keeps the input's chunks.
    init_sample_size : int, default=100_000
        Rows sampled uniformly for the k-means, k-means++ and random_from_data inits.
    columns : list of str, default=None
        Columns to read when ``X`` is a Parquet dataset (default: all numeric columns).
    array_name : str, default=None
        Array to read when ``X`` is a Zarr group.
    storage_options : dict, default=None
        fsspec options for URLs (for example ``{"anon": True}``); never logged.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_, converged_,
    n_iter_, lower_bound_, lower_bounds_, n_features_in_, feature_names_in_
        As scikit-learn's ``GaussianMixture``.
    n_passes_ : int
        Number of passes over the data the fit made (initialisation included).
    """

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        split_every=8,
        cache="auto",
        chunk_rows="auto",
        init_sample_size=100_000,
        columns=None,
        array_name=None,
        storage_options=None,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.split_every = split_every
        self.cache = cache
        self.chunk_rows = chunk_rows
        self.init_sample_size = init_sample_size
        self.columns = columns
        self.array_name = array_name
        self.storage_options = storage_options

    def __repr__(self, N_CHAR_MAX=700):
        if not self.storage_options:
            return super().__repr__(N_CHAR_MAX)
        masked = copy.copy(self)
        masked.storage_options = {k: "***" for k in self.storage_options}
        return BaseEstimator.__repr__(masked, N_CHAR_MAX)

    # ------------------------------------------------------------------ input

    def _validate_params(self):
        for name, check in _CONSTRAINTS.items():
            check(self, getattr(self, name))

    def _dataset(self, X, *, reset, fit=False):
        """``X`` as a row-chunked :class:`Dataset`, with scikit-learn's checks."""
        if not _is_lazy_source(X):
            X = validate_data(
                self, X, reset=reset, dtype=[np.float64, np.float32],
                ensure_all_finite=False, ensure_min_samples=2 if fit else 1,
            )
            return as_dataset(X, chunk_rows=self.chunk_rows if fit else "auto")
        columns = self.columns
        fitted = None if reset else getattr(self, "feature_names_in_", None)
        if columns is None and fitted is not None:
            columns = [str(c) for c in fitted]  # Parquet: read the columns seen at fit
        try:
            dataset = as_dataset(
                X,
                columns=columns,
                array_name=self.array_name,
                storage_options=self.storage_options,
                chunk_rows=self.chunk_rows if fit else None,
            )
        except MissingColumnError as exc:
            if fitted is None:
                raise
            raise MissingColumnError(
                f"{exc} The model was fitted on columns {[str(c) for c in fitted]}: the data "
                "to score need the same columns."
            ) from None
        names = dataset.feature_names
        if reset:
            self.n_features_in_ = dataset.n_features
            if names is not None:
                self.feature_names_in_ = np.asarray(names, dtype=object)
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        else:
            self._check_features(dataset)
        if fit and dataset.n_samples < 2:
            raise ValueError(
                f"Found array with {dataset.n_samples} sample(s) (shape="
                f"{dataset.array.shape}) in {dataset.description} while a minimum of 2 is "
                "required by GaussianMixture."
            )
        return dataset

    def _check_features(self, dataset):
        fitted_names = getattr(self, "feature_names_in_", None)
        names = dataset.feature_names
        if fitted_names is not None and names is not None and list(names) != list(fitted_names):
            raise ValueError(
                f"The feature names of {dataset.description} differ from those seen at fit "
                f"time: expected columns {list(fitted_names)}, got {list(names)}. Pass "
                f"columns={list(fitted_names)!r} to read the same columns in the same order."
            )
        if dataset.n_features != self.n_features_in_:
            raise ValueError(
                f"X has {dataset.n_features} features, but {type(self).__name__} is "
                f"expecting {self.n_features_in_} features as input "
                f"({dataset.description})."
            )

    def _check_initial_parameters(self, n_features):
        k = self.n_components
        if self.weights_init is not None:
            w = np.asarray(self.weights_init, dtype=np.float64)
            if w.shape != (k,):
                raise ValueError(
                    f"The parameter 'weights' should have the shape of ({k},), but got "
                    f"{w.shape}"
                )
            if np.any(w < 0) or np.any(w > 1):
                raise ValueError(
                    "The parameter 'weights' should be in the range [0, 1], but got "
                    f"max value {w.max():.5f}, min value {w.min():.5f}"
                )
            if not np.allclose(np.abs(1.0 - w.sum()), 0.0):
                raise ValueError(
                    f"The parameter 'weights' should be normalized, but got sum(weights) = "
                    f"{w.sum():.5f}"
                )
        if self.means_init is not None:
            m = np.asarray(self.means_init, dtype=np.float64)
            if m.shape != (k, n_features):
                raise ValueError(
                    f"The parameter 'means' should have the shape of {(k, n_features)}, but "
                    f"got {m.shape}"
                )
        if self.precisions_init is not None:
            p = np.asarray(self.precisions_init, dtype=np.float64)
            shape = {
                "full": (k, n_features, n_features),
                "tied": (n_features, n_features),
                "diag": (k, n_features),
                "spherical": (k,),
            }[self.covariance_type]
            if p.shape != shape:
                raise ValueError(
                    f"The parameter '{self.covariance_type} precision' should have the shape "
                    f"of {shape}, but got {p.shape}"
                )
            mats = p if self.covariance_type == "full" else p[None]
            if self.covariance_type in ("full", "tied"):
                for i, mat in enumerate(mats):
                    if not (np.allclose(mat, mat.T) and np.all(np.linalg.eigvalsh(mat) > 0.0)):
                        raise ValueError(
                            f"'{self.covariance_type} precision' should be symmetric, "
                            f"positive-definite (matrix {i} is not)"
                        )
            elif np.any(p <= 0.0):
                raise ValueError(f"'{self.covariance_type} precision' should be positive")

    # -------------------------------------------------------------------- fit

    def fit(self, X, y=None, *, callback=None, checkpoint=None):
        """Estimate model parameters with the EM algorithm.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), dask array, or a path/URL
            A numpy or dask array chunked by rows, a Zarr array (path, URL or
            ``zarr.Array``) or a Parquet dataset (path or URL; see ``columns``).
        y : Ignored
        callback : callable, default=None
            Called after every EM iteration of every initialisation with a dict:
            ``init``, ``n_iter``, ``lower_bound`` (mean log-likelihood per row),
            ``change``, ``max_iter``, ``seconds``.
        checkpoint : daskgmm.Checkpoint, default=None
            Saves the EM state every ``checkpoint.every`` iterations. A fit given a
            checkpoint of the same fit (same data, parameters and starting model)
            resumes from it instead of starting again, and reaches the same model.

        Returns
        -------
        self : GaussianMixture
        """
        self._fit(X, callback=callback, checkpoint=checkpoint)
        return self

    def fit_predict(self, X, y=None):
        """Fit, then predict the most probable component of each row of ``X``.

        Returns a numpy array for in-memory input, a lazy dask array otherwise.
        """
        self._fit(X)
        return self.predict(X)

    def _fit(self, X, callback=None, checkpoint=None):
        self._validate_params()
        t0 = time.perf_counter()
        dataset = self._dataset(X, reset=True, fit=True)
        n_samples, n_features = dataset.n_samples, dataset.n_features
        if n_samples < self.n_components:
            raise ValueError(
                "Expected n_samples >= n_components but got n_components = "
                f"{self.n_components}, n_samples = {n_samples} ({dataset.description}). "
                f"Use at most n_components={n_samples}, or fit on more rows."
            )
        self._check_initial_parameters(n_features)
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        n_init = self.n_init if do_init else 1
        random_state = check_random_state(self.random_state)
        fit_data = self._cached(dataset)
        fingerprint = resumed = None
        if checkpoint is not None:  # the fingerprint lists the data's files: only then
            fingerprint = self._fingerprint(dataset, do_init)
            resumed = checkpoint.load(fingerprint)

        self.resumed_iteration_ = 0
        if resumed is not None:
            candidates, n_passes = resumed
            self.resumed_iteration_ = max(c.n_iter for c in candidates)
            logger.info(
                "resuming the fit from checkpoint %s: iteration %d, %d passes made",
                checkpoint.path, max(c.n_iter for c in candidates), n_passes,
            )
        elif do_init:
            params, n_passes = initialization.initial_params(
                fit_data,
                n_components=self.n_components,
                covariance_type=self.covariance_type,
                init_params=self.init_params,
                n_init=n_init,
                random_state=random_state,
                reg_covar=self.reg_covar,
                weights_init=self.weights_init,
                means_init=self.means_init,
                precisions_init=self.precisions_init,
                init_sample_size=self.init_sample_size,
                split_every=self.split_every,
            )
            candidates = [em.Candidate(p, tag=i) for i, p in enumerate(params)]
        else:
            shift = initialization.data_shift(fit_data)
            params = self._params(shift)
            candidates = [em.Candidate(params, tag=0, lower_bound=self.lower_bound_)]
            n_passes = 0
        if self.verbose:
            for i in range(n_init):
                print(f"Initialization {i}")

        result = em.run_em(
            fit_data,
            candidates,
            tol=self.tol,
            max_iter=self.max_iter,
            reg_covar=self.reg_covar,
            split_every=self.split_every,
            on_iteration=self._iteration_reporter(callback),
            on_pass=None if checkpoint is None else _Checkpointer(
                checkpoint, fingerprint, n_passes),
        )
        self._report_end(result.candidates)
        best = self._select_best(result.candidates)
        if not best.converged and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=3,
            )
        self._set_params_from(best.params)
        self.converged_ = best.converged
        self.n_iter_ = best.n_iter
        self.lower_bound_ = best.lower_bound if self.max_iter > 0 else -np.inf
        self.lower_bounds_ = list(best.lower_bounds)
        self.n_passes_ = n_passes + result.n_passes
        self.fit_n_samples_ = n_samples
        self.fit_seconds_ = time.perf_counter() - t0
        logger.info(
            "fitted %d components (%s) on %d x %d rows of %s: %d iterations, converged=%s, "
            "lower bound %.6f, %d data passes, %.2fs",
            self.n_components, self.covariance_type, n_samples, n_features,
            dataset.description, self.n_iter_, self.converged_, self.lower_bound_,
            self.n_passes_, self.fit_seconds_,
        )
        return dataset

    @staticmethod
    def _select_best(candidates):
        best, max_lb = candidates[-1], -np.inf
        for c in candidates:
            if c.n_iter == 0:
                best = c  # max_iter == 0: scikit-learn keeps the last initialisation
            elif c.lower_bound > max_lb or max_lb == -np.inf:
                best, max_lb = c, c.lower_bound
        return best

    def _fingerprint(self, dataset, do_init):
        """What a checkpoint must match: the data, the parameters, the starting model."""
        import hashlib
        import json

        from .model_file import _params_for_file

        params = _params_for_file(self)
        params.pop("verbose", None)
        params.pop("verbose_interval", None)
        # the data: files and their versions for Zarr and Parquet (dask names of file
        # sources change from process to process), else the dask name (a content hash
        # for numpy input)
        data = (dataset.origin.data_version() if dataset.origin is not None
                else getattr(dataset.array, "name", ""))
        h = hashlib.sha256(json.dumps(
            [params, dataset.description, dataset.array.shape, dataset.array.chunks[0], data],
            sort_keys=True, default=str,
        ).encode())
        if not do_init:  # warm start: the model it starts from
            for name in ("weights_", "means_", "precisions_cholesky_"):
                h.update(np.ascontiguousarray(getattr(self, name)).tobytes())
        return h.hexdigest()

    def _iteration_reporter(self, callback):
        if callback is None:
            return self._report_iteration

        def report(candidate, change):
            self._report_iteration(candidate, change)
            callback({
                "init": candidate.tag, "n_iter": candidate.n_iter,
                "lower_bound": candidate.lower_bound, "change": change,
                "max_iter": self.max_iter, "seconds": candidate.seconds,
            })
        return report

    def _report_iteration(self, candidate, change):
        n_iter = candidate.n_iter
        logger.debug(
            "init %s iteration %d: lower bound %.8f, change %.3g",
            candidate.tag, n_iter, candidate.lower_bound, change,
        )
        if not self.verbose or n_iter % self.verbose_interval:
            return
        which = f"Initialization {candidate.tag}: " if self.n_init > 1 else ""
        if self.verbose == 1:
            print(f"  {which}Iteration {n_iter}")
        else:
            print(f"  {which}Iteration {n_iter}\t time lapse {candidate.seconds:.5f}s\t "
                  f"ll change {change:.5f}")

    def _report_end(self, candidates):
        if not self.verbose:
            return
        for c in candidates:
            if c.n_iter == 0:
                continue
            msg = "converged" if c.converged else "did not converge"
            which = f" {c.tag}" if len(candidates) > 1 else ""
            if self.verbose == 1:
                print(f"Initialization{which} {msg}.")
            else:
                print(f"Initialization{which} {msg}. time lapse {c.seconds:.5f}s\t lower "
                      f"bound {c.lower_bound:.5f}.")

    def _cached(self, dataset: Dataset) -> Dataset:
        """The dataset, persisted in the cluster's memory when ``cache`` says so."""
        if self.cache is False or (self.cache == "auto" and not _fits_in_memory(dataset)):
            return dataset
        logger.info("persisting %.1f MiB of %s for the fit",
                    dataset.array.nbytes / 2**20, dataset.description)
        return Dataset(
            dataset.array.persist(), dataset.feature_names, dataset.description,
            dataset.chunk_labels, dataset.lazy, dataset.origin,
        )

    # ------------------------------------------------------------- parameters

    def _set_params_from(self, params: Params):
        self.weights_ = params.weights
        self.means_ = params.means + params.shift
        self.precisions_cholesky_ = params.precisions_cholesky
        self.precisions_ = kernels.precisions_from_cholesky(
            params.precisions_cholesky, self.covariance_type
        )
        # max_iter=0 with precisions_init: no M-step ran, covariances come from precisions
        self.covariances_ = (
            params.covariances if params.covariances is not None
            else _covariances_from_precisions(self)
        )

    def _params(self, shift=None) -> Params:
        """The fitted parameters in shifted coordinates (shift: the mixture's mean)."""
        if shift is None:
            shift = self.weights_ @ self.means_ / self.weights_.sum()
        return Params(
            self.covariance_type, self.weights_, self.means_ - shift,
            self.precisions_cholesky_, getattr(self, "covariances_", None), shift,
        )

    # ------------------------------------------------------------ prediction

    def _map_rows(self, dataset: Dataset, fn, dtype, n_columns, lazy=None):
        """``fn(chunk, params)`` over the row chunks; a dask array when ``lazy`` (default:
        as the input was), else numpy."""
        params = self._params()
        if n_columns is None:
            out = dataset.array.map_blocks(
                _located(fn, dataset), params, dtype=dtype, drop_axis=1,
                block_info=True, meta=np.empty((0,), dtype=dtype),
            )
        else:
            out = dataset.array.map_blocks(
                _located(fn, dataset), params, dtype=dtype, block_info=True,
                chunks=(dataset.array.chunks[0], (n_columns,)),
                meta=np.empty((0, 0), dtype=dtype),
            )
        return out if (dataset.lazy if lazy is None else lazy) else out.compute()

    def _predict_dataset(self, X):
        check_is_fitted(self)
        return self._dataset(X, reset=False)

    def score_samples(self, X):
        """Log-density of each row under the model: (n_samples,) float64."""
        return self._map_rows(self._predict_dataset(X), _score_samples_chunk, np.float64, None)

    def predict(self, X):
        """Most probable component of each row: (n_samples,) int64."""
        return self._map_rows(self._predict_dataset(X), _predict_chunk, np.int64, None)

    def predict_proba(self, X):
        """Responsibilities of each component for each row: (n_samples, n_components)."""
        return self._map_rows(
            self._predict_dataset(X), _predict_proba_chunk, np.float64, self.n_components
        )

    def _log_likelihood(self, X):
        dataset = self._predict_dataset(X)
        ((total, n),) = em.score_pass(dataset, [self._params()], self.split_every)
        return total, n

    def score(self, X, y=None):
        """Mean per-row log-likelihood of ``X`` (one pass over the data)."""
        total, n = self._log_likelihood(X)
        return total / n

    def bic(self, X):
        """Bayesian information criterion on ``X`` (lower is better)."""
        total, n = self._log_likelihood(X)
        return -2 * total + self._n_parameters() * math.log(n)

    def aic(self, X):
        """Akaike information criterion on ``X`` (lower is better)."""
        total, _ = self._log_likelihood(X)
        return -2 * total + 2 * self._n_parameters()

    # -------------------------------------------------------------- anomalies

    def set_threshold(self, X=None, *, contamination=0.01, threshold=None):
        """Set the log-density threshold below which a row is flagged as an anomaly.

        By default the threshold is the ``contamination`` quantile of the log-density of
        the rows of ``X`` (the training data), computed out-of-core in one pass: each
        chunk's sorted log-densities are summarised at ``m`` evenly spaced ranks (its
        share of 4,194,304 values, in proportion to its rows, and at least 2049), and the
        summaries are tree-reduced (:mod:`daskgmm.quantiles`). The quantile is exact
        (numpy's ``quantile``) for up to 4,194,304 rows; beyond, the fraction of rows of
        ``X`` at or below the threshold differs from ``contamination`` by less than
        1/2048 of the rows (0.049 %) plus one row per chunk. The bounds reached are kept
        in ``threshold_bounds_``.
        With ``threshold=`` a fixed log-density is used instead (``X`` is then optional;
        given, it only fills the training quantiles).

        The threshold, the contamination and quantiles of the training log-density are
        saved in the model file, so that tomorrow's data are flagged against the same
        threshold.

        Parameters
        ----------
        X : data the model was fitted on (any input :meth:`fit` takes), optional with
            ``threshold``.
        contamination : float in (0, 0.5], default=0.01
            Expected fraction of anomalies in ``X``.
        threshold : float, default=None
            A fixed log-density threshold; overrides ``contamination``.

        Returns
        -------
        self

        Attributes set
        --------------
        threshold_ : float
        contamination_ : float or None (None for a fixed threshold)
        threshold_bounds_ : (float, float) or None
            Lowest and highest possible fraction of the rows of ``X`` at or below
            ``threshold_``.
        score_quantile_levels_, score_quantiles_ : ndarray
            Log-density quantiles of ``X`` at these levels (empty without ``X``).
        training_log_likelihood_ : float
            Mean log-density per row of ``X`` (nan without ``X``).
        """
        check_is_fitted(self)
        if threshold is not None:
            self._check_fixed_threshold(threshold)
        else:
            self._check_contamination(contamination)
        if X is None:
            if threshold is None:
                raise ValueError(
                    "set_threshold needs the training data X to compute the "
                    f"contamination={contamination!r} quantile of its log-density, or a "
                    "fixed threshold=<log-density>."
                )
            self._set_threshold_from(None, None, float(threshold))
            return self
        dataset = self._predict_dataset(X)
        (sketch,) = em.sketch_pass(dataset, [self._params()])
        self._set_threshold_from(sketch, contamination, threshold)
        logger.info(
            "anomaly threshold %.6g (log-density) on %d rows of %s: %s",
            self.threshold_, sketch.n_samples, dataset.description,
            "fixed" if threshold is not None else (
                f"contamination {contamination}, fraction at or below in "
                f"[{self.threshold_bounds_[0]:.5f}, {self.threshold_bounds_[1]:.5f}]"
            ),
        )
        return self

    @staticmethod
    def _check_fixed_threshold(threshold):
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or (
            not math.isfinite(threshold)
        ):
            raise ValueError(
                f"threshold must be a finite log-density (a float); got {threshold!r}."
            )

    @staticmethod
    def _check_contamination(contamination):
        if isinstance(contamination, bool) or not isinstance(contamination, numbers.Real) or (
            not 0.0 < contamination <= 0.5
        ):
            raise ValueError(
                "contamination must be a float in (0, 0.5], the expected fraction of "
                f"anomalies; got {contamination!r}."
            )

    def _set_threshold_from(self, sketch, contamination, threshold):
        if sketch is None:
            self.score_quantile_levels_ = np.empty(0)
            self.score_quantiles_ = np.empty(0)
            self.training_log_likelihood_ = float("nan")
            self.threshold_bounds_ = None
        else:
            levels = np.asarray(SCORE_QUANTILE_LEVELS)
            self.score_quantile_levels_ = levels
            self.score_quantiles_, _ = sketch.quantile(levels)
            self.training_log_likelihood_ = sketch.log_likelihood / sketch.n_samples
        if threshold is None:
            (value,), bounds = sketch.quantile([contamination])
            self.threshold_ = float(value)
            self.contamination_ = float(contamination)
            self.threshold_bounds_ = (float(bounds[0, 0]), float(bounds[0, 1]))
        else:
            self.threshold_ = float(threshold)
            self.contamination_ = None
            if sketch is not None:
                ((lo, hi),) = sketch.fraction_at_or_below([threshold])
                self.threshold_bounds_ = (float(lo), float(hi))

    def anomaly_scores(self, X):
        """Per-row anomaly scores against the stored threshold (see :meth:`set_threshold`).

        Returns, for numpy or pandas input, a pandas DataFrame; for lazy input (dask,
        Zarr, Parquet) a dask array of records (dtype ``daskgmm.SCORE_DTYPE``) chunked
        like the input, whose ``.compute()`` gives a numpy record array
        (``pandas.DataFrame(records)`` makes it a DataFrame). The fields:

        ============== ======= ==========================================================
        log_density    float64 ``score_samples``: log of the mixture density at the row
        anomaly_score  float64 ``-log_density``: higher is more anomalous
        component      int32   ``predict``: the most probable component
        responsibility float64 that component's posterior probability
        is_anomaly     bool    ``log_density < threshold_``
        ============== ======= ==========================================================
        """
        self._check_threshold()
        dataset = self._predict_dataset(X)
        out = self._map_rows(dataset, _ScoreRows(self.threshold_), kernels.SCORE_DTYPE, None)
        if dataset.lazy:
            return out
        import pandas as pd

        return pd.DataFrame(out)

    def _check_threshold(self):
        check_is_fitted(self)
        if getattr(self, "threshold_", None) is None:
            raise ValueError(
                "This GaussianMixture has no anomaly threshold: call "
                "gm.set_threshold(X_train, contamination=0.01) (or threshold=<log-density>) "
                "after fit, or use daskgmm.select_model, which sets it."
            )

    def _n_parameters(self):
        return kernels.n_parameters(self.n_components, self.means_.shape[1], self.covariance_type)

    def sample(self, n_samples=1):
        """Generate random samples from the fitted mixture (as scikit-learn).

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        if n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples} . The sampling requires at "
                "least one sample."
            )
        _, n_features = self.means_.shape
        rng = check_random_state(self.random_state)
        n_samples_comp = rng.multinomial(n_samples, self.weights_)
        covariances = self.covariances_
        if self.covariance_type == "full":
            X = np.vstack([
                rng.multivariate_normal(mean, cov, int(n))
                for mean, cov, n in zip(self.means_, covariances, n_samples_comp, strict=True)
            ])
        elif self.covariance_type == "tied":
            X = np.vstack([
                rng.multivariate_normal(mean, covariances, int(n))
                for mean, n in zip(self.means_, n_samples_comp, strict=True)
            ])
        else:
            X = np.vstack([
                mean + rng.standard_normal(size=(n, n_features)) * np.sqrt(cov)
                for mean, cov, n in zip(self.means_, covariances, n_samples_comp, strict=True)
            ])
        y = np.concatenate([np.full(int(n), i, dtype=np.int64)
                            for i, n in enumerate(n_samples_comp)])
        return X, y

    # ------------------------------------------------------------ model file

    def save(self, path, *, storage_options=None):
        """Write the fitted model to ``path`` (local path or fsspec URL); no pickle."""
        from .model_file import save_model

        save_model(self, path, storage_options=storage_options)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


def _covariances_from_precisions(gm):
    if gm.covariance_type in ("full", "tied"):
        return np.linalg.inv(gm.precisions_)
    return 1.0 / gm.precisions_


def _fits_in_memory(dataset: Dataset) -> bool:
    """Whether the data takes at most half of the memory it would be persisted into."""
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        if not dataset.lazy:
            return False  # already in this process's memory: nothing to gain
        import psutil

        budget = 0.25 * psutil.virtual_memory().available
    else:
        import psutil

        workers = client.scheduler_info().get("workers", {}).values()
        # workers without a memory limit (0 or None) may use the host's memory
        limits = [w.get("memory_limit") or psutil.virtual_memory().total for w in workers]
        budget = 0.5 * sum(limits)
    return dataset.array.nbytes <= budget


def _located(fn, dataset: Dataset):
    return _RowsTask(fn, dataset.description, dataset.feature_names, dataset.chunk_labels)


class _RowsTask:
    """Per-chunk prediction that reports NaN/inf rows with their location."""

    def __init__(self, fn, description, feature_names, chunk_labels):
        self.fn, self.description = fn, description
        self.feature_names, self.chunk_labels = feature_names, chunk_labels

    def __call__(self, block, params, block_info=None):
        bad = kernels.find_nonfinite(block)
        if bad is not None:
            info = block_info[0] if block_info else {}
            i = info.get("chunk-location", (0,))[0]
            start, stop = info.get("array-location", [(0, block.shape[0])])[0]
            label = self.chunk_labels[i] if self.chunk_labels else f"chunk {i}"
            raise em._bad_value_error(
                self.description, label, start, stop, *bad, self.feature_names
            )
        return self.fn(np.asarray(block, dtype=np.float64), params)


class _Checkpointer:
    """Saves the batch every ``checkpoint.every`` passes of EM and when it ends."""

    def __init__(self, checkpoint, fingerprint, passes_before):
        self.checkpoint, self.fingerprint = checkpoint, fingerprint
        self.passes_before = passes_before

    def __call__(self, candidates, n_passes):
        if n_passes % self.checkpoint.every == 0 or all(c.done for c in candidates):
            self.checkpoint.save(self.fingerprint, candidates, self.passes_before + n_passes)


class _ScoreRows:
    def __init__(self, threshold):
        self.threshold = threshold

    def __call__(self, X, params):
        return kernels.score_rows(X, params, self.threshold)


def _score_samples_chunk(X, params):
    return kernels.score_chunk(X, params, "score_samples")


def _predict_chunk(X, params):
    return kernels.score_chunk(X, params, "predict")


def _predict_proba_chunk(X, params):
    return kernels.score_chunk(X, params, "predict_proba")
