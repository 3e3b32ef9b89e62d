"""A catalogue of bad inputs and faults: the error each one gives, and what stays unchanged.

Every row of :data:`CASES` is one input or fault: an id, a family, what it is, a callable
that provokes it, the exception type expected and a regex its message must match (it
names what is wrong and where: the parameter, the file, the member, the key and line),
and what a reader still sees unchanged. :func:`test_case` runs each row against one
shared prepared *world* (a model store with a current model, a Parquet and a Zarr score
target with a current publication, a model file, a checkpoint, a Parquet and a Zarr
source) and asserts that every file there, and in the case's own scratch directory, is
byte-for-byte unchanged, and that no file or directory was added or removed.

A case that provokes no error (a damaged checkpoint is ignored with a warning, a secret
stays hidden) has ``error=None`` and a ``check``. A case already exercised by another
test names it in ``see`` instead of running again. A case showing a defect not fixed yet
is marked ``xfail`` (strict) with the fix it needs.

README.md's section "What fails, and what stays unchanged" is this table:
``.venv/bin/python -m tests.test_catalogue`` prints it, and :func:`test_readme_table`
fails when the two differ.

Adding a case: append a :class:`Case` to :data:`CASES` (for a damaged data input:
``family="data"``). In ``match``, ``@W@``, ``@S@`` and ``@F@`` stand for the world's
directory, the case's scratch directory and the full small disk's directory (escaped).
"""

from __future__ import annotations

import ast
import copy
import errno
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr
from numpy.testing import assert_array_equal
from sklearn.pipeline import make_pipeline
from sklearn.utils import estimator_html_repr

import daskgmm
from daskgmm import Checkpoint, GaussianMixture, ModelStore
from daskgmm._storage import StorageFullError, StorageUnreachableError
from daskgmm.model_file import ModelFileError
from daskgmm_pipelines.config import ConfigError, load_config, resolve_storage_options

from .conftest import edit_json, make_blobs, rewrite_zip, small_disk_at, snapshot

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("parameters", "data", "model files and checkpoints", "publication", "configs",
            "secrets", "faults")
SECRET = "s3cr3t-Catalogue-7Qz"
KEY = "AKIA-CATALOGUE-KEY"
# one fit with a checkpoint: a crash after iteration 3 leaves the state of iteration 2
CKPT_KW = dict(n_components=3, random_state=0, tol=1e-6, max_iter=200)


@dataclass(frozen=True)
class Case:
    id: str
    family: str
    what: str  # the input or fault, as the README shows it
    provoke: Callable | None  # provoke(ctx); None when `see` names the test that does
    error: type[BaseException] | tuple | None  # None: no error; `check` says what happens
    match: str | None  # regex on the message (on the log for error=None cases)
    gist: str  # the gist of the message, for the README
    unchanged: str  # what stays unchanged, for the README
    prepare: Callable | None = None  # prepare(ctx): before the snapshot (damaged copies)
    check: Callable | None = None  # check(ctx, result_or_exception): more assertions
    scratch_unchanged: bool = True  # False: the case's own scratch files may change
    see: str | None = None  # "tests/test_x.py::test_y" that exercises this case
    xfail: str | None = None  # an open defect: what is wrong and where to fix it
    xfail_raises: type[BaseException] | None = None


@dataclass
class Ctx:
    """What a case gets: the world, its scratch directory, and pytest's request."""

    world: World
    scratch: Path
    request: pytest.FixtureRequest
    watched: dict = field(default_factory=dict)  # name -> snapshot function
    cleanups: list = field(default_factory=list)
    values: dict = field(default_factory=dict)

    def fixture(self, name):
        return self.request.getfixturevalue(name)

    def watch(self, name, take):
        self.watched[name] = take


@dataclass
class World:
    root: Path
    X: np.ndarray
    gm: GaussianMixture  # fitted, with a threshold; saved, current in the store, published
    model_file: Path
    store: ModelStore
    version: str  # the store's current version
    parquet: str  # Parquet score target with a current publication (run r1)
    zarr: str  # Zarr score target with a current publication (run r1)
    source: Path  # Parquet source: part-0.parquet, part-1.parquet; event_id, a, b, c
    zarr_source: Path  # Zarr group source, array X
    checkpoint: Path  # the checkpoint of CKPT_KW's fit, after iteration 2
    reference: GaussianMixture  # CKPT_KW's fit, uninterrupted


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    X = make_blobs(1_200, 3, 3, seed=3, overlap=2.0)
    gm = GaussianMixture(3, random_state=0).fit(X).set_threshold(X, contamination=0.02)
    gm.save(root / "model.daskgmm")
    store = ModelStore(root / "store")
    version = store.new_version(gm)
    store.save(gm, version, {"run_id": "catalogue"})
    store.promote(version, reason="the catalogue's current model")
    source = root / "source-pq"
    source.mkdir()
    for i, rows in enumerate((slice(0, 500), slice(500, None))):
        frame = pd.DataFrame(X[rows], columns=["a", "b", "c"])
        frame.insert(0, "event_id", np.arange(len(X))[rows] * 3 + 1)
        frame.to_parquet(source / f"part-{i}.parquet")
    zarr_source = root / "source.zarr"
    zarr.open_group(str(zarr_source), mode="w").create_array(
        "X", shape=X.shape, chunks=(400, 3), dtype="f8")[:] = X
    daskgmm.write_scores(gm, X, str(root / "scores-pq"), run_id="r1")
    daskgmm.write_scores(gm, X, str(root / "scores.zarr"), run_id="r1", format="zarr")

    def crash(event):
        if event.n_iter == 3:
            raise Crash

    with pytest.raises(Crash):
        GaussianMixture(**CKPT_KW).fit(X, checkpoint=Checkpoint(root / "run.ckpt", every=2),
                                       callback=crash)
    reference = GaussianMixture(**CKPT_KW).fit(X)
    assert reference.n_iter_ > 3
    return World(root, X, gm, root / "model.daskgmm", store, version,
                 str(root / "scores-pq"), str(root / "scores.zarr"), source, zarr_source,
                 root / "run.ckpt", reference)


# --------------------------------------------------------------------------- helpers

def fit(ctx, X=None, **params):
    return GaussianMixture(**{"n_components": 2, **params}).fit(ctx.world.X if X is None else X)


def publish(ctx, X=None, target=None, **kw):
    kw.setdefault("run_id", "r2")
    return daskgmm.write_scores(kw.pop("model", ctx.world.gm), ctx.world.X if X is None else X,
                                ctx.world.parquet if target is None else target, **kw)


def copy_of(ctx, name) -> Path:
    """A copy of the world's ``name`` in the case's scratch directory."""
    src, dst = ctx.world.root / name, ctx.scratch / name
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    return dst


