"""The summary table printed after ``bench run`` and by ``bench report``."""
from __future__ import annotations

from tabulate import tabulate


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def latency_columns(records: list[dict]) -> list[tuple]:
    """Distinct (runtime, profile, precision) measured in the run, in first-seen order."""
    seen = []
    for rec in records:
        for lat in rec.get("latency", []):
            k = (lat.get("runtime"), lat.get("profile"), lat.get("precision"))
            if k not in seen:
                seen.append(k)
    # "-" precision (unavailable runtimes) folds into the runtime's first real column
    return seen


def _latency_cell(rec: dict, key: tuple) -> str:
    for lat in rec.get("latency", []):
        if (lat.get("runtime"), lat.get("profile"), lat.get("precision")) == key:
            st = lat.get("stats")
            if st:
                s = f"{st['p50_ms']:.2f} / {st['p90_ms']:.2f}"
                if lat.get("accuracy_after") is not None:
                    s += f" (acc {lat['accuracy_after']:.3f})"
                return s
            return "n/a: " + str(lat.get("unavailable") or lat.get("error") or "?")[:60]
    return "-"


def _weights_label(w: dict) -> str:
    if not w:
        return "-"
    label = w.get("short") or w.get("source") or "-"
    return label if w.get("pretrained") else f"{label} (not pretrained)"


def summary_rows(records: list[dict]) -> tuple[list[str], list[list]]:
    cols = latency_columns(records)
    profiles = {c[1] for c in cols}
    headers = ["backbone", "class", "weights", "strategy", "dataset", "metric", "test",
               "train s", "params M", "trained M"]
    for rt, prof, prec in cols:
        label = rt if len(profiles) == 1 else f"{rt} {prof}"
        if prec not in ("fp32", "-"):
            label += f" {prec}"
        headers.append(f"{label} p50/p90 ms")
    headers.append("status")
    rows = []
    for rec in records:
        cfg = rec.get("config", {})
        facts = rec.get("backbone_facts", {})
        metric = rec.get("metric_name")
        data = rec.get("data", {})
        ds = cfg.get("dataset", "")
        if data.get("synthetic"):
            ds += " (synthetic)"
        row = [cfg.get("backbone"), facts.get("device_class", "-"),
               _weights_label(rec.get("weights") or {}), cfg.get("strategy"), ds,
               metric or "-", _fmt((rec.get("test_metrics") or {}).get(metric)),
               _fmt(rec.get("train_seconds"), 1),
               _fmt(facts["params_total"] / 1e6, 2) if facts.get("params_total") else "-",
               _fmt(rec["trainable_params"] / 1e6, 2) if rec.get("trainable_params") is not None
               else "-"]
        row += [_latency_cell(rec, c) for c in cols]
        status = rec.get("status", "?")
        if rec.get("error"):
            status += ": " + str(rec["error"])[:80]
        row.append(status)
        rows.append(row)
    return headers, rows


def summary_table(records: list[dict], fmt: str = "simple") -> str:
    headers, rows = summary_rows(records)
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)
