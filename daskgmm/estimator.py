"""``daskgmm.GaussianMixture``: scikit-learn's GaussianMixture, fitted out-of-core on Dask.

The estimator holds parameters and fitted attributes and delegates the work:
:mod:`daskgmm.validation` checks parameters and inputs, :mod:`daskgmm.fitting` fits,
:mod:`daskgmm.passes` scores, :mod:`daskgmm.anomaly` sets thresholds and anomaly scores,
:mod:`daskgmm.model_file` reads and writes model files.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import anomaly, fitting, kernels, model_file, passes, validation
from ._storage import masked, portable_params
from .anomaly import Threshold
from .mixture import FitSummary, Mixture
from .progress import PassCounter


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
        fsspec options for URLs (for example ``{"anon": True}``); never logged or saved.
    missing_chunks : {'raise', 'fill'}, default='raise'
        Zarr input: chunks missing from the store are an error naming them ('raise'),
        or are read as the array's fill value ('fill'; see :func:`daskgmm.as_dataset`).
    weight_column : str, default=None
        Parquet input: the column holding each row's sample weight (frequency weights,
        as ``sample_weight`` of :meth:`fit`). :meth:`fit`, :meth:`score`, :meth:`bic`,
        :meth:`aic`, :meth:`set_threshold` and :func:`daskgmm.select_model` read it with
        the features, in the same pieces; it is never a feature (left out of the default
        ``columns``). Prediction does not read it.
    nan_policy : {'raise', 'omit', 'marginalize'}, default='raise'
        What rows holding NaN (missing values) do. 'raise': an error naming the chunk,
        row and column. 'omit': they are left out of the fit and of ``score``, ``bic``,
        ``aic`` and the threshold, counted in ``fit_n_incomplete_``; scoring them gives
        NaN log-density and probabilities, component -1 and ``is_anomaly`` False.
        'marginalize': EM for incomplete data (Ghahramani and Jordan, 1994): a row's
        E-step and every score use the marginal density over its observed features, and
        the M-step the conditional expectations of its missing features and their
        conditional covariances (see :mod:`daskgmm.missing`); a row whose every feature
        is NaN is an error. Infinity is an error under every policy. Without NaN every
        policy fits and scores exactly as 'raise'.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_, converged_,
    n_iter_, lower_bound_, lower_bounds_, n_features_in_, feature_names_in_
        As scikit-learn's ``GaussianMixture``.
    n_passes_ : int
        Number of passes over the data the fit made (initialisation included).
    fit_n_samples_, fit_seconds_ : int, float
        Rows fitted on, and the fit's duration.
    resumed_iteration_ : int
        Iteration the fit resumed from a checkpoint at (0: not resumed).
    fit_n_incomplete_ : int
        Rows of the fit's data holding NaN (left out under ``nan_policy='omit'``,
        marginalized under 'marginalize'), counted by the last EM pass.
    threshold_, contamination_, threshold_bounds_, training_log_likelihood_,
    score_quantile_levels_, score_quantiles_, threshold_n_passes_
        Set by :meth:`set_threshold` (or :func:`daskgmm.select_model`).
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
        missing_chunks="raise",
        weight_column=None,
        nan_policy="raise",
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
        # the same options, with every value hidden from reprs (this estimator's, a
        # Pipeline's, a notebook's HTML): they may hold credentials
        self.storage_options = masked(storage_options)
        self.missing_chunks = missing_chunks
        self.weight_column = weight_column
        self.nan_policy = nan_policy

    # -------------------------------------------------------------------- fit

    def fit(self, X, y=None, *, sample_weight=None, callback=None, checkpoint=None):
        """Estimate model parameters with the EM algorithm.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), dask array, or a path/URL
            A numpy or dask array chunked by rows, a Zarr array (path, URL or
            ``zarr.Array``) or a Parquet dataset (path or URL; see ``columns``).
        y : Ignored
        sample_weight : array-like or dask array of shape (n_samples,), default=None
            Frequency weights of the rows, finite and >= 0: each row's responsibilities
            and log-likelihood are multiplied by its weight, so integer weights fit as
            the rows repeated that many times, and a weight of 0 leaves a row out.
            ``lower_bound_`` is then the weighted mean log-likelihood. A dask array is
            aligned with the rows (rechunked if needed) and checked as it is read: a
            negative, NaN or infinite weight is an error naming its chunk and row.
        callback : callable, default=None
            Receives a :class:`daskgmm.progress.ProgressEvent` after every pass over the
            data (initialisation and EM). Returning True after an EM pass stops EM
            there: the model keeps that pass's parameters, without a warning.
        checkpoint : daskgmm.Checkpoint, default=None
            Saves the EM state every ``checkpoint.every`` iterations. A fit given a
            checkpoint of the same fit (same data, parameters and starting model)
            resumes from it instead of starting again, and reaches the same model.

        Returns
        -------
        self : GaussianMixture
        """
        self._fit(X, sample_weight, callback=callback, checkpoint=checkpoint)
        return self

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit (with ``sample_weight``, as :meth:`fit`), then predict the most probable
        component of each row of ``X``.

        Returns a numpy array for in-memory input, a lazy dask array otherwise.
        """
        self._fit(X, sample_weight)
        return self.predict(X)

    def _fit(self, X, sample_weight=None, callback=None, checkpoint=None):
        params = self.get_params(deep=False)
        validation.check_params(params, type(self).__name__)
        dataset = validation.fit_dataset(self, X, sample_weight)
        validation.check_enough_rows(dataset.n_samples, self.n_components, dataset.description)
        validation.check_initial_parameters(
            self.covariance_type, self.n_components, dataset.n_features,
            self.weights_init, self.means_init, self.precisions_init)
        warm = self.warm_start and hasattr(self, "converged_")
        mixture, summary = fitting.fit(
            dataset, params, start=_mixture_of(self) if warm else None,
            start_lower_bound=self.lower_bound_ if warm else -np.inf, callback=callback,
            checkpoint=checkpoint)
        self.set_fitted(mixture, summary)
        return dataset

    def set_fitted(self, mixture: Mixture, fit: FitSummary | None = None,
                   threshold: Threshold | None = None, *, feature_names=None):
        """Make this estimator the fitted model ``mixture``: what ``fit``,
        :func:`daskgmm.select_model` and :func:`daskgmm.load` do once they have the
        parameters. Sets every fitted attribute from ``mixture`` (whose type and number of
        components must be this estimator's), ``fit`` (default: no iteration ran) and
        ``threshold`` (default: none; an earlier one is removed: a refit needs
        :meth:`set_threshold` again), and ``feature_names_in_`` when ``feature_names`` is
        given. Returns self.
        """
        if (mixture.covariance_type, mixture.n_components) != (
                self.covariance_type, self.n_components):
            raise ValueError(
                f"The mixture has {mixture.n_components} components of covariance_type "
                f"{mixture.covariance_type!r}; this estimator has n_components="
                f"{self.n_components}, covariance_type={self.covariance_type!r}. Set them "
                "first: est.set_params(n_components=..., covariance_type=...)."
            )
        fit = fit if fit is not None else FitSummary(0, False, -np.inf)
        self.weights_ = mixture.weights
        self.means_ = mixture.means
        self.precisions_cholesky_ = mixture.precisions_cholesky
        self.precisions_ = mixture.precisions
        self.covariances_ = mixture.covariances
        self.n_features_in_ = mixture.n_features
        if feature_names is not None:
            self.feature_names_in_ = np.asarray([str(n) for n in feature_names], dtype=object)
        elif len(getattr(self, "feature_names_in_", ())) not in (0, mixture.n_features):
            del self.feature_names_in_  # names of other features: stale
        self.converged_ = bool(fit.converged)
        self.n_iter_ = int(fit.n_iter)
        # a float32 model's lower bounds are float32 scalars, as scikit-learn's
        scalar = np.float32 if mixture.dtype == np.float32 else (lambda v: v)
        self.lower_bound_ = scalar(fit.lower_bound)
        self.lower_bounds_ = [scalar(v) for v in fit.lower_bounds]
        self.n_passes_ = int(fit.n_passes)
        self.fit_n_samples_ = int(fit.n_samples)
        self.fit_seconds_ = float(fit.seconds)
        self.resumed_iteration_ = int(fit.resumed_iteration)
        self.fit_n_incomplete_ = int(fit.n_incomplete)
        anomaly.attach(self, threshold)
        return self

    # ------------------------------------------------------------ prediction

    def _map_rows(self, X, fn, dtype=None, n_columns=None):
        """``fn`` over the rows of ``X``; ``dtype`` None: a float result, float32 for a
        float32 model and float32 rows (as scikit-learn's), else float64 (the kernels
        compute in float64 and the result is cast)."""
        check_is_fitted(self)
        dataset = validation.predict_dataset(self, X)
        if dtype is None:
            dtype = np.result_type(dataset.dtype, self.means_.dtype)
            fn = fn if dtype == np.float64 else _cast_to(fn, dtype)
        out = passes.map_rows(dataset, fn, _mixture_of(self).params(), dtype, n_columns)
        return out if dataset.lazy else out.compute()

    def score_samples(self, X):
        """Log-density of each row under the model: (n_samples,) float64 (float32 for a
        model fitted on float32 data scoring float32 rows, as scikit-learn)."""
        return self._map_rows(X, partial(kernels.score_chunk, what="score_samples"))

    def predict(self, X):
        """Most probable component of each row: (n_samples,) int64."""
        return self._map_rows(X, partial(kernels.score_chunk, what="predict"), np.int64)

    def predict_proba(self, X):
        """Responsibilities of each component for each row: (n_samples, n_components),
        float64 (float32 as :meth:`score_samples`)."""
        return self._map_rows(X, partial(kernels.score_chunk, what="predict_proba"),
                              n_columns=self.n_components)

    def _log_likelihood(self, X, sample_weight=None):
        check_is_fitted(self)
        dataset = validation.predict_dataset(self, X, sample_weight, weighted=True)
        ((total, n),) = passes.score_pass(dataset, [_mixture_of(self).params()],
                                          self.split_every)
        return total, n

    def score(self, X, y=None, sample_weight=None):
        """Mean per-row log-likelihood of ``X`` (one pass over the data); with
        ``sample_weight`` (as :meth:`fit`), the weighted mean
        ``sum_i w_i log p(x_i) / sum_i w_i``."""
        total, n = self._log_likelihood(X, sample_weight)
        return total / n

    def bic(self, X, sample_weight=None):
        """Bayesian information criterion on ``X`` (lower is better):
        ``-2 log L + p log(n)``. With ``sample_weight``, ``log L`` is the weighted
        log-likelihood and ``n`` the effective sample size, the total weight (integer
        weights give the BIC of the rows repeated that many times)."""
        total, n = self._log_likelihood(X, sample_weight)
        return kernels.bic(total, n, _mixture_of(self).n_parameters())

    def aic(self, X, sample_weight=None):
        """Akaike information criterion on ``X`` (lower is better): ``-2 log L + 2 p``,
        ``log L`` weighted by ``sample_weight`` when given."""
        total, _ = self._log_likelihood(X, sample_weight)
        return kernels.aic(total, _mixture_of(self).n_parameters())

    # -------------------------------------------------------------- anomalies

    def set_threshold(self, X=None, *, sample_weight=None, contamination=0.01, threshold=None,
                      callback=None):
        """Set the log-density threshold below which a row is flagged as an anomaly.

        By default the threshold is the ``contamination`` quantile of the log-density of
        the rows of ``X`` (the training data), computed out-of-core in one pass; it is
        exact (numpy's ``quantile``) for up to 4,194,304 rows, and beyond that the
        fraction of rows at or below it is within 1/2048 of the rows plus one row per
        chunk of ``contamination`` (see :mod:`daskgmm.quantiles`); the bounds reached are
        kept in ``threshold_bounds_``. With ``threshold=`` a fixed log-density is used
        instead (``X`` is then optional; given, it only fills the training quantiles).
        The threshold is saved in the model file, so that tomorrow's data are flagged
        against the same threshold.

        Parameters
        ----------
        X : the data the model was fitted on (any input :meth:`fit` takes); optional with
            ``threshold``.
        sample_weight : array-like or dask array of shape (n_samples,), default=None
            Frequency weights of the rows of ``X`` (as :meth:`fit`): the threshold is
            the weighted ``contamination`` quantile (for integer weights, the quantile of
            the rows repeated that many times), bounds and quantiles are fractions of the
            total weight, ``training_log_likelihood_`` the weighted mean.
        contamination : float in (0, 0.5], default=0.01
            Expected fraction of anomalies in ``X``.
        threshold : float, default=None
            A fixed log-density threshold; overrides ``contamination``.
        callback : callable, default=None
            Receives a :class:`daskgmm.progress.ProgressEvent` after the pass.

        Returns
        -------
        self, with ``threshold_``, ``contamination_`` (None for a fixed threshold),
        ``threshold_bounds_`` (lowest and highest possible fraction of the rows of ``X``
        at or below ``threshold_``, or None), ``score_quantile_levels_`` and
        ``score_quantiles_`` (log-density quantiles of ``X``; empty without ``X``),
        ``training_log_likelihood_`` (mean log-density of ``X``; NaN without ``X``) and
        ``threshold_n_passes_`` (passes over the data this call made).
        """
        check_is_fitted(self)
        anomaly.check_rule(contamination, threshold)  # before reading anything
        if X is None and sample_weight is not None:
            raise ValueError("sample_weight was given without X: pass the rows it weighs.")
        dataset = None if X is None else validation.predict_dataset(self, X, sample_weight,
                                                                    weighted=True)
        counter = PassCounter(callback)
        anomaly.attach(self, anomaly.compute(
            dataset, _mixture_of(self), contamination=contamination, threshold=threshold,
            counter=counter), n_passes=counter.count)
        return self

    def anomaly_scores(self, X):
        """Per-row anomaly scores against the stored threshold (see :meth:`set_threshold`).

        Returns, for numpy or pandas input, a pandas DataFrame; for lazy input (dask,
        Zarr, Parquet) a dask array of records (dtype ``daskgmm.SCORE_DTYPE``) chunked
        like the input, whose ``.compute()`` gives a numpy record array
        (``pandas.DataFrame(records)`` makes it a DataFrame). The fields:

        ================ ======= ========================================================
        log_density      float64 ``score_samples``: log of the mixture density at the row
        anomaly_score    float64 ``-log_density``: higher is more anomalous
        component        int32   ``predict``: the most probable component
        responsibility   float64 that component's posterior probability
        is_anomaly       bool    ``log_density < threshold_``
        missing_features int32   how many of the row's features are NaN
        ================ ======= ========================================================

        Rows holding NaN follow ``nan_policy``: under 'marginalize' they are scored by
        their observed features; under 'omit' they score NaN, component -1 and
        ``is_anomaly`` False. One threshold serves every row, but a row missing features
        is judged in fewer dimensions: depending on the features' spread its
        log-density runs higher or lower than a complete row's, so it is flagged less or
        more often (see the README's "Missing values").
        """
        check_is_fitted(self)
        anomaly.check_has_threshold(getattr(self, "threshold_", None))
        dataset = validation.predict_dataset(self, X)
        out = anomaly.score_records(dataset, _mixture_of(self), self.threshold_)
        if dataset.lazy:
            return out
        import pandas as pd

        return pd.DataFrame(out.compute())

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
        return _mixture_of(self).sample(n_samples, check_random_state(self.random_state))

    # ------------------------------------------------------------ model file

    def save(self, path, *, storage_options=None):
        """Write the fitted model to ``path`` (local path or fsspec URL); no pickle."""
        model_file.write_model(path, _record_of(self), storage_options=storage_options)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self.nan_policy != "raise"
        return tags


