"""TensorRT itself (the ``tensorrt`` Python API, TensorRT 10 and 11): an engine built from
the cell's ONNX file, in fp32, fp16 or int8, run with PyTorch CUDA tensors as buffers.

The two major versions build reduced precision differently, and the installed API decides
which way (:func:`typing_of`, by the API's surface, not its version string):

* **weakly typed** (TensorRT 10: ``BuilderFlag.FP16`` / ``BuilderFlag.INT8`` and the
  ``IInt8EntropyCalibrator2`` exist): the fp32 ONNX file, ``BuilderFlag.FP16`` for fp16;
  for int8 ``BuilderFlag.INT8`` *and* ``BuilderFlag.FP16`` (layers TensorRT cannot run in
  int8 fall back to fp16, not fp32) with an entropy calibrator fed the cell's calibration
  images through a calibration profile of exactly the calibrator's batch;
* **strongly typed** (TensorRT 11 removed those flags, ``int8_calibrator`` and the
  calibrators: every tensor's type comes from the network): the network is created with
  ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` where the flag exists (always on in 11);
  fp16 parses an ONNX file converted to fp16 with fp32 inputs and outputs (ONNX Runtime's
  ``float16`` converter, ``keep_io_types``, nodes re-sorted), int8 one quantized with
  explicit Q/DQ by ONNX Runtime's quantizer (symmetric int8 activations and per-channel
  weights, fp32 biases: :func:`plugins.runtimes.onnxruntime.quantize`, ``int8-symmetric``),
  then moved to opset 19 and converted to fp16: the strongly typed equivalent of int8 with
  fp16 fallback (fp16 scales; layers the quantizer left unquantized run in fp16), the form
  NVIDIA's ModelOpt writes with ``high_precision_dtype="fp16"``.

Common to both: one optimization profile from batch 1 to the profile's batch (opt = max);
``BuilderFlag.TF32`` cleared when ``[latency] tf32`` is off; timing by
:func:`harness.measure.gpu.measure_gpu` (trtexec's GPU compute time and end-to-end latency,
``execute_async_v3`` on the runner's own stream); every precision's outputs compared with
PyTorch's (:func:`plugins.runtimes._common.gpu_parity`: fp32 and fp16 enforced).
"""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import numpy as np

from harness.measure.latency import PeakMemory

from ._common import (as_float_images, batched_outputs, cuda_reason, failed, file_mb,
                      gpu_parity, inputs, once_per_cell, unsupported)

PRECISIONS = ("fp32", "fp16", "int8")


def tensorrt_available() -> tuple[bool, str]:
    if importlib.util.find_spec("tensorrt") is None:
        return False, "tensorrt is not installed (pip install 'transfer-bench[gpu]')"
    reason = cuda_reason()
    return reason is None, reason or ""


def typing_of(trt) -> str:
    """``"weak"`` where the builder still has precision flags and int8 calibrators
    (TensorRT 10), ``"strong"`` where it has not (TensorRT 11: types come from the network)."""
    flags = getattr(trt, "BuilderFlag", None)
    weak = (hasattr(flags, "FP16") and hasattr(flags, "INT8")
            and hasattr(trt, "IInt8EntropyCalibrator2"))
    return "weak" if weak else "strong"


def network_flags(trt, typing: str) -> int:
    """``create_network`` flags: ``STRONGLY_TYPED`` for a strongly typed build where the
    enum still names it, else 0 (explicit batch is the only mode since TensorRT 10)."""
    if typing != "strong":
        return 0
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    return 1 << int(flag) if flag is not None else 0


def _to_fp16(model):
    """``model`` (an ``onnx.ModelProto``) with fp16 weights, activations and Q/DQ scales and
    fp32 inputs and outputs, its nodes topologically sorted (the converter appends its
    input casts at the end, and TensorRT's parser reads nodes in order)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel
    converted = OnnxModel(convert_float_to_float16(model, keep_io_types=True))
    converted.topological_sort()
    return converted.model


def fp16_onnx(art) -> tuple[Path, dict]:
    """An fp16 copy of the cell's ONNX file with fp32 inputs and outputs (made once per
    cell): what a strongly typed build parses for fp16."""
    src = Path(art.onnx_path)

    def make(dst: Path) -> dict:
        import onnx
        t0 = time.perf_counter()
        onnx.save(_to_fp16(onnx.load(str(src))), str(dst))
        return {"method": "ONNX Runtime float16 converter (keep_io_types: fp32 inputs and "
                          "outputs, fp16 inside)", "convert_s": time.perf_counter() - t0}

    return once_per_cell(art, f"{src.stem}.fp16.onnx", make)


def int8_fp16_onnx(art) -> tuple[Path, dict]:
    """The strongly typed form of "int8 with fp16 fallback" (made once per cell): the cell's
    symmetric int8 Q/DQ file (:func:`plugins.runtimes.onnxruntime.quantize`,
    ``int8-symmetric``) moved to opset 19 (whose Q/DQ take fp16 scales) and converted to
    fp16, so dequantized tensors and the layers the quantizer left unquantized are fp16,
    as NVIDIA's ModelOpt writes them (``high_precision_dtype="fp16"``)."""
    from .onnxruntime import quantize
    qdq, how = quantize(art, "int8-symmetric")

    def make(dst: Path) -> dict:
        import onnx
        from onnx import version_converter
        t0 = time.perf_counter()
        model = onnx.load(str(qdq))
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                    default=0)
        if opset < 19:
            model = version_converter.convert_version(model, 19)
        onnx.save(_to_fp16(model), str(dst))
        return {**how, "method": how["method"] + "; then opset 19 and fp16 (fp16 scales, "
                                                 "fp16 outside the int8 layers)",
                "convert_s": time.perf_counter() - t0}

    return once_per_cell(art, f"{qdq.stem}.fp16.onnx", make)


