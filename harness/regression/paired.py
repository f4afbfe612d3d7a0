"""``bench check --against REV``: base and candidate measured side by side, in the same job.

The base revision's code (``git archive REV``, or a source folder) and the candidate's (the
code running now) each get a fresh worker process (:mod:`harness.regression.worker`); the
driver asks them for one block of every target in turn, alternating which goes first from
round to round (A B, B A, ...), so both see the same machine, the same load and the same
moment. This is asv's ``continuous`` idea; it cancels the variation between processes, days
and machines that a stored baseline cannot.

The verdict is paired: round ``r`` gives the ratio candidate / base of the statistic both
measured in that round; a regression needs the median ratio above ``1 + tolerance`` and a
one-sided Wilcoxon signed-rank test (Wilcoxon 1945, "Individual comparisons by ranking
methods", Biometrics Bull. 1(6)) of the log ratios below ``alpha``, confirmed by ``confirm``
re-measurements. The statistic is the least noisy one both workers have: instructions per
call from hardware counters where the kernel exposes them, else probe-normalized CPU time.
"""
from __future__ import annotations

import math
import statistics
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, Optional

from ..api.archives import safe_extractall
from ..api.errors import BenchError
from .settings import CheckSettings, RoundSettings
from .verdict import Verdict, confirm_regression, latency_status

WORKER = Path("harness") / "regression" / "worker.py"


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


def compare_paired(cell: str, key: str, base: list[dict], cand: list[dict],
                   cs: CheckSettings, calibrate: bool) -> Verdict:
    """The verdict of one target from its paired rounds (``base[r]`` beside ``cand[r]``)."""
    from scipy.stats import wilcoxon

    name = f"latency {key}"
    limit = f"ratio <= {1 + cs.latency_tolerance:.2f} or p >= {cs.alpha:g}"
    for src, got in (("base", base), ("candidate", cand)):
        bad = next((s for s in got if "round_ms" not in s), None)
        if bad is not None:
            status = "skipped" if bad.get("unavailable") else "error"
            return Verdict(cell, name, status, limit=limit,
                           note=f"{src}: {bad.get('error') or bad.get('unavailable')}")
    pairs = list(zip(base, cand))
    counted = all(b.get("instructions") and c.get("instructions") for b, c in pairs)
    ratios, what = [], ""
    for b, c in pairs:
        if not counted:  # instructions of one side only: compare time on both
            b, c = ({**s, "instructions": None} for s in (b, c))
        (bv, what), (cv, _) = _stat(b, calibrate), _stat(c, calibrate)
        ratios.append(cv / bv)
    if len(ratios) < 3:
        return Verdict(cell, name, "error", limit=limit, note=f"too few rounds ({len(ratios)})")
    logs = [math.log(r) for r in ratios]
    ratio = statistics.median(ratios)
    if all(v == 0 for v in logs):  # identical counts every round (instructions can be)
        p_slow = p_fast = 1.0
    else:
        p_slow = float(wilcoxon(logs, alternative="greater").pvalue)
        p_fast = float(wilcoxon(logs, alternative="less").pvalue)
    status, p = latency_status(ratio, p_slow, p_fast, cs)
    note = f"paired with the base in this job, {what}"
    if status == "pass" and ratio > 1 + cs.latency_tolerance:
        note += f"; slower but not significant (p={p_slow:.3g})"
    bms = statistics.median(s["round_ms"] for s in base)
    cms = statistics.median(s["round_ms"] for s in cand)
    return Verdict(cell, name, status, baseline=bms, fresh=cms, change=f"x{ratio:.3f}",
                   p_value=p, limit=limit, note=note,
                   detail={"ratio": ratio, "ratios": ratios, "p_slower": p_slow,
                           "p_faster": p_fast, "statistic": what, "rounds": len(ratios)})


