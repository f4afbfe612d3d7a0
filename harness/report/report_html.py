"""The HTML report of a run: one self-contained page with interactive Vega-Lite plots.

The page works offline: Vega, Vega-Lite and vega-embed are embedded in it, taken from the
``vl-convert-python`` package (the Vega project's own converter, which ships these
libraries; :func:`vega_bundle`). Each plot is a Vega-Lite specification, also written as a
PNG beside the HTML (rendered by the same package), so the page and the images agree.
In every plot a runtime has one colour and a precision one marker, with legends
(:mod:`harness.report.html_views`), so neither needs a hover (issue 30).

- metric against p50 latency for every profile: hover a point for its backbone, strategy,
  weights, runtime, precision, metric with its 95% interval over seeds and p50/p90; the
  Pareto front of each device class is a step line, the recommended picks are ringed.
  Points carry no text labels, so nothing overlaps: the legends (click one to highlight a
  runtime or a precision), the menus (highlight a backbone or a strategy) and the tooltips
  name them. Drag to pan, scroll to zoom.
- latency per backbone and runtime, per profile (:func:`html_views.latency_spec`);
- the accuracy a lower precision keeps against fp32 on the same test images
  (:func:`html_views.accuracy_drop_spec`);
- learning curves, one panel per cell (train and validation metric per epoch);
- the three benefits of transfer per strategy, against the scratch cell of the same
  backbone, dataset, task and seed (Torrey & Shavlik, "Transfer Learning", Handbook of
  Research on Machine Learning Applications, 2009: higher start, higher slope, higher
  asymptote; see :mod:`harness.benefits`).

Tables: the recommendation per profile with its Pareto front, the cells (sortable by a
click on a column header, filtered by the text box; training details and the other
profiles' latency columns behind switches, so it fits a 1280 px page), the repeats over
seeds and the run's environment (a summary, :mod:`harness.report.env_summary`, then every
setting in a collapsed block).
"""
from __future__ import annotations

import functools
import html
import json
import statistics
from pathlib import Path
from typing import Optional

from . import noise
from .benefits import learning_curve, transfer_benefits
from .env_summary import environment_summary
from .html_views import (VEGA_LITE_SCHEMA, accuracy_drop_spec, accuracy_drop_unavailable,
                         latency_spec, measured_rows, precision_shape, runtime_colour)
from .recommend import DEVICE_CLASSES, Candidate, candidates, recommend
from .table import (flatten, has_repeats, latency_columns, repeat_rows, summary_rows,
                    table_notes)


_CLASS_DASH = {"mobile": [1, 0], "server": [6, 3]}


def curve(rec: dict) -> list[float]:
    """Validation metric per epoch, over all phases in training order; epoch 0 (before
    training) first when the record has it."""
    return learning_curve(rec)


