"""Model files: JSON metadata plus arrays in ``.npy`` format inside a zip; never pickle.

Layout of a model file (a zip archive, written atomically)::

    metadata.json                 format version, library version, parameters, fit facts
    arrays/<name>.npy             weights_, means_, covariances_, precisions_cholesky_, ...

Arrays are read with ``numpy.load(..., allow_pickle=False)``: loading a model file never
executes code.
"""

from __future__ import annotations

import io
import json
import zipfile

import fsspec
import numpy as np

from ._storage import finite_or_none, write_atomic, write_npy
from ._version import __version__

FORMAT = "daskgmm-model"
FORMAT_VERSION = 1
_ARRAYS = ("weights_", "means_", "covariances_", "precisions_cholesky_")
_REQUIRED_ARRAYS = ("weights_", "means_", "precisions_cholesky_")
_REQUIRED_META = (
    "format", "format_version", "library_version", "params", "covariance_type",
    "n_features_in", "n_iter", "converged", "lower_bound", "lower_bounds",
    "fit_data", "arrays",
)


class ModelFileError(ValueError):
    """A model file is missing, incomplete, or from a newer format version."""


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _params_for_file(est):
    params = est.get_params(deep=False)
    params.pop("storage_options", None)  # may hold credentials
    rs = params.get("random_state")
    if rs is not None and not isinstance(rs, (int, np.integer)):
        params["random_state"] = None  # a RandomState instance is not portable
    return _jsonable(params)


def _anomaly_meta(est):
    """The anomaly threshold and the training log-density summary, or None if unset."""
    if getattr(est, "threshold_", None) is None:
        return None
    bounds = getattr(est, "threshold_bounds_", None)
    return {
        "threshold": float(est.threshold_),
        "contamination": est.contamination_,
        "threshold_bounds": None if bounds is None else [float(b) for b in bounds],
        "training_log_likelihood": finite_or_none(est.training_log_likelihood_),
        "score_quantile_levels": [float(v) for v in est.score_quantile_levels_],
        "score_quantiles": [float(v) for v in est.score_quantiles_],
    }


