"""A :class:`harness.model.Backbone` over any timm CNN, with timm's own layer groups."""
from __future__ import annotations

import torch
from torch import nn

from harness.model import Backbone, LayerGroup


class TimmBackbone(Backbone):
    """Wraps ``timm.create_model(name, num_classes=0)``.

    Args:
        model_name: a timm architecture name.
        pool: ``"head"`` uses timm's pre-logits path (for MobileNetV3 this includes its
            1x1 head conv); ``"avg"`` global-average-pools the last feature map and drops
            timm's pre-logits layers (VGG's fc6/fc7), like Keras ``include_top=False``,
            which is what the lecture's "VGG19 + 2 dense layers" models put their new
            layers on.
    """

    def __init__(self, model_name: str, pool: str = "head"):
        super().__init__()
        import timm

        if pool not in ("head", "avg"):
            raise ValueError(f"pool must be 'head' or 'avg', not {pool!r}")
        self.model_name = model_name
        self.pool = pool
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0)
        if pool == "avg" and hasattr(self.model, "pre_logits"):
            self.model.pre_logits = nn.Identity()
        cfg = getattr(self.model, "pretrained_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", self.mean))
        self.std = tuple(cfg.get("std", self.std))
        self.input_size = int(cfg.get("input_size", (3, 224, 224))[-1])
        self.feature_channels = int(self.model.num_features)
        if pool == "avg":
            self.num_features = self.feature_channels
        else:
            self.num_features = int(getattr(self.model, "head_hidden_size", None)
                                    or self.model.num_features)

    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.model.forward_features(x)
        if self.pool == "avg":
            return f.mean(dim=(2, 3))
        return self.model.forward_head(f, pre_logits=True)

    def layer_groups(self) -> list[LayerGroup]:
        """timm's coarse groups (stem, then stages), input to output.

        Parameters timm's matcher leaves out (e.g. a head conv) join the last group, so
        the groups always hold every parameter exactly once.
        """
        from timm.models import group_parameters

        matcher = self.model.group_matcher(coarse=True)
        grouped = group_parameters(self.model, matcher)
        names = [n for n, p in self.named_parameters()]
        groups, seen = [], set()
        for i, (gid, params) in enumerate(sorted(grouped.items())):
            full = [f"model.{p}" for p in params if f"model.{p}" in set(names)]
            if not full:
                continue
            groups.append(LayerGroup(_group_name(i, full), full))
            seen.update(full)
        rest = [n for n in names if n not in seen]
        if rest:
            if groups:
                groups[-1].params.extend(rest)
            else:
                groups.append(LayerGroup("all", rest))
        return groups


def _group_name(index: int, params: list[str]) -> str:
    """A readable name from the common module prefix of a group's parameters."""
    parts = [p.split(".")[1:-1] for p in params]
    common = []
    for segs in zip(*parts):
        if all(s == segs[0] for s in segs):
            common.append(segs[0])
        else:
            break
    label = ".".join(common) if common else "stem" if index == 0 else f"group{index}"
    return f"{index}_{label}".replace("/", "_")
