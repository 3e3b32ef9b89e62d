"""Passes over the data: every row chunk through a pure-numpy kernel, one ``compute``.

A pass maps each row chunk of a :class:`daskgmm.sources.Dataset` to a small result
(statistics, a log-likelihood, a rank sketch) and tree-reduces the results with an
associative ``combine`` of fan-in ``split_every`` (as ``dask.array.reduction`` does),
so the client receives one small object. Row-wise outputs (predictions, scores) are
lazy dask arrays chunked like the input (:func:`map_rows`).

A chunk holding NaN or infinity is reported with its location (chunk or file, row
range, first bad row and column); a chunk whose finite values overflow float64 too.
Under the dataset's ``nan_policy`` 'omit' or 'marginalize' the kernels take rows
holding NaN (``nan_policy=``), infinity stays an error, and under 'marginalize' so does a
row whose every feature is NaN.

When the dataset carries sample weights (:attr:`daskgmm.sources.Dataset.weights`), each
chunk's task receives its block of weights beside its block of rows (the kernels then
take ``weights=``), and checks them: a negative, NaN or infinite weight, or a block of
weights that does not match the rows, is an error naming the chunk and the row.

An EM pass times every candidate's own kernel on every chunk (:class:`TimedStats`), so
what a candidate costs is measured, not a share of the pass.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
import uuid
import weakref
from concurrent.futures import CancelledError
from dataclasses import dataclass

import dask
import numpy as np
from threadpoolctl import ThreadpoolController

from . import kernels, quantiles
from .kernels import Params, Stats
from .quantiles import RankSketch, WeightedRankSketch, combine_sketches
from .sources import Dataset, all_zero_weights_error, bad_weight_error, current_client

try:  # dask's task classes, public in recent dask (the same classes before)
    from dask.task_spec import DataNode, List, Task, TaskRef
except ImportError:  # pragma: no cover - older dask (2025.1 is the minimum)
    from dask._task_spec import DataNode, List, Task, TaskRef


def tree_keys(keys, combine, split_every, name):
    """Graph tasks reducing ``keys`` with ``combine`` in a tree of fan-in
    ``split_every``: returns ``(tasks, root key, depth)``. They are plain tasks, so a tree
    over C keys is built in O(C) (a tree of ``dask.delayed`` calls re-walks the graph its
    inputs carry at every call: O(C^2), 15 s at 12,000 chunks)."""
    if split_every is None or split_every < 2:
        raise ValueError(f"split_every must be an int >= 2, got {split_every!r}.")
    tasks, level, depth = {}, list(keys), 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for j in range(0, len(level), split_every):
            key = (f"{name}-combine-{depth}", j // split_every)
            tasks[key] = Task(key, combine, List(*(TaskRef(k) for k in level[j : j + split_every])))
            nxt.append(key)
        level = nxt
    return tasks, level[0], depth


def nonfinite_error(description, label, start, stop, row, col, feature_names=None,
                    value=np.nan, scoring=False):
    """The error for a NaN or infinity (``value``) at global ``row``, column ``col``,
    found in chunk ``label`` (rows ``start`` to ``stop - 1``) of the data
    ``description``."""
    column = f"column {col}" + (f" ({feature_names[col]!r})" if feature_names else "")
    where = (f"Input X contains NaN or infinity: {label} of {description}, rows "
             f"{start} to {stop - 1}, first at row {row}, {column} ({value}). ")
    if np.isnan(value) and scoring:
        return ValueError(
            where + "To score rows with missing values, set the model's nan_policy: "
            "est.set_params(nan_policy='marginalize') scores each row by the marginal "
            "density of its observed features (no refit), 'omit' scores them NaN; or "
            "drop or impute these rows first."
        )
    if np.isnan(value):
        return ValueError(
            where + "For missing values, fit with nan_policy='marginalize' (EM over each "
            "row's observed features) or nan_policy='omit' (rows holding NaN are left "
            "out and scored NaN); or drop or impute these rows, for example "
            "X = X[~np.isnan(X).any(axis=1)] for numpy, or for dask "
            "X = X[~da.isnan(X).any(axis=1)]; X.compute_chunk_sizes()."
        )
    return ValueError(
        where + "Gaussian mixtures need finite values, whatever nan_policy: drop or "
        "clip these rows before fitting, for example X = X[~np.isinf(X).any(axis=1)] "
        "for numpy, or for dask X = X[~da.isinf(X).any(axis=1)]; "
        "X.compute_chunk_sizes()."
    )


def all_missing_error(description, label, start, stop, row):
    """The error for a row whose every feature is NaN under nan_policy='marginalize'."""
    return ValueError(
        f"Row {row} of {description} ({label}, rows {start} to {stop - 1}) has no "
        "observed feature: every value is NaN, so it has no marginal density. Drop the "
        "rows missing every feature (X = X[~np.isnan(X).all(axis=1)]), or fit with "
        "nan_policy='omit'."
    )


def locate_nonfinite(dataset: Dataset, row, col, value=np.nan):
    """:func:`nonfinite_error` for global ``row`` of ``dataset``."""
    offsets = dataset.row_offsets
    chunk = int(np.searchsorted(offsets, row, side="right")) - 1
    return nonfinite_error(dataset.description, dataset.chunk_label(chunk),
                           int(offsets[chunk]), int(offsets[chunk + 1]), row, col,
                           dataset.feature_names, value)


class _Where:
    """What a task needs to say where its data came from (small, picklable); the chunk's
    own label travels with each task."""

    def __init__(self, dataset: Dataset, scoring=False):
        self.description = dataset.description
        self.feature_names = dataset.feature_names
        self.nan_policy = dataset.nan_policy
        self.scoring = scoring  # per-row scores of a fitted model (the error's advice)

    @property
    def policy_kw(self) -> dict:
        """What the kernels take: ``nan_policy=`` unless it is 'raise' (the default)."""
        return {} if self.nan_policy == "raise" else {"nan_policy": self.nan_policy}

    def check_finite(self, block, label, start):
        """A located error for the first value of ``block`` the policy refuses: NaN
        (under 'raise') or infinity."""
        bad = kernels.find_nonfinite(block, allow_nan=self.nan_policy != "raise")
        if bad is not None:
            row, col = bad
            raise nonfinite_error(self.description, label, start, start + block.shape[0],
                                  start + row, col, self.feature_names,
                                  float(np.asarray(block)[row, col]), self.scoring)

    def check_observed(self, block, label, start):
        """Under 'marginalize', a located error for a row missing every feature."""
        if self.nan_policy == "marginalize":
            row = kernels.find_all_missing(block)
            if row is not None:
                raise all_missing_error(self.description, label, start,
                                        start + block.shape[0], start + row)

    def check_weights(self, weights, block, label, start):
        """The block's sample weights as float64, checked: one per row of ``block``,
        finite and >= 0."""
        weights = np.asarray(weights, dtype=np.float64)
        stop = start + block.shape[0]
        if weights.shape != (block.shape[0],):
            raise ValueError(
                f"sample_weight is not aligned with the rows: {label} of "
                f"{self.description} holds rows {start} to {stop - 1} ({block.shape[0]} "
                f"rows) but its block of sample weights has shape {weights.shape}, first "
                f"unmatched row {start + min(block.shape[0], weights.size)}. Give one "
                "weight per row, in the order of the rows (the source changed while it was "
                "read if it came with the data: read it again)."
            )
        bad = kernels.find_bad_weight(weights)
        if bad is not None:
            raise bad_weight_error(self.description, label, start, stop, start + bad,
                                   float(weights[bad]))
        return weights


class _ChunkTask:
    """Applies a per-chunk function; a non-finite result becomes a located error."""

    def __init__(self, fn, where: _Where):
        self.fn, self.where = fn, where

    def __call__(self, block, args, label, start, extra=None, weights=None):
        if self.where.nan_policy != "raise":
            # an infinity in a row the kernels leave out ('omit') is still an error
            self.where.check_finite(block, label, start)
            self.where.check_observed(block, label, start)
        kw = dict(self.where.policy_kw)
        if weights is not None:
            kw["weights"] = self.where.check_weights(weights, block, label, start)
        with np.errstate(invalid="ignore", over="ignore"):
            out = self.fn(block, *args, start, **kw) if extra is None else self.fn(
                block, *args, extra, start, **kw)
        if not all(_finite(s) for s in (out if isinstance(out, list) else [out])):
            self.where.check_finite(block, label, start)
            raise ValueError(
                f"Numerical overflow in {label} of {self.where.description}, "
                f"rows {start} to {start + block.shape[0] - 1}: the values are finite but "
                f"too large for float64 arithmetic (largest magnitude "
                f"{np.nanmax(np.abs(block)):.3g}). Scale the input data, e.g. "
                "sklearn.preprocessing.StandardScaler."
            )
        return out


class _ChunkGroupTask:
    """Runs a :class:`_ChunkTask` on each chunk of a group and combines their results
    where they are (see :func:`chunk_groups`): one task, one result, per group."""

    def __init__(self, task: _ChunkTask, combine):
        self.task, self.combine = task, combine

    def __call__(self, blocks, args, labels, starts, extras, weights):
        return self.combine([
            self.task(block, args, label, start, extra, w)
            for block, label, start, extra, w in zip(
                blocks, labels, starts, extras, weights, strict=True)])


class _ReadAheadTask:
    """Runs a :class:`_ChunkTask` on each chunk of a run of chunks of a Zarr or Parquet
    source, reading them itself (:class:`daskgmm.sources.RowReader`): the next chunk is
    read (and decompressed) in a second thread while the current one is computed, so
    reading overlaps computing. It holds at most two chunks at once."""

    def __init__(self, task: _ChunkTask, combine):
        self.task, self.combine = task, combine

    def __call__(self, reader, ranges, args, labels, extras):
        from concurrent.futures import ThreadPoolExecutor

        results = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="daskgmm-read") as pool:
            ahead = pool.submit(reader.read, *ranges[0])
            for j, (start, _) in enumerate(ranges):
                block, weights = ahead.result()
                if j + 1 < len(ranges):
                    ahead = pool.submit(reader.read, *ranges[j + 1])
                results.append(self.task(block, args, labels[j], start, extras[j], weights))
                del block, weights
        return self.combine(results)


# A worker thread takes its chunks in this many groups (at least): enough to balance the
# threads' loads, few enough that a pass is a handful of tasks per thread.
GROUPS_PER_THREAD = 2
# Streamed chunks go by runs of at most this many (one task each, reading ahead): long
# enough that most reads overlap a computation, short enough to balance the threads.
READ_AHEAD_RUN = 8


def read_ahead_runs(dataset: Dataset) -> list[range] | None:
    """Runs of consecutive chunks for a pass that reads a Zarr or Parquet source itself
    (:class:`_ReadAheadTask`): at least ``GROUPS_PER_THREAD`` runs per thread of the
    cluster (of this machine without a distributed client), at most ``READ_AHEAD_RUN``
    chunks each. None (one task per chunk, reading through the array's graph): another
    input, an array chunked otherwise than its reader, or runs of one chunk."""
    rows = dataset.rows
    n_chunks = len(dataset.array.chunks[0])
    if rows is None or n_chunks < 2 or not rows.matches(dataset):
        return None
    client = current_client()
    try:
        threads = sum(client.nthreads().values()) if client is not None else 0
    except (OSError, KeyError, TypeError):
        threads = 0
    threads = threads or (os.cpu_count() or 1)
    size = min(READ_AHEAD_RUN, math.ceil(n_chunks / (GROUPS_PER_THREAD * threads)))
    if size < 2:
        return None
    return [range(i, min(i + size, n_chunks)) for i in range(0, n_chunks, size)]


def chunk_groups(array, keys) -> list[list[int]] | None:
    """Groups of the chunks ``keys`` of ``array`` (their indices) for a pass over data
    held in the cluster's memory (persisted): the chunks of each worker, up to its fair
    share by threads, in ``GROUPS_PER_THREAD`` groups per thread, each group one task
    that runs where its chunks are; chunks beyond a worker's share one task each. The
    scheduler's and the workers' cost per task (about a millisecond each) then stops
    growing with the number of chunks. None (one task per chunk): no distributed client,
    or some chunk is not in memory (streamed data: each chunk is read by its own task,
    in parallel)."""
    client = current_client()
    if client is None or len(keys) < 2:
        return None
    from distributed import futures_of

    futures = {f.key: f for f in futures_of(array)}
    if not all(key in futures for key in keys):  # not persisted: read chunk by chunk
        return None
    try:
        where = client.who_has([futures[key] for key in keys])
        threads = client.nthreads()
    except (OSError, KeyError, TypeError):  # no answer: one task per chunk, as always
        return None
    # each worker's fair share of the chunks, by its threads: a worker holding more (the
    # placement of persisted chunks is seldom even: 18 and 14 of 32) keeps its share in
    # groups, and its other chunks go one task each, which the scheduler balances
    # (moving them to idle workers) as it does for any task
    total_threads = sum(max(t, 1) for t in threads.values()) or 1
    fair = {w: math.ceil(len(keys) * max(t, 1) / total_threads) for w, t in threads.items()}
    by_worker, singles = {}, []
    for i, key in enumerate(keys):
        holders = where.get(key) or ()
        if not holders:
            return None
        # a chunk held by several workers (replicated) goes to the least loaded one, in
        # proportion to its threads
        room = [w for w in sorted(holders) if len(by_worker.get(w, ())) < fair.get(w, 0)]
        if not room:
            singles.append(i)
            continue
        worker = min(room, key=lambda w: len(by_worker.get(w, ())) / max(
            threads.get(w, 1), 1))
        by_worker.setdefault(worker, []).append(i)
    groups = [[i] for i in singles]
    for worker, members in by_worker.items():
        n_groups = min(len(members), GROUPS_PER_THREAD * max(threads.get(worker, 1), 1))
        size = math.ceil(len(members) / n_groups)
        groups += [members[j:j + size] for j in range(0, len(members), size)]
    return sorted(groups)


@functools.cache
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()  # inspects the loaded BLAS libraries: once


def one_blas_thread():
    """A context in which numpy's BLAS runs on one thread: the passes' kernels on dask's
    own threads (no oversubscription) and the M-step's small matrices (a 16 x 16
    factorisation took 7 ms with two BLAS threads on a busy machine, 0.5 ms with one)."""
    return _threadpools().limit(limits=1)


def _finite(result):
    if not math.isfinite(result.log_likelihood):
        return False
    return all(np.isfinite(getattr(result, name, 0.0)).all() for name in ("s1", "s2"))


# The optimised reads of the arrays passed over, while they exist (EM passes over the
# same array every iteration): by the ids of the array and its weights, dropped when the
# array is collected, so nothing here keeps data alive.
READS: dict = {}


def reads_of(array, weights) -> dict:
    """The optimised graph of ``array`` (with ``weights``, optimised together: they may
    share their reads), built once per array and kept for the passes that follow."""
    from dask.highlevelgraph import HighLevelGraph

    key = (id(array), None if weights is None else id(weights))
    names = (array.name, None if weights is None else weights.name)
    cached = READS.get(key)
    if cached is not None and cached[0] == names:
        return cached[1]
    if weights is None:
        graph = array.__dask_optimize__(array.__dask_graph__(), array.__dask_keys__())
    else:
        graph = array.__dask_optimize__(
            HighLevelGraph.merge(array.__dask_graph__(), weights.__dask_graph__()),
            [array.__dask_keys__(), weights.__dask_keys__()])
    READS[key] = (names, dict(graph))
    for owner in (array, weights):  # dropped when either is collected
        if owner is not None:
            weakref.finalize(owner, READS.pop, key, None)
    return READS[key][1]


def pass_graph(dataset: Dataset, fn, args, *, combine=kernels.combine_stats, split_every=8,
               per_chunk=None):
    """The graph of one pass (see :func:`data_pass`), built in time linear in the number
    of chunks: the array's optimised graph (reads fused with their casts) and one layer
    holding a task per chunk (per group of chunks for data held in the cluster's memory,
    see :func:`chunk_groups`), with ``args`` stored once, and the combine tree. Returns a
    ``Delayed`` of the combined result, or a list of the tasks' ``Delayed`` results for
    the client to combine: with ``split_every=None``, or when the groups are at most
    ``split_every``."""
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    array, weights = dataset.array, dataset.weights
    keys = array.__dask_keys__()
    blocks = [row[0] for row in keys]  # one chunk across columns
    if weights is None:
        weight_blocks = [None] * len(blocks)
    else:
        weight_keys = weights.__dask_keys__()
        if len(weight_keys) != len(blocks):
            raise ValueError(
                f"sample_weight has {len(weight_keys)} chunks but the {dataset.description} "
                f"has {len(blocks)} row chunks: the weights must be chunked like the rows "
                "(daskgmm.sources.with_weights aligns them)."
            )
        weight_blocks = [TaskRef(key) for key in weight_keys]
    offsets = dataset.row_offsets
    task = _ChunkTask(fn, _Where(dataset))
    name = f"{getattr(fn, '__name__', 'pass')}-{uuid.uuid4().hex}"  # unique per pass
    args_key = f"{name}-args"
    layer = {args_key: DataNode(args_key, args)}  # stored once, shipped once per worker
    parts = []
    groups = chunk_groups(array, blocks)
    runs = None if groups is not None else read_ahead_runs(dataset)
    reads = {} if runs is not None else reads_of(array, weights)
    if runs is not None:  # the tasks read their chunks themselves
        rows_key = f"{name}-rows"
        layer[rows_key] = DataNode(rows_key, dataset.rows)
        run_task = _ReadAheadTask(task, combine)
        for g, run in enumerate(runs):
            key = (name, g)
            layer[key] = Task(
                key, run_task, TaskRef(rows_key),
                DataNode(None, [(int(offsets[i]), int(offsets[i + 1])) for i in run]),
                TaskRef(args_key), DataNode(None, [dataset.chunk_label(i) for i in run]),
                DataNode(None, [None if per_chunk is None else per_chunk[i] for i in run]))
            parts.append(key)
    elif groups is None:
        for i, block in enumerate(blocks):
            key = (name, i)
            layer[key] = Task(key, task, TaskRef(block), TaskRef(args_key),
                              DataNode(None, dataset.chunk_label(i)), int(offsets[i]),
                              None if per_chunk is None else DataNode(None, per_chunk[i]),
                              weight_blocks[i])
            parts.append(key)
    else:
        group_task = _ChunkGroupTask(task, combine)
        for g, members in enumerate(groups):
            key = (name, g)
            layer[key] = Task(
                key, group_task, List(*(TaskRef(blocks[i]) for i in members)),
                TaskRef(args_key),
                DataNode(None, [dataset.chunk_label(i) for i in members]),
                DataNode(None, [int(offsets[i]) for i in members]),
                DataNode(None, [None if per_chunk is None else per_chunk[i]
                                for i in members]),
                List(*(weight_blocks[i] for i in members)) if weights is not None
                else DataNode(None, [None] * len(members)))
            parts.append(key)
    reads_name = f"{name}-reads"
    graph = lambda layer_: HighLevelGraph(  # noqa: E731
        {reads_name: reads, name: layer_}, {reads_name: set(), name: {reads_name}})
    if split_every is None or (
            (groups is not None or runs is not None) and len(parts) <= split_every):
        # the client combines: a tree would add a round of tasks for a few results
        full = graph(layer)
        return [Delayed(key, full, layer=name) for key in parts]
    tree, root, _ = tree_keys(parts, combine, split_every, name)
    return Delayed(root, graph({**layer, **tree}), layer=name)


def data_pass(dataset: Dataset, fn, args, *, combine=kernels.combine_stats, split_every=8,
              per_chunk=None):
    """Map ``fn(block, *args, row_start)`` over row chunks and tree-combine: one compute.

    ``per_chunk``: a list with one value per chunk, passed as ``fn(block, *args, value,
    row_start)``. With ``split_every=None`` the chunks' results are combined once on the
    client instead (for results that only concatenate, where a tree would copy them at
    every level). ``fn`` returns a result with a ``log_likelihood`` (``Stats``,
    ``RankSketch``) or a list of them; a non-finite one raises a located ``ValueError``.
    """
    built = pass_graph(dataset, fn, args, combine=combine, split_every=split_every,
                       per_chunk=per_chunk)
    with one_blas_thread(), _cluster_lost(dataset, fn):
        if isinstance(built, list):
            return combine(compute_each(built))
        (result,) = dask.compute(built)
    return result


def compute_each(parts) -> list:
    """The results of the ``Delayed`` objects ``parts``, in order: one graph, one compute.

    On a distributed cluster each result is fetched and released as soon as it is done,
    so a worker holds only the few results not fetched yet. ``dask.compute`` would hold
    them all on the workers until the last one is done: O(chunks) small objects between
    the chunks' allocations, whose fragmentation grew a worker's memory with the data
    (publication at 16x the data peaked 80 MiB above 1x).
    """
    client = current_client()
    if client is None:
        (out,) = dask.compute(list(parts))
        return list(out)
    from distributed import as_completed

    futures = client.compute(list(parts))
    index = {future.key: i for i, future in enumerate(futures)}
    out = [None] * len(futures)
    try:
        for batch in as_completed(futures).batches():
            for future, result in zip(batch, client.gather(batch), strict=True):
                out[index[future.key]] = result
                future.release()
    except BaseException:
        client.cancel(futures)
        raise
    return out


class ClusterLostError(ConnectionError):
    """A pass's tasks were cancelled because the Dask scheduler went away."""


