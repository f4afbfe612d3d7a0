"""Regression checks for CI: baselines, noise-robust latency statistics, verdicts, reports.

A *baseline* file (JSON) holds, per cell, its configuration, its primary metric and the raw
latency samples of every runtime x profile x precision, plus the environment and machine
fingerprint it was measured on and the tolerances to check with (its ``check`` table).

How latency is compared (why it holds on a noisy, shared machine):

* **Same model, no retraining.** Latency is measured on the cell's *architecture*
  (backbone + task head rebuilt from the cell's configuration, seeded random weights)
  through the registered runtime plugins. Trained weights do not change the work a dense
  CNN does per image, so a latency check needs no training; the baseline and the check
  use the very same procedure, so they are comparable. Accuracy comes from a fresh run
  (``--run``) or a retraining (``--retrain``).
* **Interleaved rounds.** Every runtime x profile of every cell is measured in ``rounds``
  short blocks, the blocks of all cells interleaved, so a burst of load hits a few rounds
  of every cell rather than all rounds of one. Each block gives one sample: by default its
  process CPU time per call (see :class:`RoundSettings` for why; wall-clock ``min`` and
  ``median`` are options), and the wall-clock timings of every call are kept too.
* **Calibration probe.** Right before each block a fixed ``torch.mm`` workload is timed
  the same way with the same threads; the block's sample divided by the probe's cancels
  the machine's speed (another CPU model, a clock change). Comparisons use these
  normalized samples.
* **Ratio AND significance.** A regression needs the ratio of medians above
  ``1 + tolerance`` and a one-sided Mann-Whitney U test (Mann & Whitney 1947) below
  ``alpha`` -- the rule asv uses. A suspected regression is measured again and must be
  confirmed (``confirm`` re-measurements).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional

import torch

from ..run.config import AxisItem, CellConfig
from ..train.data import DataInfo
from ..measure.env import environment, machine_fingerprint
from ..api.errors import BenchError
from ..measure.latency import MeasureSettings
from ..api.manager import PluginSystem
from ..train.model import TransferModel
from ..run.results import atomic_write_json, atomic_write_text

FORMAT = "transfer-bench-baseline"
VERSION = 1


class BaselineError(BenchError):
    """A baseline file that is missing or broken; the message names the file and the problem."""


# -- settings ---------------------------------------------------------------------------------
@dataclass
class CheckSettings:
    """Tolerances of a check (the baseline's ``check`` table; options override it).

    Attributes:
        latency_tolerance: a latency regression needs ``fresh / baseline > 1 + this``.
        accuracy_drop: a metric may get worse by at most this much (absolute, e.g. 0.01 =
            one point of accuracy); the direction follows the task's ``higher_is_better``.
        alpha: significance level of the one-sided Mann-Whitney test.
        confirm: how many re-measurements must also show a suspected latency regression.
    """

    latency_tolerance: float = 0.10
    accuracy_drop: float = 0.01
    alpha: float = 0.01
    confirm: int = 2

    def __post_init__(self) -> None:
        if not self.latency_tolerance >= 0 or not self.accuracy_drop >= 0:
            raise ValueError("latency_tolerance and accuracy_drop must be >= 0")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        if self.confirm < 0:
            raise ValueError("confirm must be >= 0")


@dataclass
class RoundSettings:
    """How latency samples are taken (stored in the baseline so a check repeats it).

    Attributes:
        rounds: interleaved blocks per runtime x profile of each cell.
        calls: timed calls per block (its median is one sample).
        warmup_calls: untimed calls before each block.
        calibrate: time the probe before each block and normalize by it.
        statistic: what one block contributes: ``"cpu"`` (process CPU time per call of
            the block, default), ``"min"`` (its fastest call, wall clock) or ``"median"``
            (wall clock). CPU time is the default because on a shared CPU most of the wall
            time a call loses is preemption by other processes, which CPU time does not
            count while any extra work (a slower kernel, a busy-wait) it does. Measured
            here with 8 engineers on 2 cores: a 4 ms call's fastest-of-15 wall time jumped
            between 3.2 and 9 ms from block to block, its CPU time stayed within a few %.
            Caveat: the block's CPU time includes the runtime's per-measurement setup (a
            new ONNX Runtime session), which dilutes a regression of that runtime.
    """

    rounds: int = 10
    calls: int = 15
    warmup_calls: int = 3
    calibrate: bool = True
    statistic: str = "cpu"

    def __post_init__(self) -> None:
        if self.rounds < 3 or self.calls < 1 or self.warmup_calls < 0:
            raise ValueError("rounds must be >= 3, calls >= 1 and warmup_calls >= 0")
        if self.statistic not in BLOCK_STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(BLOCK_STATISTICS)}, "
                             f"not {self.statistic!r}")

    def block(self, values: list[float]) -> float:
        return BLOCK_STATISTICS[self.statistic](values)


BLOCK_STATISTICS: dict = {"min": min, "median": statistics.median, "cpu": None}


# -- statistics -------------------------------------------------------------------------------
def _ranks(values: list[float]) -> tuple[list[float], list[int]]:
    """Average ranks (1-based) and the sizes of tie groups."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties, i = [], 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


def _exact_u_sf(u: float, n1: int, n2: int) -> float:
    """P(U >= u) under H0 from the exact null distribution (no ties)."""
    # counts[n][k]: arrangements of n x-values among the others with U == k, built by
    # the recursion of Mann & Whitney (1947), eq. (1), one n2 step at a time.
    prev = [[1] for _ in range(n1 + 1)]  # n2 = 0: U is 0
    for m in range(1, n2 + 1):
        cur = [[1]]
        for n in range(1, n1 + 1):
            size = n * m + 1
            row = [0] * size
            a, b = prev[n], cur[n - 1]  # last element from y (U += 0)... or from x (U += m)
            for k, c in enumerate(a):
                row[k] += c
            for k, c in enumerate(b):
                row[k + m] += c
            cur.append(row)
        prev = cur
    dist = prev[n1]
    total = sum(dist)
    return sum(dist[math.ceil(u - 1e-9):]) / total


def mann_whitney_greater(x: list[float], y: list[float]) -> float:
    """One-sided p-value that ``x`` is stochastically greater than ``y``.

    The Mann-Whitney U test (H. B. Mann and D. R. Whitney, "On a test of whether one of two
    random variables is stochastically larger than the other", Ann. Math. Stat. 18, 1947):
    ``U = R_x - n_x (n_x + 1) / 2`` from the rank sum of ``x``; the exact null distribution
    when there are no ties and the samples are small, else the normal approximation with
    tie and continuity corrections (as ``scipy.stats.mannwhitneyu``).
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples need at least one value")
    ranks, ties = _ranks(list(x) + list(y))
    u = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    if all(t == 1 for t in ties) and n1 * n2 <= 2500:
        return _exact_u_sf(u, n1, n2)
    n = n1 + n2
    mu = n1 * n2 / 2
    tie_term = sum(t ** 3 - t for t in ties) / (n * (n - 1))
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term))
    if sigma == 0:
        return 1.0
    z = (u - mu - 0.5) / sigma
    return 0.5 * math.erfc(z / math.sqrt(2))


# -- rebuilding and measuring -----------------------------------------------------------------
def cell_identity(config: dict) -> str:
    """What makes two cells the same model and training (not how latency is measured)."""
    keep = {k: v for k, v in config.items() if k not in ("runtimes", "profiles", "latency")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cell_config(config: dict) -> CellConfig:
    """A :class:`CellConfig` back from its ``to_dict()``."""
    kw = dict(config)
    for k in ("backbone", "task", "dataset", "strategy"):
        kw[k] = AxisItem.parse(kw[k], k)
    kw["runtimes"], kw["profiles"] = tuple(kw.get("runtimes", ())), tuple(kw.get("profiles", ()))
    names = {f.name for f in fields(CellConfig)}
    return CellConfig(**{k: v for k, v in kw.items() if k in names})


def build_architecture(plugins: PluginSystem, entry: dict) -> TransferModel:
    """The cell's backbone + head with seeded random weights (latency does not need training)."""
    cfg = cell_config(entry["config"])
    bb_spec, bb_arg = plugins.backbones.resolve(cfg.backbone.name)
    task = plugins.tasks.get(cfg.task.name).factory(**cfg.task.kwargs)
    info_kw = {k: v for k, v in (entry.get("data_info") or {}).items()
               if k in {f.name for f in fields(DataInfo)}}
    info = DataInfo(**{"name": cfg.dataset.name, **info_kw})
    torch.manual_seed(cfg.seed)
    kwargs = dict(cfg.backbone.kwargs)
    if bb_arg is not None:
        kwargs["arg"] = bb_arg
    backbone = bb_spec.build(**kwargs)
    head = task.build_head(backbone, info)
    return TransferModel(backbone, head, task.head_input).eval()


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


# -- baselines --------------------------------------------------------------------------------
def resolved_profiles(plugins: PluginSystem, names, custom: dict) -> dict:
    from ..run.cell import resolve_profile
    out = {}
    for n in names:
        p = resolve_profile(plugins, n, custom)
        out[n] = {"batch_size": p.batch_size, "threads": p.threads,
                  "precisions": list(p.precisions), "device": p.device}
    return out


def make_entry(config: dict, profiles: dict, data_info: dict, metric_name: Optional[str] = None,
               higher_is_better: bool = True, metric: Optional[float] = None) -> dict:
    """A baseline cell entry (latency is added by :func:`measure_latency`)."""
    cfg = cell_config(config)
    return {"id": cell_identity(config), "label": cfg.label(), "config": config,
            "profiles": profiles, "data_info": data_info, "metric_name": metric_name,
            "higher_is_better": higher_is_better, "metric": metric, "latency": {}}


def new_baseline(entries: list[dict], rs: RoundSettings, check: CheckSettings,
                 source: str) -> dict:
    env = environment()
    return {"format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "source": source, "environment": env, "fingerprint": machine_fingerprint(env),
            "check": asdict(check), "measure": asdict(rs), "cells": entries}


def write_baseline(path: Path, baseline: dict) -> None:
    atomic_write_json(Path(path), baseline)


def load_baseline(path: Path) -> dict:
    """Read and validate a baseline file.

    Raises:
        BaselineError: the file is missing, not JSON, or lacks what a check needs; the
            message names the file and what is wrong.
    """
    path = Path(path)
    fix = "; create one with `bench baseline create --out FILE`"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BaselineError(f"baseline file {path} does not exist{fix}") from None
    except OSError as exc:
        raise BaselineError(f"cannot read baseline file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(f"baseline file {path} is not valid JSON (line {exc.lineno}, "
                            f"column {exc.colno}: {exc.msg}){fix}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BaselineError(f"{path} is not a transfer-bench baseline (no \"format\": "
                            f"\"{FORMAT}\"){fix}")
    if data.get("version") != VERSION:
        raise BaselineError(f"{path}: baseline version {data.get('version')!r} is not supported "
                            f"(this transfer-bench reads version {VERSION}){fix}")
    for key, typ in (("cells", list), ("check", dict), ("measure", dict)):
        if not isinstance(data.get(key), typ):
            raise BaselineError(f"{path}: key {key!r} is missing or not a "
                                f"{'list' if typ is list else 'table'}{fix}")
    for sec, cls in (("check", CheckSettings), ("measure", RoundSettings)):
        allowed = {f.name for f in fields(cls)}
        bad = set(data[sec]) - allowed
        if bad:
            raise BaselineError(f"{path}: unknown key(s) {sorted(bad)} in [{sec}]; allowed: "
                                f"{', '.join(sorted(allowed))}")
        try:
            cls(**data[sec])
        except (TypeError, ValueError) as exc:
            raise BaselineError(f"{path}: [{sec}] {exc}") from None
    if not data["cells"]:
        raise BaselineError(f"{path}: the baseline has no cells{fix}")
    for i, c in enumerate(data["cells"]):
        missing = [k for k in ("id", "label", "config", "profiles", "latency")
                   if not isinstance(c, dict) or k not in c]
        if missing:
            raise BaselineError(f"{path}: cell {i} lacks {', '.join(missing)}{fix}")
        for key, lat in c["latency"].items():
            if "round_ms" in lat and (not isinstance(lat["round_ms"], list) or
                                      not all(isinstance(v, (int, float)) for v in lat["round_ms"])):
                raise BaselineError(f"{path}: cell {c['label']!r} latency {key!r}: round_ms "
                                    f"must be a list of numbers")
    return data


def fingerprint_warnings(baseline: dict) -> list[str]:
    """Differences between the baseline's machine and this one (latency may not compare)."""
    here = machine_fingerprint(environment())
    there = baseline.get("fingerprint") or {}
    diffs = [f"{k}: baseline {there.get(k)!r}, here {here.get(k)!r}" for k in sorted(here)
             if there.get(k) != here.get(k)]
    if not diffs:
        return []
    return ["the baseline was measured on another kind of machine (" + "; ".join(diffs) +
            "); the probe calibration cancels speed only roughly - re-create the baseline "
            "on this kind of machine for trustworthy latency verdicts"]


# -- verdicts ---------------------------------------------------------------------------------
@dataclass
class Verdict:
    """One line of the verdict table."""

    cell: str
    check: str  # "latency pytorch/mobile/fp32" or "accuracy"
    status: str  # pass | regression | improved | skipped | error
    baseline: Optional[float] = None
    fresh: Optional[float] = None
    change: Optional[str] = None
    p_value: Optional[float] = None
    limit: str = ""
    note: str = ""
    detail: dict = field(default_factory=dict)


def _samples(lat: dict, calibrate: bool) -> list[float]:
    if calibrate and lat.get("probe_ms") and len(lat["probe_ms"]) == len(lat["round_ms"]):
        return [m / p for m, p in zip(lat["round_ms"], lat["probe_ms"]) if p > 0]
    return list(lat["round_ms"])


def compare_latency(cell: str, key: str, base: dict, fresh: dict, cs: CheckSettings,
                    calibrate: bool) -> Verdict:
    """Ratio of medians of (probe-normalized) block samples, and a Mann-Whitney test."""
    name = f"latency {key}"
    limit = f"ratio <= {1 + cs.latency_tolerance:.2f} or p >= {cs.alpha:g}"
    for src, lat in (("baseline", base), ("fresh", fresh)):
        if lat.get("error") or lat.get("unavailable"):
            return Verdict(cell, name, "error" if lat.get("error") else "skipped", limit=limit,
                           note=f"{src}: {lat.get('error') or lat.get('unavailable')}")
    if base.get("statistic", "cpu") != fresh.get("statistic", "cpu"):
        return Verdict(cell, name, "error", limit=limit,
                       note=f"the baseline's samples are '{base.get('statistic')}', this check's "
                            f"'{fresh.get('statistic')}'; check with --statistic "
                            f"{base.get('statistic')} or update the baseline")
    use_probe = calibrate and bool(base.get("probe_ms")) and bool(fresh.get("probe_ms"))
    b, f = _samples(base, use_probe), _samples(fresh, use_probe)
    if len(b) < 3 or len(f) < 3:
        return Verdict(cell, name, "error", limit=limit,
                       note=f"too few samples (baseline {len(b)}, fresh {len(f)}; need 3)")
    ratio = statistics.median(f) / statistics.median(b)
    p_slow = mann_whitney_greater(f, b)
    p_fast = mann_whitney_greater(b, f)
    bms, fms = statistics.median(base["round_ms"]), statistics.median(fresh["round_ms"])
    if ratio > 1 + cs.latency_tolerance and p_slow < cs.alpha:
        status, p = "regression", p_slow
    elif ratio < 1 / (1 + cs.latency_tolerance) and p_fast < cs.alpha:
        status, p = "improved", p_fast
    else:
        status, p = "pass", p_slow
    stat = {"cpu": "CPU ms/call", "min": "fastest call", "median": "median call"}.get(
        base.get("statistic", "median"), "median call")
    note = stat + (", probe-normalized" if use_probe else ", not calibrated")
    if status == "pass" and ratio > 1 + cs.latency_tolerance:
        note += f"; slower but not significant (p={p_slow:.3g})"
    return Verdict(cell, name, status, baseline=bms, fresh=fms, change=f"x{ratio:.3f}",
                   p_value=p, limit=limit, note=note,
                   detail={"ratio": ratio, "p_slower": p_slow, "p_faster": p_fast,
                           "rounds": [len(b), len(f)]})


def compare_metric(entry: dict, fresh: Optional[float], cs: CheckSettings,
                   why_missing: str = "") -> Verdict:
    name = f"accuracy ({entry.get('metric_name') or 'metric'})"
    base = entry.get("metric")
    higher = entry.get("higher_is_better", True)
    limit = f"drop <= {cs.accuracy_drop:g}"
    if base is None:
        return Verdict(entry["label"], name, "skipped", limit=limit,
                       note="the baseline has no metric (latency-only baseline)")
    if fresh is None:
        return Verdict(entry["label"], name, "skipped", baseline=base, limit=limit,
                       note=why_missing or "no fresh metric: pass --run RUN or --retrain")
    drop = (base - fresh) if higher else (fresh - base)
    status = "regression" if drop > cs.accuracy_drop + 1e-12 else (
        "improved" if drop < -cs.accuracy_drop else "pass")
    return Verdict(entry["label"], name, status, baseline=base, fresh=fresh,
                   change=f"{-drop if higher else drop:+.4f}", limit=limit)


def exit_code(verdicts: list[Verdict]) -> int:
    """0 when every check holds, 1 on a regression, 2 when a check could not be done."""
    if any(v.status == "error" for v in verdicts):
        return 2
    return 1 if any(v.status == "regression" for v in verdicts) else 0


# -- reports ----------------------------------------------------------------------------------
_HEAD = ["cell", "check", "verdict", "baseline", "fresh", "change", "p", "limit", "note"]


def _row(v: Verdict) -> list:
    fmt = (lambda x: "" if x is None else (f"{x:.4g}"))
    unit = " ms" if v.check.startswith("latency") else ""
    return [v.cell, v.check, v.status.upper() if v.status in ("regression", "error") else v.status,
            fmt(v.baseline) + (unit if v.baseline is not None else ""),
            fmt(v.fresh) + (unit if v.fresh is not None else ""), v.change or "",
            "" if v.p_value is None else f"{v.p_value:.2g}", v.limit, v.note]


def verdict_table(verdicts: list[Verdict]) -> str:
    from tabulate import tabulate
    return tabulate([_row(v) for v in verdicts], headers=_HEAD, tablefmt="simple")


def summary_line(verdicts: list[Verdict]) -> str:
    counts = {s: sum(v.status == s for v in verdicts)
              for s in ("regression", "error", "improved", "pass", "skipped")}
    code = exit_code(verdicts)
    head = {0: "all checks hold", 1: "REGRESSION", 2: "ERROR: some checks could not be done"}[code]
    return head + " (" + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ")"


def markdown_summary(verdicts: list[Verdict], warnings: list[str], baseline_path: str) -> str:
    """A pull-request comment: overall status, warnings, the verdict table."""
    icon = {0: ":white_check_mark:", 1: ":x:", 2: ":warning:"}[exit_code(verdicts)]
    lines = [f"### {icon} transfer-bench check: {summary_line(verdicts)}", "",
             f"Baseline: `{baseline_path}`", ""]
    lines += [f"> **warning:** {w}" for w in warnings]
    if warnings:
        lines.append("")
    lines.append("| " + " | ".join(_HEAD) + " |")
    lines.append("|" + "---|" * len(_HEAD))
    for v in verdicts:
        cells = [str(c).replace("|", "\\|") for c in _row(v)]
        if v.status in ("regression", "error"):
            cells[2] = f"**{cells[2]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "A latency regression needs the ratio of medians above the tolerance AND a "
              "one-sided Mann-Whitney p below alpha, confirmed by two re-measurements."]
    return "\n".join(lines) + "\n"


def junit_xml(verdicts: list[Verdict], warnings: list[str]) -> str:
    """JUnit XML: one testcase per verdict; regressions are failures, errors are errors."""
    suite = ET.Element("testsuite", name="transfer-bench check", tests=str(len(verdicts)),
                       failures=str(sum(v.status == "regression" for v in verdicts)),
                       errors=str(sum(v.status == "error" for v in verdicts)),
                       skipped=str(sum(v.status == "skipped" for v in verdicts)))
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname=v.cell, name=v.check)
        msg = " ".join(f"{h}={c}" for h, c in zip(_HEAD[2:], _row(v)[2:]) if c)
        if v.status == "regression":
            ET.SubElement(case, "failure", message=msg).text = msg
        elif v.status == "error":
            ET.SubElement(case, "error", message=v.note).text = msg
        elif v.status == "skipped":
            ET.SubElement(case, "skipped", message=v.note)
        else:
            ET.SubElement(case, "system-out").text = msg
    if warnings:
        ET.SubElement(suite, "system-err").text = "\n".join(warnings)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def write_reports(verdicts: list[Verdict], warnings: list[str], baseline_path: str,
                  markdown: Optional[Path], junit: Optional[Path]) -> None:
    if markdown:
        atomic_write_text(Path(markdown), markdown_summary(verdicts, warnings, baseline_path))
    if junit:
        atomic_write_text(Path(junit), junit_xml(verdicts, warnings))


# -- building baselines and running checks ----------------------------------------------------
def _data_info(rec: dict) -> dict:
    d = rec.get("data") or {}
    return {k: d[k] for k in ("name", "num_classes", "class_names", "num_keypoints") if k in d}


def _train_cell(plugins: PluginSystem, config: dict,
                progress: Callable[[str], None] = lambda m: None) -> dict:
    """Train and test one cell (no latency: the check measures latency its own way)."""
    from ..run.cell import run_cell
    from ..measure.env import package_versions

    cfg = cell_config({**config, "runtimes": []})
    return run_cell(plugins, cfg, cfg.key(package_versions()), progress=progress)


def entries_from_run(plugins: PluginSystem, run: Path) -> list[dict]:
    """Baseline entries (configuration, data facts, metric) of a run folder's ok cells."""
    from ..run.results import RunStore

    store = RunStore(Path(run))
    try:
        matrix = store.config().get("matrix", {})
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"{run} is not a run folder (config.json: {exc}); give the folder "
                         "that `bench run` printed after 'results:'") from None
    custom = matrix.get("custom_profiles", {})
    entries = []
    for rec in store.records():
        if rec.get("status") != "ok":
            continue
        cfg = rec["config"]
        metric = (rec.get("test_metrics") or {}).get(rec.get("metric_name", ""))
        entries.append(make_entry(cfg, resolved_profiles(plugins, cfg.get("profiles", []), custom),
                                  _data_info(rec), rec.get("metric_name"),
                                  rec.get("higher_is_better", True), metric))
    if not entries:
        raise BenchError(f"run {run} has no finished (ok) cell to take a baseline from")
    return entries


