"""ONNX Runtime: the CPU execution provider (fp32, int8 static QDQ, int8 dynamic), and the
CUDA and TensorRT execution providers of ``onnxruntime-gpu``.

Sessions turn intra-op spinning off (``session.intra_op.allow_spinning = 0``) and each
runtime is measured in its own worker process (:mod:`harness.measure.isolate`); rows say both.
This module imports no torch, so an ONNX Runtime worker starts in well under a second.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import time
from pathlib import Path

import numpy as np

from harness.measure.latency import PeakMemory, measure

from ._common import (as_float_images, batched_outputs, compare_outputs, cuda_reason, failed,
                      file_mb, gpu_parity, inputs, no_gpu_device, once_per_cell, threads,
                      unsupported)

CPU_PRECISIONS = ("fp32", "int8", "int8-dynamic")


def ort_session(path, n_threads: int, providers=("CPUExecutionProvider",),
                profile_prefix=None, log_severity: int = 3):
    """An InferenceSession with explicit threads, sequential execution and spinning off.

    ``profile_prefix``: profile the session's runs into ``PREFIX_*.json`` until
    ``end_profiling()`` (:func:`node_placement` reads where each node ran).
    ``log_severity``: 3 shows errors only; GPU sessions pass 2, so ONNX Runtime's warnings
    that nodes were not assigned to the asked provider stay visible."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = n_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = log_severity
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), opts, providers=list(providers))


# -- where each node ran ----------------------------------------------------------------------
#: element types of tensors a compute node produces; a CPU node producing only int64/bool
#: tensors is shape arithmetic, which ONNX Runtime places on the CPU on purpose
_FLOAT_TYPES = {"float", "float16", "bfloat16", "double"}


class CpuFallbackError(RuntimeError):
    """Compute nodes of a GPU session ran on ONNX Runtime's CPU provider."""

    def __init__(self, message: str, placement: dict):
        super().__init__(message)
        self.result = placement  # kept in the failed row (``failed`` copies ``result``)


def node_placement(profile_file) -> dict:
    """Which execution provider ran each node, from an ONNX Runtime profile (the ``Node``
    events' ``provider`` and ``output_type_shape``): ``{"nodes_by_provider": {provider: n},
    "cpu_nodes": [{"node", "op", "outputs"}], "method"}``."""
    import json
    nodes: dict = {}
    for e in json.loads(Path(profile_file).read_text()):
        args = e.get("args") or {}
        if e.get("cat") != "Node" or "provider" not in args:
            continue
        name = str(e.get("name", "")).removesuffix("_kernel_time")
        outs = sorted({t for o in args.get("output_type_shape") or [] for t in o})
        nodes[name] = (args.get("op_name"), args["provider"], outs)
    by: dict = {}
    for _, prov, _ in nodes.values():
        by[prov] = by.get(prov, 0) + 1
    cpu = [{"node": n, "op": op, "outputs": outs} for n, (op, prov, outs) in nodes.items()
           if prov == "CPUExecutionProvider"]
    return {"nodes_by_provider": by, "cpu_nodes": cpu,
            "method": "ONNX Runtime profile of one run (Node events' provider)"}


def refuse_cpu_fallback(placement: dict, provider: str) -> dict:
    """``placement`` when no compute node fell back to the CPU provider; shape-only CPU nodes
    (int64/bool outputs) are allowed and stay recorded.

    Raises:
        CpuFallbackError: a CPU node produced a floating-point tensor, so the row would time
            a mix of GPU and CPU work (and host-device copies between them) as ``provider``.
    """
    if not placement["nodes_by_provider"]:
        raise CpuFallbackError("the ONNX Runtime profile recorded no node: where the model "
                               "ran cannot be checked", placement)
    compute = [n for n in placement["cpu_nodes"] if _FLOAT_TYPES & set(n["outputs"])]
    if compute:
        ops = ", ".join(f"{n['node']} ({n['op']})" for n in compute[:8])
        raise CpuFallbackError(
            f"ONNX Runtime ran {len(compute)} compute node(s) on CPUExecutionProvider instead "
            f"of {provider}: {ops}{' ...' if len(compute) > 8 else ''}; such a row would time "
            f"CPU work and host-device copies as {provider}, so it is refused", placement)
    return placement