_PASS_NAMES = {"em_chunk": "an EM iteration", "hard_assignment_chunk": "the initialisation",
               "random_resp_chunk": "the initialisation",
               "_log_likelihood_chunk": "a scoring pass", "_sketch_chunk": "a threshold pass",
               "_take": "the initialisation's sample",
               "_sample_keys_chunk": "the initialisation's weighted sample"}


@contextlib.contextmanager
def _cluster_lost(dataset, fn):
    """distributed cancels every future of a client whose scheduler connection is lost
    (``FutureCancelledError`` naming a task object); say which scheduler, which pass and
    what to do instead."""
    address = _scheduler_address()  # before the pass: once lost, the client forgets it
    try:
        yield
    except CancelledError as exc:
        what = _PASS_NAMES.get(getattr(fn, "__name__", ""), "a pass")
        raise ClusterLostError(
            f"Lost the Dask scheduler {address} during {what} over the "
            f"{dataset.description} (the client cancelled the pass's tasks). The "
            "scheduler process died or the network to it failed. Restart the scheduler (or "
            "the job's cluster) and run again; a fit given a checkpoint resumes from its "
            "last saved iteration."
        ) from exc


def _scheduler_address():
    client = current_client()
    address = getattr(getattr(client, "scheduler", None), "address", None)
    return address or "(address unknown: no distributed client)"


