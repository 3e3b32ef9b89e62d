"""'full': one covariance matrix per component.

Shapes: covariances_, precisions_ and precisions_cholesky_ are (n_components,
n_features, n_features); the statistic s2 is (n_components, n_features, n_features),
sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T.
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


class Full(MatrixModel):
    name = "full"

    def shape(self, n_components, n_features):
        return (n_components, n_features, n_features)

    def n_covariance_parameters(self, n_components, n_features):
        return n_components * n_features * (n_features + 1) / 2.0

    def log_det_cholesky(self, precisions_cholesky, n_features):
        n_components = precisions_cholesky.shape[0]
        diag = precisions_cholesky.reshape(n_components, -1)[:, :: n_features + 1]
        return np.sum(np.log(diag), axis=1)

    def squared_mahalanobis(self, X, means, precisions_cholesky, ws):
        # One matrix product for all components: X @ [P_1 | P_2 | ... | P_k].
        n_components, n_features, _ = precisions_cholesky.shape
        W = np.ascontiguousarray(precisions_cholesky.transpose(1, 0, 2)).reshape(n_features, -1)
        b = np.einsum("kd,kde->ke", means, precisions_cholesky).reshape(-1)
        Y = ws("Y", (X.shape[0], n_components * n_features))
        np.matmul(X, W, out=Y)
        Y -= b
        Y3 = Y.reshape(X.shape[0], n_components, n_features)
        out = np.einsum("nkd,nkd->nk", Y3, Y3,
                        out=ws("mahalanobis", (X.shape[0], n_components)))
        return refine_overflowed(out, X, means, lambda k, diff: diff @ precisions_cholesky[k])

    def covariances(self, stats, nk, means, current_means, reg_covar):
        cov = scatter_matrices(stats, means, current_means)
        cov /= nk[:, None, None]
        return add_to_diagonal(cov, reg_covar)

    def precisions_cholesky(self, covariances):
        return cholesky_precisions(covariances, self.name, per_component=True)

    def precisions_cholesky_from_precisions(self, precisions):
        return np.stack([flip(linalg.cholesky(flip(p), lower=True)) for p in precisions])

    def precisions(self, precisions_cholesky):
        return precisions_cholesky @ precisions_cholesky.transpose(0, 2, 1)

    def check_precisions(self, precisions, n_components, n_features):
        self.check_shape(precisions, n_components, n_features)
        check_symmetric_positive_definite(precisions, self.name)

    def sample(self, rng, means, covariances, counts):
        return np.vstack([
            rng.multivariate_normal(mean, cov.astype(np.float64, copy=False), int(n))
            for mean, cov, n in zip(means, covariances, counts, strict=True)
        ])


MODEL = Full()