def npy(array, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def flip_byte(path, member):
    """Flip one byte in the middle of ``member``'s compressed data."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    raw[info.header_offset + 30 + len(info.filename) + len(info.extra)
        + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def damaged_model(edit):
    """``prepare`` of a case on a damaged copy of the world's model file."""
    def prepare(ctx):
        edit(copy_of(ctx, "model.daskgmm"))
    return prepare


def publish_damaged_model(ctx):
    """Publish with the damaged model file, to the world's current Parquet target."""
    return publish(ctx, model=str(ctx.scratch / "model.daskgmm"))


def damaged_checkpoint(edit):
    def prepare(ctx):
        edit(copy_of(ctx, "run.ckpt"))
    return prepare


def resume(ctx, **params):
    return GaussianMixture(**{**CKPT_KW, **params}).fit(
        ctx.world.X, checkpoint=Checkpoint(ctx.scratch / "run.ckpt", every=2))


def started_afresh(ctx, model, **params):
    reference = (ctx.world.reference if not params
                 else GaussianMixture(**{**CKPT_KW, **params}).fit(ctx.world.X))
    assert model.resumed_iteration_ == 0
    assert_array_equal(model.means_, reference.means_)
    assert model.n_iter_ == reference.n_iter_


def write_file(name, text):
    def prepare(ctx):
        (ctx.scratch / name).write_text(text)
    return prepare


def write_zarr_attrs(attrs=None, raw=None):
    """A copy of the world's Zarr target whose root ``zarr.json`` is damaged."""
    def prepare(ctx):
        path = copy_of(ctx, "scores.zarr") / "zarr.json"
        if raw is not None:
            path.write_bytes(raw)
            return
        meta = json.loads(path.read_text())
        meta["attributes"]["daskgmm"] = attrs(meta["attributes"]["daskgmm"])
        path.write_text(json.dumps(meta))
    return prepare


def write_pointer(raw):
    def prepare(ctx):
        (copy_of(ctx, "scores-pq") / "_latest").write_bytes(raw)
    return prepare


def damaged_store(edit):
    def prepare(ctx):
        edit(copy_of(ctx, "store"), ctx.world.version)
    return prepare


# configs: a minimal valid job file, and one with a change
JOB = """\
name: job
source:
  uri: data/x.zarr
outputs:
  model_store: models
"""


def config_case(text):
    return dict(prepare=write_file("job.yaml", text),
                provoke=lambda ctx: load_config(ctx.scratch / "job.yaml"))


def alias_bomb():
    lines = ["name: t", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# secrets
SECRET_OPTIONS = {"key": KEY, "secret": SECRET,
                  "client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}}


def hidden(*texts):
    for text in texts:
        assert SECRET not in text and KEY not in text, text


def masked_in(ctx, texts):
    """The secrets are not in ``texts``, and the options show as '***'."""
    texts = [texts] if isinstance(texts, str) else texts
    hidden(*texts)
    for text in texts:
        assert re.search(r"'secret': '\*\*\*'", text.replace("&#x27;", "'")), text


def text_of_files(root):
    """Every file under ``root``, zip members decompressed, as one text."""
    out = []
    for path in Path(root).rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            out.append(raw.decode("latin-1"))
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as zf:
                    out += [zf.read(n).decode("latin-1") for n in zf.namelist()]
    return "\n".join(out)


def save_publish_with_secret_options(ctx):
    caplog = ctx.fixture("caplog")
    caplog.set_level(logging.DEBUG)
    options = {"key": KEY, "secret": SECRET}  # passed to the local filesystem, unused
    gm = GaussianMixture(2, random_state=0, columns=["a", "b", "c"], storage_options=options)
    gm.fit(str(ctx.world.source)).set_threshold(str(ctx.world.source))
    gm.save(ctx.scratch / "m.daskgmm")
    store = ModelStore(ctx.scratch / "store", storage_options=options)
    store.promote(_save(store, gm), reason="secrets")
    pub = daskgmm.write_scores(gm, str(ctx.world.source), str(ctx.scratch / "scores"),
                               id_columns=["event_id"], run_id="s")
    return [caplog.text, repr(pub), repr(store), text_of_files(ctx.scratch),
            repr(daskgmm.load(ctx.scratch / "m.daskgmm").get_params())]


def _save(store, model):
    version = store.new_version(model)
    store.save(model, version, {"run_id": "s"})
    return version


# faults: a full small disk
@dataclass
class FullWorld:
    disk: object
    root: Path
    store: ModelStore
    version: str
    parquet: str
    zarr: str
    checkpoint: Path


@pytest.fixture(scope="module")
def full_world(tmp_path_factory, world):
    """The world's model, store, targets and checkpoint on a 1 MiB tmpfs (unmounted at
    the end of the module); its cases fill it before they run and free it after."""
    with small_disk_at(tmp_path_factory.mktemp("full") / "disk") as disk:
        root = disk.path
        store = ModelStore(root / "store")
        version = store.new_version(world.gm)
        store.save(world.gm, version, {})
        store.promote(version, reason="catalogue")
        daskgmm.write_scores(world.gm, world.X[:600], str(root / "scores-pq"), run_id="r1")
        daskgmm.write_scores(world.gm, world.X[:600], str(root / "scores.zarr"), run_id="r1",
                             format="zarr")
        shutil.copyfile(world.checkpoint, root / "run.ckpt")
        yield FullWorld(disk, root, store, version, str(root / "scores-pq"),
                        str(root / "scores.zarr"), root / "run.ckpt")


def on_full_disk(ctx):
    full = ctx.fixture("full_world")
    ctx.values["full"] = full
    ctx.watch("small disk", lambda: snapshot(full.root))
    full.disk.fill()
    ctx.cleanups.append(full.disk.free)


def full(ctx) -> FullWorld:
    return ctx.values["full"]


# faults: the S3 endpoint stopped mid-write
class S3World:
    """A moto S3 server of its own (bucket 'catalogue') holding a model store with a
    current model and a Parquet score target with a current publication."""

    def __init__(self, world):
        import s3fs
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, self.port = self.server.get_host_and_port()
        self.options = {
            "key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": f"http://{host}:{self.port}",
                              "region_name": "eu-west-1"},
            "config_kwargs": {"retries": {"max_attempts": 1}},
        }
        self.fs = s3fs.S3FileSystem(**self.options)
        self.fs.mkdir("catalogue")
        self.store = ModelStore("s3://catalogue/store", storage_options=self.options)
        self.store.promote(_save(self.store, world.gm), reason="catalogue")
        self.target = "s3://catalogue/scores"
        daskgmm.write_scores(world.gm, world.X, self.target, run_id="r1",
                             target_storage_options=self.options)

    def stop(self):
        self.server.stop()

    def restart(self):
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.fs.invalidate_cache()

    def reader_view(self):
        """What readers of the store and the target see: the pointers, every file of the
        versions they name, the markers, and the list of complete model versions."""
        fs, out = self.fs, {}
        self.fs.invalidate_cache()
        for base, pointer in (("catalogue/store", "current"), ("catalogue/scores", "_latest")):
            raw = fs.cat_file(f"{base}/{pointer}")
            out[f"{base}/{pointer}"] = raw
            version = json.loads(raw)["version"]
            if base.endswith("store"):
                version = f"versions/{version}"
            for path in fs.find(f"{base}/{version}"):
                out[path] = fs.cat_file(path)
        for marker in ("catalogue/store/_daskgmm_models.json",
                       "catalogue/scores/_daskgmm_scores.json"):
            out[marker] = fs.cat_file(marker)
        out["model versions"] = self.store.versions()
        return out


@pytest.fixture(scope="module")
def s3_world(world):
    s3 = S3World(world)
    yield s3
    s3.stop()


def on_s3(ctx):
    import s3fs

    s3 = ctx.fixture("s3_world")
    ctx.values["s3"] = s3
    ctx.fixture("monkeypatch").setattr(s3fs.S3FileSystem, "retries", 1)  # fail fast
    ctx.watch("s3", s3.reader_view)
    ctx.cleanups.append(s3.restart)


def s3_publish_stopped_mid_write(ctx):
    s3 = ctx.values["s3"]

    def stop_at_the_third_chunk(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 2:
            s3.stop()
        return block

    X = da.from_array(ctx.world.X, chunks=(200, 3)).map_blocks(stop_at_the_third_chunk,
                                                              dtype=float)
    with dask.config.set(scheduler="synchronous"):
        daskgmm.write_scores(ctx.world.gm, X, s3.target, run_id="r2",
                             target_storage_options=s3.options)


def s3_save_stopped_mid_write(ctx):
    s3 = ctx.values["s3"]
    model = copy.copy(ctx.world.gm)

    def save_then_stop(path, *, storage_options=None):  # the model file, then no endpoint
        GaussianMixture.save(model, path, storage_options=storage_options)
        s3.stop()

    model.save = save_then_stop
    s3.store.save(model, s3.store.new_version(model), {"run_id": "r2"})


# faults: the scheduler process killed mid-fit
def scheduler_killed_mid_fit(ctx):
    from distributed import Client

    scheduler_file = ctx.scratch / "scheduler.json"
    common = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--scheduler-file", str(scheduler_file), "--no-dashboard"], **common)
    ctx.cleanups.append(lambda: (scheduler.kill(), scheduler.wait()))
    worker = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
         str(scheduler_file), "--nthreads", "1", "--no-dashboard", "--no-nanny"], **common)
    ctx.cleanups.append(lambda: (worker.kill(), worker.wait()))
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)

    def kill_the_scheduler(event):
        if event.phase == "em" and event.n_iter == 2:
            os.kill(scheduler.pid, signal.SIGKILL)

    X = da.from_array(ctx.world.X, chunks=(200, 3))
    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}), \
            Client(scheduler_file=str(scheduler_file), timeout="5s") as client:
        client.wait_for_workers(1, timeout=60)
        GaussianMixture(3, random_state=0, tol=0.0, max_iter=30).fit(
            X, callback=kill_the_scheduler)


def reference_exists(see):
    path, name = see.split("::")
    tree = ast.parse((ROOT / path).read_text())
    assert name in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, see


# --------------------------------------------------------------- damaged or changing sources

def zarr_copy(edit=None):
    """``prepare``: a copy of the world's Zarr source in the scratch directory, edited."""
    def prepare(ctx):
        path = copy_of(ctx, "source.zarr")
        if edit is not None:
            edit(ctx, path)
    return prepare


def parquet_copy(edit=None):
    def prepare(ctx):
        path = copy_of(ctx, "source-pq")
        if edit is not None:
            edit(ctx, path)
    return prepare


def fingerprint_then(edit):
    """``edit`` of a source copy after its fingerprint (ctx.values['fp']) was taken."""
    def then(ctx, path):
        ctx.values["fp"] = daskgmm.source_fingerprint(str(path))
        ctx.values["ds"] = daskgmm.as_dataset(str(path))
        edit(ctx, path)
    return then


def rewrite_part(name, rows):
    def edit(ctx, path):
        frame = pd.read_parquet(path / name)
        frame.iloc[:rows].to_parquet(path / name)
    return edit


