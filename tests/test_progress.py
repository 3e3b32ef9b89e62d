"""One progress channel: events after every pass, each call counting its own passes."""

import numpy as np
import pytest

import daskgmm
from daskgmm import GaussianMixture
from daskgmm.progress import PassCounter, fan_out

from .conftest import make_blobs


def test_progress_events_from_em():
    X = make_blobs(2_000, 2, 3, seed=2)
    events = []
    gm = GaussianMixture(3, n_init=2, random_state=0).fit(X, callback=events.append)
    assert events[0].phase == "initialization" and events[0].n_passes == 1
    passes = [e for e in events if e.phase == "em"]
    assert [e.n_passes for e in events] == list(range(1, len(events) + 1))
    assert len(events) == gm.n_passes_ == len(passes) + 1
    assert passes[0].n_candidates == 2 and passes[0].max_iter == 100
    assert passes[-1].active == 0
    assert passes[-1].log_likelihood >= gm.lower_bound_ - 1e-12
    GaussianMixture(3, random_state=0).fit(X)
    assert len(events) == len(passes) + 1  # no events from a fit without the callback


def test_every_entry_point_counts_its_passes_and_tells_its_callback(tmp_path):
    import dask.array as da

    X = make_blobs(3_000, 2, 3, seed=3)
    lazy = da.from_array(X, chunks=(500, 2))
    events = []
    sel = daskgmm.select_model(lazy, [2, 3], ["full", "diag"], random_state=0,
                               callback=events.append, init_sample_size=1_000)
    phases = [e.phase for e in events]
    assert phases[:2] == ["initialization", "initialization"]  # a sample, then assignment
    assert phases[-1] == "final" and set(phases[2:-1]) == {"em"}
    assert len(events) == sel.n_passes_ == events[-1].n_passes
    assert max(e.n_candidates for e in events if e.phase == "em") == 4

    gm = sel.best_
    assert gm.threshold_n_passes_ == 0  # the threshold came from the final pass
    events.clear()
    gm.set_threshold(lazy, contamination=0.02, callback=events.append)
    assert [e.phase for e in events] == ["threshold"] and gm.threshold_n_passes_ == 1
    gm.set_threshold(threshold=-5.0, callback=events.append)  # no data: no pass
    assert gm.threshold_n_passes_ == 0 and len(events) == 1

    events.clear()
    pub = daskgmm.write_scores(gm, lazy, str(tmp_path / "s"), callback=events.append)
    assert [e.phase for e in events] == ["publish"] and pub.n_passes == 1


def test_a_callback_returning_true_stops_em_without_a_warning():
    from sklearn.exceptions import ConvergenceWarning

    X = make_blobs(2_000, 2, 3, seed=4)
    full = GaussianMixture(3, random_state=0, tol=0.0, max_iter=20)
    with pytest.warns(ConvergenceWarning):
        full.fit(X)
    assert full.n_iter_ == 20

    def stop_at_3(event):
        return event.phase == "em" and event.n_iter == 3

    stopped = GaussianMixture(3, random_state=0, tol=0.0, max_iter=20).fit(
        X, callback=stop_at_3)  # warnings are errors: no ConvergenceWarning here
    assert stopped.n_iter_ == 3 and not stopped.converged_
    assert stopped.n_passes_ == 4  # the assignment pass and 3 EM passes
    ref = GaussianMixture(3, random_state=0, tol=0.0, max_iter=3)
    with pytest.warns(ConvergenceWarning):
        ref.fit(X)
    np.testing.assert_array_equal(stopped.means_, ref.means_)


def test_fan_out_and_counter():
    seen = []
    both = fan_out(seen.append, None, lambda e: e.n_passes == 2)
    counter = PassCounter(both, start=5)
    assert counter.done("em", n_iter=1) is False and counter.count == 6
    assert seen[-1].n_passes == 6 and seen[-1].seconds >= 0
    counter = PassCounter(both)
    counter.done("initialization")
    assert counter.done("em") is True  # the second callback asks to stop
    assert fan_out(None, None) is None
    with pytest.raises(ValueError, match="unknown progress phase 'warmup'"):
        PassCounter().done("warmup")


def test_candidates_are_labelled_by_k_covariance_type_and_restart():
    X = make_blobs(2_000, 2, 3, seed=2)
    events = []
    GaussianMixture(3, random_state=0).fit(X, callback=events.append)
    assert {c.label for e in events for c in e.candidates} == {"k=3 full"}
    events.clear()
    GaussianMixture(2, covariance_type="diag", n_init=2, random_state=0).fit(
        X, callback=events.append)
    assert {c.label for e in events for c in e.candidates} == {"k=2 diag, init 0",
                                                             "k=2 diag, init 1"}
    events.clear()
    daskgmm.select_model(X, [1, 2], ["spherical"], random_state=0, callback=events.append)
    em = [e for e in events if e.phase == "em"]
    assert [c.label for c in em[0].candidates] == ["k=1 spherical", "k=2 spherical"]


def test_pass_total_counts_the_passes_of_successive_calls():
    from daskgmm.progress import PassTotal, ProgressEvent

    total = PassTotal()
    fit = [ProgressEvent("initialization", 1, seconds=0.1),
           ProgressEvent("em", 2, seconds=0.2), ProgressEvent("em", 3, seconds=0.3)]
    threshold = [ProgressEvent("threshold", 1, seconds=0.05)]
    resumed = [ProgressEvent("em", 8, seconds=0.01), ProgressEvent("em", 9, seconds=0.02)]
    assert [total(e) for e in fit + threshold + resumed] == [1, 2, 3, 4, 12, 13]
