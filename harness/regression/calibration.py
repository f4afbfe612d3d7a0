"""The int8 calibration images of a check, the same for every worker.

`bench run` calibrates int8 conversions on a cell's first training images
(:func:`harness.run.cell.calibration_images`); a check loads the cell's data the same way in
the driver and writes those images once into an ``.npy`` file per cell, which every measuring
worker reads: the baseline's and the check's, the base revision's and the candidate's. So an
int8 model is calibrated on the very same images on both sides, whatever the two revisions'
code does to pick them.
"""
from __future__ import annotations

from pathlib import Path

from ..api.errors import BenchError
from ..api.manager import PluginSystem
from .rebuild import cell_config


def calibration_files(plugins: PluginSystem, entries: list[dict], folder: Path) -> dict:
    """``{cell id: path}`` of each entry's calibration images (float32, ``(N, 3, S, S)``,
    in [0, 1]) written under ``folder``.

    Raises:
        BenchError: a cell's dataset cannot be loaded (the message names the cell).
    """
    import numpy as np

    from ..run.cell import calibration_images, load_data

    out = {}
    for e in entries:
        try:
            images = calibration_images(load_data(plugins, cell_config(e["config"])))
        except Exception as exc:
            raise BenchError(f"cell {e.get('label', e['id'])}: cannot load its dataset for the "
                             f"int8 calibration images ({type(exc).__name__}: {exc}); make the "
                             "dataset available (it is loaded as `bench run` loads it)") from None
        path = Path(folder) / f"calibration-{e['id']}.npy"
        np.save(path, np.ascontiguousarray(images, dtype=np.float32))
        out[e["id"]] = str(path)
    return out


__all__ = ["calibration_files"]
