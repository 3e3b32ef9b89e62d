"""Inputs: numpy arrays, dask arrays, Zarr arrays and Parquet datasets as one row-chunked array.

Every input becomes a :class:`Dataset`: a 2-D float64 dask array chunked by rows only
(one chunk across the columns), with known chunk sizes, plus what error messages need to
say where a row came from.

Only metadata is read on the client (shapes, chunk sizes, Parquet footers); the data are
read inside the tasks, which open their file themselves, so graphs run on a distributed
cluster.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import numbers
import os
import re
import stat
import sys
import warnings
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from dask.base import tokenize

from . import kernels
from ._storage import expand, redact_url, url_to_fs

logger = logging.getLogger(__name__)

# "auto" chunking (see chunk_budget): row chunks of at most this many bytes of float64,
# less when the workers' memory asks for it ...
_TARGET_CHUNK_BYTES = 32 * 2**20
# ... and existing row chunks smaller than this (median) are merged up to the target.
_TINY_CHUNK_BYTES = 4 * 2**20
# What a worker process holds before any chunk: the interpreter, distributed, numpy,
# zarr, pyarrow and daskgmm's passes (measured: 130 MiB at rest after a Zarr fit, 190
# MiB after a Parquet one, Linux, Python 3.11).
_WORKER_FIXED_BYTES = 192 * 2**20
# ... and reading or writing Parquet adds pyarrow's libraries and its allocator's pages
# (measured: a worker peaks some 100 MiB higher on Parquet than on Zarr of the same rows).
_PARQUET_EXTRA_BYTES = 96 * 2**20
# A task holds about this many chunk-sized buffers at its peak (measured: 4x for a Zarr
# chunk, 4.5x for a Parquet piece: what the reader decodes, the float64 block, copies).
_TASK_COPIES = 5
_PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
MISSING_CHUNKS = ("raise", "fill")


class DamagedSourceError(ValueError):
    """Stored data that cannot be read back: a Parquet file or a Zarr chunk that does
    not decode (truncated, corrupted, not what its metadata says)."""


class MissingChunksError(ValueError):
    """Chunks of a Zarr array that its metadata promises are not in the store."""


class SourceChangedError(ValueError):
    """A source's files changed while a job was using them."""


@dataclass
class Dataset:
    """A row-chunked 2-D dask array and what is known about where it came from.

    Attributes
    ----------
    array : dask.array.Array of shape (n_samples, n_features), float64 or float32
        Chunked by rows only; chunk sizes are known. float32 when the input is float32
        throughout (:func:`daskgmm.kernels.data_dtype`), float64 otherwise.
    feature_names : list of str or None
        Column names (Parquet columns), else None.
    description : str
        Where the data came from, for messages: "numpy array", "dask array",
        "Zarr array 's3://bucket/x.zarr' (array 'X')", "Parquet dataset 'data/'".
    chunk_labels : list of str
        Per row chunk, a human label of its origin used in error messages, e.g.
        "chunk 3" or "file 'part.2.parquet'".
    lazy : bool
        True when the user passed a lazy (dask/Zarr/Parquet) input: outputs are lazy too.
    origin : Origin or None
        For Zarr and Parquet paths, where the rows live (used to write results back).
    weights : dask.array.Array of shape (n_samples,), float64, or None
        The rows' sample weights, chunked exactly like the rows (see
        :func:`with_weights`); None: every row weighs 1.
    nan_policy : 'raise', 'omit' or 'marginalize'
        What passes over these rows do with rows holding NaN (the estimator's
        ``nan_policy``; see :data:`daskgmm.kernels.NAN_POLICIES`).
    rows : RowReader or None
        For Zarr and Parquet paths, how a pass reads any rows of the array itself
        (:class:`RowReader`), so that it can read the next chunk while it computes the
        current one; None for other inputs.
    """

    array: da.Array
    feature_names: list[str] | None = None
    description: str = "numpy array"
    chunk_labels: list[str] = field(default_factory=list)
    lazy: bool = False
    origin: Origin | None = None
    weights: da.Array | None = None
    nan_policy: str = "raise"
    rows: RowReader | None = None

    @property
    def n_samples(self) -> int:
        return int(self.array.shape[0])

    @property
    def dtype(self) -> np.dtype:
        """The rows' dtype, float64 or float32: that of the fitted attributes too."""
        return self.array.dtype

    @property
    def n_features(self) -> int:
        return int(self.array.shape[1])

    @property
    def row_offsets(self) -> np.ndarray:
        """Start row of each chunk, plus the total at the end."""
        return np.concatenate([[0], np.cumsum(self.array.chunks[0])]).astype(np.int64)

    def chunk_label(self, i: int) -> str:
        return self.chunk_labels[i] if self.chunk_labels else f"chunk {i}"


@dataclass(frozen=True)
class RowReader:
    """Reads rows of a Zarr or Parquet source, as the tasks of its dask array do.

    ``features[lo:hi]`` gives rows ``lo`` to ``hi - 1`` as float64 (a picklable
    array-like: :class:`_ZarrRows` or :class:`_ParquetRows`, which name the stored chunk
    or file at fault when a read fails); ``weights`` the sample weights' column
    likewise, or None. ``row_chunks``: the row chunks of the array they were made for:
    a pass uses them only on an array chunked so (:meth:`matches`). ``dtype``: the
    rows' dtype in that array.
    """

    features: object
    row_chunks: tuple
    weights: object = None
    dtype: str = "<f8"  # the rows' dtype in the array (float64, or float32 kept)

    def matches(self, dataset: Dataset) -> bool:
        """Whether these readers read ``dataset``'s chunks (and its weights)."""
        return (tuple(dataset.array.chunks[0]) == self.row_chunks
                and dataset.array.dtype.str == self.dtype
                and (dataset.weights is None) == (self.weights is None))

    def read(self, start: int, stop: int):
        """``(rows, weights)`` of rows ``start`` to ``stop - 1`` (weights None)."""
        n_features = int(self.features.shape[1])
        rows = np.asarray(self.features[start:stop, 0:n_features], dtype=self.dtype)
        weights = None if self.weights is None else np.asarray(
            self.weights[start:stop, 0:1], dtype=np.float64)[:, 0]
        return rows, weights


@dataclass
class Origin:
    """Where a Zarr or Parquet dataset lives.

    Attributes
    ----------
    kind : 'zarr' or 'parquet'
    url : str
        The path or URL as given.
    fs : fsspec filesystem, root : str
        The filesystem and the path of ``url`` on it.
    group : bool
        Zarr: whether ``url`` is a group (else an array).
    array : str
        Zarr: path of the array inside the group ("" for an array).
    files : list of (path, relative path, n_rows)
        Parquet: the non-empty files, in row order.
    versions : list
        Parquet: per file, its size and modification time or ETag as listed.
    schemas : list of pyarrow.Schema
        Parquet: per file, its schema (read from its footer).
    weight_column : str or None
        Parquet: the column the rows' sample weights are read from, if any.
    """

    kind: str
    url: str
    fs: object
    root: str
    group: bool = False
    array: str = ""
    files: list = field(default_factory=list)
    versions: list = field(default_factory=list)
    schemas: list = field(default_factory=list)
    weight_column: str | None = None

    def listing(self) -> dict[str, str]:
        """Every object of the data as listed now (no cache): its name relative to the
        source and its size with its ETag or modification time."""
        if self.kind == "parquet":
            self.fs.invalidate_cache(self.root)
            if self.fs.isfile(self.root):
                return {os.path.basename(self.root): _version_text(self.fs.info(self.root))}
            return {rel: _version_text(info) for _, rel, info in _parquet_files(self.fs,
                                                                                self.root)}
        root = f"{self.root}/{self.array}" if self.array else self.root
        self.fs.invalidate_cache(root)
        return {path[len(root) + 1:]: _version_text(info)
                for path, info in self.fs.find(root, detail=True).items()}

    def data_version(self) -> list:
        """What changes when the data change: Parquet files' sizes and times or ETags,
        the Zarr array's objects (metadata and chunks) with theirs."""
        if self.kind == "parquet":
            return [[r, n] for _, r, n in self.files] + list(self.versions)
        root = f"{self.root}/{self.array}" if self.array else self.root
        self.fs.invalidate_cache(root)
        listing = self.fs.find(root, detail=True)
        keep = ("size", "mtime", "ETag", "LastModified", "created")
        return sorted(
            [path[len(root):], [str(info.get(k)) for k in keep if k in info]]
            for path, info in listing.items()
        )


