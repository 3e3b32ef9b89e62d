"""Model files: JSON metadata plus arrays in ``.npy`` format inside a zip; never pickle.

Layout of a model file (a zip archive, written atomically)::

    metadata.json                 format version, library version, parameters, fit facts
    arrays/<name>.npy             weights_, means_, covariances_, precisions_cholesky_

Arrays are read with ``numpy.load(..., allow_pickle=False)``: loading a model file never
executes code. This module knows :class:`ModelRecord`, not the estimator:
``GaussianMixture.save`` and ``daskgmm.load`` convert.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from . import covariance
from ._storage import finite_or_none, url_to_fs, write_atomic, write_npy
from ._version import __version__
from .anomaly import Threshold
from .mixture import FitSummary, Mixture

FORMAT = "daskgmm-model"
FORMAT_VERSION = 1
_ARRAYS = ("weights_", "means_", "covariances_", "precisions_cholesky_")
_REQUIRED_ARRAYS = ("weights_", "means_", "precisions_cholesky_")
_REQUIRED_META = (
    "format", "format_version", "library_version", "params", "covariance_type",
    "n_features_in", "n_iter", "converged", "lower_bound", "lower_bounds",
    "fit_data", "arrays", "model_id",
)
# Errors zipfile raises for a damaged archive or member: besides BadZipFile, a flipped
# byte can name an unknown compression method (NotImplementedError), set the encryption
# flag (RuntimeError: password required), or make a name invalid UTF-8 (ValueError).
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError,
            NotImplementedError, RuntimeError, OverflowError)


class ModelFileError(ValueError):
    """A model file is missing, incomplete, damaged, or from a newer format version."""


@dataclass
class ModelRecord:
    """Everything a model file holds.

    ``params`` are the estimator's parameters as written
    (:func:`daskgmm._storage.portable_params`).
    """

    params: dict
    mixture: Mixture
    fit: FitSummary
    n_features_in: int
    feature_names: list | None = None
    threshold: Threshold | None = None


def _anomaly_meta(threshold: Threshold | None):
    """The anomaly threshold and the training log-density summary, or None if unset."""
    if threshold is None:
        return None
    bounds = threshold.bounds
    return {
        "threshold": float(threshold.threshold),
        "contamination": threshold.contamination,
        "threshold_bounds": None if bounds is None else [float(b) for b in bounds],
        "training_log_likelihood": finite_or_none(threshold.training_log_likelihood),
        "score_quantile_levels": [float(v) for v in threshold.quantile_levels],
        "score_quantiles": [float(v) for v in threshold.quantiles],
    }


def _arrays(mixture: Mixture) -> dict:
    return {"weights_": mixture.weights, "means_": mixture.means,
            "covariances_": mixture.covariances,
            "precisions_cholesky_": mixture.precisions_cholesky}


def content_id(record: ModelRecord) -> str:
    """A short content hash of a model: its parameters, arrays and threshold.

    Two models with the same id flag the same rows the same way; it does not depend on
    when, where or by which daskgmm version the model was written.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"params": record.params, "anomaly": _anomaly_meta(record.threshold)},
                        sort_keys=True).encode())
    for name, value in _arrays(record.mixture).items():
        if value is not None:
            h.update(name.encode())
            if np.asarray(value).dtype == np.float32:  # not the id of its float64 copy
                h.update(b"float32")
            h.update(np.ascontiguousarray(value, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def write_model(path, record: ModelRecord, *, storage_options=None):
    """Write ``record`` to ``path`` (local path or fsspec URL) in one atomic step."""
    fit = record.fit
    lower_bound = float(fit.lower_bound)
    arrays = _arrays(record.mixture)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "params": record.params,
        "covariance_type": record.mixture.covariance_type,
        "n_features_in": int(record.n_features_in),
        "feature_names": (None if record.feature_names is None
                          else [str(n) for n in record.feature_names]),
        "n_iter": int(fit.n_iter),
        "converged": bool(fit.converged),
        "lower_bound": lower_bound if np.isfinite(lower_bound) else None,
        "lower_bounds": [float(v) for v in fit.lower_bounds],
        "fit_data": {"n_samples": int(fit.n_samples), "n_features": int(record.n_features_in),
                     "n_incomplete": int(fit.n_incomplete)},
        "n_passes": int(fit.n_passes),
        "arrays": [name for name, value in arrays.items() if value is not None],
        "anomaly": _anomaly_meta(record.threshold),
        "model_id": content_id(record),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps(meta, indent=2, sort_keys=True))
        for name in meta["arrays"]:
            write_npy(zf, f"arrays/{name}.npy", arrays[name])
    write_atomic(*url_to_fs(path, storage_options), buf.getvalue())


def read_model(path, *, storage_options=None, known_params=None) -> ModelRecord:
    """Read and check a model file. ``known_params``: the parameter names this daskgmm
    accepts (a file with others was written by a newer version).

    Nothing is trusted because daskgmm wrote it: every member is read with its errors
    named, every metadata field is type-checked, the arrays must have the shapes of
    their covariance type and hold finite values, the weights must be positive and sum
    to 1, the precision factors must be triangular with a positive diagonal, and the
    stored model id must be the hash of what was read (a file changed by hand is
    refused). Any failure is a :class:`ModelFileError` naming the file and the piece.
    """
    shown = str(path)
    fs, fspath = url_to_fs(path, storage_options)
    if not fs.exists(fspath):
        raise FileNotFoundError(f"No daskgmm model file at {shown!r}.")
    with fs.open(fspath, "rb") as f:
        raw = f.read()
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
    except _DAMAGED as exc:
        raise ModelFileError(
            f"{shown!r} is not a daskgmm model file (not a zip archive written by "
            f"GaussianMixture.save: {type(exc).__name__}: {exc})."
        ) from None
    with zf:
        meta = _read_meta(shown, zf)
        _check_meta_types(shown, meta)
        limit = _array_bytes_limit(meta)
        arrays = {a: _read_array(shown, zf, f"arrays/{a}.npy", limit) for a in meta["arrays"]}
    _check_one_dtype(shown, arrays)
    unknown = sorted(set(meta["params"]) - set(known_params or meta["params"]))
    if unknown:
        raise ModelFileError(
            f"{shown!r}: metadata.json has parameters this daskgmm {__version__} does not "
            f"know: {', '.join(unknown)} (written by daskgmm "
            f"{meta.get('library_version')}). Upgrade daskgmm to load it."
        )
    covariance_type = meta["covariance_type"]
    _check_shapes(shown, arrays, meta)
    _check_values(shown, arrays, covariance_type)
    model = covariance.get(covariance_type)
    covariances = arrays.get("covariances_")
    if covariances is None:
        factors = arrays["precisions_cholesky_"]
        covariances = model.covariances_from_precisions(
            model.precisions(factors.astype(np.float64))).astype(factors.dtype, copy=False)
    mixture = Mixture(covariance_type, arrays["weights_"], arrays["means_"],
                      arrays["precisions_cholesky_"], covariances)
    fit = FitSummary(
        n_iter=meta["n_iter"], converged=meta["converged"],
        lower_bound=-np.inf if meta["lower_bound"] is None else meta["lower_bound"],
        lower_bounds=list(meta["lower_bounds"]), n_samples=meta["fit_data"]["n_samples"],
        n_passes=meta.get("n_passes", 0), seconds=float("nan"),  # not kept in the file
        n_incomplete=meta["fit_data"].get("n_incomplete", 0),
    )
    anomaly = meta.get("anomaly")
    record = ModelRecord(
        params=meta["params"], mixture=mixture, fit=fit,
        n_features_in=meta["n_features_in"], feature_names=meta.get("feature_names"),
        threshold=None if anomaly is None else _threshold(shown, anomaly),
    )
    if content_id(record) != meta["model_id"]:
        raise ModelFileError(
            f"{shown!r} was changed after it was written: its content does not hash to "
            f"its model id {meta['model_id']!r} (metadata.json or an array was edited, or "
            "the file is damaged). Refit the model, or load the copy you trust."
        )
    return record


# metadata.json holds parameters, feature names and a fit summary: a few MiB at most
_META_BYTES = 64 * 2**20


def _array_bytes_limit(meta) -> int:
    """The most bytes an array member can need for the component and feature counts of
    metadata.json (a member claiming more, say a decompression bomb, is refused unread)."""
    d, k = meta["n_features_in"], meta["params"].get("n_components", 1)
    if not (_is_int(d) and _is_int(k)):
        return 4096
    return 8 * max(k, 1) * max(d, 1) ** 2 + 4096


def _read_member(shown, zf, name, limit=_META_BYTES) -> bytes:
    try:
        size = zf.getinfo(name).file_size
    except KeyError:
        raise ModelFileError(f"{shown!r} is incomplete: missing {name}.") from None
    if size > limit:
        raise ModelFileError(
            f"{shown!r}: member {name} claims {size:,} bytes uncompressed, more than the "
            f"{limit:,} its metadata allows; the file is damaged or hostile and is not read."
        )
    try:
        return zf.read(name)
    except _DAMAGED as exc:
        raise ModelFileError(
            f"{shown!r}: member {name} is damaged ({type(exc).__name__}: {exc}); the file "
            "cannot be trusted. Re-save the model, or load a copy you trust."
        ) from None


def _read_array(shown, zf, name, limit) -> np.ndarray:
    data = _read_member(shown, zf, name, limit)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        what = ("holds Python objects, which are never unpickled"
                if data.startswith(b"\x93NUMPY") and "allow_pickle" in str(exc)
                else f"is not a .npy array ({exc})")
        raise ModelFileError(
            f"{shown!r}: member {name} {what}. Model files hold float64 (or float32) "
            "arrays only; re-save the model with GaussianMixture.save."
        ) from None
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        raise ModelFileError(
            f"{shown!r}: member {name} has dtype {getattr(array, 'dtype', type(array))}, "
            "not floating point. Re-save the model with GaussianMixture.save."
        )
    if array.dtype not in _DTYPES:
        raise ModelFileError(
            f"{shown!r}: member {name} has dtype {array.dtype}; model files hold float64 "
            "arrays, or float32 for a model fitted on float32 data. The file is damaged "
            "or was edited; re-save the model with GaussianMixture.save."
        )
    return array


_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


def _check_one_dtype(shown, arrays):
    """The arrays of one model share one dtype (a model fitted on float32 data has
    float32 arrays, any other float64 ones)."""
    dtypes = {name: array.dtype for name, array in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name} {dtype}" for name, dtype in dtypes.items())
        # the members whose dtype differs from the most common one: the edited ones
        counts = {}
        for dtype in dtypes.values():
            counts[dtype] = counts.get(dtype, 0) + 1
        usual = max(counts, key=counts.get)
        odd = [f"arrays/{name}.npy" for name, dtype in dtypes.items() if dtype != usual]
        raise ModelFileError(
            f"{shown!r}: member {', '.join(odd)} has another dtype than the model's other "
            f"arrays ({listed}); a model's arrays are all float64, or all float32 for a "
            "model fitted on float32 data. The file is damaged or was edited; re-save the "
            "model with GaussianMixture.save."
        )


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


_FIELD_TYPES = {
    "params": (dict, "an object"),
    "covariance_type": (str, "a string"),
    "n_features_in": (_is_int, "an int"),
    "n_iter": (_is_int, "an int"),
    "converged": (bool, "true or false"),
    "lower_bound": (lambda v: v is None or _is_number(v), "a number or null"),
    "lower_bounds": (lambda v: isinstance(v, list) and all(_is_number(x) for x in v),
                     "a list of numbers"),
    "fit_data": (lambda v: isinstance(v, dict) and all(_is_int(v.get(k))
                                                       for k in ("n_samples", "n_features"))
                 and _is_int(v.get("n_incomplete", 0)) and v.get("n_incomplete", 0) >= 0,
                 "an object of ints n_samples and n_features (and n_incomplete >= 0)"),
    "arrays": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)
               and set(_REQUIRED_ARRAYS) <= set(v) <= set(_ARRAYS),
               f"a list among {list(_ARRAYS)} with {list(_REQUIRED_ARRAYS)}"),
    "model_id": (str, "a string"),
    "feature_names": (lambda v: v is None or (isinstance(v, list)
                                              and all(isinstance(x, str) for x in v)),
                      "a list of strings or null"),
    "n_passes": (_is_int, "an int"),
    "anomaly": (lambda v: v is None or isinstance(v, dict), "an object or null"),
}


