"""In-memory datasets: images decoded and resized once, kept as uint8 tensors.

Dataset plugins return :class:`DataSplits`. Images are ``uint8`` tensors of shape
``(N, 3, S, S)``; batches are turned into floats in [0, 1] as they are drawn, and the
model normalizes them itself (see :class:`harness.train.model.TransferModel`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from ..api.files import atomic_path


@dataclass
class DataInfo:
    """What a task needs to know about a dataset.

    Attributes:
        name: dataset name as shown in results.
        num_classes: number of classes (classification).
        class_names: class names, in label order.
        num_keypoints: keypoints per image (pose).
        keypoint_names: their names, in target order (pose); names with "left"/"right"
            (or ``l_``/``r_``, ``_l``/``_r``) tell a horizontal flip which keypoints swap.
        synthetic: True for generated data; shown wherever results appear.
        source: where the data came from (a path, a package, an address).
        notes: counted skips and other facts the user should see.
    """

    name: str
    num_classes: int = 0
    class_names: list = field(default_factory=list)
    num_keypoints: int = 0
    keypoint_names: list = field(default_factory=list)
    synthetic: bool = False
    source: str = ""
    notes: list = field(default_factory=list)


@dataclass
class TensorSplit:
    """One split: inputs and targets (labels, boxes, keypoints).

    ``images`` are uint8 ``(N, 3, S, S)`` (scaled to [0, 1] per batch) or, for strategies
    that train on cached backbone features, float tensors used as they are.
    """

    images: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype == torch.uint8 and self.images.dim() != 4:
            raise ValueError("uint8 images must have shape (N, C, H, W)")
        if len(self.images) != len(self.targets):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None, augment=None,
                device: Optional[torch.device] = None,
                channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(float images in [0, 1], targets)`` batches.

        Args:
            device: where the batches go (default: where the split is). uint8 images
                travel as uint8 (a quarter of the bytes) and become floats there; to CUDA
                the rows are gathered once into pinned memory and copied without blocking
                (:func:`harness.train.device.gather_to`).
            channels_last: hand image batches over in the channels-last layout.
        """
        from .device import gather_to

        n = len(self)
        # the order is drawn on the CPU with the run's generator: the same on every device
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if self.images.device != order.device:  # a feature cache kept on the device
            order = order.to(self.images.device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            x, y = gather_to(self.images, idx, device), gather_to(self.targets, idx, device)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if augment is not None:
                x, y = augment(x, y, generator)
            yield x, y


@dataclass
class DataSplits:
    """Train, validation and test splits plus the dataset's :class:`DataInfo`: what a
    dataset plugin's ``load`` returns.

    Each split is a non-empty :class:`TensorSplit` of uint8 ``(N, 3, S, S)`` images at
    the size asked for and targets in the task's format; no image is in two splits.
    ``bench run`` checks this (:func:`validate_splits`) before training.
    """

    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    info: DataInfo

    def sizes(self) -> dict:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def to_rgb_resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` or ``(N, H, W)`` grey/RGB -> uint8 ``(N, 3, size, size)``."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    out = []
    for chunk in images.split(2048):
        x = chunk.float()
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > size)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1).contiguous()
        out.append(x)
    return torch.cat(out) if out else images.new_zeros((0, 3, size, size))


def stratified_split(labels: torch.Tensor, fractions: tuple, seed: int) -> list[torch.Tensor]:
    """Indices for splits with the given fractions, stratified by label, deterministic."""
    g = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        start = 0
        for i, f in enumerate(fractions):
            end = len(idx) if i == len(fractions) - 1 else start + int(round(f * len(idx)))
            parts[i].append(idx[start:end])
            start = end
    return [torch.cat(p).sort().values for p in parts]


# -- image files: decode and resize once, into a cache -------------------------------------

CACHE_FORMAT = 3  # bump when the cached arrays change meaning (2: every Pillow mode, to_rgb8;
#                  3: EXIF orientation applied, sizes as displayed)


class BadData(ValueError):
    """A data file or annotation that cannot be used; the message names the file and the fix."""


#: background that transparent pixels are composited onto (as a browser shows them on white)
ALPHA_BACKGROUND = (255, 255, 255)


def to_rgb8(im):
    """Any image Pillow opens, as an 8-bit ``RGB`` Pillow image with the colours it shows.

    * ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's own conversion;
    * alpha (``LA``, ``La``, ``PA``, ``RGBA``, ``RGBa``, ``P`` with transparency): composited
      onto :data:`ALPHA_BACKGROUND`, so transparent pixels show the background, not
      whatever colour happens to be stored under them;
    * more than 8 bits per pixel (``I;16``, ``I;16B``, ``I;16L``, ``I`` 32-bit, ``F`` float,
      e.g. 16-bit PNG and float TIFF): scaled linearly from the image's own range
      (its smallest to its largest finite value) to 0..255. Pillow's ``convert("RGB")``
      clips these at 255 instead, which turns a 16-bit photo white. A constant image keeps
      its value when it lies in 0..255, else it becomes 0. NaN and infinities become 0.
    """
    import numpy as np
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im).astype(np.float64)
        finite = np.isfinite(arr)
        arr = np.where(finite, arr, 0.0)
        vals = arr[finite]
        lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 0.0)
        if hi > lo:
            out = (arr - lo) * (255.0 / (hi - lo))
        else:
            out = np.full_like(arr, lo if 0.0 <= lo <= 255.0 else 0.0)
        out = np.where(finite, out, 0.0)
        return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "La", "RGBa", "LA"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        bg = Image.new("RGBA", im.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


#: what to do about undecodable files, unless the loader knows better (never: delete them)
DEFAULT_FIX = ("Put an intact copy of each in its place (of a bomb: a smaller copy), or move it "
               "out of the dataset's folder")
#: how many bad files one message lists by name before "and N more"
LIST_LIMIT = 20
#: the words naming a refused decompression bomb in messages (loaders count them by it)
BOMB = "decompression bomb"


def list_names(names: list, limit: int = LIST_LIMIT, sep: str = "; ") -> str:
    """``names`` joined, the first ``limit`` of them, then ``and N more``."""
    shown = sep.join(str(n) for n in names[:limit])
    return shown + (f"{sep}and {len(names) - limit} more" if len(names) > limit else "")


def _oriented_size(im) -> tuple[int, int]:
    """``(width, height)`` as the image is displayed: EXIF orientations 5-8 (the rotated
    ones) swap the stored width and height."""
    orientation = im.getexif().get(0x0112, 1)
    w, h = im.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def decode_image(path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image file as uint8 ``(3, size, size)`` RGB, plus its ``(width, height)`` as shown.

    The EXIF orientation is applied first (``PIL.ImageOps.exif_transpose``): a phone photo
    stored sideways with "rotate 90" in its EXIF is decoded upright, and the size returned is
    the displayed one, the one annotations (boxes, keypoints) are drawn on. The image is then
    stretched to a square (no crop), so coordinates normalized to [0, 1] stay valid. Every
    Pillow mode becomes 8-bit RGB by :func:`to_rgb8` (16-bit and float images scaled by their
    own range, alpha composited on white).

    An image over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS`` x 2,
    ``DecompressionBombError``) is refused; one over the warning limit is decoded and the
    warning names the file.

    Raises:
        BadData: the file is missing, truncated, not an image or a decompression bomb; the
            message names it.
    """
    import struct
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            im = Image.open(path)
        for w in caught:
            if issubclass(w.category, Image.DecompressionBombWarning):
                w.message = Image.DecompressionBombWarning(f"image file {path}: {w.message}")
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        with im:
            orig = _oriented_size(im)
            if im.format == "JPEG":
                im.draft("RGB", (size, size))  # DCT-domain downscale: much faster decode
            im.load()
            im = ImageOps.exif_transpose(im)
            im = to_rgb8(im)
            im = im.resize((size, size), Image.BILINEAR, reducing_gap=None)
            arr = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    except FileNotFoundError:
        raise BadData(f"image file {path} does not exist") from None
    except Image.DecompressionBombError as exc:
        raise BadData(f"image file {path} was refused as a possible {BOMB} ({exc}); if it is "
                      f"a genuine image, put a smaller copy in its place") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as exc:
        raise BadData(f"image file {path} is corrupt or truncated ({exc}); put an intact copy "
                      f"in its place") from None
    return arr.reshape(size, size, 3).permute(2, 0, 1).contiguous(), orig


def bad_files_message(bad: list, total: int, fix: str) -> str:
    """One sentence listing every bad file (up to :data:`LIST_LIMIT`, then how many more)."""
    bombs = sum(BOMB in m for m in bad)
    counted = f" ({bombs} refused as {BOMB}s)" if bombs else ""
    return (f"{len(bad)} of {total} image file(s) could not be decoded{counted}: "
            f"{list_names(bad)}. {fix}")


def files_key(paths: list, size: int, extra: str = "") -> str:
    """SHA-256 of the file list, each file's size and mtime, the image size and ``extra``."""
    import hashlib

    h = hashlib.sha256(f"v{CACHE_FORMAT}|{size}|{extra}".encode())
    for p in paths:
        st = os.stat(p) if os.path.exists(p) else None
        h.update(f"|{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}".encode())
    return h.hexdigest()


def decode_cached(paths: list, size: int, cache_dir: Optional[Path], extra: str = "",
                  skip_bad: bool = False, fix: str = DEFAULT_FIX
                  ) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Decode and resize image files once; later calls read the cache.

    Returns:
        ``(images, sizes, bad)``: uint8 ``(N, 3, size, size)``, ``(N, 2)`` (width, height)
        as displayed (EXIF orientation applied, :func:`decode_image`) and a list of
        ``(index, message)`` for files that could not be decoded (only with ``skip_bad``;
        their rows are zeros and the caller drops them).

    The first call decodes every file and writes ``cache_dir/decoded/images-<key>.npz``;
    later calls (later epochs, later runs) load it instead of decoding JPEGs again. The key
    is :func:`files_key`, so a changed, added or removed file, or another image size, makes
    a new entry. The file is written under a temporary name and renamed, so an interrupted
    run never leaves a half-written cache.

    Args:
        fix: the last sentence of the error without ``skip_bad``: what the user should do
            (the loader knows whether the files are the user's own or a cache's).

    Raises:
        BadData: without ``skip_bad``, any file that cannot be decoded: one message listing
            every such file (up to :data:`LIST_LIMIT` by name) and ``fix``.
    """
    import numpy as np

    paths = [str(p) for p in paths]
    target = None
    bad: list = []
    cached = None
    if cache_dir is not None:
        key = files_key(paths, size, f"{extra}|skip={skip_bad}")
        target = Path(cache_dir) / "decoded" / f"images-{key}.npz"
        if target.exists():
            try:
                with np.load(target) as z:
                    bad = [(int(i), f"{m} (cached verdict; change the file to retry)")
                           for i, m in zip(z["bad"], z["bad_messages"])]
                    cached = (torch.from_numpy(z["images"].copy()),
                              torch.from_numpy(z["sizes"].copy()))
            except Exception:  # an unreadable cache entry is rebuilt, never trusted
                target.unlink(missing_ok=True)
                bad = []
    if cached is not None:
        return cached[0], cached[1], bad
    images = torch.zeros((len(paths), 3, size, size), dtype=torch.uint8)
    sizes = torch.zeros((len(paths), 2), dtype=torch.long)
    for i, p in enumerate(paths):
        try:
            img, (w, h) = decode_image(p, size)
        except BadData as exc:
            bad.append((i, str(exc)))
            continue
        images[i] = img
        sizes[i, 0], sizes[i, 1] = w, h
    if bad and not skip_bad:  # every bad file in one message, not the first of many
        raise BadData(bad_files_message([m for _, m in bad], len(paths), fix))
    if target is not None:
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            np.savez(f, images=images.numpy(), sizes=sizes.numpy(),
                     bad=np.array([i for i, _ in bad], dtype=np.int64),
                     bad_messages=np.array([m for _, m in bad], dtype=str))
    return images, sizes, bad


class InvalidDataset(BadData):
    """Splits a dataset plugin returned break the contract of :class:`DataSplits`; the
    message names the dataset, the split and what is wrong."""


def _image_problem(images, image_size: int) -> Optional[str]:
    if not torch.is_tensor(images):
        return f"images are a {type(images).__name__}, not a torch.Tensor"
    shape = tuple(images.shape)
    fix = ("; convert with harness.train.data.to_rgb_resized(images, image_size), which makes "
           "uint8 (N, 3, image_size, image_size)")
    if images.dtype != torch.uint8:
        return f"images are {str(images.dtype).replace('torch.', '')}, not uint8 (0..255){fix}"
    if images.dim() != 4:
        return f"images have shape {shape}, not (N, 3, {image_size}, {image_size}){fix}"
    if shape[1] == 1:
        return (f"images are grey, 1 channel {shape}; give RGB (N, 3, {image_size}, "
                f"{image_size}) (grey repeated in 3 channels){fix}")
    if shape[1] != 3:
        return f"images have {shape[1]} channels {shape}, not 3 (RGB){fix}"
    if shape[2:] != (image_size, image_size):
        return (f"images are {shape[2]}x{shape[3]} but the run asked for image_size="
                f"{image_size}; load(image_size=...) must resize to it{fix}")
    return None


def _row_digests(images: torch.Tensor) -> list[bytes]:
    import hashlib
    flat = images.reshape(len(images), -1).contiguous().numpy()
    return [hashlib.blake2b(row, digest_size=16).digest() for row in flat]


def validate_splits(splits, name: str, image_size: int, task=None,
                    disjoint: bool = True) -> dict:
    """Check what a dataset plugin returned, before anything trains on it.

    Checked: a :class:`DataSplits` of three non-empty :class:`TensorSplit`; images uint8
    ``(N, 3, image_size, image_size)``; the targets in ``task``'s format (:meth:`harness.train.task.Task.
    check_targets`: class labels in ``[0, num_classes)`` for classification); and, with
    ``disjoint``, no image in two splits (a test image seen in training inflates
    results).

    Args:
        splits: what ``DatasetSpec.load`` returned.
        name: the dataset's name, for messages.
        image_size: the size the run asked for.
        task: a :class:`harness.train.task.Task` whose targets these are (None: not checked).

    Returns:
        the split sizes, ``{"train": n, "val": n, "test": n}``.

    Raises:
        InvalidDataset: the first problem found, in one sentence naming the dataset.
    """
    what = f"dataset {name!r}"
    if not isinstance(splits, DataSplits):
        raise InvalidDataset(f"{what}: load() returned {type(splits).__name__}, not a "
                             f"harness.train.data.DataSplits(train, val, test, info)")
    if not isinstance(splits.info, DataInfo):
        raise InvalidDataset(f"{what}: DataSplits.info is {type(splits.info).__name__}, not "
                             f"a harness.train.data.DataInfo")
    info = splits.info
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    for split, part in parts.items():
        if not isinstance(part, TensorSplit):
            raise InvalidDataset(f"{what}: the {split} split is {type(part).__name__}, not a "
                                 f"harness.train.data.TensorSplit(images, targets)")
        if len(part) == 0:
            raise InvalidDataset(f"{what}: the {split} split is empty; every split needs "
                                 f"at least one example")
        problem = _image_problem(part.images, image_size)
        if problem is None and task is not None:
            problem = task.check_targets(part.targets, info)
        if problem:
            raise InvalidDataset(f"{what}, {split} split: {problem}")
    if disjoint:
        seen = set(_row_digests(splits.train.images))
        for split in ("val", "test"):
            rows = _row_digests(parts[split].images)
            both = [i for i, d in enumerate(rows) if d in seen]
            if both:
                raise InvalidDataset(
                    f"{what}: {len(both)} {split} image(s) also appear in an earlier split "
                    f"(first: {split} index {both[0]}); the splits must be disjoint, or the "
                    f"{split} results measure memory, not transfer")
            seen.update(rows)
    return splits.sizes()

