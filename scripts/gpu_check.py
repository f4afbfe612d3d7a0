"""The prepared check for the first GPU lent to this project (under 10 minutes on one GPU).

It verifies, and prints PASS/FAIL for each, what only a GPU can show:

1. the installation: one ONNX Runtime build with its CUDA/TensorRT providers, the TensorRT
   version and whether it builds weakly (10.x) or strongly typed (11.x), native bf16;
2. every GPU runtime and precision (TensorRT fp32/fp16/int8, ONNX Runtime CUDA fp32 and
   TensorRT EP fp32/fp16, PyTorch CUDA fp32/fp16) on small timm models with random weights:
   the row measured, its outputs agree with PyTorch fp32 (fp32/fp16 enforced, TF32 stated),
   GPU compute time <= end-to-end latency (trtexec's two figures), no ONNX Runtime compute
   node on the CPU, the GPU's name recorded;
3. (run second, right after 1) a real ``bench run`` of two cells with ``--device cuda
   --executor processes --jobs 2``: both cells ok, trained and measured on the GPU they were
   shown alone (``CUDA_VISIBLE_DEVICES``), never both at once on one GPU, TF32 and
   determinism recorded, their outputs checked by the cell;
4. the training loop's images/s (fp32, AMP, channels-last, cuDNN benchmark).

Within ``--budget-s`` (540 s): the bench run gets at most 300 s; no model starts within 60 s
of the budget, nor the training part within 30 s; what is skipped is reported NOT RUN.

Exit status: 0 when every check passed; 1 when any failed or was not run (time budget);
2, naming the reasons, when no GPU runtime can run here (nothing measured or written).
Figures go to CSVs whose names state the conditions (like timm's
``results/benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv``); ``--full`` measures the
published set (ResNet-18/50, MobileNetV3, VGG-16, batches 1 and 32: longer than 10 min).

Run: ``python scripts/gpu_check.py --out results`` (``--dry-run``: the training part on the
CPU, tiny).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runs from a checkout without an editable install too
    sys.path.insert(0, str(ROOT))

DEFAULT_MODELS = ("resnet18", "mobilenetv3_large_100")  # the < 10 min check
FULL_MODELS = ("resnet18", "resnet50", "mobilenetv3_large_100", "vgg16")  # --full
# runtime name -> precisions measured
PLAN = {"tensorrt": ("fp32", "fp16", "int8"), "onnxruntime-cuda": ("fp32",),
        "onnxruntime-tensorrt": ("fp32", "fp16"), "pytorch-cuda": ("fp32", "fp16")}
REQUIRED = ("tensorrt", "onnxruntime-cuda")
FIELDS = ("model", "runtime", "precision", "batch_size", "image_size", "p50_ms", "p90_ms",
          "p95_ms", "p99_ms", "mean_ms", "std_ms", "cv", "iqr_ms", "throughput_per_s",
          "count", "gpu_compute_p50_ms", "h2d_p50_ms", "d2h_p50_ms", "tf32", "typing",
          "parity_max_abs_diff", "gmacs", "onnx_mb", "engine_mb", "build_s", "gpu_peak_mb",
          "isolation", "device", "weights", "error")


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


class Checks:
    """What the script verified: each check printed as PASS/FAIL (or NOT RUN) with its
    detail, then a summary; :meth:`exit_code` is 1 unless every check passed."""

    def __init__(self):
        self.results: list[tuple[str, str, str]] = []

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        status = "PASS" if ok else "FAIL"
        self.results.append((status, name, detail))
        print(f"  {status:7s} {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    def not_run(self, name: str, why: str) -> None:
        self.results.append(("NOT RUN", name, why))
        print(f"  NOT RUN {name}: {why}", flush=True)

    def summary(self) -> str:
        counts = {k: sum(1 for s, _, _ in self.results if s == k)
                  for k in ("PASS", "FAIL", "NOT RUN")}
        lines = [f"gpu_check: {counts['PASS']} passed, {counts['FAIL']} failed, "
                 f"{counts['NOT RUN']} not run"]
        lines += [f"  {s}: {n}: {d}" for s, n, d in self.results if s != "PASS"]
        return "\n".join(lines)

    def exit_code(self) -> int:
        return 0 if self.results and all(s == "PASS" for s, _, _ in self.results) else 1


def verify_row(row: dict, gpu_name: str) -> list[tuple[str, bool, str]]:
    """The checks of one GPU latency row: measured, outputs agree with PyTorch, trtexec's
    figures consistent (GPU compute <= end-to-end latency), where ONNX Runtime ran every
    node, TF32 stated, the GPU named. Returns ``(check, ok, detail)`` tuples."""
    if row.get("error") or row.get("unavailable"):
        return [("measured", False, str(row.get("error") or row.get("unavailable"))[:300])]
    out = [("measured", True, "")]
    par = row.get("parity") or {}
    if par.get("enforced"):
        out.append(("outputs agree with PyTorch fp32", bool(par.get("ok")),
                    f"max abs diff {par.get('max_abs_diff', float('nan')):.3g} "
                    f"(tolerance {par.get('tolerance_key')}, top-1 agreement "
                    f"{par.get('top1_agreement', float('nan')):.3f})"))
    else:
        out.append(("outputs compared with PyTorch fp32", bool(par),
                    f"recorded, not enforced for {row.get('precision')}: top-1 agreement "
                    f"{par.get('top1_agreement', float('nan')):.3f}" if par else "no comparison"))
    st, gc = row.get("stats") or {}, row.get("gpu_compute") or {}
    ok = bool(st and gc and gc["p50_ms"] <= st["p50_ms"] * 1.001)
    out.append(("GPU compute time <= end-to-end latency", ok,
                f"compute p50 {gc.get('p50_ms', float('nan')):.3f} ms, latency p50 "
                f"{st.get('p50_ms', float('nan')):.3f} ms (H2D {(row.get('h2d') or {}).get('p50_ms', float('nan')):.3f}"
                f", D2H {(row.get('d2h') or {}).get('p50_ms', float('nan')):.3f})"))
    oc = row.get("outputs_check")
    if oc is not None and oc.get("ok") is not None:  # the cell's own check on its test images
        out.append(("test-image outputs agree with PyTorch (cell check)", bool(oc["ok"]),
                    str(oc.get("problem") or f"relative RMS {oc.get('rel_rms', 0):.3g} <= "
                                             f"{oc.get('tolerance')}")))
    if "node_placement" in row:
        by = row["node_placement"].get("nodes_by_provider", {})
        out.append(("no ONNX Runtime compute node on the CPU", True, f"nodes by provider {by}"))
    if row.get("precision") == "fp32":
        out.append(("TF32 stated", "tf32" in row, f"tf32 = {row.get('tf32')}"))
    out.append(("measured on this GPU", row.get("device") == gpu_name,
                f"row device {row.get('device')!r}, CUDA_VISIBLE_DEVICES "
                f"{row.get('cuda_visible_devices')!r}"))
    return out


def verify_install(checks: Checks, plugins) -> None:
    """One ONNX Runtime build with its GPU providers; TensorRT's typing; native bf16."""
    import torch
    from harness.train.device import cuda_bf16_native, default_amp
    from plugins.runtimes.onnxruntime import ort_builds
    builds = ort_builds()
    checks.add("exactly one ONNX Runtime build installed", len(builds) == 1, str(builds))
    try:
        import onnxruntime as ort
        have = ort.get_available_providers()
        checks.add("ONNX Runtime GPU providers", {"CUDAExecutionProvider",
                                                  "TensorrtExecutionProvider"} <= set(have),
                   str(have))
    except ImportError as exc:
        checks.add("ONNX Runtime GPU providers", False, str(exc))
    try:
        import tensorrt as trt
        from plugins.runtimes.tensorrt import typing_of
        checks.add("TensorRT importable", True, f"{trt.__version__}, {typing_of(trt)}ly typed "
                                                "builds")
    except ImportError as exc:
        checks.add("TensorRT importable", False, str(exc))
    cap = torch.cuda.get_device_capability(0)
    native = cuda_bf16_native()
    checks.add("bf16 choice follows the hardware", native == (cap[0] >= 8),
               f"compute capability {cap}, native bf16 {native}, --amp auto trains in "
               f"{default_amp(torch.device('cuda'))}")


