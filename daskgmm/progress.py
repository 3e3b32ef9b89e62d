"""Progress of long work, for progress bars and reports: process-wide observers.

An observer is a callable taking one dict. The EM engine reports each pass::

    {"event": "em-start", "max_iter": 100, "n_candidates": 8}
    {"event": "em-pass", "n_passes": 3, "max_iter": 100, "active": 5,
     "n_iter": 3, "lower_bound": -4.21, "change": 0.003}

``lower_bound`` and ``change`` are those of the best active candidate. Observers run on
the client, in the thread that runs the fit; an observer that raises stops the fit.
"""

from __future__ import annotations

import contextlib
import threading

_observers: list = []
_lock = threading.Lock()


@contextlib.contextmanager
def observe(fn):
    """Call ``fn(event)`` for every progress event while the block runs."""
    with _lock:
        _observers.append(fn)
    try:
        yield fn
    finally:
        with _lock:
            _observers.remove(fn)


def notify(event: dict):
    for fn in list(_observers):
        fn(event)
