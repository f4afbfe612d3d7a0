"""Every CPU runtime x precision on four CNNs at 224 px, mobile and server profiles, in one
run, interleaved; ratios to PyTorch eager and to ONNX Runtime fp32; a roofline.

Models: MobileNetV2, MobileNetV3-Large, ResNet-18, VGG-16 (timm, random weights: latency
only; 1000 classes). Profiles: the registry's ``mobile`` and ``server`` (batch and threads
as they define them). Runtimes and precisions, converted by the runtime plugins' own code:

* ``pytorch`` fp32 (eager, ``inference_mode``);
* ``onnxruntime`` fp32, int8 (static QDQ) and, in the mobile profile only, int8-dynamic
  (MEASUREMENT.md measured it slower than fp32 for every CNN; at batch 32 one VGG-16 call
  would take tens of seconds);
* ``openvino`` fp32, bf16 (where the CPU has it), int8 (NNCF);
* ``executorch`` (XNNPACK delegate) fp32, int8 (PT2E XNNPACKQuantizer), in the mobile
  profile unless ``--all-profiles`` (lowering takes minutes per variant here).

int8 is calibrated on ``--calibration`` (8) seeded random images (no data set here: the
figures are latency, not accuracy; the matrix measures accuracy after quantization).

Method: for each model, one worker process per runtime (``--worker``) converts and loads
all its (profile, precision) variants, the workers preparing at once; then ``--rounds``
rounds time every variant in turn, one block each, only one process running at a time, in
an order rotated every round; each block is the shared latency core
(:func:`harness.measure.latency.measure`), the timings of all rounds are pooled (median,
p90, IQR). Before each block the parent times a fixed numpy probe; a block whose probe is
> 1.5x the run's median probe is measured again once (the load of a shared machine comes
in bursts; MEASUREMENT.md). The load average and the CPU model are printed with the figures.

Roofline: the peak of this CPU is measured in the same run by a worker, at the start and
after each model (the best of all counts: load only ever slows a GEMM down): fp32 GEMM
(2048^3, torch, numpy and ONNX Runtime: the fastest counts), bf16 GEMM where the CPU has
avx512_bf16 or AMX, and int8 GEMM (``torch._int_mm`` and ONNX Runtime's
``MatMulInteger``) where it has VNNI or AMX-INT8 (CPU flags are read, never assumed).
Each variant's achieved GFLOP/s = 2 x MACs x batch / p50, against the peak of its precision.

Usage: python benchmarks/bench_runtimes.py [--models ...] [--profiles ...] [--rounds 2]
       [--runtimes ...] [--budget-min 20] [--out results/]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {"mobilenetv2_100": "MobileNetV2", "mobilenetv3_large_100": "MobileNetV3-Large",
          "resnet18": "ResNet-18", "vgg16": "VGG-16"}
PRECISIONS = {"pytorch": ("fp32",), "onnxruntime": ("fp32", "int8", "int8-dynamic"),
              "openvino": ("fp32", "bf16", "int8"), "executorch": ("fp32", "int8")}
MOBILE_ONLY = {("onnxruntime", "int8-dynamic")}
#: runtimes measured in the mobile profile only unless --all-profiles: lowering to ExecuTorch
#: is a whole-graph pass pipeline per static shape and precision (``lower_s`` in the rows:
#: minutes per variant for a MobileNet on this loaded 2-core machine), and batch 1 is its
#: deployment (a phone)
MOBILE_RUNTIMES = {"executorch"}
TAG = "@@bench@@ "
PROBE_LIMIT = 1.5


# -- worker side ------------------------------------------------------------------------------
def _reply(obj) -> None:
    sys.stdout.write(TAG + json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _profile(d):
    from harness.api.specs import ProfileSpec
    return ProfileSpec(**{**d, "precisions": tuple(d["precisions"])})


class Worker:
    """One runtime's variants of one model: ``prepare`` converts and loads them, ``measure``
    times one block of one of them."""

    def __init__(self, runtime: str, job: dict):
        from harness.measure.isolate import WorkerArtifacts
        import numpy as np
        self.runtime, self.job = runtime, job
        self.art = WorkerArtifacts(image_size=job["image_size"], workdir=Path(job["workdir"]),
                                   onnx_path=Path(job["onnx_path"]),
                                   model_path=job["model_path"],
                                   calibration=(np.load(job["calibration"])
                                                if job["calibration"] else None))
        self.variants: dict = {}

    def prepare(self, profile, prec: str) -> dict:
        from plugins.runtimes._common import inputs, threads
        n, x = threads(profile), inputs(self.art, profile)
        t0 = time.perf_counter()
        call, info = getattr(self, f"_{self.runtime.replace('-', '_')}")(profile, prec, n, x)
        call()  # one untimed call: a variant that cannot run fails here, not in a round
        self.variants[(profile.name, prec)] = call
        return {**info, "prepare_s": time.perf_counter() - t0, "threads": n}

    def _pytorch(self, profile, prec, n, x):
        import torch
        torch.set_num_threads(n)
        model, xt = self.art.model, torch.from_numpy(x)

        def call():
            with torch.inference_mode():
                return model(xt)
        return call, {"torch": torch.__version__}

    def _onnxruntime(self, profile, prec, n, x):
        from plugins.runtimes.onnxruntime import ort_session, quantize
        path, how = (self.art.onnx_path, {}) if prec == "fp32" else quantize(self.art, prec)
        sess = ort_session(path, n)
        name = sess.get_inputs()[0].name
        return (lambda: sess.run(None, {name: x})), {**how, "spinning": "off"}

    def _openvino(self, profile, prec, n, x):
        from plugins.runtimes import openvino as ov
        why = ov.refusal(prec)
        if why:
            raise RuntimeError(why)
        path, how = ov.convert(self.art, profile, prec)  # int8: once, for both profiles
        loaded = ov.loader(n)(path, prec, x)
        return loaded.call, {**how, **loaded.info}

    def _executorch(self, profile, prec, n, x):
        from plugins.runtimes import executorch as et
        path, how = et.convert(self.art, profile, prec)  # one static shape per profile
        loaded = et.loader(n)(path, prec, x)
        return loaded.call, {**how, **loaded.info}

    def measure(self, key, settings) -> dict:
        from harness.measure.latency import measure
        batch = self.job["batches"][key[0]]
        return measure(self.variants[key], batch, settings)


def worker_main(runtime: str) -> None:
    from harness.measure.allocator import tune
    from harness.measure.latency import MeasureSettings
    tune()
    job = json.loads(sys.stdin.readline())
    w = Worker(runtime, job)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "prepare":
                _reply({"ok": True, "info": w.prepare(_profile(cmd["profile"]), cmd["precision"])})
            elif cmd["cmd"] == "measure":
                st = w.measure((cmd["profile"], cmd["precision"]),
                               MeasureSettings(**cmd["settings"]))
                _reply({"ok": True, "raw_ms": st["raw_ms"], "warmup_calls": st["warmup_calls"]})
            elif cmd["cmd"] == "peak":
                _reply({"ok": True, "peak": peak_gemm(cmd["threads"])})
            elif cmd["cmd"] == "quit":
                break
        except Exception as exc:  # the parent records it for this variant and goes on
            _reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    sys.stdout.flush()
    os._exit(0)


# -- the CPU's peak ---------------------------------------------------------------------------
def _best_rate(fn, ops: float, reps: int = 12) -> float:
    """The peak rate: ``ops`` over the fastest of ``reps`` timed calls (bursts of load from
    other processes only ever slow a call down)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return ops / best / 1e9


