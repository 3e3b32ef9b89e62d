"""'spherical': one variance per component, the same for every feature.

Shapes: covariances_, precisions_ and precisions_cholesky_ are (n_components,); the
statistic s2 is (n_components, n_features) as for 'diag', averaged over the features in
the M-step.
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


class Spherical(VarianceModel):
    name = "spherical"

    def shape(self, n_components, n_features):
        return (n_components,)

    def n_covariance_parameters(self, n_components, n_features):
        return n_components

    def log_det_cholesky(self, precisions_cholesky, n_features):
        return n_features * np.log(precisions_cholesky)

    def squared_mahalanobis(self, X, means, precisions_cholesky, ws):
        precisions = np.repeat((precisions_cholesky**2)[:, None], means.shape[1], axis=1)
        out = weighted_squares(centred_squares(X, means, ws), precisions, ws)
        return refine_overflowed(out, X, means, lambda k, diff: diff * precisions_cholesky[k])

    def covariances(self, stats, nk, means, current_means, reg_covar):
        diag = scatter_diagonals(stats, means, current_means) / nk[:, None] + reg_covar
        return diag.mean(axis=1)


MODEL = Spherical()
