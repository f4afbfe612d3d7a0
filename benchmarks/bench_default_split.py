"""Where a default ``bench run``'s time goes: pretraining, training, export, quantization,
latency; before and after sharing latency timings and the layout autotune.

Each variant is a real ``bench run --preset default`` in a fresh process with a cold cache
(its own empty ``TRANSFER_BENCH_CACHE``: datasets decoded, source weights pretrained,
nothing measured yet), as ``make run`` on a fresh clone:

* ``before``: ``[latency] reuse_timing = false`` and ``--layout contiguous``: every cell
  times its own latency rows and trains contiguous fp32, the code path of the harness
  before timings were shared and layouts probed;
* ``after``: the defaults (timings measured once per architecture x runtime x precision x
  profile and shared; the layout probed per model);
* ``base`` (with ``--base-tree DIR``): the defaults run by the code in DIR (a checkout of an
  earlier commit: ``git worktree add --detach DIR COMMIT``), so a change to the default
  path is measured against the code before it, in the same session, alternating.

The split comes from the cells' own timers (``timers`` in each cell record,
:func:`harness.run.cell.timed`): ``pretraining`` is the weight loading of the cells that
pretrained their ``source:`` weights, ``quantization`` the ``quantize_s`` of every int8
conversion made (inside the runtime workers), ``latency`` the rest of the latency stage
(worker start-up, session creation, timing, scoring the test images), ``export`` the ONNX
export and its parity check, ``other`` the wall time of ``bench run`` not in a cell timer
(start-up, data, model building, evaluation, the report). Variants alternate over
``--rounds``; a ratio under load is worth less than one on an idle machine, so the load
average is printed before and after.

It also checks what must not change: each cell's test metric in both variants (they may
differ only at float-rounding level where the probe picked channels-last) and each latency
figure (after / before p50 per architecture, runtime, profile and precision: noise only).

Usage:
    python benchmarks/bench_default_split.py                    # the full default (idle machine)
    python benchmarks/bench_default_split.py --reduced --rounds 1 --publish results/
    python benchmarks/bench_default_split.py -- --epochs 2       # extra `bench run` options
    python benchmarks/bench_default_split.py --reduced --base-tree /tmp/old --only after
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

#: what --reduced passes to ``bench run`` (a shared 2-core machine cannot run the default
#: twice per round in reasonable time): fewer epochs, smaller images, shorter pretraining
REDUCED = ["--epochs", "1", "--image-size", "32", "-p", "mobile",
           "-w", "resnet18=source:digits,epochs=1,image_size=32"]
PHASES = ("pretraining", "training", "autotune", "export", "quantization", "latency", "test",
          "other")


def _matrix_file(folder: Path, reuse: bool, latency: dict) -> Path:
    """The default preset as a matrix file, with ``[latency] reuse_timing`` and the
    ``--latency`` settings (the same for both variants) set."""
    import yaml

    from harness.api.manager import get_plugins
    m = dict(get_plugins().presets.get("default").resolve())
    m["latency"] = {**m.get("latency", {}), **latency, "reuse_timing": reuse}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"default-reuse-{str(reuse).lower()}.yaml"
    path.write_text(yaml.safe_dump(m))
    return path


def run_variant(name: str, folder: Path, extra: list, latency: dict,
                tree: Optional[str] = None) -> dict:
    """One cold ``bench run`` (by the code in ``tree``, else this checkout's); its wall
    time and the records of its cells."""
    cache, out = folder / f"cache-{name}", folder / f"runs-{name}"
    before = name == "before"
    args = [sys.executable, "-m", "harness.cli", "run", "-m",
            str(_matrix_file(folder, not before, latency)), "--name", f"split-{name}",
            "--out", str(out), "-q", *(["--layout", "contiguous"] if before else []), *extra]
    env = {**os.environ, "TRANSFER_BENCH_CACHE": str(cache)}
    root = Path(tree).resolve() if tree else Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in env.get(
        "PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != Path.cwd()])
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, cwd=root)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name}: bench run exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    recs = [json.loads(p.read_text()) for p in sorted(out.glob("*/cells/*.json"))]
    failed = [r for r in recs if r.get("status") != "ok"]
    if failed:
        raise SystemExit(f"{name}: {len(failed)} cell(s) failed: {failed[0].get('error')}")
    return {"wall": wall, "records": recs, "command": " ".join(args[1:])}


def split(run: dict) -> dict:
    """Seconds per phase of one run (see the module docstring)."""
    out = dict.fromkeys(PHASES, 0.0)
    for r in run["records"]:
        t = r.get("timers", {})
        w = r.get("weights") or {}
        if w.get("source_dataset") and w.get("cached") is False:
            out["pretraining"] += t.get("weights_s", 0.0)
        out["training"] += t.get("train_s", 0.0)
        out["autotune"] += t.get("autotune_s", 0.0)
        out["export"] += t.get("export_s", 0.0)
        out["test"] += t.get("test_s", 0.0)
        quant = sum(row.get("quantize_s") or 0.0 for row in r.get("latency", [])
                    if not row.get("reused"))
        out["quantization"] += quant
        out["latency"] += t.get("latency_stage_s", 0.0) - t.get("export_s", 0.0) - quant
    out["other"] = run["wall"] - sum(out.values())
    return out


def workers(run: dict) -> dict:
    """The latency workers of one run (rows' ``worker``, one per worker run): how many,
    seconds from launch to the runtime's measure and after it (start-up, exit), and inside
    it (the runtime's imports, conversions, compilation, timing and test outputs)."""
    seen: dict = {}
    for r in run["records"]:
        for row in r.get("latency", []):
            w = row.get("worker")
            if w:
                seen[(r["key"], w["job"])] = w
    return {"runs": len(seen),
            "start_exit_s": sum(w.get("start_s", 0) + w.get("end_s", 0) for w in seen.values()),
            "in_runtime_s": sum(w.get("measure_s", 0) for w in seen.values()),
            "wall_s": sum(w["wall_s"] for w in seen.values())}


def _cell_id(r: dict) -> tuple:
    c = r["config"]
    return c["backbone"], c["strategy"], c["seed"]


def metrics(run: dict) -> dict:
    return {_cell_id(r): (r["test_metrics"] or {}).get(r["metric_name"]) for r in run["records"]}


def latencies(run: dict) -> dict:
    """Median over a backbone's cells of each row's p50 (ms)."""
    out: dict = {}
    for r in run["records"]:
        for row in r.get("latency", []):
            if "stats" in row:
                k = (r["config"]["backbone"], row["runtime"], row["profile"], row["precision"])
                out.setdefault(k, []).append(row["stats"]["p50_ms"])
    return {k: statistics.median(v) for k, v in out.items()}


def sharing(run: dict) -> str:
    """Per cell (in run order), its latency rows timed here / shared / neither, and how many
    of them are noisy: where sharing stops and why."""
    out = []
    for r in sorted(run["records"], key=lambda r: r.get("started", 0)):
        rows = r.get("latency", [])
        n = {k: sum(row.get("latency_measured") == k for row in rows) for k in ("here", "shared")}
        none = len(rows) - n["here"] - n["shared"]
        noisy = sum(bool(((row.get("stats") or {}).get("noise") or {}).get("noisy"))
                    for row in rows)
        out.append(f"{r['config']['backbone']}/{r['config']['strategy']} {n['here']}/"
                   f"{n['shared']}/{none} ({noisy} noisy)")
    return "; ".join(out)


def report(runs: dict, extra: list, load: tuple) -> str:
    from harness.measure.env import cpu_flags, cpu_model
    lines = [f"machine: {cpu_model()} ({', '.join(cpu_flags())}), {os.cpu_count()} CPUs; "
             f"load average before {load[0]}, after {load[1]}",
             f"bench run options: {' '.join(extra) or '(none: the full default)'}", "",
             "| phase | " + " | ".join(f"{v} s (round {i + 1})" for v in runs
                                        for i in range(len(runs[v]))) + " |",
             "|---|" + "---|" * sum(len(v) for v in runs.values())]
    splits = {v: [split(r) for r in rs] for v, rs in runs.items()}
    for ph in PHASES + ("total",):
        cells = [f"{sum(s.values()) if ph == 'total' else s[ph]:.1f}"
                 for v in runs for s in splits[v]]
        lines.append(f"| {ph} | " + " | ".join(cells) + " |")
    lines += ["", "latency workers (first round): runs, start-up + exit s, inside the runtime "
                  "s (imports, conversion, compilation, timing, test outputs), all s"]
    for v, rs in runs.items():
        w = workers(rs[0])
        lines.append(f"- {v}: " + (f"{w['runs']} runs, {w['start_exit_s']:.1f} s, "
                                   f"{w['in_runtime_s']:.1f} s, {w['wall_s']:.1f} s"
                                   if w["runs"] else "not recorded by this code"))
    lines += ["", "latency rows per cell, timed here / shared / neither (first round):"]
    lines += [f"- {v}: {sharing(rs[0])}" for v, rs in runs.items()]
    ref = next((v for v in ("base", "before") if v in runs), None)
    if ref and "after" in runs:
        b = statistics.median(r["wall"] for r in runs[ref])
        a = statistics.median(r["wall"] for r in runs["after"])
        lines += ["", f"wall time, median over rounds: {ref} {b:.1f} s, after {a:.1f} s "
                      f"(after/{ref} {a / b:.2f})"]
        mb, ma = metrics(runs[ref][0]), metrics(runs["after"][0])
        same = sum(ma.get(k) == m for k, m in mb.items())
        lines += ["", f"test metrics identical in {same} of {len(mb)} cells",
                  "", f"| cell | test metric {ref} | after |", "|---|---|---|"]
        lines += [f"| {' / '.join(map(str, k))} | {mb[k]:.4f} | {ma.get(k, float('nan')):.4f} |"
                  for k in sorted(mb)]
        lb, la = latencies(runs[ref][0]), latencies(runs["after"][0])
        ratios = sorted(la[k] / lb[k] for k in lb if k in la and lb[k] > 0)
        if ratios:
            lines += ["", f"latency p50 after/{ref} over {len(ratios)} (backbone, runtime, "
                          f"profile, precision) rows: median {statistics.median(ratios):.2f}, "
                          f"range {ratios[0]:.2f}-{ratios[-1]:.2f}"]
        tuned = sorted({(r["config"]["backbone"], (r.get("autotune") or {}).get("chosen_name"),
                         (r.get("autotune") or {}).get("why"))
                        for r in runs["after"][0]["records"]})
        lines += ["", "autotune choices (after): " + "; ".join(f"{b}: {c} ({w})"
                                                             for b, c, w in tuned)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1, help="before/after pairs, alternated")
    ap.add_argument("--reduced", action="store_true",
                    help=f"add {' '.join(REDUCED)} (a shared or slow machine)")
    ap.add_argument("--only", choices=("before", "after", "base"),
                    help="run one variant (besides base, with --base-tree; base: only that)")
    ap.add_argument("--base-tree", metavar="DIR",
                    help="also run the defaults with the code in DIR (variant 'base': a "
                         "checkout of the commit before a change), alternating with the others")
    ap.add_argument("--publish", metavar="FOLDER", help="write the report and raw data there")
    ap.add_argument("--latency", action="append", default=[], metavar="KEY=VALUE",
                    help="a [latency] setting for both variants (e.g. max_load_per_cpu=100 on "
                         "a shared machine, where every measurement fails the stability "
                         "criterion and none would be shared)")
    ap.add_argument("--keep", metavar="FOLDER",
                    help="copy each run's folder (its cell records) there before the cold "
                         "caches are removed")
    ap.add_argument("extra", nargs="*", help="more `bench run` options (after --)")
    a = ap.parse_args()
    extra = (REDUCED if a.reduced else []) + list(a.extra)
    from harness.run.config import parse_value
    latency = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in a.latency)}
    if a.only == "base" and not a.base_tree:
        ap.error("--only base needs --base-tree DIR (the code to run as 'base')")
    variants = ([a.only] if a.only else ["before", "after"])
    if a.base_tree and "base" not in variants:
        variants = ["base"] + variants
    load0 = os.getloadavg()
    runs: dict = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="bench-split-") as tmp:
        for i in range(a.rounds):
            for v in variants:
                print(f"round {i + 1}: {v} ...", file=sys.stderr, flush=True)
                runs[v].append(run_variant(v, Path(tmp, f"{v}-{i}"), extra, latency,
                                           a.base_tree if v == "base" else None))
                if a.keep:
                    shutil.copytree(Path(tmp, f"{v}-{i}", f"runs-{v}"),
                                    Path(a.keep, f"{v}-{i}"), dirs_exist_ok=True)
    text = report(runs, extra + [f"[latency] {k} = {v}" for k, v in latency.items()],
                  (load0, os.getloadavg()))
    print(text)
    if a.publish:
        from harness.measure.env import cpu_model, cpu_slug
        import torch
        tag = "reduced" if a.reduced else "full"
        stem = (f"bench_default_split-{tag}-cpu{os.cpu_count()}-{cpu_slug(cpu_model())}-"
                f"torch{torch.__version__.split('+')[0]}")
        folder = Path(a.publish)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.md").write_text(f"# {stem}\n\n```\npython benchmarks/"
                                           f"bench_default_split.py {' '.join(sys.argv[1:])}\n"
                                           f"```\n\n{text}\n")
        raw = {v: [{"wall": r["wall"], "command": r["command"], "split": split(r),
                    "metrics": {" / ".join(map(str, k)): m for k, m in metrics(r).items()}}
                   for r in rs] for v, rs in runs.items()}
        (folder / f"{stem}.json").write_text(json.dumps(raw, indent=1))
        print(f"published {folder / stem}.md and .json", file=sys.stderr)


if __name__ == "__main__":
    main()
