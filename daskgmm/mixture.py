"""A fitted Gaussian mixture in the user's coordinates, and what its fit produced.

:class:`Mixture` holds the parameters with scikit-learn's names and shapes; the engine
works on :class:`daskgmm.kernels.Params` (shifted coordinates) and converts at the
edges with :meth:`Mixture.from_params` and :meth:`Mixture.params`. :class:`FitSummary`
is what an EM fit reports. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import covariance
from .kernels import Params


@dataclass
class Mixture:
    """Weights, means and covariances of a mixture (scikit-learn's shapes)."""

    covariance_type: str
    weights: np.ndarray
    means: np.ndarray
    precisions_cholesky: np.ndarray
    covariances: np.ndarray

    @classmethod
    def from_params(cls, params: Params) -> Mixture:
        """The mixture of engine parameters. A model that never ran an M-step (given
        precisions, ``max_iter=0``) gets its covariances from its precisions."""
        model = params.model
        covariances = params.covariances
        if covariances is None:
            covariances = model.covariances_from_precisions(
                model.precisions(params.precisions_cholesky))
        return cls(params.covariance_type, params.weights, params.means + params.shift,
                   params.precisions_cholesky, covariances)

    @property
    def model(self) -> covariance.CovarianceModel:
        return covariance.get(self.covariance_type)

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    @property
    def precisions(self) -> np.ndarray:
        return self.model.precisions(self.precisions_cholesky)

    def n_parameters(self) -> int:
        """Free parameters, as scikit-learn counts them (for BIC and AIC)."""
        return covariance.n_parameters(self.n_components, self.n_features,
                                       self.covariance_type)

    def params(self, shift=None) -> Params:
        """Engine parameters, shifted by ``shift`` (default: the mixture's mean)."""
        if shift is None:
            shift = self.weights @ self.means / self.weights.sum()
        return Params(self.covariance_type, self.weights, self.means - shift,
                      self.precisions_cholesky, self.covariances, shift)

    def sample(self, n_samples, rng):
        """``(X, y)``: ``n_samples`` rows and their components, drawn from ``rng`` (a
        ``RandomState``) exactly as scikit-learn's ``GaussianMixture.sample`` does."""
        counts = rng.multinomial(n_samples, self.weights)
        X = self.model.sample(rng, self.means, self.covariances, counts)
        y = np.concatenate([np.full(int(n), i, dtype=np.int64) for i, n in enumerate(counts)])
        return X, y


@dataclass
class FitSummary:
    """What an EM fit reports besides the parameters.

    ``lower_bound`` is the mean log-likelihood per row of the last E-step (-inf when no
    iteration ran); ``lower_bounds`` one per iteration; ``n_passes`` the passes over the
    data the fit made (initialisation included); ``resumed_iteration`` the iteration a
    checkpoint resumed from (0: not resumed); ``n_incomplete`` the rows holding NaN
    the last pass saw (see the estimator's ``nan_policy``).
    """

    n_iter: int
    converged: bool
    lower_bound: float
    lower_bounds: list = field(default_factory=list)
    n_samples: int = -1
    n_passes: int = 0
    seconds: float = 0.0
    resumed_iteration: int = 0
    n_incomplete: int = 0
