"""A model store: every fitted model under its own version, a pointer to the current one.

Layout (a local directory or an fsspec URL; a :class:`daskgmm.versioned.VersionedLocation`)::

    <store>/
        _daskgmm_models.json              marker: this location is a daskgmm model store
        current                           pointer (JSON): the current version and its info
        versions/<time>-<model id>/
            model.daskgmm                 the model file (no pickle)
            info.json                     what produced it: run, data, selection, drift, ...
            ...                           the run's report and plots
        checkpoints/<run id>.ckpt         EM state of a running fit (see daskgmm.Checkpoint)
        runs/<run id>/                    plots of scoring runs that made no model

A version is complete (its ``info.json`` written) before ``current`` names it;
``current`` is replaced in one step, so readers of the pointer always find a complete
model. Versions are never modified once the pointer has named them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from ._storage import RUN_ID, write_atomic
from ._version import __version__
from .checkpoint import Checkpoint
from .estimator import load, model_id
from .versioned import JsonMetadata, VersionedLocation

FORMAT = "daskgmm-model-store"
_VERSION = re.compile(r"\d{8}T\d{6}\d{6}Z-[0-9a-f]{8}")


class ModelStore:
    """Versions of models at ``url`` (a path or fsspec URL).

    Parameters
    ----------
    url : str
    storage_options : dict, default=None
        fsspec options (never logged or saved).
    """

    def __init__(self, url, storage_options=None):
        self.location = VersionedLocation(
            url, what="model store", format=FORMAT, versions="versions",
            metadata=JsonMetadata(marker="_daskgmm_models.json", pointer="current",
                                  manifest="info.json"),
            storage_options=storage_options,
        )
        self.url = self.location.url
        self.storage_options = storage_options

    def __repr__(self):
        return f"ModelStore({self.url!r})"

    def _ensure(self):
        if not self.location.present():
            self.location.create({"library_version": __version__})

    def version_url(self, version: str) -> str:
        return self.location.version_url(version)

    # ---------------------------------------------------------------- versions

    def new_version(self, model) -> str:
        """A fresh version name for ``model``: UTC time and the model's content id."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return f"{stamp}-{model_id(model)[:8]}"

    def save(self, model, version: str, info: dict) -> str:
        """Write ``model`` and ``info`` as ``version`` (not current yet); returns its URL."""
        if not _VERSION.fullmatch(version):
            raise ValueError(f"Not a model store version name: {version!r}.")
        self._ensure()
        model.save(self.version_url(version) + "/model.daskgmm",
                   storage_options=self.storage_options)
        self.location.complete(version, {**info, "version": version,
                                         "model_id": model_id(model)})
        return self.version_url(version)

    def write_file(self, version: str, name: str, data: bytes) -> str:
        """Add a file (report, plot) to a version; returns its URL."""
        return self._write(f"versions/{version}/{name}", data)

    def write_run_file(self, run_id: str, name: str, data: bytes) -> str:
        """A file of a run that made no model (a scoring run): ``runs/<run id>/<name>``."""
        return self._write(f"runs/{run_id}/{name}", data)

    def _write(self, relative: str, data: bytes) -> str:
        write_atomic(self.location.fs, f"{self.location.root}/{relative}", data)
        return f"{self.url}/{relative}"

    def promote(self, version: str) -> dict:
        """Make ``version`` the current model (the pointer is written last, atomically)."""
        info = self.info(version)
        self.location.point_to(info)
        return info

    def current(self) -> dict | None:
        """The info of the current version (with its ``version``), or None."""
        return self.location.pointer()

    def info(self, version: str) -> dict:
        info = self.location.manifest(version) if _VERSION.fullmatch(version) else None
        if info is None:
            raise FileNotFoundError(
                f"No model version {version!r} in {self.url!r}; versions there: "
                f"{self.versions()[-5:]}."
            )
        return info

    def load(self, version: str | None = None):
        """The model of ``version`` (default: the current one)."""
        if version is None:
            current = self.current()
            if current is None:
                raise FileNotFoundError(f"Model store {self.url!r} has no current model yet.")
            version = current["version"]
        return load(self.version_url(version) + "/model.daskgmm",
                    storage_options=self.storage_options)

    def versions(self) -> list[str]:
        """Every complete version (with an info.json), oldest first."""
        return [v for v, _ in self.location.versions(valid=_VERSION.fullmatch)]

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest versions; the current one is always kept.
        Returns the deleted versions."""
        current = (self.current() or {}).get("version")
        return self.location.prune(keep, current, valid=_VERSION.fullmatch)

    # ------------------------------------------------------------- checkpoints

    def checkpoint(self, run_id: str, every: int = 5) -> Checkpoint:
        """The checkpoint of the fit of run ``run_id``."""
        if not RUN_ID.fullmatch(run_id):
            raise ValueError(f"run_id {run_id!r} cannot name a checkpoint file.")
        self._ensure()
        return Checkpoint(f"{self.url}/checkpoints/{run_id}.ckpt", every=every,
                          storage_options=self.storage_options)