###############################################################################
# Per-chunk functions


@dataclass
class TimedStats(Stats):
    """A candidate's statistics over some rows, with ``seconds``: the compute time of its
    own E-step and statistics on those rows, summed over their chunks (on whichever
    workers ran them). Reading the chunks, the tree combine and the M-step are not in it.
    """

    seconds: float = 0.0

    def __add__(self, other: TimedStats) -> TimedStats:
        return TimedStats(**vars(Stats.__add__(self, other)),
                          seconds=self.seconds + other.seconds)


_WARMED: set = set()  # (covariance type, nan_policy, dtype) this process has run


def em_chunk(block, candidates, row_start, weights=None, nan_policy="raise"):
    """E-step and statistics of every candidate on one chunk, one candidate at a time so
    that each one's compute time is its own (``TimedStats.seconds``). float32 rows stay
    float32 (:func:`daskgmm.kernels.chunk_stats`)."""
    X = kernels.as_rows(block)
    # one row first, untimed, once per process, covariance type, policy and dtype: a
    # process's first call of a compiled kernel loads it (or compiles it, once per
    # installation), which is not the candidate's compute time
    for params in candidates:
        if (params.covariance_type, nan_policy, X.dtype.str) not in _WARMED:
            row = X[:1].copy()
            if nan_policy == "marginalize" and row.shape[1] > 1:
                row[0, 0] = np.nan  # the kernels of rows with missing values too
            kernels.chunk_stats(row, [params], None if weights is None else weights[:1],
                                nan_policy)
            _WARMED.add((params.covariance_type, nan_policy, X.dtype.str))
    out = []
    for params in candidates:
        t0 = time.perf_counter()
        (stats,) = kernels.chunk_stats(X, [params], weights, nan_policy)
        out.append(TimedStats(**vars(stats), seconds=time.perf_counter() - t0))
    return out


