"""EfficientNet-Lite0 (Tan & Le 2019, the Lite variant for mobile accelerators) as a
transfer-bench backbone, built with timm's ``tf_efficientnet_lite0``.

The ``tf_`` variant pads like TensorFlow ("same" padding), which the official TF
checkpoint needs; timm's ``efficientnet_lite0`` takes the same tensors but pads
differently and loses accuracy.
"""
from __future__ import annotations

import torch

from harness.train.model import Backbone, LayerGroup

ARCH = "tf_efficientnet_lite0"


def create_timm_model(num_classes: int = 0) -> torch.nn.Module:
    """A randomly initialised timm ``tf_efficientnet_lite0`` (``num_classes=0``: headless)."""
    import timm
    return timm.create_model(ARCH, pretrained=False, num_classes=num_classes)


class EfficientNetLite0(Backbone):
    """Headless EfficientNet-Lite0: 1280 pooled features, 7 MBConv stages.

    Layer groups, input to output: ``stem`` (conv_stem, bn1), ``blocks.0`` ... ``blocks.6``,
    ``head_conv`` (the 1x1 conv to 1280 channels and its batch norm).
    """

    def __init__(self):
        super().__init__()
        self.model = create_timm_model(num_classes=0)
        self.num_features = self.feature_channels = int(self.model.num_features)
        # the official checkpoint was trained on inputs scaled to [-1, 1]
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        self.input_size = 224

    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def layer_groups(self) -> list[LayerGroup]:
        groups: dict[str, list[str]] = {}
        for name, _ in self.named_parameters():
            inner = name[len("model."):]
            if inner.startswith(("conv_stem.", "bn1.")):
                key = "stem"
            elif inner.startswith("blocks."):
                key = "blocks." + inner.split(".")[1]
            else:  # conv_head, bn2
                key = "head_conv"
            groups.setdefault(key, []).append(name)
        order = ["stem"] + sorted((k for k in groups if k.startswith("blocks.")),
                                  key=lambda k: int(k.split(".")[1])) + ["head_conv"]
        return [LayerGroup(k, groups[k]) for k in order if k in groups]
