"""The ``daskgmm`` command: run the nightly job, fit, select, score, promote, inspect.

    daskgmm demo-data                       # demo Zarr + Parquet data in demo-data/
    daskgmm run configs/demo.yaml           # the nightly flow (Prefect, no server needed)
    daskgmm select configs/demo.yaml        # the BIC grid, saved as a new version
    daskgmm fit configs/demo.yaml -k 5 -c full [--promote]
    daskgmm promote configs/demo.yaml VERSION   # make a version current (or roll back)
    daskgmm score configs/demo.yaml [--source URI] [--model-version V]
    daskgmm inspect demo-data/models        # a model store, a version or a model file
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from daskgmm.covariance import COVARIANCE_TYPES


class _ProgressBar:
    """A terminal progress bar over the passes of a run (nothing when stderr is not a
    terminal): the phase, EM iterations against ``max_iter`` (full once every candidate
    has stopped), the best log-likelihood and the candidates still running."""

    def __init__(self):
        self.bar = self.task = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]{task.fields[phase]}[/bold]"), BarColumn(),
                                TextColumn("{task.description}"), TimeElapsedColumn(),
                                transient=True)

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
        if self.task is None:
            self.task = self.bar.add_task("", total=None, phase="starting")
        if event.phase == "em":
            done = event.active == 0  # converged early: the bar ends full
            self.bar.update(self.task, total=event.max_iter, phase="EM",
                            completed=event.max_iter if done else event.n_iter,
                            description=f"iteration {event.n_iter}/{event.max_iter}, "
                                        f"log-likelihood {event.log_likelihood:.5f}, "
                                        f"{event.active} of {event.n_candidates} running")
        else:
            self.bar.update(self.task, phase=event.phase, total=None, completed=0,
                            description=f"pass {event.n_passes} done")


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
        _print_result(select(config_path=args.config, run_id=args.run_id,
                             promote_model=args.promote, progress=bar))


def _fit(args):
    from daskgmm_pipelines.flows import fit

    with _ProgressBar() as bar:
        _print_result(fit(config_path=args.config, n_components=args.n_components,
                          covariance_type=args.covariance_type, run_id=args.run_id,
                          promote_model=args.promote, progress=bar))


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
                           actor=f"daskgmm promote ({os.environ.get('USER', 'unknown user')})")
    print(f"model version {args.version} is now current in {store.url} (it replaced "
          f"{record['previous'] or 'no model'}); recorded under {store.url}/promotions/")


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
    from daskgmm_pipelines.demo_data import write_demo_data

    paths = write_demo_data(args.out, n_samples=args.rows, n_features=args.features,
                            n_components=args.components, seed=args.seed,
                            anomaly_fraction=args.anomaly_fraction, overwrite=args.overwrite)
    for kind, path in paths.items():
        print(f"{kind}: {path}")


def _inspect(args):
    import daskgmm

    target = args.model
    options = None
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name, help_, fn, run_id=True):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("config", help="job file (YAML), e.g. configs/demo.yaml")
        if run_id:
            p.add_argument("--run-id", default=None,
                           help="names the run (default: today's date, UTC); a re-run with "
                                "the same id resumes its fit and replaces its own scores")
        p.set_defaults(fn=fn)
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
    return parser


def _prefect_environment():
    """Library log lines in the flow logs; no usage telemetry from the local server."""
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "daskgmm,daskgmm_pipelines")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _prefect_environment()
    try:
        if getattr(args, "config", None) is not None:
            from daskgmm_pipelines.config import load_config

            load_config(args.config)  # a bad job file fails here, before any flow starts
        args.fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        if os.environ.get("DASKGMM_TRACEBACK"):
            raise
        print(f"daskgmm {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
