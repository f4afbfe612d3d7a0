"""Noisy latency figures, as reports show them.

A latency row's ``stats["noise"]`` (:func:`harness.measure.latency.stability`) says whether
its measurement passed the stability criterion after the bounded re-measurements. Reports
show a noisy figure with :data:`MARK` before it and explain the mark in a legend
(:func:`legend`); the recommendation calls a pick whose latency was noisy unreliable, in
words. Records from before the criterion carry no noise figure and are shown unmarked.
"""
from __future__ import annotations

from typing import Iterable

MARK = "~"
"""Put before a noisy latency figure (table, HTML, recommendation)."""


def noise_of(lat: dict) -> dict:
    return (lat.get("stats") or {}).get("noise") or {}


def is_noisy(lat: dict) -> bool:
    return bool(noise_of(lat).get("noisy"))


def reasons(lat: dict) -> list[str]:
    return list(noise_of(lat).get("reasons") or [])


def mark(lat: dict) -> str:
    """:data:`MARK` for a noisy row, else ''."""
    return MARK if is_noisy(lat) else ""


def noisy_rows(records: Iterable[dict]) -> list[tuple[dict, dict]]:
    return [(rec, lat) for rec in records for lat in rec.get("latency") or [] if is_noisy(lat)]


def legend(records: list[dict]) -> str:
    """The line that explains :data:`MARK`, with how many figures carry it; '' when none."""
    rows = noisy_rows(records)
    if not rows:
        return ""
    measured = sum(1 for rec in records for lat in rec.get("latency") or [] if lat.get("stats"))
    crit = noise_of(rows[0][1]).get("criterion") or {}
    tries = max(noise_of(lat).get("attempts", 1) for _, lat in rows)
    why = seen(rows)
    return (f"{MARK} = noisy latency ({len(rows)} of {measured} figures): the measurement "
            f"failed the stability criterion (IQR <= {crit.get('max_iqr_rel', 0.1):.0%} of "
            f"p50, p90 <= {crit.get('max_p90_p50', 1.5):g}x p50, calibration probe drift <= "
            f"{crit.get('max_probe_drift', 1.5):g}x, 1-minute load <= "
            f"{crit.get('max_load_per_cpu', 2.0):g} per core) even after up to {tries} "
            f"measurements; shown, but it may be far off. Seen: {why}. Re-run on a quiet "
            f"machine (docs/latency.md)")


def seen(rows: list[tuple[dict, dict]]) -> str:
    """What the noisy rows' figures showed, one clause per failed part of the criterion
    with its worst value: ``IQR up to 257% of p50; probe drift up to 433x; ...``."""
    worst: dict = {}
    for _, lat in rows:
        n = noise_of(lat)
        crit = n.get("criterion") or {}
        loads = [lv[0] for lv in (n.get("load_before"), n.get("load_after")) if lv]
        for kind, value, limit in (
                ("iqr", n.get("iqr_rel"), crit.get("max_iqr_rel")),
                ("p90", n.get("p90_p50"), crit.get("max_p90_p50")),
                ("drift", n.get("probe_drift"), crit.get("max_probe_drift")),
                ("load", max(loads) / n["cpus"] if loads and n.get("cpus") else None,
                 crit.get("max_load_per_cpu"))):
            if value is not None and limit is not None and value > limit:
                worst[kind] = max(worst.get(kind, value), value)
    words = {"iqr": lambda v: f"IQR up to {v:.0%} of p50",
             "p90": lambda v: f"p90 up to {v:.2f}x p50",
             "drift": lambda v: f"calibration probe drift up to {v:.3g}x",
             "load": lambda v: f"1-minute load average up to {v:.1f} per core"}
    return "; ".join(words[k](v) for k, v in worst.items()) or "see the records' reasons"
