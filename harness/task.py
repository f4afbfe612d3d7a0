"""Interface of a target task: a head, a loss and metrics."""
from __future__ import annotations

import torch
from torch import nn

from .data import DataInfo
from .model import Backbone


class Task:
    """Base class for tasks. Subclasses set the attributes and implement the methods.

    Attributes:
        name: task name as shown in results.
        head_input: ``"pooled"`` (feature vector) or ``"spatial"`` (feature map).
        primary_metric: the metric used for curves, comparisons and recommendations.
        higher_is_better: direction of ``primary_metric``.
    """

    name: str = "task"
    head_input: str = "pooled"
    primary_metric: str = "accuracy"
    higher_is_better: bool = True

    def build_head(self, backbone: Backbone, info: DataInfo) -> nn.Module:  # pragma: no cover
        """A freshly initialised head for ``backbone`` on a dataset described by ``info``."""
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Training loss (a scalar tensor) of a batch."""
        raise NotImplementedError

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor,
                info: DataInfo) -> dict:  # pragma: no cover
        """Metrics over a whole split; must include ``primary_metric``. Values are JSON-able."""
        raise NotImplementedError
