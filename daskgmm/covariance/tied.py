"""'tied': one covariance matrix shared by every component.

Shapes: covariances_, precisions_ and precisions_cholesky_ are (n_features, n_features);
the statistic s2 is (n_components, n_features, n_features) as for 'full', summed over the
components in the M-step.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from ._base import (
    MatrixModel,
    add_to_diagonal,
    check_symmetric_positive_definite,
    cholesky_precisions,
    flip,
    refine_overflowed,
    scatter_matrices,
)


class Tied(MatrixModel):
    name = "tied"

    def shape(self, n_components, n_features):
        return (n_features, n_features)

    def n_covariance_parameters(self, n_components, n_features):
        return n_features * (n_features + 1) / 2.0

    def log_det_cholesky(self, precisions_cholesky, n_features):
        return np.sum(np.log(np.diag(precisions_cholesky)))

    def squared_mahalanobis(self, X, means, precisions_cholesky, ws):
        n_components, n_features = means.shape
        Y = np.matmul(X, precisions_cholesky, out=ws("Y", X.shape))
        mb = means @ precisions_cholesky
        D = ws("D", (X.shape[0], n_components, n_features))
        np.subtract(Y[:, None, :], mb[None, :, :], out=D)
        out = np.einsum("nkd,nkd->nk", D, D, out=ws("mahalanobis", (X.shape[0], n_components)))
        return refine_overflowed(out, X, means, lambda k, diff: diff @ precisions_cholesky)

    def covariances(self, stats, nk, means, current_means, reg_covar):
        cov = scatter_matrices(stats, means, current_means).sum(axis=0)
        cov /= nk.sum()
        return add_to_diagonal(cov, reg_covar)

    def precisions_cholesky(self, covariances):
        return cholesky_precisions(covariances[None], self.name, per_component=False)[0]

    def precisions_cholesky_from_precisions(self, precisions):
        return flip(linalg.cholesky(flip(precisions), lower=True))

    def precisions(self, precisions_cholesky):
        return precisions_cholesky @ precisions_cholesky.T

    def check_precisions(self, precisions, n_components, n_features):
        self.check_shape(precisions, n_components, n_features)
        check_symmetric_positive_definite(precisions[None], self.name)

    def sample(self, rng, means, covariances, counts):
        covariances = covariances.astype(np.float64, copy=False)
        return np.vstack([
            rng.multivariate_normal(mean, covariances, int(n))
            for mean, n in zip(means, counts, strict=True)
        ])


MODEL = Tied()
