"""Tasks: heads build on every registered task, losses learn, metrics mean what they say."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.train.data import DataInfo
from harness.train.model import Backbone, LayerGroup, TransferModel


class TinyBackbone(Backbone):
    """A 2-conv CNN: pooled (B, 16) and spatial (B, 16, S/4, S/4) features."""

    num_features = feature_channels = 16

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1),
                                  nn.ReLU())

    def forward_spatial(self, x):
        return self.body(x)

    def forward(self, x):
        return self.body(x).mean((2, 3))

    def layer_groups(self):
        return [LayerGroup("body", [n for n, _ in self.named_parameters()])]


INFO = {"classification": DataInfo("t", num_classes=4, class_names=list("abcd")),
        "localization": DataInfo("t"),
        "pose": DataInfo("t", num_keypoints=4)}


def _targets(task, n):
    g = torch.Generator().manual_seed(0)
    if task == "classification":
        return torch.randint(0, 4, (n,), generator=g)
    if task == "localization":
        a = torch.rand(n, 2, generator=g) * 0.5
        return torch.cat([a, a + 0.3], 1)
    return torch.cat([torch.rand(n, 4, 2, generator=g), torch.full((n, 4, 1), 2.0)], -1)


@pytest.mark.parametrize("name", ["classification", "localization", "pose"])
def test_every_task_builds_runs_and_reports_its_primary_metric(plugin_system, name):
    task = plugin_system.tasks.get(name).factory()
    model = TransferModel(TinyBackbone(), task.build_head(TinyBackbone(), INFO[name]), task.head_input)
    out = model(torch.rand(6, 3, 32, 32))
    y = _targets(name, 6)
    loss = task.loss(out, y)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    m = task.metrics(out.detach(), y, INFO[name])
    assert task.primary_metric in m and 0.0 <= m[task.primary_metric] <= 1.0


def test_iou_and_giou_match_hand_computed_values():
    from plugins.tasks.localization import iou_and_giou

    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.2, 0.2], [0.1, 0.1, 0.3, 0.3]])
    b = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.8, 0.8, 1.0, 1.0], [0.1, 0.1, 0.3, 0.3]])
    iou, giou = iou_and_giou(a, b)
    assert iou.tolist() == pytest.approx([0.0625 / 0.4375, 0.0, 1.0], abs=1e-6)
    # disjoint boxes: IoU 0, GIoU = -(C - U)/C = -(1 - 0.08)/1
    assert giou[1].item() == pytest.approx(-0.92, abs=1e-6)
    # swapped corners are ordered (GIoU paper, Algorithm 2), not rewarded or crashed on
    iou2, _ = iou_and_giou(a[:, [2, 3, 0, 1]], b)
    assert torch.allclose(iou, iou2)


def test_localization_metrics_acc_at_half_iou():
    from plugins.tasks.localization import Localization

    t = Localization()
    y = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]])
    p = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]])
    m = t.metrics(p, y, INFO["localization"])
    assert m["acc_iou50"] == 0.5 and m["mean_iou"] == pytest.approx((1 + 1 / 7) / 2, abs=1e-5)


@pytest.mark.parametrize("kw", [{"output": "tanh"}, {"loss": "l2"}])
def test_localization_rejects_unknown_choices_listing_them(kw):
    from plugins.tasks.localization import Localization

    with pytest.raises(ValueError, match="not one of"):
        Localization(**kw)


def test_pck_reference_and_visibility():
    from plugins.tasks.pose import Pose, pck

    y = torch.tensor([[[0.2, 0.2, 2], [0.4, 0.2, 2], [0.4, 0.4, 2], [0.9, 0.9, 0]]])
    p = y[..., :2].clone()
    p[0, 0] += torch.tensor([0.1, 0.0])   # 0.1 off: bbox ref 0.2 -> limit 0.04: wrong
    p[0, 3] = torch.tensor([0.0, 0.0])    # unlabelled: not counted
    assert pck(p, y, 0.2, "bbox") == pytest.approx(2 / 3)
    assert pck(p, y, 0.2, "image") == pytest.approx(1.0)   # image ref: limit 0.2
    t = Pose()
    assert t.loss(p, y).item() == pytest.approx(0.1 / 3)   # L1 over labelled points only
    with pytest.raises(ValueError, match="keypoints"):
        t.build_head(TinyBackbone(), DataInfo("no-kps"))


def test_soft_argmax_reaches_the_corners():
    from plugins.tasks.pose import SoftArgmaxHead

    head = SoftArgmaxHead(4, 2, hidden=8, upsample=1)
    nn.init.zeros_(head.heatmaps.weight)
    with torch.no_grad():
        head.heatmaps.bias.zero_()
    out = head(torch.rand(1, 4, 3, 3))
    assert torch.allclose(out, torch.full((1, 2, 2), 0.5), atol=1e-5)  # flat heatmap: centre


@pytest.mark.slow
@pytest.mark.parametrize("task_name", ["localization", "pose"])
def test_tasks_learn_on_shapes(plugin_system, task_name):
    """A few epochs on 24 px synthetic kites beat the untrained model clearly."""
    from harness.train.loop import Phase, TrainContext, TrainSettings, evaluate, run_phase, History
    from plugins.datasets.synthetic import load_shapes

    torch.manual_seed(0)
    data = load_shapes(task_name, 24, 0, None, n_train=192, n_val=48, n_test=48)
    kw = {"hidden": 16, "upsample": 1} if task_name == "pose" else {"hidden": (32,)}
    task = plugin_system.tasks.get(task_name).factory(**kw)
    bb = TinyBackbone()
    model = TransferModel(bb, task.build_head(bb, data.info), task.head_input)
    ctx = TrainContext(task, data.info, TrainSettings(epochs=10, batch_size=32, lr=3e-3, patience=10))
    _, before = evaluate(model, data.test, ctx)
    run_phase(model, Phase("all", [g.name for g in model.layer_groups()]), data.train, data.val,
              ctx, History(), bn_policy="train")
    _, after = evaluate(model, data.test, ctx)
    pm = task.primary_metric
    assert after[pm] > before[pm] + 0.1, (before[pm], after[pm])


# -- flip augmentation: targets follow the image ------------------------------------------------
def _bright_box(img: torch.Tensor) -> list:
    """Normalized (xmin, ymin, xmax, ymax) of the pixels brighter than 128."""
    ys, xs = torch.nonzero(img[0] > 128, as_tuple=True)
    s = img.shape[-1]
    return [xs.min().item() / s, ys.min().item() / s, (xs.max().item() + 1) / s,
            (ys.max().item() + 1) / s]


def test_flip_moves_boxes_and_keypoints_with_the_image(plugin_system):
    from harness.train.loop import flip_augment
    img = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    img[..., 2:6, 1:5] = 255  # a box at x 1..5, y 2..6 of 16
    box = torch.tensor([_bright_box(img[0])])
    assert box.tolist() == [[1 / 16, 2 / 16, 5 / 16, 6 / 16]]
    loc = plugin_system.tasks.get("localization").factory()
    g = torch.Generator().manual_seed(0)
    while True:  # draw until the random half includes our one image
        x, y = flip_augment(loc, DataInfo("t"))(img.clone(), box.clone(), g)  # a batch copy
        if not torch.equal(x, img):
            break
    assert y[0].tolist() == pytest.approx(_bright_box(x[0]))  # the box followed the image

    pose = plugin_system.tasks.get("pose").factory()
    info = DataInfo("t", num_keypoints=4, keypoint_names=["top", "right", "bottom", "left"])
    kps = torch.tensor([[[0.5, 0.1, 1], [0.9, 0.5, 1], [0.5, 0.9, 1], [0.2, 0.5, 1]]])
    flipped = pose.flip_targets(kps, info)
    # x mirrored, and "right" and "left" trade places so each name stays on its side
    expected = torch.tensor([[[0.5, 0.1, 1], [0.8, 0.5, 1], [0.5, 0.9, 1], [0.1, 0.5, 1]]])
    assert torch.allclose(flipped, expected)
    labels = torch.tensor([3])
    assert torch.equal(plugin_system.tasks.get("classification").factory()
                       .flip_targets(labels, info), labels)


def test_mirror_pairs_by_name():
    from plugins.tasks.pose import mirror_pairs
    assert mirror_pairs(["nose", "left_eye", "right_eye", "l_ear", "r_ear", "paw_L", "paw_R"]) \
        == [(1, 2), (3, 4), (5, 6)]
    assert mirror_pairs(["top", "right", "bottom", "left"]) == [(1, 3)]
    assert mirror_pairs(["a", "b"]) == []


def test_a_task_that_cannot_flip_refuses_augment_before_training():
    from harness.train.task import Task
    from harness.train.loop import flip_augment

    class Depth(Task):
        name = "depth"

    with pytest.raises(NotImplementedError, match="'depth' does not define flip_targets"):
        flip_augment(Depth(), DataInfo("t"))


@pytest.mark.parametrize("task_name", ["localization", "pose"])
def test_builtin_spatial_tasks_pass_the_test_kit(plugin_system, task_name):
    """The plugin test kit's task checks, flip included, on targets of the right format."""
    from harness.testkit import check_task
    from plugins.datasets.synthetic import load_shapes
    data = load_shapes(task_name, 16, 0, None, n_train=16, n_val=8, n_test=8)
    out = check_task(plugin_system.tasks.get(task_name), data)
    assert out["primary_metric"] in ("mean_iou", "pck")
