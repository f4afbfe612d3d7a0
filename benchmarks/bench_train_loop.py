"""The harness's training loop against a hand-written PyTorch loop, and bf16 / channels-last
against fp32 on this CPU, side by side in one run.

Part 1 (overhead): the same model (a deep copy, same init), the same in-memory data, AdamW
with the same learning rate and weight decay, the same batch size and threads. Each side
trains ``--epochs`` epochs (default 4) as one phase of a cell does: every training batch
(forward, loss, backward, step), then the validation split in eval mode, every epoch. The
harness side is ``harness.train.loop.run_phase`` with a fresh context, as a cell runs it
(train metrics, best-weights copies, its batching, and the once-per-phase count of the
training FLOPs, which costs about one extra step: a benchmark of one-epoch phases of 4
steps would mostly measure that); the hand side is the textbook loop. They alternate
(hand, harness, hand, harness, ...) ``--repeats`` times after one warm-up each, and the
medians give training images per second and the ratio harness / hand (goal: >= 0.95).

Part 2 (precision and layout): the harness loop in fp32, bf16 autocast, channels-last, and
both, interleaved the same way; images per second and the ratio to fp32. Then a short
fine-tuning run per variant (same seed, same data, pretrained MobileNetV2) and its test
accuracy, so the change in accuracy stands next to the change in speed.

Prints the CPU's bf16 support (AVX512-BF16 / AMX flags from /proc/cpuinfo) and the load
average before and after: the machine is shared, and the figures move with it.

    python benchmarks/bench_train_loop.py [--repeats 3] [--epochs 4] [--sizes 64 128] [--n-train 128]
        [--models mobilenetv2_100 resnet18] [--acc-epochs 2] [--skip-accuracy]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F

from harness.api.manager import get_plugins
from harness.measure.env import cpu_model
from harness.run.cell import load_data
from harness.run.config import AxisItem, CellConfig
from harness.train.device import cpu_bf16_support
from harness.train.loop import History, Phase, TrainContext, TrainSettings, evaluate, run_phase
from harness.train.model import TransferModel

VARIANTS = {"fp32": {}, "bf16": {"amp": "bf16"}, "channels_last": {"channels_last": True},
            "bf16+channels_last": {"amp": "bf16", "channels_last": True}}


def load(plugins, size: int, n_train: int, n_val: int, n_test: int):
    ds = AxisItem("fashion_mnist", (("n_test", n_test), ("n_train", n_train), ("n_val", n_val)))
    cfg = CellConfig(backbone=AxisItem("resnet18"), task=AxisItem("classification"), dataset=ds,
                     strategy=AxisItem("finetune"), weights="random", seed=0, image_size=size,
                     train={}, runtimes=(), profiles=(), latency={})
    return load_data(plugins, cfg)


def build(plugins, name: str, data, weights: str = "random"):
    spec, _ = plugins.backbones.resolve(name)
    torch.manual_seed(0)
    backbone = spec.build()
    ws, arg = plugins.weights.resolve(weights)
    ws.load(spec, backbone, arg, {"plugins": plugins})
    task = plugins.tasks.get("classification").factory()
    torch.manual_seed(0)
    return TransferModel(backbone, task.build_head(backbone, data.info), task.head_input), task


def settings(batch: int, lr: float, epochs: int = 1, **kw) -> TrainSettings:
    return TrainSettings(epochs=epochs, batch_size=batch, lr=lr, patience=99, device="cpu",
                         amp=kw.pop("amp", "off"), **kw)


def harness_epoch(model, task, data, s: TrainSettings) -> float:
    """One phase of ``s.epochs`` epochs as a cell runs it (a fresh context per phase, so the
    phase's once-per-fit costs, e.g. counting the training FLOPs, are in the time)."""
    ctx = TrainContext(task, data.info, s)
    phase = Phase("all", [g.name for g in model.layer_groups()], early_stopping=False)
    t0 = time.perf_counter()
    run_phase(model, phase, data.train, data.val, ctx, History())
    return time.perf_counter() - t0


def hand_epoch(model, data, batch: int, lr: float, wd: float, gen: torch.Generator,
               epochs: int = 1) -> float:
    """The textbook loop, ``epochs`` times: shuffle, float batches, forward, loss,
    backward, step; then validation."""
    t0 = time.perf_counter()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=wd)
    images, targets = data.train.images, data.train.targets
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), batch):
            idx = order[i:i + batch]
            x, y = images[idx].float() / 255.0, targets[idx]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for i in range(0, len(data.val), batch):
                F.cross_entropy(model(data.val.images[i:i + batch].float() / 255.0),
                                data.val.targets[i:i + batch])
    return time.perf_counter() - t0


def med(xs: list) -> float:
    return statistics.median(xs)


