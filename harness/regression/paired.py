"""``bench check --against REV``: base and candidate measured side by side, in the same job.

The base revision's code (``git archive REV``, or a source folder) and the candidate's (the
code running now, or another source folder) each get fresh worker processes
(:mod:`harness.regression.worker`; ``CheckSettings.processes``, 3 a side by default) that
load every target's model once; the driver asks a base and a candidate process for one block
of every target in turn, alternating which goes first from round to round (A B, B A, ...) and
rotating over every pairing of processes (:func:`pairing`), so both see the same machine, the
same load and the same moment, and no single process's own speed decides. This is
asv's ``continuous`` idea; it cancels the variation between processes, days and machines
that a stored baseline cannot.

The verdict is paired and sequential: round ``r`` gives the log ratio candidate / base of
the statistic both measured in that round, and rounds are added until one test at the stated
alpha decides (:mod:`harness.regression.sequential`: Wald's SPRT on the signs of the log
ratios beyond the tolerance), up to ``max_rounds``. A target whose every precision decided
is measured no more. The statistic is the least noisy one both workers have: instructions per
call from hardware counters where the kernel exposes them, else probe-normalized CPU time of
single calls on the already-created session.
"""
from __future__ import annotations

import math
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections import deque
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..api.archives import safe_extractall
from ..api.errors import BenchError
from ..measure.latency import usable_cpus
from .sequential import SignSPRT, paired_decision, paired_noise, predict
from .settings import CheckSettings, RoundSettings
from .verdict import Verdict

WORKER = Path("harness") / "regression" / "worker.py"

#: Whether a paired check normalizes its rounds by the probe unless told (``--calibrate``).
#: Off: base and candidate are measured side by side, so there is no drift between machines
#: or days for a probe to cancel, and its own noise adds to every round's ratio (idle A/A on
#: a 2-core EPYC, 30-40 paired rounds: sd 0.22-0.35 probe-normalized against 0.09-0.30 raw
#: for ONNX Runtime, 0.149 against 0.129 for PyTorch; docs/ci-check.md).
PAIRED_CALIBRATE = False