def hard_assignment_chunk(block, centers_and_params, row_start, weights=None,
                          nan_policy="raise"):
    return [kernels.hard_assignment_stats(block, c, p, weights, nan_policy)
            for c, p in centers_and_params]


def random_resp_chunk(block, seeds_and_params, row_start, weights=None,
                      nan_policy="raise"):
    return [kernels.random_resp_stats(block, seed, row_start, p, weights, nan_policy)
            for seed, p in seeds_and_params]


def _log_likelihood_chunk(block, params, row_start, weights=None, nan_policy="raise"):
    return kernels.chunk_log_likelihood(block, params, weights, nan_policy)


def _sketch_chunk(block, params, n_points, row_start, weights=None, nan_policy="raise"):
    sketches = []
    for p in params:
        values = kernels.score_chunk(block, p, "score_samples", nan_policy)
        scored = weights
        if nan_policy == "omit":  # rows holding NaN are scored NaN: not in the sketch
            kept = ~np.isnan(values)
            values = values[kept]
            scored = None if weights is None else weights[kept]
        sketches.append(RankSketch.from_values(values, n_points) if scored is None
                        else WeightedRankSketch.from_values(values, scored, n_points))
    return sketches


@dataclass
class SampleKeys:
    """The (at most ``size``) rows of largest sampling keys among some rows: their
    global indices and keys (:func:`daskgmm.kernels.sample_keys`); ``weight``: the total
    weight of all those rows."""

    rows: np.ndarray
    keys: np.ndarray
    size: int
    weight: float
    log_likelihood: float = 0.0  # nothing to check: the weights are checked as read


