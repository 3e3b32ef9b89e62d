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
        promotions/<time>-<version>.json  every change of the current model, and why
        lock                              the run holding the job (see JobLock)

A version is complete (its ``info.json`` written) before ``current`` names it;
``current`` is replaced in one step, so readers of the pointer always find a complete
model. Versions are never modified once the pointer has named them. A save that fails
(a full filesystem is a :class:`daskgmm._storage.StorageFullError` naming the file)
removes what it wrote of its version.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
from datetime import UTC, datetime, timedelta

from ._storage import RUN_ID, is_local, naming_write_errors, put_json, url_of, write_atomic
from ._version import __version__
from .checkpoint import Checkpoint
from .estimator import load, model_id
from .versioned import JsonMetadata, VersionedLocation

logger = logging.getLogger(__name__)

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
        location = self.location
        existed = location.fs.exists(location.version_path(version))
        try:
            model.save(self.version_url(version) + "/model.daskgmm",
                       storage_options=self.storage_options)
            location.complete(version, {**info, "version": version,
                                        "model_id": model_id(model)})
        except BaseException:
            if not existed:  # never completed nor named by the pointer: drop what was written
                location.remove(version)
            raise
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

    def promote(self, version: str, *, reason: str, actor: str = "daskgmm") -> dict:
        """Make ``version`` the current model, and record why.

        The pointer (written last, in one atomic step) holds the version's info with
        ``promoted_at``, ``promoted_by``, ``promotion_reason`` and the ``previous``
        version; the same record is kept under ``promotions/`` (see :meth:`promotions`),
        so that every change of the production model, rollbacks included, can be traced.
        """
        info = self.info(version)
        previous = (self.current() or {}).get("version")
        now = datetime.now(UTC)
        record = {**info, "promoted_at": now.isoformat(), "promoted_by": actor,
                  "promotion_reason": reason, "previous": previous}
        self.location.point_to(record)
        put_json(self.location.fs, f"{self.location.root}/promotions/"
                 f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{version}.json", record)
        return record

    def promotions(self) -> list[dict]:
        """Every promotion recorded, oldest first."""
        fs, base = self.location.fs, f"{self.location.root}/promotions"
        fs.invalidate_cache(base)
        if not fs.isdir(base):
            return []
        out = []
        for path in sorted(p for p in fs.ls(base, detail=False) if p.endswith(".json")):
            try:
                out.append(json.loads(fs.cat_file(path)))
            except (ValueError, UnicodeDecodeError) as exc:
                logger.warning("promotion record %s left out: damaged (%s)", path, exc)
        return out

    # -------------------------------------------------------------------- lock

    def lock(self, run_id: str, hours: float = 24.0) -> JobLock:
        """The job's lock for run ``run_id`` (see :class:`JobLock`): ``with store.lock(
        run_id): ...`` runs the block only while no other run of the job holds it."""
        self._ensure()
        return JobLock(self.location.fs, f"{self.location.root}/lock", run_id, hours)

    def current(self) -> dict | None:
        """The info of the current version (with its ``version``), or None."""
        return self.location.pointer()

    def info(self, version: str) -> dict:
        info = self.location.manifest(version) if _VERSION.fullmatch(version) else None
        if info is None:
            versions = self.versions()
            shown = (f"the latest 5 of {len(versions)}: " if len(versions) > 5 else "") + \
                str(versions[-5:])
            raise FileNotFoundError(
                f"No model version {version!r} in {self.url!r}; versions there: {shown} "
                "(daskgmm inspect lists them all)."
            )
        return info

    def load(self, version: str | None = None):
        """The model of ``version`` (default: the current one)."""
        if version is None:
            current = self.current()
            if current is None:
                raise FileNotFoundError(f"Model store {self.url!r} has no current model yet.")
            version = current.get("version")
            if not isinstance(version, str) or not _VERSION.fullmatch(version):
                raise ValueError(
                    f"The current pointer of model store {self.url!r} is damaged: it names "
                    f"version {version!r}, not a version of this store. Restore "
                    f"{self.url}/current from a backup, or make a version current: "
                    "store.promote(VERSION, reason=...)."
                )
        elif not isinstance(version, str) or not _VERSION.fullmatch(version):
            raise ValueError(f"Not a model store version name: {version!r}.")
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


def _expired(expires, now) -> bool:
    """A lock's expiry is past, missing or unreadable (a damaged lock is stale)."""
    try:
        return datetime.fromisoformat(expires) < now
    except (TypeError, ValueError):
        return True


def _dead_here(holder) -> bool:
    """The lock's process ran on this host and is gone."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class LockedError(RuntimeError):
    """Another run of the same job holds its lock."""


class JobLock:
    """One run at a time per job: a ``lock`` file created atomically (exclusive create on
    local disks, a conditional PUT on object stores) naming the run, the host and the
    process, removed when the run ends. A lock whose process is gone (same host), or
    older than ``hours``, belongs to a dead run: it is replaced, with a warning.

    The file carries this object's own token: an :meth:`acquire` retried after an
    attempt that wrote the file (and was interrupted before it returned) finds it ours,
    and :meth:`release` removes the file only when it is ours, whether or not
    ``acquire`` returned. Another ``JobLock``, even of the same run in the same process,
    is another holder.
    """

    def __init__(self, fs, path, run_id, hours):
        self.fs, self.path, self.run_id, self.hours = fs, path, run_id, hours
        self.token = secrets.token_hex(8)
        self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def _create(self, data: bytes):
        with naming_write_errors(url_of(self.fs, self.path)):
            if not is_local(self.fs):
                self.fs.pipe_file(self.path, data, mode="create")
                return
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except BaseException:
                os.remove(self.path)  # ours, and incomplete: not a lock of anyone
                raise

    def acquire(self):
        now = datetime.now(UTC)
        record = {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                  "token": self.token, "started": now.isoformat(),
                  "expires": (now + timedelta(hours=self.hours)).isoformat()}
        for attempt in range(2):
            try:
                self._create(json.dumps(record).encode())
                self.held = True
                return
            except FileExistsError:
                holder = self._holder()
                if holder.get("token") == self.token:  # written by an interrupted attempt
                    self.held = True
                    return
                expires = holder.get("expires")
                if attempt == 0 and (_expired(expires, now) or _dead_here(holder)):
                    logger.warning("replacing the stale lock %s of run %s (started %s)",
                                   self.path, holder.get("run_id"), holder.get("started"))
                    try:
                        self.fs.rm(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                raise LockedError(
                    f"Another run of this job is running: run {holder.get('run_id')!r} "
                    f"started at {holder.get('started')} on host {holder.get('host')} "
                    f"(process {holder.get('pid')}) and holds {self.path} until "
                    f"{expires}. Wait for it to finish; if that run is dead, delete the "
                    "lock file."
                ) from None

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.fs.cat_file(self.path))
            return holder if isinstance(holder, dict) else {}
        except FileNotFoundError:
            return {"expires": None}
        except (ValueError, UnicodeDecodeError):
            return {}  # damaged: no expiry, so it is stale

    def release(self):
        """Remove the lock file if it is this object's (see the class's notes)."""
        try:
            if self._holder().get("token") == self.token:
                self.fs.rm(self.path)
        finally:
            self.held = False