def peak_gemm(n_threads: int, size: int = 2048) -> dict:
    """Measured GEMM peaks (GFLOP/s, GOP/s for int8) by precision and library: fp32 in
    torch (MKL/oneDNN), numpy (its BLAS) and ONNX Runtime (MLAS); bf16 in torch where the
    CPU has bf16 instructions; int8 in torch (``_int_mm``) and ONNX Runtime
    (``MatMulInteger``, u8 x s8) where it has VNNI or AMX-INT8."""
    import numpy as np
    import torch

    from harness.measure.env import cpu_flags
    torch.set_num_threads(n_threads)
    flags, ops = cpu_flags(), 2.0 * size ** 3
    out: dict = {"size": size, "threads": n_threads, "cpu_flags": flags, "fp32": {},
                 "bf16": {}, "int8": {}}

    def attempt(prec, name, fn):
        try:
            out[prec][name] = _best_rate(fn, ops)
        except Exception as exc:
            out[prec][f"{name} error"] = f"{type(exc).__name__}: {exc}"

    rng = np.random.default_rng(0)
    an, bn = rng.random((size, size), dtype=np.float32), rng.random((size, size),
                                                                    dtype=np.float32)
    a32, b32 = torch.from_numpy(an), torch.from_numpy(bn)
    attempt("fp32", "torch.mm", lambda: torch.mm(a32, b32))
    attempt("fp32", "numpy.matmul", lambda: an @ bn)
    attempt("fp32", "onnxruntime MatMul", _ort_matmul("MatMul", an, bn, n_threads))
    if {"avx512_bf16", "amx_bf16"} & set(flags):
        a16, b16 = a32.bfloat16(), b32.bfloat16()
        attempt("bf16", "torch.mm bf16", lambda: torch.mm(a16, b16))
    else:
        out["bf16"]["unavailable"] = "the CPU reports neither avx512_bf16 nor amx_bf16"
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags):
        ai = torch.randint(-128, 127, (size, size), dtype=torch.int8)
        bi = torch.randint(-128, 127, (size, size), dtype=torch.int8)
        attempt("int8", "torch._int_mm", lambda: torch._int_mm(ai, bi))
        au = rng.integers(0, 255, (size, size), dtype=np.uint8)
        attempt("int8", "onnxruntime MatMulInteger",
                _ort_matmul("MatMulInteger", au, bi.numpy(), n_threads))
    else:
        out["int8"]["unavailable"] = "the CPU reports no VNNI (avx512_vnni, avx_vnni) or AMX-INT8"
    for prec in ("fp32", "bf16", "int8"):
        rates = {k: v for k, v in out[prec].items() if isinstance(v, float)}
        out[prec]["best"] = max(rates.values()) if rates else None
        out[prec]["best_library"] = max(rates, key=rates.get) if rates else None
    return out