def model_id(est) -> str:
    """A short content hash of a fitted model: its parameters, arrays and threshold.

    Two models with the same id flag the same rows the same way; it does not depend on
    when, where or by which daskgmm version the model was written.
    """
    import hashlib

    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est)
    h = hashlib.sha256()
    h.update(json.dumps({"params": _params_for_file(est), "anomaly": _anomaly_meta(est)},
                        sort_keys=True).encode())
    for name in _ARRAYS:
        value = getattr(est, name, None)
        if value is not None:
            h.update(name.encode())
            h.update(np.ascontiguousarray(value, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def save_model(est, path, *, storage_options=None):
    """Write the fitted estimator ``est`` to ``path`` (local path or fsspec URL)."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est)
    lower_bound = float(est.lower_bound_)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "params": _params_for_file(est),
        "covariance_type": est.covariance_type,
        "n_features_in": int(est.n_features_in_),
        "feature_names": (
            [str(n) for n in est.feature_names_in_] if hasattr(est, "feature_names_in_") else None
        ),
        "n_iter": int(est.n_iter_),
        "converged": bool(est.converged_),
        "lower_bound": lower_bound if np.isfinite(lower_bound) else None,
        "lower_bounds": [float(v) for v in est.lower_bounds_],
        "fit_data": {
            "n_samples": int(getattr(est, "fit_n_samples_", -1)),
            "n_features": int(est.n_features_in_),
        },
        "n_passes": int(getattr(est, "n_passes_", 0)),
        "arrays": [name for name in _ARRAYS if getattr(est, name, None) is not None],
        "anomaly": _anomaly_meta(est),
    }
    meta["model_id"] = model_id(est)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps(meta, indent=2, sort_keys=True))
        for name in meta["arrays"]:
            write_npy(zf, f"arrays/{name}.npy", getattr(est, name))
    write_atomic(*fsspec.core.url_to_fs(str(path), **(storage_options or {})), buf.getvalue())


def load(path, *, storage_options=None):
    """Read a model written by :meth:`GaussianMixture.save` (no pickle is involved)."""
    from .estimator import GaussianMixture

    fs, fspath = fsspec.core.url_to_fs(str(path), **(storage_options or {}))
    if not fs.exists(fspath):
        raise FileNotFoundError(f"No daskgmm model file at {str(path)!r}.")
    with fs.open(fspath, "rb") as f:
        raw = f.read()
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile:
        raise ModelFileError(
            f"{str(path)!r} is not a daskgmm model file (not a zip archive written by "
            "GaussianMixture.save)."
        ) from None
    with zf:
        names = set(zf.namelist())
        if "metadata.json" not in names:
            raise ModelFileError(f"{str(path)!r} has no metadata.json: not a daskgmm model file.")
        try:
            meta = json.loads(zf.read("metadata.json"))
        except ValueError as exc:
            raise ModelFileError(
                f"{str(path)!r} has an unreadable metadata.json ({exc}); re-save the model."
            ) from None
        if not isinstance(meta, dict):
            raise ModelFileError(f"{str(path)!r}: metadata.json is not a JSON object.")
        if meta.get("format") != FORMAT:
            raise ModelFileError(
                f"{str(path)!r} is not a daskgmm model file (format {meta.get('format')!r})."
            )
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelFileError(
                f"{str(path)!r} has model format version {version!r}, newer than this "
                f"daskgmm {__version__} reads (up to {FORMAT_VERSION}); it was written by "
                f"daskgmm {meta.get('library_version')}. Upgrade daskgmm to load it."
            )
        missing = [k for k in _REQUIRED_META if k not in meta]
        missing += [
            f"fit_data.{k}" for k in ("n_samples", "n_features")
            if k not in (meta.get("fit_data") or {})
        ]
        missing += [
            f"arrays/{a}.npy"
            for a in set(_REQUIRED_ARRAYS) | set(meta.get("arrays", []))
            if f"arrays/{a}.npy" not in names
        ]
        if missing:
            raise ModelFileError(
                f"{str(path)!r} is incomplete: missing {', '.join(sorted(missing))}. "
                "Re-save the model with GaussianMixture.save."
            )
        arrays = {
            a: np.load(io.BytesIO(zf.read(f"arrays/{a}.npy")), allow_pickle=False)
            for a in meta["arrays"]
        }
    known = set(GaussianMixture().get_params())
    unknown = sorted(set(meta["params"]) - known)
    if unknown:
        raise ModelFileError(
            f"{str(path)!r} has parameters this daskgmm {__version__} does not know: "
            f"{', '.join(unknown)} (written by daskgmm {meta.get('library_version')}). "
            "Upgrade daskgmm to load it."
        )
    est = GaussianMixture(**meta["params"])
    _check_shapes(path, arrays, meta, est.n_components)
    for name, value in arrays.items():
        setattr(est, name, value)
    from . import kernels

    est.precisions_ = kernels.precisions_from_cholesky(
        est.precisions_cholesky_, est.covariance_type
    )
    est.n_features_in_ = meta["n_features_in"]
    if meta.get("feature_names") is not None:
        est.feature_names_in_ = np.asarray(meta["feature_names"], dtype=object)
    est.n_iter_ = meta["n_iter"]
    est.converged_ = meta["converged"]
    est.lower_bound_ = -np.inf if meta["lower_bound"] is None else meta["lower_bound"]
    est.lower_bounds_ = list(meta["lower_bounds"])
    est.fit_n_samples_ = meta["fit_data"]["n_samples"]
    est.n_passes_ = meta.get("n_passes", 0)
    anomaly = meta.get("anomaly")
    if anomaly is not None:
        _set_anomaly(path, est, anomaly)
    return est


def _set_anomaly(path, est, anomaly):
    try:
        est.threshold_ = float(anomaly["threshold"])
        c = anomaly["contamination"]
        est.contamination_ = None if c is None else float(c)
        b = anomaly.get("threshold_bounds")
        est.threshold_bounds_ = None if b is None else (float(b[0]), float(b[1]))
        ll = anomaly.get("training_log_likelihood")
        est.training_log_likelihood_ = float("nan") if ll is None else float(ll)
        est.score_quantile_levels_ = np.asarray(anomaly["score_quantile_levels"], dtype=float)
        est.score_quantiles_ = np.asarray(anomaly["score_quantiles"], dtype=float)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelFileError(
            f"{str(path)!r}: the 'anomaly' entry of metadata.json is damaged ({exc!r}); "
            "re-save the model, or set the threshold again with gm.set_threshold(...)."
        ) from None
    if est.score_quantile_levels_.shape != est.score_quantiles_.shape:
        raise ModelFileError(
            f"{str(path)!r}: anomaly score_quantile_levels and score_quantiles differ in "
            "length; re-save the model."
        )


def _check_shapes(path, arrays, meta, n_components):
    """Every array has the shape its covariance type and feature count call for."""
    d, k = meta["n_features_in"], n_components
    cov = {
        "full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,),
    }.get(meta["covariance_type"])
    if cov is None:
        raise ModelFileError(
            f"{str(path)!r} has an unknown covariance_type {meta['covariance_type']!r}."
        )
    expected = {"weights_": (k,), "means_": (k, d), "covariances_": cov,
                "precisions_cholesky_": cov}
    for name, array in arrays.items():
        if array.shape != expected[name]:
            raise ModelFileError(
                f"{str(path)!r}: arrays/{name}.npy has shape {array.shape}, expected "
                f"{expected[name]} for {k} components, {d} features, covariance_type="
                f"{meta['covariance_type']!r}. The file is damaged; re-save the model."
            )