@functools.lru_cache(maxsize=1)
def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script that sets ``window.vegaEmbed``.

    Bundled by ``vl_convert.javascript_bundle()`` (seconds), kept under the cache folder by
    the package's version so the next report reuses it.
    """
    import vl_convert

    from ..run.cell import cache_dir
    from ..api.files import atomic_write_text

    path = cache_dir() / "vega" / f"vega-bundle-vl-convert-{vl_convert.__version__}.js"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    # inside the page's <script>, "</script" would end it (it occurs only in string literals)
    text = vl_convert.javascript_bundle().replace("</script", "<\\/script")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError:  # a read-only cache costs the next report the bundling time, nothing else
        pass
    return text


# -- the data behind the plots ----------------------------------------------------------------
def _metric_text(c: Candidate) -> str:
    if c.metric_ci is None:
        return f"{c.metric:.3f}" + (" (one seed: no interval)" if c.n == 1 else "")
    return f"{c.metric:.3f} ± {c.metric_ci:.3f} (95% t interval, {c.n} seeds)"


def _point(c: Candidate, pick: bool, on_front: bool) -> dict:
    return {"backbone": c.backbone, "strategy": c.strategy, "weights": c.weights,
            "runtime": c.runtime, "precision": c.precision, "class": c.device_class,
            "variant": f"{c.runtime} {c.precision}", "metric": c.metric,
            "metric_low": None if c.metric_ci is None else c.metric - c.metric_ci,
            "metric_high": None if c.metric_ci is None else c.metric + c.metric_ci,
            "metric_text": _metric_text(c), "p50_ms": c.latency_ms, "p90_ms": c.p90_ms,
            "latency_note": ("noisy: " + c.noisy[0]) if c.noisy else "stable",
            "noisy": bool(c.noisy),
            "seeds": c.n, "dataset": f"{c.dataset}/{c.task}", "pick": pick,
            "pareto": on_front}


def _tooltip(metric: str) -> list:
    return [{"field": "backbone"}, {"field": "strategy"}, {"field": "weights"},
            {"field": "class", "title": "device class"}, {"field": "runtime"},
            {"field": "precision"}, {"field": "dataset", "title": "data/task"},
            {"field": "metric_text", "title": f"test {metric}"},
            {"field": "p50_ms", "title": "p50 ms", "format": ".3g"},
            {"field": "p90_ms", "title": "p90 ms", "format": ".3g"},
            {"field": "latency_note", "title": "latency"},
            {"field": "pareto", "title": "on the Pareto front"},
            {"field": "pick", "title": "recommended"}]


def pareto_spec(records: list[dict], profile: str, budget_ms: Optional[float]) -> dict:
    """Vega-Lite: metric against p50 latency under one profile, fronts per device class."""
    cands = [c for c in candidates(records) if c.profile == profile]
    recs = [r for r in recommend(records, budget_ms) if r.profile == profile]
    picks = {r.pick for r in recs if r.pick}
    fronts = {c for r in recs for c in r.front}
    points = [_point(c, c in picks, c in fronts) for c in cands]
    front_rows = [dict(_point(c, c in picks, True), order=i)
                  for r in recs for i, c in enumerate(r.front)]
    classes = [d for d in DEVICE_CLASSES if any(r["class"] == d for r in front_rows)]
    metric = cands[0].metric_name if cands else "metric"
    log = bool(cands) and min(c.latency_ms for c in cands) > 0
    x = {"field": "p50_ms", "type": "quantitative", "scale": {"type": "log" if log else "linear"},
         "title": f"p50 latency, ms ({profile} profile{', log scale' if log else ''})"}
    y = {"field": "metric", "type": "quantitative", "scale": {"zero": False},
         "title": f"test {metric}"}
    # runtime and precision are seen at a glance (colour and marker, with legends: issue 30);
    # a backbone or a strategy is highlighted from the menus under the plot or the legend
    params = [{"name": "runtime_pick", "select": {"type": "point", "fields": ["runtime"]},
               "bind": "legend"},
              {"name": "precision_pick", "select": {"type": "point", "fields": ["precision"]},
               "bind": "legend"}]
    for field in ("backbone", "strategy"):
        names = sorted({str(p[field]) for p in points})
        if len(names) > 1:
            params.append({"name": f"{field}_pick",
                           "select": {"type": "point", "fields": [field]},
                           "bind": {"input": "select", "options": [None] + names,
                                    "labels": ["all"] + names, "name": f"highlight {field} "}})
    shown = {"and": [{"param": p["name"]} for p in params]}
    layers = [
        {"data": {"values": [p for p in points if p["metric_low"] is not None]},
         "mark": {"type": "rule", "opacity": 0.5},
         "encoding": {"x": x, "y": {**y, "field": "metric_low"}, "y2": {"field": "metric_high"},
                      "color": runtime_colour(records, points)}},
        {"data": {"values": front_rows},
         "mark": {"type": "line", "interpolate": "step-after", "color": "#555"},
         "encoding": {"x": x, "y": y, "order": {"field": "order"},
                      "detail": {"field": "class"},
                      "strokeDash": {"field": "class", "type": "nominal",
                                     "title": "Pareto front of",
                                     "scale": {"domain": classes,
                                               "range": [_CLASS_DASH[d] for d in classes]}}}},
        # the rings go under the points, so hovering a pick's point reaches the point
        {"data": {"values": [p for p in points if p["pick"]]},
         "mark": {"type": "point", "shape": "circle", "size": 420, "filled": False,
                  "color": "#d62728", "strokeWidth": 2},
         "encoding": {"x": x, "y": y, "tooltip": _tooltip(metric)}},
        {"data": {"values": points},
         "params": params + [{"name": "zoom", "select": "interval", "bind": "scales"}],
         "mark": {"type": "point", "filled": True, "size": 90, "stroke": "black",
                  "strokeWidth": 0.5},
         "encoding": {"x": x, "y": y,
                      "color": runtime_colour(records, points),
                      "shape": precision_shape(records, points),
                      "opacity": {"condition": {"test": shown, "value": 0.9}, "value": 0.12},
                      "tooltip": _tooltip(metric)}},
        # a noisy latency (harness.report.noise) reads "~" beside its point, as in the tables
        {"data": {"values": [p for p in points if p["noisy"]]},
         "mark": {"type": "text", "text": noise.MARK, "dx": 10, "dy": -10, "fontSize": 16,
                  "fontWeight": "bold", "color": "#b35900"},
         "encoding": {"x": x, "y": y, "tooltip": _tooltip(metric)}},
    ]
    # an empty layer makes Vega warn of an infinite extent: leave those out
    layers = [layer for layer in layers if layer["data"]["values"]]
    if budget_ms is not None:
        layers.append({"data": {"values": [{"budget": budget_ms}]},
                       "mark": {"type": "rule", "color": "#d62728", "strokeDash": [4, 4]},
                       "encoding": {"x": {"field": "budget", "type": "quantitative"}}})
    title = f"{metric} vs p50 latency, profile {profile}"
    return {"$schema": VEGA_LITE_SCHEMA, "width": 640, "height": 380,
            "title": {"text": title, "subtitle": "colour: runtime; marker: precision; red "
                                                 "rings: recommended; lines: Pareto "
                                                 "front per device class; "
                                                 + (f"{noise.MARK}: noisy latency; "
                                                    if any(p["noisy"] for p in points) else "")
                                                 + "hover a point"},
            "layer": layers}


def curves_spec(records: list[dict]) -> Optional[dict]:
    """Vega-Lite: train and validation metric per epoch, one panel per cell; epoch 0 is the
    validation metric before training, and the epochs of a phase that was rolled back
    (chain-thaw: it did not beat the best checkpoint, so its weights were discarded) are
    drawn with a red cross."""
    rows = []
    ok = [r for r in records if r.get("status") == "ok" and curve(r)]
    for rec in ok:
        cfg = rec.get("config") or {}
        cell = " / ".join(str(v) for v in (cfg.get("backbone"), cfg.get("strategy"),
                                           cfg.get("dataset")) if v is not None)
        if cfg.get("seed") is not None:
            cell += f" / seed {cfg['seed']}"
        hist = rec.get("history") or {}
        start = (hist.get("start") or {}).get("val_metric")
        if start is not None:
            rows.append({"cell": cell, "epoch": 0, "phase": "before training",
                         "series": "validation", "value": start, "lr": None,
                         "rolled_back": False})
        for i, e in enumerate(hist.get("epochs", [])):
            for series, key in (("validation", "val_metric"), ("train", "train_metric")):
                if e.get(key) is not None:
                    rows.append({"cell": cell, "epoch": i + 1, "phase": e.get("phase", ""),
                                 "series": series, "value": e[key], "lr": e.get("lr"),
                                 "rolled_back": bool(e.get("rolled_back"))})
    if not rows:
        return None
    metric = ok[0].get("metric_name") or "metric"
    x = {"field": "epoch", "type": "quantitative", "axis": {"tickMinStep": 1, "format": "d"}}
    y = {"field": "value", "type": "quantitative", "scale": {"zero": False}, "title": metric}
    tooltip = [{"field": "cell"}, {"field": "phase"}, {"field": "epoch"}, {"field": "series"},
               {"field": "value", "format": ".4f", "title": metric},
               {"field": "lr", "format": ".3g"}, {"field": "rolled_back"}]
    layers = [{"mark": {"type": "line", "point": True},
               "encoding": {"x": x, "y": y, "color": {"field": "series", "type": "nominal"},
                            "tooltip": tooltip}}]
    if any(r["rolled_back"] for r in rows):
        layers.append({"transform": [{"filter": "datum.rolled_back"}],
                       "mark": {"type": "point", "shape": "cross", "size": 90,
                                "color": "#d62728", "filled": True},
                       "encoding": {"x": x, "y": y, "tooltip": tooltip}})
    title = f"Learning curves per cell ({metric} per epoch, all phases in order"
    title += "; red cross: epoch of a rolled-back phase)" if len(layers) > 1 else ")"
    return {"$schema": VEGA_LITE_SCHEMA, "data": {"values": rows}, "title": title,
            "facet": {"field": "cell", "type": "nominal", "title": None,
                      "sort": list(dict.fromkeys(r["cell"] for r in rows))},
            "columns": 3,
            "spec": {"width": 230, "height": 140, "layer": layers}}


def benefits_spec(records: list[dict]) -> Optional[dict]:
    """Vega-Lite: mean gain over scratch of start, slope (a rate, metric per epoch) and asymptote,
    as :func:`harness.benefits.transfer_benefits` computes them, per strategy and backbone."""
    rows = [r for r in transfer_benefits(records)
            if r.get("baseline_key") is not None and "start" in r]
    if not rows:
        return None
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["strategy"], r["backbone"]), []).append(r)
    # a start with a new head is chance by construction: no bar (the title says why)
    values = [{"group": f"{s} / {b}", "benefit": name, "gain": statistics.fmean(
        r[k]["gain"] for r in g), "n": len(g)}
        for (s, b), g in groups.items()
        for k, name in (("start", "higher start"), ("slope", "higher slope (rate)"),
                        ("asymptote", "higher asymptote"))
        if all(r[k].get("gain") is not None for r in g)]
    metric = rows[0].get("metric") or "metric"
    title = "The three benefits of transfer (Torrey & Shavlik 2009), vs scratch"
    if any(r["start"].get("chance") for r in rows):
        title = [title, "higher start not shown for cells with a new head: their start is "
                        "chance by construction"]
    return {"$schema": VEGA_LITE_SCHEMA, "data": {"values": values},
            "title": title,
            "width": {"step": 28}, "height": 260, "mark": "bar",
            "encoding": {
                "x": {"field": "group", "type": "nominal", "title": "strategy / backbone",
                      "axis": {"labelAngle": -30}},
                "xOffset": {"field": "benefit", "sort": ["higher start", "higher slope (rate)",
                                                         "higher asymptote"]},
                "y": {"field": "gain", "type": "quantitative",
                      "title": f"gain over scratch, val {metric}"},
                "color": {"field": "benefit", "type": "nominal",
                          "sort": ["higher start", "higher slope (rate)", "higher asymptote"]},
                "tooltip": [{"field": "group"}, {"field": "benefit"},
                            {"field": "gain", "format": "+.4f"},
                            {"field": "n", "title": "seeds"}]}}


def figures(records: list[dict], budget_ms: Optional[float] = None) -> dict:
    """``{PNG file name: (title, Vega-Lite spec)}`` for the run."""
    out = {}
    for p in dict.fromkeys(c.profile for c in candidates(records)):
        out[f"pareto-{p}.png"] = (f"Accuracy vs latency, profile {p}",
                                  pareto_spec(records, p, budget_ms))
    for p in dict.fromkeys(lat.get("profile") for _, lat in measured_rows(records)):
        spec = latency_spec(records, p)
        if spec is not None:
            out[f"latency-{p}.png"] = (f"Latency per backbone and runtime, profile {p}", spec)
    drop = accuracy_drop_spec(records)
    if drop is not None:
        out["accuracy-drop.png"] = ("Accuracy drop of lower precisions (int8...) vs fp32", drop)
    for name, title, spec in (("learning-curves.png", "Learning curves per cell",
                               curves_spec(records)),
                              ("transfer-benefits.png", "Benefits of transfer per strategy",
                               benefits_spec(records))):
        if spec is not None:
            out[name] = (title, spec)
    return out


# -- tables -----------------------------------------------------------------------------------
def _table_html(headers: list, rows: list, cls: str = "", row_cls=None,
                col_cls: Optional[list] = None) -> str:
    """A table; ``col_cls[j]`` is the class of column ``j``'s header and cells."""
    col_cls = col_cls or [""] * len(headers)
    head = "".join(f"<th{_attr('class', c)}>{html.escape(str(h))}</th>"
                   for h, c in zip(headers, col_cls))
    body = "".join(
        f"<tr{_attr('class', row_cls(i) if row_cls else '')}>"
        + "".join(f"<td{_attr('class', c)}>{html.escape(str(v))}</td>"
                  for v, c in zip(r, col_cls)) + "</tr>"
        for i, r in enumerate(rows))
    return f"<table{_attr('class', cls)}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


