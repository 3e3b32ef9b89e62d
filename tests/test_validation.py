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
