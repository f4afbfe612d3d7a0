"""Helpers shared by the image-file datasets: where files live, how splits are drawn."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import torch

from harness.train.data import (BadData, DataInfo, DataSplits, TensorSplit, list_names,
                                stratified_split)
from harness.run.download import Resource, extract, fetch

MIRROR_ENV = "TRANSFER_BENCH_MIRROR"


def mirror_url(param: Optional[str]) -> Optional[str]:
    """A mirror replacing the official address: the ``base_url`` parameter, else
    ``$TRANSFER_BENCH_MIRROR``; ``None`` means the official address."""
    return param or os.environ.get(MIRROR_ENV) or None


def fetch_and_extract(res: Resource, folder: Path, mirror: Optional[str],
                      extract_to: str) -> Path:
    """Download ``res`` into ``folder`` (verified) and extract it into ``folder/extract_to``."""
    archive = fetch(res, folder, base_url=mirror)
    return extract(archive, folder / extract_to)


def require_files(paths: list, what: str, fix: str) -> None:
    """Raise :class:`BadData` naming the missing files (up to ``LIST_LIMIT``, and the count)."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise BadData(f"{what}: {len(missing)} file(s) missing: "
                      f"{list_names(missing, sep=', ')}. {fix}")


def splits_from(images: torch.Tensor, targets: torch.Tensor, parts: list,
                info: DataInfo) -> DataSplits:
    return DataSplits(*(TensorSplit(images[i], targets[i]) for i in parts), info)


def seeded_split(n: int, fractions: tuple, seed: int,
                 labels: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
    """Deterministic index split (stratified when ``labels`` is given)."""
    if labels is None:
        labels = torch.zeros(n, dtype=torch.long)
    return stratified_split(labels, fractions, seed)


def box_problem(box: tuple, width: int, height: int) -> Optional[str]:
    """What is wrong with a pixel box (empty, leaving its image, not finite), or None.

    PASCAL VOC boxes are 1-based and inclusive, so ``xmax == width`` is inside.
    """
    xmin, ymin, xmax, ymax = box
    if not all(math.isfinite(v) for v in box):
        return f"box (xmin={xmin}, ymin={ymin}, xmax={xmax}, ymax={ymax}) is not finite"
    if not (0 <= xmin < xmax <= width and 0 <= ymin < ymax <= height):
        return (f"box (xmin={xmin}, ymin={ymin}, xmax={xmax}, ymax={ymax}) is empty or outside "
                f"its {width}x{height} image")
    return None


def check_box(box: tuple, width: int, height: int, where: str) -> None:
    """Raise :class:`BadData` naming ``where`` when :func:`box_problem` finds one."""
    problem = box_problem(box, width, height)
    if problem:
        raise BadData(f"{where}: {problem}; correct the annotation")


# -- label checks every loader makes before training (the file and line in each message) ----

def check_label_range(labels: torch.Tensor, num_classes: int, where: str,
                      line_of=None) -> None:
    """Raise :class:`BadData` naming ``where`` (and the line, when ``line_of(index)`` says)
    when a label lies outside ``0 .. num_classes - 1``."""
    bad = torch.nonzero((labels < 0) | (labels >= num_classes)).flatten()
    if len(bad):
        i = int(bad[0])
        at = f" line {line_of(i)}" if line_of else f" (entry {i})"
        raise BadData(f"{where}{at}: label {int(labels[i])} is outside 0..{num_classes - 1} "
                      f"({len(bad)} such label(s)); fix the labels or the class list")


def check_classes_present(labels: torch.Tensor, class_names: list, where: str) -> None:
    """Raise :class:`BadData` when a declared class has no image at all (an empty class
    would get a head output that is never trained)."""
    counts = torch.bincount(labels, minlength=len(class_names)) if len(labels) else \
        torch.zeros(len(class_names), dtype=torch.long)
    empty = [class_names[i] for i in range(len(class_names)) if counts[i] == 0]
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (f" and {len(empty) - 5} more"
                                                  if len(empty) > 5 else "")
        raise BadData(f"{where}: {len(empty)} class(es) have no image: {shown}; add images "
                      f"for them or remove them from the class list")


def check_disjoint(a: list, b: list, where_a: str, where_b: str, line_a=None,
                   line_b=None) -> None:
    """Raise :class:`BadData` when one item (an image name or index) is in both splits."""
    seen = {x: i for i, x in enumerate(a)}
    for j, x in enumerate(b):
        if x in seen:
            la = f" line {line_a(seen[x])}" if line_a else ""
            lb = f" line {line_b(j)}" if line_b else ""
            n = len(set(a) & set(b))
            raise BadData(f"{where_b}{lb}: {x} is also in {where_a}{la} ({n} item(s) in both); "
                          f"the splits must not overlap (an image seen in training inflates "
                          f"the score): remove it from one of them")


def absent_class_notes(train_y: torch.Tensor, others: dict, class_names: list,
                       where: str) -> list[str]:
    """Notes naming the classes that are in training but have no image in a held-out split
    (``others``: split name -> labels), e.g. a class with one image (it can only go to
    train): that split's metric says nothing about them."""
    notes = []
    in_train = set(train_y.tolist())
    for split, y in others.items():
        missing = sorted(in_train - set(y.tolist()))
        if missing:
            names = ", ".join(str(class_names[i]) if i < len(class_names) else str(i)
                              for i in missing[:8]) + (" ..." if len(missing) > 8 else "")
            notes.append(f"{where}: {len(missing)} class(es) have no image in the {split} split "
                         f"({names}); too few images to hold one out, so the {split} metric "
                         f"does not cover them")
    return notes
