"""Dataset loaders against archives in the exact published formats, served over HTTP."""
from __future__ import annotations

import hashlib
import io
import socket
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from harness.train.data import BadData, decode_cached
from harness.run.download import Resource
from harness.api.errors import DataUnavailable

SIZE = 16


def _jpeg(w=12, h=10, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _targz(path, members: dict) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _res(root, name):
    data = (root / name).read_bytes()
    return Resource(name, f"https://www.robots.ox.ac.uk/{name}", sha256=hashlib.sha256(data).hexdigest())


# -- Oxford 17 Flowers ------------------------------------------------------------------------

def _flowers(root, monkeypatch, broken: dict | None = None, drop: tuple = ()):
    """17flowers.tgz (jpg/image_0001.jpg .. image_1360.jpg, 80 per class in order, and
    jpg/files.txt) and datasplits.mat (trn1..3, val1..3, tst1..3, 1-based), as published."""
    import scipy.io

    from plugins.datasets import flowers

    members = {}
    for i in range(1, 1361):
        c = (i - 1) // 80
        members[f"jpg/image_{i:04d}.jpg"] = _jpeg(color=(15 * c, 255 - 15 * c, 100))
    members["jpg/files.txt"] = "\n".join(f"image_{i:04d}.jpg" for i in range(1, 1361)).encode()
    for name, data in (broken or {}).items():
        members[name] = data
    for name in drop:
        members.pop(name)
    _targz(root / "17flowers.tgz", members)
    ids = np.arange(1, 1361)
    mat = {}
    for s in (1, 2, 3):
        perm = np.random.default_rng(s).permutation(80)
        per = [ids[c * 80:(c + 1) * 80][perm] for c in range(17)]
        mat[f"trn{s}"] = np.concatenate([p[:40] for p in per])[None].astype(float)
        mat[f"val{s}"] = np.concatenate([p[40:60] for p in per])[None].astype(float)
        mat[f"tst{s}"] = np.concatenate([p[60:] for p in per])[None].astype(float)
    scipy.io.savemat(root / "datasplits.mat", mat)
    monkeypatch.setattr(flowers, "RESOURCES", {"images": _res(root, "17flowers.tgz"),
                                               "splits": _res(root, "datasplits.mat")})
    return mat


def test_flowers17_over_http_official_split_and_cache(http_server, tmp_path, monkeypatch):
    from plugins.datasets.flowers import load_flowers17

    url, root = http_server
    mat = _flowers(root, monkeypatch)
    cache = tmp_path / "cache"
    d = load_flowers17("classification", SIZE, 0, cache, base_url=url, split=2)
    assert d.sizes() == {"train": 680, "val": 340, "test": 340}
    want = torch.as_tensor(mat["tst2"].ravel().astype(int) - 1) // 80
    assert torch.equal(d.test.targets.sort().values, want.sort().values)
    assert d.info.num_classes == 17 and d.info.class_names[0] == "Daffodil"
    assert d.train.images.shape[1:] == (3, SIZE, SIZE)
    # second run: nothing is served any more, everything comes from the cache
    for f in root.iterdir():
        f.unlink()
    d2 = load_flowers17("classification", SIZE, 0, cache, base_url=url, split=2)
    assert torch.equal(d2.test.images, d.test.images)
    assert list((cache / "decoded").glob("images-*.npz"))


def test_flowers17_truncated_jpeg_is_named(http_server, tmp_path, monkeypatch):
    from plugins.datasets.flowers import load_flowers17

    url, root = http_server
    _flowers(root, monkeypatch, broken={"jpg/image_0005.jpg": _jpeg()[:60]})
    with pytest.raises(BadData, match=r"image_0005\.jpg.*(corrupt|truncated)"):
        load_flowers17("classification", SIZE, 0, tmp_path / "c", base_url=url)


def test_flowers17_missing_image_is_named(http_server, tmp_path, monkeypatch):
    from plugins.datasets.flowers import load_flowers17

    url, root = http_server
    _flowers(root, monkeypatch, drop=("jpg/image_0100.jpg",))
    with pytest.raises(BadData, match=r"image_0100\.jpg"):
        load_flowers17("classification", SIZE, 0, tmp_path / "c", base_url=url)


def test_flowers17_offline_says_which_file_goes_where(tmp_path, monkeypatch):
    from plugins.datasets.flowers import load_flowers17

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(DataUnavailable) as err:
        load_flowers17("classification", SIZE, 0, tmp_path / "c", base_url=f"http://127.0.0.1:{port}")
    assert "17flowers.tgz" in str(err.value)
    assert str(tmp_path / "c" / "oxford_flowers17" / "17flowers.tgz") in str(err.value)


# -- Oxford-IIIT Pets -------------------------------------------------------------------------

PETS = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("Bengal", 6, 1)]


