"""Checks of the estimator's parameters, its initial parameters and its inputs.

Messages follow scikit-learn's ("The 'n_components' parameter of GaussianMixture must be
an int in the range [1, inf). Got 0 instead."). :func:`fit_dataset` and
:func:`predict_dataset` turn what a user passes to ``fit`` or ``predict`` into a
:class:`daskgmm.sources.Dataset`, recording or checking the features as scikit-learn's
``validate_data`` does.
"""

from __future__ import annotations

import dataclasses
import numbers
from pathlib import Path

import dask.array as da
import numpy as np
from sklearn.utils.validation import validate_data

from . import covariance, kernels
from .sources import Dataset, MissingColumnError, as_dataset, with_weights

INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


def _interval(name, kind, low, high=None):
    def check(owner, value):
        ok_type = (
            isinstance(value, numbers.Integral) if kind == "int"
            else isinstance(value, numbers.Real)
        ) and not isinstance(value, bool)
        if ok_type and value >= low and (high is None or value <= high):
            return
        what = "an int" if kind == "int" else "a float"
        hi = "inf)" if high is None else f"{high}]"
        raise ValueError(
            f"The {name!r} parameter of {owner} must be {what} in the range "
            f"[{low}, {hi}. Got {value!r} instead."
        )
    return check


def _options(name, options):
    def check(owner, value):
        if isinstance(value, str) and value in options:
            return
        allowed = ", ".join(repr(o) for o in options)
        raise ValueError(
            f"The {name!r} parameter of {owner} must be a str among "
            f"{{{allowed}}}. Got {value!r} instead."
        )
    return check


def _boolean(name):
    def check(owner, value):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(
                f"The {name!r} parameter of {owner} must be an instance of "
                f"'bool'. Got {value!r} instead."
            )
    return check


def _column_name(name):
    def check(owner, value):
        if value is not None and not (isinstance(value, str) and value):
            raise ValueError(
                f"The {name!r} parameter of {owner} must be a column name (a non-empty "
                f"str) or None. Got {value!r} instead."
            )
    return check


def _check_cache(owner, value):
    if value not in (True, False, "auto") or isinstance(value, (int, float)) and (
        not isinstance(value, bool)
    ):
        raise ValueError(
            f"The 'cache' parameter of {owner} must be True, False or 'auto'. "
            f"Got {value!r} instead."
        )


def _check_chunk_rows(owner, value):
    if value == "auto" or value is None:
        return
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return
    raise ValueError(
        f"The 'chunk_rows' parameter of {owner} must be an int in the range "
        f"[1, inf), 'auto' or None. Got {value!r} instead."
    )


CONSTRAINTS = {
    "n_components": _interval("n_components", "int", 1),
    "covariance_type": _options("covariance_type", covariance.COVARIANCE_TYPES),
    "tol": _interval("tol", "real", 0.0),
    "reg_covar": _interval("reg_covar", "real", 0.0),
    "max_iter": _interval("max_iter", "int", 0),
    "n_init": _interval("n_init", "int", 1),
    "init_params": _options("init_params", INIT_PARAMS),
    "warm_start": _boolean("warm_start"),
    "verbose_interval": _interval("verbose_interval", "int", 1),
    "split_every": _interval("split_every", "int", 2),
    "init_sample_size": _interval("init_sample_size", "int", 1),
    "cache": _check_cache,
    "chunk_rows": _check_chunk_rows,
    "missing_chunks": _options("missing_chunks", ("raise", "fill")),
    "weight_column": _column_name("weight_column"),
    "nan_policy": _options("nan_policy", kernels.NAN_POLICIES),
}


def check_params(params: dict, owner="GaussianMixture"):
    """Check the constrained parameters among ``params`` (``get_params()``); messages
    name ``owner``, the estimator's class."""
    for name, check in CONSTRAINTS.items():
        if name in params:
            check(owner, params[name])


