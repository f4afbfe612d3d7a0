"""ONNX export of a trained model with a dynamic batch axis, and a parity check."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..api.errors import BenchError


class ParityError(BenchError):
    """The exported model disagrees with PyTorch beyond tolerance.

    Attributes:
        result: the comparison (``max_abs_diff``, ``max_rel_diff``, ``atol``, ``rtol``,
            ``ok``), so a failed cell still records how far off the export was.
    """

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result or {}


def export_onnx(model: torch.nn.Module, image_size: int, path: Path, opset: int = 17) -> Path:
    """Export ``model`` (inputs: float images in [0, 1]) with a dynamic batch axis.

    Uses the TorchScript-based exporter: about 15x faster than the dynamo exporter for
    these CNNs (0.5 s against 7 s for MobileNetV2 here) and it handles every timm CNN.
    """
    model = model.eval()
    dummy = torch.rand(2, 3, image_size, image_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["outputs"],
                          dynamic_axes={"images": {0: "batch"}, "outputs": {0: "batch"}})
    return path


def parity_check(model: torch.nn.Module, onnx_path: Path, image_size: int,
                 batch_size: int = 3, atol: float = 1e-3, rtol: float = 1e-3,
                 seed: int = 0) -> dict:
    """Compare PyTorch and ONNX Runtime (CPU) outputs on the same random inputs.

    A batch size different from the export's dummy batch exercises the dynamic axis.

    Returns:
        ``{"max_abs_diff", "max_rel_diff", "atol", "rtol", "ok"}``.

    Raises:
        ParityError: when the outputs differ beyond ``atol + rtol * |reference|``.
    """
    import onnxruntime as ort

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 3, image_size, image_size, generator=g)
    with torch.inference_mode():
        ref = model.eval()(x).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    if got.shape != ref.shape:
        raise ParityError(f"ONNX output shape {got.shape} differs from PyTorch {ref.shape}")
    diff = np.abs(got - ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / (np.abs(ref) + 1e-12)).max()) if diff.size else 0.0
    ok = bool(np.all(diff <= atol + rtol * np.abs(ref)))
    result = {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "atol": atol, "rtol": rtol,
              "ok": ok}
    if not ok:
        raise ParityError(f"ONNX export of {onnx_path.name} disagrees with PyTorch: max abs "
                          f"difference {max_abs:.3g} > atol {atol} + rtol {rtol} x |ref|",
                          result)
    return result
