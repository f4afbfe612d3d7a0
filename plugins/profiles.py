"""Built-in deployment profiles."""
from __future__ import annotations

from harness import ProfileSpec, hookimpl


@hookimpl
def register_profiles():
    return [
        ProfileSpec("mobile", batch_size=1, threads=2, precisions=("fp32", "int8"),
                    description="batch 1, 2 threads, lower precision allowed"),
        ProfileSpec("server", batch_size=32, threads=0, precisions=("fp32", "fp16"),
                    description="batch 32, all cores (or the GPU where a runtime uses one)"),
    ]