def entries_from_matrix(plugins: PluginSystem, matrix, train: bool = True,
                        progress: Callable[[str], None] = lambda m: None) -> list[dict]:
    """Baseline entries of a matrix: trained for the metric unless ``train`` is False."""
    from ..run.cell import load_data
    from ..run.runner import validate

    cells, _notes = validate(plugins, matrix)
    entries = []
    for cfg in cells:
        conf = cfg.to_dict()
        profiles = resolved_profiles(plugins, cfg.profiles, matrix.custom_profiles)
        if train:
            progress(f"training {cfg.label()}")
            rec = _train_cell(plugins, conf, progress)
            if rec["status"] != "ok":
                raise BenchError(f"cell {cfg.label()} failed while creating the baseline: "
                                 f"{rec.get('error')}")
            metric = rec["test_metrics"].get(rec["metric_name"])
            entries.append(make_entry(conf, profiles, _data_info(rec), rec["metric_name"],
                                      rec["higher_is_better"], metric))
        else:
            info = load_data(plugins, cfg).info
            entries.append(make_entry(conf, profiles, {"name": info.name,
                                                       "num_classes": info.num_classes,
                                                       "num_keypoints": info.num_keypoints}))
    return entries


def attach_latency(plugins: PluginSystem, entries: list[dict], rs: RoundSettings,
                   progress: Callable[[str], None] = lambda m: None) -> list[dict]:
    """Measure and store every entry's latency samples (errors are stored, not hidden)."""
    measured = measure_latency(plugins, entries, rs, progress=progress)
    for e in entries:
        e["latency"] = measured.get(e["id"], {})
    return entries


