"""Run reports: PNG plots and a markdown summary, saved next to the model version."""

from __future__ import annotations

import base64
import io

import numpy as np

# The largest PNG embedded in a markdown artifact (the plots are 20-60 KiB): the artifact
# is stored in the Prefect server's database and sent whole to the UI.
EMBED_MAX_BYTES = 256 * 1024

_COLOURS = {"full": "tab:blue", "tied": "tab:orange", "diag": "tab:green",
            "spherical": "tab:red"}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(7, 4.2), dpi=110)


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def bic_plot(table, criterion="bic", chosen=None) -> bytes:
    """BIC (or AIC) against k, one line per covariance type; the chosen model circled."""
    plt, fig, ax = _figure()
    for covariance_type, rows in table.groupby("covariance_type", sort=False):
        rows = rows.sort_values("n_components")
        ax.plot(rows["n_components"], rows[criterion], marker="o", label=covariance_type,
                color=_COLOURS.get(covariance_type))
    if chosen is not None:
        k, covariance_type = chosen
        row = table[(table.n_components == k) & (table.covariance_type == covariance_type)]
        ax.scatter(row["n_components"], row[criterion], s=220, facecolors="none",
                   edgecolors="black", linewidths=2, label=f"chosen: k={k}, {covariance_type}")
    ax.set_xlabel("number of components k")
    ax.set_ylabel(f"{criterion.upper()} (lower is better)")
    ax.set_title(f"Model selection: {criterion.upper()} against k")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(plt, fig)


def loglik_plot(lower_bounds, title="EM: mean log-likelihood per iteration") -> bytes:
    plt, fig, ax = _figure()
    its = np.arange(1, len(lower_bounds) + 1)
    ax.plot(its, lower_bounds, marker="o", color="tab:blue")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean log-likelihood per row")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def score_histogram(sketch, threshold, bins=80) -> bytes:
    """Histogram of anomaly scores (-log-density) with the threshold, log-scaled counts."""
    plt, fig, ax = _figure()
    values, weights = sketch.weighted_values()
    scores = -values
    cut = -threshold
    hi = max(np.quantile(scores, 0.9999) if scores.size else cut, cut) * 1.1 + 1
    lo = min(scores.min() if scores.size else cut, cut)
    edges = np.linspace(lo, hi, bins + 1)
    ax.hist(np.clip(scores, lo, hi), bins=edges, weights=weights, color="tab:blue", alpha=0.8,
            label="rows")
    ax.axvline(cut, color="tab:red", linewidth=2,
               label=f"threshold {cut:.3g} (log-density {threshold:.3g})")
    ax.set_yscale("log")
    ax.set_xlabel("anomaly score = -log-density (higher is more anomalous)")
    ax.set_ylabel("rows")
    ax.set_title("Anomaly scores of this run")
    ax.legend()
    return _png(plt, fig)


def png_data_uri(png: bytes, max_bytes: int = EMBED_MAX_BYTES) -> str | None:
    """The PNG as a ``data:image/png;base64,...`` URI, which a markdown image shows with
    no file to fetch (the Prefect UI renders it); None when it is larger than
    ``max_bytes``."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"Not a PNG: the data start with {png[:8]!r}.")
    if len(png) > max_bytes:
        return None
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(rows):
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines)


def _promotion_line(s: dict) -> str:
    promotion = s.get("promotion")
    if promotion is None:
        return "not decided"
    if promotion["promote"]:
        return f"**promoted**, now the current model: {promotion['reason']}"
    return (f"**not promoted** ({promotion['reason']}); it stays in the store for "
            f"inspection, tonight's scores come from the current version "
            f"`{s.get('scored_with')}`")


def missing_line(s: dict) -> str:
    """How many scored rows had missing features (NaN), and what was done with them."""
    n = int(s.get("n_incomplete", 0))
    if not n:
        return "0"
    share = f"{n:,} ({100 * n / s['n_rows']:.3f}%)" if s.get("n_rows") else f"{n:,}"
    done = {"marginalize": "scored by their observed features",
            "omit": "scored NaN, never flagged"}.get(s.get("nan_policy"), "")
    return f"{share}, {done}" if done else share


def summary_markdown(s: dict, images: dict | None = None) -> str:
    """The run's markdown summary from the dict the nightly flow assembles.

    ``s["plots"]`` maps each plot's title to its file, shown and linked. ``images`` maps
    titles to what to show instead (:func:`png_data_uri`), the file then named below it;
    None for a plot too large to embed, then only linked."""
    images = images or {}
    drift = s.get("drift")
    if drift is None:
        drift_line = f"not checked ({s.get('drift_note') or 'no warm start'})"
    else:
        drift_line = (
            f"tonight's mean log-likelihood under the last model {drift['tonight']:.4f} vs "
            f"training {drift['training']:.4f} (margin {drift['margin']}): "
            + ("**drifted**" if drift["drifted"] else "within the margin")
        )
    lines = [
        f"# daskgmm run `{s['run_id']}` of job `{s['job']}`",
        "",
        f"**{s['mode_text']}**",
        "",
        _table([
            {"what": "model", "value": f"k={s['n_components']}, {s['covariance_type']} "
                                       f"(version `{s['model_version']}`, id `{s['model_id']}`)"},
            {"what": "EM iterations", "value": f"{s['n_iter']} (converged: {s['converged']})"},
            {"what": "seconds", "value": f"{s['seconds']:.1f}"},
            {"what": "data passes", "value": s["n_passes"]},
            {"what": "rows scored", "value": f"{s['n_rows']:,}"},
            {"what": "rows with missing features", "value": missing_line(s)},
            {"what": "anomalies",
             "value": f"{s['n_anomalies']:,} ({100 * s['anomaly_rate']:.3f}%)"},
            {"what": "threshold (log-density)", "value": f"{s['threshold']:.6g}"},
            {"what": "drift check", "value": drift_line},
            {"what": "promotion", "value": _promotion_line(s)},
            {"what": "model", "value": f"`{s['model_url']}`"},
            {"what": "scores", "value": f"`{s['scores_url']}`"},
        ]),
        "",
        "## Plots",
        "",
    ]
    for title, url in s.get("plots", {}).items():
        src = images.get(title, url)
        if src is None:
            lines += [f"### {title}", "", f"Larger than {EMBED_MAX_BYTES // 1024} KiB, not "
                      f"shown here: [{url}]({url})", ""]
        elif src == url:
            lines += [f"### {title}", "", f"![{title}]({url})", "", f"[{url}]({url})", ""]
        else:
            lines += [f"### {title}", "", f"![{title}]({src})", "", f"File: `{url}`", ""]
    if s.get("selection_table"):
        lines += ["## Model selection", "", _table(s["selection_table"]), ""]
    return "\n".join(lines)