def _version_text(info) -> str:
    """A listed object's size and ETag (object stores) or modification time."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"{info.get('size')} bytes, ETag {str(etag).strip(chr(34))}"
    when = info.get("mtime") or info.get("LastModified") or info.get("created")
    if isinstance(when, (int, float)):
        from datetime import UTC, datetime

        when = datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")
    return f"{info.get('size')} bytes, modified {when}"


@dataclass(frozen=True)
class SourceFingerprint:
    """What a Zarr or Parquet source held when a job started: every file (Parquet) or
    stored object of the array (Zarr) with its size and ETag or modification time.
    :meth:`check` raises :class:`SourceChangedError` naming what differs now.

    Take it with :func:`source_fingerprint` before the first pass, and pass it to
    :func:`daskgmm.write_scores` (``fingerprint=``), which checks it before its pass and
    again before the new scores become current.
    """

    description: str
    entries: dict
    taken_at: str

    def changes(self, origin: Origin) -> list[str]:
        """What differs between this fingerprint and ``origin`` as listed now."""
        now = origin.listing()
        what = "file" if origin.kind == "parquet" else "object"
        out = []
        for name in sorted(self.entries.keys() | now.keys()):
            before, after = self.entries.get(name), now.get(name)
            if before == after:
                continue
            if before is None:
                out.append(f"{what} {name!r} was added ({after})")
            elif after is None:
                out.append(f"{what} {name!r} was removed (it was {before})")
            else:
                out.append(f"{what} {name!r} was {before}, now {after}")
        return out

    def check(self, origin: Origin, *, when: str):
        """Raise :class:`SourceChangedError` when ``origin`` differs; ``when`` says what
        the check guards (for the message)."""
        changes = self.changes(origin)
        if not changes:
            return
        shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more changes"
                                           if len(changes) > 5 else "")
        raise SourceChangedError(
            f"The {self.description} changed since the job started (fingerprint taken at "
            f"{self.taken_at}): {shown}. {when} Run the job again once the source is "
            "complete and no longer being written."
        )


def source_fingerprint(source, *, columns=None, array_name=None, storage_options=None,
                       missing_chunks="raise", weight_column=None) -> SourceFingerprint:
    """The :class:`SourceFingerprint` of a Zarr or Parquet path or URL (or a
    :class:`Dataset` read from one): one listing, no data read."""
    from datetime import UTC, datetime

    dataset = as_dataset(source, columns=columns, array_name=array_name,
                         storage_options=storage_options, missing_chunks=missing_chunks,
                         weight_column=weight_column)
    if dataset.origin is None:
        raise ValueError(
            f"A {dataset.description} has no files to fingerprint; only Zarr and Parquet "
            "paths or URLs have one."
        )
    return SourceFingerprint(dataset.description, dataset.origin.listing(),
                             datetime.now(UTC).isoformat(timespec="seconds"))


def as_dataset(
    X,
    *,
    columns=None,
    array_name=None,
    storage_options=None,
    chunk_rows="auto",
    feature_names=None,
    missing_chunks="raise",
    weight_column=None,
) -> Dataset:
    """``X`` as a :class:`Dataset`: a 2-D float64 dask array chunked by rows only, or
    float32 for float32 input (as scikit-learn keeps it).

    Nothing is computed on the data: only shapes, chunk sizes and Parquet footers are
    read on the client. Values are cast lazily, chunk by chunk: float32 input (a numpy,
    dask or Zarr array of dtype float32, Parquet columns that are all float32) stays
    float32; everything else (integers, booleans, float16, mixed float32 and float64
    columns) becomes float64 (:func:`daskgmm.kernels.data_dtype`).

    Parameters
    ----------
    X : array-like, dask.array.Array, zarr.Array, zarr.Group, Dataset, str or os.PathLike
        The data, of shape (n_samples, n_features):

        - array-like (numpy array, list, pandas DataFrame): held in memory
          (``lazy=False``); a DataFrame gives its column names as ``feature_names``.
        - dask array: chunk sizes must be known.
        - Zarr array or group object.
        - path or fsspec URL (``"data/x.zarr"``, ``"file:///..."``, ``"s3://bucket/pq/"``)
          of a Zarr array or group (a directory holding ``zarr.json``, ``.zarray`` or
          ``.zgroup``), a Parquet file, or a directory (prefix) of Parquet files.
        - a :class:`Dataset`: used as is (its chunks too, whatever ``chunk_rows``).
    columns : list of str, default=None
        Parquet only: the columns to read, in this order. Default: every numeric
        (integer, floating-point, decimal, boolean) column of the first file, in schema
        order. Ignored for other inputs.
    array_name : str, default=None
        Zarr group only: path of the array inside the group. Default: the group's only
        2-D array. Ignored for other inputs.
    storage_options : dict, default=None
        Passed to fsspec (``fsspec.filesystem(protocol, **storage_options)``) and to
        Zarr for URLs, e.g. ``{"key": ..., "secret": ...,
        "client_kwargs": {"endpoint_url": ...}}`` for S3.
    chunk_rows : int, 'auto' or None, default='auto'
        Rows per chunk. An int: exactly that many (the last chunk may be shorter).
        'auto': chunks of the size :func:`chunk_budget` picks from the workers' memory
        (32 MiB of float64 at most) for in-memory input; the input's own chunks for dask
        and Zarr input, with adjacent chunks merged up to that size when they are small
        (median under 4 MiB) and a Zarr shard read by its inner chunks; for Parquet,
        runs of whole row groups up to that size (see Notes).
        None: the input's own row chunks (as 'auto' for in-memory and Parquet input).
        A chunk larger than the workers can hold (by the rule of :class:`ChunkBudget`)
        gives a :class:`ChunkMemoryWarning` that says which chunks and what to do.
    feature_names : list of str, default=None
        Column names, overriding those of the input.
    missing_chunks : {'raise', 'fill'}, default='raise'
        Zarr only: what to do when chunks of the array are not in the store. 'raise':
        a :class:`MissingChunksError` naming the array and the chunks (Zarr would read
        them as the fill value, silently). 'fill': read them as the array's fill value,
        for arrays written with ``write_empty_chunks=False`` on purpose. The stored
        chunks are listed once, on the client; a dask array built by ``da.from_zarr`` is
        not checked (pass the path or the Zarr array instead).
    weight_column : str, default=None
        Parquet only: a numeric column holding each row's sample weight (see
        :func:`with_weights`), read in the same pieces as the features into
        ``Dataset.weights`` and never a feature (left out of the default columns; an
        error in ``columns``). Other inputs take weights as arrays (``sample_weight=``).

    Returns
    -------
    Dataset

    Notes
    -----
    Parquet: files are the ``*.parquet`` (``.parq``, ``.pq``) files under the directory
    or prefix, found recursively (Hive partition directories are walked, partition keys
    are not read as columns); names starting with ``_`` or ``.`` are skipped. Rows are
    in lexicographic order of the file paths (``part.10`` sorts before ``part.2``: pad
    numbers with zeros to keep the writing order). Each file is one chunk, except a
    file whose selected columns exceed the chunk size as float64, which is split into
    runs of consecutive row groups (a row group is never split). Every file must hold
    the selected columns with a numeric type (integer widths and float precisions may
    differ between files); nulls become NaN. Empty files are skipped.
    """
    _check_chunk_rows(chunk_rows)
    if missing_chunks not in MISSING_CHUNKS:
        raise ValueError(f"missing_chunks must be 'raise' or 'fill', got {missing_chunks!r}.")
    if weight_column is not None and not isinstance(weight_column, str):
        raise ValueError(f"weight_column must be a column name (str) or None; got "
                         f"{weight_column!r}.")
    if isinstance(X, Dataset):
        dataset = _from_dataset(X)
    elif isinstance(X, (str, os.PathLike)):
        dataset = _from_path(X, columns, array_name, storage_options, chunk_rows,
                             missing_chunks, weight_column)
    elif isinstance(X, da.Array):
        dataset = _from_dask(X, chunk_rows)
    elif isinstance(X, zarr.Array):
        dataset = _from_zarr_array(X, chunk_rows, _zarr_description(X),
                                   missing_chunks=missing_chunks)
    elif isinstance(X, zarr.Group):
        shown = str(X.store_path)
        z, name = _array_in_group(X, array_name, shown)
        dataset = _from_zarr_array(z, chunk_rows, f"Zarr array {shown!r} (array {name!r})",
                                   missing_chunks=missing_chunks)
    else:
        dataset = _from_memory(X, chunk_rows)
    if weight_column is not None and (
            dataset.origin is None or dataset.origin.weight_column != weight_column):
        raise ValueError(
            f"weight_column={weight_column!r} names a column of a Parquet source, but X "
            f"is a {dataset.description}. Pass the weights as an array instead: "
            "fit(X, sample_weight=w)."
        )
    if feature_names is not None:
        dataset.feature_names = _checked_feature_names(feature_names, dataset)
    return dataset


###############################################################################
# Sample weights


def bad_weight_error(description, label, start, stop, row, value):
    """The error for a sample weight that is negative, NaN or infinite at global ``row``,
    found in chunk ``label`` (rows ``start`` to ``stop - 1``) of the data ``description``."""
    return ValueError(
        f"sample_weight holds {value!r} at row {row} ({label} of {description}, rows "
        f"{start} to {stop - 1}): sample weights must be finite and >= 0. Fix or drop "
        "that row's weight; a weight of 0 leaves a row out of the fit, e.g. "
        "w = np.where(np.isfinite(w) & (w > 0), w, 0.0) (for dask, da.where)."
    )


def all_zero_weights_error(description):
    """The error for sample weights that sum to zero: no row counts."""
    return ValueError(
        f"Every sample weight of the {description} is zero (their total is 0): no row "
        "counts, so there is nothing to fit or score. Sample weights must contain at "
        "least one non-zero number: give some rows a positive weight."
    )


def with_weights(dataset: Dataset, sample_weight) -> Dataset:
    """``dataset`` with the sample weights ``sample_weight`` (one per row), or as is for
    None.

    ``sample_weight``: a numpy array (or list) or a dask array of shape (n_samples,).
    A dask array is rechunked to the rows' chunks, lazily; its values are checked by the
    passes that read them (a negative, NaN or infinite weight is an error naming its
    chunk and row). In-memory weights are checked here, and so is their total (not 0).
    """
    if sample_weight is None:
        return dataset
    if dataset.weights is not None:
        raise ValueError(
            f"The {dataset.description} already has sample weights (its weight column); "
            "sample_weight was given too. Give one: drop sample_weight, or weight_column."
        )
    n = dataset.n_samples
    rows = dataset.array.chunks[0]
    if isinstance(sample_weight, da.Array):
        if any(np.isnan(c) for axis in sample_weight.chunks for c in axis):
            raise ValueError(
                f"sample_weight is a dask array of unknown chunk sizes (chunks "
                f"{sample_weight.chunks}): its weights cannot be aligned with the rows of "
                f"the {dataset.description}. Call sample_weight.compute_chunk_sizes() first."
            )
        _check_weight_shape(sample_weight.shape, n, dataset.description)
        _check_numeric(sample_weight.dtype, "sample_weight dask array",
                       fix="sample_weight.astype(np.float64)")
        weights = sample_weight.astype(np.float64)
        if weights.chunks[0] != rows:
            weights = weights.rechunk((rows,))
    else:
        try:
            w = np.asarray(sample_weight)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"sample_weight must be a 1-D array of numbers, one per row; could not "
                f"convert {type(sample_weight).__name__}: {exc}."
            ) from None
        _check_weight_shape(w.shape, n, dataset.description)
        _check_numeric(w.dtype, "sample_weight array", fix="sample_weight.astype(np.float64)")
        w = w.astype(np.float64)
        check_weights(dataset, w)
        weights = da.from_array(w, chunks=(rows,))
    return dataclasses.replace(dataset, chunk_labels=list(dataset.chunk_labels),
                               weights=weights)


def check_weights(dataset: Dataset, weights: np.ndarray):
    """Check all the sample weights of ``dataset``, held in memory (float64): each
    finite and >= 0 (else an error naming its chunk and row), and not all 0."""
    bad = kernels.find_bad_weight(weights)
    if bad is not None:
        offsets = dataset.row_offsets
        chunk = int(np.searchsorted(offsets, bad, side="right")) - 1
        raise bad_weight_error(dataset.description, dataset.chunk_label(chunk),
                               int(offsets[chunk]), int(offsets[chunk + 1]), bad,
                               float(weights[bad]))
    if not weights.sum() > 0:
        raise all_zero_weights_error(dataset.description)


def _check_weight_shape(shape, n_samples, description):
    if len(shape) != 1 or shape[0] != n_samples:
        raise ValueError(
            f"sample_weight has shape {tuple(shape)} but the {description} has "
            f"{n_samples} rows: give one weight per row, sample_weight of shape "
            f"({n_samples},) in the order of the rows"
            + (" (for a column vector: sample_weight.ravel())." if len(shape) == 2
               and shape[1] == 1 else ".")
        )


###############################################################################
# Checks shared by every kind of input


def _check_chunk_rows(chunk_rows):
    if chunk_rows is None or (isinstance(chunk_rows, str) and chunk_rows == "auto"):
        return
    if (
        isinstance(chunk_rows, numbers.Integral)
        and not isinstance(chunk_rows, bool)
        and chunk_rows >= 1
    ):
        return
    raise ValueError(
        "chunk_rows must be an int in the range [1, inf), 'auto' or None. "
        f"Got {chunk_rows!r} instead."
    )


def _check_2d(shape, description, reshape_hint="X"):
    if len(shape) == 2:
        return
    if len(shape) == 1:
        raise ValueError(
            f"Expected a 2-D array of shape (n_samples, n_features), got the 1-D "
            f"{description} of shape {shape}. Reshape your data: "
            f"{reshape_hint}.reshape(-1, 1) if it holds a single feature, or "
            f"{reshape_hint}.reshape(1, -1) if it is a single sample."
        )
    raise ValueError(
        f"Expected a 2-D array of shape (n_samples, n_features), got the {len(shape)}-D "
        f"{description} of shape {shape}. Reshape it to 2-D, e.g. "
        f"{reshape_hint}.reshape(-1, {reshape_hint}.shape[-1]) for one row per last-axis "
        "vector."
    )


def _check_numeric(dtype, description, fix="X.astype(np.float64)"):
    dtype = np.dtype(dtype)
    if dtype.kind in "biuf":
        return
    what = "complex" if dtype.kind == "c" else "non-numeric"
    raise ValueError(
        f"The {description} has {what} dtype {dtype}; Gaussian mixtures need real numbers "
        f"(integer, floating-point or boolean). Convert the data, e.g. {fix} if the values "
        "are numbers stored as text or objects"
        + (", or take the real part: np.real(X)." if dtype.kind == "c" else ".")
    )


def _check_not_empty(shape, description):
    n_samples, n_features = shape
    if n_samples == 0 or n_features == 0:
        what = "rows" if n_samples == 0 else "columns"
        raise ValueError(
            f"The {description} has 0 {what} (shape {tuple(shape)}): there is nothing to fit "
            "or predict. Check that the source holds data"
            + (" and that the selected columns exist." if n_features == 0 else ".")
        )


def _checked_feature_names(feature_names, dataset):
    if isinstance(feature_names, str):
        raise ValueError(
            f"feature_names must be a list of str, got the string {feature_names!r}. "
            f"Pass a list, e.g. feature_names=[{feature_names!r}]."
        )
    names = [str(name) for name in feature_names]
    if len(names) != dataset.n_features:
        raise ValueError(
            f"feature_names has {len(names)} names but the {dataset.description} has "
            f"{dataset.n_features} columns (shape {dataset.array.shape}). Pass one name "
            "per column."
        )
    return names


###############################################################################
# Row chunks


def _auto_rows(n_samples, n_features, target_bytes):
    """Rows in about ``target_bytes`` of float64, between 1 and n_samples."""
    return int(min(max(1, target_bytes // (8 * max(n_features, 1))), n_samples))


def _merged_row_chunks(chunks, n_features, target_bytes):
    """Adjacent row chunks merged up to about ``target_bytes`` when they are small, else
    unchanged."""
    row_bytes = 8 * max(n_features, 1)
    if np.median(chunks) * row_bytes >= min(_TINY_CHUNK_BYTES, target_bytes):
        return tuple(chunks)
    target = _auto_rows(sum(chunks), n_features, target_bytes)
    merged, run = [], 0
    for rows in chunks:
        if run and run + rows > target:
            merged.append(run)
            run = 0
        run += rows
    if run or not merged:
        merged.append(run)
    return tuple(merged)


def _index_labels(array):
    return [f"chunk {i}" for i in range(len(array.chunks[0]))]


def _span_labels(old_chunks, old_labels, new_chunks):
    """Labels of new row chunks in terms of the old chunks (files) they cover."""
    old = np.concatenate([[0], np.cumsum(old_chunks)])
    new = np.concatenate([[0], np.cumsum(new_chunks)])
    labels = []
    for start, stop in zip(new[:-1], new[1:], strict=True):
        i = int(np.searchsorted(old, start, side="right")) - 1
        j = int(np.searchsorted(old, max(stop - 1, start), side="right")) - 1
        i, j = min(i, len(old_labels) - 1), min(j, len(old_labels) - 1)
        first, last = int(start - old[i]), int(stop - 1 - old[j])
        if i != j:
            labels.append(
                f"{old_labels[i]} (from its row {first}) to {old_labels[j]} (to its row {last})"
            )
        elif start == old[i] and stop == old[i + 1]:
            labels.append(old_labels[i])
        else:
            labels.append(f"{old_labels[i]} (its rows {first} to {last})")
    return labels


def _from_dataset(dataset):
    """A Dataset as is, with its array brought to float64 (or float32) and one column
    chunk if needed."""
    array = dataset.array
    if len(array.chunks[1]) > 1:
        array = array.rechunk({1: -1})
    if array.dtype != kernels.data_dtype(array.dtype):
        array = array.astype(kernels.data_dtype(array.dtype))
    if array is dataset.array:
        return dataset
    return dataclasses.replace(dataset, array=array, chunk_labels=list(dataset.chunk_labels))


###############################################################################
# Chunk sizes from the workers' memory


class ChunkMemoryWarning(UserWarning):
    """A chunk of the input is too large for the workers' memory: a worker holding one
    per thread would pause (and its nanny may restart it)."""


@dataclass(frozen=True)
class ChunkBudget:
    """The chunk size daskgmm picks, and the largest chunk the workers can hold.

    The rule: a worker of ``memory_limit`` M and T threads pauses at ``pause`` x M
    (distributed's ``distributed.worker.memory.pause``, 0.8 by default) and holds F
    before any chunk: ``_WORKER_FIXED_BYTES`` (192 MiB), 288 MiB when it reads Parquet;
    each of its T tasks holds about ``_TASK_COPIES`` (5) chunk-sized buffers at its peak.
    So the largest chunk (as float64) is ``(pause x M - F) / (5 T)``, over the tightest
    worker; daskgmm's own chunks ("auto") are that, at most 32 MiB and at least 1 MiB.
    Without a distributed client, or when the workers have no memory limit, chunks are
    32 MiB and nothing is checked.
    """

    target_bytes: int
    largest_bytes: int | None = None  # None: no limit known
    workers: str = "no distributed client"

    def check(self, chunk_bytes: int, what: str, fix: str):
        """Warn (``ChunkMemoryWarning``) when ``chunk_bytes`` exceed what fits."""
        if self.largest_bytes is None or chunk_bytes <= self.largest_bytes:
            return
        fits = (f"chunks up to {_mib(self.largest_bytes)} fit"
                if self.largest_bytes > 0 else "no chunk fits beside what a worker holds")
        warnings.warn(
            f"{what} take {_mib(chunk_bytes)} as float64 each, too large for the "
            f"workers ({self.workers}: {fits}): a worker would pause or be restarted by "
            f"its nanny. {fix}, or give the workers more memory or fewer threads.",
            ChunkMemoryWarning, stacklevel=warning_stacklevel(),
        )


def _mib(n):
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**20:.2f} MiB"


def current_client():
    """The distributed client that ``dask.compute`` uses now, or None when it uses
    dask's own schedulers (configured so, or no client). Does not import distributed."""
    distributed = sys.modules.get("distributed")  # no client without it
    if distributed is None:
        return None
    client = getattr(dask.base.get_scheduler(), "__self__", None)
    return client if isinstance(client, distributed.Client) else None


def chunk_budget(parquet=False) -> ChunkBudget:
    """The :class:`ChunkBudget` for the workers of the current distributed client (for
    Parquet input, with pyarrow's own 96 MiB more held by each worker)."""
    client = current_client()
    if client is None:
        return ChunkBudget(_TARGET_CHUNK_BYTES)
    try:
        try:
            info = client.scheduler_info(n_workers=-1)  # all workers, not the first 5
        except TypeError:  # distributed before 2025.4 lists them all anyway
            info = client.scheduler_info()
        workers = info["workers"].values()
    except (KeyError, OSError):
        return ChunkBudget(_TARGET_CHUNK_BYTES)
    limits = [(int(w.get("memory_limit") or 0), max(int(w.get("nthreads") or 1), 1))
              for w in workers]
    pause = dask.config.get("distributed.worker.memory.pause", 0.8) or 0.95
    return budget_for(limits, parquet=parquet, pause=pause)


def budget_for(limits, *, parquet=False, pause=0.8) -> ChunkBudget:
    """The :class:`ChunkBudget` for workers of ``(memory_limit bytes, threads)``."""
    if not limits:  # an adaptive cluster before its first worker
        return ChunkBudget(_TARGET_CHUNK_BYTES, workers="no workers yet")
    if not all(m for m, _ in limits):
        return ChunkBudget(_TARGET_CHUNK_BYTES, workers="workers without a memory limit")
    fixed = _WORKER_FIXED_BYTES + (_PARQUET_EXTRA_BYTES if parquet else 0)
    largest, memory, threads = min(
        (max(0, int(pause * m) - fixed) // (_TASK_COPIES * t), m, t) for m, t in limits)
    shown = (f"{len(limits)} worker{'s' * (len(limits) > 1)}, the tightest with "
             f"memory_limit {_mib(memory)} and {threads} thread{'s' * (threads > 1)}")
    return ChunkBudget(min(_TARGET_CHUNK_BYTES, max(largest, 2**20)), largest, shown)


def warning_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called by the caller of this function
    that names the first frame outside daskgmm: where the user's code called it."""
    import inspect

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = inspect.currentframe().f_back, 1  # the frame calling warnings.warn
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


###############################################################################
# In-memory and dask input


def _from_memory(X, chunk_rows):
    names, description = None, "numpy array"
    if hasattr(X, "toarray") and hasattr(X, "nnz"):
        raise TypeError(
            f"Sparse input ({type(X).__name__}) is not supported: Gaussian mixtures need "
            "dense data. Convert it with X.toarray() if it fits in memory."
        )
    if hasattr(X, "to_dask_array"):
        raise TypeError(
            f"X is a dask DataFrame ({type(X).__name__}); pass a dask array with known "
            "chunk sizes instead: X.to_dask_array(lengths=True)."
        )
    if type(X).__module__.startswith("pandas") and hasattr(X, "columns"):
        X, names, description = _from_pandas(X)
    try:
        array = np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"Could not convert X of type {type(X).__name__} to a 2-D numeric array: "
            f"{exc}. Pass a 2-D numpy array, a dask array, a Zarr array, or a path/URL to "
            "Zarr or Parquet data."
        ) from exc
    if array.ndim == 0:
        raise TypeError(
            f"Expected a 2-D array-like, a dask array, a Zarr array, or a path/URL to Zarr "
            f"or Parquet data; got {type(X).__name__}: {X!r:.80}."
        )
    _check_2d(array.shape, description)
    _check_numeric(array.dtype, description)
    _check_not_empty(array.shape, description)
    budget = chunk_budget()
    if isinstance(chunk_rows, numbers.Integral):
        rows = int(chunk_rows)
        budget.check(min(rows, array.shape[0]) * array.shape[1] * 8,
                     f"Chunks of {rows} rows of the {description}",
                     f"Pass chunk_rows={_auto_rows(*array.shape, budget.target_bytes)} "
                     "or 'auto'")
    else:
        rows = _auto_rows(*array.shape, budget.target_bytes)
    out = da.from_array(array, chunks=(rows, array.shape[1])).astype(
        kernels.data_dtype(array.dtype))
    return Dataset(out, names, description, _index_labels(out), lazy=False)


def _from_pandas(df):
    from pandas.api.types import is_bool_dtype, is_complex_dtype, is_numeric_dtype

    names = [str(c) for c in df.columns]
    bad = [
        (str(c), str(t))
        for c, t in df.dtypes.items()
        if not (is_numeric_dtype(t) or is_bool_dtype(t)) or is_complex_dtype(t)
    ]
    if bad:
        numeric = [n for n in names if n not in {c for c, _ in bad}]
        listed = ", ".join(f"{c!r} ({t})" for c, t in bad)
        raise ValueError(
            f"The pandas DataFrame has non-numeric columns: {listed}. Gaussian mixtures "
            f"need numbers: select the numeric ones, e.g. X[{numeric!r}], or encode these "
            "columns as numbers first."
        )
    # to_numpy turns nullable (pd.NA) values into NaN instead of an object array.
    return df.to_numpy(dtype=np.float64, na_value=np.nan), names, "pandas DataFrame"


def _from_dask(X, chunk_rows):
    description = "dask array"
    _check_2d(X.shape, description)
    if any(np.isnan(c) for axis in X.chunks for c in axis):
        raise ValueError(
            f"The dask array X has unknown chunk sizes (shape {X.shape}, chunks "
            f"{X.chunks}), as after DataFrame.values or boolean indexing; its rows cannot "
            "be located without computing them. Call X.compute_chunk_sizes() or build the "
            "array with lengths=True, e.g. df.to_dask_array(lengths=True)."
        )
    _check_numeric(X.dtype, description)
    _check_not_empty(X.shape, description)
    rows = X.chunks[0]
    budget = chunk_budget()
    if isinstance(chunk_rows, numbers.Integral):
        rows = int(chunk_rows)
    elif chunk_rows == "auto":
        rows = _merged_row_chunks(rows, X.shape[1], budget.target_bytes)
    if rows != X.chunks[0] or len(X.chunks[1]) > 1:
        X = X.rechunk({0: rows, 1: -1})
    good = _auto_rows(X.shape[0], X.shape[1], budget.target_bytes)
    blocksize = _mib(good * X.shape[1] * 8).replace(" ", "")
    budget.check(max(X.chunks[0]) * X.shape[1] * 8,
                 f"The largest row chunks of the {description} ({max(X.chunks[0])} rows)",
                 f"Build it with chunks of about {good} rows where its chunks are made "
                 f"(da.from_zarr(..., chunks=({good}, -1)), dd.read_parquet(..., "
                 f"blocksize='{blocksize}')), or pass the Zarr or Parquet path itself")
    out = X.astype(kernels.data_dtype(X.dtype))
    return Dataset(out, None, description, _index_labels(out), lazy=True)


###############################################################################
# Paths and URLs: dispatch on what is stored there


def _from_path(X, columns, array_name, storage_options, chunk_rows, missing_chunks,
               weight_column=None):
    raw = os.fspath(X)
    if not isinstance(raw, str):
        raw = os.fsdecode(raw)
    shown = redact_url(raw)  # what messages and manifests show
    if storage_options is not None and not isinstance(storage_options, dict):
        raise TypeError(
            f"storage_options must be a dict or None, got {type(storage_options).__name__}: "
            f"{storage_options!r:.80}. E.g. storage_options={{'anon': True}}."
        )
    url = expand(raw)
    options = dict(storage_options or {})
    fs, root = url_to_fs(url, options)
    fs.invalidate_cache(root)  # a listing cached before the data was written is stale
    _check_readable(fs, root, shown)
    if any(fs.exists(f"{root}/{marker}") for marker in _ZARR_MARKERS):
        dataset, group, name = _from_zarr_path(url, fs, root, shown, array_name, options,
                                               chunk_rows, missing_chunks)
        dataset.origin = Origin("zarr", url, fs, root, group=group, array=name)
        return dataset
    if fs.isfile(root):
        if root.lower().endswith(_PARQUET_SUFFIXES) or _has_parquet_magic(fs, root):
            files = [(root, os.path.basename(root), fs.info(root))]
            dataset = _from_parquet(fs, files, shown, columns, chunk_rows, url, root,
                                    weight_column)
            return dataset
        raise ValueError(
            f"{shown!r} is a file but neither a Parquet file (no .parquet suffix, does not "
            "start with the Parquet magic bytes 'PAR1') nor a Zarr store. Pass a Parquet "
            "file, a directory of .parquet files, or a Zarr array or group directory."
        )
    if fs.isdir(root):
        files = _parquet_files(fs, root)
        if files:
            dataset = _from_parquet(fs, files, shown, columns, chunk_rows, url, root,
                                    weight_column)
            return dataset
        found = sorted(fs.ls(root, detail=False))[:10]
        raise ValueError(
            f"{shown!r} holds neither a Zarr array or group (no {', '.join(_ZARR_MARKERS)}) "
            f"nor Parquet files (*{', *'.join(_PARQUET_SUFFIXES)}, searched recursively). "
            f"Entries found: {[p.rsplit('/', 1)[-1] for p in found]}. Pass the path of the "
            "Zarr store or of the Parquet file(s)."
        )
    relative = "://" not in raw and not os.path.isabs(raw)
    raise FileNotFoundError(
        f"No such file or directory: {shown!r}"
        + (f" (relative to the working directory {os.getcwd()})" if relative else "")
        + f". Looked for a Zarr array or group (a directory holding "
        f"{', '.join(_ZARR_MARKERS)}), a Parquet file or a directory of *.parquet files. "
        "Check the path"
        + (", and storage_options for remote URLs." if "://" in shown else ".")
    )


def _has_parquet_magic(fs, path):
    with fs.open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def _check_readable(fs, root, shown):
    """A local path this process may not read is a PermissionError saying so (the
    existence checks that follow would report it as missing)."""
    if "file" not in _protocols(fs):
        return
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return  # reported as missing by the caller
    except PermissionError as exc:
        raise _permission_error(shown, "a directory on its path", exc) from None
    need = os.R_OK | (os.X_OK if stat.S_ISDIR(st.st_mode) else 0)
    if not os.access(root, need, effective_ids=os.access in os.supports_effective_ids):
        what = "the directory" if stat.S_ISDIR(st.st_mode) else "the file"
        raise _permission_error(shown, what, None)


def _permission_error(shown, what, exc):
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return PermissionError(
        f"Permission denied reading {shown!r}: {what} cannot be read by this process "
        f"(user {user}){f' ({exc.strerror})' if exc is not None else ''}. It exists; "
        "grant read access (and execute on directories) to that user, or run the job as "
        "a user who can read it."
    )


###############################################################################
# Zarr


def _zarr_description(z):
    source = f"Zarr array '{z.store}'"
    return source + (f" (array {z.path!r})" if z.path else "")


def _from_zarr_path(url, fs, root, shown, array_name, options, chunk_rows, missing_chunks):
    if "file" in _protocols(fs):
        node = zarr.open(store=root, mode="r")  # a local path: zarr's LocalStore
    else:
        node = zarr.open(store=url, mode="r", storage_options=options or None)
    group = isinstance(node, zarr.Group)
    name = ""
    if group:
        z, name = _array_in_group(node, array_name, shown)
        description = f"Zarr array {shown!r} (array {name!r})"
    else:
        z, description = node, f"Zarr array {shown!r}"
    hint = f"da.from_zarr({shown!r})"
    return _from_zarr_array(z, chunk_rows, description, reshape_hint=hint,
                            missing_chunks=missing_chunks), group, name


def _protocols(fs):
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _array_in_group(group, array_name, shown):
    arrays = sorted(
        (path, node)
        for path, node in group.members(max_depth=None)
        if isinstance(node, zarr.Array)
    )
    found = ", ".join(f"{p!r} {node.shape} {node.dtype}" for p, node in arrays) or "none"
    two_d = [p for p, node in arrays if node.ndim == 2]
    example = two_d[0] if two_d else (arrays[0][0] if arrays else "X")
    fix = f"as_dataset({shown!r}, array_name={example!r})"
    if array_name is not None:
        name = str(array_name).strip("/")
        node = dict(arrays).get(name)
        if node is None:
            raise ValueError(
                f"Zarr group {shown!r} has no array {array_name!r}. Arrays found: {found}. "
                f"Pass one of them, e.g. {fix}."
            )
        return node, name
    if len(two_d) == 1:
        return dict(arrays)[two_d[0]], two_d[0]
    if two_d:
        raise ValueError(
            f"Zarr group {shown!r} holds {len(two_d)} two-dimensional arrays and array_name "
            f"was not given. Arrays found: {found}. Pick one with array_name=..., e.g. {fix} "
            f"(GaussianMixture(array_name={example!r}))."
        )
    raise ValueError(
        f"Zarr group {shown!r} holds no 2-D array (arrays found: {found}). Pass the path of "
        "a 2-D Zarr array of shape (n_samples, n_features), or array_name=... naming one."
    )


def _from_zarr_array(z, chunk_rows, description, reshape_hint="X", missing_chunks="raise"):
    _check_2d(tuple(z.shape), description, reshape_hint)
    _check_numeric(z.dtype, description, fix="writing it again with dtype='float64'")
    _check_not_empty(tuple(z.shape), description)
    if missing_chunks == "raise":
        _check_no_missing_chunks(z, description)
    n_samples, n_features = (int(s) for s in z.shape)
    inner = int(z.chunks[0])
    stored = int((getattr(z, "shards", None) or z.chunks)[0])
    budget = chunk_budget()
    target = _auto_rows(n_samples, n_features, budget.target_bytes)
    if isinstance(chunk_rows, numbers.Integral):
        rows = int(chunk_rows)
    elif chunk_rows == "auto" and stored * n_features * 8 < min(_TINY_CHUNK_BYTES,
                                                                 budget.target_bytes):
        # Whole stored chunks per dask chunk, so that each task reads each chunk once.
        rows = n_samples if target >= n_samples else stored * max(1, target // stored)
    elif chunk_rows == "auto" and stored > inner and stored > target:
        # A shard is read by its inner chunks: whole inner chunks per dask chunk.
        rows = inner * max(1, target // inner)
    else:
        rows = stored
    budget.check(max(min(rows, n_samples), min(inner, n_samples)) * n_features * 8,
                 f"Chunks of {max(rows, inner)} rows of the {description}",
                 f"Write the array with chunks of about {target} rows "
                 f"(zarr.create_array(..., chunks=({target}, {n_features})))"
                 + (", or pass chunk_rows='auto'" if rows > max(inner, target) else ""))
    # Reading straight at the target chunks (no rechunk layer); one chunk across columns.
    reader = _ZarrRows(z, description)
    chunks = (min(rows, n_samples), n_features)
    name = "zarr-" + tokenize(str(z.store_path), z.shape, z.dtype.str, stored, chunks)
    out = da.from_array(reader, chunks=chunks, name=name, fancy=False,
                        meta=np.empty((0, 0), dtype=z.dtype)).astype(
                            kernels.data_dtype(z.dtype))
    return Dataset(out, None, description, _index_labels(out), lazy=True,
                   rows=RowReader(reader, tuple(out.chunks[0]), dtype=out.dtype.str))


def _storage_grid(z):
    """Rows and columns of the array's stored objects (shards, else chunks)."""
    outer = getattr(z, "shards", None) or z.chunks
    return int(outer[0]), int(outer[1])


def _stored_keys(z) -> set[str]:
    """Keys of the array's stored objects, relative to the array (one listing)."""
    from zarr.core.sync import sync

    prefix = f"{z.path}/" if z.path else ""

    async def listed():
        return {key[len(prefix):] async for key in z.store.list_prefix(prefix)}

    return sync(listed())


def _check_no_missing_chunks(z, description):
    rows, cols = _storage_grid(z)
    n_samples, n_features = (int(s) for s in z.shape)
    expected = {}
    for i in range(-(-n_samples // rows)):
        for j in range(-(-n_features // cols)):
            expected[z.metadata.encode_chunk_key((i, j))] = (i, j)
    missing = sorted(expected[k] for k in expected.keys() - _stored_keys(z))
    if not missing:
        return
    shown = ", ".join(
        f"chunk {z.metadata.encode_chunk_key(c)!r} (rows {c[0] * rows} to "
        f"{min((c[0] + 1) * rows, n_samples) - 1})" for c in missing[:5]
    ) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    raise MissingChunksError(
        f"The {description} is missing {len(missing)} of its {len(expected)} stored "
        f"chunks: {shown}. Zarr would read them as the fill value "
        f"({_plain(z.fill_value)}) and the fit would take those rows as data. Restore "
        "the chunks (re-run the job that writes the array, or copy them from a backup); if "
        "they are absent on purpose (written with write_empty_chunks=False and all fill "
        "value), pass missing_chunks='fill' (source.missing_chunks: fill in a job config)."
    )


def _one_line(exc):
    return f"{type(exc).__name__}: " + "; ".join(
        line.strip() for line in str(exc).splitlines() if line.strip())


def _plain(value):
    return value.item() if hasattr(value, "item") else value


class _ZarrRows:
    """Array-like view of a Zarr array's rows, read on ``__getitem__`` inside the task
    that needs them. A read that fails is retried one stored chunk at a time to name the
    chunk at fault: a chunk that does not decode is a :class:`DamagedSourceError`, one
    that may not be read a ``PermissionError``; other I/O errors (network) pass on, with
    a note naming the rows."""

    def __init__(self, z, description):
        self.z, self.description = z, description
        self.shape, self.dtype, self.ndim = tuple(z.shape), z.dtype, 2

    def __getitem__(self, key):
        try:
            return self.z[key]
        except Exception as exc:  # noqa: BLE001 -- located and re-raised below
            rows = key[0] if isinstance(key, tuple) else key
            located = self._locate(rows, exc)
            if located is None:
                raise
            raise located from exc

    def _locate(self, rows, exc):
        start, stop, _ = rows.indices(self.shape[0]) if isinstance(rows, slice) else (0, 0, 1)
        step, _ = _storage_grid(self.z)
        for lo in range(start - start % step, stop, step):
            hi = min(lo + step, self.shape[0])
            try:
                self.z[lo:hi]
            except Exception as chunk_exc:  # noqa: BLE001 -- this chunk is at fault
                key = self.z.metadata.encode_chunk_key((lo // step, 0))
                where = (f"stored chunk {key!r} (rows {lo} to {hi - 1}) of the "
                         f"{self.description}")
                if isinstance(chunk_exc, PermissionError):
                    return PermissionError(
                        f"Permission denied reading {where}: {chunk_exc}. Grant this "
                        "process read access to the array's files.")
                if isinstance(chunk_exc, OSError) and not isinstance(
                        chunk_exc, (FileNotFoundError, IsADirectoryError)):
                    exc.add_note(f"while reading {where}")
                    return None  # network and other I/O errors: may pass on a retry
                return DamagedSourceError(
                    f"Cannot read {where}: {_one_line(chunk_exc)}. The "
                    "chunk is damaged (it does not decode as the array's metadata says). "
                    "Restore it from a backup or rewrite the array, then run again.")
        exc.add_note(f"while reading rows {start} to {stop - 1} of the {self.description}")
        return None


###############################################################################
# Parquet


def _parquet_files(fs, root):
    """(path, path relative to root, info) of the Parquet files under root, by path."""
    files = []
    for path, info in sorted(fs.find(root, detail=True).items()):
        if not path.startswith(f"{root}/") or not path.lower().endswith(_PARQUET_SUFFIXES):
            continue  # (a key prefix can match more than the directory, e.g. "pq2/")
        relative = path[len(root) + 1 :]
        parts = relative.split("/")
        if any(part.startswith(("_", ".")) for part in parts):
            continue
        files.append((path, relative, info))
    return files


def _is_numeric_arrow(type_):
    return (
        pa.types.is_integer(type_)
        or pa.types.is_floating(type_)
        or pa.types.is_boolean(type_)
        or pa.types.is_decimal(type_)
    )


def _default_columns(schema):
    """Numeric columns in schema order, without a pandas index written as a column."""
    index = set()
    pandas_meta = schema.pandas_metadata or {}
    index.update(c for c in pandas_meta.get("index_columns", []) if isinstance(c, str))
    return [
        f.name
        for f in schema
        if _is_numeric_arrow(f.type)
        and f.name not in index
        and not re.fullmatch(r"__index_level_\d+__", f.name)
    ]


def _checked_columns(columns, schema, relative, description, weight_column=None):
    """The selected columns, checked against the first file's schema; the default
    leaves out ``weight_column``, which may not be selected."""
    numeric = [c for c in _default_columns(schema) if c != weight_column]
    if columns is not None and weight_column in [str(c) for c in columns]:
        raise ValueError(
            f"columns lists the weight column {weight_column!r} of the {description}: a "
            "row's sample weight is not a feature. Drop it from columns, e.g. "
            f"columns={numeric!r}."
        )
    if columns is None:
        if not numeric:
            found = ", ".join(f"{f.name!r} ({f.type})" for f in schema) or "none"
            raise ValueError(
                f"The {description} has no numeric column in file {relative!r} (columns: "
                f"{found}). Gaussian mixtures need numbers: write numeric columns, or pass "
                "columns=[...] naming some."
            )
        return numeric
    if isinstance(columns, str):
        raise ValueError(
            f"columns must be a list of column names, got the string {columns!r}. Pass a "
            f"list, e.g. columns=[{columns!r}]."
        )
    columns = [str(c) for c in columns]
    if not columns:
        raise ValueError(
            f"columns=[] selects no column of the {description}. Pass some names, e.g. "
            f"columns={numeric!r}, or columns=None for every numeric column."
        )
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ValueError(
            f"columns lists {duplicated} more than once; each column can be selected once. "
            f"Got columns={columns!r}."
        )
    return columns


class MissingColumnError(ValueError):
    """A requested column is not in a Parquet file of the source."""


def _check_file_columns(columns, schema, relative, description):
    numeric = _default_columns(schema)
    for name in columns:
        index = schema.get_field_index(name)
        if index < 0:
            found = ", ".join(schema.names)
            raise MissingColumnError(
                f"Column {name!r} is not in file {relative!r} of the {description} "
                f"(columns there: {found}). Pick existing numeric columns, e.g. "
                f"columns={numeric!r}, or rewrite the file with this column."
            )
        type_ = schema.field(index).type
        if not _is_numeric_arrow(type_):
            raise ValueError(
                f"Column {name!r} has Arrow type {type_} in file {relative!r} of the "
                f"{description}: only numeric (integer, floating-point, decimal, boolean) "
                f"columns can be used. Select numeric columns, e.g. columns={numeric!r}."
            )


def _pieces(n_rows, row_groups, n_columns, target_bytes):
    """Runs of consecutive row groups of at most ``target_bytes`` as float64 (or one row
    group)."""
    row_bytes = 8 * n_columns
    if n_rows * row_bytes <= target_bytes or len(row_groups) < 2:
        return [(0, len(row_groups))]
    runs, first, size = [], 0, 0
    for i, rows in enumerate(row_groups):
        if i > first and (size + rows) * row_bytes > target_bytes:
            runs.append((first, i))
            first, size = i, 0
        size += rows
    runs.append((first, len(row_groups)))
    return runs


def _describe_columns(columns):
    if len(columns) <= 8:
        return f"columns {', '.join(columns)}"
    return f"{len(columns)} columns {', '.join(columns[:4])}, ..., {columns[-1]}"


def _from_parquet(fs, files, shown, columns, chunk_rows, url, root, weight_column=None):
    description = f"Parquet dataset {shown!r}"
    metas = [_read_footer(fs, path, relative, description) for path, relative, _ in files]
    schemas = [meta.schema.to_arrow_schema() for meta in metas]
    columns = _checked_columns(columns, schemas[0], files[0][1], description, weight_column)
    read = columns if weight_column is None else [*columns, weight_column]
    for (_, relative, _), schema in zip(files, schemas, strict=True):
        _check_file_columns(read, schema, relative, description)
    description = f"{description} ({_describe_columns(columns)}" + (
        ")" if weight_column is None else f"; weight column {weight_column!r})")

    budget = chunk_budget(parquet=True)
    kept, chunks, labels, versions, kept_schemas = [], [], [], [], []
    for (path, relative, info), meta, schema in zip(files, metas, schemas, strict=True):
        if meta.num_rows == 0:
            continue
        row_groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        kept.append((path, relative, row_groups))
        versions.append(sorted((k, str(v)) for k, v in info.items()))
        kept_schemas.append(schema)
        runs = _pieces(meta.num_rows, row_groups, len(columns), budget.target_bytes)
        for first, stop in runs:
            chunks.append(sum(row_groups[first:stop]))
            if len(runs) == 1:
                labels.append(f"file {relative!r}")
            elif stop - first == 1:
                labels.append(f"file {relative!r}, row group {first}")
            else:
                labels.append(f"file {relative!r}, row groups {first} to {stop - 1}")
    n_rows = sum(chunks)
    if n_rows == 0:
        raise ValueError(
            f"The {description} has 0 rows in its {len(files)} file(s) "
            f"({', '.join(r for _, r, _ in files[:5])}{', ...' if len(files) > 5 else ''}): "
            "there is nothing to fit or predict. Check that the path points to the data."
        )

    # float32 columns throughout stay float32 (the weight column is read apart)
    dtype = np.dtype(np.float32 if all(
        schema.field(schema.get_field_index(c)).type == pa.float32()
        for schema in kept_schemas for c in columns) else np.float64)
    reader = _ParquetRows(fs, [(p, rg) for p, _, rg in kept], columns, dtype)
    if isinstance(chunk_rows, numbers.Integral):
        row_chunks = int(chunk_rows)
        largest = min(row_chunks, n_rows)
    else:
        row_chunks = tuple(chunks)
        largest = max(max(rg) for _, _, rg in kept)  # a piece is one row group at least
    target = _auto_rows(n_rows, len(columns), budget.target_bytes)
    budget.check(largest * len(columns) * 8,
                 f"Row groups of {largest} rows of the {description}" if not isinstance(
                     chunk_rows, numbers.Integral) else
                 f"Chunks of {largest} rows of the {description}",
                 f"Write the files with row groups of about {target} rows "
                 f"(pyarrow.parquet.write_table(..., row_group_size={target}))"
                 if not isinstance(chunk_rows, numbers.Integral) else
                 "Pass chunk_rows='auto'")
    # Same files (size, modification time or ETag), columns and chunks: same name.
    name = "parquet-" + tokenize(fs, [(p, rg) for p, _, rg in kept], versions, columns,
                                 row_chunks)
    array = da.from_array(
        reader, chunks=(row_chunks, (len(columns),)), name=name,
        meta=np.empty((0, 0), dtype=dtype), fancy=False,
    )
    if array.chunks[0] != tuple(chunks):
        file_rows = [sum(rg) for _, _, rg in kept]
        file_labels = [f"file {relative!r}" for _, relative, _ in kept]
        labels = _span_labels(file_rows, file_labels, array.chunks[0])
    logger.debug("%s: %d rows in %d files, %d chunks", description, n_rows, len(kept),
                 len(array.chunks[0]))
    origin = Origin("parquet", url, fs, root, files=[(p, r, sum(rg)) for p, r, rg in kept],
                    versions=versions, schemas=kept_schemas, weight_column=weight_column)
    weights = weight_reader = None
    if weight_column is not None:  # the same pieces of the same files, one column
        files_rg = [(p, rg) for p, _, rg in kept]
        weight_reader = _ParquetRows(fs, files_rg, [weight_column])
        weights = da.from_array(
            weight_reader, chunks=(array.chunks[0], (1,)),
            name="parquet-weights-" + tokenize(fs, files_rg, versions, weight_column,
                                               row_chunks),
            meta=np.empty((0, 0), dtype=np.float64), fancy=False,
        )[:, 0]
    return Dataset(array, list(columns), description, labels, lazy=True, origin=origin,
                   weights=weights,
                   rows=RowReader(reader, tuple(array.chunks[0]), weight_reader,
                                  dtype=array.dtype.str))


def _read_footer(fs, path, relative, description):
    try:
        return pq.read_metadata(path, filesystem=fs)
    except PermissionError as exc:
        raise PermissionError(
            f"Permission denied reading file {relative!r} of the {description}: {exc}. "
            "Grant this process read access to it."
        ) from None
    except pa.ArrowException as exc:
        raise DamagedSourceError(
            f"File {relative!r} of the {description} is not a readable Parquet file "
            f"({_one_line(exc)}). It is truncated, damaged or not Parquet: "
            "restore or rewrite it, or move it out of the dataset."
        ) from exc


def _check_same_row_groups(meta, row_groups, path):
    """A file read again by a task holds the row groups seen when the job planned."""
    now = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    if now != tuple(row_groups):
        raise SourceChangedError(
            f"Parquet file {path!r} changed while the job was reading it: it now holds "
            f"{meta.num_rows} rows in {meta.num_row_groups} row groups; it held "
            f"{sum(row_groups)} rows in {len(row_groups)} when the job started. Rows would "
            "be misnumbered; run the job again once the source is no longer being written."
        )


class _ParquetRows:
    """Array-like view of the rows of Parquet files, read on ``__getitem__``.

    Holds only the filesystem, the file paths and their row-group sizes (picklable);
    each slice opens the files it needs and reads the selected columns of the row
    groups it overlaps.
    """

    def __init__(self, fs, files, columns, dtype=np.float64):
        self.fs = fs
        self.files = files  # [(path, (rows per row group, ...)), ...]
        self.columns = list(columns)
        self.offsets = np.concatenate([[0], np.cumsum([sum(rg) for _, rg in files])])
        self.shape = (int(self.offsets[-1]), len(self.columns))
        self.dtype = np.dtype(dtype)  # float64, or float32 for float32 columns only
        self.ndim = 2

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        rows, cols = (key + (slice(None),))[:2]
        if not isinstance(rows, slice):
            raise TypeError(f"Parquet rows can only be sliced, got index {rows!r}.")
        start, stop, step = rows.indices(self.shape[0])
        parts = []
        for i, (path, row_groups) in enumerate(self.files):
            lo, hi = max(start, self.offsets[i]), min(stop, self.offsets[i + 1])
            if lo < hi:
                parts.append(self._read(path, row_groups, lo - self.offsets[i],
                                        hi - self.offsets[i]))
        if parts:
            out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        else:
            out = np.empty((0, self.shape[1]), dtype=self.dtype)
        return out[::step][:, cols]

    def _read(self, path, row_groups, lo, hi):
        """Rows lo:hi (within the file) of the selected columns, as ``self.dtype``: one row
        group at a time into the output, so that a read holds the output and one row
        group's decoded columns, not a whole piece twice."""
        bounds = np.concatenate([[0], np.cumsum(row_groups)])
        first = int(np.searchsorted(bounds, lo, side="right")) - 1
        last = int(np.searchsorted(bounds, hi, side="left"))
        out = np.empty((hi - lo, len(self.columns)), dtype=self.dtype)
        try:
            with pq.ParquetFile(path, filesystem=self.fs, pre_buffer=False) as f:
                _check_same_row_groups(f.metadata, row_groups, path)
                for g in range(first, last):
                    table = f.read_row_group(g, columns=self.columns, use_threads=False)
                    self._fill(out, table, int(bounds[g]), lo, hi)
                    del table
                    # Arrow's allocator keeps what a read freed for the next one (some
                    # 100 MiB per worker); give it back so the worker's memory is its chunks'
                    pa.default_memory_pool().release_unused()
        except PermissionError as exc:
            raise PermissionError(
                f"Permission denied reading Parquet file {path!r}: {exc}. Grant this "
                "process read access to it."
            ) from None
        except (OSError, pa.ArrowException) as exc:
            table = self._decoded_or_damaged(path, list(range(first, last)), exc)
            self._fill(out, table, int(bounds[first]), lo, hi)
        return out

    def _fill(self, out, table, table_start, lo, hi):
        """Copy the rows of ``table`` (file rows from ``table_start``) that fall in the
        file rows lo:hi into ``out`` (whose row 0 is file row lo)."""
        a, b = max(lo, table_start), min(hi, table_start + table.num_rows)
        if a >= b:
            return
        part = table.slice(a - table_start, b - a)
        for j, name in enumerate(self.columns):
            column = part.column(name).cast(pa.from_numpy_dtype(self.dtype), safe=False)
            out[a - lo:b - lo, j] = column.to_numpy(zero_copy_only=False)

    def _decoded_or_damaged(self, path, groups, exc):
        """After a failed read: the file's bytes read again through fsspec (an I/O
        error there is the storage's: raised as is, with a note) and decoded from
        memory; a decode that fails again means the file is damaged."""
        where = (f"row group {groups[0]}" if len(groups) == 1
                 else f"row groups {groups[0]} to {groups[-1]}")
        try:
            data = self.fs.cat_file(path)
        except OSError as io_exc:
            io_exc.add_note(f"while reading {where} of Parquet file {path!r}")
            raise
        try:
            with pq.ParquetFile(pa.BufferReader(data)) as f:
                return f.read_row_groups(groups, columns=self.columns, use_threads=False)
        except (OSError, pa.ArrowException) as decode_exc:
            raise DamagedSourceError(
                f"Cannot read {where} of Parquet file {path!r} "
                f"({_one_line(decode_exc)}). The file is damaged (a page "
                "does not decode or the file was cut short); restore or rewrite it, then "
                "run again."
            ) from exc


###############################################################################
# Persisting for a fit


def fits_in_memory(dataset: Dataset) -> bool:
    """Whether the data take at most half of the memory they would be persisted into:
    the workers' memory limits on a distributed cluster, else a quarter of this
    machine's available memory (in-memory input: never, nothing to gain)."""
    import psutil

    client = current_client()
    if client is None:
        if not dataset.lazy:
            return False  # already in this process's memory
        budget = 0.25 * psutil.virtual_memory().available
    else:
        workers = client.scheduler_info().get("workers", {}).values()
        # workers without a memory limit (0 or None) may use the host's memory
        limits = [w.get("memory_limit") or psutil.virtual_memory().total for w in workers]
        budget = 0.5 * sum(limits)
    return dataset.array.nbytes <= budget


def cached(dataset: Dataset, cache="auto") -> Dataset:
    """The dataset for a fit's passes: persisted in the cluster's memory when ``cache``
    is True, or 'auto' and :func:`fits_in_memory`; else re-read on every pass."""
    if cache is False or (cache == "auto" and not fits_in_memory(dataset)):
        return dataset
    logger.info("persisting %.1f MiB of %s for the fit",
                dataset.array.nbytes / 2**20, dataset.description)
    weights = None if dataset.weights is None else dataset.weights.persist()
    return dataclasses.replace(dataset, array=dataset.array.persist(), weights=weights)
