"""Hostile and unlucky inputs: a loss that turns NaN, photos with an EXIF orientation, NaN or
infinite annotations, decompression bombs, folders with many bad files."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.train.data import DataInfo, TensorSplit
from harness.train.loop import (History, NonFiniteLoss, Phase, TrainContext, TrainSettings,
                                run_phase)
from harness.train.model import LayerGroup
from plugins.tasks import Classification


# -- a NaN or infinite loss fails the cell, at any epoch ------------------------------------

class Poisonable(nn.Module):
    """A linear classifier whose outputs become ``poison`` (NaN, inf) once told to."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 4 * 4, 2)
        self.poison = None

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out if self.poison is None else out * self.poison

    def layer_groups(self):
        return [LayerGroup("all", [n for n, _ in self.named_parameters()])]


def _split(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorSplit(torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g),
                       torch.arange(n) % 2)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_loss_turning_non_finite_mid_training_fails_the_phase(poison):
    model = Poisonable()
    ctx = TrainContext(Classification(), DataInfo("two", num_classes=2),
                       TrainSettings(epochs=4, batch_size=8, lr=1e-3, patience=4))

    def poison_from_epoch_3(epoch, phase):
        if epoch == 2:
            model.poison = poison

    with pytest.raises(NonFiniteLoss) as err:
        run_phase(model, Phase("all", ["all"]), _split(), _split(8, 1), ctx, History(),
                  on_epoch_start=poison_from_epoch_3)
    msg = str(err.value)
    assert "phase 'all' epoch 3: the training loss is nan" in msg  # inf * 0-logit is nan too
    assert "annotations" in msg and "learning rate" in msg


def test_a_non_finite_validation_loss_fails_before_early_stopping_can_pick_on_it():
    model = Poisonable()
    ctx = TrainContext(Classification(), DataInfo("two", num_classes=2),
                       TrainSettings(epochs=3, batch_size=8, lr=1e-3, patience=1))
    val = _split(8, 1)

    class PoisonOnEval(nn.Module):  # training is finite; only the validation pass is not
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            return out if self.training else out + float("inf")

        def layer_groups(self):
            return [LayerGroup("all", [f"inner.{n}" for n, _ in self.inner.named_parameters()])]

    with pytest.raises(NonFiniteLoss, match=r"phase 'all' epoch 1, validation: the loss on 8 "
                                            r"evaluated images is (nan|inf)"):
        run_phase(PoisonOnEval(model), Phase("all", ["all"]), _split(), val, ctx, History())
