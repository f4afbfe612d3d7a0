"""Interleaved, probe-calibrated latency rounds of baseline cells through the runtime plugins."""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..api.manager import PluginSystem
from ..measure.latency import MeasureSettings
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


def measure_latency(plugins: PluginSystem, entries: list[dict], rs: RoundSettings,
                    only: Optional[set] = None, probe_reps: Optional[dict] = None,
                    progress: Callable[[str], None] = lambda m: None) -> dict:
    """Interleaved, probe-calibrated latency samples of every entry's runtimes x profiles.

    Args:
        entries: baseline cell entries (``config``, ``data_info``, ``profiles``).
        only: restrict to these ``(cell id, runtime, profile)`` triples.
        probe_reps: ``{(cell id, runtime, profile): reps}`` of the probe (a check passes the
            baseline's, so both time the same probe); missing ones are sized here.

    Returns:
        ``{cell id: {latency key: sample dict}}``; a sample dict holds ``round_ms`` (block
        medians), ``probe_ms``, ``raw_ms`` (every call, per block) and the profile facts, or
        ``error`` / ``unavailable`` with the reason.
    """
    from ..run.cell import Artifacts
    from ..measure.export import export_onnx
    from ..api.specs import ProfileSpec

    out: dict = {}
    arts: dict = {}
    targets: list[_Target] = []
    workdir = Path(tempfile.mkdtemp(prefix="tb-check-"))
    for entry in entries:
        cid = entry["id"]
        out[cid] = {}
        try:
            model = build_architecture(plugins, entry)
            cfg = entry["config"]
            art = Artifacts(model=model, image_size=cfg["image_size"], workdir=workdir / cid)
            rts = [plugins.runtimes.get(r) for r in cfg.get("runtimes", [])]
            if any(r.needs_onnx and r.available()[0] for r in rts):
                art.onnx_path = export_onnx(model, cfg["image_size"], art.workdir / "model.onnx")
            arts[cid] = art
        except Exception as exc:  # the cell's own failure: reported, others go on
            out[cid]["*"] = {"error": f"cannot rebuild the model: {type(exc).__name__}: {exc}"}
            continue
        for rt in rts:
            ok, why = rt.available()
            for pname, pdef in entry["profiles"].items():
                if only is not None and (cid, rt.name, pname) not in only:
                    continue
                if not ok:
                    out[cid][latency_key(rt.name, pname, "-")] = {"unavailable": why}
                    continue
                targets.append(_Target(entry, rt.name, {"name": pname, **pdef}))
    settings = MeasureSettings(warmup_count=rs.warmup_calls, warmup_s=0.0, min_count=rs.calls,
                               min_s=0.0, max_s=60.0)
    old_threads = torch.get_num_threads()
    reps = dict(probe_reps or {})
    probes: dict = {}
    try:
        if rs.calibrate:
            for t in targets:
                tid = (t.entry["id"], t.runtime, t.profile["name"])
                threads = t.profile.get("threads") or os.cpu_count() or 1
                torch.set_num_threads(threads)
                if tid not in reps:
                    reps[tid] = _probe_size(plugins, arts[t.entry["id"]], t, settings, rs)
                probes[tid] = probe(reps[tid])
        for r in range(rs.rounds):
            # rotate the order so no target always runs right after another one
            shift = r % max(len(targets), 1)
            for t in targets[shift:] + targets[:shift]:
                cid = t.entry["id"]
                progress(f"round {r + 1}/{rs.rounds} {t.entry['label']} {t.runtime}")
                profile = ProfileSpec(**{k: (tuple(v) if k == "precisions" else v)
                                         for k, v in t.profile.items()})
                threads = profile.threads or os.cpu_count() or 1
                tid = (cid, t.runtime, profile.name)
                probe_ms = None
                try:
                    if rs.calibrate:
                        torch.set_num_threads(threads)
                        before = _block_ms(probes[tid], rs)
                    c0 = time.process_time()
                    results = plugins.runtimes.get(t.runtime).measure(arts[cid], profile,
                                                                      settings) or []
                    cpu_ms = (time.process_time() - c0) * 1000.0
                    if rs.calibrate and rs.statistic != "cpu":
                        # bracket the block: the geometric mean of a probe before and after
                        torch.set_num_threads(threads)
                        probe_ms = math.sqrt(before * _block_ms(probes[tid], rs))
                    elif rs.calibrate:  # CPU time does not see preemption: one probe will do
                        probe_ms = before
                except Exception as exc:
                    out[cid][latency_key(t.runtime, profile.name, "-")] = {
                        "error": f"{type(exc).__name__}: {exc}"}
                    continue
                for res in results:
                    key = latency_key(t.runtime, profile.name, res.get("precision", "-"))
                    slot = out[cid].setdefault(key, {
                        "runtime": t.runtime, "profile": profile.name,
                        "precision": res.get("precision", "-"),
                        "batch_size": profile.batch_size, "threads": threads,
                        "statistic": rs.statistic, "probe_reps": reps.get(tid),
                        "round_ms": [], "probe_ms": [], "raw_ms": []})
                    if "stats" not in res:
                        slot.update({k: res[k] for k in ("unavailable", "error") if k in res})
                        continue
                    raw = res["stats"]["raw_ms"]
                    slot["raw_ms"].append(raw)
                    # CPU time is per block: split evenly over the block's calls (and over
                    # its precisions, which a runtime measures one after another)
                    per_call = cpu_ms / (len(results) * (len(raw) + rs.warmup_calls))
                    slot.setdefault("cpu_ms", []).append(per_call)
                    slot["round_ms"].append(per_call if rs.statistic == "cpu" else rs.block(raw))
                    if probe_ms is not None:
                        slot["probe_ms"].append(probe_ms)
    finally:
        torch.set_num_threads(old_threads)
    return out


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
