"""Latency timing measured once per architecture x runtime x precision x profile, shared by cells.

The frozen, fine-tuned and scratch cells of one backbone have the same architecture, and a
CNN's work per image does not depend on its weights, so timing each of them again measures
the same thing three times. Here a timing is keyed like a cell (a SHA-256 of the machine
and its CPU features, the library versions, the code of the runtime's measure function and
of the latency core, the architecture with its head and image size, the runtime, the
precision, the profile and the measurement settings; :mod:`harness.measure.fingerprint`)
and kept in ``<cache dir>/latency-timing/KEY.json``, so it is reused by the next cells of
the run and by later runs on the same machine and versions.

What stays per cell: the export of the cell's own weights, their conversion and
quantization, and everything scored on them (the accuracy after quantization, the parity
of fp32 conversions). A cell whose timing is shared still runs the runtime's worker on its
own weights with one call instead of the timed loop (:data:`OUTPUTS_ONLY`): its outputs
on the test images are compared with PyTorch's and, below fp32, scored; its rows carry the
shared statistics with ``measurement_id`` and ``latency_shared_with`` (the key of the cell
that measured).

Concurrency: the cells of one (architecture, runtime, profile) take a lock on their group
(:func:`harness.run.locks.cache_lock`) while they look up, measure and store, so two
workers (``--jobs 2``, Ray) never time the same thing at once, which would also make each
slow the other; entries are written atomically. Only full successes are stored: a failed,
unavailable or truncated row is not, so the next cell (or run) measures it again.

``[latency] reuse_timing = false`` turns sharing off: every cell times its own rows.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

from ..api.files import atomic_write_text
from ..measure.fingerprint import code_fingerprint, machine_identity
from ..measure.latency import MeasureSettings
from .locks import cache_lock

#: bump when what a timing entry means changes, so old entries are not reused
RECIPE = 1
#: the settings of a worker run whose timing is shared: one call, so the runtime loads this
#: cell's own weights and scores them; its one-call figure is replaced by the shared one
OUTPUTS_ONLY = dict(warmup_count=0, warmup_s=0.0, min_count=1, min_s=0.0)
#: measurement settings that do not change what is measured
_NOT_KEYED = ("reuse_timing", "worker_timeout_s")


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def shareable(row: dict) -> bool:
    """A row that is a full successful measurement (worth storing): statistics of every
    call asked for, stable (not marked noisy by :func:`harness.measure.latency.stability`:
    a later cell may measure it cleanly, and a stored figure outlives the run), no error,
    and outputs that did not disagree with PyTorch's."""
    stats = row.get("stats")
    return (isinstance(stats, dict) and "error" not in row and "unavailable" not in row
            and not stats.get("truncated") and bool(stats.get("count"))
            and not (stats.get("noise") or {}).get("noisy")
            and (row.get("outputs_check") or {}).get("ok") is not False)


class TimingCache:
    """Timing entries in ``folder`` (one JSON file per key), written atomically."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> Optional[dict]:
        """The stored entry, or None (missing, unreadable or not a timing entry: measured
        again and overwritten)."""
        try:
            entry = json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and shareable(entry) else None

    def put(self, key: str, entry: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path(key), json.dumps(entry, default=str))

    def lock(self, group: str):
        return cache_lock(self.folder / f"group-{group}")


@dataclasses.dataclass
class CellTiming:
    """One cell's view of the shared timings.

    Attributes:
        cache: where entries live; None turns sharing off (every cell measures).
        cell_key: the cell's key (``measured_by`` of what it measures).
        label: the cell's label, for people reading an entry.
        base: what every key of this cell has in common: architecture, image size,
            versions, settings; the machine is added here.
    """

    cache: Optional[TimingCache]
    cell_key: str
    label: str
    base: dict

    def __post_init__(self):
        self.base = {**self.base, "machine": machine_identity(), "recipe": RECIPE}

    def keys(self, runtime: str, measure_fn: Callable, profile, settings: MeasureSettings
             ) -> tuple[str, dict]:
        """``(group key, {precision: timing key})`` for one runtime and profile."""
        kept = {k: v for k, v in asdict(settings).items() if k not in _NOT_KEYED}
        prof = {k: v for k, v in asdict(profile).items()
                if k not in ("name", "description", "default", "precisions")}
        group = {**self.base, "runtime": runtime, "code": code_fingerprint(measure_fn),
                 "profile": prof, "settings": kept}
        return _sha(group), {p: _sha({**group, "precision": p}) for p in profile.precisions}


def measure_shared(call: Callable, measure_fn: Callable, runtime: str, profile,
                   settings: MeasureSettings, timing: Optional[CellTiming]) -> list[dict]:
    """The rows of one runtime and profile, with timings measured once and shared.

    Args:
        call: ``call(profile, settings, suffix) -> rows``: runs the runtime's measure (in
            its worker) for ``profile`` (a copy with only some precisions) and settings,
            and scores the rows on the cell (a row whose outputs disagree with PyTorch's
            is not stored).
        measure_fn: the runtime's measure function (its code is part of the key).
        timing: the cell's :class:`CellTiming`; None measures every row here.
    """
    if timing is None or timing.cache is None:
        return call(profile, settings, "")
    group, keys = timing.keys(runtime, measure_fn, profile, settings)
    cache = timing.cache
    with cache.lock(group):
        entries = {p: cache.get(keys[p]) for p in profile.precisions}
        rows: dict = {}
        fresh = [p for p in profile.precisions if entries[p] is None]
        if fresh:
            for row in call(dataclasses.replace(profile, precisions=tuple(fresh)), settings, ""):
                rows[row.get("precision")] = _measured_here(row, keys, timing, cache)
        shared = [p for p in profile.precisions if entries[p] is not None]
        if shared:  # this cell's own weights still run: outputs checked and scored
            once = dataclasses.replace(settings, **OUTPUTS_ONLY)
            for row in call(dataclasses.replace(profile, precisions=tuple(shared)), once,
                            "-shared"):
                p = row.get("precision")
                rows[p] = (_with_shared(row, entries[p], keys[p])
                           if p in entries and row.get("stats") else row)
    return [rows[p] for p in profile.precisions if p in rows] + [
        r for p, r in rows.items() if p not in profile.precisions]


def _measured_here(row: dict, keys: dict, timing: CellTiming, cache: TimingCache) -> dict:
    key = keys.get(row.get("precision"))
    if key is None or not shareable(row):
        # failed, unavailable, truncated or noisy: not stored, measured again next time
        return {**row, "latency_measured": "here"} if row.get("stats") else row
    entry = {"stats": row["stats"], "runtime_reported": {
                 k: row[k] for k in ("device", "threads", "provider", "compiled_with")
                 if k in row},
             "measured_by": {"cell": timing.cell_key, "label": timing.label, "at": time.time()},
             "id": key}
    cache.put(key, entry)
    return {**row, "measurement_id": key, "latency_measured": "here"}


def _with_shared(row: dict, entry: dict, key: str) -> dict:
    """This cell's row with the shared statistics in place of its one-call figure."""
    by = entry.get("measured_by") or {}
    return {**row, "stats": entry["stats"], "measurement_id": key,
            "latency_measured": "shared", "latency_shared_with": by.get("cell"),
            "latency_shared_from": {"label": by.get("label"), "at": by.get("at")}}


__all__ = ["TimingCache", "CellTiming", "measure_shared", "shareable", "OUTPUTS_ONLY", "RECIPE"]
