"""Oxford 17 Flowers (Nilsback & Zisserman, CVPR 2006) in its published layout.

``17flowers.tgz`` holds ``jpg/image_0001.jpg`` ... ``jpg/image_1360.jpg``: 17 classes, 80
images each, in class order (images 1-80 are class 0, ...). ``datasplits.mat`` holds the
three official splits ``trn1/val1/tst1`` ... ``trn3/val3/tst3`` as 1-based image numbers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from harness.train.data import BadData, DataInfo, DataSplits, decode_cached
from harness.run.download import Resource, fetch
from harness.api.errors import DataUnavailable

from ._common import (absent_class_notes, check_disjoint, fetch_and_extract, mirror_url,
                      require_files, splits_from)

NUM_IMAGES, PER_CLASS = 1360, 80
# Class order as listed on the dataset page (images 1-80, 81-160, ...).
CLASSES = ["Daffodil", "Snowdrop", "LilyValley", "Bluebell", "Crocus", "Iris", "Tigerlily",
           "Tulip", "Fritillary", "Sunflower", "Daisy", "ColtsFoot", "Dandelion", "Cowslip",
           "Buttercup", "Windflower", "Pansy"]
PAGE = "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/"
# MD5s as recorded by other loaders of the same files (autods); the site publishes none.
RESOURCES = {
    "images": Resource("17flowers.tgz", PAGE + "17flowers.tgz",
                       md5="b59a65d8d1a99cd66944d474e1289eab"),
    "splits": Resource("datasplits.mat", PAGE + "datasplits.mat",
                       md5="4828cddfd0d803c5abbdebcb1e148a1e"),
}


def read_splits(mat_path: Path, split: int, user_file: bool = False) -> list[torch.Tensor]:
    """0-based indices of ``trn{split}``, ``val{split}``, ``tst{split}`` from datasplits.mat,
    checked: numbers in range, no image in two splits.

    Args:
        user_file: the file is the user's own (``root=``): advice never says to delete it.
    """
    import scipy.io

    fix = (f"replace it with the official datasplits.mat ({RESOURCES['splits'].url})"
           if user_file else "delete it and download datasplits.mat again")
    try:
        mat = scipy.io.loadmat(str(mat_path))
    except Exception as exc:
        raise BadData(f"{mat_path} is not a readable MATLAB file ({exc}); {fix}") from None
    out = []
    for key in (f"trn{split}", f"val{split}", f"tst{split}"):
        if key not in mat:
            have = sorted(k for k in mat if not k.startswith("__"))
            raise BadData(f"{mat_path} has no split {key!r} (it has {', '.join(have)}); "
                          f"the official file has trn1..3, val1..3, tst1..3")
        idx = torch.as_tensor(mat[key].astype("int64").ravel())
        if len(idx) == 0 or idx.min() < 1 or idx.max() > NUM_IMAGES:
            raise BadData(f"{mat_path}: split {key} holds image numbers outside 1..{NUM_IMAGES}"
                          f"; {fix}")
        out.append(idx - 1)
    names = [f"{k}{split}" for k in ("trn", "val", "tst")]
    for a in range(3):
        for b in range(a + 1, 3):
            check_disjoint([int(i) + 1 for i in out[a]], [int(i) + 1 for i in out[b]],
                           f"{mat_path} split {names[a]}", f"{mat_path} split {names[b]} image")
    return out


def load_flowers17(task: str, image_size: int, seed: int, cache_dir: Path,
                   root: Optional[str] = None, base_url: Optional[str] = None,
                   split: int = 1) -> DataSplits:
    """Oxford 17 Flowers with an official split (``split=1|2|3``).

    Args:
        root: a folder with ``jpg/`` and ``datasplits.mat`` already in place (no download).
        base_url: a mirror serving ``17flowers.tgz`` and ``datasplits.mat`` (also
            ``$TRANSFER_BENCH_MIRROR``); default: the official address.
        split: which of the three official splits (trn/val/tst) to use.

    ``seed`` does not change the official splits; it is recorded with the run.
    """
    mirror = mirror_url(base_url)
    if int(split) not in (1, 2, 3):
        raise ValueError(f"oxford_flowers17 split must be 1, 2 or 3, not {split!r}")
    folder = Path(cache_dir) / "oxford_flowers17"
    if root:
        base, mat_path = Path(root), Path(root) / "datasplits.mat"
        if not mat_path.exists():
            raise DataUnavailable(f"{mat_path} not found: put the official datasplits.mat "
                                  f"({RESOURCES['splits'].url}) in {root}")
    else:
        base = fetch_and_extract(RESOURCES["images"], folder, mirror, "17flowers")
        mat_path = fetch(RESOURCES["splits"], folder, base_url=mirror)
    files = [base / "jpg" / f"image_{i:04d}.jpg" for i in range(1, NUM_IMAGES + 1)]
    layout = f"The published 17flowers.tgz has jpg/image_0001.jpg ... image_{NUM_IMAGES}.jpg"
    require_files(files, "Oxford 17 Flowers",
                  f"{layout}; put the missing files in {base / 'jpg'} (from 17flowers.tgz)"
                  if root else f"{layout}; delete {base} (a cache folder) and run again to "
                  f"re-extract it")
    images, _, _ = decode_cached(
        files, image_size, cache_dir,
        fix=(f"Every image of the official split is needed: put intact copies (from "
             f"17flowers.tgz) in {base / 'jpg'}" if root else
             f"{base} is the bench's own extraction of 17flowers.tgz (a cache folder, not "
             f"your data): delete that folder and run again to re-extract it"))
    labels = torch.arange(NUM_IMAGES) // PER_CLASS
    parts = read_splits(mat_path, int(split), user_file=bool(root))
    notes = absent_class_notes(labels[parts[0]], {"val": labels[parts[1]],
                                                  "test": labels[parts[2]]}, CLASSES,
                               f"{mat_path} split {split}")
    info = DataInfo("oxford_flowers17", num_classes=len(CLASSES), class_names=list(CLASSES),
                    source=f"{base} (official split {split})", notes=notes)
    return splits_from(images, labels, parts, info)