def _check_meta_types(shown, meta):
    def refuse(key, what, value):
        raise ModelFileError(
            f"{shown!r}: metadata.json field {key!r} should be {what}, got "
            f"{json.dumps(value)[:80]}. The file is damaged; re-save the model."
        )

    for key, (check, what) in _FIELD_TYPES.items():
        if key not in meta:
            continue
        value = meta[key]
        ok = isinstance(value, check) if isinstance(check, type) else check(value)
        if not ok:
            refuse(key, what, value)
    # the sizes the arrays' shapes are checked against
    if meta["n_features_in"] < 1:
        refuse("n_features_in", "a positive int", meta["n_features_in"])
    # the estimator is built from the parameters, the mixture from the arrays: they must
    # agree on the number of components and the covariance type
    params = meta["params"]
    for key in ("n_components", "covariance_type"):
        if key not in params:
            refuse("params", f"an object with {key!r}", params)
    if not (_is_int(params["n_components"]) and params["n_components"] >= 1):
        refuse("params.n_components", "a positive int", params["n_components"])
    if params["covariance_type"] != meta["covariance_type"]:
        refuse("params.covariance_type", f"{meta['covariance_type']!r}, as the field "
               "'covariance_type'", params["covariance_type"])
    names = meta.get("feature_names")
    if names is not None and len(names) != meta["n_features_in"]:
        raise ModelFileError(
            f"{shown!r}: metadata.json lists {len(names)} feature names for "
            f"{meta['n_features_in']} features. The file is damaged; re-save the model."
        )