def check_initial_parameters(covariance_type, n_components, n_features, weights_init=None,
                             means_init=None, precisions_init=None):
    """scikit-learn's checks of user-given initial weights, means and precisions, and
    that they are finite (named, not blamed on the data later)."""
    k = n_components
    for name, value in (("weights_init", weights_init), ("means_init", means_init),
                        ("precisions_init", precisions_init)):
        if value is None:
            continue
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"The parameter {name!r} must be an array of numbers; got "
                f"{type(value).__name__} {value!r:.80}."
            ) from None
        bad = np.argwhere(~np.isfinite(array))
        if len(bad):
            where = tuple(int(i) for i in bad[0])
            raise ValueError(
                f"The parameter {name!r} holds {array[where]} at index {where}: initial "
                "parameters must be finite. Fix or drop it (None lets the initialisation "
                "choose)."
            )
    if weights_init is not None:
        w = np.asarray(weights_init, dtype=np.float64)
        if w.shape != (k,):
            raise ValueError(
                f"The parameter 'weights' should have the shape of ({k},), but got {w.shape}"
            )
        if np.any(w < 0) or np.any(w > 1):
            raise ValueError(
                "The parameter 'weights' should be in the range [0, 1], but got "
                f"max value {w.max():.5f}, min value {w.min():.5f}"
            )
        # float32 weights (a float32 model's weights_) sum to 1 within 1e-6, as
        # scikit-learn allows
        atol = 1e-6 if np.asarray(weights_init).dtype == np.float32 else 1e-8
        if not np.allclose(np.abs(1.0 - w.sum()), 0.0, atol=atol):
            raise ValueError(
                f"The parameter 'weights' should be normalized, but got sum(weights) = "
                f"{w.sum():.5f}"
            )
    if means_init is not None:
        m = np.asarray(means_init, dtype=np.float64)
        if m.shape != (k, n_features):
            raise ValueError(
                f"The parameter 'means' should have the shape of {(k, n_features)}, but "
                f"got {m.shape}"
            )
    if precisions_init is not None:
        covariance.get(covariance_type).check_precisions(
            np.asarray(precisions_init, dtype=np.float64), k, n_features)


###############################################################################
# Inputs


def is_lazy_source(X) -> bool:
    """Whether ``X`` is read lazily (a path, a dask or Zarr array, a Dataset)."""
    return isinstance(X, (str, Path, da.Array, Dataset)) or type(X).__module__.startswith(
        "zarr")


def fit_dataset(est, X, sample_weight=None) -> Dataset:
    """``X`` as a row-chunked Dataset for ``est.fit``, with ``sample_weight`` (see
    :func:`daskgmm.sources.with_weights`) or the weights of ``est.weight_column``; sets
    ``n_features_in_`` and ``feature_names_in_`` (or removes a stale one), as
    scikit-learn's ``validate_data``."""
    return with_weights(_dataset(est, X, reset=True, fit=True, weighted=True), sample_weight)


def _with_policy(est, dataset: Dataset) -> Dataset:
    return dataclasses.replace(dataset, nan_policy=getattr(est, "nan_policy", "raise"))


def predict_dataset(est, X, sample_weight=None, *, weighted=False) -> Dataset:
    """``X`` as a Dataset for a fitted ``est``, checked against the fitted features
    (Parquet without ``columns``: the columns seen at fit are read). ``weighted``: with
    ``sample_weight``, or the weights of ``est.weight_column`` (for a Parquet source);
    else no weights are read (data to score need not have the weight column)."""
    return with_weights(_dataset(est, X, reset=False, weighted=weighted), sample_weight)