def corrupt_pages(ctx, path):
    """A zstd Parquet file (no dictionary) whose first pages do not decode."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    X = ctx.world.X
    path.mkdir()
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2]}),
                   path / "part-0.parquet", row_group_size=300, compression="zstd",
                   use_dictionary=False)
    raw = bytearray((path / "part-0.parquet").read_bytes())
    for i in range(60, 400):
        raw[i] ^= 0x5A
    (path / "part-0.parquet").write_bytes(bytes(raw))


def zero_filled(ctx, result):
    expected = ctx.world.X.copy()
    expected[400:800] = 0.0
    assert_array_equal(result, expected)


# --------------------------------------------------------------------------- the cases

P, D, M, PUB, C, S, F = FAMILIES
WORLD = "everything"  # every file of the world (the README says what it holds)
JOB_FILE = "everything, and the job file"
DAMAGED_TARGET = "everything, and the damaged target"


def params_case(id, what, params, match, gist, *, call="fit"):
    provoke = {
        "fit": lambda ctx: fit(ctx, **params),
        "select": lambda ctx: daskgmm.select_model(ctx.world.X, **params),
    }[call]
    return Case(id, P, what, provoke, ValueError, match, gist, WORLD)


CASES = [
    # ---------------------------------------------------------------- parameters
    params_case("n_components=0", "`GaussianMixture(n_components=0)`", {"n_components": 0},
                r"The 'n_components' parameter of GaussianMixture must be an int in the range "
                r"\[1, inf\)\. Got 0 instead\.", "parameter, allowed range, value (as sklearn)"),
    params_case("n_components=-1", "`n_components=-1`", {"n_components": -1},
                r"'n_components' parameter .* Got -1 instead", "the same"),
    params_case("n_components=1.5", "`n_components=1.5`", {"n_components": 1.5},
                r"'n_components' parameter .* must be an int .* Got 1\.5 instead",
                "the same"),
    params_case("n_components='3'", "`n_components='3'` (a string)", {"n_components": "3"},
                r"'n_components' parameter .* must be an int .* Got '3' instead", "the same"),
    params_case("covariance_type=foo", "`covariance_type='foo'`", {"covariance_type": "foo"},
                r"'covariance_type' parameter of GaussianMixture must be a str among "
                r"\{'full', 'tied', 'diag', 'spherical'\}\. Got 'foo'",
                "parameter, the four types, value"),
    params_case("tol=-1", "`tol=-1`", {"tol": -1},
                r"'tol' parameter .* a float in the range \[0\.0, inf\)\. Got -1 instead",
                "parameter, range, value"),
    params_case("reg_covar=-1", "`reg_covar=-1`", {"reg_covar": -1},
                r"'reg_covar' parameter .* \[0\.0, inf\)\. Got -1 instead",
                "parameter, range, value"),
    params_case("reg_covar=nan", "`reg_covar=nan`", {"reg_covar": float("nan")},
                r"'reg_covar' parameter .* Got nan instead", "parameter, range, value"),
    params_case("max_iter=-1", "`max_iter=-1` (0 is allowed, as in sklearn)", {"max_iter": -1},
                r"'max_iter' parameter .* an int in the range \[0, inf\)\. Got -1",
                "parameter, range, value"),
    params_case("n_init=0", "`n_init=0`", {"n_init": 0},
                r"'n_init' parameter .* \[1, inf\)\. Got 0 instead", "parameter, range, value"),
    params_case("init_params=x", "`init_params='x'`", {"init_params": "x"},
                r"'init_params' parameter .* among \{'kmeans', 'k-means\+\+', 'random', "
                r"'random_from_data'\}\. Got 'x'", "parameter, the choices, value"),
    params_case("chunk_rows=0", "`chunk_rows=0`", {"chunk_rows": 0},
                r"'chunk_rows' parameter .* \[1, inf\), 'auto' or None\. Got 0",
                "parameter, allowed values, value"),
    params_case("split_every=1", "`split_every=1`", {"split_every": 1},
                r"'split_every' parameter .* \[2, inf\)\. Got 1", "parameter, range, value"),
    params_case("warm_start=yes", "`warm_start='yes'`", {"warm_start": "yes"},
                r"'warm_start' parameter .* an instance of 'bool'\. Got 'yes'",
                "parameter, type, value"),
    params_case("cache=x", "`cache='x'`", {"cache": "x"},
                r"'cache' parameter .* must be True, False or 'auto'\. Got 'x'",
                "parameter, allowed values, value"),
    params_case("means_init-shape", "`means_init` of shape (3, 3) for 2 components",
                {"means_init": np.zeros((3, 3))},
                r"The parameter 'means' should have the shape of \(2, 3\), but got \(3, 3\)",
                "parameter, expected and actual shapes (as sklearn)"),
    params_case("means_init-nan", "`means_init` holding NaN",
                {"means_init": np.array([[0.0, 0.0, 0.0], [0.0, np.nan, 0.0]])},
                r"The parameter 'means_init' holds nan at index \(1, 1\): initial parameters "
                r"must be finite", "parameter, value and index, the fix"),
    params_case("weights_init-sum", "`weights_init=[0.3, 0.3]` (sum 0.6)",
                {"weights_init": [0.3, 0.3]},
                r"The parameter 'weights' should be normalized, but got sum\(weights\) = "
                r"0\.60000", "parameter and its sum (as sklearn)"),
    params_case("precisions_init-not-spd", "`precisions_init` not positive-definite",
                {"precisions_init": np.stack([np.eye(3), -np.eye(3)])},
                r"'full precision' should be symmetric, positive-definite \(matrix 1 is not\)",
                "parameter and the matrix"),
    Case("contamination=0", P, "`set_threshold(X, contamination=0)`",
         lambda ctx: copy.copy(ctx.world.gm).set_threshold(ctx.world.X, contamination=0),
         ValueError, r"contamination must be a float in \(0, 0\.5\], the expected fraction of "
                     r"anomalies; got 0\.", "parameter, range, value", WORLD),
    Case("contamination=0.6", P, "`set_threshold(X, contamination=0.6)`",
         lambda ctx: copy.copy(ctx.world.gm).set_threshold(ctx.world.X, contamination=0.6),
         ValueError, r"contamination must be a float in \(0, 0\.5\].*got 0\.6\.", "the same",
         WORLD),
    Case("contamination=nan", P, "`set_threshold(X, contamination=nan)`",
         lambda ctx: copy.copy(ctx.world.gm).set_threshold(ctx.world.X,
                                                           contamination=float("nan")),
         ValueError, r"contamination must be a float in \(0, 0\.5\].*got nan\.", "the same",
         WORLD),
    Case("threshold=nan", P, "`set_threshold(threshold=nan)`",
         lambda ctx: copy.copy(ctx.world.gm).set_threshold(threshold=float("nan")),
         ValueError, r"threshold must be a finite log-density \(a float\); got nan\.",
         "parameter, what it must be, value", WORLD),
    Case("run_id=../x", P, "`write_scores(..., run_id='../x')`",
         lambda ctx: publish(ctx, run_id="../x"), ValueError,
         r"run_id must be 1 to 128 letters, digits or '_\.=\+-'.*got '\.\./x'\. "
         r"E\.g\. run_id='2026-11-24'", "parameter, allowed characters, value, an example",
         WORLD),
    Case("format=csv", P, "`write_scores(..., format='csv')`",
         lambda ctx: publish(ctx, format="csv"), ValueError,
         r"format must be 'delta' or 'parquet' or 'zarr'; got 'csv'\.", "parameter, choices, value",
         WORLD),
    Case("columns-string", P, "`GaussianMixture(columns='a')` on a Parquet source",
         lambda ctx: GaussianMixture(2, columns="a").fit(str(ctx.world.source)), ValueError,
         r"columns must be a list of column names, got the string 'a'\. Pass a list, e\.g\. "
         r"columns=\['a'\]", "parameter, value, the fix", WORLD),
    Case("keep_runs=0", P, "`prune_scores(target, 0)` on the current target",
         lambda ctx: daskgmm.prune_scores(ctx.world.parquet, 0), ValueError,
         r"keep_runs must be an int >= 1; got 0\.", "parameter, range, value",
         "the target: every version, the pointer"),
    Case("checkpoint-every=0", P, "`Checkpoint(path, every=0)`",
         lambda ctx: Checkpoint(ctx.scratch / "c.ckpt", every=0), ValueError,
         r"every must be an int >= 1; got 0\.", "parameter, range, value", WORLD),
    Case("checkpoint-run_id=../x", P, "`store.checkpoint('../x')`",
         lambda ctx: ctx.world.store.checkpoint("../x"), ValueError,
         r"run_id '\.\./x' cannot name a checkpoint file\.", "parameter and value",
         "the store"),
    Case("promote-unknown-version", P, "`store.promote('nope')`",
         lambda ctx: ctx.world.store.promote("nope", reason="x"), FileNotFoundError,
         r"No model version 'nope' in '@W@/store'; versions there: \['\d{8}T",
         "the version, the store and its latest versions", "the store's `current` pointer"),
    Case("save-version=../x", P, "`store.save(model, '../x', {})`",
         lambda ctx: ctx.world.store.save(ctx.world.gm, "../x", {}), ValueError,
         r"Not a model store version name: '\.\./x'\.", "the version", "the store"),
    params_case("select-n_components=0", "`select_model(X, n_components=[0, 1])`",
                {"n_components": [0, 1]}, r"n_components must be ints >= 1; got \[0\] in "
                                          r"\[0, 1\]\.", "the bad values in the grid",
                call="select"),
    params_case("select-covariance_types=foo", "`select_model(X, covariance_types=['foo'])`",
                {"covariance_types": ["foo"]}, r"Unknown covariance type\(s\) \['foo'\]; "
                                               r"choose among \['full', 'tied', 'diag', "
                                               r"'spherical'\]", "the unknown type, choices",
                call="select"),
    params_case("select-criterion=x", "`select_model(X, criterion='x')`", {"criterion": "x"},
                r"criterion must be one of \('bic', 'aic'\); got 'x'\.",
                "parameter, choices, value", call="select"),

    # ---------------------------------------------------------------- data (already handled)
    Case("nan-in-rows", D, "NaN in a row of the training data",
         lambda ctx: fit(ctx, X=np.where(np.arange(ctx.world.X.size).reshape(
             ctx.world.X.shape) == 40, np.nan, ctx.world.X)), ValueError,
         r"Input X contains NaN or infinity: chunk 0 of numpy array, rows 0 to 1199, first at "
         r"row 13, column 1 \(nan\)\. For missing values, fit with "
         r"nan_policy='marginalize'.*or nan_policy='omit'.*or drop or impute these rows",
         "the chunk, its rows, the first bad row and column, the fix", WORLD),
    Case("inf-with-nan-policy", D, "infinity in a row holding NaN, nan_policy='omit'",
         lambda ctx: fit(ctx, X=np.where(np.arange(ctx.world.X.size).reshape(
             ctx.world.X.shape) == 40, np.inf, np.where(np.arange(ctx.world.X.size).reshape(
                 ctx.world.X.shape) == 41, np.nan, ctx.world.X)), nan_policy="omit"),
         ValueError,
         r"contains NaN or infinity: chunk 0 of numpy array, rows 0 to 1199, first at row "
         r"13, column 1 \(inf\)\. Gaussian mixtures need finite values, whatever nan_policy",
         "the chunk, its rows, the first infinite value's row and column (the row is not "
         "silently omitted)", WORLD),
    Case("all-missing-row", D, "a row whose every feature is NaN, nan_policy='marginalize'",
         lambda ctx: fit(ctx, X=np.where((np.arange(len(ctx.world.X)) == 77)[:, None],
                                          np.nan, ctx.world.X), nan_policy="marginalize"),
         ValueError,
         r"Row 77 of numpy array \(chunk 0, rows 0 to 1199\) has no observed feature.*"
         r"nan_policy='omit'",
         "the row, its chunk, the fixes", WORLD),
    Case("inf-in-rows-publish", D, "infinity in a row of the data being scored",
         lambda ctx: publish(ctx, X=np.where(np.arange(ctx.world.X.size).reshape(
             ctx.world.X.shape) == 3000, np.inf, ctx.world.X)), ValueError,
         r"contains NaN or infinity: .*first at row 1000, column 0",
         "the chunk, its rows, the first bad row and column",
         "the Parquet target: pointer and current scores; no version or run directory of the "
         "failed attempt"),
    Case("1-d-input", D, "a 1-D array", lambda ctx: fit(ctx, X=ctx.world.X[:, 0]), ValueError,
         r"Expected 2D array, got 1D array instead:.*Reshape your data", "as sklearn", WORLD),
    Case("3-d-input", D, "a 3-D array", lambda ctx: fit(ctx, X=ctx.world.X.reshape(400, 3, 3)),
         ValueError, r"Found array with dim 3, while dim <= 2 is required by GaussianMixture",
         "as sklearn", WORLD),
    Case("text-in-object-array", D, "an object array holding text",
         lambda ctx: fit(ctx, X=np.array([[1.0, "x"], [2.0, 3.0], [4.0, 5.0]], dtype=object)),
         ValueError, r"X holds a value that is not a number at row 0, column 1: 'x' \(str; "
                     r"could not convert string to float: 'x'\)\. .*convert or drop that column",
         "the row, the column, the value, the fix", WORLD),
    Case("empty-array", D, "an empty array (0 rows)", lambda ctx: fit(ctx, X=np.empty((0, 3))),
         ValueError, r"Found array with 0 sample\(s\) \(shape=\(0, 3\)\) while a minimum of 2 "
                     r"is required by GaussianMixture", "the shape and the minimum", WORLD),
    Case("unknown-chunks", D, "a dask array with unknown chunk sizes",
         lambda ctx: fit(ctx, X=da.from_array(ctx.world.X, chunks=400)[
             da.from_array(ctx.world.X[:, 0] > 0, chunks=400)]), ValueError,
         r"The dask array X has unknown chunk sizes \(shape \(nan, 3\).*Call "
         r"X\.compute_chunk_sizes\(\)", "the shape and chunks, the fix", WORLD),
    Case("complex-dtype", D, "complex numbers",
         lambda ctx: fit(ctx, X=ctx.world.X.astype(complex)), ValueError,
         r"Complex data not supported", "as sklearn", WORLD),
    Case("more-components-than-rows", D, "5 components for 3 rows",
         lambda ctx: fit(ctx, X=ctx.world.X[:3], n_components=5), ValueError,
         r"Expected n_samples >= n_components but got n_components = 5, n_samples = 3 "
         r"\(numpy array\)\. Use at most n_components=3", "both counts, the data, the fix",
         WORLD),
    Case("wrong-feature-count", D, "data with 2 features scored by a 3-feature model",
         lambda ctx: publish(ctx, X=ctx.world.X[:, :2]), ValueError,
         r"X has 2 features, but GaussianMixture is expecting 3 features as input",
         "both counts (as sklearn)", WORLD),

    # ------------------------------------------------- data: damaged or changing sources
    Case("zarr-missing-chunk", D, "a Zarr chunk missing from the store (fit)",
         lambda ctx: fit(ctx, X=str(ctx.scratch / "source.zarr")), daskgmm.MissingChunksError,
         r"The Zarr array '@S@/source\.zarr' \(array 'X'\) is missing 1 of its 3 stored "
         r"chunks: chunk 'c/1/0' \(rows 400 to 799\)\. Zarr would read them as the fill "
         r"value \(0\.0\).*Restore the chunks.*missing_chunks='fill'",
         "the array, the chunk and its rows, the fix (restore; or opt in to fill values)",
         WORLD + ", and the damaged copy",
         prepare=zarr_copy(lambda ctx, p: (p / "X" / "c" / "1" / "0").unlink())),
    Case("zarr-missing-chunk-publish", D, "a Zarr chunk missing from the store (publication)",
         lambda ctx: publish(ctx, X=str(ctx.scratch / "source.zarr")),
         daskgmm.MissingChunksError, r"'@S@/source\.zarr' \(array 'X'\) is missing 1 of its "
                                     r"3 stored chunks: chunk 'c/1/0' \(rows 400 to 799\)",
         "the same", "the Parquet target: pointer and current scores",
         prepare=zarr_copy(lambda ctx, p: (p / "X" / "c" / "1" / "0").unlink())),
    Case("zarr-missing-chunk-fill", D, "the same with `missing_chunks='fill'` (opt-in)",
         lambda ctx: daskgmm.as_dataset(str(ctx.scratch / "source.zarr"),
                                        missing_chunks="fill").array.compute(), None, None,
         "no error: the missing rows read as the fill value, as asked",
         WORLD + ", and the copy", check=zero_filled,
         prepare=zarr_copy(lambda ctx, p: (p / "X" / "c" / "1" / "0").unlink())),
    Case("zarr-chunk-not-decoding", D, "a Zarr chunk that fails to decompress",
         lambda ctx: fit(ctx, X=str(ctx.scratch / "source.zarr")), daskgmm.DamagedSourceError,
         r"Cannot read stored chunk 'c/2/0' \(rows 800 to 1199\) of the Zarr array "
         r"'@S@/source\.zarr' \(array 'X'\): RuntimeError: Zstd decompression error.*"
         r"Restore it from a backup or rewrite the array",
         "the chunk key, its rows, the array, the codec's error, the fix",
         WORLD + ", and the damaged copy",
         prepare=zarr_copy(lambda ctx, p: (p / "X" / "c" / "2" / "0").write_bytes(b"x" * 64))),
    Case("parquet-truncated", D, "a truncated Parquet file (publication)",
         lambda ctx: publish(ctx, X=str(ctx.scratch / "source-pq"), id_columns=["event_id"]),
         daskgmm.DamagedSourceError,
         r"File 'part-1\.parquet' of the Parquet dataset '@S@/source-pq' is not a readable "
         r"Parquet file \(ArrowInvalid: Parquet magic bytes not found.*restore or rewrite it",
         "the file, the dataset, pyarrow's error in one line, the fix",
         "the Parquet target: pointer and current scores",
         prepare=parquet_copy(lambda ctx, p: (p / "part-1.parquet").write_bytes(
             (p / "part-1.parquet").read_bytes()[:300]))),
    Case("parquet-page-not-decoding", D, "a Parquet data page that does not decode",
         lambda ctx: fit(ctx, X=str(ctx.scratch / "pq")), daskgmm.DamagedSourceError,
         r"Cannot read row groups 0 to 3 of Parquet file '@S@/pq/part-0\.parquet' "
         r"\(OSError: .*\)\. The file is damaged", "the file, its row groups, the fix",
         WORLD + ", and the damaged file",
         prepare=lambda ctx: corrupt_pages(ctx, ctx.scratch / "pq")),
    Case("parquet-replaced-since-start", D,
         "a Parquet file replaced between the job's start and its publication",
         lambda ctx: publish(ctx, X=str(ctx.scratch / "source-pq"), id_columns=["event_id"],
                             fingerprint=ctx.values["fp"]), daskgmm.SourceChangedError,
         r"The Parquet dataset '@S@/source-pq' \(columns event_id, a, b, c\) changed since "
         r"the job started \(fingerprint taken at .*\): file 'part-1\.parquet' was \d+ bytes, "
         r"modified .*, now \d+ bytes.*Nothing was scored or published",
         "the dataset, the file, its size and time before and now",
         "the Parquet target: pointer and current scores",
         prepare=parquet_copy(fingerprint_then(rewrite_part("part-1.parquet", 100)))),
    Case("parquet-rewritten-while-read", D, "a Parquet file rewritten while tasks read it",
         lambda ctx: ctx.values["ds"].array.compute(), daskgmm.SourceChangedError,
         r"Parquet file '@S@/source-pq/part-0\.parquet' changed while the job was reading "
         r"it: it now holds 100 rows in 1 row groups; it held 500 rows in 1",
         "the file, its rows then and now", WORLD,
         prepare=parquet_copy(fingerprint_then(rewrite_part("part-0.parquet", 100)))),
    Case("zarr-resized-since-start", D, "a Zarr array resized between start and publication",
         lambda ctx: publish(ctx, X=str(ctx.scratch / "source.zarr"),
                             fingerprint=ctx.values["fp"]), daskgmm.SourceChangedError,
         r"The Zarr array '@S@/source\.zarr' \(array 'X'\) changed since the job started .*"
         r"object 'zarr\.json' was \d+ bytes", "the array and its changed objects",
         "the Parquet target: pointer and current scores",
         prepare=zarr_copy(fingerprint_then(lambda ctx, p: zarr.open_group(
             str(p), mode="a")["X"].resize((1_000, 3))))),
    Case("unreadable-path", D, "a source this process may not read (permissions)", None,
         PermissionError, r"Permission denied reading",
         "'Permission denied reading ...: the directory cannot be read by this process (user "
         "nobody)', not 'No such file'", WORLD,
         see="tests/test_damaged_sources.py::test_unreadable_paths_are_permission_errors"),
    Case("parquet-job-without-columns", D, "a Parquet job that does not name its features",
         None, ValueError, r"source\.columns is not set",
         "'source.columns is not set', the numeric columns, the ids, a suggested list",
         "everything: refused by the first task",
         see="tests/test_flows.py::test_a_parquet_job_names_its_features"),

    # ---------------------------------------------------------------- model files
    Case("model-truncated", M, "a model file cut in half",
         publish_damaged_model, ModelFileError,
         r"'@S@/model\.daskgmm' is not a daskgmm model file \(not a zip archive",
         "the file", WORLD + ", and the damaged file",
         prepare=damaged_model(lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]))),
    Case("model-flipped-byte", M, "a model file with one byte flipped",
         publish_damaged_model, ModelFileError,
         r"'@S@/model\.daskgmm': member arrays/means_\.npy is damaged \(BadZipFile: Bad CRC",
         "the file, the member, the zip's CRC check", WORLD + ", and the damaged file",
         prepare=damaged_model(lambda p: flip_byte(p, "arrays/means_.npy"))),
    Case("model-missing-member", M, "a model file without `arrays/means_.npy`",
         publish_damaged_model, ModelFileError,
         r"'@S@/model\.daskgmm' is incomplete: missing arrays/means_\.npy",
         "the file and the missing member", WORLD + ", and the damaged file",
         prepare=damaged_model(lambda p: rewrite_zip(p, lambda m: m.pop("arrays/means_.npy")))),
    Case("model-pickle-member", M, "a member holding a pickled object array",
         publish_damaged_model, ModelFileError,
         r"'@S@/model\.daskgmm': member arrays/means_\.npy holds Python objects, which are "
         r"never unpickled", "the file and the member; nothing is unpickled",
         WORLD + ", and the damaged file",
         prepare=damaged_model(lambda p: rewrite_zip(p, lambda m: m.update({
             "arrays/means_.npy": npy(np.array([["a"] * 3] * 3, dtype=object), True)})))),
    Case("model-nan-weights", M, "NaN in the weights", publish_damaged_model, ModelFileError,
         r"'@S@/model\.daskgmm': arrays/weights_\.npy holds nan at \(0,\)",
         "the file, the member, the value and index", WORLD + ", and the damaged file",
         prepare=damaged_model(lambda p: rewrite_zip(p, lambda m: m.update({
             "arrays/weights_.npy": npy(np.array([np.nan, 0.5, 0.5]))})))),
    Case("model-weights-sum-5", M, "weights summing to 5", publish_damaged_model,
         ModelFileError, r"'@S@/model\.daskgmm': arrays/weights_\.npy must be positive and sum "
                         r"to 1; got minimum 1 and sum 5", "the file, the member, the sum",
         WORLD + ", and the damaged file",
         prepare=damaged_model(lambda p: rewrite_zip(p, lambda m: m.update({
             "arrays/weights_.npy": npy(np.array([1.0, 1.0, 3.0]))})))),
    Case("model-tampered-id", M, "a threshold edited by hand (the model id no longer matches)",
         publish_damaged_model, ModelFileError,
         r"'@S@/model\.daskgmm' was changed after it was written: its content does not hash "
         r"to its model id", "the file; refit, or load a copy you trust",
         WORLD + ", and the damaged file",
         prepare=damaged_model(lambda p: rewrite_zip(p, edit_json("metadata.json", lambda m: m[
             "anomaly"].update(threshold=m["anomaly"]["threshold"] - 5))))),
    Case("model-newer-format", M, "a model file of a newer format version",
         lambda ctx: daskgmm.load(ctx.scratch / "model.daskgmm"), ModelFileError,
         r"'@S@/model\.daskgmm' has model format version 99, newer than this daskgmm .* "
         r"Upgrade daskgmm", "the file, both versions, the fix", WORLD + ", and the file",
         prepare=damaged_model(lambda p: rewrite_zip(p, edit_json(
             "metadata.json", lambda m: m.update(format_version=99))))),
    Case("model-not-a-zip", M, "a text file given as a model",
         lambda ctx: daskgmm.load(ctx.scratch / "model.daskgmm"), ModelFileError,
         r"'@S@/model\.daskgmm' is not a daskgmm model file \(not a zip archive written by "
         r"GaussianMixture\.save", "the file", WORLD + ", and the file",
         prepare=write_file("model.daskgmm", "weights: [0.5, 0.5]\n")),
    Case("model-missing", M, "a model path that does not exist",
         lambda ctx: publish(ctx, model=str(ctx.scratch / "absent.daskgmm")), FileNotFoundError,
         r"No daskgmm model file at '@S@/absent\.daskgmm'", "the path", WORLD),
    Case("store-pointer-not-json", M, "a model store whose `current` is not JSON",
         lambda ctx: ModelStore(ctx.scratch / "store").load(), ValueError,
         r"@S@/store/current is damaged \(not JSON: .*restore it from a backup",
         "the file, the fix", WORLD + ", and the damaged store",
         prepare=damaged_store(lambda s, v: (s / "current").write_text("{half"))),
    Case("store-pointer-escapes", M, "a `current` naming `../../elsewhere`",
         lambda ctx: ModelStore(ctx.scratch / "store").load(), ValueError,
         r"The current pointer of model store '@S@/store' is damaged: it names version "
         r"'\.\./\.\./elsewhere', not a version of this store\. Restore @S@/store/current",
         "the store, the version named, the fix (restore, or promote a version)",
         WORLD + ", and the damaged store; nothing outside the store is read",
         prepare=damaged_store(lambda s, v: (s / "current").write_text(json.dumps(
             {"version": "../../elsewhere"})))),
    Case("store-info-not-json", M, "a version's `info.json` that is not JSON",
         lambda ctx: ModelStore(ctx.scratch / "store").info(ctx.world.version), ValueError,
         r"@S@/store/versions/\d{8}T\d+Z-[0-9a-f]{8}/info\.json is damaged \(not JSON",
         "the file, the fix", WORLD + ", and the damaged store",
         prepare=damaged_store(lambda s, v: (s / "versions" / v / "info.json").write_text("["))),
    Case("store-other-marker", M, "a model store whose marker is of another format",
         lambda ctx: _save(ModelStore(ctx.scratch / "store"), ctx.world.gm), ValueError,
         r"Refusing to use '@S@/store' as a model store: its _daskgmm_models\.json is not a "
         r"model store marker \(format 'something-else'", "the location, the marker, its format",
         WORLD + ", and the store as it was",
         prepare=damaged_store(lambda s, v: (s / "_daskgmm_models.json").write_text(
             json.dumps({"format": "something-else"})))),
    Case("store-foreign-directory", M, "a model store location holding other files",
         lambda ctx: _save(ModelStore(ctx.scratch / "mine"), ctx.world.gm), ValueError,
         r"Refusing to use '@S@/mine' as a model store: it holds data\.csv, not written by "
         r"daskgmm \(no _daskgmm_models\.json\)", "the location, what it holds, the fix",
         WORLD + ", and the other files",
         prepare=lambda ctx: ((ctx.scratch / "mine").mkdir(),
                              (ctx.scratch / "mine" / "data.csv").write_text("1,2"))),
    ]


def _checkpoint_case(id, what, edit, log, **params):
    return Case(id, M, what, lambda ctx: resume(ctx, **params), None, log,
                "none: a warning naming the file and the damage; the fit starts afresh and "
                "reaches the uninterrupted model", WORLD,
                prepare=damaged_checkpoint(edit), scratch_unchanged=False,
                check=lambda ctx, model: started_afresh(ctx, model, **params))


CASES += [
    _checkpoint_case("checkpoint-truncated", "a checkpoint cut in half",
                     lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
                     r"ignoring damaged checkpoint @S@/run\.ckpt \(BadZipFile"),
    _checkpoint_case("checkpoint-flipped-byte", "a checkpoint with one byte flipped",
                     lambda p: flip_byte(p, "c0/means.npy"),
                     r"ignoring damaged checkpoint @S@/run\.ckpt \(member c0/means\.npy: "
                     r"BadZipFile: Bad CRC"),
    _checkpoint_case("checkpoint-missing-member", "a checkpoint without `c0/weights.npy`",
                     lambda p: rewrite_zip(p, lambda m: m.pop("c0/weights.npy")),
                     r"ignoring damaged checkpoint @S@/run\.ckpt \(member c0/weights\.npy"),
    _checkpoint_case("checkpoint-nan", "NaN in a checkpoint's means",
                     lambda p: rewrite_zip(p, lambda m: m.update(
                         {"c0/means.npy": npy(np.full((3, 3), np.nan))})),
                     r"ignoring damaged checkpoint @S@/run\.ckpt \(member c0/means\.npy: not "
                     r"finite float64 values\)"),
    _checkpoint_case("checkpoint-pickle", "a checkpoint member holding a pickle",
                     lambda p: rewrite_zip(p, lambda m: m.update(
                         {"c0/means.npy": npy(np.array([[{}] * 3] * 3, dtype=object), True)})),
                     r"ignoring damaged checkpoint @S@/run\.ckpt \(member c0/means\.npy: not a "
                     r"float array \(Object arrays cannot be loaded when allow_pickle=False"),
    _checkpoint_case("checkpoint-state-not-json", "a checkpoint whose `state.json` is not JSON",
                     lambda p: rewrite_zip(p, lambda m: m.update({"state.json": b"{half"})),
                     r"ignoring damaged checkpoint @S@/run\.ckpt \(JSONDecodeError"),
    _checkpoint_case("checkpoint-other-fit", "the checkpoint of a different fit (another seed)",
                     lambda p: None,
                     r"ignoring checkpoint @S@/run\.ckpt: it belongs to another fit",
                     random_state=1),
]

CASES += [
    # ---------------------------------------------------------------- publication
    Case("target-foreign-files", PUB, "a score target holding files daskgmm did not write",
         lambda ctx: publish(ctx, target=str(ctx.scratch / "foreign")), ValueError,
         r"Refusing to write scores to '@S@/foreign': it holds notes\.txt, not written by "
         r"daskgmm\.write_scores \(no _daskgmm_scores\.json\)",
         "the target, what it holds, the fix", WORLD + ", and the other files",
         prepare=lambda ctx: ((ctx.scratch / "foreign").mkdir(),
                              (ctx.scratch / "foreign" / "notes.txt").write_text("mine"))),
    Case("target-is-a-file", PUB, "a score target that is a file",
         lambda ctx: publish(ctx, target=str(ctx.scratch / "file")), ValueError,
         r"Refusing to write scores to '@S@/file': it is a file", "the target",
         WORLD + ", and the file", prepare=write_file("file", "x")),
    Case("target-inside-source", PUB, "a score target inside the Parquet source",
         lambda ctx: publish(ctx, X=str(ctx.world.source), columns=["a", "b", "c"],
                             target=str(ctx.world.source / "scores")), ValueError,
         r"Refusing to write scores to '@W@/source-pq/scores': it is inside the Parquet source "
         r"'@W@/source-pq'", "the target, the source, the fix", WORLD),
    Case("id-column-missing", PUB, "`id_columns=['user']` absent from the source",
         lambda ctx: publish(ctx, X=str(ctx.world.source), columns=["a", "b", "c"],
                             target=str(ctx.scratch / "out"), id_columns=["user"]), ValueError,
         r"id column\(s\) \['user'\] not in file 'part-0\.parquet' of Parquet dataset "
         r"'@W@/source-pq'.*columns there: event_id, a, b, c", "the column, the file, the "
         "columns there", WORLD),
    Case("id-column-clash", PUB, "an id column named like a score column",
         lambda ctx: publish(ctx, X=str(ctx.world.source), columns=["a", "b", "c"],
                             target=str(ctx.scratch / "out"), id_columns=["log_density"]),
         ValueError, r"id_columns \['log_density'\] clash with the score columns",
         "the column, the score columns", WORLD),
    Case("format-clash-parquet", PUB, "Zarr scores to a target holding Parquet scores",
         lambda ctx: publish(ctx, format="zarr"), ValueError,
         r"'@W@/scores-pq' holds parquet scores; this run writes zarr\. Use another target, or "
         r"format='parquet'", "the target, both formats, the fix", WORLD),
    Case("format-clash-zarr", PUB, "Parquet scores to a target holding Zarr scores",
         lambda ctx: publish(ctx, target=ctx.world.zarr, format="parquet"), ValueError,
         r"'@W@/scores\.zarr' holds zarr scores; this run writes parquet", "the same", WORLD),
    Case("no-threshold", PUB, "publishing with a model without a threshold",
         lambda ctx: publish(ctx, model=fit(ctx)), ValueError,
         r"no anomaly threshold", "the fix (set_threshold)", WORLD),
    Case("no-target", PUB, "publishing numpy data without a target",
         lambda ctx: daskgmm.write_scores(ctx.world.gm, ctx.world.X), ValueError,
         r"target= is required to write the scores of numpy array", "what is needed and why",
         WORLD),
    Case("pointer-not-json", PUB, "a Parquet target whose `_latest` is garbage",
         lambda ctx: daskgmm.read_scores(ctx.scratch / "scores-pq"), ValueError,
         r"@S@/scores-pq/_latest is damaged \(not JSON: .*restore it from a backup",
         "the pointer file, the fix", DAMAGED_TARGET,
         prepare=write_pointer(b"\x00garbage")),
    Case("pointer-not-json-prune", PUB, "pruning a target whose `_latest` is garbage",
         lambda ctx: daskgmm.prune_scores(ctx.scratch / "scores-pq", 1), ValueError,
         r"@S@/scores-pq/_latest is damaged \(not JSON", "the pointer file; nothing is deleted",
         WORLD + ", and every version of the damaged target", prepare=write_pointer(b"garbage")),
    Case("pointer-escapes", PUB, "a `_latest` naming `../../etc`",
         lambda ctx: daskgmm.latest_scores(ctx.scratch / "scores-pq"), ValueError,
         r"The score pointer of '@S@/scores-pq' is damaged: version '\.\./\.\./etc' is not a "
         r"version of this location", "the target, the version named, the fix",
         WORLD + ", and the damaged target; nothing outside the target is read",
         prepare=write_pointer(json.dumps({"format": "daskgmm-scores", "kind": "parquet",
                                           "version": "../../etc"}).encode())),
    Case("marker-not-json", PUB, "a Parquet target whose marker is garbage",
         lambda ctx: publish(ctx, target=str(ctx.scratch / "scores-pq")), ValueError,
         r"@S@/scores-pq/_daskgmm_scores\.json is damaged \(not JSON", "the marker file",
         DAMAGED_TARGET,
         prepare=lambda ctx: (copy_of(ctx, "scores-pq") / "_daskgmm_scores.json").write_text(
             "{x")),
    Case("zarr-attrs-garbage", PUB, "a Zarr target whose `attrs['daskgmm']` is a string",
         lambda ctx: publish(ctx, target=str(ctx.scratch / "scores.zarr"), format="zarr"),
         ValueError, r"@S@/scores\.zarr/zarr\.json: attributes\['daskgmm'\] is a JSON str, not "
                     r"the object Zarr and daskgmm\.write_scores write",
         "the file and the attribute",
         DAMAGED_TARGET, prepare=write_zarr_attrs(lambda a: "x")),
    Case("zarr-pointer-garbage", PUB, "a Zarr target whose pointer attribute is a string",
         lambda ctx: daskgmm.read_scores(ctx.scratch / "scores.zarr"), ValueError,
         r"@S@/scores\.zarr/zarr\.json: the score pointer attributes\['daskgmm'\]\['latest'\] "
         r"is damaged \(a JSON str", "the file and the attribute, the fix",
         DAMAGED_TARGET,
         prepare=write_zarr_attrs(lambda a: {**a, "latest": "x"})),
    Case("zarr-metadata-not-json", PUB, "a Zarr target whose `zarr.json` is not JSON",
         lambda ctx: daskgmm.read_scores(ctx.scratch / "scores.zarr"), ValueError,
         r"@S@/scores\.zarr/zarr\.json is damaged \(not JSON", "the file, the fix",
         DAMAGED_TARGET, prepare=write_zarr_attrs(raw=b"{x")),
    Case("zarr-pointer-other-kind", PUB, "a Zarr pointer claiming Parquet scores",
         lambda ctx: daskgmm.read_scores(ctx.scratch / "scores.zarr"), ValueError,
         r"The score pointer of '@S@/scores\.zarr' is damaged: kind 'parquet', but the "
         r"location holds zarr scores", "the target, both kinds", DAMAGED_TARGET,
         prepare=write_zarr_attrs(lambda a: {
             **a, "latest": {**a["latest"], "kind": "parquet"}})),

    # ---------------------------------------------------------------- configs
    Case("config-unknown-key", C, "a misspelt key (`model.n_component`)", error=ConfigError,
         match=r"job\.yaml: invalid job configuration .*model\.n_component \(line 7\): "
               r"unknown key; did you mean 'n_components'\?", gist="file, key, line, the "
         "likely key", unchanged=JOB_FILE,
         **config_case(JOB + "model:\n  n_component: 3\n")),
    Case("config-wrong-type", C, "a string where a number goes (`model.tol: small`)",
         error=ConfigError, match=r"model\.tol \(line 7\): Input should be a valid number",
         gist="key, line, what it should be", unchanged=JOB_FILE,
         **config_case(JOB + "model:\n  tol: small\n")),
    Case("config-billion-laughs", C, "YAML aliases expanding to 387 million strings",
         error=ConfigError, match=r"job\.yaml: .*expands to more than 10,000 values through its "
                                  r"aliases", gist="the file, the bound; refused before "
         "expanding", unchanged=JOB_FILE, **config_case(alias_bomb())),
    Case("config-too-large", C, "a job file over 256 KiB", error=ConfigError,
         match=r"job\.yaml: a job file is at most 262,144 bytes", gist="the file, the bound",
         unchanged=JOB_FILE,
         **config_case(JOB + "pad: '" + "x" * 300_000 + "'\n")),
    Case("config-credentials-in-url", C, "credentials inside the source URL",
         error=ConfigError, match=r"source\.uri \(line 3\): credentials inside a URL are "
                                  r"refused", gist="key, line, the fix; the credentials are "
         "not shown", unchanged=JOB_FILE,
         check=lambda ctx, exc: hidden(str(exc)),
         **config_case(JOB.replace("data/x.zarr", f"s3://{KEY}:{SECRET}@bucket/x.zarr"))),
    Case("config-inline-secret", C, "a secret written inline in `storage_options`",
         error=ConfigError, match=r"source\.storage_options\.secret \(line 5\): inline secret; "
                                  r"write it as \{env: AWS_SECRET_ACCESS_KEY\}",
         gist="key, line, the fix; the secret is not shown", unchanged=JOB_FILE,
         check=lambda ctx, exc: hidden(str(exc)),
         **config_case(JOB.replace("  uri: data/x.zarr\n", "  uri: data/x.zarr\n  "
                                   f"storage_options:\n    secret: {SECRET}\n"))),
    Case("config-inf-margin", C, "`nightly.drift_margin: .inf`", error=ConfigError,
         match=r"nightly\.drift_margin \(line 7\): Input should be a finite number",
         gist="key, line, what it should be", unchanged=JOB_FILE,
         **config_case(JOB + "nightly:\n  drift_margin: .inf\n")),
    Case("config-missing-env", C, "a secret's environment variable not set",
         lambda ctx: resolve_storage_options(
             load_config(ctx.scratch / "job.yaml").source.storage_options,
             "source.storage_options"), ConfigError,
         r"source\.storage_options\.secret: environment variable DASKGMM_CATALOGUE_UNSET is "
         r"not set", "key, variable, the fix", JOB_FILE,
         prepare=write_file("job.yaml", JOB.replace("  uri: data/x.zarr\n", "  uri: "
                            "data/x.zarr\n  storage_options:\n    secret: {env: "
                            "DASKGMM_CATALOGUE_UNSET}\n"))),
    Case("config-bad-cron", C, "`schedule.cron: '0 25 * * *'`", error=ConfigError,
         match=r"schedule\.cron \(line 7\): .*hour field of '0 25 \* \* \*': '25' is not in "
               r"0-23", gist="key, line, field, value, range", unchanged=JOB_FILE,
         **config_case(JOB + "schedule:\n  cron: '0 25 * * *'\n")),
    Case("config-bad-timezone", C, "`schedule.timezone: Mars/Olympus`", error=ConfigError,
         match=r"schedule\.timezone \(line 7\): .*unknown time zone 'Mars/Olympus'",
         gist="key, line, value, the fix", unchanged=JOB_FILE,
         **config_case(JOB + "schedule:\n  timezone: Mars/Olympus\n")),
    Case("config-yaml-syntax", C, "a YAML syntax error", error=ConfigError,
         match=r"job\.yaml: YAML syntax error at line 4, column \d+",
         gist="file, line, column", unchanged=JOB_FILE,
         **config_case("name: job\nsource:\n  uri: [data/x.zarr\noutputs: {}\n")),
    Case("config-duplicate-key", C, "a key written twice", error=ConfigError,
         match=r"job\.yaml: .*name.*(twice|more than once|duplicate)",
         gist="file, key, lines", unchanged=JOB_FILE,
         **config_case(JOB + "name: again\n")),

    # ---------------------------------------------------------------- secrets
    Case("secret-repr", S, "`repr` of a GaussianMixture with secret `storage_options`",
         lambda ctx: repr(GaussianMixture(storage_options=SECRET_OPTIONS)), None, None,
         "none: the values show as `'***'`", WORLD, check=masked_in),
    Case("secret-html-repr", S, "its HTML repr (notebooks)",
         lambda ctx: estimator_html_repr(GaussianMixture(storage_options=SECRET_OPTIONS)),
         None, None, "none: the values show as `'***'`", WORLD, check=masked_in),
    Case("secret-pipeline-repr", S, "a scikit-learn Pipeline holding it, and `get_params()`",
         lambda ctx: [repr(make_pipeline(GaussianMixture(storage_options=SECRET_OPTIONS))),
                      estimator_html_repr(make_pipeline(
                          GaussianMixture(storage_options=SECRET_OPTIONS))),
                      str(GaussianMixture(storage_options=SECRET_OPTIONS).get_params())],
         None, None, "none: the values show as `'***'`", WORLD, check=masked_in),
    Case("secret-saved-and-logged", S, "fit, save, store and publish with secret options",
         save_publish_with_secret_options, None, None,
         "none: no model file, info.json, manifest, score file, log line or repr holds the "
         "secret", WORLD, scratch_unchanged=False, check=lambda ctx, texts: hidden(*texts)),
]


def _full_disk_case(id, what, provoke, match, unchanged, gist):
    return Case(id, F, what, provoke, StorageFullError, match, gist, unchanged,
                prepare=on_full_disk,
                check=enospc)


def enospc(ctx, exc):
    """An OSError with errno ENOSPC, the filesystem's error chained."""
    assert isinstance(exc, OSError) and exc.errno == errno.ENOSPC, repr(exc)
    assert isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.ENOSPC