def _check_values(shown, arrays, covariance_type):
    """Finite arrays, weights positive summing to 1, triangular precision factors with a
    positive diagonal."""
    for name, array in arrays.items():
        if not np.isfinite(array).all():
            index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
            raise ModelFileError(
                f"{shown!r}: arrays/{name}.npy holds {array[index]} at {index}; a model "
                "holds finite numbers only. The file is damaged; refit the model."
            )
    weights = arrays["weights_"]
    if np.any(weights <= 0) or abs(weights.sum(dtype=np.float64) - 1.0) > 1e-6:
        raise ModelFileError(
            f"{shown!r}: arrays/weights_.npy must be positive and sum to 1; got minimum "
            f"{weights.min():.6g} and sum {weights.sum():.10g}. The file is damaged; refit "
            "the model."
        )
    factors = arrays["precisions_cholesky_"]
    if covariance_type in ("full", "tied"):
        mats = factors if covariance_type == "full" else factors[None]
        scale = np.abs(mats).max(axis=(1, 2))
        lower = np.abs(np.tril(mats, -1)).max(axis=(1, 2))
        diag = np.diagonal(mats, axis1=1, axis2=2)
        bad = np.flatnonzero((lower > 1e-12 * scale) | np.any(diag <= 0, axis=1))
        what = "upper triangular with a positive diagonal"
    else:
        bad = np.flatnonzero(np.reshape(factors <= 0, (len(factors), -1)).any(axis=1))
        what = "positive"
    if bad.size:
        raise ModelFileError(
            f"{shown!r}: arrays/precisions_cholesky_.npy is not {what} (component "
            f"{int(bad[0])}). The file is damaged; refit the model."
        )


