"""The EM engine: a batch of candidate mixtures advanced together, one data pass per iteration.

Each pass is ONE ``compute`` (:func:`daskgmm.passes.data_pass`): every row chunk goes
through a pure-numpy kernel that returns small per-candidate statistics; these are
merged by an associative ``combine`` in a tree of fan-in ``split_every`` and the M-step
runs on the client on the small result. Candidates that converge leave the batch, so a
batch of restarts (or of model-selection candidates) reads each chunk once per
iteration of the slowest one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import kernels, passes
from .kernels import Params
from .mixture import FitSummary, Mixture
from .progress import CandidateProgress, PassCounter
from .sources import Dataset

logger = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One model being fitted: its parameters and EM history.

    ``label`` names it in logs and progress events (default: 'init <tag>').
    ``lower_bound`` is the mean log-likelihood per row from the latest E-step (with
    sample weights, the weighted mean: sum_i w_i log p(x_i) / sum_i w_i); ``params``
    are the parameters after the latest M-step (as in scikit-learn). ``seconds``: the
    measured compute time of its own E-step and statistics, summed over every chunk of
    every pass it took part in (:class:`daskgmm.passes.TimedStats`); candidates sharing
    a pass each count only their own work.
    """

    params: Params
    tag: object = None
    label: str = ""
    lower_bound: float = -np.inf
    lower_bounds: list = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    done: bool = False
    seconds: float = 0.0
    error: Exception | None = None
    n_incomplete: int = 0  # rows holding NaN in the latest pass

    def __post_init__(self):
        self.label = self.label or f"init {self.tag}"


def candidate_label(n_components: int, covariance_type: str, init: int = 0,
                    n_init: int = 1) -> str:
    """How logs and progress events name a candidate: 'k=3 full', and 'k=3 full, init 1'
    when it is one of ``n_init > 1`` restarts."""
    label = f"k={n_components} {covariance_type}"
    return label if n_init == 1 else f"{label}, init {init}"


@dataclass
class EMResult:
    candidates: list
    n_passes: int
    stopped: bool = False  # the progress callback asked to stop


def run_em(
    dataset: Dataset,
    candidates: list[Candidate],
    *,
    tol: float,
    max_iter: int,
    reg_covar: float,
    split_every: int = 8,
    counter: PassCounter | None = None,
    on_pass: Callable | None = None,
    raise_errors: bool = True,
) -> EMResult:
    """Advance every candidate with EM until it converges or reaches ``max_iter``.

    Each iteration is one data pass for all active candidates, counted by ``counter``
    (whose callback hears of each pass and may stop EM by returning True). A candidate
    whose M-step fails (a covariance that is not positive definite) raises, or with
    ``raise_errors=False`` leaves the batch with ``error`` set. ``on_pass(candidates,
    n_passes)`` is called after each pass the callback let go on (for checkpoints).
    """
    counter = counter if counter is not None else PassCounter()
    n_passes, stopped = 0, False
    for c in candidates:
        c.done = c.done or max_iter == 0
    while True:
        active = [c for c in candidates if not c.done]
        if not active:
            break
        stats = passes.data_pass(
            dataset, passes.em_chunk, ([c.params for c in active],), split_every=split_every
        )
        n_passes += 1
        passes.check_total_weight(dataset, stats[0].weight, stats[0].n_incomplete)
        changes = []
        for c, s in zip(active, stats, strict=True):
            c.seconds += s.seconds
            c.n_incomplete = s.n_incomplete
            prev = c.lower_bound
            c.lower_bound = s.log_likelihood / s.weight
            c.lower_bounds.append(c.lower_bound)
            c.n_iter += 1
            change = c.lower_bound - prev
            changes.append(change)
            try:
                with passes.one_blas_thread():  # small matrices: threads only cost
                    c.params = kernels.m_step(s, c.params, reg_covar)
            except kernels.CovarianceError as exc:
                if raise_errors:
                    raise
                c.error, c.done = exc, True
                continue
            logger.debug("%s: iteration %d, mean log-likelihood %.8f, change %.3g", c.label,
                         c.n_iter, c.lower_bound, change)
            if abs(change) < tol:
                c.converged = True
            c.done = c.converged or c.n_iter >= max_iter
        best = max(zip(active, changes, strict=True), key=lambda a: a[0].lower_bound)
        stopped = counter.done(
            "em", n_iter=best[0].n_iter, max_iter=max_iter,
            active=sum(not c.done for c in candidates), n_candidates=len(candidates),
            log_likelihood=best[0].lower_bound,
            change=best[1],
            candidates=tuple(
                CandidateProgress(c.label, c.n_iter, c.lower_bound,
                                  ch, c.converged, c.done,
                                  c.seconds, None if c.error is None else str(c.error))
                for c, ch in zip(active, changes, strict=True)),
        )
        if stopped:  # not checkpointed: a retry must meet the same callback again
            logger.info("EM stopped by its progress callback after iteration %d",
                        best[0].n_iter)
            for c in candidates:
                c.done = True
            break
        if on_pass is not None:
            on_pass(candidates, n_passes)
    return EMResult(candidates, n_passes, stopped)


def best_candidate(candidates: list[Candidate]) -> Candidate:
    """The restart a fit keeps, as scikit-learn: the highest lower bound; with
    ``max_iter=0`` (no iteration ran) the last initialisation."""
    best, max_lb = candidates[-1], -np.inf
    for c in candidates:
        if c.n_iter == 0:
            best = c
        elif c.lower_bound > max_lb or max_lb == -np.inf:
            best, max_lb = c, c.lower_bound
    return best


def fitted(candidate: Candidate, *, n_samples: int, n_passes: int, seconds: float,
           resumed_iteration: int = 0, dtype=np.float64) -> tuple[Mixture, FitSummary]:
    """The fitted model an EM candidate stands for: its mixture (user coordinates, its
    arrays in ``dtype``: the data's, see :func:`daskgmm.kernels.data_dtype`) and what its
    fit reports (no iteration ran: a lower bound of -inf, as scikit-learn)."""
    return Mixture.from_params(candidate.params).astype(dtype), FitSummary(
        n_iter=candidate.n_iter, converged=candidate.converged,
        lower_bound=candidate.lower_bound if candidate.n_iter > 0 else -np.inf,
        lower_bounds=list(candidate.lower_bounds), n_samples=n_samples,
        n_passes=n_passes, seconds=seconds, resumed_iteration=resumed_iteration,
        n_incomplete=candidate.n_incomplete,
    )
