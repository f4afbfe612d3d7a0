"""TensorRT itself (the ``tensorrt`` Python API, TensorRT 10): an engine built from the
cell's ONNX file, in fp32, fp16 or int8, run with PyTorch CUDA tensors as buffers.

* build: ``Builder`` -> ``create_network(0)`` (explicit batch, the only mode in TRT 10) ->
  ``OnnxParser.parse_from_file``; one optimization profile from batch 1 to the profile's
  batch (opt = max); ``BuilderFlag.FP16`` for fp16; ``BuilderFlag.INT8`` with an
  ``IInt8EntropyCalibrator2`` fed the cell's calibration images for int8 (implicit
  quantization: deprecated since TRT 10.1 in favour of explicit Q/DQ, still supported);
* run: ``set_input_shape`` and ``set_tensor_address`` for each I/O tensor, then
  ``execute_async_v3`` on a dedicated CUDA stream, synchronized after each call, so a
  timing is GPU compute plus launch overhead, with inputs already on the GPU.
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

from harness.measure.latency import PeakMemory, measure

from ._common import (as_float_images, batched_outputs, cuda_reason, failed, file_mb, inputs,
                      unsupported)

PRECISIONS = ("fp32", "fp16", "int8")


def tensorrt_available() -> tuple[bool, str]:
    if importlib.util.find_spec("tensorrt") is None:
        return False, "tensorrt is not installed (pip install 'transfer-bench[gpu]')"
    reason = cuda_reason()
    return reason is None, reason or ""


def _torch_dtype(trt_dtype):  # pragma: no cover - needs a GPU
    import tensorrt as trt
    import torch
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int8: torch.int8, trt.bool: torch.bool}
    return table[trt_dtype]


def _calibrator(images: np.ndarray, batch: int, cache: Path):  # pragma: no cover - GPU
    """An IInt8EntropyCalibrator2 that hands TensorRT ``images`` in batches of ``batch``."""
    import tensorrt as trt
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # the binding requires this call
            self.pos = 0
            self.buf = torch.empty((batch, *images.shape[1:]), dtype=torch.float32,
                                   device="cuda")

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            if self.pos + batch > len(images):
                return None  # no more batches: calibration ends
            self.buf.copy_(torch.from_numpy(images[self.pos:self.pos + batch]))
            torch.cuda.synchronize()
            self.pos += batch
            return [int(self.buf.data_ptr())]

        def read_calibration_cache(self):
            return None  # calibrate afresh: the cache would belong to another model

        def write_calibration_cache(self, data):
            cache.write_bytes(bytes(data))

    return EntropyCalibrator()


def build_engine(onnx_path, batch: int, image_size: int, precision: str,
                 calibration=None, workdir=None, workspace_gb: float = 2.0) -> bytes:
    """A serialized TensorRT engine (plan) for ``onnx_path`` (needs a GPU).

    Raises:
        RuntimeError: the parser or the builder failed (parser errors are listed).
        ValueError: int8 without calibration images, or a precision TRT does not offer.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    inp = network.get_input(0)
    shape_min, shape_max = (1, 3, image_size, image_size), (batch, 3, image_size, image_size)
    prof = builder.create_optimization_profile()
    prof.set_shape(inp.name, shape_min, shape_max, shape_max)
    config.add_optimization_profile(prof)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        images = as_float_images(calibration)
        if images is None or not len(images):
            raise ValueError("TensorRT int8 needs calibration images; the cell passed none")
        config.set_flag(trt.BuilderFlag.INT8)
        cache = Path(workdir or ".") / f"trt-int8-b{batch}.calib"
        config.int8_calibrator = _calibrator(images, min(batch, len(images)), cache)
        config.set_calibration_profile(prof)
    elif precision != "fp32":
        raise ValueError(f"TensorRT precision {precision!r} is not one of {PRECISIONS}")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine for {onnx_path} "
                           "(see the TensorRT log above)")
    return bytes(plan)


class EngineRunner:  # pragma: no cover - needs a GPU
    """Runs a deserialized engine on PyTorch CUDA tensors; reshapes on a new batch size."""

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
        self.shape = None
        self.y = None

    def __call__(self, x):
        torch = self._torch
        if tuple(x.shape) != self.shape:
            if not self.context.set_input_shape(self.inp, tuple(x.shape)):
                raise RuntimeError(f"TensorRT rejected input shape {tuple(x.shape)}")
            oshape = tuple(self.context.get_tensor_shape(self.out))
            self.y = torch.empty(oshape, device="cuda",
                                 dtype=_torch_dtype(self.engine.get_tensor_dtype(self.out)))
            self.context.set_tensor_address(self.out, self.y.data_ptr())
            self.shape = tuple(x.shape)
        self.context.set_tensor_address(self.inp, x.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())  # x is written on that stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return self.y

    def device_memory_mb(self):
        size = getattr(self.engine, "device_memory_size_v2", None)
        if size is None:
            size = getattr(self.engine, "device_memory_size", None)
        return size / 2**20 if size is not None else None


def tensorrt_measure(art, profile, settings) -> list[dict]:  # pragma: no cover - needs a GPU
    """fp32, fp16 and int8 engines for the profile's batch size, on the first GPU."""
    import torch

    rows = []
    test = as_float_images(art.test_images)
    for prec in profile.precisions:
        if prec not in PRECISIONS:
            rows.append(unsupported(prec, f"TensorRT is measured in {', '.join(PRECISIONS)}"))
            continue
        try:
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                plan = build_engine(art.onnx_path, profile.batch_size, art.image_size, prec,
                                    art.calibration, art.workdir)
                build_s = time.perf_counter() - t0
                runner = EngineRunner(plan)
                x = torch.from_numpy(inputs(art, profile)).cuda()
                torch.cuda.synchronize()
                stats = measure(lambda: runner(x), profile.batch_size, settings)
            row = {"precision": prec, "stats": stats, "device": torch.cuda.get_device_name(0),
                   "memory": mem.as_dict(), "file_mb": file_mb(art.onnx_path),
                   "engine_mb": len(plan) / 2**20, "build_s": build_s,
                   "gpu_memory": {"engine_activation_mb": runner.device_memory_mb(),
                                  "method": "ICudaEngine device memory size (activations)"},
                   "timing": "inputs on the GPU; execute_async_v3 + stream synchronize"}
            if prec != "fp32" and test is not None:
                row["test_outputs"] = batched_outputs(
                    lambda c: runner(torch.from_numpy(c).cuda()).float().cpu().numpy(),
                    test, profile.batch_size)
            rows.append(row)
        except Exception as exc:  # one precision failing does not hide the others
            rows.append(failed(prec, exc))
    return rows
