"""ONNX Runtime: the CPU execution provider (fp32, int8 static QDQ, int8 dynamic), and the
CUDA and TensorRT execution providers of ``onnxruntime-gpu``.

Sessions turn intra-op spinning off (``session.intra_op.allow_spinning = 0``) and each
runtime is measured in its own worker process (:mod:`harness.measure.isolate`); rows say both.
This module imports no torch, so an ONNX Runtime worker starts in well under a second.
"""
from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import numpy as np

from harness.measure.latency import PeakMemory, measure

from ._common import (as_float_images, batched_outputs, compare_outputs, cuda_reason, failed,
                      file_mb, inputs, once_per_cell, threads, unsupported)

CPU_PRECISIONS = ("fp32", "int8", "int8-dynamic")


def ort_session(path, n_threads: int, providers=("CPUExecutionProvider",)):
    """An InferenceSession with explicit threads, sequential execution and spinning off."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = n_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=list(providers))


def ort_available() -> tuple[bool, str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime is not installed (pip install onnxruntime)"
    return True, ""


# -- int8 quantization ------------------------------------------------------------------------
def _reader(input_name: str, images: np.ndarray, batch: int = 8):
    from onnxruntime.quantization import CalibrationDataReader

    class _Images(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{input_name: images[i:i + batch]}
                             for i in range(0, len(images), batch)])

        def get_next(self):
            return next(self._it, None)

    return _Images()


def quantize(art, precision: str) -> tuple[Path, dict]:
    """Write an int8 copy of ``art.onnx_path``; return its path and how it was made.

    ``int8``: static quantization in QDQ format (``quantize_static``): int8 per-channel
    weights, uint8 activations whose ranges are calibrated (MinMax) on the cell's
    calibration images. ``int8-dynamic``: ``quantize_dynamic``, int8 weights, activation
    ranges computed at run time. Made once per cell (:func:`once_per_cell`): the file has
    a dynamic batch axis, so every profile runs the same one.
    """
    src = Path(art.onnx_path)
    return once_per_cell(art, f"{src.stem}.{precision}.onnx",
                         lambda dst: _quiet_quantize(art, precision, src, dst))


def _quiet_quantize(art, precision: str, src: Path, dst: Path) -> dict:
    t0 = time.perf_counter()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer warns per bias tensor on the root logger
    try:
        return _quantize(art, precision, src, dst, t0)
    finally:
        root.setLevel(level)


def _quantize(art, precision: str, src: Path, dst: Path, t0: float) -> dict:
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    if precision == "int8-dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        how = {"method": "quantize_dynamic: int8 weights, dynamic activation ranges"}
    else:
        calib = as_float_images(art.calibration)
        if calib is None or not len(calib):
            raise ValueError("static int8 quantization needs calibration images; the cell "
                             "passed none (Artifacts.calibration)")
        name = ort_session(src, 1).get_inputs()[0].name
        quantize_static(str(src), str(dst), _reader(name, calib), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        how = {"method": "quantize_static QDQ: per-channel int8 weights, uint8 activations, "
                         "MinMax calibration", "calibration_images": int(len(calib))}
    how["quantize_s"] = time.perf_counter() - t0
    return how


# -- CPU execution provider -------------------------------------------------------------------
def ort_measure(art, profile, settings) -> list[dict]:
    """fp32, int8 (static QDQ) and int8-dynamic on the CPU provider, as the profile asks."""
    if profile.device == "gpu":
        return [unsupported(p, "the ONNX Runtime CPU runtime does not run gpu profiles; use "
                               "onnxruntime-cuda or onnxruntime-tensorrt")
                for p in profile.precisions]
    n = threads(profile)
    x = inputs(art, profile)
    test = as_float_images(art.test_images)
    rows = []
    for prec in profile.precisions:
        if prec not in CPU_PRECISIONS:
            rows.append(unsupported(prec, f"ONNX Runtime's CPU provider is measured in "
                                          f"{', '.join(CPU_PRECISIONS)}; {prec} is not"))
            continue
        try:
            path, how = (Path(art.onnx_path), {}) if prec == "fp32" else quantize(art, prec)
            with PeakMemory() as mem:
                sess = ort_session(path, n)
                name = sess.get_inputs()[0].name
                stats = measure(lambda: sess.run(None, {name: x}), profile.batch_size, settings)
            row = {"precision": prec, "stats": stats, "device": "cpu", "threads": n,
                   "spinning": "off", "provider": sess.get_providers()[0],
                   "memory": {**mem.as_dict(), "scope": "session creation + inference"},
                   "file_mb": file_mb(path), **how}
            if prec != "fp32" and test is not None:
                row["test_outputs"] = batched_outputs(lambda c: sess.run(None, {name: c})[0],
                                                      test, max(profile.batch_size, 64))
            rows.append(row)
        except Exception as exc:  # one precision failing does not hide the others
            rows.append(failed(prec, exc))
    return rows


# -- CUDA and TensorRT execution providers ----------------------------------------------------
def _gpu_provider_reason(provider: str):
    ok, why = ort_available()
    if not ok:
        return why
    import onnxruntime as ort
    have = ort.get_available_providers()
    if provider not in have:
        return (f"{provider} is not among onnxruntime.get_available_providers() = {have}; "
                f"install onnxruntime-gpu in place of onnxruntime "
                f"(pip install 'transfer-bench[gpu]')")
    return cuda_reason()


def ort_cuda_available() -> tuple[bool, str]:
    reason = _gpu_provider_reason("CUDAExecutionProvider")
    return reason is None, reason or ""


def ort_trt_available() -> tuple[bool, str]:
    reason = _gpu_provider_reason("TensorrtExecutionProvider")
    return reason is None, reason or ""


def _measure_gpu(art, profile, settings, provider: str, options: dict,
                 prec: str) -> dict:  # pragma: no cover - needs a GPU
    import onnxruntime as ort
    chain = [(provider, options)]
    if provider == "TensorrtExecutionProvider":
        chain.append(("CUDAExecutionProvider", {"device_id": 0}))
    chain.append("CPUExecutionProvider")
    free0 = _cuda_free()
    with PeakMemory() as mem:
        sess = ort_session(art.onnx_path, threads(profile), chain)
        if sess.get_providers()[0] != provider:
            raise RuntimeError(f"ONNX Runtime did not use {provider}: the session runs on "
                               f"{sess.get_providers()}")
        name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
        x = ort.OrtValue.ortvalue_from_numpy(inputs(art, profile), "cuda", 0)
        binding = sess.io_binding()
        binding.bind_ortvalue_input(name, x)
        binding.bind_output(out_name, "cuda", 0)

        def run():
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()

        stats = measure(run, profile.batch_size, settings)
    free1 = _cuda_free()
    row = {"precision": prec, "stats": stats, "device": "cuda:0", "provider": provider,
           "memory": mem.as_dict(), "file_mb": file_mb(art.onnx_path),
           "timing": "inputs and outputs bound on the GPU (IO binding); no host copies",
           "gpu_memory": {"used_delta_mb": (free0 - free1) / 2**20 if free0 and free1 else None,
                          "method": "cudaMemGetInfo used before session vs after the runs"}}
    test = as_float_images(art.test_images)
    if prec != "fp32" and test is not None:
        row["test_outputs"] = batched_outputs(lambda c: sess.run(None, {name: c})[0], test,
                                              profile.batch_size)
    return row


def _cuda_free():  # pragma: no cover - needs a GPU
    try:
        import torch
        return torch.cuda.mem_get_info()[0]
    except Exception:
        return None


def ort_cuda_measure(art, profile, settings) -> list[dict]:  # pragma: no cover - GPU
    """fp32 on the CUDA execution provider (fp16 needs a converted model: not measured)."""
    rows = []
    for prec in profile.precisions:
        if prec != "fp32":
            rows.append(unsupported(prec, "the CUDA execution provider runs the fp32 ONNX file; "
                                          "fp16/int8 are measured by onnxruntime-tensorrt and "
                                          "tensorrt"))
            continue
        try:
            rows.append(_measure_gpu(art, profile, settings, "CUDAExecutionProvider",
                                     {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE"},
                                     prec))
        except Exception as exc:
            rows.append(failed(prec, exc))
    return rows


def ort_trt_measure(art, profile, settings) -> list[dict]:  # pragma: no cover - GPU
    """fp32 and fp16 on the TensorRT execution provider, with an explicit shape profile
    (batch 1 to the profile's batch) so the engine is built once, at session creation."""
    rows = []
    s, b = art.image_size, profile.batch_size
    for prec in profile.precisions:
        if prec not in ("fp32", "fp16"):
            rows.append(unsupported(prec, "int8 in the TensorRT execution provider needs a "
                                          "calibration table; int8 is measured by tensorrt"))
            continue
        try:
            name = ort_session(art.onnx_path, 1).get_inputs()[0].name
            cache = Path(art.workdir) / f"ort-trt-cache-{prec}-b{b}"
            cache.mkdir(parents=True, exist_ok=True)
            opts = {"device_id": 0, "trt_fp16_enable": prec == "fp16",
                    "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                    "trt_profile_min_shapes": f"{name}:1x3x{s}x{s}",
                    "trt_profile_opt_shapes": f"{name}:{b}x3x{s}x{s}",
                    "trt_profile_max_shapes": f"{name}:{b}x3x{s}x{s}"}
            rows.append(_measure_gpu(art, profile, settings, "TensorrtExecutionProvider", opts,
                                     prec))
        except Exception as exc:
            rows.append(failed(prec, exc))
    return rows


def parity_check(model, onnx_path: Path, image_size: int,
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
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 3, image_size, image_size, generator=g)
    with torch.inference_mode():
        ref = model.eval()(x).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return compare_outputs(got, ref, atol, rtol, f"ONNX export of {onnx_path.name}")
