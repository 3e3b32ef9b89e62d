"""daskgmm.GaussianMixture is a real scikit-learn estimator."""

import numpy as np
from numpy.testing import assert_allclose
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from daskgmm import GaussianMixture


@parametrize_with_checks([GaussianMixture(n_components=2, random_state=0)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_clone_and_pipeline(blobs):
    gm = GaussianMixture(3, covariance_type="diag", random_state=0, split_every=4)
    copy = clone(gm)
    assert copy.get_params() == gm.get_params()
    pipe = make_pipeline(StandardScaler(), gm).fit(blobs)
    scaled = StandardScaler().fit_transform(blobs)
    direct = GaussianMixture(3, covariance_type="diag", random_state=0).fit(scaled)
    assert_allclose(pipe.score_samples(blobs), direct.score_samples(scaled), rtol=1e-9)
    assert pipe.predict(blobs).shape == (900,)
    assert np.isfinite(pipe.score(blobs))


def test_repr_hides_storage_secrets():
    gm = GaussianMixture(storage_options={"key": "AKIA-SECRET", "secret": "hunter2"})
    assert "hunter2" not in repr(gm) and "AKIA-SECRET" not in repr(gm)
    assert "storage_options" in repr(gm)
