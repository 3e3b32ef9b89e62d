"""Anomaly scores written back to storage, and read back.

:func:`write_scores` publishes one run's scores atomically as a new version of a score
location; :func:`latest_scores`, :func:`read_pointer` and :func:`read_scores` find and
read the current version; :func:`prune_scores` keeps the most recent runs. Each output
format is one module (``parquet_format.py``, ``zarr_format.py``) implementing
:class:`formats.ScoreFormat`.
"""

from .formats import SCORE_FIELDS
from .location import FORMATS, latest_scores, prune_scores, read_pointer, read_scores
from .publish import Publication, check_score_target, write_scores

__all__ = ["FORMATS", "SCORE_FIELDS", "Publication", "check_score_target", "latest_scores",
           "prune_scores", "read_pointer", "read_scores", "write_scores"]
