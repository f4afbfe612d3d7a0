"""Pose: K keypoints read from heatmaps on the backbone's spatial feature map.

The head follows Simple Baselines (Xiao et al., "Simple Baselines for Human Pose
Estimation and Tracking", ECCV 2018): transposed convolutions upsample the last feature
map, a 1x1 convolution gives one heatmap per keypoint. Coordinates are read from the
heatmaps with a differentiable soft-argmax (Sun et al., "Integral Human Pose
Regression", ECCV 2018), so the model outputs coordinates directly and exports to ONNX.

Targets are ``(N, K, 3)``: ``x, y`` normalized to [0, 1] by the image width and height,
and visibility ``v`` (0 = not labelled; > 0 = labelled). Outputs are ``(N, K, 2)``.
"""
from __future__ import annotations

import torch
from torch import nn

from harness.train.task import Task

REFERENCES = ("bbox", "image")


class SoftArgmaxHead(nn.Module):
    """3x3 conv -> ``upsample`` x (stride-2 transposed conv) -> 1x1 conv to K heatmaps ->
    soft-argmax to ``(B, K, 2)`` coordinates in [0, 1]."""

    def __init__(self, in_channels: int, num_keypoints: int, hidden: int = 128,
                 upsample: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        for _ in range(upsample):
            layers += [nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.heatmaps = nn.Conv2d(hidden, num_keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.heatmaps(self.body(x))  # (B, K, H, W)
        b, k, hh, ww = h.shape
        prob = h.flatten(2).softmax(-1).view(b, k, hh, ww)
        # corner-aligned grid, so the whole [0, 1] range is reachable
        xs = torch.linspace(0.0, 1.0, ww, device=x.device, dtype=prob.dtype)
        ys = torch.linspace(0.0, 1.0, hh, device=x.device, dtype=prob.dtype)
        px = (prob.sum(2) * xs).sum(-1)
        py = (prob.sum(3) * ys).sum(-1)
        return torch.stack([px, py], -1)


def pck(pred: torch.Tensor, target: torch.Tensor, alpha: float, reference: str) -> float:
    """Percentage of Correct Keypoints (Yang & Ramanan, PAMI 2013).

    A labelled keypoint is correct when its distance to the ground truth is at most
    ``alpha * max(h, w)``, where ``(w, h)`` is the size of the tight box around the
    image's labelled ground-truth keypoints (``reference="bbox"``) or of the whole image
    (``reference="image"``, i.e. 1 in normalized coordinates).
    """
    vis = target[..., 2] > 0
    if not vis.any():
        return float("nan")
    xy = target[..., :2]
    if reference == "bbox":
        big = torch.finfo(xy.dtype).max
        lo = torch.where(vis[..., None], xy, torch.full_like(xy, big)).amin(1)
        hi = torch.where(vis[..., None], xy, torch.full_like(xy, -big)).amax(1)
        ref = (hi - lo).amax(-1).clamp(min=1e-6)[:, None]
    else:
        ref = torch.ones(xy.shape[0], 1, dtype=xy.dtype, device=xy.device)
    dist = (pred[..., :2] - xy).norm(dim=-1)
    return float((dist <= alpha * ref)[vis].float().mean())


_SIDES = (("left", "right"), ("l_", "r_"), ("_l", "_r"))


def mirror_pairs(names: list) -> list:
    """Index pairs of keypoints that swap under a horizontal flip: names that differ only by
    "left"/"right" (also ``l_``/``r_`` prefixes and ``_l``/``_r`` suffixes), case-insensitive.
    A keypoint named exactly "left" pairs with one named "right"."""
    low = [str(n).lower() for n in names]
    index = {n: i for i, n in enumerate(low)}
    pairs = []
    for i, n in enumerate(low):
        for a, b in _SIDES:
            if a.startswith("_"):
                other = n[: -len(a)] + b if n.endswith(a) else None
            elif a.endswith("_"):
                other = b + n[len(a):] if n.startswith(a) else None
            else:
                other = n.replace(a, b) if a in n else None
            j = index.get(other) if other is not None else None
            if j is not None and j != i and (min(i, j), max(i, j)) not in pairs:
                pairs.append((min(i, j), max(i, j)))
    return pairs


class Pose(Task):
    """Keypoint localization from the spatial feature map.

    Args:
        hidden: channels of the head's convolutions.
        upsample: number of stride-2 transposed convolutions (heatmap = map x 2**upsample).
        alpha: PCK threshold (default 0.2, "PCK@0.2").
        reference: ``bbox`` (tight box of the labelled ground-truth keypoints) or ``image``.

    Loss: mean L1 distance over labelled keypoints (Sun et al. 2018 train integral
    regression with L1). Metrics: ``pck`` (primary, PCK@alpha against ``reference``),
    ``pck_image`` (PCK@alpha against the image size), ``mean_error`` (normalized units).
    """

    name = "pose"
    head_input = "spatial"
    primary_metric = "pck"
    higher_is_better = True

    def __init__(self, hidden: int = 128, upsample: int = 2, alpha: float = 0.2,
                 reference: str = "bbox"):
        if reference not in REFERENCES:
            raise ValueError(f"pose reference {reference!r} is not one of {', '.join(REFERENCES)}")
        if int(upsample) < 0:
            raise ValueError("pose upsample must be >= 0")
        self.hidden = int(hidden)
        self.upsample = int(upsample)
        self.alpha = float(alpha)
        self.reference = reference

    def build_head(self, backbone, info):
        if info.num_keypoints < 1:
            raise ValueError(f"pose needs keypoints; dataset {info.name} has none "
                             f"(DataInfo.num_keypoints = 0)")
        return SoftArgmaxHead(backbone.feature_channels, info.num_keypoints, self.hidden,
                              self.upsample)

    def check_targets(self, targets, info):
        """``(N, num_keypoints, 3)`` of ``(x, y, v)``; labelled (v > 0) x, y in [0, 1]."""
        problem = super().check_targets(targets, info)
        if problem:
            return problem
        k = info.num_keypoints
        if targets.dim() != 3 or targets.shape[1:] != (k, 3):
            return (f"keypoints have shape {tuple(targets.shape)}; give (N, {k}, 3) of "
                    f"(x, y, v) for DataInfo.num_keypoints={k}")
        t = targets.float()
        finite = torch.isfinite(t).all(dim=(1, 2))
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten()
            return (f"{len(bad)} example(s) have a NaN or infinite keypoint value (first: "
                    f"example {int(bad[0])}); x, y and v must all be finite, also for "
                    f"unlabelled keypoints (give them 0, 0, 0), or the loss is NaN")
        xy = t[..., :2][t[..., 2] > 0]
        if len(xy) and (not bool(torch.isfinite(xy).all()) or float(xy.min()) < 0
                        or float(xy.max()) > 1):
            return ("labelled keypoints (v > 0) must be normalized to [0, 1] by the image "
                    f"size; found {float(xy.min()):.3g}..{float(xy.max()):.3g}")
        return None

    def flip_targets(self, targets, info):
        """Normalized (x, y, v) keypoints: x -> 1 - x, and each left keypoint trades places
        with its right partner (found by name, see :func:`mirror_pairs`), as pose
        estimators' flip augmentation does (e.g. COCO's flip pairs)."""
        out = targets.clone()
        out[..., 0] = 1 - targets[..., 0]
        for i, j in mirror_pairs(info.keypoint_names):
            out[:, [i, j]] = out[:, [j, i]]
        return out

    def loss(self, outputs, targets):
        vis = (targets[..., 2] > 0).to(outputs.dtype)
        err = (outputs - targets[..., :2].to(outputs.dtype)).abs().sum(-1)
        return (err * vis).sum() / vis.sum().clamp(min=1.0)

    def metrics(self, outputs, targets, info):
        if len(targets) == 0:
            return {"pck": float("nan")}
        pred, tgt = outputs.detach().float(), targets.float()
        vis = tgt[..., 2] > 0
        err = (pred - tgt[..., :2]).norm(dim=-1)
        return {
            "pck": pck(pred, tgt, self.alpha, self.reference),
            "pck_image": pck(pred, tgt, self.alpha, "image"),
            "mean_error": float(err[vis].mean()) if vis.any() else float("nan"),
            "pck_reference": f"PCK@{self.alpha:g} of max(w, h) of the {self.reference}"
                             + (" of the labelled keypoints" if self.reference == "bbox" else ""),
        }
