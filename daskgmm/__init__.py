"""daskgmm: Gaussian mixture models fitted by EM on data larger than memory, on Dask."""

from ._version import __version__
from .checkpoint import Checkpoint
from .estimator import GaussianMixture, load, model_id
from .kernels import SCORE_DTYPE
from .mixture import FitSummary, Mixture
from .model_store import ModelStore
from .progress import ProgressEvent
from .scores import (
    Publication,
    check_score_target,
    latest_scores,
    prune_scores,
    read_pointer,
    read_scores,
    write_scores,
)
from .selection import ModelSelection, select_model
from .sources import Dataset, as_dataset

__all__ = [
    "Checkpoint", "Dataset", "FitSummary", "GaussianMixture", "Mixture", "ModelSelection",
    "ModelStore", "ProgressEvent", "Publication", "SCORE_DTYPE", "as_dataset",
    "check_score_target", "latest_scores", "load", "model_id", "prune_scores",
    "read_pointer", "read_scores", "select_model", "write_scores", "__version__",
]
