"""The batch engine: candidates of different k and covariance types share data passes."""

import dask.array as da
import numpy as np
from numpy.testing import assert_allclose
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from daskgmm import em, initialization
from daskgmm.progress import PassCounter
from daskgmm.sources import as_dataset

from .conftest import make_blobs, random_params


def test_mixed_batch_matches_separate_fits_and_shares_passes():
    X = make_blobs(2_000, 3, 3, seed=6)
    dataset = as_dataset(da.from_array(X, chunks=(300, 3)))
    grid = [(1, "spherical"), (2, "diag"), (3, "full"), (4, "tied")]
    candidates, refs = [], []
    for k, covariance_type in grid:
        rs = np.random.RandomState(0)
        (params,) = initialization.initial_params(
            dataset, n_components=k, covariance_type=covariance_type,
            init_params="kmeans", n_init=1, random_state=rs, reg_covar=1e-6,
        )
        candidates.append(em.Candidate(params, tag=(k, covariance_type)))
        refs.append(SkGaussianMixture(k, covariance_type=covariance_type, tol=1e-6,
                                      max_iter=500, init_params="kmeans",
                                      random_state=0).fit(X))
    result = em.run_em(dataset, candidates, tol=1e-6, max_iter=500, reg_covar=1e-6)
    assert result.n_passes == max(ref.n_iter_ for ref in refs)
    for c, ref in zip(result.candidates, refs, strict=True):
        assert c.n_iter == ref.n_iter_ and c.converged
        assert_allclose(c.params.means + c.params.shift, ref.means_, rtol=1e-6, atol=1e-9)
        assert_allclose(c.params.covariances, ref.covariances_, rtol=1e-6)
        assert_allclose(c.lower_bounds, ref.lower_bounds_, rtol=1e-9)


def test_failing_candidate_leaves_batch_without_stopping_others():
    noise = np.random.default_rng(0).normal(size=(100, 2))
    X = np.vstack([np.zeros((50, 2)), np.ones((50, 2)), noise])
    dataset = as_dataset(X)
    shift = X.mean(axis=0)
    from daskgmm import covariance
    from daskgmm.kernels import Params

    def params(means, reg):
        cov = np.stack([np.eye(2)] * len(means))
        return Params("full", np.full(len(means), 1 / len(means)), means - shift,
                      covariance.get("full").precisions_cholesky(cov), cov, shift)

    collapsing = em.Candidate(params(np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]), 0.0))
    healthy = em.Candidate(params(np.array([[0.5, 0.5]]), 0.0))  # one component cannot collapse
    result = em.run_em(dataset, [collapsing, healthy], tol=1e-6, max_iter=200, reg_covar=0.0,
                       raise_errors=False)
    assert collapsing.error is not None and "component" in str(collapsing.error)
    assert healthy.error is None and healthy.done
    assert result.n_passes == max(collapsing.n_iter, healthy.n_iter)


def test_every_candidate_is_timed_on_its_own_and_the_times_add_up():
    from daskgmm import kernels, passes

    rng = np.random.default_rng(1)
    X = rng.normal(size=(2_000, 4))
    params = [random_params(t, n_components=k, seed=k)
              for k, t in [(1, "spherical"), (3, "full"), (2, "diag")]]
    timed = passes.em_chunk(X, params, 0)
    for t, ref in zip(timed, kernels.chunk_stats(X, params), strict=True):
        assert t.seconds > 0
        assert_allclose(t.log_likelihood, ref.log_likelihood, rtol=1e-12)
        assert_allclose(t.s2, ref.s2, rtol=1e-12, atol=1e-9)
    halves = [passes.em_chunk(X[:1_000], params, 0), passes.em_chunk(X[1_000:], params, 1_000)]
    combined = kernels.combine_stats(halves)
    for c, a, b in zip(combined, *halves, strict=True):
        assert isinstance(c, passes.TimedStats) and c.seconds == a.seconds + b.seconds
        assert c.n_samples == 2_000


def test_a_candidates_seconds_are_the_sum_of_its_own_pass_times():
    X = make_blobs(4_000, 3, 3, seed=7)
    dataset = as_dataset(da.from_array(X, chunks=(500, 3)))
    candidates = []
    for k, covariance_type in [(1, "spherical"), (6, "full")]:
        (params,) = initialization.initial_params(
            dataset, n_components=k, covariance_type=covariance_type, init_params="kmeans",
            n_init=1, random_state=np.random.RandomState(0), reg_covar=1e-6)
        candidates.append(em.Candidate(params, label=em.candidate_label(k, covariance_type)))
    seen = []
    em.run_em(dataset, candidates, tol=0.0, max_iter=4, reg_covar=1e-6,
              counter=PassCounter(seen.append))
    assert [c.label for c in seen[-1].candidates] == ["k=1 spherical", "k=6 full"]
    cheap, costly = candidates
    assert cheap.seconds != costly.seconds  # measured, not an equal share of the passes
    assert [c.seconds for c in seen[-1].candidates] == [cheap.seconds, costly.seconds]
