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

