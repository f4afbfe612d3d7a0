"""The lecture's models 1 and 3: train from scratch, and fine-tune everything."""
from __future__ import annotations

from typing import Optional

from harness.train.strategy import TrainingStrategy
from harness.train.phase import Phase


class Scratch(TrainingStrategy):
    """Model 1: random initialisation, every layer trainable (lecture, "Model 1: VGG19
    (random initialized weights) + 2 Dense layers + Output layer").

    Early stopping: one phase that stops when validation loss stops improving and
    restores its best epoch. Batch norm: every layer trains, so all statistics update.

    Args:
        lr: learning rate (default: the run's ``lr``).
        schedule: ``constant`` or ``stlr`` (default: the run's ``--schedule``).
    """

    pretrained = False
    bn_policy = "train"

    def phases(self, model, ctx):
        return [Phase("all", [g.name for g in model.layer_groups()], lr=self.lr)]


class FineTune(TrainingStrategy):
    """Model 3: pretrained backbone and new head, every layer trained together (lecture,
    "fine-tune network using backprop ... until validation loss starts to increase").

    Early stopping: one phase on validation loss, best epoch restored. Batch norm:
    statistics update (all layers are trainable).

    Args:
        lr: learning rate of the head (default: the run's ``lr``).
        backbone_lr_mult: the backbone's rate is the head's times this; 1.0 is the
            lecture's plain fine-tune.
        schedule: ``constant`` or ``stlr`` (default: the run's ``--schedule``).
    """

    bn_policy = "train"

    def __init__(self, lr: Optional[float] = None, backbone_lr_mult: float = 1.0,
                 schedule: Optional[str] = None):
        super().__init__(lr=lr, schedule=schedule)
        if isinstance(backbone_lr_mult, bool) or not isinstance(backbone_lr_mult, (int, float)) \
                or not float(backbone_lr_mult) > 0:
            raise ValueError(f"backbone_lr_mult must be a number > 0, not {backbone_lr_mult!r} "
                             f"(a backbone that does not train is the 'frozen' strategy)")
        self.backbone_lr_mult = float(backbone_lr_mult)

    def phases(self, model, ctx):
        lr = self.base_lr(ctx)
        rates = {g.name: lr * (1.0 if g.name == "head" else self.backbone_lr_mult)
                 for g in model.layer_groups()}
        return [Phase("all", list(rates), lr=rates)]
