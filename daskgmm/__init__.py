"""daskgmm: Gaussian mixture models fitted by EM on data larger than memory, on Dask."""

from ._version import __version__
from .estimator import GaussianMixture
from .model_file import load
from .sources import Dataset, as_dataset

__all__ = ["GaussianMixture", "Dataset", "as_dataset", "load", "__version__"]
