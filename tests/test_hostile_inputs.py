"""Hostile and unlucky inputs: a loss that turns NaN, photos with an EXIF orientation, NaN or
infinite annotations, decompression bombs, folders with many bad files."""
from __future__ import annotations

import pytest
import torch
from test_datasets import _folder  # two classes of five 20x10 PNGs
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


# -- EXIF orientation: applied before any size check ------------------------------------------

ORIENTATION = 0x0112


def _sideways(path, w=40, h=20, orientation=6, fmt="JPEG"):
    """A photo stored ``w`` x ``h`` (left half red, right half blue) whose EXIF says to
    display it rotated by 90 degrees clockwise (6), as a phone held upright writes it."""
    from PIL import Image

    im = Image.new("RGB", (w, h), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, w // 2, h))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    im.save(path, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied_and_the_displayed_size_returned(tmp_path, fmt):
    from harness.train.data import decode_image

    img, size = decode_image(_sideways(tmp_path / f"p.{fmt.lower()}", fmt=fmt), 8)
    assert size == (20, 40)  # displayed: 20 wide, 40 high
    top, bottom = img[:, :4].float().mean(dim=(1, 2)), img[:, 4:].float().mean(dim=(1, 2))
    assert top[0] > 200 and top[2] < 50  # the stored left (red) half is displayed on top
    assert bottom[2] > 200 and bottom[0] < 50


def test_boxes_are_checked_against_the_displayed_size(tmp_path):
    from plugins.datasets.imagefolder import load_imagefolder

    root = _folder(tmp_path)
    _sideways(root / "cats" / "phone.jpg")  # stored 40x20, displayed 20x40
    rows = [f"{c}/{i}.png,1,1,15,8" for c in ("cats", "dogs") for i in range(5)]
    # y up to 38: inside the displayed 20x40 photo, outside the stored 40x20 one
    (root / "boxes.csv").write_text("file,xmin,ymin,xmax,ymax\n" + "\n".join(rows)
                                    + "\ncats/phone.jpg,2,24,18,38\n")
    d = load_imagefolder("localization", 16, 0, tmp_path / "c", root=str(root))
    every = torch.cat([d.train.targets, d.val.targets, d.test.targets])
    want = torch.tensor([2 / 20, 24 / 40, 18 / 20, 38 / 40])
    assert any(torch.allclose(t, want) for t in every)


# -- non-finite annotations: refused with file and line ---------------------------------------

@pytest.mark.parametrize("task,header,row", [
    ("pose", "file,nose_x,nose_y,nose_v", "cats/2.png,nan,nan,0"),  # an unlabelled point as NaN
    ("pose", "file,nose_x,nose_y,nose_v", "cats/2.png,3,4,nan"),
    ("pose", "file,nose_x,nose_y", "cats/2.png,inf,4"),
    ("localization", "file,xmin,ymin,xmax,ymax", "cats/2.png,1,1,inf,5"),
    ("localization", "file,xmin,ymin,xmax,ymax", "cats/2.png,NaN,1,4,5"),
])
def test_non_finite_annotation_is_refused_with_file_and_line(tmp_path, task, header, row):
    from harness.train.data import BadData
    from plugins.datasets.imagefolder import load_imagefolder

    root = _folder(tmp_path)
    good = "1,1,5,5" if task == "localization" else ",".join(["3", "4", "2"][:header.count(",")])
    rows = [f"{c}/{i}.png,{good}" for c in ("cats", "dogs") for i in range(5) if (c, i) != ("cats", 2)]
    name = "boxes.csv" if task == "localization" else "keypoints.csv"
    (root / name).write_text("\n".join([header, rows[0], row] + rows[1:]) + "\n")
    with pytest.raises(BadData, match=rf"{name} line 3: .*NaN or infinite"):
        load_imagefolder(task, 16, 0, tmp_path / "c", root=str(root))


def test_annotations_naming_files_outside_the_folder_are_refused(tmp_path):
    """A CSV row ``../x.png`` (or an ``annotations=`` path) may not reach out of the dataset
    folder: the row is named with its line, and nothing outside is read as data."""
    from harness.api.errors import DataUnavailable
    from harness.train.data import BadData
    from plugins.datasets.imagefolder import load_imagefolder

    root = _folder(tmp_path)
    (tmp_path / "secret.png").write_bytes((root / "cats" / "0.png").read_bytes())
    rows = [f"{c}/{i}.png,1,1,5,5" for c in ("cats", "dogs") for i in range(5)]
    (root / "boxes.csv").write_text("file,xmin,ymin,xmax,ymax\n" + rows[0]
                                    + "\n../secret.png,1,1,5,5\n" + "\n".join(rows[1:]) + "\n")
    with pytest.raises(BadData, match=r"boxes.csv line 3: image '../secret.png' is outside"):
        load_imagefolder("localization", 16, 0, tmp_path / "c", root=str(root))
    (tmp_path / "outside.csv").write_text("file,xmin,ymin,xmax,ymax\n" + "\n".join(rows))
    with pytest.raises(DataUnavailable, match="outside the dataset folder"):
        load_imagefolder("localization", 16, 0, tmp_path / "c", root=str(root),
                         annotations="../outside.csv")


def test_pose_targets_with_nan_anywhere_are_refused_by_the_task():
    from plugins.tasks.pose import Pose

    info = DataInfo("kp", num_keypoints=2, keypoint_names=["a", "b"])
    t = torch.tensor([[[0.5, 0.5, 2.0], [0.1, 0.1, 2.0]],
                      [[0.5, 0.5, 2.0], [float("nan"), float("nan"), 0.0]]])
    problem = Pose().check_targets(t, info)
    assert problem and "example 1" in problem and "NaN or infinite" in problem
    assert Pose().check_targets(torch.nan_to_num(t), info) is None


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_pets_head_box_that_is_not_finite_is_named(tmp_path, value):
    from harness.train.data import BadData
    from plugins.datasets.pets import read_head_box

    (tmp_path / "Abyssinian_1.jpg").write_bytes(b"")
    xml = tmp_path / "Abyssinian_1.xml"
    xml.write_text(f"<annotation><filename>Abyssinian_1.jpg</filename><size><width>40</width>"
                   f"<height>30</height></size><object><bndbox><xmin>1</xmin><ymin>2</ymin>"
                   f"<xmax>{value}</xmax><ymax>20</ymax></bndbox></object></annotation>")
    with pytest.raises(BadData, match=r"Abyssinian_1\.xml: object/bndbox .* is not finite"):
        read_head_box(xml, tmp_path)


# -- decompression bombs, many bad files: named, counted, no advice to delete ----------------

@pytest.fixture
def small_bomb_limit(monkeypatch):
    """Pillow's bomb limits scaled down: over 100 pixels warns, over 200 is refused."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)


def _png(path, w, h):
    from PIL import Image

    Image.new("RGB", (w, h), (10, 200, 10)).save(path)
    return path


def test_a_decompression_bomb_is_named_not_a_traceback(tmp_path, small_bomb_limit):
    from harness.train.data import BOMB, BadData, decode_cached, decode_image

    bomb = _png(tmp_path / "bomb.png", 30, 30)  # 900 pixels > 2 x 100
    with pytest.raises(BadData, match=rf"bomb\.png was refused as a possible {BOMB}"):
        decode_image(bomb, 8)
    fine = _png(tmp_path / "fine.png", 5, 5)
    images, sizes, bad = decode_cached([fine, bomb], 8, None, skip_bad=True)
    assert [i for i, _ in bad] == [1] and BOMB in bad[0][1]
    with pytest.raises(BadData, match=rf"1 of 2 image file\(s\) could not be decoded \(1 refused "
                                      rf"as {BOMB}s\): .*bomb\.png"):
        decode_cached([fine, bomb], 8, None)


def test_an_image_over_the_warning_limit_is_decoded_and_the_warning_names_it(
        tmp_path, small_bomb_limit):
    from PIL import Image

    from harness.train.data import decode_image

    big = _png(tmp_path / "big.png", 12, 12)  # 144 pixels: over 100, under 200
    with pytest.warns(Image.DecompressionBombWarning, match=r"big\.png"):
        _, size = decode_image(big, 8)
    assert size == (12, 12)


def test_pets_counts_a_bomb_among_its_skipped_files(tmp_path, small_bomb_limit):
    from plugins.datasets.pets import load_pets

    root = tmp_path / "pets"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    rows = []
    for n in range(1, 7):
        _png(root / "images" / f"Abyssinian_{n}.jpg", 8, 8)
        _png(root / "images" / f"beagle_{n}.jpg", 8, 8)
        rows += [f"Abyssinian_{n} 1 1 1", f"beagle_{n} 2 2 1"]
    _png(root / "images" / "beagle_6.jpg", 30, 30)  # the bomb
    (root / "images" / "beagle_5.jpg").write_bytes(b"GIF89a not really")
    (root / "annotations" / "list.txt").write_text("\n".join(rows))
    (root / "annotations" / "trainval.txt").write_text("\n".join(rows[:8]))
    (root / "annotations" / "test.txt").write_text("\n".join(rows[8:]))
    for attempt in ("decoded", "from the decode cache"):
        d = load_pets("classification", 16, 0, tmp_path / "c", root=str(root))
        assert len(d.test) == 2, attempt
        (note,) = [n for n in d.info.notes if "could not be decoded" in n]
        assert note.startswith("2 image file(s) could not be decoded and were skipped (1 "
                               "refused as decompression bombs): "), attempt
        assert "beagle_5.jpg" in note and "beagle_6.jpg (decompression bomb)" in note, attempt
    assert list((tmp_path / "c" / "decoded").glob("images-*.npz"))


def test_every_bad_file_of_a_folder_is_listed_in_one_message(tmp_path):
    from harness.train.data import LIST_LIMIT, BadData
    from plugins.datasets.imagefolder import load_imagefolder

    root = _folder(tmp_path)
    for i in range(LIST_LIMIT + 5):
        (root / "dogs" / f"broken{i:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(BadData) as err:
        load_imagefolder("classification", 16, 0, tmp_path / "c", root=str(root))
    msg = str(err.value)
    assert msg.startswith(f"{LIST_LIMIT + 5} of {LIST_LIMIT + 15} image file(s) could not be "
                          f"decoded: ")
    named = [i for i in range(LIST_LIMIT + 5) if f"broken{i:02d}.png" in msg]
    assert named == list(range(LIST_LIMIT)) and msg.count("corrupt or truncated") == LIST_LIMIT
    assert "and 5 more" in msg
    # the user's own data: what to do, never "delete" or "remove"
    assert "intact copy" in msg and f"move it out of {root}" in msg
    assert "delete" not in msg.lower() and "remove" not in msg.lower()


def test_all_empty_class_folders_are_named_without_advice_to_delete(tmp_path):
    from harness.train.data import BadData
    from plugins.datasets.imagefolder import load_imagefolder

    root = _folder(tmp_path)
    for c in ("birds", "fish"):
        (root / c).mkdir()
    with pytest.raises(BadData, match=r"2 class folder\(s\) hold no images .*: birds, fish\.") as err:
        load_imagefolder("classification", 16, 0, tmp_path / "c", root=str(root))
    assert "remove" not in str(err.value) and "delete" not in str(err.value)


# -- checkpoints that hold the source classifier ----------------------------------------------

@pytest.mark.parametrize("wrapped", [False, True])
def test_a_plain_timm_resnet18_state_dict_with_its_classifier_loads(plugin_system, tmp_path,
                                                                    capsys, wrapped):
    """``torch.save(model.state_dict())`` of a whole timm ResNet-18 (``fc.*`` included), also
    inside ``{"state_dict": ...}``: the backbone takes the rest, ``fc`` is left out with a
    note and kept as the source classifier."""
    import timm

    torch.manual_seed(0)
    full = timm.create_model("resnet18", num_classes=7)
    state = full.state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": state} if wrapped else state, path)
    spec = plugin_system.backbones.get("resnet18")
    backbone = spec.build()
    info = plugin_system.weights.get("file").load(spec, backbone, str(path), {})
    assert torch.equal(backbone.model.conv1.weight, state["conv1.weight"])
    assert torch.equal(backbone.model.layer4[1].bn2.running_mean,
                       state["layer4.1.bn2.running_mean"])
    assert "fc.weight, fc.bias" in info["note"] and "7 classes" in info["note"]
    assert info["note"] in capsys.readouterr().err
    assert torch.equal(backbone.source_classifier.weight, state["fc.weight"])
    assert torch.equal(backbone.source_classifier.bias, state["fc.bias"])


def test_a_checkpoint_of_another_architecture_is_still_refused(plugin_system, tmp_path):
    import timm

    from harness.api.errors import WeightsUnavailable

    torch.save(timm.create_model("resnet18", num_classes=3).state_dict(), tmp_path / "r.pth")
    spec = plugin_system.backbones.get("resnet34")
    with pytest.raises(WeightsUnavailable, match=r"does not fit this backbone: missing keys: "):
        plugin_system.weights.get("file").load(spec, spec.build(), str(tmp_path / "r.pth"), {})


def test_pets_names_every_missing_image_of_its_lists_at_once(tmp_path):
    from harness.train.data import BadData
    from plugins.datasets.pets import load_pets

    root = tmp_path / "pets"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    rows = []
    for n in range(1, 7):
        rows += [f"Abyssinian_{n} 1 1 1", f"beagle_{n} 2 2 1"]
        if n > 3:
            _png(root / "images" / f"Abyssinian_{n}.jpg", 8, 8)
        _png(root / "images" / f"beagle_{n}.jpg", 8, 8)
    (root / "annotations" / "list.txt").write_text("\n".join(rows))
    (root / "annotations" / "trainval.txt").write_text("\n".join(rows[:8]))
    (root / "annotations" / "test.txt").write_text("\n".join(rows[8:]))
    with pytest.raises(BadData) as err:
        load_pets("classification", 16, 0, tmp_path / "c", root=str(root))
    msg = str(err.value)
    assert msg.startswith(f"3 listed images do not exist in {root / 'images'}: ")
    assert all(f"Abyssinian_{n}.jpg (trainval.txt line {2 * n - 1})" in msg for n in (1, 2, 3))
    assert "delete" not in msg and "remove" not in msg
