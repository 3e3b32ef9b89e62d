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

Sample weights
--------------
:class:`WeightedRankSketch` is the same summary of values with frequency weights: a
value of weight ``w`` counts as ``w`` rows, and rows of weight 0 are left out. Each chunk
keeps its sorted values at evenly spaced cumulative weights, with the weight of its rows
sorted before each kept value and up to it; the bounds above hold with weights in place
of row counts (at most 1/2048 of the total weight off, plus the largest kept weight per
chunk). The quantile at level ``q`` is read at position ``q (W - 1)`` (``W`` the total
weight) of the values laid out by weight: a value of weight ``w`` whose predecessors
weigh ``C`` spans the positions ``C`` to ``C + w - 1``, with linear interpolation between
neighbours. So for integer weights, when every chunk is kept whole, it equals
``numpy.quantile(numpy.repeat(values, weights))``; a weight below 1 gives its value a
single position.
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


class _ChunkSketch:
    """What :class:`RankSketch` and :class:`WeightedRankSketch` share: per chunk, kept
    values in increasing order, each with the weight of the chunk's rows sorted before it
    (``below``) and up to and including it (``upto``), and the chunk's total weight (a row
    weighs 1 in a :class:`RankSketch`). From these come the bounds on the weight at or
    below any value and the weight each kept value stands for; the subclasses differ in
    how they count (:meth:`_chunks`) and in how a quantile is read off."""

    # the empty sketch, in error messages
    _nothing = "zero rows"
    # whether _cumulative also keeps each kept value's own weight (for quantile)
    _own_weights = False

    def _chunks(self):
        """Per chunk, ``(values, below, upto, total)``."""
        raise NotImplementedError

    def _is_empty(self) -> bool:
        raise NotImplementedError

    @property
    def n_samples(self) -> int:
        """Rows summarised (of positive weight, with sample weights)."""
        return int(sum(self.counts))

    def _checked_levels(self, levels):
        levels = np.atleast_1d(np.asarray(levels, dtype=np.float64))
        if np.any((levels < 0) | (levels > 1)):
            raise ValueError(f"Quantile levels must lie in [0, 1]; got {levels.tolist()}.")
        if self._is_empty():
            raise ValueError(f"Cannot compute quantiles of {self._nothing}.")
        return levels

    def _cumulative(self):
        """Sorted kept values with bounds on the weight of the rows ``<=`` each of them,
        the part of that uncertainty that comes from the value's own chunk, and (when
        ``_own_weights``) the value's own weight, else None (computed once per sketch: it
        sorts every kept value)."""
        if self._cumulative_cache is None:
            self._cumulative_cache = self._compute_cumulative()
        return self._cumulative_cache

    def _compute_cumulative(self):
        values, d_lo, d_hi, own, own_w = [], [], [], [], []
        for v, below, upto, total in self._chunks():
            # weight <= t, for t in [v_j, v_{j+1}): at least upto_j, at most below_{j+1}
            lo, hi = upto, np.append(below[1:], total)
            values.append(v)
            d_lo.append(np.diff(lo, prepend=0))
            d_hi.append(np.diff(hi, prepend=0))
            own.append(hi - lo)
            if self._own_weights:
                own_w.append(upto - below)
        values = np.concatenate(values)
        order = np.argsort(values, kind="stable")
        lower = np.cumsum(np.concatenate(d_lo)[order])
        upper = np.cumsum(np.concatenate(d_hi)[order])
        own_w = np.concatenate(own_w)[order] if self._own_weights else None
        return values[order], lower, upper, np.concatenate(own)[order], own_w

    def fraction_at_or_below(self, t):
        """Lowest and highest possible fraction of the rows (of the total weight, with
        sample weights) ``<= t``, shape (len(t), 2)."""
        if self._is_empty():
            raise ValueError(f"Cannot compute fractions of {self._nothing}.")
        values, lower, upper, _, _ = self._cumulative()
        return self._bounds(np.atleast_1d(np.asarray(t, dtype=np.float64)), values, lower,
                            upper)

    def _bounds(self, t, values, lower, upper):
        idx = np.searchsorted(values, t, side="right") - 1
        lo = np.where(idx >= 0, lower[np.maximum(idx, 0)], 0)
        hi = np.where(idx >= 0, upper[np.maximum(idx, 0)], 0)
        return np.stack([lo, hi], axis=1) / self.total_weight

    def weighted_values(self):
        """Kept values with the number of rows (the weight, with sample weights) each
        stands for (for histograms)."""
        if not self.values:
            return np.empty(0), np.empty(0)
        weights = [np.diff(np.append(below, total))
                   for _, below, _, total in self._chunks()]
        return np.concatenate(self.values), np.concatenate(weights).astype(np.float64)

    def max_rank_error(self) -> float:
        """Largest possible error, as a fraction of the rows (of the total weight, with
        sample weights), of any rank read off."""
        total = self.total_weight
        gaps = sum(float(np.max(np.append(below[1:], t) - upto, initial=0))
                   for _, below, upto, t in self._chunks())
        return gaps / total if total else 0.0


