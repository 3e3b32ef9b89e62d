"""The ``daskgmm`` command: run the nightly job, fit, select, score, promote, inspect.

    daskgmm demo-data                       # demo Zarr + Parquet data in demo-data/
    daskgmm run configs/demo.yaml           # the nightly flow (Prefect, no server needed)
    daskgmm select configs/demo.yaml        # the BIC grid, saved as a new version
    daskgmm fit configs/demo.yaml -k 5 -c full [--promote]
    daskgmm promote configs/demo.yaml VERSION   # make a version current (or roll back)
    daskgmm score configs/demo.yaml [--source URI] [--model-version V]
    daskgmm inspect demo-data/models        # a model store, a version or a model file

An error prints one line (``daskgmm fit: error: ValueError: ...``); ``--debug`` prints its
traceback and Prefect's log lines too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import traceback

from daskgmm.covariance import COVARIANCE_TYPES
from daskgmm.progress import PHASE_NAMES, PassTotal


class _ProgressBar:
    """The run's progress on the terminal, from every pass's event (nothing when stderr
    is not a terminal and no rich ``console`` is given).

    One line: the time, the phase of the last pass (initialisation, EM, final pass,
    threshold, publish), the passes over the data done, and in EM the iteration with its
    bound ``max_iter``, the candidates still running of all and the best mean
    log-likelihood per row, then how EM ended. No percentage: how many iterations EM
    takes is not known in advance, and ``max_iter`` is only a bound.
    """

    def __init__(self, console=None):
        self.bar = self.task = None
        self.passes = PassTotal()
        self.ended = {}  # label -> whether each candidate of the current EM converged
        if console is None and sys.stderr.isatty():
            from rich.console import Console

            console = Console(stderr=True)
        if console is not None:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            # the time first: a narrow terminal cuts the end of the line, the least needed
            self.bar = Progress(SpinnerColumn(), TimeElapsedColumn(),
                                TextColumn("[bold]{task.fields[phase]}[/bold] · "
                                           "{task.description}"),
                                console=console, transient=True)
            self.task = self.bar.add_task("first pass over the data running",
                                          phase="starting")

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def __call__(self, event):
        if self.bar is None:
            return
        n = self.passes(event)
        done = f"{n} pass{'' if n == 1 else 'es'}"
        what = self._describe(event)
        self.bar.update(self.task, phase=PHASE_NAMES[event.phase],
                        description=f"{done} · {what}" if what else done)

    def _describe(self, event) -> str:
        if event.phase != "em":
            self.ended.clear()
            if event.phase == "final":
                return f"scored the final parameters of {event.n_candidates} candidates"
            return ""
        self.ended.update({c.label: c.converged for c in event.candidates})
        best = f"best log-likelihood {event.log_likelihood:.5f}"
        n = event.n_candidates
        if event.active:
            running = f"{event.active} of {n} candidate{'s' if n > 1 else ''} running"
            return f"iteration {event.n_iter} (max {event.max_iter}) · {running} · {best}"
        converged = sum(self.ended.values())
        if n == 1:
            how = (f"converged at iteration {event.n_iter}" if converged else
                   f"not converged after {event.n_iter} iterations (max_iter)")
        else:
            how = f"{converged} of {n} candidates converged"
        return f"EM finished: {how} · {best}"


def _print_result(result: dict):
    shown = {k: v for k, v in result.items() if k != "selection_table"}
    print(json.dumps(shown, indent=2, default=str))


def _run(args):
    from daskgmm_pipelines.flows import nightly

    with _ProgressBar() as bar:
        result = nightly(config_path=args.config, run_id=args.run_id, progress=bar)
    _print_result(result)
    print(f"\nmodel:  {result['model_url']}\nscores: {result['scores_url']}\n"
          f"report: {result['report_url']}")


def _select(args):
    from daskgmm_pipelines.flows import select

    with _ProgressBar() as bar:
        result = select(config_path=args.config, run_id=args.run_id,
                        promote_model=args.promote, progress=bar)
    _print_result(result)
    _print_promotion_hint(args, result)


def _fit(args):
    from daskgmm_pipelines.flows import fit

    with _ProgressBar() as bar:
        result = fit(config_path=args.config, n_components=args.n_components,
                     covariance_type=args.covariance_type, run_id=args.run_id,
                     promote_model=args.promote, progress=bar)
    _print_result(result)
    _print_promotion_hint(args, result)


def _print_promotion_hint(args, result: dict):
    if not result["promoted"]:
        version = result["model_version"]
        print(f"\nmodel version {version} is saved, not current; make it current with: "
              f"daskgmm promote {args.config} {version}")


def _score(args):
    from daskgmm_pipelines.flows import score

    with _ProgressBar() as bar:
        _print_result(score(config_path=args.config, model_version=args.model_version,
                            source=args.source, run_id=args.run_id, progress=bar))


def _promote(args):
    import daskgmm
    from daskgmm_pipelines.config import load_config, resolve_storage_options

    cfg = load_config(args.config)
    options = resolve_storage_options(cfg.outputs.storage_options or {},
                                      "outputs.storage_options")
    store = daskgmm.ModelStore(cfg.outputs.model_store, storage_options=options or None)
    store.info(args.version)  # names the versions there when it is not one of them
    store.load(args.version)  # a version that does not load is never made current
    record = store.promote(args.version, reason=args.reason or "promoted from the command line",
                           actor=f"daskgmm promote ({_user()})")
    print(f"model version {args.version} is now current in {store.url} (it replaced "
          f"{record['previous'] or 'no model'}); recorded under {store.url}/promotions/")


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") \
            from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _demo_data(args):
    from daskgmm_pipelines.demo_data import demo_data_exists, write_demo_data

    kept = not args.overwrite and demo_data_exists(args.out)
    paths = write_demo_data(args.out, n_samples=args.rows, n_features=args.features,
                            n_components=args.components, seed=args.seed,
                            anomaly_fraction=args.anomaly_fraction, overwrite=args.overwrite)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    if kept:
        print(f"(demo data already in {args.out}: kept as it is; --overwrite writes it again "
              "with these options)")


def _inspect(args):
    import daskgmm

    target = args.model
    options = None
    if target.lower().endswith((".yaml", ".yml")):
        from daskgmm_pipelines.config import load_config

        store = load_config(target).outputs.model_store
        raise ValueError(f"{target} is a job file; inspect takes a model store, a version of "
                         f"it or a model file: daskgmm inspect {store}")
    is_store = os.path.isdir(target) or (
        "://" in target and not target.endswith(".daskgmm"))
    if is_store:
        store = daskgmm.ModelStore(target, storage_options=options)
        versions = store.versions()
        current = store.current()
        print(f"model store {target}: {len(versions)} version(s)")
        for v in versions:
            mark = "*" if current and current["version"] == v else " "
            info = store.info(v)
            print(f" {mark} {v}  k={info.get('n_components')} {info.get('covariance_type')} "
                  f"run={info.get('run_id')}")
        promotions = store.promotions()
        if promotions:
            print(f"\nlast promotions ({len(promotions)} in all):")
            for p in promotions[-5:]:
                print(f"  {p['promoted_at']}  {p['version']}  by {p['promoted_by']}: "
                      f"{p['promotion_reason']}")
        version = args.version or (current or {}).get("version")
        if version is None:
            return
        model = store.load(version)
        print(f"\nversion {version}" + (" (current)" if current and
                                         current["version"] == version else ""))
    else:
        model = daskgmm.load(target)
    print(_describe(model))


def _describe(gm) -> str:
    import numpy as np

    import daskgmm

    lines = [
        f"GaussianMixture: {gm.n_components} components, covariance_type="
        f"{gm.covariance_type!r}, {gm.n_features_in_} features",
        f"  model id:        {daskgmm.model_id(gm)}",
        f"  features:        {list(getattr(gm, 'feature_names_in_', [])) or 'unnamed'}",
        f"  fitted on:       {gm.fit_n_samples_:,} rows; {gm.n_iter_} iterations, "
        f"converged={gm.converged_}, lower bound {gm.lower_bound_:.6f}",
        f"  weights:         {np.round(gm.weights_, 4).tolist()}",
    ]
    if getattr(gm, "threshold_", None) is not None:
        lines.append(
            f"  threshold:       log-density < {gm.threshold_:.6g} is an anomaly "
            + (f"(contamination {gm.contamination_})" if gm.contamination_ is not None
               else "(fixed)"))
        if len(gm.score_quantiles_):
            q = ", ".join(f"{lv:g}: {v:.4g}" for lv, v in
                          zip(gm.score_quantile_levels_, gm.score_quantiles_, strict=True))
            lines.append(f"  training log-density quantiles: {q}")
            lines.append(f"  training mean log-likelihood:   {gm.training_log_likelihood_:.6f}")
    else:
        lines.append("  threshold:       none (set_threshold not called)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daskgmm",
        description="Gaussian mixtures on data larger than memory: the nightly "
                    "fit-select-score job and its parts, run as Prefect flows.",
    )
    debug = ("on an error, print its traceback; show all of Prefect's log lines (they are "
             "always in the Prefect run logs)")
    parser.add_argument("--debug", action="store_true", help=debug)
    parser.set_defaults(flow=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name, help_, fn, run_id=True):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("config", help="job file (YAML), e.g. configs/demo.yaml")
        if run_id:  # the commands that run a Prefect flow
            p.add_argument("--run-id", default=None,
                           help="names the run (default: today's date, UTC); a re-run with "
                                "the same id resumes its fit and replaces its own scores")
        p.set_defaults(fn=fn, flow=run_id)
        return p

    with_config("run", "Run the nightly flow: warm-start or re-select, save the model, "
                       "score every row, publish, report.", _run)
    p = with_config("select", "Fit the config's BIC grid in shared passes and save the "
                              "best model as a new version (current only with --promote).",
                    _select)
    p.add_argument("--promote", action="store_true",
                   help="make the new version the current model (default: saved only)")
    p = with_config("fit", "Fit one configuration (checkpointed) and save it as a new version "
                           "(current only with --promote).", _fit)
    p.add_argument("--promote", action="store_true",
                   help="make the new version the current model (default: saved only)")
    p.add_argument("-k", "--n-components", type=_positive_int, default=None,
                   help="number of components, a whole number >= 1 (default: the config's "
                        "first)")
    p.add_argument("-c", "--covariance-type", default=None,
                   choices=list(COVARIANCE_TYPES),
                   help="covariance type (default: the config's first)")
    p = with_config("score", "Score a source with a stored model and publish the scores.",
                    _score)
    p.add_argument("--source", default=None, help="data to score (default: the config's)")
    p.add_argument("--model-version", default=None,
                   help="model store version (default: the current model)")

    p = with_config("promote", "Make a saved model version the current one (a rollback is "
                               "the promotion of an older version); recorded in the store.",
                    _promote, run_id=False)
    p.add_argument("version", help="the version to make current (see daskgmm inspect)")
    p.add_argument("--reason", default=None, help="why, kept in the promotion record")

    p = sub.add_parser("demo-data", help="Write a demo Zarr group and Parquet dataset with "
                                         "planted anomalies.",
                       description="Write a demo Zarr group (array X, labels) and a Parquet "
                                   "dataset (event_id and feature columns) drawn from a "
                                   "Gaussian mixture, with planted anomalies (label -1).")
    p.add_argument("--out", default="demo-data", help="directory (default: demo-data)")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows (default: 1,000,000)")
    p.add_argument("--features", type=int, default=6, help="features (default: 6)")
    p.add_argument("--components", type=int, default=5, help="true components (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--anomaly-fraction", type=float, default=0.005,
                   help="fraction of planted anomalies (default: 0.005)")
    p.add_argument("--overwrite", action="store_true", help="replace existing demo data")
    p.set_defaults(fn=_demo_data)

    p = sub.add_parser("inspect", help="Print a model's summary.",
                       description="Print a model's summary: a model file (.daskgmm), or a "
                                   "model store (its versions and its current model).")
    p.add_argument("model", help="model file or model store directory/URL")
    p.add_argument("--version", default=None, help="model store version to show")
    p.set_defaults(fn=_inspect)
    for p in sub.choices.values():  # --debug also after the command
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
    return parser


def _prefect_environment():
    """Library log lines in the flow logs; no usage telemetry from the local server; and
    time for Prefect's temporary server to start on a busy machine (Prefect waits 20 s,
    which a loaded 2-core machine can exceed)."""
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "daskgmm,daskgmm_pipelines")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


class _TerminalLogFilter(logging.Filter):
    """Prefect's log lines on stderr without ``--debug``: never the run loggers'
    errors, which are Prefect's report of the failing task and flow run with its
    traceback (:func:`main` prints the cause in one line; the Prefect run logs keep
    them). INFO lines only when stderr is not a terminal: under cron or in a pipe they
    are the job's log; in a terminal the progress bar shows the progress. Dask's own
    INFO lines never, and its errors without their tracebacks."""

    def __init__(self, show_info: bool):
        super().__init__()
        self.show_info = show_info

    def filter(self, record):
        if record.levelno < logging.WARNING:
            # the cluster's own INFO lines (workers joining and leaving) are not the job's
            return self.show_info and not _dask_own(record)
        return not (record.levelno >= logging.ERROR
                    and record.name in ("prefect.flow_runs", "prefect.task_runs"))


def _dask_own(record) -> bool:
    return record.name.split(".", 1)[0] in ("distributed", "dask")


class _OneLineForDask(logging.Formatter):
    """The console handler's formatter, but dask's own errors without their tracebacks:
    distributed's errors while a cluster shuts down come with tracebacks of its
    internals, and their one line says enough (--debug shows them whole). A formatted
    copy: the record, shared with the run-log handlers, keeps its traceback."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record):
        if record.exc_info and _dask_own(record):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None,
                                            "exc_text": None})
        return self.inner.format(record)