def _voc(name, w, h, box):
    return (f"<annotation><folder>OXIIIT</folder><filename>{name}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            f"<segmented>0</segmented><object><name>{'cat' if name[0].isupper() else 'dog'}"
            f"</name><pose>Frontal</pose><truncated>0</truncated><occluded>0</occluded><bndbox>"
            f"<xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>"
            f"</bndbox><difficult>0</difficult></object></annotation>").encode()


def _pets(root, monkeypatch, bad_box=False, xml_for_missing=False, drop_image=None):
    """images.tar.gz (images/*.jpg) and annotations.tar.gz (annotations/list.txt,
    trainval.txt, test.txt, xmls/*.xml for trainval images only, trimaps/*.png)."""
    from plugins.datasets import pets

    images, ann = {}, {}
    lines, trainval, test = [], [], []
    for breed, cid, species in PETS:
        for n in range(1, 9):
            name = f"{breed}_{n}"
            images[f"images/{name}.jpg"] = _jpeg(40, 30)
            row = f"{name} {cid} {species} 1"
            lines.append(row)
            (trainval if n <= 6 else test).append(row)
            if n <= 5:  # heads labelled for part of trainval only, as published
                box = (5, 4, 25, 20) if not (bad_box and n == 1 and cid == 1) else (5, 4, 55, 20)
                ann[f"annotations/xmls/{name}.xml"] = _voc(name, 40, 30, box)
            buf = io.BytesIO()
            Image.new("L", (40, 30), 2).save(buf, "PNG")
            ann[f"annotations/trimaps/{name}.png"] = buf.getvalue()
    if xml_for_missing:
        ann["annotations/xmls/Abyssinian_2.xml"] = _voc("Abyssinian_99", 40, 30, (5, 4, 25, 20))
    if drop_image:
        images.pop(f"images/{drop_image}.jpg")
    header = ("#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n"
              "#BREED ID: 1-25:Cat 1:12:Dog\n#All images with 1st letter as captial are cat "
              "images\n#images with small first letter are dog images\n")
    ann["annotations/list.txt"] = (header + "\n".join(lines) + "\n").encode()
    ann["annotations/trainval.txt"] = ("\n".join(trainval) + "\n").encode()
    ann["annotations/test.txt"] = ("\n".join(test) + "\n").encode()
    _targz(root / "images.tar.gz", images)
    _targz(root / "annotations.tar.gz", ann)
    monkeypatch.setattr(pets, "RESOURCES", {"images": _res(root, "images.tar.gz"),
                                            "annotations": _res(root, "annotations.tar.gz")})


@pytest.mark.parametrize("labels,num_classes", [("breed", 3), ("species", 2)])
def test_pets_classification_over_http(http_server, tmp_path, monkeypatch, labels, num_classes):
    from plugins.datasets.pets import load_pets

    url, root = http_server
    _pets(root, monkeypatch)
    d = load_pets("classification", SIZE, 0, tmp_path / "c", base_url=url, labels=labels,
                  val_frac=0.34)
    assert d.info.num_classes == num_classes
    assert len(d.test) == 6 and len(d.train) + len(d.val) == 18
    if labels == "species":
        assert sorted(set(d.test.targets.tolist())) == [0, 1]
    else:  # ids 1, 2, 6: three breeds, no empty head output for ids 3-5, said in a note
        assert d.info.class_names == ["Abyssinian", "american_bulldog", "Bengal"]
        assert sorted(set(d.test.targets.tolist())) == [0, 1, 2]
        assert any("class id(s) 3, 4, 5 have no image" in n for n in d.info.notes)


def test_pets_localization_counts_images_without_head_box(http_server, tmp_path, monkeypatch):
    from plugins.datasets.pets import load_pets

    url, root = http_server
    _pets(root, monkeypatch)
    d = load_pets("localization", SIZE, 0, tmp_path / "c", base_url=url, val_frac=0.2)
    assert sum(d.sizes().values()) == 15
    assert any("9 without a box were skipped" in n for n in d.info.notes)
    box = d.train.targets[0]
    assert torch.allclose(box, torch.tensor([4 / 40, 3 / 30, 25 / 40, 20 / 30]))


