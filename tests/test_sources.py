"""as_dataset: numpy, dask, Zarr and Parquet inputs (local, file:// and S3) as row-chunked arrays.

Every value check compares with an independent read (numpy, pandas, pyarrow).
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal

from daskgmm import sources
from daskgmm.sources import Dataset, as_dataset

###############################################################################
# Fixtures


@pytest.fixture
def ref():
    return np.random.default_rng(0).normal(size=(95, 5))


def _write_zarr(store, data, chunks, **kwargs):
    z = zarr.create_array(store=store, shape=data.shape, chunks=chunks, dtype=data.dtype,
                          overwrite=True, **kwargs)
    z[:] = data
    return z


@pytest.fixture
def parquet_dir(tmp_path):
    """Files of different lengths (one empty), a Hive partition directory, a text column.

    Returns the directory and the files in lexicographic path order.
    """
    rng = np.random.default_rng(1)
    root = tmp_path / "pq"
    names = ["part.0.parquet", "part.1.parquet", "part.10.parquet", "part.2.parquet",
             "year=2020/part.0.parquet"]
    lengths = [7, 3, 0, 11, 5]
    for name, n in zip(names, lengths, strict=True):
        df = pd.DataFrame({
            "a": rng.normal(size=n),
            "label": [f"r{i}" for i in range(n)],
            "b": rng.integers(-5, 5, size=n),
            "c": rng.normal(size=n).astype(np.float32),
            "flag": rng.random(n) < 0.5,
        })
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(root / name, index=False)
    # Not data: skipped.
    (root / "_SUCCESS").write_text("")
    (root / "_common_metadata").write_bytes(b"")
    return root, sorted(root / name for name in names)


def _concat(files, columns):
    return pd.concat([pd.read_parquet(f, columns=columns) for f in files], ignore_index=True)


###############################################################################
# numpy, pandas and dask input


def test_numpy_small_is_one_float64_chunk(ref):
    ds = as_dataset(ref.astype(np.int64))
    assert ds.array.dtype == np.float64  # float32 stays float32: tests/test_float32.py
    assert ds.array.chunks == ((95,), (5,))
    assert not ds.lazy and ds.description == "numpy array" and ds.feature_names is None
    assert ds.chunk_labels == ["chunk 0"]
    assert_allclose(ds.array.compute(), ref.astype(np.int64).astype(np.float64))


def test_numpy_auto_chunks_are_about_32_mib():
    X = np.zeros((300_000, 16), dtype=np.float32)
    ds = as_dataset(X)
    rows = 32 * 2**20 // (16 * 8)
    assert ds.array.chunks == ((rows, 300_000 - rows), (16,))
    assert_array_equal(ds.row_offsets, [0, rows, 300_000])


def test_numpy_int_chunk_rows_and_feature_names(ref):
    ds = as_dataset(ref, chunk_rows=40, feature_names=["v", "w", "x", "y", "z"])
    assert ds.array.chunks == ((40, 40, 15), (5,))
    assert ds.feature_names == ["v", "w", "x", "y", "z"]
    assert ds.chunk_labels == ["chunk 0", "chunk 1", "chunk 2"]
    assert_array_equal(ds.array.compute(), ref)
    with pytest.raises(ValueError, match="feature_names has 2 names .* 5 columns"):
        as_dataset(ref, feature_names=["a", "b"])


def test_list_bool_and_pandas_input():
    ds = as_dataset([[1, 2], [3, 4], [5, 6]])
    assert_array_equal(ds.array.compute(), np.array([[1.0, 2], [3, 4], [5, 6]]))
    ds = as_dataset(np.array([[True, False], [False, False]]))
    assert_array_equal(ds.array.compute(), [[1.0, 0.0], [0.0, 0.0]])

    df = pd.DataFrame({"a": [1.0, 2.0], "b": pd.array([3, None], dtype="Int64")})
    ds = as_dataset(df)
    assert ds.feature_names == ["a", "b"]
    assert_array_equal(ds.array.compute(), [[1.0, 3.0], [2.0, np.nan]])
    with pytest.raises(ValueError, match=r"non-numeric columns: 's' .*X\[\['a'\]\]"):
        as_dataset(pd.DataFrame({"a": [1.0], "s": ["x"]}))


def test_dask_column_chunks_are_merged_and_tiny_row_chunks_merged(ref):
    X = da.from_array(ref, chunks=(25, 2))
    ds = as_dataset(X)
    assert ds.lazy and ds.description == "dask array"
    assert ds.array.chunks == ((95,), (5,))
    assert_array_equal(ds.array.compute(), ref)

    kept = as_dataset(X, chunk_rows=None)
    assert kept.array.chunks == ((25, 25, 25, 20), (5,))
    assert_array_equal(kept.array.compute(), ref)

    exact = as_dataset(X.astype(np.float32), chunk_rows=30)
    assert exact.array.chunks == ((30, 30, 30, 5), (5,))
    assert exact.array.dtype == np.float32
    assert_allclose(exact.array.compute(), ref.astype(np.float32))


def test_dask_large_row_chunks_are_kept():
    X = da.zeros((600_000, 8), chunks=(100_000, 4))  # 6.4 MiB per row chunk as float64
    ds = as_dataset(X)
    assert ds.array.chunks == ((100_000,) * 6, (8,))


def test_dask_unknown_chunk_sizes_error(ref):
    X = da.from_array(ref, chunks=(20, 5))
    X = X[X[:, 0] > 0]
    with pytest.raises(ValueError, match=r"unknown chunk sizes.*X\.compute_chunk_sizes\(\)"
                                         r".*to_dask_array\(lengths=True\)"):
        as_dataset(X)


def test_dataset_is_used_as_is(ref):
    ds = as_dataset(ref, chunk_rows=50)
    assert as_dataset(ds, chunk_rows=10) is ds


@pytest.mark.parametrize(
    "X, match",
    [
        (np.arange(5.0), r"1-D numpy array of shape \(5,\).*X\.reshape\(-1, 1\)"),
        (np.zeros((0, 3)), r"numpy array has 0 rows \(shape \(0, 3\)\)"),
        (np.zeros((4, 0)), r"numpy array has 0 columns"),
        (np.array([["a", "b"]]), r"non-numeric dtype <U1.*X\.astype\(np\.float64\)"),
        (da.zeros((0, 2), chunks=(1, 2)), r"dask array has 0 rows"),
    ],
)
def test_bad_in_memory_input_errors(X, match):
    with pytest.raises(ValueError, match=match):
        as_dataset(X)


def test_bad_chunk_rows():
    with pytest.raises(ValueError, match=r"chunk_rows must be an int .* Got 0 instead"):
        as_dataset(np.ones((3, 2)), chunk_rows=0)


###############################################################################
# Zarr


def test_zarr_array_path(tmp_path, ref):
    path = tmp_path / "x.zarr"
    _write_zarr(str(path), ref, chunks=(10, 2))
    ds = as_dataset(str(path))
    assert ds.lazy and ds.description == f"Zarr array {str(path)!r}"
    assert ds.array.chunks == ((95,), (5,))  # 10-row chunks are tiny: merged
    assert_array_equal(ds.array.compute(), zarr.open_array(str(path), mode="r")[:])
    assert_array_equal(ds.array.compute(), ref)

    kept = as_dataset(path, chunk_rows=None)  # pathlib.Path
    assert kept.array.chunks == ((10,) * 9 + (5,), (5,))
    assert kept.chunk_labels[3] == "chunk 3"
    assert_array_equal(kept.array.compute(), ref)

    exact = as_dataset(path, chunk_rows=40)
    assert exact.array.chunks == ((40, 40, 15), (5,))
    assert_array_equal(exact.array.compute(), ref)


def test_zarr_file_url_and_array_object(tmp_path, ref):
    path = tmp_path / "x.zarr"
    _write_zarr(str(path), ref.astype(np.int32), chunks=(30, 5))
    ds = as_dataset(path.as_uri(), chunk_rows=None)
    assert ds.description == f"Zarr array {path.as_uri()!r}"
    assert ds.array.dtype == np.float64 and ds.array.chunks == ((30, 30, 30, 5), (5,))
    assert_array_equal(ds.array.compute(), ref.astype(np.int32))

    z = zarr.open_array(str(path), mode="r")
    ds = as_dataset(z)
    assert ds.lazy and ds.description.startswith("Zarr array")
    assert_array_equal(ds.array.compute(), ref.astype(np.int32))


def test_zarr_group(tmp_path, ref):
    path = tmp_path / "g.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("X", shape=ref.shape, chunks=(50, 5), dtype="f8")[:] = ref
    group.create_array("labels", shape=(95,), dtype="i8")[:] = np.arange(95)

    # The only 2-D array is picked.
    ds = as_dataset(str(path))
    assert ds.description == f"Zarr array {str(path)!r} (array 'X')"
    assert_array_equal(ds.array.compute(), ref)

    group.create_group("more").create_array("Y", shape=(4, 2), dtype="f4")[:] = 1.0
    with pytest.raises(ValueError, match=r"holds 2 two-dimensional arrays.*'X' \(95, 5\) "
                                         r"float64.*'more/Y' \(4, 2\).*array_name='X'"):
        as_dataset(str(path))
    ds = as_dataset(str(path), array_name="more/Y")
    assert ds.description == f"Zarr array {str(path)!r} (array 'more/Y')"
    assert_array_equal(ds.array.compute(), np.ones((4, 2)))
    ds = as_dataset(path.as_uri(), array_name="X")
    assert_array_equal(ds.array.compute(), ref)

    with pytest.raises(ValueError, match=r"has no array 'Z'. Arrays found: 'X'.*'labels'"):
        as_dataset(str(path), array_name="Z")
    with pytest.raises(ValueError, match=r"1-D Zarr array .* \(array 'labels'\).*"
                                         r"reshape\(-1, 1\)"):
        as_dataset(str(path), array_name="labels")


def test_zarr_empty_and_text(tmp_path):
    path = tmp_path / "e.zarr"
    zarr.create_array(store=str(path), shape=(0, 3), chunks=(10, 3), dtype="f8")
    with pytest.raises(ValueError, match=r"Zarr array '.*e\.zarr' has 0 rows"):
        as_dataset(str(path))
    path = tmp_path / "s.zarr"
    zarr.create_array(store=str(path), shape=(2, 2), dtype=str)
    with pytest.raises(ValueError, match=r"Zarr array '.*s\.zarr' has non-numeric dtype"):
        as_dataset(str(path))


###############################################################################
# Parquet


def test_parquet_directory_numeric_columns_in_sorted_file_order(parquet_dir):
    root, files = parquet_dir
    ds = as_dataset(str(root))
    assert ds.feature_names == ["a", "b", "c", "flag"]
    assert ds.description == f"Parquet dataset {str(root)!r} (columns a, b, c, flag)"
    assert ds.lazy
    # One chunk per non-empty file, in lexicographic order: part.10 (empty) before part.2.
    assert ds.array.chunks == ((7, 3, 11, 5), (4,))
    assert ds.chunk_labels == [
        "file 'part.0.parquet'", "file 'part.1.parquet'", "file 'part.2.parquet'",
        "file 'year=2020/part.0.parquet'",
    ]
    expected = _concat(files, ["a", "b", "c", "flag"]).astype(np.float64).to_numpy()
    assert_array_equal(ds.array.compute(), expected)


def test_parquet_selected_columns_and_chunk_rows(parquet_dir):
    root, files = parquet_dir
    ds = as_dataset(root, columns=["c", "a"], chunk_rows=5)
    assert ds.feature_names == ["c", "a"]
    assert ds.array.chunks == ((5, 5, 5, 5, 5, 1), (2,))
    assert ds.chunk_labels[0] == "file 'part.0.parquet' (its rows 0 to 4)"
    assert ds.chunk_labels[1] == (
        "file 'part.0.parquet' (from its row 5) to file 'part.1.parquet' (to its row 2)"
    )
    table = pa.concat_tables([pq.read_table(f, columns=["c", "a"]) for f in files])
    expected = np.column_stack([table.column(n).to_numpy().astype(np.float64)
                                for n in ["c", "a"]])
    assert_array_equal(ds.array.compute(), expected)


def test_parquet_single_file(parquet_dir):
    root, files = parquet_dir
    ds = as_dataset(str(root / "part.2.parquet"), columns=["b"])
    assert ds.array.chunks == ((11,), (1,))
    assert ds.chunk_labels == ["file 'part.2.parquet'"]
    assert_array_equal(ds.array.compute(),
                       pd.read_parquet(root / "part.2.parquet")[["b"]].to_numpy(np.float64))


def test_parquet_large_file_is_split_by_row_groups(tmp_path, monkeypatch):
    data = np.random.default_rng(2).normal(size=(100, 2))
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"x": data[:, 0], "y": data[:, 1]}), path, row_group_size=20)
    monkeypatch.setattr(sources, "_TARGET_CHUNK_BYTES", 16 * 40)  # 40 rows of 2 float64
    ds = as_dataset(str(path))
    assert ds.array.chunks == ((40, 40, 20), (2,))
    assert ds.chunk_labels == [
        "file 'big.parquet', row groups 0 to 1", "file 'big.parquet', row groups 2 to 3",
        "file 'big.parquet', row group 4",
    ]
    assert_array_equal(ds.array.compute(), pq.read_table(path).to_pandas().to_numpy())


def test_parquet_non_numeric_column_error(parquet_dir):
    root, _ = parquet_dir
    with pytest.raises(ValueError, match=r"Column 'label' has Arrow type (large_)?string in "
                                         r"file 'part\.0\.parquet'.*"
                                         r"columns=\['a', 'b', 'c', 'flag'\]"):
        as_dataset(str(root), columns=["a", "label"])


def test_parquet_file_with_other_schema_is_named(parquet_dir):
    root, _ = parquet_dir
    pd.DataFrame({"a": [1.0], "b": ["text"]}).to_parquet(root / "part.3.parquet")
    with pytest.raises(ValueError, match=r"Column 'b' has Arrow type .*string in file "
                                         r"'part\.3\.parquet'"):
        as_dataset(str(root), columns=["a", "b"])
    with pytest.raises(ValueError, match=r"Column 'c' is not in file 'part\.3\.parquet'.*"
                                         r"columns there: a, b"):
        as_dataset(str(root), columns=["a", "c"])


def test_parquet_pandas_index_is_not_a_feature(tmp_path):
    df = pd.DataFrame({"a": [1.0, 2.0]}, index=pd.Index([10, 20], name="id"))
    df.to_parquet(tmp_path / "f.parquet")
    ds = as_dataset(tmp_path / "f.parquet")
    assert ds.feature_names == ["a"]
    assert_array_equal(ds.array.compute(), [[1.0], [2.0]])


def test_parquet_empty_dataset(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    pd.DataFrame({"a": np.zeros(0)}).to_parquet(root / "part.0.parquet")
    with pytest.raises(ValueError, match=r"Parquet dataset '.*empty' \(columns a\) has 0 rows"
                                         r" in its 1 file\(s\) \(part\.0\.parquet\)"):
        as_dataset(str(root))


def test_missing_path_and_unknown_content(tmp_path):
    missing = tmp_path / "nope.zarr"
    with pytest.raises(FileNotFoundError, match=r"No such file or directory: '.*nope\.zarr'"
                                                r".*Zarr array or group.*Parquet"):
        as_dataset(str(missing))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"holds neither a Zarr array.*Entries found: "
                                         r"\['a\.txt'\]"):
        as_dataset(tmp_path / "notes")


###############################################################################
# Distributed and S3


def test_tasks_run_on_a_distributed_cluster(cluster_client, parquet_dir, tmp_path, ref):
    # cluster_client (tests/conftest.py): worker processes, so the graphs are pickled.
    root, files = parquet_dir
    _write_zarr(str(tmp_path / "x.zarr"), ref, chunks=(30, 5))
    pq_ds = as_dataset(str(root), columns=["a", "b"])
    zarr_ds = as_dataset(tmp_path / "x.zarr", chunk_rows=None)
    got_pq, got_zarr = cluster_client.compute([pq_ds.array, zarr_ds.array], sync=True)
    assert_array_equal(got_pq, _concat(files, ["a", "b"]).to_numpy(np.float64))
    assert_array_equal(got_zarr, ref)


def test_s3_round_trip_zarr_and_parquet(s3, ref):
    fs, options = s3
    _write_zarr("s3://data/x.zarr", ref, chunks=(40, 5), storage_options=options)
    ds = as_dataset("s3://data/x.zarr", storage_options=options, chunk_rows=None)
    assert ds.description == "Zarr array 's3://data/x.zarr'"
    assert ds.array.chunks == ((40, 40, 15), (5,))
    reference = zarr.open_array("s3://data/x.zarr", mode="r", storage_options=options)[:]
    assert_array_equal(reference, ref)
    assert_array_equal(ds.array.compute(), reference)

    tables = [pa.table({"u": ref[:60, 0], "v": ref[:60, 1]}),
              pa.table({"u": ref[60:, 0], "v": ref[60:, 1]})]
    for i, table in enumerate(tables):
        with fs.open(f"data/pq/part.{i}.parquet", "wb") as f:
            pq.write_table(table, f)
    ds = as_dataset("s3://data/pq/", storage_options=options)
    assert ds.description == "Parquet dataset 's3://data/pq/' (columns u, v)"
    assert ds.array.chunks == ((60, 35), (2,))
    assert ds.chunk_labels == ["file 'part.0.parquet'", "file 'part.1.parquet'"]
    assert_array_equal(ds.array.compute(), ref[:, :2])

    with pytest.raises(FileNotFoundError, match=r"'s3://data/missing'.*storage_options"):
        as_dataset("s3://data/missing", storage_options=options)


def test_path_types_are_equivalent(tmp_path, ref):
    _write_zarr(str(tmp_path / "x.zarr"), ref, chunks=(95, 5))
    results = [as_dataset(p).array.compute()
               for p in (str(tmp_path / "x.zarr"), tmp_path / "x.zarr",
                         Path(tmp_path / "x.zarr").as_uri())]
    for got in results:
        assert_array_equal(got, ref)
    assert isinstance(as_dataset(tmp_path / "x.zarr"), Dataset)


def test_cache_auto_persists_small_data_and_streams_large(cluster_client):
    small = as_dataset(da.zeros((1_000, 4), chunks=(100, 4)))
    # 2 workers x 2 GiB: half of it is 2 GiB; this lazy array would take 8 GiB
    large = as_dataset(da.zeros((2**28, 4), chunks=(2**22, 4)))
    assert sources.fits_in_memory(small)
    assert not sources.fits_in_memory(large)


###############################################################################
# Chunk sizes from the workers' memory (the rule of sources.ChunkBudget)

MiB = 2**20


@pytest.fixture
def thread_workers():
    """A real scheduler with in-process workers: 1 worker, 32 threads, 4 GiB. Under the
    documented rule its largest chunk is (0.8 x 4 GiB - 192 MiB) / (5 x 32) = 19.3 MiB."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=32, memory_limit="4GiB",
                      processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client


