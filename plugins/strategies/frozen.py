"""The lecture's model 2: a frozen pretrained backbone as a feature extractor."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from harness.api.lazy import lazy_exports
from harness.train.phase import Phase
from harness.train.strategy import TrainingStrategy

if TYPE_CHECKING:  # torch is imported in fit: bench list reads the parameters without it
    from harness.train.data import DataSplits
    from harness.train.loop import History, TrainContext
    from harness.train.model import TransferModel


class Frozen(TrainingStrategy):
    """Model 2: frozen pretrained backbone; only the new head (two dense layers and an
    output layer) trains (lecture, "Model 2 ... Feature extractor concept. Freeze weights").

    The backbone runs once over the train and validation splits and the head trains on
    the cached features. That equals the naive loop (``cache_features=False``), where the
    frozen backbone is kept in eval mode and runs every epoch: same head init, same batch
    order (the run's seeded generator), same dropout draws (the global RNG is seeded with
    the run's seed before training in both paths). Augmentation is therefore not applied.

    Early stopping: one phase on validation loss, best epoch restored. Batch norm: frozen;
    the whole backbone stays in eval mode (statistics and any dropout as at inference).

    Training FLOPs: the head's steps, plus (cached path) one backbone pass over the
    training images to extract their features.

    Args:
        lr: learning rate of the head (default: the run's ``lr``).
        cache_features: False trains through the frozen backbone every epoch (the naive
            loop; ``benchmarks/bench_frozen_cache.py`` compares both).
        schedule: ``constant`` or ``stlr`` (default: the run's ``--schedule``).
    """

    bn_policy = "freeze"

    def __init__(self, lr: Optional[float] = None, cache_features: bool = True,
                 schedule: Optional[str] = None):
        super().__init__(lr=lr, schedule=schedule)
        self.cache_features = bool(cache_features)

    def trained_parameters(self, model, ctx):
        """The head only: the backbone stays as the weights gave it."""
        return [f"head.{n}" for n, _ in model.head.named_parameters()]

    def fit(self, model: TransferModel, data: DataSplits, ctx: TrainContext) -> History:
        import torch

        from harness.train.features import extract_features, extraction_flops
        from harness.train.loop import record_start, run_phase
        from harness.train.model import HeadOnly

        history = ctx.new_history(len(data.train), model, data.train)
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        phase = Phase("head", ["head"], lr=self.lr, schedule=self.schedule,
                      eval_modules=("backbone",))
        if not self.cache_features:
            record_start(model, data.val, ctx, history)
            torch.manual_seed(ctx.settings.seed)
            run_phase(model, phase, data.train, data.val, ctx, history, bn_policy="freeze")
            return history
        feats = {split: extract_features(model, getattr(data, split),
                                         ctx.settings.batch_size, ctx)
                 for split in ("train", "val")}
        history.usage.add_flops(extraction_flops(model, data.train))
        ctx.progress("features cached")
        phase.eval_modules = ()
        head = HeadOnly(model.head)
        record_start(head, feats["val"], ctx, history)  # = the whole model on val images
        torch.manual_seed(ctx.settings.seed)
        run_phase(head, phase, feats["train"], feats["val"], ctx, history)
        return history


# names imported from here before fit imported them (offtheshelf.py, tests)
__getattr__ = lazy_exports(__name__, {
    "extract_features": ("harness.train.features", "extract_features"),
    "extraction_flops": ("harness.train.features", "extraction_flops"),
})
