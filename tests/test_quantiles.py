"""Rank sketches: quantiles of columns too large for memory, with guaranteed bounds."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from daskgmm import quantiles
from daskgmm.quantiles import RankSketch, combine_sketches

LEVELS = [0.0, 1e-4, 0.001, 0.01, 0.05, 0.5, 0.99, 1.0]


def _sketch(x, splits, n_points):
    return combine_sketches([RankSketch.from_values(c, n_points)
                             for c in np.array_split(x, splits)])



@pytest.mark.parametrize("splits", [[], [1], [10, 11, 500], [3000, 3001, 9000, 9500]])
def test_sketch_is_numpy_quantile_when_chunks_are_kept_whole(splits):
    x = np.random.default_rng(0).standard_t(3, size=10_000)
    sketch = _sketch(x, splits, n_points=10_000)
    q, bounds = sketch.quantile(LEVELS)
    assert_allclose(q, np.quantile(x, LEVELS), rtol=1e-14, atol=0)
    assert sketch.max_rank_error() == 0
    assert_allclose(bounds[:, 0], bounds[:, 1])
    assert_allclose(bounds[:, 0], [np.mean(x <= t) for t in q])



@pytest.mark.parametrize("n_points", [65, 513, 2049])
def test_sketch_bounds_hold_and_are_within_the_stated_error(n_points):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=150_000), rng.exponential(50, size=1_000) + 10])
    rng.shuffle(x)
    splits = np.sort(rng.choice(np.arange(1, x.size), size=20, replace=False))
    sketch = _sketch(x, splits, n_points)
    q, bounds = sketch.quantile(LEVELS)
    true = np.array([np.mean(x <= t) for t in q])
    assert np.all(bounds[:, 0] <= true) and np.all(true <= bounds[:, 1])
    # the documented bound: 1/(n_points - 1) of the rows plus one row per chunk
    stated = 1 / (n_points - 1) + (len(splits) + 1) / x.size
    assert sketch.max_rank_error() <= stated
    assert np.all(np.abs(true - np.asarray(LEVELS)) <= stated + 1 / x.size)
    # the estimate is much better than a sketch of the pooled quantiles would be
    assert np.abs(true[3] - 0.01) < 2 / (n_points - 1)



def test_sketch_combine_is_associative_and_fraction_bounds():
    x = np.random.default_rng(2).normal(size=5_000)
    parts = [RankSketch.from_values(c, 100) for c in np.array_split(x, 7)]
    left = combine_sketches([combine_sketches(parts[:3]), combine_sketches(parts[3:])])
    flat = combine_sketches(parts)
    assert_allclose(left.quantile(LEVELS)[0], flat.quantile(LEVELS)[0])
    lo, hi = flat.fraction_at_or_below([0.0])[0]
    assert lo <= np.mean(x <= 0.0) <= hi
    assert flat.n_samples == 5_000 and np.isclose(flat.log_likelihood, x.sum())
    with pytest.raises(ValueError, match="levels must lie in"):
        flat.quantile([1.5])



def test_sketch_points_budget():
    assert quantiles.sketch_points(5_000, 5_000) == quantiles.SKETCH_BUDGET  # one chunk: exact
    assert quantiles.sketch_points(10, 10**9) == 2049
    # uneven chunks of data within the budget are all kept whole
    total = quantiles.SKETCH_BUDGET
    assert quantiles.sketch_points(total // 10, total) >= total // 10
    assert quantiles.sketch_points(9 * total // 10, total) >= 9 * total // 10