def combine_sample_keys(parts) -> SampleKeys:
    """Merge :class:`SampleKeys`: the ``size`` largest keys (ties: the lower row)."""
    rows = np.concatenate([p.rows for p in parts])
    keys = np.concatenate([p.keys for p in parts])
    size = parts[0].size
    order = np.lexsort((rows, -keys))[:size]
    return SampleKeys(rows[order], keys[order], size, sum((p.weight for p in parts), 0.0))


def _sample_keys_chunk(block, seed, size, description, label, row_start):
    """The sampling keys of one chunk of weights (a one-column block), checked."""
    weights = np.asarray(block, dtype=np.float64)[:, 0]
    bad = kernels.find_bad_weight(weights)
    if bad is not None:
        raise bad_weight_error(description, label, row_start, row_start + len(weights),
                               row_start + bad, float(weights[bad]))
    keys = kernels.sample_keys(seed, row_start, weights)
    rows = np.arange(row_start, row_start + len(weights), dtype=np.int64)
    return combine_sample_keys([SampleKeys(rows, keys, size, float(weights.sum()))])


def weighted_sample_rows(dataset: Dataset, size: int, seed: int):
    """Sorted global indices of ``size`` rows drawn without replacement with probability
    proportional to their sample weight (all rows of positive weight when they are
    fewer), and the total weight: one pass over the weights only, whose result does not
    depend on the chunking."""
    weights = Dataset(dataset.weights[:, None], None, dataset.description,
                      list(dataset.chunk_labels), dataset.lazy)
    labels = [dataset.chunk_label(i) for i in range(len(dataset.array.chunks[0]))]
    top = data_pass(weights, _sample_keys_chunk, (seed, size, dataset.description),
                    combine=combine_sample_keys, per_chunk=labels)
    check_total_weight(dataset, top.weight, 0)  # a pass over the weights alone
    return np.sort(top.rows[np.isfinite(top.keys)]), top.weight


