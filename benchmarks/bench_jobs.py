"""Wall time of ``--jobs 2`` (worker processes) against the in-process executor.

The same CPU-bound matrix (ResNet-18 from random init on scikit-learn digits at 32 px:
2 strategies x 2 seeds = 4 cells, no latency measurement) runs once in this process and
once through the ``processes`` executor with 2 workers, side by side in one run. For a
fair comparison every worker and the in-process run use ONE torch thread, so the
speed-up comes from running cells at once, not from more threads per cell; the workers'
start-up (spawn, importing torch and the plugins: a few seconds each) is included.

Both runs must give the same test metrics (training is deterministic on the CPU for a
fixed seed and thread count); the script says so or fails.

The machine's CPUs may be shared: the load average is printed before and after, and a
ratio measured under load is worth less than one measured on an idle machine.

Usage: python benchmarks/bench_jobs.py [--epochs N] [--image-size S]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def _matrix(epochs: int, image_size: int):
    from harness.run.runner import build_matrix
    return build_matrix({"name": "bench-jobs"}, {
        "backbones": ["resnet18"], "datasets": ["digits"], "strategies": ["scratch", "finetune"],
        "weights": {"*": "random"}, "seeds": 2, "image_size": image_size, "runtimes": [],
        "train": {"epochs": epochs, "batch_size": 64, "patience": epochs}})


def _run(executor: str, options: dict, root: Path, epochs: int, image_size: int):
    import torch

    from harness.api.manager import get_plugins
    from harness.run.runner import run_matrix

    torch.set_num_threads(1)
    from harness.measure.allocator import tune
    tune()  # as `bench` and its workers do
    t0 = time.perf_counter()
    store = run_matrix(get_plugins(), _matrix(epochs, image_size), root, executor=executor,
                       executor_options=options, fresh=True, show_progress=False)
    wall = time.perf_counter() - t0
    recs = store.records()
    bad = [r for r in recs if r.get("status") != "ok"]
    if bad:
        raise SystemExit(f"{executor}: {len(bad)} cell(s) failed: {bad[0].get('error')}")
    return wall, {(r["config"]["strategy"], r["config"]["seed"]): r["test_metrics"] for r in recs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=32)
    args = ap.parse_args()
    print(f"CPUs: {os.cpu_count()}, load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        walls = {}
        walls["inprocess"], a = _run("inprocess", {}, Path(tmp, "a"), args.epochs,
                                     args.image_size)
        walls["jobs2"], b = _run("processes", {"jobs": 2, "threads": 1}, Path(tmp, "b"),
                                 args.epochs, args.image_size)
    print(f"load average after: {os.getloadavg()}")
    print(f"4 cells (resnet18 scratch/finetune x 2 seeds, digits {args.image_size} px, "
          f"{args.epochs} epochs), 1 torch thread per cell")
    print(f"in-process:            {walls['inprocess']:7.1f} s")
    print(f"--jobs 2 (processes):  {walls['jobs2']:7.1f} s")
    print(f"speed-up (in-process / --jobs 2): {walls['inprocess'] / walls['jobs2']:.2f}x")
    same = a == b
    print(f"same test metrics in both runs: {same}")
    if not same:
        raise SystemExit("the executors disagree on the test metrics; see the run folders")


if __name__ == "__main__":
    main()
