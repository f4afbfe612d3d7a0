"""Helpers shared by the built-in runtimes: inputs, threads, rows for what cannot run."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np


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
    """A result row for a precision whose measurement raised; the other precisions go on."""
    return {"precision": precision, "error": f"{type(exc).__name__}: {exc}"}


def as_float_images(x) -> Optional[np.ndarray]:
    """Test or calibration images as float32 numpy ``(N, 3, S, S)`` in [0, 1], or None."""
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def batched_outputs(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                    batch: int) -> np.ndarray:
    """Outputs of ``run`` over ``images`` in chunks of at most ``batch`` (for accuracy after
    quantization: the parent evaluates them with the task's own metrics)."""
    outs = [np.asarray(run(np.ascontiguousarray(images[i:i + batch])), dtype=np.float32)
            for i in range(0, len(images), batch)]
    return np.concatenate(outs, axis=0)


def file_mb(path) -> Optional[float]:
    return Path(path).stat().st_size / 2**20 if path and Path(path).exists() else None


def cuda_reason() -> Optional[str]:
    """None when PyTorch sees a CUDA GPU, else why not (GPU runtimes use torch's CUDA)."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA (a CPU-only build)"
        return (f"no CUDA GPU is visible: torch.cuda.is_available() is False "
                f"(torch {torch.__version__} built with {built})")
    return None