def test_chunk_budget_without_a_client_is_the_default():
    budget = sources.chunk_budget()
    assert budget.target_bytes == 32 * MiB
    assert budget.largest_bytes is None


def test_chunk_budget_follows_the_workers_memory(thread_workers):
    budget = sources.chunk_budget()
    largest = (int(0.8 * 4 * 2**30) - 192 * MiB) // (5 * 32)
    assert budget.largest_bytes == largest
    assert budget.target_bytes == largest  # under the 32 MiB cap
    assert "memory_limit 4096 MiB and 32 threads" in budget.workers


def test_chunk_budget_names_the_tightest_worker_and_a_cluster_without_workers():
    """The tightest worker is the one with the least memory per thread, not the least
    memory; an adaptive cluster before its first worker is said to have none."""
    small_few = (1 * 2**30, 1)  # 1 GiB, 1 thread: 132 MiB chunks fit
    big_many = (4 * 2**30, 32)  # 4 GiB, 32 threads: 19 MiB fit
    budget = sources.budget_for([small_few, big_many])
    assert budget.largest_bytes == (int(0.8 * 4 * 2**30) - 192 * MiB) // (5 * 32)
    assert "2 workers, the tightest with memory_limit 4096 MiB and 32 threads" in (
        budget.workers)
    empty = sources.budget_for([])
    assert (empty.target_bytes, empty.largest_bytes, empty.workers) == (
        32 * MiB, None, "no workers yet")


