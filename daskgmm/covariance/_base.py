"""What a covariance type is: the interface every module of :mod:`daskgmm.covariance`
implements, and the few helpers they share. Pure numpy and scipy."""

from __future__ import annotations

import abc
import functools
import math
import os

import numpy as np
from scipy import linalg

# DASKGMM_KERNELS picks the E-step of 'diag' and 'spherical': 'auto' (the default) the
# compiled one-pass kernel (.compiled) when numba is installed, else numpy; 'numba' the
# compiled kernel or an error; 'numpy' the numpy path, the reference.
KERNELS_VARIABLE = "DASKGMM_KERNELS"
_KERNEL_CHOICES = ("auto", "numba", "numpy")


class CovarianceError(ValueError):
    """A covariance matrix is not positive definite."""


def ill_defined_message(component, covariance_type):
    """scikit-learn's message for a covariance that is not positive definite, with the
    component (when one is to blame) and the fixes."""
    where = (
        f" (covariance_type={covariance_type!r})" if component is None
        else f" (component {component}, covariance_type={covariance_type!r})"
    )
    return (
        "Fitting the mixture model failed because some components have ill-defined "
        f"empirical covariance{where} (for instance caused by singleton or collapsed "
        "samples). Try to decrease the number of components, increase reg_covar, or "
        "scale the input data."
    )


def overflow_message(component, covariance_type):
    """The message for a mean or covariance that float64 cannot hold, with the component
    (when one is to blame) and the fix."""
    where = (
        f"(covariance_type={covariance_type!r})" if component is None
        else f"of component {component} (covariance_type={covariance_type!r})"
    )
    return (
        f"Fitting the mixture model failed because the mean or covariance {where} is not "
        "a finite float64: the data are too large or too spread out for float64 "
        "arithmetic (their squares overflow). Scale the input data, for instance with "
        "sklearn.preprocessing.StandardScaler."
    )


@functools.cache
def _compiled():
    try:
        from . import compiled
    except ImportError:  # numba is not installed (or does not work with this numpy)
        return None
    return compiled


