"""In-memory datasets: images decoded and resized once, kept as uint8 tensors.

Dataset plugins return :class:`DataSplits`. Images are ``uint8`` tensors of shape
``(N, 3, S, S)``; batches are turned into floats in [0, 1] as they are drawn, and the
model normalizes them itself (see :class:`harness.model.TransferModel`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
import torch.nn.functional as F


@dataclass
class DataInfo:
    """What a task needs to know about a dataset.

    Attributes:
        name: dataset name as shown in results.
        num_classes: number of classes (classification).
        class_names: class names, in label order.
        num_keypoints: keypoints per image (pose).
        synthetic: True for generated data; shown wherever results appear.
        source: where the data came from (a path, a package, an address).
        notes: counted skips and other facts the user should see.
    """

    name: str
    num_classes: int = 0
    class_names: list = field(default_factory=list)
    num_keypoints: int = 0
    synthetic: bool = False
    source: str = ""
    notes: list = field(default_factory=list)


@dataclass
class TensorSplit:
    """One split: inputs and targets (labels, boxes, keypoints).

    ``images`` are uint8 ``(N, 3, S, S)`` (scaled to [0, 1] per batch) or, for strategies
    that train on cached backbone features, float tensors used as they are.
    """

    images: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype == torch.uint8 and self.images.dim() != 4:
            raise ValueError("uint8 images must have shape (N, C, H, W)")
        if len(self.images) != len(self.targets):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None,
                augment=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(float images in [0, 1], targets)`` batches."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            x = self.images[idx]
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
            y = self.targets[idx]
            if augment is not None:
                x, y = augment(x, y, generator)
            yield x, y


@dataclass
class DataSplits:
    """Train, validation and test splits plus the dataset's :class:`DataInfo`."""

    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    info: DataInfo

    def sizes(self) -> dict:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def to_rgb_resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` or ``(N, H, W)`` grey/RGB -> uint8 ``(N, 3, size, size)``."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    out = []
    for chunk in images.split(2048):
        x = chunk.float()
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > size)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1).contiguous()
        out.append(x)
    return torch.cat(out) if out else images.new_zeros((0, 3, size, size))


def stratified_split(labels: torch.Tensor, fractions: tuple, seed: int) -> list[torch.Tensor]:
    """Indices for splits with the given fractions, stratified by label, deterministic."""
    g = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        start = 0
        for i, f in enumerate(fractions):
            end = len(idx) if i == len(fractions) - 1 else start + int(round(f * len(idx)))
            parts[i].append(idx[start:end])
            start = end
    return [torch.cat(p).sort().values for p in parts]
