"""PyTorch eager inference: on the CPU (fp32) and on a CUDA GPU (fp32, fp16)."""
from __future__ import annotations

import copy

from harness.measure.latency import PeakMemory, measure

from ._common import (batched_outputs, as_float_images, cuda_reason, failed, file_mb, inputs,
                      threads, unsupported)


def _model_file_mb(art):
    return file_mb(getattr(art, "model_path", None))


def pytorch_available() -> tuple[bool, str]:
    return True, ""


def pytorch_measure(art, profile, settings) -> list[dict]:
    """Eager fp32 on the CPU with the profile's thread count (``torch.set_num_threads``)."""
    import torch

    if profile.device == "gpu":
        return [unsupported(p, "the PyTorch CPU runtime does not run gpu profiles; "
                               "use pytorch-cuda") for p in profile.precisions]
    rows, n = [], threads(profile)
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        for prec in profile.precisions:
            if prec != "fp32":
                elsewhere = {"int8": "onnxruntime (CPU) or tensorrt",
                             "fp16": "pytorch-cuda, onnxruntime-cuda or tensorrt on a GPU"}
                rows.append(unsupported(prec, "PyTorch eager on the CPU is measured in fp32 "
                                              f"only; {prec} is measured by "
                                              f"{elsewhere.get(prec, 'another runtime')}"))
                continue
            model = art.model.eval()  # loaded (and its libraries imported) before the block
            with PeakMemory() as mem:
                x = torch.from_numpy(inputs(art, profile))
                with torch.inference_mode():
                    stats = measure(lambda: model(x), profile.batch_size, settings)
            rows.append({"precision": prec, "stats": stats, "device": "cpu", "threads": n,
                         "memory": {**mem.as_dict(), "scope": "inference (model already "
                                                              "loaded; weights in file_mb)"},
                         "file_mb": _model_file_mb(art),
                         "file": "torch.save of the trained model"})
    finally:
        torch.set_num_threads(old)
    return rows


def pytorch_cuda_available() -> tuple[bool, str]:
    reason = cuda_reason()
    return (reason is None), (reason or "")


def pytorch_cuda_measure(art, profile, settings) -> list[dict]:  # pragma: no cover - GPU
    """Eager fp32 and fp16 (``model.half()``) on the first CUDA device.

    Inputs live on the GPU before timing; every timed call ends with
    ``torch.cuda.synchronize()``, so the figure is the GPU compute time plus launch
    overhead, without host-to-device copies. GPU memory is PyTorch's own peak
    (``torch.cuda.max_memory_allocated``).
    """
    import torch

    dev = torch.device("cuda")
    rows = []
    x32 = torch.from_numpy(inputs(art, profile)).to(dev)
    test = as_float_images(art.test_images)
    for prec in profile.precisions:
        if prec not in ("fp32", "fp16"):
            rows.append(unsupported(prec, "PyTorch eager on CUDA is measured in fp32 and fp16; "
                                          "int8 is measured by tensorrt"))
            continue
        try:
            dtype = torch.float16 if prec == "fp16" else torch.float32
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            with PeakMemory() as mem:
                model = copy.deepcopy(art.model).eval().to(dev, dtype)
                x = x32.to(dtype)

                def run():
                    model(x)
                    torch.cuda.synchronize()

                with torch.inference_mode():
                    stats = measure(run, profile.batch_size, settings)
            row = {"precision": prec, "stats": stats, "device": torch.cuda.get_device_name(0),
                   "memory": mem.as_dict(), "file_mb": _model_file_mb(art),
                   "gpu_memory": {"peak_mb": torch.cuda.max_memory_allocated() / 2**20,
                                  "method": "torch.cuda.max_memory_allocated"},
                   "timing": "inputs on the GPU; synchronize after each call"}
            if prec != "fp32" and test is not None:
                with torch.inference_mode():
                    row["test_outputs"] = batched_outputs(
                        lambda c: model(torch.from_numpy(c).to(dev, dtype)).float().cpu().numpy(),
                        test, max(profile.batch_size, 32))
            rows.append(row)
            model = x = None  # free this precision's GPU copy before the next one
        except Exception as exc:  # one precision failing does not hide the others
            rows.append(failed(prec, exc))
    return rows
