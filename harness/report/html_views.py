"""The HTML report's views of runtimes and precisions (issue 30): how a runtime and a
precision look in every plot, the latency per backbone and runtime, and the accuracy a
lower precision (int8...) keeps against fp32 on the same test images.

Every plot of the page draws a runtime in one colour and a precision as one marker shape
(:func:`variant_scales`), the same in every plot, with a legend, so neither needs a hover.
"""
from __future__ import annotations

import statistics
from typing import Optional

from . import noise
from .recommend import row_hardware
from .scoring import row_metric, test_size

VEGA_LITE_SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"
"""Names the specification's version (vega-embed reads it); nothing is fetched from it."""

#: Tableau 10, Vega's default categorical scheme, in its order: one colour per runtime
RUNTIME_COLOURS = ("#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b",
                   "#b279a2", "#ff9da6", "#9d755d", "#bab0ac")
#: the marker of each common precision; others take the unused shapes in this order
PRECISION_SHAPES = {"fp32": "circle", "fp16": "square", "bf16": "diamond",
                    "int8": "triangle-up", "int8-dynamic": "triangle-down"}
_SPARE_SHAPES = ("cross", "triangle-right", "triangle-left", "wedge", "arrow", "stroke")
NOISY_TEXT = "~"


def measured_rows(records: list[dict]):
    """``(record, latency row)`` for every finished cell's latency row with a p50."""
    for rec in records:
        if rec.get("status") != "ok":
            continue
        for lat in rec.get("latency") or []:
            if (lat.get("stats") or {}).get("p50_ms") is not None:
                yield rec, lat


