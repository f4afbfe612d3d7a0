"""Does `bench check --against` cry wolf, and does it catch real slowdowns in every runtime?

Measured the way CI runs the check: every check starts a base worker and a candidate worker
(fresh processes, :mod:`harness.regression.worker`), side by side, and adds paired rounds
until the sequential test decides (:mod:`harness.regression.sequential`), exactly as
``bench check --against REV`` does. The base is this source tree; the candidate is

* ``A/A``: the same code (every check must pass);
* ``wider``: the benchmark CNN with more channels, ``effect`` times the multiply-adds
  (extra work in the model; reaches the candidate's worker as its plugin);
* ``busy``: the runtime busy-waits ``effect - 1`` of each call's process CPU time
  (``plugins.regression.SlowdownPlugin``, any runtime);
* ``option``: a copy of this source tree with one line of the runtime's plugin changed, the
  realistic mistake of a session or compile option turned off (its effect is whatever it
  costs, reported as measured): ONNX Runtime ``ORT_DISABLE_ALL`` instead of
  ``ORT_ENABLE_ALL``; PyTorch with oneDNN (mkldnn) off; OpenVINO compiled without the
  static input shape (dynamic batch); ExecuTorch lowered without the XNNPACK partitioner.

for each runtime installed here (``--runtimes``), at each effect (``--effects``: 1.15, 1.25,
1.5), ``--checks`` times. It prints every check, then per runtime and kind the share of
checks that said "regression" (the false-alarm rate for A/A, the power for planted
slowdowns), the median ratio read, the mean paired rounds and seconds per check, and the
noise of the A/A paired log-ratios with the power the exact operating characteristic
predicts for it at 1.25x.

Goal of issue 28: <= 1/20 A/A false alarms and >= 19/20 caught at 1.25x for every runtime.
Full run (an idle machine; 640 checks, several hours: split it with --runtimes):
  python benchmarks/bench_false_alarms.py --checks 20
Small run (shows it works; noisy on a busy machine):
  python benchmarks/bench_false_alarms.py --checks 2 --effects 1.25
A real sub-millisecond target, as issue 28's ONNX Runtime case (MobileNetV2 at 32 px, the
mobile profile's batch 1 on 2 threads):
  python benchmarks/bench_false_alarms.py --runtimes onnxruntime --backbone mobilenetv2_100 \
      --profile mobile --image-size 32 --checks 20 --effects 1.25 --kinds A/A,busy,option
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fa_plugin for the workers too

import fa_plugin  # noqa: E402

from harness import regression as rg  # noqa: E402
from harness.api.manager import PluginSystem  # noqa: E402
from harness.regression.worker import WAIT_POLICY  # noqa: E402
from harness.run.config import MatrixConfig  # noqa: E402
from harness.run.executor import recipe_for  # noqa: E402
from plugins.regression import slowdown_plugin  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"one_thread": {"batch_size": 1, "threads": 1, "precisions": ["fp32"],
                           "device": "cpu"},
            # the built-in mobile profile's batch and threads (fp32 only here)
            "mobile": {"batch_size": 1, "threads": 2, "precisions": ["fp32"], "device": "cpu"}}
# what is measured: the benchmark's CNN on one thread unless --backbone/--profile say otherwise
TARGET = {"backbone": "fa_cnn", "profile": "one_thread", "image_size": fa_plugin.IMAGE}
RUNTIMES = ("pytorch", "onnxruntime", "openvino", "executorch")
# the one-line mistakes: (file, text, replacement, what it is)
OPTION_OFF = {
    "onnxruntime": ("plugins/runtimes/onnxruntime.py", "GraphOptimizationLevel.ORT_ENABLE_ALL",
                    "GraphOptimizationLevel.ORT_DISABLE_ALL", "graph optimizations off "
                    "(ORT_DISABLE_ALL)"),
    "pytorch": ("plugins/runtimes/pytorch.py", "        with torch.inference_mode():\n"
                "            return model(x)",
                "        with torch.inference_mode(), torch.backends.mkldnn.flags(enabled="
                "False):\n            return model(x)", "oneDNN (mkldnn) off"),
    "openvino": ("plugins/runtimes/openvino.py",
                 "        model.reshape({model.inputs[0].get_any_name(): list(x.shape)})\n", "",
                 "compiled without the static input shape (dynamic batch)"),
    "executorch": ("plugins/runtimes/executorch.py",
                   "to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])",
                   "to_edge_transform_and_lower(ep, partitioner=[])",
                   "lowered without the XNNPACK partitioner (portable kernels)"),
}


def system(runtime: str, width_scale: float = 1.0, busy: float = 0.0) -> PluginSystem:
    """Built-ins plus the benchmark's CNN; ``width_scale``/``busy`` plant a slowdown."""
    s = PluginSystem(entry_points=False)
    if busy:
        provider, slowed = slowdown_plugin(s, runtime, busy)
        s.unregister(provider)
        s.register(slowed, name="planted-busy-wait", origin="benchmark")
    s.register(fa_plugin.FaPlugin(width_scale), name="fa-cnn", origin="benchmark")
    s.rebuild()
    return s


