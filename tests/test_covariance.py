"""The maths of each covariance type (daskgmm.covariance) against scipy and scikit-learn."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import stats
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from daskgmm import covariance, kernels

from .conftest import COVARIANCE_TYPES, full_covariances, random_params


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_weighted_log_prob_matches_scipy(covariance_type):
    p = random_params(covariance_type)
    X = np.random.default_rng(1).normal(0, 3, size=(10, 4))
    covs = full_covariances(p, 4)
    expected = np.column_stack([
        stats.multivariate_normal(p.means[k], covs[k]).logpdf(X) + np.log(p.weights[k])
        for k in range(3)
    ])
    assert_allclose(kernels.estimate_weighted_log_prob(X, p), expected, rtol=1e-10)



def test_precision_cholesky_round_trip():
    for covariance_type in COVARIANCE_TYPES:
        p = random_params(covariance_type)
        model = covariance.get(covariance_type)
        precisions = model.precisions(p.precisions_cholesky)
        again = model.precisions_cholesky_from_precisions(precisions)
        assert_allclose(model.precisions(again), precisions)
        if covariance_type in ("full", "tied"):
            inv = np.linalg.inv(p.covariances)
            assert_allclose(precisions, inv, rtol=1e-9)




@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bad_user_precisions_are_refused_as_sklearn_refuses_them(blobs, covariance_type):
    model = covariance.get(covariance_type)
    shape = model.shape(3, 3)
    cases = [np.ones((2,) + shape[1:]) if len(shape) > 1 else np.ones(5),
             -np.ones(shape) if covariance_type in ("diag", "spherical")
             else -np.stack([np.eye(3)] * 3) if covariance_type == "full" else -np.eye(3)]
    for bad in cases:
        with pytest.raises(ValueError) as ours:
            model.check_precisions(bad, 3, 3)
        with pytest.raises(ValueError) as ref:
            SkGaussianMixture(3, covariance_type=covariance_type,
                              precisions_init=bad).fit(blobs)
        assert str(ours.value).split(" (")[0] == str(ref.value).split(" (")[0]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_shapes_and_parameter_counts(covariance_type):
    p = random_params(covariance_type, n_components=3, n_features=4)
    model = covariance.get(covariance_type)
    assert p.covariances.shape == p.precisions_cholesky.shape == model.shape(3, 4)
    ref = SkGaussianMixture(3, covariance_type=covariance_type).fit(
        np.random.default_rng(0).normal(size=(50, 4)))
    assert covariance.n_parameters(3, 4, covariance_type) == ref._n_parameters()  # noqa: SLF001
    covs = model.covariances_from_precisions(model.precisions(p.precisions_cholesky))
    assert_allclose(covs, p.covariances, rtol=1e-10)
    assert kernels.empty_stats(p, 4).s2.shape == model.second_moment_shape(3, 4)


def test_unknown_covariance_type():
    with pytest.raises(ValueError, match=r"Unknown covariance_type 'ful'; choose among "
                                         r"\['full', 'tied', 'diag', 'spherical'\]"):
        covariance.get("ful")