def test_pets_box_outside_image_is_named(http_server, tmp_path, monkeypatch):
    from plugins.datasets.pets import load_pets

    url, root = http_server
    _pets(root, monkeypatch, bad_box=True)
    with pytest.raises(BadData, match=r"Abyssinian_1\.xml.*outside its 40x30 image"):
        load_pets("localization", SIZE, 0, tmp_path / "c", base_url=url)


def test_pets_annotation_pointing_to_missing_image_is_named(http_server, tmp_path, monkeypatch):
    from plugins.datasets.pets import load_pets

    url, root = http_server
    _pets(root, monkeypatch, xml_for_missing=True)
    with pytest.raises(BadData, match=r"Abyssinian_2\.xml annotates Abyssinian_99\.jpg"):
        load_pets("localization", SIZE, 0, tmp_path / "c", base_url=url)
    _pets(root, monkeypatch, drop_image="Bengal_3")
    with pytest.raises(BadData, match=r"Bengal_3"):
        load_pets("classification", SIZE, 0, tmp_path / "c2", base_url=url)


def test_pets_undecodable_image_is_a_counted_skip(tmp_path):
    from plugins.datasets.pets import load_pets

    root = tmp_path / "pets"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    rows = []
    for n in range(1, 7):
        (root / "images" / f"Abyssinian_{n}.jpg").write_bytes(_jpeg())
        (root / "images" / f"beagle_{n}.jpg").write_bytes(_jpeg())
        rows += [f"Abyssinian_{n} 1 1 1", f"beagle_{n} 2 2 1"]
    (root / "images" / "beagle_6.jpg").write_bytes(b"GIF89a not really")
    (root / "annotations" / "list.txt").write_text("\n".join(rows))
    (root / "annotations" / "trainval.txt").write_text("\n".join(rows[:8]))
    (root / "annotations" / "test.txt").write_text("\n".join(rows[8:]))
    d = load_pets("classification", SIZE, 0, tmp_path / "c", root=str(root))
    assert len(d.test) == 3
    assert any("beagle_6.jpg" in n and "1 image file" in n for n in d.info.notes)


# -- image folder -----------------------------------------------------------------------------

def _folder(tmp_path, n=5):
    root = tmp_path / "mine"
    for c in ("cats", "dogs"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (20, 10), (i * 40, 0, 0)).save(root / c / f"{i}.png")
    return root


def test_imagefolder_classification_and_boxes(tmp_path):
    from plugins.datasets.imagefolder import load_imagefolder

    root = _folder(tmp_path)
    d = load_imagefolder("classification", SIZE, 0, tmp_path / "c", root=str(root))
    assert d.info.class_names == ["cats", "dogs"] and sum(d.sizes().values()) == 10
    (root / "boxes.csv").write_text("file,xmin,ymin,xmax,ymax\n" + "".join(
        f"{c}/{i}.png,2,1,12,9\n" for c in ("cats", "dogs") for i in range(4)))
    d = load_imagefolder("localization", SIZE, 0, tmp_path / "c", root=str(root))
    assert sum(d.sizes().values()) == 8
    assert any("2 of 10 images have no row" in n for n in d.info.notes)
    assert torch.allclose(d.train.targets[0], torch.tensor([0.1, 0.1, 0.6, 0.9]))


def test_imagefolder_keypoints(tmp_path):
    from plugins.datasets.imagefolder import load_imagefolder

    root = _folder(tmp_path)
    (root / "keypoints.csv").write_text("file,nose_x,nose_y,nose_v,eye_x,eye_y\n" + "".join(
        f"{c}/{i}.png,10,5,2,4,2\n" for c in ("cats", "dogs") for i in range(5)))
    d = load_imagefolder("pose", SIZE, 0, tmp_path / "c", root=str(root))
    assert d.info.num_keypoints == 2
    assert torch.allclose(d.train.targets[0], torch.tensor([[0.5, 0.5, 2.0], [0.2, 0.2, 2.0]]))


