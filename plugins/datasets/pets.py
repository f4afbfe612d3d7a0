"""Oxford-IIIT Pets (Parkhi et al., "Cats and Dogs", CVPR 2012) in its published layout.

``images.tar.gz`` holds ``images/<Breed_name>_<n>.jpg``; ``annotations.tar.gz`` holds
``annotations/list.txt``, ``trainval.txt``, ``test.txt`` (lines ``name class_id species
breed_id``, ``#`` comments; class 1..37, species 1 = cat, 2 = dog), ``xmls/<name>.xml`` head
boxes in PASCAL VOC format and ``trimaps/``.

Known gaps of the published data, handled as counted and reported skips (``DataInfo.notes``):
head boxes exist only for part of the images (the trainval part), so localization draws
its train/val/test splits from the images that have one; a few files do not decode.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple, Optional

import torch

from harness.train.data import BOMB, BadData, DataInfo, DataSplits, decode_cached, list_names
from harness.run.download import Resource
from harness.api.errors import DataUnavailable

from ._common import (absent_class_notes, check_box, check_classes_present, check_disjoint,
                      fetch_and_extract, mirror_url, seeded_split, splits_from)

DATA = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"
# MD5s as published with torchvision's OxfordIIITPet loader.
RESOURCES = {
    "images": Resource("images.tar.gz", DATA + "images.tar.gz",
                       md5="5c4f3ee8e5d25df40f4fd59a7f44e54c"),
    "annotations": Resource("annotations.tar.gz", DATA + "annotations.tar.gz",
                            md5="95a8c909bbe2e81eed6a22bccdf3f68f"),
}
LABELS = ("breed", "species")


NUM_BREEDS, NUM_SPECIES = 37, 2


class Row(NamedTuple):
    """One line of list.txt / trainval.txt / test.txt (ids 0-based here)."""

    name: str
    cid: int
    species: int
    line: int
    path: Path


def read_list(path: Path) -> list[Row]:
    """The rows of list.txt / trainval.txt / test.txt, ids checked against the published
    ranges (class 1..37, species 1..2); a bad line is named with its file and number."""
    if not path.is_file():
        raise BadData(f"{path} not found; the published annotations.tar.gz has "
                      f"annotations/{path.name}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        try:
            row = Row(parts[0], int(parts[1]) - 1, int(parts[2]) - 1, n, path)
        except (IndexError, ValueError):
            raise BadData(f"{path} line {n}: expected 'name class_id species breed_id', got "
                          f"{line.strip()!r}") from None
        if not 0 <= row.cid < NUM_BREEDS:
            raise BadData(f"{path} line {n}: class id {row.cid + 1} is outside 1..{NUM_BREEDS} "
                          f"(Oxford-IIIT Pets numbers its {NUM_BREEDS} breeds from 1); fix the line")
        if not 0 <= row.species < NUM_SPECIES:
            raise BadData(f"{path} line {n}: species {row.species + 1} is neither 1 (cat) nor "
                          f"2 (dog); fix the line")
        rows.append(row)
    return rows


def check_lists(every: list[Row], trainval: list[Row], test: list[Row]) -> None:
    """The split lists agree with list.txt, leave no breed empty and do not overlap."""
    ref = {r.name: r for r in every}
    if not every:
        raise BadData("annotations/list.txt lists no image; use the published one")
    for r in trainval + test:
        e = ref.get(r.name)
        if e is not None and (e.cid, e.species) != (r.cid, r.species):
            raise BadData(f"{r.path} line {r.line}: {r.name} is class {r.cid + 1} species "
                          f"{r.species + 1}, but {e.path} line {e.line} says class {e.cid + 1} "
                          f"species {e.species + 1}; make them agree")
    present = {r.cid for r in every}
    for r in trainval + test:
        if r.cid not in present:
            raise BadData(f"{r.path} line {r.line}: class id {r.cid + 1} has no image in "
                          f"{every[0].path}; add its images there or fix the line")
    if trainval and test:
        check_disjoint([r.name for r in trainval], [r.name for r in test],
                       str(trainval[0].path), str(test[0].path),
                       line_a=lambda i: trainval[i].line, line_b=lambda j: test[j].line)


def read_head_box(xml_path: Path, images_dir: Path) -> tuple[int, int, tuple]:
    """``(width, height, (xmin, ymin, xmax, ymax))`` of a VOC head annotation, checked."""
    try:
        root = ET.parse(xml_path).getroot()
        fname = root.findtext("filename") or (xml_path.stem + ".jpg")
        w, h = int(root.findtext("size/width")), int(root.findtext("size/height"))
        bb = root.find("object/bndbox")
        raw = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
    except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise BadData(f"{xml_path} is not a PASCAL VOC annotation with size and "
                      f"object/bndbox ({exc})") from None
    if not all(math.isfinite(v) for v in raw):
        raise BadData(f"{xml_path}: object/bndbox (xmin, ymin, xmax, ymax) = "
                      f"{tuple(raw)} is not finite; correct the annotation")
    box = tuple(int(v) for v in raw)
    if not (images_dir / fname).is_file():
        raise BadData(f"{xml_path} annotates {fname}, but {images_dir / fname} does not exist")
    check_box(box, w, h, str(xml_path))
    return w, h, box


def _layout(root: Optional[str], cache_dir: Path, base_url: Optional[str]) -> tuple[Path, Path]:
    if root:
        images, ann = Path(root) / "images", Path(root) / "annotations"
        for p in (images, ann):
            if not p.is_dir():
                raise DataUnavailable(f"{p} not found: {root} must hold images/ and annotations/ "
                                      f"as extracted from images.tar.gz and annotations.tar.gz")
        return images, ann
    folder = Path(cache_dir) / "oxford_pets"
    mirror = mirror_url(base_url)
    images = fetch_and_extract(RESOURCES["images"], folder, mirror, "images") / "images"
    ann = fetch_and_extract(RESOURCES["annotations"], folder, mirror, "annotations") / "annotations"
    return images, ann


def load_pets(task: str, image_size: int, seed: int, cache_dir: Path,
              root: Optional[str] = None, base_url: Optional[str] = None,
              labels: str = "breed", val_frac: float = 0.2, max_per_class: int = 0) -> DataSplits:
    """Oxford-IIIT Pets for classification (37 breeds or 2 species) or head localization.

    Args:
        root: a folder already holding ``images/`` and ``annotations/`` (no download).
        base_url: a mirror serving images.tar.gz and annotations.tar.gz (also
            ``$TRANSFER_BENCH_MIRROR``).
        labels: ``breed`` (37 classes) or ``species`` (cat, dog).
        val_frac: share of the official trainval list held out for validation
            (classification; stratified, by seed). Test is the official test list.
        max_per_class: keep at most this many images per breed and split (0: all), for
            quick runs.
    """
    if labels not in LABELS:
        raise ValueError(f"oxford_pets labels {labels!r} is not one of {', '.join(LABELS)}")
    images_dir, ann = _layout(root, cache_dir, base_url)
    every = read_list(ann / "list.txt")
    trainval, test = read_list(ann / "trainval.txt"), read_list(ann / "test.txt")
    check_lists(every, trainval, test)
    label, class_names, notes = _breeds(every, ann)
    _check_images_exist(trainval + test, images_dir, bool(root))
    if max_per_class:
        trainval, test = _cap(trainval, max_per_class), _cap(test, max_per_class)
    rows = trainval + test
    if task == "localization":
        rows, boxes, skipped = _with_boxes(rows, ann / "xmls", images_dir)
        notes.append(f"head boxes: {len(rows)} of {len(rows) + skipped} images have "
                     f"annotations/xmls/*.xml; {skipped} without a box were skipped (the "
                     f"published data labels heads only for part of the images)")
    paths = [images_dir / f"{r.name}.jpg" for r in rows]
    imgs, sizes, bad = decode_cached(paths, image_size, cache_dir, skip_bad=True)
    keep = torch.ones(len(rows), dtype=torch.bool)
    for i, _ in bad:
        keep[i] = False
    if bad:
        bombs = sum(BOMB in m for _, m in bad)
        notes.append(f"{len(bad)} image file(s) could not be decoded and were skipped"
                     + (f" ({bombs} refused as {BOMB}s)" if bombs else "") + ": "
                     + list_names([Path(paths[i]).name + (f" ({BOMB})" if BOMB in m else "")
                                   for i, m in bad]))
    if task == "localization":
        return _localization_splits(rows, boxes, imgs, sizes, keep, ann, images_dir, seed,
                                    val_frac, notes)
    y = torch.tensor([label[r.cid] if labels == "breed" else r.species for r in rows],
                     dtype=torch.long)
    n_tv = len(trainval)
    tv = torch.nonzero(keep[:n_tv]).flatten()
    tr_rel, va_rel = seeded_split(len(tv), (1 - val_frac, val_frac), seed, y[tv])
    te = torch.nonzero(keep[n_tv:]).flatten() + n_tv
    names = class_names if labels == "breed" else ["cat", "dog"]
    parts = [tv[tr_rel], tv[va_rel], te]
    where = f"{ann / 'trainval.txt'} and {ann / 'test.txt'}"
    check_classes_present(y[torch.cat(parts)], names, f"{where} (labels={labels})")
    notes += absent_class_notes(y[parts[0]], {"val": y[parts[1]], "test": y[parts[2]]}, names,
                                f"oxford_pets {where}")
    info = DataInfo("oxford_pets", num_classes=len(names), class_names=names,
                    source=str(images_dir.parent), notes=notes)
    return splits_from(imgs, y, parts, info)


def _breeds(every: list, ann: Path) -> tuple[dict, list, list]:
    """(class id -> head output, breed names, notes) of the breeds ``list.txt`` has: a
    subset of the 37 gets one head output per breed it has, numbered in id order."""
    breeds: dict = {}
    for r in every:
        breeds.setdefault(r.cid, r.name.rsplit("_", 1)[0])
    present = sorted(breeds)
    notes = []
    gaps = [c + 1 for c in range(present[-1] + 1) if c not in breeds]
    if gaps:
        notes.append(f"{ann / 'list.txt'}: class id(s) {', '.join(map(str, gaps[:10]))}"
                     f"{' ...' if len(gaps) > 10 else ''} have no image; the {len(present)} "
                     f"breeds it has are numbered 0..{len(present) - 1} in id order (no empty "
                     f"head output)")
    return {cid: i for i, cid in enumerate(present)}, [breeds[c] for c in present], notes


def _check_images_exist(rows: list, images_dir: Path, own_root: bool) -> None:
    """Every listed image is a file, else :class:`BadData` naming the list's line; the
    advice never tells a ``root=`` user to delete their own data."""
    missing = [r for r in rows if not (images_dir / f"{r.name}.jpg").is_file()]
    if not missing:
        return
    fix = (f"put the images in {images_dir}, or take their lines out of the lists" if own_root
           else f"{images_dir.parent} is the bench's own extraction of images.tar.gz (a cache "
                f"folder, not your data): delete that folder and run again to re-extract it")
    if len(missing) == 1:
        r = missing[0]
        raise BadData(f"{r.path} line {r.line}: lists image {r.name!r} but "
                      f"{images_dir / (r.name + '.jpg')} does not exist; {fix}")
    raise BadData(f"{len(missing)} listed images do not exist in {images_dir}: "
                  + list_names([f"{r.name}.jpg ({r.path.name} line {r.line})" for r in missing])
                  + f"; {fix}")


def _localization_splits(rows, boxes, imgs, sizes, keep, ann: Path, images_dir: Path,
                         seed: int, val_frac: float, notes: list) -> DataSplits:
    """Head boxes as fractions of the image; splits drawn by seed from the images with a
    box (the official test list has none). An XML whose size is not the image's is named."""
    wrong = ((sizes[:, 0] != boxes[:, 4]) | (sizes[:, 1] != boxes[:, 5])) & keep
    if wrong.any():
        i = int(torch.nonzero(wrong)[0])
        raise BadData(f"{ann / 'xmls' / (rows[i][0] + '.xml')}: size "
                      f"{int(boxes[i, 4])}x{int(boxes[i, 5])} differs from the image's "
                      f"{int(sizes[i, 0])}x{int(sizes[i, 1])}")
    targets = boxes[:, :4] / boxes[:, [4, 5, 4, 5]]
    idx = torch.nonzero(keep).flatten()
    parts = [idx[p] for p in seeded_split(len(idx), (1 - 2 * val_frac, val_frac, val_frac),
                                          seed, torch.tensor([rows[i][1] for i in idx]))]
    notes.append("localization splits are drawn by seed from the images with head boxes "
                 "(the official test list has none)")
    info = DataInfo("oxford_pets", num_classes=0, source=str(images_dir.parent), notes=notes)
    return splits_from(imgs, targets.float(), parts, info)


def _cap(rows: list, n: int) -> list:
    count: dict = {}
    out = []
    for r in rows:
        count[r[1]] = count.get(r[1], 0) + 1
        if count[r[1]] <= n:
            out.append(r)
    return out


def _with_boxes(rows: list, xml_dir: Path, images_dir: Path) -> tuple[list, torch.Tensor, int]:
    """Rows that have a head box, their boxes ``(xmin, ymin, xmax, ymax, w, h)`` and the
    number skipped. An xml whose image is missing, or whose box leaves the image, is an error."""
    kept, boxes = [], []
    for r in rows:
        xml = xml_dir / f"{r[0]}.xml"
        if not xml.is_file():
            continue
        w, h, box = read_head_box(xml, images_dir)
        # VOC pixel indices are 1-based: a box from pixel 1 to pixel W spans [0, W]
        kept.append(r)
        boxes.append([max(box[0] - 1, 0), max(box[1] - 1, 0), box[2], box[3], w, h])
    if not kept:
        raise BadData(f"no image has a head box in {xml_dir}; the published annotations.tar.gz "
                      f"has annotations/xmls/*.xml")
    return kept, torch.tensor(boxes, dtype=torch.float32), len(rows) - len(kept)
