"""Reading a cell's record: what the engine writes, every layer above may read.

Reports (:mod:`harness.report`) read records through these helpers; the engine
(:mod:`harness.run.cell`) uses them for its own summaries, so nothing here may import a
report.
"""
from __future__ import annotations

from typing import Optional


def learning_curve(rec: dict) -> list:
    """Validation metric per epoch, epoch 0 (before training) first when recorded; every
    epoch, rolled-back ones included (what a plot shows)."""
    hist = rec.get("history") or {}
    start = (hist.get("start") or {}).get("val_metric")
    pts = [e["val_metric"] for e in hist.get("epochs", []) if e.get("val_metric") is not None]
    return ([start] if start is not None else []) + pts


def kept_curve(rec: dict) -> list:
    """:func:`learning_curve` without the epochs of rolled-back phases: the training that
    produced the delivered weights (what slope, area and mean are computed on)."""
    hist = rec.get("history") or {}
    start = (hist.get("start") or {}).get("val_metric")
    return ([start] if start is not None else []) + _kept(rec)


def kept_value(rec: dict) -> Optional[float]:
    """The validation metric of the model the cell delivers.

    ``rec["kept_model"]`` (the delivered model evaluated again after training) where the
    cell runner wrote it; else the epoch the fit kept (``history.kept_epoch``); else, for
    records that predate both, the kept epoch by the one selection criterion: the lowest
    validation loss among epochs not rolled back. None without any epoch.
    """
    kept = (rec.get("kept_model") or {}).get("val_metric")
    if kept is not None:
        return float(kept)
    hist = rec.get("history") or {}
    epochs = hist.get("epochs") or []
    i = hist.get("kept_epoch")
    if i is not None and 0 <= i < len(epochs):
        return epochs[i].get("val_metric")
    cands = [e for e in epochs if not e.get("rolled_back") and e.get("val_metric") is not None]
    if not cands:
        return None
    if all(e.get("val_loss") is not None for e in cands):
        return min(cands, key=lambda e: e["val_loss"])["val_metric"]
    return cands[-1]["val_metric"]


#: why a start with a new head is not a benefit (shown wherever the start would be)
CHANCE_NOTE = ("chance by construction: a new, randomly initialised head sits on the backbone, "
               "so the metric before training says nothing about the weights")


def start_is_chance(rec: dict) -> bool:
    """Whether the cell's metric before training is chance by construction: its head is
    new (``rec["start_is_chance"]``, written by the cell runner; records that predate it
    were all built with a new head)."""
    return bool(rec.get("start_is_chance", True))


def _kept(rec: dict) -> list:
    return [e["val_metric"] for e in (rec.get("history") or {}).get("epochs", [])
            if e.get("val_metric") is not None and not e.get("rolled_back")]
