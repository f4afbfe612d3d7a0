"""The user's own images: one subfolder per class, optional CSV of boxes or keypoints.

Layout::

    ROOT/<class_a>/*.jpg|png|...     classification labels = sorted subfolder names
    ROOT/<class_b>/...
    ROOT/boxes.csv                   optional: file,xmin,ymin,xmax,ymax (pixels)
    ROOT/keypoints.csv               optional: file,<kp>_x,<kp>_y[,<kp>_v] ... (pixels)

``file`` is relative to ROOT. Pass ``annotations=NAME.csv`` to pick another CSV. Images
without a row in the CSV are counted and reported skips for localization and pose.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional

import torch

from harness.train.data import BadData, DataInfo, DataSplits, decode_cached, list_names
from harness.api.errors import DataUnavailable

from ._common import absent_class_notes, box_problem, seeded_split, splits_from

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEFAULT_CSV = {"localization": "boxes.csv", "pose": "keypoints.csv"}


def scan(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files, their class index and the class names (sorted subfolders)."""
    if not root.is_dir():
        raise DataUnavailable(f"imagefolder root {root} is not a folder; pass "
                              f"--dataset imagefolder,root=PATH with one subfolder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise BadData(f"imagefolder root {root} has no class subfolders; put the images of "
                      f"each class in ROOT/<class name>/")
    files, labels, empty = [], [], []
    for c, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in EXTENSIONS)
        if not found:
            empty.append(name)
        files += found
        labels += [c] * len(found)
    if empty:
        raise BadData(f"imagefolder root {root}: {len(empty)} class folder(s) hold no images "
                      f"({', '.join(sorted(EXTENSIONS))}): {list_names(empty, sep=', ')}. Add "
                      f"images to them, or move them out of {root} (every subfolder is a class)")
    return files, labels, classes


