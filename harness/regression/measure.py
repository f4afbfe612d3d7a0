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
import statistics
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


def _time_calls(fn: Callable[[], object], n: int) -> tuple[list[float], list[float]]:
    """``(wall ms, CPU ms)`` of each of ``n`` calls of ``fn``: ``time.perf_counter`` and the
    process CPU time (``time.process_time``: every thread of the process) around each."""
    wall, cpu = [], []
    pc, pt = time.perf_counter, time.process_time
    for _ in range(n):
        c0, w0 = pt(), pc()
        fn()
        w1, c1 = pc(), pt()
        wall.append((w1 - w0) * 1000.0)
        cpu.append((c1 - c0) * 1000.0)
    return wall, cpu


def _block_ms(fn: Callable[[], object], rs: "RoundSettings") -> float:
    """One block of ``fn``: ``warmup_calls`` untimed, then ``calls`` timed, reduced to the
    round statistic (:meth:`RoundSettings.block`)."""
    for _ in range(rs.warmup_calls):
        fn()
    return rs.block(*_time_calls(fn, rs.calls))


@dataclass
class _Target:
    entry: dict
    runtime: str
    profile: dict  # ProfileSpec fields


def latency_key(runtime: str, profile: str, precision: str) -> str:
    return f"{runtime}/{profile}/{precision}"


def _profile_spec(t: _Target):
    from ..api.specs import ProfileSpec
    return ProfileSpec(**{k: (tuple(v) if k == "precisions" else v) for k, v in t.profile.items()})


def _arrays(out) -> Optional[list]:
    """A call's output as a flat list of numpy copies (tensors, arrays, lists, dicts of
    them), or None when it is something else."""
    import numpy as np
    if hasattr(out, "detach"):
        return [out.detach().float().cpu().numpy().copy()]
    if isinstance(out, np.ndarray):
        return [out.copy()]
    if isinstance(out, dict) or (hasattr(out, "values") and callable(out.values)):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        parts = [_arrays(o) for o in out]
        return None if any(p is None for p in parts) else [a for p in parts for a in p]
    return None


def _same_outputs(a: Optional[list], b: Optional[list]) -> bool:
    import numpy as np
    if a is None or b is None:
        return True  # nothing to compare: not a failed check
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return False
        scale = float(np.abs(y).max()) if y.size else 0.0
        if not np.allclose(x, y, rtol=1e-4, atol=1e-5 * max(scale, 1e-12)):
            return False
    return True


