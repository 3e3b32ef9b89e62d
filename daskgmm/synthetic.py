"""Synthetic mixture data written chunk by chunk to Zarr (demo jobs, benchmarks, tests).

The data are generated one chunk at a time from seeds derived from ``(seed, chunk)``, so
any size can be written with bounded memory and the same arguments give the same bytes.
"""

from __future__ import annotations

import numpy as np
import zarr


def mixture_parameters(n_features, n_components, seed=0, separation=6.0):
    """Weights, means and covariance factors of a random, well separated mixture."""
    rng = np.random.default_rng([seed, 0])
    weights = rng.dirichlet(np.full(n_components, 5.0))
    means = rng.normal(0.0, separation, size=(n_components, n_features))
    factors = (
        rng.normal(size=(n_components, n_features, n_features)) * 0.3
        + np.eye(n_features)[None] * rng.uniform(0.5, 1.5, size=(n_components, 1, 1))
    )
    return weights, means, factors


def sample_mixture(n_samples, weights, means, factors, rng):
    """Rows and component labels drawn from the mixture."""
    labels = rng.choice(len(weights), size=n_samples, p=weights)
    noise = rng.standard_normal((n_samples, means.shape[1]))
    X = means[labels] + np.einsum("nd,nde->ne", noise, factors[labels])
    return X, labels


def write_mixture_zarr(
    path,
    n_samples,
    n_features,
    n_components,
    *,
    chunk_rows=250_000,
    seed=0,
    offset=0.0,
    anomaly_fraction=0.0,
    name="X",
    storage_options=None,
    overwrite=True,
):
    """Write ``n_samples`` rows from a random Gaussian mixture to a Zarr group at ``path``.

    The group holds the float64 array ``name`` (chunked by ``chunk_rows`` rows, one chunk
    across columns, Zarr's default compression) and ``labels`` (int32 component of each
    row, -1 for a planted anomaly). ``anomaly_fraction`` of the rows are replaced by
    points drawn far from every component. Returns the ``zarr.Group``.
    """
    weights, means, factors = mixture_parameters(n_features, n_components, seed)
    group = zarr.open_group(
        store=str(path), mode="w" if overwrite else "w-", storage_options=storage_options
    )
    X = group.create_array(
        name, shape=(n_samples, n_features), chunks=(chunk_rows, n_features), dtype="f8"
    )
    labels = group.create_array("labels", shape=(n_samples,), chunks=(chunk_rows,), dtype="i4")
    scale = np.abs(means).max() + 10.0
    for i, start in enumerate(range(0, n_samples, chunk_rows)):
        stop = min(start + chunk_rows, n_samples)
        rng = np.random.default_rng([seed, 1, i])
        block, lab = sample_mixture(stop - start, weights, means, factors, rng)
        if anomaly_fraction:
            planted = rng.random(stop - start) < anomaly_fraction
            block[planted] = rng.uniform(-2 * scale, 2 * scale, size=(planted.sum(), n_features))
            lab[planted] = -1
        X[start:stop] = block + offset
        labels[start:stop] = lab
    group.attrs.update({
        "generator": "daskgmm.synthetic.write_mixture_zarr",
        "n_components": n_components,
        "seed": seed,
        "anomaly_fraction": anomaly_fraction,
    })
    return group
