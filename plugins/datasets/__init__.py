"""Built-in datasets: real offline ones, published ones that download, the user's own,
and a generated one (labelled synthetic). One module per dataset."""
from __future__ import annotations

from harness.api.lazy import lazy_exports
from harness import DatasetSpec, LazyCallable, hookimpl

__all__ = ["load_digits", "load_fashion_mnist", "load_flowers17", "load_imagefolder",
           "load_pets", "load_shapes", "read_idx"]


@hookimpl
def register_datasets():
    # named by import path, imported when data is loaded: bench list imports no torch
    def lazy(path: str) -> LazyCallable:
        return LazyCallable(path, __package__)

    load_flowers17, load_imagefolder = lazy(".flowers:load_flowers17"), lazy(
        ".imagefolder:load_imagefolder")
    load_digits, load_fashion_mnist = lazy(".offline:load_digits"), lazy(
        ".offline:load_fashion_mnist")
    load_pets, load_shapes = lazy(".pets:load_pets"), lazy(".synthetic:load_shapes")
    return [
        DatasetSpec("fashion_mnist", load=load_fashion_mnist, tasks=("classification",),
                    offline=True, description="Fashion-MNIST, 10 classes, real photos of "
                    "clothing (Debian dataset-fashion-mnist); few-shot subsets"),
        DatasetSpec("digits", load=load_digits, tasks=("classification",), offline=True,
                    description="scikit-learn digits, 1,797 8x8 images, 10 classes"),
        DatasetSpec("oxford_flowers17", load=load_flowers17, tasks=("classification",),
                    description="Oxford 17 Flowers, 1,360 photos, official splits "
                    "(download 58 MB, or root=PATH; split=1|2|3)"),
        DatasetSpec("oxford_pets", load=load_pets, tasks=("classification", "localization"),
                    description="Oxford-IIIT Pets, 7,349 photos: labels=breed|species, head "
                    "boxes (download 800 MB, or root=PATH)"),
        DatasetSpec("imagefolder", load=load_imagefolder,
                    tasks=("classification", "localization", "pose"),
                    description="your images: root=PATH, one subfolder per class; "
                    "boxes.csv / keypoints.csv for localization / pose"),
        DatasetSpec("shapes", load=load_shapes, tasks=("localization", "pose", "classification"),
                    synthetic=True, offline=True,
                    description="SYNTHETIC kites with a box and 4 keypoints (default "
                    "localization and pose cells); classification: the kite's quadrant"),
    ]


# what used to be imported at the top, imported on first use
__getattr__ = lazy_exports(__name__, {
    'load_flowers17': ('.flowers', 'load_flowers17'),
    'load_imagefolder': ('.imagefolder', 'load_imagefolder'),
    'load_digits': ('.offline', 'load_digits'),
    'load_fashion_mnist': ('.offline', 'load_fashion_mnist'),
    'read_idx': ('.offline', 'read_idx'),
    'load_pets': ('.pets', 'load_pets'),
    'load_shapes': ('.synthetic', 'load_shapes'),
})
