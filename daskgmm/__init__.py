"""daskgmm: Gaussian mixture models fitted by EM on data larger than memory, on Dask.

The public names are imported on first use, so that a Dask worker running daskgmm's
tasks (which need only the maths, the passes and the readers) does not import the
estimator's dependencies: scikit-learn, pandas and the rest cost a worker about 200 MiB.
"""

import importlib
import importlib.util

from ._version import __version__

# public name -> module that defines it
_NAMES = {
    "Checkpoint": "checkpoint",
    "ChunkBudget": "sources",
    "ChunkMemoryWarning": "sources",
    "ClusterLostError": "passes",
    "Dataset": "sources",
    "DamagedSourceError": "sources",
    "MissingChunksError": "sources",
    "ModelFileError": "model_file",
    "SourceChangedError": "sources",
    "SourceFingerprint": "sources",
    "StorageFullError": "_storage",
    "StorageUnreachableError": "_storage",
    "FitSummary": "mixture",
    "GaussianMixture": "estimator",
    "Mixture": "mixture",
    "ModelSelection": "selection",
    "ModelStore": "model_store",
    "ProgressEvent": "progress",
    "Publication": "scores",
    "SCORE_DTYPE": "kernels",
    "as_dataset": "sources",
    "chunk_budget": "sources",
    "check_score_target": "scores",
    "latest_scores": "scores",
    "load": "estimator",
    "model_id": "estimator",
    "prune_scores": "scores",
    "read_pointer": "scores",
    "read_scores": "scores",
    "select_model": "selection",
    "source_fingerprint": "sources",
    "write_scores": "scores",
}

__all__ = [*sorted(_NAMES), "__version__"]


def __getattr__(name):
    module = _NAMES.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'daskgmm' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
