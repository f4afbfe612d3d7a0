"""Plots (matplotlib, Agg, no pyplot state) and the self-contained HTML report of a run.

Three kinds of figure, each also written as a PNG file next to the HTML:

- accuracy against p50 latency for every profile, the Pareto front of each device class
  drawn as a step line and the recommended picks starred (see :mod:`harness.report.recommend`);
- learning curves (validation metric per epoch) with one panel per strategy;
- the three benefits of transfer per strategy, measured against the scratch cell of the same
  backbone, dataset, task and seed (Torrey & Shavlik, "Transfer Learning", Handbook of
  Research on Machine Learning Applications, 2009, Fig. 1: higher start, higher slope,
  higher asymptote).
"""
from __future__ import annotations

import base64
import html
import io
import statistics
from pathlib import Path
from typing import Optional

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .benefits import transfer_benefits
from .recommend import DEVICE_CLASSES, candidates, format_recommendations, pareto_front, recommend
from .table import has_repeats, repeat_rows, summary_rows, unmeasured_notes

_CLASS_COLOR = {"mobile": "tab:green", "server": "tab:blue"}
_MARKERS = "osD^vP*Xh<>"


def curve(rec: dict) -> list[float]:
    """Validation metric per epoch, over all phases in training order."""
    return [e["val_metric"] for e in (rec.get("history") or {}).get("epochs", [])
            if e.get("val_metric") is not None]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_pareto(records: list[dict], profile: str, budget_ms: Optional[float]) -> Figure:
    """Metric against p50 latency under one profile, fronts per device class, picks starred."""
    cands = [c for c in candidates(records) if c.profile == profile]
    picks = {r.pick for r in recommend(records, budget_ms) if r.pick and r.profile == profile}
    strategies = sorted({c.strategy for c in cands})
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for c in cands:
        ax.scatter(c.latency_ms, c.metric, color=_CLASS_COLOR.get(c.device_class, "gray"),
                   marker=_MARKERS[strategies.index(c.strategy) % len(_MARKERS)], s=45,
                   alpha=0.8, edgecolors="black", linewidths=0.4)
        ax.annotate(f"{c.backbone} {c.runtime}{'' if c.precision == 'fp32' else ' ' + c.precision}",
                    (c.latency_ms, c.metric), fontsize=6, xytext=(3, 3),
                    textcoords="offset points", alpha=0.7)
    for dclass in DEVICE_CLASSES:
        front = pareto_front([c for c in cands if c.device_class == dclass])
        if front:
            ax.step([c.latency_ms for c in front], [c.metric for c in front], where="post",
                    color=_CLASS_COLOR[dclass], lw=1.5, label=f"Pareto front, {dclass}-class")
    for p in picks:
        ax.scatter(p.latency_ms, p.metric, marker="*", s=320, facecolors="none",
                   edgecolors="red", linewidths=1.5)
    ax.scatter([], [], marker="*", s=150, facecolors="none", edgecolors="red",
               label="recommended")
    for i, s in enumerate(strategies):
        ax.scatter([], [], marker=_MARKERS[i % len(_MARKERS)], color="gray", label=s)
    if budget_ms is not None:
        ax.axvline(budget_ms, color="red", ls="--", lw=1, label=f"budget {budget_ms:g} ms")
    if cands and min(c.latency_ms for c in cands) > 0:
        ax.set_xscale("log")
    metric = cands[0].metric_name if cands else "metric"
    ax.set_xlabel(f"p50 latency, ms ({profile} profile, log scale)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"{metric} vs latency, profile {profile}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig


def plot_curves(records: list[dict]) -> Figure:
    """Validation metric per epoch, one panel per strategy, one line per cell."""
    ok = [r for r in records if r.get("status") == "ok" and curve(r)]
    strategies = list(dict.fromkeys(r["config"]["strategy"] for r in ok)) or ["(none)"]
    backbones = list(dict.fromkeys(r["config"]["backbone"] for r in ok))
    cols = min(3, len(strategies))
    rows = -(-len(strategies) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    colors = [f"C{i}" for i in range(10)]
    metric = ok[0].get("metric_name", "metric") if ok else "metric"
    for i, s in enumerate(strategies):
        ax = fig.add_subplot(rows, cols, i + 1)
        for r in (r for r in ok if r["config"]["strategy"] == s):
            b = r["config"]["backbone"]
            y = curve(r)
            ax.plot(range(1, len(y) + 1), y, marker=".", color=colors[backbones.index(b) % 10],
                    alpha=0.8, label=f"{b} seed {r['config'].get('seed')}")
        ax.set_title(s)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"val {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("Learning curves per strategy")
    fig.tight_layout()
    return fig


def plot_benefits(records: list[dict]) -> Optional[Figure]:
    """Grouped bars: start, slope (normalized AUC) and asymptote gains over scratch, mean over
    seeds, as :func:`harness.report.benefits.transfer_benefits` computes them."""
    rows = [r for r in transfer_benefits(records) if r.get("baseline_key") is not None]
    if not rows:
        return None
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["strategy"], r["backbone"]), []).append(r)
    labels = [f"{s}\n{b}" for s, b in groups]
    fig = Figure(figsize=(max(6, 1.3 * len(groups) + 2), 4.2))
    ax = fig.add_subplot()
    width = 0.27
    for j, (k, name) in enumerate((("start", "higher start"), ("slope", "higher slope (AUC)"),
                                   ("asymptote", "higher asymptote"))):
        vals = [statistics.fmean(r[k]["gain"] for r in g) for g in groups.values()]
        ax.bar([i + (j - 1) * width for i in range(len(groups))], vals, width, label=name)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(groups)), labels, fontsize=7)
    metric = records[0].get("metric_name") or "metric"
    ax.set_ylabel(f"gain over scratch, val {metric}")
    ax.set_title("The three benefits of transfer (Torrey & Shavlik 2009), vs scratch")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def figures(records: list[dict], budget_ms: Optional[float] = None) -> dict:
    """``{file name: (title, Figure)}`` for the run."""
    out = {}
    profiles = list(dict.fromkeys(c.profile for c in candidates(records)))
    for p in profiles:
        out[f"pareto-{p}.png"] = (f"Accuracy vs latency, profile {p}",
                                  plot_pareto(records, p, budget_ms))
    out["learning-curves.png"] = ("Learning curves per strategy", plot_curves(records))
    fig = plot_benefits(records)
    if fig is not None:
        out["transfer-benefits.png"] = ("Benefits of transfer per strategy", fig)
    return out