def verify_bench_run(checks: Checks, work: Path, gpu_name: str, timeout_s: float) -> None:
    """Two cells through ``bench run --device cuda --executor processes --jobs 2``."""
    import subprocess
    out = work / "bench-run"
    cmd = [sys.executable, "-m", "harness.cli", "run", "-b", "resnet18", "-s", "finetune",
           "-s", "frozen", "-d", "digits", "--epochs", "1", "--image-size", "64",
           "--device", "cuda", "--executor", "processes", "--jobs", "2", "-r", "pytorch-cuda",
           "-r", "tensorrt", "-r", "onnxruntime-cuda", "-p", "server", "-q", "--out", str(out)]
    print("  running: " + " ".join(cmd[2:]), flush=True)
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        checks.add("bench run on the GPU", False, f"did not finish within {timeout_s:.0f} s")
        return
    recs = [json.loads(p.read_text()) for p in out.glob("*/cells/*.json")]
    checks.add("bench run on the GPU", res.returncode == 0 and len(recs) == 2,
               f"exit {res.returncode}, {len(recs)} cell records; stderr ends: "
               f"{res.stderr[-300:]!r}" if res.returncode else f"{len(recs)} cells")
    for rec in recs:
        name = rec["config"]["strategy"]
        hw, worker = rec.get("hardware") or {}, rec.get("worker") or {}
        checks.add(f"cell {name}: status ok", rec.get("status") == "ok", str(rec.get("error")))
        checks.add(f"cell {name}: trained on its own GPU",
                   hw.get("device", "").startswith("cuda") and hw.get("device_name") == gpu_name
                   and worker.get("cuda_visible_devices") is not None,
                   f"device {hw.get('device')}, name {hw.get('device_name')!r}, "
                   f"CUDA_VISIBLE_DEVICES {worker.get('cuda_visible_devices')!r}")
        checks.add(f"cell {name}: TF32 and determinism recorded",
                   "tf32_matmul" in (hw.get("backends") or {}) and "deterministic" in hw,
                   str(hw.get("backends")))
        for lat in rec.get("latency", []):
            for check, ok, detail in verify_row(lat, gpu_name):
                checks.add(f"cell {name} {lat.get('runtime')} {lat.get('precision')}: {check}",
                           ok, detail)
    spans = sorted((r.get("started", 0), r.get("finished", 0)) for r in recs)
    if len(spans) == 2 and torch_gpu_count() == 1:
        checks.add("one GPU cell at a time on one GPU (--jobs 2)", spans[0][1] <= spans[1][0],
                   f"cell spans {spans}")