def onnx_for(art, precision: str, typing: str) -> tuple[Path, dict]:
    """The ONNX file a build of ``precision`` parses and how it was made (untimed)."""
    if typing == "weak" or precision == "fp32":
        how = {"types": {"fp32": "fp32",
                         "fp16": "BuilderFlag.FP16 (TensorRT picks fp16 or fp32 per layer)",
                         "int8": "BuilderFlag.INT8 + FP16 with entropy calibration (layers "
                                 "without an int8 kernel fall back to fp16)"}[precision]}
        return Path(art.onnx_path), how
    if precision == "fp16":
        path, how = fp16_onnx(art)
        return path, {**how, "types": "strongly typed: fp16 from the converted ONNX file"}
    path, how = int8_fp16_onnx(art)
    return path, {**how, "types": "strongly typed: explicit Q/DQ int8 with fp16 scales; "
                                  "layers left unquantized run in fp16"}


def _calibrator(trt, images: np.ndarray, batch: int, cache: Path, device: str = "cuda"):
    """An IInt8EntropyCalibrator2 (weakly typed builds only) that hands TensorRT ``images``
    in batches of exactly ``batch`` from one buffer of that many images; the calibration
    profile has the same batch (:func:`build_engine`), so TensorRT never reads past it."""
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # the binding requires this call
            self.pos = 0
            self.buf = torch.empty((batch, *images.shape[1:]), dtype=torch.float32,
                                   device=device)

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            if self.pos + batch > len(images):
                return None  # no more whole batches: calibration ends
            self.buf.copy_(torch.from_numpy(images[self.pos:self.pos + batch]))
            if self.buf.is_cuda:  # pragma: no cover - needs a GPU
                torch.cuda.synchronize()
            self.pos += batch
            return [int(self.buf.data_ptr())]

        def read_calibration_cache(self):
            return None  # calibrate afresh: the cache would belong to another model

        def write_calibration_cache(self, data):
            cache.write_bytes(bytes(data))

    return EntropyCalibrator()


def build_engine(onnx_path, batch: int, image_size: int, precision: str,
                 calibration=None, workdir=None, workspace_gb: float = 2.0,
                 tf32: bool = True, trt=None, calib_device: str = "cuda") -> tuple[bytes, dict]:
    """A serialized TensorRT engine (plan) for ``onnx_path`` and what the build used.

    ``onnx_path`` is the file :func:`onnx_for` gives for ``precision`` (for a strongly
    typed build it already carries the types). Returns ``(plan, info)`` with ``typing``,
    ``flags`` set and ``tf32``.

    Raises:
        RuntimeError: the parser or the builder failed (parser errors are listed).
        ValueError: int8 without calibration images (weakly typed), or a precision TRT
            is not measured in.
    """
    if trt is None:
        import tensorrt as trt
    if precision not in PRECISIONS:
        raise ValueError(f"TensorRT precision {precision!r} is not one of {PRECISIONS}")
    typing = typing_of(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, typing))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    name = network.get_input(0).name
    shape_max = (batch, 3, image_size, image_size)
    prof = builder.create_optimization_profile()
    prof.set_shape(name, (1, 3, image_size, image_size), shape_max, shape_max)
    config.add_optimization_profile(prof)
    flags = []
    if typing == "weak" and precision in ("fp16", "int8"):
        flags.append("FP16")
    if typing == "weak" and precision == "int8":
        images = as_float_images(calibration)
        if images is None or not len(images):
            raise ValueError("TensorRT int8 needs calibration images; the cell passed none")
        flags.append("INT8")
        cb = min(batch, len(images))
        cache = Path(workdir or ".") / f"trt-int8-b{cb}.calib"
        config.int8_calibrator = _calibrator(trt, images, cb, cache, calib_device)
        calib = builder.create_optimization_profile()
        shape_c = (cb, 3, image_size, image_size)
        calib.set_shape(name, shape_c, shape_c, shape_c)
        config.set_calibration_profile(calib)
    for f in flags:
        config.set_flag(getattr(trt.BuilderFlag, f))
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
    if tf32_flag is not None and not tf32:
        config.clear_flag(tf32_flag)
    used_tf32 = bool(config.get_flag(tf32_flag)) if tf32_flag is not None else None
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine for {onnx_path} "
                           "(see the TensorRT log above)")
    return bytes(plan), {"typing": typing, "builder_flags": flags, "tf32": used_tf32,
                         "network_flags": network_flags(trt, typing)}