#: cells-table columns hidden until "show every column" is ticked: the training details
#: (the table must fit a 1280 px wide page: issue 30); the record has them all
DETAIL_COLUMNS = ("class", "tuned", "epochs / steps", "train FLOPs", "train s", "trained on",
                  "params M", "trained M")


def detail_columns(headers: list, rows: list) -> list[str]:
    """The headers of the cells table hidden by default: :data:`DETAIL_COLUMNS`, and the
    metric's name where every cell has the same (the "test" header says it then)."""
    hidden = [h for h in headers if h in DETAIL_COLUMNS]
    if "metric" in headers:
        j = headers.index("metric")
        if len({r[j] for r in rows}) <= 1:
            hidden.append("metric")
    return hidden


def _attr(name: str, value: str) -> str:
    return f" {name}='{html.escape(value)}'" if value else ""


def recommendation_html(records: list[dict], budget_ms: Optional[float]) -> str:
    """One table per profile: per data/task and device class, its Pareto front (fastest
    first) with the pick marked, or the reason there is none within the budget."""
    recs = recommend(records, budget_ms)
    if not recs:
        return "<p>No finished cell has both a test metric and a latency.</p>"
    budget = "no limit" if budget_ms is None else f"{budget_ms:g} ms"
    parts = [f"<p>The pick is the most accurate candidate whose p50 is within the budget "
             f"(<b>{html.escape(budget)}</b>); it always lies on the Pareto front of its "
             f"device class, listed with it (no other candidate is both faster and more "
             f"accurate).</p>"]
    headers = ["data/task", "class", "", "backbone + strategy", "weights", "runtime",
               "precision", "metric (95% interval)", "p50 ms", "p90 ms", "certainty"]
    for profile in dict.fromkeys(r.profile for r in recs):
        rows, marks = [], []
        for r in (r for r in recs if r.profile == profile):
            where = [f"{r.dataset}/{r.task}", r.device_class]
            if r.pick is None:
                rows.append(where + ["no pick", r.reason, "", "", "", "", "", "", ""])
                marks.append("none")
            for c in r.front:
                rows.append(where + ["★ pick" if c == r.pick else "front",
                                     f"{c.backbone} + {c.strategy}", c.weights, c.runtime,
                                     c.precision, f"{c.metric_name} {_metric_text(c)}",
                                     f"{noise.MARK if c.noisy else ''}{c.latency_ms:.3g}",
                                     "-" if c.p90_ms is None else f"{c.p90_ms:.3g}",
                                     r.verdict if c == r.pick else
                                     (f"latency noisy: {c.noisy[0]}" if c.noisy else "")])
                marks.append("pick" if c == r.pick else "")
        parts.append(f"<h3>Profile {html.escape(profile)}</h3>"
                     + "<div class='table-wrap'>"
                     + _table_html(headers, rows, "recommendation", lambda i: marks[i])
                     + "</div>")
    if any(c.noisy for r in recs for c in r.front):
        parts.append(f"<p>{noise.MARK} before a latency: noisy, it failed the stability "
                     f"criterion even after re-measuring (the legend under the cells table "
                     f"says how); a pick called unreliable may change on a quiet machine.</p>")
    return "".join(parts)


