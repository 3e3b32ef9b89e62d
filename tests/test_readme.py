"""The README's Python examples run as written, in order, on the demo data.

They share one namespace (as in one notebook), run from a directory holding the data of
``daskgmm demo-data`` (smaller here), and their results are checked against scipy.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import zarr
from numpy.testing import assert_allclose
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(text):
    return re.findall(r"^ *```python\n(.*?)^ *```", text, flags=re.DOTALL | re.MULTILINE)


def test_readme_examples_run_as_written(tmp_path, monkeypatch, capsys):
    from daskgmm_pipelines.demo_data import write_demo_data

    monkeypatch.chdir(tmp_path)
    write_demo_data("demo-data", n_samples=20_000, n_features=6, n_components=5, seed=0)
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 6
    namespace = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        code = "\n".join(line[2:] if line.startswith("  ") and not block.startswith(" ")
                         else line for line in block.splitlines())
        exec(compile(code, f"README.md python block {i}", "exec"), namespace)  # noqa: S102

    gm = namespace["gm"]  # the model the examples fitted, loaded and thresholded
    X = zarr.open_group("demo-data/demo.zarr", mode="r")["X"][:]
    covariances = gm.covariances_  # full
    oracle = logsumexp([np.log(w) + multivariate_normal(m, c).logpdf(X) for w, m, c in
                        zip(gm.weights_, gm.means_, covariances, strict=True)], axis=0)
    published = np.asarray(
        zarr.open_group(namespace["daskgmm"].latest_scores("demo-data/example-scores.zarr"),
                        mode="r")["log_density"][:])
    assert_allclose(published, oracle, rtol=1e-9)
    assert namespace["sel"].best_.n_components >= 2
    assert "em" in capsys.readouterr().out  # the progress example printed its events