def _ort_matmul(op: str, a, b, n_threads: int):
    """A one-node ONNX Runtime session computing ``op(a, b)``; returns the call to time."""
    import onnx
    from onnx import helper

    from plugins.runtimes.onnxruntime import ort_session
    kind = {np_t: onnx.helper.np_dtype_to_tensor_dtype(np_t) for np_t in (a.dtype, b.dtype)}
    out_t = onnx.TensorProto.INT32 if op == "MatMulInteger" else kind[a.dtype]
    graph = helper.make_graph([helper.make_node(op, ["A", "B"], ["Y"])], "gemm", [
        helper.make_tensor_value_info("A", kind[a.dtype], list(a.shape)),
        helper.make_tensor_value_info("B", kind[b.dtype], list(b.shape))],
        [helper.make_tensor_value_info("Y", out_t, [a.shape[0], b.shape[1]])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "gemm.onnx")
        onnx.save(model, str(path))
        sess = ort_session(path, n_threads)
    feed = {"A": a, "B": b}
    return lambda: sess.run(None, feed)


# -- parent side ------------------------------------------------------------------------------
class Proc:
    def __init__(self, runtime: str, job: dict, log: Path):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path[1:]])}
        self.log = open(log, "w")
        self.p = subprocess.Popen([sys.executable, __file__, "--worker", runtime],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.log, text=True, env=env, cwd=str(ROOT))
        self.send(job)

    def send(self, obj) -> None:
        self.p.stdin.write(json.dumps(obj) + "\n")
        self.p.stdin.flush()

    def recv(self) -> dict:
        for line in self.p.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        return {"ok": False, "error": f"the worker exited with code {self.p.wait()}"}

    def close(self) -> None:
        try:
            self.send({"cmd": "quit"})
            self.p.wait(timeout=60)
        except Exception:
            self.p.kill()
        self.log.close()


def probe_ms() -> float:
    """A fixed numpy workload (median of 15): how fast the machine is right now."""
    import numpy as np
    a = np.random.default_rng(0).random((192, 192), dtype=np.float32)
    t = []
    for _ in range(15):
        t0 = time.perf_counter()
        a @ a
        t.append(time.perf_counter() - t0)
    return statistics.median(t) * 1000


def measure_peak(tmp: Path, n_threads: int) -> dict:
    proc = Proc("pytorch", {"image_size": 1, "workdir": str(tmp), "onnx_path": "x",
                            "model_path": None, "calibration": None}, tmp / "peak.log")
    proc.send({"cmd": "peak", "threads": n_threads})
    rep = proc.recv()
    proc.close()
    print(f"peak: {json.dumps(rep.get('peak') or rep.get('error'))}", flush=True)
    return rep.get("peak", {}) if rep.get("ok") else {}


