"""How much the harness adds to a bare ``InferenceSession.run`` loop.

MobileNetV3-small (timm, random weights: only the speed matters), batch 1, 224 px, ONNX
Runtime CPU provider, the same session options in both arms (threads set, spinning off).
Rounds interleave the two arms (order alternating), as asv does, so a noisy window hits
both; the printed ratio is the median over rounds of harness p50 / bare p50.

* in-process: :func:`harness.measure.latency.measure` around ``sess.run`` vs a bare timed loop on
  the same session (the gated ratio, must be <= 1.02);
* worker (``--worker-rounds``, shown, not gated): the onnxruntime runtime plugin measured
  through :func:`harness.measure.isolate.measure_in_worker` (its own process, its own session) vs
  the bare loop in this process, round by round.

Run: ``python benchmarks/bench_overhead.py [--rounds 9] [--calls 200] [--threads 1]``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.measure.export import export_onnx
from harness.measure.isolate import measure_in_worker
from harness.measure.latency import MeasureSettings, measure
from harness.api.specs import ProfileSpec
from plugins.runtimes import ort_session
from plugins.runtimes.onnxruntime import ort_measure

LIMIT = 1.02


def bare_loop(sess, feed, calls: int) -> float:
    """p50 (ms) of a plain timed loop, after as many untimed calls."""
    for _ in range(calls // 4):
        sess.run(None, feed)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker-rounds", type=int, default=3)
    args = ap.parse_args()

    import timm
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    model = timm.create_model("mobilenetv3_small_100", pretrained=False).eval()
    path = export_onnx(model, 224, tmp / "mobilenetv3_small.onnx")
    sess = ort_session(path, args.threads)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    feed = {name: x}
    settings = MeasureSettings(warmup_count=args.calls // 4, warmup_s=0.0,
                               min_count=args.calls, min_s=0.0, max_s=600)
    print(f"MobileNetV3-small, batch 1, 224 px, ORT {__import__('onnxruntime').__version__} "
          f"CPU, {args.threads} thread(s), spinning off; {args.rounds} interleaved rounds x "
          f"{args.calls} calls per arm")
    ratios = []
    for r in range(args.rounds):
        arms = [("bare", lambda: bare_loop(sess, feed, args.calls)),
                ("harness", lambda: measure(lambda: sess.run(None, feed), 1,
                                            settings)["p50_ms"])]
        if r % 2:
            arms.reverse()
        got = {k: fn() for k, fn in arms}
        ratios.append(got["harness"] / got["bare"])
        print(f"  round {r + 1}: bare p50 {got['bare']:.3f} ms, harness p50 "
              f"{got['harness']:.3f} ms, ratio {ratios[-1]:.4f}")
    ratio = statistics.median(ratios)

    wratios = []
    if args.worker_rounds:
        art = type("Art", (), {})()
        art.image_size, art.workdir, art.onnx_path = 224, tmp, path
        art.model, art.calibration, art.test_images, art.extra = None, None, None, {}
        prof = ProfileSpec("bench", batch_size=1, threads=args.threads, precisions=("fp32",))
        for r in range(args.worker_rounds):
            b = bare_loop(sess, feed, args.calls)
            w = measure_in_worker(ort_measure, art, prof, settings, label=f"w{r}")[0]
            wratios.append(w["stats"]["p50_ms"] / b)
            print(f"  worker round {r + 1}: bare p50 {b:.3f} ms, plugin in worker p50 "
                  f"{w['stats']['p50_ms']:.3f} ms ({w['isolation']}), ratio {wratios[-1]:.4f}")

    print(f"RATIO harness/bare (median of {args.rounds} rounds): {ratio:.4f} "
          f"(limit {LIMIT}) -> {'OK' if ratio <= LIMIT else 'OVER'}")
    if wratios:
        print(f"ratio plugin-in-worker/bare (median of {len(wratios)}, not gated: separate "
              f"processes and sessions): {statistics.median(wratios):.4f}")
    return 0 if ratio <= LIMIT else 1


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
