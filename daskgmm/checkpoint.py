"""Checkpoints of a running EM fit, so that an interrupted fit resumes where it stopped.

A checkpoint holds every candidate of the batch (parameters after the latest M-step,
iteration count, lower bounds, convergence) and the number of passes made, in a zip of
``state.json`` and ``.npy`` arrays, written atomically like model files (no pickle).
EM is deterministic given these, so a fit resumed from a checkpoint of the same fit
(same data, parameters and starting point: its *fingerprint*) reaches the model an
uninterrupted fit reaches: exactly when the data are chunked as before, and to the
rounding of the sums otherwise (``chunk_rows='auto'`` follows the workers' memory, so a
retry on other workers may chunk Zarr or Parquet data differently; it still resumes).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
import zlib

import numpy as np

from . import covariance
from ._storage import finite_or_none, portable_params, url_to_fs, write_atomic, write_npy
from .em import Candidate
from .kernels import Params
from .mixture import Mixture
from .sources import Dataset

logger = logging.getLogger(__name__)

FORMAT = "daskgmm-checkpoint"
_ARRAYS = ("weights", "means", "precisions_cholesky", "covariances", "shift")


class Checkpoint:
    """Where and how often :meth:`GaussianMixture.fit` saves its EM state.

    Parameters
    ----------
    path : str
        File path or fsspec URL of the checkpoint.
    every : int, default=5
        Save after every ``every`` EM iterations (and when the fit ends).
    storage_options : dict, default=None
        fsspec options for ``path``.
    """

    def __init__(self, path, every=5, storage_options=None):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be an int >= 1; got {every!r}.")
        self.path, self.every = str(path), every
        self.storage_options = storage_options
        self.n_saved = 0

    def __repr__(self):
        return f"Checkpoint({self.path!r}, every={self.every})"

    def _fs(self):
        return url_to_fs(self.path, self.storage_options)

    def save(self, fingerprint: str, candidates: list[Candidate], n_passes: int):
        entries, buf = [], io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for i, c in enumerate(candidates):
                p = c.params
                entries.append({
                    "tag": c.tag, "label": c.label, "covariance_type": p.covariance_type,
                    "lower_bound": finite_or_none(c.lower_bound),
                    "lower_bounds": list(c.lower_bounds),
                    "n_iter": c.n_iter, "converged": c.converged, "done": c.done,
                    "n_incomplete": int(c.n_incomplete),
                    "seconds": c.seconds,
                    "error": None if c.error is None else str(c.error),
                    "arrays": [a for a in _ARRAYS if getattr(p, a) is not None],
                })
                for name in entries[-1]["arrays"]:
                    write_npy(zf, f"c{i}/{name}.npy", getattr(p, name))
            zf.writestr("state.json", json.dumps({
                "format": FORMAT, "fingerprint": fingerprint, "n_passes": n_passes,
                "candidates": entries,
            }))
        write_atomic(*self._fs(), buf.getvalue())
        self.n_saved += 1
        logger.debug("checkpoint saved to %s after %d passes", self.path, n_passes)

    def load(self, fingerprint: str):
        """``(candidates, n_passes)`` of a checkpoint of this fit, or None.

        A checkpoint of another fit is ignored with a warning. So is a damaged one (not
        a zip, a damaged member, missing or ill-typed state, arrays of the wrong shape or
        not finite), naming the member: the fit then starts afresh, so a re-run is never
        blocked by a file someone must delete by hand.
        """
        fs, path = self._fs()
        if not fs.exists(path):
            return None
        raw = fs.cat_file(path)
        try:
            zf = zipfile.ZipFile(io.BytesIO(raw))
            state = json.loads(_member(zf, "state.json"))
            if state.get("format") != FORMAT or state.get("fingerprint") != fingerprint:
                logger.warning(
                    "ignoring checkpoint %s: it belongs to another fit (other data, "
                    "parameters or starting model)", self.path,
                )
                return None
            candidates = [_candidate(zf, i, e) for i, e in enumerate(state["candidates"])]
            n_passes = state["n_passes"]
            if not candidates or not isinstance(n_passes, int) or n_passes < 0:
                raise _Damaged("state.json", "no candidates or a bad pass count")
        except _Damaged as exc:
            logger.warning("ignoring damaged checkpoint %s (%s); the fit starts afresh",
                           self.path, exc)
            return None
        except (zipfile.BadZipFile, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("ignoring damaged checkpoint %s (%s: %s); the fit starts afresh",
                           self.path, type(exc).__name__, exc)
            return None
        return candidates, n_passes

    def saver(self, fingerprint: str, passes_before: int):
        """The ``on_pass`` hook of :func:`daskgmm.em.run_em` that saves the batch every
        ``every`` passes of EM and when it ends (``passes_before``: passes made before
        EM, kept in the checkpoint's pass count)."""

        def on_pass(candidates, n_passes):
            if n_passes % self.every == 0 or all(c.done for c in candidates):
                self.save(fingerprint, candidates, passes_before + n_passes)

        return on_pass

    def remove(self):
        fs, path = self._fs()
        if fs.exists(path):
            fs.rm(path)


class _Damaged(Exception):
    def __init__(self, member, what):
        super().__init__(f"member {member}: {what}")


def _member(zf, name) -> bytes:
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError) as exc:
        raise _Damaged(name, f"{type(exc).__name__}: {exc}") from None