def fresh_metrics_from_run(run: Path) -> dict:
    """``{cell id: (metric or None, why missing)}`` from a run folder."""
    from ..run.results import RunStore

    store = RunStore(Path(run))
    if not store.cells_dir.is_dir():
        raise BenchError(f"{run} is not a run folder (no cells/ inside); give the folder that "
                         "`bench run` printed after 'results:'")
    out = {}
    for rec in store.records():
        if "config" not in rec:
            continue
        cid = cell_identity(rec["config"])
        if rec.get("status") == "ok":
            out[cid] = ((rec.get("test_metrics") or {}).get(rec.get("metric_name", "")), "")
        else:
            out[cid] = (None, f"the run's cell {rec.get('status')}: {rec.get('error')}")
    return out


def run_check(plugins: PluginSystem, baseline: dict, cs: CheckSettings,
              rs: Optional[RoundSettings] = None, run: Optional[Path] = None,
              retrain: bool = False, latency: bool = True,
              progress: Callable[[str], None] = lambda m: None) -> list[Verdict]:
    """Compare fresh measurements with a baseline; one :class:`Verdict` per cell x check."""
    rs = rs or RoundSettings(**baseline["measure"])
    entries = baseline["cells"]
    n_base = baseline["measure"].get("rounds", rs.rounds)
    if latency and 1 / math.comb(n_base + rs.rounds, rs.rounds) >= cs.alpha:
        raise BenchError(f"{n_base} baseline and {rs.rounds} fresh rounds can never reach "
                         f"p < alpha = {cs.alpha:g} in the Mann-Whitney test; use more "
                         "--rounds (5 and 5 reach 0.004) or a larger --alpha")
    verdicts: list[Verdict] = []
    fresh_metric: dict = {}
    if run is not None:
        fresh_metric = fresh_metrics_from_run(run)
    elif retrain:
        for e in entries:
            if e.get("metric") is None:
                continue
            progress(f"retraining {e['label']}")
            rec = _train_cell(plugins, e["config"], progress)
            fresh_metric[e["id"]] = (
                (rec.get("test_metrics") or {}).get(rec.get("metric_name", "")),
                "" if rec["status"] == "ok" else f"retraining failed: {rec.get('error')}")
    for e in entries:
        if run is None and not retrain:
            verdicts.append(compare_metric(e, None, cs))
            continue
        value, why = fresh_metric.get(e["id"], (None, f"cell not in run {run}"))
        v = compare_metric(e, value, cs, why)
        if why and e.get("metric") is not None:
            v.status = "error"  # asked for a fresh metric and could not get one
        verdicts.append(v)
    if not latency:
        return verdicts
    reps = {(e["id"], lat["runtime"], lat["profile"]): lat["probe_reps"]
            for e in entries for lat in e["latency"].values()
            if lat.get("probe_reps") and "runtime" in lat}
    fresh = measure_latency(plugins, entries, rs, probe_reps=reps, progress=progress)
    lat_verdicts = {}
    for e in entries:
        got = fresh.get(e["id"], {})
        for key, base in sorted(e["latency"].items()):
            lat_verdicts[(e["id"], key)] = compare_latency(
                e["label"], key, base, got.get(key) or got.get("*") or
                {"error": "not measured in this check (runtime or profile gone?)"},
                cs, rs.calibrate)
    # a suspected regression must show again in `confirm` fresh re-measurements
    for attempt in range(cs.confirm):
        suspects = {k for k, v in lat_verdicts.items() if v.status == "regression"}
        if not suspects:
            break
        only = {(cid, key.split("/")[0], key.split("/")[1]) for cid, key in suspects}
        progress(f"confirming {len(suspects)} suspected regression(s)")
        again = measure_latency(plugins, [e for e in entries if e["id"] in {c for c, _ in suspects}],
                                rs, only=only, probe_reps=reps, progress=progress)
        by_id = {e["id"]: e for e in entries}
        for cid, key in suspects:
            first = lat_verdicts[(cid, key)]
            second = compare_latency(first.cell, key, by_id[cid]["latency"][key],
                                     again.get(cid, {}).get(key, {"error": "not re-measured"}),
                                     cs, rs.calibrate)
            history = first.detail.setdefault("confirmations", [])
            history.append(second.detail)
            if second.status != "regression":
                first.status = "pass"
                first.note += (f"; not confirmed on re-measurement {attempt + 1} "
                               f"({second.change}, p={second.p_value if second.p_value is not None else 'n/a'})")
            else:
                first.note += f"; confirmed ({second.change}, p={second.p_value:.2g})"
    verdicts.extend(lat_verdicts.values())
    return verdicts