def best_peaks(runs: list) -> dict:
    """Per precision, the largest of the peaks measured during the run."""
    out: dict = {"runs": runs}
    for prec in ("fp32", "bf16", "int8"):
        cands = [r[prec] for r in runs if r.get(prec, {}).get("best")]
        out[prec] = max(cands, key=lambda d: d["best"]) if cands else {}
    return out


def _model_files(name: str, size: int, folder: Path, n_calib: int) -> dict:
    import numpy as np
    import timm
    import torch

    from harness.run.cell import gmacs
    from harness.measure.export import export_onnx
    from plugins.runtimes.onnxruntime import parity_check
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model, folder / "model.pt")
    onnx_path = export_onnx(model, size, folder / "model.onnx")
    calib = np.random.default_rng(1).random((n_calib, 3, size, size), dtype=np.float32)
    np.save(folder / "calibration.npy", calib)
    return {"gmacs": gmacs(model, size), "parity": parity_check(model, onnx_path, size),
            "image_size": size, "workdir": str(folder), "onnx_path": str(onnx_path),
            "model_path": str(folder / "model.pt"),
            "calibration": str(folder / "calibration.npy")}


def _settings(batch: int, first: bool) -> dict:
    """One block: warm up on the first block of a variant; later blocks re-warm with one
    call (another process ran in between). Large batches get fewer calls per block."""
    big = batch > 1
    return {"warmup_count": (3 if first else 1) if not big else int(first),
            "warmup_s": (0.3 if first else 0.05) if not big else 0.0,
            "min_count": 10 if not big else 2, "min_s": 0.3 if not big else 0.0,
            "max_s": 30.0, "isolate": False}


def run_model(name, files, profiles, runtimes, rounds, logdir, probes,
              deadline: float, all_profiles: bool = False) -> list[dict]:
    batches = {p.name: p.batch_size for p in profiles}
    job = {**files, "batches": batches}
    procs = {rt: Proc(rt, job, logdir / f"{name}-{rt}.log") for rt in runtimes}
    variants, rows = [], {}
    try:
        for rt, proc in procs.items():  # all workers convert at once
            for prof in profiles:
                for prec in PRECISIONS[rt]:
                    if prof.name != "mobile" and ((rt, prec) in MOBILE_ONLY or (
                            rt in MOBILE_RUNTIMES and not all_profiles)):
                        continue
                    proc.send({"cmd": "prepare", "precision": prec, "profile": {
                        "name": prof.name, "batch_size": prof.batch_size,
                        "threads": prof.threads, "precisions": [prec]}})
                    variants.append((rt, prof.name, prec))
        for rt, prof, prec in variants:  # replies come back in the order asked, per worker
            rep = procs[rt].recv()
            rows[(rt, prof, prec)] = {"runtime": rt, "profile": prof, "precision": prec,
                                      "model": name, "raw_ms": [], "blocks": 0,
                                      "remeasured": 0,
                                      **({"info": rep["info"]} if rep["ok"]
                                         else {"error": rep["error"]})}
            print(f"  prepared {name} {rt} {prof} {prec}: "
                  f"{'%.0f s' % rep['info']['prepare_s'] if rep['ok'] else rep['error'][:200]}",
                  flush=True)
        live = [v for v in variants if "error" not in rows[v]]
        for r in range(rounds):
            if r and time.perf_counter() > deadline:  # bounded run: fewer rounds, recorded
                print(f"  {name}: time budget spent, {r} of {rounds} rounds", flush=True)
                break
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            for v in order:
                row = rows[v]
                for attempt in (0, 1):
                    pr = probe_ms()
                    probes.append(pr)
                    procs[v[0]].send({"cmd": "measure", "profile": v[1], "precision": v[2],
                                      "settings": _settings(batches[v[1]], row["blocks"] == 0)})
                    rep = procs[v[0]].recv()
                    if not rep["ok"]:
                        row["error"] = rep["error"]
                        break
                    if attempt == 0 and pr > PROBE_LIMIT * statistics.median(probes):
                        row["remeasured"] += 1  # the machine was slow: measure the block again
                        continue
                    row["raw_ms"].extend(rep["raw_ms"])
                    row["blocks"] += 1
                    break
    finally:
        for p in procs.values():
            p.close()
    return list(rows.values())