FULL = r"No space left on device while writing {0}: free space on the filesystem holding {0} " \
       r"or choose another location\."

CASES += [
    # ---------------------------------------------------------------- faults
    _full_disk_case("disk-full-model-save", "disk full while saving a model version",
                    lambda ctx: _save(full(ctx).store, ctx.world.gm),
                    FULL.format(r"@F@/store/versions/\d{8}T\d+Z-[0-9a-f]{8}/model\.daskgmm"),
                    "the store: current pointer, current model; no partial version",
                    "`No space left on device while writing <store>/versions/<version>/"
                    "model.daskgmm: free space on the filesystem holding <the same path> or "
                    "choose another location.` (an OSError with errno ENOSPC, the filesystem's "
                    "error chained)"),
    _full_disk_case("disk-full-promote", "disk full while promoting",
                    lambda ctx: full(ctx).store.promote(full(ctx).version, reason="again"),
                    FULL.format("@F@/store/current"), "the store: current pointer",
                    "the same, naming `<store>/current`"),
    _full_disk_case("disk-full-lock", "disk full while taking the job's lock",
                    lambda ctx: full(ctx).store.lock("job-nightly-1").acquire(),
                    FULL.format("@F@/store/lock"), "the store; no empty lock file is left",
                    "the same, naming `<store>/lock`"),
    _full_disk_case("disk-full-model-file", "disk full while saving a model file",
                    lambda ctx: ctx.world.gm.save(full(ctx).root / "m.daskgmm"),
                    FULL.format(r"@F@/m\.daskgmm"), "every file; no temporary file is left",
                    "the same, naming the model file"),
    _full_disk_case("disk-full-checkpoint", "disk full while writing a checkpoint",
                    lambda ctx: GaussianMixture(**{**CKPT_KW, "random_state": 1}).fit(
                        ctx.world.X, checkpoint=Checkpoint(full(ctx).checkpoint, every=1)),
                    FULL.format(r"@F@/run\.ckpt"), "the previous checkpoint",
                    "the same, naming the checkpoint"),
    _full_disk_case("disk-full-publish-parquet", "disk full while publishing Parquet scores",
                    lambda ctx: publish(ctx, X=ctx.world.X[:600], target=full(ctx).parquet),
                    FULL.format(r"@F@/scores-pq/_versions/r2/[0-9a-f]{8}/part-00000\.parquet"),
                    "the target: pointer, current scores; no directory of the failed run",
                    "the same, naming the Parquet file being written"),
    _full_disk_case("disk-full-publish-zarr", "disk full while publishing Zarr scores",
                    lambda ctx: publish(ctx, X=ctx.world.X[:600], target=full(ctx).zarr,
                                        format="zarr"),
                    FULL.format(r"@F@/scores\.zarr/_versions/r2/[0-9a-f]{8}\S*"),
                    "the target: pointer, current scores; no group of the failed run",
                    "the same, naming the version group being written"),
    Case("s3-stopped-mid-publication", F, "the S3 endpoint stopped while scores are written",
         s3_publish_stopped_mid_write, StorageUnreachableError,
         r"Could not reach the storage while writing s3://catalogue/scores/_versions/r2/"
         r"[0-9a-f]{8}/\S+ \(EndpointConnectionError: .*\): check that its endpoint is up and "
         r"reachable, then re-run\.",
         "`Could not reach the storage while writing <url of the piece> (<the error>): check "
         "that its endpoint is up and reachable, then re-run.` (a ConnectionError)",
         "the target's pointer, current scores and marker (pieces of the failed attempt stay "
         "in its unpublished version until a re-run of the run id)", prepare=on_s3),
    Case("s3-stopped-mid-model-save", F, "the S3 endpoint stopped between the model file and "
         "its info.json", s3_save_stopped_mid_write, StorageUnreachableError,
         r"Could not reach the storage while writing s3://catalogue/store/versions/"
         r"\d{8}T\d+Z-[0-9a-f]{8}/info\.json \(EndpointConnectionError",
         "the same, naming the version's info.json",
         "the store's current pointer, current model, list of versions (the model file of "
         "the incomplete version is not listed)", prepare=on_s3),
    Case("worker-killed-mid-fit", F, "a worker process killed (SIGKILL) mid-fit on a "
         "LocalCluster", None, None, None, "none: the fit reaches the same model",
         "the model: same iterations and parameters",
         see="tests/test_distributed.py::test_worker_killed_mid_fit_gives_same_result"),
    Case("flow-killed-mid-fit", F, "the flow's process killed (SIGKILL) mid-fit", None, None,
         None, "none: the re-run resumes from the checkpoint to the same model",
         "the store: no current model until the re-run promotes",
         see="tests/test_flows.py::test_fit_killed_mid_fit_resumes_to_the_same_model"),
    Case("writer-killed-mid-publication", F, "the score writer killed (SIGKILL) mid-write",
         None, None, None, "none: the previous version stays current; a re-run of the run id "
         "removes the debris", "the target: pointer, current scores",
         see="tests/test_scores.py::test_process_killed_mid_write_leaves_previous_version_"
             "readable"),
    Case("tls-client-refused", F, "the job's TLS settings do not match the scheduler's "
         "(no certificate, another CA, a certificate the scheduler refuses)", None, None, None,
         "`ClusterConnectionError`: the address, which of `cluster.tls`'s files does not "
         "match and what to give instead; the CLI prints it in one line",
         "the cluster (still running, its workers kept) and the job's outputs",
         see="tests/test_cluster.py::test_a_client_without_the_cluster_s_certificate_is_"
             "refused"),
    Case("scheduler-unreachable", F, "nothing listens at `cluster.address`", None, None, None,
         "`ClusterConnectionError`: the address, nothing listening, the scheduler command "
         "to start", "the job's outputs",
         see="tests/test_cluster.py::test_nothing_listening_is_one_clear_error"),
    Case("backend-extra-missing", F, "`cluster.backend: slurm` (or pbs, kubernetes) without "
         "its library installed", None, None, None,
         "a config error naming the backend and the extra to install "
         "(`pip install 'daskgmm[slurm]'`)", "everything: nothing starts",
         see="tests/test_cluster.py::test_a_missing_library_names_the_extra"),
    Case("chunks-too-large-for-workers", F, "input chunks (dask chunks, Zarr chunks, Parquet "
         "row groups) larger than the workers' memory can hold", None, None, None,
         "`ChunkMemoryWarning` before any pass: the chunk size, the workers' memory_limit "
         "and threads, the size that fits and how to get it",
         "nothing: a warning; the job runs (a worker may pause)",
         see="tests/test_sources.py::test_chunks_too_large_for_the_workers_warn"),
    Case("scheduler-killed-mid-fit", F, "the Dask scheduler process killed (SIGKILL) mid-fit",
         scheduler_killed_mid_fit, ConnectionError,
         r"Lost the Dask scheduler tcp://127\.0\.0\.1:\d+ during an EM iteration over the "
         r"dask array .*Restart the scheduler .* a fit given a checkpoint resumes",
         "`ClusterLostError`: the scheduler's address, the pass, the fix (restart, re-run; a "
         "checkpoint resumes)", WORLD + " (the harness's scheduler file aside)",
         scratch_unchanged=False),
]