@dataclass
class RankSketch(_ChunkSketch):
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

    def _chunks(self):
        # a kept value of rank r has r rows before it and r + 1 up to it
        return ((v, r, r + 1, n)
                for v, r, n in zip(self.values, self.ranks, self.counts, strict=True))

    def _is_empty(self) -> bool:
        return self.n_samples == 0

    @property
    def total_weight(self) -> int:
        """The rows summarised (each weighs 1)."""
        return self.n_samples

    def __add__(self, other: RankSketch) -> RankSketch:
        return RankSketch(
            self.values + other.values, self.ranks + other.ranks, self.counts + other.counts,
            self.log_likelihood + other.log_likelihood,
        )

    def quantile(self, levels):
        """Quantiles at ``levels`` in [0, 1] (numpy's 'linear' method when exact).

        Returns
        -------
        values : ndarray of float64
        bounds : ndarray of shape (len(levels), 2)
            For each returned value ``t``, the lowest and highest possible fraction of
            the rows that are ``<= t``.
        """
        levels = self._checked_levels(levels)
        n = self.n_samples
        values, lower, upper, own, _ = self._cumulative()
        # Estimated 0-based rank of each kept value: its rank in its own chunk is known
        # (the rows of the gap after it are above it), the other chunks' counts are taken
        # at the middle of their bounds. Exact (0, 1, 2, ...) when every row is kept.
        rank = lower - 1.0 + 0.5 * (upper - lower - own)
        q = np.interp(levels * (n - 1), rank, values)
        return q, self._bounds(q, values, lower, upper)


def combine_sketches(parts) -> RankSketch:
    """Combine a list of sketches (or of lists of per-candidate sketches), all of one
    kind (:class:`RankSketch` or :class:`WeightedRankSketch`)."""
    if parts and isinstance(parts[0], list):
        return [combine_sketches(list(group)) for group in zip(*parts, strict=True)]
    if parts and isinstance(parts[0], WeightedRankSketch):
        return WeightedRankSketch(
            *([x for p in parts for x in getattr(p, name)]
              for name in ("values", "below", "upto", "totals", "counts")),
            sum((p.log_likelihood for p in parts), 0.0))
    return RankSketch(
        [v for p in parts for v in p.values], [r for p in parts for r in p.ranks],
        [c for p in parts for c in p.counts], sum((p.log_likelihood for p in parts), 0.0),
    )


@dataclass
class WeightedRankSketch(_ChunkSketch):
    """Sorted values of chunks with frequency weights, at known cumulative weights (see
    the module's notes): a value of weight ``w`` counts as ``w`` rows.

    Attributes
    ----------
    values : list of ndarray
        Per chunk, the kept values in increasing order (its first and last value of
        positive weight always kept).
    below, upto : list of ndarray of float64
        Per chunk, the weight of its rows sorted before each kept value, and up to and
        including it.
    totals : list of float
        Per chunk, its total weight.
    counts : list of int
        Per chunk, its number of rows of positive weight.
    log_likelihood : float
        Weighted sum of the summarised values, ``sum_i w_i v_i``.
    """

    values: list = field(default_factory=list)
    below: list = field(default_factory=list)
    upto: list = field(default_factory=list)
    totals: list = field(default_factory=list)
    counts: list = field(default_factory=list)
    log_likelihood: float = 0.0
    _cumulative_cache: tuple | None = field(default=None, init=False, repr=False,
                                            compare=False)

    _nothing = "zero rows (or of zero weight)"
    _own_weights = True

    @classmethod
    def from_values(cls, values, weights, n_points: int = N_POINTS) -> WeightedRankSketch:
        """The sketch of ``values`` with ``weights`` (finite, >= 0; same shape)."""
        values = np.asarray(values, dtype=np.float64).ravel()
        weights = np.asarray(weights, dtype=np.float64).ravel()
        keep = weights > 0
        values, weights = values[keep], weights[keep]
        n = values.shape[0]
        if n == 0:
            return cls()
        order = np.argsort(values, kind="stable")
        v, w = values[order], weights[order]
        upto = np.cumsum(w)
        total = float(upto[-1])
        if n <= n_points:
            idx = np.arange(n)
        else:  # the first value reaching each of n_points evenly spaced weights
            targets = np.linspace(0.0, total, n_points)
            idx = np.unique(np.minimum(np.searchsorted(upto, targets), n - 1))
            idx = np.union1d(idx, [0, n - 1])
        return cls([v[idx]], [upto[idx] - w[idx]], [upto[idx]], [total], [n],
                   float(np.dot(w, v)))

    def _chunks(self):
        return zip(self.values, self.below, self.upto, self.totals, strict=True)

    def _is_empty(self) -> bool:
        return not self.values

    @property
    def total_weight(self) -> float:
        return float(sum(self.totals))

    def __add__(self, other: WeightedRankSketch) -> WeightedRankSketch:
        return combine_sketches([self, other])

    def quantile(self, levels):
        """Weighted quantiles at ``levels`` in [0, 1] (see the module's notes).

        Returns
        -------
        values : ndarray of float64
        bounds : ndarray of shape (len(levels), 2)
            For each returned value ``t``, the lowest and highest possible fraction of
            the total weight on rows ``<= t``.
        """
        levels = self._checked_levels(levels)
        values, lower, upper, own, own_w = self._cumulative()
        # estimated weight up to each kept value (its own chunk's exact, the others' at
        # the middle of their bounds); the value spans positions upto - w to upto - 1
        upto = lower + 0.5 * (upper - lower - own)
        first = upto - own_w
        last = np.maximum(first, upto - 1.0)
        positions = np.maximum.accumulate(np.column_stack([first, last]).ravel())
        q = np.interp(levels * (self.total_weight - 1.0), positions, np.repeat(values, 2))
        return q, self._bounds(q, values, lower, upper)
