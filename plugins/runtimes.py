"""Built-in runtimes: PyTorch eager and ONNX Runtime on the CPU; TensorRT where present.

ONNX Runtime's worker threads spin after a run and can slow PyTorch in the same process
(onnxruntime issue 13808), so sessions here turn spinning off
(``session.intra_op.allow_spinning = 0``); the record says so.
"""
from __future__ import annotations

import importlib.util

import torch

from harness import RuntimeSpec, hookimpl
from harness.latency import measure


def _inputs(art, profile) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(profile.batch_size, 3, art.image_size, art.image_size, generator=g)


def _threads(profile) -> int:
    import os
    return profile.threads or os.cpu_count() or 1


# -- PyTorch --------------------------------------------------------------------------------
def pytorch_available():
    return True, ""


def pytorch_measure(art, profile, settings):
    if profile.device == "gpu":
        return [{"precision": "fp32", "unavailable": "the PyTorch CPU runtime does not run "
                 "gpu profiles; use pytorch-cuda"}]
    old = torch.get_num_threads()
    torch.set_num_threads(_threads(profile))
    try:
        x = _inputs(art, profile)
        model = art.model.eval()
        with torch.inference_mode():
            stats = measure(lambda: model(x), profile.batch_size, settings)
    finally:
        torch.set_num_threads(old)
    return [{"precision": "fp32", "stats": stats, "device": "cpu"}]


# -- ONNX Runtime ---------------------------------------------------------------------------
def ort_available():
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime is not installed (pip install onnxruntime)"
    return True, ""


def ort_session(path, threads: int, providers=("CPUExecutionProvider",)):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=list(providers))


def ort_measure(art, profile, settings):
    if profile.device == "gpu":
        return [{"precision": "fp32", "unavailable": "the ONNX Runtime CPU runtime does not run "
                 "gpu profiles"}]
    sess = ort_session(art.onnx_path, _threads(profile))
    name = sess.get_inputs()[0].name
    x = _inputs(art, profile).numpy()
    stats = measure(lambda: sess.run(None, {name: x}), profile.batch_size, settings)
    return [{"precision": "fp32", "stats": stats, "device": "cpu", "spinning": "off",
             "file_mb": art.onnx_path.stat().st_size / 2**20}]


# -- TensorRT -------------------------------------------------------------------------------
def tensorrt_available():
    if importlib.util.find_spec("tensorrt") is None:
        return False, "tensorrt is not installed (pip install 'transfer-bench[gpu]')"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return True, ""


def tensorrt_measure(art, profile, settings):  # pragma: no cover - needs a GPU
    raise NotImplementedError("TensorRT measurement is not implemented yet")


@hookimpl
def register_runtimes():
    return [
        RuntimeSpec("pytorch", available=pytorch_available, measure=pytorch_measure,
                    description="PyTorch eager, CPU, fp32"),
        RuntimeSpec("onnxruntime", available=ort_available, measure=ort_measure, needs_onnx=True,
                    description="ONNX Runtime, CPU execution provider, spinning off"),
        RuntimeSpec("tensorrt", available=tensorrt_available, measure=tensorrt_measure,
                    needs_onnx=True, description="TensorRT engine built from the ONNX file"),
    ]
