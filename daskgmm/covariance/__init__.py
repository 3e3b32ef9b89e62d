"""The maths of each covariance type, one module per type (pure numpy and scipy).

Everything that depends on the covariance type lives in its module: parameter shapes,
free-parameter counts, the E-step's Mahalanobis distances and log-determinants, the
second-moment statistics, the M-step's covariances, precision/covariance conversions,
checks of user-given precisions, and sampling. :class:`CovarianceModel` (``_base.py``)
is the interface; :func:`get` returns the model of a type name.

=========== ====================================== ======================================
type        covariances_ / precisions_cholesky_    s2 statistic (centred on current means)
=========== ====================================== ======================================
'full'      (n_components, n_features, n_features)  sum_i r_ik (x_i-mu_k)(x_i-mu_k)^T
'tied'      (n_features, n_features)                as 'full', summed over k in the M-step
'diag'      (n_components, n_features)              sum_i r_ik (x_i-mu_k)**2
'spherical' (n_components,)                         as 'diag', averaged in the M-step
=========== ====================================== ======================================
"""

from __future__ import annotations

from . import diag, full, spherical, tied
from ._base import (
    CovarianceError,
    CovarianceModel,
    fused_module,
    ill_defined_message,
    overflow_message,
)

_MODELS = {m.MODEL.name: m.MODEL for m in (full, tied, diag, spherical)}

COVARIANCE_TYPES = tuple(_MODELS)


def get(covariance_type: str) -> CovarianceModel:
    """The :class:`CovarianceModel` of ``covariance_type``."""
    try:
        return _MODELS[covariance_type]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown covariance_type {covariance_type!r}; choose among "
            f"{list(COVARIANCE_TYPES)}."
        ) from None


def n_parameters(n_components, n_features, covariance_type) -> int:
    """Number of free parameters of a mixture, counted as scikit-learn does."""
    cov = get(covariance_type).n_covariance_parameters(n_components, n_features)
    return int(cov + n_features * n_components + n_components - 1)


__all__ = ["COVARIANCE_TYPES", "CovarianceError", "CovarianceModel", "fused_module", "get",
           "ill_defined_message", "n_parameters", "overflow_message"]