def _stats(row) -> dict:
    import numpy as np
    ms = row["raw_ms"]
    if not ms:
        return {}
    p25, p50, p75, p90 = (float(v) for v in np.percentile(ms, [25, 50, 75, 90]))
    return {"p50_ms": p50, "p90_ms": p90, "iqr_ms": p75 - p25, "count": len(ms)}


def _label(row) -> str:
    return f"{row['runtime']} {row['precision']}"


def report(rows, models, peaks, meta) -> str:
    from tabulate import tabulate
    lines = [f"CPU: {meta['cpu']} ({meta['cpus']} CPUs), flags: {', '.join(meta['flags'])}",
             f"load average: before {meta['load_before']}, after {meta['load_after']}; "
             f"probe median {meta['probe_median_ms']:.3f} ms (max {meta['probe_max_ms']:.3f})",
             f"versions: {meta['versions']}", f"rounds: {meta['rounds']}, 224 px, random weights",
             "", "Peak (GEMM 2048^3, best repeat): " + "; ".join(
                 f"{p} {peaks[p]['best']:.0f} G{'OP' if p == 'int8' else 'FLOP'}/s "
                 f"({peaks[p]['best_library']})" for p in ("fp32", "bf16", "int8")
                 if peaks.get(p, {}).get("best"))]
    for prof in meta["profiles"]:
        table = []
        for row in rows:
            if row["profile"] != prof:
                continue
            st = row.get("stats") or {}
            base = [MODELS[row["model"]], _label(row)]
            if not st:
                table.append(base + [row.get("error", "not measured")[:90]] + [""] * 6)
                continue
            table.append(base + [f"{st['p50_ms']:.2f}", f"{st['p90_ms']:.2f}",
                                 f"{st['iqr_ms']:.2f}", _ratio(row, "vs_pytorch"),
                                 _ratio(row, "vs_ort_fp32"),
                                 f"{row['gflops']:.0f}" if row.get("gflops") else "-",
                                 f"{100 * row['of_peak']:.0f}%" if row.get("of_peak") else "-"])
        lines += ["", f"Profile {prof} (batch {meta['batches'][prof]}, "
                      f"{meta['threads'][prof]} threads): p50/p90/IQR in ms per call; "
                      "speed-up = reference p50 / this p50 (> 1: faster)",
                  tabulate(table, headers=["model", "runtime", "p50", "p90", "IQR",
                                           "x PyTorch", "x ORT fp32", "GFLOP/s", "of peak"],
                           disable_numparse=True)]
    return "\n".join(lines)


def _ratio(row, key) -> str:
    v = row.get(key)
    return f"{v:.2f}x" if v else "-"


