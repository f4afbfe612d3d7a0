"""Latency workers forked from a warm zygote against workers started from scratch, side by side.

``bench run`` measures every (cell, runtime, profile) in a fresh worker process. Started
from scratch (``[latency] warm_workers = false``) each worker imports torch and the model's
modules again, seconds per worker; forked from a warm zygote (the default,
``harness/measure/zygote.py``) it inherits them. This benchmark runs the same jobs both
ways, alternating spawn and fork in every round (so drift hits both), on one model, and
prints per runtime and profile the median worker wall time of each launch and their
ratio, and the median latency p50 of each and their ratio: the warm start must save time
without changing what is measured.

    python benchmarks/bench_warm_workers.py --rounds 8
    python benchmarks/bench_warm_workers.py --rounds 8 --backbone resnet18 --publish results/
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = dict(warmup_count=10, warmup_s=0.2, min_count=30, min_s=0.5)


def _artifacts(backbone: str, size: int, folder: Path):
    import numpy as np
    import timm
    import torch

    from harness.measure.export import export_onnx
    from harness.run.cell import Artifacts
    torch.manual_seed(0)
    model = timm.create_model(backbone, pretrained=False, num_classes=10).eval()
    rng = np.random.default_rng(1)
    art = Artifacts(model=model, image_size=size, workdir=folder,
                    calibration=rng.random((32, 3, size, size), dtype=np.float32),
                    test_images=rng.random((64, 3, size, size), dtype=np.float32))
    art.onnx_path = export_onnx(model, size, folder / "model.onnx")
    return art


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--backbone", default="mobilenetv2_100")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--runtimes", default="pytorch,onnxruntime,openvino")
    ap.add_argument("--profiles", default="mobile,server")
    ap.add_argument("--publish", metavar="FOLDER")
    args = ap.parse_args()
    if args.rounds < 1:
        sys.exit("--rounds must be >= 1")

    from harness.api.manager import PluginSystem
    from harness.measure.env import cpu_flags, cpu_model, package_versions
    from harness.measure.isolate import measure_in_worker
    from harness.measure.latency import MeasureSettings
    from harness.measure import zygote

    plugins = PluginSystem(entry_points=False)
    runtimes = []
    for name in args.runtimes.split(","):
        ok, why = plugins.runtimes.get(name).available()
        if ok:
            runtimes.append(plugins.runtimes.get(name))
        else:
            print(f"{name}: unavailable, not measured: {why}")
    profiles = [plugins.profiles.get(p) for p in args.profiles.split(",")]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    seen: dict = {}  # (runtime, profile, precision, launch) -> [(wall_s, p50_ms)]
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        art = _artifacts(args.backbone, args.image_size, Path(tmp))
        for r in range(args.rounds):
            order = ("spawn", "fork") if r % 2 == 0 else ("fork", "spawn")
            for rt in runtimes:
                for prof in profiles:
                    for launch in order:
                        sets = MeasureSettings(**SETTINGS, warm_workers=(launch == "fork"))
                        rows = measure_in_worker(rt.measure, art, prof, sets,
                                                 label=f"{rt.name}-{prof.name}-{launch}-{r}")
                        for row in rows:
                            if row.get("stats"):
                                got = row["worker"]["launch"]
                                assert got == launch, (got, launch, row["worker"])
                                seen.setdefault((rt.name, prof.name, row["precision"], launch),
                                                []).append((row["worker"]["wall_s"],
                                                            row["stats"]["p50_ms"]))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        zygote.stop()
    lines = [f"# Warm (forked) against cold (spawned) latency workers, {args.backbone} at "
             f"{args.image_size} px",
             "",
             f"machine: {cpu_model()} ({', '.join(cpu_flags())}), {os.cpu_count()} CPUs; load "
             f"average before {tuple(round(x, 2) for x in load_before)}, after "
             f"{tuple(round(x, 2) for x in os.getloadavg())}; "
             f"{args.rounds} rounds, spawn and fork alternating; "
             f"{time.perf_counter() - t0:.0f} s in all",
             f"versions: {package_versions()}",
             "",
             "A worker's wall time covers its whole job (imports, conversion, timing, outputs "
             "on the 64 test images); one worker measures every precision of its profile.",
             "",
             "| runtime | profile | precision | worker s spawn | fork | fork/spawn | "
             "p50 ms spawn | fork | fork/spawn |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (rt, prof, prec, launch), vals in sorted(seen.items()):
        if launch != "spawn" or (rt, prof, prec, "fork") not in seen:
            continue
        fork = seen[(rt, prof, prec, "fork")]
        ws, wf = (statistics.median(v[0] for v in x) for x in (vals, fork))
        ps, pf = (statistics.median(v[1] for v in x) for x in (vals, fork))
        lines.append(f"| {rt} | {prof} | {prec} | {ws:.2f} | {wf:.2f} | {wf / ws:.2f} | "
                     f"{ps:.3f} | {pf:.3f} | {pf / ps:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.publish:
        name = (f"bench_warm_workers-{args.backbone}-{args.image_size}px-cpu{os.cpu_count()}-"
                f"{cpu_model().lower().replace(' ', '_')}.md")
        out = Path(args.publish) / name
        out.write_text(text)
        print(f"published {out}")


if __name__ == "__main__":
    main()