def load(path, *, storage_options=None) -> GaussianMixture:
    """Read a model written by :meth:`GaussianMixture.save` (no pickle is involved)."""
    record = model_file.read_model(path, storage_options=storage_options,
                                   known_params=GaussianMixture().get_params())
    try:
        validation.check_params(record.params)
    except ValueError as exc:
        raise model_file.ModelFileError(
            f"{str(path)!r}: metadata.json holds parameters this daskgmm refuses ({exc}). "
            "The file was damaged or edited; re-save the model."
        ) from None
    return GaussianMixture(**record.params).set_fitted(
        record.mixture, record.fit, record.threshold, feature_names=record.feature_names)


def model_id(est: GaussianMixture) -> str:
    """A short content hash of a fitted model: its parameters, arrays and threshold.

    Two models with the same id flag the same rows the same way; it does not depend on
    when, where or by which daskgmm version the model was written.
    """
    return model_file.content_id(_record_of(est))


def _cast_to(fn, dtype):
    """``fn`` with its result cast to ``dtype``."""
    return partial(_cast_result, fn, dtype)


def _cast_result(fn, dtype, *args, **kwargs):
    return fn(*args, **kwargs).astype(dtype, copy=False)


def _mixture_of(est: GaussianMixture) -> Mixture:
    return Mixture(est.covariance_type, est.weights_, est.means_, est.precisions_cholesky_,
                   est.covariances_)


def _saved_params(est: GaussianMixture) -> dict:
    """The parameters a model file keeps (and its id hashes). ``nan_policy='raise'``, the
    default and the behaviour before the parameter existed, is left out: models saved
    before it keep their id, and files of models that never meet NaN stay readable by
    earlier daskgmm versions."""
    params = portable_params(est.get_params(deep=False))
    if params.get("nan_policy") == "raise":
        del params["nan_policy"]
    return params


def _record_of(est: GaussianMixture) -> model_file.ModelRecord:
    check_is_fitted(est)
    names = getattr(est, "feature_names_in_", None)
    return model_file.ModelRecord(
        params=_saved_params(est),
        mixture=_mixture_of(est),
        fit=FitSummary(n_iter=est.n_iter_, converged=est.converged_,
                       lower_bound=est.lower_bound_, lower_bounds=est.lower_bounds_,
                       n_samples=getattr(est, "fit_n_samples_", -1),
                       n_passes=getattr(est, "n_passes_", 0),
                       n_incomplete=getattr(est, "fit_n_incomplete_", 0)),
        n_features_in=est.n_features_in_,
        feature_names=None if names is None else [str(n) for n in names],
        threshold=anomaly.attached(est),
    )