def fused_module():
    """The module of the compiled one-pass E-step (:mod:`.compiled`), or None when the
    numpy path is to run: ``DASKGMM_KERNELS=numpy``, or numba is not installed."""
    choice = os.environ.get(KERNELS_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in _KERNEL_CHOICES:
        raise ValueError(
            f"{KERNELS_VARIABLE}={os.environ[KERNELS_VARIABLE]!r} is not one of "
            f"{list(_KERNEL_CHOICES)}. Unset it, or set {KERNELS_VARIABLE}=numpy to run "
            "the numpy kernels."
        )
    if choice == "numpy":
        return None
    module = _compiled()
    if module is None and choice == "numba":
        raise ImportError(
            f"{KERNELS_VARIABLE}=numba, but numba cannot be imported. Install it "
            f"(pip install numba), or unset {KERNELS_VARIABLE} to run the numpy kernels."
        )
    return module


def add_to_diagonal(a, value):
    """``a[..., i, i] += value`` in place; returns ``a``."""
    n = a.shape[-1]
    a.reshape(a.shape[:-2] + (n * n,))[..., :: n + 1] += value
    return a


def flip(a):
    """The matrix with rows and columns reversed (turns lower into upper Cholesky)."""
    return a[::-1, ::-1]


class CovarianceModel(abc.ABC):
    """Everything that depends on the covariance type.

    ``n_components`` is k, ``n_features`` is d. Arrays follow scikit-learn's shapes
    (:meth:`shape`). ``ws`` is a :class:`daskgmm.kernels.Workspace`: ``ws(name, shape)``
    returns a reusable scratch buffer of the rows' dtype. Rows ``X`` are float64, or
    float32 for a float32 E-step (``means`` and ``precisions_cholesky`` given to the
    E-step and statistics methods are then float32 too), already shifted by the
    engine's centre; ``means`` are in the same coordinates.
    """

    name: str

    # ------------------------------------------------------------------ shapes

    @abc.abstractmethod
    def shape(self, n_components, n_features) -> tuple:
        """Shape of ``covariances_``, ``precisions_`` and ``precisions_cholesky_``."""

    @abc.abstractmethod
    def n_covariance_parameters(self, n_components, n_features) -> float:
        """Free parameters of the covariances (as scikit-learn counts them)."""

    # ------------------------------------------------------------------ E-step

    @abc.abstractmethod
    def log_det_cholesky(self, precisions_cholesky, n_features):
        """log det of each precision's Cholesky factor (= -0.5 log det covariance)."""

    @abc.abstractmethod
    def squared_mahalanobis(self, X, means, precisions_cholesky, ws):
        """(x_i - mu_k)^T P_k (x_i - mu_k), shape (n_rows, k), in ``ws("mahalanobis")``."""

    # -------------------------------------------------------------- statistics

    @abc.abstractmethod
    def second_moment_shape(self, n_components, n_features) -> tuple:
        """Shape of the second-moment statistic ``s2``."""

    @abc.abstractmethod
    def second_moment(self, X, resp, means, ws, after_e_step=False):
        """``s2``: second moments of the rows about each component's current mean,
        weighted by the responsibilities ``resp`` (n_rows, k). ``after_e_step``: the
        workspace still holds this block's E-step of :meth:`squared_mahalanobis`."""

    def fused_e_step(self, weights, means, precisions_cholesky, shift):
        """The compiled one-pass E-step of these parameters (an object with ``stats(X)``,
        ``rows(X)`` and ``score(X, what)``, see :class:`.compiled.OnePass`), or None: the
        caller runs the numpy path. Only the variance types have one."""
        return None

    def feature_precisions(self, precisions_cholesky, n_components, n_features):
        """The precision of each feature, (k, d), when the features are independent
        given the component (the variance types; rows with missing values then need no
        factorisation, see :mod:`daskgmm.missing`), else None."""
        return None

    # ------------------------------------------------------------------ M-step

    @abc.abstractmethod
    def covariances(self, stats, nk, means, current_means, reg_covar):
        """Covariances from the statistics (``stats.nk``, ``stats.s1``, ``stats.s2``
        centred on ``current_means``), for the new ``means`` and guarded counts ``nk``,
        with ``reg_covar`` added to the variances."""

    # ------------------------------------------------------------- conversions

    @abc.abstractmethod
    def precisions_cholesky(self, covariances):
        """Cholesky factor of the precision; :class:`CovarianceError` naming the
        component when a covariance is not positive definite."""

    @abc.abstractmethod
    def conditional_stds(self, precisions_cholesky):
        """Per component (rows; one row for 'tied') the standard deviation of each
        feature given the features before it: 1 / (diagonal of the precision factor). A
        covariance is ill-defined when one of them is at the rounding level of the data.
        (Not the variances: their squares overflow or underflow for data beyond 1e154.)"""

    @abc.abstractmethod
    def precisions_cholesky_from_precisions(self, precisions):
        """Upper-triangular U with precision = U U^T (scikit-learn's convention)."""

    @abc.abstractmethod
    def precisions(self, precisions_cholesky):
        """Precisions from their Cholesky factors."""

    @abc.abstractmethod
    def covariances_from_precisions(self, precisions):
        """Covariances from precisions (for a model that never ran an M-step)."""

    # --------------------------------------------------------------- checks

    @abc.abstractmethod
    def check_precisions(self, precisions, n_components, n_features):
        """Raise scikit-learn's ``ValueError`` when user-given precisions have the wrong
        shape or are not positive (definite)."""

    # ---------------------------------------------------------------- sampling

    @abc.abstractmethod
    def sample(self, rng, means, covariances, counts):
        """``counts[k]`` rows from each component (float64), stacked in component
        order, drawn from ``rng`` (a ``RandomState``) exactly as scikit-learn draws
        them, but for the covariance matrices of a float32 model ('full', 'tied'), taken
        as float64: scikit-learn hands them to numpy's ``multivariate_normal`` as
        float32, whose factorisation then differs in the last float32 digits and warns
        that they are not positive semi-definite."""

    # ----------------------------------------------------------------- helpers

    def check_shape(self, precisions, n_components, n_features):
        shape = self.shape(n_components, n_features)
        if precisions.shape != shape:
            raise ValueError(
                f"The parameter '{self.name} precision' should have the shape of {shape}, "
                f"but got {precisions.shape}"
            )

    def __repr__(self):
        return f"<covariance type {self.name!r}>"


class MatrixModel(CovarianceModel):
    """The types whose covariances are matrices ('full', 'tied'): the statistic is the
    responsibility-weighted outer products about each component's mean."""

    def second_moment_shape(self, n_components, n_features):
        return (n_components, n_features, n_features)

    def second_moment(self, X, resp, means, ws, after_e_step=False):
        return outer_products(X, resp, means, ws)

    def covariances_from_precisions(self, precisions):
        return np.linalg.inv(precisions)

    def conditional_stds(self, precisions_cholesky):
        mats = precisions_cholesky if precisions_cholesky.ndim == 3 else precisions_cholesky[None]
        return 1.0 / np.diagonal(mats, axis1=1, axis2=2)


class VarianceModel(CovarianceModel):
    """The types whose covariances are variances ('diag', 'spherical'): precisions are
    1 / variance and their Cholesky factors the square roots; the statistic is the
    responsibility-weighted squares about each mean, one per feature."""

    def second_moment_shape(self, n_components, n_features):
        return (n_components, n_features)

    def second_moment(self, X, resp, means, ws, after_e_step=False):
        return squares_statistic(X, resp, means, ws, after_e_step)

    def precisions_cholesky(self, covariances):
        return positive_variances(covariances, self.name)

    def fused_e_step(self, weights, means, precisions_cholesky, shift):
        fused = fused_module()
        if fused is None:
            return None
        n_features = means.shape[1]
        factors = np.broadcast_to(
            precisions_cholesky.reshape(len(precisions_cholesky), -1), means.shape)
        # as daskgmm.kernels.estimate_weighted_log_prob
        const = (self.log_det_cholesky(precisions_cholesky, n_features)
                 - 0.5 * n_features * math.log(2 * math.pi) + np.log(weights))
        return fused.OnePass(*(np.ascontiguousarray(a, dtype=np.float64)
                               for a in (shift, means, factors, const)))

    def feature_precisions(self, precisions_cholesky, n_components, n_features):
        return np.broadcast_to(
            (precisions_cholesky**2).reshape(n_components, -1), (n_components, n_features))

    def precisions_cholesky_from_precisions(self, precisions):
        return np.sqrt(precisions)

    def precisions(self, precisions_cholesky):
        return precisions_cholesky**2

    def covariances_from_precisions(self, precisions):
        return 1.0 / precisions

    def conditional_stds(self, precisions_cholesky):
        return 1.0 / precisions_cholesky.reshape(len(precisions_cholesky), -1)

    def check_precisions(self, precisions, n_components, n_features):
        self.check_shape(precisions, n_components, n_features)
        check_positive(precisions, self.name)

    def sample(self, rng, means, covariances, counts):
        n_features = means.shape[1]
        return np.vstack([
            mean + rng.standard_normal(size=(n, n_features)) * np.sqrt(cov)
            for mean, cov, n in zip(means, covariances, counts, strict=True)
        ])


def check_symmetric_positive_definite(mats, covariance_type):
    for i, mat in enumerate(mats):
        if not (np.allclose(mat, mat.T) and np.all(np.linalg.eigvalsh(mat) > 0.0)):
            raise ValueError(
                f"'{covariance_type} precision' should be symmetric, positive-definite "
                f"(matrix {i} is not)"
            )


def check_positive(precisions, covariance_type):
    if np.any(precisions <= 0.0):
        raise ValueError(f"'{covariance_type} precision' should be positive")


def centred_squares(X, means, ws):
    """(x_i - mu_k)**2 in a (k, n_features, n_rows) buffer ``ws('D2')``: exact centring
    (each mean subtracted before squaring). Kept for the statistics of the same block."""
    n_components, n_features = means.shape
    D2 = ws("D2", (n_components, n_features, X.shape[0]))
    XT = ws("XT", (n_features, X.shape[0]))
    np.copyto(XT, X.T)
    np.subtract(XT[None, :, :], means[:, :, None], out=D2)
    np.multiply(D2, D2, out=D2)
    return D2


def weighted_squares(D2, weights, ws):
    """sum_d weights[k, d] * D2[k, d, n] as an (n, k) array in ``ws('mahalanobis')``."""
    n_components, _, n = D2.shape
    outT = ws("mahalanobisT", (n_components, n))
    for k in range(n_components):
        np.dot(weights[k], D2[k], out=outT[k])
    out = ws("mahalanobis", (n, n_components))
    np.copyto(out, outT.T)
    return out


def refine_overflowed(out, X, means, whiten):
    """``out``, squared distances (n_rows, k) from a fast path, with the entries that
    overflowed there (inf, or NaN from inf - inf) recomputed by whitening the difference
    before squaring: ``whiten(k, x - mu_k)`` is its product with component k's precision
    factor. The fast paths square (x - mu) or multiply x by the factor before
    subtracting, so they overflow for rows and means beyond ~1e154 in whitened units even
    when the distance is a normal float; after this an entry is inf only when the
    distance itself exceeds float64. Returns ``out``."""
    bad = ~np.isfinite(out)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        for k in range(means.shape[0]):
            y = whiten(k, X[rows] - means[k])
            out[rows, k] = np.einsum("nd,nd->n", y, y)
    return out


def refine_statistic(s2, X, resp, means, moment):
    """``s2`` (one statistic per component, first axis) with the components whose sum
    overflowed recomputed over the rows they weigh only: a row with responsibility 0
    adds 0 even when its squared distance overflows (the fast paths make 0 * inf = NaN
    of it). ``moment(diff, r)`` is the weighted sum of one component's rows. After this a
    component's statistic is inf or NaN only when its own rows overflow."""
    bad = np.flatnonzero(~np.isfinite(s2.reshape(len(s2), -1)).all(axis=1))
    for k in bad:
        used = resp[:, k] > 0
        s2[k] = moment(X[used] - means[k], resp[used, k])
    return s2


def squares_statistic(X, resp, means, ws, after_e_step):
    """sum_i r_ik (x_i - mu_k)**2, shape (k, n_features); reuses the E-step's centred
    squares when ``after_e_step``."""
    n_components, n_features = means.shape
    if after_e_step:
        D2 = ws("D2", (n_components, n_features, X.shape[0]))
    else:
        D2 = centred_squares(X, means, ws)
    n = D2.shape[2]
    respT = ws("respT", (n_components, n))
    np.copyto(respT, resp.T)
    s2 = np.empty((n_components, n_features), dtype=X.dtype)
    for k in range(n_components):
        np.dot(D2[k], respT[k], out=s2[k])
    return refine_statistic(s2, X, resp, means, lambda diff, r: r @ (diff * diff))


def outer_products(X, resp, means, ws):
    """sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T, shape (k, d, d) ('full' and 'tied')."""
    # Features-by-rows layout: each product is (d x B) @ (B x d) over contiguous rows.
    n_components, n_features = means.shape
    n = X.shape[0]
    s2 = np.empty((n_components, n_features, n_features), dtype=X.dtype)
    XT = ws("XT", (n_features, n))
    np.copyto(XT, X.T)
    respT = ws("respT", (n_components, n))
    np.copyto(respT, resp.T)
    diff = ws("diff", (n_features, n))
    weighted = ws("weighted", (n_features, n))
    for k in range(n_components):
        np.subtract(XT, means[k][:, None], out=diff)
        np.multiply(diff, respT[k], out=weighted)
        np.matmul(diff, weighted.T, out=s2[k])
    return refine_statistic(s2, X, resp, means, lambda diff, r: (diff * r[:, None]).T @ diff)


def scatter_matrices(stats, means, current_means):
    """Weighted scatter about the new ``means`` from second moments ``stats.s2`` centred
    on ``current_means``: s2 - a d^T - d a^T + N d d^T with a = sum r (x - mu),
    d = m - mu (no E[x^2] - mu^2 cancellation)."""
    n = stats.nk
    a = stats.s1 - n[:, None] * current_means
    d = means - current_means
    outer_ad = a[:, :, None] * d[:, None, :]
    return (
        stats.s2
        - outer_ad
        - outer_ad.transpose(0, 2, 1)
        + n[:, None, None] * d[:, :, None] * d[:, None, :]
    )


def scatter_diagonals(stats, means, current_means):
    """Per-feature weighted scatter about the new ``means`` (the diagonal of
    :func:`scatter_matrices`) from ``stats.s2 = sum r (x - mu)**2``."""
    n = stats.nk[:, None]
    a = stats.s1 - n * current_means
    d = means - current_means
    return stats.s2 - 2.0 * a * d + n * d * d


def cholesky_precisions(covs, covariance_type, per_component):
    """Upper Cholesky factors of the inverses of the matrices ``covs`` (k, d, d)."""
    n_features = covs.shape[-1]
    out = np.empty_like(covs)
    eye = np.eye(n_features)
    for k, cov in enumerate(covs):
        try:
            cov_chol = linalg.cholesky(cov, lower=True)
        except linalg.LinAlgError:
            raise CovarianceError(
                ill_defined_message(k if per_component else None, covariance_type)
            ) from None
        out[k] = linalg.solve_triangular(cov_chol, eye, lower=True).T
    return out


def positive_variances(covariances, covariance_type):
    """1 / sqrt(variances); :class:`CovarianceError` naming the first component with a
    variance that is not positive."""
    if np.any(covariances <= 0.0):
        bad = int(np.flatnonzero(np.ravel(covariances <= 0.0))[0])
        if covariances.ndim == 2:
            bad //= covariances.shape[1]
        raise CovarianceError(ill_defined_message(bad, covariance_type))
    return 1.0 / np.sqrt(covariances)