def _settings(d: dict) -> list[tuple[str, str]]:
    return [(k, v if isinstance(v, str) else json.dumps(v, default=str))
            for k, v in flatten(d or {}).items()]


def environment_html(env: dict, records: list[dict]) -> str:
    """The environment section: a short summary first (:mod:`harness.report.env_summary`),
    then every recorded setting (allocator internals, argv...) in a collapsed block."""
    summary = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                      for k, v in environment_summary(env, records))
    return ("<h2 id='environment'>Environment</h2>"
            f"<dl class='env-summary'>{summary}</dl>"
            "<details class='env-details'><summary>Every recorded setting of "
            "<code>environment.json</code> (allocator, argv, load figures...)</summary>"
            "<div class='table-wrap'>"
            + _table_html(["setting", "value"], _settings(env), "env") + "</div></details>")


_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--head:#f6f8fa;--pick:#fff4d6}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);margin:0 auto;
max-width:1500px;padding:1.5em 2em;line-height:1.45}
h1{font-size:1.6em;margin-bottom:0.2em}h2{margin-top:1.8em;border-bottom:1px solid var(--line);
padding-bottom:0.2em}h3{margin:1.2em 0 0.3em}.muted{color:var(--muted)}
nav a{margin-right:1em}
.table-wrap{overflow:auto;max-width:100%;max-height:70vh;border:1px solid var(--line)}
table{border-collapse:collapse;font-size:13px;margin:0}
td,th{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top;
overflow-wrap:break-word}
th{background:var(--head)}.table-wrap th{position:sticky;top:0;z-index:1}
.table-wrap td:first-child,.table-wrap th:first-child{position:sticky;left:0;z-index:1;
background:#fff;box-shadow:1px 0 0 var(--line)}
.table-wrap th:first-child{z-index:2;background:var(--head)}
.table-wrap tr.pick td:first-child{background:var(--pick)}
.table-wrap tbody tr:hover td:first-child{background:#eef4ff}
table.cells td,table.cells th{min-width:3.5em}
table.compact .extra,table.cells .off-profile{display:none}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
tr.pick td{background:var(--pick);font-weight:600}tr.none td{color:#b35900}
tbody tr:hover td{background:#eef4ff}
.plot{margin:0.8em 0 1.6em}input.filter{font-size:14px;padding:4px 8px;width:22em}
.env td:first-child{font-family:ui-monospace,monospace;white-space:nowrap}
.env td{overflow-wrap:anywhere}
dl.env-summary{display:grid;grid-template-columns:max-content 1fr;gap:0.25em 1.2em;margin:0.6em 0}
dl.env-summary dt{font-weight:600}dl.env-summary dd{margin:0}
details.env-details{margin:1em 0}details.env-details summary{cursor:pointer}
.vega-bindings{font-size:13px;margin:0.3em 0}.vega-bind{display:inline-block;margin-right:1.2em}
"""

_SCRIPT = """
const specs = JSON.parse(document.getElementById('tb-specs').textContent);
for (const [id, spec] of Object.entries(specs)) {
  const el = document.getElementById(id);
  window.vegaEmbed(el, spec, {renderer: 'svg', actions: {export: true, source: false,
    compiled: false, editor: false}})
    .then(() => { el.dataset.rendered = 'true'; })
    .catch(err => { el.dataset.rendered = 'error'; console.error(id, err); });
}
const num = s => { const m = /^[-+]?\\d*\\.?\\d+(e[-+]?\\d+)?/i.exec(s.trim()); return m ? parseFloat(m[0]) : null; };
for (const table of document.querySelectorAll('table.sortable')) {
  const ths = [...table.tHead.rows[0].cells];
  ths.forEach((th, col) => th.addEventListener('click', () => {
    const dir = th.getAttribute('aria-sort') === 'ascending' ? 'descending' : 'ascending';
    ths.forEach(h => h.removeAttribute('aria-sort'));
    th.setAttribute('aria-sort', dir);
    const body = table.tBodies[0], sign = dir === 'ascending' ? 1 : -1;
    const rows = [...body.rows].sort((a, b) => {
      const x = a.cells[col].textContent, y = b.cells[col].textContent;
      const nx = num(x), ny = num(y);
      if (nx !== null && ny !== null) return sign * (nx - ny);
      if (nx !== null) return -1;
      if (ny !== null) return 1;
      return sign * x.localeCompare(y);
    });
    rows.forEach(r => body.appendChild(r));
  }));
}
for (const box of document.querySelectorAll('input.columns-toggle')) {
  const table = document.getElementById(box.dataset.table);
  box.addEventListener('change', () => table.classList.toggle('compact', !box.checked));
}
for (const pick of document.querySelectorAll('select.profile-pick')) {
  const table = document.getElementById(pick.dataset.table);
  pick.addEventListener('change', () => {
    for (const c of table.querySelectorAll('[class*="prof-"]'))
      c.classList.toggle('off-profile', pick.value !== '' && !c.classList.contains('prof-' + pick.value));
  });
}
for (const input of document.querySelectorAll('input.filter')) {
  const table = document.getElementById(input.dataset.table);
  input.addEventListener('input', () => {
    const words = input.value.toLowerCase().split(/\\s+/).filter(Boolean);
    let shown = 0;
    for (const row of table.tBodies[0].rows) {
      const text = row.textContent.toLowerCase();
      const ok = words.every(w => text.includes(w));
      row.hidden = !ok; shown += ok;
    }
    document.getElementById(input.dataset.table + '-count').textContent =
      `${shown} of ${table.tBodies[0].rows.length} rows`;
  });
}
"""


def _script_json(obj) -> str:
    """JSON that cannot end the <script> element it sits in."""
    return json.dumps(obj, default=str).replace("</", "<\\/")


def write_html(store, out: Optional[Path] = None, budget_ms: Optional[float] = None) -> Path:
    """Write ``report.html`` (self-contained: plots and their libraries embedded) and every
    plot as a PNG beside it.

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
    try:
        env = store.environment()
    except (OSError, ValueError) as exc:
        env = {"environment.json": f"cannot read: {exc}"}
    n_ok = sum(r.get("status") == "ok" for r in records)
    name = html.escape(store.path.name)
    sections = [("recommendation", "Recommendation"), ("plots", "Plots"), ("cells", "Cells")]
    if has_repeats(records):
        sections.append(("repeats", "Repeats over seeds"))
    sections.append(("environment", "Environment"))
    parts = [f"<h1>transfer-bench report: {name}</h1>",
             f"<p class='muted'>{len(records)} cells, {n_ok} ok"
             + (f", <b>{len(records) - n_ok} failed</b> (their errors are in the cells "
                f"table)" if n_ok < len(records) else "")
             + f". Run folder: <code>{html.escape(str(store.path))}</code></p>",
             "<nav>" + "".join(f"<a href='#{i}'>{t}</a>" for i, t in sections) + "</nav>",
             "<h2 id='recommendation'>Recommendation</h2>",
             recommendation_html(records, budget_ms), "<h2 id='plots'>Plots</h2>"]
    specs = _plots(records, budget_ms, html_path.parent, parts)
    parts += _cells_section(records)
    parts.append(environment_html(env, records))
    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
           f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
           f"<title>transfer-bench {name}</title><style>{_CSS}</style></head><body>"
           + "\n".join(parts)
           + f"\n<script type='application/json' id='tb-specs'>{_script_json(specs)}</script>"
           + f"\n<script type='module'>{vega_bundle()}</script>"
           + f"\n<script type='module'>{_SCRIPT}</script>\n</body></html>\n")
    atomic_write_text(html_path, doc)
    return html_path


def _plots(records: list, budget_ms: Optional[float], folder: Path, parts: list) -> dict:
    """Every figure as a PNG in ``folder`` and a placeholder in ``parts``; returns the
    Vega-Lite specs by placeholder id (the page renders them)."""
    import vl_convert

    from ..api.files import atomic_write_bytes

    specs = {}
    figs = figures(records, budget_ms)
    for i, (png_name, (title, spec)) in enumerate(figs.items()):
        atomic_write_bytes(folder / png_name, vl_convert.vegalite_to_png(spec, scale=2))
        specs[f"plot-{i}"] = spec
        view = png_name.rsplit(".", 1)[0]
        parts.append(f"<h3>{html.escape(title)}</h3><div class='plot' id='plot-{i}' "
                     f"data-view='{html.escape(view)}' role='img' "
                     f"aria-label='{html.escape(title)}'></div>")
    if "accuracy-drop.png" not in figs:
        parts.append(f"<p class='muted' id='no-accuracy-drop'>"
                     f"{html.escape(accuracy_drop_unavailable(records))}</p>")
    return specs


def _cells_section(records: list) -> list:
    """The filterable, sortable cells table, the notes on what was not measured, and the
    repeats table where seeds repeat."""
    headers, rows = summary_rows(records)
    hidden = detail_columns(headers, rows)
    col_cls = ["extra" if h in hidden else "" for h in headers]
    # the latency columns sit before "status", in latency_columns' order; with several
    # profiles one profile's columns show at a time (a menu picks it)
    lat_cols = latency_columns(records)
    profiles = list(dict.fromkeys(prof for _, prof, _ in lat_cols))
    first = len(headers) - 1 - len(lat_cols)
    if len(profiles) > 1:
        for j, (_, prof, _) in enumerate(lat_cols):
            i = profiles.index(prof)
            col_cls[first + j] = f"prof-{i}" + (" off-profile" if i else "")
    pick = ("<label class='muted'>latency columns of the profile <select class='profile-pick' "
            "data-table='cells-table'>"
            + "".join(f"<option value='{i}'>{html.escape(str(p))}</option>"
                      for i, p in enumerate(profiles))
            + "<option value=''>every profile</option></select></label>"
            if len(profiles) > 1 else "")
    metric = next((r[headers.index("metric")] for r in rows), "") if "metric" in hidden else ""
    toggle = (f" <label class='muted'><input type='checkbox' class='columns-toggle' "
              f"data-table='cells-table'> show every column ({len(hidden)} more: "
              f"{html.escape(', '.join(hidden))})</label>" if hidden else "")
    parts = [
        "<h2 id='cells'>Cells</h2><p><input class='filter' type='search' data-table='cells-table'"
        " placeholder='filter: words that every shown row contains' aria-label='filter cells'> "
        f"<span id='cells-table-count' class='muted'>{len(rows)} of {len(rows)} rows</span>"
        " <span class='muted'>&middot; click a column header to sort</span></p><p>" + pick
        + toggle + "</p>"
        + (f"<p class='muted'>test: the test {html.escape(str(metric))} of each cell's fp32 "
           f"model; latency columns: p50 / p90 ms (a lower precision's metric after "
           f"conversion in brackets).</p>" if metric else "")
        + "<div class='table-wrap' id='cells-wrap'>"
        + _table_html(headers, rows, "sortable cells compact", col_cls=col_cls).replace(
            "<table", "<table id='cells-table'", 1)
        + "</div>"]
    notes = table_notes(records)
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if has_repeats(records):
        parts.append("<h2 id='repeats'>Repeats over seeds</h2><p>Mean ± 95% Student-t "
                     "interval; n.s. = not significantly different from the best strategy "
                     "(paired t over seeds, alpha 0.05).</p>"
                     + _table_html(*repeat_rows(records), "sortable"))
    return parts
