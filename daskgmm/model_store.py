"""A model store: every fitted model under its own version, a pointer to the current one.

Layout (a local directory or an fsspec URL)::

    <store>/
        _daskgmm_models.json              marker: this location is a daskgmm model store
        current                           pointer (JSON): the current version and its info
        versions/<time>-<model id>/
            model.daskgmm                 the model file (no pickle)
            info.json                     what produced it: run, data, selection, drift, ...
            ...                           the run's report and plots
        checkpoints/<run id>.ckpt         EM state of a running fit (see daskgmm.Checkpoint)
        runs/<run id>/                    plots of scoring runs that made no model

A version is complete before ``current`` names it; ``current`` is replaced in one step
(a rename on local disks, one PUT on object stores), so readers of the pointer always
find a complete model. Versions are never modified once the pointer has named them.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import fsspec

from ._storage import RUN_ID, put_json, write_atomic
from ._version import __version__
from .checkpoint import Checkpoint
from .model_file import load, model_id, save_model

MARKER = "_daskgmm_models.json"
FORMAT = "daskgmm-model-store"
POINTER = "current"
VERSIONS = "versions"
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
        self.url = str(url).rstrip("/")
        self.storage_options = storage_options
        self.fs, root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = root.rstrip("/")

    def __repr__(self):
        return f"ModelStore({self.url!r})"

    # ------------------------------------------------------------------ layout

    def _check_or_create(self):
        fs, root = self.fs, self.root
        fs.invalidate_cache(root)
        if fs.isfile(root):
            raise ValueError(f"Model store {self.url!r} is a file; give a directory.")
        if fs.isdir(root):
            entries = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
            if entries and MARKER not in entries:
                shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "")
                raise ValueError(
                    f"Refusing to use {self.url!r} as a model store: it holds {shown}, not "
                    f"written by daskgmm (no {MARKER}). Choose a new or empty directory."
                )
            if entries:
                return
        fs.makedirs(root, exist_ok=True)
        put_json(fs, f"{root}/{MARKER}", {"format": FORMAT, "library_version": __version__})

    def version_url(self, version: str) -> str:
        return f"{self.url}/{VERSIONS}/{version}"

    def _path(self, version, name=None):
        path = f"{self.root}/{VERSIONS}/{version}"
        return path if name is None else f"{path}/{name}"

    # ---------------------------------------------------------------- versions

    def new_version(self, model) -> str:
        """A fresh version name for ``model``: UTC time and the model's content id."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return f"{stamp}-{model_id(model)[:8]}"

    def save(self, model, version: str, info: dict) -> str:
        """Write ``model`` and ``info`` as ``version`` (not current yet); returns its URL."""
        if not _VERSION.fullmatch(version):
            raise ValueError(f"Not a model store version name: {version!r}.")
        self._check_or_create()
        save_model(model, self.version_url(version) + "/model.daskgmm",
                   storage_options=self.storage_options)
        info = {**info, "version": version, "model_id": model_id(model)}
        put_json(self.fs, self._path(version, "info.json"), info)
        return self.version_url(version)

    def write_file(self, version: str, name: str, data: bytes) -> str:
        """Add a file (report, plot) to a version; returns its URL."""
        return self._write(f"{VERSIONS}/{version}/{name}", data)

    def write_run_file(self, run_id: str, name: str, data: bytes) -> str:
        """A file of a run that made no model (a scoring run): ``runs/<run id>/<name>``."""
        return self._write(f"runs/{run_id}/{name}", data)

    def _write(self, relative: str, data: bytes) -> str:
        write_atomic(self.fs, f"{self.root}/{relative}", data)
        return f"{self.url}/{relative}"

    def promote(self, version: str) -> dict:
        """Make ``version`` the current model (the pointer is written last, atomically)."""
        info = self.info(version)
        put_json(self.fs, f"{self.root}/{POINTER}", info)
        return info

    def current(self) -> dict | None:
        """The info of the current version (with its ``version``), or None."""
        self.fs.invalidate_cache(self.root)
        try:
            return json.loads(self.fs.cat_file(f"{self.root}/{POINTER}"))
        except FileNotFoundError:
            return None

    def info(self, version: str) -> dict:
        try:
            return json.loads(self.fs.cat_file(self._path(version, "info.json")))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"No model version {version!r} in {self.url!r}; versions there: "
                f"{self.versions()[-5:]}."
            ) from None

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
        path = f"{self.root}/{VERSIONS}"
        self.fs.invalidate_cache(path)
        if not self.fs.isdir(path):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False)]
        return sorted(n for n in names if _VERSION.fullmatch(n)
                      and self.fs.exists(self._path(n, "info.json")))

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest versions; the current one is always kept.
        Returns the deleted versions."""
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise ValueError(f"keep must be an int >= 1; got {keep!r}.")
        current = (self.current() or {}).get("version")
        versions = self.versions()
        doomed = [v for v in versions[:-keep] if v != current]
        for version in doomed:
            self.fs.rm(self._path(version), recursive=True)
        return doomed

    # ------------------------------------------------------------- checkpoints

    def checkpoint(self, run_id: str, every: int = 5) -> Checkpoint:
        """The checkpoint of the fit of run ``run_id``."""
        if not RUN_ID.fullmatch(run_id):
            raise ValueError(f"run_id {run_id!r} cannot name a checkpoint file.")
        self._check_or_create()
        return Checkpoint(f"{self.url}/checkpoints/{run_id}.ckpt", every=every,
                          storage_options=self.storage_options)
