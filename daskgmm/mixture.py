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
    """Weights, means and covariances of a mixture (scikit-learn's shapes).

    The arrays are float64, or float32 for a model fitted on float32 data (as
    scikit-learn's); :meth:`params` gives the engine float64 parameters either way.
    """

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
    def dtype(self) -> np.dtype:
        """float64, or float32 for a model of float32 data."""
        return self.means.dtype

    def astype(self, dtype) -> Mixture:
        """The mixture with its arrays in ``dtype`` (itself when they are)."""
        if all(a.dtype == dtype for a in self._arrays()):
            return self
        return Mixture(self.covariance_type, *(a.astype(dtype) for a in self._arrays()))

    def _arrays(self):
        return (self.weights, self.means, self.precisions_cholesky, self.covariances)

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    @property
    def precisions(self) -> np.ndarray:
        """The precisions, computed in float64 (from the stored factors) and given in
        the mixture's dtype."""
        return self.model.precisions(_float64(self.precisions_cholesky)).astype(
            self.dtype, copy=False)

    def n_parameters(self) -> int:
        """Free parameters, as scikit-learn counts them (for BIC and AIC)."""
        return covariance.n_parameters(self.n_components, self.n_features,
                                       self.covariance_type)

    def params(self, shift=None) -> Params:
        """Engine parameters (float64), shifted by ``shift`` (default: the mixture's
        mean)."""
        weights, means = _float64(self.weights), _float64(self.means)
        if shift is None:
            shift = weights @ means / weights.sum()
        return Params(self.covariance_type, weights, means - shift,
                      _float64(self.precisions_cholesky), _float64(self.covariances), shift)

    def sample(self, n_samples, rng):
        """``(X, y)``: ``n_samples`` float64 rows and their components, drawn from
        ``rng`` (a ``RandomState``) as scikit-learn's ``GaussianMixture.sample`` does
        (see :meth:`daskgmm.covariance.CovarianceModel.sample` for a float32 model)."""
        counts = rng.multinomial(n_samples, self.weights)
        X = self.model.sample(rng, self.means, self.covariances, counts)
        y = np.concatenate([np.full(int(n), i, dtype=np.int64) for i, n in enumerate(counts)])
        return X, y


def _float64(a):
    return a.astype(np.float64, copy=False)


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
