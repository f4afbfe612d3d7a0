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

Noise: a figure that fails the stability criterion even after its own retries
(``stats.noise.noisy``, :func:`harness.measure.latency.stability`) is stored too, marked
noisy, and measured once more (one attempt, no retries) by the next cell that needs it
(:data:`NOISY_MEASUREMENTS` in all, by different cells); the less noisy of the two is kept and shared from then on, by
this run and later ones, still marked noisy where it is (the table's ``~``). Before, a noisy
figure was never stored, so on a machine whose measurements are often noisy every cell
timed it again, with its retries: most of a default run's latency stage. A row a runtime
declines (``unavailable``: PyTorch eager int8, a precision this CPU lacks) is a verdict of
the runtime's code on this machine and versions, which the key covers: it is stored and
shared as well, so the worker is not started again only to say so. Every row says what it
is: ``latency_measured`` ``here``/``shared``, ``measurement_id``, ``latency_measurements``
(how many times that figure was taken) and, for a re-measured figure,
``latency_remeasured`` (both figures and which one was kept).

Concurrency: the cells of one (architecture, runtime, profile) take a lock on their group
(:func:`harness.run.locks.cache_lock`) while they look up, measure and store, so two
workers (``--jobs 2``, Ray) never time the same thing at once, which would also make each
slow the other; entries are written atomically. A failed or truncated row, or one whose
outputs disagree with PyTorch's, is never stored: the next cell (or run) measures it again.

``[latency] reuse_timing = false`` turns sharing off: every cell times its own rows; to
re-measure shared figures (a quieter machine now), delete ``<cache dir>/latency-timing/``.
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
#: (2: noisy figures and "not measured" verdicts are stored too)
RECIPE = 2
#: a noisy figure (it failed the stability criterion even after its retries) is measured
#: this many times in all, by different cells, before it is shared as it is
NOISY_MEASUREMENTS = 2
#: the settings of a worker run whose timing is shared: one call, so the runtime loads this
#: cell's own weights and scores them; its one-call figure is replaced by the shared one
OUTPUTS_ONLY = dict(warmup_count=0, warmup_s=0.0, min_count=1, min_s=0.0)
#: measurement settings that do not change what is measured
_NOT_KEYED = ("reuse_timing", "worker_timeout_s")


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def complete(row: dict) -> bool:
    """A row worth storing: statistics of every call asked for, no error, not truncated,
    and outputs that did not disagree with PyTorch's. It may be noisy (:func:`noisy`)."""
    stats = row.get("stats")
    return (isinstance(stats, dict) and "error" not in row and "unavailable" not in row
            and not stats.get("truncated") and bool(stats.get("count"))
            and (row.get("outputs_check") or {}).get("ok") is not False)


def noisy(row: dict) -> bool:
    """Whether a row's figure failed the stability criterion of
    :func:`harness.measure.latency.stability` (after the measurement's own retries)."""
    return bool(((row.get("stats") or {}).get("noise") or {}).get("noisy"))


def shareable(row: dict) -> bool:
    """A complete row whose figure is also stable: shared by every later cell as it is."""
    return complete(row) and not noisy(row)


def not_measured(row: dict) -> bool:
    """A row the runtime declined with a reason (``unavailable``: a precision it does not
    run here, a profile on a device it does not use): a verdict of the runtime's code on
    this machine and versions, which the key covers, so it is stored and shared too."""
    return "unavailable" in row and "error" not in row and "stats" not in row


class TimingCache:
    """Timing entries in ``folder`` (one JSON file per key), written atomically."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> Optional[dict]:
        """The stored entry (a figure, stable or noisy, or a runtime's "not measured"
        verdict), or None (missing, unreadable or not a timing entry: measured again and
        overwritten)."""
        try:
            entry = json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None
        return (entry if isinstance(entry, dict) and (complete(entry) or not_measured(entry))
                else None)

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


def _needs_measuring(entry: Optional[dict]) -> bool:
    """No entry yet, or a noisy figure not yet measured :data:`NOISY_MEASUREMENTS` times."""
    if entry is None:
        return True
    return noisy(entry) and len(entry.get("measurements") or [None]) < NOISY_MEASUREMENTS


def measure_shared(call: Callable, measure_fn: Callable, runtime: str, profile,
                   settings: MeasureSettings, timing: Optional[CellTiming]) -> list[dict]:
    """The rows of one runtime and profile, with timings measured once and shared.

    A precision is timed here when no cell has timed it yet, or when its stored figure is
    noisy and was measured fewer than :data:`NOISY_MEASUREMENTS` times: then once, without
    the measurement's own retries (``noisy_retries = 0``: the first cell already took them),
    and the less noisy of the two figures is kept (:func:`_less_noisy`); otherwise the
    stored figure is shared. A stored
    "not measured" verdict is shared without starting the worker for it.

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
        fresh = [p for p in profile.precisions if _needs_measuring(entries[p])]
        new = [p for p in fresh if entries[p] is None]
        # a noisy figure already had its retries: measured once more, not retried again
        for which, sets, suffix in ((new, settings, ""), (
                [p for p in fresh if p not in new],
                dataclasses.replace(settings, noisy_retries=0), "-again")):
            if not which:
                continue
            for row in call(dataclasses.replace(profile, precisions=tuple(which)), sets,
                            suffix):
                p = row.get("precision")
                rows[p] = _measured_here(row, keys.get(p), entries.get(p), timing, cache)
        for p in profile.precisions:
            if p not in fresh and not_measured(entries[p]):
                rows[p] = _shared_verdict(p, entries[p], keys[p])
        shared = [p for p in profile.precisions if p not in fresh and p not in rows]
        if shared:  # this cell's own weights still run: outputs checked and scored
            once = dataclasses.replace(settings, **OUTPUTS_ONLY)
            for row in call(dataclasses.replace(profile, precisions=tuple(shared)), once,
                            "-shared"):
                p = row.get("precision")
                rows[p] = (_with_shared(row, entries[p], keys[p])
                           if p in entries and row.get("stats") else row)
    return [rows[p] for p in profile.precisions if p in rows] + [
        r for p, r in rows.items() if p not in profile.precisions]


def _by(timing: CellTiming) -> dict:
    return {"cell": timing.cell_key, "label": timing.label, "at": time.time()}


def _summary(stats: dict, by: dict) -> dict:
    """One measurement of a figure, as its entry's ``measurements`` list keeps it."""
    noise = stats.get("noise") or {}
    return {**by, "p50_ms": stats.get("p50_ms"), "p90_ms": stats.get("p90_ms"),
            "noisy": bool(noise.get("noisy")), "reasons": list(noise.get("reasons") or [])}


def _less_noisy(a: dict, b: dict) -> bool:
    """Whether statistics ``a`` are strictly less noisy than ``b``: stable beats noisy, then
    fewer failed parts of the criterion, then the smaller IQR relative to p50."""
    def rank(stats):
        noise = stats.get("noise") or {}
        return (bool(noise.get("noisy")), len(noise.get("reasons") or []),
                noise.get("iqr_rel", float("inf")))
    return rank(a) < rank(b)


def _measured_here(row: dict, key: Optional[str], previous: Optional[dict],
                   timing: CellTiming, cache: TimingCache) -> dict:
    if key is None:
        return row
    by = _by(timing)
    if not_measured(row):
        cache.put(key, {"unavailable": row["unavailable"], "measured_by": by, "id": key})
        return {**row, "measurement_id": key, "latency_measured": "here"}
    if not complete(row):
        # failed, unavailable or truncated, or outputs that disagree: not stored, measured
        # again by the next cell (a stored noisy figure stays as it was)
        return {**row, "latency_measured": "here"} if row.get("stats") else row
    this = _summary(row["stats"], by)
    earlier = list((previous or {}).get("measurements") or [])
    if previous is not None and _less_noisy(previous["stats"], row["stats"]):
        # the earlier figure was cleaner: it stays, and this cell shows it too
        cache.put(key, {**previous, "measurements": earlier + [{**this, "kept": False}]})
        return {**_with_shared(row, previous, key),
                "latency_remeasured": {"this_cell": this, "kept": "the earlier figure"}}
    entry = {"stats": row["stats"], "runtime_reported": {
                 k: row[k] for k in ("device", "threads", "provider", "compiled_with")
                 if k in row},
             "measured_by": by, "id": key,
             "measurements": [{**m, "kept": False} for m in earlier] + [{**this, "kept": True}]}
    cache.put(key, entry)
    out = {**row, "measurement_id": key, "latency_measured": "here",
           "latency_measurements": len(entry["measurements"])}
    if previous is not None:
        out["latency_remeasured"] = {"earlier": _summary(previous["stats"],
                                                         previous.get("measured_by") or {}),
                                     "kept": "this cell's figure"}
    return out


def _with_shared(row: dict, entry: dict, key: str) -> dict:
    """This cell's row with the shared statistics in place of its one-call figure."""
    by = entry.get("measured_by") or {}
    return {**row, "stats": entry["stats"], "measurement_id": key,
            "latency_measured": "shared", "latency_shared_with": by.get("cell"),
            "latency_shared_from": {"label": by.get("label"), "at": by.get("at")},
            "latency_measurements": len(entry.get("measurements") or [None])}


def _shared_verdict(precision: str, entry: dict, key: str) -> dict:
    """A "not measured" row from the stored verdict; no worker is started for it."""
    by = entry.get("measured_by") or {}
    return {"precision": precision, "unavailable": entry["unavailable"],
            "measurement_id": key, "latency_measured": "shared",
            "latency_shared_with": by.get("cell"),
            "latency_shared_from": {"label": by.get("label"), "at": by.get("at")}}


__all__ = ["TimingCache", "CellTiming", "measure_shared", "shareable", "complete", "noisy",
           "not_measured", "OUTPUTS_ONLY", "RECIPE", "NOISY_MEASUREMENTS"]
