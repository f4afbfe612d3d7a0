"""Built-in datasets that install offline: Fashion-MNIST (Debian) and scikit-learn digits."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import torch

from harness.train.data import DataInfo, DataSplits, TensorSplit, stratified_split, to_rgb_resized
from harness.api.errors import DataUnavailable

from ._common import check_classes_present, check_label_range

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (the MNIST format), gzip-compressed or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataUnavailable(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataUnavailable(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    n = 1
    for d in dims:
        n *= d
    body = raw[4 + 4 * ndim:]
    if len(body) != n:
        raise DataUnavailable(f"{path} is truncated: {len(body)} bytes of data, header says {n}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def _subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if n >= len(labels):
        return torch.arange(len(labels))
    idx, _ = stratified_split(labels, (n / len(labels), 1 - n / len(labels)), seed)
    return idx


def parse_classes(spec: object, num_classes: int) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0+3+7"`` -> [0, 3, 7]; ``"5-7+9"``; an int -> [it].

    Raises:
        ValueError: a malformed spec or a class outside 0..num_classes-1 (names the input).
    """
    out: list[int] = []
    try:
        for part in (str(spec).split("+") if not isinstance(spec, int) else [str(spec)]):
            lo, _, hi = part.strip().partition("-")
            a, b = int(lo), int(hi) if hi else int(lo)
            out.extend(range(a, b + 1))
    except ValueError:
        raise ValueError(f"classes={spec!r}: write a range and/or a +-separated list of class "
                         f"indices, e.g. classes=0-4 or classes=0+2+5") from None
    bad = [c for c in out if not 0 <= c < num_classes]
    if not out or bad or len(set(out)) != len(out):
        raise ValueError(f"classes={spec!r}: need distinct classes in 0..{num_classes - 1}")
    return out


def load_fashion_mnist(task: str, image_size: int, seed: int, cache_dir: Path,
                       root: str | None = None, n_train: int = 1000, n_val: int = 500,
                       n_test: int = 1000, classes: object = None) -> DataSplits:
    """Fashion-MNIST (Xiao et al. 2017): a few-shot subset, resized to ``image_size``.

    Train and validation come from the official training set (disjoint, stratified),
    test from the official test set. Subsets are deterministic by seed. ``classes``
    keeps only some classes (``classes=0-4``, ``classes=5-9``, ``classes=0+3``), relabelled
    0..k-1 in the order given, e.g. the two halves A and B of a Yosinski et al. (2014)
    experiment; ``n_train``/``n_val``/``n_test`` then count images of those classes.
    """
    root = Path(root or os.environ.get("FASHION_MNIST_DIR", FASHION_DIR))
    files = {k: root / f"{k}-idx{3 if 'images' in k else 1}-ubyte.gz"
             for k in ("train-images", "train-labels", "t10k-images", "t10k-labels")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise DataUnavailable(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Install them with "
            f"'apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or put the four "
            f"*-ubyte.gz files from the Fashion-MNIST release in a folder and pass "
            f"--dataset fashion_mnist,root=FOLDER (or set FASHION_MNIST_DIR)")
    xtr, ytr = read_idx(files["train-images"]), read_idx(files["train-labels"]).long()
    xte, yte = read_idx(files["t10k-images"]), read_idx(files["t10k-labels"]).long()
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DataUnavailable(f"Fashion-MNIST in {root}: image and label counts differ")
    for name, y in (("train-labels", ytr), ("t10k-labels", yte)):
        check_label_range(y, len(FASHION_CLASSES), str(files[name]))
        check_classes_present(y, FASHION_CLASSES, str(files[name]))
    names, name = FASHION_CLASSES, "fashion_mnist"
    if classes is not None:
        keep = parse_classes(classes, len(FASHION_CLASSES))
        remap = torch.full((len(FASHION_CLASSES),), -1, dtype=torch.long)
        remap[keep] = torch.arange(len(keep))
        mtr, mte = remap[ytr] >= 0, remap[yte] >= 0
        xtr, ytr, xte, yte = xtr[mtr], remap[ytr[mtr]], xte[mte], remap[yte[mte]]
        names = [FASHION_CLASSES[c] for c in keep]
    pool = _subset(ytr, n_train + n_val, seed)
    tr_rel, va_rel = stratified_split(ytr[pool], (n_train / (n_train + n_val),
                                                  n_val / (n_train + n_val)), seed + 1)
    tr, va = pool[tr_rel], pool[va_rel]
    te = _subset(yte, n_test, seed + 2)
    info = DataInfo(name, num_classes=len(names), class_names=list(names), source=str(root))
    return DataSplits(
        TensorSplit(to_rgb_resized(xtr[tr], image_size), ytr[tr]),
        TensorSplit(to_rgb_resized(xtr[va], image_size), ytr[va]),
        TensorSplit(to_rgb_resized(xte[te], image_size), yte[te]), info)


def load_digits(task: str, image_size: int, seed: int, cache_dir: Path,
                val_frac: float = 0.2, test_frac: float = 0.2) -> DataSplits:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), resized."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round()).to(torch.uint8)
    y = torch.from_numpy(d.target).long()
    tr, va, te = stratified_split(y, (1 - val_frac - test_frac, val_frac, test_frac), seed)
    info = DataInfo("digits", num_classes=10, class_names=[str(i) for i in range(10)],
                    source="sklearn.datasets.load_digits")
    return DataSplits(*(TensorSplit(to_rgb_resized(x[i], image_size), y[i]) for i in (tr, va, te)),
                      info)