def entries(plugins: PluginSystem, runtime: str) -> list[dict]:
    prof = {TARGET["profile"]: PROFILES[TARGET["profile"]]}
    cfg = MatrixConfig(backbones=[TARGET["backbone"]], datasets=["digits"],
                       strategies=["frozen"], runtimes=[runtime], profiles=list(prof),
                       image_size=TARGET["image_size"]).fill_defaults(plugins).cells()[0]
    return [rg.make_entry(cfg.to_dict(), prof, {"name": "digits", "num_classes": 10})]


def option_tree(runtime: str, into: Path) -> Path:
    """A copy of this tree's code with the runtime's one-line option mistake applied."""
    rel, old, new, _ = OPTION_OFF[runtime]
    tree = into / f"option-{runtime}"
    for part in ("harness", "plugins"):
        shutil.copytree(ROOT / part, tree / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    path = tree / rel
    text = path.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"the planted option change no longer applies: {rel} has "
                         f"{text.count(old)} copies of {old!r}; update OPTION_OFF")
    path.write_text(text.replace(old, new))
    return tree


def plans(runtime: str, effects: list[float], tmp: Path) -> list[tuple]:
    """``(kind, effect, candidate recipe, candidate tree)`` of every check kind."""
    out = [("A/A", 1.0, recipe_for(system(runtime)), None)]
    for e in effects:
        if TARGET["backbone"] == "fa_cnn":  # more channels: the benchmark's own CNN only
            out.append(("wider", e, recipe_for(system(runtime, fa_plugin.width_for(e - 1))),
                        None))
        out.append(("busy", e, recipe_for(system(runtime, busy=e - 1)), None))
    if runtime in OPTION_OFF:
        out.append(("option", None, recipe_for(system(runtime)), option_tree(runtime, tmp)))
    return out


def planted(runtime: str, kind: str, effect) -> str:
    """What a plan planted, in its own unit: the read ratio is measured, not assumed (a
    busy-wait of 25% more CPU time per call reads about x1.4 on sub-millisecond calls: the
    call after it runs slower too)."""
    if kind == "option":
        return OPTION_OFF[runtime][3]
    if kind == "wider":
        return f"x{effect:.2f} multiply-adds"
    if kind == "busy":
        return f"+{effect - 1:.0%} CPU/call"
    return ""


def check(runtime: str, plan: tuple, cs, rs, log) -> dict:
    kind, effect, cand_recipe, cand_tree = plan
    base_sys = system(runtime)
    t0 = time.time()
    vs = rg.run_paired(entries(base_sys, runtime), cs, rs, ROOT, plugins=base_sys,
                       base_recipe=recipe_for(base_sys), cand_recipe=cand_recipe,
                       cand_tree=cand_tree)
    (v,) = [v for v in vs if v.check == f"latency {runtime}/{TARGET['profile']}/fp32"]
    secs = time.time() - t0
    logs = [math.log(r) for r in v.detail.get("ratios", [])]
    what = "" if kind == "option" else planted(runtime, kind, effect)
    log(f"  {runtime:11s} {kind:6s} {what:20s} "
        f"{v.status:10s} {v.change or '':8s} rounds={v.detail.get('rounds', '-')!s:3s} "
        f"p={'-' if v.p_value is None else f'{v.p_value:.2g}'} ({secs:.0f} s) {v.note}")
    return {"status": v.status, "ratio": v.detail.get("ratio"), "logs": logs,
            "rounds": v.detail.get("rounds"), "secs": secs}


