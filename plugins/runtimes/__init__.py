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

from harness.api.lazy import lazy_exports
from harness import RuntimeSpec, hookimpl

__all__ = ["register_runtimes", "ort_session"]


@hookimpl
def register_runtimes():
    # imported here, not at the top: importing the plugin (bench --help) stays cheap
    from .executorch import PRECISIONS as ET_PRECISIONS
    from .executorch import executorch_available, executorch_measure
    from .onnxruntime import CPU_PRECISIONS
    from .onnxruntime import (ort_available, ort_cuda_available, ort_cuda_measure, ort_measure,
                              ort_trt_available, ort_trt_measure, parity_check)
    from .pytorch import (pytorch_available, pytorch_cuda_available, pytorch_cuda_measure,
                          pytorch_measure)
    from .openvino import PRECISIONS as OV_PRECISIONS
    from .openvino import openvino_available, openvino_measure
    from .tensorrt import PRECISIONS as TRT_PRECISIONS
    from .tensorrt import tensorrt_available, tensorrt_measure
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


# what used to be imported at the top, imported on first use
__getattr__ = lazy_exports(__name__, {
    'ET_PRECISIONS': ('.executorch', 'PRECISIONS'),
    'executorch_available': ('.executorch', 'executorch_available'),
    'executorch_measure': ('.executorch', 'executorch_measure'),
    'CPU_PRECISIONS': ('.onnxruntime', 'CPU_PRECISIONS'),
    'ort_available': ('.onnxruntime', 'ort_available'),
    'ort_cuda_available': ('.onnxruntime', 'ort_cuda_available'),
    'ort_cuda_measure': ('.onnxruntime', 'ort_cuda_measure'),
    'ort_measure': ('.onnxruntime', 'ort_measure'),
    'ort_session': ('.onnxruntime', 'ort_session'),
    'ort_trt_available': ('.onnxruntime', 'ort_trt_available'),
    'ort_trt_measure': ('.onnxruntime', 'ort_trt_measure'),
    'parity_check': ('.onnxruntime', 'parity_check'),
    'pytorch_available': ('.pytorch', 'pytorch_available'),
    'pytorch_cuda_available': ('.pytorch', 'pytorch_cuda_available'),
    'pytorch_cuda_measure': ('.pytorch', 'pytorch_cuda_measure'),
    'pytorch_measure': ('.pytorch', 'pytorch_measure'),
    'OV_PRECISIONS': ('.openvino', 'PRECISIONS'),
    'openvino_available': ('.openvino', 'openvino_available'),
    'openvino_measure': ('.openvino', 'openvino_measure'),
    'TRT_PRECISIONS': ('.tensorrt', 'PRECISIONS'),
    'tensorrt_available': ('.tensorrt', 'tensorrt_available'),
    'tensorrt_measure': ('.tensorrt', 'tensorrt_measure'),
})
