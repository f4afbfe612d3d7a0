"""Tests of the example plugin, written with transfer-bench's plugin test kit.

The fixtures (``plugin_system``) come from the kit's pytest plugin, which transfer-bench
installs (entry point ``pytest11``); the checks are imported from ``harness.testkit``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("tb_efficientnet", reason="install the example first: pip install --no-deps "
                    "-e examples/transfer-bench-efficientnet (make install does)")

from harness.testkit import (TinyBackbone, check_backbone, check_runtime, check_strategy,
                             make_tiny_splits)

ESPRESSO = 967  # ImageNet-1k class index


def test_plugin_loads_from_its_distribution(plugin_system):
    info = plugin_system.infos["efficientnet"]
    assert info.status == "ok", info.message
    assert info.origin.startswith("transfer-bench-efficientnet ")
    assert info.registers == {"backbones": ["efficientnet_lite0"], "weights": ["lite0-packaged"],
                              "strategies": ["l2sp"], "runtimes": ["pytorch-channels-last"]}


def test_backbone_conforms_and_packaged_weights_load(plugin_system):
    spec = plugin_system.backbones.get("efficientnet_lite0")
    report = check_backbone(spec, image_size=32, weights=spec.default_weights,
                            plugins=plugin_system, onnx=False)
    assert report["num_features"] == 1280
    assert report["groups"][0] == "stem" and report["groups"][-1] == "head_conv"
    assert [g for g in report["groups"] if g.startswith("blocks.")] == \
        [f"blocks.{i}" for i in range(7)]


def test_packaged_weights_classify_coffee_as_espresso():
    from skimage.data import coffee

    from tb_efficientnet.weights import load_classifier

    model = load_classifier()
    img = torch.from_numpy(coffee()).permute(2, 0, 1).float()[None] / 255.0
    h, w = img.shape[2:]
    scale = 256 / min(h, w)  # timm's eval transform: resize to 224/0.875, centre crop 224
    img = F.interpolate(img, size=(round(h * scale), round(w * scale)), mode="bilinear",
                        antialias=True, align_corners=False)
    top, left = (img.shape[2] - 224) // 2, (img.shape[3] - 224) // 2
    x = (img[:, :, top:top + 224, left:left + 224] - 0.5) / 0.5
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    assert int(probs.argmax()) == ESPRESSO
    assert float(probs[ESPRESSO]) > 0.5


def test_l2sp_learns_the_tiny_problem(plugin_system):
    report = check_strategy(plugin_system.strategies.get("l2sp"), epochs=4)
    assert report["accuracy"] > report["chance"]


def test_l2sp_gradient_is_that_of_the_papers_penalty():
    """fit()'s hooks add exactly d/dw of alpha/2 ||w_S - w0_S||^2 + beta/2 ||w_head||^2."""
    from harness.train.model import TransferModel
    from tb_efficientnet.l2sp import L2SP

    torch.manual_seed(0)
    model = TransferModel(TinyBackbone(), torch.nn.Linear(32, 4))
    anchors = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    strategy = L2SP(alpha=0.5, beta=0.2)
    handles = strategy.attach(model)  # w0 = the weights now
    with torch.no_grad():  # move away from w0 so the penalty's gradient is not zero
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()
    for h in handles:
        h.remove()
    hooked = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    (F.cross_entropy(model(x), y) + L2SP.penalty(model, anchors, 0.5, 0.2)).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(hooked[n], p.grad, msg=n)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()  # hooks removed: the plain task gradient
    w = "backbone.stem.0.weight"
    assert float((hooked[w] - dict(model.named_parameters())[w].grad).abs().max()) > 1e-3


def test_l2sp_strong_alpha_keeps_the_backbone_near_its_start():
    from harness.train.model import TransferModel
    from harness.train.loop import TrainContext, TrainSettings
    from harness.testkit import _ClassificationForChecks
    from tb_efficientnet.l2sp import L2SP

    data = make_tiny_splits(n_train=64)
    task = _ClassificationForChecks()

    def drift(alpha: float) -> float:
        torch.manual_seed(0)
        model = TransferModel(TinyBackbone(), torch.nn.Linear(32, 4))
        start = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
        ctx = TrainContext(task, data.info, TrainSettings(epochs=3, batch_size=16, lr=1e-2,
                                                          patience=3))
        L2SP(alpha=alpha, beta=0.0).fit(model, data, ctx)
        return sum(float((p.detach() - start[n]).pow(2).sum())
                   for n, p in model.backbone.named_parameters())

    assert drift(alpha=50.0) < 0.5 * drift(alpha=0.0)


def test_channels_last_runtime_conforms(plugin_system):
    report = check_runtime(plugin_system.runtimes.get("pytorch-channels-last"))
    assert report["available"]
    assert report["results"][0]["memory_format"] == "channels_last"
