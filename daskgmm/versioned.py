"""A versioned location: complete versions side by side and a pointer to the current one.

Shared by the model store and the score publisher. A location (a local directory or an
fsspec URL) holds

- a *marker* saying what it holds (a location holding anything else is refused),
- *versions*, each a directory under the versions directory, complete once its
  *manifest* is written,
- a *pointer* naming the current version, written last and in one atomic step (a rename
  on local disks, a single PUT on object stores): readers following it see a complete
  version, never a partial one,
- and a retention rule: :meth:`VersionedLocation.prune` keeps the newest versions and
  never the one the pointer names.

Where the marker, pointer and manifests are stored is a :class:`Metadata`: JSON files
(:class:`JsonMetadata`) or, for Zarr score groups, Zarr attributes. A full filesystem
while writing any of them is a :class:`daskgmm._storage.StorageFullError` naming what was
being written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ._storage import join, naming_write_errors, put_json, url_to_fs

logger = logging.getLogger(__name__)


class Metadata:
    """Where a location keeps its marker, pointer and version manifests.

    Every method gets the location's filesystem ``fs`` and ``root`` path. ``read_*``
    return a dict or None when absent. ``marker_name`` names the marker in messages.
    """

    marker_name = "marker"

    def foreign(self, fs, root) -> str | None:
        """A description of content at ``root`` that is not this kind of location (for
        example a Zarr node without our attributes), or None."""
        return None

    def read_marker(self, fs, root) -> dict | None:
        raise NotImplementedError

    def write_marker(self, fs, root, marker: dict):
        raise NotImplementedError

    def read_pointer(self, fs, root) -> dict | None:
        raise NotImplementedError

    def write_pointer(self, fs, root, manifest: dict):
        raise NotImplementedError

    def read_manifest(self, fs, root, path) -> dict | None:
        raise NotImplementedError

    def write_manifest(self, fs, root, path, manifest: dict):
        raise NotImplementedError


@dataclass
class JsonMetadata(Metadata):
    """Marker, pointer and manifests as JSON files: ``root/marker``, ``root/pointer``,
    ``<version>/manifest``."""

    marker: str
    pointer: str
    manifest: str

    @property
    def marker_name(self):
        return self.marker

    def _read(self, fs, path):
        try:
            raw = fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"{path} is damaged (not JSON: {exc}). It was written by daskgmm: restore "
                "it from a backup, or remove it if it belongs to a version you can drop."
            ) from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} is damaged (a JSON {type(data).__name__}, not an "
                             "object): restore it from a backup.")
        return data

    def read_marker(self, fs, root):
        return self._read(fs, f"{root}/{self.marker}")

    def write_marker(self, fs, root, marker):
        put_json(fs, f"{root}/{self.marker}", marker)

    def read_pointer(self, fs, root):
        return self._read(fs, f"{root}/{self.pointer}")

    def write_pointer(self, fs, root, manifest):
        put_json(fs, f"{root}/{self.pointer}", manifest)

    def read_manifest(self, fs, root, path):
        return self._read(fs, f"{path}/{self.manifest}")

    def write_manifest(self, fs, root, path, manifest):
        put_json(fs, f"{path}/{self.manifest}", manifest)


class VersionedLocation:
    """Versions under ``url/<versions>/``, a pointer to the current one, a marker.

    Parameters
    ----------
    url : str or path
    what : str
        What the location is, for messages ('model store', 'score location').
    refusal : str
        How a refusal starts (default: "Refusing to use <url> as a <what>").
    writer : str
        What writes such locations, for messages (default 'daskgmm').
    format : str
        The marker's ``format``; a marker of another format is refused.
    metadata : Metadata
    versions : str
        Directory of the versions, relative to ``url``.
    depth : int
        Path components of a version name (``run/attempt`` is 2).
    storage_options : dict
        fsspec options (never logged or saved).
    manifest_format : str, default=None
        When given, a manifest counts only if its ``format`` is this.
    """

    def __init__(self, url, *, what, format, metadata: Metadata, versions, depth=1,
                 storage_options=None, refusal=None, writer="daskgmm", manifest_format=None):
        self.url = str(url).rstrip("/")
        self.what, self.format, self.metadata = what, format, metadata
        self.refusal = refusal or f"Refusing to use {self.url!r} as a {what}"
        self.writer = writer
        self.manifest_format = manifest_format
        self.versions_dir, self.depth = versions, depth
        self.storage_options = storage_options
        self.fs, self.root = url_to_fs(self.url, storage_options)

    def __repr__(self):
        return f"VersionedLocation({self.url!r})"

    # ------------------------------------------------------------------ marker

    def present(self) -> bool:
        """Whether the location holds our marker; False when it is absent or empty.
        Raises ``ValueError`` when it is a file or holds anything else."""
        fs, root = self.fs, self.root
        fs.invalidate_cache(root)
        if fs.isfile(root):
            raise ValueError(
                f"{self.refusal}: it is a file. Choose a new or empty directory, or one "
                f"written earlier by {self.writer}."
            )
        if not fs.isdir(root):
            return False
        foreign = self.metadata.foreign(fs, root)
        if foreign:
            raise ValueError(f"{self.refusal}: {foreign}")
        marker = self.metadata.read_marker(fs, root)
        if marker is None:
            entries = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
            if not entries:
                return False
            shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "")
            raise ValueError(
                f"{self.refusal}: it holds {shown}, not written by {self.writer} (no "
                f"{self.metadata.marker_name}). Choose a new or empty location, or one "
                f"written earlier by {self.writer}."
            )
        if marker.get("format") != self.format:
            raise ValueError(
                f"{self.refusal}: its {self.metadata.marker_name} is not a {self.what} "
                f"marker (format {marker.get('format')!r}, expected {self.format!r})."
            )
        return True

    def marker(self) -> dict | None:
        return self.metadata.read_marker(self.fs, self.root)

    def create(self, marker: dict):
        """Mark a new (or empty) location."""
        with naming_write_errors(self.url):
            self.fs.makedirs(self.root, exist_ok=True)
            self.metadata.write_marker(self.fs, self.root, {"format": self.format, **marker})

    # ---------------------------------------------------------------- versions

    def version_path(self, version: str) -> str:
        return f"{self.root}/{self.versions_dir}/{version}"

    def version_url(self, version: str) -> str:
        return join(self.url, f"{self.versions_dir}/{version}")

    def relative(self, version: str) -> str:
        """The version's path relative to the location (what pointers name)."""
        return f"{self.versions_dir}/{version}"

    def manifest(self, version: str) -> dict | None:
        """The manifest of a complete version, or None."""
        manifest = self.metadata.read_manifest(self.fs, self.root, self.version_path(version))
        if manifest is None or (self.manifest_format is not None
                                and manifest.get("format") != self.manifest_format):
            return None
        return manifest

    def complete(self, version: str, manifest: dict):
        """Write the version's manifest: from now on it is complete."""
        with naming_write_errors(self.version_url(version)):
            self.metadata.write_manifest(self.fs, self.root, self.version_path(version),
                                         manifest)

    def entries(self, prefix: str = "") -> list[str]:
        """Version names (complete or not) under ``prefix``, sorted by name."""
        base = f"{self.root}/{self.versions_dir}"
        start = f"{base}/{prefix}".rstrip("/")
        level = self.depth - (len(prefix.strip("/").split("/")) if prefix else 0)
        names = [start]
        for _ in range(level):
            found = []
            for path in names:
                self.fs.invalidate_cache(path)
                if not self.fs.isdir(path):
                    continue
                found += [e["name"].rstrip("/") for e in self.fs.ls(path, detail=True)
                          if e["type"] == "directory"]
            names = found
        return sorted(p[len(base) + 1:] for p in names)

    def versions(self, valid: Callable | None = None) -> list[tuple[str, dict]]:
        """Complete versions ``(name, manifest)`` (and with ``valid(name)``), by name; a
        version whose manifest is damaged is left out with a warning."""
        out = []
        for version in self.entries():
            if valid is not None and not valid(version):
                continue
            try:
                manifest = self.manifest(version)
            except ValueError as exc:
                logger.warning("%s version %s left out: %s", self.what, version, exc)
                continue
            if manifest is not None:
                out.append((version, manifest))
        return out

    def remove(self, version: str) -> bool:
        """Delete a version; False when that failed (best effort: a failure is logged,
        not raised, so that a cleanup never hides the error that caused it)."""
        path = self.version_path(version)
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except Exception:  # noqa: BLE001 - cleanup must not hide the original error
            logger.warning("could not remove %s", path, exc_info=True)
            return False
        return True

    # ----------------------------------------------------------------- pointer

    def pointer(self) -> dict | None:
        """What the pointer holds (the current version's manifest), or None."""
        self.fs.invalidate_cache(self.root)
        return self.metadata.read_pointer(self.fs, self.root)

    def point_to(self, manifest: dict):
        """Make the version of ``manifest`` current (one atomic write)."""
        with naming_write_errors(self.url):
            self.metadata.write_pointer(self.fs, self.root, manifest)

    # --------------------------------------------------------------- retention

    def prune(self, keep: int, current: str | None, *, group: Callable = lambda v: v,
              order: Callable = lambda version, manifest: version,
              valid: Callable | None = None) -> list[str]:
        """Delete the complete versions of all but the ``keep`` newest groups (by
        ``order(version, manifest)``); ``current`` (a version name) is always kept, and
        so are versions never completed. Returns the deleted versions, oldest first."""
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise ValueError(f"keep must be an int >= 1; got {keep!r}.")
        complete = sorted(self.versions(valid), key=lambda vm: order(*vm), reverse=True)
        kept, deleted = set(), []
        for version, _ in complete:
            g = group(version)
            if version == current or (len(kept) < keep and g not in kept):
                kept.add(g)
            elif self.remove(version):
                deleted.insert(0, version)
        if self.depth > 1:  # drop parents left without any version
            for parent in {v.rsplit("/", 1)[0] for v in deleted}:
                if not self.entries(parent):
                    self.remove(parent)
        return deleted
