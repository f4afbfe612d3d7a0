"""PyTorch eager inference: on the CPU (fp32) and on a CUDA GPU (fp32, fp16)."""
from __future__ import annotations

import copy

from harness.measure.latency import PeakMemory, measure

from ._common import (batched_outputs, as_float_images, cuda_reason, failed, file_mb,
                      gpu_parity, inputs, threads, unsupported)


def _model_file_mb(art):
    return file_mb(getattr(art, "model_path", None))


def _inference_call(model, x):
    """One timed call of ``model`` on ``x`` in inference mode, entered by the call itself,
    so it still holds when the regression check calls it again later."""
    import torch

    def call():
        with torch.inference_mode():
            return model(x)
    return call


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
                stats = measure(_inference_call(model, x), profile.batch_size, settings)
            row = {"precision": prec, "stats": stats, "device": "cpu", "threads": n,
                   "memory": {**mem.as_dict(), "scope": "inference (model already "
                                                        "loaded; weights in file_mb)"},
                   "file_mb": _model_file_mb(art), "file": "torch.save of the trained model"}
            test = as_float_images(art.test_images)
            if test is not None:  # compared with the cell's own model by the cell
                with torch.inference_mode():
                    row["test_outputs"] = batched_outputs(
                        lambda c: model(torch.from_numpy(c)).float().numpy(), test,
                        max(profile.batch_size, 32))
            rows.append(row)
    finally:
        torch.set_num_threads(old)
    return rows


def pytorch_cuda_available() -> tuple[bool, str]:
    reason = cuda_reason()
    return (reason is None), (reason or "")


def pytorch_cuda_measure(art, profile, settings) -> list[dict]:  # pragma: no cover - GPU
    """Eager fp32 and fp16 (``model.half()``) on this worker's CUDA device.

    Timed by :func:`harness.measure.gpu.measure_gpu` (trtexec's definitions: the row's
    ``stats`` is the end-to-end latency with the input copied from pinned host memory and
    the output copied back, ``gpu_compute`` the GPU compute time), the model's kernels on a
    stream of its own. fp32 uses TF32 tensor cores for matmuls and convolutions as
    ``[latency] tf32`` says (recorded in ``tf32``). Outputs are compared with PyTorch fp32
    on the CPU (:func:`plugins.runtimes._common.gpu_parity`). GPU memory is PyTorch's own
    peak (``torch.cuda.max_memory_allocated``).
    """
    import os

    import torch

    from harness.measure.gpu import measure_gpu

    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = bool(settings.tf32)
    torch.backends.cudnn.allow_tf32 = bool(settings.tf32)
    rows = []
    x = inputs(art, profile)
    test = as_float_images(art.test_images)
    stream = torch.cuda.Stream()
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
                x_host = torch.from_numpy(x).to(dtype).pin_memory()
                x_dev = torch.empty(x_host.shape, dtype=dtype, device=dev)
                out = {}

                def compute():
                    out["y"] = model(x_dev)

                with torch.inference_mode():
                    with torch.cuda.stream(stream):
                        compute()
                    y_host = torch.empty(out["y"].shape, dtype=dtype, pin_memory=True)
                    timing = measure_gpu(lambda: x_dev.copy_(x_host, non_blocking=True),
                                         compute,
                                         lambda: y_host.copy_(out["y"], non_blocking=True),
                                         stream, profile.batch_size, settings)

                    def run(c):
                        return model(torch.from_numpy(c).to(dev, dtype)).float().cpu().numpy()

                    got = run(x)
            tf32 = (torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
                    if prec == "fp32" else None)
            row = {"precision": prec, **timing, "device": torch.cuda.get_device_name(0),
                   "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "tf32": tf32, "memory": mem.as_dict(), "file_mb": _model_file_mb(art),
                   "gpu_memory": {"peak_mb": torch.cuda.max_memory_allocated() / 2**20,
                                  "method": "torch.cuda.max_memory_allocated"}}
            row["parity"] = gpu_parity(art, x, got, prec, tf32)
            if test is not None:  # compared with PyTorch by the cell, every precision
                with torch.inference_mode():
                    row["test_outputs"] = batched_outputs(run, test, max(profile.batch_size, 32))
            rows.append(row)
            model = x_dev = out = None  # free this precision's GPU copy before the next one
        except Exception as exc:  # one precision failing does not hide the others
            rows.append(failed(prec, exc))
    return rows
