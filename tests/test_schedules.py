"""Slanted triangular learning rates: the ULMFiT formula, and as the optimizer applies it."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harness.train.data import DataInfo, TensorSplit
from harness.train.schedules import stlr_multiplier
from harness.train.loop import History, Phase, TrainContext, TrainSettings, run_phase


def formula(t, T, cut_frac=0.1, ratio=32.0):
    """Howard & Ruder 2018, eq. 3, written out independently."""
    cut = math.floor(T * cut_frac)
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    return (1 + p * (ratio - 1)) / ratio


@pytest.mark.parametrize("t", [0, 1, 50, 99, 100, 101, 500, 999])
def test_stlr_matches_the_formula(t):
    assert stlr_multiplier(t, 1000) == pytest.approx(formula(t, 1000))


def test_stlr_shape():
    assert stlr_multiplier(0, 1000) == pytest.approx(1 / 32)   # starts at eta_max / ratio
    assert stlr_multiplier(100, 1000) == pytest.approx(1.0)    # peaks at cut
    assert stlr_multiplier(1000, 1000) == pytest.approx(1 / 32)  # back to the floor at T


def test_stlr_bad_input():
    with pytest.raises(ValueError, match="cut_frac"):
        stlr_multiplier(0, 10, cut_frac=1.5)
    with pytest.raises(ValueError, match="total"):
        stlr_multiplier(0, 0)


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(x)

    def layer_groups(self):
        from harness.train.model import LayerGroup
        return [LayerGroup("head", ["head.weight", "head.bias"])]


class CE:
    primary_metric = "accuracy"

    def loss(self, out, y):
        return nn.functional.cross_entropy(out, y)

    def metrics(self, out, y, info):
        return {"accuracy": float((out.argmax(1) == y).float().mean())}


@pytest.mark.parametrize("where", ["settings", "phase"])
def test_run_phase_applies_stlr_at_every_step(where, monkeypatch):
    """The rate the optimizer uses at step t is lr * stlr(t, T), T = epochs x batches."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 4, generator=g)
    split = TensorSplit(x, (x[:, 0] > 0).long())
    settings = TrainSettings(epochs=5, batch_size=10, lr=0.1, patience=99,
                             schedule="stlr" if where == "settings" else "constant")
    ctx = TrainContext(CE(), DataInfo("d", num_classes=2), settings)
    rates = []
    real = torch.optim.AdamW.step

    def step(self, *a, **k):
        rates.append(self.param_groups[0]["lr"])
        return real(self, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    phase = Phase("all", ["head"], schedule="stlr" if where == "phase" else None)
    run_phase(Linear(), phase, split, split, ctx, History())
    T = 5 * 10
    assert len(rates) == T
    for t in (0, 2, 5, 6, 20, 49):
        assert rates[t] == pytest.approx(0.1 * formula(t, T)), t


def test_strategy_schedule_parameter():
    from plugins.strategies import FineTune
    assert FineTune(schedule="stlr").schedule == "stlr"
    with pytest.raises(ValueError, match="constant, stlr"):
        FineTune(schedule="cosine")