def _read_meta(shown, zf):
    names = set(zf.namelist())
    if "metadata.json" not in names:
        raise ModelFileError(f"{shown!r} has no metadata.json: not a daskgmm model file.")
    try:
        meta = json.loads(_read_member(shown, zf, "metadata.json"))
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(
            f"{shown!r} has an unreadable metadata.json ({type(exc).__name__}: "
            f"{str(exc)[:200]}); re-save the model."
        ) from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{shown!r}: metadata.json is not a JSON object.")
    if meta.get("format") != FORMAT:
        raise ModelFileError(
            f"{shown!r} is not a daskgmm model file (metadata.json has format "
            f"{json.dumps(meta.get('format'))[:80]}, not {FORMAT!r})."
        )
    version = meta.get("format_version")
    if not _is_int(version) or version < 1:
        raise ModelFileError(
            f"{shown!r}: metadata.json field 'format_version' should be a positive int, "
            f"got {json.dumps(version)[:80]}. The file is damaged; re-save the model."
        )
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{shown!r} has model format version {version!r}, newer than this daskgmm "
            f"{__version__} reads (up to {FORMAT_VERSION}; metadata.json field "
            f"'format_version'); it was written by "
            f"daskgmm {meta.get('library_version')}. Upgrade daskgmm to load it."
        )
    fields = [k for k in _REQUIRED_META if k not in meta]
    fit_data = meta.get("fit_data")
    fields += [
        f"fit_data.{k}" for k in ("n_samples", "n_features")
        if not isinstance(fit_data, dict) or k not in fit_data
    ]
    listed = meta.get("arrays")
    listed = [a for a in listed if a in _ARRAYS] if isinstance(listed, list) else []
    members = sorted(
        f"arrays/{a}.npy" for a in set(_REQUIRED_ARRAYS) | set(listed)
        if f"arrays/{a}.npy" not in names
    )
    if fields or members:
        missing = [f"{', '.join(sorted(fields))} (fields of metadata.json)"] if fields else []
        raise ModelFileError(
            f"{shown!r} is incomplete: missing {'; '.join(missing + members)}. "
            "Re-save the model with GaussianMixture.save."
        )
    return meta