def _locate_text(X, exc):
    """scikit-learn's "could not convert string to float" for an object array (or a
    list of rows) holding text, with the row and column of the first such value."""
    if "could not convert" not in str(exc) and "float() argument" not in str(exc):
        return None
    try:
        cells = np.asarray(X, dtype=object)
    except (TypeError, ValueError):
        return None
    if cells.ndim != 2:
        return None
    for (row, col), value in np.ndenumerate(cells):
        try:
            float(value)
        except (TypeError, ValueError):
            # the type scikit-learn raises (TypeError for objects float() refuses)
            error = TypeError if isinstance(exc, TypeError) else ValueError
            if type(value).__name__ == "NAType":  # pandas' missing value
                return error(
                    f"X holds pandas' missing value pd.NA at row {row}, column {col}: "
                    "numpy cannot read it as a number. Convert the frame first, e.g. "
                    "X = df.astype('Float64').to_numpy('float64', na_value=np.nan), so "
                    "that missing values are NaN (nan_policy then decides what they do)."
                )
            return error(
                f"X holds a value that is not a number at row {row}, column {col}: "
                f"{value!r:.60} ({type(value).__name__}; {exc}). Gaussian mixtures need "
                "numbers: convert or drop that column, e.g. X[:, numeric_columns]"
                ".astype(float), or encode text as numbers first."
            )
    return None


def _dataset(est, X, *, reset, fit=False, weighted=False):
    weight_column = getattr(est, "weight_column", None) if weighted else None
    if weight_column is not None and not isinstance(X, (str, Path)):
        raise ValueError(
            f"weight_column={weight_column!r} names a column of a Parquet source, but X is "
            f"a {type(X).__name__}. Pass the weights as an array instead "
            "(sample_weight=w), or set weight_column=None."
        )
    if not is_lazy_source(X):
        try:
            X = validate_data(
                est, X, reset=reset, dtype=[np.float64, np.float32],
                ensure_all_finite=False, ensure_min_samples=2 if fit else 1,
            )
        except (TypeError, ValueError) as exc:
            located = _locate_text(X, exc)
            if located is None:
                raise
            raise located from None
        return _with_policy(est, as_dataset(X, chunk_rows=est.chunk_rows if fit else "auto"))
    columns = est.columns
    fitted = None if reset else getattr(est, "feature_names_in_", None)
    if columns is None and fitted is not None:
        columns = [str(c) for c in fitted]  # Parquet: read the columns seen at fit
    try:
        dataset = as_dataset(
            X,
            columns=columns,
            array_name=est.array_name,
            storage_options=est.storage_options,
            chunk_rows=est.chunk_rows if fit else None,
            missing_chunks=getattr(est, "missing_chunks", "raise"),
            weight_column=weight_column,
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
        est.n_features_in_ = dataset.n_features
        if names is not None:
            est.feature_names_in_ = np.asarray(names, dtype=object)
        elif hasattr(est, "feature_names_in_"):
            del est.feature_names_in_
    else:
        check_features(est, dataset)
    if fit and dataset.n_samples < 2:
        raise ValueError(
            f"Found array with {dataset.n_samples} sample(s) (shape="
            f"{dataset.array.shape}) in {dataset.description} while a minimum of 2 is "
            f"required by {type(est).__name__}."
        )
    return _with_policy(est, dataset)


def check_features(est, dataset: Dataset):
    """The dataset has the features ``est`` was fitted on (names when both have them)."""
    fitted_names = getattr(est, "feature_names_in_", None)
    names = dataset.feature_names
    if fitted_names is not None and names is not None and list(names) != list(fitted_names):
        raise ValueError(
            f"The feature names of {dataset.description} differ from those seen at fit "
            f"time: expected columns {list(fitted_names)}, got {list(names)}. Pass "
            f"columns={list(fitted_names)!r} to read the same columns in the same order."
        )
    if dataset.n_features != est.n_features_in_:
        raise ValueError(
            f"X has {dataset.n_features} features, but {type(est).__name__} is "
            f"expecting {est.n_features_in_} features as input "
            f"({dataset.description})."
        )


def check_enough_rows(n_samples, n_components, description):
    if n_samples < n_components:
        raise ValueError(
            "Expected n_samples >= n_components but got n_components = "
            f"{n_components}, n_samples = {n_samples} ({description}). "
            f"Use at most n_components={n_samples}, or fit on more rows."
        )
