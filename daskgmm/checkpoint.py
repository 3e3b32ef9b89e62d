"""Checkpoints of a running EM fit, so that an interrupted fit resumes where it stopped.

A checkpoint holds every candidate of the batch (parameters after the latest M-step,
iteration count, lower bounds, convergence) and the number of passes made, in a zip of
``state.json`` and ``.npy`` arrays, written atomically like model files (no pickle).
EM is deterministic given these, so a fit resumed from a checkpoint of the same fit
(same data, parameters and starting point: its *fingerprint*) reaches exactly the model
an uninterrupted fit reaches.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile

import fsspec
import numpy as np

from ._storage import finite_or_none, write_atomic, write_npy
from .em import Candidate
from .kernels import Params

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
        return fsspec.core.url_to_fs(self.path, **(self.storage_options or {}))

    def save(self, fingerprint: str, candidates: list[Candidate], n_passes: int):
        entries, buf = [], io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for i, c in enumerate(candidates):
                p = c.params
                entries.append({
                    "tag": c.tag, "covariance_type": p.covariance_type,
                    "lower_bound": finite_or_none(c.lower_bound),
                    "lower_bounds": list(c.lower_bounds),
                    "n_iter": c.n_iter, "converged": c.converged, "done": c.done,
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
        """``(candidates, n_passes)`` of a checkpoint of this fit, or None."""
        fs, path = self._fs()
        if not fs.exists(path):
            return None
        try:
            zf = zipfile.ZipFile(io.BytesIO(fs.cat_file(path)))
            state = json.loads(zf.read("state.json"))
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            logger.warning("ignoring unreadable checkpoint %s (%s)", self.path, exc)
            return None
        if state.get("format") != FORMAT or state.get("fingerprint") != fingerprint:
            logger.warning(
                "ignoring checkpoint %s: it belongs to another fit (other data, parameters "
                "or starting model)", self.path,
            )
            return None
        candidates = []
        for i, e in enumerate(state["candidates"]):
            arrays = {name: np.load(io.BytesIO(zf.read(f"c{i}/{name}.npy")),
                                    allow_pickle=False) for name in e["arrays"]}
            params = Params(e["covariance_type"], arrays["weights"], arrays["means"],
                            arrays["precisions_cholesky"], arrays.get("covariances"),
                            arrays["shift"])
            tag = tuple(e["tag"]) if isinstance(e["tag"], list) else e["tag"]
            lower_bound = -np.inf if e["lower_bound"] is None else e["lower_bound"]
            candidates.append(Candidate(
                params, tag=tag, lower_bound=lower_bound, lower_bounds=list(e["lower_bounds"]),
                n_iter=e["n_iter"], converged=e["converged"], done=e["done"],
                seconds=e["seconds"], error=None if e["error"] is None else ValueError(e["error"]),
            ))
        return candidates, int(state["n_passes"])

    def remove(self):
        fs, path = self._fs()
        if fs.exists(path):
            fs.rm(path)

