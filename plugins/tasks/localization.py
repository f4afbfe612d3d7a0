"""Localization: regress one box per image from the pooled features (lecture, part 2).

Targets are ``(N, 4)`` float boxes ``(xmin, ymin, xmax, ymax)`` normalized by the image
width and height to [0, 1]. The head is the classification head's dense layers with four
outputs and a ``linear``, ``relu`` or ``sigmoid`` output activation, as the lecture
describes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.train.task import Task

from .classification import dense_head

OUTPUTS = ("linear", "relu", "sigmoid")
LOSSES = ("smooth_l1", "giou", "smooth_l1+giou")


def ordered(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes with ``x1 <= x2`` and ``y1 <= y2`` (GIoU paper, Algorithm 2, step 1)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([torch.minimum(x1, x2), torch.minimum(y1, y2),
                        torch.maximum(x1, x2), torch.maximum(y1, y2)], -1)


def iou_and_giou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row IoU and generalized IoU of ``(N, 4)`` boxes.

    GIoU = IoU - |C \\ (A u B)| / |C| with C the smallest box enclosing both
    (Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019, Algorithm 1/2).
    """
    p, t = ordered(pred), ordered(target)
    area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    area_t = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    iw = (torch.minimum(p[:, 2], t[:, 2]) - torch.maximum(p[:, 0], t[:, 0])).clamp(min=0)
    ih = (torch.minimum(p[:, 3], t[:, 3]) - torch.maximum(p[:, 1], t[:, 1])).clamp(min=0)
    inter = iw * ih
    union = area_p + area_t - inter
    iou = inter / union.clamp(min=1e-9)
    cw = torch.maximum(p[:, 2], t[:, 2]) - torch.minimum(p[:, 0], t[:, 0])
    ch = torch.maximum(p[:, 3], t[:, 3]) - torch.minimum(p[:, 1], t[:, 1])
    area_c = (cw * ch).clamp(min=1e-9)
    return iou, iou - (area_c - union) / area_c


class Localization(Task):
    """Single-object box regression.

    Args:
        hidden: dense layer sizes before the 4 outputs ("256-128" from the command line).
        dropout: dropout after each dense layer.
        output: output activation, one of ``linear``, ``relu``, ``sigmoid``.
        loss: ``smooth_l1``, ``giou`` (1 - GIoU, Rezatofighi et al. 2019) or
            ``smooth_l1+giou`` (their sum).
        beta: smooth-L1 transition point (in normalized coordinates).

    Metrics: ``mean_iou`` (primary), ``acc_iou50`` (share of boxes with IoU >= 0.5),
    ``mean_abs_error`` (of the four coordinates).
    """

    name = "localization"
    head_input = "pooled"
    primary_metric = "mean_iou"
    higher_is_better = True

    def __init__(self, hidden=(256, 256), dropout: float = 0.1, output: str = "sigmoid",
                 loss: str = "smooth_l1+giou", beta: float = 0.05):
        if isinstance(hidden, str):
            hidden = tuple(int(h) for h in hidden.split("-") if h)
        elif isinstance(hidden, int):
            hidden = (hidden,)
        if output not in OUTPUTS:
            raise ValueError(f"localization output {output!r} is not one of {', '.join(OUTPUTS)}")
        if loss not in LOSSES:
            raise ValueError(f"localization loss {loss!r} is not one of {', '.join(LOSSES)}")
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        self.output = output
        self.loss_name = loss
        self.beta = float(beta)

    def build_head(self, backbone, info):
        layers = [dense_head(backbone.num_features, self.hidden, 4, self.dropout)]
        if self.output == "sigmoid":
            layers.append(nn.Sigmoid())
        elif self.output == "relu":
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def check_targets(self, targets, info):
        """Float boxes ``(N, 4)`` ``(xmin, ymin, xmax, ymax)`` in [0, 1], min <= max."""
        problem = super().check_targets(targets, info)
        if problem:
            return problem
        if targets.dim() != 2 or targets.shape[1] != 4:
            return (f"boxes have shape {tuple(targets.shape)}; give (N, 4) "
                    f"(xmin, ymin, xmax, ymax) normalized to [0, 1]")
        t = targets.float()
        if not bool(torch.isfinite(t).all()) or float(t.min()) < 0 or float(t.max()) > 1:
            return ("box coordinates must be normalized to [0, 1] by the image size; found "
                    f"{float(t.min()):.3g}..{float(t.max()):.3g}")
        if bool((t[:, 2] < t[:, 0]).any() | (t[:, 3] < t[:, 1]).any()):
            return "some boxes have xmax < xmin or ymax < ymin; give (xmin, ymin, xmax, ymax)"
        return None

    def flip_targets(self, targets, info):
        """Normalized (xmin, ymin, xmax, ymax): x -> 1 - x, and xmin and xmax trade places."""
        out = targets.clone()
        out[:, 0], out[:, 2] = 1 - targets[:, 2], 1 - targets[:, 0]
        return out

    def loss(self, outputs, targets):
        targets = targets.to(outputs.dtype)
        total = outputs.new_zeros(())
        if "smooth_l1" in self.loss_name:
            total = total + F.smooth_l1_loss(outputs, targets, beta=self.beta)
        if "giou" in self.loss_name:
            _, giou = iou_and_giou(outputs, targets)
            total = total + (1.0 - giou).mean()
        return total

    def metrics(self, outputs, targets, info):
        if len(targets) == 0:
            return {"mean_iou": float("nan")}
        pred = outputs.detach().float().clamp(0.0, 1.0)
        iou, giou = iou_and_giou(pred, targets.float())
        return {
            "mean_iou": float(iou.mean()),
            "acc_iou50": float((iou >= 0.5).float().mean()),
            "mean_giou": float(giou.mean()),
            "mean_abs_error": float((pred - targets.float()).abs().mean()),
        }
