"""Interleaved rounds over every target, in a fresh worker process or in this one.

Above both :mod:`.measure` (the in-process :class:`~.measure.Session`) and :mod:`.worker`
(the same session in a fresh process), which therefore never import each other.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Optional

from ..api.manager import PluginSystem
from .measure import Session, add_sample
from .settings import RoundSettings
from .worker import WorkerSession


def measure_latency(plugins: PluginSystem, entries: list[dict], rs: RoundSettings,
                    only: Optional[set] = None, probe_reps: Optional[dict] = None,
                    progress: Callable[[str], None] = lambda m: None,
                    fresh_worker: bool = True) -> dict:
    """Interleaved, probe-calibrated latency samples of every entry's runtimes x profiles.

    Args:
        entries, only, probe_reps: as :class:`~harness.regression.measure.Session` takes
            them; every worker gets the cells' int8 calibration images
            (:mod:`harness.regression.calibration`).
        fresh_worker: measure in a fresh worker process (:mod:`harness.regression.worker`)
            with the driver's plugins, not in this process.

    Returns:
        ``{cell id: {latency key: sample dict}}``; a sample dict holds ``round_ms`` (one
        sample per round), ``probe_ms``, ``cpu_ms``, ``instructions`` (per call; empty where
        not counted), ``raw_ms`` (every call, per round) and the profile facts, or
        ``error`` / ``unavailable`` with the reason.
    """
    from .calibration import calibration_files

    with tempfile.TemporaryDirectory(prefix="tb-calib-") as tmp:
        calib = calibration_files(plugins, entries, Path(tmp))
        if fresh_worker:
            session = WorkerSession(entries, rs, only=only, probe_reps=probe_reps,
                                    plugins=plugins, calibration=calib)
        else:
            session = Session(plugins, entries, rs, only=only, probe_reps=probe_reps,
                              calibration=calib)
    try:
        out: dict = {cid: dict(v) for cid, v in session.static.items()}
        labels = {e["id"]: e["label"] for e in entries}
        n = len(session.targets)
        for r in range(rs.rounds):
            # rotate the order so no target always runs right after another one
            for i in [(j + r) % n for j in range(n)]:
                cid, runtime, _ = session.targets[i]
                progress(f"round {r + 1}/{rs.rounds} {labels[cid]} {runtime}")
                for key, sample in session.block(i).items():
                    add_sample(out, cid, key, sample)
        return out
    finally:
        session.close()