def read_csv(path: Path, root: Path, task: str) -> tuple[dict, list[str], dict]:
    """``{resolved file: values}``, the keypoint names (pose) and ``{resolved file: (line,
    file as written)}``.

    Every value must be a finite number (a NaN or infinite coordinate or visibility would
    make the loss NaN); every bad line is named in one message, with the file and line.
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if "file" not in cols:
            raise BadData(f"{path}: first row must name the columns, with a 'file' column")
        if task == "localization":
            need = ["xmin", "ymin", "xmax", "ymax"]
            if any(c not in cols for c in need):
                raise BadData(f"{path}: localization needs columns file,{','.join(need)}")
            kps = []
        else:
            kps = [c[:-2] for c in cols if c.endswith("_x") and f"{c[:-2]}_y" in cols]
            if not kps:
                raise BadData(f"{path}: pose needs columns <name>_x,<name>_y[,<name>_v]")
        out, lines, problems = {}, {}, []
        for n, row in enumerate(reader, 2):
            img = (root / (row["file"] or "")).resolve()
            if not img.is_relative_to(root):
                problems.append(f"{path.name} line {n}: image {row['file']!r} is outside the "
                                f"dataset folder {root}; name files relative to it, inside it")
                continue
            if not img.is_file():
                problems.append(f"{path.name} line {n}: image {row['file']!r} does not exist "
                                f"(looked for {img})")
                continue
            try:
                if task == "localization":
                    values = [float(row[c]) for c in ("xmin", "ymin", "xmax", "ymax")]
                    flat = values
                else:
                    values = [[float(row[f"{k}_x"]), float(row[f"{k}_y"]),
                               float(row.get(f"{k}_v") or 2)] for k in kps]
                    flat = [v for kp in values for v in kp]
            except (TypeError, ValueError):
                problems.append(f"{path.name} line {n}: a coordinate is not a number")
                continue
            if not all(math.isfinite(v) for v in flat):
                what = ("a box coordinate" if task == "localization" else
                        "a keypoint coordinate or visibility (an unlabelled keypoint is "
                        "x,y,v = 0,0,0)")
                problems.append(f"{path.name} line {n}: {what} is NaN or infinite")
                continue
            out[img], lines[img] = values, (n, row["file"])
    if problems:
        raise BadData(f"{path}: {len(problems)} bad row(s): {list_names(problems)}. Correct "
                      f"these rows and run again")
    return out, kps, lines


def check_annotations(task: str, csv_path: Path, files: list, values: list, sizes: torch.Tensor,
                      lines: dict) -> None:
    """Boxes and labelled keypoints must lie inside their image, as displayed (EXIF
    orientation applied: the size :func:`decode_cached` returns); every bad row in one message."""
    problems = []
    for f, v, (w, h) in zip(files, values, sizes.tolist()):
        n, name = lines[f.resolve()]
        at = f"{csv_path.name} line {n}, row for {name}"
        if task == "localization":
            problem = box_problem(tuple(v), w, h)
            if problem:
                problems.append(f"{at}: {problem}")
        else:
            kp = torch.tensor(v)
            vis = kp[:, 2] > 0
            if ((kp[vis, 0] < 0) | (kp[vis, 0] > w) | (kp[vis, 1] < 0) | (kp[vis, 1] > h)).any():
                problems.append(f"{at}: a labelled keypoint lies outside its {w}x{h} image")
    if problems:
        raise BadData(f"{csv_path}: {len(problems)} annotation(s) outside their image: "
                      f"{list_names(problems)}. Coordinates are pixels of the image as it is "
                      f"displayed (after its EXIF rotation); correct these rows")


def load_imagefolder(task: str, image_size: int, seed: int, cache_dir: Path,
                     root: Optional[str] = None, annotations: Optional[str] = None,
                     val_frac: float = 0.2, test_frac: float = 0.2) -> DataSplits:
    """Images of the user's own; splits are stratified by class and drawn by seed.

    Args:
        root: the folder (one subfolder per class).
        annotations: CSV under ``root`` (default ``boxes.csv`` / ``keypoints.csv``).
        val_frac, test_frac: shares held out for validation and test.
    """
    if not root:
        raise DataUnavailable("imagefolder needs a folder: --dataset imagefolder,root=PATH")
    rootp = Path(root).expanduser().resolve()
    files, labels, classes = scan(rootp)
    notes: list[str] = []
    y: torch.Tensor = torch.tensor(labels)
    kps: list[str] = []
    if task in DEFAULT_CSV:
        csv_path = (rootp / (annotations or DEFAULT_CSV[task])).resolve()
        if not csv_path.is_relative_to(rootp):
            raise DataUnavailable(f"annotations={annotations!r} is outside the dataset folder "
                                  f"{rootp}: put the CSV inside it and name it relative to it")
        if not csv_path.is_file():
            raise DataUnavailable(f"{task} on imagefolder needs {csv_path} (see "
                                  f"'bench list datasets' and the README for its columns)")
        table, kps, lines = read_csv(csv_path, rootp, task)
        kept = [i for i, f in enumerate(files) if f.resolve() in table]
        if len(kept) < len(files):
            notes.append(f"{len(files) - len(kept)} of {len(files)} images have no row in "
                         f"{csv_path.name} and were skipped")
        files = [files[i] for i in kept]
        y = y[kept]
        values = [table[f.resolve()] for f in files]
    imgs, sizes, _ = decode_cached(
        files, image_size, cache_dir,
        fix=f"Put an intact copy of each in its place (of a bomb: a smaller copy), or move it "
            f"out of {rootp}")
    if task in DEFAULT_CSV:
        check_annotations(task, csv_path, files, values, sizes, lines)
    if task == "localization":
        t = torch.tensor(values) / sizes.repeat(1, 2).float()
    elif task == "pose":
        t = torch.tensor(values)
        t[..., :2] /= sizes[:, None, :].float()
    else:
        t = y
    parts = seeded_split(len(files), (1 - val_frac - test_frac, val_frac, test_frac), seed, y)
    notes += absent_class_notes(y[parts[0]], {"val": y[parts[1]], "test": y[parts[2]]},
                                classes, f"imagefolder {rootp}")
    info = DataInfo(f"imagefolder:{rootp.name}", num_classes=len(classes), class_names=classes,
                    num_keypoints=len(kps), keypoint_names=list(kps), source=str(rootp),
                    notes=notes)
    return splits_from(imgs, t, parts, info)
