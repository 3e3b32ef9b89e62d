"""The daskgmm command, run in-process: its flows, inspect, errors and help."""

from pathlib import Path

import pandas as pd
import pytest

import daskgmm
from daskgmm_pipelines.cli import main

from .conftest import write_demo, write_job_config

pytestmark = pytest.mark.usefixtures("prefect_api")


def _run(capsys, *args):
    """``daskgmm ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_commands(tmp_path, capsys):
    assert main(["demo-data", "--out", str(tmp_path / "data"), "--rows", "40000",
                 "--features", "3", "--components", "2"]) == 0
    assert (tmp_path / "data" / "demo-parquet" / "part-00000.parquet").exists()
    frame = pd.read_parquet(tmp_path / "data" / "demo-parquet")
    assert list(frame.columns) == ["event_id", "f0", "f1", "f2", "label"] and len(frame) == 40_000
    config = write_job_config(tmp_path, source={
        "uri": str(tmp_path / "data" / "demo-parquet"), "array_name": None,
        "columns": ["f0", "f1", "f2"], "id_columns": ["event_id"]},
        outputs={"scores": str(tmp_path / "scores")}, model={"n_components": [1, 2, 3]})
    assert main(["select", config, "--run-id", "s1", "--promote"]) == 0
    store = daskgmm.ModelStore(tmp_path / "models")
    k = store.load().n_components
    assert k in (2, 3)  # the 2 true components (+ one for the planted anomalies)
    assert main(["score", config, "--run-id", "sc1"]) == 0
    scores = pd.read_parquet(daskgmm.latest_scores(tmp_path / "scores"))
    assert list(scores.columns[:2]) == ["event_id", "log_density"] and len(scores) == 40_000
    planted = set(frame.loc[frame["label"] == -1, "event_id"])
    flagged = set(scores.loc[scores["is_anomaly"], "event_id"])
    assert len(flagged) == 400 and len(planted & flagged) > 0.8 * len(planted)
    capsys.readouterr()

    code, out, err = _run(capsys, "inspect", str(tmp_path / "models"))
    assert code == 0, err
    assert "model store" in out and f"{k} components, covariance_type=" in out
    assert "threshold:" in out and "contamination 0.01" in out
    model_file = Path(store.version_url(store.current()["version"])) / "model.daskgmm"
    code, out, _ = _run(capsys, "inspect", str(model_file))
    assert code == 0 and daskgmm.model_id(store.load()) in out

    # a manual fit is saved, not made current; promoting it, and rolling back, is one
    # command each, recorded in the store
    selected = store.current()["version"]
    assert main(["fit", config, "-k", "1", "--run-id", "f1"]) == 0
    fitted = store.versions()[-1]
    assert store.current()["version"] == selected and fitted != selected
    capsys.readouterr()
    code, out, _ = _run(capsys, "promote", config, fitted, "--reason", "try k=1")
    assert code == 0 and f"model version {fitted} is now current" in out
    assert store.load().n_components == 1
    code, out, _ = _run(capsys, "promote", config, selected, "--reason", "rollback")
    assert code == 0 and store.current()["version"] == selected
    assert [p["promotion_reason"] for p in store.promotions()][-2:] == ["try k=1", "rollback"]
    code, out, _ = _run(capsys, "inspect", str(tmp_path / "models"))
    assert "last promotions (3 in all)" in out and "rollback" in out
    code, _, err = _run(capsys, "promote", config, "20990101T000000000000Z-deadbeef")
    assert code == 1 and "No model version '20990101T000000000000Z-deadbeef'" in err


def test_a_bad_job_file_is_one_line_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nsource:\n  uri: x.zarr\nmodel:\n  n_component: 3\n"
                   "outputs:\n  model_store: m\n")
    code, _, err = _run(capsys, "run", str(bad))
    assert code == 1
    assert "model.n_component (line 5): unknown key" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "-3", "2.5", "many"])
def test_invalid_component_counts_are_errors(tmp_path, capsys, value):
    config = write_job_config(tmp_path)
    code, _, err = _run(capsys, "fit", config, "-k", value)
    assert code == 2 and "argument -k/--n-components: expected a whole number >= 1" in err


@pytest.mark.parametrize("command", ["run", "fit", "select", "score", "promote", "demo-data",
                                     "inspect"])
def test_every_command_has_help(capsys, command):
    code, out, _ = _run(capsys, command, "--help")
    assert code == 0 and "usage: daskgmm" in out


def test_the_installed_command_runs_as_a_program(tmp_path):
    """The console script the package installs (not only main() in this process)."""
    import subprocess
    import sys

    command = Path(sys.executable).parent / "daskgmm"
    store = tmp_path / "models"
    store.mkdir()
    out = subprocess.run([str(command), "inspect", str(store)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and f"model store {store}: 0 version(s)" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\n")
    out = subprocess.run([str(command), "run", str(bad)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("daskgmm run: error: ConfigError:")


def _screen(bar):
    """What the progress bar shows now, as plain text."""
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(bar.bar)
    return console.file.getvalue().strip()


def test_the_progress_bar_shows_phases_passes_and_running_candidates():
    import io

    import dask.array as da
    from rich.console import Console

    from daskgmm_pipelines.cli import _ProgressBar

    from .conftest import make_blobs

    X = make_blobs(3_000, 2, 3, seed=5)
    lazy = da.from_array(X, chunks=(500, 2))
    terminal = io.StringIO()
    shown = []
    with _ProgressBar(Console(file=terminal, force_terminal=True, width=200)) as bar:
        shown.append(_screen(bar))

        def show(event):
            bar(event)
            shown.append((event.phase, _screen(bar)))

        sel = daskgmm.select_model(lazy, [1, 4], ["full", "spherical"], random_state=0,
                                   init_sample_size=1_000, callback=show)
        sel.best_.set_threshold(lazy, contamination=0.02, callback=show)
    assert "starting" in terminal.getvalue()  # the live bar was drawn on the terminal
    first, shown = shown[0], shown[1:]
    assert first.endswith("starting · first pass over the data running")
    assert shown[0][1].endswith("initialisation · 1 pass")
    assert shown[1][1].endswith("initialisation · 2 passes")
    em = [text for phase, text in shown if phase == "em"]
    assert ("EM · 3 passes · iteration 1 (max 100) · 4 of 4 candidates running · best "
            "log-likelihood -") in em[0]
    assert "EM finished: 4 of 4 candidates converged" in em[-1]
    for text in em[:-1]:
        assert " of 4 candidates running" in text and " 0 of " not in text
    phase, final = shown[-2]
    assert phase == "final" and final.endswith(
        f"final pass · {sel.n_passes_} passes · scored the final parameters of 4 candidates")
    phase, threshold = shown[-1]
    assert phase == "threshold" and threshold.endswith(f"threshold · {sel.n_passes_ + 1} passes")
    for text in [first] + [text for _, text in shown]:  # no fake job size
        assert "/100" not in text and "%" not in text

    # a single fit: one candidate running, then how it ended
    with _ProgressBar(Console(file=io.StringIO(), force_terminal=True)) as bar:
        shown = []
        gm = daskgmm.GaussianMixture(3, random_state=0).fit(X, callback=show)
    assert "iteration 1 (max 100) · 1 of 1 candidate running" in shown[1][1]
    assert gm.converged_ and gm.n_iter_ > 2
    assert f"EM finished: converged at iteration {gm.n_iter_}" in shown[-1][1]
    assert not any("0 of 1" in text for _, text in shown)


def test_the_progress_bar_is_off_without_a_terminal(capsys):
    from daskgmm_pipelines.cli import _ProgressBar

    with _ProgressBar() as bar:  # stderr is captured here: not a terminal
        assert bar.bar is None


def test_debug_is_a_global_option_also_after_the_command():
    from daskgmm_pipelines.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["--debug", "fit", "c.yaml"]).debug is True
    assert parse(["fit", "c.yaml", "--debug"]).debug is True
    assert parse(["fit", "c.yaml"]).debug is False
    assert parse(["inspect", "m", "--debug"]).debug is True


def _nan_job(tmp_path):
    import numpy as np
    import zarr

    write_demo(tmp_path, rows=20_000)
    X = zarr.open_group(str(tmp_path / "data" / "demo.zarr"), mode="a")["X"]
    X[15_003, 2] = np.nan
    return write_job_config(tmp_path)


def test_a_failing_flow_is_one_line_and_debug_shows_the_traceback(tmp_path, prefect_api):
    """The installed command, on a job whose data hold a NaN: the cause in one line (no
    Prefect traceback on the terminal); the flow run's state message says the same; with
    --debug, the traceback."""
    import os
    import subprocess
    import sys

    from prefect.client.orchestration import get_client

    config = _nan_job(tmp_path)
    command = [str(Path(sys.executable).parent / "daskgmm")]
    env = {**os.environ, "PREFECT_API_URL": prefect_api}  # the test server
    out = subprocess.run(command + ["fit", config, "--run-id", "nan-1"], capture_output=True,
                         text=True, timeout=300, env=env)
    cause = ("ValueError: Input X contains NaN or infinity: chunk 0 of Zarr array "
             f"'{tmp_path / 'data' / 'demo.zarr'}' (array 'X'), rows 0 to 19999, first at row "
             "15003, column 2 (nan). For missing values, fit with nan_policy='marginalize'")
    assert out.returncode == 1
    # stderr is not a terminal here: the job's INFO lines (its log under cron), then the
    # cause in one line; no traceback and no Prefect error report
    lines = out.stderr.splitlines()
    assert lines[-2].startswith(f"daskgmm fit: error: {cause}")
    assert lines[-1] == "(run with --debug for the traceback)"
    assert "Traceback" not in out.stderr  # the cause: in the state line and the error line
    assert not [line for line in lines[:-2] if "| ERROR" in line or "| CRITICAL" in line]
    assert any("Beginning flow run" in line or "load-config" in line for line in lines)
    assert out.stdout == ""

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs()
                if r.parameters.get("run_id") == "nan-1"]
    assert len(runs) == 1 and runs[0].state.is_failed()
    line = lines[-2].removeprefix("daskgmm fit: error: ")
    assert runs[0].state.message == f"Flow run encountered an exception: {line}"

    out = subprocess.run(command + ["--debug", "fit", config, "--run-id", "nan-2"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 1 and "Traceback (most recent call last)" in out.stderr
    assert out.stderr.count(cause) >= 2  # Prefect's log of the run, and the command's line
    assert f"daskgmm fit: error: {cause}" in out.stderr


def _sigint_as_in_a_terminal():
    """A command started in a terminal's foreground takes SIGINT by default; the tests
    may run in the background of a non-interactive shell (as `make test &`), which
    ignores SIGINT, and an ignored SIGINT is inherited (and rightly respected)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_the_run_in_order_and_releases_the_lock(tmp_path):
    """Ctrl-C in a terminal signals the whole process group (here: SIGINT to the group
    of a command started in its own session): Prefect's server and the Dask worker
    processes must not die first; the command exits 130, prints no traceback and
    releases the job's lock, so the next run starts."""
    import os
    import signal
    import subprocess
    import sys
    import time

    write_demo(tmp_path, rows=60_000)
    config = write_job_config(tmp_path, cluster={"processes": True},
                              nightly={"warm_start": False})
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # its own server
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "daskgmm"), "run", config, "--run-id", "c1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True, preexec_fn=_sigint_as_in_a_terminal)
    lock = tmp_path / "models" / "lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lock.exists(), "the run never took its lock"
    time.sleep(2)  # the cluster starts, the first pass runs
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "interrupted" in err.splitlines()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert not lock.exists()


def test_dask_errors_are_one_line_on_the_terminal_and_whole_in_the_run_logs():
    """The terminal's formatter drops the traceback of dask's own errors from the line
    it prints, not from the record: the handlers of the run logs still get it."""
    import logging
    import sys

    from daskgmm_pipelines.cli import _OneLineForDask

    try:
        raise OSError("stream closed")
    except OSError:
        exc_info = sys.exc_info()
    terminal = _OneLineForDask(logging.Formatter("%(name)s: %(message)s"))
    record = logging.LogRecord("distributed.core", logging.ERROR, __file__, 1,
                               "closing the comm failed", None, exc_info)
    assert terminal.format(record) == "distributed.core: closing the comm failed"
    assert record.exc_info is exc_info
    assert "OSError: stream closed" in logging.Formatter().format(record)  # the run log
    ours = logging.LogRecord("daskgmm.passes", logging.ERROR, __file__, 1, "a pass failed",
                             None, exc_info)
    assert "OSError: stream closed" in terminal.format(ours)  # ours keep theirs
