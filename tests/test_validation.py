"""Checks of parameters and inputs (daskgmm.validation), read as scikit-learn's."""

import dask.array as da
import numpy as np
import pytest

from daskgmm import GaussianMixture


def test_parameter_errors_read_like_sklearn(blobs):
    with pytest.raises(ValueError, match=r"The 'n_components' parameter of GaussianMixture "
                                         r"must be an int in the range \[1, inf\). Got 0"):
        GaussianMixture(0).fit(blobs)
    with pytest.raises(ValueError, match="'covariance_type' parameter .* Got 'ful'"):
        GaussianMixture(covariance_type="ful").fit(blobs)
    with pytest.raises(ValueError, match="'split_every' parameter .* range \\[2, inf\\)"):
        GaussianMixture(split_every=1).fit(blobs)
    with pytest.raises(ValueError, match="'cache' parameter"):
        GaussianMixture(cache="yes").fit(blobs)
    with pytest.raises(ValueError, match="'means' should have the shape of \\(3, 3\\)"):
        GaussianMixture(3, means_init=np.zeros((2, 3))).fit(blobs)



def test_n_components_larger_than_rows():
    with pytest.raises(ValueError, match=r"Expected n_samples >= n_components but got "
                                         r"n_components = 5, n_samples = 3 \(numpy array\)\. "
                                         r"Use at most n_components=3"):
        GaussianMixture(5).fit(np.arange(9.0).reshape(3, 3))



def test_wrong_number_of_features_at_predict(blobs):
    gm = GaussianMixture(2, random_state=0).fit(blobs)
    with pytest.raises(ValueError, match="X has 2 features, but GaussianMixture is expecting 3"):
        gm.predict(blobs[:, :2])
    with pytest.raises(ValueError, match="X has 2 features, but GaussianMixture is expecting 3"):
        gm.predict(da.from_array(blobs[:, :2], chunks=100))



def test_empty_data():
    with pytest.raises(ValueError, match="0 sample"):
        GaussianMixture().fit(np.zeros((0, 3)))


@pytest.mark.parametrize(("name", "value", "where"), [
    ("means_init", [[0.0, np.nan, 1.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], r"\(0, 1\)"),
    ("weights_init", [0.5, np.inf, 0.25], r"\(1,\)"),
    ("precisions_init", np.stack([np.eye(3)] * 2 + [np.full((3, 3), np.nan)]), r"\(2, 0, 0\)"),
])
def test_nonfinite_initial_parameters_are_named(blobs, name, value, where):
    with pytest.raises(ValueError, match=rf"The parameter '{name}' holds (nan|inf) at index "
                                         rf"{where}: initial parameters must be finite"):
        GaussianMixture(3, **{name: value}).fit(blobs)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_collapsed_rows_without_reg_covar_raise_as_sklearn_for_every_type(covariance_type):
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    points = np.random.default_rng(0).normal(size=(3, 2)) * 3  # not exact binary fractions
    X = np.repeat(points, 50, axis=0)  # repeated rows: no spread within a component
    kw = dict(covariance_type=covariance_type, reg_covar=0.0, random_state=0)
    with pytest.raises(ValueError, match="ill-defined empirical covariance") as ref:
        SkGaussianMixture(3, **kw).fit(X)
    with pytest.raises(ValueError, match="ill-defined empirical covariance") as ours:
        GaussianMixture(3, **kw).fit(X)
    assert str(ours.value).startswith(str(ref.value).split(" (")[0].split(".")[0])
    GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(X)  # reg_covar
