"""The daskgmm command, run in-process: its flows, inspect, errors and help."""

from pathlib import Path

import pandas as pd
import pytest

import daskgmm
from daskgmm_pipelines.cli import main

from .conftest import write_job_config

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
