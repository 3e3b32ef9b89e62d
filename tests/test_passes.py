"""Passes over the data: the reduction tree, located errors, row-wise maps."""

import dask
import dask.array as da
import numpy as np
import pytest
from numpy.testing import assert_allclose

from daskgmm import kernels, passes
from daskgmm.sources import as_dataset

from .conftest import random_params


def test_tree_depth_is_logarithmic():
    parts = [dask.delayed(i) for i in range(64)]
    root, depth = passes.tree_reduce(parts, sum, split_every=4)
    assert depth == 3
    assert root.compute() == sum(range(64))
    _, depth = passes.tree_reduce(parts, sum, split_every=8)
    assert depth == 2
    with pytest.raises(ValueError, match="split_every"):
        passes.tree_reduce(parts, sum, split_every=1)




def test_a_pass_is_one_reduction_and_equals_the_whole_chunk():
    p = random_params("full", n_features=4)
    X = np.random.default_rng(3).normal(0, 3, size=(1_000, 4))
    dataset = as_dataset(da.from_array(X, chunks=(90, 4)), chunk_rows=None)
    (merged,) = passes.data_pass(dataset, passes.em_chunk, ([p],), split_every=3)
    (whole,) = kernels.chunk_stats(X, [p])
    assert merged.n_samples == 1_000
    assert_allclose(merged.s2, whole.s2, rtol=1e-12)
    assert_allclose(merged.log_likelihood, whole.log_likelihood, rtol=1e-12)
    ((total, n),) = passes.score_pass(dataset, [p])
    assert n == 1_000 and total == pytest.approx(whole.log_likelihood, rel=1e-12)


def test_nonfinite_rows_are_located_in_passes_and_row_maps():
    p = random_params("diag", n_features=4)
    X = np.random.default_rng(3).normal(size=(300, 4))
    X[205, 3] = np.nan
    dataset = as_dataset(da.from_array(X, chunks=(100, 4)), chunk_rows=None)
    message = r"chunk 2 of dask array, rows 200 to 299, first at row 205, column 3"
    with pytest.raises(ValueError, match=message):
        passes.data_pass(dataset, passes.em_chunk, ([p],))
    out = passes.map_rows(dataset, lambda block, params: block[:, 0], p, np.float64)
    with pytest.raises(ValueError, match=message):
        out.compute()