def overhead(plugins, a) -> None:
    print("\n== harness loop vs hand-written loop (fp32; train images/s, median of "
          f"{a.repeats}, interleaved; phases of {a.epochs} epochs) ==")
    print(f"{'model':18s} {'px':>4s} {'hand img/s':>11s} {'harness img/s':>14s} {'ratio':>6s}  "
          "hand s / harness s per repeat")
    for size in a.sizes:
        data = load(plugins, size, a.n_train, a.n_val, 64)
        for name in a.models:
            model, task = build(plugins, name, data)
            hand_m, harn_m = copy.deepcopy(model), copy.deepcopy(model)
            s = settings(a.batch, 1e-3, epochs=a.epochs)
            gen = torch.Generator().manual_seed(0)
            hand_epoch(hand_m, data, a.batch, s.lr, s.weight_decay, gen)  # warm-up
            harness_epoch(harn_m, task, data, settings(a.batch, 1e-3))
            hand, harn = [], []
            for _ in range(a.repeats):
                hand.append(hand_epoch(hand_m, data, a.batch, s.lr, s.weight_decay, gen,
                                       a.epochs))
                harn.append(harness_epoch(harn_m, task, data, s))
            n = len(data.train) * a.epochs
            h, m = n / med(hand), n / med(harn)
            pairs = " ".join(f"{x:.2f}/{y:.2f}" for x, y in zip(hand, harn))
            print(f"{name:18s} {size:4d} {h:11.1f} {m:14.1f} {m / h:6.3f}  {pairs}", flush=True)


def precision(plugins, a) -> None:
    print("\n== bf16 autocast and channels-last vs fp32 (harness loop; train images/s, median "
          f"of {a.repeats}, interleaved; phases of {a.epochs} epochs) ==")
    print(f"{'model':18s} {'px':>4s} " + " ".join(f"{v:>20s}" for v in VARIANTS))
    for size in a.sizes:
        data = load(plugins, size, a.n_train, a.n_val, 64)
        for name in a.models:
            model, task = build(plugins, name, data)
            models = {v: copy.deepcopy(model) for v in VARIANTS}
            times: dict = {v: [] for v in VARIANTS}
            for v in VARIANTS:  # warm-up (oneDNN builds its kernels for each layout/dtype)
                harness_epoch(models[v], task, data, settings(a.batch, 1e-3, **VARIANTS[v]))
            for _ in range(a.repeats):
                for v in VARIANTS:
                    times[v].append(harness_epoch(models[v], task, data, settings(
                        a.batch, 1e-3, epochs=a.epochs, **VARIANTS[v])))
            n = len(data.train) * a.epochs
            base = n / med(times["fp32"])
            cells = []
            for v in VARIANTS:
                ips = n / med(times[v])
                cells.append(f"{ips:7.1f} ({ips / base:5.2f}x)")
            print(f"{name:18s} {size:4d} " + " ".join(f"{c:>20s}" for c in cells), flush=True)


def accuracy(plugins, a) -> None:
    print(f"\n== test accuracy of a short run per variant (mobilenetv2_100, packaged ImageNet "
          f"weights, finetune {a.acc_epochs} epochs, {a.acc_n_train} train images, 64 px, "
          "seed 0; fashion_mnist) ==")
    data = load(plugins, 64, a.acc_n_train, 200, 500)
    model0, task = build(plugins, "mobilenetv2_100", data, weights="packaged")
    base = None
    for v, kw in VARIANTS.items():
        model = copy.deepcopy(model0)
        s = TrainSettings(epochs=a.acc_epochs, batch_size=a.batch, lr=1e-3, patience=99,
                          device="cpu", amp=kw.get("amp", "off"),
                          channels_last=kw.get("channels_last", False))
        ctx = TrainContext(task, data.info, s)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        run_phase(model, Phase("all", [g.name for g in model.layer_groups()],
                               early_stopping=False), data.train, data.val, ctx, History())
        secs = time.perf_counter() - t0
        acc = evaluate(model.eval(), data.test, ctx)[1]["accuracy"]
        base = acc if base is None else base
        print(f"{v:20s} test accuracy {acc:.3f} ({(acc - base) * 100:+.1f} points vs fp32), "
              f"training {secs:.1f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mobilenetv2_100", "resnet18"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--n-train", type=int, default=128)
    ap.add_argument("--n-val", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4,
                    help="epochs of each timed phase in the overhead part (a cell's phase "
                         "runs several; its once-per-phase costs are spread over them)")
    ap.add_argument("--acc-epochs", type=int, default=2)
    ap.add_argument("--acc-n-train", type=int, default=600)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-precision", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from harness.measure.allocator import tune
    print(f"allocator: {tune()}")  # as `bench` runs
    flags = cpu_bf16_support()
    print(f"cpu: {cpu_model()}; bf16 flags: avx512_bf16={flags['avx512_bf16']} "
          f"amx_bf16={flags['amx_bf16']}; torch {torch.__version__}, {a.threads} threads, "
          f"batch {a.batch}, {a.n_train} train + {a.n_val} val images per epoch")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    plugins = get_plugins()
    if not a.skip_overhead:
        overhead(plugins, a)
    if not a.skip_precision:
        precision(plugins, a)
    if not a.skip_accuracy:
        accuracy(plugins, a)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
