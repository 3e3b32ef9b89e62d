"""daskgmm: Gaussian mixture models fitted by EM on data larger than memory, on Dask."""

from ._version import __version__
from .estimator import GaussianMixture
from .model_file import load
from .selection import ModelSelection, select_model
from .sources import Dataset, as_dataset

__all__ = [
    "GaussianMixture", "Dataset", "ModelSelection", "as_dataset", "load", "select_model",
    "__version__",
]