@pytest.mark.parametrize("case,pattern", [
    ("empty_class", r"1 class folder\(s\) hold no images .*: birds\. Add images"),
    ("missing_image", r"boxes\.csv line 2: image 'cats/nope\.png' does not exist"),
    ("box_outside", r"boxes\.csv line 2, row for cats/0\.png: box .* outside its 20x10 image"),
    ("corrupt", r"cats/1\.png is corrupt or truncated"),
])
def test_imagefolder_bad_input_is_named(tmp_path, case, pattern):
    from plugins.datasets.imagefolder import load_imagefolder

    root = _folder(tmp_path)
    task = "classification"
    if case == "empty_class":
        (root / "birds").mkdir()
    elif case == "missing_image":
        (root / "boxes.csv").write_text("file,xmin,ymin,xmax,ymax\ncats/nope.png,1,1,5,5\n")
        task = "localization"
    elif case == "box_outside":
        (root / "boxes.csv").write_text("file,xmin,ymin,xmax,ymax\ncats/0.png,1,1,25,5\n")
        task = "localization"
    else:
        (root / "cats" / "1.png").write_bytes((root / "cats" / "1.png").read_bytes()[:40])
    with pytest.raises(BadData, match=pattern):
        load_imagefolder(task, SIZE, 0, tmp_path / "c", root=str(root))


# -- synthetic, offline, registry ------------------------------------------------------------

@pytest.mark.parametrize("task", ["localization", "pose"])
def test_shapes_is_synthetic_deterministic_and_consistent(task):
    from plugins.datasets.synthetic import load_shapes

    a = load_shapes(task, SIZE, 3, None, n_train=8, n_val=4, n_test=4)
    b = load_shapes(task, SIZE, 3, None, n_train=8, n_val=4, n_test=4)
    c = load_shapes(task, SIZE, 4, None, n_train=8, n_val=4, n_test=4)
    assert a.info.synthetic and "SYNTHETIC" in a.info.notes[0]
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.targets, b.test.targets)
    assert not torch.equal(a.train.images, c.train.images)
    t = a.train.targets
    assert t.min() >= 0 and t.max() <= (2 if task == "pose" else 1)
    if task == "localization":
        assert (t[:, 2] > t[:, 0]).all() and (t[:, 3] > t[:, 1]).all()
    else:
        assert t.shape == (8, 4, 3) and a.info.num_keypoints == 4


def test_registry_flags(plugin_system):
    ds = {s.name: s for s in plugin_system.datasets}
    assert ds["shapes"].synthetic and not ds["oxford_pets"].synthetic
    assert set(ds["oxford_pets"].tasks) == {"classification", "localization"}
    assert ds["fashion_mnist"].offline and ds["digits"].offline


def test_decode_cache_skips_decoding_on_second_call(tmp_path, monkeypatch):
    import harness.train.data as hd

    root = _folder(tmp_path, n=3)
    files = sorted(root.rglob("*.png"))
    first, sizes, _ = decode_cached(files, SIZE, tmp_path / "c")
    assert sizes[0].tolist() == [20, 10]

    def boom(*a, **k):
        raise AssertionError("decoded again")
    monkeypatch.setattr(hd, "decode_image", boom)
    again, _, _ = hd.decode_cached(files, SIZE, tmp_path / "c")
    assert torch.equal(first, again)
    files[0].write_bytes(files[1].read_bytes())  # a changed file is a new cache key
    with pytest.raises(AssertionError, match="decoded again"):
        hd.decode_cached(files, SIZE, tmp_path / "c")


def test_shapes_classification_labels_the_quadrant_of_the_kite():
    from plugins.datasets.synthetic import load_shapes

    data = load_shapes("classification", SIZE, 3, None, n_train=64, n_val=4, n_test=4)
    boxes = load_shapes("localization", SIZE, 3, None, n_train=64, n_val=4, n_test=4).train.targets
    y = data.train.targets
    assert y.dtype == torch.long and data.info.num_classes == 4 and data.info.synthetic
    assert set(y.tolist()) == {0, 1, 2, 3}  # 64 kites fall in every quadrant
    # the kite's centre (mean of its vertices) lies inside its box: the box's side agrees
    # with the label wherever the box is all on one side of the middle
    right = boxes[:, 0] >= 0.5
    assert ((y[right] % 2) == 1).all()
    below = boxes[:, 1] >= 0.5
    assert ((y[below] // 2) == 1).all()
