"""Helpers shared by the built-in runtimes: inputs, threads, rows for what cannot run."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np

from harness.api.files import atomic_write_text
from harness.api.tolerance import output_tolerance, tolerance_key


def threads(profile) -> int:
    """The profile's thread count; ``0`` means every core this process may use."""
    if profile.threads:
        return profile.threads
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def inputs(art, profile) -> np.ndarray:
    """Seeded random images in [0, 1], ``(batch, 3, S, S)`` float32 (latency only)."""
    rng = np.random.default_rng(0)
    return rng.random((profile.batch_size, 3, art.image_size, art.image_size), dtype=np.float32)


def unsupported(precision: str, reason: str) -> dict:
    """A result row that says why a precision was not measured (shown instead of a number)."""
    return {"precision": precision, "unavailable": reason}


def failed(precision: str, exc: BaseException) -> dict:
    """A result row for a precision whose measurement raised; the other precisions go on.
    A :class:`harness.api.errors.ParityError` keeps its comparison in ``parity``; running
    out of memory (PyTorch's ``OutOfMemoryError``, or a runtime's "out of memory") is
    ``status: "oom"``."""
    row = {"precision": precision, "error": f"{type(exc).__name__}: {exc}"}
    if getattr(exc, "result", None):
        row["parity"] = exc.result
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        row["status"] = "oom"  # GPU (or host) memory ran out: a smaller batch may fit
    return row


def as_float_images(x) -> Optional[np.ndarray]:
    """Test or calibration images as float32 numpy ``(N, 3, S, S)`` in [0, 1], or None.

    In a worker these are read-only memory maps of the cell's files (every test image, so
    an accuracy after conversion is scored on the fp32 metric's images): read them a batch
    at a time (:func:`batched_outputs`, :func:`fixed_batch_outputs`)."""
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def batched_outputs(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                    batch: int) -> np.ndarray:
    """Outputs of ``run`` over ``images`` in chunks of at most ``batch`` (for accuracy after
    quantization: the parent evaluates them with the task's own metrics)."""
    # a writable copy per chunk: in a worker the test images are a read-only memory map
    outs = [np.asarray(run(np.array(images[i:i + batch], dtype=np.float32)), dtype=np.float32)
            for i in range(0, len(images), batch)]
    return np.concatenate(outs, axis=0)


def fixed_batch_outputs(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                        batch: int) -> np.ndarray:
    """Outputs of ``run`` over ``images`` in chunks of exactly ``batch`` images, for
    runtimes compiled for one static input shape (the one measured): the last chunk is
    padded by repeating its own images, whose extra outputs are dropped (so a calibration
    pass sees only real images)."""
    outs = []
    for i in range(0, len(images), batch):
        chunk = np.array(images[i:i + batch], dtype=np.float32)  # writable (see above)
        real = len(chunk)
        if real < batch:
            chunk = chunk[np.arange(batch) % real]
        outs.append(np.asarray(run(np.ascontiguousarray(chunk)), dtype=np.float32)[:real])
    return np.concatenate(outs, axis=0)


def compare_outputs(got, ref, atol: float = 1e-3, rtol: float = 1e-3, what: str = "outputs",
                    strict: bool = True) -> dict:
    """``{"max_abs_diff", "max_rel_diff", "atol", "rtol", "ok"}`` of ``got`` against the
    PyTorch reference ``ref``; ``ok`` when ``|got - ref| <= atol + rtol * |ref|`` everywhere.

    Raises:
        harness.api.errors.ParityError: the shapes differ, or (``strict``) the values differ
            beyond tolerance; it carries the comparison in ``result``.
    """
    from harness.api.errors import ParityError
    got, ref = np.asarray(got, dtype=np.float32), np.asarray(ref, dtype=np.float32)
    if got.shape != ref.shape:
        raise ParityError(f"{what}: output shape {got.shape} differs from PyTorch {ref.shape}")
    diff = np.abs(got - ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / (np.abs(ref) + 1e-12)).max()) if diff.size else 0.0
    ok = bool(np.all(diff <= atol + rtol * np.abs(ref)))
    result = {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "atol": atol, "rtol": rtol,
              "ok": ok}
    if strict and not ok:
        raise ParityError(f"{what} disagrees with PyTorch: max abs difference {max_abs:.3g} > "
                          f"atol {atol} + rtol {rtol} x |ref|", result)
    return result