class Session:
    """The models of some baseline entries, loaded once, and one block measured per call.

    Setup runs every target's runtime plugin once (its conversion, session creation or
    compilation, warm-up and a first timing through :func:`harness.measure.latency.measure`)
    and keeps the function each precision timed (:func:`harness.measure.latency.timed_calls`):
    a call on the session or compiled model that already exists. A block then times only
    calls of it, ``warmup_calls`` untimed and ``calls`` timed one by one (wall clock and
    process CPU time around each), so no per-round set-up (an ONNX Runtime session, an
    OpenVINO compilation, an ExecuTorch program load) enters the statistic, in any runtime.
    A replayed function must still give the outputs it gave during its measurement (checked
    once at setup), so a runtime whose timed function changed meaning is an error, not a
    wrong number.

    Args:
        entries: baseline cell entries (``config``, ``data_info``, ``profiles``).
        rs: how blocks are measured.
        only: restrict to these ``(cell id, runtime, profile)`` triples.
        probe_reps: ``{(cell id, runtime, profile): reps}`` of the probe (a check passes the
            baseline's, so both time the same probe); missing ones are sized here.
        calibration: ``{cell id: .npy file}`` of float32 images in [0, 1] for int8
            calibration (:mod:`harness.regression.calibration`; both sides of a paired check
            read the same file).

    Attributes:
        targets: ``(cell id, runtime, profile)`` per measurable target, in order.
        static: ``{cell id: {latency key: dict}}``: what is known before measuring (the
            unavailable runtimes and precisions, failed ones, the cells that cannot be rebuilt).
        keys: per target, the latency keys it measures in a block.
        counter: why instructions are not counted, or ``""`` when they are.
    """

    def __init__(self, plugins: PluginSystem, entries: list[dict], rs: RoundSettings,
                 only: Optional[set] = None, probe_reps: Optional[dict] = None,
                 calibration: Optional[dict] = None):
        self.plugins, self.rs = plugins, rs
        self.static: dict = {}
        self._arts: dict = {}
        self._targets: list[_Target] = []
        self._calibration = dict(calibration or {})
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
        self._calls: list[dict] = [self._prepare(t) for t in self._targets]
        self.keys = [list(c) for c in self._calls]
        self.probe_reps = dict(probe_reps or {})
        self._probes: dict = {}
        if rs.calibrate:
            for t, calls in zip(self._targets, self._calls):
                tid = (t.entry["id"], t.runtime, t.profile["name"])
                with _threads(t.profile):
                    if tid not in self.probe_reps:
                        self.probe_reps[tid] = _probe_size(calls, rs)
                self._probes[tid] = probe(self.probe_reps[tid])

    def _add_entry(self, entry: dict, only: Optional[set]) -> None:
        import numpy as np

        from ..measure.export import export_onnx
        from ..run.cell import Artifacts

        cid = entry["id"]
        self.static[cid] = {}
        try:
            model = build_architecture(self.plugins, entry)
            cfg = entry["config"]
            calib = self._calibration.get(cid)
            (self._workdir / cid).mkdir(parents=True, exist_ok=True)  # runtimes write there
            art = Artifacts(model=model, image_size=cfg["image_size"],
                            workdir=self._workdir / cid,
                            calibration=None if calib is None else np.load(calib))
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

    def _prepare(self, t: _Target) -> dict:
        """``{latency key: timed function}`` of target ``t``: its runtime run once, the
        functions it timed kept; what it could not measure goes to :attr:`static`."""
        from ..measure.latency import timed_calls

        cid, profile = t.entry["id"], _profile_spec(t)
        spec = self.plugins.runtimes.get(t.runtime)
        static = self.static[cid]
        try:
            with _threads(t.profile), timed_calls() as seen:
                rows = spec.measure(self._arts[cid], profile, self.settings) or []
            # copies now: a runtime may reuse its output buffers on the next call
            seen = [(tc.fn, tc.stats, _arrays(tc.output)) for tc in seen]
        except Exception as exc:
            static[latency_key(t.runtime, profile.name, "-")] = {
                "error": f"{type(exc).__name__}: {exc}"}
            return {}
        calls = {}
        for row in rows:
            key = latency_key(t.runtime, profile.name, row.get("precision", "-"))
            facts = {"runtime": t.runtime, "profile": profile.name,
                     "precision": row.get("precision", "-")}
            if "stats" not in row:
                static[key] = {**facts, **{k: row[k] for k in ("unavailable", "error")
                                           if k in row}}
                continue
            got = next((s for s in seen if s[1] is row["stats"] or any(
                v is row["stats"] for v in s[1].values() if isinstance(v, dict))), None)
            if got is None:
                static[key] = {**facts, "error": "the runtime timed its calls without "
                               "harness.measure.latency.measure, so the check cannot time "
                               "them apart from its set-up"}
                continue
            fn, _, before = got
            with _threads(t.profile):
                again = _arrays(fn())
            if not _same_outputs(again, before):
                static[key] = {**facts, "error": "the runtime's timed function gives other "
                               "outputs when called after its measurement: it must bind its "
                               "own session or model, not a loop variable "
                               "(harness.measure.latency.timed_calls)"}
                continue
            calls[key] = fn
        return calls

    def block(self, i: int, keys: Optional[list] = None) -> dict:
        """Measure one block of target ``i`` (of its ``keys``, default all):
        ``{latency key: sample}``."""
        t = self._targets[i]
        cid, rs = t.entry["id"], self.rs
        tid = (cid, t.runtime, t.profile["name"])
        out = {}
        with _threads(t.profile):
            before = _block_ms(self._probes[tid], rs) if rs.calibrate else None
            for key, fn in self._calls[i].items():
                if keys is not None and key not in keys:
                    continue
                try:
                    for _ in range(rs.warmup_calls):
                        fn()
                    box: dict = {}
                    timed = (lambda: box.update(t=_time_calls(fn, rs.calls)))
                    instructions = self._count(timed) if self._count else timed()
                except Exception as exc:
                    out[key] = {"error": f"{type(exc).__name__}: {exc}"}
                    continue
                out[key] = self._sample(t, key, *box["t"], before,
                                        instructions if self._count else None)
            if rs.calibrate and rs.statistic != "cpu":
                # bracket the block: the geometric mean of a probe before and after
                after = _block_ms(self._probes[tid], rs)
                for s in out.values():
                    if "probe_ms" in s:
                        s["probe_ms"] = math.sqrt(before * after)
        return out

    def _sample(self, t: _Target, key: str, wall: list, cpu: list, probe_ms: Optional[float],
                instructions: Optional[int]) -> dict:
        rs = self.rs
        return {"runtime": t.runtime, "profile": t.profile["name"],
                "precision": key.rsplit("/", 1)[1], "batch_size": t.profile["batch_size"],
                "threads": t.profile.get("threads") or os.cpu_count() or 1,
                "statistic": rs.statistic, "pid": os.getpid(),
                "probe_reps": self.probe_reps.get((t.entry["id"], t.runtime, t.profile["name"])),
                "raw_ms": wall, "cpu_ms": statistics.median(cpu),
                "round_ms": rs.block(wall, cpu), "probe_ms": probe_ms,
                "instructions": None if instructions is None else instructions / len(wall)}

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


def _probe_size(calls: dict, rs: RoundSettings) -> int:
    """Probe repetitions that last about one model call (timed on the prepared calls)."""
    try:
        model_ms = min(min(rs.block(*_time_calls(fn, 3)) for _ in range(2))
                       for fn in calls.values())
    except Exception:  # no call or a failing one: the rounds record it; any probe size will do
        return 1
    one = min(_block_ms(probe(1), rs) for _ in range(3))
    # CPU time does not see preemption, so a shorter probe (a quarter call) is enough there
    target = model_ms / 4 if rs.statistic == "cpu" else model_ms
    return max(1, round(target / max(one, 1e-6)))