def _world_snapshot(world):
    return lambda: snapshot(world.root)


def _param(case):
    marks = []
    if case.xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=case.xfail,
                                       raises=case.xfail_raises))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_case(case, world, tmp_path, request, caplog):
    if case.see is not None:
        reference_exists(case.see)  # exercised there; here only catalogued
        return
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ctx = Ctx(world, scratch, request)
    caplog.set_level(logging.WARNING)
    try:
        if case.prepare is not None:
            case.prepare(ctx)
        ctx.watch("world", _world_snapshot(world))
        if case.scratch_unchanged:
            ctx.watch("scratch", lambda: snapshot(scratch))
        before = {name: take() for name, take in ctx.watched.items()}
        pattern = case.match
        if pattern is not None:
            for token, path in (("@W@", world.root), ("@S@", scratch)):
                pattern = pattern.replace(token, re.escape(str(path)))
            if "@F@" in pattern:
                pattern = pattern.replace("@F@", re.escape(str(full(ctx).root)))
        if case.error is None:
            result = case.provoke(ctx)
            if pattern is not None:
                assert re.search(pattern, caplog.text, re.S), caplog.text
        else:
            with pytest.raises(case.error) as info:
                case.provoke(ctx)
            result = info.value
            assert re.search(pattern, str(info.value), re.S), str(info.value)
        if case.check is not None:
            case.check(ctx, result)
    finally:
        for cleanup in reversed(ctx.cleanups):
            cleanup()
    for name, take in ctx.watched.items():
        assert take() == before[name], f"{name} changed"


