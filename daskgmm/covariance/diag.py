"""'diag': one diagonal covariance (a variance per feature) per component.

Shapes: covariances_, precisions_ and precisions_cholesky_ are (n_components,
n_features); the statistic s2 is (n_components, n_features), sum_i r_ik (x_i - mu_k)**2.

The E-step subtracts each mean before squaring (scikit-learn expands
``x^2 - 2 x mu + mu^2``), which keeps tight clusters far apart exact; the statistics of
the same block reuse those squares.
"""

from __future__ import annotations

import numpy as np

from ._base import (
    CovarianceModel,
    centred_squares,
    check_positive,
    positive_variances,
    scatter_diagonals,
    squares_statistic,
    weighted_squares,
)


class Diag(CovarianceModel):
    name = "diag"

    def shape(self, n_components, n_features):
        return (n_components, n_features)

    def n_covariance_parameters(self, n_components, n_features):
        return n_components * n_features

    def log_det_cholesky(self, precisions_cholesky, n_features):
        return np.sum(np.log(precisions_cholesky), axis=1)

    def squared_mahalanobis(self, X, means, precisions_cholesky, ws):
        return weighted_squares(centred_squares(X, means, ws), precisions_cholesky**2, ws)

    def second_moment_shape(self, n_components, n_features):
        return (n_components, n_features)

    def second_moment(self, X, resp, means, ws, after_e_step=False):
        return squares_statistic(X, resp, means, ws, after_e_step)

    def covariances(self, stats, nk, means, current_means, reg_covar):
        return scatter_diagonals(stats, means, current_means) / nk[:, None] + reg_covar

    def precisions_cholesky(self, covariances):
        return positive_variances(covariances, self.name)

    def precisions_cholesky_from_precisions(self, precisions):
        return np.sqrt(precisions)

    def precisions(self, precisions_cholesky):
        return precisions_cholesky**2

    def covariances_from_precisions(self, precisions):
        return 1.0 / precisions

    def check_precisions(self, precisions, n_components, n_features):
        self.check_shape(precisions, n_components, n_features)
        check_positive(precisions, self.name)

    def sample(self, rng, means, covariances, counts):
        n_features = means.shape[1]
        return np.vstack([
            mean + rng.standard_normal(size=(n, n_features)) * np.sqrt(cov)
            for mean, cov, n in zip(means, covariances, counts, strict=True)
        ])


MODEL = Diag()
