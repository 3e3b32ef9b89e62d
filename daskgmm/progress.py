"""Progress of long work: one event per pass over the data, delivered to a callback.

``fit``, ``select_model``, ``set_threshold`` and ``write_scores`` take ``callback=``, a
callable receiving a :class:`ProgressEvent` after every pass over the data that the
call makes. Progress bars, log lines and Prefect artifacts are callbacks; there is no
process-wide registry. A callback runs on the client, in the thread of the call; one
that raises stops the call. One that returns ``True`` after an EM pass stops EM there
(the model keeps the parameters of that pass; ``fit`` warns about nothing).

Every entry point counts its own passes with a :class:`PassCounter`, whose count is
what it reports (``n_passes_``, ``threshold_n_passes_``, ``Publication.n_passes``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PHASES = ("initialization", "em", "final", "threshold", "publish")
# How progress bars and log lines name the phases.
PHASE_NAMES = {"initialization": "initialisation", "em": "EM", "final": "final pass",
               "threshold": "threshold", "publish": "publish"}


@dataclass(frozen=True)
class CandidateProgress:
    """One candidate's state after an EM pass.

    ``label`` names it ('k=3 full', 'k=3 full, init 1'); ``done`` is True once it has
    left the batch: ``converged``, at ``max_iter``, or failed (``error``). ``seconds``:
    the measured compute time of its own E-steps and statistics so far, summed over
    chunks (not a share of the passes' wall time).
    """

    label: str
    n_iter: int
    log_likelihood: float
    change: float
    converged: bool
    done: bool
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class ProgressEvent:
    """A pass over the data has finished.

    Attributes
    ----------
    phase : str
        'initialization' (the sample and the assignment pass), 'em' (one EM
        iteration of every active candidate), 'final' (``select_model`` scoring every
        candidate's final parameters), 'threshold' (the log-density sketch of
        ``set_threshold``), 'publish' (scoring and writing of ``write_scores``).
    n_passes : int
        Passes over the data this call has made, this one included (a fit resumed from
        a checkpoint counts the passes saved with it).
    n_iter, max_iter : int
        EM iteration just done by the active candidates (0 outside EM), and its bound.
    active, n_candidates : int
        Candidates still running after this pass, and in all.
    log_likelihood, change : float
        Best mean log-likelihood per row among the candidates that ran in this pass,
        and its change since that candidate's previous iteration (inf on a fresh
        candidate's first iteration, as scikit-learn reports it; NaN outside EM).
    seconds : float
        Since the call started.
    candidates : tuple of CandidateProgress
        After an EM pass, every candidate that ran in it.
    """

    phase: str
    n_passes: int
    n_iter: int = 0
    max_iter: int = 0
    active: int = 0
    n_candidates: int = 0
    log_likelihood: float = math.nan
    change: float = math.nan
    seconds: float = 0.0
    candidates: tuple = ()


@dataclass
class PassCounter:
    """Counts the passes of one library call and tells its callback about each.

    ``count`` starts at ``start`` (passes made before a resumed fit).
    """

    callback: Callable | None = None
    start: int = 0
    count: int = field(init=False)
    t0: float = field(init=False, default_factory=time.perf_counter)

    def __post_init__(self):
        self.count = self.start

    def done(self, phase: str, **fields) -> bool:
        """Count a pass of ``phase``; True when the callback asks to stop."""
        if phase not in PHASES:
            raise ValueError(f"unknown progress phase {phase!r}")
        self.count += 1
        if self.callback is None:
            return False
        event = ProgressEvent(phase, self.count, seconds=time.perf_counter() - self.t0,
                              **fields)
        return bool(self.callback(event))


class PassTotal:
    """Passes over the data made by a run of several library calls that report to one
    callback in turn (a fit, its threshold, the publication): ``total(event)`` is the
    number made so far, this one included.

    Each call counts its own passes; a new call is recognised by its count or its clock
    starting over (a fit resumed from a checkpoint counts the passes saved with it).
    """

    def __init__(self):
        self.before = 0  # passes of the calls before the current one
        self.last = None

    def __call__(self, event: ProgressEvent) -> int:
        last = self.last
        if last is not None and (event.n_passes <= last.n_passes
                                 or event.seconds < last.seconds):
            self.before += last.n_passes
        self.last = event
        return self.before + event.n_passes


def fan_out(*callbacks) -> Callable | None:
    """One callback calling each of ``callbacks`` (None ones skipped) in order; it asks
    to stop when any of them does."""
    callbacks = [c for c in callbacks if c is not None]
    if not callbacks:
        return None
    if len(callbacks) == 1:
        return callbacks[0]

    def call(event):
        return any([bool(c(event)) for c in callbacks])

    return call


class VerbosePrinter:
    """scikit-learn's ``verbose`` output of a fit, from its progress events: the
    initialisations, every ``interval``-th iteration (``verbose >= 2``: with its time and
    change) and how each initialisation ended."""

    def __init__(self, verbose, interval, n_init):
        self.verbose, self.interval, self.n_init = verbose, interval, n_init
        self.last = {}

    def start(self):
        """Before EM: the initialisations (all advance together)."""
        if self.verbose:
            for i in range(self.n_init):
                print(f"Initialization {i}")

    def __call__(self, event: ProgressEvent):
        if not self.verbose or event.phase != "em":
            return
        for c in event.candidates:
            self.last[c.label] = c
            if c.n_iter % self.interval:
                continue
            which = f"Initialization {_restart(c.label)}: " if self.n_init > 1 else ""
            if self.verbose == 1:
                print(f"  {which}Iteration {c.n_iter}")
            else:
                print(f"  {which}Iteration {c.n_iter}\t time lapse {c.seconds:.5f}s\t "
                      f"ll change {c.change:.5f}")

    def end(self):
        """How each initialisation ended (after the fit)."""
        if not self.verbose:
            return
        for label, c in self.last.items():
            msg = "converged" if c.converged else "did not converge"
            which = f" {_restart(label)}" if len(self.last) > 1 else ""
            if self.verbose == 1:
                print(f"Initialization{which} {msg}.")
            else:
                print(f"Initialization{which} {msg}. time lapse {c.seconds:.5f}s\t lower "
                      f"bound {c.log_likelihood:.5f}.")


def _restart(label):
    """The restart number in a label ('k=3 full, init 1' or 'init 1')."""
    return label.rpartition("init ")[2]