def test_auto_chunks_fit_the_workers(thread_workers, tmp_path):
    largest = (int(0.8 * 4 * 2**30) - 192 * MiB) // (5 * 32)
    rows = largest // (8 * 16)
    X = np.zeros((5 * rows, 16))
    assert as_dataset(X).array.chunks[0][0] == rows
    # Parquet (pyarrow's 96 MiB more per worker): pieces of whole row groups up to the
    # budget, here 3 row groups of a third of it
    rows = ((int(0.8 * 4 * 2**30) - 288 * MiB) // (5 * 32)) // (8 * 16)
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({f"f{j}": np.zeros(2 * rows) for j in range(16)}), path,
                   row_group_size=rows // 3)
    assert max(as_dataset(str(path)).array.chunks[0]) == 3 * (rows // 3)


def test_chunks_too_large_for_the_workers_warn(thread_workers, tmp_path):
    rows = 200_000  # 24.4 MiB of 16 float64 columns, above the 19.3 MiB that fit
    X = da.zeros((2 * rows, 16), chunks=(rows, 16))
    with pytest.warns(sources.ChunkMemoryWarning,
                      match=r"The largest row chunks of the dask array \(200000 rows\) take "
                            r"24 MiB as float64 each, too large for the workers \(1 worker, "
                            r".*chunks up to 19 MiB fit\).*chunks=\(15[78][0-9]{3}, -1\)"
                      ) as seen:
        as_dataset(X)
    assert seen[0].filename == __file__  # the line of the user's code that gave them
    z = zarr.create_array(str(tmp_path / "z.zarr"), shape=(2 * rows, 16), chunks=(rows, 16),
                          dtype="f8")
    with pytest.warns(sources.ChunkMemoryWarning,
                      match=r"Chunks of 200000 rows of the Zarr array .* Write the array "
                            r"with chunks of about 15[78][0-9]{3} rows"):
        as_dataset(z, missing_chunks="fill")
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({f"f{j}": np.zeros(rows) for j in range(16)}), path,
                   row_group_size=rows)
    with pytest.warns(sources.ChunkMemoryWarning,
                      match=r"Row groups of 200000 rows of the Parquet dataset .* "
                            r"chunks up to 19 MiB fit.*row_group_size=153026\)") as seen:
        as_dataset(str(path))
    assert seen[0].filename == __file__
    with pytest.warns(sources.ChunkMemoryWarning, match=r"Pass chunk_rows=15[78][0-9]{3}"):
        as_dataset(np.zeros((2 * rows, 16)), chunk_rows=rows)


def test_chunks_that_fit_do_not_warn(thread_workers):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", sources.ChunkMemoryWarning)
        as_dataset(da.zeros((400_000, 16), chunks=(100_000, 16)))
        as_dataset(np.zeros((400_000, 16)))
