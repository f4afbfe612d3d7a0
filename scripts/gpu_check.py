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


TRAIN_FIELDS = ("model", "variant", "precision", "channels_last", "cudnn_benchmark",
                "batch_size", "image_size", "steps", "images_per_s", "epoch_s", "gpu_peak_mb",
                "device", "device_name", "weights", "error")


def train_variants(device: str) -> list[dict]:
    """fp32, the device's default AMP, AMP + channels-last, AMP + channels-last + cuDNN
    benchmark (on the CPU, for --dry-run: fp32 and bf16 + channels-last)."""
    import torch
    from harness.train.device import default_amp
    dev = torch.device(device)
    amp = default_amp(dev) if dev.type == "cuda" else "bf16"
    out = [{"variant": "fp32", "amp": "off", "channels_last": False, "cudnn_benchmark": False},
           {"variant": f"amp-{amp}", "amp": amp, "channels_last": False,
            "cudnn_benchmark": False},
           {"variant": f"amp-{amp}-channels_last", "amp": amp, "channels_last": True,
            "cudnn_benchmark": False},
           {"variant": f"amp-{amp}-channels_last-cudnn_benchmark", "amp": amp,
            "channels_last": True, "cudnn_benchmark": True}]
    return out if dev.type == "cuda" else [out[0], out[2]]


def train_throughput(name: str, device: str, size: int, batch: int, steps: int,
                     variant: dict) -> dict:
    """Images per second of the harness's training loop for one model and variant: a
    warm-up epoch of two batches, then one timed epoch of ``steps`` batches (plus one
    validation batch, as a cell's epoch has), on synthetic uint8 images."""
    import torch
    from harness.api.manager import get_plugins
    from harness.train.data import DataInfo, TensorSplit
    from harness.train.device import device_name
    from harness.train.loop import History, Phase, TrainContext, TrainSettings, run_phase
    from harness.train.model import TransferModel

    plugins = get_plugins()
    spec, _ = plugins.backbones.resolve(name)
    torch.manual_seed(0)
    backbone = spec.build()  # random weights: throughput does not depend on their values
    info = DataInfo("synthetic", num_classes=10, synthetic=True)
    task = plugins.tasks.get("classification").factory()
    model = TransferModel(backbone, task.build_head(backbone, info), task.head_input)
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> TensorSplit:
        return TensorSplit(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                                         generator=g),
                           torch.randint(0, 10, (n,), generator=g))

    settings = TrainSettings(epochs=1, batch_size=batch, lr=1e-4, patience=99, device=device,
                             amp=variant["amp"], channels_last=variant["channels_last"],
                             cudnn_benchmark=variant["cudnn_benchmark"])
    ctx = TrainContext(task, info, settings)
    phase = Phase("all", [gr.name for gr in model.layer_groups()], early_stopping=False,
                  restore_best=False)
    val = split(batch)
    run_phase(model, phase, split(2 * batch), val, ctx, History())  # warm-up
    train = split(steps * batch)
    cuda = ctx.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(ctx.device)
        torch.cuda.reset_peak_memory_stats(ctx.device)
    t0 = time.perf_counter()
    run_phase(model, phase, train, val, ctx, History())
    if cuda:
        torch.cuda.synchronize(ctx.device)
    secs = time.perf_counter() - t0
    return {"model": name, "variant": variant["variant"], "precision": ctx.precision.name,
            "channels_last": variant["channels_last"],
            "cudnn_benchmark": variant["cudnn_benchmark"], "batch_size": batch,
            "image_size": size, "steps": steps, "images_per_s": steps * batch / secs,
            "epoch_s": secs,
            "gpu_peak_mb": torch.cuda.max_memory_allocated(ctx.device) / 2**20 if cuda else None,
            "device": str(ctx.device), "device_name": device_name(ctx.device),
            "weights": "random (throughput only)", "error": ""}


def measure_training(models, device: str, size: int, batch: int, steps: int) -> list[dict]:
    """:func:`train_throughput` for every model and variant; a failure is a row with its
    error (an out-of-memory VGG-16 must not stop ResNet-50)."""
    rows = []
    for name in models:
        for v in train_variants(device):
            try:
                row = train_throughput(name, device, size, batch, steps, v)
            except Exception as exc:
                row = {"model": name, "variant": v["variant"], "batch_size": batch,
                       "image_size": size, "steps": steps, "device": device,
                       "error": f"{type(exc).__name__}: {exc}"[:300]}
            rows.append(row)
            print(f"  train {name:12s} {v['variant']:38s} "
                  + (f"{row['images_per_s']:8.1f} images/s" if not row["error"]
                     else f"failed: {row['error'][:100]}"), flush=True)
    return rows


