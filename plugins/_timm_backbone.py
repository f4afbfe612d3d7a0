"""A :class:`harness.train.model.Backbone` over any timm CNN, with timm's own layer groups."""
from __future__ import annotations

import torch
from torch import nn

from harness.train.model import Backbone, LayerGroup


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
        if pool not in ("head", "avg"):
            raise ValueError(f"pool must be 'head' or 'avg', not {pool!r}")
        self.model_name = model_name
        self.pool = pool
        self.model = _create(model_name, drop_pre_logits=pool == "avg")
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
        known = set(names)
        parts, labels, seen = [], [], set()
        for _gid, params in sorted(grouped.items()):
            full = [f"model.{p}" for p in params if f"model.{p}" in known]
            if not full:
                continue
            if parts and _only_normalization(self, full):
                # timm gives VGG-BN's batch norms groups of their own; a norm belongs
                # with the conv it normalizes, so "the first n layers" means n convs
                parts[-1].extend(full)
            else:
                parts.append(full)
                labels.append(_group_name(len(parts) - 1, full))
            seen.update(full)
        rest = [n for n in names if n not in seen]
        if rest:
            if parts:
                parts[-1].extend(rest)
            else:
                parts.append(rest)
                labels.append("0_all")
        return [LayerGroup(label, ps) for label, ps in zip(labels, parts)]


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _only_normalization(root: nn.Module, params: list[str]) -> bool:
    modules = dict(root.named_modules())
    return all(isinstance(modules.get(p.rsplit(".", 1)[0]), _NORMS) for p in params)


def _create(model_name: str, drop_pre_logits: bool) -> nn.Module:
    """``timm.create_model(name, num_classes=0)``, without VGG's pre-logits when asked.

    VGG's pre-logits (fc6/fc7 as convs) hold 102 M of VGG-16's 117 M parameters, and
    initialising them only to throw them away takes seconds. So the model is laid out on
    the meta device, the pre-logits are dropped, and the rest is materialised and
    initialised by the model's own init function. Models without such a function take
    the plain path.
    """
    import timm

    if drop_pre_logits:
        with torch.device("meta"):
            meta = timm.create_model(model_name, pretrained=False, num_classes=0)
        init = getattr(meta, "_initialize_weights", None) or getattr(meta, "init_weights", None)
        if hasattr(meta, "pre_logits") and callable(init) and torch.get_default_device().type != "meta":
            meta.pre_logits = nn.Identity()
            model = meta.to_empty(device=torch.get_default_device())
            init = getattr(model, init.__name__)
            with torch.no_grad():
                init()
                for m in model.modules():  # to_empty leaves buffers uninitialised
                    if hasattr(m, "reset_running_stats"):
                        m.reset_running_stats()
            if all(n.endswith(("running_mean", "running_var", "num_batches_tracked"))
                   for n, _ in model.named_buffers()):
                return model
    model = timm.create_model(model_name, pretrained=False, num_classes=0)
    if drop_pre_logits and hasattr(model, "pre_logits"):
        model.pre_logits = nn.Identity()
    return model


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
