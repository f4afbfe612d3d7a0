"""The small CNN of bench_false_alarms.py, as a plugin that pickles into worker processes.

``FaPlugin(width_scale)`` registers backbone ``fa_cnn``; a ``width_scale`` above 1 is the
planted slowdown that changes the work: every layer gets that many times more channels.
"""
from __future__ import annotations

from torch import nn

from harness import BackboneSpec, hookimpl
from harness.train.model import Backbone, LayerGroup

IMAGE = 32
WIDTH = 48


def _channels(scale: float) -> tuple[int, int]:
    return round(WIDTH * scale), round(2 * WIDTH * scale)


def work_ratio(scale: float) -> float:
    """Multiply-adds of the CNN at ``scale`` over those at 1 (conv layers, IMAGE px)."""
    def macs(s):
        c1, c2 = _channels(s)
        hw = IMAGE * IMAGE
        return hw * 3 * c1 * 9 + hw * c1 * c1 * 9 + hw / 4 * c1 * c2 * 9 + hw / 4 * c2 * c2 * 9
    return macs(scale) / macs(1.0)


def width_for(slowdown: float) -> float:
    """The channel scale whose multiply-adds are ``1 + slowdown`` times the original's."""
    lo, hi = 1.0, 2.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if work_ratio(mid) < 1 + slowdown else (lo, mid)
    return hi


def describe() -> str:
    c1, c2 = _channels(1.0)
    return f"4 conv 3x3 ({c1}, {c1}, {c2}, {c2} channels)"


class FaCNN(Backbone):
    def __init__(self, scale: float = 1.0):
        super().__init__()
        c1, c2 = _channels(scale)
        self.stem = nn.Sequential(nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1, stride=2), nn.ReLU(),
                                   nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU())
        self.num_features = self.feature_channels = c2

    def forward_spatial(self, x):
        return self.stage(self.stem(x))

    def forward(self, x):
        return self.forward_spatial(x).mean(dim=(2, 3))

    def layer_groups(self):
        return [LayerGroup(m, [f"{m}.{n}" for n, _ in getattr(self, m).named_parameters()])
                for m in ("stem", "stage")]


class FaPlugin:
    def __init__(self, width_scale: float = 1.0):
        self.width_scale = width_scale

    @hookimpl
    def register_backbones(self):
        scale = self.width_scale
        return [BackboneSpec("fa_cnn", build=lambda: FaCNN(scale), device_class="mobile",
                             default_weights="random",
                             description=f"bench_false_alarms CNN, channels x{scale:.3f}")]