def torch_gpu_count() -> int:
    import torch
    return torch.cuda.device_count()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--batch", type=int, action="append", help="batch size(s); default 1")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--min-s", type=float, default=1.0)
    ap.add_argument("--runtimes", nargs="+", default=list(PLAN), choices=list(PLAN))
    ap.add_argument("--train-models", nargs="+", default=["resnet18"])
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--skip-train", action="store_true", help="latency only")
    ap.add_argument("--skip-bench", action="store_true", help="no bench run check")
    ap.add_argument("--full", action="store_true",
                    help="the published set: four models, batches 1 and 32 (over 10 min)")
    ap.add_argument("--budget-s", type=float, default=540.0,
                    help="stop starting new models after this long (default 540)")
    ap.add_argument("--dry-run", action="store_true",
                    help="check the training measurement on the CPU (tiny); no GPU needed")
    args = ap.parse_args()
    t_start = time.perf_counter()
    models = args.models or list(FULL_MODELS if args.full else DEFAULT_MODELS)
    batches = args.batch or ([1, 32] if args.full else [1])

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

    checks = Checks()
    gpu = torch.cuda.get_device_name(0)
    print(f"\n1. installation ({gpu}, torch {torch.__version__}, CUDA {torch.version.cuda})")
    verify_install(checks, plugins)
    for n, (ok, why) in status.items():
        checks.add(f"runtime {n} available", ok, why)
    versions = _versions()
    settings = MeasureSettings(warmup_count=20, warmup_s=0.5, min_count=50, min_s=args.min_s,
                               max_s=60, worker_timeout_s=480)
    tables: dict = {}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    rng = __import__("numpy").random.default_rng(0)
    calib = rng.random((16, 3, args.image_size, args.image_size), dtype="float32")
    if not args.skip_bench:  # first: the whole path a user takes, end to end
        print("\n2. bench run: two cells, --device cuda --executor processes --jobs 2")
        verify_bench_run(checks, work, gpu, timeout_s=min(300.0, args.budget_s / 2))
    print(f"\n3. GPU runtimes on {', '.join(models)} ({args.image_size} px, batch "
          f"{', '.join(map(str, batches))})")
    for name in models:
        if time.perf_counter() - t_start > args.budget_s - 60:
            checks.not_run(f"{name} latency", f"too close to the {args.budget_s:.0f} s budget")
            continue
        t0 = time.perf_counter()
        model = timm.create_model(name, pretrained=False).eval()
        mdir = work / name
        mdir.mkdir()
        onnx_path = export_onnx(model, args.image_size, mdir / f"{name}.onnx")
        parity = parity_check(model, onnx_path, args.image_size)
        art = Artifacts(model=model, image_size=args.image_size, workdir=mdir,
                        onnx_path=onnx_path, calibration=calib, test_images=calib[:8])
        g = gmacs(model, args.image_size)
        print(f"{name}: exported ({onnx_path.stat().st_size / 2**20:.1f} MB, parity max abs "
              f"diff {parity['max_abs_diff']:.2e}), {g and round(g, 2)} GMACs")
        for rt in args.runtimes:
            if not status[rt][0]:
                continue
            if time.perf_counter() - t_start > args.budget_s - 30:
                checks.not_run(f"{name} {rt}", f"too close to the {args.budget_s:.0f} s budget")
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
                    r.pop("test_outputs", None)
                    for check, ok, detail in verify_row(r, gpu):
                        checks.add(f"{name} {rt} {r['precision']} bs{b}: {check}", ok, detail)
                    st = r.get("stats") or {}
                    row = {"model": name, "runtime": rt, "precision": r["precision"],
                           "batch_size": b, "image_size": args.image_size, "gmacs": g,
                           "onnx_mb": onnx_path.stat().st_size / 2**20,
                           "engine_mb": r.get("engine_mb"), "build_s": r.get("build_s"),
                           "gpu_peak_mb": (r.get("gpu_memory") or {}).get("peak_mb"),
                           "gpu_compute_p50_ms": (r.get("gpu_compute") or {}).get("p50_ms"),
                           "h2d_p50_ms": (r.get("h2d") or {}).get("p50_ms"),
                           "d2h_p50_ms": (r.get("d2h") or {}).get("p50_ms"),
                           "tf32": r.get("tf32"), "typing": r.get("typing"),
                           "parity_max_abs_diff": (r.get("parity") or {}).get("max_abs_diff"),
                           "isolation": r.get("isolation"), "device": r.get("device"),
                           "weights": "random (timm pretrained=False; latency only)",
                           "error": r.get("error") or r.get("unavailable") or "",
                           **{k: st.get(k) for k in FIELDS if k in st}}
                    key = _conditions(rt, r["precision"], b, args.image_size, gpu, versions)
                    tables.setdefault(key, []).append(row)
        print(f"  ({time.perf_counter() - t0:.0f} s)")
    train_rows = []
    if train_ok and time.perf_counter() - t_start > args.budget_s - 30:
        checks.not_run("training throughput", f"too close to the {args.budget_s:.0f} s budget")
    elif train_ok:
        print(f"\n4. training throughput on cuda ({gpu}), {args.image_size} px, batch "
              f"{args.train_batch}, {args.train_steps} steps:")
        train_rows = measure_training(args.train_models, "cuda", args.image_size,
                                      args.train_batch, args.train_steps)
        for r in train_rows:
            checks.add(f"train {r['model']} {r['variant']}", not r.get("error"),
                       r.get("error") or f"{r['images_per_s']:.0f} images/s")
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
            "out": str(args.out)}, "measure": settings.__dict__,
            "checks": checks.results}, indent=1, default=str))
    print(f"\n{checks.summary()}\n({time.perf_counter() - t_start:.0f} s in all)")
    return checks.exit_code()


if __name__ == "__main__":
    sys.exit(main())
