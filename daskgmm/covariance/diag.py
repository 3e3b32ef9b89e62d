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
    VarianceModel,
    centred_squares,
    refine_overflowed,
    scatter_diagonals,
    weighted_squares,
)


class Diag(VarianceModel):
    name = "diag"

    def shape(self, n_components, n_features):
        return (n_components, n_features)

    def n_covariance_parameters(self, n_components, n_features):
        return n_components * n_features

    def log_det_cholesky(self, precisions_cholesky, n_features):
        return np.sum(np.log(precisions_cholesky), axis=1)

    def squared_mahalanobis(self, X, means, precisions_cholesky, ws):
        out = weighted_squares(centred_squares(X, means, ws), precisions_cholesky**2, ws)
        return refine_overflowed(out, X, means, lambda k, diff: diff * precisions_cholesky[k])

    def covariances(self, stats, nk, means, current_means, reg_covar):
        return scatter_diagonals(stats, means, current_means) / nk[:, None] + reg_covar


MODEL = Diag()
