"""Soak test of issue 20: kill -9 ``bench run --jobs 2`` at random moments, then resume.

Runs a tiny 12-cell matrix (the test plugin tests/robust_plugin.py: a small CNN on a
synthetic 4-class problem, latency measured in isolated workers), kills the driver with
SIGKILL a random 0..MAX_WAIT s (default 30) after a cell started training, KILLS times,
then lets a last run finish. Every kill lands in work: when a run finishes its matrix before
its kill, that folder is verified (below) and the next runs start a new one. After each
kill it checks that no process of the run survives (workers die with their parent) and that
every JSON file of the run folder parses; at the end that every cell is ``ok`` exactly
once in cells/ and in results.json (the two agree), that no process is left and that no
``tb-cell-*`` temporary folder is left. Prints the figures; exits 1 if any check failed.

Run: ``PYTHONPATH=$PWD python scripts/soak_kill9.py --kills 12 [--seed 0]``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import robust_plugin  # noqa: E402

TAG = "TB_SOAK_TAG"


def tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries ``TAG=tag`` (the run and all its workers)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"{TAG}={tag}".encode() in env.split(b"\0") and state != "Z":
            out.append(int(d.name))
    return out


def json_problems(run: Path) -> list[str]:
    bad = []
    for p in run.rglob("*.json"):
        try:
            json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            bad.append(f"{p}: {exc}")
    return bad


def folder_problems(runs: Path, tmp: Path, tag: str) -> tuple[list[str], list[str]]:
    """What is wrong with a finished run folder: (failures, statuses of its cells)."""
    run = next(runs.glob("*"))
    cells = {p.stem: json.loads(p.read_text()) for p in (run / "cells").glob("*.json")}
    results = json.loads((run / "results.json").read_text())
    statuses = sorted(r["status"] for r in cells.values())
    agree = {r["key"]: r["status"] for r in results} == {k: r["status"] for k, r in
                                                          cells.items()}
    failures = [what for what, ok in (
        ("12 cells, every one ok once", statuses == ["ok"] * 12 and len(results) == 12),
        ("results.json agrees with cells/", agree),
        ("no process left", not tagged_pids(tag)),
        ("no tb-cell-* folder left", not list(tmp.glob("tb-cell-*"))),
        ("no corrupt JSON", not json_problems(run))) if not ok]
    return failures, statuses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-wait", type=float, default=30.0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="tb-soak-"))
    tmp = work / "tmp"
    tmp.mkdir()
    tag = work.name
    mfile = robust_plugin.write_matrix(
        work / "m.toml", strategies=('"slow,sleep_s=0.5"', '"slow,sleep_s=1"', '"slow"'),
        runtimes=('"pytorch"',), seeds=4)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp), TAG: tag,
           "ROBUST_LOG": str(work / "trained.log")}
    log = work / "trained.log"
    failures, orphans_seen, corrupt_seen, rounds_done, starts = [], 0, 0, 0, 0
    t0 = time.monotonic()
    kills = 0

    def command(round_no: int) -> list[str]:
        return [sys.executable, str(ROOT / "tests" / "robust_plugin.py"), "run", "-m",
                str(mfile), "--out", str(work / f"runs-{round_no}"), "--jobs", "2", "-q"]

    while kills < args.kills:
        starts += 1
        runs = work / f"runs-{rounds_done}"
        p = subprocess.Popen(command(rounds_done), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        # kill at a random moment after a cell started training (so kills land in training,
        # latency measurement and record writing, not only in start-up)
        before = len(log.read_text().splitlines()) if log.exists() else 0
        while p.poll() is None and (len(log.read_text().splitlines()) if log.exists()
                                    else 0) <= before:
            time.sleep(0.1)
        wait = rng.uniform(0.0, args.max_wait)
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
        deadline = time.monotonic() + 15
        while tagged_pids(tag) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = tagged_pids(tag)
        if left:
            orphans_seen += len(left)
            failures.append(f"kill {kills}: processes left running 15 s later: {left}")
            for pid in left:
                os.kill(pid, signal.SIGKILL)
        for run in runs.glob("*"):
            bad = json_problems(run)
            corrupt_seen += len(bad)
            failures += [f"kill {kills}: {b}" for b in bad]
        if p.returncode is not None and p.returncode >= 0:  # the run ended before its kill
            if p.returncode != 0:
                failures.append(f"run {starts} exited with code {p.returncode}")
            bad, _ = folder_problems(runs, tmp, tag)
            failures += [f"round {rounds_done + 1} (finished after kills): {b}: FAILED"
                         for b in bad]
            rounds_done += 1  # verified; the next kills land in a new run folder
            print(f"run {starts}: the matrix finished before its kill; round {rounds_done} "
                  f"verified ({'ok' if not bad else 'FAILED: ' + '; '.join(bad)}); next round "
                  f"in a new run folder", flush=True)
            continue
        done = 0
        for run in runs.glob("*"):
            done = sum(1 for c in (run / "cells").glob("*.json")
                       if json.loads(c.read_text()).get("status") == "ok")
        print(f"kill {kills}/{args.kills} {wait:.1f} s after a cell started training: "
              f"{done}/12 cells ok, "
              f"{len(list(tmp.glob('tb-cell-*')))} tb-cell folder(s) waiting for the sweep",
              flush=True)
    final = subprocess.run(command(rounds_done), env=env, capture_output=True, text=True,
                           timeout=1800)
    runs = work / f"runs-{rounds_done}"
    if final.returncode != 0 or not list(runs.glob("*")):
        print(f"the final run failed (rc {final.returncode}):\n{final.stderr[-3000:]}")
        return 1
    bad, statuses = folder_problems(runs, tmp, tag)
    failures += [f"final: {b}: FAILED" for b in bad]
    trained = log.read_text().splitlines()
    print(f"\n{kills} kill -9 of bench run --jobs 2 in {starts} starts ({rounds_done} round(s) "
          f"of the 12-cell matrix finished between kills and were verified, each in its own "
          f"run folder), then a resume, in {time.monotonic() - t0:.0f} s:")
    print(f"  final folder: cells ok {statuses.count('ok')}/12, every check "
          f"{'passed' if not bad else 'FAILED: ' + '; '.join(bad)}")
    print(f"  trainings started in all: {len(trained)} ({12 * (rounds_done + 1)} cells; killed "
          f"ones ran again)")
    print(f"  processes left 15 s after a kill: {orphans_seen}; corrupt JSON files seen: "
          f"{corrupt_seen}; tb-cell folders left at the end: "
          f"{len(list(tmp.glob('tb-cell-*')))}")
    print(f"  final run rc {final.returncode}; work folder {work}")
    for f in failures:
        print("  FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
