"""Anomaly scores written back to storage, and read back.

:func:`write_scores` publishes one run's scores atomically as a new version of a score
location; :func:`latest_scores`, :func:`read_pointer` and :func:`read_scores` find and
read the current version; :func:`prune_scores` keeps the most recent runs. Each output
format is one module (``parquet_format.py``, ``zarr_format.py``, ``delta_format.py``) implementing
:class:`formats.ScoreFormat`, registered in ``location.FORMATS``.

Names are imported on first use: a worker writing score files imports the format
modules only, not the estimator (see :mod:`daskgmm`).
"""

import importlib

_NAMES = {
    "FORMATS": "location", "SCORE_FIELDS": "formats", "Publication": "publish",
    "check_score_target": "publish", "latest_scores": "location",
    "prune_scores": "location", "read_pointer": "location", "read_scores": "location",
    "write_scores": "publish",
}

__all__ = sorted(_NAMES)


def __getattr__(name):
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'daskgmm.scores' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