def _threshold(shown, anomaly) -> Threshold:
    def number(value):
        if not _is_number(value):
            raise TypeError(f"{value!r} is not a number")
        return float(value)

    try:
        c = anomaly["contamination"]
        b = anomaly.get("threshold_bounds")
        ll = anomaly.get("training_log_likelihood")
        out = Threshold(
            threshold=number(anomaly["threshold"]),
            contamination=None if c is None else number(c),
            bounds=None if b is None else (number(b[0]), number(b[1])),
            training_log_likelihood=float("nan") if ll is None else number(ll),
            quantile_levels=np.asarray([number(v) for v in anomaly["score_quantile_levels"]]),
            quantiles=np.asarray([number(v) for v in anomaly["score_quantiles"]]),
        )
        if not math.isfinite(out.threshold) or not np.isfinite(out.quantiles).all():
            raise ValueError("non-finite threshold or quantiles")
        if out.contamination is not None and not 0 < out.contamination <= 0.5:
            raise ValueError(f"contamination {out.contamination} outside (0, 0.5]")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelFileError(
            f"{shown!r}: the 'anomaly' entry of metadata.json is damaged ({exc!r}); "
            "re-save the model, or set the threshold again with gm.set_threshold(...)."
        ) from None
    if out.quantile_levels.shape != out.quantiles.shape:
        raise ModelFileError(
            f"{shown!r}: in the 'anomaly' entry of metadata.json, score_quantile_levels "
            "and score_quantiles differ in length; re-save the model, or set the threshold "
            "again with gm.set_threshold(...)."
        )
    return out


def _check_shapes(shown, arrays, meta):
    """Every array has the shape its covariance type, component and feature counts (from
    metadata.json) call for."""
    d, k = meta["n_features_in"], meta["params"]["n_components"]
    try:
        cov = covariance.get(meta["covariance_type"]).shape(k, d)
    except ValueError:
        raise ModelFileError(
            f"{shown!r}: metadata.json has an unknown covariance_type "
            f"{meta['covariance_type']!r} (this daskgmm knows "
            f"{list(covariance.COVARIANCE_TYPES)}). The file is damaged; re-save the model."
        ) from None
    expected = {"weights_": (k,), "means_": (k, d), "covariances_": cov,
                "precisions_cholesky_": cov}
    for name, array in arrays.items():
        if array.shape != expected[name]:
            raise ModelFileError(
                f"{shown!r}: arrays/{name}.npy has shape {array.shape}, expected "
                f"{expected[name]} for {k} components, {d} features, covariance_type="
                f"{meta['covariance_type']!r} (as metadata.json says). The file is "
                "damaged; re-save the model."
            )