#: distributions that install the ``onnxruntime`` package folder (one at a time, or the last
#: one installed silently replaces the others' files)
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino",
                     "onnxruntime-directml", "onnxruntime-qnn")
REINSTALL_GPU = ("pip uninstall -y " + " ".join(ORT_DISTRIBUTIONS)
                 + " && pip install onnxruntime-gpu")


def ort_builds() -> dict:
    """``{distribution: version}`` of the ONNX Runtime builds installed here."""
    import importlib.metadata as md
    out = {}
    for dist in ORT_DISTRIBUTIONS:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def ort_available() -> tuple[bool, str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return False, ("onnxruntime is not installed: pip install 'transfer-bench[cpu]' (the CPU "
                       "build) or 'transfer-bench[gpu]' (onnxruntime-gpu), one of the two")
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
    ranges computed at run time. ``int8-symmetric``: static QDQ with int8 activations and
    weights, zero points 0 (symmetric) and unquantized biases: the explicit quantization
    TensorRT accepts (its Q/DQ layers are symmetric int8), used by the ``tensorrt`` runtime
    where TensorRT has no int8 calibrator (TensorRT 11). Made once per cell
    (:func:`once_per_cell`): the file has a dynamic batch axis, so every profile runs the
    same one.
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
        symmetric = precision == "int8-symmetric"
        extra = ({"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
                 if symmetric else {})
        quantize_static(str(src), str(dst), _reader(name, calib), quant_format=QuantFormat.QDQ,
                        per_channel=True,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options=extra)
        how = {"method": ("quantize_static QDQ: per-channel int8 weights, symmetric int8 "
                          "activations (zero point 0), fp32 biases, MinMax calibration"
                          if symmetric else "quantize_static QDQ: per-channel int8 weights, "
                          "uint8 activations, MinMax calibration"),
               "calibration_images": int(len(calib))}
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
                # bound to this precision's session (the regression check calls it later)
                call = functools.partial(sess.run, None, {name: x})
                stats = measure(call, profile.batch_size, settings)
            row = {"precision": prec, "stats": stats, "device": "cpu", "threads": n,
                   "spinning": "off", "provider": sess.get_providers()[0],
                   "memory": {**mem.as_dict(), "scope": "session creation + inference"},
                   "file_mb": file_mb(path), **how}
            if test is not None:  # compared with PyTorch by the cell, every precision
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
    if no_gpu_device():  # said without importing onnxruntime (bench list runtimes)
        return no_gpu_device()
    import onnxruntime as ort
    have = ort.get_available_providers()
    if provider not in have:
        return missing_provider_reason(provider, have, ort_builds())
    return cuda_reason()


def missing_provider_reason(provider: str, have: list, builds: dict) -> str:
    """Why ``provider`` is missing from ``have``, from the ONNX Runtime ``builds`` installed,
    and the fix. Never recommends installing onnxruntime-gpu beside another build: two builds
    share the ``onnxruntime`` package folder, and that is what hides the GPU providers."""
    listed = ", ".join(f"{d} {v}" for d, v in sorted(builds.items())) or "none found"
    head = f"{provider} is not among onnxruntime.get_available_providers() = {have}"
    if len(builds) > 1:
        return (f"{head}: {len(builds)} ONNX Runtime builds are installed ({listed}); they share "
                f"the onnxruntime package folder and the last one installed replaced the "
                f"others' files. Keep exactly one: {REINSTALL_GPU}")
    if "onnxruntime-gpu" not in builds:
        return (f"{head}: the installed build ({listed}) has no GPU providers. Replace it "
                f"(do not add onnxruntime-gpu beside it): {REINSTALL_GPU}")
    return (f"{head}: onnxruntime-gpu {builds['onnxruntime-gpu']} is installed alone, so its "
            f"provider library failed to load: the CUDA, cuDNN (or, for TensorRT, the tensorrt) "
            f"libraries it was built for are missing or of another major version; onnxruntime "
            f"logs the loader's error when a session asks for {provider}")


def ort_cuda_available() -> tuple[bool, str]:
    reason = _gpu_provider_reason("CUDAExecutionProvider")
    return reason is None, reason or ""


def ort_trt_available() -> tuple[bool, str]:
    reason = _gpu_provider_reason("TensorrtExecutionProvider")
    return reason is None, reason or ""


def _measure_gpu(art, profile, settings, provider: str, options: dict,
                 prec: str) -> dict:  # pragma: no cover - needs a GPU
    """One GPU row: a session on ``provider`` (TensorRT's falls back to CUDA, never to the
    CPU: a profiled first run shows where every node ran, :func:`refuse_cpu_fallback`),
    inputs and outputs bound to CUDA buffers, the runtime's kernels on a PyTorch stream
    (``user_compute_stream``) timed by :func:`harness.measure.gpu.measure_gpu`."""
    import torch

    from harness.measure.gpu import measure_gpu

    stream = torch.cuda.Stream()
    handle = str(stream.cuda_stream)
    chain = [(provider, {**options, "user_compute_stream": handle})]
    if provider == "TensorrtExecutionProvider":
        chain.append(("CUDAExecutionProvider", {"device_id": 0, "user_compute_stream": handle,
                                                "use_tf32": int(settings.tf32)}))
    x = inputs(art, profile)
    torch.cuda.empty_cache()
    free0 = _cuda_free()
    with PeakMemory() as mem:
        sess = ort_session(art.onnx_path, threads(profile), chain,
                           profile_prefix=Path(art.workdir) / f"ort-{prec}-profile",
                           log_severity=2)
        if sess.get_providers()[0] != provider:
            raise RuntimeError(f"ONNX Runtime did not use {provider}: the session runs on "
                               f"{sess.get_providers()}")
        name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
        x_host = torch.from_numpy(x).pin_memory()
        x_dev = torch.empty(x_host.shape, dtype=torch.float32, device="cuda")
        first = sess.run(None, {name: x})[0]  # profiled: where every node ran
        placement = refuse_cpu_fallback(node_placement(sess.end_profiling()), provider)
        y_dev = torch.empty(first.shape, dtype=torch.float32, device="cuda")
        y_host = torch.empty(first.shape, dtype=torch.float32, pin_memory=True)
        binding = sess.io_binding()
        binding.bind_input(name, "cuda", 0, np.float32, list(x_host.shape), x_dev.data_ptr())
        binding.bind_output(out_name, "cuda", 0, np.float32, list(first.shape),
                            y_dev.data_ptr())
        timing = measure_gpu(lambda: x_dev.copy_(x_host, non_blocking=True),
                             lambda: sess.run_with_iobinding(binding),
                             lambda: y_host.copy_(y_dev, non_blocking=True), stream,
                             profile.batch_size, settings)
    free1 = _cuda_free()
    tf32 = bool(settings.tf32) if provider == "CUDAExecutionProvider" else True
    row = {"precision": prec, **timing, "device": torch.cuda.get_device_name(0),
           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "provider": provider, "providers": sess.get_providers(), "node_placement": placement,
           "tf32": tf32, "memory": mem.as_dict(), "file_mb": file_mb(art.onnx_path),
           "gpu_memory": {"used_delta_mb": (free0 - free1) / 2**20 if free0 and free1 else None,
                          "method": "cudaMemGetInfo used before session vs after the runs"}}
    if provider == "TensorrtExecutionProvider" and not settings.tf32:
        row["tf32_note"] = ("[latency] tf32 = false is not applied here: the TensorRT execution "
                            "provider has no TF32 switch (its TensorRT builds allow TF32)")
    row["parity"] = gpu_parity(art, x, first, prec, tf32)
    test = as_float_images(art.test_images)
    if test is not None:  # compared with PyTorch by the cell, every precision
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
                                     {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE",
                                      "use_tf32": int(settings.tf32)}, prec))
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
