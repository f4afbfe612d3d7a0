"""The test kit's parts that its checks and fixtures share: the error a check raises, a
tiny backbone and dataset, and the plugin that registers them.

Below both :mod:`harness.testkit` (fixtures and model checks) and :mod:`harness.kitchecks`
(the other kinds' checks), which import from here: neither imports the other's top.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import hookimpl
from .api.specs import BackboneSpec, DatasetSpec
from .train.data import DataInfo, DataSplits, TensorSplit
from .train.model import Backbone, LayerGroup


class ConformanceError(AssertionError):
    """A plugin part does not behave as the harness expects; the message says how."""


def _require(cond: bool, what: str, msg: str) -> None:
    if not cond:
        raise ConformanceError(f"{what}: {msg}")


# -- tiny data and a tiny backbone ------------------------------------------------------------
def make_tiny_splits(image_size: int = 16, n_train: int = 160, seed: int = 0) -> DataSplits:
    """A learnable 4-class problem: a bright quadrant of a dim noisy image gives the class.

    Images are uint8 ``(N, 3, image_size, image_size)`` as real datasets give them.
    """
    half = image_size // 2

    def make(n: int, s: int) -> TensorSplit:
        g = torch.Generator().manual_seed(s)
        y = torch.randint(0, 4, (n,), generator=g)
        x = (torch.rand(n, 3, image_size, image_size, generator=g) * 60).to(torch.uint8)
        for i, c in enumerate(y.tolist()):
            r, col = divmod(c, 2)
            x[i, :, r * half:(r + 1) * half, col * half:(col + 1) * half] += 150
        return TensorSplit(x, y)

    info = DataInfo("quadrants", num_classes=4, class_names=list("abcd"), synthetic=True)
    return DataSplits(make(n_train, seed), make(64, seed + 1), make(64, seed + 2), info)


class TinyBackbone(Backbone):
    """Two conv stages (about 1,000 parameters): a stand-in backbone for testing strategies,
    tasks and runtimes without a real CNN."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, stride=2),
                                   nn.BatchNorm2d(width), nn.ReLU())
        self.feature_channels = width
        self.num_features = 4 * width  # 2x2 pooling keeps where things are, even when frozen
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(self.forward_spatial(x), 2).flatten(1)

    def layer_groups(self) -> list[LayerGroup]:
        return [LayerGroup(m, [f"{m}.{n}" for n, _ in getattr(self, m).named_parameters()])
                for m in ("stem", "stage")]


def tiny_backbone_spec() -> BackboneSpec:
    """:class:`TinyBackbone` as the backbone ``testkit_tiny`` (random weights)."""
    return BackboneSpec("testkit_tiny", build=TinyBackbone, device_class="mobile",
                        default_weights="random", description="test kit stand-in")


def _load_tiny(task: str, image_size: int, seed: int, cache_dir: Path,
               n_train: int = 160) -> DataSplits:
    return make_tiny_splits(image_size=image_size, n_train=int(n_train), seed=seed)


def tiny_dataset_spec() -> DatasetSpec:
    """The quadrant problem of :func:`make_tiny_splits` as the dataset ``testkit_quadrants``
    (classification, 4 classes, synthetic; parameter ``n_train``, default 160)."""
    return DatasetSpec("testkit_quadrants", load=_load_tiny, tasks=("classification",),
                       synthetic=True, offline=True,
                       description="test kit: a bright quadrant gives the class")


class TestkitPlugin:
    """A plugin registering :func:`tiny_backbone_spec` and :func:`tiny_dataset_spec`, so a
    plugin's tests can run real (tiny, seconds-long) ``bench run`` matrices::

        register_plugin(TestkitPlugin(), name="testkit")
        run_matrix(plugin_system, MatrixConfig(backbones=["testkit_tiny"],
                   datasets=["testkit_quadrants"], strategies=["my_strategy"], ...), tmp_path)
    """

    __test__ = False  # not a pytest test class

    @hookimpl
    def register_backbones(self):
        return [tiny_backbone_spec()]

    @hookimpl
    def register_datasets(self):
        return [tiny_dataset_spec()]