def _table_html(headers: list, rows: list) -> str:
    from tabulate import tabulate  # escapes cells; values shown as str() shows them
    return tabulate([[str(v) for v in r] for r in rows], headers=[str(h) for h in headers],
                    tablefmt="html", disable_numparse=True)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:12px;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#eee}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}pre{background:#f6f6f6;padding:1em;
overflow-x:auto;font-size:12px}"""


def write_html(store, out: Optional[Path] = None, budget_ms: Optional[float] = None) -> Path:
    """Write ``report.html`` (PNGs embedded as base64) and the same PNGs beside it.

    Args:
        store: a :class:`harness.run.results.RunStore`.
        out: the HTML file to write, or a folder to put ``report.html`` in; default
            ``RUN/report/report.html``.
        budget_ms: latency budget of the recommendation.

    Returns:
        The path of the HTML file.
    """
    from ..api.files import atomic_write_text

    out = Path(out) if out else store.path / "report"
    html_path = out if out.suffix in (".html", ".htm") else out / "report.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    records = store.records()
    env = {}
    try:
        env = store.environment()
    except (OSError, ValueError):
        pass
    parts = [f"<h1>transfer-bench report: {html.escape(store.path.name)}</h1>",
             f"<p>{len(records)} cells, "
             f"{sum(r.get('status') == 'ok' for r in records)} ok. Run folder: "
             f"<code>{html.escape(str(store.path))}</code></p>",
             "<h2>Recommendation</h2>",
             f"<pre>{html.escape(format_recommendations(recommend(records, budget_ms)))}</pre>"]
    for name, (title, fig) in figures(records, budget_ms).items():
        png = _png(fig)
        (html_path.parent / name).write_bytes(png)
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
                     f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    if has_repeats(records):
        parts.append("<h2>Repeats over seeds</h2><p>Mean ± 95% Student-t interval; "
                     "n.s. = not significantly different from the best strategy (paired t "
                     "over seeds, alpha 0.05).</p>" + _table_html(*repeat_rows(records)))
    parts.append("<h2>Cells</h2>" + _table_html(*summary_rows(records)))
    notes = unmeasured_notes(records)
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if env:
        import json
        parts.append("<h2>Environment</h2><pre>"
                     f"{html.escape(json.dumps(env, indent=2, default=str))}</pre>")
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>transfer-bench "
           f"{html.escape(store.path.name)}</title><style>{_CSS}</style></head><body>"
           + "\n".join(parts) + "</body></html>\n")
    atomic_write_text(html_path, doc)
    return html_path
