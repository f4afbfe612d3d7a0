"""Does `bench check` cry wolf on a noisy machine, and does it catch a real 25% slowdown?

Measured the way CI uses the check: every measurement runs in a fresh worker process
(:mod:`harness.regression.worker`), as `bench baseline create` and `bench check` do.

* stored mode: one baseline, measured first; then every check, each in its own fresh
  worker, minutes later (the benchmark's own duration; ``--gap-s`` adds a pause before the
  checks), compared with `bench check --baseline`'s rule (Mann-Whitney + confirmation).
* paired mode: every check starts a base worker and a candidate worker side by side and
  interleaves their rounds, as `bench check --against REV` does (Wilcoxon on the paired
  rounds + confirmation).

Per mode: ``--checks`` A/A checks (nothing changed), and as many with each planted 25%
slowdown: ``wider`` (the candidate's CNN has wider layers: ~25% more multiply-adds, more
*work*) and ``busy`` (the PyTorch runtime busy-waits 25% of each call's CPU time). The
planted changes reach the workers as plugins, exactly as code would. Pass criteria of the
issue for paired mode: at most 1 false alarm in 20 A/A checks and at least 19 of 20 planted
slowdowns caught.

Usage: python benchmarks/bench_false_alarms.py [--checks 20] [--modes stored,paired]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fa_plugin for the workers too

import fa_plugin  # noqa: E402

from harness import regression as rg  # noqa: E402
from harness.api.manager import PluginSystem  # noqa: E402
from harness.run.config import MatrixConfig  # noqa: E402
from harness.run.executor import recipe_for  # noqa: E402
from plugins.regression import slowdown_plugin  # noqa: E402

PROFILE = {"one_thread": {"batch_size": 1, "threads": 1, "precisions": ["fp32"],
                          "device": "cpu"}}
KEY = "pytorch/one_thread/fp32"


def system(width_scale: float = 1.0, busy: float = 0.0) -> PluginSystem:
    """Built-ins plus the benchmark's CNN; ``width_scale``/``busy`` plant a slowdown."""
    s = PluginSystem(entry_points=False)
    if busy:
        provider, slowed = slowdown_plugin(s, "pytorch", busy)
        s.unregister(provider)
        s.register(slowed, name="planted-busy-wait", origin="benchmark")
    s.register(fa_plugin.FaPlugin(width_scale), name="fa-cnn", origin="benchmark")
    s.rebuild()
    return s


def entries(plugins: PluginSystem) -> list[dict]:
    cfg = MatrixConfig(backbones=["fa_cnn"], datasets=["synthetic"], strategies=["frozen"],
                       runtimes=["pytorch"], profiles=list(PROFILE),
                       image_size=fa_plugin.IMAGE).fill_defaults(plugins).cells()[0].to_dict()
    return [rg.make_entry(cfg, PROFILE, {"name": "10 classes", "num_classes": 10})]


def _latency(verdicts) -> rg.Verdict:
    (v,) = [v for v in verdicts if v.check == f"latency {KEY}"]
    return v


def run_mode(mode: str, args, cs, rs, systems: dict, log) -> dict:
    base_sys = systems["A/A"]
    ents = entries(base_sys)
    results: dict = {k: [] for k in systems}
    baseline = None
    if mode == "stored":
        t0 = time.time()
        baseline = rg.new_baseline(rg.attach_latency(base_sys, entries(base_sys), rs), rs, cs,
                                   "benchmark")
        log(f"  stored baseline measured in its own worker "
            f"({statistics.median(baseline['cells'][0]['latency'][KEY]['round_ms']):.2f} CPU "
            f"ms/call, {time.time() - t0:.0f} s)")
        if args.gap_s:
            time.sleep(args.gap_s)
    base_recipe = recipe_for(base_sys)
    for i in range(args.checks):
        for label, cand_sys in systems.items():
            t0 = time.time()
            if mode == "stored":
                v = _latency(rg.run_check(cand_sys, baseline, cs, rs))
            else:
                v = _latency(rg.run_paired(ents, cs, rs, args.tree, base_recipe=base_recipe,
                                           cand_recipe=recipe_for(cand_sys)))
            results[label].append(v)
            log(f"  {mode} {i + 1:2d} {label:7s}: {v.status:10s} {v.change or '':8s} "
                f"p={'-' if v.p_value is None else f'{v.p_value:.2g}'} "
                f"({time.time() - t0:.0f} s) {v.note}")
    return results


def summary(mode: str, results: dict) -> list[str]:
    lines = []
    for label, vs in results.items():
        n = len(vs)
        alarms = sum(v.status == "regression" for v in vs)
        errors = sum(v.status == "error" for v in vs)
        ratios = [v.detail["ratio"] for v in vs if "ratio" in v.detail]
        spread = (f"ratio median x{statistics.median(ratios):.3f}, range "
                  f"x{min(ratios):.3f}-x{max(ratios):.3f}" if ratios else "no ratio")
        what = "false alarms" if label == "A/A" else "caught"
        lines.append(f"RESULT {mode:6s} {label:7s}: {alarms}/{n} {what}"
                     f"{f', {errors} errors' if errors else ''}; {spread}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", type=int, default=20)
    ap.add_argument("--modes", default="stored,paired")
    ap.add_argument("--slowdown", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=rg.RoundSettings().rounds)
    ap.add_argument("--calls", type=int, default=rg.RoundSettings().calls)
    ap.add_argument("--gap-s", type=float, default=0.0,
                    help="Pause between the stored baseline and the first check.")
    args = ap.parse_args()
    args.tree = Path(__file__).resolve().parents[1]  # the base: this very code (A/A)
    cs, rs = rg.CheckSettings(), rg.RoundSettings(rounds=args.rounds, calls=args.calls)
    systems = {"A/A": system(), "wider": system(width_scale=fa_plugin.width_for(args.slowdown)),
               "busy": system(busy=args.slowdown)}
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / "
          f"{load[2]:.1f} at the start; CNN {fa_plugin.describe()} @ {fa_plugin.IMAGE}px, "
          f"pytorch, 1 thread; {rs.rounds} rounds x {rs.calls} calls; tolerance "
          f"{cs.latency_tolerance:.0%}, alpha {cs.alpha}, confirm {cs.confirm}; planted: wider "
          f"x{fa_plugin.width_for(args.slowdown):.3f} channels "
          f"({fa_plugin.work_ratio(fa_plugin.width_for(args.slowdown)):.3f}x multiply-adds), "
          f"busy-wait +{args.slowdown:.0%}", flush=True)
    from harness.regression.counters import instruction_counter
    print(f"instructions: {instruction_counter()[1] or 'counted'}", flush=True)
    t0 = time.time()
    out = []
    for mode in args.modes.split(","):
        res = run_mode(mode, args, cs, rs, systems, lambda m: print(m, flush=True))
        out += summary(mode, res)
    load = os.getloadavg()
    print(f"total {time.time() - t0:.0f} s; load average at the end {load[0]:.1f} / "
          f"{load[1]:.1f} / {load[2]:.1f}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
