"""Interface of a target task: a head, a loss and metrics."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .data import DataInfo
from .model import Backbone


class Task:
    """Base class for tasks. Subclasses set the attributes and implement the methods.

    A worked example with its test: docs/plugins/task.md.

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

    def check_targets(self, targets: torch.Tensor, info: DataInfo) -> Optional[str]:
        """What is wrong with a split's targets for this task, in a sentence, or None.

        ``bench run`` calls it on every split a dataset returns, before training, so a
        dataset in the wrong format fails its cell with a message naming the dataset
        instead of a traceback from inside the loss. The base class checks that there is
        one target per image row (a tensor); tasks check shapes and ranges.
        """
        if not torch.is_tensor(targets):
            return f"targets are a {type(targets).__name__}, not a torch.Tensor"
        return None

    def flip_targets(self, targets: torch.Tensor, info: DataInfo) -> torch.Tensor:
        """The targets of the same images mirrored left to right (training augmentation).

        A task whose targets do not depend on left and right (a class label) returns them
        as they are; one with coordinates mirrors them. The base class refuses, so a task
        that has not said how its targets flip is never trained on mirrored images with
        unmirrored targets.
        """
        raise NotImplementedError(
            f"task {self.name!r} does not define flip_targets, so its targets cannot follow "
            "a flipped image; train without augment (or implement Task.flip_targets)")
