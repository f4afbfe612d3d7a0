"""Classification: the lecture's head of two dense layers and an output layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.train.task import Task


def dense_head(in_features: int, hidden: tuple, out_features: int, dropout: float) -> nn.Sequential:
    """``len(hidden)`` dense layers with ReLU and dropout, then a linear output layer."""
    layers: list[nn.Module] = []
    prev = in_features
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        prev = h
    layers.append(nn.Linear(prev, out_features))
    return nn.Sequential(*layers)


def class_label_problem(labels: torch.Tensor, num_classes: int) -> str | None:
    """What is wrong with class labels for ``num_classes`` classes, or None."""
    if num_classes < 2:
        return (f"DataInfo.num_classes is {num_classes}; classification needs the number of "
                f"classes (>= 2)")
    if labels.dim() != 1:
        return f"labels have shape {tuple(labels.shape)}; give one class index per image, (N,)"
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        return (f"labels are {str(labels.dtype).replace('torch.', '')}; give integer class "
                f"indices (torch.long)")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = int(((labels < 0) | (labels >= num_classes)).sum())
        hint = (" (they look numbered from 1: subtract 1)" if lo >= 1 and hi == num_classes
                else "")
        return (f"labels must be in [0, {num_classes}) for its {num_classes} classes "
                f"(DataInfo.num_classes) but range {lo}..{hi}, {bad} outside{hint}")
    return None


class Classification(Task):
    """Single-label classification (lecture: "VGG19 + 2 Dense layers + Output layer").

    Args:
        hidden: sizes of the dense layers between the backbone and the output layer
            (the lecture uses two); a string "256-128" is accepted from the command line.
        dropout: dropout after each dense layer.
        label_smoothing: cross-entropy label smoothing.
    """

    name = "classification"
    head_input = "pooled"
    primary_metric = "accuracy"
    higher_is_better = True

    def flip_targets(self, targets, info):
        return targets  # a mirrored photo shows the same class

    def __init__(self, hidden=(256, 256), dropout: float = 0.2, label_smoothing: float = 0.0):
        if isinstance(hidden, str):
            hidden = tuple(int(h) for h in hidden.split("-") if h)
        elif isinstance(hidden, int):
            hidden = (hidden,)
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        self.label_smoothing = float(label_smoothing)

    def check_targets(self, targets, info):
        """Integer class labels ``(N,)`` in ``[0, info.num_classes)``."""
        problem = super().check_targets(targets, info)
        if problem:
            return problem
        if info.class_names and len(info.class_names) != info.num_classes:
            return (f"DataInfo has {len(info.class_names)} class_names but num_classes="
                    f"{info.num_classes}; give one name per class")
        return class_label_problem(targets, info.num_classes)

    def build_head(self, backbone, info):
        if info.num_classes < 2:
            raise ValueError(f"classification needs >= 2 classes; dataset {info.name} has "
                             f"{info.num_classes}")
        return dense_head(backbone.num_features, self.hidden, info.num_classes, self.dropout)

    def loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def metrics(self, outputs, targets, info):
        n = max(info.num_classes, int(outputs.shape[1]) if outputs.dim() == 2 else 0)
        if len(targets) == 0:
            return {"accuracy": float("nan")}
        pred = outputs.argmax(1)
        k = min(5, outputs.shape[1])
        top5 = (outputs.topk(k, dim=1).indices == targets[:, None]).any(1).float().mean()
        cm = torch.zeros(n, n, dtype=torch.long, device=outputs.device)
        cm.index_put_((targets, pred), torch.ones_like(targets), accumulate=True)
        tp = cm.diag().float()
        precision = tp / cm.sum(0).clamp(min=1)
        recall = tp / cm.sum(1).clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        present = cm.sum(1) > 0
        return {
            "accuracy": float((pred == targets).float().mean()),
            "top5": float(top5),
            "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
            "confusion_matrix": cm.tolist(),
        }