###############################################################################
# Passes that only score


def score_pass(dataset: Dataset, params: list[Params], split_every: int = 8):
    """Total log-likelihood and total weight of ``dataset`` under each of ``params``:
    ``sum_i w_i log p(x_i)`` and ``sum_i w_i`` with sample weights, else the sum of the
    log-densities and the row count (as a float)."""
    stats = data_pass(dataset, _log_likelihood_chunk, (params,), split_every=split_every)
    check_total_weight(dataset, stats[0].weight, stats[0].n_incomplete)
    return [(s.log_likelihood, s.weight) for s in stats]


def check_total_weight(dataset: Dataset, total: float, n_incomplete: int | None = None):
    """Raise when the sample weights of ``dataset`` sum to 0, or under
    ``nan_policy='omit'`` no row is left (found by a pass; ``n_incomplete``: the rows it
    left out, None: not known)."""
    if total > 0:
        return
    if dataset.nan_policy == "omit" and (n_incomplete is None or n_incomplete > 0):
        raise ValueError(
            f"Every row of the {dataset.description} holds NaN"
            + (" or weighs 0" if dataset.weights is not None else "")
            + ": nan_policy='omit' leaves nothing to fit or score. Use "
            "nan_policy='marginalize' (each row's observed features), or impute."
        )
    if dataset.weights is not None:
        raise all_zero_weights_error(dataset.description)


