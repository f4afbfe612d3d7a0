"""Does `bench check` cry wolf on a noisy machine, and does it catch a real slowdown?

One baseline of a small CNN is measured, then 20 checks of the unchanged code (A/A) and 20
checks with a planted 25% slowdown (a runtime plugin that wraps PyTorch and busy-waits 25%
of each call's time extra) run alternately against it, in this one process, on this machine
as it is (shared, contended). Pass criteria of the issue: at most 1 false alarm in the 20 A/A
checks, at least 19 of 20 planted slowdowns caught.

Usage: python benchmarks/bench_false_alarms.py [--checks 20] [--slowdown 0.25]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict

import torch

from harness import regression as rg
from harness.run.config import MatrixConfig
from harness.api.manager import PluginSystem
from plugins.regression import slowdown_plugin

BACKBONE, IMAGE, RUNTIME = "mobilenetv3_small_100", 64, "pytorch"
PROFILE = {"one_thread": {"batch_size": 1, "threads": 1, "precisions": ["fp32"],
                          "device": "cpu"}}


def entries() -> list[dict]:
    """The cell to check: the architecture only (latency needs no training)."""
    cfg = MatrixConfig(backbones=[BACKBONE], datasets=["synthetic"], strategies=["frozen"],
                       runtimes=[RUNTIME], profiles=list(PROFILE),
                       image_size=IMAGE).cells()[0].to_dict()
    return [rg.make_entry(cfg, PROFILE, {"name": "10 classes", "num_classes": 10})]


def slowed_system(extra: float) -> PluginSystem:
    normal = PluginSystem(entry_points=False)
    provider = normal.runtimes.plugin(RUNTIME)
    system = PluginSystem(entry_points=False, disable=[provider])
    system.register(slowdown_plugin(normal.runtimes.get(RUNTIME), extra), name="planted-slowdown",
                    origin="benchmark")
    system.rebuild()
    return system


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", type=int, default=20)
    ap.add_argument("--slowdown", type=float, default=0.25)
    ap.add_argument("--statistic", default=rg.RoundSettings().statistic, choices=["min", "median", "cpu"])
    ap.add_argument("--no-calibrate", dest="calibrate", action="store_false")
    args = ap.parse_args()
    from harness.measure.allocator import tune
    tune()  # as `bench check` runs (its latency workers apply it too)
    torch.set_num_threads(1)
    normal, slow = PluginSystem(entry_points=False), slowed_system(args.slowdown)
    cs = rg.CheckSettings()
    rs = rg.RoundSettings(statistic=args.statistic, calibrate=args.calibrate)
    t0 = time.perf_counter()
    base = rg.new_baseline(rg.attach_latency(normal, entries(), rs), rs, cs, "benchmark")
    print(f"{BACKBONE} @ {IMAGE}px, {RUNTIME}, 1 thread; {rs.rounds} rounds x {rs.calls} calls, "
          f"probe on; tolerance {cs.latency_tolerance:.0%}, alpha {cs.alpha}, "
          f"confirm {cs.confirm}; baseline "
          f"{statistics.median(base['cells'][0]['latency'][f'{RUNTIME}/one_thread/fp32']['round_ms']):.2f} ms")
    results: dict = {"A/A": [], "planted": []}
    for i in range(args.checks):
        for label, system in (("A/A", normal), ("planted", slow)):
            (v,) = [v for v in rg.run_check(system, base, cs, rs) if v.check.startswith("latency")]
            results[label].append(v)
            print(f"  check {i + 1:2d} {label:7s}: {v.status:10s} {v.change or '':8s} "
                  f"p={v.p_value if v.p_value is None else f'{v.p_value:.2g}'}  {v.note}",
                  flush=True)
    aa = sum(v.status == "regression" for v in results["A/A"])
    caught = sum(v.status == "regression" for v in results["planted"])
    unconfirmed = {k: sum("not confirmed" in v.note for v in vs) for k, vs in results.items()}
    ratio = {k: statistics.median(v.detail["ratio"] for v in vs if "ratio" in v.detail)
             for k, vs in results.items()}
    print(f"\nfalse alarms (A/A, unchanged code): {aa} of {args.checks}  (goal <= 1)")
    print(f"planted {args.slowdown:.0%} slowdown caught:   {caught} of {args.checks}  (goal >= 19)")
    print(f"median measured ratio: A/A x{ratio['A/A']:.3f}, planted x{ratio['planted']:.3f}; "
          f"first-measurement alarms withdrawn by the confirm step: A/A {unconfirmed['A/A']}, "
          f"planted {unconfirmed['planted']}")
    print(f"took {time.perf_counter() - t0:.0f} s; settings {asdict(rs)}")
    return 0 if aa <= 1 and caught >= 19 * args.checks / 20 else 1


if __name__ == "__main__":
    sys.exit(main())
