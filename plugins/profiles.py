"""Built-in deployment profiles.

A runtime measures every precision a profile lists that it has, and records the others as
unavailable with the reason (ONNX Runtime's CPU provider has int8, TensorRT fp16 and int8,
PyTorch CPU fp32 only). GPU runtimes run on the GPU under any profile; CPU runtimes refuse
``device = "gpu"`` profiles. User-defined profiles come from a matrix file::

    [profile.edge]
    batch_size = 4
    threads = 1
    precisions = ["fp32", "int8"]
"""
from __future__ import annotations

from harness import ProfileSpec, hookimpl


@hookimpl
def register_profiles():
    return [
        ProfileSpec("mobile", batch_size=1, threads=2, precisions=("fp32", "int8"), default=True,
                    description="batch 1, 2 threads, fp32 and int8 (lower precision allowed)"),
        ProfileSpec("server", batch_size=32, threads=0, precisions=("fp32", "fp16", "int8"),
                    description="batch 32, all cores (threads 0) or the GPU for GPU runtimes; "
                                "fp32, fp16, int8"),
    ]