def publish(rows, models, peaks, meta, probes, logs, args, t_start, complete) -> None:
    """Statistics, ratios and roofline of the rows so far, written to ``--out`` (after each
    model, so a run stopped early keeps what it measured; ``complete`` says which)."""
    from harness.api.files import atomic_write_text
    meta.update(complete=complete, models_done=[MODELS[m] for m in models],
                load_after=[round(x, 2) for x in os.getloadavg()],
                probe_median_ms=statistics.median(probes) if probes else 0.0,
                probe_max_ms=max(probes) if probes else 0.0,
                wall_s=time.perf_counter() - t_start)
    rows = [dict(r) for r in rows]
    for row in rows:
        row["stats"] = _stats(row)
    index = {(r["model"], r["profile"], r["runtime"], r["precision"]): r for r in rows}
    for row in rows:
        st = row["stats"]
        if not st:
            continue
        for key, ref in (("vs_pytorch", ("pytorch", "fp32")), ("vs_ort_fp32",
                                                               ("onnxruntime", "fp32"))):
            other = index.get((row["model"], row["profile"], *ref), {}).get("stats")
            row[key] = other["p50_ms"] / st["p50_ms"] if other else None
        gmacs = models[row["model"]]["gmacs"]
        if gmacs:
            row["gflops"] = 2 * gmacs * meta["batches"][row["profile"]] / (st["p50_ms"] / 1000)
            peak = (peaks.get({"bf16": "bf16", "int8": "int8"}.get(
                row["precision"].split("-")[0], "fp32")) or {}).get("best")
            row["of_peak"] = row["gflops"] / peak if peak else None
    text = report(rows, models, peaks, meta)
    if complete:
        print("\n" + text)
        print(f"\nwall time {meta['wall_s'] / 60:.1f} min")
    else:
        text += "\n\nINCOMPLETE: written after each model; the run had not finished"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from harness.measure.env import cpu_slug
    stem = (f"bench_runtimes-{args.image_size}px-cpu{meta['cpus']}-"
            f"{cpu_slug(meta['cpu'])}-torch{meta['versions'].get('torch')}-"
            f"ort{meta['versions'].get('onnxruntime')}-ov{meta['versions'].get('openvino', 'none')}"
            f"-et{meta['versions'].get('executorch', 'none')}")
    data = {"meta": meta, "peaks": peaks,
            "models": {k: {"gmacs": v["gmacs"], "onnx_parity": v["parity"]}
                       for k, v in models.items()},
            "rows": rows, "worker_tracebacks": logs}
    atomic_write_text(out / f"{stem}.json", json.dumps(data, indent=1, default=str))
    atomic_write_text(out / f"{stem}.md", f"# {stem}\n\n```\n{text}\n```\n")
    print(f"wrote {out / stem}.json and .md ({'complete' if complete else 'so far'})",
          flush=True)




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--profiles", nargs="+", default=["mobile", "server"])
    ap.add_argument("--runtimes", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--all-profiles", action="store_true",
                    help="measure ExecuTorch in every profile, not only mobile (slow)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--calibration", type=int, default=8,
                    help="random calibration images for int8 (default 8)")
    ap.add_argument("--budget-min", type=float, default=20.0,
                    help="past each model's share of this many minutes, no further round "
                         "starts (the rows record how many blocks each variant got)")
    ap.add_argument("--out", default=str(ROOT / "results"))
    args = ap.parse_args()
    if args.worker:
        return worker_main(args.worker)
    if args.rounds < 1:
        sys.exit("--rounds must be >= 1")

    from harness.measure.env import cpu_flags, cpu_model, package_versions
    from harness.api.manager import PluginSystem
    from plugins.runtimes._common import threads
    plugins = PluginSystem(entry_points=False)
    try:
        profiles = [plugins.profiles.get(p) for p in args.profiles]
    except KeyError as exc:
        sys.exit(f"--profiles: {exc}")
    runtimes = []
    for rt in args.runtimes:
        ok, why = plugins.runtimes.get(rt).available()
        if ok:
            runtimes.append(rt)
        else:
            print(f"{rt}: unavailable, not measured: {why}")
    t_start = time.perf_counter()
    meta = {"cpu": cpu_model(), "cpus": os.cpu_count(), "flags": cpu_flags(),
            "load_before": [round(x, 2) for x in os.getloadavg()], "rounds": args.rounds,
            "profiles": [p.name for p in profiles],
            "batches": {p.name: p.batch_size for p in profiles},
            "threads": {p.name: threads(p) for p in profiles},
            "versions": {k: v for k, v in package_versions(plugins).items()
                         if k in ("torch", "onnxruntime", "openvino", "nncf", "executorch",
                                  "timm", "numpy")}}
    print(f"CPU {meta['cpu']}, {meta['cpus']} CPUs, flags {meta['flags']}, "
          f"load {meta['load_before']}", flush=True)
    probes: list = []
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as tmp:
        tmp = Path(tmp)
        n_peak = max(meta["threads"].values())
        peak_runs = [measure_peak(tmp, n_peak)]
        rows, models = [], {}
        for name in args.models:
            print(f"{MODELS[name]}: exporting ({(time.perf_counter() - t_start) / 60:.1f} min)",
                  flush=True)
            models[name] = _model_files(name, args.image_size, tmp / name, args.calibration)
            rows += run_model(name, models[name], profiles, runtimes, args.rounds, tmp, probes,
                              t_start + 60 * args.budget_min * (1 + args.models.index(name))
                              / len(args.models), args.all_profiles)
            peak_runs.append(measure_peak(tmp, n_peak))  # again after each model: the
            publish(rows, models, best_peaks(peak_runs), meta, probes, {}, args, t_start,
                    complete=False)                  # quietest window gives the peak
        peaks = best_peaks(peak_runs)
        logs = {p.name: p.read_text()[-1500:] for p in tmp.glob("*.log")
                if "Traceback" in p.read_text()}
    publish(rows, models, peaks, meta, probes, logs, args, t_start, complete=True)


if __name__ == "__main__":
    main()
