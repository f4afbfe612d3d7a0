"""How long do `bench check --against`'s workers take to start, one after another or side by side?

A paired check starts ``--processes`` workers a side (3 by default: 6 workers). Each one
imports torch, rebuilds every cell's model and runs every target's runtime once (ONNX export,
int8 conversion, OpenVINO compilation, ExecuTorch lowering) before the first round: none of it
is measured, and on a typical CI matrix it is most of the check's time. This benchmark starts
the same workers as the check (:func:`harness.regression.paired.start_workers`, this tree on
both sides, the CI recipe's cells by default) with ``at_once`` 1 (one after another, as
before) and with the usable CPUs, alternating which goes first in each round, and prints each
round's seconds and the ratio, measured side by side in one run.

    python benchmarks/bench_check_startup.py --rounds 3
    python benchmarks/bench_check_startup.py -b mobilenetv2_100 -r onnxruntime --rounds 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import regression as rg  # noqa: E402
from harness.api.manager import get_plugins  # noqa: E402
from harness.measure.latency import usable_cpus  # noqa: E402
from harness.regression.calibration import calibration_files  # noqa: E402
from harness.regression.paired import start_workers  # noqa: E402
from harness.regression.worker import WorkerSession  # noqa: E402
from harness.run.config import MatrixConfig  # noqa: E402


def start_all(entries, rs, calib, n: int, at_once: int) -> float:
    """Seconds until ``n`` workers are ready, at most ``at_once`` setting up at a time."""
    with ExitStack() as stack:
        def make():
            return stack.enter_context(WorkerSession(entries, rs, calibration=calib,
                                                     wait=False))
        t0 = time.perf_counter()
        workers = start_workers([make] * n, at_once=at_once)
        secs = time.perf_counter() - t0
        assert all(w.targets for w in workers), "a worker has no target"
    return secs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-b", "--backbone", action="append",
                    help="default: mobilenetv2_100 and mobilenetv3_small_100")
    ap.add_argument("-r", "--runtime", action="append",
                    help="default: pytorch, onnxruntime, openvino, executorch (the CI recipe)")
    ap.add_argument("--profile", default="mobile")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--processes", type=int, default=rg.CheckSettings().processes)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    plugins = get_plugins()
    matrix = MatrixConfig(backbones=args.backbone or ["mobilenetv2_100", "mobilenetv3_small_100"],
                          datasets=["digits"], strategies=["frozen"],
                          runtimes=args.runtime or ["pytorch", "onnxruntime", "openvino",
                                                    "executorch"],
                          profiles=[args.profile], image_size=args.image_size)
    entries = rg.entries_from_matrix(plugins, matrix, train=False)
    rs = rg.RoundSettings(calibrate=False)  # as --against measures
    n, cpus = 2 * args.processes, usable_cpus()
    load = os.getloadavg()
    print(f"{n} workers ({args.processes} a side), {len(entries)} cell(s) x "
          f"{len(matrix.runtimes)} runtime(s) at {args.profile}, {args.image_size} px; "
          f"{cpus} usable CPUs; load average {load[0]:.1f} at the start", flush=True)
    times: dict = {1: [], cpus: []}
    with tempfile.TemporaryDirectory(prefix="tb-startup-") as tmp:
        calib = calibration_files(plugins, entries, Path(tmp))
        for r in range(args.rounds):
            order = [1, cpus] if r % 2 == 0 else [cpus, 1]
            for at_once in order:
                secs = start_all(entries, rs, calib, n, at_once)
                times[at_once].append(secs)
                print(f"round {r + 1}: {at_once} at a time: {secs:.1f} s", flush=True)
    ratios = [a / b for a, b in zip(times[1], times[cpus])]
    load = os.getloadavg()
    print(f"one after another: median {statistics.median(times[1]):.1f} s; {cpus} at a time: "
          f"median {statistics.median(times[cpus]):.1f} s; ratio (one after another / side by "
          f"side) per round {', '.join(f'{x:.2f}' for x in ratios)}, median "
          f"{statistics.median(ratios):.2f}; load average {load[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
