"""Helpers shared by the image-file datasets: where files live, how splits are drawn."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from harness.train.data import BadData, DataInfo, DataSplits, TensorSplit, stratified_split
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
    """Raise :class:`BadData` naming the missing files (the first few and the count)."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise BadData(f"{what}: {len(missing)} file(s) missing: {shown}. {fix}")


def splits_from(images: torch.Tensor, targets: torch.Tensor, parts: list,
                info: DataInfo) -> DataSplits:
    return DataSplits(*(TensorSplit(images[i], targets[i]) for i in parts), info)


def seeded_split(n: int, fractions: tuple, seed: int,
                 labels: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
    """Deterministic index split (stratified when ``labels`` is given)."""
    if labels is None:
        labels = torch.zeros(n, dtype=torch.long)
    return stratified_split(labels, fractions, seed)


def check_box(box: tuple, width: int, height: int, where: str) -> None:
    """Raise :class:`BadData` naming ``where`` when a pixel box is empty or leaves its image.

    PASCAL VOC boxes are 1-based and inclusive, so ``xmax == width`` is inside.
    """
    xmin, ymin, xmax, ymax = box
    if not (0 <= xmin < xmax <= width and 0 <= ymin < ymax <= height):
        raise BadData(f"{where}: box (xmin={xmin}, ymin={ymin}, xmax={xmax}, ymax={ymax}) is "
                      f"empty or outside its {width}x{height} image; fix or remove the annotation")