def _torch_dtype(trt, trt_dtype):  # pragma: no cover - needs a GPU
    import torch
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int8: torch.int8, trt.bool: torch.bool}
    return table[trt_dtype]


class EngineRunner:  # pragma: no cover - needs a GPU
    """Runs a deserialized engine on PyTorch CUDA tensors on its own stream."""

    def __init__(self, plan: bytes):
        import tensorrt as trt
        import torch
        self._trt, self._torch = trt, torch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine it just built")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = self.engine.get_tensor_mode
        self.inp = [n for n in names if mode(n) == trt.TensorIOMode.INPUT][0]
        self.out = [n for n in names if mode(n) == trt.TensorIOMode.OUTPUT][0]
        self.stream = torch.cuda.Stream()

    def bind(self, x):
        """Bind ``x`` (a CUDA tensor) as the input; return the output tensor it fills."""
        torch = self._torch
        if not self.context.set_input_shape(self.inp, tuple(x.shape)):
            raise RuntimeError(f"TensorRT rejected input shape {tuple(x.shape)}")
        y = torch.empty(tuple(self.context.get_tensor_shape(self.out)), device=x.device,
                        dtype=_torch_dtype(self._trt, self.engine.get_tensor_dtype(self.out)))
        self.context.set_tensor_address(self.inp, x.data_ptr())
        self.context.set_tensor_address(self.out, y.data_ptr())
        return y

    def enqueue(self):
        """One inference enqueued on :attr:`stream` (no synchronization)."""
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Outputs on a host batch (parity and accuracy; synchronous)."""
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch)).cuda()
        y = self.bind(x)
        self.stream.wait_stream(torch.cuda.current_stream())  # x is written on that stream
        self.enqueue()
        self.stream.synchronize()
        return y.float().cpu().numpy()

    def device_memory_mb(self):
        # device_memory_size was removed in TensorRT 11; _v2 exists since 10.0
        size = getattr(self.engine, "device_memory_size_v2", None)
        if size is None:
            size = getattr(self.engine, "device_memory_size", None)
        return size / 2**20 if size is not None else None


def tensorrt_measure(art, profile, settings) -> list[dict]:  # pragma: no cover - needs a GPU
    """fp32, fp16 and int8 engines for the profile's batch size, on this worker's GPU
    (``cuda:0`` of the GPUs ``CUDA_VISIBLE_DEVICES`` shows it)."""
    import tensorrt as trt
    import torch

    from harness.measure.gpu import measure_gpu

    rows = []
    typing = typing_of(trt)
    test = as_float_images(art.test_images)
    x = inputs(art, profile)
    for prec in profile.precisions:
        if prec not in PRECISIONS:
            rows.append(unsupported(prec, f"TensorRT is measured in {', '.join(PRECISIONS)}"))
            continue
        try:
            path, how = onnx_for(art, prec, typing)
            torch.cuda.empty_cache()
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                plan, info = build_engine(path, profile.batch_size, art.image_size, prec,
                                          art.calibration, art.workdir, tf32=settings.tf32,
                                          trt=trt)
                build_s = time.perf_counter() - t0
                runner = EngineRunner(plan)
                x_host = torch.from_numpy(x).pin_memory()
                x_dev = torch.empty(x_host.shape, dtype=x_host.dtype, device="cuda")
                y_dev = runner.bind(x_dev)
                y_host = torch.empty(y_dev.shape, dtype=y_dev.dtype, pin_memory=True)
                timing = measure_gpu(lambda: x_dev.copy_(x_host, non_blocking=True),
                                     runner.enqueue,
                                     lambda: y_host.copy_(y_dev, non_blocking=True),
                                     runner.stream, profile.batch_size, settings)
            row = {"precision": prec, **timing, "device": torch.cuda.get_device_name(0),
                   "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "tensorrt": trt.__version__, **info, "memory": mem.as_dict(),
                   "file_mb": file_mb(path), "engine_mb": len(plan) / 2**20,
                   "build_s": build_s, **how,
                   "gpu_memory": {"engine_activation_mb": runner.device_memory_mb(),
                                  "method": "ICudaEngine device memory size (activations)"}}
            row["parity"] = gpu_parity(art, x, runner.run(x), prec, info["tf32"])
            if test is not None:  # compared with PyTorch by the cell, every precision
                row["test_outputs"] = batched_outputs(runner.run, test, profile.batch_size)
            rows.append(row)
        except Exception as exc:  # one precision failing does not hide the others
            rows.append(failed(prec, exc))
    return rows
