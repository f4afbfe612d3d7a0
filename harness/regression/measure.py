"""Interleaved, probe-calibrated latency rounds of baseline cells through the runtime plugins.

A :class:`Session` rebuilds the cells' models once and measures one *block* (one round of
one cell x runtime x profile) on request; :func:`measure_latency` runs the rounds of every
target interleaved. Sessions run in this process or, by default, in a fresh worker process
(:mod:`harness.regression.worker`): a baseline and a check are then measured the same way,
never in the state training left behind.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..api.manager import PluginSystem
from ..measure.latency import MeasureSettings
from .counters import instruction_counter
from .rebuild import build_architecture
from .settings import RoundSettings


def probe(reps: int = 1, size: int = 192) -> Callable[[], object]:
    """The calibration workload: ``reps`` fixed float32 matrix products (``torch.mm``).

    ``reps`` is chosen when the baseline is made so that one probe call lasts about as long
    as one model call: on a shared CPU a 0.1 ms probe fits in a time slice and never feels
    the contention that stretches a 4 ms model call, so a short probe cancels nothing.
    """
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(size, size, generator=g), torch.rand(size, size, generator=g)

    def run():
        for _ in range(reps):
            torch.mm(a, b)
    return run


def _block_ms(fn: Callable[[], object], rs: "RoundSettings") -> float:
    for _ in range(rs.warmup_calls):
        fn()
    if rs.statistic == "cpu":
        c0 = time.process_time()
        for _ in range(rs.calls):
            fn()
        return (time.process_time() - c0) * 1000.0 / rs.calls
    times = []
    for _ in range(rs.calls):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return rs.block(times)


@dataclass
class _Target:
    entry: dict
    runtime: str
    profile: dict  # ProfileSpec fields


def latency_key(runtime: str, profile: str, precision: str) -> str:
    return f"{runtime}/{profile}/{precision}"


class Session:
    """The models of some baseline entries, rebuilt once, and one block measured per call.

    Args:
        entries: baseline cell entries (``config``, ``data_info``, ``profiles``).
        rs: how blocks are measured.
        only: restrict to these ``(cell id, runtime, profile)`` triples.
        probe_reps: ``{(cell id, runtime, profile): reps}`` of the probe (a check passes the
            baseline's, so both time the same probe); missing ones are sized here.

    Attributes:
        targets: ``(cell id, runtime, profile)`` per measurable target, in order.
        static: ``{cell id: {latency key: dict}}``: what is known before measuring (the
            unavailable runtimes, the cells that cannot be rebuilt).
        counter: why instructions are not counted, or ``""`` when they are.
    """

    def __init__(self, plugins: PluginSystem, entries: list[dict], rs: RoundSettings,
                 only: Optional[set] = None, probe_reps: Optional[dict] = None):
        self.plugins, self.rs = plugins, rs
        self.static: dict = {}
        self._arts: dict = {}
        self._targets: list[_Target] = []
        self._workdir = Path(tempfile.mkdtemp(prefix="tb-check-"))
        for entry in entries:
            self._add_entry(entry, only)
        self.targets = [(t.entry["id"], t.runtime, t.profile["name"]) for t in self._targets]
        # noisy_retries=0: the check's own rounds and statistics handle noise; re-measuring
        # a block until it looks stable would select blocks and bias its comparison
        self.settings = MeasureSettings(warmup_count=rs.warmup_calls, warmup_s=0.0,
                                        min_count=rs.calls, min_s=0.0, max_s=60.0,
                                        noisy_retries=0)
        self._count, self.counter = instruction_counter()
        self.probe_reps = dict(probe_reps or {})
        self._probes: dict = {}
        if rs.calibrate:
            for t in self._targets:
                tid = (t.entry["id"], t.runtime, t.profile["name"])
                with _threads(t.profile):
                    if tid not in self.probe_reps:
                        self.probe_reps[tid] = _probe_size(plugins, self._arts[tid[0]], t,
                                                           self.settings, rs)
                self._probes[tid] = probe(self.probe_reps[tid])

    def _add_entry(self, entry: dict, only: Optional[set]) -> None:
        from ..measure.export import export_onnx
        from ..run.cell import Artifacts

        cid = entry["id"]
        self.static[cid] = {}
        try:
            model = build_architecture(self.plugins, entry)
            cfg = entry["config"]
            art = Artifacts(model=model, image_size=cfg["image_size"],
                            workdir=self._workdir / cid)
            rts = [self.plugins.runtimes.get(r) for r in cfg.get("runtimes", [])]
            if any(r.needs_onnx and r.available()[0] for r in rts):
                art.onnx_path = export_onnx(model, cfg["image_size"], art.workdir / "model.onnx")
            self._arts[cid] = art
        except Exception as exc:  # the cell's own failure: reported, others go on
            self.static[cid]["*"] = {"error": f"cannot rebuild the model: {type(exc).__name__}: "
                                              f"{exc}"}
            return
        for rt in rts:
            ok, why = rt.available()
            for pname, pdef in entry["profiles"].items():
                if only is not None and (cid, rt.name, pname) not in only:
                    continue
                if not ok:
                    self.static[cid][latency_key(rt.name, pname, "-")] = {"unavailable": why}
                    continue
                self._targets.append(_Target(entry, rt.name, {"name": pname, **pdef}))

    def block(self, i: int) -> dict:
        """Measure one block of target ``i``: ``{latency key: sample}`` (or an error)."""
        from ..api.specs import ProfileSpec

        t = self._targets[i]
        cid, rs = t.entry["id"], self.rs
        profile = ProfileSpec(**{k: (tuple(v) if k == "precisions" else v)
                                 for k, v in t.profile.items()})
        tid = (cid, t.runtime, profile.name)
        spec = self.plugins.runtimes.get(t.runtime)
        box: dict = {}

        def run():
            box["results"] = spec.measure(self._arts[cid], profile, self.settings) or []
        try:
            with _threads(t.profile):
                before = _block_ms(self._probes[tid], rs) if rs.calibrate else None
                c0 = time.process_time()
                instructions = self._count(run) if self._count else run()
                cpu_ms = (time.process_time() - c0) * 1000.0
                probe_ms = before
                if rs.calibrate and rs.statistic != "cpu":
                    # bracket the block: the geometric mean of a probe before and after
                    probe_ms = math.sqrt(before * _block_ms(self._probes[tid], rs))
        except Exception as exc:
            return {latency_key(t.runtime, profile.name, "-"): {
                "error": f"{type(exc).__name__}: {exc}"}}
        return self._samples(t, profile, box["results"], cpu_ms, probe_ms,
                             instructions if self._count else None)

    def _samples(self, t: _Target, profile, results: list, cpu_ms: float,
                 probe_ms: Optional[float], instructions: Optional[int]) -> dict:
        rs, out = self.rs, {}
        threads = profile.threads or os.cpu_count() or 1
        for res in results:
            key = latency_key(t.runtime, profile.name, res.get("precision", "-"))
            sample = {"runtime": t.runtime, "profile": profile.name,
                      "precision": res.get("precision", "-"), "batch_size": profile.batch_size,
                      "threads": threads, "statistic": rs.statistic, "pid": os.getpid(),
                      "probe_reps": self.probe_reps.get((t.entry["id"], t.runtime,
                                                         profile.name))}
            if "stats" not in res:
                sample.update({k: res[k] for k in ("unavailable", "error") if k in res})
                out[key] = sample
                continue
            raw = res["stats"]["raw_ms"]
            # CPU time (and instructions) are per block: split evenly over the block's calls
            # (and over its precisions, which a runtime measures one after another)
            calls = len(results) * (len(raw) + rs.warmup_calls)
            sample.update(raw_ms=raw, cpu_ms=cpu_ms / calls,
                          round_ms=cpu_ms / calls if rs.statistic == "cpu" else rs.block(raw),
                          probe_ms=probe_ms,
                          instructions=None if instructions is None else instructions / calls)
            out[key] = sample
        return out

    def close(self) -> None:
        shutil.rmtree(self._workdir, ignore_errors=True)


class _threads:
    """``torch.set_num_threads`` of a profile inside, the old count restored after."""

    def __init__(self, profile: dict):
        self.n = profile.get("threads") or os.cpu_count() or 1

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def add_sample(out: dict, cid: str, key: str, sample: dict) -> None:
    """Append one block's ``sample`` to the series ``out[cid][key]`` (a baseline's format)."""
    if "round_ms" not in sample:  # unavailable or failed: kept as it is
        out.setdefault(cid, {}).setdefault(key, sample)
        return
    slot = out.setdefault(cid, {}).setdefault(key, {
        k: sample[k] for k in ("runtime", "profile", "precision", "batch_size", "threads",
                               "statistic", "probe_reps", "pid")} | {
        "round_ms": [], "probe_ms": [], "raw_ms": [], "cpu_ms": [], "instructions": []})
    for k in ("round_ms", "raw_ms", "cpu_ms"):
        slot[k].append(sample[k])
    if sample.get("probe_ms") is not None:
        slot["probe_ms"].append(sample["probe_ms"])
    if sample.get("instructions") is not None:
        slot["instructions"].append(sample["instructions"])


def measure_latency(plugins: PluginSystem, entries: list[dict], rs: RoundSettings,
                    only: Optional[set] = None, probe_reps: Optional[dict] = None,
                    progress: Callable[[str], None] = lambda m: None,
                    fresh_worker: bool = True) -> dict:
    """Interleaved, probe-calibrated latency samples of every entry's runtimes x profiles.

    Args:
        entries, only, probe_reps: as :class:`Session` takes them.
        fresh_worker: measure in a fresh worker process (:mod:`harness.regression.worker`)
            with the driver's plugins, not in this process.

    Returns:
        ``{cell id: {latency key: sample dict}}``; a sample dict holds ``round_ms`` (one
        sample per round), ``probe_ms``, ``cpu_ms``, ``instructions`` (per call; empty where
        not counted), ``raw_ms`` (every call, per round) and the profile facts, or
        ``error`` / ``unavailable`` with the reason.
    """
    if fresh_worker:
        from .worker import WorkerSession
        session = WorkerSession(entries, rs, only=only, probe_reps=probe_reps, plugins=plugins)
    else:
        session = Session(plugins, entries, rs, only=only, probe_reps=probe_reps)
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


def _probe_size(plugins: PluginSystem, art, t: _Target, settings: MeasureSettings,
                rs: RoundSettings) -> int:
    """Probe repetitions that last about one model call (one untimed-for-the-check block)."""
    from ..api.specs import ProfileSpec
    profile = ProfileSpec(**{k: (tuple(v) if k == "precisions" else v)
                             for k, v in t.profile.items()})
    try:
        res = plugins.runtimes.get(t.runtime).measure(art, profile, settings) or []
        model_ms = min(min(r["stats"]["raw_ms"]) for r in res if "stats" in r)
    except Exception:  # the rounds will record the runtime's error; any probe size will do
        return 1
    one = min(_block_ms(probe(1), rs) for _ in range(3))
    # CPU time does not see preemption, so a shorter probe (a quarter call) is enough there
    target = model_ms / 4 if rs.statistic == "cpu" else model_ms
    return max(1, round(target / max(one, 1e-6)))
