"""Which metric a latency row stands for, and whether it may be compared with the others.

A cell's test metric is its fp32 model scored on every test image. A lower-precision row
(int8, fp16...) carries its own metric, ``accuracy_after``: the converted model's outputs on
the test images, scored by the task (``evaluated_on`` images). Two metrics may be compared
(in the table, the recommendation, its Pareto front, the HTML report, MLflow) only when they
were scored on the same images. Cells now score every test image; records written before
that scored the first 512 only, and such a row is shown with its subset and its size but
never compared with the fp32 metric (issue 25: the default run's "int8 beats fp32" came
from the subset, not from int8).
"""
from __future__ import annotations

from typing import Optional


def test_size(rec: dict) -> Optional[int]:
    """How many test images the cell's fp32 test metric was scored on (None: not recorded)."""
    n = ((rec.get("data") or {}).get("sizes") or {}).get("test")
    return int(n) if n is not None else None


def scored_on_subset(rec: dict, lat: dict) -> Optional[tuple[int, int]]:
    """``(evaluated_on, test size)`` when the row's metric after conversion was scored on
    fewer images than the fp32 test metric, else None."""
    n, total = lat.get("evaluated_on"), test_size(rec)
    if lat.get("accuracy_after") is None or n is None or total is None or int(n) == total:
        return None
    return int(n), total


def subset_text(rec: dict, lat: dict) -> str:
    """``" on the first 512 of 1000 test images: not comparable with fp32"`` or ''."""
    sub = scored_on_subset(rec, lat)
    if sub is None:
        return ""
    return (f" on the first {sub[0]} of {sub[1]} test images: not comparable with the fp32 "
            f"metric")


def row_metric(rec: dict, lat: dict) -> Optional[float]:
    """The primary metric a measured latency row stands for, on the cell's test images:
    the cell's test metric for fp32, the row's ``accuracy_after`` for a lower precision;
    None when there is none or it was scored on other images (:func:`scored_on_subset`),
    so it never competes with metrics scored on the full test set."""
    if lat.get("precision") == "fp32":
        name = rec.get("metric_name")
        return (rec.get("test_metrics") or {}).get(name) if name else None
    if lat.get("accuracy_after") is None or scored_on_subset(rec, lat):
        return None
    return lat["accuracy_after"]


def subset_notes(records: list[dict]) -> list[str]:
    """One line per row left out of every comparison because it was scored on a subset."""
    out = []
    for rec in records:
        cfg = rec.get("config") or {}
        for lat in rec.get("latency") or []:
            sub = scored_on_subset(rec, lat)
            if sub:
                out.append(f"{cfg.get('backbone')} + {cfg.get('strategy')} "
                           f"({lat.get('runtime')} {lat.get('precision')}, "
                           f"{lat.get('profile')}): metric after conversion scored on the "
                           f"first {sub[0]} of {sub[1]} test images (a record from before "
                           f"every test image was scored): shown, not compared")
    return out
