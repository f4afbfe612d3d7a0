"""One prepared GPU check: TensorRT (fp32, fp16) and ONNX Runtime CUDA latency for
ResNet-18, ResNet-50, MobileNetV3 and VGG-16, written as CSVs whose names state the
conditions (like timm's ``results/benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv``).

Weights are random (timm ``pretrained=False``): latency does not depend on weight values,
and the hub is out of reach on our machines. Every figure is measured here, by the same
runtime plugins ``bench run`` uses, each runtime in its own worker process; a model or
runtime that fails is written as a row with its error and the rest go on.

Exits 2, naming the reasons, when neither TensorRT nor the ONNX Runtime CUDA provider can
run on this machine.

Run: ``python scripts/gpu_check.py --out results [--batch 1 --batch 32] [--models ...]``.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODELS = ("resnet18", "resnet50", "mobilenetv3_large_100", "vgg16")
# runtime name -> precisions measured (the issue asks TensorRT fp32/fp16 and ORT CUDA)
PLAN = {"tensorrt": ("fp32", "fp16"), "onnxruntime-cuda": ("fp32",),
        "onnxruntime-tensorrt": ("fp32", "fp16"), "pytorch-cuda": ("fp32", "fp16")}
REQUIRED = ("tensorrt", "onnxruntime-cuda")
FIELDS = ("model", "runtime", "precision", "batch_size", "image_size", "p50_ms", "p90_ms",
          "p95_ms", "p99_ms", "mean_ms", "std_ms", "cv", "iqr_ms", "throughput_per_s",
          "count", "gmacs", "onnx_mb", "engine_mb", "build_s", "gpu_peak_mb", "isolation",
          "device", "weights", "error")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", text.lower().replace("nvidia", ""))[:24] or "gpu"


def _versions() -> dict:
    from harness.measure.env import package_versions
    return package_versions()


def _conditions(runtime: str, precision: str, batch: int, size: int, gpu: str, v: dict) -> str:
    tag = {"tensorrt": f"trt{v.get('tensorrt', 'na')}",
           "pytorch-cuda": f"pt{v.get('torch', 'na').split('+')[0]}"}.get(
        runtime, f"ort{v.get('onnxruntime-gpu', v.get('onnxruntime', 'na'))}")
    tag = tag.replace(".", "")
    return f"benchmark-infer-{runtime}-{precision}-nchw-bs{batch}-{size}px-{tag}-{_slug(gpu)}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--batch", type=int, action="append", help="batch size(s); default 1")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--min-s", type=float, default=2.0)
    ap.add_argument("--runtimes", nargs="+", default=list(PLAN), choices=list(PLAN))
    args = ap.parse_args()
    batches = args.batch or [1]

    from harness.api.manager import PluginSystem
    plugins = PluginSystem()
    status = {n: plugins.runtimes.get(n).available() for n in args.runtimes}
    for n, (ok, why) in status.items():
        print(f"{n:22s} {'available' if ok else 'UNAVAILABLE: ' + why}")
    if not any(status.get(n, (False, ""))[0] for n in REQUIRED):
        print("gpu_check: neither TensorRT nor the ONNX Runtime CUDA provider can run here "
              "(reasons above); nothing was measured.", file=sys.stderr)
        return 2

    import timm
    import torch
    from harness.run.cell import Artifacts, gmacs
    from harness.measure.export import export_onnx
    from plugins.runtimes.onnxruntime import parity_check
    from harness.measure.isolate import measure_in_worker
    from harness.measure.latency import MeasureSettings
    from harness.api.specs import ProfileSpec

    gpu = torch.cuda.get_device_name(0)
    versions = _versions()
    settings = MeasureSettings(warmup_count=20, warmup_s=0.5, min_count=50, min_s=args.min_s,
                               max_s=60, worker_timeout_s=480)
    tables: dict = {}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    for name in args.models:
        t0 = time.perf_counter()
        model = timm.create_model(name, pretrained=False).eval()
        mdir = work / name
        mdir.mkdir()
        onnx_path = export_onnx(model, args.image_size, mdir / f"{name}.onnx")
        parity = parity_check(model, onnx_path, args.image_size)
        art = Artifacts(model=model, image_size=args.image_size, workdir=mdir,
                        onnx_path=onnx_path)
        g = gmacs(model, args.image_size)
        print(f"{name}: exported ({onnx_path.stat().st_size / 2**20:.1f} MB, parity max abs "
              f"diff {parity['max_abs_diff']:.2e}), {g and round(g, 2)} GMACs")
        for rt in args.runtimes:
            if not status[rt][0]:
                continue
            for b in batches:
                prof = ProfileSpec(f"gpu-b{b}", batch_size=b, threads=1,
                                   precisions=PLAN[rt], device="gpu")
                try:
                    rows = measure_in_worker(plugins.runtimes.get(rt).measure, art, prof,
                                             settings, label=f"{rt}-b{b}")
                except Exception as exc:
                    rows = [{"precision": p, "error": f"{type(exc).__name__}: {exc}"}
                            for p in PLAN[rt]]
                for r in rows:
                    st = r.get("stats") or {}
                    row = {"model": name, "runtime": rt, "precision": r["precision"],
                           "batch_size": b, "image_size": args.image_size, "gmacs": g,
                           "onnx_mb": onnx_path.stat().st_size / 2**20,
                           "engine_mb": r.get("engine_mb"), "build_s": r.get("build_s"),
                           "gpu_peak_mb": (r.get("gpu_memory") or {}).get("peak_mb"),
                           "isolation": r.get("isolation"), "device": r.get("device"),
                           "weights": "random (timm pretrained=False; latency only)",
                           "error": r.get("error") or r.get("unavailable") or "",
                           **{k: st.get(k) for k in FIELDS if k in st}}
                    key = _conditions(rt, r["precision"], b, args.image_size, gpu, versions)
                    tables.setdefault(key, []).append(row)
                    print(f"  {rt:20s} {r['precision']:5s} bs{b:<3d} "
                          + (f"p50 {st['p50_ms']:.3f} ms p90 {st['p90_ms']:.3f} ms"
                             if st else f"no figure: {row['error'][:100]}"))
        print(f"  ({time.perf_counter() - t0:.0f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    for key, rows in tables.items():
        with open(args.out / f"{key}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {args.out / (key + '.csv')}")
    from harness.measure.env import environment
    (args.out / f"benchmark-infer-gpu-environment-{_slug(gpu)}.json").write_text(
        json.dumps({"environment": environment(), "settings": vars(args) | {
            "out": str(args.out)}, "measure": settings.__dict__}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
