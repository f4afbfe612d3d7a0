"""ONNX export: a dynamic batch axis, parity with PyTorch, and a broken export that fails
its cell loudly with ParityError (the rest of the record kept)."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from harness import BackboneSpec, DatasetSpec, hookimpl
from harness.run.cell import run_cell
from harness.run.config import MatrixConfig, matrix_kwargs
from harness.train.data import DataInfo, DataSplits, TensorSplit
from harness.measure.export import ParityError, export_onnx
from plugins.runtimes.onnxruntime import parity_check
from harness.train.model import Backbone, LayerGroup, TransferModel

pytestmark = pytest.mark.slow  # trains models, starts workers or exports ONNX


class ExpNet(Backbone):
    num_features = feature_channels = 8

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward_spatial(self, x):
        return self.stem(x)

    def forward(self, x):
        return self.pool(self.stem(x)).flatten(1)

    def layer_groups(self):
        return [LayerGroup("stem", [f"stem.{n}" for n, _ in self.stem.named_parameters()])]


def load_data(task, image_size, seed, cache_dir):
    g = torch.Generator().manual_seed(seed)
    split = lambda n: TensorSplit(torch.randint(0, 255, (n, 3, image_size, image_size),  # noqa
                                                generator=g, dtype=torch.uint8),
                                  torch.randint(0, 3, (n,), generator=g))
    return DataSplits(split(48), split(16), split(16),
                      DataInfo("exprand", num_classes=3, class_names=list("abc"), synthetic=True))


@hookimpl
def register_backbones():
    return [BackboneSpec("expnet", build=ExpNet, default_weights="random")]


@hookimpl
def register_datasets():
    return [DatasetSpec("exprand", load=load_data, synthetic=True)]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TransferModel(ExpNet(), nn.Linear(8, 3)).eval()


def break_initializer(path):
    """Edit the exported graph: add 1.0 to the largest weight tensor."""
    m = onnx.load(str(path))
    init = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init) + 1.0
    init.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), init.name))
    onnx.save(m, str(path))


def test_export_has_a_dynamic_batch_axis(model, tmp_path):
    path = export_onnx(model, 16, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 5):
        x = torch.rand(b, 3, 16, 16)
        out = sess.run(None, {"images": x.numpy()})[0]
        with torch.inference_mode():
            np.testing.assert_allclose(out, model(x).numpy(), atol=1e-4)


def test_parity_stores_the_maximum_difference(model, tmp_path):
    res = parity_check(model, export_onnx(model, 16, tmp_path / "m.onnx"), 16)
    assert res["ok"] is True and 0 <= res["max_abs_diff"] < 1e-4
    assert {"max_rel_diff", "atol", "rtol"} <= set(res)


def test_parity_fails_on_an_edited_graph(model, tmp_path):
    path = export_onnx(model, 16, tmp_path / "m.onnx")
    break_initializer(path)
    with pytest.raises(ParityError, match="disagrees with PyTorch"):
        parity_check(model, path, 16)


def test_broken_export_fails_the_cell_loudly(register_plugin, monkeypatch):
    plugins = register_plugin(sys.modules[__name__], name="test-export")
    import harness.run.cell as cell_mod

    def broken_export(model, image_size, path, **kw):
        path = export_onnx(model, image_size, path, **kw)
        break_initializer(path)
        return path

    monkeypatch.setattr(cell_mod, "export_onnx", broken_export)
    m = MatrixConfig(**matrix_kwargs({
        "backbones": ["expnet"], "datasets": ["exprand"], "strategies": ["scratch"],
        "runtimes": ["onnxruntime"], "image_size": 16, "train": {"epochs": 1}}))
    rec = run_cell(plugins, m.cells()[0], "k")
    assert rec["status"] == "failed"
    assert rec["error"].startswith("ParityError") and "disagrees with PyTorch" in rec["error"]
    assert rec["onnx"]["error"].startswith("ParityError")
    assert rec["onnx"]["parity"]["ok"] is False and rec["onnx"]["parity"]["max_abs_diff"] > 1e-3
    assert "test_metrics" in rec                    # what ran before the export is kept