def test_every_family_has_cases_and_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert {c.family for c in CASES} <= set(FAMILIES)
    assert all(any(c.family == f for c in CASES) for f in FAMILIES)
    for case in CASES:
        assert (case.provoke is None) == (case.see is not None), case.id
        assert case.error is None or case.match, case.id


# --------------------------------------------------------------------------- the README

SECTION = "## What fails, and what stays unchanged"


def readme_table() -> str:
    """The catalogue as the README's markdown table, one row per case, by family."""
    def cell(text):
        return text.replace("|", "\\|").replace("\n", " ")

    rows = ["| input or fault | error (type and the gist of the message) | what stays unchanged |",
            "|---|---|---|"]
    for family in FAMILIES:
        rows.append(f"| **{family}** | | |")
        for case in (c for c in CASES if c.family == family):
            if case.error is None:
                error = case.gist
            else:
                names = case.error if isinstance(case.error, tuple) else (case.error,)
                error = f"`{'/'.join(e.__name__ for e in names)}`: {case.gist}"
            if case.xfail:
                error = case.gist
            if case.see:
                error += f" (tested in `{case.see.split('::')[0]}`)"
            rows.append(f"| `{case.id}`: {cell(case.what)} | {cell(error)} | "
                        f"{cell(case.unchanged)} |")
    return "\n".join(rows)


def test_readme_table():
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in body.splitlines() if line.startswith("|"))
    assert table == readme_table(), (
        "README.md's catalogue table differs from tests/test_catalogue.py's CASES: "
        "regenerate it with `.venv/bin/python -m tests.test_catalogue`")
    for case in CASES:
        assert f"`{case.id}`" in table


if __name__ == "__main__":
    print(readme_table())
