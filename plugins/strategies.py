"""Built-in fine-tune strategies: the lecture's models 1-3.

Every strategy trains with early stopping on validation loss ("fine-tune ... until
validation loss starts to increase", lecture) and restores its best epoch.
"""
from __future__ import annotations

import torch

from harness import StrategySpec, hookimpl
from harness.data import DataSplits, TensorSplit
from harness.strategy import HeadOnly, Strategy
from harness.train import History, Phase, TrainContext, run_phase


class Scratch(Strategy):
    """Model 1: random initialisation, every layer trainable.

    Batch norm: every layer trains, so all statistics update.

    Args:
        lr: learning rate (default: the run's ``lr``).
    """

    pretrained = False
    bn_policy = "train"

    def __init__(self, lr: float | None = None):
        self.lr = lr

    def phases(self, model, ctx):
        return [Phase("all", [g.name for g in model.layer_groups()], lr=self.lr)]


class FineTune(Strategy):
    """Model 3: pretrained backbone and new head, every layer trained together.

    Batch norm: statistics update (all layers are trainable).

    Args:
        lr: learning rate of the head (default: the run's ``lr``).
        backbone_lr_mult: the backbone's rate is the head's times this; 1.0 is the
            lecture's plain fine-tune.
    """

    bn_policy = "train"

    def __init__(self, lr: float | None = None, backbone_lr_mult: float = 1.0):
        self.lr = lr
        self.backbone_lr_mult = float(backbone_lr_mult)

    def phases(self, model, ctx):
        lr = self.lr or ctx.settings.lr
        rates = {g.name: lr * (1.0 if g.name == "head" else self.backbone_lr_mult)
                 for g in model.layer_groups()}
        return [Phase("all", list(rates), lr=rates)]


class Frozen(Strategy):
    """Model 2: frozen pretrained backbone as a feature extractor; only the head trains.

    The backbone runs once over every split and the head trains on the cached features,
    which gives the same result as the naive loop (the backbone is frozen and in eval
    mode) at a fraction of the cost. Augmentation is therefore not applied.

    Batch norm: frozen, the backbone stays in eval mode and keeps its statistics.

    Args:
        lr: learning rate of the head (default: the run's ``lr``).
        cache_features: False trains through the frozen backbone every epoch (the naive
            loop; the speed benchmark compares both).
    """

    bn_policy = "freeze"

    def __init__(self, lr: float | None = None, cache_features: bool = True):
        self.lr = lr
        self.cache_features = bool(cache_features)

    def fit(self, model, data: DataSplits, ctx: TrainContext) -> History:
        history = History()
        if not self.cache_features:
            run_phase(model, Phase("head", ["head"], lr=self.lr), data.train, data.val, ctx,
                      history, bn_policy="freeze")
            return history
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        model.backbone.eval()
        feats = {}
        with torch.inference_mode():
            for split in ("train", "val"):
                s: TensorSplit = getattr(data, split)
                chunks = [model.features(x) for x, _ in s.batches(256)]
                feats[split] = TensorSplit(torch.cat(chunks).clone(), s.targets)
        ctx.progress("features cached")
        head = HeadOnly(model.head)
        run_phase(head, Phase("head", ["head"], lr=self.lr), feats["train"], feats["val"], ctx,
                  history)
        return history


@hookimpl
def register_strategies():
    return [
        StrategySpec("scratch", cls=Scratch,
                     description="model 1: random init, train everything"),
        StrategySpec("frozen", cls=Frozen,
                     description="model 2: frozen pretrained backbone, train the new head"),
        StrategySpec("finetune", cls=FineTune,
                     description="model 3: pretrained backbone, fine-tune everything"),
    ]