def sketch_pass(dataset: Dataset, params: list[Params]):
    """Per model, a :class:`RankSketch` of the log-densities of all rows (one pass);
    with sample weights a :class:`WeightedRankSketch` (weighted quantiles).

    The sketches give the total log-likelihood and row count as :func:`score_pass`
    does, and quantiles of the log-density with a guaranteed rank error: each chunk
    keeps :func:`daskgmm.quantiles.sketch_points` values (decided here, on the client),
    so the client receives about ``max(SKETCH_BUDGET, 2049 * n_chunks)`` values per model.
    """
    n = dataset.n_samples
    points = [quantiles.sketch_points(int(rows), n) for rows in dataset.array.chunks[0]]
    # Sketches combine by concatenation: gather them flat rather than through a tree.
    sketches = data_pass(dataset, _sketch_chunk, (params,), combine=combine_sketches,
                         split_every=None, per_chunk=points)
    check_total_weight(dataset, sketches[0].total_weight if sketches else 0.0)
    return sketches


###############################################################################
# Row-wise outputs


class _RowsTask:
    """Per-chunk prediction that reports NaN/inf rows with their location."""

    def __init__(self, fn, where: _Where, labels):
        self.fn, self.where, self.labels = fn, where, labels

    def __call__(self, block, params, block_info=None):
        info = block_info[0] if block_info else {}
        i = info.get("chunk-location", (0,))[0]
        start = info.get("array-location", [(0, block.shape[0])])[0][0]
        label = self.labels[i] if self.labels else f"chunk {i}"
        self.where.check_finite(block, label, start)
        self.where.check_observed(block, label, start)
        return self.fn(np.asarray(block, dtype=np.float64), params, **self.where.policy_kw)


