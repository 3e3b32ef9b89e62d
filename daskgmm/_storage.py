"""Small storage helpers shared by model files, checkpoints, score publication and the
model store."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import secrets
from contextlib import contextmanager

import fsspec
import numpy as np

# A run id names a directory or a file: letters, digits and '_.=+-', no separators.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]{0,127}")


class MaskedOptions(dict):
    """fsspec options whose representations hide every value: ``repr``, ``str`` and so
    the reprs of estimators, pipelines and notebooks that hold them show ``'***'``. The
    values themselves are untouched (``**options`` passes them on)."""

    def __repr__(self):
        return repr({k: (v if isinstance(v, MaskedOptions) else "***") for k, v in self.items()})

    __str__ = __repr__

    def _repr_html_(self):
        return repr(self)

    def __reduce__(self):  # pickles (to workers, in deep copies) as itself
        return (MaskedOptions, (dict(self),))


def masked(options):
    """``options`` (a dict of fsspec options, or None) as :class:`MaskedOptions`."""
    if options is None or isinstance(options, MaskedOptions) or not isinstance(options, dict):
        return options
    return MaskedOptions({k: masked(v) if isinstance(v, dict) else v
                          for k, v in options.items()})


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact_url(text: str) -> str:
    """``text`` with the credentials of any ``scheme://user:password@host`` replaced by
    ``***``: paths and URLs shown in messages, logs and manifests never carry them."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def expand(path) -> str:
    """A path or URL as text, with ``~`` expanded for local paths."""
    path = os.fspath(path)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    return path if "://" in path else os.path.expanduser(path)


def url_to_fs(path, storage_options=None):
    """``(fs, root)`` of a path or fsspec URL: the filesystem and the location on it,
    without a trailing slash. The one place URLs become filesystems."""
    fs, root = fsspec.core.url_to_fs(expand(path), **(storage_options or {}))
    return fs, root.rstrip("/") or root


def join(url, relative) -> str:
    """``url/relative`` for a path or URL."""
    return f"{str(url).rstrip('/')}/{relative}"


def is_local(fs) -> bool:
    return "file" in ((fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol))


def url_of(fs, path: str) -> str:
    """``path`` on ``fs`` as users write it: a plain local path, else a URL with its
    protocol (``s3://bucket/key``)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


# errno values of a write that found no room: the device is full, or the user's quota is
_FULL = {errno.ENOSPC} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())


class StorageFullError(OSError):
    """A write found its filesystem full (``ENOSPC``) or the quota used up (``EDQUOT``).

    An ``OSError`` with the original ``errno`` (``except OSError`` still catches it); its
    message names the path being written and what to do, and the error of the
    filesystem is its ``__cause__``.
    """


class StorageUnreachableError(ConnectionError):
    """A write could not reach its storage: the endpoint refused or dropped the
    connection, or timed out (an object store stopped mid-write). A ``ConnectionError``,
    so an ``OSError``; its message names the path being written, and the storage
    library's error is its ``__cause__``."""


def _unreachable(exc) -> bool:
    """A lost or refused connection or a timeout, whichever library raised it (botocore,
    aiohttp, urllib3 and the standard library name these classes alike)."""
    return any(cls.__name__.endswith(("ConnectionError", "TimeoutError"))
               for cls in type(exc).__mro__)


@contextmanager
def naming_write_errors(path):
    """Name ``path`` (a path or URL, shown without credentials) in the errors of a write:
    a full filesystem or an exhausted quota becomes a :class:`StorageFullError`, a storage
    that cannot be reached a :class:`StorageUnreachableError`, each saying what to do.

    Other errors, and one already named by an inner block, pass unchanged.
    """
    try:
        yield
    except (StorageFullError, StorageUnreachableError):
        raise
    except Exception as exc:
        shown = redact_url(str(path))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            raise StorageFullError(
                exc.errno,
                f"{os.strerror(exc.errno)} while writing {shown}: free space on the "
                f"filesystem holding {shown} or choose another location.",
            ) from exc
        if _unreachable(exc):
            raise StorageUnreachableError(redact_url(
                f"Could not reach the storage while writing {shown} ({type(exc).__name__}: "
                f"{exc}): check that its endpoint is up and reachable, then re-run."
            )) from exc
        raise


def write_atomic(fs, path: str, data: bytes):
    """Write ``data`` to ``path`` in one step, creating its parent directory: a rename on
    local disks (readers see the old or the new file, never part of one), a single PUT on
    object stores (which never expose a partial object). A full filesystem is a
    :class:`StorageFullError` naming ``path``; the old file, if any, is left as it was."""
    with naming_write_errors(url_of(fs, path)):
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        if not is_local(fs):
            fs.pipe_file(path, data)
            return
        tmp = f"{path}.tmp-{secrets.token_hex(4)}"  # local paths: fsspec gives plain ones
        try:
            with fs.open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def put_json(fs, path: str, obj):
    """A small JSON file, written with :func:`write_atomic`."""
    write_atomic(fs, path, json.dumps(obj, indent=2, sort_keys=True).encode())


def write_npy(zf, name: str, array):
    """``array`` as a float64 ``.npy`` (no pickle) member ``name`` of zip file ``zf``;
    float32 arrays stay float32."""
    array = np.asarray(array)
    buf = io.BytesIO()
    np.save(buf, array if array.dtype == np.float32 else array.astype(np.float64),
            allow_pickle=False)
    zf.writestr(name, buf.getvalue())


def finite_or_none(value):
    """``float(value)``, or None for NaN and infinities (JSON has no such numbers)."""
    value = float(value)
    return value if np.isfinite(value) else None


def jsonable(value):
    """``value`` with numpy arrays and scalars, tuples and nested ones as JSON types."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def portable_params(params: dict) -> dict:
    """Estimator parameters as they can be written: JSON values, no ``storage_options``
    (they may hold credentials), a ``RandomState`` instance as None (not portable)."""
    params = dict(params)
    params.pop("storage_options", None)
    rs = params.get("random_state")
    if rs is not None and not isinstance(rs, (int, np.integer)):
        params["random_state"] = None
    return jsonable(params)
