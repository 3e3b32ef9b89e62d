"""Quantiles of a column too large for memory, with a guaranteed rank error (pure numpy).

Each chunk of values is summarised by a :class:`RankSketch`: its sorted values at
``n_points`` evenly spaced ranks (all of them when the chunk is that small), with the
ranks. Sketches combine by concatenation (associative, so they tree-reduce like the EM
statistics), and a quantile is read off the combined sketch.

Error bound
-----------
For any value ``t``, a chunk of ``n_c`` rows summarised at ranks ``r_0 = 0 < r_1 < ... <
r_last = n_c - 1`` places the number of its rows ``<= t`` between ``r_j + 1`` and
``r_{j+1}``, where ``r_j`` is the rank of the largest kept value ``<= t``. So over all
chunks the count of rows ``<= t`` is known within ``sum_c (r_{j+1} - r_j - 1) <
sum_c n_c / (n_points - 1)``: with the default 2049 points, the fraction of rows at or
below a returned quantile is off by at most ``1/2048`` (0.049 %) of the rows, plus one
row per chunk (each kept value's rank in its own chunk is exact; only the other chunks'
counts are estimated). A chunk of at most ``n_points`` rows is kept whole, and when every chunk
is, :meth:`RankSketch.quantile` equals ``numpy.quantile`` (linear interpolation). The
bounds actually reached are returned with every quantile, so callers can report them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

N_POINTS = 2049

# Values per model that a sketch pass may send to the client: up to this many rows, the
# quantiles are exact.
SKETCH_BUDGET = 1 << 22


def sketch_points(n_rows: int, n_total: int, budget: int | None = None) -> int:
    """Values a chunk of ``n_rows`` of ``n_total`` rows keeps: its share of ``budget``
    (default ``SKETCH_BUDGET``; so all its rows when ``n_total <= budget``), at least
    ``N_POINTS``."""
    budget = SKETCH_BUDGET if budget is None else budget
    return max(N_POINTS, -(-budget * n_rows // max(n_total, 1)))


@dataclass
class RankSketch:
    """Sorted values of chunks at known ranks.

    Attributes
    ----------
    values : list of ndarray
        Per chunk, the kept values in increasing order (rank 0 and the last rank always
        kept).
    ranks : list of ndarray of int64
        Per chunk, the 0-based ranks of ``values`` within the chunk.
    counts : list of int
        Per chunk, its number of rows.
    log_likelihood : float
        Sum of the summarised values (used when the values are log-densities).
    """

    values: list = field(default_factory=list)
    ranks: list = field(default_factory=list)
    counts: list = field(default_factory=list)
    log_likelihood: float = 0.0
    _cumulative_cache: tuple | None = field(default=None, init=False, repr=False,
                                            compare=False)

    @classmethod
    def from_values(cls, values, n_points: int = N_POINTS) -> RankSketch:
        v = np.sort(np.asarray(values, dtype=np.float64).ravel())
        n = v.shape[0]
        if n == 0:
            return cls()
        if n <= n_points:
            ranks = np.arange(n, dtype=np.int64)
        else:
            ranks = np.unique(np.round(np.linspace(0, n - 1, n_points)).astype(np.int64))
        return cls([v[ranks]], [ranks], [n], float(v.sum()))

    @property
    def n_samples(self) -> int:
        return int(sum(self.counts))

    def __add__(self, other: RankSketch) -> RankSketch:
        return RankSketch(
            self.values + other.values, self.ranks + other.ranks, self.counts + other.counts,
            self.log_likelihood + other.log_likelihood,
        )

    def _cumulative(self):
        """Sorted kept values with bounds on how many rows are ``<=`` each of them, and
        the part of that uncertainty that comes from the value's own chunk (computed
        once per sketch: it sorts every kept value)."""
        if self._cumulative_cache is None:
            self._cumulative_cache = self._compute_cumulative()
        return self._cumulative_cache

    def _compute_cumulative(self):
        values, d_lo, d_hi, own = [], [], [], []
        for v, r, n in zip(self.values, self.ranks, self.counts, strict=True):
            # rows <= t, for t in [v_j, v_{j+1}): at least r_j + 1, at most r_{j+1}
            lo = r + 1
            hi = np.append(r[1:], n)
            values.append(v)
            d_lo.append(np.diff(lo, prepend=0))
            d_hi.append(np.diff(hi, prepend=0))
            own.append(hi - lo)
        values = np.concatenate(values)
        order = np.argsort(values, kind="stable")
        lower = np.cumsum(np.concatenate(d_lo)[order])
        upper = np.cumsum(np.concatenate(d_hi)[order])
        return values[order], lower, upper, np.concatenate(own)[order]

    def quantile(self, levels):
        """Quantiles at ``levels`` in [0, 1] (numpy's 'linear' method when exact).

        Returns
        -------
        values : ndarray of float64
        bounds : ndarray of shape (len(levels), 2)
            For each returned value ``t``, the lowest and highest possible fraction of
            the rows that are ``<= t``.
        """
        levels = np.atleast_1d(np.asarray(levels, dtype=np.float64))
        if np.any((levels < 0) | (levels > 1)):
            raise ValueError(f"Quantile levels must lie in [0, 1]; got {levels.tolist()}.")
        n = self.n_samples
        if n == 0:
            raise ValueError("Cannot compute quantiles of zero rows.")
        values, lower, upper, own = self._cumulative()
        # Estimated 0-based rank of each kept value: its rank in its own chunk is known
        # (the rows of the gap after it are above it), the other chunks' counts are taken
        # at the middle of their bounds. Exact (0, 1, 2, ...) when every row is kept.
        rank = lower - 1.0 + 0.5 * (upper - lower - own)
        q = np.interp(levels * (n - 1), rank, values)
        return q, self._bounds(q, values, lower, upper)

    def fraction_at_or_below(self, t):
        """Lowest and highest possible fraction of the rows ``<= t``, shape (len(t), 2)."""
        if self.n_samples == 0:
            raise ValueError("Cannot compute fractions of zero rows.")
        values, lower, upper, _ = self._cumulative()
        return self._bounds(np.atleast_1d(np.asarray(t, dtype=np.float64)), values, lower,
                            upper)

    def _bounds(self, t, values, lower, upper):
        idx = np.searchsorted(values, t, side="right") - 1
        lo = np.where(idx >= 0, lower[np.maximum(idx, 0)], 0)
        hi = np.where(idx >= 0, upper[np.maximum(idx, 0)], 0)
        return np.stack([lo, hi], axis=1) / self.n_samples

    def weighted_values(self):
        """Kept values with the number of rows each stands for (for histograms)."""
        if not self.values:
            return np.empty(0), np.empty(0)
        weights = [np.diff(np.append(r, n)) for r, n in
                   zip(self.ranks, self.counts, strict=True)]
        return np.concatenate(self.values), np.concatenate(weights).astype(np.float64)

    def max_rank_error(self) -> float:
        """Largest possible error, as a fraction of the rows, of any rank read off."""
        n = self.n_samples
        gaps = sum(int(np.max(np.diff(np.append(r, c)) - 1, initial=0))
                   for r, c in zip(self.ranks, self.counts, strict=True))
        return gaps / n if n else 0.0


def combine_sketches(parts) -> RankSketch:
    """Combine a list of sketches (or of lists of per-candidate sketches)."""
    if parts and isinstance(parts[0], list):
        return [combine_sketches(list(group)) for group in zip(*parts, strict=True)]
    return RankSketch(
        [v for p in parts for v in p.values], [r for p in parts for r in p.ranks],
        [c for p in parts for c in p.counts], sum((p.log_likelihood for p in parts), 0.0),
    )
