"""What a backbone plugin builds, and the model the harness trains and exports.

A :class:`Backbone` is any ``torch.nn.Module`` that gives a pooled feature vector
(``forward``), a spatial feature map (``forward_spatial``) and its ordered layer groups.
The :class:`TransferModel` puts a task's head on top and bakes the input normalization
in, so the exported ONNX file takes images scaled to [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn


@dataclass
class LayerGroup:
    """A named, ordered slice of a model's parameters (by parameter name)."""

    name: str
    params: list[str] = field(default_factory=list)


@dataclass
class SourceClassifier:
    """The classifier the backbone's weights were trained with, on its pooled features.

    Weight sources that have it set ``backbone.source_classifier`` (the packaged ImageNet
    MobileNetV2 keeps torchvision's 1000-class layer, ``source:DATASET`` keeps the linear
    classifier it pretrained). Transferability estimators that need the source task's
    predictions (LEEP, NCE) use it; the model that trains and exports never does.

    Attributes:
        weight: ``(Z, num_features)``; bias: ``(Z,)``.
        classes: what the ``Z`` source classes are, e.g. ``"ImageNet-1k"``.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    classes: str = ""

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Source-class logits of pooled features ``(B, num_features)``."""
        return features.to(self.weight.dtype) @ self.weight.T + self.bias


class Backbone(nn.Module):
    """Interface of a backbone. Subclasses set the attributes and implement the methods.

    A worked example with its test: docs/plugins/backbone.md.

    Attributes:
        num_features: size of the pooled feature vector returned by ``forward``.
        feature_channels: channels of the map returned by ``forward_spatial``.
        mean, std: input normalization of the weights (replaced by weight sources).
        input_size: the size the weights were trained at (for ``bench list``).
        source_classifier: the weights' own classifier (:class:`SourceClassifier`) where
            the weight source kept it, else ``None``.
    """

    num_features: int
    feature_channels: int
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    input_size: int = 224
    source_classifier: Optional[SourceClassifier] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """Pooled features ``(B, num_features)`` of normalized images ``(B, 3, H, W)``."""
        raise NotImplementedError

    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Spatial feature map ``(B, feature_channels, h, w)`` for dense heads."""
        raise NotImplementedError

    def layer_groups(self) -> list[LayerGroup]:  # pragma: no cover - interface
        """Groups from input to output that hold every parameter exactly once."""
        raise NotImplementedError


class TransferModel(nn.Module):
    """Backbone + task head, with normalization inside.

    Args:
        backbone: a :class:`Backbone`.
        head: the task's head; it receives pooled features or the spatial map, as
            ``head_input`` says.
        head_input: ``"pooled"`` or ``"spatial"``.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, head_input: str = "pooled"):
        super().__init__()
        if head_input not in ("pooled", "spatial"):
            raise ValueError(f"head_input must be 'pooled' or 'spatial', not {head_input!r}")
        self.backbone = backbone
        self.head = head
        self.head_input = head_input
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, -1, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output for images in [0, 1] (what the head consumes)."""
        x = (x - self.mean) / self.std
        if self.head_input == "pooled":
            return self.backbone(x)
        return self.backbone.forward_spatial(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def layer_groups(self) -> list[LayerGroup]:
        """Backbone groups (input to output), then the head as the last group."""
        groups = [LayerGroup(f"backbone.{g.name}", [f"backbone.{p}" for p in g.params])
                  for g in self.backbone.layer_groups()]
        groups.append(LayerGroup("head", [f"head.{n}" for n, _ in self.head.named_parameters()]))
        return groups


def group_parameters(model: nn.Module, group: LayerGroup) -> list[nn.Parameter]:
    named = dict(model.named_parameters())
    return [named[n] for n in group.params]


def group_modules(model: nn.Module, group: LayerGroup) -> list[nn.Module]:
    """Leaf modules whose parameters all belong to ``group`` (used for batch-norm policy)."""
    wanted = set(group.params)
    out = []
    for mname, mod in model.named_modules():
        own = [f"{mname}.{p}" if mname else p for p, _ in mod.named_parameters(recurse=False)]
        if own and all(p in wanted for p in own):
            out.append(mod)
    return out


def set_trainable(model: TransferModel, groups: list[str]) -> None:
    """Make exactly the named groups trainable; everything else gets requires_grad=False."""
    names = {g.name for g in model.layer_groups()}
    unknown = set(groups) - names
    if unknown:
        raise ValueError(f"unknown layer group(s) {sorted(unknown)}; groups are {sorted(names)}")
    keep = set(groups)
    named = dict(model.named_parameters())
    for g in model.layer_groups():
        for p in g.params:
            named[p].requires_grad_(g.name in keep)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def measure_backbone(build, image_size: int | None = None) -> dict:
    """Parameter count, fp32 weight size (MB) and GMACs of one image for a backbone.

    ``build()`` is called on PyTorch's meta device (no memory, no initialisation), so
    measuring VGG-19 costs milliseconds; a backbone that cannot be built there is built
    on the CPU instead. MACs are counted by ``torch.utils.flop_counter`` at
    ``image_size`` (default: the backbone's ``input_size``); ``gmacs`` is None when the
    counter cannot trace an op (said rather than guessed).

    Returns:
        ``{"params", "weights_mb", "gmacs", "gmacs_at", "num_features"}``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.device("meta"):
            bb = build().eval()
        device = "meta"
    except Exception:  # e.g. a build that fills tensors from numpy: build it for real
        bb = build().eval()
        device = "cpu"
    size = int(image_size or getattr(bb, "input_size", 224))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            bb(torch.zeros(1, 3, size, size, device=device))
        gmacs = counter.get_total_flops() / 2e9
    except Exception:  # an op the counter cannot trace: say unknown rather than guess
        gmacs = None
    return {"params": sum(p.numel() for p in bb.parameters()),
            "weights_mb": sum(t.numel() * t.element_size()
                              for t in bb.state_dict().values()) / 2**20,
            "gmacs": gmacs, "gmacs_at": size, "num_features": getattr(bb, "num_features", None)}


def parameter_fingerprints(model: nn.Module) -> dict[str, bytes]:
    """A digest of every parameter's exact bytes, by name (no copy of the weights kept).

    Compare two with :func:`changed_parameters`: that is how ``bench run`` counts the
    parameters training changed ("trained M") and how the test kit checks that what a
    strategy declares frozen stays bit-identical.
    """
    import hashlib

    out = {}
    for name, p in model.named_parameters():
        t = p.detach().cpu().contiguous().reshape(-1)
        out[name] = hashlib.blake2b(t.view(torch.uint8).numpy(), digest_size=16).digest()
    return out


def changed_parameters(model: nn.Module, before: dict[str, bytes]) -> list[str]:
    """Names of the parameters whose bytes differ from ``before`` (or are new)."""
    now = parameter_fingerprints(model)
    return [n for n, d in now.items() if before.get(n) != d]


class HeadOnly(nn.Module):
    """A model's head seen as a model of its own, for training on cached features."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x):
        return self.head(x)

    def layer_groups(self) -> list[LayerGroup]:
        return [LayerGroup("head", [f"head.{n}" for n, _ in self.head.named_parameters()])]
