"""Frozen feature extractor: cached backbone features vs the naive loop, side by side.

Runs the ``frozen`` strategy twice on the same data, from the same model (same head
init, same batch order, same dropout draws): once with ``cache_features=True`` (the
backbone runs once over train and validation) and once with ``cache_features=False``
(the naive loop: the frozen backbone runs on every batch of every epoch). Early stopping
is disabled (patience > epochs) so both run all epochs. The pair runs ``--repeats`` times,
interleaved (cached, naive, cached, naive, ...), because wall time on a shared machine
swings by a third between minutes; it prints every wall time, the median of each, their
ratio naive / cached, and the test accuracies (identical in every repeat: same
computation).

    python benchmarks/bench_frozen_cache.py [--backbone mobilenetv2_100] [--weights packaged]
        [--epochs 10] [--image-size 64] [--n-train 1000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from harness.run.cell import load_data
from harness.run.config import AxisItem, CellConfig
from harness.api.manager import get_plugins
from harness.train.model import TransferModel
from harness.train.loop import TrainContext, TrainSettings, evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mobilenetv2_100")
    ap.add_argument("--weights", default="packaged")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from harness.measure.allocator import tune
    print(f"allocator: {tune()}")  # as `bench` runs (harness/measure/allocator.py)

    plugins = get_plugins()
    ds = AxisItem(a.dataset, (("n_test", 500), ("n_train", a.n_train), ("n_val", 300)))
    cfg = CellConfig(backbone=AxisItem(a.backbone), task=AxisItem("classification"), dataset=ds,
                     strategy=AxisItem("frozen"), weights=a.weights, seed=0,
                     image_size=a.image_size, train={}, runtimes=(), profiles=(), latency={})
    data = load_data(plugins, cfg)
    bb_spec, _ = plugins.backbones.resolve(a.backbone)
    torch.manual_seed(0)
    backbone = bb_spec.build()
    ws, arg = plugins.weights.resolve(a.weights)
    ws.load(bb_spec, backbone, arg, {"plugins": plugins})
    task = plugins.tasks.get("classification").factory()
    torch.manual_seed(0)
    model0 = TransferModel(backbone, task.build_head(backbone, data.info), task.head_input)
    frozen = plugins.strategies.get("frozen").cls
    settings = TrainSettings(epochs=a.epochs, batch_size=64, lr=1e-3, patience=a.epochs + 1)

    # warm-up outside the timed region: the first optimizer construction imports
    # torch._dynamo (seconds), and the first forward pass allocates; neither is training
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    with torch.no_grad():
        model0.eval()(data.train.images[:64].float() / 255)

    walls: dict = {"cached": [], "naive": []}
    accs: dict = {"cached": set(), "naive": set()}
    for rep in range(a.repeats):
        for name, cache in (("cached", True), ("naive", False)):
            model = copy.deepcopy(model0)
            ctx = TrainContext(task, data.info, settings)
            t0 = time.perf_counter()
            hist = frozen(cache_features=cache).fit(model, data, ctx)
            wall = time.perf_counter() - t0
            model.eval()
            acc = evaluate(model, data.test, ctx)[1]["accuracy"]
            walls[name].append(wall)
            accs[name].add(round(acc, 6))
            print(f"repeat {rep + 1}: {name:7s} {len(hist.epochs):2d} epochs  {wall:8.2f} s  "
                  f"test accuracy {100 * acc:6.2f} %", flush=True)
    tc, tn = statistics.median(walls["cached"]), statistics.median(walls["naive"])
    print(f"{a.backbone} ({a.weights}), {a.dataset} {data.sizes()}, {a.image_size}px, "
          f"{torch.get_num_threads()} threads, {a.repeats} interleaved repeats")
    print(f"median wall time: cached {tc:.2f} s, naive {tn:.2f} s")
    print(f"wall-time ratio naive / cached (medians): {tn / tc:.1f}x "
          f"(per-repeat: {', '.join(f'{n / c:.1f}x' for c, n in zip(walls['cached'], walls['naive']))})")
    diff = max(abs(x - y) for x in accs["cached"] for y in accs["naive"])
    print(f"test accuracies: cached {sorted(accs['cached'])}, naive {sorted(accs['naive'])}; "
          f"largest difference {100 * diff:.2f} points")

if __name__ == "__main__":
    main()
