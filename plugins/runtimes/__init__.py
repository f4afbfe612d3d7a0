"""Built-in runtimes: PyTorch eager (CPU, CUDA), ONNX Runtime (CPU, CUDA and TensorRT
execution providers), OpenVINO (CPU), ExecuTorch with the XNNPACK delegate (the mobile
runtime) and TensorRT itself.

Each runtime says whether it can run here and why not (``available()``); the cell shows
that reason instead of a number. Each is measured in its own worker process by default
(:mod:`harness.measure.isolate`), because ONNX Runtime's spinning threads slow PyTorch in the same
process (onnxruntime issue 13808); ONNX Runtime sessions also turn spinning off.
No submodule imports torch at import time, so ONNX Runtime workers start fast.
"""
from __future__ import annotations

from harness import RuntimeSpec, hookimpl

from .executorch import PRECISIONS as ET_PRECISIONS
from .executorch import executorch_available, executorch_measure
from .onnxruntime import CPU_PRECISIONS
from .onnxruntime import (ort_available, ort_cuda_available, ort_cuda_measure, ort_measure,
                          ort_session, ort_trt_available, ort_trt_measure, parity_check)
from .pytorch import (pytorch_available, pytorch_cuda_available, pytorch_cuda_measure,
                      pytorch_measure)
from .openvino import PRECISIONS as OV_PRECISIONS
from .openvino import openvino_available, openvino_measure
from .tensorrt import PRECISIONS as TRT_PRECISIONS
from .tensorrt import tensorrt_available, tensorrt_measure

__all__ = ["register_runtimes", "ort_session"]


@hookimpl
def register_runtimes():
    return [
        RuntimeSpec("pytorch", available=pytorch_available, measure=pytorch_measure,
                    description="PyTorch eager, CPU, fp32", packages=("torch",),
                    precisions=("fp32",)),
        RuntimeSpec("pytorch-cuda", available=pytorch_cuda_available,
                    measure=pytorch_cuda_measure,
                    description="PyTorch eager on a CUDA GPU, fp32 and fp16",
                    packages=("torch",), precisions=("fp32", "fp16")),
        RuntimeSpec("onnxruntime", available=ort_available, measure=ort_measure,
                    needs_onnx=True, packages=("onnx", "onnxruntime"), verify_export=parity_check,
                    description="ONNX Runtime CPU provider, spinning off; fp32, int8 static "
                                "QDQ, int8-dynamic", precisions=CPU_PRECISIONS),
        RuntimeSpec("onnxruntime-cuda", available=ort_cuda_available, measure=ort_cuda_measure,
                    needs_onnx=True, packages=("onnx", "onnxruntime-gpu"),
                    verify_export=parity_check,
                    description="ONNX Runtime CUDA execution provider, fp32",
                    precisions=("fp32",)),
        RuntimeSpec("onnxruntime-tensorrt", available=ort_trt_available,
                    measure=ort_trt_measure, needs_onnx=True,
                    packages=("onnx", "onnxruntime-gpu", "tensorrt"), verify_export=parity_check,
                    description="ONNX Runtime TensorRT execution provider, fp32 and fp16",
                    precisions=("fp32", "fp16")),
        RuntimeSpec("openvino", available=openvino_available, measure=openvino_measure,
                    needs_onnx=True, packages=("onnx", "openvino", "nncf"),
                    description="OpenVINO CPU plugin on the ONNX file, latency hint; fp32, "
                                "bf16, int8 (NNCF post-training quantization)",
                    precisions=OV_PRECISIONS),
        RuntimeSpec("executorch", available=executorch_available, measure=executorch_measure,
                    packages=("torch", "executorch", "torchao"),
                    description="ExecuTorch with the XNNPACK delegate (the mobile runtime), "
                                "CPU; fp32, int8 (PT2E XNNPACKQuantizer)",
                    precisions=ET_PRECISIONS),
        RuntimeSpec("tensorrt", available=tensorrt_available, measure=tensorrt_measure,
                    needs_onnx=True, packages=("onnx", "tensorrt"), verify_export=parity_check,
                    description="TensorRT engine built from the ONNX file; fp32, fp16, int8",
                    precisions=TRT_PRECISIONS),
    ]