def map_rows(dataset: Dataset, fn, params: Params, dtype, n_columns=None):
    """``fn(chunk, params)`` over the row chunks: a lazy dask array chunked like the
    rows, 1-D (``n_columns=None``) or with ``n_columns`` columns."""
    task = _RowsTask(fn, _Where(dataset, scoring=True), list(dataset.chunk_labels))
    if n_columns is None:
        return dataset.array.map_blocks(
            task, params, dtype=dtype, drop_axis=1, block_info=True,
            meta=np.empty((0,), dtype=dtype),
        )
    return dataset.array.map_blocks(
        task, params, dtype=dtype, block_info=True,
        chunks=(dataset.array.chunks[0], (n_columns,)), meta=np.empty((0, 0), dtype=dtype),
    )


def _take(block, local_rows):
    return np.array(block[local_rows], dtype=np.float64)  # a copy: the chunk can go


def take_rows(dataset: Dataset, rows: np.ndarray) -> np.ndarray:
    """The rows at the sorted global indices ``rows``, as a numpy array: each chunk that
    holds some of them is read by a task that keeps only those rows (dask's own fancy
    indexing would shuffle whole chunks between workers). One compute."""
    offsets = dataset.row_offsets
    bounds = np.searchsorted(rows, offsets)
    blocks = dataset.array.to_delayed(optimize_graph=True).ravel()
    parts = [
        dask.delayed(_take, pure=True)(block, rows[lo:hi] - offsets[i])
        for i, (block, lo, hi) in enumerate(zip(blocks, bounds[:-1], bounds[1:], strict=True))
        if hi > lo
    ]
    if not parts:
        return np.empty((0, dataset.n_features), dtype=np.float64)
    with one_blas_thread(), _cluster_lost(dataset, _take):
        (taken,) = dask.compute(parts)
    return np.concatenate(taken)