def summary(runtime: str, results: dict, cs) -> list[str]:
    lines = []
    rule = cs.sequential()
    for (kind, effect), rs_ in results.items():
        n = len(rs_)
        hit = sum(r["status"] == "regression" for r in rs_)
        other = {s: sum(r["status"] == s for r in rs_) for s in ("undecided", "error")}
        ratios = [r["ratio"] for r in rs_ if r["ratio"] is not None]
        what = "false alarms" if kind == "A/A" else "caught"
        eff = planted(runtime, kind, effect)
        extra = ", ".join(f"{v} {k}" for k, v in other.items() if v)
        lines.append(
            f"RESULT {runtime:11s} {kind:6s} {eff:20s}: {hit}/{n} {what}"
            f"{f' ({extra})' if extra else ''}; ratio read (median) "
            f"x{statistics.median(ratios) if ratios else float('nan'):.3f}; rounds "
            f"{statistics.fmean(r['rounds'] or 0 for r in rs_):.1f}; "
            f"{statistics.fmean(r['secs'] for r in rs_):.0f} s/check")
        if kind == "A/A":
            logs = [d for r in rs_ for d in r["logs"]]
            if len(logs) > 2:
                sigma, bursts = rg.paired_noise(logs)
                pred = rg.predict(rule, sigma, cs.effect, bursts)
                lines.append(f"NOISE  {runtime:11s} A/A paired log-ratio sd {sigma:.3f} "
                             f"(plain sd {statistics.stdev(logs):.3f}), {bursts:.0%} burst "
                             f"rounds, over {len(logs)} rounds: predicted power at "
                             f"x{cs.effect:g} {pred['power']:.3f}, A/A false alarms "
                             f"{pred['false_alarm']:.2g}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", type=int, default=20)
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--effects", default="1.15,1.25,1.5")
    ap.add_argument("--kinds", default="A/A,wider,busy,option")
    ap.add_argument("--calls", type=int, default=rg.RoundSettings().calls)
    ap.add_argument("--max-rounds", type=int, default=rg.CheckSettings().max_rounds)
    ap.add_argument("--noise", type=float, default=rg.CheckSettings().noise)
    ap.add_argument("--processes", type=int, default=rg.CheckSettings().processes,
                    help="worker processes per side (bench check --processes)")
    ap.add_argument("--backbone", default="fa_cnn",
                    help="a registered backbone instead of the benchmark's CNN (e.g. "
                         "mobilenetv2_100: a sub-millisecond ONNX Runtime call at 32 px); "
                         "'wider' plants need fa_cnn and are left out for others")
    ap.add_argument("--profile", default="one_thread", choices=sorted(PROFILES))
    ap.add_argument("--image-size", type=int, default=fa_plugin.IMAGE)
    ap.add_argument("--calibrate", action=argparse.BooleanOptionalAction,
                    default=rg.PAIRED_CALIBRATE,
                    help="normalize rounds by the probe (bench check --against's default: off)")
    args = ap.parse_args()
    TARGET.update(backbone=args.backbone, profile=args.profile, image_size=args.image_size)
    cs = rg.CheckSettings(max_rounds=args.max_rounds, noise=args.noise,
                          processes=args.processes)
    rule = cs.sequential()
    rs = rg.RoundSettings(calls=args.calls, calibrate=args.calibrate)
    effects = [float(e) for e in args.effects.split(",") if e]
    kinds = set(args.kinds.split(","))
    probe_sys = PluginSystem(entry_points=False)
    runtimes = []
    for r in args.runtimes.split(","):
        ok, why = probe_sys.runtimes.get(r).available()
        if ok:
            runtimes.append(r)
        else:
            print(f"skipped {r}: {why}")
    load = os.getloadavg()
    from harness.measure.env import environment
    env = environment()
    print(f"machine: {os.cpu_count()} CPUs ({env.get('cpu', '?')}), load "
          f"average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the start; CNN "
          f"{fa_plugin.describe() if args.backbone == 'fa_cnn' else args.backbone} @ "
          f"{args.image_size}px, profile {args.profile} "
          f"({PROFILES[args.profile]['threads']} thread(s)), fp32; {rs.calls} calls per round"
          f"{', probe-normalized' if rs.calibrate else ''}; workers' OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY', WAIT_POLICY)}; rule: sequential sign test, "
          f"tolerance x{1 + cs.latency_tolerance:.2f}, "
          f"alpha {cs.alpha}, sized for power {cs.power} at x{cs.effect:g} under paired noise "
          f"{cs.noise:g} (p1 {rule.p1:.3f}, beta {rule.beta:.3f}, at most {rule.max_rounds} "
          "rounds); "
          f"{cs.processes} worker process(es) per side; "
          f"{args.checks} checks per runtime, kind and effect", flush=True)
    from harness.regression.counters import instruction_counter
    print(f"instructions: {instruction_counter()[1] or 'counted'}", flush=True)
    t0 = time.time()
    out = []
    with tempfile.TemporaryDirectory(prefix="tb-fa-") as tmp:
        for runtime in runtimes:
            results: dict = {}
            todo = [p for p in plans(runtime, effects, Path(tmp)) if p[0] in kinds]
            for i in range(args.checks):
                for plan in todo:  # interleaved: a slow hour hits every kind alike
                    results.setdefault(plan[:2], []).append(
                        check(runtime, plan, cs, rs, lambda m: print(m, flush=True)))
            out += summary(runtime, results, cs)
    load = os.getloadavg()
    print(f"total {time.time() - t0:.0f} s; load average at the end {load[0]:.1f} / "
          f"{load[1]:.1f} / {load[2]:.1f}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