def write_train_csv(out: Path, rows: list[dict], tag: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"benchmark-train-{tag}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TRAIN_FIELDS)
        w.writeheader()
        w.writerows([{k: r.get(k) for k in TRAIN_FIELDS} for r in rows])
    print(f"wrote {path}")
    return path


def side_by_side(train_rows: list[dict], tables: dict) -> str:
    """Per model: training images/s of each variant next to the p50 inference latency of
    each runtime and precision."""
    lines = []
    for name in dict.fromkeys(r["model"] for r in train_rows):
        tr = ", ".join(f"{r['variant']} {r['images_per_s']:.0f} img/s" for r in train_rows
                       if r["model"] == name and not r.get("error"))
        inf = ", ".join(f"{r['runtime']} {r['precision']} bs{r['batch_size']} "
                        f"{r['p50_ms']:.2f} ms" for rows in tables.values() for r in rows
                        if r["model"] == name and r.get("p50_ms") is not None)
        lines.append(f"{name}: training {tr or 'failed'}; inference p50 {inf or 'not measured'}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--batch", type=int, action="append", help="batch size(s); default 1")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--min-s", type=float, default=2.0)
    ap.add_argument("--runtimes", nargs="+", default=list(PLAN), choices=list(PLAN))
    ap.add_argument("--train-models", nargs="+", default=["resnet50", "vgg16"])
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--skip-train", action="store_true", help="latency only")
    ap.add_argument("--dry-run", action="store_true",
                    help="check the training measurement on the CPU (tiny); no GPU needed")
    args = ap.parse_args()
    batches = args.batch or [1]

    if args.dry_run:
        print("gpu_check --dry-run: the training measurement on the CPU (resnet18, 32 px, "
              "batch 4, 2 steps); these are not GPU figures")
        rows = measure_training(["resnet18"], "cpu", 32, 4, 2)
        write_train_csv(args.out, rows, "dryrun-cpu")
        return 0 if rows and not any(r.get("error") for r in rows) else 1

    import torch
    from harness.api.manager import PluginSystem
    from harness.train.device import what_torch_sees
    plugins = PluginSystem()
    status = {n: plugins.runtimes.get(n).available() for n in args.runtimes}
    for n, (ok, why) in status.items():
        print(f"{n:22s} {'available' if ok else 'UNAVAILABLE: ' + why}")
    train_ok = torch.cuda.is_available() and not args.skip_train
    print(f"{'training on CUDA':22s} "
          f"{'available' if train_ok else 'UNAVAILABLE: ' + what_torch_sees()}")
    if not any(status.get(n, (False, ""))[0] for n in REQUIRED) and not train_ok:
        print("gpu_check: neither TensorRT nor the ONNX Runtime CUDA provider can run here, "
              f"and PyTorch cannot train on CUDA ({what_torch_sees()}); nothing was "
              "measured.", file=sys.stderr)
        return 2

    import timm
    from harness.run.cell import Artifacts, gmacs
    from harness.measure.export import export_onnx
    from plugins.runtimes.onnxruntime import parity_check
    from harness.measure.isolate import measure_in_worker
    from harness.measure.latency import MeasureSettings
    from harness.api.specs import ProfileSpec

    gpu = torch.cuda.get_device_name(0)
    versions = _versions()
    train_rows = []
    if train_ok:
        print(f"training throughput on cuda ({gpu}), {args.image_size} px, batch "
              f"{args.train_batch}, {args.train_steps} steps:")
        train_rows = measure_training(args.train_models, "cuda", args.image_size,
                                      args.train_batch, args.train_steps)
    settings = MeasureSettings(warmup_count=20, warmup_s=0.5, min_count=50, min_s=args.min_s,
                               max_s=60, worker_timeout_s=480)
    tables: dict = {}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    for name in args.models if any(ok for ok, _ in status.values()) else []:
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
    if train_rows:
        tag = (f"{_slug(gpu)}-{args.image_size}px-bs{args.train_batch}-pt"
               + versions.get("torch", "na").split("+")[0].replace(".", ""))
        write_train_csv(args.out, train_rows, tag)
        print(side_by_side(train_rows, tables))
    from harness.measure.env import environment
    (args.out / f"benchmark-infer-gpu-environment-{_slug(gpu)}.json").write_text(
        json.dumps({"environment": environment(), "settings": vars(args) | {
            "out": str(args.out)}, "measure": settings.__dict__}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