@contextlib.contextmanager
def _quiet_prefect_terminal(until_exit: bool):
    """:class:`_TerminalLogFilter` on Prefect's console handlers while a flow runs (the
    handlers of the Prefect API, i.e. the run logs, are left alone); ``until_exit``: and
    after, for a process that ends with the command (Prefect's temporary server logs
    its stop at exit)."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    handlers = [h for name in (None, "prefect") for h in logging.getLogger(name).handlers
                if isinstance(h, PrefectConsoleHandler)]
    quiet = _TerminalLogFilter(show_info=not sys.stderr.isatty())
    formatters = [h.formatter for h in handlers]
    for handler in handlers:
        handler.addFilter(quiet)
        handler.setFormatter(_OneLineForDask(handler.formatter))
    try:
        yield
    finally:
        for handler, formatter in zip(handlers, formatters, strict=True) if not until_exit \
                else ():
            handler.removeFilter(quiet)
            handler.setFormatter(formatter)


def _ctrl_c_for_this_process_only():
    """Ctrl-C in a terminal signals the whole foreground process group: Prefect's
    temporary server and the Dask worker processes too, which then die mid-run, print
    their own tracebacks and leave this process retrying a dead server. Block SIGINT in
    this thread before any other thread or child process exists (both inherit the mask,
    and a blocked signal stays blocked across exec), and wait for it in one thread,
    which raises KeyboardInterrupt in the main thread (again until the main thread has
    it), which then shuts the run down in order (flow state, lock, cluster, server)."""
    import signal

    if not hasattr(signal, "pthread_sigmask") or threading.active_count() > 1:
        return
    # multiprocessing's resource tracker, started on first use, unblocks SIGINT in the
    # thread that starts it: start it now, before the mask is set
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def taken(signum, frame):  # runs in the main thread
        _INTERRUPT_TAKEN.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, taken)

    def receive():
        import _thread

        signal.sigwait({signal.SIGINT})
        # KeyboardInterrupt in the main thread; sent again every 2 s until the handler
        # has run there (a request made while the main thread is in a long C call is
        # handled when it returns), never once the shutdown has begun
        while not _INTERRUPT_TAKEN.is_set():
            _thread.interrupt_main()
            _INTERRUPT_TAKEN.wait(2.0)

    threading.Thread(target=receive, name="daskgmm-ctrl-c", daemon=True).start()


_INTERRUPT_TAKEN = threading.Event()


def main(argv=None) -> int:
    """Run a command. An error prints one line naming its type and message (and a hint
    at ``--debug``, which prints the traceback and all of Prefect's log lines); it exits
    with 1, a usage error with 2 (argparse), an interruption with 130."""
    args = build_parser().parse_args(argv)
    if argv is None:  # the installed command, not a call from Python
        _ctrl_c_for_this_process_only()
    debug = args.debug
    _prefect_environment()
    try:
        if getattr(args, "config", None) is not None:
            from daskgmm_pipelines.config import load_config

            load_config(args.config)  # a bad job file fails here, before any flow starts
        with (contextlib.nullcontext() if debug or not args.flow
              else _quiet_prefect_terminal(until_exit=argv is None)):
            args.fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        if debug:
            traceback.print_exc()
        print(f"daskgmm {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if not debug:
            print("(run with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        _INTERRUPT_TAKEN.set()  # ending anyway: no further interruption
    return 0


if __name__ == "__main__":
    sys.exit(main())