def _array(zf, name) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(_member(zf, name)), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise _Damaged(name, f"not a float array ({exc})") from None
    if array.dtype.kind != "f" or not np.isfinite(array).all():
        raise _Damaged(name, "not finite float64 values")
    return array


def _candidate(zf, i, e) -> Candidate:
    """Candidate ``i`` of a checkpoint, its arrays checked against its covariance type."""
    arrays = {name: _array(zf, f"c{i}/{name}.npy") for name in e["arrays"]}
    model = covariance.get(e["covariance_type"])
    k, d = arrays["means"].shape
    expected = {"weights": (k,), "means": (k, d), "shift": (d,),
                "precisions_cholesky": model.shape(k, d), "covariances": model.shape(k, d)}
    for name, array in arrays.items():
        if array.shape != expected[name]:
            raise _Damaged(f"c{i}/{name}.npy", f"shape {array.shape}, expected "
                                               f"{expected[name]}")
    params = Params(e["covariance_type"], arrays["weights"], arrays["means"],
                    arrays["precisions_cholesky"], arrays.get("covariances"), arrays["shift"])
    lower_bound = -np.inf if e["lower_bound"] is None else float(e["lower_bound"])
    return Candidate(
        params, tag=_tuples(e["tag"]), label=e.get("label", ""), lower_bound=lower_bound,
        lower_bounds=[float(v) for v in e["lower_bounds"]], n_iter=int(e["n_iter"]),
        converged=bool(e["converged"]), done=bool(e["done"]), seconds=float(e["seconds"]),
        error=None if e["error"] is None else ValueError(str(e["error"])),
        n_incomplete=_count(e.get("n_incomplete", 0), f"c{i} n_incomplete"),
    )


def _count(value, what) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Damaged("state.json", f"{what} is not a count: {value!r}")
    return value


def _tuples(value):
    """JSON lists back to the tuples they were written from (candidate tags)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def fingerprint(params: dict, dataset: Dataset, start: Mixture | None = None) -> str:
    """What a checkpoint must match to be resumed: the estimator's parameters
    (``get_params()``; secrets and ``verbose`` left out), the data, and for a warm start
    the model it starts from.

    The data are named by their files and versions for Zarr and Parquet (dask names of
    file sources change from process to process; their chunking, which may follow the
    workers, is left out), else by the dask name (a content hash for numpy input). Sample
    weights are part of the data, named by their dask name (a hash of their values for
    in-memory weights), or for a Parquet weight column by its name (and the files).
    Listing the files is why a fit computes this only when it checkpoints.
    """
    params = {k: v for k, v in portable_params(params).items()
              if k not in ("verbose", "verbose_interval")
              and not (k == "nan_policy" and v == "raise")}  # as before nan_policy existed
    data = (dataset.origin.data_version() if dataset.origin is not None
            else getattr(dataset.array, "name", ""))
    h = hashlib.sha256(json.dumps(
        [params, dataset.description, dataset.array.shape, data],
        sort_keys=True, default=str,
    ).encode())
    if dataset.weights is not None:  # a weight column: named by the files and its name
        column = None if dataset.origin is None else dataset.origin.weight_column
        h.update(b"sample_weight:" + (dataset.weights.name if column is None
                                      else f"column {column}").encode())
    if start is not None:
        for array in (start.weights, start.means, start.precisions_cholesky):
            h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()