def repo_root() -> Path:
    """The git work tree the running ``harness`` comes from."""
    import harness
    here = Path(harness.__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise BenchError(f"--against REV needs the transfer-bench source as a git work tree; "
                         f"{here} is not one (give --against a source folder instead)") from None
    return Path(out.stdout.strip())


def base_tree(against: str, into: Path) -> Path:
    """The base revision's source tree: ``against`` itself when it is a folder, else the
    files of git revision ``against`` extracted into ``into``.

    Raises:
        BenchError: an unknown revision, or one older than the worker protocol.
    """
    path = Path(against)
    if path.is_dir():
        tree = path.resolve()
    else:
        root = repo_root()
        archive = into / "base.tar"
        with open(archive, "wb") as f:
            proc = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", against],
                                  stdout=f, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise BenchError(f"--against {against}: not a revision of {root} "
                             f"({proc.stderr.strip()}); give a commit, branch or tag")
        tree = into / "base"
        with tarfile.open(archive) as tf:
            safe_extractall(tf, tree, archive=f"git archive {against}")
        archive.unlink()
    if not (tree / WORKER).exists():
        raise BenchError(f"--against {against}: {tree} has no {WORKER} (a revision older than "
                         "`bench check --against`); compare against a newer one, or use a "
                         "stored baseline (--baseline)")
    return tree


def _stat(sample: dict, calibrate: bool) -> tuple[Optional[float], str]:
    if sample.get("instructions"):
        return sample["instructions"], "instructions/call"
    v = sample["round_ms"]
    if calibrate and sample.get("probe_ms"):
        return v / sample["probe_ms"], "CPU ms/call, probe-normalized"
    return v, "CPU ms/call" if sample.get("statistic", "cpu") == "cpu" else "ms/call"


def _log_ratios(base: list[dict], cand: list[dict], calibrate: bool) -> tuple[list, str]:
    """The per-round log ratios candidate / base and what they compare (instructions where
    both sides counted them in every round, else time)."""
    counted = all(b.get("instructions") and c.get("instructions") for b, c in zip(base, cand))
    logs, what = [], ""
    for b, c in zip(base, cand):
        if not counted:  # instructions of one side only: compare time on both
            b, c = ({**s, "instructions": None} for s in (b, c))
        (bv, what), (cv, _) = _stat(b, calibrate), _stat(c, calibrate)
        logs.append(math.log(cv / bv))
    return logs, what


def compare_paired(cell: str, key: str, base: list[dict], cand: list[dict],
                   cs: CheckSettings, calibrate: bool) -> Verdict:
    """The verdict of one target from its paired rounds (``base[r]`` beside ``cand[r]``):
    :func:`harness.regression.sequential.paired_decision` with ``cs``'s rule."""
    rule = cs.sequential()
    name = f"latency {key}"
    limit = (f"SPRT: x{1 + cs.latency_tolerance:.2f}, alpha {cs.alpha:g}, "
             f"<= {rule.max_rounds} rounds")
    for src, got in (("base", base), ("candidate", cand)):
        bad = next((s for s in got if "round_ms" not in s), None)
        if bad is not None:
            status = "skipped" if bad.get("unavailable") else "error"
            return Verdict(cell, name, status, limit=limit,
                           note=f"{src}: {bad.get('error') or bad.get('unavailable')}")
    logs, what = _log_ratios(base, cand, calibrate)
    status, slow, fast = paired_decision(logs, rule)
    ratios = [math.exp(v) for v in logs]
    ratio = statistics.median(ratios) if ratios else float("nan")
    n = len(logs)
    above = sum(d > rule.threshold for d in logs)
    note = (f"paired with the base in this job, {what}; {above}/{n} rounds above "
            f"x{1 + cs.latency_tolerance:.2f}")
    if status in ("undecided", "running"):
        status = "undecided"
        note += (f"; undecided after {n} rounds (max {rule.max_rounds}): the change is near "
                 "the tolerance or the rounds too noisy; measure again on a quieter machine or "
                 "give --max-rounds more")
    sigma, bursts = paired_noise(logs) if n >= 3 else (None, 0.0)
    pred = predict(rule, sigma, cs.effect, bursts) if sigma is not None else None
    if pred is not None:
        note += (f"; noise sd {sigma:.3f}" + (f" + {bursts:.0%} burst rounds" if bursts else "")
                 + f" over {n} rounds: predicted power {pred['power']:.3f} at x{cs.effect:g}")
        if pred["power"] < cs.power:
            note += (f" (below the {cs.power:g} goal: the rule is sized for noise {cs.noise:g}"
                     " without bursts; a quieter machine, or --noise "
                     f"{math.ceil(sigma * 100) / 100:g} and more --max-rounds)")
    p = fast.p_value if status == "improved" else slow.p_value
    bms = statistics.median(s["round_ms"] for s in base) if base else None
    cms = statistics.median(s["round_ms"] for s in cand) if cand else None
    return Verdict(cell, name, status, baseline=bms, fresh=cms, change=f"x{ratio:.3f}",
                   p_value=p, limit=limit, note=note,
                   detail={"ratio": ratio, "ratios": ratios, "p_slower": slow.p_value,
                           "p_faster": fast.p_value, "statistic": what, "rounds": n,
                           "sprt": {"slower": slow.decision, "faster": fast.decision,
                                    "llr_slower": slow.llr, "llr_faster": fast.llr},
                           "noise_sd": sigma, "bursts": bursts, "min_effect": cs.effect,
                           "predicted_power": pred and pred["power"],
                           "max_rounds": rule.max_rounds})


def _done(b: list[dict], c: list[dict], rule: SignSPRT, calibrate: bool) -> bool:
    if "round_ms" not in b[-1] or "round_ms" not in c[-1]:
        return True  # an error or a missing key: its verdict says so
    return paired_decision(_log_ratios(b, c, calibrate)[0], rule)[0] != "running"


def pairing(r: int, k: int) -> tuple[int, int]:
    """``(base process, candidate process)`` of round ``r`` with ``k`` processes a side:
    every one of the ``k * k`` pairings once in each ``k * k`` consecutive rounds."""
    return r % k, (r + r // k) % k


def paired_rounds(base, cand, rule: SignSPRT, calibrate: bool,
                  progress: Callable[[str], None] = lambda m: None,
                  seconds: Optional[dict] = None) -> dict:
    """``{(cell id, latency key): ([base samples], [candidate samples])}``, round by round,
    until every key's sequential test decided or ``rule.max_rounds`` rounds.

    ``base`` and ``cand`` are sessions with the same targets, or lists of ``k`` such
    sessions each (worker processes of one side): round ``r`` uses the pair
    :func:`pairing` gives, so a process that runs slower or faster than its twin for
    reasons of its own (its memory layout, its threads' placement) moves only its share of
    the rounds. In round ``r`` every target with an undecided key is measured by both (only
    its undecided keys), the base first in even rounds and the candidate first in odd ones.
    ``seconds``, when given, receives ``{target index: [wall seconds of each of its paired
    rounds]}``.
    """
    bases = list(base) if isinstance(base, (list, tuple)) else [base]
    cands = list(cand) if isinstance(cand, (list, tuple)) else [cand]
    if len(bases) != len(cands) or not bases:
        raise ValueError("paired rounds need as many base as candidate processes")
    base, cand = bases[0], cands[0]
    for s in bases + cands:
        if s.targets != base.targets:
            raise BenchError("the base and the candidate revision measure different targets "
                             f"({base.targets} against {s.targets}); a runtime or profile "
                             "is missing on one side")
    pending = {i: [k for k in cand.keys[i] if all(k in s.keys[i] for s in bases + cands)]
               for i in range(len(base.targets))}
    out: dict = {}
    for r in range(rule.max_rounds):
        bi, ci = pairing(r, len(bases))
        base, cand = bases[bi], cands[ci]
        active = [i for i in sorted(pending) if pending[i]]
        if not active:
            break
        for j in range(len(active)):
            i = active[(j + r) % len(active)]
            keys = pending[i]
            progress(f"round {r + 1} (at most {rule.max_rounds}) "
                     f"{'/'.join(base.targets[i][1:])}: {len(keys)} undecided")
            order = (base, cand) if r % 2 == 0 else (cand, base)
            t0 = time.perf_counter()
            got = {id(s): s.block(i, keys) for s in order}
            if seconds is not None:
                seconds.setdefault(i, []).append(time.perf_counter() - t0)
            for key in list(keys):
                slot = out.setdefault((base.targets[i][0], key), ([], []))
                slot[0].append(got[id(base)].get(key, {"error": "not measured by the base"}))
                slot[1].append(got[id(cand)].get(key, {"error": "not measured by the "
                                                               "candidate"}))
                if _done(slot[0], slot[1], rule, calibrate):
                    keys.remove(key)
    return out


def _static_verdicts(labels: dict, base, cand) -> list[Verdict]:
    """Verdicts of what a side could not measure: the candidate's reasons first (its
    unavailable runtime is skipped, its failure an error); what only the base could not
    measure is skipped, saying so."""
    out = []
    for cid in sorted(set(base.static) | set(cand.static)):
        mine, theirs = cand.static.get(cid, {}), base.static.get(cid, {})
        for key in sorted(set(mine) | set(theirs)):
            label = labels.get(cid, cid)
            if key in mine:
                v = mine[key]
                out.append(Verdict(label, f"latency {key}",
                                   "skipped" if v.get("unavailable") else "error",
                                   note=v.get("unavailable") or v.get("error", "")))
            else:
                v = theirs[key]
                out.append(Verdict(label, f"latency {key}", "skipped",
                                   note="the base revision cannot measure it: " +
                                        (v.get("unavailable") or v.get("error", ""))))
    return out


def start_workers(makers: list[Callable], at_once: int, started: Sequence = ()) -> list:
    """Start a worker with each of ``makers`` (``WorkerSession(..., wait=False)``), with at
    most ``at_once`` of them setting up at the same time (their set-up is CPU work: imports,
    export, conversion, compilation), and return ``started`` and them, all ready, in order.
    Set-up is not measured, so workers setting up side by side change no figure; a check of
    3 processes a side on 2 cores starts in about half the time of one after another."""
    out = list(started)
    setting_up = deque(out)  # ready() of a ready worker returns at once
    for make in makers:
        while len(setting_up) >= max(1, at_once):
            setting_up.popleft().ready()
        out.append(make())
        setting_up.append(out[-1])
    for w in setting_up:
        w.ready()
    return out


def run_paired(entries: list[dict], cs: CheckSettings, rs: RoundSettings, tree: Path,
               plugins=None, base_recipe=None, cand_recipe=None,
               progress: Callable[[str], None] = lambda m: None,
               cand_tree: Optional[Path] = None) -> list[Verdict]:
    """Measure ``entries`` with the base code (``tree``) and the candidate (this code, or
    ``cand_tree``) side by side, adding paired rounds until ``cs``'s sequential test decides
    (at most ``cs.max_rounds``; ``rs.rounds`` is the stored mode's and not used here), and
    return one verdict per target and precision. Both workers calibrate int8 conversions on
    the same images (:mod:`harness.regression.calibration`)."""
    from .calibration import calibration_files
    from .worker import WorkerSession

    rule = cs.sequential()
    labels = {e["id"]: e["label"] for e in entries}
    k, at_once = cs.processes, usable_cpus()
    progress(f"starting {k} base worker(s) ({tree}) and {k} candidate worker(s), "
             f"{min(at_once, 2 * k)} at a time")
    t0 = time.perf_counter()
    seconds: dict = {}
    with tempfile.TemporaryDirectory(prefix="tb-calib-") as tmp, ExitStack() as stack:
        if plugins is None:  # recipes only: the cells' data come from the default plugins
            from ..api.manager import get_plugins
            plugins_for_data = get_plugins()
        else:
            plugins_for_data = plugins
        calib = calibration_files(plugins_for_data, entries, Path(tmp))

        def worker(side: str, reps: Optional[dict]) -> WorkerSession:
            tree_, recipe = (tree, base_recipe) if side == "base" else (cand_tree, cand_recipe)
            return stack.enter_context(WorkerSession(
                entries, rs, plugins=plugins, tree=tree_, recipe=recipe, probe_reps=reps,
                calibration=calib, wait=False))

        first = worker("base", None)
        # the first base sizes the probe and every other process takes it; without the probe
        # (the paired default) there is nothing to wait for
        reps = first.ready().probe_reps if rs.calibrate else None
        workers = start_workers([lambda s=side: worker(s, reps)
                                 for side in ["cand"] + ["base", "cand"] * (k - 1)],
                                at_once=at_once, started=[first])
        bases, cands = workers[0::2], workers[1::2]
        base, cand = bases[0], cands[0]
        startup = time.perf_counter() - t0
        rounds = paired_rounds(bases, cands, rule, rs.calibrate, progress=progress,
                               seconds=seconds)
        verdicts = [compare_paired(labels[cid], key, b, c, cs, rs.calibrate)
                    for (cid, key), (b, c) in rounds.items()]
        static = _static_verdicts(labels, base, cand)
        counters = cand.counter or base.counter
    out = static + verdicts
    timing = {"startup_s": startup, "total_s": time.perf_counter() - t0,
              "max_rounds": rule.max_rounds, "processes": k,
              "round_s": {f"{labels[base.targets[i][0]]} {'/'.join(base.targets[i][1:])}":
                          sum(v) / len(v) for i, v in seconds.items() if v}}
    # the worst case: every target undecided until the last round
    timing["worst_case_s"] = startup + rule.max_rounds * sum(timing["round_s"].values())
    for v in out:
        v.detail["timing"] = timing
        if counters:
            v.detail.setdefault("counters", counters)
    return out


def paired_check(entries: list[dict], against: str, cs: CheckSettings, rs: RoundSettings,
                 plugins=None, progress: Callable[[str], None] = lambda m: None) -> list[Verdict]:
    """``bench check --against REV``: the base revision's tree in a temporary folder, then
    :func:`run_paired`."""
    with tempfile.TemporaryDirectory(prefix="tb-against-") as tmp:
        tree = base_tree(against, Path(tmp))
        return run_paired(entries, cs, rs, tree, plugins=plugins, progress=progress)


__all__ = ["PAIRED_CALIBRATE", "base_tree", "compare_paired", "pairing", "paired_rounds",
           "run_paired", "paired_check", "start_workers"]