def variant_scales(records: list[dict]) -> tuple[dict, dict]:
    """The colour scale of the runtimes and the shape scale of the precisions measured in
    the run, as Vega-Lite ``scale`` objects shared by every plot (so a runtime keeps its
    colour and a precision its marker from plot to plot)."""
    runtimes, precisions = [], []
    for _, lat in measured_rows(records):
        if lat.get("runtime") not in runtimes:
            runtimes.append(lat.get("runtime"))
        if lat.get("precision") not in precisions:
            precisions.append(lat.get("precision"))
    runtimes.sort(key=str)
    precisions.sort(key=lambda p: (p not in PRECISION_SHAPES,
                                   list(PRECISION_SHAPES).index(p) if p in PRECISION_SHAPES
                                   else 0, str(p)))
    spare = iter(_SPARE_SHAPES * (1 + len(precisions) // len(_SPARE_SHAPES)))
    shapes = [PRECISION_SHAPES.get(p) or next(spare) for p in precisions]
    colours = [RUNTIME_COLOURS[i % len(RUNTIME_COLOURS)] for i in range(len(runtimes))]
    return ({"domain": runtimes, "range": colours}, {"domain": precisions, "range": shapes})


def _only(scale: dict, shown: Optional[list]) -> dict:
    """``scale`` cut to the values a plot shows (its legend lists no other), each value
    keeping the colour or marker it has in every plot."""
    if shown is None:
        return scale
    keep = [i for i, v in enumerate(scale["domain"]) if v in set(shown)]
    return {"domain": [scale["domain"][i] for i in keep],
            "range": [scale["range"][i] for i in keep]}


def runtime_colour(records: list[dict], points: Optional[list] = None) -> dict:
    """The ``color`` encoding of a runtime, with its legend; ``points``: the plot's data,
    whose runtimes alone the legend lists."""
    colour, _ = variant_scales(records)
    shown = None if points is None else [p["runtime"] for p in points]
    return {"field": "runtime", "type": "nominal", "scale": _only(colour, shown),
            "legend": {"title": "runtime (colour)", "orient": "right", "symbolOpacity": 1}}


def precision_shape(records: list[dict], points: Optional[list] = None) -> dict:
    """The ``shape`` encoding of a precision, with its legend (``points`` as for
    :func:`runtime_colour`)."""
    _, shape = variant_scales(records)
    shown = None if points is None else [p["precision"] for p in points]
    return {"field": "precision", "type": "nominal", "scale": _only(shape, shown),
            "legend": {"title": "precision (marker)", "orient": "right"}}


def _noisy_note(lat_rows: list[dict]) -> str:
    reasons = [r for lat in lat_rows for r in noise.reasons(lat)]
    return ("noisy, unreliable: " + reasons[0]) if reasons else "stable"


def _outputs_note(lat_rows: list[dict]) -> str:
    checks = [(lat.get("outputs_check") or {}) for lat in lat_rows]
    if any(c.get("ok") is False for c in checks):
        return "DISAGREE with PyTorch (not a deployable variant)"
    if checks and all(c.get("ok") for c in checks):
        return "agree with PyTorch"
    return "unverified"


def latency_rows(records: list[dict], profile: str) -> list[dict]:
    """One point per backbone, runtime, precision and hardware under ``profile``: the median
    over its cells of their p50 and p90 (a backbone's latency is its architecture's, the same
    whatever the strategy), how many cells measured it and whether any figure was noisy."""
    groups: dict = {}
    for rec, lat in measured_rows(records):
        if lat.get("profile") != profile:
            continue
        cfg = rec.get("config") or {}
        k = (cfg.get("backbone"), lat.get("runtime"), lat.get("precision"), row_hardware(lat))
        groups.setdefault(k, []).append(lat)
    out = []
    for (backbone, runtime, precision, hardware), lats in groups.items():
        p50 = [lat["stats"]["p50_ms"] for lat in lats]
        p90 = [lat["stats"]["p90_ms"] for lat in lats if lat["stats"].get("p90_ms") is not None]
        out.append({"backbone": backbone, "runtime": runtime, "precision": precision,
                    "hardware": hardware, "variant": f"{runtime} {precision} ({hardware})",
                    "p50_ms": statistics.median(p50),
                    "p90_ms": statistics.median(p90) if p90 else None,
                    "p50_range": f"{min(p50):.3g} - {max(p50):.3g}", "cells": len(lats),
                    "noisy": any(noise.is_noisy(lat) for lat in lats),
                    "latency_note": _noisy_note(lats), "outputs": _outputs_note(lats)})
    out.sort(key=lambda r: (str(r["backbone"]), str(r["runtime"]), str(r["precision"])))
    return out


def latency_spec(records: list[dict], profile: str) -> Optional[dict]:
    """Vega-Lite: p50 latency (a point; the rule runs to the p90) per backbone, the runtimes
    and precisions side by side within each backbone, under one profile; a noisy figure
    (:mod:`harness.report.noise`) reads ``~`` beside its point, as in the tables. None when
    nothing was measured under ``profile``."""
    rows = latency_rows(records, profile)
    if not rows:
        return None
    log = min(r["p50_ms"] for r in rows) > 0
    x = {"field": "p50_ms", "type": "quantitative",
         "scale": {"type": "log"} if log else {"zero": False},
         "title": f"latency, ms (point: p50, line to p90; {profile} profile"
                  + (", log scale)" if log else ")")}
    y = {"field": "backbone", "type": "nominal", "title": "backbone",
         "sort": sorted({str(r["backbone"]) for r in rows})}
    offset = {"field": "variant", "type": "nominal",
              "sort": sorted({r["variant"] for r in rows})}
    tooltip = [{"field": "backbone"}, {"field": "runtime"}, {"field": "precision"},
               {"field": "hardware"}, {"field": "p50_ms", "title": "p50 ms (median of cells)",
                                       "format": ".3g"},
               {"field": "p90_ms", "title": "p90 ms (median of cells)", "format": ".3g"},
               {"field": "p50_range", "title": "p50 over cells, ms"},
               {"field": "cells", "title": "cells measured"},
               {"field": "latency_note", "title": "latency"},
               {"field": "outputs", "title": "outputs"}]
    layers = [
        {"data": {"values": [r for r in rows if r["p90_ms"] is not None]},
         "mark": {"type": "rule", "strokeWidth": 2, "opacity": 0.6},
         "encoding": {"x": x, "x2": {"field": "p90_ms"}, "y": y, "yOffset": offset,
                      "color": runtime_colour(records, rows)}},
        {"data": {"values": rows},
         "mark": {"type": "point", "filled": True, "size": 80, "stroke": "black",
                  "strokeWidth": 0.5, "opacity": 0.95},
         "encoding": {"x": x, "y": y, "yOffset": offset,
                      "color": runtime_colour(records, rows),
                      "shape": precision_shape(records, rows), "tooltip": tooltip}},
        {"data": {"values": [r for r in rows if r["noisy"]]},
         "mark": {"type": "text", "text": NOISY_TEXT, "dx": -12, "dy": -2, "fontSize": 16,
                  "fontWeight": "bold", "color": "#b35900"},
         "encoding": {"x": x, "y": y, "yOffset": offset, "tooltip": tooltip}},
    ]
    layers = [layer for layer in layers if layer["data"]["values"]]
    n_variants = len({r["variant"] for r in rows})
    subtitle = ("median over the cells of each backbone (its architecture's latency, whatever "
                "the strategy); colour: runtime, marker: precision")
    if any(r["noisy"] for r in rows):
        subtitle = [subtitle, f"{NOISY_TEXT}: noisy latency, unreliable (it failed the "
                              f"stability criterion; hover it for why)"]
    return {"$schema": VEGA_LITE_SCHEMA, "width": 560,
            "height": {"step": max(8, min(16, 48 // max(n_variants, 1))), "for": "offset"},
            "title": {"text": f"Latency per backbone and runtime, profile {profile}",
                      "subtitle": subtitle},
            "layer": layers}


def accuracy_drop_rows(records: list[dict]) -> list[dict]:
    """One row per cell and lower-precision variant (int8, int8-dynamic, fp16...) whose
    metric after conversion was scored on the same test images as the cell's fp32 test
    metric (:func:`harness.report.scoring.row_metric`): both metrics and the drop (positive:
    the lower precision is worse, whatever the metric's direction). A variant measured under
    several profiles with the same metric is one row."""
    out, seen = [], set()
    labels = _cell_labels(records)
    for rec, lat in measured_rows(records):
        if lat.get("precision") == "fp32":
            continue
        name = rec.get("metric_name")
        fp32 = (rec.get("test_metrics") or {}).get(name) if name else None
        after = row_metric(rec, lat)
        if fp32 is None or after is None:
            continue
        cfg = rec.get("config") or {}
        k = (rec.get("key"), lat.get("runtime"), lat.get("precision"), after)
        if k in seen:
            continue
        seen.add(k)
        hib = rec.get("higher_is_better", True)
        cell = labels[id(rec)]
        n = lat.get("evaluated_on") or test_size(rec)
        out.append({"cell": cell, "key": rec.get("key"), "backbone": cfg.get("backbone"),
                    "strategy": cfg.get("strategy"), "runtime": lat.get("runtime"),
                    "precision": lat.get("precision"), "metric_name": name,
                    "fp32": fp32, "after": after,
                    "drop": (fp32 - after) if hib else (after - fp32),
                    "images": n if n is not None else "not recorded"})
    return out


def _cell_labels(records: list[dict]) -> dict:
    """``{id(record): "backbone / strategy / dataset / seed N"}``, unique: cells that read
    alike (other weights, task or size) get their key's start added."""
    labels = {}
    for rec in records:
        cfg = rec.get("config") or {}
        label = f"{cfg.get('backbone')} / {cfg.get('strategy')} / {cfg.get('dataset')}"
        if cfg.get("seed") is not None:
            label += f" / seed {cfg['seed']}"
        labels[id(rec)] = label
    counts: dict = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {i: (f"{label} ({str(rec.get('key'))[:8]})" if counts[label] > 1 else label)
            for rec in records for i, label in [(id(rec), labels[id(rec)])]}


def accuracy_drop_spec(records: list[dict]) -> Optional[dict]:
    """Vega-Lite: per cell, the fp32 model's test metric (a black ring) and each lower
    precision's metric after conversion on the same test images (the runtime's colour, the
    precision's marker), joined by a line whose length is the drop. None when no cell has
    such a pair (:func:`accuracy_drop_unavailable` says why)."""
    rows = accuracy_drop_rows(records)
    if not rows:
        return None
    metric = rows[0]["metric_name"]
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    fp32 = list({r["cell"]: {"cell": r["cell"], "fp32": r["fp32"],
                             "metric_name": r["metric_name"]} for r in rows}.values())
    x = {"type": "quantitative", "scale": {"zero": False}, "title": f"test {metric}"}
    y = {"field": "cell", "type": "nominal", "sort": cells, "title": None,
         "axis": {"labelLimit": 420}}
    tooltip = [{"field": "cell"}, {"field": "runtime"}, {"field": "precision"},
               {"field": "fp32", "title": f"fp32 {metric}", "format": ".4f"},
               {"field": "after", "title": f"{metric} after conversion", "format": ".4f"},
               {"field": "drop", "title": "drop (fp32 - lower precision)", "format": "+.4f"},
               {"field": "images", "title": "test images (both)"}]
    layers = [
        {"data": {"values": rows}, "mark": {"type": "rule", "color": "#999"},
         "encoding": {"x": {**x, "field": "fp32"}, "x2": {"field": "after"}, "y": y}},
        {"data": {"values": fp32},
         "mark": {"type": "point", "shape": "circle", "filled": False, "size": 110,
                  "color": "black", "strokeWidth": 1.5},
         "encoding": {"x": {**x, "field": "fp32"}, "y": y,
                      "tooltip": [{"field": "cell"},
                                  {"field": "fp32", "title": f"fp32 {metric}",
                                   "format": ".4f"}]}},
        {"data": {"values": rows},
         "mark": {"type": "point", "filled": True, "size": 80, "stroke": "black",
                  "strokeWidth": 0.5, "opacity": 0.95},
         "encoding": {"x": {**x, "field": "after"}, "y": y,
                      "color": runtime_colour(records, rows),
                      "shape": precision_shape(records, rows), "tooltip": tooltip}},
    ]
    worst = max(rows, key=lambda r: r["drop"])
    largest = (f"largest drop: {worst['drop']:+.4f} ({worst['cell']}, {worst['runtime']} "
               f"{worst['precision']})" if worst["drop"] > 0 else
               "no lower precision scored worse than its fp32 model here")
    return {"$schema": VEGA_LITE_SCHEMA, "width": 480, "height": {"step": 22},
            "title": {"text": f"Accuracy after conversion: fp32 vs lower precisions ({metric})",
                      "subtitle": [f"black ring: the fp32 model's test {metric}; coloured "
                                   f"marker: after conversion, scored on the same test "
                                   f"images; the line is the drop", largest]},
            "layer": layers}


def accuracy_drop_unavailable(records: list[dict]) -> str:
    """Why the page has no accuracy-drop view: the sentence it shows instead."""
    lower = [(rec, lat) for rec, lat in measured_rows(records) if lat.get("precision") != "fp32"]
    if not lower:
        return ("No accuracy-drop view: no lower precision (int8, fp16...) was measured in "
                "this run (the cells table's notes say why each was not).")
    return ("No accuracy-drop view: none of the lower-precision rows has a metric after "
            "conversion scored on the cell's own test images (see the notes under the "
            "cells table).")
