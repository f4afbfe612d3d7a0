"""``shapes``: a generated dataset with one box and four keypoints per image (synthetic).

Serves the default localization and pose cells where no real data with boxes or
keypoints installs offline. Each image shows one convex quadrilateral (a "kite") of a
random colour, size, aspect and position on a cluttered background (a colour gradient,
noise and distractor discs). Targets: its tight box, and its four vertices in the fixed
order top, right, bottom, left (all visible); for classification, the quadrant that holds
the kite's centre (4 classes: a task where the position matters, which globally pooled
features must keep). Everything is labelled synthetic.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from harness.train.data import DataInfo, DataSplits, TensorSplit

KEYPOINTS = ["top", "right", "bottom", "left"]
QUADRANTS = ["top-left", "top-right", "bottom-left", "bottom-right"]
SUPERSAMPLE = 4


def _render(rng: random.Random, size: int) -> tuple[torch.Tensor, list]:
    from PIL import Image, ImageDraw

    big = size * SUPERSAMPLE
    c0 = [rng.randint(0, 255) for _ in range(3)]
    c1 = [rng.randint(0, 255) for _ in range(3)]
    # numpy, not torch: tiny per-image tensor ops pay torch's thread overhead
    ramp = np.linspace(0.0, 1.0, big, dtype=np.float32)
    angle = rng.random() * math.tau
    t = np.clip(math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None], 0, 1)
    bg = np.stack([c0[k] + (c1[k] - c0[k]) * t for k in range(3)], -1)
    im = Image.fromarray(np.clip(bg.round(), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(rng.randint(1, 3)):  # distractors
        r = rng.uniform(0.04, 0.12) * big
        x, y = rng.uniform(0, big), rng.uniform(0, big)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rng.randint(0, 255) for _ in range(3)))
    cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
    hw = rng.uniform(0.12, min(cx, 1 - cx) - 0.02)
    hh = rng.uniform(0.12, min(cy, 1 - cy) - 0.02)
    j = lambda s: rng.uniform(-0.3, 0.3) * s  # noqa: E731 - vertex jitter along the edge
    pts = [(cx + j(hw), cy - hh), (cx + hw, cy + j(hh)), (cx + j(hw), cy + hh),
           (cx - hw, cy + j(hh))]
    fg = tuple(255 - v if rng.random() < 0.5 else rng.randint(0, 255) for v in c0)
    draw.polygon([(x * big, y * big) for x, y in pts], fill=fg, outline=(0, 0, 0))
    im = im.resize((size, size), Image.LANCZOS)
    noise = np.random.default_rng(rng.getrandbits(31)).standard_normal((size, size, 3))
    arr = np.clip((np.asarray(im, dtype=np.float32) + 8 * noise).round(), 0, 255).astype(np.uint8)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()), pts


def make_split(n: int, size: int, seed: int, task: str) -> TensorSplit:
    rng = random.Random(seed)
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    kps = torch.empty((n, len(KEYPOINTS), 3))
    kp_list = []
    for i in range(n):
        images[i], pts = _render(rng, size)
        kp_list.append(pts)
    kps[:, :, :2] = torch.tensor(kp_list, dtype=torch.float32)
    kps[:, :, 2] = 2.0
    if task == "pose":
        return TensorSplit(images, kps)
    if task == "classification":  # which quadrant holds the kite's centre: 0 TL 1 TR 2 BL 3 BR
        centre = kps[:, :, :2].mean(1)
        return TensorSplit(images, ((centre[:, 0] >= 0.5).long()
                                    + 2 * (centre[:, 1] >= 0.5).long()))
    boxes = torch.cat([kps[:, :, :2].amin(1), kps[:, :, :2].amax(1)], 1)
    return TensorSplit(images, boxes)


def load_shapes(task: str, image_size: int, seed: int, cache_dir: Path, n_train: int = 512,
                n_val: int = 128, n_test: int = 128) -> DataSplits:
    """Generated kites; identical for the same seed, size and counts."""
    if task not in ("localization", "pose", "classification"):
        raise ValueError(f"shapes has labels for localization, pose and classification, "
                         f"not {task!r}")
    splits = [make_split(n, image_size, seed * 1000 + k, task)
              for k, n in enumerate((n_train, n_val, n_test))]
    info = DataInfo("shapes", num_keypoints=len(KEYPOINTS) if task == "pose" else 0,
                    num_classes=4 if task == "classification" else 0,
                    class_names=(list(KEYPOINTS) if task == "pose" else QUADRANTS
                                 if task == "classification" else []),
                    keypoint_names=list(KEYPOINTS) if task == "pose" else [], synthetic=True,
                    source="generated (plugins.datasets.synthetic)",
                    notes=["SYNTHETIC: generated kites on cluttered backgrounds"])
    return DataSplits(*splits, info)