def pytorch_reference(art, x: np.ndarray) -> np.ndarray:
    """The PyTorch model's fp32 outputs on ``x`` (``art.model``, on the CPU, eval mode)."""
    import torch

    with torch.inference_mode():
        return art.model.eval()(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()


#: precisions a GPU row's worker holds to the project's tolerance
#: (:data:`harness.api.tolerance.OUTPUT_TOLERANCE`), element by element (``atol = tol x
#: max(1, max|ref|)``, ``rtol = tol``). int8 is compared and recorded, not enforced there:
#: the run's check of every row (relative RMS, the same table) and its accuracy judge it.
WORKER_ENFORCED = ("fp32", "tf32", "fp16", "bf16")


def gpu_parity(art, x: np.ndarray, got, precision: str, tf32: Optional[bool]) -> dict:
    """A GPU row's outputs ``got`` on ``x`` against PyTorch fp32 on the CPU.

    fp32 (stricter without TF32), fp16 and bf16 must agree within
    :data:`harness.api.tolerance.OUTPUT_TOLERANCE` (:data:`WORKER_ENFORCED`)
    (else :class:`harness.api.errors.ParityError`, and the row fails with the comparison);
    int8 is compared and recorded, not enforced. Every result carries ``top1_agreement``
    (the share of inputs whose arg-max output is PyTorch's)."""
    ref = pytorch_reference(art, x)
    got = np.asarray(got, dtype=np.float32)
    key = tolerance_key(precision, tf32)
    tol = output_tolerance(precision, tf32) if key in WORKER_ENFORCED else None
    what = f"the {precision} outputs" + (" (TF32 on)" if key == "tf32" else "")
    if tol is None:
        res = compare_outputs(got, ref, what=what, strict=False)
        res["enforced"] = False
    else:
        scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
        res = compare_outputs(got, ref, atol=tol * scale, rtol=tol, what=what, strict=True)
        res["enforced"] = True
    if got.shape == ref.shape and got.ndim == 2 and len(got):
        res["top1_agreement"] = float((got.argmax(1) == ref.argmax(1)).mean())
    return {**res, "tolerance_key": key, "inputs": f"{len(x)} seeded random images",
            "against": "PyTorch eager fp32 on the CPU"}


def parity_vs_pytorch(art, x: np.ndarray, got, strict: bool, what: str = "the runtime's "
                      "outputs") -> dict:
    """Compare a runtime's outputs ``got`` on inputs ``x`` with the PyTorch model's
    (``art.model``, loaded in the worker) by :func:`compare_outputs`.

    ``strict`` (an fp32 conversion) raises :class:`harness.api.errors.ParityError` when they
    differ; lower precisions are not expected to agree that closely, so their comparison is
    only returned and their accuracy on the test images is what counts.
    """
    ref = pytorch_reference(art, x)
    return {**compare_outputs(got, ref, what=what, strict=strict),
            "inputs": f"{len(x)} seeded random images", "against": "PyTorch eager fp32"}


def once_per_cell(art, name: str, make: Callable[[Path], dict]) -> tuple[Path, dict]:
    """A conversion that depends on the cell's model and calibration images but not on the
    profile (an int8 file with a dynamic batch axis) is made once per cell: the first
    profile's worker writes ``name`` into the cell's folder with ``make(path) -> how``, the
    next profiles' workers reuse it and say so (``reused: True``). The cell's folder is new
    per cell and removed after it, so a reused file never belongs to another model."""
    folder = Path(getattr(art, "cell_dir", None) or art.workdir)
    dst = folder / name
    done = folder / f"{name}.how.json"  # written last: the conversion finished
    if done.exists() and dst.exists():
        return dst, {**json.loads(done.read_text()), "reused": True}
    how = make(dst)
    atomic_write_text(done, json.dumps(how, default=str))
    return dst, how


def file_mb(path) -> Optional[float]:
    return Path(path).stat().st_size / 2**20 if path and Path(path).exists() else None


#: what a GPU that PyTorch could see leaves on Linux: the NVIDIA driver (it creates the
#: /dev/nvidia* files on first use), WSL2's GPU device, ROCm's device
GPU_TRACES = ("/proc/driver/nvidia", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")


def no_gpu_device() -> Optional[str]:
    """Why no GPU can be visible on this Linux machine, from files alone (no import, so
    ``bench list runtimes`` stays fast), or None where one may be (then ask PyTorch)."""
    if not sys.platform.startswith("linux") or any(os.path.exists(p) for p in GPU_TRACES):
        return None
    return (f"no CUDA GPU here: none of {', '.join(GPU_TRACES)} exists (no NVIDIA driver "
            f"or GPU device)")


def cuda_reason() -> Optional[str]:
    """None when PyTorch sees a CUDA GPU, else why not (GPU runtimes use torch's CUDA)."""
    reason = no_gpu_device()
    if reason:
        return reason
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA (a CPU-only build)"
        return (f"no CUDA GPU is visible: torch.cuda.is_available() is False "
                f"(torch {torch.__version__} built with {built})")
    return None


class Loaded(NamedTuple):
    """A converted model loaded by a runtime, ready to time.

    Attributes:
        call: one timed inference on the profile's input (no arguments).
        run: ``run(batch) -> outputs`` for a batch of the profile's size (parity, accuracy).
        info: what the row records about it (settings the runtime reports, versions...).
    """

    call: Callable[[], object]
    run: Callable[[np.ndarray], np.ndarray]
    info: dict


def measure_converted(art, profile, settings, refuse: Callable[[str], Optional[str]],
                      convert: Callable, loader: Callable, scope: str,
                      cpu_only: str) -> list[dict]:
    """The rows of a CPU runtime that converts the model per precision and runs one static
    input shape (OpenVINO, ExecuTorch); a gpu profile gets ``cpu_only`` as the reason for
    every precision. For each precision of the profile,

    * ``refuse(prec)`` is a reason not to measure it, or None;
    * ``convert(art, profile, prec) -> (path, how)`` writes the converted model (untimed,
      outside the memory scope) and says how it was made;
    * ``loader(threads)`` gives ``load(path, prec, x) -> Loaded``, which loads it for
      inputs ``x`` (inside the memory scope);

    then the shared latency core times ``call``; fp32 must agree with PyTorch
    (:func:`parity_vs_pytorch`), and lower precisions return their outputs on the test
    images for the accuracy after conversion. One precision failing does not hide others.
    """
    from harness.measure.latency import PeakMemory, measure
    if profile.device == "gpu":
        return [unsupported(p, cpu_only) for p in profile.precisions]
    n, x = threads(profile), inputs(art, profile)
    load = loader(n)
    test = as_float_images(art.test_images)
    rows = []
    for prec in profile.precisions:
        why = refuse(prec)
        if why:
            rows.append(unsupported(prec, why))
            continue
        try:
            path, how = convert(art, profile, prec)
            with PeakMemory() as mem:
                loaded = load(path, prec, x)
                stats = measure(loaded.call, profile.batch_size, settings)
            row = {"precision": prec, "stats": stats, "device": "cpu", "threads": n,
                   "memory": {**mem.as_dict(), "scope": scope}, **loaded.info,
                   "file_mb": file_mb(path), **how}
            row["parity"] = parity_vs_pytorch(art, x, loaded.run(x), strict=(prec == "fp32"))
            if test is not None:  # compared with PyTorch by the cell, every precision
                row["test_outputs"] = fixed_batch_outputs(loaded.run, test, profile.batch_size)
            rows.append(row)
        except Exception as exc:  # one precision failing does not hide the others
            rows.append(failed(prec, exc))
    return rows