def paired_rounds(base, cand, rs: RoundSettings, only: Optional[list] = None,
                  progress: Callable[[str], None] = lambda m: None) -> dict:
    """``{(cell id, latency key): ([base samples], [candidate samples])}``, round by round.

    ``base`` and ``cand`` are sessions with the same targets; in round ``r`` every target is
    measured by both, the base first in even rounds and the candidate first in odd ones.
    """
    if base.targets != cand.targets:
        raise BenchError("the base and the candidate revision measure different targets "
                         f"({base.targets} against {cand.targets}); a runtime or profile is "
                         "missing on one side")
    idx = [i for i, t in enumerate(base.targets) if only is None or t in only]
    out: dict = {}
    for r in range(rs.rounds):
        for j in range(len(idx)):
            i = idx[(j + r) % len(idx)]
            progress(f"round {r + 1}/{rs.rounds} {'/'.join(base.targets[i][1:])}")
            order = (base, cand) if r % 2 == 0 else (cand, base)
            got = {id(s): s.block(i) for s in order}
            for key in got[id(base)]:
                slot = out.setdefault((base.targets[i][0], key), ([], []))
                slot[0].append(got[id(base)][key])
                slot[1].append(got[id(cand)].get(key, {"error": "not measured by the candidate"}))
    return out


def run_paired(entries: list[dict], cs: CheckSettings, rs: RoundSettings, tree: Path,
               plugins=None, base_recipe=None, cand_recipe=None,
               progress: Callable[[str], None] = lambda m: None) -> list[Verdict]:
    """Measure ``entries`` with the base code (``tree``) and the candidate (this code) side by
    side and return one verdict per target (suspected regressions measured again)."""
    from .worker import WorkerSession

    n_pairs = rs.rounds
    if 1 / 2 ** n_pairs >= cs.alpha:
        raise BenchError(f"{n_pairs} paired rounds can never reach p < alpha = {cs.alpha:g} "
                         "in the Wilcoxon test; use --rounds 7 or more")
    labels = {e["id"]: e["label"] for e in entries}
    progress(f"starting the base worker ({tree}) and the candidate worker")
    with WorkerSession(entries, rs, plugins=plugins, tree=tree, recipe=base_recipe) as base, \
            WorkerSession(entries, rs, plugins=plugins, probe_reps=base.probe_reps,
                          recipe=cand_recipe) as cand:  # the same probe on both sides
        verdicts = {k: compare_paired(labels[k[0]], k[1], b, c, cs, rs.calibrate)
                    for k, (b, c) in paired_rounds(base, cand, rs, progress=progress).items()}
        for attempt in range(cs.confirm):
            suspects = [k for k, v in verdicts.items() if v.status == "regression"]
            if not suspects:
                break
            progress(f"confirming {len(suspects)} suspected regression(s)")
            only = [t for t in base.targets
                    if any(t[0] == cid and key.startswith(f"{t[1]}/{t[2]}/")
                           for cid, key in suspects)]
            again = paired_rounds(base, cand, rs, only=only, progress=progress)
            for k in suspects:
                first = verdicts[k]
                b, c = again.get(k, ([{"error": "not re-measured"}], [{}]))
                second = compare_paired(first.cell, k[1], b, c, cs, rs.calibrate)
                confirm_regression(first, second, attempt)
        static = [Verdict(labels.get(cid, cid), f"latency {key}",
                          "skipped" if v.get("unavailable") else "error",
                          note=v.get("unavailable") or v.get("error", ""))
                  for cid, keys in cand.static.items() for key, v in keys.items()]
        counters = cand.counter or base.counter
    out = static + list(verdicts.values())
    if counters:
        for v in out:
            v.detail.setdefault("counters", counters)
    return out


def paired_check(entries: list[dict], against: str, cs: CheckSettings, rs: RoundSettings,
                 plugins=None, progress: Callable[[str], None] = lambda m: None) -> list[Verdict]:
    """``bench check --against REV``: the base revision's tree in a temporary folder, then
    :func:`run_paired`."""
    with tempfile.TemporaryDirectory(prefix="tb-against-") as tmp:
        tree = base_tree(against, Path(tmp))
        return run_paired(entries, cs, rs, tree, plugins=plugins, progress=progress)


__all__ = ["base_tree", "compare_paired", "paired_rounds", "run_paired", "paired_check"]
